//! Runs a loaded XDP program on a packet with `BPF_PROG_TEST_RUN` (no interface, no traffic) and
//! returns the verdict and the packet the program left. Tests use it as "packet in → packet out";
//! it must not attach anything.
//!
//! For benchmarks only, [`XdpTrafficGen`] uses the same command in live-frames mode as a traffic
//! source (the kernel transmits prepared frames out of an interface, with no socket and no skb),
//! and [`XdpSink`] is its receiving end, the one thing here that attaches (and only itself).

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

use crate::{objects, sys, EbpfError};

/// Verdicts from `enum xdp_action`.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// `TC_ACT_OK` from include/uapi/linux/pkt_cls.h.
pub const TC_ACT_OK: u32 = 0;

/// What one `BPF_PROG_TEST_RUN` of an XDP program produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (an `xdp_action`).
    pub retval: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

/// Room for a program that grows the packet (`bpf_xdp_adjust_tail`, encapsulation).
const OUTPUT_HEADROOM: usize = 512;
/// The kernel needs at least an Ethernet header.
const MIN_PACKET: usize = 14;

/// Runs the XDP program `prog_fd` `repeat` times (at least once) on `packet`, as if it arrived on
/// `ingress_ifindex` (which must exist in the caller's network namespace; 1 is always `lo`).
pub fn test_run_xdp(
    prog_fd: BorrowedFd<'_>,
    packet: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Result<TestRunOutput, EbpfError> {
    if packet.len() < MIN_PACKET {
        return Err(EbpfError::TestRunInput(format!(
            "packet is {} bytes; XDP needs at least an Ethernet header ({MIN_PACKET})",
            packet.len()
        )));
    }
    let data_end =
        u32::try_from(packet.len()).map_err(|_| EbpfError::TestRunInput("packet longer than 4 GiB".to_owned()))?;
    // `struct xdp_md` (include/uapi/linux/bpf.h): data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel requires data = 0 and data_end = packet length.
    let ctx = [0, data_end, 0, ingress_ifindex, 0, 0].map(u32::to_ne_bytes).concat();
    let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
    let raw = sys::prog_test_run(prog_fd, packet, &mut out, &ctx, repeat.max(1))
        .map_err(|source| EbpfError::syscall("BPF_PROG_TEST_RUN", source))?;
    // The kernel fails with ENOSPC rather than overflow `out`; `min` only guards that contract.
    out.truncate(raw.data_len.min(out.len()));
    Ok(TestRunOutput { retval: raw.retval, data: out, duration_ns: raw.duration_ns })
}

/// Runs the tc program `prog_fd` once on `packet` (an Ethernet frame) and returns its verdict and
/// the packet as it left it.
pub fn test_run_skb(prog_fd: BorrowedFd<'_>, packet: &[u8]) -> Result<TestRunOutput, EbpfError> {
    if packet.len() < MIN_PACKET {
        return Err(EbpfError::TestRunInput(format!(
            "packet is {} bytes; tc needs at least an Ethernet header ({MIN_PACKET})",
            packet.len()
        )));
    }
    let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
    let raw = sys::prog_test_run(prog_fd, packet, &mut out, &[], 1)
        .map_err(|source| EbpfError::syscall("BPF_PROG_TEST_RUN", source))?;
    out.truncate(raw.data_len.min(out.len()));
    Ok(TestRunOutput { retval: raw.retval, data: out, duration_ns: raw.duration_ns })
}

const GEN_OBJECT: &str = "xdp_gen";
const GEN_PROGRAM: &str = "xdp_gen";
const GEN_FRAMES: &str = "gen_frames";
const GEN_CTL: &str = "gen_ctl";
/// The length of every frame [`XdpTrafficGen`] sends: a minimum-size Ethernet frame (60 bytes
/// before the FCS), `GEN_FRAME_LEN` in `bpf/xdp_gen.bpf.c`.
pub const GEN_FRAME_LEN: usize = 60;
/// How many different frames it cycles through at most (`GEN_MAX_FRAMES` in `xdp_gen.bpf.c`).
pub const GEN_MAX_FRAMES: usize = 1024;
/// The kernel's largest live-frames batch (`TEST_XDP_MAX_BATCH` in net/bpf/test_run.c).
pub const MAX_LIVE_BATCH: u32 = 256;

use crate::abi::{FwdCtl, GenCtl};

/// A benchmark traffic source in the manner of xdp-trafficgen: `xdp_gen` run with
/// `BPF_PROG_TEST_RUN` in live-frames mode (Linux 5.18+), so the kernel sends frames straight out
/// of an interface's `ndo_xdp_xmit`: no socket, no skb, no routing, tens of ns per frame.
///
/// The program writes the next of the [`frames`](Self::set_frames) user space prepared over each
/// copy, round-robin, and answers XDP_TX: the kernel recycles live-frame pages without rewriting
/// them, and on a veth the receiver (a NAT) edits the page in place, so the kernel's own copy of
/// the input is not enough; and one syscall must send many frames (setting one up costs an RCU
/// grace period, ~20 ms here), so the flows have to vary within it.
///
/// Not for the daemon: it loads a program and two maps of its own, attaches nothing and pins
/// nothing (all go away with this value). Frames go out exactly as given, so the caller builds
/// complete frames (destination MAC of the peer, checksums). On a veth, the peer must be able to
/// receive XDP frames (an XDP program or GRO on the peer), or the kernel drops them; the peer's
/// ring holds 256 frames, and what does not fit is dropped (counted as the sender's tx drops).
pub struct XdpTrafficGen {
    ebpf: Ebpf,
    frames: usize,
}

impl std::fmt::Debug for XdpTrafficGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpTrafficGen").field("frames", &self.frames).finish_non_exhaustive()
    }
}

