//! Moves bytes between a client and its upstream, paced by the policy's
//! token buckets.
//!
//! Reads and writes the two sockets it is given, nothing else. Each direction
//! waits until its source is readable, reserves a slice of tokens, then moves
//! at most that slice: for a download, reading the upstream socket is what
//! opens the server's TCP window, so the wire follows the pace (with the small
//! receive buffer set at connect); for an upload, the slice read is the slice
//! written. Bodies move with splice(2) through a pipe per direction, never
//! through the agent's memory (the kernel passes page references along).
//! Half-close passes through; a tunnel where nothing moves either way for the
//! idle timeout is closed.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::head::{self, HeadError};
use super::state::{Direction, PolicyState};
use crate::bucket::MAX_SLICE;
use crate::timer::Timer;

/// The most a direction without a limit moves per splice (and its pipe's
/// capacity, where the kernel allows it).
const UNLIMITED_BUFFER: usize = 256 * 1024;

/// The largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why a tunnel ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{direction}: {source}")]
    Io {
        direction: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("origin response: {0}")]
    Response(HeadError),
    #[error("nothing moved either way for {0:?}")]
    Idle(Duration),
}

/// Relays until both directions are closed, after sending `prefix` upstream
/// (a rewritten request head, bytes the client sent with its head). With
/// `rewrite_responses` (plain HTTP forwarding) the origin's response heads
/// are rewritten first (see [`head::rewrite_response`]).
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    (policy, timer): (&PolicyState, &Timer),
    (idle, socket_buffer): (Duration, Duration),
    (rewrite_responses, prefix): (bool, &[u8]),
) -> Result<(), RelayError> {
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let (client_read, mut client_write) = client.split();
    let (upstream_read, mut upstream_write) = upstream.split();
    let upload_sizer = Sizer::new(upstream_read.as_ref(), Direction::Upload, socket_buffer);
    let download_sizer = Sizer::new(upstream_read.as_ref(), Direction::Download, socket_buffer);
    let upload = async {
        write_paced(prefix, &mut upstream_write, (policy, timer), (start, &activity)).await?;
        pump(
            &client_read,
            &mut upstream_write,
            (policy, timer, upload_sizer),
            Direction::Upload,
            (start, &activity),
        )
        .await
    };
    let download = async {
        if rewrite_responses {
            forward_response_heads(&upstream_read, &mut client_write, (policy, timer), (start, &activity)).await?;
        }
        pump(
            &upstream_read,
            &mut client_write,
            (policy, timer, download_sizer),
            Direction::Download,
            (start, &activity),
        )
        .await
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            if start.elapsed().saturating_sub(last) >= idle {
                return RelayError::Idle(idle);
            }
        }
    };
    tokio::select! {
        done = async { tokio::try_join!(upload, download) } => done.map(|_| ()),
        idle = watchdog => Err(idle),
    }
}

type Activity<'a> = (Instant, &'a AtomicU64);

fn touch((start, activity): Activity<'_>) {
    let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    activity.store(now, Ordering::Relaxed);
}

/// Moves `from` to `to` at the lane's pace until `from` ends, then closes
/// `to` for writing (half-close).
async fn pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    (policy, timer, mut sizer): (&PolicyState, &Timer, Sizer<'_>),
    direction: Direction,
    activity: Activity<'_>,
) -> Result<(), RelayError> {
    let lane = policy.lane(direction);
    let error = |source| RelayError::Io {
        direction: direction.as_str(),
        source,
    };
    // Paced lanes never take more than a slice; unlimited ones move more per
    // call (fewer system calls per byte).
    let size = if lane.pacer.is_some() {
        MAX_SLICE
    } else {
        UNLIMITED_BUFFER
    };
    let source: &TcpStream = from.as_ref();
    let sink: &TcpStream = to.as_ref();
    // Made at the first byte: an idle direction holds no descriptors.
    let mut pipe = None;
    loop {
        // Tokens are reserved only once there is something to read: a
        // direction idle for minutes (the response while an upload runs)
        // must not hold back the policy's other connections.
        source.readable().await.map_err(error)?;
        let pipe = match &mut pipe {
            Some(pipe) => pipe,
            None => pipe.insert(Pipe::new(size).map_err(error)?),
        };
        sizer.follow(policy);
        let granted = lane.acquire(size, timer).await;
        let moved = match source.try_io(Interest::READABLE, || pipe.fill(source, granted)) {
            Ok(moved) => moved,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lane.refund(granted);
                continue;
            }
            Err(e) => {
                lane.refund(granted);
                return Err(error(e));
            }
        };
        lane.refund(granted - moved);
        if moved == 0 {
            // The other side may still be sending: close only our write side.
            return to.shutdown().await.map_err(error);
        }
        lane.count(moved);
        touch(activity);
        while pipe.held > 0 {
            sink.writable().await.map_err(error)?;
            match sink.try_io(Interest::WRITABLE, || pipe.drain(sink)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(error(e)),
            }
        }
        touch(activity);
    }
}

/// A pipe between two sockets, and how many bytes it holds.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
}

impl Pipe {
    fn new(capacity: usize) -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Best effort: the default (64 KiB) only means more calls per byte.
        let _ = fcntl(
            &write,
            FcntlArg::F_SETPIPE_SZ(i32::try_from(capacity).unwrap_or(i32::MAX)),
        );
        Ok(Self { read, write, held: 0 })
    }

    /// Moves at most `len` bytes from `socket` into the (empty) pipe; 0 at
    /// the end of the stream.
    fn fill(&mut self, socket: &TcpStream, len: usize) -> io::Result<usize> {
        let moved = splice(socket, None, &self.write, None, len, Self::FLAGS)?;
        self.held += moved;
        Ok(moved)
    }

    /// Moves what the pipe holds (or part of it) to `socket`.
    fn drain(&mut self, socket: &TcpStream) -> io::Result<usize> {
        let moved = splice(&self.read, None, socket, None, self.held, Self::FLAGS)?;
        self.held -= moved;
        Ok(moved)
    }

    /// Pages move by reference; the pipe never blocks (the sockets are
    /// non-blocking themselves).
    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);
}

