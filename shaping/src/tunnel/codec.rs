//! The tunnel's wire format, apart from any socket.
//!
//! A tunnel connection opens with a 5-byte header from the client side:
//! `HWT`, the format version, and the encoding of both directions (raw or
//! lz4). Raw connections then carry the application's bytes as they are. Lz4
//! connections carry, in each direction, a sequence of records: a 4-byte
//! little-endian length, then one complete lz4 frame (`lz4_flex`'s frame
//! format: one block of at most 64 KiB and a content checksum) holding one
//! chunk of application bytes.
//!
//! One frame per chunk rather than one frame per connection: the receiver
//! checks each chunk's content checksum before it forwards a byte of it, so
//! a corrupt frame never reaches the target; and the length prefix lets it
//! read a whole frame off the socket without parsing lz4 while it waits. The
//! price is about 23 bytes per chunk (0.04 % of a full 64 KiB chunk) and no
//! match history across chunks.
//!
//! Reads nothing, needs nothing.

use std::io::{self, Read, Write};
use std::time::Duration;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use nix::time::{ClockId, clock_gettime};

/// Application bytes one frame carries at most: one 64 KiB lz4 block.
pub const CHUNK: usize = 64 * 1024;
/// Bytes of the length prefix before each frame.
pub const PREFIX: usize = 4;
/// The largest frame accepted: a chunk that did not compress, stored as is,
/// with the frame's header (7), block size (4), end mark (4) and checksum (4).
pub const MAX_FRAME: usize = CHUNK + 19;
/// Bytes of the connection header.
pub const HEADER_LEN: usize = 5;

const MAGIC: &[u8; 3] = b"HWT";
const VERSION: u8 = 1;
/// The lz4 frame magic number, little-endian, as the frame's first bytes.
const LZ4_MAGIC: [u8; 4] = 0x184D_2204_u32.to_le_bytes();
/// The frame descriptor's BD byte for 64 KiB blocks. Checked before decoding
/// so a peer cannot make the decoder allocate for 4 MiB blocks.
const BD_64K: u8 = 0x40;

/// How a connection's bytes travel, chosen by the client per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Lz4,
}

impl Encoding {
    /// The value of the `mode` label of the connections counter.
    pub fn label(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Lz4 => "lz4",
        }
    }
}

/// The header a client sends first on a tunnel connection.
pub fn header(encoding: Encoding) -> [u8; HEADER_LEN] {
    let code = match encoding {
        Encoding::Raw => 0,
        Encoding::Lz4 => 1,
    };
    [MAGIC[0], MAGIC[1], MAGIC[2], VERSION, code]
}

/// Why a connection's opening bytes are not a tunnel header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a hostwatch tunnel header (first bytes {0:02x?})")]
    Magic([u8; 3]),
    #[error("tunnel format version {0} is not supported (this agent speaks {VERSION})")]
    Version(u8),
    #[error("unknown encoding {0}")]
    Encoding(u8),
}

pub fn parse_header(bytes: [u8; HEADER_LEN]) -> Result<Encoding, HeaderError> {
    let [a, b, c, version, code] = bytes;
    if [a, b, c] != *MAGIC {
        return Err(HeaderError::Magic([a, b, c]));
    }
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    match code {
        0 => Ok(Encoding::Raw),
        1 => Ok(Encoding::Lz4),
        other => Err(HeaderError::Encoding(other)),
    }
}

