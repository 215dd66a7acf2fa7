//! `stalls`: mmap_lock wait per process and mode, and who reads whose smaps.
//!
//! Reads the `stalls` BPF object's maps (mmap_lock tracepoints, an in-kernel
//! filter on openat of `/proc/*/smaps` and `smaps_rollup`), and
//! `PROCFS/PID/comm` and `PROCFS/uptime` to name processes and date events;
//! needs root (CAP_BPF + CAP_PERFMON), kernel BTF, tracefs mounted, and the
//! live procfs (BPF sees the running kernel's pids, which a fixture tree
//! cannot name). Never opens smaps itself.
//!
//! Why: a monitor reading a training rank's smaps makes the kernel walk the
//! rank's page tables under its mmap_lock (`smap_gather_stats`); the rank's
//! mmap, munmap and page faults wait behind it (DESIGN.md). Waits shorter than
//! 1 µs are an uncontended lock and are not counted. A process gets mmap_lock
//! series once it has waited `min_wait_seconds` in all; labels come from the
//! bounded [`ProcessLabels`] shared by readers, targets and waiters, so the
//! alert can join a waiter's `process` with a read's `target`. The recent
//! reads go to [`HostFacts`] for `GET /debug/stalls`.
//!
//! Emits `hostwatch_mmap_lock_wait_seconds_total{process,mode}`,
//! `hostwatch_mmap_lock_wait_duration_seconds{process,mode}` (histogram),
//! `hostwatch_smaps_reads_total{reader,target}`,
//! `hostwatch_smaps_events_lost_total`, `hostwatch_stalls_label_overflows_total`.

mod source;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hostwatch_ebpf::maps::{MMAP_LOCK_BUCKETS, MmapLockKey, MmapLockWait, SmapsEvent};

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::facts::HostFacts;
use crate::paths::HostPaths;
use crate::process_label::{OTHER, ProcessLabels};
use crate::sample::{Desc, MetricSet};

pub use source::{Bpf, Source};

