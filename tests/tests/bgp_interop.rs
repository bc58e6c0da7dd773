//! BGP interop: Ferrule peering with FRR, BIRD and GoBGP (Debian's packages), over IPv4 and over
//! IPv6 transport. Each scenario builds its own two namespaces joined by a veth and checks, printing
//! what it expected and what it saw:
//!  1. the session reaches Established on both sides;
//!  2. Ferrule's IPv4 and IPv6 announcements reach the peer with their communities;
//!  3. the peer's prefixes appear in `ferrule show bgp routes` when import policy allows them,
//!     and not otherwise;
//!  4. a withdraw on either side disappears on the other;
//!  5. a peer that goes silent (SIGSTOP) is dropped when the hold timer expires;
//!  6. a wrong peer AS gets the Bad Peer AS NOTIFICATION, seen on both sides;
//!  7. and the other way round: a peer expecting another AS of us refuses our OPEN, and
//!     `show bgp summary` shows the NOTIFICATION it sent.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::{cmd, net, BgpPeer, Bird, Ferrule, Frr, GoBgp, NetNs, TestDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const FERRULE_ASN: u32 = 65101;
const PEER_ASN: u32 = 65000;
/// Ferrule proposes a short hold time so the silent-peer check takes seconds (keepalive 1 s).
const HOLD: u16 = 3;

const OURS_V4: &str = "198.51.100.0/24";
const OURS_V6: &str = "2001:db8:100::/64";
/// The peer announces two prefixes per family; import policy lets only the first through.
const ALLOWED_V4: &str = "203.0.113.0/24";
const DENIED_V4: &str = "192.0.2.128/25";
const ALLOWED_V6: &str = "2001:db8:f00::/48";
const DENIED_V6: &str = "2001:db8:bad::/48";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Frr,
    Bird,
    GoBgp,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    V4,
    V6,
}

struct Link {
    ferrule: IpAddr,
    peer: IpAddr,
}

fn addresses(t: Transport) -> Link {
    match t {
        Transport::V4 => Link { ferrule: "192.0.2.1".parse().unwrap(), peer: "192.0.2.2".parse().unwrap() },
        Transport::V6 => Link { ferrule: "2001:db8:a::1".parse().unwrap(), peer: "2001:db8:a::2".parse().unwrap() },
    }
}

fn ferrule_config(name: &str, peer: IpAddr, peer_asn: u32, announce: bool) -> String {
    let mut text = format!(
        "[node]\nname = \"{name}\"\nasn = {FERRULE_ASN}\nrouter_id = \"192.0.2.1\"\n\n\
         [[bgp.peers]]\naddress = \"{peer}\"\nasn = {peer_asn}\nhold_time = {HOLD}\n\
         import = [\"{ALLOWED_V4}\", \"{ALLOWED_V6}\"]\n"
    );
    if announce {
        text.push_str(&format!(
            "\n[[bgp.announce]]\nprefix = \"{OURS_V4}\"\ncommunities = [\"65101:100\"]\n\
             \n[[bgp.announce]]\nprefix = \"{OURS_V6}\"\ncommunities = [\"65101:200\"]\n"
        ));
    }
    text
}

/// One of the three daemons, with the operations the checks need.
enum Peer {
    Frr(Frr),
    Bird(Bird),
    GoBgp(GoBgp),
}

