//! systemd integration: `READY=1` after the first collection round, and
//! `WATCHDOG=1` only while the collection loop is alive.
//!
//! Writes to `$NOTIFY_SOCKET` when systemd set it (Type=notify); does nothing
//! otherwise. Needs nothing else.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::scheduler::Shared;

/// Tells systemd the service is ready.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("collecting")]);
}

pub fn reloading() {
    // RELOADING=1 must carry the monotonic time for Type=notify-reload; plain
    // notify units accept it too.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => debug!(%error, "no monotonic clock for RELOADING"),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its period for as long as collector tasks keep
/// ticking. A wedged runtime or scheduler stops the pings, and systemd restarts us.
pub async fn watchdog(shared: Arc<Shared>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    // A collector interval can be long; the loop is alive if any task ticked
    // within the watchdog period.
    let stale_after = period.max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let since = shared.since_heartbeat();
        if since <= stale_after {
            send(&[NotifyState::Watchdog]);
        } else {
            warn!(since = ?since, "collection loop stalled; withholding the watchdog ping");
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "systemd notification failed");
    }
}
