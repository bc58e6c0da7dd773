//! `xdp_lb` through `BPF_PROG_TEST_RUN` (verdict, packet, counters) and the pinning contract:
//! maps survive a restart of the process that loaded them, and an incompatible pinned map is
//! refused. Needs root; each test uses its own node directory under the real /sys/fs/bpf.

mod common;

use std::path::Path;

use aya::EbpfLoader;
use common::{bpffs, unique_node, PinGuard};
use ferrule_ebpf::{
    abi::{self, IfaceStats},
    test_run_xdp, Datapath, EbpfError, InterfaceStats, XDP_PASS,
};

const LO: u32 = 1;

/// An IPv6/UDP packet between documentation addresses, built readably.
fn udp6_packet(payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2])
        .ipv6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(40000, 8080);
    let mut packet = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut packet, payload).unwrap();
    packet
}

fn stats_of(datapath: &Datapath, ifindex: u32) -> Option<InterfaceStats> {
    datapath.interface_stats().unwrap().into_iter().find(|s| s.ifindex == ifindex)
}

#[test]
fn passes_packets_unchanged_and_counts_them_per_ingress_interface() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("testrun");
    let guard = PinGuard::new(&root, &node);
    let datapath = Datapath::open_at(&root, &node).unwrap();
    let packet = udp6_packet(b"ferrule test payload");
    let before = stats_of(&datapath, LO);
    assert_eq!(before, None, "a fresh node starts with no counters");

    for _ in 0..3 {
        let out = test_run_xdp(datapath.xdp_program_fd().unwrap(), &packet, LO, 1).unwrap();
        assert_eq!(out.retval, XDP_PASS);
        assert_eq!(out.data, packet, "xdp_lb must not modify the packet");
    }

    let after = stats_of(&datapath, LO).expect("lo counted");
    assert_eq!(after.packets, 3);
    assert_eq!(after.bytes, 3 * packet.len() as u64);
    assert_eq!(after.name.as_deref(), Some("lo"));
    datapath.unpin_all().unwrap();
    assert!(!guard.dir.exists(), "unpin_all removes the node directory");
}

#[test]
fn repeat_runs_the_program_that_many_times() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("repeat");
    let _guard = PinGuard::new(&root, &node);
    let datapath = Datapath::open_at(&root, &node).unwrap();
    let packet = udp6_packet(&[0xab; 100]);
    let out = test_run_xdp(datapath.xdp_program_fd().unwrap(), &packet, LO, 5).unwrap();
    assert_eq!(out.retval, XDP_PASS);
    let stats = stats_of(&datapath, LO).unwrap();
    assert_eq!((stats.packets, stats.bytes), (5, 5 * packet.len() as u64));
    datapath.unpin_all().unwrap();
}

#[test]
fn rejects_a_packet_shorter_than_an_ethernet_header() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("short");
    let _guard = PinGuard::new(&root, &node);
    let datapath = Datapath::open_at(&root, &node).unwrap();
    let err = test_run_xdp(datapath.xdp_program_fd().unwrap(), &[0; 10], LO, 1).unwrap_err();
    assert!(matches!(err, EbpfError::TestRunInput(_)), "{err}");
    datapath.unpin_all().unwrap();
}

#[test]
fn counters_survive_a_restart_through_pinned_maps() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("reuse");
    let _guard = PinGuard::new(&root, &node);
    let packet = udp6_packet(b"before restart");

    let first = Datapath::open_at(&root, &node).unwrap();
    for _ in 0..2 {
        test_run_xdp(first.xdp_program_fd().unwrap(), &packet, LO, 1).unwrap();
    }
    let pin_dir = first.pin_dir().to_owned();
    assert!(pin_dir.join("maps/fr_iface_stats").exists());
    assert!(pin_dir.join("progs/xdp_lb").exists());
    drop(first); // a restart: no unpinning

    let second = Datapath::open_at(&root, &node).unwrap();
    let stats = stats_of(&second, LO).expect("counters kept across the restart");
    assert_eq!((stats.packets, stats.bytes), (2, 2 * packet.len() as u64));
    // The new program writes into the same map.
    test_run_xdp(second.xdp_program_fd().unwrap(), &packet, LO, 1).unwrap();
    assert_eq!(stats_of(&second, LO).unwrap().packets, 3);
    second.unpin_all().unwrap();
}

