//! One BFD session in asynchronous mode (RFC 5880 6.8), sans-IO: [`Session::handle`] turns the
//! current time and an [`Input`] into [`Output`]s, and [`Session::next_deadline`] says when to
//! come back with [`Input::Tick`]. It owns the state variables of 6.8.1, the reception rules of
//! 6.8.6, the timers of 6.8.2-6.8.4 and 6.8.7 and the Poll Sequence of 6.5; it never touches a
//! socket, reads a clock or draws from the operating system's randomness (the per-packet
//! jitter comes from [`SessionConfig::jitter_seed`]).
//!
//! Choices worth knowing:
//! * A session starts Down and sends its first packet at once; while not Up it advertises and
//!   uses a Desired Min TX of at least one second (6.8.3), and switches to the configured
//!   interval with a Poll Sequence once Up.
//! * A state change sends a packet at once (and restarts the periodic schedule from it), so
//!   the three-way handshake takes round trips, not slow-timer periods.
//! * AdminDown keeps sending AdminDown packets at the slow rate (6.8.16 allows it
//!   indefinitely), so the peer shows the session as administratively down instead of timing
//!   out. Removing a session is the caller's business: send the packet of
//!   [`Input::AdminDown`], then drop the session.
//! * A peer's AdminDown takes the session Down with diagnostic 3 and
//!   `peer_admin_down: true`: RFC 5882 3.2 says this is not a path failure, and clients such
//!   as BGP must not tear down their own session for it.
//! * A Poll Sequence starts whenever an advertised interval changes and the peer is known
//!   (its discriminator), as BIRD does. While Up, a longer transmit interval or a shorter
//!   receive interval only takes effect once the peer answers with Final (6.8.3).
//! * Demand mode and the Echo function are not implemented: we never set D and always
//!   advertise a Required Min Echo RX of 0. A peer in Demand mode is honoured (6.8.7).

use std::time::{Duration, Instant};

use super::packet::{ControlPacket, Diag, State};

/// The slowest transmit interval allowed while the session is not Up (RFC 5880 6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);
/// The shortest interval accepted in a configuration: below it a software timer is noise.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest interval the 32-bit microsecond wire fields can carry.
pub const MAX_INTERVAL: Duration = Duration::from_micros(u32::MAX as u64);

/// A configuration the session refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the local discriminator must not be 0 (RFC 5880 6.8.1)")]
    DiscriminatorZero,
    #[error("detect multiplier must be 1-255, got 0")]
    DetectMultZero,
    #[error("{name} {value:?} is outside {MIN_INTERVAL:?}..={MAX_INTERVAL:?}")]
    Interval { name: &'static str, value: Duration },
}

/// The timing parameters we advertise: validated, so a session never runs with bad ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timers {
    desired_min_tx: Duration,
    required_min_rx: Duration,
    detect_mult: u8,
}

impl Timers {
    pub fn new(desired_min_tx: Duration, required_min_rx: Duration, detect_mult: u8) -> Result<Timers, ConfigError> {
        for (name, value) in [("desired min tx", desired_min_tx), ("required min rx", required_min_rx)] {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
                return Err(ConfigError::Interval { name, value });
            }
        }
        if detect_mult == 0 {
            return Err(ConfigError::DetectMultZero);
        }
        Ok(Timers { desired_min_tx, required_min_rx, detect_mult })
    }

    /// The same interval both ways, the usual configuration.
    pub fn symmetric(interval: Duration, detect_mult: u8) -> Result<Timers, ConfigError> {
        Timers::new(interval, interval, detect_mult)
    }

    pub fn desired_min_tx(&self) -> Duration {
        self.desired_min_tx
    }

    pub fn required_min_rx(&self) -> Duration {
        self.required_min_rx
    }

    pub fn detect_mult(&self) -> u8 {
        self.detect_mult
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// bfd.LocalDiscr: nonzero and unique among the caller's sessions (it demultiplexes).
    pub local_discr: u32,
    pub timers: Timers,
    /// Seed of the per-packet jitter (transmit intervals are 75-100 % of the negotiated one,
    /// 75-90 % with a detect multiplier of 1). `None` sends at the longest allowed interval
    /// (100 %, or 90 %), which makes deadlines exact in tests.
    pub jitter_seed: Option<u64>,
}

impl SessionConfig {
    pub fn new(local_discr: u32, timers: Timers, jitter_seed: Option<u64>) -> SessionConfig {
        SessionConfig { local_discr, timers, jitter_seed }
    }
}

