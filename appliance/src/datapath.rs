//! The datapath task: one thread owns the loaded eBPF objects (aya handles are not shared), and the
//! rest of the daemon talks to it over a channel. The [`Datapath`] trait has the real implementation
//! ([`NodeDatapath`]: `ferrule_ebpf::Datapath` plus `tc_decap`) and an in-memory one for tests of
//! everything above it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use ferrule_config::{Mode, Protocol};
use ferrule_ebpf::{DecapEvents, InterfaceStats, LbCounters, LbEvents, UplinkStatus};
use ferrule_xdp_lb::{BackendEntry, LbOp, LbState, ServiceEntry, ServiceKey, WriteStop, Written};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// What the daemon needs from a datapath: uplinks, their counters, and the load balancer's maps.
pub trait Datapath {
    /// Makes the interfaces carrying our XDP program exactly `uplinks`; idempotent.
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus>;
    fn interface_stats(&self) -> Result<Vec<InterfaceStats>>;
    /// What the load balancer's maps hold now (after a restart: what the previous run left).
    fn lb_state(&mut self) -> Result<LbState>;
    /// Writes load-balancer ops in order and stops at the first failure, saying how many ops
    /// went in and, when one op is to blame, which ([`ferrule_xdp_lb::write_isolating`] writes
    /// the rest without it).
    fn write_lb(&mut self, ops: &[LbOp]) -> Result<(), WriteStop<anyhow::Error>>;
    /// Outer source addresses of DSR tunnels and NAT.
    fn set_node_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<()>;
    /// The source ports NAT mode takes (`node.snat_ports`).
    fn set_snat_ports(&mut self, ports: ferrule_config::PortRange) -> Result<()>;
    /// Counters of each service id and backend id asked for.
    fn lb_counters(&mut self, services: &[u32], backends: &[u32]) -> Result<(Vec<LbCounters>, Vec<LbCounters>)>;
    /// The load balancer's node-wide events (`enum fr_lb_event`), summed over CPUs.
    fn lb_events(&self) -> Result<LbEvents>;
    /// Makes `tc_decap` (this node as a DSR backend) run on exactly `want.interfaces` and strip
    /// tunnels to exactly `want.addresses`; an empty `want` removes it. Idempotent.
    fn set_decap(&mut self, want: &ferrule_config::Decap) -> Result<DecapStatus>;
    /// `tc_decap`'s counters, summed over CPUs; `None` while `[decap]` has not set it up.
    fn decap_events(&self) -> Result<Option<DecapEvents>>;
    /// Which interfaces carry our programs now, read from the kernel rather than remembered.
    fn attached(&self) -> Result<Attached>;
}

/// Interfaces whose pinned link runs our program on the interface of that name right now. A link
/// outlives its interface: deleting an interface, or deleting and making it again, leaves a
/// pinned link attached to nothing, which only a check of the kernel notices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// `xdp_lb` on the uplinks.
    pub uplinks: BTreeSet<String>,
    /// `tc_decap` on `[decap]`'s interfaces.
    pub decap: BTreeSet<String>,
}

/// `[decap]` as the datapath has it: per configured interface whether `tc_decap` is attached
/// (and why not), and the addresses whose tunnels it strips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapStatus {
    pub interfaces: Vec<DecapInterface>,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapInterface {
    pub name: String,
    pub attached: bool,
    pub error: Option<String>,
}

impl DecapStatus {
    pub fn all_attached(&self) -> bool {
        self.interfaces.iter().all(|i| i.attached)
    }
}

/// The node's datapath: the XDP load balancer on the uplinks, and `tc_decap` when `[decap]` asks
/// for it (loaded on first use; its maps and links are pinned in the same node directory).
pub struct NodeDatapath {
    xdp: ferrule_ebpf::Datapath,
    bpffs: PathBuf,
    node: String,
    decap: Option<ferrule_ebpf::Decap>,
}

impl NodeDatapath {
    pub fn open_at(bpffs: &std::path::Path, node: &str) -> Result<NodeDatapath> {
        Ok(NodeDatapath {
            xdp: ferrule_ebpf::Datapath::open_at(bpffs, node)?,
            bpffs: bpffs.to_owned(),
            node: node.to_owned(),
            decap: None,
        })
    }
}

