//! The load balancer in `xdp_lb` through `BPF_PROG_TEST_RUN`: packet in → exact packet out and
//! verdict, for every path (DSR IPIP / IP6IP6 / 4in6, conntrack, NAT both ways, ICMP errors,
//! fragments, pass-through and malformed input), plus `tc_decap`. Each test builds its own netns
//! with a veth whose routes and permanent neighbours make `bpf_fib_lookup` succeed, and runs the
//! program on a thread inside it (ingress = that veth). Needs root.

mod common;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use common::{bpffs, run, unique_node, PinGuard};
use etherparse::{
    IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6FlowLabel, Ipv6Header, PacketBuilder, SlicedPacket, TransportSlice,
};
use ferrule_ebpf::{
    abi::{LbBackend, LbCountersRaw, LbCtEntry, LbFlow, LbNatEntry, FAMILY_IPV4, FAMILY_IPV6, LB_TRAFFIC_ARR_SIZE},
    test_run_skb, test_run_xdp, BackendEntry, Datapath, Decap, EbpfError, L4Proto, LbMode, ServiceKey, ServiceUpsert,
    TestRunOutput, TC_ACT_OK, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use nix::sched::{setns, CloneFlags};

const MAC_DEV: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_PEER: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];

const NODE4: [u8; 4] = [198, 51, 100, 1];
const BACKEND_A4: [u8; 4] = [198, 51, 100, 10];
const BACKEND_B4: [u8; 4] = [198, 51, 100, 11];
const CLIENT4: [u8; 4] = [203, 0, 113, 7];
const VIP4: [u8; 4] = [192, 0, 2, 80];
const NODE6: [u8; 16] = v6(0x100, 1);
const BACKEND_A6: [u8; 16] = v6(0x100, 0x10);
const BACKEND_B6: [u8; 16] = v6(0x100, 0x11);
const CLIENT6: [u8; 16] = v6(0x7, 7);
const VIP6: [u8; 16] = v6(0x80, 0x80);

const ID_A4: u32 = 1;
const ID_B4: u32 = 2;
const ID_A6: u32 = 3;
const ID_B6: u32 = 4;
const TABLE_SIZE: usize = 251;

/// `2001:db8:<net>::<host>`.
const fn v6(net: u16, host: u16) -> [u8; 16] {
    let n = net.to_be_bytes();
    let h = host.to_be_bytes();
    [0x20, 0x01, 0x0d, 0xb8, n[0], n[1], 0, 0, 0, 0, 0, 0, 0, 0, h[0], h[1]]
}

fn ip4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

/// A namespace with veth `dev` (MAC_DEV, 198.51.100.1/24, 2001:db8:100::1/64) whose routes
/// reach the backends (198.51.100.10/.11, 2001:db8:100::10/::11) and the clients (203.0.113.7,
/// 2001:db8:7::7) through permanent neighbours, with forwarding on so bpf_fib_lookup answers.
struct LbNet {
    ns: String,
    dev: String,
}

/// The tags of the namespaces made so far: two tests with one tag would share a namespace name
/// (and break each other when they run at once), so a second use fails at once instead.
static TAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl LbNet {
    fn new(tag: &str) -> Self {
        let mut tags = TAGS.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!tags.iter().any(|t| t == tag), "LbNet tag {tag:?} is used by another test");
        tags.push(tag.to_owned());
        drop(tags);
        let pid = std::process::id();
        let net = LbNet { ns: format!("frlb-{tag}-{pid}"), dev: format!("frl{tag}{pid}") };
        let peer = format!("{}p", net.dev);
        run("ip", &["netns", "add", &net.ns]);
        let ip = |args: &[&str]| {
            let mut all = vec!["-n", net.ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        ip(&["link", "add", &net.dev, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &net.dev, "up"]);
        ip(&["link", "set", &peer, "up"]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &net.dev]);
        ip(&["addr", "add", "2001:db8:100::1/64", "dev", &net.dev, "nodad"]);
        ip(&["route", "add", "203.0.113.0/24", "dev", &net.dev]);
        ip(&["route", "add", "2001:db8:7::/64", "dev", &net.dev]);
        for (addr, mac) in [
            ("198.51.100.10", "02:00:00:00:00:0a"),
            ("198.51.100.11", "02:00:00:00:00:0b"),
            ("2001:db8:100::10", "02:00:00:00:00:0a"),
            ("2001:db8:100::11", "02:00:00:00:00:0b"),
            ("203.0.113.7", "02:00:00:00:00:07"),
            ("2001:db8:7::7", "02:00:00:00:00:07"),
        ] {
            ip(&["neigh", "add", addr, "lladdr", mac, "dev", &net.dev, "nud", "permanent"]);
        }
        run(
            "ip",
            &["netns", "exec", &net.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        );
        net
    }

    /// Runs `f` with the ifindex of `dev` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce(u32) -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.ns)).expect("netns file");
        let dev = self.dev.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
                let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("veth ifindex");
                f(ifindex)
            })
            .join()
            .expect("test thread panicked")
        })
    }
}

impl Drop for LbNet {
    fn drop(&mut self) {
        let _gone_already_is_fine = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A loaded datapath with node addresses, four backends (A/B in each family) and helpers.
struct Lb {
    dp: Datapath,
    _guard: PinGuard,
    ifindex: u32,
    /// The pins' node name, for [`Lb::restart`].
    node: String,
}

impl Lb {
    fn open(tag: &str, ifindex: u32) -> Lb {
        let root = bpffs();
        let node = unique_node(tag);
        let guard = PinGuard::new(&root, &node);
        let mut dp = Datapath::open_at(&root, &node).unwrap();
        let mut lb = dp.lb();
        lb.set_node_addresses(Some(NODE4.into()), Some(NODE6.into())).unwrap();
        for (id, addr, port) in [
            (ID_A4, ip4(BACKEND_A4), 8080),
            (ID_B4, ip4(BACKEND_B4), 8080),
            (ID_A6, ip6(BACKEND_A6), 8080),
            (ID_B6, ip6(BACKEND_B6), 8080),
        ] {
            lb.upsert_backend(id, &BackendEntry { address: addr, port, down: false }).unwrap();
        }
        Lb { dp, _guard: guard, ifindex, node }
    }

    /// What a restart of the daemon does: the datapath opened again on the same pins (a new
    /// load of the program, its private maps new and empty, the pinned maps adopted).
    fn restart(self) -> Lb {
        let Lb { dp, _guard, ifindex, node } = self;
        drop(dp);
        let dp = Datapath::open_at(&bpffs(), &node).unwrap();
        Lb { dp, _guard, ifindex, node }
    }

    /// A service whose whole table points at `backend`.
    fn service(&mut self, vip: IpAddr, port: u16, proto: L4Proto, id: u32, mode: LbMode, backend: u32) -> ServiceKey {
        let key = ServiceKey { vip, port, proto };
        self.dp.lb().upsert_service(&key, id, mode, &[backend; TABLE_SIZE]).unwrap();
        key
    }

    fn run(&self, packet: &[u8]) -> TestRunOutput {
        test_run_xdp(self.dp.xdp_program_fd().unwrap(), packet, self.ifindex, 1).unwrap()
    }

    fn upsert_backend_for_test(&mut self, id: u32, addr: [u8; 4]) {
        self.dp.lb().upsert_backend(id, &BackendEntry { address: ip4(addr), port: 8080, down: false }).unwrap();
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out
}

/// client:40000 → VIP:80 TCP (SYN when `syn`), IPv4, in an Ethernet frame to the node.
fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_PEER, MAC_DEV).ipv4(src, dst, 64);
    let b = if syn { b.tcp(sport, dport, 1000, 64240).syn() } else { b.tcp(sport, dport, 1001, 64240).ack(5000) };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_PEER, MAC_DEV).ipv4(src, dst, 64).udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_PEER, MAC_DEV).ipv6(src, dst, 64);
    let b = if syn { b.tcp(sport, dport, 1000, 64240).syn() } else { b.tcp(sport, dport, 1001, 64240).ack(5000) };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_PEER, MAC_DEV).ipv6(src, dst, 64).udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

/// What xdp_lb must emit for DSR over IPv4: Ethernet to `mac` from the veth, then an outer IPv4
/// header node → backend (id and DF copied from an inner IPv4 header, DF set for inner IPv6),
/// then the client's IP packet unchanged.
fn expect_ipip(mac: [u8; 6], backend: [u8; 4], inner_ip: &[u8]) -> Vec<u8> {
    let inner_v4 = inner_ip[0] >> 4 == 4;
    let protocol = if inner_v4 { 4 } else { 41 };
    let mut outer = Ipv4Header::new(inner_ip.len() as u16, 64, IpNumber(protocol), NODE4, backend).unwrap();
    if inner_v4 {
        let inner = etherparse::Ipv4HeaderSlice::from_slice(inner_ip).unwrap();
        outer.identification = inner.identification();
        outer.dont_fragment = inner.dont_fragment();
    }
    outer.header_checksum = outer.calc_header_checksum();
    let mut out = eth(mac, MAC_DEV, 0x0800);
    out.extend_from_slice(&outer.to_bytes());
    out.extend_from_slice(inner_ip);
    out
}

/// DSR over IPv6 (IP6IP6 or 4in6): the inner flow label is copied, hop limit 64.
fn expect_ip6_tunnel(mac: [u8; 6], backend: [u8; 16], inner_ip: &[u8]) -> Vec<u8> {
    let inner_v4 = inner_ip[0] >> 4 == 4;
    let flow_label = if inner_v4 { 0 } else { u32::from_be_bytes(inner_ip[..4].try_into().unwrap()) & 0xfffff };
    let outer = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::try_new(flow_label).unwrap(),
        payload_length: inner_ip.len() as u16,
        next_header: IpNumber(if inner_v4 { 4 } else { 41 }),
        hop_limit: 64,
        source: NODE6,
        destination: backend,
    };
    let mut out = eth(mac, MAC_DEV, 0x86dd);
    outer.write(&mut out).unwrap();
    out.extend_from_slice(inner_ip);
    out
}

/// Pins the calling thread to the CPU it is on: test runs then share that CPU's per-CPU maps
/// (lb_be_nh, the next-hop slots), as the packets of one flow do on one receive queue.
fn stay_on_this_cpu() {
    let cpu = nix::sched::sched_getcpu().expect("sched_getcpu");
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("CPU index");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

fn assert_tx(out: &TestRunOutput, expected: &[u8], what: &str) {
    assert_eq!(out.retval, XDP_TX, "{what}: verdict");
    assert_eq!(hex(&out.data), hex(expected), "{what}: packet");
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn dsr_ipv4_tcp_encapsulates_in_ipip_and_conntrack_keeps_the_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("a");
    net.run(|ifindex| {
        let mut lb = Lb::open("dsr4", ifindex);
        let key = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 7, LbMode::Dsr, ID_A4);

        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let out = lb.run(&syn);
        assert_tx(&out, &expect_ipip(MAC_A, BACKEND_A4, &syn[14..]), "SYN (conntrack miss)");

        // The table now sends every new flow to B; the established flow stays on A.
        lb.dp.lb().upsert_service(&key, 7, LbMode::Dsr, &[ID_B4; TABLE_SIZE]).unwrap();
        let ack = tcp4(CLIENT4, 40000, VIP4, 80, false, b"GET / HTTP/1.0\r\n\r\n");
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "ACK (conntrack hit)");
        let other = tcp4(CLIENT4, 40001, VIP4, 80, true, b"");
        assert_tx(&lb.run(&other), &expect_ipip(MAC_B, BACKEND_B4, &other[14..]), "new flow after the swap");

        let lbm = lb.dp.lb();
        let service = lbm.service_counters(7).unwrap();
        assert_eq!((service.packets, service.new_flows), (3, 2));
        assert_eq!(service.bytes, (syn.len() + ack.len() + other.len()) as u64);
        assert_eq!(lbm.backend_counters(ID_A4).unwrap().packets, 2);
        assert_eq!(lbm.backend_counters(ID_B4).unwrap().new_flows, 1);
        assert_eq!(lbm.service_table(7).unwrap(), vec![ID_B4; TABLE_SIZE]);
    });
}

#[test]
fn dsr_ipv4_udp_miss_then_hit_uses_one_backend_of_a_mixed_table() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("b");
    net.run(|ifindex| {
        let mut lb = Lb::open("udp4", ifindex);
        let key = ServiceKey { vip: ip4(VIP4), port: 53, proto: L4Proto::Udp };
        let table: Vec<u32> = (0..TABLE_SIZE).map(|i| if i % 2 == 0 { ID_A4 } else { ID_B4 }).collect();
        lb.dp.lb().upsert_service(&key, 9, LbMode::Dsr, &table).unwrap();
        for sport in 1000..1032u16 {
            let q = udp4(CLIENT4, sport, VIP4, 53, b"query");
            let first = lb.run(&q);
            assert_eq!(first.retval, XDP_TX);
            let (mac, backend) = if first.data[..6] == MAC_A { (MAC_A, BACKEND_A4) } else { (MAC_B, BACKEND_B4) };
            assert_eq!(first.data, expect_ipip(mac, backend, &q[14..]), "sport {sport}");
            assert_eq!(lb.run(&q).data, first.data, "the second datagram of sport {sport} follows the first");
        }
        let lbm = lb.dp.lb();
        let (a, b) = (lbm.backend_counters(ID_A4).unwrap(), lbm.backend_counters(ID_B4).unwrap());
        assert_eq!(a.new_flows + b.new_flows, 32);
        assert!(a.new_flows > 0 && b.new_flows > 0, "32 flows over a 50/50 table use both: {a:?} {b:?}");
    });
}

#[test]
fn dsr_ipv6_encapsulates_in_ip6ip6_for_tcp_and_udp() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("c");
    net.run(|ifindex| {
        let mut lb = Lb::open("dsr6", ifindex);
        let key = lb.service(ip6(VIP6), 443, L4Proto::Tcp, 11, LbMode::Dsr, ID_A6);
        lb.service(ip6(VIP6), 443, L4Proto::Udp, 12, LbMode::Dsr, ID_B6);

        let syn = tcp6(CLIENT6, 50000, VIP6, 443, true, b"");
        assert_tx(&lb.run(&syn), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &syn[14..]), "TCP SYN");
        lb.dp.lb().upsert_service(&key, 11, LbMode::Dsr, &[ID_B6; TABLE_SIZE]).unwrap();
        let ack = tcp6(CLIENT6, 50000, VIP6, 443, false, b"data");
        assert_tx(&lb.run(&ack), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &ack[14..]), "TCP ACK (conntrack hit)");

        let quic = udp6(CLIENT6, 50001, VIP6, 443, b"initial");
        assert_tx(&lb.run(&quic), &expect_ip6_tunnel(MAC_B, BACKEND_B6, &quic[14..]), "UDP");
        assert_eq!(lb.dp.lb().service_counters(12).unwrap().new_flows, 1);
    });
}

#[test]
fn dsr_ipv4_vip_with_ipv6_backend_uses_4in6() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("d");
    net.run(|ifindex| {
        let mut lb = Lb::open("4in6", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 5, LbMode::Dsr, ID_A6);
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        assert_tx(&lb.run(&syn), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &syn[14..]), "4in6");
    });
}

/// Checks that a packet's IPv4 and L4 checksums are right, by recomputing them.
fn assert_checksums_valid(frame: &[u8]) {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 header checksum");
    let payload = ip.payload().payload;
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let expected = tcp.to_header().calc_checksum_ipv4(&header, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), expected, "TCP checksum");
        }
        Some(TransportSlice::Udp(udp)) => {
            let expected = udp.to_header().calc_checksum_ipv4(&header, udp.payload()).unwrap();
            assert_eq!(udp.checksum(), expected, "UDP checksum");
        }
        other => panic!("unexpected transport {other:?} ({} bytes)", payload.len()),
    }
}

