//! Sub-millisecond sleeps for pacing.
//!
//! Reads nothing, needs one thread. tokio's timer works in whole
//! milliseconds and rounds every deadline up: a connection paced in 1 ms
//! slices would wake up to 2 ms late, find the bucket full (its depth is one
//! millisecond) and lose the tokens it could not take in time; measured on a
//! single upload at 100 Mbit/s that cost a third of the rate. This timer
//! keeps the deadlines in a heap on its own thread, which sleeps on a condition
//! variable with nanosecond timeouts (the kernel's timer slack, about 50 us,
//! is the precision), and wakes each task on time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Instant;

/// The timer thread; stopped when dropped.
#[derive(Debug)]
pub struct Timer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
    stop: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Timer {
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new().name("hostwatch-pacer".into()).spawn({
            let shared = Arc::clone(&shared);
            move || run(&shared)
        })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Completes at `at`, give or take the kernel's timer slack.
    pub fn sleep_until(&self, at: Instant) -> Sleep<'_> {
        Sleep {
            shared: &self.shared,
            at,
            registered: None,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut due = Vec::new();
    let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(entry)) = queue.pop() {
                due.push(entry.waker);
            }
        }
        if !due.is_empty() {
            // Wake outside the lock: a woken task may register again at once.
            drop(queue);
            due.drain(..).for_each(Waker::wake);
            queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        queue = match queue.peek().map(|Reverse(e)| e.at) {
            Some(at) => {
                shared
                    .changed
                    .wait_timeout(queue, at.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared.changed.wait(queue).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// The future [`Timer::sleep_until`] returns.
#[derive(Debug)]
pub struct Sleep<'a> {
    shared: &'a Shared,
    at: Instant,
    /// The waker last handed to the timer thread.
    registered: Option<Waker>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.registered = Some(waker.clone());
        let mut queue = self.shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = queue.peek().is_none_or(|Reverse(e)| self.at < e.at);
        queue.push(Reverse(Entry { at: self.at, waker }));
        drop(queue);
        if earliest {
            self.shared.changed.notify_one();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_within_a_fraction_of_a_millisecond() {
        let timer = Timer::start().unwrap_or_else(|e| panic!("{e}"));
        let mut late = Vec::new();
        for step in 0..50u64 {
            let at = Instant::now() + Duration::from_micros(300 + step * 10);
            timer.sleep_until(at).await;
            late.push(at.elapsed());
        }
        late.sort();
        // The median: a loaded 2-core test machine may delay a few.
        assert!(late[25] < Duration::from_micros(500), "{late:?}");
    }
}
