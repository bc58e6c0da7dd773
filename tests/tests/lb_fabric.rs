//! The XDP load balancer through a fabric: a client behind two ToRs (FRR and BIRD) reaches two
//! service VIPs served by two `ferrule` nodes. Each node peers with both ToRs and announces the
//! VIPs while a backend is healthy; each ToR installs a two-next-hop ECMP route and spreads flows
//! across the nodes. Both nodes hold the same Maglev tables, so a flow gets the same backend
//! whichever node it crosses. The web service is DSR (IPIP to backends that decapsulate with
//! Ferrule's `tc_decap` and answer the client directly), the api service is NAT (the backend
//! answers the node's own address, so replies come back through the node that translated them).
//!
//! Topology (each name a namespace, each line a veth pair; `switch` holds one bridge):
//!
//! ```text
//!                          client   192.0.2.100 on lo, ECMP over both ToRs
//!                        /                                  \
//!        tor1 (FRR, AS 65000)                          tor2 (BIRD, AS 65001)
//!               |           \                         /           |
//!               |               \                 /               |
//!               |                   \         /                   |
//!               |                       \ /                       |
//!               |                       / \                       |
//!        node1 (ferrule, AS 65101)                     node2 (ferrule, AS 65102)
//!               | be0 198.51.100.1                            | be0 198.51.100.2
//!        switch: one bridge, 198.51.100.0/24, with the backends
//!          dsr-a .11, dsr-b .12, dsr-c .13: one namespace each, the web VIP on lo, tc_decap
//!          nat-a .21, nat-b .22, nat-c .23: one namespace, a server on each address
//!
//!   link             ToR end          other end     interface names
//!   tor1 - client    192.0.2.72/31    .73           client / tor1
//!   tor2 - client    192.0.2.74/31    .75           client / tor2
//!   tor1 - node1     192.0.2.64/31    .65           node1 / tor1
//!   tor2 - node1     192.0.2.66/31    .67           node1 / tor2
//!   tor1 - node2     192.0.2.68/31    .69           node2 / tor1
//!   tor2 - node2     192.0.2.70/31    .71           node2 / tor2
//! ```
//!
//! The nodes run XDP on be0 (first: its address is the node's own, for tunnels and SNAT), tor1 and
//! tor2. The client's address is on its loopback, so both paths carry the same source; the ToRs
//! and nodes have a static route to it. The nodes import nothing: their routes to the client are
//! static, so a stopped daemon (which removes the routes it installed) does not take the return
//! path of DSR replies with it.
//!
//! Every backend answers each line `L` it reads with `<its id> L for <peer it sees>`, so a client
//! learns which backend served it and, for NAT, which node's SNAT address the backend saw.
//!
//! Checks, each printing what it expected and saw: (1) 200 connections per service all answered;
//! (2) their spread over weights 1 and 3; (3) both nodes carried flows and their counters add up to
//! what the client saw; (4) long-lived connections keep their backend while their backend is
//! drained (weight 0: no new flows) and while another backend is removed, and through a SIGTERM + `--resume` restart of both nodes (with graceful restart); (5)
//! without a healthy backend both VIPs leave both ToRs' BGP tables and kernels, and come back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ferrule_tests::bgp::{BgpConfig, Neighbor};
use ferrule_tests::{cmd, in_netns, net, Bird, Ferrule, Frr, NetNs, TcpServer, TestDir};
use serde_json::Value;

const CLIENT: &str = "192.0.2.100";
/// The port both services listen on at their VIP.
const SERVICE_PORT: u16 = 80;
/// The nodes' addresses on the backend LAN: their first uplink's, so the outer source of DSR
/// tunnels and the SNAT address of NAT flows.
const NODE_LAN: [&str; 2] = ["198.51.100.1", "198.51.100.2"];
const TOR_ASN: [u32; 2] = [65000, 65001];
const NODE_ASN: [u32; 2] = [65101, 65102];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dsr,
    Nat,
}

/// A service of the fabric and the backends it may list (the third only while check 4 needs it).
struct ServiceSpec {
    name: &'static str,
    vip: &'static str,
    mode: Mode,
    backends: [BackendSpec; 3],
}

#[derive(Clone, Copy)]
struct BackendSpec {
    /// What the backend answers with.
    id: &'static str,
    addr: &'static str,
    port: u16,
    weight: u32,
}

const WEB: ServiceSpec = ServiceSpec {
    name: "web",
    vip: "203.0.113.10",
    mode: Mode::Dsr,
    backends: [
        BackendSpec { id: "dsr-a", addr: "198.51.100.11", port: 80, weight: 1 },
        BackendSpec { id: "dsr-b", addr: "198.51.100.12", port: 80, weight: 3 },
        BackendSpec { id: "dsr-c", addr: "198.51.100.13", port: 80, weight: 1 },
    ],
};

const API: ServiceSpec = ServiceSpec {
    name: "api",
    vip: "203.0.113.20",
    mode: Mode::Nat,
    backends: [
        BackendSpec { id: "nat-a", addr: "198.51.100.21", port: 8080, weight: 1 },
        BackendSpec { id: "nat-b", addr: "198.51.100.22", port: 8080, weight: 3 },
        BackendSpec { id: "nat-c", addr: "198.51.100.23", port: 8080, weight: 1 },
    ],
};

const SERVICES: [&ServiceSpec; 2] = [&WEB, &API];

impl ServiceSpec {
    fn vip(&self) -> SocketAddr {
        SocketAddr::new(self.vip.parse().unwrap(), SERVICE_PORT)
    }

    fn prefix(&self) -> String {
        format!("{}/32", self.vip)
    }

    /// The backends listed in the base config: A (weight 1) and B (weight 3).
    fn base(&self) -> &[BackendSpec] {
        &self.backends[..2]
    }
}

/// Which backends the nodes' config lists: A and B, or A, B and C, or A (drained: weight 0), B and
/// C (check 4 drains A, then removes C and restores A).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backends {
    Base,
    WithC,
    WithCDrainingA,
}

// ------------------------------------------------------------------------------------------
// Addressing

/// (ToR address, node address) of the link between node `n` and ToR `t` (both 0-based).
/// `FERRULE_UPGRADE_FROM`: another `ferrule` build (absolute path) that the nodes start as; the
/// restart in check 4 then brings them back as the build under test, which makes it an upgrade
/// (by hand: CI has no older build).
fn upgrade_from() -> Result<Option<PathBuf>> {
    match std::env::var_os("FERRULE_UPGRADE_FROM").map(PathBuf::from) {
        None => Ok(None),
        Some(bin) if bin.is_absolute() && bin.is_file() => Ok(Some(bin)),
        Some(bin) => bail!("FERRULE_UPGRADE_FROM={}: not an absolute path to a file", bin.display()),
    }
}

