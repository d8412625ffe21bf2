//! Signing, SBOM, provenance and offline verification, driven as an auditor would: keys from
//! `appliance keygen`, a signed build of the reference fixture, `appliance verify` and
//! `scripts/verify-offline.sh` against the genuine tarball and a matrix of tampered copies,
//! openssl checking the signature, skopeo and podman loading the signed tarball.

use crate::support;
use crate::tamper;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use support::paths::{appliance_bin, shared_fixtures, workspace_root};
use support::run_ok;
use tamper::{Tarball, sha256_hex};

const PASSWORD: &str = "s3cret-pw-8f3a1c9e-do-not-leak";

fn appliance(args: &[&str], cwd: &Path, password: Option<&str>) -> Output {
    let mut cmd = Command::new(appliance_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("APPLIANCE_KEY_PASSWORD")
        .env_remove("COSIGN_PASSWORD")
        .stdin(std::process::Stdio::null());
    if let Some(p) = password {
        cmd.env("APPLIANCE_KEY_PASSWORD", p);
    }
    cmd.output().expect("run appliance")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn keygen(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
    let out = appliance(&["keygen", "--output", prefix], dir, Some(PASSWORD));
    assert!(out.status.success(), "{}", text(&out));
    (
        dir.join(format!("{prefix}.key")),
        dir.join(format!("{prefix}.pub")),
    )
}

fn manifest(dir: &Path, key: &Path) -> PathBuf {
    let model = shared_fixtures().join("models/llama-gqa");
    let text = format!(
        "[image]\nname = \"registry.local/llm/llama-gqa\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
         [model]\npath = \"{}\"\n[signing]\nkey = \"{}\"\n",
        model.display(),
        key.display()
    );
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn signed_build(dir: &Path, key: &Path, output: &str) -> (PathBuf, Output) {
    let m = manifest(dir, key);
    let out = appliance(
        &["build", "--quiet", m.to_str().unwrap(), "--output", output],
        dir,
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", text(&out));
    (dir.join(output), out)
}

fn verify(tar: &Path, key: &Path) -> Output {
    appliance(
        &[
            "verify",
            tar.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        Path::new("/"),
        None,
    )
}

fn verify_offline(tar: &Path, key: &Path) -> Output {
    Command::new("sh")
        .arg(workspace_root().join("scripts/verify-offline.sh"))
        .arg(tar)
        .arg(key)
        .output()
        .unwrap()
}

/// A signed build of the fixture in a fresh directory (each test that needs one builds its own;
/// with nextest every test is its own process anyway).
struct Signed {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    tar: PathBuf,
    public: PathBuf,
}

fn signed() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (key, public) = keygen(&path, "site");
    let (tar, _) = signed_build(&path, &key, "dist/x.tar");
    Signed {
        _dir: dir,
        dir: path,
        tar,
        public,
    }
}

#[test]
fn signed_build_verifies_reproducibly_and_the_signature_is_openssl_compatible() {
    let s = signed();
    let out = verify(&s.tar, &s.public);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "registry.local/llm/llama-gqa:0.1.0",
        "Signed by:",
        "model.safetensors",
        "65532:65532",
        "8000/tcp",
    ] {
        assert!(
            report.contains(expected),
            "{expected} missing from:\n{report}"
        );
    }
    let json_out = appliance(
        &[
            "verify",
            s.tar.to_str().unwrap(),
            "--key",
            s.public.to_str().unwrap(),
            "--json",
        ],
        &s.dir,
        None,
    );
    assert!(json_out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    let t = Tarball::read(&s.tar);
    let index = t.json("index.json");
    assert_eq!(json["manifest_digest"], index["manifests"][0]["digest"]);
    // The fingerprint matches openssl's view of the public key.
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&s.public)
        .output()
        .unwrap();
    assert!(der.status.success());
    assert_eq!(
        json["signer_fingerprint"],
        format!("sha256:{}", sha256_hex(&der.stdout))
    );
    let sidecar_fp = std::fs::read_to_string(s.dir.join("dist/x.tar.pub.sha256")).unwrap();
    assert_eq!(sidecar_fp.trim(), sha256_hex(&der.stdout));

    // The top-level index holds only the image; the signature lives in signatures/index.json.
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let sigs = t.json("signatures/index.json");
    let kinds: Vec<&str> = sigs["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "dev.cosignproject.cosign/image",
            "dev.cosignproject.cosign/sigs",
            "dev.cosignproject.cosign/atts"
        ]
    );

    // openssl verifies the detached signature over the detached payload.
    let sig_der = base64::engine::general_purpose::STANDARD
        .decode(
            std::fs::read_to_string(s.dir.join("dist/x.tar.sig"))
                .unwrap()
                .trim(),
        )
        .unwrap();
    std::fs::write(s.dir.join("sig.der"), &sig_der).unwrap();
    let ossl = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&s.public)
        .arg("-signature")
        .arg(s.dir.join("sig.der"))
        .arg(s.dir.join("dist/x.tar.payload.json"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ossl.stdout).trim(),
        "Verified OK",
        "{}",
        text(&ossl)
    );
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.join("dist/x.tar.payload.json")).unwrap())
            .unwrap();
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        index["manifests"][0]["digest"]
    );
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        "registry.local/llm/llama-gqa"
    );

    // The SBOM lists the model files with their digests and the server's crates.
    let sbom_verified = &json["sbom_components"];
    assert!(sbom_verified.as_u64().unwrap() >= 2);

    // Signed builds are byte-reproducible (RFC 6979 deterministic ECDSA).
    let (again, _) = signed_build(&s.dir, &s.dir.join("site.key"), "dist/y.tar");
    assert_eq!(
        sha256_hex(&std::fs::read(&s.tar).unwrap()),
        sha256_hex(&std::fs::read(&again).unwrap())
    );

    // The offline script reaches the same verdict, given relative paths too.
    let off = Command::new("sh")
        .arg(workspace_root().join("scripts/verify-offline.sh"))
        .args(["dist/x.tar", "site.pub"])
        .current_dir(&s.dir)
        .output()
        .unwrap();
    assert!(off.status.success(), "{}", text(&off));
    assert!(String::from_utf8_lossy(&off.stdout).contains("verify-offline: OK"));

    // An unsigned build over the same output removes the signed build's sidecars: they would
    // describe an image that is no longer there.
    let unsigned = s.dir.join("unsigned.toml");
    let text_of = std::fs::read_to_string(s.dir.join("manifest.toml")).unwrap();
    std::fs::write(&unsigned, &text_of[..text_of.find("[signing]").unwrap()]).unwrap();
    let out = appliance(
        &[
            "build",
            "--quiet",
            "unsigned.toml",
            "--output",
            "dist/y.tar",
        ],
        &s.dir,
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    for suffix in [".payload.json", ".sig", ".pub.sha256"] {
        assert!(s.dir.join(format!("dist/x.tar{suffix}")).is_file());
        assert!(
            !s.dir.join(format!("dist/y.tar{suffix}")).exists(),
            "stale dist/y.tar{suffix} left beside an unsigned tarball"
        );
    }
}

