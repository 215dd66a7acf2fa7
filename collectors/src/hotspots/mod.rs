//! `hotspots`: how much CPU the kernel spends in watched functions, and on
//! behalf of which command, by perf `cpu-clock` sampling.
//!
//! Reads perf samples (kernel call chains, every online CPU at `frequency` Hz),
//! `PROCFS/kallsyms` once at start, `PROCFS/PID/task/TID/comm` for samples
//! that hit a watched function, and `SYSFS/devices/system/cpu/online`; needs
//! root (CAP_PERFMON, and CAP_SYSLOG for kallsyms addresses) and the live
//! procfs. No kprobes: they are not in every kernel (DESIGN.md), sampling
//! works everywhere.
//!
//! Why: the cost of a smaps storm lands in `smap_gather_stats` on the
//! reader's CPU time, that of memory.stat readers in `mem_cgroup_nr_lru_pages`
//! and the rstat flush. A sample counts for each watched function anywhere
//! in its chain (once, however deep the recursion), attributed to the thread's
//! comm, capped at `max_comms` distinct ones (then `other`). Samples per
//! second divided by the frequency is the CPUs burned there.
//!
//! Emits `hostwatch_kernel_hotspot_samples_total{symbol,comm}`,
//! `hostwatch_kernel_samples_total`, `hostwatch_kernel_hotspot_lost_samples_total`,
//! `hostwatch_kernel_hotspot_sample_frequency_hertz`,
//! `hostwatch_kernel_hotspot_symbol_ranges{symbol}`.

mod kallsyms;
mod perf;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::process_label::OTHER;
use crate::sample::{Desc, MetricSet};

pub use kallsyms::{Watched, base_name};
pub use perf::{Perf, Sample, Samples};

/// Functions watched by default. Those not in a given kernel (inlined, renamed
/// across versions) show 0 in `hostwatch_kernel_hotspot_symbol_ranges`.
pub const DEFAULT_WATCH: [&str; 7] = [
    // Reading /proc/PID/smaps: page-table walk under the target's mmap_lock.
    "smap_gather_stats",
    // Reading memory.stat / memory.numa_stat of cgroup v1 hierarchies.
    "mem_cgroup_nr_lru_pages",
    // Flushing per-CPU cgroup statistics before memory.stat and friends
    // answer: the name changed in 6.16 (cgroup_ → css_).
    "css_rstat_flush",
    "cgroup_rstat_flush",
    "mem_cgroup_flush_stats",
    // Reclaim and compaction burning a CPU: memory pressure in the kernel.
    "shrink_node",
    "compact_zone",
];

/// At most this many watched functions: a sample's hits are a 64-bit mask.
pub const MAX_WATCH: usize = 64;

collector_section! {
    /// `[collectors.hotspots]`: what to watch and how often to sample.
    pub struct Config {
        /// Kernel functions whose samples are counted (their `.part.N`,
        /// `.constprop.N`, `.isra.N` and `.cold` copies included).
        pub watch: WatchList = WatchList::default(),
        /// Samples per second per CPU; 49 stays clear of timer-aligned work.
        pub frequency: Frequency = Frequency(49),
        /// Distinct `comm` label values; samples of later commands count as `other`.
        pub max_comms: usize = 64,
    }
}

/// The watch-list: 1 to [`MAX_WATCH`] kernel function names without suffix.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchList(pub Vec<String>);

impl Default for WatchList {
    fn default() -> Self {
        Self(DEFAULT_WATCH.map(String::from).to_vec())
    }
}

impl<'de> Deserialize<'de> for WatchList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        if names.is_empty() || names.len() > MAX_WATCH {
            return Err(serde::de::Error::custom(format!(
                "watch must name 1 to {MAX_WATCH} functions"
            )));
        }
        if let Some(bad) = names.iter().find(|n| n.is_empty() || base_name(n) != n.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "watch {bad:?}: name the function without a suffix (smap_gather_stats, not smap_gather_stats.part.0)"
            )));
        }
        Ok(Self(names))
    }
}

/// A sampling frequency: 1 to 1000 Hz per CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frequency(pub u64);

impl<'de> Deserialize<'de> for Frequency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hertz = u64::deserialize(deserializer)?;
        if !(1..=1000).contains(&hertz) {
            return Err(serde::de::Error::custom(format!(
                "frequency {hertz} out of range: 1 to 1000 samples per second per CPU"
            )));
        }
        Ok(Self(hertz))
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "hotspots",
    needs: "root (CAP_PERFMON, CAP_SYSLOG), live procfs: perf cpu-clock sampling, /proc/kallsyms",
    default_interval: Duration::from_secs(1),
    section: |config| &config.hotspots,
    build: |context| {
        let config = &context.config.hotspots;
        let paths = &context.paths;
        if !paths.proc("self/stat").exists() {
            return Err(Unavailable::new(format!(
                "{} is not a live procfs: perf samples the running kernel, whose symbols and threads only the live procfs names",
                paths.procfs().display()
            )));
        }
        // Cheap checks first. Where they fail, every minute (the scheduler
        // builds a down collector again), the 5 MB of kallsyms is not read.
        let kallsyms = paths.proc("kallsyms");
        Watched::check_visible(&kallsyms)?;
        perf::probe(paths.procfs())?;
        let watched = Watched::load(&kallsyms, &config.watch.0)?;
        let cpus = online_cpus(paths)?;
        let samples = Perf::open(&cpus, config.frequency.0)?;
        Ok(Box::new(Hotspots::new(samples, watched, config, paths.clone())))
    },
};

