//! End-to-end tests of `ferrule` itself: `check`, the daemon's API over its unix socket, the state
//! store across restarts, SIGHUP, and the pinned XDP datapath that keeps counting while the daemon
//! is down. Each test builds its own namespaces and its own node name (so its own pin directory).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrule_tests::ferrule::{cli as ferrule, text};
use ferrule_tests::{cmd, net, Ferrule, NetNs, TestDir};
use serde_json::Value;

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel).display().to_string()
}

/// The lines of `out` that are `FILE:LINE:COL: …` errors about `file`.
fn located_errors<'a>(out: &'a str, file: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let Some(rest) = l.strip_prefix(file).and_then(|r| r.strip_prefix(':')) else { return false };
            let mut parts = rest.splitn(3, ':');
            parts.next().is_some_and(|n| n.parse::<u32>().is_ok())
                && parts.next().is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect()
}

#[test]
fn check_prints_every_mistake_with_its_location_and_exits_2() {
    let file = repo_file("config/examples/three-mistakes.toml");
    let out = ferrule(&["check", "--config", &file]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let located = located_errors(&stderr, &file);
    println!("expected 3 FILE:LINE:COL errors, saw:\n{}", located.join("\n"));
    assert_eq!(located.len(), 3, "{stderr}");
    for (line, field) in [(8, "node.asn"), (16, "bgp.announce[0].prefix"), (24, "services[0].backends[0].weight")] {
        assert!(
            located.iter().any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(field)),
            "no error at line {line} for {field}:\n{stderr}"
        );
    }

    let ok = ferrule(&["check", "--config", &repo_file("config/examples/node1.toml")]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout).lines().count(), 1, "one-line summary: {}", text(&ok.stdout));
    assert!(text(&ok.stdout).contains("node node1"), "{}", text(&ok.stdout));
}

