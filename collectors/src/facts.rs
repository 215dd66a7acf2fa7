//! Facts one collector learns about the host that others use: today the EC2
//! instance identity and its network baseline (from the `instance` collector),
//! read by `headroom` and, later, the microburst detector and the shaper; and
//! the recent smaps reads the `stalls` collector saw, which the HTTP server
//! lists at `GET /debug/stalls`.
//!
//! Reads nothing, needs nothing. Shared through [`crate::Context`]; outlives
//! config reloads so a reload does not forget what IMDS said.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

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

/// How many smaps reads `/debug/stalls` keeps: the newest, the oldest dropped.
pub const RECENT_SMAPS_READS: usize = 256;

/// One open of `/proc/PID/smaps` or `smaps_rollup`: the reader made the kernel
/// walk the target's page tables under the target's mmap_lock.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SmapsRead {
    /// When it was opened, in seconds since the Unix epoch.
    pub time: f64,
    pub reader_pid: u32,
    pub reader_comm: String,
    pub target_pid: u32,
    /// Empty when the target had exited by the time the agent looked.
    pub target_comm: String,
    /// `smaps` or `smaps_rollup`.
    pub file: &'static str,
}

#[derive(Debug, Default)]
pub struct HostFacts {
    instance: RwLock<Option<Arc<Instance>>>,
    baseline: RwLock<Option<NetworkBaseline>>,
    smaps_reads: Mutex<VecDeque<SmapsRead>>,
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
}

impl HostFacts {
    /// Remembers a smaps read, forgetting the oldest beyond [`RECENT_SMAPS_READS`].
    pub fn record_smaps_read(&self, read: SmapsRead) {
        let mut reads = self.smaps_reads.lock().unwrap_or_else(PoisonError::into_inner);
        if reads.len() == RECENT_SMAPS_READS {
            reads.pop_front();
        }
        reads.push_back(read);
    }

    /// The recent smaps reads, oldest first.
    pub fn recent_smaps_reads(&self) -> Vec<SmapsRead> {
        self.smaps_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_reads_are_bounded_newest_kept() {
        let facts = HostFacts::default();
        for pid in 0..RECENT_SMAPS_READS as u32 + 10 {
            facts.record_smaps_read(SmapsRead {
                time: f64::from(pid),
                reader_pid: pid,
                reader_comm: "python3".into(),
                target_pid: 1,
                target_comm: "init".into(),
                file: "smaps",
            });
        }
        let reads = facts.recent_smaps_reads();
        assert_eq!(reads.len(), RECENT_SMAPS_READS);
        assert_eq!(reads[0].reader_pid, 10);
        assert_eq!(reads.last().map(|r| r.reader_pid), Some(RECENT_SMAPS_READS as u32 + 9));
    }
}
