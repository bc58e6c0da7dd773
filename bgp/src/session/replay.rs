//! Replays the event scripts in `session/testdata/*.fsm` against a [`Session`] and compares every
//! output with the script. A script is the readable record of one scenario: inputs at given
//! times, each followed by exactly the outputs it must produce, plus state assertions.
//!
//! ```text
//! # comment
//! config peer_asn=65002 hold=30 passive=yes families=ipv4,ipv6
//! @0 start                      input at t = 0 s (times are seconds after the start)
//! > connect                     expected outputs, in order; none listed = none allowed
//! > state Idle -> Connect
//! ? state Connect               assertions: state, deadline <secs|none>, last-error <text>
//! ```
//!
//! Inputs: `start`, `stop`, `auto-stop C/S`, `connected N in|out`, `connect-failed N`,
//! `closed N`, `tick` (at the given time), `decode-error N C/S`, and
//! `recv N OPEN as=A hold=H id=I caps=mp-ipv4,mp-ipv6,rr,as4:A,ext-msg,enh,gr:T`,
//! `recv N KEEPALIVE`, `recv N UPDATE` (End-of-RIB), `recv N NOTIFICATION C/S`,
//! `recv N ROUTE-REFRESH ipv4|ipv6`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::tests::{config, decode_all, Sent};
use super::*;
use crate::wire::{
    Afi, Capability, DecodeError, ExtendedNextHop, Family, GracefulRestart, Open, RefreshSubtype, Safi, Update,
};

/// One output as a script line.
fn render(o: &Output<'_>) -> Vec<String> {
    match o {
        Output::Connect => vec!["connect".into()],
        Output::CancelConnect => vec!["cancel-connect".into()],
        Output::Send { conn, bytes } => decode_all(bytes)
            .into_iter()
            .map(|m| match m {
                Sent::Open(o) => format!("send {} OPEN as={} hold={} id={}", conn.0, o.my_as, o.hold_time, o.bgp_id),
                Sent::Keepalive => format!("send {} KEEPALIVE", conn.0),
                Sent::Notification(c, s, d) if d.is_empty() => format!("send {} NOTIFICATION {c}/{s}", conn.0),
                Sent::Notification(c, s, d) => {
                    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
                    format!("send {} NOTIFICATION {c}/{s} data={hex}", conn.0)
                }
                Sent::Update => format!("send {} UPDATE", conn.0),
                Sent::RouteRefresh => format!("send {} ROUTE-REFRESH", conn.0),
            })
            .collect(),
        Output::Close { conn } => vec![format!("close {}", conn.0)],
        Output::StateChanged { from, to } => vec![format!("state {from} -> {to}")],
        Output::Established(n) => {
            let fams: Vec<String> = n.families.iter().map(Family::to_string).collect();
            vec![format!("established conn hold={} families={}", n.hold_time, fams.join(","))]
        }
        Output::Update(u) => vec![format!("update eor={}", u.end_of_rib().map_or("no".into(), |f| f.to_string()))],
        Output::RouteRefresh(r) => vec![format!("route-refresh afi={} safi={}", r.afi.0, r.safi.0)],
        Output::Down { reason, was_established } => {
            let r = match reason {
                DownReason::AdminStop => "admin-stop".to_string(),
                DownReason::HoldTimerExpired => "hold-timer-expired".into(),
                DownReason::NotificationSent { notification: n, .. } => format!("sent {}/{}", n.code, n.subcode),
                DownReason::NotificationReceived(n) => format!("received {}/{}", n.code, n.subcode),
                DownReason::ConnectionClosed => "connection-closed".into(),
                DownReason::PathDown(_) => "path-down".into(),
                DownReason::PeerRestarted => "peer-restarted".into(),
            };
            vec![format!("down {r} established={was_established}")]
        }
    }
}

use crate::replay_script::{key_values, secs_after, Line, Script};

