//! TCP MD5 signatures (RFC 2385) on a socket: the one kernel interface outside `bpf(2)` that
//! Ferrule needs and no safe crate wraps (`setsockopt(TCP_MD5SIG_EXT)` takes a C struct). It
//! lives here because this is the crate allowed `unsafe`; it knows nothing of BGP: the caller
//! says which peer (or range) gets which key.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::sys::socket::{getsockname, SockaddrLike as _, SockaddrStorage};

/// `struct tcp_md5sig` from include/uapi/linux/tcp.h, padding spelled out.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: i32,
    key: [u8; libc::TCP_MD5SIG_MAXKEYLEN],
}

const TCP_MD5SIG_FLAG_PREFIX: u8 = 0x1;
const TCP_MD5SIG_FLAG_IFINDEX: u8 = 0x2;

/// Longest key the kernel accepts.
pub const MAX_KEY_LEN: usize = libc::TCP_MD5SIG_MAXKEYLEN;

/// Which segments a key applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Md5Peer {
    pub address: IpAddr,
    /// Apply to every address in `address/prefix_len` (listen ranges); `None` = this address.
    pub prefix_len: Option<u8>,
    /// Only on this L3 master (VRF) device; `None` = any. Linux refuses (EINVAL) the index of
    /// any other device, so link-local peers are keyed by address alone.
    pub ifindex: Option<u32>,
}

/// Installs `key` for segments to/from `peer` on the socket (a listening socket holds one key
/// per peer; a connecting socket needs its peer's key before `connect`). An empty key removes
/// the peer's key. IPv4 peers on an IPv6 socket are keyed by their mapped address, which is
/// how the kernel matches them.
pub fn set_tcp_md5(fd: BorrowedFd<'_>, peer: Md5Peer, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 key of {} bytes; the kernel takes at most {MAX_KEY_LEN}", key.len()),
        ));
    }
    let local: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
    let v6_socket = local.family() == Some(nix::sys::socket::AddressFamily::Inet6);
    // SAFETY: sockaddr_storage and the rest of tcp_md5sig are plain integers and byte arrays,
    // for which all-zero is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let full_len = match (peer.address, v6_socket) {
        (IpAddr::V4(a), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut sig.addr as *mut _ as *mut libc::sockaddr_in, sin) };
            32
        }
        (address, true) => {
            let (v6, full_len) = match address {
                IpAddr::V6(a) => (a, 128),
                IpAddr::V4(a) => (a.to_ipv6_mapped(), 128),
            };
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut sig.addr as *mut _ as *mut libc::sockaddr_in6, sin6) };
            full_len
        }
        (IpAddr::V6(a), false) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an IPv4 socket cannot carry a TCP MD5 key for IPv6 peer {a}"),
            ));
        }
    };
    if let Some(len) = peer.prefix_len {
        // A mapped IPv4 range sits in the last 32 bits of the IPv6 address.
        let len = if peer.address.is_ipv4() && v6_socket { len.saturating_add(96) } else { len };
        if len > full_len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "TCP MD5 prefix length longer than the address"));
        }
        sig.flags |= TCP_MD5SIG_FLAG_PREFIX;
        sig.prefix_len = len;
    }
    if let Some(ifindex) = peer.ifindex {
        sig.flags |= TCP_MD5SIG_FLAG_IFINDEX;
        sig.ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    }
    sig.key_len = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a fully initialised tcp_md5sig that outlives the call, and the length
    // passed is its size; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG_EXT,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        // Removing a key that was never set is not an error for the caller.
        if key.is_empty() && err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd as _;
    use std::time::Duration;

    use super::*;

    fn peer(address: IpAddr) -> Md5Peer {
        Md5Peer { address, prefix_len: None, ifindex: None }
    }

    /// Connects from a socket carrying `client_key` to a listener carrying `server_key` for
    /// loopback; true when a byte makes it through.
    fn exchange(server: IpAddr, server_key: &[u8], client_key: &[u8], prefix_len: Option<u8>) -> bool {
        let listener = TcpListener::bind((server, 0)).unwrap();
        let loopback = server;
        set_tcp_md5(listener.as_fd(), Md5Peer { address: loopback, prefix_len, ifindex: None }, server_key).unwrap();
        let addr = listener.local_addr().unwrap();
        let domain = if server.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let client = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
        set_tcp_md5(client.as_fd(), peer(loopback), client_key).unwrap();
        // A SYN with a wrong (or missing) signature is dropped silently: connect times out.
        if client.connect_timeout(&addr.into(), Duration::from_millis(700)).is_err() {
            return false;
        }
        let mut client: TcpStream = client.into();
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1];
        conn.read_exact(&mut buf).is_ok()
    }

    #[test]
    fn matching_keys_connect_and_mismatched_keys_do_not() {
        for server in [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)] {
            assert!(exchange(server, b"s3cret", b"s3cret", None), "{server}: same key must connect");
            assert!(!exchange(server, b"s3cret", b"other", None), "{server}: wrong key must not connect");
        }
        // A range key (listen ranges) covers the peer.
        assert!(exchange(IpAddr::from([127, 0, 0, 1]), b"range-key", b"range-key", Some(8)));
    }

    #[test]
    fn oversized_key_and_family_mismatch_are_errors() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = set_tcp_md5(v4.as_fd(), peer("127.0.0.1".parse().unwrap()), &[b'k'; 81]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = set_tcp_md5(v4.as_fd(), peer("::1".parse().unwrap()), b"k").unwrap_err();
        assert!(err.to_string().contains("IPv6 peer"), "{err}");
        // Removing a key never set is fine.
        set_tcp_md5(v4.as_fd(), peer("127.0.0.1".parse().unwrap()), b"").unwrap();
    }

    /// Why link-local peers are keyed by address alone: the kernel takes an interface in a key
    /// only for a VRF device, and refuses the loopback's (any other device's) index.
    #[test]
    fn a_link_local_peer_is_keyed_by_address_since_an_interface_key_needs_a_vrf() {
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let link_local: IpAddr = "fe80::1".parse().unwrap();
        set_tcp_md5(v6.as_fd(), peer(link_local), b"k3y").unwrap();
        let err = set_tcp_md5(v6.as_fd(), Md5Peer { ifindex: Some(1), ..peer(link_local) }, b"k3y").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }
}
