//! `ethtool`: NIC driver statistics through SIOCETHTOOL, typed for the ENA
//! driver of EC2 (allowance counters, conntrack headroom, ENA Express, driver
//! health), raw for other drivers on request.
//!
//! Reads `SYSFS/class/net` and each selected interface's driver statistics
//! (ioctl, no privilege needed), or a fixture directory when
//! `fixtures = "DIR"`. By default the interfaces with a device behind them;
//! `include` selects by name instead. Statistics are resolved by name and the
//! names read again whenever their count changes (channel change, driver
//! reload). Per-queue statistics and other drivers' raw statistics are off by
//! default: one NIC can have hundreds.
//!
//! Emits the `hostwatch_ena_*` families (see `ena.rs`),
//! `hostwatch_ethtool_statistic{interface,statistic}` for `raw_stats` matches,
//! and `hostwatch_ethtool_rejected_statistics_total{interface}`.

mod backend;
mod ena;
mod ioctl;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use self::backend::{Backend, FixtureBackend, IoctlBackend, ReadError, Stats};
use self::ena::Ena;
use crate::collector::{Collector, CollectorSpec, Context};
use crate::config::{Pattern, Selector, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::facts::HostFacts;
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.ethtool]`.
    pub struct Config {
        /// Interfaces whose whole name matches; when absent, every interface
        /// with a device behind it (`/sys/class/net/IF/device`).
        pub include: Option<Pattern> = None,
        /// Interfaces never read.
        pub exclude: Option<Pattern> = None,
        /// Export ENA per-queue statistics (`queue_N_*`): dozens per queue.
        pub per_queue: bool = false,
        /// Statistics of any driver whose whole name matches are exported raw
        /// as `hostwatch_ethtool_statistic` (off when absent).
        pub raw_stats: Option<Pattern> = None,
        /// Read `DIR/<interface>/statistics` and `DIR/<interface>/driver`
        /// (verbatim `ethtool -S` and `ethtool -i` output) instead of the
        /// kernel, re-read every interval: for tests and replays.
        pub fixtures: Option<PathBuf> = None,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "ethtool",
    needs: "SIOCETHTOOL ioctl (no privilege), sysfs: /sys/class/net",
    default_interval: Duration::from_secs(1),
    section: |config| &config.ethtool,
    build: |context| Ok(Box::new(Ethtool::new(context)?)),
};

static RAW: Desc = Desc::gauge(
    "hostwatch_ethtool_statistic",
    "A driver statistic selected by raw_stats, as the driver reports it (counter or gauge: drivers do not say).",
    &["interface", "statistic"],
);
static REJECTED: Desc = Desc::counter(
    "hostwatch_ethtool_rejected_statistics_total",
    "Statistics that could not be used: malformed or non-numeric lines in fixtures, names too long, not UTF-8, or repeated.",
    &["interface"],
);

/// One interface's state across collections.
#[derive(Debug, Default)]
struct Interface {
    name: String,
    stats: Stats,
    ena: Ena,
    /// Indices of the statistics `raw_stats` selects, for `raw_generation`.
    raw: Vec<usize>,
    raw_generation: Option<u64>,
    rejected: u64,
    /// Seen in the current listing; interfaces that disappear are dropped.
    listed: bool,
}

struct Ethtool {
    backend: Box<dyn Backend>,
    selector: Selector,
    select_devices: bool,
    per_queue: bool,
    raw_stats: Option<Pattern>,
    interfaces: Vec<Interface>,
    listing: Vec<(String, bool)>,
    facts: Arc<HostFacts>,
}

impl Ethtool {
    fn new(context: &Context) -> Result<Self, Unavailable> {
        let config = &context.config.ethtool;
        let backend: Box<dyn Backend> = match &config.fixtures {
            Some(dir) if dir.is_dir() => Box::new(FixtureBackend::new(dir.clone())),
            Some(dir) => {
                return Err(Unavailable::new(format!(
                    "fixture directory {} does not exist",
                    dir.display()
                )));
            }
            None => {
                let class_net = context.paths.sys("class/net");
                if !class_net.is_dir() {
                    return Err(Unavailable::new(format!(
                        "no network interfaces: {} is missing",
                        class_net.display()
                    )));
                }
                Box::new(
                    IoctlBackend::new(class_net)
                        .map_err(|error| Unavailable::new(format!("no socket for ethtool ioctls: {error}")))?,
                )
            }
        };
        Ok(Self {
            backend,
            selector: Selector {
                include: config.include.clone(),
                exclude: config.exclude.clone(),
            },
            select_devices: config.include.is_none(),
            per_queue: config.per_queue,
            raw_stats: config.raw_stats.clone(),
            interfaces: Vec::new(),
            listing: Vec::new(),
            facts: Arc::clone(&context.facts),
        })
    }
}

impl Collector for Ethtool {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        self.listing.clear();
        self.backend.interfaces(&mut self.listing)?;
        for interface in &mut self.interfaces {
            interface.listed = false;
        }
        let mut first_error = None;
        let mut allowance_exceeded = 0;
        let mut traffic_exceeded = [0u64; 3];
        for (name, has_device) in &self.listing {
            if (self.select_devices && !has_device) || !self.selector.selects(name) {
                continue;
            }
            let index = match self.interfaces.iter().position(|i| &i.name == name) {
                Some(index) => index,
                None => {
                    self.interfaces.push(Interface {
                        name: name.clone(),
                        ..Interface::default()
                    });
                    self.interfaces.len() - 1
                }
            };
            let interface = &mut self.interfaces[index];
            interface.listed = true;
            match self.backend.read(name, &mut interface.stats) {
                Ok(()) => {}
                Err(ReadError::Unsupported) => {
                    debug!(interface = %name, "no driver statistics");
                    continue;
                }
                Err(ReadError::Failed(error)) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            }
            interface.rejected += interface.stats.rejected;
            out.push(&REJECTED, &[name], interface.rejected as f64);
            if interface.stats.driver == "ena" {
                allowance_exceeded += interface.ena.collect(name, &interface.stats, self.per_queue, out);
                for (sum, total) in traffic_exceeded.iter_mut().zip(interface.ena.traffic_exceeded()) {
                    *sum += total;
                }
            }
            if let Some(pattern) = &self.raw_stats {
                if interface.raw_generation != Some(interface.stats.generation) {
                    interface.raw.clear();
                    interface.raw.extend(
                        interface
                            .stats
                            .names
                            .iter()
                            .enumerate()
                            .filter(|(_, n)| !n.is_empty() && pattern.is_match(n))
                            .map(|(i, _)| i),
                    );
                    interface.raw_generation = Some(interface.stats.generation);
                }
                for index in &interface.raw {
                    out.push(
                        &RAW,
                        &[name, &interface.stats.names[*index]],
                        interface.stats.values[*index] as f64,
                    );
                }
            }
        }
        self.interfaces.retain(|interface| interface.listed);
        self.facts.set_allowance_exceeded(allowance_exceeded);
        self.facts.set_ena_exceeded(traffic_exceeded);
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
