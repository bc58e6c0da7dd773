//! Session behaviour with a fake clock (a base `Instant` plus offsets), one test per
//! behaviour, and two sessions wired back to back through the codec.

use std::time::{Duration, Instant};

use super::packet::{ControlPacket, Diag, State};
use super::session::{Input, Output, Session, SessionConfig, Timers, SLOW_TX};

pub(super) const LOCAL: u32 = 1;
pub(super) const PEER: u32 = 2;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Our side: discriminator 1, 100 ms both ways, multiplier 3, no jitter.
fn session(t0: Instant) -> Session {
    let timers = Timers::symmetric(ms(100), 3).unwrap();
    Session::new(SessionConfig::new(LOCAL, timers, None), t0).unwrap()
}

/// A packet from the peer (discriminator 2) in `state`, advertising `tx`/`rx` ms and `mult`.
pub(super) fn from_peer(state: State, tx: u64, rx: u64, mult: u8) -> ControlPacket {
    ControlPacket {
        diag: Diag::NONE,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: mult,
        my_discr: PEER,
        your_discr: if matches!(state, State::Down | State::AdminDown) { 0 } else { LOCAL },
        desired_min_tx_us: (tx * 1000) as u32,
        required_min_rx_us: (rx * 1000) as u32,
        required_min_echo_rx_us: 0,
    }
}

fn sent(out: &[Output]) -> Vec<ControlPacket> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<(State, State, Diag, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::StateChanged { from, to, diag, peer_admin_down } => Some((*from, *to, *diag, *peer_admin_down)),
            _ => None,
        })
        .collect()
}

/// Brings `s` Up at `t0 + 10 ms` through Down -> Init -> Up with a peer already at its fast
/// interval; the peer's Final at `t0 + 20 ms` ends our Poll Sequence.
fn bring_up(s: &mut Session, t0: Instant) {
    s.handle(t0, Input::Tick);
    s.handle(t0 + ms(5), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    let out = s.handle(t0 + ms(10), Input::Received(from_peer(State::Up, 100, 100, 3)));
    assert_eq!(s.state(), State::Up, "{out:?}");
    let mut fin = from_peer(State::Up, 100, 100, 3);
    fin.final_ = true;
    s.handle(t0 + ms(20), Input::Received(fin));
    assert!(!s.polling());
}

#[test]
fn starts_down_sending_one_packet_a_second_until_the_peer_is_heard() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.next_deadline(), Some(t0), "the first packet goes out at once");
    let out = s.handle(t0, Input::Tick);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].state, p[0].your_discr, p[0].my_discr), (State::Down, 0, LOCAL));
    // 6.8.3: Desired Min TX of at least one second while not Up; our receive interval as configured.
    assert_eq!((p[0].desired_min_tx(), p[0].required_min_rx()), (SLOW_TX, ms(100)));
    assert_eq!(s.next_deadline(), Some(t0 + SLOW_TX));
    assert!(s.handle(t0 + ms(999), Input::Tick).is_empty());
    assert_eq!(sent(&s.handle(t0 + SLOW_TX, Input::Tick)).len(), 1);
    assert_eq!(s.detection_time(), None);
}

#[test]
fn three_way_handshake_goes_init_then_up_and_starts_a_poll_for_the_fast_interval() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle(t0, Input::Tick);

    let out = s.handle(t0 + ms(5), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert_eq!(changes(&out), [(State::Down, State::Init, Diag::NONE, false)]);
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].your_discr, p[0].poll), (State::Init, PEER, false), "Init is sent at once");

    let out = s.handle(t0 + ms(10), Input::Received(from_peer(State::Init, 1000, 100, 3)));
    assert_eq!(changes(&out), [(State::Init, State::Up, Diag::NONE, false)]);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].state, p[0].poll, p[0].final_), (State::Up, true, false));
    assert_eq!(p[0].desired_min_tx(), ms(100), "Up advertises the configured interval");
    // A faster rate is used at once; the slow peer still sends every second.
    assert_eq!(s.transmit_interval(), Some(ms(100)));
    assert_eq!(s.detection_time(), Some(ms(3000)));
    assert_eq!(s.counters().up_transitions, 1);
}

