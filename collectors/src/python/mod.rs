//! `python`: Python processes and their GIL. How long each process's threads
//! wait for the GIL and how long they hold it, from uprobes on CPython's
//! `take_gil` and `drop_gil`, always on, within a CPU budget.
//!
//! Reads procfs to find Python processes (`stat` of every process each
//! rescan, `maps` once per new process, never `smaps`: see [`discovery`]), the
//! interpreter's ELF symbols and debug files ([`symbols`]), and the `gil` BPF
//! object's per-process counters ([`probes`]). Needs root (CAP_BPF,
//! CAP_PERFMON) and uprobes; without them it is down with the reason. A procfs
//! without processes (a fixture tree) has no Python to watch: down too.
//!
//! Python processes are found by the interpreter file they map, selected by
//! the config (comm, cmdline, cgroup; default all), rescanned every
//! `rescan_interval` (2 s), probed when they appear and detached when they
//! exit, at most `max_targets` (64) at once, counting those whose probes the
//! kernel is still releasing; the overflow waits for a place and is counted. Each process is probed in the best mode its interpreter
//! allows (`symtab`, `debuginfo`, else `fallback`), reported per process. The
//! cost governor ([`governor`]) estimates the probes' CPU from their hits each
//! second and, above `cpu_budget`, detaches the busiest processes, which
//! stay unprobed until they exit.
//!
//! Emits `hostwatch_python_gil_wait_seconds_total{process}`,
//! `hostwatch_python_gil_hold_seconds_total{process}` (not in fallback mode),
//! `hostwatch_python_gil_wait_duration_seconds{process}` (histogram),
//! `hostwatch_python_gil_waiting_threads{process}`,
//! `hostwatch_python_gil_probe_hits_total{process}`,
//! `hostwatch_python_target_info{process,mode,binary}`,
//! `hostwatch_python_targets{mode}`, `hostwatch_python_unprobed_processes{reason}`,
//! `hostwatch_python_target_events_total{event}`, `hostwatch_python_detaching_processes`,
//! `hostwatch_python_gil_probe_cost_ratio`, `hostwatch_python_gil_probe_budget_ratio`.

pub mod discovery;
pub mod governor;
pub mod probes;
pub mod symbols;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostwatch_ebpf::maps::GilStats;
use tracing::{debug, info, warn};

