//! Defines `Pipeline`: the tarball's writer, which hashes and writes on background threads.
//!
//! Three stages, each on a thread of its own, joined by bounded channels: the caller fills
//! buffers (with `Write`, or straight from a file with [`Pipeline::read_from`]), the *hasher*
//! keeps the running digests ([`Pipeline::start_digest`]: a blob's, and that of a part inside
//! it, computed together by [`dual`]), the *writer* puts the bytes on disk.
//!
//! Memory is bounded: a pipeline holds at most `2 * DEPTH + 3` buffers of `CHUNK` bytes (9 MiB)
//! at once, recycled through a [`Pool`] that the pipelines writing one file share.
//!
//! The writer uses direct I/O (`O_DIRECT`) where the filesystem has it. Why: on a small build
//! host a buffered `write` of gigabytes of weights costs more kernel CPU than hashing them
//! (copying into the page cache, then reclaiming it: 1.8 s against 0.2 s per GiB on the 2-core CI
//! machine), and that CPU is what the two SHA-256 streams of a first build need. A direct write
//! must start at a block-aligned file offset and memory address and cover whole blocks, so each
//! buffer is a block-aligned window of the file: `buf[0]` is at file offset `base`, a multiple of
//! [`BLOCK`]. A buffer sent before it is full (a digest starts or ends there) has its whole
//! blocks written; its last, partial block is carried to the front of the next buffer and written
//! with it, so every byte is hashed once and written once. Only partial blocks at the ends of what
//! a pipeline writes, header patches, and everything on a filesystem without direct I/O go through
//! the page cache.
//!
//! Several pipelines may write one file at once, each its own byte range
//! ([`Pipeline::starting_at`], [`Pipeline::skip_to`]): a block two ranges share is written
//! through the page cache by both, and direct I/O only ever covers blocks inside one range, so
//! the two kinds of write never meet on a block.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::digest::Sha256Digest;
use crate::digest::dual::{self, StreamHasher};

/// The alignment direct I/O needs: the largest logical block size in common use.
const BLOCK: usize = 4096;
const CHUNK: usize = 1 << 20;
const DEPTH: usize = 3;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// `CHUNK` bytes aligned to [`BLOCK`] in memory, as direct I/O needs.
struct Buffer(Box<[Block]>);

impl Buffer {
    fn new() -> Self {
        Self(vec![Block([0; BLOCK]); CHUNK / BLOCK].into_boxed_slice())
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Block` is `BLOCK` initialised bytes without padding (size == alignment), so
        // the slice of blocks is `CHUNK` contiguous initialised bytes, borrowed as long as self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), CHUNK) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of self.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), CHUNK) }
    }
}

/// Buffers shared by the pipelines writing one file, so that memory is bounded by what is in
/// flight at once, however many pipelines come and go (one per weight layer).
#[derive(Default)]
pub struct Pool(Mutex<Vec<Buffer>>);

impl Pool {
    fn take(&self) -> Buffer {
        let reused = self.0.lock().ok().and_then(|mut free| free.pop());
        reused.unwrap_or_else(Buffer::new)
    }

    fn put(&self, buffer: Buffer) {
        if let Ok(mut free) = self.0.lock() {
            free.push(buffer);
        }
    }
}

/// A buffer on its way to disk.
struct Filled {
    buf: Buffer,
    /// File offset of `buf[0]`: a multiple of [`BLOCK`].
    base: u64,
    /// `buf[..written]` is not this pipeline's to write (written already, or another range's).
    written: usize,
    /// `buf[..seen]` reached the hasher already, in the previous buffer (the carried block).
    seen: usize,
    /// `buf[..filled]` is data.
    filled: usize,
    /// Write the last partial block too: this pipeline writes nothing after it, or not next.
    flush: bool,
}

impl Filled {
    /// The bytes to hash: those not seen before.
    fn new_bytes(&self) -> &[u8] {
        &self.buf.bytes()[self.seen..self.filled]
    }
}

/// Which of the two running digests a call means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// A whole blob (a layer).
    Blob,
    /// A part inside the blob (a file in a layer), starting at a multiple of 64 bytes from the
    /// blob's start so the two digests share their blocks (tar data starts at multiples of 512).
    Part,
}

enum Command {
    Data(Filled),
    /// Overwrite bytes already written (handled by the writer).
    Patch(u64, Vec<u8>),
    /// Start hashing the data sent from here on.
    StartDigest(Span),
    /// Stop hashing and send back the digest and byte count.
    EndDigest(Span, SyncSender<(Sha256Digest, u64)>),
}

/// Starts the kernel's writeback of what was written through the page cache, every
/// [`Writeback::EVERY`] bytes, without waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`).
/// Without direct I/O, the final fsync then waits for the last stretch only, instead of for
/// gigabytes of dirty pages after all the hashing is done.
#[derive(Default)]
struct Writeback {
    started_to: u64,
}

impl Writeback {
    const EVERY: u64 = 32 << 20;

