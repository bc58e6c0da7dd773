//! Tests of the harness itself: namespaces and links appear and disappear with their guards, and
//! each daemon runner really brings up FRR, BIRD and GoBGP and gets BGP sessions Established.
//! All are privileged (root + netns); in CI they must run.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ferrule_tests::{
    cmd, net, wait_established, BgpConfig, BgpPeer, Bird, Daemon, Frr, GoBgp, Neighbor, NetNs, SessionState, TestDir,
};

const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

fn netns_exists(name: &str) -> Result<bool> {
    let list = cmd::run(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like "name" or "name (id: 3)".
    Ok(list.lines().any(|line| line.split_whitespace().next() == Some(name)))
}

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid IP literal in test")
}

#[test]
fn netns_guard_creates_and_removes_namespace() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let ns = NetNs::new("hg")?;
    let name = ns.name().to_string();
    ensure!(netns_exists(&name)?, "{name} missing from `ip netns list`");
    let lo = ns.run("ip", ["-o", "link", "show", "lo"])?;
    ensure!(lo.contains("UP"), "loopback not up in {name}: {lo}");
    drop(ns);
    ensure!(!netns_exists(&name)?, "{name} still listed after drop");
    Ok(())
}

#[test]
fn netns_drop_stops_processes_started_inside() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hp")?;
    let child = ns.spawn("sleep", ["60"], &dir.path().join("sleep.log"))?;
    let pid = child.id();
    ensure!(pid_exists(pid), "sleep did not start");
    drop(ns);
    ensure!(!pid_exists(pid), "pid {pid} survived the namespace guard");
    Ok(())
}

#[test]
fn daemon_that_exits_during_startup_reports_its_log() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hd")?;
    let mut daemon =
        Daemon::spawn(&ns, "failing", "sh", ["-c", "echo config is broken; exit 7"], &dir.path().join("failing.log"))?;
    let err =
        daemon.wait_ready(Duration::from_secs(10), || Ok(false)).expect_err("a daemon that exits cannot become ready");
    let msg = format!("{err:#}");
    ensure!(msg.contains("exited during startup"), "{msg}");
    ensure!(msg.contains("config is broken"), "{msg}");
    Ok(())
}

#[test]
fn veth_pair_carries_ipv6_and_ipv4_pings() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let a = NetNs::new("hva")?;
    let b = NetNs::new("hvb")?;
    net::veth(&a, "to-b", &b, "to-a")?;
    net::add_addr(&a, "to-b", "2001:db8:1::1/64")?;
    net::add_addr(&b, "to-a", "2001:db8:1::2/64")?;
    net::add_addr(&a, "to-b", "192.0.2.1/30")?;
    net::add_addr(&b, "to-a", "192.0.2.2/30")?;
    net::wait_dad(&a, "to-b", Duration::from_secs(5))?;
    net::ping(&a, ip("2001:db8:1::2"), 3)?;
    net::ping(&b, ip("2001:db8:1::1"), 3)?;
    net::ping(&a, ip("192.0.2.2"), 3)?;
    net::ping(&b, ip("192.0.2.1"), 3)?;
    let ll = net::link_local(&b, "to-a")?;
    ensure!(matches!(ll, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80), "{ll} is not link-local");
    // An address nobody owns must not answer: proves ping can fail.
    ensure!(net::ping(&a, ip("2001:db8:1::3"), 1).is_err(), "ping to an unused address succeeded");
    Ok(())
}

#[test]
fn bird_starts_and_stops_with_its_guard() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hb")?;
    let mut bird = Bird::start(&ns, dir.path(), &BgpConfig::new(ip4("192.0.2.21"), 65021))?;
    let pid = bird.daemon().pid();
    let status = bird.birdc(&["show", "status"])?;
    ensure!(status.contains("Router ID is 192.0.2.21"), "{status}");
    drop(bird);
    ensure!(!pid_exists(pid), "bird pid {pid} still running after drop");
    Ok(())
}

#[test]
fn frr_starts_and_stops_with_its_guard() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hf")?;
    let mut frr = Frr::start(&ns, dir.path(), &BgpConfig::new(ip4("192.0.2.22"), 65022))?;
    let pids: Vec<u32> = frr.daemons().iter().map(|d| d.pid()).collect();
    ensure!(pids.len() == 2, "expected zebra and bgpd, got {pids:?}");
    let out = frr.vtysh(&["show running-config"])?;
    ensure!(out.contains("bgp router-id 192.0.2.22"), "{out}");
    drop(frr);
    for pid in pids {
        ensure!(!pid_exists(pid), "FRR pid {pid} still running after drop");
    }
    Ok(())
}

#[test]
fn two_frr_instances_run_side_by_side() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let a = NetNs::new("hfa")?;
    let b = NetNs::new("hfb")?;
    let frr_a = Frr::start(&a, dir.path(), &BgpConfig::new(ip4("192.0.2.23"), 65023))?;
    let frr_b = Frr::start(&b, dir.path(), &BgpConfig::new(ip4("192.0.2.24"), 65024))?;
    let out_a = frr_a.vtysh(&["show running-config"])?;
    let out_b = frr_b.vtysh(&["show running-config"])?;
    ensure!(out_a.contains("bgp router-id 192.0.2.23"), "instance A answered: {out_a}");
    ensure!(out_b.contains("bgp router-id 192.0.2.24"), "instance B answered: {out_b}");
    Ok(())
}

