//! The load-balancer reconciler: desired services + backend health + what the datapath holds now →
//! an ordered list of map operations. Pure: the appliance applies the ops, in order, to the pinned
//! maps; `LbState::apply` applies them to an in-memory copy with the same invariants checked.
//!
//! Ids. A backend is identified by (address, port) and keeps its id while any service lists it; a
//! service by (vip, port, protocol) and keeps its id while it exists. Ids come from `observed`, so a
//! restarted daemon adopts what the pinned maps hold. New ids are the lowest ones free, from 1 (0
//! means "none" in the datapath). An id a table may still hold is freed at the end of a pass and
//! reused only in a later one, after its removal was applied, so no op ever re-points an id that
//! a table may still hold; an id no remaining table holds is freed first and may be reused at once.
//!
//! Health. Only healthy backends enter a Maglev table; an unhealthy one keeps its backend entry so
//! the datapath's conntrack can drain the flows already on it. A service with no healthy backend
//! keeps its entry with an **empty table**: the datapath drops its new flows and counts them (the
//! VIP is withdrawn from BGP at the same time, see `vips_to_announce`).
//!
//! Down. A backend unhealthy for every service that lists it is marked down in the backend map: the
//! datapath then starts its UDP flows over through their service's table (TCP flows stay; see
//! `FR_LB_BE_DOWN` in ferrule_abi.h), and a restarted daemon reads which backends were down
//! (`checker::run`'s seed). A backend unhealthy for one service and healthy for another is not.
//!
//! Drain. A backend of weight 0 is draining, as in IPVS: it keeps its backend entry (conntrack
//! keeps its established flows on it) and its health checks, but gets no slot, so no new flow.
//! Its table is the one the service would have without it, so draining and undraining rewrite
//! only that service's table and move only the slots Maglev has to. A service whose backends are
//! all drained has an empty table, as one with no healthy backend.
//!
//! Order. `RemoveService`s first (their ids are free for the services added in the same pass, so
//! any set of services up to the datapath's limit can replace any other), the `RemoveBackend`s of
//! backends no remaining table names, then `UpsertBackend`s
//! (new backends, and down marks cleared), `UpsertService`s, the `UpsertBackend`s that mark
//! backends down, and `RemoveBackend`s last, so a table never references a backend that is not
//! in the backend map, and a backend is marked down only once no table the plan writes names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferrule_config::{Mode, Service};
use thiserror::Error;

use crate::maglev::{build_prime, is_prime, MaglevBackend, DEFAULT_TABLE_SIZE};
use crate::{HealthView, ServiceKey};

/// A backend as the datapath's backend map holds it, under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEntry {
    pub address: IpAddr,
    pub port: u16,
    /// Down: unhealthy for every service that lists it (see [`plan`]'s module doc).
    pub down: bool,
}

/// A service as the datapath holds it, under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub id: u32,
    pub mode: Mode,
    /// Maglev lookup table of backend ids; empty = no backend can take new flows (healthy, weight > 0).
    pub table: Arc<Vec<u32>>,
}

/// What the datapath holds now. After a daemon restart the appliance fills it from the pinned maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbState {
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    pub backends: BTreeMap<u32, BackendEntry>,
}

/// One change to the datapath's maps. Apply them in the order `plan` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbOp {
    /// Create backend `id`, or set whether it is down (the plan never re-points an existing id
    /// to another address).
    UpsertBackend { id: u32, address: IpAddr, port: u16, down: bool },
    /// Create or replace a service: its id, forwarding mode and whole lookup table. Emitted only
    /// when the service is new or its mode or table changed.
    UpsertService { id: u32, key: ServiceKey, mode: Mode, table: Arc<Vec<u32>> },
    /// Delete the service and its table (`id` is the one it had, for maps keyed by id).
    RemoveService { id: u32, key: ServiceKey },
    /// Delete backend `id`; no service table references it any more.
    RemoveBackend { id: u32 },
}

impl LbOp {
    /// The service this op writes, if it writes one.
    pub fn service(&self) -> Option<ServiceKey> {
        match self {
            LbOp::UpsertService { key, .. } | LbOp::RemoveService { key, .. } => Some(*key),
            LbOp::UpsertBackend { .. } | LbOp::RemoveBackend { .. } => None,
        }
    }
}

/// An op that would break the datapath's invariants; `plan` never produces one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    #[error("service {key} (id {service_id}) would point to backend id {backend_id}, which is not in the backend map")]
    UnknownBackend { key: ServiceKey, service_id: u32, backend_id: u32 },
    #[error("backend id {id} cannot be removed or re-pointed: the table of service {key} still references it")]
    BackendInUse { id: u32, key: ServiceKey },
}

impl LbState {
    /// Applies one op in memory, refusing what would make a table reference a missing or re-pointed
    /// backend. The in-memory model of the datapath maps, for tests and dry runs.
    pub fn apply(&mut self, op: &LbOp) -> Result<(), ApplyError> {
        match op {
            LbOp::UpsertBackend { id, address, port, down } => {
                let entry = BackendEntry { address: *address, port: *port, down: *down };
                if self.backends.get(id).is_some_and(|old| (old.address, old.port) != (entry.address, entry.port)) {
                    self.ensure_unused(*id)?;
                }
                self.backends.insert(*id, entry);
            }
            LbOp::UpsertService { id, key, mode, table } => {
                if let Some(&missing) = table.iter().find(|b| !self.backends.contains_key(b)) {
                    return Err(ApplyError::UnknownBackend { key: *key, service_id: *id, backend_id: missing });
                }
                self.services.insert(*key, ServiceEntry { id: *id, mode: *mode, table: table.clone() });
            }
            LbOp::RemoveService { key, .. } => {
                self.services.remove(key);
            }
            LbOp::RemoveBackend { id } => {
                self.ensure_unused(*id)?;
                self.backends.remove(id);
            }
        }
        Ok(())
    }

