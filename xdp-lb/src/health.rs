//! Backend health as the rest of the daemon sees it (`HealthView`), and the pure logic behind it:
//! the rise/fall state machine and the check schedule. No sockets and no clock reads here: time
//! comes in as `now`, results come in from `checker`, which does the I/O.
//!
//! Since. The view also says since when each backend of each service is in its current state: a
//! checked backend from when it was added (healthy) or last flipped, a backend of a service without
//! a check from when it was added to the service or its check removed. Times are the `now` the
//! scheduler was given, so tests drive them; they start over when the daemon restarts.
//!
//! Start state: a backend the checker has not yet judged is **healthy**, and turns unhealthy only
//! after `fall` failed checks in a row. A daemon restart or a config reload must not withdraw VIPs
//! or empty Maglev tables while the first checks run; a backend that is really down costs at most
//! `fall` intervals of misrouted new flows, the same as a backend that fails while running. The
//! exception is a backend the datapath's backend map marks down when the daemon starts (it was
//! unhealthy for every service before the restart, `plan`'s module doc): it starts **unhealthy**
//! and needs `rise` good checks, so that a restart does not put known-dead backends back into
//! tables, nor announce a VIP whose backends are all dead, while the first checks run.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use ferrule_config::{HealthCheck, Service};
use tokio::time::Instant;

use crate::ServiceKey;

/// What the checker concluded about one backend of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHealth {
    Healthy,
    /// `reason` is the failure that turned the backend unhealthy, e.g. `connect: Connection refused`.
    Unhealthy {
        reason: String,
    },
}

/// Health of every checked backend, per service (a backend shared by two services can pass one
/// service's HTTP check and fail the other's). A backend that is not in the view (its service has
/// no `health`, or it was never checked) counts as healthy.
///
/// `since` is kept apart from the verdicts: it also covers the backends of services without a
/// check (unchecked since then), which have no verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthView {
    entries: BTreeMap<(ServiceKey, SocketAddr), BackendHealth>,
    since: BTreeMap<(ServiceKey, SocketAddr), Instant>,
}

impl HealthView {
    pub fn is_healthy(&self, service: &ServiceKey, backend: SocketAddr) -> bool {
        !matches!(self.get(service, backend), Some(BackendHealth::Unhealthy { .. }))
    }

    pub fn get(&self, service: &ServiceKey, backend: SocketAddr) -> Option<&BackendHealth> {
        self.entries.get(&(*service, backend))
    }

    pub fn set(&mut self, service: ServiceKey, backend: SocketAddr, health: BackendHealth) {
        self.entries.insert((service, backend), health);
    }

    /// When the backend's health state (healthy, unhealthy, or unchecked for a service without a
    /// check) last changed; `None` when the checker has not seen the backend yet.
    pub fn since(&self, service: &ServiceKey, backend: SocketAddr) -> Option<Instant> {
        self.since.get(&(*service, backend)).copied()
    }

    pub fn set_since(&mut self, service: ServiceKey, backend: SocketAddr, at: Instant) {
        self.since.insert((service, backend), at);
    }

    /// Whether this view lags `services`: a backend of a service with a check has no verdict in
    /// it, because the checker has not taken it in yet (a new service or backend, or a service
    /// whose VIP, port or protocol changed; the checker gives every target it has a verdict,
    /// carried over where the same check of the backend has one), so that planning with it now
    /// would count that backend healthy, a known-dead one too.
    pub fn lags(&self, services: &[Service]) -> bool {
        services.iter().filter(|s| s.health.is_some()).any(|s| {
            let key = ServiceKey::of(s);
            s.backends.iter().any(|b| self.get(&key, SocketAddr::new(b.address, b.port)).is_none())
        })
    }

    /// Verdicts in (service, backend) order.
    pub fn iter(&self) -> impl Iterator<Item = (&ServiceKey, SocketAddr, &BackendHealth)> {
        self.entries.iter().map(|((service, backend), health)| (service, *backend, health))
    }

