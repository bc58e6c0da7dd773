//! FSM behaviour with a fake clock (a base `Instant` plus offsets), one test per behaviour,
//! and two sessions wired back to back through the real codec.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::testutil::malformed;
use crate::wire::{
    decode_message, Afi, Capability, DecodeOptions, Family, GracefulRestart, Open, RefreshSubtype, Safi, Update,
    AS_TRANS,
};

// ----------------------------------------------------------------------------------------
// Helpers shared with the replay test
// ----------------------------------------------------------------------------------------

pub(super) const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub(super) const PEER_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Our side: AS 65001, router id 192.0.2.1, peer AS 65002 at 192.0.2.2, no jitter.
pub(super) fn config() -> SessionConfig {
    let mut c = SessionConfig::new(65001, LOCAL_ID, 65002, IpAddr::V4(PEER_ID));
    c.jitter_seed = None;
    c
}

/// The peer's OPEN: AS 65002 (4-octet capability too), IPv4+IPv6 unicast, route refresh.
fn peer_open(hold_time: u16) -> Open {
    Open {
        my_as: 65002,
        hold_time,
        bgp_id: PEER_ID,
        capabilities: vec![
            Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
            Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST },
            Capability::RouteRefresh,
            Capability::FourOctetAsn(65002),
        ],
    }
}

/// One message as the tests read it back from `Output::Send` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
    Open(Open),
    Keepalive,
    Notification(u8, u8, Vec<u8>),
    Update,
    RouteRefresh,
}

pub(super) fn decode_all(bytes: &[u8]) -> Vec<Sent> {
    let opts = DecodeOptions { four_octet_asn: true, extended_message: true, ..DecodeOptions::default() };
    let mut rest = bytes;
    let mut v = Vec::new();
    while !rest.is_empty() {
        let (m, used) = decode_message(rest, &opts).expect("FSM output decodes").expect("whole messages only");
        v.push(match m {
            Message::Open(o) => Sent::Open(o),
            Message::Keepalive => Sent::Keepalive,
            Message::Notification(n) => Sent::Notification(n.code, n.subcode, n.data),
            Message::Update(_) => Sent::Update,
            Message::RouteRefresh(_) => Sent::RouteRefresh,
        });
        rest = &rest[used..];
    }
    v
}

/// Every message sent, with its connection.
fn sent(out: &[Output<'_>]) -> Vec<(u64, Sent)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn, bytes } => Some(decode_all(bytes).into_iter().map(move |m| (conn.0, m))),
            _ => None,
        })
        .flatten()
        .collect()
}

fn closed(out: &[Output<'_>]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn } => Some(conn.0),
            _ => None,
        })
        .collect()
}

fn down(out: &[Output<'_>]) -> Option<(DownReason, bool)> {
    out.iter().find_map(|o| match o {
        Output::Down { reason, was_established } => Some((reason.clone(), *was_established)),
        _ => None,
    })
}

fn notification(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
    Notification { code, subcode, data }
}

/// A session and a fake clock.
struct T {
    s: Session,
    t0: Instant,
    now: Instant,
}

impl T {
    fn new(config: SessionConfig) -> T {
        let t0 = Instant::now();
        T { s: Session::new(config).expect("valid config"), t0, now: t0 }
    }

    /// Moves the clock to `secs` after the start.
    fn at(&mut self, secs: f64) -> &mut Self {
        let now = self.t0 + Duration::from_secs_f64(secs);
        assert!(now >= self.now, "the fake clock only moves forward");
        self.now = now;
        self
    }

    fn elapsed(&self) -> f64 {
        self.now.duration_since(self.t0).as_secs_f64()
    }

    fn deadline(&self) -> Option<f64> {
        self.s.next_deadline().map(|d| d.duration_since(self.t0).as_secs_f64())
    }

    fn input<'a>(&mut self, input: Input<'a>) -> Vec<Output<'a>> {
        self.s.handle(self.now, input)
    }

    /// Jumps to the next deadline and ticks.
    fn tick_next(&mut self) -> Vec<Output<'static>> {
        let d = self.s.next_deadline().expect("a timer is running");
        self.now = self.now.max(d);
        self.s.handle(self.now, Input::Tick)
    }

    fn recv<'a>(&mut self, conn: u64, msg: Message<'a>) -> Vec<Output<'a>> {
        self.input(Input::Message { conn: ConnId(conn), msg })
    }

    /// Start, outbound connection 1, peer OPEN with `hold`, KEEPALIVE: Established.
    fn establish(&mut self, hold: u16) -> Vec<Output<'static>> {
        self.input(Input::Start);
        self.input(Input::Connected { conn: ConnId(1), inbound: false });
        self.recv(1, Message::Open(peer_open(hold)));
        let out = self.recv(1, Message::Keepalive);
        assert_eq!(self.s.state(), State::Established);
        out
    }
}

// ----------------------------------------------------------------------------------------
// Opening
// ----------------------------------------------------------------------------------------

#[test]
fn start_connects_and_sends_open_on_the_outbound_connection() {
    let mut t = T::new(config());
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.next_deadline(), None);
    let out = t.input(Input::Start);
    assert_eq!(out, vec![Output::Connect, Output::StateChanged { from: State::Idle, to: State::Connect }]);
    assert_eq!(t.deadline(), Some(5.0), "ConnectRetry timer runs");

    let out = t.at(0.2).input(Input::Connected { conn: ConnId(1), inbound: false });
    let msgs = sent(&out);
    let [(1, Sent::Open(open))] = &msgs[..] else { panic!("expected one OPEN on conn 1, got {msgs:?}") };
    assert_eq!((open.my_as, open.hold_time, open.bgp_id), (65001, 90, LOCAL_ID));
    assert!(open.capabilities.contains(&Capability::FourOctetAsn(65001)));
    assert!(open.capabilities.contains(&Capability::RouteRefresh));
    assert_eq!(t.s.state(), State::OpenSent);
    assert!(out.contains(&Output::StateChanged { from: State::Connect, to: State::OpenSent }));
}

#[test]
fn open_sent_waits_four_minutes_for_the_peer_open() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    assert_eq!(t.deadline(), Some(240.0), "large hold timer in OpenSent, no ConnectRetry");
    let out = t.tick_next();
    assert_eq!(sent(&out), vec![(1, Sent::Notification(4, 0, vec![]))]);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(down(&out), Some((DownReason::HoldTimerExpired, false)));
    assert_eq!(t.s.state(), State::Idle);
}

