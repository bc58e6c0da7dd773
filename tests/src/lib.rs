//! Harness for Ferrule's privileged integration tests: network namespaces, veth links and the
//! external daemons (FRR, BIRD, GoBGP) that tests peer with. Everything it creates is owned by an
//! RAII guard and removed on drop; it never touches the root namespace's links or system services.
//!
//! A privileged test starts with the gate, then builds its topology from guards:
//!
//! ```no_run
//! use ferrule_tests::{net, NetNs};
//!
//! if !ferrule_tests::privileged() {
//!     return;
//! }
//! let a = NetNs::new("ha").unwrap();
//! let b = NetNs::new("hb").unwrap();
//! net::veth(&a, "to-b", &b, "to-a").unwrap();
//! net::add_addr(&a, "to-b", "2001:db8:1::1/64").unwrap();
//! net::add_addr(&b, "to-a", "2001:db8:1::2/64").unwrap();
//! net::ping(&a, "2001:db8:1::2".parse().unwrap(), 3).unwrap();
//! ```

pub mod bgp;
pub mod bird;
pub mod bpffs;
pub mod cmd;
pub mod daemon;
pub mod ferrule;
pub mod frr;
pub mod gobgp;
pub mod net;
pub mod netns;
mod privilege;
pub mod probe;
mod process;
pub mod server;
pub mod workdir;

pub use bgp::{wait_established, BgpConfig, BgpPeer, Family, Neighbor, SessionState};
pub use bird::Bird;
pub use daemon::Daemon;
pub use ferrule::Ferrule;
pub use frr::Frr;
pub use gobgp::GoBgp;
pub use netns::NetNs;
pub use privilege::privileged;
pub use server::{in_netns, TcpServer};
pub use workdir::TestDir;