    /// Number of verdicts (checked backends).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The view a health checker started with `down` (see [`crate::checker::run`]) publishes first for
/// `services`: every backend healthy but the checked ones in `down`. For the channel's initial
/// value, so that nothing acts on an all-healthy view before the checker's first publication.
pub fn seeded_view(services: &[Service], down: &BTreeSet<SocketAddr>, now: Instant) -> HealthView {
    Scheduler::seeded(services, down, now).view()
}

/// Consecutive-result counting: `fall` failures in a row turn a healthy backend unhealthy, `rise`
/// successes in a row turn an unhealthy one healthy; a result that agrees with the current state
/// resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RiseFall {
    healthy: bool,
    /// Consecutive results that disagree with `healthy`.
    streak: u32,
}

impl RiseFall {
    pub(crate) fn new() -> RiseFall {
        RiseFall { healthy: true, streak: 0 }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; returns true when the state flipped. Thresholds of 0 act as 1.
    pub(crate) fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let threshold = if self.healthy { fall } else { rise }.max(1);
        if self.streak >= threshold {
            self.healthy = ok;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// (service, backend): one check target.
pub(crate) type TargetKey = (ServiceKey, SocketAddr);

/// One check to run now. `epoch` ties the result to the configuration it was started under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) key: TargetKey,
    pub(crate) check: HealthCheck,
    pub(crate) epoch: u64,
}

#[derive(Debug)]
struct Target {
    check: HealthCheck,
    state: RiseFall,
    reason: Option<String>,
    /// When `state` last flipped, or the target was added.
    since: Instant,
    next_due: Instant,
    in_flight: bool,
    epoch: u64,
}

/// A target's check and what it found (state, reason, since), carried to its successor.
type Verdict = (HealthCheck, RiseFall, Option<String>, Instant);

/// Which backend to check when, and their rise/fall states. One probe per target at a time: a
/// check that outlives its interval delays the next one rather than piling up connections.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    targets: BTreeMap<TargetKey, Target>,
    /// Backends of services without a check, and since when they are unchecked.
    unchecked: BTreeMap<TargetKey, Instant>,
    epochs: u64,
}

impl Scheduler {
    /// A scheduler following `services` whose checked targets of `down` backends start
    /// unhealthy (backends the datapath marked down before a restart). Later service lists start
    /// new targets healthy again: by then the checks speak for themselves.
    pub(crate) fn seeded(services: &[Service], down: &BTreeSet<SocketAddr>, now: Instant) -> Scheduler {
        let mut scheduler = Scheduler::default();
        scheduler.follow(services, now, down);
        scheduler
    }

    /// Follows a new service list. Targets whose check did not change keep their state and
    /// schedule; a changed check keeps the health state but restarts counting and is run at once;
    /// new targets start healthy with their first check spread over one interval, so a thousand
    /// backends are not all probed in the same millisecond, unless another target (the same
    /// service under a changed VIP, port or protocol, or another service listing the backend)
    /// checks the same backend with the same check: its verdict carries over, so a known-dead
    /// backend does not draw traffic again for `fall` intervals. Backends of services without a
    /// check are unchecked since they first appear so (a backend of weight 0 is checked like any
    /// other).
    pub(crate) fn reconfigure(&mut self, services: &[Service], now: Instant) {
        self.follow(services, now, &BTreeSet::new())
    }

