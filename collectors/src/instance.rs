//! `instance`: the EC2 instance's identity from IMDSv2, and its network
//! allowance from the built-in table ([`crate::instance_types`]) or the config.
//!
//! Reads `SYSFS/class/dmi/id/{sys_vendor,board_vendor}` and
//! `SYSFS/hypervisor/uuid` to tell an EC2 instance, then asks the instance
//! metadata service over plain HTTP; needs no privilege, but IMDS must answer
//! the agent's network namespace (in a container, the token's hop limit). Off
//! EC2 it sends nothing: unless `endpoint` is set, a host whose DMI vendor is
//! not "Amazon EC2" and whose hypervisor UUID does not start with "ec2" reports
//! the collector unavailable.
//!
//! IMDS is asked by a thread of the collector's own, never by a collection: a
//! request may take `request_timeout`, and neither start-up nor a scrape may
//! wait for it. The thread starts with the first collection (so `hostwatch
//! collectors` sends nothing), asks again every `refresh` since identity does
//! not change while the instance runs, backs off from 1 s to 30 s after a
//! failure, and ends when the collector is dropped (config reload, shutdown),
//! at the latest once its request in flight times out. Collections read what
//! it cached. What it learns also goes to [`HostFacts`], where `headroom`
//! finds the baseline; `baseline` and `burst` in the config win over the table.
//!
//! Emits `hostwatch_instance_info{instance_type,availability_zone,instance_id}`
//! (once IMDS has answered), `hostwatch_instance_network_baseline_bits_per_second{source}`,
//! `hostwatch_instance_network_burst_bits_per_second{source}` (only "up to" types),
//! `hostwatch_instance_metadata_errors_total{kind}` and
//! `hostwatch_instance_metadata_last_success_timestamp_seconds`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};
use tracing::{debug, info, warn};

use crate::collector::{Collector, CollectorSpec, Context};
use crate::config::{Interval, Rate, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::facts::{self, HostFacts, NetworkBaseline};
use crate::instance_types;
use crate::paths::HostPaths;
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.instance]`: where IMDS is, and what to believe about the
    /// instance's network allowance.
    pub struct Config {
        /// IMDS as `http://ADDRESS[:PORT]`. Set, it is asked even where DMI does
        /// not say EC2; absent, 169.254.169.254 is asked on EC2 only.
        pub endpoint: Option<Endpoint> = None,
        /// How long to keep an answer before asking again (default 1h).
        pub refresh: Option<Interval> = None,
        /// How long one request may take, connecting included (default 1s).
        pub request_timeout: Option<Interval> = None,
        /// Sustained bandwidth to use instead of the built-in table's, e.g. "12.5Gbit".
        pub baseline: Option<Rate> = None,
        /// "Up to" bandwidth to use instead of the built-in table's.
        pub burst: Option<Rate> = None,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "instance",
    needs: "EC2 (DMI vendor or hypervisor UUID) with IMDSv2 reachable, or an explicit endpoint",
    // Collections only read the thread's cache; this is how soon a new answer shows.
    default_interval: Duration::from_secs(10),
    section: |config| &config.instance,
    build: |context| Ok(Box::new(Ec2Instance::new(context)?)),
};

static INFO: Desc = Desc::gauge(
    "hostwatch_instance_info",
    "The EC2 instance as IMDS names it; always 1.",
    &["instance_type", "availability_zone", "instance_id"],
);
static BASELINE: Desc = Desc::gauge(
    "hostwatch_instance_network_baseline_bits_per_second",
    "The instance's sustained network bandwidth in each direction, from the config (source=\"config\") or EC2's published figure for its type (source=\"table\").",
    &["source"],
);
static BURST: Desc = Desc::gauge(
    "hostwatch_instance_network_burst_bits_per_second",
    "The \"up to\" bandwidth a burstable instance type reaches on network I/O credits, for minutes and best effort; absent for fixed-bandwidth types.",
    &["source"],
);
static ERRORS: Desc = Desc::counter(
    "hostwatch_instance_metadata_errors_total",
    "Failed IMDS requests by kind: timeout, refused, unauthorized (401), status (another non-200), garbage (not a plausible answer), io.",
    &["kind"],
);
static LAST_SUCCESS: Desc = Desc::gauge(
    "hostwatch_instance_metadata_last_success_timestamp_seconds",
    "When IMDS last answered every question, in seconds since the epoch.",
    &[],
);

const ERROR_KINDS: [&str; 6] = ["garbage", "io", "refused", "status", "timeout", "unauthorized"];

const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

const TOKEN_PATH: &str = "/latest/api/token";
const TYPE_PATH: &str = "/latest/meta-data/instance-type";
const ZONE_PATH: &str = "/latest/meta-data/placement/availability-zone";
const ID_PATH: &str = "/latest/meta-data/instance-id";
/// IMDS's longest token lifetime; a fresh token is asked for at every refresh anyway.
const TOKEN_TTL_SECONDS: &str = "21600";

/// IMDS answers these questions in well under a hundred bytes: anything near
/// these sizes is not IMDS, and reading it would only cost memory.
const MAX_RESPONSE: usize = 8192;
const MAX_BODY: usize = 4096;
const MAX_TOKEN: usize = 512;
/// Values become label values: an instance type, zone or id longer than this is garbage.
const MAX_VALUE: usize = 64;