#[test]
fn interfaces_below_and_above_the_array_bound_are_counted_and_older_counts_add_up() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("ifarr");
    let _guard = PinGuard::new(&root, &node);
    // A namespace of this test's own with a veth whose ifindex is above the array's bound.
    let ns = ferrule_tests::NetNs::new("frdpif").unwrap();
    let high = abi::IFACE_STATS_ARR_SIZE + 976;
    let index = high.to_string();
    ns.run("ip", ["link", "add", "frhigh", "index", &index, "type", "veth", "peer", "name", "frhighp"]).unwrap();
    let packet = udp6_packet(b"counted");
    let len = packet.len() as u64;
    let netns = std::fs::File::open(format!("/run/netns/{}", ns.name())).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let datapath = Datapath::open_at(&root, &node).unwrap();
                // An older build counted every interface in the hash: lo's count there still counts.
                let data = aya::maps::MapData::from_pin(datapath.pin_dir().join("maps/fr_iface_stats")).unwrap();
                let mut hash: aya::maps::PerCpuHashMap<_, u32, IfaceStats> =
                    aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data)).unwrap();
                let mut old = vec![IfaceStats::default(); aya::util::nr_cpus().unwrap()];
                old[0] = IfaceStats { packets: 5, bytes: 500 };
                hash.insert(LO, aya::maps::PerCpuValues::try_from(old).unwrap(), 0).unwrap();

                for ifindex in [LO, LO, high] {
                    let out = test_run_xdp(datapath.xdp_program_fd().unwrap(), &packet, ifindex, 1).unwrap();
                    assert_eq!(out.retval, XDP_PASS);
                }
                let lo = stats_of(&datapath, LO).expect("lo counted");
                assert_eq!((lo.packets, lo.bytes), (7, 500 + 2 * len));
                let above = stats_of(&datapath, high).expect("the high ifindex counted");
                assert_eq!((above.packets, above.bytes, above.name.as_deref()), (1, len, Some("frhigh")));
                let in_hash: Vec<u32> = hash.keys().map(|k| k.unwrap()).collect();
                assert!(in_hash.contains(&high), "an ifindex above the array is counted in the hash: {in_hash:?}");
            })
            .join()
            .expect("test thread panicked");
    });
}

#[test]
fn refuses_a_pinned_map_whose_layout_differs_from_this_build() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("abi");
    let guard = PinGuard::new(&root, &node);
    let maps_dir = guard.dir.join("maps");
    std::fs::create_dir_all(&maps_dir).unwrap();

    // An "older build" whose fr_iface_stats value is 8 bytes, pinned where ours would go.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("old.bpf.c");
    std::fs::write(
        &source,
        r#"#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_iface_stats SEC(".maps");
"#,
    )
    .unwrap();
    let object = dir.path().join("old.bpf.o");
    common::compile_bpf(&source, dir.path(), &object);
    let old = EbpfLoader::new().default_map_pin_directory(&maps_dir).load(&std::fs::read(&object).unwrap()).unwrap();
    drop(old);
    assert!(maps_dir.join("fr_iface_stats").exists());

    let err = Datapath::open_at(&root, &node).unwrap_err();
    match &err {
        EbpfError::IncompatiblePinnedMap { path, detail } => {
            assert_eq!(path, &maps_dir.join("fr_iface_stats"));
            assert!(detail.contains("value size 8 pinned, 16 in this build"), "{detail}");
        }
        other => panic!("expected IncompatiblePinnedMap, got {other}"),
    }
}

#[test]
fn refuses_a_directory_that_is_not_bpffs() {
    let dir = tempfile::tempdir().unwrap();
    let err = Datapath::open_at(dir.path(), "n1").unwrap_err();
    assert!(matches!(err, EbpfError::NotBpffs { .. }), "{err}");
    assert!(err.to_string().contains("mount -t bpf bpf"), "{err}");
    assert!(!Path::new(dir.path()).join("ferrule").exists());
}
