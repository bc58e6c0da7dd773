//! The reconcile loop: level-triggered. On every model change, every change of backend health,
//! and on a periodic tick so a missed event or an interface that appears later heals by itself, it
//! plans from (desired, observed) and applies the ops. `plan` is pure; `run` is the thin part that
//! talks to the datapath task and the BGP speaker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrule_ebpf::UplinkStatus;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::datapath::DatapathHandle;
use crate::metrics::Metrics;
use crate::model::Accepted;
use ferrule_bgp::driver::{Speaker, SpeakerConfig};
use ferrule_xdp_lb::{HealthView, LbOp, LbState, TableCache};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How often the loop re-checks even when nothing changed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Plans and applies per pass, at most: adopting the maps, installing services, announcing them.
const ROUNDS: usize = 3;

/// What the daemon has observed of the world after its last pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub uplinks: Vec<UplinkStatus>,
    /// Generation of the config the last pass applied.
    pub applied_generation: Option<u64>,
    /// Whether that pass did all the config asks without an error (false: something is retried;
    /// the errors are beside it, or in the log).
    pub applied_complete: bool,
    /// Generation whose `[bgp]` section the speaker runs; `None` until it accepted one.
    pub bgp_generation: Option<u64>,
    /// What the speaker runs (peers and announcements, service VIPs included).
    #[serde(skip)]
    pub bgp_applied: Option<SpeakerConfig>,
    /// Service VIPs announced now (while they have a healthy backend).
    pub announced_vips: Vec<String>,
    /// What the load balancer's maps hold; `None` until read from the (maybe pinned) maps.
    #[serde(skip)]
    pub lb: Option<LbState>,
    /// Outer source addresses given to the datapath (DSR tunnels, NAT).
    pub node_addresses: Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
    /// The SNAT ports given to the datapath.
    pub snat_ports: Option<ferrule_config::PortRange>,
    /// Why the last load-balancer change failed, if it did.
    pub lb_error: Option<String>,
    /// The services whose change the kernel refused in the last write, with why, and those whose
    /// change waited for a refused one; the maps hold for each what they held before (see
    /// `ferrule_xdp_lb::write_isolating`).
    #[serde(skip)]
    pub lb_refused: std::collections::BTreeMap<ferrule_xdp_lb::ServiceKey, String>,
    /// Why the speaker refused the last `[bgp]` section (e.g. the listen port is taken).
    pub bgp_error: Option<String>,
    /// The `[decap]` section the datapath was last given, and what it made of it; `None` until
    /// the first pass of this process (which also removes what a previous run left, if unwanted).
    #[serde(skip)]
    pub decap_applied: Option<ferrule_config::Decap>,
    pub decap: Option<crate::datapath::DecapStatus>,
    /// Why `tc_decap` could not be set up as `[decap]` asks, if it could not.
    pub decap_error: Option<String>,
    #[serde(skip)]
    pub last_pass: Option<SystemTime>,
    /// Passes run so far.
    #[serde(skip)]
    pub passes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make the set of interfaces carrying the XDP program exactly this list.
    SetUplinks(Vec<String>),
    /// Give the BGP speaker the model's `[bgp]` section plus the VIPs to announce.
    ConfigureBgp(Box<SpeakerConfig>),
    /// Read what the load balancer's maps hold (after a restart: adopt it, don't rebuild it).
    AdoptLb,
    /// Change the load balancer's maps (backends, services, Maglev tables), in this order.
    ApplyLb(Vec<LbOp>),
    /// Set the node's addresses used as outer source by DSR and NAT.
    SetNodeAddresses(Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// Set the source ports NAT mode takes; planned first, so that a program attached by the
    /// same pass never runs with the loader's default.
    SetSnatPorts(ferrule_config::PortRange),
    /// Make `tc_decap` match `[decap]` (this node as a DSR backend); empty removes it.
    SetDecap(ferrule_config::Decap),
}

/// Everything the daemon should be doing right now: the model, and what it derives from
/// observed backend health.
pub struct Desired<'a> {
    pub accepted: &'a Accepted,
    pub health: &'a HealthView,
    /// Where a backend is on this node, for `announce = "local"` services ([`local_networks_of`]).
    pub local: &'a [IpNet],
    /// The first global IPv4 and IPv6 addresses of the uplinks, in uplink order.
    pub node_addresses: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// Interfaces named by BGP peers, with the neighbour discovered on each (unnumbered).
    pub links: &'a std::collections::BTreeMap<String, crate::bgp::Link>,
}

impl Desired<'_> {
    /// VIPs (as /32 or /128) with a healthy backend, per each service's `announce` rule, of the
    /// services the load balancer's maps hold with a table (`observed.lb`). A VIP is announced
    /// only once the datapath can take its traffic, and not while a service's install keeps
    /// failing: the pass that installs a service announces it in its next round ([`pass`]); one
    /// removed is withdrawn before its maps entry goes. While the maps cannot be read (`None`;
    /// `pass` reads them before planning and after a failed change) nothing new is announced and
    /// nothing announced is withdrawn but by the config or health.
    pub fn vips(&self, observed: &Observed) -> std::collections::BTreeSet<IpNet> {
        let local = |addr: std::net::IpAddr| self.local.iter().any(|net| net.contains(&addr));
        let installed = observed.lb.as_ref();
        let services = self.accepted.model.services.iter().filter(|s| {
            installed.is_none_or(|lb| match lb.services.get(&ferrule_xdp_lb::ServiceKey::of(s)) {
                Some(entry) => !entry.table.is_empty(),
                // Not in the maps yet, and no install failing: a VIP announced now stays so while
                // this pass installs the service, so that a service moving to another port or
                // protocol does not withdraw its VIP and announce it again a moment later (a
                // flap the ToRs' dampening counts).
                None => {
                    observed.lb_error.is_none() && observed.announced_vips.contains(&IpNet::from(s.vip).to_string())
                }
            })
        });
        let mut vips = ferrule_xdp_lb::vips_to_announce(services, self.health, local);
        if installed.is_none() {
            vips.retain(|vip| observed.announced_vips.contains(&vip.to_string()));
        }
        vips
    }

    pub fn speaker_config(&self, observed: &Observed) -> SpeakerConfig {
        crate::bgp::speaker_config(&self.accepted.model, &self.vips(observed), self.links)
    }
}

