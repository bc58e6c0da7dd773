//! TCP MD5 signatures (RFC 2385) for BGP sessions. Setting the key is a `setsockopt` with a C
//! struct, which needs `unsafe`; this crate has none, so the daemon injects the setter
//! ([`Md5Setter`], implemented with `ferrule_ebpf::sockopt`). The speaker decides which key goes
//! on which socket: the peer's key on its outgoing socket before `connect`, every peer's (and
//! every listen range's) key on the listening socket.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// A TCP MD5 key. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Md5Key(Arc<[u8]>);

impl Md5Key {
    pub fn new(key: &[u8]) -> Md5Key {
        Md5Key(key.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Md5Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which segments a key covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Md5Target {
    pub address: IpAddr,
    /// Every address in `address/prefix_len` (listen ranges); `None` = exactly `address`.
    pub prefix_len: Option<u8>,
}

/// Installs (or, with an empty key, removes) a TCP MD5 key on a socket.
pub trait Md5Setter: Send + Sync + fmt::Debug {
    fn set(&self, socket: BorrowedFd<'_>, target: Md5Target, key: &[u8]) -> io::Result<()>;
}

/// The setter the speaker holds, or none (then a peer with a password cannot be configured).
pub type Md5 = Option<Arc<dyn Md5Setter>>;

/// Counters the kernel keeps of TCP segments dropped for their MD5 option (`TcpExt` in
/// `/proc/net/netstat`, per network namespace): a session that never comes up can say why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Md5Drops {
    /// Segments whose signature did not match the key (wrong password).
    pub failure: u64,
    /// Segments without a signature from a peer we hold a key for (the peer has no password).
    pub not_found: u64,
    /// Signed segments from a peer we hold no key for (we have no password).
    pub unexpected: u64,
}

impl Md5Drops {
    /// Reads the counters of the calling thread's network namespace; zeros if unreadable.
    pub fn read() -> Md5Drops {
        std::fs::read_to_string("/proc/net/netstat").map(|t| Md5Drops::parse(&t)).unwrap_or_default()
    }

    fn parse(text: &str) -> Md5Drops {
        let mut lines = text.lines();
        let mut drops = Md5Drops::default();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            if !names.starts_with("TcpExt:") {
                continue;
            }
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
                let value = value.parse().unwrap_or(0);
                match name {
                    "TCPMD5Failure" => drops.failure = value,
                    "TCPMD5NotFound" => drops.not_found = value,
                    "TCPMD5Unexpected" => drops.unexpected = value,
                    _ => {}
                }
            }
        }
        drops
    }

    /// What grew since `before`, as advice for `show bgp summary`; `None` when nothing did.
    pub fn explain_since(&self, before: &Md5Drops) -> Option<String> {
        let (failure, not_found, unexpected) = (
            self.failure.saturating_sub(before.failure),
            self.not_found.saturating_sub(before.not_found),
            self.unexpected.saturating_sub(before.unexpected),
        );
        let mut parts = Vec::new();
        if failure > 0 {
            parts.push(format!("{failure} with a wrong MD5 signature (passwords differ)"));
        }
        if not_found > 0 {
            parts.push(format!("{not_found} unsigned although a password is set here (the peer has none)"));
        }
        if unexpected > 0 {
            parts.push(format!("{unexpected} signed although no password is set here"));
        }
        (!parts.is_empty()).then(|| format!("this host dropped TCP segments: {}", parts.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", Md5Key::new(b"s3cret")), "<redacted>");
    }

    #[test]
    fn netstat_counters_are_read_and_explained() {
        let text = "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure\nTcpExt: 0 1 0 7\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        let now = Md5Drops::parse(text);
        assert_eq!(now, Md5Drops { failure: 7, not_found: 1, unexpected: 0 });
        let before = Md5Drops { failure: 4, not_found: 1, unexpected: 0 };
        assert_eq!(
            now.explain_since(&before).as_deref(),
            Some("this host dropped TCP segments: 3 with a wrong MD5 signature (passwords differ)")
        );
        assert_eq!(now.explain_since(&now), None);
    }
}
