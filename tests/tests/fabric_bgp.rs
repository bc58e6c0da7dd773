//! Per-peer BGP features of a fabric node against real routers (FRR 8, BIRD 2, GoBGP), each in
//! its own namespaces, every check printing what it expected and what it saw:
//!
//! MD5 (RFC 2385), against FRR over IPv4 and BIRD over IPv6:
//!  1. the same password on both sides: Established on both, and the ToR's prefix arrives;
//!  2. a wrong password on our side (fresh daemon): never Established on either side for 8 s,
//!     and our `last_error` says MD5;
//!  3. the right password applied to the running daemon: Established again.
//!
//! Unnumbered peering over a link with IPv6 link-local addresses only, against FRR
//! (`neighbor IF interface`, with a TCP MD5 key) and BIRD (`protocol radv` + dynamic BGP over
//! `fe80::/10`):
//!  1. we find the ToR from its router advertisements: Established on both sides, over the
//!     link-local addresses;
//!  2. the ToR's defaults become kernel routes through its link-local address, the IPv4 one
//!     with an IPv6 next hop (RFC 8950);
//!  3. the ToR routes our loopback addresses back to our link-local address;
//!  4. bounded pings from our loopback addresses reach addresses only the ToR holds.
//!
//! Graceful restart (RFC 4724), against FRR over IPv4 transport and BIRD over IPv6 transport:
//!  1. GR negotiated; our default routes and the ToR's routes to our prefixes are in place;
//!  2. SIGTERM + `ferrule daemon --resume`: continuous pings (20 ms apart) through the learned
//!     defaults lose nothing; every 50 ms the ToR's kernel still routes our prefixes and ours
//!     still holds the defaults (proto 233);
//!  3. the new process announced the Restarting bit, deferred route deletion until End-of-RIB,
//!     and is Established again with our prefixes no longer stale on the ToR;
//!  4. `ferrule shutdown`: the ToR withdraws our prefixes at once; no proto 233 route is left.
//!
//! Listen ranges (dynamic neighbors), on a bridged segment: BIRD as a VM in an IPv6 range
//! (`limit = 1`), FRR as a legacy host in an IPv4 range, GoBGP outside the ranges:
//!  1. both in-range sessions Established, listed as dynamic with their range;
//!  2. their prefixes are in `show bgp routes`, ours reach them;
//!  3. the outsider's connections are refused, and so are a second VM's while the VM range is at
//!     its `limit` of 1: never Established, the outsider's prefix never learned, and the
//!     sessions in place stay up.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::net::{self, RTPROT_FERRULE};
use ferrule_tests::probe::{self, Pinger, Probe, Sampler};
use ferrule_tests::{cmd, ferrule, BgpPeer, Bird, Ferrule, Frr, GoBgp, NetNs, TestDir};
use serde_json::Value;

const FERRULE_ASN: u32 = 65101;
const TOR_ASN: u32 = 65000;
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(250);

/// The node's own addresses (on its loopback), announced so that the ToR can route back.
const NODE_V4: &str = "198.51.100.1";
const NODE_V6: &str = "2001:db8:100::1";
/// Addresses only the ToR holds (on its loopback), reached through the defaults it announces.
const TOR_V4: &str = "203.0.113.1";
const TOR_V6: &str = "2001:db8:ff::1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Frr,
    Bird,
}

/// The ToR's routing daemon.
enum Tor {
    Frr(Frr),
    Bird(Bird),
}

impl Tor {
    fn bgp(&self) -> &dyn BgpPeer {
        match self {
            Tor::Frr(f) => f,
            Tor::Bird(b) => b,
        }
    }

    /// The ToR's view of one prefix (CLI text), for messages.
    fn show_route(&self, prefix: &str) -> String {
        let out = match self {
            Tor::Frr(f) => {
                let af = if prefix.contains(':') { "ipv6" } else { "ipv4" };
                f.vtysh(&[&format!("show bgp {af} unicast {prefix}")])
            }
            Tor::Bird(b) => b.birdc(&["show", "route", "for", prefix, "all"]),
        };
        out.unwrap_or_else(|e| format!("({e:#})"))
    }

    /// Whether the ToR holds `prefix` from us as a stale path (graceful restart helper).
    fn is_stale(&self, prefix: &str) -> Result<bool> {
        match self {
            Tor::Frr(f) => {
                let af = if prefix.contains(':') { "ipv6" } else { "ipv4" };
                let json = f.vtysh(&[&format!("show bgp {af} unicast {prefix} json")])?;
                let v: Value = serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
                let paths = v["paths"].as_array().cloned().unwrap_or_default();
                Ok(paths.iter().any(|p| p["stale"].as_bool() == Some(true)))
            }
            // BIRD prints no flag on a stale route; its protocol says the neighbor's graceful
            // restart is active, and each channel still waiting for End-of-RIB shows "Neighbor GR".
            Tor::Bird(b) => {
                let out = b.birdc(&["show", "protocols", "all", "ferrule"])?;
                let channel = if prefix.contains(':') { "Channel ipv6" } else { "Channel ipv4" };
                let block = out.split_once(channel).map(|(_, rest)| rest.split("Channel ").next().unwrap_or(""));
                Ok(out.contains("Neighbor graceful restart active")
                    || block.is_some_and(|b| b.contains("Neighbor GR:")))
            }
        }
    }
}

fn node_config(name: &str, body: &str) -> String {
    format!("[node]\nname = \"{name}\"\nasn = {FERRULE_ASN}\nrouter_id = \"192.0.2.11\"\n\n{body}")
}

/// A unique node name (it also names the pin directory) per test and test process.
fn node_name(tag: &str) -> String {
    format!("fb{tag}{}", std::process::id())
}

/// `cmd::poll_until` that returns how long the wait took.
fn wait_until(what: &str, timeout: Duration, check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    cmd::poll_until(what, timeout, POLL, check)?;
    Ok(started.elapsed())
}

fn neighbors(f: &Ferrule) -> Result<Vec<Value>> {
    f.show(&["bgp", "summary"])?.as_array().cloned().context("show bgp summary --json is a list")
}

fn neighbor(f: &Ferrule, address: &str) -> Result<Option<Value>> {
    Ok(neighbors(f)?.into_iter().find(|n| n["address"].as_str() == Some(address)))
}

/// Ferrule's state word for the session with `address` ("absent" when it has no such neighbor).
fn state_of(f: &Ferrule, address: &str) -> String {
    match neighbor(f, address) {
        Ok(Some(n)) => n["state"].as_str().unwrap_or("?").to_string(),
        Ok(None) => "absent".to_string(),
        Err(e) => format!("error: {e:#}"),
    }
}

fn wait_ferrule_established(f: &Ferrule, address: &str, timeout: Duration) -> Result<Duration> {
    let mut seen: Vec<String> = Vec::new();
    let result = wait_until(&format!("ferrule's session with {address} to be Established"), timeout, || {
        let state = state_of(f, address);
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        Ok(state == "Established")
    });
    result.with_context(|| {
        format!(
            "ferrule states seen for {address}: {}\nsummary: {}",
            seen.join(" -> "),
            f.show(&["bgp", "summary"]).map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"))
        )
    })
}

/// The peer's state word for the session with `neighbor`, or the error's text.
fn peer_state(peer: &dyn BgpPeer, neighbor: IpAddr) -> String {
    peer.session_state(neighbor).map(|s| s.to_string()).unwrap_or_else(|e| format!("error: {e:#}"))
}

