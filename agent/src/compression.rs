//! The agent's side of the compression tunnels (`[compression]`, see
//! `hostwatch_shaping::tunnel`): starts them with the daemon, applies reloads,
//! stops them on SIGTERM, and once a second feeds them the near-allowance
//! readings and publishes their metrics in the store under `compression`.
//!
//! Reads the store (the `headroom` collector's samples) and the host facts.
//! Publishing on a timer, like a collector, rather than on each scrape keeps
//! scrapes to encoding a cache, as the store promises; a second's lag on
//! byte counters is what every collector has too.

use std::sync::Arc;

use hostwatch_collectors::headroom;
use hostwatch_shaping::tunnel::Tunnels;
use hostwatch_shaping::tunnel::config::CompressionConfig;

use crate::scheduler::Shared;

/// Name under which the tunnels' metrics are published.
pub const SOURCE: &str = "compression";

#[derive(Debug)]
pub struct Compression {
    tunnels: Tunnels,
}

impl Compression {
    pub fn start(config: &CompressionConfig) -> Self {
        Self {
            tunnels: Tunnels::start(config),
        }
    }

    pub async fn reconfigure(&mut self, config: &CompressionConfig, shared: &Shared) {
        self.tunnels.reconfigure(config).await;
        if self.tunnels.is_empty() {
            shared.store.retain(|source| source != SOURCE);
        }
    }

    /// The once-a-second step: the signal in, the metrics out.
    pub fn tick(&mut self, shared: &Shared) {
        if self.tunnels.is_empty() {
            return;
        }
        let headroom = shared.store.get(headroom::SPEC.name);
        self.tunnels.observe(&shared.facts, headroom.as_deref());
        shared.store.publish(SOURCE, Arc::new(self.tunnels.metrics()));
    }

    pub async fn stop(self) {
        self.tunnels.stop().await;
    }
}
