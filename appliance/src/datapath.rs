//! The datapath task: one thread owns the loaded eBPF objects (aya handles are not shared), and the
//! rest of the daemon talks to it over a channel. The [`Datapath`] trait has the real implementation
//! (`ferrule_ebpf::Datapath`) and an in-memory one for tests of everything above it.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use ferrule_ebpf::{InterfaceStats, UplinkStatus};
use tokio::sync::{mpsc, oneshot};

/// What the daemon needs from a datapath. Kept small: later issues add LB and policy map ops.
pub trait Datapath {
    /// Makes the interfaces carrying our XDP program exactly `uplinks`; idempotent.
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus>;
    fn interface_stats(&self) -> Result<Vec<InterfaceStats>>;
}

impl Datapath for ferrule_ebpf::Datapath {
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
        ferrule_ebpf::Datapath::set_uplinks(self, uplinks)
    }

    fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        Ok(ferrule_ebpf::Datapath::interface_stats(self)?)
    }
}

enum Command {
    SetUplinks(Vec<String>, oneshot::Sender<Vec<UplinkStatus>>),
    InterfaceStats(oneshot::Sender<Result<Vec<InterfaceStats>>>),
}

/// A cheap, cloneable handle to the datapath thread.
#[derive(Clone)]
pub struct DatapathHandle {
    tx: mpsc::Sender<Command>,
    pin_dir: PathBuf,
}

impl DatapathHandle {
    /// Starts the datapath thread; `open` runs on it, and its error is returned here.
    pub fn spawn<D, F>(pin_dir: PathBuf, open: F) -> Result<DatapathHandle>
    where
        D: Datapath + 'static,
        F: FnOnce() -> Result<D> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Command>(16);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || {
                let mut datapath = match open() {
                    Ok(datapath) => {
                        let _ = ready_tx.send(Ok(()));
                        datapath
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // Ends when every handle is dropped; the loaded objects are then dropped without
                // unpinning, so pinned programs, links and maps keep forwarding.
                while let Some(command) = rx.blocking_recv() {
                    match command {
                        Command::SetUplinks(uplinks, reply) => {
                            let _ = reply.send(datapath.set_uplinks(&uplinks));
                        }
                        Command::InterfaceStats(reply) => {
                            let _ = reply.send(datapath.interface_stats());
                        }
                    }
                }
            })
            .context("starting the datapath thread")?;
        ready_rx.recv().map_err(|_| anyhow!("the datapath thread ended while loading"))??;
        Ok(DatapathHandle { tx, pin_dir })
    }

    pub fn pin_dir(&self) -> &PathBuf {
        &self.pin_dir
    }

    pub async fn set_uplinks(&self, uplinks: Vec<String>) -> Result<Vec<UplinkStatus>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::SetUplinks(uplinks, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::InterfaceStats(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn gone() -> anyhow::Error {
    anyhow!("the datapath thread has stopped")
}

/// An in-memory datapath for tests: interfaces listed in `existing` attach, others report an error,
/// and every attached interface counts one packet of 100 bytes per stats read.
#[cfg(test)]
pub struct InMemoryDatapath {
    pub existing: Vec<String>,
    attached: Vec<String>,
    reads: std::cell::Cell<u64>,
}

#[cfg(test)]
impl InMemoryDatapath {
    pub fn new(existing: &[&str]) -> Self {
        InMemoryDatapath {
            existing: existing.iter().map(|s| s.to_string()).collect(),
            attached: Vec::new(),
            reads: std::cell::Cell::new(0),
        }
    }
}

#[cfg(test)]
impl Datapath for InMemoryDatapath {
    fn set_uplinks(&mut self, uplinks: &[String]) -> Vec<UplinkStatus> {
        self.attached = uplinks.iter().filter(|u| self.existing.contains(u)).cloned().collect();
        uplinks
            .iter()
            .map(|name| {
                let index = self.existing.iter().position(|e| e == name);
                UplinkStatus {
                    name: name.clone(),
                    ifindex: index.map(|i| i as u32 + 2),
                    attached: index.is_some(),
                    mode: index.map(|_| "native".to_string()),
                    error: index.is_none().then(|| format!("no interface named {name}")),
                }
            })
            .collect()
    }

    fn interface_stats(&self) -> Result<Vec<InterfaceStats>> {
        self.reads.set(self.reads.get() + 1);
        Ok(self
            .attached
            .iter()
            .map(|name| InterfaceStats {
                ifindex: self.existing.iter().position(|e| e == name).unwrap() as u32 + 2,
                name: Some(name.clone()),
                packets: self.reads.get(),
                bytes: self.reads.get() * 100,
            })
            .collect())
    }
}
