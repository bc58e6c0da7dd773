//! `xdp_lb` cost per packet from `BPF_PROG_TEST_RUN`'s own timing, for conntrack hits and misses,
//! IPv4 and IPv6, with 1 (one per family, so 2), 1,000 and 100,000 services installed; each figure
//! is printed with its ratio to the first row's figure in the same column. DSR services are
//! measured for hits and misses; one NAT service per family for hits (DNAT + SNAT, checksums) and
//! for its backend's replies (translated back to the client, routed towards the clients' side),
//! on the full path and remembered, like the hits.
//! Hits are measured twice: on the full path ("ct hit": the maps' generation is moved on before
//! each run, so the flow cache is never used) and from the flow cache ("cached": the same packet
//! again, what an established flow's packets mostly take); a packet for no VIP (passed to the
//! stack) gives what every packet pays: the test run's own cost, parsing and the VIP bitmap. The
//! floor, `xdp_fwd` (the least an XDP forwarder
//! does) timed in the same turns, shows how much of each figure is the test run's own cost and
//! how much the load balancer's. Also prints the
//! verifier's instruction count of each program, how long installing the services took (batched,
//! `LbMaps::upsert_services`, against the per-service `upsert_service` measured in the same run)
//! and the kernel memory they hold. Root only: `sudo -E cargo bench -p ferrule-ebpf --bench
//! xdp_lb`. Knobs: `FERRULE_BENCH_SERVICES=1,1000,100000` (the rows), `FERRULE_BENCH_TABLE=251`.
//!
//! Each row runs on a datapath of its own (fresh maps, empty conntrack) holding all its services.
//! The IPv4 DSR services' ids start at 1, below `FR_LB_TRAFFIC_ARR_SIZE` (their packets and bytes
//! go to per-CPU arrays); the IPv6 DSR (65537..) and NAT services' ids are above it (counted in
//! the per-CPU hash), so both ways of counting are measured.
//! Each figure is the kernel's per-run duration of single runs: per turn the median of 20,000
//! runs; the rows take 15 turns each, interleaved, and the figure is the median turn (this
//! machine's speed drifts by up to 2x from one second to the next, so only figures taken in
//! turns compare). A first turn per row warms up
//! and is discarded. `repeat` cannot be used, because the kernel re-runs the program on the packet
//! the previous run left (already encapsulated, so no longer for the VIP). A single run's figure
//! includes the kernel timer's own cost (tens of ns), the same in every column. Hit: one flow,
//! after a first packet created its conntrack entry. Miss: a new flow (source port) per run.
//!
//! Every service has its own Maglev table of `FERRULE_BENCH_TABLE` slots (a prime, default 251:
//! ~4 KiB of kernel memory each, since an array stores each u32 slot in 8 bytes and kmalloc rounds
//! up to a power of two; 1021 slots take 16 KiB; the config's default of 65537 takes 516 KiB, so
//! 100,000 such services would need ~50 GiB).

