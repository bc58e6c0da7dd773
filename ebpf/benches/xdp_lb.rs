//! `xdp_lb` cost per packet from `BPF_PROG_TEST_RUN`'s own timing, for conntrack hits and misses,
//! IPv4 and IPv6, with 1, 1,000 and 100,000 services installed; each figure is printed with its
//! ratio to the 1-service figure of the same row. Also prints the verifier's instruction count of
//! each program. Root only: `sudo -E cargo bench -p ferrule-ebpf --bench xdp_lb`.
//!
//! Each figure averages the kernel's per-run duration over RUNS single runs: `repeat` cannot be
//! used, because the kernel re-runs the program on the packet the previous run left (already
//! encapsulated, so no longer for the VIP). A single run's figure includes the kernel timer's own
//! cost (tens of ns), the same in every column. Hit: one flow, after a first packet created its
//! conntrack entry. Miss: a new flow (source port) per run.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
};

use etherparse::PacketBuilder;
use ferrule_ebpf::{test_run_xdp, BackendEntry, Datapath, Decap, L4Proto, LbMode, ServiceKey, XDP_TX};
use nix::sched::{setns, CloneFlags};

const NS: &str = "frlb-bench";
const DEV: &str = "frlbench0";
const RUNS: u16 = 20_000;
const TABLE: [u32; 13] = [1; 13];

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().expect("running ip");
    assert!(status.success(), "{args:?} failed");
}

