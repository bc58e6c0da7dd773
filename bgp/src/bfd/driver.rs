//! The tokio side of BFD (RFC 5881): the only part of [`crate::bfd`] that owns sockets, the
//! clock and randomness. One task runs every [`Session`]; clients talk to it through the
//! clonable [`Bfd`] handle and read each session's [`BfdStatus`] from a `watch` channel.
//!
//! ```text
//!   clients (BGP peer drivers, `show bfd peers`)
//!        │ Bfd::add / remove / sessions / counters       (mpsc + oneshot replies)
//!        ▼
//!   ┌──────────────────── bfd task ────────────────────┐  Send ──▶ per-session UDP socket
//!   │ owns every Session, its discriminator and timers │           (source port 49152-65535,
//!   │ sleeps until the earliest next_deadline()        │            TTL / hop limit 255)
//!   └──────────────────────────────────────────────────┘
//!        ▲ recvmsg: payload, source, ifindex, TTL     │ BfdStatus (watch), one per session
//!   UDP 3784 receive sockets, IPv4 and IPv6           ▼
//!   (GTSM: TTL / hop limit must be 255)          clients
//! ```
//!
//! Received packets are dropped unless they arrive with a TTL or hop limit of 255 (RFC 5881
//! 5, RFC 5082), decode, and demultiplex: by Your Discriminator, then checked against the
//! session's peer address and interface; while Your Discriminator is 0, by source address and
//! receiving interface. It must not interpret a session's state for its clients beyond
//! [`BfdStatus::is_failure`]; what a failure means is theirs to decide.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::BuildHasher;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Span};

use super::packet::{ControlPacket, Diag, State, CONTROL_PORT};
use super::session::{ConfigError, Counters, Input, Output, Session, SessionConfig, Timers};

/// The TTL / hop limit single-hop BFD sends with and requires on reception (GTSM).
pub const GTSM_TTL: u8 = 255;
/// Source ports of BFD Control packets (RFC 5881 4).
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// DSCP CS6 (network control), as FRR and BIRD mark BFD.
const TOS_CS6: i32 = 0xc0;

/// One BFD session to run: a directly connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdPeer {
    pub peer: IpAddr,
    /// Source address; the kernel picks one when `None`.
    pub local: Option<IpAddr>,
    /// The interface towards the peer. Required for an IPv6 link-local peer (it is the
    /// scope); otherwise it pins the session to that interface.
    pub ifindex: Option<u32>,
    /// Desired Min TX and Required Min RX.
    pub interval: Duration,
    /// Detect Mult: packets the peer may miss before we declare it down.
    pub multiplier: u8,
}

impl BfdPeer {
    pub fn new(peer: IpAddr, interval: Duration, multiplier: u8) -> BfdPeer {
        BfdPeer { peer, local: None, ifindex: None, interval, multiplier }
    }

    pub fn local(mut self, local: IpAddr) -> BfdPeer {
        self.local = Some(local);
        self
    }

    pub fn interface(mut self, ifindex: u32) -> BfdPeer {
        self.ifindex = Some(ifindex);
        self
    }

    fn key(&self) -> Key {
        Key { peer: self.peer, ifindex: self.ifindex }
    }

    fn check(&self) -> Result<Timers, BfdError> {
        let peer = self.peer;
        if let IpAddr::V6(v6) = peer {
            if v6.is_unicast_link_local() && self.ifindex.is_none() {
                return Err(BfdError::LinkLocalWithoutInterface { peer });
            }
        }
        if let Some(local) = self.local {
            if local.is_ipv4() != peer.is_ipv4() {
                return Err(BfdError::FamilyMismatch { peer, local });
            }
        }
        Timers::symmetric(self.interval, self.multiplier).map_err(|source| BfdError::Config { peer, source })
    }
}

/// Sessions are identified by peer address and interface: unnumbered fabrics reuse the same
/// link-local address (fe80::1) on every link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    peer: IpAddr,
    ifindex: Option<u32>,
}

