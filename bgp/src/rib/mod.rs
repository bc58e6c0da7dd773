//! The RIBs of the speaker (RFC 4271 3.2): every peer's Adj-RIB-In after import policy, the
//! Loc-RIB chosen by the decision process with its ECMP sets, the node's own announcements,
//! and every peer's Adj-RIB-Out. Pure data structures: UPDATEs and time come in as
//! arguments, route deltas and export diffs go out; no socket, clock or kernel route here.
//!
//! # Storage
//!
//! The Adj-RIBs-In and the Loc-RIB share one table per address family: each prefix holds the
//! paths of every source (a peer's path *is* its Adj-RIB-In entry) and the Loc-RIB is the
//! best/ECMP flags on them. A full table therefore costs one hash entry per prefix, not one per
//! RIB. Attributes are interned per peer: every prefix of an UPDATE, and every UPDATE with the
//! same attributes and next hop, shares one [`Arc<RouteAttrs>`]. A path is 24 bytes and a
//! prefix's path set too (a single path inline; several in a boxed vector).
//!
//! Measured by `benches/ingest.rs` (release, 2-core development machine, decode included,
//! each scenario in its own process):
//!
//! | scenario | first UPDATE -> last prefix in Loc-RIB | decode alone | memory (peak RSS growth) |
//! |---|---|---|---|
//! | 1 peer, 1.2M prefixes (128,431 UPDATEs) | 378-449 ms, 315-374 ns/prefix | 26-38 ms | 66 MiB, 58 bytes/prefix |
//! | 10 peers x 100,000 shared prefixes | 493-517 ms, 493-517 ns/path | 22-24 ms | 71 MiB, 74 bytes/path |
//!
//! The RIB costs 12-23x the decode: a hash insert per prefix (a cache miss in a table of a
//! million) and a [`RouteChange`] per Loc-RIB change dominate. A peer going down removes a
//! full table in 0.2-0.6 s (the spread is other builds sharing the two cores).
//!
//! # Using it
//!
//! ```text
//!  session established ──▶ peer_up(info, policy, session)
//!  Output::Update(u)   ──▶ apply_update(peer, &u, now) ─▶ UpdateOutcome { changes, end_of_rib,
//!                                                         max_prefix }
//!  model announcements ──▶ set_local_routes(routes, now) ─▶ changes
//!  after either        ──▶ export(peer) for each up peer ─▶ ExportDiff ─▶ encode ─▶ session
//!  session down        ──▶ peer_down(peer) ─▶ changes  (or mark_stale(peer) with graceful
//!                                                      restart, then sweep_stale after EoR)
//! ```
//!
//! [`RouteChange`]s are deltas of the Loc-RIB for the kernel-route installer.

mod decision;
mod export;
mod paths;
mod query;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::RandomState;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

pub use decision::DecisionConfig;
pub use export::{Announcement, ExportDiff, ExportSession, ExportSkip, LocalRoute};
pub use query::{PathView, PeerCounters, PeerSummary, PrefixView};

use crate::policy::{ExportPolicy, ImportPolicy, MaxPrefixAction, Verdict};
use crate::wire::{
    Family, Ipv4Prefix, Ipv6Prefix, NextHop, Notification, NotificationError, PathAttributes, Prefix, Prefixes, Update,
};
use decision::Ctx;
use paths::{Path, PathSet, Upsert, BEST, ECMP, STALE};

/// A peer as the RIB names it. The caller chooses the number (e.g. the peer's index in the
/// configuration) and keeps it stable across session flaps, which graceful restart needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// What the decision process and export need to know about an established peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    pub id: PeerId,
    pub addr: IpAddr,
    pub asn: u32,
    /// The peer's BGP identifier from its OPEN.
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
}

/// Where a path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The node's own announcement (`[[bgp.announce]]`).
    Local,
    Peer(PeerId),
}

