//! Attaching `xdp_lb` to real interfaces: a veth pair between two network namespaces this test
//! creates, traffic bounded to 5 pings, counters read back, restart adoption of the pinned link,
//! detaching, and recovery when the interface is recreated. Needs root.

mod common;

use std::{fs::File, path::Path, process::Command};

use common::{bpffs, run, unique_node, PinGuard};
use ferrule_ebpf::{Datapath, UplinkStatus};
use nix::sched::{setns, CloneFlags};

/// Two namespaces joined by a veth pair (`va` in `a` with 192.0.2.1, `vb` in `b` with
/// 192.0.2.2), deleted on drop.
struct NetnsPair {
    a: String,
    b: String,
    va: String,
    vb: String,
}

impl NetnsPair {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let pair = NetnsPair {
            a: format!("frt-a{tag}-{pid}"),
            b: format!("frt-b{tag}-{pid}"),
            // IFNAMSIZ: "frva" + tag + pid stays under 16 bytes.
            va: format!("frva{tag}{pid}"),
            vb: format!("frvb{tag}{pid}"),
        };
        // The guard exists before the first namespace, so a failed setup still cleans up.
        run("ip", &["netns", "add", &pair.a]);
        run("ip", &["netns", "add", &pair.b]);
        pair.create_veth();
        pair
    }

    fn create_veth(&self) {
        run(
            "ip",
            &["-n", &self.a, "link", "add", &self.va, "type", "veth", "peer", "name", &self.vb, "netns", &self.b],
        );
        run("ip", &["-n", &self.a, "addr", "add", "192.0.2.1/24", "dev", &self.va]);
        run("ip", &["-n", &self.b, "addr", "add", "192.0.2.2/24", "dev", &self.vb]);
        run("ip", &["-n", &self.a, "link", "set", &self.va, "up"]);
        run("ip", &["-n", &self.b, "link", "set", &self.vb, "up"]);
    }

    fn delete_veth(&self) {
        run("ip", &["-n", &self.a, "link", "del", &self.va]);
    }

    /// Five pings from `b` to `a`, 0.2 s apart: bounded in count and time.
    fn ping_a_from_b(&self) {
        run("ip", &["netns", "exec", &self.b, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-q", "192.0.2.1"]);
    }

    fn xdp_shown_on_va(&self) -> bool {
        run("ip", &["-n", &self.a, "link", "show", "dev", &self.va]).contains("prog/xdp")
    }

    /// Runs `f` on a thread that has entered namespace `a`: everything the Datapath resolves
    /// (interface names, attach targets) is then in `a`.
    fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.a)).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
                f()
            })
            .join()
            .expect("test thread panicked")
        })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _gone_already_is_fine = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `(link id, program id)` of a pinned link, as bpftool sees it.