#[test]
fn down_peer_reporting_up_directly_takes_us_from_down_to_up() {
    // A Down session hearing Init goes Up at once (6.8.6); hearing Up does nothing.
    let t0 = Instant::now();
    let mut s = session(t0);
    let out = s.handle(t0, Input::Received(from_peer(State::Up, 100, 100, 3)));
    assert!(changes(&out).is_empty());
    let out = s.handle(t0, Input::Received(from_peer(State::Init, 100, 100, 3)));
    assert_eq!(changes(&out), [(State::Down, State::Up, Diag::NONE, false)]);
}

#[test]
fn detects_a_silent_peer_exactly_detect_mult_times_the_interval_after_its_last_packet() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let last = t0 + ms(100);
    s.handle(last, Input::Received(from_peer(State::Up, 100, 100, 3)));
    assert_eq!(s.detection_time(), Some(ms(300)));
    let deadline = last + ms(300);
    // Our own packets are due every 100 ms before that; none of those ticks ends the session.
    let mut now = last;
    while let Some(at) = s.next_deadline().filter(|at| *at < deadline) {
        now = at;
        assert!(changes(&s.handle(now, Input::Tick)).is_empty(), "down early at {:?}", now - last);
    }
    assert!(now < deadline);
    assert_eq!(s.next_deadline(), Some(deadline), "detection deadline is last packet + 3 x 100 ms");
    let out = s.handle(deadline, Input::Tick);
    assert_eq!(changes(&out), [(State::Up, State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED, false)]);
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].diag, p[0].your_discr), (State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED, 0));
    assert_eq!(p[0].desired_min_tx(), SLOW_TX, "back to the slow rate");
    assert_eq!(s.remote().discr, 0, "the peer is forgotten");
    assert_eq!(s.counters().failures, 1);
}

#[test]
fn detection_time_is_the_peer_multiplier_times_the_slower_of_our_rx_and_its_tx() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    // The peer sends every 300 ms with multiplier 5: 5 x max(100, 300).
    s.handle(t0 + ms(30), Input::Received(from_peer(State::Up, 300, 100, 5)));
    assert_eq!(s.detection_time(), Some(ms(1500)));
    assert_eq!(s.next_deadline().map(|d| d - t0), Some(ms(110)), "our next packet comes first");
    // The peer could send every 20 ms but we accept one per 100 ms: 2 x max(100, 20).
    s.handle(t0 + ms(40), Input::Received(from_peer(State::Up, 20, 100, 2)));
    assert_eq!(s.detection_time(), Some(ms(200)));
}

#[test]
fn transmit_interval_is_the_slower_of_our_tx_and_the_peer_rx() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Received(from_peer(State::Up, 100, 250, 3)));
    assert_eq!(s.transmit_interval(), Some(ms(250)));
    let out = s.handle(t0 + ms(30), Input::Tick);
    assert!(out.is_empty());
    // The schedule follows the last periodic packet (the Up at t0 + 10 ms) by 250 ms.
    assert_eq!(s.next_deadline(), Some(t0 + ms(10) + ms(250)));
}

#[test]
fn goes_down_when_the_peer_signals_down() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let mut down = from_peer(State::Down, 1000, 100, 3);
    down.diag = Diag::CONTROL_DETECTION_TIME_EXPIRED;
    let out = s.handle(t0 + ms(50), Input::Received(down));
    assert_eq!(changes(&out), [(State::Up, State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN, false)]);
    assert_eq!(s.remote().diag, Diag::CONTROL_DETECTION_TIME_EXPIRED);
    assert_eq!(s.counters().failures, 1);
    // The peer is still known, so it hears our slower interval through a Poll.
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].poll, p[0].desired_min_tx()), (State::Down, true, SLOW_TX));
    // It comes back: Down -> Init -> Up again.
    let out = s.handle(t0 + ms(60), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert_eq!(changes(&out), [(State::Down, State::Init, Diag::NONE, false)]);
}

