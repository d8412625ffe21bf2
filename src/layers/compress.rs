//! Defines the layer compressor: one writer type over none, gzip and zstd.
//!
//! Settings are fixed (gzip level 6 with a zeroed header mtime, single-threaded zstd level 3)
//! because compressed bytes are only reproducible when implementation and level are pinned.

use std::io::{self, Write};

use flate2::write::GzEncoder;

use crate::manifest::Compression;

pub enum Compressor<W: Write> {
    None(W),
    Gzip(GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::None(inner),
            // GzBuilder's defaults: mtime 0, no file name, OS byte 255: no host data in the header.
            Compression::Gzip => {
                Self::Gzip(flate2::GzBuilder::new().write(inner, flate2::Compression::new(6)))
            }
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(inner, 3)?;
                encoder.include_checksum(true)?;
                Self::Zstd(encoder)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Self::None(w) => Ok(w),
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}