fn ferrule_route(f: &Ferrule, prefix: &str) -> Result<Option<Value>> {
    let routes = f.show(&["bgp", "routes"])?;
    Ok(routes.as_array().context("routes is a list")?.iter().find(|r| r["prefix"] == prefix).cloned())
}

fn family_flag(prefix: &str) -> &'static str {
    if prefix.contains(':') {
        "-6"
    } else {
        "-4"
    }
}

/// `ip route show PREFIX` (exact match) in `ns`, trimmed; empty when there is none.
fn kernel_route(ns: &NetNs, prefix: &str) -> Result<String> {
    Ok(ns.run("ip", [family_flag(prefix), "route", "show", prefix])?.trim().to_string())
}

/// Every route with Ferrule's protocol id in `ns`, both families.
fn ferrule_routes(ns: &NetNs) -> Result<String> {
    let v4 = ns.run("ip", ["-4", "route", "show", "proto", RTPROT_FERRULE])?;
    let v6 = ns.run("ip", ["-6", "route", "show", "proto", RTPROT_FERRULE])?;
    Ok(format!("{v4}{v6}").trim().to_string())
}

/// A bounded ping from `source` (an address of `ns`) that must get every reply.
fn ping_from(ns: &NetNs, source: &str, target: &str) -> Result<String> {
    let out = ns.run("ping", ["-n", "-q", "-c", "3", "-W", "1", "-i", "0.2", "-I", source, target])?;
    Ok(out.lines().find(|l| l.contains("packets transmitted")).unwrap_or("").trim().to_string())
}

/// Last `n` lines of a file (a daemon log of an earlier run), for reports.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `text` without terminal colour sequences (the daemon colours its text logs).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters… final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of `text` that contain `needle`.
fn grep(text: &str, needle: &str) -> Vec<String> {
    text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

/// Runs a scenario with the lab alive, so that a failure's panic unwinds through the lab and
/// every daemon prints its log tail (`Daemon` does so when dropped while panicking).
fn run_in<L>(lab: Result<L>, scenario: impl FnOnce(&mut L) -> Result<()>) {
    let mut lab = lab.expect("building the lab");
    if let Err(e) = scenario(&mut lab) {
        panic!("{e:#}\n(set FERRULE_TEST_KEEP=1 to keep every log)");
    }
}

// ---------------------------------------------------------------------------------------------
// MD5

const PASSWORD: &str = "fabric-md5-key";
const WRONG_PASSWORD: &str = "not-the-fabric-key";
/// How long a wrong password must keep both sides from Established.
const NEVER_WINDOW: Duration = Duration::from_secs(8);
/// After the window, how long more `last_error` may take to mention MD5 (one connect attempt
/// times out after 5 s).
const LAST_ERROR_TIMEOUT: Duration = Duration::from_secs(20);

struct Md5Lab {
    kind: Kind,
    node: NetNs,
    tor_ns: NetNs,
    ferrule: Ferrule,
    tor: Tor,
    /// Our session address and the ToR's.
    ours: IpAddr,
    theirs: IpAddr,
    /// What the ToR announces.
    tor_prefix: &'static str,
    /// Last: dropped after the daemons, so their logs are still there when they print them.
    _dir: TestDir,
}

fn md5_ferrule_config(name: &str, peer: IpAddr, password: &str) -> String {
    node_config(
        name,
        &format!(
            "[[bgp.peers]]\naddress = \"{peer}\"\nasn = {TOR_ASN}\nhold_time = 9\npassword = \"{password}\"\n\
             import = [\"203.0.113.0/24\", \"2001:db8:f00::/48\"]\n"
        ),
    )
}

fn md5_lab(kind: Kind) -> Result<Md5Lab> {
    let tag = if kind == Kind::Frr { "m5f" } else { "m5b" };
    let dir = TestDir::new(&format!("fabric-{tag}"))?;
    let node = NetNs::new(&format!("{tag}n"))?;
    let tor_ns = NetNs::new(&format!("{tag}t"))?;
    net::veth(&node, "tor0", &tor_ns, "srv0")?;
    let (ours, theirs, len, tor_prefix) = match kind {
        Kind::Frr => ("192.0.2.1", "192.0.2.2", 30, "203.0.113.0/24"),
        Kind::Bird => ("2001:db8:a::1", "2001:db8:a::2", 64, "2001:db8:f00::/48"),
    };
    net::add_addr(&node, "tor0", &format!("{ours}/{len}"))?;
    net::add_addr(&tor_ns, "srv0", &format!("{theirs}/{len}"))?;
    let (ours, theirs): (IpAddr, IpAddr) = (ours.parse()?, theirs.parse()?);
    let name = node_name(tag);
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &md5_ferrule_config(&name, theirs, PASSWORD))?;
    ferrule.start(&[])?;
    let tor = match kind {
        Kind::Frr => {
            let config = BgpConfig::new("192.0.2.2".parse()?, TOR_ASN)
                .neighbor(Neighbor::new("ferrule", ours, FERRULE_ASN))
                .extra(&format!(
                    "router bgp {TOR_ASN}\n no bgp network import-check\n neighbor {ours} password {PASSWORD}\n \
                     address-family ipv4 unicast\n  network {tor_prefix}\n exit-address-family\n!\n"
                ));
            Tor::Frr(Frr::start(&tor_ns, dir.path(), &config)?)
        }
        Kind::Bird => {
            let config = format!(
                "router id 192.0.2.2;\nlog stderr all;\nprotocol device {{ }}\n\
                 protocol static routes6 {{ ipv6; route {tor_prefix} blackhole; }}\n\
                 protocol bgp ferrule {{\n  local {theirs} as {TOR_ASN};\n  neighbor {ours} as {FERRULE_ASN};\n  \
                 password \"{PASSWORD}\";\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n  \
                 ipv6 {{ import all; export all; }};\n}}\n"
            );
            Tor::Bird(Bird::start_raw(&tor_ns, dir.path(), &config)?)
        }
    };
    Ok(Md5Lab { kind, _dir: dir, node, tor_ns, ferrule, tor, ours, theirs, tor_prefix })
}

fn md5_failures(ns: &NetNs) -> u64 {
    probe::tcp_counter(ns, "TcpExt", "TCPMD5Failure").unwrap_or(0)
}