collector_section! {
    /// `[collectors.stalls]`: label bounds and when a waiter gets series.
    pub struct Config {
        /// Processes labelled `comm/pid`; later ones share their comm's series.
        pub max_processes: usize = 64,
        /// Distinct comm labels once `max_processes` is reached; beyond, `other`.
        pub max_names: usize = 64,
        /// A process's mmap_lock series appear once it has waited this many
        /// seconds in all (both modes): below that it is noise.
        pub min_wait_seconds: f64 = 0.001,
        /// Distinct (reader, target) pairs in `hostwatch_smaps_reads_total`;
        /// reads of later pairs count under (other, other).
        pub max_reader_target_pairs: usize = 256,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "stalls",
    needs: "root (CAP_BPF, CAP_PERFMON), kernel BTF, tracefs, live procfs: mmap_lock and openat tracepoints",
    // The waits map is read with two syscalls per waiting process: every 2 s
    // is plenty for alerts evaluated over minutes.
    default_interval: Duration::from_secs(2),
    section: |config| &config.stalls,
    build: |context| {
        require_live_procfs(&context.paths)?;
        let source = Bpf::attach()?;
        Ok(Box::new(Stalls::new(
            source,
            &context.config.stalls,
            context.paths.clone(),
            Arc::clone(&context.facts),
        )))
    },
};

static WAIT_SECONDS: Desc = Desc::counter(
    "hostwatch_mmap_lock_wait_seconds_total",
    "Time the process's threads waited for an mmap_lock (its own or, reading another's memory, that one's), by mode; waits under 1 us are not counted.",
    &["process", "mode"],
);
static WAIT_DURATION: Desc = Desc::histogram(
    "hostwatch_mmap_lock_wait_duration_seconds",
    "mmap_lock waits of at least 1 us, by process and mode.",
    &["process", "mode"],
);
static SMAPS_READS: Desc = Desc::counter(
    "hostwatch_smaps_reads_total",
    "Opens of /proc/PID/smaps or smaps_rollup (target self: its own): each makes the kernel walk the target's page tables under its mmap_lock.",
    &["reader", "target"],
);
static SMAPS_LOST: Desc = Desc::counter(
    "hostwatch_smaps_events_lost_total",
    "smaps opens not seen because the kernel's ring buffer was full.",
    &[],
);
static LABEL_OVERFLOWS: Desc = Desc::counter(
    "hostwatch_stalls_label_overflows_total",
    "Processes labelled by comm alone or as other because max_processes or max_names was reached.",
    &[],
);

const MODES: [&str; 2] = ["read", "write"];

/// The `target` of a process's reads of its own smaps.
const SELF: &str = "self";

/// Exported histogram bounds, as powers of two nanoseconds: 4.1 us to 1.07 s,
/// a factor of four apart. The kernel's log2 buckets sum into them exactly.
const BOUNDS_LOG2_NS: [usize; 10] = [12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

fn require_live_procfs(paths: &HostPaths) -> Result<(), Unavailable> {
    if paths.proc("self/stat").exists() {
        Ok(())
    } else {
        Err(Unavailable::new(format!(
            "{} is not a live procfs: eBPF sees the running kernel's processes, which only the live procfs can name",
            paths.procfs().display()
        )))
    }
}

/// Totals of one (label, mode) series: the sum of its processes' waits.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    wait_ns: u64,
    count: u64,
    buckets: [u64; MMAP_LOCK_BUCKETS],
}

impl Totals {
    fn add_difference(&mut self, now: &MmapLockWait, before: Option<&MmapLockWait>) {
        // Totals only grow while the kernel keeps the key; fewer waits than
        // before means it was evicted and started again from zero.
        let before = before.filter(|b| b.count <= now.count);
        let base = before.copied().unwrap_or_default();
        self.wait_ns += now.wait_ns.saturating_sub(base.wait_ns);
        self.count += now.count - base.count;
        for (total, (now, base)) in self.buckets.iter_mut().zip(now.buckets.iter().zip(base.buckets)) {
            *total += now.saturating_sub(base);
        }
    }
}

/// How many smaps reads `GET /debug/stalls` lists: the newest, the oldest dropped.
pub const RECENT_SMAPS_READS: usize = 256;

/// One open of `/proc/PID/smaps` or `smaps_rollup`: the reader made the kernel
/// walk the target's page tables under the target's mmap_lock.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SmapsRead {
    /// When it was opened, in seconds since the Unix epoch.
    pub time: f64,
    pub reader_pid: u32,
    pub reader_comm: String,
    pub target_pid: u32,
    /// Empty when the target had exited by the time the agent looked.
    pub target_comm: String,
    /// `smaps` or `smaps_rollup`.
    pub file: &'static str,
}

pub struct Stalls<S> {
    source: S,
    paths: HostPaths,
    facts: Arc<HostFacts>,
    labels: ProcessLabels,
    min_wait_ns: u64,
    max_pairs: usize,
    /// Every process labelled here, and its label.
    tracked: HashMap<u32, String>,
    /// The kernel's totals already counted, per key of a labelled process.
    counted: HashMap<MmapLockKey, MmapLockWait>,
    /// Per label and mode (read, write); sorted so the output is deterministic.
    waits: BTreeMap<String, [Option<Totals>; 2]>,
    reads: BTreeMap<(String, String), u64>,
    /// Reused buffers.
    entries: Vec<(MmapLockKey, MmapLockWait)>,
    events: Vec<SmapsEvent>,
    /// The recent reads, published as the document `stalls`.
    recent: VecDeque<SmapsRead>,
}

impl<S> std::fmt::Debug for Stalls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stalls")
            .field("tracked", &self.tracked.len())
            .field("series", &self.waits.len())
            .finish_non_exhaustive()
    }
}

impl<S: Source> Stalls<S> {
    pub fn new(source: S, config: &Config, paths: HostPaths, facts: Arc<HostFacts>) -> Self {
        let stalls = Self {
            source,
            paths,
            facts,
            labels: ProcessLabels::new(config.max_processes, config.max_names),
            min_wait_ns: (config.min_wait_seconds.max(0.0) * 1e9) as u64,
            max_pairs: config.max_reader_target_pairs,
            tracked: HashMap::new(),
            counted: HashMap::new(),
            waits: BTreeMap::new(),
            reads: BTreeMap::new(),
            entries: Vec::new(),
            events: Vec::new(),
            recent: VecDeque::new(),
        };
        // An empty list until the first read: the page exists from the start.
        stalls.publish_recent();
        stalls
    }

