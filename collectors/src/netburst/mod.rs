//! `netburst`: network microbursts at 1 ms resolution, from eBPF.
//!
//! The netburst BPF program counts bytes and packets per (network namespace,
//! interface, direction) and millisecond in per-CPU rings; this collector
//! folds them every interval (default 100 ms, several times a second), finds
//! bursts (runs of consecutive milliseconds above the threshold), keeps the
//! highest 1 ms / 10 ms / 100 ms / 1 s rates over a trailing summary window so
//! a 15 s scrape still carries them, attributes egress bytes to cgroups and
//! tasks, and keeps a one-minute flight recorder that writes the window around
//! each burst or ENA allowance drop to disk. Attribution counts a sender's
//! bytes only in milliseconds on their way above the threshold (a gate the
//! program checks against its CPU's count), so a burst names who sent during
//! bursts, not who sent steadily in the folds around it.
//!
//! Reads `SYSFS/class/net` (interfaces with a device by default, or those
//! `include` names; a loopback's receive series is its transmit one, as the
//! kernel's own loopback counters are), the BPF maps, the cgroup v2 tree.
//! Needs root (CAP_BPF, CAP_PERFMON) and kernel BTF; without them it is down
//! with the reason.
//!
//! Emits `hostwatch_net_bursts_total`, `hostwatch_net_burst_duration_seconds`,
//! `hostwatch_net_burst_bytes`, `hostwatch_net_peak_rate_bits_per_second`,
//! `hostwatch_net_burst_threshold_bits_per_second`, `hostwatch_net_slots_lost_total`,
//! `hostwatch_net_burst_contributor_bytes_total`, `hostwatch_net_recordings_total`,
//! `hostwatch_net_recording_failures_total`, `hostwatch_net_burst_interfaces_unwatched`,
//! `hostwatch_net_burst_hooks`; and the documents `bursts` (recent
//! burst events), `netslots` (the last second per millisecond, with the
//! millisecond it ends at) and
//! `recordings` (the flight recorder's files) for `GET /debug/...`.

mod attribution;
mod backend;
mod detector;
mod fold;
mod recorder;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostwatch_ebpf::maps::{NET_MAX_IFACES, NET_RECEIVE, NET_TRANSMIT, NetIface, NetRing};
use serde::{Deserialize, Deserializer, Serialize};
use tracing::{info, warn};

use self::attribution::Attribution;
pub use self::attribution::Contributor;
pub use self::backend::Hooks;
use self::backend::{Backend, BpfBackend};
use self::detector::{Burst, Detector, MAX_SUMMARY_SECONDS, Transition, WINDOWS};
use self::fold::{Folder, Slot};
use self::recorder::{History, Reason, Recorder};
pub use self::recorder::{Limits, RecordingFile, list as list_recordings};
use crate::collector::{Collector, CollectorSpec, Context};
use crate::config::{Interval, Pattern, Rate, Selector, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::facts::HostFacts;
use crate::paths::HostPaths;
use crate::sample::{Desc, MetricSet};

/// The threshold when it is a share of the instance baseline and the
/// baseline is unknown (not on EC2, unknown instance type): 1 Gbit/s.
pub const FALLBACK_THRESHOLD_BITS: f64 = 1e9;

collector_section! {
    /// `[collectors.netburst]`.
    pub struct Config {
        /// Interfaces whose whole name matches; when absent, every interface
        /// with a device behind it (at most 32 are counted).
        pub include: Option<Pattern> = None,
        pub exclude: Option<Pattern> = None,
        /// A millisecond above this rate is part of a burst: a rate ("2Gbit")
        /// or a share of the instance's network baseline ("100%").
        pub threshold: Threshold = Threshold::Baseline(1.0),
        /// Per-interface and per-direction thresholds, first match wins.
        pub thresholds: Vec<ThresholdOverride> = Vec::new(),
        /// The trailing window the peak rates cover (at most 60 s).
        pub summary_window: Interval = Interval::from_secs(15),
        /// Burst events kept for `GET /debug/bursts`.
        pub max_events: usize = 256,
        /// Senders named in each burst event.
        pub event_contributors: usize = 3,
        /// Cgroups exported per interface and direction in
        /// `hostwatch_net_burst_contributor_bytes_total`; the rest are `other`.
        pub top_cgroups: usize = 10,
        /// Write the window around each burst and ENA allowance drop.
        pub record: bool = true,
        pub recordings: PathBuf = PathBuf::from("/var/lib/hostwatch/recordings"),
        pub max_recordings: usize = 64,
        pub max_recording_bytes: u64 = 64 << 20,
        /// Where packets are counted: `auto` (TCX on each watched interface
        /// where the kernel has it, else tracepoints), `tcx` or `tracepoints`.
        pub hooks: Hooks = Hooks::Auto,
    }
}

/// A burst threshold: an absolute rate, or a share of the instance baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Rate(Rate),
    /// 1.0 is 100 % of the baseline.
    Baseline(f64),
}

