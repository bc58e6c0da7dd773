//! The speaker task: owns the RIB and the table of peer tasks, applies configuration changes
//! (peers added, removed or changed; announcements), decodes accepted UPDATEs into the RIB,
//! exports the node's own routes to every established peer, publishes the forwarding table
//! for the kernel-route installer ([`Speaker::fib`]) and answers `show` queries.
//! It never reads a socket itself (peer tasks and the listener do), nor writes a kernel route.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::fib::{is_link_local, Fib};
use super::peer::{PeerAddressing, PeerCmd, PeerEvent, PeerStatus, PeerTask};
use crate::policy::{ExportPolicy, ImportPolicy, MaxPrefixAction};
use crate::rib::{ExportSession, LocalRoute, PeerId, PeerInfo, PrefixView, Rib, RibConfig, RouteChange, Source};
use crate::session::{Negotiated, Session, SessionConfig, State};
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
    pub announcements: Vec<LocalRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub port: u16,
    pub asn: u32,
    pub passive: bool,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub import: ImportPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot listen for BGP on port {port}: {source}; set [bgp] listen_port to a free port, or 0 to accept no incoming sessions")]
    Listen { port: u16, source: std::io::Error },
    #[error("peer {peer}: {source}")]
    Peer { peer: IpAddr, source: crate::session::ConfigError },
    #[error("the BGP speaker task has stopped")]
    Gone,
}

/// One neighbor as `show bgp summary` prints it. JSON keys are documented in the README.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NeighborSummary {
    pub address: IpAddr,
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
    /// Times the session left Established.
    pub flaps: u64,
    pub hold_time: Option<u16>,
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
    /// `local` for the node's own announcement, else the peer's address.
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
        let (tx, rx) = mpsc::channel(16);
        let (fib_tx, fib) = watch::channel(Arc::new(Fib::new()));
        tokio::spawn(SpeakerTask::new(fib_tx).run(rx));
        Speaker { tx, fib }
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
}

struct Listener {
    port: u16,
    task: JoinHandle<()>,
}

struct SpeakerTask {
    config: Option<SpeakerConfig>,
    rib: Option<Rib>,
    peers: BTreeMap<IpAddr, PeerSlot>,
    next_id: u32,
    listener: Option<Listener>,
    events_tx: mpsc::Sender<PeerEvent>,
    events_rx: mpsc::Receiver<PeerEvent>,
    accept_tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    accept_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// The forwarding table, updated in place from every batch of Loc-RIB changes.
    fib: watch::Sender<Arc<Fib>>,
}

impl SpeakerTask {
    fn new(fib: watch::Sender<Arc<Fib>>) -> SpeakerTask {
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
        loop {
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
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.event(event).await,
                Some((stream, remote)) = self.accept_rx.recv() => self.accepted(stream, remote).await,
            }
        }
        // Dropping the peers' command senders makes each send Cease and end.
        let tasks: Vec<_> = std::mem::take(&mut self.peers).into_values().map(|s| s.task).collect();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(l) = self.listener.take() {
            l.task.abort();
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
        if identity_changed {
            // Every session carries the local AS and router id in its OPEN: start over.
            if !self.peers.is_empty() {
                info!(asn = config.local_asn, router_id = %config.router_id, "local AS or router id changed; resetting every session");
            }
            self.stop_all_peers();
            self.rib = Some(Rib::new(RibConfig::new(config.local_asn, config.router_id)));
            self.fib.send_if_modified(|fib| Arc::make_mut(fib).clear());
        }
        self.listen(config.listen_port).await?;

        // Validate every peer before touching anything, so a bad one changes nothing.
        let mut sessions = BTreeMap::new();
        for p in &config.peers {
            let session = Session::new(session_config(&config, p))
                .map_err(|source| SpeakerError::Peer { peer: p.address, source })?;
            sessions.insert(p.address, session);
        }
        let wanted: BTreeMap<IpAddr, &PeerConfig> = config.peers.iter().map(|p| (p.address, p)).collect();
        let stale: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(addr, slot)| wanted.get(addr).is_none_or(|p| **p != slot.config))
            .map(|(addr, _)| *addr)
            .collect();
        for addr in stale {
            self.remove_peer(addr).await;
        }
        for (addr, session) in sessions {
            if !self.peers.contains_key(&addr) {
                self.add_peer(wanted[&addr].clone(), session);
            }
        }