fn md5_scenario(lab: &mut Md5Lab) -> Result<()> {
    let who = format!("MD5 {:?}", lab.kind);
    let (ours, theirs) = (lab.ours, lab.theirs.to_string());

    // 1. Same password: Established on both sides, and UPDATEs flow over the signed session.
    let t_tor = Instant::now();
    ferrule_tests::wait_established(lab.tor.bgp(), ours, ESTABLISH_TIMEOUT)?;
    let t_tor = t_tor.elapsed();
    wait_ferrule_established(&lab.ferrule, &theirs, Duration::from_secs(10))?;
    println!("[{who}] 1 same password: expected Established on both sides, saw Established (ToR after {t_tor:.1?})");
    wait_until(&format!("{} from the ToR in ferrule", lab.tor_prefix), Duration::from_secs(20), || {
        Ok(ferrule_route(&lab.ferrule, lab.tor_prefix)?.is_some())
    })?;
    println!("[{who}] 1 routes: expected {} from {theirs} in show bgp routes, saw it", lab.tor_prefix);

    // 2. A wrong password on our side, from a fresh start: never Established on either side.
    lab.ferrule.stop()?;
    std::fs::write(&lab.ferrule.config, md5_ferrule_config(&lab.ferrule.name, lab.theirs, WRONG_PASSWORD))?;
    let drops_before = (md5_failures(&lab.node), md5_failures(&lab.tor_ns));
    lab.ferrule.start(&[])?;
    let started = Instant::now();
    let (mut tor_states, mut our_states) = (Vec::<String>::new(), Vec::<String>::new());
    let mut last_error: Option<String> = None;
    let mut samples = 0;
    loop {
        let tor_state = peer_state(lab.tor.bgp(), ours);
        let ours_now = neighbor(&lab.ferrule, &theirs)?;
        let our_state = ours_now.as_ref().and_then(|n| n["state"].as_str()).unwrap_or("absent").to_string();
        if let Some(e) = ours_now.as_ref().and_then(|n| n["last_error"].as_str()) {
            last_error = Some(e.to_string());
        }
        samples += 1;
        for (list, state) in [(&mut tor_states, tor_state), (&mut our_states, our_state)] {
            if list.last() != Some(&state) {
                list.push(state);
            }
        }
        if tor_states.last().map(String::as_str) == Some("Established")
            || our_states.last().map(String::as_str) == Some("Established")
        {
            bail!(
                "[{who}] 2 wrong password: a session reached Established after {:.1?} (ToR states {}, ferrule states {})",
                started.elapsed(),
                tor_states.join(" -> "),
                our_states.join(" -> ")
            );
        }
        let mentions_md5 = last_error.as_deref().is_some_and(|e| e.contains("MD5"));
        if started.elapsed() >= NEVER_WINDOW && (mentions_md5 || started.elapsed() >= NEVER_WINDOW + LAST_ERROR_TIMEOUT)
        {
            break;
        }
        std::thread::sleep(POLL);
    }
    let watched = started.elapsed();
    let drops_after = (md5_failures(&lab.node), md5_failures(&lab.tor_ns));
    println!(
        "[{who}] 2 wrong password: expected never Established on either side for at least {NEVER_WINDOW:?}, saw \
         ToR states {} and ferrule states {} over {watched:.1?} ({samples} samples)",
        tor_states.join(" -> "),
        our_states.join(" -> ")
    );
    println!(
        "[{who}] 2 kernel: TCPMD5Failure grew by {} in the node's namespace and by {} in the ToR's",
        drops_after.0.saturating_sub(drops_before.0),
        drops_after.1.saturating_sub(drops_before.1)
    );
    println!("[{who}] 2 last_error: expected to mention MD5, saw {last_error:?}");
    // Reported at the end, so that check 3 runs either way.
    let mut failures = Vec::new();
    if !last_error.as_deref().is_some_and(|e| e.contains("MD5")) {
        failures
            .push(format!("last_error does not mention MD5 after {watched:.1?} of failing sessions: {last_error:?}"));
    }

    // 3. The right password, applied to the running daemon: Established again.
    let out = lab.ferrule.apply(&md5_ferrule_config(&lab.ferrule.name, lab.theirs, PASSWORD))?;
    ensure!(out.status.success(), "ferrule apply failed: {}", ferrule::text(&out.stderr));
    let t = Instant::now();
    ferrule_tests::wait_established(lab.tor.bgp(), ours, ESTABLISH_TIMEOUT)?;
    wait_ferrule_established(&lab.ferrule, &theirs, Duration::from_secs(10))?;
    println!(
        "[{who}] 3 right password applied: expected Established on both sides, saw Established after {:.1?}",
        t.elapsed()
    );
    ensure!(failures.is_empty(), "[{who}] {}", failures.join("\n"));
    Ok(())
}

#[test]
fn md5_with_frr_establishes_with_the_same_password_and_never_with_a_wrong_one() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(md5_lab(Kind::Frr), md5_scenario);
}

#[test]
fn md5_with_bird_establishes_with_the_same_password_and_never_with_a_wrong_one() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(md5_lab(Kind::Bird), md5_scenario);
}

// ---------------------------------------------------------------------------------------------
// Unnumbered

struct UnnumberedLab {
    kind: Kind,
    node: NetNs,
    tor_ns: NetNs,
    ferrule: Ferrule,
    tor: Tor,
    node_ll: Ipv6Addr,
    tor_ll: Ipv6Addr,
    /// Last: dropped after the daemons, so their logs are still there when they print them.
    _dir: TestDir,
}

fn link_local(ns: &NetNs, ifname: &str) -> Result<Ipv6Addr> {
    match net::link_local(ns, ifname)? {
        IpAddr::V6(a) => Ok(a),
        other => bail!("link-local address {other} is not IPv6"),
    }
}

/// The TCP MD5 key of the unnumbered session with FRR.
const UNNUMBERED_KEY: &str = "unnumbered-k3y";

fn unnumbered_lab(kind: Kind) -> Result<UnnumberedLab> {
    let tag = if kind == Kind::Frr { "unf" } else { "unb" };
    let dir = TestDir::new(&format!("fabric-{tag}"))?;
    let node = NetNs::new(&format!("{tag}n"))?;
    let tor_ns = NetNs::new(&format!("{tag}t"))?;
    net::veth(&node, "tor0", &tor_ns, "srv0")?;
    // The node must find the ToR by itself, not through the kernel's RA handling (which would
    // also give it an RA default route and make the ::/0 check meaningless).
    net::sysctl(&node, "net.ipv6.conf.tor0.accept_ra", "0")?;
    for (ns, ifname) in [(&node, "tor0"), (&tor_ns, "srv0")] {
        cmd::poll_until(
            &format!("a link-local address on {}:{ifname}", ns.name()),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || Ok(net::link_local(ns, ifname).is_ok()),
        )?;
        let global = ns.run("ip", ["-6", "-o", "addr", "show", "dev", ifname, "scope", "global"])?;
        let ipv4 = ns.run("ip", ["-4", "-o", "addr", "show", "dev", ifname])?;
        ensure!(
            global.trim().is_empty() && ipv4.trim().is_empty(),
            "{}:{ifname} must have link-local addresses only, has:\n{global}{ipv4}",
            ns.name()
        );
    }
    let (node_ll, tor_ll) = (link_local(&node, "tor0")?, link_local(&tor_ns, "srv0")?);
    for (ns, v4, v6) in [(&node, NODE_V4, NODE_V6), (&tor_ns, TOR_V4, TOR_V6)] {
        net::add_addr(ns, "lo", &format!("{v4}/32"))?;
        net::add_addr(ns, "lo", &format!("{v6}/128"))?;
    }
    println!("[link] {}:tor0 {node_ll} <-> {}:srv0 {tor_ll}: link-local addresses only", node.name(), tor_ns.name());

    let name = node_name(tag);
    // Against FRR the session also carries a TCP MD5 key, which Linux takes for a link-local
    // peer only by address (an interface in the key needs a VRF).
    let password = if kind == Kind::Frr { format!("password = \"{UNNUMBERED_KEY}\"\n") } else { String::new() };
    let config = node_config(
        &name,
        &format!(
            "[[bgp.peers]]\ninterface = \"tor0\"\nasn = {TOR_ASN}\nhold_time = 9\nimport = [\"0.0.0.0/0\", \"::/0\"]\n{password}\n\
             [[bgp.announce]]\nprefix = \"{NODE_V4}/32\"\n\n[[bgp.announce]]\nprefix = \"{NODE_V6}/128\"\n"
        ),
    );
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config)?;
    ferrule.start(&[])?;
    let tor = match kind {
        Kind::Frr => {
            let bgpd = format!(
                "frr defaults datacenter\nhostname {}\n!\nrouter bgp {TOR_ASN}\n bgp router-id 192.0.2.2\n \
                 no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n no bgp network import-check\n \
                 neighbor srv0 interface remote-as external\n neighbor srv0 password {UNNUMBERED_KEY}\n \
                 address-family ipv4 unicast\n  neighbor srv0 activate\n  network 0.0.0.0/0\n exit-address-family\n \
                 address-family ipv6 unicast\n  neighbor srv0 activate\n  network ::/0\n exit-address-family\n!\n",
                tor_ns.name()
            );
            let frr = Frr::start_raw(&tor_ns, dir.path(), &[("bgpd", &bgpd)])?;
            // zebra's RAs on the link (the harness starts zebra with a hostname-only config).
            frr.vtysh(&["configure terminal", "interface srv0", "ipv6 nd ra-interval 1", "no ipv6 nd suppress-ra"])?;
            Tor::Frr(frr)
        }
        Kind::Bird => {
            // BIRD 2.0 refuses `max ra interval` below 4 and `min ra interval` below 3. The BGP
            // side is a dynamic neighbor over the link's link-local range: whoever connects on
            // srv0 (BIRD never learns our address other than from our connection).
            let config = format!(
                "router id 192.0.2.2;\nlog stderr all;\nprotocol device {{ scan time 1; }}\n\
                 protocol kernel kernel4 {{ ipv4 {{ export all; }}; }}\n\
                 protocol kernel kernel6 {{ ipv6 {{ export all; }}; }}\n\
                 protocol radv {{ interface \"srv0\" {{ max ra interval 4; min ra interval 3; }}; }}\n\
                 protocol static defaults4 {{ ipv4; route 0.0.0.0/0 blackhole; }}\n\
                 protocol static defaults6 {{ ipv6; route ::/0 blackhole; }}\n\
                 protocol bgp unnumbered {{\n  local as {TOR_ASN};\n  neighbor range fe80::/10 as {FERRULE_ASN};\n  \
                 interface \"srv0\";\n  dynamic name \"dyn\";\n  connect delay time 1;\n  connect retry time 2;\n  \
                 error wait time 1, 5;\n  ipv4 {{ import all; export all; extended next hop on; }};\n  \
                 ipv6 {{ import all; export all; }};\n}}\n"
            );
            Tor::Bird(Bird::start_raw(&tor_ns, dir.path(), &config)?)
        }
    };
    Ok(UnnumberedLab { kind, _dir: dir, node, tor_ns, ferrule, tor, node_ll, tor_ll })
}