    /// `{"smaps_reads": [...], "capacity": N}`, oldest first, for `GET /debug/stalls`.
    fn publish_recent(&self) {
        let document = serde_json::json!({ "smaps_reads": self.recent, "capacity": RECENT_SMAPS_READS });
        self.facts.set_debug("stalls", Arc::from(document.to_string()));
    }

    /// `comm` of `pid`, or empty when it has exited.
    fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(self.paths.proc(&format!("{pid}/comm")))
            .map(|comm| comm.trim_end().to_owned())
            .unwrap_or_default()
    }

    /// The label of `pid`, giving it one (named `comm`) when it has none.
    fn label(&mut self, pid: u32, comm: &str) -> String {
        if let Some(label) = self.tracked.get(&pid) {
            return label.clone();
        }
        let name = if comm.is_empty() { "unknown" } else { comm };
        let label = self.labels.label(pid, name).to_owned();
        self.tracked.insert(pid, label.clone());
        label
    }

    fn count_waits(&mut self) -> Result<(), CollectError> {
        self.entries.clear();
        let mut entries = std::mem::take(&mut self.entries);
        let result = self.source.waits(&mut entries);
        // Both modes of a process side by side: admission looks at their sum.
        entries.sort_unstable_by_key(|(key, _)| (key.tgid, key.write));
        for group in entries.chunk_by(|a, b| a.0.tgid == b.0.tgid) {
            let tgid = group[0].0.tgid;
            if !self.tracked.contains_key(&tgid) {
                let waited: u64 = group.iter().map(|(_, wait)| wait.wait_ns).sum();
                if waited < self.min_wait_ns {
                    continue;
                }
                let comm = self.comm(tgid);
                if comm.is_empty() {
                    // Exited before it was named: its entries go at the sweep.
                    continue;
                }
                self.label(tgid, &comm);
            }
            let Some(label) = self.tracked.get(&tgid) else { continue };
            if !self.waits.contains_key(label) {
                self.waits.insert(label.clone(), [None, None]);
            }
            let Some(modes) = self.waits.get_mut(label) else {
                continue;
            };
            for (key, now) in group {
                let totals = modes[usize::from(key.write != 0)].get_or_insert_with(Totals::default);
                totals.add_difference(now, self.counted.get(key));
                self.counted.insert(*key, *now);
            }
        }
        self.entries = entries;
        result
    }

    fn count_reads(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.source.smaps_events(&mut |event| events.push(*event));
        if events.is_empty() {
            self.events = events;
            return;
        }
        let clock = EventClock::now(&self.paths);
        for event in &events {
            let Some((target_pid, file)) = smaps_target(event.path(), event.tgid) else {
                continue;
            };
            let reader_comm = String::from_utf8_lossy(event.comm()).into_owned();
            let target_comm = if target_pid == event.tgid {
                reader_comm.clone()
            } else {
                self.comm(target_pid)
            };
            let reader = self.label(event.tgid, &reader_comm);
            // A process reading its own smaps stalls only itself: `self`
            // keeps it out of joins on the target (the alert's "another
            // process reads its smaps").
            let target = if target_pid == event.tgid {
                SELF.to_owned()
            } else {
                self.label(target_pid, &target_comm)
            };
            let pair =
                if self.reads.len() < self.max_pairs || self.reads.contains_key(&(reader.clone(), target.clone())) {
                    (reader, target)
                } else {
                    (OTHER.to_owned(), OTHER.to_owned())
                };
            *self.reads.entry(pair).or_default() += 1;
            if self.recent.len() == RECENT_SMAPS_READS {
                self.recent.pop_front();
            }
            self.recent.push_back(SmapsRead {
                time: clock.as_ref().map_or(0.0, |clock| clock.unix_seconds(event.time_ns)),
                reader_pid: event.tgid,
                reader_comm,
                target_pid,
                target_comm,
                file,
            });
        }
        if !events.is_empty() {
            self.publish_recent();
        }
        self.events = events;
    }

    /// Forgets processes that exited: their kernel totals (so a recycled pid
    /// starts from zero), their label, and their series when the label named
    /// their pid. Series shared by name keep counting.
    fn sweep(&mut self) {
        let mut exited: Vec<u32> = self
            .tracked
            .keys()
            .copied()
            .chain(self.entries.iter().map(|(key, _)| key.tgid))
            .filter(|pid| !self.paths.proc(&pid.to_string()).exists())
            .collect();
        exited.sort_unstable();
        exited.dedup();
        for pid in exited {
            self.source.forget(pid);
            self.counted.retain(|key, _| key.tgid != pid);
            self.labels.forget(pid);
            let Some(label) = self.tracked.remove(&pid) else {
                continue;
            };
            if label.ends_with(&format!("/{pid}")) {
                self.waits.remove(&label);
                self.reads
                    .retain(|(reader, target), _| *reader != label && *target != label);
            }
        }
    }
}