/// A session as its clients see it, published on the `watch` returned by [`Bfd::add`]. The
/// channel is notified when the state, diagnostics, discriminators or timers change (the
/// counters and `last_received` are updated silently); after a removal it holds the final
/// AdminDown status and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdStatus {
    pub peer: IpAddr,
    pub ifindex: Option<u32>,
    pub state: State,
    /// Why the state last changed (bfd.LocalDiag).
    pub diag: Diag,
    /// Down because the peer signalled AdminDown: an operator action, not a path failure
    /// (RFC 5882 3.2). A client keeps its own session up.
    pub peer_admin_down: bool,
    pub remote_state: State,
    pub remote_diag: Diag,
    pub local_discr: u32,
    /// 0 while the peer is unknown.
    pub remote_discr: u32,
    /// How long the peer may stay silent; `None` until it is heard.
    pub detection_time: Option<Duration>,
    /// The negotiated interval between our packets, before jitter.
    pub transmit_interval: Option<Duration>,
    pub counters: Counters,
    /// When the state last changed (the session's creation counts).
    pub last_change: Instant,
    /// When the peer's last packet arrived, while it counts for the detection time.
    pub last_received: Option<Instant>,
}

impl BfdStatus {
    /// The path failed: Down after the Detection Time expired or the peer reported its own
    /// session Down, and not because the peer was administratively disabled. A `watch`
    /// keeps only the latest value, so a client that must react to every failure, even one
    /// already healed when it looks, compares [`Counters::failures`] instead.
    pub fn is_failure(&self) -> bool {
        self.state == State::Down && !self.peer_admin_down && self.diag != Diag::NONE
    }

    fn new(key: Key, session: &Session) -> BfdStatus {
        let remote = session.remote();
        BfdStatus {
            peer: key.peer,
            ifindex: key.ifindex,
            state: session.state(),
            diag: session.diag(),
            peer_admin_down: session.peer_admin_down(),
            remote_state: remote.state,
            remote_diag: remote.diag,
            local_discr: session.local_discr(),
            remote_discr: remote.discr,
            detection_time: session.detection_time(),
            transmit_interval: session.transmit_interval(),
            counters: *session.counters(),
            last_change: session.last_change(),
            last_received: session.last_received(),
        }
    }
}

/// One row of `show bfd peers --json`. Intervals are in microseconds, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BfdSummary {
    pub peer: IpAddr,
    pub ifindex: Option<u32>,
    pub local: Option<IpAddr>,
    pub state: State,
    pub diag: Diag,
    pub peer_admin_down: bool,
    pub remote_state: State,
    pub remote_diag: Diag,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    pub multiplier: u8,
    pub remote_multiplier: u8,
    /// What we advertise (at least one second while not Up).
    pub desired_min_tx_us: u64,
    pub required_min_rx_us: u64,
    pub remote_desired_min_tx_us: u64,
    pub remote_required_min_rx_us: u64,
    pub transmit_interval_us: Option<u64>,
    pub detection_time_us: Option<u64>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub transitions: u64,
    pub up_transitions: u64,
    pub failures: u64,
    /// Milliseconds since the state last changed.
    pub since_change_ms: u64,
}

/// Packets the receive sockets dropped before any session saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriverCounters {
    pub received: u64,
    /// TTL or hop limit other than 255 (or none reported): not from a direct neighbor.
    pub dropped_ttl: u64,
    /// Not a Control packet we accept ([`super::DecodeError`]).
    pub dropped_malformed: u64,
    /// No session for its discriminator, or from another address or interface than the
    /// session's peer.
    pub dropped_no_session: u64,
    pub send_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    #[error("cannot open the BFD receive socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("BFD peer {peer}: cannot open its sending socket: {source}")]
    Socket {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("BFD peer {peer}: {source}")]
    Config {
        peer: IpAddr,
        #[source]
        source: ConfigError,
    },
    #[error("BFD peer {peer} is link-local: give the interface (ifindex) it is reached on")]
    LinkLocalWithoutInterface { peer: IpAddr },
    #[error("BFD peer {peer}: local address {local} is of the other address family")]
    FamilyMismatch { peer: IpAddr, local: IpAddr },
    #[error("the BFD task has stopped")]
    Stopped,
}

