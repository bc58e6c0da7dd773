//! `ferrule`: the node daemon and its command-line client, in one binary.
//!
//! Read top to bottom, the daemon is the data flow of the design:
//! sources (the config file, SIGHUP, `PUT /v1/config`) → the validated [`ferrule_config::Model`]
//! held by the [`model::ModelStore`] (persisted in the redb [`store::Store`]) → the
//! [`reconcile`] loop → the datapath ([`datapath`], eBPF maps and XDP links) and the BGP speaker,
//! whose learned routes [`routes`] installs in the kernel → observed state →
//! the HTTP API on a unix socket ([`api`]), Prometheus metrics ([`metrics`]) and `ferrule show …`.
//! The client subcommands only talk to the socket ([`client`], [`show`]); `ferrule decap` works
//! on a DSR backend's pinned `tc_decap` directly, without a daemon ([`decap`]).

mod api;
mod bgp;
mod cli;
mod client;
mod daemon;
mod datapath;
mod decap;
mod metrics;
mod model;
mod reconcile;
mod routes;
mod show;
mod store;
mod unnumbered;

use std::process::ExitCode;

use clap::Parser;

use cli::{BgpShow, Cli, Command, DecapCommand, LbShow, ShowCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, json } => return show::check(&config, json),
        Command::Daemon(args) => daemon::main(args),
        Command::Apply { config, client } => return client::run(client::apply(config, client)),
        Command::Shutdown(client) => return client::run(client::shutdown(client)),
        Command::Decap(DecapCommand::Attach(args)) => decap::attach(args),
        Command::Decap(DecapCommand::Detach(args)) => decap::detach(args),
        Command::Decap(DecapCommand::Show(args)) => decap::show(args),
        Command::Show { what } => match what {
            ShowCommand::Status(args) => return client::run(show::status(args)),
            ShowCommand::Interfaces(args) => return client::run(show::interfaces(args)),
            ShowCommand::Bgp(BgpShow::Summary(args)) => return client::run(show::bgp_summary(args)),
            ShowCommand::Bgp(BgpShow::Bfd(args)) => return client::run(show::bgp_bfd(args)),
            ShowCommand::Lb(LbShow::Services(args)) => return client::run(show::lb_services(args)),
            ShowCommand::Lb(LbShow::Backends { vip, client }) => return client::run(show::lb_backends(vip, client)),
            ShowCommand::Lb(LbShow::Events(args)) => return client::run(show::lb_events(args)),
            ShowCommand::Bgp(BgpShow::Routes { prefix, client }) => {
                return client::run(show::bgp_routes(prefix, client))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferrule: {err:#}");
            ExitCode::FAILURE
        }
    }
}
