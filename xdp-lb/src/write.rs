//! Writing a plan's ops so that a service the kernel refuses holds back only itself and what
//! depends on it, not every op after it.
//!
//! Without this, one service whose table the kernel will not take (out of memory in the daemon's
//! cgroup, say) stops the ops behind it pass after pass: the other services' health changes, new
//! services and removals wait until that one goes in. [`write_isolating`] writes the ops through
//! the caller's `write`; when it stops at a service's op, that service is set aside and the
//! rest is written again, without it and without what its failure would make unsafe, checked
//! against a model of the maps ([`LbState::apply`]):
//!
//! - the failed service keeps what the maps hold for it (its old table, or nothing);
//! - a backend its old table still names is neither removed nor re-pointed (the model refuses
//!   it), and a service whose new table names a backend whose write was held back is held back
//!   too (it would point at whatever the id holds now);
//! - a backend its old table still names is not marked down (a down mark starts UDP flows over
//!   through their table, which would pick it again);
//! - a service given the failed one's id (the plan frees a removed service's id for the same
//!   pass) waits: the two would share one table.
//!
//! A failure no service is to blame for (the backend map, a map that cannot be opened) stops the
//! writing as before. (The eBPF datapath blames service upserts only, the ops that allocate: a
//! removal fails only with its map, and stops the writing; the tests also blame removals, which
//! a datapath may.) The failed services are planned again in the next pass, which retries them.

use std::collections::BTreeSet;

use crate::plan::{LbOp, LbState};
use crate::ServiceKey;

/// Services set aside in one write, at most: past that the kernel is refusing most of them (out
/// of memory for the whole node, say), and retrying the rest once per failure would only cost
/// the datapath thread time; the write stops there as it would without isolation.
pub const MAX_SET_ASIDE: usize = 16;

/// A write that stopped: the first `done` ops are in the maps, the op at `at` (when one op is to
/// blame) failed, and what was between them may or may not have gone in (writing it again is
/// harmless: every op is idempotent).
#[derive(Debug)]
pub struct WriteStop<E> {
    pub done: usize,
    pub at: Option<usize>,
    pub error: E,
}

/// What [`write_isolating`] did.
#[derive(Debug)]
pub struct Written<E> {
    /// What the maps hold afterwards as far as the writes tell (after any failure, read the maps
    /// back to be sure: the failed write may have left part of a batch in).
    pub state: LbState,
    /// The services whose op failed, each once, with why; the maps hold for each what they held.
    pub failed: Vec<(ServiceKey, E)>,
    /// Ops not written because a failed service's would have had to go first.
    pub held_back: Vec<LbOp>,
    /// A failure no service is to blame for; the ops from there on were not written.
    pub stopped: Option<E>,
}

impl<E> Written<E> {
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.held_back.is_empty() && self.stopped.is_none()
    }
}

/// Writes `ops` (a plan for maps holding `state`) in order through `write`, setting aside each
/// service whose op `write` stops at and writing the rest again without it (see the module doc).
/// `write` is called at most once per failed service, plus once, and at most
/// [`MAX_SET_ASIDE`] services are set aside.
pub fn write_isolating<E>(
    state: &LbState,
    ops: &[LbOp],
    mut write: impl FnMut(&[LbOp]) -> Result<(), WriteStop<E>>,
) -> Written<E> {
    let mut model = state.clone();
    let mut failed: Vec<(ServiceKey, E)> = Vec::new();
    let mut failed_keys = BTreeSet::new();
    let mut held_back = Vec::new();
    let mut pending = ops.to_vec();
    // How many ops at the head of `pending` may have gone in with the failed batch (the model
    // does not have them): if one of them would be held back, the checks after it would be made
    // against tables the maps may no longer hold, so the write ends there.
    let mut maybe_in = 0;
    loop {
        let next = sendable(&model, pending, maybe_in, &failed_keys, &mut held_back);
        let Some((sendable, after)) = next.filter(|(sendable, _)| !sendable.is_empty()) else {
            return Written { state: model, failed, held_back, stopped: None };
        };
        let stop = match write(&sendable) {
            Ok(()) => return Written { state: after, failed, held_back, stopped: None },
            Err(stop) => stop,
        };
        let done = stop.done.min(sendable.len());
        for op in &sendable[..done] {
            // Accepted by the model when `sendable` was made, in this order.
            let _ = model.apply(op);
        }
        let blamed = stop.at.filter(|at| (done..sendable.len()).contains(at));
        match blamed.and_then(|at| Some((at, sendable[at].service()?))) {
            Some((at, key)) if failed.len() < MAX_SET_ASIDE && failed_keys.insert(key) => {
                failed.push((key, stop.error));
                maybe_in = at - done;
                pending = sendable[done..].to_vec();
            }
            _ => return Written { state: model, failed, held_back, stopped: Some(stop.error) },
        }
    }
}