/// The attributes of a path and its next hop, shared between every prefix that has them.
/// `attributes.next_hop` is always `None`: the next hop of either family is in `next_hop`
/// (`None` only for the node's own announcements).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAttrs {
    pub attributes: PathAttributes,
    pub next_hop: Option<NextHop>,
}

/// A path as the Loc-RIB hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub source: Source,
    pub attrs: Arc<RouteAttrs>,
}

/// One next hop of a prefix's ECMP set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EcmpPath {
    pub peer: PeerId,
    pub next_hop: NextHop,
}

/// A change of one prefix in the Loc-RIB: its best path, or its ECMP set, or the best path's
/// attributes changed. `best: None` means the prefix is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub prefix: Prefix,
    pub best: Option<Route>,
    /// Next hops to install, the best path's first. Empty when there is no best path or when
    /// it is the node's own announcement (nothing to route to a peer).
    pub ecmp: Vec<EcmpPath>,
    /// The best path before the change.
    pub previous: Option<Route>,
}

/// A peer sent more accepted prefixes than its [`crate::policy::MaxPrefix`] limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxPrefixEvent {
    pub peer: PeerId,
    pub addr: IpAddr,
    /// Family of the prefix that crossed the limit.
    pub family: Family,
    pub limit: u32,
    /// Accepted prefixes of `family` including the one that crossed the limit (the limit
    /// applies to each family on its own).
    pub accepted: usize,
    pub action: MaxPrefixAction,
}

impl MaxPrefixEvent {
    /// Cease / Maximum Number of Prefixes Reached with the RFC 4486 data: AFI (2 octets),
    /// SAFI (1), the configured upper bound (4). Sent only for [`MaxPrefixAction::Teardown`].
    pub fn notification(&self) -> Notification {
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&self.family.afi().0.to_be_bytes());
        data.push(self.family.safi().0);
        data.extend_from_slice(&self.limit.to_be_bytes());
        Notification::new(NotificationError::MaxPrefixesReached, data)
    }
}

impl fmt::Display for MaxPrefixEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer {} has {} accepted {} prefixes, over its max_prefix limit of {} per family; ",
            self.addr, self.accepted, self.family, self.limit
        )?;
        f.write_str(match self.action {
            MaxPrefixAction::Warn => "warning only, the routes are kept; raise the limit or filter the peer",
            MaxPrefixAction::Teardown => {
                "closing the session (Cease 6/1); raise the limit or fix the peer's export policy"
            }
        })
    }
}

/// What applying one UPDATE did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub changes: Vec<RouteChange>,
    /// The UPDATE was the End-of-RIB marker of this family (RFC 4724 2).
    pub end_of_rib: Option<Family>,
    /// Prefixes of a family the session did not negotiate, ignored.
    pub ignored: u64,
    /// Set when this UPDATE crossed the peer's prefix limit.
    pub max_prefix: Option<MaxPrefixEvent>,
    /// The codec decided treat-as-withdraw (RFC 7606): every prefix it carried was withdrawn.
    pub treat_as_withdraw: bool,
    /// Prefixes announced that import policy (or an AS loop, or the prefix limit) refused.
    pub rejected: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RibError {
    #[error("{peer} is not known to the RIB; call peer_up when its session is established")]
    UnknownPeer { peer: PeerId },
    #[error("{peer} ({addr}) is down; call peer_up when its session is established again")]
    PeerDown { peer: PeerId, addr: IpAddr },
}

/// RIB-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RibConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub decision: DecisionConfig,
}

impl RibConfig {
    pub fn new(local_asn: u32, router_id: Ipv4Addr) -> Self {
        RibConfig { local_asn, router_id, decision: DecisionConfig::default() }
    }
}

/// Identical attribute sets of one peer, shared. Each set's hash is computed once: table
/// growth would otherwise rehash every AS path and community list. Entries nobody else holds
/// any more are dropped in sweeps whose period grows with the live count (amortised O(1)).
#[derive(Debug, Default)]
struct Interner {
    set: HashSet<Interned, RandomState>,
    hasher: RandomState,
    next_sweep: usize,
}