const EC2_VENDOR: &str = "Amazon EC2";
const GBIT: f64 = 1e9;

/// Where IMDS listens: `http://ADDRESS[:PORT]` with an IP address, no path.
/// A name is refused because std resolves names without a timeout, and the
/// agent must not hang on DNS for a link-local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    addr: SocketAddr,
    /// The `Host` header: the authority as written.
    host: String,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |reason: &str| format!("invalid IMDS endpoint {text:?}: {reason}");
        let authority = text
            .strip_prefix("http://")
            .ok_or_else(|| invalid("must start with http:// (IMDS speaks plain HTTP)"))?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') {
            return Err(invalid("must have no path"));
        }
        let addr = match authority.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let bare = authority
                    .strip_prefix('[')
                    .and_then(|rest| rest.strip_suffix(']'))
                    .unwrap_or(authority);
                let ip = bare
                    .parse::<IpAddr>()
                    .map_err(|_| invalid("must be an IP address with an optional port, not a name"))?;
                SocketAddr::new(ip, 80)
            }
        };
        Ok(Self {
            addr,
            host: authority.to_owned(),
        })
    }

    /// EC2's link-local IMDS address.
    fn imds() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
            host: "169.254.169.254".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why one IMDS request failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("{path}: no complete answer within {timeout:?}")]
    Timeout { path: &'static str, timeout: Duration },
    #[error("{path}: connection refused by {addr}")]
    Refused { path: &'static str, addr: SocketAddr },
    #[error("{path}: HTTP 401, the token was refused")]
    Unauthorized { path: &'static str },
    #[error("{path}: HTTP {status}")]
    Status { path: &'static str, status: u16 },
    #[error("{path}: {reason}")]
    Garbage { path: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ImdsError {
    /// The `kind` label of `hostwatch_instance_metadata_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Refused { .. } => "refused",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Status { .. } => "status",
            Self::Garbage { .. } => "garbage",
            Self::Io { .. } => "io",
        }
    }
}

/// Whether this host is an EC2 instance, from what the hypervisor tells the
/// kernel; the error is the reason to report when it is not.
fn ec2_host(paths: &HostPaths) -> Result<(), String> {
    let read = |relative: &str| std::fs::read_to_string(paths.sys(relative)).ok();
    let vendors = [read("class/dmi/id/sys_vendor"), read("class/dmi/id/board_vendor")];
    if vendors.iter().flatten().any(|vendor| vendor.trim() == EC2_VENDOR) {
        return Ok(());
    }
    // Xen-based instance types have no EC2 DMI vendor, but their UUID says it.
    let uuid = read("hypervisor/uuid");
    if uuid
        .as_deref()
        .and_then(|uuid| uuid.get(..3))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("ec2"))
    {
        return Ok(());
    }
    let vendor = match vendors.iter().flatten().next() {
        // The vendor becomes a label value: keep it printable and short.
        Some(vendor) => format!(
            "DMI vendor {:?}",
            vendor
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_VALUE)
                .collect::<String>()
        ),
        None => "no DMI vendor".to_owned(),
    };
    let uuid = match uuid {
        Some(_) => "a hypervisor UUID not starting with \"ec2\"",
        None => "no hypervisor UUID",
    };
    Err(format!(
        "not an EC2 instance: {vendor}, {uuid} (set endpoint to ask IMDS anyway)"
    ))
}

/// Where a network figure comes from, as the `source` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Config,
    Table,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Table => "table",
        }
    }
}

/// The instance's network figures in bits per second, each with its source.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    baseline: Option<(f64, Source)>,
    burst: Option<(f64, Source)>,
}

impl Figures {
    fn network_baseline(self) -> Option<NetworkBaseline> {
        self.baseline.map(|(baseline_bps, _)| NetworkBaseline {
            baseline_bps,
            burst_bps: self.burst.map(|(bps, _)| bps),
        })
    }
}

/// `baseline` and `burst` from the config, each winning over the table's figure.
#[derive(Debug, Clone, Copy)]
struct Overrides {
    baseline: Option<Rate>,
    burst: Option<Rate>,
}

impl Overrides {
    fn resolve(self, instance_type: Option<&str>) -> Figures {
        let table = instance_type.and_then(instance_types::lookup);
        let config = |rate: Option<Rate>| rate.map(|rate| (rate.bits_per_second(), Source::Config));
        Figures {
            baseline: config(self.baseline)
                .or_else(|| table.map(|allowance| (allowance.baseline_gbps * GBIT, Source::Table))),
            burst: config(self.burst).or_else(|| {
                table
                    .and_then(|allowance| allowance.burst_gbps)
                    .map(|gbps| (gbps * GBIT, Source::Table))
            }),
        }
    }
}

/// What the IMDS thread learned, read by every collection.
#[derive(Debug, Default)]
struct Learned {
    instance: Option<Arc<facts::Instance>>,
    errors: [u64; ERROR_KINDS.len()],
    last_success: Option<f64>,
}

