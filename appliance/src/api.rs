//! The HTTP API on a unix socket (mode 0600): `GET /v1/status`, `GET /v1/config`,
//! `PUT /v1/config`, `GET /v1/interfaces`, `GET /v1/lb/services`, `GET /v1/lb/backends`,
//! `GET /v1/lb/events`, `GET /v1/bgp/summary`, `GET /v1/bgp/routes`. Handlers read the model store and observed state and send
//! config through [`ModelStore::accept`]; they never touch the datapath's state directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::datapath::DatapathHandle;
use crate::model::{AcceptError, ModelStore, Origin, Outcome};
use crate::reconcile::Observed;
use crate::store::unix_time_ms;
use ferrule_bgp::driver::{RouteQuery, Speaker};
use ferrule_ebpf::{LbCounters, LbDrops, LbEvents};
use ferrule_xdp_lb::{BackendHealth, HealthView, LbState, ServiceKey};

/// Request header naming the config's source for error messages (the CLI sends the file path), so
/// `ferrule apply` prints the same `FILE:LINE:COL` errors as `ferrule check`.
pub const SOURCE_HEADER: &str = "x-ferrule-source";
const DEFAULT_SOURCE: &str = "PUT /v1/config";

#[derive(Clone)]
pub struct AppState {
    pub models: ModelStore,
    pub observed: watch::Receiver<Observed>,
    pub datapath: DatapathHandle,
    pub speaker: Speaker,
    pub health: watch::Receiver<ferrule_xdp_lb::HealthView>,
    pub started: Instant,
    /// `POST /v1/shutdown` asks the daemon for an orderly stop through this.
    pub stop: tokio::sync::mpsc::Sender<()>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/shutdown", axum::routing::post(shutdown))
        .route("/v1/interfaces", get(interfaces))
        .route("/v1/bgp/summary", get(bgp_summary))
        .route("/v1/bgp/bfd", get(bgp_bfd))
        .route("/v1/bgp/routes", get(bgp_routes))
        .route("/v1/lb/services", get(lb_services))
        .route("/v1/lb/backends", get(lb_backends))
        .route("/v1/lb/events", get(lb_events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API path; see `ferrule --help`") })
        .with_state(state)
}

/// `GET /v1/status`. The keys are a documented contract (README, "JSON output").
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub node: String,
    pub asn: u32,
    pub router_id: String,
    pub config: ConfigStatus,
    pub datapath: DatapathStatus,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub generation: u64,
    /// `file`, `sighup` or `api`.
    pub source: String,
    /// The file path, or the name the API client gave.
    pub source_detail: String,
    pub accepted_at_unix_ms: u64,
    /// True when the daemon started from the state store (`--resume`) and nothing changed since.
    pub resumed: bool,
    pub summary: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DatapathStatus {
    pub pin_dir: String,
    pub applied_generation: Option<u64>,
    /// The last pass did all its config asks (false: something failed and is retried; see the
    /// errors beside it and the daemon's log). `None` from a daemon older than the field.
    #[serde(default)]
    pub applied_complete: Option<bool>,
    pub uplinks: Vec<ferrule_ebpf::UplinkStatus>,
    /// Generation whose `[bgp]` section the speaker runs.
    #[serde(default)]
    pub bgp_generation: Option<u64>,
    /// Why the speaker refused the running `[bgp]` section, if it did.
    #[serde(default)]
    pub bgp_error: Option<String>,
    /// `tc_decap` as `[decap]` asks (this node as a DSR backend); absent without `[decap]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decap: Option<crate::datapath::DecapStatus>,
    /// Why `tc_decap` could not be set up, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decap_error: Option<String>,
    /// Why the last change of the load balancer's maps failed (retried every pass; the VIPs of
    /// services not in the maps are not announced meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_error: Option<String>,
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let current = state.models.current();
    let observed = state.observed.borrow().clone();
    let (source, source_detail) = match &current.origin {
        Origin::File(d) | Origin::Sighup(d) | Origin::Api(d) => (current.origin.label().to_string(), d.clone()),
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_s: state.started.elapsed().as_secs(),
        node: current.model.node.name.clone(),
        asn: current.model.node.asn,
        router_id: current.model.node.router_id.to_string(),
        config: ConfigStatus {
            generation: current.generation,
            source,
            source_detail,
            accepted_at_unix_ms: unix_time_ms(current.accepted_at),
            resumed: current.resumed,
            summary: current.model.summary(),
        },
        datapath: DatapathStatus {
            pin_dir: state.datapath.pin_dir().display().to_string(),
            applied_generation: observed.applied_generation,
            applied_complete: Some(observed.applied_complete),
            uplinks: observed.uplinks,
            bgp_generation: observed.bgp_generation,
            bgp_error: observed.bgp_error,
            decap: observed.decap,
            decap_error: observed.decap_error,
            lb_error: observed.lb_error,
        },
    })
}

#[derive(Debug, Deserialize)]
struct ConfigQuery {
    format: Option<String>,
}

/// `GET /v1/config`: the running config's TOML text as accepted, or its model as JSON with
/// `?format=json`.
async fn get_config(State(state): State<AppState>, Query(query): Query<ConfigQuery>) -> Response {
    let current = state.models.current();
    match query.format.as_deref() {
        // Passwords never leave the daemon (the state store keeps the real text).
        None | Some("toml") => match ferrule_config::redact_secrets(&current.text) {
            Some(text) => ([(header::CONTENT_TYPE, "application/toml")], text).into_response(),
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "the running config does not parse as TOML"),
        },
        Some("json") => Json(&current.model).into_response(),
        Some(other) => error(StatusCode::BAD_REQUEST, &format!("unknown format `{other}`: use toml or json")),
    }
}

