//! lz4 compression tunnels between hostwatch agents, for host-to-host bulk
//! streams that would otherwise spend the instance's network allowance.
//!
//! A `client` tunnel listens locally; each connection an application makes
//! to it goes on to a `server` tunnel of the peer's agent, which forwards it
//! to its local target. Between the agents both directions travel as lz4
//! frames with content checksums (see `codec.rs`) when the client chose to
//! compress that connection: always, or only while the host is near its
//! allowance (`signal.rs`). Half-closes pass through; a corrupt frame closes
//! its connection, is counted, and nothing else is affected.
//!
//! Opens sockets only: the `listen` addresses, and connections to the
//! `connect` addresses. Needs no privilege beyond binding those ports and
//! changes nothing on the host, so there is nothing to undo at exit or
//! reconcile at start. The server side forwards only to its one configured
//! target, but anyone who can reach its `listen` address can use it: bind it
//! to the private address the peers use and keep it behind security groups.

mod codec;
pub mod config;
mod metrics;
mod relay;
mod signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostwatch_collectors::MetricSet;
use hostwatch_collectors::facts::HostFacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use self::codec::{Encoding, HEADER_LEN};
use self::config::{CompressionConfig, Mode, Side, TunnelConfig};
use self::metrics::{Failure, TunnelMetrics};
use self::relay::{RelayError, relay};
use self::signal::NearAllowance;
use crate::loopback::{local_congestion, socket_to};

/// A listen address that cannot be bound is tried again this often.
const REBIND: Duration = Duration::from_secs(5);
/// How long connecting to the peer or the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server waits for a new connection's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The running tunnels of one `[compression]` section.
#[derive(Debug)]
pub struct Tunnels {
    running: Vec<Running>,
    near: NearAllowance,
}

#[derive(Debug)]
struct Running {
    config: TunnelConfig,
    metrics: Arc<TunnelMetrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Tunnels {
    /// Starts every configured tunnel (on the current tokio runtime).
    pub fn start(config: &CompressionConfig) -> Self {
        let mut tunnels = Self {
            running: Vec::new(),
            near: near(config),
        };
        tunnels.running = config.tunnel.iter().map(spawn).collect();
        tunnels
    }

    /// Applies a new section: tunnels whose entry is unchanged keep running
    /// with their connections and counters; the others stop (their open
    /// connections are reset) and the new ones start.
    pub async fn reconfigure(&mut self, config: &CompressionConfig) {
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|running| config.tunnel.iter().any(|t| *t == running.config));
        stop_all(stop).await;
        self.near = near(config);
        self.running = keep;
        for tunnel in config.tunnel.iter() {
            if !self.running.iter().any(|running| running.config == *tunnel) {
                self.running.push(spawn(tunnel));
            }
        }
    }

    /// Stops every tunnel and resets their open connections.
    pub async fn stop(self) {
        stop_all(self.running).await;
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Feeds the near-allowance signal (see `signal.rs`) with the latest
    /// readings; `headroom` is the `headroom` collector's latest samples.
    pub fn observe(&mut self, facts: &HostFacts, headroom: Option<&MetricSet>) {
        let near = self.near.observe(Instant::now(), facts.allowance_exceeded(), headroom);
        for running in &self.running {
            if running.config.mode == Some(Mode::NearAllowance) && running.metrics.engaged() != near {
                info!(tunnel = %running.config.name, compress = near, "near-allowance signal changed");
                running.metrics.set_engaged(near);
            }
        }
    }

    /// Every tunnel's metrics.
    pub fn metrics(&self) -> MetricSet {
        let mut set = MetricSet::default();
        for running in &self.running {
            running
                .metrics
                .write(&running.config.name, running.config.side == Side::Client, &mut set);
        }
        set
    }
}

fn near(config: &CompressionConfig) -> NearAllowance {
    NearAllowance::new(config.headroom_ratio.get(), config.hold.get())
}

fn spawn(config: &TunnelConfig) -> Running {
    let metrics = Arc::new(TunnelMetrics::default());
    metrics.set_engaged(config.mode == Some(Mode::Always));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(config.clone(), Arc::clone(&metrics), stopped));
    Running {
        config: config.clone(),
        metrics,
        stop,
        task,
    }
}

async fn stop_all(running: Vec<Running>) {
    for tunnel in &running {
        let _ = tunnel.stop.send(true);
    }
    for tunnel in running {
        // A tunnel task that panicked has nothing left to stop.
        let _ = tunnel.task.await;
        info!(tunnel = %tunnel.config.name, "tunnel stopped");
    }
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One tunnel: binds (retrying), accepts until stopped, then waits for its
/// connections, which see the same stop and reset themselves.
async fn run(config: TunnelConfig, metrics: Arc<TunnelMetrics>, stop: watch::Receiver<bool>) {
    let Some(listener) = bind(&config, &metrics, &stop).await else {
        return;
    };
    metrics.set_up(true);
    let limit = Arc::new(Semaphore::new(config.max_connections as usize));
    let config = Arc::new(config);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                        metrics.failed(Failure::Limit);
                        debug!(tunnel = %config.name, %from, "connection refused: max_connections open");
                        let _ = stream.set_zero_linger();
                        continue;
                    };
                    let (config, metrics, stop) = (Arc::clone(&config), Arc::clone(&metrics), stop.clone());
                    connections.spawn(async move {
                        connection(&config, &metrics, stream, from, stopped(stop)).await;
                        drop(permit);
                    });
                }
                // Out of file descriptors, say: the next accept may work.
                Err(error) => {
                    warn!(tunnel = %config.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
            () = stopped(stop.clone()) => break,
        }
    }
    drop(listener);
    metrics.set_up(false);
    while connections.join_next().await.is_some() {}
}