fn lock(learned: &Mutex<Learned>) -> std::sync::MutexGuard<'_, Learned> {
    // The thread only assigns plain values under the lock: a panic cannot
    // leave them half-written, so a poisoned lock is still good to read.
    learned.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Ec2Instance {
    overrides: Overrides,
    learned: Arc<Mutex<Learned>>,
    /// The thread's work, until the first collection starts it.
    pending: Option<Worker>,
    /// Sending, or dropping, tells the thread to end.
    stop: Option<Sender<()>>,
}

impl Ec2Instance {
    fn new(context: &Context) -> Result<Self, Unavailable> {
        let config = &context.config.instance;
        let endpoint = match &config.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => {
                ec2_host(&context.paths).map_err(|reason| {
                    Unavailable::new(reason).with_remedy("nothing to do off EC2; set [collectors.instance] endpoint to ask an IMDS anyway, or disable the collector")
                })?;
                Endpoint::imds()
            }
        };
        let overrides = Overrides {
            baseline: config.baseline,
            burst: config.burst,
        };
        let learned = Arc::default();
        let worker = Worker {
            client: Client {
                endpoint,
                timeout: config.request_timeout.map_or(DEFAULT_REQUEST_TIMEOUT, Interval::get),
                buf: Vec::new(),
            },
            refresh: config.refresh.map_or(DEFAULT_REFRESH, Interval::get),
            overrides,
            learned: Arc::clone(&learned),
            facts: Arc::clone(&context.facts),
        };
        Ok(Self {
            overrides,
            learned,
            pending: Some(worker),
            stop: None,
        })
    }

    fn start(&mut self) {
        let Some(worker) = self.pending.take() else {
            return;
        };
        // What is already known (the config, or IMDS's answer to the collector
        // this one replaces on reload) is published now, not after IMDS answers.
        let known = worker.facts.instance();
        let figures = self
            .overrides
            .resolve(known.as_deref().map(|instance| instance.instance_type.as_str()));
        worker.facts.set_network_baseline(figures.network_baseline());
        lock(&self.learned).instance = known;
        let (stop, stopped) = mpsc::channel();
        match thread::Builder::new()
            .name("hostwatch-imds".into())
            .spawn(move || worker.run(&stopped))
        {
            Ok(_) => self.stop = Some(stop),
            Err(error) => warn!(
                collector = SPEC.name,
                %error,
                "cannot start the IMDS thread; the identity stays unknown until the next reload"
            ),
        }
    }
}

impl Drop for Ec2Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may have ended already; then there is nobody to tell.
            let _ = stop.send(());
        }
    }
}

impl Collector for Ec2Instance {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        self.start();
        let learned = lock(&self.learned);
        if let Some(instance) = &learned.instance {
            out.push(
                &INFO,
                &[
                    &instance.instance_type,
                    &instance.availability_zone,
                    &instance.instance_id,
                ],
                1.0,
            );
        }
        let figures = self.overrides.resolve(
            learned
                .instance
                .as_deref()
                .map(|instance| instance.instance_type.as_str()),
        );
        for (desc, figure) in [(&BASELINE, figures.baseline), (&BURST, figures.burst)] {
            if let Some((bps, source)) = figure {
                out.push(desc, &[source.label()], bps);
            }
        }
        for (kind, count) in ERROR_KINDS.iter().zip(learned.errors) {
            out.push(&ERRORS, &[kind], count as f64);
        }
        if let Some(timestamp) = learned.last_success {
            out.push(&LAST_SUCCESS, &[], timestamp);
        }
        Ok(())
    }
}

/// The IMDS thread's state.
#[derive(Debug)]
struct Worker {
    client: Client,
    refresh: Duration,
    overrides: Overrides,
    learned: Arc<Mutex<Learned>>,
    facts: Arc<HostFacts>,
}

/// Why one round of questions ended without an identity.
enum Interrupted {
    Stopped,
    Failed(ImdsError),
}

impl From<ImdsError> for Interrupted {
    fn from(error: ImdsError) -> Self {
        Self::Failed(error)
    }
}