impl Peer {
    /// Starts the peer with Ferrule configured as a neighbor of AS `ferrule_asn`.
    fn start(kind: Kind, ns: &NetNs, dir: &std::path::Path, ferrule: IpAddr, ferrule_asn: u32) -> Result<Peer> {
        let neighbor =
            Neighbor::new("ferrule", ferrule, ferrule_asn).families(&[Family::Ipv4Unicast, Family::Ipv6Unicast]);
        let config = BgpConfig::new("192.0.2.2".parse()?, PEER_ASN).neighbor(neighbor);
        Ok(match kind {
            Kind::Frr => {
                let config = config.extra(&format!(
                    "router bgp {PEER_ASN}\n no bgp network import-check\n\
                     address-family ipv4 unicast\n  network {ALLOWED_V4}\n  network {DENIED_V4}\n exit-address-family\n\
                     address-family ipv6 unicast\n  network {ALLOWED_V6}\n  network {DENIED_V6}\n exit-address-family\n!\n"
                ));
                Peer::Frr(Frr::start(ns, dir, &config)?)
            }
            Kind::Bird => {
                let config = config.extra(&format!(
                    "protocol static routes4 {{ ipv4; route {ALLOWED_V4} blackhole; route {DENIED_V4} blackhole; }}\n\
                     protocol static routes6 {{ ipv6; route {ALLOWED_V6} blackhole; route {DENIED_V6} blackhole; }}\n"
                ));
                Peer::Bird(Bird::start(ns, dir, &config)?)
            }
            Kind::GoBgp => {
                let peer = Peer::GoBgp(GoBgp::start(ns, dir, &config)?);
                for prefix in [ALLOWED_V4, DENIED_V4, ALLOWED_V6, DENIED_V6] {
                    peer.gobgp_rib("add", prefix)?;
                }
                peer
            }
        })
    }

    fn bgp(&self) -> &dyn BgpPeer {
        match self {
            Peer::Frr(p) => p,
            Peer::Bird(p) => p,
            Peer::GoBgp(p) => p,
        }
    }

    fn gobgp_rib(&self, verb: &str, prefix: &str) -> Result<String> {
        let Peer::GoBgp(g) = self else { bail!("not GoBGP") };
        let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        g.cli(&["global", "rib", verb, prefix, "-a", family])
    }

    /// The peer's view of one prefix (its CLI text), empty when it does not have it.
    fn route(&self, prefix: &str) -> Result<String> {
        let v6 = prefix.contains(':');
        match self {
            Peer::Frr(f) => {
                let af = if v6 { "ipv6" } else { "ipv4" };
                let out = f.vtysh(&[&format!("show bgp {af} unicast {prefix}")])?;
                Ok(if out.contains("Network not in table") { String::new() } else { out })
            }
            Peer::Bird(b) => match b.birdc(&["show", "route", "for", prefix, "all"]) {
                Ok(out) => Ok(if out.contains("BGP.") { out } else { String::new() }),
                // birdc exits non-zero when the table has no route for the prefix.
                Err(e) if format!("{e:#}").contains("Network not found") => Ok(String::new()),
                Err(e) => Err(e),
            },
            Peer::GoBgp(g) => {
                let family = if v6 { "ipv6" } else { "ipv4" };
                let out = g.cli(&["global", "rib", "-a", family, prefix])?;
                Ok(if out.contains(prefix) { out } else { String::new() })
            }
        }
    }

    /// Stops announcing the allowed IPv4 prefix.
    fn withdraw_allowed_v4(&self) -> Result<()> {
        match self {
            Peer::Frr(f) => {
                f.vtysh(&[
                    "configure terminal",
                    &format!("router bgp {PEER_ASN}"),
                    "address-family ipv4 unicast",
                    &format!("no network {ALLOWED_V4}"),
                ])?;
            }
            // The static protocol holds both IPv4 routes; disabling it withdraws them.
            Peer::Bird(b) => {
                b.birdc(&["disable", "routes4"])?;
            }
            Peer::GoBgp(_) => {
                self.gobgp_rib("del", ALLOWED_V4)?;
            }
        }
        Ok(())
    }

    /// PID of the process holding the BGP session.
    fn bgp_pid(&mut self) -> u32 {
        match self {
            Peer::Frr(f) => f.daemons().iter().find(|d| d.name().contains("bgpd")).expect("bgpd runs").pid(),
            Peer::Bird(b) => b.daemon().pid(),
            Peer::GoBgp(g) => g.daemon().pid(),
        }
    }

    /// What the peer says about its last NOTIFICATION from `neighbor` (CLI detail and log).
    fn notification_report(&self, neighbor: IpAddr) -> String {
        let detail = match self {
            Peer::Frr(f) => f.vtysh(&[&format!("show bgp neighbors {neighbor}")]),
            Peer::Bird(b) => b.birdc(&["show", "protocols", "all", "ferrule"]),
            // GoBGP logs no code for a NOTIFICATION received before Established; its neighbor
            // state counts them, so the report says how many it received.
            Peer::GoBgp(g) => g.cli(&["neighbor", &neighbor.to_string(), "-j"]).map(|json| {
                let v: Value = serde_json::from_str(&json).unwrap_or_default();
                let n = &v["state"]["messages"]["received"]["notification"];
                let n = n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
                format!("{json}\nGoBGP notifications received: {n}")
            }),
        };
        format!("{}\n{}", detail.unwrap_or_default(), self.bgp().log_tail())
    }
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    cmd::poll_until(what, timeout, Duration::from_millis(250), &mut check)
}

