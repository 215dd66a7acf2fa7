//! Two tunnel ends and a target on loopback, in one runtime.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn section(text: &str) -> CompressionConfig {
    #[derive(serde::Deserialize)]
    struct Root {
        compression: CompressionConfig,
    }
    toml::from_str::<Root>(text).unwrap().compression
}

struct Pair {
    client: Tunnels,
    server: Tunnels,
    /// Where applications connect.
    entry: SocketAddr,
    /// The server tunnel's address.
    relay: SocketAddr,
    target: TcpListener,
}

/// A client tunnel in `mode` to a server tunnel to a target, all on loopback.
async fn pair(mode: &str, extra: &str) -> Pair {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (entry, relay) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let client = Tunnels::start(&section(&format!(
        "[compression]\n{extra}\n[[compression.tunnel]]\nname = \"c\"\nside = \"client\"\nlisten = \"{entry}\"\nconnect = \"{relay}\"\nmode = \"{mode}\"\n"
    )));
    let server = Tunnels::start(&section(&format!(
        "[[compression.tunnel]]\nname = \"s\"\nside = \"server\"\nlisten = \"{relay}\"\nconnect = \"{}\"\n",
        target.local_addr().unwrap()
    )));
    let pair = Pair {
        client,
        server,
        entry,
        relay,
        target,
    };
    for tunnels in [&pair.client, &pair.server] {
        wait(|| value(tunnels, "hostwatch_compression_tunnel_up", &[name(tunnels)]) == Some(1.0)).await;
    }
    pair
}

fn name(tunnels: &Tunnels) -> &str {
    &tunnels.running[0].config.name
}

fn value(tunnels: &Tunnels, metric: &str, labels: &[&str]) -> Option<f64> {
    tunnels.metrics().get(metric, labels)
}

