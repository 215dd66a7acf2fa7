//! "Near the allowance": when tunnels in `near_allowance` mode compress.
//!
//! Reads nothing itself: the agent hands it, about once a second, the sum of
//! the ENA allowance-exceeded counters (`HostFacts::allowance_exceeded`, from
//! the `ethtool` collector) and the `headroom` collector's latest samples. The
//! host counts as near its allowance while, within the last `hold`, either
//! - an allowance counter rose: EC2 queued or dropped packets above the
//!   allowance (bandwidth in or out, packets per second, conntrack,
//!   link-local), the plainest sign there is; or
//! - some interface's headroom ratio (its peak one-second rate over the
//!   trailing window, divided by the instance's network baseline) reached
//!   `headroom_ratio`: the host is close enough to shaping that fewer bytes
//!   on the wire are worth CPU. The ratio exists only once the baseline is
//!   known (IMDS and the built-in table, or the `instance` config).
//!
//! A counter that went back (driver reset) is not a rise. On a host with
//! neither signal (no ENA, no known baseline) it never engages: such tunnels
//! stay raw, and `mode = "always"` is the way to compress there.
//!
//! This is the tunnels' own small function of what the collectors publish.
//! When the adaptive rate controller of the S3 proxy lands, its decision
//! (which also weighs the microburst detector) is the natural input here.

use std::time::{Duration, Instant};

use hostwatch_collectors::MetricSet;
use hostwatch_collectors::headroom::RATIO;

#[derive(Debug)]
pub struct NearAllowance {
    ratio: f64,
    hold: Duration,
    last_exceeded: Option<u64>,
    last_sign: Option<Instant>,
}

impl NearAllowance {
    pub fn new(ratio: f64, hold: Duration) -> Self {
        Self {
            ratio,
            hold,
            last_exceeded: None,
            last_sign: None,
        }
    }

    /// Takes in the latest readings and says whether the host is near its
    /// allowance now.
    pub fn observe(&mut self, now: Instant, allowance_exceeded: u64, headroom: Option<&MetricSet>) -> bool {
        let rose = self.last_exceeded.is_some_and(|last| allowance_exceeded > last);
        self.last_exceeded = Some(allowance_exceeded);
        let high = headroom.and_then(peak_ratio).is_some_and(|ratio| ratio >= self.ratio);
        if rose || high {
            self.last_sign = Some(now);
        }
        self.last_sign
            .is_some_and(|sign| now.saturating_duration_since(sign) < self.hold)
    }
}

/// The highest headroom ratio of any interface and direction. The allowance
/// is the instance's, so the busiest interface is the one that matters.
fn peak_ratio(headroom: &MetricSet) -> Option<f64> {
    headroom
        .families()
        .find(|family| std::ptr::eq(family.desc(), &RATIO))?
        .series()
        .iter()
        .map(|series| series.value())
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headroom(ratios: &[f64]) -> MetricSet {
        let mut set = MetricSet::default();
        for (i, ratio) in ratios.iter().enumerate() {
            set.push(&RATIO, &[&format!("eth{i}"), "transmit"], *ratio);
        }
        set
    }

    #[test]
    fn a_rising_allowance_counter_engages_for_the_hold() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut near = NearAllowance::new(0.8, Duration::from_secs(10));
        // The first reading is a baseline, whatever its value.
        assert!(!near.observe(at(0), 500, None));
        assert!(!near.observe(at(1), 500, None));
        assert!(near.observe(at(2), 501, None));
        assert!(near.observe(at(11), 501, None));
        assert!(!near.observe(at(12), 501, None));
        // A driver reset takes the sum down: not a rise; the next rise counts.
        assert!(!near.observe(at(13), 0, None));
        assert!(near.observe(at(14), 3, None));
    }

    #[test]
    fn the_busiest_interface_near_its_baseline_engages() {
        let start = Instant::now();
        let mut near = NearAllowance::new(0.8, Duration::from_secs(5));
        assert!(!near.observe(start, 0, Some(&headroom(&[0.3, 0.79]))));
        assert!(near.observe(start, 0, Some(&headroom(&[0.3, 0.81]))));
        assert!(near.observe(start + Duration::from_secs(4), 0, Some(&headroom(&[0.1]))));
        assert!(!near.observe(start + Duration::from_secs(6), 0, Some(&headroom(&[0.1]))));
        // No ratio at all (baseline unknown): no sign.
        assert!(!near.observe(start + Duration::from_secs(60), 0, Some(&MetricSet::default())));
    }
}
