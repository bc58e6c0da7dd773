//! The speaker task: owns the RIB and the table of peer tasks, applies configuration changes
//! (peers added, removed or changed; announcements), decodes accepted UPDATEs into the RIB,
//! exports the node's own routes to every established peer, publishes the forwarding table
//! for the kernel-route installer ([`Speaker::fib`]) and answers `show` queries.
//! It never reads a socket itself (peer tasks and the listener do), nor writes a kernel route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::auth::{Md5, Md5Key, Md5Target};
use super::fib::{is_link_local, Fib};
use super::peer::{PeerAddressing, PeerCmd, PeerEvent, PeerKey, PeerStatus, PeerTask};
use crate::bfd::{Bfd, BfdPeer, BfdStatus, BfdSummary};
use crate::policy::{ExportPolicy, ImportPolicy, MaxPrefixAction};
use crate::rib::{ExportSession, LocalRoute, PeerId, PeerInfo, PrefixView, Rib, RibConfig, RouteChange, Source};
use crate::session::{DownReason, GracefulRestartConfig, Negotiated, Session, SessionConfig, State};
use crate::wire::{decode_message, DecodeOptions, Family, Message, NextHop, Prefix};

/// What the speaker should be doing: the node's identity, its peers and its announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    /// TCP port for the peers' connections; 0 = accept none.
    pub listen_port: u16,
    /// Keep a forwarding table of the accepted routes for the kernel-route installer. Off, the
    /// speaker keeps no FIB at all (half the memory of a full table) and publishes an empty one.
    pub install_routes: bool,
    pub peers: Vec<PeerConfig>,
    /// Ranges accepting dynamic neighbors (route server for VMs and legacy hosts).
    pub listen: Vec<ListenRange>,
    pub announcements: Vec<LocalRoute>,
    /// Peers with graceful restart that the configuration has but cannot give the speaker yet
    /// (an unnumbered peer before its link-local address is found), by name: our own restart
    /// waits for them too (up to its restart time), as for a configured peer not yet up.
    pub awaiting_peers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// The interface of a link-local `address` (its scope id); `None` for global addresses.
    pub ifindex: Option<u32>,
    pub port: u16,
    pub asn: u32,
    pub passive: bool,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub import: ImportPolicy,
    /// TCP MD5 key (RFC 2385); needs the speaker's [`SpeakerOptions::md5`].
    pub md5: Option<Md5Key>,
    /// Graceful restart (RFC 4724): the restart time we advertise, in seconds. Enables both
    /// helper mode (the peer's routes stay, stale, while it restarts) and our own restart.
    pub graceful_restart: Option<u16>,
    /// Single-hop BFD with this interval and multiplier; its failure takes the session down.
    pub bfd: Option<BfdConfig>,
}

impl PeerConfig {
    /// The peer's key in the speaker: its address, and the interface of a link-local one.
    pub fn key(&self) -> PeerKey {
        PeerKey::new(self.address, self.ifindex)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    pub interval: Duration,
    pub multiplier: u8,
}

/// Sessions accepted from any address in `prefix`, each configured from `template` (its
/// `address` and `passive` are ignored: such a peer is the connecting address, passive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRange {
    pub prefix: Prefix,
    /// At most this many sessions from the range at once.
    pub limit: u32,
    pub template: PeerConfig,
}

/// What stays fixed for the speaker's lifetime.
#[derive(Clone, Default)]
pub struct SpeakerOptions {
    /// Sets TCP MD5 keys (the daemon passes one built on `ferrule_ebpf::sockopt`). Without it,
    /// a configuration with a password is refused.
    pub md5: Md5,
    /// This process is a graceful restart of one that kept the forwarding state (kernel routes,
    /// pinned datapath): sessions advertise the Restarting and Forwarding-preserved bits, and the
    /// published FIB stays deferred (the installer deletes nothing) until every peer with
    /// graceful restart has sent End-of-RIB for its families, or this long has passed.
    pub restarting: Option<Duration>,
}

/// How long routes of a peer that came back after a restart may stay stale without being
/// refreshed or confirmed by its End-of-RIB (FRR's and BIRD's default stale-path time).
const STALE_PATH_TIME: Duration = Duration::from_secs(360);

/// The families the speaker carries.
const FAMILIES: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot listen for BGP on port {port}: {source}; set [bgp] listen_port to a free port, or 0 to accept no incoming sessions")]
    Listen { port: u16, source: std::io::Error },
    #[error("peer {peer}: {source}")]
    Peer { peer: PeerKey, source: crate::session::ConfigError },
    #[error("peer {peer}: a TCP MD5 password is set but this speaker cannot set MD5 keys")]
    Md5Unavailable { peer: IpAddr },
    #[error("{0}")]
    Bfd(#[from] crate::bfd::BfdError),
    #[error("cannot set the TCP MD5 key for {target} on the BGP listening socket: {source}")]
    Md5 { target: IpAddr, source: std::io::Error },
    #[error("the BGP speaker task has stopped")]
    Gone,
}

/// One neighbor as `show bgp summary` prints it. JSON keys are documented in the README.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NeighborSummary {
    pub address: IpAddr,
    /// The interface of a link-local neighbor (unnumbered peering), as `show` prints `fe80::…%eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub asn: u32,
    pub state: String,
    /// Seconds in Established, when up.
    pub uptime_s: Option<u64>,
    /// Prefixes the peer announced (accepted or not) since it was first seen.
    pub received: u64,
    /// Prefixes in its Adj-RIB-In now (after import policy).
    pub accepted: u64,
    /// Prefixes import policy refused.
    pub rejected: u64,
    /// Prefixes in its Adj-RIB-Out now.
    pub sent: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Bytes queued for the peer whose write into its socket has not finished (FRR's OutQ, in
    /// bytes).
    #[serde(default)]
    pub out_queue: u64,
    /// Times the session left Established.
    pub flaps: u64,
    pub hold_time: Option<u16>,
    /// A neighbor accepted from a `[[bgp.listen]]` range (the range), not configured by address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<String>,
    /// Graceful restart negotiated with this peer (both sides advertised it).
    #[serde(default)]
    pub graceful_restart: bool,
    /// Paths from this peer kept stale by graceful restart, waiting for its End-of-RIB.
    #[serde(default)]
    pub stale: u64,
    /// The peer's BFD session state (`Up`, `Down`, `Init`, `AdminDown`), when BFD is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    pub families: Vec<String>,
    pub last_error: Option<String>,
}

/// One prefix with every path, for `show bgp routes`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: String,
    pub paths: Vec<PathEntry>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PathEntry {
    /// `local` for the node's own announcement, else the peer's address (`fe80::1%eth0` for a
    /// link-local one).
    pub from: String,
    pub next_hop: Option<String>,
    pub as_path: String,
    pub origin: String,
    pub med: Option<u32>,
    pub local_pref: u32,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub best: bool,
    pub multipath: bool,
    pub stale: bool,
    pub age_s: u64,
}

/// Which routes a `routes` query wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteQuery {
    All,
    /// Exactly this prefix.
    Prefix(Prefix),
    /// The longest prefix containing this address.
    Address(IpAddr),
}

enum Command {
    SetConfig(Box<SpeakerConfig>, oneshot::Sender<Result<(), SpeakerError>>),
    Summary(oneshot::Sender<Vec<NeighborSummary>>),
    Routes(RouteQuery, oneshot::Sender<Vec<RouteEntry>>),
    Shutdown { restart: bool, done: oneshot::Sender<()> },
    Bfd(oneshot::Sender<Vec<BfdSummary>>),
}

/// Handle to the speaker task. Dropping every handle stops the speaker and its peers (each
/// sends Cease / Administrative Shutdown).
#[derive(Clone)]
pub struct Speaker {
    tx: mpsc::Sender<Command>,
    fib: watch::Receiver<Arc<Fib>>,
}

impl Speaker {
    /// Starts an idle speaker (no peers) on the current tokio runtime.
    pub fn spawn() -> Speaker {
        Speaker::spawn_with(SpeakerOptions::default())
    }

    /// [`Speaker::spawn`] with MD5 support or as a graceful restart.
    pub fn spawn_with(options: SpeakerOptions) -> Speaker {
        let (tx, rx) = mpsc::channel(16);
        let mut initial = Fib::new();
        initial.set_deferred(options.restarting.is_some());
        let (fib_tx, fib) = watch::channel(Arc::new(initial));
        tokio::spawn(SpeakerTask::new(fib_tx, options).run(rx));
        Speaker { tx, fib }
    }

    /// Stops every session and the speaker. `restart: false` is an orderly shutdown (Cease /
    /// Administrative Shutdown to every peer: they withdraw our routes at once). `restart: true`
    /// closes the connections without a NOTIFICATION, so that peers with graceful restart keep
    /// our routes for the restart time while the next process comes up.
    pub async fn shutdown(&self, restart: bool) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { restart, done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The forwarding table to install: every Loc-RIB best path learned from a peer with its
    /// ECMP next hops. Level-triggered: a receiver sees the latest table, not every step.
    pub fn fib(&self) -> watch::Receiver<Arc<Fib>> {
        self.fib.clone()
    }

    /// Applies a whole configuration (level-triggered). Peers whose settings did not change keep
    /// their sessions.
    pub async fn set_config(&self, config: SpeakerConfig) -> Result<(), SpeakerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::SetConfig(Box::new(config), reply)).await.map_err(|_| SpeakerError::Gone)?;
        rx.await.map_err(|_| SpeakerError::Gone)?
    }

    pub async fn summary(&self) -> Result<Vec<NeighborSummary>, SpeakerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Summary(reply)).await.map_err(|_| SpeakerError::Gone)?;
        rx.await.map_err(|_| SpeakerError::Gone)
    }

    /// The BFD sessions of the peers that have BFD configured.
    pub async fn bfd_sessions(&self) -> Result<Vec<BfdSummary>, SpeakerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Bfd(reply)).await.map_err(|_| SpeakerError::Gone)?;
        rx.await.map_err(|_| SpeakerError::Gone)
    }

    pub async fn routes(&self, query: RouteQuery) -> Result<Vec<RouteEntry>, SpeakerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Routes(query, reply)).await.map_err(|_| SpeakerError::Gone)?;
        rx.await.map_err(|_| SpeakerError::Gone)
    }
}

