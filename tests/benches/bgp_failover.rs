//! Failure detection and reroute on the fabric, and what a graceful restart of `ferrule` costs.
//!
//! A node peers with two FRR ToRs over IPv6 (hold time 3 s, the RFC minimum, so the hold-timer
//! baseline stays short); both announce `::/0`, so the node's kernel has a two-next-hop default
//! route (proto 233). Then, per scenario, ToR 1 fails silently: nftables on the ToR drops every
//! packet to and from the node, while the link stays up (a hung ToR: nothing tells the node but
//! missing packets). Measured: time from the cut to the node's kernel default route losing ToR 1,
//! polled every 5 ms. Scenarios, side by side in the same run:
//!   - BFD 100 ms x 3 and 50 ms x 3 (FRR's bfdd on the ToRs, `bfd = {…}` on the node),
//!   - no BFD (the hold timer), the baseline the ratios are taken against.
//!
//! Then graceful restart: both sides with graceful restart, a ping every 10 ms from the node to
//! an address both ToRs hold, `ferrule` stopped with SIGTERM and started again with `--resume`:
//! packets lost, and how often ToR 1's kernel lost the node's prefix (sampled every 20 ms).
//!
//! As root: `cargo build --release -p ferrule && FERRULE_BIN=target/release/ferrule
//! cargo bench -p ferrule-tests --bench bgp_failover` (`FAILOVER_ROUNDS`, default 3).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::frr::render_bgpd_config;
use ferrule_tests::{net, Ferrule, Frr, NetNs, TestDir};

const NODE_ASN: u32 = 65101;
const NODE_PREFIX: &str = "2001:db8:100::/64";
/// Held by both ToRs on their loopback, reached through the learned default.
const FAR: &str = "2001:db8:ff::1";

struct Tor {
    ns: NetNs,
    /// The ToR's end of its link to the node.
    ifname: &'static str,
    address: &'static str,
    node_address: &'static str,
    asn: u32,
    frr: Option<Frr>,
}

