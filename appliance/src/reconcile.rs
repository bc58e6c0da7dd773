//! The reconcile loop: level-triggered. On every model change, and on a periodic tick so a missed
//! event or an interface that appears later heals by itself, it plans from (desired, observed) and
//! applies the ops. `plan` is pure; `run` is the thin part that talks to the datapath task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrule_ebpf::UplinkStatus;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::datapath::DatapathHandle;
use crate::metrics::Metrics;
use crate::model::Accepted;
use ferrule_bgp::driver::Speaker;

/// How often the loop re-checks even when nothing changed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// What the daemon has observed of the world after its last pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub uplinks: Vec<UplinkStatus>,
    /// Generation of the config the last pass applied.
    pub applied_generation: Option<u64>,
    /// Generation whose `[bgp]` section the speaker runs; `None` until it accepted one.
    pub bgp_generation: Option<u64>,
    /// Why the speaker refused the last `[bgp]` section (e.g. the listen port is taken).
    pub bgp_error: Option<String>,
    #[serde(skip)]
    pub last_pass: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make the set of interfaces carrying the XDP program exactly this list.
    SetUplinks(Vec<String>),
    /// Give the BGP speaker the model's `[bgp]` section (peers, announcements).
    ConfigureBgp,
}

/// Ops that take `observed` to `desired`. Uplinks that failed to attach are retried every pass.
pub fn plan(desired: &Accepted, observed: &Observed) -> Vec<Op> {
    let wanted = &desired.model.node.uplinks;
    let in_place = observed.uplinks.len() == wanted.len()
        && observed.uplinks.iter().zip(wanted).all(|(seen, name)| seen.attached && &seen.name == name);
    let mut ops = Vec::new();
    if !(in_place && observed.applied_generation.is_some()) {
        ops.push(Op::SetUplinks(wanted.clone()));
    }
    if observed.bgp_generation != Some(desired.generation) {
        ops.push(Op::ConfigureBgp);
    }
    ops
}

