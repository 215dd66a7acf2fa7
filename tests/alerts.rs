//! The alert rules in `packaging/alerts/`: promtool accepts them, their unit
//! tests pass (firing and non-firing cases of every alert), and they name only
//! metric families the agent exports.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use regex::Regex;
use support::{repo_root, require_program};

fn rules_file() -> PathBuf {
    repo_root().join("packaging/alerts/hostwatch.rules.yml")
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
    promtool(&["check", "rules", rules_file().to_str().unwrap()]);
}

#[test]
fn promtool_unit_tests_pass() {
    let tests = repo_root().join("packaging/alerts/hostwatch.rules.test.yml");
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}

/// Families the rules may use that the ENA, instance and headroom collectors
/// are about to export but `tests/golden/basic.prom` does not show yet. This
/// list shrinks as collectors land: a name that appears in the golden file
/// must be removed here (`pending_families_are_not_in_golden` fails until it is).
const PENDING_FAMILIES: &[&str] = &[
    "hostwatch_ena_allowance_exceeded_packets_total",
    "hostwatch_ena_conntrack_allowance_available",
    "hostwatch_ena_allowance_counters_supported",
    "hostwatch_ena_driver_info",
    "hostwatch_ena_resets_total",
    "hostwatch_ena_driver_events_total",
    "hostwatch_instance_info",
    "hostwatch_instance_network_baseline_bits_per_second",
    "hostwatch_net_headroom_peak_bits_per_second",
    "hostwatch_net_headroom_ratio",
];

/// Exported families the golden file cannot show: filtered out there as
/// volatile (see tests/golden.rs), or present only while a collector is down.
const OUTSIDE_GOLDEN: &[&str] = &[
    "hostwatch_build_info",
    "hostwatch_collector_duration_seconds",
    "hostwatch_collector_unavailable_info",
];

/// Metric names in the golden exposition: `# TYPE` names and sample names.
fn golden_families() -> BTreeSet<String> {
    let golden = std::fs::read_to_string(repo_root().join("tests/golden/basic.prom")).unwrap();
    let names: BTreeSet<String> = golden
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains("hostwatch_collector_up"),
        "golden file without hostwatch_collector_up: {names:?}"
    );
    names
}

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
    let mut known = golden_families();
    known.extend(
        PENDING_FAMILIES
            .iter()
            .chain(OUTSIDE_GOLDEN)
            .map(|name| (*name).to_owned()),
    );
    known
}

/// Every metric name in the rule file is an exported family. The whole file is
/// scanned, a superset of the expressions: the query templates in descriptions
/// and the runbooks' pointers must name real families too. Alert names
/// (`HostwatchEna...`), group names (`hostwatch-ena`) and recording rules
/// (`hostwatch:...`) do not match the pattern.
#[test]
fn rules_use_only_exported_families() {
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let known = known_families();
    assert!(
        rules.contains("rate(hostwatch_ena_allowance_exceeded_packets_total[5m])"),
        "the scan must see the expressions"
    );
    let unknown = unknown_names(&rules, &known);
    assert!(
        unknown.is_empty(),
        "hostwatch.rules.yml names families the agent does not export (line, name): {unknown:?}"
    );
}

/// Recording rules used in expressions are defined in the file.
#[test]
fn recording_rules_used_are_defined() {
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let recorded: BTreeSet<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .map(str::trim)
        .collect();
    let used: BTreeSet<&str> = Regex::new(r"hostwatch:[a-z0-9_:]+")
        .unwrap()
        .find_iter(&rules)
        .map(|m| m.as_str())
        .collect();
    assert!(!used.is_empty(), "no recording rule used");
    let undefined: Vec<&&str> = used.difference(&recorded).collect();
    assert!(
        undefined.is_empty(),
        "recording rules used but not defined: {undefined:?}"
    );
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
fn pending_families_are_not_in_golden() {
    let golden = golden_families();
    let landed: Vec<&&str> = PENDING_FAMILIES.iter().filter(|name| golden.contains(**name)).collect();
    assert!(
        landed.is_empty(),
        "now in tests/golden/basic.prom, remove from PENDING_FAMILIES in tests/alerts.rs: {landed:?}"
    );
}

/// README's Alerts section names every alert.
#[test]
fn readme_lists_every_alert() {
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    let missing: Vec<&&str> = alerts
        .iter()
        .filter(|alert| !readme.contains(&format!("`{alert}`")))
        .collect();
    assert!(missing.is_empty(), "README.md does not list the alerts {missing:?}");
}
