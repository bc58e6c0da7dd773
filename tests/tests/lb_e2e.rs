//! The XDP load balancer end to end: a client in its own namespace connects over TCP to a VIP
//! served by `ferrule daemon` (XDP on the node's uplinks) and gets the answer of a backend in a
//! third namespace, in NAT mode (both directions translated by the node) and in DSR mode (IPIP or
//! IP6IP6 to the backend, decapsulated there by `tc_decap`, answer straight from the VIP), each
//! once over IPv4 and once over IPv6 (NAT66 from the node's IPv6 address).
//!
//! Topology (all addresses documentation ranges, all links veth):
//!
//! ```text
//! client up0 192.0.2.2     ── cl0 192.0.2.1     node (ferrule)  be0 198.51.100.1  ── up0 198.51.100.2  backend
//!            2001:db8:1::2 ──     2001:db8:1::1                     2001:db8:2::1 ──     2001:db8:2::2
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrule_tests::{cmd, in_netns, net, Ferrule, NetNs, TcpServer, TestDir};

/// One address family's addresses in the topology above.
struct Family {
    vip: &'static str,
    client: &'static str,
    node_client_side: &'static str,
    node_backend_side: &'static str,
    backend: &'static str,
    /// Prefix length of both links.
    link_len: u8,
    /// `/32` or `/128`.
    host_len: u8,
}

const V4: Family = Family {
    vip: "203.0.113.10",
    client: "192.0.2.2",
    node_client_side: "192.0.2.1",
    node_backend_side: "198.51.100.1",
    backend: "198.51.100.2",
    link_len: 24,
    host_len: 32,
};

const V6: Family = Family {
    vip: "2001:db8:100::10",
    client: "2001:db8:1::2",
    node_client_side: "2001:db8:1::1",
    node_backend_side: "2001:db8:2::1",
    backend: "2001:db8:2::2",
    link_len: 64,
    host_len: 128,
};

impl Family {
    fn addr(text: &str) -> IpAddr {
        text.parse().expect("address constant")
    }

    /// `ip:port`, with brackets for IPv6, as `SocketAddr` prints it.
    fn socket(text: &str, port: u16) -> SocketAddr {
        SocketAddr::new(Self::addr(text), port)
    }
}

/// Turns GRO on and TX checksum offload off on `ifname` in `ns` with Debian's ethtool (installed by
/// `lab.sh deps`): see the comment where it is called.
fn host_like_offloads(ns: &NetNs, ifname: &str) -> Result<()> {
    cmd::require_tool("ethtool", "ethtool")?;
    ns.run("ethtool", ["-K", ifname, "gro", "on", "tx", "off"])?;
    Ok(())
}

/// The backend's answer to each connection: it reads one line and answers
/// `<line> served at <local> for <peer>`, so the client learns which addresses the backend saw.
fn serve(conn: TcpStream, peer: SocketAddr) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.set_write_timeout(Some(Duration::from_secs(3)))?;
    let local = conn.local_addr()?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    (&conn).write_all(format!("{} served at {local} for {peer}\n", line.trim_end()).as_bytes())?;
    Ok(())
}

/// What one client connection saw: its own address and the backend's answer.
struct Exchange {
    local: SocketAddr,
    answer: String,
}

