//! Command-line interface: the verbs, flags and defaults. Names here are a contract with operators
//! and their scripts: add to them, never rename silently.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SOCKET: &str = "/run/ferrule/ferrule.sock";
pub const DEFAULT_STATE: &str = "/var/lib/ferrule/state.redb";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `ferrule decap`'s default name (pin directory `<bpffs>/ferrule/decap`).
pub const DEFAULT_DECAP_NAME: &str = "decap";

#[derive(Debug, Parser)]
#[command(
    name = "ferrule",
    version,
    about = "Ferrule: BGP and XDP load balancing for bare-metal nodes (the egress gateway is to come)"
)]
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
    /// DSR backends: the program that strips the load balancer's tunnel header (tc_decap) on this
    /// host, run without the daemon. Its state is pinned, so it keeps working after the command
    /// exits and across reboots of nothing but the process.
    #[command(subcommand)]
    Decap(DecapCommand),
}

#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach to interfaces (tcx ingress) and allow tunnels to local addresses; adds to what is
    /// there (running it again with the same arguments changes nothing).
    Attach(DecapAttachArgs),
    /// Detach from interfaces and forget addresses, or remove everything (--all).
    Detach(DecapDetachArgs),
    /// Interfaces (and whether each link is attached), allowed addresses and counters.
    Show(DecapShowArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DecapPinArgs {
    /// Name of this decapsulation setup: its state is pinned under `<bpffs>/ferrule/<name>`.
    #[arg(long, default_value = DEFAULT_DECAP_NAME)]
    pub name: String,
    /// Where bpffs is (mounted there when absent).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DecapAttachArgs {
    /// An interface tunnels arrive on (repeat for several).
    #[arg(long = "interface", short = 'i', value_name = "IFNAME")]
    pub interfaces: Vec<String>,
    /// A local address the load balancer's tunnels are addressed to, i.e. the backend's address
    /// in the service (repeat for several; IPv4 and IPv6).
    #[arg(long = "address", short = 'a', value_name = "ADDRESS")]
    pub addresses: Vec<IpAddr>,
    #[command(flatten)]
    pub pin: DecapPinArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DecapDetachArgs {
    /// An interface to detach from (repeat for several).
    #[arg(long = "interface", short = 'i', value_name = "IFNAME")]
    pub interfaces: Vec<String>,
    /// An address whose tunnels are no longer decapsulated (repeat for several).
    #[arg(long = "address", short = 'a', value_name = "ADDRESS")]
    pub addresses: Vec<IpAddr>,
    /// Detach from every interface and remove the pinned maps too.
    #[arg(long, conflicts_with_all = ["interfaces", "addresses"])]
    pub all: bool,
    #[command(flatten)]
    pub pin: DecapPinArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DecapShowArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pin: DecapPinArgs,
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
    /// `PUT /v1/config`) instead of the file; falls back to --config when the store has none, or
    /// one this build no longer accepts (without --config that is an error).
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