/// FRR's state and neighbor address for its `neighbor srv0 interface`.
fn frr_interface_neighbor(frr: &Frr, ifname: &str) -> Result<(String, String)> {
    let json = frr.vtysh(&[&format!("show bgp neighbors {ifname} json")])?;
    let v: Value = serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
    let n = &v[ifname];
    Ok((n["bgpState"].as_str().unwrap_or("?").to_string(), n["bgpNeighborAddr"].as_str().unwrap_or("none").to_string()))
}

fn unnumbered_scenario(lab: &mut UnnumberedLab) -> Result<()> {
    let who = format!("unnumbered {:?}", lab.kind);
    let (node_ll, tor_ll) = (lab.node_ll.to_string(), lab.tor_ll.to_string());

    // 1. We found the ToR from its RAs and peer over link-local addresses.
    let t = wait_ferrule_established(&lab.ferrule, &tor_ll, Duration::from_secs(60))?;
    let entry = neighbor(&lab.ferrule, &tor_ll)?.context("neighbor gone")?;
    println!(
        "[{who}] 1 ferrule: expected a neighbor at the ToR's link-local {tor_ll} Established, saw {} {} after {t:.1?} \
         (families {})",
        entry["address"], entry["state"], entry["families"]
    );
    match &lab.tor {
        Tor::Frr(frr) => {
            let mut seen = (String::new(), String::new());
            wait_until("FRR's neighbor srv0 to be Established", Duration::from_secs(15), || {
                seen = frr_interface_neighbor(frr, "srv0")?;
                Ok(seen.0 == "Established")
            })
            .with_context(|| format!("FRR's neighbor srv0: {seen:?}"))?;
            println!("[{who}] 1 FRR: expected neighbor srv0 Established at {node_ll}, saw {} at {}", seen.0, seen.1);
            ensure!(seen.1 == node_ll, "FRR peers with {} instead of our link-local {node_ll}", seen.1);
        }
        Tor::Bird(bird) => {
            ferrule_tests::wait_established(bird, IpAddr::V6(lab.node_ll), Duration::from_secs(15))?;
            println!("[{who}] 1 BIRD: expected a dynamic session with {node_ll} Established, saw Established");
        }
    }

    // 2. The ToR's defaults through its link-local address; IPv4 over an IPv6 next hop.
    let want = vec![format!("{tor_ll}@tor0")];
    for family in ["-4", "-6"] {
        let mut seen = (Vec::new(), String::new());
        let result = wait_until(
            &format!("default {family} proto {RTPROT_FERRULE} via {want:?}"),
            Duration::from_secs(30),
            || {
                seen = net::ferrule_default_route(&lab.node, family)?;
                Ok(seen.0 == want)
            },
        );
        let text = lab.node.run("ip", [family, "route", "show", "default", "proto", RTPROT_FERRULE])?;
        println!(
            "[{who}] 2 default {family} proto {RTPROT_FERRULE}: expected via {tor_ll} dev tor0, saw {:?} ({})",
            seen.0,
            text.trim()
        );
        result.with_context(|| format!("ferrule routes: {:?}", lab.ferrule.show(&["bgp", "routes"])))?;
        if family == "-4" {
            ensure!(text.contains("via inet6 fe80:"), "the IPv4 default is not via an IPv6 next hop: {text}");
        }
    }

    // 3. The ToR routes our addresses back to us.
    for (addr, len) in [(NODE_V4, 32), (NODE_V6, 128)] {
        let prefix = format!("{addr}/{len}");
        let mut seen = String::new();
        let result = wait_until(&format!("the ToR's kernel route to {prefix}"), Duration::from_secs(30), || {
            seen = kernel_route(&lab.tor_ns, addr)?;
            Ok(!seen.is_empty())
        });
        println!("[{who}] 3 ToR kernel: expected a route to {prefix} towards {node_ll}, saw {seen:?}");
        result.with_context(|| lab.tor.show_route(&prefix))?;
    }

    // 4. Traffic from our loopback addresses to the ToR's, through the learned defaults.
    for (source, target) in [(NODE_V4, TOR_V4), (NODE_V6, TOR_V6)] {
        let summary = ping_from(&lab.node, source, target)?;
        println!("[{who}] 4 ping {source} -> {target}: expected every reply, saw {summary}");
    }
    Ok(())
}

#[test]
fn unnumbered_with_frr_finds_the_tor_by_ra_and_routes_ipv4_over_link_local() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(unnumbered_lab(Kind::Frr), unnumbered_scenario);
}

#[test]
fn unnumbered_with_bird_finds_the_tor_by_ra_and_routes_ipv4_over_link_local() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(unnumbered_lab(Kind::Bird), unnumbered_scenario);
}

// ---------------------------------------------------------------------------------------------
// Graceful restart

const OURS_V4: &str = "198.51.100.0/24";
const OURS_V6: &str = "2001:db8:100::/64";
const RESTART_TIME_S: u16 = 60;
/// Sampling period of the ToR's and the node's kernel routes during the restart.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const PING_EVERY: Duration = Duration::from_millis(20);

