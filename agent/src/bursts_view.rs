//! `hostwatch bursts`: a live terminal view of a running agent's microburst
//! detector. Per interface and direction, a sparkline of the last second
//! (each cell the busiest of its milliseconds, red where above the
//! threshold), then the recent burst events.
//!
//! Reads `GET /debug/netslots` and `GET /debug/bursts` from the agent over
//! plain HTTP (loopback by default); needs nothing else.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Slots {
    interface: String,
    direction: String,
    threshold_bits_per_second: f64,
    bytes_per_ms: Vec<Option<u64>>,
}

#[derive(Debug, Deserialize)]
struct Event {
    interface: String,
    direction: String,
    start_unix_ms: u64,
    duration_ms: u64,
    bytes: u64,
    peak_bits_per_second: f64,
    truncated: bool,
    contributors: Vec<Contributor>,
}

#[derive(Debug, Deserialize)]
struct Contributor {
    cgroup: String,
    pid: u32,
    comm: String,
    bytes: u64,
}

const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Shows the view, refreshed every `every`, until interrupted; once with `once`.
pub fn run(agent: SocketAddr, width: usize, once: bool, color: bool) -> anyhow::Result<()> {
    loop {
        let slots: Vec<Slots> = serde_json::from_str(&get(agent, "/debug/netslots")?)
            .context("the agent's /debug/netslots is not what this version expects")?;
        // No burst yet means no document yet.
        let events: Vec<Event> = match get(agent, "/debug/bursts") {
            Ok(body) => {
                serde_json::from_str(&body).context("the agent's /debug/bursts is not what this version expects")?
            }
            Err(_) => Vec::new(),
        };
        let frame = render(&slots, &events, width, color);
        let mut out = std::io::stdout().lock();
        if once {
            out.write_all(frame.as_bytes())?;
            return Ok(());
        }
        // Clear the screen and draw from the top.
        write!(out, "\x1b[2J\x1b[H{frame}")?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn render(slots: &[Slots], events: &[Event], width: usize, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hostwatch bursts: the last second, {} ms per cell",
        1000usize.div_ceil(width.max(1))
    );
    if slots.is_empty() {
        out.push_str("no interface is counted (is the netburst collector up?)\n");
    }
    for series in slots {
        let threshold = series.threshold_bits_per_second / 8.0 / 1000.0;
        let cells = series
            .bytes_per_ms
            .chunks(series.bytes_per_ms.len().div_ceil(width.max(1)).max(1));
        let peaks: Vec<Option<u64>> = cells.map(|c| c.iter().flatten().max().copied()).collect();
        let top = peaks
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .max(threshold as u64)
            .max(1);
        let _ = write!(out, "{:>12} {:<8} ", series.interface, series.direction);
        for peak in &peaks {
            let Some(bytes) = peak else {
                out.push('?');
                continue;
            };
            let level = LEVELS[((*bytes as f64 / top as f64) * 8.0).round() as usize];
            if color && *bytes as f64 > threshold {
                let _ = write!(out, "\x1b[31m{level}\x1b[0m");
            } else {
                out.push(level);
            }
        }
        let peak_ms = peaks.iter().flatten().max().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            " peak {} / threshold {}",
            rate(peak_ms as f64 * 8000.0),
            rate(series.threshold_bits_per_second)
        );
    }
    let _ = writeln!(out, "\nrecent bursts ({}):", events.len());
    for event in events.iter().rev().take(10) {
        let _ = write!(
            out,
            "  {} {} {}: {} ms, {} bytes, peak {}{}",
            event.start_unix_ms,
            event.interface,
            event.direction,
            event.duration_ms,
            event.bytes,
            rate(event.peak_bits_per_second),
            if event.truncated { " (truncated)" } else { "" }
        );
        for c in &event.contributors {
            let _ = write!(out, "  [{} {}/{} {} B]", c.cgroup, c.comm, c.pid, c.bytes);
        }
        out.push('\n');
    }
    out
}

fn rate(bits_per_second: f64) -> String {
    match bits_per_second {
        r if r >= 1e9 => format!("{:.2} Gbit/s", r / 1e9),
        r if r >= 1e6 => format!("{:.1} Mbit/s", r / 1e6),
        r => format!("{:.0} kbit/s", r / 1e3),
    }
}

/// One GET over HTTP/1.1 with `Connection: close`; the body when 200.
fn get(agent: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&agent, Duration::from_secs(2))
        .with_context(|| format!("connecting to the agent at {agent}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {agent}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("the agent's answer is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("incomplete answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sparklines_and_events() {
        let mut bytes = vec![Some(1000); 1000];
        bytes[500] = Some(250_000);
        bytes[900] = None;
        let slots = vec![Slots {
            interface: "eth0".into(),
            direction: "transmit".into(),
            threshold_bits_per_second: 1e9,
            bytes_per_ms: bytes,
        }];
        let events = vec![Event {
            interface: "eth0".into(),
            direction: "transmit".into(),
            start_unix_ms: 1_764_000_000_000,
            duration_ms: 5,
            bytes: 1_000_000,
            peak_bits_per_second: 2e9,
            truncated: false,
            contributors: vec![Contributor {
                cgroup: "/system.slice/backup.service".into(),
                pid: 42,
                comm: "restic".into(),
                bytes: 900_000,
            }],
        }];
        let frame = render(&slots, &events, 100, false);
        let line = frame.lines().nth(1).unwrap();
        assert!(line.starts_with("        eth0 transmit "), "{line}");
        assert_eq!(line.chars().filter(|c| *c == '█').count(), 1, "{line}");
        assert_eq!(
            line.chars().filter(|c| *c == '?').count(),
            0,
            "a cell with one lost ms still has data"
        );
        assert!(line.ends_with("peak 2.00 Gbit/s / threshold 1.00 Gbit/s"), "{line}");
        assert!(
            frame.contains("5 ms, 1000000 bytes, peak 2.00 Gbit/s  [/system.slice/backup.service restic/42 900000 B]"),
            "{frame}"
        );
        let colored = render(&slots, &events, 100, true);
        assert!(colored.contains("\x1b[31m█\x1b[0m"));
    }
}
