//! Loads the embedded objects with aya, pins maps, programs and links under
//! `<bpffs>/ferrule/<node>/`, and keeps the set of uplinks running `xdp_lb` equal to what it is
//! told. The decision of what to attach/detach is the pure [`plan_uplinks`]; `Datapath` only applies
//! it. It never decides *which* interfaces are uplinks (that comes from the model).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashOfMaps, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};

use crate::{
    abi::{self, IfaceStats},
    error::chain_to_string,
    objects, sys, EbpfError,
};

/// The XDP program on uplinks, and the object (`ebpf/bpf/xdp_lb.bpf.c`) that holds it.
const XDP_PROGRAM: &str = "xdp_lb";
const XDP_OBJECT: &str = "xdp_lb";
const IFACE_STATS_MAP: &str = "fr_iface_stats";
/// The per-CPU array counting interfaces whose ifindex is below `abi::IFACE_STATS_ARR_SIZE`.
const IFACE_STATS_ARR_MAP: &str = "fr_iface_stats_arr";
/// The program's private flow cache, sized here: `abi::LB_FC_SLOTS` per possible CPU.
const FLOW_CACHE: &str = "lb_fc";
/// The datapath's global that offsets the SNAT ports' epochs, set to a random value per load.
const NAT_EPOCH_BASE: &str = "lb_nat_epoch_base";
/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where the kernel and every tool expect bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `IFNAMSIZ` includes the terminating NUL.
const IFNAMSIZ: usize = 16;

/// How an XDP program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): the fast path.
    Native,
    /// In the generic network stack (`XDP_FLAGS_SKB_MODE`), for drivers without XDP support.
    Generic,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one uplink, as `ferrule show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub ifindex: Option<u32>,
    /// Whether `xdp_lb` (this build's or, after a failed swap, the previous one) runs on it.
    pub attached: bool,
    /// `"native"` or `"generic"` when attached.
    pub mode: Option<String>,
    pub error: Option<String>,
}

/// Counters of one interface, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterfaceStats {
    pub ifindex: u32,
    /// `None` when the interface no longer exists (its counters stay until the map is removed).
    pub name: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

/// What a pinned link is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkHealth {
    /// Attached to the interface of that name, running this process's program.
    Current,
    /// Attached to the interface of that name, running another (older) program.
    Stale,
    /// Not attached to an interface of that name any more (deleted, recreated or renamed).
    Defunct,
}

/// A link found pinned under `links/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedUplink {
    pub name: String,
    pub mode: AttachMode,
    pub health: LinkHealth,
}

/// One step that brings the attached set to the desired set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkOp {
    /// The name cannot be an interface name; nothing is done for it.
    Reject { name: String, reason: &'static str },
    /// Already runs this program: nothing to do.
    Keep { name: String, mode: AttachMode },
    /// Swap this program into the pinned link atomically (no packet sees no program).
    Update { name: String, mode: AttachMode },
    /// Attach anew (native first, generic as fallback) and pin the link.
    Attach { name: String },
    /// The pinned link is defunct: unpin it, then attach anew.
    Replace { name: String, mode: AttachMode },
    /// Not an uplink any more: unpin the link, which detaches the program.
    Detach { name: String, mode: AttachMode },
}

/// Decides how to go from the `pinned` links to XDP on exactly the `desired` interfaces.
///
/// Detaches come first, so a name never has two pins at once. Desired names keep their order and
/// duplicates are ignored. If a name has several pins (only possible after manual tinkering), the
/// healthiest is used and the others are detached.
pub fn plan_uplinks(desired: &[String], pinned: &[PinnedUplink]) -> Vec<UplinkOp> {
    let mut detaches = Vec::new();
    let mut others = Vec::new();
    let mut seen = BTreeSet::new();
    let mut kept = BTreeSet::new();
    for name in desired {
        if !seen.insert(name.as_str()) {
            continue;
        }
        if let Err(reason) = validate_ifname(name) {
            others.push(UplinkOp::Reject { name: name.clone(), reason });
            continue;
        }
        let best = pinned.iter().filter(|p| &p.name == name).min_by_key(|p| (p.health, p.mode));
        let name = name.clone();
        others.push(match best {
            None => UplinkOp::Attach { name },
            Some(p) => {
                kept.insert((p.name.as_str(), p.mode));
                match p.health {
                    LinkHealth::Current => UplinkOp::Keep { name, mode: p.mode },
                    LinkHealth::Stale => UplinkOp::Update { name, mode: p.mode },
                    LinkHealth::Defunct => UplinkOp::Replace { name, mode: p.mode },
                }
            }
        });
    }
    let mut stale: Vec<_> = pinned.iter().filter(|p| !kept.contains(&(p.name.as_str(), p.mode))).collect();
    stale.sort_by(|a, b| (&a.name, a.mode).cmp(&(&b.name, b.mode)));
    for p in stale {
        detaches.push(UplinkOp::Detach { name: p.name.clone(), mode: p.mode });
    }
    detaches.extend(others);
    detaches
}

