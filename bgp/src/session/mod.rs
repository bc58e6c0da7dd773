//! The BGP session finite state machine (RFC 4271 8), sans-IO: one [`Session`] per configured
//! peering owns its connections, timers, OPEN validation and capability negotiation. It never
//! touches a socket, reads a clock or draws a random number: the driver passes
//! `now` and [`Input`]s to [`Session::handle`] and performs the returned [`Output`]s in order.
//!
//! # Driving it
//!
//! ```text
//!  driver                                         Session
//!  ──────                                         ───────
//!  admin up ─────────────── Input::Start ───────▶  Idle → Connect   ─▶ Output::Connect
//!  TCP connect finished ─── Connected{conn} ────▶  sends OPEN       ─▶ Output::Send{conn}
//!  bytes → MessageReader(decode_options(conn))
//!        ─ Message{conn, msg} / DecodeError ────▶  OPEN, KEEPALIVE  ─▶ Output::Established(..)
//!                                                  UPDATE           ─▶ Output::Update(update)
//!  sleep until next_deadline() ─── Tick ────────▶  keepalives, hold, retries
//!  RIB wants to announce ── send_message() ─────▶  encoded bytes    ─▶ Output::Send{conn}
//! ```
//!
//! * **Connections.** The driver names every TCP connection with a [`ConnId`] of its
//!   choosing. [`Output::Connect`] asks for one outbound attempt; the driver answers with
//!   [`Input::Connected`] (`inbound: false`) or [`Input::ConnectFailed`]. A new `Connect`
//!   replaces an attempt still in progress (RFC 4271: ConnectRetry expiry drops the pending
//!   connection and starts another); [`Output::CancelConnect`] abandons it. Accepted
//!   connections from the peer's address are reported as `Connected { inbound: true }`.
//! * **Order matters.** A `Send` followed by `Close` of the same connection means: write the
//!   bytes (the NOTIFICATION), then close. Closing is final: the FSM forgets the connection
//!   when it emits `Close`, and ignores anything later reported for it.
//! * **UPDATEs go through the FSM and come back.** [`Input::Message`] moves the decoded
//!   message in; an UPDATE (or ROUTE-REFRESH) accepted in Established is handed back as
//!   [`Output::Update`] (`Output<'a>` borrows the same read buffer, so nothing is copied).
//!   One place therefore decides whether a message reaches the RIB: an UPDATE in the wrong
//!   state produces an FSM-error NOTIFICATION instead and is dropped. RFC 7606
//!   treat-as-withdraw and attribute-discard are the RIB's business and pass through
//!   untouched; a session reset arrives as [`Input::DecodeError`] and sends the codec's
//!   NOTIFICATION.
//! * **Decode options change mid-stream**: after an OPEN is accepted on a connection the
//!   next messages on it must be decoded with [`Session::decode_options`] (4-octet AS,
//!   extended message), so call it before decoding each message.
//!
//! # Behaviour worth knowing (and where it departs from RFC 4271 8.2.2)
//!
//! * **Automatic restart with idle hold.** The daemon always wants its peers up until
//!   [`Input::Stop`], so after any failure the session waits in Idle and restarts itself
//!   (AllowAutomaticStart with DampPeerOscillations). The wait is `connect_retry` doubled for
//!   every consecutive failure, capped at `idle_hold_max` (5, 10, 20 ... 120 s by default);
//!   a session that stayed Established for at least `idle_hold_max` counts as stable and
//!   its next failure waits only `connect_retry` again. Like the RFC's Idle state, inbound
//!   connections are refused while waiting. `Stop` cancels the restart until `Start`.
//! * **A failed connect goes to Active, not Idle**: the ConnectRetry timer keeps running
//!   and the next attempt starts when it fires, while the peer's own connection is still
//!   accepted in between. (RFC 4271 goes Idle here; with automatic start the retry cadence
//!   is the same, but Idle would refuse the peer's connection.) A connection closed in
//!   OpenSent also goes to Active, as the RFC says.
//! * **Collisions** (RFC 4271 6.8, RFC 6286 2.3): at most one inbound and one outbound
//!   connection are kept. When an OPEN is accepted on one while the other is in OpenConfirm
//!   or Established, the survivor is the Established one, else the one initiated by the side
//!   with the higher BGP identifier (on equal identifiers, the higher AS). The loser gets
//!   Cease / Connection Collision Resolution (6/7). Any second connection to the same
//!   configured peer counts as a collision even if the identifiers differ (the peer changed
//!   its identifier), so a peering never ends up with two sessions. A newer inbound
//!   connection replaces an older one that is not yet Established (the peer gave up on it).
//! * **Lenient negotiation**: unknown capabilities are ignored, and a peer with no family in
//!   common still reaches Established with an empty [`Negotiated::families`] (the driver
//!   logs it; nothing is exchanged). FRR sends Unsupported Capability (2/7) only in its
//!   strict mode; refusing would turn a family mismatch into a connect loop.
//! * **Hold timer** restarts on every message received in Established, ROUTE-REFRESH
//!   included (RFC 4271 names KEEPALIVE and UPDATE; any message proves the peer alive).
//!   While waiting for the OPEN it is 4 minutes. The keepalive timer restarts whenever we
//!   send a KEEPALIVE or UPDATE. ConnectRetry and keepalive times are jittered by a factor in
//!   0.75..=1.0 from `jitter_seed` (RFC 4271 10).
//! * **A received NOTIFICATION is never answered**, in any state: RFC 4271 8.2.2 lists it
//!   among the OpenSent events answered with an FSM error, but 6.4 says a NOTIFICATION
//!   cannot be used to report anything about a NOTIFICATION; we close and go down with its
//!   code.
//! * **Not implemented**: DelayOpen (we send our OPEN as soon as TCP is up, so every
//!   NOTIFICATION follows our OPEN), version negotiation (only BGP-4 exists), the GR
//!   procedures themselves (the peer's capability is reported for the helper), RFC 8538.

