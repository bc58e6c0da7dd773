//! Address families, prefixes and next hops: the small value types every other wire module uses.
//! Owns their validation (prefix length, host bits) and their NLRI encoding; knows nothing of
//! messages or attributes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address Family Identifier (IANA). A newtype rather than an enum because peers advertise
/// families we do not speak (EVPN, VPNv4 ...) and those must survive an OPEN round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Afi(pub u16);

impl Afi {
    pub const IPV4: Afi = Afi(1);
    pub const IPV6: Afi = Afi(2);
}

/// Subsequent Address Family Identifier (IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Safi(pub u8);

impl Safi {
    pub const UNICAST: Safi = Safi(1);
}

/// The address families this codec can carry NLRI for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub fn from_afi_safi(afi: Afi, safi: Safi) -> Option<Family> {
        match (afi, safi) {
            (Afi::IPV4, Safi::UNICAST) => Some(Family::Ipv4Unicast),
            (Afi::IPV6, Safi::UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    pub fn afi(self) -> Afi {
        match self {
            Family::Ipv4Unicast => Afi::IPV4,
            Family::Ipv6Unicast => Afi::IPV6,
        }
    }

    pub fn safi(self) -> Safi {
        Safi::UNICAST
    }

    /// Longest prefix length of the family, in bits.
    pub fn max_len(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 32,
            Family::Ipv6Unicast => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// Why a prefix could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("prefix length /{len} is longer than the {max} bits of the address family")]
    TooLong { len: u8, max: u8 },
    #[error("{addr}/{len} has host bits set; use the network address (mask the address to /{len})")]
    HostBits { addr: IpAddr, len: u8 },
}

/// An IPv4 prefix with its host bits cleared (an invariant every constructor keeps, so two
/// equal networks always compare equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    bits: u32,
    len: u8,
}

impl Ipv4Prefix {
    /// Builds a prefix; rejects a length over 32 and an address with host bits set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError::TooLong { len, max: 32 });
        }
        let bits = u32::from(addr);
        if bits & !mask32(len) != 0 {
            return Err(PrefixError::HostBits { addr: addr.into(), len });
        }
        Ok(Self { bits, len })
    }

    /// Builds a prefix, clearing host bits. `len` must be at most 32 (callers in this crate
    /// have checked it already), longer lengths are clamped.
    pub(crate) fn truncating(bits: u32, len: u8) -> Self {
        let len = len.min(32);
        Self { bits: bits & mask32(len), len }
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.bits)
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the default route 0.0.0.0/0 (clippy wants `is_empty` next to `len`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An IPv6 prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Prefix {
    bits: u128,
    len: u8,
}

impl Ipv6Prefix {
    /// Builds a prefix; rejects a length over 128 and an address with host bits set.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 128 {
            return Err(PrefixError::TooLong { len, max: 128 });
        }
        let bits = u128::from(addr);
        if bits & !mask128(len) != 0 {
            return Err(PrefixError::HostBits { addr: addr.into(), len });
        }
        Ok(Self { bits, len })
    }

    pub(crate) fn truncating(bits: u128, len: u8) -> Self {
        let len = len.min(128);
        Self { bits: bits & mask128(len), len }
    }

    pub fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.bits)
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the default route ::/0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// An IPv4 or IPv6 unicast prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4(Ipv4Prefix),
    V6(Ipv6Prefix),
}

