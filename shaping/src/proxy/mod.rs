//! The S3 pacing proxy: a forward proxy on loopback that clients reach
//! through `HTTPS_PROXY` / `HTTP_PROXY`. `CONNECT` tunnels for HTTPS (no TLS
//! termination: signatures and certificates are untouched) and absolute-URI
//! forwarding for plain HTTP, paced per policy and direction by continuous
//! token buckets, with an adaptive (AIMD) controller per policy.
//!
//! Reads [`HostFacts`] (ENA allowance drops, bursts) for the adaptive rate.
//! Needs its listen socket and outbound TCP. Not an open proxy: only the
//! configured ports (443 and 80) of hosts a policy or the pass-through list
//! names are reachable, anything else gets 403. Bounded: at most
//! `max_connections` clients (503 beyond), a header timeout and size, an idle
//! timeout. It changes nothing on the host but its own sockets, which
//! [`Shaper::stop`] closes.

pub mod adaptive;
pub mod config;
pub mod head;
pub mod metrics;
pub mod relay;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hostwatch_collectors::MetricSet;
use hostwatch_collectors::facts::HostFacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::adaptive::Controller;
pub use self::config::Config;
use self::head::{HeadError, Kind};
use self::state::{Direction, PolicyState, Refusal, State};
use crate::loopback::{local_congestion, socket_to};

/// The smallest upstream receive buffer the proxy asks for (the kernel
/// doubles it). Windows of a segment or two only make the server send in
/// tiny pieces: measured against moto, 2 kB buffers halved its throughput.
const MIN_RECEIVE_BUFFER: f64 = 8192.0;

/// The smallest send buffer: the kernel's own minimum (about 4.5 kB once
/// doubled). Whatever the send buffers hold when the server stops reading
/// leaves together when it reads again, in every connection at once.
const MIN_SEND_BUFFER: f64 = 2048.0;

/// How long stopping waits for connection tasks to close their sockets.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What publishes the proxy's metrics: given a new set, returns the one it
/// replaces so its buffers are reused.
pub type Publish = Box<dyn Fn(Arc<MetricSet>) -> Option<Arc<MetricSet>> + Send + Sync>;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShaperError {
    #[error("shaping proxy cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("shaping proxy cannot start its pacing timer thread: {source}")]
    Timer {
        #[source]
        source: std::io::Error,
    },
}

/// The running proxy.
#[derive(Debug)]
pub struct Shaper {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Shaper {
    /// Binds the listen socket and starts serving, the adaptive controllers
    /// and the metrics publication.
    pub async fn start(config: &Config, facts: Arc<HostFacts>, publish: Publish) -> Result<Self, ShaperError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ShaperError::Bind {
                addr: config.listen,
                source,
            })?;
        // With port 0 the kernel picks one; log the one actually bound.
        let addr = listener.local_addr().unwrap_or(config.listen);
        // Accepted connections inherit it, before their first packet.
        local_congestion(&listener, addr);
        let state = Arc::new(State::new(config).map_err(|source| ShaperError::Timer { source })?);
        let controller = Controller::new(&config.policy.0, config.dry_run);
        controller.start(&state.policies);
        let (shutdown, stopped) = watch::channel(false);
        let serving = Serving {
            state: Arc::clone(&state),
            header_timeout: config.header_timeout.get(),
            max_header_bytes: config.max_header_bytes.get(),
            idle_timeout: config.idle_timeout.get(),
            connect_timeout: config.connect_timeout.get(),
            socket_buffer: config.socket_buffer.get(),
        };
        let permits = config.max_connections.get();
        let tasks = vec![
            tokio::spawn(accept(listener, Arc::new(serving), permits, stopped.clone())),
            tokio::spawn(control(
                state,
                controller,
                facts,
                publish,
                (config.interval.get(), config.dry_run),
                stopped,
            )),
        ];
        info!(listen = %addr, policies = config.policy.0.len(), dry_run = config.dry_run, "shaping proxy started");
        Ok(Self { shutdown, tasks })
    }

    /// Stops accepting, closes every tunnel, and waits (bounded) for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        info!("shaping proxy stopped; its connections are closed");
    }
}

/// What each connection needs, shared.
#[derive(Debug)]
struct Serving {
    state: Arc<State>,
    header_timeout: Duration,
    max_header_bytes: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    socket_buffer: Duration,
}

async fn accept(listener: TcpListener, serving: Arc<Serving>, permits: usize, mut stopped: watch::Receiver<bool>) {
    let semaphore = Arc::new(Semaphore::new(permits));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "shaping proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() else {
            serving.state.refused(Refusal::Busy);
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let serving = Arc::clone(&serving);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serve(stream, &serving) => {}
                _ = stopped.changed() => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every connection task returns its permit when it has dropped its sockets.
    let all = u32::try_from(permits).unwrap_or(u32::MAX);
    if tokio::time::timeout(STOP_GRACE, semaphore.acquire_many(all))
        .await
        .is_err()
    {
        debug!("shaping proxy: connections still closing after the grace period");
    }
}