/// `POST /v1/shutdown`: an orderly stop (Cease to every peer, kernel routes removed). 202: the
/// daemon stops right after answering.
async fn shutdown(State(state): State<AppState>) -> Response {
    info!("orderly shutdown requested through the API");
    match state.stop.try_send(()) {
        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "result": "shutting down" }))).into_response()
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is already stopping")
        }
    }
}

/// `PUT /v1/config`: the same TOML as the file. 200 with a summary when accepted (or unchanged),
/// 400 with the `ferrule check` error text when invalid; the running config stays as it was.
async fn put_config(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // Percent-encoded by the CLI (a header value is visible ASCII; the path may not be).
    let source = headers.get(SOURCE_HEADER).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()).map_or_else(
        || DEFAULT_SOURCE.to_owned(),
        |s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned(),
    );
    let text = match String::from_utf8(body.to_vec()) {
        Ok(text) => text,
        Err(err) => {
            return error(StatusCode::BAD_REQUEST, &format!("{source}: the config is not UTF-8 text ({err})"));
        }
    };
    let models = state.models.clone();
    let origin = Origin::Api(source.clone());
    let result = tokio::task::spawn_blocking(move || models.accept(origin, &source, text)).await;
    match result {
        Ok(Ok(Outcome::Changed { accepted, diff })) => {
            info!(generation = accepted.generation, ?diff, "config accepted through the API");
            Json(PutResult { result: "accepted", generation: accepted.generation, summary: accepted.model.summary() })
                .into_response()
        }
        Ok(Ok(Outcome::Unchanged(current))) => {
            Json(PutResult { result: "unchanged", generation: current.generation, summary: current.model.summary() })
                .into_response()
        }
        Ok(Err(err @ AcceptError::Invalid(_))) => {
            warn!(errors = %err, "config rejected through the API");
            (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], err.to_string())
                .into_response()
        }
        Ok(Err(err @ AcceptError::NodeRenamed { .. })) => error(StatusCode::CONFLICT, &err.to_string()),
        Ok(Err(err @ AcceptError::Store(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        Err(join) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("config update task failed: {join}")),
    }
}

#[derive(Debug, Serialize)]
pub struct PutResult {
    /// `accepted` or `unchanged`.
    pub result: &'static str,
    pub generation: u64,
    pub summary: String,
}

async fn interfaces(State(state): State<AppState>) -> Response {
    match state.datapath.interface_stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("{err:#}")),
    }
}

/// One load-balanced service as `show lb services` prints it. JSON keys are documented in the README.
#[derive(Debug, Serialize, Deserialize)]
pub struct LbService {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    /// The service's id in the datapath maps; `None` until installed.
    pub id: Option<u32>,
    /// The VIP is announced over BGP (it has a backend that can take new flows: healthy, weight > 0).
    pub announced: bool,
    /// Why the kernel refused this service's last change (the maps keep what they had; retried
    /// every pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<LbBackend>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LbBackend {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    /// Not failing its checks (a draining backend keeps its health here).
    pub healthy: bool,
    /// Weight 0: no new flows, established ones carry on.
    #[serde(default)]
    pub draining: bool,
    pub id: Option<u32>,
    pub packets: u64,
    pub new_flows: u64,
}

/// One (service, backend) pair as `show lb backends` prints it. JSON keys are documented in the
/// README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbBackendRow {
    pub service: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub service_id: Option<u32>,
    pub address: String,
    pub backend_port: u16,
    /// The backend's id in the datapath maps; `None` until installed.
    pub backend_id: Option<u32>,
    pub weight: u32,
    /// Weight 0: the backend gets no new flows (no Maglev slot) while its established flows, its
    /// datapath entry and its health checks carry on; `health` still says what the checks say.
    #[serde(default)]
    pub draining: bool,
    /// `healthy`, `unhealthy` or `unchecked` (see [`HealthState`]), whether draining or not.
    pub health: String,
    /// Why the backend turned unhealthy, e.g. `connect: Connection refused`.
    pub health_reason: Option<String>,
    /// Whole seconds since `health` last changed (as `uptime_s` of the BGP summary counts them): since
    /// the backend was added or last flipped, for `unchecked` since it is listed without a check.
    /// `None` when the health checker has not seen the backend yet. Starts over with the daemon.
    #[serde(default)]
    pub health_since_s: Option<u64>,
    /// Entries of the service's installed Maglev table that name this backend, out of
    /// `maglev_table_size` (0 when the service has no table: not installed, or no healthy backend with a
    /// weight above 0; always 0 for a draining backend).
    pub maglev_slots: u64,
    pub maglev_table_size: u64,
    /// `maglev_slots / maglev_table_size`: the share of new flows the backend gets (0 without a table).
    pub maglev_share: f64,
    /// Counted per backend address and port by the datapath: a backend listed by several services
    /// shows the same totals in each of its rows.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets dropped after this backend was chosen, by reason (the `reason` labels of the
    /// `ferrule_lb_*_drops_total` metrics, see [`drop_reasons`]); totals over every service that lists it.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