fn tor_link(n: usize, t: usize) -> (String, String) {
    let base = 64 + 4 * n + 2 * t;
    (format!("192.0.2.{base}"), format!("192.0.2.{}", base + 1))
}

/// (ToR address, client address) of the link between ToR `t` and the client.
fn client_link(t: usize) -> (String, String) {
    let base = 72 + 2 * t;
    (format!("192.0.2.{base}"), format!("192.0.2.{}", base + 1))
}

/// Graceful restart (RFC 4724) on the nodes' sessions with the ToRs, for 120 s: a SIGTERM then
/// closes the sessions without NOTIFICATION and leaves the forwarding state in place, and the
/// ToRs (FRR and BIRD are helpers by default) keep the node's routes while it restarts.
const GRACEFUL_RESTART: &str = "graceful_restart = { restart_time_s = 120 }\n";

fn node_config(name: &str, n: usize, backends: Backends, graceful_restart: bool) -> String {
    let mut config = format!(
        "[node]\nname = \"{name}\"\nasn = {asn}\nrouter_id = \"192.0.2.1{id}\"\n\
         # be0 first: its address is the node's own for DSR tunnels and NAT.\n\
         uplinks = [\"be0\", \"tor1\", \"tor2\"]\n",
        asn = NODE_ASN[n],
        id = n + 1
    );
    for (t, tor_asn) in TOR_ASN.iter().enumerate() {
        let (tor, _) = tor_link(n, t);
        config += &format!("\n[[bgp.peers]]\naddress = \"{tor}\"\nasn = {tor_asn}\nhold_time = 9\n");
        if graceful_restart {
            config += GRACEFUL_RESTART;
        }
    }
    for svc in SERVICES {
        let listed = match backends {
            Backends::Base => svc.base(),
            Backends::WithC | Backends::WithCDrainingA => &svc.backends[..],
        };
        let list: Vec<String> = listed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let weight = if i == 0 && backends == Backends::WithCDrainingA { 0 } else { b.weight };
                format!("{{ address = \"{}\", port = {}, weight = {weight} }}", b.addr, b.port)
            })
            .collect();
        config += &format!(
            "\n[[services]]\nname = \"{}\"\nvip = \"{}\"\nport = {SERVICE_PORT}\nprotocol = \"tcp\"\nmode = \"{}\"\n\
             announce = \"healthy\"\n\
             health = {{ kind = \"tcp\", interval_ms = 200, timeout_ms = 500, rise = 2, fall = 2 }}\n\
             backends = [ {} ]\n",
            svc.name,
            svc.vip,
            if svc.mode == Mode::Dsr { "dsr" } else { "nat" },
            list.join(", ")
        );
    }
    config
}

// ------------------------------------------------------------------------------------------
// Backends

/// The backends' answer: `<id> <line> for <peer>` for every line, until EOF. Bounded by the idle
/// read timeout and a line limit, so a forgotten connection cannot keep its thread forever.
fn serve(conn: TcpStream, peer: SocketAddr, id: &str) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    let mut line = String::new();
    for _ in 0..20_000 {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        writer.write_all(format!("{id} {} for {peer}\n", line.trim_end()).as_bytes())?;
    }
    Ok(())
}

/// A listening backend: each connection gets its own thread, so long-lived ones do not block
/// the accept loop.
fn start_server(ns: &NetNs, listen: &str, id: &'static str) -> Result<TcpServer> {
    TcpServer::start(ns, listen, move |conn, peer| {
        std::thread::spawn(move || drop(serve(conn, peer, id)));
    })
}

/// One backend host and the server it runs (stopped and started by check 5).
struct BackendHost {
    spec: BackendSpec,
    ns: NetNs,
    /// Where the server listens: the VIP and the address health checks use (DSR: 0.0.0.0:80), or
    /// the backend's own address (NAT).
    listen: String,
    server: Option<TcpServer>,
}