#[test]
fn client_says_how_to_start_the_daemon_when_none_runs() {
    let dir = TestDir::new("nodaemon").unwrap();
    let socket = dir.path().join("none.sock");
    let out = ferrule(&["show", "status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("daemon not running") && stderr.contains("ferrule daemon --config"), "{stderr}");
}

/// A node namespace with one uplink (`up0`) joined by a veth to a peer namespace, and a
/// `ferrule daemon` whose XDP program is attached to `up0`.
struct Node {
    _dir: TestDir,
    f: Ferrule,
    peer: NetNs,
}

const NODE_ADDR: &str = "2001:db8:10::1";
const PEER_ADDR: &str = "2001:db8:10::2";

fn node_config(name: &str, asn: u32) -> String {
    format!(
        "[node]\nname = \"{name}\"\nasn = {asn}\nrouter_id = \"192.0.2.11\"\nuplinks = [\"up0\"]\n\n\
         [[bgp.peers]]\naddress = \"{PEER_ADDR}\"\nasn = 65000\n\n[[bgp.announce]]\nprefix = \"2001:db8:100::/64\"\n"
    )
}

impl Node {
    fn new(label: &str) -> Result<Node> {
        let dir = TestDir::new(label)?;
        let node = NetNs::new("fnode")?;
        let peer = NetNs::new("fpeer")?;
        net::veth(&node, "up0", &peer, "down0")?;
        net::add_addr(&node, "up0", &format!("{NODE_ADDR}/64"))?;
        net::add_addr(&peer, "down0", &format!("{PEER_ADDR}/64"))?;
        let name = format!("{label}{}", std::process::id());
        let f = Ferrule::new(&node, dir.path(), &name, &node_config(&name, 65101))?;
        Ok(Node { _dir: dir, f, peer })
    }

    fn status(&self) -> Result<Value> {
        self.f.show(&["status"])
    }

    fn up0_packets(&self) -> Result<u64> {
        let stats = self.f.show(&["interfaces"])?;
        Ok(stats
            .as_array()
            .context("interfaces is a list")?
            .iter()
            .find(|s| s["name"] == "up0")
            .and_then(|s| s["packets"].as_u64())
            .unwrap_or(0))
    }

    /// Whether `up0` still carries an XDP program, asked of the kernel, not of the daemon.
    fn xdp_attached(&self) -> Result<bool> {
        let out = self.f.ns.run("ip", ["-d", "link", "show", "up0"])?;
        Ok(out.contains("xdp"))
    }

    fn ping_from_peer(&self, count: u32) -> Result<()> {
        net::ping(&self.peer, NODE_ADDR.parse()?, count)
    }
}

#[test]
fn api_rejects_bad_config_and_restart_resumes_with_pinned_counters() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut n = Node::new("e2e").unwrap();
    n.f.start(&[]).unwrap();

    // The socket is root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&n.f.socket).unwrap().permissions().mode() & 0o777;
    println!("API socket mode: expected 600, saw {mode:o}");
    assert_eq!(mode, 0o600);

    let status = n.status().unwrap();
    assert_eq!(status["node"], n.f.name.as_str());
    assert_eq!(status["config"]["source"], "file");
    let uplink = &status["datapath"]["uplinks"][0];
    println!("uplink up0: expected attached, saw {uplink}");
    assert_eq!((uplink["name"].as_str(), uplink["attached"].as_bool()), (Some("up0"), Some(true)));
    assert!(n.xdp_attached().unwrap(), "the kernel shows no XDP program on up0");

    n.ping_from_peer(5).unwrap();
    let before = n.up0_packets().unwrap();
    println!("up0 packets after 5 pings: expected >= 5, saw {before}");
    assert!(before >= 5);

    // A config with three mistakes: `apply` prints the same errors as `check` (named by the file),
    // exits 2, and the running config stays as it was.
    let bad = repo_file("config/examples/three-mistakes.toml");
    let check = ferrule(&["check", "--config", &bad]);
    let apply = ferrule(&["apply", "--config", &bad, "--socket", n.f.socket.to_str().unwrap()]);
    assert_eq!(apply.status.code(), Some(2), "{}", text(&apply.stderr));
    let errors = |o: &Output| located_errors(&text(&o.stderr), &bad).into_iter().map(String::from).collect::<Vec<_>>();
    println!("apply errors: expected the 3 of check, saw {:?}", errors(&apply));
    assert_eq!(errors(&apply), errors(&check));
    assert_eq!(errors(&apply).len(), 3);
    let running = n.status().unwrap();
    assert_eq!((running["asn"].as_u64(), running["config"]["generation"].as_u64()), (Some(65101), Some(1)));

    // A good config through the API becomes generation 2 and is kept in the state store.
    let new = n.f.config.parent().unwrap().join("new.toml");
    std::fs::write(&new, node_config(&n.f.name, 65199)).unwrap();
    let apply = ferrule(&["apply", "--config", new.to_str().unwrap(), "--socket", n.f.socket.to_str().unwrap()]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    assert!(text(&apply.stdout).starts_with("accepted: generation 2"), "{}", text(&apply.stdout));

    // Metrics are served inside the node's namespace (bash's /dev/tcp: no extra client needed).
    let metrics = n
        .f
        .ns
        .run("bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/9641; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"])
        .unwrap();
    for series in ["ferrule_config_generation 2", "ferrule_config_changes_total{source=\"api\",result=\"rejected\"} 1"]
    {
        assert!(metrics.contains(series), "metrics lack `{series}`:\n{metrics}");
    }
    assert!(metrics.contains("ferrule_interface_rx_packets_total{interface=\"up0\""), "{metrics}");

    // SIGTERM: the daemon exits cleanly and leaves the datapath in place; it keeps counting.
    n.f.stop().unwrap();
    assert!(!n.f.socket.exists(), "the socket is removed on shutdown");
    assert!(n.xdp_attached().unwrap(), "XDP must stay attached after the daemon stops");
    n.ping_from_peer(3).unwrap();

    // Back with --resume: the config accepted through the API, the same pinned maps.
    n.f.start(&["--resume"]).unwrap();
    let status = n.status().unwrap();
    println!(
        "after --resume: expected asn 65199 generation 2 from api, saw asn {} generation {} from {}",
        status["asn"], status["config"]["generation"], status["config"]["source"]
    );
    assert_eq!(status["asn"], 65199);
    assert_eq!(status["config"]["generation"], 2);
    assert_eq!(status["config"]["source"], "api");
    assert_eq!(status["config"]["resumed"], true);
    let after = n.up0_packets().unwrap();
    println!("up0 packets across the restart: expected >= {} (before + 3 while down), saw {after}", before + 3);
    assert!(after >= before + 3, "counters were reset: before {before}, after {after}");
    n.f.stop().unwrap();
}

#[test]
fn sighup_reloads_the_file_and_a_bad_file_changes_nothing() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut n = Node::new("hup").unwrap();
    n.f.start(&[]).unwrap();
    let pid = nix::unistd::Pid::from_raw(n.f.daemon().unwrap().pid() as i32);
    let generation = |n: &Node| n.status().unwrap()["config"]["generation"].as_u64().unwrap();

    std::fs::write(&n.f.config, "[node]\nname = \"broken\"\nasn = 23456\n").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let log = n.f.daemon().unwrap().log_path().to_owned();
    cmd::poll_until(
        "the daemon to log the rejected reload",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok(std::fs::read_to_string(&log)?.contains("SIGHUP: config rejected")),
    )
    .unwrap();
    assert_eq!(generation(&n), 1, "a rejected file must not change the running config");

    std::fs::write(&n.f.config, node_config(&n.f.name, 65120)).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    cmd::poll_until("generation 2 after SIGHUP", Duration::from_secs(10), Duration::from_millis(100), || {
        Ok(generation(&n) == 2)
    })
    .unwrap();
    let status = n.status().unwrap();
    assert_eq!((status["asn"].as_u64(), status["config"]["source"].as_str()), (Some(65120), Some("sighup")));
    n.f.stop().unwrap();
}

