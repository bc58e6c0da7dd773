//! One task per configured peer: it owns the peer's [`Session`] FSM and its TCP connections
//! (outbound attempts, the accepted inbound one, a reader task per connection), sleeps until
//! the FSM's next deadline, and turns FSM outputs into socket writes and events for the
//! speaker. It never looks at routes: UPDATEs go to the speaker as [`PeerEvent::Update`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::auth::{Md5Drops, Md5Key, Md5Setter, Md5Target};
use crate::bfd::BfdStatus;
use crate::session::{ConnId, Counters, DownReason, Input, Negotiated, Output, Session, State};
use crate::wire::{decode_message, DecodeOptions, Family, Notification};

/// How the speaker tells its peers apart: the address, and for a link-local one the interface
/// too. Two ToRs may well use one link-local address (`fe80::1` is a common choice), each on its
/// own link: they are two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey {
    pub address: IpAddr,
    /// The interface index; only ever set for an IPv6 link-local `address`.
    pub ifindex: Option<u32>,
}

impl PeerKey {
    /// `address` (an IPv4-mapped one as IPv4), with `ifindex` kept only if it is link-local.
    pub fn new(address: IpAddr, ifindex: Option<u32>) -> PeerKey {
        let address = address.to_canonical();
        let link_local = matches!(address, IpAddr::V6(a) if super::fib::is_link_local(a));
        PeerKey { address, ifindex: ifindex.filter(|_| link_local) }
    }

    /// The key of a connection's remote end: a link-local address carries its interface as the
    /// scope id (the kernel sets it on accepted sockets; we set it when connecting).
    pub fn of_remote(remote: SocketAddr) -> PeerKey {
        let scope = match remote {
            SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
            _ => None,
        };
        PeerKey::new(remote.ip(), scope)
    }
}

/// The interface's name, or its index when it has no name any more (so that two link-local
/// peers on different links stay apart either way).
pub(crate) fn interface_name(index: u32) -> String {
    match nix::net::if_::if_indextoname(index) {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => index.to_string(),
    }
}

/// `fe80::1%eth0`, or the bare address.
impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ifindex {
            None => write!(f, "{}", self.address),
            Some(index) => write!(f, "{}%{}", self.address, interface_name(index)),
        }
    }
}

/// What a peer task tells the speaker.
#[derive(Debug)]
pub enum PeerEvent {
    Established {
        peer: PeerKey,
        negotiated: Box<Negotiated>,
        local: SocketAddr,
    },
    /// One received UPDATE accepted by the FSM: the whole message and the options to decode it.
    Update {
        peer: PeerKey,
        message: Vec<u8>,
        opts: DecodeOptions,
    },
    /// The peer asked for our routes of a family again.
    RouteRefresh {
        peer: PeerKey,
        family: Option<Family>,
    },
    Down {
        peer: PeerKey,
        reason: DownReason,
        was_established: bool,
    },
}

/// What the speaker tells a peer task.
#[derive(Debug)]
pub enum PeerCmd {
    /// An accepted TCP connection from this peer's address.
    Inbound(TcpStream),
    /// UPDATEs encoded with the negotiated options: `count` messages in `bytes`.
    SendUpdates { bytes: Vec<u8>, count: u64 },
    /// Close the session with this NOTIFICATION and restart after the idle hold (e.g. max-prefix).
    AutomaticStop { notification: Notification, reason: String },
    /// The path to the peer failed (BFD): drop the session without a NOTIFICATION.
    PathDown { reason: String },
    /// This process is restarting gracefully: close the connections without a NOTIFICATION, so
    /// that a peer with graceful restart keeps our routes, and end the task.
    Abandon,
    /// Our own restart converged: later OPENs say so ([`Session::restart_complete`]).
    RestartComplete,
    /// The peer's BFD session, started late (BFD could not start when the peer was added).
    Bfd(watch::Receiver<BfdStatus>),
}

/// The peer's state as `show bgp summary` reads it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub state: State,
    pub counters: Counters,
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
    pub local: Option<SocketAddr>,
}

/// Static addressing of a peer task.
#[derive(Debug, Clone)]
pub struct PeerAddressing {
    /// With the interface as scope id for a link-local peer.
    pub remote: SocketAddr,
    /// How long one outbound connect may take before it counts as failed.
    pub connect_timeout: Duration,
    /// TCP MD5: the setter and this peer's key, put on each outgoing socket before `connect`.
    pub md5: Option<(Arc<dyn Md5Setter>, Md5Key)>,
}

