//! `[runtime] base = { image, digest }` with real base images made offline inside the test: a
//! rootfs tar holding the build host's glibc, libgcc_s and libstdc++ → `docker import` (private
//! dockerd) → `docker save` (classic archive, pinned by image ID) → `skopeo copy` to an
//! `oci-archive:` tarball and an `oci:` layout directory (pinned by manifest digest). Each is
//! built on, the result unpacked with umoci and proven to load every ELF from its own rootfs
//! (`support::elf`, independent of the builder's resolver), loaded into Docker and run.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::builder::{LLAMA_GQA as NAME, build_llama_gqa};
use support::elf::assert_rootfs_loads;
use support::{Dockerd, hardened_run, require_tool, run_ok, server_bin, umoci_unpack};

const BASE: &str = "appliance-test/base:1";

/// The libraries the server binary needs on this host, as the host's own `ldd` reports them
/// (soname, real file), plus libstdc++ as a real base would carry it.
fn host_libraries() -> Vec<(String, PathBuf)> {
    let out = run_ok(
        Command::new(require_tool("ldd")).arg(server_bin()),
        std::time::Duration::from_secs(60),
    );
    let mut libs: Vec<(String, PathBuf)> = out
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            let path = rest.split_whitespace().next()?;
            Some((name.to_string(), PathBuf::from(path)))
        })
        .collect();
    let stdcxx = Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
    if stdcxx.exists() && !libs.iter().any(|(n, _)| n == "libstdc++.so.6") {
        libs.push(("libstdc++.so.6".into(), stdcxx.to_path_buf()));
    }
    assert!(
        libs.iter().any(|(n, _)| n == "libc.so.6"),
        "ldd found no libc:\n{out}"
    );
    libs
}

/// A merged-usr rootfs tar: `/lib -> usr/lib`, `/lib64 -> usr/lib64`, the loader, the host's
/// libraries (minus `omit`), `/etc` basics. Files are copied from their real paths.
fn rootfs_tar(path: &Path, omit: Option<&str>) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let dir = |tar: &mut tar::Builder<std::fs::File>, p: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, p, std::io::empty()).unwrap();
    };
    for d in [
        "etc",
        "etc/ld.so.conf.d",
        "usr",
        "usr/lib",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
        "tmp",
    ] {
        dir(&mut tar, d);
    }
    let link = |tar: &mut tar::Builder<std::fs::File>, p: &str, target: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, p, target).unwrap();
    };
    link(&mut tar, "lib", "usr/lib");
    link(&mut tar, "lib64", "usr/lib64");
    let file = |tar: &mut tar::Builder<std::fs::File>, p: &str, bytes: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, p, bytes).unwrap();
    };
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    file(
        &mut tar,
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        &std::fs::read(loader).unwrap(),
        0o755,
    );
    link(
        &mut tar,
        "usr/lib64/ld-linux-x86-64.so.2",
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    );
    for (soname, real) in host_libraries() {
        if Some(soname.as_str()) == omit {
            continue;
        }
        let bytes = std::fs::read(std::fs::canonicalize(&real).unwrap()).unwrap();
        file(
            &mut tar,
            &format!("usr/lib/x86_64-linux-gnu/{soname}"),
            &bytes,
            0o644,
        );
    }
    file(
        &mut tar,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    file(&mut tar, "etc/group", b"root:x:0:\n", 0o644);
    file(&mut tar, "etc/os-release", b"ID=appliance-test\n", 0o644);
    file(
        &mut tar,
        "etc/ld.so.conf",
        b"include /etc/ld.so.conf.d/*.conf\n",
        0o644,
    );
    file(
        &mut tar,
        "etc/ld.so.conf.d/x86_64-linux-gnu.conf",
        b"/usr/local/lib/x86_64-linux-gnu\n",
        0o644,
    );
    tar.finish().unwrap();
}

