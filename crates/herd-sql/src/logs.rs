//! Attempt logs as the `attempts` table keeps them: the exit code, the
//! output tails (zlib streams when large, `compressed` set) and the total
//! bytes each stream wrote.
//!
//! Compression uses `flate2` with its default backend, `miniz_oxide`: pure
//! Rust, so herd builds with no C compiler or system zlib on any target.
//! The C backends are faster, but tails are a few KiB to tens of KiB and
//! written once per attempt, where the difference is microseconds.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use herd_core::store::AttemptLog;

use crate::logic::Result;
use crate::rows::corrupt;

/// Tails up to this size are stored as they are: below it compression saves
/// little and costs a pass over the bytes on every completion.
pub(crate) const COMPRESS_ABOVE: usize = 4 * 1024;

/// A log in the form its columns take.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StoredLog {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both tails are zlib streams (one flag per row: either tail past
    /// [`COMPRESS_ABOVE`] compresses both).
    pub compressed: bool,
    pub stdout_total: i64,
    pub stderr_total: i64,
}

impl StoredLog {
    /// The columns of `log`: tails compressed when either is large.
    pub fn of(log: AttemptLog) -> StoredLog {
        let compressed = log.stdout.len().max(log.stderr.len()) > COMPRESS_ABOVE;
        let (stdout, stderr) = if compressed {
            (deflate(&log.stdout), deflate(&log.stderr))
        } else {
            (log.stdout, log.stderr)
        };
        StoredLog {
            exit_code: log.exit_code,
            stdout,
            stderr,
            compressed,
            stdout_total: i64::try_from(log.stdout_total).unwrap_or(i64::MAX),
            stderr_total: i64::try_from(log.stderr_total).unwrap_or(i64::MAX),
        }
    }

    /// The log these columns hold.
    pub fn into_log(self) -> Result<AttemptLog> {
        let (stdout, stderr) = if self.compressed {
            (inflate(&self.stdout)?, inflate(&self.stderr)?)
        } else {
            (self.stdout, self.stderr)
        };
        Ok(AttemptLog {
            exit_code: self.exit_code,
            stdout,
            stdout_total: u64::try_from(self.stdout_total).unwrap_or(0),
            stderr,
            stderr_total: u64::try_from(self.stderr_total).unwrap_or(0),
        })
    }
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    // Fast rather than small: this runs inside the completion's transaction.
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::fast());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .expect("writing to a Vec cannot fail")
}

fn inflate(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    ZlibDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| corrupt("stdout_tail or stderr_tail", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(stdout: Vec<u8>, stderr: Vec<u8>) -> AttemptLog {
        AttemptLog {
            exit_code: Some(2),
            stdout_total: stdout.len() as u64 + 10,
            stderr_total: stderr.len() as u64,
            stdout,
            stderr,
        }
    }

    #[test]
    fn small_tails_are_kept_as_they_are() {
        let small = log(b"hello\n".to_vec(), vec![0xff; COMPRESS_ABOVE]);
        let stored = StoredLog::of(small.clone());
        assert!(!stored.compressed);
        assert_eq!(stored.stdout, b"hello\n");
        assert_eq!(stored.into_log().unwrap(), small);
    }

    #[test]
    fn large_tails_are_compressed_and_read_back() {
        let large = log(vec![b'x'; COMPRESS_ABOVE + 1], b"err".to_vec());
        let stored = StoredLog::of(large.clone());
        assert!(stored.compressed);
        assert!(stored.stdout.len() < 100, "{}", stored.stdout.len());
        assert_eq!(stored.into_log().unwrap(), large);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let stored = StoredLog {
            exit_code: None,
            stdout: b"not zlib".to_vec(),
            stderr: Vec::new(),
            compressed: true,
            stdout_total: 8,
            stderr_total: 0,
        };
        assert!(stored.into_log().is_err());
    }
}
