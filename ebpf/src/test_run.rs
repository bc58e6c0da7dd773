//! Runs a loaded XDP program on a packet with `BPF_PROG_TEST_RUN` (no interface, no traffic) and
//! returns the verdict and the packet the program left. Tests use it as "packet in → packet out";
//! it must not attach anything.

use std::os::fd::BorrowedFd;

use crate::{sys, EbpfError};

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
