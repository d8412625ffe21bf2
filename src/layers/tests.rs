//! Unit tests for layer production: determinism, metadata, big files, the second-pass check.

use std::io::Read;

use super::plan::with_parent_dirs;
use super::*;
use crate::progress::Silent;

fn spec(entries: Vec<Entry>, compression: Compression) -> LayerSpec {
    LayerSpec {
        role: LayerRole::ModelFiles,
        description: "test".into(),
        entries: with_parent_dirs(entries),
        compression,
        mtime: 1_700_000_000,
    }
}

/// Writes the layer into memory; returns its bytes and sums.
fn write(spec: &LayerSpec) -> (Vec<u8>, LayerSums) {
    spec.write_to(Vec::new(), &Silent).unwrap()
}

#[test]
fn tar_entries_carry_fixed_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, b"weights!").unwrap();
    let (bytes, sums) = write(&spec(
        vec![
            Entry::host_file("models/m/w.safetensors", weights, 8, 0o444),
            Entry::dir("home/u", 0o750, 65532, 65532),
        ],
        Compression::None,
    ));
    assert_eq!(sums.digest, Sha256Digest::of(&bytes));
    assert_eq!(sums.diff_id, sums.digest);
    assert_eq!(sums.size, bytes.len() as u64);
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{path}");
        seen.push((
            path.clone(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
        ));
        if path == "models/m/w.safetensors" {
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            assert_eq!(content, "weights!");
        }
    }
    assert_eq!(
        seen,
        vec![
            ("home".into(), 0o755, 0, 0),
            ("home/u".into(), 0o750, 65532, 65532),
            ("models".into(), 0o755, 0, 0),
            ("models/m".into(), 0o755, 0, 0),
            ("models/m/w.safetensors".into(), 0o444, 0, 0),
        ]
    );
    assert_eq!(sums.files[0].sha256, Sha256Digest::of(b"weights!"));
}

#[test]
fn same_spec_gives_same_bytes_whatever_the_entry_order() {
    let a = vec![
        Entry::bytes("etc/passwd", b"x".to_vec(), 0o644),
        Entry::bytes("etc/group", b"y".to_vec(), 0o644),
    ];
    let mut b = a.clone();
    b.reverse();
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (bytes_a, sums_a) = write(&spec(a.clone(), compression));
        let (bytes_b, sums_b) = write(&spec(b.clone(), compression));
        assert_eq!(sums_a, sums_b, "{compression:?}");
        assert_eq!(bytes_a, bytes_b, "{compression:?}");
    }
}

#[test]
fn compressed_layers_have_distinct_digest_and_diff_id() {
    let (stored, sums) = write(&spec(
        vec![Entry::bytes("etc/a", vec![b'a'; 10_000], 0o644)],
        Compression::Gzip,
    ));
    assert_ne!(sums.digest, sums.diff_id);
    assert_eq!(Sha256Digest::of(&stored), sums.digest);
    assert_eq!(stored.len() as u64, sums.size);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&stored[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(Sha256Digest::of(&raw), sums.diff_id);
    // Fixed gzip header: no mtime, OS byte 255.
    assert_eq!(&stored[4..8], &[0, 0, 0, 0]);
    assert_eq!(stored[9], 255);
}

#[test]
fn long_paths_and_symlinks_round_trip() {
    let long = format!("usr/lib/{}/libx.so.1", "d".repeat(120));
    let (bytes, _) = write(&spec(
        vec![
            Entry::bytes(long.clone(), b"elf".to_vec(), 0o555),
            Entry::symlink("lib64", "usr/lib64"),
        ],
        Compression::None,
    ));
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut found_long = false;
    let mut found_link = false;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        found_long |= path == long;
        if path == "lib64" {
            found_link = true;
            assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
            assert_eq!(
                entry.link_name().unwrap().unwrap().to_str(),
                Some("usr/lib64")
            );
        }
    }
    assert!(found_long && found_link);
}

/// The header promised the size seen when the layer was planned; a file that shrank since
/// must fail the build rather than produce a short (corrupt) entry.
#[test]
fn file_shorter_than_planned_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.bin");
    std::fs::write(&path, b"bb").unwrap();
    let layer = spec(
        vec![Entry::host_file("w.bin", path, 4, 0o444)],
        Compression::None,
    );
    let err = layer.write_to(Vec::new(), &Silent).unwrap_err();
    assert!(matches!(err, LayerError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("w.bin"), "{err}");
}

/// A sparse 9 GiB file: its size does not fit the 11 octal digits of a ustar header, so the
/// header must use GNU base-256, which Go's archive/tar (Docker, containerd, podman) reads. Only
/// the header is produced: the writer stops the layer after its first block, so the test does
/// not hash 9 GiB of zeros.
#[test]
fn file_over_8_gib_gets_a_base256_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let size: u64 = 9 << 30;
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    struct FirstBlock(Vec<u8>);
    impl std::io::Write for FirstBlock {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() >= 512 {
                return Err(std::io::Error::other("enough"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let layer = spec(
        vec![Entry::host_file("big.safetensors", path, size, 0o444)],
        Compression::None,
    );
    let mut first = FirstBlock(Vec::new());
    assert!(
        layer.write_to(&mut first, &Silent).is_err(),
        "the writer stops after the header"
    );
    let header = tar::Header::from_byte_slice(&first.0[..512]);
    assert_eq!(header.path().unwrap().to_str(), Some("big.safetensors"));
    assert_eq!(
        header.as_old().size[0] & 0x80,
        0x80,
        "size must use base-256"
    );
    assert_eq!(header.size().unwrap(), size);
    assert_eq!(header.entry_type(), tar::EntryType::Regular);
}

/// The export writes uncompressed host-file layers from `segments()` (and the digest cache keys
/// on them): with the files' contents spliced in, they must be exactly `write_to`'s bytes.
#[test]
fn segments_with_contents_are_the_layer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, vec![7u8; 1000]).unwrap();
    std::fs::write(&b, b"").unwrap();
    let long = format!("models/{}/w.safetensors", "x".repeat(150));
    let layer = spec(
        vec![
            Entry::host_file(long, a.clone(), 1000, 0o444),
            Entry::host_file("models/m/empty", b.clone(), 0, 0o444),
            Entry::symlink("models/m/link", "empty"),
            Entry::bytes(
                "etc/passwd",
                b"root:x:0:0::/:/sbin/nologin\n".to_vec(),
                0o644,
            ),
        ],
        Compression::None,
    );
    let (expected, _) = write(&layer);
    let segments = layer.segments().unwrap();
    assert_eq!(
        segments
            .iter()
            .filter(|s| matches!(s, Segment::File { .. }))
            .count(),
        2
    );
    let mut spliced = Vec::new();
    for segment in segments {
        match segment {
            Segment::Bytes(bytes) => spliced.extend_from_slice(&bytes),
            Segment::File { path, size } => {
                let content = std::fs::read(&path).unwrap();
                assert_eq!(content.len() as u64, size);
                spliced.extend_from_slice(&content);
            }
        }
    }
    assert_eq!(spliced, expected);
    assert!(layer.has_host_files());
}