#[test]
fn sbom_and_provenance_describe_the_model_server_and_inputs() {
    let s = signed();
    let t = Tarball::read(&s.tar);
    let sigs = t.json("signatures/index.json");
    let att = &sigs["manifests"][2]["digest"].as_str().unwrap()[7..];
    let att = t.json(&format!("blobs/sha256/{att}"));
    let mut statements = std::collections::BTreeMap::new();
    for layer in att["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], "application/vnd.dsse.envelope.v1+json");
        let env = t.json(&format!(
            "blobs/sha256/{}",
            &layer["digest"].as_str().unwrap()[7..]
        ));
        assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        statements.insert(st["predicateType"].as_str().unwrap().to_string(), st);
    }
    let bom = &statements["https://cyclonedx.org/bom"]["predicate"];
    assert_eq!(bom["specVersion"], "1.6");
    let model = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "machine-learning-model")
        .unwrap();
    let fixture = shared_fixtures().join("models/llama-gqa/model.safetensors");
    let weights = model["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().ends_with("/model.safetensors"))
        .unwrap();
    assert_eq!(weights["hashes"][0]["alg"], "SHA-256");
    assert_eq!(
        weights["hashes"][0]["content"],
        sha256_hex(&std::fs::read(&fixture).unwrap())
    );
    let server = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["bom-ref"] == "server")
        .unwrap();
    let crates = server["components"].as_array().unwrap();
    assert!(
        crates
            .iter()
            .any(|c| c["purl"].as_str().unwrap().starts_with("pkg:cargo/axum@")),
        "{server}"
    );
    assert!(crates.iter().any(|c| {
        c["purl"]
            .as_str()
            .unwrap()
            .starts_with("pkg:cargo/candle-core@")
    }));
    assert!(
        bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "file" && c["name"].as_str().unwrap().contains("libc.so")),
        "userland files missing"
    );

    let prov = &statements["https://slsa.dev/provenance/v1"]["predicate"];
    let deps = prov["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert!(
        deps.iter()
            .any(|d| d["digest"]["sha256"] == weights["hashes"][0]["content"])
    );
    assert!(deps.iter().any(|d| {
        d["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkg:cargo/appliance-server@")
    }));
    assert!(
        prov["buildDefinition"]["externalParameters"]["manifest"]["content"]
            .as_str()
            .unwrap()
            .contains("[signing]")
    );
    assert_eq!(
        prov["runDetails"]["builder"]["version"]["appliance"],
        env!("CARGO_PKG_VERSION")
    );
}