mod config;
mod fsm;
mod negotiation;
mod timers;

#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Instant;

pub use config::{
    ConfigError, GracefulRestartConfig, SessionConfig, DEFAULT_CONNECT_RETRY, DEFAULT_HOLD_TIME, DEFAULT_IDLE_HOLD_MAX,
};
pub use fsm::{SendError, Session};
pub use negotiation::Negotiated;
pub use timers::OPEN_SENT_HOLD;

use crate::wire::{msg_type, DecodeError, Message, Notification, RouteRefresh, Update};

/// The driver's name for one TCP connection (unique among the connections it reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// RFC 4271 8.2.2 states. The session's state is its most advanced connection's, or
/// Idle/Connect/Active when it has none past Active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// Everything that happens to a session.
// Message is as large as an UPDATE; boxing it would allocate per received UPDATE.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input<'a> {
    /// ManualStart: connect (unless passive) and accept the peer; restart after failures.
    Start,
    /// ManualStop: Cease / Administrative Shutdown on every connection, Idle, and no
    /// automatic restart until the next `Start`.
    Stop,
    /// AutomaticStop (RFC 4271 event 8): send `notification` (e.g. Cease / Maximum Number of
    /// Prefixes Reached, or Administrative Reset for `clear bgp`), go Idle, and restart after
    /// the idle hold. `reason` is kept for logs and [`Session::last_error`].
    AutomaticStop { notification: Notification, reason: String },
    /// The forwarding path to the peer failed (BFD declared it down, RFC 5882 4.3): every
    /// connection is dropped without a NOTIFICATION (it could not arrive), the session goes
    /// Idle and restarts after the idle hold.
    PathDown { reason: String },
    /// A TCP connection is up: our outbound attempt finished (`inbound: false`), or the
    /// peer's connection was accepted (`inbound: true`).
    Connected { conn: ConnId, inbound: bool },
    /// The outbound attempt failed.
    ConnectFailed { conn: ConnId },
    /// The connection was closed by the peer or failed (read/write error, EOF).
    Closed { conn: ConnId },
    /// One decoded message.
    Message { conn: ConnId, msg: Message<'a> },
    /// The codec refused a message: its NOTIFICATION is sent and the connection closed.
    DecodeError { conn: ConnId, err: DecodeError },
    /// `now` reached [`Session::next_deadline`].
    Tick,
}

