//! Remembers the digests of uncompressed layers made of host files (the weight layers), so a
//! rebuild from unchanged weights copies them in the kernel instead of hashing every byte twice.
//!
//! Why the cache can be trusted: an entry's key covers the layer's exact bytes other than file
//! contents (its [`Segment`]s: every tar header, padding and the trailer) and, for each source
//! file, its identity and change stamps: device, inode, size, and mtime and ctime in nanoseconds.
//! Writing a file's contents updates its ctime, which no user-level call can set back, so a
//! changed file misses. It is the trust the Hugging Face cache's size+mtime stamps get, one
//! notch stricter. The stamps are read again after the copy, so a file modified while it was
//! being copied is an error, never a wrong digest. `appliance build --verify-cache` bypasses
//! lookups (and refreshes the entries).
//!
//! Entries live in `<cache dir>/layers/v1/<key>.json`, written to a temporary file and renamed.
//! The cache is an optimisation: a directory that cannot be created or an unreadable entry
//! only costs the hashing it would have saved.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{FileSum, LayerSums, Segment};
use crate::digest::Sha256Digest;

/// Format of the key and the entries; bump it when either changes meaning.
const VERSION: &str = "v1";

#[derive(Debug, Clone)]
pub struct DigestCache {
    dir: PathBuf,
    /// Whether lookups are answered (`false` with `--verify-cache`: rehash, then store).
    trust: bool,
}

/// Identity and change stamps of one source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub fn of(path: &Path) -> io::Result<Self> {
        let m = fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A layer's cache key, with the stamps it was computed from (to re-check after copying).
#[derive(Debug, Clone)]
pub struct LayerKey {
    hex: String,
    pub stamps: Vec<(PathBuf, Stamp)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    digest: Sha256Digest,
    size: u64,
    files: Vec<EntryFile>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EntryFile {
    path: String,
    sha256: Sha256Digest,
    size: u64,
}

impl DigestCache {
    pub fn new(cache_dir: &Path, trust: bool) -> Self {
        Self {
            dir: cache_dir.join("layers").join(VERSION),
            trust,
        }
    }

    /// The key of a layer written from `segments`, or an error if a source file cannot be
    /// examined (the caller reports it as a read error of that file).
    pub fn key(segments: &[Segment]) -> Result<LayerKey, (PathBuf, io::Error)> {
        let mut hasher = Sha256::new();
        hasher.update(format!("appliance layer cache {VERSION}\n"));
        let mut stamps = Vec::new();
        for segment in segments {
            match segment {
                Segment::Bytes(bytes) => {
                    hasher.update(b"B");
                    hasher.update((bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
                Segment::File { path, size } => {
                    let stamp = Stamp::of(path).map_err(|e| (path.clone(), e))?;
                    let name = path.as_os_str().as_encoded_bytes();
                    hasher.update(b"F");
                    hasher.update((name.len() as u64).to_le_bytes());
                    hasher.update(name);
                    for n in [*size, stamp.dev, stamp.ino, stamp.size] {
                        hasher.update(n.to_le_bytes());
                    }
                    hasher.update(stamp.mtime_ns.to_le_bytes());
                    hasher.update(stamp.ctime_ns.to_le_bytes());
                    stamps.push((path.clone(), stamp));
                }
            }
        }
        Ok(LayerKey {
            hex: Sha256Digest::from_hasher(hasher).hex(),
            stamps,
        })
    }

    /// The sums recorded for `key`, if trusted and present and well-formed.
    pub fn get(&self, key: &LayerKey) -> Option<LayerSums> {
        if !self.trust {
            return None;
        }
        let bytes = fs::read(self.entry_path(key)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        let files = entry
            .files
            .into_iter()
            .map(|f| FileSum {
                path: f.path,
                sha256: f.sha256,
                size: f.size,
            })
            .collect();
        Some(LayerSums {
            diff_id: entry.digest,
            digest: entry.digest,
            size: entry.size,
            files,
        })
    }

    /// Records `sums` under `key`. Failures are ignored: the next build just hashes again.
    pub fn put(&self, key: &LayerKey, sums: &LayerSums) {
        let entry = Entry {
            digest: sums.digest,
            size: sums.size,
            files: sums
                .files
                .iter()
                .map(|f| EntryFile {
                    path: f.path.clone(),
                    sha256: f.sha256,
                    size: f.size,
                })
                .collect(),
        };
        let _ = self.write(key, &entry);
    }

    fn write(&self, key: &LayerKey, entry: &Entry) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec(entry)?;
        crate::atomic_file::write(&self.entry_path(key), &bytes, 0o644, false)
    }

    fn entry_path(&self, key: &LayerKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &Path) -> Vec<Segment> {
        vec![
            Segment::Bytes(vec![1; 512]),
            Segment::File {
                path: path.to_path_buf(),
                size: 3,
            },
            Segment::Bytes(vec![0; 1024]),
        ]
    }

    #[test]
    fn a_rewritten_file_misses_even_with_the_same_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        fs::write(&file, b"abc").unwrap();
        let cache = DigestCache::new(&dir.path().join("cache"), true);
        let key = DigestCache::key(&segments(&file)).unwrap();
        let sums = LayerSums {
            diff_id: Sha256Digest::of(b"layer"),
            digest: Sha256Digest::of(b"layer"),
            size: 2048,
            files: vec![FileSum {
                path: "models/m/w.safetensors".into(),
                sha256: Sha256Digest::of(b"abc"),
                size: 3,
            }],
        };
        cache.put(&key, &sums);
        assert_eq!(cache.get(&key), Some(sums.clone()));
        assert_eq!(
            DigestCache::new(&dir.path().join("cache"), false).get(&key),
            None,
            "--verify-cache must not trust entries"
        );

        // Same size, mtime put back: the ctime still moves, so the key changes.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"abd").unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let again = DigestCache::key(&segments(&file)).unwrap();
        assert_ne!(again.hex, key.hex);
        assert_eq!(cache.get(&again), None);

        // Different header bytes, same file: another key.
        let mut other = segments(&file);
        other[0] = Segment::Bytes(vec![2; 512]);
        assert_ne!(DigestCache::key(&other).unwrap().hex, again.hex);
    }

    #[test]
    fn a_corrupt_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w");
        fs::write(&file, b"abc").unwrap();
        let cache = DigestCache::new(dir.path(), true);
        let key = DigestCache::key(&segments(&file)).unwrap();
        fs::create_dir_all(&cache.dir).unwrap();
        fs::write(cache.entry_path(&key), b"{\"digest\":\"sha256:zz\"").unwrap();
        assert_eq!(cache.get(&key), None);
    }
}
