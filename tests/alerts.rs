//! The alert rules in `packaging/alerts/` (`hostwatch.rules.yml`, and for
//! their hosts `gpu.rules.yml`, `python.rules.yml` and `stalls.rules.yml`):
//! promtool accepts them, their unit tests pass (firing and non-firing cases
//! of every alert), and they name only metric families the agent exports.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use regex::Regex;
use support::{repo_root, require_program};

/// Each rule file and a family its expressions must use (so the name scan is
/// known to see them).
const RULE_FILES: [(&str, &str); 4] = [
    (
        "hostwatch.rules.yml",
        "rate(hostwatch_ena_allowance_exceeded_packets_total[5m])",
    ),
    ("gpu.rules.yml", "increase(hostwatch_gpu_xid_errors_total[20m])"),
    ("python.rules.yml", "rate(hostwatch_python_gil_wait_seconds_total[5m])"),
    ("stalls.rules.yml", "rate(hostwatch_mmap_lock_wait_seconds_total[1m])"),
];

fn rules_file(name: &str) -> PathBuf {
    repo_root().join("packaging/alerts").join(name)
}

/// The test file beside a rule file: `X.rules.yml` has `X.rules.test.yml`.
fn tests_file(name: &str) -> PathBuf {
    rules_file(&name.replace(".rules.yml", ".rules.test.yml"))
}

/// Runs `promtool ARGS`, failing the test with promtool's own output.
fn promtool(args: &[&str]) {
    let output = Command::new(require_program("promtool")).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_checks_the_rules() {
    for (name, _) in RULE_FILES {
        promtool(&["check", "rules", rules_file(name).to_str().unwrap()]);
    }
}

#[test]
fn promtool_unit_tests_pass() {
    for (name, _) in RULE_FILES {
        promtool(&["test", "rules", tests_file(name).to_str().unwrap()]);
    }
}

/// Exported families that no golden file under `tests/golden/` shows, which
/// the rules may use all the same. The list shrinks as golden files cover
/// them: a name that appears in one must be removed here
/// (`allowlist_holds_only_names_missing_from_golden` fails until it is). The
/// ENA families left it when the ethtool collector's golden files landed.
const NOT_IN_GOLDEN: &[&str] = &[
    // Filtered out of basic.prom as volatile (tests/golden.rs).
    "hostwatch_build_info",
    "hostwatch_collector_duration_seconds",
    // The instance collector: tests/instance.rs runs it against a fake IMDS.
    "hostwatch_instance_info",
    "hostwatch_instance_network_baseline_bits_per_second",
    // The headroom collector.
    "hostwatch_net_headroom_peak_bits_per_second",
    "hostwatch_net_headroom_ratio",
    // The eBPF collectors need root and a live host: tests/python_gil.rs and
    // tests/stalls.rs read these from a running agent.
    "hostwatch_python_gil_wait_seconds_total",
    "hostwatch_python_gil_wait_duration_seconds",
    "hostwatch_python_target_info",
    "hostwatch_python_target_events_total",
    "hostwatch_mmap_lock_wait_seconds_total",
    "hostwatch_smaps_reads_total",
    "hostwatch_kernel_hotspot_samples_total",
    "hostwatch_kernel_hotspot_sample_frequency_hertz",
];

/// The `hostwatch_*` identifiers in `text` that are not in `known`, with their
/// line numbers.
fn unknown_names(text: &str, known: &BTreeSet<String>) -> Vec<(usize, String)> {
    let identifier = Regex::new(r"hostwatch_[a-z_]+").unwrap();
    text.lines()
        .enumerate()
        .flat_map(|(index, line)| identifier.find_iter(line).map(move |m| (index + 1, m.as_str())))
        .filter(|(_, name)| !known.contains(*name))
        .map(|(line, name)| (line, name.to_owned()))
        .collect()
}

fn known_families() -> BTreeSet<String> {
    let mut known = support::golden_metric_names();
    known.extend(NOT_IN_GOLDEN.iter().map(|name| (*name).to_owned()));
    known
}

/// Every metric name in the rule file is an exported family. The whole file is
/// scanned, a superset of the expressions: the query templates in descriptions
/// and the runbooks' pointers must name real families too. Alert names
/// (`HostwatchEna...`), group names (`hostwatch-ena`) and recording rules
/// (`hostwatch:...`) do not match the pattern.
#[test]
fn rules_use_only_exported_families() {
    let known = known_families();
    for (name, expression) in RULE_FILES {
        let rules = std::fs::read_to_string(rules_file(name)).unwrap();
        assert!(
            rules.contains(expression),
            "the scan must see the expressions of {name}"
        );
        let unknown = unknown_names(&rules, &known);
        assert!(
            unknown.is_empty(),
            "{name} names families the agent does not export (line, name): {unknown:?}"
        );
    }
}

/// Recording rules used in expressions are defined in the same file (each
/// file stands alone in `rule_files`).
#[test]
fn recording_rules_used_are_defined() {
    let recording_rule = Regex::new(r"hostwatch:[a-z0-9_:]+").unwrap();
    let mut seen = 0;
    for (name, _) in RULE_FILES {
        let rules = std::fs::read_to_string(rules_file(name)).unwrap();
        let recorded: BTreeSet<&str> = rules
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- record: "))
            .map(str::trim)
            .collect();
        let used: BTreeSet<&str> = recording_rule.find_iter(&rules).map(|m| m.as_str()).collect();
        seen += used.len();
        let undefined: Vec<&&str> = used.difference(&recorded).collect();
        assert!(
            undefined.is_empty(),
            "recording rules used but not defined in {name}: {undefined:?}"
        );
    }
    assert!(seen > 0, "the scan found no recording rule in any file");
}

#[test]
fn the_name_check_catches_a_misspelled_family() {
    let known = known_families();
    let text = "expr: rate(hostwatch_ena_allowance_exceeded_packets_total[5m]) > 0\n\
                expr: hostwatch_ena_conntrack_allowance_availabe < 10\n";
    assert_eq!(
        unknown_names(text, &known),
        vec![(2, "hostwatch_ena_conntrack_allowance_availabe".to_owned())]
    );
}

#[test]
fn allowlist_holds_only_names_missing_from_golden() {
    let golden = support::golden_metric_names();
    let landed: Vec<&&str> = NOT_IN_GOLDEN.iter().filter(|name| golden.contains(**name)).collect();
    assert!(
        landed.is_empty(),
        "now in tests/golden/, remove from NOT_IN_GOLDEN in tests/alerts.rs: {landed:?}"
    );
}

/// The allowlist names documented families, not typos: README's metric table
/// lists each (and `readme_lists_every_metric` keeps that table honest).
#[test]
fn allowlist_names_documented_families() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let undocumented: Vec<&&str> = NOT_IN_GOLDEN
        .iter()
        .filter(|name| !readme.contains(&format!("| `{name}`")) && !readme.contains(&format!(", `{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in README's metric table: {undocumented:?}"
    );
}

/// README's Alerts section names every alert.
#[test]
fn readme_lists_every_alert() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for ((name, _), at_least) in RULE_FILES.iter().zip([8, 4]) {
        let rules = std::fs::read_to_string(rules_file(name)).unwrap();
        let alerts: BTreeSet<&str> = rules
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- alert: "))
            .map(str::trim)
            .collect();
        assert!(alerts.len() >= at_least, "{name}: {alerts:?}");
        let missing: Vec<&&str> = alerts
            .iter()
            .filter(|alert| !readme.contains(&format!("`{alert}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md does not list the alerts {missing:?} of {name}"
        );
    }
}