    fn kick(&mut self, file: &File, end: u64) {
        use std::os::fd::AsRawFd;
        if end < self.started_to + Self::EVERY {
            return;
        }
        let (offset, len) = (self.started_to, end - self.started_to);
        // Advisory: an error (e.g. a filesystem without it) only loses the overlap.
        // SAFETY: a plain syscall on a descriptor this thread owns for the call's duration.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started_to = end;
    }
}

/// The writer thread's file: the ordinary descriptor, and a direct-I/O one while it works.
struct Disk {
    file: File,
    direct: Option<File>,
    writeback: Writeback,
    /// Bytes written with direct I/O.
    direct_bytes: u64,
}

impl Disk {
    /// Writes `buf[written..]`: whole blocks directly, partial ones through the page cache, and
    /// the last partial block only if `flush` (otherwise the next buffer carries it).
    fn write(&mut self, data: &Filled) -> io::Result<()> {
        let bytes = data.buf.bytes();
        let whole = data.filled / BLOCK * BLOCK;
        let end = if data.flush { data.filled } else { whole };
        let mut from = data.written;
        let first_block = from.next_multiple_of(BLOCK);
        if self.direct.is_some() && first_block < whole {
            self.buffered(&bytes[from..first_block], data.base + from as u64)?;
            from = first_block;
            let direct = self.direct.as_ref().expect("checked above");
            match direct.write_all_at(&bytes[from..whole], data.base + from as u64) {
                Ok(()) => {
                    self.direct_bytes += (whole - from) as u64;
                    from = whole;
                }
                // The filesystem accepted O_DIRECT at open but not these writes: from here on,
                // the page cache. (Rewriting what a short direct write left is harmless.)
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        if from < end {
            self.buffered(&bytes[from..end], data.base + from as u64)?;
        }
        Ok(())
    }

    fn buffered(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(bytes, at)?;
        if self.direct.is_none() {
            self.writeback.kick(&self.file, at + bytes.len() as u64);
        }
        Ok(())
    }
}

/// What the caller hands buffers to, and where it gets them back.
pub struct Pipeline {
    buf: Buffer,
    /// File offset of `buf[0]`, a multiple of [`BLOCK`].
    base: u64,
    /// `buf[..written]` is not to be written by this buffer (see [`Filled::written`]).
    written: usize,
    filled: usize,
    /// `buf[..seen]` was sent to the hasher already (the block carried from the last buffer).
    seen: usize,
    tx: Option<SyncSender<Command>>,
    pool: Arc<Pool>,
    worker: Option<JoinHandle<io::Result<Finished>>>,
}

/// The written file, from [`Pipeline::finish`].
pub struct Finished {
    pub file: File,
    /// How many of its bytes were written with direct I/O.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the tests check that direct I/O really took")
    )]
    pub direct_bytes: u64,
}

impl Pipeline {
    /// Writes to `file` from offset 0; `direct`, if given, is the same file opened with
    /// `O_DIRECT` (a flag of the open file description, so not a `dup` of `file`). Buffers
    /// come from and go back to `pool`.
    pub fn new(file: File, direct: Option<File>, pool: Arc<Pool>) -> Self {
        Self::starting_at(file, direct, pool, 0)
    }