/// Marks uplinks and `[decap]` interfaces that `observed` has as attached but the kernel no
/// longer does as not attached (with why), so that [`plan`] attaches them again; returns their
/// names, each once (`uplink NAME` / `decap NAME`).
pub fn forget_detached(observed: &mut Observed, live: &crate::datapath::Attached) -> Vec<String> {
    const GONE: &str = "its link lost the interface (deleted or re-created)";
    let mut gone = Vec::new();
    // An uplink attached with an error is one that has no pinned link to check (aya's netlink
    // fallback on kernels without XDP links): left as it is.
    for uplink in
        observed.uplinks.iter_mut().filter(|u| u.attached && u.error.is_none() && !live.uplinks.contains(&u.name))
    {
        uplink.attached = false;
        uplink.mode = None;
        uplink.error = Some(GONE.to_owned());
        gone.push(format!("uplink {}", uplink.name));
    }
    if let Some(decap) = observed.decap.as_mut() {
        for i in decap.interfaces.iter_mut().filter(|i| i.attached && !live.decap.contains(&i.name)) {
            i.attached = false;
            i.error = Some(GONE.to_owned());
            gone.push(format!("decap {}", i.name));
        }
    }
    gone
}

/// Ops that take `observed` to `desired`. Uplinks that failed to attach are retried every pass.
#[cfg(test)]
pub fn plan(desired: &Desired<'_>, observed: &Observed) -> Vec<Op> {
    plan_with(desired, observed, &mut TableCache::default())
}

/// [`plan`] with the Maglev tables of earlier passes (`cache`), built again only for services
/// whose inputs changed.
pub fn plan_with(desired: &Desired<'_>, observed: &Observed, cache: &mut TableCache) -> Vec<Op> {
    let wanted = &desired.accepted.model.node.uplinks;
    let in_place = observed.uplinks.len() == wanted.len()
        && observed.uplinks.iter().zip(wanted).all(|(seen, name)| seen.attached && &seen.name == name);
    let mut ops = Vec::new();
    let snat_ports = desired.accepted.model.node.snat_ports;
    if observed.snat_ports != Some(snat_ports) {
        ops.push(Op::SetSnatPorts(snat_ports));
    }
    if !(in_place && observed.applied_generation.is_some()) {
        ops.push(Op::SetUplinks(wanted.clone()));
    }
    let speaker = desired.speaker_config(observed);
    if observed.bgp_applied.as_ref() != Some(&speaker) {
        ops.push(Op::ConfigureBgp(Box::new(speaker)));
    }
    if observed.node_addresses != Some(desired.node_addresses) {
        ops.push(Op::SetNodeAddresses(desired.node_addresses.0, desired.node_addresses.1));
    }
    // Interfaces that failed to attach are retried every pass, as uplinks are.
    let decap = &desired.accepted.model.decap;
    let decap_in_place = observed.decap_applied.as_ref() == Some(decap)
        && observed.decap.as_ref().is_none_or(crate::datapath::DecapStatus::all_attached);
    if !decap_in_place {
        ops.push(Op::SetDecap(decap.clone()));
    }
    match &observed.lb {
        None => ops.push(Op::AdoptLb),
        Some(lb) => {
            let lb_ops = ferrule_xdp_lb::plan_with(&desired.accepted.model.services, desired.health, lb, cache);
            if !lb_ops.is_empty() {
                ops.push(Op::ApplyLb(lb_ops));
            }
        }
    }
    ops
}

pub async fn run(
    mut model_rx: watch::Receiver<Arc<Accepted>>,
    mut health_rx: watch::Receiver<HealthView>,
    datapath: DatapathHandle,
    speaker: Speaker,
    observed_tx: watch::Sender<Observed>,
    metrics: Metrics,
) {
    let mut previous: Option<Arc<Accepted>> = None;
    let mut tables = TableCache::default();
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    let mut unnumbered = crate::unnumbered::Links::new();
    let neighbor_changed = unnumbered.changed();
    loop {
        let desired = model_rx.borrow_and_update().clone();
        let mut health = health_rx.borrow_and_update().clone();
        // A checked service the health checker has not taken in yet (new, or its VIP, port or
        // protocol changed) would count every backend healthy, known-dead ones too: give the
        // checker, which follows the same model, a moment to catch up, bounded.
        if health.lags(&desired.model.services) {
            let deadline = tokio::time::Instant::now() + HEALTH_CATCH_UP;
            while health.lags(&desired.model.services) {
                match tokio::time::timeout_at(deadline, health_rx.changed()).await {
                    Ok(Ok(())) => health = health_rx.borrow_and_update().clone(),
                    Ok(Err(_)) => return,
                    Err(_) => {
                        warn!("the health checker has not caught up with the config; planning with what it has");
                        break;
                    }
                }
            }
        }
        if let Some(prev) = previous.as_ref().filter(|p| p.generation != desired.generation) {
            let diff = ferrule_config::diff(&prev.model, &desired.model);
            info!(generation = desired.generation, origin = %desired.origin, ?diff, "config changed");
        }
        let span = info_span!("reconcile", generation = desired.generation);
        let node_addresses = uplink_addresses(&desired.model.node.uplinks);
        let links = unnumbered.update(&desired.model);
        // Uplinks: the configured ones and the interfaces of unnumbered BGP peers.
        let uplinks: BTreeSet<&str> =
            desired.model.node.uplinks.iter().map(String::as_str).chain(links.keys().map(String::as_str)).collect();
        let local = local_networks(&uplinks);
        let want = Desired { accepted: &desired, health: &health, local: &local, node_addresses, links: &links };
        pass(&want, &datapath, &speaker, &observed_tx, &metrics, &mut tables).instrument(span).await;
        previous = Some(desired);
        tokio::select! {
            changed = model_rx.changed() => if changed.is_err() { return },
            changed = health_rx.changed() => if changed.is_err() { return },
            _ = neighbor_changed.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// `install_error` of a service whose change was held back behind a refused one.
const WAITS_FOR_REFUSED: &str = "not written: it waits for a change the kernel refused (see lb_error)";

/// How long a pass waits for the health checker to take in a config's new checked services.
const HEALTH_CATCH_UP: Duration = Duration::from_secs(1);

/// Reads what the load balancer's maps hold into `observed.lb` (after a restart: adopts it, does
/// not rebuild it); false, with the error in `observed.lb_error`, if they cannot be read.
pub async fn adopt_lb(datapath: &DatapathHandle, observed: &mut Observed) -> bool {
    match datapath.lb_state().await {
        Ok(state) => {
            if !state.services.is_empty() {
                info!(
                    services = state.services.len(),
                    backends = state.backends.len(),
                    "load balancer state adopted from the pinned maps"
                );
            }
            observed.lb = Some(state);
            // A refusal of this pass stays reported until a write goes in whole (or nothing is
            // left to write): reading the maps back does not undo it.
            if observed.lb_refused.is_empty() {
                observed.lb_error = None;
            }
            true
        }
        Err(err) => {
            warn!(error = %format!("{err:#}"), "cannot read the load balancer's maps");
            observed.lb_error = Some(format!("{err:#}"));
            false
        }
    }
}

/// The kernel's `ip_local_port_range` (the ports of the node's own outgoing connections), when it
/// overlaps `ports`.
fn local_port_overlap(ports: ferrule_config::PortRange) -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    let (low, high) = (fields.next()??, fields.next()??);
    (low <= ports.last && ports.first <= high).then(|| format!("{low}-{high}"))
}

/// The first global IPv4 and IPv6 address found on the uplinks, in uplink order.
fn uplink_addresses(uplinks: &[String]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return (None, None) };
    let addrs: Vec<(String, IpAddr)> = addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some((ifa.interface_name, ip))
        })
        .collect();
    let mut found = (None, None);
    for uplink in uplinks {
        for (name, ip) in addrs.iter().filter(|(n, _)| n == uplink) {
            match ip {
                IpAddr::V4(a) if !a.is_loopback() && !a.is_link_local() => {
                    found.0.get_or_insert(*a);
                }
                IpAddr::V6(a) if !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 => {
                    found.1.get_or_insert(*a);
                }
                _ => {}
            }
            let _ = name;
        }
    }
    found
}

