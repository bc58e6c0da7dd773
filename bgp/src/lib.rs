//! Ferrule's BGP speaker.
//!
//! * [`wire`]: sans-IO decoding and encoding of every message, with RFC 7606 error handling;
//! * [`session`]: the RFC 4271 session FSM, `handle(now, input) -> outputs`;
//! * [`rib`] and [`policy`]: Adj-RIBs-In, the Loc-RIB decision process with ECMP, import and
//!   export policy, Adj-RIBs-Out;
//! * [`driver`]: the tokio tasks that own the sockets and timers and run the rest.
//!
//! Protocol logic never touches a socket or reads a clock: only `driver` does. BFD and graceful
//! restart procedures come with the datacenter-fabric work.

#![forbid(unsafe_code)]

pub mod bfd;
pub mod driver;
pub mod nd;
pub mod policy;
#[cfg(test)]
mod replay_script;
pub mod rib;
pub mod session;
#[cfg(feature = "testutil")]
pub mod testutil;
pub mod wire;