    /// [`Scheduler::reconfigure`], new targets of `down` backends (without a verdict to carry)
    /// starting unhealthy.
    fn follow(&mut self, services: &[Service], now: Instant, down: &BTreeSet<SocketAddr>) {
        let mut wanted: BTreeMap<TargetKey, &HealthCheck> = BTreeMap::new();
        let mut unchecked: BTreeMap<TargetKey, Instant> = BTreeMap::new();
        for service in services {
            let key = ServiceKey::of(service);
            for b in &service.backends {
                let target = (key, SocketAddr::new(b.address, b.port));
                match &service.health {
                    Some(check) => {
                        wanted.entry(target).or_insert(check);
                    }
                    None => {
                        unchecked.entry(target).or_insert_with(|| self.unchecked.get(&target).copied().unwrap_or(now));
                    }
                }
            }
        }
        self.unchecked = unchecked;
        // Verdicts by backend and check, of every target so far, for the new ones.
        let mut known: HashMap<SocketAddr, Vec<Verdict>> = HashMap::new();
        for ((_, backend), t) in &self.targets {
            known.entry(*backend).or_default().push((t.check.clone(), t.state, t.reason.clone(), t.since));
        }
        self.targets.retain(|key, _| wanted.contains_key(key));
        for (key, check) in wanted {
            match self.targets.get_mut(&key) {
                Some(t) if t.check == *check => {}
                Some(t) => {
                    self.epochs += 1;
                    t.check = check.clone();
                    t.state = RiseFall { healthy: t.state.healthy, streak: 0 };
                    t.next_due = now;
                    t.in_flight = false;
                    t.epoch = self.epochs;
                }
                None => {
                    self.epochs += 1;
                    let carried = known.get(&key.1).and_then(|v| v.iter().find(|(c, ..)| c == check));
                    let (state, reason, since) = match carried {
                        Some((_, state, reason, since)) => (RiseFall { streak: 0, ..*state }, reason.clone(), *since),
                        None if down.contains(&key.1) => {
                            let reason = "down when the daemon started (the datapath's backend map)".to_owned();
                            (RiseFall { healthy: false, streak: 0 }, Some(reason), now)
                        }
                        None => (RiseFall::new(), None, now),
                    };
                    let target = Target {
                        check: check.clone(),
                        state,
                        reason,
                        since,
                        next_due: now + first_delay(&key, check.interval_ms),
                        in_flight: false,
                        epoch: self.epochs,
                    };
                    self.targets.insert(key, target);
                }
            }
        }
    }

    /// The checks due at `now`; each is in flight until `record` sees its result.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Probe> {
        let mut due = Vec::new();
        for (key, t) in &mut self.targets {
            if !t.in_flight && t.next_due <= now {
                t.in_flight = true;
                t.next_due = now + interval(&t.check);
                due.push(Probe { key: *key, check: t.check.clone(), epoch: t.epoch });
            }
        }
        due
    }

    /// When `take_due` next has something, if anything is waiting (in-flight checks end by result).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.targets.values().filter(|t| !t.in_flight).map(|t| t.next_due).min()
    }

    /// Takes the result of a probe. Results for a target that is gone, or whose check changed since
    /// the probe started, are dropped. Returns true when the backend's health flipped (at `now`).
    pub(crate) fn record(&mut self, key: &TargetKey, epoch: u64, result: Result<(), String>, now: Instant) -> bool {
        let Some(t) = self.targets.get_mut(key) else { return false };
        if t.epoch != epoch || !t.in_flight {
            return false;
        }
        t.in_flight = false;
        let flipped = t.state.observe(result.is_ok(), t.check.rise, t.check.fall);
        if flipped {
            t.since = now;
            let (service, backend) = key;
            match result {
                Ok(()) => {
                    t.reason = None;
                    tracing::info!(%service, %backend, "backend healthy again after {} good checks", t.check.rise);
                }
                Err(reason) => {
                    tracing::warn!(%service, %backend, %reason, "backend unhealthy after {} failed checks", t.check.fall);
                    t.reason = Some(reason);
                }
            }
        }
        flipped
    }

    pub(crate) fn view(&self) -> HealthView {
        let mut view = HealthView::default();
        for ((service, backend), t) in &self.targets {
            let health = match (&t.reason, t.state.is_healthy()) {
                (_, true) => BackendHealth::Healthy,
                (Some(reason), false) => BackendHealth::Unhealthy { reason: reason.clone() },
                (None, false) => BackendHealth::Unhealthy { reason: "failed checks".to_owned() },
            };
            view.set(*service, *backend, health);
            view.set_since(*service, *backend, t.since);
        }
        for ((service, backend), since) in &self.unchecked {
            view.set_since(*service, *backend, *since);
        }
        view
    }
}