impl BackendHost {
    fn start(&mut self) -> Result<()> {
        if self.server.is_none() {
            self.server = Some(start_server(&self.ns, &self.listen, self.spec.id)?);
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.server.take();
    }
}

/// Removes a DSR backend's `tc_decap` pins when the test ends: its link is pinned, so removing
/// the pin is what detaches it.
struct DecapPins(PathBuf);

impl Drop for DecapPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------------------------------
// The fabric

/// Turns GRO on `ifname`: a veth takes frames that XDP on its peer redirects to it only when its
/// receive NAPI runs, which needs an XDP program or GRO on it (see lb_e2e.rs). Every interface
/// facing a node's XDP uplink without XDP of its own needs it. (A frame sent back out the
/// interface it came in on, XDP_TX, is delivered at once only to a veth with an XDP program:
/// GRO is not enough for that. Nothing in this topology is sent back; deploy/lab/lab.sh, where
/// it is, attaches a pass-through program instead.)
fn gro_on(ns: &NetNs, ifname: &str) -> Result<()> {
    cmd::require_tool("ethtool", "ethtool")?;
    ns.run("ethtool", ["-K", ifname, "gro", "on"])?;
    Ok(())
}

/// Turns TX checksum offload off on `ifname` of a host that sends traffic (client, backends):
/// with it, locally sent TCP leaves with a partial checksum that a frame rewritten or tunnelled
/// by XDP no longer gets completed, and the receiver drops it (see lb_e2e.rs). Frames on a wire
/// always carry complete checksums.
fn tx_csum_off(ns: &NetNs, ifname: &str) -> Result<()> {
    cmd::require_tool("ethtool", "ethtool")?;
    ns.run("ethtool", ["-K", ifname, "tx", "off"])?;
    Ok(())
}

/// Hash flows across ECMP next hops by their L4 ports (policy 1), not only by addresses: the
/// client talks to two VIPs only, so an L3 hash would put every flow of a VIP on one node.
fn l4_multipath_hash(ns: &NetNs) -> Result<()> {
    net::sysctl(ns, "net.ipv4.fib_multipath_hash_policy", "1")?;
    net::sysctl(ns, "net.ipv6.fib_multipath_hash_policy", "1")
}

/// Keeps each of the client's connections on one path for its whole life. Across a veth the ToR's
/// L4 hash is the client socket's own flow hash (the skb keeps it), which is random per connection
/// and re-rolled by default when a segment times out; a retransmission would then go to the other
/// node, which has no state for a NAT flow. On a wire the ToR hashes the 5-tuple, which never
/// changes; `net.core.txrehash = 0` gives the same stability here.
fn stable_flow_hash(ns: &NetNs) -> Result<()> {
    net::sysctl(ns, "net.core.txrehash", "0")
}

/// `ip ARGS…` in `ns`, the arguments given as one line.
fn ip(ns: &NetNs, args: &str) -> Result<()> {
    ns.run("ip", args.split_whitespace())?;
    Ok(())
}

struct Fabric {
    // Fields drop in order: daemons before the namespaces they run in, the directory last.
    nodes: Vec<Ferrule>,
    frr: Frr,
    bird: Bird,
    backends: Vec<BackendHost>,
    _decap_pins: Vec<DecapPins>,
    client: NetNs,
    tors: [NetNs; 2],
    _switch: NetNs,
    /// The nodes' sessions use graceful restart (see `GRACEFUL_RESTART`).
    graceful_restart: bool,
    _dir: TestDir,
}

impl Fabric {
    /// Builds the namespaces, links and routes, starts the backends, both ToRs and both nodes, and
    /// waits until each ToR has its two sessions up and both VIPs as two-next-hop routes.
    /// `label` (one letter) keeps node and pin names unique between tests of this binary.
    fn up(label: &str, graceful_restart: bool) -> Result<Fabric> {
        let dir = TestDir::new(&format!("lbfab{label}"))?;
        let client = NetNs::new("lfcl")?;
        let tors = [NetNs::new("lft1")?, NetNs::new("lft2")?];
        let node_ns = [NetNs::new("lfn1")?, NetNs::new("lfn2")?];
        let switch = NetNs::new("lfsw")?;

        // Client <-> ToRs.
        client.run("ip", ["addr", "add", &format!("{CLIENT}/32"), "dev", "lo"])?;
        for (t, tor) in tors.iter().enumerate() {
            let (tor_addr, client_addr) = client_link(t);
            let client_if = format!("tor{}", t + 1);
            net::veth(&client, &client_if, tor, "client")?;
            net::add_addr(&client, &client_if, &format!("{client_addr}/31"))?;
            net::add_addr(tor, "client", &format!("{tor_addr}/31"))?;
            tx_csum_off(&client, &client_if)?;
            tor.run("ip", ["route", "add", &format!("{CLIENT}/32"), "via", &client_addr])?;
            net::enable_forwarding(tor)?;
            l4_multipath_hash(tor)?;
        }
        l4_multipath_hash(&client)?;
        stable_flow_hash(&client)?;
        let (tor1, _) = client_link(0);
        let (tor2, _) = client_link(1);
        ip(
            &client,
            &format!("route add 203.0.113.0/24 src {CLIENT} nexthop via {tor1} dev tor1 nexthop via {tor2} dev tor2"),
        )?;

        // Nodes <-> ToRs, nodes <-> backend LAN.
        switch.run("ip", ["link", "add", "br0", "type", "bridge"])?;
        net::link_up(&switch, "br0")?;
        for (n, node) in node_ns.iter().enumerate() {
            for (t, tor) in tors.iter().enumerate() {
                let (tor_addr, node_addr) = tor_link(n, t);
                let (node_if, tor_if) = (format!("tor{}", t + 1), format!("node{}", n + 1));
                net::veth(node, &node_if, tor, &tor_if)?;
                net::add_addr(node, &node_if, &format!("{node_addr}/31"))?;
                net::add_addr(tor, &tor_if, &format!("{tor_addr}/31"))?;
                gro_on(tor, &tor_if)?;
            }
            let port = format!("n{}", n + 1);
            net::veth(node, "be0", &switch, &port)?;
            switch.run("ip", ["link", "set", &port, "master", "br0"])?;
            gro_on(&switch, &port)?;
            net::add_addr(node, "be0", &format!("{}/24", NODE_LAN[n]))?;
            net::enable_forwarding(node)?;
            let (t1, _) = tor_link(n, 0);
            let (t2, _) = tor_link(n, 1);
            ip(node, &format!("route add {CLIENT}/32 nexthop via {t1} dev tor1 nexthop via {t2} dev tor2"))?;
        }

        // Backends: one namespace per DSR backend (each accepts on the VIP itself), one for the
        // three NAT backends (each on its own address).
        let bpffs = ferrule_tests::bpffs::ensure_host_bpffs()?;
        let mut backends = Vec::new();
        let mut decap_pins = Vec::new();
        let nat_ns = NetNs::new("lfbn")?;
        net::veth(&nat_ns, "lan0", &switch, "bn")?;
        switch.run("ip", ["link", "set", "bn", "master", "br0"])?;
        tx_csum_off(&nat_ns, "lan0")?;
        for spec in API.backends {
            net::add_addr(&nat_ns, "lan0", &format!("{}/24", spec.addr))?;
            backends.push(BackendHost {
                spec,
                ns: nat_ns.clone(),
                listen: format!("{}:{}", spec.addr, spec.port),
                server: None,
            });
        }
        for (i, spec) in WEB.backends.into_iter().enumerate() {
            let ns = NetNs::new(&format!("lfb{}", i + 1))?;
            let port = format!("b{}", i + 1);
            net::veth(&ns, "lan0", &switch, &port)?;
            switch.run("ip", ["link", "set", &port, "master", "br0"])?;
            net::add_addr(&ns, "lan0", &format!("{}/24", spec.addr))?;
            tx_csum_off(&ns, "lan0")?;
            ns.run("ip", ["addr", "add", &format!("{}/32", WEB.vip), "dev", "lo"])?;
            // DSR answers go to the client through either node (plain forwarding).
            let (n1, n2) = (NODE_LAN[0], NODE_LAN[1]);
            ip(&ns, &format!("route add default nexthop via {n1} dev lan0 nexthop via {n2} dev lan0"))?;
            let pin_name = format!("lbf{}{label}d{}", std::process::id(), i + 1);
            decap_pins.push(DecapPins(bpffs.join("ferrule").join(&pin_name)));
            let (root, addr) = (bpffs.to_path_buf(), spec.addr.parse::<IpAddr>()?);
            in_netns(&ns, move || {
                let mut decap = ferrule_ebpf::Decap::open_at(&root, &pin_name)?;
                decap.allow_address(addr)?;
                decap.attach("lan0")?;
                Ok(())
            })
            .with_context(|| format!("tc_decap on {}", spec.id))?;
            backends.push(BackendHost { spec, ns, listen: format!("0.0.0.0:{}", spec.port), server: None });
        }
        for backend in &mut backends {
            backend.start()?;
        }

        // bpf_fib_lookup forwards in XDP only towards resolved neighbours; without them the
        // datapath hands a packet to the stack, which drops it as a martian (its source is the
        // node's own address). One ping to every next hop the nodes' XDP uses resolves them.
        for (n, node) in node_ns.iter().enumerate() {
            for t in 0..2 {
                net::ping(node, tor_link(n, t).0.parse()?, 1)?;
            }
            for svc in SERVICES {
                for b in svc.backends {
                    net::ping(node, b.addr.parse()?, 1)?;
                }
            }
        }

        let frr = start_frr(&tors[0], dir.path())?;
        let bird = start_bird(&tors[1], dir.path())?;
        let mut nodes = Vec::new();
        for (n, ns) in node_ns.iter().enumerate() {
            let name = format!("lbf{}{label}{}", std::process::id(), n + 1);
            let mut ferrule =
                Ferrule::new(ns, dir.path(), &name, &node_config(&name, n, Backends::Base, graceful_restart))?;
            if let Some(old) = upgrade_from()? {
                ferrule.set_bin(old);
            }
            ferrule.start(&[])?;
            nodes.push(ferrule);
        }
        let fabric = Fabric {
            nodes,
            frr,
            bird,
            backends,
            _decap_pins: decap_pins,
            client,
            tors,
            _switch: switch,
            graceful_restart,
            _dir: dir,
        };
        for n in 0..2 {
            ferrule_tests::wait_established(&fabric.frr, tor_link(n, 0).1.parse()?, Duration::from_secs(60))?;
            ferrule_tests::wait_established(&fabric.bird, tor_link(n, 1).1.parse()?, Duration::from_secs(60))?;
        }
        let started = Instant::now();
        fabric.wait_tors("both VIPs as two-path ECMP routes on both ToRs", Duration::from_secs(60), |v| v.is_ecmp())?;
        let waited = started.elapsed();
        for svc in SERVICES {
            let view = fabric.tor_view(svc)?;
            println!(
                "ECMP {} ({}): expected 2 BGP paths and 2 kernel next hops on each ToR, saw {view} \
                 ({waited:.1?} after the sessions came up)",
                svc.vip, svc.name
            );
            ensure!(view.is_ecmp(), "{view}");
        }
        Ok(fabric)
    }

