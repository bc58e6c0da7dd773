//! Bidirectional Forwarding Detection: single-hop, asynchronous mode (RFC 5880, RFC 5881), to
//! notice a dead link or peer in a few hundred milliseconds instead of a BGP hold time.
//!
//! * [`packet`]: the Control packet codec (pure, fuzzed);
//! * [`session`]: one session's state machine, sans-IO: `handle(now, input) -> outputs`;
//! * [`driver`]: the tokio task that owns the UDP sockets (port 3784, GTSM), the clock and
//!   every session, behind the clonable [`Bfd`] handle.
//!
//! It owns liveness only. It must not decide what a failure means for a client: it publishes
//! each session's [`BfdStatus`] on a `watch` channel and the client (the BGP peer driver)
//! decides, distinguishing a detected failure from the peer's administrative shutdown
//! ([`BfdStatus::is_failure`], RFC 5882 3.2). Not implemented: authentication (packets with
//! the A bit are discarded), Demand mode, the Echo function, multihop (RFC 5883).
//!
//! Using it from a client:
//!
//! ```no_run
//! # async fn example() -> Result<(), ferrule_bgp::bfd::BfdError> {
//! use std::time::Duration;
//! use ferrule_bgp::bfd::{Bfd, BfdPeer};
//!
//! let bfd = Bfd::spawn()?; // binds UDP 3784 (IPv4 and IPv6) in the current network namespace
//! let peer = BfdPeer::new("fe80::1".parse().unwrap(), Duration::from_millis(100), 3).interface(2);
//! let mut status = bfd.add(peer).await?;
//! while status.changed().await.is_ok() {
//!     let s = status.borrow_and_update().clone();
//!     if s.is_failure() {
//!         // tear the BGP session down (RFC 9384 Cease subcode 10, BFD Down)
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod driver;
pub mod packet;
pub mod session;

#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;

pub use driver::{Bfd, BfdError, BfdPeer, BfdStatus, BfdSummary, DriverCounters};
pub use packet::{ControlPacket, DecodeError, Diag, State};
pub use session::{Input, Output, Session, SessionConfig, Timers};