/// Why a received frame was refused; the connection is closed for it.
#[derive(Debug, thiserror::Error)]
pub enum CorruptFrame {
    #[error("frame length {0} outside 1..={MAX_FRAME}")]
    Length(u32),
    #[error("not a 64 KiB-block lz4 frame (descriptor {0:02x?})")]
    Descriptor(Vec<u8>),
    #[error("lz4 frame refused: {0}")]
    Lz4(#[source] io::Error),
    #[error("frame holds more than {CHUNK} bytes")]
    Oversized,
    #[error("{0} bytes follow the frame's end inside its length")]
    Trailing(usize),
    #[error("the stream ended inside a frame")]
    Truncated,
}

/// The CPU time the calling thread has used. Encoding and decoding never
/// await, so the difference of two readings around them is their own cost,
/// whatever else the runtime's threads do meanwhile.
fn thread_cpu() -> Duration {
    // Linux always has this clock; were it missing, costs would read as zero.
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Turns chunks into length-prefixed lz4 frames, reusing its buffers.
pub struct Compressor {
    encoder: FrameEncoder<Vec<u8>>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Default for Compressor {
    fn default() -> Self {
        let info = FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_mode(BlockMode::Independent)
            .content_checksum(true);
        Self {
            encoder: FrameEncoder::with_frame_info(info, Vec::with_capacity(PREFIX + MAX_FRAME)),
        }
    }
}

impl Compressor {
    /// `chunk` (1 to [`CHUNK`] bytes) as one record: length prefix and frame.
    /// Returns the record and the CPU time spent making it.
    pub fn compress(&mut self, chunk: &[u8]) -> io::Result<(&[u8], Duration)> {
        let start = thread_cpu();
        let out = self.encoder.get_mut();
        out.clear();
        out.extend_from_slice(&[0; PREFIX]);
        self.encoder.write_all(chunk)?;
        // Each chunk closes its frame: the peer can check and forward it now.
        self.encoder.try_finish().map_err(io::Error::other)?;
        let out = self.encoder.get_mut();
        let length = u32::try_from(out.len() - PREFIX).map_err(io::Error::other)?;
        out[..PREFIX].copy_from_slice(&length.to_le_bytes());
        let spent = thread_cpu().saturating_sub(start);
        Ok((self.encoder.get_ref(), spent))
    }
}

/// The frame bytes of one record, handed to the decoder as its input. Reading
/// past them is an error rather than the end of input: lz4_flex takes an end
/// of input between blocks for the end of the frame without checking the
/// content checksum, and a frame cut short must not pass.
#[derive(Debug, Default)]
struct Feed {
    frame: Vec<u8>,
    read: usize,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.frame[self.read..];
        if rest.is_empty() && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame ends before its end mark",
            ));
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

/// Turns received frames back into chunks, reusing its buffers.
pub struct Decompressor {
    decoder: FrameDecoder<Feed>,
    chunk: Vec<u8>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Self {
            decoder: FrameDecoder::new(Feed {
                frame: Vec::with_capacity(MAX_FRAME),
                read: 0,
            }),
            chunk: Vec::with_capacity(CHUNK + 1),
        }
    }
}

impl Decompressor {
    /// The buffer to read a frame of `length` bytes (its record's prefix) into.
    pub fn frame_buffer(&mut self, length: [u8; PREFIX]) -> Result<&mut [u8], CorruptFrame> {
        let length = u32::from_le_bytes(length);
        let size = usize::try_from(length).unwrap_or(usize::MAX);
        if size == 0 || size > MAX_FRAME {
            return Err(CorruptFrame::Length(length));
        }
        let feed = self.decoder.get_mut();
        feed.read = 0;
        feed.frame.resize(size, 0);
        Ok(&mut feed.frame)
    }