/// Where a backend counts as on this node for `announce = "local"` services, from the kernel's
/// interface addresses: see [`local_networks_of`].
fn local_networks(uplinks: &BTreeSet<&str>) -> Vec<IpNet> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let addrs = addrs.filter_map(|ifa| {
        let (addr, mask) = (ifa.address?, ifa.netmask?);
        let (ip, len) = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (std::net::IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones())
        } else {
            let (a, m) = (addr.as_sockaddr_in6()?, mask.as_sockaddr_in6()?);
            (std::net::IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones())
        };
        Some((ifa.interface_name, ip, len as u8))
    });
    local_networks_of(addrs, uplinks)
}

/// Each of the node's own addresses (as a host prefix), and the networks of its interfaces other
/// than `uplinks` (bridges, pod and VM networks), link-local ones aside (every IPv6 interface has
/// fe80::/64): a backend in one of these is on this node. An uplink's network is shared with the
/// ToR and, on a shared segment, with other servers, whose backends are not this node's. Uplinks
/// are `node.uplinks` and the interfaces of unnumbered BGP peers: another interface on a shared
/// segment (a management NIC, a numbered peer's link not listed as an uplink) counts as local.
/// (A workload reached only through a host route, as some CNIs give each pod, with no network
/// of the node around it, is not recognised.)
fn local_networks_of(
    addrs: impl IntoIterator<Item = (String, std::net::IpAddr, u8)>,
    uplinks: &BTreeSet<&str>,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (name, ip, len) in addrs {
        out.push(IpNet::from(ip));
        let link_local = match ip {
            std::net::IpAddr::V4(a) => a.is_link_local(),
            std::net::IpAddr::V6(a) => a.is_unicast_link_local(),
        };
        if !link_local && !uplinks.contains(name.as_str()) {
            out.extend(IpNet::new(ip, len).ok().map(|n| n.trunc()));
        }
    }
    out
}

