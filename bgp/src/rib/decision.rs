//! The RFC 4271 9.1 decision process over the paths of one prefix, plus the ECMP set. Pure:
//! it orders a prefix's paths and sets their best/ECMP flags, and never adds or removes one.
//!
//! Steps, each removing every path not tied for the best value among those still in the race:
//!
//! 1. the node's own announcement (a preconfigured policy, RFC 4271 9.1.1, acting like a
//!    weight: it always wins, so a peer can never hijack a prefix the node announces);
//! 2. highest degree of preference: LOCAL_PREF, [`DecisionConfig::default_local_pref`] (100)
//!    when absent; LOCAL_PREF from eBGP peers is never read (RFC 7606 7.5), so eBGP routes get
//!    the default unless import policy set one;
//! 3. (9.1.2.2 a) shortest AS_PATH, an AS_SET counting 1 and confederation segments 0;
//! 4. (b) lowest ORIGIN (IGP < EGP < INCOMPLETE);
//! 5. (c) lowest MULTI_EXIT_DISC, compared only between paths from the same neighbour AS (the
//!    first AS of the AS_PATH; for iBGP paths with an empty path or a leading AS_SET, the
//!    local AS), an absent MED counting as 0. `always_compare_med` (off by default, as RFC 4271
//!    says) compares across neighbour ASes;
//! 6. (d) eBGP over iBGP. The paths still in the race here form the ECMP candidates;
//! 7. (e) interior cost to the next hop: skipped, a server has no IGP (the RFC allows it);
//! 8. oldest path when all are eBGP (RFC 5004): off by default, because it makes the result
//!    depend on arrival order; with it, the age has a one-second granularity;
//! 9. (f) lowest BGP identifier of the advertising peer;
//! 10. (g) lowest peer address; finally the lowest [`super::PeerId`], so the result never
//!     depends on storage order.
//!
//! Unresolvable next hops (9.1.2) are not filtered here: on a server every BGP next hop is a
//! directly connected ToR, and routes with an AS loop never get in (import drops them).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::paths::{Path, BEST, ECMP};
use super::{PeerId, PeerInfo, Source};
use crate::wire::{AsPath, Origin};

/// Knobs of the decision process and multipath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionConfig {
    /// LOCAL_PREF assumed for paths without one (eBGP-learned paths, usually).
    pub default_local_pref: u32,
    /// Compare MED between paths from different neighbour ASes. Off: RFC 4271 9.1.2.2 (c).
    pub always_compare_med: bool,
    /// Prefer the oldest of several eBGP paths before comparing router ids (RFC 5004). Off.
    pub prefer_oldest_ebgp: bool,
    /// Largest ECMP set, best path included; 1 disables multipath.
    pub max_paths: usize,
    /// "Multipath relax": paths through different neighbour ASes may share the ECMP set (they
    /// already have equal AS_PATH lengths). Without it, eBGP members must come from the best
    /// path's neighbour AS and iBGP members must have the identical AS_PATH. On by
    /// default: a server's two ToRs are often in different ASes (RFC 7938) and both links
    /// should carry traffic.
    pub multipath_relax: bool,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            default_local_pref: 100,
            always_compare_med: false,
            prefer_oldest_ebgp: false,
            max_paths: 8,
            multipath_relax: true,
        }
    }
}

/// What the decision needs besides the paths.
pub(crate) struct Ctx<'a> {
    pub peers: &'a HashMap<PeerId, PeerInfo>,
    pub config: &'a DecisionConfig,
    pub local_asn: u32,
}

/// The values the steps compare, for one path, and its fate.
struct Key {
    local: bool,
    local_pref: u32,
    as_len: usize,
    origin: Origin,
    med: u32,
    neighbor_as: u32,
    ebgp: bool,
    since: u32,
    router_id: Ipv4Addr,
    addr: IpAddr,
    peer: u32,
    /// Still in the race.
    alive: bool,
    /// Final position: ECMP members first, best at 0.
    rank: usize,
}

