//! The exporter and this reader agree: whatever layers the exporter writes, the scan finds
//! every blob under its digest with its size, each layer's diff_id, and every file inside with
//! the digest and size the exporter measured while writing it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::export::ImageWriter;
use crate::image::{self, Healthcheck, RunConfig};
use crate::layers::cache::DigestCache;
use crate::layers::plan::with_parent_dirs;
use crate::layers::{Entry, LayerRole, LayerSpec};
use crate::manifest::{Compression, ImageRef};

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Zstd)
    ]
}

/// A layer: up to 6 files of up to 3000 random bytes in up to two directories.
fn layer() -> impl Strategy<Value = (Compression, BTreeMap<String, Vec<u8>>)> {
    let path = "(a|b/c)/[a-z]{1,8}(\\.[a-z]{1,3})?";
    let files =
        prop::collection::btree_map(path, prop::collection::vec(any::<u8>(), 0..3000), 0..6);
    (compression(), files)
}

fn run() -> RunConfig {
    RunConfig {
        architecture: "amd64".into(),
        created: "2026-01-01T00:00:00Z".into(),
        user: "65532:65532".into(),
        entrypoint: vec!["/usr/local/bin/appliance-server".into()],
        cmd: vec![],
        env: vec![],
        exposed_port: 8000,
        working_dir: "/".into(),
        labels: BTreeMap::new(),
        healthcheck: Healthcheck::from_secs(vec!["CMD".into(), "x".into()], 30, 10, 120, 3),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_scan_reads_back_what_the_exporter_wrote(
        layers in prop::collection::vec(layer(), 1..5),
        mtime in 0u64..2_000_000_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("image.tar");
        let specs: Vec<LayerSpec> = layers
            .iter()
            .enumerate()
            .map(|(i, (compression, files))| LayerSpec {
                role: LayerRole::ModelFiles,
                description: format!("layer {i}"),
                // A file naming the layer keeps layers distinct, as the plan's always are
                // (identical base-image layers go through `add_blob`, which writes one copy).
                entries: with_parent_dirs(
                    files
                        .iter()
                        .map(|(path, bytes)| Entry::bytes(path.clone(), bytes.clone(), 0o644))
                        .chain([Entry::bytes(format!("layer-{i}"), vec![], 0o644)])
                        .collect(),
                ),
                compression: *compression,
                mtime,
            })
            .collect();
        let mut writer =
            ImageWriter::create(&out, mtime, DigestCache::new(&dir.path().join("cache"), false))
                .unwrap();
        let written = writer.add_layers(specs, &crate::progress::Silent).unwrap();
        let reference = ImageRef::new("registry.local/test/roundtrip", "1").unwrap();
        let docs = image::assemble(&reference, &run(), &written).unwrap();
        writer.finish(&docs).unwrap();

        let scan = super::scan(&out).unwrap();
        for layer in &written {
            let info = scan.blobs.get(&layer.sums.digest).expect("every layer blob is found");
            prop_assert_eq!(info.actual, Some(layer.sums.digest));
            prop_assert_eq!(info.size, layer.sums.size);
            prop_assert_eq!(info.diff_id, Some(layer.sums.diff_id));
            prop_assert!(info.layer_error.is_none(), "{:?}", info.layer_error);
            let measured: BTreeMap<String, (String, u64)> = layer
                .sums
                .files
                .iter()
                .map(|f| (f.path.clone(), (f.sha256.hex(), f.size)))
                .collect();
            let read: BTreeMap<String, (String, u64)> = info
                .files
                .iter()
                .map(|(p, f)| (p.clone(), (f.sha256.hex(), f.size)))
                .collect();
            prop_assert_eq!(read, measured);
        }
        // The config and manifest are there too, under their digests.
        prop_assert!(scan.blobs.contains_key(&docs.config.digest));
        prop_assert!(scan.blobs.contains_key(&docs.manifest.digest));
        prop_assert_eq!(scan.blobs.len(), written.len() + 2);
    }
}

/// The empty layer (`sha256:5f70bf18…`, the end-of-archive marker alone) is a layer, and an
/// image listing it twice gets one copy in the tarball: both found by the property test above
/// before the layers were made distinct.
#[test]
fn an_empty_layer_listed_twice_is_one_entry_and_reads_as_a_layer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image.tar");
    let empty = vec![0u8; 1024];
    let digest = crate::digest::Sha256Digest::of(&empty);
    assert!(digest.hex().starts_with("5f70bf18"));
    let mut writer =
        ImageWriter::create(&out, 0, DigestCache::new(&dir.path().join("cache"), false)).unwrap();
    let spec = |i: usize| LayerSpec {
        role: LayerRole::Base,
        description: format!("base {i}"),
        entries: vec![],
        compression: Compression::None,
        mtime: 0,
    };
    let mut layers = Vec::new();
    for i in 0..2 {
        layers.push(
            writer
                .add_blob(
                    spec(i),
                    "layer.tar",
                    &mut &empty[..],
                    digest,
                    digest,
                    &crate::progress::Silent,
                )
                .unwrap(),
        );
    }
    let reference = ImageRef::new("registry.local/test/empty", "1").unwrap();
    let docs = image::assemble(&reference, &run(), &layers).unwrap();
    writer.finish(&docs).unwrap();
    let scan = super::scan(&out).unwrap();
    let info = &scan.blobs[&digest];
    assert_eq!(info.diff_id, Some(digest));
    assert!(info.files.is_empty() && info.layer_error.is_none());
    assert_eq!(scan.blobs.len(), 3, "one layer entry, config, manifest");
}