/// What one [`XdpTrafficGen::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRun {
    /// Frames the program ran on and handed to the interface (`count`). The interface may still
    /// drop some (a full veth ring): its counters say how many went out.
    pub frames: u32,
    /// Average time per frame, as the kernel measured it: program, transmit, and whatever
    /// receive processing ran in this thread's softirqs.
    pub ns_per_frame: u32,
}

impl XdpTrafficGen {
    /// Loads `xdp_gen` and its maps into the kernel (needs root, or CAP_BPF + CAP_NET_ADMIN).
    /// It sends nothing until [`set_frames`](Self::set_frames).
    pub fn load() -> Result<XdpTrafficGen, EbpfError> {
        let mut ebpf = EbpfLoader::new().load(objects::XDP_GEN).map_err(|e| EbpfError::load(GEN_OBJECT, e))?;
        let program = ebpf.program_mut(GEN_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "program",
            name: GEN_PROGRAM,
        })?;
        let xdp: &mut Xdp = program.try_into().map_err(|e| EbpfError::program(GEN_PROGRAM, "using as XDP", e))?;
        xdp.load().map_err(|e| EbpfError::program(GEN_PROGRAM, "loading", e))?;
        Ok(XdpTrafficGen { ebpf, frames: 0 })
    }

    /// Prepares the frames to send, round-robin from the first: 1 to [`GEN_MAX_FRAMES`] of
    /// exactly [`GEN_FRAME_LEN`] bytes each.
    pub fn set_frames(&mut self, frames: &[[u8; GEN_FRAME_LEN]]) -> Result<(), EbpfError> {
        if frames.is_empty() || frames.len() > GEN_MAX_FRAMES {
            return Err(EbpfError::TestRunInput(format!(
                "{} frames; the generator takes 1 to {GEN_MAX_FRAMES}",
                frames.len()
            )));
        }
        let map = self.ebpf.map_mut(GEN_FRAMES).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "map",
            name: GEN_FRAMES,
        })?;
        let mut array: Array<_, [u8; GEN_FRAME_LEN]> =
            Array::try_from(map).map_err(|e| EbpfError::map(GEN_FRAMES, "opening as array", e))?;
        for (i, frame) in (0u32..).zip(frames) {
            array.set(i, frame, 0).map_err(|e| EbpfError::map(GEN_FRAMES, "writing", e))?;
        }
        let map = self.ebpf.map_mut(GEN_CTL).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "map",
            name: GEN_CTL,
        })?;
        let mut ctl: Array<_, GenCtl> =
            Array::try_from(map).map_err(|e| EbpfError::map(GEN_CTL, "opening as array", e))?;
        // `frames.len()` is at most GEN_MAX_FRAMES (checked above).
        ctl.set(0, GenCtl { frames: frames.len() as u32, next: 0 }, 0)
            .map_err(|e| EbpfError::map(GEN_CTL, "writing", e))?;
        self.frames = frames.len();
        Ok(())
    }

    /// Sends `count` frames out of interface `ifindex` (cycling through the prepared frames,
    /// continuing where the previous call stopped), `batch_size` frames per kernel batch (`None`:
    /// the kernel's default, 64; at most [`MAX_LIVE_BATCH`]).
    ///
    /// `ifindex` is resolved in the calling thread's network namespace: call this from a thread
    /// that has entered the namespace holding the interface (`setns`). The call returns when all
    /// `count` frames are sent; keep `count` small enough to bound it (at ~100 ns a frame, 2^20
    /// frames take ~0.1 s), and call again for more.
    pub fn send(&self, ifindex: u32, count: u32, batch_size: Option<u32>) -> Result<LiveRun, EbpfError> {
        let invalid = |msg: String| Err(EbpfError::TestRunInput(msg));
        if self.frames == 0 {
            return invalid("no frames prepared (XdpTrafficGen::set_frames)".to_owned());
        }
        if ifindex == 0 {
            return invalid("live frames need the ingress interface XDP_TX sends out of (ifindex 0)".to_owned());
        }
        if count == 0 {
            return invalid("a count of 0 frames (the kernel would send one)".to_owned());
        }
        let batch_size = batch_size.unwrap_or(0);
        if batch_size > MAX_LIVE_BATCH {
            return invalid(format!("batch of {batch_size} frames; the kernel takes at most {MAX_LIVE_BATCH}"));
        }
        // The kernel's copy of the input only sizes each page's packet: the program writes the
        // frame itself. `struct xdp_md`, as in `test_run_xdp`: the kernel takes ingress_ifindex
        // from it and requires data = 0, data_end = the input's length.
        let input = [0u8; GEN_FRAME_LEN];
        let ctx = [0, GEN_FRAME_LEN as u32, 0, ifindex, 0, 0].map(u32::to_ne_bytes).concat();
        let program = self.ebpf.program(GEN_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "program",
            name: GEN_PROGRAM,
        })?;
        let xdp: &Xdp = program.try_into().map_err(|e| EbpfError::program(GEN_PROGRAM, "using as XDP", e))?;
        let fd = xdp.fd().map_err(|e| EbpfError::program(GEN_PROGRAM, "getting its fd", e))?;
        let ns_per_frame = sys::prog_test_run_xdp_live(fd.as_fd(), &input, &ctx, count, batch_size)
            .map_err(|source| EbpfError::syscall("BPF_PROG_TEST_RUN (live frames)", source))?;
        Ok(LiveRun { frames: count, ns_per_frame })
    }
}

