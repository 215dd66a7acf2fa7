//! What each tunnel counts, written by its connections and read into a
//! [`MetricSet`] when the agent publishes.
//!
//! Reads nothing, needs nothing. Counters are atomics: connections add to
//! them as bytes pass, and publishing reads them without a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hostwatch_collectors::{Desc, MetricSet};

use super::codec::Encoding;

static BYTES: Desc = Desc::counter(
    "hostwatch_compression_bytes_total",
    "Bytes through the tunnel at this agent, both directions: side=\"raw\" the applications' bytes, side=\"wire\" what they took between the agents (connection headers and framing included, TCP/IP not).",
    &["tunnel", "side"],
);
static CPU: Desc = Desc::counter(
    "hostwatch_compression_cpu_seconds_total",
    "Thread CPU time this agent spent in lz4 for the tunnel: compressing what it sends and decompressing what it receives, checksums included.",
    &["tunnel"],
);
static CONNECTIONS: Desc = Desc::counter(
    "hostwatch_compression_connections_total",
    "Tunnel connections set up, by the encoding the client chose for them (lz4 or raw).",
    &["tunnel", "mode"],
);
static OPEN: Desc = Desc::gauge(
    "hostwatch_compression_open_connections",
    "Tunnel connections open now.",
    &["tunnel"],
);
static CORRUPT: Desc = Desc::counter(
    "hostwatch_compression_corrupt_frames_total",
    "Frames received that failed their checks (length, lz4 format, content checksum); each closed its connection.",
    &["tunnel"],
);
static FAILURES: Desc = Desc::counter(
    "hostwatch_compression_failures_total",
    "Tunnel connections that ended in error, by reason: connect (peer or target refused or timed out), handshake (no valid tunnel header), limit (max_connections open already), io (reset or error mid-stream).",
    &["tunnel", "reason"],
);
static UP: Desc = Desc::gauge(
    "hostwatch_compression_tunnel_up",
    "1 while the tunnel listens; 0 while its listen address cannot be bound (retried every 5 s).",
    &["tunnel"],
);
static ENGAGED: Desc = Desc::gauge(
    "hostwatch_compression_engaged",
    "Client tunnels: 1 while new connections are compressed (always, or near the allowance), 0 while they go raw.",
    &["tunnel"],
);

/// Why a tunnel connection ended in error; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Handshake,
    Limit,
    Io,
}

impl Failure {
    const ALL: [Self; 4] = [Self::Connect, Self::Handshake, Self::Limit, Self::Io];

    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Handshake => "handshake",
            Self::Limit => "limit",
            Self::Io => "io",
        }
    }
}

#[derive(Debug, Default)]
pub struct TunnelMetrics {
    raw_bytes: AtomicU64,
    wire_bytes: AtomicU64,
    cpu_nanos: AtomicU64,
    /// Indexed by [`encoding_slot`].
    connections: [AtomicU64; 2],
    open: AtomicU64,
    corrupt: AtomicU64,
    /// Indexed like [`Failure::ALL`].
    failures: [AtomicU64; 4],
    up: AtomicBool,
    engaged: AtomicBool,
}

fn encoding_slot(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Raw => 0,
        Encoding::Lz4 => 1,
    }
}

impl TunnelMetrics {
    pub fn bytes(&self, raw: usize, wire: usize) {
        self.raw_bytes.fetch_add(raw as u64, Ordering::Relaxed);
        self.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
    }

    pub fn cpu(&self, spent: Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn opened(&self, encoding: Encoding) {
        self.connections[encoding_slot(encoding)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, failure: Failure) {
        if let Some(slot) = Failure::ALL.iter().position(|f| *f == failure) {
            self.failures[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn set_engaged(&self, engaged: bool) {
        self.engaged.store(engaged, Ordering::Relaxed);
    }

    pub fn engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    /// Counts a connection open until the guard drops, however it ends.
    pub fn open(&self) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self)
    }

    /// Appends this tunnel's series; `client` adds the engaged gauge.
    pub fn write(&self, tunnel: &str, client: bool, out: &mut MetricSet) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        out.push(&BYTES, &[tunnel, "raw"], load(&self.raw_bytes));
        out.push(&BYTES, &[tunnel, "wire"], load(&self.wire_bytes));
        out.push(&CPU, &[tunnel], load(&self.cpu_nanos) / 1e9);
        for encoding in [Encoding::Lz4, Encoding::Raw] {
            out.push(
                &CONNECTIONS,
                &[tunnel, encoding.label()],
                load(&self.connections[encoding_slot(encoding)]),
            );
        }
        out.push(&OPEN, &[tunnel], load(&self.open));
        out.push(&CORRUPT, &[tunnel], load(&self.corrupt));
        for (failure, count) in Failure::ALL.iter().zip(&self.failures) {
            out.push(&FAILURES, &[tunnel, failure.label()], load(count));
        }
        out.push(&UP, &[tunnel], f64::from(u8::from(self.up.load(Ordering::Relaxed))));
        if client {
            out.push(&ENGAGED, &[tunnel], f64::from(u8::from(self.engaged())));
        }
    }
}

#[derive(Debug)]
pub struct OpenGuard<'a>(&'a TunnelMetrics);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
