//! Kernel routes from BGP, end to end: a Ferrule node with two ToRs (FRR over IPv4 transport,
//! BIRD over IPv6 transport with RFC 8950 next hops for IPv4), both announcing the default
//! routes 0.0.0.0/0 and ::/0. Each check prints what it expected and what it saw in the node's
//! kernel (`ip route show default proto 233`):
//!  1. both defaults are ECMP routes over the two ToRs, with Ferrule's protocol id; the IPv4 one
//!     mixes an IPv4 gateway and an IPv6 one (RTA_VIA);
//!  2. level-triggered: a route deleted by hand comes back, a stale one of ours is removed;
//!  3. BIRD withdraws: one next hop remains, and traffic flows through it (bounded pings to an
//!     address only the FRR ToR holds);
//!  4. FRR goes away too: no default route of ours is left; BIRD announces again: a single
//!     next hop through it;
//!  5. SIGTERM: Ferrule removes every route it installed.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::net::{self, RTPROT_FERRULE};
use ferrule_tests::{cmd, Bird, Ferrule, Frr, NetNs, TestDir};

const FERRULE_ASN: u32 = 65101;
const TOR1_ASN: u32 = 65001;
const TOR2_ASN: u32 = 65002;

/// node:tor1 <-> tor1:srv (FRR, session over IPv4).
const NODE_TOR1_V4: &str = "192.0.2.1";
const TOR1_V4: &str = "192.0.2.2";
const TOR1_V6: &str = "2001:db8:a::2";
/// node:tor2 <-> tor2:srv (BIRD, session over IPv6).
const TOR2_V6: &str = "2001:db8:b::2";
const NODE_TOR2_V6: &str = "2001:db8:b::1";
/// Addresses only the FRR ToR holds (on its loopback), reached through the learned default.
const TOR1_SERVICE_V4: &str = "203.0.113.1";
const TOR1_SERVICE_V6: &str = "2001:db8:ff::1";

fn ferrule_config(name: &str) -> String {
    format!(
        "[node]\nname = \"{name}\"\nasn = {FERRULE_ASN}\nrouter_id = \"{NODE_TOR1_V4}\"\n\n\
         [[bgp.peers]]\naddress = \"{TOR1_V4}\"\nasn = {TOR1_ASN}\nhold_time = 3\n\
         import = [\"0.0.0.0/0\", \"::/0\"]\n\n\
         [[bgp.peers]]\naddress = \"{TOR2_V6}\"\nasn = {TOR2_ASN}\nhold_time = 3\n\
         import = [\"0.0.0.0/0\", \"::/0\"]\n"
    )
}

fn start_frr(ns: &NetNs, dir: &std::path::Path) -> Result<Frr> {
    let neighbor = Neighbor::new("ferrule", NODE_TOR1_V4.parse()?, FERRULE_ASN)
        .families(&[Family::Ipv4Unicast, Family::Ipv6Unicast]);
    let config = BgpConfig::new(TOR1_V4.parse()?, TOR1_ASN).neighbor(neighbor).extra(&format!(
        "router bgp {TOR1_ASN}\n no bgp network import-check\n\
         address-family ipv4 unicast\n  network 0.0.0.0/0\n exit-address-family\n\
         address-family ipv6 unicast\n  network ::/0\n exit-address-family\n!\n"
    ));
    Frr::start(ns, dir, &config)
}

fn start_bird(ns: &NetNs, dir: &std::path::Path) -> Result<Bird> {
    let neighbor = Neighbor::new("ferrule", NODE_TOR2_V6.parse()?, FERRULE_ASN)
        .families(&[Family::Ipv4Unicast, Family::Ipv6Unicast]);
    // ORIGIN IGP like FRR's `network` routes, so both paths tie and form one ECMP set.
    let config = BgpConfig::new("192.0.2.6".parse()?, TOR2_ASN).neighbor(neighbor).extra(
        "protocol static defaults4 { ipv4; route 0.0.0.0/0 blackhole { bgp_origin = ORIGIN_IGP; }; }\n\
         protocol static defaults6 { ipv6; route ::/0 blackhole { bgp_origin = ORIGIN_IGP; }; }\n",
    );
    Bird::start(ns, dir, &config)
}

/// Waits until the node's default route of `family` has exactly `expected` next hops.
fn expect_default(
    node: &NetNs,
    family: &str,
    expected: &[&str],
    step: &str,
    context: &dyn Fn() -> String,
) -> Result<()> {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let mut seen = (Vec::new(), String::new());
    let result = cmd::poll_until(
        &format!("{step}: default route {family} proto {RTPROT_FERRULE} via {expected:?}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            seen = net::ferrule_default_route(node, family)?;
            Ok(seen.0 == expected)
        },
    );
    println!(
        "{step} {family} default proto {RTPROT_FERRULE}: expected {expected:?}, saw {:?} ({})",
        seen.0,
        seen.1.trim()
    );
    result.with_context(context)
}

#[test]
fn bgp_defaults_become_ecmp_kernel_routes_that_follow_withdraws_and_go_on_shutdown() {
    if !ferrule_tests::privileged() {
        return;
    }
    run().unwrap();
}

