//! Runs every enabled collector on its own interval and publishes its samples,
//! with the agent's own metrics about it, into the [`Store`].
//!
//! Reads whatever the collectors read. Each collection runs on a blocking
//! thread under a timeout: a collector that errors, hangs or panics is counted
//! and isolated, and the others and the endpoint keep working. A collector
//! that cannot run on this host is reported down with its reason and asked
//! again only every [`RETRY_UNAVAILABLE`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hostwatch_collectors::facts::HostFacts;
use hostwatch_collectors::{CollectError, Collector, CollectorSpec, Context, Desc, MetricSet, Plan, Unavailable};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::store::Store;

/// How long a collector that cannot run here waits before it is checked again:
/// long enough never to be a hot loop, short enough to notice a driver loaded later.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(60);

static UP: Desc = Desc::gauge(
    "hostwatch_collector_up",
    "1 when the collector's last collection succeeded, 0 when it failed or cannot run on this host.",
    &["collector"],
);
static DURATION: Desc = Desc::gauge(
    "hostwatch_collector_duration_seconds",
    "How long the collector's last completed collection took.",
    &["collector"],
);
static ERRORS: Desc = Desc::counter(
    "hostwatch_collector_errors_total",
    "Failed collections by kind: io, parse, timeout or panic.",
    &["collector", "kind"],
);
static UNAVAILABLE: Desc = Desc::gauge(
    "hostwatch_collector_unavailable_info",
    "Present, with the reason, while the collector cannot run on this host.",
    &["collector", "reason"],
);

const ERROR_KINDS: [&str; 4] = ["io", "parse", "timeout", "panic"];

/// State shared by the collector tasks, the HTTP server and the systemd notifier.
#[derive(Debug, Default)]
pub struct Shared {
    pub store: Store,
    /// What collectors learned about the host, and the documents they publish
    /// for `/debug/...`; kept across reloads.
    pub facts: Arc<HostFacts>,
    first_round: Readiness,
    /// Milliseconds since `epoch` of the last tick of any collector task.
    heartbeat: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

#[derive(Debug, Default)]
struct Readiness {
    pending: AtomicUsize,
    done: AtomicBool,
    notify: Notify,
}

impl Shared {
    /// True once every enabled collector has had its first attempt.
    pub fn is_ready(&self) -> bool {
        self.first_round.done.load(Ordering::Acquire)
    }

    pub async fn wait_ready(&self) {
        loop {
            let notified = self.first_round.notify.notified();
            if self.is_ready() {
                return;
            }
            notified.await;
        }
    }

    /// Time since a collector task last ticked: the collection loop's liveness.
    pub fn since_heartbeat(&self) -> Duration {
        let last = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.epoch().elapsed().saturating_sub(last)
    }

    fn beat(&self) {
        let now = u64::try_from(self.epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat.store(now, Ordering::Relaxed);
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn first_attempt_done(&self) {
        if self.first_round.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.mark_ready();
        }
    }

    fn mark_ready(&self) {
        self.first_round.done.store(true, Ordering::Release);
        self.first_round.notify.notify_waiters();
    }
}

/// The running collector tasks of one config.
#[derive(Debug)]
pub struct Scheduler {
    tasks: JoinSet<()>,
}

impl Scheduler {
    /// Starts every enabled collector of `specs`, built from `context`.
    pub fn start(specs: &[&'static CollectorSpec], context: &Context, shared: &Arc<Shared>) -> Self {
        let plans: Vec<_> = specs
            .iter()
            .map(|spec| (*spec, spec.plan(&context.config)))
            .filter(|(_, plan)| plan.enabled)
            .collect();
        if !shared.is_ready() {
            shared.first_round.pending.store(plans.len(), Ordering::Release);
            if plans.is_empty() {
                shared.mark_ready();
            }
        }
        shared.beat();
        let mut tasks = JoinSet::new();
        for (spec, plan) in plans {
            let task = Task::new(spec, plan, context.clone(), Arc::clone(shared));
            tasks.spawn(task.run());
        }
        Self { tasks }
    }

    /// Stops every collector task. Collections still running on blocking
    /// threads finish on their own and are discarded.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// What one attempt hands back from its blocking thread.
enum Outcome {
    Collected {
        collector: Box<dyn Collector>,
        set: MetricSet,
        result: Result<(), CollectError>,
        elapsed: Duration,
    },
    Unavailable(Unavailable),
}

enum State {
    /// Waiting for the next tick; `None` when the collector must be built first.
    Idle(Option<Box<dyn Collector>>),
    /// An attempt that outlived its timeout and still holds the collector.
    Overdue(JoinHandle<Outcome>),
    /// Cannot run on this host; built again at `retry_at`.
    Down { retry_at: Instant },
}

/// What building a collector needs, shared with its blocking attempts.
struct Env {
    spec: &'static CollectorSpec,
    context: Context,
}

struct Task {
    env: Arc<Env>,
    plan: Plan,
    shared: Arc<Shared>,
    errors: [u64; ERROR_KINDS.len()],
    last_duration: Option<f64>,
    unavailable: Option<String>,
    /// The set published before the current one, reused when no scrape holds it.
    spare: MetricSet,
}

impl Task {
    fn new(spec: &'static CollectorSpec, plan: Plan, context: Context, shared: Arc<Shared>) -> Self {
        Self {
            env: Arc::new(Env { spec, context }),
            plan,
            shared,
            errors: [0; ERROR_KINDS.len()],
            last_duration: None,
            unavailable: None,
            spare: MetricSet::default(),
        }
    }

    fn name(&self) -> &'static str {
        self.env.spec.name
    }

    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.plan.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut state = State::Idle(None);
        let mut first = true;
        loop {
            ticker.tick().await;
            self.shared.beat();
            state = self.step(state).await;
            if std::mem::take(&mut first) {
                self.shared.first_attempt_done();
            }
        }
    }

