//! The CUDA variant without a GPU: the image built from `manifests/demo-cuda.toml` has a complete
//! userland (every NEEDED library resolves inside the rootfs except the driver's, which must not
//! be packed), the launcher explains a missing driver, the toolkit's stub, an old driver and a
//! missing GPU, and `--version`/`healthcheck` reach the server through it.
//!
//! The CUDA build itself is `scripts/build-cuda-server`, which `scripts/test` runs first (a cold
//! build takes ~12 minutes on 2 cores, so no test starts it). Driver behaviour is exercised with
//! two kinds of `libcuda.so.1`: the toolkit's link stub that the build script makes (every call
//! returns CUDA_ERROR_STUB_LIBRARY), and stand-in drivers compiled here from the stub's source
//! with a few functions answering like an old driver or a GPU-less host. What needs a real GPU
//! is `scripts/gpu-smoke`.

use crate::support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use appliance::userland::host::HostResolver;
use support::{
    Dockerd, appliance_bin, cuda_built, hardened_run, require_tool, run_with_timeout,
    shared_fixtures, skopeo_inspect_config, umoci_unpack,
};

const TIMEOUT: Duration = Duration::from_secs(300);

fn cuda_server() -> PathBuf {
    cuda_built("appliance-server")
}

fn cuda_launcher() -> PathBuf {
    cuda_built("appliance-launcher")
}

/// The link stub `libcuda.so` and its generated C source.
fn stub_dir() -> PathBuf {
    let root = std::env::var_os("APPLIANCE_CUDA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/appliance-ci/cuda"));
    let dir = root.join("nvidia/cu13/lib/stubs");
    assert!(
        dir.join("libcuda.so").is_file() && dir.join("libcuda-stub.c").is_file(),
        "no libcuda link stub in {}: run scripts/build-cuda-server",
        dir.display()
    );
    dir
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A stand-in `libcuda.so.1` in `dir`: the stub's 500-odd functions (a CUDA binary is linked
/// with immediate binding, so all must exist), with `overrides` (C definitions) replacing theirs.
fn fake_driver(dir: &Path, overrides: &[(&str, &str)]) -> PathBuf {
    let stub = std::fs::read_to_string(stub_dir().join("libcuda-stub.c")).unwrap();
    let mut source: String = stub
        .lines()
        .filter(|line| {
            !overrides
                .iter()
                .any(|(name, _)| line.starts_with(&format!("int {name}(")))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    for (_, body) in overrides {
        source.push_str(body);
        source.push('\n');
    }
    std::fs::create_dir_all(dir).unwrap();
    let c = dir.join("fake.c");
    std::fs::write(&c, source).unwrap();
    let out = run_with_timeout(
        Command::new("gcc")
            .args([
                "-std=gnu89",
                "-shared",
                "-fPIC",
                "-Wl,-soname,libcuda.so.1",
                "-o",
            ])
            .arg(dir.join("libcuda.so.1"))
            .arg(&c),
        TIMEOUT,
    );
    assert!(out.status.success(), "gcc failed: {}", text(&out));
    dir.to_path_buf()
}

const OLD_DRIVER: &[(&str, &str)] = &[(
    "cuDriverGetVersion",
    "int cuDriverGetVersion(int *v) { *v = 12040; return 0; }",
)];
const NO_GPU: &[(&str, &str)] = &[
    (
        "cuDriverGetVersion",
        "int cuDriverGetVersion(int *v) { *v = 13000; return 0; }",
    ),
    ("cuInit", "int cuInit(unsigned f) { return 100; }"),
];

/// The launcher with `args`, the CUDA server beside it, and `libcuda.so.1` from `lib_dir`.
fn launch(lib_dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(cuda_launcher());
    cmd.args(args)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("APPLIANCE_DEVICE")
        .env("APPLIANCE_LAUNCHER_SERVER", cuda_server());
    if let Some(dir) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    run_with_timeout(&mut cmd, TIMEOUT)
}

#[test]
fn launcher_names_an_old_driver_and_a_missing_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let old = fake_driver(&tmp.path().join("old"), OLD_DRIVER);
    let no_gpu = fake_driver(&tmp.path().join("nogpu"), NO_GPU);

    // Seed 002: the driver is older than the CUDA the server was built with. Both versions and
    // the driver to install are in the message.
    let out = launch(Some(&old), &["--device", "cuda"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for needle in ["too old", "CUDA 12.4", "CUDA 13.0", ">= 580.65.06"] {
        assert!(err.contains(needle), "missing {needle:?}: {}", text(&out));
    }

    let out = launch(Some(&no_gpu), &["--device", "cuda"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains("no GPU is visible"), "{}", text(&out));
    assert!(err.contains("--gpus all"), "{}", text(&out));

    // `--version` never asks the driver: even an unusable one lets the server answer.
    let out = launch(Some(&no_gpu), &["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("appliance-server ") && version.contains("cuda"),
        "{}",
        text(&out)
    );

    // The server's own check, for when it is started without the launcher.
    let model = shared_fixtures().join("models/llama-gqa");
    let serve = |lib: &Path, device: &str| {
        run_with_timeout(
            Command::new(cuda_server())
                .args(["--model", model.to_str().unwrap(), "--device", device])
                .args(["--host", "127.0.0.1", "--port", "1"])
                .env("LD_LIBRARY_PATH", lib)
                .env_remove("APPLIANCE_DEVICE"),
            TIMEOUT,
        )
    };
    let out = serve(&old, "cuda");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    for needle in [
        "--device cuda",
        "too old",
        "CUDA 12.4",
        "CUDA 13.0",
        "580.65.06",
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {}", text(&out));
    }
    let out = serve(&no_gpu, "cuda");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("no GPU is visible") && err.contains("CUDA_ERROR_NO_DEVICE"),
        "{}",
        text(&out)
    );

    // `--device auto` without a usable GPU serves on the CPU and says so, in the launcher and in
    // the server: never a silent fallback.
    let port = support::free_port().to_string();
    let log = tmp.path().join("auto.log");
    let mut child = Command::new(cuda_launcher())
        .args(["--model", model.to_str().unwrap(), "--device", "auto"])
        .args(["--host", "127.0.0.1", "--port", &port])
        .env("LD_LIBRARY_PATH", &no_gpu)
        .env("APPLIANCE_LAUNCHER_SERVER", cuda_server())
        .env_remove("APPLIANCE_DEVICE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ready = support::wait_for_http(&format!("http://127.0.0.1:{port}/ready"), TIMEOUT);
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(ready, "not ready on the CPU:\n{logs}");
    assert!(
        logs.contains("appliance-launcher: warning: cuInit failed with CUDA_ERROR_NO_DEVICE")
            && logs.contains("--device auto will use the CPU"),
        "{logs}"
    );
    assert!(
        logs.contains("--device auto: CUDA is not usable, serving on the CPU: no GPU is visible"),
        "{logs}"
    );
}

/// Every regular file under `root` that starts with the ELF magic, as an image path.
fn elf_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let mut magic = [0u8; 4];
                let is_elf = std::fs::File::open(&path)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                if is_elf {
                    let rel = path.strip_prefix(root).unwrap();
                    found.push(format!("/{}", rel.display()));
                }
            }
        }
    }
    found.sort();
    found
}

/// `chroot rootfs ARGS` with exactly the image's Env (plus `extra_env`), like a container start.
fn in_rootfs(
    rootfs: &Path,
    image_env: &[String],
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    // Absolute: the cleared environment has no PATH to find it with.
    let mut cmd = Command::new(require_tool("chroot"));
    cmd.arg(rootfs).args(args).env_clear();
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, TIMEOUT)
}

