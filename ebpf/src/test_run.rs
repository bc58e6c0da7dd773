//! Runs a loaded XDP program on a packet with `BPF_PROG_TEST_RUN` (no interface, no traffic) and
//! returns the verdict and the packet the program left. Tests use it as "packet in → packet out";
//! that part attaches nothing.
//!
//! For benchmarks only: [`XdpTrafficGen`], a traffic source that keeps frames circulating in the
//! kernel (an XDP program on a veth pair of its own, sending a copy of each frame out of an
//! interface as it comes round: no socket and no skb per frame), [`XdpSink`], its receiving end,
//! and [`XdpForward`], the floor a forwarder's cost is read against. These attach (only
//! themselves), which nothing else here does.

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{
    maps::{Array, DevMap, PerCpuArray},
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
const GEN_STATE: &str = "gen_state";
const GEN_OUT: &str = "gen_out";
/// The length of every frame [`XdpTrafficGen`] sends: a minimum-size Ethernet frame (60 bytes
/// before the FCS), `GEN_FRAME_LEN` in `bpf/xdp_gen.bpf.c`.
pub const GEN_FRAME_LEN: usize = 60;
/// How many different frames it cycles through at most (`GEN_MAX_FRAMES` in `xdp_gen.bpf.c`).
pub const GEN_MAX_FRAMES: usize = 1024;
/// How many frames may circulate at once: the loop's frames all pass through one veth ring of 256
/// slots, which frees its slots in batches and so may look full with fewer frames in it; half of
/// it leaves room for that.
pub const GEN_MAX_SEEDS: u32 = 128;
/// How long a stopped loop is given to empty: every frame in it is dropped at its next turn, which
/// takes microseconds; this leaves room for a loaded machine.
const GEN_DRAIN: std::time::Duration = std::time::Duration::from_millis(50);

use crate::abi::{FwdCtl, GenCtl, GenState};

/// A benchmark traffic source that never leaves the kernel: `xdp_gen` (`bpf/xdp_gen.bpf.c`)
/// attached to one end of a veth pair reserved for it, where a few seed frames circulate; at each
/// turn the program writes the next of the [`frames`](Self::set_frames) user space prepared over
/// the frame (round-robin) and redirects it with `BPF_F_BROADCAST` both out of the interface the
/// traffic is for (a copy, as an XDP frame through `ndo_xdp_xmit`: no socket, no skb) and back
/// into the loop. A run sends a set number of frames, or fewer if stopped, then the loop empties.
///
/// This is how xdp-trafficgen works on kernels that allow `BPF_PROG_TEST_RUN` in live-frames mode;
/// some refuse that even to root (EPERM), and the loop needs nothing but native XDP and a devmap.
///
/// Where the loop runs: in the softirq of the CPU that sent the seeds (then the receive processing
/// of what it sends runs there too), or, with threaded NAPI on the loop's receiving end, in that
/// interface's NAPI kernel thread (`napi/{loop_rx}-*`), which can be pinned to a CPU and whose CPU
/// time is the generator's. The receiver of the copies must take XDP frames (on a veth: an XDP
/// program or GRO on its peer), and its ring holds 256 frames: what does not fit is dropped,
/// counted as the sending interface's transmit drops.
///
/// Not for the daemon: it loads a program and maps of its own and pins nothing; detached when
/// dropped. Frames go out exactly as given, so the caller builds complete frames (destination MAC
/// of the peer, checksums).
pub struct XdpTrafficGen {
    ebpf: Ebpf,
    frames: u32,
    /// The loop's other end, where seed frames are sent from, and the packet socket (opened in
    /// the namespace of `attach`'s caller) that sends them.
    seed_ifindex: u32,
    seed_socket: std::os::fd::OwnedFd,
    running: bool,
}

impl std::fmt::Debug for XdpTrafficGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpTrafficGen")
            .field("frames", &self.frames)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl XdpTrafficGen {
    /// Loads `xdp_gen` and attaches it in native mode to `loop_rx`, the receiving end of a veth
    /// pair whose other end is `loop_tx`, to send out of `out`. Names are resolved in the calling
    /// thread's network namespace (enter it with `setns` first), where the seeds' packet socket is
    /// opened too. The pair should carry nothing else (no addresses, IPv6 off), since the loop
    /// drops any frame that is not [`GEN_FRAME_LEN`] bytes but sends one that is, and have one
    /// receive queue (veth's default): the program counts with plain increments, one CPU at a
    /// time. It sends nothing until [`start`](Self::start).
    pub fn attach(loop_rx: &str, loop_tx: &str, out: &str) -> Result<XdpTrafficGen, EbpfError> {
        let index = |name: &str| {
            nix::net::if_::if_nametoindex(name)
                .map_err(|e| EbpfError::TestRunInput(format!("interface {name:?} in this namespace: {e}")))
        };
        let (seed_ifindex, out_ifindex) = (index(loop_tx)?, index(out)?);
        index(loop_rx)?;
        let mut ebpf = EbpfLoader::new().load(objects::XDP_GEN).map_err(|e| EbpfError::load(GEN_OBJECT, e))?;
        let mut targets = DevMap::try_from(gen_map_mut(&mut ebpf, GEN_OUT)?)
            .map_err(|e| EbpfError::map(GEN_OUT, "opening as devmap", e))?;
        // Slot 0: out of `out`; slot 1: out of `loop_tx`, i.e. into `loop_rx` again.
        for (slot, ifindex) in [(0, out_ifindex), (1, seed_ifindex)] {
            targets.set(slot, ifindex, None, 0).map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(e) => EbpfError::map(GEN_OUT, "writing", e),
                // No program is chained, so the kernel's support for chaining is not in question.
                other => EbpfError::TestRunInput(format!("map `{GEN_OUT}`: {other}")),
            })?;
        }
        attach_native(&mut ebpf, GEN_PROGRAM, loop_rx)?;
        let seed_socket = sys::packet_socket()
            .map_err(|source| EbpfError::syscall("opening the generator's packet socket", source))?;
        Ok(XdpTrafficGen { ebpf, frames: 0, seed_ifindex, seed_socket, running: false })
    }

    /// Prepares the frames to send, round-robin from the first: 1 to [`GEN_MAX_FRAMES`] of
    /// exactly [`GEN_FRAME_LEN`] bytes each. Not while a run is on.
    pub fn set_frames(&mut self, frames: &[[u8; GEN_FRAME_LEN]]) -> Result<(), EbpfError> {
        if frames.is_empty() || frames.len() > GEN_MAX_FRAMES {
            return Err(EbpfError::TestRunInput(format!(
                "{} frames; the generator takes 1 to {GEN_MAX_FRAMES}",
                frames.len()
            )));
        }
        if self.running {
            return Err(EbpfError::TestRunInput("frames changed during a run: stop it first".to_owned()));
        }
        let mut array: Array<_, [u8; GEN_FRAME_LEN]> = Array::try_from(gen_map_mut(&mut self.ebpf, GEN_FRAMES)?)
            .map_err(|e| EbpfError::map(GEN_FRAMES, "opening as array", e))?;
        for (i, frame) in (0u32..).zip(frames) {
            array.set(i, frame, 0).map_err(|e| EbpfError::map(GEN_FRAMES, "writing", e))?;
        }
        // At most GEN_MAX_FRAMES (checked above).
        self.frames = frames.len() as u32;
        Ok(())
    }

    fn state(&self) -> Result<GenState, EbpfError> {
        let map = self.ebpf.map(GEN_STATE).ok_or(missing_map(GEN_STATE))?;
        let array: Array<_, GenState> =
            Array::try_from(map).map_err(|e| EbpfError::map(GEN_STATE, "opening as array", e))?;
        array.get(&0, 0).map_err(|e| EbpfError::map(GEN_STATE, "reading", e))
    }

    /// Starts a run that sends at most `limit` frames out of `out`, with `seeds` frames
    /// circulating (1 to [`GEN_MAX_SEEDS`]: more in flight keeps the loop busier, up to what its
    /// ring holds), sent now from `loop_tx` by the packet socket `attach` opened. The run then
    /// goes on by itself, in the kernel, until `limit` or [`stop`](Self::stop). A circulating
    /// frame whose copy the kernel cannot allocate is lost with it (the run slows, or with one
    /// seed ends early), as is one that finds the loop's ring full: `sent` counts what the
    /// program redirected, which the interfaces' counters may show fewer of.
    pub fn start(&mut self, limit: u64, seeds: u32) -> Result<(), EbpfError> {
        let invalid = |msg: String| Err(EbpfError::TestRunInput(msg));
        if self.frames == 0 {
            return invalid("no frames prepared (XdpTrafficGen::set_frames)".to_owned());
        }
        if limit == 0 {
            return invalid("a run of 0 frames".to_owned());
        }
        if seeds == 0 || seeds > GEN_MAX_SEEDS {
            return invalid(format!("{seeds} seed frames; the loop takes 1 to {GEN_MAX_SEEDS}"));
        }
        if self.running {
            self.stop()?;
        }
        // The loop is empty (stopped, or never started): the program's state can be reset.
        set_first(&mut self.ebpf, GEN_STATE, GenState::default())?;
        set_first(&mut self.ebpf, GEN_CTL, GenCtl { limit, frames: self.frames, pad: 0 })?;
        self.running = true;
        let seeded = sys::send_raw_frames(self.seed_socket.as_fd(), self.seed_ifindex, &[0u8; GEN_FRAME_LEN], seeds);
        if let Err(source) = seeded {
            // The seeds already sent would circulate until the limit: end the run.
            let _ = self.stop();
            return Err(EbpfError::syscall("sending the generator's seed frames", source));
        }
        Ok(())
    }

    /// Frames sent so far in the current (or last) run.
    pub fn sent(&self) -> Result<u64, EbpfError> {
        Ok(self.state()?.sent)
    }

    /// Ends the run (every frame that comes round is dropped), gives the loop [`GEN_DRAIN`] to empty
    /// (a loop starved of CPU for longer keeps frames that join the next run: more in flight, the
    /// same limit) and returns the frames the run sent.
    pub fn stop(&mut self) -> Result<u64, EbpfError> {
        set_first(&mut self.ebpf, GEN_CTL, GenCtl { limit: 0, frames: self.frames, pad: 0 })?;
        std::thread::sleep(GEN_DRAIN);
        self.running = false;
        self.sent()
    }
}

