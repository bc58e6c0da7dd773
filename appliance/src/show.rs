//! `ferrule check` and the `show` commands: human tables modelled on what vtysh and birdc print, and
//! `--json` with the API's documented keys. Rendering is pure (`render_*`) so it is tested directly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use ferrule_config::LoadError;
use ferrule_ebpf::InterfaceStats;

use crate::api::Status;
use crate::cli::ClientArgs;
use crate::client::{get_json, Done};
use ferrule_bgp::driver::{NeighborSummary, RouteEntry};

/// `ferrule check --config FILE`: exit 0 with a one-line summary, 2 with every error, 1 when the
/// file cannot be read.
pub fn check(path: &Path, json: bool) -> ExitCode {
    match ferrule_config::load_file(path) {
        Ok((model, _)) => {
            if json {
                println!("{}", serde_json::json!({ "valid": true, "summary": model.summary(), "errors": [] }));
            } else {
                println!("{}: ok: {}", path.display(), model.summary());
            }
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(errors)) => {
            if json {
                let list: Vec<_> = errors
                    .errors
                    .iter()
                    .map(|e| serde_json::json!({ "file": e.source, "line": e.line, "column": e.col, "field": e.path, "message": e.message }))
                    .collect();
                println!("{}", serde_json::json!({ "valid": false, "errors": list }));
            } else {
                eprintln!("{errors}");
                let n = errors.errors.len();
                eprintln!("{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
            }
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("ferrule: {err}");
            ExitCode::FAILURE
        }
    }
}

pub async fn status(args: ClientArgs) -> Result<Done> {
    let (status, raw): (Status, String) = get_json(&args.socket, "/v1/status").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_status(&status));
    }
    Ok(Done::Ok)
}

/// Prints the daemon's list at `path` as it came (`--json`) or laid out by `render`, followed by
/// `not_found` when the list is empty (nothing matched what the user asked for).
async fn print_list<T: serde::de::DeserializeOwned>(
    args: &ClientArgs,
    path: &str,
    render: fn(&[T]) -> String,
    not_found: Option<String>,
) -> Result<Done> {
    let (items, raw): (Vec<T>, String) = get_json(&args.socket, path).await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render(&items));
        if let Some(note) = not_found.filter(|_| items.is_empty()) {
            println!("{note}");
        }
    }
    Ok(Done::Ok)
}

pub async fn interfaces(args: ClientArgs) -> Result<Done> {
    print_list(&args, "/v1/interfaces", render_interfaces, None).await
}

pub async fn bgp_summary(args: ClientArgs) -> Result<Done> {
    let (neighbors, raw): (Vec<NeighborSummary>, String) = get_json(&args.socket, "/v1/bgp/summary").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        let (status, _): (Status, String) = get_json(&args.socket, "/v1/status").await?;
        print!("{}", render_bgp_summary(&status, &neighbors));
    }
    Ok(Done::Ok)
}

pub async fn bgp_bfd(args: ClientArgs) -> Result<Done> {
    let (sessions, raw): (Vec<serde_json::Value>, String) = get_json(&args.socket, "/v1/bgp/bfd").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_bfd(&sessions));
    }
    Ok(Done::Ok)
}

/// `show bgp bfd`: one line per session, like FRR's `show bfd peers brief` with the timers.
pub fn render_bfd(sessions: &[serde_json::Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Session count: {}", sessions.len());
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:<10} {:<10} {:>8} {:>8} {:>10} {:>9} {:>9}  Diag",
        "Peer", "Ifindex", "State", "Remote", "TxMs", "Detect", "Failures", "PktIn", "PktOut"
    );
    let ms = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |us| format!("{:.1}", us as f64 / 1000.0));
    for s in sessions {
        let _ = writeln!(
            out,
            "{:<28} {:>7} {:<10} {:<10} {:>8} {:>8} {:>10} {:>9} {:>9}  {}",
            s["peer"].as_str().unwrap_or("?"),
            s["ifindex"].as_u64().map_or("-".to_string(), |i| i.to_string()),
            s["state"].as_str().unwrap_or("?"),
            s["remote_state"].as_str().unwrap_or("?"),
            ms(&s["transmit_interval_us"]),
            ms(&s["detection_time_us"]),
            s["failures"].to_string(),
            s["packets_in"].to_string(),
            s["packets_out"].to_string(),
            s["diag"].as_str().unwrap_or(""),
        );
    }
    out
}