fn interval(check: &HealthCheck) -> Duration {
    Duration::from_millis(u64::from(check.interval_ms.max(1)))
}

/// A stable point within the first interval, derived from the target.
fn first_delay(key: &TargetKey, interval_ms: u32) -> Duration {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_millis(h.finish() % u64::from(interval_ms.max(1)))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ferrule_config::{AnnounceWhen, Backend, HealthKind, Mode, Protocol};

    use super::*;

    fn rise_fall_after(results: &[bool], rise: u32, fall: u32) -> (RiseFall, Vec<bool>) {
        let mut s = RiseFall::new();
        let flips = results.iter().map(|&ok| s.observe(ok, rise, fall)).collect();
        (s, flips)
    }

    #[test]
    fn new_backend_starts_healthy() {
        assert!(RiseFall::new().is_healthy());
    }

    #[test]
    fn turns_unhealthy_after_fall_failures_in_a_row() {
        let (s, flips) = rise_fall_after(&[false, false, false], 2, 3);
        assert!(!s.is_healthy());
        assert_eq!(flips, [false, false, true]);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (s, flips) = rise_fall_after(&[false, false, true, false, false], 2, 3);
        assert!(s.is_healthy());
        assert!(flips.iter().all(|f| !f));
    }

    #[test]
    fn turns_healthy_again_after_rise_successes() {
        let (s, flips) = rise_fall_after(&[false, true, false, true, true], 2, 1);
        assert!(s.is_healthy());
        // fail → down; one success is not enough; a failure resets; two in a row → up.
        assert_eq!(flips, [true, false, false, false, true]);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let (s, flips) = rise_fall_after(&[false, true], 0, 0);
        assert!(s.is_healthy());
        assert_eq!(flips, [true, true]);
    }

    fn check(interval_ms: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            interval_ms,
            timeout_ms: 100,
            rise: 1,
            fall: 2,
            path: None,
            expect_status: None,
        }
    }

    fn service(port: u16, backends: &[u16], health: Option<HealthCheck>) -> Service {
        Service {
            name: format!("svc{port}"),
            vip: "192.0.2.10".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            mode: Mode::Dsr,
            backends: backends
                .iter()
                .map(|&p| Backend { address: "198.51.100.1".parse().unwrap(), port: p, weight: 1 })
                .collect(),
            health,
            announce: AnnounceWhen::Healthy,
            maglev_table_size: 65537,
        }
    }

    fn key(svc_port: u16, backend_port: u16) -> TargetKey {
        let vip: IpAddr = "192.0.2.10".parse().unwrap();
        (
            ServiceKey { vip, port: svc_port, protocol: Protocol::Tcp },
            SocketAddr::new("198.51.100.1".parse().unwrap(), backend_port),
        )
    }

    /// Runs every probe due at `now` with the result `ok(backend port)`.
    fn run_due(s: &mut Scheduler, now: Instant, ok: impl Fn(u16) -> bool) -> usize {
        let probes = s.take_due(now);
        for p in &probes {
            let result = if ok(p.key.1.port()) { Ok(()) } else { Err("connect: refused".to_owned()) };
            s.record(&p.key, p.epoch, result, now);
        }
        probes.len()
    }

    /// Service 80 checking 8080 and 8081 (`check(100)`) from `t0`, after two rounds in which 8081
    /// failed: 8081 is unhealthy, 8080 healthy.
    fn with_8081_dead(t0: Instant) -> Scheduler {
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080, 8081], Some(check(100)))], t0);
        for round in 1..=2u64 {
            run_due(&mut s, t0 + Duration::from_millis(100 * round), |port| port == 8080);
        }
        s
    }

    #[test]
    fn first_checks_spread_over_one_interval() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &(8000..8040).collect::<Vec<_>>(), Some(check(1000)))], t0);
        let first = s.take_due(t0 + Duration::from_millis(499)).len();
        let rest = s.take_due(t0 + Duration::from_millis(999)).len();
        assert_eq!(first + rest, 40, "every target is checked within the first interval");
        assert!(first > 0 && rest > 0, "first checks bunched: {first} then {rest}");
    }

    #[test]
    fn checks_repeat_every_interval_one_at_a_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080], Some(check(100)))], t0);
        let probes = s.take_due(ms(100));
        assert_eq!(probes.len(), 1);
        // Still in flight 250 ms later: no second probe, and nothing to wake up for.
        assert!(s.take_due(ms(350)).is_empty());
        assert_eq!(s.next_deadline(), None);
        s.record(&probes[0].key, probes[0].epoch, Ok(()), ms(350));
        // The probe started at 100 ms, so the next was due at 200 ms: run at once.
        assert_eq!(s.next_deadline(), Some(ms(200)));
        assert_eq!(s.take_due(ms(350)).len(), 1);
    }

    #[test]
    fn view_turns_unhealthy_after_fall_failed_probes_with_reason() {
        let t0 = Instant::now();
        let s = with_8081_dead(t0);
        let view = s.view();
        assert_eq!(view.get(&key(80, 8080).0, key(80, 8080).1), Some(&BackendHealth::Healthy));
        assert_eq!(
            view.get(&key(80, 8081).0, key(80, 8081).1),
            Some(&BackendHealth::Unhealthy { reason: "connect: refused".to_owned() })
        );
    }

    #[test]
    fn a_backend_the_datapath_marked_down_starts_unhealthy_after_a_restart_and_needs_rise_checks() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let rise2 = HealthCheck { rise: 2, ..check(100) };
        let services = [service(80, &[8080, 8081], Some(rise2.clone()))];
        let mut s = Scheduler::seeded(&services, &BTreeSet::from([key(80, 8081).1]), t0);
        let view = s.view();
        assert!(view.is_healthy(&key(80, 8080).0, key(80, 8080).1), "not in the seed: healthy until checked");
        match view.get(&key(80, 8081).0, key(80, 8081).1) {
            Some(BackendHealth::Unhealthy { reason }) => {
                assert!(reason.contains("when the daemon started"), "{reason}")
            }
            other => panic!("the seeded backend starts unhealthy: {other:?}"),
        }
        // One good check is not enough (rise 2), the second is.
        run_due(&mut s, ms(100), |_| true);
        assert!(!s.view().is_healthy(&key(80, 8081).0, key(80, 8081).1));
        run_due(&mut s, ms(200), |_| true);
        assert!(s.view().is_healthy(&key(80, 8081).0, key(80, 8081).1));
        assert_eq!(
            seeded_view(&[service(80, &[8080, 8081], Some(rise2.clone()))], &BTreeSet::from([key(80, 8081).1]), t0),
            view,
            "the channel's initial value is the checker's first view"
        );
        // The seed is for the start only: a service added later starts its targets healthy.
        s.reconfigure(&[service(80, &[8080, 8081], Some(rise2.clone())), service(81, &[8081], Some(rise2))], ms(250));
        assert!(s.view().is_healthy(&key(81, 8081).0, key(81, 8081).1));
    }

    #[test]
    fn reconfigure_keeps_state_of_unchanged_backends() {
        let t0 = Instant::now();
        let mut s = with_8081_dead(t0);
        // A backend is added and the other service appears: 8081 stays unhealthy, the new one starts healthy.
        let t1 = t0 + Duration::from_millis(250);
        s.reconfigure(&[service(80, &[8080, 8081, 8082], Some(check(100))), service(81, &[9000], None)], t1);
        let view = s.view();
        assert!(!view.is_healthy(&key(80, 8081).0, key(80, 8081).1));
        assert!(view.is_healthy(&key(80, 8082).0, key(80, 8082).1));
        assert_eq!(view.len(), 3, "a service without `health` has no targets");
        // Its schedule was kept too: the next check of 8081 is at 300 ms as before.
        let due: Vec<u16> = s.take_due(t0 + Duration::from_millis(300)).iter().map(|p| p.key.1.port()).collect();
        assert!(due.contains(&8080) && due.contains(&8081), "{due:?}");
    }

    #[test]
    fn a_service_whose_vip_or_port_changes_keeps_its_backends_verdicts() {
        let t0 = Instant::now();
        let mut s = with_8081_dead(t0);
        assert!(!s.view().is_healthy(&key(80, 8081).0, key(80, 8081).1));
        // The service moves to port 81 (a new key): 8081 is still known dead, 8080 healthy.
        let t1 = t0 + Duration::from_millis(250);
        s.reconfigure(&[service(81, &[8080, 8081], Some(check(100)))], t1);
        let view = s.view();
        assert_eq!(view.len(), 2);
        assert_eq!(
            view.get(&key(81, 8081).0, key(81, 8081).1),
            Some(&BackendHealth::Unhealthy { reason: "connect: refused".to_owned() })
        );
        assert!(view.is_healthy(&key(81, 8080).0, key(81, 8080).1));
        // With another check the verdict does not carry: it starts healthy, as a new backend.
        let mut other = check(100);
        other.fall = 5;
        s.reconfigure(&[service(82, &[8081], Some(other))], t1);
        assert!(s.view().is_healthy(&key(82, 8081).0, key(82, 8081).1));
    }

    #[test]
    fn a_view_lags_a_service_list_with_a_checked_service_it_has_not_taken_in() {
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080], Some(check(100)))], Instant::now());
        let view = s.view();
        assert!(!view.lags(&[service(80, &[8080], Some(check(100)))]));
        assert!(view.lags(&[service(80, &[8080, 8081], Some(check(100)))]), "a backend added to the service");
        assert!(view.lags(&[service(80, &[8080], Some(check(100))), service(81, &[8080], Some(check(100)))]));
        assert!(!view.lags(&[service(81, &[8080], None)]), "a service without a check has nothing to wait for");
        assert!(HealthView::default().lags(&[service(80, &[8080], Some(check(100)))]));
    }

    #[test]
    fn a_new_service_takes_the_verdict_another_service_has_for_its_backend_under_the_same_check() {
        let t0 = Instant::now();
        let mut s = with_8081_dead(t0);
        // Service 80 stays; service 81 comes with the same backends and check.
        let t1 = t0 + Duration::from_millis(250);
        let both = [service(80, &[8080, 8081], Some(check(100))), service(81, &[8080, 8081], Some(check(100)))];
        s.reconfigure(&both, t1);
        let view = s.view();
        assert!(!view.is_healthy(&key(81, 8081).0, key(81, 8081).1), "known dead through service 80's checks");
        assert!(view.is_healthy(&key(81, 8080).0, key(81, 8080).1));
        assert!(!view.is_healthy(&key(80, 8081).0, key(80, 8081).1), "service 80 keeps its own");
    }

    #[test]
    fn changed_check_drops_result_of_the_old_probe_and_rechecks_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080], Some(check(100)))], t0);
        let old = s.take_due(t0 + Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(120);
        let mut changed = check(100);
        changed.fall = 1;
        s.reconfigure(&[service(80, &[8080], Some(changed))], t1);
        assert!(!s.record(&old[0].key, old[0].epoch, Err("timeout".to_owned()), t1), "stale result ignored");
        let new = s.take_due(t1);
        assert_eq!(new.len(), 1);
        assert!(s.record(&new[0].key, new[0].epoch, Err("timeout".to_owned()), t1), "fall = 1 applies at once");
    }

    #[test]
    fn removed_backend_leaves_view_and_its_result_is_dropped() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080, 8081], Some(check(100)))], t0);
        let probes = s.take_due(t0 + Duration::from_millis(100));
        s.reconfigure(&[service(80, &[8080], Some(check(100)))], t0 + Duration::from_millis(110));
        let gone = probes.iter().find(|p| p.key.1.port() == 8081).unwrap();
        assert!(!s.record(&gone.key, gone.epoch, Err("refused".to_owned()), t0 + Duration::from_millis(120)));
        assert_eq!(s.view().len(), 1);
    }

    #[test]
    fn since_is_when_the_backend_was_added_and_moves_only_when_health_flips() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (up, down) = (key(80, 8080), key(80, 8081));
        let mut s = Scheduler::default();
        s.reconfigure(&[service(80, &[8080, 8081], Some(check(100)))], t0);
        assert_eq!(s.view().since(&up.0, up.1), Some(t0), "healthy since added");
        // check(100) has fall = 2: 8081 turns unhealthy on its second failure, at 200 ms.
        run_due(&mut s, ms(100), |port| port == 8080);
        assert_eq!(s.view().since(&down.0, down.1), Some(t0), "one failure is not a change");
        run_due(&mut s, ms(200), |port| port == 8080);
        let view = s.view();
        assert!(!view.is_healthy(&down.0, down.1));
        assert_eq!(view.since(&down.0, down.1), Some(ms(200)));
        assert_eq!(view.since(&up.0, up.1), Some(t0), "passing checks do not move it");
        // More failures keep the time of the change; rise = 1: one success turns it healthy again.
        run_due(&mut s, ms(300), |port| port == 8080);
        assert_eq!(s.view().since(&down.0, down.1), Some(ms(200)));
        run_due(&mut s, ms(400), |_| true);
        assert_eq!(s.view().since(&down.0, down.1), Some(ms(400)));
        // A changed check keeps the state, and so its time.
        let mut slower = check(200);
        slower.rise = 3;
        s.reconfigure(&[service(80, &[8080, 8081], Some(slower))], ms(450));
        assert_eq!(s.view().since(&down.0, down.1), Some(ms(400)));
    }

    #[test]
    fn unchecked_backends_are_dated_from_when_they_appear_without_a_check() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let b = key(81, 9000);
        let mut s = Scheduler::default();
        s.reconfigure(&[service(81, &[9000], None)], t0);
        let view = s.view();
        assert_eq!((view.since(&b.0, b.1), view.get(&b.0, b.1)), (Some(t0), None), "dated, but no verdict");
        assert!(view.is_empty(), "nothing to check");
        // Reloading the same service keeps the date; another backend gets its own.
        s.reconfigure(&[service(81, &[9000, 9001], None)], ms(500));
        let view = s.view();
        assert_eq!(view.since(&b.0, b.1), Some(t0));
        assert_eq!(view.since(&key(81, 9001).0, key(81, 9001).1), Some(ms(500)));
        // A check added later: healthy from then on; removed again: unchecked from then on.
        s.reconfigure(&[service(81, &[9000], Some(check(100)))], ms(600));
        assert_eq!(s.view().since(&b.0, b.1), Some(ms(600)));
        assert_eq!(s.view().since(&key(81, 9001).0, key(81, 9001).1), None, "gone with its backend");
        s.reconfigure(&[service(81, &[9000], None)], ms(700));
        assert_eq!(s.view().since(&b.0, b.1), Some(ms(700)));
    }

    #[test]
    fn drained_backends_are_still_checked() {
        let t0 = Instant::now();
        let mut drained = service(80, &[8080, 8081], Some(check(100)));
        drained.backends[1].weight = 0;
        let mut s = Scheduler::default();
        s.reconfigure(&[drained], t0);
        let mut due: Vec<u16> = s.take_due(t0 + Duration::from_millis(100)).iter().map(|p| p.key.1.port()).collect();
        due.sort_unstable();
        assert_eq!(due, [8080, 8081]);
    }
}
