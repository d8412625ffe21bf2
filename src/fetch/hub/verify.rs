//! Defines what a model file is expected to be (from the lock, the manifest's pins, the Hub)
//! and the hasher that measures it while it streams.
//!
//! Expectations are checked in a fixed order — lock, then pins, then the Hub — so the error
//! names the record the user is most likely to act on.

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use super::error::{ExpectationSource, HubError};
use crate::digest::Sha256Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedDigest {
    Sha256(Sha256Digest),
    /// Git blob sha1 (`sha1("blob <len>\0" + content)`), what the Hub states for non-LFS files.
    GitSha1(String),
}

#[derive(Debug, Clone)]
pub struct Expectation {
    pub origin: ExpectationSource,
    pub size: Option<u64>,
    pub digest: ExpectedDigest,
}

/// What a file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Only computed when an expectation needs it.
    pub git_sha1: Option<String>,
}

/// A failed expectation, turned into a [`HubError`] once the file is quarantined.
#[derive(Debug, Clone)]
pub enum Mismatch {
    Size {
        expected: u64,
        actual: u64,
        origin: ExpectationSource,
    },
    Digest {
        algorithm: &'static str,
        expected: String,
        actual: String,
        origin: ExpectationSource,
    },
}

impl Mismatch {
    pub fn into_error(self, file: &str, quarantine: &Path) -> HubError {
        let (file, quarantine) = (file.to_string(), quarantine.to_path_buf());
        match self {
            Self::Size {
                expected,
                actual,
                origin,
            } => HubError::SizeMismatch {
                file,
                expected,
                actual,
                origin,
                quarantine,
            },
            Self::Digest {
                algorithm,
                expected,
                actual,
                origin,
            } => HubError::DigestMismatch {
                file,
                algorithm,
                expected,
                actual,
                origin,
                quarantine,
            },
        }
    }
}

/// Checks `measured` against each expectation in order; the first failure wins. Sizes first:
/// a truncated file is reported as truncated, not as a digest mismatch.
pub fn check(measured: &Measured, expectations: &[Expectation]) -> Result<(), Mismatch> {
    for e in expectations {
        if let Some(size) = e.size
            && size != measured.size
        {
            return Err(Mismatch::Size {
                expected: size,
                actual: measured.size,
                origin: e.origin,
            });
        }
    }
    for e in expectations {
        match &e.digest {
            ExpectedDigest::Sha256(d) if *d != measured.sha256 => {
                return Err(Mismatch::Digest {
                    algorithm: "sha256",
                    expected: d.hex(),
                    actual: measured.sha256.hex(),
                    origin: e.origin,
                });
            }
            ExpectedDigest::GitSha1(d) => match &measured.git_sha1 {
                Some(actual) if actual != d => {
                    return Err(Mismatch::Digest {
                        algorithm: "git blob sha1",
                        expected: d.clone(),
                        actual: actual.clone(),
                        origin: e.origin,
                    });
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}

pub fn needs_git_sha1(expectations: &[Expectation]) -> bool {
    expectations
        .iter()
        .any(|e| matches!(e.digest, ExpectedDigest::GitSha1(_)))
}

/// sha256 (always) and git blob sha1 (when the final size is known up front) over the same
/// bytes, fed as they are written: the file is never read back.
///
/// sha2 0.10 picks the SHA-NI instructions at run time on x86_64 (`cpufeatures`); its `asm`
/// feature only swaps the fallback for CPUs without them, so it is not enabled. What mattered
/// in measurements (`scripts/bench-fetch`) is the chunk size: hashing 1 MiB chunks ran at 0.78×
/// `openssl dgst -sha256` (each chunk falls out of L2 between the copy and the hash), 64 KiB
/// chunks at ~1.0×, and ring (BoringSSL's assembly) no faster than sha2 at either size.
pub struct FileHasher {
    sha256: Sha256,
    git: Option<Sha1>,
    size: u64,
}

impl FileHasher {
    /// `git_blob_size`: the size to put in the git blob header, for non-LFS files.
    pub fn new(git_blob_size: Option<u64>) -> Self {
        Self {
            sha256: Sha256::new(),
            git: git_blob_size.map(|n| {
                let mut h = Sha1::new();
                h.update(format!("blob {n}\0").as_bytes());
                h
            }),
            size: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(git) = &mut self.git {
            git.update(bytes);
        }
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Measured {
        Measured {
            size: self.size,
            sha256: Sha256Digest::from_hasher(self.sha256),
            git_sha1: self.git.map(|g| hex(&g.finalize())),
        }
    }
}

/// Hashes a file already on disk (cache re-verification, or the bytes of a partial download
/// being resumed), in 64 KiB chunks that stay in L2 between the read and the hash.
pub fn hash_file(path: &Path, git: bool) -> std::io::Result<Measured> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = FileHasher::new(git.then_some(size));
    hash_into(&mut file, &mut hasher)?;
    Ok(hasher.finish())
}

pub fn hash_into(reader: &mut impl Read, hasher: &mut FileHasher) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_matches_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = FileHasher::new(Some(6));
        h.update(b"hello\n");
        let m = h.finish();
        assert_eq!(
            m.git_sha1.as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
    }

    #[test]
    fn first_failed_expectation_in_order_is_reported() {
        let m = Measured {
            size: 3,
            sha256: Sha256Digest::of(b"abc"),
            git_sha1: None,
        };
        let exp = |origin, d: &[u8]| Expectation {
            origin,
            size: Some(3),
            digest: ExpectedDigest::Sha256(Sha256Digest::of(d)),
        };
        assert!(check(&m, &[exp(ExpectationSource::Lock, b"abc")]).is_ok());
        let err = check(
            &m,
            &[
                exp(ExpectationSource::Lock, b"xyz"),
                exp(ExpectationSource::Hub, b"uvw"),
            ],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Mismatch::Digest {
                origin: ExpectationSource::Lock,
                ..
            }
        ));
        let short = Expectation {
            size: Some(4),
            ..exp(ExpectationSource::Hub, b"abc")
        };
        assert!(matches!(
            check(&m, &[short]).unwrap_err(),
            Mismatch::Size { expected: 4, .. }
        ));
    }
}
