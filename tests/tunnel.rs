//! Compression tunnels end to end: two real agents, the client in this
//! network namespace and the server in one the test creates, joined by a
//! veth pair whose byte counters say what crossed. Applications are this
//! process's threads: the source here, the sink inside the namespace (a
//! thread that entered it). As root; without root the namespace tests say
//! why and return. The near-allowance test needs no root: both agents on
//! loopback.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::netns::{TestNet, require_root};
use support::{Agent, TempDir, congestion_control, free_port, value, wait_for};

/// The exposition of an agent inside `net`.
fn metrics_inside(net: &TestNet, agent: &Agent) -> String {
    net.get(agent.addr, "/metrics").text()
}

/// The agent config of one tunnel entry; the eBPF collectors stay off so the
/// agents cost what the tunnels cost, and stop as fast as the tunnels do (the
/// kernel takes half a second to release each Python process's GIL probes).
fn tunnel_config(dir: &TempDir, file: &str, extra: &str, entry: &str) -> String {
    let path = dir.write(
        file,
        &format!(
            "[collectors.netburst]\nenabled = false\n[collectors.python]\nenabled = false\n\
             [collectors.stalls]\nenabled = false\n\n{extra}\n[[compression.tunnel]]\n{entry}"
        ),
    );
    path.to_str().unwrap().to_owned()
}

/// Two agents: a server tunnel inside `net` forwarding to `target` (an
/// address inside the namespace), and a client tunnel here in `mode`.
/// Returns both agents and the client tunnel's address.
fn agents(net: &TestNet, dir: &TempDir, mode: &str, target: SocketAddr) -> (Agent, Agent, SocketAddr, SocketAddr) {
    let relay: SocketAddr = format!("{}:{}", net.there, 7401).parse().unwrap();
    let server_config = tunnel_config(
        dir,
        "server.toml",
        "",
        &format!("name = \"bulk\"\nside = \"server\"\nlisten = \"{relay}\"\nconnect = \"{target}\"\n"),
    );
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &net.netns, support::bin()]);
    command.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--config",
        &server_config,
    ]);
    command.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
    let server = Agent::from_command(command);

    let entry: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let client_config = tunnel_config(
        dir,
        "client.toml",
        "",
        &format!(
            "name = \"bulk\"\nside = \"client\"\nlisten = \"{entry}\"\nconnect = \"{relay}\"\nmode = \"{mode}\"\n"
        ),
    );
    let client = Agent::start(&["--config", &client_config], &[]);
    let up = "hostwatch_compression_tunnel_up{tunnel=\"bulk\"}";
    wait_for(
        Duration::from_secs(10),
        || value(&metrics_inside(net, &server), up) == Some(1.0) && value(&client.metrics(), up) == Some(1.0),
        "both tunnels listening",
    );
    (server, client, entry, relay)
}

/// A sink inside the namespace at `host` (its loopback or veth address):
/// for each connection, reads to the end, answers "SHA256HEX BYTES\n" and
/// closes. Returns its address and, per connection, what it answered, or
/// "cut: ERROR" when the stream was cut.
fn sink(net: &TestNet, host: &str) -> (SocketAddr, Receiver<String>) {
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let (answers, answered) = std::sync::mpsc::channel();
    let host = host.to_owned();
    net.inside(move || {
        let listener = TcpListener::bind((host.as_str(), 0)).unwrap();
        address_tx.send(listener.local_addr().unwrap()).unwrap();
        serve(listener, answers);
    });
    (address_rx.recv_timeout(Duration::from_secs(5)).unwrap(), answered)
}

/// The sink's loop; serves until the test process ends.
fn serve(listener: TcpListener, answers: Sender<String>) {
    for stream in listener.incoming() {
        let (mut stream, answers) = (stream.unwrap(), answers.clone());
        std::thread::spawn(move || {
            let answer = match hash_stream(&mut stream) {
                Ok((digest, bytes)) => {
                    let answer = format!("{digest} {bytes}\n");
                    stream.write_all(answer.as_bytes()).unwrap();
                    answer
                }
                Err(error) => format!("cut: {error}"),
            };
            let _ = answers.send(answer);
        });
    }
}

