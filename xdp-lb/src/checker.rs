//! The health checker's I/O: probes backends (TCP connect, or HTTP/1.1 `GET`) and drives the
//! schedule of `health::Scheduler` in one tokio task, publishing a `HealthView` whenever it changes.
//! It decides nothing itself (rise/fall and timing live in `health`) and connects only to backends.

use std::collections::{BTreeSet, HashMap};
use std::future::pending;
use std::net::SocketAddr;
use std::time::Duration;

use ferrule_config::{HealthCheck, HealthKind, Service};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::health::{HealthView, Scheduler, TargetKey};

/// Why one check of one backend failed. The text ends up in `HealthView` and `show` output.
#[derive(Debug, Error)]
pub enum CheckError {
    #[error("no answer within {timeout_ms} ms (health.timeout_ms)")]
    Timeout { timeout_ms: u32 },
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange: {0}")]
    Http(#[source] std::io::Error),
    #[error("HTTP answer does not start with a status line: {line:?}")]
    BadStatusLine { line: String },
    #[error("HTTP status {got}, expected {expected} (health.expect_status)")]
    Status { got: u16, expected: u16 },
}

/// Longest status line read; a backend sending more without a line end is not speaking HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Runs one check of `backend`, bounded by `check.timeout_ms` as a whole (connect and exchange).
/// TCP: the connection completes. HTTP: `GET path` with `Host` and `Connection: close` answers a
/// status line with `expect_status` (200 when unset); the rest of the answer is not read.
pub async fn check_once(backend: SocketAddr, check: &HealthCheck) -> Result<(), CheckError> {
    let limit = Duration::from_millis(u64::from(check.timeout_ms.max(1)));
    match tokio::time::timeout(limit, probe(backend, check)).await {
        Ok(result) => result,
        Err(_) => Err(CheckError::Timeout { timeout_ms: check.timeout_ms }),
    }
}

async fn probe(backend: SocketAddr, check: &HealthCheck) -> Result<(), CheckError> {
    let mut stream = TcpStream::connect(backend).await.map_err(CheckError::Connect)?;
    match check.kind {
        HealthKind::Tcp => Ok(()),
        HealthKind::Http => {
            let path = check.path.as_deref().unwrap_or("/");
            let expected = check.expect_status.unwrap_or(200);
            let got = http_status(&mut stream, backend, path).await?;
            if got == expected {
                Ok(())
            } else {
                Err(CheckError::Status { got, expected })
            }
        }
    }
}

async fn http_status(stream: &mut TcpStream, backend: SocketAddr, path: &str) -> Result<u16, CheckError> {
    // `SocketAddr` prints IPv6 in brackets, which is also the form `Host` wants.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {backend}\r\nUser-Agent: ferrule-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(CheckError::Http)?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() > MAX_STATUS_LINE {
            break MAX_STATUS_LINE;
        }
        let n = stream.read(&mut chunk).await.map_err(CheckError::Http)?;
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    parse_status_line(&buf[..end])
}

/// `HTTP/1.x NNN reason` → NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, CheckError> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let bad = || CheckError::BadStatusLine { line: text.chars().take(80).collect() };
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    let code = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

