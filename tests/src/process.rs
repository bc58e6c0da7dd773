//! Identifying and stopping one process by PID without ever hitting a stranger: a PID is only
//! trusted together with the start time read from /proc when we spawned it, so a recycled PID is
//! left alone. Never signals anything by name.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// A process we started, pinned by (pid, start time in clock ticks since boot).
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub pid: u32,
    start_time: Option<u64>,
    pub program: String,
}

impl Tracked {
    pub fn new(pid: u32, program: String) -> Tracked {
        let start_time = stat(pid).map(|s| s.start_time);
        Tracked { pid, start_time, program }
    }

    /// True while the process exists, is not a zombie, and is still the one we started.
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some(s) => s.state != 'Z' && s.state != 'X' && Some(s.start_time) == self.start_time,
            None => false,
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Reaps the process if it is our child and
    /// nobody else has (`waitpid` on someone else's PID just returns ECHILD).
    pub fn terminate(&self, grace: Duration) {
        if !self.is_alive() {
            self.reap();
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let step = Duration::from_millis(50);
        for _ in 0..(grace.as_millis() / step.as_millis()).max(1) {
            self.reap();
            if !self.is_alive() {
                return;
            }
            std::thread::sleep(step);
        }
        if self.is_alive() {
            let _ = kill(pid, Signal::SIGKILL);
            for _ in 0..40 {
                self.reap();
                if !self.is_alive() {
                    return;
                }
                std::thread::sleep(step);
            }
        }
    }

    fn reap(&self) {
        let _ = waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG));
    }
}

struct Stat {
    state: char,
    start_time: u64,
}

/// Reads state and start time from /proc/PID/stat. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last ')'.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    Some(Stat { state: fields.first()?.chars().next()?, start_time: fields.get(19)?.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn terminate_stops_a_sleeping_child_and_reaps_it() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let tracked = Tracked::new(child.id(), "sleep".into());
        assert!(tracked.is_alive());
        tracked.terminate(Duration::from_secs(2));
        assert!(!tracked.is_alive());
        assert!(stat(child.id()).is_none(), "zombie left behind");
        // Already reaped by terminate(), so the std handle has nothing left to wait for.
        assert!(child.try_wait().is_err());
    }

    #[test]
    fn a_recycled_pid_is_not_considered_ours() {
        let mut tracked = Tracked::new(std::process::id(), "self".into());
        assert!(tracked.is_alive());
        tracked.start_time = tracked.start_time.map(|t| t + 1);
        assert!(!tracked.is_alive());
    }
}
