//! hostwatch actuators: what changes the host rather than observing it. The
//! S3 pacing proxy with its adaptive controller, and lz4 compression tunnels.
//!
//! Everything here is opt-in (off in the embedded defaults), says what it
//! would do in dry-run, and undoes what it changed when the agent stops. It
//! reads the host only through what collectors published
//! (`hostwatch_collectors::facts::HostFacts`: ENA allowance drops, bursts).
pub mod bucket;
mod loopback;
pub mod proxy;
pub mod timer;
pub mod tunnel;