fn ferrule_route(f: &Ferrule, prefix: &str) -> Result<Option<Value>> {
    let routes = f.show(&["bgp", "routes"])?;
    Ok(routes.as_array().context("routes is a list")?.iter().find(|r| r["prefix"] == prefix).cloned())
}

fn ferrule_neighbor(f: &Ferrule) -> Result<Value> {
    let summary = f.show(&["bgp", "summary"])?;
    summary.as_array().and_then(|a| a.first()).cloned().context("one neighbor in show bgp summary")
}

struct Scenario {
    _dir: TestDir,
    ferrule: Ferrule,
    peer: Peer,
    link: Link,
    _peer_ns: NetNs,
}

/// `peer_asn`: the AS Ferrule expects of the peer; `ferrule_asn`: the AS the peer expects of Ferrule.
fn setup(kind: Kind, transport: Transport, label: &str, peer_asn: u32, ferrule_asn: u32) -> Result<Scenario> {
    let dir = TestDir::new(label)?;
    let node = NetNs::new("bgpf")?;
    let peer_ns = NetNs::new("bgpp")?;
    net::veth(&node, "tor0", &peer_ns, "srv0")?;
    // Both families on the link: the session uses one, the other gives next hops for the
    // other family's routes.
    net::add_addr(&node, "tor0", "192.0.2.1/24")?;
    net::add_addr(&peer_ns, "srv0", "192.0.2.2/24")?;
    net::add_addr(&node, "tor0", "2001:db8:a::1/64")?;
    net::add_addr(&peer_ns, "srv0", "2001:db8:a::2/64")?;
    let link = addresses(transport);
    let name = format!("{label}{}", std::process::id());
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &ferrule_config(&name, link.peer, peer_asn, true))?;
    ferrule.start(&[])?;
    let peer = Peer::start(kind, &peer_ns, dir.path(), link.ferrule, ferrule_asn)?;
    Ok(Scenario { _dir: dir, ferrule, peer, link, _peer_ns: peer_ns })
}