impl Threshold {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 1000.0 => Ok(Self::Baseline(p / 100.0)),
                _ => Err(format!(
                    "invalid threshold {text:?}: a share of the baseline is between 0% and 1000%"
                )),
            },
            None => Rate::parse(text).map(Self::Rate),
        }
    }

    /// In bits per second, given the baseline when known.
    fn resolve(self, baseline: Option<f64>) -> f64 {
        match self {
            Self::Rate(rate) => rate.bits_per_second(),
            Self::Baseline(share) => baseline.map_or(FALLBACK_THRESHOLD_BITS, |b| b * share),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[[collectors.netburst.thresholds]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    pub interface: Pattern,
    /// "receive" or "transmit"; both when absent.
    pub direction: Option<Direction>,
    pub threshold: Threshold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Receive,
    Transmit,
}

impl Direction {
    const BOTH: [Self; 2] = [Self::Receive, Self::Transmit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receive => "receive",
            Self::Transmit => "transmit",
        }
    }

    fn index(self) -> u32 {
        match self {
            Self::Receive => NET_RECEIVE,
            Self::Transmit => NET_TRANSMIT,
        }
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "netburst",
    needs: "root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), kernel BTF; TCX on the watched interfaces (Linux 6.6+), else tp_btf net_dev_xmit, net_dev_start_xmit, netif_receive_skb",
    default_interval: Duration::from_millis(100),
    section: |config| &config.netburst,
    build: |context| {
        // Checked before loading anything: without interfaces there is nothing to count.
        let class_net = context.paths.sys("class/net");
        if !class_net.is_dir() {
            return Err(Unavailable::new(format!(
                "no network interfaces: {} is missing",
                class_net.display()
            )));
        }
        let netns = NetIface::own_netns()
            .map_err(|error| Unavailable::new(format!("no network namespace: /proc/self/ns/net: {error}")))?;
        let backend = BpfBackend::new(context.config.netburst.hooks, netns)?;
        let hooks = if backend.tcx() {
            "TCX on each watched interface"
        } else {
            "tracepoints, for every packet of the host"
        };
        info!(hooks, "netburst programs loaded");
        Ok(Box::new(NetBurst::new(context, netns, Box::new(backend))?))
    },
};

static BURSTS: Desc = Desc::counter(
    "hostwatch_net_bursts_total",
    "Bursts: runs of consecutive milliseconds above the threshold.",
    &["interface", "direction"],
);
static DURATION: Desc = Desc::histogram(
    "hostwatch_net_burst_duration_seconds",
    "How long bursts lasted.",
    &["interface", "direction"],
);
static SIZE: Desc = Desc::histogram(
    "hostwatch_net_burst_bytes",
    "Bytes each burst carried.",
    &["interface", "direction"],
);
static PEAK: Desc = Desc::gauge(
    "hostwatch_net_peak_rate_bits_per_second",
    "The highest rate over any window of this length (1ms, 10ms, 100ms, 1s) in the trailing summary window (default 15 s).",
    &["interface", "direction", "window"],
);
static THRESHOLD: Desc = Desc::gauge(
    "hostwatch_net_burst_threshold_bits_per_second",
    "The rate above which a millisecond counts as part of a burst.",
    &["interface", "direction"],
);
static LOST: Desc = Desc::counter(
    "hostwatch_net_slots_lost_total",
    "Milliseconds overwritten before the agent read them (it fell behind): unknown, never counted as idle.",
    &["interface", "direction"],
);
static CONTRIBUTORS: Desc = Desc::counter(
    "hostwatch_net_burst_contributor_bytes_total",
    "Egress bytes each cgroup sent in milliseconds near the burst threshold, in the folds (100 ms each) around the end of a burst: the top cgroups, the rest as other.",
    &["interface", "direction", "cgroup"],
);
static RECORDINGS: Desc = Desc::counter(
    "hostwatch_net_recordings_total",
    "Flight recorder windows written to disk.",
    &[],
);
static RECORDING_FAILURES: Desc = Desc::counter(
    "hostwatch_net_recording_failures_total",
    "Flight recorder writes that failed (full or read-only disk); recording pauses a minute after each.",
    &[],
);
static HOOKS: Desc = Desc::gauge(
    "hostwatch_net_burst_hooks",
    "Where packets are counted, 1 for the hooks in use: tcx (a program on each watched interface) or tracepoints (every packet of the host; kernels before 6.6).",
    &["hooks"],
);
static UNWATCHED: Desc = Desc::gauge(
    "hostwatch_net_burst_interfaces_unwatched",
    "Selected interfaces not counted: 32 already are, or the hooks could not be attached to them (the log says why).",
    &[],
);

/// How often the interface list is read again.
const RESCAN: Duration = Duration::from_secs(2);
/// Histories of departed interfaces kept for new ones.
const SPARE_HISTORIES: usize = 4;

/// A burst as `GET /debug/bursts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BurstEvent {
    pub interface: String,
    pub direction: Direction,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub peak_bits_per_second: f64,
    pub threshold_bits_per_second: f64,
    /// Ended by lost milliseconds: its true length is unknown.
    pub truncated: bool,
    pub contributors: Vec<Contributor>,
}

/// One (interface, direction) being counted.
struct Series {
    direction: Direction,
    folder: Folder,
    detector: Detector,
    history: History,
    lost: u64,
    /// Bytes per cgroup path during folds with a burst, since start.
    contributors: HashMap<String, u64>,
    /// The last fold whose senders were added to `contributors`.
    credited: Option<u64>,
    /// The threshold the BPF gate was last set to (see [`Backend::gate`]).
    gated: Option<u64>,
}

/// One watched interface, at its id's place in `NetBurst::watched`.
struct Watched {
    name: String,
    key: NetIface,
    /// Counted on egress only: its receive series is its transmit ring.
    loopback: bool,
    series: [Series; 2],
}

struct NetBurst {
    backend: Box<dyn Backend>,
    config: Config,
    selector: Selector,
    facts: Arc<HostFacts>,
    paths: HostPaths,
    netns: u32,
    watched: Vec<Option<Watched>>,
    spare: Vec<History>,
    unwatched: usize,
    /// Interfaces whose hooks could not be attached, not tried again.
    refused: Vec<NetIface>,
    scanned: Option<Instant>,
    attribution: Attribution,
    recorder: Recorder,
    allowance_seen: Option<u64>,
    /// Folds done, to know which ones a series' contributors already counted.
    folds: u64,
    /// How many recordings had been written when the listing was last published.
    recordings_listed: Option<u64>,
    events: VecDeque<BurstEvent>,
    rings: Vec<NetRing>,
    ended: Vec<(usize, Direction, Burst)>,
    started: Vec<(usize, Direction, u64)>,
    scratch: Vec<Option<u32>>,
    cgroup_bytes: Vec<(String, u64)>,
}

impl NetBurst {
    /// `netns`: the agent's network namespace, whose interfaces it counts.
    fn new(context: &Context, netns: u32, backend: Box<dyn Backend>) -> Result<Self, Unavailable> {
        let config = context.config.netburst.clone();
        if config.summary_window.get() > Duration::from_secs(MAX_SUMMARY_SECONDS) {
            return Err(Unavailable::new("summary_window is longer than 60s"));
        }
        Ok(Self {
            backend,
            selector: Selector {
                include: config.include.clone(),
                exclude: config.exclude.clone(),
            },
            recorder: Recorder::new(Limits {
                dir: config.recordings.clone(),
                max_files: config.max_recordings,
                max_bytes: config.max_recording_bytes,
            }),
            config,
            facts: Arc::clone(&context.facts),
            paths: context.paths.clone(),
            netns,
            watched: (0..NET_MAX_IFACES).map(|_| None).collect(),
            spare: Vec::new(),
            unwatched: 0,
            refused: Vec::new(),
            scanned: None,
            attribution: Attribution::new(&context.paths),
            allowance_seen: None,
            folds: 0,
            recordings_listed: None,
            events: VecDeque::new(),
            rings: Vec::new(),
            ended: Vec::new(),
            started: Vec::new(),
            scratch: Vec::new(),
            cgroup_bytes: Vec::new(),
        })
    }

    fn threshold(&self, interface: &str, direction: Direction) -> f64 {
        let baseline = self.facts.network_baseline().map(|b| b.baseline_bps);
        self.config
            .thresholds
            .iter()
            .find(|o| o.interface.is_match(interface) && o.direction.is_none_or(|d| d == direction))
            .map_or(self.config.threshold, |o| o.threshold)
            .resolve(baseline)
    }

    /// Watches new interfaces and forgets those gone (or renumbered).
    fn rescan(&mut self) -> Result<(), CollectError> {
        self.scanned = Some(Instant::now());
        let class_net = self.paths.sys("class/net");
        let io_error = |source| CollectError::Io {
            path: class_net.clone(),
            source,
        };
        let mut present: Vec<(String, NetIface)> = Vec::new();
        for entry in std::fs::read_dir(&class_net).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let selected = if self.config.include.is_some() {
                true
            } else {
                entry.path().join("device").exists()
            };
            if !selected || !self.selector.selects(&name) {
                continue;
            }
            let Ok(key) = NetIface::read(self.netns, &entry.path()) else {
                continue;
            };
            present.push((name, key));
        }
        present.sort_by(|a, b| a.0.cmp(&b.0));
        for id in 0..self.watched.len() {
            let gone = self.watched[id]
                .as_ref()
                .is_some_and(|w| !present.iter().any(|(n, k)| *n == w.name && *k == w.key));
            if gone && let Some(watched) = self.watched[id].take() {
                self.backend.unwatch(watched.key)?;
                info!(interface = %watched.name, "interface gone; no longer counted");
                // Containers come and go with their veths: keep a few
                // histories (240 KB each) for the next interface rather
                // than churning the allocator.
                if self.spare.len() < SPARE_HISTORIES {
                    self.spare.extend(watched.series.map(|series| series.history));
                }
            }
        }
        self.unwatched = 0;
        self.refused.retain(|key| present.iter().any(|(_, k)| k == key));
        for (name, key) in present {
            if self.watched.iter().flatten().any(|w| w.key == key) {
                continue;
            }
            if self.refused.contains(&key) {
                self.unwatched += 1;
                continue;
            }
            let Some(id) = self.watched.iter().position(Option::is_none) else {
                self.unwatched += 1;
                continue;
            };
            // One interface the hooks cannot attach to (an odd device type)
            // stays uncounted until it is recreated; the others go on.
            let loopback = is_loopback(&class_net.join(&name));
            if let Err(error) = self.backend.watch(&name, key, id as u32, loopback) {
                warn!(interface = %name, %error, "cannot count this interface");
                self.refused.push(key);
                self.unwatched += 1;
                continue;
            }
            let series = Direction::BOTH.map(|direction| Series {
                direction,
                folder: Folder::default(),
                detector: Detector::new(self.threshold(&name, direction)),
                history: self.spare.pop().map(History::reset).unwrap_or_default(),
                lost: 0,
                contributors: HashMap::new(),
                credited: None,
                gated: None,
            });
            info!(interface = %name, "counting bytes per millisecond");
            self.watched[id] = Some(Watched {
                name,
                key,
                loopback,
                series,
            });
        }
        Ok(())
    }

    fn fold(&mut self, now_ms: u64) -> Result<(), CollectError> {
        self.ended.clear();
        self.started.clear();
        for id in 0..self.watched.len() {
            if self.watched[id].is_none() {
                continue;
            }
            let loopback = self.watched[id].as_ref().is_some_and(|w| w.loopback);
            // Transmit first: a loopback's receive series folds the rings
            // just read, as they are.
            for direction in [Direction::Transmit, Direction::Receive] {
                let index = id as u32 * 2 + direction.index();
                if !(loopback && direction == Direction::Receive) {
                    self.backend.rings(index, &mut self.rings)?;
                }
                let threshold = self.watched[id]
                    .as_ref()
                    .map(|w| self.threshold(&w.name, direction))
                    .unwrap_or_default();
                let Some(watched) = self.watched[id].as_mut() else {
                    continue;
                };
                let series = &mut watched.series[direction.index() as usize];
                series.detector.set_threshold(threshold);
                // Only egress is attributed; a system call only on a change.
                let gate = series.detector.threshold_bytes();
                if direction == Direction::Transmit && series.gated != Some(gate) {
                    self.backend.gate(index, gate)?;
                    series.gated = Some(gate);
                }
                let (ended, started) = (&mut self.ended, &mut self.started);
                let Series {
                    folder,
                    detector,
                    history,
                    lost,
                    ..
                } = series;
                folder.fold(&self.rings, now_ms, |slot| match slot {
                    Slot::Counted { ms, bytes, .. } => {
                        history.push(ms, bytes);
                        match detector.observe(ms, bytes) {
                            Transition::None => {}
                            Transition::Started(ms) => started.push((id, direction, ms)),
                            Transition::Ended(burst) => ended.push((id, direction, burst)),
                        }
                    }
                    Slot::Lost { from, count } => {
                        *lost += count;
                        history.lost(from, count);
                        if let Some(burst) = detector.gap() {
                            ended.push((id, direction, burst));
                        }
                    }
                });
            }
        }
        Ok(())
    }

    /// Turns the bursts that ended in this fold into events and contributor totals.
    fn record_bursts(&mut self, now_ms: u64) {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        for &(id, direction, ms) in &self.started {
            if self.config.record {
                self.recorder
                    .trigger(id * 2 + direction.index() as usize, ms, Reason::Burst);
            }
        }
        let mut attributed = [[false; 2]; NET_MAX_IFACES as usize];
        let transmitted = self.ended.iter().filter(|(_, d, _)| *d == Direction::Transmit).count();
        self.facts
            .add_bursts((self.ended.len() - transmitted) as u64, transmitted as u64);
        for &(id, direction, burst) in &self.ended {
            let index = id as u32 * 2 + direction.index();
            let contributors = self.attribution.top(index, self.config.event_contributors);
            let Some(watched) = self.watched[id].as_mut() else {
                continue;
            };
            let series = &mut watched.series[direction.index() as usize];
            if !std::mem::replace(&mut attributed[id][direction.index() as usize], true) {
                // The fold before may hold the burst's bytes (see Attribution).
                let with_prior = series.credited.is_none_or(|fold| fold + 1 < self.folds);
                series.credited = Some(self.folds);
                self.attribution.by_cgroup(index, with_prior, &mut self.cgroup_bytes);
                for (cgroup, bytes) in self.cgroup_bytes.drain(..) {
                    *series.contributors.entry(cgroup).or_default() += bytes;
                }
            }
            if self.events.len() == self.config.max_events {
                self.events.pop_front();
            }
            self.events.push_back(BurstEvent {
                interface: watched.name.clone(),
                direction,
                start_unix_ms: unix_now.saturating_sub(now_ms.saturating_sub(burst.start_ms)),
                duration_ms: burst.duration_ms,
                bytes: burst.bytes,
                peak_bits_per_second: burst.peak_ms_bytes as f64 * 8.0 * 1000.0,
                threshold_bits_per_second: series.detector.threshold_bits_per_second(),
                truncated: burst.truncated,
                contributors,
            });
        }
        if !self.ended.is_empty() {
            self.publish("bursts", &self.events);
        }
    }

    /// An ENA allowance counter rose: record every series around now.
    fn watch_allowances(&mut self, now_ms: u64) {
        let total = self.facts.allowance_exceeded();
        let rose = self.allowance_seen.is_some_and(|seen| total > seen);
        self.allowance_seen = Some(total);
        if rose && self.config.record {
            for (id, watched) in self.watched.iter().enumerate() {
                if watched.is_some() {
                    for direction in Direction::BOTH {
                        self.recorder
                            .trigger(id * 2 + direction.index() as usize, now_ms, Reason::EnaAllowance);
                    }
                }
            }
        }
    }

    fn publish_slots(&mut self, now_ms: u64) {
        #[derive(Serialize)]
        struct Slots<'a> {
            interface: &'a str,
            direction: Direction,
            threshold_bits_per_second: f64,
            /// The collector's millisecond clock just after the last slot:
            /// lets a reader join successive documents without gaps or overlaps.
            end_ms: u64,
            bytes_per_ms: &'a [Option<u32>],
        }
        let mut all = Vec::new();
        let mut windows = Vec::new();
        for watched in self.watched.iter().flatten() {
            for series in &watched.series {
                series
                    .history
                    .window(now_ms.saturating_sub(1000), now_ms, &mut self.scratch);
                windows.push((
                    watched.name.as_str(),
                    series.direction,
                    series.detector.threshold_bits_per_second(),
                    self.scratch.clone(),
                ));
            }
        }
        for (interface, direction, threshold_bits_per_second, bytes) in &windows {
            all.push(Slots {
                interface,
                direction: *direction,
                threshold_bits_per_second: *threshold_bits_per_second,
                end_ms: now_ms,
                bytes_per_ms: bytes,
            });
        }
        self.publish("netslots", &all);
    }

    fn publish(&self, name: &'static str, value: &impl Serialize) {
        match serde_json::to_string(value) {
            Ok(json) => self.facts.set_debug(name, Arc::from(json)),
            Err(error) => warn!(collector = "netburst", %error, "debug document not serialized"),
        }
    }

    fn emit(&self, now_ms: u64, out: &mut MetricSet) {
        let summary = self.config.summary_window.get().as_secs().max(1);
        for watched in self.watched.iter().flatten() {
            for series in &watched.series {
                let labels = [watched.name.as_str(), series.direction.as_str()];
                let detector = &series.detector;
                out.push(&BURSTS, &labels, detector.bursts() as f64);
                out.push_histogram(
                    &DURATION,
                    &labels,
                    detector.duration().sum(),
                    detector.duration().count(),
                    detector.duration().buckets(),
                );
                out.push_histogram(
                    &SIZE,
                    &labels,
                    detector.size().sum(),
                    detector.size().count(),
                    detector.size().buckets(),
                );
                for (w, (_, window)) in WINDOWS.iter().enumerate() {
                    out.push(
                        &PEAK,
                        &[labels[0], labels[1], window],
                        detector.peak(w, now_ms, summary),
                    );
                }
                out.push(&THRESHOLD, &labels, detector.threshold_bits_per_second());
                out.push(&LOST, &labels, series.lost as f64);
                let mut ranked: Vec<(&String, &u64)> = series.contributors.iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let other: u64 = ranked.iter().skip(self.config.top_cgroups).map(|(_, b)| **b).sum();
                for (cgroup, bytes) in ranked.iter().take(self.config.top_cgroups) {
                    out.push(&CONTRIBUTORS, &[labels[0], labels[1], cgroup], **bytes as f64);
                }
                if ranked.len() > self.config.top_cgroups {
                    out.push(&CONTRIBUTORS, &[labels[0], labels[1], "other"], other as f64);
                }
            }
        }
        out.push(&RECORDINGS, &[], self.recorder.written() as f64);
        out.push(&RECORDING_FAILURES, &[], self.recorder.failures() as f64);
        out.push(&UNWATCHED, &[], self.unwatched as f64);
        out.push(&HOOKS, &[self.backend.hooks()], 1.0);
    }
}