    fn ensure_unused(&self, id: u32) -> Result<(), ApplyError> {
        match self.services.iter().find(|(_, s)| s.table.contains(&id)) {
            Some((key, _)) => Err(ApplyError::BackendInUse { id, key: *key }),
            None => Ok(()),
        }
    }
}

/// Maglev tables of earlier plans, by service, with what they were built from. A table costs
/// 30-60 ns per slot to build (2 ms for 65,537 slots), and every pass of the reconciler plans
/// every service: without the cache a thousand services cost seconds per pass and per health
/// flip. A service's table is built again only when its size or its healthy backends (ids,
/// addresses, weights) change, and compared with the maps' by pointer once the maps hold the
/// cached one.
#[derive(Debug, Default)]
pub struct TableCache {
    tables: HashMap<ServiceKey, CachedTable>,
}

/// A table and what it was built from: the healthy backends and the size.
type CachedTable = (Vec<MaglevBackend>, u32, Arc<Vec<u32>>);

impl TableCache {
    /// Services with a table kept.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn table(&mut self, key: &ServiceKey, healthy: Vec<MaglevBackend>, size: u32) -> Arc<Vec<u32>> {
        match self.tables.get(key) {
            Some((b, n, table)) if *b == healthy && *n == size => table.clone(),
            _ => {
                let table = Arc::new(build_prime(&healthy, size));
                self.tables.insert(*key, (healthy, size, table.clone()));
                table
            }
        }
    }

    /// Whether the maps' `held` table is the one cached for `key`; one equal in content (read
    /// from the maps at a restart) replaces the cached copy, so that later plans compare pointers.
    fn holds(&mut self, key: &ServiceKey, held: &Arc<Vec<u32>>) -> bool {
        let Some((_, _, table)) = self.tables.get_mut(key) else { return false };
        if Arc::ptr_eq(table, held) {
            return true;
        }
        if **table == **held {
            *table = held.clone();
            return true;
        }
        false
    }
}

/// The ops that take the datapath from `observed` to `desired` under `health`. Applying them and
/// planning again gives no op. Of two services with one key only the first counts (the config
/// validation rejects such a pair). Builds every table anew: the reconciler keeps a
/// [`TableCache`] and calls [`plan_with`].
pub fn plan(desired: &[Service], health: &HealthView, observed: &LbState) -> Vec<LbOp> {
    plan_with(desired, health, observed, &mut TableCache::default())
}