/// `docker import`s a rootfs (with Env and an Entrypoint the appliance must drop) and saves it;
/// returns the classic archive and its image ID.
fn docker_base(docker: &Dockerd, dir: &Path, tag: &str, omit: Option<&str>) -> (PathBuf, String) {
    let rootfs = dir.join(format!("rootfs-{}.tar", tag.replace([':', '/'], "-")));
    rootfs_tar(&rootfs, omit);
    docker.docker_ok(&[
        "import",
        "--change",
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        r#"ENTRYPOINT ["/bin/false"]"#,
        rootfs.to_str().unwrap(),
        tag,
    ]);
    let saved = dir.join(format!("{}.tar", tag.replace([':', '/'], "-")));
    docker.docker_ok(&["save", "-o", saved.to_str().unwrap(), tag]);
    let id = docker
        .docker_ok(&["image", "inspect", "-f", "{{.Id}}", tag])
        .trim()
        .to_string();
    (saved, id)
}

fn build(dir: &Path, base: &Path, digest: &str, out_name: &str) -> (PathBuf, Output) {
    let tarball = dir.join(format!("{out_name}.tar"));
    let out = build_llama_gqa(
        &dir.join(format!("{out_name}.toml")),
        "",
        &format!(
            "[runtime]\nbase = {{ image = \"{}\", digest = \"{digest}\" }}",
            base.display()
        ),
        &tarball,
    );
    (tarball, out)
}