fn ebpf_key(key: &ServiceKey) -> ferrule_ebpf::ServiceKey {
    let proto = match key.protocol {
        Protocol::Tcp => ferrule_ebpf::L4Proto::Tcp,
        Protocol::Udp => ferrule_ebpf::L4Proto::Udp,
    };
    ferrule_ebpf::ServiceKey { vip: key.vip, port: key.port, proto }
}

fn ebpf_mode(mode: Mode) -> ferrule_ebpf::LbMode {
    match mode {
        Mode::Dsr => ferrule_ebpf::LbMode::Dsr,
        Mode::Nat => ferrule_ebpf::LbMode::Nat,
    }
}

impl Datapath for NodeDatapath {
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
        self.xdp.set_uplinks(uplinks)
    }

    fn attached(&self) -> Result<Attached> {
        let decap = match &self.decap {
            Some(decap) => decap.links()?.into_iter().filter(|l| l.attached).map(|l| l.interface).collect(),
            None => BTreeSet::new(),
        };
        Ok(Attached { uplinks: self.xdp.attached_uplinks()?, decap })
    }

    fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        Ok(self.xdp.interface_stats()?)
    }

    fn lb_state(&mut self) -> Result<LbState> {
        let lb = self.xdp.lb();
        let mut state = LbState::default();
        for (id, b) in lb.backends()? {
            state.backends.insert(id, BackendEntry { address: b.address, port: b.port, down: b.down });
        }
        for (key, id, mode) in lb.services()? {
            let protocol = match key.proto {
                ferrule_ebpf::L4Proto::Tcp => Protocol::Tcp,
                ferrule_ebpf::L4Proto::Udp => Protocol::Udp,
            };
            let mode = match mode {
                ferrule_ebpf::LbMode::Dsr => Mode::Dsr,
                ferrule_ebpf::LbMode::Nat => Mode::Nat,
            };
            let table = Arc::new(lb.service_table(id)?);
            state
                .services
                .insert(ServiceKey { vip: key.vip, port: key.port, protocol }, ServiceEntry { id, mode, table });
        }
        Ok(state)
    }

    fn write_lb(&mut self, ops: &[LbOp]) -> Result<(), WriteStop<anyhow::Error>> {
        let mut lb = self.xdp.lb();
        // Consecutive service upserts (the plan puts them together) go in as one batch, and so do
        // consecutive removals: a map of maps update waits ~16 ms in the kernel, once per batch
        // instead of once per service. A pending batch is written before any other op, so the
        // order of the ops is kept. `start` is the index of the batch's first op: the ops before
        // it are in.
        struct Batch<'a> {
            start: usize,
            upserts: Vec<ferrule_ebpf::ServiceUpsert<'a>>,
            removals: Vec<ferrule_ebpf::ServiceKey>,
        }
        let flush = |lb: &mut ferrule_ebpf::LbMaps<'_>, batch: &mut Batch<'_>, next: usize| {
            let upserted = lb.upsert_services_blaming(&batch.upserts).map_err(|stop| {
                // The upserts are the ops from `start` on, one each.
                let at = stop.at.map(|i| batch.start + i);
                WriteStop { done: batch.start, at, error: anyhow::Error::new(stop.error) }
            });
            let result = upserted.and_then(|()| {
                // Not one removal to blame: a delete fails only with the map.
                lb.remove_services(&batch.removals).map_err(|e| WriteStop {
                    done: batch.start,
                    at: None,
                    error: anyhow::Error::new(e),
                })
            });
            batch.upserts.clear();
            batch.removals.clear();
            batch.start = next;
            result
        };
        let single = |i: usize| move |e: ferrule_ebpf::EbpfError| WriteStop { done: i, at: Some(i), error: e.into() };
        let mut batch = Batch { start: 0, upserts: Vec::new(), removals: Vec::new() };
        for (i, op) in ops.iter().enumerate() {
            match op {
                LbOp::UpsertService { id, key, mode, table } => {
                    if !batch.removals.is_empty() {
                        flush(&mut lb, &mut batch, i)?;
                    }
                    batch.upserts.push(ferrule_ebpf::ServiceUpsert {
                        key: ebpf_key(key),
                        id: *id,
                        mode: ebpf_mode(*mode),
                        table,
                    })
                }
                LbOp::RemoveService { key, .. } => {
                    if !batch.upserts.is_empty() {
                        flush(&mut lb, &mut batch, i)?;
                    }
                    batch.removals.push(ebpf_key(key))
                }
                LbOp::UpsertBackend { id, address, port, down } => {
                    flush(&mut lb, &mut batch, i)?;
                    let entry = ferrule_ebpf::BackendEntry { address: *address, port: *port, down: *down };
                    lb.upsert_backend(*id, &entry).map_err(single(i))?;
                    batch.start = i + 1;
                }
                LbOp::RemoveBackend { id } => {
                    flush(&mut lb, &mut batch, i)?;
                    lb.remove_backend(*id).map_err(single(i))?;
                    batch.start = i + 1;
                }
            }
        }
        flush(&mut lb, &mut batch, ops.len())?;
        Ok(())
    }

    fn set_node_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<()> {
        Ok(self.xdp.lb().set_node_addresses(v4, v6)?)
    }

    fn set_snat_ports(&mut self, ports: ferrule_config::PortRange) -> Result<()> {
        Ok(self.xdp.lb().set_nat_ports(ports.first..=ports.last)?)
    }

    fn lb_counters(&mut self, services: &[u32], backends: &[u32]) -> Result<(Vec<LbCounters>, Vec<LbCounters>)> {
        let lb = self.xdp.lb();
        let s = services.iter().map(|id| lb.service_counters(*id)).collect::<Result<_, _>>()?;
        let b = backends.iter().map(|id| lb.backend_counters(*id)).collect::<Result<_, _>>()?;
        Ok((s, b))
    }

    fn lb_events(&self) -> Result<LbEvents> {
        Ok(self.xdp.lb_events()?)
    }

    fn decap_events(&self) -> Result<Option<DecapEvents>> {
        Ok(self.decap.as_ref().map(ferrule_ebpf::Decap::events).transpose()?)
    }

    fn set_decap(&mut self, want: &ferrule_config::Decap) -> Result<DecapStatus> {
        if want.is_empty() {
            // Also after a restart with `[decap]` gone from the config: what a previous run
            // pinned is removed (nothing pinned is fine).
            self.decap = None;
            ferrule_ebpf::Decap::remove_at(&self.bpffs, &self.node)?;
            return Ok(DecapStatus::default());
        }
        // A new process attaches its own program on every interface: the link pinned by the
        // previous run is replaced without a gap (tcx runs both for a moment; the second finds no
        // tunnel left to strip).
        let fresh = self.decap.is_none();
        if fresh {
            self.decap = Some(ferrule_ebpf::Decap::open_at(&self.bpffs, &self.node)?);
        }
        let decap = self.decap.as_mut().expect("opened above");
        let have = decap.allowed_addresses()?;
        for addr in want.addresses.iter().filter(|a| !have.contains(a)) {
            decap.allow_address(*addr)?;
        }
        for addr in have.iter().filter(|a| !want.addresses.contains(a)) {
            decap.disallow_address(*addr)?;
        }
        let links = decap.links()?;
        for link in links.iter().filter(|l| !want.interfaces.contains(&l.interface)) {
            decap.detach(&link.interface)?;
        }
        let mut errors = std::collections::HashMap::new();
        for name in &want.interfaces {
            let attached = links.iter().any(|l| &l.interface == name && l.attached);
            if fresh || !attached {
                if let Err(err) = decap.attach(name) {
                    errors.insert(name.clone(), format!("{:#}", anyhow::Error::from(err)));
                }
            }
        }
        let links = decap.links()?;
        let interfaces = want
            .interfaces
            .iter()
            .map(|name| {
                let attached = links.iter().any(|l| &l.interface == name && l.attached);
                let error = errors.remove(name).or_else(|| (!attached).then(|| "not attached".to_owned()));
                DecapInterface { name: name.clone(), attached, error }
            })
            .collect();
        Ok(DecapStatus { interfaces, addresses: decap.allowed_addresses()? })
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    SetUplinks(Vec<String>, oneshot::Sender<Vec<UplinkStatus>>),
    InterfaceStats(Reply<Vec<InterfaceStats>>),
    LbState(Reply<LbState>),
    ApplyLb(LbState, Vec<LbOp>, oneshot::Sender<Written<anyhow::Error>>),
    NodeAddresses(Option<Ipv4Addr>, Option<Ipv6Addr>, Reply<()>),
    SnatPorts(ferrule_config::PortRange, Reply<()>),
    LbCounters(Vec<u32>, Vec<u32>, Reply<(Vec<LbCounters>, Vec<LbCounters>)>),
    LbEvents(Reply<LbEvents>),
    SetDecap(ferrule_config::Decap, Reply<DecapStatus>),
    DecapEvents(Reply<Option<DecapEvents>>),
    Attached(Reply<Attached>),
}