/// The drop reasons of `enum fr_lb_drop` by the names every view uses: the `reason` label of the
/// drop metrics and the keys of the JSON `drops` objects.
pub fn drop_reasons(d: &LbDrops) -> [(&'static str, u64); 5] {
    [
        ("no_backend", d.no_backend),
        ("no_node_address", d.no_node_address),
        ("encap_failed", d.encap_failed),
        ("nat_ports", d.nat_ports),
        ("nat_family", d.nat_family),
    ]
}

/// One node-wide event of the load balancer (`enum fr_lb_event`).
pub struct LbEventKind {
    /// The name every view uses: the key of `GET /v1/lb/events`, the `event` label of
    /// `ferrule_lb_events_total` and the Event column of `show lb events`.
    pub name: &'static str,
    pub count: fn(&LbEvents) -> u64,
    /// One line for `show lb events`: "passed" = left to the kernel's stack (XDP_PASS).
    pub meaning: &'static str,
}

/// Every event of [`LbEvents`], in `enum fr_lb_event` order: the one list the API, the metrics and
/// `show lb events` are made from, so they cannot disagree.
pub const LB_EVENTS: [LbEventKind; 12] = [
    LbEventKind {
        name: "malformed",
        count: |e| e.malformed,
        meaning: "passed: truncated or inconsistent headers (IHL < 5, lengths beyond the frame, IP version not the ethertype's, ICMP quote cut short)",
    },
    LbEventKind {
        name: "ext_hdr_limit",
        count: |e| e.ext_hdr_limit,
        meaning: "passed: more IPv6 extension headers than the fast path walks",
    },
    LbEventKind {
        name: "frag_unknown",
        count: |e| e.frag_unknown,
        meaning: "passed: a later fragment whose first fragment was not seen",
    },
    LbEventKind {
        name: "fib_pass",
        count: |e| e.fib_pass,
        meaning: "passed: no route or no neighbour (ARP/ND) entry for the next hop yet; the stack resolves it",
    },
    LbEventKind {
        name: "mtu_pass",
        count: |e| e.mtu_pass,
        meaning: "passed: larger than the route's MTU once encapsulated, and not answered with too_big",
    },
    LbEventKind {
        name: "nat_unhandled",
        count: |e| e.nat_unhandled,
        meaning: "passed: a fragment to a NAT service, or an ICMP error NAT cannot translate (no conntrack entry)",
    },
    LbEventKind {
        name: "icmp_forwarded",
        count: |e| e.icmp_forwarded,
        meaning: "sent on: an ICMP error about a load-balanced flow, to its backend (NAT: or back to the client)",
    },
    LbEventKind {
        name: "icmp_no_flow",
        count: |e| e.icmp_no_flow,
        meaning: "sent on: such an ICMP error (DSR) whose flow had no conntrack entry; Maglev chose the backend",
    },
    LbEventKind {
        name: "frag_forwarded",
        count: |e| e.frag_forwarded,
        meaning: "sent on: a later fragment, to the backend its first fragment went to",
    },
    LbEventKind {
        name: "nat_reply",
        count: |e| e.nat_reply,
        meaning: "sent on: a backend's reply in a NAT flow, translated back to the client",
    },
    LbEventKind {
        name: "vlan_redirect",
        count: |e| e.vlan_redirect,
        meaning: "passed: a tagged frame whose next hop is out of another interface",
    },
    LbEventKind {
        name: "too_big",
        count: |e| e.too_big,
        meaning: "answered: too big for the route to the backend; ICMP \"too big\" sent back to the client",
    },
];

/// The events of `e` by the names of [`LB_EVENTS`], in its order.
pub fn lb_event_counts(e: &LbEvents) -> [(&'static str, u64); LB_EVENTS.len()] {
    LB_EVENTS.map(|kind| (kind.name, (kind.count)(e)))
}

/// `GET /v1/lb/events`: `{"malformed": 0, …}`, every event of [`LB_EVENTS`] present, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbEventsJson(pub LbEvents);

impl Serialize for LbEventsJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(LB_EVENTS.len()))?;
        for (name, n) in lb_event_counts(&self.0) {
            map.serialize_entry(name, &n)?;
        }
        map.end()
    }
}

/// A backend's health as the operator views report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// Passing its service's checks (or not failed `fall` of them yet).
    Healthy,
    /// Failed `fall` checks in a row; out of the Maglev table, its entry kept for established flows.
    Unhealthy { reason: String },
    /// Its service has no `health` check (every backend is taken as healthy), or the checker has not
    /// picked up the service yet.
    Unchecked,
}

impl HealthState {
    pub fn label(&self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy { .. } => "unhealthy",
            HealthState::Unchecked => "unchecked",
        }
    }

    /// Whether the checks let the backend take new flows; it also needs a weight above 0 (see
    /// `draining`), as the Maglev plan and the BGP announcement do.
    pub fn is_up(&self) -> bool {
        !matches!(self, HealthState::Unhealthy { .. })
    }
}

/// One configured service with what the datapath, the health checker and BGP say of it: the one
/// source of `/v1/lb/services`, `/v1/lb/backends` and the `ferrule_lb_*` metrics.
#[derive(Debug, Clone)]
pub struct LbServiceView {
    pub service: ferrule_config::Service,
    /// The service's datapath id; `None` until installed.
    pub id: Option<u32>,
    pub announced: bool,
    /// Why the kernel refused this service's last change, if it did.
    pub install_error: Option<String>,
    /// The installed Maglev table of backend ids (empty when none is installed).
    pub table: Arc<Vec<u32>>,
    /// `None` when not installed or when the maps could not be read (then metrics leave it out).
    pub counters: Option<LbCounters>,
    pub backends: Vec<LbBackendView>,
}

#[derive(Debug, Clone)]
pub struct LbBackendView {
    pub backend: ferrule_config::Backend,
    pub id: Option<u32>,
    pub health: HealthState,
    /// How long `health` has held when the view was taken; `None` before the checker saw the backend.
    pub health_since: Option<Duration>,
    /// Per backend address and port, over every service that lists it.
    pub counters: Option<LbCounters>,
}

/// [`lb_view_of`] with the running model, the observed state and the health checker's view, now.
pub async fn lb_view(state: &AppState, vip: Option<IpAddr>) -> Vec<LbServiceView> {
    let current = state.models.current();
    let observed = state.observed.borrow().clone();
    let health = state.health.borrow().clone();
    lb_view_of(&current.model.services, &observed, &health, &state.datapath, vip, tokio::time::Instant::now()).await
}

