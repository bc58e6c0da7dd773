//! What one configured peering asks of the FSM, and its validation. Owns the checks that make
//! the OPEN we send legal; the daemon's config crate validates the TOML before it gets here.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::wire::{EncodeError, Family};

/// Hold time proposed when the configuration does not say (RFC 4271 10 suggests 90 s).
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// Datacenter default; RFC 4271 10 suggests 120 s, which is far too slow to bring a ToR
/// session back after a link flap.
pub const DEFAULT_CONNECT_RETRY: Duration = Duration::from_secs(5);
/// Cap of the exponential idle-hold backoff between automatic restarts.
pub const DEFAULT_IDLE_HOLD_MAX: Duration = Duration::from_secs(120);

/// One configured peering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_asn: u32,
    pub local_router_id: Ipv4Addr,
    pub peer_asn: u32,
    /// Only used in messages and logs: the driver owns addressing.
    pub peer_addr: IpAddr,
    /// Hold time we propose, in seconds: 0 (no keepalives, no hold timer) or at least 3.
    pub hold_time: u16,
    /// Delay between outbound connection attempts, and the base of the idle-hold backoff.
    pub connect_retry: Duration,
    /// Never initiate a connection; only accept the peer's.
    pub passive: bool,
    /// Families sent as Multiprotocol capabilities (RFC 4760). Empty: no Multiprotocol
    /// capability is sent, which peers read as IPv4 unicast only.
    pub families: Vec<Family>,
    /// Advertise RFC 8950 Extended Next Hop for IPv4 unicast with an IPv6 next hop.
    pub extended_nexthop: bool,
    /// Advertise the Graceful Restart capability (RFC 4724).
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Advertise Extended Message (RFC 8654).
    pub extended_message: bool,
    /// Longest wait in Idle between automatic restarts (the backoff doubles up to this).
    pub idle_hold_max: Duration,
    /// Seed of the timer jitter (RFC 4271 10: ConnectRetry and Keepalive times are multiplied
    /// by a factor in 0.75..=1.0 so that many sessions do not fire in lockstep). `None`
    /// disables jitter (tests that want exact deadlines).
    pub jitter_seed: Option<u64>,
}

/// Our Graceful Restart capability (RFC 4724 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds the peer should keep our routes after the session drops (12 bits: <= 4095).
    pub restart_time: u16,
    /// R bit: we are coming back from a restart.
    pub restarting: bool,
    /// F bit for every configured family: forwarding state (the pinned datapath maps) survived.
    pub forwarding_preserved: bool,
}

impl SessionConfig {
    /// A configuration with the defaults: hold 90 s, connect retry 5 s, active, IPv4 and IPv6
    /// unicast, no extended next hop, graceful restart or extended message, jitter seeded from
    /// the two addresses so that every peering gets its own sequence.
    pub fn new(local_asn: u32, local_router_id: Ipv4Addr, peer_asn: u32, peer_addr: IpAddr) -> Self {
        SessionConfig {
            local_asn,
            local_router_id,
            peer_asn,
            peer_addr,
            hold_time: DEFAULT_HOLD_TIME,
            connect_retry: DEFAULT_CONNECT_RETRY,
            passive: false,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            extended_nexthop: false,
            graceful_restart: None,
            extended_message: false,
            idle_hold_max: DEFAULT_IDLE_HOLD_MAX,
            jitter_seed: Some(default_seed(local_router_id, peer_addr)),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let peer = self.peer_addr;
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(ConfigError::HoldTime { peer, value: self.hold_time });
        }
        if self.local_router_id.is_unspecified() {
            return Err(ConfigError::RouterId { peer });
        }
        if self.local_asn == 0 || self.peer_asn == 0 {
            return Err(ConfigError::ZeroAsn { peer });
        }
        if self.connect_retry.is_zero() {
            return Err(ConfigError::ConnectRetry { peer });
        }
        if self.idle_hold_max < self.connect_retry {
            return Err(ConfigError::IdleHoldMax { peer });
        }
        if let Some(gr) = self.graceful_restart {
            if gr.restart_time > 4095 {
                return Err(ConfigError::RestartTime { peer, value: gr.restart_time });
            }
        }
        Ok(())
    }
}

/// Mixes the router id and peer address (splitmix64 finaliser) so two peerings on the same
/// node never share a jitter sequence.
fn default_seed(router_id: Ipv4Addr, peer: IpAddr) -> u64 {
    let p = match peer {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let mut z = (u64::from(u32::from(router_id)) << 32) ^ (p as u64) ^ ((p >> 64) as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A peering configuration the FSM cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("peer {peer}: hold time {value} s is not allowed (RFC 4271 4.2: 0 or at least 3); set hold_time to 0 or 3..=65535")]
    HoldTime { peer: IpAddr, value: u16 },
    #[error("peer {peer}: local router id is 0.0.0.0, which no peer accepts (RFC 6286); set router_id to a non-zero address")]
    RouterId { peer: IpAddr },
    #[error("peer {peer}: AS number 0 is reserved (RFC 7607); set both the local and the peer AS")]
    ZeroAsn { peer: IpAddr },
    #[error("peer {peer}: connect retry time is zero, which would reconnect in a busy loop; set it to at least 1 s")]
    ConnectRetry { peer: IpAddr },
    #[error("peer {peer}: idle hold maximum is shorter than the connect retry time; raise it")]
    IdleHoldMax { peer: IpAddr },
    #[error("peer {peer}: graceful restart time {value} s does not fit the 12-bit field; use at most 4095")]
    RestartTime { peer: IpAddr, value: u16 },
    #[error("peer {peer}: our OPEN cannot be encoded: {source}")]
    Open {
        peer: IpAddr,
        #[source]
        source: EncodeError,
    },
}
