//! BFD under BGP, end to end: `ferrule daemon` with `bfd = { interval_ms, multiplier = 3 }` on
//! its session to an FRR ToR (bgpd + bfdd, `neighbor X bfd`) and to a BIRD ToR (`bfd on`), over
//! IPv6. Each check prints what it expected and what it saw:
//!  1. the BGP session is Established and its BFD session Up on both sides;
//!  2. the ToR fails silently (nftables on the ToR drops everything to and from the node; the
//!     link stays up, so only missing packets tell): the daemon takes the BGP session down within
//!     interval x multiplier + 50 ms of the cut (from when `nft` has put it in place), measured
//!     from the daemon's own log line (no polling in the measurement), at 100 ms and at 50 ms;
//!  3. the session is no longer Established, and its last error names BFD.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::frr::render_bgpd_config;
use ferrule_tests::{net, Bird, Ferrule, Frr, NetNs, TestDir};
use serde_json::Value;

const NODE: &str = "2001:db8:a::1";
const TOR: &str = "2001:db8:a::2";
const NODE_ASN: u32 = 65101;
const TOR_ASN: u32 = 65000;
const MULTIPLIER: u32 = 3;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Frr,
    Bird,
}

#[test]
fn bfd_failure_takes_the_bgp_session_down_in_time_with_frr() {
    if !ferrule_tests::privileged() {
        return;
    }
    for interval in [100, 50] {
        scenario(Kind::Frr, interval).unwrap();
    }
}

#[test]
fn bfd_failure_takes_the_bgp_session_down_in_time_with_bird() {
    if !ferrule_tests::privileged() {
        return;
    }
    for interval in [100, 50] {
        scenario(Kind::Bird, interval).unwrap();
    }
}

enum Tor {
    Frr(Frr),
    Bird(Bird),
}

