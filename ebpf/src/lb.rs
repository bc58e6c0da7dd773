//! The L4 load balancer's maps as a small typed API for the control plane (services, backends,
//! Maglev tables, node addresses, counters), and the DSR decapsulation program for backends
//! ([`Decap`]). It translates between Rust types and the ABI structs; it holds no policy (which
//! backends a table holds comes from the caller, `ferrule-xdp-lb`).
//!
//! Atomicity: a service's Maglev table is a separate inner map, filled completely and then
//! swapped into `fr_lb_tables` in one map update, so a packet sees the old table or the new one,
//! never a mix. Many services go in with one `BPF_MAP_UPDATE_BATCH` per map
//! ([`LbMaps::upsert_services`]): every write to a map of maps makes the kernel wait for the
//! programs running on all CPUs (an RCU grace period, ~16 ms here), once per element with
//! `BPF_MAP_UPDATE_ELEM` but once per batch with `BPF_MAP_UPDATE_BATCH`, which is what makes
//! 100,000 services take seconds instead of half an hour.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{links::FdLink, tc::TcAttachType, SchedClassifier},
    Ebpf, EbpfLoader,
};

use crate::{
    abi::{self, DecapAddr, LbBackend, LbConfig, LbCountersRaw, LbNatPorts, LbService, LbServiceKey, LbTraffic},
    error::chain_to_string,
    loader::{check_pinned_maps, ensure_bpffs, node_pin_dir, Datapath, DEFAULT_BPFFS},
    objects, sys, EbpfError,
};

pub(crate) const SERVICES: &str = "fr_lb_services";
const TABLES: &str = "fr_lb_tables";
const BACKENDS: &str = "fr_lb_backends";
const CONFIG: &str = "fr_lb_config";
const NAT_PORTS: &str = "lb_nat_ports";
const GENERATION: &str = "fr_lb_gen";
/// The services' VIPs as a bitmap (`fr_lb_vips` in ferrule_abi.h).
const VIPS: &str = "fr_lb_vips";
const SERVICE_STATS: &str = "fr_lb_service_stats";
const BACKEND_STATS: &str = "fr_lb_backend_stats";
/// Packets and bytes of the ids below `abi::LB_TRAFFIC_ARR_SIZE` (the rest of their counters
/// are in the `_STATS` hashes, and so are all counters of higher ids).
const SERVICE_TRAFFIC: &str = "fr_lb_service_traffic";
const BACKEND_TRAFFIC: &str = "fr_lb_backend_traffic";
/// One service's or one backend's counters: the per-CPU hash and array that hold them.
#[derive(Clone, Copy)]
struct CounterMaps {
    stats: &'static str,
    traffic: &'static str,
}
const SERVICE_COUNTERS: CounterMaps = CounterMaps { stats: SERVICE_STATS, traffic: SERVICE_TRAFFIC };
const BACKEND_COUNTERS: CounterMaps = CounterMaps { stats: BACKEND_STATS, traffic: BACKEND_TRAFFIC };
const EVENTS: &str = "fr_lb_events";
const DECAP_OBJECT: &str = "tc_decap";
const DECAP_PROGRAM: &str = "tc_decap";
const DECAP_ADDRS: &str = "fr_decap_addrs";
const DECAP_EVENTS: &str = "fr_decap_events";
/// Link pins of `tc_decap` are `tc_decap:ingress:<ifname>` (dots stored as `:`).
const DECAP_LINK_PREFIX: &str = "tc_decap:ingress:";
/// `BPF_MAP_TYPE_ARRAY` and `BPF_F_INNER_MAP` from include/uapi/linux/bpf.h.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Far above any Maglev table worth having (65537 is the usual size); bounds kernel memory.
pub const MAX_TABLE_SIZE: usize = 1 << 20;
/// Bounds on how many new Maglev tables a batched upsert holds open (one fd each) and writes in
/// one batch; within them, a quarter of the process's open-files limit (see `tables_per_batch`).
const MIN_TABLES_PER_BATCH: u64 = 64;
const MAX_TABLES_PER_BATCH: u64 = 4096;

/// The transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

/// How a service's packets reach its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbMode {
    /// Encapsulated (IPIP, IP6IP6, 4in6, 6in4) from the node's address; the backend, running
    /// [`Decap`], answers the client directly.
    Dsr,
    /// DNAT to the backend's address and port, SNAT to the node's address; replies come back
    /// through the node and are translated back.
    Nat,
}

impl LbMode {
    const fn raw(self) -> u8 {
        match self {
            Self::Dsr => abi::LB_MODE_DSR,
            Self::Nat => abi::LB_MODE_NAT,
        }
    }

    const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            abi::LB_MODE_DSR => Some(Self::Dsr),
            abi::LB_MODE_NAT => Some(Self::Nat),
            _ => None,
        }
    }
}

/// What packets are matched on: destination address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: L4Proto,
}

/// One service of a batched upsert ([`LbMaps::upsert_services`]): what
/// [`LbMaps::upsert_service`] takes for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceUpsert<'a> {
    pub key: ServiceKey,
    /// 1..=131072, unique per service.
    pub id: u32,
    pub mode: LbMode,
    /// Backend ids; empty = no backend (new flows drop, established ones keep theirs).
    pub table: &'a [u32],
}

/// Why a batched service upsert stopped, and at which entry when one entry is to blame: a bad
/// entry (nothing of the batch was written) or the one the kernel refused (see
/// [`LbMaps::upsert_services`] for what went in before it). `None`: a failure of the maps as a
/// whole.
#[derive(Debug)]
pub struct UpsertStop {
    pub at: Option<usize>,
    pub error: EbpfError,
}

/// A failure of the maps as a whole: no entry to blame.
impl From<EbpfError> for UpsertStop {
    fn from(error: EbpfError) -> UpsertStop {
        UpsertStop { at: None, error }
    }
}

/// Where one chunk of a batched upsert stopped: how many of its services went in, the entry (of
/// the chunk) to blame if one is, and why.
struct ChunkStop {
    installed: usize,
    at: Option<usize>,
    error: EbpfError,
}

impl From<EbpfError> for ChunkStop {
    fn from(error: EbpfError) -> ChunkStop {
        ChunkStop { installed: 0, at: None, error }
    }
}

/// A backend under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendEntry {
    pub address: IpAddr,
    /// Destination port after DNAT in NAT mode; DSR keeps the client's destination port.
    pub port: u16,
    /// Failed its health checks (`FR_LB_BE_DOWN` in ferrule_abi.h): UDP flows on it start over.
    pub down: bool,
}

/// Packets dropped for a service, by reason (`enum fr_lb_drop`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LbDrops {
    /// The service's table is empty (no healthy backend) or names no existing backend.
    pub no_backend: u64,
    /// No node address of the family the tunnel or SNAT needs: call `set_node_addresses`.
    pub no_node_address: u64,
    /// No headroom to add the outer header (driver without XDP headroom).
    pub encap_failed: u64,
    /// NAT: no free SNAT port for a new flow.
    pub nat_ports: u64,
    /// NAT between an IPv4 VIP and an IPv6 backend or the reverse (not supported).
    pub nat_family: u64,
}

