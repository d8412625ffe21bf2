//! `appliance build` and `appliance inspect` driven as a user would: the real binary, real
//! manifests, the reference fixture checkpoints; bad input checked for message, exit code and
//! that nothing is left at the output path.

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::layers::layer_entries;
use support::paths::{appliance_bin, shared_fixtures};

/// A manifest for the `llama-gqa` fixture, written into `dir` with `extra` TOML appended.
fn manifest(dir: &Path, extra: &str) -> PathBuf {
    let model = shared_fixtures().join("models/llama-gqa");
    let text = format!(
        "[image]\nname = \"registry.local/llm/llama-gqa\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
         [model]\npath = \"{}\"\n{extra}",
        model.display()
    );
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn appliance(args: &[&str], cwd: &Path) -> Output {
    Command::new(appliance_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run appliance")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn build_writes_a_tarball_with_server_weights_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "");
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    let tarball = dir.path().join("dist/llama-gqa-0.1.0.tar");
    assert_eq!(printed.trim(), tarball.to_str().unwrap());
    assert!(!dir.path().join("dist/llama-gqa-0.1.0.tar.tmp").exists());

    let entries = layer_entries(&tarball);
    let server = &entries["usr/local/bin/appliance-server"];
    assert_eq!((server.mode, server.uid), (0o555, 0));
    let fixture = shared_fixtures().join("models/llama-gqa");
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let e = &entries[&format!("models/llama-gqa/{file}")];
        assert_eq!((e.mode, e.uid, e.gid), (0o444, 0, 0), "{file}");
        assert_eq!(
            e.bytes,
            std::fs::read(fixture.join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(
        !entries.contains_key("models/llama-gqa/reference.json"),
        "not a model file"
    );
    let passwd = String::from_utf8(entries["etc/passwd"].bytes.clone()).unwrap();
    assert!(passwd.contains("appliance:x:65532:65532:"), "{passwd}");
    assert_eq!(entries["tmp"].mode, 0o1777);
    assert_eq!(
        &entries["home/appliance"].uid..=&entries["home/appliance"].gid,
        &65532..=&65532
    );
    assert!(entries.contains_key("etc/ld.so.conf.d"));
    // The host userland brings the loader and libc the server needs.
    assert!(
        entries.keys().any(|p| p.ends_with("libc.so.6")),
        "no libc in image"
    );
}

#[test]
fn export_is_byte_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let m = manifest(a.path(), "[image.labels]\n\"org.example.team\" = \"ml\"\n");
    let out_a = a.path().join("one.tar");
    let first = Command::new(appliance_bin())
        .args([
            "build",
            m.to_str().unwrap(),
            "--output",
            out_a.to_str().unwrap(),
            "--quiet",
        ])
        .current_dir(a.path())
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Different working dir, relative manifest path, time zone, locale, umask and output name.
    let out_b = b.path().join("nested/two.tar");
    let rel_manifest = pathdiff(&m, b.path());
    let second = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && exec '{}' build '{}' --output '{}' --quiet",
            appliance_bin().display(),
            rel_manifest.display(),
            out_b.display()
        ))
        .current_dir(b.path())
        .env("TZ", "Asia/Kolkata")
        .env("LC_ALL", "de_DE.UTF-8")
        .env("SOURCE_DATE_EPOCH", "12345")
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(sha256_file(&out_a), sha256_file(&out_b));
}

/// `b/../a/manifest.toml`-style relative path from `from` to `to`.
/// Progress bars with a byte rate are drawn when stderr is a terminal (a pseudo-terminal from
/// util-linux `script`), and never when it is a pipe: CI logs must carry no control codes.
/// `APPLIANCE_PROGRESS_AFTER_MS=0` lifts the two-second delay so a small fixture shows bars.
#[test]
fn progress_bars_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "");
    let on_tty = dir.path().join("tty.tar");
    let command = format!(
        "exec '{}' build '{}' --output '{}'",
        appliance_bin().display(),
        manifest.display(),
        on_tty.display()
    );
    let tty = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("APPLIANCE_PROGRESS_AFTER_MS", "0")
        .env("TERM", "xterm")
        .current_dir(dir.path())
        .output()
        .expect("run util-linux script (package bsdutils)");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "build on a pty failed: {screen}");
    assert!(on_tty.is_file());
    assert!(
        screen.contains("B/s") && screen.contains('\u{1b}'),
        "no progress bar with a byte rate on the terminal: {screen:?}"
    );

    let piped = Command::new(appliance_bin())
        .args(["build", manifest.to_str().unwrap(), "--output"])
        .arg(dir.path().join("pipe.tar"))
        .env("APPLIANCE_PROGRESS_AFTER_MS", "0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    let log = stderr(&piped);
    assert!(
        !log.contains('\u{1b}') && !log.contains("B/s"),
        "progress output leaked into a non-terminal stderr: {log:?}"
    );
    // Bars change nothing in the bytes.
    assert_eq!(
        sha256_file(&on_tty),
        sha256_file(&dir.path().join("pipe.tar"))
    );
}