/// A cheap, cloneable handle to the datapath thread.
#[derive(Clone)]
pub struct DatapathHandle {
    tx: mpsc::Sender<Command>,
    pin_dir: PathBuf,
}

impl DatapathHandle {
    /// Starts the datapath thread; `open` runs on it, and its error is returned here.
    pub fn spawn<D, F>(pin_dir: PathBuf, open: F) -> Result<DatapathHandle>
    where
        D: Datapath + 'static,
        F: FnOnce() -> Result<D> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Command>(16);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || {
                let mut datapath = match open() {
                    Ok(datapath) => {
                        let _ = ready_tx.send(Ok(()));
                        datapath
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // Ends when every handle is dropped; the loaded objects are then dropped without
                // unpinning, so pinned programs, links and maps keep forwarding.
                while let Some(command) = rx.blocking_recv() {
                    match command {
                        Command::SetUplinks(uplinks, reply) => {
                            let _ = reply.send(datapath.set_uplinks(&uplinks));
                        }
                        Command::InterfaceStats(reply) => {
                            let _ = reply.send(datapath.interface_stats());
                        }
                        Command::LbState(reply) => {
                            let _ = reply.send(datapath.lb_state());
                        }
                        Command::ApplyLb(state, ops, reply) => {
                            let written = ferrule_xdp_lb::write_isolating(&state, &ops, |ops| datapath.write_lb(ops));
                            let _ = reply.send(written);
                        }
                        Command::NodeAddresses(v4, v6, reply) => {
                            let _ = reply.send(datapath.set_node_addresses(v4, v6));
                        }
                        Command::SnatPorts(ports, reply) => {
                            let _ = reply.send(datapath.set_snat_ports(ports));
                        }
                        Command::LbCounters(services, backends, reply) => {
                            let _ = reply.send(datapath.lb_counters(&services, &backends));
                        }
                        Command::LbEvents(reply) => {
                            let _ = reply.send(datapath.lb_events());
                        }
                        Command::SetDecap(want, reply) => {
                            let _ = reply.send(datapath.set_decap(&want));
                        }
                        Command::DecapEvents(reply) => {
                            let _ = reply.send(datapath.decap_events());
                        }
                        Command::Attached(reply) => {
                            let _ = reply.send(datapath.attached());
                        }
                    }
                }
            })
            .context("starting the datapath thread")?;
        ready_rx.recv().map_err(|_| anyhow!("the datapath thread ended while loading"))??;
        Ok(DatapathHandle { tx, pin_dir })
    }

