//! Delta bundles: a release's tarball without the blobs a site already has, and the way back.
//!
//! A delta is NEW's tarball with every blob entry that OLD also holds left out, followed by one
//! more entry, [`PLAN_NAME`], that says what was left out, where, and with which tar header.
//! Everything else is NEW's bytes unchanged: every document (index, manifests, config, cosign
//! signature and attestations) and every blob OLD lacks. So:
//! - `docker load` takes a delta as it is on a host that loaded OLD: it reads `manifest.json`
//!   and opens a layer file only when the layer (by chain ID) is not already in its store;
//! - [`assemble`] rebuilds NEW bit for bit from OLD and the delta, for sites whose tools open
//!   every layer file (podman, skopeo, containerd) and for archiving; it checks every blob it
//!   takes from OLD against its name and the result against NEW's size and sha256;
//! - `appliance verify DELTA --base OLD` checks the signature and every blob across the two.
//!
//! Both directions work on tar entries as byte spans (header block, data, padding) located with
//! the `tar` crate, copied verbatim: nothing here re-encodes a header, so the result does not
//! depend on how the exporter happens to write them. Memory is flat: blobs are streamed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::{ArchiveError, BLOCK, Entries, Span};
use crate::digest::Sha256Digest;

/// The delta's last entry: the [`Plan`].
pub const PLAN_NAME: &str = "appliance-delta.json";
/// The plan's `mediaType`, versioned so a later layout is refused rather than misread.
pub const MEDIA_TYPE: &str = "application/vnd.appliance.delta.v1+json";
/// The end-of-archive marker is 1 KiB; tar writers pad to records of at most 10 KiB.
const MAX_TRAILER: u64 = 1 << 20;
const COPY_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Failed to read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl From<ArchiveError> for DeltaError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Read { path, source } => Self::Read { path, source },
            ArchiveError::Invalid { path, message } => Self::Invalid { path, message },
        }
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> DeltaError {
    DeltaError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What [`delta`] leaves out and how [`assemble`] puts it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    pub media_type: String,
    /// The tarball this delta rebuilds.
    pub target: Target,
    /// The image manifest digest in the base's `index.json`, for messages about a wrong base.
    pub base_manifest: String,
    /// Every entry of the target, in order.
    pub entries: Vec<PlanEntry>,
    /// Zero bytes after the last entry (the end-of-archive marker and any padding).
    pub trailer: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub size: u64,
    pub sha256: String,
    pub manifest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanEntry {
    pub name: String,
    /// For an entry taken from the base: the target's 512-byte tar header, base64. Absent for
    /// an entry the delta carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_header: Option<String>,
}

/// Checks that `old` can serve as a delta's base (a tarball with an image index), before a
/// build spends time on the new one; returns its image manifest digest.
pub fn check_base(old: &Path) -> Result<String, DeltaError> {
    Ok(Entries::read(old)?.manifest_digest()?)
}

/// Where `build --delta-from` writes the delta by default: `x.tar` → `x.delta.tar`.
pub fn default_output(full: &Path) -> PathBuf {
    let stem = full.file_stem().unwrap_or_default().to_string_lossy();
    full.with_file_name(format!("{stem}.delta.tar"))
}

/// What [`delta`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSummary {
    pub output: PathBuf,
    pub size: u64,
    pub target_size: u64,
    pub target_sha256: String,
    pub blobs_carried: usize,
    pub blobs_from_base: usize,
    pub bytes_from_base: u64,
}

