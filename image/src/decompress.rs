//! Layer decompression: gzip (flate2) and zstd (ruzstd, pure Rust).

use std::io::{self, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use crate::source::Compression;
use crate::store::read_up_to;

pub fn decoder<'a, R: Read + 'a>(reader: R, compression: Compression) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(reader),
        // Multi-member gzip is valid gzip; some tools append members.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ZstdReader::new(reader)),
    }
}

const ZSTD_MAGIC: u32 = 0xfd2f_b528;
const SKIPPABLE_FRAMES: std::ops::RangeInclusive<u32> = 0x184d_2a50..=0x184d_2a5f;

/// A zstd stream of any number of frames, skippable frames included
/// (zstd:chunked layers carry their table of contents in them). ruzstd's
/// streaming decoder reads one frame; this strings them together.
pub struct ZstdReader<R: Read> {
    state: ZstdState<R>,
}

enum ZstdState<R: Read> {
    /// Between frames: `Prefixed` holds bytes already read to classify the
    /// next frame.
    Between(Prefixed<R>, Box<FrameDecoder>),
    Frame(StreamingDecoder<Prefixed<R>, Box<FrameDecoder>>),
    Done,
    Failed,
}

impl<R: Read> ZstdReader<R> {
    pub fn new(inner: R) -> Self {
        ZstdReader {
            state: ZstdState::Between(
                Prefixed {
                    head: [0; 4],
                    pos: 0,
                    len: 0,
                    inner,
                },
                Box::new(FrameDecoder::new()),
            ),
        }
    }

    /// Moves to the next data frame; false at the clean end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            let ZstdState::Between(mut src, decoder) =
                std::mem::replace(&mut self.state, ZstdState::Failed)
            else {
                return Ok(false);
            };
            let mut magic = [0u8; 4];
            match read_up_to(&mut src, &mut magic)? {
                0 => {
                    self.state = ZstdState::Done;
                    return Ok(false);
                }
                4 => {}
                _ => return Err(invalid("truncated zstd frame header")),
            }
            let magic_num = u32::from_le_bytes(magic);
            if SKIPPABLE_FRAMES.contains(&magic_num) {
                let mut len = [0u8; 4];
                if read_up_to(&mut src, &mut len)? != 4 {
                    return Err(invalid("truncated zstd skippable frame"));
                }
                let len = u64::from(u32::from_le_bytes(len));
                if io::copy(&mut (&mut src).take(len), &mut io::sink())? != len {
                    return Err(invalid("truncated zstd skippable frame"));
                }
                self.state = ZstdState::Between(src, decoder);
                continue;
            }
            if magic_num != ZSTD_MAGIC {
                return Err(invalid(&format!("not zstd data (magic {magic_num:#010x})")));
            }
            src.head = magic;
            src.pos = 0;
            src.len = 4;
            let frame = StreamingDecoder::new_with_decoder(src, decoder)
                .map_err(|e| invalid(&format!("zstd frame header: {e}")))?;
            self.state = ZstdState::Frame(frame);
            return Ok(true);
        }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.state {
                ZstdState::Frame(frame) => {
                    let n = frame.read(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    if !frame.decoder.is_finished() {
                        return Err(invalid("truncated zstd frame"));
                    }
                    let ZstdState::Frame(frame) =
                        std::mem::replace(&mut self.state, ZstdState::Failed)
                    else {
                        unreachable!("matched above");
                    };
                    let (src, decoder) = frame.into_parts();
                    self.state = ZstdState::Between(src, decoder);
                }
                ZstdState::Between(..) => {
                    if !self.next_frame()? {
                        return Ok(0);
                    }
                }
                ZstdState::Done => return Ok(0),
                ZstdState::Failed => return Err(invalid("zstd stream already failed")),
            }
        }
    }
}

/// A reader with a few bytes pushed back in front of it.
struct Prefixed<R> {
    head: [u8; 4],
    pos: usize,
    len: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.len {
            let n = buf.len().min(self.len - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn zstd(data: &[u8]) -> Vec<u8> {
        compress_to_vec(data, CompressionLevel::Fastest)
    }

    #[test]
    fn zstd_frames_and_skippable_frames_concatenate() {
        let mut stream = zstd(b"hello ");
        stream.extend_from_slice(&0x184d_2a5au32.to_le_bytes());
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(b"xyz");
        stream.extend(zstd(&[b'w'; 100_000]));
        let mut out = Vec::new();
        ZstdReader::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert_eq!(&out[..6], b"hello ");
        assert_eq!(out.len(), 6 + 100_000);
    }

    #[test]
    fn zstd_garbage_is_an_error() {
        let mut out = Vec::new();
        assert!(ZstdReader::new(&b"not zstd at all"[..])
            .read_to_end(&mut out)
            .is_err());
        let mut cut = zstd(&[7u8; 50_000]);
        cut.truncate(cut.len() / 2);
        assert!(ZstdReader::new(&cut[..]).read_to_end(&mut out).is_err());
    }
}
