//! Prometheus metrics (prometheus-client), served on `--metrics-listen` at `GET /metrics`.
//! Counters owned by the daemon live here; datapath counters are read from the maps at scrape
//! time through the datapath task, so a scrape always shows what the kernel counted.

use std::sync::{Arc, Mutex};

use ferrule_bgp::driver::NeighborSummary;
use ferrule_ebpf::InterfaceStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
        Metrics {
            registry: Arc::new(registry),
            config_generation,
            config_changes,
            reconcile_passes,
            reconcile_errors,
            interfaces,
            bgp,
        }
    }

    pub fn config_change(&self, source: &str, result: &str) {
        self.config_changes.get_or_create(&ConfigChangeLabels { source: source.into(), result: result.into() }).inc();
    }

    /// Renders the OpenMetrics text, with the interface counters of `stats` and the BGP
    /// neighbors' state and counters.
    pub fn encode(&self, stats: Vec<InterfaceStats>, neighbors: Vec<NeighborSummary>) -> String {
        *self.interfaces.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        *self.bgp.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = neighbors;
        let mut out = String::new();
        // Encoding into a String cannot fail but for a fmt::Error from our own collectors.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%err, "encoding metrics failed");
        }
        out
    }
}

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
            "ferrule_interface_rx_packets",
            "Packets seen by the XDP datapath on an uplink",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.packets).encode(packets.encode_family(&label(s))?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "ferrule_interface_rx_bytes",
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
        let labels = |n: &NeighborSummary| vec![("peer", n.address.to_string()), ("peer_asn", n.asn.to_string())];
        type Count = fn(&NeighborSummary) -> u64;
        type Level = fn(&NeighborSummary) -> i64;
        let counters: [(&str, &str, Count); 3] = [
            ("ferrule_bgp_messages_received", "BGP messages received from the neighbor", |n| n.messages_in),
            ("ferrule_bgp_messages_sent", "BGP messages sent to the neighbor", |n| n.messages_out),
            ("ferrule_bgp_session_flaps", "Times the session left Established", |n| n.flaps),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for n in &neighbors {
                ConstCounter::new(value(n)).encode(family.encode_family(&labels(n))?)?;
            }
        }
        let gauges: [(&str, &str, Level); 3] = [
            (
                "ferrule_bgp_session_state",
                "RFC 4271 state: 1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established",
                |n| state_number(&n.state),
            ),
            ("ferrule_bgp_prefixes_accepted", "Prefixes in the neighbor's Adj-RIB-In after import policy", |n| {
                n.accepted as i64
            }),
            ("ferrule_bgp_prefixes_sent", "Prefixes in the neighbor's Adj-RIB-Out", |n| n.sent as i64),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for n in &neighbors {
                prometheus_client::metrics::gauge::ConstGauge::new(value(n))
                    .encode(family.encode_family(&labels(n))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            flaps: 1,
            hold_time: Some(90),
            families: vec![],
            last_error: None,
        };
        let text = metrics.encode(
            vec![InterfaceStats { ifindex: 2, name: Some("eth0".into()), packets: 5, bytes: 640 }],
            vec![neighbor],
        );
        let peer = "{peer=\"2001:db8:1::1\",peer_asn=\"65000\"}";
        for series in [
            format!("ferrule_bgp_session_state{peer} 6"),
            format!("ferrule_bgp_messages_received_total{peer} 7"),
            format!("ferrule_bgp_session_flaps_total{peer} 1"),
            format!("ferrule_bgp_prefixes_accepted{peer} 3"),
        ] {
            assert!(text.contains(&series), "missing {series}:\n{text}");
        }
        assert!(text.contains("ferrule_config_changes_total{source=\"api\",result=\"rejected\"} 1"), "{text}");
        assert!(text.contains("ferrule_config_generation 3"), "{text}");
        assert!(text.contains("ferrule_interface_rx_packets_total{interface=\"eth0\",ifindex=\"2\"} 5"), "{text}");
        assert!(text.contains("ferrule_interface_rx_bytes_total{interface=\"eth0\",ifindex=\"2\"} 640"), "{text}");
        assert!(text.contains("ferrule_build_info{version="), "{text}");
    }
}