    pub fn pin_dir(&self) -> &PathBuf {
        &self.pin_dir
    }

    pub async fn set_uplinks(&self, uplinks: Vec<String>) -> Result<Vec<UplinkStatus>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::SetUplinks(uplinks, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::InterfaceStats(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn lb_state(&self) -> Result<LbState> {
        self.ask(Command::LbState).await
    }

    /// Writes `ops`, planned for maps holding `state`, setting aside each service whose write
    /// fails ([`ferrule_xdp_lb::write_isolating`]); `Err` only when the datapath thread is gone.
    pub async fn apply_lb(&self, state: LbState, ops: Vec<LbOp>) -> Result<Written<anyhow::Error>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::ApplyLb(state, ops, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn set_node_addresses(&self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<()> {
        self.ask(|reply| Command::NodeAddresses(v4, v6, reply)).await
    }

    pub async fn set_snat_ports(&self, ports: ferrule_config::PortRange) -> Result<()> {
        self.ask(|reply| Command::SnatPorts(ports, reply)).await
    }

    pub async fn lb_counters(
        &self,
        services: Vec<u32>,
        backends: Vec<u32>,
    ) -> Result<(Vec<LbCounters>, Vec<LbCounters>)> {
        self.ask(|reply| Command::LbCounters(services, backends, reply)).await
    }

    pub async fn lb_events(&self) -> Result<LbEvents> {
        self.ask(Command::LbEvents).await
    }

    pub async fn set_decap(&self, want: ferrule_config::Decap) -> Result<DecapStatus> {
        self.ask(|reply| Command::SetDecap(want, reply)).await
    }

    pub async fn decap_events(&self) -> Result<Option<DecapEvents>> {
        self.ask(Command::DecapEvents).await
    }

    pub async fn attached(&self) -> Result<Attached> {
        self.ask(Command::Attached).await
    }
}

fn gone() -> anyhow::Error {
    anyhow!("the datapath thread has stopped")
}

/// An in-memory datapath for tests: interfaces listed in `existing` attach, others report an error,
/// every attached interface counts one packet of 100 bytes per stats read, and the load balancer's
/// node-wide events are whatever the test puts in `events` (`None`: its maps cannot be read).
#[cfg(test)]
pub struct InMemoryDatapath {
    pub existing: Vec<String>,
    attached: Vec<String>,
    reads: std::cell::Cell<u64>,
    /// The load balancer's maps, with the consistency checks of `LbState::apply`.
    lb: LbState,
    pub events: Option<LbEvents>,
    /// What `decap_events` answers.
    pub decap_events: Option<DecapEvents>,
    /// The interfaces the last `set_decap` attached.
    decap_attached: Vec<String>,
    /// Failures a test switches on while the datapath thread runs.
    pub faults: std::sync::Arc<Faults>,
}

/// Calls of [`InMemoryDatapath`] that fail while set.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Faults {
    pub apply_lb: std::sync::atomic::AtomicBool,
    /// Every op on this service fails, as a kernel out of memory for its table would.
    pub refuse_service: std::sync::Mutex<Option<ServiceKey>>,
    /// The next `lb_state` fails (once).
    pub lb_state_once: std::sync::atomic::AtomicBool,
    /// Calls of `write_lb` so far (not a fault: what the test counts).
    pub lb_writes: std::sync::atomic::AtomicUsize,
    pub lb_state: std::sync::atomic::AtomicBool,
    pub snat_ports: std::sync::atomic::AtomicBool,
    pub attached: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Faults {
    fn check(flag: &std::sync::atomic::AtomicBool, what: &str) -> Result<()> {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(anyhow!("{what}: injected failure"));
        }
        Ok(())
    }
}

#[cfg(test)]
impl InMemoryDatapath {
    pub fn new(existing: &[&str]) -> Self {
        InMemoryDatapath {
            existing: existing.iter().map(|s| s.to_string()).collect(),
            attached: Vec::new(),
            reads: std::cell::Cell::new(0),
            lb: LbState::default(),
            events: Some(LbEvents::default()),
            decap_events: None,
            decap_attached: Vec::new(),
            faults: Default::default(),
        }
    }
}

#[cfg(test)]
impl Datapath for InMemoryDatapath {
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
        self.attached = uplinks.iter().filter(|u| self.existing.contains(u)).cloned().collect();
        uplinks
            .iter()
            .map(|name| {
                let index = self.existing.iter().position(|e| e == name);
                UplinkStatus {
                    name: name.clone(),
                    ifindex: index.map(|i| i as u32 + 2),
                    attached: index.is_some(),
                    mode: index.map(|_| "native".to_string()),
                    error: index.is_none().then(|| format!("no interface named {name}")),
                }
            })
            .collect()
    }

    fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        self.reads.set(self.reads.get() + 1);
        Ok(self
            .attached
            .iter()
            .map(|name| InterfaceStats {
                ifindex: self.existing.iter().position(|e| e == name).unwrap() as u32 + 2,
                name: Some(name.clone()),
                packets: self.reads.get(),
                bytes: self.reads.get() * 100,
            })
            .collect())
    }

    fn lb_state(&mut self) -> Result<LbState> {
        Faults::check(&self.faults.lb_state, "reading the maps")?;
        if self.faults.lb_state_once.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(anyhow!("reading the maps: injected failure (once)"));
        }
        Ok(self.lb.clone())
    }