/// Everything that happens to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A Control packet that passed [`ControlPacket::decode`] and was demultiplexed to this
    /// session (by Your Discriminator, or by address while it is 0).
    Received(ControlPacket),
    /// `now` reached [`Session::next_deadline`].
    Tick,
    /// Disable the session (RFC 5880 6.8.16): AdminDown with diagnostic 7, told to the peer.
    AdminDown,
    /// Enable it again: Down, and the handshake starts over.
    AdminUp,
    /// New timing parameters; a Poll Sequence tells the peer.
    Reconfigure(Timers),
}

/// What the caller must do or know, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet to the peer now.
    Send(ControlPacket),
    /// The local state changed. `peer_admin_down` is true when the peer signalled AdminDown:
    /// the session is Down, but the path has not failed (RFC 5882 3.2).
    StateChanged { from: State, to: State, diag: Diag, peer_admin_down: bool },
}

/// The peer as its last packet described it (RFC 5880 6.8.1 bfd.Remote*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// bfd.RemoteDiscr: 0 until heard, and again once a Detection Time passes in silence.
    pub discr: u32,
    pub state: State,
    pub diag: Diag,
    pub desired_min_tx: Duration,
    /// bfd.RemoteMinRxInterval: how often the peer accepts packets; 1 µs before it is heard.
    pub required_min_rx: Duration,
    /// 0 until heard.
    pub detect_mult: u8,
    pub demand: bool,
}

impl Remote {
    fn unknown() -> Remote {
        Remote {
            discr: 0,
            state: State::Down,
            diag: Diag::NONE,
            desired_min_tx: Duration::ZERO,
            required_min_rx: Duration::from_micros(1),
            detect_mult: 0,
            demand: false,
        }
    }
}

/// Counters for `show bfd peers` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Control packets accepted by this session.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Every state change.
    pub transitions: u64,
    /// Transitions into Up.
    pub up_transitions: u64,
    /// Transitions from Up to Down that were not the peer's AdminDown: path failures.
    pub failures: u64,
}

/// Per-packet jitter source (splitmix64): seeded, so a recorded run replays to the same
/// deadlines.
#[derive(Debug, Clone)]
struct Jitter(Option<u64>);

impl Jitter {
    /// A fraction uniform in `lo..=hi`, or `hi` without a seed.
    fn fraction(&mut self, lo: f64, hi: f64) -> f64 {
        let Some(state) = &mut self.0 else { return hi };
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }
}