/// Connects from `ns` to `vip:80`, sends `hello`, reads one line (every step bounded by 3 s).
fn talk(ns: &NetNs, vip: SocketAddr, hello: &'static str) -> Result<Exchange> {
    in_netns(ns, move || {
        let conn =
            TcpStream::connect_timeout(&vip, Duration::from_secs(3)).with_context(|| format!("connect {vip}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.set_write_timeout(Some(Duration::from_secs(3)))?;
        (&conn).write_all(format!("{hello}\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&conn).read_line(&mut answer).context("reading the answer")?;
        Ok(Exchange { local: conn.local_addr()?, answer: answer.trim_end().to_string() })
    })
}

/// The three namespaces and their links for one family; routes make the VIP reachable via the
/// node and the backend's replies go back through the node.
struct Lab {
    family: &'static Family,
    client: NetNs,
    node: NetNs,
    backend: NetNs,
}

impl Lab {
    fn new(f: &'static Family) -> Result<Lab> {
        let client = NetNs::new("lbec")?;
        let node = NetNs::new("lben")?;
        let backend = NetNs::new("lbeb")?;
        net::veth(&client, "up0", &node, "cl0")?;
        net::veth(&node, "be0", &backend, "up0")?;
        let len = f.link_len;
        net::add_addr(&client, "up0", &format!("{}/{len}", f.client))?;
        net::add_addr(&node, "cl0", &format!("{}/{len}", f.node_client_side))?;
        net::add_addr(&node, "be0", &format!("{}/{len}", f.node_backend_side))?;
        net::add_addr(&backend, "up0", &format!("{}/{len}", f.backend))?;
        net::enable_forwarding(&node)?;
        client.run("ip", ["route", "add", &format!("{}/{}", f.vip, f.host_len), "via", f.node_client_side])?;
        backend.run("ip", ["route", "add", "default", "via", f.node_backend_side])?;
        // The veth ends without XDP (client, backend) must look like hosts behind real NICs:
        // - GRO on: a veth accepts frames that XDP on another interface redirects to it only when
        //   its receive NAPI runs, which needs an XDP program or GRO on it; otherwise the veth
        //   driver drops them. (Frames the node sends back out the interface they came in on,
        //   XDP_TX, wake the peer at once only when the peer has an XDP program of its own: GRO
        //   is not enough. This test never does that; the lab and lb_fabric give such veth ends a
        //   pass-through XDP program.)
        // - TX checksum offload off: with it, locally sent TCP segments leave with only a partial
        //   checksum (CHECKSUM_PARTIAL) that the kernel completes later; an XDP frame rewritten
        //   or encapsulated by the node and redirected arrives without that state, so the
        //   receiver counts a checksum error (TcpInCsumErrors) and drops it. On a wire, frames
        //   always carry complete checksums, which is what the datapath expects.
        for ns in [&client, &backend] {
            host_like_offloads(ns, "up0")?;
        }
        // bpf_fib_lookup needs resolved neighbours (ARP or ND) to forward in XDP; without them
        // the datapath hands the rewritten packet to the stack, which (NAT: source = our own
        // address) drops it as martian. A ping each way resolves both.
        net::ping(&node, Family::addr(f.client), 1)?;
        net::ping(&node, Family::addr(f.backend), 1)?;
        Ok(Lab { family: f, client, node, backend })
    }

    fn vip(&self) -> SocketAddr {
        Family::socket(self.family.vip, 80)
    }
}

/// `node.snat_ports` of the node: not the default, so that NAT shows it took the setting.
const SNAT_PORTS: &str = "20000-20999";

fn config(name: &str, f: &Family, uplinks: &str, mode: &str, backend_port: u16) -> String {
    format!(
        "[node]\nname = \"{name}\"\nasn = 65101\nrouter_id = \"{}\"\nuplinks = [{uplinks}]\nsnat_ports = \"{SNAT_PORTS}\"\n\n\
         [[services]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n\
         announce = \"local\"\n\
         backends = [ {{ address = \"{}\", port = {backend_port} }} ]\n",
        V4.node_client_side, f.vip, f.backend
    )
}

/// The load balancer's node-wide events that are non-zero, as `(event, count summed over CPUs)`
/// (numbers from `enum fr_lb_event` in ferrule_abi.h), read with bpftool from the pinned map.
fn lb_events(name: &str) -> Result<Vec<(u64, u64)>> {
    events(&format!("/sys/fs/bpf/ferrule/{}/maps/fr_lb_events", name.replace('.', ":")))
}

/// The non-zero entries of the pinned per-CPU array of event counters at `pin`, as
/// `(index, count summed over CPUs)`.
fn events(pin: &str) -> Result<Vec<(u64, u64)>> {
    let dump = cmd::run(std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned", pin]))?;
    let parsed: serde_json::Value = serde_json::from_str(&dump).with_context(|| format!("parsing {dump}"))?;
    let mut seen = Vec::new();
    for entry in parsed.as_array().into_iter().flatten() {
        let key = entry["formatted"]["key"].as_u64().context("event map key")?;
        let values = entry["formatted"]["values"].as_array().into_iter().flatten();
        let total: u64 = values.filter_map(|v| v["value"].as_u64()).sum();
        if total > 0 {
            seen.push((key, total));
        }
    }
    Ok(seen)
}

/// Waits until `show lb services` lists `web` installed with its backend.
fn wait_installed(ferrule: &Ferrule) {
    cmd::poll_until(
        "service web installed in the datapath",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let web = ferrule.show(&["lb", "services"])?[0].clone();
            Ok(web["id"].is_u64() && web["backends"][0]["id"].is_u64())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nferrule log:\n{}", ferrule.log_tail()));
}

/// Talks to the VIP, retrying a few times (bounded) so a first SYN lost while something settles
/// does not fail the test; the last error is reported with the datapath's counters.
fn talk_with_retries(lab: &Lab, ferrule: &Ferrule, name: &str, hello: &'static str) -> Exchange {
    let mut last = None;
    for attempt in 1..=3 {
        match talk(&lab.client, lab.vip(), hello) {
            Ok(x) => {
                println!("client: answered on attempt {attempt} of 3");
                return x;
            }
            Err(e) => last = Some(e),
        }
    }
    // Interface counters and the kernel's SNMP counters (`nstat -a`: non-zero ones) of each side.
    let links = |ns: &NetNs| {
        let links = ns.run("ip", ["-s", "-o", "link"]).unwrap_or_default();
        let snmp = ns.run("nstat", ["-a", "-s"]).unwrap_or_default();
        format!("{links}{snmp}")
    };
    panic!(
        "client could not talk to {}: {:#}\nshow lb services: {}\nlb events: {}\n\
         client links:\n{}node links:\n{}backend links:\n{}ferrule log:\n{}",
        lab.vip(),
        last.unwrap(),
        ferrule.show(&["lb", "services"]).map(|v| v.to_string()).unwrap_or_default(),
        lb_events(name).map(|e| format!("{e:?}")).unwrap_or_else(|e| format!("{e:#}")),
        links(&lab.client),
        links(&lab.node),
        links(&lab.backend),
        ferrule.log_tail()
    )
}

/// `show lb services` and `show lb backends VIP` count what the client sent; the one backend has
/// the whole Maglev table. Returns the service as `show lb services --json` has it.
fn check_counters(ferrule: &Ferrule, f: &Family, backend: SocketAddr) -> serde_json::Value {
    let web = ferrule.show(&["lb", "services"]).unwrap()[0].clone();
    let (packets, new_flows) = (web["packets"].as_u64().unwrap_or(0), web["new_flows"].as_u64().unwrap_or(0));
    let be_packets = web["backends"][0]["packets"].as_u64().unwrap_or(0);
    println!(
        "counters: expected packets > 0, new_flows > 0, backend packets > 0; saw {packets}, {new_flows}, {be_packets}"
    );
    assert!(packets > 0 && new_flows > 0 && be_packets > 0, "{web}");

    let rows = ferrule.show(&["lb", "backends", f.vip]).unwrap();
    let row = &rows[0];
    let seen = (
        rows.as_array().map_or(0, Vec::len),
        row["vip"].as_str(),
        row["address"].as_str(),
        row["backend_port"].as_u64(),
        row["health"].as_str(),
        row["maglev_share"].as_f64(),
    );
    let expected = (1, Some(f.vip), Some(f.backend), Some(u64::from(backend.port())), Some("unchecked"), Some(1.0));
    println!("show lb backends {}: expected {expected:?}, saw {seen:?}", f.vip);
    assert_eq!(seen, expected, "{rows}");
    let (row_packets, row_flows) = (row["packets"].as_u64().unwrap_or(0), row["new_flows"].as_u64().unwrap_or(0));
    println!("  counters: expected the backend's ({be_packets}, {}), saw ({row_packets}, {row_flows})", {
        web["backends"][0]["new_flows"].as_u64().unwrap_or(0)
    });
    assert!(row_packets >= be_packets && row_flows >= 1, "{rows}");
    web
}

/// Where the daemon under test serves `/metrics` inside the node's namespace (the harness passes
/// `--metrics-listen 127.0.0.1:9641`).
const METRICS: &str = "127.0.0.1:9641";

/// `GET /metrics` from inside `ns` (bounded by 3 s per step).
fn scrape(ns: &NetNs) -> Result<String> {
    in_netns(ns, || {
        let addr: SocketAddr = METRICS.parse()?;
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).context("connect to /metrics")?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferrule\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
        Ok(text)
    })
}

/// The value of the series `name` whose labels include every one of `labels` (`key="value"`).
fn series_value(text: &str, name: &str, labels: &[String]) -> Option<u64> {
    text.lines().find_map(|line| {
        let (set, value) = line.strip_prefix(name)?.strip_prefix('{')?.rsplit_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        labels.iter().all(|l| set.contains(&l.as_str())).then(|| value.parse().ok())?
    })
}

/// Counts, with nftables in the client's namespace, the packets it sends to the VIP's port: what
/// the node's load balancer must count for the service.
fn count_sent_to_vip(client: &NetNs, f: &Family) -> Result<()> {
    cmd::require_tool("nft", "nftables")?;
    let ip = if f.host_len == 32 { "ip" } else { "ip6" };
    let rules = format!(
        "table inet ferrule_test {{ chain out {{ type filter hook output priority 0; \
         {ip} daddr {} tcp dport 80 counter; }}; }}",
        f.vip
    );
    client.run("nft", [rules.as_str()])?;
    Ok(())
}

fn sent_to_vip(client: &NetNs) -> Result<u64> {
    let chain = client.run("nft", ["list", "chain", "inet", "ferrule_test", "out"])?;
    let after = chain.split("counter packets ").nth(1).with_context(|| format!("no counter in {chain}"))?;
    after.split_whitespace().next().and_then(|n| n.parse().ok()).with_context(|| format!("counter in {chain}"))
}

/// Sends a few more connections and checks, from `/metrics`, that the VIP's packet counter grew by
/// exactly the packets the client sent to it (counted by nftables in the client's namespace) and
/// the backend's new-flow counter by one per connection.
fn check_metrics_count_what_the_client_sent(lab: &Lab, backend: SocketAddr) {
    const CONNECTIONS: u64 = 3;
    let f = lab.family;
    count_sent_to_vip(&lab.client, f).unwrap();
    let vip =
        vec!["service=\"web\"".to_string(), format!("vip=\"{}\"", f.vip), "port=\"80\"".into(), "proto=\"tcp\"".into()];
    let mut labels = vip.clone();
    labels.push(format!("backend=\"{backend}\""));
    // (VIP packets, backend new flows, packets the client sent to the VIP)
    let read = || -> Result<(u64, u64, u64)> {
        let text = scrape(&lab.node)?;
        let packets = series_value(&text, "ferrule_lb_vip_packets_total", &vip).context("VIP packets series")?;
        let flows = series_value(&text, "ferrule_lb_backend_new_flows_total", &labels).context("new flows series")?;
        Ok((packets, flows, sent_to_vip(&lab.client)?))
    };
    // Earlier connections are closed, but their last packets may still be on their way: start
    // from counters at rest (the same twice in a row).
    let (mut before, mut last) = ((0, 0, 0), None);
    cmd::poll_until("the counters at rest", Duration::from_secs(2), Duration::from_millis(100), || {
        before = read()?;
        Ok(last.replace(before) == Some(before))
    })
    .unwrap();
    for _ in 0..CONNECTIONS {
        let x = talk(&lab.client, lab.vip(), "hello-metrics").unwrap();
        assert!(x.answer.starts_with("hello-metrics served at"), "answer {:?}", x.answer);
    }
    // The last ACKs and FINs may still be on their way: wait (bounded) for the counters to agree.
    let mut grew = (0, 0, 0);
    let settled = cmd::poll_until(
        "the VIP's counters to count what the client sent",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let now = read()?;
            grew = (now.0 - before.0, now.1 - before.1, now.2 - before.2);
            Ok(grew.0 == grew.2 && grew.1 == CONNECTIONS)
        },
    );
    println!(
        "metrics: expected ferrule_lb_vip_packets_total +{} (the client's packets to the VIP, per nftables) and \
         ferrule_lb_backend_new_flows_total +{CONNECTIONS}; saw +{} and +{}",
        grew.2, grew.0, grew.1
    );
    settled.unwrap_or_else(|e| panic!("{e:#}\n/metrics:\n{}", scrape(&lab.node).unwrap_or_else(|e| format!("{e:#}"))));
    // SYN, request and ACK at least, per connection: the counter moved for real traffic.
    assert!(grew.2 >= 3 * CONNECTIONS, "the client sent only {} packets", grew.2);
}

/// NAT mode: the client talks to the VIP, the backend sees the node's address as the source,
/// and the node's XDP translates the replies back.
fn nat_answers_through_the_node(f: &'static Family, label: &str) {
    let dir = TestDir::new(label).unwrap();
    let lab = Lab::new(f).unwrap();
    let backend = Family::socket(f.backend, 8080);
    let _backend = TcpServer::start(&lab.backend, &backend.to_string(), |c, p| drop(serve(c, p))).unwrap();
    let name = format!("{label}{}", std::process::id());
    // XDP on both sides: the client-facing uplink balances, the backend-facing one translates
    // the replies (backend → node:SNAT port) back to VIP → client.
    let mut ferrule =
        Ferrule::new(&lab.node, dir.path(), &name, &config(&name, f, "\"cl0\", \"be0\"", "nat", 8080)).unwrap();
    ferrule.start(&[]).unwrap();
    wait_installed(&ferrule);

    let x = talk_with_retries(&lab, &ferrule, &name, "hello-nat");
    println!("client {}: answer {:?}", x.local, x.answer);
    // The SNAT source is the node's first global address of the family on its uplinks (cl0's).
    let snat = match Family::addr(f.node_client_side) {
        IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let expected_prefix = format!("hello-nat served at {backend} for {snat}:");
    println!("NAT answer: expected to start with {expected_prefix:?} (backend sees the node's SNAT address)");
    assert!(x.answer.starts_with(&expected_prefix), "answer {:?}", x.answer);
    let snat_port: u16 = x.answer[expected_prefix.len()..].parse().expect("SNAT port in the answer");
    println!("SNAT port seen by the backend: {snat_port} (client port {}), expected in {SNAT_PORTS}", x.local.port());
    assert!((20_000..=20_999).contains(&snat_port), "SNAT port {snat_port} outside node.snat_ports {SNAT_PORTS}");

    let web = check_counters(&ferrule, f, backend);
    println!("service: {web}");
    check_metrics_count_what_the_client_sent(&lab, backend);
    // The backend's answers were translated back by XDP on be0 (FR_LB_EV_NAT_REPLY), not by
    // the kernel, which has no state for the SNAT port and would have reset the connection.
    const FR_LB_EV_NAT_REPLY: u64 = 9;
    let events = lb_events(&name).unwrap();
    let replies = events.iter().find(|(e, _)| *e == FR_LB_EV_NAT_REPLY).map_or(0, |(_, n)| *n);
    println!("NAT replies translated by XDP: expected > 0, saw {replies} (all events {events:?})");
    assert!(replies > 0, "events {events:?}");
    // `show lb events --json` has every event by name, and reads the same map (counted since: >=).
    let shown = ferrule.show(&["lb", "events"]).unwrap();
    let mut keys: Vec<&str> = shown.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    keys.sort_unstable();
    let all = [
        "malformed",
        "ext_hdr_limit",
        "frag_unknown",
        "fib_pass",
        "mtu_pass",
        "nat_unhandled",
        "icmp_forwarded",
        "icmp_no_flow",
        "frag_forwarded",
        "nat_reply",
        "vlan_redirect",
        "too_big",
    ];
    let mut sorted = all;
    sorted.sort_unstable();
    let shown_replies = shown["nat_reply"].as_u64().unwrap_or(0);
    println!("show lb events: expected keys {sorted:?} and nat_reply >= {replies}, saw {keys:?} and {shown_replies}");
    assert!(keys == sorted && shown_replies >= replies, "{shown}");
    ferrule.stop().unwrap();
}

#[test]
fn nat_service_answers_a_client_through_the_xdp_load_balancer() {
    if !ferrule_tests::privileged() {
        return;
    }
    nat_answers_through_the_node(&V4, "lbnat");
}

#[test]
fn nat66_service_answers_an_ipv6_client_through_the_xdp_load_balancer() {
    if !ferrule_tests::privileged() {
        return;
    }
    nat_answers_through_the_node(&V6, "lbnat6");
}

/// Removes the backend's `tc_decap` pins when the test ends: its link is pinned, so removing the
/// pin is what detaches it.
struct DecapPins(PathBuf);

impl Drop for DecapPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the DSR backend runs `tc_decap`.
#[derive(Clone, Copy, PartialEq)]
enum DecapBy {
    /// `ferrule decap attach`, nothing else Ferrule on the backend (a VM or legacy host).
    Cli,
    /// A Ferrule daemon on the backend with `[decap]` in its config.
    Daemon,
}

/// DSR mode: the backend has the VIP on its loopback, `tc_decap` (installed as `by` says) strips
/// the tunnel header, and the answer goes from the VIP straight to the client.
fn dsr_answers_from_the_backend(f: &'static Family, label: &str, by: DecapBy) {
    let dir = TestDir::new(label).unwrap();
    let lab = Lab::new(f).unwrap();
    lab.backend.run("ip", ["addr", "add", &format!("{}/{}", f.vip, f.host_len), "dev", "lo"]).unwrap();
    let bpffs = ferrule_tests::bpffs::ensure_host_bpffs().unwrap();
    // The name tc_decap's pins live under: the CLI's --name, or the backend daemon's node name.
    let decap_node = format!("{label}be{}", std::process::id());
    let _pins = DecapPins(bpffs.join("ferrule").join(&decap_node));
    let backend = Family::addr(f.backend);
    // DSR keeps the client's destination port: the backend serves the VIP's port.
    let backend_socket = SocketAddr::new(backend, 80);
    let decap = |args: &[&str]| ferrule_tests::ferrule::decap(&lab.backend, args).unwrap();
    let backend_config = |with_decap: bool| {
        let decap = if with_decap {
            format!("\n[decap]\ninterfaces = [\"up0\"]\naddresses = [\"{}\"]\n", f.backend)
        } else {
            String::new()
        };
        format!(
            "[node]\nname = \"{decap_node}\"\nasn = 65102\nrouter_id = \"192.0.2.12\"\n\n[bgp]\nlisten_port = 0\n{decap}"
        )
    };
    let mut backend_daemon = None;
    match by {
        DecapBy::Cli => {
            let refused = decap(&["attach", "--interface", "nosuch0", "--address", f.backend, "--name", &decap_node]);
            let refusal = ferrule_tests::ferrule::text(&refused.stderr);
            println!("decap attach to a missing interface: exit {:?}, {}", refused.status.code(), refusal.trim());
            assert!(!refused.status.success() && refusal.contains("no such interface"), "{refusal}");
            assert!(!bpffs.join("ferrule").join(&decap_node).exists(), "a refused attach pins nothing");
            let attached = decap(&["attach", "--interface", "up0", "--address", f.backend, "--name", &decap_node]);
            println!("decap attach: {}", ferrule_tests::ferrule::text(&attached.stdout).trim());
            assert!(attached.status.success(), "{}", ferrule_tests::ferrule::text(&attached.stderr));
        }
        DecapBy::Daemon => {
            let mut daemon = Ferrule::new(&lab.backend, dir.path(), &decap_node, &backend_config(true)).unwrap();
            daemon.start(&[]).unwrap();
            let status = daemon.show(&["status"]).unwrap();
            println!("backend daemon status: datapath.decap = {}", status["datapath"]["decap"]);
            assert_eq!(
                status["datapath"]["decap"],
                serde_json::json!({ "interfaces": [{ "name": "up0", "attached": true, "error": null }],
                                    "addresses": [f.backend] })
            );
            // A restarted daemon (an upgrade) attaches its own program in place of the link the
            // previous process pinned; the tunnels keep being stripped (checked by the traffic
            // below).
            daemon.stop().unwrap();
            daemon.start(&[]).unwrap();
            let status = daemon.show(&["status"]).unwrap();
            assert_eq!(status["datapath"]["decap"]["interfaces"][0]["attached"], true, "after a restart: {status}");
            // The command does not change what the daemon owns (it would undo it).
            for args in [&["attach", "--address", "192.0.2.99"][..], &["detach", "--all"][..]] {
                let out = decap(&[args, &["--name", &decap_node][..]].concat());
                let err = ferrule_tests::ferrule::text(&out.stderr);
                println!("decap {args:?} on the daemon's node: exit {:?}, {}", out.status.code(), err.trim());
                assert!(!out.status.success() && err.contains("set `[decap]` in its config"), "{err}");
            }
            backend_daemon = Some(daemon);
        }
    }
    let _backend = TcpServer::start(&lab.backend, &lab.vip().to_string(), |c, p| drop(serve(c, p))).unwrap();

    let name = format!("{label}{}", std::process::id());
    // DSR needs XDP only where clients arrive; replies leave the backend through the kernel.
    let mut ferrule = Ferrule::new(&lab.node, dir.path(), &name, &config(&name, f, "\"cl0\"", "dsr", 80)).unwrap();
    ferrule.start(&[]).unwrap();
    wait_installed(&ferrule);

    let x = talk_with_retries(&lab, &ferrule, &name, "hello-dsr");
    println!("client {}: answer {:?}", x.local, x.answer);
    // The backend accepted on the VIP itself and saw the client's own address and port: the
    // packet reached it unchanged inside the tunnel, and its answer (source = VIP) went straight
    // back through the kernel's routes.
    let expected = format!("hello-dsr served at {} for {}", lab.vip(), x.local);
    println!("DSR answer: expected {expected:?}");
    assert_eq!(x.answer, expected);

    let web = check_counters(&ferrule, f, backend_socket);
    println!("service: {web}");
    check_metrics_count_what_the_client_sent(&lab, backend_socket);

    // Every packet the load balancer sent the backend arrived in a tunnel of the backend's family
    // (IPIP, IP6IP6), addressed to the one address `tc_decap` accepts, and was decapsulated.
    const FR_DECAP_EV_DECAPSULATED: u64 = 0;
    let sent = ferrule.show(&["lb", "services"]).unwrap()[0]["backends"][0]["packets"].as_u64().unwrap_or(0);
    let pin = bpffs.join("ferrule").join(&decap_node).join("maps/fr_decap_events");
    let events = events(pin.to_str().unwrap()).unwrap();
    let decapsulated = events.iter().find(|(e, _)| *e == FR_DECAP_EV_DECAPSULATED).map_or(0, |(_, n)| *n);
    println!(
        "tc_decap: expected {sent} packets decapsulated (what the backend was sent), saw {decapsulated} ({events:?})"
    );
    assert_eq!(decapsulated, sent, "decap events {events:?}");

    // `ferrule decap show` reads the same (the daemon's decap too, under its node name): the link
    // on up0 attached, the backend's address, the count bpftool read.
    let shown = decap(&["show", "--json", "--name", &decap_node]);
    assert!(shown.status.success(), "{}", ferrule_tests::ferrule::text(&shown.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    println!("decap show --json: {shown}");
    assert_eq!(shown["interfaces"], serde_json::json!([{ "interface": "up0", "attached": true }]));
    assert_eq!(shown["addresses"], serde_json::json!([f.backend]));
    assert_eq!(shown["events"]["decapsulated"], decapsulated);
    if backend_daemon.is_some() {
        // The backend daemon's metrics say the same.
        let text = scrape(&lab.backend).unwrap();
        let series = format!("ferrule_decap_packets_total{{event=\"decapsulated\"}} {decapsulated}");
        println!("backend daemon metrics: expected {series:?}");
        assert!(text.lines().any(|l| l == series), "{text}");
    }

    // Every link here has MTU 1500, so the client's full-sized segments (1500-byte packets) do
    // not fit the link to the backend once encapsulated. The node answers them with ICMP "too
    // big" from the VIP, the client's path MTU discovery shrinks its segments, and a 64 KiB
    // request arrives whole (without the answer it would stall: the old behaviour passed such
    // packets to the node's stack, which does not forward tunnels from its own address).
    const FR_LB_EV_TOO_BIG: u64 = 11;
    let big: &'static str = Box::leak("x".repeat(64 * 1024).into_boxed_str());
    // The answers leave by XDP_TX (back out of cl0), which a veth delivers at once only to a peer
    // with an XDP program of its own (see Lab::new): the client's end gets xdp_sink, which passes
    // everything but IPv4 UDP (this client sends none).
    let _client_xdp = in_netns(&lab.client, || Ok(ferrule_ebpf::XdpSink::attach("up0")?)).unwrap();
    let x = talk(&lab.client, lab.vip(), big).unwrap_or_else(|e| panic!("64 KiB request: {e:#}"));
    let tail = format!(" served at {} for {}", lab.vip(), x.local);
    println!("64 KiB request: answer of {} bytes, expected {}", x.answer.len(), big.len() + tail.len());
    assert!(x.answer.len() == big.len() + tail.len() && x.answer.starts_with(big) && x.answer.ends_with(&tail));
    let events = lb_events(&name).unwrap();
    let too_big = events.iter().find(|(e, _)| *e == FR_LB_EV_TOO_BIG).map_or(0, |(_, n)| *n);
    let route = lab.client.run("ip", ["route", "get", f.vip]).unwrap();
    let pmtu = if f.host_len == 32 { "mtu 1480" } else { "mtu 1460" };
    println!("too_big answers: {too_big} (events {events:?}); client: {}", route.trim());
    assert!(too_big > 0 && route.contains(pmtu), "expected {pmtu} in the client's route cache");
    ferrule.stop().unwrap();

    // Removing it detaches the program (its tcx link is gone) and leaves no pin of it behind.
    let link_pin = bpffs.join("ferrule").join(&decap_node).join("links/tc_decap:ingress:up0");
    let link =
        cmd::run(std::process::Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(&link_pin)).unwrap();
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    const BPF_LINK_TYPE_TCX: u64 = 11;
    assert_eq!(link["type"], BPF_LINK_TYPE_TCX, "{link}");
    let link_id = link["id"].as_u64().unwrap().to_string();
    match &backend_daemon {
        None => {
            let removed = decap(&["detach", "--all", "--name", &decap_node]);
            assert!(removed.status.success(), "{}", ferrule_tests::ferrule::text(&removed.stderr));
            assert!(!bpffs.join("ferrule").join(&decap_node).exists(), "pins removed");
        }
        Some(daemon) => {
            // `[decap]` taken out of the running config.
            let applied = daemon.apply(&backend_config(false)).unwrap();
            assert!(applied.status.success(), "{}", ferrule_tests::ferrule::text(&applied.stderr));
            cmd::poll_until(
                "the backend daemon to drop tc_decap",
                Duration::from_secs(10),
                Duration::from_millis(50),
                || Ok(daemon.show(&["status"])?["datapath"].get("decap").is_none()),
            )
            .unwrap();
            assert!(!link_pin.exists() && !pin.exists(), "tc_decap's pins removed");
            assert!(
                bpffs.join("ferrule").join(&decap_node).join("maps/fr_lb_services").exists(),
                "the daemon's own pins stay"
            );
        }
    }
    let after = cmd::output(std::process::Command::new("bpftool").args(["link", "show", "id", &link_id])).unwrap();
    println!("after removing tc_decap: bpftool link show id {link_id}: exit {:?}", after.status.code());
    assert!(!after.status.success(), "link {link_id} still exists");
    let gone = decap(&["show", "--name", &decap_node]);
    assert!(!gone.status.success() && ferrule_tests::ferrule::text(&gone.stderr).contains("not installed"));
}

#[test]
fn dsr_service_answers_the_client_directly_from_the_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    dsr_answers_from_the_backend(&V4, "lbdsr", DecapBy::Cli);
}

#[test]
fn dsr_ip6ip6_service_answers_an_ipv6_client_directly_from_the_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    dsr_answers_from_the_backend(&V6, "lbdsr6", DecapBy::Daemon);
}