struct GrLab {
    kind: Kind,
    node: NetNs,
    tor_ns: NetNs,
    ferrule: Ferrule,
    tor: Tor,
    /// Our session address and the ToR's.
    ours: IpAddr,
    theirs: IpAddr,
    /// Last: dropped after the daemons, so their logs are still there when they print them.
    dir: TestDir,
}

fn gr_lab(kind: Kind) -> Result<GrLab> {
    let tag = if kind == Kind::Frr { "grf" } else { "grb" };
    let dir = TestDir::new(&format!("fabric-{tag}"))?;
    let node = NetNs::new(&format!("{tag}n"))?;
    let tor_ns = NetNs::new(&format!("{tag}t"))?;
    net::veth(&node, "tor0", &tor_ns, "srv0")?;
    // Both families on the link: the session uses one, the other gives next hops for the other
    // family's routes. FRR's session runs over IPv4, BIRD's over IPv6.
    net::add_addr(&node, "tor0", "192.0.2.1/30")?;
    net::add_addr(&tor_ns, "srv0", "192.0.2.2/30")?;
    net::add_addr(&node, "tor0", "2001:db8:a::1/64")?;
    net::add_addr(&tor_ns, "srv0", "2001:db8:a::2/64")?;
    for (ns, v4, v6) in [(&node, NODE_V4, NODE_V6), (&tor_ns, TOR_V4, TOR_V6)] {
        net::add_addr(ns, "lo", &format!("{v4}/32"))?;
        net::add_addr(ns, "lo", &format!("{v6}/128"))?;
    }
    let (ours, theirs): (IpAddr, IpAddr) = match kind {
        Kind::Frr => ("192.0.2.1".parse()?, "192.0.2.2".parse()?),
        Kind::Bird => ("2001:db8:a::1".parse()?, "2001:db8:a::2".parse()?),
    };
    let name = node_name(tag);
    let config = node_config(
        &name,
        &format!(
            "[[bgp.peers]]\naddress = \"{theirs}\"\nasn = {TOR_ASN}\nhold_time = 9\nimport = [\"0.0.0.0/0\", \"::/0\"]\n\
             graceful_restart = {{ restart_time_s = {RESTART_TIME_S} }}\n\n\
             [[bgp.announce]]\nprefix = \"{OURS_V4}\"\n\n[[bgp.announce]]\nprefix = \"{OURS_V6}\"\n"
        ),
    );
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config)?;
    ferrule.start(&[])?;
    let tor = match kind {
        Kind::Frr => {
            let neighbor =
                Neighbor::new("ferrule", ours, FERRULE_ASN).families(&[Family::Ipv4Unicast, Family::Ipv6Unicast]);
            let config = BgpConfig::new("192.0.2.2".parse()?, TOR_ASN).neighbor(neighbor).extra(&format!(
                "router bgp {TOR_ASN}\n bgp graceful-restart\n no bgp network import-check\n\
                 address-family ipv4 unicast\n  network 0.0.0.0/0\n exit-address-family\n\
                 address-family ipv6 unicast\n  network ::/0\n exit-address-family\n!\n"
            ));
            Tor::Frr(Frr::start(&tor_ns, dir.path(), &config)?)
        }
        Kind::Bird => {
            let config = format!(
                "router id 192.0.2.2;\nlog stderr all;\nprotocol device {{ }}\n\
                 protocol kernel kernel4 {{ ipv4 {{ export all; }}; }}\n\
                 protocol kernel kernel6 {{ ipv6 {{ export all; }}; }}\n\
                 protocol static defaults4 {{ ipv4; route 0.0.0.0/0 blackhole; }}\n\
                 protocol static defaults6 {{ ipv6; route ::/0 blackhole; }}\n\
                 protocol bgp ferrule {{\n  local {theirs} as {TOR_ASN};\n  neighbor {ours} as {FERRULE_ASN};\n  \
                 graceful restart on;\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n  \
                 ipv4 {{ import all; export all; extended next hop on; }};\n  ipv6 {{ import all; export all; }};\n}}\n"
            );
            Tor::Bird(Bird::start_raw(&tor_ns, dir.path(), &config)?)
        }
    };
    Ok(GrLab { kind, dir, node, tor_ns, ferrule, tor, ours, theirs })
}

