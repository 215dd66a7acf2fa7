//! The daemon's life cycle and isolation, end to end: signals, reload,
//! systemd notifications, hung collectors, and a bounded endpoint.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Agent, TempDir, fixture, value};

#[test]
fn sigterm_stops_within_two_seconds() {
    let mut agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(2)).expect("stopped within 2 s");
    assert!(status.success(), "{status}");
}

#[test]
fn routes_and_methods() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    assert_eq!(agent.get("/healthz").status, 200);
    assert_eq!(agent.get("/readyz").text(), "ready\n");
    assert_eq!(agent.get("/nope").status, 404);
    let post = support::request(agent.addr, "POST", "/metrics", &[("Content-Length", "0")]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(support::request(agent.addr, "DELETE", "/healthz", &[]).status, 405);
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_an_invalid_one() {
    let dir = TempDir::new("reload");
    let config = dir.write("hostwatch.toml", "[collectors.memory]\nenabled = true\n");
    let root = fixture("basic");
    let (procfs, sysfs) = (root.join("proc"), root.join("sys"));
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--path.procfs",
            procfs.to_str().unwrap(),
            "--path.sysfs",
            sysfs.to_str().unwrap(),
        ],
        &[],
    );
    agent.wait_ready();
    assert!(agent.metrics().contains("hostwatch_memory_total_bytes "));

    std::fs::write(&config, "[collectors.memory]\nenabled = false\n").unwrap();
    agent.signal("HUP");
    agent.wait_until(
        Duration::from_secs(5),
        || value(&agent.metrics(), "hostwatch_config_reloads_total") == Some(1.0),
        "reload",
    );
    let text = agent.metrics();
    assert!(
        !text.contains("hostwatch_memory_total_bytes "),
        "memory disabled after reload:\n{text}"
    );
    assert!(
        !text.contains("collector=\"memory\""),
        "no stale self metrics for a disabled collector"
    );
    assert_eq!(value(&text, "hostwatch_collector_up{collector=\"cpu\"}"), Some(1.0));

    std::fs::write(&config, "[collectors.memory]\nenabled = maybe\n").unwrap();
    agent.signal("HUP");
    agent.wait_until(
        Duration::from_secs(5),
        || value(&agent.metrics(), "hostwatch_config_reload_failures_total") == Some(1.0),
        "refused reload",
    );
    let text = agent.metrics();
    assert_eq!(value(&text, "hostwatch_config_reloads_total"), Some(1.0));
    assert!(
        !text.contains("hostwatch_memory_total_bytes "),
        "old config still running"
    );
    assert_eq!(agent.get("/healthz").status, 200);
    assert!(agent.logs().contains("config reload refused"), "{}", agent.logs());
}

#[test]
fn systemd_ready_then_watchdog_pings() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let root = fixture("basic");
    let procfs = root.join("proc");
    let agent = Agent::start(
        &["--path.procfs", procfs.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while messages.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "messages so far: {messages:?}"
        );
        let n = socket.recv(&mut buf).unwrap();
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .expect("READY=1 sent");
    let first_ping = messages.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
    assert_eq!(ready, 0, "READY comes first: {messages:?}");
    assert!(first_ping > ready);
    assert_eq!(agent.get("/readyz").status, 200, "ready means first collection done");
}

/// A FIFO with no writer blocks `open` forever, like a hung NFS or a wedged
/// driver file: the memory collector must time out while the others report,
/// and the agent must still stop promptly.
#[test]
fn a_hung_collector_is_isolated_and_does_not_block_stop() {
    let dir = TempDir::new("hung");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(fixture("basic").join("proc"))
        .arg(dir.join("proc"))
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_file(dir.join("proc/meminfo")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("proc/meminfo"))
            .status()
            .unwrap()
            .success()
    );
    let config = dir.write(
        "hostwatch.toml",
        "[collectors.memory]\ntimeout = \"200ms\"\ninterval = \"300ms\"\n",
    );
    let mut agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--path.procfs",
            dir.join("proc").to_str().unwrap(),
        ],
        &[],
    );
    // Building the collector opens the file too, so the very first attempt hangs.
    agent.wait_ready();
    agent.wait_until(
        Duration::from_secs(5),
        || {
            value(
                &agent.metrics(),
                "hostwatch_collector_errors_total{collector=\"memory\",kind=\"timeout\"}",
            ) == Some(1.0)
        },
        "memory timeout counted",
    );
    let started = Instant::now();
    let scrape = agent.metrics();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a scrape never waits on a collection"
    );
    assert_eq!(
        value(&scrape, "hostwatch_collector_up{collector=\"memory\"}"),
        Some(0.0)
    );
    assert_eq!(value(&scrape, "hostwatch_collector_up{collector=\"cpu\"}"), Some(1.0));
    assert!(value(&scrape, "hostwatch_cpu_seconds_total{cpu=\"1\",mode=\"system\"}").is_some());
    // The hung thread is never doubled up: still one timeout after several intervals.
    std::thread::sleep(Duration::from_millis(1000));
    let later = agent.metrics();
    assert_eq!(
        value(
            &later,
            "hostwatch_collector_errors_total{collector=\"memory\",kind=\"timeout\"}"
        ),
        Some(1.0)
    );

    agent.signal("TERM");
    assert!(
        agent.wait_exit(Duration::from_secs(2)).is_some_and(|s| s.success()),
        "stopped within 2 s"
    );
}

