//! Facts one collector learns about the host that others use: today the EC2
//! instance identity and its network baseline (from the `instance` collector),
//! read by `headroom`, the microburst detector and, later, the shaper; the
//! ENA allowance drops `ethtool` saw; the congestion signals the shaper's
//! adaptive controller follows; and the JSON documents collectors publish for
//! the agent's `/debug/...` endpoints.
//!
//! Reads nothing, needs nothing. Shared through [`crate::Context`]; outlives
//! config reloads so a reload does not forget what IMDS said.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The instance's identity as IMDS reports it, and its network allowance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub instance_type: String,
    pub availability_zone: String,
    pub instance_id: String,
}

/// The instance's network bandwidth allowance, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkBaseline {
    /// Sustained bandwidth (EC2 `BaselineBandwidthInGbps`).
    pub baseline_bps: f64,
    /// The "up to" figure of burstable sizes, reachable for minutes on credits.
    pub burst_bps: Option<f64>,
}

/// Running totals the shaper's adaptive controller compares from one interval
/// to the next: ENA allowance drops that mean "too much traffic" (bandwidth in,
/// bandwidth out, packets per second) and microbursts, by direction. Typed
/// counters rather than the `bursts` JSON document, so the controller parses
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Congestion {
    pub bw_in_exceeded: u64,
    pub bw_out_exceeded: u64,
    pub pps_exceeded: u64,
    pub bursts_received: u64,
    pub bursts_transmitted: u64,
}

#[derive(Debug, Default)]
pub struct HostFacts {
    instance: RwLock<Option<Arc<Instance>>>,
    baseline: RwLock<Option<NetworkBaseline>>,
    /// Sum of the ENA allowance-exceeded counters of every interface, from
    /// `ethtool`: the flight recorder records when it rises.
    allowance_exceeded: AtomicU64,
    /// `bw_in`, `bw_out` and `pps` allowance drops of every ENA interface,
    /// from `ethtool`.
    ena_exceeded: [AtomicU64; 3],
    /// Bursts `netburst` saw ended, received and transmitted, since start.
    bursts: [AtomicU64; 2],
    /// JSON documents served at `GET /debug/<name>`, published by collectors.
    debug: RwLock<BTreeMap<&'static str, Arc<str>>>,
}

impl HostFacts {
    pub fn instance(&self) -> Option<Arc<Instance>> {
        self.instance.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_instance(&self, instance: Option<Arc<Instance>>) {
        *self.instance.write().unwrap_or_else(PoisonError::into_inner) = instance;
    }

    pub fn network_baseline(&self) -> Option<NetworkBaseline> {
        *self.baseline.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_network_baseline(&self, baseline: Option<NetworkBaseline>) {
        *self.baseline.write().unwrap_or_else(PoisonError::into_inner) = baseline;
    }

    pub fn allowance_exceeded(&self) -> u64 {
        self.allowance_exceeded.load(Ordering::Relaxed)
    }

    pub fn set_allowance_exceeded(&self, total: u64) {
        self.allowance_exceeded.store(total, Ordering::Relaxed);
    }

    /// The `bw_in`, `bw_out` and `pps` allowance-exceeded totals of every ENA
    /// interface, in that order.
    pub fn set_ena_exceeded(&self, totals: [u64; 3]) {
        for (slot, total) in self.ena_exceeded.iter().zip(totals) {
            slot.store(total, Ordering::Relaxed);
        }
    }

    /// Counts bursts that ended, by direction.
    pub fn add_bursts(&self, received: u64, transmitted: u64) {
        self.bursts[0].fetch_add(received, Ordering::Relaxed);
        self.bursts[1].fetch_add(transmitted, Ordering::Relaxed);
    }

    pub fn congestion(&self) -> Congestion {
        let [bw_in, bw_out, pps] = &self.ena_exceeded;
        let [received, transmitted] = &self.bursts;
        Congestion {
            bw_in_exceeded: bw_in.load(Ordering::Relaxed),
            bw_out_exceeded: bw_out.load(Ordering::Relaxed),
            pps_exceeded: pps.load(Ordering::Relaxed),
            bursts_received: received.load(Ordering::Relaxed),
            bursts_transmitted: transmitted.load(Ordering::Relaxed),
        }
    }

    /// Publishes `json` as the document `GET /debug/<name>` serves.
    pub fn set_debug(&self, name: &'static str, json: Arc<str>) {
        self.debug
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, json);
    }

    pub fn debug(&self, name: &str) -> Option<Arc<str>> {
        self.debug
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_gathers_what_two_collectors_set() {
        let facts = HostFacts::default();
        facts.set_ena_exceeded([3, 4, 5]);
        facts.add_bursts(1, 2);
        facts.add_bursts(0, 1);
        assert_eq!(
            facts.congestion(),
            Congestion {
                bw_in_exceeded: 3,
                bw_out_exceeded: 4,
                pps_exceeded: 5,
                bursts_received: 1,
                bursts_transmitted: 3,
            }
        );
    }
}
