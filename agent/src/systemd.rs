//! systemd integration: `READY=1` after the first collection round, and
//! `WATCHDOG=1` only while the collection loop is alive.
//!
//! Writes to `$NOTIFY_SOCKET` when systemd set it (Type=notify); does nothing
//! otherwise. Needs nothing else.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, info, warn};

use crate::scheduler::Shared;

/// Once the first collection round is done, tells systemd the service is
/// ready, then keeps the watchdog fed for as long as collector tasks tick.
/// A wedged runtime or scheduler stops the pings, and systemd restarts us.
pub async fn supervise(shared: Arc<Shared>) {
    shared.wait_ready().await;
    ready();
    info!("first collection round done; ready");
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

/// Tells systemd the service is ready (again, after a reload).
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

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "systemd notification failed");
    }
}