    /// Writes to `file` from `offset` on, leaving the bytes before it to others.
    pub fn starting_at(file: File, direct: Option<File>, pool: Arc<Pool>, offset: u64) -> Self {
        let (tx, rx) = sync_channel::<Command>(DEPTH);
        let disk = Disk {
            file,
            direct,
            writeback: Writeback { started_to: offset },
            direct_bytes: 0,
        };
        let returns = Arc::clone(&pool);
        let worker = std::thread::spawn(move || hasher(rx, disk, returns));
        let base = offset / BLOCK as u64 * BLOCK as u64;
        let skip = (offset - base) as usize;
        Self {
            buf: pool.take(),
            base,
            written: skip,
            filled: skip,
            seen: skip,
            tx: Some(tx),
            pool,
            worker: Some(worker),
        }
    }

    /// Bytes written so far (the offset the next byte will land at).
    pub fn position(&self) -> u64 {
        self.base + self.filled as u64
    }

    /// Overwrites bytes at `offset`, which must already have been written.
    pub fn patch(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        if end > self.position() {
            return Err(io::Error::other(format!(
                "patch of bytes {offset}..{end} past the end of the data ({})",
                self.position()
            )));
        }
        // Bytes from `base + written` on are still only in this buffer; those before it have all
        // been handed to the writer, which patches after writing them.
        let in_memory = self.base + self.written as u64;
        let split = end.min(in_memory.max(offset));
        let (before, here) = bytes.split_at((split - offset) as usize);
        if !here.is_empty() {
            let at = (split - self.base) as usize;
            self.buf.bytes_mut()[at..at + here.len()].copy_from_slice(here);
        }
        if !before.is_empty() {
            self.send(Command::Patch(offset, before.to_vec()))?;
        }
        Ok(())
    }

    /// Starts a digest of everything written after this call (computed on the hasher thread).
    pub fn start_digest(&mut self, span: Span) -> io::Result<()> {
        self.send_buffer(false)?;
        self.send(Command::StartDigest(span))
    }

