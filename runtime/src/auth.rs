//! API-key authentication: the [`Secret`] wrapper that keeps the key out of
//! logs and `Debug` output, loading it from a file, and the bearer-token
//! check the HTTP layer runs on every protected request.
//!
//! The comparison uses the `subtle` crate's constant-time equality rather
//! than a hand-written loop: it is small, audited, and written to resist the
//! optimiser turning the loop back into an early-exit compare.

use std::{fs, io, path::Path, path::PathBuf};

pub use appliance_common::Secret;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read API key file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("API key file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// Reads an API key from `path`, trimming surrounding whitespace so that a
/// file written by `echo key > file` (or a Docker/Kubernetes secret with a
/// trailing newline) works. Errors name the path, never the content.
pub fn read_key_file(path: &Path) -> Result<Secret, KeyFileError> {
    let raw = fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key = raw.trim();
    if key.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(key))
}

/// Why a request was refused. Deliberately carries no request data, so it
/// can be logged and rendered without echoing what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or not a `Bearer` credential.
    Missing,
    /// A bearer token was sent but is not the configured key.
    Incorrect,
}

/// Checks an `Authorization` header value against `expected`.
///
/// The scheme is matched case-insensitively (RFC 9110 §11.1). The token
/// comparison is constant-time in the token contents; `subtle` returns early
/// on a length mismatch, which leaks only the key's length.
pub fn check_bearer(header: Option<&[u8]>, expected: &Secret) -> Result<(), AuthFailure> {
    let header = header.ok_or(AuthFailure::Missing)?;
    let token = strip_bearer(header).ok_or(AuthFailure::Missing)?;
    if bool::from(token.ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(AuthFailure::Incorrect)
    }
}

fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() < SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret {
        Secret::new("s3cret-key")
    }

    /// A Kubernetes Secret volume (what `appliance k8s` mounts): the file is a symlink into
    /// `..data`, itself a symlink to a timestamped directory that an update swaps atomically.
    #[test]
    fn key_file_is_read_through_a_secret_volumes_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let version = dir.path().join("..2026_12_06_05_00_00.123");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("api-key"), "s3cret-key\n").unwrap();
        std::os::unix::fs::symlink(version.file_name().unwrap(), dir.path().join("..data"))
            .unwrap();
        std::os::unix::fs::symlink("..data/api-key", dir.path().join("api-key")).unwrap();
        let read = read_key_file(&dir.path().join("api-key")).unwrap();
        assert_eq!(read.expose(), "s3cret-key");
    }

    #[test]
    fn bearer_check() {
        let k = key();
        assert_eq!(check_bearer(Some(b"Bearer s3cret-key"), &k), Ok(()));
        assert_eq!(check_bearer(Some(b"bearer s3cret-key"), &k), Ok(()));
        assert_eq!(check_bearer(Some(b"BEARER  s3cret-key "), &k), Ok(()));
        assert_eq!(check_bearer(None, &k), Err(AuthFailure::Missing));
        assert_eq!(
            check_bearer(Some(b"Basic abc"), &k),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            check_bearer(Some(b"Bearer "), &k),
            Err(AuthFailure::Missing)
        );
        assert_eq!(check_bearer(Some(b"Bearer"), &k), Err(AuthFailure::Missing));
        assert_eq!(
            check_bearer(Some(b"Bearer s3cret-kex"), &k),
            Err(AuthFailure::Incorrect)
        );
        assert_eq!(
            check_bearer(Some(b"Bearer s3cret"), &k),
            Err(AuthFailure::Incorrect)
        );
    }

    #[test]
    fn key_file_is_trimmed_and_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        fs::write(&path, "s3cret-key\n").expect("write");
        assert_eq!(read_key_file(&path).expect("read").expose(), key().expose());

        fs::write(&path, "\n  \n").expect("write");
        let err = read_key_file(&path).expect_err("empty").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");

        let missing = dir.path().join("nope");
        let err = read_key_file(&missing).expect_err("missing").to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
