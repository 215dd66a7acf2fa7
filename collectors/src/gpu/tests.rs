//! Tests of the gpu collector: fixture scenarios against golden output (idle,
//! busy, XIDs, a lost GPU, no NVML), XIDs replayed live, a GPU that hangs
//! while the others report, bounded process labels, broken fixtures, and the
//! real NVML loader on a host without the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::backend::{Process, Reader};
use super::*;
use crate::config::CollectorsConfig;
use crate::testing::{TempTree, assert_golden};

fn fixtures(scenario: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gpu")
        .join(scenario)
}

fn build(edit: impl FnOnce(&mut Config)) -> Result<Box<dyn Collector>, Unavailable> {
    let mut config = CollectorsConfig::default();
    edit(&mut config.gpu);
    (SPEC.build)(&Context::new(Default::default(), config))
}

fn collect(collector: &mut dyn Collector) -> MetricSet {
    let mut set = MetricSet::default();
    collector.collect(&mut set).expect("collects");
    set
}

fn scenario(name: &str, edit: impl FnOnce(&mut Config)) -> MetricSet {
    let mut collector = build(|c| {
        c.fixtures = Some(fixtures(name));
        edit(c);
    })
    .expect("builds");
    collect(collector.as_mut())
}

fn state(set: &MetricSet, gpu: &str, uuid: &str) -> Vec<&'static str> {
    State::ALL
        .iter()
        .map(|s| s.label())
        .filter(|s| set.get("hostwatch_gpu_state", &[gpu, uuid, s]) == Some(1.0))
        .collect()
}

const H100_0: &str = "GPU-5d6a2f3e-8b1c-4f0a-9e7d-2c4b6a8e0f13";
const H100_1: &str = "GPU-0b7e4c21-93d5-4a6f-b812-6f3d9c2e7a40";

#[test]
fn idle_gpu() {
    let set = scenario("idle", |_| {});
    let ids = ["0", H100_0];
    assert_eq!(
        set.get(
            "hostwatch_gpu_info",
            &["0", H100_0, "NVIDIA H100 80GB HBM3", "550.90.07"]
        ),
        Some(1.0)
    );
    assert_eq!(state(&set, "0", H100_0), ["ok"]);
    assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &ids), Some(0.0));
    assert_eq!(set.get("hostwatch_gpu_memory_used_bytes", &ids), Some(1_048_576.0));
    assert_eq!(
        set.get("hostwatch_gpu_clock_throttle_reasons", &["0", H100_0, "gpu_idle"]),
        Some(1.0)
    );
    assert_eq!(set.get("hostwatch_gpu_clock_hertz", &["0", H100_0, "sm"]), Some(345e6));
    assert_golden("gpu-idle", &set);
}

#[test]
fn busy_gpus() {
    let set = scenario("busy", |_| {});
    assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &["0", H100_0]), Some(0.97));
    assert_eq!(set.get("hostwatch_gpu_sm_active_ratio", &["0", H100_0]), Some(0.885));
    assert_eq!(set.get("hostwatch_gpu_gpm_supported", &["1", H100_1]), Some(1.0));
    assert_eq!(set.get("hostwatch_gpu_power_draw_watts", &["0", H100_0]), Some(612.412));
    assert_eq!(set.get("hostwatch_gpu_power_limit_watts", &["0", H100_0]), Some(700.0));
    assert_eq!(
        set.get(
            "hostwatch_gpu_pcie_throughput_bytes_per_second",
            &["0", H100_0, "receive"]
        ),
        Some(1_834_521.0 * 1024.0)
    );
    assert_eq!(
        set.get("hostwatch_gpu_nvlink_bytes_total", &["0", H100_0, "transmit"]),
        Some(7_314_866_176.0 * 1024.0)
    );
    assert_eq!(
        set.get("hostwatch_gpu_ecc_errors_total", &["0", H100_0, "corrected"]),
        Some(2.0)
    );
    // The power cap holds GPU 1's clocks down.
    assert_eq!(
        set.get("hostwatch_gpu_clock_throttle_reasons", &["1", H100_1, "sw_power_cap"]),
        Some(1.0)
    );
    // One process on both GPUs keeps one label.
    assert_eq!(
        set.get(
            "hostwatch_gpu_process_memory_used_bytes",
            &["1", H100_1, "tritonserver/48211"]
        ),
        Some(72_330_772_480.0)
    );
    assert_eq!(
        set.get(
            "hostwatch_gpu_process_utilization_ratio",
            &["0", H100_0, "python3/50233"]
        ),
        Some(0.04)
    );
    assert_golden("gpu-busy", &set);
}

