//! `Daemon`: one long-running external process inside a test namespace, with its output in a log
//! file. It waits for readiness with bounded polling, shows its log when something goes wrong, and
//! on drop stops exactly its own PID (SIGTERM, then SIGKILL after a grace period).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::netns::NetNs;

/// How long a daemon gets to exit cleanly after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many trailing log lines an error or a panicking test shows.
const LOG_TAIL_LINES: usize = 40;

pub struct Daemon {
    name: String,
    ns: NetNs,
    child: Child,
    exited: Option<ExitStatus>,
    log_path: PathBuf,
    /// Files or directories the process leaves behind that are removed once it is gone
    /// (for example FRR's per-PID crash-log directory under /var/tmp/frr).
    cleanup: Vec<PathBuf>,
}

impl Daemon {
    /// Starts `program args…` inside `ns`, appending stdout and stderr to `log_path`.
    pub fn spawn<I, S>(ns: &NetNs, name: &str, program: &str, args: I, log_path: &Path) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child =
            ns.spawn(program, args, log_path).with_context(|| format!("starting {name} in netns {}", ns.name()))?;
        Ok(Daemon {
            name: name.to_string(),
            ns: ns.clone(),
            child,
            exited: None,
            log_path: log_path.to_path_buf(),
            cleanup: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Registers a path to delete after the process has stopped.
    pub fn remove_on_stop(&mut self, path: PathBuf) {
        self.cleanup.push(path);
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The whole log so far (empty if the file cannot be read).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Polls `check` until it returns `Ok(true)`, at most `timeout`. Fails early if the process
    /// exits meanwhile; every error carries the daemon's log tail.
    pub fn wait_ready(&mut self, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
        let what = format!("{} (pid {}) to become ready", self.name, self.pid());
        let mut died = None;
        let result = cmd::poll_until(&what, timeout, Duration::from_millis(200), || {
            if !self.is_running() {
                died = self.exited;
                // Stop polling: returning Ok(true) ends the loop and `died` reports why.
                return Ok(true);
            }
            check()
        });
        if let Some(status) = died {
            bail!(
                "{} exited during startup ({status}); log {}:\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail()
            );
        }
        result
            .with_context(|| format!("{} not ready; log {}:\n{}", self.name, self.log_path.display(), self.log_tail()))
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period. Idempotent.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // The child is ours and not yet reaped, so its PID cannot have been recycled.
        if self.is_running() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let step = Duration::from_millis(50);
            for _ in 0..(STOP_GRACE.as_millis() / step.as_millis()) {
                if !self.is_running() {
                    break;
                }
                std::thread::sleep(step);
            }
        }
        if self.is_running() {
            eprintln!("{} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL", self.name, self.pid());
            let _ = self.child.kill();
        }
        let status = match self.exited {
            Some(status) => status,
            None => self.child.wait().with_context(|| format!("waiting for {} to exit", self.name))?,
        };
        self.exited = Some(status);
        for path in self.cleanup.drain(..) {
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
        Ok(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}), last {LOG_TAIL_LINES} lines ---\n{}\n--- end of {} log ---",
                self.name,
                self.log_path.display(),
                self.log_tail(),
                self.name
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("{}: {e:#}", self.name);
        }
    }
}
