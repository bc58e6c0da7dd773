//! Prometheus metrics (prometheus-client), served on `--metrics-listen` at `GET /metrics`.
//! Counters owned by the daemon live here; datapath counters are read from the maps at scrape
//! time through the datapath task, so a scrape always shows what the kernel counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ferrule_bgp::driver::NeighborSummary;
use ferrule_ebpf::{DecapEvents, InterfaceStats, LbCounters, LbEvents};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::api::{drop_reasons, lb_event_counts, LbBackendView, LbServiceView};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigChangeLabels {
    pub source: String,
    pub result: String,
}

/// Handles to the daemon's metrics; clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub config_generation: Gauge,
    config_changes: Family<ConfigChangeLabels, Counter>,
    pub reconcile_passes: Counter,
    pub reconcile_errors: Counter,
    interfaces: Arc<InterfaceCollector>,
    bgp: Arc<BgpCollector>,
    lb: Arc<LbCollector>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferrule");
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())]).set(1);
        registry.register("build_info", "Ferrule build information", build_info);
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the running config (increases with every accepted change)",
            config_generation.clone(),
        );
        let config_changes = Family::<ConfigChangeLabels, Counter>::default();
        registry.register(
            "config_changes",
            "Config change attempts by source (file, sighup, api) and result (accepted, unchanged, rejected)",
            config_changes.clone(),
        );
        let reconcile_passes = Counter::default();
        registry.register("reconcile_passes", "Reconcile passes run", reconcile_passes.clone());
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that left something not applied (see the log and `ferrule show status`)",
            reconcile_errors.clone(),
        );
        let interfaces = Arc::new(InterfaceCollector::default());
        registry.register_collector(Box::new(interfaces.clone()));
        let bgp = Arc::new(BgpCollector::default());
        registry.register_collector(Box::new(bgp.clone()));
        let lb = Arc::new(LbCollector::default());
        registry.register_collector(Box::new(lb.clone()));
        Metrics {
            registry: Arc::new(registry),
            config_generation,
            config_changes,
            reconcile_passes,
            reconcile_errors,
            interfaces,
            bgp,
            lb,
        }
    }

    pub fn config_change(&self, source: &str, result: &str) {
        self.config_changes.get_or_create(&ConfigChangeLabels { source: source.into(), result: result.into() }).inc();
    }

    /// Renders the OpenMetrics text, with the interface counters of `stats`, the BGP
    /// neighbors' state and counters, the load balancer's services and backends, its node-wide
    /// events (`None` when the maps could not be read: no series rather than zeros), and
    /// `tc_decap`'s counters (`None` without `[decap]`).
    pub fn encode(
        &self,
        stats: Vec<InterfaceStats>,
        neighbors: Vec<NeighborSummary>,
        lb: Vec<LbServiceView>,
        lb_events: Option<LbEvents>,
        decap_events: Option<DecapEvents>,
    ) -> String {
        *self.interfaces.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        *self.bgp.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = neighbors;
        *self.lb.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = lb;
        *self.lb.events.lock().unwrap_or_else(|p| p.into_inner()) = lb_events;
        *self.lb.decap.lock().unwrap_or_else(|p| p.into_inner()) = decap_events;
        let mut out = String::new();
        // Encoding into a String cannot fail but for a fmt::Error from our own collectors.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%err, "encoding metrics failed");
        }
        out
    }
}

// Collectors name their series without the `ferrule_` prefix: the registry adds it, as it does
// for the metrics registered directly.

/// Exposes the XDP per-interface counters read at scrape time.
#[derive(Debug, Default)]
struct InterfaceCollector {
    snapshot: Mutex<Vec<InterfaceStats>>,
}