/// Rejects what the kernel would never accept as an interface name (and what would escape the
/// pin directory), following the kernel's `dev_valid_name`.
fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty interface name");
    }
    if name.len() >= IFNAMSIZ {
        return Err("interface names are at most 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not interface names");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("interface names cannot contain `/`, `:` or whitespace");
    }
    Ok(())
}

fn validate_node(node: &str) -> Result<(), EbpfError> {
    let reason = if node.is_empty() {
        Some("it is empty")
    } else if node == "." || node == ".." {
        Some("`.` and `..` are not allowed")
    } else if node.contains(['/', ':', '\0']) {
        Some("it contains `/`, `:` or a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EbpfError::InvalidNode { node: node.to_owned(), reason }),
        None => Ok(()),
    }
}

/// The loaded datapath of one node, with its pins.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Kernel id of the `xdp_lb` program this process loaded; links running another id are stale.
    prog_id: u32,
    /// Result of the last `set_uplinks` (or, before it, what was found pinned at open).
    statuses: Vec<UplinkStatus>,
    /// Services per slot of the VIP bitmap, counted at open and kept by `LbMaps`.
    vips: crate::lb::VipCounts,
}

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("prog_id", &self.prog_id)
            .field("statuses", &self.statuses)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the embedded objects, mounting bpffs at /sys/fs/bpf if absent, pinning maps by name
    /// under `<bpffs>/ferrule/<node>/maps/` (re-using ones already pinned there, so counters
    /// survive restarts), programs under `.../progs/` and links under `.../links/`.
    ///
    /// Links pinned by a previous run keep forwarding with the previous program until
    /// [`Datapath::set_uplinks`] swaps this one in.
    pub fn open(node: &str) -> Result<Datapath, EbpfError> {
        let root = Path::new(DEFAULT_BPFFS);
        ensure_bpffs(root)?;
        Self::open_at(root, node)
    }

    /// Whether a datapath (a daemon's load balancer) is pinned for `node` under `bpffs_root`.
    pub fn pinned_at(bpffs_root: &Path, node: &str) -> Result<bool, EbpfError> {
        Ok(node_pin_dir(bpffs_root, node)?.join("maps").join(crate::lb::SERVICES).exists())
    }

    /// Like [`Datapath::open`] with bpffs mounted at `bpffs_root` (which must already be one).
    pub fn open_at(bpffs_root: &Path, node: &str) -> Result<Datapath, EbpfError> {
        let pin_dir = node_pin_dir(bpffs_root, node)?;
        if !is_bpffs(bpffs_root)? {
            return Err(EbpfError::NotBpffs { path: bpffs_root.to_owned() });
        }
        for sub in ["maps", "progs", "links"] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| EbpfError::pin_path("creating pin directory", dir, e))?;
        }
        let maps_dir = pin_dir.join("maps");
        check_pinned_maps(XDP_OBJECT, objects::XDP_LB, &maps_dir)?;

        // The flow cache holds a part per CPU (lb.h: lb_fc), indexed by CPU number.
        let cpus = cpu_ids_end()?;
        let fc_slots = cpus.checked_mul(abi::LB_FC_SLOTS).ok_or_else(|| {
            EbpfError::syscall("sizing the flow cache", std::io::Error::other(format!("{cpus} CPUs")))
        })?;
        // A new base for the SNAT ports' epochs with every load (lb.h: lb_nat_epoch_base): the
        // epochs restart from 0, while conntrack keeps values stored under the previous load.
        let epoch_base = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), cpus) as u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(FLOW_CACHE, fc_slots)
            .override_global(NAT_EPOCH_BASE, &epoch_base, true)
            .load(objects::XDP_LB)
            .map_err(|e| EbpfError::load(XDP_OBJECT, e))?;
        // The default SNAT ports until the daemon sets its own, before the program can run.
        let first = abi::LB_NAT_PORT_MIN;
        crate::lb::set_nat_ports(&mut ebpf, first..=first + (abi::LB_NAT_PORT_COUNT - 1))?;
        let xdp = xdp_program_mut(&mut ebpf)?;
        xdp.load().map_err(|e| EbpfError::program(XDP_PROGRAM, "loading", e))?;
        let prog_id = xdp.info().map_err(|e| EbpfError::program(XDP_PROGRAM, "reading program info", e))?.id();

        // The pin names the program the next set_uplinks will put on the links, so it always
        // refers to the newest build; links still running the old one keep it alive.
        let prog_pin = pin_dir.join("progs").join(XDP_PROGRAM);
        remove_pin(&prog_pin)?;
        xdp.pin(&prog_pin).map_err(|e| EbpfError::Pin { path: prog_pin.clone(), source: Box::new(e) })?;
        // Before this program is on any interface: its VIP bitmap must have every service's bit.
        let vips = crate::lb::recount_vips(&ebpf)?;

        let mut datapath = Datapath { ebpf, pin_dir, prog_id, statuses: Vec::new(), vips };
        datapath.statuses = datapath.adopted_statuses()?;
        Ok(datapath)
    }

    /// `<bpffs>/ferrule/<node>`.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The loaded `xdp_lb` object, for the LB map accessors in `lb.rs`.
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The object and the VIP counts, for `LbMaps`.
    pub(crate) fn lb_parts(&mut self) -> (&mut Ebpf, &mut crate::lb::VipCounts) {
        (&mut self.ebpf, &mut self.vips)
    }

    /// The kernel's statistics of the loaded `xdp_lb` program (verifier instruction count, ...).
    pub fn xdp_program_info(&self) -> Result<aya::programs::ProgramInfo, EbpfError> {
        let program = self.ebpf.program(XDP_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: XDP_OBJECT,
            what: "program",
            name: XDP_PROGRAM,
        })?;
        let xdp: &Xdp = program.try_into().map_err(|e| EbpfError::program(XDP_PROGRAM, "using as XDP", e))?;
        xdp.info().map_err(|e| EbpfError::program(XDP_PROGRAM, "reading program info", e))
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    fn link_pin(&self, name: &str, mode: AttachMode) -> PathBuf {
        self.links_dir().join(link_pin_name(name, mode))
    }

    /// The loaded `xdp_lb` program, for `BPF_PROG_TEST_RUN` ([`crate::test_run_xdp`]).
    pub fn xdp_program_fd(&self) -> Result<BorrowedFd<'_>, EbpfError> {
        let program = self.ebpf.program(XDP_PROGRAM).ok_or(EbpfError::MissingFromObject {
            object: XDP_OBJECT,
            what: "program",
            name: XDP_PROGRAM,
        })?;
        let xdp: &Xdp = program.try_into().map_err(|e| EbpfError::program(XDP_PROGRAM, "using as XDP", e))?;
        let fd = xdp.fd().map_err(|e| EbpfError::program(XDP_PROGRAM, "getting its fd", e))?;
        Ok(fd.as_fd())
    }

    /// Makes the set of interfaces with our XDP program equal to `uplinks`: pinned links are
    /// re-used and get this build's program atomically; new interfaces are attached (native
    /// first, generic as fallback) and their links pinned; links for interfaces no longer listed
    /// are unpinned, which detaches them. A problem with one interface is reported in its entry
    /// and does not stop the others.
    pub fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
        let mut statuses = Vec::new();
        let pinned = match self.scan_links() {
            Ok(pinned) => pinned,
            Err(e) => {
                // Without knowing what is pinned nothing can be planned safely.
                let error = chain_to_string(&e);
                statuses = uplinks
                    .iter()
                    .map(|name| UplinkStatus {
                        name: name.clone(),
                        ifindex: ifindex_of(name),
                        attached: false,
                        mode: None,
                        error: Some(error.clone()),
                    })
                    .collect();
                self.statuses = statuses.clone();
                return statuses;
            }
        };
        let plan_input: Vec<PinnedUplink> = pinned.iter().map(|p| p.uplink.clone()).collect();
        for op in plan_uplinks(uplinks, &plan_input) {
            match op {
                UplinkOp::Detach { name, mode } => {
                    if let Err(e) = remove_link_pin(&self.link_pin(&name, mode)) {
                        statuses.push(UplinkStatus {
                            ifindex: ifindex_of(&name),
                            name,
                            attached: true,
                            mode: Some(mode.to_string()),
                            error: Some(format!("still attached: unpinning its link failed: {}", chain_to_string(&e))),
                        });
                    }
                }
                UplinkOp::Reject { name, reason } => statuses.push(UplinkStatus {
                    name,
                    ifindex: None,
                    attached: false,
                    mode: None,
                    error: Some(reason.to_owned()),
                }),
                UplinkOp::Keep { name, mode } => statuses.push(UplinkStatus {
                    ifindex: ifindex_of(&name),
                    name,
                    attached: true,
                    mode: Some(mode.to_string()),
                    error: None,
                }),
                UplinkOp::Update { name, mode } => statuses.push(self.update(&name, mode)),
                UplinkOp::Attach { name } => statuses.push(self.attach(&name)),
                UplinkOp::Replace { name, mode } => {
                    statuses.push(match remove_link_pin(&self.link_pin(&name, mode)) {
                        Ok(()) => self.attach(&name),
                        Err(e) => UplinkStatus {
                            ifindex: ifindex_of(&name),
                            name,
                            attached: false,
                            mode: None,
                            error: Some(format!("removing its defunct link failed: {}", chain_to_string(&e))),
                        },
                    });
                }
            }
        }
        self.statuses = statuses.clone();
        statuses
    }

    /// The interfaces whose pinned link still runs `xdp_lb` (this build's or an older one) on the
    /// interface of that name, read from the kernel now: a link whose interface was deleted, or
    /// deleted and made again, is left out. [`Datapath::set_uplinks`] replaces such links.
    pub fn attached_uplinks(&self) -> Result<BTreeSet<String>, EbpfError> {
        if !self.links_dir().exists() {
            return Ok(BTreeSet::new());
        }
        Ok(self
            .scan_links()?
            .into_iter()
            .filter(|l| l.uplink.health != LinkHealth::Defunct)
            .map(|l| l.uplink.name)
            .collect())
    }

    /// The uplinks as of the last [`Datapath::set_uplinks`], or as found pinned at open.
    pub fn uplinks(&self) -> Vec<UplinkStatus> {
        self.statuses.clone()
    }

    /// Per-interface counters summed over CPUs, with the interface name when it still exists.
    pub fn interface_stats(&self) -> Result<Vec<InterfaceStats>, EbpfError> {
        let map = self.ebpf.map(IFACE_STATS_MAP).ok_or(EbpfError::MissingFromObject {
            object: XDP_OBJECT,
            what: "map",
            name: IFACE_STATS_MAP,
        })?;
        let map: PerCpuHashMap<_, u32, IfaceStats> =
            PerCpuHashMap::try_from(map).map_err(|e| EbpfError::map(IFACE_STATS_MAP, "opening as per-CPU hash", e))?;
        let names: HashMap<u32, String> = nix::net::if_::if_nameindex()
            .map(|list| list.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect())
            .unwrap_or_default();
        let sum = |per_cpu: &[IfaceStats]| {
            per_cpu.iter().fold((0u64, 0u64), |(p, b), v| (p.wrapping_add(v.packets), b.wrapping_add(v.bytes)))
        };
        // Per ifindex: the hash (high ifindexes, and what an older build counted for low ones)
        // plus the array (low ifindexes).
        let mut totals: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for entry in map.iter() {
            let (ifindex, per_cpu) = entry.map_err(|e| EbpfError::map(IFACE_STATS_MAP, "reading", e))?;
            totals.insert(ifindex, sum(&per_cpu));
        }
        let array = self.ebpf.map(IFACE_STATS_ARR_MAP).ok_or(EbpfError::MissingFromObject {
            object: XDP_OBJECT,
            what: "map",
            name: IFACE_STATS_ARR_MAP,
        })?;
        let array: PerCpuArray<_, IfaceStats> = PerCpuArray::try_from(array)
            .map_err(|e| EbpfError::map(IFACE_STATS_ARR_MAP, "opening as per-CPU array", e))?;
        for (ifindex, per_cpu) in (0..abi::IFACE_STATS_ARR_SIZE).zip(array.iter()) {
            let per_cpu = per_cpu.map_err(|e| EbpfError::map(IFACE_STATS_ARR_MAP, "reading", e))?;
            let (packets, bytes) = sum(&per_cpu);
            if packets != 0 || bytes != 0 {
                let total = totals.entry(ifindex).or_default();
                *total = (total.0.wrapping_add(packets), total.1.wrapping_add(bytes));
            }
        }
        Ok(totals
            .into_iter()
            .map(|(ifindex, (packets, bytes))| InterfaceStats {
                ifindex,
                name: names.get(&ifindex).cloned(),
                packets,
                bytes,
            })
            .collect())
    }

    /// Removes everything pinned for this node, which detaches its links and frees its maps.
    pub fn unpin_all(self) -> Result<(), EbpfError> {
        for sub in ["links", "progs", "maps"] {
            let dir = self.pin_dir.join(sub);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(EbpfError::pin_path("listing", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| EbpfError::pin_path("listing", dir.clone(), e))?;
                if sub == "links" {
                    remove_link_pin(&entry.path())?;
                } else {
                    remove_pin(&entry.path())?;
                }
            }
            remove_dir(&dir)?;
        }
        remove_dir(&self.pin_dir)?;
        // Other nodes' directories may share the parent; leaving it is harmless.
        if let Some(parent) = self.pin_dir.parent() {
            let _not_empty_is_fine = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Statuses for the links found pinned when opening, before anything is changed.
    fn adopted_statuses(&self) -> Result<Vec<UplinkStatus>, EbpfError> {
        Ok(self
            .scan_links()?
            .into_iter()
            .map(|p| UplinkStatus {
                ifindex: p.ifindex,
                attached: p.uplink.health != LinkHealth::Defunct,
                mode: Some(p.uplink.mode.to_string()),
                error: (p.uplink.health == LinkHealth::Defunct)
                    .then(|| "pinned link is no longer attached to this interface".to_owned()),
                name: p.uplink.name,
            })
            .collect())
    }

    /// The XDP links pinned for this node, with what each is doing now.
    fn scan_links(&self) -> Result<Vec<ScannedLink>, EbpfError> {
        let dir = self.links_dir();
        let entries = std::fs::read_dir(&dir).map_err(|e| EbpfError::pin_path("listing", dir.clone(), e))?;
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| EbpfError::pin_path("listing", dir.clone(), e))?;
            let file_name = entry.file_name();
            let Some((name, mode)) = file_name.to_str().and_then(parse_link_pin_name) else {
                continue; // another program's link
            };
            let ifindex = ifindex_of(&name);
            let info = sys::obj_get(&entry.path()).and_then(|fd| sys::link_info(fd.as_fd()));
            let health = match info {
                Ok(info)
                    if info.link_type == sys::BPF_LINK_TYPE_XDP
                        && info.ifindex != 0
                        && Some(info.ifindex) == ifindex =>
                {
                    if info.prog_id == self.prog_id {
                        LinkHealth::Current
                    } else {
                        LinkHealth::Stale
                    }
                }
                _ => LinkHealth::Defunct,
            };
            links.push(ScannedLink { uplink: PinnedUplink { name, mode, health }, ifindex });
        }
        links.sort_by(|a, b| a.uplink.name.cmp(&b.uplink.name));
        Ok(links)
    }

    /// Swaps this build's program into the pinned link of `name`; a link that turns out defunct
    /// is replaced by a fresh attachment.
    fn update(&mut self, name: &str, mode: AttachMode) -> UplinkStatus {
        let pin = self.link_pin(name, mode);
        let swapped = (|| -> Result<(), String> {
            let link = PinnedLink::from_pin(&pin).map_err(|e| chain_to_string(&e))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| chain_to_string(&e))?;
            let xdp = xdp_program_mut(&mut self.ebpf).map_err(|e| chain_to_string(&e))?;
            let id = xdp.attach_to_link(link).map_err(|e| chain_to_string(&e))?;
            // Dropping our handle closes its fd; the pin keeps the link attached. Holding it
            // would keep the link alive after a later unpin.
            drop(xdp.take_link(id).map_err(|e| chain_to_string(&e))?);
            Ok(())
        })();
        match swapped {
            Ok(()) => UplinkStatus {
                name: name.to_owned(),
                ifindex: ifindex_of(name),
                attached: true,
                mode: Some(mode.to_string()),
                error: None,
            },
            Err(error) => {
                // The link may have gone defunct since the scan (interface deleted meanwhile).
                if self
                    .scan_links()
                    .ok()
                    .and_then(|links| links.into_iter().find(|l| l.uplink.name == name && l.uplink.mode == mode))
                    .is_some_and(|l| l.uplink.health == LinkHealth::Defunct)
                {
                    if let Err(e) = remove_link_pin(&pin) {
                        return failed(name, format!("removing its defunct link failed: {}", chain_to_string(&e)));
                    }
                    return self.attach(name);
                }
                UplinkStatus {
                    name: name.to_owned(),
                    ifindex: ifindex_of(name),
                    attached: true,
                    mode: Some(mode.to_string()),
                    error: Some(format!("still running the previous program: swapping in the new one failed: {error}")),
                }
            }
        }
    }

    /// Attaches to `name` (native, else generic) and pins the link.
    fn attach(&mut self, name: &str) -> UplinkStatus {
        let Some(ifindex) = ifindex_of(name) else {
            return failed(name, format!("no interface named {name:?} in this network namespace"));
        };
        let xdp = match xdp_program_mut(&mut self.ebpf) {
            Ok(xdp) => xdp,
            Err(e) => return failed(name, chain_to_string(&e)),
        };
        let attempt =
            |xdp: &mut Xdp, mode: AttachMode| xdp.attach_to_if_index(ifindex, mode.xdp_mode()).map(|id| (id, mode));
        let (id, mode) = match attempt(xdp, AttachMode::Native) {
            Ok(attached) => attached,
            Err(native) => match attempt(xdp, AttachMode::Generic) {
                Ok(attached) => {
                    tracing::info!(
                        interface = name,
                        reason = %chain_to_string(&native),
                        "native XDP unavailable, attached in generic mode"
                    );
                    attached
                }
                Err(generic) => {
                    return UplinkStatus {
                        ifindex: Some(ifindex),
                        ..failed(
                            name,
                            format!(
                                "attaching failed in native mode ({}) and in generic mode ({})",
                                chain_to_string(&native),
                                chain_to_string(&generic)
                            ),
                        )
                    }
                }
            },
        };
        let status = |error: Option<String>| UplinkStatus {
            name: name.to_owned(),
            ifindex: Some(ifindex),
            attached: true,
            mode: Some(mode.to_string()),
            error,
        };
        let link = match xdp.take_link(id) {
            Ok(link) => link,
            Err(e) => return status(Some(program_error_text("taking the link", &e))),
        };
        let fd_link = match FdLink::try_from(link) {
            Ok(link) => link,
            // aya falls back to netlink when the kernel has no XDP bpf_link (before 5.9); such an
            // attachment stays but cannot be pinned.
            Err(e) => {
                return status(Some(format!(
                    "attached through netlink, which cannot be pinned ({e}); it will not be \
                     adopted after a restart: remove it with `ip link set dev {name} xdp off`"
                )))
            }
        };
        let pin = self.link_pin(name, mode);
        match fd_link.pin(&pin) {
            // Dropping the returned handle closes our fd; the pin keeps the link.
            Ok(_pinned) => status(None),
            // `pin` consumed the only fd, so the link is already detached again.
            Err(e) => UplinkStatus {
                attached: false,
                mode: None,
                ..status(Some(format!("pinning its link at {} failed: {}", pin.display(), chain_to_string(&e))))
            },
        }
    }
}