#[test]
fn reaches_established_after_open_and_keepalive() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    let out = t.at(1.0).recv(1, Message::Open(peer_open(90)));
    assert_eq!(sent(&out), vec![(1, Sent::Keepalive)]);
    assert_eq!(t.s.state(), State::OpenConfirm);
    assert_eq!(t.s.negotiated(), None, "not before Established");

    let out = t.at(1.5).recv(1, Message::Keepalive);
    assert_eq!(out[0], Output::StateChanged { from: State::OpenConfirm, to: State::Established });
    let Output::Established(n) = &out[1] else { panic!("expected Established, got {out:?}") };
    assert_eq!(n.peer_asn, 65002);
    assert_eq!(n.peer_router_id, PEER_ID);
    assert_eq!(n.hold_time, 90);
    assert_eq!(n.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(n.four_octet_asn && n.route_refresh && n.ebgp);
    assert_eq!(t.s.negotiated(), Some(n));
    assert_eq!(t.s.established_conn(), Some(ConnId(1)));
    assert_eq!(t.s.counters().established_since, Some(t.now));
    assert_eq!(t.s.counters().established_transitions, 1);
}

#[test]
fn passive_session_never_connects_and_accepts_inbound() {
    let mut c = config();
    c.passive = true;
    let mut t = T::new(c);
    let out = t.input(Input::Start);
    assert_eq!(out, vec![Output::StateChanged { from: State::Idle, to: State::Active }]);
    assert_eq!(t.s.next_deadline(), None, "a passive session has nothing to retry");
    let out = t.at(30.0).input(Input::Connected { conn: ConnId(7), inbound: true });
    assert!(matches!(sent(&out)[..], [(7, Sent::Open(_))]));
    t.recv(7, Message::Open(peer_open(90)));
    t.recv(7, Message::Keepalive);
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(t.s.counters().connect_attempts, 0);
    // An outbound completion we never asked for is refused.
    let out = t.input(Input::Connected { conn: ConnId(8), inbound: false });
    assert_eq!(out, vec![Output::Close { conn: ConnId(8) }]);
}

#[test]
fn failed_connect_waits_in_active_and_retries_after_connect_retry() {
    let mut t = T::new(config());
    t.input(Input::Start);
    let out = t.at(1.0).input(Input::ConnectFailed { conn: ConnId(1) });
    assert_eq!(out, vec![Output::StateChanged { from: State::Connect, to: State::Active }]);
    assert_eq!(t.deadline(), Some(5.0), "the ConnectRetry timer started at Start keeps running");
    // The peer's connection is still welcome while we wait.
    let out = t.at(2.0).input(Input::Connected { conn: ConnId(2), inbound: true });
    assert!(matches!(sent(&out)[..], [(2, Sent::Open(_))]));
    let out = t.input(Input::Closed { conn: ConnId(2) });
    assert_eq!(down(&out), Some((DownReason::ConnectionClosed, false)));
    assert_eq!(t.s.state(), State::Active, "RFC 4271: a connection closed in OpenSent goes to Active");
    assert_eq!(t.deadline(), Some(7.0), "ConnectRetry restarted at the close");
    let out = t.tick_next();
    assert_eq!(out, vec![Output::Connect, Output::StateChanged { from: State::Active, to: State::Connect }]);
    assert_eq!(t.s.counters().connect_attempts, 2);
}

#[test]
fn connect_retry_expiry_in_connect_replaces_the_pending_attempt() {
    let mut t = T::new(config());
    t.input(Input::Start);
    let out = t.tick_next();
    assert_eq!(t.elapsed(), 5.0);
    assert_eq!(out, vec![Output::Connect], "a new attempt replaces the hung one, state stays Connect");
    assert_eq!(t.deadline(), Some(10.0));
    // The abandoned attempt completing late is refused only if we no longer want one:
    // here we do, so it becomes the connection.
    let out = t.input(Input::Connected { conn: ConnId(3), inbound: false });
    assert!(matches!(sent(&out)[..], [(3, Sent::Open(_))]));
}

#[test]
fn idle_refuses_inbound_connections() {
    let mut t = T::new(config());
    let out = t.input(Input::Connected { conn: ConnId(4), inbound: true });
    assert_eq!(out, vec![Output::Close { conn: ConnId(4) }]);
    assert_eq!(t.s.state(), State::Idle);
}

// ----------------------------------------------------------------------------------------
// Timers once the OPEN is accepted
// ----------------------------------------------------------------------------------------

#[test]
fn negotiated_hold_time_is_the_smaller_and_keepalive_a_third_of_it() {
    let mut t = T::new(config());
    t.establish(30);
    assert_eq!(t.s.negotiated().map(|n| n.hold_time), Some(30));
    assert_eq!(t.deadline(), Some(10.0), "keepalive at hold/3");

    let mut c = config();
    c.hold_time = 9;
    let mut t = T::new(c);
    t.establish(90);
    assert_eq!(t.s.negotiated().map(|n| n.hold_time), Some(9));
    assert_eq!(t.deadline(), Some(3.0));
}

#[test]
fn keepalives_are_sent_every_third_of_the_hold_time_in_open_confirm_and_established() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    t.recv(1, Message::Open(peer_open(30)));
    // Still OpenConfirm: keepalives are due here too (RFC 4271 event 11 in OpenConfirm).
    assert_eq!(sent(&t.tick_next()), vec![(1, Sent::Keepalive)]);
    assert_eq!(t.elapsed(), 10.0);
    t.recv(1, Message::Keepalive);
    let mut times = Vec::new();
    for _ in 0..5 {
        let out = t.tick_next();
        assert_eq!(sent(&out), vec![(1, Sent::Keepalive)]);
        times.push(t.elapsed());
        // The peer keeps its side alive.
        t.recv(1, Message::Keepalive);
    }
    assert_eq!(times, [20.0, 30.0, 40.0, 50.0, 60.0]);
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn hold_timer_expiry_sends_hold_timer_expired_and_goes_down() {
    let mut t = T::new(config());
    t.establish(30);
    let mut last = Vec::new();
    for _ in 0..10 {
        last = t.tick_next();
        if t.s.state() != State::Established {
            break;
        }
    }
    assert_eq!(t.elapsed(), 30.0, "hold expires 30 s after the last message from the peer");
    assert_eq!(sent(&last), vec![(1, Sent::Notification(4, 0, vec![]))]);
    assert_eq!(closed(&last), vec![1]);
    assert_eq!(down(&last), Some((DownReason::HoldTimerExpired, true)));
    assert!(last.contains(&Output::StateChanged { from: State::Established, to: State::Idle }));
    assert_eq!(t.s.last_error(), Some(&DownReason::HoldTimerExpired));
    assert_eq!(t.s.counters().established_since, None);
    assert_eq!(t.s.negotiated(), None);
}