/// Every service of `services` (only those of `vip` when given), in config order, with its
/// datapath ids and table from `observed`, its backends' health (and for how long at `now`) and
/// the counters read now.
pub async fn lb_view_of(
    services: &[ferrule_config::Service],
    observed: &Observed,
    health: &HealthView,
    datapath: &DatapathHandle,
    vip: Option<IpAddr>,
    now: tokio::time::Instant,
) -> Vec<LbServiceView> {
    let none = LbState::default();
    let lb = observed.lb.as_ref().unwrap_or(&none);
    let backend_ids: HashMap<SocketAddr, u32> =
        lb.backends.iter().map(|(id, b)| (SocketAddr::new(b.address, b.port), *id)).collect();
    let mut views: Vec<LbServiceView> = services
        .iter()
        .filter(|s| vip.is_none_or(|v| v == s.vip))
        .map(|s| {
            let key = ServiceKey::of(s);
            let installed = lb.services.get(&key);
            LbServiceView {
                id: installed.map(|e| e.id),
                announced: observed.announced_vips.contains(&ipnet::IpNet::from(s.vip).to_string()),
                install_error: observed.lb_refused.get(&key).cloned(),
                table: installed.map(|e| e.table.clone()).unwrap_or_default(),
                counters: None,
                backends: s
                    .backends
                    .iter()
                    .map(|b| {
                        let addr = SocketAddr::new(b.address, b.port);
                        LbBackendView {
                            backend: b.clone(),
                            id: backend_ids.get(&addr).copied(),
                            health: health_state(s, health, addr),
                            health_since: health.since(&key, addr).map(|at| now.saturating_duration_since(at)),
                            counters: None,
                        }
                    })
                    .collect(),
                service: s.clone(),
            }
        })
        .collect();
    let service_ids: Vec<u32> = views.iter().filter_map(|s| s.id).collect();
    let backend_ids: Vec<u32> = views
        .iter()
        .flat_map(|s| s.backends.iter().filter_map(|b| b.id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match datapath.lb_counters(service_ids.clone(), backend_ids.clone()).await {
        Ok((sc, bc)) => {
            let sc: HashMap<u32, LbCounters> = service_ids.into_iter().zip(sc).collect();
            let bc: HashMap<u32, LbCounters> = backend_ids.into_iter().zip(bc).collect();
            for s in &mut views {
                s.counters = s.id.and_then(|id| sc.get(&id).copied());
                for b in &mut s.backends {
                    b.counters = b.id.and_then(|id| bc.get(&id).copied());
                }
            }
        }
        Err(err) => warn!(error = %format!("{err:#}"), "reading the load balancer's counters"),
    }
    views
}

/// No check configured → unchecked; otherwise what the checker last concluded.
fn health_state(service: &ferrule_config::Service, health: &HealthView, backend: SocketAddr) -> HealthState {
    if service.health.is_none() {
        return HealthState::Unchecked;
    }
    match health.get(&ServiceKey::of(service), backend) {
        Some(BackendHealth::Healthy) => HealthState::Healthy,
        Some(BackendHealth::Unhealthy { reason }) => HealthState::Unhealthy { reason: reason.clone() },
        None => HealthState::Unchecked,
    }
}

/// `GET /v1/lb/services`: every configured service with its datapath id, health and counters.
async fn lb_services(State(state): State<AppState>) -> Response {
    let services: Vec<LbService> = lb_view(&state, None)
        .await
        .into_iter()
        .map(|v| {
            let c = v.counters.unwrap_or_default();
            let s = &v.service;
            LbService {
                name: s.name.clone(),
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                mode: s.mode.to_string(),
                id: v.id,
                announced: v.announced,
                install_error: v.install_error.clone(),
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                backends: v
                    .backends
                    .iter()
                    .map(|b| {
                        let c = b.counters.unwrap_or_default();
                        LbBackend {
                            address: b.backend.address.to_string(),
                            port: b.backend.port,
                            weight: b.backend.weight,
                            healthy: b.health.is_up(),
                            draining: b.backend.weight == 0,
                            id: b.id,
                            packets: c.packets,
                            new_flows: c.new_flows,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Json(services).into_response()
}

#[derive(Debug, Deserialize)]
struct BackendsQuery {
    vip: Option<String>,
}

/// `GET /v1/lb/backends[?vip=V]`: one row per (service, backend), of the services of VIP `V` only
/// when given.
async fn lb_backends(State(state): State<AppState>, Query(query): Query<BackendsQuery>) -> Response {
    let vip = match query.vip.as_deref() {
        None | Some("") => None,
        Some(text) => match parse_vip(text) {
            Ok(vip) => Some(vip),
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        },
    };
    let views = lb_view(&state, vip).await;
    // Counting table entries is linear in the table size: off the async workers.
    match tokio::task::spawn_blocking(move || backend_rows(&views)).await {
        Ok(rows) => Json(rows).into_response(),
        Err(join) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("listing backends failed: {join}")),
    }
}

/// `GET /v1/lb/events`: the load balancer's node-wide events, summed over CPUs; 503 when the
/// datapath cannot be read.
async fn lb_events(State(state): State<AppState>) -> Response {
    match state.datapath.lb_events().await {
        Ok(events) => Json(LbEventsJson(events)).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("{err:#}")),
    }
}

pub fn parse_vip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| format!("`{text}` is not a VIP address (192.0.2.10 or 2001:db8::10)"))
}

/// The rows of `show lb backends`, in service order and each service's backend order.
pub fn backend_rows(views: &[LbServiceView]) -> Vec<LbBackendRow> {
    let mut rows = Vec::new();
    for v in views {
        let s = &v.service;
        let mut slots: HashMap<u32, u64> = HashMap::new();
        for id in v.table.iter() {
            *slots.entry(*id).or_default() += 1;
        }
        let size = v.table.len() as u64;
        for b in &v.backends {
            let c = b.counters.unwrap_or_default();
            let mine = b.id.and_then(|id| slots.get(&id).copied()).unwrap_or(0);
            rows.push(LbBackendRow {
                service: s.name.clone(),
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                mode: s.mode.to_string(),
                service_id: v.id,
                address: b.backend.address.to_string(),
                backend_port: b.backend.port,
                backend_id: b.id,
                weight: b.backend.weight,
                draining: b.backend.weight == 0,
                health: b.health.label().to_string(),
                health_reason: match &b.health {
                    HealthState::Unhealthy { reason } => Some(reason.clone()),
                    _ => None,
                },
                health_since_s: b.health_since.map(|d| d.as_secs()),
                maglev_slots: mine,
                maglev_table_size: size,
                maglev_share: if size == 0 { 0.0 } else { mine as f64 / size as f64 },
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                drops: drop_reasons(&c.drops).into_iter().map(|(reason, n)| (reason.to_owned(), n)).collect(),
            });
        }
    }
    rows
}

/// `GET /v1/bgp/summary`: one entry per configured neighbor.
/// `GET /v1/bgp/bfd`: the BFD sessions of the peers that have `bfd` configured.
async fn bgp_bfd(State(state): State<AppState>) -> Response {
    match state.speaker.bfd_sessions().await {
        Ok(sessions) => Json(sessions).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

async fn bgp_summary(State(state): State<AppState>) -> Response {
    match state.speaker.summary().await {
        Ok(summary) => Json(summary).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct RoutesQuery {
    prefix: Option<String>,
}

/// `GET /v1/bgp/routes[?prefix=P]`: every path of every prefix, of exactly `P` when it is a
/// prefix, or of the longest prefix containing `P` when it is an address.
async fn bgp_routes(State(state): State<AppState>, Query(query): Query<RoutesQuery>) -> Response {
    let query = match query.prefix.as_deref() {
        None | Some("") => RouteQuery::All,
        Some(text) => match parse_route_query(text) {
            Ok(q) => q,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        },
    };
    match state.speaker.routes(query).await {
        Ok(routes) => Json(routes).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

pub fn parse_route_query(text: &str) -> Result<RouteQuery, String> {
    if let Ok(addr) = text.parse::<std::net::IpAddr>() {
        return Ok(RouteQuery::Address(addr));
    }
    let net: ipnet::IpNet = text
        .parse()
        .map_err(|_| format!("`{text}` is neither a prefix (2001:db8::/32) nor an address (2001:db8::1)"))?;
    if net.trunc() != net {
        return Err(format!("{net} has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(RouteQuery::Prefix(crate::bgp::prefix(net)))
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datapath::InMemoryDatapath;
    use crate::metrics::Metrics;
    use crate::model::Accepted;
    use crate::store::Store;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tower::ServiceExt;

    const GOOD: &str = "[node]\nname = \"node1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\nuplinks = [\"eth0\"]\n";

    struct Fixture {
        app: Router,
        store_path: std::path::PathBuf,
        _dir: tempfile::TempDir,
        models: ModelStore,
    }

    fn fixture() -> Fixture {
        fixture_with(InMemoryDatapath::new(&["eth0"]))
    }

    fn fixture_with(datapath: InMemoryDatapath) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("state.redb");
        let store = Store::open(&store_path).unwrap();
        let initial = Arc::new(Accepted {
            model: ferrule_config::parse("node1.toml", GOOD).unwrap(),
            text: GOOD.into(),
            origin: Origin::File("node1.toml".into()),
            generation: 1,
            accepted_at: std::time::SystemTime::now(),
            resumed: false,
        });
        let models = ModelStore::new(initial, store, Metrics::new());
        let datapath = DatapathHandle::spawn("/sys/fs/bpf/ferrule/node1".into(), || Ok(datapath)).unwrap();
        let (_tx, observed) = watch::channel(Observed::default());
        let app = router(AppState {
            models: models.clone(),
            observed,
            datapath,
            speaker: Speaker::spawn(),
            health: watch::channel(Default::default()).1,
            started: Instant::now(),
            stop: tokio::sync::mpsc::channel(1).0,
        });
        Fixture { app, store_path, _dir: dir, models }
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str, source: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(source) = source {
            request = request.header(SOURCE_HEADER, source);
        }
        let response = app.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn rejected_put_returns_400_with_check_errors_and_keeps_running_config() {
        let f = fixture();
        let bad = "[node]\nname = \"node1\"\nasn = 0\nrouter_id = \"2001:db8::1\"\nbogus = 1\n";
        let (code, body) = call(&f.app, "PUT", "/v1/config", bad, Some("bad.toml")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let expected = ferrule_config::parse("bad.toml", bad).unwrap_err().to_string();
        assert_eq!(body, expected);
        assert!(body.lines().all(|l| l.starts_with("bad.toml:")), "{body}");
        let (code, running) = call(&f.app, "GET", "/v1/config", "", None).await;
        assert_eq!((code, running.as_str()), (StatusCode::OK, GOOD));
        assert_eq!(f.models.current().generation, 1);

        // A path that is not ASCII comes percent-encoded (as the CLI sends it) and is named as is.
        let (code, body) = call(&f.app, "PUT", "/v1/config", bad, Some("/etc/ferrule/n%C5%93ud%20a.toml")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.lines().all(|l| l.starts_with("/etc/ferrule/nœud a.toml:")), "{body}");
    }

    #[tokio::test]
    async fn passwords_are_served_redacted_but_kept_in_the_running_config() {
        let f = fixture();
        let new = format!("{GOOD}\n[[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\npassword = \"s3cret\"\n");
        let (code, body) = call(&f.app, "PUT", "/v1/config", &new, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        for uri in ["/v1/config", "/v1/config?format=json"] {
            let (code, served) = call(&f.app, "GET", uri, "", None).await;
            assert_eq!(code, StatusCode::OK);
            assert!(!served.contains("s3cret") && served.contains("<redacted>"), "{uri}: {served}");
        }
        let running = f.models.current();
        assert_eq!(running.model.bgp.peers[0].options.password.as_ref().map(|p| p.expose()), Some("s3cret"));
    }

    #[tokio::test]
    async fn accepted_put_is_served_and_persisted() {
        let f = fixture();
        let new = GOOD.replace("65101", "65199");
        let (code, body) = call(&f.app, "PUT", "/v1/config", &new, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let result: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(result["result"], "accepted");
        assert_eq!(result["generation"], 2);
        let (_, status) = call(&f.app, "GET", "/v1/status", "", None).await;
        let status: Status = serde_json::from_str(&status).unwrap();
        assert_eq!((status.asn, status.config.generation, status.config.source.as_str()), (65199, 2, "api"));
        drop(f.app);
        drop(f.models);
        let stored = Store::open(&f.store_path).unwrap().load_config().unwrap().unwrap();
        assert_eq!((stored.text, stored.generation), (new, 2));
    }

    #[tokio::test]
    async fn same_config_again_is_unchanged() {
        let f = fixture();
        let (code, body) = call(&f.app, "PUT", "/v1/config", GOOD, None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"unchanged\""), "{body}");
        assert_eq!(f.models.current().generation, 1);
    }

    #[tokio::test]
    async fn renaming_the_node_at_runtime_is_refused() {
        let f = fixture();
        let (code, body) = call(&f.app, "PUT", "/v1/config", &GOOD.replace("node1", "node9"), None).await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert!(body.contains("restart the daemon"), "{body}");
    }

    #[tokio::test]
    async fn non_utf8_body_and_unknown_paths_get_clear_errors() {
        let f = fixture();
        let response = f
            .app
            .clone()
            .oneshot(Request::put("/v1/config").body(Body::from(vec![0xff, 0xfe])).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let (code, _) = call(&f.app, "GET", "/v1/nope", "", None).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, body) = call(&f.app, "GET", "/v1/config?format=yaml", "", None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("toml or json"));
    }

    #[tokio::test]
    async fn lb_services_lists_configured_services_with_backends() {
        let f = fixture();
        let web = format!(
            "{GOOD}[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n\
             backends = [ {{ address = \"198.51.100.2\", port = 8080, weight = 3 }} ]\n"
        );
        assert_eq!(call(&f.app, "PUT", "/v1/config", &web, None).await.0, StatusCode::OK);
        let (code, body) = call(&f.app, "GET", "/v1/lb/services", "", None).await;
        assert_eq!(code, StatusCode::OK);
        let services: Vec<LbService> = serde_json::from_str(&body).unwrap();
        assert_eq!(services.len(), 1);
        let (s, b) = (&services[0], &services[0].backends[0]);
        assert_eq!((s.name.as_str(), s.vip.as_str(), s.mode.as_str(), s.id), ("web", "203.0.113.10", "nat", None));
        assert_eq!((b.address.as_str(), b.port, b.weight, b.healthy), ("198.51.100.2", 8080, 3, true));
    }

    const TWO_SERVICES: &str = "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n\
        mode = \"nat\"\nhealth = { kind = \"tcp\", interval_ms = 1000 }\n\
        backends = [ { address = \"198.51.100.2\", port = 8080 }, { address = \"198.51.100.3\", port = 8080, weight = 3 },\n\
                     { address = \"198.51.100.4\", port = 8080 } ]\n\
        [[services]]\nname = \"dns\"\nvip = \"2001:db8:200::53\"\nport = 53\nprotocol = \"udp\"\nmode = \"dsr\"\n\
        backends = [ { address = \"2001:db8:300::21\", port = 53 } ]\n";

    #[tokio::test]
    async fn lb_backends_lists_one_row_per_service_backend_and_filters_by_vip() {
        let f = fixture();
        assert_eq!(call(&f.app, "PUT", "/v1/config", &format!("{GOOD}{TWO_SERVICES}"), None).await.0, StatusCode::OK);
        let (code, body) = call(&f.app, "GET", "/v1/lb/backends", "", None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows.len(), 4);
        // The documented keys, no more and no fewer.
        let mut keys: Vec<&str> = rows[0].as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "address",
                "backend_id",
                "backend_port",
                "bytes",
                "draining",
                "drops",
                "health",
                "health_reason",
                "health_since_s",
                "maglev_share",
                "maglev_slots",
                "maglev_table_size",
                "mode",
                "new_flows",
                "packets",
                "port",
                "protocol",
                "service",
                "service_id",
                "vip",
                "weight"
            ]
        );
        let row: LbBackendRow = serde_json::from_value(rows[1].clone()).unwrap();
        assert_eq!(
            (row.service.as_str(), row.vip.as_str(), row.port, row.protocol.as_str(), row.mode.as_str()),
            ("web", "203.0.113.10", 80, "tcp", "nat")
        );
        assert_eq!((row.address.as_str(), row.backend_port, row.weight), ("198.51.100.3", 8080, 3));
        // Nothing checked or installed yet in this fixture.
        assert_eq!(
            (row.health.as_str(), row.service_id, row.backend_id, row.maglev_table_size),
            ("unchecked", None, None, 0)
        );

        let (code, body) = call(&f.app, "GET", "/v1/lb/backends?vip=2001:db8:200::53", "", None).await;
        assert_eq!(code, StatusCode::OK);
        let rows: Vec<LbBackendRow> = serde_json::from_str(&body).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.service.as_str(), r.address.as_str())).collect::<Vec<_>>(),
            [("dns", "2001:db8:300::21")]
        );
        let (code, body) = call(&f.app, "GET", "/v1/lb/backends?vip=192.0.2.99", "", None).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));
        let (code, body) = call(&f.app, "GET", "/v1/lb/backends?vip=web", "", None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("`web` is not a VIP address"), "{body}");
    }

    /// `backend_rows` of `model`'s services installed as `plan` lays them out for `health`, with
    /// an in-memory datapath (no counters).
    async fn planned_backend_rows(model: &ferrule_config::Model, health: &HealthView) -> Vec<LbBackendRow> {
        let mut lb = ferrule_xdp_lb::LbState::default();
        for op in ferrule_xdp_lb::plan(&model.services, health, &lb) {
            lb.apply(&op).unwrap();
        }
        let observed = Observed { lb: Some(lb), ..Default::default() };
        let datapath = DatapathHandle::spawn("/nonexistent".into(), || Ok(InMemoryDatapath::new(&[]))).unwrap();
        let now = tokio::time::Instant::now();
        backend_rows(&lb_view_of(&model.services, &observed, health, &datapath, None, now).await)
    }

    #[tokio::test]
    async fn backend_rows_give_each_healthy_backend_its_weighted_share_of_the_maglev_table() {
        let model = ferrule_config::parse("t.toml", &format!("{GOOD}{TWO_SERVICES}")).unwrap();
        let web = ServiceKey::of(&model.services[0]);
        let mut health = HealthView::default();
        for b in ["198.51.100.2:8080", "198.51.100.3:8080"] {
            health.set(web, b.parse().unwrap(), BackendHealth::Healthy);
        }
        let refused = BackendHealth::Unhealthy { reason: "connect: Connection refused".into() };
        health.set(web, "198.51.100.4:8080".parse().unwrap(), refused);
        let rows = planned_backend_rows(&model, &health).await;

        let (a, b, down, dns) = (&rows[0], &rows[1], &rows[2], &rows[3]);
        assert_eq!((a.health.as_str(), b.health.as_str(), dns.health.as_str()), ("healthy", "healthy", "unchecked"));
        assert_eq!(
            (down.health.as_str(), down.health_reason.as_deref()),
            ("unhealthy", Some("connect: Connection refused"))
        );
        assert!(a.backend_id.is_some() && down.backend_id.is_some(), "the unhealthy backend keeps its entry");
        assert_eq!(a.maglev_table_size, 65537);
        assert_eq!(down.maglev_slots, 0, "an unhealthy backend has no slot");
        assert_eq!(a.maglev_slots + b.maglev_slots, 65537);
        // Weights 1 and 3: a quarter and three quarters, within Maglev's small imbalance.
        assert!((a.maglev_share - 0.25).abs() < 0.01 && (b.maglev_share - 0.75).abs() < 0.01, "{a:?}\n{b:?}");
        assert_eq!((dns.maglev_slots, dns.maglev_share), (dns.maglev_table_size, 1.0));
    }

    #[test]
    fn backend_rows_count_drops_by_the_reasons_the_metrics_name() {
        let model = ferrule_config::parse("t.toml", &format!("{GOOD}{TWO_SERVICES}")).unwrap();
        let web = &model.services[0];
        let counted = LbCounters {
            packets: 9,
            drops: LbDrops { encap_failed: 3, nat_ports: 2, ..Default::default() },
            ..Default::default()
        };
        let view = LbServiceView {
            service: web.clone(),
            id: Some(1),
            announced: true,
            install_error: None,
            table: Arc::new(vec![1, 1, 1, 1, 1, 1, 1]),
            counters: None,
            backends: vec![
                LbBackendView {
                    backend: web.backends[0].clone(),
                    id: Some(1),
                    health: HealthState::Healthy,
                    health_since: None,
                    counters: Some(counted),
                },
                // Counters not read (yet): every reason at 0, not a missing key.
                LbBackendView {
                    backend: web.backends[1].clone(),
                    id: None,
                    health: HealthState::Healthy,
                    health_since: None,
                    counters: None,
                },
            ],
        };
        let rows = backend_rows(&[view]);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(
            json[0]["drops"],
            serde_json::json!({"no_backend": 0, "no_node_address": 0, "encap_failed": 3, "nat_ports": 2, "nat_family": 0})
        );
        assert_eq!(
            json[1]["drops"],
            serde_json::json!({"no_backend": 0, "no_node_address": 0, "encap_failed": 0, "nat_ports": 0, "nat_family": 0})
        );
        // What the CLI reads back is what the daemon sent.
        let back: Vec<LbBackendRow> = serde_json::from_value(json).unwrap();
        assert_eq!(back, rows);
    }

    #[tokio::test]
    async fn backend_rows_say_how_long_each_backend_has_held_its_health_state() {
        let model = ferrule_config::parse("t.toml", &format!("{GOOD}{TWO_SERVICES}")).unwrap();
        let (web, dns) = (ServiceKey::of(&model.services[0]), ServiceKey::of(&model.services[1]));
        // The clock is ours: the checker dated these at t0 and t0 + 1 min, and the view is taken 1 h
        // 2 min 3.9 s after t0.
        let t0 = tokio::time::Instant::now();
        let mut health = HealthView::default();
        let down: SocketAddr = "198.51.100.4:8080".parse().unwrap();
        health.set(web, down, BackendHealth::Unhealthy { reason: "connect: Connection refused".into() });
        health.set_since(web, down, t0 + Duration::from_secs(60));
        let up: SocketAddr = "198.51.100.2:8080".parse().unwrap();
        health.set(web, up, BackendHealth::Healthy);
        health.set_since(web, up, t0);
        health.set_since(dns, "[2001:db8:300::21]:53".parse().unwrap(), t0);
        let datapath = DatapathHandle::spawn("/nonexistent".into(), || Ok(InMemoryDatapath::new(&[]))).unwrap();
        let now = t0 + Duration::from_millis(3_723_900);
        let rows =
            backend_rows(&lb_view_of(&model.services, &Observed::default(), &health, &datapath, None, now).await);
        let since: Vec<(&str, &str, Option<u64>)> =
            rows.iter().map(|r| (r.address.as_str(), r.health.as_str(), r.health_since_s)).collect();
        assert_eq!(
            since,
            [
                ("198.51.100.2", "healthy", Some(3723)),
                // Not seen by the checker yet: no time rather than a made-up one.
                ("198.51.100.3", "unchecked", None),
                ("198.51.100.4", "unhealthy", Some(3663)),
                ("2001:db8:300::21", "unchecked", Some(3723)),
            ]
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(
            (&json[0]["health_since_s"], &json[1]["health_since_s"]),
            (&serde_json::json!(3723), &serde_json::Value::Null)
        );
    }

    #[tokio::test]
    async fn drained_backend_row_keeps_its_entry_and_health_but_has_no_slot() {
        let drained = TWO_SERVICES.replace(
            "{ address = \"198.51.100.3\", port = 8080, weight = 3 }",
            "{ address = \"198.51.100.3\", port = 8080, weight = 0 }",
        );
        let model = ferrule_config::parse("t.toml", &format!("{GOOD}{drained}")).unwrap();
        let web = ServiceKey::of(&model.services[0]);
        let mut health = HealthView::default();
        let refused = BackendHealth::Unhealthy { reason: "connect: Connection refused".into() };
        health.set(web, "198.51.100.3:8080".parse().unwrap(), refused);
        let rows = planned_backend_rows(&model, &health).await;
        let states: Vec<(&str, u32, bool, &str)> =
            rows.iter().map(|r| (r.address.as_str(), r.weight, r.draining, r.health.as_str())).collect();
        assert_eq!(
            states,
            [
                ("198.51.100.2", 1, false, "unchecked"),
                ("198.51.100.3", 0, true, "unhealthy"),
                ("198.51.100.4", 1, false, "unchecked"),
                ("2001:db8:300::21", 1, false, "unchecked"),
            ]
        );
        let d = &rows[1];
        assert!(d.backend_id.is_some(), "a draining backend keeps its datapath entry");
        assert_eq!(d.health_reason.as_deref(), Some("connect: Connection refused"), "its health stays visible");
        assert_eq!((d.maglev_slots, rows[0].maglev_slots + rows[2].maglev_slots), (0, 65537));
        assert_eq!(serde_json::to_value(d).unwrap()["draining"], serde_json::json!(true));
    }

    /// Every event counted a different number of times (its index in `enum fr_lb_event` + 1), so a
    /// name paired with the wrong field shows.
    pub(crate) fn distinct_events() -> LbEvents {
        LbEvents {
            malformed: 1,
            ext_hdr_limit: 2,
            frag_unknown: 3,
            fib_pass: 4,
            mtu_pass: 5,
            nat_unhandled: 6,
            icmp_forwarded: 7,
            icmp_no_flow: 8,
            frag_forwarded: 9,
            nat_reply: 10,
            vlan_redirect: 11,
            too_big: 12,
        }
    }

    #[tokio::test]
    async fn lb_events_answer_every_event_by_its_field_name() {
        let mut datapath = InMemoryDatapath::new(&["eth0"]);
        datapath.events = Some(distinct_events());
        let f = fixture_with(datapath);
        let (code, body) = call(&f.app, "GET", "/v1/lb/events", "", None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            "{\"malformed\":1,\"ext_hdr_limit\":2,\"frag_unknown\":3,\"fib_pass\":4,\"mtu_pass\":5,\
             \"nat_unhandled\":6,\"icmp_forwarded\":7,\"icmp_no_flow\":8,\"frag_forwarded\":9,\"nat_reply\":10,\
             \"vlan_redirect\":11,\"too_big\":12}"
        );
        // The names are `LbEvents`' field names, each with its own field: a field added to
        // `LbEvents` but not to `LB_EVENTS` (or the reverse) fails here.
        assert_eq!(body, serde_json::to_string(&distinct_events()).unwrap());
    }

    #[tokio::test]
    async fn lb_events_list_zero_events_and_answer_503_without_maps() {
        let f = fixture();
        let (code, body) = call(&f.app, "GET", "/v1/lb/events", "", None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let events: BTreeMap<String, u64> = serde_json::from_str(&body).unwrap();
        let mut names: Vec<&str> = LB_EVENTS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        assert_eq!(events.keys().map(String::as_str).collect::<Vec<_>>(), names);
        assert!(events.values().all(|n| *n == 0), "{body}");

        let mut datapath = InMemoryDatapath::new(&["eth0"]);
        datapath.events = None;
        let f = fixture_with(datapath);
        let (code, body) = call(&f.app, "GET", "/v1/lb/events", "", None).await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "the embedded object xdp_lb.bpf.o has no map `fr_lb_events`\n")
        );
    }

    #[tokio::test]
    async fn bgp_summary_and_routes_of_an_idle_speaker() {
        let f = fixture();
        let (code, body) = call(&f.app, "GET", "/v1/bgp/summary", "", None).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));
        let (code, body) = call(&f.app, "GET", "/v1/bgp/routes?prefix=2001:db8::/32", "", None).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));
        let (code, body) = call(&f.app, "GET", "/v1/bgp/routes?prefix=2001:db8::1/32", "", None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("host bits"), "{body}");
        let (code, _) = call(&f.app, "GET", "/v1/bgp/routes?prefix=nonsense", "", None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn config_as_json_and_interface_counters() {
        let f = fixture();
        let (code, body) = call(&f.app, "GET", "/v1/config?format=json", "", None).await;
        assert_eq!(code, StatusCode::OK);
        let model: ferrule_config::Model = serde_json::from_str(&body).unwrap();
        assert_eq!(model.node.asn, 65101);
        let (code, body) = call(&f.app, "GET", "/v1/interfaces", "", None).await;
        assert_eq!(code, StatusCode::OK);
        // Nothing attached yet in the in-memory datapath: no counters.
        assert_eq!(body, "[]");
    }
}