/// Every blob in the tarball is named by the sha256 of its bytes.
fn assert_blobs_match_names(tarball: &Path) {
    let mut outer = tar::Archive::new(std::fs::File::open(tarball).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            let out = Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&bytes)?;
                    c.wait_with_output()
                })
                .unwrap();
            assert_eq!(&String::from_utf8_lossy(&out.stdout)[..64], hex, "{name}");
        }
    }
}

/// A rebuild from unchanged weights reuses their layer digests (copied, nothing hashed) and
/// gives the same bytes; a weight rewritten in place with the same size misses the cache and
/// gets the right digest; `--verify-cache` rehashes and agrees.
#[test]
fn layer_digest_cache_is_reused_and_invalidated() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(shared_fixtures().join("models/llama-gqa")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
        }
    }
    let manifest = dir.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[image]\nname = \"registry.local/llm/cache\"\ntag = \"1\"\n\
         created = \"2025-06-01T00:00:00Z\"\n[model]\npath = \"model\"\n\
         [server]\nserved_model_name = \"llama-gqa\"\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let build = |out: &str, extra: &[&str]| {
        let output = Command::new(appliance_bin())
            .args(["build", "m.toml", "--quiet", "--output", out])
            .args(extra)
            .env("APPLIANCE_CACHE", &cache)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        dir.path().join(out)
    };
    let first = build("1.tar", &[]);
    let entries = || std::fs::read_dir(cache.join("layers/v1")).map_or(0, |d| d.count());
    assert!(entries() >= 1, "no layer digests recorded");
    let second = build("2.tar", &[]);
    assert_eq!(sha256_file(&first), sha256_file(&second));

    // Flip one byte of the weights, same size, mtime restored.
    let weights = model.join("model.safetensors");
    let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let third = build("3.tar", &[]);
    assert_ne!(sha256_file(&first), sha256_file(&third));
    assert_blobs_match_names(&third);
    let packed = layer_entries(&third);
    assert_eq!(packed["models/llama-gqa/model.safetensors"].bytes, bytes);

    let verified = build("4.tar", &["--verify-cache"]);
    assert_eq!(sha256_file(&third), sha256_file(&verified));
}

fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let depth = from.components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..depth {
        rel.push("..");
    }
    rel.join(to.strip_prefix("/").unwrap())
}

#[test]
fn inspect_json_round_trips_build_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "[server]\nargs = [\"--max-concurrent-requests\", \"4\"]\n",
    );
    let out = appliance(&["build", m.to_str().unwrap(), "--json"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tarball = built["output"].as_str().unwrap();
    let inspected = appliance(&["inspect", tarball, "--json"], dir.path());
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(built["image"], inspected);

    let image = &built["image"];
    assert_eq!(image["user"], "65532:65532");
    assert_eq!(
        image["cmd"],
        serde_json::json!(["--max-concurrent-requests", "4"])
    );
    assert_eq!(image["exposed_ports"], serde_json::json!(["8000/tcp"]));
    let files = image["model"]["files"].as_array().unwrap();
    let weights = files
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa/model.safetensors");
    assert_eq!(weights["sha256"].as_str().unwrap(), sha256_file(&fixture));

    let human = appliance(&["inspect", tarball], dir.path());
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("registry.local/llm/llama-gqa:0.1.0"),
        "{text}"
    );
    assert!(text.contains("weights model.safetensors"), "{text}");
}

