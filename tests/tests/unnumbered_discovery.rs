//! Neighbour discovery for unnumbered BGP against real routers. Each scenario joins a node
//! namespace and a ToR namespace with a veth that has **only IPv6 link-local addresses** (no
//! global IPv6, no IPv4), runs `ferrule_bgp::nd::Discovery` on the node side with
//! `accept_ra = 0` (discovery must not need the kernel to process RAs), and checks, printing
//! what it expected and what it saw:
//!  0. before discovery runs, FRR's bgpd knows no address for its `neighbor srv0 interface`;
//!  1. FRR (`neighbor srv0 interface remote-as external`, RAs every second): we learn FRR's
//!     link-local address and MAC;
//!  2. FRR learns ours from our RAs: its bgpd connects from its link-local address to ours on
//!     port 179, where a plain TCP listener accepts it, and names our address as the neighbor's;
//!  3. our RAs (router lifetime 0) gave the ToR's kernel, which accepts RAs, no default route;
//!  4. BIRD 2 `protocol radv`: we learn BIRD's link-local address;
//!  5. an interface with IPv6 disabled, or no such interface, is refused with an error that names
//!     it and the fix;
//!  6. two ToRs that both use `fe80::1`, each on its own link, are two peers of the node's
//!     speaker: both sessions come up and each ToR's route is installed through its own link;
//!  7. a running discovery notices its interface's MAC changed, or the interface deleted and
//!     created again under the same name, so that the daemon starts it over.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ferrule_bgp::driver::{NeighborSummary, PeerConfig, RouteQuery, Speaker, SpeakerConfig};
use ferrule_bgp::nd::{Discovery, Mac, Neighbor};
use ferrule_bgp::policy::ImportPolicy;
use ferrule_bgp::rib::LocalRoute;
use ferrule_bgp::wire::Prefix;
use ferrule_tests::{cmd, in_netns, net, Bird, Frr, NetNs, TestDir};

/// The node's side of the link (facing the ToR) and the ToR's side (facing the server).
const NODE_IF: &str = "tor0";
const TOR_IF: &str = "srv0";
const RA_INTERVAL: Duration = Duration::from_secs(1);
/// FRR answers our initial Router Solicitation at once; BIRD within its RA interval (4 s).
const LEARN_TIMEOUT: Duration = Duration::from_secs(20);
/// bgpd connects as soon as zebra reports the neighbour; 30 s leaves room for one retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

struct Link {
    dir: TestDir,
    node: NetNs,
    tor: NetNs,
    /// The ToR's link-local address, as `ip -6 addr` shows it in its namespace.
    tor_link_local: Ipv6Addr,
    tor_mac: Mac,
    /// `tor0`'s index in the node namespace: the scope of the ToR's link-local address there.
    node_ifindex: u32,
}

/// Two namespaces and a veth with link-local addresses only, checked rather than assumed.
fn link_local_only(label: &str) -> Result<Link> {
    let dir = TestDir::new(label)?;
    let node = NetNs::new("ndnode")?;
    let tor = NetNs::new("ndtor")?;
    net::veth(&node, NODE_IF, &tor, TOR_IF)?;
    net::sysctl(&node, &format!("net.ipv6.conf.{NODE_IF}.accept_ra"), "0")?;
    for (ns, ifname) in [(&node, NODE_IF), (&tor, TOR_IF)] {
        cmd::poll_until(
            &format!("a link-local address on {}:{ifname}", ns.name()),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || Ok(net::link_local(ns, ifname).is_ok()),
        )?;
        let global = ns.run("ip", ["-6", "-o", "addr", "show", "dev", ifname, "scope", "global"])?;
        let ipv4 = ns.run("ip", ["-4", "-o", "addr", "show", "dev", ifname])?;
        if !global.trim().is_empty() || !ipv4.trim().is_empty() {
            bail!("{}:{ifname} must have link-local addresses only, has:\n{global}{ipv4}", ns.name());
        }
    }
    let IpAddr::V6(tor_link_local) = net::link_local(&tor, TOR_IF)? else { bail!("link-local is not IPv6") };
    let tor_mac = mac_of(&tor, TOR_IF)?;
    let node_ifindex = ifindex_of(&node, NODE_IF)?;
    println!(
        "[link] {}:{NODE_IF} (ifindex {node_ifindex}) <-> {}:{TOR_IF} {tor_link_local} {tor_mac}: \
         no global IPv6, no IPv4",
        node.name(),
        tor.name()
    );
    Ok(Link { dir, node, tor, tor_link_local, tor_mac, node_ifindex })
}

