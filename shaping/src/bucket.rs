//! Continuous token buckets, shared by every connection of a policy and
//! direction.
//!
//! Reads nothing, needs nothing. Two accounts per bucket. The rate account
//! refills continuously at the rate (no per-second or per-tick budget that a
//! client could spend in its first millisecond) and is kept as one instant,
//! `paid`: the tokens at time `t` are `min(rate x (t - paid), 2 depths)`,
//! where a depth is `rate x burst`. A connection reserves a slice (half a
//! depth) and sleeps until the bucket holds it; reservations are served in
//! the order they were made, so backlogged connections of one policy take
//! turns slice by slice and share its rate fairly. A slice that was not used
//! (the socket had less to read) is given back.
//!
//! The window account decides when the bytes of a reservation that came due
//! actually go: no window one burst long (1 ms by default) carries more than
//! one and a half depths. A process that was not scheduled for a few
//! milliseconds wakes with several reservations due at once; the rate account
//! keeps what it could not send in time (two depths of it), and the window
//! lets it catch up at one and a half times the rate, never in one go.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The smallest depth in bytes: one full Ethernet frame. Below it a slow
/// policy would split every packet and gain nothing on the wire.
const MIN_DEPTH: f64 = 1500.0;

/// The rate account's depth, in depths: what a process woken up late keeps
/// of the bytes it could not send in time.
const CATCH_UP_DEPTHS: f64 = 2.0;

/// The most bytes that go in any window one burst long, in depths.
const WINDOW_DEPTHS: f64 = 1.5;