static HOTSPOT_SAMPLES: Desc = Desc::counter(
    "hostwatch_kernel_hotspot_samples_total",
    "Kernel CPU samples whose call chain contains the watched function, by the sampled thread's command.",
    &["symbol", "comm"],
);
static KERNEL_SAMPLES: Desc = Desc::counter(
    "hostwatch_kernel_samples_total",
    "Kernel CPU samples taken (idle excluded), watched or not.",
    &[],
);
static LOST: Desc = Desc::counter(
    "hostwatch_kernel_hotspot_lost_samples_total",
    "Samples the kernel dropped because a CPU's ring buffer was full.",
    &[],
);
static FREQUENCY: Desc = Desc::gauge(
    "hostwatch_kernel_hotspot_sample_frequency_hertz",
    "Samples per second per CPU: samples per second divided by it is CPUs busy.",
    &[],
);
static RANGES: Desc = Desc::gauge(
    "hostwatch_kernel_hotspot_symbol_ranges",
    "Code ranges of the watched function in this kernel (clones and parts included); 0: inlined or absent.",
    &["symbol"],
);

pub struct Hotspots<S> {
    samples: S,
    watched: Watched,
    watch: Vec<String>,
    frequency: u64,
    max_comms: usize,
    paths: HostPaths,
    /// Per (watch index, comm index); the exporter sorts series by label.
    counts: BTreeMap<(usize, usize), u64>,
    kernel_samples: u64,
    lost: u64,
    /// This collection's hits before their comm is known: (watch mask, pid, tid).
    hits: Vec<(u64, u32, u32)>,
    /// tid to comm index, for this collection only (tids are recycled).
    comms: HashMap<u32, usize>,
    /// The comm label values given so far, interned so that counting a hit
    /// allocates nothing: at most `max_comms`, plus `other` once needed.
    comm_labels: Vec<String>,
}

impl<S> std::fmt::Debug for Hotspots<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hotspots")
            .field("watch", &self.watch)
            .field("frequency", &self.frequency)
            .finish_non_exhaustive()
    }
}

impl<S: Samples> Hotspots<S> {
    pub fn new(samples: S, watched: Watched, config: &Config, paths: HostPaths) -> Self {
        Self {
            samples,
            watched,
            watch: config.watch.0.clone(),
            frequency: config.frequency.0,
            max_comms: config.max_comms,
            paths,
            counts: BTreeMap::new(),
            kernel_samples: 0,
            lost: 0,
            hits: Vec::new(),
            comms: HashMap::new(),
            comm_labels: Vec::new(),
        }
    }

    /// The comm label index of a sampled thread: its comm (`exited` once
    /// gone), or `other` beyond `max_comms` distinct ones.
    fn comm_index(&mut self, pid: u32, tid: u32) -> usize {
        if let Some(&index) = self.comms.get(&tid) {
            return index;
        }
        let comm = std::fs::read_to_string(self.paths.proc(&format!("{pid}/task/{tid}/comm")))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_else(|_| "exited".to_owned());
        let known = |label: &str| self.comm_labels.iter().position(|l| l == label);
        let index = match known(&comm) {
            Some(index) => index,
            None if self.comm_labels.iter().filter(|l| *l != OTHER).count() < self.max_comms => {
                self.comm_labels.push(comm);
                self.comm_labels.len() - 1
            }
            None => known(OTHER).unwrap_or_else(|| {
                self.comm_labels.push(OTHER.to_owned());
                self.comm_labels.len() - 1
            }),
        };
        self.comms.insert(tid, index);
        index
    }
}

impl<S: Samples> Collector for Hotspots<S> {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let (watched, hits) = (&self.watched, &mut self.hits);
        let mut taken = 0u64;
        hits.clear();
        let lost = self.samples.drain(&mut |sample| {
            taken += 1;
            // Each watched function once per sample, however often it recurs.
            let mask = sample
                .ips
                .iter()
                .filter_map(|&ip| watched.find(ip))
                .fold(0u64, |mask, watch| mask | 1 << watch);
            if mask != 0 {
                hits.push((mask, sample.pid, sample.tid));
            }
        });
        self.kernel_samples += taken;
        self.lost += lost;
        self.comms.clear();
        let hits = std::mem::take(&mut self.hits);
        for &(mask, pid, tid) in &hits {
            let comm = self.comm_index(pid, tid);
            for watch in (0..self.watch.len()).filter(|w| mask & (1 << w) != 0) {
                *self.counts.entry((watch, comm)).or_default() += 1;
            }
        }
        self.hits = hits;

        for (&(watch, comm), count) in &self.counts {
            out.push(
                &HOTSPOT_SAMPLES,
                &[&self.watch[watch], &self.comm_labels[comm]],
                *count as f64,
            );
        }
        for (index, symbol) in self.watch.iter().enumerate() {
            out.push(&RANGES, &[symbol], self.watched.ranges_of(index) as f64);
        }
        out.push(&KERNEL_SAMPLES, &[], self.kernel_samples as f64);
        out.push(&LOST, &[], self.lost as f64);
        out.push(&FREQUENCY, &[], self.frequency as f64);
        Ok(())
    }
}

/// The online CPUs from `SYSFS/devices/system/cpu/online` (`0-3,6,8-9`).
fn online_cpus(paths: &HostPaths) -> Result<Vec<usize>, Unavailable> {
    let path = paths.sys("devices/system/cpu/online");
    let text = std::fs::read_to_string(&path)
        .map_err(|error| Unavailable::new(format!("cannot read {}: {error}", path.display())))?;
    parse_cpu_list(text.trim())
        .filter(|cpus| !cpus.is_empty())
        .ok_or_else(|| Unavailable::new(format!("{}: not a CPU list: {:?}", path.display(), text.trim())))
}

fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>().ok()?..=last.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests;
