//! The golden end-to-end test: the real binary on a fixture root, scraped over
//! HTTP, compared with `tests/golden/basic.prom`. Series that depend on the
//! running process (its own cost, durations, build revision) are filtered out.
//! `UPDATE_GOLDEN=1` rewrites the golden file. `promtool check metrics` must pass.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{Agent, repo_root, require_program};

/// Families whose values differ from run to run.
const VOLATILE: [&str; 3] = [
    "process_",
    "hostwatch_collector_duration_seconds",
    "hostwatch_build_info",
];

fn deterministic(exposition: &str) -> String {
    let mut out = String::new();
    for line in exposition.lines() {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        if !VOLATILE.iter().any(|prefix| name.starts_with(prefix)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn basic_fixture_matches_golden_exposition() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let exposition = agent.metrics();
    let actual = deterministic(&exposition);
    let golden = repo_root().join("tests/golden/basic.prom");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file; run with UPDATE_GOLDEN=1 to create it");
    assert_eq!(actual, expected, "exposition differs from {}", golden.display());

    // The full exposition, volatile series included, passes promtool's linter.
    let promtool = require_program("promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn openmetrics_and_gzip_on_request() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let response = support::get(
        agent.addr,
        "/metrics",
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = response.text();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE hostwatch_cpu_seconds counter\n"), "{text}");

    let response = support::get(agent.addr, "/metrics", &[("Accept-Encoding", "gzip, deflate")]);
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&response.body[..]), &mut plain).unwrap();
    assert!(
        plain.contains("hostwatch_cpu_seconds_total{cpu=\"1\",mode=\"system\"} 17.55\n"),
        "{plain}"
    );
}

/// The README's metric table must name every family the agent exports.
#[test]
fn readme_lists_every_metric() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let missing: Vec<String> = agent
        .metrics()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .map(str::to_owned)
        .collect();
    assert!(missing.is_empty(), "README.md does not list: {missing:?}");
}
