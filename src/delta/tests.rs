use super::*;

/// A tarball shaped like ours: directories, blobs named by digest, then the documents.
fn tarball(path: &Path, blobs: &[&[u8]], mtime: u64) -> Vec<Sha256Digest> {
    let mut builder = tar::Builder::new(File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8], kind| {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(bytes.len() as u64);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_cksum();
        builder.append(&header, bytes).unwrap();
    };
    add("blobs", b"", tar::EntryType::Directory);
    let mut digests = Vec::new();
    for blob in blobs {
        let digest = Sha256Digest::of(blob);
        add(
            &format!("blobs/sha256/{}", digest.hex()),
            blob,
            tar::EntryType::Regular,
        );
        digests.push(digest);
    }
    let index =
        serde_json::json!({ "manifests": [{ "digest": digests.last().unwrap().prefixed() }] });
    add(
        "index.json",
        index.to_string().as_bytes(),
        tar::EntryType::Regular,
    );
    add("manifest.json", b"[]", tar::EntryType::Regular);
    builder.into_inner().unwrap();
    digests
}

fn entry_names(path: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn a_delta_carries_only_what_the_base_lacks_and_assembles_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.tar"), dir.path().join("new.tar"));
    let weights = vec![7u8; 5000];
    let shared = tarball(&old, &[&weights, b"old server", b"old manifest"], 100);
    let target = tarball(&new, &[&weights, b"new server!", b"new manifest"], 200);
    assert_eq!(shared[0], target[0]);

    let out = dir.path().join("delta.tar");
    let summary = delta(&old, &new, &out).unwrap();
    assert_eq!((summary.blobs_carried, summary.blobs_from_base), (2, 1));
    assert_eq!(summary.bytes_from_base, 5000);
    let names = entry_names(&out);
    assert!(
        !names.contains(&format!("blobs/sha256/{}", target[0].hex())),
        "{names:?}"
    );
    for carried in &target[1..] {
        assert!(
            names.contains(&format!("blobs/sha256/{}", carried.hex())),
            "{names:?}"
        );
    }
    assert_eq!(names.last().unwrap(), PLAN_NAME);
    // Reproducible: the same inputs give the same delta.
    let again = dir.path().join("again.tar");
    delta(&old, &new, &again).unwrap();
    assert_eq!(fs_err::read(&out).unwrap(), fs_err::read(&again).unwrap());

    let rebuilt = dir.path().join("rebuilt.tar");
    let done = assemble(&old, &out, &rebuilt).unwrap();
    let bytes = fs_err::read(&new).unwrap();
    assert_eq!(fs_err::read(&rebuilt).unwrap(), bytes);
    assert_eq!(done.sha256, Sha256Digest::of(&bytes).prefixed());
    assert_eq!(done.manifest, target[2].prefixed());
}

#[test]
fn a_wrong_or_damaged_base_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.tar"), dir.path().join("new.tar"));
    let weights = vec![7u8; 5000];
    let base = tarball(&old, &[&weights, b"old manifest"], 100);
    tarball(&new, &[&weights, b"new manifest"], 200);
    let out = dir.path().join("delta.tar");
    delta(&old, &new, &out).unwrap();

    // Another image as the base: the blob the delta needs is named.
    let other = dir.path().join("other.tar");
    tarball(&other, &[b"something else", b"other manifest"], 100);
    let rebuilt = dir.path().join("rebuilt.tar");
    let err = assemble(&other, &out, &rebuilt).unwrap_err().to_string();
    assert!(
        err.contains(&base[0].hex()) && err.contains("lacks"),
        "{err}"
    );
    assert!(
        err.contains(&base[1].prefixed()),
        "names the base it was made against: {err}"
    );
    assert!(!rebuilt.exists());

    // The right base with one byte of the shared blob flipped: caught by its digest.
    let mut bytes = fs_err::read(&old).unwrap();
    let at = bytes
        .windows(5000)
        .position(|w| w == weights.as_slice())
        .unwrap();
    bytes[at + 10] ^= 1;
    fs_err::write(&old, &bytes).unwrap();
    let err = assemble(&old, &out, &rebuilt).unwrap_err().to_string();
    assert!(
        err.contains("corrupt") && err.contains(&base[0].hex()),
        "{err}"
    );
    assert!(!rebuilt.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
        "{left:?}"
    );

    // A full tarball is not a delta, and a delta is not a full tarball.
    let err = assemble(&old, &new, &rebuilt).unwrap_err().to_string();
    assert!(err.contains("not a delta bundle"), "{err}");
    let err = delta(&old, &out, &rebuilt).unwrap_err().to_string();
    assert!(err.contains("is itself a delta"), "{err}");
}
