//! Defines `Pipeline`: a file writer whose writes happen on a background thread.
//!
//! Hashing and disk writes then overlap on two cores instead of taking turns. Memory is bounded:
//! at most `DEPTH + 2` buffers of `CHUNK` bytes exist at once, recycled through a return channel.
//! Already written bytes can be overwritten with [`Pipeline::patch`] (used for tar headers whose
//! content is only known after the entry is written).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

enum Command {
    /// A full-size buffer of which the first `usize` bytes are data.
    Data(Vec<u8>, usize),
    Patch(u64, Vec<u8>),
    /// Start hashing the data written from here on.
    StartDigest,
    /// Stop hashing and send back the digest and byte count.
    EndDigest(SyncSender<(Sha256Digest, u64)>),
    /// Copy the next `len` bytes of `src` (from its current offset) in the kernel
    /// (`copy_file_range` through `io::copy`): no user-space copy, no hashing.
    Copy {
        src: Arc<File>,
        len: u64,
        name: Arc<Path>,
    },
    /// Answer once everything sent before has been written.
    Sync(SyncSender<()>),
}

/// Starts the kernel's writeback of what was written, every [`Writeback::EVERY`] bytes, without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). The final fsync then waits for the
/// last stretch only, instead of for gigabytes of dirty pages after all the hashing is done: the
/// disk works while the CPUs hash.
#[derive(Default)]
struct Writeback {
    started_to: u64,
}

impl Writeback {
    const EVERY: u64 = 32 << 20;

