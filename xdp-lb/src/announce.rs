//! Which service VIPs this node should announce over BGP, from the services and their backends'
//! health. Pure: the BGP reconciler turns the set into announcements and withdrawals.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ferrule_config::{AnnounceWhen, Service};
use ipnet::IpNet;

use crate::{HealthView, ServiceKey};

/// The VIPs to announce, as host prefixes (/32, /128). A VIP is announced while at least one of its
/// services qualifies: `announce = "healthy"` needs a backend that can take new flows (healthy and
/// not drained, i.e. weight > 0), `announce = "local"` such a backend whose address is on this node
/// (`local`). Several services (ports) on one VIP share the one prefix, so the VIP stays announced
/// while any of them qualifies. A service whose backends are all drained attracts no traffic: its
/// table is empty, so it could only drop new flows.
pub fn vips_to_announce<'a>(
    desired: impl IntoIterator<Item = &'a Service>,
    health: &HealthView,
    local: impl Fn(IpAddr) -> bool,
) -> BTreeSet<IpNet> {
    desired
        .into_iter()
        .filter(|service| {
            let key = ServiceKey::of(service);
            service.backends.iter().any(|b| {
                b.weight > 0
                    && health.is_healthy(&key, SocketAddr::new(b.address, b.port))
                    && match service.announce {
                        AnnounceWhen::Healthy => true,
                        AnnounceWhen::Local => local(b.address),
                    }
            })
        })
        .map(|service| IpNet::from(service.vip))
        .collect()
}

#[cfg(test)]
mod tests {
    use ferrule_config::{Backend, Mode, Protocol};

    use super::*;
    use crate::BackendHealth;

    fn service(vip: &str, port: u16, backends: &[&str], announce: AnnounceWhen) -> Service {
        Service {
            name: format!("{vip}-{port}"),
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            mode: Mode::Dsr,
            backends: backends.iter().map(|a| Backend { address: a.parse().unwrap(), port: 8080, weight: 1 }).collect(),
            health: None,
            announce,
            maglev_table_size: 65537,
        }
    }

    fn down(view: &mut HealthView, service: &Service, backend: &str) {
        let addr = SocketAddr::new(backend.parse().unwrap(), 8080);
        view.set(ServiceKey::of(service), addr, BackendHealth::Unhealthy { reason: "refused".to_owned() });
    }

    fn prefixes(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    const NOT_LOCAL: fn(IpAddr) -> bool = |_| false;

    #[test]
    fn announces_vips_with_a_healthy_backend_as_host_prefixes() {
        let services = [
            service("192.0.2.10", 80, &["198.51.100.1"], AnnounceWhen::Healthy),
            service("2001:db8:200::10", 443, &["2001:db8:300::21"], AnnounceWhen::Healthy),
        ];
        let got = vips_to_announce(&services, &HealthView::default(), NOT_LOCAL);
        assert_eq!(got, prefixes(&["192.0.2.10/32", "2001:db8:200::10/128"]));
    }

    #[test]
    fn withdraws_vip_when_last_backend_unhealthy() {
        let svc = service("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"], AnnounceWhen::Healthy);
        let mut view = HealthView::default();
        down(&mut view, &svc, "198.51.100.1");
        let services = [svc.clone()];
        assert_eq!(vips_to_announce(&services, &view, NOT_LOCAL), prefixes(&["192.0.2.10/32"]));
        down(&mut view, &svc, "198.51.100.2");
        assert!(vips_to_announce(&services, &view, NOT_LOCAL).is_empty());
    }

    #[test]
    fn local_announce_needs_a_healthy_backend_on_this_node() {
        let svc = service("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"], AnnounceWhen::Local);
        let services = [svc.clone()];
        let is_local = |a: IpAddr| a == "198.51.100.2".parse::<IpAddr>().unwrap();
        let mut view = HealthView::default();
        assert!(vips_to_announce(&services, &view, NOT_LOCAL).is_empty(), "no local backend");
        assert_eq!(vips_to_announce(&services, &view, is_local), prefixes(&["192.0.2.10/32"]));
        // The remote backend is healthy but does not count for `local`.
        down(&mut view, &svc, "198.51.100.2");
        assert!(vips_to_announce(&services, &view, is_local).is_empty());
    }

    #[test]
    fn vip_shared_by_two_ports_stays_while_either_qualifies() {
        let http = service("192.0.2.10", 80, &["198.51.100.1"], AnnounceWhen::Healthy);
        let https = service("192.0.2.10", 443, &["198.51.100.2"], AnnounceWhen::Healthy);
        let mut view = HealthView::default();
        down(&mut view, &http, "198.51.100.1");
        let services = [http, https.clone()];
        assert_eq!(vips_to_announce(&services, &view, NOT_LOCAL), prefixes(&["192.0.2.10/32"]));
        down(&mut view, &https, "198.51.100.2");
        assert!(vips_to_announce(&services, &view, NOT_LOCAL).is_empty());
    }

    #[test]
    fn health_is_per_service_for_a_shared_backend() {
        // One backend, two services: unhealthy for one service's check, healthy for the other's.
        let a = service("192.0.2.10", 80, &["198.51.100.1"], AnnounceWhen::Healthy);
        let b = service("192.0.2.11", 80, &["198.51.100.1"], AnnounceWhen::Healthy);
        let mut view = HealthView::default();
        down(&mut view, &a, "198.51.100.1");
        assert_eq!(vips_to_announce(&[a, b], &view, NOT_LOCAL), prefixes(&["192.0.2.11/32"]));
    }

    fn drain(service: &mut Service, backend: &str) {
        let address: IpAddr = backend.parse().unwrap();
        service.backends.iter_mut().filter(|b| b.address == address).for_each(|b| b.weight = 0);
    }

    #[test]
    fn counts_only_backends_that_can_take_new_flows() {
        let mut svc = service("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"], AnnounceWhen::Healthy);
        drain(&mut svc, "198.51.100.1");
        let mut view = HealthView::default();
        assert_eq!(vips_to_announce(&[svc.clone()], &view, NOT_LOCAL), prefixes(&["192.0.2.10/32"]));
        // The one backend with weight is down; the healthy one is drained: nothing takes new flows.
        down(&mut view, &svc, "198.51.100.2");
        assert!(vips_to_announce(&[svc], &view, NOT_LOCAL).is_empty());
    }

    #[test]
    fn withdraws_vip_when_every_backend_is_drained() {
        let mut svc = service("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"], AnnounceWhen::Healthy);
        drain(&mut svc, "198.51.100.1");
        drain(&mut svc, "198.51.100.2");
        assert!(vips_to_announce(&[svc.clone()], &HealthView::default(), NOT_LOCAL).is_empty());
        // Undrained: announced again.
        svc.backends[1].weight = 2;
        assert_eq!(vips_to_announce(&[svc], &HealthView::default(), NOT_LOCAL), prefixes(&["192.0.2.10/32"]));
    }

    #[test]
    fn local_announce_ignores_a_drained_local_backend() {
        let mut svc = service("192.0.2.10", 80, &["198.51.100.1", "198.51.100.2"], AnnounceWhen::Local);
        drain(&mut svc, "198.51.100.2");
        let is_local = |a: IpAddr| a == "198.51.100.2".parse::<IpAddr>().unwrap();
        assert!(vips_to_announce(&[svc], &HealthView::default(), is_local).is_empty());
    }
}