/// Each tampering must fail both verifiers, naming the culprit.
#[test]
fn tamper_matrix_fails_both_verifiers_naming_the_culprit() {
    let s = signed();
    let genuine = Tarball::read(&s.tar);
    let index = genuine.json("index.json");
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let manifest = genuine.json(&format!("blobs/sha256/{manifest_hex}"));
    let config_hex = manifest["config"]["digest"].as_str().unwrap()[7..].to_string();
    let layers: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap()[7..].to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let weights_hex = layers.iter().max_by_key(|l| l.1).unwrap().0.clone();
    let other_hex = layers
        .iter()
        .find(|l| l.0 != weights_hex)
        .unwrap()
        .0
        .clone();
    let sigs = genuine.json("signatures/index.json");
    let sig_hex = sigs["manifests"][1]["digest"].as_str().unwrap()[7..].to_string();
    let att_hex = sigs["manifests"][2]["digest"].as_str().unwrap()[7..].to_string();
    let (_, other_public) = keygen(&s.dir, "other");

    let flip = |t: &mut Tarball, name: &str, at: usize| {
        let mut bytes = t.get(name).to_vec();
        let i = at.min(bytes.len() - 1);
        bytes[i] ^= 0x01;
        t.set(name, bytes);
    };
    type Case = (&'static str, Box<dyn Fn(&mut Tarball)>, String);
    let cases: Vec<Case> = vec![
        (
            "weight layer byte",
            Box::new({
                let h = weights_hex.clone();
                move |t| {
                    let n = t.get(&format!("blobs/sha256/{h}")).len();
                    flip(t, &format!("blobs/sha256/{h}"), n / 2)
                }
            }),
            weights_hex.clone(),
        ),
        (
            "config byte",
            Box::new({
                let h = config_hex.clone();
                move |t| flip(t, &format!("blobs/sha256/{h}"), 40)
            }),
            config_hex.clone(),
        ),
        (
            "manifest byte",
            Box::new({
                let h = manifest_hex.clone();
                move |t| flip(t, &format!("blobs/sha256/{h}"), 30)
            }),
            manifest_hex.clone(),
        ),
        (
            "signature byte (re-hashed)",
            Box::new({
                let h = sig_hex.clone();
                move |t| {
                    let mut m = t.json(&format!("blobs/sha256/{h}"));
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let mut sig = b64
                        .decode(
                            m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
                                .as_str()
                                .unwrap(),
                        )
                        .unwrap();
                    let n = sig.len();
                    sig[n - 3] ^= 0x01;
                    m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] =
                        b64.encode(sig).into();
                    t.replace_and_rehash(&h, serde_json::to_vec(&m).unwrap());
                }
            }),
            "signature manifest".into(),
        ),
        (
            "SBOM byte (re-hashed)",
            Box::new({
                let h = att_hex.clone();
                move |t| {
                    let m = t.json(&format!("blobs/sha256/{h}"));
                    let layer = m["layers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|l| l["annotations"]["predicateType"] == "https://cyclonedx.org/bom")
                        .unwrap();
                    let env_hex = layer["digest"].as_str().unwrap()[7..].to_string();
                    let mut env = t.json(&format!("blobs/sha256/{env_hex}"));
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let mut body = b64.decode(env["payload"].as_str().unwrap()).unwrap();
                    let at = body.windows(7).position(|w| w == b"SHA-256").unwrap() + 22;
                    body[at] = if body[at] == b'0' { b'1' } else { b'0' };
                    env["payload"] = b64.encode(body).into();
                    t.replace_and_rehash(&env_hex, serde_json::to_vec(&env).unwrap());
                }
            }),
            "cyclonedx.org/bom attestation".into(),
        ),
        (
            "layer swapped for another valid blob",
            Box::new({
                let (a, b) = (weights_hex.clone(), other_hex.clone());
                move |t| {
                    let other = t.get(&format!("blobs/sha256/{b}")).to_vec();
                    t.set(&format!("blobs/sha256/{a}"), other);
                }
            }),
            weights_hex.clone(),
        ),
        (
            "extra layer in manifest.json only",
            Box::new({
                let h = other_hex.clone();
                move |t| {
                    let mut d = t.json("manifest.json");
                    d[0]["Layers"]
                        .as_array_mut()
                        .unwrap()
                        .push(format!("blobs/sha256/{h}").into());
                    t.set("manifest.json", serde_json::to_vec(&d).unwrap());
                }
            }),
            "manifest.json".into(),
        ),
        (
            "index.json pointing elsewhere",
            Box::new({
                let h = config_hex.clone();
                move |t| {
                    let mut i = t.json("index.json");
                    let size = t.get(&format!("blobs/sha256/{h}")).len();
                    i["manifests"][0]["digest"] = format!("sha256:{h}").into();
                    i["manifests"][0]["size"] = size.into();
                    t.set("index.json", serde_json::to_vec(&i).unwrap());
                }
            }),
            "index.json".into(),
        ),
        (
            "blob removed",
            Box::new({
                let h = other_hex.clone();
                move |t| t.remove(&format!("blobs/sha256/{h}"))
            }),
            other_hex.clone(),
        ),
    ];
    for (what, tamper, culprit) in &cases {
        let mut t = Tarball::read(&s.tar);
        tamper(&mut t);
        let bad = s.dir.join("tampered.tar");
        t.write(&bad);
        for (tool, out) in [
            ("appliance verify", verify(&bad, &s.public)),
            ("verify-offline.sh", verify_offline(&bad, &s.public)),
        ] {
            assert!(
                !out.status.success(),
                "{tool} accepted a tarball with {what}"
            );
            let msg = String::from_utf8_lossy(&out.stderr);
            assert!(
                msg.contains(culprit.as_str()),
                "{tool}, {what}: expected `{culprit}` in:\n{msg}"
            );
            if tool == "appliance verify" {
                assert_eq!(out.status.code(), Some(1), "{what}");
            }
        }
    }

    // Wrong public key: the genuine tarball fails against another key.
    for out in [
        verify(&s.tar, &other_public),
        verify_offline(&s.tar, &other_public),
    ] {
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("signature manifest"),
            "{}",
            text(&out)
        );
    }

    // A signature made by another key (openssl, over the genuine payload), re-hashed in.
    let other_pem = s.dir.join("other-openssl.pem");
    assert!(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out"
            ])
            .arg(&other_pem)
            .status()
            .unwrap()
            .success()
    );
    let mut t = Tarball::read(&s.tar);
    let mut m = t.json(&format!("blobs/sha256/{sig_hex}"));
    let payload_hex = m["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    std::fs::write(
        s.dir.join("payload"),
        t.get(&format!("blobs/sha256/{payload_hex}")),
    )
    .unwrap();
    let forged = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&other_pem)
        .arg(s.dir.join("payload"))
        .output()
        .unwrap();
    assert!(forged.status.success());
    m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] =
        base64::engine::general_purpose::STANDARD
            .encode(&forged.stdout)
            .into();
    t.replace_and_rehash(&sig_hex, serde_json::to_vec(&m).unwrap());
    let bad = s.dir.join("forged.tar");
    t.write(&bad);
    for out in [verify(&bad, &s.public), verify_offline(&bad, &s.public)] {
        assert!(
            !out.status.success(),
            "a signature from another key was accepted"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("signature manifest"),
            "{}",
            text(&out)
        );
    }

    // Hostile archives: a symlink entry, a `..` path, truncation.
    let mut t = Tarball::read(&s.tar);
    t.entries
        .insert(0, ("../escape".into(), b"x".to_vec(), false));
    let bad = s.dir.join("traversal.tar");
    t.write(&bad);
    let out = verify(&bad, &s.public);
    assert!(
        !out.status.success() && text(&out).contains("../escape"),
        "{}",
        text(&out)
    );
    let bytes = std::fs::read(&s.tar).unwrap();
    let bad = s.dir.join("truncated.tar");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    for out in [verify(&bad, &s.public), verify_offline(&bad, &s.public)] {
        assert!(!out.status.success(), "a truncated archive was accepted");
        assert!(
            text(&out).contains("truncated")
                || text(&out).contains("Unexpected EOF")
                || text(&out).contains("unreadable"),
            "{}",
            text(&out)
        );
    }
    let mut link = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    link.append_link(&mut h, "index.json", "/etc/passwd")
        .unwrap();
    let bad = s.dir.join("symlink.tar");
    std::fs::write(&bad, link.into_inner().unwrap()).unwrap();
    let out = verify(&bad, &s.public);
    assert!(
        !out.status.success() && text(&out).contains("is a link"),
        "{}",
        text(&out)
    );
}