#[test]
fn messages_from_the_peer_restart_the_hold_timer() {
    let mut t = T::new(config());
    t.establish(30);
    t.at(25.0).recv(1, Message::Update(Update::default()));
    t.at(50.0).recv(1, Message::Keepalive);
    let refresh = RouteRefresh { afi: Afi::IPV4, safi: Safi::UNICAST, subtype: RefreshSubtype::Request };
    t.at(75.0).recv(1, Message::RouteRefresh(refresh));
    // Only keepalives of ours are due until 105 s.
    while t.deadline().is_some_and(|d| d < 105.0) {
        let out = t.tick_next();
        assert!(sent(&out).iter().all(|(_, m)| *m == Sent::Keepalive), "{out:?}");
    }
    assert_eq!(t.s.state(), State::Established);
    let out = t.tick_next();
    assert_eq!(t.elapsed(), 105.0);
    assert_eq!(down(&out), Some((DownReason::HoldTimerExpired, true)));
}

#[test]
fn zero_hold_time_disables_keepalives_and_the_hold_timer() {
    let mut t = T::new(config());
    t.establish(0);
    assert_eq!(t.s.negotiated().map(|n| n.hold_time), Some(0));
    assert_eq!(t.s.next_deadline(), None);
    t.at(100_000.0);
    assert!(t.input(Input::Tick).is_empty());
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn sending_an_update_restarts_the_keepalive_timer() {
    let mut t = T::new(config());
    t.establish(90);
    assert_eq!(t.deadline(), Some(30.0));
    t.at(20.0);
    let out = t.s.send_message(t.now, &Message::Update(Update::end_of_rib_marker(Family::Ipv6Unicast))).unwrap();
    let Output::Send { conn: ConnId(1), bytes } = &out else { panic!("{out:?}") };
    assert_eq!(decode_all(bytes), vec![Sent::Update]);
    assert_eq!(t.deadline(), Some(50.0));
    t.at(30.0);
    t.s.send_encoded_updates(t.now, bytes.clone(), 1).unwrap();
    assert_eq!(t.deadline(), Some(60.0));
    assert_eq!(t.s.counters().sent.update, 2);
}

#[test]
fn send_message_is_refused_before_established_and_for_fsm_messages() {
    let mut t = T::new(config());
    t.input(Input::Start);
    let err = t.s.send_message(t.now, &Message::Keepalive).unwrap_err();
    assert!(matches!(err, SendError::NotEstablished { state: State::Connect, .. }), "{err}");
    t.establish(90);
    let err = t.s.send_message(t.now, &Message::Open(peer_open(90))).unwrap_err();
    assert!(matches!(err, SendError::FsmOwned { .. }), "{err}");
}

#[test]
fn jitter_shortens_connect_retry_and_keepalive_deterministically() {
    let mut c = config();
    c.jitter_seed = Some(42);
    let run = |c: SessionConfig| {
        let mut t = T::new(c);
        t.input(Input::Start);
        let retry = t.deadline().unwrap();
        t.input(Input::Connected { conn: ConnId(1), inbound: false });
        t.recv(1, Message::Open(peer_open(90)));
        let keepalive = t.deadline().unwrap();
        (retry, keepalive)
    };
    let (retry, keepalive) = run(c.clone());
    assert!((3.75..=5.0).contains(&retry), "connect retry {retry}");
    assert!((22.5..=30.0).contains(&keepalive), "keepalive {keepalive}");
    assert_eq!(run(c), (retry, keepalive), "same seed, same deadlines");
}

// ----------------------------------------------------------------------------------------
// OPEN validation
// ----------------------------------------------------------------------------------------

/// Sends `open` on a fresh OpenSent connection and returns the outputs.
fn open_outcome(config: SessionConfig, open: Open) -> (T, Vec<Output<'static>>) {
    let mut t = T::new(config);
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    let out = t.recv(1, Message::Open(open));
    (t, out)
}

#[test]
fn rejects_open_from_the_wrong_peer_as() {
    let mut open = peer_open(90);
    open.my_as = 65003;
    open.capabilities.retain(|c| !matches!(c, Capability::FourOctetAsn(_)));
    let (t, out) = open_outcome(config(), open);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 2, vec![]))]);
    assert_eq!(closed(&out), vec![1]);
    let (reason, false) = down(&out).expect("down") else { panic!("was not established") };
    assert_eq!(reason.notification().map(|n| (n.code, n.subcode)), Some((2, 2)));
    assert_eq!(t.s.state(), State::Idle);
}

#[test]
fn four_octet_peer_as_is_taken_from_the_capability_behind_as_trans() {
    let mut c = config();
    c.peer_asn = 4_200_000_000;
    let mut open = peer_open(90);
    open.my_as = AS_TRANS;
    open.capabilities.retain(|c| !matches!(c, Capability::FourOctetAsn(_)));
    open.capabilities.push(Capability::FourOctetAsn(4_200_000_000));
    let (t, out) = open_outcome(c.clone(), open.clone());
    assert_eq!(sent(&out), vec![(1, Sent::Keepalive)]);
    assert_eq!(t.s.state(), State::OpenConfirm);
    // The same OPEN without the capability is AS 23456: Bad Peer AS.
    open.capabilities.retain(|c| !matches!(c, Capability::FourOctetAsn(_)));
    let (_, out) = open_outcome(c, open);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 2, vec![]))]);
}

#[test]
fn rejects_hold_time_of_one_or_two_seconds() {
    for hold in [1, 2] {
        let (_, out) = open_outcome(config(), peer_open(hold));
        assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 6, vec![]))], "hold {hold}");
    }
    let (t, _) = open_outcome(config(), peer_open(3));
    assert_eq!(t.s.state(), State::OpenConfirm, "3 s is the smallest acceptable hold time");
}

#[test]
fn rejects_bgp_identifier_zero_and_our_own_from_an_internal_peer() {
    let mut open = peer_open(90);
    open.bgp_id = Ipv4Addr::UNSPECIFIED;
    let (_, out) = open_outcome(config(), open);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 3, vec![]))]);

    let mut ibgp = config();
    ibgp.peer_asn = 65001;
    let mut open = peer_open(90);
    open.my_as = 65001;
    open.capabilities = vec![Capability::FourOctetAsn(65001)];
    open.bgp_id = LOCAL_ID;
    let (_, out) = open_outcome(ibgp, open);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 3, vec![]))]);
}

#[test]
fn accepts_our_own_identifier_from_an_external_peer() {
    let mut open = peer_open(90);
    open.bgp_id = LOCAL_ID;
    let (t, out) = open_outcome(config(), open);
    assert_eq!(sent(&out), vec![(1, Sent::Keepalive)]);
    assert_eq!(t.s.state(), State::OpenConfirm);
}

#[test]
fn unsupported_version_from_the_codec_is_answered_with_our_version() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    // A BGP-3 OPEN as it arrives on the wire.
    let mut bytes = vec![0xff; 16];
    bytes.extend_from_slice(&[0, 29, 1, 3, 0xfd, 0xea, 0, 90, 192, 0, 2, 2, 0]);
    let err = decode_message(&bytes, &DecodeOptions::default()).unwrap_err();
    let out = t.input(Input::DecodeError { conn: ConnId(1), err });
    assert_eq!(sent(&out), vec![(1, Sent::Notification(2, 1, vec![0, 4]))]);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(t.s.state(), State::Idle);
}

