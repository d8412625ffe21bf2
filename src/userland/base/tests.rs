//! Base images built by hand in temp dirs: the digest rules, every corruption the reader must
//! name, and whiteouts. The real-tool round trips (`docker save`, skopeo) are in
//! `tests/integration/base_image.rs`.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::*;

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, *content).unwrap();
    }
    tar.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn put(dir: &Path, bytes: &[u8]) -> Sha256Digest {
    let digest = Sha256Digest::of(bytes);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(digest.hex()), bytes).unwrap();
    digest
}

/// Writes an OCI layout of `layers` (raw tar, stored bytes, media type); returns the
/// manifest and config digests.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, Vec<u8>, &str)]) -> (Sha256Digest, Sha256Digest) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(raw, _, _)| Sha256Digest::of(raw).prefixed())
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin", "LANG=C.UTF-8", "TZ=UTC"], "Entrypoint": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "ADD rootfs"}, {"created_by": "ENV x", "empty_layer": true}, {"created_by": "RUN y"}],
    }))
    .unwrap();
    let config_digest = put(dir, &config);
    let descriptors: Vec<_> = layers
        .iter()
        .map(|(_, stored, media)| {
            json!({"mediaType": media, "digest": put(dir, stored).prefixed(), "size": stored.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.prefixed(), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = put(dir, &manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest.prefixed(), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "example.org/base:1"}}]}))
        .unwrap(),
    )
    .unwrap();
    (manifest_digest, config_digest)
}

fn two_layers() -> Vec<(Vec<u8>, Vec<u8>, &'static str)> {
    let lower = layer_tar(&[
        ("etc/os-release", b"ID=test\n"),
        ("opt/old/a", b"a"),
        ("opt/gone", b"g"),
    ]);
    let upper = layer_tar(&[
        ("opt/.wh.gone", b""),
        ("opt/old/.wh..wh..opq", b""),
        ("opt/old/b", b"b"),
    ]);
    vec![
        (
            lower.clone(),
            gzip(&lower),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            upper.clone(),
            upper,
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ]
}

#[test]
fn opens_by_manifest_or_config_digest_and_applies_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let (manifest, config) = oci_layout(dir.path(), &layers);
    for pinned in [manifest, config] {
        let base = BaseImage::open(dir.path(), &pinned).unwrap();
        assert_eq!(
            base.label(),
            format!("example.org/base:1@{}", pinned.prefixed())
        );
        assert_eq!(base.layers.len(), 2);
        assert_eq!(base.layers[0].compression, Compression::Gzip);
        assert_eq!(base.layers[0].digest, Sha256Digest::of(&layers[0].1));
        assert_eq!(base.layers[0].diff_id, Sha256Digest::of(&layers[0].0));
        assert_eq!(base.layers[1].created_by, "RUN y");
        let root = base.rootfs.path();
        assert!(root.join("etc/os-release").is_file());
        assert!(!root.join("opt/gone").exists(), "whiteout");
        assert!(!root.join("opt/old/a").exists(), "opaque whiteout");
        assert!(
            root.join("opt/old/b").is_file(),
            "opaque keeps the layer's own files"
        );
    }
}

#[test]
fn a_wrong_digest_names_what_the_image_has() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, config) = oci_layout(dir.path(), &two_layers());
    let err = BaseImage::open(dir.path(), &Sha256Digest::of(b"other"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&Sha256Digest::of(b"other").prefixed()),
        "{err}"
    );
    assert!(
        err.contains(&manifest.prefixed()) && err.contains(&config.prefixed()),
        "{err}"
    );
}

#[test]
fn corrupt_and_missing_blobs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let (manifest, _) = oci_layout(dir.path(), &layers);
    let blob = format!("blobs/sha256/{}", Sha256Digest::of(&layers[1].1).hex());
    let mut bad = layers[1].1.clone();
    bad[600] ^= 1;
    std::fs::write(dir.path().join(&blob), &bad).unwrap();
    let err = BaseImage::open(dir.path(), &manifest)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&blob) && err.contains("corrupt"), "{err}");

    std::fs::remove_file(dir.path().join(&blob)).unwrap();
    let err = BaseImage::open(dir.path(), &manifest)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&blob) && err.contains("missing blob"), "{err}");
}

#[test]
fn foreign_layers_are_refused_by_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = two_layers();
    layers[1].2 = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    let (manifest, _) = oci_layout(dir.path(), &layers);
    let err = BaseImage::open(dir.path(), &manifest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unsupported media type") && err.contains("foreign"),
        "{err}"
    );
}

#[test]
fn a_classic_docker_save_is_pinned_by_its_image_id() {
    let dir = tempfile::tempdir().unwrap();
    let raw = layer_tar(&[("etc/os-release", b"ID=test\n")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [Sha256Digest::of(&raw).prefixed()]},
    }))
    .unwrap();
    let id = Sha256Digest::of(&config);
    let manifest = json!([{"Config": format!("{}.json", id.hex()), "RepoTags": ["base:1"], "Layers": ["l1/layer.tar"]}]);
    let tarball = dir.path().join("base.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    for (name, bytes) in [
        (format!("{}.json", id.hex()), config.clone()),
        ("l1/layer.tar".to_string(), raw.clone()),
        (
            "manifest.json".to_string(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    tar.finish().unwrap();
    drop(tar);

    let base = BaseImage::open(&tarball, &id).unwrap();
    assert_eq!(base.label(), format!("base:1@{}", id.prefixed()));
    assert_eq!(base.layers[0].digest, Sha256Digest::of(&raw));
    let mut blob = Vec::new();
    base.open_layer(&base.layers[0])
        .unwrap()
        .read_to_end(&mut blob)
        .unwrap();
    assert_eq!(blob, raw, "the blob is read back byte for byte");

    let err = BaseImage::open(&tarball, &Sha256Digest::of(b"x"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pin the image ID") && err.contains(&id.prefixed()),
        "{err}"
    );
}

#[test]
fn env_merges_by_key_keeping_the_base_path() {
    let base = [
        "PATH=/usr/sbin:/usr/bin".to_string(),
        "LANG=C.UTF-8".to_string(),
        "HOME=/root".to_string(),
    ];
    let ours = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "HOME=/home/appliance".to_string(),
        "APPLIANCE_PORT=8000".to_string(),
    ];
    assert_eq!(
        merge_env(&base, ours),
        [
            "PATH=/usr/local/bin:/usr/sbin:/usr/bin",
            "LANG=C.UTF-8",
            "HOME=/home/appliance",
            "APPLIANCE_PORT=8000"
        ]
    );
}

#[test]
fn entries_under_symlinks_leaving_the_rootfs_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, "var/run", "/run").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    tar.append_data(&mut h, "var/run/x.pid", &b"1"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    tar.append_data(&mut h, "etc/hostname", &b"h\n"[..])
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let (manifest, _) = oci_layout(
        dir.path(),
        &[(raw.clone(), raw, "application/vnd.oci.image.layer.v1.tar")],
    );
    let base = BaseImage::open(dir.path(), &manifest).unwrap();
    assert!(base.rootfs.path().join("etc/hostname").is_file());
    assert!(
        !Path::new("/run/x.pid").exists(),
        "nothing written outside the rootfs"
    );
}