fn code_pair(s: &str, at: &Script) -> (u8, u8) {
    let (c, sc) = s.split_once('/').unwrap_or_else(|| at.fail(format!("expected CODE/SUBCODE, got {s:?}")));
    (c.parse().unwrap_or_else(|_| at.fail("bad code")), sc.parse().unwrap_or_else(|_| at.fail("bad subcode")))
}

fn parse_config(words: &[&str], at: &Script) -> SessionConfig {
    let mut c = config();
    for (k, v) in key_values(words, at) {
        let num = || v.parse::<u64>().unwrap_or_else(|_| at.fail(format!("{k}: not a number: {v}")));
        match k {
            "local_asn" => c.local_asn = num() as u32,
            "peer_asn" => c.peer_asn = num() as u32,
            "router_id" => c.local_router_id = v.parse().unwrap_or_else(|_| at.fail("router_id")),
            "peer" => c.peer_addr = v.parse::<IpAddr>().unwrap_or_else(|_| at.fail("peer")),
            "hold" => c.hold_time = num() as u16,
            "connect_retry" => c.connect_retry = Duration::from_secs(num()),
            "idle_hold_max" => c.idle_hold_max = Duration::from_secs(num()),
            "passive" => c.passive = v == "yes",
            "families" => {
                c.families = v
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(|f| match f {
                        "ipv4" => Family::Ipv4Unicast,
                        "ipv6" => Family::Ipv6Unicast,
                        _ => at.fail(format!("unknown family {f}")),
                    })
                    .collect()
            }
            _ => at.fail(format!("unknown config key {k}")),
        }
    }
    c
}

fn parse_open(words: &[&str], at: &Script) -> Open {
    let mut open = Open { my_as: 65002, hold_time: 90, bgp_id: Ipv4Addr::new(192, 0, 2, 2), capabilities: vec![] };
    for (k, v) in key_values(words, at) {
        match k {
            "as" => open.my_as = v.parse().unwrap_or_else(|_| at.fail("as")),
            "hold" => open.hold_time = v.parse().unwrap_or_else(|_| at.fail("hold")),
            "id" => open.bgp_id = v.parse().unwrap_or_else(|_| at.fail("id")),
            "caps" => {
                for cap in v.split(',').filter(|c| !c.is_empty()) {
                    let (name, arg) = cap.split_once(':').unwrap_or((cap, ""));
                    let num = || arg.parse::<u32>().unwrap_or_else(|_| at.fail(format!("{name} needs a number")));
                    open.capabilities.push(match name {
                        "mp-ipv4" => Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
                        "mp-ipv6" => Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST },
                        "rr" => Capability::RouteRefresh,
                        "as4" => Capability::FourOctetAsn(num()),
                        "ext-msg" => Capability::ExtendedMessage,
                        "enh" => Capability::ExtendedNextHop(vec![ExtendedNextHop {
                            nlri_afi: Afi::IPV4,
                            nlri_safi: 1,
                            next_hop_afi: Afi::IPV6,
                        }]),
                        "gr" => Capability::GracefulRestart(GracefulRestart {
                            restart_state: false,
                            notification: false,
                            restart_time: num() as u16,
                            families: vec![],
                        }),
                        _ => at.fail(format!("unknown capability {name}")),
                    });
                }
            }
            _ => at.fail(format!("unknown OPEN field {k}")),
        }
    }
    open
}