struct ScannedLink {
    uplink: PinnedUplink,
    ifindex: Option<u32>,
}

fn failed(name: &str, error: String) -> UplinkStatus {
    UplinkStatus { name: name.to_owned(), ifindex: ifindex_of(name), attached: false, mode: None, error: Some(error) }
}

fn program_error_text(action: &str, e: &ProgramError) -> String {
    format!("{action}: {}", chain_to_string(e))
}

/// Link pins are `<program>:<mode>:<ifname>`: the mode is only known at attach time and must
/// survive restarts, and bpffs holds nothing but pins and directories. bpffs refuses names with
/// `.` (reserved by the kernel), so the dots of an interface name (`bond0.100`) are stored as `:`,
/// which interface names cannot contain.
fn link_pin_name(ifname: &str, mode: AttachMode) -> String {
    format!("{XDP_PROGRAM}:{mode}:{}", ifname.replace('.', ":"))
}

fn parse_link_pin_name(file_name: &str) -> Option<(String, AttachMode)> {
    let mut parts = file_name.splitn(3, ':');
    if parts.next()? != XDP_PROGRAM {
        return None;
    }
    let mode = AttachMode::parse(parts.next()?)?;
    let ifname = parts.next()?.replace(':', ".");
    validate_ifname(&ifname).ok()?;
    Some((ifname, mode))
}