    fn kick(&mut self, file: &File) {
        use std::os::fd::AsRawFd;
        let Ok(end) = (&*file).stream_position() else {
            return;
        };
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

pub struct Pipeline {
    /// Always `CHUNK` long (initialised once, then recycled); `filled` bytes are data. Fixed-size
    /// buffers let [`Pipeline::read_from`] read straight into them without zero-filling.
    buf: Vec<u8>,
    filled: usize,
    position: u64,
    tx: Option<SyncSender<Command>>,
    free: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<io::Result<File>>>,
}

impl Pipeline {
    pub fn new(mut file: File) -> Self {
        let (tx, rx) = sync_channel::<Command>(DEPTH);
        let (free_tx, free) = channel();
        let worker = std::thread::spawn(move || -> io::Result<File> {
            let mut digest: Option<(Sha256, u64)> = None;
            let mut writeback = Writeback::default();
            for command in rx {
                writeback.kick(&file);
                match command {
                    Command::Data(buf, filled) => {
                        let data = &buf[..filled];
                        if let Some((hasher, len)) = digest.as_mut() {
                            hasher.update(data);
                            *len += data.len() as u64;
                        }
                        file.write_all(data)?;
                        let _ = free_tx.send(buf);
                    }
                    Command::Patch(offset, bytes) => file.write_all_at(&bytes, offset)?,
                    Command::StartDigest => digest = Some((Sha256::new(), 0)),
                    Command::EndDigest(reply) => {
                        let (hasher, len) = digest.take().unwrap_or_else(|| (Sha256::new(), 0));
                        let _ = reply.send((Sha256Digest::from_hasher(hasher), len));
                    }
                    Command::Copy { src, len, name } => {
                        if digest.is_some() {
                            return Err(io::Error::other("kernel copies cannot be hashed"));
                        }
                        let copied = io::copy(&mut (&*src).take(len), &mut file)?;
                        if copied < len {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "`{}` ended {} bytes early: it changed during the build",
                                    name.display(),
                                    len - copied
                                ),
                            ));
                        }
                    }
                    Command::Sync(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
            Ok(file)
        });
        Self {
            buf: vec![0; CHUNK],
            filled: 0,
            position: 0,
            tx: Some(tx),
            free,
            worker: Some(worker),
        }
    }

    /// Bytes written so far (the offset the next byte will land at).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Overwrites bytes at `offset`, which must already have been written.
    pub fn patch(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.send_buffer()?;
        self.send(Command::Patch(offset, bytes.to_vec()))
    }

    /// Starts a digest of everything written after this call (computed on the writer thread).
    pub fn start_digest(&mut self) -> io::Result<()> {
        self.send_buffer()?;
        self.send(Command::StartDigest)
    }

    /// Ends the digest begun by [`Pipeline::start_digest`]: sha256 and length of the bytes since.
    pub fn end_digest(&mut self) -> io::Result<(Sha256Digest, u64)> {
        self.ask(Command::EndDigest)
    }

    /// Sends the command `make` builds around a reply channel and waits for the worker's answer.
    fn ask<T>(&mut self, make: impl FnOnce(SyncSender<T>) -> Command) -> io::Result<T> {
        self.send_buffer()?;
        let (reply, answer) = sync_channel(1);
        self.send(make(reply))?;
        match answer.recv() {
            Ok(result) => Ok(result),
            Err(_) => {
                self.tx = None;
                Err(self
                    .join()
                    .err()
                    .unwrap_or_else(|| io::Error::other("the writer thread stopped")))
            }
        }
    }

    /// Appends the next `len` bytes of `src` (read from its current offset), copied by the
    /// kernel on the writer thread. `len` is sent in pieces so callers can report progress.
    pub fn copy_from(&mut self, src: &Arc<File>, len: u64, name: &Arc<Path>) -> io::Result<()> {
        self.send_buffer()?;
        self.send(Command::Copy {
            src: Arc::clone(src),
            len,
            name: Arc::clone(name),
        })?;
        self.position += len;
        Ok(())
    }

    /// Returns once every byte sent so far is written (errors of the writer thread surface here).
    pub fn sync(&mut self) -> io::Result<()> {
        self.ask(Command::Sync)
    }

    /// Writes what is buffered, stops the worker and returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        self.send_buffer()?;
        self.tx = None;
        self.join()
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let next = self.free.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let filled = std::mem::take(&mut self.filled);
        self.send(Command::Data(full, filled))
    }

    /// Makes room for [`Pipeline::read_from`]: sends the buffer on if it is full.
    pub fn reserve(&mut self) -> io::Result<()> {
        if self.filled == CHUNK {
            self.send_buffer()?;
        }
        Ok(())
    }

    /// Reads up to `max` bytes of `src` straight into the outgoing buffer, saving the copy a
    /// `read` into a buffer of one's own and a `write` here would make, and returns them (for
    /// the caller to hash while they are in cache). Call [`Pipeline::reserve`] first; errors
    /// are `src`'s. An empty slice means `src` ended.
    pub fn read_from(&mut self, src: &mut impl Read, max: usize) -> io::Result<&[u8]> {
        let end = CHUNK.min(self.filled + max);
        let n = loop {
            match src.read(&mut self.buf[self.filled..end]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let start = self.filled;
        self.filled += n;
        self.position += n as u64;
        Ok(&self.buf[start..self.filled])
    }

    fn send(&mut self, command: Command) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(command).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The worker stopped: its error is the one to report.
        self.tx = None;
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the writer thread stopped")),
        }
    }

    fn join(&mut self) -> io::Result<File> {
        match self.worker.take() {
            Some(worker) => worker
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked"))),
            None => Err(io::Error::other("the writer thread already stopped")),
        }
    }
}

impl Write for Pipeline {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        self.position += n as u64;
        if self.filled == CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_order_and_patches_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut p = Pipeline::new(File::create(&path).unwrap());
        p.write_all(&[0u8; 10]).unwrap();
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        p.start_digest().unwrap();
        p.write_all(&big).unwrap();
        assert_eq!(
            p.end_digest().unwrap(),
            (Sha256Digest::of(&big), big.len() as u64)
        );
        p.patch(2, b"hdr").unwrap();
        p.write_all(b"tail").unwrap();
        assert_eq!(p.position(), 10 + big.len() as u64 + 4);
        drop(p.finish().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..10], b"\0\0hdr\0\0\0\0\0");
        assert_eq!(&bytes[10..10 + big.len()], &big[..]);
        assert_eq!(&bytes[10 + big.len()..], b"tail");
    }

    #[test]
    fn reads_land_in_the_buffers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * CHUNK + 77).map(|i| (i % 241) as u8).collect();
        let out_path = dir.path().join("out");
        let mut p = Pipeline::new(File::create(&out_path).unwrap());
        p.write_all(b"hd").unwrap();
        p.start_digest().unwrap();
        let mut src = &data[..];
        let mut seen = Vec::new();
        loop {
            p.reserve().unwrap();
            let piece = p.read_from(&mut src, 100_000).unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() <= 100_000);
            seen.extend_from_slice(piece);
        }
        assert_eq!(seen, data);
        assert_eq!(
            p.end_digest().unwrap(),
            (Sha256Digest::of(&data), data.len() as u64)
        );
        drop(p.finish().unwrap());
        let bytes = std::fs::read(&out_path).unwrap();
        assert_eq!(&bytes[..2], b"hd");
        assert_eq!(&bytes[2..], &data[..]);
    }

    #[test]
    fn kernel_copies_land_in_order_and_short_sources_fail() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let name: Arc<Path> = Arc::from(src_path.as_path());
        let src = Arc::new(File::open(&src_path).unwrap());

        let out_path = dir.path().join("out");
        let mut p = Pipeline::new(File::create(&out_path).unwrap());
        p.write_all(b"head").unwrap();
        p.copy_from(&src, CHUNK as u64, &name).unwrap();
        p.copy_from(&src, (data.len() - CHUNK) as u64, &name)
            .unwrap();
        p.write_all(b"tail").unwrap();
        p.sync().unwrap();
        assert_eq!(p.position(), 8 + data.len() as u64);
        drop(p.finish().unwrap());
        let bytes = std::fs::read(&out_path).unwrap();
        assert_eq!(&bytes[..4], b"head");
        assert_eq!(&bytes[4..4 + data.len()], &data[..]);
        assert_eq!(&bytes[4 + data.len()..], b"tail");

        let src = Arc::new(File::open(&src_path).unwrap());
        let mut p = Pipeline::new(File::create(&out_path).unwrap());
        p.copy_from(&src, data.len() as u64 + 1, &name).unwrap();
        let err = p.sync().unwrap_err();
        assert!(err.to_string().contains("ended 1 bytes early"), "{err}");
    }
}
