//! The forwarding table the speaker wants in the kernel: every Loc-RIB best path learned from a
//! peer, as a prefix and its ECMP next hops (with the interface a link-local next hop needs).
//! Pure data, maintained from the RIB's [`RouteChange`]s; it never talks to the kernel (the
//! appliance's route installer does, and reads the kernel's routes back into this same type).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::rib::{PeerId, RouteChange};
use crate::wire::{NextHop, Prefix};

/// One next hop of a kernel route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FibNextHop {
    /// An IPv4 route may have an IPv6 gateway (RFC 8950; the kernel's RTA_VIA).
    pub gateway: IpAddr,
    /// The outgoing interface. Set when the gateway is link-local (the kernel cannot resolve
    /// one without it): the interface of the session that learned the route. `None` lets the
    /// kernel resolve a global gateway by itself.
    pub ifindex: Option<u32>,
}

impl fmt::Display for FibNextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ifindex {
            Some(ifindex) => write!(f, "{} (ifindex {ifindex})", self.gateway),
            None => write!(f, "{}", self.gateway),
        }
    }
}

/// Prefix → next hops, each set sorted and without duplicates so two equal sets compare equal
/// whatever order the RIB or the kernel listed them in. A prefix is never held with no next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fib {
    routes: BTreeMap<Prefix, Vec<FibNextHop>>,
    /// Graceful restart in progress (RFC 4724 4.1): this process restarted and has not yet heard
    /// End-of-RIB from every restarting-capable peer, so a kernel route missing here may still be
    /// valid. The installer adds and replaces but deletes nothing while this is set.
    deferred: bool,
}

impl Fib {
    pub fn new() -> Fib {
        Fib::default()
    }

    /// Sets `prefix`'s next hops (sorted and deduplicated here); an empty set removes it.
    /// Returns whether anything changed.
    pub fn insert(&mut self, prefix: Prefix, mut next_hops: Vec<FibNextHop>) -> bool {
        next_hops.sort_unstable();
        next_hops.dedup();
        if next_hops.is_empty() {
            return self.routes.remove(&prefix).is_some();
        }
        if self.routes.get(&prefix) == Some(&next_hops) {
            return false;
        }
        self.routes.insert(prefix, next_hops);
        true
    }

    pub fn remove(&mut self, prefix: &Prefix) -> bool {
        self.routes.remove(prefix).is_some()
    }