/// `link/ether 00:11:…` from `ip -o link show dev IF`.
fn mac_of(ns: &NetNs, ifname: &str) -> Result<Mac> {
    let out = ns.run("ip", ["-o", "link", "show", "dev", ifname])?;
    let text = out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).context("no link/ether")?;
    let mut mac = [0u8; 6];
    let octets: Vec<&str> = text.split(':').collect();
    if octets.len() != 6 {
        bail!("bad MAC {text} in: {out}");
    }
    for (byte, octet) in mac.iter_mut().zip(octets) {
        *byte = u8::from_str_radix(octet, 16).with_context(|| format!("bad MAC {text}"))?;
    }
    Ok(Mac(mac))
}

/// The `N` of `N: IF@…:` from `ip -o link show dev IF`.
fn ifindex_of(ns: &NetNs, ifname: &str) -> Result<u32> {
    let out = ns.run("ip", ["-o", "link", "show", "dev", ifname])?;
    out.split(':').next().and_then(|n| n.trim().parse().ok()).with_context(|| format!("no ifindex in: {out}"))
}

/// What the node saw: the peer discovery published and, when asked for, the first TCP
/// connection to port 179 (remote and local address).
struct Seen {
    neighbor: Neighbor,
    learned_after: Duration,
    connection: Option<(SocketAddr, SocketAddr, Duration)>,
}

/// Runs discovery on `tor0` inside the node namespace (a thread there, with its own tokio
/// runtime) until it has learned a peer and, with `accept_bgp`, a connection to [::]:179 came in.
/// The discovery handle lives until then: our RAs are how the peer finds us.
fn discover(node: &NetNs, accept_bgp: bool) -> Result<Seen> {
    in_netns(node, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let listener = match accept_bgp {
                true => Some(tokio::net::TcpListener::bind("[::]:179").await.context("listening on [::]:179")?),
                false => None,
            };
            let started = Instant::now();
            let discovery = Discovery::spawn(NODE_IF, RA_INTERVAL)?;
            let mut peer = discovery.peer();
            let neighbor = tokio::time::timeout(LEARN_TIMEOUT, peer.wait_for(Option::is_some))
                .await
                .with_context(|| format!("no Router Advertisement learned on {NODE_IF} within {LEARN_TIMEOUT:?}"))??
                .clone()
                .context("the peer watch held None after waiting for Some")?;
            let learned_after = started.elapsed();
            let connection = match listener {
                Some(listener) => {
                    let (stream, from) = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept())
                        .await
                        .with_context(|| format!("no BGP connection to [::]:179 within {CONNECT_TIMEOUT:?}"))??;
                    Some((from, stream.local_addr()?, started.elapsed()))
                }
                None => None,
            };
            drop(discovery);
            Ok(Seen { neighbor, learned_after, connection })
        })
    })
}

#[test]
fn frr_unnumbered_peer_and_ferrule_find_each_other_on_a_link_local_only_link() {
    if !ferrule_tests::privileged() {
        return;
    }
    frr_scenario().unwrap();
}

