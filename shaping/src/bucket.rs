//! Continuous token buckets, shared by every connection of a policy and
//! direction.
//!
//! Reads nothing, needs nothing. A bucket of depth `rate x burst` refills
//! continuously (no per-second or per-tick budget that a client could spend in
//! its first millisecond). It is kept as one instant, `paid`: the tokens at
//! time `t` are `min(depth, rate x (t - paid))`. A connection reserves a slice
//! (at most the depth) and sleeps until the bucket holds it; reservations are
//! served in the order they were made, so backlogged connections of one policy
//! take turns slice by slice and share its rate fairly. A slice that was not
//! used (the socket had less to read) is given back.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The smallest depth in bytes: one full Ethernet frame. Below it a slow
/// policy would split every packet and gain nothing on the wire.
const MIN_DEPTH: f64 = 1500.0;

/// The real-time account's depth, in reservation depths (see [`Pacer::emit`]).
const EMISSION_DEPTHS: f64 = 1.5;

/// The largest slice one reservation takes. Keeps the connections of a fast
/// policy interleaving, and matches the relay's buffer.
pub const MAX_SLICE: usize = 64 * 1024;

/// One token bucket; its rate can change while connections use it (the
/// adaptive controller). It only keeps accounts: callers sleep until the
/// instant a reservation names (see [`crate::timer`]).
#[derive(Debug)]
pub struct Pacer {
    /// The burst allowance as time at the current rate.
    burst: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes per second.
    rate: f64,
    /// Bytes: `rate x burst`, at least [`MIN_DEPTH`].
    depth: f64,
    /// Everything granted so far is paid for at this instant; it may lie in
    /// the future while reservations wait.
    paid: Instant,
    /// The same account kept at the instants bytes actually go (see
    /// [`Pacer::emit`]).
    emitted: Instant,
}

impl Pacer {
    /// A bucket for `bits_per_second`, full at `now`.
    pub fn new(bits_per_second: f64, burst: Duration, now: Instant) -> Self {
        let rate = bits_per_second / 8.0;
        let depth = depth(rate, burst);
        Self {
            burst,
            state: Mutex::new(State {
                rate,
                depth,
                paid: shift(now, -depth / rate),
                emitted: shift(now, -depth / rate),
            }),
        }
    }

    pub fn bits_per_second(&self) -> f64 {
        self.lock().rate * 8.0
    }

    /// Changes the rate at `now`, keeping the tokens (or the debt) the bucket holds.
    pub fn set_bits_per_second(&self, bits_per_second: f64, now: Instant) {
        let mut state = self.lock();
        let rate = bits_per_second / 8.0;
        // Signed: reservations may have put the bucket in debt.
        let tokens = (signed_secs(now, state.paid) * state.rate).min(state.depth);
        let (old_rate, old_depth) = (state.rate, state.depth);
        state.rate = rate;
        state.depth = depth(rate, self.burst);
        state.paid = shift(now, -tokens.min(state.depth) / rate);
        let emitted = (signed_secs(now, state.emitted) * old_rate).min(old_depth);
        state.emitted = shift(now, -emitted.min(state.depth) / rate);
    }

    /// Books up to `want` bytes (at most a slice) at `now`; returns the bytes
    /// and the instant the bucket holds them, when they may cross.
    pub fn reserve(&self, now: Instant, want: usize) -> (usize, Instant) {
        let mut state = self.lock();
        let bytes = want.min(slice_of(state.depth));
        // A bucket idle for long is full, not fuller: tokens cap at the depth.
        let full = shift(now, -state.depth / state.rate);
        if state.paid < full {
            state.paid = full;
        }
        state.paid = shift(state.paid, bytes as f64 / state.rate);
        (bytes, state.paid.max(now))
    }

    /// Books `bytes` of a reservation that came due, at the instant they
    /// actually go, `now`, if the bucket holds them in real time; otherwise
    /// books nothing and says when to try again. Reservations keep the order
    /// fair, but a process that was not scheduled for a few milliseconds wakes
    /// with several of them due at once: this second account, checked just
    /// before the bytes move, spreads them out again.
    pub fn emit(&self, now: Instant, bytes: usize) -> Option<Instant> {
        let mut state = self.lock();
        // Half as deep again as the reservations: a connection that wakes up
        // to half a millisecond late (a busy host) keeps its turn instead of
        // losing the tokens, and a descheduled process still releases at
        // most one and a half depths at once.
        let full = shift(now, -EMISSION_DEPTHS * state.depth / state.rate);
        if state.emitted < full {
            state.emitted = full;
        }
        let due = shift(state.emitted, bytes as f64 / state.rate);
        if due > now {
            return Some(due);
        }
        state.emitted = due;
        None
    }