    fn tor_view(&self, svc: &ServiceSpec) -> Result<TorView> {
        Ok(TorView {
            frr_paths: frr_paths(&self.frr, &svc.prefix())?,
            bird_paths: bird_paths(&self.tors[1], &self.bird, &svc.prefix())?,
            tor1_kernel: kernel_next_hops(&self.tors[0], &svc.prefix())?,
            tor2_kernel: kernel_next_hops(&self.tors[1], &svc.prefix())?,
        })
    }

    /// Polls both services' ToR views until `want` holds for both (bounded by `timeout`); on
    /// timeout the error shows the views and the nodes' log tails.
    fn wait_tors(&self, what: &str, timeout: Duration, want: impl Fn(&TorView) -> bool) -> Result<()> {
        let mut last = String::new();
        cmd::poll_until(what, timeout, Duration::from_millis(100), || {
            let mut ok = true;
            last.clear();
            for svc in SERVICES {
                match self.tor_view(svc) {
                    Ok(view) => {
                        last += &format!("{}: {view}\n", svc.vip);
                        ok &= want(&view);
                    }
                    Err(e) => {
                        last += &format!("{}: {e:#}\n", svc.vip);
                        ok = false;
                    }
                }
            }
            Ok(ok)
        })
        .with_context(|| format!("last seen:\n{last}{}", self.diagnostics()))
    }

    /// The nodes' `show lb services`, their BGP summaries and log tails, and the ToRs' sessions.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let lb = node.show(&["lb", "services"]).map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"));
            let bgp = node.show(&["bgp", "summary"]).map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"));
            out += &format!("--- {}: lb services {lb}\n--- bgp summary {bgp}\n{}\n", node.name, node.log_tail());
        }
        out += &format!("--- FRR\n{}\n", self.frr.vtysh(&["show bgp summary"]).unwrap_or_default());
        out += &format!("--- BIRD\n{}\n", self.bird.birdc(&["show", "protocols"]).unwrap_or_default());
        out
    }
}

fn start_frr(ns: &NetNs, dir: &Path) -> Result<Frr> {
    let mut config = BgpConfig::new("192.0.2.1".parse()?, TOR_ASN[0]);
    let mut extra = format!("router bgp {}\n bgp bestpath as-path multipath-relax\n", TOR_ASN[0]);
    for (n, node_asn) in NODE_ASN.iter().enumerate() {
        let node: IpAddr = tor_link(n, 0).1.parse()?;
        config = config.neighbor(Neighbor::new(&format!("node{}", n + 1), node, *node_asn));
        // Reconnect quickly after a node's daemon restarts.
        extra += &format!(" neighbor {node} timers connect 2\n");
    }
    // The nodes' AS paths differ (65101, 65102): multipath-relax makes both paths ECMP.
    extra += " address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n";
    Frr::start(ns, dir, &config.extra(&extra))
}

fn start_bird(ns: &NetNs, dir: &Path) -> Result<Bird> {
    let mut config = String::from(
        "router id 192.0.2.2;\nlog stderr all;\nprotocol device { }\n\
         # BGP routes into the kernel, equal paths merged into one multipath (ECMP) route.\n\
         protocol kernel kernel4 { ipv4 { export where source = RTS_BGP; }; merge paths on; }\n\
         # Reconnect quickly after a node's daemon restarts (BIRD refuses incoming connections\n\
         # while it waits after an error).\n",
    );
    config += &format!(
        "template bgp lbnode {{\n  local as {};\n  hold time 9;\n  keepalive time 3;\n  connect delay time 1;\n  \
         connect retry time 2;\n  error wait time 1, 2;\n  ipv4 {{ import all; export none; }};\n}}\n",
        TOR_ASN[1]
    );
    for (n, node_asn) in NODE_ASN.iter().enumerate() {
        let (_, node) = tor_link(n, 1);
        config += &format!("protocol bgp node{} from lbnode {{ neighbor {node} as {node_asn}; }}\n", n + 1);
    }
    Bird::start_raw(ns, dir, &config)
}

/// How both ToRs see one VIP: BGP paths in FRR and BIRD, next hops in each kernel.
struct TorView {
    frr_paths: usize,
    bird_paths: usize,
    tor1_kernel: Vec<String>,
    tor2_kernel: Vec<String>,
}

impl TorView {
    fn is_ecmp(&self) -> bool {
        self.frr_paths == 2 && self.bird_paths == 2 && self.tor1_kernel.len() == 2 && self.tor2_kernel.len() == 2
    }

    fn is_gone(&self) -> bool {
        self.frr_paths == 0 && self.bird_paths == 0 && self.tor1_kernel.is_empty() && self.tor2_kernel.is_empty()
    }
}