fn frr_scenario() -> Result<()> {
    let link = link_local_only("ndfrr")?;
    let bgpd = format!(
        "frr defaults datacenter\nhostname {}\n!\nrouter bgp 65000\n bgp router-id 192.0.2.2\n \
         no bgp ebgp-requires-policy\n neighbor {TOR_IF} interface remote-as external\n!\n",
        link.tor.name()
    );
    let frr = Frr::start_raw(&link.tor, link.dir.path(), &[("bgpd", &bgpd)])?;
    // zebra's side of `interface srv0 / ipv6 nd ra-interval 1 / no ipv6 nd suppress-ra`: the
    // harness starts zebra with a hostname-only config, so it is applied through vtysh.
    frr.vtysh(&[
        "configure terminal",
        &format!("interface {TOR_IF}"),
        "ipv6 nd ra-interval 1",
        "no ipv6 nd suppress-ra",
    ])?;
    // Premise of check 3: the ToR's kernel acts on RAs (accepts them, is not forwarding).
    let sysctl = |key: &str| link.tor.run("sysctl", ["-n", key]).map(|v| v.trim().to_string());
    let accept_ra = sysctl(&format!("net.ipv6.conf.{TOR_IF}.accept_ra"))?;
    let forwarding = sysctl(&format!("net.ipv6.conf.{TOR_IF}.forwarding"))?;

    // 0. FRR does not know us yet: whatever it learns next comes from our packets.
    let before = frr_neighbor_address(&frr)?;
    println!("[FRR] 0 before discovery: expected bgpd's neighbor address \"none\", saw {before:?}");
    assert_eq!(before, "none");

    let report = || format!("{}\n{}", frr.vtysh(&["show interface srv0"]).unwrap_or_default(), frr_logs(&frr));
    let seen = discover(&link.node, true).with_context(report)?;

    // 1. We learned FRR's link-local address (and MAC) from its RAs.
    let n = &seen.neighbor;
    println!(
        "[FRR] 1 discovery: expected {}%{} mac {}, saw {}%{} mac {} after {:.1?}",
        link.tor_link_local,
        link.node_ifindex,
        link.tor_mac,
        n.address,
        n.ifindex,
        n.mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into()),
        seen.learned_after
    );
    assert_eq!(n.address, link.tor_link_local);
    assert_eq!(n.ifindex, link.node_ifindex);
    assert_eq!(n.mac, Some(link.tor_mac));

    // 2. FRR learned ours from our RAs: its bgpd connected to our link-local address.
    let (from, local, after) = seen.connection.expect("accept_bgp was asked for");
    let SocketAddr::V6(from_v6) = from else { bail!("connection from {from} is not IPv6") };
    let IpAddr::V6(node_link_local) = net::link_local(&link.node, NODE_IF)? else { bail!("not IPv6") };
    println!(
        "[FRR] 2 bgpd found us: expected a connection from {}%{} to {node_link_local}, saw one from {from} to \
         {local} after {after:.1?}",
        link.tor_link_local, link.node_ifindex
    );
    assert_eq!(*from_v6.ip(), link.tor_link_local);
    assert_eq!(from_v6.scope_id(), link.node_ifindex);
    assert_eq!(local.ip(), IpAddr::V6(node_link_local));
    assert_eq!(local.port(), 179);
    let mut learned = String::new();
    cmd::poll_until(
        "bgpd to show our address for its neighbor",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            learned = frr_neighbor_address(&frr)?;
            Ok(learned == node_link_local.to_string())
        },
    )
    .with_context(|| format!("bgpd's neighbor address is {learned:?}"))?;
    println!("[FRR] 2 bgpd's neighbor on {TOR_IF}: expected {node_link_local}, saw {learned}");

    // 3. Router lifetime 0: a kernel that accepts RAs took no default route from us.
    let default = link.tor.run("ip", ["-6", "route", "show", "default"])?;
    println!(
        "[FRR] 3 lifetime 0: expected no default route in the ToR namespace (accept_ra={accept_ra}, \
         forwarding={forwarding}), saw {:?}",
        default.trim()
    );
    assert_eq!((accept_ra.as_str(), forwarding.as_str()), ("1", "0"), "the check needs a kernel that uses RAs");
    assert!(default.trim().is_empty(), "{default}");
    Ok(())
}