/// [`plan`], with the tables of earlier plans in `cache` (and those of services no longer
/// desired dropped from it).
pub fn plan_with(desired: &[Service], health: &HealthView, observed: &LbState, cache: &mut TableCache) -> Vec<LbOp> {
    let mut services: BTreeMap<ServiceKey, &Service> = BTreeMap::new();
    for service in desired {
        services.entry(ServiceKey::of(service)).or_insert(service);
    }

    // The backends listed, and those up: healthy for some service that lists them (a service
    // without a check counts them healthy). One walk over the services' backends.
    let mut wanted: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut up: BTreeSet<SocketAddr> = BTreeSet::new();
    for (key, service) in &services {
        for b in &service.backends {
            let addr = SocketAddr::new(b.address, b.port);
            if health.is_healthy(key, addr) {
                up.insert(addr);
            }
            wanted.insert(addr);
        }
    }
    let mut backend_ids: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    // Ascending ids: if the maps hold one backend twice, the lower id is adopted, the other removed.
    for (&id, entry) in &observed.backends {
        let addr = SocketAddr::new(entry.address, entry.port);
        if id != 0 && wanted.contains(&addr) {
            backend_ids.entry(addr).or_insert(id);
        }
    }

    // Services no longer wanted go first, so that their ids are free for new ones: any set of
    // services up to the datapath's limit can replace any other (their tables name backends,
    // which stay until the end).
    let mut ops = Vec::new();
    for (key, entry) in &observed.services {
        if !services.contains_key(key) {
            ops.push(LbOp::RemoveService { id: entry.id, key: *key });
        }
    }
    // Backends no longer wanted that no remaining table names go next, and their ids are free
    // for this pass's new backends: a conntrack entry naming such an id finds another backend's
    // tag and starts over. Otherwise a pass that failed after adding its backends (the maps then
    // hold the old and the new ones) could leave no id below the datapath's limit for the next
    // config's, pass after pass. The tables are scanned only when there is such a backend.
    let kept_ids: BTreeSet<u32> = backend_ids.values().copied().collect();
    let mut unwanted: BTreeSet<u32> = observed.backends.keys().copied().filter(|id| !kept_ids.contains(id)).collect();
    let mut freed_now = BTreeSet::new();
    if !unwanted.is_empty() {
        let remaining = observed.services.iter().filter(|(key, _)| services.contains_key(key));
        let named: BTreeSet<u32> =
            remaining.flat_map(|(_, entry)| entry.table.iter().copied()).filter(|id| unwanted.contains(id)).collect();
        freed_now = unwanted.difference(&named).copied().collect();
        unwanted = named;
    }
    ops.extend(freed_now.iter().map(|&id| LbOp::RemoveBackend { id }));
    // Down: not up, i.e. unhealthy for every service that lists the backend, so that the one
    // flag the backend map has never contradicts a service that still sends it new flows.
    // A backend coming up is marked so before the tables that take it in; one going down only
    // after the tables that leave it out (at the end), so that a UDP flow the mark starts over is
    // never sent to it again by a table that still names it.
    let mut marked_down = Vec::new();
    let mut free_backend_ids = FreeIds::new(observed.backends.keys().copied().filter(|id| !freed_now.contains(id)));
    for addr in &wanted {
        let down = !up.contains(addr);
        match backend_ids.get(addr) {
            Some(&id) => match observed.backends.get(&id) {
                Some(b) if b.down != down => {
                    let op = LbOp::UpsertBackend { id, address: addr.ip(), port: addr.port(), down };
                    if down {
                        marked_down.push(op)
                    } else {
                        ops.push(op)
                    }
                }
                _ => {}
            },
            None => {
                let id = free_backend_ids.take();
                backend_ids.insert(*addr, id);
                ops.push(LbOp::UpsertBackend { id, address: addr.ip(), port: addr.port(), down });
            }
        }
    }

    let mut free_service_ids =
        FreeIds::new(observed.services.iter().filter(|(key, _)| services.contains_key(key)).map(|(_, s)| s.id));
    let mut adopted_service_ids = BTreeSet::new();
    for (key, service) in &services {
        let current = observed.services.get(key);
        let id = match current {
            Some(s) if s.id != 0 && adopted_service_ids.insert(s.id) => s.id,
            _ => free_service_ids.take(),
        };
        let (healthy, size) = table_inputs(key, service, health, &backend_ids);
        let table = cache.table(key, healthy, size);
        let unchanged = current.is_some_and(|s| s.id == id && s.mode == service.mode && cache.holds(key, &s.table));
        if !unchanged {
            ops.push(LbOp::UpsertService { id, key: *key, mode: service.mode, table });
        }
    }
    cache.tables.retain(|key, _| services.contains_key(key));
    ops.extend(marked_down);

    // The rest of the unwanted backends, once no table names them.
    for id in unwanted {
        ops.push(LbOp::RemoveBackend { id });
    }
    ops
}

/// What `service`'s table is built from: its healthy backends with weight, and the table size.
fn table_inputs(
    key: &ServiceKey,
    service: &Service,
    health: &HealthView,
    backend_ids: &BTreeMap<SocketAddr, u32>,
) -> (Vec<MaglevBackend>, u32) {
    let healthy: Vec<MaglevBackend> = service
        .backends
        .iter()
        .map(|b| (SocketAddr::new(b.address, b.port), b.weight))
        .filter(|(addr, weight)| *weight > 0 && health.is_healthy(key, *addr))
        .map(|(addr, weight)| MaglevBackend { id: backend_ids[&addr], address: addr.ip(), port: addr.port(), weight })
        .collect();
    let size = if is_prime(service.maglev_table_size) {
        service.maglev_table_size
    } else {
        // Unreachable through a validated model; a table must still be built, so fall back.
        tracing::error!(
            service = %key,
            name = %service.name,
            "maglev_table_size {} is not a prime; using {DEFAULT_TABLE_SIZE}",
            service.maglev_table_size
        );
        DEFAULT_TABLE_SIZE
    };
    (healthy, size)
}

/// Lowest-first allocation among ids ≥ 1 not in use.
struct FreeIds {
    used: BTreeSet<u32>,
    next: u32,
}

impl FreeIds {
    fn new(used: impl IntoIterator<Item = u32>) -> FreeIds {
        FreeIds { used: used.into_iter().collect(), next: 1 }
    }

