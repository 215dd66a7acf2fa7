use std::sync::{Arc, Mutex};

use super::*;
use crate::config::CollectorsConfig;
use crate::testing::TempTree;

/// What the scripted kernel holds; tests change it between collections.
#[derive(Debug, Default)]
struct Kernel {
    waits: Vec<(MmapLockKey, MmapLockWait)>,
    events: Vec<SmapsEvent>,
    lost: u64,
    forgotten: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
struct Scripted(Arc<Mutex<Kernel>>);

impl Source for Scripted {
    fn waits(&mut self, out: &mut Vec<(MmapLockKey, MmapLockWait)>) -> Result<(), CollectError> {
        out.extend(self.0.lock().expect("lock").waits.iter().copied());
        Ok(())
    }

    fn forget(&mut self, tgid: u32) {
        let mut kernel = self.0.lock().expect("lock");
        kernel.forgotten.push(tgid);
        kernel.waits.retain(|(key, _)| key.tgid != tgid);
    }

    fn smaps_events(&mut self, each: &mut dyn FnMut(&SmapsEvent)) {
        for event in self.0.lock().expect("lock").events.drain(..) {
            each(&event);
        }
    }

    fn smaps_lost(&mut self) -> Result<u64, CollectError> {
        Ok(self.0.lock().expect("lock").lost)
    }
}

/// A wait total: `count` waits of `each_ns`, all in that one log2 bucket.
fn wait(count: u64, each_ns: u64) -> MmapLockWait {
    let mut wait = MmapLockWait {
        wait_ns: count * each_ns,
        count,
        ..Default::default()
    };
    wait.buckets[each_ns.ilog2() as usize] = count;
    wait
}

fn key(tgid: u32, write: bool) -> MmapLockKey {
    MmapLockKey {
        tgid,
        write: u32::from(write),
    }
}

fn event(reader: u32, comm: &str, path: &str, time_ns: u64) -> SmapsEvent {
    let mut event = SmapsEvent {
        time_ns,
        tgid: reader,
        tid: reader,
        comm: [0; 16],
        path: [0; 64],
    };
    event.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    event.path[..path.len()].copy_from_slice(path.as_bytes());
    event
}

struct Setup {
    host: TempTree,
    kernel: Scripted,
    facts: Arc<HostFacts>,
    stalls: Stalls<Scripted>,
}

fn setup(config: &Config) -> Setup {
    let host = TempTree::new(&[
        ("proc/100/comm", "mmap_churn\n"),
        ("proc/200/comm", "smaps_reader\n"),
        ("proc/300/comm", "bash\n"),
        ("proc/uptime", "1000.00 1900.00\n"),
    ]);
    let kernel = Scripted::default();
    let facts = Arc::new(HostFacts::default());
    let stalls = Stalls::new(kernel.clone(), config, host.paths(), Arc::clone(&facts));
    Setup {
        host,
        kernel,
        facts,
        stalls,
    }
}

fn collect(stalls: &mut Stalls<Scripted>) -> MetricSet {
    let mut set = MetricSet::default();
    stalls.collect(&mut set).expect("collects");
    set
}

#[test]
fn waiters_get_series_once_they_waited_enough() {
    let mut s = setup(&Config::default());
    {
        let mut kernel = s.kernel.0.lock().expect("lock");
        // 2 ms of 64 us write waits: above the 1 ms default.
        kernel.waits.push((key(100, true), wait(32, 65_536)));
        // 0.5 ms: below it, no series.
        kernel.waits.push((key(300, false), wait(4, 131_072)));
    }
    let set = collect(&mut s.stalls);
    let seconds = set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "write"]);
    assert_eq!(seconds, Some(32.0 * 65_536.0 / 1e9));
    assert_eq!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["bash/300", "read"]),
        None
    );
    assert_eq!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "read"]),
        None
    );

    let histogram = set
        .series(
            "hostwatch_mmap_lock_wait_duration_seconds",
            &["mmap_churn/100", "write"],
        )
        .expect("histogram");
    assert_eq!(histogram.count(), 32);
    // 65536 ns = 2^16 is in log2 bucket 16, under the 2^18 ns bound.
    let buckets = histogram.buckets();
    // The +Inf bucket is implied by the count.
    assert_eq!(buckets.len(), BOUNDS_LOG2_NS.len());
    assert_eq!(buckets[3], (262_144.0 / 1e9, 32));
    assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 32);

    // More waits: the counter grows by the difference.
    s.kernel.0.lock().expect("lock").waits[0].1 = wait(64, 65_536);
    let set = collect(&mut s.stalls);
    assert_eq!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "write"]),
        Some(64.0 * 65_536.0 / 1e9)
    );
}