    /// The chunk in the frame just read into [`Self::frame_buffer`], checked
    /// against its checksum, and the CPU time spent.
    pub fn decompress(&mut self) -> Result<(&[u8], Duration), CorruptFrame> {
        let start = thread_cpu();
        let frame = &self.decoder.get_ref().frame;
        if frame.len() < 6 || frame[..4] != LZ4_MAGIC || frame[5] != BD_64K {
            return Err(CorruptFrame::Descriptor(frame[..frame.len().min(6)].to_vec()));
        }
        self.chunk.clear();
        // One byte over a chunk tells an oversized frame from a full one.
        (&mut self.decoder)
            .take(CHUNK as u64 + 1)
            .read_to_end(&mut self.chunk)
            .map_err(CorruptFrame::Lz4)?;
        if self.chunk.len() > CHUNK {
            return Err(CorruptFrame::Oversized);
        }
        let feed = self.decoder.get_ref();
        if feed.read != feed.frame.len() {
            return Err(CorruptFrame::Trailing(feed.frame.len() - feed.read));
        }
        let spent = thread_cpu().saturating_sub(start);
        Ok((&self.chunk, spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut compressor = Compressor::default();
        chunks
            .iter()
            .map(|chunk| compressor.compress(chunk).unwrap().0.to_vec())
            .collect()
    }

    fn decode(decompressor: &mut Decompressor, record: &[u8]) -> Result<Vec<u8>, CorruptFrame> {
        let (prefix, frame) = record.split_at(PREFIX);
        let buffer = decompressor.frame_buffer(prefix.try_into().unwrap())?;
        if buffer.len() != frame.len() {
            return Err(CorruptFrame::Truncated);
        }
        buffer.copy_from_slice(frame);
        decompressor.decompress().map(|(chunk, _)| chunk.to_vec())
    }

    fn log_lines(bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < bytes {
            out.extend_from_slice(
                format!(
                    "{{\"ts\":{},\"level\":\"info\",\"msg\":\"request served\",\"status\":200}}\n",
                    1_700_000_000 + i
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(bytes);
        out
    }

    fn noise(bytes: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    fn headers_round_trip_and_refuse_strangers() {
        for encoding in [Encoding::Raw, Encoding::Lz4] {
            assert_eq!(parse_header(header(encoding)), Ok(encoding));
        }
        assert_eq!(parse_header(*b"GET /"), Err(HeaderError::Magic(*b"GET")));
        assert_eq!(parse_header(*b"HWT\x02\x01"), Err(HeaderError::Version(2)));
        assert_eq!(parse_header(*b"HWT\x01\x07"), Err(HeaderError::Encoding(7)));
    }

    #[test]
    fn chunks_round_trip_one_frame_each() {
        let logs = log_lines(CHUNK);
        let random = noise(CHUNK);
        let chunks: [&[u8]; 4] = [b"x", &logs, &random, &logs[..1000]];
        let mut decompressor = Decompressor::default();
        for (chunk, record) in chunks.iter().zip(records(&chunks)) {
            assert_eq!(decode(&mut decompressor, &record).unwrap(), *chunk);
        }
    }

    #[test]
    fn overhead_is_bounded() {
        let logs = log_lines(CHUNK);
        let random = noise(CHUNK);
        let [compressed, stored] = <[Vec<u8>; 2]>::try_from(records(&[&logs, &random])).unwrap();
        assert!(compressed.len() * 4 < logs.len(), "{} bytes", compressed.len());
        // Stored as is: prefix, frame header, block size, end mark, checksum.
        assert_eq!(stored.len(), CHUNK + PREFIX + 19);
        assert!(stored.len() <= PREFIX + MAX_FRAME);
    }

    #[test]
    fn corruption_is_caught_before_anything_is_forwarded() {
        let logs = log_lines(CHUNK);
        let [record] = <[Vec<u8>; 1]>::try_from(records(&[&logs])).unwrap();
        // Every single-byte flip in the frame is refused. A refused frame
        // ends its connection, and with it the decompressor: a fresh one each.
        for at in PREFIX..record.len() {
            let mut bad = record.clone();
            bad[at] ^= 0x10;
            assert!(
                decode(&mut Decompressor::default(), &bad).is_err(),
                "flip at {at} accepted"
            );
        }
        // A length that cuts the end mark and checksum off.
        let mut short = record[PREFIX..record.len() - 8].to_vec();
        let length = u32::try_from(short.len()).unwrap().to_le_bytes();
        short.splice(0..0, length);
        assert!(matches!(
            decode(&mut Decompressor::default(), &short),
            Err(CorruptFrame::Lz4(_))
        ));
        // Trailing bytes inside the length.
        let mut long = record[PREFIX..].to_vec();
        long.extend_from_slice(b"junk");
        long.splice(0..0, u32::try_from(long.len()).unwrap().to_le_bytes());
        assert!(matches!(
            decode(&mut Decompressor::default(), &long),
            Err(CorruptFrame::Trailing(4) | CorruptFrame::Lz4(_))
        ));
        let mut decompressor = Decompressor::default();
        assert!(matches!(
            decompressor.frame_buffer([0; 4]),
            Err(CorruptFrame::Length(0))
        ));
        assert!(matches!(
            decompressor.frame_buffer(u32::MAX.to_le_bytes()),
            Err(CorruptFrame::Length(_))
        ));
        // A refused length leaves the decompressor as it was.
        assert_eq!(decode(&mut decompressor, &record).unwrap(), logs);
    }

    #[test]
    fn large_blocks_are_refused() {
        let info = FrameInfo::new().block_size(BlockSize::Max4MB).content_checksum(true);
        let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
        encoder.write_all(b"hello").unwrap();
        let frame = encoder.finish().unwrap();
        let mut record = u32::try_from(frame.len()).unwrap().to_le_bytes().to_vec();
        record.extend_from_slice(&frame);
        assert!(matches!(
            decode(&mut Decompressor::default(), &record),
            Err(CorruptFrame::Descriptor(_))
        ));
    }
}