/// `<bpffs_root>/ferrule/<node>`, where the node's maps, programs and links are pinned. The
/// dots of a node name (`node1.dc1`) are stored as `:` because bpffs refuses `.` in names.
pub fn node_pin_dir(bpffs_root: &Path, node: &str) -> Result<PathBuf, EbpfError> {
    validate_node(node)?;
    Ok(bpffs_root.join("ferrule").join(node.replace('.', ":")))
}

fn ifindex_of(name: &str) -> Option<u32> {
    validate_ifname(name).ok()?;
    nix::net::if_::if_nametoindex(name).ok()
}

fn xdp_program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, EbpfError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(EbpfError::MissingFromObject { object: XDP_OBJECT, what: "program", name: XDP_PROGRAM })?
        .try_into()
        .map_err(|e| EbpfError::program(XDP_PROGRAM, "using as XDP", e))
}

/// Removes a link's pin so that the link is detached when this returns. Were the pin the last
/// reference, the kernel would free the link (and detach its program) later, from a workqueue,
/// and a caller that looks at the interface right after (or attaches anew) could still find it
/// there; the last reference being a file descriptor, closing it frees the link on the spot. So:
/// open the link, unpin it, close it. A pin that is gone, or that is no link, is just removed.
pub(crate) fn remove_link_pin(path: &Path) -> Result<(), EbpfError> {
    let held = PinnedLink::from_pin(path).ok();
    remove_pin(path)?;
    drop(held);
    Ok(())
}