fn main() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let rounds: usize = std::env::var("FAILOVER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let scenarios: [(&str, Option<u32>); 3] =
        [("BFD 100 ms x 3", Some(100)), ("BFD 50 ms x 3", Some(50)), ("hold timer 3 s", None)];
    let mut results = Vec::new();
    for (name, bfd) in scenarios {
        let times = failover(bfd, rounds).with_context(|| format!("scenario {name}"))?;
        results.push((name, bfd, times));
    }
    let baseline = median(&results.last().expect("three scenarios").2);
    println!("\nFailure detection and reroute (silent ToR failure), {rounds} rounds each:");
    println!("| scenario | budget | median | min | max | vs hold timer |");
    println!("|---|---|---|---|---|---|");
    for (name, bfd, times) in &results {
        let budget = bfd.map_or("3000 ms (hold)".to_string(), |i| format!("{} ms (3 x {i})", 3 * i));
        let m = median(times);
        println!(
            "| {name} | {budget} | {} ms | {} ms | {} ms | {:.3}x |",
            m.as_millis(),
            times.iter().min().unwrap().as_millis(),
            times.iter().max().unwrap().as_millis(),
            m.as_secs_f64() / baseline.as_secs_f64()
        );
    }

    let (lost, sent, gaps, samples) = graceful_restart()?;
    println!("\nGraceful restart of ferrule (SIGTERM, then --resume), ping every 10 ms:");
    println!("| packets sent | lost | ToR samples without the node's prefix | samples |");
    println!("|---|---|---|---|");
    println!("| {sent} | {lost} | {gaps} | {samples} |");
    Ok(())
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Two ToRs, one node; returns the reroute time of each round.
fn failover(bfd_ms: Option<u32>, rounds: usize) -> Result<Vec<Duration>> {
    let (dir, node, tors) = fabric("fo", bfd_ms, false)?;
    let mut ferrule = Ferrule::new(&node, dir.path(), "fo", &node_config(&tors, bfd_ms, false))?;
    ferrule.start(&[])?;
    let mut times = Vec::new();
    for round in 0..rounds {
        wait_next_hops(&node, 2, Duration::from_secs(60)).with_context(|| ferrule.log_tail())?;
        // Let BFD reach its fast timers (it starts at 1 s and moves down after Up).
        thread::sleep(Duration::from_secs(2));
        let cut_at = Instant::now();
        cut(&tors[0].ns, tors[0].ifname, true)?;
        let seen = wait_next_hops(&node, 1, Duration::from_secs(20)).with_context(|| ferrule.log_tail())?;
        let took = seen.duration_since(cut_at);
        println!("  {:?} round {round}: ToR 1 gone from the kernel route after {} ms", bfd_ms, took.as_millis());
        times.push(took);
        cut(&tors[0].ns, tors[0].ifname, false)?;
    }
    Ok(times)
}

/// A node with two FRR ToRs (`prefix` names the namespaces), each holding [`FAR`].
fn fabric(prefix: &str, bfd_ms: Option<u32>, graceful_restart: bool) -> Result<(TestDir, NetNs, [Tor; 2])> {
    let dir = TestDir::new(&format!("{prefix}-bench"))?;
    let node = NetNs::new(&format!("{prefix}-n"))?;
    let tor = |n: u32, address: &'static str, node_address: &'static str| -> Result<Tor> {
        Ok(Tor {
            ns: NetNs::new(&format!("{prefix}-t{n}"))?,
            ifname: if n == 1 { "t1n" } else { "t2n" },
            address,
            node_address,
            asn: 65000 + n,
            frr: None,
        })
    };
    let mut tors = [tor(1, "2001:db8:a::2", "2001:db8:a::1")?, tor(2, "2001:db8:b::2", "2001:db8:b::1")?];
    for (tor, node_if) in tors.iter_mut().zip(["n1", "n2"]) {
        net::veth(&node, node_if, &tor.ns, tor.ifname)?;
        net::add_addr(&node, node_if, &format!("{}/64", tor.node_address))?;
        net::add_addr(&tor.ns, tor.ifname, &format!("{}/64", tor.address))?;
        net::add_addr(&tor.ns, "lo", &format!("{FAR}/128"))?;
        net::wait_dad(&node, node_if, Duration::from_secs(5))?;
        net::wait_dad(&tor.ns, tor.ifname, Duration::from_secs(5))?;
        tor.frr = Some(start_tor(tor, &dir.path().join(tor.ifname), bfd_ms, graceful_restart)?);
    }
    Ok((dir, node, tors))
}

/// Drops (or stops dropping) everything to and from the node on the ToR's interface.
fn cut(ns: &NetNs, ifname: &str, on: bool) -> Result<()> {
    if on {
        let rules = format!(
            "table inet cut {{ chain i {{ type filter hook input priority -10; iifname \"{ifname}\" drop; }}; \
             chain o {{ type filter hook output priority -10; oifname \"{ifname}\" drop; }}; }}"
        );
        ns.run("nft", [rules.as_str()])?;
    } else {
        ns.run("nft", ["delete", "table", "inet", "cut"])?;
    }
    Ok(())
}

/// Waits until the node's `::/0` (proto 233) has `n` next hops; returns when it was seen.
fn wait_next_hops(node: &NetNs, n: usize, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let (hops, raw) = net::ferrule_default_route(node, "-6")?;
        if hops.len() == n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the node's default route did not reach {n} next hops within {timeout:?}: {raw}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn start_tor(tor: &Tor, dir: &Path, bfd_ms: Option<u32>, graceful_restart: bool) -> Result<Frr> {
    std::fs::create_dir_all(dir)?;
    let neighbor = Neighbor::new("node", tor.node_address.parse()?, NODE_ASN).families(&[Family::Ipv6Unicast]);
    let mut extra =
        format!("router bgp {}\n no bgp network import-check\n neighbor {} timers 1 3\n", tor.asn, tor.node_address);
    if bfd_ms.is_some() {
        extra.push_str(&format!(" neighbor {} bfd\n", tor.node_address));
    }
    if graceful_restart {
        extra.push_str(" bgp graceful-restart\n");
    }
    extra.push_str(" address-family ipv6 unicast\n  network ::/0\n exit-address-family\n!\n");
    let router_id = if tor.asn == 65001 { "192.0.2.2" } else { "192.0.2.6" };
    let config = BgpConfig::new(router_id.parse()?, tor.asn).neighbor(neighbor).extra(&extra);
    let bgpd = render_bgpd_config(&format!("tor{}", tor.asn), &config);
    let mut daemons = vec![("bgpd", bgpd)];
    if let Some(ms) = bfd_ms {
        daemons.push((
            "bfdd",
            format!(
                "bfd\n peer {} interface {}\n  detect-multiplier 3\n  receive-interval {ms}\n  transmit-interval {ms}\n  no shutdown\n !\n!\n",
                tor.node_address, tor.ifname
            ),
        ));
    }
    let daemons: Vec<(&str, &str)> = daemons.iter().map(|(n, c)| (*n, c.as_str())).collect();
    Frr::start_raw(&tor.ns, dir, &daemons)
}

fn node_config(tors: &[Tor], bfd_ms: Option<u32>, graceful_restart: bool) -> String {
    let mut text = format!(
        "[node]\nname = \"fo\"\nasn = {NODE_ASN}\nrouter_id = \"192.0.2.1\"\n\n\
         [[bgp.announce]]\nprefix = \"{NODE_PREFIX}\"\n"
    );
    for tor in tors {
        text.push_str(&format!(
            "\n[[bgp.peers]]\naddress = \"{}\"\nasn = {}\nhold_time = 3\nimport = [\"::/0\"]\n",
            tor.address, tor.asn
        ));
        if let Some(ms) = bfd_ms {
            text.push_str(&format!("bfd = {{ interval_ms = {ms}, multiplier = 3 }}\n"));
        }
        if graceful_restart {
            text.push_str("graceful_restart = { restart_time_s = 60 }\n");
        }
    }
    text
}

/// Restarts ferrule under a 10 ms ping; returns (lost, sent, ToR samples without our prefix,
/// samples).
fn graceful_restart() -> Result<(u64, u64, u64, u64)> {
    let (dir, node, tors) = fabric("gr", None, true)?;
    // The node's prefix lives on its loopback, so the ToRs' replies come back to it.
    net::add_addr(&node, "lo", "2001:db8:100::1/128")?;
    let mut ferrule = Ferrule::new(&node, dir.path(), "gr", &node_config(&tors, None, true))?;
    ferrule.start(&[])?;
    wait_next_hops(&node, 2, Duration::from_secs(60)).with_context(|| ferrule.log_tail())?;
    let tor1 = tors[0].ns.clone();
    let present = move || -> bool {
        tor1.run("ip", ["-6", "route", "show", NODE_PREFIX]).map(|out| !out.trim().is_empty()).unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !present() {
        ensure!(Instant::now() < deadline, "ToR 1 never learned {NODE_PREFIX}");
        thread::sleep(Duration::from_millis(50));
    }

    let ping = {
        let node = node.clone();
        thread::spawn(move || {
            // Exits non-zero when a packet was lost: read its summary either way.
            node.exec("ping", ["-6", "-i", "0.01", "-c", "600", "-W", "1", "-I", "2001:db8:100::1", FAR])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })
    };
    let sampler = {
        let stop_at = Instant::now() + Duration::from_secs(6);
        thread::spawn(move || {
            let (mut gaps, mut samples) = (0, 0);
            while Instant::now() < stop_at {
                samples += 1;
                if !present() {
                    gaps += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            (gaps, samples)
        })
    };
    thread::sleep(Duration::from_secs(1));
    ferrule.stop()?;
    ferrule.start(&["--resume"])?;
    let out = ping.join().expect("ping thread").context("ping")?;
    let (gaps, samples) = sampler.join().expect("sampler thread");
    let stats = out.lines().find(|l| l.contains("packets transmitted")).context("ping summary")?;
    let numbers: Vec<u64> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    ensure!(numbers.len() >= 2, "ping summary: {stats}");
    let (sent, received) = (numbers[0], numbers[1]);
    Ok((sent - received, sent, gaps, samples))
}
