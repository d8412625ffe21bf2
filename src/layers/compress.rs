//! Defines the layer compressor: one writer type over none, gzip and zstd.
//!
//! Settings are fixed (gzip level 6 with a zeroed header mtime, single-threaded zstd level 3)
//! because compressed bytes are only reproducible when implementation and level are pinned.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;

/// Compression of the small layers (userland, accounts, server). Weight layers are always
/// stored uncompressed: weights barely compress, and an uncompressed layer's digest equals its
/// diff_id, which keeps them reproducible across toolchains and cheap to verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    /// Needs Docker 23 or newer at the site (Docker 20.10 cannot load zstd layers).
    Zstd,
}

impl Compression {
    /// The compression of a layer blob from its first bytes (as `docker load` does for layers
    /// without a media type): gzip and zstd magic, anything else is taken as a plain tar.
    pub fn from_magic(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// The uncompressed tar stream of a layer blob. Gzip layers may hold several members (some
/// tools write them so), hence the multi-member decoder.
pub fn decoder<'a>(
    compression: Compression,
    blob: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
    })
}

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