/// The ops of `pending` that are safe to write to maps holding `model` while the services in
/// `failed` keep what they hold, and the model after them; the others (but the failed services'
/// own) go to `held_back`. `None` (with every op from there on held back) if one of the first
/// `maybe_in` ops would be held back.
fn sendable(
    model: &LbState,
    pending: Vec<LbOp>,
    maybe_in: usize,
    failed: &BTreeSet<ServiceKey>,
    held_back: &mut Vec<LbOp>,
) -> Option<(Vec<LbOp>, LbState)> {
    let mut after = model.clone();
    let mut sendable = Vec::with_capacity(pending.len());
    // Backend ids whose write was held back: they hold something else than the plan expects.
    let mut unwritten: BTreeSet<u32> = BTreeSet::new();
    // Services whose entry in the maps is not what the plan expects: the failed ones and those
    // held back (they keep their old tables and ids).
    let mut stale: BTreeSet<ServiceKey> =
        failed.iter().copied().chain(held_back.iter().filter_map(LbOp::service)).collect();
    let mut pending = pending.into_iter().enumerate();
    while let Some((i, op)) = pending.next() {
        if op.service().is_some_and(|key| failed.contains(&key)) {
            continue;
        }
        let held_by = |key: &ServiceKey, test: &dyn Fn(&crate::plan::ServiceEntry) -> bool| {
            after.services.get(key).is_some_and(test)
        };
        let safe = match &op {
            LbOp::UpsertService { id, key, table, .. } => {
                (unwritten.is_empty() || !table.iter().any(|b| unwritten.contains(b)))
                    && !stale.iter().any(|other| other != key && held_by(other, &|s| s.id == *id))
            }
            // Checked here, against the few stale tables, not in `LbState::apply`: that would scan
            // every table at every down mark, a health event marking many.
            LbOp::UpsertBackend { id, down: true, .. } => {
                !stale.iter().any(|key| held_by(key, &|s| s.table.contains(id)))
            }
            _ => true,
        };
        if safe && after.apply(&op).is_ok() {
            sendable.push(op);
            continue;
        }
        if i < maybe_in {
            held_back.push(op);
            let rest = pending.map(|(_, op)| op);
            held_back.extend(rest.filter(|op| op.service().is_none_or(|key| !failed.contains(&key))));
            return None;
        }
        if let LbOp::UpsertBackend { id, .. } = op {
            unwritten.insert(id);
        }
        stale.extend(op.service());
        held_back.push(op);
    }
    Some((sendable, after))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use ferrule_config::Service;

    use super::*;
    use crate::plan::plan;
    use crate::plan::tests::backend_id;
    use crate::HealthView;

    /// A service on port 80 (the plan's tests' helper).
    fn svc(vip: &str, backends: &[&str]) -> Service {
        crate::plan::tests::svc(vip, 80, backends)
    }

    /// Maps that refuse every op on the services in `refused`, as a kernel out of memory for
    /// their tables would, and write the others in order like the real ones.
    struct Maps {
        state: LbState,
        refused: BTreeSet<ServiceKey>,
        writes: usize,
    }

    impl Maps {
        fn write(&mut self, ops: &[LbOp]) -> Result<(), WriteStop<String>> {
            self.writes += 1;
            for (i, op) in ops.iter().enumerate() {
                if op.service().is_some_and(|key| self.refused.contains(&key)) {
                    return Err(WriteStop { done: i, at: Some(i), error: format!("ENOMEM at {op:?}") });
                }
                // The real maps do not check this; the test does, so a wrong op fails it.
                self.state.apply(op).unwrap_or_else(|e| panic!("unsafe op written: {op:?}: {e}"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_refused_service_holds_back_only_itself_and_keeps_its_old_table() {
        let health = HealthView::default();
        let (a, b) = (svc("192.0.2.1", &["198.51.100.1", "198.51.100.2"]), svc("192.0.2.2", &["198.51.100.3"]));
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        let first = plan(&[a.clone(), b.clone()], &health, &maps.state);
        let written = write_isolating(&maps.state.clone(), &first, |ops| maps.write(ops));
        assert!(written.is_complete());
        assert_eq!(written.state, maps.state);
        let old_a = maps.state.services[&ServiceKey::of(&a)].clone();
        let gone = backend_id(&maps.state, "198.51.100.2");

        // A moves to a new backend (its old one is to be removed, its id reused), B gets a
        // second backend, and a new service C comes: the kernel refuses every op on A.
        maps.refused.insert(ServiceKey::of(&a));
        let a2 = svc("192.0.2.1", &["198.51.100.1", "198.51.100.9"]);
        let b2 = svc("192.0.2.2", &["198.51.100.3", "198.51.100.4"]);
        let c = svc("192.0.2.3", &["198.51.100.5"]);
        let desired = [a2.clone(), b2.clone(), c.clone()];
        let ops = plan(&desired, &health, &maps.state);
        let before = maps.writes;
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));

        assert_eq!(written.failed.len(), 1);
        assert_eq!(written.failed[0].0, ServiceKey::of(&a));
        assert!(written.failed[0].1.starts_with("ENOMEM"));
        assert!(written.stopped.is_none());
        assert_eq!(maps.writes - before, 2, "once, then once more without A");
        assert_eq!(written.state, maps.state, "the model is what the maps hold");
        assert_eq!(maps.state.services[&ServiceKey::of(&a)], old_a, "A keeps its old table");
        assert_eq!(backend_id(&maps.state, "198.51.100.2"), gone, "the backend A's old table names stays");
        // B and C are in, each complete; planning again leaves only A's ops (and what needs them).
        maps.refused.clear();
        let rest = plan(&desired, &health, &maps.state);
        assert!(rest.iter().all(|op| op.service().is_none_or(|k| k == ServiceKey::of(&a))), "{rest:?}");
        let mut check = maps.state.clone();
        for op in &rest {
            check.apply(op).unwrap();
        }
        assert_eq!(plan(&desired, &health, &check), vec![]);
    }

    #[test]
    fn a_backend_whose_id_a_refused_table_holds_is_not_reused_and_its_new_user_waits() {
        let health = HealthView::default();
        // A's only backend leaves A's config and a new backend takes ... but A's table is refused,
        // so the old backend's id must keep its old address, and a service whose new table would
        // name that id for another address must wait.
        let a = svc("192.0.2.1", &["198.51.100.1"]);
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        let first = plan(std::slice::from_ref(&a), &health, &maps.state);
        assert!(write_isolating(&maps.state.clone(), &first, |ops| maps.write(ops)).is_complete());
        let old = backend_id(&maps.state, "198.51.100.1");

        // A is removed from the config and B comes with a new backend; removing A is refused.
        maps.refused.insert(ServiceKey::of(&a));
        let b = svc("192.0.2.2", &["198.51.100.7"]);
        let ops = plan(std::slice::from_ref(&b), &health, &maps.state);
        assert!(
            ops.iter().any(|op| matches!(op, LbOp::UpsertBackend { id, .. } if *id == old)),
            "the plan reuses A's backend id at once: {ops:?}"
        );
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));
        assert_eq!(written.failed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![ServiceKey::of(&a)]);
        assert_eq!(maps.state.backends[&old].address, "198.51.100.1".parse::<IpAddr>().unwrap(), "not re-pointed");
        assert!(maps.state.services.contains_key(&ServiceKey::of(&a)), "A stays as it was");
        assert!(!maps.state.services.contains_key(&ServiceKey::of(&b)), "B waits: its table would name A's backend");
        assert_eq!(written.held_back.len(), 3, "the removal, the re-pointing and B: {:?}", written.held_back);
        assert_eq!(written.state, maps.state);

        // Once A's removal goes through, the next pass installs B.
        maps.refused.clear();
        let ops = plan(std::slice::from_ref(&b), &health, &maps.state);
        assert!(write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops)).is_complete());
        assert!(maps.state.services.contains_key(&ServiceKey::of(&b)));
        assert!(!maps.state.services.contains_key(&ServiceKey::of(&a)));
    }

    #[test]
    fn a_service_given_the_id_of_a_refused_removal_waits() {
        let health = HealthView::default();
        let a = svc("192.0.2.1", &["198.51.100.1"]);
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        let first = plan(std::slice::from_ref(&a), &health, &maps.state);
        assert!(write_isolating(&maps.state.clone(), &first, |ops| maps.write(ops)).is_complete());

        // A goes, B comes with A's backend and A's service id; removing A is refused.
        maps.refused.insert(ServiceKey::of(&a));
        let b = svc("192.0.2.2", &["198.51.100.1"]);
        let ops = plan(std::slice::from_ref(&b), &health, &maps.state);
        let a_id = maps.state.services[&ServiceKey::of(&a)].id;
        assert!(ops.iter().any(|op| matches!(op, LbOp::UpsertService { id, .. } if *id == a_id)), "{ops:?}");
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));
        assert_eq!(written.failed.len(), 1);
        assert!(!maps.state.services.contains_key(&ServiceKey::of(&b)), "B would share A's table");
        assert!(matches!(written.held_back.as_slice(), [LbOp::UpsertService { id, .. }] if *id == a_id));
    }

    #[test]
    fn a_backend_the_old_table_of_a_held_back_service_names_is_not_marked_down() {
        let health = HealthView::default();
        // A (refused, then removed) holds backend .1; S lists .2 and .3.
        let a = svc("192.0.2.1", &["198.51.100.1"]);
        let s = svc("192.0.2.2", &["198.51.100.2", "198.51.100.3"]);
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        let first = plan(&[a.clone(), s.clone()], &health, &maps.state);
        assert!(write_isolating(&maps.state.clone(), &first, |ops| maps.write(ops)).is_complete());
        let three = backend_id(&maps.state, "198.51.100.3");

        // A goes (refused) and S swaps .2 for .9, which the plan puts in A's freed backend id
        // (held back: A still names it), and .3 fails: S's new table (naming .9's id) waits, so
        // S's old table still names .3, which must not be marked down.
        maps.refused.insert(ServiceKey::of(&a));
        let s2 = svc("192.0.2.2", &["198.51.100.9", "198.51.100.3"]);
        let mut health = HealthView::default();
        let addr = SocketAddr::new("198.51.100.3".parse().unwrap(), 8080);
        health.set(ServiceKey::of(&s2), addr, crate::BackendHealth::Unhealthy { reason: "refused".into() });
        let ops = plan(std::slice::from_ref(&s2), &health, &maps.state);
        assert!(
            ops.iter().any(|op| matches!(op, LbOp::UpsertBackend { id, down: true, .. } if *id == three)),
            "{ops:?}"
        );
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));
        assert_eq!(written.failed.len(), 1);
        assert!(
            written
                .held_back
                .iter()
                .any(|op| matches!(op, LbOp::UpsertService { key, .. } if *key == ServiceKey::of(&s2))),
            "S waits: {:?}",
            written.held_back
        );
        assert!(maps.state.services[&ServiceKey::of(&s)].table.contains(&three), "S's old table names .3");
        assert!(!maps.state.backends[&three].down, "so .3 is not marked down");
    }

    #[test]
    fn a_backend_a_refused_table_still_names_is_not_marked_down() {
        let (a, b) = (svc("192.0.2.1", &["198.51.100.1", "198.51.100.2"]), svc("192.0.2.2", &["198.51.100.2"]));
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        let first = plan(&[a.clone(), b.clone()], &HealthView::default(), &maps.state);
        assert!(write_isolating(&maps.state.clone(), &first, |ops| maps.write(ops)).is_complete());
        let shared = backend_id(&maps.state, "198.51.100.2");

        // .2 fails for both services: both tables leave it out, then it is marked down. A's
        // table is refused, so A still names it: no down mark; B's table goes in.
        let mut health = HealthView::default();
        let addr = SocketAddr::new("198.51.100.2".parse().unwrap(), 8080);
        for s in [&a, &b] {
            health.set(ServiceKey::of(s), addr, crate::BackendHealth::Unhealthy { reason: "refused".into() });
        }
        maps.refused.insert(ServiceKey::of(&a));
        let ops = plan(&[a.clone(), b.clone()], &health, &maps.state);
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));
        assert_eq!(written.failed.len(), 1);
        assert!(!maps.state.backends[&shared].down, "not marked down while A's table names it");
        assert!(maps.state.services[&ServiceKey::of(&b)].table.is_empty(), "B's table left it out");
        assert!(matches!(written.held_back.as_slice(), [LbOp::UpsertBackend { id, down: true, .. }] if *id == shared));

        // A's table goes in next pass, and then the mark.
        maps.refused.clear();
        let ops = plan(&[a.clone(), b.clone()], &health, &maps.state);
        assert!(write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops)).is_complete());
        assert!(maps.state.backends[&shared].down);
    }

    #[test]
    fn past_the_most_services_set_aside_the_writing_stops() {
        let services: Vec<Service> =
            (1..=MAX_SET_ASIDE as u8 + 4).map(|i| svc(&format!("192.0.2.{i}"), &["198.51.100.1"])).collect();
        let mut maps = Maps { state: LbState::default(), refused: BTreeSet::new(), writes: 0 };
        maps.refused = services.iter().map(ServiceKey::of).collect();
        let ops = plan(&services, &HealthView::default(), &maps.state);
        let written = write_isolating(&maps.state.clone(), &ops, |ops| maps.write(ops));
        assert_eq!(written.failed.len(), MAX_SET_ASIDE);
        assert!(written.stopped.is_some());
        assert_eq!(maps.writes, MAX_SET_ASIDE + 1);
        assert_eq!(written.state, maps.state, "the backends went in");
    }

    #[test]
    fn an_op_that_may_have_gone_in_with_the_failed_batch_is_not_held_back_silently() {
        // Synthetic order (the plan marks down after the tables): a down mark, then a table
        // that still names the backend, written as one batch the kernel stopped in at the table.
        let a = svc("192.0.2.1", &["198.51.100.1"]);
        let mut state = LbState::default();
        for op in plan(std::slice::from_ref(&a), &HealthView::default(), &state) {
            state.apply(&op).unwrap();
        }
        let id = backend_id(&state, "198.51.100.1");
        let entry = state.backends[&id];
        let old = state.services[&ServiceKey::of(&a)].clone();
        let ops = [
            LbOp::UpsertBackend { id, address: entry.address, port: entry.port, down: true },
            LbOp::UpsertService { id: old.id, key: ServiceKey::of(&a), mode: old.mode, table: old.table.clone() },
            LbOp::UpsertBackend { id: id + 1, address: "198.51.100.2".parse().unwrap(), port: 8080, down: false },
        ];
        let mut calls = 0;
        let written = write_isolating(&state, &ops, |_| {
            calls += 1;
            // Whether the mark went in is unknown: only the batch's start is certain.
            Err(WriteStop { done: 0, at: Some(1), error: "ENOMEM" })
        });
        assert_eq!(calls, 1, "nothing written after the doubt");
        assert_eq!(written.failed.len(), 1);
        assert_eq!(written.held_back, [ops[0].clone(), ops[2].clone()]);
        assert!(!written.is_complete());
    }

    #[test]
    fn a_failure_no_service_is_to_blame_for_stops_the_writing() {
        let a = svc("192.0.2.1", &["198.51.100.1"]);
        let ops = plan(std::slice::from_ref(&a), &HealthView::default(), &LbState::default());
        let mut calls = 0;
        let written = write_isolating(&LbState::default(), &ops, |_| {
            calls += 1;
            Err(WriteStop { done: 0, at: Some(0), error: "backend map full" })
        });
        assert_eq!(calls, 1);
        assert_eq!(written.stopped, Some("backend map full"));
        assert!(written.failed.is_empty());
        assert_eq!(written.state, LbState::default());
    }
}