#[test]
fn process_labels_are_bounded_and_shared_labels_summed() {
    let set = scenario("busy", |c| {
        c.max_processes = 0;
        c.max_names = 0;
    });
    assert_eq!(
        set.get("hostwatch_gpu_process_memory_used_bytes", &["0", H100_0, "other"]),
        Some(71_940_702_208.0 + 2_147_483_648.0)
    );
    assert_eq!(
        set.get("hostwatch_gpu_process_utilization_ratio", &["0", H100_0, "other"]),
        Some(0.93 + 0.04)
    );
    assert_eq!(set.get("hostwatch_gpu_label_overflows_total", &[]), Some(2.0));
}

#[test]
fn xid_errors_are_counted_per_code_and_repeats_show() {
    let set = scenario("xid", |_| {});
    let uuid = "GPU-a3c19f70-2e4b-4d8c-8f15-7b0e6d2a9c54";
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["0", "13"]), Some(2.0));
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["0", "31"]), Some(1.0));
    // An A100: no GPM, so no SM activity, and the marker says why.
    assert_eq!(set.get("hostwatch_gpu_gpm_supported", &["0", uuid]), Some(0.0));
    assert_eq!(set.get("hostwatch_gpu_sm_active_ratio", &["0", uuid]), None);
    assert_golden("gpu-xid", &set);
}

#[test]
fn new_xid_events_are_added_on_the_next_collection() {
    let system = std::fs::read_to_string(fixtures("xid").join("system.json")).unwrap();
    let gpu = std::fs::read_to_string(fixtures("xid").join("gpu0.json")).unwrap();
    let tree = TempTree::new(&[("system.json", &system), ("gpu0.json", &gpu)]);
    let mut collector = build(|c| c.fixtures = Some(tree.root().to_path_buf())).unwrap();
    let xid = |set: &MetricSet, code| set.get("hostwatch_gpu_xid_errors_total", &["0", code]);

    let set = collect(collector.as_mut());
    assert_eq!((xid(&set, "13"), xid(&set, "31")), (Some(2.0), Some(1.0)));
    // Nothing new: the counts stay.
    let set = collect(collector.as_mut());
    assert_eq!((xid(&set, "13"), xid(&set, "31")), (Some(2.0), Some(1.0)));
    // The same XID again, and a new one.
    tree.write("gpu0.json", &gpu.replace("[13, 31, 13]", "[13, 31, 13, 13, 43]"));
    let set = collect(collector.as_mut());
    assert_eq!(
        (xid(&set, "13"), xid(&set, "31"), xid(&set, "43")),
        (Some(3.0), Some(1.0), Some(1.0))
    );
}

#[test]
fn a_lost_gpu_is_reported_and_the_other_keeps_reporting() {
    let set = scenario("lost", |_| {});
    let l4 = "GPU-7e2d5b98-14a3-4c6e-a0f9-3d8b1c5e7f26";
    assert_eq!(state(&set, "0", l4), ["ok"]);
    assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &["0", l4]), Some(0.42));
    // Lost before it was ever read: no UUID to give.
    assert_eq!(state(&set, "1", ""), ["lost"]);
    assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &["1", ""]), None);
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["1", "79"]), Some(1.0));
    // An L4 has no NVLink.
    assert_eq!(set.get("hostwatch_gpu_nvlink_bytes_total", &["0", l4, "receive"]), None);
    assert_golden("gpu-lost", &set);
}

#[test]
fn a_gpu_lost_while_running_keeps_its_labels_and_comes_back() {
    let system = std::fs::read_to_string(fixtures("idle").join("system.json")).unwrap();
    let ok = std::fs::read_to_string(fixtures("idle").join("gpu0.json")).unwrap();
    let lost = std::fs::read_to_string(fixtures("lost").join("gpu1.json")).unwrap();
    let tree = TempTree::new(&[("system.json", &system), ("gpu0.json", &ok)]);
    let mut collector = build(|c| c.fixtures = Some(tree.root().to_path_buf())).unwrap();
    assert_eq!(state(&collect(collector.as_mut()), "0", H100_0), ["ok"]);

    tree.write("gpu0.json", &lost);
    let set = collect(collector.as_mut());
    assert_eq!(state(&set, "0", H100_0), ["lost"]);
    assert_eq!(
        set.get(
            "hostwatch_gpu_info",
            &["0", H100_0, "NVIDIA H100 80GB HBM3", "550.90.07"]
        ),
        Some(1.0)
    );
    assert_eq!(set.get("hostwatch_gpu_memory_used_bytes", &["0", H100_0]), None);
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["0", "79"]), Some(1.0));

    // After a reset: a new capture, whose event list starts afresh.
    tree.write("gpu0.json", &ok);
    let set = collect(collector.as_mut());
    assert_eq!(state(&set, "0", H100_0), ["ok"]);
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["0", "79"]), Some(1.0));
}

