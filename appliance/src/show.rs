//! `ferrule check` and the `show` commands: human tables modelled on what vtysh and birdc print, and
//! `--json` with the API's documented keys. Rendering is pure (`render_*`) so it is tested directly.

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

pub async fn interfaces(args: ClientArgs) -> Result<Done> {
    let (stats, raw): (Vec<InterfaceStats>, String) = get_json(&args.socket, "/v1/interfaces").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_interfaces(&stats));
    }
    Ok(Done::Ok)
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

pub async fn bgp_routes(prefix: Option<String>, args: ClientArgs) -> Result<Done> {
    let path = match &prefix {
        // Validated here too, so a typo gets the same message without a round trip.
        Some(p) => {
            crate::api::parse_route_query(p).map_err(|e| anyhow::anyhow!(e))?;
            format!("/v1/bgp/routes?prefix={p}")
        }
        None => "/v1/bgp/routes".to_string(),
    };
    let (routes, raw): (Vec<RouteEntry>, String) = get_json(&args.socket, &path).await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_bgp_routes(&routes));
        if routes.is_empty() {
            if let Some(p) = prefix {
                println!("% Network not in table: {p}");
            }
        }
    }
    Ok(Done::Ok)
}

pub async fn lb_services(args: ClientArgs) -> Result<Done> {
    let (services, raw): (Vec<crate::api::LbService>, String) = get_json(&args.socket, "/v1/lb/services").await?;
    if args.json {
        println!("{}", raw.trim_end());
    } else {
        print!("{}", render_lb_services(&services));
    }
    Ok(Done::Ok)
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
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  -> {:<40} weight {:>4} {:<9} packets {} new flows {}",
                format!("{}:{}", b.address, b.port),
                b.weight,
                if b.healthy { "healthy" } else { "unhealthy" },
                b.packets,
                b.new_flows
            );
        }
    }
    if services.is_empty() {
        let _ = writeln!(out, "(no services configured)");
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
        "{:<39} {:>10} {:>8} {:>8} {:>10} {:<12} {:>7} {:>7} {:>7}  Last error",
        "Neighbor", "AS", "MsgRcvd", "MsgSent", "Up/Down", "State", "PfxRcd", "PfxAcc", "PfxSnt"
    );
    for n in neighbors {
        let up = n.uptime_s.map_or("never".to_string(), hms);
        let _ = writeln!(
            out,
            "{:<39} {:>10} {:>8} {:>8} {:>10} {:<12} {:>7} {:>7} {:>7}  {}",
            n.address,
            n.asn,
            n.messages_in,
            n.messages_out,
            up,
            n.state,
            n.received,
            n.accepted,
            n.sent,
            n.last_error.as_deref().unwrap_or("")
        );
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
    let applied = s.datapath.applied_generation.map_or("none yet".to_string(), |g| g.to_string());
    let _ = writeln!(out, "Datapath pinned at {}, applied generation {applied}", s.datapath.pin_dir);
    if s.datapath.uplinks.is_empty() {
        let _ = writeln!(out, "No uplinks configured");
        return out;
    }
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
            },
        }
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
            flaps: 0,
            hold_time: Some(90),
            families: vec!["IPv6 unicast".into()],
            last_error: None,
        }
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

    #[test]
    fn interface_table_lists_counters() {
        let text =
            render_interfaces(&[InterfaceStats { ifindex: 7, name: Some("veth0".into()), packets: 10, bytes: 1280 }]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["veth0", "7", "10", "1280"]);
        assert!(render_interfaces(&[]).contains("no packets counted yet"));
    }
}
