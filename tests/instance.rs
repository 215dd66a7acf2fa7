//! The `instance` collector end to end: the real agent asks a fake IMDS on
//! loopback (the only address tests may send to), and a hanging IMDS delays
//! neither readiness nor scrapes.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Agent, TempDir, fixture, value, wait_for};

const TOKEN: &str = "AQAEAE2e-fake-token==";

/// Answers IMDSv2 as EC2 does for an m6i.large: a token for the PUT, values
/// only for GETs carrying it, 401 otherwise.
fn serve_imds(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    let mut token = None;
    let mut ttl = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if request.is_empty() {
            request = line.trim_end().to_owned();
        } else if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "x-aws-ec2-metadata-token" => token = Some(value.trim().to_owned()),
                "x-aws-ec2-metadata-token-ttl-seconds" => ttl = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let authorized = token.as_deref() == Some(TOKEN);
    let body = match request.split(' ').take(2).collect::<Vec<_>>()[..] {
        ["PUT", "/latest/api/token"] if ttl.is_some() => Some(TOKEN),
        ["GET", "/latest/meta-data/instance-type"] if authorized => Some("m6i.large"),
        ["GET", "/latest/meta-data/placement/availability-zone"] if authorized => Some("eu-west-3a"),
        ["GET", "/latest/meta-data/instance-id"] if authorized => Some("i-0abcdef1234567890"),
        _ => None,
    };
    let response = match body {
        Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        None => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned(),
    };
    let _ = (&stream).write_all(response.as_bytes());
}

/// A loopback listener whose connections `handle` takes; counts them.
fn fake_imds(handle: fn(TcpStream, &mut Vec<TcpStream>)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            counted.fetch_add(1, Ordering::SeqCst);
            handle(stream, &mut held);
        }
    });
    (addr, connections)
}

fn start_agent(dir: &TempDir, config: &str) -> Agent {
    let path = dir.write("hostwatch.toml", config);
    let root = fixture("basic");
    let (procfs, sysfs) = (root.join("proc"), root.join("sys"));
    Agent::start(
        &[
            "--config",
            path.to_str().unwrap(),
            "--path.procfs",
            procfs.to_str().unwrap(),
            "--path.sysfs",
            sysfs.to_str().unwrap(),
        ],
        &[],
    )
}

#[test]
fn identity_and_baseline_from_imds() {
    let (imds, _) = fake_imds(|stream, _| serve_imds(stream));
    let dir = TempDir::new("instance");
    // The basic fixture has no EC2 DMI vendor: the explicit endpoint is what enables IMDS.
    let agent = start_agent(
        &dir,
        &format!("[collectors.instance]\nendpoint = \"http://{imds}\"\ninterval = \"100ms\"\n"),
    );
    agent.wait_ready();
    let info = "hostwatch_instance_info{instance_type=\"m6i.large\",availability_zone=\"eu-west-3a\",instance_id=\"i-0abcdef1234567890\"}";
    agent.wait_until(
        Duration::from_secs(5),
        || value(&agent.metrics(), info) == Some(1.0),
        "the instance identity",
    );
    let text = agent.metrics();
    assert_eq!(
        value(
            &text,
            "hostwatch_instance_network_baseline_bits_per_second{source=\"table\"}"
        ),
        Some(781_000_000.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "hostwatch_instance_network_burst_bits_per_second{source=\"table\"}"
        ),
        Some(12_500_000_000.0)
    );
    assert_eq!(
        value(&text, "hostwatch_instance_metadata_errors_total{kind=\"unauthorized\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "hostwatch_collector_up{collector=\"instance\"}"),
        Some(1.0)
    );
}

#[test]
fn a_hanging_imds_delays_neither_readiness_nor_scrapes() {
    let (imds, connections) = fake_imds(|stream, held| held.push(stream));
    let dir = TempDir::new("instance-hang");
    let started = Instant::now();
    let agent = start_agent(
        &dir,
        &format!("[collectors.instance]\nendpoint = \"http://{imds}\"\ninterval = \"100ms\"\n"),
    );
    agent.wait_until(
        Duration::from_secs(2).saturating_sub(started.elapsed()),
        || agent.get("/readyz").status == 200,
        "ready within 2 s of start",
    );
    wait_for(
        Duration::from_secs(2),
        || connections.load(Ordering::SeqCst) >= 1,
        "the IMDS thread connected",
    );
    let scrape = Instant::now();
    let text = agent.metrics();
    assert!(scrape.elapsed() < Duration::from_millis(500), "{:?}", scrape.elapsed());
    assert_eq!(
        value(&text, "hostwatch_collector_up{collector=\"instance\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("hostwatch_instance_info{"), "{text}");
    // The default one-second request timeout then counts the hang.
    agent.wait_until(
        Duration::from_secs(15),
        || {
            value(
                &agent.metrics(),
                "hostwatch_instance_metadata_errors_total{kind=\"timeout\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
        "the timeout counted",
    );
}