fn setup_netns() {
    let _absent_is_fine = Command::new("ip").args(["netns", "del", NS]).status();
    sh(&["ip", "netns", "add", NS]);
    let ip = |rest: &[&str]| sh(&[&["ip", "-n", NS], rest].concat());
    ip(&["link", "add", DEV, "type", "veth", "peer", "name", "frlbench1"]);
    ip(&["link", "set", DEV, "up"]);
    ip(&["link", "set", "frlbench1", "up"]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", DEV]);
    ip(&["addr", "add", "2001:db8:100::1/64", "dev", DEV, "nodad"]);
    ip(&["neigh", "add", "198.51.100.10", "lladdr", "02:00:00:00:00:0a", "dev", DEV, "nud", "permanent"]);
    ip(&["neigh", "add", "2001:db8:100::10", "lladdr", "02:00:00:00:00:0a", "dev", DEV, "nud", "permanent"]);
    sh(&["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
}

fn tcp4(dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([203, 0, 113, 7], dst, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn tcp6(dst: [u8; 16], sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv6([0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7], dst, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// The i-th service pair's VIPs, inside the documentation ranges: IPv4 192.0.2.1:80 (measured),
/// then 203.0.113.1-250 on ports from 1000; IPv6 2001:db8:80::<i>.
fn vips(i: u32) -> (Ipv4Addr, u16, Ipv6Addr) {
    if i == 0 {
        return (Ipv4Addr::new(192, 0, 2, 1), 80, Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 1));
    }
    let v4 = Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1);
    let port = 1000 + (i / 250) as u16;
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, (i >> 16) as u16, i as u16 + 1);
    (v4, port, v6)
}

struct Row {
    hit4: u64,
    miss4: u64,
    hit6: u64,
    miss6: u64,
}

fn measure(dp: &Datapath, ifindex: u32, first_port: u16) -> Row {
    let fd = dp.xdp_program_fd().unwrap();
    let vip4 = [192, 0, 2, 1];
    let vip6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let average = |make: &dyn Fn(u16) -> Vec<u8>| {
        let total: u64 = (0..RUNS)
            .map(|i| {
                let out = test_run_xdp(fd, &make(i), ifindex, 1).unwrap();
                assert_eq!(out.retval, XDP_TX, "the benchmark path is the forwarding one");
                u64::from(out.duration_ns)
            })
            .sum();
        total / u64::from(RUNS)
    };
    let hit = |packet: Vec<u8>| {
        test_run_xdp(fd, &packet, ifindex, 1).unwrap(); // creates the conntrack entry
        average(&|_| packet.clone())
    };
    let miss = |make: &dyn Fn(u16) -> Vec<u8>| average(&|i| make(first_port.wrapping_add(i)));
    Row {
        hit4: hit(tcp4(vip4, 1)),
        miss4: miss(&|p| tcp4(vip4, p)),
        hit6: hit(tcp6(vip6, 1)),
        miss6: miss(&|p| tcp6(vip6, p)),
    }
}

/// Installed services per row: 1, 1,000 and 100,000, or `FERRULE_BENCH_SERVICES=1,1000,10000`.
/// Installing is slow: every update of a map of maps waits for an RCU grace period in the kernel
/// (~16 ms here), so 100,000 services take about half an hour to install.
fn service_counts() -> Vec<u32> {
    match std::env::var("FERRULE_BENCH_SERVICES") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().expect("FERRULE_BENCH_SERVICES: numbers")).collect(),
        Err(_) => vec![1, 1_000, 100_000],
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("xdp_lb bench: needs root (eBPF, netns); run with sudo -E");
        return;
    }
    setup_netns();
    let ns = File::open(format!("/run/netns/{NS}")).unwrap();
    setns(ns, CloneFlags::CLONE_NEWNET).unwrap();
    let ifindex = nix::net::if_::if_nametoindex(DEV).unwrap();
    let root = Path::new("/sys/fs/bpf");
    ferrule_ebpf::ensure_bpffs(root).unwrap();
    let node = format!("bench-{}", std::process::id());
    let mut dp = Datapath::open_at(root, &node).unwrap();
    let decap = Decap::open_at(root, &node).unwrap();
    let insns = |info: aya::programs::ProgramInfo| {
        info.verified_instruction_count().map_or("unknown".to_owned(), |n| n.to_string())
    };
    println!("verifier: xdp_lb processed {} instructions", insns(dp.xdp_program_info().unwrap()));
    println!("verifier: tc_decap processed {} instructions", insns(decap.program_info().unwrap()));

    let mut lb = dp.lb();
    lb.set_node_addresses(Some(Ipv4Addr::new(198, 51, 100, 1)), "2001:db8:100::1".parse().ok()).unwrap();
    lb.upsert_backend(1, &BackendEntry { address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), port: 80 }).unwrap();
    lb.upsert_backend(2, &BackendEntry { address: "2001:db8:100::10".parse().unwrap(), port: 80 }).unwrap();
    let mut rows = Vec::new();
    let mut installed = 0u32;
    for (round, target) in service_counts().into_iter().enumerate() {
        let mut lb = dp.lb();
        // Half IPv4, half IPv6 (at least one of each: the measured pair is service 0 of each).
        while installed < (target / 2).max(1) {
            let (v4, port, v6) = vips(installed);
            let k4 = ServiceKey { vip: IpAddr::V4(v4), port, proto: L4Proto::Tcp };
            lb.upsert_service(&k4, installed + 1, LbMode::Dsr, &TABLE).unwrap();
            let k6 = ServiceKey { vip: IpAddr::V6(v6), port: 80, proto: L4Proto::Tcp };
            lb.upsert_service(&k6, 65_536 + installed + 1, LbMode::Dsr, &[2; 13]).unwrap();
            installed += 1;
        }
        // Distinct source ports per round, so every "miss" is a new flow.
        rows.push((target, measure(&dp, ifindex, 2 + round as u16 * RUNS)));
    }
    let base = &rows[0].1;
    let ratio = |v: u64, b: u64| v as f64 / b.max(1) as f64;
    println!("\nns/packet (BPF_PROG_TEST_RUN), ratio to the first row in parentheses:");
    println!(
        "{:>9} | {:>15} | {:>15} | {:>15} | {:>15}",
        "services", "IPv4 ct hit", "IPv4 ct miss", "IPv6 ct hit", "IPv6 ct miss"
    );
    for (n, r) in &rows {
        println!(
            "{n:>9} | {:>6} ({:>5.2}x) | {:>6} ({:>5.2}x) | {:>6} ({:>5.2}x) | {:>6} ({:>5.2}x)",
            r.hit4,
            ratio(r.hit4, base.hit4),
            r.miss4,
            ratio(r.miss4, base.miss4),
            r.hit6,
            ratio(r.hit6, base.hit6),
            r.miss6,
            ratio(r.miss6, base.miss6),
        );
    }
    dp.unpin_all().unwrap();
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
}