/// The ToR's own account of graceful restart with us (for the report).
fn tor_gr_report(lab: &GrLab) -> String {
    match &lab.tor {
        Tor::Frr(f) => frr_neighbor_json(f, lab.ours)
            .map(|n| format!("gracefulRestartInfo {}", n["gracefulRestartInfo"]))
            .unwrap_or_else(|e| format!("({e:#})")),
        Tor::Bird(b) => b
            .birdc(&["show", "protocols", "all", "ferrule"])
            .map(|out| {
                let keep = ["state", "capabilities", "restart", "preserved", "neighbor gr", "timer"];
                out.lines()
                    .filter(|l| keep.iter().any(|k| l.to_lowercase().contains(k)))
                    .map(str::trim_end)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|e| format!("({e:#})")),
    }
}

fn frr_neighbor_json(frr: &Frr, neighbor: IpAddr) -> Result<Value> {
    let json = frr.vtysh(&[&format!("show bgp neighbors {neighbor} json")])?;
    let v: Value = serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
    Ok(v[neighbor.to_string()].clone())
}

/// Whether the ToR saw the Restarting (R) bit in our last OPEN: FRR's `rBit`; BIRD's
/// "Restart recovery" among the neighbor's graceful restart capability flags.
fn tor_saw_restart_bit(lab: &GrLab) -> Result<bool> {
    match &lab.tor {
        Tor::Frr(f) => {
            let n = frr_neighbor_json(f, lab.ours)?;
            n["gracefulRestartInfo"]["rBit"].as_bool().with_context(|| format!("no rBit in {n}"))
        }
        Tor::Bird(b) => {
            let out = b.birdc(&["show", "protocols", "all", "ferrule"])?;
            let (_, theirs) = out.split_once("Neighbor capabilities").with_context(|| format!("no caps in {out}"))?;
            let theirs = theirs.split("Session:").next().unwrap_or(theirs);
            Ok(theirs.contains("Restart recovery"))
        }
    }
}

fn gr_scenario(lab: &mut GrLab) -> Result<()> {
    let who = format!("GR {:?}", lab.kind);
    let (ours, theirs) = (lab.ours, lab.theirs.to_string());

    // 1. Up, GR negotiated, routes in place both ways.
    ferrule_tests::wait_established(lab.tor.bgp(), ours, ESTABLISH_TIMEOUT)?;
    wait_ferrule_established(&lab.ferrule, &theirs, Duration::from_secs(10))?;
    let entry = neighbor(&lab.ferrule, &theirs)?.context("neighbor gone")?;
    println!(
        "[{who}] 1 session: expected Established with graceful restart negotiated, saw {} graceful_restart={} \
         families {}",
        entry["state"], entry["graceful_restart"], entry["families"]
    );
    ensure!(entry["graceful_restart"] == true, "graceful restart not negotiated: {entry}");
    for family in ["-4", "-6"] {
        let mut seen = (Vec::new(), String::new());
        wait_until(&format!("default {family} proto {RTPROT_FERRULE}"), Duration::from_secs(30), || {
            seen = net::ferrule_default_route(&lab.node, family)?;
            Ok(!seen.0.is_empty())
        })?;
        println!("[{who}] 1 node default {family} proto {RTPROT_FERRULE}: expected present, saw {:?}", seen.0);
    }
    for prefix in [OURS_V4, OURS_V6] {
        let mut seen = String::new();
        wait_until(&format!("the ToR's kernel route to {prefix}"), Duration::from_secs(30), || {
            seen = kernel_route(&lab.tor_ns, prefix)?;
            Ok(!seen.is_empty())
        })
        .with_context(|| lab.tor.show_route(prefix))?;
        println!("[{who}] 1 ToR kernel route to {prefix}: expected present, saw {seen:?}");
    }
    println!("[{who}] 1 ToR's view of graceful restart with us:\n{}", tor_gr_report(lab));

    // 2. The restart, with traffic and samples around it.
    let mut probes: Vec<(String, Probe)> = Vec::new();
    for prefix in [OURS_V4, OURS_V6] {
        let ns = lab.tor_ns.clone();
        probes.push((format!("ToR route {prefix}"), Box::new(move || Ok(!kernel_route(&ns, prefix)?.is_empty()))));
    }
    for family in ["-4", "-6"] {
        let ns = lab.node.clone();
        probes.push((
            format!("node default {family} proto {RTPROT_FERRULE}"),
            Box::new(move || Ok(!net::ferrule_default_route(&ns, family)?.0.is_empty())),
        ));
    }
    let sampler = Sampler::start(SAMPLE_EVERY, Duration::from_secs(120), probes);
    let mut pingers = Vec::new();
    for (source, target) in [(NODE_V4, TOR_V4), (NODE_V6, TOR_V6)] {
        let pinger = Pinger::start(
            &lab.node,
            lab.dir.path(),
            source.parse()?,
            target.parse()?,
            PING_EVERY,
            6000,
            Duration::from_secs(120),
        )?;
        pingers.push((source, target, pinger));
    }
    std::thread::sleep(Duration::from_secs(1));

    let t0 = Instant::now();
    lab.ferrule.stop()?;
    let stopped = t0.elapsed();
    // The ToR keeps our routes because of graceful restart (stale), not because it missed the
    // session going away.
    let mut stale_during = Vec::new();
    let kept_stale = wait_until("the ToR to hold our prefixes as stale", Duration::from_secs(3), || {
        stale_during.clear();
        for prefix in [OURS_V4, OURS_V6] {
            stale_during.push((prefix, lab.tor.is_stale(prefix)?));
        }
        Ok(stale_during.iter().all(|(_, stale)| *stale))
    });
    let tor_state_down = peer_state(lab.tor.bgp(), ours);
    lab.ferrule.start(&["--resume"])?;
    let restarted = t0.elapsed();
    ferrule_tests::wait_established(lab.tor.bgp(), ours, ESTABLISH_TIMEOUT)?;
    wait_ferrule_established(&lab.ferrule, &theirs, Duration::from_secs(10))?;
    let established = t0.elapsed();
    let log = || lab.ferrule.daemon().map(|d| d.logs()).unwrap_or_default();
    let converged = wait_until("ferrule's graceful restart to complete", Duration::from_secs(30), || {
        Ok(log().contains("graceful restart complete"))
    });
    let complete = t0.elapsed();
    let mut stale_after = Vec::new();
    let refreshed = wait_until("the ToR to hold our prefixes fresh again", Duration::from_secs(30), || {
        stale_after.clear();
        for prefix in [OURS_V4, OURS_V6] {
            stale_after.push((prefix, lab.tor.is_stale(prefix)?));
        }
        Ok(stale_after.iter().all(|(_, stale)| !stale))
    });
    let fresh = t0.elapsed();
    // Keep traffic and samples going a little past convergence.
    std::thread::sleep(Duration::from_secs(2));
    let samples = sampler.stop();
    let mut reports = Vec::new();
    for (source, target, pinger) in pingers {
        reports.push((source, target, pinger.stop()?));
    }

    println!(
        "[{who}] 2 timeline from SIGTERM: old process gone after {stopped:.2?}, new one ready after {restarted:.2?}, \
         Established after {established:.2?}, restart complete after {complete:.2?}, ToR routes fresh after {fresh:.2?}"
    );
    println!(
        "[{who}] 2 while down: expected the ToR's paths to our prefixes stale, saw {stale_during:?} (ToR session \
         {tor_state_down})"
    );
    let old_log = lab.dir.path().join(format!("{}-0.log", lab.ferrule.name));
    let old_text = strip_ansi(&std::fs::read_to_string(&old_log).unwrap_or_default());
    let new_text = strip_ansi(&log());
    for line in grep(&old_text, "graceful restart").iter().chain(&grep(&new_text, "graceful restart")) {
        println!("[{who}] 2 log: {line}");
    }
    let mut failures = Vec::new();
    if let Err(e) = &kept_stale {
        failures.push(format!("the ToR did not mark our routes stale while we restarted: {e:#}"));
    }
    for (source, target, r) in &reports {
        println!(
            "[{who}] 2 ping {source} -> {target} every {PING_EVERY:?}: expected 0 lost, saw {} sent, {} received, \
             lost {:?}{} over {:.1?}",
            r.transmitted,
            r.received,
            r.lost,
            if r.in_flight_at_stop { " (last one in flight at stop, not counted)" } else { "" },
            r.elapsed
        );
        if !r.lost.is_empty() || r.transmitted == 0 {
            failures.push(format!(
                "ping {source} -> {target} lost {} of {}: {:?}",
                r.lost.len(),
                r.transmitted,
                r.lost
            ));
        }
    }
    for (i, name) in samples.names.iter().enumerate() {
        let misses = samples.misses(i);
        println!(
            "[{who}] 2 sampled {name} every {SAMPLE_EVERY:?}: expected present in all {} samples (largest gap {:.0?}), \
             missing in {}{}",
            samples.samples.len(),
            samples.largest_gap(),
            misses.len(),
            misses.first().map(|(at, why)| format!(", first at {at:.2?}: {why}")).unwrap_or_default()
        );
        if !misses.is_empty() {
            failures.push(format!("{name} missing in {} samples, from {:.2?}", misses.len(), misses[0].0));
        }
    }

    // 3. What the restart looked like to the ToR and in our own records.
    let r_bit = tor_saw_restart_bit(lab)?;
    println!("[{who}] 3 ToR saw the Restarting bit in our new OPEN: expected true, saw {r_bit}");
    println!("[{who}] 3 ToR's view after the restart:\n{}", tor_gr_report(lab));
    if !r_bit {
        failures.push("the ToR did not see the Restarting bit in our OPEN after the restart".into());
    }
    let deferred = new_text.contains("kernel routes kept until every peer has sent End-of-RIB");
    println!(
        "[{who}] 3 new process: expected to defer kernel route deletion until End-of-RIB, saw deferred={deferred}"
    );
    if !deferred {
        failures.push("the resumed daemon did not start as a graceful restart".into());
    }
    match &converged {
        Ok(_) => println!("[{who}] 3 new process: expected the restart to complete on End-of-RIB, saw it complete"),
        Err(e) => failures.push(format!("graceful restart did not complete: {e:#}")),
    }
    if new_text.contains("deferral time over") {
        failures.push("the deferral ended on its timer, not on End-of-RIB".into());
    }
    println!("[{who}] 3 ToR paths after the restart: expected not stale, saw {stale_after:?}");
    if let Err(e) = &refreshed {
        failures.push(format!("our prefixes stayed stale on the ToR: {e:#}\n{}", lab.tor.show_route(OURS_V4)));
    }

    // 4. An orderly stop: Cease, the ToR withdraws at once, our kernel routes go.
    let pid = lab.ferrule.daemon().context("no daemon running")?.pid();
    let asked = Instant::now();
    let out = ferrule::cli(&["shutdown", "--socket", lab.ferrule.socket.to_str().context("socket path")?]);
    println!(
        "[{who}] 4 ferrule shutdown: exit {}, said {:?}{}",
        out.status,
        ferrule::text(&out.stdout).trim(),
        ferrule::text(&out.stderr).trim()
    );
    ensure!(out.status.success(), "ferrule shutdown failed: {}", ferrule::text(&out.stderr));
    let exited = probe::wait_exit(pid, Duration::from_secs(15))?;
    lab.ferrule.stop()?;
    let left = ferrule_routes(&lab.node)?;
    println!(
        "[{who}] 4 node after shutdown ({exited:.2?}): expected no route with proto {RTPROT_FERRULE}, saw {left:?}"
    );
    if !left.is_empty() {
        failures.push(format!("routes with proto {RTPROT_FERRULE} left after ferrule shutdown:\n{left}"));
    }
    for prefix in [OURS_V4, OURS_V6] {
        let mut seen = String::new();
        let gone = wait_until(&format!("the ToR to withdraw {prefix}"), Duration::from_secs(10), || {
            seen = kernel_route(&lab.tor_ns, prefix)?;
            Ok(seen.is_empty())
        });
        let after = asked.elapsed();
        println!(
            "[{who}] 4 ToR kernel route to {prefix}: expected withdrawn within 3 s of ferrule shutdown, saw {} after \
             {after:.2?}",
            if seen.is_empty() { "withdrawn".to_string() } else { format!("{seen:?}") }
        );
        if gone.is_err() || after > Duration::from_secs(3) {
            failures.push(format!("the ToR still had {prefix} {after:.2?} after ferrule shutdown: {seen}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "[{who}] {} check(s) failed:\n- {}\nold process log tail ({}):\n{}",
            failures.len(),
            failures.join("\n- "),
            old_log.display(),
            strip_ansi(&tail(&old_log, 15))
        );
    }
    Ok(())
}

#[test]
fn graceful_restart_with_frr_keeps_traffic_and_routes_through_a_daemon_restart() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(gr_lab(Kind::Frr), gr_scenario);
}

#[test]
fn graceful_restart_with_bird_keeps_traffic_and_routes_through_a_daemon_restart() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(gr_lab(Kind::Bird), gr_scenario);
}

// ---------------------------------------------------------------------------------------------
// Listen ranges

const VM_RANGE: &str = "2001:db8:50::/64";
const VM_ASN: u32 = 65201;
const VM_ADDR: &str = "2001:db8:50::10";
const VM_PREFIX: &str = "2001:db8:5a::/64";
/// A second VM in the same range, which allows one session at a time.
const VM2_ADDR: &str = "2001:db8:50::11";
const LEGACY_RANGE: &str = "192.0.2.64/28";
const LEGACY_ASN: u32 = 65202;
const LEGACY_ADDR: &str = "192.0.2.70";
const LEGACY_PREFIX: &str = "203.0.113.64/26";
/// On the segment, outside every range.
const OUTSIDER_ADDR: &str = "192.0.2.100";
const OUTSIDER_PREFIX: &str = "203.0.113.128/26";
/// The node's addresses on the segment.
const SEGMENT_V6: &str = "2001:db8:50::1";
const SEGMENT_V4: &str = "192.0.2.1";
/// How long the refused hosts are watched.
const REFUSED_WINDOW: Duration = Duration::from_secs(10);

struct ListenLab {
    node: NetNs,
    ferrule: Ferrule,
    vm: Bird,
    legacy: Frr,
    outsider_ns: NetNs,
    vm2_ns: NetNs,
    /// Last: dropped after the daemons, so their logs are still there when they print them.
    dir: TestDir,
}

fn listen_lab() -> Result<ListenLab> {
    let dir = TestDir::new("fabric-listen")?;
    let node = NetNs::new("lsnode")?;
    let vm_ns = NetNs::new("lsvm")?;
    let legacy_ns = NetNs::new("lsleg")?;
    let outsider_ns = NetNs::new("lsout")?;
    let vm2_ns = NetNs::new("lsvm2")?;
    // One segment: a bridge in the node's namespace with a port per host.
    node.run("ip", ["link", "add", "seg0", "type", "bridge"])?;
    net::link_up(&node, "seg0")?;
    for (ns, port) in [(&vm_ns, "vm0"), (&legacy_ns, "legacy0"), (&outsider_ns, "out0"), (&vm2_ns, "vm1")] {
        net::veth(&node, port, ns, "eth0")?;
        node.run("ip", ["link", "set", port, "master", "seg0"])?;
    }
    net::add_addr(&node, "seg0", &format!("{SEGMENT_V6}/64"))?;
    net::add_addr(&node, "seg0", &format!("{SEGMENT_V4}/24"))?;
    net::add_addr(&vm_ns, "eth0", &format!("{VM_ADDR}/64"))?;
    net::add_addr(&vm2_ns, "eth0", &format!("{VM2_ADDR}/64"))?;
    net::add_addr(&legacy_ns, "eth0", &format!("{LEGACY_ADDR}/24"))?;
    net::add_addr(&outsider_ns, "eth0", &format!("{OUTSIDER_ADDR}/24"))?;

    let name = node_name("ls");
    let config = node_config(
        &name,
        &format!(
            "[[bgp.listen]]\nrange = \"{VM_RANGE}\"\nasn = {VM_ASN}\nlimit = 1\nhold_time = 9\n\
             import = [\"2001:db8:5a::/48 le 64\"]\n\n\
             [[bgp.listen]]\nrange = \"{LEGACY_RANGE}\"\nasn = {LEGACY_ASN}\nhold_time = 9\n\
             import = [\"203.0.113.0/24 le 32\"]\n\n\
             [[bgp.announce]]\nprefix = \"{OURS_V4}\"\n\n[[bgp.announce]]\nprefix = \"{OURS_V6}\"\n"
        ),
    );
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config)?;
    ferrule.start(&[])?;
    let vm = Bird::start_raw(&vm_ns, dir.path(), &vm_bird_config(VM_ADDR))?;
    let legacy = Frr::start(
        &legacy_ns,
        dir.path(),
        &BgpConfig::new(LEGACY_ADDR.parse()?, LEGACY_ASN)
            .neighbor(Neighbor::new("ferrule", SEGMENT_V4.parse()?, FERRULE_ASN))
            .extra(&format!(
                "router bgp {LEGACY_ASN}\n no bgp network import-check\n\
                 address-family ipv4 unicast\n  network {LEGACY_PREFIX}\n exit-address-family\n!\n"
            )),
    )?;
    Ok(ListenLab { dir, node, ferrule, vm, legacy, outsider_ns, vm2_ns })
}