/// The health checker task. Watches the desired services (`services_of` picks the list out of
/// whatever the channel carries, e.g. `|m: &Arc<Model>| m.services.as_slice()`), checks every
/// backend of every service that has `health`, and publishes on `view` whenever a backend's health
/// changes or the set of checked backends does. A new service list keeps the state of backends
/// whose check did not change.
///
/// `down`: backends the datapath's backend map marks down at start (after a restart): their checks
/// start unhealthy and need `rise` good results (see [`crate::health`]).
///
/// Returns when the service channel's sender is dropped or nobody holds a `view` receiver any more.
pub async fn run<T, F>(
    mut desired: watch::Receiver<T>,
    services_of: F,
    view: watch::Sender<HealthView>,
    down: BTreeSet<SocketAddr>,
) where
    F: Fn(&T) -> &[Service],
{
    let services = services_of(&desired.borrow_and_update()).to_vec();
    let mut schedule = Scheduler::seeded(&services, &down, Instant::now());
    publish(&view, &schedule);

    let mut probes: JoinSet<Result<(), CheckError>> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (TargetKey, u64)> = HashMap::new();
    loop {
        for probe in schedule.take_due(Instant::now()) {
            let (backend, check) = (probe.key.1, probe.check);
            let handle = probes.spawn(async move { check_once(backend, &check).await });
            running.insert(handle.id(), (probe.key, probe.epoch));
        }
        let deadline = schedule.next_deadline();
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    tracing::debug!("service list closed; health checker stops");
                    return;
                }
                let services = services_of(&desired.borrow_and_update()).to_vec();
                schedule.reconfigure(&services, Instant::now());
            }
            Some(done) = probes.join_next_with_id() => {
                let (id, result) = match done {
                    Ok((id, result)) => (id, result.map_err(|e| e.to_string())),
                    // Only a bug panics a probe; count it as a failed check so the target is not
                    // left in flight (and never checked again).
                    Err(e) => (e.id(), Err(format!("health check task failed: {e}"))),
                };
                if let Some((key, epoch)) = running.remove(&id) {
                    schedule.record(&key, epoch, result, Instant::now());
                }
            }
            () = wait_until(deadline) => {}
            () = view.closed() => {
                tracing::debug!("nobody reads backend health; health checker stops");
                return;
            }
        }
        publish(&view, &schedule);
    }
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