/// What the reader and connect tasks report back to the peer task.
enum Io {
    Connected(ConnId, TcpStream),
    ConnectFailed(ConnId, std::io::Error),
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId, Option<std::io::Error>),
}

struct Conn {
    /// To the connection's writer task ([`write_loop`]): writes never block this task, whose
    /// hold timer and BFD must fire even while a peer takes nothing.
    writer: mpsc::UnboundedSender<WriteCmd>,
    writer_task: JoinHandle<()>,
    reader: JoinHandle<()>,
    /// Received bytes; `buffer[start..]` is not yet decoded (consumed bytes are dropped on the
    /// next read, so decoding never moves memory).
    buffer: Vec<u8>,
    start: usize,
    local: Option<SocketAddr>,
}

pub struct PeerTask {
    session: Session,
    addressing: PeerAddressing,
    events: mpsc::Sender<PeerEvent>,
    status: watch::Sender<PeerStatus>,
    conns: HashMap<ConnId, Conn>,
    connecting: Option<(ConnId, JoinHandle<()>)>,
    /// Writers of closed connections still sending what was queued (a NOTIFICATION), each
    /// aborted after CLOSE_GRACE by a watchdog; waited for when the task ends.
    closing: Vec<tokio::task::AbortHandle>,
    next_conn: u64,
    io_tx: mpsc::Sender<Io>,
    io_rx: mpsc::Receiver<Io>,
    /// Why the last outbound attempt failed, shown while the FSM has no error of its own.
    connect_error: Option<String>,
    /// The namespace's MD5 drop counters when the peer was added (MD5 peers only).
    md5_baseline: Option<Md5Drops>,
    /// The peer's BFD session, when configured: its Up → Down takes the BGP session down.
    bfd: Option<watch::Receiver<BfdStatus>>,
    /// BFD path failures already acted on.
    bfd_failures: u64,
    /// Bytes queued for this peer's connections and not yet written into a socket; the speaker
    /// holds back further UPDATEs while there are many ([`PeerTask::unsent`]).
    unsent: Arc<AtomicUsize>,
}

/// Largest read per syscall; a full-table burst is read in 64 KiB pieces.
const READ_CHUNK: usize = 64 * 1024;

/// How long a closed connection's writer may take to send what was queued (a NOTIFICATION).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long one write may wait for a peer that takes nothing (RFC 9687's send hold time: the
/// larger of 8 minutes and twice the hold time). Meanwhile the session's own timers run: a peer
/// whose process hung sends no KEEPALIVE either, and its hold timer ends the session first.
fn send_hold_time(hold_time: u16) -> Duration {
    Duration::from_secs(480.max(2 * u64::from(hold_time)))
}

enum WriteCmd {
    Data(Queued),
    /// Send FIN after what is queued.
    Shutdown,
}

/// Bytes on their way to a connection's writer task, counted in the peer's unsent total until
/// written into the socket or dropped (a closed connection's queue, an aborted writer).
struct Queued {
    bytes: Vec<u8>,
    unsent: Arc<AtomicUsize>,
}