#[test]
fn init_ignores_a_down_peer_and_times_out_like_up() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle(t0, Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert_eq!(s.state(), State::Init);
    assert!(changes(&s.handle(t0 + ms(500), Input::Received(from_peer(State::Down, 1000, 100, 3)))).is_empty());
    // 3 x max(100 ms, 1 s) after the last packet.
    let out = s.handle(t0 + ms(3500), Input::Tick);
    assert_eq!(changes(&out), [(State::Init, State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED, false)]);
    assert_eq!(s.counters().failures, 0, "a session that never came up did not fail");
}

#[test]
fn peer_admin_down_takes_the_session_down_without_calling_it_a_failure() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let mut admin = from_peer(State::AdminDown, 1000, 100, 3);
    admin.diag = Diag::ADMINISTRATIVELY_DOWN;
    let out = s.handle(t0 + ms(50), Input::Received(admin));
    assert_eq!(changes(&out), [(State::Up, State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN, true)]);
    assert!(s.peer_admin_down());
    assert_eq!(s.counters().failures, 0);
    // More AdminDown packets change nothing; the peer enabling its side again does.
    assert!(changes(&s.handle(t0 + ms(60), Input::Received(admin))).is_empty());
    let out = s.handle(t0 + ms(70), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert_eq!(changes(&out), [(State::Down, State::Init, Diag::NONE, false)]);
    assert!(!s.peer_admin_down());
}

/// FRR sends a single AdminDown packet when its session is shut down, then nothing: the silence
/// that follows forgets the peer once the detection time passes, but the session stays Down for
/// the reason it went Down (the peer's AdminDown), still not a failure.
#[test]
fn silence_after_the_peers_admin_down_forgets_the_peer_but_not_why_we_went_down() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let mut admin = from_peer(State::AdminDown, 1000, 100, 3);
    admin.diag = Diag::ADMINISTRATIVELY_DOWN;
    s.handle(t0 + ms(50), Input::Received(admin));
    assert_eq!(s.remote().state, State::AdminDown);
    assert!(s.last_received().is_some());
    // 3 x max(1 s, 100 ms) after that packet, and then some.
    assert!(changes(&s.handle(t0 + ms(3100), Input::Tick)).is_empty());
    assert_eq!((s.state(), s.diag(), s.peer_admin_down()), (State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN, true));
    assert_eq!((s.remote().state, s.last_received()), (State::Down, None));
    assert_eq!(s.counters().failures, 0);
}

#[test]
fn admin_down_tells_the_peer_ignores_it_and_restarts_when_enabled() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let out = s.handle(t0 + ms(50), Input::AdminDown);
    assert_eq!(changes(&out), [(State::Up, State::AdminDown, Diag::ADMINISTRATIVELY_DOWN, false)]);
    let p = sent(&out);
    assert_eq!((p[0].state, p[0].diag, p[0].your_discr), (State::AdminDown, Diag::ADMINISTRATIVELY_DOWN, PEER));
    assert_eq!(s.counters().failures, 0);
    // No detection in AdminDown, AdminDown packets at the slow rate, the peer is ignored.
    assert_eq!(s.next_deadline(), Some(t0 + ms(50) + SLOW_TX));
    let out = s.handle(t0 + ms(60), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert!(out.is_empty(), "{out:?}");
    let mut poll = from_peer(State::Down, 1000, 100, 3);
    poll.poll = true;
    assert!(s.handle(t0 + ms(70), Input::Received(poll)).is_empty(), "no Final from AdminDown");
    let out = s.handle(t0 + ms(80), Input::AdminUp);
    assert_eq!(changes(&out), [(State::AdminDown, State::Down, Diag::NONE, false)]);
    assert_eq!(sent(&out)[0].state, State::Down);
    let out = s.handle(t0 + ms(90), Input::Received(from_peer(State::Down, 1000, 100, 3)));
    assert_eq!(changes(&out), [(State::Down, State::Init, Diag::NONE, false)]);
}

