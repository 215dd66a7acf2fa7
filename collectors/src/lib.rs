//! hostwatch collectors: the [`Collector`] trait, the one registry [`ALL`], and
//! one module per collector.
//!
//! Every collector reads the host through [`HostPaths`] (procfs and sysfs
//! roots) or a backend trait, and emits plain [`MetricSet`] samples; none of
//! this crate knows about Prometheus or HTTP. No collector reads
//! `/proc/PID/smaps` or `smaps_rollup`: the kernel walks page tables under the
//! target's mmap_lock for that, which stalls it (see DESIGN.md).

pub mod bpf;
pub mod collector;
pub mod config;
pub mod error;
pub mod facts;
pub mod paths;
pub mod process_label;
pub mod procfile;
pub mod sample;

pub mod cgroups;
pub mod cpu;
pub mod ethtool;
pub mod gpu;
pub mod headroom;
pub mod hotspots;
pub mod instance;
pub mod instance_types;
pub mod memory;
pub mod netburst;
pub mod netdev;
pub mod pressure;
pub mod process;
pub mod python;
pub mod stalls;

#[cfg(test)]
mod testing;

pub use collector::{Collector, CollectorSpec, Context, Plan};
pub use config::CollectorsConfig;
pub use error::{CollectError, Unavailable};
pub use paths::HostPaths;
pub use sample::{Desc, MetricKind, MetricSet};

/// Every collector, in the order `hostwatch collectors` lists them. Adding a
/// collector is its module, one line here, and its field in [`CollectorsConfig`].
pub static ALL: &[&CollectorSpec] = &[
    &cpu::SPEC,
    &memory::SPEC,
    &pressure::SPEC,
    &cgroups::SPEC,
    &netdev::SPEC,
    &ethtool::SPEC,
    &instance::SPEC,
    &headroom::SPEC,
    &netburst::SPEC,
    &stalls::SPEC,
    &hotspots::SPEC,
    &python::SPEC,
    &gpu::SPEC,
    &process::SPEC,
];

/// The collector named `name`.
pub fn find(name: &str) -> Option<&'static CollectorSpec> {
    ALL.iter().copied().find(|spec| spec.name == name)
}