impl Collector for InterfaceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let label = |s: &InterfaceStats| {
            vec![
                ("interface", s.name.clone().unwrap_or_else(|| format!("ifindex{}", s.ifindex))),
                ("ifindex", s.ifindex.to_string()),
            ]
        };
        let mut packets = encoder.encode_descriptor(
            "interface_rx_packets",
            "Packets seen by the XDP datapath on an uplink",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.packets).encode(packets.encode_family(&label(s))?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "interface_rx_bytes",
            "Bytes seen by the XDP datapath on an uplink",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.bytes).encode(bytes.encode_family(&label(s))?)?;
        }
        Ok(())
    }
}

/// Per-neighbor BGP series read at scrape time from the speaker's summary.
#[derive(Debug, Default)]
struct BgpCollector {
    snapshot: Mutex<Vec<NeighborSummary>>,
}

/// RFC 4271 state as a number (1 Idle … 6 Established), as BGP MIBs and exporters report it.
fn state_number(state: &str) -> i64 {
    ["Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"]
        .iter()
        .position(|s| *s == state)
        .map_or(0, |i| i as i64 + 1)
}

impl Collector for BgpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let neighbors = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // A link-local neighbor is named by its link too: two ToRs may share an address.
        let labels = |n: &NeighborSummary| {
            let mut labels = vec![("peer", n.address.to_string()), ("peer_asn", n.asn.to_string())];
            if let Some(interface) = &n.interface {
                labels.push(("interface", interface.clone()));
            }
            labels
        };
        type Count = fn(&NeighborSummary) -> u64;
        type Level = fn(&NeighborSummary) -> i64;
        let counters: [(&str, &str, Count); 3] = [
            ("bgp_messages_received", "BGP messages received from the neighbor", |n| n.messages_in),
            ("bgp_messages_sent", "BGP messages sent to the neighbor", |n| n.messages_out),
            ("bgp_session_flaps", "Times the session left Established", |n| n.flaps),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for n in &neighbors {
                ConstCounter::new(value(n)).encode(family.encode_family(&labels(n))?)?;
            }
        }
        let gauges: [(&str, &str, Level); 3] = [
            (
                "bgp_session_state",
                "RFC 4271 state: 1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established",
                |n| state_number(&n.state),
            ),
            ("bgp_prefixes_accepted", "Prefixes in the neighbor's Adj-RIB-In after import policy", |n| {
                n.accepted as i64
            }),
            ("bgp_prefixes_sent", "Prefixes in the neighbor's Adj-RIB-Out", |n| n.sent as i64),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for n in &neighbors {
                ConstGauge::new(value(n)).encode(family.encode_family(&labels(n))?)?;
            }
        }
        Ok(())
    }
}

/// Per-service ("VIP") and per-backend series of the XDP load balancer, from the counter maps
/// read at scrape time, the health checker's verdicts and the announced VIPs, and its node-wide
/// events.
#[derive(Debug, Default)]
struct LbCollector {
    snapshot: Mutex<Vec<LbServiceView>>,
    events: Mutex<Option<LbEvents>>,
    /// The DSR backend side (`[decap]`), on the same node or another.
    decap: Mutex<Option<DecapEvents>>,
}

type Labels = Vec<(&'static str, String)>;

/// The labels that name a service: its name and frontend.
fn service_labels(s: &LbServiceView) -> Labels {
    let svc = &s.service;
    vec![
        ("service", svc.name.clone()),
        ("vip", svc.vip.to_string()),
        ("port", svc.port.to_string()),
        ("proto", svc.protocol.to_string()),
    ]
}

/// A service's labels and one more.
fn with_label(mut labels: Labels, key: &'static str, value: String) -> Labels {
    labels.push((key, value));
    labels
}

/// (name, help, which counter) of the series made of one [`LbCounters`] field.
type CounterSeries = (&'static str, &'static str, fn(&LbCounters) -> u64);

const VIP_COUNTERS: [CounterSeries; 3] = [
    (
        "lb_vip_packets",
        "Packets to the service (VIP, port, protocol) seen by the XDP load balancer, dropped ones included",
        |c| c.packets,
    ),
    ("lb_vip_bytes", "Bytes of the packets to the service, Ethernet header included", |c| c.bytes),
    ("lb_vip_new_flows", "Flows to the service without a conntrack entry that the load balancer gave a backend", |c| {
        c.new_flows
    }),
];

const BACKEND_COUNTERS: [CounterSeries; 3] = [
    (
        "lb_backend_packets",
        "Packets to a service that the load balancer sent towards the backend (address:port); its totals over \
         every service that lists it",
        |c| c.packets,
    ),
    (
        "lb_backend_bytes",
        "Bytes of those packets as received, Ethernet header included; totals over every service that lists it",
        |c| c.bytes,
    ),
    (
        "lb_backend_new_flows",
        "New flows the load balancer gave the backend; totals over every service that lists it",
        |c| c.new_flows,
    ),
];

fn encode_counters(
    encoder: &mut DescriptorEncoder,
    kinds: &[CounterSeries],
    series: &[(Labels, LbCounters)],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in kinds {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, c) in series {
            ConstCounter::new(value(c)).encode(family.encode_family(labels)?)?;
        }
    }
    Ok(())
}