enum Cmd {
    Add(BfdPeer, oneshot::Sender<Result<watch::Receiver<BfdStatus>, BfdError>>),
    Remove(Key, oneshot::Sender<bool>),
    Sessions(oneshot::Sender<Vec<BfdSummary>>),
    Counters(oneshot::Sender<DriverCounters>),
}

/// Handle to the BFD task. Clones share the task; it stops, sending AdminDown on every
/// session, when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Bfd {
    cmds: mpsc::Sender<Cmd>,
}

impl Bfd {
    /// Opens the receive sockets (UDP 3784 on IPv4 and IPv6, in the network namespace of the
    /// calling thread) and spawns the task. Must be called inside a tokio runtime. Fails only when
    /// neither family's socket opens: one that does not (IPv6 disabled at boot, the port held by
    /// another daemon for one family) is tried again whenever a session of its family is added,
    /// which fails until it opens, while the other family works.
    pub fn spawn() -> Result<Bfd, BfdError> {
        let (rx4, rx6) = match (rx_socket(listen_addr(true)), rx_socket(listen_addr(false))) {
            (Err(err), Err(_)) => return Err(err),
            (rx4, rx6) => (rx4, rx6),
        };
        for err in [rx4.as_ref().err(), rx6.as_ref().err()].into_iter().flatten() {
            warn!(%err, "BFD of this address family waits for its receive socket (tried again with each session added)");
        }
        let (cmds, cmd_rx) = mpsc::channel(64);
        let task = Task {
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            retiring: Vec::new(),
            counters: DriverCounters::default(),
        };
        tokio::spawn(task.run(rx4.ok(), rx6.ok(), cmd_rx));
        Ok(Bfd { cmds })
    }

    /// Starts a session (it sends its first packet at once) and returns its status. Adding
    /// a peer that exists (same address and interface) updates its interval, multiplier
    /// and source address in place (timers through a Poll Sequence) and returns another
    /// receiver of the same status.
    pub async fn add(&self, peer: BfdPeer) -> Result<watch::Receiver<BfdStatus>, BfdError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Add(peer, reply)).await.map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)?
    }

    /// Sends AdminDown to the peer and forgets the session; its status channel closes.
    /// Returns false when there was no such session.
    pub async fn remove(&self, peer: IpAddr, ifindex: Option<u32>) -> Result<bool, BfdError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Remove(Key { peer, ifindex }, reply)).await.map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)
    }

    /// Every session, sorted by peer address then interface.
    pub async fn sessions(&self) -> Result<Vec<BfdSummary>, BfdError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Sessions(reply)).await.map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)
    }

    pub async fn counters(&self) -> Result<DriverCounters, BfdError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Counters(reply)).await.map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)
    }
}

struct Entry {
    peer: BfdPeer,
    session: Session,
    tx: StdUdpSocket,
    dest: SocketAddr,
    status: watch::Sender<BfdStatus>,
    span: Span,
}

impl Entry {
    /// The packet came from this session's peer, on its interface if it has one.
    fn matches(&self, source: IpAddr, ifindex: Option<u32>) -> bool {
        self.peer.peer == source && self.peer.ifindex.is_none_or(|i| Some(i) == ifindex)
    }