fn build_ok(dir: &Path, base: &Path, digest: &str, out_name: &str) -> (PathBuf, serde_json::Value) {
    let (tarball, out) = build(dir, base, digest, out_name);
    assert!(
        out.status.success(),
        "build on {} failed:\n{}",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (tarball, serde_json::from_slice(&out.stdout).unwrap())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn builds_on_docker_save_oci_archive_and_oci_layout_bases() {
    let dir = tempfile::tempdir().unwrap();
    let docker = Dockerd::start();
    let (saved, image_id) = docker_base(&docker, dir.path(), BASE, None);
    let base_diff_ids = strings(&docker.image_inspect(BASE)["RootFS"]["Layers"]);

    let skopeo = require_tool("skopeo");
    let oci_archive = dir.path().join("base-oci.tar");
    let oci_dir = dir.path().join("base-layout");
    for dest in [
        format!("oci-archive:{}:{BASE}", oci_archive.display()),
        format!("oci:{}:{BASE}", oci_dir.display()),
    ] {
        run_ok(
            Command::new(&skopeo).args([
                "copy",
                "--quiet",
                &format!("docker-archive:{}", saved.display()),
                &dest,
            ]),
            std::time::Duration::from_secs(300),
        );
    }
    let inspect = |r: String| support::skopeo_inspect(&r);
    let archive_info = inspect(format!("oci-archive:{}", oci_archive.display()));
    let dir_info = inspect(format!("oci:{}:{BASE}", oci_dir.display()));

    let forms = [
        ("docker-save", saved.clone(), image_id.clone(), None),
        (
            "oci-archive",
            oci_archive.clone(),
            archive_info["Digest"].as_str().unwrap().to_string(),
            Some(strings(&archive_info["Layers"])),
        ),
        (
            "oci-layout",
            oci_dir.clone(),
            dir_info["Digest"].as_str().unwrap().to_string(),
            Some(strings(&dir_info["Layers"])),
        ),
    ];
    for (form, base, digest, base_blobs) in forms {
        let (tarball, built) = build_ok(dir.path(), &base, &digest, form);
        let image = &built["image"];
        let layers = image["layers"].as_array().unwrap();
        // The base's layers come first, byte for byte (same diff_ids, same stored blobs).
        let diff_ids: Vec<&str> = layers
            .iter()
            .map(|l| l["diff_id"].as_str().unwrap())
            .collect();
        assert_eq!(diff_ids[..base_diff_ids.len()], base_diff_ids[..], "{form}");
        if let Some(blobs) = base_blobs {
            let digests: Vec<&str> = layers
                .iter()
                .map(|l| l["digest"].as_str().unwrap())
                .collect();
            assert_eq!(digests[..blobs.len()], blobs[..], "{form}");
        }
        assert!(
            layers
                .iter()
                .all(|l| !l["created_by"].as_str().unwrap().contains("userland")),
            "{form}: no host userland on a base image: {layers:?}"
        );
        assert_eq!(
            image["labels"]["appliance.runtime.base"],
            // The name recorded inside each archive (RepoTags, ref.name), never the host path.
            format!("{BASE}@{digest}"),
            "{form}"
        );
        let env = strings(&image["env"]);
        assert!(
            env.contains(&"LANG=C.UTF-8".to_string()),
            "{form}: base Env kept: {env:?}"
        );
        assert!(
            env.contains(&"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
            "{form}: {env:?}"
        );
        assert!(
            env.contains(&"APPLIANCE_MODEL=/models/llama-gqa".to_string()),
            "{form}: {env:?}"
        );
        assert_eq!(
            strings(&image["entrypoint"]),
            ["/usr/local/bin/appliance-server"],
            "{form}"
        );
        assert_eq!(image["user"], "65532:65532");

        let unpacked = umoci_unpack(&tarball, false);
        let checked = assert_rootfs_loads(&unpacked.rootfs, &env);
        assert!(
            checked.contains(&"/usr/local/bin/appliance-server".to_string()),
            "{form}: {checked:?}"
        );
        assert!(
            checked.iter().any(|p| p.contains("libstdc++")),
            "{form}: {checked:?}"
        );
        assert!(
            unpacked.rootfs.join("etc/os-release").is_file(),
            "{form}: the base's files are there"
        );

        let reference = format!("{NAME}:0.1.0");
        docker.load(&tarball, &reference);
        let version = docker.docker_ok(&hardened_run(
            &["--rm", "--network", "none"],
            &[&reference, "--version"],
        ));
        assert!(version.contains("appliance-server"), "{form}: {version}");
        docker.docker_ok(&["rmi", &reference]);

        // Same base, same inputs: the same image, byte for byte.
        let (again, rebuilt) = build_ok(dir.path(), &base, &digest, &format!("{form}-again"));
        assert_eq!(
            rebuilt["image"]["manifest_digest"], image["manifest_digest"],
            "{form}"
        );
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&tarball).unwrap(),
            "{form}"
        );
    }
}

#[test]
fn bad_base_images_fail_naming_the_problem_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let docker = Dockerd::start();
    let (lacking, lacking_id) = docker_base(
        &docker,
        dir.path(),
        "appliance-test/nolibgcc:1",
        Some("libgcc_s.so.1"),
    );
    let (good, good_id) = docker_base(&docker, dir.path(), BASE, None);
    drop(docker);

    let fails = |base: &Path, digest: &str, name: &str, expect: &[&str]| {
        let (tarball, out) = build(dir.path(), base, digest, name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: built anyway");
        for e in expect {
            assert!(stderr.contains(e), "{name}: `{e}` not in:\n{stderr}");
        }
        assert!(
            !tarball.exists() && !dir.path().join(format!("{name}.tar.tmp")).exists(),
            "{name}"
        );
    };
    // The ELF closure is checked against the base's files, at build time.
    fails(
        &lacking,
        &lacking_id,
        "missing-lib",
        &["libgcc_s.so.1", "/usr/local/bin/appliance-server"],
    );
    // Another image's digest.
    fails(&good, &lacking_id, "wrong-digest", &[&lacking_id, &good_id]);
    // A corrupted layer blob inside an otherwise valid archive.
    let layout = dir.path().join("layout");
    run_ok(
        Command::new(require_tool("skopeo")).args([
            "copy",
            "--quiet",
            &format!("docker-archive:{}", good.display()),
            &format!("oci:{}:{BASE}", layout.display()),
        ]),
        std::time::Duration::from_secs(300),
    );
    let info = support::skopeo_inspect(&format!("oci:{}:{BASE}", layout.display()));
    let layer = info["Layers"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = layout.join("blobs/sha256").join(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    fails(
        &layout,
        info["Digest"].as_str().unwrap(),
        "corrupt",
        &[&format!("blobs/sha256/{layer}"), "corrupt"],
    );
}