impl Queued {
    fn new(bytes: Vec<u8>, unsent: &Arc<AtomicUsize>) -> Queued {
        unsent.fetch_add(bytes.len(), Ordering::Relaxed);
        Queued { bytes, unsent: unsent.clone() }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.unsent.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// Writes what `cmds` brings to `writer`, in order; a write that fails or waits longer than
/// `send_hold` reports the connection closed to `io`.
async fn write_loop(
    id: ConnId,
    mut writer: OwnedWriteHalf,
    mut cmds: mpsc::UnboundedReceiver<WriteCmd>,
    io: mpsc::Sender<Io>,
    send_hold: Duration,
) {
    while let Some(cmd) = cmds.recv().await {
        let queued = match cmd {
            WriteCmd::Data(queued) => queued,
            WriteCmd::Shutdown => {
                let _ = tokio::time::timeout(send_hold, writer.shutdown()).await;
                return;
            }
        };
        let err = match tokio::time::timeout(send_hold, writer.write_all(&queued.bytes)).await {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => err,
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took nothing for {} s (send hold time, RFC 9687)", send_hold.as_secs()),
            ),
        };
        let _ = io.send(Io::Closed(id, Some(err))).await;
        return;
    }
}

impl PeerTask {
    pub fn new(
        session: Session,
        addressing: PeerAddressing,
        events: mpsc::Sender<PeerEvent>,
        bfd: Option<watch::Receiver<BfdStatus>>,
    ) -> (PeerTask, watch::Receiver<PeerStatus>) {
        let (status, status_rx) = watch::channel(PeerStatus {
            state: session.state(),
            counters: session.counters().clone(),
            last_error: None,
            negotiated: None,
            local: None,
        });
        let (io_tx, io_rx) = mpsc::channel(64);
        let md5_baseline = addressing.md5.as_ref().map(|_| Md5Drops::read());
        let task = PeerTask {
            session,
            addressing,
            events,
            status,
            conns: HashMap::new(),
            connecting: None,
            closing: Vec::new(),
            next_conn: 1,
            io_tx,
            io_rx,
            connect_error: None,
            md5_baseline,
            bfd_failures: bfd.as_ref().map_or(0, |rx| rx.borrow().counters.failures),
            bfd,
            unsent: Arc::new(AtomicUsize::new(0)),
        };
        (task, status_rx)
    }

    /// The count of bytes queued for the peer and not yet taken by its socket, kept current by
    /// the task and its writers.
    pub fn unsent(&self) -> Arc<AtomicUsize> {
        self.unsent.clone()
    }

    fn peer(&self) -> PeerKey {
        PeerKey::of_remote(self.addressing.remote)
    }

    /// Runs until `cmds` closes (the peer was removed from the config): then stops the session
    /// with Cease / Administrative Shutdown.
    pub async fn run(mut self, mut cmds: mpsc::Receiver<PeerCmd>) {
        let outputs = self.session.handle(Instant::now(), Input::Start);
        self.perform(outputs).await;
        loop {
            let deadline = self.session.next_deadline();
            let sleep = crate::driver::sleep_until(deadline);
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(PeerCmd::Abandon) => {
                        self.abandon().await;
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                Some(io) = self.io_rx.recv() => self.io(io).await,
                Some(status) = bfd_changed(&mut self.bfd) => self.bfd_status(status).await,
                _ = sleep => {
                    let outputs = self.session.handle(Instant::now(), Input::Tick);
                    self.perform(outputs).await;
                }
            }
        }
        let outputs = self.session.handle(Instant::now(), Input::Stop);
        self.perform(outputs).await;
        self.flush_closing().await;
        for (_, conn) in self.conns.drain() {
            conn.reader.abort();
        }
        if let Some((_, task)) = self.connecting.take() {
            task.abort();
        }
    }

    /// RFC 5882 4.3: BFD going from Up to Down (not the peer's AdminDown, which only says it
    /// stopped BFD) takes the session down at once, without waiting for the hold timer.
    /// Failures are counted, not inferred from the latest state: a flap that healed before this
    /// task looked still took the path away.
    async fn bfd_status(&mut self, status: BfdStatus) {
        let failures = status.counters.failures;
        if failures > std::mem::replace(&mut self.bfd_failures, failures) {
            let reason = format!("BFD session down ({})", status.diag);
            warn!(peer = %self.peer(), %reason, "taking the BGP session down");
            let outputs = self.session.handle(Instant::now(), Input::PathDown { reason });
            self.perform(outputs).await;
        }
    }

    /// Waits (at most CLOSE_GRACE) for the writers of closed connections to send what they hold,
    /// so that a Cease queued on the way out leaves before the process does.
    async fn flush_closing(&mut self) {
        let until = tokio::time::Instant::now() + CLOSE_GRACE;
        while self.closing.iter().any(|h| !h.is_finished()) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closing.clear();
    }

    /// Graceful restart of this process: the connections close without a NOTIFICATION (the peer
    /// sees a transport failure and, with graceful restart, keeps our routes as stale).
    async fn abandon(&mut self) {
        for (_, conn) in self.conns.drain() {
            conn.reader.abort();
            if conn.writer.send(WriteCmd::Shutdown).is_ok() {
                // What was queued, then FIN; a peer that takes nothing is not waited for.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.writer_task).await;
            }
        }
        if let Some((_, task)) = self.connecting.take() {
            task.abort();
        }
    }