/// Answers 503 to a connection beyond the limit. The head is read (bounded)
/// first: closing with unread data would reset the connection and the client
/// would see an error instead of the 503.
async fn refuse_busy(mut stream: TcpStream) {
    let mut head = [0u8; 1024];
    // A client that says nothing (an idle connection) still gets its answer.
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = stream.write_all(Refusal::Busy.response()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn refuse(stream: &mut TcpStream, state: &State, refusal: Refusal) {
    state.refused(refusal);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(refusal.response()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// One client connection: its head, the policy check, the upstream, the relay.
async fn serve(mut client: TcpStream, serving: &Serving) {
    let state = &*serving.state;
    let mut buf = Vec::new();
    let head = tokio::time::timeout(
        serving.header_timeout,
        head::read_head(&mut client, &mut buf, serving.max_header_bytes),
    )
    .await;
    let end = match head {
        Ok(Ok(end)) => end,
        Ok(Err(HeadError::TooLarge { .. })) => return refuse(&mut client, state, Refusal::HeadTooLarge).await,
        Ok(Err(HeadError::Malformed(_))) => return refuse(&mut client, state, Refusal::Malformed).await,
        // Gone before asking anything: nobody to answer.
        Ok(Err(HeadError::Closed | HeadError::Io(_))) => return,
        Err(_) => return refuse(&mut client, state, Refusal::HeadTimeout).await,
    };
    let request = match head::parse_request(&buf[..end]) {
        Ok(request) => request,
        Err(error) => {
            debug!(%error, "shaping proxy: request refused");
            return refuse(&mut client, state, Refusal::Malformed).await;
        }
    };
    let policy = match state.route(&request.host, request.port) {
        Ok(policy) => policy,
        Err(refusal) => {
            debug!(host = %request.host, port = request.port, reason = refusal.as_str(), "shaping proxy: destination refused");
            return refuse(&mut client, state, refusal).await;
        }
    };
    // Counted before connecting: the socket buffers are sized by the
    // connections a policy has, and clients open several at once.
    let _open = policy.opened();
    let connected = tokio::time::timeout(
        serving.connect_timeout,
        connect(&request.host, request.port, policy, serving.socket_buffer),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            debug!(host = %request.host, port = request.port, %error, "shaping proxy: upstream unreachable");
            return refuse(&mut client, state, Refusal::UpstreamUnreachable).await;
        }
        Err(_) => return refuse(&mut client, state, Refusal::UpstreamTimeout).await,
    };
    let forwarding = matches!(request.kind, Kind::Forward { .. });
    let mut first = Vec::new();
    if forwarding {
        head::forward_head(&request, &mut first);
    } else if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Whatever followed the head (a TLS hello, a request body) goes first,
    // paced like the rest: several clients starting at once would otherwise
    // send a head buffer each in the same millisecond.
    first.extend_from_slice(&buf[end..]);
    let (host, port) = (request.host.clone(), request.port);
    drop(request);
    drop(buf);
    let paced = (policy, &state.timer);
    // Boxed: the relay's state is far larger than a connection waiting for
    // its head, and thousands of those must stay cheap.
    let relayed = Box::pin(relay::relay(
        &mut client,
        &mut upstream,
        paced,
        (serving.idle_timeout, serving.socket_buffer),
        (forwarding, &first),
    ));
    match relayed.await {
        Ok(()) => debug!(%host, port, policy = %policy.name, "shaping proxy: tunnel closed"),
        Err(error) => debug!(%host, port, policy = %policy.name, %error, "shaping proxy: tunnel ended"),
    }
}

/// The upstream socket buffer of one connection for `direction` (receive
/// for downloads, send for uploads): its share of `socket_buffer` at the
/// policy's current rate, halved because the kernel doubles what it is asked
/// for. `None` when the direction is unlimited (the kernel's autotuning).
pub(crate) fn socket_buffer(policy: &PolicyState, direction: Direction, buffer: Duration) -> Option<usize> {
    let floor = match direction {
        Direction::Download => MIN_RECEIVE_BUFFER,
        Direction::Upload => MIN_SEND_BUFFER,
    };
    let share = policy.open().max(1) as f64;
    policy
        .lane(direction)
        .rate()
        .map(|bits| (bits / 8.0 * buffer.as_secs_f64() / share / 2.0).max(floor) as usize)
}

/// Connects to `host:port` with the upstream socket's buffers set before
/// connecting (see [`socket_buffer`]; the relay keeps them at their share as
/// connections come and go): the receive buffer is the window a server may
/// fill in one burst, at the start of every response, in every connection
/// at once.
async fn connect(host: &str, port: u16, policy: &PolicyState, buffer: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = socket_to(addr)?;
        if let Some(bytes) = socket_buffer(policy, Direction::Download, buffer) {
            socket.set_recv_buffer_size(u32::try_from(bytes).unwrap_or(u32::MAX))?;
        }
        if let Some(bytes) = socket_buffer(policy, Direction::Upload, buffer) {
            socket.set_send_buffer_size(u32::try_from(bytes).unwrap_or(u32::MAX))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                // Paced slices are small writes: never hold one back for Nagle.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

/// Every `interval`: the adaptive controllers decide, then the metrics are
/// published.
async fn control(
    state: Arc<State>,
    mut controller: Controller,
    facts: Arc<HostFacts>,
    publish: Publish,
    (interval, dry_run): (Duration, bool),
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spare = MetricSet::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        if !controller.is_empty() {
            controller.tick(facts.congestion(), &state.policies);
        }
        spare.clear();
        metrics::write(&state, &controller, dry_run, &mut spare);
        let previous = publish(Arc::new(std::mem::take(&mut spare)));
        // The previous set's buffers, when no scrape holds it any more.
        spare = previous.and_then(|p| Arc::try_unwrap(p).ok()).unwrap_or_default();
    }
}