#[test]
fn ferrule_learns_bird_radv_link_local_address() {
    if !ferrule_tests::privileged() {
        return;
    }
    bird_scenario().unwrap();
}

fn bird_scenario() -> Result<()> {
    let link = link_local_only("ndbird")?;
    // BIRD 2.0 refuses `max ra interval` below 4 and `min ra interval` below 3 (RFC 4861 §6.2.1).
    let config = format!(
        "router id 192.0.2.2;\nlog stderr all;\nprotocol device {{ scan time 1; }}\n\
         protocol radv {{ interface \"{TOR_IF}\" {{ max ra interval 4; min ra interval 3; }}; }}\n"
    );
    let bird = Bird::start_raw(&link.tor, link.dir.path(), &config)?;
    let seen = discover(&link.node, false).with_context(|| {
        let protocols = bird.birdc(&["show", "protocols", "all"]).unwrap_or_default();
        format!("{protocols}\n{}", ferrule_tests::BgpPeer::log_tail(&bird))
    })?;
    let n = &seen.neighbor;
    let mac = n.mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into());
    println!(
        "[BIRD] 4 discovery: expected {}%{}, saw {}%{} (mac {mac}) after {:.1?}",
        link.tor_link_local, link.node_ifindex, n.address, n.ifindex, seen.learned_after
    );
    assert_eq!(n.address, link.tor_link_local);
    assert_eq!(n.ifindex, link.node_ifindex);
    if let Some(mac) = n.mac {
        assert_eq!(mac, link.tor_mac);
    }
    Ok(())
}

#[test]
fn discovery_refuses_missing_interface_and_one_with_ipv6_disabled() {
    if !ferrule_tests::privileged() {
        return;
    }
    let ns = NetNs::new("ndoff").unwrap();
    net::veth(&ns, NODE_IF, &ns, TOR_IF).unwrap();
    net::sysctl(&ns, &format!("net.ipv6.conf.{NODE_IF}.disable_ipv6"), "1").unwrap();
    let errors = in_netns(&ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let _guard = runtime.enter();
        let error = |ifname: &str| Discovery::spawn(ifname, RA_INTERVAL).err().map(|e| e.to_string());
        Ok((error(NODE_IF), error("nosuch0")))
    })
    .unwrap();
    println!("[errors] 5 IPv6 disabled: expected a refusal naming the sysctl, saw {:?}", errors.0);
    println!("[errors] 5 missing interface: expected a refusal naming it, saw {:?}", errors.1);
    let disabled = errors.0.expect("spawn on an interface with IPv6 disabled must fail");
    assert!(disabled.contains(&format!("net.ipv6.conf.{NODE_IF}.disable_ipv6 = 1")), "{disabled}");
    let missing = errors.1.expect("spawn on a missing interface must fail");
    assert!(missing.contains("interface nosuch0 does not exist"), "{missing}");
}

/// bgpd's `bgpNeighborAddr` for `neighbor srv0 interface` ("none" until zebra reports one).
fn frr_neighbor_address(frr: &Frr) -> Result<String> {
    let json = frr.vtysh(&[&format!("show bgp neighbors {TOR_IF} json")])?;
    let value: serde_json::Value = serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
    value[TOR_IF]["bgpNeighborAddr"].as_str().map(str::to_string).with_context(|| format!("no bgpNeighborAddr: {json}"))
}

fn frr_logs(frr: &Frr) -> String {
    ferrule_tests::BgpPeer::log_tail(frr)
}

/// Check 6. Node `lln` with `tor0` and `tor1`; ToR namespaces `llta` and `lltb`, whose `srv0`
/// has `fe80::1` as its only address (as switches are often configured). Three speakers, one per
/// namespace: each ToR peers with the node's link-local address on its link and announces a
/// prefix of its own; the node has `fe80::1%tor0` (AS 65001) and `fe80::1%tor1` (AS 65002).
#[test]
fn two_tors_with_one_link_local_address_are_two_peers() {
    if !ferrule_tests::privileged() {
        return;
    }
    two_tors_scenario().unwrap();
}

