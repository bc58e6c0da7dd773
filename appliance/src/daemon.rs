//! `ferrule daemon`: start-up and the task wiring of the design's runtime diagram.
//!
//! ```text
//!  SIGHUP (file) ─┐                                   ┌──▶ datapath thread (aya: maps, XDP links)
//!  PUT /v1/config ┼─▶ ModelStore ──watch──▶ reconcile ┼──▶ BGP speaker ──fib (watch)──▶ routes
//!                 │   (validate, redb)                │                      (kernel routes, proto 233)
//!                 │                                   └──▶ observed ──watch──▶ API, metrics
//!  SIGTERM ───────┴─▶ stop. With graceful restart configured it is a restart: sessions close
//!                     without NOTIFICATION, kernel routes and pinned datapath stay, the state
//!                     store records when; the next process advertises the Restarting bit and
//!                     deletes no kernel route until its peers' End-of-RIB. Otherwise (and for
//!  POST /v1/shutdown ─▶ `ferrule shutdown`) an orderly stop: Cease to every peer, kernel routes
//!                     removed. Pinned datapath state stays in place either way.
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api;
use crate::cli::{DaemonArgs, LogFormat};
use crate::datapath::DatapathHandle;
use crate::metrics::Metrics;
use crate::model::{Accepted, ModelStore, Origin, Outcome};
use crate::reconcile::{self, Observed};
use crate::routes::{self, NetlinkRouteTable};
use crate::store::{unix_time_ms, PendingRestart, Store};
use ferrule_bgp::driver::{Md5Setter, Md5Target, Speaker, SpeakerOptions};

