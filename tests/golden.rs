//! The golden end-to-end test: the real binary on a fixture root, scraped over
//! HTTP, compared with `tests/golden/basic.prom`. Series that depend on the
//! running process (its own cost, durations, build revision) are filtered out.
//! `UPDATE_GOLDEN=1` rewrites the golden file. `promtool check metrics` must pass.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use support::{Agent, repo_root};

/// Families whose values differ from run to run.
const VOLATILE: [&str; 3] = [
    "process_",
    "hostwatch_collector_duration_seconds",
    "hostwatch_build_info",
];

/// The exposition without volatile families, with the checkout's path (which
/// appears in reasons like a missing fixture file) replaced by `$ROOT`.
fn deterministic(exposition: &str) -> String {
    let root = repo_root().display().to_string();
    let mut out = String::new();
    for line in exposition.replace(&root, "$ROOT").lines() {
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
    support::promtool_check(&exposition);
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

/// The README's metric table must name every family the agent exports,
/// including those only an ENA host or a GPU host shows (replayed from
/// fixtures here).
#[test]
fn readme_lists_every_metric() {
    let dir = support::TempDir::new("readme");
    for (scenario, interface) in [("aws-doc", "eth0"), ("ena-express", "eth1")] {
        let target = dir.join("fixtures").join(interface);
        std::fs::create_dir_all(&target).unwrap();
        for file in ["driver", "statistics"] {
            std::fs::copy(
                support::fixture("ethtool").join(scenario).join("eth0").join(file),
                target.join(file),
            )
            .unwrap();
        }
    }
    // GPUs: a busy H100 and an A100 with XIDs, from the gpu fixtures.
    let gpus = dir.join("gpus");
    std::fs::create_dir_all(&gpus).unwrap();
    for (scenario, file, target) in [
        ("busy", "system.json", "system.json"),
        ("busy", "gpu0.json", "gpu0.json"),
        ("xid", "gpu0.json", "gpu1.json"),
    ] {
        std::fs::copy(support::fixture("gpu").join(scenario).join(file), gpus.join(target)).unwrap();
    }
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.ethtool]\nfixtures = \"{}\"\nper_queue = true\nraw_stats = \"tx_timeout\"\n\
             [collectors.gpu]\nfixtures = \"{}\"\n",
            dir.join("fixtures").display(),
            gpus.display()
        ),
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut exposition = agent.metrics();
    // As root, the eBPF collectors run too, on the real host.
    if support::netns::is_root() {
        let ebpf = dir.write(
            "ebpf.toml",
            &format!(
                "[collectors.netburst]\ninclude = \"lo\"\nrecordings = \"{}\"\n",
                dir.join("recordings").display()
            ),
        );
        let live = Agent::start(&["--config", ebpf.to_str().unwrap()], &[]);
        live.wait_ready();
        let up = "hostwatch_collector_up{collector=\"netburst\"}";
        support::wait_for(
            std::time::Duration::from_secs(5),
            || support::value(&live.metrics(), up) == Some(1.0),
            "netburst",
        );
        exposition.push_str(&live.metrics());
    }
    let exported: Vec<String> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(
        exported.iter().any(|name| name == "hostwatch_ena_srd_mode"),
        "the ENA fixtures were read: {exported:?}"
    );
    assert!(
        exported.iter().any(|name| name == "hostwatch_gpu_xid_errors_total"),
        "the GPU fixtures were read: {exported:?}"
    );
    let missing: Vec<&String> = exported
        .iter()
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "README.md does not list: {missing:?}");
}

/// The ethtool collector's fixture backend through the real agent: counters
/// changed on disk while it runs show up in the next scrape, and the ENA
/// families pass promtool's linter.
#[test]
fn ena_fixtures_are_replayed_live() {
    let dir = support::TempDir::new("ena-replay");
    let fixtures = dir.join("fixtures");
    std::fs::create_dir_all(fixtures.join("eth0")).unwrap();
    let source = support::fixture("ethtool/aws-doc/eth0");
    for file in ["driver", "statistics"] {
        std::fs::copy(source.join(file), fixtures.join("eth0").join(file)).unwrap();
    }
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.ethtool]\nfixtures = \"{}\"\ninterval = \"100ms\"\n",
            fixtures.display()
        ),
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();
    let bw_out = "hostwatch_ena_allowance_exceeded_packets_total{interface=\"eth0\",allowance=\"bw_out\"}";
    assert_eq!(support::value(&agent.metrics(), bw_out), Some(0.0));

    let statistics = fixtures.join("eth0/statistics");
    let text = std::fs::read_to_string(&statistics).unwrap();
    std::fs::write(
        &statistics,
        text.replace("bw_out_allowance_exceeded: 0", "bw_out_allowance_exceeded: 1234"),
    )
    .unwrap();
    agent.wait_until(
        std::time::Duration::from_secs(5),
        || support::value(&agent.metrics(), bw_out) == Some(1234.0),
        "the changed counter in the scrape",
    );

    let exposition = agent.metrics();
    support::promtool_check(&exposition);
}
