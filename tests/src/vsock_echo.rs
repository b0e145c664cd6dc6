//! What the `vsock-echo` tool (`src/bin/vsock-echo.rs`) and the tests that read its output
//! share: the payload it sends and the report lines it prints.
//!
//! The sender writes [`payload`]`(seed, bytes)` and reads back the echo; the echo server
//! returns whatever it reads. Each side prints one [`Transfer`] line per direction, e.g.
//! `host-to-guest.sent=1048576:<sha256 hex>`, which a test compares with the checksum of
//! the payload it computes itself.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// `len` pseudo-random bytes from `seed` (xorshift64*): the same on both sides of a test
/// without shipping the data.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Bytes that went one way through a connection, and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Number of bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
}

impl Transfer {
    /// The transfer of `data` in one piece.
    pub fn of(data: &[u8]) -> Self {
        Self {
            bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    /// The transfer that a hasher fed with `bytes` bytes describes.
    pub fn finish(bytes: u64, hasher: Sha256) -> Self {
        Self {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        }
    }

    /// The transfer reported as `<label>.<direction>=...` in `output`, if any.
    pub fn find(output: &str, label: &str, direction: &str) -> Option<Self> {
        let key = format!("{label}.{direction}=");
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(&key)?.parse().ok())
    }
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.bytes, self.sha256)
    }
}

impl FromStr for Transfer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (bytes, sha256) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not BYTES:SHA256"))?;
        let bytes = bytes
            .parse()
            .map_err(|_| format!("`{bytes}` is not a byte count"))?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{sha256}` is not a SHA-256 in hex"));
        }
        Ok(Self {
            bytes,
            sha256: sha256.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_not_trivial() {
        let a = payload(7, 100_003);
        assert_eq!(a.len(), 100_003);
        assert_eq!(a, payload(7, 100_003));
        assert_ne!(a, payload(8, 100_003));
        assert_eq!(&payload(7, 10)[..], &a[..10]);
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 1000, "{zeros} zero bytes");
    }

    #[test]
    fn report_lines_round_trip() {
        let transfer = Transfer::of(b"hello");
        let output = format!("noise\n  host.sent={transfer}\r\nhost.received=3:zz\n");
        assert_eq!(Transfer::find(&output, "host", "sent"), Some(transfer));
        assert_eq!(Transfer::find(&output, "host", "received"), None);
        assert_eq!(Transfer::find(&output, "guest", "sent"), None);
        assert!("12".parse::<Transfer>().is_err());
    }
}
