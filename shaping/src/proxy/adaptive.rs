//! The adaptive rate: an AIMD controller per policy and direction.
//!
//! Reads only [`HostFacts::congestion`]: the ENA allowance drops `ethtool`
//! counts and the bursts `netburst` sees. Each interval, a direction whose
//! signals rose is cut multiplicatively (default x0.7) down to its floor:
//! downloads on `bw_in`, `pps` or received bursts; uploads on `bw_out`, `pps`
//! or transmitted bursts. A quiet interval raises the rate by one step up to
//! the ceiling. Each change is logged and counted; in dry-run mode the
//! controller follows its own target, logs what it would set, and leaves the
//! buckets alone.

use hostwatch_collectors::facts::Congestion;
use tracing::info;

use super::config::Policy;
use super::state::{Direction, PolicyState};

/// What one interval decided; the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Decrease = 0,
    Increase = 1,
    Hold = 2,
}

impl Decision {
    pub const ALL: [Self; 3] = [Self::Decrease, Self::Increase, Self::Hold];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decrease => "decrease",
            Self::Increase => "increase",
            Self::Hold => "hold",
        }
    }
}

/// The controller of one limited direction of one adaptive policy.
#[derive(Debug)]
pub struct Loop {
    /// Index into the proxy's policies.
    pub policy: usize,
    pub direction: Direction,
    floor: f64,
    ceiling: f64,
    step: f64,
    decrease: f64,
    /// The rate the controller wants, in bits per second; what the bucket
    /// has unless in dry-run mode.
    pub target: f64,
    pub decisions: [u64; Decision::ALL.len()],
}

/// Every loop of the proxy, and the signals as last seen.
#[derive(Debug)]
pub struct Controller {
    pub loops: Vec<Loop>,
    dry_run: bool,
    last: Option<Congestion>,
}