#[test]
fn unknown_capabilities_are_ignored() {
    let mut open = peer_open(90);
    open.capabilities.push(Capability::Unknown { code: 73, value: b"leaf01".to_vec() });
    open.capabilities.push(Capability::Multiprotocol { afi: Afi(25), safi: Safi(70) });
    let (mut t, out) = open_outcome(config(), open);
    assert_eq!(sent(&out), vec![(1, Sent::Keepalive)]);
    let out = t.recv(1, Message::Keepalive);
    let Some(Output::Established(n)) = out.get(1) else { panic!("{out:?}") };
    assert_eq!(n.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(n.peer_capabilities.iter().any(|c| matches!(c, Capability::Unknown { code: 73, .. })));
}

#[test]
fn no_common_family_still_establishes_with_no_families() {
    let mut c = config();
    c.families = vec![Family::Ipv6Unicast];
    let mut open = peer_open(90);
    open.capabilities.retain(|c| !matches!(c, Capability::Multiprotocol { afi: Afi::IPV6, .. }));
    let (mut t, _) = open_outcome(c, open);
    t.recv(1, Message::Keepalive);
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(t.s.negotiated().map(|n| n.families.len()), Some(0));
}

#[test]
fn peer_graceful_restart_capability_is_reported() {
    let gr = GracefulRestart { restart_state: false, notification: false, restart_time: 120, families: vec![] };
    let mut open = peer_open(90);
    open.capabilities.push(Capability::GracefulRestart(gr.clone()));
    let (mut t, _) = open_outcome(config(), open);
    t.recv(1, Message::Keepalive);
    assert_eq!(t.s.negotiated().and_then(|n| n.peer_graceful_restart.clone()), Some(gr));
}

#[test]
fn decode_options_follow_the_negotiation_on_each_connection() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    assert_eq!(t.s.decode_options(ConnId(1)), DecodeOptions::default());
    t.recv(1, Message::Open(peer_open(90)));
    let opts = t.s.decode_options(ConnId(1));
    assert!(opts.four_octet_asn && opts.ebgp && !opts.extended_message);
    assert_eq!(t.s.decode_options(ConnId(99)), DecodeOptions::default());
}

// ----------------------------------------------------------------------------------------
// Unexpected messages, NOTIFICATIONs, malformed UPDATEs
// ----------------------------------------------------------------------------------------

#[test]
fn keepalive_in_open_sent_is_an_fsm_error_with_subcode_1() {
    let mut t = T::new(config());
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    let out = t.recv(1, Message::Keepalive);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(5, 1, vec![4]))]);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(t.s.state(), State::Idle);
}

#[test]
fn update_in_open_confirm_is_an_fsm_error_with_subcode_2_and_is_not_handed_on() {
    let (mut t, _) = open_outcome(config(), peer_open(90));
    let out = t.recv(1, Message::Update(Update::default()));
    assert_eq!(sent(&out), vec![(1, Sent::Notification(5, 2, vec![2]))]);
    assert!(!out.iter().any(|o| matches!(o, Output::Update(_))));
    assert_eq!(down(&out).map(|d| d.1), Some(false));
}

#[test]
fn open_in_established_is_an_fsm_error_with_subcode_3() {
    let mut t = T::new(config());
    t.establish(90);
    let out = t.recv(1, Message::Open(peer_open(90)));
    assert_eq!(sent(&out), vec![(1, Sent::Notification(5, 3, vec![1]))]);
    let (reason, true) = down(&out).expect("down") else { panic!("was established") };
    assert_eq!(reason.notification().map(|n| (n.code, n.subcode)), Some((5, 3)));
}

#[test]
fn notification_received_goes_down_with_its_code() {
    let mut t = T::new(config());
    t.establish(90);
    let n = notification(6, 2, b"maintenance".to_vec());
    let out = t.recv(1, Message::Notification(n.clone()));
    assert!(sent(&out).is_empty(), "never answer a NOTIFICATION");
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(down(&out), Some((DownReason::NotificationReceived(n.clone()), true)));
    assert_eq!(t.s.last_error(), Some(&DownReason::NotificationReceived(n)));
    assert_eq!(
        t.s.last_error().unwrap().to_string(),
        "received NOTIFICATION Cease: Administrative Shutdown (6/2), data 6d61696e74656e616e6365"
    );
}

#[test]
fn session_reset_update_sends_the_codec_notification_and_goes_down() {
    let case = malformed::cases()
        .into_iter()
        .find(|c| matches!(c.expected, malformed::Expected::SessionReset(3, _)))
        .expect("the corpus has an UPDATE session reset");
    let mut t = T::new(config());
    t.establish(90);
    let err = decode_message(&case.bytes, &case.opts).expect_err(case.name);
    let expected = err.notification.clone();
    let out = t.input(Input::DecodeError { conn: ConnId(1), err });
    assert_eq!(sent(&out), vec![(1, Sent::Notification(expected.code, expected.subcode, expected.data))]);
    assert_eq!(closed(&out), vec![1]);
    assert!(matches!(down(&out), Some((DownReason::NotificationSent { .. }, true))));
}

#[test]
fn treat_as_withdraw_update_is_handed_on_and_keeps_the_session() {
    let case = malformed::cases()
        .into_iter()
        .find(|c| matches!(c.expected, malformed::Expected::TreatAsWithdraw(_)))
        .expect("the corpus has a treat-as-withdraw case");
    let mut t = T::new(config());
    t.establish(90);
    let (msg, _) = decode_message(&case.bytes, &case.opts).unwrap().unwrap();
    let out = t.at(10.0).recv(1, msg);
    let [Output::Update(u)] = &out[..] else { panic!("expected the UPDATE back, got {out:?}") };
    assert!(u.is_treat_as_withdraw());
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(t.s.counters().received.update, 1);
}