pub async fn bgp_routes(prefix: Option<String>, args: ClientArgs) -> Result<Done> {
    let path = match &prefix {
        // Validated here too, so a typo gets the same message without a round trip.
        Some(p) => {
            crate::api::parse_route_query(p).map_err(|e| anyhow::anyhow!(e))?;
            format!("/v1/bgp/routes?prefix={p}")
        }
        None => "/v1/bgp/routes".to_string(),
    };
    print_list(&args, &path, render_bgp_routes, prefix.map(|p| format!("% Network not in table: {p}"))).await
}

pub async fn lb_services(args: ClientArgs) -> Result<Done> {
    print_list(&args, "/v1/lb/services", render_lb_services, None).await
}

/// `show lb services`: a header line per service, then its backends, like `ipvsadm -Ln`.
pub fn render_lb_services(services: &[crate::api::LbService]) -> String {
    let mut out = String::new();
    for s in services {
        let id = s.id.map_or("-".to_string(), |i| i.to_string());
        let _ = writeln!(
            out,
            "{} {}:{}/{} {} id {id} {} packets {} bytes {} new flows {}",
            s.name,
            s.vip,
            s.port,
            s.protocol,
            s.mode,
            if s.announced { "announced" } else { "not announced" },
            s.packets,
            s.bytes,
            s.new_flows
        );
        if let Some(error) = &s.install_error {
            let _ = writeln!(out, "  ! change not installed (the maps keep the previous state; retrying): {error}");
        }
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  -> {:<40} weight {:>4} {:<9} packets {} new flows {}{}",
                format!("{}:{}", b.address, b.port),
                b.weight,
                if b.healthy { "healthy" } else { "unhealthy" },
                b.packets,
                b.new_flows,
                if b.draining { " (draining)" } else { "" }
            );
        }
    }
    if services.is_empty() {
        let _ = writeln!(out, "(no services configured)");
    }
    out
}

pub async fn lb_backends(vip: Option<String>, args: ClientArgs) -> Result<Done> {
    let path = match &vip {
        // Validated here too, so a typo gets the same message without a round trip.
        Some(v) => format!("/v1/lb/backends?vip={}", crate::api::parse_vip(v).map_err(|e| anyhow::anyhow!(e))?),
        None => "/v1/lb/backends".to_string(),
    };
    print_list(&args, &path, render_lb_backends, vip.map(|v| format!("% No service with VIP {v}"))).await
}

pub async fn lb_events(args: ClientArgs) -> Result<Done> {
    let (events, raw): (BTreeMap<String, u64>, String) = get_json(&args.socket, "/v1/lb/events").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_lb_events(&events));
    }
    Ok(Done::Ok)
}

/// `show lb events`: every node-wide event of the load balancer with its count (zeros too, so the
/// list is always the same) and what it means. An event the daemon does not report (an older
/// daemon) shows `-`; one this CLI does not know (a newer daemon) comes last, without a meaning.
pub fn render_lb_events(events: &BTreeMap<String, u64>) -> String {
    let count = |name: &str| events.get(name).map_or("-".to_string(), u64::to_string);
    let known = crate::api::LB_EVENTS.iter().map(|e| vec![e.name.to_string(), count(e.name), e.meaning.to_string()]);
    let unknown = events
        .iter()
        .filter(|(name, _)| !crate::api::LB_EVENTS.iter().any(|e| e.name == name.as_str()))
        .map(|(name, n)| vec![name.clone(), n.to_string(), String::new()]);
    let rows: Vec<Vec<String>> = known.chain(unknown).collect();
    let mut out = columns(&["Event", "Packets", ""], &rows, &[1]);
    let _ = writeln!(out, "\nNode-wide, summed over CPUs; passed = left to the kernel's stack (XDP_PASS)");
    out
}

/// `address:port`, with brackets around an IPv6 address.
fn host_port(address: &str, port: u16) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{address}:{port}"),
    }
}