/// An interned set with its precomputed hash.
#[derive(Debug)]
struct Interned {
    hash: u64,
    attrs: Arc<RouteAttrs>,
}

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.attrs, &other.attrs) || self.attrs == other.attrs)
    }
}

impl Eq for Interned {}

impl Hash for Interned {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Interner {
    fn intern(&mut self, attrs: RouteAttrs) -> Arc<RouteAttrs> {
        use std::hash::BuildHasher;
        let probe = Interned { hash: self.hasher.hash_one(&attrs), attrs: Arc::new(attrs) };
        if let Some(found) = self.set.get(&probe) {
            return found.attrs.clone();
        }
        if self.set.len() >= self.next_sweep {
            self.set.retain(|a| Arc::strong_count(&a.attrs) > 1);
            self.next_sweep = (self.set.len() * 2).max(1024);
        }
        let attrs = probe.attrs.clone();
        self.set.insert(probe);
        attrs
    }

    fn len(&self) -> usize {
        self.set.len()
    }
}

/// The mutable state of one peer.
#[derive(Debug)]
struct PeerState {
    up: bool,
    import: ImportPolicy,
    export: ExportPolicy,
    interner: Interner,
    counters: PeerCounters,
    /// Families the session negotiated: NLRI of any other family are ignored (as FRR and BIRD
    /// do; RFC 4760 leaves it open), so a peer cannot put routes of a family it was not agreed
    /// to carry into the RIB, past import rules written for the families configured.
    families: [bool; 2],
    /// Prefixes in the Adj-RIB-In by family ([`family_index`]): the max-prefix limit applies to
    /// each family on its own, as the NOTIFICATION names one AFI/SAFI (RFC 4486 4). Their sum is
    /// `PeerCounters::accepted`, filled in when the counters are read (`counters.accepted` is
    /// not kept).
    accepted: [usize; 2],
    /// A Warn event was reported for the family and its count has not fallen back under the
    /// limit since.
    warned: [bool; 2],
    /// Teardown limit crossed: refuse every announcement until the next `peer_up`.
    tripped: bool,
    out: export::AdjRibOut,
}

/// The per-family tables. Keys are the family's own prefix type: 8 bytes for IPv4, so the
/// million-entry table does not pay for IPv6-sized keys.
#[derive(Debug, Default)]
struct Tables {
    v4: Map<Ipv4Prefix, PathSet>,
    v6: Map<Ipv6Prefix, PathSet>,
}

type Map<K, V> = HashMap<K, V, RandomState>;

/// What one table operation did.
#[derive(Debug, Default)]
struct OpResult {
    change: Option<RouteChange>,
    /// A path was added (not replaced).
    inserted: bool,
    /// A path was removed.
    removed: bool,
    /// The replaced or removed path was stale.
    was_stale: bool,
}

enum Op {
    Upsert(Path),
    Remove(Source),
}

/// The Loc-RIB's view of a prefix before a change: best path and the other ECMP members.
/// The best path's attributes are compared by address: interned sets are shared, and the
/// caller keeps the previous best's `Arc` alive until the comparison, so an address cannot
/// be reused in between.
#[derive(PartialEq)]
struct Selected {
    best: Option<(Source, *const RouteAttrs)>,
    others: Vec<(Source, Option<NextHop>)>,
}

fn selected(paths: &[Path]) -> Selected {
    let best = paths.first().filter(|p| p.is(BEST)).map(|p| (p.source, Arc::as_ptr(&p.attrs)));
    let others = paths.iter().skip(1).take_while(|p| p.is(ECMP)).map(|p| (p.source, p.attrs.next_hop)).collect();
    Selected { best, others }
}

fn route_of(p: &Path) -> Route {
    Route { source: p.source, attrs: p.attrs.clone() }
}

fn change_of(prefix: Prefix, paths: &[Path], previous: Option<Route>) -> RouteChange {
    let best = paths.first().filter(|p| p.is(BEST));
    let ecmp = match best.map(|p| p.source) {
        Some(Source::Peer(_)) => paths
            .iter()
            .take_while(|p| p.is(ECMP))
            .filter_map(|p| match (p.source, p.attrs.next_hop) {
                (Source::Peer(peer), Some(next_hop)) => Some(EcmpPath { peer, next_hop }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    RouteChange { prefix, best: best.map(route_of), ecmp, previous }
}

/// Re-runs the decision for `set` after a change.
fn reselect(set: &mut PathSet, ctx: &Ctx<'_>) {
    match set {
        PathSet::One(p) => p.flags = (p.flags & STALE) | BEST | ECMP,
        PathSet::Many(v) => decision::select(v, ctx),
    }
}

/// Applies `op` to the existing set of `prefix`; returns the result and whether the set is
/// now empty (the caller deletes it).
fn apply_to_set(set: &mut PathSet, prefix: Prefix, op: Op, ctx: &Ctx<'_>) -> (OpResult, bool) {
    let before = selected(set.as_slice());
    let previous = set.as_slice().first().filter(|p| p.is(BEST)).map(route_of);
    let mut r = OpResult::default();
    match op {
        Op::Upsert(path) => match set.upsert(path) {
            Upsert::Inserted => r.inserted = true,
            Upsert::Replaced { was_stale } => r.was_stale = was_stale,
            Upsert::Refreshed { was_stale } => {
                r.was_stale = was_stale;
                return (r, false);
            }
        },
        Op::Remove(source) => match set.remove(source) {
            None => return (r, false),
            Some((old, emptied)) => {
                r.removed = true;
                r.was_stale = old.is(STALE);
                if emptied {
                    r.change = previous.map(|previous| RouteChange {
                        prefix,
                        best: None,
                        ecmp: Vec::new(),
                        previous: Some(previous),
                    });
                    return (r, true);
                }
            }
        },
    }
    reselect(set, ctx);
    if selected(set.as_slice()) != before {
        r.change = Some(change_of(prefix, set.as_slice(), previous));
    }
    (r, false)
}

fn apply_in<K: Copy + Eq + Hash + Into<Prefix>>(map: &mut Map<K, PathSet>, key: K, op: Op, ctx: &Ctx<'_>) -> OpResult {
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Vacant(v) => match op {
            Op::Remove(_) => OpResult::default(),
            Op::Upsert(mut path) => {
                path.flags = (path.flags & STALE) | BEST | ECMP;
                let change = change_of(key.into(), std::slice::from_ref(&path), None);
                v.insert(PathSet::One(path));
                OpResult { change: Some(change), inserted: true, ..OpResult::default() }
            }
        },
        Entry::Occupied(mut o) => {
            let (r, emptied) = apply_to_set(o.get_mut(), key.into(), op, ctx);
            if emptied {
                o.remove();
            }
            r
        }
    }
}

impl Tables {
    fn apply(&mut self, prefix: Prefix, op: Op, ctx: &Ctx<'_>) -> OpResult {
        match prefix {
            Prefix::V4(k) => apply_in(&mut self.v4, k, op, ctx),
            Prefix::V6(k) => apply_in(&mut self.v6, k, op, ctx),
        }
    }

    fn get(&self, prefix: &Prefix) -> Option<&PathSet> {
        match prefix {
            Prefix::V4(k) => self.v4.get(k),
            Prefix::V6(k) => self.v6.get(k),
        }
    }

    /// Removes the paths of `source` for which `pred` holds, in every prefix of `families`.
    fn remove_where(
        &mut self,
        source: Source,
        families: &[Family],
        pred: impl Fn(&Path) -> bool,
        ctx: &Ctx<'_>,
        out: &mut Vec<RouteChange>,
    ) -> usize {
        fn sweep<K: Copy + Eq + Hash + Into<Prefix>>(
            map: &mut Map<K, PathSet>,
            source: Source,
            pred: &dyn Fn(&Path) -> bool,
            ctx: &Ctx<'_>,
            out: &mut Vec<RouteChange>,
        ) -> usize {
            let mut removed = 0;
            map.retain(|k, set| {
                if !set.find(source).is_some_and(pred) {
                    return true;
                }
                let (r, emptied) = apply_to_set(set, (*k).into(), Op::Remove(source), ctx);
                removed += usize::from(r.removed);
                out.extend(r.change);
                !emptied
            });
            if map.capacity() > 4 * map.len().max(64) {
                map.shrink_to_fit();
            }
            removed
        }
        let mut n = 0;
        if families.contains(&Family::Ipv4Unicast) {
            n += sweep(&mut self.v4, source, &pred, ctx, out);
        }
        if families.contains(&Family::Ipv6Unicast) {
            n += sweep(&mut self.v6, source, &pred, ctx, out);
        }
        n
    }

    fn for_each_path_mut(&mut self, mut f: impl FnMut(&mut Path)) {
        for set in self.v4.values_mut().chain(self.v6.values_mut()) {
            set.as_mut_slice().iter_mut().for_each(&mut f);
        }
    }
}

const ALL_FAMILIES: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

/// The RIBs of one speaker.
#[derive(Debug)]
pub struct Rib {
    config: RibConfig,
    tables: Tables,
    infos: HashMap<PeerId, PeerInfo>,
    peers: BTreeMap<PeerId, PeerState>,
    locals: BTreeMap<Prefix, LocalRoute>,
    /// Time of the first event; path ages are stored as seconds since.
    epoch: Option<Instant>,
}

impl Rib {
    pub fn new(config: RibConfig) -> Self {
        Rib {
            config,
            tables: Tables::default(),
            infos: HashMap::new(),
            peers: BTreeMap::new(),
            locals: BTreeMap::new(),
            epoch: None,
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    fn stamp(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Registers an established session (or the same peer re-established). Routes kept stale
    /// by [`Rib::mark_stale`] stay until refreshed or swept. The Adj-RIB-Out starts empty:
    /// the next [`Rib::export`] sends everything, then End-of-RIB.
    pub fn peer_up(&mut self, info: PeerInfo, import: ImportPolicy, export: ExportPolicy, session: ExportSession) {
        let id = info.id;
        self.infos.insert(id, info);
        let state = self.peers.entry(id).or_insert_with(|| PeerState {
            up: false,
            import: ImportPolicy::default(),
            export: ExportPolicy::default(),
            interner: Interner::default(),
            counters: PeerCounters::default(),
            families: [false; 2],
            accepted: [0; 2],
            warned: [false; 2],
            tripped: false,
            out: export::AdjRibOut::default(),
        });
        state.up = true;
        state.import = import;
        state.export = export;
        state.families = [false; 2];
        for family in &session.families {
            state.families[family_index(*family)] = true;
        }
        state.warned = [false; 2];
        state.tripped = false;
        state.out = export::AdjRibOut::new(session);
        state.counters.sent = 0;
    }

    /// Applies one UPDATE received from `peer` (withdrawals first, then announcements).
    ///
    /// Treat-as-withdraw UPDATEs withdraw every prefix they carry; an AS_PATH containing the
    /// local AS (from an eBGP peer), the import policy or a crossed Teardown limit reject a
    /// prefix, and a rejected prefix also removes the peer's earlier path for it (the new
    /// announcement replaced it). End-of-RIB markers are reported, not stored.
    pub fn apply_update(&mut self, peer: PeerId, update: &Update<'_>, now: Instant) -> Result<UpdateOutcome, RibError> {
        let since = self.stamp(now);
        let Rib { config, tables, infos, peers, .. } = self;
        let state = peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let info = *infos.get(&peer).ok_or(RibError::UnknownPeer { peer })?;
        if !state.up {
            return Err(RibError::PeerDown { peer, addr: info.addr });
        }
        let ctx = Ctx { peers: infos, config: &config.decision, local_asn: config.local_asn };
        let source = Source::Peer(peer);
        let mut out = UpdateOutcome::default();
        state.counters.updates += 1;
        if let Some(family) = update.end_of_rib() {
            out.end_of_rib = Some(family);
            return Ok(out);
        }
        out.treat_as_withdraw = update.is_treat_as_withdraw();
        state.counters.treat_as_withdraw += u64::from(out.treat_as_withdraw);

        for prefix in update.withdrawals() {
            if !state.families[family_index(prefix.family())] {
                state.counters.ignored += 1;
                out.ignored += 1;
                continue;
            }
            state.counters.withdrawn += 1;
            let r = tables.apply(prefix, Op::Remove(source), &ctx);
            account(state, prefix.family(), &r);
            out.changes.extend(r.change);
        }
        if out.treat_as_withdraw {
            return Ok(out);
        }

        let as_loop = info.ebgp && update.attributes.as_path.as_ref().is_some_and(|p| p.contains(config.local_asn));
        let classic = (Family::Ipv4Unicast, update.nlri, update.attributes.next_hop.map(NextHop::V4));
        let mp = update.mp_reach.map(|m| (m.family, m.nlri, Some(m.next_hop)));
        for (family, nlri, next_hop) in [Some(classic), mp].into_iter().flatten() {
            if !state.families[family_index(family)] {
                let n = nlri.iter().count() as u64;
                state.counters.ignored += n;
                out.ignored += n;
                continue;
            }
            let field = Field { nlri, next_hop, update, as_loop, since };
            announce(state, &info, field, tables, &ctx, &mut out);
        }
        Ok(out)
    }

    /// The peer asked for our routes again (ROUTE-REFRESH): the Adj-RIB-Out starts over, so the
    /// next [`Rib::export`] sends everything, then End-of-RIB. The peer's import state (its
    /// routes, a crossed max-prefix limit) is left as it is.
    pub fn resend(&mut self, peer: PeerId) -> Result<(), RibError> {
        let state = self.peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        state.out = state.out.restart();
        state.counters.sent = 0;
        Ok(())
    }

    /// The session went down without graceful restart: every path of the peer leaves the
    /// Adj-RIB-In and the Loc-RIB, and its Adj-RIB-Out is forgotten.
    pub fn peer_down(&mut self, peer: PeerId) -> Result<Vec<RouteChange>, RibError> {
        let mut changes = Vec::new();
        let Rib { config, tables, infos, peers, .. } = self;
        let state = peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let ctx = Ctx { peers: infos, config: &config.decision, local_asn: config.local_asn };
        tables.remove_where(Source::Peer(peer), &ALL_FAMILIES, |_| true, &ctx, &mut changes);
        state.up = false;
        state.out = export::AdjRibOut::default();
        state.accepted = [0; 2];
        state.counters.stale = 0;
        state.counters.sent = 0;
        state.interner = Interner::default();
        Ok(changes)
    }

    /// The peer is gone from the configuration: [`Rib::peer_down`] and forget it.
    pub fn remove_peer(&mut self, peer: PeerId) -> Result<Vec<RouteChange>, RibError> {
        let changes = self.peer_down(peer)?;
        self.peers.remove(&peer);
        self.infos.remove(&peer);
        Ok(changes)
    }

    /// Graceful restart (RFC 4724 4.2): the peer's session dropped but its forwarding state is
    /// kept. Its paths stay in the Loc-RIB, marked stale; announcements after the next
    /// `peer_up` clear the mark, and [`Rib::sweep_stale`] removes what was not refreshed.
    /// Paths still stale from an earlier restart are removed (RFC 4724 4.2, consecutive
    /// restarts). Returns how many paths were marked, and the changes of those removed. The
    /// peer counts as down until `peer_up`.
    pub fn mark_stale(&mut self, peer: PeerId) -> Result<(usize, Vec<RouteChange>), RibError> {
        let removed = self.sweep_stale(peer, None)?;
        let state = self.peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let source = Source::Peer(peer);
        let mut n = 0;
        self.tables.for_each_path_mut(|p| {
            if p.source == source && !p.is(STALE) {
                p.flags |= STALE;
                n += 1;
            }
        });
        state.up = false;
        state.out = export::AdjRibOut::default();
        state.counters.stale += n;
        state.counters.sent = 0;
        Ok((n, removed))
    }

    /// Removes the peer's paths still stale in `family` (after its End-of-RIB, or when the
    /// restart or stale-path timer expires; `None` = every family).
    pub fn sweep_stale(&mut self, peer: PeerId, family: Option<Family>) -> Result<Vec<RouteChange>, RibError> {
        let mut changes = Vec::new();
        let Rib { config, tables, infos, peers, .. } = self;
        let state = peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let ctx = Ctx { peers: infos, config: &config.decision, local_asn: config.local_asn };
        let families: &[Family] = match &family {
            Some(f) => std::slice::from_ref(f),
            None => &ALL_FAMILIES,
        };
        for family in families {
            let n = tables.remove_where(
                Source::Peer(peer),
                std::slice::from_ref(family),
                |p| p.is(STALE),
                &ctx,
                &mut changes,
            );
            state.counters.stale -= n;
            state.accepted[family_index(*family)] -= n;
        }
        Ok(changes)
    }

    /// Replaces the node's own announcements (level-triggered: pass the whole desired set).
    /// They win over any learned path for the same prefix. Call [`Rib::export`] for each up
    /// peer afterwards.
    pub fn set_local_routes(&mut self, routes: Vec<LocalRoute>, now: Instant) -> Vec<RouteChange> {
        let since = self.stamp(now);
        let desired: BTreeMap<Prefix, LocalRoute> = routes.into_iter().map(|r| (r.prefix, r)).collect();
        let mut changes = Vec::new();
        let ctx = Ctx { peers: &self.infos, config: &self.config.decision, local_asn: self.config.local_asn };
        for prefix in self.locals.keys().filter(|p| !desired.contains_key(p)) {
            changes.extend(self.tables.apply(*prefix, Op::Remove(Source::Local), &ctx).change);
        }
        for (prefix, route) in &desired {
            if self.locals.get(prefix) == Some(route) {
                continue;
            }
            let attrs = Arc::new(RouteAttrs { attributes: route.loc_rib_attributes(), next_hop: None });
            let path = Path { source: Source::Local, attrs, since, flags: 0 };
            changes.extend(self.tables.apply(*prefix, Op::Upsert(path), &ctx).change);
        }
        self.locals = desired;
        changes
    }

    /// The node's own announcements, by prefix.
    pub fn local_routes(&self) -> impl Iterator<Item = &LocalRoute> {
        self.locals.values()
    }

    /// The Loc-RIB's best path for exactly `prefix`.
    pub fn best(&self, prefix: &Prefix) -> Option<Route> {
        self.tables.get(prefix)?.as_slice().first().filter(|p| p.is(BEST)).map(route_of)
    }

    /// Number of prefixes in the Loc-RIB (every stored prefix has a best path).
    pub fn len(&self) -> usize {
        self.tables.v4.len() + self.tables.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of `family` in the per-family arrays of [`PeerState`].
fn family_index(family: Family) -> usize {
    match family {
        Family::Ipv4Unicast => 0,
        Family::Ipv6Unicast => 1,
    }
}

/// Keeps the peer's counters in step with one table operation on a prefix of `family`.
fn account(state: &mut PeerState, family: Family, r: &OpResult) {
    let i = family_index(family);
    if r.inserted {
        state.accepted[i] += 1;
    }
    if r.removed {
        state.accepted[i] -= 1;
    }
    if r.was_stale {
        state.counters.stale -= 1;
    }
    if let Some(limit) = state.import.max_prefix.map(|m| m.limit) {
        if state.accepted[i] <= limit as usize {
            state.warned[i] = false;
        }
    }
}

/// One NLRI field (classic or MP_REACH) of an UPDATE, with what applies to all its prefixes.
struct Field<'u, 'a> {
    nlri: Prefixes<'a>,
    next_hop: Option<NextHop>,
    update: &'u Update<'a>,
    /// The AS_PATH contains the local AS (eBGP only): RFC 4271 9.1.2 excludes such routes.
    as_loop: bool,
    since: u32,
}

/// Imports the prefixes of one NLRI field.
fn announce(
    state: &mut PeerState,
    info: &PeerInfo,
    field: Field<'_, '_>,
    tables: &mut Tables,
    ctx: &Ctx<'_>,
    out: &mut UpdateOutcome,
) {
    let source = Source::Peer(info.id);
    let apply = |tables: &mut Tables, state: &mut PeerState, prefix: Prefix, op: Op, out: &mut UpdateOutcome| {
        let r = tables.apply(prefix, op, ctx);
        account(state, prefix.family(), &r);
        out.changes.extend(r.change);
    };
    // Built on the first accepted prefix: a fully rejected UPDATE allocates nothing.
    let mut base: Option<Arc<RouteAttrs>> = None;
    // Verdict of the rules when they cannot depend on the prefix: computed once per field.
    let mut shared: Option<Option<Arc<RouteAttrs>>> = None;
    let per_prefix = state.import.rules_use_prefix();
    for prefix in field.nlri {
        state.counters.received += 1;
        // A refused announcement still replaces the peer's earlier path for the prefix.
        let reject = |tables: &mut Tables, state: &mut PeerState, out: &mut UpdateOutcome| {
            state.counters.rejected += 1;
            out.rejected += 1;
            apply(tables, state, prefix, Op::Remove(source), out);
        };
        // The codec treats a missing NEXT_HOP as withdraw; stay safe if one slips through.
        let Some(next_hop) = field.next_hop else {
            reject(tables, state, out);
            continue;
        };
        if field.as_loop || state.tripped || !state.import.admits(&prefix) {
            reject(tables, state, out);
            continue;
        }
        let attrs = match &shared {
            Some(verdict) if !per_prefix => verdict.clone(),
            _ => {
                let base_attrs = base.get_or_insert_with(|| {
                    let mut attributes = field.update.attributes.clone();
                    attributes.next_hop = None;
                    state.interner.intern(RouteAttrs { attributes, next_hop: Some(next_hop) })
                });
                let verdict = match state.import.run_rules(&prefix, &base_attrs.attributes) {
                    Verdict::Reject => None,
                    Verdict::Accept(None) => Some(base_attrs.clone()),
                    Verdict::Accept(Some(attributes)) => {
                        Some(state.interner.intern(RouteAttrs { attributes, next_hop: Some(next_hop) }))
                    }
                };
                if !per_prefix {
                    shared = Some(verdict.clone());
                }
                verdict
            }
        };
        let Some(attrs) = attrs else {
            reject(tables, state, out);
            continue;
        };
        if let Some(max) = state.import.max_prefix {
            // Only a new prefix can cross the limit, and the lookup happens only near it.
            let i = family_index(prefix.family());
            let at_limit = state.accepted[i] >= max.limit as usize;
            if at_limit && !state.warned[i] && tables.get(&prefix).and_then(|s| s.find(source)).is_none() {
                let event = MaxPrefixEvent {
                    peer: info.id,
                    addr: info.addr,
                    family: prefix.family(),
                    limit: max.limit,
                    accepted: state.accepted[i] + 1,
                    action: max.action,
                };
                out.max_prefix = Some(event);
                match max.action {
                    MaxPrefixAction::Teardown => {
                        state.tripped = true;
                        reject(tables, state, out);
                        continue;
                    }
                    MaxPrefixAction::Warn => state.warned[i] = true,
                }
            }
        }
        let path = Path { source, attrs, since: field.since, flags: 0 };
        apply(tables, state, prefix, Op::Upsert(path), out);
    }
}