/// The state machine of one session. See the module documentation for the contract.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    /// bfd.LocalDiag.
    diag: Diag,
    peer_admin_down: bool,
    remote: Remote,
    /// bfd.DesiredMinTxInterval and bfd.RequiredMinRxInterval: what our packets advertise.
    desired_min_tx: Duration,
    required_min_rx: Duration,
    /// The values the timers use; they lag the advertised ones while a Poll Sequence
    /// confirms a change that must not take effect before the peer knows (6.8.3).
    tx_in_use: Duration,
    rx_in_use: Duration,
    /// A Poll Sequence is in progress: our periodic packets carry P until a Final arrives.
    poll: bool,
    /// The parameters changed again during the Poll Sequence: poll once more after it.
    repoll: bool,
    last_tx: Option<Instant>,
    next_tx: Option<Instant>,
    /// The last packet that counts for the Detection Time; `None` while there is none.
    last_rx: Option<Instant>,
    jitter: Jitter,
    counters: Counters,
    last_change: Instant,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Session {
    /// A session in Down whose first packet is due at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Result<Session, ConfigError> {
        if config.local_discr == 0 {
            return Err(ConfigError::DiscriminatorZero);
        }
        let timers = config.timers;
        let desired_min_tx = timers.desired_min_tx.max(SLOW_TX);
        Ok(Session {
            jitter: Jitter(config.jitter_seed),
            config,
            state: State::Down,
            diag: Diag::NONE,
            peer_admin_down: false,
            remote: Remote::unknown(),
            desired_min_tx,
            required_min_rx: timers.required_min_rx,
            tx_in_use: desired_min_tx,
            rx_in_use: timers.required_min_rx,
            poll: false,
            repoll: false,
            last_tx: None,
            next_tx: Some(now),
            last_rx: None,
            counters: Counters::default(),
            last_change: now,
        })
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Received(packet) => self.receive(now, packet, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::AdminDown => {
                if self.state != State::AdminDown {
                    self.transition(now, State::AdminDown, Diag::ADMINISTRATIVELY_DOWN, false, &mut out);
                }
            }
            Input::AdminUp => {
                if self.state == State::AdminDown {
                    self.transition(now, State::Down, Diag::NONE, false, &mut out);
                }
            }
            Input::Reconfigure(timers) => {
                self.config.timers = timers;
                self.update_local_timers(now);
            }
        }
        out
    }

    /// The earliest time [`Input::Tick`] is due: the next periodic packet or the end of the
    /// Detection Time.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_tx, self.detection_deadline()].into_iter().flatten().min()
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// bfd.LocalDiag: why the state last changed.
    pub fn diag(&self) -> Diag {
        self.diag
    }

    /// The session is Down because the peer is AdminDown: not a failure (RFC 5882 3.2).
    pub fn peer_admin_down(&self) -> bool {
        self.peer_admin_down
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn local_discr(&self) -> u32 {
        self.config.local_discr
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// When the state last changed (creation counts).
    pub fn last_change(&self) -> Instant {
        self.last_change
    }

    /// When the last packet that counts for the Detection Time arrived (none in AdminDown,
    /// nor after a Detection Time of silence).
    pub fn last_received(&self) -> Option<Instant> {
        self.last_rx
    }

    /// A Poll Sequence is in progress.
    pub fn polling(&self) -> bool {
        self.poll
    }

    /// The advertised bfd.DesiredMinTxInterval (at least [`SLOW_TX`] while not Up).
    pub fn desired_min_tx(&self) -> Duration {
        self.desired_min_tx
    }

    /// How long the peer may stay silent before the session goes down (6.8.4): the peer's
    /// detect multiplier times the longer of our Required Min RX and its Desired Min TX.
    /// `None` until the peer is heard.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote.detect_mult > 0)
            .then(|| self.rx_in_use.max(self.remote.desired_min_tx) * u32::from(self.remote.detect_mult))
    }

    /// The negotiated interval between periodic packets before jitter (6.8.7), or `None`
    /// when none are sent (the peer asked for none, or runs Demand mode).
    pub fn transmit_interval(&self) -> Option<Duration> {
        if self.remote.required_min_rx.is_zero() {
            return None;
        }
        let demand = self.remote.demand && self.state == State::Up && self.remote.state == State::Up && !self.poll;
        (!demand).then(|| self.tx_in_use.max(self.remote.required_min_rx))
    }

    /// When the session goes down unless the peer is heard before: the last packet plus
    /// the Detection Time (none in AdminDown or before the peer is heard).
    pub fn detection_deadline(&self) -> Option<Instant> {
        if self.state == State::AdminDown {
            return None;
        }
        Some(self.last_rx? + self.detection_time()?)
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.detection_deadline().is_some_and(|at| now >= at) {
            self.detection_expired(now, out);
        }
        if self.next_tx.is_some_and(|at| now >= at) {
            self.send_periodic(now, out);
        }
    }

    /// A Detection Time without a packet (6.8.1, 6.8.5): forget the peer; Init and Up go Down.
    fn detection_expired(&mut self, now: Instant, out: &mut Vec<Output>) {
        let interval = self.transmit_interval();
        self.last_rx = None;
        self.remote = Remote::unknown();
        self.end_poll();
        if matches!(self.state, State::Init | State::Up) {
            self.transition(now, State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED, false, out);
        } else if self.transmit_interval() != interval {
            self.reschedule(now);
        }
    }

    /// RFC 5880 6.8.6 from "Set bfd.RemoteDiscr to the value of My Discriminator" on; the
    /// checks before it are the decoder's and the demultiplexer's.
    fn receive(&mut self, now: Instant, p: ControlPacket, out: &mut Vec<Output>) {
        if p.your_discr != 0 && p.your_discr != self.config.local_discr {
            return; // misrouted by the caller: not ours
        }
        self.counters.packets_in += 1;
        let interval = self.transmit_interval();
        self.remote = Remote {
            discr: p.my_discr,
            state: p.state,
            diag: p.diag,
            desired_min_tx: p.desired_min_tx(),
            required_min_rx: p.required_min_rx(),
            detect_mult: p.detect_mult,
            demand: p.demand,
        };
        if self.poll && p.final_ {
            if self.repoll {
                self.repoll = false; // the Final may answer a Poll sent before the last change
            } else {
                self.end_poll();
            }
        }
        if self.state == State::AdminDown {
            if self.transmit_interval() != interval {
                self.reschedule(now);
            }
            return;
        }
        self.last_rx = Some(now);
        let next = match (self.state, p.state) {
            (State::Down, State::AdminDown) => None,
            (_, State::AdminDown) => Some((State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN, true)),
            (State::Down, State::Down) => Some((State::Init, Diag::NONE, false)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => Some((State::Up, Diag::NONE, false)),
            (State::Up, State::Down) => Some((State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN, false)),
            _ => None,
        };
        match next {
            Some((to, diag, peer_admin_down)) => self.transition(now, to, diag, peer_admin_down, out),
            None if self.transmit_interval() != interval => self.reschedule(now),
            None => {}
        }
        if p.poll {
            self.send_final(out);
        }
    }

    fn transition(&mut self, now: Instant, to: State, diag: Diag, peer_admin_down: bool, out: &mut Vec<Output>) {
        let from = self.state;
        self.state = to;
        self.diag = diag;
        self.peer_admin_down = peer_admin_down;
        self.last_change = now;
        self.counters.transitions += 1;
        if to == State::Up {
            self.counters.up_transitions += 1;
        }
        if from == State::Up && to == State::Down && !peer_admin_down {
            self.counters.failures += 1;
        }
        out.push(Output::StateChanged { from, to, diag, peer_admin_down });
        if to == State::AdminDown {
            self.last_rx = None;
            self.end_poll();
        }
        self.update_local_timers(now);
        // Tell the peer at once rather than at the next (possibly slow) periodic packet.
        self.send_periodic(now, out);
    }

    /// Recomputes the advertised intervals from the configuration and the state (slow while
    /// not Up, 6.8.3) and starts a Poll Sequence if they changed.
    fn update_local_timers(&mut self, now: Instant) {
        let timers = self.config.timers;
        let tx = if self.state == State::Up { timers.desired_min_tx } else { timers.desired_min_tx.max(SLOW_TX) };
        let rx = timers.required_min_rx;
        if self.state != State::Up {
            // Not Up, the values in use are the advertised ones at once, also when a slower
            // transmit rate advertised while Up was still waiting for the peer's Final (6.8.3:
            // at least 1 s while not Up).
            self.tx_in_use = tx;
            self.rx_in_use = rx;
        }
        if tx == self.desired_min_tx && rx == self.required_min_rx {
            return;
        }
        let interval = self.transmit_interval();
        self.desired_min_tx = tx;
        self.required_min_rx = rx;
        if self.state == State::Up {
            // A faster transmit rate or a longer receive interval is safe at once; the
            // opposite waits for the peer's Final.
            self.tx_in_use = self.tx_in_use.min(tx);
            self.rx_in_use = self.rx_in_use.max(rx);
        } else {
            self.tx_in_use = tx;
            self.rx_in_use = rx;
        }
        if self.state != State::AdminDown && self.remote.discr != 0 {
            if self.poll {
                self.repoll = true;
            }
            self.poll = true;
        }
        if self.transmit_interval() != interval {
            self.reschedule(now);
        }
    }

    fn end_poll(&mut self) {
        self.poll = false;
        self.repoll = false;
        self.tx_in_use = self.desired_min_tx;
        self.rx_in_use = self.required_min_rx;
    }

    /// A jittered transmit interval (6.8.7): 75-100 %, or 75-90 % with a multiplier of 1.
    fn jittered(&mut self, interval: Duration) -> Duration {
        let hi = if self.config.timers.detect_mult == 1 { 0.9 } else { 1.0 };
        interval.mul_f64(self.jitter.fraction(0.75, hi))
    }

    /// The interval changed: the next periodic packet follows the last one by the new one.
    fn reschedule(&mut self, now: Instant) {
        self.next_tx = match self.transmit_interval() {
            Some(interval) => {
                let from = self.last_tx.unwrap_or(now);
                Some((from + self.jittered(interval)).max(now))
            }
            None => None,
        };
    }

    fn send_periodic(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.transmit_interval() {
            Some(interval) => {
                out.push(Output::Send(self.packet(false)));
                self.counters.packets_out += 1;
                self.last_tx = Some(now);
                self.next_tx = Some(now + self.jittered(interval));
            }
            None => self.next_tx = None,
        }
    }

    /// The answer to a Poll: at once, outside the periodic schedule, in any state (6.8.7).
    fn send_final(&mut self, out: &mut Vec<Output>) {
        out.push(Output::Send(self.packet(true)));
        self.counters.packets_out += 1;
    }

    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.diag,
            state: self.state,
            poll: self.poll && !final_,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.config.timers.detect_mult,
            my_discr: self.config.local_discr,
            your_discr: self.remote.discr,
            desired_min_tx_us: micros(self.desired_min_tx),
            required_min_rx_us: micros(self.required_min_rx),
            required_min_echo_rx_us: 0,
        }
    }
}