fn parse_input(words: &[&str], at: &Script) -> Input<'static> {
    let conn = |i: usize| {
        ConnId(words.get(i).and_then(|w| w.parse().ok()).unwrap_or_else(|| at.fail("expected a connection number")))
    };
    match words {
        ["start"] => Input::Start,
        ["stop"] => Input::Stop,
        ["tick"] => Input::Tick,
        ["auto-stop", cs] => {
            let (code, subcode) = code_pair(cs, at);
            Input::AutomaticStop { notification: Notification { code, subcode, data: vec![] }, reason: "script".into() }
        }
        ["connected", _, dir] => Input::Connected { conn: conn(1), inbound: *dir == "in" },
        ["connect-failed", _] => Input::ConnectFailed { conn: conn(1) },
        ["closed", _] => Input::Closed { conn: conn(1) },
        ["decode-error", _, cs] => {
            let (code, subcode) = code_pair(cs, at);
            let err = DecodeError { notification: Notification { code, subcode, data: vec![] }, reason: "script" };
            Input::DecodeError { conn: conn(1), err }
        }
        ["recv", _, kind, rest @ ..] => {
            let msg = match (*kind, rest) {
                ("OPEN", fields) => Message::Open(parse_open(fields, at)),
                ("KEEPALIVE", []) => Message::Keepalive,
                ("UPDATE", []) => Message::Update(Update::default()),
                ("NOTIFICATION", [cs]) => {
                    let (code, subcode) = code_pair(cs, at);
                    Message::Notification(Notification { code, subcode, data: vec![] })
                }
                ("ROUTE-REFRESH", [fam]) => Message::RouteRefresh(RouteRefresh {
                    afi: if *fam == "ipv6" { Afi::IPV6 } else { Afi::IPV4 },
                    safi: Safi::UNICAST,
                    subtype: RefreshSubtype::Request,
                }),
                _ => at.fail(format!("cannot parse message {kind} {rest:?}")),
            };
            Input::Message { conn: conn(1), msg }
        }
        _ => at.fail(format!("unknown input {words:?}")),
    }
}

fn millis(t0: Instant, t: Instant) -> u128 {
    t.duration_since(t0).as_millis()
}

/// The session, created with the default config at the first input unless a `config` line came.
fn started(session: &mut Option<Session>) -> &mut Session {
    session.get_or_insert_with(|| Session::new(config()).expect("default config"))
}

/// Replays one script; panics at the first difference, naming the script and line.
fn replay(name: &str, text: &str) {
    let t0 = Instant::now();
    let mut session: Option<Session> = None;
    crate::replay_script::replay(name, text, t0, |line, at| match line {
        Line::Config(words) => {
            session = Some(Session::new(parse_config(words, at)).unwrap_or_else(|e| at.fail(e)));
            Vec::new()
        }
        Line::Input { now, words } => {
            let input = parse_input(words, at);
            started(&mut session).handle(now, input).iter().flat_map(render).collect()
        }
        Line::Assert { words, line } => {
            let s = started(&mut session);
            match words {
                ["state", st] => {
                    let got = s.state().to_string();
                    if got != *st {
                        at.fail(format!("state is {got}, expected {st}"));
                    }
                }
                ["deadline", d] => {
                    let got = s.next_deadline().map(|x| millis(t0, x));
                    let want = (*d != "none").then(|| millis(t0, secs_after(t0, d, at)));
                    if got != want {
                        at.fail(format!("next deadline is {got:?} ms, expected {want:?} ms"));
                    }
                }
                ["last-error", ..] => {
                    let want = line.split_once("last-error").map(|x| x.1.trim()).unwrap_or("");
                    let got = s.last_error().map(ToString::to_string).unwrap_or_default();
                    if got != want {
                        at.fail(format!("last error is `{got}`, expected `{want}`"));
                    }
                }
                _ => at.fail(format!("unknown assertion {line}")),
            }
            Vec::new()
        }
    });
}

#[test]
fn replays_every_event_script() {
    for (name, text) in crate::replay_script::scripts("src/session/testdata", "fsm") {
        replay(&name, &text);
    }
}

#[test]
#[should_panic(expected = "inline:2: expected `send 1 KEEPALIVE`")]
fn replay_reports_a_wrong_output_with_its_line() {
    replay("inline", "@0 start\n> send 1 KEEPALIVE\n");
}

#[test]
#[should_panic(expected = "inline:1: input on line 1 produced unexpected outputs")]
fn replay_refuses_outputs_the_script_does_not_list() {
    replay("inline", "@0 start\n");
}
