//! End to end with real servers: Debian's `prometheus` scrapes the agent and
//! evaluates the shipped rules (every `packaging/alerts/*.rules.yml`), and
//! sends what fires to Debian's `prometheus-alertmanager`; all on loopback.
//! The agent reads ENA statistics from the ethtool fixture backend, whose
//! `bw_out_allowance_exceeded` counter the test makes rise: the outbound
//! bandwidth alert reaches Alertmanager (its v2 API lists it) within the
//! rule's `for` plus two scrape intervals, and leaves it once the counter
//! stops.
//!
//! THE RULES ARE A SHORTENED COPY. The shipped rules wait minutes (`for: 10m`
//! over 5-minute rates); this test runs each rule file through [`shorten`],
//! which divides every duration Prometheus reads (`for:`, `keep_firing_for:`,
//! range and subquery brackets, `offset`) by 60, so a minute becomes a second,
//! and leaves every other byte as it is: `shortening_changes_only_durations`
//! proves that on every rule file, and this test asserts it again on the copy
//! it loads. Scrapes and rule evaluations run every second.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use regex::{Captures, Regex};
use serde_json::Value;
use support::{Agent, TempDir, free_port, repo_root, require_program};

/// How often Prometheus scrapes the agent and evaluates the rules.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// Allowed from Prometheus' evaluation to the test seeing the result in
/// Alertmanager's API: delivery (milliseconds when measured) and the test's
/// 100 ms poll, on a busy 2-core machine.
const DELIVERY: Duration = Duration::from_secs(1);
/// The alert the rising counter fires, in both tiers (the fixture's transmit
/// packet counter does not move, so the shaped packets are above 1 % of the
/// packets sent and the critical tier fires with the warning).
const ALERT: &str = "HostwatchEnaBandwidthOutAllowanceExceeded";

/// A duration as Prometheus writes it: `5m`, `1h30m`, `500ms`.
const DURATION: &str = r"(?:[0-9]+(?:ms|[smhdwy]))+";

fn parse_duration(text: &str) -> Duration {
    let part = Regex::new(r"([0-9]+)(ms|[smhdwy])").unwrap();
    let millis: u64 = part
        .captures_iter(text)
        .map(|c| {
            let n: u64 = c[1].parse().unwrap();
            n * match &c[2] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                "y" => 31_536_000_000,
                unit => panic!("unit {unit}"),
            }
        })
        .sum();
    Duration::from_millis(millis)
}

/// `duration` as Prometheus reads it, in seconds or milliseconds.
fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// The rule file `text` with every duration Prometheus reads divided by 60:
/// `for:` and `keep_firing_for:` values, `[range]` and `[range:step]`
/// brackets, `offset` amounts. Nothing else changes.
fn shorten(text: &str) -> String {
    let scale = |d: &str| format_duration(parse_duration(d) / 60);
    let fields = Regex::new(&format!(r"(?m)^(\s*(?:for|keep_firing_for):\s*)({DURATION})(\s*)$")).unwrap();
    let brackets = Regex::new(&format!(r"\[({DURATION})(?::({DURATION})?)?\]")).unwrap();
    let offsets = Regex::new(&format!(r"\boffset(\s+-?)({DURATION})\b")).unwrap();
    let text = fields.replace_all(text, |c: &Captures| format!("{}{}{}", &c[1], scale(&c[2]), &c[3]));
    let text = brackets.replace_all(&text, |c: &Captures| match (c.get(2), c[0].contains(':')) {
        (Some(step), _) => format!("[{}:{}]", scale(&c[1]), scale(step.as_str())),
        (None, true) => format!("[{}:]", scale(&c[1])),
        (None, false) => format!("[{}]", scale(&c[1])),
    });
    offsets
        .replace_all(&text, |c: &Captures| format!("offset{}{}", &c[1], scale(&c[2])))
        .into_owned()
}

