use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::CollectorsConfig;
use crate::testing::{TempTree, is_root};

/// Samples a test queues, (pid, tid, call chain), and a lost count.
type Queue = (Vec<(u32, u32, Vec<u64>)>, u64);

#[derive(Debug, Clone, Default)]
struct Scripted(Arc<Mutex<Queue>>);

impl Samples for Scripted {
    fn drain(&mut self, each: &mut dyn FnMut(&Sample<'_>)) -> u64 {
        let mut queued = self.0.lock().expect("lock");
        for (pid, tid, ips) in queued.0.drain(..) {
            each(&Sample { pid, tid, ips: &ips });
        }
        std::mem::take(&mut queued.1)
    }
}

const KALLSYMS: &str = "\
ffffffff81771fd0 t smap_gather_stats.part.0
ffffffff817722c0 t show_smap
ffffffff81773c40 t show_smaps_rollup
ffffffff81773e00 t do_other_things
ffffffff81689f00 T css_rstat_flush
ffffffff81689f80 T after_flush
";
const IN_GATHER: u64 = 0xffffffff81772000;
const IN_ROLLUP: u64 = 0xffffffff81773c50;
const IN_FLUSH: u64 = 0xffffffff81689f10;

fn setup(config: &Config) -> (TempTree, Scripted, Hotspots<Scripted>) {
    let host = TempTree::new(&[
        ("proc/kallsyms", KALLSYMS),
        ("proc/200/task/200/comm", "smaps_reader\n"),
        ("proc/300/task/301/comm", "kworker/0:1\n"),
        ("proc/400/task/400/comm", "cat\n"),
    ]);
    let watched = Watched::load(&host.paths().proc("kallsyms"), &config.watch.0).expect("kallsyms");
    let samples = Scripted::default();
    let hotspots = Hotspots::new(samples.clone(), watched, config, host.paths());
    (host, samples, hotspots)
}

fn collect(hotspots: &mut Hotspots<Scripted>) -> MetricSet {
    let mut set = MetricSet::default();
    hotspots.collect(&mut set).expect("collects");
    set
}

#[test]
fn samples_under_watched_functions_count_by_comm() {
    let (_host, samples, mut hotspots) = setup(&Config::default());
    {
        let mut queued = samples.0.lock().expect("lock");
        // smap_gather_stats under show_smaps_rollup, twice in one chain: once.
        queued.0.push((200, 200, vec![IN_GATHER, IN_GATHER, IN_ROLLUP]));
        queued.0.push((200, 200, vec![IN_GATHER, IN_ROLLUP]));
        queued.0.push((300, 301, vec![IN_FLUSH]));
        // Not watched.
        queued.0.push((400, 400, vec![IN_ROLLUP]));
        // The thread exited before the agent looked.
        queued.0.push((500, 501, vec![IN_GATHER]));
        queued.1 = 7;
    }
    let set = collect(&mut hotspots);
    let samples_of = |symbol: &str, comm: &str| set.get("hostwatch_kernel_hotspot_samples_total", &[symbol, comm]);
    assert_eq!(samples_of("smap_gather_stats", "smaps_reader"), Some(2.0));
    assert_eq!(samples_of("css_rstat_flush", "kworker/0:1"), Some(1.0));
    assert_eq!(samples_of("smap_gather_stats", "exited"), Some(1.0));
    assert_eq!(samples_of("smap_gather_stats", "cat"), None);
    assert_eq!(set.get("hostwatch_kernel_samples_total", &[]), Some(5.0));
    assert_eq!(set.get("hostwatch_kernel_hotspot_lost_samples_total", &[]), Some(7.0));
    assert_eq!(
        set.get("hostwatch_kernel_hotspot_sample_frequency_hertz", &[]),
        Some(49.0)
    );
    assert_eq!(
        set.get("hostwatch_kernel_hotspot_symbol_ranges", &["smap_gather_stats"]),
        Some(1.0)
    );
    assert_eq!(
        set.get("hostwatch_kernel_hotspot_symbol_ranges", &["mem_cgroup_nr_lru_pages"]),
        Some(0.0)
    );

    // Counters carry on across collections.
    samples.0.lock().expect("lock").0.push((200, 200, vec![IN_GATHER]));
    let set = collect(&mut hotspots);
    assert_eq!(
        set.get(
            "hostwatch_kernel_hotspot_samples_total",
            &["smap_gather_stats", "smaps_reader"]
        ),
        Some(3.0)
    );
    assert_eq!(set.get("hostwatch_kernel_samples_total", &[]), Some(6.0));
    assert_eq!(set.get("hostwatch_kernel_hotspot_lost_samples_total", &[]), Some(7.0));
}

#[test]
fn comms_are_capped() {
    let config = Config {
        max_comms: 1,
        ..Config::default()
    };
    let (_host, samples, mut hotspots) = setup(&config);
    {
        let mut queued = samples.0.lock().expect("lock");
        queued.0.push((200, 200, vec![IN_GATHER]));
        queued.0.push((400, 400, vec![IN_GATHER]));
        queued.0.push((200, 200, vec![IN_GATHER]));
    }
    let set = collect(&mut hotspots);
    assert_eq!(
        set.get(
            "hostwatch_kernel_hotspot_samples_total",
            &["smap_gather_stats", "smaps_reader"]
        ),
        Some(2.0)
    );
    assert_eq!(
        set.get(
            "hostwatch_kernel_hotspot_samples_total",
            &["smap_gather_stats", "other"]
        ),
        Some(1.0)
    );
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
    assert_eq!(parse_cpu_list("0"), Some(vec![0]));
    assert_eq!(parse_cpu_list("x"), None);
    let host = TempTree::new(&[("sys/devices/system/cpu/online", "0-1\n")]);
    assert_eq!(online_cpus(&host.paths()), Ok(vec![0, 1]));
}

#[test]
fn config_section_parses_and_validates() {
    let config: CollectorsConfig =
        toml::from_str("[hotspots]\nwatch = [\"smap_gather_stats\", \"show_smap\"]\nfrequency = 99\n").expect("valid");
    assert_eq!(config.hotspots.watch.0, ["smap_gather_stats", "show_smap"]);
    assert_eq!(config.hotspots.frequency, Frequency(99));
    let defaults = CollectorsConfig::default().hotspots;
    assert_eq!(defaults.frequency, Frequency(49));
    assert!(defaults.watch.0.iter().any(|w| w == "smap_gather_stats"));
    assert!(defaults.watch.0.iter().any(|w| w == "mem_cgroup_nr_lru_pages"));

    let error = |text: &str| toml::from_str::<CollectorsConfig>(text).err().map(|e| e.to_string());
    assert!(error("[hotspots]\nfrequency = 0\n").is_some_and(|e| e.contains("out of range")));
    assert!(error("[hotspots]\nwatch = []\n").is_some_and(|e| e.contains("1 to 64")));
    assert!(
        error("[hotspots]\nwatch = [\"smap_gather_stats.part.0\"]\n").is_some_and(|e| e.contains("without a suffix"))
    );
}

#[test]
fn hidden_kallsyms_is_unavailable() {
    let host = TempTree::new(&[("proc/kallsyms", "0000000000000000 T smap_gather_stats\n")]);
    let error = Watched::load(&host.paths().proc("kallsyms"), &["smap_gather_stats".to_owned()]).expect_err("hidden");
    assert!(error.reason.contains("every address as 0"), "{error}");
}

/// Real perf sampling: this thread's own kernel time (reading procfs in a
/// loop) shows up in its call chains, on a kernel the probe accepts; where
/// it refuses (the dev VM), it says why.
#[test]
fn perf_samples_kernel_call_chains() {
    if !is_root() {
        eprintln!("skipped: perf sampling of every CPU needs root (CAP_PERFMON)");
        return;
    }
    if let Err(refused) = perf::probe(Path::new("/proc")) {
        assert!(refused.reason.contains("kernel mode"), "{refused}");
        eprintln!("this host cannot sample kernel hot spots: {refused}");
        return;
    }
    let cpus = online_cpus(&HostPaths::default()).expect("online CPUs");
    let mut perf = Perf::open(&cpus, 999).expect("perf opens");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        let _ = std::fs::read_to_string("/proc/self/status");
    }
    let me = std::process::id();
    let mut mine = 0;
    perf.drain(&mut |sample| {
        if sample.pid == me {
            assert!(!sample.ips.is_empty(), "only kernel-mode samples are handed on");
            mine += 1;
        }
    });
    assert!(mine > 50, "kernel samples of this process: {mine}");
}