use self::discovery::{Found, Scan, Scanner, Selection, interpreter_path};
use self::governor::Governor;
use self::probes::{Attachment, BOUNDS, Probes};
use self::symbols::{Mode, Offsets};
use crate::collector::{Collector, CollectorSpec};
use crate::config::{Bounded, Fraction, Interval, Pattern, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::process_label::ProcessLabels;
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.python]`: which Python processes to probe, and at what cost.
    pub struct Config {
        /// Probe only processes whose command name matches (all when absent).
        pub comm: Option<Pattern> = None,
        /// Probe only processes whose command line (arguments joined by
        /// spaces) matches as a whole, e.g. `.*train\.py.*`.
        pub cmdline: Option<Pattern> = None,
        /// Probe only processes whose cgroup path matches, e.g. `/system.slice/train\.service`.
        pub cgroup: Option<Pattern> = None,
        /// How often to look for new and exited processes. Each look reads
        /// every process's `stat`, and `maps` of new ones (under their mmap_lock).
        pub rescan_interval: Interval = default_rescan_interval(),
        /// Processes probed at once; further ones wait and are counted.
        pub max_targets: Bounded<1, 1024> = Bounded::clamped(64),
        /// Where debug files are found by build-id (`.build-id/ab/cdef….debug`).
        pub debug_dir: PathBuf = PathBuf::from("/usr/lib/debug"),
        /// Estimated CPU cost of one probe hit, in nanoseconds.
        pub probe_hit_cost_ns: Bounded<1, 1_000_000> = Bounded::clamped(1500),
        /// Fraction of one CPU the probes may cost; above it the busiest
        /// processes are detached.
        pub cpu_budget: Fraction = Fraction::clamped(0.01),
    }
}

fn default_rescan_interval() -> Interval {
    Interval::parse("2s").unwrap_or_else(|_| unreachable!("2s is within bounds"))
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "python",
    needs: "root (CAP_BPF, CAP_PERFMON), uprobes; procfs: /proc/PID/{stat,maps}",
    default_interval: Duration::from_secs(1),
    section: |config| &config.python,
    build: |context| Ok(Box::new(Python::new(&context.paths, &context.config.python)?)),
};

static WAIT: Desc = Desc::counter(
    "hostwatch_python_gil_wait_seconds_total",
    "Seconds the process's threads spent waiting for the GIL, summed over threads.",
    &["process"],
);
static HOLD: Desc = Desc::counter(
    "hostwatch_python_gil_hold_seconds_total",
    "Seconds the process's threads held the GIL (not measured in fallback mode).",
    &["process"],
);
static WAIT_DURATION: Desc = Desc::histogram(
    "hostwatch_python_gil_wait_duration_seconds",
    "How long each wait for the GIL took.",
    &["process"],
);
static WAITING: Desc = Desc::gauge(
    "hostwatch_python_gil_waiting_threads",
    "Threads of the process waiting for the GIL at collection time.",
    &["process"],
);
static HITS: Desc = Desc::counter(
    "hostwatch_python_gil_probe_hits_total",
    "GIL probe hits in the process: each costs the hitting thread a trap into the kernel.",
    &["process"],
);
static TARGET_INFO: Desc = Desc::gauge(
    "hostwatch_python_target_info",
    "A probed Python process: how its GIL is observed (symtab, debuginfo, or fallback: \
     PyEval_RestoreThread, waits after blocking calls only) and its interpreter file.",
    &["process", "mode", "binary"],
);
static TARGETS: Desc = Desc::gauge(
    "hostwatch_python_targets",
    "Python processes probed, by mode.",
    &["mode"],
);
static UNPROBED: Desc = Desc::gauge(
    "hostwatch_python_unprobed_processes",
    "Selected Python processes not probed: overflow (max_targets reached; they wait for a place), \
     shed (detached by the cost governor), failed (no usable symbols, or attaching failed).",
    &["reason"],
);
static EVENTS: Desc = Desc::counter(
    "hostwatch_python_target_events_total",
    "Python processes attached, detached on exit, vanished before attach, overflowed, shed or failed.",
    &["event"],
);
static DETACHING: Desc = Desc::gauge(
    "hostwatch_python_detaching_processes",
    "Processes detached whose probes the kernel is still releasing (about 0.1 s per probe); \
     they count against max_targets.",
    &[],
);
static COST: Desc = Desc::gauge(
    "hostwatch_python_gil_probe_cost_ratio",
    "Estimated fraction of one CPU the GIL probes cost over the last second (hits times probe_hit_cost_ns).",
    &[],
);
static BUDGET: Desc = Desc::gauge(
    "hostwatch_python_gil_probe_budget_ratio",
    "The configured cpu_budget: above it the busiest processes are detached.",
    &[],
);

/// The cost governor looks at this much time at once: long enough that one
/// burst of switches does not shed a process.
const GOVERNOR_WINDOW: Duration = Duration::from_secs(1);

/// Interpreter files whose symbols are remembered (they differ per Python
/// install, not per process).
const MAX_RESOLVED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Attached,
    Detached,
    Vanished,
    Overflow,
    Shed,
    Failed,
}

impl Event {
    const ALL: [Self; 6] = [
        Self::Attached,
        Self::Detached,
        Self::Vanished,
        Self::Overflow,
        Self::Shed,
        Self::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Detached => "detached",
            Self::Vanished => "vanished",
            Self::Overflow => "overflow",
            Self::Shed => "shed",
            Self::Failed => "failed",
        }
    }
}

/// Why a selected Python process is not probed.
#[derive(Debug)]
enum Unprobed {
    /// No place under `max_targets`: probed when one frees.
    Overflow(Found),
    Shed,
    Failed,
}

#[derive(Debug)]
struct Target {
    label: String,
    mode: Mode,
    binary: String,
    attachment: Attachment,
    /// The counters as of the last collection.
    stats: GilStats,
    /// Hits at the start of the governor's window.
    window_hits: u64,
}

#[derive(Debug)]
struct Python {
    paths: HostPaths,
    selection: Selection,
    rescan_interval: Duration,
    max_targets: usize,
    debug_dir: PathBuf,
    governor: Governor,
    budget: f64,
    scanner: Scanner,
    scan: Scan,
    probes: Probes,
    labels: ProcessLabels,
    targets: HashMap<u32, Target>,
    unprobed: HashMap<u32, Unprobed>,
    /// Probe offsets per interpreter file (device, inode), or why there are none.
    resolved: HashMap<(u64, u64), Result<Offsets, String>>,
    events: [u64; Event::ALL.len()],
    last_rescan: Option<Instant>,
    window_start: Instant,
    cost: f64,
    /// Reused per collection.
    busy: Vec<(u32, u64)>,
    shed: Vec<u32>,
}

impl Python {
    fn new(paths: &HostPaths, config: &Config) -> Result<Self, Unavailable> {
        let has_processes = std::fs::read_dir(paths.procfs())
            .map_err(|error| Unavailable::new(format!("no procfs: {}: {error}", paths.procfs().display())))?
            .flatten()
            .any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.parse::<u32>().is_ok())
            });
        if !has_processes {
            return Err(Unavailable::new(format!(
                "no processes under {}: no Python to watch",
                paths.procfs().display()
            )));
        }
        // At most 1024 (the config's bound), so the conversions cannot fail.
        let max_targets = usize::try_from(config.max_targets.get()).unwrap_or(usize::MAX);
        Ok(Self {
            paths: paths.clone(),
            selection: Selection {
                comm: config.comm.clone(),
                cmdline: config.cmdline.clone(),
                cgroup: config.cgroup.clone(),
            },
            rescan_interval: config.rescan_interval.get(),
            max_targets,
            debug_dir: config.debug_dir.clone(),
            governor: Governor::new(
                Duration::from_nanos(config.probe_hit_cost_ns.get()),
                config.cpu_budget.get(),
            ),
            budget: config.cpu_budget.get(),
            scanner: Scanner::new(paths.clone()),
            scan: Scan::default(),
            probes: Probes::load(u32::try_from(max_targets).unwrap_or(u32::MAX))?,
            // Every target fits under the pid cap: labels never fall back to names.
            labels: ProcessLabels::new(max_targets, max_targets),
            targets: HashMap::new(),
            unprobed: HashMap::new(),
            resolved: HashMap::new(),
            events: [0; Event::ALL.len()],
            last_rescan: None,
            window_start: Instant::now(),
            cost: 0.0,
            busy: Vec::new(),
            shed: Vec::new(),
        })
    }

    fn count(&mut self, event: Event) {
        if let Some(index) = Event::ALL.iter().position(|e| *e == event) {
            self.events[index] += 1;
        }
    }

    fn rescan(&mut self) -> Result<(), CollectError> {
        let mut scan = std::mem::take(&mut self.scan);
        let result = self.scanner.scan(&mut scan);
        for &pid in &scan.gone {
            self.forget(pid);
        }
        // Places freed go first to the processes that have waited for one.
        let waiting: Vec<u32> = self
            .unprobed
            .iter()
            .filter(|(_, why)| matches!(why, Unprobed::Overflow(_)))
            .map(|(pid, _)| *pid)
            .take(self.free_places())
            .collect();
        for pid in waiting {
            if let Some(Unprobed::Overflow(found)) = self.unprobed.remove(&pid) {
                self.attach(found);
            }
        }
        for found in scan.found.drain(..) {
            if self.scanner.selects(&self.selection, &found) {
                self.consider(found);
            }
        }
        self.scan = scan;
        result
    }

    /// A process exited (or exec'd): its probes go, and its place and label free.
    fn forget(&mut self, pid: u32) {
        self.unprobed.remove(&pid);
        if let Some(target) = self.targets.remove(&pid) {
            self.probes.detach(target.attachment);
            self.labels.forget(pid);
            self.count(Event::Detached);
            debug!(process = %target.label, "Python process exited; GIL probes detached");
        }
    }

    /// Places under `max_targets`: probes still being released hold theirs.
    fn free_places(&self) -> usize {
        self.max_targets
            .saturating_sub(self.targets.len() + self.probes.detaching())
    }

    fn consider(&mut self, found: Found) {
        if self.free_places() > 0 {
            self.attach(found);
            return;
        }
        if !self.unprobed.values().any(|why| matches!(why, Unprobed::Overflow(_))) {
            warn!(
                max_targets = self.max_targets,
                "more Python processes than max_targets: the rest wait for a place (hostwatch_python_unprobed_processes)"
            );
        }
        self.count(Event::Overflow);
        self.unprobed.insert(found.pid, Unprobed::Overflow(found));
    }

    fn attach(&mut self, found: Found) {
        let binary = interpreter_path(&self.paths, &found);
        let offsets = match std::fs::metadata(&binary) {
            Ok(metadata) => self.offsets(&binary, (metadata.dev(), metadata.ino())),
            Err(error) => Err(format!("{}: {error}", binary.display())),
        };
        let result = offsets.and_then(|offsets| {
            self.probes
                .attach(found.pid, &binary, &offsets)
                .map(|attachment| (offsets, attachment))
                .map_err(|error| error.to_string())
        });
        match result {
            Ok((offsets, attachment)) => {
                let label = self.labels.label(found.pid, &found.comm).to_owned();
                info!(process = %label, mode = offsets.mode.label(), binary = %found.interpreter, "probing a Python process's GIL");
                self.count(Event::Attached);
                self.targets.insert(
                    found.pid,
                    Target {
                        label,
                        mode: offsets.mode,
                        binary: found.interpreter,
                        attachment,
                        stats: GilStats::default(),
                        window_hits: 0,
                    },
                );
            }
            // Gone between discovery and attach: nothing to report but the count.
            Err(_) if !self.scanner.is_alive(found.pid, found.start_time) => self.count(Event::Vanished),
            Err(reason) => {
                info!(pid = found.pid, comm = %found.comm, %reason, "cannot probe a Python process's GIL");
                self.count(Event::Failed);
                self.unprobed.insert(found.pid, Unprobed::Failed);
            }
        }
    }

    /// The probe offsets in an interpreter file, resolved once per file.
    fn offsets(&mut self, binary: &std::path::Path, key: (u64, u64)) -> Result<Offsets, String> {
        if let Some(known) = self.resolved.get(&key) {
            return known.clone();
        }
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.clear();
        }
        let resolved = symbols::resolve(binary, &self.debug_dir).map_err(|error| error.to_string());
        match &resolved {
            Ok(offsets) if offsets.mode == Mode::Fallback => info!(
                binary = %binary.display(),
                "no take_gil symbol (stripped, no debug file): GIL waits after blocking calls only, no hold times"
            ),
            Ok(_) => {}
            Err(error) => info!(%error, "no GIL probe points in an interpreter file"),
        }
        self.resolved.insert(key, resolved.clone());
        resolved
    }

    /// Reads every target's counters and sheds the busiest when over budget.
    fn read_and_govern(&mut self, now: Instant) {
        for (pid, target) in &mut self.targets {
            if let Err(error) = self.probes.read(*pid, &mut target.stats) {
                debug!(process = %target.label, %error, "reading GIL counters");
            }
        }
        let elapsed = now.duration_since(self.window_start);
        if elapsed < GOVERNOR_WINDOW {
            return;
        }
        self.window_start = now;
        self.busy.clear();
        for (pid, target) in &mut self.targets {
            self.busy
                .push((*pid, target.stats.hits.saturating_sub(target.window_hits)));
            target.window_hits = target.stats.hits;
        }
        self.cost = self.governor.shed(elapsed, &mut self.busy, &mut self.shed);
        let shed = std::mem::take(&mut self.shed);
        for &pid in &shed {
            let Some(target) = self.targets.remove(&pid) else {
                continue;
            };
            let hits = self.busy.iter().find(|(p, _)| *p == pid).map_or(0, |(_, hits)| *hits);
            warn!(
                process = %target.label,
                hits_per_second = hits as f64 / elapsed.as_secs_f64(),
                estimated_cost = self.cost,
                budget = self.budget,
                "GIL probes over their CPU budget: detaching the busiest process until it exits"
            );
            self.probes.detach(target.attachment);
            self.labels.forget(pid);
            self.unprobed.insert(pid, Unprobed::Shed);
            self.count(Event::Shed);
        }
        self.shed = shed;
    }

    fn emit(&mut self, out: &mut MetricSet) {
        for target in self.targets.values() {
            let stats = &target.stats;
            let process = [target.label.as_str()];
            out.push(&WAIT, &process, nanos(stats.wait_ns));
            if target.mode != Mode::Fallback {
                out.push(&HOLD, &process, nanos(stats.hold_ns));
            }
            // Per bucket, not cumulative; the last (+Inf) one only in the count.
            let buckets = BOUNDS
                .iter()
                .zip(stats.wait_buckets)
                .map(|(bound, count)| (bound.as_secs_f64(), count));
            let count = stats.wait_buckets.iter().sum();
            out.push_histogram(&WAIT_DURATION, &process, nanos(stats.wait_ns), count, buckets);
            // Enter and return may land on different CPUs: only the sum is
            // meaningful, and a thread that died waiting would leave it high,
            // never negative.
            out.push(&WAITING, &process, stats.waiting.max(0) as f64);
            out.push(&HITS, &process, stats.hits as f64);
            out.push(&TARGET_INFO, &[&target.label, target.mode.label(), &target.binary], 1.0);
        }
        for mode in Mode::ALL {
            let probed = self.targets.values().filter(|t| t.mode == mode).count();
            out.push(&TARGETS, &[mode.label()], probed as f64);
        }
        let mut unprobed = [0usize; 3];
        for why in self.unprobed.values() {
            unprobed[match why {
                Unprobed::Overflow(_) => 0,
                Unprobed::Shed => 1,
                Unprobed::Failed => 2,
            }] += 1;
        }
        for (reason, count) in ["overflow", "shed", "failed"].iter().zip(unprobed) {
            out.push(&UNPROBED, &[reason], count as f64);
        }
        for (event, count) in Event::ALL.iter().zip(self.events) {
            out.push(&EVENTS, &[event.label()], count as f64);
        }
        out.push(&DETACHING, &[], self.probes.detaching() as f64);
        out.push(&COST, &[], self.cost);
        out.push(&BUDGET, &[], self.budget);
    }
}

fn nanos(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Drop for Python {
    /// The probes go with the `gil` object; the kernel then releases each
    /// uprobe under a global lock and a grace period, which an operator
    /// waiting on a stop or reload should know is coming.
    fn drop(&mut self) {
        let processes = self.targets.len() + self.probes.detaching();
        if processes > 0 {
            info!(
                processes,
                "releasing the GIL probes; the kernel takes about half a second per process"
            );
        }
    }
}

impl Collector for Python {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let now = Instant::now();
        let due = self
            .last_rescan
            .is_none_or(|last| now.duration_since(last) >= self.rescan_interval);
        let rescanned = if due {
            self.last_rescan = Some(now);
            self.rescan()
        } else {
            Ok(())
        };
        self.read_and_govern(now);
        self.emit(out);
        rescanned
    }
}

#[cfg(test)]
mod tests;
