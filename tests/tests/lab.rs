//! The netns lab (`deploy/lab/lab.sh`) end to end: `up` twice without duplicating anything,
//! `status`, then `down` leaving no namespace, process or pinned state behind. Privileged, and it
//! needs the ferrule binary built beforehand (`cargo build -p ferrule`), which CI does.
//! In between, the client's requests to the two service VIPs that both nodes announce (NAT, and DSR
//! with `ferrule decap` on the backends) are answered.
//!
//! The lab uses fixed names (fr-*, /run/ferrule-lab), so this test tears down any lab already
//! running on the machine before it starts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use ferrule_tests::cmd;

const RUN_DIR: &str = "/run/ferrule-lab";
const NODES: [&str; 2] = ["node1", "node2"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits inside the repository").to_path_buf()
}

/// `FERRULE_BIN`, else the workspace's debug build. The binary belongs to another crate, so cargo
/// does not build it for this one.
fn ferrule_bin() -> PathBuf {
    let bin =
        std::env::var_os("FERRULE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/ferrule"));
    assert!(
        bin.is_file(),
        "ferrule binary not found at {}: run `cargo build -p ferrule` first (or set FERRULE_BIN)",
        bin.display()
    );
    bin
}

fn lab(action: &str, bin: &Path) -> Result<String> {
    let script = repo_root().join("deploy/lab/lab.sh");
    let out = cmd::run(Command::new("bash").arg(&script).arg(action).env("FERRULE_BIN", bin))
        .with_context(|| format!("lab.sh {action}"))?;
    println!("--- lab.sh {action} ---\n{out}");
    Ok(out)
}

/// Brings the lab down even when an assertion fails half-way, so a failed run leaves no lab.
struct LabGuard<'a> {
    bin: &'a Path,
    armed: bool,
}

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = lab("down", self.bin) {
                eprintln!("cleanup after failure: {e:#}");
            }
        }
    }
}

fn lab_namespaces() -> Result<Vec<String>> {
    let list = cmd::run(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("fr-"))
        .map(str::to_string)
        .collect())
}

/// The PIDs the lab recorded, by daemon name.
fn recorded_pids() -> Result<Vec<(String, u32)>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(Path::new(RUN_DIR).join("pids"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pid") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(&path)?.trim().parse()?;
            pids.push((name, pid));
        }
    }
    pids.sort();
    Ok(pids)
}

/// `ferrule show status --json` from a node must answer and name that node.
fn node_answers(bin: &Path, node: &str) -> Result<()> {
    let socket = format!("{RUN_DIR}/{node}.sock");
    let out = cmd::run(Command::new(bin).args(["show", "status", "--socket", &socket, "--json"]))?;
    let status: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("status of {node} is not JSON: {out}"))?;
    ensure!(status["node"] == node, "{socket} answered for node {} instead of {node}: {out}", status["node"]);
    Ok(())
}

fn addresses(ns: &str) -> Result<String> {
    cmd::run(Command::new("ip").args(["-n", ns, "-br", "addr", "show"]))
}

/// The lab's service VIPs, announced by both nodes, with what the backend sees as the peer of a
/// client's connection: `web` (NAT to both backends) sees the node's address on its backend link,
/// `web-dsr` (DSR, `ferrule decap` on the backends) the client's own address.
const VIPS: [(&str, &str); 2] = [("203.0.113.10:80", "198.51.100."), ("203.0.113.11:80", "192.0.2.100:")];

/// One TCP connection from fr-client to `vip` (bash's /dev/tcp, bounded by `timeout 5`): the
/// backend's one-line answer.
fn vip_request(vip: &str) -> Result<String> {
    let (addr, port) = vip.split_once(':').expect("address:port");
    let script = format!("exec 3<>/dev/tcp/{addr}/{port} && head -n 1 <&3");
    let out = cmd::run(Command::new("ip").args(["netns", "exec", "fr-client", "timeout", "5", "bash", "-c", &script]))?;
    Ok(out.trim().to_string())
}