/// Removes a pin; one that is already gone is fine.
pub(crate) fn remove_pin(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(EbpfError::pin_path("removing pin", path.to_owned(), e))
        }
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(EbpfError::pin_path("removing directory", path.to_owned(), e))
        }
        _ => Ok(()),
    }
}

/// Mounts bpffs at `path` unless one is already mounted there.
pub fn ensure_bpffs(path: &Path) -> Result<(), EbpfError> {
    // Two threads that both find it absent would stack two separate bpffs instances.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serialised = MOUNTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_bpffs(path)? {
        mount_bpffs(path)?;
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool, EbpfError> {
    let stat = nix::sys::statfs::statfs(path)
        .map_err(|e| EbpfError::pin_path("checking the filesystem of", path.to_owned(), e.into()))?;
    // `fs_type_t` differs in width between libcs; the magic fits in 32 bits.
    Ok(stat.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> Result<(), EbpfError> {
    tracing::info!(path = %path.display(), "mounting bpffs");
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).map_err(|source| {
        if source == nix::Error::EPERM {
            EbpfError::PermissionDenied {
                action: format!("mounting bpffs at {}", path.display()),
                source: Box::new(source),
            }
        } else {
            EbpfError::MountBpffs { path: path.to_owned(), source }
        }
    })
}

/// Refuses to re-use a pinned map whose shape differs from this build's definition: aya would
/// silently adopt it, and the program would then read and write it with the wrong layout. For a
/// map of maps the inner maps it holds are checked too (BPF_F_INNER_MAP lets their sizes differ,
/// so everything but max_entries).
pub(crate) fn check_pinned_maps(object: &'static str, bytes: &[u8], maps_dir: &Path) -> Result<(), EbpfError> {
    let parsed = aya_obj::Object::parse(bytes).map_err(|e| EbpfError::load(object, aya::EbpfError::ParseError(e)))?;
    let mut maps: BTreeMap<&str, &aya_obj::Map> = BTreeMap::new();
    for (name, map) in &parsed.maps {
        if map.pinning() == aya_obj::maps::PinningType::ByName {
            maps.insert(name, map);
        }
    }
    for (name, map) in maps {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| EbpfError::map(name, "opening pinned", e))?;
        let mut diffs = Vec::new();
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        for (what, pinned, ours) in [
            ("type", pinned_type, map.map_type()),
            ("key size", info.key_size(), map.key_size()),
            ("value size", info.value_size(), map.value_size()),
            ("max entries", info.max_entries(), map.max_entries()),
            ("flags", info.map_flags(), map.map_flags()),
        ] {
            if pinned != ours {
                diffs.push(format!("{what} {pinned} pinned, {ours} in this build"));
            }
        }
        if diffs.is_empty() {
            if let Some(inner) = map.inner() {
                diffs.extend(inner_map_diffs(name, &path, &inner)?);
            }
        }
        if !diffs.is_empty() {
            return Err(EbpfError::IncompatiblePinnedMap { path, detail: diffs.join(", ") });
        }
    }
    Ok(())
}

/// Differences between the first inner map held by the pinned map of maps at `path` and this
/// build's inner definition; none when it holds no inner map.
fn inner_map_diffs(name: &str, path: &Path, inner: &aya_obj::Map) -> Result<Vec<String>, EbpfError> {
    let data = MapData::from_pin(path).map_err(|e| EbpfError::map(name, "opening pinned", e))?;
    let outer = match data.info().map_err(|e| EbpfError::map(name, "reading info", e))?.map_type() {
        Ok(aya::maps::MapType::HashOfMaps) => Map::HashOfMaps(data),
        // Only hashes of maps are used; another outer type was already reported as a type change.
        _ => return Ok(Vec::new()),
    };
    let outer: HashOfMaps<_, u32, MapData> =
        HashOfMaps::try_from(outer).map_err(|e| EbpfError::map(name, "opening as hash of maps", e))?;
    let Some(key) = outer.keys().next() else { return Ok(Vec::new()) };
    let key = key.map_err(|e| EbpfError::map(name, "listing keys", e))?;
    let held = outer.get(&key, 0).map_err(|e| EbpfError::map(name, "reading an inner map", e))?;
    let info = held.info().map_err(|e| EbpfError::map(name, "reading inner map info", e))?;
    let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    Ok([
        ("inner map type", pinned_type, inner.map_type()),
        ("inner key size", info.key_size(), inner.key_size()),
        ("inner value size", info.value_size(), inner.value_size()),
        ("inner flags", info.map_flags(), inner.map_flags()),
    ]
    .into_iter()
    .filter(|(_, pinned, ours)| pinned != ours)
    .map(|(what, pinned, ours)| format!("{what} {pinned} pinned, {ours} in this build"))
    .collect())
}

/// One more than the highest possible CPU number: the parts a per-CPU-indexed array needs. (The
/// count of possible CPUs is less when the kernel's list has gaps, e.g. `0-3,8-11`.)
fn cpu_ids_end() -> Result<u32, EbpfError> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let list = std::fs::read_to_string(POSSIBLE).map_err(|e| EbpfError::syscall("reading the possible CPUs", e))?;
    cpu_list_end(&list).ok_or_else(|| {
        EbpfError::syscall("reading the possible CPUs", std::io::Error::other(format!("{POSSIBLE}: {list:?}")))
    })
}

