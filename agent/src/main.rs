//! `hostwatch`: the agent binary. CLI, config loading, and the daemon's life cycle.
//!
//! Reads its config file and whatever the enabled collectors read; serves HTTP.
//! Runs as any user: collectors that need more report themselves down.

mod agent_metrics;
mod bursts_view;
mod cli;
mod config;
mod daemon;
mod doctor;
mod listing;
mod logging;
mod scheduler;
mod server;
mod store;
mod systemd;
mod web_config;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => daemon::run(args),
        Command::Validate(args) => return cli::validate(&args),
        Command::Doctor(args) => return cli::doctor(&args),
        Command::Collectors(args) => cli::collectors(&args),
        Command::Bursts(args) => bursts_view::run(args.agent, args.width, args.once, !args.no_color),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, causes joined: what an operator reads in the journal.
            eprintln!("hostwatch: {error:#}");
            if error.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