#[test]
fn lab_comes_up_idempotently_and_goes_down_cleanly() -> Result<()> {
    if !ferrule_tests::privileged() {
        return Ok(());
    }
    let bin = ferrule_bin();
    lab("down", &bin)?;
    let mut guard = LabGuard { bin: &bin, armed: true };

    lab("up", &bin)?;
    for node in NODES {
        node_answers(&bin, node)?;
    }
    let pids_first = recorded_pids()?;
    ensure!(pids_first.len() == 6, "expected zebra, bfdd, bgpd, bird and two ferrule daemons, recorded {pids_first:?}");
    let addrs_first = addresses("fr-node1")?;

    // Idempotent: the same daemons (nothing restarted) and the same addresses (nothing doubled).
    lab("up", &bin)?;
    ensure!(recorded_pids()? == pids_first, "second up changed the daemons' PIDs");
    let addrs_second = addresses("fr-node1")?;
    ensure!(addrs_first == addrs_second, "second up changed fr-node1's addresses:\n{addrs_first}\nvs\n{addrs_second}");
    for node in NODES {
        node_answers(&bin, node)?;
    }

    // Both ToRs learn both nodes' prefixes over BGP (bounded wait: sessions take a few seconds).
    let expected = ["2001:db8:100::/64", "2001:db8:101::/64", "198.51.100.0/30", "198.51.100.4/30"];
    let tor_routes = || -> Result<(String, String)> {
        let frr = cmd::run(
            Command::new("ip")
                .args(["netns", "exec", "fr-tor1", "vtysh", "--vty_socket"])
                .arg(format!("{RUN_DIR}/tor1"))
                .args(["-c", "show bgp ipv6 unicast", "-c", "show bgp ipv4 unicast"]),
        )?;
        let bird = cmd::run(
            Command::new("ip")
                .args(["netns", "exec", "fr-tor2", "birdc", "-s"])
                .arg(format!("{RUN_DIR}/tor2/bird.ctl"))
                .args(["show", "route"]),
        )?;
        Ok((frr, bird))
    };
    let mut seen = (String::new(), String::new());
    let learned = cmd::poll_until(
        "both ToRs to learn both nodes' prefixes",
        std::time::Duration::from_secs(40),
        std::time::Duration::from_millis(500),
        || {
            seen = tor_routes()?;
            Ok(expected.iter().all(|p| seen.0.contains(p) && seen.1.contains(p)))
        },
    );
    println!("ToR routes: expected {expected:?} on FRR and BIRD, saw:\n--- FRR\n{}\n--- BIRD\n{}", seen.0, seen.1);
    learned?;

    // The client reaches each service VIP that both nodes announce, and a backend answers it (each
    // request bounded by 5 s; the whole wait by 30 s, while the VIP settles on both ToRs).
    for (vip, peer) in VIPS {
        let mut answer = String::new();
        let answered = cmd::poll_until(
            "a backend to answer the client's request to the VIP",
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(500),
            || {
                answer = vip_request(vip)?;
                Ok(answer.starts_with("be1 answered for ") || answer.starts_with("be2 answered for "))
            },
        );
        println!("VIP {vip}: expected `be1|be2 answered for {peer}…`, saw {answer:?}");
        answered?;
        ensure!(answer.contains(&format!("answered for {peer}")), "VIP {vip}: {answer}");
    }

    let status = lab("status", &bin)?;
    for (vip, peer) in VIPS {
        let section = status.split(&format!("== fr-client: one request to the VIP {vip}")).nth(1).unwrap_or("");
        ensure!(section.lines().nth(1).is_some_and(|l| l.contains(&format!(" answered for {peer}"))), "{status}");
    }
    ensure!(status.contains("BGP router identifier 192.0.2.1"), "{status}");
    ensure!(status.contains("node1      BGP"), "{status}");
    ensure!(status.contains("node node2"), "{status}");

    guard.armed = false;
    lab("down", &bin)?;
    let left = lab_namespaces()?;
    ensure!(left.is_empty(), "namespaces left after down: {left:?}");
    for (name, pid) in pids_first {
        // A PID may be recycled by now; it must at least not be running our daemon.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        ensure!(
            !cmdline.contains("ferrule") && !cmdline.contains("/usr/lib/frr") && !cmdline.starts_with("bird"),
            "{name} (pid {pid}) still running after down: {cmdline}"
        );
    }
    ensure!(!Path::new(RUN_DIR).exists(), "{RUN_DIR} left after down");
    for node in NODES.iter().chain(&["be1", "be2"]) {
        let pins = Path::new("/sys/fs/bpf/ferrule").join(node);
        ensure!(!pins.exists(), "{} left after down", pins.display());
    }
    Ok(())
}