/// A VM's BIRD: announces VM_PREFIX to the node over IPv6.
fn vm_bird_config(address: &str) -> String {
    format!(
        "router id 192.0.2.10;\nlog stderr all;\nprotocol device {{ }}\n\
         protocol static vm6 {{ ipv6; route {VM_PREFIX} blackhole; }}\n\
         protocol bgp ferrule {{\n  local {address} as {VM_ASN};\n  neighbor {SEGMENT_V6} as {FERRULE_ASN};\n  \
         connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n  \
         ipv6 {{ import all; export all; }};\n}}\n"
    )
}

fn listen_scenario(lab: &mut ListenLab) -> Result<()> {
    let who = "listen";
    // 1. Both in-range hosts connect and are listed as dynamic neighbors of their range.
    let segment_v6: IpAddr = SEGMENT_V6.parse()?;
    let segment_v4: IpAddr = SEGMENT_V4.parse()?;
    ferrule_tests::wait_established(&lab.vm, segment_v6, ESTABLISH_TIMEOUT)?;
    ferrule_tests::wait_established(&lab.legacy, segment_v4, ESTABLISH_TIMEOUT)?;
    for (addr, range, asn, what) in
        [(VM_ADDR, VM_RANGE, VM_ASN, "BIRD VM"), (LEGACY_ADDR, LEGACY_RANGE, LEGACY_ASN, "FRR legacy host")]
    {
        wait_ferrule_established(&lab.ferrule, addr, Duration::from_secs(10))?;
        let n = neighbor(&lab.ferrule, addr)?.context("neighbor gone")?;
        println!(
            "[{who}] 1 {what} {addr}: expected Established, dynamic {range:?}, asn {asn}; saw {} dynamic {} asn {}",
            n["state"], n["dynamic"], n["asn"]
        );
        ensure!(n["dynamic"].as_str() == Some(range), "{addr} is not listed as dynamic from {range}: {n}");
        ensure!(n["asn"].as_u64() == Some(u64::from(asn)), "{addr} has asn {} instead of {asn}", n["asn"]);
    }

    // 2. Their prefixes in our RIB, ours at theirs.
    for (prefix, from) in [(VM_PREFIX, VM_ADDR), (LEGACY_PREFIX, LEGACY_ADDR)] {
        wait_until(&format!("{prefix} in ferrule"), Duration::from_secs(20), || {
            Ok(ferrule_route(&lab.ferrule, prefix)?.is_some())
        })
        .with_context(|| format!("routes: {:?}", lab.ferrule.show(&["bgp", "routes"])))?;
        let route = ferrule_route(&lab.ferrule, prefix)?.context("route gone")?;
        let seen = &route["paths"][0]["from"];
        println!("[{who}] 2 {prefix}: expected in show bgp routes from {from}, saw from {seen}");
        ensure!(seen.as_str() == Some(from), "{prefix} is from {seen}, not {from}");
    }
    let mut vm_view = String::new();
    wait_until(&format!("{OURS_V6} at the BIRD VM"), Duration::from_secs(20), || {
        vm_view = lab.vm.birdc(&["show", "route", "for", OURS_V6]).unwrap_or_default();
        Ok(vm_view.contains("BGP") || vm_view.contains("ferrule"))
    })?;
    println!("[{who}] 2 {OURS_V6}: expected at the BIRD VM, saw it");
    wait_until(&format!("{OURS_V4} at the FRR legacy host"), Duration::from_secs(20), || {
        let out = lab.legacy.vtysh(&[&format!("show bgp ipv4 unicast {OURS_V4} json")])?;
        Ok(serde_json::from_str::<Value>(&out)?["paths"].as_array().is_some_and(|p| !p.is_empty()))
    })?;
    println!("[{who}] 2 {OURS_V4}: expected at the FRR legacy host, saw it");

    // 3. A host outside every range, and a second VM while its range is at its limit (1): their
    //    connections are refused while the sessions in place carry on.
    let opens_before = probe::tcp_counter(&lab.node, "Tcp", "PassiveOpens")?;
    let outsider = GoBgp::start(
        &lab.outsider_ns,
        lab.dir.path(),
        &BgpConfig::new(OUTSIDER_ADDR.parse()?, LEGACY_ASN)
            .neighbor(Neighbor::new("ferrule", segment_v4, FERRULE_ASN))
            .extra("  [neighbors.timers.config]\n    connect-retry = 2\n"),
    )?;
    outsider.cli(&["global", "rib", "add", OUTSIDER_PREFIX, "-a", "ipv4"])?;
    let vm2 = Bird::start_raw(&lab.vm2_ns, lab.dir.path(), &vm_bird_config(VM2_ADDR))?;
    let started = Instant::now();
    let mut watched = [
        Refused::new("outsider (GoBGP)", &outsider, segment_v4, OUTSIDER_ADDR),
        Refused::new("second VM (BIRD)", &vm2, segment_v6, VM2_ADDR),
    ];
    while started.elapsed() < REFUSED_WINDOW {
        for w in watched.iter_mut() {
            w.sample(&lab.ferrule);
            ensure!(
                !w.theirs.iter().chain(&w.ours).any(|s| s == "Established"),
                "the {} {} reached Established after {:.1?} (its states {}, ferrule's {})",
                w.what,
                w.address,
                started.elapsed(),
                w.theirs.join(" -> "),
                w.ours.join(" -> ")
            );
        }
        std::thread::sleep(POLL);
    }
    let opens = probe::tcp_counter(&lab.node, "Tcp", "PassiveOpens")?.saturating_sub(opens_before);
    for w in &watched {
        println!(
            "[{who}] 3 {} {}: expected never Established over {REFUSED_WINDOW:?}, saw its states {} and ferrule's {}",
            w.what,
            w.address,
            w.theirs.join(" -> "),
            w.ours.join(" -> ")
        );
    }
    println!("[{who}] 3 the node accepted {opens} TCP connection(s) meanwhile, each closed at once");
    let learned = ferrule_route(&lab.ferrule, OUTSIDER_PREFIX)?;
    println!("[{who}] 3 {OUTSIDER_PREFIX}: expected never learned, saw {}", learned.is_some());
    ensure!(learned.is_none(), "the outsider's prefix was learned: {learned:?}");
    ensure!(opens >= 2, "only {opens} connection(s) came in: the refusals were not exercised by both hosts");
    let vm_route = ferrule_route(&lab.ferrule, VM_PREFIX)?.context("the first VM's route is gone")?;
    let from: Vec<&str> =
        vm_route["paths"].as_array().into_iter().flatten().filter_map(|p| p["from"].as_str()).collect();
    println!("[{who}] 3 {VM_PREFIX}: expected only from {VM_ADDR}, saw from {from:?}");
    ensure!(from == [VM_ADDR], "{VM_PREFIX} from {from:?}");
    let still = [(VM_ADDR, "BIRD VM"), (LEGACY_ADDR, "FRR legacy host")]
        .map(|(addr, what)| format!("{what} {}", state_of(&lab.ferrule, addr)));
    println!("[{who}] 3 in-range sessions meanwhile: expected still Established, saw {}", still.join(", "));
    ensure!(still.iter().all(|s| s.ends_with("Established")), "an in-range session dropped: {still:?}");
    Ok(())
}

/// A host whose connections must be refused, and the session states seen on both sides.
struct Refused<'a> {
    what: &'static str,
    peer: &'a dyn BgpPeer,
    /// The node's address, as the host names its neighbor.
    towards: IpAddr,
    address: &'static str,
    theirs: Vec<String>,
    ours: Vec<String>,
}

impl<'a> Refused<'a> {
    fn new(what: &'static str, peer: &'a dyn BgpPeer, towards: IpAddr, address: &'static str) -> Refused<'a> {
        Refused { what, peer, towards, address, theirs: Vec::new(), ours: Vec::new() }
    }

    /// Records each side's state when it changed.
    fn sample(&mut self, ferrule: &Ferrule) {
        for (list, state) in
            [(&mut self.theirs, peer_state(self.peer, self.towards)), (&mut self.ours, state_of(ferrule, self.address))]
        {
            if list.last() != Some(&state) {
                list.push(state);
            }
        }
    }
}

#[test]
fn listen_ranges_accept_a_vm_and_a_legacy_host_and_refuse_an_outsider() {
    if !ferrule_tests::privileged() {
        return;
    }
    run_in(listen_lab(), listen_scenario);
}