struct PeerSlot {
    id: PeerId,
    config: PeerConfig,
    cmd: mpsc::Sender<PeerCmd>,
    status: watch::Receiver<PeerStatus>,
    task: JoinHandle<()>,
    /// The RIB knows the peer as up (between Established and Down).
    up: bool,
    /// For ROUTE-REFRESH: how the session was registered with the RIB.
    registered: Option<(PeerInfo, ExportSession, Negotiated)>,
    /// The interface holding the session's local address: link-local next hops learned on
    /// this session are reachable only through it.
    ifindex: Option<u32>,
    /// Accepted from this listen range (removed when its session ends).
    dynamic: Option<Prefix>,
    /// Graceful restart helper: the peer's session dropped and its routes are kept stale
    /// until this time (its restart time, then the stale-path time once it is back).
    stale_until: Option<Instant>,
    /// Families whose stale routes wait for the peer's End-of-RIB.
    stale_families: BTreeSet<Family>,
    /// The peer's BFD session, for `show`.
    bfd: Option<watch::Receiver<BfdStatus>>,
    /// Bytes queued for the peer, not yet written into its socket ([`PeerTask::unsent`]).
    unsent: Arc<AtomicUsize>,
    /// Route changes wait while `unsent` is above [`OUT_QUEUE_HIGH`]: the peer gets their net
    /// effect once it has read, instead of every step queued in our memory.
    export_deferred: bool,
    /// The session's first export (its whole table and End-of-RIB) has been queued. Until then
    /// nothing waits: bytes a replaced connection still holds are not this session's.
    first_export_done: bool,
}

/// Bytes queued for a peer above which its UPDATEs wait (the Adj-RIB-Out keeps what it was last
/// sent, so what changes meanwhile is sent as one difference later). A session's first
/// announcement, of any size, always goes at once. A soft limit: an export handed to the peer
/// task is counted when the task queues it for the socket.
#[cfg(not(test))]
const OUT_QUEUE_HIGH: usize = 1 << 20;
/// Lower in unit tests, so that a table a debug build encodes quickly is above it.
#[cfg(test)]
const OUT_QUEUE_HIGH: usize = 64 << 10;
/// How often deferred exports look again.
const EXPORT_RETRY: Duration = Duration::from_millis(100);

/// Our own graceful restart, while it converges.
struct Restarting {
    /// Deferral ends at the latest here.
    until: Instant,
    /// Peers (with graceful restart) whose End-of-RIB we still wait for, per family; filled
    /// when each session comes up.
    waiting: BTreeMap<PeerKey, BTreeSet<Family>>,
    /// Configured peers with graceful restart that have not come up yet.
    not_up: BTreeSet<PeerKey>,
    /// Peers that came up during the restart (waited for once, whatever happens next).
    seen: BTreeSet<PeerKey>,
    /// [`SpeakerConfig::awaiting_peers`] of the latest configuration.
    awaiting: Vec<String>,
}

struct Listener {
    port: u16,
    socket: Arc<TcpListener>,
    task: JoinHandle<()>,
    /// MD5 keys installed on the socket, to remove those no longer configured.
    keys: BTreeMap<Md5Target, Md5Key>,
}

struct SpeakerTask {
    config: Option<SpeakerConfig>,
    rib: Option<Rib>,
    peers: BTreeMap<PeerKey, PeerSlot>,
    next_id: u32,
    listener: Option<Listener>,
    events_tx: mpsc::Sender<PeerEvent>,
    events_rx: mpsc::Receiver<PeerEvent>,
    accept_tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    accept_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// The forwarding table, updated in place from every batch of Loc-RIB changes.
    fib: watch::Sender<Arc<Fib>>,
    options: SpeakerOptions,
    restarting: Option<Restarting>,
    /// Started with the first peer that has BFD configured.
    bfd: Option<Bfd>,
    /// When exports held back for peers that have not read look again (fixed when set, so
    /// that a stream of other events cannot keep putting it off).
    export_retry_at: Option<Instant>,
    /// When peers whose BFD session could not start (port 3784 taken, the interface missing)
    /// try again.
    bfd_retry_at: Option<Instant>,
}

/// How often a BFD session that could not start is tried again.
const BFD_RETRY: Duration = Duration::from_secs(5);

impl SpeakerTask {
    fn new(fib: watch::Sender<Arc<Fib>>, options: SpeakerOptions) -> SpeakerTask {
        let restarting = options.restarting.map(|d| Restarting {
            until: Instant::now() + d,
            waiting: BTreeMap::new(),
            not_up: BTreeSet::new(),
            seen: BTreeSet::new(),
            awaiting: Vec::new(),
        });
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (accept_tx, accept_rx) = mpsc::channel(16);
        SpeakerTask {
            config: None,
            rib: None,
            peers: BTreeMap::new(),
            next_id: 1,
            listener: None,
            events_tx,
            events_rx,
            accept_tx,
            accept_rx,
            fib,
            options,
            restarting,
            bfd: None,
            export_retry_at: None,
            bfd_retry_at: None,
        }
    }

