//! A real Prometheus server (Debian's `prometheus` package) scrapes the agent on
//! loopback; the test asks Prometheus' HTTP API for the series and checks
//! the values the fixture holds.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Agent, TempDir, free_port, require_program, wait_for};

struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn scraping(target: std::net::SocketAddr) -> Self {
        Self::with_job(target, "")
    }

    /// Prometheus scraping `target` every second; `extra` is YAML added to
    /// the job (indented four spaces), e.g. its TLS and basic auth settings.
    fn with_job(target: std::net::SocketAddr, extra: &str) -> Self {
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

    /// The values of an instant query, as (labels, value) pairs.
    fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let Ok(stream) = std::net::TcpStream::connect(addr) else {
            return Vec::new();
        };
        drop(stream);
        let path = format!("/api/v1/query?query={}", encode(expr));
        let response = support::get(addr, &path, &[]);
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
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(expr: &str) -> String {
    expr.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_fixture_values() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let prometheus = Prometheus::scraping(agent.addr);
    wait_for(
        Duration::from_secs(60),
        || !prometheus.query("up{job=\"hostwatch\"} == 1").is_empty(),
        "Prometheus to scrape the agent successfully",
    );

    let expectations = [
        ("hostwatch_cpu_seconds_total{cpu=\"1\",mode=\"system\"}", 17.55),
        ("hostwatch_net_receive_bytes_total{interface=\"eth0\"}", 214_682_743.0),
        ("hostwatch_net_transmit_bytes_total{interface=\"eth0\"}", 284_836.0),
        ("hostwatch_collector_up{collector=\"netdev\"}", 1.0),
        ("count(hostwatch_cpu_seconds_total)", 16.0),
    ];
    for (expr, expected) in expectations {
        let result = prometheus.query(expr);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        assert_eq!(result[0].1, expected, "{expr}");
    }
    let build = prometheus.query("hostwatch_build_info");
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    // Prometheus saw no scrape errors: every sample parsed.
    let samples = prometheus.query("scrape_samples_scraped{job=\"hostwatch\"}");
    assert!(samples.first().is_some_and(|(_, n)| *n > 50.0), "{samples:?}");
}

/// curl against the agent: (HTTP status, or 0 when the request failed).
fn curl(args: &[&str]) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0)
}

/// TLS and basic authentication from an exporter-toolkit web config: a real
/// Prometheus with a standard scrape config (https, ca_file, basic_auth)
/// scrapes the agent; a wrong password gets 401; plain HTTP to the TLS port
/// fails cleanly and the agent carries on.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let dir = TempDir::new("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=hostwatch-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl made a self-signed certificate");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prometheus: '{hash}'\n"),
    );
    let root = support::fixture("basic");
    let agent = Agent::start(
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--path.procfs",
            root.join("proc").to_str().unwrap(),
            "--path.sysfs",
            root.join("sys").to_str().unwrap(),
        ],
        &[],
    );
    let url = format!("https://{}/metrics", agent.addr);
    let ca = cert.to_str().unwrap();
    wait_for(
        Duration::from_secs(10),
        || curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]) == 200,
        "TLS scrape",
    );
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:wrong", &url]), 401);
    assert_eq!(curl(&["--cacert", ca, &url]), 401, "no credentials");
    assert_eq!(
        curl(&[&format!("http://{}/metrics", agent.addr)]),
        0,
        "plain HTTP to the TLS port gets no HTTP answer"
    );
    assert_eq!(
        curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]),
        200,
        "still serving"
    );

    let prometheus = Prometheus::with_job(
        agent.addr,
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: s3cret\n"
        ),
    );
    wait_for(
        Duration::from_secs(60),
        || !prometheus.query("up{job=\"hostwatch\"} == 1").is_empty(),
        "Prometheus scraping over TLS",
    );
    let cpu = prometheus.query("hostwatch_cpu_seconds_total{cpu=\"1\",mode=\"system\"}");
    assert_eq!(cpu.first().map(|(_, v)| *v), Some(17.55));
}