async fn bind(config: &TunnelConfig, metrics: &TunnelMetrics, stop: &watch::Receiver<bool>) -> Option<TcpListener> {
    let mut logged = None;
    loop {
        match TcpListener::bind(config.listen).await {
            Ok(listener) => {
                let listen = listener.local_addr().unwrap_or(config.listen);
                // An application's connections to a client side on
                // loopback inherit it.
                local_congestion(&listener, listen);
                info!(tunnel = %config.name, side = ?config.side, %listen, connect = %config.connect, "tunnel listening");
                return Some(listener);
            }
            Err(error) => {
                let message = error.to_string();
                if logged.as_ref() != Some(&message) {
                    error!(tunnel = %config.name, listen = %config.listen, %error, "tunnel cannot listen; retrying every 5 s");
                    logged = Some(message);
                }
                metrics.set_up(false);
                tokio::select! {
                    () = tokio::time::sleep(REBIND) => {}
                    () = stopped(stop.clone()) => return None,
                }
            }
        }
    }
}

/// Why a connection did not get as far as relaying.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot connect to {to}: {source}")]
    Connect {
        to: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no tunnel header from {from}: {reason}")]
    Handshake { from: SocketAddr, reason: String },
}

/// One accepted connection, from set-up to its end, counted.
async fn connection(
    config: &TunnelConfig,
    metrics: &TunnelMetrics,
    mut accepted: TcpStream,
    from: SocketAddr,
    stopped: impl Future<Output = ()>,
) {
    let _open = metrics.open();
    let mut stopped = std::pin::pin!(stopped);
    // Setting up can wait seconds (a connect, a silent peer): a stop must
    // not wait for it.
    let setup = tokio::select! {
        setup = async {
            match config.side {
                Side::Client => open_client(config, metrics).await,
                Side::Server => open_server(config, &mut accepted, from).await,
            }
        } => setup,
        () = &mut stopped => {
            let _ = accepted.set_zero_linger();
            return;
        }
    };
    let (mut remote, encoding) = match setup {
        Ok(opened) => opened,
        Err(error) => {
            metrics.failed(match error {
                SetupError::Connect { .. } => Failure::Connect,
                SetupError::Handshake { .. } => Failure::Handshake,
            });
            warn!(tunnel = %config.name, %from, %error, "tunnel connection refused");
            let _ = accepted.set_zero_linger();
            return;
        }
    };
    metrics.opened(encoding);
    metrics.bytes(0, HEADER_LEN);
    debug!(tunnel = %config.name, %from, mode = encoding.label(), "tunnel connection open");
    // Frames are written whole and flushed per chunk: Nagle would only hold
    // the last small one back.
    let _ = accepted.set_nodelay(true);
    let _ = remote.set_nodelay(true);
    // A client's accepted socket is the application's (local); a server's is the peer's (remote).
    let (local, remote) = match config.side {
        Side::Client => (&mut accepted, &mut remote),
        Side::Server => (&mut remote, &mut accepted),
    };
    match relay(local, remote, encoding, metrics, stopped).await {
        Ok(()) => debug!(tunnel = %config.name, %from, "tunnel connection closed"),
        Err(RelayError::Stopped) => debug!(tunnel = %config.name, %from, "tunnel connection reset: stopping"),
        Err(error @ RelayError::Corrupt(_)) => {
            metrics.corrupt();
            warn!(tunnel = %config.name, %from, %error, "tunnel connection reset");
        }
        Err(error @ RelayError::Io { .. }) => {
            metrics.failed(Failure::Io);
            debug!(tunnel = %config.name, %from, %error, "tunnel connection reset");
        }
    }
}

/// Client: connects to the peer agent and sends the header of the encoding
/// chosen now.
async fn open_client(config: &TunnelConfig, metrics: &TunnelMetrics) -> Result<(TcpStream, Encoding), SetupError> {
    let encoding = if metrics.engaged() {
        Encoding::Lz4
    } else {
        Encoding::Raw
    };
    let mut peer = connect(config.connect).await?;
    peer.write_all(&codec::header(encoding))
        .await
        .map_err(|source| SetupError::Connect {
            to: config.connect,
            source,
        })?;
    Ok((peer, encoding))
}

/// Server: reads the client agent's header, then connects to the target.
async fn open_server(
    config: &TunnelConfig,
    peer: &mut TcpStream,
    from: SocketAddr,
) -> Result<(TcpStream, Encoding), SetupError> {
    let mut header = [0; HEADER_LEN];
    let handshake = |reason: String| SetupError::Handshake { from, reason };
    match tokio::time::timeout(HEADER_TIMEOUT, peer.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(handshake(error.to_string())),
        Err(_) => return Err(handshake(format!("nothing within {HEADER_TIMEOUT:?}"))),
    }
    let encoding = codec::parse_header(header).map_err(|error| handshake(error.to_string()))?;
    let target = connect(config.connect).await?;
    Ok((target, encoding))
}

/// Connects to the peer (client side) or the local target (server side).
async fn connect(to: SocketAddr) -> Result<TcpStream, SetupError> {
    let connecting = async { socket_to(to)?.connect(to).await };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result.map_err(|source| SetupError::Connect { to, source }),
        Err(_) => Err(SetupError::Connect {
            to,
            source: std::io::ErrorKind::TimedOut.into(),
        }),
    }
}

#[cfg(test)]
mod tests;
