//! The S3 pacing proxy end to end: the real agent, a real S3 server (moto,
//! in a network namespace joined by a veth pair, as root), boto3 and aws-cli
//! as clients, and the wire measured independently of the proxy by the
//! agent's netburst collector (eBPF, bytes per millisecond on the veth, read
//! from `/debug/netslots`). Then the adaptive rate against the ENA fixture
//! backend, and bad input, on loopback, without root.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::netns::{TestNet, is_root};
use support::{Agent, TempDir, congestion_control, free_port, repo_root, value, wait_for};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to create network namespaces and load BPF programs");
            return;
        }
    };
}

/// The limit the S3 tests pace at, and the object they move (2 s at the
/// limit). Well below what moto and the Python clients reach over TLS on a
/// 2-core VM (150 to 200 Mbit/s on a slow day), so that the proxy, not the
/// server, sets the pace the test checks.
const RATE: f64 = 100e6;
const SIZE: u64 = 24 << 20;

/// The Python environment `packaging/install-deps.sh --test` makes: moto,
/// boto3 and aws-cli, pinned.
fn venv() -> PathBuf {
    let dir = std::env::var_os("HOSTWATCH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hostwatch-test-venv"));
    assert!(
        dir.join("bin/moto_server").exists(),
        "no moto in {}: run packaging/install-deps.sh --test",
        dir.display()
    );
    dir
}

/// moto's S3 server inside the test namespace; killed on drop.
struct Moto(Child);

