//! What the proxy's connections, its adaptive controllers and its metrics
//! share: per policy and direction a token bucket and counters, the routing
//! of destinations to policies, and refusal counts.
//!
//! Reads nothing, needs nothing. Counters are atomics: connections update
//! them on their hot path without locks, and the metrics task reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hostwatch_collectors::config::Rate;

use super::config::{Config, HostPattern, PASS_THROUGH, Policy};
use crate::bucket::Pacer;
use crate::timer::Timer;

/// Which way bytes cross the proxy; the `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Server to client.
    Download = 0,
    /// Client to server.
    Upload = 1,
}

impl Direction {
    pub const BOTH: [Self; 2] = [Self::Download, Self::Upload];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Download => "download",
            Self::Upload => "upload",
        }
    }
}

/// One policy and direction: its bucket (none when unlimited) and counters.
#[derive(Debug)]
pub struct Lane {
    pub pacer: Option<Pacer>,
    /// The rate in the config, for the adaptive controller's shares.
    pub configured: Option<Rate>,
    bytes: AtomicU64,
    delay_nanos: AtomicU64,
}

impl Lane {
    fn new(rate: Option<Rate>, burst: Duration) -> Self {
        Self {
            pacer: rate.map(|rate| Pacer::new(rate.bits_per_second(), burst, Instant::now())),
            configured: rate,
            bytes: AtomicU64::new(0),
            delay_nanos: AtomicU64::new(0),
        }
    }