const SINK_PROGRAM: &str = "xdp_sink";
const SINK_COUNT: &str = "sink_count";

/// The receiving end of a benchmark: `xdp_sink` attached (native XDP) to one interface, counting
/// the IPv4 UDP datagrams that arrive and dropping them before any skb exists, so the sink costs
/// the same little whatever delivered them. Everything else (ARP, ping) goes to the stack.
/// Detached when dropped. Benchmarks only, like [`XdpTrafficGen`].
pub struct XdpSink {
    ebpf: Ebpf,
}

impl std::fmt::Debug for XdpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSink").finish_non_exhaustive()
    }
}

impl XdpSink {
    /// Loads `xdp_sink` and attaches it in native mode to `ifname`, which is resolved in the
    /// calling thread's network namespace (enter it with `setns` first). The value may then move
    /// to any thread.
    pub fn attach(ifname: &str) -> Result<XdpSink, EbpfError> {
        let mut ebpf = EbpfLoader::new().load(objects::XDP_GEN).map_err(|e| EbpfError::load(GEN_OBJECT, e))?;
        let program = ebpf.program_mut(SINK_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "program",
            name: SINK_PROGRAM,
        })?;
        let xdp: &mut Xdp = program.try_into().map_err(|e| EbpfError::program(SINK_PROGRAM, "using as XDP", e))?;
        xdp.load().map_err(|e| EbpfError::program(SINK_PROGRAM, "loading", e))?;
        xdp.attach(ifname, XdpMode::Driver).map_err(|e| EbpfError::program(SINK_PROGRAM, "attaching", e))?;
        Ok(XdpSink { ebpf })
    }

    /// Datagrams counted since the attach, summed over CPUs.
    pub fn received(&self) -> Result<u64, EbpfError> {
        let map = self.ebpf.map(SINK_COUNT).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "map",
            name: SINK_COUNT,
        })?;
        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| EbpfError::map(SINK_COUNT, "opening as per-CPU array", e))?;
        let values = counts.get(&0, 0).map_err(|e| EbpfError::map(SINK_COUNT, "reading", e))?;
        Ok(values.iter().sum())
    }
}