#[test]
fn nat_translates_both_directions_with_valid_checksums() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("e");
    net.run(|ifindex| {
        let mut lb = Lb::open("nat", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 21, LbMode::Nat, ID_A4);
        let request = tcp4(CLIENT4, 40000, VIP4, 80, false, b"GET / HTTP/1.0\r\n\r\n");
        let out = lb.run(&request);
        assert_eq!(out.retval, XDP_TX);
        // The SNAT port comes from the flow's hash; everything else is fixed.
        let nat_port = u16::from_be_bytes([out.data[34], out.data[35]]);
        assert!((10_000..32_768).contains(&nat_port), "SNAT port {nat_port} in the NAT range");
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(MAC_DEV, MAC_A)
            .ipv4(NODE4, BACKEND_A4, 64)
            .tcp(nat_port, 8080, 1001, 64240)
            .ack(5000)
            .write(&mut expected, b"GET / HTTP/1.0\r\n\r\n")
            .unwrap();
        // The builder writes src MAC second: put the veth's MAC as source and A's as destination.
        expected[..6].copy_from_slice(&MAC_A);
        expected[6..12].copy_from_slice(&MAC_DEV);
        assert_eq!(hex(&out.data), hex(&expected), "forward: DNAT + SNAT");
        assert_checksums_valid(&out.data);
        assert_eq!(lb.run(&request).data, out.data, "the same flow keeps its SNAT port");

        let reply = tcp4(BACKEND_A4, 8080, NODE4, nat_port, false, b"HTTP/1.0 200 OK\r\n\r\n");
        let back = lb.run(&reply);
        assert_eq!(back.retval, XDP_TX);
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(MAC_DEV, MAC_CLIENT)
            .ipv4(VIP4, CLIENT4, 64)
            .tcp(80, 40000, 1001, 64240)
            .ack(5000)
            .write(&mut expected, b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap();
        expected[..6].copy_from_slice(&MAC_CLIENT);
        expected[6..12].copy_from_slice(&MAC_DEV);
        assert_eq!(hex(&back.data), hex(&expected), "reverse: back to VIP → client");
        assert_checksums_valid(&back.data);
        assert_eq!(lb.dp.lb().events().unwrap().nat_reply, 1);

        // A packet to the node's address on a NAT port with no flow is the node's own business.
        let stray = tcp4(BACKEND_B4, 8080, NODE4, nat_port, false, b"");
        let out = lb.run(&stray);
        assert_eq!((out.retval, out.data), (XDP_PASS, stray));
    });
}

/// A backend id given to another backend (removed, then reused for a new one) does not carry
/// the old flows along: the flow starts over with fresh NAT state for the new host, whose
/// replies are translated back.
#[test]
fn a_reused_backend_id_starts_its_old_flows_over() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("r");
    net.run(|ifindex| {
        // One CPU, so that the second packet meets the per-CPU next-hop slot the first one filled.
        stay_on_this_cpu();
        let mut lb = Lb::open("reuse", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 23, LbMode::Nat, ID_A4);
        let request = tcp4(CLIENT4, 40001, VIP4, 80, false, b"x");
        let first = lb.run(&request);
        assert_eq!(first.retval, XDP_TX);
        assert_eq!(first.data[30..34], BACKEND_A4, "to A first");

        // The id now names another host (as after A's removal and B's addition).
        lb.upsert_backend_for_test(ID_A4, BACKEND_B4);
        let again = lb.run(&request);
        assert_eq!(again.retval, XDP_TX);
        assert_eq!(again.data[30..34], BACKEND_B4, "the same flow now goes to the id's new host");
        assert_eq!(again.data[..6], MAC_B, "through the new host's next hop, not the one cached for the id");
        assert_checksums_valid(&again.data);
        assert_eq!(lb.dp.lb().service_counters(23).unwrap().new_flows, 2, "counted as a new flow");

        // B's reply finds NAT state made for B and goes back to the client from the VIP.
        let nat_port = u16::from_be_bytes([again.data[34], again.data[35]]);
        let reply = tcp4(BACKEND_B4, 8080, NODE4, nat_port, false, b"y");
        let back = lb.run(&reply);
        assert_eq!(back.retval, XDP_TX, "reply translated");
        assert_eq!((back.data[26..30].to_vec(), back.data[30..34].to_vec()), (VIP4.to_vec(), CLIENT4.to_vec()));
        assert_checksums_valid(&back.data);
    });
}

/// A backend marked down (its health checks failed): its UDP flows start over through the
/// service's table, its TCP flows stay (FR_LB_BE_DOWN in ferrule_abi.h). Without the mark, a
/// table that no longer names it moves neither: conntrack keeps them.
#[test]
fn a_down_backend_loses_its_udp_flows_and_keeps_its_tcp_flows() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("dn");
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("down", ifindex);
        let udp = lb.service(ip4(VIP4), 53, L4Proto::Udp, 31, LbMode::Nat, ID_A4);
        let tcp = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 32, LbMode::Nat, ID_A4);
        let query = udp4(CLIENT4, 5353, VIP4, 53, b"q");
        let request = tcp4(CLIENT4, 40001, VIP4, 80, false, b"x");
        // Twice each: the second from the flow cache, which the mark must not get around.
        for packet in [&query, &request, &query, &request] {
            let out = lb.run(packet);
            assert_eq!((out.retval, out.data[30..34].to_vec()), (XDP_TX, BACKEND_A4.to_vec()), "to A first");
        }

        // A leaves the tables (unhealthy for one service, or draining): both flows stay on A.
        lb.dp.lb().upsert_service(&udp, 31, LbMode::Nat, &[ID_B4; TABLE_SIZE]).unwrap();
        lb.dp.lb().upsert_service(&tcp, 32, LbMode::Nat, &[ID_B4; TABLE_SIZE]).unwrap();
        for packet in [&query, &request] {
            assert_eq!(lb.run(packet).data[30..34], BACKEND_A4, "conntrack keeps the flow on A");
        }

        // A is down: the UDP flow moves to B as a new flow, the TCP flow stays on A.
        let a = BackendEntry { address: ip4(BACKEND_A4), port: 8080, down: true };
        lb.dp.lb().upsert_backend(ID_A4, &a).unwrap();
        assert_eq!(lb.dp.lb().backends().unwrap().iter().find(|(id, _)| *id == ID_A4).map(|(_, b)| b.down), Some(true));
        let moved = lb.run(&query);
        assert_eq!((moved.retval, moved.data[30..34].to_vec()), (XDP_TX, BACKEND_B4.to_vec()), "UDP starts over on B");
        assert_eq!(moved.data[..6], MAC_B);
        assert_checksums_valid(&moved.data);
        assert_eq!(lb.dp.lb().service_counters(31).unwrap().new_flows, 2, "counted as a new flow");
        assert_eq!(lb.run(&query).data[30..34], BACKEND_B4, "and stays there");
        let kept = lb.run(&request);
        assert_eq!((kept.retval, kept.data[30..34].to_vec()), (XDP_TX, BACKEND_A4.to_vec()), "TCP stays on A");
        assert_eq!(lb.dp.lb().service_counters(32).unwrap().new_flows, 1);
    });
}

#[test]
fn nat_udp_checksum_stays_valid() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("f");
    net.run(|ifindex| {
        let mut lb = Lb::open("natudp", ifindex);
        lb.service(ip4(VIP4), 53, L4Proto::Udp, 22, LbMode::Nat, ID_B4);
        let out = lb.run(&udp4(CLIENT4, 5353, VIP4, 53, b"query"));
        assert_eq!(out.retval, XDP_TX);
        assert_eq!(&out.data[..6], &MAC_B);
        assert_eq!(&out.data[26..34], &[NODE4, BACKEND_B4].concat());
        assert_eq!(&out.data[36..38], &8080u16.to_be_bytes());
        assert_checksums_valid(&out.data);

        // A payload chosen so that the translated datagram's checksum computes to 0: it is sent
        // as 0xffff (RFC 768), never as 0, which would mean "no checksum". Same flow, so the same
        // SNAT port: the word that brings the translated sum to 0xffff is found from `out`.
        let (ip, udp) = (&out.data[14..34], &out.data[34..42]);
        let mut zeroed = udp.to_vec();
        zeroed[4..8].copy_from_slice(&[0, 8 + 2, 0, 0]); // length of a 2-byte payload, checksum 0
        let pseudo = pseudo_header(&ip[12..16], &ip[16..20], 17, 8 + 2);
        let word = internet_checksum(&[&pseudo, &zeroed, &[0, 0]]).to_be_bytes();
        let zero_sum = lb.run(&udp4(CLIENT4, 5353, VIP4, 53, &word));
        assert_eq!(zero_sum.retval, XDP_TX);
        assert_eq!(&zero_sum.data[34..36], &out.data[34..36], "same flow, same SNAT port");
        assert_eq!(&zero_sum.data[40..42], &[0xff, 0xff], "a computed 0 is sent as 0xffff");
        assert_checksums_valid(&zero_sum.data);

        // A UDP/IPv4 checksum of 0 ("none") stays 0; addresses, ports and the IPv4 header
        // checksum are translated as usual.
        let mut unchecked = udp4(CLIENT4, 5353, VIP4, 53, b"query");
        unchecked[40..42].copy_from_slice(&[0, 0]);
        let none = lb.run(&unchecked);
        assert_eq!(none.retval, XDP_TX);
        assert_eq!(&none.data[26..38], &out.data[26..38], "translated like the checksummed datagram");
        assert_eq!(&none.data[40..42], &[0, 0], "no checksum stays no checksum");
        let header = Ipv4HeaderSlice::from_slice(&none.data[14..34]).unwrap().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 header checksum");
    });
}

/// An ICMP error from a router on the path back to the client: it quotes the backend's DSR reply
/// (VIP:80 → client:sport) and is addressed to the VIP.
fn icmp4_frag_needed(quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_PEER, MAC_DEV)
        .ipv4([198, 51, 100, 254], VIP4, 64)
        .icmpv4_raw(3, 4, [0, 0, 0x05, 0xdc])
        .write(&mut out, quoted)
        .unwrap();
    out
}

fn reply4(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(VIP4, CLIENT4, 64).tcp(sport, dport, 5000, 64240).ack(1001).write(&mut out, &[0; 8]).unwrap();
    out
}

