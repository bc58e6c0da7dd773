//! The XDP load balancer end to end: a client in its own namespace connects over TCP to a VIP
//! served by `ferrule daemon` (XDP on the node's uplinks) and gets the answer of a backend in a
//! third namespace, in NAT mode (both directions translated by the node) and in DSR mode (IPIP to
//! the backend, decapsulated there by `tc_decap`, answer straight from the VIP).
//!
//! Topology (all addresses documentation ranges, all links veth):
//!
//! ```text
//! client up0 192.0.2.2 ── cl0 192.0.2.1  node (ferrule)  be0 198.51.100.1 ── up0 198.51.100.2 backend
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrule_tests::{cmd, in_netns, net, Ferrule, NetNs, TcpServer, TestDir};

const VIP: &str = "203.0.113.10";
const CLIENT: &str = "192.0.2.2";
const NODE_CLIENT_SIDE: &str = "192.0.2.1";
const NODE_BACKEND_SIDE: &str = "198.51.100.1";
const BACKEND: &str = "198.51.100.2";

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

/// Connects from `ns` to `VIP:80`, sends `hello`, reads one line (every step bounded by 3 s).
fn talk(ns: &NetNs, hello: &'static str) -> Result<Exchange> {
    in_netns(ns, move || {
        let vip: SocketAddr = format!("{VIP}:80").parse()?;
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

/// The three namespaces and their links; routes make the VIP reachable via the node and the
/// backend's replies go back through the node.
struct Lab {
    client: NetNs,
    node: NetNs,
    backend: NetNs,
}

impl Lab {
    fn new() -> Result<Lab> {
        let client = NetNs::new("lbec")?;
        let node = NetNs::new("lben")?;
        let backend = NetNs::new("lbeb")?;
        net::veth(&client, "up0", &node, "cl0")?;
        net::veth(&node, "be0", &backend, "up0")?;
        net::add_addr(&client, "up0", &format!("{CLIENT}/24"))?;
        net::add_addr(&node, "cl0", &format!("{NODE_CLIENT_SIDE}/24"))?;
        net::add_addr(&node, "be0", &format!("{NODE_BACKEND_SIDE}/24"))?;
        net::add_addr(&backend, "up0", &format!("{BACKEND}/24"))?;
        net::enable_forwarding(&node)?;
        client.run("ip", ["route", "add", &format!("{VIP}/32"), "via", NODE_CLIENT_SIDE])?;
        backend.run("ip", ["route", "add", "default", "via", NODE_BACKEND_SIDE])?;
        // The veth ends without XDP (client, backend) must look like hosts behind real NICs:
        // - GRO on: a veth accepts frames that XDP on its peer redirects or XDP_TXes only when its
        //   receive NAPI runs, which needs an XDP program or GRO on it; otherwise the veth driver
        //   drops everything the node's load balancer forwards to them.
        // - TX checksum offload off: with it, locally sent TCP segments leave with only a partial
        //   checksum (CHECKSUM_PARTIAL) that the kernel completes later; an XDP frame rewritten
        //   or encapsulated by the node and redirected arrives without that state, so the
        //   receiver counts a checksum error (TcpInCsumErrors) and drops it. On a wire, frames
        //   always carry complete checksums, which is what the datapath expects.
        for ns in [&client, &backend] {
            host_like_offloads(ns, "up0")?;
        }
        // bpf_fib_lookup needs resolved neighbours to forward in XDP; without them the datapath
        // hands the rewritten packet to the stack, which (NAT: source = our own address) drops
        // it as martian. A ping each way resolves both.
        net::ping(&node, CLIENT.parse()?, 1)?;
        net::ping(&node, BACKEND.parse()?, 1)?;
        Ok(Lab { client, node, backend })
    }
}

fn config(name: &str, uplinks: &str, mode: &str, backend_port: u16) -> String {
    format!(
        "[node]\nname = \"{name}\"\nasn = 65101\nrouter_id = \"{NODE_CLIENT_SIDE}\"\nuplinks = [{uplinks}]\n\n\
         [[services]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n\
         announce = \"local\"\n\
         backends = [ {{ address = \"{BACKEND}\", port = {backend_port} }} ]\n"
    )
}

/// The load balancer's node-wide events that are non-zero, as `(event, count summed over CPUs)`
/// (numbers from `enum fr_lb_event` in ferrule_abi.h), read with bpftool from the pinned map.
fn lb_events(name: &str) -> Result<Vec<(u64, u64)>> {
    let pin = format!("/sys/fs/bpf/ferrule/{}/maps/fr_lb_events", name.replace('.', ":"));
    let dump = cmd::run(std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned", &pin]))?;
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
        match talk(&lab.client, hello) {
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
        "client could not talk to {VIP}:80: {:#}\nshow lb services: {}\nlb events: {}\n\
         client links:\n{}node links:\n{}backend links:\n{}ferrule log:\n{}",
        last.unwrap(),
        ferrule.show(&["lb", "services"]).map(|v| v.to_string()).unwrap_or_default(),
        lb_events(name).map(|e| format!("{e:?}")).unwrap_or_else(|e| format!("{e:#}")),
        links(&lab.client),
        links(&lab.node),
        links(&lab.backend),
        ferrule.log_tail()
    )
}

fn check_counters(ferrule: &Ferrule) -> serde_json::Value {
    let web = ferrule.show(&["lb", "services"]).unwrap()[0].clone();
    let (packets, new_flows) = (web["packets"].as_u64().unwrap_or(0), web["new_flows"].as_u64().unwrap_or(0));
    let be_packets = web["backends"][0]["packets"].as_u64().unwrap_or(0);
    println!(
        "counters: expected packets > 0, new_flows > 0, backend packets > 0; saw {packets}, {new_flows}, {be_packets}"
    );
    assert!(packets > 0 && new_flows > 0 && be_packets > 0, "{web}");
    web
}

#[test]
fn nat_service_answers_a_client_through_the_xdp_load_balancer() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("lbnat").unwrap();
    let lab = Lab::new().unwrap();
    let _backend = TcpServer::start(&lab.backend, "198.51.100.2:8080", |c, p| drop(serve(c, p))).unwrap();
    let name = format!("lbnat{}", std::process::id());
    // XDP on both sides: the client-facing uplink balances, the backend-facing one translates
    // the replies (backend → node:SNAT port) back to VIP → client.
    let mut ferrule =
        Ferrule::new(&lab.node, dir.path(), &name, &config(&name, "\"cl0\", \"be0\"", "nat", 8080)).unwrap();
    ferrule.start(&[]).unwrap();
    wait_installed(&ferrule);

    let x = talk_with_retries(&lab, &ferrule, &name, "hello-nat");
    println!("client {}: answer {:?}", x.local, x.answer);
    let expected_prefix = format!("hello-nat served at {BACKEND}:8080 for {NODE_CLIENT_SIDE}:");
    println!("NAT answer: expected to start with {expected_prefix:?} (backend sees the node's SNAT address)");
    assert!(x.answer.starts_with(&expected_prefix), "answer {:?}", x.answer);
    let snat_port: u16 = x.answer[expected_prefix.len()..].parse().expect("SNAT port in the answer");
    println!("SNAT port seen by the backend: {snat_port} (client port {})", x.local.port());

    let web = check_counters(&ferrule);
    println!("service: {web}");
    // The backend's answers were translated back by XDP on be0 (FR_LB_EV_NAT_REPLY), not by
    // the kernel, which has no state for the SNAT port and would have reset the connection.
    const FR_LB_EV_NAT_REPLY: u64 = 9;
    let events = lb_events(&name).unwrap();
    let replies = events.iter().find(|(e, _)| *e == FR_LB_EV_NAT_REPLY).map_or(0, |(_, n)| *n);
    println!("NAT replies translated by XDP: expected > 0, saw {replies} (all events {events:?})");
    assert!(replies > 0, "events {events:?}");
    ferrule.stop().unwrap();
}

/// Removes the backend's `tc_decap` pins when the test ends: its link is pinned, so removing the
/// pin is what detaches it.
struct DecapPins(PathBuf);

impl Drop for DecapPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dsr_service_answers_the_client_directly_from_the_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("lbdsr").unwrap();
    let lab = Lab::new().unwrap();
    lab.backend.run("ip", ["addr", "add", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    let bpffs = ferrule_tests::bpffs::ensure_host_bpffs().unwrap();
    let decap_node = format!("lbdsrbe{}", std::process::id());
    let _pins = DecapPins(bpffs.join("ferrule").join(&decap_node));
    let root = bpffs.to_path_buf();
    let dn = decap_node.clone();
    in_netns(&lab.backend, move || {
        let mut decap = ferrule_ebpf::Decap::open_at(&root, &dn)?;
        decap.allow_address(BACKEND.parse::<IpAddr>()?)?;
        decap.attach("up0")?;
        Ok(())
    })
    .unwrap();
    let _backend = TcpServer::start(&lab.backend, "203.0.113.10:80", |c, p| drop(serve(c, p))).unwrap();

    let name = format!("lbdsr{}", std::process::id());
    // DSR needs XDP only where clients arrive; replies leave the backend through the kernel.
    let mut ferrule = Ferrule::new(&lab.node, dir.path(), &name, &config(&name, "\"cl0\"", "dsr", 80)).unwrap();
    ferrule.start(&[]).unwrap();
    wait_installed(&ferrule);

    let x = talk_with_retries(&lab, &ferrule, &name, "hello-dsr");
    println!("client {}: answer {:?}", x.local, x.answer);
    // The backend accepted on the VIP itself and saw the client's own address and port: the
    // packet reached it unchanged inside the tunnel, and its answer (source = VIP) went straight
    // back through the kernel's routes.
    let expected = format!("hello-dsr served at {VIP}:80 for {}", x.local);
    println!("DSR answer: expected {expected:?}");
    assert_eq!(x.answer, expected);

    let web = check_counters(&ferrule);
    println!("service: {web}");
    ferrule.stop().unwrap();
}