    async fn step(&mut self, state: State) -> State {
        let collector = match state {
            State::Idle(collector) => collector,
            State::Overdue(handle) if !handle.is_finished() => return State::Overdue(handle),
            // The late result is stale by now: keep the collector, drop its samples.
            State::Overdue(handle) => match handle.await {
                Ok(Outcome::Collected { collector, .. }) => Some(collector),
                Ok(Outcome::Unavailable(_)) => None,
                Err(error) if error.is_cancelled() => None,
                Err(_) => {
                    self.count("panic");
                    None
                }
            },
            State::Down { retry_at } if Instant::now() < retry_at => return State::Down { retry_at },
            State::Down { .. } => None,
        };

        // Building probes the host (files, devices, libraries) and may hang as
        // surely as collecting, so both run off the runtime under the timeout.
        let env = Arc::clone(&self.env);
        let mut set = std::mem::take(&mut self.spare);
        set.clear();
        let mut handle = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut collector = match collector {
                Some(collector) => collector,
                None => match (env.spec.build)(&env.context) {
                    Ok(collector) => collector,
                    Err(unavailable) => return Outcome::Unavailable(unavailable),
                },
            };
            let result = collector.collect(&mut set);
            Outcome::Collected {
                collector,
                set,
                result,
                elapsed: start.elapsed(),
            }
        });
        match tokio::time::timeout(self.plan.timeout, &mut handle).await {
            Ok(Ok(Outcome::Collected {
                collector,
                set,
                result,
                elapsed,
            })) => {
                if self.unavailable.take().is_some() {
                    info!(collector = self.name(), "collector can run now");
                }
                self.last_duration = Some(elapsed.as_secs_f64());
                let up = match &result {
                    Ok(()) => true,
                    Err(error) => {
                        self.count(error.kind());
                        warn!(collector = self.name(), %error, "collection failed");
                        false
                    }
                };
                self.publish(set, up);
                State::Idle(Some(collector))
            }
            Ok(Ok(Outcome::Unavailable(unavailable))) => {
                if self.unavailable.as_deref() != Some(unavailable.reason.as_str()) {
                    info!(collector = self.name(), reason = %unavailable, "collector cannot run on this host");
                }
                self.unavailable = Some(unavailable.reason);
                self.publish(MetricSet::default(), false);
                State::Down {
                    retry_at: Instant::now() + RETRY_UNAVAILABLE.max(self.plan.interval),
                }
            }
            // Only a runtime shutting down cancels a blocking task: no fault.
            Ok(Err(error)) if error.is_cancelled() => {
                debug!(collector = self.name(), "collection cancelled: the agent is stopping");
                State::Idle(None)
            }
            Ok(Err(error)) => {
                self.count("panic");
                warn!(collector = self.name(), %error, "collector panicked; rebuilding it");
                self.publish(MetricSet::default(), false);
                State::Idle(None)
            }
            Err(_) => {
                self.count("timeout");
                warn!(collector = self.name(), timeout = ?self.plan.timeout, "collection timed out");
                self.publish(MetricSet::default(), false);
                State::Overdue(handle)
            }
        }
    }

