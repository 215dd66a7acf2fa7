//! Moves one tunnel connection's bytes both ways between the local socket
//! (the application's on a client, the target's on a server) and the remote
//! one (the other agent).
//!
//! Each direction reads what is there, up to one 64 KiB chunk, and sends it
//! on at once, as one frame when compressed: a small write is not held back
//! waiting for more, and a busy stream still travels in full chunks. Nothing
//! more than a chunk and its frame is buffered per direction, and the next
//! read waits until the last write went out, so a slow reader slows the
//! writer (TCP's own backpressure, end to end).
//!
//! An end of stream is passed on as a half-close (shutdown of the write
//! side), after everything before it was written, and the other direction
//! keeps going until it ends too. Anything else (a corrupt frame, a reset,
//! the tunnel stopping) resets both sockets, so neither end mistakes a cut
//! stream for a complete one.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::codec::{CHUNK, Compressor, CorruptFrame, Decompressor, Encoding, PREFIX};
use super::metrics::TunnelMetrics;

/// Why a relayed connection was cut.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("corrupt frame from the peer: {0}")]
    Corrupt(#[from] CorruptFrame),
    #[error("{during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the tunnel is stopping")]
    Stopped,
}

fn io_error(during: &'static str) -> impl FnOnce(io::Error) -> RelayError {
    move |source| RelayError::Io { during, source }
}

/// Relays until both directions ended, or one failed; `stopped` cuts it short.
pub async fn relay(
    local: &mut TcpStream,
    remote: &mut TcpStream,
    encoding: Encoding,
    metrics: &TunnelMetrics,
    stopped: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let result = {
        let (local_read, local_write) = local.split();
        let (remote_read, remote_write) = remote.split();
        let both = async {
            tokio::try_join!(
                send(local_read, remote_write, encoding, metrics),
                receive(remote_read, local_write, encoding, metrics),
            )
        };
        tokio::select! {
            result = both => result.map(|_| ()),
            () = stopped => Err(RelayError::Stopped),
        }
    };
    if result.is_err() {
        reset(local);
        reset(remote);
    }
    result
}

/// Makes the close that follows a reset: the peer sees the stream was cut.
fn reset(stream: &TcpStream) {
    // Failing leaves an ordinary close, the best that remains.
    let _ = stream.set_zero_linger();
}

/// Local to remote: chunks in, frames (or the same bytes) out.
async fn send(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    encoding: Encoding,
    metrics: &TunnelMetrics,
) -> Result<(), RelayError> {
    let mut compressor = (encoding == Encoding::Lz4).then(Compressor::default);
    let mut chunk = vec![0; CHUNK];
    loop {
        let (filled, ended) = read_chunk(&mut from, &mut chunk).await?;
        if filled > 0 {
            let data = &chunk[..filled];
            let wire = match compressor.as_mut() {
                Some(compressor) => {
                    let (record, spent) = compressor.compress(data).map_err(io_error("compressing"))?;
                    metrics.cpu(spent);
                    record
                }
                None => data,
            };
            to.write_all(wire)
                .await
                .map_err(io_error("writing to the other side"))?;
            metrics.bytes(filled, wire.len());
        }
        if ended {
            return to.shutdown().await.map_err(io_error("passing on the end of stream"));
        }
    }
}

/// Reads what is there now into `chunk`, waiting only for the first bytes:
/// returns how many, and whether the stream ended.
async fn read_chunk(from: &mut ReadHalf<'_>, chunk: &mut [u8]) -> Result<(usize, bool), RelayError> {
    let mut filled = from.read(chunk).await.map_err(io_error("reading"))?;
    if filled == 0 {
        return Ok((0, true));
    }
    while filled < chunk.len() {
        match from.try_read(&mut chunk[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(io_error("reading")(error)),
        }
    }
    Ok((filled, false))
}

/// Remote to local: frames (or plain bytes) in, chunks out.
async fn receive(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    encoding: Encoding,
    metrics: &TunnelMetrics,
) -> Result<(), RelayError> {
    match encoding {
        Encoding::Raw => {
            let mut chunk = vec![0; CHUNK];
            loop {
                let n = from
                    .read(&mut chunk)
                    .await
                    .map_err(io_error("reading from the other side"))?;
                if n == 0 {
                    break;
                }
                to.write_all(&chunk[..n]).await.map_err(io_error("writing"))?;
                metrics.bytes(n, n);
            }
        }
        Encoding::Lz4 => {
            let mut decompressor = Decompressor::default();
            while let Some(prefix) = read_prefix(&mut from).await? {
                let frame = decompressor.frame_buffer(prefix)?;
                let wire = PREFIX + frame.len();
                from.read_exact(frame).await.map_err(|error| match error.kind() {
                    io::ErrorKind::UnexpectedEof => RelayError::Corrupt(CorruptFrame::Truncated),
                    _ => io_error("reading from the other side")(error),
                })?;
                let (chunk, spent) = decompressor.decompress()?;
                metrics.cpu(spent);
                to.write_all(chunk).await.map_err(io_error("writing"))?;
                metrics.bytes(chunk.len(), wire);
            }
        }
    }
    to.shutdown().await.map_err(io_error("passing on the end of stream"))
}

/// The next frame's length prefix, or `None` at a clean end of stream.
async fn read_prefix(from: &mut ReadHalf<'_>) -> Result<Option<[u8; PREFIX]>, RelayError> {
    let mut prefix = [0; PREFIX];
    let mut filled = 0;
    while filled < PREFIX {
        let n = from
            .read(&mut prefix[filled..])
            .await
            .map_err(io_error("reading from the other side"))?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(RelayError::Corrupt(CorruptFrame::Truncated))
            };
        }
        filled += n;
    }
    Ok(Some(prefix))
}