    async fn command(&mut self, cmd: PeerCmd) {
        let now = Instant::now();
        match cmd {
            PeerCmd::Inbound(stream) => {
                self.connect_error = None;
                let conn = self.adopt(stream);
                let outputs = self.session.handle(now, Input::Connected { conn, inbound: true });
                self.perform(outputs).await;
            }
            PeerCmd::SendUpdates { bytes, count } => match self.session.send_encoded_updates(now, bytes, count) {
                Ok(output) => self.perform(vec![output]).await,
                Err(err) => debug!(peer = %self.peer(), %err, "UPDATE not sent"),
            },
            PeerCmd::AutomaticStop { notification, reason } => {
                let outputs = self.session.handle(now, Input::AutomaticStop { notification, reason });
                self.perform(outputs).await;
            }
            PeerCmd::PathDown { reason } => {
                let outputs = self.session.handle(now, Input::PathDown { reason });
                self.perform(outputs).await;
            }
            PeerCmd::RestartComplete => self.session.restart_complete(),
            PeerCmd::Bfd(rx) => {
                // Failures from here on count; the task's select loop watches the new receiver.
                self.bfd_failures = rx.borrow().counters.failures;
                self.bfd = Some(rx);
            }
            // Handled by `run`.
            PeerCmd::Abandon => {}
        }
    }

    async fn io(&mut self, io: Io) {
        let now = Instant::now();
        match io {
            Io::Connected(conn, stream) => {
                if self.connecting.as_ref().map(|(id, _)| *id) != Some(conn) {
                    return; // cancelled meanwhile: dropping the stream closes it
                }
                self.connecting = None;
                self.connect_error = None;
                let conn = self.adopt_as(conn, stream);
                let outputs = self.session.handle(now, Input::Connected { conn, inbound: false });
                self.perform(outputs).await;
            }
            Io::ConnectFailed(conn, err) => {
                if self.connecting.as_ref().map(|(id, _)| *id) == Some(conn) {
                    self.connecting = None;
                    debug!(peer = %self.peer(), %err, "connect failed");
                    self.connect_error = Some(self.explain_connect_failure(&err));
                    let outputs = self.session.handle(now, Input::ConnectFailed { conn });
                    self.perform(outputs).await;
                }
            }
            Io::Closed(conn, err) => {
                if self.conns.contains_key(&conn) {
                    match err {
                        Some(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                            warn!(peer = %self.peer(), %err, "closing the connection")
                        }
                        Some(err) => debug!(peer = %self.peer(), %err, "connection error"),
                        None => {}
                    }
                    self.drop_conn(conn);
                    let outputs = self.session.handle(now, Input::Closed { conn });
                    self.perform(outputs).await;
                }
            }
            Io::Bytes(conn, bytes) => self.received(conn, &bytes).await,
        }
    }

    /// Decodes every whole message now buffered on `conn` and feeds it to the FSM.
    async fn received(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.start > 0 {
            c.buffer.drain(..c.start);
            c.start = 0;
        }
        c.buffer.extend_from_slice(bytes);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            // The options change once this connection's OPEN is accepted: ask before each one.
            let opts = self.session.decode_options(conn);
            let now = Instant::now();
            let data = &c.buffer[c.start..];
            let (events, owned) = match decode_message(data, &opts) {
                Ok(None) => return,
                Ok(Some((msg, used))) => {
                    // An accepted UPDATE goes to the speaker as its raw bytes (the RIB decodes
                    // it there, borrowing them); the FSM has checked it belongs to this state.
                    let raw = &data[..used];
                    c.start += used;
                    let outputs = self.session.handle(now, Input::Message { conn, msg });
                    split_outputs(PeerKey::of_remote(self.addressing.remote), outputs, Some((raw, opts)))
                }
                Err(err) => {
                    c.start = c.buffer.len();
                    warn!(peer = %self.addressing.remote.ip(), reason = err.reason, notification = %err.notification, "malformed message");
                    let outputs = self.session.handle(now, Input::DecodeError { conn, err });
                    split_outputs(PeerKey::of_remote(self.addressing.remote), outputs, None)
                }
            };
            self.send_events(events).await;
            self.perform(owned).await;
        }
    }