impl Worker {
    fn run(mut self, stop: &Receiver<()>) {
        let mut retry = RETRY_FIRST;
        let mut last_failure = None;
        loop {
            let delay = match self.client.identity(stop) {
                // A thread told to stop while its last request was answered must not
                // publish over its successor, which may have another config.
                Ok(_) if stopped(stop) => return,
                Ok(instance) => {
                    self.learn(instance);
                    retry = RETRY_FIRST;
                    last_failure = None;
                    self.refresh
                }
                Err(Interrupted::Stopped) => return,
                Err(Interrupted::Failed(error)) => {
                    let kind = error.kind();
                    if let Some(index) = ERROR_KINDS.iter().position(|k| *k == kind) {
                        lock(&self.learned).errors[index] += 1;
                    }
                    // IMDS down stays down for a while: say so once per kind of failure.
                    if last_failure.replace(kind) == Some(kind) {
                        debug!(collector = SPEC.name, %error, ?retry, "IMDS request failed");
                    } else {
                        warn!(collector = SPEC.name, %error, ?retry, "IMDS request failed");
                    }
                    let delay = retry;
                    retry = next_retry(retry);
                    delay
                }
            };
            match stop.recv_timeout(delay) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn learn(&self, instance: facts::Instance) {
        let figures = self.overrides.resolve(Some(&instance.instance_type));
        if figures.baseline.is_none() {
            info!(
                collector = SPEC.name,
                instance_type = %instance.instance_type,
                "instance type not in the built-in table; set [collectors.instance] baseline for headroom ratios"
            );
        }
        let instance = Arc::new(instance);
        self.facts.set_instance(Some(Arc::clone(&instance)));
        self.facts.set_network_baseline(figures.network_baseline());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let mut learned = lock(&self.learned);
        learned.instance = Some(instance);
        learned.last_success = Some(now);
    }
}

fn next_retry(previous: Duration) -> Duration {
    (previous * 2).min(RETRY_MAX)
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// A minimal HTTP/1.1 client for IMDS: one request per connection, bodies
/// delimited by Content-Length or by the server closing, everything bounded.
#[derive(Debug)]
struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    /// The response being read, kept for its capacity.
    buf: Vec<u8>,
}

impl Client {
    /// The IMDSv2 token, then the three values, checking between requests
    /// whether the collector is gone.
    fn identity(&mut self, stop: &Receiver<()>) -> Result<facts::Instance, Interrupted> {
        let token = self.request(
            "PUT",
            TOKEN_PATH,
            ("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS),
            MAX_TOKEN,
        )?;
        let mut get = |path| {
            if stopped(stop) {
                return Err(Interrupted::Stopped);
            }
            Ok(self.request("GET", path, ("X-aws-ec2-metadata-token", &token), MAX_VALUE)?)
        };
        Ok(facts::Instance {
            instance_type: get(TYPE_PATH)?,
            availability_zone: get(ZONE_PATH)?,
            instance_id: get(ID_PATH)?,
        })
    }

    /// One request; the body of a 200 answer, which must be printable ASCII
    /// of at most `max` bytes (it becomes a header or a label value).
    fn request(
        &mut self,
        method: &str,
        path: &'static str,
        header: (&str, &str),
        max: usize,
    ) -> Result<String, ImdsError> {
        let deadline = Instant::now() + self.timeout;
        let (limit, addr) = (self.timeout, self.endpoint.addr);
        let timed_out = move || ImdsError::Timeout { path, timeout: limit };
        let io_error = move |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            io::ErrorKind::ConnectionRefused => ImdsError::Refused { path, addr },
            _ => ImdsError::Io { path, source },
        };
        let garbage = |reason: String| ImdsError::Garbage { path, reason };
        // What is left of the request's time; a zero timeout would mean "block forever".
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .ok_or_else(timed_out)
        };

        let mut stream = TcpStream::connect_timeout(&self.endpoint.addr, self.timeout).map_err(io_error)?;
        let (name, value) = header;
        // PUT carries an empty body, and says so.
        let length = if method == "PUT" { "Content-Length: 0\r\n" } else { "" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{name}: {value}\r\n{length}Connection: close\r\n\r\n",
            self.endpoint.host
        );
        stream.set_write_timeout(Some(remaining()?)).map_err(io_error)?;
        stream.write_all(head.as_bytes()).map_err(io_error)?;

        self.buf.clear();
        let mut response = None;
        let mut chunk = [0u8; 1024];
        loop {
            stream.set_read_timeout(Some(remaining()?)).map_err(io_error)?;
            let read = match stream.read(&mut chunk) {
                Ok(read) => read,
                // The socket's timeout counts in kernel ticks and may end a
                // tick before the deadline: the loop's `remaining` decides.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(io_error(error)),
            };
            if read == 0 {
                break;
            }
            if self.buf.len() + read > MAX_RESPONSE {
                return Err(garbage(format!("response longer than {MAX_RESPONSE} bytes")));
            }
            self.buf.extend_from_slice(&chunk[..read]);
            if response.is_none()
                && let Some(end) = head_end(&self.buf)
            {
                let parsed = parse_head(&self.buf[..end]).map_err(garbage)?;
                match parsed.status {
                    200 => {}
                    401 => return Err(ImdsError::Unauthorized { path }),
                    status => return Err(ImdsError::Status { path, status }),
                }
                if parsed.content_length.is_some_and(|length| length > MAX_BODY) {
                    return Err(garbage(format!("body longer than {MAX_BODY} bytes")));
                }
                response = Some((end, parsed.content_length));
            }
            if let Some((end, Some(length))) = response
                && self.buf.len() >= end + length
            {
                return printable(&self.buf[end..end + length], max).map_err(garbage);
            }
        }
        match response {
            None if self.buf.is_empty() => Err(garbage("connection closed without a response".into())),
            None => Err(garbage("connection closed inside the response head".into())),
            Some((end, Some(length))) => Err(garbage(format!(
                "connection closed after {} of {length} body bytes",
                self.buf.len() - end
            ))),
            Some((end, None)) if self.buf.len() - end > MAX_BODY => {
                Err(garbage(format!("body longer than {MAX_BODY} bytes")))
            }
            Some((end, None)) => printable(&self.buf[end..], max).map_err(garbage),
        }
    }
}

/// The length of the response head, blank line included, once it is complete.
fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|window| window == b"\r\n\r\n").map(|at| at + 4)
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let head = std::str::from_utf8(head).map_err(|_| "response head is not text".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.x status line: {:?}", truncated(status_line)))?;
    let mut content_length = None;
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {:?}", truncated(line)))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // IMDS sends Content-Length; a chunked body is not worth a parser here.
            return Err(format!("unsupported Transfer-Encoding {:?}", truncated(value)));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<usize>()
                .map_err(|_| format!("invalid Content-Length {:?}", truncated(value)))?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(length);
        }
    }
    Ok(Head { status, content_length })
}