    /// Folds Loc-RIB changes into the published forwarding table. The table is edited in place:
    /// `make_mut` copies it only while the installer still holds the previous snapshot, so a
    /// server's few hundred routes cost little. (A node taking a full table would want the
    /// installer fed deltas instead of snapshots.)
    fn publish(&self, changes: &[RouteChange]) {
        if changes.is_empty() || !self.config.as_ref().is_some_and(|c| c.install_routes) {
            return;
        }
        let peers = &self.peers;
        let ifindex = |id: PeerId| peers.values().find(|s| s.id == id).and_then(|s| s.ifindex);
        self.fib.send_if_modified(|fib| Arc::make_mut(fib).apply(changes, ifindex));
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut restart_shutdown = false;
        let mut done = None;
        loop {
            let deadline = self.next_timer();
            let timer = crate::driver::sleep_until(deadline);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::SetConfig(config, reply)) => {
                        let _ = reply.send(self.set_config(*config).await);
                    }
                    Some(Command::Summary(reply)) => {
                        let _ = reply.send(self.summary());
                    }
                    Some(Command::Routes(query, reply)) => {
                        let _ = reply.send(self.routes(query));
                    }
                    Some(Command::Bfd(reply)) => {
                        let sessions = match &self.bfd {
                            Some(bfd) => bfd.sessions().await.unwrap_or_default(),
                            None => Vec::new(),
                        };
                        let _ = reply.send(sessions);
                    }
                    Some(Command::Shutdown { restart, done: reply }) => {
                        restart_shutdown = restart;
                        done = Some(reply);
                        break;
                    }
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.event(event).await,
                Some((stream, remote)) = self.accept_rx.recv() => self.accepted(stream, remote).await,
                _ = timer => self.timers().await,
            }
        }
        if let Some(l) = self.listener.take() {
            l.task.abort();
        }
        // Dropping the peers' command senders makes each send Cease and end; for a graceful
        // restart they are told to go without a word.
        let slots = std::mem::take(&mut self.peers);
        if restart_shutdown {
            info!(peers = slots.len(), "graceful restart: closing BGP sessions without NOTIFICATION");
        }
        let mut tasks = Vec::new();
        for slot in slots.into_values() {
            if restart_shutdown {
                let _ = slot.cmd.send(PeerCmd::Abandon).await;
            }
            drop(slot.cmd);
            tasks.push(slot.task);
        }
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// The earliest timer: a helper's stale routes, our own deferral, or another look at
    /// UPDATEs held back for a peer that has not read.
    fn next_timer(&self) -> Option<Instant> {
        let stale = self.peers.values().filter_map(|s| s.stale_until).min();
        let ours = self.restarting.as_ref().map(|r| r.until);
        stale.into_iter().chain(ours).chain(self.export_retry_at).chain(self.bfd_retry_at).min()
    }

    async fn timers(&mut self) {
        if self.bfd_retry_at.is_some_and(|t| t <= Instant::now()) {
            self.bfd_retry_at = None;
            let missing: Vec<(PeerKey, PeerConfig, BfdConfig)> = self
                .peers
                .iter()
                .filter(|(_, s)| s.bfd.is_none())
                .filter_map(|(key, s)| s.config.bfd.map(|b| (*key, s.config.clone(), b)))
                .collect();
            for (key, config, params) in missing {
                if let Some(rx) = self.start_bfd(&config, params, true).await {
                    info!(peer = %key, "BFD session started");
                    if let Some(slot) = self.peers.get_mut(&key) {
                        slot.bfd = Some(rx.clone());
                        let _ = slot.cmd.send(PeerCmd::Bfd(rx)).await;
                    }
                }
            }
        }
        if self.export_retry_at.is_some_and(|t| t <= Instant::now()) {
            self.export_retry_at = None;
            let deferred: Vec<(PeerKey, Negotiated)> = self
                .peers
                .iter()
                .filter(|(_, s)| s.export_deferred)
                .filter_map(|(key, s)| s.registered.as_ref().map(|(_, _, n)| (*key, n.clone())))
                .collect();
            for (peer, negotiated) in deferred {
                self.export_to(peer, &negotiated).await;
            }
        }
        let now = Instant::now();
        let expired: Vec<PeerKey> =
            self.peers.iter().filter(|(_, s)| s.stale_until.is_some_and(|t| t <= now)).map(|(a, _)| *a).collect();
        for peer in expired {
            let Some(slot) = self.peers.get_mut(&peer) else { continue };
            slot.stale_until = None;
            slot.stale_families.clear();
            let Some(rib) = self.rib.as_mut() else { continue };
            match rib.sweep_stale(slot.id, None) {
                Ok(changes) => {
                    warn!(%peer, removed = changes.len(), "graceful restart: the peer's stale routes expired");
                    self.publish(&changes);
                }
                Err(err) => debug!(%peer, %err, "no stale routes to sweep"),
            }
        }
        if self.restarting.as_ref().is_some_and(|r| r.until <= now) {
            let r = self.restarting.as_ref().expect("checked");
            let waiting: Vec<String> =
                r.waiting.keys().chain(&r.not_up).map(ToString::to_string).chain(r.awaiting.iter().cloned()).collect();
            warn!(waiting = %waiting.join(", "), "graceful restart: deferral time over before every End-of-RIB arrived");
            self.end_restart();
        }
    }

    /// Our restart has converged: the FIB is the whole truth again (the installer may delete).
    fn end_restart(&mut self) {
        if self.restarting.take().is_some() {
            info!("graceful restart complete: kernel routes follow the RIB again");
            self.fib.send_if_modified(|fib| Arc::make_mut(fib).set_deferred(false));
            // Later connections' OPENs no longer say we restarted. A full command queue (a
            // task busy with a slow peer) leaves that peer's bits until its task is recreated.
            for slot in self.peers.values() {
                let _ = slot.cmd.try_send(PeerCmd::RestartComplete);
            }
        }
    }

    /// Ends the deferral once nobody is left to wait for.
    fn check_restart_done(&mut self) {
        if self
            .restarting
            .as_ref()
            .is_some_and(|r| r.waiting.is_empty() && r.not_up.is_empty() && r.awaiting.is_empty())
        {
            self.end_restart();
        }
    }

    async fn set_config(&mut self, config: SpeakerConfig) -> Result<(), SpeakerError> {
        let identity_changed = self
            .config
            .as_ref()
            .is_none_or(|old| old.local_asn != config.local_asn || old.router_id != config.router_id)
            // The FIB is built from route changes as they happen: switching it on (or off)
            // starts the sessions over so it holds exactly the Loc-RIB.
            || self.config.as_ref().is_some_and(|old| old.install_routes != config.install_routes);
        // Validate every peer, and take the listening port, before touching anything, so that a
        // configuration refused here leaves the running sessions, RIB and FIB as they were.
        let mut sessions = BTreeMap::new();
        for p in &config.peers {
            if p.md5.is_some() && self.options.md5.is_none() {
                return Err(SpeakerError::Md5Unavailable { peer: p.address });
            }
            let session = Session::new(session_config(&config, p, self.restarting.is_some()))
                .map_err(|source| SpeakerError::Peer { peer: p.key(), source })?;
            sessions.insert(p.key(), session);
        }
        for l in &config.listen {
            if l.template.md5.is_some() && self.options.md5.is_none() {
                return Err(SpeakerError::Md5Unavailable { peer: l.prefix.addr() });
            }
        }
        self.listen(config.listen_port).await?;
        self.set_listener_keys(&config)?;
        if identity_changed {
            // Every session carries the local AS and router id in its OPEN: start over.
            if !self.peers.is_empty() {
                info!(asn = config.local_asn, router_id = %config.router_id, "local AS or router id changed; resetting every session");
            }
            self.stop_all_peers();
            self.rib = Some(Rib::new(RibConfig::new(config.local_asn, config.router_id)));
            self.fib.send_if_modified(|fib| Arc::make_mut(fib).clear());
        }
        // Whether our restart waits for anyone; a restart that never had anyone to wait for keeps
        // deferring until its time is up (its peers without graceful restart send no End-of-RIB
        // we could wait for).
        let waited_for = self
            .restarting
            .as_ref()
            .is_some_and(|r| !r.waiting.is_empty() || !r.not_up.is_empty() || !r.awaiting.is_empty());

        let wanted: BTreeMap<PeerKey, &PeerConfig> = config.peers.iter().map(|p| (p.key(), p)).collect();
        let stale: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(addr, slot)| match slot.dynamic {
                // A dynamic neighbor stays while its range does with the same template (and no
                // configured peer took its address).
                Some(range) => {
                    wanted.contains_key(addr)
                        || !config.listen.iter().any(|l| {
                            l.prefix == range
                                && PeerConfig { ifindex: slot.config.ifindex, ..dynamic_config(l, addr.address) }
                                    == slot.config
                        })
                }
                None => wanted.get(addr).is_none_or(|p| **p != slot.config),
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in stale {
            self.remove_peer(addr).await;
        }
        for (addr, session) in sessions {
            if !self.peers.contains_key(&addr) {
                self.add_peer(wanted[&addr].clone(), session, None).await;
            }
        }
        // Our restart waits for every peer with graceful restart that any configuration names
        // while it lasts (an unnumbered peer appears only once its address is found), not only
        // those of the first one, and for those still awaited by name.
        if let Some(r) = self.restarting.as_mut() {
            for key in config.peers.iter().filter(|p| p.graceful_restart.is_some()).map(PeerConfig::key) {
                if !r.seen.contains(&key) {
                    r.not_up.insert(key);
                }
            }
            r.awaiting = config.awaiting_peers.clone();
        }

        let rib = self.rib.as_mut().expect("created above");
        let changes = rib.set_local_routes(config.announcements.clone(), Instant::now());
        if !changes.is_empty() {
            info!(prefixes = changes.len(), "announcements changed");
        }
        self.publish(&changes);
        self.config = Some(config);
        if waited_for {
            self.check_restart_done(); // a peer no longer configured or awaited may have been the last
        }
        self.export_all().await;
        Ok(())
    }

    async fn listen(&mut self, port: u16) -> Result<(), SpeakerError> {
        if self.listener.as_ref().map(|l| l.port) == Some(port) {
            return Ok(());
        }
        if port == 0 {
            if let Some(old) = self.listener.take() {
                old.task.abort();
            }
            return Ok(());
        }
        // The new port first: if it cannot be had, the old listener goes on accepting.
        // [::] also accepts IPv4 (as mapped addresses) unless the host set bindv6only.
        let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .await
            .map_err(|source| SpeakerError::Listen { port, source })?;
        if let Some(old) = self.listener.take() {
            old.task.abort();
        }
        info!(port, "listening for BGP sessions");
        let listener = Arc::new(listener);
        let socket = listener.clone();
        let tx = self.accept_tx.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        if tx.send((stream, remote)).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        warn!(%err, "accepting a BGP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.listener = Some(Listener { port, socket, task, keys: BTreeMap::new() });
        Ok(())
    }

    /// Puts every configured peer's and listen range's MD5 key on the listening socket (the
    /// kernel checks a connecting peer's SYN against it) and removes keys no longer configured.
    fn set_listener_keys(&mut self, config: &SpeakerConfig) -> Result<(), SpeakerError> {
        let (Some(listener), Some(setter)) = (self.listener.as_mut(), self.options.md5.as_ref()) else {
            return Ok(());
        };
        let mut wanted = BTreeMap::new();
        for p in &config.peers {
            if let Some(key) = &p.md5 {
                // By address alone, link-local peers included: Linux takes an interface in a key
                // only for a VRF device (EINVAL for any other), so two link-local peers with one
                // address on different links share a key: the first one's is kept (the
                // configuration refuses two passwords for one address it can see; an address
                // found on the link is known only now).
                let target = Md5Target { address: p.address, prefix_len: None };
                match wanted.get(&target) {
                    None => {
                        wanted.insert(target, key.clone());
                    }
                    Some(first) if first != key => warn!(
                        peer = %p.key(),
                        "another peer with this address on another link has a different TCP MD5 password; \
                         the listening socket takes one key per address, so this peer's inbound connections \
                         are checked against the other's"
                    ),
                    Some(_) => {}
                }
            }
        }
        for l in &config.listen {
            if let Some(key) = &l.template.md5 {
                let target = Md5Target { address: l.prefix.addr(), prefix_len: Some(l.prefix.len()) };
                wanted.insert(target, key.clone());
            }
        }
        for target in listener.keys.keys().filter(|t| !wanted.contains_key(t)) {
            if let Err(err) = setter.set(listener.socket.as_fd(), *target, &[]) {
                warn!(peer = %target.address, %err, "could not remove a TCP MD5 key from the listening socket");
            }
        }
        for (target, key) in &wanted {
            if listener.keys.get(target) != Some(key) {
                setter
                    .set(listener.socket.as_fd(), *target, key.bytes())
                    .map_err(|source| SpeakerError::Md5 { target: target.address, source })?;
            }
        }
        listener.keys = wanted;
        Ok(())
    }

    async fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let key = PeerKey::of_remote(remote);
        match self.peers.get(&key) {
            Some(slot) => {
                let _ = slot.cmd.send(PeerCmd::Inbound(stream)).await;
            }
            None => {
                let Some(range) = self.listen_range_for(key.address) else {
                    // Not a neighbor: close at once (dropping the stream), as routers do.
                    debug!(%remote, "refused a BGP connection from an address that is not a configured peer");
                    return;
                };
                let in_use = self.peers.values().filter(|s| s.dynamic == Some(range.prefix)).count();
                if in_use >= range.limit as usize {
                    warn!(%remote, range = %range.prefix, limit = range.limit, "refused a BGP connection: the listen range is at its session limit");
                    return;
                }
                let config = PeerConfig { ifindex: key.ifindex, ..dynamic_config(&range, key.address) };
                let restarting = self.restarting.is_some();
                let Some(speaker) = self.config.as_ref() else { return };
                let session = match Session::new(session_config(speaker, &config, restarting)) {
                    Ok(session) => session,
                    Err(err) => {
                        warn!(%remote, %err, "refused a dynamic BGP neighbor");
                        return;
                    }
                };
                info!(%remote, range = %range.prefix, asn = config.asn, "dynamic BGP neighbor accepted");
                self.add_peer(config, session, Some(range.prefix)).await;
                if let Some(slot) = self.peers.get(&key) {
                    let _ = slot.cmd.send(PeerCmd::Inbound(stream)).await;
                }
            }
        }
    }

    /// The most specific listen range holding `ip`.
    fn listen_range_for(&self, ip: IpAddr) -> Option<ListenRange> {
        let config = self.config.as_ref()?;
        config.listen.iter().filter(|l| l.prefix.contains(ip)).max_by_key(|l| l.prefix.len()).cloned()
    }

    async fn add_peer(&mut self, config: PeerConfig, session: Session, dynamic: Option<Prefix>) {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let remote = match (config.address, config.ifindex) {
            (IpAddr::V6(a), Some(ifindex)) => SocketAddr::V6(SocketAddrV6::new(a, config.port, 0, ifindex)),
            (address, _) => SocketAddr::new(address, config.port),
        };
        let md5 = match (&self.options.md5, &config.md5) {
            (Some(setter), Some(key)) => Some((setter.clone(), key.clone())),
            _ => None,
        };
        // Below the jittered connect-retry time (0.75 to 1.0 of it), so that an attempt nobody
        // answers fails as a timeout before the next one replaces it.
        let connect_timeout = config.connect_retry.mul_f64(0.7);
        let addressing = PeerAddressing { remote, connect_timeout, md5 };
        let bfd = match config.bfd {
            Some(params) => self.start_bfd(&config, params, false).await,
            None => None,
        };
        let (task, status) = PeerTask::new(session, addressing, self.events_tx.clone(), bfd.clone());
        let unsent = task.unsent();
        let (cmd, cmd_rx) = mpsc::channel(64);
        let key = config.key();
        let span = tracing::info_span!("bgp_peer", peer = %key);
        let handle = tokio::spawn(task.run(cmd_rx).instrument(span));
        info!(peer = %key, asn = config.asn, "BGP peer added");
        self.peers.insert(
            key,
            PeerSlot {
                id,
                config,
                cmd,
                status,
                task: handle,
                up: false,
                registered: None,
                ifindex: None,
                dynamic,
                stale_until: None,
                stale_families: BTreeSet::new(),
                bfd,
                unsent,
                export_deferred: false,
                first_export_done: false,
            },
        );
    }

    /// The peer's BFD session (the BFD task starts with the first one). A failure is logged and
    /// the BGP session runs without BFD (BFD only speeds up failure detection) until a retry
    /// every [`BFD_RETRY`] succeeds.
    /// `retry`: a later attempt, whose failure is logged at debug level (the first one warned).
    async fn start_bfd(
        &mut self,
        config: &PeerConfig,
        params: BfdConfig,
        retry: bool,
    ) -> Option<watch::Receiver<BfdStatus>> {
        if self.bfd.is_none() {
            match Bfd::spawn() {
                Ok(bfd) => self.bfd = Some(bfd),
                Err(err) => {
                    if retry {
                        debug!(peer = %config.key(), %err, "BFD still unavailable");
                    } else {
                        warn!(peer = %config.key(), %err, "BFD unavailable; the session relies on its hold timer until BFD can start (retried every 5 s)");
                    }
                    self.bfd_retry_at.get_or_insert_with(|| Instant::now() + BFD_RETRY);
                    return None;
                }
            }
        }
        let bfd = self.bfd.as_ref()?;
        let mut peer = BfdPeer::new(config.address, params.interval, params.multiplier);
        if let Some(ifindex) = config.ifindex {
            peer = peer.interface(ifindex);
        }
        match bfd.add(peer).await {
            Ok(rx) => Some(rx),
            Err(err) => {
                if retry {
                    debug!(peer = %config.key(), %err, "BFD session still not started");
                } else {
                    warn!(peer = %config.key(), %err, "BFD session not started; the session relies on its hold timer until it can (retried every 5 s)");
                }
                self.bfd_retry_at.get_or_insert_with(|| Instant::now() + BFD_RETRY);
                None
            }
        }
    }

    async fn remove_peer(&mut self, addr: PeerKey) {
        let Some(slot) = self.peers.remove(&addr) else { return };
        if let (Some(bfd), Some(_)) = (&self.bfd, slot.config.bfd) {
            let _ = bfd.remove(addr.address, slot.config.ifindex).await;
        }
        if let Some(r) = self.restarting.as_mut() {
            // A peer changed (removed, then added again) is waited for again.
            r.waiting.remove(&addr);
            r.not_up.remove(&addr);
            r.seen.remove(&addr);
        }
        info!(peer = %addr, "BGP peer removed or changed; closing its session");
        drop(slot.cmd);
        if tokio::time::timeout(Duration::from_secs(2), slot.task).await.is_err() {
            warn!(peer = %addr, "peer task did not stop within 2 s");
        }
        if let Some(rib) = self.rib.as_mut() {
            if let Ok(changes) = rib.remove_peer(slot.id) {
                self.publish(&changes);
            }
        }
    }

    fn stop_all_peers(&mut self) {
        for (_, slot) in std::mem::take(&mut self.peers) {
            drop(slot.cmd);
            // The task sends its Cease and ends by itself; nothing waits for it here.
            drop(slot.task);
        }
    }

    async fn event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Established { peer, negotiated, local } => self.established(peer, *negotiated, local).await,
            PeerEvent::Update { peer, message, opts } => self.update(peer, &message, opts).await,
            PeerEvent::RouteRefresh { peer, family } => {
                debug!(%peer, ?family, "route refresh: sending our routes again");
                if let Some((info, _, negotiated)) = self.peers.get(&peer).and_then(|s| s.registered.clone()) {
                    if let Some(rib) = self.rib.as_mut() {
                        if rib.resend(info.id).is_ok() {
                            self.export_to(peer, &negotiated).await;
                        }
                    }
                }
            }
            PeerEvent::Down { peer, was_established, reason } => self.down(peer, was_established, reason).await,
        }
    }

    /// A session left Established (or failed after OpenSent). With graceful restart negotiated
    /// and a transport failure (not a NOTIFICATION, RFC 4724 4.2; RFC 8538 is not supported),
    /// the peer's routes stay, stale, for its restart time; otherwise they go at once.
    async fn down(&mut self, peer: PeerKey, was_established: bool, reason: DownReason) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        slot.export_deferred = false; // the next session starts with a whole export
        if was_established || slot.up {
            let helper = slot.registered.as_ref().and_then(|(_, _, n)| {
                let keep = n.graceful_restart
                    && matches!(
                        reason,
                        DownReason::ConnectionClosed
                            | DownReason::HoldTimerExpired
                            | DownReason::PathDown(_)
                            | DownReason::PeerRestarted
                    );
                n.peer_graceful_restart.as_ref().filter(|_| keep).cloned()
            });
            slot.up = false;
            slot.registered = None;
            if let Some(rib) = self.rib.as_mut() {
                match helper {
                    Some(gr) if gr.restart_time > 0 => {
                        let preserved: BTreeSet<Family> =
                            gr.families.iter().filter_map(|f| Family::from_afi_safi(f.afi, f.safi)).collect();
                        let mut changes = Vec::new();
                        match rib.mark_stale(slot.id) {
                            Ok((n, removed)) => {
                                changes = removed;
                                info!(%peer, stale = n, restart_time_s = gr.restart_time, "graceful restart helper: keeping the peer's routes as stale");
                            }
                            Err(err) => debug!(%peer, %err, "peer down"),
                        }
                        slot.stale_until = Some(Instant::now() + Duration::from_secs(u64::from(gr.restart_time)));
                        slot.stale_families = preserved.clone();
                        // Families the peer did not list in its capability are not preserved.
                        for family in FAMILIES.into_iter().filter(|f| !preserved.contains(f)) {
                            changes.extend(rib.sweep_stale(slot.id, Some(family)).unwrap_or_default());
                        }
                        self.publish(&changes);
                    }
                    _ => match rib.peer_down(slot.id) {
                        Ok(changes) => {
                            debug!(%peer, withdrawn = changes.len(), "routes of the peer removed");
                            slot.stale_until = None;
                            slot.stale_families.clear();
                            self.publish(&changes);
                        }
                        Err(err) => debug!(%peer, %err, "peer down"),
                    },
                }
            }
        }
        // A dynamic neighbor exists only while its session does (its stale routes, if any, are
        // not kept: the address may never come back); one that restarted is back already, on a
        // new connection of the same task.
        if reason != DownReason::PeerRestarted && self.peers.get(&peer).is_some_and(|s| s.dynamic.is_some()) {
            info!(%peer, "dynamic BGP neighbor gone");
            self.remove_peer(peer).await;
            self.check_restart_done();
        }
    }

    async fn established(&mut self, peer: PeerKey, negotiated: Negotiated, local: SocketAddr) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        let Some(rib) = self.rib.as_mut() else { return };
        if negotiated.families.is_empty() {
            warn!(%peer, "session established without any address family in common; nothing will be exchanged");
        }
        let info = PeerInfo {
            id: slot.id,
            addr: peer.address,
            asn: negotiated.peer_asn,
            router_id: negotiated.peer_router_id,
            ebgp: negotiated.ebgp,
        };
        let session = export_session(local.ip(), &negotiated);
        rib.peer_up(info, slot.config.import.clone(), ExportPolicy::default(), session.clone());
        slot.up = true;
        slot.first_export_done = false;
        slot.registered = Some((info, session, negotiated.clone()));
        slot.ifindex = match local {
            // A link-local session names its interface in the scope id.
            SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
            _ => interface_index(local.ip().to_canonical()),
        };
        if slot.ifindex.is_none() {
            debug!(%peer, local = %local.ip(), "no interface holds the session's local address; link-local next hops from this peer cannot be installed");
        }
        // Helper: the peer is back. Families it no longer preserves lose their stale routes now;
        // the others wait for its End-of-RIB (or the stale-path time).
        let mut swept = Vec::new();
        if slot.stale_until.is_some() {
            let preserved: BTreeSet<Family> = match &negotiated.peer_graceful_restart {
                Some(gr) if negotiated.graceful_restart => gr
                    .families
                    .iter()
                    .filter(|f| f.forwarding_preserved)
                    .filter_map(|f| Family::from_afi_safi(f.afi, f.safi))
                    .collect(),
                _ => BTreeSet::new(),
            };
            // A family no longer negotiated never gets an End-of-RIB: its stale routes go too.
            let waits = |f: &Family| preserved.contains(f) && negotiated.families.contains(f);
            for family in FAMILIES.into_iter().filter(|f| !waits(f)) {
                swept.extend(rib.sweep_stale(slot.id, Some(family)).unwrap_or_default());
            }
            slot.stale_families.retain(waits);
            slot.stale_until = (!slot.stale_families.is_empty()).then(|| Instant::now() + STALE_PATH_TIME);
            info!(%peer, waiting_for_end_of_rib = ?slot.stale_families, "graceful restart helper: peer is back");
        }
        // Our own restart: wait for this peer's End-of-RIB in every family it negotiated.
        if let Some(r) = self.restarting.as_mut() {
            let configured = r.not_up.remove(&peer);
            // (A session with no family in common sends no End-of-RIB to wait for.)
            if r.seen.insert(peer) && configured && negotiated.graceful_restart && !negotiated.families.is_empty() {
                r.waiting.insert(peer, negotiated.families.iter().copied().collect());
            }
        }
        self.publish(&swept);
        self.check_restart_done();
        self.export_to(peer, &negotiated).await;
    }

    async fn update(&mut self, peer: PeerKey, message: &[u8], opts: DecodeOptions) {
        let Some(slot) = self.peers.get(&peer) else { return };
        let Some(rib) = self.rib.as_mut() else { return };
        let update = match decode_message(message, &opts) {
            Ok(Some((Message::Update(update), _))) => update,
            // The peer task decoded the same bytes with the same options a moment ago.
            other => {
                warn!(%peer, ?other, "an UPDATE the session accepted did not decode again");
                return;
            }
        };
        let mut end_of_rib = None;
        match rib.apply_update(slot.id, &update, Instant::now()) {
            Ok(outcome) => {
                self.publish(&outcome.changes);
                end_of_rib = outcome.end_of_rib;
                if outcome.treat_as_withdraw {
                    warn!(%peer, faults = ?update.faults, "malformed UPDATE handled as withdraw (RFC 7606)");
                }
                if outcome.ignored > 0 {
                    warn!(%peer, prefixes = outcome.ignored, "UPDATE for an address family the session did not negotiate: ignored");
                }
                if let Some(event) = outcome.max_prefix {
                    warn!(%peer, "{event}");
                    if event.action == MaxPrefixAction::Teardown {
                        let cmd = PeerCmd::AutomaticStop {
                            notification: event.notification(),
                            reason: format!("max_prefix limit {} exceeded", event.limit),
                        };
                        let _ = slot.cmd.send(cmd).await;
                    }
                }
            }
            Err(err) => debug!(%peer, %err, "UPDATE for a peer the RIB does not hold as up"),
        }
        if let Some(family) = end_of_rib {
            debug!(%peer, %family, "End-of-RIB received");
            self.end_of_rib(peer, family);
        }
    }

    /// The peer has sent all its routes of `family`: stale ones it did not refresh go (helper),
    /// and our own restart stops waiting for it in that family.
    fn end_of_rib(&mut self, peer: PeerKey, family: Family) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        let mut changes = Vec::new();
        if slot.stale_families.remove(&family) {
            if let Some(rib) = self.rib.as_mut() {
                changes = rib.sweep_stale(slot.id, Some(family)).unwrap_or_default();
            }
            info!(%peer, %family, removed = changes.len(), "graceful restart helper: End-of-RIB, stale routes swept");
            if slot.stale_families.is_empty() {
                slot.stale_until = None;
            }
        }
        if let Some(r) = self.restarting.as_mut() {
            if let Some(families) = r.waiting.get_mut(&peer) {
                families.remove(&family);
                if families.is_empty() {
                    r.waiting.remove(&peer);
                }
            }
        }
        self.publish(&changes);
        self.check_restart_done();
    }

    async fn export_all(&mut self) {
        let up: Vec<(PeerKey, Negotiated)> = self
            .peers
            .iter()
            .filter_map(|(addr, s)| s.registered.as_ref().map(|(_, _, n)| (*addr, n.clone())))
            .collect();
        for (addr, negotiated) in up {
            self.export_to(addr, &negotiated).await;
        }
    }

    async fn export_to(&mut self, peer: PeerKey, negotiated: &Negotiated) {
        let (Some(slot), Some(rib)) = (self.peers.get_mut(&peer), self.rib.as_mut()) else { return };
        let unsent = slot.unsent.load(Ordering::Relaxed);
        if slot.first_export_done && unsent > OUT_QUEUE_HIGH {
            if !slot.export_deferred {
                debug!(%peer, unsent, "the peer has not read what was sent; route changes wait");
            }
            slot.export_deferred = true;
            self.export_retry_at.get_or_insert_with(|| Instant::now() + EXPORT_RETRY);
            return;
        }
        slot.export_deferred = false;
        slot.first_export_done = true;
        let diff = match rib.export(slot.id) {
            Ok(diff) => diff,
            Err(err) => {
                debug!(%peer, %err, "nothing exported");
                return;
            }
        };
        for skip in &diff.skipped {
            warn!(%peer, prefix = %skip.prefix, reason = skip.reason, "announcement not sent to this peer");
        }
        if diff.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        match diff.encode(&negotiated.encode, &mut bytes) {
            Ok(count) => {
                let announced: usize = diff.announce.iter().map(|a| a.prefixes.len()).sum();
                info!(%peer, announced, withdrawn = diff.withdraw.len(), "sending UPDATEs");
                let _ = slot.cmd.send(PeerCmd::SendUpdates { bytes, count: count as u64 }).await;
            }
            Err(err) => warn!(%peer, %err, "cannot encode the UPDATEs for this peer"),
        }
    }

    fn summary(&self) -> Vec<NeighborSummary> {
        self.peers
            .values()
            .map(|slot| {
                let status = slot.status.borrow().clone();
                let counters = self.rib.as_ref().and_then(|r| r.peer(slot.id)).map(|s| s.counters).unwrap_or_default();
                let c = &status.counters;
                let flaps = c.established_transitions.saturating_sub(u64::from(status.state == State::Established));
                NeighborSummary {
                    address: slot.config.address,
                    interface: slot.config.ifindex.map(super::peer::interface_name),
                    asn: slot.config.asn,
                    state: status.state.to_string(),
                    uptime_s: c.established_since.map(|t| t.elapsed().as_secs()),
                    received: counters.received,
                    accepted: counters.accepted as u64,
                    rejected: counters.rejected,
                    sent: counters.sent as u64,
                    messages_in: c.received.total(),
                    messages_out: c.sent.total(),
                    out_queue: slot.unsent.load(Ordering::Relaxed) as u64,
                    flaps,
                    hold_time: status.negotiated.as_ref().map(|n| n.hold_time),
                    dynamic: slot.dynamic.map(|p| p.to_string()),
                    graceful_restart: status.negotiated.as_ref().is_some_and(|n| n.graceful_restart),
                    stale: counters.stale as u64,
                    bfd: slot.bfd.as_ref().map(|rx| rx.borrow().state.to_string()),
                    families: status
                        .negotiated
                        .as_ref()
                        .map(|n| n.families.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    last_error: status.last_error.clone(),
                }
            })
            .collect()
    }

    fn routes(&self, query: RouteQuery) -> Vec<RouteEntry> {
        let Some(rib) = self.rib.as_ref() else { return Vec::new() };
        let now = Instant::now();
        let views: Vec<PrefixView> = match query {
            RouteQuery::All => rib.routes(now),
            RouteQuery::Prefix(p) => rib.lookup(&p, now).into_iter().collect(),
            RouteQuery::Address(a) => rib.longest_match(a, now).into_iter().collect(),
        };
        // A link-local peer is named with its link (`fe80::1%eth0`): two may share the address.
        // Named once per query: the interface name is a system call.
        let names: std::collections::HashMap<PeerId, String> =
            self.peers.iter().map(|(key, slot)| (slot.id, key.to_string())).collect();
        views.into_iter().map(|view| route_entry(view, &names)).collect()
    }
}