#[test]
fn wrong_password_fails_clearly_and_secrets_never_reach_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "site");
    let m = manifest(dir.path(), &key);
    let out = appliance(
        &["build", m.to_str().unwrap(), "--output", "dist/w.tar"],
        dir.path(),
        Some("not-the-password"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Wrong password"), "{}", text(&out));
    assert!(!text(&out).contains("not-the-password"));
    assert!(!dir.path().join("dist/w.tar").exists() && !dir.path().join("dist/w.tar.sig").exists());
    // No password and no terminal: a clear error, not a hang.
    let out = appliance(&["build", m.to_str().unwrap()], dir.path(), None);
    assert!(
        !out.status.success() && text(&out).contains("APPLIANCE_KEY_PASSWORD"),
        "{}",
        text(&out)
    );
    // COSIGN_PASSWORD works too, and nothing anywhere holds the password.
    let build = Command::new(appliance_bin())
        .args(["build", m.to_str().unwrap(), "--output", "dist/ok.tar"])
        .current_dir(dir.path())
        .env_remove("APPLIANCE_KEY_PASSWORD")
        .env("COSIGN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let verified = verify(&dir.path().join("dist/ok.tar"), &public);
    assert!(verified.status.success(), "{}", text(&verified));
    let mut outputs = vec![build.stdout, build.stderr, verified.stdout, verified.stderr];
    for entry in std::fs::read_dir(dir.path().join("dist")).unwrap() {
        outputs.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    outputs.push(std::fs::read(&public).unwrap());
    for bytes in &outputs {
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password leaked"
        );
    }
    // Keygen refuses to overwrite, and the private key is 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = appliance(&["keygen", "--output", "site"], dir.path(), Some(PASSWORD));
    assert!(!again.status.success() && text(&again).contains("already exists"));
}

#[test]
fn a_key_in_cosign_format_made_by_independent_tools_loads() {
    // cosign is not packaged for Debian 12: build the key file the way cosign's Go code does
    // (PKCS#8 from openssl, scrypt from Python's hashlib, NaCl secretbox from libsodium via
    // PyNaCl) and sign with it.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("k.pem");
    let pk8 = dir.path().join("k.pk8");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out"
            ])
            .arg(&pem)
            .status()
            .unwrap()
            .success()
    );
    // PKCS#8 DER, as Go's x509.MarshalPKCS8PrivateKey writes it.
    assert!(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&pk8)
            .status()
            .unwrap()
            .success()
    );
    let script = r#"
import base64, hashlib, json, os, sys
import nacl.secret
der = open(sys.argv[1], "rb").read()
salt, nonce = os.urandom(32), os.urandom(24)
key = hashlib.scrypt(sys.argv[2].encode(), salt=salt, n=65536, r=8, p=1, dklen=32, maxmem=256 << 20)
ct = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
body = json.dumps({"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": base64.b64encode(salt).decode()},
                   "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
                   "ciphertext": base64.b64encode(ct).decode()}, separators=(",", ":")).encode()
b = base64.b64encode(body).decode()
print("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
for i in range(0, len(b), 64): print(b[i:i+64])
print("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&pk8)
        .arg(PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 with PyNaCl (scripts/install-test-deps): {}",
        text(&out)
    );
    let key = dir.path().join("cosign.key");
    std::fs::write(&key, &out.stdout).unwrap();
    let public = dir.path().join("cosign.pub");
    assert!(
        Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-pubout", "-in"])
            .arg(&pk8)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success()
    );
    let (tar, _) = signed_build(dir.path(), &key, "dist/c.tar");
    let out = verify(&tar, &public);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn skopeo_and_podman_accept_a_signed_tarball() {
    let s = signed();
    for transport in ["docker-archive", "oci-archive"] {
        let inspect = support::skopeo_inspect(&format!("{transport}:{}", s.tar.display()));
        assert_eq!(inspect["Architecture"], "amd64", "{transport}");
    }
    let (_podman, loaded) = support::podman_load(&s.tar);
    assert_eq!(
        loaded.len(),
        1,
        "podman loaded the signature manifests as images: {loaded:?}"
    );
    let docker = support::Dockerd::start();
    docker.load(&s.tar, "registry.local/llm/llama-gqa:0.1.0");
    let inspect = docker.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        "registry.local/llm/llama-gqa:0.1.0",
    ]);
    assert_eq!(inspect.trim(), "65532:65532");
}