/// A next hop of the node's FIB: gateway and interface.
type Hop = (IpAddr, Option<u32>);

const TOR_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const NODE_ASN: u32 = 65000;

fn bgp_peer(address: IpAddr, ifindex: u32, asn: u32) -> PeerConfig {
    PeerConfig {
        address,
        ifindex: Some(ifindex),
        port: 179,
        asn,
        passive: false,
        hold_time: 9,
        connect_retry: Duration::from_millis(500),
        import: ImportPolicy::accept_all(),
        md5: None,
        graceful_restart: None,
        bfd: None,
    }
}

fn speaker_config(asn: u32, router_id: [u8; 4], peers: Vec<PeerConfig>, announce: Option<Prefix>) -> SpeakerConfig {
    SpeakerConfig {
        local_asn: asn,
        router_id: router_id.into(),
        listen_port: 179,
        install_routes: true,
        peers,
        listen: Vec::new(),
        announcements: announce.map(LocalRoute::new).into_iter().collect(),
        awaiting_peers: Vec::new(),
    }
}

/// A ToR's speaker, in its namespace on a thread of its own, until `stop` (at most 2 minutes).
fn tor_speaker(ns: &NetNs, config: SpeakerConfig, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<()>> {
    let ns = ns.name().to_string();
    std::thread::spawn(move || {
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let speaker = Speaker::spawn();
            speaker.set_config(config).await?;
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            speaker.shutdown(false).await;
            Ok(())
        })
    })
}

fn two_tors_scenario() -> Result<()> {
    let node = NetNs::new("lln")?;
    let tors = [NetNs::new("llta")?, NetNs::new("lltb")?];
    let node_ifs = ["tor0", "tor1"];
    for (tor, node_if) in tors.iter().zip(node_ifs) {
        net::veth(&node, node_if, tor, TOR_IF)?;
        // The ToR's only address on the link: fe80::1 (its own EUI-64 one removed).
        cmd::poll_until("the ToR's link-local address", Duration::from_secs(5), Duration::from_millis(50), || {
            Ok(net::link_local(tor, TOR_IF).is_ok())
        })?;
        tor.run("ip", ["-6", "addr", "flush", "dev", TOR_IF, "scope", "link"])?;
        tor.run("ip", ["-6", "addr", "add", &format!("{TOR_LL}/64"), "dev", TOR_IF, "nodad"])?;
    }
    let mut node_lls = Vec::new();
    for node_if in node_ifs {
        cmd::poll_until("the node's link-local address", Duration::from_secs(5), Duration::from_millis(50), || {
            Ok(net::link_local(&node, node_if).is_ok())
        })?;
        node_lls.push(net::link_local(&node, node_if)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, tor) in tors.iter().enumerate() {
        let ifindex = ifindex_of(tor, TOR_IF)?;
        let prefix = Prefix::new(Ipv6Addr::new(0x2001, 0xdb8, 0xa + i as u16, 0, 0, 0, 0, 0).into(), 48)?;
        let peer = bgp_peer(node_lls[i], ifindex, NODE_ASN);
        let config = speaker_config(65001 + i as u32, [192, 0, 2, 1 + i as u8], vec![peer], Some(prefix));
        threads.push(tor_speaker(tor, config, stop.clone()));
    }
    let ifindexes = [ifindex_of(&node, "tor0")?, ifindex_of(&node, "tor1")?];
    let peers =
        vec![bgp_peer(IpAddr::V6(TOR_LL), ifindexes[0], 65001), bgp_peer(IpAddr::V6(TOR_LL), ifindexes[1], 65002)];
    let config = speaker_config(NODE_ASN, [192, 0, 2, 100], peers, None);
    let seen = in_netns(&node, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let speaker = Speaker::spawn();
            speaker.set_config(config).await?;
            let until = Instant::now() + Duration::from_secs(30);
            let (summary, routes) = loop {
                let summary = speaker.summary().await?;
                let fib = speaker.fib().borrow().clone();
                let routes: Vec<(String, Vec<Hop>)> = fib
                    .iter()
                    .map(|(p, hops)| (p.to_string(), hops.iter().map(|h| (h.gateway, h.ifindex)).collect()))
                    .collect();
                let up = summary.iter().filter(|n| n.state == "Established").count();
                if (up == 2 && routes.len() == 2) || Instant::now() > until {
                    break (summary, routes);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let from: Vec<(String, Vec<String>)> = speaker
                .routes(RouteQuery::All)
                .await?
                .into_iter()
                .map(|r| (r.prefix, r.paths.into_iter().map(|p| p.from).collect()))
                .collect();
            speaker.shutdown(false).await;
            anyhow::Ok((summary, routes, from))
        })
    });
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("a ToR speaker thread panicked"))??;
    }
    let (summary, routes, from) = seen?;
    let neighbors: Vec<(String, Option<String>, u32, String)> = summary
        .iter()
        .map(|n: &NeighborSummary| (n.address.to_string(), n.interface.clone(), n.asn, n.state.clone()))
        .collect();
    println!("[two ToRs] 6 neighbors: expected fe80::1%tor0 AS 65001 and fe80::1%tor1 AS 65002 Established, saw {neighbors:?}");
    println!("[two ToRs] 6 routes: expected 2001:db8:a::/48 via fe80::1%tor0, 2001:db8:b::/48 via fe80::1%tor1, saw {routes:?}");
    let ll = TOR_LL.to_string();
    assert_eq!(
        neighbors,
        [
            (ll.clone(), Some("tor0".to_string()), 65001, "Established".to_string()),
            (ll.clone(), Some("tor1".to_string()), 65002, "Established".to_string()),
        ]
    );
    let via = |i: usize| vec![(IpAddr::V6(TOR_LL), Some(ifindexes[i]))];
    assert_eq!(routes, [("2001:db8:a::/48".to_string(), via(0)), ("2001:db8:b::/48".to_string(), via(1))]);
    println!("[two ToRs] 6 `show bgp routes` from: expected fe80::1%tor0 and fe80::1%tor1, saw {from:?}");
    let path = |prefix: &str, peer: &str| (prefix.to_string(), vec![peer.to_string()]);
    assert_eq!(from, [path("2001:db8:a::/48", "fe80::1%tor0"), path("2001:db8:b::/48", "fe80::1%tor1")]);
    Ok(())
}