    /// Gives back bytes a reservation did not use.
    pub fn refund(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut state = self.lock();
        let back = bytes as f64 / state.rate;
        state.paid = shift(state.paid, -back);
        state.emitted = shift(state.emitted, -back);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn depth(rate: f64, burst: Duration) -> f64 {
    (rate * burst.as_secs_f64()).max(MIN_DEPTH)
}

fn slice_of(depth: f64) -> usize {
    (depth as usize).clamp(1, MAX_SLICE)
}

fn secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// `at` moved by `seconds`, either way; saturates at the process's first
/// instants instead of failing.
fn shift(at: Instant, seconds: f64) -> Instant {
    if seconds >= 0.0 {
        at.checked_add(secs(seconds)).unwrap_or(at)
    } else {
        at.checked_sub(secs(-seconds)).unwrap_or(at)
    }
}

/// `a - b` in seconds, negative when `b` is later.
fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        a.duration_since(b).as_secs_f64()
    } else {
        -b.duration_since(a).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// 80 Mbit/s: 10 kB per millisecond, depth 10 kB.
    fn pacer(start: Instant) -> Pacer {
        Pacer::new(80e6, MS, start)
    }

    /// Clients that each come back for another slice the moment their last
    /// one was granted (plus `late`); returns when each grant happened.
    fn simulate(
        pacer: &Pacer,
        start: Instant,
        clients: usize,
        want: usize,
        late: Duration,
        until: Duration,
    ) -> Vec<(usize, Instant, usize)> {
        let mut next = vec![start; clients];
        let mut grants = Vec::new();
        loop {
            let (client, now) = next
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, at)| *at)
                .unwrap_or((0, start));
            if now >= start + until {
                return grants;
            }
            let (bytes, at) = pacer.reserve(now, want);
            grants.push((client, at, bytes));
            next[client] = at + late;
        }
    }

    #[test]
    fn a_full_bucket_gives_its_depth_then_paces() {
        let start = Instant::now();
        let pacer = pacer(start);
        assert_eq!(pacer.reserve(start, 1 << 20), (10_000, start));
        assert_eq!(pacer.reserve(start, 1 << 20), (10_000, start + MS));
        let grants = simulate(&pacer, start + MS, 1, 10_000, Duration::ZERO, Duration::from_secs(1));
        let bytes: usize = grants.iter().map(|g| g.2).sum();
        assert_eq!(bytes, 10_000_000);
    }

    /// No window of 1 ms ever grants more than depth + 1 ms of rate, however
    /// the reservations are cut and however late the clients come back.
    #[test]
    fn no_millisecond_exceeds_the_burst() {
        let start = Instant::now();
        for late in [0, 300, 1000, 2500] {
            let pacer = pacer(start);
            let grants = simulate(
                &pacer,
                start,
                3,
                7_000,
                Duration::from_micros(late),
                Duration::from_millis(300),
            );
            let worst = (0..300_000)
                .step_by(50)
                .map(|us| {
                    let from = start + Duration::from_micros(us);
                    grants
                        .iter()
                        .filter(|(_, at, _)| *at >= from && *at < from + MS)
                        .map(|g| g.2)
                        .sum::<usize>()
                })
                .max();
            assert!(worst.is_some_and(|w| w <= 20_000), "{late} us late: {worst:?}");
        }
    }

    /// Six reservations that all came due while the process was not
    /// running go out one and a half depths, then one per millisecond, not
    /// together.
    #[test]
    fn late_wakes_are_spread_out() {
        let start = Instant::now();
        let pacer = pacer(start);
        let due: Vec<_> = (0..6).map(|_| pacer.reserve(start, 10_000)).collect();
        assert_eq!(due[5].1, start + 5 * MS);
        let late = start + 10 * MS;
        // One and a half depths are there: one slice now, the next when the
        // half missing has come in.
        assert_eq!(pacer.emit(late, 10_000), None);
        assert_eq!(pacer.emit(late, 10_000), Some(late + MS / 2), "nothing booked");
        assert_eq!(pacer.emit(late + MS / 4, 10_000), Some(late + MS / 2));
        assert_eq!(pacer.emit(late + MS / 2, 10_000), None);
        assert_eq!(pacer.emit(late + MS / 2, 10_000), Some(late + 3 * MS / 2));
    }

    #[test]
    fn refunds_return_tokens() {
        let start = Instant::now();
        let pacer = pacer(start);
        let (bytes, _) = pacer.reserve(start, 10_000);
        pacer.refund(bytes);
        assert_eq!(pacer.reserve(start, 10_000), (10_000, start));
    }

    /// Backlogged connections take turns, a slice each: each gets its share
    /// of the rate, on time or late.
    #[test]
    fn concurrent_connections_share_fairly() {
        let start = Instant::now();
        for late in [0, 700] {
            let pacer = pacer(start);
            let grants = simulate(
                &pacer,
                start,
                3,
                MAX_SLICE,
                Duration::from_micros(late),
                Duration::from_secs(1),
            );
            let share = |client| grants.iter().filter(|g| g.0 == client).map(|g| g.2 as f64).sum::<f64>();
            let total = share(0) + share(1) + share(2);
            for client in 0..3 {
                assert!(
                    (share(client) - total / 3.0).abs() / total < 0.01,
                    "{late} us: client {client} got {}",
                    share(client)
                );
            }
            assert!((total - 10e6).abs() / 10e6 < 0.01, "{total} in total");
        }
    }

    #[test]
    fn rate_changes_apply_to_the_next_reservation() {
        let start = Instant::now();
        let pacer = pacer(start);
        pacer.reserve(start, 10_000);
        pacer.set_bits_per_second(40e6, start);
        assert_eq!(pacer.bits_per_second(), 40e6);
        // Empty bucket: a slice is now 5 kB, at 5 kB/ms one millisecond away.
        assert_eq!(pacer.reserve(start, 1 << 20), (5_000, start + MS));
        // A low rate keeps a depth of one frame.
        pacer.set_bits_per_second(1e6, start);
        assert_eq!(pacer.reserve(start, 1 << 20).0, 1500);
    }
}
