//! Shared by the end-to-end tests: starts the real `hostwatch` binary on an
//! ephemeral loopback port and talks plain HTTP/1.1 to it.

// Each test file uses a different part of this module.
#![allow(dead_code)]

pub mod netns;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hostwatch")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("hostwatch-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent; killed on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// `hostwatch run` on the fixture `name` with extra arguments.
    pub fn on_fixture(name: &str, extra: &[&str]) -> Self {
        let root = fixture(name);
        let procfs = root.join("proc");
        let sysfs = root.join("sys");
        let mut args = vec![
            "--path.procfs",
            procfs.to_str().unwrap(),
            "--path.sysfs",
            sysfs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::start(&args, &[])
    }

    /// `hostwatch run --listen 127.0.0.1:0 --log-format json ARGS` with `env` set;
    /// returns once the agent logged the address it bound.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin());
        command
            .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args);
        command.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
        for (key, value) in env {
            command.env(key, value);
        }
        Self::from_command(command)
    }

    /// Runs `command`, which must start the agent with `--listen` on port 0
    /// and JSON logs (through a wrapper like setpriv, say).
    pub fn from_command(mut command: Command) -> Self {
        command.env("HOSTWATCH_LOG", "debug");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["fields"]["message"] == "hostwatch started"
                {
                    let _ = tx.send(event["fields"]["listen"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok(listen) = rx.recv_timeout(Duration::from_secs(10)) else {
            // The reader ends with stderr: an agent that exited has said why last.
            std::thread::sleep(Duration::from_millis(200));
            let status = child.try_wait().unwrap();
            panic!(
                "agent did not start (exit: {status:?}); logs:\n{}",
                own_lines(&logs.lock().unwrap())
            );
        };
        Self {
            child,
            addr: listen.parse().unwrap(),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log lines so far (see [`own_lines`]).
    pub fn logs(&self) -> String {
        own_lines(&self.logs.lock().unwrap())
    }

    /// The field `field` of the first logged event whose message is `message`.
    pub fn logged(&self, message: &str, field: &str) -> Option<String> {
        self.logs.lock().unwrap().iter().find_map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            if event["fields"]["message"] != message {
                return None;
            }
            event["fields"][field].as_str().map(str::to_owned)
        })
    }

    /// The port the shaping proxy bound (configured with port 0: a port
    /// picked beforehand could be taken by anything before the agent binds it).
    pub fn proxy_port(&self) -> u16 {
        let listen = self
            .logged("shaping proxy started", "listen")
            .unwrap_or_else(|| panic!("the shaping proxy did not start; logs:\n{}", self.logs()));
        listen.parse::<SocketAddr>().unwrap().port()
    }

    /// [`wait_for`], with the agent's logs in the failure.
    pub fn wait_until(&self, limit: Duration, check: impl FnMut() -> bool, what: &str) {
        poll(limit, check, || format!("{what}; agent logs:\n{}", self.logs()));
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path, &[])
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&self) {
        wait_for(
            Duration::from_secs(10),
            || self.get("/readyz").status == 200,
            "agent ready",
        );
    }

    /// The Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200);
        response.text()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB");
        kib.trim().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Polls `check` every 50 ms until it holds, failing the test after `limit`.
pub fn wait_for(limit: Duration, check: impl FnMut() -> bool, what: &str) {
    poll(limit, check, || what.to_owned());
}

/// Polls `check` every 50 ms until it holds; after `limit`, fails saying
/// what was awaited (`what`, built only then).
fn poll(limit: Duration, mut check: impl FnMut() -> bool, what: impl FnOnce() -> String) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Log lines without the BPF loader's debug chatter (hundreds of relocation
/// lines that would bury the agent's own).
fn own_lines(lines: &[String]) -> String {
    let own: Vec<&str> = lines
        .iter()
        .filter(|line| !line.contains("\"log.target\":\"aya"))
        .map(String::as_str)
        .collect();
    own.join("\n")
}

/// The value of the series `selector` (name with its labels exactly as
/// exposed, e.g. `hostwatch_collector_up{collector="cpu"}`) in `text`.
pub fn value(text: &str, selector: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(selector)?.strip_prefix(' ')?.parse().ok())
}

/// A loopback port nothing listens on right now.
/// The congestion control algorithm of each established TCP socket that
/// `filter` (an `ss` filter) selects, as `ss -ti` names it.
pub fn congestion_control(filter: &str) -> Vec<String> {
    const ALGORITHMS: [&str; 5] = ["cubic", "bbr", "reno", "dctcp", "htcp"];
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", filter])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|word| ALGORITHMS.contains(word))
        .map(str::to_owned)
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a program from a Debian package the test suite needs, failing with a
/// pointer to the set-up script when it is missing.
pub fn require_program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: run packaging/install-deps.sh --test (see README)");
}

/// A real Prometheus server (Debian's `prometheus` package) scraping one
/// target every second on loopback; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    pub fn scraping(target: SocketAddr) -> Self {
        Self::with_job(target, "")
    }

    /// Prometheus scraping `target` every second; `extra` is YAML added to
    /// the job (indented four spaces), e.g. its TLS and basic auth settings.
    pub fn with_job(target: SocketAddr, extra: &str) -> Self {
        let binary = require_program("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: hostwatch\n    static_configs:\n      - targets: ['{target}']\n{extra}"
            ),
        );
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, port, _dir: dir }
    }

    /// The values of an instant query, as (labels, value) pairs; empty while
    /// Prometheus is not up yet.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let Ok(stream) = TcpStream::connect(addr) else {
            return Vec::new();
        };
        drop(stream);
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let response = get(addr, &path, &[]);
        if response.status != 200 {
            return Vec::new();
        }
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// Waits until Prometheus has scraped the target successfully.
    pub fn wait_scraping(&self) {
        wait_for(
            Duration::from_secs(60),
            || !self.query("up{job=\"hostwatch\"} == 1").is_empty(),
            "Prometheus to scrape the agent successfully",
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Fails the test unless `promtool check metrics` accepts `exposition`. One
/// lint is let through: network rates in bits per second, which the issues
/// name so (EC2 states its allowances in Gbit/s) where promtool prefers bytes.
pub fn promtool_check(exposition: &str) {
    let mut child = Command::new(require_program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.contains("use base unit \"bytes\" instead of \"bits\""))
        .collect();
    assert!(
        output.status.success() || problems.is_empty(),
        "promtool check metrics failed:\n{}{}",
        problems.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Metric names in the golden outputs (`tests/golden/*.prom`, a whole
/// exposition, and the collectors' sample files `*.txt`): `# TYPE` names and
/// sample names.
pub fn golden_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(repo_root().join("tests/golden")).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("prom" | "txt")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        names.extend(
            text.lines()
                .filter_map(|line| match line.strip_prefix("# TYPE ") {
                    Some(rest) => rest.split(' ').next(),
                    None if line.starts_with('#') => None,
                    None => line.split(['{', ' ']).next(),
                })
                .filter(|name| !name.is_empty())
                .map(str::to_owned),
        );
    }
    for expected in [
        "hostwatch_collector_up",
        "hostwatch_net_receive_bytes_total",
        "hostwatch_ena_allowance_exceeded_packets_total",
    ] {
        assert!(names.contains(expected), "golden files without {expected}: {names:?}");
    }
    names
}
