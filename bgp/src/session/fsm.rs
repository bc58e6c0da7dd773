//! The [`Session`] state machine: turns inputs and the current time into outputs, tracking up
//! to two connections per peering. Message syntax is the codec's, negotiation rules are in
//! `negotiation`, timer arithmetic in `timers`; this file owns the transitions only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::config::{ConfigError, SessionConfig};
use super::negotiation::{local_open, negotiate, validate_open, Negotiated};
use super::timers::{idle_hold, keepalive_interval, Jitter, OPEN_SENT_HOLD};
use super::{ConnId, Counters, DownReason, Input, Output, State};
use crate::wire::{
    encode_message, msg_type, Capability, DecodeOptions, EncodeError, EncodeOptions, Family, Message, Notification,
    NotificationError, Open, RefreshSubtype, MAX_MESSAGE_LEN,
};

/// A message the driver asked to send that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("peer {peer}: session is {state}, not Established; queue the message until Output::Established")]
    NotEstablished { peer: IpAddr, state: State },
    #[error("peer {peer}: OPEN and NOTIFICATION are sent by the session FSM itself; use Input::Stop or Input::AutomaticStop")]
    FsmOwned { peer: IpAddr },
    #[error("peer {peer}: {source}")]
    Encode {
        peer: IpAddr,
        #[source]
        source: EncodeError,
    },
}

/// One TCP connection past Active.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    inbound: bool,
    /// OpenSent, OpenConfirm or Established.
    state: State,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    /// Set when the peer's OPEN is accepted.
    negotiated: Option<Negotiated>,
}

/// The FSM of one configured peering. See the module documentation for the contract.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    local_open: Open,
    /// Our OPEN, encoded once: it is the same on every connection.
    open_bytes: Vec<u8>,
    /// Start was given and Stop was not: failures restart automatically.
    admin_up: bool,
    /// Idle, Connect or Active: the state when no connection is past Active.
    base: State,
    /// The state last reported with `StateChanged`.
    reported: State,
    /// At most one inbound and one outbound; at most one of them past OpenSent.
    conns: Vec<Conn>,
    /// An outbound attempt was requested and not yet reported.
    connecting: bool,
    connect_retry: Option<Instant>,
    /// When the automatic restart happens (Idle with `admin_up`).
    idle_hold: Option<Instant>,
    /// Consecutive failures since the last stable session, for the idle hold backoff.
    failures: u32,
    jitter: Jitter,
    last_error: Option<DownReason>,
    counters: Counters,
}