impl<S: Source> Collector for Stalls<S> {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let waits = self.count_waits();
        self.count_reads();
        self.sweep();
        let series = self.waits.iter().flat_map(|(label, modes)| {
            MODES
                .iter()
                .zip(modes)
                .filter_map(move |(mode, totals)| Some((label, *mode, totals.as_ref()?)))
        });
        for (label, mode, totals) in series {
            let labels = [label.as_str(), mode];
            out.push(&WAIT_SECONDS, &labels, totals.wait_ns as f64 / 1e9);
            let mut from = 0;
            let buckets = BOUNDS_LOG2_NS.iter().map(|&to| {
                let count = totals.buckets[from..to].iter().sum();
                from = to;
                ((1u64 << to) as f64 / 1e9, count)
            });
            out.push_histogram(
                &WAIT_DURATION,
                &labels,
                totals.wait_ns as f64 / 1e9,
                totals.count,
                buckets,
            );
        }
        for ((reader, target), count) in &self.reads {
            out.push(&SMAPS_READS, &[reader, target], *count as f64);
        }
        out.push(&LABEL_OVERFLOWS, &[], self.labels.overflowed() as f64);
        let lost = self.source.smaps_lost();
        if let Ok(lost) = lost {
            out.push(&SMAPS_LOST, &[], lost as f64);
        }
        waits.and(lost.map(drop))
    }
}

/// The pid whose smaps `path` names (`/proc/PID/smaps`, `/proc/self/...`,
/// `/proc/PID/task/TID/...`) and the file, or `None` for any other path the
/// kernel's prefix and suffix filter let through.
fn smaps_target(path: &[u8], reader: u32) -> Option<(u32, &'static str)> {
    let path = std::str::from_utf8(path).ok()?.strip_prefix("/proc/")?;
    let mut parts = path.split('/');
    let owner = parts.next()?;
    let mut file = parts.next()?;
    if file == "task" {
        let tid = parts.next()?;
        if tid.is_empty() || !tid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        file = parts.next()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let file = match file {
        "smaps" => "smaps",
        "smaps_rollup" => "smaps_rollup",
        _ => return None,
    };
    let pid = match owner {
        "self" | "thread-self" => reader,
        digits => digits.parse().ok()?,
    };
    Some((pid, file))
}

/// Turns the kernel's CLOCK_BOOTTIME event stamps into wall-clock time, by
/// `PROCFS/uptime` (the same clock, to 10 ms) read once per collection.
struct EventClock {
    uptime: f64,
    unix: f64,
}

impl EventClock {
    fn now(paths: &HostPaths) -> Option<Self> {
        let text = std::fs::read_to_string(paths.proc("uptime")).ok()?;
        let uptime = text.split_ascii_whitespace().next()?.parse().ok()?;
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(Self { uptime, unix })
    }

    fn unix_seconds(&self, boot_ns: u64) -> f64 {
        self.unix - (self.uptime - boot_ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests;