/// A value from IMDS: one printable ASCII word, neither empty nor longer than `max`.
fn printable(body: &[u8], max: usize) -> Result<String, String> {
    if body.is_empty() {
        return Err("empty body".into());
    }
    if body.len() > max {
        return Err(format!("value of {} bytes, more than {max}", body.len()));
    }
    if !body.iter().all(u8::is_ascii_graphic) {
        return Err("value holds bytes other than printable ASCII".into());
    }
    Ok(body.iter().copied().map(char::from).collect())
}

/// At most 64 characters of `text`, for error messages about garbage.
fn truncated(text: &str) -> String {
    text.chars().take(MAX_VALUE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectorsConfig;
    use crate::testing::TempTree;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How the fake IMDS answers.
    #[derive(Clone)]
    enum Behaviour {
        /// The IMDSv2 token flow: a token for a PUT, values for GETs that carry it, 401 otherwise.
        Imds { instance_type: &'static str },
        /// Accepts connections and never answers.
        Hang,
        /// The same bytes for every request.
        Raw(Vec<u8>),
    }

    const TOKEN: &str = "AQAEAFakeToken==";

    /// An HTTP server on 127.0.0.1 in a thread of its own, for the life of the test process.
    struct FakeImds {
        endpoint: Endpoint,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl FakeImds {
        fn start(behaviour: Behaviour) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (count, log) = (Arc::clone(&connections), Arc::clone(&requests));
            thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    match &behaviour {
                        Behaviour::Hang => held.push(stream),
                        behaviour => serve(stream, behaviour, &log),
                    }
                }
            });
            Self {
                endpoint: Endpoint::parse(&format!("http://{addr}")).expect("endpoint"),
                connections,
                requests,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    fn serve(mut stream: TcpStream, behaviour: &Behaviour, log: &Mutex<Vec<String>>) {
        let mut reader = io::BufReader::new(stream.try_clone().expect("clone"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let request_line = head.first().cloned().unwrap_or_default();
        log.lock().expect("log").push(request_line.clone());
        let header = |name: &str| {
            head.iter().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
        };
        let response = match behaviour {
            Behaviour::Raw(bytes) => bytes.clone(),
            Behaviour::Hang => return,
            Behaviour::Imds { instance_type } => {
                let body = match request_line.split(' ').take(2).collect::<Vec<_>>()[..] {
                    ["PUT", TOKEN_PATH]
                        if header("x-aws-ec2-metadata-token-ttl-seconds").as_deref() == Some("21600") =>
                    {
                        Some(TOKEN)
                    }
                    ["GET", path] if header("x-aws-ec2-metadata-token").as_deref() == Some(TOKEN) => match path {
                        TYPE_PATH => Some(*instance_type),
                        ZONE_PATH => Some("eu-west-3a"),
                        ID_PATH => Some("i-0123456789abcdef0"),
                        _ => None,
                    },
                    _ => None,
                };
                match body {
                    Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
                    None => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned(),
                }
                .into_bytes()
            }
        };
        let _ = stream.write_all(&response);
    }

    fn client(endpoint: &Endpoint, timeout: Duration) -> Client {
        Client {
            endpoint: endpoint.clone(),
            timeout,
            buf: Vec::new(),
        }
    }

    fn config(endpoint: &Endpoint, extra: &str) -> CollectorsConfig {
        let mut config: CollectorsConfig = toml::from_str(&format!("[instance]\n{extra}")).expect("config");
        config.instance.endpoint = Some(endpoint.clone());
        config
    }

    /// A host without DMI: the collector runs only because the endpoint is explicit.
    fn build(config: CollectorsConfig) -> (TempTree, Context, Box<dyn Collector>) {
        let tree = TempTree::new(&[("sys/", "")]);
        let context = Context::new(tree.paths(), config);
        let collector = (SPEC.build)(&context).expect("builds with an explicit endpoint");
        (tree, context, collector)
    }

    fn collect(collector: &mut Box<dyn Collector>) -> MetricSet {
        let mut set = MetricSet::default();
        collector.collect(&mut set).expect("collect never fails");
        set
    }

    /// Collects until `done` holds, for at most five seconds.
    fn collect_until(collector: &mut Box<dyn Collector>, done: impl Fn(&MetricSet) -> bool) -> MetricSet {
        let start = Instant::now();
        loop {
            let set = collect(collector);
            if done(&set) || start.elapsed() > Duration::from_secs(5) {
                return set;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn errors(set: &MetricSet, kind: &str) -> f64 {
        set.get("hostwatch_instance_metadata_errors_total", &[kind])
            .unwrap_or(-1.0)
    }

    #[test]
    fn identity_and_baseline_from_the_token_flow() {
        let imds = FakeImds::start(Behaviour::Imds {
            instance_type: "m6i.large",
        });
        let (_tree, context, mut collector) = build(config(&imds.endpoint, ""));
        let set = collect_until(&mut collector, |set| set.families().any(|f| f.desc().name == INFO.name));
        assert_eq!(
            set.get(INFO.name, &["m6i.large", "eu-west-3a", "i-0123456789abcdef0"]),
            Some(1.0),
            "{set}"
        );
        assert_eq!(set.get(BASELINE.name, &["table"]), Some(0.781e9));
        assert_eq!(set.get(BURST.name, &["table"]), Some(12.5e9));
        for kind in ERROR_KINDS {
            assert_eq!(errors(&set, kind), 0.0, "{kind}");
        }
        assert!(set.get(LAST_SUCCESS.name, &[]).is_some_and(|t| t > 1.7e9));
        assert_eq!(
            context.facts.instance().map(|i| i.instance_id.clone()).as_deref(),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(
            context.facts.network_baseline(),
            Some(NetworkBaseline {
                baseline_bps: 0.781e9,
                burst_bps: Some(12.5e9)
            })
        );
        let requests = imds.requests.lock().expect("log").clone();
        assert_eq!(
            requests,
            [
                "PUT /latest/api/token HTTP/1.1",
                "GET /latest/meta-data/instance-type HTTP/1.1",
                "GET /latest/meta-data/placement/availability-zone HTTP/1.1",
                "GET /latest/meta-data/instance-id HTTP/1.1",
            ]
        );
    }

    #[test]
    fn the_token_is_required() {
        let imds = FakeImds::start(Behaviour::Imds {
            instance_type: "m6i.large",
        });
        let mut client = client(&imds.endpoint, Duration::from_secs(1));
        let header = ("X-aws-ec2-metadata-token", "wrong");
        let error = client
            .request("GET", TYPE_PATH, header, MAX_VALUE)
            .expect_err("refused");
        assert_eq!(error.kind(), "unauthorized", "{error}");
        let error = client
            .request("GET", TYPE_PATH, ("X-Other", "1"), MAX_VALUE)
            .expect_err("refused");
        assert_eq!(error.kind(), "unauthorized", "{error}");
        let header = ("X-aws-ec2-metadata-token", TOKEN);
        assert_eq!(
            client.request("GET", TYPE_PATH, header, MAX_VALUE).ok().as_deref(),
            Some("m6i.large")
        );
        let error = client
            .request("GET", "/latest/meta-data/nope", header, MAX_VALUE)
            .expect_err("404");
        assert_eq!(
            error.kind(),
            "unauthorized",
            "the fake answers 401 to unknown paths: {error}"
        );
    }

    #[test]
    fn a_refused_token_is_counted_and_nothing_else_asked() {
        let imds = FakeImds::start(Behaviour::Raw(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ));
        let (_tree, context, mut collector) = build(config(&imds.endpoint, ""));
        let set = collect_until(&mut collector, |set| errors(set, "unauthorized") >= 1.0);
        assert_eq!(errors(&set, "unauthorized"), 1.0, "{set}");
        assert_eq!(
            set.get(INFO.name, &["m6i.large", "eu-west-3a", "i-0123456789abcdef0"]),
            None
        );
        assert!(set.families().all(|f| f.desc().name != INFO.name));
        assert_eq!(context.facts.instance(), None);
        // Only the token was asked for; the retry comes a second later.
        assert_eq!(imds.requests.lock().expect("log").len(), 1);
    }

    #[test]
    fn a_hanging_imds_never_blocks_a_collection() {
        let imds = FakeImds::start(Behaviour::Hang);
        let (_tree, _context, mut collector) = build(config(&imds.endpoint, "request_timeout = \"300ms\"\n"));
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        while start.elapsed() < Duration::from_millis(600) {
            let begun = Instant::now();
            let set = collect(&mut collector);
            slowest = slowest.max(begun.elapsed());
            assert!(set.families().all(|f| f.desc().name != INFO.name));
            thread::sleep(Duration::from_millis(10));
        }
        assert!(slowest < Duration::from_millis(20), "a collection took {slowest:?}");
        assert!(imds.connections() >= 1, "the thread did ask");
        let set = collect_until(&mut collector, |set| errors(set, "timeout") >= 1.0);
        assert_eq!(errors(&set, "timeout"), 1.0, "{set}");
    }

    #[test]
    fn the_request_timeout_bounds_a_request() {
        let imds = FakeImds::start(Behaviour::Hang);
        let mut client = client(&imds.endpoint, Duration::from_millis(200));
        let start = Instant::now();
        let error = client
            .request(
                "PUT",
                TOKEN_PATH,
                ("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
                MAX_TOKEN,
            )
            .expect_err("hangs");
        let took = start.elapsed();
        assert_eq!(error.kind(), "timeout", "{error}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(700),
            "{took:?}"
        );
        assert_eq!(error.to_string(), "/latest/api/token: no complete answer within 200ms");
    }

    #[test]
    fn a_trickling_server_cannot_stretch_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = Endpoint::parse(&format!("http://{}", listener.local_addr().expect("addr"))).expect("endpoint");
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nm6i.large" {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        });
        let start = Instant::now();
        let error = client(&endpoint, Duration::from_millis(300))
            .request("GET", TYPE_PATH, ("X-aws-ec2-metadata-token", TOKEN), MAX_VALUE)
            .expect_err("too slow");
        assert_eq!(error.kind(), "timeout", "{error}");
        assert!(start.elapsed() < Duration::from_millis(800), "{:?}", start.elapsed());
    }

    #[test]
    fn refused_connections_are_their_own_kind() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("endpoint");
        let error = client(&endpoint, Duration::from_secs(1))
            .request(
                "PUT",
                TOKEN_PATH,
                ("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
                MAX_TOKEN,
            )
            .expect_err("nobody listens");
        assert_eq!(error.kind(), "refused", "{error}");
    }

    fn answer(raw: &[u8]) -> Result<String, ImdsError> {
        let imds = FakeImds::start(Behaviour::Raw(raw.to_vec()));
        client(&imds.endpoint, Duration::from_secs(2)).request(
            "GET",
            TYPE_PATH,
            ("X-aws-ec2-metadata-token", TOKEN),
            MAX_VALUE,
        )
    }

    #[test]
    fn garbage_answers_are_errors_not_values() {
        let ok = |body: &str| format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(answer(ok("c5.large").as_bytes()).ok().as_deref(), Some("c5.large"));
        // Close-delimited bodies are read to the end.
        assert_eq!(
            answer(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nr5.metal").ok().as_deref(),
            Some("r5.metal")
        );
        let huge = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(100_000));
        let long_header = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\nm5.large", "p".repeat(10_000));
        let long_value = ok(&"m".repeat(65));
        let cases: [(&[u8], &str); 13] = [
            (b"", "connection closed without a response"),
            (b"\x00\x01\x02\xff", "connection closed inside the response head"),
            (b"hello\r\n\r\n", "not an HTTP/1.x status line: \"hello\""),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "empty body"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x00\x01\x02\x03",
                "value holds bytes other than printable ASCII",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nm6i.large\r\n ",
                "value holds bytes other than printable ASCII",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nm6i.large",
                "connection closed after 9 of 20 body bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n",
                "body longer than 4096 bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
                "invalid Content-Length \"ten\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nm6i.large\r\n0\r\n\r\n",
                "unsupported Transfer-Encoding \"chunked\"",
            ),
            (huge.as_bytes(), "response longer than 8192 bytes"),
            (long_header.as_bytes(), "response longer than 8192 bytes"),
            (long_value.as_bytes(), "value of 65 bytes, more than 64"),
        ];
        for (raw, reason) in cases {
            let error = answer(raw).expect_err("garbage");
            assert_eq!(error.kind(), "garbage", "{error}");
            assert_eq!(error.to_string(), format!("{TYPE_PATH}: {reason}"));
        }
        let error = answer(b"HTTP/1.1 503 Slow Down\r\n\r\n").expect_err("503");
        assert_eq!(error.to_string(), format!("{TYPE_PATH}: HTTP 503"));
        assert_eq!(error.kind(), "status");
    }

    #[test]
    fn garbage_is_counted_by_the_collector() {
        let imds = FakeImds::start(Behaviour::Raw(b"\x00\x01 binary \xff\r\n\r\n".to_vec()));
        let (_tree, _context, mut collector) = build(config(&imds.endpoint, ""));
        let set = collect_until(&mut collector, |set| errors(set, "garbage") >= 1.0);
        assert_eq!(errors(&set, "garbage"), 1.0, "{set}");
        assert!(set.families().all(|f| f.desc().name != INFO.name));
    }

    #[test]
    fn overrides_win_and_are_published_before_imds_answers() {
        let imds = FakeImds::start(Behaviour::Hang);
        let (_tree, context, mut collector) = build(config(
            &imds.endpoint,
            "baseline = \"25Gbit\"\nrequest_timeout = \"5s\"\n",
        ));
        let set = collect(&mut collector);
        assert_eq!(set.get(BASELINE.name, &["config"]), Some(25e9), "{set}");
        assert!(
            set.families()
                .all(|f| f.desc().name != BURST.name && f.desc().name != INFO.name)
        );
        assert_eq!(
            context.facts.network_baseline(),
            Some(NetworkBaseline {
                baseline_bps: 25e9,
                burst_bps: None
            })
        );

        // Field by field: the config's burst with the table's baseline.
        let overrides = Overrides {
            baseline: None,
            burst: Rate::parse("20Gbit").ok(),
        };
        assert_eq!(
            overrides.resolve(Some("m6i.large")),
            Figures {
                baseline: Some((0.781e9, Source::Table)),
                burst: Some((20e9, Source::Config))
            }
        );
        assert_eq!(
            overrides.resolve(Some("m6i.8xlarge")).burst,
            Some((20e9, Source::Config))
        );
        assert_eq!(
            overrides.resolve(Some("m6i.8xlarge")).baseline,
            Some((12.5e9, Source::Table))
        );
        // Without a baseline there is nothing for headroom to divide by.
        assert_eq!(overrides.resolve(Some("unknown.type")).network_baseline(), None);
        assert_eq!(overrides.resolve(None).burst, Some((20e9, Source::Config)));
    }

    #[test]
    fn dropping_the_collector_stops_the_thread() {
        let imds = FakeImds::start(Behaviour::Imds {
            instance_type: "c5.large",
        });
        let (_tree, _context, mut collector) = build(config(&imds.endpoint, "refresh = \"10ms\"\n"));
        collect_until(&mut collector, |_| imds.connections() >= 12);
        assert!(imds.connections() >= 12, "refreshes every 10ms while alive");
        drop(collector);
        thread::sleep(Duration::from_millis(100));
        let after_drop = imds.connections();
        thread::sleep(Duration::from_millis(300));
        assert_eq!(imds.connections(), after_drop, "no request after the collector is gone");
    }

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        let mut delays = vec![RETRY_FIRST];
        for _ in 0..7 {
            delays.push(next_retry(delays[delays.len() - 1]));
        }
        assert_eq!(
            delays.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 30, 30, 30]
        );
    }

    #[test]
    fn only_ec2_hosts_ask_imds_unless_told_to() {
        let vendor = |file: &str, value: &str| TempTree::new(&[(file, value)]);
        for tree in [
            vendor("sys/class/dmi/id/sys_vendor", "Amazon EC2\n"),
            vendor("sys/class/dmi/id/board_vendor", "Amazon EC2\n"),
            vendor("sys/hypervisor/uuid", "ec2e1916-9099-7caf-fd21-012345abcdef\n"),
            vendor("sys/hypervisor/uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n"),
        ] {
            assert_eq!(ec2_host(&tree.paths()), Ok(()));
        }
        let qemu = TempTree::new(&[
            ("sys/class/dmi/id/sys_vendor", "QEMU\n"),
            ("sys/hypervisor/uuid", "4b0dd8ef-0000-0000-0000-000000000000\n"),
        ]);
        assert_eq!(
            ec2_host(&qemu.paths()),
            Err("not an EC2 instance: DMI vendor \"QEMU\", a hypervisor UUID not starting with \"ec2\" (set endpoint to ask IMDS anyway)".into())
        );

        // Without an endpoint, a host that is not EC2 is unavailable: build
        // fails, so there is no collector and no thread to send anything.
        let bare = TempTree::new(&[("sys/", "")]);
        let error = (SPEC.build)(&Context::new(bare.paths(), CollectorsConfig::default())).err();
        assert_eq!(
            error.map(|e| e.reason),
            Some("not an EC2 instance: no DMI vendor, no hypervisor UUID (set endpoint to ask IMDS anyway)".into())
        );
        let error = (SPEC.build)(&Context::new(qemu.paths(), CollectorsConfig::default())).err();
        assert!(error.is_some_and(|e| e.reason.starts_with("not an EC2 instance: DMI vendor \"QEMU\"")));
    }

    #[test]
    fn endpoints_are_addresses() {
        let parse = |text: &str| Endpoint::parse(text).map(|e| (e.addr.to_string(), e.host));
        assert_eq!(
            parse("http://169.254.169.254"),
            Ok(("169.254.169.254:80".into(), "169.254.169.254".into()))
        );
        assert_eq!(Endpoint::parse("http://169.254.169.254/"), Ok(Endpoint::imds()));
        assert_eq!(
            parse("http://127.0.0.1:8080"),
            Ok(("127.0.0.1:8080".into(), "127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse("http://[fd00:ec2::254]"),
            Ok(("[fd00:ec2::254]:80".into(), "[fd00:ec2::254]".into()))
        );
        for bad in [
            "169.254.169.254",
            "https://169.254.169.254",
            "http://instance-data",
            "http://169.254.169.254/latest",
            "http://1.2.3.4:99999",
            "http://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_section_parses() {
        let config: CollectorsConfig = toml::from_str(
            "[instance]\nendpoint = \"http://127.0.0.1:1338\"\nrefresh = \"30m\"\nrequest_timeout = \"250ms\"\n\
             baseline = \"12.5Gbit\"\nburst = \"25Gbit\"\n",
        )
        .expect("valid");
        assert_eq!(config.instance.endpoint, Endpoint::parse("http://127.0.0.1:1338").ok());
        assert_eq!(
            config.instance.refresh.map(Interval::get),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(config.instance.baseline.map(Rate::bits_per_second), Some(12.5e9));
        let defaults = CollectorsConfig::default().instance;
        assert_eq!(
            (defaults.endpoint, defaults.baseline, defaults.refresh),
            (None, None, None)
        );
        let error = toml::from_str::<CollectorsConfig>("[instance]\nendpoint = \"imds.internal\"\n").err();
        assert!(error.is_some_and(|e| e.to_string().contains("must start with http://")));
        let error = toml::from_str::<CollectorsConfig>("[instance]\nbaseline = \"fast\"\n").err();
        assert!(error.is_some_and(|e| e.to_string().contains("invalid rate \"fast\"")));
    }

    #[test]
    fn heads_are_parsed_strictly() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nContent-Length: 9\r\n\r\n"),
            Ok(Head {
                status: 200,
                content_length: Some(9)
            })
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Length: 8\r\n\r\n"),
            Err("conflicting Content-Length headers".into())
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err("not an HTTP/1.x status line: \"HTTP/1.1 2x0 OK\"".into())
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            Err("malformed header line \"no colon\"".into())
        );
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