    fn count(&mut self, kind: &str) {
        if let Some(index) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[index] += 1;
        }
    }

    /// Publishes `set` with the agent's metrics about this collector appended.
    fn publish(&mut self, mut set: MetricSet, up: bool) {
        let name = self.name();
        set.push(&UP, &[name], if up { 1.0 } else { 0.0 });
        if let Some(duration) = self.last_duration {
            set.push(&DURATION, &[name], duration);
        }
        for (kind, count) in ERROR_KINDS.iter().zip(self.errors) {
            set.push(&ERRORS, &[name, kind], count as f64);
        }
        if let Some(reason) = &self.unavailable {
            set.push(&UNAVAILABLE, &[name, reason], 1.0);
        }
        if let Some(Ok(previous)) = self.shared.store.publish(name, Arc::new(set)).map(Arc::try_unwrap) {
            self.spare = previous;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostwatch_exporters::Format;

    static OK: Desc = Desc::gauge("test_ok", "A value.", &[]);

    struct Panics;
    impl Collector for Panics {
        fn collect(&mut self, _: &mut MetricSet) -> Result<(), CollectError> {
            panic!("collector bug");
        }
    }

    struct Works;
    impl Collector for Works {
        fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
            out.push(&OK, &[], 42.0);
            Ok(())
        }
    }

    static PANICS: CollectorSpec = CollectorSpec {
        name: "panics",
        needs: "",
        default_interval: Duration::from_millis(50),
        section: |config| &config.cpu,
        build: |_| Ok(Box::new(Panics)),
    };
    static WORKS: CollectorSpec = CollectorSpec {
        name: "works",
        needs: "",
        default_interval: Duration::from_millis(50),
        section: |config| &config.memory,
        build: |_| Ok(Box::new(Works)),
    };
    static ABSENT: CollectorSpec = CollectorSpec {
        name: "absent",
        needs: "",
        default_interval: Duration::from_millis(50),
        section: |config| &config.pressure,
        build: |_| Err(Unavailable::new("no such device")),
    };

    fn exposition(shared: &Shared) -> String {
        String::from_utf8(shared.store.exposition(Format::PrometheusText, false).unwrap().to_vec()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_collector_is_counted_rebuilt_and_isolated() {
        let shared = Arc::new(Shared::default());
        let scheduler = Scheduler::start(&[&PANICS, &WORKS, &ABSENT], &Context::default(), &shared);
        tokio::time::timeout(Duration::from_secs(5), shared.wait_ready())
            .await
            .expect("first round completes");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let text = exposition(&shared);
        scheduler.stop().await;

        let panics = text
            .lines()
            .find_map(|l| l.strip_prefix("hostwatch_collector_errors_total{collector=\"panics\",kind=\"panic\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("panic counter");
        // Rebuilt and retried on every tick: the panic repeats, and is counted each time.
        assert!(panics >= 3.0, "{text}");
        assert!(
            text.contains("hostwatch_collector_up{collector=\"panics\"} 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("hostwatch_collector_up{collector=\"works\"} 1.0\n"),
            "{text}"
        );
        assert!(text.contains("test_ok 42.0\n"), "{text}");
        assert!(
            text.contains("hostwatch_collector_unavailable_info{collector=\"absent\",reason=\"no such device\"} 1.0\n")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unavailable_collector_is_not_retried_in_a_hot_loop() {
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        static COUNTED: CollectorSpec = CollectorSpec {
            name: "counted",
            needs: "",
            default_interval: Duration::from_millis(10),
            section: |config| &config.cpu,
            build: |_| {
                BUILDS.fetch_add(1, Ordering::SeqCst);
                Err(Unavailable::new("absent"))
            },
        };
        let shared = Arc::new(Shared::default());
        let scheduler = Scheduler::start(&[&COUNTED], &Context::default(), &shared);
        tokio::time::sleep(Duration::from_millis(300)).await;
        scheduler.stop().await;
        // 30 ticks passed; only the first one built.
        assert_eq!(BUILDS.load(Ordering::SeqCst), 1);
        assert!(shared.is_ready());
    }
}
