//! Packets per second through the XDP load balancer against nftables DNAT, in one run, on the same
//! namespaces, links, sender and sink. It owns its namespaces, daemon, nftables tables and sender
//! thread only; all traffic is UDP between the namespaces it creates, in documentation ranges.
//!
//! ```text
//! source up0 192.0.2.2 ── lb0 192.0.2.1  node  be0 198.51.100.1 ── up0 198.51.100.2 backend
//! ```
//!
//! - **Source**: one thread in the source namespace floods `VIP 203.0.113.10:9000` with UDP
//!   datagrams from `LB_PPS_SOCKETS` sockets (source ports 20000..), `sendmmsg` in batches of 64,
//!   non-blocking, for the warm-up plus the window, bounded by `LB_PPS_MAX_PACKETS` too.
//! - **Node**, either `ferrule daemon` with one UDP service in NAT mode (DNAT to the backend,
//!   SNAT to the node, as nftables does below), XDP native on `lb0` and `be0`; or, with every
//!   Ferrule pin removed (so XDP is detached, checked), an nftables `dnat` + `snat` pair in the
//!   node's namespace with the kernel forwarding.
//! - **Backend**: a named nftables counter at the earliest prerouting hook counts the datagrams
//!   that arrive and drops them, so the sink costs the same little in both runs and no process has
//!   to keep up.
//!
//! The figure is delivered datagrams per second: the backend counter's increase over a fixed
//! window (`LB_PPS_WINDOW_SECS`, default 5) after a 1 s warm-up, next to what the sender offered
//! in that window and how busy the CPUs were. The two paths alternate for `LB_PPS_ROUNDS` rounds
//! (default 3) and each figure is the median of its rounds; the ratio is of the medians.
//!
//! What it measures, honestly:
//! - Sender, node and backend share this machine's CPUs (2 here), with whatever else runs on it
//!   (the load average is printed). With `LB_PPS_NAPI=threaded` (the default) each receiving veth
//!   end polls in a NAPI kernel thread the scheduler may put on another CPU than the sender; with
//!   `inline` that processing runs in softirq on the sending CPU, inside the sender's syscalls.
//! - When `delivered` is ~100% of `offered`, the sender was the limit, and the pps figure says how
//!   much CPU the path left to the sender rather than what the path could forward.
//! - On a veth, XDP gets the locally sent datagram as an skb, which the driver copies into a page
//!   with XDP headroom (a NIC's XDP runs on the DMA buffer), and the frame redirected to the
//!   backend's veth becomes an skb again there; nftables keeps the one skb throughout. So the
//!   figures compare both datapaths under identical conditions on veth, where XDP pays for
//!   conversions it would not pay on a NIC: they are not either path's line rate on NICs, which is
//!   where the issue's goal (>= 5x) has to be checked.
//!
//! Knobs: `LB_PPS_WINDOW_SECS`, `LB_PPS_ROUNDS`, `LB_PPS_SOCKETS` (source ports),
//! `LB_PPS_MAX_PACKETS` (per flood), `LB_PPS_NAPI=threaded|inline`.
//!
//! Run as root: `cargo build -p ferrule && cargo bench -p ferrule-tests --bench lb_pps`
//! (`FERRULE_BIN` picks another daemon binary).

use std::fs::File;
use std::io::IoSlice;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferrule_tests::{cmd, net, Ferrule, NetNs, TestDir};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use serde_json::Value;

const VIP: &str = "203.0.113.10";
const PORT: u16 = 9000;
const SOURCE: &str = "192.0.2.2";
const NODE_SOURCE_SIDE: &str = "192.0.2.1";
const NODE_BACKEND_SIDE: &str = "198.51.100.1";
const BACKEND: &str = "198.51.100.2";
const FIRST_SOURCE_PORT: u16 = 20_000;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;
/// UDP payload: 18 bytes make the smallest Ethernet frame (60 bytes before the FCS).
const PAYLOAD: usize = 18;
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the sender keeps going after the window closes, so the window never sees it stop.
const TAIL: Duration = Duration::from_millis(500);

struct Knobs {
    window: Duration,
    rounds: usize,
    sockets: u16,
    max_packets: u64,
    /// Threaded NAPI on the receiving veth ends (`LB_PPS_NAPI=threaded`, the default) or their
    /// processing inline in the sender's softirqs (`LB_PPS_NAPI=inline`).
    threaded: bool,
}