fn route_entry(view: PrefixView, names: &std::collections::HashMap<PeerId, String>) -> RouteEntry {
    let paths = view
        .paths
        .iter()
        .map(|p| {
            let a = &p.attrs.attributes;
            PathEntry {
                from: match (p.source, p.peer_addr) {
                    (Source::Local, _) => "local".into(),
                    (Source::Peer(id), addr) => match (names.get(&id), addr) {
                        (Some(name), _) => name.clone(),
                        (None, Some(addr)) => addr.to_string(),
                        (None, None) => id.to_string(),
                    },
                },
                next_hop: p.attrs.next_hop.map(|nh| match nh {
                    NextHop::V4(a) => a.to_string(),
                    NextHop::V6 { global, link_local: Some(ll) } => format!("{global} ({ll})"),
                    NextHop::V6 { global, link_local: None } => global.to_string(),
                }),
                as_path: a.as_path.as_ref().map(ToString::to_string).unwrap_or_default(),
                origin: a.origin.map_or("?".into(), |o| format!("{o:?}").to_lowercase()),
                med: a.med,
                local_pref: p.local_pref,
                communities: a.communities.iter().map(ToString::to_string).collect(),
                large_communities: a.large_communities.iter().map(ToString::to_string).collect(),
                best: p.best,
                multipath: p.ecmp,
                stale: p.stale,
                age_s: p.age.as_secs(),
            }
        })
        .collect();
    RouteEntry { prefix: view.prefix.to_string(), paths }
}

