//! Code that must run inside a test's network namespace without a process of its own: a thread
//! that enters the namespace ([`in_netns`]) and a TCP server on such a thread ([`TcpServer`]),
//! for backends and clients of end-to-end tests. Only the spawned thread changes namespace.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::NetNs;

/// Runs `f` on a thread that has moved into `ns` and returns its result.
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let netns = File::open(format!("/run/netns/{}", ns.name()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET).context("setns into the test namespace")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside the namespace panicked"))?
    })
}

/// A TCP server on `addr` inside a namespace: each accepted connection goes to `handle`. Stops
/// (and its listening socket closes) when dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Returns once the socket listens, or with the bind error.
    pub fn start(ns: &NetNs, addr: &str, handle: impl Fn(TcpStream, SocketAddr) + Send + 'static) -> Result<TcpServer> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("server address {addr}"))?;
        let netns = File::open(format!("/run/netns/{}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                setns(&netns, CloneFlags::CLONE_NEWNET).context("setns into the test namespace")?;
                let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Bounded by the stop flag, which Drop sets; each idle round sleeps 20 ms.
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        // Accepted sockets inherit non-blocking mode; handlers expect blocking.
                        if conn.set_nonblocking(false).is_ok() {
                            handle(conn, peer);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx.recv().context("server thread ended before listening")??;
        Ok(TcpServer { stop, thread: Some(thread) })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