async fn wait(mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

fn logs(bytes: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 128);
    let mut i = seed;
    while out.len() < bytes {
        out.extend_from_slice(format!("{{\"seq\":{i},\"level\":\"info\",\"msg\":\"chunk stored\"}}\n").as_bytes());
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// The application sends `request` and half-closes; the target reads it all,
/// answers `response` and closes; the application reads the whole answer.
async fn exchange(pair: &Pair, request: &[u8], response: &[u8]) {
    let (request_copy, response_copy) = (request.to_vec(), response.to_vec());
    let target = async {
        let (mut stream, _) = pair.target.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(
            got == request_copy,
            "target got {} of {} bytes",
            got.len(),
            request_copy.len()
        );
        stream.write_all(&response_copy).await.unwrap();
        stream.shutdown().await.unwrap();
    };
    let application = async {
        let mut stream = TcpStream::connect(pair.entry).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), answer) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(target, application) })
        .await
        .unwrap();
    assert!(
        answer == response,
        "application got {} of {} bytes",
        answer.len(),
        response.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_pass_both_ways_and_nothing_is_lost() {
    for mode in ["always", "near_allowance"] {
        let pair = pair(mode, "").await;
        let (request, response) = (logs(3_000_000, 0), logs(1_500_000, 7));
        exchange(&pair, &request, &response).await;
        // Empty both ways: the half-closes alone.
        exchange(&pair, b"", b"").await;
        exchange(&pair, b"x", b"").await;
        let encoding = if mode == "always" { "lz4" } else { "raw" };
        for tunnels in [&pair.client, &pair.server] {
            let tunnel = name(tunnels);
            wait(|| value(tunnels, "hostwatch_compression_open_connections", &[tunnel]) == Some(0.0)).await;
            assert_eq!(
                value(tunnels, "hostwatch_compression_connections_total", &[tunnel, encoding]),
                Some(3.0)
            );
            let raw = value(tunnels, "hostwatch_compression_bytes_total", &[tunnel, "raw"]).unwrap();
            let wire = value(tunnels, "hostwatch_compression_bytes_total", &[tunnel, "wire"]).unwrap();
            assert_eq!(raw, 4_500_001.0);
            if encoding == "lz4" {
                assert!(raw / wire > 5.0, "{tunnel}: {raw} raw bytes took {wire}");
                assert!(value(tunnels, "hostwatch_compression_cpu_seconds_total", &[tunnel]).unwrap() > 0.0);
            } else {
                assert_eq!(wire, raw + 3.0 * HEADER_LEN as f64);
            }
        }
        pair.client.stop().await;
        pair.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_closes_its_connection_only() {
    let pair = pair("always", "").await;
    let mut forged = TcpStream::connect(pair.relay).await.unwrap();
    forged.write_all(&codec::header(Encoding::Lz4)).await.unwrap();
    let (_target_side, _) = pair.target.accept().await.unwrap();
    let mut garbage = 100u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0x5a; 100]);
    forged.write_all(&garbage).await.unwrap();
    let mut rest = Vec::new();
    // Reset, or closed: either way nothing comes back.
    let read = tokio::time::timeout(Duration::from_secs(5), forged.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty());
    wait(|| value(&pair.server, "hostwatch_compression_corrupt_frames_total", &["s"]) == Some(1.0)).await;

    // Not a tunnel at all: a handshake failure.
    let mut stranger = TcpStream::connect(pair.relay).await.unwrap();
    stranger.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = stranger.read_to_end(&mut rest).await;
    wait(|| {
        value(
            &pair.server,
            "hostwatch_compression_failures_total",
            &["s", "handshake"],
        ) == Some(1.0)
    })
    .await;

    // The tunnel still works.
    exchange(&pair, &logs(200_000, 1), b"ok").await;
    pair.client.stop().await;
    pair.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_allowance_follows_the_allowance_counters() {
    let mut pair = pair("near_allowance", "hold = \"200ms\"").await;
    let facts = HostFacts::default();
    let engaged = |pair: &Pair| value(&pair.client, "hostwatch_compression_engaged", &["c"]);
    pair.client.observe(&facts, None);
    assert_eq!(engaged(&pair), Some(0.0));
    facts.set_allowance_exceeded(10);
    pair.client.observe(&facts, None);
    assert_eq!(engaged(&pair), Some(1.0));
    exchange(&pair, &logs(100_000, 0), b"").await;
    assert_eq!(
        value(&pair.client, "hostwatch_compression_connections_total", &["c", "lz4"]),
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    pair.client.observe(&facts, None);
    assert_eq!(engaged(&pair), Some(0.0));
    exchange(&pair, &logs(100_000, 0), b"").await;
    assert_eq!(
        value(&pair.client, "hostwatch_compression_connections_total", &["c", "raw"]),
        Some(1.0)
    );
    pair.client.stop().await;
    pair.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_resets_open_connections_and_frees_the_port() {
    let pair = pair("always", "").await;
    let mut application = TcpStream::connect(pair.entry).await.unwrap();
    application.write_all(b"partial").await.unwrap();
    let (mut target, _) = pair.target.accept().await.unwrap();
    let mut got = [0; 7];
    target.read_exact(&mut got).await.unwrap();
    pair.server.stop().await;
    // The target learns the stream was cut, not that it ended.
    let mut rest = Vec::new();
    let error = target.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    // And so does the application, through the client tunnel.
    let error = application.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    wait(|| value(&pair.client, "hostwatch_compression_failures_total", &["c", "io"]) == Some(1.0)).await;
    assert!(TcpListener::bind(pair.relay).await.is_ok());
    pair.client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguring_keeps_unchanged_tunnels() {
    let (a, b) = (free_port(), free_port());
    let entry = |name: &str, port: u16| {
        format!(
            "[[compression.tunnel]]\nname = \"{name}\"\nside = \"client\"\nlisten = \"127.0.0.1:{port}\"\nconnect = \"127.0.0.1:9\"\n"
        )
    };
    let mut tunnels = Tunnels::start(&section(&entry("a", a)));
    wait(|| value(&tunnels, "hostwatch_compression_tunnel_up", &["a"]) == Some(1.0)).await;
    // The peer refuses: counted against the tunnel, which survives.
    // The reset may come before connect() has seen its answer.
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", a)).await {
        let _ = stream.read_to_end(&mut Vec::new()).await;
    }
    wait(|| value(&tunnels, "hostwatch_compression_failures_total", &["a", "connect"]) == Some(1.0)).await;

    tunnels.reconfigure(&section(&(entry("a", a) + &entry("b", b)))).await;
    wait(|| value(&tunnels, "hostwatch_compression_tunnel_up", &["b"]) == Some(1.0)).await;
    // "a" kept its counters: it was not restarted.
    assert_eq!(
        value(&tunnels, "hostwatch_compression_failures_total", &["a", "connect"]),
        Some(1.0)
    );
    tunnels.reconfigure(&section(&entry("b", b))).await;
    assert_eq!(value(&tunnels, "hostwatch_compression_tunnel_up", &["a"]), None);
    assert!(TcpListener::bind(("127.0.0.1", a)).await.is_ok());
    tunnels.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_silent_peer() {
    let pair = pair("always", "").await;
    // Connected, but no header: the server would wait 10 s for it.
    let _silent = TcpStream::connect(pair.relay).await.unwrap();
    wait(|| value(&pair.server, "hostwatch_compression_open_connections", &["s"]) == Some(1.0)).await;
    let start = Instant::now();
    pair.server.stop().await;
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    pair.client.stop().await;
}