fn scenario(kind: Kind, interval_ms: u32) -> Result<()> {
    let who = format!("{kind:?} {interval_ms} ms x {MULTIPLIER}");
    let dir = TestDir::new("fabric-bfd")?;
    let node = NetNs::new("bfn")?;
    let tor_ns = NetNs::new("bft")?;
    net::veth(&node, "t0", &tor_ns, "n0")?;
    net::add_addr(&node, "t0", &format!("{NODE}/64"))?;
    net::add_addr(&tor_ns, "n0", &format!("{TOR}/64"))?;
    net::wait_dad(&node, "t0", Duration::from_secs(5))?;
    net::wait_dad(&tor_ns, "n0", Duration::from_secs(5))?;
    let tor = start_tor(kind, &tor_ns, dir.path(), interval_ms)?;
    // Unique per scenario: the node name is also its pin directory, and the FRR and BIRD tests
    // run at the same time.
    let name = format!("bfd-{kind:?}-{interval_ms}-{}", std::process::id()).to_lowercase();
    let config = format!(
        "[node]\nname = \"{name}\"\nasn = {NODE_ASN}\nrouter_id = \"192.0.2.1\"\n\n\
         [[bgp.peers]]\naddress = \"{TOR}\"\nasn = {TOR_ASN}\nhold_time = 9\n\
         bfd = {{ interval_ms = {interval_ms}, multiplier = {MULTIPLIER} }}\n"
    );
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config)?;
    ferrule.start(&[])?;

    // 1. Established, BFD Up on our side and the ToR's.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (state, bfd) = loop {
        let n = neighbor(&ferrule)?;
        let (state, bfd) =
            (n["state"].as_str().unwrap_or("?").to_string(), n["bfd"].as_str().unwrap_or("-").to_string());
        if state == "Established" && bfd == "Up" && tor_bfd_up(&tor)? {
            break (state, bfd);
        }
        if Instant::now() > deadline {
            bail!("[{who}] 1: session {state}, BFD {bfd} after 45 s:\n{}", ferrule.log_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("[{who}] 1 up: expected Established with BFD Up on both sides, saw {state} / BFD {bfd}, ToR BFD up");
    // Past the slow start: our detection time is the configured one (both sides on their fast
    // timers, after the Poll sequence), however long that takes on a loaded machine.
    let want_us = u64::from(interval_ms * MULTIPLIER) * 1000;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = ferrule.show(&["bgp", "bfd"])?;
        let detect = sessions.as_array().and_then(|a| a.first()).and_then(|s| s["detection_time_us"].as_u64());
        if detect == Some(want_us) {
            break;
        }
        if Instant::now() > deadline {
            bail!("[{who}] 1: detection time {detect:?} us, not {want_us} us, after 20 s: {sessions}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("[{who}] 1 fast timers: expected detection time {want_us} us, saw it");

    // 2. Silent failure of the ToR. The cut takes effect somewhere while `nft` runs, which on a
    // loaded machine can take hundreds of milliseconds (process start, netlink); it is certainly in
    // effect once `nft` has returned, so the detection time is measured from then (and the
    // session must not go down before `nft` started).
    let cut_started = SystemTime::now();
    tor_ns.run(
        "nft",
        ["table inet cut { chain i { type filter hook input priority -10; iifname \"n0\" drop; }; \
          chain o { type filter hook output priority -10; oifname \"n0\" drop; }; }"],
    )?;
    let cut_at = SystemTime::now();
    let log = dir.path().join(format!("{name}-0.log"));
    let budget = Duration::from_millis(u64::from(interval_ms * MULTIPLIER + 50));
    let deadline = Instant::now() + Duration::from_secs(10);
    let down_at = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("taking the BGP session down")) {
            break log_time(line).with_context(|| format!("timestamp of {line:?}"))?;
        }
        if Instant::now() > deadline {
            bail!("[{who}] 2: the session was not taken down within 10 s of the cut:\n{}", ferrule.log_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if down_at < cut_started {
        bail!("[{who}] 2: the session went down before the cut:\n{}", ferrule.log_tail());
    }
    let took = down_at.duration_since(cut_at).unwrap_or_default();
    let nft = cut_at.duration_since(cut_started).unwrap_or_default();
    println!(
        "[{who}] 2 cut: expected the BGP session down within {} ms of the cut, saw {:.1} ms (nft took {:.1} ms \
         to put the cut in place)",
        budget.as_millis(),
        took.as_secs_f64() * 1000.0,
        nft.as_secs_f64() * 1000.0
    );
    if took > budget {
        bail!("[{who}] 2: took {took:?}, over the budget {budget:?}:\n{}", ferrule.log_tail());
    }

    // 3. Not Established, and it says why.
    let n = neighbor(&ferrule)?;
    let (state, error) = (n["state"].as_str().unwrap_or("?"), n["last_error"].as_str().unwrap_or(""));
    println!("[{who}] 3 after: expected not Established with a BFD error, saw {state}: {error:?}");
    if state == "Established" || !error.contains("BFD") {
        bail!("[{who}] 3: {n}");
    }
    Ok(())
}

fn neighbor(f: &Ferrule) -> Result<Value> {
    let summary = f.show(&["bgp", "summary"])?;
    summary.as_array().and_then(|a| a.first()).cloned().context("no neighbor in show bgp summary")
}

/// The UTC time of a tracing log line (`2026-11-23T13:26:34.372662Z  WARN …`).
fn log_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

fn start_tor(kind: Kind, ns: &NetNs, dir: &Path, interval_ms: u32) -> Result<Tor> {
    let neighbor = Neighbor::new("node", NODE.parse()?, NODE_ASN).families(&[Family::Ipv6Unicast]);
    Ok(match kind {
        Kind::Frr => {
            let config = BgpConfig::new("192.0.2.2".parse()?, TOR_ASN)
                .neighbor(neighbor)
                .extra(&format!("router bgp {TOR_ASN}\n neighbor {NODE} bfd\n!\n"));
            let bgpd = render_bgpd_config("tor", &config);
            let bfdd = format!(
                "bfd\n peer {NODE} interface n0\n  detect-multiplier {MULTIPLIER}\n  receive-interval {interval_ms}\n  \
                 transmit-interval {interval_ms}\n  no shutdown\n !\n!\n"
            );
            Tor::Frr(Frr::start_raw(ns, dir, &[("bgpd", &bgpd), ("bfdd", &bfdd)])?)
        }
        Kind::Bird => {
            let config = BgpConfig::new("192.0.2.2".parse()?, TOR_ASN).neighbor(neighbor).extra(&format!(
                "protocol bfd {{ interface \"n0\" {{ interval {interval_ms} ms; multiplier {MULTIPLIER}; }}; }}\n"
            ));
            let text = ferrule_tests::bird::render_config(&config)
                .replace("protocol bgp node {", "protocol bgp node {\n  bfd on;");
            Tor::Bird(Bird::start_raw(ns, dir, &text)?)
        }
    })
}

fn tor_bfd_up(tor: &Tor) -> Result<bool> {
    let out = match tor {
        Tor::Frr(frr) => frr.vtysh(&["show bfd peers brief"])?,
        Tor::Bird(bird) => bird.birdc(&["show", "bfd", "sessions"])?,
    };
    Ok(out.lines().any(|l| l.contains(NODE) && l.to_ascii_lowercase().contains(" up")))
}
