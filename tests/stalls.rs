//! smaps / mmap_lock storms and kernel hot spots, end to end on this host: a
//! victim churning mmap/munmap over thousands of VMAs, a reader calling
//! psutil's `memory_full_info()` on it (both in `tests/helpers/`), the real
//! agent with its BPF programs and perf sampling, a real Prometheus
//! evaluating the shipped alert's expression (promtool checks the rules in
//! `tests/alerts.rs`).
//!
//! Root tests (CI runs as root); tracefs must be mounted (packaging/test.sh
//! mounts it) and Debian's python3 with python3-psutil installed.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::netns::is_root;
use support::{Agent, Prometheus, TempDir, repo_root, require_program, value, wait_for};

fn alerts_dir() -> PathBuf {
    repo_root().join("packaging/alerts")
}

/// A helper process, killed on drop.
struct Helper(Child);

impl Helper {
    fn python(script: &str, args: &[&str]) -> Self {
        let child = Command::new(require_program("python3"))
            .arg(repo_root().join("tests/helpers").join(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }

    /// The mmap churner, once its VMAs exist.
    fn victim() -> Self {
        let mut victim = Self::python("mmap_churn.py", &["4000"]);
        let mut line = String::new();
        BufReader::new(victim.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the churner started");
        victim
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent with the stalls collector every 500 ms (hotspots keeps its 1 s:
/// its build probes perf for up to 300 ms within that timeout).
fn agent(dir: &TempDir) -> Agent {
    assert!(
        ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
            .iter()
            .any(|p| std::path::Path::new(p).is_dir()),
        "tracefs is not mounted: run packaging/test.sh (it mounts it) or mount -t tracefs nodev /sys/kernel/tracing"
    );
    let config = dir.write("hostwatch.toml", "[collectors.stalls]\ninterval = \"500ms\"\n");
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    agent.wait_ready();
    agent.wait_until(
        Duration::from_secs(10),
        || value(&agent.metrics(), "hostwatch_collector_up{collector=\"stalls\"}") == Some(1.0),
        "the stalls collector up",
    );
    agent
}

/// The rules file's expression of `alert`: the block under its `expr: |`.
fn alert_expr(alert: &str) -> String {
    let rules = std::fs::read_to_string(alerts_dir().join("stalls.rules.yml")).unwrap();
    let rest = rules
        .split_once(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("{alert} in the rules"))
        .1;
    let block = rest.split_once("expr: |\n").unwrap().1;
    block
        .lines()
        .take_while(|line| !line.trim_start().starts_with("for:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seconds per second the victim's threads waited for its mmap_lock, over `over`.
fn wait_rate(agent: &Agent, process: &str, over: Duration) -> f64 {
    let total = || {
        let text = agent.metrics();
        ["read", "write"]
            .iter()
            .filter_map(|mode| {
                value(
                    &text,
                    &format!("hostwatch_mmap_lock_wait_seconds_total{{process=\"{process}\",mode=\"{mode}\"}}"),
                )
            })
            .sum::<f64>()
    };
    let (before, start) = (total(), Instant::now());
    std::thread::sleep(over);
    (total() - before) / start.elapsed().as_secs_f64()
}

/// The storm: without the reader the victim barely waits and nothing fires;
/// with it the victim's wait rises, the reader is named in the counter and at
/// /debug/stalls, the alert's expression holds on what Prometheus scraped,
/// and (where the kernel lets perf sample kernel mode) the reader's samples
/// land under smap_gather_stats. When the victim exits, its series go.
#[test]
fn smaps_storm_is_measured_named_alerted_and_sampled() {
    if !is_root() {
        eprintln!("skipped: the stalls and hotspots collectors need root");
        return;
    }
    let dir = TempDir::new("stalls");
    let agent = agent(&dir);
    let prometheus = Prometheus::scraping(agent.addr);
    prometheus.wait_scraping();
    let expr = alert_expr("MmapLockStalledBySmapsReader");

    let victim = Helper::victim();
    let victim_label = format!("mmap_churn/{}", victim.pid());
    // Without a reader: a minute's rate window of quiet.
    std::thread::sleep(Duration::from_secs(4));
    let quiet = wait_rate(&agent, &victim_label, Duration::from_secs(3));
    let text = agent.metrics();
    assert!(
        !text.contains(&format!("target=\"{victim_label}\"")),
        "nobody read the victim's smaps yet:\n{text}"
    );
    assert_eq!(prometheus.query(&expr), [], "no alert without a reader");

    let reader = Helper::python("smaps_reader.py", &[&victim.pid().to_string()]);
    let reader_label = format!("smaps_reader/{}", reader.pid());
    wait_for(
        Duration::from_secs(60),
        || {
            prometheus
                .query(&expr)
                .iter()
                .any(|(labels, _)| labels["process"] == victim_label.as_str())
        },
        "the alert's expression to hold for the victim",
    );
    let storm = wait_rate(&agent, &victim_label, Duration::from_secs(3));
    let text = agent.metrics();
    let reads = value(
        &text,
        &format!("hostwatch_smaps_reads_total{{reader=\"{reader_label}\",target=\"{victim_label}\"}}"),
    )
    .unwrap_or_else(|| panic!("the reader named:\n{text}"));
    eprintln!(
        "victim mmap_lock wait: {quiet:.5} s/s without the reader, {storm:.3} s/s with it; {reads} smaps opens counted"
    );
    assert!(storm > 0.05, "the victim stalls: {storm} s/s");
    assert!(storm > 10.0 * quiet.max(0.001), "storm {storm} vs quiet {quiet}");
    assert!(quiet < 0.05, "quiet {quiet}");

    let stalls: serde_json::Value = serde_json::from_slice(&agent.get("/debug/stalls").body).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let listed = stalls["smaps_reads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|read| read["reader_pid"] == reader.pid() && read["target_pid"] == victim.pid())
        .unwrap_or_else(|| panic!("the read at /debug/stalls: {stalls}"))
        .clone();
    assert_eq!(listed["reader_comm"], "smaps_reader");
    assert_eq!(listed["target_comm"], "mmap_churn");
    assert!(
        listed["file"] == "smaps" || listed["file"] == "smaps_rollup",
        "{listed}"
    );
    assert!((now - listed["time"].as_f64().unwrap()).abs() < 60.0, "{listed}");

    let histogram =
        format!("hostwatch_mmap_lock_wait_duration_seconds_count{{process=\"{victim_label}\",mode=\"write\"}}");
    assert!(value(&text, &histogram).is_some_and(|n| n > 0.0), "{text}");

    hot_spot_names_the_reader(&agent);

    // Every family these collectors export is in the README, and the
    // exposition (a histogram included) passes promtool's linter.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let text = agent.metrics();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        if [
            "hostwatch_mmap_lock",
            "hostwatch_smaps",
            "hostwatch_stalls",
            "hostwatch_kernel",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            assert!(readme.contains(&format!("`{name}`")), "README.md does not list {name}");
        }
    }
    support::promtool_check(&text);

    // The victim exits: its pid-labelled series go with it.
    drop(victim);
    agent.wait_until(
        Duration::from_secs(10),
        || !agent.metrics().contains(&format!("process=\"{victim_label}\"")),
        "the exited victim's series to go",
    );
    drop(reader);
}

/// While the reader runs, perf samples under smap_gather_stats carry its
/// comm. Hosts whose timer never samples kernel mode (the dev VM, a PVM
/// guest) have the collector down with that reason instead.
fn hot_spot_names_the_reader(agent: &Agent) {
    let text = agent.metrics();
    if value(&text, "hostwatch_collector_up{collector=\"hotspots\"}") == Some(0.0) {
        let reason = text
            .lines()
            .find(|l| l.starts_with("hostwatch_collector_unavailable_info{collector=\"hotspots\""))
            .unwrap_or_else(|| panic!("hotspots down without a reason:\n{text}"));
        assert!(reason.contains("kernel mode"), "{reason}");
        eprintln!("hot spot check not possible on this host: {reason}");
        return;
    }
    let series = "hostwatch_kernel_hotspot_samples_total{symbol=\"smap_gather_stats\",comm=\"smaps_reader\"}";
    agent.wait_until(
        Duration::from_secs(20),
        || value(&agent.metrics(), series).is_some_and(|n| n > 0.0),
        "samples under smap_gather_stats attributed to the reader",
    );
    eprintln!("{series} {:?}", value(&agent.metrics(), series));
}

/// A smaps open whose target has already exited (the reader found it, it
/// died before the agent looked): listed with an empty target comm, and the
/// collector stays up.
#[test]
fn a_target_that_exited_is_still_listed() {
    if !is_root() {
        eprintln!("skipped: the stalls collector needs root");
        return;
    }
    let dir = TempDir::new("stalls-exited");
    let agent = agent(&dir);
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let status = Command::new("cat")
        .arg(format!("/proc/{gone_pid}/smaps"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the target is gone");
    agent.wait_until(
        Duration::from_secs(10),
        || {
            let stalls: serde_json::Value = serde_json::from_slice(&agent.get("/debug/stalls").body).unwrap();
            stalls["smaps_reads"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["target_pid"] == gone_pid && r["target_comm"] == "" && r["reader_comm"] == "cat")
        },
        "the read of an exited target at /debug/stalls",
    );
    assert_eq!(
        value(&agent.metrics(), "hostwatch_collector_up{collector=\"stalls\"}"),
        Some(1.0)
    );
}

/// Not root: both collectors are down with a reason that says so, and the
/// agent serves everything else.
#[test]
fn without_root_the_collectors_are_down_with_a_reason() {
    if !is_root() {
        eprintln!("skipped: dropping privileges needs root to start with");
        return;
    }
    let setpriv = require_program("setpriv");
    let bin = support::bin();
    let mut child = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(bin)
        .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("HOSTWATCH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log to its end on a thread: a closed pipe would fail the
    // agent's later log writes.
    let stderr = child.stderr.take().unwrap();
    let (started, listen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["fields"]["message"] == "hostwatch started" {
                let _ = started.send(event["fields"]["listen"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = listen
        .recv_timeout(Duration::from_secs(10))
        .expect("the agent started as nobody")
        .parse()
        .unwrap();
    let mut text = String::new();
    wait_for(
        Duration::from_secs(10),
        || {
            text = support::get(addr, "/metrics", &[]).text();
            text.contains("hostwatch_collector_unavailable_info{collector=\"stalls\"")
                && text.contains("hostwatch_collector_unavailable_info{collector=\"hotspots\"")
        },
        "both collectors reported down",
    );
    eprintln!(
        "as nobody:\n{}",
        text.lines()
            .filter(|l| l.contains("unavailable_info{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = child.kill();
    let _ = child.wait();
    let reason = |collector: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "hostwatch_collector_unavailable_info{{collector=\"{collector}\""
                ))
            })
            .unwrap()
            .to_owned()
    };
    assert!(reason("stalls").contains("not permitted"), "{}", reason("stalls"));
    assert!(
        reason("hotspots").contains("every address as 0"),
        "{}",
        reason("hotspots")
    );
    assert_eq!(value(&text, "hostwatch_collector_up{collector=\"stalls\"}"), Some(0.0));
    assert_eq!(
        value(&text, "hostwatch_collector_up{collector=\"cpu\"}"),
        Some(1.0),
        "{text}"
    );
}