    fn take(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        self.used.insert(self.next);
        self.next
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ferrule_config::{AnnounceWhen, Backend, Protocol};

    use super::*;
    use crate::maglev::build_table;
    use crate::BackendHealth;

    const SIZE: u32 = 1009;

    pub(crate) fn svc(vip: &str, port: u16, backends: &[&str]) -> Service {
        Service {
            name: format!("{vip}:{port}"),
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            mode: Mode::Dsr,
            backends: backends.iter().map(|a| Backend { address: a.parse().unwrap(), port: 8080, weight: 1 }).collect(),
            health: None,
            announce: AnnounceWhen::Healthy,
            maglev_table_size: SIZE,
        }
    }

    fn web(backends: &[&str]) -> Service {
        svc("192.0.2.10", 80, backends)
    }

    fn sock(a: &str) -> SocketAddr {
        SocketAddr::new(a.parse().unwrap(), 8080)
    }

    fn key_of(s: &Service) -> ServiceKey {
        ServiceKey::of(s)
    }

    /// Applies `ops` in order, failing the test on the first invariant they break.
    fn applied(state: &LbState, ops: &[LbOp]) -> LbState {
        let mut next = state.clone();
        for op in ops {
            next.apply(op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        next
    }

    /// Plans, applies, and checks the result is a fixed point.
    fn converge(desired: &[Service], health: &HealthView, state: &LbState) -> (Vec<LbOp>, LbState) {
        let ops = plan(desired, health, state);
        let next = applied(state, &ops);
        assert_eq!(plan(desired, health, &next), vec![], "planning again after applying must be a no-op");
        (ops, next)
    }

    pub(crate) fn backend_id(state: &LbState, a: &str) -> u32 {
        let addr = sock(a);
        let found = state.backends.iter().find(|(_, b)| SocketAddr::new(b.address, b.port) == addr);
        *found.unwrap_or_else(|| panic!("no backend {a}")).0
    }

    fn table_ids(state: &LbState, key: &ServiceKey) -> BTreeSet<u32> {
        state.services[key].table.iter().copied().collect()
    }

    fn down(health: &mut HealthView, s: &Service, a: &str) {
        health.set(key_of(s), sock(a), BackendHealth::Unhealthy { reason: "refused".to_owned() });
    }

    #[test]
    fn new_service_creates_backends_then_its_table_with_ids_from_one() {
        let s = web(&["198.51.100.1", "198.51.100.2"]);
        let ops = plan(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[0],
            LbOp::UpsertBackend { id: 1, address: "198.51.100.1".parse().unwrap(), port: 8080, down: false }
        );
        assert_eq!(
            ops[1],
            LbOp::UpsertBackend { id: 2, address: "198.51.100.2".parse().unwrap(), port: 8080, down: false }
        );
        let LbOp::UpsertService { id, key, mode, table } = &ops[2] else { panic!("{:?}", ops[2]) };
        assert_eq!((*id, *key, *mode), (1, key_of(&s), Mode::Dsr));
        assert_eq!(table.len(), SIZE as usize);
        assert_eq!(table.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([1, 2]));
    }

    #[test]
    fn plan_is_idempotent_after_applying_it() {
        let health = HealthView::default();
        let first = [web(&["198.51.100.1", "198.51.100.2"]), svc("2001:db8:200::10", 443, &["2001:db8:300::21"])];
        let (_, state) = converge(&first, &health, &LbState::default());
        let second = [web(&["198.51.100.2", "198.51.100.3"]), svc("192.0.2.11", 53, &["198.51.100.3"])];
        converge(&second, &health, &state);
    }

    #[test]
    fn unhealthy_backend_leaves_table_but_keeps_entry() {
        let s = web(&["198.51.100.1", "198.51.100.2", "198.51.100.3"]);
        let (_, state) = converge(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        let mut health = HealthView::default();
        down(&mut health, &s, "198.51.100.2");
        let (ops, next) = converge(std::slice::from_ref(&s), &health, &state);

        let drained = backend_id(&next, "198.51.100.2");
        let address: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(
            matches!(ops.as_slice(), [LbOp::UpsertService { .. }, LbOp::UpsertBackend { id, address: a, port: 8080, down: true }]
                if *id == drained && *a == address),
            "the table changes, then the backend is marked down in place: {ops:?}"
        );
        assert!(next.backends.contains_key(&drained), "entry kept for conntrack to drain");
        assert!(next.backends[&drained].down);
        assert!(!table_ids(&next, &key_of(&s)).contains(&drained));
        assert_eq!(table_ids(&next, &key_of(&s)).len(), 2);

        // Healthy again: the mark goes first, then the backend is back in the table.
        let (ops, back) = converge(std::slice::from_ref(&s), &HealthView::default(), &next);
        assert!(
            matches!(ops.as_slice(), [LbOp::UpsertBackend { id, down: false, .. }, LbOp::UpsertService { .. }] if *id == drained),
            "{ops:?}"
        );
        assert_eq!(back, state);
    }

    #[test]
    fn a_backend_is_down_only_while_every_service_listing_it_finds_it_unhealthy() {
        let (a, b) = (web(&["198.51.100.1", "198.51.100.2"]), svc("192.0.2.11", 53, &["198.51.100.2"]));
        let both = [a.clone(), b.clone()];
        let (_, state) = converge(&both, &HealthView::default(), &LbState::default());
        let shared = backend_id(&state, "198.51.100.2");

        // Unhealthy for one service, healthy (no verdict) for the other: out of one table only.
        let mut health = HealthView::default();
        down(&mut health, &a, "198.51.100.2");
        let (ops, next) = converge(&both, &health, &state);
        assert!(!next.backends[&shared].down, "{ops:?}");
        assert!(ops.iter().all(|op| !matches!(op, LbOp::UpsertBackend { .. })), "{ops:?}");
        assert!(!table_ids(&next, &key_of(&a)).contains(&shared));
        assert!(table_ids(&next, &key_of(&b)).contains(&shared));

        // Unhealthy for both: down.
        down(&mut health, &b, "198.51.100.2");
        let (_, next) = converge(&both, &health, &next);
        assert!(next.backends[&shared].down);
        assert!(!next.backends[&backend_id(&next, "198.51.100.1")].down);

        // A service without a check counts it healthy: listed there too, it is not down.
        let third = svc("192.0.2.12", 80, &["198.51.100.2"]);
        let (_, next) = converge(&[a, b, third], &health, &next);
        assert!(!next.backends[&shared].down);
    }

    #[test]
    fn cached_tables_are_rebuilt_only_when_their_inputs_change_and_match_what_plan_builds() {
        let a = web(&["198.51.100.1", "198.51.100.2", "198.51.100.3"]);
        let b = svc("192.0.2.11", 80, &["198.51.100.1"]);
        let services = [a.clone(), b.clone()];
        let mut cache = TableCache::default();
        let mut health = HealthView::default();
        let ops = plan_with(&services, &health, &LbState::default(), &mut cache);
        assert_eq!(ops, plan(&services, &health, &LbState::default()), "the cache changes no result");
        let state = applied(&LbState::default(), &ops);
        assert_eq!(plan_with(&services, &health, &state, &mut cache), vec![]);
        let table_of = |st: &LbState, s: &Service| st.services[&key_of(s)].table.clone();

        // One backend of `a` goes down: only `a`'s table is built again, `b`'s is the same Arc.
        down(&mut health, &a, "198.51.100.2");
        let before_b = table_of(&state, &b);
        let ops = plan_with(&services, &health, &state, &mut cache);
        assert_eq!(ops, plan(&services, &health, &state));
        assert!(
            matches!(ops.as_slice(), [LbOp::UpsertService { key, .. }, LbOp::UpsertBackend { down: true, .. }] if *key == key_of(&a)),
            "{ops:?}"
        );
        let state = applied(&state, &ops);
        assert!(Arc::ptr_eq(&cache.tables[&key_of(&b)].2, &before_b));

        // Tables read back from the maps (a restart): equal, not the same allocation. No op, and
        // the cache takes the maps' copies, so that the next plan compares pointers.
        let mut adopted = state.clone();
        for entry in adopted.services.values_mut() {
            entry.table = Arc::new((*entry.table).clone());
        }
        assert_eq!(plan_with(&services, &health, &adopted, &mut cache), vec![]);
        for s in &services {
            assert!(Arc::ptr_eq(&cache.tables[&key_of(s)].2, &table_of(&adopted, s)));
        }
        // A table in the maps that differs from the cached one is written again.
        let mut changed = adopted.clone();
        changed.services.get_mut(&key_of(&b)).unwrap().table = Arc::new(vec![3; 1009]);
        let ops = plan_with(&services, &health, &changed, &mut cache);
        assert!(matches!(ops.as_slice(), [LbOp::UpsertService { key, .. }] if *key == key_of(&b)), "{ops:?}");

        // A service no longer desired leaves the cache.
        plan_with(std::slice::from_ref(&a), &health, &adopted, &mut cache);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn recovered_backend_gets_its_old_slots_back() {
        let s = web(&["198.51.100.1", "198.51.100.2", "198.51.100.3"]);
        let (_, healthy) = converge(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        let mut health = HealthView::default();
        down(&mut health, &s, "198.51.100.2");
        let (_, degraded) = converge(std::slice::from_ref(&s), &health, &healthy);
        let (_, recovered) = converge(std::slice::from_ref(&s), &HealthView::default(), &degraded);
        assert_eq!(recovered, healthy);
    }

    #[test]
    fn all_backends_unhealthy_leaves_service_with_empty_table() {
        let s = web(&["198.51.100.1", "198.51.100.2"]);
        let (_, state) = converge(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        let mut health = HealthView::default();
        down(&mut health, &s, "198.51.100.1");
        down(&mut health, &s, "198.51.100.2");
        let (_, next) = converge(std::slice::from_ref(&s), &health, &state);
        assert!(next.services[&key_of(&s)].table.is_empty());
        assert_eq!(next.backends.len(), 2);
    }

    #[test]
    fn restart_adopts_existing_ids() {
        // The pinned maps hold ids a previous process allocated: backends 7 and 3, service 4.
        let s = web(&["198.51.100.1", "198.51.100.2"]);
        let mut observed = LbState::default();
        observed.backends.insert(7, BackendEntry { address: "198.51.100.1".parse().unwrap(), port: 8080, down: false });
        observed.backends.insert(3, BackendEntry { address: "198.51.100.2".parse().unwrap(), port: 8080, down: false });
        let table = build_table(
            &[
                MaglevBackend { id: 7, address: "198.51.100.1".parse().unwrap(), port: 8080, weight: 1 },
                MaglevBackend { id: 3, address: "198.51.100.2".parse().unwrap(), port: 8080, weight: 1 },
            ],
            SIZE,
        )
        .unwrap();
        observed.services.insert(key_of(&s), ServiceEntry { id: 4, mode: Mode::Dsr, table: Arc::new(table) });
        assert_eq!(plan(std::slice::from_ref(&s), &HealthView::default(), &observed), vec![]);

        // A new backend takes the lowest free id; the others and the service keep theirs.
        let grown = web(&["198.51.100.1", "198.51.100.2", "198.51.100.9"]);
        let (ops, next) = converge(std::slice::from_ref(&grown), &HealthView::default(), &observed);
        assert_eq!(
            ops[0],
            LbOp::UpsertBackend { id: 1, address: "198.51.100.9".parse().unwrap(), port: 8080, down: false }
        );
        assert!(matches!(ops[1], LbOp::UpsertService { id: 4, .. }));
        assert_eq!(table_ids(&next, &key_of(&grown)), BTreeSet::from([1, 3, 7]));
    }

    #[test]
    fn duplicate_backend_in_observed_maps_adopts_lower_id_and_removes_the_other() {
        let s = web(&["198.51.100.1"]);
        let mut observed = LbState::default();
        for id in [5, 2] {
            observed
                .backends
                .insert(id, BackendEntry { address: "198.51.100.1".parse().unwrap(), port: 8080, down: false });
        }
        let (ops, next) = converge(std::slice::from_ref(&s), &HealthView::default(), &observed);
        // No table names the duplicate: it goes first.
        assert_eq!(ops.first(), Some(&LbOp::RemoveBackend { id: 5 }));
        assert_eq!(table_ids(&next, &key_of(&s)), BTreeSet::from([2]));
    }

    #[test]
    fn backend_shared_by_two_services_has_one_entry() {
        let a = svc("192.0.2.10", 80, &["198.51.100.1"]);
        let b = svc("192.0.2.11", 80, &["198.51.100.1", "198.51.100.2"]);
        let (_, state) = converge(&[a.clone(), b.clone()], &HealthView::default(), &LbState::default());
        assert_eq!(state.backends.len(), 2);
        let shared = backend_id(&state, "198.51.100.1");
        assert!(table_ids(&state, &key_of(&a)).contains(&shared));
        assert!(table_ids(&state, &key_of(&b)).contains(&shared));
    }

    #[test]
    fn backend_keeps_its_id_while_any_service_uses_it() {
        let a = svc("192.0.2.10", 80, &["198.51.100.1"]);
        let b = svc("192.0.2.11", 80, &["198.51.100.1"]);
        let (_, state) = converge(&[a, b.clone()], &HealthView::default(), &LbState::default());
        let id = backend_id(&state, "198.51.100.1");
        let (ops, next) = converge(std::slice::from_ref(&b), &HealthView::default(), &state);
        assert!(ops.iter().all(|op| !matches!(op, LbOp::RemoveBackend { .. } | LbOp::UpsertBackend { .. })), "{ops:?}");
        assert_eq!(backend_id(&next, "198.51.100.1"), id);
    }

    #[test]
    fn ops_order_adds_backends_before_tables_and_removes_them_last() {
        // Every backend of `web` is replaced and another service disappears in one pass.
        let health = HealthView::default();
        let other = svc("192.0.2.11", 80, &["198.51.100.5"]);
        let (_, state) =
            converge(&[web(&["198.51.100.1", "198.51.100.2"]), other.clone()], &health, &LbState::default());
        let ops = plan(&[web(&["198.51.100.3", "198.51.100.4"])], &health, &state);

        // `other`'s backend, which no remaining table names, goes right after `other`; `web`'s
        // old backends only after `web`'s new table.
        let other_backend = backend_id(&state, "198.51.100.5");
        let rank = |op: &LbOp| match op {
            LbOp::RemoveService { .. } => 0,
            LbOp::RemoveBackend { id } if *id == other_backend => 1,
            LbOp::UpsertBackend { .. } => 2,
            LbOp::UpsertService { .. } => 3,
            LbOp::RemoveBackend { .. } => 4,
        };
        let ranks: Vec<u8> = ops.iter().map(rank).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ops:?}");
        assert_eq!(ranks, [0, 1, 2, 2, 3, 4, 4]);
        assert!(ops.contains(&LbOp::RemoveService { id: 2, key: key_of(&other) }));
        // Applying them one at a time never leaves a table pointing at a missing backend.
        let next = applied(&state, &ops);
        assert_eq!(plan(&[web(&["198.51.100.3", "198.51.100.4"])], &health, &next), vec![]);
    }

    #[test]
    fn ids_no_table_names_are_freed_first_and_reused_in_the_same_pass() {
        // A pass that failed after adding its backends: the maps hold the old backends (named by
        // the table) and the new ones (named by none), ids 1-2 and 3-4.
        let health = HealthView::default();
        let old = web(&["198.51.100.1", "198.51.100.2"]);
        let (_, mut state) = converge(std::slice::from_ref(&old), &health, &LbState::default());
        for (id, a) in [(3, "198.51.100.3"), (4, "198.51.100.4")] {
            state.backends.insert(id, BackendEntry { address: a.parse().unwrap(), port: 8080, down: false });
        }
        // The next config has other backends again: 3 and 4 go first and their ids take the new
        // backends; 1 and 2 go once the table no longer names them.
        let third = web(&["198.51.100.5", "198.51.100.6"]);
        let (ops, next) = converge(std::slice::from_ref(&third), &health, &state);
        assert_eq!(&ops[..2], &[LbOp::RemoveBackend { id: 3 }, LbOp::RemoveBackend { id: 4 }], "{ops:?}");
        assert_eq!((backend_id(&next, "198.51.100.5"), backend_id(&next, "198.51.100.6")), (3, 4));
        assert_eq!(ops.last(), Some(&LbOp::RemoveBackend { id: 2 }), "{ops:?}");
        assert_eq!(next.backends.keys().copied().collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn freed_ids_are_reused_lowest_first_but_not_in_the_same_pass() {
        let health = HealthView::default();
        let (_, state) =
            converge(&[web(&["198.51.100.1", "198.51.100.2", "198.51.100.3"])], &health, &LbState::default());
        // 198.51.100.1 (id 1) goes and 198.51.100.4 comes in the same pass: id 1 is still in the maps.
        let (ops, state) = converge(&[web(&["198.51.100.2", "198.51.100.3", "198.51.100.4"])], &health, &state);
        assert_eq!(
            ops[0],
            LbOp::UpsertBackend { id: 4, address: "198.51.100.4".parse().unwrap(), port: 8080, down: false }
        );
        assert_eq!(ops.last(), Some(&LbOp::RemoveBackend { id: 1 }));
        // The next new backend gets the freed id 1.
        let (ops, _) =
            converge(&[web(&["198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5"])], &health, &state);
        assert_eq!(
            ops[0],
            LbOp::UpsertBackend { id: 1, address: "198.51.100.5".parse().unwrap(), port: 8080, down: false }
        );
    }

    #[test]
    fn changed_port_is_a_new_service_taking_the_freed_id() {
        let health = HealthView::default();
        let old = svc("192.0.2.10", 80, &["198.51.100.1"]);
        let new = svc("192.0.2.10", 8080, &["198.51.100.1"]);
        let (_, state) = converge(std::slice::from_ref(&old), &health, &LbState::default());
        let (ops, next) = converge(std::slice::from_ref(&new), &health, &state);
        assert_eq!(ops[0], LbOp::RemoveService { id: 1, key: key_of(&old) });
        assert!(matches!(&ops[1], LbOp::UpsertService { id: 1, key, .. } if *key == key_of(&new)), "{ops:?}");
        assert_eq!(ops.len(), 2, "the backend stays: {ops:?}");
        assert_eq!(next.services.len(), 1);
    }

    #[test]
    fn a_full_replacement_of_services_needs_no_more_ids_than_services() {
        // Two services replaced by two others: the new ones take the ids 1 and 2 the old ones
        // leave, so a datapath full of services can be replaced by another full set.
        let health = HealthView::default();
        let old = [svc("192.0.2.10", 80, &["198.51.100.1"]), svc("192.0.2.11", 80, &["198.51.100.1"])];
        let new = [svc("192.0.2.20", 80, &["198.51.100.1"]), svc("192.0.2.21", 80, &["198.51.100.1"])];
        let (_, state) = converge(&old, &health, &LbState::default());
        let (_, next) = converge(&new, &health, &state);
        let ids: BTreeSet<u32> = next.services.values().map(|s| s.id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2]));
    }

    #[test]
    fn mode_change_updates_only_that_service() {
        let health = HealthView::default();
        let a = svc("192.0.2.10", 80, &["198.51.100.1"]);
        let b = svc("192.0.2.11", 80, &["198.51.100.2"]);
        let (_, state) = converge(&[a.clone(), b.clone()], &health, &LbState::default());
        let mut nat = a.clone();
        nat.mode = Mode::Nat;
        let (ops, _) = converge(&[nat, b], &health, &state);
        assert_eq!(ops.len(), 1);
        assert!(matches!(&ops[0], LbOp::UpsertService { id: 1, key, mode: Mode::Nat, .. } if *key == key_of(&a)));
    }

    #[test]
    fn health_change_in_one_service_leaves_the_other_untouched() {
        let a = svc("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"]);
        let b = svc("192.0.2.11", 80, &["198.51.100.1", "198.51.100.2"]);
        let (_, state) = converge(&[a.clone(), b.clone()], &HealthView::default(), &LbState::default());
        let mut health = HealthView::default();
        down(&mut health, &a, "198.51.100.1");
        let (ops, _) = converge(&[a.clone(), b], &health, &state);
        assert_eq!(ops.len(), 1);
        assert!(matches!(&ops[0], LbOp::UpsertService { key, .. } if *key == key_of(&a)));
    }

    #[test]
    fn weights_and_table_size_come_from_the_service() {
        let mut s = web(&["198.51.100.1", "198.51.100.2"]);
        s.backends[1].weight = 3;
        s.maglev_table_size = 65537;
        let (_, state) = converge(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        let table = &state.services[&key_of(&s)].table;
        assert_eq!(table.len(), 65537);
        let heavy = backend_id(&state, "198.51.100.2");
        let share = table.iter().filter(|&&id| id == heavy).count() as f64 / table.len() as f64;
        assert!((share - 0.75).abs() < 0.001, "{share}");
    }

    #[test]
    fn removing_every_service_removes_every_entry() {
        let health = HealthView::default();
        let (_, state) = converge(&[web(&["198.51.100.1", "198.51.100.2"])], &health, &LbState::default());
        let (_, next) = converge(&[], &health, &state);
        assert_eq!(next, LbState::default());
    }

    #[test]
    fn in_memory_maps_reject_a_table_with_an_unknown_backend() {
        let key = key_of(&web(&[]));
        let mut state = LbState::default();
        let op = LbOp::UpsertService { id: 1, key, mode: Mode::Dsr, table: Arc::new(vec![1, 2]) };
        assert_eq!(state.apply(&op), Err(ApplyError::UnknownBackend { key, service_id: 1, backend_id: 1 }));
    }

    #[test]
    fn in_memory_maps_reject_removing_or_repointing_a_backend_in_use() {
        let s = web(&["198.51.100.1"]);
        let (_, mut state) = converge(std::slice::from_ref(&s), &HealthView::default(), &LbState::default());
        let in_use = ApplyError::BackendInUse { id: 1, key: key_of(&s) };
        assert_eq!(state.apply(&LbOp::RemoveBackend { id: 1 }), Err(in_use.clone()));
        let repoint = LbOp::UpsertBackend { id: 1, address: "198.51.100.9".parse().unwrap(), port: 8080, down: false };
        assert_eq!(state.apply(&repoint), Err(in_use));
    }

    fn with_weight(s: &Service, a: &str, weight: u32) -> Service {
        let mut s = s.clone();
        let addr = sock(a);
        let b = s.backends.iter_mut().find(|b| SocketAddr::new(b.address, b.port) == addr).unwrap();
        b.weight = weight;
        s
    }

    #[test]
    fn draining_rewrites_only_that_service_table_and_keeps_the_backend_entry() {
        let backends = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"];
        let a = svc("192.0.2.10", 80, &backends);
        let b = svc("192.0.2.11", 80, &backends);
        let health = HealthView::default();
        let (_, state) = converge(&[a.clone(), b.clone()], &health, &LbState::default());
        let drained_id = backend_id(&state, "198.51.100.2");

        let drained = with_weight(&a, "198.51.100.2", 0);
        let (ops, next) = converge(&[drained.clone(), b.clone()], &health, &state);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(&ops[0], LbOp::UpsertService { id: 1, key, .. } if *key == key_of(&a)), "{ops:?}");
        assert_eq!(next.backends, state.backends, "the drained backend keeps its entry, for its established flows");
        assert!(!table_ids(&next, &key_of(&a)).contains(&drained_id));
        assert_eq!(next.services[&key_of(&b)], state.services[&key_of(&b)], "the other service is untouched");

        // Minimal disruption: the drained backend's slots move, and few of the others do.
        let (before, after) = (&state.services[&key_of(&a)].table, &next.services[&key_of(&a)].table);
        let kept: Vec<(u32, u32)> =
            before.iter().copied().zip(after.iter().copied()).filter(|(old, _)| *old != drained_id).collect();
        let moved = kept.iter().filter(|(old, new)| old != new).count() as f64 / before.len() as f64;
        // Ideal: 1/4 of the table moves (the drained backend's share) and none of the rest.
        // Maglev gives up a little of that ideal for its even spread (about 0.5% here).
        assert!(moved < 0.03, "{moved:.4} of the table moved between the backends that stay");
    }

    #[test]
    fn drained_backend_gets_the_table_of_an_absent_one_and_undraining_restores_it() {
        let health = HealthView::default();
        let all = web(&["198.51.100.1", "198.51.100.2", "198.51.100.3"]);
        let (_, state) = converge(std::slice::from_ref(&all), &health, &LbState::default());
        let original = state.services[&key_of(&all)].table.clone();

        let (_, drained) = converge(&[with_weight(&all, "198.51.100.3", 0)], &health, &state);
        let backend = |a: &str| {
            let id = backend_id(&state, a);
            MaglevBackend { id, address: a.parse().unwrap(), port: 8080, weight: 1 }
        };
        let without = build_table(&[backend("198.51.100.1"), backend("198.51.100.2")], SIZE).unwrap();
        assert_eq!(*drained.services[&key_of(&all)].table, without);

        let (ops, undrained) = converge(std::slice::from_ref(&all), &health, &drained);
        assert_eq!(ops.len(), 1, "only the table changes back: {ops:?}");
        assert_eq!(undrained.services[&key_of(&all)].table, original, "undraining restores the table it had");
        assert_eq!(undrained, state);
    }

    #[test]
    fn drained_backend_has_no_slot_even_while_healthy_and_unhealthy_does_not_undrain_it() {
        let s = with_weight(&web(&["198.51.100.1", "198.51.100.2"]), "198.51.100.1", 0);
        let mut health = HealthView::default();
        health.set(key_of(&s), sock("198.51.100.1"), BackendHealth::Healthy);
        let (_, state) = converge(std::slice::from_ref(&s), &health, &LbState::default());
        assert_eq!(table_ids(&state, &key_of(&s)), BTreeSet::from([backend_id(&state, "198.51.100.2")]));
        // The only backend with weight goes down: empty table, both entries kept.
        down(&mut health, &s, "198.51.100.2");
        let (_, next) = converge(std::slice::from_ref(&s), &health, &state);
        assert!(next.services[&key_of(&s)].table.is_empty());
        assert_eq!(next.backends.len(), 2);
    }

    #[test]
    fn service_with_every_backend_drained_keeps_its_entries_with_an_empty_table() {
        let health = HealthView::default();
        let s = web(&["198.51.100.1", "198.51.100.2"]);
        let (_, state) = converge(std::slice::from_ref(&s), &health, &LbState::default());
        let all_drained = with_weight(&with_weight(&s, "198.51.100.1", 0), "198.51.100.2", 0);
        let (ops, next) = converge(std::slice::from_ref(&all_drained), &health, &state);
        assert!(matches!(&ops[..], [LbOp::UpsertService { id: 1, table, .. }] if table.is_empty()), "{ops:?}");
        assert_eq!(next.backends, state.backends);
        // Also when the service is new: its backends get entries, its table is empty.
        let (ops, fresh) = converge(std::slice::from_ref(&all_drained), &health, &LbState::default());
        assert_eq!(ops.iter().filter(|op| matches!(op, LbOp::UpsertBackend { .. })).count(), 2, "{ops:?}");
        assert!(fresh.services[&key_of(&s)].table.is_empty());
    }
}