#[test]
fn pinned_digests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa/config.json");
    let good = sha256_file(&fixture);
    let m = manifest(
        dir.path(),
        &format!("[model.sha256]\n\"config.json\" = \"{good}\"\n"),
    );
    let out = appliance(&["build", m.to_str().unwrap(), "--quiet"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let bad = "0".repeat(64);
    let m = manifest(
        dir.path(),
        &format!("[model.sha256]\n\"config.json\" = \"{bad}\"\n"),
    );
    // The mismatch is found while writing: the partial file and the directory made for it go.
    let target = dir.path().join("fresh/dir/pinned.tar");
    let out = appliance(
        &["build", m.to_str().unwrap(), "-o", target.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.json") && err.contains(&bad) && err.contains(&good),
        "{err}"
    );
    assert!(
        !dir.path().join("fresh").exists(),
        "left the output directory behind"
    );
}

/// `[model] require_pins = true`: a packaged file without a pin fails the build, listing every
/// unpinned file with the digest read (ready to paste once reviewed), and nothing is written;
/// pinning them all builds.
#[test]
fn require_pins_refuses_unpinned_files_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let config = sha256_file(&fixture.join("config.json"));
    let m = manifest(
        dir.path(),
        &format!("require_pins = true\n[model.sha256]\n\"config.json\" = \"{config}\"\n"),
    );
    let target = dir.path().join("pinned.tar");
    let out = appliance(
        &["build", m.to_str().unwrap(), "-o", target.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let weights = sha256_file(&fixture.join("model.safetensors"));
    assert!(err.contains("`model.require_pins` is on"), "{err}");
    assert!(
        err.contains(&format!("\"model.safetensors\" = \"{weights}\"")),
        "{err}"
    );
    assert!(
        !err.contains("\"config.json\" = "),
        "config.json is pinned: {err}"
    );
    assert!(!target.exists());

    // Every line the error printed, pasted under [model.sha256]: the build passes.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.trim_start().starts_with('"'))
        .collect();
    let m = manifest(
        dir.path(),
        &format!(
            "require_pins = true\n[model.sha256]\n\"config.json\" = \"{config}\"\n{}\n",
            lines
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    );
    let out = appliance(
        &[
            "build",
            m.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
            "--quiet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A bad input: name, manifest text, extra args, expected exit code, fragments of the message.
type BadCase<'a> = (&'a str, String, Vec<&'a str>, i32, Vec<String>);

/// Each bad input: expected exit code and a fragment the message must contain.
#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file_as_dir = dir.path().join("a-file");
    std::fs::write(&file_as_dir, "x").unwrap();
    let out_dir = dir.path().join("is-a-dir.tar");
    std::fs::create_dir(&out_dir).unwrap();
    let base = "[image]\nname = \"registry.local/x\"\ntag = \"1\"\n[model]\npath = \"m\"\n";
    std::fs::create_dir(dir.path().join("m")).unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let cases: Vec<BadCase> = vec![
        (
            "invalid toml",
            "[image\nname = 1".into(),
            vec![],
            2,
            vec!["line 1, column".into()],
        ),
        (
            "unknown field",
            base.replace("tag = \"1\"", "tag = \"1\"\ncolour = \"red\""),
            vec![],
            2,
            vec!["unknown field `colour`".into()],
        ),
        (
            "missing field",
            base.replace("tag = \"1\"\n", ""),
            vec![],
            2,
            vec!["missing field `tag`".into()],
        ),
        (
            "two sources",
            base.replace("path = \"m\"", "path = \"m\"\nhf = \"a/b\""),
            vec![],
            2,
            vec!["exactly one source".into()],
        ),
        (
            "missing model dir",
            base.replace("path = \"m\"", "path = \"gone\""),
            vec![],
            2,
            vec!["model.path".into(), "gone".into()],
        ),
        (
            "empty model dir",
            base.to_string(),
            vec![],
            1,
            vec!["No file in".into()],
        ),
        (
            "pinned file missing",
            format!(
                "{}[model.sha256]\n\"absent.safetensors\" = \"{}\"\n",
                base.replace("path = \"m\"", &format!("path = \"{}\"", fixture.display())),
                "0".repeat(64)
            ),
            vec![],
            1,
            vec!["absent.safetensors".into()],
        ),
        (
            "invalid name",
            base.replace("registry.local/x", "Registry/UPPER"),
            vec![],
            2,
            vec!["image.name".into()],
        ),
        (
            "invalid tag",
            base.replace("tag = \"1\"", "tag = \"-1\""),
            vec![],
            2,
            vec!["image.tag".into()],
        ),
        (
            "output under a file",
            base.replace("path = \"m\"", &format!("path = \"{}\"", fixture.display())),
            vec!["-o", "a-file/out.tar"],
            1,
            vec!["a-file".into()],
        ),
        (
            "unwritable output dir",
            base.replace("path = \"m\"", &format!("path = \"{}\"", fixture.display())),
            vec!["-o", "/proc/appliance/out.tar"],
            1,
            vec!["/proc/appliance".into()],
        ),
        (
            "output is a directory",
            base.replace("path = \"m\"", &format!("path = \"{}\"", fixture.display())),
            vec!["-o", "is-a-dir.tar"],
            1,
            vec!["is a directory".into()],
        ),
    ];
    for (name, toml, args, code, fragments) in cases {
        let m = dir.path().join("bad.toml");
        std::fs::write(&m, &toml).unwrap();
        let mut all = vec!["build", m.to_str().unwrap()];
        all.extend(args.iter().copied());
        let out = appliance(&all, dir.path());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        for f in fragments {
            assert!(err.contains(&f), "{name}: expected `{f}` in: {err}");
        }
        assert!(
            err.lines().any(|l| l.starts_with("error: ")),
            "{name}: {err}"
        );
        assert!(!dir.path().join("dist").exists(), "{name}: wrote dist/");
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tmp" || e == "tar") && p != &out_dir)
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A temp dir with `model/` holding the `llama-gqa` fixture's config and tokenizer files only,
/// for tests that bring weights of their own.
fn model_dir_without_weights() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(name), model.join(name)).unwrap();
    }
    (dir, model)
}

/// Sharded weights: a run of weight layers is written by parallel workers, each at its entry's
/// planned offset, with direct I/O where the filesystem has it. Shards of odd sizes (under a
/// block, across block and buffer edges) must land byte for byte with every blob matching its
/// name, and the page-cache-only path (`APPLIANCE_DIRECT_IO=0`) and a warm rebuild (digests from
/// the cache, nothing hashed) must give the same bytes.
#[test]
fn sharded_weights_are_byte_identical_with_and_without_direct_io() {
    let (dir, model) = model_dir_without_weights();
    let sizes = [(1 << 20) + 1, 3, (2 << 20) + 4095, 5000, 1];
    let mut shards = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, sizes.len());
        let bytes: Vec<u8> = (0..*size)
            .map(|j: usize| (j.wrapping_mul(2654435761) >> 13) as u8 ^ i as u8)
            .collect();
        std::fs::write(model.join(&name), &bytes).unwrap();
        shards.push((name, bytes));
    }
    std::fs::write(
        dir.path().join("m.toml"),
        "[image]\nname = \"registry.local/llm/shards\"\ntag = \"1\"\n\
         created = \"2025-06-01T00:00:00Z\"\n[model]\npath = \"model\"\n\
         [server]\nserved_model_name = \"shards\"\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let build = |out: &str, direct: &str, extra: &[&str]| {
        let output = Command::new(appliance_bin())
            .args(["build", "m.toml", "--quiet", "--output", out])
            .args(extra)
            .env("APPLIANCE_CACHE", &cache)
            .env("APPLIANCE_DIRECT_IO", direct)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        dir.path().join(out)
    };
    let direct = build("direct.tar", "1", &["--verify-cache"]);
    assert_blobs_match_names(&direct);
    let packed = layer_entries(&direct);
    for (name, bytes) in &shards {
        let entry = &packed[&format!("models/shards/{name}")];
        assert!(entry.bytes == *bytes, "{name} differs in the image");
        assert_eq!((entry.mode, entry.uid), (0o444, 0), "{name}");
    }
    let buffered = build("buffered.tar", "0", &["--verify-cache"]);
    assert_eq!(sha256_file(&direct), sha256_file(&buffered));
    let warm = build("warm.tar", "1", &[]);
    assert_eq!(sha256_file(&direct), sha256_file(&warm));
}

/// A model directory with its weights twice (an unindexed `consolidated.safetensors` beside the
/// shards the index names) packages only the indexed shards; an index naming a shard that is
/// missing fails the build, naming the index and the shard, and writes nothing.
#[test]
fn only_indexed_shards_are_packaged_and_a_missing_shard_fails() {
    let (dir, model) = model_dir_without_weights();
    std::fs::write(model.join("model-00001-of-00002.safetensors"), [1u8; 700]).unwrap();
    std::fs::write(model.join("model-00002-of-00002.safetensors"), [2u8; 900]).unwrap();
    std::fs::write(model.join("consolidated.safetensors"), [3u8; 1600]).unwrap();
    let index = |second: &str| {
        format!(r#"{{"weight_map":{{"a":"model-00001-of-00002.safetensors","b":"{second}"}}}}"#)
    };
    let index_path = model.join("model.safetensors.index.json");
    std::fs::write(&index_path, index("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[image]\nname = \"registry.local/llm/indexed\"\ntag = \"1\"\n[model]\npath = \"model\"\n\
         [server]\nserved_model_name = \"indexed\"\n",
    )
    .unwrap();
    let out = appliance(&["build", "m.toml", "--quiet", "-o", "ok.tar"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = layer_entries(&dir.path().join("ok.tar"));
    assert!(entries.contains_key("models/indexed/model-00002-of-00002.safetensors"));
    assert!(entries.contains_key("models/indexed/model.safetensors.index.json"));
    assert!(!entries.contains_key("models/indexed/consolidated.safetensors"));

    std::fs::write(&index_path, index("model-00003-of-00002.safetensors")).unwrap();
    let out = appliance(&["build", "m.toml", "--quiet", "-o", "bad.tar"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("model-00003-of-00002"),
        "{err}"
    );
    assert!(!dir.path().join("bad.tar").exists() && !dir.path().join("bad.tar.tmp").exists());
}

/// A GGUF model directory (the llama-gqa fixture as Q8_0, written by
/// `scripts/fixture-to-gguf.py` with gguf-py) packs without a `config.json`, and without a
/// `tokenizer.json` too: the server builds the tokenizer from the GGUF's `tokenizer.ggml.*`
/// metadata. A GGUF whose metadata lacks `tokenizer.ggml.tokens` (removed with gguf-py's
/// `gguf_new_metadata`) is refused, naming the file and the key, and nothing is written; with
/// `tokenizer.json` beside it, it builds.
#[test]
fn a_gguf_model_directory_builds_without_tokenizer_json_when_its_metadata_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let model = dir.path().join("llama-gqa-gguf");
    std::fs::create_dir(&model).unwrap();
    let gguf = model.join("llama-gqa-q8_0.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixture-to-gguf.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(&fixture)
        .arg(&gguf)
        .args(["--type", "q8_0"])
        .status()
        .expect("python3 (gguf-py: scripts/install-test-deps)");
    assert!(status.success());
    let write = |files: &str| {
        let text = format!(
            "[image]\nname = \"registry.local/llm/gguf\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
             [model]\npath = \"{}\"\nfiles = [{files}]\n",
            model.display()
        );
        let path = dir.path().join("manifest.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let tarball = dir.path().join("dist/gguf-0.1.0.tar");
    let m = write("\"*.gguf\"");
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = layer_entries(&tarball);
    let packed: Vec<&str> = entries
        .iter()
        .filter(|(path, e)| path.starts_with("models/") && e.kind.is_file())
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(packed, ["models/llama-gqa-gguf/llama-gqa-q8_0.gguf"]);
    std::fs::remove_file(&tarball).unwrap();

    // The same file without its token list: refused before anything is written.
    let full = dir.path().join("full.gguf");
    std::fs::rename(&gguf, &full).unwrap();
    let strip = Command::new("python3")
        .args(["-m", "gguf.scripts.gguf_new_metadata"])
        .arg(&full)
        .arg(&gguf)
        .args(["--remove-metadata", "tokenizer.ggml.tokens", "--force"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 (gguf-py: scripts/install-test-deps)");
    assert!(strip.status.success(), "{}", stderr(&strip));
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: no `tokenizer.json` is packaged beside this GGUF, and the server cannot build the tokenizer from its metadata: `tokenizer.ggml.tokens` is missing",
            gguf.display()
        )),
        "{err}"
    );
    assert!(err.contains("`tokenizer = { hf = \"org/repo\" }`"), "{err}");
    assert!(!tarball.exists() && !dir.path().join("dist/gguf-0.1.0.tar.tmp").exists());

    std::fs::copy(fixture.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let m = write("\"*.gguf\", \"tokenizer.json\"");
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = layer_entries(&tarball);
    for file in ["llama-gqa-q8_0.gguf", "tokenizer.json"] {
        let e = &entries[&format!("models/llama-gqa-gguf/{file}")];
        assert_eq!(e.bytes, std::fs::read(model.join(file)).unwrap(), "{file}");
    }
}

/// A GGUF model directory: the llama-gqa fixture as `quant` (written by
/// `scripts/fixture-to-gguf.py`) and its `tokenizer.json`, in `dir/name`.
fn gguf_model_dir(dir: &Path, name: &str, quant: &str) -> PathBuf {
    let fixture = shared_fixtures().join("models/llama-gqa");
    let model = dir.join(name);
    std::fs::create_dir(&model).unwrap();
    let status = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixture-to-gguf.py"))
        .arg(&fixture)
        .arg(model.join(format!("llama-gqa-{quant}.gguf")))
        .args(["--type", quant])
        .status()
        .expect("python3 (gguf-py: scripts/install-test-deps)");
    assert!(status.success());
    std::fs::copy(fixture.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    model
}

/// A manifest packaging `model` (every file in it), written into `dir`.
fn gguf_manifest(dir: &Path, model: &Path) -> PathBuf {
    let path = dir.join("manifest.toml");
    std::fs::write(
        &path,
        format!(
            "[image]\nname = \"registry.local/llm/gguf\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
             [model]\npath = \"{}\"\nfiles = [\"*.gguf\", \"tokenizer.json\"]\n",
            model.display()
        ),
    )
    .unwrap();
    path
}

/// What the weights are is read from the GGUF header at build time and recorded: labels,
/// `build --json`, `inspect` and `inspect --json` name the format, `general.architecture` and
/// the file type; a safetensors checkpoint gets the same from its config.json.
#[test]
fn a_gguf_image_names_its_architecture_and_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let model = gguf_model_dir(dir.path(), "llama-gqa-gguf", "q8_0");
    let m = gguf_manifest(dir.path(), &model);
    let out = appliance(&["build", m.to_str().unwrap(), "--json"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tarball = built["output"].as_str().unwrap();
    let labels = &built["image"]["labels"];
    assert_eq!(labels["appliance.model.format"], "gguf");
    assert_eq!(labels["appliance.model.architecture"], "llama");
    assert_eq!(labels["appliance.model.quantization"], "Q8_0");

    let inspected = appliance(&["inspect", tarball, "--json"], dir.path());
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(built["image"], inspected);
    assert_eq!(
        inspected["model"]["format"],
        serde_json::json!({"weights": "gguf", "architecture": "llama", "quantization": "Q8_0"})
    );
    let human = appliance(&["inspect", tarball], dir.path());
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("Weights:      gguf, architecture llama, quantization Q8_0\n"),
        "{human}"
    );

    // The safetensors fixture: config.json's `model_type` and `torch_dtype` (float32).
    let m = manifest(dir.path(), "");
    let out = appliance(&["build", m.to_str().unwrap(), "--json"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        built["image"]["model"]["format"],
        serde_json::json!({"weights": "safetensors", "architecture": "llama", "quantization": "F32"})
    );
    assert_eq!(
        built["image"]["labels"]["appliance.model.quantization"],
        "F32"
    );
}

/// Shards named `-NNNNN-of-MMMMM` must all be there: the server would refuse the set at
/// startup, so the build does, naming the missing shard, and writes nothing.
#[test]
fn an_incomplete_gguf_shard_set_fails_naming_the_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    let model = gguf_model_dir(dir.path(), "sharded", "q8_0");
    let whole = model.join("llama-gqa-q8_0.gguf");
    std::fs::rename(&whole, model.join("llama-gqa-00001-of-00003.gguf")).unwrap();
    std::fs::write(model.join("llama-gqa-00003-of-00003.gguf"), b"GGUF").unwrap();
    let m = gguf_manifest(dir.path(), &model);
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("llama-gqa-00002-of-00003.gguf is missing") && err.contains("sharded"),
        "{err}"
    );
    assert!(!dir.path().join("dist/gguf-0.1.0.tar").exists());
    assert!(!dir.path().join("dist/gguf-0.1.0.tar.tmp").exists());
}

/// A GGUF file cut short (an interrupted copy) fails the build before any layer is written,
/// naming the file, the first tensor past the end, and both sizes.
#[test]
fn a_truncated_gguf_fails_the_build_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = gguf_model_dir(dir.path(), "cut", "q8_0");
    let file = model.join("llama-gqa-q8_0.gguf");
    let bytes = std::fs::read(&file).unwrap();
    let size = bytes.len() - 1000;
    std::fs::write(&file, &bytes[..size]).unwrap();
    let m = gguf_manifest(dir.path(), &model);
    let out = appliance(&["build", m.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} is truncated: tensor `", file.display()))
            && err.contains(&format!("the file has {size}")),
        "{err}"
    );
    assert!(!dir.path().join("dist/gguf-0.1.0.tar").exists());
    assert!(!dir.path().join("dist/gguf-0.1.0.tar.tmp").exists());
}

/// A weights-only GGUF directory takes its tokenizer from a second local directory
/// (`model.tokenizer = { path = ... }`, relative to the manifest): both land in the model
/// directory, the tokenizer in a layer of its own. A file both directories provide is refused,
/// naming both; so is a tokenizer directory without `tokenizer.json`.
#[test]
fn a_local_tokenizer_source_completes_a_weights_only_gguf_directory() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let model = dir.path().join("weights");
    let tok = dir.path().join("tok");
    std::fs::create_dir(&model).unwrap();
    std::fs::create_dir(&tok).unwrap();
    let status = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixture-to-gguf.py"))
        .arg(&fixture)
        .arg(model.join("llama-gqa-q8_0.gguf"))
        .args(["--type", "q8_0"])
        .status()
        .expect("python3 (gguf-py: scripts/install-test-deps)");
    assert!(status.success());
    for file in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        std::fs::copy(fixture.join(file), tok.join(file)).unwrap();
    }
    let write = |model_files: &str, tokenizer: &str| {
        let text = format!(
            "[image]\nname = \"registry.local/llm/gguf-tok\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
             [model]\npath = \"weights\"\nfiles = [{model_files}]\ntokenizer = {tokenizer}\n\
             [server]\nserved_model_name = \"gguf\"\n"
        );
        std::fs::write(dir.path().join("m.toml"), text).unwrap();
    };
    write("\"*.gguf\"", "{ path = \"tok\" }");
    let out = appliance(&["build", "m.toml", "-o", "ok.tar"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = layer_entries(&dir.path().join("ok.tar"));
    assert_eq!(
        entries["models/gguf/llama-gqa-q8_0.gguf"].bytes,
        std::fs::read(model.join("llama-gqa-q8_0.gguf")).unwrap()
    );
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let e = &entries[&format!("models/gguf/{file}")];
        assert_eq!((e.mode, e.uid), (0o444, 0), "{file}");
        assert_eq!(e.bytes, std::fs::read(tok.join(file)).unwrap(), "{file}");
    }
    // The default tokenizer globs never take the other directory's config.json.
    assert!(!entries.contains_key("models/gguf/config.json"));
    let out = appliance(&["inspect", "--json", "ok.tar"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["layers"].as_array().unwrap().iter().any(|l| l["created_by"]
            == "appliance: tokenizer files from path:tok tokenizer.json, tokenizer_config.json"),
        "{}",
        summary["layers"]
    );
    // Local sources are locked by `appliance lock`; without a lock `--locked` refuses.
    let out = appliance(
        &["build", "m.toml", "-o", "locked.tar", "--locked"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`--locked`, but there is no lock file"),
        "{}",
        stderr(&out)
    );

    std::fs::copy(fixture.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    write("\"*.gguf\", \"tokenizer.json\"", "{ path = \"tok\" }");
    let out = appliance(&["build", "m.toml", "-o", "both.tar"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`tokenizer.json` is selected from both the model `path:weights` and its tokenizer source `path:tok`"),
        "{err}"
    );
    assert!(!dir.path().join("both.tar").exists());

    std::fs::remove_file(tok.join("tokenizer.json")).unwrap();
    write("\"*.gguf\"", "{ path = \"tok\" }");
    let out = appliance(&["build", "m.toml", "-o", "none.tar"], dir.path());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no `tokenizer.json`"),
        "{}",
        stderr(&out)
    );
}

/// `model.quantize` refuses what it cannot convert, naming the file and field, and leaves no
/// tarball: weights that are already GGUF, an architecture llama.cpp's converter would map
/// differently, a checkpoint whose tokenizer is not a byte-level BPE.
#[test]
fn quantize_refuses_what_it_cannot_convert_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let copy = |name: &str, edit: &dyn Fn(&Path)| {
        let model = d.join(name);
        std::fs::create_dir(&model).unwrap();
        for f in std::fs::read_dir(&fixture).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
        }
        edit(&model);
        model
    };
    let edit_json = |path: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, v.to_string()).unwrap();
    };
    let gpt2 = copy("gpt2", &|m| {
        edit_json(&m.join("config.json"), &|v| {
            v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
        })
    });
    let spm = copy("spm", &|m| {
        edit_json(&m.join("tokenizer.json"), &|v| {
            v["model"]["byte_fallback"] = serde_json::json!(true)
        })
    });
    let gguf = gguf_model_dir(d, "gguf", "q8_0");
    let cases: [(&Path, &[&str]); 3] = [
        (&gguf, &["already GGUF", "llama-gqa-q8_0.gguf"]),
        (
            &gpt2,
            &["config.json", "`architectures`", "GPT2LMHeadModel"],
        ),
        (&spm, &["tokenizer.json", "`model.byte_fallback`"]),
    ];
    for (model, expected) in cases {
        let manifest = d.join("manifest.toml");
        std::fs::write(
            &manifest,
            format!(
                "[image]\nname = \"registry.local/llm/q\"\ntag = \"1\"\n[model]\npath = \"{}\"\nfiles = [\"*\"]\nquantize = \"q4_k_m\"\n",
                model.display()
            ),
        )
        .unwrap();
        let out = appliance(&["build", "manifest.toml", "-o", "out.tar"], d);
        let err = stderr(&out);
        assert!(!out.status.success(), "{}: built", model.display());
        for e in expected {
            assert!(err.contains(e), "{}: {e:?} not in {err}", model.display());
        }
        assert!(!d.join("out.tar").exists(), "{}", model.display());
    }
}

/// A `path` model gets a lock like a Hub one: `appliance lock` records every selected file's
/// size and sha256 (no host path); `build --locked` refuses a changed, added or removed file,
/// naming it (and both digests when only the bytes moved), writing nothing; a plain build
/// rewrites the section it finds stale; `verify --manifest --lock` holds the image to it.
#[test]
fn path_sources_are_locked_and_locked_builds_refuse_drift() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    let text = "[image]\nname = \"registry.local/llm/local\"\ntag = \"1\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
                [model]\npath = \"model\"\nfiles = [\"*.json\", \"*.safetensors\"]\n";
    std::fs::write(dir.path().join("m.toml"), text).unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "m.toml", "-o", "out.tar", "--quiet"];
        args.extend_from_slice(extra);
        appliance(&args, dir.path())
    };
    let tarball = dir.path().join("out.tar");
    let lock_path = dir.path().join("m.lock");

    // A plain build never creates a lock for a directory.
    assert!(build(&[]).status.success());
    assert!(!lock_path.exists());

    let out = appliance(&["lock", "m.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let parsed: toml::Value = toml::from_str(&lock).unwrap();
    let files = parsed["path"]["files"].as_array().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") || n.ends_with(".safetensors"))
        .collect();
    on_disk.sort();
    assert_eq!(
        files
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect::<Vec<_>>(),
        on_disk
    );
    for f in files {
        let path = model.join(f["path"].as_str().unwrap());
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_file(&path));
        assert_eq!(
            f["size"].as_integer().unwrap() as u64,
            path.metadata().unwrap().len()
        );
    }
    assert_eq!(parsed["path"]["globs"].as_array().unwrap().len(), 2);
    assert!(
        !lock.contains(&*dir.path().to_string_lossy()),
        "host path in the lock:\n{lock}"
    );
    assert!(parsed.get("model").is_none(), "{lock}");

    std::fs::remove_file(&tarball).unwrap();
    let out = build(&["--locked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = appliance(
        &[
            "verify",
            "out.tar",
            "--manifest",
            "m.toml",
            "--lock",
            "m.lock",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "intact, unsigned: {}",
        stderr(&out)
    );
    std::fs::remove_file(&tarball).unwrap();

    // The same size, other bytes: caught as packaged, both digests named, nothing written.
    let config = model.join("reference.json");
    let before = sha256_file(&config);
    let mut bytes = std::fs::read(&config).unwrap();
    let at = bytes.iter().position(|b| *b == b'a').unwrap();
    bytes[at] = b'b';
    std::fs::write(&config, &bytes).unwrap();
    let after = sha256_file(&config);
    assert_ne!(before, after);
    let out = build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`reference.json`") && err.contains(&before) && err.contains(&after),
        "{err}"
    );
    assert!(!tarball.exists() && !dir.path().join("out.tar.tmp").exists());
    assert_eq!(
        std::fs::read_to_string(&lock_path).unwrap(),
        lock,
        "--locked rewrote the lock"
    );

    // A new file the globs select is an unpinned file: refused before anything is read.
    std::fs::write(model.join("extra.json"), "{}").unwrap();
    let out = build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`extra.json`: new, not in the lock"),
        "{}",
        stderr(&out)
    );
    assert!(!tarball.exists());
    std::fs::remove_file(model.join("extra.json")).unwrap();
    std::fs::rename(
        model.join("generation_config.json"),
        dir.path().join("g.json"),
    )
    .unwrap();
    let out = build(&["--locked"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("`generation_config.json`: locked, no longer there"),
        "{err}"
    );
    std::fs::rename(
        dir.path().join("g.json"),
        model.join("generation_config.json"),
    )
    .unwrap();

    // Without --locked the build goes through and the lock follows what was packaged.
    let out = appliance(&["build", "m.toml", "-o", "out.tar"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Updating"), "{}", stderr(&out));
    let relocked = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        relocked.contains(&after) && !relocked.contains(&before),
        "{relocked}"
    );
    std::fs::remove_file(&tarball).unwrap();
    assert!(build(&["--locked"]).status.success());
}