#[test]
fn icmp_errors_for_a_flow_go_to_the_flows_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("g");
    net.run(|ifindex| {
        let mut lb = Lb::open("icmp", ifindex);
        let key = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 31, LbMode::Dsr, ID_A4);
        let key6 = lb.service(ip6(VIP6), 80, L4Proto::Tcp, 32, LbMode::Dsr, ID_A6);
        assert_eq!(lb.run(&tcp4(CLIENT4, 40000, VIP4, 80, true, b"")).retval, XDP_TX);
        assert_eq!(lb.run(&tcp6(CLIENT6, 40000, VIP6, 80, true, b"")).retval, XDP_TX);
        // New flows would now go to B: the ICMP error must still reach A, which sent the reply.
        lb.dp.lb().upsert_service(&key, 31, LbMode::Dsr, &[ID_B4; TABLE_SIZE]).unwrap();
        lb.dp.lb().upsert_service(&key6, 32, LbMode::Dsr, &[ID_B6; TABLE_SIZE]).unwrap();

        let icmp = icmp4_frag_needed(&reply4(80, 40000));
        assert_tx(&lb.run(&icmp), &expect_ipip(MAC_A, BACKEND_A4, &icmp[14..]), "frag-needed");

        let mut quoted = Vec::new();
        PacketBuilder::ipv6(VIP6, CLIENT6, 64)
            .tcp(80, 40000, 5000, 64240)
            .ack(1001)
            .write(&mut quoted, &[0; 8])
            .unwrap();
        let mut ptb = Vec::new();
        PacketBuilder::ethernet2(MAC_PEER, MAC_DEV)
            .ipv6(v6(0x100, 0xfe), VIP6, 64)
            .icmpv6_raw(2, 0, 1280u32.to_be_bytes())
            .write(&mut ptb, &quoted)
            .unwrap();
        assert_tx(&lb.run(&ptb), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &ptb[14..]), "packet too big");

        // An error for a flow conntrack never saw goes where Maglev sends that flow (B now).
        let unknown = icmp4_frag_needed(&reply4(80, 41234));
        assert_tx(&lb.run(&unknown), &expect_ipip(MAC_B, BACKEND_B4, &unknown[14..]), "unknown flow");
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.icmp_forwarded, events.icmp_no_flow), (3, 1));

        // An error quoting something that is not a service is the stack's.
        let other = icmp4_frag_needed(&reply4(22, 40000));
        let out = lb.run(&other);
        assert_eq!((out.retval, out.data), (XDP_PASS, other));
    });
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`: 0 when they include a
/// correct checksum field.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.concat();
    let mut sum: u32 = bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header of a TCP/UDP/ICMPv6 checksum (RFC 768/793 for IPv4, RFC 8200 for IPv6).
fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let len = if src.len() == 4 { (len as u16).to_be_bytes().to_vec() } else { (len as u32).to_be_bytes().to_vec() };
    let proto_field = if src.len() == 4 { vec![0, proto] } else { vec![0, 0, 0, proto] };
    [src, dst, &len[..], &proto_field[..]].concat()
}

/// Recomputes every checksum of an ICMP error (in an untagged Ethernet frame): the outer IPv4
/// header's, the ICMP one (ICMPv6 with its pseudo-header), the quoted IPv4 header's, and the
/// quoted TCP/UDP one when the quote holds the whole segment (a UDP 0, "none", is accepted).
/// Returns whether the quoted L4 checksum was there to check.
fn assert_icmp_checksums_valid(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let v4 = ip[0] >> 4 == 4;
    let icmp = if v4 {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        assert_eq!(internet_checksum(&[&ip[..ihl]]), 0, "outer IPv4 header checksum");
        let icmp = &ip[ihl..usize::from(u16::from_be_bytes([ip[2], ip[3]]))];
        assert_eq!(internet_checksum(&[icmp]), 0, "ICMP checksum");
        icmp
    } else {
        let icmp = &ip[40..40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))];
        let pseudo = pseudo_header(&ip[8..24], &ip[24..40], 58, icmp.len());
        assert_eq!(internet_checksum(&[&pseudo, icmp]), 0, "ICMPv6 checksum");
        icmp
    };
    let quote = &icmp[8..];
    let (l4, proto, pseudo_of) = if v4 {
        let ihl = usize::from(quote[0] & 0xf) * 4;
        assert_eq!(internet_checksum(&[&quote[..ihl]]), 0, "quoted IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([quote[2], quote[3]]));
        (&quote[ihl..quote.len().min(total)], quote[9], total - ihl)
    } else {
        let total = 40 + usize::from(u16::from_be_bytes([quote[4], quote[5]]));
        (&quote[40..quote.len().min(total)], quote[6], total - 40)
    };
    if l4.len() < pseudo_of {
        return false; // the quote was cut short: the segment's checksum cannot be recomputed
    }
    let (src, dst) = if v4 { (&quote[12..16], &quote[16..20]) } else { (&quote[8..24], &quote[24..40]) };
    if proto == 17 && l4[6..8] == [0, 0] {
        return true;
    }
    let pseudo = pseudo_header(src, dst, proto, l4.len());
    assert_eq!(internet_checksum(&[&pseudo, l4]), 0, "quoted L4 checksum (protocol {proto})");
    true
}

/// Ethernet source and destination of a frame arriving from the peer.
const IN: ([u8; 6], [u8; 6]) = (MAC_PEER, MAC_DEV);

/// Ethernet source and destination of a frame xdp_lb sends to `mac`.
fn out_to(mac: [u8; 6]) -> ([u8; 6], [u8; 6]) {
    (MAC_DEV, mac)
}

/// The checker itself: a frame built with correct checksums passes, and a single changed byte in
/// the quote (covered by the ICMP checksum) or in the quoted segment is caught.
#[test]
fn icmp_checksum_checker_catches_a_changed_byte() {
    let good = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, CLIENT4, 40000));
    assert!(assert_icmp_checksums_valid(&good));
    let good6 = icmp6_error(IN, ROUTER6, VIP6, PACKET_TOO_BIG_1280, &tcp_segment6(VIP6, 80, CLIENT6, 40000));
    assert!(assert_icmp_checksums_valid(&good6));
    for (frame, at) in [(&good, 14 + 20 + 8 + 20), (&good6, 14 + 40 + 8 + 40 + 2), (&good6, 14 + 8)] {
        let mut bad = frame.clone();
        bad[at] ^= 0x40;
        assert!(std::panic::catch_unwind(|| assert_icmp_checksums_valid(&bad)).is_err(), "byte {at} changed");
    }
}

/// An ICMP error of `kind` (type, code, bytes 4..8) quoting `quoted`, as a host would write it.
fn icmp4_error(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    kind: (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .icmpv4_raw(kind.0, kind.1, kind.2)
        .write(&mut out, quoted)
        .unwrap();
    out
}

fn icmp6_error(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    kind: (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .icmpv6_raw(kind.0, kind.1, kind.2)
        .write(&mut out, quoted)
        .unwrap();
    out
}

/// An IP packet (no Ethernet) of a TCP flow, with an 8-byte payload.
fn tcp_segment4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 5000, 64240).ack(1001).write(&mut out, &[7; 8]).unwrap();
    out
}

fn tcp_segment6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src, dst, 64).tcp(sport, dport, 5000, 64240).ack(1001).write(&mut out, &[7; 8]).unwrap();
    out
}

fn udp_datagram4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut out, b"answer").unwrap();
    out
}

/// `node.snat_ports`: new NAT flows take ports from the configured range, replies are taken only
/// on it, and a flow whose port a change of the range left out moves into the new one on its
/// next packet (its old port's replies are no longer translated).
#[test]
fn nat_takes_its_snat_ports_from_the_configured_range() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("sp");
    net.run(|ifindex| {
        let mut lb = Lb::open("natports", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 21, LbMode::Nat, ID_A4);
        let first = tcp4(CLIENT4, 40000, VIP4, 80, false, b"a");
        let old_port = nat_port_of(&lb, &first);
        assert!((10_000..32_768).contains(&old_port), "the default range: {old_port}");

        lb.dp.lb().set_nat_ports(50_000..=50_015).unwrap();
        let second = tcp4(CLIENT4, 40001, VIP4, 80, false, b"b");
        let new_port = nat_port_of(&lb, &second);
        assert!((50_000..=50_015).contains(&new_port), "a new flow in the new range: {new_port}");
        let reply = tcp4(BACKEND_A4, 8080, NODE4, new_port, false, b"ok");
        assert_eq!(lb.run(&reply).retval, XDP_TX, "its reply translated");

        // The first flow's port is outside the range now: its replies are the node's business,
        // and its next packet moves it into the range.
        let stale_reply = tcp4(BACKEND_A4, 8080, NODE4, old_port, false, b"ok");
        let out = lb.run(&stale_reply);
        assert_eq!((out.retval, out.data), (XDP_PASS, stale_reply));
        // So is an ICMP error about its replies: conntrack still holds the old port, which is
        // no longer the flow's to translate to.
        let icmp = nat_icmp_passes_unhandled(&mut lb, (CLIENT4, 40000), "error about a flow on a port left out");
        let moved = nat_port_of(&lb, &first);
        assert!((50_000..=50_015).contains(&moved), "moved into the range: {moved}");
        let reply = tcp4(BACKEND_A4, 8080, NODE4, moved, false, b"ok");
        assert_eq!(lb.run(&reply).retval, XDP_TX);
        assert_tx(&lb.run(&icmp), &nat_icmp_to_backend_a(moved), "the same error once the flow moved");

        // An empty or reversed range is refused and changes nothing.
        let (high, low) = (60_000, 59_999);
        assert!(lb.dp.lb().set_nat_ports(high..=low).is_err());
        assert!(lb.dp.lb().set_nat_ports(0..=10).is_err());
        let third = tcp4(CLIENT4, 40002, VIP4, 80, false, b"c");
        assert!((50_000..=50_015).contains(&nat_port_of(&lb, &third)));
    });
}

const FRAG_NEEDED_1500: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0xdc]);
const PACKET_TOO_BIG_1280: (u8, u8, [u8; 4]) = (2, 0, 1280u32.to_be_bytes());
const ROUTER4: [u8; 4] = [198, 51, 100, 254];
const ROUTER6: [u8; 16] = v6(0x100, 0xfe);

/// An ICMP "fragmentation needed" from a router about the reply VIP4:80 -> `client` passes to
/// the stack unchanged, counted as nat_unhandled. Returns the error.
fn nat_icmp_passes_unhandled(lb: &mut Lb, client: ([u8; 4], u16), what: &str) -> Vec<u8> {
    let icmp = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, client.0, client.1));
    let unhandled = lb.dp.lb().events().unwrap().nat_unhandled;
    let out = lb.run(&icmp);
    assert_eq!((out.retval, &out.data), (XDP_PASS, &icmp), "{what}");
    assert_eq!(lb.dp.lb().events().unwrap().nat_unhandled, unhandled + 1, "{what}");
    icmp
}

/// That error as backend A (port 8080) gets it for its packet to the node's SNAT `port`.
fn nat_icmp_to_backend_a(port: u16) -> Vec<u8> {
    icmp4_error(out_to(MAC_A), NODE4, BACKEND_A4, FRAG_NEEDED_1500, &tcp_segment4(BACKEND_A4, 8080, NODE4, port))
}

/// Sends a request of a new NAT flow and returns the SNAT port it was given.
fn nat_port_of(lb: &Lb, request: &[u8]) -> u16 {
    let out = lb.run(request);
    assert_eq!(out.retval, XDP_TX, "request of a NAT flow");
    let l4 = if request[12..14] == [0x08, 0x00] { 14 + 20 } else { 14 + 40 };
    u16::from_be_bytes([out.data[l4], out.data[l4 + 1]])
}

/// NAT mode: an ICMP error about a translated reply (VIP:vport → client:cport), sent by a router
/// on the way to the client, reaches the backend as an error about its own packet (backend:bport
/// → node:nat_port), from the node; every checksum recomputed by the test matches.
#[test]
fn nat_icmp_errors_reach_the_backend_translated() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("s");
    net.run(|ifindex| {
        let mut lb = Lb::open("naticmp", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 33, LbMode::Nat, ID_A4);
        lb.service(ip4(VIP4), 53, L4Proto::Udp, 34, LbMode::Nat, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 35, LbMode::Nat, ID_A6);
        let nat4 = nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, false, b"GET"));
        let nat_udp = nat_port_of(&lb, &udp4(CLIENT4, 5353, VIP4, 53, b"query"));
        let nat6 = nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, false, b"GET"));

        // IPv4 fragmentation needed, quoting the whole reply (as Linux routers do, up to 576 bytes):
        // the quoted TCP checksum is there and is fixed too.
        let icmp = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, CLIENT4, 40000));
        let expected = icmp4_error(
            out_to(MAC_A),
            NODE4,
            BACKEND_A4,
            FRAG_NEEDED_1500,
            &tcp_segment4(BACKEND_A4, 8080, NODE4, nat4),
        );
        let out = lb.run(&icmp);
        assert_tx(&out, &expected, "frag-needed, whole reply quoted");
        assert!(assert_icmp_checksums_valid(&out.data), "the quoted TCP checksum was checked");

        // RFC 792's minimum: the IP header and 8 bytes, so no TCP checksum to fix.
        let icmp = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, CLIENT4, 40000)[..28]);
        let expected = icmp4_error(
            out_to(MAC_A),
            NODE4,
            BACKEND_A4,
            FRAG_NEEDED_1500,
            &tcp_segment4(BACKEND_A4, 8080, NODE4, nat4)[..28],
        );
        let out = lb.run(&icmp);
        assert_tx(&out, &expected, "frag-needed, header + 8 bytes quoted");
        assert!(!assert_icmp_checksums_valid(&out.data));

        // UDP: a port unreachable from the client about the answer; a UDP checksum of 0 stays 0.
        let unreachable = (3, 3, [0; 4]);
        let mut answer = udp_datagram4(VIP4, 53, CLIENT4, 5353);
        let mut translated = udp_datagram4(BACKEND_A4, 8080, NODE4, nat_udp);
        let out = lb.run(&icmp4_error(IN, CLIENT4, VIP4, unreachable, &answer));
        assert_tx(
            &out,
            &icmp4_error(out_to(MAC_A), NODE4, BACKEND_A4, unreachable, &translated),
            "port unreachable (UDP)",
        );
        assert!(assert_icmp_checksums_valid(&out.data));
        answer[26..28].copy_from_slice(&[0, 0]);
        translated[26..28].copy_from_slice(&[0, 0]);
        let out = lb.run(&icmp4_error(IN, CLIENT4, VIP4, unreachable, &answer));
        assert_tx(
            &out,
            &icmp4_error(out_to(MAC_A), NODE4, BACKEND_A4, unreachable, &translated),
            "UDP without checksum",
        );
        assert!(assert_icmp_checksums_valid(&out.data));

        // IPv6 packet too big: the ICMPv6 checksum also covers the new outer addresses.
        let ptb = icmp6_error(IN, ROUTER6, VIP6, PACKET_TOO_BIG_1280, &tcp_segment6(VIP6, 80, CLIENT6, 40000));
        let expected = icmp6_error(
            out_to(MAC_A),
            NODE6,
            BACKEND_A6,
            PACKET_TOO_BIG_1280,
            &tcp_segment6(BACKEND_A6, 8080, NODE6, nat6),
        );
        let out = lb.run(&ptb);
        assert_tx(&out, &expected, "packet too big");
        assert!(assert_icmp_checksums_valid(&out.data));

        let lbm = lb.dp.lb();
        let events = lbm.events().unwrap();
        assert_eq!((events.icmp_forwarded, events.nat_unhandled, events.malformed), (5, 0, 0), "{events:?}");
        // One request and two errors for service 33, one request and two errors for 34.
        assert_eq!((lbm.service_counters(33).unwrap().packets, lbm.service_counters(34).unwrap().packets), (3, 3));
        assert_eq!(lbm.backend_counters(ID_A4).unwrap().packets, 6, "requests and errors on the backend");
        assert_eq!(lbm.backend_counters(ID_A6).unwrap().packets, 2);
    });
}

/// NAT mode, the other way: an ICMP error about a translated request (node:nat_port →
/// backend:bport), from the backend or a router before it, goes back to the client as an error
/// about the client's own packet (client:cport → VIP:vport), from the VIP.
#[test]
fn nat_icmp_errors_from_the_backend_side_reach_the_client_translated() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("t");
    net.run(|ifindex| {
        let mut lb = Lb::open("naticmpback", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 36, LbMode::Nat, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 37, LbMode::Nat, ID_A6);
        let nat4 = nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, false, b"GET"));
        let nat6 = nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, false, b"GET"));

        let icmp = icmp4_error(IN, ROUTER4, NODE4, FRAG_NEEDED_1500, &tcp_segment4(NODE4, nat4, BACKEND_A4, 8080));
        let expected =
            icmp4_error(out_to(MAC_CLIENT), VIP4, CLIENT4, FRAG_NEEDED_1500, &tcp_segment4(CLIENT4, 40000, VIP4, 80));
        let out = lb.run(&icmp);
        assert_tx(&out, &expected, "frag-needed from a router before the backend");
        assert!(assert_icmp_checksums_valid(&out.data));

        let unreachable = (1, 4, [0; 4]);
        let icmp = icmp6_error(IN, BACKEND_A6, NODE6, unreachable, &tcp_segment6(NODE6, nat6, BACKEND_A6, 8080));
        let expected =
            icmp6_error(out_to(MAC_CLIENT), VIP6, CLIENT6, unreachable, &tcp_segment6(CLIENT6, 40000, VIP6, 80));
        let out = lb.run(&icmp);
        assert_tx(&out, &expected, "port unreachable from the backend");
        assert!(assert_icmp_checksums_valid(&out.data));

        // A NAT port that no flow holds: the node's own business, untouched and uncounted.
        let stray = icmp4_error(IN, ROUTER4, NODE4, FRAG_NEEDED_1500, &tcp_segment4(NODE4, nat4 ^ 1, BACKEND_A4, 8080));
        let out = lb.run(&stray);
        assert_eq!((out.retval, out.data), (XDP_PASS, stray), "no NAT state for the quoted packet");
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.icmp_forwarded, events.nat_unhandled, events.malformed), (2, 0, 0), "{events:?}");
    });
}

/// NAT mode: an error for a flow without conntrack (its SNAT port cannot be known) and errors
/// whose quote is cut before the ports, or lies about its header, pass to the stack unchanged
/// with a counter; nothing half-translated is sent.
#[test]
fn nat_icmp_errors_without_a_flow_or_with_a_truncated_quote_pass() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("u");
    net.run(|ifindex| {
        let mut lb = Lb::open("naticmpbad", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 38, LbMode::Nat, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 39, LbMode::Nat, ID_A6);
        nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, false, b"GET"));

        let no_flow = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, CLIENT4, 41234));
        let out = lb.run(&no_flow);
        assert_eq!((out.retval, out.data), (XDP_PASS, no_flow), "no conntrack entry");
        assert_eq!(lb.dp.lb().events().unwrap().nat_unhandled, 1);

        // IPv6 behind an extension header (destination options, PadN): not translated.
        nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, false, b"GET"));
        let ptb = icmp6_error(IN, ROUTER6, VIP6, PACKET_TOO_BIG_1280, &tcp_segment6(VIP6, 80, CLIENT6, 40000));
        let mut with_ext = ptb[..54].to_vec();
        with_ext[20] = 60; // next header: destination options
        with_ext.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        with_ext.extend_from_slice(&ptb[54..]);
        let payload_len = (with_ext.len() - 54) as u16;
        with_ext[18..20].copy_from_slice(&payload_len.to_be_bytes());
        let out = lb.run(&with_ext);
        assert_eq!((out.retval, out.data), (XDP_PASS, with_ext), "ICMPv6 behind an extension header");
        assert_eq!(lb.dp.lb().events().unwrap().nat_unhandled, 2);

        let reply = tcp_segment4(VIP4, 80, CLIENT4, 40000);
        let mut bad_ihl = reply.clone();
        bad_ihl[0] = 0x44; // IHL 4 in the quoted header
                           // The IP header and the source port only.
        let short = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &reply[..22]);
        // The ports are in the frame, but after the end of the outer IP packet (Ethernet padding).
        let mut padded = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &reply[..20]);
        padded.extend_from_slice(&reply[20..28]);
        let reply6 = tcp_segment6(VIP6, 80, CLIENT6, 40000);
        // A quoted later fragment has no ports to find a flow by: the stack's, with no counter.
        let mut later_fragment = reply.clone();
        later_fragment[6..8].copy_from_slice(&1u16.to_be_bytes()); // offset 8 bytes
        let later_fragment = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &later_fragment);
        let out = lb.run(&later_fragment);
        assert_eq!((out.retval, out.data), (XDP_PASS, later_fragment), "quoted later fragment");
        for (what, packet) in [
            ("quote cut after the source port", short),
            ("quoted IHL below 5", icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &bad_ihl)),
            ("quoted ports in the padding", padded),
            ("quoted IPv6 header cut short", icmp6_error(IN, ROUTER6, VIP6, PACKET_TOO_BIG_1280, &reply6[..30])),
            (
                "quote of IPv6 cut after the source port",
                icmp6_error(IN, ROUTER6, VIP6, PACKET_TOO_BIG_1280, &reply6[..42]),
            ),
        ] {
            let out = lb.run(&packet);
            assert_eq!((out.retval, &out.data), (XDP_PASS, &packet), "{what}");
        }
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.malformed, events.icmp_forwarded, events.nat_unhandled), (5, 0, 2), "{events:?}");
    });
}

/// An IPv4 fragment of a UDP datagram: `l4` is the bytes at `offset` (8-byte units).
fn fragment4(id: u16, offset: u16, more: bool, l4: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(l4.len() as u16, 64, IpNumber(17), CLIENT4, VIP4).unwrap();
    h.identification = id;
    h.dont_fragment = false;
    h.more_fragments = more;
    h.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut out = eth(MAC_DEV, MAC_PEER, 0x0800);
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(l4);
    out
}

#[test]
fn later_fragments_follow_the_first_and_unknown_ones_pass() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("h");
    net.run(|ifindex| {
        let mut lb = Lb::open("frag", ifindex);
        let key = lb.service(ip4(VIP4), 53, L4Proto::Udp, 41, LbMode::Dsr, ID_A4);
        // UDP header (5353 → 53, length 8 + 24) + the first 8 payload bytes.
        let mut first_l4 = Vec::new();
        first_l4.extend_from_slice(&5353u16.to_be_bytes());
        first_l4.extend_from_slice(&53u16.to_be_bytes());
        first_l4.extend_from_slice(&32u16.to_be_bytes());
        first_l4.extend_from_slice(&[0, 0]);
        first_l4.extend_from_slice(&[1; 8]);
        let first = fragment4(0x4242, 0, true, &first_l4);
        assert_tx(&lb.run(&first), &expect_ipip(MAC_A, BACKEND_A4, &first[14..]), "first fragment");

        lb.dp.lb().upsert_service(&key, 41, LbMode::Dsr, &[ID_B4; TABLE_SIZE]).unwrap();
        let later = fragment4(0x4242, 2, false, &[2; 16]);
        assert_tx(&lb.run(&later), &expect_ipip(MAC_A, BACKEND_A4, &later[14..]), "later fragment");

        let orphan = fragment4(0x9999, 2, false, &[3; 16]);
        let out = lb.run(&orphan);
        assert_eq!((out.retval, out.data), (XDP_PASS, orphan), "a fragment whose first was not seen");
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.frag_forwarded, events.frag_unknown), (1, 1));
    });
}

/// Adds `packets` and `bytes` on CPU 0 to the counters of `id` in the pinned per-CPU hash `map`,
/// as an older build (which kept every id's packets and bytes there) would have left them.
fn seed_hash_counters(pin_dir: &std::path::Path, map: &str, id: u32, packets: u64, bytes: u64) {
    let data = aya::maps::MapData::from_pin(pin_dir.join("maps").join(map)).unwrap();
    let mut hash: aya::maps::PerCpuHashMap<_, u32, LbCountersRaw> =
        aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data)).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let mut values = vec![LbCountersRaw::default(); cpus];
    values[0].packets = packets;
    values[0].bytes = bytes;
    hash.insert(id, aya::maps::PerCpuValues::try_from(values).unwrap(), 0).unwrap();
}

#[test]
fn packets_and_bytes_of_low_and_high_ids_add_up_and_clear_with_the_id() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("k");
    net.run(|ifindex| {
        let mut lb = Lb::open("ids", ifindex);
        // Below FR_LB_TRAFFIC_ARR_SIZE packets and bytes are counted in arrays, from it on in the
        // hashes: a service and a backend on each side of the boundary.
        let high = LB_TRAFFIC_ARR_SIZE;
        lb.upsert_backend_for_test(high, BACKEND_B4);
        let low_key = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 7, LbMode::Dsr, ID_A4);
        let high_key = lb.service(ip4(VIP4), 81, L4Proto::Tcp, high, LbMode::Dsr, high);
        // An older build counted id 7's (and backend A's) packets in the hashes: they still count.
        let pin_dir = lb.dp.pin_dir().to_owned();
        seed_hash_counters(&pin_dir, "fr_lb_service_stats", 7, 10, 1000);
        seed_hash_counters(&pin_dir, "fr_lb_backend_stats", ID_A4, 20, 2000);

        let to_low = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let to_high = tcp4(CLIENT4, 40000, VIP4, 81, true, b"");
        for packet in [&to_low, &to_low, &to_high, &to_high, &to_high] {
            assert_eq!(lb.run(packet).retval, XDP_TX);
        }
        let len = to_low.len() as u64;
        let lbm = lb.dp.lb();
        let (low, high_service) = (lbm.service_counters(7).unwrap(), lbm.service_counters(high).unwrap());
        assert_eq!((low.packets, low.bytes, low.new_flows), (12, 1000 + 2 * len, 1));
        assert_eq!((high_service.packets, high_service.bytes, high_service.new_flows), (3, 3 * len, 1));
        let (a, b) = (lbm.backend_counters(ID_A4).unwrap(), lbm.backend_counters(high).unwrap());
        assert_eq!((a.packets, a.bytes), (22, 2000 + 2 * len));
        assert_eq!((b.packets, b.bytes, b.new_flows), (3, 3 * len, 1));

        // A removed id's counters go with it, in both maps: its next holder starts at zero.
        lb.dp.lb().remove_service(&low_key).unwrap();
        lb.dp.lb().remove_service(&high_key).unwrap();
        lb.dp.lb().remove_backend(high).unwrap();
        lb.upsert_backend_for_test(high, BACKEND_B4);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 7, LbMode::Dsr, high);
        lb.service(ip4(VIP4), 81, L4Proto::Tcp, high, LbMode::Dsr, ID_A4);
        let lbm = lb.dp.lb();
        for (what, c) in [
            ("service 7", lbm.service_counters(7).unwrap()),
            ("service 4096", lbm.service_counters(high).unwrap()),
            ("backend 4096", lbm.backend_counters(high).unwrap()),
        ] {
            assert_eq!((c.packets, c.bytes, c.new_flows), (0, 0, 0), "{what}");
        }
    });
}

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("i");
    net.run(|ifindex| {
        let mut lb = Lb::open("pass", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 51, LbMode::Dsr, ID_A4);
        for (what, packet) in [
            ("another address", tcp4(CLIENT4, 40000, [192, 0, 2, 81], 80, true, b"")),
            ("the VIP on an unknown port", tcp4(CLIENT4, 40000, VIP4, 81, true, b"")),
            ("the VIP over UDP", udp4(CLIENT4, 40000, VIP4, 80, b"x")),
            ("IPv6", tcp6(CLIENT6, 40000, VIP6, 80, true, b"")),
            ("ARP", [eth([0xff; 6], MAC_PEER, 0x0806), vec![0; 28]].concat()),
        ] {
            let out = lb.run(&packet);
            assert_eq!(out.retval, XDP_PASS, "{what}");
            assert_eq!(out.data, packet, "{what}");
        }
        let counters = lb.dp.lb().service_counters(51).unwrap();
        assert_eq!(counters.packets, 0);
        assert_eq!(lb.dp.lb().events().unwrap().malformed, 0);
    });
}

/// The slots whose bit is set in the VIP bitmap (`fr_lb_vips`), in order, through its pin.
fn vip_bits(pin_dir: &std::path::Path) -> Vec<u32> {
    let data = aya::maps::MapData::from_pin(pin_dir.join("maps").join("fr_lb_vips")).unwrap();
    let array: aya::maps::Array<_, u64> = aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    let mut slots = Vec::new();
    for word in 0..array.len() {
        let bits = array.get(&word, 0).unwrap();
        slots.extend((0..64).filter(|b| bits >> b & 1 == 1).map(|b| word * 64 + b));
    }
    slots
}

fn set_vip_bit(pin_dir: &std::path::Path, slot: u32, on: bool) {
    let data = aya::maps::MapData::from_pin(pin_dir.join("maps").join("fr_lb_vips")).unwrap();
    let mut array: aya::maps::Array<_, u64> = aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    let bits = array.get(&(slot / 64), 0).unwrap();
    let bit = 1u64 << (slot % 64);
    array.set(slot / 64, if on { bits | bit } else { bits & !bit }, 0).unwrap();
}

/// Packets to an address whose bit in the VIP bitmap is clear skip the service lookup (and
/// pass): so a VIP's bit is set before its first service is written and cleared only after its
/// last is removed, and when the program is loaded the bitmap is made again from the services
/// map, which puts right one an older build never had (its pin is missing) or one that is wrong.
#[test]
fn the_vip_bitmap_covers_every_service_and_is_made_again_when_the_program_loads() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("vf");
    net.run(|ifindex| {
        let root = bpffs();
        let node = unique_node("vipbits");
        let _guard = PinGuard::new(&root, &node);
        let tcp80 = ServiceKey { vip: ip4(VIP4), port: 80, proto: L4Proto::Tcp };
        let udp80 = ServiceKey { vip: ip4(VIP4), port: 80, proto: L4Proto::Udp };
        let tcp6 = ServiceKey { vip: ip6(VIP6), port: 443, proto: L4Proto::Tcp };
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let dgram = udp4(CLIENT4, 40000, VIP4, 80, b"x");
        let pin_dir;
        let (v4_slot, v6_slot);
        {
            let mut dp = Datapath::open_at(&root, &node).unwrap();
            pin_dir = dp.pin_dir().to_owned();
            assert_eq!(vip_bits(&pin_dir), Vec::<u32>::new(), "no service, no bit");
            let mut lb = dp.lb();
            lb.set_node_addresses(Some(NODE4.into()), Some(NODE6.into())).unwrap();
            lb.upsert_backend(ID_A4, &BackendEntry { address: ip4(BACKEND_A4), port: 80, down: false }).unwrap();
            lb.upsert_backend(ID_A6, &BackendEntry { address: ip6(BACKEND_A6), port: 443, down: false }).unwrap();
            lb.upsert_service(&tcp80, 61, LbMode::Dsr, &[ID_A4; 13]).unwrap();
            let one = vip_bits(&pin_dir);
            assert_eq!(one.len(), 1, "{one:?}");
            v4_slot = one[0];
            lb.upsert_services(&[
                ServiceUpsert { key: udp80, id: 62, mode: LbMode::Dsr, table: &[ID_A4; 13] },
                ServiceUpsert { key: tcp6, id: 63, mode: LbMode::Dsr, table: &[ID_A6; 13] },
                ServiceUpsert { key: tcp80, id: 61, mode: LbMode::Dsr, table: &[ID_A4; 13] },
            ])
            .unwrap();
            let two = vip_bits(&pin_dir);
            assert_eq!(two.len(), 2, "two addresses, two bits: {two:?}");
            assert!(two.contains(&v4_slot));
            v6_slot = *two.iter().find(|slot| **slot != v4_slot).unwrap();
            let fd = dp.xdp_program_fd().unwrap();
            assert_eq!(test_run_xdp(fd, &syn, ifindex, 1).unwrap().retval, XDP_TX);
            assert_eq!(test_run_xdp(fd, &dgram, ifindex, 1).unwrap().retval, XDP_TX);

            // The bitmap is what lets a packet reach the service lookup: a bit cleared behind
            // LbMaps' back makes the VIP's packets the stack's, new flows and remembered ones.
            set_vip_bit(&pin_dir, v4_slot, false);
            assert_eq!(test_run_xdp(fd, &syn, ifindex, 1).unwrap().retval, XDP_PASS);
            assert_eq!(test_run_xdp(fd, &dgram, ifindex, 1).unwrap().retval, XDP_PASS);
            set_vip_bit(&pin_dir, v4_slot, true);

            // The VIP keeps its bit while it has a service (UDP here), whatever is removed twice.
            let mut lb = dp.lb();
            lb.remove_service(&tcp80).unwrap();
            lb.remove_service(&tcp80).unwrap();
            assert_eq!(vip_bits(&pin_dir), two);
            assert_eq!(test_run_xdp(dp.xdp_program_fd().unwrap(), &dgram, ifindex, 1).unwrap().retval, XDP_TX);
            let mut lb = dp.lb();
            lb.remove_services(&[tcp6, tcp6]).unwrap();
            assert_eq!(vip_bits(&pin_dir), vec![v4_slot]);
        } // restart

        // An older build had no bitmap: its pin is missing, and the new one has the services
        // already installed before any packet can see it.
        std::fs::remove_file(pin_dir.join("maps").join("fr_lb_vips")).unwrap();
        let mut dp = Datapath::open_at(&root, &node).unwrap();
        assert_eq!(vip_bits(&pin_dir), vec![v4_slot], "made from the services");
        let fd = dp.xdp_program_fd().unwrap();
        let other = udp4(CLIENT4, 40001, VIP4, 80, b"y");
        assert_eq!(test_run_xdp(fd, &other, ifindex, 1).unwrap().retval, XDP_TX, "the VIP is served");
        drop(dp);

        // Bits wrong either way (a needed one clear, a stray one set) are right after the next load,
        // and the counts it makes decide when the last service's bit goes.
        set_vip_bit(&pin_dir, v4_slot, false);
        set_vip_bit(&pin_dir, v6_slot, true);
        dp = Datapath::open_at(&root, &node).unwrap();
        assert_eq!(vip_bits(&pin_dir), vec![v4_slot]);
        assert_eq!(test_run_xdp(dp.xdp_program_fd().unwrap(), &dgram, ifindex, 1).unwrap().retval, XDP_TX);
        let mut lb = dp.lb();
        lb.remove_service(&udp80).unwrap();
        assert_eq!(vip_bits(&pin_dir), Vec::<u32>::new());
        assert_eq!(test_run_xdp(dp.xdp_program_fd().unwrap(), &dgram, ifindex, 1).unwrap().retval, XDP_PASS);
        dp.unpin_all().unwrap();
    });
}

#[test]
fn malformed_headers_pass_with_a_counter() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("j");
    net.run(|ifindex| {
        let mut lb = Lb::open("bad", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 61, LbMode::Dsr, ID_A4);
        let good = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let truncated_tcp = good[..14 + 20 + 10].to_vec();
        let mut truncated_tcp_fixed = truncated_tcp.clone();
        // Keep the IP header consistent with the shorter frame: only the TCP header is short.
        truncated_tcp_fixed[16..18].copy_from_slice(&30u16.to_be_bytes());
        let truncated_ip = good[..14 + 12].to_vec();
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44; // IHL 4 (16 bytes) is below the minimum of 5
        let mut long_total = good.clone();
        long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
        // The IP version must be the ethertype's: the stack drops the others, and so must we
        // rather than balance them (both would otherwise parse as packets to a VIP).
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 62, LbMode::Dsr, ID_A6);
        let mut v6_behind_v4_type = good.clone();
        v6_behind_v4_type[14] = 0x65; // version 6, IHL 5
        let mut v4_behind_v6_type = tcp6(CLIENT6, 40000, VIP6, 80, true, b"");
        v4_behind_v6_type[14] = (v4_behind_v6_type[14] & 0x0f) | 0x40;
        for (what, packet) in [
            ("truncated TCP header", truncated_tcp_fixed),
            ("truncated IPv4 header", truncated_ip),
            ("IHL below 5", bad_ihl),
            ("total length beyond the frame", long_total),
            ("version 6 behind the IPv4 ethertype", v6_behind_v4_type),
            ("version 4 behind the IPv6 ethertype", v4_behind_v6_type),
        ] {
            let out = lb.run(&packet);
            assert_eq!(out.retval, XDP_PASS, "{what}");
            assert_eq!(out.data, packet, "{what}");
        }
        assert_eq!(lb.dp.lb().events().unwrap().malformed, 6);
        assert_eq!(lb.dp.lb().service_counters(61).unwrap().packets, 0);
        assert_eq!(lb.dp.lb().service_counters(62).unwrap().packets, 0);
    });
}

/// A UDP datagram CLIENT6:`sport` → VIP6:`dport` carrying `payload` behind `count`
/// destination-options headers (8 bytes each, a PadN option filling them), in its frame.
fn udp6_behind_dstopts(count: usize, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    PacketBuilder::ipv6(CLIENT6, VIP6, 64).udp(sport, dport).write(&mut udp, payload).unwrap();
    let mut body = Vec::new();
    for i in 0..count {
        body.extend_from_slice(&[if i + 1 == count { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    body.extend_from_slice(&udp[40..]);
    let header = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: body.len() as u16,
        next_header: IpNumber(if count == 0 { 17 } else { 60 }),
        hop_limit: 64,
        source: CLIENT6,
        destination: VIP6,
    };
    let mut out = eth(MAC_DEV, MAC_PEER, 0x86dd);
    header.write(&mut out).unwrap();
    out.extend_from_slice(&body);
    out
}

#[test]
fn vlan_tagged_and_ipv4_options_and_ipv6_extension_headers_are_handled() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("ka");
    net.run(|ifindex| {
        let mut lb = Lb::open("hdrs", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 71, LbMode::Dsr, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Udp, 72, LbMode::Dsr, ID_A6);

        // VLAN 100: the tag stays in front of the outer header.
        let mut tagged = Vec::new();
        PacketBuilder::ethernet2(MAC_PEER, MAC_DEV)
            .single_vlan(etherparse::VlanId::try_new(100).unwrap())
            .ipv4(CLIENT4, VIP4, 64)
            .tcp(40000, 80, 1000, 64240)
            .syn()
            .write(&mut tagged, b"")
            .unwrap();
        let plain = expect_ipip(MAC_A, BACKEND_A4, &tagged[18..]);
        let expected = [&plain[..12], &tagged[12..16], &plain[12..]].concat();
        assert_tx(&lb.run(&tagged), &expected, "802.1Q tagged");

        // IPv4 with a 4-byte option (NOP NOP NOP EOL): L4 found after it, options carried inside.
        let mut h = Ipv4Header::new(20, 64, IpNumber(6), CLIENT4, VIP4).unwrap();
        h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
        h.total_len = 24 + 20;
        h.header_checksum = h.calc_header_checksum();
        let tcp = etherparse::TcpHeader::new(40001, 80, 1000, 64240);
        let mut with_options = eth(MAC_DEV, MAC_PEER, 0x0800);
        with_options.extend_from_slice(&h.to_bytes());
        with_options.extend_from_slice(&tcp.to_bytes());
        assert_tx(&lb.run(&with_options), &expect_ipip(MAC_A, BACKEND_A4, &with_options[14..]), "IPv4 options");

        // IPv6 with a destination-options header before UDP.
        let one = udp6_behind_dstopts(1, 40000, 80, b"hi");
        assert_tx(&lb.run(&one), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &one[14..]), "IPv6 destination options");
        let five = udp6_behind_dstopts(5, 40000, 80, b"hi");
        let out = lb.run(&five);
        assert_eq!((out.retval, out.data), (XDP_PASS, five), "more extension headers than walked");
        assert_eq!(lb.dp.lb().events().unwrap().ext_hdr_limit, 1);
    });
}

/// An untagged IPv4 TCP/UDP packet without options, or IPv6 without extension headers, goes
/// through the common-case parser (lb_parse_plain), a tagged one or one with an extension header
/// through the general parser: both must find the same flow, or a flow would change backend when
/// its packets change shape. Each packet's flow was confirmed by
/// the other parser, then the service's table moved every new flow elsewhere.
#[test]
fn the_common_case_parser_and_the_general_one_find_the_same_flow() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("pp");
    net.run(|ifindex| {
        let mut lb = Lb::open("parsers", ifindex);
        let key = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 75, LbMode::Dsr, ID_A4);
        let tagged = |sport: u16, syn: bool| {
            let mut out = Vec::new();
            let b = PacketBuilder::ethernet2(MAC_PEER, MAC_DEV)
                .single_vlan(etherparse::VlanId::try_new(100).unwrap())
                .ipv4(CLIENT4, VIP4, 64)
                .tcp(sport, 80, 1000, 64240);
            let b = if syn { b.syn() } else { b };
            b.write(&mut out, b"").unwrap();
            out
        };
        let tagged_to = |mac: [u8; 6], backend: [u8; 4], packet: &[u8]| {
            let plain = expect_ipip(mac, backend, &packet[18..]);
            [&plain[..12], &packet[12..16], &plain[12..]].concat()
        };

        // Confirmed untagged (common case), then tagged (general) after the table moved to B.
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        assert_tx(&lb.run(&syn), &expect_ipip(MAC_A, BACKEND_A4, &syn[14..]), "untagged SYN");
        lb.dp.lb().upsert_service(&key, 75, LbMode::Dsr, &[ID_B4; TABLE_SIZE]).unwrap();
        let ack = tagged(40000, false);
        assert_tx(&lb.run(&ack), &tagged_to(MAC_A, BACKEND_A4, &ack), "tagged packet of the untagged flow");

        // Confirmed tagged (general), then untagged (common case) after the table moved back to A.
        let syn = tagged(40001, true);
        assert_tx(&lb.run(&syn), &tagged_to(MAC_B, BACKEND_B4, &syn), "tagged SYN");
        lb.dp.lb().upsert_service(&key, 75, LbMode::Dsr, &[ID_A4; TABLE_SIZE]).unwrap();
        let ack = tcp4(CLIENT4, 40001, VIP4, 80, false, b"");
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_B, BACKEND_B4, &ack[14..]), "untagged packet of the tagged flow");

        let lbm = lb.dp.lb();
        assert_eq!(lbm.service_counters(75).unwrap().new_flows, 2);
        assert_eq!(
            (lbm.backend_counters(ID_A4).unwrap().packets, lbm.backend_counters(ID_B4).unwrap().packets),
            (2, 2)
        );

        // IPv6: without extension headers (common case), then with a destination-options header
        // (general), and the other way round.
        let key6 = lb.service(ip6(VIP6), 53, L4Proto::Udp, 76, LbMode::Dsr, ID_A6);
        let first = udp6(CLIENT6, 40000, VIP6, 53, b"q");
        assert_tx(&lb.run(&first), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &first[14..]), "IPv6 without extensions");
        lb.dp.lb().upsert_service(&key6, 76, LbMode::Dsr, &[ID_B6; TABLE_SIZE]).unwrap();
        let next = udp6_behind_dstopts(1, 40000, 53, b"q");
        assert_tx(&lb.run(&next), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &next[14..]), "then with an extension");
        let first = udp6_behind_dstopts(1, 40001, 53, b"q");
        assert_tx(&lb.run(&first), &expect_ip6_tunnel(MAC_B, BACKEND_B6, &first[14..]), "IPv6 with an extension");
        lb.dp.lb().upsert_service(&key6, 76, LbMode::Dsr, &[ID_A6; TABLE_SIZE]).unwrap();
        let next = udp6(CLIENT6, 40001, VIP6, 53, b"q");
        assert_tx(&lb.run(&next), &expect_ip6_tunnel(MAC_B, BACKEND_B6, &next[14..]), "then without");
        assert_eq!(lb.dp.lb().service_counters(76).unwrap().new_flows, 2);
    });
}

#[test]
fn empty_table_drops_new_flows_and_state_is_adopted_after_restart() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("l");
    net.run(|ifindex| {
        let root = bpffs();
        let node = unique_node("adopt");
        let _guard = PinGuard::new(&root, &node);
        let key = ServiceKey { vip: ip4(VIP4), port: 80, proto: L4Proto::Tcp };
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        {
            let mut dp = Datapath::open_at(&root, &node).unwrap();
            let mut lb = dp.lb();
            lb.set_node_addresses(Some(NODE4.into()), None).unwrap();
            lb.upsert_backend(ID_A4, &BackendEntry { address: ip4(BACKEND_A4), port: 80, down: false }).unwrap();
            lb.upsert_service(&key, 81, LbMode::Dsr, &[ID_A4; 13]).unwrap();
            assert_eq!(test_run_xdp(dp.xdp_program_fd().unwrap(), &syn, ifindex, 1).unwrap().retval, XDP_TX);
        } // restart: nothing unpinned
        let mut dp = Datapath::open_at(&root, &node).unwrap();
        let mut lb = dp.lb();
        assert_eq!(lb.services().unwrap(), vec![(key, 81, LbMode::Dsr)]);
        assert_eq!(lb.service_table(81).unwrap(), vec![ID_A4; 13]);
        assert_eq!(
            lb.backends().unwrap(),
            vec![(ID_A4, BackendEntry { address: ip4(BACKEND_A4), port: 80, down: false })]
        );
        assert_eq!(lb.service_counters(81).unwrap().packets, 1, "counters survive");

        lb.upsert_service(&key, 81, LbMode::Dsr, &[]).unwrap();
        let fd = dp.xdp_program_fd().unwrap();
        let ack = tcp4(CLIENT4, 40000, VIP4, 80, false, b"");
        assert_eq!(test_run_xdp(fd, &ack, ifindex, 1).unwrap().retval, XDP_TX, "conntrack survives the restart");
        let new = tcp4(CLIENT4, 40001, VIP4, 80, true, b"");
        assert_eq!(test_run_xdp(fd, &new, ifindex, 1).unwrap().retval, XDP_DROP, "no backend for a new flow");
        // IPv6 VIP with no node IPv6 address: dropped and counted, not sent with a bad source.
        let mut lb = dp.lb();
        let key6 = ServiceKey { vip: ip6(VIP6), port: 80, proto: L4Proto::Tcp };
        lb.upsert_backend(ID_A6, &BackendEntry { address: ip6(BACKEND_A6), port: 80, down: false }).unwrap();
        lb.upsert_service(&key6, 82, LbMode::Dsr, &[ID_A6; 13]).unwrap();
        let syn6 = tcp6(CLIENT6, 40000, VIP6, 80, true, b"");
        assert_eq!(test_run_xdp(dp.xdp_program_fd().unwrap(), &syn6, ifindex, 1).unwrap().retval, XDP_DROP);
        let lb = dp.lb();
        assert_eq!(lb.service_counters(81).unwrap().drops.no_backend, 1);
        assert_eq!(lb.service_counters(82).unwrap().drops.no_node_address, 1);

        let mut lb = dp.lb();
        lb.remove_service(&key).unwrap();
        lb.remove_service(&key).unwrap();
        assert_eq!(lb.services().unwrap(), vec![(key6, 82, LbMode::Dsr)]);
        assert_eq!(lb.service_counters(81).unwrap().packets, 0, "counters go with the service");
        let out = test_run_xdp(dp.xdp_program_fd().unwrap(), &new, ifindex, 1).unwrap();
        assert_eq!(out.retval, XDP_PASS, "a removed service's traffic is the stack's");
        assert!(dp.lb().upsert_backend(0, &BackendEntry { address: ip4(BACKEND_A4), port: 1, down: false }).is_err());
        dp.unpin_all().unwrap();
    });
}

/// Drops after a backend was chosen (NAT between families, no node address for SNAT or the
/// tunnel) are counted on that backend as well as on the service; a drop before any backend was
/// chosen (empty table) only on the service.
#[test]
fn drops_after_the_backend_was_chosen_count_on_the_backend_too() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("p");
    net.run(|ifindex| {
        let mut lb = Lb::open("bedrops", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 24, LbMode::Nat, ID_A6);
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        assert_eq!(lb.run(&syn).retval, XDP_DROP, "NAT from an IPv4 VIP to an IPv6 backend");

        // Without node addresses: SNAT (IPv4 NAT to B) and the tunnel (IPv6 DSR to B) have no source.
        lb.dp.lb().set_node_addresses(None, None).unwrap();
        lb.service(ip4(VIP4), 81, L4Proto::Tcp, 25, LbMode::Nat, ID_B4);
        lb.service(ip6(VIP6), 81, L4Proto::Tcp, 26, LbMode::Dsr, ID_B6);
        assert_eq!(lb.run(&tcp4(CLIENT4, 40000, VIP4, 81, true, b"")).retval, XDP_DROP, "SNAT without node address");
        assert_eq!(lb.run(&tcp6(CLIENT6, 40000, VIP6, 81, true, b"")).retval, XDP_DROP, "DSR without node address");
        lb.dp
            .lb()
            .upsert_service(&ServiceKey { vip: ip4(VIP4), port: 81, proto: L4Proto::Tcp }, 25, LbMode::Nat, &[])
            .unwrap();
        assert_eq!(lb.run(&tcp4(CLIENT4, 40001, VIP4, 81, true, b"")).retval, XDP_DROP, "empty table");

        let lbm = lb.dp.lb();
        let (svc24, a6) = (lbm.service_counters(24).unwrap(), lbm.backend_counters(ID_A6).unwrap());
        println!("NAT family: service {:?}, backend {:?}", svc24.drops, a6.drops);
        assert_eq!((svc24.drops.nat_family, a6.drops.nat_family), (1, 1));
        assert_eq!(a6.packets, 0, "a dropped packet is not counted as sent to the backend");
        let (svc25, b4) = (lbm.service_counters(25).unwrap(), lbm.backend_counters(ID_B4).unwrap());
        println!("IPv4 NAT without node address, then empty table: service {:?}, backend {:?}", svc25.drops, b4.drops);
        assert_eq!((svc25.drops.no_node_address, b4.drops.no_node_address), (1, 1));
        assert_eq!((svc25.drops.no_backend, b4.drops.no_backend), (1, 0), "no backend chosen: service only");
        let (svc26, b6) = (lbm.service_counters(26).unwrap(), lbm.backend_counters(ID_B6).unwrap());
        assert_eq!((svc26.drops.no_node_address, b6.drops.no_node_address), (1, 1));
        assert_eq!(lbm.backend_counters(ID_A4).unwrap(), Default::default(), "an uninvolved backend");
    });
}

/// The i-th service of the batch tests: even i an IPv4 TCP VIP 192.0.2.<1..200> on port
/// 1000 + i/200, odd i an IPv6 TCP VIP 2001:db8:80::<i+1> on port 443; id 100 + i.
fn batch_service(i: u32) -> (ServiceKey, u32) {
    let key = if i.is_multiple_of(2) {
        let vip = [192, 0, 2, (i / 2 % 200) as u8 + 1];
        ServiceKey { vip: ip4(vip), port: 1000 + (i / 2 / 200) as u16, proto: L4Proto::Tcp }
    } else {
        ServiceKey { vip: ip6(v6(0x80, i as u16 + 1)), port: 443, proto: L4Proto::Tcp }
    };
    (key, 100 + i)
}

/// A SYN from the client to `key` and what DSR to `backend` (A or B of the key's family) makes of
/// it.
fn syn_and_expected(key: &ServiceKey, sport: u16, to_b: bool) -> (Vec<u8>, Vec<u8>) {
    match key.vip {
        IpAddr::V4(vip) => {
            let syn = tcp4(CLIENT4, sport, vip.octets(), key.port, true, b"");
            let (mac, backend) = if to_b { (MAC_B, BACKEND_B4) } else { (MAC_A, BACKEND_A4) };
            let expected = expect_ipip(mac, backend, &syn[14..]);
            (syn, expected)
        }
        IpAddr::V6(vip) => {
            let syn = tcp6(CLIENT6, sport, vip.octets(), key.port, true, b"");
            let (mac, backend) = if to_b { (MAC_B, BACKEND_B6) } else { (MAC_A, BACKEND_A6) };
            let expected = expect_ip6_tunnel(mac, backend, &syn[14..]);
            (syn, expected)
        }
    }
}

#[test]
fn batched_upsert_installs_thousands_of_services_that_forward_like_single_ones() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("n");
    net.run(|ifindex| {
        let mut lb = Lb::open("batch", ifindex);
        // More services than one kernel batch holds under the usual open-files limits, so the
        // batch boundaries are crossed too. Even-numbered services to A, odd ones to B.
        const N: u32 = 5000;
        let tables = [[ID_A4; TABLE_SIZE], [ID_B4; TABLE_SIZE], [ID_A6; TABLE_SIZE], [ID_B6; TABLE_SIZE]];
        let table_of = |i: u32| {
            let (key, _) = batch_service(i);
            &tables[usize::from(key.vip.is_ipv6()) * 2 + usize::from(i % 4 >= 2)]
        };
        let batch: Vec<ServiceUpsert<'_>> = (0..N)
            .map(|i| {
                let (key, id) = batch_service(i);
                ServiceUpsert { key, id, mode: LbMode::Dsr, table: table_of(i) }
            })
            .collect();
        let started = std::time::Instant::now();
        lb.dp.lb().upsert_services(&batch).unwrap();
        println!("{N} services installed in one batched upsert in {:?}", started.elapsed());

        let installed = lb.dp.lb().services().unwrap();
        println!("services in the map: expected {N}, saw {}", installed.len());
        assert_eq!(installed.len(), N as usize);
        for i in [0, 1, 2, 3, 2047, 2048, 4095, 4096, 4097, N - 2, N - 1] {
            let (key, id) = batch_service(i);
            assert!(installed.contains(&(key, id, LbMode::Dsr)), "service {i} listed");
            assert_eq!(&lb.dp.lb().service_table(id).unwrap()[..], &table_of(i)[..], "table of service {i}");
            let (syn, expected) = syn_and_expected(&key, 40000, i % 4 >= 2);
            assert_tx(&lb.run(&syn), &expected, &format!("SYN to batched service {i} ({key:?})"));
        }

        // A second batch re-points two installed services to the other backend: their
        // established flows stay, new flows follow the new tables.
        let swap: Vec<ServiceUpsert<'_>> = [0, 1]
            .into_iter()
            .map(|i| {
                let (key, id) = batch_service(i);
                ServiceUpsert { key, id, mode: LbMode::Dsr, table: table_of(i + 2) }
            })
            .collect();
        lb.dp.lb().upsert_services(&swap).unwrap();
        for i in [0, 1] {
            let (key, _) = batch_service(i);
            let (syn, kept) = syn_and_expected(&key, 40000, false);
            assert_tx(&lb.run(&syn), &kept, &format!("established flow of service {i} after the swap"));
            let (syn, moved) = syn_and_expected(&key, 40001, true);
            assert_tx(&lb.run(&syn), &moved, &format!("new flow of service {i} after the swap"));
        }
        let (_, id0) = batch_service(0);
        let counters = lb.dp.lb().service_counters(id0).unwrap();
        assert_eq!((counters.packets, counters.new_flows), (3, 2), "service 0 counters {counters:?}");
        assert_eq!(lb.dp.lb().services().unwrap().len(), N as usize, "a swap adds no service");

        // Batched removal: every other service goes (missing keys in the list are skipped), the
        // rest keep forwarding, the removed ones pass untouched with their tables and counters gone.
        let mut gone: Vec<ServiceKey> = (0..N).filter(|i| i % 2 == 0).map(|i| batch_service(i).0).collect();
        gone.push(ServiceKey { vip: ip4([192, 0, 2, 250]), port: 9, proto: L4Proto::Udp });
        let started = std::time::Instant::now();
        lb.dp.lb().remove_services(&gone).unwrap();
        println!("{} services removed in one batched removal in {:?}", gone.len() - 1, started.elapsed());
        let left = lb.dp.lb().services().unwrap();
        assert_eq!(left.len(), (N / 2) as usize, "half the services left");
        for i in [0, 1, 4096, 4097, N - 2, N - 1] {
            let (key, id) = batch_service(i);
            // Services 0 and 1 were re-pointed to B by the swap above.
            let (syn, expected) = syn_and_expected(&key, 40002, i < 2 || i % 4 >= 2);
            if i % 2 == 0 {
                assert_eq!(lb.run(&syn).retval, XDP_PASS, "removed service {i} passes to the stack");
                assert!(lb.dp.lb().service_table(id).unwrap().is_empty(), "table of removed service {i} gone");
            } else {
                assert_tx(&lb.run(&syn), &expected, &format!("service {i} kept"));
            }
        }
        assert_eq!(lb.dp.lb().service_counters(id0).unwrap().packets, 0, "counters go with the service");
    });
}

#[test]
fn a_batch_with_a_bad_entry_writes_nothing_and_installed_services_keep_forwarding() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("o");
    net.run(|ifindex| {
        let mut lb = Lb::open("badbatch", ifindex);
        // One service installed on its own, two in a batch.
        let web4 = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 1, LbMode::Dsr, ID_A4);
        let web6 = ServiceKey { vip: ip6(VIP6), port: 80, proto: L4Proto::Tcp };
        let alt4 = ServiceKey { vip: ip4(VIP4), port: 8443, proto: L4Proto::Tcp };
        let (to_a6, to_b4) = ([ID_A6; TABLE_SIZE], [ID_B4; TABLE_SIZE]);
        lb.dp
            .lb()
            .upsert_services(&[
                ServiceUpsert { key: web6, id: 2, mode: LbMode::Dsr, table: &to_a6 },
                ServiceUpsert { key: alt4, id: 3, mode: LbMode::Dsr, table: &to_b4 },
            ])
            .unwrap();
        let before = lb.dp.lb().services().unwrap();
        assert_eq!(before.len(), 3);

        let new_vip = [192, 0, 2, 81];
        let new = ServiceKey { vip: ip4(new_vip), port: 80, proto: L4Proto::Tcp };
        let good = ServiceUpsert { key: new, id: 4, mode: LbMode::Dsr, table: &to_b4 };
        let huge = vec![ID_A4; ferrule_ebpf::MAX_TABLE_SIZE + 1];
        for (what, bad) in [
            ("id 0", ServiceUpsert { key: ServiceKey { port: 81, ..new }, id: 0, ..good }),
            ("an id above the maximum", ServiceUpsert { key: ServiceKey { port: 81, ..new }, id: 131_073, ..good }),
            (
                "a table above the maximum",
                ServiceUpsert { key: ServiceKey { port: 81, ..new }, id: 5, table: &huge, ..good },
            ),
            ("the same service twice", ServiceUpsert { id: 5, ..good }),
            ("another service's id", ServiceUpsert { key: ServiceKey { port: 81, ..new }, ..good }),
        ] {
            let stop = lb.dp.lb().upsert_services_blaming(&[good, bad]).unwrap_err();
            assert_eq!(stop.at, Some(1), "{what}: the bad entry is blamed");
            let err = stop.error;
            println!("batch with {what}: rejected with: {err}");
            assert!(matches!(err, EbpfError::LbInput(_)), "{what}: {err:?}");
            assert!(err.to_string().contains("batch entry 1"), "{what}: the error names the entry: {err}");
            assert_eq!(lb.dp.lb().services().unwrap(), before, "{what}: nothing written, not even the good entry");
            let to_new = tcp4(CLIENT4, 40000, new_vip, 80, true, b"");
            let out = lb.run(&to_new);
            assert_eq!((out.retval, out.data), (XDP_PASS, to_new), "{what}: the good entry's VIP is not served");
            for (key, to_b, sport) in [(web4, false, 41000), (web6, false, 41001), (alt4, true, 41002)] {
                let (syn, expected) = syn_and_expected(&key, sport, to_b);
                assert_tx(&lb.run(&syn), &expected, &format!("{what}: installed service {key:?} still forwards"));
            }
        }

        // Without the bad entry the batch goes in.
        lb.dp.lb().upsert_services(&[good]).unwrap();
        let (syn, expected) = syn_and_expected(&new, 40000, true);
        assert_tx(&lb.run(&syn), &expected, "the good entry on its own");
        assert_eq!(lb.dp.lb().services().unwrap().len(), 4);
    });
}

#[test]
fn fib_miss_passes_the_encapsulated_packet_to_the_stack() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("m");
    net.run(|ifindex| {
        let mut lb = Lb::open("fibmiss", ifindex);
        // 198.51.100.99 is on-link but has no neighbour entry yet.
        lb.dp
            .lb()
            .upsert_backend(9, &BackendEntry { address: ip4([198, 51, 100, 99]), port: 80, down: false })
            .unwrap();
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 91, LbMode::Dsr, 9);
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let out = lb.run(&syn);
        assert_eq!(out.retval, XDP_PASS);
        // Still addressed to us at L2: the stack routes the tunnel packet and resolves the neighbour.
        let mut expected = expect_ipip(MAC_DEV, [198, 51, 100, 99], &syn[14..]);
        expected[6..12].copy_from_slice(&MAC_PEER);
        assert_eq!(hex(&out.data), hex(&expected));
        assert_eq!(lb.dp.lb().events().unwrap().fib_pass, 1);
    });
}

#[test]
fn next_hops_are_cached_for_a_moment_and_longer_packets_check_the_route_again() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("hn");
    let ns = net.ns.clone();
    let dev = net.dev.clone();
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("nhcache", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 92, LbMode::Dsr, ID_A4);
        let syn = tcp4(CLIENT4, 40001, VIP4, 80, true, b"");
        let first = lb.run(&syn);
        assert_tx(&first, &expect_ipip(MAC_A, BACKEND_A4, &syn[14..]), "first packet: looked up");
        let looked_up = Instant::now();

        // The backend's neighbour moves to another MAC.
        const MAC_MOVED: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
        run("ip", &["-n", &ns, "neigh", "replace", "198.51.100.10", "lladdr", "02:00:00:00:00:0c", "dev", &dev]);
        let soon = lb.run(&syn);
        let age = looked_up.elapsed();
        // Within the cache's 50 ms the old answer stands (only checkable if this thread was not held
        // up for that long since the first packet).
        if age < Duration::from_millis(40) {
            assert_tx(&soon, &expect_ipip(MAC_A, BACKEND_A4, &syn[14..]), "within the cache's lifetime");
        } else {
            println!("(the second packet came {age:?} after the first: the cached answer may have expired)");
        }
        // A packet longer than the cached route's MTU is not answered from the cache: the route
        // lookup itself says it does not fit once encapsulated (answered with "too big", counted).
        let too_big_before = lb.dp.lb().events().unwrap().too_big;
        let big = tcp4(CLIENT4, 40001, VIP4, 80, false, &[0x5a; 1470]);
        let out = lb.run(&big);
        assert_eq!((out.retval, out.data[34]), (XDP_TX, 3), "1490-byte packet + 20 bytes of IPIP > MTU 1500");
        assert_eq!(lb.dp.lb().events().unwrap().too_big, too_big_before + 1);

        // Afterwards the new MAC is used: bounded wait, 10 ms steps for at most 2 s.
        let changed = Instant::now();
        let mut seen = None;
        for _ in 0..200 {
            let out = lb.run(&syn);
            if out.retval == XDP_TX && out.data[..6] == MAC_MOVED {
                seen = Some(changed.elapsed());
                assert_tx(&out, &expect_ipip(MAC_MOVED, BACKEND_A4, &syn[14..]), "after the cache expired");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = seen.expect("the moved neighbour was never used");
        println!("the moved neighbour was used {seen:?} after the change (cache lifetime 50 ms)");
    });
}

/// The first bytes of the IP packet in `frame` (after its 14-byte Ethernet header) that an ICMP
/// "too big" quotes: the IP header and 8 bytes of TCP.
fn quote_of(frame: &[u8], ip_header: usize) -> Vec<u8> {
    frame[14..14 + ip_header + 8].to_vec()
}

/// Replies go back where the packet came from: to the peer, from the veth.
const BACK: ([u8; 6], [u8; 6]) = (MAC_DEV, MAC_PEER);

#[test]
fn dsr_packets_too_big_for_the_tunnel_are_answered_with_icmp_too_big() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("tb");
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("toobig", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 95, LbMode::Dsr, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 96, LbMode::Dsr, ID_A6);
        // An IPv4 VIP with an IPv6 backend: IPv4-in-IPv6, 40 bytes of overhead.
        lb.service(ip4(VIP4), 81, L4Proto::Tcp, 97, LbMode::Dsr, ID_A6);
        // The veth's MTU is 1500. A 1500-byte IPv4 packet with DF (etherparse's default) needs
        // 1520 once in IPIP: "fragmentation needed", next-hop MTU 1480, from the VIP.
        let big4 = tcp4(CLIENT4, 40000, VIP4, 80, false, &[0x5a; 1460]);
        assert!(Ipv4HeaderSlice::from_slice(&big4[14..34]).unwrap().dont_fragment());
        let out = lb.run(&big4);
        let expected = icmp4_error(BACK, VIP4, CLIENT4, (3, 4, [0, 0, 0x05, 0xc8]), &quote_of(&big4, 20));
        assert_tx(&out, &expected, "IPv4 in IPIP, too big");
        assert_icmp_checksums_valid(&out.data);
        // What fits still goes to the backend.
        let fits = tcp4(CLIENT4, 40000, VIP4, 80, false, &[0x5a; 1440]);
        assert_tx(&lb.run(&fits), &expect_ipip(MAC_A, BACKEND_A4, &fits[14..]), "1480 bytes fit");

        // IPv6: 1500 + 40 of IP6IP6: "packet too big", MTU 1460.
        let big6 = tcp6(CLIENT6, 40000, VIP6, 80, false, &[0x5a; 1440]);
        let out = lb.run(&big6);
        let expected = icmp6_error(BACK, VIP6, CLIENT6, (2, 0, 1460u32.to_be_bytes()), &quote_of(&big6, 40));
        assert_tx(&out, &expected, "IPv6 in IP6IP6, too big");
        assert_icmp_checksums_valid(&out.data);

        // IPv4 in IPv6: the overhead is the outer header's, 40 bytes: MTU 1460.
        let big46 = tcp4(CLIENT4, 40000, VIP4, 81, false, &[0x5a; 1460]);
        let expected = icmp4_error(BACK, VIP4, CLIENT4, (3, 4, [0, 0, 0x05, 0xb4]), &quote_of(&big46, 20));
        assert_tx(&lb.run(&big46), &expected, "IPv4 in IPv6, too big");
        let seen = lb.dp.lb().events().unwrap();
        println!("after three too-big packets: too_big {}, mtu_pass {}", seen.too_big, seen.mtu_pass);
        assert_eq!((seen.too_big, seen.mtu_pass), (3, 0));
        // The service counts what came for its VIP; the backends count only what they were sent.
        let lbm = lb.dp.lb();
        assert_eq!(lbm.service_counters(95).unwrap().packets, 2);
        assert_eq!(lbm.backend_counters(ID_A4).unwrap().packets, 1, "the 1480-byte packet only");
        assert_eq!(lbm.backend_counters(ID_A4).unwrap().bytes, fits.len() as u64);
        assert_eq!((lbm.backend_counters(ID_A6).unwrap().packets, lbm.service_counters(96).unwrap().packets), (0, 1));
        // Likewise for a backend id beyond the per-CPU arrays (counted in the hash).
        let high = LB_TRAFFIC_ARR_SIZE + 10;
        lb.upsert_backend_for_test(high, BACKEND_B4);
        lb.service(ip4(VIP4), 82, L4Proto::Tcp, 98, LbMode::Dsr, high);
        let big_high = tcp4(CLIENT4, 40000, VIP4, 82, false, &[0x5a; 1460]);
        assert_eq!(lb.run(&big_high).retval, XDP_TX);
        let fits_high = tcp4(CLIENT4, 40000, VIP4, 82, false, &[0x5a; 1440]);
        assert_tx(&lb.run(&fits_high), &expect_ipip(MAC_B, BACKEND_B4, &fits_high[14..]), "high id, fits");
        let counted = lb.dp.lb().backend_counters(high).unwrap();
        assert_eq!((counted.packets, counted.bytes, counted.new_flows), (1, fits_high.len() as u64, 1));

        // IPv4 options are quoted whole: the quote is IHL * 4 + 8 bytes.
        let mut with_options = Vec::new();
        let mut header = Ipv4Header::new(20 + 1460, 64, IpNumber::TCP, CLIENT4, VIP4).unwrap();
        header.options = [1, 1, 1, 0].as_slice().try_into().unwrap(); // NOP NOP NOP EOL
        PacketBuilder::ethernet2(MAC_PEER, MAC_DEV)
            .ip(etherparse::IpHeaders::Ipv4(header, Default::default()))
            .tcp(40002, 80, 1001, 64240)
            .ack(5000)
            .write(&mut with_options, &[0x5a; 1456])
            .unwrap();
        let expected = icmp4_error(BACK, VIP4, CLIENT4, (3, 4, [0, 0, 0x05, 0xc8]), &quote_of(&with_options, 24));
        assert_tx(&lb.run(&with_options), &expected, "IPv4 with options, too big");

        // A packet that may be fragmented (no DF) is not answered: passed, as before.
        let mut no_df = big4.clone();
        no_df[20] &= !0x40;
        let mut h = Ipv4HeaderSlice::from_slice(&no_df[14..34]).unwrap().to_header();
        h.header_checksum = h.calc_header_checksum();
        no_df[14..34].copy_from_slice(&h.to_bytes());
        assert_eq!(lb.run(&no_df).retval, XDP_PASS, "IPv4 without DF");
        // Nor is one from a source no ICMP error may go to (here a multicast address).
        let from_multicast = tcp4([224, 0, 0, 9], 40000, VIP4, 80, false, &[0x5a; 1460]);
        assert_eq!(lb.run(&from_multicast).retval, XDP_PASS, "from a multicast source");
        let seen = lb.dp.lb().events().unwrap();
        assert_eq!((seen.too_big, seen.mtu_pass), (5, 2));

        // At most FR_LB_TOO_BIG_PER_SEC (1,000) answers per CPU and one-second window; the rest
        // is passed. 2,100 packets sent within a second span at most two windows.
        let started = Instant::now();
        let answered = (0..2100).filter(|_| lb.run(&big4).retval == XDP_TX).count();
        let took = started.elapsed();
        println!("2100 too-big packets in {took:?}: {answered} answered");
        assert!(took < Duration::from_secs(1), "the loop must fit in a second for the bound below: {took:?}");
        assert!((995..=2000).contains(&answered), "answered {answered}");
        let seen = lb.dp.lb().events().unwrap();
        assert_eq!((seen.too_big, seen.mtu_pass), (5 + answered as u64, 2 + (2100 - answered) as u64));
    });
}

/// NAT adds no bytes, but a backend behind a smaller MTU than the client's gets the same answer:
/// the route to backend A is given MTU 1400 here.
#[test]
fn nat_packets_too_big_for_the_backend_route_are_answered_with_icmp_too_big() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("nt");
    for (dst, family) in [("198.51.100.10/32", "-4"), ("2001:db8:100::10/128", "-6")] {
        run("ip", &["-n", &net.ns, family, "route", "add", dst, "dev", &net.dev, "mtu", "lock", "1400"]);
    }
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("nattoobig", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 93, LbMode::Nat, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 94, LbMode::Nat, ID_A6);
        // 1500 bytes with DF: "fragmentation needed", next-hop MTU 1400, quoting the packet as the
        // client sent it (not as it would have been translated).
        let big4 = tcp4(CLIENT4, 40000, VIP4, 80, false, &[0x5a; 1460]);
        let expected = icmp4_error(BACK, VIP4, CLIENT4, (3, 4, [0, 0, 0x05, 0x78]), &quote_of(&big4, 20));
        let out = lb.run(&big4);
        assert_tx(&out, &expected, "NAT, IPv4, too big");
        assert_icmp_checksums_valid(&out.data);
        let big6 = tcp6(CLIENT6, 40000, VIP6, 80, false, &[0x5a; 1440]);
        let expected = icmp6_error(BACK, VIP6, CLIENT6, (2, 0, 1400u32.to_be_bytes()), &quote_of(&big6, 40));
        assert_tx(&lb.run(&big6), &expected, "NAT, IPv6, too big");
        // What fits is translated as usual: to backend A's address and port.
        let fits = tcp4(CLIENT4, 40000, VIP4, 80, false, &[0x5a; 1360]);
        let out = lb.run(&fits);
        let (dst, dport) = (&out.data[30..34], u16::from_be_bytes([out.data[36], out.data[37]]));
        println!("1400 bytes: verdict {}, to {dst:?} port {dport}", out.retval);
        assert_eq!((out.retval, dst, dport), (XDP_TX, &BACKEND_A4[..], 8080));
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.too_big, events.mtu_pass), (2, 0));
        assert_eq!(lb.dp.lb().backend_counters(ID_A4).unwrap().packets, 1, "only what it was sent");
    });
}

/// The reply direction of NAT: a backend's reply longer than the route to the client allows is
/// answered to the backend (from the node's address, which it sent to) with ICMP "too big",
/// quoting the reply as the backend sent it, so that its path MTU discovery hears of it; the
/// route to the client is given MTU 1400 here. What fits is translated as usual.
#[test]
fn nat_replies_too_big_for_the_client_route_are_answered_to_the_backend() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("rt");
    for (dst, family) in [("203.0.113.7/32", "-4"), ("2001:db8:7::7/128", "-6")] {
        run("ip", &["-n", &net.ns, family, "route", "add", dst, "dev", &net.dev, "mtu", "lock", "1400"]);
    }
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("natreplybig", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 95, LbMode::Nat, ID_A4);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 96, LbMode::Nat, ID_A6);
        let port4 = nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, true, b""));
        let port6 = nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, true, b""));

        let big4 = tcp4(BACKEND_A4, 8080, NODE4, port4, false, &[0x5a; 1460]);
        let expected = icmp4_error(BACK, NODE4, BACKEND_A4, (3, 4, [0, 0, 0x05, 0x78]), &quote_of(&big4, 20));
        let out = lb.run(&big4);
        assert_tx(&out, &expected, "NAT reply, IPv4, too big");
        assert_icmp_checksums_valid(&out.data);
        let big6 = tcp6(BACKEND_A6, 8080, NODE6, port6, false, &[0x5a; 1440]);
        let expected = icmp6_error(BACK, NODE6, BACKEND_A6, (2, 0, 1400u32.to_be_bytes()), &quote_of(&big6, 40));
        assert_tx(&lb.run(&big6), &expected, "NAT reply, IPv6, too big");

        let fits = tcp4(BACKEND_A4, 8080, NODE4, port4, false, &[0x5a; 1360]);
        let out = lb.run(&fits);
        let (dst, dport) = (&out.data[30..34], u16::from_be_bytes([out.data[36], out.data[37]]));
        assert_eq!((out.retval, dst, dport), (XDP_TX, &CLIENT4[..], 40000), "1400 bytes: translated");
        assert_checksums_valid(&out.data);
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.too_big, events.mtu_pass, events.nat_reply), (2, 0, 1));
    });
}

/// IPv6 hosts may not be told an MTU below 1280. With the route to backend A6 at 1300, IP6IP6
/// leaves 1260: a 1400-byte packet is answered with 1280 (its source can shrink to that), but a
/// packet of 1280 bytes or less cannot be made to fit by telling its source anything, and an
/// answer would come back for every such packet: it is passed, counted (`mtu_pass`).
#[test]
fn packets_no_longer_than_the_least_mtu_a_host_may_be_told_are_passed_not_answered() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("tm");
    run("ip", &["-n", &net.ns, "-6", "route", "add", "2001:db8:100::10/128", "dev", &net.dev, "mtu", "lock", "1300"]);
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("leastmtu", ifindex);
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 99, LbMode::Dsr, ID_A6);
        let big = tcp6(CLIENT6, 40000, VIP6, 80, false, &[0x5a; 1340]);
        assert_eq!(big.len() - 14, 1400);
        let expected = icmp6_error(BACK, VIP6, CLIENT6, (2, 0, 1280u32.to_be_bytes()), &quote_of(&big, 40));
        assert_tx(&lb.run(&big), &expected, "1400 bytes: told 1280");
        let least = tcp6(CLIENT6, 40000, VIP6, 80, false, &[0x5a; 1220]);
        assert_eq!(least.len() - 14, 1280);
        assert_eq!(lb.run(&least).retval, XDP_PASS, "1280 bytes: nothing to tell");
        let fits = tcp6(CLIENT6, 40000, VIP6, 80, false, &[0x5a; 1200]);
        assert_tx(&lb.run(&fits), &expect_ip6_tunnel(MAC_A, BACKEND_A6, &fits[14..]), "1260 bytes fit");
        let events = lb.dp.lb().events().unwrap();
        assert_eq!((events.too_big, events.mtu_pass), (1, 1));
    });
}

/// Deletes the conntrack entry of the IPv4 TCP flow `client`:`sport` → `vip`:`port` from the
/// pinned map directly, behind `LbMaps`' back: the maps change without their generation.
fn forget_flow_unannounced(lb: &Lb, client: [u8; 4], sport: u16, vip: [u8; 4], port: u16) {
    ct_map(lb).remove(&flow4(client, sport, vip, port)).unwrap();
}

/// The pinned conntrack map, opened behind LbMaps' back.
fn ct_map(lb: &Lb) -> aya::maps::HashMap<aya::maps::MapData, LbFlow, LbCtEntry> {
    let pin = lb.dp.pin_dir().join("maps").join("fr_lb_ct");
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(pin).unwrap())).unwrap()
}

/// Makes the conntrack entry of an IPv4 TCP flow look a second old (due for its refresh), behind
/// LbMaps' back (no new generation).
fn age_flow_unannounced(lb: &Lb, flow: LbFlow) {
    let mut ct = ct_map(lb);
    let mut entry = ct.get(&flow, 0).unwrap();
    entry.last_seen_ns = entry.last_seen_ns.saturating_sub(2_000_000_000);
    ct.insert(flow, entry, 0).unwrap();
}

/// A client flow (address 203.0.113.<host>, a host not in `avoid`, and port) to VIP4:80 whose
/// first SNAT port is `port` (a bounded search over the claim's hash), given a neighbour entry in
/// `net` so that its replies are forwarded rather than passed.
fn client_hashing_to(net: &LbNet, port: u16, avoid: &[u8]) -> ([u8; 4], u16) {
    let found = (1..=250u8)
        .filter(|host| !avoid.contains(host))
        .flat_map(|host| (1024..=65535u16).map(move |sport| ([203, 0, 113, host], sport)))
        .find(|&(client, sport)| first_nat_port(client, sport, VIP4) == port)
        .expect("some client flow hashes to the port");
    let addr = Ipv4Addr::from(found.0).to_string();
    let args =
        ["-n", &net.ns, "neigh", "replace", &addr, "lladdr", "02:00:00:00:00:08", "dev", &net.dev, "nud", "permanent"];
    run("ip", &args);
    found
}

/// The IPv6 TCP flow `src`:`sport` → `dst`:`dport` as the datapath keys it.
fn flow6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> LbFlow {
    LbFlow { src, dst, sport: sport.to_be(), dport: dport.to_be(), proto: 6, family: FAMILY_IPV6, pad: 0 }
}

/// The IPv4 TCP flow `src`:`sport` → `dst`:`dport` as the datapath keys it.
fn flow4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> LbFlow {
    let (mut s16, mut d16) = ([0u8; 16], [0u8; 16]);
    s16[..4].copy_from_slice(&src);
    d16[..4].copy_from_slice(&dst);
    LbFlow { src: s16, dst: d16, sport: sport.to_be(), dport: dport.to_be(), proto: 6, family: FAMILY_IPV4, pad: 0 }
}

/// The first SNAT port lb_nat_claim tries for an IPv4 TCP client flow to `vip`:80: the flow's
/// hash (lb_hash_flow with LB_SEED_NAT, a murmur3 over its ten 32-bit words) into the NAT range.
fn first_nat_port(client: [u8; 4], sport: u16, vip: [u8; 4]) -> u16 {
    let mut words = [0u32; 10];
    words[0] = u32::from_le_bytes(client);
    words[4] = u32::from_le_bytes(vip);
    words[8] = u32::from_le_bytes([sport.to_be_bytes()[0], sport.to_be_bytes()[1], 0, 80]);
    words[9] = u32::from_le_bytes([6, FAMILY_IPV4, 0, 0]);
    let mut h: u32 = 0x6e61_7470; // LB_SEED_NAT
    for w in words {
        let w = w.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        h = (h ^ w).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    (10_000 + h % 22_768) as u16
}

/// Replies of a NAT flow are remembered like its forward packets: the next ones skip the NAT
/// table (shown by deleting its entry behind LbMaps' back: still translated). When the SNAT port
/// is then claimed for another client, the remembered reply must not be used: the backend's next
/// reply on that port goes to the new client.
#[test]
fn remembered_nat_replies_end_when_their_snat_port_is_claimed_again() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("nr");
    let port = first_nat_port(CLIENT4, 40000, VIP4);
    let other = client_hashing_to(&net, port, &[CLIENT4[3]]);
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("natreply", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 23, LbMode::Nat, ID_A4);
        let claimed = nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, true, b""));
        assert_eq!(claimed, port, "the test's copy of the claim's hash");
        let to = |out: &TestRunOutput| {
            (out.retval, out.data[30..34].to_vec(), u16::from_be_bytes([out.data[36], out.data[37]]))
        };

        let reply = tcp4(BACKEND_A4, 8080, NODE4, port, false, b"HTTP/1.0 200 OK\r\n\r\n");
        let first = lb.run(&reply);
        assert_eq!(to(&first), (XDP_TX, CLIENT4.to_vec(), 40000), "full path");
        assert_checksums_valid(&first.data);
        assert_eq!(hex(&lb.run(&reply).data), hex(&first.data), "remembered: the same bytes");

        let pin = lb.dp.pin_dir().join("maps").join("fr_lb_nat");
        let mut nat: aya::maps::HashMap<_, LbFlow, LbNatEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(pin).unwrap()))
                .unwrap();
        nat.remove(&flow4(BACKEND_A4, 8080, NODE4, port)).unwrap();
        assert_eq!(to(&lb.run(&reply)), (XDP_TX, CLIENT4.to_vec(), 40000), "remembered, with the entry gone");

        let claimed = nat_port_of(&lb, &tcp4(other.0, other.1, VIP4, 80, true, b""));
        assert_eq!(claimed, port, "the port, free again, goes to the other client");
        let out = lb.run(&reply);
        assert_eq!(to(&out), (XDP_TX, other.0.to_vec(), other.1), "the backend's reply reaches the new client");
        assert_checksums_valid(&out.data);
        assert_eq!(to(&lb.run(&reply)), (XDP_TX, other.0.to_vec(), other.1), "and is remembered for it");

        // Conntrack still gives the first client's flow the port: an ICMP error about that
        // flow's replies is not translated to it (it would tell the backend about the other
        // client's connection); one about the other client's replies is.
        nat_icmp_passes_unhandled(&mut lb, (CLIENT4, 40000), "error about the flow that lost its port");
        let icmp = icmp4_error(IN, ROUTER4, VIP4, FRAG_NEEDED_1500, &tcp_segment4(VIP4, 80, other.0, other.1));
        assert_tx(&lb.run(&icmp), &nat_icmp_to_backend_a(port), "error about the flow that has the port now");
    });
}

/// The SNAT ports' epochs (a private map, all zero again after a restart) are offset by a base
/// chosen at every load, so that an epoch conntrack stored before the restart cannot equal one
/// counted after it. Here the flow's port is claimed once before the restart (epoch 1) and, once
/// its reverse entry is evicted, once after it by another client (epoch 1 again): with one base
/// for both loads, the flow's next packet would take the two for the same claim and go out from
/// the other client's port. (Conntrack keeps 16 bits of the epoch: two random bases agree there
/// once in 65,536 runs, and this test would fail then.)
#[test]
fn a_nat_flow_does_not_keep_a_port_claimed_by_another_client_after_a_restart() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("nb");
    let port = first_nat_port(CLIENT4, 40000, VIP4);
    let other = client_hashing_to(&net, port, &[CLIENT4[3]]);
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("natbase", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 28, LbMode::Nat, ID_A4);
        assert_eq!(nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, true, b"")), port, "the test's copy of the hash");

        let lb = lb.restart();
        let pin = lb.dp.pin_dir().join("maps").join("fr_lb_nat");
        let mut nat: aya::maps::HashMap<_, LbFlow, LbNatEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(pin).unwrap()))
                .unwrap();
        nat.remove(&flow4(BACKEND_A4, 8080, NODE4, port)).unwrap();
        assert_eq!(nat_port_of(&lb, &tcp4(other.0, other.1, VIP4, 80, true, b"")), port, "free: the other client's");
        let moved = nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, false, b"data"));
        assert_ne!(moved, port, "the flow left the other client's port");
        let owner = nat.get(&flow4(BACKEND_A4, 8080, NODE4, moved), 0).unwrap();
        assert_eq!((owner.client[..4].to_vec(), u16::from_be(owner.client_port)), (CLIENT4.to_vec(), 40000));
    });
}

/// A NAT flow's SNAT port lives in two LRU maps: conntrack (client flow -> port) and the NAT
/// table (reply flow -> client). When the NAT table evicts the flow's entry while conntrack keeps
/// the flow, the flow's first packet after conntrack's once-a-second refresh claims the same port
/// again, so its replies are translated again. When the port is claimed for another client, the
/// flow's next packet moves it to another port instead of joining that client's connection to
/// the backend, also when the flow was being sent from the flow cache; a port found taken is
/// left alone (the flow that has it stays remembered). IPv6 claims an evicted entry again too.
/// Without node address, a conntrack hit is dropped like a new flow, not sent from 0.0.0.0.
#[test]
fn a_nat_flow_whose_reply_entry_was_evicted_claims_its_port_again_or_moves_off_a_taken_one() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("ne");
    let port = first_nat_port(CLIENT4, 40000, VIP4);
    let other = client_hashing_to(&net, port, &[CLIENT4[3]]);
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("natevict", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 24, LbMode::Nat, ID_A4);
        let pin = lb.dp.pin_dir().join("maps").join("fr_lb_nat");
        let mut nat: aya::maps::HashMap<_, LbFlow, LbNatEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(pin).unwrap()))
                .unwrap();
        let ack = tcp4(CLIENT4, 40000, VIP4, 80, false, b"data");
        let reply_to = |port: u16| tcp4(BACKEND_A4, 8080, NODE4, port, false, b"HTTP/1.0 200 OK\r\n\r\n");
        let client_of = |out: &TestRunOutput| {
            assert_eq!(out.retval, XDP_TX, "a translated reply");
            assert_checksums_valid(&out.data);
            (out.data[30..34].to_vec(), u16::from_be_bytes([out.data[36], out.data[37]]))
        };
        let client_of_port = |nat: &aya::maps::HashMap<_, LbFlow, LbNatEntry>, port: u16| {
            let e = nat.get(&flow4(BACKEND_A4, 8080, NODE4, port), 0).ok()?;
            Some((e.client[..4].to_vec(), u16::from_be(e.client_port)))
        };
        let ours = Some((CLIENT4.to_vec(), 40000));

        assert_eq!(nat_port_of(&lb, &tcp4(CLIENT4, 40000, VIP4, 80, true, b"")), port, "the test's copy of the hash");
        // Evicted; the flow's next packet after conntrack's refresh (a second on: the test ages
        // the entry) claims the port again.
        nat.remove(&flow4(BACKEND_A4, 8080, NODE4, port)).unwrap();
        age_flow_unannounced(&lb, flow4(CLIENT4, 40000, VIP4, 80));
        assert_eq!(nat_port_of(&lb, &ack), port, "conntrack hit, entry evicted: the same port");
        assert_eq!(client_of_port(&nat, port), ours, "the entry is back");
        assert_eq!(client_of(&lb.run(&reply_to(port))), (CLIENT4.to_vec(), 40000), "and translates replies");
        assert_eq!(nat_port_of(&lb, &ack), port, "conntrack hit, remembered from here");

        // Evicted again, and the port claimed by another client's new flow to the same backend
        // while this flow is remembered: the flow's next packet must not go out from that port.
        nat.remove(&flow4(BACKEND_A4, 8080, NODE4, port)).unwrap();
        let syn = tcp4(other.0, other.1, VIP4, 80, true, b"");
        assert_eq!(nat_port_of(&lb, &syn), port, "the port, free, goes to the other client");
        let moved = nat_port_of(&lb, &ack);
        assert_ne!(moved, port, "the flow left the other client's port");
        assert!((10000..10000 + 22768).contains(&moved), "an SNAT port: {moved}");
        assert_eq!(client_of_port(&nat, moved), ours, "the new port's entry is the flow's");
        assert_eq!(client_of_port(&nat, port), Some((other.0.to_vec(), other.1)), "the old one still the other's");
        for what in ["conntrack hit on the new port, remembered from here", "from memory"] {
            assert_eq!(nat_port_of(&lb, &ack), moved, "{what}");
        }
        assert_eq!(client_of(&lb.run(&reply_to(moved))), (CLIENT4.to_vec(), 40000));
        assert_eq!(client_of(&lb.run(&reply_to(port))), (other.0.to_vec(), other.1));

        // A third client's new flow whose first port is the flow's takes another: a taken port's
        // epoch stays, so the flow is still sent from memory (its conntrack entry deleted behind
        // LbMaps' back: no new flow is made).
        let third = client_hashing_to(&net, moved, &[CLIENT4[3], other.0[3]]);
        assert_ne!(nat_port_of(&lb, &tcp4(third.0, third.1, VIP4, 80, true, b"")), moved);
        let before = lb.dp.lb().service_counters(24).unwrap().new_flows;
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_eq!(nat_port_of(&lb, &ack), moved, "still from memory");
        assert_eq!(lb.dp.lb().service_counters(24).unwrap().new_flows, before, "from memory: no new flow");

        // IPv6 the same way: evicted, and claimed again after conntrack's refresh.
        lb.service(ip6(VIP6), 80, L4Proto::Tcp, 27, LbMode::Nat, ID_A6);
        let port6 = nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, true, b""));
        nat.remove(&flow6(BACKEND_A6, 8080, NODE6, port6)).unwrap();
        age_flow_unannounced(&lb, flow6(CLIENT6, 40000, VIP6, 80));
        assert_eq!(nat_port_of(&lb, &tcp6(CLIENT6, 40000, VIP6, 80, false, b"data")), port6, "IPv6: the same port");
        let entry = nat.get(&flow6(BACKEND_A6, 8080, NODE6, port6), 0).expect("IPv6: the entry is back");
        assert_eq!((entry.client, u16::from_be(entry.client_port)), (CLIENT6, 40000));

        // Without node addresses (a new generation: nothing from memory), the other client's
        // conntrack hit is dropped and counted, as its new flow would be.
        lb.dp.lb().set_node_addresses(None, None).unwrap();
        assert_eq!(lb.run(&tcp4(other.0, other.1, VIP4, 80, false, b"data")).retval, XDP_DROP);
        assert_eq!(lb.dp.lb().service_counters(24).unwrap().drops.no_node_address, 1);
    });
}

#[test]
fn confirmed_flows_are_remembered_per_cpu_until_the_maps_change_or_a_second_passes() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("fc");
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("fcache", ifindex);
        let key = lb.service(ip4(VIP4), 80, L4Proto::Tcp, 41, LbMode::Dsr, ID_A4);
        let syn = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
        let ack = tcp4(CLIENT4, 40000, VIP4, 80, false, b"data");
        let new_flows = |lb: &mut Lb| lb.dp.lb().service_counters(41).unwrap().new_flows;
        // A new flow (conntrack entry made), a conntrack hit (confirmed, remembered), then from
        // memory: the same packets out, the same counts.
        for (what, packet) in [("new flow", &syn), ("conntrack hit", &ack), ("remembered", &ack)] {
            assert_tx(&lb.run(packet), &expect_ipip(MAC_A, BACKEND_A4, &packet[14..]), what);
        }
        let (service, backend) =
            (lb.dp.lb().service_counters(41).unwrap(), lb.dp.lb().backend_counters(ID_A4).unwrap());
        let bytes = (syn.len() + 2 * ack.len()) as u64;
        assert_eq!((service.packets, service.bytes, service.new_flows), (3, bytes, 1));
        assert_eq!((backend.packets, backend.bytes, backend.new_flows), (3, bytes, 1));

        // Memory is what sends it: with the flow's conntrack entry deleted behind LbMaps' back (no
        // new generation), the next packet still goes to its backend without starting a new flow.
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "remembered, entry gone");
        assert_eq!(new_flows(&mut lb), 1, "remembered: no new flow");
        // Any change through LbMaps (here the node addresses written again, unchanged) is a new
        // generation: the full path runs, finds no conntrack entry and starts the flow over.
        let generation = lb.dp.lb().generation().unwrap();
        lb.dp.lb().set_node_addresses(Some(NODE4.into()), Some(NODE6.into())).unwrap();
        assert_eq!(lb.dp.lb().generation().unwrap(), generation + 1);
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "after a change");
        assert_eq!(new_flows(&mut lb), 2, "after a change: the full path, a new flow");

        // A remembered flow sees a change of mode (DSR to NAT) at its next packet.
        for what in ["conntrack hit", "remembered"] {
            assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), what);
        }
        lb.dp.lb().upsert_service(&key, 41, LbMode::Nat, &[ID_A4; TABLE_SIZE]).unwrap();
        let out = lb.run(&ack);
        let (proto, dst) = (out.data[14 + 9], &out.data[14 + 16..14 + 20]);
        println!("after the switch to NAT: verdict {}, protocol {proto}, destination {dst:?}", out.retval);
        assert_eq!((out.retval, proto, dst), (XDP_TX, 6, &BACKEND_A4[..]), "translated, not tunnelled");
        // NAT flows are remembered too (with their SNAT port): the same translation from memory,
        // even with the conntrack entry gone behind LbMaps' back.
        let translated = out.data;
        for what in ["NAT conntrack hit", "NAT remembered"] {
            assert_tx(&lb.run(&ack), &translated, what);
        }
        let before = new_flows(&mut lb);
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_tx(&lb.run(&ack), &translated, "NAT remembered, entry gone");
        assert_eq!(new_flows(&mut lb), before, "NAT remembered: no new flow");

        // Memory lasts at most a second without the full path: back to DSR, remembered, the entry
        // deleted behind LbMaps' back again; no new flow while remembered, one once it lapsed.
        lb.dp.lb().upsert_service(&key, 41, LbMode::Dsr, &[ID_A4; TABLE_SIZE]).unwrap();
        // (The entry was deleted above: the first packet starts the flow again, the second
        // confirms it.)
        for what in ["new flow again", "conntrack hit again"] {
            assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), what);
        }
        let remembered = Instant::now();
        let before = new_flows(&mut lb);
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_eq!(lb.run(&ack).retval, XDP_TX);
        if remembered.elapsed() < Duration::from_millis(900) {
            assert_eq!(new_flows(&mut lb), before, "within the second: remembered");
        } else {
            println!("(held up for {:?}: the memory may have lapsed already)", remembered.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1100));
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "after a second");
        assert_eq!(new_flows(&mut lb), before + 1, "after a second: the full path, a new flow");
    });
}

/// The flow cache is one array with a part per possible CPU (lb.h: lb_fc; the loader sizes it):
/// every CPU this test may run on remembers a flow in its own part, and a flow remembered on one
/// CPU is not known on another (its packets there take the full path).
#[test]
fn every_cpu_remembers_flows_in_a_part_of_the_flow_cache_of_its_own() {
    if !ferrule_tests::privileged() {
        return;
    }
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect();
    println!("CPUs this test runs on in turn: {cpus:?}");
    let on_cpu = |cpu: usize| {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("CPU index");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
    };
    let net = LbNet::new("fcpu");
    net.run(move |ifindex| {
        let mut lb = Lb::open("fcpu", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 44, LbMode::Dsr, ID_A4);
        let new_flows = |lb: &mut Lb| lb.dp.lb().service_counters(44).unwrap().new_flows;
        for (n, &cpu) in cpus.iter().enumerate() {
            on_cpu(cpu);
            let sport = 41000 + n as u16;
            let ack = tcp4(CLIENT4, sport, VIP4, 80, false, b"data");
            for what in ["new flow", "conntrack hit"] {
                assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), &format!("CPU {cpu}: {what}"));
            }
            let before = new_flows(&mut lb);
            forget_flow_unannounced(&lb, CLIENT4, sport, VIP4, 80);
            assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), &format!("CPU {cpu}: remembered"));
            assert_eq!(new_flows(&mut lb), before, "CPU {cpu}: remembered in its part, no new flow");
        }
        if let (Some(&first), Some(&last)) = (cpus.first(), cpus.last()) {
            if first != last {
                on_cpu(first);
                let ack = tcp4(CLIENT4, 42000, VIP4, 80, false, b"data");
                for _ in 0..2 {
                    assert_eq!(lb.run(&ack).retval, XDP_TX);
                }
                forget_flow_unannounced(&lb, CLIENT4, 42000, VIP4, 80);
                let before = new_flows(&mut lb);
                on_cpu(last);
                assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "on another CPU");
                assert_eq!(new_flows(&mut lb), before + 1, "remembered on CPU {first} only: a new flow on CPU {last}");
            }
        }
    });
}

/// Rewrites backend `id`'s address in `fr_lb_backends` through its pin, behind LbMaps' back (no
/// new generation), as only a test would.
fn move_backend_unannounced(lb: &Lb, id: u32, to: [u8; 4]) {
    let data = aya::maps::MapData::from_pin(lb.dp.pin_dir().join("maps").join("fr_lb_backends")).unwrap();
    let mut backends: aya::maps::Array<_, LbBackend> = aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    let mut be = backends.get(&id, 0).unwrap();
    be.addr[..4].copy_from_slice(&to);
    backends.set(id, be, 0).unwrap();
}

/// A remembered flow's packets go the way its last packet went (new endpoints, next hop) with
/// nothing else looked up, while that next hop is fresh (LB_NH_TTL_NS, 50 ms, as any cached
/// route lookup); then the backend's way is taken again, still without a new flow. Shown with the
/// backend's address changed behind LbMaps' back (no new generation): the same packets keep the
/// old address until the next hop is due, then follow the backend. A packet of the flow that
/// comes in on another interface looks its own route up (here a rule for that interface routes
/// the backend through another neighbour).
#[test]
fn remembered_flows_go_the_way_their_last_packet_went_while_its_next_hop_is_fresh() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("fw");
    let peer = format!("{}p", net.dev);
    run("ip", &["-n", &net.ns, "rule", "add", "iif", &peer, "table", "100"]);
    run(
        "ip",
        &["-n", &net.ns, "route", "add", "198.51.100.10/32", "via", "198.51.100.11", "dev", &net.dev, "table", "100"],
    );
    net.run(move |ifindex| {
        stay_on_this_cpu();
        let peer_ifindex = nix::net::if_::if_nametoindex(peer.as_str()).expect("peer ifindex");
        let mut lb = Lb::open("fcway", ifindex);
        for (mode, id, port) in [(LbMode::Dsr, 42, 80), (LbMode::Nat, 43, 81)] {
            lb.upsert_backend_for_test(ID_A4, BACKEND_A4);
            lb.service(ip4(VIP4), port, L4Proto::Tcp, id, mode, ID_A4);
            let syn = tcp4(CLIENT4, 40000, VIP4, port, true, b"");
            let ack = tcp4(CLIENT4, 40000, VIP4, port, false, b"data");
            // Outer (DSR) or translated (NAT) destination, and the destination MAC.
            let way = |out: &TestRunOutput| (out.retval, out.data[14 + 16..14 + 20].to_vec(), out.data[..6].to_vec());
            let to_a = (XDP_TX, BACKEND_A4.to_vec(), MAC_A.to_vec());
            let to_b = (XDP_TX, BACKEND_B4.to_vec(), MAC_B.to_vec());
            let looked_up = Instant::now(); // the route lookup of the first packet
            assert_eq!(way(&lb.run(&syn)), to_a, "{mode:?} new flow");
            assert_eq!(way(&lb.run(&ack)), to_a, "{mode:?} conntrack hit: remembered with its way");
            let elsewhere = test_run_xdp(lb.dp.xdp_program_fd().unwrap(), &ack, peer_ifindex, 1).unwrap();
            let via_b = (XDP_REDIRECT, BACKEND_A4.to_vec(), MAC_B.to_vec());
            assert_eq!(way(&elsewhere), via_b, "{mode:?} in on another interface: its own route");
            assert_eq!(way(&lb.run(&ack)), to_a, "{mode:?} back on the first: its route again");
            move_backend_unannounced(&lb, ID_A4, BACKEND_B4);
            let out = lb.run(&ack);
            if looked_up.elapsed() < Duration::from_millis(40) {
                assert_eq!(way(&out), to_a, "{mode:?} remembered: the way the last packet went");
            } else {
                println!("(held up for {:?}: the next hop may be due already)", looked_up.elapsed());
            }
            std::thread::sleep(Duration::from_millis(60));
            assert_eq!(way(&lb.run(&ack)), to_b, "{mode:?} next hop due: the backend's way now");
            assert_eq!(way(&lb.run(&ack)), to_b, "{mode:?} and remembered so");
            assert_eq!(lb.dp.lb().service_counters(id).unwrap().new_flows, 1, "{mode:?}: one flow throughout");
        }
    });
}

/// With more flows than the cache holds, it turns itself off for a while (lb.h: fewer than
/// LB_FC_MIN_HITS = 256 hits in LB_FC_SAMPLE = 1024 probes: off for LB_FC_BYPASS = 15360 packets to
/// a possible VIP), then samples again.
#[test]
fn a_flow_cache_that_mostly_misses_stays_out_of_the_way_for_a_while() {
    if !ferrule_tests::privileged() {
        return;
    }
    let net = LbNet::new("y");
    net.run(|ifindex| {
        stay_on_this_cpu();
        let mut lb = Lb::open("fcbypass", ifindex);
        lb.service(ip4(VIP4), 80, L4Proto::Tcp, 42, LbMode::Dsr, ID_A4);
        let new_flows = |lb: &mut Lb| lb.dp.lb().service_counters(42).unwrap().new_flows;
        let ack = tcp4(CLIENT4, 40000, VIP4, 80, false, b"data");
        for what in ["new flow", "conntrack hit: remembered"] {
            assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), what);
        }
        let started = Instant::now();
        // 1,100 new flows: each probes the cache and misses.
        for sport in 0..1100u16 {
            assert_eq!(lb.run(&tcp4(CLIENT4, 1000 + sport, VIP4, 80, true, b"")).retval, XDP_TX);
        }
        // The cache is off: the remembered flow, its conntrack entry deleted behind LbMaps' back,
        // takes the full path and starts over.
        let before = new_flows(&mut lb);
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "while off");
        assert_eq!(new_flows(&mut lb), before + 1, "while off: the full path, a new flow");
        // 15,360 more packets to the service, then the cache is on again and still remembers the
        // flow (same generation, within its second).
        let other = tcp4(CLIENT4, 40001, VIP4, 80, true, b"");
        for _ in 0..15_360 {
            lb.run(&other);
        }
        let before = new_flows(&mut lb);
        forget_flow_unannounced(&lb, CLIENT4, 40000, VIP4, 80);
        assert_tx(&lb.run(&ack), &expect_ipip(MAC_A, BACKEND_A4, &ack[14..]), "on again");
        let took = started.elapsed();
        println!("off and on again in {took:?}");
        if took < Duration::from_millis(900) {
            assert_eq!(new_flows(&mut lb), before, "on again: remembered");
        } else {
            println!("(took over 900 ms: the memory may have lapsed, not checked)");
        }
    });
}

#[test]
fn tc_decap_strips_tunnels_to_allowed_addresses_only() {
    if !ferrule_tests::privileged() {
        return;
    }
    let root = bpffs();
    let node = unique_node("decap");
    let _guard = PinGuard::new(&root, &node);
    let mut decap = Decap::open_at(&root, &node).unwrap();
    decap.allow_address(ip4(BACKEND_A4)).unwrap();
    decap.allow_address(ip6(BACKEND_A6)).unwrap();

    let inner4 = tcp4(CLIENT4, 40000, VIP4, 80, true, b"");
    let inner6 = tcp6(CLIENT6, 40000, VIP6, 80, true, b"x");
    for (what, tunnel, inner) in [
        ("IPIP", expect_ipip(MAC_A, BACKEND_A4, &inner4[14..]), &inner4),
        ("IP6IP6", expect_ip6_tunnel(MAC_A, BACKEND_A6, &inner6[14..]), &inner6),
        ("4in6", expect_ip6_tunnel(MAC_A, BACKEND_A6, &inner4[14..]), &inner4),
        ("6in4", expect_ipip(MAC_A, BACKEND_A4, &inner6[14..]), &inner6),
    ] {
        let out = test_run_skb(decap.program_fd().unwrap(), &tunnel).unwrap();
        assert_eq!(out.retval, TC_ACT_OK, "{what}");
        let mut expected = inner.clone();
        expected[..12].copy_from_slice(&tunnel[..12]);
        assert_eq!(hex(&out.data), hex(&expected), "{what}: the client's packet with the tunnel's MACs");
    }
    let elsewhere = expect_ipip(MAC_A, BACKEND_B4, &inner4[14..]);
    let out = test_run_skb(decap.program_fd().unwrap(), &elsewhere).unwrap();
    assert_eq!((out.retval, out.data), (TC_ACT_OK, elsewhere), "not our address: untouched");

    // Outer headers the stack would drop are not decapsulated (it then drops them as they are).
    let ipip = expect_ipip(MAC_A, BACKEND_A4, &inner4[14..]);
    let mut bad_checksum = ipip.clone();
    bad_checksum[24] ^= 0x01;
    // Changed headers get a correct checksum again, so that only the change itself is wrong.
    let fix_checksum = |frame: &mut Vec<u8>| {
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&[&frame[14..34]]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    };
    let mut outer_v5 = ipip.clone();
    outer_v5[14] = 0x55;
    fix_checksum(&mut outer_v5);
    let mut outer_too_long = ipip.clone();
    outer_too_long[16..18].copy_from_slice(&(ipip.len() as u16 - 14 + 1).to_be_bytes());
    fix_checksum(&mut outer_too_long);
    let ip6ip6 = expect_ip6_tunnel(MAC_A, BACKEND_A6, &inner6[14..]);
    let mut outer_v4_in_v6 = ip6ip6.clone();
    outer_v4_in_v6[14] = (outer_v4_in_v6[14] & 0x0f) | 0x40;
    let mut payload_too_long = ip6ip6.clone();
    payload_too_long[18..20].copy_from_slice(&(ip6ip6.len() as u16 - 54 + 1).to_be_bytes());
    for (what, packet) in [
        ("outer IPv4 header checksum wrong", bad_checksum),
        ("outer IPv4 version 5", outer_v5),
        ("outer IPv4 total length beyond the packet", outer_too_long),
        ("outer IPv6 version 4", outer_v4_in_v6),
        ("outer IPv6 payload length beyond the packet", payload_too_long),
    ] {
        let out = test_run_skb(decap.program_fd().unwrap(), &packet).unwrap();
        assert_eq!((out.retval, hex(&out.data)), (TC_ACT_OK, hex(&packet)), "{what}: untouched");
    }
    let events = decap.events().unwrap();
    assert_eq!((events.decapsulated, events.not_local, events.malformed), (4, 1, 5));
}