#[test]
fn poll_bit_is_set_on_every_packet_until_the_final_arrives() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle(t0, Input::Received(from_peer(State::Down, 1000, 100, 3)));
    // Multiplier 10: the peer stays silent for the next 350 ms without timing out.
    let out = s.handle(t0 + ms(1), Input::Received(from_peer(State::Up, 100, 100, 10)));
    assert!(sent(&out)[0].poll);
    for n in 1..=3 {
        let out = s.handle(t0 + ms(1 + 100 * n), Input::Tick);
        let p = sent(&out);
        assert!(p.len() == 1 && p[0].poll && !p[0].final_, "packet {n}: {p:?}");
    }
    let mut fin = from_peer(State::Up, 100, 100, 3);
    fin.final_ = true;
    assert!(s.handle(t0 + ms(350), Input::Received(fin)).is_empty());
    assert!(!s.polling());
    let p = sent(&s.handle(t0 + ms(401), Input::Tick));
    assert!(!p[0].poll);
}

#[test]
fn answers_a_poll_at_once_with_final_outside_the_schedule() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let before = s.next_deadline();
    let mut poll = from_peer(State::Up, 50, 50, 3);
    poll.poll = true;
    let out = s.handle(t0 + ms(30), Input::Received(poll));
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert!(p[0].final_ && !p[0].poll, "F set, P clear: {:?}", p[0]);
    // The peer's faster rx does not speed us up (our tx is 100 ms); the schedule is untouched.
    assert_eq!(s.next_deadline(), before);
    // Its faster tx shortens the detection time: 3 x max(100, 50).
    assert_eq!(s.detection_time(), Some(ms(300)));
}

#[test]
fn a_longer_transmit_interval_waits_for_the_final() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Reconfigure(Timers::new(ms(500), ms(100), 3).unwrap()));
    assert!(s.polling());
    assert_eq!(s.transmit_interval(), Some(ms(100)), "old rate until the peer confirms");
    let p = sent(&s.handle(t0 + ms(120), Input::Tick));
    assert_eq!((p[0].poll, p[0].desired_min_tx()), (true, ms(500)));
    let mut fin = from_peer(State::Up, 100, 100, 3);
    fin.final_ = true;
    s.handle(t0 + ms(130), Input::Received(fin));
    assert_eq!(s.transmit_interval(), Some(ms(500)));
    assert_eq!(s.next_deadline(), Some(t0 + ms(120) + ms(500)).min(Some(t0 + ms(130) + ms(300))));
}

/// A slower rate advertised while Up waits for the Final; if the session goes Down first, it
/// applies at once (not Up, the rate is at least 1 s: 6.8.3), not the old fast one.
#[test]
fn a_slower_rate_still_waiting_for_its_final_applies_when_the_session_goes_down() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Reconfigure(Timers::new(ms(2000), ms(100), 3).unwrap()));
    assert_eq!(s.transmit_interval(), Some(ms(100)), "old rate until the peer confirms");
    s.handle(t0 + ms(60), Input::Received(from_peer(State::Down, 100, 100, 3)));
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.transmit_interval(), Some(ms(2000)), "the advertised rate, not the fast one");
}

#[test]
fn a_shorter_receive_interval_keeps_the_old_detection_time_until_the_final() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Received(from_peer(State::Up, 20, 100, 3)));
    assert_eq!(s.detection_time(), Some(ms(300)));
    let out = s.handle(t0 + ms(40), Input::Reconfigure(Timers::new(ms(100), ms(20), 3).unwrap()));
    assert_eq!(sent(&out), [], "no extra packet: the next periodic one carries P");
    assert_eq!(s.detection_time(), Some(ms(300)), "old 100 ms until the peer confirms");
    let mut fin = from_peer(State::Up, 20, 100, 3);
    fin.final_ = true;
    s.handle(t0 + ms(50), Input::Received(fin));
    assert_eq!(s.detection_time(), Some(ms(60)));
}