impl Moto {
    fn start(net: &TestNet, port: u16, tls: bool) -> Self {
        let mut command = net.command(venv().join("bin/moto_server").to_str().unwrap());
        command.args(["-H", &net.there, "-p", &port.to_string()]);
        if tls {
            command.arg("--ssl");
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let addr: SocketAddr = format!("{}:{port}", net.there).parse().unwrap();
        wait_for(
            Duration::from_secs(30),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            "moto listening",
        );
        Self(child)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent with the proxy on and netburst counting the veth; returns it
/// and the proxy's port.
fn proxy_agent(dir: &TempDir, net: &TestNet) -> (Agent, u16) {
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.netburst]\ninclude = \"{host}\"\nrecord = false\n\
             [collectors.python]\nenabled = false\n[collectors.stalls]\nenabled = false\n\
             [shaping]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
             [[shaping.policy]]\nname = \"s3\"\nhosts = [\"{there}\"]\ndownload = \"{rate}bit\"\nupload = \"{rate}bit\"\n",
            host = net.host,
            there = net.there,
            rate = RATE,
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    agent.wait_ready();
    let port = agent.proxy_port();
    let watched = format!(
        "hostwatch_net_burst_threshold_bits_per_second{{interface=\"{}\",direction=\"receive\"}}",
        net.host
    );
    agent.wait_until(
        Duration::from_secs(10),
        || value(&agent.metrics(), &watched).is_some(),
        "the veth watched by netburst",
    );
    (agent, port)
}

/// Bytes per millisecond on one interface, joined from successive
/// `/debug/netslots` documents polled while a transfer runs.
struct Wire {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<(String, u64), u64>>,
}

impl Wire {
    fn watch(agent: SocketAddr, interface: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let interface = interface.to_owned();
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut slots = BTreeMap::new();
                let mut last = false;
                // The first document's second is from before the transfer.
                let mut since = None;
                loop {
                    let body = support::get(agent, "/debug/netslots", &[]).body;
                    let series: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
                    for s in series.iter().filter(|s| s["interface"] == interface.as_str()) {
                        let direction = s["direction"].as_str().unwrap_or_default().to_owned();
                        let end = s["end_ms"].as_u64().unwrap();
                        let bytes = s["bytes_per_ms"].as_array().unwrap();
                        let first = end - bytes.len() as u64;
                        let since = *since.get_or_insert(end);
                        for (i, b) in bytes.iter().enumerate().filter(|(i, _)| first + *i as u64 >= since) {
                            // Later documents hold the complete count of a
                            // millisecond an earlier one saw in progress.
                            if let Some(b) = b.as_u64() {
                                slots.insert((direction.clone(), first + i as u64), b);
                            }
                        }
                    }
                    if last {
                        return slots;
                    }
                    // The collector folds every 100 ms: one more poll after the stop.
                    last = stop.load(Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(if last { 300 } else { 150 }));
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> Slots {
        self.stop.store(true, Ordering::Relaxed);
        Slots(self.thread.join().unwrap())
    }
}

struct Slots(BTreeMap<(String, u64), u64>);

impl Slots {
    fn of(&self, direction: &str) -> Vec<(u64, u64)> {
        self.0
            .iter()
            .filter(|((d, _), _)| d == direction)
            .map(|((_, ms), b)| (*ms, *b))
            .collect()
    }

    /// The most bytes any one millisecond carried.
    fn peak(&self, direction: &str) -> u64 {
        self.of(direction).iter().map(|(_, b)| *b).max().unwrap_or(0)
    }

    /// From the first to the last millisecond that carried a full frame: the
    /// average, the third quartile and the highest of its 100 ms windows, in
    /// bits per second, and how many milliseconds in between are unknown.
    fn rate(&self, direction: &str) -> Rates {
        let slots = self.of(direction);
        let busy: Vec<&(u64, u64)> = slots.iter().filter(|(_, b)| *b >= 1500).collect();
        let (Some(first), Some(last)) = (busy.first(), busy.last()) else {
            return Rates::default();
        };
        let (first, last) = (first.0, last.0);
        let span: BTreeMap<u64, u64> = slots
            .into_iter()
            .filter(|(ms, _)| (first..=last).contains(ms))
            .collect();
        let bits = |from: u64, to: u64| {
            span.range(from..to).map(|(_, b)| b).sum::<u64>() as f64 * 8.0 * 1000.0 / (to - from) as f64
        };
        let mut windows: Vec<f64> = (first..=last.saturating_sub(100))
            .step_by(100)
            .map(|ms| bits(ms, ms + 100))
            .collect();
        windows.sort_by(f64::total_cmp);
        Rates {
            average: bits(first, last + 1),
            pace: windows.get(windows.len() * 3 / 4).copied().unwrap_or(0.0),
            highest: windows.last().copied().unwrap_or(0.0),
            unknown: last - first + 1 - span.len() as u64,
        }
    }
}

#[derive(Debug, Default)]
struct Rates {
    average: f64,
    pace: f64,
    highest: f64,
    unknown: u64,
}

#[derive(Debug)]
struct Transfer {
    seconds: f64,
    bytes: u64,
    sha256: String,
}

/// One upload (`put`) or download (`get`) with `client` (boto3 or awscli),
/// through the proxy on `proxy` when given.
fn transfer(client: &str, mode: &str, key: &str, endpoint: &str, proxy: Option<u16>) -> Transfer {
    let mut command = Command::new(venv().join("bin/python"));
    command
        .arg(repo_root().join("tests/traffic/s3_transfer.py"))
        .args([mode, key, "--client", client, "--endpoint", endpoint])
        .args(["--size", &SIZE.to_string()]);
    if endpoint.starts_with("https") {
        command.arg("--insecure");
    }
    for variable in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(variable);
    }
    if let Some(port) = proxy {
        let url = format!("http://127.0.0.1:{port}");
        command.env("HTTP_PROXY", &url).env("HTTPS_PROXY", &url);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{client} {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    Transfer {
        seconds: report["seconds"].as_f64().unwrap(),
        bytes: report["bytes"].as_u64().unwrap(),
        sha256: report["sha256"].as_str().unwrap().to_owned(),
    }
}

/// The direction a transfer's data crosses the host end of the veth.
fn wire_direction(mode: &str) -> &'static str {
    if mode == "put" { "transmit" } else { "receive" }
}

/// A transfer through the proxy, checked on the wire: no 100 ms above the
/// limit by more than 5 %, no millisecond above rate x 1 ms + 64 KiB. Returns
/// the transfer and its rates on the wire, for the floors that
/// [`clients_are_paced`] checks across transfers.
fn paced(
    agent: &Agent,
    net: &TestNet,
    (client, mode, key): (&str, &str, &str),
    endpoint: &str,
    port: u16,
) -> (Transfer, Rates) {
    let wire = Wire::watch(agent.addr, &net.host);
    let done = transfer(client, mode, key, endpoint, Some(port));
    let slots = wire.stop();
    let direction = wire_direction(mode);
    let peak = slots.peak(direction);
    let rates = slots.rate(direction);
    let by_client = done.bytes as f64 * 8.0 / done.seconds;
    let bound = RATE / 8.0 / 1000.0 + 65536.0;
    let percent = |rate: f64| (rate / RATE - 1.0) * 100.0;
    eprintln!(
        "{client} {mode} through the proxy at {RATE} bit/s: on the wire {:+.1} % (3rd quartile of 100 ms), {:+.1} % (fastest 100 ms), \
         {:+.1} % (whole transfer); {:+.1} % seen by the client; 1 ms peak {peak} B ({:.2}x the limit's millisecond, bound {bound:.0} B)",
        percent(rates.pace),
        percent(rates.highest),
        percent(rates.average),
        percent(by_client),
        peak as f64 / (RATE / 8.0 / 1000.0)
    );
    assert_eq!(rates.unknown, 0, "milliseconds the collector lost");
    // The behaviour: no 100 ms window on the wire above the limit by more
    // than 5 %, whatever the load.
    assert!(
        percent(rates.highest) <= 5.0 && by_client < 1.05 * RATE,
        "{client} {mode}: {rates:?} on the wire, {by_client:.0} bit/s seen by the client: above the limit"
    );
    assert!((peak as f64) < bound, "{client} {mode}: {peak} B in one millisecond");
    (done, rates)
}

/// boto3 and aws-cli, upload then download, through the proxy; objects intact.
fn clients_are_paced(agent: &Agent, net: &TestNet, endpoint: &str, port: u16) {
    let mut rates = Vec::new();
    for client in ["boto3", "awscli"] {
        let key = format!("{client}-object");
        let (put, put_rates) = paced(agent, net, (client, "put", &key), endpoint, port);
        let (got, got_rates) = paced(agent, net, (client, "get", &key), endpoint, port);
        assert_eq!((put.bytes, got.bytes), (SIZE, SIZE));
        assert_eq!(put.sha256, got.sha256, "{client}: the object came back changed");
        rates.extend([put_rates, got_rates]);
    }
    // How close the pace comes below the limit is timing: where the server,
    // the client or the pacer is starved (moto and the clients are Python,
    // the machine has two cores) a limiter cannot catch up by design. A
    // quiet CI run's boto3 put over TLS never passed 76 % of the limit in
    // any 100 ms, its source being the bottleneck, while other runs reach
    // the limit. So: the best transfer's 3rd-quartile 100 ms must come
    // within 20 % of the limit (a pacer that loses a third of its tokens, as
    // a millisecond timer did, fails in every transfer), and none may crawl.
    // bench/s3_proxy_vs_sdk.py reports the accuracy.
    let best = rates.iter().map(|r| r.pace).fold(0.0, f64::max);
    assert!(best > 0.8 * RATE, "no transfer reached the limit: {rates:?}");
    assert!(
        rates.iter().all(|r| r.average > 0.4 * RATE),
        "a transfer crawled: {rates:?}"
    );
    // Metrics are published every interval (1 s).
    let relayed = |direction: &str| {
        let series = format!("hostwatch_shaper_bytes_total{{policy=\"s3\",direction=\"{direction}\"}}");
        value(&agent.metrics(), &series).unwrap_or_default()
    };
    wait_for(
        Duration::from_secs(3),
        || relayed("download") >= 2.0 * SIZE as f64 && relayed("upload") >= 2.0 * SIZE as f64,
        "every byte counted",
    );
    let metrics = agent.metrics();
    for direction in ["download", "upload"] {
        let series = |name: &str| format!("{name}{{policy=\"s3\",direction=\"{direction}\"}}");
        assert!(value(&metrics, &series("hostwatch_shaper_delay_seconds_total")).unwrap() > 1.0);
        assert_eq!(
            value(&metrics, &series("hostwatch_shaper_rate_bits_per_second")),
            Some(RATE)
        );
    }
}

#[test]
fn s3_over_plain_http_is_paced_on_the_wire() {
    require_root!();
    let dir = TempDir::new("shaper-http");
    let net = TestNet::new("h");
    let _moto = Moto::start(&net, 80, false);
    let (agent, port) = proxy_agent(&dir, &net);
    let endpoint = format!("http://{}", net.there);
    clients_are_paced(&agent, &net, &endpoint, port);

    // The same transfers without the proxy, for comparison.
    for mode in ["put", "get"] {
        let wire = Wire::watch(agent.addr, &net.host);
        let done = transfer("boto3", mode, "direct-object", &endpoint, None);
        let peak = wire.stop().peak(wire_direction(mode));
        eprintln!(
            "boto3 {mode} without the proxy: {:.0} bit/s seen by the client, 1 ms peak {peak} B ({:.1}x a {RATE} bit/s millisecond)",
            done.bytes as f64 * 8.0 / done.seconds,
            peak as f64 / (RATE / 8.0 / 1000.0)
        );
        assert!(
            peak as f64 > RATE / 8.0 / 1000.0 + 65536.0,
            "without the proxy the veth is expected to burst"
        );
    }
}

#[test]
fn s3_over_https_is_paced_through_connect_tunnels() {
    require_root!();
    let dir = TempDir::new("shaper-https");
    let net = TestNet::new("t");
    // moto with a self-signed certificate it makes itself; clients skip verification.
    let _moto = Moto::start(&net, 443, true);
    let (agent, port) = proxy_agent(&dir, &net);
    clients_are_paced(&agent, &net, &format!("https://{}", net.there), port);
}

// ---------------------------------------------------------------------------
// Adaptive rate, against the ENA fixture backend (no root needed).

/// Writes the fixture interface's statistics with `bw_in_allowance_exceeded`
/// at `drops`, atomically (the collector re-reads the file every interval).
fn set_bw_in_drops(dir: &TempDir, drops: u64) {
    let original = std::fs::read_to_string(support::fixture("ethtool/aws-doc/eth0/statistics")).unwrap();
    let text = original.replace(
        "bw_in_allowance_exceeded: 0",
        &format!("bw_in_allowance_exceeded: {drops}"),
    );
    assert!(
        original.contains("bw_in_allowance_exceeded: 0"),
        "the fixture has the counter"
    );
    let target = dir.join("fixtures/eth0/statistics");
    let temporary = dir.join("fixtures/statistics.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(temporary, target).unwrap();
}

fn adaptive(dry_run: bool) {
    let dir = TempDir::new(if dry_run { "adaptive-dry" } else { "adaptive" });
    std::fs::create_dir_all(dir.join("fixtures/eth0")).unwrap();
    std::fs::copy(
        support::fixture("ethtool/aws-doc/eth0/driver"),
        dir.join("fixtures/eth0/driver"),
    )
    .unwrap();
    set_bw_in_drops(&dir, 0);
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.ethtool]\nfixtures = \"{}\"\ninterval = \"100ms\"\n\
             [shaping]\nenabled = true\nlisten = \"127.0.0.1:0\"\ninterval = \"500ms\"\ndry_run = {dry_run}\n\
             [[shaping.policy]]\nname = \"s3\"\nhosts = [\"*.s3.amazonaws.com\"]\ndownload = \"1Gbit\"\nupload = \"1Gbit\"\n\
             [shaping.policy.adaptive]\nenabled = true\nfloor = \"20%\"\nstep = \"25%\"\n",
            dir.join("fixtures").display(),
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    agent.wait_ready();
    let series = |name: &str, direction: &str| format!("{name}{{policy=\"s3\",direction=\"{direction}\"}}");
    let limit = |direction| {
        value(
            &agent.metrics(),
            &series("hostwatch_shaper_rate_bits_per_second", direction),
        )
    };
    let target = || {
        value(
            &agent.metrics(),
            &series("hostwatch_shaper_adaptive_target_bits_per_second", "download"),
        )
    };
    agent.wait_until(
        Duration::from_secs(5),
        || {
            target() == Some(1e9)
                && value(
                    &agent.metrics(),
                    "hostwatch_ena_allowance_exceeded_packets_total{interface=\"eth0\",allowance=\"bw_in\"}",
                ) == Some(0.0)
        },
        "the controller and the ENA counters",
    );

    // The counter rises: the target drops within two intervals.
    set_bw_in_drops(&dir, 10);
    let rose = Instant::now();
    wait_for(Duration::from_secs(3), || target().is_some_and(|t| t < 1e9), "a cut");
    let reaction = rose.elapsed();
    assert!(
        reaction <= Duration::from_millis(2 * 500 + 100),
        "the cut took {reaction:?}: more than two intervals"
    );
    assert_eq!(target(), Some(0.7e9));
    // It keeps rising for two seconds: cut after cut, down to the floor.
    for drops in 2..=5 {
        std::thread::sleep(Duration::from_millis(500));
        set_bw_in_drops(&dir, drops * 10);
    }
    std::thread::sleep(Duration::from_millis(700));
    let low = target().unwrap();
    assert!(low <= 0.7f64.powi(3) * 1e9, "{low}");
    assert!(low >= 0.2e9, "never below the floor: {low}");
    let expected = if dry_run { 1e9 } else { low };
    assert_eq!(limit("download"), Some(expected));
    assert_eq!(limit("upload"), Some(1e9), "bw_in drops concern downloads only");

    // Quiet again: back to the ceiling by steps of 25 %.
    wait_for(Duration::from_secs(5), || target() == Some(1e9), "recovery");
    assert_eq!(limit("download"), Some(1e9));
    let metrics = agent.metrics();
    let decisions = |decision: &str| {
        value(
            &metrics,
            &format!(
                "hostwatch_shaper_adaptive_decisions_total{{policy=\"s3\",direction=\"download\",decision=\"{decision}\"}}"
            ),
        )
        .unwrap()
    };
    assert!(decisions("decrease") >= 4.0 && decisions("increase") >= 3.0);
    assert_eq!(
        value(&metrics, "hostwatch_shaper_adaptive_dry_run"),
        Some(if dry_run { 1.0 } else { 0.0 })
    );
    let logs = agent.logs();
    let line = if dry_run {
        "adaptive rate: would change (dry run)"
    } else {
        "adaptive rate changed"
    };
    assert!(logs.contains(line), "{logs}");
    assert!(logs.contains("ENA bandwidth allowance exceeded"));

    // Every family the proxy exports is documented.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for family in metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| name.starts_with("hostwatch_shaper_"))
    {
        assert!(
            readme.contains(&format!("`{family}`")),
            "README.md does not list {family}"
        );
    }
}

#[test]
fn adaptive_rate_follows_the_ena_counters() {
    adaptive(false);
}

#[test]
fn adaptive_dry_run_only_says_what_it_would_do() {
    adaptive(true);
}

// ---------------------------------------------------------------------------
// Loopback: forwarding, tunnels, bad input, limits, life cycle (no root).

/// An upstream that streams bytes to every connection until it goes away
/// (at most 256 MiB each); says on the channel when a connection has gone.
fn streaming_upstream() -> (u16, Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (gone, ended) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let gone = gone.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let chunk = [0x5a_u8; 65536];
                for _ in 0..4096 {
                    if stream.write_all(&chunk).is_err() {
                        let _ = gone.send(());
                        return;
                    }
                }
            });
        }
    });
    (port, ended)
}

