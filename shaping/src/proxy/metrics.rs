//! The proxy's metrics, written from its shared counters into a
//! [`MetricSet`] the agent publishes under [`SOURCE`].
//!
//! Reads nothing, needs nothing.

use hostwatch_collectors::{Desc, MetricSet};

use super::adaptive::{Controller, Decision};
use super::state::{Direction, Refusal, State};

/// The store source the proxy's metrics are published under.
pub const SOURCE: &str = "shaper";

static RATE: Desc = Desc::gauge(
    "hostwatch_shaper_rate_bits_per_second",
    "The current limit of a policy and direction (the adaptive controller moves it); absent when unlimited.",
    &["policy", "direction"],
);
static BYTES: Desc = Desc::counter(
    "hostwatch_shaper_bytes_total",
    "Bytes relayed through the proxy: download is server to client, upload client to server.",
    &["policy", "direction"],
);
static DELAY: Desc = Desc::counter(
    "hostwatch_shaper_delay_seconds_total",
    "Time connections waited for tokens, summed over connections: how long traffic was held back.",
    &["policy", "direction"],
);
static OPEN: Desc = Desc::gauge(
    "hostwatch_shaper_open_connections",
    "Tunnels open now, by policy (pass_through: the pass-through list).",
    &["policy"],
);
static CONNECTIONS: Desc = Desc::counter(
    "hostwatch_shaper_connections_total",
    "Connections to an upstream the proxy opened or tried to (tunnels and forwarded requests), by policy.",
    &["policy"],
);
static REFUSALS: Desc = Desc::counter(
    "hostwatch_shaper_refusals_total",
    "Clients turned away, by reason: busy (503), malformed (400), head_too_large (431), head_timeout (408), forbidden_host and forbidden_port (403), upstream_unreachable (502), upstream_timeout (504).",
    &["reason"],
);
static TARGET: Desc = Desc::gauge(
    "hostwatch_shaper_adaptive_target_bits_per_second",
    "The rate the adaptive controller wants; equal to the limit unless in dry-run mode.",
    &["policy", "direction"],
);
static DECISIONS: Desc = Desc::counter(
    "hostwatch_shaper_adaptive_decisions_total",
    "Adaptive controller intervals by decision: decrease (congestion signals rose), increase (quiet), hold (quiet at the ceiling).",
    &["policy", "direction", "decision"],
);
static DRY_RUN: Desc = Desc::gauge(
    "hostwatch_shaper_adaptive_dry_run",
    "1 when the adaptive controllers only log what they would do.",
    &[],
);

/// Writes every series of the proxy into `out`.
pub fn write(state: &State, controller: &Controller, dry_run: bool, out: &mut MetricSet) {
    for policy in &state.policies {
        let name = policy.name.as_str();
        for direction in Direction::BOTH {
            let labels = [name, direction.as_str()];
            let lane = policy.lane(direction);
            if let Some(rate) = lane.rate() {
                out.push(&RATE, &labels, rate);
            }
            out.push(&BYTES, &labels, lane.bytes() as f64);
            out.push(&DELAY, &labels, lane.delay_seconds());
        }
        out.push(&OPEN, &[name], policy.open() as f64);
        out.push(&CONNECTIONS, &[name], policy.connections() as f64);
    }
    for refusal in Refusal::ALL {
        out.push(&REFUSALS, &[refusal.as_str()], state.refusals(refusal) as f64);
    }
    if controller.is_empty() {
        return;
    }
    for control in &controller.loops {
        let name = state.policies.get(control.policy).map_or("", |p| p.name.as_str());
        let direction = control.direction.as_str();
        out.push(&TARGET, &[name, direction], control.target);
        for decision in Decision::ALL {
            out.push(
                &DECISIONS,
                &[name, direction, decision.as_str()],
                control.decisions[decision as usize] as f64,
            );
        }
    }
    out.push(&DRY_RUN, &[], if dry_run { 1.0 } else { 0.0 });
}