pub fn main(args: DaemonArgs) -> Result<()> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log file or journald must get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: DaemonArgs) -> Result<()> {
    let started = Instant::now();
    let store = Store::open(&args.state)?;
    let initial = initial_config(&args, &store)?;
    // A previous process that stopped for a restart left its forwarding state: adopt it.
    let restarting = store.take_pending_restart()?.and_then(|p| p.remaining(SystemTime::now()));
    if let Some(left) = restarting {
        info!(window_s = left.as_secs(), "graceful restart: kernel routes kept until every peer has sent End-of-RIB");
    }
    let gr_store = store.clone();
    let metrics = Metrics::new();
    metrics.config_change(initial.origin.label(), if initial.resumed { "resumed" } else { "accepted" });

    let node = initial.model.node.name.clone();
    let pin_dir = ferrule_ebpf::node_pin_dir(&args.bpffs, &node)?;
    let bpffs = args.bpffs.clone();
    let datapath =
        DatapathHandle::spawn(pin_dir.clone(), move || crate::datapath::NodeDatapath::open_at(&bpffs, &node))
            .context("loading the eBPF datapath (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")?;
    info!(pin_dir = %pin_dir.display(), "datapath loaded; pinned state re-used where present");

    let models = ModelStore::new(Arc::new(initial), store, metrics.clone());
    let speaker = Speaker::spawn_with(SpeakerOptions { md5: Some(Arc::new(KernelMd5)), restarting });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let route_table = NetlinkRouteTable::open().context("kernel routes (needs CAP_NET_ADMIN)")?;
    let installer = tokio::spawn(routes::run(speaker.fib(), route_table, shutdown_rx.clone()));
    // The load balancer's pinned maps are read once, here: the reconciler's first pass adopts
    // them from `observed` (it reads them itself only if this failed).
    let mut observed = Observed::default();
    reconcile::adopt_lb(&datapath, &mut observed).await;
    // Backend health checks follow the model's services; their verdicts drive VIP announcements.
    // Backends the pinned backend map marks down (unhealthy before a restart) start unhealthy.
    let down: std::collections::BTreeSet<_> = observed
        .lb
        .iter()
        .flat_map(|lb| lb.backends.values())
        .filter(|b| b.down)
        .map(|b| std::net::SocketAddr::new(b.address, b.port))
        .collect();
    let (observed_tx, observed_rx) = watch::channel(observed);
    if !down.is_empty() {
        info!(backends = down.len(), "backends down before the restart start unhealthy until their checks pass");
    }
    let first = ferrule_xdp_lb::seeded_view(&models.current().model.services, &down, tokio::time::Instant::now());
    let (health_tx, health_rx) = watch::channel(first);
    tokio::spawn(ferrule_xdp_lb::run_health_checker(
        models.subscribe(),
        |accepted: &Arc<Accepted>| accepted.model.services.as_slice(),
        health_tx,
        down,
    ));
    tokio::spawn(reconcile::run(
        models.subscribe(),
        health_rx.clone(),
        datapath.clone(),
        speaker.clone(),
        observed_tx,
        metrics.clone(),
    ));

    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    let api_listener = bind_socket(&args.socket)?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {} (use --metrics-listen)", args.metrics_listen))?;

    let state = api::AppState {
        models: models.clone(),
        observed: observed_rx,
        datapath: datapath.clone(),
        speaker: speaker.clone(),
        health: health_rx,
        started,
        stop: stop_tx,
    };
    let app = api::router(state.clone());
    let mut stop_rx = stop_rx;
    let api_task = tokio::spawn(serve(api_listener, app, shutdown_rx.clone()));
    let metrics_app = metrics_router(metrics.clone(), state);
    let metrics_task = tokio::spawn(serve_tcp(metrics_listener, metrics_app, shutdown_rx));
    info!(socket = %args.socket.display(), metrics = %args.metrics_listen, "ferrule daemon ready");

    let stop = wait_for_signals(&models, args.config.as_deref(), &mut stop_rx).await?;
    // A signal is a restart when peers were promised one (graceful restart configured).
    let model = models.current().model.clone();
    let restart_time = model
        .bgp
        .peers
        .iter()
        .map(|p| &p.options)
        .chain(model.bgp.listen.iter().map(|l| &l.options))
        .filter_map(|o| o.graceful_restart.map(|g| g.restart_time_s))
        .max();
    let restart_time = restart_time.filter(|_| stop == Stop::Signal);
    match restart_time {
        Some(t) => {
            info!(restart_time_s = t, "stopping for a graceful restart: peers keep our routes, kernel routes stay")
        }
        None => info!("shutting down; pinned programs, links and maps stay in place"),
    }
    speaker.shutdown(restart_time.is_some()).await;
    let pending =
        restart_time.map(|t| PendingRestart { stopped_at_unix_ms: unix_time_ms(SystemTime::now()), restart_time_s: t });
    if let Err(err) = gr_store.set_pending_restart(pending) {
        warn!(error = %format!("{err:#}"), "cannot record the graceful restart; the next start will be an ordinary one");
    }
    let _ = shutdown_tx.send(true);
    for task in [api_task, metrics_task] {
        if let Ok(Err(err)) = task.await {
            warn!(error = %format!("{err:#}"), "server ended with an error");
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    // The installer stops first, so nothing re-adds what the flush removes.
    match installer.await {
        Ok(_) if restart_time.is_some() => info!("kernel routes left in place for the next process"),
        Ok(mut table) => match routes::flush_on_shutdown(&mut table).await {
            Ok(removed) => info!(removed, "kernel routes removed"),
            Err(err) => {
                warn!(error = %format!("{err:#}"), "removing our kernel routes (ip route show proto {})", routes::RTPROT_FERRULE)
            }
        },
        Err(err) => warn!(%err, "the kernel-route installer failed; its routes stay in place"),
    }
    Ok(())
}

/// The config to start from: `--resume` takes the state store's last accepted config, otherwise
/// (or when the store has none) the `--config` file, which is then persisted.
fn initial_config(args: &DaemonArgs, store: &Store) -> Result<Accepted> {
    if args.resume {
        match store.load_config() {
            Ok(Some(stored)) => {
                info!(generation = stored.generation, origin = %stored.origin, state = %store.path().display(),
                    "resuming from the last accepted config in the state store");
                return Ok(stored);
            }
            Ok(None) => warn!(state = %store.path().display(), "--resume: the state store holds no config yet"),
            // A unit started with both keeps starting after an upgrade whose stricter checks
            // refuse the stored config, instead of failing at every restart.
            Err(err) if args.config.is_some() => {
                warn!(error = %format!("{err:#}"), "--resume: the stored config cannot be used; starting from --config")
            }
            Err(err) => return Err(err),
        }
    }
    let Some(path) = args.config.as_deref() else {
        bail!("no config: pass --config FILE (or --resume with a state store that holds one)");
    };
    let (model, text) = ferrule_config::load_file(path).map_err(|err| anyhow::anyhow!("{err}"))?;
    // Generations continue from the store, so they only ever grow on this node.
    // (Also past a stored config that no longer validates.)
    let generation = match store.stored_generation() {
        Ok(stored) => stored.unwrap_or(0) + 1,
        Err(err) => {
            warn!(error = %format!("{err:#}"), "the state store's config record is unreadable: generations start over at 1");
            1
        }
    };
    let accepted = Accepted {
        model,
        text,
        origin: Origin::File(path.display().to_string()),
        generation,
        accepted_at: SystemTime::now(),
        resumed: false,
    };
    store.save_config(&accepted)?;
    info!(config = %path.display(), generation, "starting from the config file");
    Ok(accepted)
}

/// Binds the API socket with mode 0600. A stale socket file is replaced; a live one is an error.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // Only a socket is ours to replace: a mistyped --socket naming a file is not deleted.
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; pass --socket with the API socket's path", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another ferrule daemon is serving {}; stop it or pass --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // The socket is created with the mode the umask leaves: under a 0077 umask, so that it is
    // never open to others between bind and chmod.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound.with_context(|| format!("cannot bind the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, app: axum::Router, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .context("API server")
}

async fn serve_tcp(listener: TcpListener, app: axum::Router, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .context("metrics server")
}

/// `GET /metrics`: datapath counters, BGP and load-balancer state read at scrape time, from the
/// same sources as the API.
fn metrics_router(metrics: Metrics, state: api::AppState) -> axum::Router {
    use axum::http::header;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, state) = (metrics.clone(), state.clone());
            async move {
                let stats = state.datapath.interface_stats().await.unwrap_or_else(|err| {
                    warn!(error = %format!("{err:#}"), "reading interface counters for metrics");
                    Vec::new()
                });
                let neighbors = state.speaker.summary().await.unwrap_or_default();
                let lb = api::lb_view(&state, None).await;
                let lb_events = state
                    .datapath
                    .lb_events()
                    .await
                    .inspect_err(|err| warn!(error = %format!("{err:#}"), "reading load-balancer events for metrics"))
                    .ok();
                let decap_events = state
                    .datapath
                    .decap_events()
                    .await
                    .inspect_err(|err| warn!(error = %format!("{err:#}"), "reading tc_decap's counters for metrics"))
                    .ok()
                    .flatten();
                (
                    [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.encode(stats, neighbors, lb, lb_events, decap_events),
                )
            }
        }),
    )
}