/// Something the driver must do or know, in order.
// Update is the common case and borrows the read buffer; boxing it would allocate per UPDATE.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<'a> {
    /// Start one outbound TCP connection to the peer, replacing any attempt in progress.
    Connect,
    /// Abandon the outbound attempt in progress (if it completes anyway, report it: it will
    /// be closed).
    CancelConnect,
    /// Write these bytes (whole encoded messages) to the connection.
    Send {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Close the connection (after writing what was sent before).
    Close {
        conn: ConnId,
    },
    StateChanged {
        from: State,
        to: State,
    },
    /// The session is up with these terms; the driver switches its encoder and tells the RIB.
    Established(Negotiated),
    /// An UPDATE accepted in Established: hand it to the RIB.
    Update(Update<'a>),
    /// A ROUTE-REFRESH for a negotiated family: re-send the Adj-RIB-Out of that family.
    RouteRefresh(RouteRefresh),
    /// The session went down from OpenSent or later (when `was_established`, every route
    /// learned from the peer must be withdrawn, or kept stale by the GR helper).
    Down {
        reason: DownReason,
        was_established: bool,
    },
}

/// Why the session went down (also kept as [`Session::last_error`] for `show bgp summary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// [`Input::Stop`].
    AdminStop,
    /// No message from the peer within the hold time; we sent 4/0.
    HoldTimerExpired,
    /// We detected an error (bad OPEN, unexpected message, malformed message, automatic stop)
    /// and sent this NOTIFICATION.
    NotificationSent {
        notification: Notification,
        reason: String,
    },
    NotificationReceived(Notification),
    /// The TCP connection closed without a NOTIFICATION.
    ConnectionClosed,
    /// [`Input::PathDown`]: e.g. BFD detected the failure before the hold timer.
    PathDown(String),
    /// A new OPEN from the peer while the session with graceful restart was Established: the
    /// peer restarted and its old connection is gone (RFC 4724 4.2).
    PeerRestarted,
}

impl DownReason {
    /// The NOTIFICATION involved, either way.
    pub fn notification(&self) -> Option<&Notification> {
        match self {
            DownReason::NotificationSent { notification, .. } | DownReason::NotificationReceived(notification) => {
                Some(notification)
            }
            _ => None,
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::AdminStop => f.write_str("administratively stopped"),
            DownReason::HoldTimerExpired => f.write_str("hold timer expired"),
            DownReason::NotificationSent { notification, reason } => {
                write!(f, "sent NOTIFICATION {notification}: {reason}")
            }
            DownReason::NotificationReceived(n) => write!(f, "received NOTIFICATION {n}"),
            DownReason::ConnectionClosed => f.write_str("connection closed by peer"),
            DownReason::PathDown(reason) => f.write_str(reason),
            DownReason::PeerRestarted => f.write_str("the peer restarted (new OPEN with graceful restart)"),
        }
    }
}

/// Messages of each type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
}

impl MessageCounts {
    pub fn total(&self) -> u64 {
        self.open + self.update + self.notification + self.keepalive + self.route_refresh
    }

    fn add(&mut self, type_code: u8, n: u64) {
        let c = match type_code {
            msg_type::OPEN => &mut self.open,
            msg_type::UPDATE => &mut self.update,
            msg_type::NOTIFICATION => &mut self.notification,
            msg_type::KEEPALIVE => &mut self.keepalive,
            _ => &mut self.route_refresh,
        };
        *c += n;
    }
}

/// Counters for `show bgp summary` and metrics; they survive flaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub sent: MessageCounts,
    pub received: MessageCounts,
    /// Transitions into Established (flaps = this minus one while up).
    pub established_transitions: u64,
    /// When the current Established period began (uptime); `None` when not Established.
    pub established_since: Option<Instant>,
    /// Outbound connection attempts requested.
    pub connect_attempts: u64,
}