const FWD_PROGRAM: &str = "xdp_fwd";
const FWD_CTL: &str = "fwd_ctl";

/// The floor of XDP forwarding for a benchmark: `xdp_fwd` attached (native XDP) to one
/// interface, redirecting every IPv4 UDP datagram out of another with fixed MAC addresses and a
/// decremented TTL, nothing else (no lookup, no translation): what any XDP forwarder pays on
/// these interfaces before doing its own work. Everything else goes to the stack. Detached when
/// dropped. Benchmarks only, like [`XdpTrafficGen`].
pub struct XdpForward {
    ebpf: Ebpf,
}

impl std::fmt::Debug for XdpForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpForward").finish_non_exhaustive()
    }
}

impl XdpForward {
    /// Loads `xdp_fwd` and attaches it in native mode to `ifname`, forwarding to interface
    /// `to_ifindex` with destination MAC `dmac` and source MAC `smac`. Names and indexes are
    /// resolved in the calling thread's network namespace (enter it with `setns` first). The
    /// egress interface must take XDP frames (on a veth: an XDP program or GRO on its peer).
    pub fn attach(ifname: &str, to_ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> Result<XdpForward, EbpfError> {
        if to_ifindex == 0 {
            return Err(EbpfError::TestRunInput("the forwarder needs an egress interface (ifindex 0)".to_owned()));
        }
        let mut ebpf = EbpfLoader::new().load(objects::XDP_GEN).map_err(|e| EbpfError::load(GEN_OBJECT, e))?;
        let map = ebpf.map_mut(FWD_CTL).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "map",
            name: FWD_CTL,
        })?;
        let mut ctl: Array<_, FwdCtl> =
            Array::try_from(map).map_err(|e| EbpfError::map(FWD_CTL, "opening as array", e))?;
        ctl.set(0, FwdCtl { ifindex: to_ifindex, dmac, smac }, 0).map_err(|e| EbpfError::map(FWD_CTL, "writing", e))?;
        let program = ebpf.program_mut(FWD_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "program",
            name: FWD_PROGRAM,
        })?;
        let xdp: &mut Xdp = program.try_into().map_err(|e| EbpfError::program(FWD_PROGRAM, "using as XDP", e))?;
        xdp.load().map_err(|e| EbpfError::program(FWD_PROGRAM, "loading", e))?;
        xdp.attach(ifname, XdpMode::Driver).map_err(|e| EbpfError::program(FWD_PROGRAM, "attaching", e))?;
        Ok(XdpForward { ebpf })
    }

    /// The attached program, for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&self) -> Result<BorrowedFd<'_>, EbpfError> {
        let program = self.ebpf.program(FWD_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: GEN_OBJECT,
            what: "program",
            name: FWD_PROGRAM,
        })?;
        let xdp: &Xdp = program.try_into().map_err(|e| EbpfError::program(FWD_PROGRAM, "using as XDP", e))?;
        xdp.fd().map(|fd| fd.as_fd()).map_err(|e| EbpfError::program(FWD_PROGRAM, "getting its fd", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs::File, process::Command};

    use nix::sched::{setns, CloneFlags};

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A namespace with a veth pair `gen0` ↔ `sink0`, both up, deleted on drop.
    struct Throwaway(String);

    impl Throwaway {
        fn new(tag: &str) -> Throwaway {
            let ns = Throwaway(format!("frt-{tag}-{}", std::process::id()));
            ip(&["netns", "add", &ns.0]);
            // No IPv6 (router solicitations, MLD): the only frames on the pair are the test's.
            ip(&["netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ip(&["netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
            ip(&["-n", &ns.0, "link", "add", "gen0", "type", "veth", "peer", "name", "sink0"]);
            for dev in ["gen0", "sink0"] {
                ip(&["-n", &ns.0, "link", "set", dev, "up"]);
            }
            // A veth receives XDP frames only with NAPI on, which GRO (or an XDP program) turns on.
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.0, "ethtool", "-K", "sink0", "gro", "on"])
                .output()
                .expect("running ethtool (apt-get install -y ethtool)");
            assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
            ns
        }

        fn sink0_mac(&self) -> [u8; 6] {
            let out = ip(&["-n", &self.0, "-j", "link", "show", "sink0"]);
            let parsed: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
            let mut mac = [0u8; 6];
            for (byte, hex) in mac.iter_mut().zip(parsed[0]["address"].as_str().expect("sink0 has a MAC").split(':')) {
                *byte = u8::from_str_radix(hex, 16).expect("hex MAC");
            }
            mac
        }

        /// Runs `f` on a thread that has entered the namespace.
        fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let netns = File::open(format!("/run/netns/{}", self.0)).expect("netns file");
            std::thread::scope(|s| {
                s.spawn(|| {
                    setns(netns, CloneFlags::CLONE_NEWNET).expect("setns into the throwaway namespace");
                    f()
                })
                .join()
                .expect("thread in the namespace panicked")
            })
        }

        fn link_stats(&self, dev: &str) -> serde_json::Value {
            let out = ip(&["-n", &self.0, "-s", "-j", "link", "show", "dev", dev]);
            let parsed: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
            parsed[0]["stats64"].clone()
        }
    }

    impl Drop for Throwaway {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A minimal frame for `dst`: an ethertype for local experiments (IEEE 802 0x88b5) that no
    /// protocol handles, so the receiving stack only counts it; `tag` tells frames apart.
    fn frame(dst: [u8; 6], tag: u8) -> [u8; GEN_FRAME_LEN] {
        let mut frame = [tag; GEN_FRAME_LEN];
        frame[..6].copy_from_slice(&dst);
        frame[6..14].copy_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
        frame
    }

    #[test]
    fn live_frames_arrive_on_the_veth_peer_exactly_count_times() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("gen");
        let dst = ns.sink0_mac();
        let before = ns.link_stats("sink0")["rx"]["packets"].as_u64().expect("rx packets");
        const N: u32 = 1000;
        let run = ns.inside(|| {
            let ifindex = nix::net::if_::if_nametoindex("gen0").expect("gen0 in this namespace");
            let mut gen = XdpTrafficGen::load().expect("loading xdp_gen");
            gen.set_frames(&[frame(dst, 1), frame(dst, 2), frame(dst, 3)]).expect("preparing frames");
            // Two calls with different batch sizes: the count is per call, whatever the batching.
            let first = gen.send(ifindex, N / 2, None).expect("live test run");
            let second = gen.send(ifindex, N / 2, Some(10)).expect("live test run");
            first.frames + second.frames
        });
        assert_eq!(run, N);
        // Receive processing may finish just after the syscall returns (NAPI): wait a little, bounded.
        let mut received = 0;
        for _ in 0..50 {
            received = ns.link_stats("sink0")["rx"]["packets"].as_u64().expect("rx packets") - before;
            if received >= u64::from(N) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(received, u64::from(N), "sink0 stats: {}", ns.link_stats("sink0"));
    }

    #[test]
    fn the_sink_counts_and_drops_every_udp_frame_the_generator_sends() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("sink");
        let mut udp = frame(ns.sink0_mac(), 0);
        udp[12..14].copy_from_slice(&[0x08, 0x00]);
        // IPv4, IHL 5, protocol UDP; the sink looks no further.
        udp[14] = 0x45;
        udp[23] = 17;
        const N: u32 = 5000;
        let (sink, sent) = ns.inside(|| {
            let sink = XdpSink::attach("sink0").expect("attaching xdp_sink");
            let ifindex = nix::net::if_::if_nametoindex("gen0").expect("gen0 in this namespace");
            let mut gen = XdpTrafficGen::load().expect("loading xdp_gen");
            gen.set_frames(&[udp]).expect("preparing frames");
            (sink, gen.send(ifindex, N, Some(MAX_LIVE_BATCH)).expect("live test run").frames)
        });
        assert_eq!(sent, N);
        let mut received = 0;
        for _ in 0..50 {
            received = sink.received().expect("reading the sink's counter");
            if received >= u64::from(N) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(received, u64::from(N), "sink0 stats: {}", ns.link_stats("sink0"));
    }

    #[test]
    fn live_frames_refuse_no_frames_a_missing_interface_and_an_oversized_batch() {
        if !ferrule_tests::privileged() {
            return;
        }
        let mut gen = XdpTrafficGen::load().expect("loading xdp_gen");
        assert!(matches!(gen.send(1, 1, None), Err(EbpfError::TestRunInput(_))), "no frames yet");
        assert!(matches!(gen.set_frames(&[]), Err(EbpfError::TestRunInput(_))));
        gen.set_frames(&[frame([0x02, 0, 0, 0, 0, 2], 0)]).expect("one frame");
        assert!(matches!(gen.send(0, 1, None), Err(EbpfError::TestRunInput(_))));
        assert!(matches!(gen.send(1, 1, Some(MAX_LIVE_BATCH + 1)), Err(EbpfError::TestRunInput(_))));
    }

    #[test]
    fn the_forwarder_rewrites_macs_and_ttl_and_redirects_udp_only() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("fwd");
        // IPv4 UDP 192.0.2.2 -> 203.0.113.10, TTL 64, header checksum filled in below.
        let mut udp = frame([0x02, 0, 0, 0, 0, 9], 0);
        udp[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = [0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 2, 203, 0, 113, 10];
        udp[14..34].copy_from_slice(&ip);
        let ip_sum = |h: &[u8]| {
            let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        };
        let check = ip_sum(&udp[14..34]);
        udp[24..26].copy_from_slice(&check.to_be_bytes());
        let (dmac, smac) = ([0x02, 0xd, 0xd, 0xd, 0xd, 0xd], [0x02, 0x5, 0x5, 0x5, 0x5, 0x5]);
        let (out, ttl_one, arp) = ns.inside(|| {
            let to = nix::net::if_::if_nametoindex("gen0").expect("gen0");
            let ingress = nix::net::if_::if_nametoindex("sink0").expect("sink0");
            let fwd = XdpForward::attach("sink0", to, dmac, smac).expect("attaching xdp_fwd");
            let fd = fwd.program_fd().expect("program fd");
            let out = test_run_xdp(fd, &udp, ingress, 1).expect("test run");
            let mut last_hop = udp;
            last_hop[22] = 1;
            let ttl_one = test_run_xdp(fd, &last_hop, ingress, 1).expect("test run");
            let mut arp = udp;
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            (out, ttl_one, test_run_xdp(fd, &arp, ingress, 1).expect("test run"))
        });
        assert_eq!(out.retval, XDP_REDIRECT);
        let mut expected = udp;
        expected[..6].copy_from_slice(&dmac);
        expected[6..12].copy_from_slice(&smac);
        expected[22] = 63;
        expected[24..26].copy_from_slice(&[0, 0]);
        let check = ip_sum(&expected[14..34]);
        expected[24..26].copy_from_slice(&check.to_be_bytes());
        assert_eq!(out.data, expected.to_vec(), "MACs rewritten, TTL 63, header checksum recomputed");
        assert_eq!(ip_sum(&out.data[14..34]), 0, "the header checksums to zero");
        assert_eq!((ttl_one.retval, ttl_one.data.as_slice()[22]), (XDP_PASS, 1), "TTL 1 is the stack's to answer");
        assert_eq!(arp.retval, XDP_PASS);
        assert!(matches!(XdpForward::attach("sink0", 0, dmac, smac), Err(EbpfError::TestRunInput(_))));
    }
}
