//! Unit tests for the host resolver: the host's own binaries, `cc`-built fixtures for
//! RPATH/RUNPATH/`$ORIGIN`, fake roots for non-merged layouts, `ld.so.conf` and dpkg,
//! and chroot runs proving a closure is self-sufficient.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::dpkg::usrmerge_aliases;
use super::elf::{ElfObject, read_elf};
use super::root::parent;
use super::search::{expand_tokens, wildcard};
use super::*;

fn resolve_host(exes: &[&str]) -> Closure {
    let exes: Vec<PathBuf> = exes.iter().map(PathBuf::from).collect();
    HostResolver::new("/").resolve(&exes).expect("resolve")
}

fn find<'c>(c: &'c Closure, path: &str) -> Option<&'c ClosureEntry> {
    c.entries.iter().find(|e| e.path() == path)
}

/// Follows `path` using only the closure's entries, as the loader would in the image.
fn resolve_in(c: &Closure, path: &str) -> Option<String> {
    let mut real = String::new();
    let mut pending: VecDeque<&str> = path.split('/').collect();
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            real.truncate(real.rfind('/').unwrap_or(0));
        } else if !part.is_empty() && part != "." {
            let here = format!("{real}/{part}");
            match find(c, &here)? {
                ClosureEntry::Symlink { target, .. } => {
                    if target.starts_with('/') {
                        real.clear();
                    }
                    target.split('/').rev().for_each(|t| pending.push_front(t));
                }
                _ => real = here,
            }
        }
    }
    Some(real)
}

/// Sorted, unique, files exist as recorded, every symlink resolves within the closure.
fn assert_well_formed(c: &Closure) {
    let paths: Vec<&str> = c.entries.iter().map(ClosureEntry::path).collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "not sorted/unique: {paths:?}"
    );
    for entry in &c.entries {
        match entry {
            ClosureEntry::File {
                host_path, size, ..
            } => {
                assert_eq!(fs::metadata(host_path).expect("file exists").len(), *size);
            }
            ClosureEntry::Symlink { path, target } => {
                assert!(
                    resolve_in(c, path).is_some(),
                    "{path} -> {target} dangles in the closure"
                );
            }
            ClosureEntry::Dir { path } => assert!(Path::new(path).is_dir(), "{path}"),
        }
    }
}

fn needed_of(path: &str) -> ElfObject {
    let real = fs::canonicalize(path).expect("canonicalize");
    read_elf(&real, path).expect("read").expect("elf")
}

#[test]
fn ls_closure_is_complete_and_deterministic() {
    let closure = resolve_host(&["/bin/ls"]);
    assert_well_formed(&closure);
    let ls = needed_of("/bin/ls");
    let interp = ls.interp.expect("ls is dynamic");
    let loader = resolve_in(&closure, &interp).expect("interpreter path resolves in the closure");
    assert!(
        matches!(find(&closure, &loader), Some(ClosureEntry::File { .. })),
        "{loader}"
    );
    assert!(ls.needed.iter().any(|n| n == "libc.so.6"));
    for name in &ls.needed {
        let hit = closure
            .entries
            .iter()
            .any(|e| e.path().ends_with(&format!("/{name}")));
        assert!(hit, "{name} missing from {closure:#?}");
    }
    assert!(
        find(&closure, "/usr/bin/ls").is_none(),
        "executable itself must be excluded"
    );
    assert_eq!(closure, resolve_host(&["/bin/ls"]));
}

#[test]
fn dpkg_attributes_libc() {
    if !Path::new("/var/lib/dpkg/status").exists() {
        eprintln!("skipping: no dpkg database on this host");
        return;
    }
    let closure = resolve_host(&["/bin/ls"]);
    let package = closure.entries.iter().find_map(|e| match e {
        ClosureEntry::File { path, package, .. } if path.ends_with("/libc.so.6") => package.clone(),
        _ => None,
    });
    let package = package.expect("libc.so.6 attributed");
    assert_eq!(package.name, "libc6");
    assert!(!package.version.is_empty() && !package.arch.is_empty());
}

fn have_cc() -> bool {
    let ok = Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: no `cc` on this host to build ELF fixtures");
    }
    ok
}

