//! The cost governor: keeps the GIL probes within a CPU budget.
//!
//! Reads nothing. Every probe hit is a trap into the kernel that the probed
//! thread pays (about a microsecond or two; `bench/gil_overhead.py` measures
//! it), so the cost is estimated as hits times a configured cost per hit. Above
//! the budget, the busiest targets are shed until the estimate of the rest fits:
//! one busy process (a thread releasing the GIL around every tiny I/O call)
//! costs the most and is the one to give up, while the quiet ones stay observed.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Governor {
    /// Estimated CPU seconds per probe hit.
    cost_per_hit: f64,
    /// Fraction of one CPU the probes may cost.
    budget: f64,
}

impl Governor {
    pub fn new(cost_per_hit: Duration, budget: f64) -> Self {
        Self {
            cost_per_hit: cost_per_hit.as_secs_f64(),
            budget,
        }
    }

    /// The estimated fraction of one CPU that `hits` over `elapsed` cost.
    pub fn cost(&self, hits: u64, elapsed: Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        hits as f64 * self.cost_per_hit / seconds
    }

    /// Given each target's `(pid, hits)` over `elapsed`, writes to `shed` the
    /// pids to detach, busiest first, so that the rest fit the budget. Returns
    /// the estimated cost of all of them. Reorders `targets`.
    pub fn shed(&self, elapsed: Duration, targets: &mut [(u32, u64)], shed: &mut Vec<u32>) -> f64 {
        shed.clear();
        let total: u64 = targets.iter().map(|(_, hits)| hits).sum();
        let cost = self.cost(total, elapsed);
        if cost <= self.budget {
            return cost;
        }
        targets.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut remaining = total;
        for &(pid, hits) in targets.iter() {
            if self.cost(remaining, elapsed) <= self.budget {
                break;
            }
            shed.push(pid);
            remaining -= hits;
        }
        cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_budget_nothing_is_shed() {
        // 1.5 us per hit, 1 % of a CPU: 6666 hits per second fit.
        let governor = Governor::new(Duration::from_nanos(1500), 0.01);
        let mut targets = [(1, 3000), (2, 3000)];
        let mut shed = vec![99];
        let cost = governor.shed(Duration::from_secs(1), &mut targets, &mut shed);
        assert!((cost - 0.009).abs() < 1e-12, "{cost}");
        assert!(shed.is_empty());
    }

    #[test]
    fn over_budget_the_busiest_go_first_until_the_rest_fit() {
        let governor = Governor::new(Duration::from_nanos(1500), 0.01);
        let mut targets = [(1, 1000), (2, 20_000), (3, 5000), (4, 6000)];
        let mut shed = Vec::new();
        let cost = governor.shed(Duration::from_secs(2), &mut targets, &mut shed);
        assert!((cost - 0.024).abs() < 1e-12, "{cost}");
        // Without 2: 12000 hits in 2 s = 0.009 of a CPU, within budget.
        assert_eq!(shed, [2]);

        let mut targets = [(1, 1000), (2, 20_000), (3, 5000), (4, 6000)];
        governor.shed(Duration::from_millis(500), &mut targets, &mut shed);
        // In 0.5 s: 1000 hits alone cost 0.003 of a CPU; with 3's 5000, 0.018.
        assert_eq!(shed, [2, 4, 3]);
    }

    #[test]
    fn no_time_no_cost() {
        let governor = Governor::new(Duration::from_nanos(1500), 0.01);
        assert_eq!(governor.cost(1000, Duration::ZERO), 0.0);
    }
}