    /// Ends the digest begun by [`Pipeline::start_digest`]: sha256 and length of the bytes since.
    /// Waits for the hasher to catch up.
    pub fn end_digest(&mut self, span: Span) -> io::Result<(Sha256Digest, u64)> {
        self.send_buffer(false)?;
        let (reply, answer) = sync_channel(1);
        self.send(Command::EndDigest(span, reply))?;
        match answer.recv() {
            Ok(result) => Ok(result),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Writes what is buffered, stops the threads and returns the file (errors of the threads
    /// surface here if not before).
    pub fn finish(mut self) -> io::Result<Finished> {
        self.send_buffer(true)?;
        self.tx = None;
        self.join()
    }

    /// Continues at `offset`, leaving the bytes from [`Pipeline::position`] to it to others
    /// (who write them with pipelines of their own). No digest may be running.
    pub fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.position() {
            return Err(io::Error::other(format!(
                "cannot skip back from {} to {offset}",
                self.position()
            )));
        }
        self.send_buffer(true)?;
        self.base = offset / BLOCK as u64 * BLOCK as u64;
        let skip = (offset - self.base) as usize;
        (self.written, self.filled, self.seen) = (skip, skip, skip);
        Ok(())
    }

    /// Hands the buffer's new bytes to the hasher, then the writer. The last partial block
    /// stays behind, copied to the front of a fresh buffer, and is written with it, unless
    /// `flush` has it written now.
    fn send_buffer(&mut self, flush: bool) -> io::Result<()> {
        if self.filled == self.seen && !(flush && self.written < self.filled) {
            return Ok(());
        }
        let whole = self.filled / BLOCK * BLOCK;
        let tail = self.filled - whole;
        let mut next = self.pool.take();
        next.bytes_mut()[..tail].copy_from_slice(&self.buf.bytes()[whole..self.filled]);
        let data = Filled {
            buf: std::mem::replace(&mut self.buf, next),
            base: self.base,
            written: self.written,
            seen: self.seen,
            filled: self.filled,
            flush,
        };
        self.base += whole as u64;
        self.written = if flush {
            tail
        } else {
            self.written.saturating_sub(whole)
        };
        (self.filled, self.seen) = (tail, tail);
        self.send(Command::Data(data))
    }

    /// Makes room for [`Pipeline::read_from`]: sends the buffer on if it is full.
    pub fn reserve(&mut self) -> io::Result<()> {
        if self.filled == CHUNK {
            self.send_buffer(false)?;
        }
        Ok(())
    }

    /// Reads up to `max` bytes of `src` straight into the outgoing buffer, saving the copy a
    /// `read` into a buffer of one's own and a `write` here would make, and returns how many.
    /// Call [`Pipeline::reserve`] first; errors are `src`'s. 0 means `src` ended.
    pub fn read_from(&mut self, src: &mut impl Read, max: usize) -> io::Result<usize> {
        let start = self.filled;
        let end = CHUNK.min(start + max);
        let n = loop {
            match src.read(&mut self.buf.bytes_mut()[start..end]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.filled += n;
        Ok(n)
    }

    fn send(&mut self, command: Command) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(command).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.stopped()) }
    }

    /// The error that stopped the threads (they stop early only on one).
    fn stopped(&mut self) -> io::Error {
        self.tx = None;
        match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::other("the writer thread stopped"),
        }
    }

    fn join(&mut self) -> io::Result<Finished> {
        match self.worker.take() {
            Some(worker) => worker
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the hasher thread panicked"))),
            None => Err(io::Error::other("the writer thread already stopped")),
        }
    }
}

impl Write for Pipeline {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.filled);
        self.buf.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send_buffer(false)?;
        }
        Ok(n)
    }

    /// Does nothing: bytes are written as buffers fill, and the end by [`Pipeline::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The hasher thread: digests what it is asked to, passes everything else on to the writer
/// thread it starts, and returns the writer's file or first error.
fn hasher(rx: Receiver<Command>, disk: Disk, pool: Arc<Pool>) -> io::Result<Finished> {
    let (tx, writer_rx) = sync_channel::<Command>(DEPTH);
    let writer = std::thread::spawn(move || writer(writer_rx, disk, pool));
    let (mut blob, mut part): (Option<StreamHasher>, Option<StreamHasher>) = (None, None);
    for command in rx {
        let command = match command {
            Command::StartDigest(span) => {
                *match span {
                    Span::Blob => &mut blob,
                    Span::Part => &mut part,
                } = Some(StreamHasher::new());
                continue;
            }
            Command::EndDigest(span, reply) => {
                let hasher = match span {
                    Span::Blob => blob.take(),
                    Span::Part => part.take(),
                };
                let hasher = hasher.unwrap_or_default();
                let len = hasher.len();
                let _ = reply.send((hasher.finish(), len));
                continue;
            }
            Command::Data(data) => {
                let new = data.new_bytes();
                match (blob.as_mut(), part.as_mut()) {
                    (Some(blob), Some(part)) => dual::update_both(blob, part, new),
                    (Some(one), None) | (None, Some(one)) => one.update(new),
                    (None, None) => {}
                }
                Command::Data(data)
            }
            other => other,
        };
        if tx.send(command).is_err() {
            break; // The writer failed: its error is the one to report.
        }
    }
    drop(tx);
    writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")))
}

