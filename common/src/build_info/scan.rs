//! Finds the build-info marker in a binary's bytes, streamed in chunks of any size.
//!
//! Behind the `scan` feature: this code holds [`PREFIX`] as data, and a binary that embeds the
//! marker must not also carry a second copy of the prefix for a scan to trip over.

use std::io::{self, Read};

use super::PREFIX;

/// The crate list makes the marker a few KiB; this bounds a scan of a hostile binary.
pub const MAX_JSON_LEN: usize = 256 << 10;

/// Finds [`PREFIX`] followed by up to [`MAX_JSON_LEN`] bytes ending in NUL, across chunk borders,
/// so a caller that also hashes the file can feed it the same chunks in one pass.
#[derive(Debug, Default)]
pub struct MarkerFinder {
    /// Tail of the previous chunk, long enough to hold a prefix cut at the border.
    carry: Vec<u8>,
    /// Bytes after the prefix while we wait for the terminating NUL.
    pending: Option<Vec<u8>>,
    found: Option<Vec<u8>>,
}

impl MarkerFinder {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(chunk);
        let mut start = 0;
        if let Some(mut pending) = self.pending.take() {
            if let Some(end) = data.iter().position(|&b| b == 0) {
                pending.extend_from_slice(&data[..end]);
                self.found = Some(pending);
                return;
            }
            pending.extend_from_slice(&data);
            if pending.len() <= MAX_JSON_LEN {
                self.pending = Some(pending);
            }
            return;
        }
        while let Some(pos) = find(&data[start..], PREFIX) {
            let body = start + pos + PREFIX.len();
            match data[body..].iter().position(|&b| b == 0) {
                Some(end) if end <= MAX_JSON_LEN => {
                    self.found = Some(data[body..body + end].to_vec());
                    return;
                }
                Some(_) => start = body,
                None => {
                    self.pending = Some(data[body..].to_vec());
                    return;
                }
            }
        }
        let keep = PREFIX.len().saturating_sub(1).min(data.len());
        self.carry = data[data.len() - keep..].to_vec();
    }

    /// Whether the marker is complete, so a caller with nothing else to do can stop reading.
    pub fn is_done(&self) -> bool {
        self.found.is_some()
    }

    /// The marker's JSON, if a complete one was fed.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.found
    }
}

/// Reads `reader` until the marker is complete or the input ends, and returns its JSON.
pub fn read_json(mut reader: impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut finder = MarkerFinder::default();
    let mut buf = vec![0u8; 1 << 20];
    while !finder.is_done() {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        finder.feed(&buf[..n]);
    }
    Ok(finder.finish())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any bytes without NUL: the scanner does not parse what it finds.
    fn info_json() -> Vec<u8> {
        br#"{"name":"appliance-server","version":"0.9.0","target":"aarch64-unknown-linux-gnu"}"#
            .to_vec()
    }

    #[test]
    fn finds_marker_split_across_chunks() {
        let mut blob = vec![7u8; 5000];
        blob.extend_from_slice(PREFIX);
        blob.extend_from_slice(&info_json());
        blob.push(0);
        blob.extend_from_slice(&[9u8; 3000]);
        for chunk in [1, 7, 13, 4096, 100_000] {
            let mut finder = MarkerFinder::default();
            for part in blob.chunks(chunk) {
                finder.feed(part);
            }
            assert_eq!(
                finder.finish().as_deref(),
                Some(&info_json()[..]),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn read_json_stops_at_the_marker_and_reports_none_without_one() {
        let mut blob = vec![7u8; (1 << 20) - 5];
        blob.extend_from_slice(PREFIX);
        blob.extend_from_slice(&info_json());
        blob.push(0);
        assert_eq!(read_json(&blob[..]).unwrap(), Some(info_json()));
        assert_eq!(read_json(&b"no marker here"[..]).unwrap(), None);
    }
}