#[test]
fn a_change_during_a_poll_needs_a_second_final() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Reconfigure(Timers::new(ms(200), ms(100), 3).unwrap()));
    s.handle(t0 + ms(31), Input::Reconfigure(Timers::new(ms(400), ms(100), 3).unwrap()));
    let mut fin = from_peer(State::Up, 100, 100, 3);
    fin.final_ = true;
    s.handle(t0 + ms(40), Input::Received(fin));
    assert!(s.polling(), "the first Final may answer a Poll sent before the second change");
    assert_eq!(s.transmit_interval(), Some(ms(100)));
    s.handle(t0 + ms(50), Input::Received(fin));
    assert!(!s.polling());
    assert_eq!(s.transmit_interval(), Some(ms(400)));
}

#[test]
fn jitter_keeps_intervals_between_75_and_100_percent_and_replays_from_its_seed() {
    let intervals = |mult: u8, seed: u64| -> Vec<Duration> {
        let t0 = Instant::now();
        let timers = Timers::symmetric(ms(1000), mult).unwrap();
        let mut s = Session::new(SessionConfig::new(LOCAL, timers, Some(seed)), t0).unwrap();
        let mut last = None;
        let mut gaps = Vec::new();
        for _ in 0..200 {
            let at = s.next_deadline().unwrap();
            if !sent(&s.handle(at, Input::Tick)).is_empty() {
                if let Some(prev) = last {
                    gaps.push(at - prev);
                }
                last = Some(at);
            }
        }
        gaps
    };
    let gaps = intervals(3, 7);
    assert!(gaps.iter().all(|g| (ms(750)..=ms(1000)).contains(g)), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g < ms(800)) && gaps.iter().any(|g| *g > ms(950)), "spread: {gaps:?}");
    assert_eq!(gaps, intervals(3, 7), "same seed, same schedule");
    assert_ne!(gaps, intervals(3, 8));
    // 6.8.7: with a multiplier of 1, no more than 90 %.
    let gaps = intervals(1, 7);
    assert!(gaps.iter().all(|g| (ms(750)..=ms(900)).contains(g)), "{gaps:?}");
}

#[test]
fn sends_no_periodic_packets_to_a_peer_requiring_none_but_still_answers_polls() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    s.handle(t0 + ms(30), Input::Received(from_peer(State::Up, 100, 0, 3)));
    assert_eq!(s.transmit_interval(), None);
    assert_eq!(s.next_deadline(), Some(t0 + ms(330)), "only the detection time is left");
    let mut poll = from_peer(State::Up, 100, 0, 3);
    poll.poll = true;
    assert!(sent(&s.handle(t0 + ms(40), Input::Received(poll)))[0].final_);
}

#[test]
fn forgets_a_silent_peer_while_down() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle(t0, Input::Tick);
    s.handle(t0 + ms(1), Input::Received(from_peer(State::AdminDown, 1000, 100, 3)));
    assert_eq!((s.state(), s.remote().discr), (State::Down, PEER));
    let out = s.handle(t0 + ms(3001), Input::Tick);
    assert!(changes(&out).is_empty());
    assert_eq!(s.remote().discr, 0, "bfd.RemoteDiscr is reset after a Detection Time of silence");
    assert_eq!(s.detection_time(), None);
}

#[test]
fn ignores_a_packet_for_another_discriminator() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut p = from_peer(State::Init, 100, 100, 3);
    p.your_discr = 99;
    assert!(s.handle(t0, Input::Received(p)).is_empty());
    assert_eq!(s.counters().packets_in, 0);
}

#[test]
fn counts_packets_and_transitions() {
    let t0 = Instant::now();
    let mut s = session(t0);
    bring_up(&mut s, t0);
    let c = *s.counters();
    // Tick, Init, Up (with P): three out; Down, Up, Final: three in; two transitions.
    assert_eq!((c.packets_out, c.packets_in, c.transitions, c.up_transitions), (3, 3, 2, 1));
    assert_eq!(s.last_change(), t0 + ms(10));
}

#[test]
fn refuses_a_zero_discriminator_multiplier_or_interval() {
    let t0 = Instant::now();
    let timers = Timers::symmetric(ms(100), 3).unwrap();
    assert!(Session::new(SessionConfig::new(0, timers, None), t0).is_err());
    assert!(Timers::symmetric(ms(100), 0).is_err());
    assert!(Timers::symmetric(Duration::ZERO, 3).is_err());
    assert!(Timers::symmetric(Duration::from_secs(5000), 3).is_err());
}