fn interop(kind: Kind, transport: Transport, label: &str) -> Result<()> {
    let mut s = setup(kind, transport, label, PEER_ASN, FERRULE_ASN)?;
    let who = format!("{kind:?} over {transport:?}");

    // 1. Established on both sides.
    ferrule_tests::wait_established(s.peer.bgp(), s.link.ferrule, Duration::from_secs(30))?;
    wait_for("ferrule to see the session Established", Duration::from_secs(10), || {
        Ok(ferrule_neighbor(&s.ferrule)?["state"] == "Established")
    })
    .with_context(|| s.ferrule.log_tail())?;
    println!("[{who}] 1 session: expected Established on both sides, saw Established");

    // 2. Our announcements with their communities.
    for (prefix, community) in [(OURS_V4, "65101:100"), (OURS_V6, "65101:200")] {
        let mut seen = String::new();
        wait_for(&format!("{prefix} on {kind:?}"), Duration::from_secs(20), || {
            seen = s.peer.route(prefix)?;
            Ok(!seen.is_empty())
        })
        .with_context(|| format!("{}\nferrule log:\n{}", s.peer.bgp().sessions_summary(), s.ferrule.log_tail()))?;
        // BIRD prints communities as (65101,100).
        let bird_form = community.replace(':', ",");
        println!(
            "[{who}] 2 {prefix}: expected on the peer with community {community}, saw it; community present: {}",
            seen.contains(community) || seen.contains(&bird_form)
        );
        assert!(seen.contains(community) || seen.contains(&bird_form), "[{who}] {prefix} lacks {community}:\n{seen}");
    }

    // 3. Import policy: allowed prefixes in, denied ones out.
    for prefix in [ALLOWED_V4, ALLOWED_V6] {
        wait_for(&format!("{prefix} in ferrule"), Duration::from_secs(20), || {
            Ok(ferrule_route(&s.ferrule, prefix)?.is_some())
        })
        .with_context(|| format!("routes: {:?}", s.ferrule.show(&["bgp", "routes"])))?;
        let route = ferrule_route(&s.ferrule, prefix)?.unwrap();
        let from = &route["paths"][0]["from"];
        println!("[{who}] 3 {prefix}: expected in ferrule from {}, saw from {from}", s.link.peer);
        assert_eq!(from.as_str(), Some(s.link.peer.to_string().as_str()));
    }
    let neighbor = ferrule_neighbor(&s.ferrule)?;
    for prefix in [DENIED_V4, DENIED_V6] {
        let present = ferrule_route(&s.ferrule, prefix)?.is_some();
        println!("[{who}] 3 {prefix}: expected absent (import policy), saw present={present}");
        assert!(!present);
    }
    println!(
        "[{who}] 3 counters: expected rejected >= 2, saw received {} accepted {} rejected {}",
        neighbor["received"], neighbor["accepted"], neighbor["rejected"]
    );
    assert!(neighbor["rejected"].as_u64().unwrap_or(0) >= 2, "{neighbor}");

    // 4. Withdraws, both ways.
    let out = s.ferrule.apply(&ferrule_config(&s.ferrule.name, s.link.peer, PEER_ASN, false))?;
    assert!(out.status.success(), "{}", ferrule_tests::ferrule::text(&out.stderr));
    for prefix in [OURS_V4, OURS_V6] {
        wait_for(&format!("{prefix} withdrawn from {kind:?}"), Duration::from_secs(20), || {
            Ok(s.peer.route(prefix)?.is_empty())
        })?;
        println!("[{who}] 4 {prefix}: expected gone from the peer after our withdraw, saw gone");
    }
    s.peer.withdraw_allowed_v4()?;
    wait_for(&format!("{ALLOWED_V4} withdrawn in ferrule"), Duration::from_secs(20), || {
        Ok(ferrule_route(&s.ferrule, ALLOWED_V4)?.is_none())
    })?;
    println!("[{who}] 4 {ALLOWED_V4}: expected gone from ferrule after the peer's withdraw, saw gone");

    // 5. A silent peer: SIGSTOP keeps its TCP connection open, so only the hold timer can tell.
    let pid = Pid::from_raw(s.peer.bgp_pid() as i32);
    let stopped = Instant::now();
    kill(pid, Signal::SIGSTOP)?;
    let result = wait_for("ferrule to drop the silent peer", Duration::from_secs(u64::from(HOLD) + 5), || {
        Ok(ferrule_neighbor(&s.ferrule)?["state"] != "Established")
    });
    let detected = stopped.elapsed();
    kill(pid, Signal::SIGCONT)?;
    result?;
    let error = ferrule_neighbor(&s.ferrule)?["last_error"].clone();
    println!(
        "[{who}] 5 silent peer: expected hold timer expiry within {HOLD}s (+1s), saw {error} after {detected:.1?}"
    );
    assert!(error.as_str().unwrap_or("").contains("hold timer expired"), "{error}");
    assert!(detected <= Duration::from_secs(u64::from(HOLD) + 1), "took {detected:?}");
    Ok(())
}