#[test]
fn a_broken_fixture_fails_the_collection_but_not_the_other_gpu() {
    let system = std::fs::read_to_string(fixtures("busy").join("system.json")).unwrap();
    let gpu0 = std::fs::read_to_string(fixtures("busy").join("gpu0.json")).unwrap();
    let tree = TempTree::new(&[
        ("system.json", &system),
        ("gpu0.json", &gpu0),
        ("gpu1.json", "{\"captured_from\": \"test\",\n \"utilisation\": 3}\n"),
    ]);
    let mut collector = build(|c| c.fixtures = Some(tree.root().to_path_buf())).unwrap();
    let mut set = MetricSet::default();
    let error = collector.collect(&mut set).err().map(|e| e.to_string()).unwrap();
    assert!(
        error.contains("gpu1.json line 2: unknown field `utilisation`"),
        "{error}"
    );
    assert_eq!(state(&set, "1", ""), ["error"]);
    assert_eq!(state(&set, "0", H100_0), ["ok"]);
    assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &["0", H100_0]), Some(0.97));
}

#[test]
fn throttle_bits_this_agent_does_not_know_show_as_other() {
    let system = std::fs::read_to_string(fixtures("idle").join("system.json")).unwrap();
    let gpu = std::fs::read_to_string(fixtures("idle").join("gpu0.json"))
        .unwrap()
        .replace("0x0000000000000001", "0x0000000000010044");
    let tree = TempTree::new(&[("system.json", &system), ("gpu0.json", &gpu)]);
    let set = collect(
        build(|c| c.fixtures = Some(tree.root().to_path_buf()))
            .unwrap()
            .as_mut(),
    );
    let reason = |r| set.get("hostwatch_gpu_clock_throttle_reasons", &["0", H100_0, r]);
    assert_eq!(
        (
            reason("gpu_idle"),
            reason("sw_power_cap"),
            reason("hw_thermal_slowdown"),
            reason("other")
        ),
        (Some(0.0), Some(1.0), Some(1.0), Some(1.0))
    );

    tree.write("gpu0.json", &gpu.replace("0x0000000000010044", "44"));
    let mut collector = build(|c| c.fixtures = Some(tree.root().to_path_buf())).unwrap();
    let error = collector
        .collect(&mut MetricSet::default())
        .err()
        .map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("not a 0x-prefixed hexadecimal mask")));
}

#[test]
fn host_without_nvml() {
    // The fixture of a host where NVML could not start.
    let reason = build(|c| c.fixtures = Some(fixtures("no-nvml")))
        .err()
        .map(|e| e.reason);
    assert_eq!(
        reason.map(|r| r.replace(env!("CARGO_MANIFEST_DIR"), "$COLLECTORS")),
        Some(
            "GPU fixtures $COLLECTORS/../tests/fixtures/gpu/no-nvml: NVML unavailable on the captured host: NVML_ERROR_LIBRARY_NOT_FOUND"
                .to_owned()
        )
    );
    // The real loader, pointed at a library that is not there: what every
    // host without NVIDIA's driver gets.
    let reason = build(|c| c.library = PathBuf::from("/nonexistent/libnvidia-ml.so.1"))
        .err()
        .map(|e| e.reason);
    assert_eq!(
        reason.as_deref(),
        Some(
            "cannot load the NVML library: /nonexistent/libnvidia-ml.so.1: cannot open shared object file: No such file or directory"
        )
    );
    let reason = build(|c| c.fixtures = Some(fixtures("nonexistent")))
        .err()
        .map(|e| e.reason);
    assert!(reason.is_some_and(|r| r.ends_with("system.json: No such file or directory (os error 2)")));
}

/// A backend whose GPU 1 blocks in its read until the test opens the gate.
#[derive(Debug, Default)]
struct Hanging {
    gate: Mutex<bool>,
    opened: Condvar,
    reads: [AtomicUsize; 2],
}

impl Hanging {
    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

struct HangingReader<'a> {
    backend: &'a Hanging,
    index: u32,
}