#[test]
fn route_refresh_is_handed_on_for_negotiated_families_only() {
    let mut c = config();
    c.families = vec![Family::Ipv4Unicast];
    let mut t = T::new(c);
    t.establish(90);
    let v4 = RouteRefresh { afi: Afi::IPV4, safi: Safi::UNICAST, subtype: RefreshSubtype::Request };
    assert_eq!(t.recv(1, Message::RouteRefresh(v4)), vec![Output::RouteRefresh(v4)]);
    let v6 = RouteRefresh { afi: Afi::IPV6, safi: Safi::UNICAST, subtype: RefreshSubtype::Request };
    assert!(t.recv(1, Message::RouteRefresh(v6)).is_empty(), "RFC 2918: ignored");
    // RFC 7313: BoRR/EoRR mark the peer's own re-sending, other subtypes are ignored; none of
    // them asks for our routes.
    for subtype in [RefreshSubtype::Begin, RefreshSubtype::End, RefreshSubtype::Other(7)] {
        let r = RouteRefresh { subtype, ..v4 };
        assert!(t.recv(1, Message::RouteRefresh(r)).is_empty(), "{subtype:?}");
    }
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn messages_on_unknown_connections_are_ignored() {
    let mut t = T::new(config());
    t.establish(90);
    assert!(t.recv(9, Message::Open(peer_open(90))).is_empty());
    assert!(t.input(Input::Closed { conn: ConnId(9) }).is_empty());
    assert_eq!(t.s.state(), State::Established);
}

// ----------------------------------------------------------------------------------------
// Going down and coming back
// ----------------------------------------------------------------------------------------

#[test]
fn peer_closing_the_established_connection_goes_idle_and_restarts_after_connect_retry() {
    let mut t = T::new(config());
    t.establish(90);
    let out = t.at(10.0).input(Input::Closed { conn: ConnId(1) });
    assert!(closed(&out).is_empty(), "the driver already knows");
    assert_eq!(down(&out), Some((DownReason::ConnectionClosed, true)));
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.deadline(), Some(15.0));
    let out = t.tick_next();
    assert_eq!(out, vec![Output::Connect, Output::StateChanged { from: State::Idle, to: State::Connect }]);
}

#[test]
fn automatic_restarts_back_off_exponentially_up_to_the_cap() {
    let mut t = T::new(config());
    t.input(Input::Start);
    let mut waits = Vec::new();
    let mut conn = 0;
    for _ in 0..7 {
        assert_eq!(t.s.state(), State::Connect);
        conn += 1;
        t.input(Input::Connected { conn: ConnId(conn), inbound: false });
        // The peer refuses us every time.
        t.recv(conn, Message::Notification(notification(6, 5, vec![])));
        assert_eq!(t.s.state(), State::Idle);
        let down_at = t.elapsed();
        t.tick_next();
        waits.push(t.elapsed() - down_at);
    }
    assert_eq!(waits, [5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0]);
}

#[test]
fn a_stable_session_resets_the_backoff() {
    let mut t = T::new(config());
    t.input(Input::Start);
    for conn in 1..=3 {
        t.input(Input::Connected { conn: ConnId(conn), inbound: false });
        t.recv(conn, Message::Notification(notification(6, 5, vec![])));
        t.tick_next();
    }
    // Fourth attempt succeeds and holds for longer than idle_hold_max.
    t.input(Input::Connected { conn: ConnId(4), inbound: false });
    t.recv(4, Message::Open(peer_open(0)));
    t.recv(4, Message::Keepalive);
    let up = t.elapsed();
    t.at(up + 500.0).input(Input::Closed { conn: ConnId(4) });
    assert_eq!(t.deadline(), Some(up + 505.0), "back to connect_retry after a stable session");
}

#[test]
fn a_flapping_session_keeps_backing_off() {
    let mut t = T::new(config());
    t.establish(90);
    t.at(1.0).input(Input::Closed { conn: ConnId(1) });
    t.tick_next();
    assert_eq!(t.elapsed(), 6.0);
    t.input(Input::Connected { conn: ConnId(2), inbound: false });
    t.recv(2, Message::Open(peer_open(90)));
    t.recv(2, Message::Keepalive);
    t.at(7.0).input(Input::Closed { conn: ConnId(2) });
    assert_eq!(t.deadline(), Some(17.0), "second failure in a row waits twice as long");
    assert_eq!(t.s.counters().established_transitions, 2);
}

#[test]
fn stop_sends_administrative_shutdown_and_stays_idle_until_start() {
    let mut t = T::new(config());
    t.establish(90);
    let out = t.at(3.0).input(Input::Stop);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(6, 2, vec![]))]);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(down(&out), Some((DownReason::AdminStop, true)));
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.next_deadline(), None, "no automatic restart after Stop");
    assert!(t.at(1000.0).input(Input::Tick).is_empty());
    // Inbound connections are refused while stopped.
    assert_eq!(t.input(Input::Connected { conn: ConnId(2), inbound: true }), vec![Output::Close { conn: ConnId(2) }]);
    let out = t.input(Input::Start);
    assert_eq!(out[0], Output::Connect, "Start brings it back at once");
}

#[test]
fn stop_while_connecting_cancels_the_attempt() {
    let mut t = T::new(config());
    t.input(Input::Start);
    let out = t.input(Input::Stop);
    assert_eq!(out, vec![Output::CancelConnect, Output::StateChanged { from: State::Connect, to: State::Idle }]);
    // The attempt completes anyway: refused.
    let out = t.input(Input::Connected { conn: ConnId(1), inbound: false });
    assert_eq!(out, vec![Output::Close { conn: ConnId(1) }]);
    assert_eq!(t.s.last_error(), Some(&DownReason::AdminStop));
}

#[test]
fn start_outside_idle_is_ignored() {
    let mut t = T::new(config());
    t.establish(90);
    assert!(t.input(Input::Start).is_empty());
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn automatic_stop_sends_its_notification_and_restarts_after_idle_hold() {
    let mut t = T::new(config());
    t.establish(90);
    let n = notification(6, 1, vec![0, 1, 1, 0, 0, 0, 100]);
    let out =
        t.at(2.0).input(Input::AutomaticStop { notification: n.clone(), reason: "maximum prefixes reached".into() });
    assert_eq!(sent(&out), vec![(1, Sent::Notification(6, 1, n.data.clone()))]);
    let Some((DownReason::NotificationSent { reason, .. }, true)) = down(&out) else { panic!("{out:?}") };
    assert_eq!(reason, "maximum prefixes reached");
    assert_eq!(t.deadline(), Some(7.0));
    assert_eq!(t.tick_next()[0], Output::Connect);
}

#[test]
fn path_down_drops_the_session_without_a_notification_and_restarts_after_idle_hold() {
    let mut t = T::new(config());
    t.establish(90);
    let out = t.at(2.0).input(Input::PathDown { reason: "BFD session down".into() });
    assert!(sent(&out).is_empty(), "no NOTIFICATION over a dead path: {out:?}");
    assert!(out.contains(&Output::Close { conn: ConnId(1) }), "{out:?}");
    assert_eq!(down(&out), Some((DownReason::PathDown("BFD session down".into()), true)));
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.last_error().map(ToString::to_string).as_deref(), Some("BFD session down"));
    // In Idle it is a no-op.
    assert!(t.input(Input::PathDown { reason: "again".into() }).is_empty());
    assert_eq!(t.deadline(), Some(7.0), "restarts after the idle hold like any failure");
    assert_eq!(t.tick_next()[0], Output::Connect);
}