        let rib = self.rib.as_mut().expect("created above");
        let changes = rib.set_local_routes(config.announcements.clone(), Instant::now());
        if !changes.is_empty() {
            info!(prefixes = changes.len(), "announcements changed");
        }
        self.publish(&changes);
        self.config = Some(config);
        self.export_all().await;
        Ok(())
    }

    async fn listen(&mut self, port: u16) -> Result<(), SpeakerError> {
        if self.listener.as_ref().map(|l| l.port) == Some(port) {
            return Ok(());
        }
        if let Some(old) = self.listener.take() {
            old.task.abort();
        }
        if port == 0 {
            return Ok(());
        }
        // [::] also accepts IPv4 (as mapped addresses) unless the host set bindv6only.
        let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .await
            .map_err(|source| SpeakerError::Listen { port, source })?;
        info!(port, "listening for BGP sessions");
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
        self.listener = Some(Listener { port, task });
        Ok(())
    }

    async fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let ip = remote.ip().to_canonical();
        match self.peers.get(&ip) {
            Some(slot) => {
                let _ = slot.cmd.send(PeerCmd::Inbound(stream)).await;
            }
            None => {
                // Not a configured neighbor: close at once (dropping the stream), as routers do.
                debug!(%remote, "refused a BGP connection from an address that is not a configured peer");
            }
        }
    }

    fn add_peer(&mut self, config: PeerConfig, session: Session) {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let addressing = PeerAddressing {
            remote: SocketAddr::new(config.address, config.port),
            connect_timeout: config.connect_retry,
        };
        let (task, status) = PeerTask::new(session, addressing, self.events_tx.clone());
        let (cmd, cmd_rx) = mpsc::channel(64);
        let span = tracing::info_span!("bgp_peer", peer = %config.address);
        let handle = tokio::spawn(task.run(cmd_rx).instrument(span));
        info!(peer = %config.address, asn = config.asn, "BGP peer added");
        self.peers.insert(
            config.address,
            PeerSlot { id, config, cmd, status, task: handle, up: false, registered: None, ifindex: None },
        );
    }

    async fn remove_peer(&mut self, addr: IpAddr) {
        let Some(slot) = self.peers.remove(&addr) else { return };
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
                if let Some((info, session, negotiated)) = self.peers.get(&peer).and_then(|s| s.registered.clone()) {
                    if let Some(rib) = self.rib.as_mut() {
                        let import = self.peers[&peer].config.import.clone();
                        rib.peer_up(info, import, ExportPolicy::default(), session);
                        self.export_to(peer, &negotiated).await;
                    }
                }
            }
            PeerEvent::Down { peer, was_established, .. } => {
                let Some(slot) = self.peers.get_mut(&peer) else { return };
                if was_established || slot.up {
                    slot.up = false;
                    slot.registered = None;
                    if let Some(rib) = self.rib.as_mut() {
                        match rib.peer_down(slot.id) {
                            Ok(changes) => {
                                debug!(%peer, withdrawn = changes.len(), "routes of the peer removed");
                                self.publish(&changes);
                            }
                            Err(err) => debug!(%peer, %err, "peer down"),
                        }
                    }
                }
            }
        }
    }

    async fn established(&mut self, peer: IpAddr, negotiated: Negotiated, local: SocketAddr) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        let Some(rib) = self.rib.as_mut() else { return };
        if negotiated.families.is_empty() {
            warn!(%peer, "session established without any address family in common; nothing will be exchanged");
        }
        let info = PeerInfo {
            id: slot.id,
            addr: peer,
            asn: negotiated.peer_asn,
            router_id: negotiated.peer_router_id,
            ebgp: negotiated.ebgp,
        };
        let session = export_session(local.ip(), &negotiated);
        rib.peer_up(info, slot.config.import.clone(), ExportPolicy::default(), session.clone());
        slot.up = true;
        slot.registered = Some((info, session, negotiated.clone()));
        slot.ifindex = match local {
            // A link-local session names its interface in the scope id.
            SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
            _ => interface_index(local.ip().to_canonical()),
        };
        if slot.ifindex.is_none() {
            debug!(%peer, local = %local.ip(), "no interface holds the session's local address; link-local next hops from this peer cannot be installed");
        }
        self.export_to(peer, &negotiated).await;
    }

    async fn update(&mut self, peer: IpAddr, message: &[u8], opts: DecodeOptions) {
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
        match rib.apply_update(slot.id, &update, Instant::now()) {
            Ok(outcome) => {
                self.publish(&outcome.changes);
                if let Some(family) = outcome.end_of_rib {
                    debug!(%peer, %family, "End-of-RIB received");
                }
                if outcome.treat_as_withdraw {
                    warn!(%peer, faults = ?update.faults, "malformed UPDATE handled as withdraw (RFC 7606)");
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
    }

    async fn export_all(&mut self) {
        let up: Vec<(IpAddr, Negotiated)> = self
            .peers
            .iter()
            .filter_map(|(addr, s)| s.registered.as_ref().map(|(_, _, n)| (*addr, n.clone())))
            .collect();
        for (addr, negotiated) in up {
            self.export_to(addr, &negotiated).await;
        }
    }

    async fn export_to(&mut self, peer: IpAddr, negotiated: &Negotiated) {
        let (Some(slot), Some(rib)) = (self.peers.get(&peer), self.rib.as_mut()) else { return };
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
                    asn: slot.config.asn,
                    state: status.state.to_string(),
                    uptime_s: c.established_since.map(|t| t.elapsed().as_secs()),
                    received: counters.received,
                    accepted: counters.accepted as u64,
                    rejected: counters.rejected,
                    sent: counters.sent as u64,
                    messages_in: c.received.total(),
                    messages_out: c.sent.total(),
                    flaps,
                    hold_time: status.negotiated.as_ref().map(|n| n.hold_time),
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
        views.into_iter().map(route_entry).collect()
    }
}

fn route_entry(view: PrefixView) -> RouteEntry {
    let paths = view
        .paths
        .iter()
        .map(|p| {
            let a = &p.attrs.attributes;
            PathEntry {
                from: match (p.source, p.peer_addr) {
                    (Source::Local, _) => "local".into(),
                    (_, Some(addr)) => addr.to_string(),
                    (Source::Peer(id), None) => id.to_string(),
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

fn session_config(speaker: &SpeakerConfig, peer: &PeerConfig) -> SessionConfig {
    let mut config = SessionConfig::new(speaker.local_asn, speaker.router_id, peer.asn, peer.address);
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
            announcements: if announce { vec![LocalRoute::new(default_v4())] } else { Vec::new() },
        }
    }

    fn peer(asn: u32, port: u16, passive: bool, import: &[Prefix]) -> PeerConfig {
        PeerConfig {
            address: Ipv4Addr::LOCALHOST.into(),
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
        }
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
}
