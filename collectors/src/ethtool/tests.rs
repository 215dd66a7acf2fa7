//! Tests of the ethtool collector: fixture scenarios against golden output,
//! resets, changing statistic sets, bad input, and the ioctl backend against
//! `ethtool -S` on real interfaces (root only, for the veth part).

use std::path::PathBuf;
use std::process::Command;

use super::*;
use crate::config::CollectorsConfig;
use crate::testing::{TempTree, assert_golden};

fn fixtures(scenario: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/ethtool")
        .join(scenario)
}

fn config(edit: impl FnOnce(&mut Config)) -> CollectorsConfig {
    let mut config = CollectorsConfig::default();
    edit(&mut config.ethtool);
    config
}

fn build(config: CollectorsConfig) -> Box<dyn Collector> {
    (SPEC.build)(&Context::new(Default::default(), config)).expect("builds")
}

fn collect(collector: &mut dyn Collector) -> MetricSet {
    let mut set = MetricSet::default();
    collector.collect(&mut set).expect("collects");
    set
}

fn scenario(name: &str, edit: impl FnOnce(&mut Config)) -> MetricSet {
    collect(
        build(config(|c| {
            c.fixtures = Some(fixtures(name));
            edit(c);
        }))
        .as_mut(),
    )
}

#[test]
fn aws_documentation_example() {
    let set = scenario("aws-doc", |_| {});
    assert_eq!(
        set.get("hostwatch_ena_conntrack_allowance_available", &["eth0"]),
        Some(450_878.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", "linklocal"]),
        Some(0.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_allowance_counters_supported", &["eth0"]),
        Some(1.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_driver_events_total", &["eth0", "interface_up"]),
        Some(1.0)
    );
    // Per-queue statistics are off by default.
    assert_eq!(set.get("hostwatch_ena_queue_statistic", &["eth0", "0", "tx_cnt"]), None);
    assert_golden("ethtool-aws-doc", &set);
}

#[test]
fn per_queue_statistics_on_request() {
    let set = scenario("aws-doc", |c| c.per_queue = true);
    assert_eq!(
        set.get("hostwatch_ena_queue_statistic", &["eth0", "0", "tx_cnt"]),
        Some(4329.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_queue_statistic", &["eth0", "0", "tx_queue_stop"]),
        Some(0.0)
    );
}

#[test]
fn ena_express() {
    let set = scenario("ena-express", |_| {});
    assert_eq!(set.get("hostwatch_ena_srd_mode", &["eth0"]), Some(1.0));
    assert_eq!(
        set.get("hostwatch_ena_srd_eligible_transmitted_packets_total", &["eth0"]),
        Some(0.0)
    );
    assert_golden("ethtool-ena-express", &set);
}

#[test]
fn old_driver_says_counters_are_unsupported() {
    let set = scenario("old-driver", |_| {});
    assert_eq!(
        set.get("hostwatch_ena_allowance_counters_supported", &["eth0"]),
        Some(0.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", "bw_in"]),
        None
    );
    assert_eq!(
        set.get("hostwatch_ena_driver_info", &["eth0", "ena", "1.5.0K", ""]),
        Some(1.0)
    );
    assert_golden("ethtool-old-driver", &set);
}

#[test]
fn other_drivers_only_raw_and_only_on_request() {
    let quiet = scenario("virtio", |_| {});
    assert_eq!(
        quiet
            .families()
            .filter(|f| f.desc().name.starts_with("hostwatch_ena_"))
            .count(),
        0
    );
    assert_eq!(quiet.get("hostwatch_ethtool_statistic", &["eth0", "rx_kicks"]), None);
    let raw = scenario("virtio", |c| c.raw_stats = Pattern::new("rx_.*|tx_kicks").ok());
    assert_eq!(
        raw.get("hostwatch_ethtool_statistic", &["eth0", "rx_kicks"]),
        Some(1274.0)
    );
    assert_eq!(
        raw.get("hostwatch_ethtool_statistic", &["eth0", "tx_kicks"]),
        Some(3496.0)
    );
    assert_eq!(raw.get("hostwatch_ethtool_statistic", &["eth0", "tx0_kicks"]), None);
    assert_golden("ethtool-virtio-raw", &raw);
}

#[test]
fn malformed_lines_are_counted_and_other_interfaces_still_report() {
    let set = scenario("malformed", |_| {});
    // No colon, "twelve", over-long name, empty name, 2^64, and one duplicate.
    assert_eq!(
        set.get("hostwatch_ethtool_rejected_statistics_total", &["eth0"]),
        Some(6.0)
    );
    // The first of the duplicates wins.
    assert_eq!(
        set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", "bw_in"]),
        Some(12.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", "bw_out"]),
        None
    );
    assert_eq!(
        set.get("hostwatch_ena_allowance_counters_supported", &["eth0"]),
        Some(0.0)
    );
    assert_eq!(
        set.get("hostwatch_ethtool_rejected_statistics_total", &["eth1"]),
        Some(0.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_conntrack_allowance_available", &["eth1"]),
        Some(450_878.0)
    );
}

const DRIVER: &str = "driver: ena\nversion: 2.10.0g\nfirmware-version: \n";

fn ena_stats(bw_in: u64, pps: u64, extra: &str) -> String {
    format!(
        "NIC statistics:\n     tx_timeout: 0\n     bw_in_allowance_exceeded: {bw_in}\n     bw_out_allowance_exceeded: 0\n     pps_allowance_exceeded: {pps}\n     conntrack_allowance_exceeded: 0\n     linklocal_allowance_exceeded: 0\n{extra}"
    )
}

#[test]
fn counter_resets_keep_totals_monotonic_and_are_counted_once() {
    let tree = TempTree::new(&[("eth0/driver", DRIVER), ("eth0/statistics", &ena_stats(100, 40, ""))]);
    let mut collector = build(config(|c| c.fixtures = Some(tree.root().to_path_buf())));
    let exceeded =
        |set: &MetricSet, allowance| set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", allowance]);

    let set = collect(collector.as_mut());
    assert_eq!(
        (exceeded(&set, "bw_in"), exceeded(&set, "pps")),
        (Some(100.0), Some(40.0))
    );

    tree.write("eth0/statistics", &ena_stats(150, 45, ""));
    let set = collect(collector.as_mut());
    assert_eq!(
        (exceeded(&set, "bw_in"), exceeded(&set, "pps")),
        (Some(150.0), Some(45.0))
    );
    assert_eq!(set.get("hostwatch_ena_resets_total", &["eth0"]), Some(0.0));

    // Device reset: every counter back near zero.
    tree.write("eth0/statistics", &ena_stats(3, 1, ""));
    let set = collect(collector.as_mut());
    assert_eq!(
        (exceeded(&set, "bw_in"), exceeded(&set, "pps")),
        (Some(153.0), Some(46.0))
    );
    assert_eq!(set.get("hostwatch_ena_resets_total", &["eth0"]), Some(1.0));

    tree.write("eth0/statistics", &ena_stats(10, 1, ""));
    let set = collect(collector.as_mut());
    assert_eq!(exceeded(&set, "bw_in"), Some(160.0));
    assert_eq!(set.get("hostwatch_ena_resets_total", &["eth0"]), Some(1.0));
}

/// The shaper's congestion signals: reset-aware totals per kind, summed
/// over interfaces.
#[test]
fn traffic_allowance_drops_reach_the_host_facts() {
    let tree = TempTree::new(&[
        ("eth0/driver", DRIVER),
        ("eth0/statistics", &ena_stats(100, 40, "")),
        ("eth1/driver", DRIVER),
        ("eth1/statistics", &ena_stats(5, 0, "")),
    ]);
    let context = Context::new(
        Default::default(),
        config(|c| c.fixtures = Some(tree.root().to_path_buf())),
    );
    let mut collector = (SPEC.build)(&context).expect("builds");
    collect(collector.as_mut());
    let congestion = context.facts.congestion();
    assert_eq!((congestion.bw_in_exceeded, congestion.pps_exceeded), (105, 40));
    // A reset of eth0 does not make the signal go back.
    tree.write("eth0/statistics", &ena_stats(2, 40, ""));
    collect(collector.as_mut());
    assert_eq!(context.facts.congestion().bw_in_exceeded, 107);
}

#[test]
fn a_statistics_set_that_changes_size_is_followed() {
    let tree = TempTree::new(&[
        ("eth0/driver", DRIVER),
        ("eth0/statistics", &ena_stats(5, 0, "     queue_0_tx_cnt: 10\n")),
    ]);
    let mut collector = build(config(|c| {
        c.fixtures = Some(tree.root().to_path_buf());
        c.per_queue = true;
    }));
    let set = collect(collector.as_mut());
    assert_eq!(set.get("hostwatch_ena_queue_statistic", &["eth0", "1", "tx_cnt"]), None);

    // Two more queues, and conntrack_allowance_available inserted before the
    // allowance counters: every position after it moves.
    tree.write(
        "eth0/statistics",
        "NIC statistics:\n     tx_timeout: 0\n     conntrack_allowance_available: 900\n     bw_in_allowance_exceeded: 6\n     bw_out_allowance_exceeded: 0\n     pps_allowance_exceeded: 0\n     conntrack_allowance_exceeded: 0\n     linklocal_allowance_exceeded: 0\n     queue_0_tx_cnt: 11\n     queue_1_tx_cnt: 7\n     queue_2_tx_cnt: 3\n",
    );
    let set = collect(collector.as_mut());
    assert_eq!(
        set.get("hostwatch_ena_allowance_exceeded_packets_total", &["eth0", "bw_in"]),
        Some(6.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_conntrack_allowance_available", &["eth0"]),
        Some(900.0)
    );
    assert_eq!(
        set.get("hostwatch_ena_queue_statistic", &["eth0", "2", "tx_cnt"]),
        Some(3.0)
    );
    assert_eq!(set.get("hostwatch_ena_resets_total", &["eth0"]), Some(0.0));
}

#[test]
fn interfaces_are_selected_by_device_or_name() {
    let tree = TempTree::new(&[
        ("eth0/driver", DRIVER),
        ("eth0/statistics", &ena_stats(1, 0, "")),
        ("eth1/driver", DRIVER),
        ("eth1/statistics", &ena_stats(2, 0, "")),
    ]);
    let set = collect(
        build(config(|c| {
            c.fixtures = Some(tree.root().to_path_buf());
            c.exclude = Pattern::new("eth1").ok();
        }))
        .as_mut(),
    );
    assert!(set.get("hostwatch_ena_resets_total", &["eth0"]).is_some());
    assert!(set.get("hostwatch_ena_resets_total", &["eth1"]).is_none());

    // An interface that disappears is dropped; a failing one does not hide the others.
    let mut collector = build(config(|c| c.fixtures = Some(tree.root().to_path_buf())));
    collect(collector.as_mut());
    std::fs::remove_file(tree.root().join("eth1/statistics")).expect("remove");
    let mut set = MetricSet::default();
    let error = collector.collect(&mut set).expect_err("eth1 cannot be read");
    assert_eq!(error.kind(), "io");
    assert!(set.get("hostwatch_ena_resets_total", &["eth0"]).is_some());
}

#[test]
fn missing_fixture_directory_is_unavailable() {
    let error = (SPEC.build)(&Context::new(
        Default::default(),
        config(|c| c.fixtures = Some("/nonexistent".into())),
    ))
    .err();
    assert!(error.is_some_and(|e| e.reason == "fixture directory /nonexistent does not exist"));
}

/// `ethtool -S IF` as (name, value) pairs.
fn ethtool_s(interface: &str, netns: Option<&str>) -> Vec<(String, u64)> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ethtool", "-S", interface]);
            c
        }
        None => {
            let mut c = Command::new("ethtool");
            c.args(["-S", interface]);
            c
        }
    };
    let output = command
        .output()
        .expect("ethtool runs (packaging/install-deps.sh --test installs it)");
    assert!(
        output.status.success(),
        "ethtool -S {interface}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.trim().rsplit_once(':')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

fn ioctl_read(interface: &str) -> Stats {
    let mut backend = IoctlBackend::new(PathBuf::from("/sys/class/net")).expect("socket");
    let mut stats = Stats::default();
    match backend.read(interface, &mut stats) {
        Ok(()) => stats,
        Err(ReadError::Unsupported) => panic!("{interface}: no statistics"),
        Err(ReadError::Failed(error)) => panic!("{interface}: {error}"),
    }
}

#[test]
fn ioctl_matches_ethtool_on_eth0() {
    if !std::path::Path::new("/sys/class/net/eth0").exists() {
        eprintln!("skipped: this host has no eth0");
        return;
    }
    let ours = ioctl_read("eth0");
    let theirs = ethtool_s("eth0", None);
    let names: Vec<&str> = theirs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(ours.names.iter().map(String::as_str).collect::<Vec<_>>(), names);
    // Read first, ours can only be behind ethtool's on live counters.
    for ((name, value), ours) in theirs.iter().zip(&ours.values) {
        assert!(ours <= value, "{name}: ours {ours} > ethtool's {value}");
    }
    assert!(!ours.driver.is_empty());
}

/// Creates a namespace with a veth pair (one end in it) and removes it on drop.
struct VethPair {
    netns: String,
    host_end: String,
}

impl VethPair {
    fn new() -> Self {
        let id = std::process::id();
        let pair = Self {
            netns: format!("hwtest{id}"),
            host_end: format!("hwt{id}a"),
        };
        let run = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip runs");
            assert!(status.success(), "ip {args:?}");
        };
        run(&["netns", "add", &pair.netns]);
        run(&[
            "link",
            "add",
            &pair.host_end,
            "type",
            "veth",
            "peer",
            "name",
            "hwtpeer",
            "netns",
            &pair.netns,
        ]);
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer and with it the pair.
        let quiet = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
        };
        let _ = quiet(&["netns", "del", &self.netns]);
        // Normally gone with the namespace; this covers a half-made pair.
        let _ = quiet(&["link", "del", &self.host_end]);
    }
}

#[test]
fn ioctl_matches_ethtool_on_a_veth_pair() {
    // Root or not: /proc/self/status gives the effective uid.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        eprintln!("skipped: creating a network namespace and a veth pair needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        return;
    }
    let pair = VethPair::new();
    let ours = ioctl_read(&pair.host_end);
    assert_eq!(ours.driver, "veth");
    let theirs = ethtool_s(&pair.host_end, None);
    let ours: Vec<(String, u64)> = ours.names.iter().cloned().zip(ours.values.iter().copied()).collect();
    assert_eq!(ours, theirs, "an idle veth: names and values identical");

    // The collector selects it by name (a veth has no device) and exports it raw.
    let set = collect(
        build(config(|c| {
            c.include = Pattern::new(&pair.host_end).ok();
            c.raw_stats = Pattern::new("peer_ifindex").ok();
        }))
        .as_mut(),
    );
    let peer_ifindex = theirs.iter().find(|(n, _)| n == "peer_ifindex").map(|(_, v)| *v as f64);
    assert_eq!(
        set.get("hostwatch_ethtool_statistic", &[&pair.host_end, "peer_ifindex"]),
        peer_ifindex
    );
    // The default selection (interfaces with a device) leaves it out.
    let set = collect(build(CollectorsConfig::default()).as_mut());
    assert_eq!(
        set.get("hostwatch_ethtool_rejected_statistics_total", &[&pair.host_end]),
        None
    );
}