/// Why the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT: a restart when graceful restart is configured.
    Signal,
    /// `ferrule shutdown`: always orderly.
    Orderly,
}

/// Runs until SIGTERM, SIGINT or an API shutdown. SIGHUP re-reads the `--config` file through
/// the same validation; a rejected file is logged and changes nothing.
async fn wait_for_signals(
    models: &ModelStore,
    config: Option<&Path>,
    stop: &mut tokio::sync::mpsc::Receiver<()>,
) -> Result<Stop> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Stop::Signal),
            _ = int.recv() => return Ok(Stop::Signal),
            Some(()) = stop.recv() => return Ok(Stop::Orderly),
            _ = hup.recv() => reload(models, config).await,
        }
    }
}

/// TCP MD5 keys through `ferrule_ebpf::sockopt` (the crate that holds the `unsafe`).
#[derive(Debug)]
struct KernelMd5;

impl Md5Setter for KernelMd5 {
    fn set(&self, socket: std::os::fd::BorrowedFd<'_>, target: Md5Target, key: &[u8]) -> std::io::Result<()> {
        let peer =
            ferrule_ebpf::sockopt::Md5Peer { address: target.address, prefix_len: target.prefix_len, ifindex: None };
        ferrule_ebpf::sockopt::set_tcp_md5(socket, peer, key)
    }
}

