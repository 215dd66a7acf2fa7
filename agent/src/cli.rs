//! Command-line interface: `run`, `validate`, `collectors`.
//!
//! Reads the config file; `collectors` also probes the host the way the
//! collectors would (no privilege needed; unavailable ones say why).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostwatch_collectors::HostPaths;

use crate::config::{self, LogFormat};
use crate::web_config::Security;

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HOSTWATCH_REVISION"), ")");

/// Host-level observability agent: ENA allowances, microbursts, GIL and
/// mmap_lock stalls, GPUs, on one Prometheus endpoint.
#[derive(Debug, Parser)]
#[command(name = "hostwatch", version = VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent and serve metrics.
    Run(RunArgs),
    /// Check a config file; exit 2 with PATH:LINE:COLUMN: reason when invalid.
    Validate(ConfigArg),
    /// List collectors: enabled or not, whether they can run here and why not.
    Collectors(RunArgs),
    /// Live view of a running agent's microburst detector.
    Bursts(BurstsArgs),
    /// What this host lets the agent do, with a remedy for each problem; exit 1 if an enabled collector cannot run.
    Doctor(RunArgs),
}

#[derive(Debug, Args)]
pub struct BurstsArgs {
    /// The agent's address.
    #[arg(long, default_value = "127.0.0.1:9977")]
    pub agent: SocketAddr,
    /// Sparkline cells for the last second.
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// No ANSI colours.
    #[arg(long)]
    pub no_color: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: /etc/hostwatch/hostwatch.toml when it exists, else the embedded defaults]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Address to serve metrics on [default: the config's agent.listen, 0.0.0.0:9977]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Root of the proc filesystem to read.
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,
    /// Root of the sys filesystem to read.
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
    /// Log format [default: the config's agent.log_format, plain]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// TLS and basic auth, in the exporter-toolkit web config format
    /// [default: the config's agent.web_config_file, none]
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
}

impl RunArgs {
    pub fn paths(&self) -> HostPaths {
        HostPaths::new(&self.procfs, &self.sysfs)
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        config::resolve_path(self.config.config.as_deref())
    }
}

pub fn validate(args: &ConfigArg) -> ExitCode {
    let path = config::resolve_path(args.config.as_deref());
    let checked = config::load(path.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|config| {
            config.agent.web_config_file.map_or(Ok(()), |web| {
                Security::load(web.as_path()).map(drop).map_err(|e| e.to_string())
            })
        });
    match checked {
        Ok(()) => {
            println!("{}: ok", describe(path.as_deref()));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

pub fn collectors(args: &RunArgs) -> anyhow::Result<()> {
    let path = args.config_path();
    let config = config::load(path.as_deref())?;
    print!("{}", crate::listing::table(&config.collectors, &args.paths()));
    Ok(())
}

pub fn doctor(args: &RunArgs) -> ExitCode {
    let path = args.config_path();
    let config = match config::load(path.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let (report, ok) = crate::doctor::report(&config, &args.paths());
    print!("config {}\n{report}", describe(path.as_deref()));
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

pub fn describe(path: Option<&Path>) -> String {
    path.map_or_else(|| "embedded defaults".to_owned(), |path| path.display().to_string())
}