/// `verify` without `--key`: every integrity check, the report says plainly that the signer is
/// unknown, and the exit status (3) tells scripts "intact, signer unknown" from "broken" (1).
#[test]
fn without_a_key_verify_checks_integrity_says_the_signer_is_unknown_and_exits_3() {
    let s = signed();
    let no_key = |tar: &Path| appliance(&["verify", tar.to_str().unwrap()], Path::new("/"), None);
    let out = no_key(&s.tar);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("Intact:") && report.contains("NOT CHECKED"),
        "{report}"
    );
    assert!(report.contains("match the image's labels"), "{report}");
    assert!(report.contains("NOT verified (no key given)"), "{report}");
    let json = appliance(
        &["verify", s.tar.to_str().unwrap(), "--json"],
        Path::new("/"),
        None,
    );
    assert_eq!(json.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["signature"], "not-checked");
    assert_eq!(json["signer_fingerprint"], "");
    // With the key the same tarball is verified, exit 0.
    let out = verify(&s.tar, &s.public);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified:"));

    // The weights layer, from the config's history.
    let t = Tarball::read(&s.tar);
    let index = t.json("index.json");
    let manifest = t.json(&format!(
        "blobs/sha256/{}",
        &index["manifests"][0]["digest"].as_str().unwrap()[7..]
    ));
    let config_hex = manifest["config"]["digest"].as_str().unwrap()[7..].to_string();
    let config = t.json(&format!("blobs/sha256/{config_hex}"));
    let at = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["empty_layer"] != true)
        .position(|h| h["created_by"].as_str().unwrap().contains("weights"))
        .unwrap();
    let weights_hex = manifest["layers"][at]["digest"].as_str().unwrap()[7..].to_string();

    // A flipped byte: broken, exit 1, the blob named, key or not.
    let mut flipped = Tarball::read(&s.tar);
    let mut bytes = flipped.get(&format!("blobs/sha256/{weights_hex}")).to_vec();
    let last = bytes.len() - 2000;
    bytes[last] ^= 1;
    flipped.set(&format!("blobs/sha256/{weights_hex}"), bytes.clone());
    let bad = s.dir.join("flipped.tar");
    flipped.write(&bad);
    let out = no_key(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&weights_hex), "{}", text(&out));

    // A forger's rewrite of the weights with every digest re-pointed (layer, diff_id, config,
    // manifest) but the labels left alone: the labels name the file.
    let mut forged = Tarball::read(&s.tar);
    let new_hex = forged.replace_and_rehash(&weights_hex, bytes);
    let mut config_text = String::from_utf8(
        forged
            .get(&format!("blobs/sha256/{}", forged_config(&forged)))
            .to_vec(),
    )
    .unwrap();
    config_text = config_text.replace(&weights_hex, &new_hex);
    let config_now = forged_config(&forged);
    let config_new = forged.replace_and_rehash(&config_now, config_text.into_bytes());
    let docker = String::from_utf8(forged.get("manifest.json").to_vec())
        .unwrap()
        .replace(&weights_hex, &new_hex)
        .replace(&config_now, &config_new);
    forged.set("manifest.json", docker.into_bytes());
    let bad = s.dir.join("forged.tar");
    forged.write(&bad);
    let out = no_key(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("models/llama-gqa/model.safetensors") && err.contains("appliance.model.files"),
        "{err}"
    );

    // An unsigned image: intact, exit 3, "not signed"; with a key it is a failure.
    let dir = tempfile::tempdir().unwrap();
    let model = shared_fixtures().join("models/llama-gqa");
    let m = dir.path().join("m.toml");
    std::fs::write(
        &m,
        format!(
            "[image]\nname = \"registry.local/llm/llama-gqa\"\ntag = \"0.1.0\"\n[model]\npath = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    let out = appliance(
        &["build", "--quiet", m.to_str().unwrap(), "-o", "u.tar"],
        dir.path(),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let unsigned = dir.path().join("u.tar");
    let out = no_key(&unsigned);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NONE: the image is not signed"));
    let out = verify(&unsigned, &s.public);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not signed"), "{}", text(&out));
}

/// The image config's digest (hex) as the index and manifest now point to it.
fn forged_config(t: &Tarball) -> String {
    let index = t.json("index.json");
    let manifest = t.json(&format!(
        "blobs/sha256/{}",
        &index["manifests"][0]["digest"].as_str().unwrap()[7..]
    ));
    manifest["config"]["digest"].as_str().unwrap()[7..].to_string()
}

/// Any single changed byte anywhere in a signed tarball fails `verify`: 200 positions drawn by
/// proptest, three in four from the bytes outside the big blobs' contents (tar headers, padding,
/// documents, signatures, the end-of-archive marker), where a reader is most tempted to look
/// away, and one in four from the whole file. The byte is changed in place and put back. The
/// image packs a stripped copy of the debug server (22 MB instead of 300), so the 200 verifies
/// take seconds, not minutes.
#[test]
fn any_changed_byte_anywhere_fails_verify() {
    use proptest::prelude::*;
    use std::os::unix::fs::FileExt;

    let s = signed();
    let stripped = s.dir.join("appliance-server");
    std::fs::copy(support::server_bin(), &stripped).unwrap();
    let out = Command::new("strip").arg(&stripped).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = manifest(&s.dir, &s.dir.join("site.key"));
    let mut toml = std::fs::read_to_string(&m).unwrap();
    toml.push_str(&format!("[server]\nbinary = \"{}\"\n", stripped.display()));
    std::fs::write(&m, toml).unwrap();
    let out = appliance(
        &[
            "build",
            "--quiet",
            m.to_str().unwrap(),
            "--output",
            "small.tar",
        ],
        &s.dir,
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", text(&out));
    let tar = s.dir.join("small.tar");
    let text = std::fs::read_to_string(&s.public).unwrap();
    let key = appliance::sign::keys::parse_public("site.pub", &text).unwrap();
    let against = appliance::verify::Against {
        key: Some(&key),
        ..Default::default()
    };
    appliance::verify::verify(&tar, &against).expect("the genuine tarball verifies");

    // Every offset outside the data of entries over 64 KiB.
    let len = std::fs::metadata(&tar).unwrap().len();
    let mut small: Vec<u64> = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut at = 0;
    for entry in archive.entries_with_seek().unwrap() {
        let entry = entry.unwrap();
        let (data, size) = (entry.raw_file_position(), entry.size());
        let end = data + size.div_ceil(512) * 512;
        if size > 64 << 10 {
            small.extend(at..data); // its header
            small.extend(data + size..end); // its padding
        } else {
            small.extend(at..end);
        }
        at = end;
    }
    small.extend(at..len); // the end-of-archive marker
    assert!(small.len() > 10_000, "{}", small.len());

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tar)
        .unwrap();
    let position = prop_oneof![1 => 0..len, 3 => proptest::sample::select(small)];
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&(position, 1u8..=255), |(pos, xor)| {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, pos).unwrap();
            file.write_all_at(&[byte[0] ^ xor], pos).unwrap();
            let result = appliance::verify::verify(&tar, &against);
            file.write_all_at(&byte, pos).unwrap();
            prop_assert!(
                result.is_err(),
                "byte {pos} of {len} changed ({:#04x} -> {:#04x}) and verify passed",
                byte[0],
                byte[0] ^ xor
            );
            Ok(())
        })
        .unwrap();
    appliance::verify::verify(&tar, &against).expect("every byte was put back");
}

