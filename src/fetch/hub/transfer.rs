//! Defines the download of one file: resumed from its bytes on disk, hashed as it streams to
//! disk, retried on dropped connections and 408/429/5xx.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::client::{AttemptError, HubClient, RemoteFile, content_range_start};
use super::error::HubError;
use super::verify::{FileHasher, Measured, hash_into};

/// Downloads `remote` of `commit` into `partial` (created or resumed) and returns what the
/// bytes measured. `advance` hears of every byte that reaches disk (resumed ones included), for
/// the progress bars. The caller verifies and commits (or quarantines) the file.
pub fn download(
    client: &HubClient,
    repo: &str,
    commit: &str,
    remote: &RemoteFile,
    partial: &Path,
    advance: &dyn Fn(u64),
) -> Result<Measured, HubError> {
    let io = |e| HubError::Io {
        path: partial.to_path_buf(),
        source: e,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(partial)
        .map_err(io)?;
    let git_size = remote.lfs_sha256.is_none().then_some(remote.size);
    let mut hasher = FileHasher::new(git_size);
    let mut offset = file.metadata().map_err(io)?.len();
    if offset > remote.size {
        restart(&mut file, &mut hasher, &mut offset, git_size).map_err(io)?;
    } else if offset > 0 {
        // The bytes of an earlier attempt: hashed once here, never downloaded again.
        hash_into(&mut (&file).take(offset), &mut hasher).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        advance(offset);
    }

    let mut retry = 0;
    // 64 KiB: each chunk is still in L2 when it is hashed after the write (see `verify`).
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if offset == remote.size {
            break;
        }
        let (after, cause) = match client.open_file(repo, commit, &remote.path, offset) {
            Ok(mut opened) => {
                if let Some(served) = &opened.commit
                    && served != commit
                {
                    return Err(HubError::CommitMismatch {
                        file: remote.path.clone(),
                        expected: commit.to_string(),
                        actual: served.clone(),
                    });
                }
                let resumed = opened.response.status().as_u16() == 206
                    && content_range_start(&opened.response) == Some(offset);
                if offset > 0 && !resumed {
                    // The server ignored the range: start over rather than append a full body.
                    restart(&mut file, &mut hasher, &mut offset, git_size).map_err(io)?;
                }
                // Never take more than the file's size (plus one byte to notice an overlong
                // body): a misbehaving server cannot fill the disk.
                let mut body = opened
                    .response
                    .body_mut()
                    .as_reader()
                    .take(remote.size - offset + 1);
                let failure = loop {
                    match body.read(&mut buf) {
                        Ok(0) => break None,
                        Ok(n) => {
                            write_chunk(&mut file, &buf[..n], partial, remote.size - offset)?;
                            hasher.update(&buf[..n]);
                            offset += n as u64;
                            advance(n as u64);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Some(e),
                    }
                };
                match failure {
                    None if offset >= remote.size => break,
                    None => (
                        None,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the body ended after {offset} of {} bytes", remote.size),
                        ),
                    ),
                    Some(e) => (None, e),
                }
            }
            Err(AttemptError::Retry { after, cause }) => (after, cause),
            Err(AttemptError::Fatal(e)) => return Err(e),
        };
        if retry >= client.retry.retries {
            file.sync_all().map_err(io)?;
            return Err(HubError::Interrupted {
                file: remote.path.clone(),
                attempts: retry + 1,
                received: offset,
                size: remote.size,
                source: cause,
            });
        }
        std::thread::sleep(client.retry.delay(retry, after));
        retry += 1;
    }
    file.sync_all().map_err(io)?;
    Ok(hasher.finish())
}

fn restart(
    file: &mut File,
    hasher: &mut FileHasher,
    offset: &mut u64,
    git_size: Option<u64>,
) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    *hasher = FileHasher::new(git_size);
    *offset = 0;
    Ok(())
}

fn write_chunk(file: &mut File, bytes: &[u8], path: &Path, remaining: u64) -> Result<(), HubError> {
    file.write_all(bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::StorageFull {
            HubError::DiskFull {
                dir: path.parent().unwrap_or(path).to_path_buf(),
                needed: remaining,
                available: 0,
            }
        } else {
            HubError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}