fn publish(view: &watch::Sender<HealthView>, schedule: &Scheduler) {
    let next = schedule.view();
    view.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        *current = next;
        true
    });
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use ferrule_config::{AnnounceWhen, Backend, Mode, Protocol};
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;

    use super::*;
    use crate::{BackendHealth, ServiceKey};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// Every wait in these tests is bounded by this.
    const TEST_LIMIT: Duration = Duration::from_secs(5);

    fn tcp(interval_ms: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            interval_ms,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
            path: None,
            expect_status: None,
        }
    }

    fn http(path: &str, expect: u16) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Http,
            interval_ms: 50,
            timeout_ms: 300,
            rise: 1,
            fall: 1,
            path: Some(path.to_owned()),
            expect_status: Some(expect),
        }
    }

    /// A port on 127.0.0.1 that refuses connections: bound once, then released.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Accepts connections and drops them, for as long as the returned task lives.
    async fn tcp_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        (addr, task)
    }

    /// Answers every request with `answer` and keeps the requests it saw.
    async fn http_responder(
        answer: &'static str,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut chunk = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 4096 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                log.lock().await.push(String::from_utf8_lossy(&request).into_owned());
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        (addr, seen, task)
    }

    #[tokio::test]
    async fn tcp_check_passes_on_listener_and_fails_on_closed_port() {
        let (open, task) = tcp_listener().await;
        assert!(check_once(open, &tcp(100)).await.is_ok());
        let closed = closed_port().await;
        assert!(matches!(check_once(closed, &tcp(100)).await, Err(CheckError::Connect(_))));
        task.abort();
    }

    #[tokio::test]
    async fn http_check_sends_get_with_host_and_close_and_accepts_expected_status() {
        let (addr, seen, task) = http_responder("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        check_once(addr, &http("/healthz", 200)).await.unwrap();
        let request = seen.lock().await[0].clone();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("\r\nHost: {addr}\r\n")), "{request}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        task.abort();
    }

    #[tokio::test]
    async fn http_check_fails_on_other_status() {
        let (addr, _, task) = http_responder("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let err = check_once(addr, &http("/", 200)).await.unwrap_err();
        assert!(matches!(err, CheckError::Status { got: 503, expected: 200 }), "{err}");
        // The same answer is healthy for a check that expects it.
        assert!(check_once(addr, &http("/", 503)).await.is_ok());
        task.abort();
    }

    #[tokio::test]
    async fn http_check_fails_on_an_answer_that_is_not_http() {
        let (addr, _, task) = http_responder("SSH-2.0-OpenSSH_9.2\r\n").await;
        let err = check_once(addr, &http("/", 200)).await.unwrap_err();
        assert!(matches!(err, CheckError::BadStatusLine { .. }), "{err}");
        task.abort();
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_backend() {
        // Accepts and holds the connection without answering.
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let started = std::time::Instant::now();
        let err = check_once(addr, &http("/", 200)).await.unwrap_err();
        assert!(matches!(err, CheckError::Timeout { timeout_ms: 300 }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        task.abort();
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r").unwrap(), 204);
        assert_eq!(parse_status_line(b"HTTP/1.0 200").unwrap(), 200);
        for bad in [&b""[..], b"HTTP/1.1", b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2x0 OK", b"ICY 200 OK"] {
            assert!(parse_status_line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn service(backends: &[SocketAddr], health: HealthCheck) -> Service {
        Service {
            name: "web".to_owned(),
            vip: "192.0.2.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            mode: Mode::Nat,
            backends: backends.iter().map(|a| Backend { address: a.ip(), port: a.port(), weight: 1 }).collect(),
            health: Some(health),
            announce: AnnounceWhen::Healthy,
            maglev_table_size: 65537,
        }
    }

    /// Waits (bounded) for a published view that satisfies `want`.
    async fn wait_for(rx: &mut watch::Receiver<HealthView>, want: impl Fn(&HealthView) -> bool) -> HealthView {
        tokio::time::timeout(TEST_LIMIT, async {
            loop {
                {
                    let view = rx.borrow_and_update();
                    if want(&view) {
                        return view.clone();
                    }
                }
                rx.changed().await.expect("checker stopped");
            }
        })
        .await
        .expect("health view did not reach the expected state in time")
    }

    #[tokio::test]
    async fn checker_marks_dead_backend_and_keeps_states_across_service_changes() {
        let (live, live_task) = tcp_listener().await;
        let dead = closed_port().await;
        let key = ServiceKey { vip: "192.0.2.10".parse().unwrap(), port: 80, protocol: Protocol::Tcp };
        let (services_tx, services_rx) = watch::channel(vec![service(&[live, dead], tcp(300))]);
        let (view_tx, mut view_rx) = watch::channel(HealthView::default());
        let checker = tokio::spawn(run(services_rx, |s: &Vec<Service>| s.as_slice(), view_tx, BTreeSet::new()));

        let view = wait_for(&mut view_rx, |v| !v.is_healthy(&key, dead)).await;
        assert_eq!(view.get(&key, live), Some(&BackendHealth::Healthy));
        assert!(
            matches!(view.get(&key, dead), Some(BackendHealth::Unhealthy { reason }) if reason.starts_with("connect: ")),
            "{view:?}"
        );

        // Adding a backend publishes it at once (as healthy) without resetting the dead one.
        let (added, added_task) = tcp_listener().await;
        services_tx.send(vec![service(&[live, dead, added], tcp(300))]).unwrap();
        let view = wait_for(&mut view_rx, |v| v.get(&key, added).is_some()).await;
        assert!(!view.is_healthy(&key, dead), "dead backend was reset by the reconfiguration: {view:?}");

        // Once the listener goes away the added backend turns unhealthy.
        added_task.abort();
        wait_for(&mut view_rx, |v| !v.is_healthy(&key, added)).await;

        drop(services_tx);
        tokio::time::timeout(TEST_LIMIT, checker).await.expect("checker did not stop").unwrap();
        live_task.abort();
    }

    #[tokio::test]
    async fn checker_without_health_publishes_nothing_to_check() {
        let (live, live_task) = tcp_listener().await;
        let mut svc = service(&[live], tcp(20));
        svc.health = None;
        let (services_tx, services_rx) = watch::channel(vec![svc]);
        let (view_tx, view_rx) = watch::channel(HealthView::default());
        let checker = tokio::spawn(run(services_rx, |s: &Vec<Service>| s.as_slice(), view_tx, BTreeSet::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(view_rx.borrow().is_empty());
        let key = ServiceKey { vip: "192.0.2.10".parse().unwrap(), port: 80, protocol: Protocol::Tcp };
        assert!(view_rx.borrow().since(&key, live).is_some(), "the unchecked backend is dated");
        drop(view_rx);
        tokio::time::timeout(TEST_LIMIT, checker).await.expect("checker did not stop without readers").unwrap();
        drop(services_tx);
        live_task.abort();
    }
}