/// Counters of one service or one backend, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LbCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Conntrack misses that chose a backend.
    pub new_flows: u64,
    pub drops: LbDrops,
}

/// Node-wide load-balancer events (`enum fr_lb_event`), summed over CPUs. All were passed to
/// the stack except the `*_forwarded` / `nat_reply` ones, which were sent on, and `too_big`,
/// answered with an ICMP error to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LbEvents {
    pub malformed: u64,
    pub ext_hdr_limit: u64,
    pub frag_unknown: u64,
    pub fib_pass: u64,
    pub mtu_pass: u64,
    pub nat_unhandled: u64,
    pub icmp_forwarded: u64,
    pub icmp_no_flow: u64,
    pub frag_forwarded: u64,
    pub nat_reply: u64,
    pub vlan_redirect: u64,
    pub too_big: u64,
}

/// Decapsulation counters of [`Decap`], summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecapEvents {
    pub decapsulated: u64,
    /// Tunnel packets to an address not allowed with [`Decap::allow_address`], left alone.
    pub not_local: u64,
    pub failed: u64,
    /// Tunnel packets whose outer header the stack would drop (IP version, IPv4 header
    /// checksum, lengths beyond the packet), left alone for it to drop.
    pub malformed: u64,
}

/// An interface `tc_decap` has a pinned link on ([`Decap::links`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecapLink {
    pub interface: String,
    /// The link is attached to the interface of that name now.
    pub attached: bool,
}

fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, abi::FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), abi::FAMILY_IPV6),
    }
}

fn addr_from(raw: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        abi::FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        abi::FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

impl ServiceKey {
    fn raw(&self) -> LbServiceKey {
        let (vip, family) = addr16(self.vip);
        // Network byte order in memory, as on the wire.
        LbServiceKey { vip, port: self.port.to_be(), proto: self.proto.number(), family }
    }

    fn from_raw(raw: &LbServiceKey) -> Option<Self> {
        Some(ServiceKey {
            vip: addr_from(&raw.vip, raw.family)?,
            port: u16::from_be(raw.port),
            proto: L4Proto::from_number(raw.proto)?,
        })
    }
}

fn sum_counters(per_cpu: &[LbCountersRaw]) -> LbCounters {
    let mut c = LbCounters::default();
    for v in per_cpu {
        c.packets = c.packets.wrapping_add(v.packets);
        c.bytes = c.bytes.wrapping_add(v.bytes);
        c.new_flows = c.new_flows.wrapping_add(v.new_flows);
        let d = &mut c.drops;
        for (total, slot) in [
            (&mut d.no_backend, abi::LB_DROP_NO_BACKEND),
            (&mut d.no_node_address, abi::LB_DROP_NO_NODE_ADDRESS),
            (&mut d.encap_failed, abi::LB_DROP_ENCAP_FAILED),
            (&mut d.nat_ports, abi::LB_DROP_NAT_PORTS),
            (&mut d.nat_family, abi::LB_DROP_NAT_FAMILY),
        ] {
            *total = total.wrapping_add(v.drops[slot]);
        }
    }
    c
}

fn input(msg: impl Into<String>) -> EbpfError {
    EbpfError::LbInput(msg.into())
}

/// Typed access to the load balancer's pinned maps of a loaded [`Datapath`].
pub struct LbMaps<'a> {
    ebpf: &'a mut Ebpf,
    vips: &'a mut VipCounts,
}

/// How many installed services have a VIP in each slot of `fr_lb_vips` (slots with none left
/// out): what decides a slot's bit. Counted from `fr_lb_services` when the program is loaded
/// ([`recount_vips`]) and kept by [`LbMaps`] since, the only writer of the maps.
#[derive(Debug, Default)]
pub(crate) struct VipCounts(StdHashMap<u32, u32>);

impl Datapath {
    /// The load balancer's maps (shared by every program instance through their pins).
    pub fn lb(&mut self) -> LbMaps<'_> {
        let (ebpf, vips) = self.lb_parts();
        LbMaps { ebpf, vips }
    }

    /// Node-wide LB events, without needing `&mut` (see [`LbMaps::events`]).
    pub fn lb_events(&self) -> Result<LbEvents, EbpfError> {
        read_events(self.ebpf())
    }
}

fn map<'e>(ebpf: &'e Ebpf, name: &'static str) -> Result<&'e Map, EbpfError> {
    ebpf.map(name).ok_or(EbpfError::MissingFromObject { object: "xdp_lb", what: "map", name })
}

/// Writes the private `lb_nat_ports` (see [`LbMaps::set_nat_ports`]); the loader's default first.
pub(crate) fn set_nat_ports(ebpf: &mut Ebpf, ports: std::ops::RangeInclusive<u16>) -> Result<(), EbpfError> {
    let (first, last) = (u32::from(*ports.start()), u32::from(*ports.end()));
    if first == 0 || first > last {
        return Err(input(format!("SNAT ports {first}-{last}: give a non-empty range of ports above 0")));
    }
    let mut array: Array<_, LbNatPorts> =
        Array::try_from(map_mut(ebpf, NAT_PORTS)?).map_err(|e| EbpfError::map(NAT_PORTS, "opening as array", e))?;
    array.set(0, LbNatPorts { first, count: last - first + 1 }, 0).map_err(|e| EbpfError::map(NAT_PORTS, "writing", e))
}

fn map_mut<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Map, EbpfError> {
    ebpf.map_mut(name).ok_or(EbpfError::MissingFromObject { object: "xdp_lb", what: "map", name })
}

fn per_cpu_u64_sum(ebpf: &Ebpf, name: &'static str, index: u32) -> Result<u64, EbpfError> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(|e| EbpfError::map(name, "opening as per-CPU array", e))?;
    let values = array.get(&index, 0).map_err(|e| EbpfError::map(name, "reading", e))?;
    Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
}

fn read_events(ebpf: &Ebpf) -> Result<LbEvents, EbpfError> {
    let ev = |i| per_cpu_u64_sum(ebpf, EVENTS, i);
    Ok(LbEvents {
        malformed: ev(abi::LB_EV_MALFORMED)?,
        ext_hdr_limit: ev(abi::LB_EV_EXT_HDR_LIMIT)?,
        frag_unknown: ev(abi::LB_EV_FRAG_UNKNOWN)?,
        fib_pass: ev(abi::LB_EV_FIB_PASS)?,
        mtu_pass: ev(abi::LB_EV_MTU_PASS)?,
        nat_unhandled: ev(abi::LB_EV_NAT_UNHANDLED)?,
        icmp_forwarded: ev(abi::LB_EV_ICMP_FORWARDED)?,
        icmp_no_flow: ev(abi::LB_EV_ICMP_NO_FLOW)?,
        frag_forwarded: ev(abi::LB_EV_FRAG_FORWARDED)?,
        nat_reply: ev(abi::LB_EV_NAT_REPLY)?,
        vlan_redirect: ev(abi::LB_EV_VLAN_REDIRECT)?,
        too_big: ev(abi::LB_EV_TOO_BIG)?,
    })
}

