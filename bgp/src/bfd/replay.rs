//! Replays the event scripts in `bfd/testdata/*.bfd` against a [`Session`] and compares every
//! output with the script: inputs at given times, each followed by exactly the outputs it must
//! produce, plus state assertions. The session has no jitter, so every deadline is exact.
//!
//! ```text
//! # comment
//! config discr=1 tx=100 rx=100 mult=3    (optional first line; intervals in ms)
//! @0 tick                                input at t = 0 s (seconds after the start)
//! > send Down diag=0 your=0 tx=1000 rx=100 mult=3
//! @0.5 recv Down my=2 tx=1000 rx=100
//! > state Down -> Init diag=0
//! ? deadline 1.5                         assertions: see `assert_line`
//! ```
//!
//! Inputs: `tick`, `admin-down`, `admin-up`, `reconfigure tx=T rx=R mult=M`, and
//! `recv STATE [P] [F] [D] diag=N my=N your=N tx=T rx=R mult=M` (defaults: diag=0 my=2,
//! your=0 while Down/AdminDown and 1 otherwise, tx=1000 rx=100 mult=3). Sent packets render as
//! `send STATE [P] [F] diag=N your=N tx=T rx=R mult=M`, state changes as
//! `state FROM -> TO diag=N [peer-admin-down]`.

use std::time::{Duration, Instant};

use super::packet::{ControlPacket, Diag, State};
use super::session::{Input, Output, Session, SessionConfig, Timers};

use crate::replay_script::{key_values, secs_after, Line, Script};