#[test]
fn slow_clients_are_cut_off_and_excess_connections_refused() {
    let dir = TempDir::new("bounded");
    let config = dir.write(
        "hostwatch.toml",
        "[http]\nheader_timeout = \"500ms\"\nmax_connections = 4\n",
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();

    // Slowloris: half a request head, then silence. The server closes the connection.
    let mut slow = TcpStream::connect(agent.addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = slow.read_to_end(&mut sink);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after the header timeout, took {:?}",
        start.elapsed()
    );

    // Hold every connection slot with idle clients; the next one gets 503.
    let holders: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(agent.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let refused = agent.get("/metrics");
    assert_eq!(refused.status, 503);
    // One that sends nothing gets its 503 all the same, once the wait for
    // its request head is over.
    let mut silent = TcpStream::connect(agent.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = Vec::new();
    let _ = silent.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(holders);
    agent.wait_until(
        Duration::from_secs(3),
        || agent.get("/healthz").status == 200,
        "slots freed",
    );
}

#[test]
fn a_thousand_concurrent_scrapes_stay_bounded() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let before = agent.rss_bytes();
    let addr = agent.addr;
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut raw = Vec::new();
                stream.read_to_end(&mut raw).ok()?;
                Some(support::parse_response(&raw).status)
            })
        })
        .collect();
    let statuses: Vec<Option<u16>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    let busy = statuses.iter().filter(|s| **s == Some(503)).count();
    assert_eq!(ok + busy, 1000, "every scrape answered 200 or 503: {statuses:?}");
    assert!(ok >= 500, "most scrapes served: {ok}");
    let after = agent.rss_bytes();
    assert!(
        after < before + 64 * 1024 * 1024,
        "resident memory grew from {before} to {after}"
    );
    assert_eq!(agent.get("/metrics").status, 200, "still serving");
}

/// Reading /proc/PID/smaps makes the kernel walk the target's page tables
/// under its mmap_lock and stalls it (DESIGN.md): the agent must never open
/// one. strace sees every file the real agent opens on this real host.
#[test]
fn never_opens_smaps() {
    let strace = support::require_program("strace");
    let dir = TempDir::new("strace");
    let trace = dir.join("trace");
    let status = Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
        .arg(&trace)
        .args([
            "timeout",
            "--preserve-status",
            "-s",
            "TERM",
            "3",
            support::bin(),
            "run",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "agent ran and stopped cleanly under strace: {status}");
    let opened = std::fs::read_to_string(&trace).unwrap();
    assert!(
        opened.contains("\"/proc/stat\""),
        "strace saw the collectors' reads:\n{opened}"
    );
    assert!(opened.contains("\"/proc/net/dev\""));
    let smaps: Vec<&str> = opened.lines().filter(|line| line.contains("smaps")).collect();
    assert!(smaps.is_empty(), "smaps opened: {smaps:?}");
}

/// A burst of SIGHUPs with alternating valid and invalid configs: the agent
/// stays up and serving, never runs an invalid config, and ends on the last
/// valid one.
#[test]
fn a_burst_of_sighups_with_alternating_configs() {
    let dir = TempDir::new("hup-burst");
    let config = dir.write("hostwatch.toml", "");
    let root = fixture("basic");
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--path.procfs",
            root.join("proc").to_str().unwrap(),
        ],
        &[],
    );
    agent.wait_ready();
    for round in 0..20 {
        let text = if round % 2 == 0 {
            "[collectors.memory]\nenabled = false\n"
        } else {
            "[collectors.memory]\nenabled = nope\n"
        };
        std::fs::write(&config, text).unwrap();
        agent.signal("HUP");
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(agent.get("/healthz").status, 200, "round {round}");
    }
    std::fs::write(
        &config,
        "[collectors.memory]\nenabled = false\n[collectors.cpu]\nenabled = false\n",
    )
    .unwrap();
    agent.signal("HUP");
    agent.wait_until(
        Duration::from_secs(5),
        || {
            let text = agent.metrics();
            !text.contains("hostwatch_cpu_seconds_total") && !text.contains("hostwatch_memory_total_bytes")
        },
        "the last valid config applied",
    );
    let text = agent.metrics();
    let applied = value(&text, "hostwatch_config_reloads_total").unwrap();
    let refused = value(&text, "hostwatch_config_reload_failures_total").unwrap();
    assert!(applied >= 1.0 && refused >= 1.0, "applied {applied}, refused {refused}");
    assert!(
        text.contains("hostwatch_collector_up{collector=\"netdev\"} 1"),
        "the rest kept running:\n{text}"
    );
}