impl Ctx<'_> {
    /// LOCAL_PREF as the decision sees it.
    pub fn local_pref(&self, path: &Path) -> u32 {
        path.attrs.attributes.local_pref.unwrap_or(self.config.default_local_pref)
    }

    fn key(&self, path: &Path) -> Key {
        let a = &path.attrs.attributes;
        let (local, peer, info) = match path.source {
            Source::Local => (true, 0, None),
            Source::Peer(id) => (false, id.0, self.peers.get(&id)),
        };
        let ebgp = info.is_some_and(|i| i.ebgp);
        let first = a.as_path.as_ref().and_then(AsPath::first_as);
        let neighbor_as = match (ebgp, first, info) {
            (_, Some(asn), _) => asn,
            (true, None, Some(i)) => i.asn,
            _ => self.local_asn,
        };
        Key {
            local,
            local_pref: self.local_pref(path),
            as_len: a.as_path.as_ref().map_or(0, AsPath::route_len),
            origin: a.origin.unwrap_or(Origin::Incomplete),
            med: a.med.unwrap_or(0),
            neighbor_as,
            ebgp,
            since: path.since,
            router_id: info.map_or(Ipv4Addr::BROADCAST, |i| i.router_id),
            addr: info.map_or(IpAddr::from([0u8; 4]), |i| i.addr),
            peer,
            alive: true,
            rank: usize::MAX,
        }
    }
}

/// Keeps in the race only the candidates with the smallest `f`.
fn keep_min<T: Ord>(keys: &mut [Key], f: impl Fn(&Key) -> T) {
    if let Some(min) = keys.iter().filter(|k| k.alive).map(&f).min() {
        for k in keys.iter_mut().filter(|k| k.alive) {
            k.alive = f(k) == min;
        }
    }
}

/// Orders `paths` best first, then the other ECMP members, then the rest, and sets the flags.
/// One allocation (the keys); the paths are permuted in place.
pub(crate) fn select(paths: &mut [Path], ctx: &Ctx<'_>) {
    let cfg = ctx.config;
    let mut keys: Vec<Key> = paths.iter().map(|p| ctx.key(p)).collect();
    if keys.iter().any(|k| k.local) {
        keys.iter_mut().for_each(|k| k.alive = k.local);
    }
    keep_min(&mut keys, |k| Reverse(k.local_pref));
    keep_min(&mut keys, |k| k.as_len);
    keep_min(&mut keys, |k| k.origin);
    if cfg.always_compare_med {
        keep_min(&mut keys, |k| k.med);
    } else {
        // RFC 4271 9.1.2.2 (c): m goes if some n from the same neighbour AS has a lower MED.
        // Deciding every removal against the same set (not pairwise, one after the other)
        // keeps the result independent of order, MED comparison not being transitive
        // across ASes.
        let beaten: Vec<bool> = keys
            .iter()
            .map(|m| m.alive && keys.iter().any(|n| n.alive && n.neighbor_as == m.neighbor_as && n.med < m.med))
            .collect();
        keys.iter_mut().zip(beaten).for_each(|(k, b)| k.alive &= !b);
    }
    if keys.iter().any(|k| k.alive && k.ebgp) {
        keys.iter_mut().for_each(|k| k.alive &= k.ebgp);
    }
    // The remaining steps are a lexicographic order; the survivors are the ECMP candidates.
    let oldest = cfg.prefer_oldest_ebgp && keys.iter().filter(|k| k.alive).all(|k| k.ebgp);
    let tiebreak = |k: &Key| (if oldest { k.since } else { 0 }, k.router_id, k.addr, k.peer);
    let best = (0..keys.len()).filter(|&i| keys[i].alive).min_by_key(|&i| tiebreak(&keys[i])).expect("a survivor");
    keys[best].rank = 0;
    let mut next = 1;
    if !keys[best].local {
        let mut members: Vec<usize> = (0..keys.len())
            .filter(|&i| i != best && keys[i].alive)
            .filter(|&i| {
                cfg.multipath_relax
                    || if keys[best].ebgp {
                        keys[i].neighbor_as == keys[best].neighbor_as
                    } else {
                        paths[i].attrs.attributes.as_path == paths[best].attrs.attributes.as_path
                    }
            })
            .collect();
        members.sort_by_key(|&i| tiebreak(&keys[i]));
        for i in members.into_iter().take(cfg.max_paths.saturating_sub(1)) {
            keys[i].rank = next;
            next += 1;
        }
    }
    let ecmp_len = next;
    for k in keys.iter_mut().filter(|k| k.rank == usize::MAX) {
        k.rank = next;
        next += 1;
    }
    // Selection by rank, swapping paths and keys together.
    for pos in 0..paths.len() {
        let j = (pos..keys.len()).find(|&j| keys[j].rank == pos).expect("ranks are a permutation");
        paths.swap(pos, j);
        keys.swap(pos, j);
        let p = &mut paths[pos];
        p.flags &= !(BEST | ECMP);
        if pos == 0 {
            p.flags |= BEST;
        }
        if pos < ecmp_len {
            p.flags |= ECMP;
        }
    }
}