/// `text` with every duration-looking token replaced by a placeholder: two
/// rule files that differ only in durations have the same mask.
fn mask_durations(text: &str) -> String {
    Regex::new(&format!(r"\b{DURATION}\b"))
        .unwrap()
        .replace_all(text, "<duration>")
        .into_owned()
}

/// The shipped rule files: every `packaging/alerts/*.rules.yml` (their unit
/// tests, `*.rules.test.yml`, are not rule files).
fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("packaging/alerts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(".rules.yml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("hostwatch.rules.yml")), "{files:?}");
    files
}

/// Why `shortened` is not `original` with only durations changed (and at
/// least one), if it is not.
fn change_beyond_durations(original: &str, shortened: &str) -> Option<String> {
    if original == shortened {
        return Some("nothing was shortened".to_owned());
    }
    let (before, after) = (mask_durations(original), mask_durations(shortened));
    let differing = before.lines().zip(after.lines()).find(|(a, b)| a != b);
    if let Some((a, b)) = differing {
        return Some(format!("changed more than durations:\n  {a}\n  {b}"));
    }
    (before.lines().count() != after.lines().count()).then(|| "lines were added or removed".to_owned())
}

fn assert_only_durations_changed(name: &str, original: &str, shortened: &str) {
    if let Some(why) = change_beyond_durations(original, shortened) {
        panic!("{name}: {why}");
    }
}

/// Writes the shortened copy of every rule file into `dir`; returns their paths.
fn shortened_rules(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    rule_files()
        .iter()
        .map(|file| {
            let name = file.file_name().unwrap().to_str().unwrap();
            let original = std::fs::read_to_string(file).unwrap();
            let shortened = shorten(&original);
            assert_only_durations_changed(name, &original, &shortened);
            let path = dir.join(name);
            std::fs::write(&path, shortened).unwrap();
            path
        })
        .collect()
}