/// Whether the interface whose sysfs directory is `dir` is a loopback
/// (`IFF_LOOPBACK` in its flags): it receives exactly what it transmits.
fn is_loopback(dir: &std::path::Path) -> bool {
    const IFF_LOOPBACK: u32 = 0x8;
    std::fs::read_to_string(dir.join("flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & IFF_LOOPBACK != 0)
}

impl Collector for NetBurst {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        if self.scanned.is_none_or(|at| at.elapsed() >= RESCAN) {
            self.rescan()?;
        }
        let now_ms = self.backend.now_ms();
        self.attribution.update(self.backend.as_mut())?;
        self.folds += 1;
        self.fold(now_ms)?;
        self.record_bursts(now_ms);
        self.watch_allowances(now_ms);
        let watched = &self.watched;
        self.recorder.flush(now_ms, |series| {
            let w = watched.get(series / 2)?.as_ref()?;
            let s = &w.series[series % 2];
            Some((&s.history, w.name.as_str(), s.direction.as_str()))
        });
        if self.recordings_listed != Some(self.recorder.written()) {
            self.recordings_listed = Some(self.recorder.written());
            match list_recordings(self.recorder.limits()) {
                Ok(files) => self.publish("recordings", &files),
                Err(error) => warn!(collector = "netburst", %error, "recordings not listed"),
            }
        }
        self.publish_slots(now_ms);
        self.emit(now_ms, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