/// A dynamic neighbor's configuration: the range's template at the connecting address.
fn dynamic_config(range: &ListenRange, address: IpAddr) -> PeerConfig {
    PeerConfig { address, passive: true, ..range.template.clone() }
}

fn session_config(speaker: &SpeakerConfig, peer: &PeerConfig, restarting: bool) -> SessionConfig {
    let mut config = SessionConfig::new(speaker.local_asn, speaker.router_id, peer.asn, peer.address);
    config.graceful_restart = peer.graceful_restart.map(|restart_time| GracefulRestartConfig {
        restart_time,
        restarting,
        // The kernel routes and the pinned datapath survive our restart.
        forwarding_preserved: restarting,
    });
    config.hold_time = peer.hold_time;
    config.passive = peer.passive;
    config.connect_retry = peer.connect_retry;
    config.families = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
    // Over IPv6 transport, peers (GoBGP, FRR with extended-nexthop, BIRD) may carry IPv4 routes
    // with IPv6 next hops; RFC 8950 lets them do so only when negotiated.
    config.extended_nexthop = peer.address.is_ipv6();
    config
}

/// Next-hop addresses for routes sent on a session whose local end is `local`: that address,
/// and the node's addresses of the other family on the same interface (a session over IPv6
/// announces IPv4 routes with the interface's IPv4 address, as FRR and BIRD do).
fn export_session(local: IpAddr, negotiated: &Negotiated) -> ExportSession {
    let local = local.to_canonical();
    let siblings = interface_addresses(local);
    let mut session = ExportSession {
        families: negotiated.families.clone(),
        local_v4: None,
        local_v6: None,
        link_local: None,
        extended_next_hop: negotiated.extended_nexthop.contains(&Family::Ipv4Unicast),
    };
    for addr in std::iter::once(local).chain(siblings) {
        match addr {
            IpAddr::V4(a) => {
                session.local_v4.get_or_insert(a);
            }
            IpAddr::V6(a) if is_link_local(a) => {
                session.link_local.get_or_insert(a);
            }
            IpAddr::V6(a) => {
                session.local_v6.get_or_insert(a);
            }
        }
    }
    session
}