    /// Waits until up to `want` bytes may cross; unlimited lanes never wait.
    pub async fn acquire(&self, want: usize, timer: &Timer) -> usize {
        let Some(pacer) = &self.pacer else { return want };
        let asked = Instant::now();
        let (bytes, at) = pacer.reserve(asked, want);
        if at > asked {
            timer.sleep_until(at).await;
        }
        while let Some(retry) = pacer.emit(Instant::now(), bytes) {
            timer.sleep_until(retry).await;
        }
        let waited = asked.elapsed();
        if !waited.is_zero() {
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.delay_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        bytes
    }

    /// Gives back what a grant did not use.
    pub fn refund(&self, bytes: usize) {
        if let Some(pacer) = &self.pacer {
            pacer.refund(bytes);
        }
    }

    pub fn count(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn delay_seconds(&self) -> f64 {
        self.delay_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The current limit in bits per second; `None` when unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.pacer.as_ref().map(Pacer::bits_per_second)
    }
}

/// One policy at run time.
#[derive(Debug)]
pub struct PolicyState {
    pub name: String,
    hosts: Vec<HostPattern>,
    buckets: Vec<HostPattern>,
    /// Indexed by [`Direction`].
    pub lanes: [Lane; 2],
    open: AtomicU64,
    connections: AtomicU64,
}

impl PolicyState {
    fn new(policy: &Policy) -> Self {
        Self {
            name: policy.name.clone(),
            hosts: policy.hosts.clone(),
            buckets: policy.buckets.clone(),
            lanes: [
                Lane::new(policy.download, policy.burst.download.get()),
                Lane::new(policy.upload, policy.burst.upload.get()),
            ],
            open: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn pass_through(hosts: &[HostPattern]) -> Self {
        Self {
            name: PASS_THROUGH.to_owned(),
            hosts: hosts.to_vec(),
            buckets: Vec::new(),
            lanes: [Lane::new(None, Duration::ZERO), Lane::new(None, Duration::ZERO)],
            open: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    pub fn lane(&self, direction: Direction) -> &Lane {
        &self.lanes[direction as usize]
    }

    fn matches(&self, host: &str) -> bool {
        self.hosts.iter().any(|pattern| {
            pattern.is_match(host)
                && (self.buckets.is_empty()
                    || pattern
                        .bucket(host)
                        .is_some_and(|bucket| self.buckets.iter().any(|b| b.is_match(bucket))))
        })
    }

    /// Counts a tunnel open until the guard drops.
    pub fn opened(&self) -> OpenGuard<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(&self.open)
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Decrements a policy's open tunnels when dropped.
#[derive(Debug)]
pub struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a client was turned away; the `reason` label, and the HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Busy,
    Malformed,
    HeadTooLarge,
    HeadTimeout,
    ForbiddenHost,
    ForbiddenPort,
    UpstreamUnreachable,
    UpstreamTimeout,
}

impl Refusal {
    pub const ALL: [Self; 8] = [
        Self::Busy,
        Self::Malformed,
        Self::HeadTooLarge,
        Self::HeadTimeout,
        Self::ForbiddenHost,
        Self::ForbiddenPort,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Malformed => "malformed",
            Self::HeadTooLarge => "head_too_large",
            Self::HeadTimeout => "head_timeout",
            Self::ForbiddenHost => "forbidden_host",
            Self::ForbiddenPort => "forbidden_port",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The complete response the client gets.
    pub fn response(self) -> &'static [u8] {
        match self {
            Self::Busy => {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\nconnection: close\r\n\r\ntoo many connections"
            }
            Self::Malformed => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 13\r\nconnection: close\r\n\r\nmalformed head",
            Self::HeadTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 14\r\nconnection: close\r\n\r\nhead too large"
            }
            Self::HeadTimeout => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 12\r\nconnection: close\r\n\r\nhead timeout",
            Self::ForbiddenHost => {
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 34\r\nconnection: close\r\n\r\nhost not allowed by a shaper policy"
            }
            Self::ForbiddenPort => b"HTTP/1.1 403 Forbidden\r\ncontent-length: 16\r\nconnection: close\r\n\r\nport not allowed",
            Self::UpstreamUnreachable => {
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 20\r\nconnection: close\r\n\r\nupstream unreachable"
            }
            Self::UpstreamTimeout => {
                b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 16\r\nconnection: close\r\n\r\nupstream timeout"
            }
        }
    }
}

/// Everything the proxy's tasks share.
#[derive(Debug)]
pub struct State {
    /// The configured policies in order, then the pass-through list.
    pub policies: Vec<PolicyState>,
    /// Wakes paced connections on time (tokio's timer rounds to milliseconds).
    pub timer: Timer,
    ports: Vec<u16>,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl State {
    pub fn new(config: &Config) -> std::io::Result<Self> {
        let mut policies: Vec<PolicyState> = config.policy.0.iter().map(PolicyState::new).collect();
        policies.push(PolicyState::pass_through(&config.pass_through));
        Ok(Self {
            policies,
            timer: Timer::start()?,
            ports: config.ports.clone(),
            refusals: Default::default(),
        })
    }

    /// The policy a destination belongs to: the first configured one whose
    /// hosts match, else the pass-through list; anything else is refused.
    pub fn route(&self, host: &str, port: u16) -> Result<&PolicyState, Refusal> {
        let policy = self
            .policies
            .iter()
            .find(|p| p.matches(host))
            .ok_or(Refusal::ForbiddenHost)?;
        if self.ports.contains(&port) {
            Ok(policy)
        } else {
            Err(Refusal::ForbiddenPort)
        }
    }

    pub fn refused(&self, refusal: Refusal) {
        self.refusals[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, refusal: Refusal) -> u64 {
        self.refusals[refusal as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_host_bucket_and_port() {
        let config: Config = toml::from_str(
            r#"
            pass_through = ["sts.amazonaws.com"]
            [[policy]]
            name = "backups"
            hosts = ["*.s3.*.amazonaws.com"]
            buckets = ["backup-*"]
            upload = "100Mbit"
            [[policy]]
            name = "s3"
            hosts = ["*.s3.*.amazonaws.com", "s3.*.amazonaws.com"]
            download = "1Gbit"
            "#,
        )
        .unwrap_or_default();
        let state = State::new(&config).unwrap();
        let name = |host: &str, port: u16| state.route(host, port).map(|p| p.name.as_str());
        assert_eq!(name("backup-db.s3.us-east-1.amazonaws.com", 443), Ok("backups"));
        assert_eq!(name("logs.s3.us-east-1.amazonaws.com", 443), Ok("s3"));
        assert_eq!(name("s3.us-east-1.amazonaws.com", 80), Ok("s3"));
        assert_eq!(name("sts.amazonaws.com", 443), Ok("pass_through"));
        assert_eq!(name("example.com", 443), Err(Refusal::ForbiddenHost));
        assert_eq!(name("s3.us-east-1.amazonaws.com", 22), Err(Refusal::ForbiddenPort));
        let s3 = state.route("s3.us-east-1.amazonaws.com", 443).unwrap();
        assert_eq!(s3.lane(Direction::Download).rate(), Some(1e9));
        assert_eq!(s3.lane(Direction::Upload).rate(), None);
        {
            let _open = s3.opened();
            assert_eq!((s3.open(), s3.connections()), (1, 1));
        }
        assert_eq!((s3.open(), s3.connections()), (0, 1));
    }

    #[test]
    fn each_direction_gets_its_own_burst() {
        let config: Config = toml::from_str(
            r#"
            [[policy]]
            name = "s3"
            hosts = ["s3.*.amazonaws.com"]
            download = "80Mbit"
            upload = "80Mbit"
            burst = { upload = "500us" }
            "#,
        )
        .unwrap_or_default();
        let state = State::new(&config).unwrap();
        let s3 = state.route("s3.us-east-1.amazonaws.com", 443).unwrap();
        // 80 Mbit/s is 10 kB per millisecond; a reservation takes at most
        // the bucket's depth.
        let slice = |direction| {
            let pacer = s3.lane(direction).pacer.as_ref().unwrap();
            pacer.reserve(Instant::now(), 1 << 20).0
        };
        assert_eq!(slice(Direction::Download), 10_000);
        assert_eq!(slice(Direction::Upload), 5_000);
    }
}
