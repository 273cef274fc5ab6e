//! sha256 content digests: parsing, hashing while streaming, verification.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// A `sha256:<hex>` digest. Only sha256 is accepted: it is what every
/// registry and tool writes, and a strict format keeps the hex part safe to
/// use as a file name (`blobs/sha256/<hex>`, `<cache>/<hex>.erofs`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, Error> {
        let invalid = |reason: &str| Error::InvalidDigest {
            digest: s.to_string(),
            reason: reason.to_string(),
        };
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(invalid("expected sha256:<hex>"));
        };
        if algorithm != "sha256" {
            return Err(invalid("only sha256 digests are supported"));
        }
        Digest::from_hex(hex).ok_or_else(|| invalid("expected 64 lowercase hex digits"))
    }

    pub fn from_hex(hex: &str) -> Option<Digest> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest {
            hex: hex.to_string(),
        })
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads what is left (a tar reader stops at the end-of-archive marker,
    /// but the digest covers the padding after it too) and returns the
    /// digest and length of the whole stream.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Checks a blob's actual digest and length against what its descriptor
/// promised.
pub fn check(expected: &Digest, size: Option<u64>, actual: &Digest, len: u64) -> Result<(), Error> {
    if let Some(size) = size {
        if size != len {
            return Err(Error::WrongSize {
                digest: expected.to_string(),
                expected: size,
                actual: len,
            });
        }
    }
    if actual != expected {
        return Err(Error::Corrupt {
            digest: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_strict_sha256() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        for bad in [
            "",
            hex,
            "sha512:abcd",
            "sha256:../../etc/passwd",
            &format!("sha256:{}", hex.to_uppercase()),
            &format!("sha256:{hex}0"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashing_reader_covers_the_unread_rest() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        r.read_exact(&mut first).unwrap();
        let (d, len) = r.finish().unwrap();
        assert_eq!(len, 11);
        assert_eq!(d, Digest::of(b"hello world"));
    }
}