fn run() -> Result<()> {
    let dir = TestDir::new("kroutes")?;
    let node = NetNs::new("krnode")?;
    let tor1 = NetNs::new("krtor1")?;
    let tor2 = NetNs::new("krtor2")?;
    net::veth(&node, "tor1", &tor1, "srv")?;
    net::veth(&node, "tor2", &tor2, "srv")?;
    net::add_addr(&node, "tor1", &format!("{NODE_TOR1_V4}/30"))?;
    net::add_addr(&tor1, "srv", &format!("{TOR1_V4}/30"))?;
    net::add_addr(&node, "tor1", "2001:db8:a::1/64")?;
    net::add_addr(&tor1, "srv", &format!("{TOR1_V6}/64"))?;
    net::add_addr(&node, "tor2", "192.0.2.5/30")?;
    net::add_addr(&tor2, "srv", "192.0.2.6/30")?;
    net::add_addr(&node, "tor2", &format!("{NODE_TOR2_V6}/64"))?;
    net::add_addr(&tor2, "srv", &format!("{TOR2_V6}/64"))?;
    net::add_addr(&tor1, "lo", &format!("{TOR1_SERVICE_V4}/32"))?;
    net::add_addr(&tor1, "lo", &format!("{TOR1_SERVICE_V6}/128"))?;

    let name = format!("kr{}", std::process::id());
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &ferrule_config(&name))?;
    ferrule.start(&[])?;
    let mut frr = Some(start_frr(&tor1, dir.path())?);
    let bird = start_bird(&tor2, dir.path())?;
    ferrule_tests::wait_established(frr.as_ref().unwrap(), NODE_TOR1_V4.parse()?, Duration::from_secs(30))?;
    ferrule_tests::wait_established(&bird, NODE_TOR2_V6.parse()?, Duration::from_secs(30))?;
    println!("0 sessions: expected Established with FRR and BIRD, saw both Established");

    let context = || {
        format!(
            "ferrule bgp routes: {:?}\nferrule log:\n{}",
            ferrule.show(&["bgp", "routes"]).map(|v| v.to_string()),
            ferrule.log_tail()
        )
    };

    // 1. ECMP over both ToRs. BIRD's IPv4 default has an IPv6 next hop (RFC 8950).
    let b4 = [format!("{TOR1_V4}@tor1"), format!("{TOR2_V6}@tor2")];
    let b6 = [format!("{TOR1_V6}@tor1"), format!("{TOR2_V6}@tor2")];
    expect_default(&node, "-4", &[&b4[0], &b4[1]], "1 ecmp", &context)?;
    expect_default(&node, "-6", &[&b6[0], &b6[1]], "1 ecmp", &context)?;

    // 2. Level-triggered repair: the installer re-reads the kernel every 5 s.
    node.run("ip", ["-4", "route", "del", "default", "proto", RTPROT_FERRULE])?;
    node.run("ip", ["-4", "route", "add", "198.51.100.0/24", "via", TOR1_V4, "proto", RTPROT_FERRULE, "metric", "20"])?;
    println!("2 repair: deleted the IPv4 default by hand and added a stale 198.51.100.0/24 proto {RTPROT_FERRULE}");
    expect_default(&node, "-4", &[&b4[0], &b4[1]], "2 repair", &context)?;
    let mut stale = String::new();
    cmd::poll_until("the stale route to go", Duration::from_secs(15), Duration::from_millis(250), || {
        stale = node.run("ip", ["-4", "route", "show", "198.51.100.0/24", "proto", RTPROT_FERRULE])?;
        Ok(stale.trim().is_empty())
    })
    .with_context(context)?;
    println!("2 repair: expected the stale 198.51.100.0/24 removed, saw {:?}", stale.trim());

    // 3. BIRD withdraws both defaults: FRR's next hop alone, and traffic goes through it.
    bird.birdc(&["disable", "defaults4"])?;
    bird.birdc(&["disable", "defaults6"])?;
    expect_default(&node, "-4", &[&b4[0]], "3 withdraw", &context)?;
    expect_default(&node, "-6", &[&b6[0]], "3 withdraw", &context)?;
    for target in [TOR1_SERVICE_V4, TOR1_SERVICE_V6] {
        net::ping(&node, target.parse()?, 3).with_context(context)?;
        println!("3 traffic: expected replies from {target} through the learned default, saw replies");
    }

    // 4. FRR goes away too (its bgpd sends a Cease): no default of ours. Then BIRD again.
    drop(frr.take());
    expect_default(&node, "-4", &[], "4 both gone", &context)?;
    expect_default(&node, "-6", &[], "4 both gone", &context)?;
    bird.birdc(&["enable", "defaults4"])?;
    bird.birdc(&["enable", "defaults6"])?;
    expect_default(&node, "-4", &[&b4[1]], "4 bird again", &context)?;
    expect_default(&node, "-6", &[&b6[1]], "4 bird again", &context)?;

    // 5. SIGTERM: nothing with our protocol id remains, in either family.
    ferrule.stop()?;
    for family in ["-4", "-6"] {
        let left = node.run("ip", [family, "route", "show", "proto", RTPROT_FERRULE])?;
        println!("5 shutdown {family}: expected no route with proto {RTPROT_FERRULE}, saw {:?}", left.trim());
        ensure!(left.trim().is_empty(), "routes left after SIGTERM:\n{left}");
    }
    Ok(())
}