    /// Sends events to the speaker, completing `Established` with the connection's local address.
    async fn send_events(&mut self, events: Vec<PeerEvent>) {
        for mut event in events {
            if matches!(event, PeerEvent::Down { .. }) {
                // The session's own reason is newer than any earlier connect failure.
                self.connect_error = None;
            }
            if let PeerEvent::Established { local, .. } = &mut event {
                let conn = self.session.established_conn().and_then(|c| self.conns.get(&c));
                if let Some(addr) = conn.and_then(|c| c.local) {
                    *local = addr;
                }
            }
            let _ = self.events.send(event).await;
        }
    }

    fn adopt(&mut self, stream: TcpStream) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.adopt_as(id, stream)
    }

    fn adopt_as(&mut self, id: ConnId, stream: TcpStream) -> ConnId {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let (mut read, write_half) = stream.into_split();
        let (writer, commands) = mpsc::unbounded_channel();
        let send_hold = send_hold_time(self.session.config().hold_time);
        let writer_task = tokio::spawn(write_loop(id, write_half, commands, self.io_tx.clone(), send_hold));
        let tx = self.io_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => {
                        let _ = tx.send(Io::Closed(id, None)).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Io::Bytes(id, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Io::Closed(id, Some(err))).await;
                        return;
                    }
                }
            }
        });
        self.conns.insert(id, Conn { writer, writer_task, reader, buffer: Vec::new(), start: 0, local });
        id
    }

    fn drop_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            c.reader.abort();
            c.writer_task.abort();
        }
    }

    /// Performs owned outputs in order (sockets, events, status).
    async fn perform(&mut self, outputs: Vec<Output<'_>>) {
        let (events, owned) = split_outputs(self.peer(), outputs, None);
        self.send_events(events).await;
        let mut pending = owned;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for output in pending {
                next.extend(self.perform_one(output).await);
            }
            pending = next;
        }
        self.publish_status();
    }

    /// One output; returns what the FSM answered if a socket failure had to be reported.
    async fn perform_one(&mut self, output: Output<'static>) -> Vec<Output<'static>> {
        let now = Instant::now();
        match output {
            Output::Connect => {
                if let Some((_, task)) = self.connecting.take() {
                    // The attempt never got an answer (a peer or firewall dropping SYNs, or an
                    // MD5 mismatch): say so, since no connect error will come for it.
                    task.abort();
                    let err = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer before the next attempt");
                    self.connect_error = Some(self.explain_connect_failure(&err));
                }
                let id = ConnId(self.next_conn);
                self.next_conn += 1;
                let (remote, timeout, tx) =
                    (self.addressing.remote, self.addressing.connect_timeout, self.io_tx.clone());
                let md5 = self.addressing.md5.clone();
                let task = tokio::spawn(async move {
                    let result = tokio::time::timeout(timeout, connect(remote, md5)).await;
                    let io = match result {
                        Ok(Ok(stream)) => Io::Connected(id, stream),
                        Ok(Err(err)) => Io::ConnectFailed(id, err),
                        Err(_) => Io::ConnectFailed(id, std::io::Error::from(std::io::ErrorKind::TimedOut)),
                    };
                    let _ = tx.send(io).await;
                });
                self.connecting = Some((id, task));
                Vec::new()
            }
            Output::CancelConnect => {
                if let Some((_, task)) = self.connecting.take() {
                    task.abort();
                }
                Vec::new()
            }
            Output::Send { conn, bytes } => {
                let Some(c) = self.conns.get_mut(&conn) else { return Vec::new() };
                // Queued for the writer task; it reports a failed write as the connection closed.
                if c.writer.send(WriteCmd::Data(Queued::new(bytes, &self.unsent))).is_err() {
                    debug!(peer = %self.peer(), "write failed: the connection's writer is gone");
                    self.drop_conn(conn);
                    return owned_only(self.session.handle(now, Input::Closed { conn }));
                }
                Vec::new()
            }
            Output::Close { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    c.reader.abort();
                    // The writer sends what is queued (a NOTIFICATION) and then FIN, on its own,
                    // but not for long: a peer that took nothing would keep the socket (and the
                    // peer's view of the old session) alive for the send hold time.
                    let _ = c.writer.send(WriteCmd::Shutdown);
                    let abort = c.writer_task.abort_handle();
                    self.closing.retain(|h| !h.is_finished());
                    self.closing.push(abort.clone());
                    let task = c.writer_task;
                    tokio::spawn(async move {
                        if tokio::time::timeout(CLOSE_GRACE, task).await.is_err() {
                            abort.abort();
                        }
                    });
                }
                Vec::new()
            }
            Output::StateChanged { from, to } => {
                if to == State::Established {
                    // Whatever failed before is history now.
                    self.connect_error = None;
                }
                info!(peer = %self.peer(), %from, %to, "BGP state");
                Vec::new()
            }
            // Events are split off before; nothing else remains.
            _ => Vec::new(),
        }
    }

    /// A connect failure in words, with the kernel's MD5 drop counters when the peer has a
    /// password: a key mismatch drops segments silently, so the attempt only times out.
    fn explain_connect_failure(&self, err: &std::io::Error) -> String {
        let mut text = format!("connect to {} failed: {err}", self.addressing.remote);
        if let Some(before) = &self.md5_baseline {
            text.push_str("; TCP MD5 is on for this peer and a password missing or different on either side drops every segment silently");
            if let Some(why) = Md5Drops::read().explain_since(before) {
                text.push_str(&format!(" ({why})"));
            }
        }
        text
    }

    fn publish_status(&self) {
        let local = self.session.established_conn().and_then(|c| self.conns.get(&c)).and_then(|c| c.local);
        let last_error = self.connect_error.clone().or_else(|| self.session.last_error().map(ToString::to_string));
        self.status.send_replace(PeerStatus {
            state: self.session.state(),
            counters: self.session.counters().clone(),
            last_error,
            negotiated: self.session.negotiated().cloned(),
            local,
        });
    }
}