    fn write_lb(&mut self, ops: &[LbOp]) -> Result<(), WriteStop<anyhow::Error>> {
        self.faults.lb_writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Faults::check(&self.faults.apply_lb, "writing the maps").map_err(|error| WriteStop {
            done: 0,
            at: None,
            error,
        })?;
        let refused = *self.faults.refuse_service.lock().unwrap();
        for (i, op) in ops.iter().enumerate() {
            if op.service().is_some() && op.service() == refused {
                return Err(WriteStop { done: i, at: Some(i), error: anyhow!("fr_lb_tables: Cannot allocate memory") });
            }
            self.lb.apply(op).map_err(|e| WriteStop { done: i, at: Some(i), error: anyhow!("{e:?}") })?;
        }
        Ok(())
    }

    fn set_node_addresses(&mut self, _v4: Option<Ipv4Addr>, _v6: Option<Ipv6Addr>) -> Result<()> {
        Ok(())
    }

    fn set_snat_ports(&mut self, _ports: ferrule_config::PortRange) -> Result<()> {
        Faults::check(&self.faults.snat_ports, "setting the SNAT ports")
    }

    fn lb_counters(&mut self, services: &[u32], backends: &[u32]) -> Result<(Vec<LbCounters>, Vec<LbCounters>)> {
        Ok((vec![LbCounters::default(); services.len()], vec![LbCounters::default(); backends.len()]))
    }