/// `show lb backends`: one row per (service, backend) with the counters `ipvsadm -Ln --stats`
/// shows per real server (Conns = new flows), the packets dropped after the backend was chosen
/// (all reasons; `--json` has them by reason), the health state and how long it has held (as
/// `show bgp summary` prints uptimes) and the Maglev share. A backend
/// listed by several services is marked: the datapath counts per backend, so its counters are
/// its totals over all of them. A draining backend (weight 0) has State `draining`, and its health
/// (still checked, and what decides whether it may come back) moves to the last column.
pub fn render_lb_backends(rows: &[crate::api::LbBackendRow]) -> String {
    let mut per_backend: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for id in rows.iter().filter_map(|r| r.backend_id) {
        *per_backend.entry(id).or_default() += 1;
    }
    let shared = |r: &crate::api::LbBackendRow| r.backend_id.is_some_and(|id| per_backend[&id] > 1);
    let header = [
        "Service", "VIP", "Mode", "Backend", "Weight", "State", "Since", "Maglev", "Conns", "InPkts", "InBytes",
        "Drops", "",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let maglev = if r.maglev_table_size == 0 { "-".into() } else { format!("{:.1}%", r.maglev_share * 100.0) };
            vec![
                r.service.clone(),
                format!("{}/{}", host_port(&r.vip, r.port), r.protocol),
                r.mode.clone(),
                format!("{}{}", host_port(&r.address, r.backend_port), if shared(r) { "*" } else { "" }),
                r.weight.to_string(),
                if r.draining { "draining".to_string() } else { r.health.clone() },
                r.health_since_s.map_or("-".to_string(), hms),
                maglev,
                r.new_flows.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
                r.drops.values().sum::<u64>().to_string(),
                match (r.draining, &r.health_reason) {
                    (false, reason) => reason.clone().unwrap_or_default(),
                    (true, None) => format!("health: {}", r.health),
                    (true, Some(reason)) => format!("health: {} ({reason})", r.health),
                },
            ]
        })
        .collect();
    let mut out = columns(&header, &cells, &[4, 6, 7, 8, 9, 10, 11]);
    if rows.is_empty() {
        let _ = writeln!(out, "(no services configured)");
    }
    if rows.iter().any(shared) {
        let _ = writeln!(out, "\n* listed by several services: counters are the backend's totals over all of them");
    }
    out
}