/// Emissions remembered for the window; more within one burst (slices cut
/// small by clients with little to send) wait for the oldest to leave it.
const WINDOW_ENTRIES: usize = 32;

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
    /// The emissions of the last burst-long window, oldest first, and their
    /// sum.
    recent: VecDeque<(Instant, usize)>,
    in_window: usize,
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
                paid: shift(now, -CATCH_UP_DEPTHS * depth / rate),
                recent: VecDeque::with_capacity(WINDOW_ENTRIES),
                in_window: 0,
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
        let tokens = (signed_secs(now, state.paid) * state.rate).min(CATCH_UP_DEPTHS * state.depth);
        state.rate = rate;
        state.depth = depth(rate, self.burst);
        state.paid = shift(now, -tokens.min(CATCH_UP_DEPTHS * state.depth) / rate);
    }

    /// Books up to `want` bytes (at most a slice) at `now`; returns the bytes
    /// and the instant the bucket holds them, when they may cross.
    pub fn reserve(&self, now: Instant, want: usize) -> (usize, Instant) {
        let mut state = self.lock();
        let bytes = want.min(slice_of(state.depth));
        // A bucket idle for long is full, not fuller.
        let full = shift(now, -CATCH_UP_DEPTHS * state.depth / state.rate);
        if state.paid < full {
            state.paid = full;
        }
        state.paid = shift(state.paid, bytes as f64 / state.rate);
        (bytes, state.paid.max(now))
    }

    /// Books `bytes` of a reservation that came due in the window account,
    /// at the instant they actually go, `now`, if the last burst-long window
    /// has room for them; otherwise books nothing and says when it will.
    pub fn emit(&self, now: Instant, bytes: usize) -> Option<Instant> {
        let mut state = self.lock();
        let window = secs(state.depth / state.rate);
        while let Some(&(at, sent)) = state.recent.front() {
            if at + window > now {
                break;
            }
            state.recent.pop_front();
            state.in_window -= sent;
        }
        // A slice larger than the window (booked before a rate cut) goes
        // alone rather than never.
        let cap = ((WINDOW_DEPTHS * state.depth) as usize).max(bytes);
        if state.in_window + bytes > cap || state.recent.len() == WINDOW_ENTRIES {
            // When enough of the oldest have left the window.
            let mut left = state.in_window;
            let room = state.recent.iter().find_map(|&(at, sent)| {
                left -= sent;
                (left + bytes <= cap).then_some(at + window)
            });
            return Some(room.unwrap_or(now + window));
        }
        state.recent.push_back((now, bytes));
        state.in_window += bytes;
        None
    }

    /// Gives back bytes a reservation did not use.
    pub fn refund(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let back = bytes as f64 / state.rate;
        state.paid = shift(state.paid, -back);
        // Refunds follow their emission closely: take them off the newest.
        let mut left = bytes;
        for (_, sent) in state.recent.iter_mut().rev() {
            let taken = left.min(*sent);
            *sent -= taken;
            state.in_window -= taken;
            left -= taken;
            if left == 0 {
                break;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn depth(rate: f64, burst: Duration) -> f64 {
    (rate * burst.as_secs_f64()).max(MIN_DEPTH)
}

/// Half the depth, so that three slices fit the window and a late connection
/// catches up; never less than a frame, nor more than the depth.
fn slice_of(depth: f64) -> usize {
    ((depth / 2.0).max(MIN_DEPTH).min(depth) as usize).clamp(1, MAX_SLICE)
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
    fn a_full_bucket_gives_two_depths_then_paces() {
        let start = Instant::now();
        let pacer = pacer(start);
        for _ in 0..4 {
            assert_eq!(pacer.reserve(start, 1 << 20), (5_000, start));
        }
        assert_eq!(pacer.reserve(start, 1 << 20), (5_000, start + MS / 2));
        let grants = simulate(&pacer, start + MS / 2, 1, 5_000, Duration::ZERO, Duration::from_secs(1));
        let bytes: usize = grants.iter().map(|g| g.2).sum();
        assert_eq!(bytes, 10_000_000);
    }

    /// The most any window of 1 ms holds, sliding by 50 us.
    fn busiest_millisecond(start: Instant, until: Duration, events: &[(usize, Instant, usize)]) -> usize {
        (0..until.as_micros())
            .step_by(50)
            .map(|us| {
                let from = start + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX));
                events
                    .iter()
                    .filter(|(_, at, _)| *at >= from && *at < from + MS)
                    .map(|e| e.2)
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Connections that reserve, sleep until their slice is due and emit
    /// when the pacer lets them, in a process that is not scheduled for 1.5
    /// ms of every 10 (every wake due then happens at the end of it) and
    /// wakes a little late otherwise; returns when each emission happened.
    fn simulate_emissions(
        pacer: &Pacer,
        start: Instant,
        clients: usize,
        until: Duration,
    ) -> Vec<(usize, Instant, usize)> {
        const JITTER_US: [u64; 7] = [0, 40, 0, 90, 60, 0, 120];
        let mut jitter = JITTER_US.iter().cycle().map(|&us| Duration::from_micros(us));
        let mut wake = |at: Instant| {
            let into = at.duration_since(start).as_micros() % 10_000;
            let stalled = if (5_000..6_500).contains(&into) {
                Duration::from_micros(u64::try_from(6_500 - into).unwrap_or(0))
            } else {
                Duration::ZERO
            };
            at + stalled + jitter.next().unwrap_or_default()
        };
        // Per client: when it next acts, and the slice it holds (0: none yet).
        let mut clients: Vec<(Instant, usize)> = vec![(start, 0); clients];
        let mut emissions = Vec::new();
        while let Some((client, &(now, held))) = clients.iter().enumerate().min_by_key(|(_, c)| c.0) {
            if now >= start + until {
                return emissions;
            }
            clients[client] = if held == 0 {
                let (bytes, at) = pacer.reserve(now, 1 << 20);
                (wake(at.max(now)), bytes)
            } else {
                match pacer.emit(now, held) {
                    Some(retry) => (wake(retry), held),
                    None => {
                        emissions.push((client, now, held));
                        (now, 0)
                    }
                }
            };
        }
        emissions
    }

    /// However late the connections wake, no window of 1 ms carries more
    /// than one and a half depths, and what was late is caught up: the
    /// rate holds.
    #[test]
    fn late_emissions_keep_the_rate_and_the_window() {
        let start = Instant::now();
        for clients in [1, 3, 8] {
            let pacer = pacer(start);
            let until = Duration::from_secs(1);
            let emissions = simulate_emissions(&pacer, start, clients, until);
            let worst = busiest_millisecond(start, until, &emissions);
            assert!(worst <= 15_000, "{clients} clients: {worst} in one ms");
            let total: usize = emissions.iter().map(|e| e.2).sum();
            assert!(
                (9_900_000..=10_050_000).contains(&total),
                "{clients} clients: {total} in 1 s"
            );
        }
    }

    /// Six reservations that all came due while the process was not
    /// running go out one and a half depths at once, then the next one and
    /// a half when the first have left the window.
    #[test]
    fn late_wakes_are_spread_out() {
        let start = Instant::now();
        let pacer = pacer(start);
        let due: Vec<_> = (0..6).map(|_| pacer.reserve(start, 10_000)).collect();
        assert_eq!(due[5].1, start + MS);
        let late = start + 10 * MS;
        for _ in 0..3 {
            assert_eq!(pacer.emit(late, 5_000), None);
        }
        assert_eq!(pacer.emit(late, 5_000), Some(late + MS), "nothing booked");
        assert_eq!(pacer.emit(late + MS / 2, 5_000), Some(late + MS));
        for _ in 0..3 {
            assert_eq!(pacer.emit(late + MS, 5_000), None);
        }
    }

    #[test]
    fn refunds_return_tokens_and_room_in_the_window() {
        let start = Instant::now();
        let pacer = pacer(start);
        let (bytes, _) = pacer.reserve(start, 10_000);
        pacer.refund(bytes);
        assert_eq!(pacer.reserve(start, 10_000), (5_000, start));
        for _ in 0..3 {
            assert_eq!(pacer.emit(start, 5_000), None);
        }
        assert!(pacer.emit(start, 5_000).is_some());
        pacer.refund(5_000);
        assert_eq!(pacer.emit(start, 5_000), None);
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
        for _ in 0..4 {
            pacer.reserve(start, 1 << 20);
        }
        pacer.set_bits_per_second(40e6, start);
        assert_eq!(pacer.bits_per_second(), 40e6);
        // Empty bucket: a slice is now 2.5 kB (half the depth), at 5 kB/ms
        // half a millisecond away.
        assert_eq!(pacer.reserve(start, 1 << 20), (2_500, start + MS / 2));
        // A low rate keeps a depth of one frame.
        pacer.set_bits_per_second(1e6, start);
        assert_eq!(pacer.reserve(start, 1 << 20).0, 1500);
    }
}