fn pinned_link(path: &Path) -> (u64, u64) {
    let json = run("bpftool", &["link", "show", "pinned", path.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap())
}

fn pinned_prog_id(path: &Path) -> u64 {
    let json = run("bpftool", &["prog", "show", "pinned", path.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["id"].as_u64().unwrap()
}

fn packets_on(datapath: &Datapath, ifname: &str) -> u64 {
    datapath.interface_stats().unwrap().into_iter().find(|s| s.name.as_deref() == Some(ifname)).map_or(0, |s| s.packets)
}

fn attached_natively(status: &UplinkStatus, name: &str) {
    assert_eq!(status.name, name);
    assert!(status.attached, "{status:?}");
    assert_eq!(status.mode.as_deref(), Some("native"), "veth supports native XDP: {status:?}");
    assert_eq!(status.error, None);
    assert!(status.ifindex.is_some());
}

#[test]
fn attaches_counts_adopts_after_restart_and_detaches() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("netns");
    let _pins = PinGuard::new(&root, &node);
    let net = NetnsPair::new("1");
    let missing = format!("frnone{}", std::process::id());

    let (link_pin, old_prog, link_id, packets_before_restart) = net.in_a(|| {
        let mut datapath = Datapath::open_at(&root, &node).unwrap();
        let statuses = datapath.set_uplinks(&[net.va.clone(), missing.clone()]);
        assert_eq!(statuses.len(), 2, "{statuses:?}");
        attached_natively(&statuses[0], &net.va);
        // A missing interface is reported on its own entry; the other one is still attached.
        assert_eq!(statuses[1].name, missing);
        assert!(!statuses[1].attached);
        assert!(statuses[1].error.as_deref().unwrap().contains("no interface named"), "{statuses:?}");
        assert_eq!(datapath.uplinks(), statuses);
        assert!(net.xdp_shown_on_va());

        net.ping_a_from_b();
        let packets = packets_on(&datapath, &net.va);
        assert!(packets >= 5, "5 echo requests arrived on {}, counted {packets}", net.va);

        let link_pin = datapath.pin_dir().join(format!("links/xdp_lb:native:{}", net.va));
        let prog = pinned_prog_id(&datapath.pin_dir().join("progs/xdp_lb"));
        let (link_id, link_prog) = pinned_link(&link_pin);
        assert_eq!(link_prog, prog, "the pinned link runs the program this process loaded");

        // Level-triggered: asking again for the same set changes nothing.
        let again = datapath.set_uplinks(std::slice::from_ref(&net.va));
        attached_natively(&again[0], &net.va);
        assert_eq!(pinned_link(&link_pin), (link_id, prog));
        drop(datapath); // a daemon restart: nothing is unpinned
        (link_pin, prog, link_id, packets)
    });
    assert!(net.xdp_shown_on_va(), "the program stays attached while the daemon is down");

    net.in_a(|| {
        let mut datapath = Datapath::open_at(&root, &node).unwrap();
        let adopted = datapath.uplinks();
        assert_eq!(adopted.len(), 1, "{adopted:?}");
        attached_natively(&adopted[0], &net.va);
        assert!(packets_on(&datapath, &net.va) >= packets_before_restart, "counters kept");

        let statuses = datapath.set_uplinks(std::slice::from_ref(&net.va));
        attached_natively(&statuses[0], &net.va);
        let new_prog = pinned_prog_id(&datapath.pin_dir().join("progs/xdp_lb"));
        assert_ne!(new_prog, old_prog, "the restart loaded a new program");
        assert_eq!(pinned_link(&link_pin), (link_id, new_prog), "the same pinned link now runs the new program");

        let before = packets_on(&datapath, &net.va);
        net.ping_a_from_b();
        assert!(packets_on(&datapath, &net.va) >= before + 5);

        assert_eq!(datapath.set_uplinks(&[]), vec![]);
        assert!(datapath.uplinks().is_empty());
        assert!(!net.xdp_shown_on_va(), "set_uplinks([]) detaches");
        assert!(!link_pin.exists());
        datapath.unpin_all().unwrap();
    });
}

#[test]
fn reattaches_when_an_uplink_is_deleted_and_recreated() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("recreate");
    let _pins = PinGuard::new(&root, &node);
    let net = NetnsPair::new("2");

    net.in_a(|| {
        let mut datapath = Datapath::open_at(&root, &node).unwrap();
        attached_natively(&datapath.set_uplinks(std::slice::from_ref(&net.va))[0], &net.va);
        let old_ifindex = datapath.uplinks()[0].ifindex;

        net.delete_veth();
        net.create_veth();
        assert!(!net.xdp_shown_on_va(), "a new interface starts without XDP");

        let statuses = datapath.set_uplinks(std::slice::from_ref(&net.va));
        attached_natively(&statuses[0], &net.va);
        assert_ne!(statuses[0].ifindex, old_ifindex);
        assert!(net.xdp_shown_on_va(), "the defunct link was replaced by a new attachment");
        net.ping_a_from_b();
        assert!(packets_on(&datapath, &net.va) >= 5);
        datapath.unpin_all().unwrap();
    });
    assert!(!net.xdp_shown_on_va(), "unpin_all detaches");
}

#[test]
fn falls_back_to_generic_mode_where_the_driver_has_no_native_xdp() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("generic");
    let _pins = PinGuard::new(&root, &node);
    let net = NetnsPair::new("3");

    // The loopback of namespace `a`: its driver has no native XDP.
    net.in_a(|| {
        let mut datapath = Datapath::open_at(&root, &node).unwrap();
        let statuses = datapath.set_uplinks(&["lo".to_owned()]);
        assert!(statuses[0].attached, "{statuses:?}");
        assert_eq!(statuses[0].mode.as_deref(), Some("generic"));
        assert!(datapath.pin_dir().join("links/xdp_lb:generic:lo").exists());
        let shown = run("ip", &["-n", &net.a, "link", "show", "dev", "lo"]);
        assert!(shown.contains(" xdpgeneric "), "ip shows the generic-mode flag: {shown}");
        datapath.unpin_all().unwrap();
        let shown = run("ip", &["-n", &net.a, "link", "show", "dev", "lo"]);
        assert!(!shown.contains("prog/xdp"), "{shown}");
    });
}