#[test]
fn an_evicted_key_that_returns_keeps_the_counter_monotonic() {
    let mut s = setup(&Config::default());
    s.kernel
        .0
        .lock()
        .expect("lock")
        .waits
        .push((key(100, true), wait(32, 65_536)));
    collect(&mut s.stalls);
    // The kernel's LRU evicted the key and counted again from zero.
    s.kernel.0.lock().expect("lock").waits[0].1 = wait(2, 65_536);
    let set = collect(&mut s.stalls);
    assert_eq!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "write"]),
        Some(34.0 * 65_536.0 / 1e9)
    );
}

#[test]
fn smaps_reads_are_named_counted_and_listed() {
    let mut s = setup(&Config::default());
    {
        let mut kernel = s.kernel.0.lock().expect("lock");
        kernel
            .events
            .push(event(200, "smaps_reader", "/proc/100/smaps", 999_500_000_000));
        kernel
            .events
            .push(event(200, "smaps_reader", "/proc/100/smaps_rollup", 999_600_000_000));
        kernel
            .events
            .push(event(200, "smaps_reader", "/proc/self/smaps", 999_700_000_000));
        kernel
            .events
            .push(event(300, "bash", "/proc/100/task/101/smaps", 999_800_000_000));
        // Let through by the kernel's prefix and suffix filter, but not smaps.
        kernel
            .events
            .push(event(300, "bash", "/proc/100/fd/smaps", 999_900_000_000));
        // The target exited before the agent looked.
        kernel
            .events
            .push(event(300, "bash", "/proc/4242/smaps", 999_900_000_000));
        kernel.lost = 3;
    }
    let set = collect(&mut s.stalls);
    let reads = |reader: &str, target: &str| set.get("hostwatch_smaps_reads_total", &[reader, target]);
    assert_eq!(reads("smaps_reader/200", "mmap_churn/100"), Some(2.0));
    assert_eq!(reads("smaps_reader/200", "self"), Some(1.0));
    assert_eq!(reads("bash/300", "mmap_churn/100"), Some(1.0));
    // The exited target's pid-labelled series went with it at the sweep.
    assert_eq!(reads("bash/300", "unknown/4242"), None);
    assert_eq!(set.get("hostwatch_smaps_events_lost_total", &[]), Some(3.0));

    let document: serde_json::Value = serde_json::from_str(&s.facts.debug("stalls").expect("published")).unwrap();
    assert_eq!(document["capacity"], RECENT_SMAPS_READS);
    let listed = document["smaps_reads"].as_array().expect("a list");
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0]["reader_pid"], 200);
    assert_eq!(listed[0]["reader_comm"], "smaps_reader");
    assert_eq!(listed[0]["target_pid"], 100);
    assert_eq!(listed[0]["target_comm"], "mmap_churn");
    assert_eq!(listed[1]["file"], "smaps_rollup");
    assert_eq!(listed[4]["target_pid"], 4242);
    assert_eq!(listed[4]["target_comm"], "");
    // Half a second before the uptime the agent read, in wall-clock time.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let time = listed[0]["time"].as_f64().unwrap();
    assert!((now - 0.5 - time).abs() < 5.0, "{time} vs {now}");
}

#[test]
fn exited_processes_are_forgotten() {
    let mut s = setup(&Config::default());
    {
        let mut kernel = s.kernel.0.lock().expect("lock");
        kernel.waits.push((key(100, true), wait(32, 65_536)));
        kernel.events.push(event(200, "smaps_reader", "/proc/100/smaps", 0));
    }
    let set = collect(&mut s.stalls);
    assert!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "write"])
            .is_some()
    );

    std::fs::remove_dir_all(s.host.root().join("proc/100")).expect("remove");
    let set = collect(&mut s.stalls);
    assert_eq!(s.kernel.0.lock().expect("lock").forgotten, [100]);
    assert_eq!(
        set.get("hostwatch_mmap_lock_wait_seconds_total", &["mmap_churn/100", "write"]),
        None
    );
    assert_eq!(
        set.get("hostwatch_smaps_reads_total", &["smaps_reader/200", "mmap_churn/100"]),
        None
    );
    assert!(s.stalls.tracked.contains_key(&200) && !s.stalls.tracked.contains_key(&100));
}