impl Knobs {
    fn from_env() -> Result<Knobs> {
        let number = |var: &str, default: u64| -> Result<u64> {
            match std::env::var(var) {
                Ok(v) => {
                    v.trim().parse().ok().filter(|&n| n >= 1).with_context(|| format!("{var} must be an integer >= 1"))
                }
                Err(_) => Ok(default),
            }
        };
        Ok(Knobs {
            window: Duration::from_secs(number("LB_PPS_WINDOW_SECS", 5)?.min(60)),
            rounds: number("LB_PPS_ROUNDS", 3)?.min(10) as usize,
            sockets: number("LB_PPS_SOCKETS", 64)?.min(1024) as u16,
            max_packets: number("LB_PPS_MAX_PACKETS", 200_000_000)?,
            threaded: match std::env::var("LB_PPS_NAPI").as_deref() {
                Ok("threaded") | Err(_) => true,
                Ok("inline") => false,
                Ok(other) => bail!("LB_PPS_NAPI={other}: use threaded or inline"),
            },
        })
    }
}

/// The three namespaces and their links.
struct Lab {
    source: NetNs,
    node: NetNs,
    backend: NetNs,
}

impl Lab {
    fn new(dir: &TestDir, threaded: bool) -> Result<Lab> {
        let source = NetNs::new("ppss")?;
        let node = NetNs::new("ppsn")?;
        let backend = NetNs::new("ppsb")?;
        net::veth(&source, "up0", &node, "lb0")?;
        net::veth(&node, "be0", &backend, "up0")?;
        net::add_addr(&source, "up0", &format!("{SOURCE}/24"))?;
        net::add_addr(&node, "lb0", &format!("{NODE_SOURCE_SIDE}/24"))?;
        net::add_addr(&node, "be0", &format!("{NODE_BACKEND_SIDE}/24"))?;
        net::add_addr(&backend, "up0", &format!("{BACKEND}/24"))?;
        net::enable_forwarding(&node)?;
        source.run("ip", ["route", "add", &format!("{VIP}/32"), "via", NODE_SOURCE_SIDE])?;
        backend.run("ip", ["route", "add", "default", "via", NODE_BACKEND_SIDE])?;
        // The ends without XDP behave like hosts behind NICs (see tests/tests/lb_e2e.rs): GRO on,
        // so frames the node's XDP redirects are received; TX checksum offload off, so datagrams
        // leave with complete checksums that the node's NAT can update.
        cmd::require_tool("ethtool", "ethtool")?;
        cmd::require_tool("nft", "nftables")?;
        for ns in [&source, &backend] {
            ns.run("ethtool", ["-K", "up0", "gro", "on", "tx", "off"])?;
        }
        if threaded {
            // Each receiving veth end polls in a kernel thread of its own (threaded NAPI; GRO on
            // makes a veth without XDP use NAPI too), which the scheduler can run on another CPU
            // than the sender, as a NIC's receive processing runs apart from the remote sender.
            node.run("ethtool", ["-K", "lb0", "gro", "on"])?;
            for (ns, dev) in [(&node, "lb0"), (&backend, "up0")] {
                ns.run("sh", ["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")])?;
            }
        }
        // The sink: count and drop at the first hook, before conntrack.
        let sink = dir.path().join("sink.nft");
        std::fs::write(
            &sink,
            format!(
                "table inet frsink {{\n  counter delivered {{ }}\n  chain pre {{\n    type filter hook prerouting \
                 priority raw; policy accept;\n    udp dport {PORT} counter name \"delivered\" drop\n  }}\n}}\n"
            ),
        )?;
        backend.run("nft", ["-f", &sink.display().to_string()])?;
        // Resolved neighbours both ways: XDP forwards only to neighbours the kernel knows.
        net::ping(&node, SOURCE.parse()?, 1)?;
        net::ping(&node, BACKEND.parse()?, 1)?;
        Ok(Lab { source, node, backend })
    }

    /// Datagrams the backend's sink has counted.
    fn delivered(&self) -> Result<u64> {
        let out = self.backend.run("nft", ["-j", "list", "counter", "inet", "frsink", "delivered"])?;
        let parsed: Value = serde_json::from_str(&out).with_context(|| format!("parsing {out}"))?;
        parsed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|item| item["counter"]["packets"].as_u64())
            .with_context(|| format!("no counter in {out}"))
    }

    /// Interface and SNMP counters of every namespace, for a failure message.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (what, ns) in [("source", &self.source), ("node", &self.node), ("backend", &self.backend)] {
            let links = ns.run("ip", ["-s", "-d", "link"]).unwrap_or_default();
            let snmp = ns.run("nstat", ["-a", "-s"]).unwrap_or_default();
            let neigh = ns.run("ip", ["neigh"]).unwrap_or_default();
            out.push_str(&format!("--- {what} ---\n{links}{neigh}{snmp}"));
        }
        out
    }

    /// Whether an XDP program is attached to the node's `lb0`.
    fn xdp_on_lb0(&self) -> Result<bool> {
        Ok(self.node.run("ip", ["-d", "link", "show", "dev", "lb0"])?.contains("prog/xdp"))
    }
}