/// The next BFD status, or never when the peer has no BFD (or its BFD task is gone).
async fn bfd_changed(bfd: &mut Option<watch::Receiver<BfdStatus>>) -> Option<BfdStatus> {
    let Some(rx) = bfd.as_mut() else { return std::future::pending().await };
    if rx.changed().await.is_err() {
        *bfd = None;
        return std::future::pending().await;
    }
    let status = rx.borrow_and_update().clone();
    Some(status)
}

/// One outbound connection, with the peer's MD5 key on the socket before the SYN leaves.
async fn connect(remote: SocketAddr, md5: Option<(Arc<dyn Md5Setter>, Md5Key)>) -> std::io::Result<TcpStream> {
    let socket = if remote.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some((setter, key)) = md5 {
        // By address alone, a link-local peer's too (see Speaker::set_listener_keys).
        let target = Md5Target { address: remote.ip(), prefix_len: None };
        setter.set(socket.as_fd(), target, key.bytes())?;
    }
    socket.connect(remote).await
}

/// Separates outputs that are events for the speaker (converted to owned form here, while the
/// message buffer is still borrowed) from the socket work the task performs itself.
fn split_outputs(
    peer: PeerKey,
    outputs: Vec<Output<'_>>,
    raw: Option<(&[u8], DecodeOptions)>,
) -> (Vec<PeerEvent>, Vec<Output<'static>>) {
    let mut events = Vec::new();
    let mut owned = Vec::new();
    for output in outputs {
        match output {
            Output::Update(_) => {
                if let Some((message, opts)) = raw {
                    events.push(PeerEvent::Update { peer, message: message.to_vec(), opts });
                }
            }
            Output::RouteRefresh(rr) => {
                events.push(PeerEvent::RouteRefresh { peer, family: Family::from_afi_safi(rr.afi, rr.safi) })
            }
            Output::Established(negotiated) => {
                // The local address is filled in by `send_events`, which knows the connection.
                events.push(PeerEvent::Established {
                    peer,
                    negotiated: Box::new(negotiated),
                    local: SocketAddr::new(peer.address, 0),
                })
            }
            Output::Down { reason, was_established } => {
                if was_established {
                    warn!(%peer, %reason, "BGP session down");
                } else {
                    info!(%peer, %reason, "BGP session failed");
                }
                events.push(PeerEvent::Down { peer, reason, was_established })
            }
            Output::Connect => owned.push(Output::Connect),
            Output::CancelConnect => owned.push(Output::CancelConnect),
            Output::Send { conn, bytes } => owned.push(Output::Send { conn, bytes }),
            Output::Close { conn } => owned.push(Output::Close { conn }),
            Output::StateChanged { from, to } => owned.push(Output::StateChanged { from, to }),
        }
    }
    (events, owned)
}

fn owned_only(outputs: Vec<Output<'_>>) -> Vec<Output<'static>> {
    split_outputs(PeerKey::new(IpAddr::from([0, 0, 0, 0]), None), outputs, None).1
}