/// The index of the interface that holds `addr`.
fn interface_index(addr: IpAddr) -> Option<u32> {
    let (name, _) = all_addresses().into_iter().find(|(_, ip)| *ip == addr)?;
    nix::net::if_::if_nametoindex(name.as_str()).ok()
}

/// Every address of the interface that holds `addr` (empty if none does).
fn interface_addresses(addr: IpAddr) -> Vec<IpAddr> {
    let all = all_addresses();
    let Some((ifname, _)) = all.iter().find(|(_, ip)| *ip == addr) else { return Vec::new() };
    all.iter().filter(|(name, ip)| name == ifname && *ip != addr).map(|(_, ip)| *ip).collect()
}

/// Every IP address of the namespace with its interface's name (empty if they cannot be read).
fn all_addresses() -> Vec<(String, IpAddr)> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    all.filter_map(|ifa| {
        let sa = ifa.address?;
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else {
            IpAddr::V6(sa.as_sockaddr_in6()?.ip())
        };
        Some((ifa.interface_name, ip))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::FibNextHop;
    use crate::policy::{PrefixList, PrefixListEntry};

    fn default_v4() -> Prefix {
        Prefix::new(Ipv4Addr::UNSPECIFIED.into(), 0).unwrap()
    }

    fn config(asn: u32, router_id: &str, listen_port: u16, peer: PeerConfig, announce: bool) -> SpeakerConfig {
        SpeakerConfig {
            local_asn: asn,
            router_id: router_id.parse().unwrap(),
            listen_port,
            install_routes: true,
            peers: vec![peer],
            listen: Vec::new(),
            announcements: if announce { vec![LocalRoute::new(default_v4())] } else { Vec::new() },
            awaiting_peers: Vec::new(),
        }
    }

    fn peer(asn: u32, port: u16, passive: bool, import: &[Prefix]) -> PeerConfig {
        PeerConfig {
            address: Ipv4Addr::LOCALHOST.into(),
            ifindex: None,
            port,
            asn,
            passive,
            hold_time: 3,
            connect_retry: Duration::from_millis(200),
            import: ImportPolicy {
                prefixes: PrefixList {
                    entries: import.iter().map(|p| PrefixListEntry { prefix: *p, ge: None, le: None }).collect(),
                },
                ..ImportPolicy::default()
            },
            md5: None,
            graceful_restart: None,
            bfd: None,
        }
    }

    /// A configuration the speaker refuses late (its listening port is taken) changes nothing:
    /// with a new local AS, which resets every session when applied, the running session, its
    /// route in the FIB and the listener on the old port all stay.
    #[tokio::test]
    async fn a_refused_configuration_leaves_sessions_routes_and_listener_as_they_were() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tor = Speaker::spawn();
        let node = Speaker::spawn();
        tor.set_config(config(65001, "192.0.2.2", port, peer(65101, 0, true, &[]), true)).await.unwrap();
        let node_port = std::net::TcpListener::bind("[::]:0").unwrap().local_addr().unwrap().port();
        let running = config(65101, "192.0.2.1", node_port, peer(65001, port, false, &[default_v4()]), false);
        node.set_config(running.clone()).await.unwrap();
        wait_fib(&node.fib(), "the ToR's default route", |f| f.get(&default_v4()).is_some()).await;

        let taken = std::net::TcpListener::bind("[::]:0").unwrap();
        let refused =
            SpeakerConfig { local_asn: 65102, listen_port: taken.local_addr().unwrap().port(), ..running.clone() };
        let err = node.set_config(refused).await.unwrap_err();
        assert!(matches!(err, SpeakerError::Listen { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(node.summary().await.unwrap()[0].state, "Established", "the session stays");
        assert!(node.fib().borrow().get(&default_v4()).is_some(), "its route stays");
        let still = tokio::net::TcpStream::connect(("127.0.0.1", node_port)).await;
        assert!(still.is_ok(), "the old port still listens: {still:?}");
    }

    /// Two speakers on loopback: the "ToR" announces a default route, the "node" imports it
    /// and publishes it in its forwarding table; the ToR's withdraw empties the table again.
    #[tokio::test]
    async fn learned_route_is_published_in_the_fib_and_its_withdraw_removes_it() {
        // A free port for the ToR's listener (released at once; loopback only).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tor = Speaker::spawn();
        let node = Speaker::spawn();
        tor.set_config(config(65001, "192.0.2.2", port, peer(65101, 0, true, &[]), true)).await.unwrap();
        node.set_config(config(65101, "192.0.2.1", 0, peer(65001, port, false, &[default_v4()]), false)).await.unwrap();

        let fib = node.fib();
        let wait = |fib: &watch::Receiver<Arc<Fib>>, empty: bool| {
            let mut fib = fib.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), fib.wait_for(|f| f.is_empty() == empty))
                    .await
                    .expect("the node's FIB did not change within 10 s")
                    .unwrap()
                    .clone()
            }
        };
        let learned = wait(&fib, false).await;
        let hop = FibNextHop { gateway: Ipv4Addr::LOCALHOST.into(), ifindex: None };
        assert_eq!(learned.get(&default_v4()), Some(&[hop][..]), "{learned:?}");
        assert_eq!(learned.len(), 1);

        tor.set_config(config(65001, "192.0.2.2", port, peer(65101, 0, true, &[]), false)).await.unwrap();
        assert!(wait(&fib, true).await.is_empty());
    }

    fn v4(s: &str) -> Prefix {
        let (addr, len) = s.split_once('/').unwrap();
        Prefix::new(addr.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    fn gr_config(asn: u32, id: &str, listen: u16, peer: PeerConfig, announce: &[&str]) -> SpeakerConfig {
        SpeakerConfig {
            local_asn: asn,
            router_id: id.parse().unwrap(),
            listen_port: listen,
            install_routes: true,
            peers: vec![PeerConfig { graceful_restart: Some(30), ..peer }],
            listen: Vec::new(),
            announcements: announce.iter().map(|p| LocalRoute::new(v4(p))).collect(),
            awaiting_peers: Vec::new(),
        }
    }

    async fn wait_fib(fib: &watch::Receiver<Arc<Fib>>, what: &str, f: impl Fn(&Fib) -> bool) -> Arc<Fib> {
        let mut rx = fib.clone();
        let found = match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|x| f(x))).await {
            Ok(Ok(v)) => Some(v.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| panic!("within 10 s: {what}; FIB is {:?}", *fib.borrow()))
    }

    /// Graceful restart, helper side: the ToR's process restarts (its connection drops without a
    /// NOTIFICATION); the node keeps the ToR's route, stale, in its FIB; the new ToR process
    /// comes back with other routes and End-of-RIB, and the stale route goes.
    #[tokio::test]
    async fn helper_keeps_a_restarting_peers_routes_until_its_end_of_rib() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let import = [default_v4(), v4("203.0.113.0/24")];
        let node = Speaker::spawn();
        let tor_peer = peer(65101, 0, true, &[]);
        let tor = Speaker::spawn();
        tor.set_config(gr_config(65001, "192.0.2.2", port, tor_peer.clone(), &["0.0.0.0/0"])).await.unwrap();
        node.set_config(gr_config(65101, "192.0.2.1", 0, peer(65001, port, false, &import), &[])).await.unwrap();
        let fib = node.fib();
        wait_fib(&fib, "the ToR's default route", |f| f.get(&default_v4()).is_some()).await;
        let summary = node.summary().await.unwrap();
        assert!(summary[0].graceful_restart, "negotiated: {summary:?}");

        tor.shutdown(true).await;
        // The session is down, the route stays (stale) well past the time a withdraw would take.
        let mut status = node.summary().await.unwrap();
        for _ in 0..100 {
            if status[0].state != "Established" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            status = node.summary().await.unwrap();
        }
        assert_ne!(status[0].state, "Established");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fib.borrow().get(&default_v4()).is_some(), "stale route kept in the FIB");
        let routes = node.routes(RouteQuery::Prefix(default_v4())).await.unwrap();
        assert!(routes[0].paths[0].stale, "{routes:?}");
        assert_eq!(node.summary().await.unwrap()[0].stale, 1);

        // The ToR's next process announces something else; its End-of-RIB sweeps the default.
        let tor = Speaker::spawn();
        tor.set_config(gr_config(65001, "192.0.2.2", port, tor_peer, &["203.0.113.0/24"])).await.unwrap();
        let after = wait_fib(&fib, "the new route in, the stale one swept", |f| {
            f.get(&v4("203.0.113.0/24")).is_some() && f.get(&default_v4()).is_none()
        })
        .await;
        assert_eq!(after.len(), 1);
        assert_eq!(node.summary().await.unwrap()[0].stale, 0);
    }

    /// Graceful restart, helper side: a raw peer (AS 65000) announces one IPv4 and one IPv6
    /// route, drops its connection (a restart) and comes back with an OPEN whose Multiprotocol
    /// capabilities no longer have IPv6 unicast, though its graceful restart capability still
    /// lists it as preserved. That family's stale route can never be refreshed or confirmed by
    /// an End-of-RIB, so it goes as the session comes up; the IPv4 one stays stale until the
    /// peer's IPv4 End-of-RIB.
    #[tokio::test]
    async fn a_peer_back_without_a_family_loses_that_familys_stale_routes_at_once() {
        use crate::testutil::malformed::{update_bytes, AS_PATH4, ORIGIN};
        use crate::wire::{encode_message, Afi, Capability, EncodeOptions, GracefulRestart, GracefulRestartFamily};
        use crate::wire::{Message, Open, Safi};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (p4, p6) = (v4("203.0.113.0/24"), v4("2001:db8:7::/48"));
        let node = Speaker::spawn();
        let tor = PeerConfig { hold_time: 30, ..peer(65000, port, false, &[p4, p6]) };
        node.set_config(gr_config(65101, "192.0.2.1", 0, tor, &[])).await.unwrap();

        let open = |families: &[(Afi, Safi)], restarted: bool| {
            let mut capabilities: Vec<Capability> =
                families.iter().map(|&(afi, safi)| Capability::Multiprotocol { afi, safi }).collect();
            let families = [(Afi::IPV4, Safi::UNICAST), (Afi::IPV6, Safi::UNICAST)];
            capabilities.push(Capability::FourOctetAsn(65000));
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restart_state: restarted,
                notification: false,
                restart_time: 30,
                families: families
                    .iter()
                    .map(|&(afi, safi)| GracefulRestartFamily { afi, safi, forwarding_preserved: true })
                    .collect(),
            }));
            let open = Open { my_as: 65000, hold_time: 30, bgp_id: "192.0.2.2".parse().unwrap(), capabilities };
            let mut out = Vec::new();
            encode_message(&Message::Open(open), &EncodeOptions::default(), &mut out).unwrap();
            encode_message(&Message::Keepalive, &EncodeOptions::default(), &mut out).unwrap();
            out
        };
        let accept = || async {
            let (mut stream, _) =
                tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
            let mut buf = vec![0u8; 4096];
            assert!(stream.read(&mut buf).await.unwrap() >= 29, "the node's OPEN");
            stream
        };
        let both = [(Afi::IPV4, Safi::UNICAST), (Afi::IPV6, Safi::UNICAST)];
        let state = || async { node.summary().await.unwrap()[0].state.clone() };
        let wait = |up: bool| async move {
            for _ in 0..200 {
                if (state().await == "Established") == up {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the session did not {} within 5 s", if up { "come up" } else { "go down" });
        };
        // (prefix, stale) of every path the node holds.
        let paths = || async {
            let routes = node.routes(RouteQuery::All).await.unwrap();
            routes.into_iter().flat_map(|r| r.paths.into_iter().map(move |p| (r.prefix.clone(), p.stale))).collect()
        };

        let mut first = accept().await;
        let mut out = open(&both, false);
        out.extend(update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 4, 127, 0, 0, 1]], &[24, 203, 0, 113]));
        let mut mp_reach = vec![0x80, 14, 28, 0, 2, 1, 16];
        mp_reach.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        mp_reach.extend_from_slice(&[0, 48, 0x20, 0x01, 0x0d, 0xb8, 0, 7]);
        out.extend(update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach], &[]));
        first.write_all(&out).await.unwrap();
        wait(true).await;
        let mut held: Vec<(String, bool)> = Vec::new();
        for _ in 0..200 {
            held = paths().await;
            if held.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let fresh = |stale| vec![("203.0.113.0/24".to_string(), stale), ("2001:db8:7::/48".to_string(), stale)];
        assert_eq!(held, fresh(false), "both routes learned");

        drop(first); // the peer restarts: no NOTIFICATION
        wait(false).await;
        assert_eq!(paths().await, fresh(true), "both kept, stale");

        // Back, with IPv4 unicast only.
        let mut second = accept().await;
        second.write_all(&open(&[(Afi::IPV4, Safi::UNICAST)], true)).await.unwrap();
        wait(true).await;
        assert_eq!(paths().await, [("203.0.113.0/24".to_string(), true)], "IPv6 gone at once, IPv4 waits");

        second.write_all(&update_bytes(&[], &[], &[])).await.unwrap(); // IPv4 End-of-RIB
        let mut left = paths().await;
        for _ in 0..200 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            left = paths().await;
        }
        assert!(left.is_empty(), "the IPv4 route, not refreshed, swept by End-of-RIB: {left:?}");
    }

    /// Graceful restart, restarting side, with peers the first configuration cannot name: an
    /// unnumbered peer appears in a later configuration, once its address is found. The node's
    /// restart waits for it: its FIB stays deferred after the first ToR's End-of-RIB while the
    /// second is awaited by name, and after it is configured until its own End-of-RIB.
    #[tokio::test]
    async fn restart_waits_for_peers_that_a_later_configuration_names() {
        let ports: Vec<u16> =
            (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let mut tors = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let tor = Speaker::spawn();
            let id = format!("192.0.2.{}", 2 + i);
            let announce = if i == 0 { "203.0.113.0/24" } else { "198.51.100.0/24" };
            tor.set_config(gr_config(65001, &id, *port, peer(65101, 0, true, &[]), &[announce])).await.unwrap();
            tors.push(tor);
        }
        let node = Speaker::spawn_with(SpeakerOptions { md5: None, restarting: Some(Duration::from_secs(30)) });
        let import = [v4("203.0.113.0/24"), v4("198.51.100.0/24")];
        let first = gr_config(65101, "192.0.2.1", 0, peer(65001, ports[0], false, &import), &[]);
        let awaiting = SpeakerConfig { awaiting_peers: vec!["unnumbered peer on eth9".into()], ..first.clone() };
        node.set_config(awaiting.clone()).await.unwrap();
        let up = |n: usize| {
            let node = node.clone();
            async move {
                for _ in 0..200 {
                    let s = node.summary().await.unwrap();
                    if s.iter().filter(|p| p.state == "Established").count() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("{n} sessions not Established within 5 s");
            }
        };
        up(1).await;
        // The first ToR's route is in, and its End-of-RIB, sent with it, a moment later.
        wait_fib(&node.fib(), "the first ToR's route", |f| f.get(&import[0]).is_some()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(node.fib().borrow().deferred(), "still waiting for the peer not yet configured");

        // The second peer is found: configured now (and no longer awaited by name). Peers are
        // told apart by address: the second ToR is reached at 127.0.0.2.
        let mut both = first.clone();
        let second = peer(65001, ports[1], false, &import);
        both.peers.push(PeerConfig {
            address: Ipv4Addr::new(127, 0, 0, 2).into(),
            graceful_restart: Some(30),
            ..second
        });
        node.set_config(both).await.unwrap();
        up(2).await;
        let fib = wait_fib(&node.fib(), "deferral over after the second ToR's End-of-RIB", |f| !f.deferred()).await;
        assert_eq!(fib.len(), 2, "{fib:?}");
        drop(tors);
    }

    /// Graceful restart, restarting side: the node's process restarts; the ToR (helper) never
    /// loses the node's prefix; the new node process starts with a deferred FIB (the installer
    /// deletes nothing) that turns complete when the ToR's End-of-RIB arrives.
    #[tokio::test]
    async fn restarting_speaker_defers_its_fib_until_end_of_rib_and_the_helper_keeps_its_routes() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tor = Speaker::spawn();
        let node_prefix = v4("198.51.100.0/24");
        tor.set_config(gr_config(65001, "192.0.2.2", port, peer(65101, 0, true, &[node_prefix]), &["0.0.0.0/0"]))
            .await
            .unwrap();
        let node_config =
            gr_config(65101, "192.0.2.1", 0, peer(65001, port, false, &[default_v4()]), &["198.51.100.0/24"]);
        let node = Speaker::spawn();
        node.set_config(node_config.clone()).await.unwrap();
        let tor_fib = tor.fib();
        wait_fib(&tor_fib, "the node's prefix at the ToR", |f| f.get(&node_prefix).is_some()).await;
        assert!(!node.fib().borrow().deferred(), "an ordinary start defers nothing");

        // Watch the ToR's table through the whole restart: the prefix must never go.
        let watcher = {
            let fib = tor_fib.clone();
            tokio::spawn(async move {
                let mut lost = 0;
                for _ in 0..150 {
                    if fib.borrow().get(&node_prefix).is_none() {
                        lost += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                lost
            })
        };
        node.shutdown(true).await;
        let node = Speaker::spawn_with(SpeakerOptions { md5: None, restarting: Some(Duration::from_secs(30)) });
        assert!(node.fib().borrow().deferred(), "a restart starts deferred");
        node.set_config(node_config).await.unwrap();
        let fib = wait_fib(&node.fib(), "deferral over after the ToR's End-of-RIB", |f| !f.deferred()).await;
        assert!(fib.get(&default_v4()).is_some(), "{fib:?}");
        assert_eq!(watcher.await.unwrap(), 0, "the ToR lost the node's prefix during the restart");
        let routes = tor.routes(RouteQuery::Prefix(node_prefix)).await.unwrap();
        assert!(!routes[0].paths[0].stale, "refreshed by the new process: {routes:?}");
    }

    /// A listener for a peer that reads slowly: a small MSS and receive buffer, so that a few
    /// thousand routes fill what the kernel buffers.
    fn slow_reader_listener() -> (TcpListener, u16) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_tcp_mss(536).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
        socket.listen(1).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(socket.into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Accepts the node's connection, reads its OPEN and answers as AS 65001 (IPv4 unicast,
    /// 4-octet AS) with OPEN and KEEPALIVE.
    async fn accept_as_65001(listener: &TcpListener, hold_time: u16) -> TcpStream {
        use crate::wire::{encode_message, Afi, Capability, EncodeOptions, Message, Open, Safi};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n >= 29, "the node's OPEN");
        let open = Open {
            my_as: 65001,
            hold_time,
            bgp_id: "192.0.2.2".parse().unwrap(),
            capabilities: vec![
                Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
                Capability::FourOctetAsn(65001),
            ],
        };
        let mut out = Vec::new();
        encode_message(&Message::Open(open), &EncodeOptions::default(), &mut out).unwrap();
        encode_message(&Message::Keepalive, &EncodeOptions::default(), &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        stream
    }

    /// A peer that completes its OPEN and then neither reads nor sends: our writes of a table
    /// larger than the socket can hold block, and the session must still end by its hold timer
    /// (3 s) instead of waiting on the write. The peer advertises a small MSS and receive buffer,
    /// so a few thousand routes fill what the kernel buffers.
    #[tokio::test]
    async fn a_peer_that_takes_nothing_ends_by_the_hold_timer_while_a_write_waits() {
        let (listener, port) = slow_reader_listener();

        let node = Speaker::spawn();
        let mut cfg = config(65101, "192.0.2.1", 0, peer(65001, port, false, &[]), false);
        cfg.announcements = (0..200_000u32)
            .map(|i| LocalRoute::new(v4(&format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))))
            .collect();
        node.set_config(cfg).await.unwrap();

        let stream = accept_as_65001(&listener, 3).await;
        // The hold timer runs from the KEEPALIVE: the session cannot end by it before 3 s from
        // here. (Measured from here, not from when the summary first said Established: the
        // speaker answers that only after encoding the table, late in a loaded debug build.)
        let keepalive_sent = std::time::Instant::now();
        // From here on the peer takes nothing (the stream stays open, unread, until the end).

        let state = || async { node.summary().await.unwrap()[0].state.clone() };
        let mut established = false;
        for _ in 0..100 {
            established = state().await == "Established";
            if established {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(established, "the session came up: {}", state().await);
        let up = std::time::Instant::now();
        let mut left = None;
        while up.elapsed() < Duration::from_secs(10) {
            if state().await != "Established" {
                left = Some(keepalive_sent.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = left.unwrap_or_else(|| panic!("still Established 10 s after the peer stopped (hold time 3 s)"));
        assert!(left >= Duration::from_millis(2900), "down {left:?} after the peer's KEEPALIVE, before the hold time");

        // The NOTIFICATION queued behind the table cannot leave either: the closed connection's
        // writer gets 2 s (CLOSE_GRACE), then our socket is closed, not kept for the send hold
        // time (8 min). A closed socket with data still unsent stays in /proc/net/tcp as an
        // orphan, without an inode.
        let (ours, theirs) = (stream.peer_addr().unwrap().port(), port);
        let down = std::time::Instant::now();
        let mut closed = None;
        while down.elapsed() < Duration::from_secs(6) {
            if socket_inode(ours, theirs).is_none_or(|inode| inode == 0) {
                closed = Some(down.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if closed.is_none() {
            panic!("our end (port {ours}) still open 6 s after the session ended: {:?}", socket_inode(ours, theirs));
        }
        drop(stream);
    }

    /// A peer that stops reading while our announcements keep changing: the changes wait
    /// instead of piling up in our memory (the queue does not grow past what the first export
    /// put there), and once the peer reads again it receives their net effect: exactly the
    /// last set of announcements.
    #[tokio::test]
    async fn route_changes_for_a_peer_that_does_not_read_wait_and_go_as_one_difference() {
        use crate::testutil::malformed::ebgp4;
        use crate::wire::{decode_message, Message};
        use tokio::io::AsyncReadExt;

        let (listener, port) = slow_reader_listener();

        // Round r announces 10.r.x.y/32 for 40,000 routes: every round replaces all of them.
        let routes = |round: u32| -> Vec<LocalRoute> {
            (0..40_000u32).map(|i| LocalRoute::new(v4(&format!("10.{round}.{}.{}/32", i >> 8, i & 255)))).collect()
        };
        let node = Speaker::spawn();
        let mut cfg =
            config(65101, "192.0.2.1", 0, PeerConfig { hold_time: 60, ..peer(65001, port, false, &[]) }, false);
        cfg.announcements = routes(0);
        node.set_config(cfg.clone()).await.unwrap();

        let mut stream = accept_as_65001(&listener, 60).await;
        let mut received = Vec::new(); // what the node sends after its OPEN

        // The first export is queued whole; the peer has read almost none of it.
        let queued = || async { node.summary().await.unwrap()[0].out_queue };
        let mut first = 0;
        for _ in 0..200 {
            first = queued().await;
            if first > OUT_QUEUE_HIGH as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(first > OUT_QUEUE_HIGH as u64, "the first export is queued: {first} bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = queued().await;

        for round in 1..=10 {
            cfg.announcements = routes(round);
            node.set_config(cfg.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = queued().await;
        // Each round would have queued ~450 KB (40,000 withdrawals and 40,000 announcements).
        assert!(after <= first + 64, "the queue grew from {first} to {after} bytes while the peer read nothing");

        // The peer reads again: what it ends up with is exactly round 10's routes. Meanwhile
        // something asks for the summary every 20 ms: events more often than the retry interval
        // must not keep putting the held-back export off.
        let poller = {
            let node = node.clone();
            tokio::spawn(async move {
                loop {
                    let _ = node.summary().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let want: BTreeSet<Prefix> = routes(10).into_iter().map(|r| r.prefix).collect();
        let mut have: BTreeSet<Prefix> = BTreeSet::new();
        let mut start = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut chunk = vec![0u8; 64 * 1024];
        while have != want {
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                other => panic!("reading stopped ({other:?}) with {} routes, {} wanted", have.len(), want.len()),
            };
            received.extend_from_slice(&chunk[..n]);
            while let Some((message, len)) = decode_message(&received[start..], &ebgp4()).unwrap() {
                if let Message::Update(u) = message {
                    for p in u.withdrawn.iter() {
                        have.remove(&p);
                    }
                    have.extend(u.nlri.iter());
                }
                start += len;
            }
        }
        // And nothing after it undoes that.
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await {
            assert!(n > 0, "the node closed the session");
            received.extend_from_slice(&chunk[..n]);
            while let Some((message, len)) = decode_message(&received[start..], &ebgp4()).unwrap() {
                assert!(!matches!(message, Message::Update(_)), "an UPDATE after the last round's routes");
                start += len;
            }
        }
        poller.abort();
        assert_eq!(node.summary().await.unwrap()[0].state, "Established");
    }

    /// The inode of the IPv4 TCP socket from local port `local` to remote port `remote` in
    /// /proc/net/tcp: 0 once no file descriptor holds it (an orphan), None when it is gone.
    fn socket_inode(local: u16, remote: u16) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let matches = fields.len() > 9 && port(fields[1]) == Some(local) && port(fields[2]) == Some(remote);
            matches.then(|| fields[9].parse().unwrap_or(0))
        })
    }

    /// A speaker (AS 65101) accepting one dynamic neighbor from 127.0.0.0/8 configured from
    /// `template`, on a free loopback port.
    async fn listening_for_127_0_0_0_8(template: PeerConfig) -> (Speaker, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Speaker::spawn();
        let range = ListenRange { prefix: v4("127.0.0.0/8"), limit: 1, template };
        let server_config = SpeakerConfig {
            local_asn: 65101,
            router_id: "192.0.2.1".parse().unwrap(),
            listen_port: port,
            install_routes: true,
            peers: Vec::new(),
            listen: vec![range],
            announcements: Vec::new(),
            awaiting_peers: Vec::new(),
        };
        server.set_config(server_config).await.unwrap();
        (server, port)
    }

    /// A dynamic neighbor with graceful restart whose host restarted (its old connection still
    /// Established here) comes back with a new OPEN: the new connection replaces the old one and
    /// the neighbor stays (it was removed, and the new connection Ceased with it).
    #[tokio::test]
    async fn a_dynamic_neighbor_that_restarted_reconnects_under_graceful_restart() {
        use crate::wire::{encode_message, Afi, Capability, EncodeOptions, GracefulRestart, Message, Open, Safi};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let template = PeerConfig { passive: true, graceful_restart: Some(30), ..peer(65200, 0, true, &[]) };
        let (server, port) = listening_for_127_0_0_0_8(template).await;
        let open = Open {
            my_as: 65200,
            hold_time: 0,
            bgp_id: "192.0.2.9".parse().unwrap(),
            capabilities: vec![
                Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
                Capability::FourOctetAsn(65200),
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: true,
                    notification: false,
                    restart_time: 30,
                    families: vec![],
                }),
            ],
        };
        let mut hello = Vec::new();
        encode_message(&Message::Open(open), &EncodeOptions::default(), &mut hello).unwrap();
        encode_message(&Message::Keepalive, &EncodeOptions::default(), &mut hello).unwrap();
        let established = || async {
            for _ in 0..200 {
                let s = server.summary().await.unwrap();
                if s.len() == 1 && s[0].state == "Established" {
                    return s[0].flaps;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("not Established: {:?}", server.summary().await.unwrap());
        };

        let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        first.write_all(&hello).await.unwrap();
        assert_eq!(established().await, 0);
        // The host restarts; its old connection is never closed towards us.
        let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        second.write_all(&hello).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut first_ended = false;
        for _ in 0..40 {
            match tokio::time::timeout(Duration::from_millis(100), first.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    first_ended = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(first_ended, "the old connection is closed");
        assert_eq!(established().await, 1, "Established again, on the new connection, after one flap");
        // And it stays: the new connection is not Ceased a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = server.summary().await.unwrap();
        assert_eq!((s.len(), s[0].state.as_str()), (1, "Established"), "{s:?}");
        drop(second);
    }

    /// A listen range accepts a session from any address in it, with the template's settings;
    /// the neighbor goes when its session does.
    #[tokio::test]
    async fn listen_range_accepts_a_dynamic_neighbor() {
        let template = PeerConfig { passive: true, ..peer(65200, 0, true, &[v4("203.0.113.0/24")]) };
        let (server, port) = listening_for_127_0_0_0_8(template).await;
        let vm = Speaker::spawn();
        vm.set_config(config(65200, "192.0.2.9", 0, peer(65101, port, false, &[]), false)).await.unwrap();
        let vm_config = SpeakerConfig {
            announcements: vec![LocalRoute::new(v4("203.0.113.0/24"))],
            ..config(65200, "192.0.2.9", 0, peer(65101, port, false, &[]), false)
        };
        vm.set_config(vm_config).await.unwrap();
        wait_fib(&server.fib(), "the VM's route via the dynamic neighbor", |f| f.get(&v4("203.0.113.0/24")).is_some())
            .await;
        let summary = server.summary().await.unwrap();
        assert_eq!(summary.len(), 1);
        assert_eq!((summary[0].state.as_str(), summary[0].dynamic.as_deref()), ("Established", Some("127.0.0.0/8")));

        drop(vm);
        let mut left = server.summary().await.unwrap();
        for _ in 0..200 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            left = server.summary().await.unwrap();
        }
        assert!(left.is_empty(), "the dynamic neighbor is removed with its session: {left:?}");
        wait_fib(&server.fib(), "its routes withdrawn", |f| f.is_empty()).await;
    }
}