    /// Runs one input through the session, sends what it says and publishes the status.
    fn handle(&mut self, now: Instant, input: Input, counters: &mut DriverCounters) {
        let _span = self.span.enter();
        for output in self.session.handle(now, input) {
            match output {
                Output::Send(packet) => {
                    if let Err(err) = self.tx.send_to(&packet.encode(), self.dest) {
                        counters.send_errors += 1;
                        debug!(dest = %self.dest, %err, "BFD packet not sent");
                    }
                }
                Output::StateChanged { from, to, diag, peer_admin_down } => {
                    if to == State::Down && from == State::Up && !peer_admin_down {
                        warn!(%from, %to, %diag, "BFD session down");
                    } else {
                        info!(%from, %to, %diag, peer_admin_down, "BFD session state changed");
                    }
                }
            }
        }
        let session = &self.session;
        let key = self.peer.key();
        self.status.send_if_modified(|status| {
            let new = BfdStatus::new(key, session);
            let notify =
                BfdStatus { counters: status.counters, last_received: status.last_received, ..new.clone() } != *status;
            *status = new;
            notify
        });
    }

    fn summary(&self, now: Instant) -> BfdSummary {
        let s = &self.session;
        let remote = s.remote();
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let counters = s.counters();
        BfdSummary {
            peer: self.peer.peer,
            ifindex: self.peer.ifindex,
            local: self.peer.local,
            state: s.state(),
            diag: s.diag(),
            peer_admin_down: s.peer_admin_down(),
            remote_state: remote.state,
            remote_diag: remote.diag,
            local_discriminator: s.local_discr(),
            remote_discriminator: remote.discr,
            multiplier: s.config().timers.detect_mult(),
            remote_multiplier: remote.detect_mult,
            desired_min_tx_us: us(s.desired_min_tx()),
            required_min_rx_us: us(s.config().timers.required_min_rx()),
            remote_desired_min_tx_us: us(remote.desired_min_tx),
            remote_required_min_rx_us: us(remote.required_min_rx),
            transmit_interval_us: s.transmit_interval().map(us),
            detection_time_us: s.detection_time().map(us),
            packets_in: counters.packets_in,
            packets_out: counters.packets_out,
            transitions: counters.transitions,
            up_transitions: counters.up_transitions,
            failures: counters.failures,
            since_change_ms: u64::try_from(now.saturating_duration_since(s.last_change()).as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

/// One received datagram's envelope.
struct Datagram {
    len: usize,
    truncated: bool,
    source: Option<SocketAddr>,
    ifindex: Option<u32>,
    ttl: Option<i32>,
}

struct Task {
    /// By local discriminator.
    sessions: HashMap<u32, Entry>,
    by_key: HashMap<Key, u32>,
    /// Removed sessions still sending AdminDown until the time given ([`RETIRE_TIME`]).
    retiring: Vec<(Entry, Instant)>,
    counters: DriverCounters,
}

/// How long a removed session keeps sending AdminDown (at the slow rate, about one packet a
/// second): a single lost packet would make the peer see a detection-time failure instead of an
/// administrative shutdown (RFC 5882 3.2).
const RETIRE_TIME: Duration = Duration::from_secs(3);

/// Largest datagram read; anything longer than a Control packet with authentication is
/// not BFD and is dropped as truncated.
const RECV_BUF: usize = 512;

/// Datagrams read per socket before expiring deadlines (see [`Task::run`]).
const DRAIN_MAX: usize = 256;

impl Task {
    async fn run(mut self, mut rx4: Option<UdpSocket>, mut rx6: Option<UdpSocket>, mut cmds: mpsc::Receiver<Cmd>) {
        let mut buf4 = [0u8; RECV_BUF];
        let mut buf6 = [0u8; RECV_BUF];
        let mut cmsg4 = nix::cmsg_space!(i32, nix::libc::in_pktinfo);
        let mut cmsg6 = nix::cmsg_space!(i32, nix::libc::in6_pktinfo);
        loop {
            let retiring = self.retiring.iter().flat_map(|(e, until)| [e.session.next_deadline(), Some(*until)]);
            let deadline = self.sessions.values().map(|e| e.session.next_deadline()).chain(retiring).flatten().min();
            let sleep = crate::driver::sleep_until(deadline);
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    // A session of a family whose receive socket did not open: open it now, or
                    // refuse the session (the caller retries).
                    Some(Cmd::Add(peer, reply)) => {
                        let slot = if peer.peer.is_ipv4() { &mut rx4 } else { &mut rx6 };
                        match open_rx(slot, peer.peer.is_ipv4()) {
                            Ok(()) => self.command(Cmd::Add(peer, reply)),
                            Err(err) => {
                                let _ = reply.send(Err(err));
                            }
                        }
                    }
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                got = recv_opt(rx4.as_ref(), &mut buf4, &mut cmsg4) => self.datagram(got, &buf4),
                got = recv_opt(rx6.as_ref(), &mut buf6, &mut cmsg6) => self.datagram(got, &buf6),
                _ = sleep => {
                    // A late wake-up (the runtime is shared with BGP and the rest of the daemon)
                    // may find the peers' packets already queued beside the expired deadline:
                    // read them first, so that this task's own stall is not taken for the
                    // peers' silence. Bounded, so that a flood cannot hold the timers off.
                    if let Some(rx4) = &rx4 {
                        self.drain(rx4.as_raw_fd(), &mut buf4, &mut cmsg4);
                    }
                    if let Some(rx6) = &rx6 {
                        self.drain(rx6.as_raw_fd(), &mut buf6, &mut cmsg6);
                    }
                    self.tick(Instant::now())
                }
            }
        }
        // Every handle is gone: tell every peer we are going away.
        let now = Instant::now();
        for entry in self.sessions.values_mut() {
            entry.handle(now, Input::AdminDown, &mut self.counters);
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(peer, reply) => {
                let _ = reply.send(self.add(peer));
            }
            Cmd::Remove(key, reply) => {
                let _ = reply.send(self.remove(key));
            }
            Cmd::Sessions(reply) => {
                let now = Instant::now();
                let mut all: Vec<BfdSummary> = self.sessions.values().map(|e| e.summary(now)).collect();
                all.sort_by_key(|s| (s.peer, s.ifindex));
                let _ = reply.send(all);
            }
            Cmd::Counters(reply) => {
                let _ = reply.send(self.counters);
            }
        }
    }

    fn add(&mut self, peer: BfdPeer) -> Result<watch::Receiver<BfdStatus>, BfdError> {
        let timers = peer.check()?;
        let key = peer.key();
        let now = Instant::now();
        // A session added again stops the old one's AdminDown: the peer would take it for the
        // new session's (both carry the peer's discriminator back).
        self.retiring.retain(|(e, _)| e.peer.key() != key);
        if let Some(entry) = self.by_key.get(&key).and_then(|d| self.sessions.get_mut(d)) {
            if entry.peer.local != peer.local {
                entry.tx = tx_socket(&peer).map_err(|source| BfdError::Socket { peer: peer.peer, source })?;
            }
            entry.peer = peer;
            if entry.session.config().timers != timers {
                entry.handle(now, Input::Reconfigure(timers), &mut self.counters);
            }
            return Ok(entry.status.subscribe());
        }
        let tx = tx_socket(&peer).map_err(|source| BfdError::Socket { peer: peer.peer, source })?;
        let discr = loop {
            let d = random_u64() as u32;
            if d != 0 && !self.sessions.contains_key(&d) {
                break d;
            }
        };
        let config = SessionConfig::new(discr, timers, Some(random_u64()));
        let session = Session::new(config, now).map_err(|source| BfdError::Config { peer: peer.peer, source })?;
        let (status, status_rx) = watch::channel(BfdStatus::new(key, &session));
        let span = info_span!("bfd", peer = %peer.peer, ifindex = ?peer.ifindex);
        span.in_scope(|| info!(discr, interval = ?peer.interval, multiplier = peer.multiplier, "BFD session added"));
        let dest = destination(&peer);
        self.by_key.insert(key, discr);
        self.sessions.insert(discr, Entry { peer, session, tx, dest, status, span });
        Ok(status_rx)
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(discr) = self.by_key.remove(&key) else { return false };
        if let Some(mut entry) = self.sessions.remove(&discr) {
            let now = Instant::now();
            entry.handle(now, Input::AdminDown, &mut self.counters);
            entry.span.in_scope(|| info!("BFD session removed"));
            // Its status channel closes now (the last value AdminDown); the session itself goes
            // on sending AdminDown for a while.
            let last = entry.status.borrow().clone();
            entry.status = watch::channel(last).0;
            self.retiring.push((entry, now + RETIRE_TIME));
        }
        true
    }

    /// Handles the datagrams already queued on `fd`, at most [`DRAIN_MAX`].
    fn drain(&mut self, fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) {
        for _ in 0..DRAIN_MAX {
            match recv_now(fd, buf, cmsg) {
                Ok(d) => self.datagram(Ok(d), buf),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => return self.datagram(Err(err), buf),
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        for entry in self.sessions.values_mut() {
            if entry.session.next_deadline().is_some_and(|at| at <= now) {
                entry.handle(now, Input::Tick, &mut self.counters);
            }
        }
        self.retiring.retain(|(_, until)| *until > now);
        for (entry, _) in &mut self.retiring {
            if entry.session.next_deadline().is_some_and(|at| at <= now) {
                entry.handle(now, Input::Tick, &mut self.counters);
            }
        }
    }

    fn datagram(&mut self, got: io::Result<Datagram>, buf: &[u8]) {
        let d = match got {
            Ok(d) => d,
            Err(err) => {
                warn!(%err, "BFD receive failed");
                return;
            }
        };
        self.counters.received += 1;
        let Some(source) = d.source else { return };
        if d.ttl != Some(i32::from(GTSM_TTL)) {
            self.counters.dropped_ttl += 1;
            debug!(%source, ttl = ?d.ttl, "BFD packet dropped: TTL / hop limit is not 255");
            return;
        }
        let decoded = if d.truncated { None } else { Some(ControlPacket::decode(&buf[..d.len])) };
        let packet = match decoded {
            Some(Ok(p)) => p,
            Some(Err(err)) => {
                self.counters.dropped_malformed += 1;
                debug!(%source, %err, "BFD packet dropped");
                return;
            }
            None => {
                self.counters.dropped_malformed += 1;
                debug!(%source, "BFD packet dropped: longer than {RECV_BUF} bytes");
                return;
            }
        };
        let (ip, ifindex) = (source.ip(), d.ifindex);
        let discr = if packet.your_discr != 0 {
            Some(packet.your_discr).filter(|discr| self.sessions.get(discr).is_some_and(|e| e.matches(ip, ifindex)))
        } else {
            let by = |ifindex| self.by_key.get(&Key { peer: ip, ifindex }).copied();
            by(ifindex).or_else(|| by(None))
        };
        let Some(entry) = discr.and_then(|discr| self.sessions.get_mut(&discr)) else {
            self.counters.dropped_no_session += 1;
            debug!(%source, ifindex = ?d.ifindex, your_discr = packet.your_discr, "BFD packet for no session");
            return;
        };
        entry.handle(Instant::now(), Input::Received(packet), &mut self.counters);
    }
}

async fn recv(sock: &UdpSocket, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Datagram> {
    sock.async_io(Interest::READABLE, || recv_now(sock.as_raw_fd(), buf, cmsg)).await
}

/// [`recv`] on a family's receive socket; never ready while that socket is not open.
async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Datagram> {
    match sock {
        Some(sock) => recv(sock, buf, cmsg).await,
        None => std::future::pending().await,
    }
}

/// Where a family's receive socket listens: the unspecified address, port 3784.
fn listen_addr(ipv4: bool) -> SocketAddr {
    if ipv4 {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, CONTROL_PORT))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, CONTROL_PORT))
    }
}

/// One non-blocking `recvmsg` with the TTL / hop limit and the receiving interface.
fn recv_now(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut d = Datagram {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        source: msg.address.as_ref().and_then(socket_addr),
        ifindex: None,
        ttl: None,
    };
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4Ttl(ttl) | ControlMessageOwned::Ipv6HopLimit(ttl) => d.ttl = Some(ttl),
            ControlMessageOwned::Ipv4PacketInfo(info) => d.ifindex = u32::try_from(info.ipi_ifindex).ok(),
            ControlMessageOwned::Ipv6PacketInfo(info) => d.ifindex = Some(info.ipi6_ifindex),
            _ => {}
        }
    }
    Ok(d)
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn udp_socket(addr: IpAddr) -> io::Result<OwnedFd> {
    Ok(socket::socket(family(addr), SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?)
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    Ok(())
}

/// Opens `slot`'s receive socket (of the IPv4 or IPv6 family) unless it is open already.
fn open_rx(slot: &mut Option<UdpSocket>, ipv4: bool) -> Result<(), BfdError> {
    if slot.is_none() {
        let addr = listen_addr(ipv4);
        *slot = Some(rx_socket(addr)?);
        info!(%addr, "BFD receive socket open");
    }
    Ok(())
}

/// A receive socket on `addr` (port 3784) that reports each packet's TTL / hop limit and
/// interface.
fn rx_socket(addr: SocketAddr) -> Result<UdpSocket, BfdError> {
    let open = || -> io::Result<UdpSocket> {
        let fd = udp_socket(addr.ip())?;
        if addr.is_ipv4() {
            socket::setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
            socket::setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
        } else {
            // IPv4 has its own socket on the same port.
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
            socket::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        }
        bind(&fd, addr)?;
        UdpSocket::from_std(StdUdpSocket::from(fd))
    };
    open().map_err(|source| BfdError::Bind { addr, source })
}

/// A session's sending socket: TTL / hop limit 255, CS6, bound to the peer's interface when
/// given and to a free source port in 49152-65535.
fn tx_socket(peer: &BfdPeer) -> io::Result<StdUdpSocket> {
    let fd = udp_socket(peer.peer)?;
    if peer.peer.is_ipv4() {
        socket::setsockopt(&fd, sockopt::Ipv4Ttl, &i32::from(GTSM_TTL))?;
        socket::setsockopt(&fd, sockopt::Ipv4Tos, &TOS_CS6)?;
    } else {
        socket::setsockopt(&fd, sockopt::Ipv6Ttl, &i32::from(GTSM_TTL))?;
        socket::setsockopt(&fd, sockopt::Ipv6TClass, &TOS_CS6)?;
    }
    if let Some(ifindex) = peer.ifindex {
        let name = nix::net::if_::if_indextoname(ifindex)?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(name.to_string_lossy().into_owned()))?;
    }
    let local = peer.local.unwrap_or(match peer.peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let span = u64::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..64 {
        let port = SOURCE_PORTS.start() + (random_u64() % span) as u16;
        let mut addr = SocketAddr::new(local, port);
        if let (SocketAddr::V6(a), Some(ifindex)) = (&mut addr, peer.ifindex) {
            if a.ip().is_unicast_link_local() {
                a.set_scope_id(ifindex);
            }
        }
        match bind(&fd, addr) {
            Ok(()) => return Ok(StdUdpSocket::from(fd)),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(last)
}

fn destination(peer: &BfdPeer) -> SocketAddr {
    let mut dest = SocketAddr::new(peer.peer, CONTROL_PORT);
    if let (SocketAddr::V6(d), Some(ifindex)) = (&mut dest, peer.ifindex) {
        if d.ip().is_unicast_link_local() {
            d.set_scope_id(ifindex);
        }
    }
    dest
}

/// Discriminators, jitter seeds and source ports: SipHash of a counter under the standard
/// library's per-process random keys. Unpredictable enough that an off-path sender cannot
/// guess a discriminator, and no dependency.
fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::hash::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    KEYS.get_or_init(std::hash::RandomState::new).hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