/// One more than the highest CPU of a kernel CPU list (`0-3,8,10-11`); None if it is not one.
fn cpu_list_end(list: &str) -> Option<u32> {
    let mut end = None;
    for range in list.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last) = (first.parse::<u32>().ok()?, last.parse::<u32>().ok()?);
        if first > last {
            return None;
        }
        end = end.max(last.checked_add(1));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(name: &str, mode: AttachMode, health: LinkHealth) -> PinnedUplink {
        PinnedUplink { name: name.to_owned(), mode, health }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_flow_cache_has_a_part_for_the_highest_possible_cpu_not_for_the_count() {
        assert_eq!(cpu_list_end("0\n"), Some(1));
        assert_eq!(cpu_list_end("0-1\n"), Some(2));
        assert_eq!(cpu_list_end("0-3,8-11"), Some(12), "8 CPUs, numbered up to 11");
        assert_eq!(cpu_list_end("0,2,5"), Some(6));
        for bad in ["", "x", "3-1", "0-", "0-1,", "-1"] {
            assert_eq!(cpu_list_end(bad), None, "{bad:?}");
        }
        assert!(cpu_ids_end().unwrap() >= 1, "this machine's list reads");
    }

    #[test]
    fn attaches_every_uplink_when_nothing_is_pinned() {
        assert_eq!(
            plan_uplinks(&names(&["eth0", "eth1"]), &[]),
            vec![UplinkOp::Attach { name: "eth0".into() }, UplinkOp::Attach { name: "eth1".into() },]
        );
    }

    #[test]
    fn keeps_current_links_and_swaps_program_into_stale_ones() {
        let pins = [
            pinned("eth0", AttachMode::Native, LinkHealth::Current),
            pinned("eth1", AttachMode::Generic, LinkHealth::Stale),
        ];
        assert_eq!(
            plan_uplinks(&names(&["eth0", "eth1"]), &pins),
            vec![
                UplinkOp::Keep { name: "eth0".into(), mode: AttachMode::Native },
                UplinkOp::Update { name: "eth1".into(), mode: AttachMode::Generic },
            ]
        );
    }

    #[test]
    fn detaches_links_of_interfaces_no_longer_listed_before_anything_else() {
        let pins = [
            pinned("eth0", AttachMode::Native, LinkHealth::Current),
            pinned("eth9", AttachMode::Native, LinkHealth::Stale),
        ];
        assert_eq!(
            plan_uplinks(&names(&["eth1", "eth0"]), &pins),
            vec![
                UplinkOp::Detach { name: "eth9".into(), mode: AttachMode::Native },
                UplinkOp::Attach { name: "eth1".into() },
                UplinkOp::Keep { name: "eth0".into(), mode: AttachMode::Native },
            ]
        );
        assert_eq!(
            plan_uplinks(&[], &pins),
            vec![
                UplinkOp::Detach { name: "eth0".into(), mode: AttachMode::Native },
                UplinkOp::Detach { name: "eth9".into(), mode: AttachMode::Native },
            ]
        );
    }

    #[test]
    fn replaces_defunct_links_of_recreated_interfaces() {
        let pins = [pinned("veth0", AttachMode::Generic, LinkHealth::Defunct)];
        assert_eq!(
            plan_uplinks(&names(&["veth0"]), &pins),
            vec![UplinkOp::Replace { name: "veth0".into(), mode: AttachMode::Generic }]
        );
    }

    #[test]
    fn uses_the_healthiest_of_duplicate_pins_and_detaches_the_rest() {
        let pins = [
            pinned("eth0", AttachMode::Generic, LinkHealth::Defunct),
            pinned("eth0", AttachMode::Native, LinkHealth::Stale),
        ];
        assert_eq!(
            plan_uplinks(&names(&["eth0"]), &pins),
            vec![
                UplinkOp::Detach { name: "eth0".into(), mode: AttachMode::Generic },
                UplinkOp::Update { name: "eth0".into(), mode: AttachMode::Native },
            ]
        );
    }

    #[test]
    fn ignores_duplicate_names_and_rejects_invalid_ones_without_touching_others() {
        let plan = plan_uplinks(&names(&["eth0", "", "eth0", "../etc", "a-very-long-name-x", "eth 1"]), &[]);
        assert_eq!(plan.len(), 5);
        assert_eq!(plan[0], UplinkOp::Attach { name: "eth0".into() });
        for op in &plan[1..] {
            assert!(matches!(op, UplinkOp::Reject { .. }), "{op:?}");
        }
    }

    #[test]
    fn link_pin_names_round_trip_including_dotted_interface_names() {
        for (name, mode) in [("eth0", AttachMode::Native), ("bond0.100", AttachMode::Generic)] {
            let pin = link_pin_name(name, mode);
            assert!(!pin.contains('.'), "bpffs refuses dots: {pin}");
            assert_eq!(parse_link_pin_name(&pin), Some((name.to_owned(), mode)));
        }
        assert_eq!(parse_link_pin_name("tc_ingress:native:eth0"), None);
        assert_eq!(parse_link_pin_name("xdp_lb:turbo:eth0"), None);
    }

    #[test]
    fn rejects_node_names_that_escape_the_pin_directory() {
        for node in ["", ".", "..", "a/b", "a:b"] {
            assert!(matches!(validate_node(node), Err(EbpfError::InvalidNode { .. })), "{node:?}");
        }
        let dir = node_pin_dir(Path::new("/sys/fs/bpf"), "node-1.dc1").unwrap();
        assert_eq!(dir, Path::new("/sys/fs/bpf/ferrule/node-1:dc1"));
    }
}