impl fmt::Display for TorView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tor1 FRR {} path(s), kernel next hops {:?}; tor2 BIRD {} path(s), kernel next hops {:?}",
            self.frr_paths, self.tor1_kernel, self.bird_paths, self.tor2_kernel
        )
    }
}

/// Paths FRR holds for exactly `prefix`.
fn frr_paths(frr: &Frr, prefix: &str) -> Result<usize> {
    let out = frr.vtysh(&[&format!("show bgp ipv4 unicast {prefix} json")])?;
    // FRR 8 answers a prefix it does not hold with text, not JSON.
    if out.contains("Network not in table") || out.trim().is_empty() {
        return Ok(0);
    }
    let v: Value = serde_json::from_str(&out).with_context(|| format!("vtysh answered {out}"))?;
    Ok(v["paths"].as_array().map_or(0, Vec::len))
}

/// Paths BIRD in `ns` holds for exactly `prefix` (one `unicast [protocol …]` line each).
fn bird_paths(ns: &NetNs, bird: &Bird, prefix: &str) -> Result<usize> {
    // birdc exits 1 with "Network not found" for a prefix BIRD does not hold.
    let socket = bird.socket().to_str().context("non-UTF-8 socket path")?;
    let out = ns.exec("birdc", ["-s", socket, "show", "route", prefix])?;
    let text = ferrule_tests::ferrule::text(&out.stdout);
    if text.contains("Network not found") {
        return Ok(0);
    }
    ensure!(out.status.success(), "birdc show route {prefix}: {text}{}", ferrule_tests::ferrule::text(&out.stderr));
    Ok(text.lines().filter(|l| l.contains("unicast [")).count())
}

/// The next hops of the kernel's route for exactly `prefix` in `ns`'s main table.
fn kernel_next_hops(ns: &NetNs, prefix: &str) -> Result<Vec<String>> {
    let out = ns.run("ip", ["-4", "route", "show", "exact", prefix])?;
    Ok(parse_next_hops(&out))
}

/// `ip route show` of one route: the gateways of its `nexthop via …` lines (multipath), or the
/// one `via` of a single-path route; empty when there is no route.
fn parse_next_hops(out: &str) -> Vec<String> {
    let via = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.iter().position(|w| *w == "via").and_then(|i| words.get(i + 1)).map(|s| s.to_string())
    };
    let multipath: Vec<String> =
        out.lines().filter(|l| l.trim_start().starts_with("nexthop")).filter_map(via).collect();
    if !multipath.is_empty() {
        return multipath;
    }
    out.lines().next().and_then(via).into_iter().collect()
}

// ------------------------------------------------------------------------------------------
// The nodes' view

/// A node's counters for one service: new flows of the service and of each backend (by address).
#[derive(Debug, Default, Clone)]
struct NodeCounters {
    new_flows: u64,
    backends: BTreeMap<String, u64>,
}

fn node_counters(node: &Ferrule, svc: &ServiceSpec) -> Result<NodeCounters> {
    let services = node.show(&["lb", "services"])?;
    let s = services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == svc.name))
        .with_context(|| format!("{} does not list service {}: {services}", node.name, svc.name))?;
    let mut counters = NodeCounters { new_flows: s["new_flows"].as_u64().unwrap_or(0), ..Default::default() };
    for b in s["backends"].as_array().into_iter().flatten() {
        let addr = b["address"].as_str().unwrap_or_default().to_string();
        counters.backends.insert(addr, b["new_flows"].as_u64().unwrap_or(0));
    }
    Ok(counters)
}

/// Applies `backends` to every node and waits until each runs that generation in its datapath,
/// with the listed backends installed and healthy.
fn apply_everywhere(fabric: &Fabric, backends: Backends) -> Result<Duration> {
    let started = Instant::now();
    for (n, node) in fabric.nodes.iter().enumerate() {
        let out = node.apply(&node_config(&node.name, n, backends, fabric.graceful_restart))?;
        let stdout = ferrule_tests::ferrule::text(&out.stdout);
        ensure!(
            out.status.success() && stdout.starts_with("accepted"),
            "ferrule apply on {}: {stdout}{}",
            node.name,
            ferrule_tests::ferrule::text(&out.stderr)
        );
    }
    let want: BTreeSet<String> = SERVICES
        .iter()
        .flat_map(|s| match backends {
            Backends::Base => s.base().to_vec(),
            Backends::WithC | Backends::WithCDrainingA => s.backends.to_vec(),
        })
        .map(|b| b.addr.to_string())
        .collect();
    for node in &fabric.nodes {
        cmd::poll_until(
            &format!("{} to run the applied config", node.name),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let status = node.show(&["status"])?;
                if status["config"]["generation"] != status["datapath"]["applied_generation"] {
                    return Ok(false);
                }
                let services = node.show(&["lb", "services"])?;
                let mut seen = BTreeSet::new();
                for b in services.as_array().into_iter().flatten().flat_map(|s| s["backends"].as_array()).flatten() {
                    if !(b["id"].is_u64() && b["healthy"] == true) {
                        return Ok(false);
                    }
                    seen.insert(b["address"].as_str().unwrap_or_default().to_string());
                }
                Ok(seen == want)
            },
        )
        .with_context(|| fabric.diagnostics())?;
    }
    Ok(started.elapsed())
}

// ------------------------------------------------------------------------------------------
// The client

/// What one short connection saw.
#[derive(Debug)]
struct Answer {
    local: SocketAddr,
    backend: String,
    /// The client's address as the backend saw it.
    peer: String,
}

/// Splits a backend's answer `<id> <sent> for <peer>`.
fn parse_answer(line: &str, sent: &str) -> Result<(String, String)> {
    let line = line.trim_end();
    let (backend, rest) = line.split_once(' ').with_context(|| format!("answer {line:?}"))?;
    let peer = rest
        .strip_prefix(sent)
        .and_then(|r| r.strip_prefix(" for "))
        .with_context(|| format!("answer {line:?} does not echo {sent:?}"))?;
    Ok((backend.to_string(), peer.to_string()))
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to `vip` that has exchanged its first line: the backend is known.
struct Conversation {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
    backend: String,
    peer: String,
}

fn open(vip: SocketAddr, hello: &str) -> Result<Conversation> {
    let conn = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT).with_context(|| format!("connect {vip}"))?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    conn.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let local = conn.local_addr()?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    writer.write_all(format!("{hello}\n").as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line).with_context(|| format!("{local} -> {vip}: reading the answer"))?;
    let (backend, peer) = parse_answer(&line, hello)?;
    Ok(Conversation { reader, writer, local, backend, peer })
}