/// Jiffies of all CPUs from /proc/stat: user (+nice), system, softirq (+irq), and total.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: u64,
    system: u64,
    softirq: u64,
    total: u64,
}

impl Cpu {
    fn read() -> Result<Cpu> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        // user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Ok(Cpu { user: at(0) + at(1), system: at(2), softirq: at(5) + at(6), total: (0..8).map(at).sum() })
    }

    /// Shares of the time between `self` and `later`: (busy, user, system, softirq).
    fn shares(&self, later: &Cpu) -> (f64, f64, f64, f64) {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / total;
        let (user, system, softirq) =
            (share(self.user, later.user), share(self.system, later.system), share(self.softirq, later.softirq));
        (user + system + softirq, user, system, softirq)
    }
}

/// The flood: a thread in the source namespace, stopped by `stop`, at `until`, or after
/// `max_packets`, whichever comes first. `sent` counts datagrams the kernel accepted.
struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Sender {
    fn start(ns: &NetNs, sockets: u16, until: Instant, max_packets: u64) -> Result<Sender> {
        let netns = File::open(format!("/run/netns/{}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            setns(&netns, CloneFlags::CLONE_NEWNET).context("setns into the source namespace")?;
            let socks = (0..sockets)
                .map(|i| {
                    let sock = UdpSocket::bind((SOURCE, FIRST_SOURCE_PORT + i))?;
                    sock.set_nonblocking(true)?;
                    Ok(sock)
                })
                .collect::<std::io::Result<Vec<_>>>()
                .context("binding the sender's sockets")?;
            let vip = SockaddrIn::from(SocketAddrV4::new(VIP.parse()?, PORT));
            let payload = [0x5au8; PAYLOAD];
            let iovs: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&payload)]).collect();
            let addrs = vec![Some(vip); BATCH];
            let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
            let mut total = 0u64;
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            while !flag.load(Ordering::Relaxed) && total < max_packets && Instant::now() < until {
                for sock in &socks {
                    match sendmmsg(sock.as_raw_fd(), &mut headers, &iovs, &addrs, no_cmsgs, MsgFlags::MSG_DONTWAIT) {
                        Ok(results) => total += results.count() as u64,
                        // A full socket buffer or device queue: what was not taken is not sent.
                        Err(Errno::EAGAIN | Errno::ENOBUFS) => {}
                        Err(e) => return Err(e).context("sendmmsg"),
                    }
                }
                count.store(total, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Sender { stop, sent, thread: Some(thread) })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for the sender to reach its own end (its deadline or packet count).
    fn finish(mut self) -> Result<u64> {
        let thread = self.thread.take().context("sender already finished")?;
        thread.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
        Ok(self.sent())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One path's figures over the window.
#[derive(Clone, Copy)]
struct Measured {
    delivered: u64,
    offered: u64,
    elapsed: Duration,
    /// Shares of all CPUs' time in the window: busy, user, system, softirq.
    cpu: (f64, f64, f64, f64),
}

impl Measured {
    fn pps(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn offered_pps(&self) -> f64 {
        self.offered as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU time (all CPUs, everything running) per delivered datagram.
    fn cpu_ns_per_packet(&self, cpus: usize) -> f64 {
        self.cpu.0 * cpus as f64 * self.elapsed.as_secs_f64() * 1e9 / self.delivered.max(1) as f64
    }
}

/// Checks that a few datagrams get through, then floods for the warm-up and the window and
/// reads the counters at the window's edges.
fn measure(lab: &Lab, knobs: &Knobs) -> Result<Measured> {
    let before = lab.delivered()?;
    let probe = Sender::start(&lab.source, 1, Instant::now() + Duration::from_millis(200), BATCH as u64)?;
    probe.finish()?;
    cmd::poll_until("the first datagrams at the backend", Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(lab.delivered()? > before)
    })
    .with_context(|| lab.diagnostics())?;

    let sender =
        Sender::start(&lab.source, knobs.sockets, Instant::now() + WARM_UP + knobs.window + TAIL, knobs.max_packets)?;
    std::thread::sleep(WARM_UP);
    let (delivered0, sent0, cpu0, t0) = (lab.delivered()?, sender.sent(), Cpu::read()?, Instant::now());
    std::thread::sleep(knobs.window);
    let (delivered1, sent1, cpu1, t1) = (lab.delivered()?, sender.sent(), Cpu::read()?, Instant::now());
    sender.finish()?;
    Ok(Measured {
        delivered: delivered1 - delivered0,
        offered: sent1 - sent0,
        elapsed: t1 - t0,
        cpu: cpu0.shares(&cpu1),
    })
}

fn ferrule_config(name: &str) -> String {
    format!(
        "[node]\nname = \"{name}\"\nasn = 65101\nrouter_id = \"{NODE_SOURCE_SIDE}\"\nuplinks = [\"lb0\", \"be0\"]\n\n\
         [[services]]\nname = \"flood\"\nvip = \"{VIP}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"nat\"\n\
         announce = \"local\"\n\
         backends = [ {{ address = \"{BACKEND}\", port = {PORT} }} ]\n"
    )
}

/// The load balancer's round: ferrule up with XDP on the uplinks, measured, then stopped with its
/// pins removed (which detaches XDP).
fn ferrule_round(lab: &Lab, dir: &TestDir, knobs: &Knobs, round: usize) -> Result<(Measured, String)> {
    let name = format!("lbpps{}r{round}", std::process::id());
    let mut ferrule = Ferrule::new(&lab.node, dir.path(), &name, &ferrule_config(&name))?;
    ferrule.start(&[])?;
    cmd::poll_until("the UDP service in the datapath", Duration::from_secs(10), Duration::from_millis(100), || {
        let services = ferrule.show(&["lb", "services"])?;
        Ok(services[0]["id"].is_u64() && services[0]["backends"][0]["id"].is_u64())
    })
    .with_context(|| format!("ferrule log:\n{}", ferrule.log_tail()))?;
    let status = ferrule.show(&["status"])?;
    let uplinks: Vec<String> = status["datapath"]["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| format!("{} attached={} mode={}", u["name"], u["attached"], u["mode"]))
        .collect();
    if !lab.xdp_on_lb0()? {
        bail!("ferrule runs but lb0 has no XDP program: {uplinks:?}\n{}", ferrule.log_tail());
    }
    let packets = |f: &Ferrule| -> Result<u64> { Ok(f.show(&["lb", "services"])?[0]["packets"].as_u64().unwrap_or(0)) };
    let xdp_before = packets(&ferrule)?;
    let measured = measure(lab, knobs).with_context(|| format!("ferrule log:\n{}", ferrule.log_tail()))?;
    let xdp_packets = packets(&ferrule)? - xdp_before;
    let events = lb_events(&name)?;
    ferrule.stop()?;
    drop(ferrule);
    if lab.xdp_on_lb0()? {
        bail!("lb0 still has an XDP program after ferrule's pins were removed");
    }
    Ok((
        measured,
        format!(
            "uplinks [{}]; the service's XDP counter saw {xdp_packets} packets; non-zero LB events \
             (enum fr_lb_event: count) {events:?}",
            uplinks.join(", ")
        ),
    ))
}

/// The load balancer's node-wide events that are non-zero, as `(enum fr_lb_event, count summed
/// over CPUs)`, from the pinned map: packets XDP passed to the stack would show up here.
fn lb_events(name: &str) -> Result<Vec<(u64, u64)>> {
    let pin = format!("/sys/fs/bpf/ferrule/{name}/maps/fr_lb_events");
    let dump = cmd::run(std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned", &pin]))?;
    let parsed: Value = serde_json::from_str(&dump).with_context(|| format!("parsing {dump}"))?;
    let mut seen = Vec::new();
    for entry in parsed.as_array().into_iter().flatten() {
        let key = entry["formatted"]["key"].as_u64().context("event map key")?;
        let total: u64 =
            entry["formatted"]["values"].as_array().into_iter().flatten().filter_map(|v| v["value"].as_u64()).sum();
        if total > 0 {
            seen.push((key, total));
        }
    }
    Ok(seen)
}

/// The baseline's round: nftables DNAT + SNAT in the node, kernel forwarding, no XDP.
fn nftables_round(lab: &Lab, dir: &TestDir, knobs: &Knobs) -> Result<Measured> {
    if lab.xdp_on_lb0()? {
        bail!("lb0 has an XDP program: the nftables baseline needs it detached");
    }
    let rules = dir.path().join("dnat.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip frlbdnat {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP} udp dport {PORT} dnat to {BACKEND}:{PORT}\n  }}\n  chain post {{\n    type nat hook \
             postrouting priority srcnat; policy accept;\n    ip daddr {BACKEND} udp dport {PORT} snat to \
             {NODE_BACKEND_SIDE}\n  }}\n}}\n"
        ),
    )?;
    lab.node.run("nft", ["-f", &rules.display().to_string()])?;
    let measured = measure(lab, knobs);
    lab.node.run("nft", ["delete", "table", "ip", "frlbdnat"])?;
    measured
}

/// The 1-minute load average: how busy the machine was besides this bench.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn run() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let dir = TestDir::new("lbpps")?;
    let lab = Lab::new(&dir, knobs.threaded)?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("lb_pps: UDP packets per second, ferrule XDP load balancer (NAT) vs nftables DNAT");
    println!("  kernel {}, {cpus} CPUs shared by sender, node and backend (all veth)", kernel.trim());
    println!(
        "  source {SOURCE} -> VIP {VIP}:{PORT} (udp) -> node -> backend {BACKEND}:{PORT}; sink: nftables counter + drop"
    );
    println!(
        "  sender: 1 thread, {} sockets (source ports {FIRST_SOURCE_PORT}..{}), sendmmsg x{BATCH}, {PAYLOAD}-byte \
         payload (60-byte frames), non-blocking",
        knobs.sockets,
        FIRST_SOURCE_PORT + knobs.sockets - 1
    );
    println!(
        "  window: {:?} after a {WARM_UP:?} warm-up; {} rounds, the two paths alternating; figures are medians",
        knobs.window, knobs.rounds
    );
    println!(
        "  receive processing on the veths: {}; load average at start: {}",
        if knobs.threaded { "threaded NAPI (LB_PPS_NAPI=threaded)" } else { "inline in softirq (LB_PPS_NAPI=inline)" },
        load_average()
    );
    let (mut xdp, mut nft) = (Vec::new(), Vec::new());
    for round in 1..=knobs.rounds {
        let (m, detail) = ferrule_round(&lab, &dir, &knobs, round)?;
        println!("  round {round} ferrule XDP NAT: {}; {detail}", describe(&m));
        xdp.push(m);
        let m = nftables_round(&lab, &dir, &knobs)?;
        println!("  round {round} nftables DNAT:   {}", describe(&m));
        nft.push(m);
    }
    let stat = |runs: &[Measured], f: fn(&Measured) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let (xdp_pps, nft_pps) = (stat(&xdp, Measured::pps), stat(&nft, Measured::pps));
    println!(
        "\n{:<20} | {:>13} | {:>12} | {:>9} | {:>8} | {:>15}",
        "path", "delivered pps", "offered pps", "delivered", "CPU busy", "CPU ns / packet"
    );
    for (what, runs, pps) in [("ferrule XDP (NAT)", &xdp, xdp_pps), ("nftables DNAT+SNAT", &nft, nft_pps)] {
        let offered = stat(runs, Measured::offered_pps);
        let per_packet = median(&mut runs.iter().map(|m| m.cpu_ns_per_packet(cpus)).collect::<Vec<_>>());
        println!(
            "{what:<20} | {pps:>13.0} | {offered:>12.0} | {:>8.1}% | {:>7.0}% | {per_packet:>15.0}",
            100.0 * pps / offered.max(1.0),
            100.0 * stat(runs, |m| m.cpu.0)
        );
    }
    println!("\nratio ferrule XDP / nftables: {:.2}x (the issue's goal: >= 5x)", xdp_pps / nft_pps.max(1.0));
    println!("load average at the end: {} (CPU shares count every process on the machine)", load_average());
    Ok(())
}

fn describe(m: &Measured) -> String {
    let (busy, user, system, softirq) = m.cpu;
    format!(
        "delivered {} in {:.2} s = {:.0} pps (offered {} = {:.0} pps; CPUs {:.0}% busy: user {:.0}%, system {:.0}%, \
         softirq {:.0}%)",
        m.delivered,
        m.elapsed.as_secs_f64(),
        m.pps(),
        m.offered,
        m.offered_pps(),
        100.0 * busy,
        100.0 * user,
        100.0 * system,
        100.0 * softirq
    )
}

fn main() {
    if !ferrule_tests::privileged() {
        return;
    }
    if let Err(e) = run() {
        eprintln!("lb_pps: {e:#}");
        std::process::exit(1);
    }
}