/// Keeps one direction's upstream socket buffer at the connection's share
/// (see [`super::socket_buffer`]) while the policy's connections come and go
/// and its rate changes: sized when a connection opens, the first ones would
/// otherwise keep the whole budget each, and a rate the adaptive controller
/// cut would keep the window of the rate before; their sum is what a stalled
/// server releases at once.
struct Sizer<'a> {
    upstream: &'a TcpStream,
    direction: Direction,
    budget: Duration,
    /// The policy's open connections and the lane's rate (its bits) when the
    /// buffer was last set.
    applied: (u64, u64),
}

impl<'a> Sizer<'a> {
    fn new(upstream: &'a TcpStream, direction: Direction, budget: Duration) -> Self {
        Self {
            upstream,
            direction,
            budget,
            // Set at connect; checked again at the first slice.
            applied: (0, 0),
        }
    }

    /// Resizes when the policy's connection count or the lane's rate
    /// changed: a load and the pacer's lock on the hot path, a system call
    /// only on a change.
    fn follow(&mut self, policy: &PolicyState) {
        let rate = policy.lane(self.direction).rate().map_or(0, f64::to_bits);
        let applied = (policy.open(), rate);
        if applied == self.applied {
            return;
        }
        self.applied = applied;
        let Some(bytes) = super::socket_buffer(policy, self.direction, self.budget) else {
            return;
        };
        let socket = socket2::SockRef::from(self.upstream);
        // Best effort: a failure leaves the size set at connect.
        let _ = match self.direction {
            Direction::Download => socket.set_recv_buffer_size(bytes),
            Direction::Upload => socket.set_send_buffer_size(bytes),
        };
    }
}

/// Writes `bytes` upstream at the upload lane's pace.
async fn write_paced(
    mut bytes: &[u8],
    to: &mut WriteHalf<'_>,
    (policy, timer): (&PolicyState, &Timer),
    activity: Activity<'_>,
) -> Result<(), RelayError> {
    let lane = policy.lane(Direction::Upload);
    while !bytes.is_empty() {
        let granted = lane.acquire(bytes.len(), timer).await;
        let (now, rest) = bytes.split_at(granted.min(bytes.len()));
        to.write_all(now).await.map_err(|source| RelayError::Io {
            direction: Direction::Upload.as_str(),
            source,
        })?;
        lane.count(now.len());
        touch(activity);
        bytes = rest;
    }
    Ok(())
}

/// Reads the origin's response heads (interim 1xx ones, then the final one),
/// passes them rewritten to the client, and then whatever body bytes came
/// with them.
async fn forward_response_heads(
    from: &ReadHalf<'_>,
    to: &mut (impl AsyncWrite + Unpin),
    (policy, timer): (&PolicyState, &Timer),
    activity: Activity<'_>,
) -> Result<(), RelayError> {
    let lane = policy.lane(Direction::Download);
    let error = |source| RelayError::Io {
        direction: Direction::Download.as_str(),
        source,
    };
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let stream: &TcpStream = from.as_ref();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(RelayError::Response(HeadError::TooLarge {
                    limit: MAX_RESPONSE_HEAD,
                }));
            }
            stream.readable().await.map_err(error)?;
            let granted = lane.acquire(4096, timer).await;
            let filled = buf.len();
            buf.resize(filled + granted, 0);
            let read = stream.try_read(&mut buf[filled..]);
            buf.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(RelayError::Response(HeadError::Closed)),
                Ok(read) => {
                    lane.refund(granted - read);
                    lane.count(read);
                    touch(activity);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => lane.refund(granted),
                Err(e) => {
                    lane.refund(granted);
                    return Err(error(e));
                }
            }
        };
        out.clear();
        let last = head::rewrite_response(&buf[..end], &mut out).map_err(RelayError::Response)?;
        buf.drain(..end);
        if last {
            out.extend_from_slice(&buf);
            return to.write_all(&out).await.map_err(error);
        }
        to.write_all(&out).await.map_err(error)?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::net::{TcpListener, TcpStream};

    use super::Sizer;
    use crate::proxy::config::Config;
    use crate::proxy::state::{Direction, State};

    /// The receive buffer follows the rate the adaptive controller sets,
    /// not only the connection count.
    #[tokio::test]
    async fn the_upstream_window_follows_rate_changes() {
        let config: Config =
            toml::from_str("[[policy]]\nname = \"s3\"\nhosts = [\"127.0.0.1\"]\ndownload = \"1Gbit\"\n").unwrap();
        let state = State::new(&config).unwrap();
        let policy = state.route("127.0.0.1", 443).unwrap();
        let _open = policy.opened();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let buffer = || socket2::SockRef::from(&upstream).recv_buffer_size().unwrap();

        let mut sizer = Sizer::new(&upstream, Direction::Download, Duration::from_millis(2));
        sizer.follow(policy);
        // 2 ms of 1 Gbit/s is 250 kB; asked for half, the kernel doubles it.
        let at_1g = buffer();
        assert!((240_000..=260_000).contains(&at_1g), "{at_1g} bytes at 1 Gbit/s");

        let pacer = policy.lane(Direction::Download).pacer.as_ref().unwrap();
        pacer.set_bits_per_second(0.5e9, Instant::now());
        sizer.follow(policy);
        let at_500m = buffer();
        assert!((120_000..=130_000).contains(&at_500m), "{at_500m} bytes at 500 Mbit/s");
    }
}