async fn pass(
    want: &Desired<'_>,
    datapath: &DatapathHandle,
    speaker: &Speaker,
    observed_tx: &watch::Sender<Observed>,
    metrics: &Metrics,
    tables: &mut TableCache,
) {
    metrics.reconcile_passes.inc();
    let desired = want.accepted;
    let mut observed = observed_tx.borrow().clone();
    let mut failed = false;
    // What was attached may have lost its interface since (deleted, or deleted and made again):
    // asked of the kernel every pass, so that the plan below attaches it again once it is back.
    match datapath.attached().await {
        Ok(live) => {
            for gone in forget_detached(&mut observed, &live) {
                warn!(interface = %gone, "program no longer attached (interface deleted or re-created); re-attaching");
            }
        }
        Err(err) => {
            // Unchecked: a link that lost its interface would go unnoticed this pass.
            failed = true;
            warn!(error = %format!("{err:#}"), "cannot read which interfaces carry our programs")
        }
    }
    // What the maps hold is read before the first plan: after a restart the VIPs they serve go
    // into the speaker's first configuration, so that the End-of-RIB a graceful restart waits
    // for does not go out without them (the peers would withdraw them until the next round).
    if observed.lb.is_none() {
        failed |= !adopt_lb(datapath, &mut observed).await;
    }
    // Rounds: one that changed what the load balancer's maps hold plans again at once, so that
    // the VIPs of services it installed are announced in this pass, not at the next event.
    // A write the kernel refused part of is not tried again in the same pass (every try rewrites
    // what follows the refused service, ~16 ms per batch): the next pass retries it.
    let mut lb_refused_now = false;
    for _ in 0..ROUNDS {
        let mut ops = plan_with(want, &observed, tables);
        let lb_converged = observed.lb.is_some() && !ops.iter().any(|op| matches!(op, Op::ApplyLb(_)));
        if lb_converged && (!observed.lb_refused.is_empty() || observed.lb_error.is_some()) {
            // The maps (read since any failure) hold what is wanted: what failed is no longer
            // wanted, or went in some other way, and nothing is left to retry.
            observed.lb_refused.clear();
            observed.lb_error = None;
        }
        if lb_refused_now {
            ops.retain(|op| !matches!(op, Op::ApplyLb(_)));
        }
        if ops.is_empty() {
            break;
        }
        let lb_before = observed.lb.clone();
        for op in ops {
            match op {
                // A program attached now would run with the loader's default SNAT ports: links
                // keep what they run (after a restart, the previous program) until they are set.
                Op::SetUplinks(_) if observed.snat_ports.is_none() => {
                    failed = true;
                    warn!("uplinks not (re)attached: the SNAT ports are not set in the datapath yet; retrying");
                }
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
                Op::ConfigureBgp(config) => match speaker.set_config((*config).clone()).await {
                    Ok(()) => {
                        let vips: Vec<String> = want.vips(&observed).iter().map(ToString::to_string).collect();
                        if vips != observed.announced_vips {
                            info!(?vips, "service VIPs announced");
                        }
                        observed.announced_vips = vips;
                        observed.bgp_generation = Some(desired.generation);
                        observed.bgp_applied = Some(*config);
                        observed.bgp_error = None;
                    }
                    Err(err) => {
                        failed = true;
                        warn!(error = %err, "BGP configuration not applied; retrying every {}s", RESYNC_INTERVAL.as_secs());
                        observed.bgp_error = Some(err.to_string());
                    }
                },
                Op::AdoptLb => failed |= !adopt_lb(datapath, &mut observed).await,
                Op::ApplyLb(ops) => {
                    let ops_len = ops.len();
                    // One service the kernel refuses is set aside and the rest written without it
                    // (write_isolating); it is planned, and so retried, again next pass.
                    let state = observed.lb.clone().unwrap_or_default();
                    match datapath.apply_lb(state, ops).await {
                        Ok(written) if written.is_complete() => {
                            info!(ops = ops_len, "load balancer maps updated");
                            observed.lb = Some(written.state);
                            observed.lb_error = None;
                            observed.lb_refused.clear();
                        }
                        Ok(written) => {
                            failed = true;
                            lb_refused_now = true;
                            let error = lb_write_error(&written);
                            warn!(%error, "load balancer maps not fully updated; retrying");
                            observed.lb_error = Some(error);
                            observed.lb_refused =
                                written.failed.iter().map(|(key, err)| (*key, format!("{err:#}"))).collect();
                            // A service whose change waits for a refused one says so too.
                            let waiting = if written.failed.is_empty() { &[][..] } else { &written.held_back[..] };
                            for key in waiting.iter().filter_map(LbOp::service) {
                                observed.lb_refused.entry(key).or_insert_with(|| WAITS_FOR_REFUSED.to_owned());
                            }
                            // Part of a failed batch may have landed: what the maps hold decides
                            // what is announced, so read them back now (unread: see Desired::vips).
                            observed.lb = datapath.lb_state().await.ok();
                        }
                        Err(err) => {
                            failed = true;
                            warn!(error = %format!("{err:#}"), "load balancer maps not updated; retrying");
                            observed.lb_error = Some(format!("{err:#}"));
                            observed.lb_refused.clear();
                            observed.lb = datapath.lb_state().await.ok();
                        }
                    }
                }
                Op::SetDecap(want) => match datapath.set_decap(want.clone()).await {
                    Ok(status) => {
                        for i in status.interfaces.iter().filter(|i| !i.attached) {
                            failed = true;
                            warn!(interface = %i.name, error = i.error.as_deref().unwrap_or("not attached"),
                                "tc_decap not attached; retrying every {}s", RESYNC_INTERVAL.as_secs());
                        }
                        if observed.decap.as_ref() != Some(&status) && !want.is_empty() {
                            info!(interfaces = ?status.interfaces.iter().map(|i| (&i.name, i.attached)).collect::<Vec<_>>(),
                                addresses = ?status.addresses, "tc_decap set");
                        }
                        observed.decap = (!want.is_empty()).then_some(status);
                        observed.decap_applied = Some(want);
                        observed.decap_error = None;
                    }
                    Err(err) => {
                        failed = true;
                        warn!(error = %format!("{err:#}"), "tc_decap not set up; retrying every {}s", RESYNC_INTERVAL.as_secs());
                        observed.decap_error = Some(format!("{err:#}"));
                        observed.decap_applied = None;
                    }
                },
                Op::SetSnatPorts(ports) => match datapath.set_snat_ports(ports).await {
                    Ok(()) => {
                        if observed.snat_ports.is_some() {
                            warn!(%ports, "SNAT ports changed: NAT flows on ports outside them move to new ports (their backends see new connections)");
                        }
                        if let Some(overlap) = local_port_overlap(ports) {
                            warn!(%ports, local_port_range = %overlap, "the SNAT ports overlap the kernel's ip_local_port_range: an outgoing connection of the node to a backend could share a port with a NAT flow; move one of them");
                        }
                        observed.snat_ports = Some(ports);
                    }
                    Err(err) => {
                        failed = true;
                        warn!(error = %format!("{err:#}"), "cannot set the SNAT ports in the datapath");
                    }
                },
                Op::SetNodeAddresses(v4, v6) => match datapath.set_node_addresses(v4, v6).await {
                    Ok(()) => observed.node_addresses = Some((v4, v6)),
                    Err(err) => {
                        failed = true;
                        warn!(error = %format!("{err:#}"), "cannot set the node's addresses in the datapath");
                    }
                },
            }
        }
        if observed.lb == lb_before {
            break;
        }
    }
    if failed {
        metrics.reconcile_errors.inc();
    }
    observed.applied_generation = Some(desired.generation);
    observed.applied_complete = !failed;
    observed.last_pass = Some(SystemTime::now());
    observed.passes += 1;
    observed_tx.send_replace(observed);
}