/// `Ok(None)` for a missing key, so removals are idempotent.
fn absent_ok<T>(r: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

impl LbMaps<'_> {
    /// The node's addresses: outer source of DSR tunnels and SNAT source of NAT mode. A family
    /// left `None` makes services that need it drop (counted as `no_node_address`).
    pub fn set_node_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<(), EbpfError> {
        let result = self.set_node_addresses_unbumped(v4, v6);
        self.bumped(result)
    }

    fn set_node_addresses_unbumped(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<(), EbpfError> {
        let mut cfg = LbConfig::default();
        if let Some(v4) = v4 {
            cfg.node_v4 = v4.octets();
            cfg.flags |= abi::LB_CFG_HAVE_V4;
        }
        if let Some(v6) = v6 {
            cfg.node_v6 = v6.octets();
            cfg.flags |= abi::LB_CFG_HAVE_V6;
        }
        let mut array: Array<_, LbConfig> =
            Array::try_from(map_mut(self.ebpf, CONFIG)?).map_err(|e| EbpfError::map(CONFIG, "opening as array", e))?;
        array.set(0, cfg, 0).map_err(|e| EbpfError::map(CONFIG, "writing", e))
    }

    /// The SNAT ports NAT mode takes (`first..=last`): new flows take ports from them, and only
    /// packets to them can be replies. A flow whose port is left out moves to one inside on its
    /// next packet (which its backend sees as another connection); replies to ports left out are
    /// no longer translated.
    pub fn set_nat_ports(&mut self, ports: std::ops::RangeInclusive<u16>) -> Result<(), EbpfError> {
        let result = set_nat_ports(self.ebpf, ports);
        self.bumped(result)
    }

    /// Adds one to the maps' generation (`fr_lb_gen`) after a change, written or attempted: the
    /// per-CPU flow cache of the fast path then stops using what it remembered, so every packet
    /// sees the change as if it had no cache. Returns `result`, or the bump's error if the change
    /// itself succeeded.
    fn bumped<T, E: From<EbpfError>>(&mut self, result: Result<T, E>) -> Result<T, E> {
        let bump = self.bump_generation();
        let value = result?;
        bump?;
        Ok(value)
    }

    fn bump_generation(&mut self) -> Result<(), EbpfError> {
        let mut array: Array<_, u64> = Array::try_from(map_mut(self.ebpf, GENERATION)?)
            .map_err(|e| EbpfError::map(GENERATION, "opening as array", e))?;
        let now = array.get(&0, 0).map_err(|e| EbpfError::map(GENERATION, "reading", e))?;
        array.set(0, now.wrapping_add(1), 0).map_err(|e| EbpfError::map(GENERATION, "writing", e))
    }

    /// The maps' generation: how many changes [`LbMaps`] made since the maps were created.
    pub fn generation(&self) -> Result<u64, EbpfError> {
        let array: Array<_, u64> = Array::try_from(map(self.ebpf, GENERATION)?)
            .map_err(|e| EbpfError::map(GENERATION, "opening as array", e))?;
        array.get(&0, 0).map_err(|e| EbpfError::map(GENERATION, "reading", e))
    }

    fn check_backend_id(id: u32) -> Result<(), EbpfError> {
        if id == 0 || id >= abi::LB_MAX_BACKENDS {
            return Err(input(format!(
                "backend id {id} is out of range: ids are 1..={} (0 means none)",
                abi::LB_MAX_BACKENDS - 1
            )));
        }
        Ok(())
    }

    /// Creates or re-points backend `id` (1..=65535). Flows already on it follow the change.
    pub fn upsert_backend(&mut self, id: u32, backend: &BackendEntry) -> Result<(), EbpfError> {
        let result = self.upsert_backend_unbumped(id, backend);
        self.bumped(result)
    }

    fn upsert_backend_unbumped(&mut self, id: u32, backend: &BackendEntry) -> Result<(), EbpfError> {
        Self::check_backend_id(id)?;
        let (addr, family) = addr16(backend.address);
        let flags = if backend.down { crate::abi::LB_BE_DOWN } else { 0 };
        let value = LbBackend { addr, port: backend.port.to_be(), family, flags };
        self.backends_array()?.set(id, value, 0).map_err(|e| EbpfError::map(BACKENDS, "writing", e))
    }

    /// Removes backend `id`: flows on it are re-balanced through their service's table, and tables
    /// still naming it drop what hashes there (`no_backend`). Its counters are cleared.
    pub fn remove_backend(&mut self, id: u32) -> Result<(), EbpfError> {
        let result = self.remove_backend_unbumped(id);
        self.bumped(result)
    }

    fn remove_backend_unbumped(&mut self, id: u32) -> Result<(), EbpfError> {
        Self::check_backend_id(id)?;
        self.backends_array()?.set(id, LbBackend::default(), 0).map_err(|e| EbpfError::map(BACKENDS, "clearing", e))?;
        remove_counters(self.ebpf, BACKEND_COUNTERS, id)
    }

    fn backends_array(&mut self) -> Result<Array<&mut MapData, LbBackend>, EbpfError> {
        Array::try_from(map_mut(self.ebpf, BACKENDS)?).map_err(|e| EbpfError::map(BACKENDS, "opening as array", e))
    }

    /// Every backend in the map (for adopting state after a restart).
    pub fn backends(&self) -> Result<Vec<(u32, BackendEntry)>, EbpfError> {
        let array: Array<_, LbBackend> =
            Array::try_from(map(self.ebpf, BACKENDS)?).map_err(|e| EbpfError::map(BACKENDS, "opening as array", e))?;
        let mut out = Vec::new();
        for id in 1..array.len() {
            let b = array.get(&id, 0).map_err(|e| EbpfError::map(BACKENDS, "reading", e))?;
            if let Some(address) = addr_from(&b.addr, b.family) {
                let down = b.flags & crate::abi::LB_BE_DOWN != 0;
                out.push((id, BackendEntry { address, port: u16::from_be(b.port), down }));
            }
        }
        Ok(out)
    }

    /// Creates or updates a service: its id (1.., unique per service), mode and whole Maglev
    /// `table` of backend ids (its length, usually a prime such as 65537, is the table size). The
    /// table is swapped in atomically; an empty table makes new flows drop (`no_backend`) while
    /// established ones keep their backend. Backends must be upserted first. For more than a few
    /// services use [`LbMaps::upsert_services`]: each call here waits ~16 ms in the kernel.
    pub fn upsert_service(&mut self, key: &ServiceKey, id: u32, mode: LbMode, table: &[u32]) -> Result<(), EbpfError> {
        self.upsert_services(&[ServiceUpsert { key: *key, id, mode, table }])
    }

    /// Creates or updates many services, each exactly as [`LbMaps::upsert_service`] would (its
    /// table complete before it is swapped in, and in place before the service's key points at
    /// it), with one `BPF_MAP_UPDATE_BATCH` per map for up to a few thousand services at a time
    /// instead of one update (and one ~16 ms kernel wait) per service.
    ///
    /// Failures are defined:
    /// - The whole batch is checked first (ids, table sizes, a key or id given twice); a bad
    ///   entry rejects the batch with an error naming it, and nothing is written.
    /// - If the kernel refuses a write (out of memory, say), what was written before stays: those
    ///   services are installed, each complete with its table; the error names the failing
    ///   service and says how many went in. A refused table leaves its service and the rest of
    ///   the batch as they were. A refused service entry (the services map full, say) comes
    ///   after its chunk's tables are in: a service already installed then forwards with its new
    ///   table under its old mode, one not installed yet is still not looked up. A service is
    ///   never left pointing at a table that was not written, and services not in the batch are
    ///   never touched. (Applying the batch again finishes it.)
    pub fn upsert_services(&mut self, services: &[ServiceUpsert<'_>]) -> Result<(), EbpfError> {
        self.upsert_services_blaming(services).map_err(|stop| stop.error)
    }

    /// [`LbMaps::upsert_services`], saying on a failure which entry of `services` it stopped at
    /// when one entry is to blame (a bad entry, or the one the kernel refused), so that a caller
    /// can write the others without it.
    pub fn upsert_services_blaming(&mut self, services: &[ServiceUpsert<'_>]) -> Result<(), UpsertStop> {
        let result = self.upsert_services_unbumped(services);
        self.bumped(result)
    }

    fn upsert_services_unbumped(&mut self, services: &[ServiceUpsert<'_>]) -> Result<(), UpsertStop> {
        check_batch(services)?;
        let per_batch = tables_per_batch();
        let mut installed = 0;
        for (n, chunk) in services.chunks(per_batch).enumerate() {
            let done = self.upsert_chunk(chunk);
            installed += done.as_ref().map_or_else(|stop| stop.installed, |()| chunk.len());
            if let Err(stop) = done {
                let at = stop.at.map(|i| n * per_batch + i);
                return Err(UpsertStop { at, error: partial(installed, services.len(), stop.error) });
            }
        }
        Ok(())
    }

    /// Installs `chunk`: `Ok` with all of it, or how many went in, the entry it stopped at (when
    /// one is to blame) and why the rest did not.
    fn upsert_chunk(&mut self, chunk: &[ServiceUpsert<'_>]) -> Result<(), ChunkStop> {
        let blame = |i: usize| move |error| ChunkStop { installed: 0, at: Some(i), error };
        let (empty, full): (Vec<usize>, Vec<usize>) = (0..chunk.len()).partition(|&i| chunk[i].table.is_empty());
        // A service without backends loses its table first, as in upsert_service.
        for &i in &empty {
            let mut tables = self.tables()?;
            absent_ok(tables.remove(&chunk[i].id)).map_err(|e| blame(i)(EbpfError::map(TABLES, "removing", e)))?;
        }
        // Every table is built and filled before any of them is visible to a packet.
        let mut inner = Vec::with_capacity(full.len());
        for &i in &full {
            inner.push(new_table(chunk[i].table).map_err(blame(i))?);
        }
        let ids: Vec<u32> = full.iter().map(|&i| chunk[i].id).collect();
        let fds: Vec<u32> = inner.iter().map(|m| m.fd().as_fd().as_raw_fd() as u32).collect();
        let tables_fd = map_fd(self.ebpf, TABLES)?;
        let tabled = sys::map_update_batch(tables_fd, &ids, &fds);
        // Only services whose table is in place get their key written.
        let with_table = tabled.as_ref().map_or_else(|e| e.done, |()| full.len());
        let ready: Vec<usize> = empty.iter().chain(&full[..with_table]).copied().collect();
        let keys: Vec<LbServiceKey> = ready.iter().map(|&i| chunk[i].key.raw()).collect();
        let values: Vec<LbService> =
            ready.iter().map(|&i| LbService { id: chunk[i].id, mode: chunk[i].mode.raw(), flags: 0, pad: 0 }).collect();
        // New VIPs go into the bitmap before their service can be looked up.
        let new = new_keys(self.ebpf, &keys)?;
        let added = keys.iter().zip(&new).filter(|(_, n)| **n).map(|(k, _)| k);
        count_vips(self.ebpf, self.vips, added, 1)?;
        let services_fd = map_fd(self.ebpf, SERVICES)?;
        if let Err(e) = sys::map_update_batch(services_fd, &keys, &values) {
            // The new ones the kernel did not write are counted out again (if that fails too,
            // their bits may stay set for no service: packets there take the service lookup).
            let unwritten = keys.iter().zip(&new).skip(e.done).filter(|(_, n)| **n).map(|(k, _)| k);
            if let Err(undo) = count_vips(self.ebpf, self.vips, unwritten, -1) {
                tracing::warn!("counting unwritten services out of fr_lb_vips: {undo}");
            }
            let at = ready.get(e.done).copied();
            let what = at.map(|i| describe(&chunk[i])).unwrap_or_default();
            let error = batch_error("BPF_MAP_UPDATE_BATCH (fr_lb_services)", &what, e.error);
            return Err(ChunkStop { installed: e.done, at, error });
        }
        match tabled {
            Ok(()) => Ok(()),
            Err(e) => {
                let at = full.get(e.done).copied();
                let what = at.map(|i| describe(&chunk[i])).unwrap_or_default();
                let error = batch_error("BPF_MAP_UPDATE_BATCH (fr_lb_tables)", &what, e.error);
                Err(ChunkStop { installed: ready.len(), at, error })
            }
        }
    }

    fn tables(&mut self) -> Result<HashOfMaps<&mut MapData, u32, MapData>, EbpfError> {
        HashOfMaps::try_from(map_mut(self.ebpf, TABLES)?)
            .map_err(|e| EbpfError::map(TABLES, "opening as hash of maps", e))
    }

    /// Removes a service, its table and its counters; a missing service is not an error.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), EbpfError> {
        let result = self.remove_service_unbumped(key);
        self.bumped(result)
    }

    fn remove_service_unbumped(&mut self, key: &ServiceKey) -> Result<(), EbpfError> {
        let mut services: HashMap<_, LbServiceKey, LbService> = HashMap::try_from(map_mut(self.ebpf, SERVICES)?)
            .map_err(|e| EbpfError::map(SERVICES, "opening as hash", e))?;
        let Some(value) = absent_ok(services.get(&key.raw(), 0)).map_err(|e| EbpfError::map(SERVICES, "reading", e))?
        else {
            return Ok(());
        };
        // The key first: from then on no packet looks the table up.
        absent_ok(services.remove(&key.raw())).map_err(|e| EbpfError::map(SERVICES, "removing", e))?;
        count_vips(self.ebpf, self.vips, [&key.raw()], -1)?;
        absent_ok(self.tables()?.remove(&value.id)).map_err(|e| EbpfError::map(TABLES, "removing", e))?;
        remove_counters(self.ebpf, SERVICE_COUNTERS, value.id)
    }

    /// Removes many services with one kernel wait per batch of tables instead of one per service
    /// (the [`LbMaps::upsert_services`] counterpart). Keys not installed are skipped. All keys go
    /// first, so no packet looks up a table being removed; then the tables, in one batch.
    pub fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<(), EbpfError> {
        let result = self.remove_services_unbumped(keys);
        self.bumped(result)
    }

    fn remove_services_unbumped(&mut self, keys: &[ServiceKey]) -> Result<(), EbpfError> {
        let mut services: HashMap<_, LbServiceKey, LbService> = HashMap::try_from(map_mut(self.ebpf, SERVICES)?)
            .map_err(|e| EbpfError::map(SERVICES, "opening as hash", e))?;
        let mut ids = Vec::new();
        let mut removed = Vec::new();
        for key in keys {
            let Some(value) =
                absent_ok(services.get(&key.raw(), 0)).map_err(|e| EbpfError::map(SERVICES, "reading", e))?
            else {
                continue;
            };
            absent_ok(services.remove(&key.raw())).map_err(|e| EbpfError::map(SERVICES, "removing", e))?;
            ids.push(value.id);
            removed.push(key.raw());
        }
        count_vips(self.ebpf, self.vips, &removed, -1)?;
        // Only ids whose table exists: the kernel's batch delete stops at the first missing key.
        let mut with_table = Vec::new();
        {
            let tables = self.tables()?;
            for id in &ids {
                if absent_ok(tables.get(id, 0)).map_err(|e| EbpfError::map(TABLES, "reading", e))?.is_some() {
                    with_table.push(*id);
                }
            }
        }
        let tables_fd = map_fd(self.ebpf, TABLES)?;
        if let Err(e) = sys::map_delete_batch(tables_fd, &with_table) {
            let what = with_table.get(e.done).map(|id| format!("table of service {id}")).unwrap_or_default();
            return Err(batch_error("BPF_MAP_DELETE_BATCH (fr_lb_tables)", &what, e.error));
        }
        for id in ids {
            remove_counters(self.ebpf, SERVICE_COUNTERS, id)?;
        }
        Ok(())
    }

    /// The services in the map now, with their id and mode (for adopting state after a restart).
    pub fn services(&self) -> Result<Vec<(ServiceKey, u32, LbMode)>, EbpfError> {
        let services: HashMap<_, LbServiceKey, LbService> =
            HashMap::try_from(map(self.ebpf, SERVICES)?).map_err(|e| EbpfError::map(SERVICES, "opening as hash", e))?;
        let mut out = Vec::new();
        for entry in services.iter() {
            let (k, v) = entry.map_err(|e| EbpfError::map(SERVICES, "reading", e))?;
            if let (Some(key), Some(mode)) = (ServiceKey::from_raw(&k), LbMode::from_raw(v.mode)) {
                out.push((key, v.id, mode));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The Maglev table of service `id` as installed (empty when it has none).
    pub fn service_table(&self, id: u32) -> Result<Vec<u32>, EbpfError> {
        let tables: HashOfMaps<_, u32, MapData> = HashOfMaps::try_from(map(self.ebpf, TABLES)?)
            .map_err(|e| EbpfError::map(TABLES, "opening as hash of maps", e))?;
        let Some(inner) = absent_ok(tables.get(&id, 0)).map_err(|e| EbpfError::map(TABLES, "reading", e))? else {
            return Ok(Vec::new());
        };
        // Slot 0 (the length), then all slots in one syscall: adopting 100,000 tables after a
        // restart must not take millions of syscalls.
        let read = |count| {
            sys::array_values::<u32>(inner.fd().as_fd(), count)
                .map_err(|e| EbpfError::syscall("BPF_MAP_LOOKUP_BATCH (reading a Maglev table)", e))
        };
        let len = read(1)?[0];
        if len as usize > MAX_TABLE_SIZE {
            return Err(input(format!("the table of service id {id} claims {len} slots, more than can be installed")));
        }
        let mut slots = read(len.saturating_add(1))?;
        slots.remove(0);
        Ok(slots)
    }

    /// Counters of service `id` (zero when it has seen no packet).
    pub fn service_counters(&self, id: u32) -> Result<LbCounters, EbpfError> {
        read_counters(self.ebpf, SERVICE_COUNTERS, id)
    }

    /// Counters of backend `id` (zero when it has seen no packet).
    pub fn backend_counters(&self, id: u32) -> Result<LbCounters, EbpfError> {
        read_counters(self.ebpf, BACKEND_COUNTERS, id)
    }

    /// Node-wide events: packets passed to the stack and why, ICMP errors and fragments forwarded.
    pub fn events(&self) -> Result<LbEvents, EbpfError> {
        read_events(self.ebpf)
    }
}

/// The slot of `vip` (16 bytes, IPv4 zero-padded) in `fr_lb_vips`: ferrule_abi.h's formula, with
/// the words in host order as the datapath reads them.
fn vip_slot(vip: &[u8; 16]) -> u32 {
    let word = |i: usize| u32::from_ne_bytes([vip[4 * i], vip[4 * i + 1], vip[4 * i + 2], vip[4 * i + 3]]);
    (word(0) ^ word(1) ^ word(2) ^ word(3)).wrapping_mul(abi::LB_VIP_MUL) >> (32 - abi::LB_VIP_SLOT_BITS)
}

/// Which of `keys` are not in `fr_lb_services` (yet).
fn new_keys(ebpf: &Ebpf, keys: &[LbServiceKey]) -> Result<Vec<bool>, EbpfError> {
    let services: HashMap<_, LbServiceKey, LbService> =
        HashMap::try_from(map(ebpf, SERVICES)?).map_err(|e| EbpfError::map(SERVICES, "opening as hash", e))?;
    keys.iter()
        .map(|k| Ok(absent_ok(services.get(k, 0)).map_err(|e| EbpfError::map(SERVICES, "reading", e))?.is_none()))
        .collect()
}

impl VipCounts {
    /// Word `word` of the bitmap these counts make: a bit per slot that has a service.
    fn word(&self, word: u32) -> u64 {
        (0..64).filter(|bit| self.0.contains_key(&(word * 64 + bit))).fold(0, |w, bit| w | 1 << bit)
    }
}

/// Counts the VIPs of `keys` into (`sign` 1) or out of (-1) `counts`, then writes each bitmap word
/// they touched as the counts make it: a slot's bit is set once it has a service and cleared once
/// it has none.
fn count_vips<'k>(
    ebpf: &mut Ebpf,
    counts: &mut VipCounts,
    keys: impl IntoIterator<Item = &'k LbServiceKey>,
    sign: i32,
) -> Result<(), EbpfError> {
    let mut words = std::collections::BTreeSet::new();
    for key in keys {
        let slot = vip_slot(&key.vip);
        let count = counts.0.entry(slot).or_default();
        // Never below 0: counts out follow counts in.
        *count = count.saturating_add_signed(sign);
        if *count == 0 {
            counts.0.remove(&slot);
        }
        words.insert(slot / 64);
    }
    let mut array: Array<_, u64> =
        Array::try_from(map_mut(ebpf, VIPS)?).map_err(|e| EbpfError::map(VIPS, "opening as array", e))?;
    for word in words {
        array.set(word, counts.word(word), 0).map_err(|e| EbpfError::map(VIPS, "writing", e))?;
    }
    Ok(())
}

/// Counts every service's VIP afresh from `fr_lb_services` and makes the bitmap `fr_lb_vips` say
/// exactly which slots have one, writing the words that differ. Run when the program is loaded,
/// before it is attached anywhere: a bitmap this build creates beside services an older build
/// installed starts out with all of them, and one left with a stray bit is exact again. (A
/// program attached now that reads the bitmap sees a needed bit set throughout.)
pub(crate) fn recount_vips(ebpf: &Ebpf) -> Result<VipCounts, EbpfError> {
    let mut counts = VipCounts::default();
    {
        let services: HashMap<_, LbServiceKey, LbService> =
            HashMap::try_from(map(ebpf, SERVICES)?).map_err(|e| EbpfError::map(SERVICES, "opening as hash", e))?;
        for key in services.keys() {
            let key = key.map_err(|e| EbpfError::map(SERVICES, "reading", e))?;
            let count = counts.0.entry(vip_slot(&key.vip)).or_default();
            *count = count.saturating_add(1);
        }
    }
    let mut bits = vec![0u64; abi::LB_VIP_WORDS as usize];
    for slot in counts.0.keys() {
        bits[(slot / 64) as usize] |= 1 << (slot % 64);
    }
    let fd = map_fd(ebpf, VIPS)?;
    let now = sys::array_values::<u64>(fd, abi::LB_VIP_WORDS)
        .map_err(|e| EbpfError::syscall("BPF_MAP_LOOKUP_BATCH (reading fr_lb_vips)", e))?;
    let (words, values): (Vec<u32>, Vec<u64>) =
        (0..abi::LB_VIP_WORDS).zip(bits).filter(|(word, bits)| now[*word as usize] != *bits).unzip();
    if !words.is_empty() {
        sys::map_update_batch(fd, &words, &values)
            .map_err(|e| EbpfError::syscall("BPF_MAP_UPDATE_BATCH (fr_lb_vips)", e.error))?;
    }
    Ok(counts)
}

/// A new inner array for `fr_lb_tables`: slot 0 = length, slots 1..=len = `table`.
fn new_table(table: &[u32]) -> Result<MapData, EbpfError> {
    let len = u32::try_from(table.len()).map_err(|_| input("table too large"))?;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, len + 1, BPF_F_INNER_MAP);
    let inner = MapData::create(obj, "fr_lb_table", None).map_err(|e| EbpfError::map(TABLES, "creating a table", e))?;
    let keys: Vec<u32> = (0..=len).collect();
    let values: Vec<u32> = std::iter::once(len).chain(table.iter().copied()).collect();
    sys::map_update_batch(inner.fd().as_fd(), &keys, &values)
        .map_err(|e| EbpfError::syscall("BPF_MAP_UPDATE_BATCH (filling a Maglev table)", e.error))?;
    Ok(inner)
}

/// What is wrong with one service of an upsert, if anything.
fn service_problem(s: &ServiceUpsert<'_>) -> Option<String> {
    if s.id == 0 || s.id > abi::LB_MAX_SERVICES {
        return Some(format!("service {} has id {}: ids are 1..={}", describe_key(&s.key), s.id, abi::LB_MAX_SERVICES));
    }
    if s.table.len() > MAX_TABLE_SIZE {
        return Some(format!(
            "the table of service {} has {} slots, more than the {MAX_TABLE_SIZE} allowed",
            describe_key(&s.key),
            s.table.len()
        ));
    }
    None
}

/// Checks a whole batch before anything is written: each entry, and no key or id twice (two
/// keys with one id would share one table).
fn check_batch(services: &[ServiceUpsert<'_>]) -> Result<(), UpsertStop> {
    let mut keys = HashSet::with_capacity(services.len());
    let mut ids: StdHashMap<u32, &ServiceKey> = StdHashMap::with_capacity(services.len());
    for (i, s) in services.iter().enumerate() {
        let problem = service_problem(s)
            .or_else(|| (!keys.insert(s.key)).then(|| format!("service {} is listed twice", describe_key(&s.key))))
            .or_else(|| {
                let other = ids.insert(s.id, &s.key)?;
                Some(format!(
                    "service {} has id {}, already given to {}",
                    describe_key(&s.key),
                    s.id,
                    describe_key(other)
                ))
            });
        let error = match problem {
            None => continue,
            Some(p) if services.len() == 1 => input(p),
            Some(p) => input(format!("batch entry {i}: {p}; nothing of the batch was written")),
        };
        return Err(UpsertStop { at: Some(i), error });
    }
    Ok(())
}

fn describe_key(key: &ServiceKey) -> String {
    let proto = match key.proto {
        L4Proto::Tcp => "tcp",
        L4Proto::Udp => "udp",
    };
    match key.vip {
        IpAddr::V4(v4) => format!("{v4}:{}/{proto}", key.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}/{proto}", key.port),
    }
}

fn describe(s: &ServiceUpsert<'_>) -> String {
    format!("service {} (id {})", describe_key(&s.key), s.id)
}

/// A kernel refusal inside a batch, naming the element it stopped at.
fn batch_error(call: &'static str, what: &str, error: std::io::Error) -> EbpfError {
    if error.raw_os_error() == Some(libc::EPERM) || what.is_empty() {
        return EbpfError::syscall(call, error);
    }
    EbpfError::syscall(call, std::io::Error::new(error.kind(), format!("at {what}: {error}")))
}

/// Wraps the error of a batched upsert that stopped with `installed` of `total` services in.
fn partial(installed: usize, total: usize, e: EbpfError) -> EbpfError {
    match e {
        EbpfError::Syscall { call, source } => EbpfError::syscall(
            call,
            std::io::Error::new(
                source.kind(),
                format!("{source}; {installed} of the batch's {total} services are installed, the rest unchanged"),
            ),
        ),
        other => {
            tracing::warn!(installed, total, "batched service upsert stopped: {other}");
            other
        }
    }
}

/// How many new tables one batch holds open: a quarter of the open-files limit, so a daemon
/// under systemd's default of 1024 keeps room for its sockets, within [64, 4096]. Each batch
/// costs one RCU wait (~16 ms): 100,000 services under a limit of 1024 are ~390 batches.
fn tables_per_batch() -> usize {
    let limit = sys::open_files_soft_limit().unwrap_or(1024);
    (limit / 4).clamp(MIN_TABLES_PER_BATCH, MAX_TABLES_PER_BATCH) as usize
}

/// The fd of a hash, hash-of-maps or array map of the object, for the batch syscalls aya lacks.
fn map_fd<'e>(ebpf: &'e Ebpf, name: &'static str) -> Result<BorrowedFd<'e>, EbpfError> {
    match map(ebpf, name)? {
        Map::HashMap(data) | Map::HashOfMaps(data) | Map::Array(data) => Ok(data.fd().as_fd()),
        _ => Err(EbpfError::map(name, "opening for a batch update", MapError::InvalidMapType { map_type: 0 })),
    }
}

/// The counters of `id`: its hash entry plus, for a low id, its packets and bytes in the array
/// (an older build counted those in the hash too, so both are added).
fn read_counters(ebpf: &Ebpf, maps: CounterMaps, id: u32) -> Result<LbCounters, EbpfError> {
    let name = maps.stats;
    let stats: PerCpuHashMap<_, u32, LbCountersRaw> =
        PerCpuHashMap::try_from(map(ebpf, name)?).map_err(|e| EbpfError::map(name, "opening as per-CPU hash", e))?;
    let mut counters = match absent_ok(stats.get(&id, 0)).map_err(|e| EbpfError::map(name, "reading", e))? {
        Some(per_cpu) => sum_counters(&per_cpu),
        None => LbCounters::default(),
    };
    if id < abi::LB_TRAFFIC_ARR_SIZE {
        let name = maps.traffic;
        let traffic: PerCpuArray<_, LbTraffic> =
            PerCpuArray::try_from(map(ebpf, name)?).map_err(|e| EbpfError::map(name, "opening as per-CPU array", e))?;
        for v in traffic.get(&id, 0).map_err(|e| EbpfError::map(name, "reading", e))?.iter() {
            counters.packets = counters.packets.wrapping_add(v.packets);
            counters.bytes = counters.bytes.wrapping_add(v.bytes);
        }
    }
    Ok(counters)
}

/// Clears the counters of `id` (removed), so that the next holder of the id starts at zero.
fn remove_counters(ebpf: &mut Ebpf, maps: CounterMaps, id: u32) -> Result<(), EbpfError> {
    let name = maps.stats;
    let mut stats: PerCpuHashMap<_, u32, LbCountersRaw> = PerCpuHashMap::try_from(map_mut(ebpf, name)?)
        .map_err(|e| EbpfError::map(name, "opening as per-CPU hash", e))?;
    absent_ok(stats.remove(&id)).map_err(|e| EbpfError::map(name, "removing", e))?;
    if id < abi::LB_TRAFFIC_ARR_SIZE {
        let name = maps.traffic;
        let mut traffic: PerCpuArray<_, LbTraffic> = PerCpuArray::try_from(map_mut(ebpf, name)?)
            .map_err(|e| EbpfError::map(name, "opening as per-CPU array", e))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| EbpfError::syscall("reading the possible CPUs", e))?;
        let zeros = PerCpuValues::try_from(vec![LbTraffic::default(); cpus])
            .map_err(|e| EbpfError::syscall("per-CPU values for zeroing fr_lb_*_traffic", e))?;
        traffic.set(id, zeros, 0).map_err(|e| EbpfError::map(name, "zeroing", e))?;
    }
    Ok(())
}

/// The DSR decapsulation program for backends (`ebpf/bpf/tc_decap.bpf.c`): loaded with its maps
/// pinned under `<bpffs>/ferrule/<node>/maps/`, attached with tcx on interface ingress, links
/// pinned as `links/tc_decap:ingress:<ifname>` so they survive a restart of the process.
pub struct Decap {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for Decap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decap").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

impl Decap {
    /// Loads `tc_decap` for `node` under /sys/fs/bpf (mounted if needed).
    pub fn open(node: &str) -> Result<Decap, EbpfError> {
        let root = Path::new(DEFAULT_BPFFS);
        ensure_bpffs(root)?;
        Self::open_at(root, node)
    }

    /// Like [`Decap::open`] with bpffs at `bpffs_root` (which must already be one).
    pub fn open_at(bpffs_root: &Path, node: &str) -> Result<Decap, EbpfError> {
        let pin_dir = node_pin_dir(bpffs_root, node)?;
        for sub in ["maps", "links"] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| EbpfError::pin_path("creating pin directory", dir, e))?;
        }
        let maps_dir = pin_dir.join("maps");
        check_pinned_maps(DECAP_OBJECT, objects::TC_DECAP, &maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(objects::TC_DECAP)
            .map_err(|e| EbpfError::load(DECAP_OBJECT, e))?;
        program_mut(&mut ebpf)?.load().map_err(|e| EbpfError::program(DECAP_PROGRAM, "loading", e))?;
        Ok(Decap { ebpf, pin_dir })
    }

    /// Lets tunnels addressed to `addr` (a local address of this backend) be decapsulated.
    pub fn allow_address(&mut self, addr: IpAddr) -> Result<(), EbpfError> {
        let mut allowed = self.addrs()?;
        allowed.insert(decap_key(addr), 1u8, 0).map_err(|e| EbpfError::map(DECAP_ADDRS, "writing", e))
    }

    /// Stops decapsulating tunnels addressed to `addr`; not allowed before is fine.
    pub fn disallow_address(&mut self, addr: IpAddr) -> Result<(), EbpfError> {
        let mut allowed = self.addrs()?;
        absent_ok(allowed.remove(&decap_key(addr))).map_err(|e| EbpfError::map(DECAP_ADDRS, "removing", e))?;
        Ok(())
    }

    fn addrs(&mut self) -> Result<HashMap<&mut MapData, DecapAddr, u8>, EbpfError> {
        let map = self.ebpf.map_mut(DECAP_ADDRS).ok_or(EbpfError::MissingFromObject {
            object: DECAP_OBJECT,
            what: "map",
            name: DECAP_ADDRS,
        })?;
        HashMap::try_from(map).map_err(|e| EbpfError::map(DECAP_ADDRS, "opening as hash", e))
    }

    fn link_pin(&self, ifname: &str) -> PathBuf {
        // bpffs refuses `.` in names; interface names cannot contain `:`.
        self.pin_dir.join("links").join(format!("{DECAP_LINK_PREFIX}{}", ifname.replace('.', ":")))
    }

    /// Where this node's decapsulation state is pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The addresses tunnels may be addressed to, sorted.
    pub fn allowed_addresses(&mut self) -> Result<Vec<IpAddr>, EbpfError> {
        let allowed = self.addrs()?;
        let mut out = Vec::new();
        for key in allowed.keys() {
            let key = key.map_err(|e| EbpfError::map(DECAP_ADDRS, "listing", e))?;
            if let Some(addr) = addr_from(&key.addr, key.family) {
                out.push(addr);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The interfaces with a pinned `tc_decap` link, sorted by name, each with whether the link is
    /// still attached to the interface of that name (an interface deleted, or deleted and made
    /// again, leaves a defunct link behind).
    pub fn links(&self) -> Result<Vec<DecapLink>, EbpfError> {
        let dir = self.pin_dir.join("links");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(EbpfError::pin_path("listing", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| EbpfError::pin_path("listing", dir.clone(), e))?;
            let Some(interface) =
                entry.file_name().to_str().and_then(|n| n.strip_prefix(DECAP_LINK_PREFIX)).map(|n| n.replace(':', "."))
            else {
                continue; // another program's link
            };
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str()).ok();
            let info = crate::sys::obj_get(&entry.path()).and_then(|fd| crate::sys::link_info(fd.as_fd()));
            let attached = matches!((info, ifindex), (Ok(i), Some(ifindex))
                if i.link_type == crate::sys::BPF_LINK_TYPE_TCX && i.ifindex == ifindex);
            out.push(DecapLink { interface, attached });
        }
        out.sort_by(|a, b| a.interface.cmp(&b.interface));
        Ok(out)
    }

    /// Whether `tc_decap`'s maps are pinned for `node` (by `ferrule decap` or a daemon's `[decap]`).
    pub fn installed_at(bpffs_root: &Path, node: &str) -> Result<bool, EbpfError> {
        Ok(node_pin_dir(bpffs_root, node)?.join("maps").join(DECAP_ADDRS).exists())
    }

    /// Removes everything `tc_decap` pinned for `node`: detaches every link, then removes the
    /// maps (allowed addresses, counters) and the directories. Nothing pinned is fine.
    pub fn remove_at(bpffs_root: &Path, node: &str) -> Result<(), EbpfError> {
        let pin_dir = node_pin_dir(bpffs_root, node)?;
        let links = pin_dir.join("links");
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                if entry.file_name().to_str().is_some_and(|n| n.starts_with(DECAP_LINK_PREFIX)) {
                    crate::loader::remove_link_pin(&entry.path())?;
                }
            }
        }
        for name in [DECAP_ADDRS, DECAP_EVENTS] {
            crate::loader::remove_pin(&pin_dir.join("maps").join(name))?;
        }
        // The directories go only when empty: the daemon of a node of the same name keeps its
        // own pins there.
        for dir in [links, pin_dir.join("maps"), pin_dir.clone()] {
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(())
    }

    /// Attaches to the ingress of `ifname` (tcx, in the caller's network namespace) and pins the
    /// link, replacing a link pinned by a previous run (whose program is detached with it).
    pub fn attach(&mut self, ifname: &str) -> Result<(), EbpfError> {
        let pin = self.link_pin(ifname);
        let interface_error = |action, e: &(dyn std::error::Error + 'static)| EbpfError::Interface {
            interface: ifname.to_owned(),
            action,
            source: chain_to_string(e).into(),
        };
        let program = program_mut(&mut self.ebpf)?;
        let id = program
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|e| interface_error("attaching tc_decap (tcx ingress)", &e))?;
        let link = program.take_link(id).map_err(|e| interface_error("taking the tc link", &e))?;
        let link = FdLink::try_from(link).map_err(|e| interface_error("using the tc link as a bpf link", &e))?;
        if pin.exists() {
            crate::loader::remove_link_pin(&pin)?;
        }
        link.pin(&pin).map_err(|e| EbpfError::Pin { path: pin, source: Box::new(e) })?;
        Ok(())
    }

    /// Detaches from `ifname` by removing the pinned link; not attached is fine.
    pub fn detach(&mut self, ifname: &str) -> Result<(), EbpfError> {
        // Detached when this returns (see `remove_link_pin`).
        crate::loader::remove_link_pin(&self.link_pin(ifname))
    }

    fn program(&self) -> Result<&SchedClassifier, EbpfError> {
        self.ebpf
            .program(DECAP_PROGRAM)
            .ok_or(EbpfError::MissingFromObject { object: DECAP_OBJECT, what: "program", name: DECAP_PROGRAM })?
            .try_into()
            .map_err(|e| EbpfError::program(DECAP_PROGRAM, "using as tc classifier", e))
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN` ([`crate::test_run_skb`]).
    pub fn program_fd(&self) -> Result<BorrowedFd<'_>, EbpfError> {
        let fd = self.program()?.fd().map_err(|e| EbpfError::program(DECAP_PROGRAM, "getting its fd", e))?;
        Ok(fd.as_fd())
    }

    /// The kernel's statistics of the loaded program (verifier instruction count, ...).
    pub fn program_info(&self) -> Result<aya::programs::ProgramInfo, EbpfError> {
        self.program()?.info().map_err(|e| EbpfError::program(DECAP_PROGRAM, "reading program info", e))
    }

    /// Decapsulation counters.
    pub fn events(&self) -> Result<DecapEvents, EbpfError> {
        let map = self.ebpf.map(DECAP_EVENTS).ok_or(EbpfError::MissingFromObject {
            object: DECAP_OBJECT,
            what: "map",
            name: DECAP_EVENTS,
        })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| EbpfError::map(DECAP_EVENTS, "opening as per-CPU array", e))?;
        let ev = |i: u32| -> Result<u64, EbpfError> {
            let values = array.get(&i, 0).map_err(|e| EbpfError::map(DECAP_EVENTS, "reading", e))?;
            Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        };
        Ok(DecapEvents {
            decapsulated: ev(abi::DECAP_EV_DECAPSULATED)?,
            not_local: ev(abi::DECAP_EV_NOT_LOCAL)?,
            failed: ev(abi::DECAP_EV_FAILED)?,
            malformed: ev(abi::DECAP_EV_MALFORMED)?,
        })
    }
}

fn decap_key(addr: IpAddr) -> DecapAddr {
    let (addr, family) = addr16(addr);
    DecapAddr { addr, family, pad: [0; 3] }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfError> {
    ebpf.program_mut(DECAP_PROGRAM)
        .ok_or(EbpfError::MissingFromObject { object: DECAP_OBJECT, what: "program", name: DECAP_PROGRAM })?
        .try_into()
        .map_err(|e| EbpfError::program(DECAP_PROGRAM, "using as tc classifier", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_store_addresses_and_ports_in_network_order() {
        let key = ServiceKey { vip: "192.0.2.10".parse().unwrap(), port: 443, proto: L4Proto::Tcp };
        let raw = key.raw();
        assert_eq!(&raw.vip[..4], &[192, 0, 2, 10]);
        assert_eq!(&raw.vip[4..], &[0; 12]);
        assert_eq!(raw.port.to_ne_bytes(), [0x01, 0xbb]);
        assert_eq!((raw.proto, raw.family), (6, abi::FAMILY_IPV4));
        assert_eq!(ServiceKey::from_raw(&raw), Some(key));
        let v6 = ServiceKey { vip: "2001:db8::10".parse().unwrap(), port: 53, proto: L4Proto::Udp };
        assert_eq!(ServiceKey::from_raw(&v6.raw()), Some(v6));
    }

    #[test]
    fn counters_sum_over_cpus_by_drop_reason() {
        let mut a = LbCountersRaw { packets: 1, bytes: 100, new_flows: 1, ..Default::default() };
        a.drops[abi::LB_DROP_NO_BACKEND] = 2;
        let mut b = LbCountersRaw { packets: 2, bytes: 50, ..Default::default() };
        b.drops[abi::LB_DROP_NAT_PORTS] = 1;
        let c = sum_counters(&[a, b]);
        assert_eq!((c.packets, c.bytes, c.new_flows), (3, 150, 1));
        assert_eq!(c.drops, LbDrops { no_backend: 2, nat_ports: 1, ..Default::default() });
    }
}