fn cc(dir: &Path, out: &str, source: &str, args: &[&str]) -> PathBuf {
    fs::create_dir_all(dir).expect("mkdir");
    let src = dir.join(format!("{}.c", out.replace('/', "_")));
    fs::write(&src, source).expect("write source");
    let out = dir.join(out);
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let status = Command::new("cc")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .args(args)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for {}", out.display());
    out
}

fn utf8(path: &Path) -> String {
    fs::canonicalize(path)
        .expect("canonicalize")
        .to_str()
        .expect("utf8")
        .to_owned()
}

#[test]
fn runpath_origin_is_followed() {
    if !have_cc() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = tmp.path().join("app");
    let lib = app.join("lib");
    cc(
        &app,
        "lib/world/libworld.so",
        "int world(void){return 1;}",
        &["-shared", "-fPIC"],
    );
    cc(
        &app,
        "lib/libhello.so.1.0",
        "int world(void); int hello(void){return world();}",
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libhello.so.1",
            "-Wl,--enable-new-dtags",
            "-Wl,-rpath,${ORIGIN}/world",
            &format!("-L{}/world", lib.display()),
            "-lworld",
        ],
    );
    symlink("libhello.so.1.0", lib.join("libhello.so.1")).expect("symlink");
    symlink("libhello.so.1", lib.join("libhello.so")).expect("symlink");
    let exe = cc(
        &app,
        "bin/hello",
        "int hello(void); int main(void){return hello()-1;}",
        &[
            "-Wl,--enable-new-dtags",
            "-Wl,-rpath,$ORIGIN/../lib",
            &format!("-L{}", lib.display()),
            "-lhello",
            &format!("-Wl,-rpath-link,{}/world", lib.display()),
        ],
    );
    assert!(
        Command::new(&exe).status().expect("run").success(),
        "real loader disagrees"
    );
    let lib = utf8(&lib);
    let closure = HostResolver::new("/")
        .resolve(std::slice::from_ref(&exe))
        .expect("resolve");
    assert_well_formed(&closure);
    assert!(matches!(
        find(&closure, &format!("{lib}/libhello.so.1.0")),
        Some(ClosureEntry::File { .. })
    ));
    assert_eq!(
        find(&closure, &format!("{lib}/libhello.so.1")),
        Some(&ClosureEntry::Symlink {
            path: format!("{lib}/libhello.so.1"),
            target: "libhello.so.1.0".into()
        })
    );
    assert!(matches!(
        find(&closure, &format!("{lib}/world/libworld.so")),
        Some(ClosureEntry::File { .. })
    ));
    assert!(
        find(&closure, &format!("{lib}/libhello.so")).is_none(),
        "link-time-only name packed"
    );
    assert!(find(&closure, &utf8(&exe)).is_none());
}