/// One series per (labels, drop reason), the reason as label `reason`.
fn encode_drops(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, LbCounters)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, c) in series {
        for (reason, n) in drop_reasons(&c.drops) {
            ConstCounter::new(n).encode(family.encode_family(&with_label(
                labels.clone(),
                "reason",
                reason.into(),
            ))?)?;
        }
    }
    Ok(())
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Counters only where the maps were read: a made-up 0 would look like a counter reset.
        let vips: Vec<(Labels, LbCounters)> =
            services.iter().filter_map(|s| Some((service_labels(s), s.counters?))).collect();
        let backends: Vec<(&LbServiceView, &LbBackendView)> =
            services.iter().flat_map(|s| s.backends.iter().map(move |b| (s, b))).collect();
        let backend_labels = |s: &LbServiceView, b: &LbBackendView| {
            with_label(service_labels(s), "backend", SocketAddr::new(b.backend.address, b.backend.port).to_string())
        };

        encode_counters(&mut encoder, &VIP_COUNTERS, &vips)?;
        encode_drops(
            &mut encoder,
            "lb_vip_drops",
            "Packets to the service the load balancer dropped, by reason: no_backend (no healthy backend of weight > 0), \
             no_node_address (no node address of the tunnel's or SNAT's family), encap_failed (no headroom), \
             nat_ports (no free SNAT port), nat_family (NAT between IPv4 and IPv6)",
            &vips,
        )?;
        encode_gauge(
            &mut encoder,
            "lb_vip_announced",
            "1 while the service's VIP is announced over BGP (it has a healthy backend, per its announce rule), else 0",
            services.iter().map(|s| (service_labels(s), i64::from(s.announced))),
        )?;

        let counted: Vec<(Labels, LbCounters)> =
            backends.iter().filter_map(|(s, b)| Some((backend_labels(s, b), b.counters?))).collect();
        encode_counters(&mut encoder, &BACKEND_COUNTERS, &counted)?;
        encode_drops(
            &mut encoder,
            "lb_backend_drops",
            "Packets the load balancer dropped after choosing the backend, by reason (as for lb_vip_drops); totals \
             over every service that lists it",
            &counted,
        )?;
        encode_gauge(
            &mut encoder,
            "lb_backend_healthy",
            "1 while the backend passes its service's checks (or the service has none), 0 while it is unhealthy; \
             it gets new flows while healthy and its weight is above 0",
            backends.iter().map(|(s, b)| (backend_labels(s, b), i64::from(b.health.is_up()))),
        )?;
        encode_gauge(
            &mut encoder,
            "lb_backend_weight",
            "The backend's configured weight in the service; 0 = draining: no new flows, established ones carry on",
            backends.iter().map(|(s, b)| (backend_labels(s, b), i64::from(b.backend.weight))),
        )?;

        // Not read: no series, as for the counters above.
        if let Some(events) = *self.events.lock().unwrap_or_else(|p| p.into_inner()) {
            let mut family = encoder.encode_descriptor(
                "lb_events",
                "Node-wide events of the XDP load balancer, by event: packets it passed to the stack and why \
                 (e.g. fib_pass: no route or neighbour for the next hop yet; mtu_pass: over the route's MTU once \
                 encapsulated), ICMP errors, fragments and NAT replies it sent on; `ferrule show lb events` says \
                 what each means",
                None,
                MetricType::Counter,
            )?;
            for (event, n) in lb_event_counts(&events) {
                ConstCounter::new(n).encode(family.encode_family(&[("event", event)])?)?;
            }
        }
        if let Some(d) = *self.decap.lock().unwrap_or_else(|p| p.into_inner()) {
            let mut family = encoder.encode_descriptor(
                "decap_packets",
                "Tunnel packets tc_decap saw on this node as a DSR backend ([decap]), by event: decapsulated, \
                 not_local (to an address not in [decap] addresses: left alone), malformed (an outer header the \
                 stack drops: left alone), failed (the kernel refused to remove the header)",
                None,
                MetricType::Counter,
            )?;
            for e in &crate::decap::DECAP_EVENTS {
                ConstCounter::new((e.count)(&d)).encode(family.encode_family(&[("event", e.name)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Datapath, DatapathHandle, InMemoryDatapath};
    use crate::reconcile::Observed;
    use ferrule_ebpf::{LbDrops, UplinkStatus};
    use ferrule_xdp_lb::{BackendHealth, HealthView, LbOp, LbState, ServiceKey};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// `series` is one whole line of `text` (so a wrong prefix cannot hide behind a substring).
    fn assert_line(text: &str, series: &str) {
        assert!(text.lines().any(|l| l == series), "missing line {series}:\n{text}");
    }

    #[test]
    fn encodes_config_changes_and_interface_counters() {
        let metrics = Metrics::new();
        metrics.config_change("api", "rejected");
        metrics.config_generation.set(3);
        let neighbor = NeighborSummary {
            address: "2001:db8:1::1".parse().unwrap(),
            asn: 65000,
            state: "Established".into(),
            uptime_s: Some(1),
            received: 4,
            accepted: 3,
            rejected: 1,
            sent: 2,
            messages_in: 7,
            messages_out: 8,
            out_queue: 0,
            flaps: 1,
            hold_time: Some(90),
            families: vec![],
            last_error: None,
            interface: None,
            dynamic: None,
            graceful_restart: false,
            stale: 0,
            bfd: None,
        };
        // Two ToRs with one link-local address, each on its own link: two series.
        let tor = |interface: &str, messages_in| NeighborSummary {
            address: "fe80::1".parse().unwrap(),
            asn: 65001,
            interface: Some(interface.into()),
            messages_in,
            ..neighbor.clone()
        };
        let (tor_a, tor_b) = (tor("eth0", 11), tor("eth1", 12));
        let text = metrics.encode(
            vec![InterfaceStats { ifindex: 2, name: Some("eth0".into()), packets: 5, bytes: 640 }],
            vec![neighbor, tor_a, tor_b],
            vec![],
            None,
            None,
        );
        let peer = "{peer=\"2001:db8:1::1\",peer_asn=\"65000\"}";
        for series in [
            format!("ferrule_bgp_session_state{peer} 6"),
            "ferrule_bgp_messages_received_total{peer=\"fe80::1\",peer_asn=\"65001\",interface=\"eth0\"} 11".into(),
            "ferrule_bgp_messages_received_total{peer=\"fe80::1\",peer_asn=\"65001\",interface=\"eth1\"} 12".into(),
            format!("ferrule_bgp_messages_received_total{peer} 7"),
            format!("ferrule_bgp_session_flaps_total{peer} 1"),
            format!("ferrule_bgp_prefixes_accepted{peer} 3"),
            "ferrule_config_changes_total{source=\"api\",result=\"rejected\"} 1".into(),
            "ferrule_config_generation 3".into(),
            "ferrule_interface_rx_packets_total{interface=\"eth0\",ifindex=\"2\"} 5".into(),
            "ferrule_interface_rx_bytes_total{interface=\"eth0\",ifindex=\"2\"} 640".into(),
            format!("ferrule_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        ] {
            assert_line(&text, &series);
        }
    }

    #[test]
    fn encodes_decap_counters_only_when_decap_is_set_up() {
        let events = DecapEvents { decapsulated: 7, not_local: 2, failed: 0, malformed: 1 };
        let text = Metrics::new().encode(vec![], vec![], vec![], None, Some(events));
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("ferrule_decap_packets")).collect();
        assert_eq!(
            series,
            [
                "ferrule_decap_packets_total{event=\"decapsulated\"} 7",
                "ferrule_decap_packets_total{event=\"not_local\"} 2",
                "ferrule_decap_packets_total{event=\"malformed\"} 1",
                "ferrule_decap_packets_total{event=\"failed\"} 0",
            ]
        );
        let text = Metrics::new().encode(vec![], vec![], vec![], None, None);
        assert!(!text.contains("decap"), "{text}");
    }

    #[test]
    fn encodes_one_lb_events_series_per_event_and_none_when_not_read() {
        // A zero is a series too.
        let events = LbEvents { vlan_redirect: 0, ..crate::api::tests::distinct_events() };
        let text = Metrics::new().encode(vec![], vec![], vec![], Some(events), None);
        let series: Vec<&str> = text.lines().filter(|l| l.contains("ferrule_lb_events")).collect();
        assert_eq!(
            series[..2],
            [
                "# HELP ferrule_lb_events Node-wide events of the XDP load balancer, by event: packets it passed to the \
                 stack and why (e.g. fib_pass: no route or neighbour for the next hop yet; mtu_pass: over the route's \
                 MTU once encapsulated), ICMP errors, fragments and NAT replies it sent on; `ferrule show lb events` \
                 says what each means",
                "# TYPE ferrule_lb_events counter",
            ]
        );
        assert_eq!(
            series[2..],
            [
                "ferrule_lb_events_total{event=\"malformed\"} 1",
                "ferrule_lb_events_total{event=\"ext_hdr_limit\"} 2",
                "ferrule_lb_events_total{event=\"frag_unknown\"} 3",
                "ferrule_lb_events_total{event=\"fib_pass\"} 4",
                "ferrule_lb_events_total{event=\"mtu_pass\"} 5",
                "ferrule_lb_events_total{event=\"nat_unhandled\"} 6",
                "ferrule_lb_events_total{event=\"icmp_forwarded\"} 7",
                "ferrule_lb_events_total{event=\"icmp_no_flow\"} 8",
                "ferrule_lb_events_total{event=\"frag_forwarded\"} 9",
                "ferrule_lb_events_total{event=\"nat_reply\"} 10",
                // Zero events are series too, so a rate() has a start.
                "ferrule_lb_events_total{event=\"vlan_redirect\"} 0",
                "ferrule_lb_events_total{event=\"too_big\"} 12",
            ]
        );

        // The maps could not be read: no family at all rather than made-up zeros.
        let text = Metrics::new().encode(vec![], vec![], vec![], None, None);
        assert!(!text.contains("ferrule_lb_events"), "{text}");
    }

    /// The in-memory datapath, with counters that tell ids apart: service `n` counted 1000·n
    /// packets, 64000·n bytes, 10·n new flows and n `no_backend` drops; backend `n` 100·n
    /// packets, 6400·n bytes, n new flows, n `encap_failed` and 2·n `nat_ports` drops.
    struct Counting(InMemoryDatapath);

    impl Datapath for Counting {
        fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
            self.0.set_uplinks(uplinks)
        }
        fn interface_stats(&self) -> anyhow::Result<Vec<InterfaceStats>> {
            self.0.interface_stats()
        }
        fn lb_state(&mut self) -> anyhow::Result<LbState> {
            self.0.lb_state()
        }
        fn write_lb(&mut self, ops: &[LbOp]) -> Result<(), ferrule_xdp_lb::WriteStop<anyhow::Error>> {
            self.0.write_lb(ops)
        }
        fn set_node_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> anyhow::Result<()> {
            self.0.set_node_addresses(v4, v6)
        }
        fn set_snat_ports(&mut self, ports: ferrule_config::PortRange) -> anyhow::Result<()> {
            self.0.set_snat_ports(ports)
        }
        fn lb_counters(
            &mut self,
            services: &[u32],
            backends: &[u32],
        ) -> anyhow::Result<(Vec<LbCounters>, Vec<LbCounters>)> {
            let service = |n: u64| LbCounters {
                packets: 1000 * n,
                bytes: 64000 * n,
                new_flows: 10 * n,
                drops: LbDrops { no_backend: n, ..Default::default() },
            };
            let backend = |n: u64| LbCounters {
                packets: 100 * n,
                bytes: 6400 * n,
                new_flows: n,
                drops: LbDrops { encap_failed: n, nat_ports: 2 * n, ..Default::default() },
            };
            Ok((
                services.iter().map(|&id| service(id.into())).collect(),
                backends.iter().map(|&id| backend(id.into())).collect(),
            ))
        }
        fn lb_events(&self) -> anyhow::Result<LbEvents> {
            self.0.lb_events()
        }
        fn set_decap(&mut self, want: &ferrule_config::Decap) -> anyhow::Result<crate::datapath::DecapStatus> {
            self.0.set_decap(want)
        }
        fn decap_events(&self) -> anyhow::Result<Option<ferrule_ebpf::DecapEvents>> {
            self.0.decap_events()
        }
        fn attached(&self) -> anyhow::Result<crate::datapath::Attached> {
            self.0.attached()
        }
    }

    const LB_CONFIG: &str = "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n\
        [[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n\
        health = { kind = \"tcp\", interval_ms = 1000 }\n\
        backends = [ { address = \"198.51.100.2\", port = 8080 }, { address = \"198.51.100.3\", port = 8080, weight = 0 } ]\n\
        [[services]]\nname = \"dns\"\nvip = \"2001:db8:200::53\"\nport = 53\nprotocol = \"udp\"\nmode = \"dsr\"\n\
        backends = [ { address = \"2001:db8:300::21\", port = 53 } ]\n";

    #[tokio::test]
    async fn encodes_lb_series_per_vip_and_backend_from_the_datapath_counters() {
        let model = ferrule_config::parse("t.toml", LB_CONFIG).unwrap();
        let web = ServiceKey::of(&model.services[0]);
        let mut health = HealthView::default();
        health.set(web, "198.51.100.2:8080".parse().unwrap(), BackendHealth::Healthy);
        let refused = BackendHealth::Unhealthy { reason: "connect: refused".into() };
        health.set(web, "198.51.100.3:8080".parse().unwrap(), refused);
        let datapath =
            DatapathHandle::spawn("/nonexistent".into(), || Ok(Counting(InMemoryDatapath::new(&[])))).unwrap();
        let ops = ferrule_xdp_lb::plan(&model.services, &health, &LbState::default());
        assert!(datapath.apply_lb(LbState::default(), ops).await.unwrap().is_complete());
        let lb = datapath.lb_state().await.unwrap();
        let id = |key: &ServiceKey| u64::from(lb.services[key].id);
        let backend_id = |addr: &str| {
            let addr: SocketAddr = addr.parse().unwrap();
            let found = lb.backends.iter().find(|(_, b)| SocketAddr::new(b.address, b.port) == addr);
            u64::from(*found.unwrap().0)
        };
        let (web_id, dns_id) = (id(&web), id(&ServiceKey::of(&model.services[1])));
        let observed =
            Observed { lb: Some(lb.clone()), announced_vips: vec!["203.0.113.10/32".into()], ..Default::default() };
        let now = tokio::time::Instant::now();
        let view = crate::api::lb_view_of(&model.services, &observed, &health, &datapath, None, now).await;
        let text = Metrics::new().encode(vec![], vec![], view, None, None);

        let web_labels = "service=\"web\",vip=\"203.0.113.10\",port=\"80\",proto=\"tcp\"";
        let dns_labels = "service=\"dns\",vip=\"2001:db8:200::53\",port=\"53\",proto=\"udp\"";
        let (up, down, dns_backend) = ("198.51.100.2:8080", "198.51.100.3:8080", "[2001:db8:300::21]:53");
        for series in [
            format!("ferrule_lb_vip_packets_total{{{web_labels}}} {}", 1000 * web_id),
            format!("ferrule_lb_vip_bytes_total{{{web_labels}}} {}", 64000 * web_id),
            format!("ferrule_lb_vip_new_flows_total{{{web_labels}}} {}", 10 * web_id),
            format!("ferrule_lb_vip_packets_total{{{dns_labels}}} {}", 1000 * dns_id),
            format!("ferrule_lb_vip_drops_total{{{web_labels},reason=\"no_backend\"}} {web_id}"),
            format!("ferrule_lb_vip_drops_total{{{web_labels},reason=\"nat_ports\"}} 0"),
            format!("ferrule_lb_vip_announced{{{web_labels}}} 1"),
            format!("ferrule_lb_vip_announced{{{dns_labels}}} 0"),
            format!("ferrule_lb_backend_packets_total{{{web_labels},backend=\"{up}\"}} {}", 100 * backend_id(up)),
            format!("ferrule_lb_backend_bytes_total{{{web_labels},backend=\"{down}\"}} {}", 6400 * backend_id(down)),
            format!("ferrule_lb_backend_new_flows_total{{{web_labels},backend=\"{up}\"}} {}", backend_id(up)),
            format!("ferrule_lb_backend_new_flows_total{{{dns_labels},backend=\"{dns_backend}\"}} {}", {
                backend_id(dns_backend)
            }),
            format!("ferrule_lb_backend_drops_total{{{web_labels},backend=\"{up}\",reason=\"encap_failed\"}} {}", {
                backend_id(up)
            }),
            format!("ferrule_lb_backend_drops_total{{{web_labels},backend=\"{down}\",reason=\"nat_ports\"}} {}", {
                2 * backend_id(down)
            }),
            format!("ferrule_lb_backend_drops_total{{{dns_labels},backend=\"{dns_backend}\",reason=\"no_backend\"}} 0"),
            format!("ferrule_lb_backend_healthy{{{web_labels},backend=\"{up}\"}} 1"),
            format!("ferrule_lb_backend_healthy{{{web_labels},backend=\"{down}\"}} 0"),
            // No health check: taken as healthy.
            format!("ferrule_lb_backend_healthy{{{dns_labels},backend=\"{dns_backend}\"}} 1"),
            "# TYPE ferrule_lb_vip_drops counter".into(),
            "# TYPE ferrule_lb_backend_drops counter".into(),
            "# TYPE ferrule_lb_backend_healthy gauge".into(),
            format!("ferrule_lb_backend_weight{{{web_labels},backend=\"{up}\"}} 1"),
            format!("ferrule_lb_backend_weight{{{web_labels},backend=\"{down}\"}} 0"),
        ] {
            assert_line(&text, &series);
        }
        assert!(
            text.contains("\n# HELP ferrule_lb_vip_packets Packets to the service (VIP, port, protocol)"),
            "{text}"
        );

        // Before the maps are read (no ids), the gauges are there but no counter is made up.
        let view = crate::api::lb_view_of(&model.services, &Observed::default(), &health, &datapath, None, now).await;
        let text = Metrics::new().encode(vec![], vec![], view, None, None);
        assert_line(&text, &format!("ferrule_lb_vip_announced{{{web_labels}}} 0"));
        assert!(!text.contains("ferrule_lb_vip_packets_total{"), "{text}");
        assert!(!text.contains("ferrule_lb_backend_new_flows_total{"), "{text}");
        assert!(!text.contains("ferrule_lb_backend_drops_total{"), "{text}");
    }
}
