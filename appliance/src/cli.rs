//! Command-line interface: the verbs, flags and defaults. Names here are a contract with operators
//! and their scripts: add to them, never rename silently.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SOCKET: &str = "/run/ferrule/ferrule.sock";
pub const DEFAULT_STATE: &str = "/var/lib/ferrule/state.redb";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Parser)]
#[command(name = "ferrule", version, about = "Ferrule: BGP, XDP load balancing and egress for bare-metal nodes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file; prints every error as FILE:LINE:COL and exits 2 when invalid.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node daemon in the foreground.
    Daemon(DaemonArgs),
    /// Send a config file to the running daemon; a rejected config leaves the running one untouched.
    Apply {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the daemon for good: every BGP peer gets Cease (our routes are withdrawn at once) and
    /// our kernel routes are removed. (SIGTERM instead keeps the forwarding state for the next
    /// process when `graceful_restart` is configured: that is the way to restart or upgrade.)
    Shutdown(ClientArgs),
    /// Show the running daemon's state.
    Show {
        #[command(subcommand)]
        what: ShowCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// Node, config generation and source, uptime, datapath and uplinks.
    Status(ClientArgs),
    /// Per-interface packet and byte counters of the XDP datapath.
    Interfaces(ClientArgs),
    /// BGP neighbors and routes.
    #[command(subcommand)]
    Bgp(BgpShow),
    /// Load-balanced services: VIP, mode, announcement, backends with health, counters; node-wide events.
    #[command(subcommand)]
    Lb(LbShow),
}

#[derive(Debug, Subcommand)]
pub enum LbShow {
    /// One block per service with its backends.
    Services(ClientArgs),
    /// One row per (service, backend): weight, health, Maglev share and counters.
    Backends {
        /// Only the services of this VIP.
        vip: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Node-wide events: packets passed to the stack and why (no neighbour, MTU, malformed, NAT
    /// fragments, …), ICMP errors and fragments sent on, NAT replies.
    Events(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum BgpShow {
    /// One line per neighbor: AS, state, uptime, prefixes received/accepted/sent, last error.
    Summary(ClientArgs),
    /// BFD sessions of the BGP peers: state, timers, detection time, counters.
    Bfd(ClientArgs),
    /// Every path of every prefix (best and alternatives), or of one prefix or address.
    Routes {
        /// A prefix (exact match) or an address (longest match).
        prefix: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The daemon's API socket.
    #[arg(long, env = "FERRULE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// The config file (TOML). SIGHUP re-reads it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Start from the last config accepted and kept in the state store (e.g. through
    /// `PUT /v1/config`) instead of the file; falls back to --config when the store has none.
    #[arg(long)]
    pub resume: bool,
    /// Node-local state store (redb).
    #[arg(long, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// Where to serve the HTTP API (unix socket, mode 0600).
    #[arg(long, env = "FERRULE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Address for Prometheus metrics (`GET /metrics`).
    #[arg(long, default_value = DEFAULT_METRICS)]
    pub metrics_listen: SocketAddr,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where bpffs is (mounted there when absent); state is pinned under `<bpffs>/ferrule/<node>`.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}