/// Lays `rows` out under `header` in columns as wide as their widest cell, two spaces apart,
/// right-aligned for the column indexes in `right` (numbers); trailing blanks are trimmed.
pub(crate) fn columns(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `show bgp summary`, laid out as vtysh prints it: counters for Established neighbors, the
/// state for the others, and the last error at the end of the line.
pub fn render_bgp_summary(status: &Status, neighbors: &[NeighborSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "BGP router identifier {}, local AS number {}", status.router_id, status.asn);
    if let Some(err) = &status.datapath.bgp_error {
        let _ = writeln!(out, "% BGP configuration not applied: {err}");
    }
    let _ = writeln!(out, "Neighbors: {}\n", neighbors.len());
    let _ = writeln!(
        out,
        "{:<39} {:>10} {:>8} {:>8} {:>10} {:<12} {:>7} {:>7} {:>7}  Notes",
        "Neighbor", "AS", "MsgRcvd", "MsgSent", "Up/Down", "State", "PfxRcd", "PfxAcc", "PfxSnt"
    );
    for n in neighbors {
        let up = n.uptime_s.map_or("never".to_string(), hms);
        // FRR marks dynamic neighbors with a `*`.
        let address = match &n.interface {
            Some(interface) => format!("{}%{interface}", n.address),
            None => n.address.to_string(),
        };
        let address = if n.dynamic.is_some() { format!("*{address}") } else { address };
        let mut notes = Vec::new();
        if let Some(bfd) = &n.bfd {
            notes.push(format!("BFD {bfd}"));
        }
        if n.stale > 0 {
            notes.push(format!("GR: {} stale", n.stale));
        }
        if n.out_queue > 0 {
            // Bytes the peer has not read yet (FRR's OutQ); route changes wait above 1 MiB.
            notes.push(format!("OutQ {} bytes", n.out_queue));
        }
        if let Some(err) = &n.last_error {
            notes.push(err.clone());
        }
        let _ = writeln!(
            out,
            "{:<39} {:>10} {:>8} {:>8} {:>10} {:<12} {:>7} {:>7} {:>7}  {}",
            address,
            n.asn,
            n.messages_in,
            n.messages_out,
            up,
            n.state,
            n.received,
            n.accepted,
            n.sent,
            notes.join("; ")
        );
    }
    if neighbors.iter().any(|n| n.dynamic.is_some()) {
        let _ = writeln!(out, "\n* dynamic neighbor, accepted from a [[bgp.listen]] range");
    }
    out
}

/// `show bgp routes`: one line per path with the status codes of `show ip bgp`.
pub fn render_bgp_routes(routes: &[RouteEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Status codes: * valid, > best, = multipath, S stale; origin i IGP, e EGP, ? incomplete\n");
    let _ = writeln!(out, "   {:<24} {:<40} {:>6} {:>6}  {:<24} From", "Network", "Next Hop", "MED", "LocPrf", "Path");
    for route in routes {
        for (i, p) in route.paths.iter().enumerate() {
            let code = format!(
                "{}{}{}",
                if p.stale { "S" } else { "*" },
                if p.best {
                    ">"
                } else if p.multipath {
                    "="
                } else {
                    " "
                },
                " "
            );
            let origin = match p.origin.as_str() {
                "igp" => "i",
                "egp" => "e",
                _ => "?",
            };
            let path = if p.as_path.is_empty() { origin.to_string() } else { format!("{} {origin}", p.as_path) };
            let network = if i == 0 { route.prefix.as_str() } else { "" };
            let _ = writeln!(
                out,
                "{code}{:<24} {:<40} {:>6} {:>6}  {:<24} {}",
                network,
                p.next_hop.as_deref().unwrap_or("(self)"),
                p.med.map_or(String::new(), |m| m.to_string()),
                p.local_pref,
                path,
                p.from
            );
            let communities: Vec<&str> = p.communities.iter().chain(&p.large_communities).map(String::as_str).collect();
            if !communities.is_empty() {
                let _ = writeln!(out, "      Communities: {}", communities.join(" "));
            }
        }
    }
    let paths: usize = routes.iter().map(|r| r.paths.len()).sum();
    let _ = writeln!(out, "\nDisplayed {} prefixes ({paths} paths)", routes.len());
    out
}

/// `hh:mm:ss`, or `NdHHhMMm` past a day, as vtysh prints uptimes.
fn hms(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let uptime = humantime::format_duration(Duration::from_secs(s.uptime_s));
    let accepted = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(s.config.accepted_at_unix_ms));
    let _ = writeln!(out, "Ferrule {}, node {}, local AS {}, router-id {}", s.version, s.node, s.asn, s.router_id);
    let _ = writeln!(out, "Daemon pid {}, up {uptime}", s.pid);
    let _ = writeln!(
        out,
        "Config generation {} from {} {}, accepted {accepted}{}",
        s.config.generation,
        s.config.source,
        s.config.source_detail,
        if s.config.resumed { " (resumed from the state store)" } else { "" }
    );
    let _ = writeln!(out, "  {}", s.config.summary);
    let applied = match s.datapath.applied_generation {
        None => "none yet".to_string(),
        Some(g) if s.datapath.applied_complete != Some(false) => g.to_string(),
        Some(g) => format!("{g}, in part (retrying: see the errors below and the daemon's log)"),
    };
    let _ = writeln!(out, "Datapath pinned at {}, applied generation {applied}", s.datapath.pin_dir);
    if s.datapath.uplinks.is_empty() {
        let _ = writeln!(out, "No uplinks configured");
    } else {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<16} {:>7}  {:<9} {:<8} Error", "Uplink", "Ifindex", "XDP", "Mode");
        for u in &s.datapath.uplinks {
            let _ = writeln!(
                out,
                "{:<16} {:>7}  {:<9} {:<8} {}",
                u.name,
                u.ifindex.map_or("-".into(), |i| i.to_string()),
                if u.attached { "attached" } else { "down" },
                u.mode.as_deref().unwrap_or("-"),
                u.error.as_deref().unwrap_or("")
            );
        }
    }
    if let Some(error) = &s.datapath.lb_error {
        let _ = writeln!(out, "\nLoad balancer maps not updated (retrying): {error}");
    }
    if let Some(error) = &s.datapath.decap_error {
        let _ = writeln!(out, "\nDSR decapsulation (tc_decap) not set up: {error}");
    }
    if let Some(decap) = &s.datapath.decap {
        let addresses: Vec<String> = decap.addresses.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "\nDSR decapsulation (tc_decap) of tunnels to {}", addresses.join(", "));
        let _ = writeln!(out, "{:<16} {:<9} Error", "Interface", "tc_decap");
        for i in &decap.interfaces {
            let state = if i.attached { "attached" } else { "down" };
            let line = format!("{:<16} {:<9} {}", i.name, state, i.error.as_deref().unwrap_or(""));
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}

pub fn render_interfaces(stats: &[InterfaceStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<16} {:>7} {:>16} {:>20}", "Interface", "Ifindex", "RX packets", "RX bytes");
    for s in stats {
        let name = s.name.clone().unwrap_or_else(|| "(gone)".into());
        let _ = writeln!(out, "{:<16} {:>7} {:>16} {:>20}", name, s.ifindex, s.packets, s.bytes);
    }
    if stats.is_empty() {
        let _ = writeln!(out, "(no packets counted yet)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigStatus, DatapathStatus};
    use ferrule_ebpf::UplinkStatus;

    fn sample_status() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            uptime_s: 3723,
            node: "node1".into(),
            asn: 65101,
            router_id: "192.0.2.11".into(),
            config: ConfigStatus {
                generation: 3,
                source: "api".into(),
                source_detail: "new.toml".into(),
                accepted_at_unix_ms: 0,
                resumed: true,
                summary: "node node1".into(),
            },
            datapath: DatapathStatus {
                pin_dir: "/sys/fs/bpf/ferrule/node1".into(),
                applied_generation: Some(3),
                applied_complete: Some(false),
                uplinks: vec![
                    UplinkStatus {
                        name: "eth0".into(),
                        ifindex: Some(2),
                        attached: true,
                        mode: Some("native".into()),
                        error: None,
                    },
                    UplinkStatus {
                        name: "eth9".into(),
                        ifindex: None,
                        attached: false,
                        mode: None,
                        error: Some("no such interface".into()),
                    },
                ],
                bgp_generation: Some(3),
                bgp_error: None,
                decap: None,
                decap_error: None,
                lb_error: None,
            },
        }
    }

    #[test]
    fn status_table_shows_dsr_decapsulation_when_configured() {
        let mut status = sample_status();
        assert!(!render_status(&status).contains("tc_decap"));
        status.datapath.decap = Some(crate::datapath::DecapStatus {
            interfaces: vec![
                crate::datapath::DecapInterface { name: "eth0".into(), attached: true, error: None },
                crate::datapath::DecapInterface {
                    name: "eth7".into(),
                    attached: false,
                    error: Some("interface \"eth7\": attaching tc_decap (tcx ingress): No such device".into()),
                },
            ],
            addresses: vec!["198.51.100.2".parse().unwrap(), "2001:db8:300::21".parse().unwrap()],
        });
        let text = render_status(&status);
        assert!(
            text.ends_with(
                "\nDSR decapsulation (tc_decap) of tunnels to 198.51.100.2, 2001:db8:300::21
Interface        tc_decap  Error
eth0             attached
eth7             down      interface \"eth7\": attaching tc_decap (tcx ingress): No such device
"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_table_shows_why_the_load_balancer_maps_were_not_updated() {
        let mut status = sample_status();
        assert!(!render_status(&status).contains("Load balancer"));
        status.datapath.lb_error = Some("map fr_lb_tables: Cannot allocate memory".into());
        let text = render_status(&status);
        assert!(
            text.contains("\nLoad balancer maps not updated (retrying): map fr_lb_tables: Cannot allocate memory\n"),
            "{text}"
        );
    }

    #[test]
    fn status_table_shows_node_config_and_uplinks() {
        let text = render_status(&sample_status());
        assert!(text.contains("node node1, local AS 65101, router-id 192.0.2.11"), "{text}");
        assert!(text.contains("up 1h 2m 3s"), "{text}");
        assert!(
            text.contains(
                "Config generation 3 from api new.toml, accepted 1970-01-01T00:00:00Z (resumed from the state store)"
            ),
            "{text}"
        );
        assert!(text.contains("applied generation 3, in part (retrying: see the errors below"), "{text}");
        let mut status = sample_status();
        status.datapath.applied_complete = Some(true);
        assert!(render_status(&status).contains("applied generation 3\n"));
        status.datapath.applied_complete = None;
        assert!(render_status(&status).contains("applied generation 3\n"), "a daemon older than the field");
        let eth0 = text.lines().find(|l| l.starts_with("eth0")).unwrap();
        assert_eq!(eth0.split_whitespace().collect::<Vec<_>>(), ["eth0", "2", "attached", "native"]);
        let eth9 = text.lines().find(|l| l.starts_with("eth9")).unwrap();
        assert!(eth9.contains("down") && eth9.ends_with("no such interface"), "{eth9}");
    }

    fn neighbor(state: &str, uptime: Option<u64>) -> NeighborSummary {
        NeighborSummary {
            address: "2001:db8:1::1".parse().unwrap(),
            asn: 65000,
            state: state.into(),
            uptime_s: uptime,
            received: 3,
            accepted: 2,
            rejected: 1,
            sent: 1,
            messages_in: 12,
            messages_out: 14,
            out_queue: 0,
            flaps: 0,
            hold_time: Some(90),
            families: vec!["IPv6 unicast".into()],
            last_error: None,
            interface: None,
            dynamic: None,
            graceful_restart: false,
            stale: 0,
            bfd: None,
        }
    }

    #[test]
    fn bgp_summary_marks_dynamic_neighbors_and_shows_bfd_and_stale_paths() {
        let mut n = neighbor("Established", Some(5));
        n.dynamic = Some("2001:db8:500::/64".into());
        n.bfd = Some("Up".into());
        n.stale = 2;
        n.out_queue = 1_500_000;
        let mut ll = neighbor("Established", Some(5));
        ll.address = "fe80::1".parse().unwrap();
        ll.interface = Some("tor1".into());
        let text = render_bgp_summary(&sample_status(), &[n, ll]);
        let line = text.lines().find(|l| l.starts_with("*2001:db8:1::1")).unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("BFD Up; GR: 2 stale; OutQ 1500000 bytes"), "{line}");
        assert!(text.contains("* dynamic neighbor"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("fe80::1%tor1 ")), "unnumbered neighbor with its interface: {text}");
    }

    #[test]
    fn bfd_sessions_render_one_aligned_row_each() {
        let session = serde_json::json!({
            "peer": "fe80::1", "ifindex": 4, "state": "Up", "remote_state": "Up", "diag": "no diagnostic",
            "transmit_interval_us": 100000, "detection_time_us": 300000, "failures": 2,
            "packets_in": 31, "packets_out": 34
        });
        let text = render_bfd(&[session]);
        assert!(text.starts_with("Session count: 1"), "{text}");
        let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row, ["fe80::1", "4", "Up", "Up", "100.0", "300.0", "2", "31", "34", "no", "diagnostic"]);
        let header = text.lines().nth(1).unwrap();
        let line = text.lines().nth(2).unwrap();
        assert_eq!(header.find("PktOut").map(|i| i + 6), line.find("34").map(|i| i + 2), "{text}");
    }

    #[test]
    fn bgp_summary_lists_each_neighbor_with_counters() {
        let mut down = neighbor("Active", None);
        down.address = "192.0.2.1".parse().unwrap();
        down.last_error = Some("hold timer expired".into());
        let text = render_bgp_summary(&sample_status(), &[neighbor("Established", Some(3723)), down]);
        assert!(text.starts_with("BGP router identifier 192.0.2.11, local AS number 65101"), "{text}");
        let up = text.lines().find(|l| l.starts_with("2001:db8:1::1")).unwrap();
        assert_eq!(
            up.split_whitespace().collect::<Vec<_>>(),
            ["2001:db8:1::1", "65000", "12", "14", "01:02:03", "Established", "3", "2", "1"]
        );
        let active = text.lines().find(|l| l.starts_with("192.0.2.1 ")).unwrap();
        assert!(active.contains("never") && active.ends_with("hold timer expired"), "{active}");
    }

    #[test]
    fn bgp_routes_mark_best_and_multipath_paths() {
        let path = |from: &str, best: bool, multipath: bool| ferrule_bgp::driver::PathEntry {
            from: from.into(),
            next_hop: Some(from.into()),
            as_path: "65000".into(),
            origin: "igp".into(),
            med: None,
            local_pref: 100,
            communities: vec!["65000:1".into()],
            large_communities: vec![],
            best,
            multipath,
            stale: false,
            age_s: 5,
        };
        let routes = vec![RouteEntry {
            prefix: "0.0.0.0/0".into(),
            paths: vec![path("192.0.2.1", true, true), path("198.51.100.1", false, true)],
        }];
        let text = render_bgp_routes(&routes);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('*')).collect();
        assert!(lines[0].starts_with("*> 0.0.0.0/0") && lines[0].contains("65000 i"), "{text}");
        assert!(lines[1].starts_with("*=  ") && lines[1].ends_with("198.51.100.1"), "{text}");
        assert!(text.contains("Communities: 65000:1") && text.contains("Displayed 1 prefixes (2 paths)"), "{text}");
    }

    fn row(service: &str, vip: &str, address: &str, backend_id: u32) -> crate::api::LbBackendRow {
        crate::api::LbBackendRow {
            service: service.into(),
            vip: vip.into(),
            port: 80,
            protocol: "tcp".into(),
            mode: "dsr".into(),
            service_id: Some(1),
            address: address.into(),
            backend_port: 80,
            backend_id: Some(backend_id),
            weight: 1,
            draining: false,
            health: "healthy".into(),
            health_reason: None,
            health_since_s: Some(192),
            maglev_slots: 16384,
            maglev_table_size: 65537,
            maglev_share: 16384.0 / 65537.0,
            packets: 12,
            bytes: 960,
            new_flows: 2,
            drops: drops(&ferrule_ebpf::LbDrops { encap_failed: 1, nat_ports: 2, ..Default::default() }),
        }
    }

    fn drops(d: &ferrule_ebpf::LbDrops) -> std::collections::BTreeMap<String, u64> {
        crate::api::drop_reasons(d).into_iter().map(|(reason, n)| (reason.to_owned(), n)).collect()
    }

    #[test]
    fn lb_backends_table_has_a_row_per_service_backend_with_health_share_and_counters() {
        let mut down = row("web", "203.0.113.10", "198.51.100.3", 2);
        (down.health, down.health_reason, down.maglev_slots, down.maglev_share) =
            ("unhealthy".into(), Some("connect: Connection refused".into()), 0, 0.0);
        down.health_since_s = Some(2 * 86_400 + 3 * 3_600 + 5 * 60 + 9);
        down.drops = drops(&ferrule_ebpf::LbDrops { no_node_address: 40, nat_family: 2, ..Default::default() });
        let mut v6 = row("web6", "2001:db8:100::10", "2001:db8:2::2", 3);
        (v6.service_id, v6.backend_id, v6.maglev_table_size, v6.health, v6.health_since_s) =
            (None, None, 0, "unchecked".into(), None);
        let text = render_lb_backends(&[row("web", "203.0.113.10", "198.51.100.2", 1), down, v6]);
        let lines: Vec<&str> = text.lines().collect();
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            words(lines[0]),
            [
                "Service", "VIP", "Mode", "Backend", "Weight", "State", "Since", "Maglev", "Conns", "InPkts",
                "InBytes", "Drops"
            ]
        );
        assert_eq!(
            words(lines[1]),
            [
                "web",
                "203.0.113.10:80/tcp",
                "dsr",
                "198.51.100.2:80",
                "1",
                "healthy",
                "00:03:12",
                "25.0%",
                "2",
                "12",
                "960",
                "3"
            ]
        );
        assert!(
            lines[2].contains(" unhealthy  2d03h05m ") && lines[2].ends_with(" 42  connect: Connection refused"),
            "{text}"
        );
        // The total drops are right-aligned under their header.
        let drops_end = lines[0].find("Drops").unwrap() + "Drops".len();
        assert_eq!(lines[1].rfind(" 3").map(|i| i + 2), Some(drops_end), "{text}");
        assert_eq!(words(lines[3])[1..4], ["[2001:db8:100::10]:80/tcp", "dsr", "[2001:db8:2::2]:80"]);
        assert_eq!(
            words(lines[3])[5..8],
            ["unchecked", "-", "-"],
            "not seen by the checker, no table: no time, no share"
        );
        // Columns line up whatever the address lengths.
        let mode = lines[0].find("Mode").unwrap();
        assert!(lines[1..4].iter().all(|l| l[mode..].starts_with("dsr ")), "{text}");
        assert!(!text.contains('*'), "no backend is shared: {text}");

        let shared = render_lb_backends(&[
            row("web", "203.0.113.10", "198.51.100.2", 1),
            row("api", "203.0.113.11", "198.51.100.2", 1),
        ]);
        assert!(shared.contains("198.51.100.2:80*") && shared.contains("* listed by several services"), "{shared}");
        assert!(render_lb_backends(&[]).contains("(no services configured)"));
    }

    #[test]
    fn lb_backends_table_shows_draining_backends_with_their_health_last() {
        let drained = |health: &str, reason: Option<&str>| {
            let mut r = row("web", "203.0.113.10", "198.51.100.3", 2);
            (r.weight, r.draining, r.maglev_slots, r.maglev_share) = (0, true, 0, 0.0);
            (r.health, r.health_reason) = (health.into(), reason.map(Into::into));
            r
        };
        let text = render_lb_backends(&[
            row("web", "203.0.113.10", "198.51.100.2", 1),
            drained("healthy", None),
            drained("unhealthy", Some("connect: Connection refused")),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(lines[2])[4..8], ["0", "draining", "00:03:12", "0.0%"], "{text}");
        assert!(lines[2].ends_with("  health: healthy"), "{text}");
        assert!(lines[3].ends_with("  health: unhealthy (connect: Connection refused)"), "{text}");
        assert_eq!(words(lines[1])[5], "healthy", "a backend with weight is not draining");
    }

    #[test]
    fn lb_services_mark_draining_backends() {
        let backend = |address: &str, weight: u32| crate::api::LbBackend {
            address: address.into(),
            port: 80,
            weight,
            healthy: true,
            draining: weight == 0,
            id: Some(1),
            packets: 5,
            new_flows: 1,
        };
        let service = crate::api::LbService {
            name: "web".into(),
            vip: "203.0.113.10".into(),
            port: 80,
            protocol: "tcp".into(),
            mode: "dsr".into(),
            id: Some(1),
            announced: true,
            install_error: None,
            packets: 10,
            bytes: 640,
            new_flows: 2,
            backends: vec![backend("198.51.100.2", 1), backend("198.51.100.3", 0)],
        };
        let text = render_lb_services(std::slice::from_ref(&service));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("198.51.100.2:80") && lines[1].ends_with("new flows 1"), "{text}");
        assert!(lines[2].contains("weight    0 healthy") && lines[2].ends_with("new flows 1 (draining)"), "{text}");

        let refused =
            crate::api::LbService { install_error: Some("fr_lb_tables: Cannot allocate memory".into()), ..service };
        let text = render_lb_services(&[refused]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("  ! change not installed") && lines[1].ends_with("Cannot allocate memory"),
            "{text}"
        );
    }

    /// What the daemon answers for `events`, read back as the CLI reads it.
    fn events_answer(events: ferrule_ebpf::LbEvents) -> BTreeMap<String, u64> {
        serde_json::from_value(serde_json::to_value(crate::api::LbEventsJson(events)).unwrap()).unwrap()
    }

    #[test]
    fn lb_events_table_lists_every_event_with_its_count_and_meaning() {
        let events = ferrule_ebpf::LbEvents { fib_pass: 1234567, mtu_pass: 3, nat_reply: 42, ..Default::default() };
        assert_eq!(
            render_lb_events(&events_answer(events)),
            "\
Event           Packets
malformed             0  passed: truncated or inconsistent headers (IHL < 5, lengths beyond the frame, IP version not the ethertype's, ICMP quote cut short)
ext_hdr_limit         0  passed: more IPv6 extension headers than the fast path walks
frag_unknown          0  passed: a later fragment whose first fragment was not seen
fib_pass        1234567  passed: no route or no neighbour (ARP/ND) entry for the next hop yet; the stack resolves it
mtu_pass              3  passed: larger than the route's MTU once encapsulated, and not answered with too_big
nat_unhandled         0  passed: a fragment to a NAT service, or an ICMP error NAT cannot translate (no conntrack entry)
icmp_forwarded        0  sent on: an ICMP error about a load-balanced flow, to its backend (NAT: or back to the client)
icmp_no_flow          0  sent on: such an ICMP error (DSR) whose flow had no conntrack entry; Maglev chose the backend
frag_forwarded        0  sent on: a later fragment, to the backend its first fragment went to
nat_reply            42  sent on: a backend's reply in a NAT flow, translated back to the client
vlan_redirect         0  passed: a tagged frame whose next hop is out of another interface
too_big               0  answered: too big for the route to the backend; ICMP \"too big\" sent back to the client

Node-wide, summed over CPUs; passed = left to the kernel's stack (XDP_PASS)
"
        );
    }

    #[test]
    fn lb_events_table_marks_events_the_daemon_did_not_report_and_lists_unknown_ones_last() {
        let mut answer = events_answer(ferrule_ebpf::LbEvents { malformed: 7, ..Default::default() });
        answer.remove("vlan_redirect");
        answer.insert("gre_pass".into(), 5);
        let text = render_lb_events(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "malformed             7  passed: truncated or inconsistent headers (IHL < 5, lengths beyond the frame, \
                 IP version not the ethertype's, ICMP quote cut short)",
                "ext_hdr_limit         0  passed: more IPv6 extension headers than the fast path walks",
                "frag_unknown          0  passed: a later fragment whose first fragment was not seen",
                "fib_pass              0  passed: no route or no neighbour (ARP/ND) entry for the next hop yet; the stack \
                 resolves it",
                "mtu_pass              0  passed: larger than the route's MTU once encapsulated, and not answered with too_big",
                "nat_unhandled         0  passed: a fragment to a NAT service, or an ICMP error NAT cannot translate (no \
                 conntrack entry)",
                "icmp_forwarded        0  sent on: an ICMP error about a load-balanced flow, to its backend (NAT: or back to \
                 the client)",
                "icmp_no_flow          0  sent on: such an ICMP error (DSR) whose flow had no conntrack entry; Maglev chose \
                 the backend",
                "frag_forwarded        0  sent on: a later fragment, to the backend its first fragment went to",
                "nat_reply             0  sent on: a backend's reply in a NAT flow, translated back to the client",
                "vlan_redirect         -  passed: a tagged frame whose next hop is out of another interface",
                "too_big               0  answered: too big for the route to the backend; ICMP \"too big\" sent back to the client",
                "gre_pass              5",
                "",
                "Node-wide, summed over CPUs; passed = left to the kernel's stack (XDP_PASS)",
            ]
        );
    }

    #[test]
    fn interface_table_lists_counters() {
        let text =
            render_interfaces(&[InterfaceStats { ifindex: 7, name: Some("veth0".into()), packets: 10, bytes: 1280 }]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["veth0", "7", "10", "1280"]);
        assert!(render_interfaces(&[]).contains("no packets counted yet"));
    }
}