/// `appliance push` with only the environment given: no auth file or password from the
/// machine running the tests can leak in.
fn push(args: &[&str], home: &Path, envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(appliance_bin());
    cmd.arg("push")
        .args(args)
        .env("HOME", home)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_CONFIG")
        .env_remove("APPLIANCE_REGISTRY_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (name, value) in envs {
        cmd.env(name, value);
    }
    cmd.output().expect("run appliance push")
}

fn push_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn outcomes(report: &serde_json::Value) -> Vec<String> {
    let mut all: Vec<String> = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["outcome"].as_str().unwrap().to_string())
        .collect();
    all.dedup();
    all
}

use support::registry::{Auth, PASSWORD as REG_PASSWORD, Registry, USER};

/// A signed build, a registry with `auth`, and an empty home for `push` to run in.
fn pushing(auth: Auth) -> (Signed, Registry, PathBuf) {
    let s = signed();
    let reg = Registry::start(auth);
    let home = s.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    (s, reg, home)
}

fn image_digest(tar: &Path) -> String {
    Tarball::read(tar).json("index.json")["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn push_puts_the_image_and_its_cosign_signature_into_a_registry_with_basic_auth() {
    let (s, reg, home) = pushing(Auth::Htpasswd);
    let tar = s.tar.to_str().unwrap();
    let certs = reg.cert_dir.to_str().unwrap();
    let target = format!("{}/llm/llama-gqa", reg.host);
    let creds = format!("{USER}:{REG_PASSWORD}");
    let mut outputs = Vec::new();

    // Refusals first: each names what is wrong and pushes nothing.
    let out = push(&[tar, &target, "--cert-dir", certs], &home, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("asks for credentials"),
        "{}",
        text(&out)
    );
    let out = push(
        &[
            tar,
            &target,
            "--cert-dir",
            certs,
            "--creds",
            "site-admin:nope-7f3e2a",
        ],
        &home,
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused the credentials from --creds"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("nope-7f3e2a"), "{}", text(&out));
    let out = push(&[tar, &target, "--creds", &creds], &home, &[]);
    assert!(
        !out.status.success(),
        "a self-signed registry must not be trusted by default"
    );
    assert!(
        text(&out).to_lowercase().contains("certificate") || text(&out).contains("Issuer"),
        "{}",
        text(&out)
    );
    outputs.push(out);
    assert_eq!(
        reg.blob_uploads(),
        0,
        "a refused push uploaded something:\n{}",
        reg.log()
    );

    let args = [
        tar,
        &target,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
        "--json",
    ];
    let out = push(&args, &home, &[]);
    let report = push_json(&out);
    outputs.push(out);
    let digest = image_digest(&s.tar);
    assert_eq!(report["digest"], digest);
    assert_eq!(
        report["reference"],
        format!("{target}:0.1.0"),
        "the image's own tag"
    );
    assert_eq!(report["pinned"], format!("{target}@{digest}"));
    assert_eq!(outcomes(&report), ["uploaded"]);
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(report["signature_tag"], format!("sha256-{hex}.sig"));
    assert_eq!(report["attestation_tag"], format!("sha256-{hex}.att"));
    let uploads = reg.blob_uploads();
    assert!(uploads >= report["blobs"].as_array().unwrap().len());

    // skopeo, an independent client, sees the tarball's manifest digest by tag.
    assert_eq!(reg.skopeo_digest(&format!("{target}:0.1.0")), digest);
    let skopeo = support::tools::require_tool("skopeo");

    // Copied back out of the registry, every blob is the tarball's, byte for byte
    // (`--preserve-digests`: skopeo would otherwise compress the uncompressed layers).
    let copy = s.dir.join("copy.tar");
    run_ok(
        Command::new(&skopeo)
            .args(["copy", "--quiet", "--preserve-digests"])
            .args(["--src-cert-dir", certs, "--src-creds", &creds])
            .arg(format!("docker://{target}@{digest}"))
            .arg(format!("oci-archive:{}", copy.display())),
        std::time::Duration::from_secs(300),
    );
    let original = Tarball::read(&s.tar);
    let copied = Tarball::read(&copy);
    let copied_blobs: Vec<&String> = copied
        .entries
        .iter()
        .filter(|(name, _, _)| name.starts_with("blobs/sha256/"))
        .map(|(name, _, _)| name)
        .collect();
    let manifest = original.json(&format!("blobs/sha256/{hex}"));
    assert_eq!(
        copied_blobs.len(),
        2 + manifest["layers"].as_array().unwrap().len()
    );
    for name in copied_blobs {
        assert_eq!(
            copied.get(name),
            original.get(name),
            "{name} differs from the tarball's"
        );
    }

    // The signature is where cosign looks, and openssl checks it with the site's key.
    let sig_manifest: serde_json::Value = serde_json::from_slice(&reg.get(
        &format!("/v2/llm/llama-gqa/manifests/sha256-{hex}.sig"),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let layer = &sig_manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = reg.get(
        &format!(
            "/v2/llm/llama-gqa/blobs/{}",
            layer["digest"].as_str().unwrap()
        ),
        "*/*",
    );
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    let signature = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    std::fs::write(s.dir.join("payload"), &payload).unwrap();
    std::fs::write(s.dir.join("payload.sig"), &signature).unwrap();
    let verified = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&s.public)
            .arg("-signature")
            .arg(s.dir.join("payload.sig"))
            .arg(s.dir.join("payload")),
        std::time::Duration::from_secs(60),
    );
    assert!(verified.contains("Verified OK"), "{verified}");
    let att_manifest: serde_json::Value = serde_json::from_slice(&reg.get(
        &format!("/v2/llm/llama-gqa/manifests/sha256-{hex}.att"),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let att_layers = att_manifest["layers"].as_array().unwrap();
    assert!(att_layers.len() >= 2, "SBOM and provenance: {att_manifest}");
    assert!(
        att_layers
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.dsse.envelope.v1+json")
    );

    // A second push sends no blob, and says so (here trusting the registry blindly, as
    // `--tls-verify=false` asks).
    let out = push(
        &[
            tar,
            &target,
            "--tls-verify=false",
            "--creds",
            &creds,
            "--json",
        ],
        &home,
        &[],
    );
    let again = push_json(&out);
    outputs.push(out);
    assert_eq!(outcomes(&again), ["present"]);
    assert_eq!(again["uploaded_bytes"], 0);
    assert_eq!(again["digest"], digest);
    assert_eq!(
        reg.blob_uploads(),
        uploads,
        "the second push uploaded a blob"
    );

    for out in &outputs {
        assert!(
            !text(out).contains(REG_PASSWORD),
            "the password leaked: {}",
            text(out)
        );
    }
}

#[test]
fn push_signs_in_with_bearer_tokens_from_an_auth_file_uploads_in_chunks_and_mounts() {
    let (s, reg, home) = pushing(Auth::Token);
    let tar = s.tar.to_str().unwrap();
    let certs = reg.cert_dir.to_str().unwrap();
    let auth_file = s.dir.join("auth.json");
    let write_auth = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        std::fs::write(
            &auth_file,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
        )
        .unwrap();
    };

    write_auth("wrong-4c2d");
    let a = format!("{}/llm/a:rc1", reg.host);
    let out = push(
        &[tar, &a, "--cert-dir", certs],
        &home,
        &[("REGISTRY_AUTH_FILE", &auth_file)],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused the credentials from `"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("auth.json"), "{}", text(&out));

    write_auth(REG_PASSWORD);
    let out = push(
        &[
            tar,
            &a,
            "--cert-dir",
            certs,
            "--chunk-size",
            "1MiB",
            "--json",
        ],
        &home,
        &[("REGISTRY_AUTH_FILE", &auth_file)],
    );
    let report = push_json(&out);
    assert!(!text(&out).contains(REG_PASSWORD));
    let digest = image_digest(&s.tar);
    assert_eq!(report["digest"], digest);
    assert_eq!(report["reference"], a);
    assert_eq!(outcomes(&report), ["uploaded"]);
    let patches = reg
        .log()
        .matches("\"PATCH /v2/llm/a/blobs/uploads/")
        .count();
    assert!(
        patches > report["blobs"].as_array().unwrap().len(),
        "the server layer is several MiB: chunked uploads send it in several PATCHes ({patches})"
    );
    assert!(
        reg.token_requests
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("repository:llm/a:pull,push")),
        "{:?}",
        reg.token_requests.lock().unwrap()
    );
    assert_eq!(reg.skopeo_digest(&a), digest);

    // Another repository of the same registry: every blob is mounted, none re-sent.
    let uploads = reg.blob_uploads();
    let b = format!("{}/llm/b", reg.host);
    let out = push(
        &[
            tar,
            &b,
            "--cert-dir",
            certs,
            "--mount-from",
            "llm/a",
            "--json",
        ],
        &home,
        &[("REGISTRY_AUTH_FILE", &auth_file)],
    );
    let report = push_json(&out);
    assert_eq!(outcomes(&report), ["mounted"]);
    assert_eq!(report["uploaded_bytes"], 0);
    assert_eq!(reg.blob_uploads(), uploads);
    assert!(
        reg.token_requests.lock().unwrap().iter().any(
            |s| s.contains("repository:llm/a:pull") && s.contains("repository:llm/b:pull,push")
        ),
        "{:?}",
        reg.token_requests.lock().unwrap()
    );
}

/// A push killed halfway resumes: the blobs the registry completed are not sent again.
#[test]
fn an_interrupted_push_resumes_without_resending_completed_blobs() {
    let (s, reg, home) = pushing(Auth::Htpasswd);
    let target = format!("{}/llm/resume", reg.host);
    let creds = format!("{USER}:{REG_PASSWORD}");
    let args = [
        s.tar.to_str().unwrap(),
        &target,
        "--cert-dir",
        reg.cert_dir.to_str().unwrap(),
        "--creds",
        &creds,
        "--json",
    ];
    // Small chunks make the large server layer take many requests: time to cut it off.
    let mut child = Command::new(appliance_bin())
        .arg("push")
        .args(args)
        .args(["--chunk-size", "64KiB"])
        .env("HOME", &home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while reg.blobs_completed() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no blob completed:\n{}",
            reg.log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it was cut off"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let completed = reg.blobs_completed();

    let out = push(&args, &home, &[]);
    let report = push_json(&out);
    let present = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["outcome"] == "present")
        .count();
    assert_eq!(present, completed, "{report}");
    assert!(
        outcomes(&report).contains(&"uploaded".to_string()),
        "{report}"
    );
    assert_eq!(
        reg.skopeo_digest(&format!("{target}:0.1.0")),
        image_digest(&s.tar)
    );
}

/// The bytes the flipped-byte property found passing verify, each flipped on purpose: parts of a
/// tar header's checksum field that tar readers parse leniently (a leading `0` read as a space,
/// the NUL after the digits turned into a space), a media type's case in
/// `signatures/index.json` and `index.json`, and an outer entry's mtime re-checksummed by a
/// forger. Each passed verify before the documents and headers were required to be exactly
/// what appliance writes.
#[test]
fn bytes_no_digest_covers_still_fail_verify() {
    use std::os::unix::fs::FileExt;
    let s = signed();
    let text = std::fs::read_to_string(&s.public).unwrap();
    let key = appliance::sign::keys::parse_public("site.pub", &text).unwrap();
    let against = appliance::verify::Against {
        key: Some(&key),
        ..Default::default()
    };
    appliance::verify::verify(&s.tar, &against).expect("the genuine tarball verifies");

    // name → (header offset, data offset, size)
    let mut entries = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&s.tar).unwrap());
    for entry in archive.entries_with_seek().unwrap() {
        let entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().to_string();
        let at = (
            entry.raw_header_position(),
            entry.raw_file_position(),
            entry.size(),
        );
        entries.insert(name, at);
    }
    let bytes = std::fs::read(&s.tar).unwrap();
    let find = |name: &str, needle: &[u8]| -> u64 {
        let (_, data, size) = entries[name];
        let doc = &bytes[data as usize..(data + size) as usize];
        data + doc.windows(needle.len()).position(|w| w == needle).unwrap() as u64
    };
    let index_json = entries["index.json"].0;
    // The checksum field (bytes 148..156): `0` digits then NUL, as the tar crate writes it.
    let field = &bytes[index_json as usize + 148..index_json as usize + 156];
    assert_eq!(field[0], b'0', "{field:?}");
    let nul = 148 + field.iter().position(|&b| b == 0).unwrap() as u64;
    let mut cases: Vec<(&str, Vec<(u64, u8)>)> = vec![
        (
            "checksum field: leading 0 as a space",
            vec![(index_json + 148, b' ')],
        ),
        (
            "checksum field: its NUL as a space",
            vec![(index_json + nul, b' ')],
        ),
        (
            "signatures/index.json: a media type's case",
            vec![(
                find(
                    "signatures/index.json",
                    b"application/vnd.oci.image.manifest",
                ) + 6,
                b'T',
            )],
        ),
        (
            "index.json: a media type's case",
            vec![(find("index.json", b"application/vnd.oci.image.") + 6, b'T')],
        ),
    ];
    // A forger's mtime: one digit of the oci-layout header's mtime, checksum recomputed.
    let layout = entries["oci-layout"].0 as usize;
    let mut header = tar::Header::from_byte_slice(&bytes[layout..layout + 512]).clone();
    header.set_mtime(header.mtime().unwrap() + 1);
    header.set_cksum();
    let forged: Vec<(u64, u8)> = header
        .as_bytes()
        .iter()
        .enumerate()
        .filter(|(i, b)| bytes[layout + i] != **b)
        .map(|(i, b)| ((layout + i) as u64, *b))
        .collect();
    cases.push(("oci-layout's mtime, re-checksummed", forged));

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.tar)
        .unwrap();
    for (what, changes) in &cases {
        assert!(!changes.is_empty(), "{what}");
        for &(at, byte) in changes {
            assert_ne!(bytes[at as usize], byte, "{what}: no change at {at}");
            file.write_all_at(&[byte], at).unwrap();
        }
        let result = appliance::verify::verify(&s.tar, &against);
        for &(at, _) in changes {
            file.write_all_at(&bytes[at as usize..at as usize + 1], at)
                .unwrap();
        }
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{what}: verify passed"));
        eprintln!("{what}: {err}");
    }
    appliance::verify::verify(&s.tar, &against).expect("restored, it verifies again");
}
