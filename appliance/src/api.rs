//! The HTTP API on a unix socket (mode 0600): `GET /v1/status`, `GET /v1/config`,
//! `PUT /v1/config`, `GET /v1/interfaces`. Handlers read the model store and observed state and send
//! config through [`ModelStore::accept`]; they never touch the datapath's state directly.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::datapath::DatapathHandle;
use crate::model::{AcceptError, ModelStore, Origin, Outcome};
use crate::reconcile::Observed;
use crate::store::unix_time_ms;
use ferrule_bgp::driver::{RouteQuery, Speaker};

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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/interfaces", get(interfaces))
        .route("/v1/bgp/summary", get(bgp_summary))
        .route("/v1/bgp/routes", get(bgp_routes))
        .route("/v1/lb/services", get(lb_services))
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
    pub uplinks: Vec<ferrule_ebpf::UplinkStatus>,
    /// Generation whose `[bgp]` section the speaker runs.
    #[serde(default)]
    pub bgp_generation: Option<u64>,
    /// Why the speaker refused the running `[bgp]` section, if it did.
    #[serde(default)]
    pub bgp_error: Option<String>,
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
            uplinks: observed.uplinks,
            bgp_generation: observed.bgp_generation,
            bgp_error: observed.bgp_error,
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
        None | Some("toml") => ([(header::CONTENT_TYPE, "application/toml")], current.text.clone()).into_response(),
        Some("json") => Json(&current.model).into_response(),
        Some(other) => error(StatusCode::BAD_REQUEST, &format!("unknown format `{other}`: use toml or json")),
    }
}

/// `PUT /v1/config`: the same TOML as the file. 200 with a summary when accepted (or unchanged),
/// 400 with the `ferrule check` error text when invalid; the running config stays as it was.
async fn put_config(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let source = headers
        .get(SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SOURCE)
        .to_owned();
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
    /// The VIP is announced over BGP (it has a healthy backend).
    pub announced: bool,
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
    pub healthy: bool,
    pub id: Option<u32>,
    pub packets: u64,
    pub new_flows: u64,
}

/// `GET /v1/lb/services`: every configured service with its datapath id, health and counters.
async fn lb_services(State(state): State<AppState>) -> Response {
    let current = state.models.current();
    let observed = state.observed.borrow().clone();
    let health = state.health.borrow().clone();
    let lb = observed.lb.unwrap_or_default();
    let backend_id = |addr: std::net::IpAddr, port: u16| {
        lb.backends.iter().find(|(_, b)| b.address == addr && b.port == port).map(|(id, _)| *id)
    };
    let mut services: Vec<LbService> = current
        .model
        .services
        .iter()
        .map(|s| {
            let key = ferrule_xdp_lb::ServiceKey::of(s);
            let vip_net = ipnet::IpNet::from(s.vip).to_string();
            LbService {
                name: s.name.clone(),
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                mode: s.mode.to_string(),
                id: lb.services.get(&key).map(|e| e.id),
                announced: observed.announced_vips.contains(&vip_net),
                packets: 0,
                bytes: 0,
                new_flows: 0,
                backends: s
                    .backends
                    .iter()
                    .map(|b| LbBackend {
                        address: b.address.to_string(),
                        port: b.port,
                        weight: b.weight,
                        healthy: health.is_healthy(&key, std::net::SocketAddr::new(b.address, b.port)),
                        id: backend_id(b.address, b.port),
                        packets: 0,
                        new_flows: 0,
                    })
                    .collect(),
            }
        })
        .collect();
    let service_ids: Vec<u32> = services.iter().filter_map(|s| s.id).collect();
    let backend_ids: Vec<u32> = services.iter().flat_map(|s| s.backends.iter().filter_map(|b| b.id)).collect();
    if let Ok((sc, bc)) = state.datapath.lb_counters(service_ids.clone(), backend_ids.clone()).await {
        for (s, c) in services.iter_mut().filter(|s| s.id.is_some()).zip(sc) {
            (s.packets, s.bytes, s.new_flows) = (c.packets, c.bytes, c.new_flows);
        }
        let mut bc = bc.into_iter();
        for b in services.iter_mut().flat_map(|s| s.backends.iter_mut()).filter(|b| b.id.is_some()) {
            if let Some(c) = bc.next() {
                (b.packets, b.new_flows) = (c.packets, c.new_flows);
            }
        }
    }
    Json(services).into_response()
}

/// `GET /v1/bgp/summary`: one entry per configured neighbor.
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
mod tests {
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
        let datapath =
            DatapathHandle::spawn("/sys/fs/bpf/ferrule/node1".into(), || Ok(InMemoryDatapath::new(&["eth0"]))).unwrap();
        let (_tx, observed) = watch::channel(Observed::default());
        let app = router(AppState {
            models: models.clone(),
            observed,
            datapath,
            speaker: Speaker::spawn(),
            health: watch::channel(Default::default()).1,
            started: Instant::now(),
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