/// The `for:` of the warning tier of `alert` in `text` (YAML).
fn for_of(text: &str, alert: &str) -> Duration {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    yaml["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap())
        .find(|rule| rule["alert"].as_str() == Some(alert) && rule["labels"]["severity"].as_str() == Some("warning"))
        .and_then(|rule| rule["for"].as_str())
        .map(parse_duration)
        .unwrap_or_else(|| panic!("no warning tier with a `for` for {alert}"))
}

#[test]
fn shortening_changes_only_durations() {
    // The transformation on a known text.
    let text = "      - alert: A\n        expr: rate(x_total[5m]) > 0.5 * rate(y[1h:5m]) offset 1d\n        for: 10m\n        keep_firing_for: 90s\n        annotations:\n          summary: rate5m of {{ $labels.interface }} for 10 minutes\n";
    assert_eq!(
        shorten(text),
        "      - alert: A\n        expr: rate(x_total[5s]) > 0.5 * rate(y[60s:5s]) offset 1440s\n        for: 10s\n        keep_firing_for: 1500ms\n        annotations:\n          summary: rate5m of {{ $labels.interface }} for 10 minutes\n"
    );
    // The check fails when anything but a duration changes.
    let broken = shorten(text).replace("> 0.5", "> 0.6");
    let why = change_beyond_durations(text, &broken).expect("a changed threshold went unnoticed");
    assert!(why.contains("0.6"), "{why}");
    assert!(
        change_beyond_durations(text, text).is_some(),
        "an unchanged copy went unnoticed"
    );
    // Every shipped rule file: only durations change, and promtool accepts
    // the copy.
    let dir = TempDir::new("shortened-rules");
    let files = shortened_rules(&dir.join("rules"));
    let output = Command::new(require_program("promtool"))
        .args(["check", "rules"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server process, killed on drop; its output goes to a file shown when a
/// wait fails.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(program: &str, args: &[String], log: PathBuf) -> Self {
        let out = File::create(&log).unwrap();
        let child = Command::new(require_program(program))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` as JSON; `Null` while the server is not answering. (curl: the
/// servers answer large documents chunked.)
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let output = Command::new("curl")
        .args(["--silent", "--fail", "--max-time", "5"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    if !output.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// The instant query's result vector.
fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    get_json(prometheus, &format!("/api/v1/query?query={}", encode(expr)))["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Alertmanager's active alerts named `name` (API v2; resolved alerts are
/// not listed).
fn alertmanager_alerts(alertmanager: SocketAddr, name: &str) -> Vec<Value> {
    get_json(alertmanager, "/api/v2/alerts?active=true")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|alert| alert["labels"]["alertname"] == name)
        .collect()
}

/// An RFC 3339 timestamp of the servers' APIs.
fn timestamp(value: &Value) -> SystemTime {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn severities(alerts: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = alerts
        .iter()
        .map(|a| a["labels"]["severity"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// Rewrites the fixture's statistics every 200 ms with the outbound
/// allowance counter 50 higher, atomically (write, then rename), until
/// stopped.
struct RisingCounter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, SystemTime)>>,
}

impl RisingCounter {
    /// `staging` must be on the file system of `statistics`, outside the
    /// fixture tree.
    fn start(statistics: PathBuf, staging: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let original = std::fs::read_to_string(&statistics).unwrap();
            assert!(original.contains("bw_out_allowance_exceeded: 0\n"));
            let mut value = 0;
            let mut written = SystemTime::now();
            while !flag.load(Ordering::SeqCst) {
                value += 50;
                let text = original.replace(
                    "bw_out_allowance_exceeded: 0\n",
                    &format!("bw_out_allowance_exceeded: {value}\n"),
                );
                std::fs::write(&staging, text).unwrap();
                std::fs::rename(&staging, &statistics).unwrap();
                written = SystemTime::now();
                std::thread::sleep(Duration::from_millis(200));
            }
            (value, written)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer; returns the counter's last value and when it was
    /// written.
    fn stop(mut self) -> (u64, SystemTime) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for RisingCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Polls `check` every 100 ms for at most `limit`; returns how long it took,
/// or `None`.
fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rising_allowance_counter_reaches_alertmanager_and_resolves() {
    let dir = TempDir::new("alerting");

    // The agent: the basic /proc and /sys fixture, ENA statistics from the
    // aws-doc capture re-read every 100 ms. Nothing that would reach outside
    // (IMDS) or attach to the host's kernel (eBPF).
    let fixtures = dir.join("ethtool");
    std::fs::create_dir_all(fixtures.join("eth0")).unwrap();
    for file in ["driver", "statistics"] {
        std::fs::copy(
            support::fixture("ethtool/aws-doc/eth0").join(file),
            fixtures.join("eth0").join(file),
        )
        .unwrap();
    }
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.ethtool]\nfixtures = \"{}\"\ninterval = \"100ms\"\n\
             [collectors.instance]\nenabled = false\n\
             [collectors.netburst]\nenabled = false\n",
            fixtures.display()
        ),
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();

    // Alertmanager: one receiver that sends nothing; clustering off (it
    // would listen on 0.0.0.0:9094).
    let am_port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    let am_config = dir.write(
        "alertmanager.yml",
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: blackhole\n",
    );
    let alertmanager = Server::start(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", dir.join("alertmanager").display()),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".to_owned(),
        ],
        dir.join("alertmanager.log"),
    );

    // Prometheus with the shortened rules.
    let rules = shortened_rules(&dir.join("rules"));
    let shortened = std::fs::read_to_string(dir.join("rules/hostwatch.rules.yml")).unwrap();
    let original = std::fs::read_to_string(repo_root().join("packaging/alerts/hostwatch.rules.yml")).unwrap();
    assert_only_durations_changed("hostwatch.rules.yml", &original, &shortened);
    let for_duration = for_of(&shortened, ALERT);
    assert_eq!(for_duration, for_of(&original, ALERT) / 60);
    let range = Duration::from_secs(5 * 60) / 60;
    assert!(
        shortened.contains(&format!(
            "rate(hostwatch_ena_allowance_exceeded_packets_total[{}])",
            format_duration(range)
        )),
        "the recording rule's range"
    );

    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let rule_list: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
    let prom_config = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
             rule_files: [{rules}]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_addr}']\n\
             scrape_configs:\n  - job_name: hostwatch\n    static_configs:\n      - targets: ['{agent}']\n",
            interval = format_duration(SCRAPE_INTERVAL),
            rules = rule_list.join(", "),
            agent = agent.addr,
        ),
    );
    let prometheus = Server::start(
        "prometheus",
        &[
            format!("--config.file={}", prom_config.display()),
            format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
        dir.join("prometheus.log"),
    );

    // Ready: Prometheus talks to Alertmanager, has loaded the rules and has
    // seen the counter at 0 more than once (so rate() sees the first rise).
    let logs = || {
        format!(
            "prometheus:\n{}\nalertmanager:\n{}",
            prometheus.log(),
            alertmanager.log()
        )
    };
    let mut state = Vec::new();
    let ready = time_until(Duration::from_secs(60), || {
        let managers = get_json(prom_addr, "/api/v1/alertmanagers");
        let groups = get_json(prom_addr, "/api/v1/rules");
        let counter = query(
            prom_addr,
            "count_over_time(hostwatch_ena_allowance_exceeded_packets_total{allowance=\"bw_out\",interface=\"eth0\"}[10s]) >= 3 \
             and hostwatch_ena_allowance_exceeded_packets_total == 0",
        );
        state = vec![
            (
                "Prometheus knows Alertmanager",
                managers["data"]["activeAlertmanagers"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()),
            ),
            (
                "Prometheus has the rules",
                groups["data"]["groups"].as_array().is_some_and(|g| !g.is_empty()),
            ),
            (
                "Alertmanager answers",
                get_json(am_addr, "/api/v2/status")["cluster"]["status"].is_string(),
            ),
            ("Prometheus has the counter at 0", !counter.is_empty()),
        ];
        state.iter().all(|(_, ok)| *ok)
    });
    assert!(ready.is_some(), "servers not ready: {state:?}\n{}", logs());
    assert!(
        alertmanager_alerts(am_addr, ALERT).is_empty(),
        "fired before the counter rose"
    );

    // The counter rises. `rose` is when the agent first exposes the new value
    // (the fixture is re-read every 100 ms): from then on it is Prometheus'
    // pipeline: a scrape sees it, an evaluation makes the alert pending,
    // `for` later one fires it and Prometheus sends it to Alertmanager.
    let writer = RisingCounter::start(fixtures.join("eth0/statistics"), dir.join("statistics.next"));
    let counter = "hostwatch_ena_allowance_exceeded_packets_total{interface=\"eth0\",allowance=\"bw_out\"}";
    let exposed = time_until(Duration::from_secs(5), || {
        support::value(&agent.metrics(), counter).is_some_and(|v| v > 0.0)
    });
    assert!(
        exposed.is_some(),
        "the agent does not expose the rise:\n{}",
        agent.metrics()
    );
    let rose = SystemTime::now();
    let limit = for_duration + 2 * SCRAPE_INTERVAL;
    let listed = time_until(limit + Duration::from_secs(30), || {
        severities(&alertmanager_alerts(am_addr, ALERT)) == ["critical", "warning"]
    });
    let listed_at = SystemTime::now();
    let Some(listed) = listed else {
        writer.stop();
        panic!(
            "{ALERT} did not reach Alertmanager; Alertmanager has {:?}; Prometheus alerts {}\n{}",
            get_json(am_addr, "/api/v2/alerts"),
            get_json(prom_addr, "/api/v1/alerts"),
            logs()
        );
    };
    // When it went pending (Prometheus) and fired (Alertmanager's startsAt is
    // the evaluation that fired it), by Prometheus' evaluation timestamps.
    let alerts = alertmanager_alerts(am_addr, ALERT);
    let warning = alerts.iter().find(|a| a["labels"]["severity"] == "warning").unwrap();
    let fired_at = timestamp(&warning["startsAt"]);
    let pending = get_json(prom_addr, "/api/v1/alerts");
    let active_at = pending["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT && a["labels"]["severity"] == "warning")
        .map(|a| timestamp(&a["activeAt"]))
        .unwrap_or_else(|| panic!("Prometheus does not list {ALERT}: {pending}"));
    let since_rise = |t: SystemTime| {
        t.duration_since(rose)
            .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
    };
    eprintln!(
        "{ALERT}: pending {:.3} s after the rise, firing {:.3} s after it (for: {for_duration:?}), \
         listed by Alertmanager {listed:.3?} after it",
        since_rise(active_at),
        since_rise(fired_at),
    );
    // (Alertmanager keeps milliseconds, Prometheus nanoseconds.)
    let pending_for = fired_at.duration_since(active_at).unwrap_or_default() + Duration::from_millis(1);
    assert!(
        pending_for >= for_duration,
        "fired before its `for` ({for_duration:?}) ran out: pending at {active_at:?}, firing at {fired_at:?}"
    );
    assert!(
        fired_at <= rose + limit,
        "fired {:.3} s after the rise: more than `for` ({for_duration:?}) plus two scrape intervals",
        since_rise(fired_at)
    );
    // Delivery to Alertmanager, seen by a 100 ms poll.
    assert!(
        listed_at.duration_since(fired_at).unwrap_or_default() <= DELIVERY,
        "Alertmanager listed it {:.3} s after it fired",
        since_rise(listed_at) - since_rise(fired_at)
    );

    // What Alertmanager holds: the agent's labels, the annotations.
    for alert in &alerts {
        let labels = &alert["labels"];
        assert_eq!(labels["interface"], "eth0", "{alert}");
        assert_eq!(labels["allowance"], "bw_out", "{alert}");
        assert_eq!(labels["job"], "hostwatch", "{alert}");
        assert_eq!(labels["instance"], agent.addr.to_string(), "{alert}");
        assert_eq!(alert["status"]["state"], "active", "{alert}");
        for annotation in ["summary", "description", "runbook"] {
            assert!(
                alert["annotations"][annotation].as_str().is_some_and(|s| !s.is_empty()),
                "no {annotation}: {alert}"
            );
        }
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains(&format!("{} eth0", agent.addr)),
            "{alert}"
        );
    }

    // The counter stops: once the rate window holds no rise, the alert
    // resolves and Alertmanager no longer lists it. Measured from the last
    // write, by the test's clock: the rate window plus two scrape intervals,
    // and the same second for delivery and polling as above.
    let (last, last_written) = writer.stop();
    assert!(last > 0);
    let resolve_limit = range + 2 * SCRAPE_INTERVAL + DELIVERY;
    let resolved = time_until(resolve_limit + Duration::from_secs(30), || {
        alertmanager_alerts(am_addr, ALERT).is_empty()
    });
    let resolved = resolved.map(|_| SystemTime::now().duration_since(last_written).unwrap());
    let Some(resolved) = resolved else {
        panic!(
            "{ALERT} still listed after the counter stopped: {:?}\n{}",
            get_json(am_addr, "/api/v2/alerts"),
            logs()
        );
    };
    eprintln!("{ALERT} left Alertmanager {resolved:.3?} after the counter's last rise");
    assert!(
        resolved <= resolve_limit,
        "resolved {resolved:?} after the last rise: more than the rate window ({range:?}) plus two scrape intervals and {DELIVERY:?}"
    );
    // Prometheus agrees, and the counter it saw is the one written.
    assert!(
        query(prom_addr, &format!("ALERTS{{alertname=\"{ALERT}\"}}")).is_empty(),
        "{}",
        get_json(prom_addr, "/api/v1/alerts")
    );
    let seen = query(
        prom_addr,
        "hostwatch_ena_allowance_exceeded_packets_total{allowance=\"bw_out\",interface=\"eth0\"}",
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["value"][1], last.to_string());
}
