//! `NetNs`: an RAII guard for one named network namespace created by the test. It runs commands
//! inside it (`ip netns exec`), remembers every long-running process it started there, and on drop
//! stops those (by PID) and deletes the namespace. It never touches a namespace it did not create.

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::process::Tracked;

/// A network namespace owned by the test. Cloning yields another handle to the same namespace;
/// it is torn down when the last handle is dropped, so a daemon holding a handle keeps its
/// namespace alive until the daemon itself is gone.
#[derive(Clone)]
pub struct NetNs {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    spawned: Mutex<Vec<Tracked>>,
}

/// Grace period between SIGTERM and SIGKILL for processes still running at teardown.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl NetNs {
    /// Creates a namespace named `<prefix><pid>-<n>` (unique across parallel tests and concurrent
    /// test binaries) and brings its loopback up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if prefix.is_empty() || prefix.len() > 8 || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("netns prefix {prefix:?} must be 1-8 characters of [A-Za-z0-9-]");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}-{n}", std::process::id());
        cmd::run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on the guard owns the namespace, so an error below still deletes it.
        let ns = NetNs { inner: Arc::new(Inner { name, spawned: Mutex::new(Vec::new()) }) };
        ns.run("ip", ["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A `Command` that runs `program` inside the namespace. `ip netns exec` execs the program
    /// in place (no extra fork), so the child's PID is the program's PID.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).arg(program);
        cmd
    }

    /// Runs `program args…` in the namespace to completion; the status is left to the caller.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::output(self.command(program).args(args))
    }

    /// Runs `program args…` in the namespace, requires success and returns stdout.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::run(self.command(program).args(args)).with_context(|| format!("in network namespace {}", self.name()))
    }

    /// Starts `program args…` in the background inside the namespace with stdout and stderr
    /// appended to `log`. The PID is recorded so that dropping the namespace stops it even if the
    /// caller forgot to. Prefer [`crate::Daemon::spawn`], which also stops it on its own drop.
    pub fn spawn<I, S>(&self, program: &str, args: I, log: &Path) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("duplicating log file handle {}", log.display()))?;
        let mut command = self.command(program);
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
        self.inner
            .spawned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Tracked::new(child.id(), cmd::describe(&command)));
        Ok(child)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let spawned = std::mem::take(self.spawned.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for process in &spawned {
            if process.is_alive() {
                eprintln!("netns {}: stopping pid {} left running: {}", self.name, process.pid, process.program);
            }
            process.terminate(STOP_GRACE);
        }
        // Processes we did not start may still sit in the namespace (a daemon's own children).
        // They are not ours to kill; deleting the name does not end them, so say so.
        if let Ok(out) = cmd::output(Command::new("ip").args(["netns", "pids", &self.name])) {
            let left = String::from_utf8_lossy(&out.stdout);
            let left: Vec<&str> = left.split_whitespace().collect();
            if !left.is_empty() {
                eprintln!("netns {}: processes not started by the harness remain: {}", self.name, left.join(" "));
            }
        }
        if let Err(e) = cmd::run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("netns {}: cannot delete: {e:#}", self.name);
        }
    }
}