fn hash_stream(stream: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

fn answer(answered: &Receiver<String>) -> String {
    answered.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// xorshift64: fast, deterministic, and incompressible enough for lz4.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A pool of JSON log lines as a storage node writes them: timestamps,
/// levels, services, object keys, sizes, latencies and a random request id.
/// Large enough (about 4 MiB) that a 64 KiB chunk rarely repeats a line.
fn log_pool() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let levels = ["info", "info", "info", "debug", "warn", "error"];
    let services = ["storage-node", "replicator", "scrubber", "api-gateway"];
    let messages = [
        "chunk stored",
        "chunk replicated to peer",
        "checksum verified",
        "request served",
        "slow disk write",
        "retrying upload part",
    ];
    let buckets = ["backups-eu-west-1", "ml-datasets", "logs-archive", "user-uploads"];
    (0..20_000)
        .map(|i| {
            let r = rng.next();
            format!(
                "{{\"ts\":\"2026-11-25T10:{:02}:{:02}.{:06}Z\",\"level\":\"{}\",\"service\":\"{}\",\"host\":\"ip-10-0-{}-{}\",\"msg\":\"{}\",\"bucket\":\"{}\",\"key\":\"db/2026/11/25/part-{:06}.parquet\",\"bytes\":{},\"latency_ms\":{}.{},\"request_id\":\"{:08x}\"}}\n",
                (i / 600) % 60,
                (i / 10) % 60,
                r % 1_000_000,
                levels[(r >> 20) as usize % levels.len()],
                services[(r >> 24) as usize % services.len()],
                (r >> 28) % 4,
                (r >> 30) % 250,
                messages[(r >> 38) as usize % messages.len()],
                buckets[(r >> 41) as usize % buckets.len()],
                i,
                4096 << ((r >> 44) % 12),
                (r >> 48) % 200,
                (r >> 56) % 10,
                rng.next() as u32,
            )
            .into_bytes()
        })
        .collect()
}

/// Streams `total` bytes from `fill` (which writes the next piece into a
/// buffer) to `to`, hashing as it goes; then half-closes and reads the
/// sink's answer. Nothing is held beyond one 256 KiB buffer.
fn send(to: SocketAddr, total: u64, mut fill: impl FnMut(&mut Vec<u8>)) -> (String, String) {
    let mut stream = TcpStream::connect(to).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut hasher = Sha256::new();
    let mut buffer = Vec::with_capacity(512 * 1024);
    let mut sent = 0u64;
    while sent < total {
        buffer.clear();
        while buffer.len() < 256 * 1024 {
            fill(&mut buffer);
        }
        buffer.truncate(usize::try_from(total - sent).unwrap_or(usize::MAX).min(buffer.len()));
        hasher.update(&buffer);
        stream.write_all(&buffer).unwrap();
        sent += buffer.len() as u64;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    // The sink closed after answering: the end of stream came back too.
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    (hex(&hasher.finalize()), answer)
}

fn logs(pool: &[Vec<u8>]) -> impl FnMut(&mut Vec<u8>) + '_ {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    move |buffer| buffer.extend_from_slice(&pool[rng.next() as usize % pool.len()])
}

fn noise() -> impl FnMut(&mut Vec<u8>) {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    move |buffer| {
        for _ in 0..1024 {
            buffer.extend_from_slice(&rng.next().to_le_bytes());
        }
    }
}

const GIB: u64 = 1 << 30;

/// 1 GiB of generated JSON logs through the tunnel: identical sha256 at the
/// sink, at least 3x fewer bytes on the veth (both directions, headers and
/// acks included) than the logs themselves; the sink's answer and close come
/// back through the half-closed connection.
#[test]
fn a_gib_of_logs_crosses_compressed_and_intact() {
    require_root!("to create network namespaces");
    let dir = TempDir::new("tunnel-logs");
    let net = TestNet::new("l");
    let (target, answered) = sink(&net, "127.0.0.1");
    let (server, client, entry, _) = agents(&net, &dir, "always", target);
    let pool = log_pool();

    let before = net.veth_bytes();
    let start = Instant::now();
    let (digest, answer) = send(entry, GIB, logs(&pool));
    let elapsed = start.elapsed();
    let veth = net.veth_bytes() - before;

    assert_eq!(answer, format!("{digest} {GIB}\n"), "the sink got every byte, in order");
    assert_eq!(self::answer(&answered), answer);
    let ratio = GIB as f64 / veth as f64;
    eprintln!(
        "1 GiB of logs: {veth} bytes on the veth ({ratio:.2}x fewer), {:.1} s, {:.0} MiB/s",
        elapsed.as_secs_f64(),
        GIB as f64 / elapsed.as_secs_f64() / (1 << 20) as f64
    );
    assert!(ratio >= 3.0, "only {ratio:.2}x fewer bytes on the veth");

    let raw = "hostwatch_compression_bytes_total{tunnel=\"bulk\",side=\"raw\"}";
    let wire = "hostwatch_compression_bytes_total{tunnel=\"bulk\",side=\"wire\"}";
    let lz4 = "hostwatch_compression_connections_total{tunnel=\"bulk\",mode=\"lz4\"}";
    let cpu = "hostwatch_compression_cpu_seconds_total{tunnel=\"bulk\"}";
    let expected_raw = (GIB + answer.len() as u64) as f64;
    // Each side counts a connection's bytes as its relay moves them, and the
    // server's may still be behind when the client's are complete.
    wait_for(
        Duration::from_secs(5),
        || value(&client.metrics(), raw) == Some(expected_raw),
        "the client's counters",
    );
    wait_for(
        Duration::from_secs(5),
        || value(&metrics_inside(&net, &server), raw) == Some(expected_raw),
        "the server's counters",
    );
    let (client_text, server_text) = (client.metrics(), metrics_inside(&net, &server));
    for text in [&client_text, &server_text] {
        assert_eq!(value(text, lz4), Some(1.0));
        assert_eq!(value(text, raw), Some(expected_raw));
        // The tunnel's own count of the wire is within TCP/IP's overhead of the veth's.
        let wire = value(text, wire).unwrap();
        assert!(
            wire < veth as f64 && wire > veth as f64 * 0.9,
            "wire {wire}, veth {veth}"
        );
    }
    eprintln!(
        "CPU in lz4: client {:.2} s (compressing), server {:.2} s (decompressing)",
        value(&client_text, cpu).unwrap(),
        value(&server_text, cpu).unwrap()
    );
    assert!(value(&client_text, cpu).unwrap() > 0.0);
}

/// Random data: the tunnel adds at most 0.5 % on the veth over the same
/// bytes sent directly; and intact.
#[test]
fn random_data_grows_by_at_most_half_a_percent() {
    require_root!("to create network namespaces");
    const TOTAL: u64 = 256 << 20;
    let dir = TempDir::new("tunnel-random");
    let net = TestNet::new("n");

    // Directly to a sink on the namespace's veth address.
    let (direct_sink, _) = sink(&net, &net.there);
    let before = net.veth_bytes();
    let (digest, answer) = send(direct_sink, TOTAL, noise());
    let direct = net.veth_bytes() - before;
    assert_eq!(answer, format!("{digest} {TOTAL}\n"));

    let (target, _) = sink(&net, "127.0.0.1");
    let (_server, client, entry, _) = agents(&net, &dir, "always", target);
    let before = net.veth_bytes();
    let (tunnel_digest, answer) = send(entry, TOTAL, noise());
    let tunneled = net.veth_bytes() - before;
    assert_eq!(tunnel_digest, digest, "the same data both times");
    assert_eq!(answer, format!("{digest} {TOTAL}\n"));

    let growth = tunneled as f64 / direct as f64 - 1.0;
    eprintln!(
        "256 MiB random: {direct} bytes on the veth directly, {tunneled} through the tunnel ({:+.3} %)",
        growth * 100.0
    );
    assert!(growth <= 0.005, "the tunnel added {:.3} %", growth * 100.0);
    let text = client.metrics();
    let raw = value(&text, "hostwatch_compression_bytes_total{tunnel=\"bulk\",side=\"raw\"}").unwrap();
    let wire = value(
        &text,
        "hostwatch_compression_bytes_total{tunnel=\"bulk\",side=\"wire\"}",
    )
    .unwrap();
    assert!(wire <= raw * 1.005, "framing: {wire} wire bytes for {raw}");
}

/// Corrupt frames sent straight at the server tunnel: each is counted and
/// cuts only its own connection (the target sees it cut, not ended); the
/// agent and the tunnel carry on.
#[test]
fn corrupt_frames_are_counted_and_the_agent_survives() {
    require_root!("to create network namespaces");
    let dir = TempDir::new("tunnel-corrupt");
    let net = TestNet::new("c");
    let (target, answered) = sink(&net, "127.0.0.1");
    let (server, _client, entry, relay) = agents(&net, &dir, "always", target);

    for attempt in 0..3u8 {
        let mut forged = TcpStream::connect(relay).unwrap();
        forged.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A valid header asking for lz4, then a frame of junk.
        forged.write_all(b"HWT\x01\x01").unwrap();
        forged.write_all(&64u32.to_le_bytes()).unwrap();
        forged.write_all(&[attempt; 64]).unwrap();
        let mut rest = Vec::new();
        let read = forged.read_to_end(&mut rest);
        assert!(read.is_err() || rest.is_empty(), "nothing comes back: {read:?}");
        let cut = answer(&answered);
        assert!(cut.starts_with("cut: "), "the target saw the stream cut: {cut}");
    }
    let corrupt = "hostwatch_compression_corrupt_frames_total{tunnel=\"bulk\"}";
    wait_for(
        Duration::from_secs(5),
        || value(&metrics_inside(&net, &server), corrupt) == Some(3.0),
        "3 corrupt frames counted",
    );
    assert_eq!(net.get(server.addr, "/healthz").status, 200);

    let pool = log_pool();
    let (digest, reply) = send(entry, 8 << 20, logs(&pool));
    assert_eq!(reply, format!("{digest} {}\n", 8 << 20));
    assert_eq!(answer(&answered), reply);
}

/// Mode near_allowance, on loopback (no root needed): connections go raw
/// until an ENA allowance counter rises (the ethtool collector's fixture
/// backend, rewritten mid-test), compressed while it does and for `hold`
/// after, then raw again. Then SIGTERM with a connection open: the agent
/// exits in time and the application sees its stream reset, not ended.
#[test]
fn near_allowance_follows_the_allowance_counters_and_sigterm_stops() {
    let dir = TempDir::new("tunnel-near");
    let fixtures = dir.join("fixtures");
    std::fs::create_dir_all(fixtures.join("eth0")).unwrap();
    for file in ["driver", "statistics"] {
        std::fs::copy(
            support::fixture("ethtool/aws-doc/eth0").join(file),
            fixtures.join("eth0").join(file),
        )
        .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (answers, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || serve(listener, answers));

    let relay: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_config = tunnel_config(
        &dir,
        "server.toml",
        "",
        &format!("name = \"near\"\nside = \"server\"\nlisten = \"{relay}\"\nconnect = \"{target}\"\n"),
    );
    let server = Agent::start(&["--config", &server_config], &[]);
    let entry: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let client_config = tunnel_config(
        &dir,
        "client.toml",
        &format!(
            "[collectors.ethtool]\nfixtures = \"{}\"\ninterval = \"100ms\"\n\n[compression]\nhold = \"5s\"\n",
            fixtures.display()
        ),
        &format!(
            "name = \"near\"\nside = \"client\"\nlisten = \"{entry}\"\nconnect = \"{relay}\"\nmode = \"near_allowance\"\n"
        ),
    );
    let mut client = Agent::start(&["--config", &client_config], &[]);
    let up = "hostwatch_compression_tunnel_up{tunnel=\"near\"}";
    wait_for(
        Duration::from_secs(10),
        || value(&server.metrics(), up) == Some(1.0) && value(&client.metrics(), up) == Some(1.0),
        "both tunnels listening",
    );
    let engaged = "hostwatch_compression_engaged{tunnel=\"near\"}";
    let connections =
        |mode: &str| format!("hostwatch_compression_connections_total{{tunnel=\"near\",mode=\"{mode}\"}}");
    let pool = log_pool();
    let transfer = || {
        let (digest, reply) = send(entry, 4 << 20, logs(&pool));
        assert_eq!(reply, format!("{digest} {}\n", 4 << 20));
        assert_eq!(answer(&answered), reply);
    };

    assert_eq!(value(&client.metrics(), engaged), Some(0.0));
    transfer();
    wait_for(
        Duration::from_secs(3),
        || value(&client.metrics(), &connections("raw")) == Some(1.0),
        "a raw connection",
    );

    let statistics = fixtures.join("eth0/statistics");
    let text = std::fs::read_to_string(&statistics).unwrap();
    std::fs::write(
        &statistics,
        text.replace("bw_out_allowance_exceeded: 0", "bw_out_allowance_exceeded: 17"),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(3),
        || value(&client.metrics(), engaged) == Some(1.0),
        "compression engaged by the rising counter",
    );
    transfer();
    wait_for(
        Duration::from_secs(3),
        || value(&client.metrics(), &connections("lz4")) == Some(1.0),
        "a compressed connection",
    );
    assert_eq!(value(&server.metrics(), &connections("lz4")), Some(1.0));
    // The counter stays at 17: no new rise, and after the hold, raw again.
    wait_for(
        Duration::from_secs(10),
        || value(&client.metrics(), engaged) == Some(0.0),
        "compression released after the hold",
    );

    // The families pass promtool's linter and README names each of them.
    // (Only these: promtool's unit check also flags headroom's bits per second.)
    let exposition: String = client
        .metrics()
        .lines()
        .filter(|line| {
            line.trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ")
                .starts_with("hostwatch_compression_")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    support::promtool_check(&exposition);
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE hostwatch_compression_"))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert_eq!(families.len(), 8, "{families:?}");
    for family in families {
        assert!(
            readme.contains(&format!("`hostwatch_compression_{family}`")),
            "README does not list hostwatch_compression_{family}"
        );
    }

    let mut open = TcpStream::connect(entry).unwrap();
    open.write_all(b"half a request").unwrap();
    wait_for(
        Duration::from_secs(3),
        || {
            value(
                &client.metrics(),
                "hostwatch_compression_open_connections{tunnel=\"near\"}",
            ) == Some(1.0)
        },
        "the connection open",
    );
    // Every leg here is on loopback: each of the agents' sockets of this
    // connection runs cubic, whatever the host's default.
    let open_port = open.local_addr().unwrap().port();
    for (what, filter) in [
        (
            "client side's accepted",
            format!("( sport = :{} and dport = :{open_port} )", entry.port()),
        ),
        (
            "client side's to the server side",
            format!("( dport = :{} )", relay.port()),
        ),
        ("server side's accepted", format!("( sport = :{} )", relay.port())),
        ("server side's to the target", format!("( dport = :{} )", target.port())),
    ] {
        let algorithms = congestion_control(&filter);
        assert!(
            !algorithms.is_empty() && algorithms.iter().all(|a| a == "cubic"),
            "the {what} socket ({filter}): {algorithms:?}"
        );
    }
    client.signal("TERM");
    let status = client.wait_exit(Duration::from_secs(2)).expect("stopped within 2 s");
    assert!(status.success(), "{status:?}");
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let error = open.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    let cut = answer(&answered);
    assert!(cut.starts_with("cut: "), "the target saw the stream cut: {cut}");
}