pub async fn run(
    mut model_rx: watch::Receiver<Arc<Accepted>>,
    datapath: DatapathHandle,
    speaker: Speaker,
    observed_tx: watch::Sender<Observed>,
    metrics: Metrics,
) {
    let mut previous: Option<Arc<Accepted>> = None;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        let desired = model_rx.borrow_and_update().clone();
        if let Some(prev) = previous.as_ref().filter(|p| p.generation != desired.generation) {
            let diff = ferrule_config::diff(&prev.model, &desired.model);
            info!(generation = desired.generation, origin = %desired.origin, ?diff, "config changed");
        }
        let span = info_span!("reconcile", generation = desired.generation);
        pass(&desired, &datapath, &speaker, &observed_tx, &metrics).instrument(span).await;
        previous = Some(desired);
        tokio::select! {
            changed = model_rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

async fn pass(
    desired: &Accepted,
    datapath: &DatapathHandle,
    speaker: &Speaker,
    observed_tx: &watch::Sender<Observed>,
    metrics: &Metrics,
) {
    metrics.reconcile_passes.inc();
    let mut observed = observed_tx.borrow().clone();
    let mut failed = false;
    for op in plan(desired, &observed) {
        match op {
            Op::SetUplinks(uplinks) => match datapath.set_uplinks(uplinks).await {
                Ok(statuses) => {
                    for status in statuses.iter().filter(|s| !s.attached) {
                        failed = true;
                        warn!(uplink = %status.name, error = status.error.as_deref().unwrap_or("not attached"),
                            "uplink not attached; retrying every {}s", RESYNC_INTERVAL.as_secs());
                    }
                    if observed.uplinks != statuses {
                        info!(uplinks = ?statuses.iter().map(|s| (&s.name, s.attached)).collect::<Vec<_>>(), "uplinks set");
                    }
                    observed.uplinks = statuses;
                }
                Err(err) => {
                    failed = true;
                    warn!(error = %format!("{err:#}"), "datapath unavailable");
                }
            },
            Op::ConfigureBgp => match speaker.set_config(crate::bgp::speaker_config(&desired.model)).await {
                Ok(()) => {
                    observed.bgp_generation = Some(desired.generation);
                    observed.bgp_error = None;
                }
                Err(err) => {
                    failed = true;
                    warn!(error = %err, "BGP configuration not applied; retrying every {}s", RESYNC_INTERVAL.as_secs());
                    observed.bgp_error = Some(err.to_string());
                }
            },
        }
    }
    if failed {
        metrics.reconcile_errors.inc();
    }
    observed.applied_generation = Some(desired.generation);
    observed.last_pass = Some(SystemTime::now());
    observed_tx.send_replace(observed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::InMemoryDatapath;
    use crate::model::Origin;

    fn accepted(uplinks: &[&str], generation: u64) -> Accepted {
        let list = uplinks.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
        // listen_port 0: unit tests run in the host's namespace and must not take port 179.
        let text = format!(
            "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\nuplinks = [{list}]\n[bgp]\nlisten_port = 0\n"
        );
        Accepted {
            model: ferrule_config::parse("t.toml", &text).unwrap(),
            text,
            origin: Origin::File("t.toml".into()),
            generation,
            accepted_at: SystemTime::UNIX_EPOCH,
            resumed: false,
        }
    }

    fn attached(name: &str) -> UplinkStatus {
        UplinkStatus { name: name.into(), ifindex: Some(2), attached: true, mode: Some("native".into()), error: None }
    }

    fn observed(uplinks: Vec<UplinkStatus>, generation: u64) -> Observed {
        Observed {
            uplinks,
            applied_generation: Some(generation),
            bgp_generation: Some(generation),
            bgp_error: None,
            last_pass: None,
        }
    }

    #[test]
    fn first_pass_sets_uplinks_and_bgp() {
        assert_eq!(
            plan(&accepted(&["eth0"], 1), &Observed::default()),
            vec![Op::SetUplinks(vec!["eth0".into()]), Op::ConfigureBgp]
        );
    }

    #[test]
    fn nothing_to_do_when_every_uplink_is_attached_and_bgp_is_current() {
        assert!(plan(&accepted(&["eth0"], 1), &observed(vec![attached("eth0")], 1)).is_empty());
    }

    #[test]
    fn new_generation_reconfigures_bgp_and_a_refused_one_is_retried() {
        let mut seen = observed(vec![attached("eth0")], 1);
        assert_eq!(plan(&accepted(&["eth0"], 2), &seen), vec![Op::ConfigureBgp]);
        seen.bgp_generation = None;
        seen.bgp_error = Some("cannot listen".into());
        assert_eq!(plan(&accepted(&["eth0"], 1), &seen), vec![Op::ConfigureBgp]);
    }

    #[test]
    fn retries_an_uplink_that_failed_to_attach() {
        let mut failed = attached("eth1");
        failed.attached = false;
        let observed = observed(vec![attached("eth0"), failed], 1);
        assert_eq!(
            plan(&accepted(&["eth0", "eth1"], 1), &observed),
            vec![Op::SetUplinks(vec!["eth0".into(), "eth1".into()])]
        );
    }

    #[test]
    fn removed_uplink_is_detached() {
        let observed = observed(vec![attached("eth0"), attached("eth1")], 2);
        assert_eq!(plan(&accepted(&["eth0"], 2), &observed), vec![Op::SetUplinks(vec!["eth0".into()])]);
    }

    #[tokio::test]
    async fn loop_applies_model_changes_to_the_datapath() {
        let datapath =
            DatapathHandle::spawn("/nonexistent".into(), || Ok(InMemoryDatapath::new(&["eth0", "eth1"]))).unwrap();
        let (model_tx, model_rx) = watch::channel(Arc::new(accepted(&["eth0"], 1)));
        let (observed_tx, mut observed_rx) = watch::channel(Observed::default());
        let task = tokio::spawn(run(model_rx, datapath, Speaker::spawn(), observed_tx, Metrics::new()));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(1)).await.unwrap().clone();
        assert_eq!(seen.bgp_generation, Some(1));
        assert_eq!(seen.uplinks, vec![UplinkStatus { ifindex: Some(2), ..attached("eth0") }]);

        model_tx.send_replace(Arc::new(accepted(&["eth1", "eth9"], 2)));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        let names: Vec<_> = seen.uplinks.iter().map(|s| (s.name.as_str(), s.attached)).collect();
        assert_eq!(names, vec![("eth1", true), ("eth9", false)]);
        assert!(seen.uplinks[1].error.as_deref().unwrap().contains("eth9"));
        task.abort();
    }
}
