//! Ferrule's BGP speaker.
//!
//! Today this crate owns the BGP-4 wire codec ([`wire`]): sans-IO decoding and encoding of
//! every message with RFC 7606 error handling. The session FSM, the RIBs, policy, BFD and the
//! tokio driver that owns sockets and timers are still to be written; they will live here
//! and consume [`wire`]. This crate never touches a socket or a clock in protocol logic.

#![forbid(unsafe_code)]

pub mod driver;
pub mod policy;
pub mod rib;
pub mod session;
#[cfg(feature = "testutil")]
pub mod testutil;
pub mod wire;