/// Milliseconds as the scripts write them: integers, or decimals below a millisecond.
fn fmt_ms(us: u32) -> String {
    if us % 1000 == 0 {
        (us / 1000).to_string()
    } else {
        format!("{}", f64::from(us) / 1000.0)
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn render(o: &Output) -> String {
    match o {
        Output::Send(p) => format!(
            "send {}{}{} diag={} your={} tx={} rx={} mult={}",
            p.state,
            if p.poll { " P" } else { "" },
            if p.final_ { " F" } else { "" },
            p.diag.code(),
            p.your_discr,
            fmt_ms(p.desired_min_tx_us),
            fmt_ms(p.required_min_rx_us),
            p.detect_mult
        ),
        Output::StateChanged { from, to, diag, peer_admin_down } => format!(
            "state {from} -> {to} diag={}{}",
            diag.code(),
            if *peer_admin_down { " peer-admin-down" } else { "" }
        ),
    }
}

fn parse_state(word: &str, at: &Script) -> State {
    match word {
        "AdminDown" => State::AdminDown,
        "Down" => State::Down,
        "Init" => State::Init,
        "Up" => State::Up,
        _ => at.fail(format!("unknown state {word:?}")),
    }
}

fn parse_ms(value: &str, at: &Script) -> Duration {
    let ms: f64 = value.parse().unwrap_or_else(|_| at.fail(format!("not a number of ms: {value}")));
    Duration::from_micros((ms * 1000.0).round() as u64)
}

fn num<T: std::str::FromStr>(value: &str, at: &Script) -> T {
    value.parse().unwrap_or_else(|_| at.fail(format!("not a number: {value}")))
}

fn parse_timers(words: &[&str], at: &Script) -> (u32, Timers) {
    let (mut discr, mut tx, mut rx, mut mult) = (1, Duration::from_millis(100), Duration::from_millis(100), 3);
    for (k, v) in key_values(words, at) {
        match k {
            "discr" => discr = num(v, at),
            "tx" => tx = parse_ms(v, at),
            "rx" => rx = parse_ms(v, at),
            "mult" => mult = num(v, at),
            _ => at.fail(format!("unknown key {k}")),
        }
    }
    (discr, Timers::new(tx, rx, mult).unwrap_or_else(|e| at.fail(e)))
}

fn parse_recv(words: &[&str], at: &Script) -> ControlPacket {
    let Some((state, rest)) = words.split_first() else { at.fail("recv needs a state") };
    let state = parse_state(state, at);
    // Unless the line says otherwise: from the peer, 1 s / 100 ms, multiplier 3.
    let mut p = super::tests::from_peer(state, 1000, 100, 3);
    let mut fields = Vec::new();
    for w in rest {
        match *w {
            "P" => p.poll = true,
            "F" => p.final_ = true,
            "D" => p.demand = true,
            _ => fields.push(*w),
        }
    }
    let us = |v: &str| u32::try_from(parse_ms(v, at).as_micros()).unwrap_or_else(|_| at.fail("interval too long"));
    for (k, v) in key_values(&fields, at) {
        match k {
            "diag" => p.diag = Diag::new(num(v, at)),
            "my" => p.my_discr = num(v, at),
            "your" => p.your_discr = num(v, at),
            "tx" => p.desired_min_tx_us = us(v),
            "rx" => p.required_min_rx_us = us(v),
            "mult" => p.detect_mult = num(v, at),
            _ => at.fail(format!("unknown packet field {k}")),
        }
    }
    // What the driver would hand over: only packets that pass the decoder.
    let bytes = p.encode();
    ControlPacket::decode(&bytes).unwrap_or_else(|e| at.fail(format!("the decoder refuses this packet: {e}")))
}

fn parse_input(words: &[&str], at: &Script) -> Input {
    match words {
        ["tick"] => Input::Tick,
        ["admin-down"] => Input::AdminDown,
        ["admin-up"] => Input::AdminUp,
        ["reconfigure", rest @ ..] => Input::Reconfigure(parse_timers(rest, at).1),
        ["recv", rest @ ..] => Input::Received(parse_recv(rest, at)),
        _ => at.fail(format!("unknown input {words:?}")),
    }
}

fn yes(v: &str, at: &Script) -> bool {
    match v {
        "yes" => true,
        "no" => false,
        _ => at.fail(format!("expected yes or no, got {v}")),
    }
}

/// `? state S`, `? deadline SECS|none`, `? detect SECS|none`, `? interval SECS|none`,
/// `? polling yes|no`, `? remote-discr N`, `? peer-admin-down yes|no`,
/// `? counters in=N out=N transitions=N up=N failures=N`.
fn assert_line(s: &Session, t0: Instant, words: &[&str], at: &Script) {
    let opt_secs = |d: Option<Duration>| d.map_or("none".to_string(), secs);
    let (got, want) = match words {
        ["state", st] => (s.state().to_string(), st.to_string()),
        ["deadline", d] => {
            let want = if *d == "none" { "none".into() } else { secs(secs_after(t0, d, at) - t0) };
            (opt_secs(s.next_deadline().map(|x| x - t0)), want)
        }
        ["detect", d] => (opt_secs(s.detection_time()), d.to_string()),
        ["interval", d] => (opt_secs(s.transmit_interval()), d.to_string()),
        ["polling", v] => (s.polling().to_string(), yes(v, at).to_string()),
        ["remote-discr", v] => (s.remote().discr.to_string(), v.to_string()),
        ["peer-admin-down", v] => (s.peer_admin_down().to_string(), yes(v, at).to_string()),
        ["counters", rest @ ..] => {
            let c = s.counters();
            let got = format!(
                "in={} out={} transitions={} up={} failures={}",
                c.packets_in, c.packets_out, c.transitions, c.up_transitions, c.failures
            );
            (got, rest.join(" "))
        }
        _ => at.fail(format!("unknown assertion {words:?}")),
    };
    if got != want {
        at.fail(format!("{} is {got}, expected {want}", words[0]));
    }
}

/// Replays one script; panics at the first difference, naming the script and line.
fn replay(name: &str, text: &str) {
    let t0 = Instant::now();
    let mut config = None;
    let mut session: Option<Session> = None;
    crate::replay_script::replay(name, text, t0, |line, at| match line {
        Line::Config(words) => {
            if session.is_some() {
                at.fail("config comes before the first input");
            }
            config = Some(parse_timers(words, at));
            Vec::new()
        }
        Line::Input { now, words } => {
            started(&mut session, config, t0, at).handle(now, parse_input(words, at)).iter().map(render).collect()
        }
        Line::Assert { words, .. } => {
            assert_line(started(&mut session, config, t0, at), t0, words, at);
            Vec::new()
        }
    });
}

/// The session, created at the first input or assertion from the `config` line if there was one.
fn started<'s>(
    session: &'s mut Option<Session>,
    config: Option<(u32, Timers)>,
    t0: Instant,
    at: &Script,
) -> &'s mut Session {
    session.get_or_insert_with(|| {
        let (discr, timers) = config.unwrap_or((1, Timers::symmetric(Duration::from_millis(100), 3).unwrap()));
        Session::new(SessionConfig::new(discr, timers, None), t0).unwrap_or_else(|e| at.fail(e))
    })
}

#[test]
fn replays_every_event_script() {
    for (name, text) in crate::replay_script::scripts("src/bfd/testdata", "bfd") {
        replay(&name, &text);
    }
}

#[test]
#[should_panic(expected = "inline:2: expected `send Up diag=0 your=0 tx=1000 rx=100 mult=3`")]
fn replay_reports_a_wrong_output_with_its_line() {
    replay("inline", "@0 tick\n> send Up diag=0 your=0 tx=1000 rx=100 mult=3\n");
}

#[test]
#[should_panic(expected = "inline:1: input on line 1 produced unexpected outputs")]
fn replay_refuses_outputs_the_script_does_not_list() {
    replay("inline", "@0 tick\n");
}