/// What a write that did not complete left out, for the log and `ferrule show status`: each
/// service the kernel refused with why, what had to wait for them, and a failure of the maps as a
/// whole.
fn lb_write_error(written: &ferrule_xdp_lb::Written<anyhow::Error>) -> String {
    let mut parts: Vec<String> =
        written.failed.iter().map(|(key, err)| format!("service {key} not installed: {err:#}")).collect();
    if !written.held_back.is_empty() && !written.failed.is_empty() {
        parts.push(format!("{} ops waiting for them", written.held_back.len()));
    } else if !written.held_back.is_empty() {
        parts.push(format!(
            "{} ops not written: they contradict what the maps were taken to hold (read again)",
            written.held_back.len()
        ));
    }
    if let Some(err) = &written.stopped {
        parts.push(format!("{err:#}"));
    }
    parts.join("; ")
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

    /// Plans for `accepted` with every backend healthy (an empty health view) and no
    /// connected networks.
    fn plan_for(accepted: &Accepted, observed: &Observed) -> Vec<Op> {
        plan(
            &Desired {
                accepted,
                health: &HealthView::default(),
                local: &[],
                node_addresses: (None, None),
                links: &Default::default(),
            },
            observed,
        )
    }

    fn speaker_of(accepted: &Accepted) -> SpeakerConfig {
        crate::bgp::speaker_config(&accepted.model, &Default::default(), &Default::default())
    }

    fn observed_for(uplinks: Vec<UplinkStatus>, accepted: &Accepted) -> Observed {
        Observed {
            uplinks,
            applied_generation: Some(accepted.generation),
            applied_complete: true,
            bgp_generation: Some(accepted.generation),
            bgp_applied: Some(speaker_of(accepted)),
            announced_vips: Vec::new(),
            lb: Some(LbState::default()),
            node_addresses: Some((None, None)),
            snat_ports: Some(accepted.model.node.snat_ports),
            lb_error: None,
            lb_refused: Default::default(),
            bgp_error: None,
            decap_applied: Some(accepted.model.decap.clone()),
            decap: None,
            decap_error: None,
            last_pass: None,
            passes: 1,
        }
    }

    #[test]
    fn first_pass_sets_uplinks_and_bgp() {
        let a = accepted(&["eth0"], 1);
        assert_eq!(
            plan_for(&a, &Observed::default()),
            vec![
                Op::SetSnatPorts(Default::default()),
                Op::SetUplinks(vec!["eth0".into()]),
                Op::ConfigureBgp(Box::new(speaker_of(&a))),
                Op::SetNodeAddresses(None, None),
                // Without [decap]: removes what a previous run may have left.
                Op::SetDecap(ferrule_config::Decap::default()),
                Op::AdoptLb
            ]
        );
    }

    fn with_decap(generation: u64, interfaces: &[&str]) -> Accepted {
        let a = accepted(&["eth0"], generation);
        let mut model = a.model.clone();
        model.decap = ferrule_config::Decap {
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            addresses: vec!["198.51.100.2".parse().unwrap()],
        };
        Accepted { model, ..a }
    }

    fn decap_status(want: &ferrule_config::Decap, down: &[&str]) -> crate::datapath::DecapStatus {
        let interfaces = want
            .interfaces
            .iter()
            .map(|name| crate::datapath::DecapInterface {
                name: name.clone(),
                attached: !down.contains(&name.as_str()),
                error: down.contains(&name.as_str()).then(|| "no such interface".to_owned()),
            })
            .collect();
        crate::datapath::DecapStatus { interfaces, addresses: want.addresses.clone() }
    }

    #[test]
    fn decap_follows_the_config_and_is_retried_while_an_interface_is_down() {
        let a = accepted(&["eth0"], 1);
        let mut seen = observed_for(vec![attached("eth0")], &a);
        let b = with_decap(2, &["eth0", "eth1"]);
        assert_eq!(plan_for(&b, &seen), vec![Op::SetDecap(b.model.decap.clone())]);

        seen.decap_applied = Some(b.model.decap.clone());
        seen.decap = Some(decap_status(&b.model.decap, &[]));
        assert!(plan_for(&b, &seen).is_empty(), "in place");

        seen.decap = Some(decap_status(&b.model.decap, &["eth1"]));
        assert_eq!(plan_for(&b, &seen), vec![Op::SetDecap(b.model.decap.clone())], "eth1 retried");

        // [decap] removed: tc_decap goes.
        seen.decap = Some(decap_status(&b.model.decap, &[]));
        assert_eq!(plan_for(&a, &seen), vec![Op::SetDecap(ferrule_config::Decap::default())]);
    }

    #[test]
    fn a_link_that_lost_its_interface_is_attached_again() {
        let b = with_decap(2, &["eth1"]);
        let mut seen = observed_for(vec![attached("eth0")], &b);
        seen.decap = Some(decap_status(&b.model.decap, &[]));
        assert!(plan_for(&b, &seen).is_empty(), "in place as remembered");

        // The kernel still has both links on their interfaces: nothing changes.
        let live = crate::datapath::Attached { uplinks: ["eth0".into()].into(), decap: ["eth1".into()].into() };
        assert!(forget_detached(&mut seen, &live).is_empty());
        assert!(plan_for(&b, &seen).is_empty());

        // Both interfaces were deleted (or deleted and made again): their links are attached to
        // nothing, and the next pass attaches the programs again.
        let gone = forget_detached(&mut seen, &crate::datapath::Attached::default());
        assert_eq!(gone, ["uplink eth0", "decap eth1"]);
        assert!(!seen.uplinks[0].attached && seen.uplinks[0].error.as_deref().unwrap().contains("deleted"));
        assert!(!seen.decap.as_ref().unwrap().interfaces[0].attached);
        assert_eq!(plan_for(&b, &seen), vec![Op::SetUplinks(vec!["eth0".into()]), Op::SetDecap(b.model.decap.clone())]);
        // Noticed once: already marked, nothing more to report.
        assert!(forget_detached(&mut seen, &crate::datapath::Attached::default()).is_empty());

        // Attached through netlink (no pinned link to look at): not second-guessed.
        let mut netlink = observed_for(vec![attached("eth0")], &b);
        netlink.uplinks[0].error = Some("attached through netlink, which cannot be pinned".into());
        assert!(forget_detached(&mut netlink, &crate::datapath::Attached::default()).is_empty());
        assert!(netlink.uplinks[0].attached);
    }

    #[test]
    fn nothing_to_do_when_every_uplink_is_attached_and_bgp_is_current() {
        let a = accepted(&["eth0"], 1);
        assert!(plan_for(&a, &observed_for(vec![attached("eth0")], &a)).is_empty());
    }

    #[test]
    fn changed_snat_ports_are_set_before_anything_else() {
        let a = accepted(&["eth0"], 1);
        let observed = observed_for(vec![attached("eth0")], &a);
        let mut model = a.model.clone();
        model.node.snat_ports = ferrule_config::PortRange { first: 20_000, last: 29_999 };
        let b = Accepted { model, ..accepted(&["eth0"], 2) };
        assert_eq!(plan_for(&b, &observed), vec![Op::SetSnatPorts(b.model.node.snat_ports)]);
        // A first pass sets them before it attaches the program.
        assert_eq!(plan_for(&b, &Observed::default())[0], Op::SetSnatPorts(b.model.node.snat_ports));
    }

    #[test]
    fn changed_bgp_section_reconfigures_and_a_refused_one_is_retried() {
        let a = accepted(&["eth0"], 1);
        let mut seen = observed_for(vec![attached("eth0")], &a);
        let b = Accepted {
            model: {
                let mut m = a.model.clone();
                m.node.asn = 65199;
                m
            },
            ..accepted(&["eth0"], 2)
        };
        assert_eq!(plan_for(&b, &seen), vec![Op::ConfigureBgp(Box::new(speaker_of(&b)))]);
        seen.bgp_applied = None;
        seen.bgp_error = Some("cannot listen".into());
        assert_eq!(plan_for(&a, &seen), vec![Op::ConfigureBgp(Box::new(speaker_of(&a)))]);
    }

    fn with_service(generation: u64, announce: &str) -> Accepted {
        let text = format!(
            "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n[bgp]\nlisten_port = 0\n\
             [[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n\
             announce = \"{announce}\"\nbackends = [ {{ address = \"198.51.100.2\", port = 8080 }} ]\n"
        );
        Accepted { model: ferrule_config::parse("t.toml", &text).unwrap(), text, ..accepted(&[], generation) }
    }

    /// `with_service`'s web, and api: the same service on 203.0.113.20.
    fn with_api(generation: u64) -> Accepted {
        let mut accepted = with_service(generation, "healthy");
        let mut api = accepted.model.services[0].clone();
        api.name = "api".into();
        api.vip = "203.0.113.20".parse().unwrap();
        accepted.model.services.push(api);
        accepted
    }

    fn announced(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|op| match op {
                Op::ConfigureBgp(c) => Some(c.announcements.iter().map(|r| r.prefix.to_string()).collect()),
                _ => None,
            })
            .next()
            .unwrap_or_default()
    }

    /// What the maps hold once `a`'s services are installed with every backend healthy.
    fn installed(a: &Accepted) -> Observed {
        let mut lb = LbState::default();
        for op in ferrule_xdp_lb::plan(&a.model.services, &HealthView::default(), &lb) {
            lb.apply(&op).unwrap();
        }
        Observed { lb: Some(lb), ..Default::default() }
    }

    #[test]
    fn vip_is_announced_while_a_backend_is_healthy_and_withdrawn_when_none_is() {
        let a = with_service(1, "healthy");
        let healthy = HealthView::default();
        let ops = plan(
            &Desired {
                accepted: &a,
                health: &healthy,
                local: &[],
                node_addresses: (None, None),
                links: &Default::default(),
            },
            &installed(&a),
        );
        assert_eq!(announced(&ops), ["203.0.113.10/32"]);

        let mut down = HealthView::default();
        let key = ferrule_xdp_lb::ServiceKey::of(&a.model.services[0]);
        down.set(
            key,
            "198.51.100.2:8080".parse().unwrap(),
            ferrule_xdp_lb::BackendHealth::Unhealthy { reason: "refused".into() },
        );
        let vip = ["203.0.113.10/32".parse().unwrap()].into();
        let seen = Observed {
            bgp_applied: Some(crate::bgp::speaker_config(&a.model, &vip, &Default::default())),
            ..installed(&a)
        };
        let ops = plan(
            &Desired {
                accepted: &a,
                health: &down,
                local: &[],
                node_addresses: (None, None),
                links: &Default::default(),
            },
            &seen,
        );
        assert_eq!(announced(&ops), Vec::<String>::new(), "withdrawn when no backend is healthy");
    }

    #[test]
    fn local_means_a_node_address_or_a_network_of_an_interface_that_is_not_an_uplink() {
        let addr = |name: &str, ip: &str, len: u8| (name.to_owned(), ip.parse().unwrap(), len);
        let uplinks = BTreeSet::from(["eth0", "eth1"]);
        let local = local_networks_of(
            [
                addr("eth0", "192.0.2.5", 24),
                addr("eth1", "2001:db8:1::5", 64),
                addr("cni0", "10.244.1.1", 24),
                addr("cni0", "fe80::1", 64),
                addr("lo", "127.0.0.1", 8),
                addr("lo", "203.0.113.10", 32),
            ],
            &uplinks,
        );
        let is_local = |ip: &str| local.iter().any(|n| n.contains(&ip.parse::<std::net::IpAddr>().unwrap()));
        assert!(is_local("192.0.2.5") && is_local("2001:db8:1::5"), "the node's own uplink addresses");
        assert!(!is_local("192.0.2.6") && !is_local("2001:db8:1::6"), "another server on the uplink's segment");
        assert!(is_local("10.244.1.7"), "a pod on the node's bridge");
        assert!(is_local("127.0.0.1") && is_local("203.0.113.10"));
        assert!(!is_local("10.244.2.7"), "a pod of another node");
        assert!(is_local("fe80::1") && !is_local("fe80::2"), "link-local: the node's own address only");
    }

    #[test]
    fn local_announce_needs_the_backend_on_a_connected_network() {
        let a = with_service(1, "local");
        let health = HealthView::default();
        let far = plan(
            &Desired {
                accepted: &a,
                health: &health,
                local: &[],
                node_addresses: (None, None),
                links: &Default::default(),
            },
            &Observed::default(),
        );
        assert!(announced(&far).is_empty());
        let local = ["198.51.100.0/30".parse().unwrap()];
        let near = plan(
            &Desired {
                accepted: &a,
                health: &health,
                local: &local,
                node_addresses: (None, None),
                links: &Default::default(),
            },
            &installed(&a),
        );
        assert_eq!(announced(&near), ["203.0.113.10/32"]);
    }

    #[test]
    fn a_vip_is_announced_only_once_its_service_is_in_the_maps() {
        let a = with_service(1, "healthy");
        let health = HealthView::default();
        let desired = Desired {
            accepted: &a,
            health: &health,
            local: &[],
            node_addresses: (None, None),
            links: &Default::default(),
        };
        // Maps read without the service (not installed yet, or its install failed): not
        // announced, and the plan installs it.
        let ops = plan(&desired, &Observed { lb: Some(LbState::default()), ..Default::default() });
        assert!(announced(&ops).is_empty(), "{ops:?}");
        assert!(ops.iter().any(|op| matches!(op, Op::ApplyLb(_))), "{ops:?}");
        // Maps that could not be read: nothing new is announced, nothing announced is withdrawn.
        assert!(announced(&plan(&desired, &Observed::default())).is_empty());
        let was = Observed { announced_vips: vec!["203.0.113.10/32".into()], ..Default::default() };
        assert_eq!(announced(&plan(&desired, &was)), ["203.0.113.10/32"]);
        // Installed with an empty table (every backend drained or down): not announced either.
        let mut empty = installed(&a);
        for entry in empty.lb.as_mut().unwrap().services.values_mut() {
            entry.table = Arc::new(Vec::new());
        }
        assert!(announced(&plan(&desired, &empty)).is_empty());
        assert_eq!(announced(&plan(&desired, &installed(&a))), ["203.0.113.10/32"]);
    }

    #[test]
    fn a_service_moving_to_another_port_keeps_its_vip_announced_while_it_is_installed() {
        let old = with_service(1, "healthy");
        let text = old.text.replace("port = 80\n", "port = 81\n");
        assert_ne!(text, old.text);
        let moved = Accepted { model: ferrule_config::parse("t.toml", &text).unwrap(), text, ..accepted(&[], 2) };
        let health = HealthView::default();
        let desired = Desired {
            accepted: &moved,
            health: &health,
            local: &[],
            node_addresses: (None, None),
            links: &Default::default(),
        };
        let vips = |o: &Observed| desired.vips(o).iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut observed = installed(&old);
        observed.announced_vips = vec!["203.0.113.10/32".into()];
        assert_eq!(vips(&observed), ["203.0.113.10/32"], "kept while the new port is installed");
        // Once installed it stands on its own.
        let mut done = installed(&moved);
        done.announced_vips = observed.announced_vips.clone();
        assert_eq!(vips(&done), ["203.0.113.10/32"]);
        // An install that fails: withdrawn.
        observed.lb_error = Some("ENOMEM".into());
        assert!(vips(&observed).is_empty());
        // Not announced before: not announced until installed.
        observed.lb_error = None;
        observed.announced_vips.clear();
        assert!(vips(&observed).is_empty());
    }

    #[test]
    fn retries_an_uplink_that_failed_to_attach() {
        let mut failed = attached("eth1");
        failed.attached = false;
        let a = accepted(&["eth0", "eth1"], 1);
        let observed = observed_for(vec![attached("eth0"), failed], &a);
        assert_eq!(plan_for(&a, &observed), vec![Op::SetUplinks(vec!["eth0".into(), "eth1".into()])]);
    }

    #[test]
    fn removed_uplink_is_detached() {
        let a = accepted(&["eth0"], 2);
        let observed = observed_for(vec![attached("eth0"), attached("eth1")], &a);
        assert_eq!(plan_for(&a, &observed), vec![Op::SetUplinks(vec!["eth0".into()])]);
    }

    #[tokio::test]
    async fn loop_applies_model_changes_to_the_datapath() {
        let datapath =
            DatapathHandle::spawn("/nonexistent".into(), || Ok(InMemoryDatapath::new(&["eth0", "eth1"]))).unwrap();
        let (model_tx, model_rx) = watch::channel(Arc::new(accepted(&["eth0"], 1)));
        let (observed_tx, mut observed_rx) = watch::channel(Observed::default());
        let (_health_tx, health_rx) = watch::channel(HealthView::default());
        let task = tokio::spawn(run(model_rx, health_rx, datapath, Speaker::spawn(), observed_tx, Metrics::new()));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(1)).await.unwrap().clone();
        assert_eq!(seen.bgp_generation, Some(1));
        assert_eq!(seen.uplinks, vec![UplinkStatus { ifindex: Some(2), ..attached("eth0") }]);

        assert_eq!(seen.lb, Some(LbState::default()), "the (empty) maps were adopted");

        model_tx.send_replace(Arc::new(accepted(&["eth1", "eth9"], 2)));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        let names: Vec<_> = seen.uplinks.iter().map(|s| (s.name.as_str(), s.attached)).collect();
        assert_eq!(names, vec![("eth1", true), ("eth9", false)]);
        assert!(seen.uplinks[1].error.as_deref().unwrap().contains("eth9"));

        // A service in the model reaches the load balancer's maps: its backend and its table.
        model_tx.send_replace(Arc::new(with_service(3, "healthy")));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(3)).await.unwrap().clone();
        let lb = seen.lb.expect("lb state");
        let entry = lb.services.values().next().expect("the service is installed");
        assert_eq!(entry.table.len(), 65537);
        assert!(entry.table.iter().all(|id| lb.backends.contains_key(id)));
        assert_eq!(seen.announced_vips, ["203.0.113.10/32"]);

        // [decap] reaches the datapath; an interface that is not there is reported, not fatal.
        model_tx.send_replace(Arc::new(with_decap(4, &["eth0", "eth9"])));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(4)).await.unwrap().clone();
        let decap = seen.decap.expect("decap status");
        assert_eq!(decap.addresses, vec!["198.51.100.2".parse::<IpAddr>().unwrap()]);
        let states: Vec<_> = decap.interfaces.iter().map(|i| (i.name.as_str(), i.attached)).collect();
        assert_eq!(states, vec![("eth0", true), ("eth9", false)]);
        assert!(decap.interfaces[1].error.as_deref().unwrap().contains("eth9"));
        task.abort();
    }

    /// An in-memory datapath with eth0, and the switches of its failures.
    fn faulty_datapath() -> (DatapathHandle, Arc<crate::datapath::Faults>) {
        let faults = Arc::new(crate::datapath::Faults::default());
        let shared = faults.clone();
        let datapath = DatapathHandle::spawn("/nonexistent".into(), move || {
            let mut d = InMemoryDatapath::new(&["eth0"]);
            d.faults = shared;
            Ok(d)
        })
        .unwrap();
        (datapath, faults)
    }

    /// The reconciler on an in-memory datapath with eth0 (and the switches of its failures),
    /// its first pass done with `with_service(1, "healthy")` installed and announced.
    async fn running_with_service() -> (
        Arc<crate::datapath::Faults>,
        watch::Sender<Arc<Accepted>>,
        watch::Receiver<Observed>,
        tokio::task::JoinHandle<()>,
        Observed,
    ) {
        let (datapath, faults) = faulty_datapath();
        let (model_tx, model_rx) = watch::channel(Arc::new(with_service(1, "healthy")));
        let (observed_tx, mut observed_rx) = watch::channel(Observed::default());
        let (health_tx, health_rx) = watch::channel(HealthView::default());
        let task = tokio::spawn(async move {
            // The health channel stays open while the reconciler runs.
            let _health = health_tx;
            run(model_rx, health_rx, datapath, Speaker::spawn(), observed_tx, Metrics::new()).await
        });
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(1)).await.unwrap().clone();
        assert_eq!(seen.announced_vips, ["203.0.113.10/32"]);
        assert!(seen.applied_complete, "{seen:?}");
        // The resync interval's first tick is immediate: a second pass follows the first at once.
        // It is let end here, so that what a test counts after a change is that change's pass.
        let seen = observed_rx.wait_for(|o| o.passes >= 2).await.unwrap().clone();
        (faults, model_tx, observed_rx, task, seen)
    }

    /// A service added while the maps can be neither written nor read back is not announced,
    /// and one announced before stays; uplinks are not attached while the SNAT ports cannot be
    /// set (the program would run with the default ones).
    #[tokio::test]
    async fn failed_map_changes_announce_nothing_new_and_unset_snat_ports_attach_nothing() {
        let (faults, model_tx, mut observed_rx, task, _) = running_with_service().await;

        faults.apply_lb.store(true, std::sync::atomic::Ordering::SeqCst);
        faults.lb_state.store(true, std::sync::atomic::Ordering::SeqCst);
        model_tx.send_replace(Arc::new(with_api(2)));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        assert_eq!(seen.announced_vips, ["203.0.113.10/32"], "the new VIP is not announced, the old one stays");
        assert!(seen.lb_error.is_some());
        task.abort();

        // A fresh daemon whose SNAT ports cannot be set attaches nothing.
        let (datapath, faults) = faulty_datapath();
        faults.snat_ports.store(true, std::sync::atomic::Ordering::SeqCst);
        let (_model_tx, model_rx) = watch::channel(Arc::new(accepted(&["eth0"], 1)));
        let (observed_tx, mut observed_rx) = watch::channel(Observed::default());
        let (_health_tx, health_rx) = watch::channel(HealthView::default());
        let task = tokio::spawn(run(model_rx, health_rx, datapath, Speaker::spawn(), observed_tx, Metrics::new()));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(1)).await.unwrap().clone();
        assert!(seen.uplinks.is_empty() && seen.snat_ports.is_none(), "{:?}", seen.uplinks);
        task.abort();
    }

    /// A change the maps refused as a whole stays reported until nothing is left to write: here
    /// the config takes it back.
    #[tokio::test]
    async fn a_failed_change_taken_back_leaves_no_error() {
        let (faults, model_tx, mut observed_rx, task, _) = running_with_service().await;
        faults.apply_lb.store(true, std::sync::atomic::Ordering::SeqCst);
        model_tx.send_replace(Arc::new(with_api(2)));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        assert!(seen.lb_error.as_deref().unwrap_or_default().contains("injected failure"), "{:?}", seen.lb_error);
        assert!(seen.lb_refused.is_empty(), "no one service to blame");
        assert!(!seen.applied_complete, "generation 2 is applied only in part");

        model_tx.send_replace(Arc::new(with_service(3, "healthy")));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(3)).await.unwrap().clone();
        assert_eq!(seen.lb_error, None, "the maps hold what is wanted");
        assert!(seen.applied_complete);

        // A pass that cannot check which interfaces carry the programs is not complete.
        faults.attached.store(true, std::sync::atomic::Ordering::SeqCst);
        model_tx.send_replace(Arc::new(with_service(4, "healthy")));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(4)).await.unwrap().clone();
        assert!(!seen.applied_complete);
        task.abort();
    }

    /// A service whose change has to wait for a refused one (here: it takes the service id the
    /// refused removal frees) says so, and goes in with it.
    #[tokio::test]
    async fn a_service_waiting_for_a_refused_change_says_so() {
        let (faults, model_tx, mut observed_rx, task, _) = running_with_service().await;
        let web = ferrule_xdp_lb::ServiceKey::of(&with_service(1, "healthy").model.services[0]);
        *faults.refuse_service.lock().unwrap() = Some(web);
        let mut model = with_service(2, "healthy").model.clone();
        model.services[0].name = "api".into();
        model.services[0].vip = "203.0.113.20".parse().unwrap();
        let api = ferrule_xdp_lb::ServiceKey::of(&model.services[0]);
        let only_api = Accepted { model, ..with_service(2, "healthy") };
        model_tx.send_replace(Arc::new(only_api.clone()));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        assert!(seen.lb.as_ref().unwrap().services.contains_key(&web), "web's removal was refused");
        assert!(!seen.lb.as_ref().unwrap().services.contains_key(&api), "api would share web's id");
        assert_eq!(seen.lb_refused.get(&api).map(String::as_str), Some(WAITS_FOR_REFUSED));
        assert!(seen.lb_refused[&web].contains("memory"));

        *faults.refuse_service.lock().unwrap() = None;
        model_tx.send_replace(Arc::new(Accepted { generation: 3, ..only_api }));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(3)).await.unwrap().clone();
        assert_eq!(seen.lb.as_ref().unwrap().services.keys().collect::<Vec<_>>(), [&api]);
        assert!(seen.lb_refused.is_empty());
        task.abort();
    }

    /// A service whose install the kernel keeps refusing holds back only itself: a service added
    /// in the same pass is installed and announced, the refused one keeps what the maps hold
    /// (and its VIP), the error names it, and it goes in once the kernel takes it.
    #[tokio::test]
    async fn a_service_the_kernel_refuses_does_not_hold_back_the_others() {
        let (faults, model_tx, mut observed_rx, task, seen) = running_with_service().await;
        let web = ferrule_xdp_lb::ServiceKey::of(&with_service(1, "healthy").model.services[0]);
        let old_web = seen.lb.as_ref().unwrap().services[&web].clone();

        // web gets a second backend and api comes; every write of web fails. web's key sorts
        // first, so its write comes first.
        *faults.refuse_service.lock().unwrap() = Some(web);
        let mut model = with_service(2, "healthy").model.clone();
        model.services[0].backends.push(ferrule_config::Backend {
            address: "198.51.100.3".parse().unwrap(),
            port: 8080,
            weight: 1,
        });
        let mut api = model.services[0].clone();
        api.name = "api".into();
        api.vip = "203.0.113.20".parse().unwrap();
        model.services.push(api.clone());
        let changed = Accepted { model, ..with_service(2, "healthy") };
        let writes = || faults.lb_writes.load(std::sync::atomic::Ordering::SeqCst);
        let before = writes();
        // The maps cannot be read back after the refusal either: the next round adopts them.
        faults.lb_state_once.store(true, std::sync::atomic::Ordering::SeqCst);
        model_tx.send_replace(Arc::new(changed.clone()));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(2)).await.unwrap().clone();
        assert_eq!(writes() - before, 2, "web refused, the rest written without it, and not tried again this pass");
        let lb = seen.lb.as_ref().expect("maps read back");
        assert!(lb.services.contains_key(&ferrule_xdp_lb::ServiceKey::of(&api)), "api is installed");
        assert_eq!(lb.services[&web], old_web, "web keeps its old table");
        assert_eq!(seen.announced_vips, ["203.0.113.10/32", "203.0.113.20/32"]);
        let error = seen.lb_error.as_deref().unwrap_or_default();
        assert!(error.contains("service 203.0.113.10:80/tcp not installed") && error.contains("memory"), "{error}");
        assert_eq!(seen.lb_refused.keys().collect::<Vec<_>>(), [&web]);
        assert!(!faults.lb_state_once.load(std::sync::atomic::Ordering::SeqCst), "the read-back failed once");

        // The config takes web's change back: nothing is left to write, nothing refused.
        let mut reverted = changed.model.clone();
        reverted.services[0].backends.pop();
        model_tx.send_replace(Arc::new(Accepted { model: reverted, generation: 3, ..changed.clone() }));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(3)).await.unwrap().clone();
        assert_eq!((seen.lb_error.as_deref(), seen.lb_refused.len()), (None, 0));
        assert_eq!(seen.lb.as_ref().unwrap().services[&web], old_web);

        // Once the kernel takes it, web goes in.
        *faults.refuse_service.lock().unwrap() = None;
        model_tx.send_replace(Arc::new(Accepted { generation: 4, ..changed }));
        let seen = observed_rx.wait_for(|o| o.applied_generation == Some(4)).await.unwrap().clone();
        let lb = seen.lb.as_ref().unwrap();
        assert_eq!(lb.services[&web].table.iter().collect::<std::collections::BTreeSet<_>>().len(), 2);
        assert_eq!(seen.lb_error, None);
        assert!(seen.lb_refused.is_empty());
        task.abort();
    }
}