#[test]
fn counters_count_messages_per_type_and_flaps() {
    let mut t = T::new(config());
    t.establish(30);
    t.recv(1, Message::Update(Update::default()));
    t.tick_next(); // keepalive at 10 s
    t.s.send_message(t.now, &Message::Update(Update::default())).unwrap();
    t.input(Input::Closed { conn: ConnId(1) });
    t.tick_next();
    t.input(Input::Connected { conn: ConnId(2), inbound: false });
    t.recv(2, Message::Open(peer_open(30)));
    t.recv(2, Message::Keepalive);
    let c = t.s.counters();
    assert_eq!(c.established_transitions, 2);
    assert_eq!(c.received, MessageCounts { open: 2, update: 1, notification: 0, keepalive: 2, route_refresh: 0 });
    assert_eq!(c.sent, MessageCounts { open: 2, update: 1, notification: 0, keepalive: 3, route_refresh: 0 });
    assert_eq!(c.sent.total(), 6);
    assert_eq!(c.connect_attempts, 2);
    assert_eq!(c.established_since, Some(t.now));
}

#[test]
fn config_errors_name_the_peer_and_the_fix() {
    let mut c = config();
    c.hold_time = 2;
    let err = Session::new(c).unwrap_err();
    assert_eq!(err, ConfigError::HoldTime { peer: IpAddr::V4(PEER_ID), value: 2 });
    assert!(err.to_string().contains("192.0.2.2") && err.to_string().contains("0 or 3..=65535"));
    let mut c = config();
    c.connect_retry = Duration::ZERO;
    assert!(matches!(Session::new(c), Err(ConfigError::ConnectRetry { .. })));
    let mut c = config();
    c.graceful_restart = Some(GracefulRestartConfig { restart_time: 5000, ..Default::default() });
    assert!(matches!(Session::new(c), Err(ConfigError::RestartTime { value: 5000, .. })));
}

// ----------------------------------------------------------------------------------------
// Connection collisions (RFC 4271 6.8)
// ----------------------------------------------------------------------------------------

/// Outbound conn 1 and inbound conn 2 both in OpenSent; the peer's OPEN arrives on 1 first.
fn collision(local_id: Ipv4Addr, peer_id: Ipv4Addr) -> (T, Vec<Output<'static>>) {
    let mut c = config();
    c.local_router_id = local_id;
    let mut t = T::new(c);
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    t.input(Input::Connected { conn: ConnId(2), inbound: true });
    let mut open = peer_open(90);
    open.bgp_id = peer_id;
    t.recv(1, Message::Open(open.clone()));
    assert_eq!(t.s.state(), State::OpenConfirm);
    let out = t.recv(2, Message::Open(open));
    (t, out)
}

#[test]
fn once_our_restart_is_complete_later_opens_no_longer_say_we_restarted() {
    let mut c = config();
    c.graceful_restart =
        Some(GracefulRestartConfig { restart_time: 120, restarting: true, forwarding_preserved: true });
    let mut t = T::new(c);
    let gr_bits = |out: &[Output<'_>]| {
        sent(out).into_iter().find_map(|(_, m)| match m {
            Sent::Open(o) => o.capabilities.into_iter().find_map(|cap| match cap {
                Capability::GracefulRestart(g) => {
                    Some((g.restart_state, g.families.iter().any(|f| f.forwarding_preserved)))
                }
                _ => None,
            }),
            _ => None,
        })
    };
    t.input(Input::Start);
    let out = t.input(Input::Connected { conn: ConnId(1), inbound: false });
    assert_eq!(gr_bits(&out), Some((true, true)), "R and F while restarting");
    t.s.restart_complete();
    // The connection fails; the next one's OPEN has no R bit, and F still (forwarding is kept).
    t.at(1.0).input(Input::Closed { conn: ConnId(1) });
    let out = t.at(2.0).input(Input::Connected { conn: ConnId(2), inbound: true });
    assert_eq!(gr_bits(&out), Some((false, true)));
}

/// Established on conn 1 with graceful restart negotiated (or not); the peer's new OPEN, with
/// its GR capability, arrives on inbound conn 2.
fn reopened_after_restart(gr_on_our_side: bool) -> (T, Vec<Output<'static>>) {
    let mut c = config();
    if gr_on_our_side {
        c.graceful_restart = Some(GracefulRestartConfig::default());
    }
    let mut t = T::new(c);
    let gr = GracefulRestart { restart_state: true, notification: false, restart_time: 120, families: vec![] };
    let mut open = peer_open(90);
    open.capabilities.push(Capability::GracefulRestart(gr));
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: false });
    t.recv(1, Message::Open(open.clone()));
    t.recv(1, Message::Keepalive);
    assert_eq!(t.s.established_conn(), Some(ConnId(1)));
    t.at(20.0).input(Input::Connected { conn: ConnId(2), inbound: true });
    let out = t.at(20.0).recv(2, Message::Open(open));
    (t, out)
}

#[test]
fn a_new_open_under_graceful_restart_replaces_the_established_connection() {
    // RFC 4724 4.2: the old connection closes without a NOTIFICATION, the session is down
    // (the helper keeps the routes stale) and the new connection goes on to Established.
    let (mut t, out) = reopened_after_restart(true);
    assert_eq!(closed(&out), vec![1]);
    assert!(sent(&out).iter().all(|(conn, m)| *conn == 2 && *m == Sent::Keepalive), "{:?}", sent(&out));
    assert_eq!(down(&out), Some((DownReason::PeerRestarted, true)));
    assert_eq!(t.s.state(), State::OpenConfirm);
    t.recv(2, Message::Keepalive);
    assert_eq!(t.s.established_conn(), Some(ConnId(2)));

    // Without graceful restart negotiated the Established connection still wins (RFC 4271 6.8).
    let (t, out) = reopened_after_restart(false);
    assert_eq!(sent(&out), vec![(2, Sent::Notification(6, 7, vec![]))]);
    assert_eq!(closed(&out), vec![2]);
    assert!(down(&out).is_none());
    assert_eq!(t.s.established_conn(), Some(ConnId(1)));
}

#[test]
fn collision_keeps_our_outbound_connection_when_our_identifier_is_higher() {
    let (mut t, out) = collision(Ipv4Addr::new(203, 0, 113, 9), PEER_ID);
    assert_eq!(sent(&out), vec![(2, Sent::Notification(6, 7, vec![]))]);
    assert_eq!(closed(&out), vec![2]);
    assert!(down(&out).is_none(), "the session goes on");
    assert_eq!(t.s.state(), State::OpenConfirm);
    t.recv(1, Message::Keepalive);
    assert_eq!(t.s.established_conn(), Some(ConnId(1)));
}

#[test]
fn collision_keeps_the_peer_initiated_connection_when_its_identifier_is_higher() {
    let (mut t, out) = collision(LOCAL_ID, PEER_ID);
    // Conn 1 (ours, OpenConfirm) loses; conn 2 proceeds with a KEEPALIVE.
    assert_eq!(sent(&out), vec![(1, Sent::Notification(6, 7, vec![])), (2, Sent::Keepalive)]);
    assert_eq!(closed(&out), vec![1]);
    assert!(down(&out).is_none());
    t.recv(2, Message::Keepalive);
    assert_eq!(t.s.established_conn(), Some(ConnId(2)));
    // The peer's Cease on the closed connection is ignored.
    assert!(t.recv(1, Message::Notification(notification(6, 7, vec![]))).is_empty());
}

