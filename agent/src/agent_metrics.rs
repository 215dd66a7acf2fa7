//! The agent's metrics about itself that belong to no collector: build
//! information and config reloads. Published in the store under `agent`.
//!
//! Reads nothing, needs nothing.

use hostwatch_collectors::{Desc, MetricSet};

static BUILD_INFO: Desc = Desc::gauge(
    "hostwatch_build_info",
    "Version and git revision of the running agent; always 1.",
    &["version", "revision"],
);
static RELOAD_FAILURES: Desc = Desc::counter(
    "hostwatch_config_reload_failures_total",
    "SIGHUP reloads refused because the new config was invalid; the old config kept running.",
    &[],
);
static RELOADS: Desc = Desc::counter(
    "hostwatch_config_reloads_total",
    "SIGHUP reloads that applied a new config.",
    &[],
);

/// Name under which these metrics are published.
pub const SOURCE: &str = "agent";

#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub reloads: u64,
    pub reload_failures: u64,
}

impl AgentMetrics {
    pub fn to_set(&self) -> MetricSet {
        let mut set = MetricSet::default();
        set.push(
            &BUILD_INFO,
            &[env!("CARGO_PKG_VERSION"), env!("HOSTWATCH_REVISION")],
            1.0,
        );
        set.push(&RELOADS, &[], self.reloads as f64);
        set.push(&RELOAD_FAILURES, &[], self.reload_failures as f64);
        set
    }
}
