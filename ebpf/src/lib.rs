//! Ferrule's eBPF datapath: the C programs (`ebpf/bpf/*.bpf.c`, compiled by `build.rs` and
//! embedded here), the Rust mirrors of their map structs, loading and pinning with aya, and a
//! `BPF_PROG_TEST_RUN` wrapper for datapath tests. This is the only crate allowed `unsafe`; it
//! holds no policy: what to attach where comes from the caller.

pub mod abi;
pub mod btf;
mod error;
mod lb;
mod loader;
pub mod sockopt;
mod sys;
mod test_run;

pub use error::EbpfError;
pub use lb::{
    BackendEntry, Decap, DecapEvents, DecapLink, L4Proto, LbCounters, LbDrops, LbEvents, LbMaps, LbMode, ServiceKey,
    ServiceUpsert, UpsertStop, MAX_TABLE_SIZE,
};
pub use loader::{
    ensure_bpffs, node_pin_dir, plan_uplinks, AttachMode, Datapath, InterfaceStats, LinkHealth, PinnedUplink, UplinkOp,
    UplinkStatus, DEFAULT_BPFFS,
};
pub use test_run::{
    test_run_skb, test_run_xdp, TestRunOutput, XdpForward, XdpSink, XdpTrafficGen, GEN_FRAME_LEN, GEN_MAX_FRAMES,
    GEN_MAX_SEEDS, TC_ACT_OK, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

/// The compiled BPF objects, 8-byte aligned as aya requires.
pub mod objects {
    include!(concat!(env!("OUT_DIR"), "/objects.rs"));
}
