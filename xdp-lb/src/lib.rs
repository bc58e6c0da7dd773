//! Load-balancer control plane: Maglev lookup tables, the service → map plan, VIP announcement and
//! backend health checks. It turns `[[services]]` of the model into operations on the XDP
//! datapath's maps and never touches a map itself; only the health checker opens sockets.
//!
//! Data flow: `checker::run` watches the services and publishes a `HealthView`; the appliance's
//! reconcile loop calls `plan(services, health, observed)` and applies the `LbOp`s in order, and
//! hands `vips_to_announce` to BGP.

mod announce;
pub mod checker;
pub mod health;
pub mod maglev;
pub mod plan;
pub mod write;

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ferrule_config::{Protocol, Service};

pub use announce::vips_to_announce;
pub use checker::{check_once, run as run_health_checker, CheckError};
pub use health::{seeded_view, BackendHealth, HealthView};
pub use maglev::{build_table, MaglevBackend, MaglevError};
pub use plan::{plan, plan_with, ApplyError, BackendEntry, LbOp, LbState, ServiceEntry, TableCache};
pub use write::{write_isolating, WriteStop, Written};

/// What identifies a service in the datapath: the frontend packets are matched on. Two services
/// with the same key cannot coexist (the config validation rejects it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceKey {
    pub fn of(service: &Service) -> ServiceKey {
        ServiceKey { vip: service.vip, port: service.port, protocol: service.protocol }
    }

    fn sort_key(&self) -> (IpAddr, u16, u8) {
        // `Protocol` has no `Ord`; TCP before UDP.
        let protocol = match self.protocol {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
        };
        (self.vip, self.port, protocol)
    }
}

impl Ord for ServiceKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for ServiceKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `192.0.2.10:80/tcp`, `[2001:db8::10]:443/tcp`: the form logs and `show` use.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.vip, self.port), self.protocol)
    }
}
