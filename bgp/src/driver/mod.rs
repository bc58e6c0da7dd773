//! The tokio driver of the speaker: the only part of this crate that owns sockets, tasks and
//! the clock. It runs each peer's sans-IO [`crate::session::Session`] against real TCP
//! connections and feeds one [`crate::rib::Rib`].
//!
//! ```text
//!   appliance (reconcile loop, API)
//!        │ Speaker::set_config / summary / routes          (mpsc + oneshot replies)
//!        ▼
//!   ┌─────────── speaker task ────────────┐   PeerCmd (mpsc)    ┌──── peer task × N ────┐
//!   │ owns the Rib, the peer table and    │ ──────────────────▶ │ owns one Session FSM, │
//!   │ the listener; decodes UPDATEs into  │                     │ its TCP connections   │
//!   │ the RIB, exports local routes       │ ◀────────────────── │ and timers            │
//!   └─────────────────────────────────────┘   PeerEvent (mpsc)  └───────────────────────┘
//!        ▲ accepted TcpStream (mpsc)  │          peer status (watch) ──▶ speaker (summary)
//!   listener task (port `listen_port`)│
//!                                     └──▶ Fib (watch: Arc<Fib>) ──▶ appliance's kernel-route
//!                                          installer (Speaker::fib)
//! ```
//!
//! Tasks share nothing mutable: commands and events travel on channels, and each peer task
//! publishes its FSM state on a `watch` that the speaker reads for `show bgp summary`.

pub mod auth;
pub mod fib;
pub mod peer;
mod speaker;

pub use auth::{Md5Key, Md5Setter, Md5Target};

/// Sleeps until a state machine's next deadline, or forever when it has none (the driver loops'
/// timer arm: the BGP peer task, the speaker's graceful-restart timers, BFD).
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
pub use fib::{Fib, FibNextHop};
pub use speaker::{
    BfdConfig, ListenRange, NeighborSummary, PathEntry, PeerConfig, RouteEntry, RouteQuery, Speaker, SpeakerConfig,
    SpeakerError, SpeakerOptions,
};
