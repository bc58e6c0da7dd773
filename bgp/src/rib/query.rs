//! Read-only views of the RIBs for `show bgp routes [PREFIX]` and `show bgp summary`: every
//! path of a prefix with its flags and age, and per-peer counters. Copies out small structs
//! (attributes stay shared); never changes a RIB.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decision::Ctx;
use super::paths::{PathSet, BEST, ECMP, STALE};
use super::{PeerId, PeerInfo, Rib, RouteAttrs, Source};
use crate::wire::{Ipv4Prefix, Ipv6Prefix, Prefix};

/// One path of a prefix as `show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathView {
    pub source: Source,
    /// Address of the peer it came from (`None` for the node's own announcement).
    pub peer_addr: Option<IpAddr>,
    pub attrs: Arc<RouteAttrs>,
    /// LOCAL_PREF as the decision process used it (the default when absent).
    pub local_pref: u32,
    pub best: bool,
    pub ecmp: bool,
    pub stale: bool,
    /// Time since the path was received or last changed (one-second granularity).
    pub age: Duration,
}

/// Every path of one prefix, the best first, then the other ECMP members, then the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixView {
    pub prefix: Prefix,
    pub paths: Vec<PathView>,
}

/// Per-peer counters. `received`, `withdrawn`, `rejected`, `treat_as_withdraw` and `updates`
/// count since the peer was first seen (prefixes, not messages, except the last two); `accepted`,
/// `stale` and `sent` are current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// UPDATE messages applied.
    pub updates: u64,
    /// Prefixes announced by the peer, accepted or not.
    pub received: u64,
    /// Prefixes withdrawn by the peer (treat-as-withdraw included).
    pub withdrawn: u64,
    /// Announced prefixes refused by import policy, an AS loop or the prefix limit.
    pub rejected: u64,
    /// UPDATEs handled as treat-as-withdraw (RFC 7606).
    pub treat_as_withdraw: u64,
    /// Prefixes announced or withdrawn in a family the session did not negotiate, ignored.
    pub ignored: u64,
    /// Prefixes in the peer's Adj-RIB-In now.
    pub accepted: usize,
    /// Of those, still stale after a graceful restart.
    pub stale: usize,
    /// Prefixes in the peer's Adj-RIB-Out now.
    pub sent: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    pub info: PeerInfo,
    pub up: bool,
    pub counters: PeerCounters,
    /// Distinct attribute sets interned for the peer (memory diagnostics).
    pub attribute_sets: usize,
}

impl Rib {
    fn view(&self, prefix: Prefix, set: &PathSet, now: Instant) -> PrefixView {
        let ctx = Ctx { peers: &self.infos, config: &self.config.decision, local_asn: self.config.local_asn };
        let epoch = self.epoch.unwrap_or(now);
        let paths = set
            .as_slice()
            .iter()
            .map(|p| PathView {
                source: p.source,
                peer_addr: match p.source {
                    Source::Local => None,
                    Source::Peer(id) => self.infos.get(&id).map(|i| i.addr),
                },
                attrs: p.attrs.clone(),
                local_pref: ctx.local_pref(p),
                best: p.is(BEST),
                ecmp: p.is(ECMP),
                stale: p.is(STALE),
                age: now.saturating_duration_since(epoch + Duration::from_secs(u64::from(p.since))),
            })
            .collect();
        PrefixView { prefix, paths }
    }

    /// Every path of exactly `prefix`.
    pub fn lookup(&self, prefix: &Prefix, now: Instant) -> Option<PrefixView> {
        self.tables.get(prefix).map(|set| self.view(*prefix, set, now))
    }

    /// The longest prefix in the table that contains `addr` (`show bgp routes 203.0.113.7`).
    pub fn longest_match(&self, addr: IpAddr, now: Instant) -> Option<PrefixView> {
        match addr {
            IpAddr::V4(a) => (0..=32u8).rev().find_map(|len| {
                let bits = if len == 0 { 0 } else { u32::from(a) & (u32::MAX << (32 - u32::from(len))) };
                let p = Prefix::V4(Ipv4Prefix::new(bits.into(), len).ok()?);
                self.lookup(&p, now)
            }),
            IpAddr::V6(a) => (0..=128u8).rev().find_map(|len| {
                let bits = if len == 0 { 0 } else { u128::from(a) & (u128::MAX << (128 - u32::from(len))) };
                let p = Prefix::V6(Ipv6Prefix::new(bits.into(), len).ok()?);
                self.lookup(&p, now)
            }),
        }
    }

    /// Every prefix with its paths, sorted by prefix (IPv4 first).
    pub fn routes(&self, now: Instant) -> Vec<PrefixView> {
        let mut v4: Vec<_> = self.tables.v4.iter().collect();
        v4.sort_unstable_by_key(|(k, _)| **k);
        let mut v6: Vec<_> = self.tables.v6.iter().collect();
        v6.sort_unstable_by_key(|(k, _)| **k);
        let v4 = v4.into_iter().map(|(k, set)| self.view(Prefix::V4(*k), set, now));
        let v6 = v6.into_iter().map(|(k, set)| self.view(Prefix::V6(*k), set, now));
        v4.chain(v6).collect()
    }

    pub fn peer(&self, peer: PeerId) -> Option<PeerSummary> {
        let state = self.peers.get(&peer)?;
        Some(PeerSummary {
            info: *self.infos.get(&peer)?,
            up: state.up,
            counters: PeerCounters { accepted: state.accepted.iter().sum(), ..state.counters },
            attribute_sets: state.interner.len(),
        })
    }

    /// Every known peer, by id.
    pub fn peers(&self) -> Vec<PeerSummary> {
        self.peers.keys().filter_map(|id| self.peer(*id)).collect()
    }
}