#[test]
fn rpath_is_inherited_but_runpath_is_not() {
    if !have_cc() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    cc(
        tmp.path(),
        "b/libb.so",
        "int b(void){return 0;}",
        &["-shared", "-fPIC"],
    );
    let libb_dir = format!("-L{}", b.display());
    cc(
        tmp.path(),
        "a/liba.so",
        "int b(void); int a(void){return b();}",
        &["-shared", "-fPIC", &libb_dir, "-lb"],
    );
    let rpath = format!("-Wl,-rpath,{}:{}", a.display(), b.display());
    let main = "int a(void); int main(void){return a();}";
    for (name, tags) in [
        ("rpath", "--disable-new-dtags"),
        ("runpath", "--enable-new-dtags"),
    ] {
        let link = [
            &format!("-Wl,{tags}"),
            rpath.as_str(),
            &format!("-L{}", a.display()),
            "-la",
            &format!("-Wl,-rpath-link,{}", b.display()),
        ];
        let exe = cc(tmp.path(), name, main, &link);
        let result = HostResolver::new("/").resolve(&[exe]);
        match (name, result) {
            ("rpath", Ok(closure)) => {
                assert!(find(&closure, &format!("{}/libb.so", utf8(&b))).is_some())
            }
            (
                "runpath",
                Err(UserlandError::LibraryNotFound {
                    library, needed_by, ..
                }),
            ) => {
                assert_eq!(
                    (library.as_str(), needed_by),
                    ("libb.so", format!("{}/liba.so", utf8(&a)))
                );
            }
            (name, other) => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn missing_library_errors_but_driver_library_is_skipped() {
    if !have_cc() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let libhello = cc(
        dir,
        "libhello.so",
        "int hello(void){return 0;}",
        &["-shared", "-fPIC", "-Wl,-soname,libhello.so.1"],
    );
    let libcuda = cc(
        dir,
        "libcuda.so",
        "int cuInit(int f){return f;}",
        &["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1"],
    );
    let link = |libs: &[&str]| {
        let mut args = vec![
            format!("-L{}", dir.display()),
            "-Wl,--no-as-needed".to_owned(),
        ];
        args.extend(libs.iter().map(|l| format!("-l{l}")));
        args
    };
    let args = link(&["hello", "cuda"]);
    let both = cc(
        dir,
        "both",
        "int main(void){return 0;}",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let args = link(&["cuda"]);
    let cuda = cc(
        dir,
        "cuda",
        "int main(void){return 0;}",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    fs::remove_file(libhello).expect("rm");
    fs::remove_file(libcuda).expect("rm");
    let err = HostResolver::new("/")
        .resolve(std::slice::from_ref(&both))
        .expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains("libhello.so.1") && message.contains(&utf8(&both)),
        "{message}"
    );
    assert!(
        message.contains("/usr/lib"),
        "searched dirs listed: {message}"
    );
    let closure = HostResolver::new("/")
        .resolve(std::slice::from_ref(&cuda))
        .expect("driver lib is no error");
    assert_eq!(
        closure.skipped,
        vec![SkippedLibrary {
            soname: "libcuda.so.1".into(),
            needed_by: utf8(&cuda),
            reason: DRIVER_REASON
        }]
    );
    assert!(!closure.entries.iter().any(|e| e.path().contains("libcuda")));
}

fn materialize(closure: &Closure, rootfs: &Path) {
    for entry in &closure.entries {
        let dest = rootfs.join(entry.path().trim_start_matches('/'));
        match entry {
            ClosureEntry::Dir { .. } => fs::create_dir_all(&dest).expect("mkdir"),
            ClosureEntry::File { host_path, .. } => {
                fs::copy(host_path, &dest).expect("copy");
            }
            ClosureEntry::Symlink { target, .. } => symlink(target, &dest).expect("symlink"),
        }
    }
}

/// Runs `argv` chrooted into `rootfs`; `None` when this host forbids chroot.
fn chroot(rootfs: &Path, argv: &[&str], env: &[(&str, &str)]) -> Option<std::process::Output> {
    let mut command = Command::new("chroot");
    command.arg(rootfs).args(argv).envs(env.iter().copied());
    match command.output() {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("not permitted") => Some(out),
        other => {
            eprintln!("skipping chroot run (needs root and chroot(8)): {other:?}");
            None
        }
    }
}

/// Proves completeness: the closure alone, in an empty rootfs, runs the programs.
#[test]
fn closure_is_self_sufficient_in_a_rootfs() {
    let test_exe = std::env::current_exe().expect("current_exe");
    let test_exe = test_exe.to_str().expect("utf8");
    let closure = resolve_host(&["/bin/ls", test_exe]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path();
    materialize(&closure, rootfs);
    fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    fs::copy("/bin/ls", rootfs.join("bin/ls")).expect("copy ls");
    fs::copy(test_exe, rootfs.join("bin/selftest")).expect("copy test exe");
    let inside = HostResolver::new(rootfs)
        .resolve(&[PathBuf::from("/bin/ls"), PathBuf::from("/bin/selftest")])
        .expect("every NEEDED resolves inside the rootfs");
    let paths = |c: &Closure| {
        c.entries
            .iter()
            .map(|e| e.path().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&inside), paths(&closure));
    if let Some(out) = chroot(rootfs, &["/bin/ls", "/"], &[]) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "bin")
        );
        let out = chroot(rootfs, &["/bin/selftest", "--list"], &[]).expect("chroot worked once");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Lays out a classic (non-merged-usr) root for `/bin/true`: libraries in `/lib/<triplet>`
/// except libc, which goes to `libc_dir` (default: there too) as an old-style
/// `libc.so.6 -> libc-2.36.so`.
/// Returns the triplet and the interpreter's file name.
fn fake_root_for_true(root: &Path, libc_dir: Option<&str>) -> Option<(&'static str, String)> {
    let Some(triplet) = needed_of("/bin/true").abi.triplet() else {
        eprintln!("skipping: no multiarch triplet for this machine");
        return None;
    };
    let libdir = root.join(format!("lib/{triplet}"));
    let libc_dir = libc_dir.map_or(libdir.clone(), |d| root.join(d.trim_start_matches('/')));
    for dir in [&libdir, &libc_dir, &root.join("bin")] {
        fs::create_dir_all(dir).expect("mkdir");
    }
    for entry in &resolve_host(&["/bin/true"]).entries {
        if let ClosureEntry::File {
            path, host_path, ..
        } = entry
        {
            match path.rsplit('/').next().expect("name") {
                "libc.so.6" => fs::copy(host_path, libc_dir.join("libc-2.36.so")),
                name => fs::copy(host_path, libdir.join(name)),
            }
            .expect("copy");
        }
    }
    symlink("libc-2.36.so", libc_dir.join("libc.so.6")).expect("symlink");
    let interp = needed_of("/bin/true").interp.expect("dynamic");
    let interp_name = interp.rsplit('/').next().expect("name").to_owned();
    let interp_dir = root.join(parent(&interp).trim_start_matches('/'));
    if !interp_dir.exists() {
        fs::create_dir_all(&interp_dir).expect("mkdir");
        let target = format!("/lib/{triplet}/{interp_name}");
        symlink(target, interp_dir.join(&interp_name)).expect("symlink");
    }
    fs::copy("/bin/true", root.join("bin/true")).expect("copy");
    Some((triplet, interp_name))
}

/// Resolves `/bin/true` in `root`, then runs it chrooted in a rootfs made of the closure.
fn resolve_and_run_true(root: &Path, env: &[(&str, &str)]) -> (Closure, Option<bool>) {
    let closure = HostResolver::new(root)
        .resolve(&[PathBuf::from("/bin/true")])
        .expect("resolve");
    let rootfs = tempfile::tempdir().expect("tempdir");
    materialize(&closure, rootfs.path());
    fs::create_dir_all(rootfs.path().join("bin")).expect("mkdir");
    fs::copy("/bin/true", rootfs.path().join("bin/true")).expect("copy");
    let ran = chroot(rootfs.path(), &["/bin/true"], env).map(|out| out.status.success());
    (closure, ran)
}

/// Non-merged layout, plus a dpkg database listing libc under its `/usr` spelling.
#[test]
fn non_merged_fake_root_with_dpkg_aliasing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let Some((triplet, interp_name)) = fake_root_for_true(root, None) else {
        return;
    };
    let dpkg = root.join("var/lib/dpkg/info");
    fs::create_dir_all(&dpkg).expect("mkdir");
    let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
        Multi-Arch: same\nVersion: 2.36-9+test\nDescription: x\n y: z\n\n\
        Package: ghost\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1\n";
    fs::write(root.join("var/lib/dpkg/status"), status).expect("status");
    let libc6 = format!("/.\n/usr/lib/{triplet}/libc-2.36.so\n");
    fs::write(dpkg.join("libc6:amd64.list"), libc6).expect("list");
    fs::write(
        dpkg.join("ghost.list"),
        format!("/lib/{triplet}/{interp_name}\n"),
    )
    .expect("list");

    let (closure, ran) = resolve_and_run_true(root, &[]);
    assert!(
        !closure.entries.iter().any(|e| e.path().starts_with("/usr")),
        "{closure:#?}"
    );
    assert_eq!(
        find(&closure, "/lib"),
        Some(&ClosureEntry::Dir {
            path: "/lib".into()
        })
    );
    let libc = format!("/lib/{triplet}/libc.so.6");
    let link = ClosureEntry::Symlink {
        path: libc.clone(),
        target: "libc-2.36.so".into(),
    };
    assert_eq!(find(&closure, &libc), Some(&link));
    let Some(ClosureEntry::File { package, .. }) =
        find(&closure, &format!("/lib/{triplet}/libc-2.36.so"))
    else {
        panic!("versioned libc missing: {closure:#?}");
    };
    let want = PackageRef {
        name: "libc6".into(),
        version: "2.36-9+test".into(),
        arch: "amd64".into(),
    };
    assert_eq!(package.as_ref(), Some(&want));
    let interp = find(&closure, &format!("/lib/{triplet}/{interp_name}"));
    assert!(
        matches!(interp, Some(ClosureEntry::File { package: None, .. })),
        "uninstalled owner"
    );
    assert!(closure.library_path.is_empty());
    assert_ne!(ran, Some(false), "chrooted /bin/true failed");
}

/// A library reachable only through `ld.so.conf` is packed and reported, because the
/// image (no `ld.so.cache`) needs `LD_LIBRARY_PATH` to find it.
#[test]
fn ld_so_conf_dirs_are_reported_as_library_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    if fake_root_for_true(root, Some("/opt/glibc")).is_none() {
        return;
    }
    fs::create_dir_all(root.join("etc/ld.so.conf.d")).expect("mkdir");
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n",
    )
    .expect("w");
    fs::write(root.join("etc/ld.so.conf.d/glibc.conf"), "/opt/glibc\n").expect("w");
    let (closure, ran) = resolve_and_run_true(root, &[]);
    assert_eq!(closure.library_path, ["/opt/glibc"]);
    assert!(find(&closure, "/opt/glibc/libc-2.36.so").is_some());
    if ran.is_some() {
        assert_eq!(
            ran,
            Some(false),
            "without LD_LIBRARY_PATH the image loader cannot find libc"
        );
        let (_, ran) = resolve_and_run_true(root, &[("LD_LIBRARY_PATH", "/opt/glibc")]);
        assert_eq!(ran, Some(true));
    }
}

#[test]
fn ld_so_conf_includes_are_followed_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc");
    fs::create_dir_all(etc.join("ld.so.conf.d")).expect("mkdir");
    fs::write(
        etc.join("ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n/opt/last # comment\n",
    )
    .expect("w");
    fs::write(
        etc.join("ld.so.conf.d/b.conf"),
        "/opt/b/\ninclude ../extra\n",
    )
    .expect("w");
    fs::write(
        etc.join("ld.so.conf.d/a.conf"),
        "# libc\n/opt/a:/opt/a2\nhwcap 0 nosegneg\n",
    )
    .expect("w");
    fs::write(etc.join("ld.so.conf.d/ignored.txt"), "/opt/ignored\n").expect("w");
    fs::write(etc.join("extra"), "/opt/extra\n").expect("w");
    let mut dirs = Vec::new();
    HostResolver::new(tmp.path())
        .parse_ld_so_conf("/etc/ld.so.conf", 0, &mut dirs)
        .expect("parse");
    assert_eq!(
        dirs,
        ["/opt/a", "/opt/a2", "/opt/b", "/opt/extra", "/opt/last"]
    );
}

#[test]
fn helpers() {
    assert_eq!(
        expand_tokens(
            "$ORIGIN/../${LIB}/$PLATFORM/$ORIGINX/$",
            "/o",
            "lib64",
            "x86_64"
        ),
        "/o/../lib64/x86_64/$ORIGINX/$"
    );
    assert_eq!(expand_tokens("${ORIGIN}", "/o", "l", "p"), "/o");
    assert_eq!(
        usrmerge_aliases("/usr/lib/x/libc.so.6"),
        ["/usr/lib/x/libc.so.6", "/lib/x/libc.so.6"]
    );
    assert_eq!(
        usrmerge_aliases("/lib64/ld.so"),
        ["/lib64/ld.so", "/usr/lib64/ld.so"]
    );
    assert_eq!(usrmerge_aliases("/usr/share/x"), ["/usr/share/x"]);
    for name in [
        "libcuda.so.1",
        "libcuda.so",
        "libnvidia-ml.so.1",
        "libnvidia-ptxjitcompiler.so.1",
        "libcudadebugger.so.1",
        "libnvcuvid.so.1",
    ] {
        assert!(is_injected_driver_library(name), "{name}");
    }
    for name in [
        "libcudart.so.13",
        "libcublas.so.13",
        "libnvrtc.so.13",
        "libc.so.6",
    ] {
        assert!(!is_injected_driver_library(name), "{name}");
    }
    assert!(wildcard(b"*.conf", b"x86_64-linux-gnu.conf") && !wildcard(b"*.conf", b"a.conf.bak"));
}