/// `count` connections to `vip` from the client, one after the other, each sending one line and
/// reading the answer (each step bounded). Failures are kept, not fatal: the check reports them.
fn many_connections(client: &NetNs, vip: SocketAddr, count: usize) -> Result<Vec<Result<Answer, String>>> {
    in_netns(client, move || {
        Ok((0..count)
            .map(|i| {
                open(vip, &format!("hello {i}"))
                    .map(|c| Answer { local: c.local, backend: c.backend, peer: c.peer })
                    .map_err(|e| format!("{e:#}"))
            })
            .collect())
    })
}

/// What one long-lived connection went through.
struct Talk {
    local: SocketAddr,
    backend: String,
    peer: String,
    exchanges: u32,
    slowest: Duration,
    error: Option<String>,
}

/// How long a long-lived connection may wait for one answer: generous, for TCP retransmissions
/// while the ToRs move flows between nodes.
const TALK_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Hard limit of a long-lived connection, whatever the stop flag says.
const TALK_LIMIT: Duration = Duration::from_secs(300);

/// Exchanges `ping k` with the backend every 100 ms until `stop` (or `TALK_LIMIT`); every answer
/// must come from the same backend and name the same peer.
fn keep_talking(mut c: Conversation, stop: Arc<AtomicBool>) -> Talk {
    let mut talk = Talk {
        local: c.local,
        backend: c.backend.clone(),
        peer: c.peer.clone(),
        exchanges: 0,
        slowest: Duration::ZERO,
        error: None,
    };
    let started = Instant::now();
    let mut step = || -> Result<()> {
        c.writer.set_read_timeout(Some(TALK_ANSWER_TIMEOUT))?;
        let sent = format!("ping {}", talk.exchanges);
        let t = Instant::now();
        c.writer.write_all(format!("{sent}\n").as_bytes())?;
        let mut line = String::new();
        if c.reader.read_line(&mut line)? == 0 {
            bail!("connection closed by the other end");
        }
        talk.slowest = talk.slowest.max(t.elapsed());
        let (backend, peer) = parse_answer(&line, &sent)?;
        ensure!(
            backend == c.backend && peer == c.peer,
            "answered by {backend} for {peer}, expected {} for {}",
            c.backend,
            c.peer
        );
        talk.exchanges += 1;
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) && started.elapsed() < TALK_LIMIT {
        if let Err(e) = step() {
            talk.error = Some(format!("after {:.1?}: {e:#}", started.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    talk
}

// ------------------------------------------------------------------------------------------
// Checks

/// Flows of the spread checks, per service.
const FLOWS: usize = 200;

/// Checks 1–3 for one service: `FLOWS` connections all answered; their spread over backend A
/// (weight 1) and B (weight 3); both nodes carried flows, and the nodes' counters add up to what
/// the client saw.
fn check_spread(fabric: &Fabric, svc: &ServiceSpec) {
    let before: Vec<NodeCounters> = fabric.nodes.iter().map(|n| node_counters(n, svc).unwrap()).collect();
    let started = Instant::now();
    let results = many_connections(&fabric.client, svc.vip(), FLOWS).unwrap();
    let took = started.elapsed();
    let (answers, failures): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let answers: Vec<Answer> = answers.into_iter().map(Result::unwrap).collect();
    let failures: Vec<String> = failures.into_iter().map(Result::unwrap_err).collect();

    // (1) Every connection answered by a backend of the service.
    let known: BTreeSet<&str> = svc.base().iter().map(|b| b.id).collect();
    let ports: BTreeSet<u16> = answers.iter().map(|a| a.local.port()).collect();
    println!(
        "[{} {:?}] (1) connections: expected {FLOWS} answered by {known:?} from {FLOWS} source ports; saw {} answered \
         ({} failed) from {} distinct ports in {took:.1?}",
        svc.name,
        svc.mode,
        answers.len(),
        failures.len(),
        ports.len()
    );
    assert!(failures.is_empty(), "failed connections: {failures:#?}\n{}", fabric.diagnostics());
    assert_eq!(ports.len(), FLOWS, "source ports repeat");
    for a in &answers {
        assert!(known.contains(a.backend.as_str()), "answer from {} for {}", a.backend, a.local);
        assert_eq!(a.local.ip().to_string(), CLIENT, "the client's source address");
        match svc.mode {
            // DSR: the backend saw the client itself.
            Mode::Dsr => assert_eq!(a.peer, a.local.to_string(), "DSR backend {} saw another peer", a.backend),
            // NAT: the backend saw one node's own address.
            Mode::Nat => {
                let ip = a.peer.split(':').next().unwrap_or_default();
                assert!(NODE_LAN.contains(&ip), "NAT backend {} saw {}, not a node", a.backend, a.peer);
            }
        }
    }

    // (2) Spread by weight. Each flow's backend is a hash of its 5-tuple into a Maglev table
    // where A owns 1/4 of the slots, so A's count is Binomial(200, 0.25): mean 50, standard
    // deviation sqrt(200 * 0.25 * 0.75) = 6.1. Accepting 4 standard deviations (50 ± 24, a 13-37 %
    // share) fails a correct balancer about once in 16,000 runs, while an even split (100) or
    // an ignored weight is 8 deviations away.
    let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &answers {
        *by_backend.entry(a.backend.as_str()).or_default() += 1;
    }
    let (a_spec, b_spec) = (svc.backends[0], svc.backends[1]);
    let a_count = by_backend.get(a_spec.id).copied().unwrap_or(0);
    let b_count = by_backend.get(b_spec.id).copied().unwrap_or(0);
    let share = |n: usize| 100.0 * n as f64 / FLOWS as f64;
    println!(
        "[{} {:?}] (2) spread: expected {} (weight 1) 50 ± 24 of {FLOWS} (25 %, 13-37 %) and {} (weight 3) the rest; \
         saw {a_count} ({:.1} %) and {b_count} ({:.1} %)",
        svc.name,
        svc.mode,
        a_spec.id,
        b_spec.id,
        share(a_count),
        share(b_count)
    );
    assert!((26..=74).contains(&a_count), "{by_backend:?}");

    // (3) Both nodes carried flows; their counters account for every flow exactly once.
    let after: Vec<NodeCounters> = fabric.nodes.iter().map(|n| node_counters(n, svc).unwrap()).collect();
    let per_node: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a.new_flows - b.new_flows).collect();
    let mut node_backend: BTreeMap<&str, u64> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        for spec in svc.base() {
            let delta =
                a.backends.get(spec.addr).copied().unwrap_or(0) - b.backends.get(spec.addr).copied().unwrap_or(0);
            *node_backend.entry(spec.id).or_default() += delta;
        }
    }
    println!(
        "[{} {:?}] (3) nodes: expected new flows > 0 on each node, {FLOWS} in all, per backend as the client saw \
         {by_backend:?}; saw node1 {}, node2 {}, per backend {node_backend:?}",
        svc.name, svc.mode, per_node[0], per_node[1]
    );
    assert!(per_node.iter().all(|&n| n > 0), "a node carried no flow: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), FLOWS as u64, "flows counted by the nodes");
    for (id, count) in &by_backend {
        assert_eq!(node_backend.get(id).copied().unwrap_or(0), *count as u64, "new flows of {id} on the nodes");
    }
    if svc.mode == Mode::Nat {
        // The backend saw each node's SNAT address exactly as often as that node counted flows.
        let seen: Vec<u64> = NODE_LAN
            .iter()
            .map(|ip| answers.iter().filter(|a| a.peer.starts_with(&format!("{ip}:"))).count() as u64)
            .collect();
        println!(
            "[{} {:?}] (3) SNAT addresses seen by the backends: expected node1 {} and node2 {}, saw {seen:?}",
            svc.name, svc.mode, per_node[0], per_node[1]
        );
        assert_eq!(seen, per_node);
    }
}

#[test]
fn flows_spread_by_weight_over_both_lb_nodes_behind_ecmp_tors() {
    if !ferrule_tests::privileged() {
        return;
    }
    let fabric = Fabric::up("s", false).unwrap();
    for svc in SERVICES {
        check_spread(&fabric, svc);
    }
}

/// Conversations per service in check 4.
const CONVERSATIONS: usize = 10;

/// Opens `CONVERSATIONS` conversations with `svc` whose backend is A or B, at least one on A (to
/// be drained); those that land on C (to be removed), or on B once only A's place is left, are
/// closed again. Bounded: at most 60 attempts.
fn open_conversations(client: &NetNs, svc: &'static ServiceSpec) -> Result<(Vec<Conversation>, usize)> {
    let (drained, removed) = (svc.backends[0].id, svc.backends[2].id);
    let vip = svc.vip();
    in_netns(client, move || {
        let mut kept: Vec<Conversation> = Vec::new();
        let mut on_c = 0;
        for i in 0..60 {
            let c = open(vip, &format!("hello {i}"))?;
            let have_a = kept.iter().any(|k| k.backend == drained);
            if c.backend == removed {
                on_c += 1;
            } else if c.backend == drained || have_a || kept.len() + 1 < CONVERSATIONS {
                kept.push(c);
            }
            if kept.len() == CONVERSATIONS {
                return Ok((kept, on_c));
            }
        }
        bail!("only {} of 60 connections to {vip} landed on A or B (at least one on A)", kept.len())
    })
}

/// 20 new connections to `svc`: all answered, none by backend `avoided`.
fn new_connections_avoid(fabric: &Fabric, svc: &ServiceSpec, avoided: &str) {
    let answers = many_connections(&fabric.client, svc.vip(), 20).unwrap();
    let on: Vec<String> =
        answers.iter().map(|a| a.as_ref().map_or_else(|e| format!("error: {e}"), |a| a.backend.clone())).collect();
    println!("[{} {:?}] (4) 20 new connections: expected none on {avoided}, saw {on:?}", svc.name, svc.mode);
    assert!(on.iter().all(|b| b != avoided && !b.starts_with("error")), "{on:?}");
}

/// Check 4: `CONVERSATIONS` long-lived connections per service (on backends A and B) talk every
/// 100 ms while backend A is drained (weight 0: new connections avoid it, its own keep going), then
/// while backend C is removed from both services on both nodes and A restored (`ferrule apply`), then,
/// with `restart_nodes`, while each node in turn is stopped (SIGTERM) and started again with
/// `--resume`. None may break, and every answer must come from the backend that answered first,
/// for the same peer (for NAT: the same node's SNAT address and port).
fn check_long_lived(fabric: &mut Fabric, restart_nodes: bool) {
    // A third backend joins each service, so that removing it is a real Maglev table change
    // (about 2 % of A's and B's slots move when C goes).
    let t = apply_everywhere(fabric, Backends::WithC).unwrap();
    println!("(4) backend C added to both services on both nodes, running after {t:.1?}");
    let mut conversations = Vec::new();
    for svc in SERVICES {
        let (kept, on_c) = open_conversations(&fabric.client, svc).unwrap();
        let backends: Vec<&str> = kept.iter().map(|c| c.backend.as_str()).collect();
        println!(
            "[{} {:?}] (4) {CONVERSATIONS} conversations on {backends:?} ({on_c} that landed on C closed)",
            svc.name, svc.mode
        );
        conversations.extend(kept.into_iter().map(|c| (svc.name, svc.mode, c)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let talkers: Vec<(&str, Mode, JoinHandle<Talk>)> = conversations
        .into_iter()
        .map(|(name, mode, c)| {
            let stop = stop.clone();
            (name, mode, std::thread::spawn(move || keep_talking(c, stop)))
        })
        .collect();
    // Whatever fails below, the talkers stop (their threads end within one answer timeout).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(stop.clone());
    std::thread::sleep(Duration::from_secs(1));

    let t = apply_everywhere(fabric, Backends::WithCDrainingA).unwrap();
    println!("(4) backend A drained (weight 0) in both services on both nodes, running after {t:.1?}");
    std::thread::sleep(Duration::from_secs(2));
    for svc in SERVICES {
        new_connections_avoid(fabric, svc, svc.backends[0].id);
        let rows = fabric.nodes[0].show(&["lb", "backends"]).unwrap();
        let state: Vec<(String, bool)> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["service"] == svc.name)
            .map(|r| (r["address"].as_str().unwrap_or("?").to_string(), r["draining"] == true))
            .collect();
        println!("[{} {:?}] (4) node1 show lb backends (address, draining): {state:?}", svc.name, svc.mode);
        assert!(state.contains(&(svc.backends[0].addr.to_string(), true)), "{rows}");
        assert!(state.contains(&(svc.backends[1].addr.to_string(), false)), "{rows}");
    }

    let t = apply_everywhere(fabric, Backends::Base).unwrap();
    println!("(4) backend C removed and A restored in both services on both nodes, running after {t:.1?}");
    std::thread::sleep(Duration::from_secs(2));
    for svc in SERVICES {
        new_connections_avoid(fabric, svc, svc.backends[2].id);
    }

    let mut paths_lost = Vec::new();
    if restart_nodes {
        for n in 0..fabric.nodes.len() {
            let started = Instant::now();
            fabric.nodes[n].stop().unwrap();
            let stopped = started.elapsed();
            // What the ToRs make of the stopped node once its sessions have had time to close.
            std::thread::sleep(Duration::from_secs(1));
            for svc in SERVICES {
                let view = fabric.tor_view(svc);
                let kept = view.as_ref().is_ok_and(TorView::is_ecmp);
                let view = view.map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"));
                let line = format!(
                    "node{} stopped (SIGTERM took {stopped:.1?}); 1 s later, {}: expected both ToRs to keep both \
                     paths (graceful restart), saw {view}",
                    n + 1,
                    svc.vip
                );
                println!("(4) {line}");
                if !kept {
                    paths_lost.push(line);
                }
            }
            // (With FERRULE_UPGRADE_FROM, the node comes back as the build under test.)
            fabric.nodes[n].set_bin(ferrule_tests::ferrule::ferrule_bin());
            fabric.nodes[n].start(&["--resume"]).unwrap();
            let node = &fabric.nodes[n];
            let status = node.show(&["status"]).unwrap();
            let services = node.show(&["lb", "services"]).unwrap();
            let listed: Vec<usize> =
                services.as_array().unwrap().iter().map(|s| s["backends"].as_array().map_or(0, Vec::len)).collect();
            println!(
                "(4) node{} resumed: expected the applied config (2 backends per service) resumed, saw resumed={} \
                 backends per service {listed:?}",
                n + 1,
                status["config"]["resumed"]
            );
            assert_eq!(status["config"]["resumed"], true, "{status}");
            assert_eq!(listed, vec![2, 2], "{services}");
            fabric
                .wait_tors("both VIPs back to two paths on both ToRs", Duration::from_secs(60), TorView::is_ecmp)
                .unwrap();
            println!("(4) node{}: both ToRs back to ECMP {:.1?} after the SIGTERM", n + 1, started.elapsed());
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    stop.store(true, Ordering::Relaxed);
    let mut broken = Vec::new();
    for (name, mode, handle) in talkers {
        let talk = handle.join().expect("talker thread");
        println!(
            "[{name} {mode:?}] (4) {} -> {} (seen as {}): expected no error and one backend throughout; \
             saw {} exchanges, slowest answer {:.0?}, error {:?}",
            talk.local, talk.backend, talk.peer, talk.exchanges, talk.slowest, talk.error
        );
        if let Some(error) = talk.error {
            broken.push(format!("[{name} {mode:?}] {} on {}: {error}", talk.local, talk.backend));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} conversations broke:\n{}\nToRs that lost a path during a restart:\n{}\n{}",
        broken.len(),
        2 * CONVERSATIONS,
        broken.join("\n"),
        paths_lost.join("\n"),
        fabric.diagnostics()
    );
    assert!(paths_lost.is_empty(), "{}", paths_lost.join("\n"));
}

#[test]
fn long_lived_flows_keep_their_backend_when_another_backend_is_removed() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut fabric = Fabric::up("r", false).unwrap();
    check_long_lived(&mut fabric, false);
}

/// Check 4 in full: backend removal, then a SIGTERM + `--resume` restart of each node in turn,
/// with graceful restart on the nodes' BGP sessions, which is what makes a restart hitless: the
/// ToRs keep the stopped node's paths and its pinned datapath keeps forwarding. (Without it a
/// SIGTERM is an orderly stop: Cease to the ToRs, which move the node's flows to the other node;
/// that resets every NAT flow and, after a backend change, some DSR flows.)
#[test]
fn long_lived_flows_keep_their_backend_through_backend_removal_and_a_restart_of_both_nodes() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut fabric = Fabric::up("g", true).unwrap();
    check_long_lived(&mut fabric, true);
}

#[test]
fn vips_leave_both_tors_without_a_healthy_backend_and_come_back() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut fabric = Fabric::up("h", false).unwrap();

    // (5) Every backend of both services stops listening: health checks fail (fall 2 x 200 ms),
    // the nodes withdraw both VIPs, and both ToRs drop them from BGP and from the kernel.
    let started = Instant::now();
    for backend in &mut fabric.backends {
        backend.stop();
    }
    fabric.wait_tors("both VIPs gone from both ToRs", Duration::from_secs(30), TorView::is_gone).unwrap();
    let gone = started.elapsed();
    for svc in SERVICES {
        let view = fabric.tor_view(svc).unwrap();
        println!(
            "[{} {:?}] (5) no healthy backend: expected the VIP gone from both ToRs' BGP tables and kernels \
             within 30 s, saw {view} after {gone:.1?}",
            svc.name, svc.mode
        );
    }
    for node in &fabric.nodes {
        let services = node.show(&["lb", "services"]).unwrap();
        for s in services.as_array().unwrap() {
            let healthy = s["backends"].as_array().unwrap().iter().filter(|b| b["healthy"] == true).count();
            println!(
                "(5) {} {}: expected not announced, no healthy backend; saw announced={} healthy={healthy}",
                node.name, s["name"], s["announced"]
            );
            assert!(s["announced"] == false && healthy == 0, "{s}");
        }
    }

    let started = Instant::now();
    for backend in &mut fabric.backends {
        backend.start().unwrap();
    }
    fabric.wait_tors("both VIPs back on both ToRs as ECMP", Duration::from_secs(30), TorView::is_ecmp).unwrap();
    let back = started.elapsed();
    for svc in SERVICES {
        let view = fabric.tor_view(svc).unwrap();
        println!(
            "[{} {:?}] (5) backends back: expected two paths on both ToRs within 30 s, saw {view} after {back:.1?}",
            svc.name, svc.mode
        );
        let answers = many_connections(&fabric.client, svc.vip(), 5).unwrap();
        let ok = answers.iter().filter(|a| a.is_ok()).count();
        println!("[{} {:?}] (5) expected 5 of 5 connections answered again, saw {ok}", svc.name, svc.mode);
        assert_eq!(ok, 5, "{:?}", answers.iter().filter_map(|a| a.as_ref().err()).collect::<Vec<_>>());
    }
}

#[test]
fn parses_next_hops_of_single_and_multipath_routes() {
    let multi = "203.0.113.10 nhid 22 proto bgp metric 20 \n\tnexthop via 192.0.2.65 dev node1 weight 1 \n\
                 \tnexthop via 192.0.2.69 dev node2 weight 1 \n";
    assert_eq!(parse_next_hops(multi), vec!["192.0.2.65", "192.0.2.69"]);
    let single = "203.0.113.10 via 192.0.2.67 dev node1 proto bird metric 32 \n";
    assert_eq!(parse_next_hops(single), vec!["192.0.2.67"]);
    assert!(parse_next_hops("").is_empty());
}
