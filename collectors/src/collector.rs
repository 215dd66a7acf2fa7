//! The Collector trait and the description the registry keeps of each one.
//!
//! Reads nothing, needs nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{CollectorsConfig, Section};
use crate::error::{CollectError, Unavailable};
use crate::facts::HostFacts;
use crate::paths::HostPaths;
use crate::sample::MetricSet;

/// Something that reads the host and writes samples. Built once per config;
/// [`Collector::collect`] runs on a blocking thread every interval.
pub trait Collector: Send {
    /// Writes this collection's series into `out`, which holds nothing yet.
    /// On error, what was written before it is still published.
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError>;
}

/// A collector as the registry knows it: enough to list, configure and build it.
#[derive(Debug)]
pub struct CollectorSpec {
    /// The `collector` label value and the config section's name.
    pub name: &'static str,
    /// What it reads and what it needs, for `hostwatch collectors`.
    pub needs: &'static str,
    pub default_interval: Duration,
    pub section: fn(&CollectorsConfig) -> &dyn Section,
    /// Checks the host and builds the collector, or says why it cannot run here.
    pub build: Build,
}

/// What [`CollectorSpec::build`] is: the context in, a collector or the reason
/// it cannot run out.
pub type Build = fn(&Context) -> Result<Box<dyn Collector>, Unavailable>;

/// Everything a collector is built from.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Where procfs and sysfs are.
    pub paths: HostPaths,
    pub config: Arc<CollectorsConfig>,
    /// What other collectors learned about the host; shared by all of them.
    pub facts: Arc<HostFacts>,
}

impl Context {
    /// A context with fresh facts, for `hostwatch collectors` and tests.
    pub fn new(paths: HostPaths, config: CollectorsConfig) -> Self {
        Self {
            paths,
            config: Arc::new(config),
            facts: Arc::default(),
        }
    }
}

/// A collector's effective schedule once config and defaults are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
}

impl CollectorSpec {
    pub fn plan(&self, config: &CollectorsConfig) -> Plan {
        let schedule = (self.section)(config).schedule();
        let interval = schedule.interval.map_or(self.default_interval, |i| i.get());
        // A collection that takes longer than its interval is already late,
        // so the interval is the natural bound, but never under a second:
        // a first attempt also builds the collector (loading BPF programs
        // takes a few hundred milliseconds), and one slow tick on a busy
        // host is not a fault worth counting.
        let timeout = schedule
            .timeout
            .map_or(interval.max(Duration::from_secs(1)), |t| t.get());
        Plan {
            enabled: schedule.enabled,
            interval,
            timeout,
        }
    }
}