fn wrong_peer_as(kind: Kind, transport: Transport, label: &str) -> Result<()> {
    let s = setup(kind, transport, label, PEER_ASN + 99, FERRULE_ASN)?;
    let who = format!("{kind:?} over {transport:?}");
    let mut ours = Value::Null;
    wait_for("ferrule to refuse the peer's OPEN", Duration::from_secs(30), || {
        ours = ferrule_neighbor(&s.ferrule)?["last_error"].clone();
        Ok(ours.as_str().unwrap_or("").contains("Bad Peer AS"))
    })
    .with_context(|| format!("ferrule log:\n{}", s.ferrule.log_tail()))?;
    println!("[{who}] 6 ferrule: expected to send Bad Peer AS, saw {ours}");
    let mut theirs = String::new();
    wait_for(&format!("{kind:?} to report the NOTIFICATION"), Duration::from_secs(15), || {
        theirs = s.peer.notification_report(s.link.ferrule).to_lowercase();
        Ok(match kind {
            // FRR: "Notification received (OPEN Message Error/Bad Peer AS)"; BIRD: "Received: Bad peer AS".
            Kind::Frr | Kind::Bird => theirs.contains("bad peer as"),
            Kind::GoBgp => theirs.lines().any(|l| {
                l.strip_prefix("gobgp notifications received: ")
                    .is_some_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
            }),
        })
    })
    .with_context(|| theirs.clone())?;
    let seen = theirs.lines().find(|l| l.contains("bad peer as") || l.contains("notifications received")).unwrap_or("");
    println!("[{who}] 6 peer: expected to receive Bad Peer AS, saw: {}", seen.trim());
    Ok(())
}

/// The other direction: the peer expects another AS of us, refuses our OPEN with Bad Peer AS,
/// and `show bgp summary` says so.
fn peer_refuses_our_as(kind: Kind, transport: Transport, label: &str) -> Result<()> {
    let s = setup(kind, transport, label, PEER_ASN, FERRULE_ASN + 1)?;
    let who = format!("{kind:?} over {transport:?}");
    let mut ours = Value::Null;
    wait_for("ferrule to receive Bad Peer AS", Duration::from_secs(30), || {
        ours = ferrule_neighbor(&s.ferrule)?["last_error"].clone();
        Ok(ours.as_str().unwrap_or("").contains("received NOTIFICATION OPEN Message Error: Bad Peer AS"))
    })
    .with_context(|| format!("ferrule log:\n{}\npeer:\n{}", s.ferrule.log_tail(), s.peer.bgp().log_tail()))?;
    println!("[{who}] 7 ferrule: expected to receive Bad Peer AS from the peer, saw {ours}");
    Ok(())
}

#[test]
fn frr_expecting_another_as_sends_bad_peer_as_we_report() {
    if !ferrule_tests::privileged() {
        return;
    }
    peer_refuses_our_as(Kind::Frr, Transport::V4, "rfr").unwrap();
}

#[test]
fn bird_expecting_another_as_sends_bad_peer_as_we_report() {
    if !ferrule_tests::privileged() {
        return;
    }
    peer_refuses_our_as(Kind::Bird, Transport::V6, "rbi").unwrap();
}

macro_rules! interop_tests {
    ($($name:ident: $kind:expr, $transport:expr, $label:literal;)*) => {$(
        #[test]
        fn $name() {
            if !ferrule_tests::privileged() {
                return;
            }
            interop($kind, $transport, $label).unwrap();
        }
    )*};
}

interop_tests! {
    frr_over_ipv4_exchanges_routes_and_detects_silence: Kind::Frr, Transport::V4, "ifr4";
    frr_over_ipv6_exchanges_routes_and_detects_silence: Kind::Frr, Transport::V6, "ifr6";
    bird_over_ipv4_exchanges_routes_and_detects_silence: Kind::Bird, Transport::V4, "ibi4";
    bird_over_ipv6_exchanges_routes_and_detects_silence: Kind::Bird, Transport::V6, "ibi6";
    gobgp_over_ipv4_exchanges_routes_and_detects_silence: Kind::GoBgp, Transport::V4, "igo4";
    gobgp_over_ipv6_exchanges_routes_and_detects_silence: Kind::GoBgp, Transport::V6, "igo6";
}

macro_rules! wrong_as_tests {
    ($($name:ident: $kind:expr, $transport:expr, $label:literal;)*) => {$(
        #[test]
        fn $name() {
            if !ferrule_tests::privileged() {
                return;
            }
            wrong_peer_as($kind, $transport, $label).unwrap();
        }
    )*};
}

wrong_as_tests! {
    frr_with_wrong_peer_as_gets_bad_peer_as: Kind::Frr, Transport::V6, "wfr";
    bird_with_wrong_peer_as_gets_bad_peer_as: Kind::Bird, Transport::V4, "wbi";
    gobgp_with_wrong_peer_as_gets_bad_peer_as: Kind::GoBgp, Transport::V6, "wgo";
}