use std::{
    cell::RefCell,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use etherparse::PacketBuilder;
use ferrule_ebpf::{
    test_run_xdp, BackendEntry, Datapath, Decap, L4Proto, LbMaps, LbMode, ServiceKey, ServiceUpsert, XdpForward,
    XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use nix::sched::{setns, CloneFlags};

const NS: &str = "frlb-bench";
const DEV: &str = "frlbench0";
const RUNS: u16 = 20_000;
/// Runs that bring a flow cache that turned itself off back on (lb.h: LB_FC_BYPASS + LB_FC_SAMPLE).
const FC_SETTLE: u16 = 15_360 + 1_024 + 2;
/// Turns each row's measurement takes (see `main`).
const REPS: u8 = 15;
/// Services installed one at a time for the per-service baseline (then removed again).
const SINGLE_BASELINE: u32 = 200;
/// Ids of the baseline's services, above the rows' (IPv4 1.., IPv6 65537..).
const SINGLE_FIRST_ID: u32 = 130_000;

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().expect("running ip");
    assert!(status.success(), "{args:?} failed");
}

fn setup_netns() {
    // A namespace left by an interrupted run goes first (absent is fine: its error is not shown).
    let _absent_is_fine = Command::new("ip").args(["netns", "del", NS]).stderr(std::process::Stdio::null()).status();
    sh(&["ip", "netns", "add", NS]);
    let ip = |rest: &[&str]| sh(&[&["ip", "-n", NS], rest].concat());
    ip(&["link", "add", DEV, "type", "veth", "peer", "name", "frlbench1"]);
    ip(&["link", "set", DEV, "up"]);
    ip(&["link", "set", "frlbench1", "up"]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", DEV]);
    ip(&["addr", "add", "2001:db8:100::1/64", "dev", DEV, "nodad"]);
    ip(&["neigh", "add", "198.51.100.10", "lladdr", "02:00:00:00:00:0a", "dev", DEV, "nud", "permanent"]);
    ip(&["neigh", "add", "2001:db8:100::10", "lladdr", "02:00:00:00:00:0a", "dev", DEV, "nud", "permanent"]);
    // The clients' side, for the NAT replies: a router with a permanent neighbour entry.
    ip(&["neigh", "add", "198.51.100.254", "lladdr", "02:00:00:00:00:fe", "dev", DEV, "nud", "permanent"]);
    ip(&["neigh", "add", "2001:db8:100::fe", "lladdr", "02:00:00:00:00:fe", "dev", DEV, "nud", "permanent"]);
    ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.254", "dev", DEV]);
    ip(&["-6", "route", "add", "2001:db8:7::/64", "via", "2001:db8:100::fe", "dev", DEV]);
    sh(&["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
}

/// A SYN from client 203.0.113.`client`:`sport` to `dst`:80.
fn tcp4(client: u8, dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([203, 0, 113, client], dst, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// A SYN from client 2001:db8:7::`client`:`sport` to `dst`:80.
fn tcp6(client: u8, dst: [u8; 16], sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv6([0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, client], dst, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// A SYN-ACK from the NAT backend (198.51.100.10 or 2001:db8:100::10, port 80) to the node's
/// SNAT port `port`.
fn nat_reply(port: u16, v6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 1]);
    let ip = if v6 {
        let addr = |a: &str| a.parse::<Ipv6Addr>().unwrap().octets();
        eth.ipv6(addr("2001:db8:100::10"), addr("2001:db8:100::1"), 64)
    } else {
        eth.ipv4([198, 51, 100, 10], [198, 51, 100, 1], 64)
    };
    ip.tcp(80, port, 1, 64240).syn().ack(2).write(&mut out, &[]).unwrap();
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
    fc4: u64,
    miss4: u64,
    hit6: u64,
    fc6: u64,
    miss6: u64,
    nat4: u64,
    fc_nat4: u64,
    nat6: u64,
    fc_nat6: u64,
    reply4: u64,
    fc_reply4: u64,
    reply6: u64,
    fc_reply6: u64,
    pass: u64,
}

/// The NAT services every row also has, one per family, with ids above the rows' and the
/// per-service baseline's: (IPv4 VIP, IPv6 VIP, IPv4 id, IPv6 id).
const NAT_VIP4: [u8; 4] = [192, 0, 2, 2];
const NAT_VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 2];
const NAT_IDS: (u32, u32) = (131_000, 131_001);

/// One row of figures; `client` (a host number) differs per call, so every miss is a new flow.
fn measure(dp: &Datapath, ifindex: u32, client: u8) -> Row {
    let fd = dp.xdp_program_fd().unwrap();
    let vip4 = [192, 0, 2, 1];
    let vip6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // The median of RUNS single runs: a run interrupted by anything else on the CPU (the machine
    // is shared) is one outlier among thousands instead of a share of a mean.
    let average_of = |make: &dyn Fn(u16) -> Vec<u8>, verdict: u32| {
        let mut runs: Vec<u64> = (0..RUNS)
            .map(|i| {
                let out = test_run_xdp(fd, &make(i), ifindex, 1).unwrap();
                assert_eq!(out.retval, verdict, "the path measured is the one meant");
                u64::from(out.duration_ns)
            })
            .collect();
        runs.sort_unstable();
        runs[runs.len() / 2]
    };
    let average = |make: &dyn Fn(u16) -> Vec<u8>| average_of(make, XDP_TX);
    // The same packet again and again: the flow cache answers (the first packet made the
    // conntrack entry, the second, a conntrack hit, had the flow remembered). First as many runs
    // as it takes a cache that turned itself off (after the full-path column before it, which
    // misses on purpose) to be on again: lb.h's LB_FC_BYPASS + LB_FC_SAMPLE.
    let hit = |packet: Vec<u8>| {
        for _ in 0..FC_SETTLE {
            test_run_xdp(fd, &packet, ifindex, 1).unwrap(); // the first creates the conntrack entry
        }
        average(&|_| packet.clone())
    };
    // A conntrack hit on the full path: the same packet, with the maps' generation moved on
    // before each run (as any change to the maps does), so that what the flow cache remembered
    // is never used. The move is a map write between runs, outside the runs' timing. As every
    // probe misses, the cache soon turns itself off (LB_FC_MIN_HITS): this is what a node with
    // more active flows than the cache holds pays.
    let pin = dp.pin_dir().join("maps").join("fr_lb_gen");
    let generation: RefCell<Array<MapData, u64>> =
        RefCell::new(Array::try_from(Map::Array(MapData::from_pin(pin).unwrap())).unwrap());
    let forget = || {
        let mut array = generation.borrow_mut();
        let now = array.get(&0, 0).unwrap();
        array.set(0, now.wrapping_add(1), 0).unwrap();
    };
    let ct_hit = |packet: Vec<u8>| {
        test_run_xdp(fd, &packet, ifindex, 1).unwrap(); // creates the conntrack entry
        average(&|_| {
            forget();
            packet.clone()
        })
    };
    let miss = |make: &dyn Fn(u16) -> Vec<u8>| average(&|i| make(2 + i));
    // The backend's answer to the NAT flows: from the backend to the node's SNAT port, which the
    // flow's translated packet shows.
    let nat_reply = {
        let out4 = test_run_xdp(fd, &tcp4(client, NAT_VIP4, 1), ifindex, 1).unwrap();
        let out6 = test_run_xdp(fd, &tcp6(client, NAT_VIP6, 1), ifindex, 1).unwrap();
        assert_eq!((out4.retval, out6.retval), (XDP_TX, XDP_TX), "the NAT flows are forwarded");
        let port4 = u16::from_be_bytes([out4.data[34], out4.data[35]]);
        let port6 = u16::from_be_bytes([out6.data[54], out6.data[55]]);
        (nat_reply(port4, false), nat_reply(port6, true))
    };
    Row {
        hit4: ct_hit(tcp4(client, vip4, 1)),
        fc4: hit(tcp4(client, vip4, 1)),
        miss4: miss(&|p| tcp4(client, vip4, p)),
        hit6: ct_hit(tcp6(client, vip6, 1)),
        fc6: hit(tcp6(client, vip6, 1)),
        miss6: miss(&|p| tcp6(client, vip6, p)),
        nat4: ct_hit(tcp4(client, NAT_VIP4, 1)),
        fc_nat4: hit(tcp4(client, NAT_VIP4, 1)),
        nat6: ct_hit(tcp6(client, NAT_VIP6, 1)),
        fc_nat6: hit(tcp6(client, NAT_VIP6, 1)),
        reply4: ct_hit(nat_reply.0.clone()),
        fc_reply4: hit(nat_reply.0.clone()),
        reply6: ct_hit(nat_reply.1.clone()),
        fc_reply6: hit(nat_reply.1.clone()),
        pass: average_of(&|_| tcp4(client, [192, 0, 2, 99], 1), XDP_PASS),
    }
}

/// Installed services per row: 1, 1,000 and 100,000, or `FERRULE_BENCH_SERVICES=1,1000,10000`.
/// Half are IPv4 and half IPv6 (at least one of each).
fn service_counts() -> Vec<u32> {
    match std::env::var("FERRULE_BENCH_SERVICES") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().expect("FERRULE_BENCH_SERVICES: numbers")).collect(),
        Err(_) => vec![1, 1_000, 100_000],
    }
}

/// Slots of each service's Maglev table: `FERRULE_BENCH_TABLE` (a prime), default 251.
fn table_size() -> usize {
    std::env::var("FERRULE_BENCH_TABLE").map_or(251, |n| n.trim().parse().expect("FERRULE_BENCH_TABLE: a number"))
}

/// The service pair `i`: (IPv4 key, IPv4 id, IPv6 key, IPv6 id).
fn pair(i: u32) -> (ServiceKey, u32, ServiceKey, u32) {
    let (v4, port, v6) = vips(i);
    let k4 = ServiceKey { vip: IpAddr::V4(v4), port, proto: L4Proto::Tcp };
    let k6 = ServiceKey { vip: IpAddr::V6(v6), port: 80, proto: L4Proto::Tcp };
    (k4, i + 1, k6, 65_536 + i + 1)
}

/// Kernel memory counters (KiB) from /proc/meminfo: unreclaimable slab, where kmalloc'ed maps up
/// to 32 KiB live, and vmalloc, where larger ones go.
fn kernel_memory_kib() -> (i64, i64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (field("SUnreclaim:"), field("VmallocUsed:"))
}

/// The per-service baseline: `SINGLE_BASELINE` services with `upsert_service` each, timed, then
/// removed (untimed). Returns the time per service.
fn single_baseline(lb: &mut LbMaps<'_>, table: &[u32]) -> Duration {
    let key = |i: u32| ServiceKey {
        vip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 200)),
        port: 2000 + i as u16,
        proto: L4Proto::Tcp,
    };
    let started = Instant::now();
    for i in 0..SINGLE_BASELINE {
        lb.upsert_service(&key(i), SINGLE_FIRST_ID + i, LbMode::Dsr, table).unwrap();
    }
    let per_service = started.elapsed() / SINGLE_BASELINE;
    for i in 0..SINGLE_BASELINE {
        lb.remove_service(&key(i)).unwrap();
    }
    per_service
}

/// The floor under the same conditions: `xdp_fwd` (MAC and TTL rewrite and a redirect, nothing
/// looked up) on a UDP datagram, timed like the rows: what any XDP program pays here, the test
/// run's own cost included.
fn measure_floor(fd: std::os::fd::BorrowedFd<'_>, ifindex: u32) -> u64 {
    let mut datagram = Vec::new();
    PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([203, 0, 113, 7], [192, 0, 2, 1], 64)
        .udp(40000, 80)
        .write(&mut datagram, &[0; 18])
        .unwrap();
    let mut runs: Vec<u64> = (0..RUNS)
        .map(|_| {
            let out = test_run_xdp(fd, &datagram, ifindex, 1).unwrap();
            assert_eq!(out.retval, XDP_REDIRECT, "the floor forwards");
            u64::from(out.duration_ns)
        })
        .collect();
    runs.sort_unstable();
    runs[runs.len() / 2]
}

/// The median of each column over `rows`.
fn median_row(rows: &[Row]) -> Row {
    let median = |f: fn(&Row) -> u64| {
        let mut v: Vec<u64> = rows.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Row {
        hit4: median(|r| r.hit4),
        fc4: median(|r| r.fc4),
        miss4: median(|r| r.miss4),
        hit6: median(|r| r.hit6),
        fc6: median(|r| r.fc6),
        miss6: median(|r| r.miss6),
        nat4: median(|r| r.nat4),
        fc_nat4: median(|r| r.fc_nat4),
        nat6: median(|r| r.nat6),
        fc_nat6: median(|r| r.fc_nat6),
        reply4: median(|r| r.reply4),
        fc_reply4: median(|r| r.fc_reply4),
        reply6: median(|r| r.reply6),
        fc_reply6: median(|r| r.fc_reply6),
        pass: median(|r| r.pass),
    }
}

struct Load {
    services: u32,
    elapsed: Duration,
    slab_kib: i64,
    vmalloc_kib: i64,
}

/// Pin directories `ferrule/bench-<pid>-<row>` of runs whose process is gone (interrupted before
/// they unpinned): their programs and maps would stay loaded for good otherwise.
fn remove_pins_of_interrupted_runs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("ferrule")) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("bench-").and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => println!("removed the pins of an interrupted run: {}", entry.path().display()),
                Err(e) => eprintln!("could not remove {}: {e}", entry.path().display()),
            }
        }
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
    // One CPU for every run: this machine's CPUs differ in speed from moment to moment, and a run
    // that migrates would add that difference to the figures.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    let ifindex = nix::net::if_::if_nametoindex(DEV).unwrap();
    let root = Path::new("/sys/fs/bpf");
    ferrule_ebpf::ensure_bpffs(root).unwrap();
    remove_pins_of_interrupted_runs(root);
    let size = table_size();
    let (table4, table6) = (vec![1u32; size], vec![2u32; size]);
    let mut per_service = Duration::ZERO;
    let mut loads = Vec::new();
    // Each row on a datapath of its own (fresh maps, empty conntrack), with all its services
    // installed in one batched upsert: rows differ only in how many services there are.
    let mut datapaths = Vec::new();
    for (round, target) in service_counts().into_iter().enumerate() {
        let node = format!("bench-{}-{round}", std::process::id());
        let mut dp = Datapath::open_at(root, &node).unwrap();
        if round == 0 {
            let decap = Decap::open_at(root, &node).unwrap();
            let insns = |info: aya::programs::ProgramInfo| {
                info.verified_instruction_count().map_or("unknown".to_owned(), |n| n.to_string())
            };
            println!("verifier: xdp_lb processed {} instructions", insns(dp.xdp_program_info().unwrap()));
            println!("verifier: tc_decap processed {} instructions", insns(decap.program_info().unwrap()));
        }
        let mut lb = dp.lb();
        lb.set_node_addresses(Some(Ipv4Addr::new(198, 51, 100, 1)), "2001:db8:100::1".parse().ok()).unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
        lb.upsert_backend(1, &BackendEntry { address: v4, port: 80, down: false }).unwrap();
        lb.upsert_backend(2, &BackendEntry { address: "2001:db8:100::10".parse().unwrap(), port: 80, down: false })
            .unwrap();
        if round == 0 {
            per_service = single_baseline(&mut lb, &table4);
        }
        // Half IPv4, half IPv6 (at least one of each: the measured pair is service 0 of each).
        let batch: Vec<ServiceUpsert<'_>> = (0..(target / 2).max(1))
            .flat_map(|i| {
                let (k4, id4, k6, id6) = pair(i);
                [
                    ServiceUpsert { key: k4, id: id4, mode: LbMode::Dsr, table: &table4 },
                    ServiceUpsert { key: k6, id: id6, mode: LbMode::Dsr, table: &table6 },
                ]
            })
            .collect();
        let (slab0, vmalloc0) = kernel_memory_kib();
        let started = Instant::now();
        lb.upsert_services(&batch).unwrap();
        let elapsed = started.elapsed();
        let nat4 = ServiceKey { vip: IpAddr::from(NAT_VIP4), port: 80, proto: L4Proto::Tcp };
        let nat6 = ServiceKey { vip: IpAddr::from(NAT_VIP6), port: 80, proto: L4Proto::Tcp };
        lb.upsert_service(&nat4, NAT_IDS.0, LbMode::Nat, &table4).unwrap();
        lb.upsert_service(&nat6, NAT_IDS.1, LbMode::Nat, &table6).unwrap();
        let (slab1, vmalloc1) = kernel_memory_kib();
        let services = batch.len() as u32;
        loads.push(Load { services, elapsed, slab_kib: slab1 - slab0, vmalloc_kib: vmalloc1 - vmalloc0 });
        // Warm-up, discarded: the first packets on fresh maps are slower (cold caches, conntrack
        // buckets touched for the first time).
        measure(&dp, ifindex, 9);
        datapaths.push((services, dp));
    }
    // The rows take turns, REPS times, and each figure is the median of its REPS: a change in
    // the machine's load during the run (it is shared) then hits every row alike. Each turn has
    // a client address of its own, so every miss is a new flow.
    let peer = nix::net::if_::if_nametoindex("frlbench1").unwrap();
    let floor = XdpForward::attach("frlbench1", ifindex, [2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 1]).unwrap();
    let floor_fd = floor.program_fd().unwrap();
    measure_floor(floor_fd, peer);
    let mut floors = Vec::new();
    let mut samples: Vec<Vec<Row>> = datapaths.iter().map(|_| Vec::new()).collect();
    for rep in 0..REPS {
        for ((_, dp), row) in datapaths.iter().zip(&mut samples) {
            row.push(measure(dp, ifindex, 10 + rep));
        }
        floors.push(measure_floor(floor_fd, peer));
    }
    floors.sort_unstable();
    let floor_ns = floors[floors.len() / 2];
    let rows: Vec<(u32, Row)> = datapaths.iter().zip(&samples).map(|((n, _), s)| (*n, median_row(s))).collect();
    for (_, dp) in datapaths {
        dp.unpin_all().unwrap();
    }
    println!("\ninstalling services ({size}-slot Maglev tables):");
    println!(
        "  per-service upsert_service (baseline): {:.2} ms per service, measured on {SINGLE_BASELINE}",
        per_service.as_secs_f64() * 1e3
    );
    // Memory: deltas of the whole kernel's counters around each install, so other processes'
    // allocations show up too (on a busy machine, vmalloc moves by themselves); tables up to 32
    // KiB (~4000 slots) are kmalloc'ed (slab), larger ones vmalloc'ed.
    for l in &loads {
        let one_by_one = per_service * l.services;
        let per = |kib: i64| kib as f64 * 1024.0 / f64::from(l.services.max(1));
        println!(
            "  batched upsert_services: {:>6} services in {:>7.3} s ({:>6.1} us each; one by one: {:>7.1} s = {:>4.0}x); \
             kernel memory: slab {:+} KiB ({:.0} B/service), vmalloc {:+} KiB ({:.0} B/service)",
            l.services,
            l.elapsed.as_secs_f64(),
            l.elapsed.as_secs_f64() * 1e6 / f64::from(l.services.max(1)),
            one_by_one.as_secs_f64(),
            one_by_one.as_secs_f64() / l.elapsed.as_secs_f64().max(1e-9),
            l.slab_kib,
            per(l.slab_kib),
            l.vmalloc_kib,
            per(l.vmalloc_kib),
        );
    }
    let base = &rows[0].1;
    let ratio = |v: u64, b: u64| v as f64 / b.max(1) as f64;
    println!(
        "\nns/packet (BPF_PROG_TEST_RUN; median of {REPS} turns, each the median of {RUNS} runs), ratio to the \
         first row in parentheses:"
    );
    println!(
        "{:>9} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15} \
         | {:>15} | {:>15} | {:>17} | {:>17}",
        "services",
        "IPv4 ct hit",
        "IPv4 cached",
        "IPv4 ct miss",
        "IPv6 ct hit",
        "IPv6 cached",
        "IPv6 ct miss",
        "NAT4 ct hit",
        "NAT4 cached",
        "NAT6 ct hit",
        "NAT6 cached",
        "NAT4 reply",
        "NAT4 reply cached",
        "NAT6 reply",
        "NAT6 reply cached",
        "not a VIP"
    );
    let cell = |v: u64, b: u64| format!("{v:>6} ({:>5.2}x)", ratio(v, b));
    for (n, r) in &rows {
        println!(
            "{n:>9} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:>17} | {} | {:>17} | {}",
            cell(r.hit4, base.hit4),
            cell(r.fc4, base.fc4),
            cell(r.miss4, base.miss4),
            cell(r.hit6, base.hit6),
            cell(r.fc6, base.fc6),
            cell(r.miss6, base.miss6),
            cell(r.nat4, base.nat4),
            cell(r.fc_nat4, base.fc_nat4),
            cell(r.nat6, base.nat6),
            cell(r.fc_nat6, base.fc_nat6),
            cell(r.reply4, base.reply4),
            cell(r.fc_reply4, base.fc_reply4),
            cell(r.reply6, base.reply6),
            cell(r.fc_reply6, base.fc_reply6),
            cell(r.pass, base.pass),
        );
    }
    println!(
        "floor, in the same turns: {floor_ns} ns/packet for xdp_fwd (MAC and TTL rewrite, a redirect, nothing looked \
         up; the test run's own cost included). Above it, with {} services: IPv4 ct hit {} ns, IPv4 cached {} ns, \
         NAT4 ct hit {} ns, NAT4 cached {} ns, NAT4 reply {} ns, NAT4 reply cached {} ns, not a VIP {} ns",
        rows[0].0,
        base.hit4.saturating_sub(floor_ns),
        base.fc4.saturating_sub(floor_ns),
        base.nat4.saturating_sub(floor_ns),
        base.fc_nat4.saturating_sub(floor_ns),
        base.reply4.saturating_sub(floor_ns),
        base.fc_reply4.saturating_sub(floor_ns),
        base.pass.saturating_sub(floor_ns)
    );
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
}