/// Writes to `output` the delta that turns `old` into `new`.
pub fn delta(old: &Path, new: &Path, output: &Path) -> Result<DeltaSummary, DeltaError> {
    let old_entries = Entries::read(old)?;
    let base_manifest = old_entries.manifest_digest()?;
    let in_base: BTreeMap<Sha256Digest, u64> = old_entries
        .spans
        .iter()
        .filter_map(|s| Some((s.blob()?, s.size)))
        .collect();
    let new_entries = Entries::read(new)?;
    let target_manifest = new_entries.manifest_digest()?;
    let Entries {
        spans: new_spans,
        len: new_len,
        ..
    } = new_entries;
    if new_spans.iter().any(|s| s.name == PLAN_NAME) {
        return Err(invalid(
            new,
            "is itself a delta bundle; give the full tarball",
        ));
    }

    let read = |source| DeltaError::Read {
        path: new.to_path_buf(),
        source,
    };
    let mut source = BufReader::with_capacity(COPY_BUFFER, File::open(new).map_err(read)?);
    let mut hasher = Sha256::new();
    let mut out = Staged::create(output)?;
    let mut entries = Vec::with_capacity(new_spans.len());
    let (mut carried, mut from_base, mut base_bytes) = (0, 0, 0);
    let mut header = [0u8; BLOCK as usize];
    // The delta's own entry gets the target's first mtime: as reproducible as the target.
    let mut mtime = None;
    for span in &new_spans {
        source.read_exact(&mut header).map_err(read)?;
        hasher.update(header);
        mtime.get_or_insert_with(|| tar::Header::from_byte_slice(&header).mtime().unwrap_or(0));
        let rest = span.end() - span.header - BLOCK;
        let reuse = span
            .blob()
            .is_some_and(|d| in_base.get(&d) == Some(&span.size));
        if reuse {
            copy(&mut source, &mut io::sink(), rest, &mut hasher).map_err(read)?;
            entries.push(PlanEntry {
                name: span.name.clone(),
                base_header: Some(base64::engine::general_purpose::STANDARD.encode(header)),
            });
            from_base += 1;
            base_bytes += span.size;
        } else {
            out.put(&header)?;
            copy(&mut source, &mut out, rest, &mut hasher).map_err(|e| out.error(e))?;
            entries.push(PlanEntry {
                name: span.name.clone(),
                base_header: None,
            });
            carried += usize::from(span.blob().is_some());
        }
    }
    let tail = new_len - new_spans.last().map_or(0, Span::end);
    let mut zeros = Vec::new();
    (&mut source)
        .take(tail)
        .read_to_end(&mut zeros)
        .map_err(read)?;
    if zeros.iter().any(|&b| b != 0) {
        return Err(invalid(new, "has data after the end-of-archive marker"));
    }
    hasher.update(&zeros);

    let plan = Plan {
        media_type: MEDIA_TYPE.into(),
        target: Target {
            size: new_len,
            sha256: format!("sha256:{:x}", hasher.finalize()),
            manifest: target_manifest,
        },
        base_manifest,
        entries,
        trailer: tail,
    };
    let json = serde_json::to_vec_pretty(&plan).expect("a plan serializes");
    let plan_header = crate::archive::outer_header(
        PLAN_NAME,
        json.len() as u64,
        tar::EntryType::Regular,
        mtime.unwrap_or(0),
    )
    .expect("a short relative name");
    out.put(&plan_header)?;
    out.put(&json)?;
    out.put(&vec![0; padding(json.len() as u64) as usize])?;
    out.put(&[0; 1024])?;
    let size = out.commit()?;
    Ok(DeltaSummary {
        output: output.to_path_buf(),
        size,
        target_size: plan.target.size,
        target_sha256: plan.target.sha256,
        blobs_carried: carried,
        blobs_from_base: from_base,
        bytes_from_base: base_bytes,
    })
}

/// Reads a delta's plan: its last entry.
pub fn read_plan(delta: &Path) -> Result<Plan, DeltaError> {
    plan_of(&Entries::read(delta)?)
}

fn plan_of(entries: &Entries) -> Result<Plan, DeltaError> {
    let delta = entries.path.as_path();
    let last = entries.spans.last().expect("Entries::read returns entries");
    if last.name != PLAN_NAME {
        return Err(invalid(
            delta,
            format!("is not a delta bundle: its last entry is not `{PLAN_NAME}`"),
        ));
    }
    let mut file = File::open(delta).map_err(|source| DeltaError::Read {
        path: delta.to_path_buf(),
        source,
    })?;
    let plan: Plan = serde_json::from_slice(&entries.read_small(&mut file, last)?)
        .map_err(|e| invalid(delta, format!("`{PLAN_NAME}` is malformed: {e}")))?;
    if plan.media_type != MEDIA_TYPE {
        return Err(invalid(
            delta,
            format!(
                "`{PLAN_NAME}` has mediaType `{}`; this appliance reads `{MEDIA_TYPE}`",
                plan.media_type
            ),
        ));
    }
    Ok(plan)
}

/// What [`assemble`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct AssembleSummary {
    pub output: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub manifest: String,
}