/// Check 7.
#[test]
fn discovery_notices_its_interface_recreated_or_its_mac_changed() {
    if !ferrule_tests::privileged() {
        return;
    }
    let node = NetNs::new("ndre").unwrap();
    let tor = NetNs::new("ndret").unwrap();
    net::veth(&node, NODE_IF, &tor, TOR_IF).unwrap();
    let seen = in_netns(&node, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            // Commands started from this thread run in the node namespace too.
            let ip = |args: &[&str]| cmd::run(std::process::Command::new("ip").args(args));
            let discovery = Discovery::spawn(NODE_IF, RA_INTERVAL)?;
            let at_start = discovery.interface_unchanged();
            ip(&["link", "set", "dev", NODE_IF, "address", "02:00:00:00:00:99"])?;
            let mac_changed = discovery.interface_unchanged();
            let discovery = Discovery::spawn(NODE_IF, RA_INTERVAL)?;
            let restarted = discovery.interface_unchanged();
            ip(&["link", "del", NODE_IF])?;
            let gone = discovery.interface_unchanged();
            ip(&["link", "add", NODE_IF, "type", "veth", "peer", "name", "tor0p"])?;
            let recreated = discovery.interface_unchanged();
            anyhow::Ok([at_start, mac_changed, restarted, gone, recreated])
        })
    })
    .unwrap();
    println!(
        "[recreate] 7 interface unchanged: expected at start, after a MAC change, restarted, deleted, recreated = \
         [true, false, true, false, false], saw {seen:?}"
    );
    assert_eq!(seen, [true, false, true, false, false]);
}