impl Session {
    /// A session in Idle; nothing happens until [`Input::Start`].
    pub fn new(config: SessionConfig) -> Result<Session, ConfigError> {
        config.validate()?;
        let local_open = local_open(&config);
        let mut open_bytes = Vec::new();
        encode_message(&Message::Open(local_open.clone()), &EncodeOptions::default(), &mut open_bytes)
            .map_err(|source| ConfigError::Open { peer: config.peer_addr, source })?;
        Ok(Session {
            jitter: Jitter::new(config.jitter_seed),
            config,
            local_open,
            open_bytes,
            admin_up: false,
            base: State::Idle,
            reported: State::Idle,
            conns: Vec::new(),
            connecting: false,
            connect_retry: None,
            idle_hold: None,
            failures: 0,
            last_error: None,
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Our restart is over: the OPENs of later connections no longer set the Restart State bit
    /// (RFC 4724 3: R says the speaker has restarted). The Forwarding State bits stay: the
    /// forwarding state is still preserved, and a helper seeing them clear on a reconnect would
    /// drop our routes at once instead of waiting for our End-of-RIB. The connection in place
    /// keeps what it negotiated.
    pub fn restart_complete(&mut self) {
        let Some(gr) = self.config.graceful_restart.as_mut() else { return };
        if !gr.restarting {
            return;
        }
        gr.restarting = false;
        self.local_open = local_open(&self.config);
        self.open_bytes.clear();
        encode_message(&Message::Open(self.local_open.clone()), &EncodeOptions::default(), &mut self.open_bytes)
            .expect("the same OPEN encoded at start, two bits changed");
    }

    pub fn state(&self) -> State {
        self.conns.iter().map(|c| c.state).max().unwrap_or(self.base)
    }

    /// What was agreed with the peer, while Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.established().and_then(|c| c.negotiated.as_ref())
    }

    /// The connection carrying the Established session.
    pub fn established_conn(&self) -> Option<ConnId> {
        self.established().map(|c| c.id)
    }

    /// Why the session last went down (kept while it is up again, like FRR's "last reset").
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How to decode the next message read on `conn`: the negotiated options once the peer's
    /// OPEN was accepted on it, the RFC 4271 defaults before.
    pub fn decode_options(&self, conn: ConnId) -> DecodeOptions {
        self.conns
            .iter()
            .find(|c| c.id == conn)
            .and_then(|c| c.negotiated.as_ref())
            .map(|n| n.decode)
            .unwrap_or_default()
    }

    /// The earliest timer; the driver sends [`Input::Tick`] once `now` reaches it.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conn_timers = self.conns.iter().flat_map(|c| [c.hold, c.keepalive]);
        let session_timers = if self.conns.is_empty() { [self.connect_retry, self.idle_hold] } else { [None, None] };
        conn_timers.chain(session_timers).flatten().min()
    }

    /// Applies one input at time `now` and returns what to do, in order.
    pub fn handle<'a>(&mut self, now: Instant, input: Input<'a>) -> Vec<Output<'a>> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.start(now, &mut out),
            Input::Stop => self.stop(&mut out),
            Input::AutomaticStop { notification, reason } => {
                let reason = DownReason::NotificationSent { notification: notification.clone(), reason };
                let was = self.state();
                self.shut_down(now, was, Some(notification), reason, &mut out);
            }
            Input::PathDown { reason } => {
                let was = self.state();
                self.shut_down(now, was, None, DownReason::PathDown(reason), &mut out);
            }
            Input::Connected { conn, inbound } => self.connected(now, conn, inbound, &mut out),
            Input::ConnectFailed { .. } => self.connect_failed(),
            Input::Closed { conn } => {
                if let Some(c) = self.take_conn(conn) {
                    self.conn_lost(now, c, DownReason::ConnectionClosed, &mut out);
                }
            }
            Input::Message { conn, msg } => self.message(now, conn, msg, &mut out),
            Input::DecodeError { conn, err } => {
                if self.conn(conn).is_some() {
                    let reason = DownReason::NotificationSent {
                        notification: err.notification.clone(),
                        reason: err.reason.to_string(),
                    };
                    self.fail_conn(now, conn, err.notification, reason, &mut out);
                }
            }
            Input::Tick => self.tick(now, &mut out),
        }
        self.sync_state(&mut out);
        out
    }

    /// Encodes `msg` (UPDATE, KEEPALIVE or ROUTE-REFRESH) with the negotiated options for the
    /// Established connection, and restarts the keepalive timer for UPDATE and KEEPALIVE.
    pub fn send_message(&mut self, now: Instant, msg: &Message<'_>) -> Result<Output<'static>, SendError> {
        let peer = self.config.peer_addr;
        if matches!(msg, Message::Open(_) | Message::Notification(_)) {
            return Err(SendError::FsmOwned { peer });
        }
        let state = self.state();
        let conn = self.established_mut().ok_or(SendError::NotEstablished { peer, state })?;
        let opts = conn.negotiated.as_ref().map(|n| n.encode).unwrap_or_default();
        let mut bytes = Vec::new();
        encode_message(msg, &opts, &mut bytes).map_err(|source| SendError::Encode { peer, source })?;
        let id = conn.id;
        self.after_send(now, id, msg.type_code(), 1);
        Ok(Output::Send { conn: id, bytes })
    }

    /// Sends `count` UPDATEs already encoded into `bytes` (by `build_announcements` /
    /// `build_withdrawals` with [`Negotiated::encode`]); counts them and restarts the
    /// keepalive timer.
    pub fn send_encoded_updates(
        &mut self,
        now: Instant,
        bytes: Vec<u8>,
        count: u64,
    ) -> Result<Output<'static>, SendError> {
        let peer = self.config.peer_addr;
        let state = self.state();
        let id = self.established().ok_or(SendError::NotEstablished { peer, state })?.id;
        self.after_send(now, id, msg_type::UPDATE, count);
        Ok(Output::Send { conn: id, bytes })
    }

    // ------------------------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------------------------

    fn start(&mut self, now: Instant, out: &mut Vec<Output<'_>>) {
        // Start events are ignored outside Idle (RFC 4271 8.2.2).
        if self.state() != State::Idle {
            return;
        }
        self.admin_up = true;
        self.failures = 0;
        self.idle_hold = None;
        self.begin(now, out);
    }

    /// Idle → Connect (initiate) or Active (passive: only listen).
    fn begin(&mut self, now: Instant, out: &mut Vec<Output<'_>>) {
        if self.config.passive {
            self.base = State::Active;
            self.connect_retry = None;
        } else {
            self.connect(now, out);
        }
    }

    fn connect(&mut self, now: Instant, out: &mut Vec<Output<'_>>) {
        self.base = State::Connect;
        self.connecting = true;
        self.counters.connect_attempts += 1;
        self.connect_retry = Some(now + self.jitter.apply(self.config.connect_retry));
        out.push(Output::Connect);
    }

    fn stop(&mut self, out: &mut Vec<Output<'_>>) {
        let was = self.state();
        let was_established = was == State::Established;
        self.admin_up = false;
        self.failures = 0;
        self.idle_hold = None;
        self.connect_retry = None;
        let cease = Notification::new(NotificationError::AdministrativeShutdown, vec![]);
        for c in std::mem::take(&mut self.conns) {
            self.send_notification(c.id, &cease, out);
            out.push(Output::Close { conn: c.id });
        }
        self.cancel_connect(out);
        self.base = State::Idle;
        self.counters.established_since = None;
        if was != State::Idle {
            self.last_error = Some(DownReason::AdminStop);
        }
        if was >= State::OpenSent {
            self.sync_state(out);
            out.push(Output::Down { reason: DownReason::AdminStop, was_established });
        }
    }

    fn connected(&mut self, now: Instant, conn: ConnId, inbound: bool, out: &mut Vec<Output<'_>>) {
        // RFC 4271 Idle refuses connections; an outbound one we did not ask for (cancelled,
        // or a duplicate) is dropped too.
        let wanted = if inbound { true } else { std::mem::replace(&mut self.connecting, false) };
        if self.state() == State::Idle || !wanted || self.conn(conn).is_some() {
            out.push(Output::Close { conn });
            return;
        }
        // Keep one connection per direction and two in all: an older one of the same direction
        // that is not Established was abandoned by whoever opened the new one.
        let stale =
            self.conns.iter().position(|c| c.inbound == inbound && c.state != State::Established).or_else(|| {
                (self.conns.len() >= 2).then(|| self.conns.iter().position(|c| c.state != State::Established)).flatten()
            });
        if let Some(i) = stale {
            let old = self.conns.remove(i);
            out.push(Output::Close { conn: old.id });
        }
        // RFC 4271 8.2.2 Connect/Active on TCP success: ConnectRetryTimer to zero, send OPEN,
        // large hold timer, OpenSent.
        self.connect_retry = None;
        self.conns.push(Conn {
            id: conn,
            inbound,
            state: State::OpenSent,
            hold: Some(now + OPEN_SENT_HOLD),
            keepalive: None,
            negotiated: None,
        });
        out.push(Output::Send { conn, bytes: self.open_bytes.clone() });
        self.counters.sent.add(msg_type::OPEN, 1);
    }

    fn connect_failed(&mut self) {
        if !std::mem::replace(&mut self.connecting, false) {
            return;
        }
        // Connect → Active: wait for the ConnectRetry timer (still running) or the peer.
        if self.conns.is_empty() && self.base == State::Connect {
            self.base = State::Active;
        }
    }

    fn message<'a>(&mut self, now: Instant, id: ConnId, msg: Message<'a>, out: &mut Vec<Output<'a>>) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let state = conn.state;
        self.counters.received.add(msg.type_code(), 1);
        match (state, msg) {
            (_, Message::Notification(n)) => {
                if let Some(c) = self.take_conn(id) {
                    out.push(Output::Close { conn: id });
                    self.conn_lost(now, c, DownReason::NotificationReceived(n), out);
                }
            }
            (State::OpenSent, Message::Open(open)) => self.open_received(now, id, open, out),
            (State::OpenConfirm, Message::Keepalive) => self.establish(now, id, out),
            (State::Established, msg @ (Message::Keepalive | Message::Update(_) | Message::RouteRefresh(_))) => {
                let conn = self.conn_mut(id).expect("connection looked up above");
                if let Some(hold) = conn.negotiated.as_ref().map(|n| n.hold_time).filter(|&h| h > 0) {
                    conn.hold = Some(now + Duration::from_secs(u64::from(hold)));
                }
                match msg {
                    Message::Update(u) => out.push(Output::Update(u)),
                    Message::RouteRefresh(r) => {
                        // RFC 2918 3: a refresh for a family not negotiated is ignored. Only a
                        // request asks for our routes: BoRR/EoRR mark the peer's own re-sending
                        // (RFC 7313, which we do not advertise), other subtypes are ignored (7313 5).
                        let negotiated = conn.negotiated.as_ref().map(|n| &n.families[..]).unwrap_or(&[]);
                        let request = r.subtype == RefreshSubtype::Request;
                        if request && Family::from_afi_safi(r.afi, r.safi).is_some_and(|f| negotiated.contains(&f)) {
                            out.push(Output::RouteRefresh(r));
                        }
                    }
                    _ => {}
                }
            }
            (state, msg) => {
                // RFC 6608: one subcode per state, data = the unexpected message type.
                let error = match state {
                    State::OpenSent => NotificationError::FsmUnexpectedInOpenSent,
                    State::OpenConfirm => NotificationError::FsmUnexpectedInOpenConfirm,
                    _ => NotificationError::FsmUnexpectedInEstablished,
                };
                let n = Notification::new(error, vec![msg.type_code()]);
                let reason = DownReason::NotificationSent {
                    notification: n.clone(),
                    reason: format!("unexpected message type {} in {state}", msg.type_code()),
                };
                self.fail_conn(now, id, n, reason, out);
            }
        }
    }

    fn open_received(&mut self, now: Instant, id: ConnId, open: Open, out: &mut Vec<Output<'_>>) {
        if let Err(rej) = validate_open(&self.config, &open) {
            let reason = DownReason::NotificationSent { notification: rej.notification.clone(), reason: rej.reason };
            self.fail_conn(now, id, rej.notification, reason, out);
            return;
        }
        let inbound = self.conn(id).expect("caller looked the connection up").inbound;
        // RFC 4724 4.2: with graceful restart on the Established session, a new OPEN from the
        // peer says it restarted and its old connection is gone (its RST lost): the old one is
        // closed without a NOTIFICATION, the session counts as down (the helper keeps the
        // peer's routes as stale), and the new connection goes on.
        let restarted = self.conns.iter().find(|c| {
            c.id != id
                && c.state == State::Established
                && c.negotiated.as_ref().is_some_and(|n| n.graceful_restart)
                && open.capabilities.iter().any(|cap| matches!(cap, Capability::GracefulRestart(_)))
        });
        if let Some(old) = restarted.map(|c| c.id) {
            if let Some(old) = self.take_conn(old) {
                out.push(Output::Close { conn: old.id });
                self.report_down(State::Established, DownReason::PeerRestarted, out);
            }
        }
        // RFC 4271 6.8: only a connection whose OPEN we have (OpenConfirm, Established) can
        // collide; we never know the peer's identifier before its OPEN.
        if let Some(other) = self.conns.iter().find(|c| c.id != id && c.state >= State::OpenConfirm) {
            let keep_other = if other.state == State::Established || other.inbound == inbound {
                // RFC 4271 6.8: an Established connection always wins (we do not set
                // CollisionDetectEstablishedState).
                true
            } else {
                // Keep the connection initiated by the higher identifier (RFC 6286 2.3: on
                // equal identifiers, by the higher AS).
                let local = u32::from(self.config.local_router_id);
                let remote = u32::from(open.bgp_id);
                let keep_outbound = if local != remote { local > remote } else { self.config.local_asn > open.asn() };
                other.inbound != keep_outbound
            };
            let loser = if keep_other { id } else { other.id };
            let cease = Notification::new(NotificationError::ConnectionCollisionResolution, vec![]);
            self.take_conn(loser);
            self.send_notification(loser, &cease, out);
            out.push(Output::Close { conn: loser });
            if keep_other {
                return;
            }
        }
        let negotiated = negotiate(&self.config, &self.local_open, &open);
        let hold = negotiated.hold_time;
        let keepalive = keepalive_interval(hold).map(|k| now + self.jitter.apply(k));
        let conn = self.conn_mut(id).expect("connection survived collision resolution");
        conn.state = State::OpenConfirm;
        conn.hold = (hold > 0).then(|| now + Duration::from_secs(u64::from(hold)));
        conn.keepalive = keepalive;
        conn.negotiated = Some(negotiated);
        self.send_keepalive(id, out);
    }

    fn establish(&mut self, now: Instant, id: ConnId, out: &mut Vec<Output<'_>>) {
        let conn = self.conn_mut(id).expect("caller looked the connection up");
        conn.state = State::Established;
        let negotiated = conn.negotiated.clone().expect("OpenConfirm connections have negotiated");
        if negotiated.hold_time > 0 {
            conn.hold = Some(now + Duration::from_secs(u64::from(negotiated.hold_time)));
        }
        self.counters.established_transitions += 1;
        self.counters.established_since = Some(now);
        self.sync_state(out);
        out.push(Output::Established(negotiated));
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Output<'_>>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            let Some(conn) = self.conn(id) else { continue };
            if due(conn.hold) {
                let n = Notification::new(NotificationError::HoldTimerExpired, vec![]);
                self.fail_conn(now, id, n, DownReason::HoldTimerExpired, out);
            } else if due(conn.keepalive) {
                let hold = conn.negotiated.as_ref().map_or(0, |n| n.hold_time);
                let next = keepalive_interval(hold).map(|k| now + self.jitter.apply(k));
                self.conn_mut(id).expect("looked up above").keepalive = next;
                self.send_keepalive(id, out);
            }
        }
        if !self.conns.is_empty() {
            return;
        }
        if due(self.connect_retry) && matches!(self.base, State::Connect | State::Active) && !self.config.passive {
            // RFC 4271: ConnectRetryTimer_Expires in Connect drops the pending attempt and
            // starts another; in Active it starts one. `Connect` replaces an attempt in flight.
            self.connect(now, out);
        }
        if due(self.idle_hold) && self.base == State::Idle && self.admin_up {
            self.idle_hold = None;
            self.begin(now, out);
        }
    }

    // ------------------------------------------------------------------------------------
    // Losing connections
    // ------------------------------------------------------------------------------------

    /// Sends `notification` on `id`, closes it and handles its loss.
    fn fail_conn(&mut self, now: Instant, id: ConnId, n: Notification, reason: DownReason, out: &mut Vec<Output<'_>>) {
        if let Some(c) = self.take_conn(id) {
            self.send_notification(id, &n, out);
            out.push(Output::Close { conn: id });
            self.conn_lost(now, c, reason, out);
        }
    }

    /// `lost` is gone (already closed). The session survives on another connection unless
    /// `lost` carried the Established session or was the last one.
    fn conn_lost(&mut self, now: Instant, lost: Conn, reason: DownReason, out: &mut Vec<Output<'_>>) {
        if lost.state != State::Established && !self.conns.is_empty() {
            return;
        }
        // RFC 4271 8.2.2: TcpConnectionFails in OpenSent goes to Active with the ConnectRetry
        // timer restarted; every other failure goes to Idle.
        if lost.state == State::OpenSent && reason == DownReason::ConnectionClosed {
            self.close_all(out);
            self.base = State::Active;
            if !self.config.passive {
                self.connect_retry = Some(now + self.jitter.apply(self.config.connect_retry));
            }
            self.report_down(lost.state, reason, out);
        } else {
            let was = self.state().max(lost.state);
            self.shut_down(now, was, None, reason, out);
        }
    }

    /// Everything goes to Idle from state `was`, with `n` sent first on every remaining
    /// connection, and the automatic restart scheduled after the idle hold.
    fn shut_down(
        &mut self,
        now: Instant,
        was: State,
        n: Option<Notification>,
        reason: DownReason,
        out: &mut Vec<Output<'_>>,
    ) {
        if was == State::Idle {
            return;
        }
        if let Some(n) = &n {
            for id in self.conns.iter().map(|c| c.id).collect::<Vec<_>>() {
                self.send_notification(id, n, out);
            }
        }
        self.close_all(out);
        if let Some(since) = self.counters.established_since {
            // A session that held for the whole backoff range was stable: start over.
            if now.saturating_duration_since(since) >= self.config.idle_hold_max {
                self.failures = 0;
            }
        }
        self.base = State::Idle;
        if self.admin_up {
            self.idle_hold = Some(now + idle_hold(self.config.connect_retry, self.failures, self.config.idle_hold_max));
            self.failures = self.failures.saturating_add(1);
        }
        self.report_down(was, reason, out);
    }

    /// Closes every remaining connection (without a NOTIFICATION) and any attempt in flight.
    fn close_all(&mut self, out: &mut Vec<Output<'_>>) {
        for c in std::mem::take(&mut self.conns) {
            out.push(Output::Close { conn: c.id });
        }
        self.cancel_connect(out);
        self.connect_retry = None;
    }

    fn report_down(&mut self, was: State, reason: DownReason, out: &mut Vec<Output<'_>>) {
        let was_established = was == State::Established;
        self.counters.established_since = None;
        self.last_error = Some(reason.clone());
        self.sync_state(out);
        if was >= State::OpenSent {
            out.push(Output::Down { reason, was_established });
        }
    }

    // ------------------------------------------------------------------------------------
    // Helpers
    // ------------------------------------------------------------------------------------

    fn cancel_connect(&mut self, out: &mut Vec<Output<'_>>) {
        if std::mem::replace(&mut self.connecting, false) {
            out.push(Output::CancelConnect);
        }
    }

    fn sync_state(&mut self, out: &mut Vec<Output<'_>>) {
        let now = self.state();
        if now != self.reported {
            out.push(Output::StateChanged { from: self.reported, to: now });
            self.reported = now;
        }
    }

    fn after_send(&mut self, now: Instant, id: ConnId, type_code: u8, count: u64) {
        self.counters.sent.add(type_code, count);
        if type_code != msg_type::UPDATE && type_code != msg_type::KEEPALIVE {
            return;
        }
        let Some(conn) = self.conn(id) else { return };
        let hold = conn.negotiated.as_ref().map_or(0, |n| n.hold_time);
        let next = keepalive_interval(hold).map(|k| now + self.jitter.apply(k));
        if let Some(conn) = self.conn_mut(id) {
            conn.keepalive = next;
        }
    }

    fn send_keepalive(&mut self, id: ConnId, out: &mut Vec<Output<'_>>) {
        let mut bytes = Vec::with_capacity(19);
        encode_message(&Message::Keepalive, &EncodeOptions::default(), &mut bytes).expect("KEEPALIVE always encodes");
        self.counters.sent.add(msg_type::KEEPALIVE, 1);
        out.push(Output::Send { conn: id, bytes });
    }

    fn send_notification(&mut self, id: ConnId, n: &Notification, out: &mut Vec<Output<'_>>) {
        // Diagnostic data (e.g. a whole malformed message echoed back) is cut to fit a
        // 4096-octet message rather than losing the NOTIFICATION.
        let mut n = n.clone();
        n.data.truncate(MAX_MESSAGE_LEN - 21);
        let mut bytes = Vec::new();
        encode_message(&Message::Notification(n), &EncodeOptions::default(), &mut bytes)
            .expect("a NOTIFICATION cut to 4096 octets always encodes");
        self.counters.sent.add(msg_type::NOTIFICATION, 1);
        out.push(Output::Send { conn: id, bytes });
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn take_conn(&mut self, id: ConnId) -> Option<Conn> {
        let i = self.conns.iter().position(|c| c.id == id)?;
        Some(self.conns.remove(i))
    }

    fn established(&self) -> Option<&Conn> {
        self.conns.iter().find(|c| c.state == State::Established)
    }

    fn established_mut(&mut self) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.state == State::Established)
    }
}