#[test]
fn labels_and_pairs_are_bounded() {
    let config = Config {
        max_processes: 1,
        max_names: 1,
        max_reader_target_pairs: 1,
        ..Config::default()
    };
    let mut s = setup(&config);
    {
        let mut kernel = s.kernel.0.lock().expect("lock");
        kernel.events.push(event(200, "smaps_reader", "/proc/self/smaps", 0));
        kernel.events.push(event(300, "bash", "/proc/100/smaps", 0));
    }
    let set = collect(&mut s.stalls);
    assert_eq!(
        set.get("hostwatch_smaps_reads_total", &["smaps_reader/200", "self"]),
        Some(1.0)
    );
    assert_eq!(set.get("hostwatch_smaps_reads_total", &["other", "other"]), Some(1.0));
    assert_eq!(set.get("hostwatch_stalls_label_overflows_total", &[]), Some(2.0));
}

#[test]
fn smaps_paths() {
    assert_eq!(smaps_target(b"/proc/42/smaps", 7), Some((42, "smaps")));
    assert_eq!(smaps_target(b"/proc/42/smaps_rollup", 7), Some((42, "smaps_rollup")));
    assert_eq!(smaps_target(b"/proc/self/smaps", 7), Some((7, "smaps")));
    assert_eq!(
        smaps_target(b"/proc/thread-self/smaps_rollup", 7),
        Some((7, "smaps_rollup"))
    );
    assert_eq!(smaps_target(b"/proc/42/task/43/smaps", 7), Some((42, "smaps")));
    assert_eq!(
        smaps_target(b"/proc/self/task/43/smaps_rollup", 7),
        Some((7, "smaps_rollup"))
    );
    assert_eq!(smaps_target(b"/proc/42/task/x/smaps", 7), None);
    assert_eq!(smaps_target(b"/proc/42/fd/smaps", 7), None);
    assert_eq!(smaps_target(b"/proc/sys/vm/smaps", 7), None);
    assert_eq!(smaps_target(b"/proc/42/maps", 7), None);
    assert_eq!(smaps_target(b"/proc/smaps", 7), None);
}

#[test]
fn a_fixture_procfs_is_refused() {
    let host = TempTree::new(&[("proc/stat", "cpu 1\n")]);
    let error = require_live_procfs(&host.paths()).expect_err("not live");
    assert!(error.reason.contains("is not a live procfs"), "{error}");
    assert!(require_live_procfs(&HostPaths::default()).is_ok());
}

#[test]
fn config_section_parses() {
    let config: CollectorsConfig =
        toml::from_str("[stalls]\nmax_processes = 8\nmin_wait_seconds = 0.01\n").expect("valid");
    assert_eq!(config.stalls.max_processes, 8);
    assert_eq!(config.stalls.min_wait_seconds, 0.01);
    assert_eq!(config.stalls.max_reader_target_pairs, 256);
    assert!(toml::from_str::<CollectorsConfig>("[stalls]\nmax_pids = 8\n").is_err());
}

#[test]
fn the_listed_reads_are_bounded_newest_kept() {
    let mut s = setup(&Config::default());
    let empty: serde_json::Value = serde_json::from_str(&s.facts.debug("stalls").expect("published at start")).unwrap();
    assert_eq!(empty["smaps_reads"].as_array().map(Vec::len), Some(0));
    {
        let mut kernel = s.kernel.0.lock().expect("lock");
        for i in 0..RECENT_SMAPS_READS as u32 + 10 {
            kernel
                .events
                .push(event(1000 + i, "smaps_reader", "/proc/100/smaps", 999_000_000_000));
        }
    }
    collect(&mut s.stalls);
    let document: serde_json::Value = serde_json::from_str(&s.facts.debug("stalls").expect("published")).unwrap();
    let listed = document["smaps_reads"].as_array().expect("a list");
    assert_eq!(listed.len(), RECENT_SMAPS_READS);
    // Oldest first, the ten oldest dropped.
    assert_eq!(listed[0]["reader_pid"], 1010);
    assert_eq!(
        listed[RECENT_SMAPS_READS - 1]["reader_pid"],
        1000 + RECENT_SMAPS_READS + 9
    );
}