async fn reload(models: &ModelStore, config: Option<&Path>) {
    let Some(path) = config.map(PathBuf::from) else {
        warn!("SIGHUP: no --config file to re-read (started with --resume only)");
        return;
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(err) => {
            error!(config = %path.display(), %err, "SIGHUP: cannot read the config file; running config unchanged");
            models.metrics_rejected("sighup");
            return;
        }
    };
    let models = models.clone();
    let name = path.display().to_string();
    let result = tokio::task::spawn_blocking(move || models.accept(Origin::Sighup(name.clone()), &name, text)).await;
    match result {
        Ok(Ok(Outcome::Changed { accepted, .. })) => {
            info!(generation = accepted.generation, "SIGHUP: config reloaded")
        }
        Ok(Ok(Outcome::Unchanged(_))) => info!("SIGHUP: config file unchanged"),
        Ok(Err(err)) => error!("SIGHUP: config rejected; running config unchanged:\n{err}"),
        Err(err) => error!(%err, "SIGHUP: reload task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored config that no longer validates does not restart generations at 1: `--resume`
    /// alone refuses it (naming why), with `--config` too the file is used, continuing after
    /// the stored generation.
    #[test]
    fn a_config_file_after_a_stored_config_that_no_longer_validates_continues_its_generations() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.redb");
        let file = dir.path().join("node.toml");
        let text = "[node]\nname = \"node1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n";
        std::fs::write(&file, text).unwrap();
        let store = Store::open(&state).unwrap();
        let old = Accepted {
            model: ferrule_config::parse("t.toml", text).unwrap(),
            text: "[node]\nname = \"node1\"\nasn = 0\n".into(),
            origin: Origin::File("old.toml".into()),
            generation: 41,
            accepted_at: SystemTime::UNIX_EPOCH,
            resumed: false,
        };
        store.save_config(&old).unwrap();
        let args = |extra: &[&str]| {
            let mut argv = vec!["ferrule".to_string(), "--state".into(), state.display().to_string()];
            argv.extend(extra.iter().map(|s| s.to_string()));
            Cli::try_parse_from(argv).unwrap().daemon
        };
        let err = initial_config(&args(&["--resume"]), &store).unwrap_err();
        assert!(format!("{err:#}").contains("no longer validates"), "{err:#}");
        // With both, the file is used (a unit started so keeps starting after such an upgrade).
        let started = initial_config(&args(&["--resume", "--config", file.to_str().unwrap()]), &store).unwrap();
        assert_eq!(started.generation, 42);
        assert!(!started.resumed);
        assert_eq!(store.load_config().unwrap().unwrap().generation, 42, "and it is the stored one now");
    }

    /// A stale socket (its daemon gone) is replaced, and the new one has mode 0600; a file that
    /// is not a socket is refused and left alone.
    #[tokio::test]
    async fn the_api_socket_replaces_a_stale_socket_but_never_another_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferrule.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
        let listener = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind_socket(&path).unwrap_err();
        assert!(err.to_string().contains("another ferrule daemon"), "{err:#}");
        drop(listener);

        let state = dir.path().join("state.redb");
        std::fs::write(&state, b"precious").unwrap();
        let err = bind_socket(&state).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&state).unwrap(), b"precious");
    }
}