#[test]
fn collision_with_equal_identifiers_keeps_the_connection_of_the_higher_as() {
    // eBGP peers may share an identifier (RFC 6286); our AS 65001 < 65002: keep the peer's.
    let (_, out) = collision(PEER_ID, PEER_ID);
    assert_eq!(sent(&out), vec![(1, Sent::Notification(6, 7, vec![])), (2, Sent::Keepalive)]);
}

#[test]
fn inbound_connection_while_established_is_closed_with_cease_on_its_open() {
    let mut t = T::new(config());
    t.establish(90);
    let out = t.input(Input::Connected { conn: ConnId(2), inbound: true });
    assert!(matches!(sent(&out)[..], [(2, Sent::Open(_))]), "tracked until its OPEN (RFC 4271 8.2.2)");
    assert_eq!(t.s.state(), State::Established);
    let out = t.recv(2, Message::Open(peer_open(90)));
    assert_eq!(sent(&out), vec![(2, Sent::Notification(6, 7, vec![]))]);
    assert_eq!(closed(&out), vec![2]);
    assert_eq!(t.s.established_conn(), Some(ConnId(1)));
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn losing_a_second_connection_leaves_the_session_alone() {
    let mut t = T::new(config());
    t.establish(90);
    t.input(Input::Connected { conn: ConnId(2), inbound: true });
    let out = t.input(Input::Closed { conn: ConnId(2) });
    assert!(out.is_empty(), "{out:?}");
    let out = t.input(Input::DecodeError {
        conn: ConnId(3),
        err: crate::wire::DecodeError { notification: notification(1, 1, vec![]), reason: "test" },
    });
    assert!(out.is_empty(), "unknown connection");
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn a_newer_inbound_connection_replaces_one_not_yet_established() {
    let mut c = config();
    c.passive = true;
    let mut t = T::new(c);
    t.input(Input::Start);
    t.input(Input::Connected { conn: ConnId(1), inbound: true });
    let out = t.input(Input::Connected { conn: ConnId(2), inbound: true });
    assert_eq!(closed(&out), vec![1]);
    assert!(matches!(sent(&out)[..], [(2, Sent::Open(_))]));
    t.recv(2, Message::Open(peer_open(90)));
    t.recv(2, Message::Keepalive);
    assert_eq!(t.s.established_conn(), Some(ConnId(2)));
}

// ----------------------------------------------------------------------------------------
// Two sessions back to back
// ----------------------------------------------------------------------------------------

mod back_to_back {
    use std::collections::VecDeque;

    use super::*;
    use crate::wire::MessageReader;

    #[derive(Debug)]
    enum Event {
        Connected { conn: u64, inbound: bool },
        Bytes { conn: u64, bytes: Vec<u8> },
        Closed { conn: u64 },
    }

    /// Two sessions and an ideal network between them: connects succeed at once, bytes arrive
    /// in order, closes are seen by the other side. Side 0 is A, side 1 is B.
    struct Net {
        s: [Session; 2],
        t0: Instant,
        now: Instant,
        next_conn: u64,
        /// Per connection id: is it open on each side, and each side's read buffer.
        links: Vec<(u64, [bool; 2], [MessageReader; 2])>,
        queue: VecDeque<(usize, Event)>,
        /// A silent side sends nothing (its process hangs, TCP stays up).
        silent: [bool; 2],
        /// Observed per side: state changes, Established, Down, UPDATEs handed on.
        log: [Vec<String>; 2],
    }

    fn side_config(local: (u32, [u8; 4]), peer: (u32, [u8; 4]), hold: u16) -> SessionConfig {
        let mut c = SessionConfig::new(local.0, Ipv4Addr::from(local.1), peer.0, IpAddr::from(peer.1));
        c.hold_time = hold;
        c.jitter_seed = None;
        c
    }

    impl Net {
        fn new(a: SessionConfig, b: SessionConfig) -> Net {
            let t0 = Instant::now();
            Net {
                s: [Session::new(a).unwrap(), Session::new(b).unwrap()],
                t0,
                now: t0,
                next_conn: 1,
                links: Vec::new(),
                queue: VecDeque::new(),
                silent: [false; 2],
                log: [Vec::new(), Vec::new()],
            }
        }

        fn elapsed(&self) -> f64 {
            self.now.duration_since(self.t0).as_secs_f64()
        }

        fn input(&mut self, side: usize, input: Input<'_>) {
            let out = self.s[side].handle(self.now, input);
            self.outputs(side, out);
        }

        fn outputs(&mut self, side: usize, out: Vec<Output<'_>>) {
            let other = 1 - side;
            for o in out {
                match o {
                    Output::Connect => {
                        let conn = self.next_conn;
                        self.next_conn += 1;
                        self.links.push((conn, [true, true], [MessageReader::new(), MessageReader::new()]));
                        self.queue.push_back((side, Event::Connected { conn, inbound: false }));
                        self.queue.push_back((other, Event::Connected { conn, inbound: true }));
                    }
                    Output::CancelConnect => {}
                    Output::Send { conn, bytes } => {
                        if !self.silent[side] {
                            self.queue.push_back((other, Event::Bytes { conn: conn.0, bytes }));
                        }
                    }
                    Output::Close { conn } => {
                        if let Some(l) = self.links.iter_mut().find(|l| l.0 == conn.0) {
                            l.1[side] = false;
                        }
                        self.queue.push_back((other, Event::Closed { conn: conn.0 }));
                    }
                    Output::StateChanged { to, .. } => self.log[side].push(format!("{to}")),
                    Output::Established(n) => self.log[side].push(format!("up hold={}", n.hold_time)),
                    Output::Update(_) => self.log[side].push("update".into()),
                    Output::RouteRefresh(_) => self.log[side].push("refresh".into()),
                    Output::Down { reason, .. } => self.log[side].push(format!("down: {reason}")),
                }
            }
        }

        fn deliver(&mut self, side: usize, ev: Event) {
            match ev {
                Event::Connected { conn, inbound } => {
                    self.input(side, Input::Connected { conn: ConnId(conn), inbound })
                }
                Event::Closed { conn } => {
                    let Some(l) = self.links.iter_mut().find(|l| l.0 == conn) else { return };
                    if std::mem::replace(&mut l.1[side], false) {
                        self.input(side, Input::Closed { conn: ConnId(conn) });
                    }
                }
                Event::Bytes { conn, bytes } => {
                    let Some(i) = self.links.iter().position(|l| l.0 == conn && l.1[side]) else { return };
                    let mut reader = std::mem::take(&mut self.links[i].2[side]);
                    reader.extend(&bytes);
                    for _ in 0..1000 {
                        let opts = self.s[side].decode_options(ConnId(conn));
                        let out = match reader.next_message(&opts) {
                            Ok(None) => break,
                            Ok(Some(msg)) => self.s[side].handle(self.now, Input::Message { conn: ConnId(conn), msg }),
                            Err(err) => self.s[side].handle(self.now, Input::DecodeError { conn: ConnId(conn), err }),
                        };
                        let closing = out.contains(&Output::Close { conn: ConnId(conn) });
                        self.outputs(side, out);
                        if closing {
                            break;
                        }
                    }
                    if let Some(l) = self.links.iter_mut().find(|l| l.0 == conn) {
                        l.2[side] = reader;
                    }
                }
            }
        }

        /// Delivers queued events until the network is quiet.
        fn settle(&mut self) {
            for _ in 0..10_000 {
                let Some((side, ev)) = self.queue.pop_front() else { return };
                self.deliver(side, ev);
            }
            panic!("network did not settle");
        }

        /// Runs timers and traffic until `secs` after the start.
        fn run_until(&mut self, secs: f64) {
            let end = self.t0 + Duration::from_secs_f64(secs);
            for _ in 0..100_000 {
                self.settle();
                let next = self.s.iter().filter_map(|s| s.next_deadline()).min();
                match next {
                    Some(d) if d <= end => {
                        self.now = self.now.max(d);
                        for side in 0..2 {
                            if self.s[side].next_deadline().is_some_and(|d| d <= self.now) {
                                self.input(side, Input::Tick);
                            }
                        }
                    }
                    _ => {
                        self.now = end;
                        return;
                    }
                }
            }
            panic!("timers did not quiesce");
        }
    }

    const A: (u32, [u8; 4]) = (65001, [192, 0, 2, 1]);
    const B: (u32, [u8; 4]) = (65002, [192, 0, 2, 2]);

    #[test]
    fn two_sessions_reach_established_and_exchange_keepalives() {
        let mut net = Net::new(side_config(A, B, 90), side_config(B, A, 30));
        net.input(0, Input::Start);
        net.input(1, Input::Start);
        net.run_until(1.0);
        for side in 0..2 {
            assert_eq!(net.s[side].state(), State::Established, "side {side}: {:?}", net.log[side]);
            assert_eq!(net.s[side].negotiated().map(|n| n.hold_time), Some(30));
        }
        assert_eq!(net.s[0].negotiated().unwrap().peer_router_id, Ipv4Addr::from(B.1));
        // Both started at once: one connection per direction, exactly one survived.
        assert_eq!(net.s[0].established_conn(), net.s[1].established_conn());
        let ka_before = [net.s[0].counters().received.keepalive, net.s[1].counters().received.keepalive];
        net.run_until(301.0);
        for (side, before) in ka_before.into_iter().enumerate() {
            assert_eq!(net.s[side].state(), State::Established, "side {side}: {:?}", net.log[side]);
            let got = net.s[side].counters().received.keepalive - before;
            assert_eq!(got, 30, "side {side}: one keepalive every 10 s for 300 s");
            assert_eq!(net.s[side].counters().established_transitions, 1);
        }
        // An UPDATE sent by A reaches B's RIB side.
        let out = net.s[0].send_message(net.now, &Message::Update(Update::default())).unwrap();
        net.outputs(0, vec![out]);
        net.settle();
        assert_eq!(net.log[1].last().map(String::as_str), Some("update"));
    }

    #[test]
    fn hold_expiry_is_detected_when_one_side_goes_silent_and_the_session_recovers() {
        let mut net = Net::new(side_config(A, B, 9), side_config(B, A, 9));
        net.input(0, Input::Start);
        net.input(1, Input::Start);
        net.run_until(1.0);
        assert_eq!(net.s[0].state(), State::Established);
        net.silent[1] = true;
        let silent_at = net.elapsed();
        net.run_until(silent_at + 9.5);
        assert_eq!(net.s[0].state(), State::Idle, "A: {:?}", net.log[0]);
        assert_eq!(net.s[0].last_error(), Some(&DownReason::HoldTimerExpired));
        // Only B's output was lost: it still received A's NOTIFICATION 4/0 before the close.
        assert_eq!(
            net.s[1].last_error().and_then(|r| r.notification()).map(|n| (n.code, n.subcode)),
            Some((4, 0)),
            "B: {:?}",
            net.log[1]
        );
        // B recovers, and both restart on their own.
        net.silent[1] = false;
        net.run_until(silent_at + 60.0);
        for side in 0..2 {
            assert_eq!(net.s[side].state(), State::Established, "side {side}: {:?}", net.log[side]);
            assert_eq!(net.s[side].counters().established_transitions, 2);
        }
    }

    #[test]
    fn active_side_meets_passive_side() {
        let mut passive = side_config(B, A, 90);
        passive.passive = true;
        let mut net = Net::new(side_config(A, B, 90), passive);
        net.input(1, Input::Start);
        net.input(0, Input::Start);
        net.run_until(1.0);
        assert_eq!(net.s[0].state(), State::Established, "{:?}", net.log[0]);
        assert_eq!(net.s[1].state(), State::Established, "{:?}", net.log[1]);
        assert_eq!(net.s[1].counters().connect_attempts, 0);
        // A is stopped: B sees the Cease and waits; A's Start brings it back.
        net.input(0, Input::Stop);
        net.run_until(100.0);
        assert_eq!(net.s[0].state(), State::Idle);
        assert_eq!(net.s[1].state(), State::Active, "{:?}", net.log[1]);
        assert_eq!(net.s[1].last_error().and_then(|r| r.notification()).map(|n| (n.code, n.subcode)), Some((6, 2)));
        net.input(0, Input::Start);
        net.run_until(101.0);
        assert_eq!(net.s[0].state(), State::Established);
    }

    #[test]
    fn a_peer_that_rejects_our_as_keeps_us_backing_off() {
        // B expects AS 65009 from A: every attempt ends in Bad Peer AS.
        let mut b = side_config(B, A, 90);
        b.peer_asn = 65009;
        let mut net = Net::new(side_config(A, B, 90), b);
        net.input(0, Input::Start);
        net.input(1, Input::Start);
        net.run_until(200.0);
        assert_ne!(net.s[0].state(), State::Established);
        let err = net.s[0].last_error().and_then(|r| r.notification()).map(|n| (n.code, n.subcode));
        assert_eq!(err, Some((2, 2)), "{:?}", net.log[0]);
        // With backoff 5+10+20+40+80 s, A went down only a handful of times in 200 s.
        let downs = net.log[0].iter().filter(|l| l.starts_with("down")).count();
        assert!((3..=8).contains(&downs), "{downs} downs: {:?}", net.log[0]);
    }
}