/// The writer thread: writes data and patches in order, and returns buffers for reuse.
fn writer(rx: Receiver<Command>, mut disk: Disk, pool: Arc<Pool>) -> io::Result<Finished> {
    for command in rx {
        match command {
            Command::Data(data) => {
                disk.write(&data)?;
                pool.put(data.buf);
            }
            Command::Patch(offset, bytes) => disk.file.write_all_at(&bytes, offset)?,
            Command::StartDigest(_) | Command::EndDigest(..) => {
                unreachable!("digests are the hasher's")
            }
        }
    }
    Ok(Finished {
        file: disk.file,
        direct_bytes: disk.direct_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    /// Both ways the pipeline writes: through the page cache only, and direct where it can
    /// (where the test's filesystem has no O_DIRECT, the second is the first again).
    fn pipelines(path: &std::path::Path) -> Vec<(Pipeline, bool)> {
        [false, true]
            .into_iter()
            .map(|direct| {
                let file = File::create(path).unwrap();
                let direct = direct
                    .then(|| {
                        OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_DIRECT)
                            .open(path)
                            .ok()
                    })
                    .flatten();
                let is_direct = direct.is_some();
                (Pipeline::new(file, direct, Arc::default()), is_direct)
            })
            .collect()
    }

    #[test]
    fn writes_in_order_and_patches_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        for (mut p, direct) in pipelines(&path) {
            p.write_all(&[0u8; 10]).unwrap();
            let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
            p.start_digest(Span::Blob).unwrap();
            p.write_all(&big).unwrap();
            assert_eq!(
                p.end_digest(Span::Blob).unwrap(),
                (Sha256Digest::of(&big), big.len() as u64)
            );
            // On disk already, then still buffered, then straddling the two.
            p.patch(2, b"hdr").unwrap();
            p.write_all(b"tail").unwrap();
            let end = 10 + big.len() as u64 + 4;
            p.patch(end - 3, b"AI").unwrap();
            let carried = end / BLOCK as u64 * BLOCK as u64;
            p.patch(carried - 2, b"XYZW").unwrap();
            assert_eq!(p.position(), end);
            assert_eq!(p.finish().unwrap().direct_bytes > 0, direct);

            let mut expected = vec![0u8; 10];
            expected.extend_from_slice(&big);
            expected.extend_from_slice(b"tail");
            expected[2..5].copy_from_slice(b"hdr");
            let end = end as usize;
            expected[end - 3..end - 1].copy_from_slice(b"AI");
            expected[carried as usize - 2..carried as usize + 2].copy_from_slice(b"XYZW");
            assert!(std::fs::read(&path).unwrap() == expected);
        }
    }

    #[test]
    fn digests_cover_exactly_their_bytes_across_carried_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let pieces: Vec<Vec<u8>> = [513, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK + 700]
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| ((i * 7 + k) % 256) as u8).collect())
            .collect();
        for (mut p, direct) in pipelines(&path) {
            let mut expected = Vec::new();
            for piece in &pieces {
                p.write_all(b"between").unwrap();
                expected.extend_from_slice(b"between");
                p.start_digest(Span::Blob).unwrap();
                p.write_all(piece).unwrap();
                expected.extend_from_slice(piece);
                assert_eq!(
                    p.end_digest(Span::Blob).unwrap(),
                    (Sha256Digest::of(piece), piece.len() as u64)
                );
            }
            assert_eq!(p.position(), expected.len() as u64);
            assert_eq!(p.finish().unwrap().direct_bytes > 0, direct);
            assert!(std::fs::read(&path).unwrap() == expected);
        }
    }

    /// A layer as the export writes one: a blob digest over a header, a file read straight
    /// into the buffers with a part digest of its own, and padding.
    #[test]
    fn reads_land_in_order_under_a_blob_and_a_part_digest() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * CHUNK + 77).map(|i| (i % 241) as u8).collect();
        let out_path = dir.path().join("out");
        for (mut p, direct) in pipelines(&out_path) {
            p.write_all(&[7u8; 512]).unwrap();
            p.start_digest(Span::Blob).unwrap();
            p.write_all(&[1u8; 512]).unwrap();
            p.start_digest(Span::Part).unwrap();
            let mut src = &data[..];
            let mut read = 0;
            loop {
                p.reserve().unwrap();
                let n = p.read_from(&mut src, 100_000).unwrap();
                if n == 0 {
                    break;
                }
                assert!(n <= 100_000);
                read += n;
            }
            assert_eq!(read, data.len());
            assert_eq!(
                p.end_digest(Span::Part).unwrap(),
                (Sha256Digest::of(&data), data.len() as u64)
            );
            p.write_all(&[0u8; 1024]).unwrap();
            let blob = [&[1u8; 512][..], &data, &[0u8; 1024]].concat();
            assert_eq!(
                p.end_digest(Span::Blob).unwrap(),
                (Sha256Digest::of(&blob), blob.len() as u64)
            );
            assert_eq!(p.finish().unwrap().direct_bytes > 0, direct);
            let bytes = std::fs::read(&out_path).unwrap();
            assert_eq!(&bytes[..512], &[7u8; 512]);
            assert!(bytes[512..] == blob[..]);
        }
    }

    /// What the export does with a run of weight layers: a main pipeline skips a range that
    /// workers' pipelines write at the same time, each from an offset inside a block, with a
    /// header patched at its start; ranges share blocks at their edges.
    #[test]
    fn pipelines_write_disjoint_ranges_of_one_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let piece = |n: usize, k: u8| -> Vec<u8> {
            (0..n)
                .map(|i| (i % 253) as u8 ^ k.wrapping_mul(31))
                .collect()
        };
        // (offset, data): a range inside one block, one across a block edge, big ones.
        let head = piece(1000, 1);
        let ranges = [
            (1000u64, piece(700, 2)),
            (1700, piece(3 * CHUNK + 5, 3)),
            (1700 + 3 * CHUNK as u64 + 5, piece(100, 4)),
            (1805 + 3 * CHUNK as u64, piece(CHUNK + 4096, 5)),
        ];
        let end = ranges.last().map(|(at, d)| at + d.len() as u64).unwrap();
        let tail = piece(5000, 6);
        for direct in [false, true] {
            let open = || {
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                let direct = direct
                    .then(|| {
                        OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_DIRECT)
                            .open(&path)
                            .ok()
                    })
                    .flatten();
                (file, direct)
            };
            File::create(&path).unwrap();
            let (file, d) = open();
            let pool = Arc::new(Pool::default());
            let mut main = Pipeline::new(file, d, Arc::clone(&pool));
            main.write_all(&head).unwrap();
            main.skip_to(end).unwrap();
            std::thread::scope(|scope| {
                for (at, data) in &ranges {
                    let (file, d) = open();
                    let pool = Arc::clone(&pool);
                    scope.spawn(move || {
                        let mut p = Pipeline::starting_at(file, d, pool, *at);
                        p.write_all(&[0u8; 8]).unwrap();
                        p.start_digest(Span::Blob).unwrap();
                        p.write_all(&data[8..]).unwrap();
                        let (digest, _) = p.end_digest(Span::Blob).unwrap();
                        assert_eq!(digest, Sha256Digest::of(&data[8..]));
                        p.patch(*at, &data[..8]).unwrap();
                        assert_eq!(p.position(), at + data.len() as u64);
                        p.finish().unwrap();
                    });
                }
            });
            main.write_all(&tail).unwrap();
            main.finish().unwrap();
            let mut expected = head.clone();
            for (_, data) in &ranges {
                expected.extend_from_slice(data);
            }
            expected.extend_from_slice(&tail);
            assert!(
                std::fs::read(&path).unwrap() == expected,
                "direct: {direct}"
            );
        }
    }

    #[test]
    fn patches_past_the_end_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Pipeline::new(
            File::create(dir.path().join("out")).unwrap(),
            None,
            Arc::default(),
        );
        p.write_all(b"abc").unwrap();
        assert!(p.patch(2, b"xy").is_err());
        p.patch(1, b"xy").unwrap();
    }
}