#[test]
fn programs_come_back_on_interfaces_deleted_and_made_again() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("relink").unwrap();
    let node = NetNs::new("fnode").unwrap();
    let peer = NetNs::new("fpeer").unwrap();
    let make_interfaces = || -> Result<()> {
        net::veth(&node, "up0", &peer, "down0")?;
        node.run("ip", ["link", "add", "dc0", "type", "veth", "peer", "name", "dc0p"])?;
        node.run("ip", ["link", "set", "dc0", "up"])?;
        Ok(())
    };
    make_interfaces().unwrap();
    net::add_addr(&node, "up0", &format!("{NODE_ADDR}/64")).unwrap();
    let name = format!("relink{}", std::process::id());
    let config =
        format!("{}\n[decap]\ninterfaces = [\"dc0\"]\naddresses = [\"{NODE_ADDR}\"]\n", node_config(&name, 65101));
    let mut f = Ferrule::new(&node, dir.path(), &name, &config).unwrap();
    f.start(&[]).unwrap();

    // (xdp_lb on up0, tc_decap on dc0) as the daemon reports them (from the kernel's link info:
    // the link's interface index against the index of the interface of that name).
    let reported = |f: &Ferrule| -> Result<(bool, bool)> {
        let datapath = &f.show(&["status"])?["datapath"];
        Ok((datapath["uplinks"][0]["attached"] == true, datapath["decap"]["interfaces"][0]["attached"] == true))
    };
    // XDP as iproute2 shows it (the bpftool here predates tcx, so tc_decap has no such check).
    let xdp_in_kernel = || -> Result<bool> { Ok(node.run("ip", ["-d", "link", "show", "up0"])?.contains("xdp")) };
    let wait_for = |what: &str, want: (bool, bool)| {
        // The reconcile loop looks at the kernel at least every 10 s.
        cmd::poll_until(what, Duration::from_secs(30), Duration::from_millis(200), || Ok(reported(&f)? == want))
            .with_context(|| format!("ferrule log:\n{}", f.log_tail()))
            .unwrap();
    };
    wait_for("both programs attached", (true, true));
    assert!(xdp_in_kernel().unwrap());

    // Deleting the interfaces leaves the pinned links attached to nothing: the daemon notices
    // without any config change.
    node.run("ip", ["link", "del", "dc0"]).unwrap();
    node.run("ip", ["link", "del", "up0"]).unwrap();
    wait_for("both reported detached", (false, false));
    let status = f.show(&["status"]).unwrap();
    println!("after deleting up0 and dc0: {}", status["datapath"]);

    // Made again (new ifindexes): both programs are attached again, in the kernel too.
    make_interfaces().unwrap();
    wait_for("both attached again", (true, true));
    assert!(xdp_in_kernel().unwrap(), "the kernel has xdp_lb on the new up0");
    f.stop().unwrap();
}