/// An upstream that echoes what it receives.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

/// A plain HTTP origin: answers each request with `size` bytes and keeps
/// the heads it was sent.
fn http_upstream(size: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                while reader.read_line(&mut head).unwrap_or(0) > 2 {}
                seen.lock().unwrap().push(head);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: keep-alive\r\n\r\n"
                );
                let _ = stream.write_all(&vec![b'x'; size]);
            });
        }
    });
    (port, heads)
}

/// The agent with the proxy on loopback. No GIL probes: the tests time the
/// agent's stop, and the kernel takes half a second to release each Python
/// process's probes (this host runs the test's own Python processes).
fn loopback_agent(dir: &TempDir, ports: &[u16], extra: &str) -> (Agent, u16) {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.python]\nenabled = false\n[collectors.stalls]\nenabled = false\n\
             [shaping]\nenabled = true\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = 2048\n\
             ports = [{}]\n{extra}\n\
             [[shaping.policy]]\nname = \"local\"\nhosts = [\"127.0.0.1\"]\ndownload = \"80Mbit\"\nupload = \"80Mbit\"\n",
            ports.join(", ")
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    agent.wait_ready();
    let port = agent.proxy_port();
    (agent, port)
}

/// Sends `raw` to the proxy and returns its whole answer.
fn ask(port: u16, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("none")
}