#[test]
fn gobgp_starts_and_stops_with_its_guard() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hgo")?;
    let mut gobgp = GoBgp::start(&ns, dir.path(), &BgpConfig::new(ip4("192.0.2.25"), 65025))?;
    let pid = gobgp.daemon().pid();
    let global = gobgp.cli(&["global"])?;
    ensure!(global.contains("65025"), "{global}");
    ensure!(global.contains("192.0.2.25"), "{global}");
    drop(gobgp);
    ensure!(!pid_exists(pid), "gobgpd pid {pid} still running after drop");
    Ok(())
}

/// Two namespaces joined by a veth carrying 2001:db8:<link>::1 and ::2.
fn linked_pair(prefix: &str, link: u16) -> Result<(NetNs, NetNs, IpAddr, IpAddr)> {
    let a = NetNs::new(&format!("{prefix}a"))?;
    let b = NetNs::new(&format!("{prefix}b"))?;
    net::veth(&a, "to-b", &b, "to-a")?;
    let (addr_a, addr_b) = (ip(&format!("2001:db8:{link:x}::1")), ip(&format!("2001:db8:{link:x}::2")));
    net::add_addr(&a, "to-b", &format!("{addr_a}/64"))?;
    net::add_addr(&b, "to-a", &format!("{addr_b}/64"))?;
    net::ping(&a, addr_b, 2).context("link must work before BGP can")?;
    Ok((a, b, addr_a, addr_b))
}

#[test]
fn frr_and_bird_reach_established_over_veth() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let (a, b, addr_a, addr_b) = linked_pair("hfb", 0x10)?;
    let mut frr = Frr::start(
        &a,
        dir.path(),
        &BgpConfig::new(ip4("192.0.2.31"), 65000).neighbor(Neighbor::new("bird", addr_b, 65101)),
    )?;
    let mut bird = Bird::start(
        &b,
        dir.path(),
        &BgpConfig::new(ip4("192.0.2.32"), 65101).neighbor(Neighbor::new("frr", addr_a, 65000).local_address(addr_b)),
    )?;
    wait_established(&bird, addr_a, SESSION_TIMEOUT)?;
    wait_established(&frr, addr_b, SESSION_TIMEOUT)?;
    ensure!(bird.protocol_state("frr")? == SessionState::Established);
    let summary = bird.sessions_summary();
    ensure!(summary.contains("Established"), "birdc: {summary}");

    let mut pids: Vec<u32> = frr.daemons().iter().map(|d| d.pid()).collect();
    pids.push(bird.daemon().pid());
    let names = [a.name().to_string(), b.name().to_string()];
    drop((frr, bird, a, b));
    for pid in pids {
        ensure!(!pid_exists(pid), "pid {pid} still running after drop");
    }
    for name in names {
        ensure!(!netns_exists(&name)?, "{name} still exists after drop");
    }
    Ok(())
}

#[test]
fn gobgp_and_bird_reach_established_over_veth() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let (a, b, addr_a, addr_b) = linked_pair("hgb", 0x20)?;
    let mut gobgp = GoBgp::start(
        &a,
        dir.path(),
        &BgpConfig::new(ip4("192.0.2.41"), 65002).neighbor(Neighbor::new("bird", addr_b, 65101)),
    )?;
    let mut bird = Bird::start(
        &b,
        dir.path(),
        &BgpConfig::new(ip4("192.0.2.42"), 65101).neighbor(Neighbor::new("gobgp", addr_a, 65002).local_address(addr_b)),
    )?;
    wait_established(&gobgp, addr_b, SESSION_TIMEOUT)?;
    wait_established(&bird, addr_a, SESSION_TIMEOUT)?;

    let pids = [gobgp.daemon().pid(), bird.daemon().pid()];
    drop((gobgp, bird));
    for pid in pids {
        ensure!(!pid_exists(pid), "pid {pid} still running after drop");
    }
    Ok(())
}

fn ip4(s: &str) -> std::net::Ipv4Addr {
    s.parse().expect("valid IPv4 literal in test")
}

#[test]
fn host_bpffs_is_mounted_and_a_second_call_keeps_it() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let path = ferrule_tests::bpffs::ensure_host_bpffs()?;
    ferrule_tests::bpffs::ensure_host_bpffs()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let stacked = mounts.lines().filter(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")).count();
    ensure!(stacked == 1, "expected one bpffs at {}, found {stacked}:\n{mounts}", path.display());
    let fstype = cmd::run(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]))?;
    ensure!(fstype.trim() == "bpf_fs", "/sys/fs/bpf is {fstype}");
    Ok(())
}

#[test]
fn frr_runs_bfdd_and_staticd_next_to_bgpd() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let dir = TestDir::new("harness")?;
    let ns = NetNs::new("hfx")?;
    let bgpd = ferrule_tests::frr::render_bgpd_config(ns.name(), &BgpConfig::new(ip4("192.0.2.26"), 65026));
    let static_route = "ip route 203.0.113.0/24 blackhole\n";
    let mut frr = Frr::start_raw(&ns, dir.path(), &[("bgpd", &bgpd), ("bfdd", "bfd\n!\n"), ("staticd", static_route)])?;
    let names: Vec<String> = frr.daemons().iter().map(|d| d.name().to_string()).collect();
    ensure!(names.len() == 4, "expected zebra, bgpd, bfdd, staticd: {names:?}");
    let peers = frr.vtysh(&["show bfd peers"])?;
    ensure!(peers.contains("BFD Peers"), "{peers}");
    cmd::poll_until("staticd's route in the kernel", Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(ns.run("ip", ["-4", "route", "show", "203.0.113.0/24"])?.contains("blackhole"))
    })?;
    Ok(())
}