/// Two sessions exchanging encoded packets with 1 ms of latency, driven by one fake clock.
struct Link {
    a: Session,
    b: Session,
    /// (arrival time, to_a, bytes)
    in_flight: Vec<(Instant, bool, [u8; 24])>,
    /// Deliver nothing from B to A (B's side of the link is cut).
    cut_b_to_a: bool,
    /// A's state changes, with their time.
    a_changes: Vec<(Instant, State, Diag)>,
}

impl Link {
    fn run_until(&mut self, end: Instant) {
        loop {
            let next_packet = self.in_flight.iter().map(|f| f.0).min();
            let next = [self.a.next_deadline(), self.b.next_deadline(), next_packet].into_iter().flatten().min();
            let Some(now) = next.filter(|t| *t <= end) else { return };
            let mut outputs = Vec::new();
            if self.a.next_deadline() == Some(now) {
                outputs.push((true, self.a.handle(now, Input::Tick)));
            }
            if self.b.next_deadline() == Some(now) {
                outputs.push((false, self.b.handle(now, Input::Tick)));
            }
            let (arrived, rest): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|f| f.0 == now);
            self.in_flight = rest;
            for (_, to_a, bytes) in arrived {
                let packet = ControlPacket::decode(&bytes).expect("sessions send valid packets");
                let target = if to_a { &mut self.a } else { &mut self.b };
                outputs.push((to_a, target.handle(now, Input::Received(packet))));
            }
            for (from_a, out) in outputs {
                for o in out {
                    match o {
                        Output::Send(p) if from_a || !self.cut_b_to_a => {
                            self.in_flight.push((now + ms(1), !from_a, p.encode()));
                        }
                        Output::StateChanged { to, diag, .. } if from_a => self.a_changes.push((now, to, diag)),
                        _ => {}
                    }
                }
            }
        }
    }
}

#[test]
fn two_sessions_come_up_switch_to_fast_timers_and_detect_a_cut_link() {
    let t0 = Instant::now();
    let a = session(t0);
    let timers = Timers::symmetric(ms(50), 3).unwrap();
    let b = Session::new(SessionConfig::new(PEER, timers, Some(42)), t0 + ms(3)).unwrap();
    let mut link = Link { a, b, in_flight: Vec::new(), cut_b_to_a: false, a_changes: Vec::new() };
    link.run_until(t0 + Duration::from_secs(2));
    assert_eq!((link.a.state(), link.b.state()), (State::Up, State::Up));
    assert!(!link.a.polling() && !link.b.polling(), "both Poll Sequences completed");
    // A: rx 100 ms, B's tx 50 ms, B's multiplier 3: 300 ms. B's packets to A every 100 ms at
    // most (A's rx), jittered by B.
    assert_eq!(link.a.detection_time(), Some(ms(300)));
    assert_eq!(link.a.transmit_interval(), Some(ms(100)));
    assert_eq!(link.b.transmit_interval(), Some(ms(100)));
    // A spoke first; B answered Init, which takes A from Down straight to Up (6.8.6).
    let states: Vec<_> = link.a_changes.iter().map(|c| c.1).collect();
    assert_eq!(states, [State::Up]);

    let cut = t0 + Duration::from_secs(2);
    link.cut_b_to_a = true;
    link.in_flight.retain(|f| !f.1);
    let last_rx = link.a.detection_deadline().unwrap() - ms(300);
    assert!(last_rx <= cut);
    link.run_until(cut + Duration::from_secs(1));
    let (at, to, diag) = *link.a_changes.last().unwrap();
    assert_eq!((to, diag), (State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED));
    assert_eq!(at, last_rx + ms(300), "down exactly one detection time after the last packet");
    assert!(at - cut <= ms(300));
    // B hears A's Down and goes down too: the failure is seen on both ends.
    assert_eq!(link.b.counters().failures, 1);
    assert_eq!((link.b.state(), link.b.diag()), (State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN));
}