    pub fn get(&self, prefix: &Prefix) -> Option<&[FibNextHop]> {
        self.routes.get(prefix).map(Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &[FibNextHop])> {
        self.routes.iter().map(|(p, hops)| (p, hops.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// See the `deferred` field: deletions wait while a restart converges.
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// Returns whether it changed.
    pub fn set_deferred(&mut self, deferred: bool) -> bool {
        std::mem::replace(&mut self.deferred, deferred) != deferred
    }

    pub fn clear(&mut self) -> bool {
        let changed = !self.routes.is_empty();
        self.routes.clear();
        changed
    }

    /// Applies Loc-RIB deltas: each change carries the prefix's whole ECMP set, so the entry is
    /// replaced, not patched. `ifindex` names the interface of a peer's session. Next hops the
    /// kernel could not use are left out (see [`next_hop`]); a prefix left with none is removed.
    /// Returns whether anything changed.
    pub fn apply(&mut self, changes: &[RouteChange], ifindex: impl Fn(PeerId) -> Option<u32>) -> bool {
        let mut changed = false;
        for change in changes {
            let hops =
                change.ecmp.iter().filter_map(|p| next_hop(&change.prefix, &p.next_hop, ifindex(p.peer))).collect();
            changed |= self.insert(change.prefix, hops);
        }
        changed
    }
}

/// The kernel next hop for a BGP next hop of a route to `prefix` learned on a session over the
/// interface `ifindex`, or `None` when the kernel could not install it:
/// - IPv4 next hops only for IPv4 prefixes (the kernel has no IPv4 gateway for IPv6 routes);
/// - an IPv6 next hop with a global address uses it (the kernel resolves it); when the global
///   field is itself link-local, or unspecified with a link-local beside it (unnumbered
///   sessions), the link-local address with the session's interface, and no route when that
///   interface is unknown;
/// - IPv4-mapped IPv6 next hops (sent by some speakers over IPv4 sessions that lack an IPv6
///   address) name no IPv6 neighbour and are refused.
pub fn next_hop(prefix: &Prefix, next_hop: &NextHop, ifindex: Option<u32>) -> Option<FibNextHop> {
    match *next_hop {
        NextHop::V4(a) => {
            matches!(prefix, Prefix::V4(_)).then_some(FibNextHop { gateway: IpAddr::V4(a), ifindex: None })
        }
        NextHop::V6 { global, link_local } => {
            let gateway = if global.is_unspecified() { link_local? } else { global };
            if gateway.to_ipv4_mapped().is_some() || gateway.is_unspecified() {
                return None;
            }
            if is_link_local(gateway) {
                return Some(FibNextHop { gateway: IpAddr::V6(gateway), ifindex: Some(ifindex?) });
            }
            Some(FibNextHop { gateway: IpAddr::V6(gateway), ifindex: None })
        }
    }
}

pub(crate) fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rib::{EcmpPath, Route, RouteAttrs, Source};
    use crate::wire::PathAttributes;

    fn prefix(s: &str) -> Prefix {
        let (addr, len) = s.split_once('/').unwrap();
        Prefix::new(addr.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    fn v4(s: &str) -> NextHop {
        NextHop::V4(s.parse().unwrap())
    }

    fn v6(global: &str, link_local: Option<&str>) -> NextHop {
        NextHop::V6 { global: global.parse().unwrap(), link_local: link_local.map(|l| l.parse().unwrap()) }
    }

    fn hop(gateway: &str, ifindex: Option<u32>) -> FibNextHop {
        FibNextHop { gateway: gateway.parse().unwrap(), ifindex }
    }

    /// A change whose ECMP set is `paths` (peer number, next hop); empty = prefix gone.
    fn change(p: &str, paths: &[(u32, NextHop)]) -> RouteChange {
        let route = |peer: u32, nh: NextHop| Route {
            source: Source::Peer(PeerId(peer)),
            attrs: Arc::new(RouteAttrs { attributes: PathAttributes::default(), next_hop: Some(nh) }),
        };
        RouteChange {
            prefix: prefix(p),
            best: paths.first().map(|(peer, nh)| route(*peer, *nh)),
            ecmp: paths.iter().map(|(peer, nh)| EcmpPath { peer: PeerId(*peer), next_hop: *nh }).collect(),
            previous: None,
        }
    }

    /// Peer 1 on ifindex 3, peer 2 on ifindex 4, others unknown.
    fn ifindex(peer: PeerId) -> Option<u32> {
        match peer.0 {
            1 => Some(3),
            2 => Some(4),
            _ => None,
        }
    }

    #[test]
    fn ecmp_set_becomes_sorted_next_hops() {
        let mut fib = Fib::new();
        let changed = fib.apply(&[change("0.0.0.0/0", &[(2, v4("192.0.2.9")), (1, v4("192.0.2.1"))])], ifindex);
        assert!(changed);
        assert_eq!(fib.get(&prefix("0.0.0.0/0")), Some(&[hop("192.0.2.1", None), hop("192.0.2.9", None)][..]));
    }

    #[test]
    fn later_change_replaces_the_whole_set_and_an_empty_one_removes_the_prefix() {
        let mut fib = Fib::new();
        fib.apply(&[change("::/0", &[(1, v6("2001:db8:a::2", None)), (2, v6("2001:db8:b::2", None))])], ifindex);
        fib.apply(&[change("::/0", &[(2, v6("2001:db8:b::2", None))])], ifindex);
        assert_eq!(fib.get(&prefix("::/0")), Some(&[hop("2001:db8:b::2", None)][..]));
        assert!(fib.apply(&[change("::/0", &[])], ifindex));
        assert!(fib.is_empty());
    }

    #[test]
    fn same_set_in_another_order_is_no_change() {
        let mut fib = Fib::new();
        fib.apply(&[change("203.0.113.0/24", &[(1, v4("192.0.2.1")), (2, v4("192.0.2.9"))])], ifindex);
        assert!(!fib.apply(&[change("203.0.113.0/24", &[(2, v4("192.0.2.9")), (1, v4("192.0.2.1"))])], ifindex));
    }

    #[test]
    fn node_own_announcement_has_no_kernel_route() {
        // The RIB reports a local best path with an empty ECMP set: a route a peer taught us
        // before is removed, and nothing is installed for the node's own prefix.
        let mut fib = Fib::new();
        fib.apply(&[change("198.51.100.0/24", &[(1, v4("192.0.2.1"))])], ifindex);
        let mut local = change("198.51.100.0/24", &[]);
        local.best = Some(Route {
            source: Source::Local,
            attrs: Arc::new(RouteAttrs { attributes: PathAttributes::default(), next_hop: None }),
        });
        assert!(fib.apply(&[local], ifindex));
        assert_eq!(fib.get(&prefix("198.51.100.0/24")), None);
    }

    #[test]
    fn link_local_next_hop_carries_the_session_interface() {
        let mut fib = Fib::new();
        // RFC 8950 over an unnumbered session: IPv4 prefix, link-local only.
        fib.apply(&[change("0.0.0.0/0", &[(1, v6("fe80::1", None)), (2, v6("::", Some("fe80::2")))])], ifindex);
        assert_eq!(fib.get(&prefix("0.0.0.0/0")), Some(&[hop("fe80::1", Some(3)), hop("fe80::2", Some(4))][..]));
    }

    #[test]
    fn global_next_hop_is_preferred_over_its_link_local_and_needs_no_interface() {
        let nh = v6("2001:db8:a::2", Some("fe80::2"));
        assert_eq!(next_hop(&prefix("::/0"), &nh, Some(3)), Some(hop("2001:db8:a::2", None)));
        assert_eq!(next_hop(&prefix("0.0.0.0/0"), &nh, None), Some(hop("2001:db8:a::2", None)));
    }

    #[test]
    fn next_hops_the_kernel_cannot_use_are_left_out() {
        // Link-local without a known interface, IPv4 gateway for an IPv6 prefix, IPv4-mapped.
        assert_eq!(next_hop(&prefix("::/0"), &v6("fe80::1", None), None), None);
        assert_eq!(next_hop(&prefix("::/0"), &v4("192.0.2.1"), Some(3)), None);
        assert_eq!(next_hop(&prefix("::/0"), &v6("::ffff:192.0.2.1", None), Some(3)), None);
        let mut fib = Fib::new();
        assert!(!fib.apply(&[change("::/0", &[(9, v6("fe80::1", None))])], ifindex));
        assert!(fib.is_empty());
        fib.apply(&[change("::/0", &[(9, v6("fe80::1", None)), (1, v6("fe80::2", None))])], ifindex);
        assert_eq!(fib.get(&prefix("::/0")), Some(&[hop("fe80::2", Some(3))][..]));
    }
}