impl Reader for HangingReader<'_> {
    fn read(&mut self, reading: &mut Reading) -> Result<(), ReadError> {
        let read = self.backend.reads[self.index as usize].fetch_add(1, Ordering::SeqCst);
        reading.uuid.push_str(&format!("GPU-{}", self.index));
        reading.utilization = Some(0.5);
        if self.index == 1 {
            if read == 0 {
                // The hung call's XID arrives with its late answer.
                reading.xids.push(119);
            }
            let mut open = self.backend.gate.lock().unwrap();
            while !*open {
                open = self.backend.opened.wait(open).unwrap();
            }
        }
        reading.processes.push(Process {
            pid: 100 + self.index,
            name: "python3".into(),
            memory_used_bytes: Some(1),
            sm_utilization: Some(0.1),
        });
        Ok(())
    }
}

impl Backend for Hanging {
    fn count(&self) -> u32 {
        2
    }

    fn driver_version(&self) -> &str {
        "test"
    }

    fn serve(&self, index: u32, serve: &mut dyn FnMut(&mut dyn Reader)) {
        serve(&mut HangingReader { backend: self, index });
    }
}

#[test]
fn a_hung_gpu_times_out_alone_and_is_never_asked_twice() {
    let backend = Arc::new(Hanging::default());
    let config = Config {
        device_timeout: Interval::parse("100ms").ok(),
        ..Config::default()
    };
    let mut gpu = Gpu::with_backend(backend.clone(), &config, Duration::from_secs(1));

    for round in 0..3 {
        let start = Instant::now();
        let mut set = MetricSet::default();
        gpu.collect(&mut set).unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_millis(600), "round {round} took {elapsed:?}");
        assert_eq!(state(&set, "0", "GPU-0"), ["ok"], "round {round}");
        assert_eq!(set.get("hostwatch_gpu_utilization_ratio", &["0", "GPU-0"]), Some(0.5));
        // Never answered, so no UUID is known yet.
        assert_eq!(state(&set, "1", ""), ["timeout"], "round {round}");
    }
    assert_eq!(backend.reads[0].load(Ordering::SeqCst), 3);
    assert_eq!(
        backend.reads[1].load(Ordering::SeqCst),
        1,
        "one hung call, not one per collection"
    );
    let mut set = MetricSet::default();
    backend.open();
    // The late answer is dropped but for its XID; a fresh request follows.
    std::thread::sleep(Duration::from_millis(50));
    gpu.collect(&mut set).unwrap();
    assert_eq!(set.get("hostwatch_gpu_xid_errors_total", &["1", "119"]), Some(1.0));
    assert_eq!(state(&set, "1", "GPU-1"), ["ok"]);
    assert_eq!(backend.reads[1].load(Ordering::SeqCst), 2);
    assert_eq!(
        set.get(
            "hostwatch_gpu_process_memory_used_bytes",
            &["1", "GPU-1", "python3/101"]
        ),
        Some(1.0)
    );
}

#[test]
fn device_timeout_stays_under_the_collectors_timeout() {
    let backend = Arc::new(Hanging::default());
    let mut config = Config::default();
    assert_eq!(
        Gpu::with_backend(backend.clone(), &config, Duration::from_secs(1)).device_timeout,
        Duration::from_millis(500)
    );
    config.device_timeout = Interval::parse("5s").ok();
    assert_eq!(
        Gpu::with_backend(backend.clone(), &config, Duration::from_secs(2)).device_timeout,
        Duration::from_secs(1)
    );
    config.device_timeout = Interval::parse("200ms").ok();
    assert_eq!(
        Gpu::with_backend(backend.clone(), &config, Duration::from_secs(2)).device_timeout,
        Duration::from_millis(200)
    );
    backend.open();
}

#[test]
fn config_keys() {
    let config: CollectorsConfig = toml::from_str(
        "[gpu]\nlibrary = \"/usr/lib64/libnvidia-ml.so.1\"\ndevice_timeout = \"300ms\"\nmax_processes = 8\nmax_names = 4\n",
    )
    .unwrap();
    assert_eq!(config.gpu.library, PathBuf::from("/usr/lib64/libnvidia-ml.so.1"));
    assert_eq!(
        config.gpu.device_timeout.map(Interval::get),
        Some(Duration::from_millis(300))
    );
    assert_eq!((config.gpu.max_processes, config.gpu.max_names), (8, 4));
    assert!(toml::from_str::<CollectorsConfig>("[gpu]\ntimeout_per_gpu = \"1s\"\n").is_err());
}