impl Controller {
    pub fn new(policies: &[Policy], dry_run: bool) -> Self {
        let mut loops = Vec::new();
        for (index, policy) in policies.iter().enumerate() {
            let adaptive = &policy.adaptive;
            if !adaptive.enabled {
                continue;
            }
            for (direction, rate) in [
                (Direction::Download, policy.download),
                (Direction::Upload, policy.upload),
            ] {
                let Some(rate) = rate else { continue };
                loops.push(Loop {
                    policy: index,
                    direction,
                    floor: adaptive.floor.of(rate),
                    ceiling: adaptive.ceiling.of(rate),
                    step: adaptive.step.of(rate),
                    decrease: adaptive.decrease.0,
                    // Starts where the config puts the bucket, within bounds.
                    target: rate
                        .bits_per_second()
                        .clamp(adaptive.floor.of(rate), adaptive.ceiling.of(rate)),
                    decisions: [0; Decision::ALL.len()],
                });
            }
        }
        Self {
            loops,
            dry_run,
            last: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }

    /// Applies the targets as they stand at start (a configured rate outside
    /// the floor and ceiling is brought within them).
    pub fn start(&self, policies: &[PolicyState]) {
        for control in &self.loops {
            self.apply(control, policies);
        }
    }

    /// One interval: compares `now` with the previous signals and moves
    /// every loop.
    pub fn tick(&mut self, now: Congestion, policies: &[PolicyState]) {
        let Some(last) = self.last.replace(now) else { return };
        // Counters only rise (ethtool keeps them monotonic across resets).
        let rose = |a: u64, b: u64| a > b;
        let pps = rose(now.pps_exceeded, last.pps_exceeded);
        let download =
            rose(now.bw_in_exceeded, last.bw_in_exceeded) || pps || rose(now.bursts_received, last.bursts_received);
        let upload = rose(now.bw_out_exceeded, last.bw_out_exceeded)
            || pps
            || rose(now.bursts_transmitted, last.bursts_transmitted);
        for index in 0..self.loops.len() {
            let control = &mut self.loops[index];
            let congested = match control.direction {
                Direction::Download => download,
                Direction::Upload => upload,
            };
            let before = control.target;
            let decision = if congested {
                control.target = (control.target * control.decrease).max(control.floor);
                Decision::Decrease
            } else if control.target < control.ceiling {
                control.target = (control.target + control.step).min(control.ceiling);
                Decision::Increase
            } else {
                Decision::Hold
            };
            control.decisions[decision as usize] += 1;
            if control.target == before {
                continue;
            }
            let policy = policies.get(control.policy).map_or("", |p| p.name.as_str());
            let reason = if congested {
                signals(&now, &last, control.direction)
            } else {
                "quiet interval"
            };
            info!(
                policy,
                direction = control.direction.as_str(),
                decision = decision.as_str(),
                from_bits_per_second = before,
                to_bits_per_second = control.target,
                reason,
                dry_run = self.dry_run,
                "{}",
                if self.dry_run {
                    "adaptive rate: would change (dry run)"
                } else {
                    "adaptive rate changed"
                }
            );
            self.apply(&self.loops[index], policies);
        }
    }

    fn apply(&self, control: &Loop, policies: &[PolicyState]) {
        if self.dry_run {
            return;
        }
        let pacer = policies
            .get(control.policy)
            .and_then(|p| p.lane(control.direction).pacer.as_ref());
        if let Some(pacer) = pacer {
            pacer.set_bits_per_second(control.target, std::time::Instant::now());
        }
    }
}

/// Which signals rose, for the log line.
fn signals(now: &Congestion, last: &Congestion, direction: Direction) -> &'static str {
    let (bandwidth, bursts) = match direction {
        Direction::Download => (
            now.bw_in_exceeded > last.bw_in_exceeded,
            now.bursts_received > last.bursts_received,
        ),
        Direction::Upload => (
            now.bw_out_exceeded > last.bw_out_exceeded,
            now.bursts_transmitted > last.bursts_transmitted,
        ),
    };
    let pps = now.pps_exceeded > last.pps_exceeded;
    match (bandwidth, pps, bursts) {
        (true, _, _) => "ENA bandwidth allowance exceeded",
        (false, true, _) => "ENA packets-per-second allowance exceeded",
        _ => "bursts above the threshold",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::Config;
    use crate::proxy::state::State;

    fn setup(dry_run: bool) -> (Controller, State) {
        let config: Config = toml::from_str(
            r#"
            [[policy]]
            name = "s3"
            hosts = ["*.s3.amazonaws.com"]
            download = "100Mbit"
            upload = "100Mbit"
            [policy.adaptive]
            enabled = true
            floor = "50%"
            step = "10Mbit"
            [[policy]]
            name = "fixed"
            hosts = ["example.com"]
            download = "1Gbit"
            "#,
        )
        .unwrap_or_default();
        (Controller::new(&config.policy.0, dry_run), State::new(&config).unwrap())
    }

    fn rate(state: &State, direction: Direction) -> Option<f64> {
        state.policies[0].lane(direction).rate()
    }

    #[test]
    fn cuts_on_congestion_and_recovers_when_quiet() {
        let (mut controller, state) = setup(false);
        assert_eq!(
            controller.loops.len(),
            2,
            "only the adaptive policy's limited directions"
        );
        let mut signals = Congestion::default();
        controller.tick(signals, &state.policies);
        signals.bw_in_exceeded += 5;
        controller.tick(signals, &state.policies);
        assert_eq!(rate(&state, Direction::Download), Some(70e6));
        assert_eq!(
            rate(&state, Direction::Upload),
            Some(100e6),
            "bw_in only concerns downloads"
        );
        controller.tick(signals, &state.policies);
        assert_eq!(rate(&state, Direction::Download), Some(80e6));
        for _ in 0..3 {
            signals.pps_exceeded += 1;
            controller.tick(signals, &state.policies);
        }
        assert_eq!(rate(&state, Direction::Download), Some(50e6), "never below the floor");
        assert_eq!(rate(&state, Direction::Upload), Some(50e6), "pps concerns both");
        signals.bursts_transmitted += 1;
        controller.tick(signals, &state.policies);
        assert_eq!(rate(&state, Direction::Download), Some(60e6));
        for _ in 0..10 {
            controller.tick(signals, &state.policies);
        }
        assert_eq!(
            rate(&state, Direction::Download),
            Some(100e6),
            "never above the ceiling"
        );
        let download = &controller.loops[0];
        assert_eq!(download.decisions, [4, 6, 6]);
        assert_eq!(state.policies[1].lane(Direction::Download).rate(), Some(1e9));
    }

    #[test]
    fn dry_run_changes_nothing() {
        let (mut controller, state) = setup(true);
        controller.tick(Congestion::default(), &state.policies);
        controller.tick(
            Congestion {
                bw_out_exceeded: 1,
                ..Congestion::default()
            },
            &state.policies,
        );
        assert_eq!(controller.loops[1].target, 70e6);
        assert_eq!(rate(&state, Direction::Upload), Some(100e6));
    }
}