#[test]
fn cuda_image_has_a_complete_userland_and_a_launcher_that_explains_the_driver() {
    let tmp = tempfile::tempdir().unwrap();
    // The shipped manifest, pointed at wherever the CUDA build is.
    let (tarball, out) = support::builder::build_demo_cuda(tmp.path(), &cuda_server(), &["--json"]);
    assert!(out.status.success(), "build failed: {}", text(&out));
    eprintln!(
        "CUDA image: {} bytes",
        std::fs::metadata(&tarball).unwrap().len()
    );

    // Config: launcher first, NVIDIA toolkit variables, CUDA labels from the binary's build info.
    let config = skopeo_inspect_config(&format!("oci-archive:{}", tarball.display()));
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/appliance-launcher"])
    );
    let env: Vec<String> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for want in [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "APPLIANCE_DEVICE=cuda",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
    }
    // The libraries are found through the server's RUNPATH, not an env var a user could clobber.
    assert!(
        !env.iter().any(|e| e.starts_with("LD_LIBRARY_PATH=")),
        "{env:?}"
    );
    let labels = &c["Labels"];
    assert_eq!(labels["appliance.cuda.version"], "13.0", "{labels}");
    assert_eq!(labels["appliance.cuda.compute_capabilities"], "80");
    assert_eq!(labels["appliance.cuda.min_driver"], "580.65.06");
    assert_eq!(labels["appliance.server.device"], "cuda");
    assert!(
        labels["appliance.server.features"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|f| f == "cuda")
    );

    let unpacked = umoci_unpack(&tarball, false);
    let rootfs = &unpacked.rootfs;

    // No driver library is packed: the toolkit injects the node's, and a copy (or the link stub)
    // would shadow it.
    let elves = elf_files(rootfs);
    for path in &elves {
        let name = path.rsplit('/').next().unwrap();
        assert!(
            !name.starts_with("libcuda.so") && !name.starts_with("libnvidia-"),
            "driver library packed: {path}"
        );
    }
    for lib in [
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcurand.so.10",
        "libcudart.so.13",
    ] {
        assert!(
            elves.iter().any(|p| p.ends_with(&format!("/{lib}"))),
            "{lib} missing from the rootfs: {elves:#?}"
        );
    }

    // Every NEEDED library of every packed ELF resolves inside the rootfs, the loader's way,
    // except the injected driver library.
    let resolver = HostResolver::new(rootfs);
    let mut skipped = BTreeSet::new();
    for path in &elves {
        let closure = resolver
            .resolve(&[PathBuf::from(path)])
            .unwrap_or_else(|e| panic!("{path} does not resolve inside the rootfs: {e}"));
        skipped.extend(closure.skipped.into_iter().map(|s| s.soname));
    }
    assert_eq!(
        skipped,
        BTreeSet::from(["libcuda.so.1".to_string()]),
        "only the driver may be left to the container runtime"
    );
    // And by the tests' own loader replay, which shares no code with the builder.
    let checked = support::elf::assert_rootfs_loads(rootfs, &env);
    assert!(
        checked.iter().any(|p| p.ends_with("/libcublasLt.so.13")),
        "{checked:?}"
    );

    // The real loader agrees: with no libcuda.so.1 the server cannot even start (exit 127, the
    // reason the launcher exists), while the launcher starts and says why.
    let out = in_rootfs(
        rootfs,
        &env,
        &[],
        &["/usr/local/bin/appliance-server", "--version"],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    let out = in_rootfs(rootfs, &env, &[], &["/usr/local/bin/appliance-launcher"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for needle in [
        "libcuda.so.1 is not available",
        "CUDA 13.0",
        "580.65.06",
        "--gpus all",
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {}", text(&out));
    }

    // With the toolkit's link stub as libcuda.so.1 (copied into the rootfs for the test only):
    // the loader is satisfied, so `--version` and `healthcheck` reach the server...
    let stub_in_rootfs = rootfs.join("tmp/stub");
    std::fs::create_dir_all(&stub_in_rootfs).unwrap();
    std::fs::copy(
        stub_dir().join("libcuda.so"),
        stub_in_rootfs.join("libcuda.so.1"),
    )
    .unwrap();
    let stub_env = [("LD_LIBRARY_PATH", "/tmp/stub")];
    let launcher = "/usr/local/bin/appliance-launcher";
    let out = in_rootfs(rootfs, &env, &stub_env, &[launcher, "--version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("appliance-server 0.1.0 (features: cuda"),
        "{}",
        text(&out)
    );
    let out = in_rootfs(
        rootfs,
        &env,
        &[("LD_LIBRARY_PATH", "/tmp/stub"), ("APPLIANCE_PORT", "1")],
        &[launcher, "healthcheck"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("unhealthy: "),
        "the server's healthcheck did not run: {}",
        text(&out)
    );
    // ...but serving is refused with the cause, by the launcher and by the server itself.
    let out = in_rootfs(rootfs, &env, &stub_env, &[launcher]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUDA_ERROR_STUB_LIBRARY") && err.contains("link stub"),
        "{}",
        text(&out)
    );
    let out = in_rootfs(
        rootfs,
        &env,
        &stub_env,
        &["/usr/local/bin/appliance-server", "--port", "1"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device cuda: libcuda.so.1 is the CUDA toolkit's link stub"),
        "{}",
        text(&out)
    );

    // The user's mistake for real: `docker run` without `--gpus`, hardened as the runbook says.
    let docker = Dockerd::start();
    let reference = "registry.local/appliance/appliance-demo-cuda:0.1.0";
    docker.load(&tarball, reference);
    let out = docker.docker(&hardened_run(&["--rm", "--network", "none"], &[reference]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("libcuda.so.1 is not available") && err.contains("--gpus all"),
        "{}",
        text(&out)
    );
}

#[test]
fn cuda_image_needs_a_cuda_server_and_its_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    // The CUDA server alone in a dir: no appliance-launcher beside it.
    let lonely = tmp.path().join("appliance-server");
    std::fs::copy(cuda_server(), &lonely).unwrap();
    let build = |binary: &Path| {
        let manifest = tmp.path().join("m.toml");
        std::fs::write(
            &manifest,
            format!(
                "[image]\nname = \"x/cuda\"\ntag = \"1\"\n[model]\nsynthetic = {{ arch = \"llama\" }}\n\
                 [server]\ndevice = \"cuda\"\nbinary = {:?}\n",
                binary.display().to_string()
            ),
        )
        .unwrap();
        let out = run_with_timeout(
            Command::new(appliance_bin())
                .arg("build")
                .arg(&manifest)
                .arg("-o")
                .arg(tmp.path().join("out.tar"))
                .env("APPLIANCE_CACHE", tmp.path().join("cache")),
            TIMEOUT,
        );
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            !tmp.path().join("out.tar").exists(),
            "a refused build left output"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = build(&lonely);
    assert!(
        err.contains("appliance-launcher") && err.contains("server.launcher"),
        "{err}"
    );
    // A CPU server cannot make a `cuda` image, launcher or not.
    let err = build(&support::server_bin());
    assert!(err.contains("without the `cuda` feature"), "{err}");
}
