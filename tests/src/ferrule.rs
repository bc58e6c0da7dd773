//! `Ferrule`: a `ferrule daemon` under test, running in a test's network namespace with its own
//! config, state store, API socket and pin directory, plus the CLI calls tests make against it.
//! Dropping it stops the daemon (by PID) and removes its pinned datapath state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{Daemon, NetNs};

/// The `ferrule` binary under test: `$FERRULE_BIN`, else the workspace's debug build
/// (`cargo test --workspace` builds it before running any test).
pub fn ferrule_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FERRULE_BIN") {
        return PathBuf::from(bin);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ferrule");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p ferrule` first (or set FERRULE_BIN)", bin.display());
    bin
}

/// Runs the `ferrule` CLI (from the test's own namespace: the API is a unix socket).
pub fn cli(args: &[&str]) -> Output {
    Command::new(ferrule_bin()).args(args).output().expect("running ferrule")
}

/// Runs `ferrule decap ARGS` (a DSR backend's tc_decap, no daemon) in `ns`, in this test's mount
/// namespace so that its pins land in the host's bpffs and outlive the command (see
/// [`Ferrule::start`]). The status is left to the caller.
pub fn decap(ns: &NetNs, args: &[&str]) -> Result<Output> {
    let mnt = format!("--mount=/proc/{}/ns/mnt", std::process::id());
    let bin = ferrule_bin().display().to_string();
    let mut all = vec![mnt.as_str(), "--", bin.as_str(), "decap"];
    all.extend_from_slice(args);
    ns.exec("nsenter", all)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub struct Ferrule {
    pub ns: NetNs,
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    dir: PathBuf,
    daemon: Option<Daemon>,
    starts: u32,
    pin_dir: PathBuf,
    /// The daemon binary [`Ferrule::start`] runs: [`ferrule_bin`] unless [`Ferrule::with_bin`].
    bin: PathBuf,
}

impl Ferrule {
    /// Prepares a node named `name` in `ns`, writing `config` into `dir` (nothing runs yet).
    pub fn new(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Result<Ferrule> {
        crate::bpffs::ensure_host_bpffs()?;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        Ok(Ferrule {
            ns: ns.clone(),
            name: name.to_string(),
            config: config_path,
            socket: dir.join(format!("{name}.sock")),
            state: dir.join(format!("{name}-state/state.redb")),
            dir: dir.to_path_buf(),
            daemon: None,
            starts: 0,
            pin_dir: PathBuf::from("/sys/fs/bpf/ferrule").join(name.replace('.', ":")),
            bin: ferrule_bin(),
        })
    }

    /// Runs the daemon from `bin` instead (another build, e.g. a benchmark's baseline).
    pub fn with_bin(mut self, bin: PathBuf) -> Ferrule {
        self.bin = bin;
        self
    }

    /// Runs the daemon from `bin` from the next start on (an upgrade, when it was another build).
    pub fn set_bin(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Starts the daemon (extra flags such as `--resume` appended) and waits until its first
    /// reconcile pass is done.
    pub fn start(&mut self, extra: &[&str]) -> Result<()> {
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.starts += 1;
        // `ip netns exec` gives the process a mount namespace whose /sys is remounted, without
        // the host's /sys/fs/bpf; pins made there would vanish with it. Re-entering this test's
        // own mount namespace (nsenter execs in place, so the PID stays ferrule's) keeps the
        // network namespace and the real bpffs, as for a daemon on a real node.
        let mut args = vec![
            format!("--mount=/proc/{}/ns/mnt", std::process::id()),
            "--".into(),
            self.bin.display().to_string(),
            "daemon".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:9641".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn(&self.ns, "ferrule", "nsenter", &args, &log)?;
        let socket = self.socket.clone();
        daemon.wait_ready(Duration::from_secs(20), || {
            let status = show_json(&socket, &["status"])?;
            Ok(status["datapath"]["applied_generation"].is_u64())
        })?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// SIGTERM; fails if the daemon does not exit cleanly.
    pub fn stop(&mut self) -> Result<()> {
        let mut daemon = self.daemon.take().context("no daemon running")?;
        let status = daemon.stop()?;
        if !status.success() {
            bail!("ferrule exited with {status} on SIGTERM:\n{}", daemon.log_tail());
        }
        Ok(())
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    pub fn log_tail(&self) -> String {
        self.daemon.as_ref().map(Daemon::log_tail).unwrap_or_default()
    }

    /// `ferrule show WHAT… --json`.
    pub fn show(&self, what: &[&str]) -> Result<Value> {
        show_json(&self.socket, what)
    }

    /// Writes `config` to a new file and `ferrule apply`s it.
    pub fn apply(&self, config: &str) -> Result<Output> {
        let path = self.dir.join(format!("{}-apply.toml", self.name));
        std::fs::write(&path, config)?;
        Ok(cli(&["apply", "--config", path.to_str().unwrap(), "--socket", self.socket.to_str().unwrap()]))
    }
}

impl Drop for Ferrule {
    fn drop(&mut self) {
        // Stop the daemon before removing the pins it uses.
        self.daemon.take();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// `ferrule show WHAT… --json --socket SOCKET`, parsed.
pub fn show_json(socket: &Path, what: &[&str]) -> Result<Value> {
    let mut args = vec!["show"];
    args.extend_from_slice(what);
    args.extend(["--json", "--socket", socket.to_str().context("non-UTF-8 socket path")?]);
    let out = cli(&args);
    if !out.status.success() {
        bail!("ferrule {}: {}", args.join(" "), text(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing {}", text(&out.stdout)))
}
