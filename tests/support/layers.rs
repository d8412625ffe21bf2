//! Reads the files of a built image back out of its `docker save`-style tarball (`manifest.json`
//! → `Layers`), so tests can check what a container would see without unpacking it with a tool.
//!
//! Layers are read as plain tar: the builder's default (and what these tests build) is
//! uncompressed; a test of gzip/zstd layers goes through umoci or podman instead.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One entry of a layer: the header fields tests check, and the content.
pub struct LayerEntry {
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub bytes: Vec<u8>,
}

impl LayerEntry {
    pub fn is_file(&self) -> bool {
        self.kind.is_file()
    }
}

/// path → entry for every entry of every layer, in layer order (a later layer's entry replaces
/// an earlier one at the same path).
pub fn layer_entries(tarball: &Path) -> BTreeMap<String, LayerEntry> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(tarball).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        blobs.insert(name, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
    let mut out = BTreeMap::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let mut archive = tar::Archive::new(&blobs[layer.as_str().unwrap()][..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            let entry = LayerEntry {
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                bytes,
            };
            out.insert(path, entry);
        }
    }
    out
}