/// Opens a CONNECT tunnel; returns the stream after the proxy's 200.
fn tunnel(port: u16, target: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n"
    )
    .unwrap();
    let expected = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut answer = vec![0u8; expected.len()];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer, expected);
    stream
}

#[test]
fn tunnels_and_forwarding_are_paced_on_loopback() {
    let dir = TempDir::new("shaper-loopback");
    let (stream, _) = streaming_upstream();
    let (http, heads) = http_upstream(4 << 20);
    let (agent, port) = loopback_agent(&dir, &[stream, http], "");

    // A CONNECT tunnel at 80 Mbit/s: 10 MB/s over two seconds, never more
    // than 5 % above. Below is scheduling, not behaviour: this VM's
    // hypervisor starves the pacer now and then, for seconds on end (53
    // Mbit/s in a CI run with nothing beside it, 64 with a build beside it,
    // 51 to 54 in three windows in a row in another). The floor catches a
    // pacer that loses a third of its tokens, the way a millisecond timer
    // did, which no window escapes; so the rate is measured over up to five
    // windows until one reaches it, each checked against the limit.
    // bench/s3_proxy_vs_sdk.py measures how close it comes.
    let mut client = tunnel(port, stream);
    let mut buf = vec![0u8; 65536];
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();
    let mut rates = Vec::new();
    while rates.len() < 5 && !rates.iter().any(|&rate| rate >= 80e6 * 0.7) {
        let start = Instant::now();
        let mut bytes = 0;
        while start.elapsed() < Duration::from_secs(2) {
            bytes += client.read(&mut buf).unwrap();
        }
        let rate = bytes as f64 * 8.0 / start.elapsed().as_secs_f64();
        eprintln!("{rate:.0} bit/s through the tunnel paced at 80 Mbit/s");
        assert!(
            rate <= 80e6 * 1.05,
            "{rate:.0} bit/s through the tunnel: above the limit"
        );
        rates.push(rate);
    }
    assert!(
        rates.iter().any(|&rate| rate >= 80e6 * 0.7),
        "{rates:.0?} bit/s through the tunnel: the pacer lost tokens"
    );
    // Both of the proxy's sockets of this tunnel run cubic, whatever the
    // host's default: client and upstream are on loopback.
    let client_port = client.local_addr().unwrap().port();
    for (what, filter) in [
        ("client", format!("( sport = :{port} and dport = :{client_port} )")),
        ("upstream", format!("( dport = :{stream} )")),
    ] {
        let algorithms = congestion_control(&filter);
        assert!(
            !algorithms.is_empty() && algorithms.iter().all(|a| a == "cubic"),
            "the proxy's {what} socket ({filter}): {algorithms:?}"
        );
    }
    drop(client);

    // Plain HTTP: the origin gets an origin-form request without the
    // proxy's headers, the client a response that closes.
    let answer = ask(
        port,
        format!(
            "GET http://127.0.0.1:{http}/bucket/key?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\nProxy-Connection: keep-alive\r\n\r\n"
        )
        .as_bytes(),
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(status(head), "200");
    assert!(
        head.contains("Connection: close") && !head.contains("keep-alive"),
        "{head}"
    );
    assert_eq!(body.len(), 4 << 20);
    let seen = heads.lock().unwrap().clone();
    assert!(seen[0].starts_with("GET /bucket/key?x=1 HTTP/1.1\r\n"), "{seen:?}");
    assert!(!seen[0].to_ascii_lowercase().contains("proxy-connection"), "{seen:?}");

    let metrics = agent.metrics();
    agent.wait_until(
        Duration::from_secs(3),
        || value(&agent.metrics(), "hostwatch_shaper_connections_total{policy=\"local\"}") == Some(2.0),
        "two connections counted",
    );
    assert!(value(&metrics, "hostwatch_shaper_refusals_total{reason=\"busy\"}") == Some(0.0));
}

#[test]
fn bad_input_is_refused_and_the_proxy_carries_on() {
    let dir = TempDir::new("shaper-bad");
    let (stream, _) = streaming_upstream();
    let echo = echo_upstream();
    let closed = free_port();
    let (agent, port) = loopback_agent(&dir, &[stream, echo, closed], "header_timeout = \"1s\"");

    for malformed in [
        "CONNECT\r\n\r\n".to_owned(),
        "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n".to_owned(),
        format!("CONNECT 127.0.0.1:{echo}x HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{echo} HTTP/1.1 extra\r\n\r\n"),
        format!("CONNECT user@127.0.0.1:{echo} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{echo} HTTP/9.9\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nBad Header: 1\r\n\r\n"),
        "GET /relative HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "\u{16}\u{3}\u{1}\u{0}\u{a5}\u{1}\r\n\r\n".to_owned(),
    ] {
        assert_eq!(status(&ask(port, malformed.as_bytes())), "400", "{malformed:?}");
    }
    let huge = format!(
        "CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(4096)
    );
    assert_eq!(status(&ask(port, huge.as_bytes())), "431");
    assert_eq!(status(&ask(port, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")), "403");
    assert_eq!(status(&ask(port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n")), "403");
    assert_eq!(status(&ask(port, b"GET http://127.0.0.1:22/ HTTP/1.1\r\n\r\n")), "403");
    // Nothing listens there: the upstream refuses.
    assert_eq!(
        status(&ask(
            port,
            format!("CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n").as_bytes()
        )),
        "502"
    );
    // Half a head, then silence: 408 after the header timeout (1 s).
    let started = Instant::now();
    assert_eq!(status(&ask(port, b"CONNECT 127.0.0.1:")), "408");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Clients vanishing mid-transfer, in both directions.
    for _ in 0..10 {
        let mut client = tunnel(port, stream);
        let mut buf = vec![0u8; 100_000];
        client.read_exact(&mut buf).unwrap();
        drop(client);
        let mut client = tunnel(port, echo);
        client.write_all(&[1u8; 50_000]).unwrap();
        drop(client);
    }
    agent.wait_until(
        Duration::from_secs(10),
        || value(&agent.metrics(), "hostwatch_shaper_open_connections{policy=\"local\"}") == Some(0.0),
        "every tunnel closed",
    );
    let refusals = [
        ("malformed", 9.0),
        ("head_too_large", 1.0),
        ("forbidden_host", 1.0),
        ("forbidden_port", 2.0),
        ("upstream_unreachable", 1.0),
        ("head_timeout", 1.0),
    ];
    let counted = |metrics: &str| {
        refusals.iter().all(|(reason, count)| {
            value(
                metrics,
                &format!("hostwatch_shaper_refusals_total{{reason=\"{reason}\"}}"),
            ) == Some(*count)
        })
    };
    // Metrics are published every interval (1 s).
    agent.wait_until(
        Duration::from_secs(3),
        || counted(&agent.metrics()),
        "every refusal counted by reason",
    );

    // And it still works.
    let mut client = tunnel(port, echo);
    client.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(agent.get("/healthz").status, 200);
}

/// 10 000 idle connections against a limit of 4 000: the rest get 503, and
/// the agent's memory stays bounded.
#[test]
fn ten_thousand_idle_connections() {
    let dir = TempDir::new("shaper-idle");
    let echo = echo_upstream();
    let (agent, port) = loopback_agent(&dir, &[echo], "max_connections = 4000\nheader_timeout = \"5m\"");
    let before = agent.rss_bytes();
    let mut helper = Command::new("python3")
        .arg(repo_root().join("tests/traffic/idle_connections.py"))
        .args(["--port", &port.to_string(), "--count", "10000", "--hold", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(helper.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding");
    std::thread::sleep(Duration::from_secs(1));
    let during = agent.rss_bytes();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(helper.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    eprintln!("{report}; agent RSS {before} B before, {during} B holding them");
    assert_eq!(report["opened"], 10000, "{report}");
    assert_eq!(
        report["silent"], 4000,
        "the limit's worth wait for their head: {report}"
    );
    assert_eq!(report["refused_503"], 6000, "{report}");
    assert!(during - before < 64 << 20, "RSS grew by {} B", during - before);
    let busy = value(&agent.metrics(), "hostwatch_shaper_refusals_total{reason=\"busy\"}");
    agent.wait_until(
        Duration::from_secs(3),
        || value(&agent.metrics(), "hostwatch_shaper_refusals_total{reason=\"busy\"}") == Some(6000.0),
        &format!("6000 refusals counted (was {busy:?})"),
    );
    // Freed again.
    let mut client = tunnel(port, echo);
    client.write_all(b"ok").unwrap();
    let mut back = [0u8; 2];
    client.read_exact(&mut back).unwrap();
}

#[test]
fn the_proxy_is_off_by_default_and_stops_with_the_agent() {
    let plain = Agent::start(&[], &[]);
    plain.wait_ready();
    assert!(!plain.metrics().contains("hostwatch_shaper_"));

    let dir = TempDir::new("shaper-stop");
    let echo = echo_upstream();
    let (mut agent, port) = loopback_agent(&dir, &[echo], "");
    let mut client = tunnel(port, echo);
    client.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    client.read_exact(&mut back).unwrap();
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(2)).is_some_and(|s| s.success()));
    // The tunnel is closed and nothing listens any more.
    let mut rest = Vec::new();
    let closed = matches!(client.read_to_end(&mut rest), Ok(0) | Err(_));
    assert!(closed, "the tunnel outlived the agent");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(agent.logs().contains("shaping proxy stopped"));
}

/// The BPF programs a process holds, as `bpftool prog show` lists them.
fn bpf_programs_of(pid: u32) -> usize {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap();
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    programs
        .iter()
        .filter(|p| {
            p["pids"]
                .as_array()
                .is_some_and(|pids| pids.iter().any(|owner| owner["pid"] == pid))
        })
        .count()
}

#[test]
fn kill_9_while_shaping_then_restart() {
    let dir = TempDir::new("shaper-kill");
    let (stream, ended) = streaming_upstream();
    let (mut agent, port) = loopback_agent(&dir, &[stream], "");
    let mut client = tunnel(port, stream);
    let mut flowing = vec![0u8; 1 << 20];
    client.read_exact(&mut flowing).unwrap();
    let pid = agent.pid();
    // Root: the eBPF collectors hold programs too; none may outlive the agent.
    let holds_bpf = is_root() && bpf_programs_of(pid) > 0;

    agent.signal("KILL");
    let killed = Instant::now();
    assert!(
        agent.wait_exit(Duration::from_secs(2)).is_some(),
        "kill -9 did not end the agent"
    );

    // Not black-holed: the client's tunnel ends at once (EOF or reset, after
    // whatever was in flight) instead of hanging until its read timeout...
    let mut buf = vec![0u8; 65536];
    let end = loop {
        match client.read(&mut buf) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(error) => break Some(error.kind()),
        }
    };
    assert!(
        !matches!(end, Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the tunnel hung after the agent died: {end:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "the tunnel took {:?} to end",
        killed.elapsed()
    );
    // ... the upstream's side of it is closed too, not left half-open...
    ended
        .recv_timeout(Duration::from_secs(2))
        .expect("the upstream connection outlived the agent");
    // ... and new clients are refused, not left waiting, while it is down.
    let refused = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1));
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    if holds_bpf {
        wait_for(
            Duration::from_secs(5),
            || bpf_programs_of(pid) == 0,
            "the killed agent's BPF programs released",
        );
    }

    // Restarted on the port it had: it takes it back although the killed
    // agent's connections are in TIME_WAIT, and shapes again.
    let config = dir.join("hostwatch.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))).unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    agent.wait_ready();
    assert!(
        agent.logs().contains("shaping proxy started"),
        "the restarted agent did not take the proxy port back:\n{}",
        agent.logs()
    );
    let mut client = tunnel(port, stream);
    client.read_exact(&mut flowing).unwrap();
    agent.wait_until(
        Duration::from_secs(3),
        || value(&agent.metrics(), "hostwatch_shaper_connections_total{policy=\"local\"}") == Some(1.0),
        "the new tunnel counted by the restarted proxy",
    );
}