    fn lb_events(&self) -> Result<LbEvents> {
        self.events.ok_or_else(|| anyhow!("the embedded object xdp_lb.bpf.o has no map `fr_lb_events`"))
    }

    /// Interfaces in `existing` attach, others report an error.
    fn set_decap(&mut self, want: &ferrule_config::Decap) -> Result<DecapStatus> {
        self.decap_attached = want.interfaces.iter().filter(|i| self.existing.contains(i)).cloned().collect();
        let interfaces = want
            .interfaces
            .iter()
            .map(|name| {
                let attached = self.existing.contains(name);
                let error = (!attached).then(|| format!("no interface named {name}"));
                DecapInterface { name: name.clone(), attached, error }
            })
            .collect();
        Ok(DecapStatus { interfaces, addresses: want.addresses.clone() })
    }

    fn decap_events(&self) -> Result<Option<DecapEvents>> {
        Ok(self.decap_events)
    }

    /// What was attached and is still in `existing` (a test removes a name to delete it).
    fn attached(&self) -> Result<Attached> {
        Faults::check(&self.faults.attached, "reading which interfaces carry our programs")?;
        let live = |names: &[String]| names.iter().filter(|n| self.existing.contains(n)).cloned().collect();
        Ok(Attached { uplinks: live(&self.attached), decap: live(&self.decap_attached) })
    }
}

#[cfg(test)]
mod limits {
    /// Config validation bounds what reaches the datapath by its own constants (the config crate
    /// does not depend on the eBPF one): a config it accepts is one the maps can hold.
    #[test]
    fn config_limits_fit_the_datapath() {
        use ferrule_ebpf::abi;
        assert!(ferrule_config::MAX_MAGLEV_TABLE_SIZE as usize <= ferrule_ebpf::MAX_TABLE_SIZE);
        // The largest prime within it, not one far below.
        assert!(ferrule_ebpf::MAX_TABLE_SIZE - (ferrule_config::MAX_MAGLEV_TABLE_SIZE as usize) < 16);
        assert_eq!(ferrule_config::MAX_SERVICES, abi::LB_MAX_SERVICES as usize);
        // Backend ids are 1..LB_MAX_BACKENDS-1, and a reload may need the old and new sets at once.
        assert!(2 * ferrule_config::MAX_BACKENDS < abi::LB_MAX_BACKENDS as usize);
    }
}