impl Prefix {
    /// Builds a prefix of the address's family; see [`Ipv4Prefix::new`].
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        match addr {
            IpAddr::V4(a) => Ipv4Prefix::new(a, len).map(Prefix::V4),
            IpAddr::V6(a) => Ipv6Prefix::new(a, len).map(Prefix::V6),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Prefix::V4(_) => Family::Ipv4Unicast,
            Prefix::V6(_) => Family::Ipv6Unicast,
        }
    }

    /// Whether `addr` is inside the prefix (an address of the other family never is).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Prefix::V4(p), IpAddr::V4(a)) => u32::from(a) & mask32(p.len) == p.bits,
            (Prefix::V6(p), IpAddr::V6(a)) => u128::from(a) & mask128(p.len) == p.bits,
            _ => false,
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Prefix::V4(p) => p.addr().into(),
            Prefix::V6(p) => p.addr().into(),
        }
    }

    pub fn len(&self) -> u8 {
        match self {
            Prefix::V4(p) => p.len(),
            Prefix::V6(p) => p.len(),
        }
    }

    /// True for a default route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this prefix takes in an NLRI field: one length octet plus the significant octets.
    pub fn wire_len(&self) -> usize {
        1 + usize::from(self.len()).div_ceil(8)
    }

    /// Appends the RFC 4271 section 4.3 NLRI encoding (length octet, then the minimum number
    /// of address octets).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = usize::from(self.len()).div_ceil(8);
        out.push(self.len());
        match self {
            Prefix::V4(p) => out.extend_from_slice(&p.bits.to_be_bytes()[..n]),
            Prefix::V6(p) => out.extend_from_slice(&p.bits.to_be_bytes()[..n]),
        }
    }
}

impl From<Ipv4Prefix> for Prefix {
    fn from(p: Ipv4Prefix) -> Self {
        Prefix::V4(p)
    }
}

impl From<Ipv6Prefix> for Prefix {
    fn from(p: Ipv6Prefix) -> Self {
        Prefix::V6(p)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4(p) => p.fmt(f),
            Prefix::V6(p) => p.fmt(f),
        }
    }
}

/// Next hop of a route. IPv4 NLRI may carry an IPv6 next hop (RFC 8950, used for unnumbered
/// sessions over link-local); IPv6 next hops may add a link-local address (RFC 2545).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    V4(Ipv4Addr),
    V6 { global: Ipv6Addr, link_local: Option<Ipv6Addr> },
}

impl NextHop {
    /// Length of the encoding inside MP_REACH_NLRI.
    pub fn wire_len(&self) -> usize {
        match self {
            NextHop::V4(_) => 4,
            NextHop::V6 { link_local: None, .. } => 16,
            NextHop::V6 { link_local: Some(_), .. } => 32,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NextHop::V4(a) => out.extend_from_slice(&a.octets()),
            NextHop::V6 { global, link_local } => {
                out.extend_from_slice(&global.octets());
                if let Some(ll) = link_local {
                    out.extend_from_slice(&ll.octets());
                }
            }
        }
    }

    /// Why an MP_REACH_NLRI next hop cannot be one (the same rule as NEXT_HOP's, see
    /// `attrs::is_host_v4`; for IPv6: no multicast address in either field, and
    /// some address: an unspecified global one only beside a link-local one, as unnumbered
    /// sessions send), or `None` when it can.
    pub(crate) fn unusable(&self) -> Option<&'static str> {
        match *self {
            NextHop::V4(a) if !super::attrs::is_host_v4(a) => {
                Some("MP_REACH_NLRI next hop is not a unicast host address")
            }
            NextHop::V4(_) => None,
            NextHop::V6 { global, link_local } => {
                if global.is_multicast() || link_local.is_some_and(|l| l.is_multicast()) {
                    Some("MP_REACH_NLRI next hop is a multicast address")
                } else if global.is_unspecified() && link_local.is_none_or(|l| l.is_unspecified()) {
                    Some("MP_REACH_NLRI next hop has no address")
                } else {
                    None
                }
            }
        }
    }

    /// Parses the next-hop field of MP_REACH_NLRI by its length (4, 16 or 32 octets).
    pub(crate) fn decode(b: &[u8]) -> Option<NextHop> {
        match b.len() {
            4 => Some(NextHop::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            16 => Some(NextHop::V6 { global: Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?), link_local: None }),
            32 => Some(NextHop::V6 {
                global: Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).ok()?),
                link_local: Some(Ipv6Addr::from(<[u8; 16]>::try_from(&b[16..]).ok()?)),
            }),
            _ => None,
        }
    }
}

/// Error found while validating an NLRI field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NlriError {
    /// A prefix length octet larger than the family allows.
    LengthTooLong { len: u8 },
    /// The field ends in the middle of a prefix.
    Truncated,
}

