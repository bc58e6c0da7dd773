//! Rust mirrors of the structs in `ebpf/include/ferrule_abi.h`, one per C struct, declared through
//! `abi_structs!` so each mirror also describes its own layout for the BTF check
//! (`tests/abi_layout.rs`). Only layout lives here: no map access, no logic.

use core::mem::size_of;

use crate::btf::FieldLayout;

/// The layout a Rust mirror claims for its C struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorLayout {
    /// The C struct's tag, without `struct`.
    pub c_name: &'static str,
    pub fields: Vec<FieldLayout>,
    pub size: usize,
}

/// Size of a field, named by a projection closure (`|s: &T| &s.field`), without needing a value.
const fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

const fn assert_pod<T: aya::Pod>() {}

/// Declares `#[repr(C)]` mirrors and `mirrors()`, the list the layout test walks.
///
/// Every field type must be `aya::Pod`, and the struct may not contain implicit padding (checked
/// at compile time), which is what makes the `Pod` impl sound: aya copies these values to and
/// from the kernel as raw bytes, and padding bytes would be uninitialised.
macro_rules! abi_structs {
    ($(
        $(#[$meta:meta])*
        $c_name:literal => pub struct $ty:ident { $($(#[$fmeta:meta])* pub $field:ident: $fty:ty),* $(,)? }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $ty { $($(#[$fmeta])* pub $field: $fty),* }

            const _: () = {
                $(assert_pod::<$fty>();)*
                assert!(
                    size_of::<$ty>() == 0 $(+ size_of::<$fty>())*,
                    concat!(stringify!($ty), " has implicit padding: add explicit pad fields on both sides")
                );
            };

            // SAFETY: `$ty` is `repr(C)`, every field is `Pod` (checked above), and it has no
            // padding (checked above), so every byte is initialised and any bit pattern is valid.
            unsafe impl aya::Pod for $ty {}
        )*

        /// Every mirror with the layout it claims; the layout test checks each against BTF.
        pub fn mirrors() -> Vec<MirrorLayout> {
            vec![$(
                MirrorLayout {
                    c_name: $c_name,
                    fields: vec![$(FieldLayout {
                        name: stringify!($field),
                        offset: core::mem::offset_of!($ty, $field),
                        size: field_size(|s: &$ty| &s.$field),
                    }),*],
                    size: size_of::<$ty>(),
                },
            )*]
        }
    };
}

abi_structs! {
    /// Value of maps `fr_iface_stats` (one per CPU), keyed by ingress ifindex (`u32`), and
    /// `fr_iface_stats_arr`, indexed by the ifindexes below [`IFACE_STATS_ARR_SIZE`].
    "fr_iface_stats" => pub struct IfaceStats {
        pub packets: u64,
        pub bytes: u64,
    }

    /// Key of `fr_lb_services`. Addresses and ports in network byte order; IPv4 in `vip[..4]`.
    "fr_lb_service_key" => pub struct LbServiceKey {
        pub vip: [u8; 16],
        pub port: u16,
        pub proto: u8,
        pub family: u8,
    }

    /// Value of `fr_lb_services`.
    "fr_lb_service" => pub struct LbService {
        pub id: u32,
        pub mode: u8,
        pub flags: u8,
        pub pad: u16,
    }

    /// Value of `fr_lb_backends` (array indexed by backend id); `family` 0 = no backend.
    "fr_lb_backend" => pub struct LbBackend {
        pub addr: [u8; 16],
        pub port: u16,
        pub family: u8,
        pub flags: u8,
    }

    /// The one value of `fr_lb_config`.
    "fr_lb_config" => pub struct LbConfig {
        pub node_v4: [u8; 4],
        pub node_v6: [u8; 16],
        pub flags: u32,
    }

    /// The one value of the private `lb_nat_ports`: SNAT ports `[first, first + count)`.
    "fr_lb_nat_ports" => pub struct LbNatPorts {
        pub first: u32,
        pub count: u32,
    }

    /// Key of `fr_lb_ct` and `fr_lb_nat`: one direction of a connection.
    "fr_lb_flow" => pub struct LbFlow {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub sport: u16,
        pub dport: u16,
        pub proto: u8,
        pub family: u8,
        pub pad: u16,
    }

    /// Value of `fr_lb_ct`.
    "fr_lb_ct_entry" => pub struct LbCtEntry {
        pub created_ns: u64,
        pub last_seen_ns: u64,
        pub backend_id: u32,
        pub service_id: u32,
        pub nat_port: u16,
        pub nat_epoch: u16,
        pub backend_tag: u32,
    }

    /// Value of `fr_lb_nat`.
    "fr_lb_nat_entry" => pub struct LbNatEntry {
        pub client: [u8; 16],
        pub vip: [u8; 16],
        pub client_port: u16,
        pub vip_port: u16,
        pub service_id: u32,
        pub backend_id: u32,
        pub pad: u32,
    }

    /// Key of `fr_lb_frags`.
    "fr_lb_frag_key" => pub struct LbFragKey {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub id: u32,
        pub proto: u8,
        pub family: u8,
        pub pad: u16,
    }

    /// Value of `fr_lb_frags`.
    "fr_lb_frag_entry" => pub struct LbFragEntry {
        pub backend_id: u32,
        pub service_id: u32,
    }

    /// Value of `fr_lb_service_stats` and `fr_lb_backend_stats` (one per CPU).
    "fr_lb_counters" => pub struct LbCountersRaw {
        pub packets: u64,
        pub bytes: u64,
        pub new_flows: u64,
        pub drops: [u64; LB_DROP_MAX],
    }

    /// Value of `fr_lb_service_traffic` and `fr_lb_backend_traffic` (one per CPU), indexed by the
    /// ids below [`LB_TRAFFIC_ARR_SIZE`]: their packets and bytes, which `fr_lb_counters` holds
    /// for higher ids.
    "fr_lb_traffic" => pub struct LbTraffic {
        pub packets: u64,
        pub bytes: u64,
    }

    /// Key of `fr_decap_addrs`.
    "fr_decap_addr" => pub struct DecapAddr {
        pub addr: [u8; 16],
        pub family: u8,
        pub pad: [u8; 3],
    }

    /// Value of the benchmark generator's `gen_ctl` (`bpf/xdp_gen.bpf.c`, not the datapath),
    /// written by user space only: how many frames a run may send (0 stops it) and how many
    /// are prepared.
    "fr_gen_ctl" => pub struct GenCtl {
        pub limit: u64,
        pub frames: u32,
        pub pad: u32,
    }

    /// Value of the benchmark generator's `gen_state`, written by the program only: frames sent in
    /// this run, and the next to send.
    "fr_gen_state" => pub struct GenState {
        pub sent: u64,
        pub next: u32,
        pub pad: u32,
    }

    /// Value of the benchmark forwarder's `fwd_ctl` (`bpf/xdp_gen.bpf.c`, not the datapath):
    /// where `xdp_fwd` redirects to, and the MAC addresses it writes.
    "fr_fwd_ctl" => pub struct FwdCtl {
        pub ifindex: u32,
        pub dmac: [u8; 6],
        pub smac: [u8; 6],
    }
}

/// `#define`s and enum values of `ferrule_abi.h`, by their C names; `tests` checks each against
/// the header text, since BTF does not carry macros.
macro_rules! abi_consts {
    ($($(#[$meta:meta])* $c_name:literal => pub const $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$meta])* pub const $name: $ty = $value;)*

        /// Every mirrored constant as (C name, value).
        pub fn constants() -> Vec<(&'static str, u64)> {
            vec![$(($c_name, $name as u64)),*]
        }
    };
}

abi_consts! {
    "FR_FAMILY_IPV4" => pub const FAMILY_IPV4: u8 = 4;
    "FR_FAMILY_IPV6" => pub const FAMILY_IPV6: u8 = 6;
    "FR_LB_MODE_DSR" => pub const LB_MODE_DSR: u8 = 1;
    "FR_LB_MODE_NAT" => pub const LB_MODE_NAT: u8 = 2;
    "FR_LB_MAX_SERVICES" => pub const LB_MAX_SERVICES: u32 = 131_072;
    "FR_LB_MAX_BACKENDS" => pub const LB_MAX_BACKENDS: u32 = 65_536;
    "FR_LB_NAT_PORT_MIN" => pub const LB_NAT_PORT_MIN: u16 = 10_000;
    "FR_LB_NAT_PORT_COUNT" => pub const LB_NAT_PORT_COUNT: u16 = 22_768;
    "FR_LB_ENCAP4_OVERHEAD" => pub const LB_ENCAP4_OVERHEAD: usize = 20;
    "FR_LB_ENCAP6_OVERHEAD" => pub const LB_ENCAP6_OVERHEAD: usize = 40;
    "FR_LB_BE_DOWN" => pub const LB_BE_DOWN: u8 = 1;
    "FR_LB_CFG_HAVE_V4" => pub const LB_CFG_HAVE_V4: u32 = 1;
    "FR_LB_CFG_HAVE_V6" => pub const LB_CFG_HAVE_V6: u32 = 2;
    "FR_LB_DROP_NO_BACKEND" => pub const LB_DROP_NO_BACKEND: usize = 0;
    "FR_LB_DROP_NO_NODE_ADDRESS" => pub const LB_DROP_NO_NODE_ADDRESS: usize = 1;
    "FR_LB_DROP_ENCAP_FAILED" => pub const LB_DROP_ENCAP_FAILED: usize = 2;
    "FR_LB_DROP_NAT_PORTS" => pub const LB_DROP_NAT_PORTS: usize = 3;
    "FR_LB_DROP_NAT_FAMILY" => pub const LB_DROP_NAT_FAMILY: usize = 4;
    "FR_LB_DROP_MAX" => pub const LB_DROP_MAX: usize = 8;
    "FR_LB_TRAFFIC_ARR_SIZE" => pub const LB_TRAFFIC_ARR_SIZE: u32 = 4096;
    "FR_LB_VIP_SLOT_BITS" => pub const LB_VIP_SLOT_BITS: u32 = 22;
    "FR_LB_VIP_WORDS" => pub const LB_VIP_WORDS: u32 = 65_536;
    "FR_LB_VIP_MUL" => pub const LB_VIP_MUL: u32 = 2_654_435_761;
    "FR_LB_FC_SLOTS" => pub const LB_FC_SLOTS: u32 = 4096;
    "FR_IFACE_STATS_ARR_SIZE" => pub const IFACE_STATS_ARR_SIZE: u32 = 1024;
    "FR_LB_EV_MALFORMED" => pub const LB_EV_MALFORMED: u32 = 0;
    "FR_LB_EV_EXT_HDR_LIMIT" => pub const LB_EV_EXT_HDR_LIMIT: u32 = 1;
    "FR_LB_EV_FRAG_UNKNOWN" => pub const LB_EV_FRAG_UNKNOWN: u32 = 2;
    "FR_LB_EV_FIB_PASS" => pub const LB_EV_FIB_PASS: u32 = 3;
    "FR_LB_EV_MTU_PASS" => pub const LB_EV_MTU_PASS: u32 = 4;
    "FR_LB_EV_NAT_UNHANDLED" => pub const LB_EV_NAT_UNHANDLED: u32 = 5;
    "FR_LB_EV_ICMP_FORWARDED" => pub const LB_EV_ICMP_FORWARDED: u32 = 6;
    "FR_LB_EV_ICMP_NO_FLOW" => pub const LB_EV_ICMP_NO_FLOW: u32 = 7;
    "FR_LB_EV_FRAG_FORWARDED" => pub const LB_EV_FRAG_FORWARDED: u32 = 8;
    "FR_LB_EV_NAT_REPLY" => pub const LB_EV_NAT_REPLY: u32 = 9;
    "FR_LB_EV_VLAN_REDIRECT" => pub const LB_EV_VLAN_REDIRECT: u32 = 10;
    "FR_LB_EV_TOO_BIG" => pub const LB_EV_TOO_BIG: u32 = 11;
    "FR_LB_EV_MAX" => pub const LB_EV_MAX: u32 = 16;
    "FR_DECAP_EV_DECAPSULATED" => pub const DECAP_EV_DECAPSULATED: u32 = 0;
    "FR_DECAP_EV_NOT_LOCAL" => pub const DECAP_EV_NOT_LOCAL: u32 = 1;
    "FR_DECAP_EV_FAILED" => pub const DECAP_EV_FAILED: u32 = 2;
    "FR_DECAP_EV_MALFORMED" => pub const DECAP_EV_MALFORMED: u32 = 3;
    "FR_DECAP_EV_MAX" => pub const DECAP_EV_MAX: u32 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `name` in ferrule_abi.h, as `#define NAME value` or enum `NAME = value`.
    fn header_value(header: &str, name: &str) -> Option<u64> {
        header.lines().find_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("#define ").unwrap_or(line);
            let rest = rest.strip_prefix(name)?;
            if !rest.starts_with([' ', '\t']) {
                return None; // a longer name with this prefix
            }
            let value = rest.trim_start().trim_start_matches('=').trim_start();
            let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }

    #[test]
    fn constants_match_the_header() {
        let header = include_str!("../include/ferrule_abi.h");
        for (name, value) in constants() {
            assert_eq!(header_value(header, name), Some(value), "{name} in ferrule_abi.h");
        }
    }

    #[test]
    fn mirrors_describe_their_own_fields_in_declaration_order() {
        let stats = mirrors().into_iter().find(|m| m.c_name == "fr_iface_stats").expect("IfaceStats is listed");
        assert_eq!(stats.size, 16);
        assert_eq!(
            stats.fields,
            vec![
                FieldLayout { name: "packets", offset: 0, size: 8 },
                FieldLayout { name: "bytes", offset: 8, size: 8 },
            ]
        );
    }
}
