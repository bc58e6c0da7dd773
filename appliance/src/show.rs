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

    #[test]
    fn status_table_shows_node_config_and_uplinks() {
        let status = Status {
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
            },
        };
        let text = render_status(&status);
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

    #[test]
    fn interface_table_lists_counters() {
        let text =
            render_interfaces(&[InterfaceStats { ifindex: 7, name: Some("veth0".into()), packets: 10, bytes: 1280 }]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["veth0", "7", "10", "1280"]);
        assert!(render_interfaces(&[]).contains("no packets counted yet"));
    }
}