/// A map of the benchmark object, `xdp_gen`'s (the sink's and the forwarder's too).
fn gen_map_mut<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut aya::maps::Map, EbpfError> {
    ebpf.map_mut(name).ok_or(missing_map(name))
}

fn missing_map(name: &'static str) -> EbpfError {
    EbpfError::MissingFromObject { object: GEN_OBJECT, what: "map", name }
}

/// Writes `value` as the one entry of the benchmark object's array `name`.
fn set_first<T: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, value: T) -> Result<(), EbpfError> {
    let mut array: Array<_, T> =
        Array::try_from(gen_map_mut(ebpf, name)?).map_err(|e| EbpfError::map(name, "opening as array", e))?;
    array.set(0, value, 0).map_err(|e| EbpfError::map(name, "writing", e))
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

/// Loads program `name` of the generator's object and attaches it in native mode to `ifname`.
fn attach_native(ebpf: &mut Ebpf, name: &'static str, ifname: &str) -> Result<(), EbpfError> {
    let program =
        ebpf.program_mut(name).ok_or(EbpfError::MissingFromObject { object: GEN_OBJECT, what: "program", name })?;
    let xdp: &mut Xdp = program.try_into().map_err(|e| EbpfError::program(name, "using as XDP", e))?;
    xdp.load().map_err(|e| EbpfError::program(name, "loading", e))?;
    xdp.attach(ifname, XdpMode::Driver).map_err(|e| EbpfError::program(name, "attaching", e))?;
    Ok(())
}

impl XdpSink {
    /// Loads `xdp_sink` and attaches it in native mode to `ifname`, which is resolved in the
    /// calling thread's network namespace (enter it with `setns` first). The value may then move
    /// to any thread.
    pub fn attach(ifname: &str) -> Result<XdpSink, EbpfError> {
        let mut ebpf = EbpfLoader::new().load(objects::XDP_GEN).map_err(|e| EbpfError::load(GEN_OBJECT, e))?;
        attach_native(&mut ebpf, SINK_PROGRAM, ifname)?;
        Ok(XdpSink { ebpf })
    }

    /// Datagrams counted since the attach, summed over CPUs.
    pub fn received(&self) -> Result<u64, EbpfError> {
        let map = self.ebpf.map(SINK_COUNT).ok_or(missing_map(SINK_COUNT))?;
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
        set_first(&mut ebpf, FWD_CTL, FwdCtl { ifindex: to_ifindex, dmac, smac })?;
        attach_native(&mut ebpf, FWD_PROGRAM, ifname)?;
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

    /// A namespace with veth pairs `gen0` ↔ `sink0` and `gl0` ↔ `gl1` (the generator's loop), all
    /// up, deleted on drop.
    struct Throwaway(String);

    impl Throwaway {
        fn new(tag: &str) -> Throwaway {
            let ns = Throwaway(format!("frt-{tag}-{}", std::process::id()));
            ip(&["netns", "add", &ns.0]);
            // No IPv6 (router solicitations, MLD): the only frames on the pair are the test's.
            ip(&["netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ip(&["netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
            ip(&["-n", &ns.0, "link", "add", "gen0", "type", "veth", "peer", "name", "sink0"]);
            // The generator's loop: its program goes on gl1, seeds come from gl0.
            ip(&["-n", &ns.0, "link", "add", "gl0", "type", "veth", "peer", "name", "gl1"]);
            for dev in ["gen0", "sink0", "gl0", "gl1"] {
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

    /// Runs the generator in `ns` (loop `gl1` <- `gl0`, out of `gen0`) for one run of `limit`
    /// frames with `seeds` in flight, and returns what it says it sent once it reached the limit
    /// (bounded wait), after which it is stopped.
    fn run_to_limit(gen: &mut XdpTrafficGen, limit: u64, seeds: u32) -> u64 {
        gen.start(limit, seeds).expect("starting a run");
        for _ in 0..250 {
            if gen.sent().expect("reading the count") >= limit {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        gen.stop().expect("stopping the run")
    }

    /// Waits (bounded) until `count` reaches `want`, then returns it (receive processing may end
    /// just after the generator does).
    fn settled(want: u64, count: impl Fn() -> u64) -> u64 {
        let mut got = count();
        for _ in 0..50 {
            if got >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            got = count();
        }
        got
    }

    #[test]
    fn the_loop_sends_exactly_limit_frames_per_run_and_nothing_after_it() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("gen");
        let dst = ns.sink0_mac();
        let rx = || ns.link_stats("sink0")["rx"]["packets"].as_u64().expect("rx packets");
        let before = rx();
        const N: u64 = 1000;
        let (first, second, after_stop) = ns.inside(|| {
            let mut gen = XdpTrafficGen::attach("gl1", "gl0", "gen0").expect("attaching xdp_gen");
            gen.set_frames(&[frame(dst, 1), frame(dst, 2), frame(dst, 3)]).expect("preparing frames");
            // Two runs with different numbers of frames in flight: the limit holds for each.
            let first = run_to_limit(&mut gen, N, 2);
            let second = run_to_limit(&mut gen, N / 2, 16);
            // Stopped: nothing more goes out, whatever was still circulating.
            std::thread::sleep(std::time::Duration::from_millis(100));
            (first, second, gen.sent().expect("reading the count"))
        });
        assert_eq!((first, second, after_stop), (N, N / 2, N / 2));
        let received = settled(N + N / 2, || rx() - before);
        assert_eq!(received, N + N / 2, "sink0 stats: {}", ns.link_stats("sink0"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(rx() - before, N + N / 2, "the loop sent nothing after its runs");
    }

    #[test]
    fn a_stopped_run_ends_before_its_limit() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("stop");
        let dst = ns.sink0_mac();
        let rx = || ns.link_stats("sink0")["rx"]["packets"].as_u64().expect("rx packets");
        let (sent, later) = ns.inside(|| {
            let mut gen = XdpTrafficGen::attach("gl1", "gl0", "gen0").expect("attaching xdp_gen");
            gen.set_frames(&[frame(dst, 7)]).expect("preparing frames");
            gen.start(u64::MAX, 4).expect("starting an unlimited run");
            std::thread::sleep(std::time::Duration::from_millis(50));
            let sent = gen.stop().expect("stopping");
            std::thread::sleep(std::time::Duration::from_millis(100));
            (sent, gen.sent().expect("reading the count"))
        });
        assert!(sent > 0, "the run sent frames before it was stopped");
        assert_eq!(later, sent, "nothing is sent once stopped");
        let received = settled(sent, rx);
        // The receiver's ring may have dropped some (an unlimited run outpaces it); never more.
        assert!(received <= sent && received > 0, "received {received} of {sent}");
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
        const N: u64 = 5000;
        let (sink, sent) = ns.inside(|| {
            let sink = XdpSink::attach("sink0").expect("attaching xdp_sink");
            let mut gen = XdpTrafficGen::attach("gl1", "gl0", "gen0").expect("attaching xdp_gen");
            gen.set_frames(&[udp]).expect("preparing frames");
            (sink, run_to_limit(&mut gen, N, 8))
        });
        assert_eq!(sent, N);
        let received = settled(N, || sink.received().expect("reading the sink's counter"));
        assert_eq!(received, N, "sink0 stats: {}", ns.link_stats("sink0"));
    }

    #[test]
    fn the_generator_refuses_no_frames_no_limit_bad_seeds_and_missing_interfaces() {
        if !ferrule_tests::privileged() {
            return;
        }
        let ns = Throwaway::new("refuse");
        ns.inside(|| {
            assert!(matches!(XdpTrafficGen::attach("gl1", "gl0", "nope0"), Err(EbpfError::TestRunInput(_))));
            let mut gen = XdpTrafficGen::attach("gl1", "gl0", "gen0").expect("attaching xdp_gen");
            assert!(matches!(gen.start(1, 1), Err(EbpfError::TestRunInput(_))), "no frames yet");
            assert!(matches!(gen.set_frames(&[]), Err(EbpfError::TestRunInput(_))));
            gen.set_frames(&[frame([0x02, 0, 0, 0, 0, 2], 0)]).expect("one frame");
            assert!(matches!(gen.start(0, 1), Err(EbpfError::TestRunInput(_))));
            assert!(matches!(gen.start(1, 0), Err(EbpfError::TestRunInput(_))));
            assert!(matches!(gen.start(1, GEN_MAX_SEEDS + 1), Err(EbpfError::TestRunInput(_))));
        });
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