/// Checks that `bytes` is a well-formed sequence of prefixes of `family`; returns the count.
/// This is the only pass that can fail; [`PrefixIter`] relies on it and never fails.
pub(crate) fn validate_nlri(family: Family, bytes: &[u8]) -> Result<usize, NlriError> {
    let max = family.max_len();
    let mut i = 0;
    let mut count = 0;
    while i < bytes.len() {
        let len = bytes[i];
        if len > max {
            return Err(NlriError::LengthTooLong { len });
        }
        i += 1 + usize::from(len).div_ceil(8);
        if i > bytes.len() {
            return Err(NlriError::Truncated);
        }
        count += 1;
    }
    Ok(count)
}

/// Iterator over the prefixes of an already validated NLRI field, decoding each one from the
/// borrowed message buffer as it is reached (no allocation).
#[derive(Debug, Clone)]
pub struct PrefixIter<'a> {
    family: Family,
    bytes: &'a [u8],
}

impl<'a> PrefixIter<'a> {
    pub(crate) fn new(family: Family, bytes: &'a [u8]) -> Self {
        Self { family, bytes }
    }
}

impl Iterator for PrefixIter<'_> {
    type Item = Prefix;

    #[inline]
    fn next(&mut self) -> Option<Prefix> {
        let (&len, rest) = self.bytes.split_first()?;
        let n = usize::from(len).div_ceil(8);
        // Validation guarantees `n <= rest.len()`; stay panic-free even if it did not.
        let (addr, rest) = rest.split_at_checked(n)?;
        self.bytes = rest;
        Some(match self.family {
            Family::Ipv4Unicast => {
                let mut b = [0u8; 4];
                b[..n].copy_from_slice(addr);
                Prefix::V4(Ipv4Prefix::truncating(u32::from_be_bytes(b), len))
            }
            Family::Ipv6Unicast => {
                let mut b = [0u8; 16];
                b[..n].copy_from_slice(addr);
                Prefix::V6(Ipv6Prefix::truncating(u128::from_be_bytes(b), len))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_contains_addresses_of_its_family_only() {
        let p = Prefix::new("2001:db8:500::".parse().unwrap(), 64).unwrap();
        assert!(p.contains("2001:db8:500::7".parse().unwrap()));
        assert!(!p.contains("2001:db8:501::7".parse().unwrap()));
        let v4 = Prefix::new("198.51.100.0".parse().unwrap(), 24).unwrap();
        assert!(v4.contains("198.51.100.9".parse().unwrap()) && !v4.contains("198.51.101.9".parse().unwrap()));
        assert!(!v4.contains("::ffff:198.51.100.9".parse().unwrap()));
        assert!(Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap().contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn rejects_prefix_with_host_bits() {
        let err = Ipv4Prefix::new(Ipv4Addr::new(192, 0, 2, 1), 24).unwrap_err();
        assert!(matches!(err, PrefixError::HostBits { len: 24, .. }));
        assert!(Ipv4Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 24).is_ok());
    }

    #[test]
    fn rejects_prefix_longer_than_family() {
        assert_eq!(
            Ipv6Prefix::new(Ipv6Addr::UNSPECIFIED, 129).unwrap_err(),
            PrefixError::TooLong { len: 129, max: 128 }
        );
    }

    #[test]
    fn nlri_decoding_clears_trailing_host_bits() {
        // 192.0.2.0/23 written with the last significant octet's host bit set: 192.0.3.
        let p: Vec<_> = PrefixIter::new(Family::Ipv4Unicast, &[23, 192, 0, 3]).collect();
        assert_eq!(p, vec![Prefix::V4(Ipv4Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 23).unwrap())]);
    }

    #[test]
    fn validate_nlri_flags_truncation_and_overlong_length() {
        assert_eq!(validate_nlri(Family::Ipv4Unicast, &[24, 192, 0]), Err(NlriError::Truncated));
        assert_eq!(validate_nlri(Family::Ipv4Unicast, &[33, 1, 2, 3, 4, 5]), Err(NlriError::LengthTooLong { len: 33 }));
        assert_eq!(validate_nlri(Family::Ipv6Unicast, &[0, 32, 0x20, 1, 0xd, 0xb8]), Ok(2));
    }
}