/// Rebuilds the full tarball from `old` and `delta` into `output`.
pub fn assemble(old: &Path, delta: &Path, output: &Path) -> Result<AssembleSummary, DeltaError> {
    let delta_entries = Entries::read(delta)?;
    let plan = plan_of(&delta_entries)?;
    let delta_spans = delta_entries.spans;
    let old_spans = Entries::read(old)?.spans;
    let in_base: BTreeMap<&str, &Span> = old_spans.iter().map(|s| (s.name.as_str(), s)).collect();

    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DeltaError::Read {
            path: path.clone(),
            source,
        }
    };
    let mut carried = delta_spans[..delta_spans.len() - 1].iter();
    let mut delta_file =
        BufReader::with_capacity(COPY_BUFFER, File::open(delta).map_err(read_err(delta))?);
    let mut old_file = File::open(old).map_err(read_err(old))?;
    let mut out = Staged::create(output)?;
    let mut hasher = Sha256::new();
    for entry in &plan.entries {
        match &entry.base_header {
            None => {
                let Some(span) = carried.next().filter(|s| s.name == entry.name) else {
                    return Err(invalid(
                        delta,
                        format!("does not carry `{}` where its plan says", entry.name),
                    ));
                };
                delta_file
                    .seek(SeekFrom::Start(span.header))
                    .map_err(read_err(delta))?;
                copy(
                    &mut delta_file,
                    &mut out,
                    span.end() - span.header,
                    &mut hasher,
                )
                .map_err(read_err(delta))?;
            }
            Some(header) => {
                let header: [u8; BLOCK as usize] = base64::engine::general_purpose::STANDARD
                    .decode(header)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| {
                        invalid(
                            delta,
                            format!("`{PLAN_NAME}`: bad header for `{}`", entry.name),
                        )
                    })?;
                let size = tar::Header::from_byte_slice(&header)
                    .entry_size()
                    .map_err(|e| invalid(delta, format!("`{}`: {e}", entry.name)))?;
                let digest = entry
                    .name
                    .strip_prefix("blobs/sha256/")
                    .and_then(|hex| Sha256Digest::parse(hex).ok())
                    .ok_or_else(|| {
                        invalid(
                            delta,
                            format!(
                                "`{PLAN_NAME}` takes `{}`, not a blob, from the base",
                                entry.name
                            ),
                        )
                    })?;
                let Some(span) = in_base.get(entry.name.as_str()).filter(|s| s.size == size) else {
                    return Err(invalid(
                        old,
                        format!(
                            "lacks `{}` ({size} bytes), which the delta needs: this delta was made \
                             against the image {}",
                            entry.name, plan.base_manifest
                        ),
                    ));
                };
                out.put(&header)?;
                hasher.update(header);
                old_file
                    .seek(SeekFrom::Start(span.data))
                    .map_err(read_err(old))?;
                let mut blob = Sha256::new();
                let mut tee = Tee {
                    out: &mut out,
                    hasher: &mut hasher,
                };
                copy(
                    &mut BufReader::with_capacity(COPY_BUFFER, &mut old_file),
                    &mut tee,
                    size,
                    &mut blob,
                )
                .map_err(read_err(old))?;
                let actual = Sha256Digest::from_hasher(blob);
                if actual != digest {
                    return Err(invalid(
                        old,
                        format!(
                            "`{}` has sha256 {}: the base's copy of the blob is corrupt",
                            entry.name,
                            actual.prefixed()
                        ),
                    ));
                }
                let pad = vec![0; padding(size) as usize];
                out.put(&pad)?;
                hasher.update(&pad);
            }
        }
    }
    if let Some(extra) = carried.next() {
        return Err(invalid(
            delta,
            format!("carries `{}`, which its plan does not list", extra.name),
        ));
    }
    if plan.trailer > MAX_TRAILER {
        return Err(invalid(
            delta,
            format!("`{PLAN_NAME}` asks for a {}-byte trailer", plan.trailer),
        ));
    }
    let zeros = vec![0; plan.trailer as usize];
    out.put(&zeros)?;
    hasher.update(&zeros);
    let sha256 = format!("sha256:{:x}", hasher.finalize());
    if sha256 != plan.target.sha256 || out.written != plan.target.size {
        return Err(invalid(
            output,
            format!(
                "the assembled tarball is {} bytes with {sha256}, but the delta promises {} bytes \
                 with {}; nothing was written",
                out.written, plan.target.size, plan.target.sha256
            ),
        ));
    }
    let size = out.commit()?;
    Ok(AssembleSummary {
        output: output.to_path_buf(),
        size,
        sha256,
        manifest: plan.target.manifest,
    })
}

fn padding(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK - size
}

/// Copies exactly `len` bytes, hashing them into `hasher` on the way.
fn copy(
    from: &mut impl Read,
    to: &mut impl Write,
    mut len: u64,
    hasher: &mut Sha256,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    while len > 0 {
        let want = len.min(COPY_BUFFER as u64) as usize;
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Writes into both the output and the whole-file hash.
struct Tee<'a> {
    out: &'a mut Staged,
    hasher: &'a mut Sha256,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write_all(self.out, buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An output written beside its target and renamed over it only when complete; dropped before
/// [`Staged::commit`], the temporary file is removed (nothing half-written at the path).
struct Staged {
    path: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
    written: u64,
}

impl Staged {
    fn create(path: &Path) -> Result<Self, DeltaError> {
        if path.is_dir() {
            return Err(invalid(path, "is a directory; give a file name"));
        }
        let tmp =
            crate::atomic_file::stage(path, &[], 0o644).map_err(|source| DeltaError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(COPY_BUFFER, tmp),
            written: 0,
        })
    }

    fn error(&self, source: io::Error) -> DeltaError {
        DeltaError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes `bytes`, naming the output in the error.
    fn put(&mut self, bytes: &[u8]) -> Result<(), DeltaError> {
        self.file.write_all(bytes).map_err(|e| self.error(e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn commit(self) -> Result<u64, DeltaError> {
        let (path, written) = (self.path.clone(), self.written);
        let err = |source| DeltaError::Write {
            path: path.clone(),
            source,
        };
        let tmp = self.file.into_inner().map_err(|e| err(e.into_error()))?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(written)
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests;
