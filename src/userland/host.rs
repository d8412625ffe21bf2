//! Resolves, on the build host, the complete runtime file closure of ELF executables
//! (dynamic loader, every `DT_NEEDED` library, every symlink on the way) so that a
//! scratch-based image can run them without a distro base image ("host" userland).
//!
//! Why static analysis instead of `ldd`: `ldd` runs the binary's loader, which executes
//! code from the binary, fails outright for CUDA builds the build host cannot load, and
//! lets the build host's `LD_LIBRARY_PATH` leak into the result. Instead the ELF
//! headers are read with `goblin` (only the headers, dynamic segment and string table,
//! never whole multi-hundred-MB CUDA libraries) and the glibc loader's search order is
//! replayed: `DT_RPATH` chain (only for objects without `DT_RUNPATH`), `DT_RUNPATH`,
//! the directories of `/etc/ld.so.conf` (standing in for `ld.so.cache`), then the
//! default directories. `LD_LIBRARY_PATH` is deliberately ignored.
//!
//! Paths are resolved hop by hop so the image reproduces every symlink the loader will
//! traverse (`/lib64 -> usr/lib64`, `libstdc++.so.6 -> libstdc++.so.6.0.30`), whether
//! the host is merged-usr or not. All paths are interpreted under a root prefix (`/`
//! normally) with chroot semantics, so the resolver can also audit an assembled rootfs.
//! `$ORIGIN` of an executable is taken from its location under that root; callers that
//! place an executable elsewhere in the image must keep `$ORIGIN`-relative libs aligned.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use goblin::container::Ctx;
use goblin::elf::dynamic::{DF_1_NODEFLIB, DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME};
use goblin::elf::header::{EM_386, EM_AARCH64, EM_X86_64};
use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP};
use goblin::elf::{Dynamic, Elf, ProgramHeader};
use serde::Serialize;

/// Linux's own limit; a deeper chain is a loop or a hostile tree.
const MAX_SYMLINK_HOPS: usize = 40;
/// Upper bound for any single ELF structure we read, so a corrupt header cannot make
/// us allocate gigabytes.
const MAX_READ: u64 = 256 << 20;
/// Top-level directories that usrmerge turns into `/X -> usr/X` aliases; dpkg may list
/// a file under either spelling.
const USRMERGE_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const DRIVER_REASON: &str =
    "NVIDIA driver library, injected at run time by the NVIDIA Container Toolkit";

/// Finds the runtime closure of executables under a filesystem root.
#[derive(Debug, Clone)]
pub struct HostResolver {
    root: PathBuf,
}

/// What the image needs so the executables can be loaded: sorted by path, unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closure {
    pub entries: Vec<ClosureEntry>,
    pub skipped: Vec<SkippedLibrary>,
    /// Directories some library was found in only through `/etc/ld.so.conf` (the host's
    /// `ld.so.cache`). The image has no cache, so its loader finds those libraries only
    /// if the image sets `LD_LIBRARY_PATH` to these, in this order. Usually empty.
    pub library_path: Vec<String>,
}

/// One image path. `Dir` is emitted for every ancestor of a `File`/`Symlink` so the
/// layer creates real directories (e.g. `/usr/lib64` before `/lib64 -> usr/lib64` is
/// followed) instead of relying on the tar reader to invent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClosureEntry {
    File {
        path: String,
        host_path: PathBuf,
        size: u64,
        mode: u32,
        package: Option<PackageRef>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Dir {
        path: String,
    },
}

impl ClosureEntry {
    pub fn path(&self) -> &str {
        match self {
            Self::File { path, .. } | Self::Symlink { path, .. } | Self::Dir { path } => path,
        }
    }
}

/// The Debian package owning a file, for the image's software bill of materials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// A `DT_NEEDED` entry deliberately left out of the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SkippedLibrary {
    pub soname: String,
    pub needed_by: String,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("executable path {path} is not absolute")]
    RelativeExecutable { path: PathBuf },
    #[error("path {path} is not valid UTF-8, which image paths must be")]
    NonUtf8 { path: PathBuf },
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is not an ELF file")]
    NotElf { path: String },
    #[error("{path} is a malformed ELF file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: String },
    #[error("interpreter {interpreter} of {executable} does not exist")]
    MissingInterpreter {
        interpreter: String,
        executable: String,
    },
    #[error("library {library} needed by {needed_by} not found; searched: {}", .searched.join(":"))]
    LibraryNotFound {
        library: String,
        needed_by: String,
        searched: Vec<String>,
    },
    #[error(
        "library {library} needed by {needed_by} is a relative path the loader would resolve against its working directory"
    )]
    RelativeNeeded { library: String, needed_by: String },
}

/// True for driver libraries the NVIDIA Container Toolkit bind-mounts from the node:
/// a packed copy would shadow the node's driver and break on any version mismatch.
pub fn is_injected_driver_library(soname: &str) -> bool {
    let base = soname.rsplit('/').next().unwrap_or(soname);
    ["libcuda.so", "libcudadebugger.so", "libnvcuvid.so"]
        .iter()
        .any(|prefix| base.starts_with(prefix))
        || (base.starts_with("libnvidia-") && base.contains(".so"))
}

/// ELF identity the loader requires every object of a process to share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Abi {
    is_64: bool,
    little_endian: bool,
    machine: u16,
}

impl Abi {
    fn triplet(self) -> Option<&'static str> {
        match (self.machine, self.is_64) {
            (EM_X86_64, true) => Some("x86_64-linux-gnu"),
            (EM_AARCH64, true) => Some("aarch64-linux-gnu"),
            (EM_386, false) => Some("i386-linux-gnu"),
            _ => None,
        }
    }

    fn platform(self) -> &'static str {
        match self.machine {
            EM_X86_64 => "x86_64",
            EM_AARCH64 => "aarch64",
            EM_386 => "i686",
            _ => "",
        }
    }

    /// glibc's built-in system directories (Debian multiarch first, then the
    /// biarch `lib64` of RPM-style distros, then plain `lib`).
    fn default_dirs(self) -> Vec<String> {
        let mut dirs = Vec::new();
        if let Some(t) = self.triplet() {
            dirs.extend([format!("/lib/{t}"), format!("/usr/lib/{t}")]);
        }
        if self.is_64 {
            dirs.extend(["/lib64".to_owned(), "/usr/lib64".to_owned()]);
        }
        dirs.extend(["/lib".to_owned(), "/usr/lib".to_owned()]);
        dirs
    }
}

/// The parts of an ELF object the loader consults.
#[derive(Debug, Clone, Default)]
struct ElfObject {
    abi: Abi,
    interp: Option<String>,
    needed: Vec<String>,
    rpath: Option<String>,
    runpath: Option<String>,
    soname: Option<String>,
    nodeflib: bool,
}

/// Reads only headers, `PT_INTERP`, `PT_DYNAMIC` and the dynamic string table with
/// positioned reads; `Ok(None)` means "not ELF at all" (e.g. a linker script).
fn read_elf(host: &Path, path: &str) -> Result<Option<ElfObject>, UserlandError> {
    let malformed = |reason: String| UserlandError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(host).map_err(io_err(host))?;
    let len = file.metadata().map_err(io_err(host))?.len();
    let read = |offset: u64, size: u64| -> Result<Vec<u8>, UserlandError> {
        if size > MAX_READ || offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(malformed(format!(
                "{size} bytes at offset {offset} exceed the file"
            )));
        }
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, offset).map_err(io_err(host))?;
        Ok(buf)
    };
    let head = read(0, len.min(64))?;
    if !head.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let goblin_err = |e: goblin::error::Error| malformed(e.to_string());
    let header = Elf::parse_header(&head).map_err(goblin_err)?;
    let ctx = Ctx::new(
        header.container().map_err(goblin_err)?,
        header.endianness().map_err(goblin_err)?,
    );
    let phdr_len = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
    let phdr_bytes = read(header.e_phoff, phdr_len)?;
    let mut phdrs = ProgramHeader::parse(&phdr_bytes, 0, usize::from(header.e_phnum), ctx)
        .map_err(goblin_err)?;
    let mut obj = ElfObject {
        abi: Abi {
            is_64: ctx.is_big(),
            little_endian: ctx.is_little_endian(),
            machine: header.e_machine,
        },
        ..ElfObject::default()
    };
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let raw = read(p.p_offset, p.p_filesz)?;
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8(name.to_vec()).map_err(|e| malformed(e.to_string()))?;
        obj.interp = Some(name);
    }
    let Some(dyn_idx) = phdrs.iter().position(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(Some(obj));
    };
    let dyn_bytes = read(phdrs[dyn_idx].p_offset, phdrs[dyn_idx].p_filesz)?;
    // `Dynamic::parse` slices its input at the segment's file offset; it only gets the
    // segment, so rebase it (PT_LOAD entries, used for address translation, stay put).
    phdrs[dyn_idx].p_offset = 0;
    let Some(dynamic) = Dynamic::parse(&dyn_bytes, &phdrs, ctx).map_err(goblin_err)? else {
        return Ok(Some(obj));
    };
    if dynamic.info.strtab == 0 && dynamic.info.strsz != 0 {
        return Err(malformed(
            "DT_STRTAB lies outside every PT_LOAD segment".to_owned(),
        ));
    }
    let strtab_bytes = read(dynamic.info.strtab as u64, dynamic.info.strsz as u64)?;
    // Only the handful of strings we use are decoded, so odd bytes in symbol names
    // elsewhere in `.dynstr` cannot fail the parse.
    let string = |offset: u64| {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| strtab_bytes.get(o..));
        let bytes = bytes.and_then(|b| b.split(|&c| c == 0).next());
        let bytes = bytes
            .ok_or_else(|| malformed(format!("dynamic string offset {offset} out of range")))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| malformed(format!("dynamic string at {offset}: {e}")))
    };
    for d in &dynamic.dyns {
        match d.d_tag {
            DT_NEEDED => obj.needed.push(string(d.d_val)?),
            DT_RPATH => obj.rpath = Some(string(d.d_val)?),
            DT_RUNPATH => obj.runpath = Some(string(d.d_val)?),
            DT_SONAME => obj.soname = Some(string(d.d_val)?),
            _ => {}
        }
    }
    obj.nodeflib = dynamic.info.flags_1 & DF_1_NODEFLIB != 0;
    Ok(Some(obj))
}

/// A path resolved inside the root: its symlink-free form and the links traversed.
struct Walk {
    real: String,
    links: Vec<(String, String)>,
}

/// An object loaded into one executable's (simulated) process.
struct Loaded {
    real: String,
    origin: String,
    obj: ElfObject,
    loader: Option<usize>,
}

/// Caches and accumulated results of one `resolve` call.
struct Session<'a> {
    resolver: &'a HostResolver,
    conf_dirs: Vec<String>,
    elves: HashMap<String, Option<ElfObject>>,
    /// Indices into `conf_dirs` that some library was found through.
    cache_hits: BTreeSet<usize>,
    files: BTreeSet<String>,
    links: BTreeMap<String, String>,
    skipped: BTreeSet<SkippedLibrary>,
}

/// Where a search directory came from: the image's loader (which has no `ld.so.cache`)
/// searches `Object` and `Default` directories too, but not `Cache` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirSource {
    Object,
    Cache,
    Default,
}

impl HostResolver {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `executables` are absolute paths under the root (host paths when the root is
    /// `/`); returns the closure including the interpreter, excluding the executables.
    pub fn resolve(&self, executables: &[PathBuf]) -> Result<Closure, UserlandError> {
        let mut conf_dirs = Vec::new();
        self.parse_ld_so_conf("/etc/ld.so.conf", 0, &mut conf_dirs)?;
        let mut session = Session {
            resolver: self,
            conf_dirs,
            elves: HashMap::new(),
            cache_hits: BTreeSet::new(),
            files: BTreeSet::new(),
            links: BTreeMap::new(),
            skipped: BTreeSet::new(),
        };
        let mut exe_reals = Vec::new();
        for exe in executables {
            exe_reals.push(session.load_executable(exe)?);
        }
        for real in &exe_reals {
            session.files.remove(real);
        }
        let packages = self.dpkg_owners(&session.files)?;
        let mut entries = BTreeMap::new();
        for path in session.files {
            let host_path = self.host(&path);
            let meta = fs::metadata(&host_path).map_err(io_err(&host_path))?;
            let package = packages.get(&path).cloned();
            let (size, mode) = (meta.len(), meta.permissions().mode() & 0o7777);
            entries.insert(
                path.clone(),
                ClosureEntry::File {
                    path,
                    host_path,
                    size,
                    mode,
                    package,
                },
            );
        }
        for (path, target) in session.links {
            entries.insert(path.clone(), ClosureEntry::Symlink { path, target });
        }
        let dirs: BTreeSet<String> = entries
            .keys()
            .flat_map(|p| p.match_indices('/').skip(1).map(|(i, _)| p[..i].to_owned()))
            .collect();
        for path in dirs {
            entries
                .entry(path.clone())
                .or_insert(ClosureEntry::Dir { path });
        }
        let conf_dirs = &session.conf_dirs;
        Ok(Closure {
            entries: entries.into_values().collect(),
            skipped: session.skipped.into_iter().collect(),
            library_path: session
                .cache_hits
                .iter()
                .map(|&i| conf_dirs[i].clone())
                .collect(),
        })
    }

    fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Resolves `path` component by component with chroot semantics, like the kernel
    /// does for the loader's `open`; `None` when it does not exist.
    fn walk(&self, path: &str) -> Result<Option<Walk>, UserlandError> {
        let mut real = String::new();
        let mut pending: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut links = Vec::new();
        while let Some(part) = pending.pop_front() {
            if part.is_empty() || part == "." {
                continue;
            } else if part == ".." {
                real.truncate(real.rfind('/').unwrap_or(0));
                continue;
            }
            let here = format!("{real}/{part}");
            let host = self.host(&here);
            let Some(meta) = absent_ok(&host, fs::symlink_metadata(&host))? else {
                return Ok(None);
            };
            if meta.file_type().is_symlink() {
                if links.len() >= MAX_SYMLINK_HOPS {
                    let path = path.to_owned();
                    return Err(UserlandError::SymlinkLoop { path });
                }
                let target = fs::read_link(&host).map_err(io_err(&host))?;
                let target = target.into_os_string().into_string();
                let target = target.map_err(|_| UserlandError::NonUtf8 { path: host })?;
                if target.starts_with('/') {
                    real.clear();
                }
                target
                    .split('/')
                    .rev()
                    .for_each(|c| pending.push_front(c.to_owned()));
                links.push((here, target));
            } else if pending.iter().any(|p| !p.is_empty() && p != ".") && !meta.is_dir() {
                return Ok(None);
            } else {
                real = here;
            }
        }
        let real = if real.is_empty() {
            "/".to_owned()
        } else {
            real
        };
        Ok(Some(Walk { real, links }))
    }

    /// Collects directories like `ldconfig` would put into `ld.so.cache`.
    fn parse_ld_so_conf(
        &self,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<(), UserlandError> {
        let host = self.host(path);
        // Bounded like ldconfig's own recursion so an include cycle cannot hang us.
        let Some(text) = read_text(&host)?.filter(|_| depth < 8) else {
            return Ok(());
        };
        let base = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if let Some(patterns) = line
                .strip_prefix("include")
                .filter(|r| r.starts_with([' ', '\t']))
            {
                for pattern in patterns.split_whitespace() {
                    let pattern = if pattern.starts_with('/') {
                        pattern.to_owned()
                    } else {
                        format!("{base}/{pattern}")
                    };
                    for file in self.glob(&pattern)? {
                        self.parse_ld_so_conf(&file, depth + 1, out)?;
                    }
                }
            } else if !line.starts_with("hwcap") {
                let dirs = line
                    .split([' ', '\t', ':', ','])
                    .filter(|d| d.starts_with('/'));
                out.extend(dirs.map(|d| d.trim_end_matches('/').to_owned()));
            }
        }
        Ok(())
    }

    /// Expands `*`/`?` in the last component (all `ld.so.conf` includes need), sorted
    /// like glob(3).
    fn glob(&self, pattern: &str) -> Result<Vec<String>, UserlandError> {
        let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        if !name.contains(['*', '?']) {
            return Ok(vec![pattern.to_owned()]);
        }
        let host = self.host(dir);
        let Some(listing) = absent_ok(&host, fs::read_dir(&host))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in listing {
            let entry = entry.map_err(io_err(&host))?;
            if let Some(file) = entry
                .file_name()
                .to_str()
                .filter(|f| wildcard(name.as_bytes(), f.as_bytes()))
            {
                out.push(format!("{dir}/{file}"));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Maps files to their dpkg packages by reading the database directly (one pass over
    /// `info/*.list`), trying both usrmerge spellings of each path.
    fn dpkg_owners(
        &self,
        files: &BTreeSet<String>,
    ) -> Result<HashMap<String, PackageRef>, UserlandError> {
        let status_path = self.host("/var/lib/dpkg/status");
        let Some(status) = read_text(&status_path)? else {
            return Ok(HashMap::new()); // not a dpkg-based host
        };
        let mut installed: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        for para in status.split("\n\n") {
            let (mut name, mut arch, mut version, mut ok) = (None, None, None, false);
            for (key, value) in para.lines().filter_map(|l| l.split_once(':')) {
                match key {
                    "Package" => name = Some(value.trim()),
                    "Architecture" => arch = Some(value.trim()),
                    "Version" => version = Some(value.trim()),
                    "Status" => ok = value.trim_end().ends_with(" installed"),
                    _ => {}
                }
            }
            if let (Some(n), Some(a), Some(v), true) = (name, arch, version, ok) {
                installed.entry(n).or_default().push((a, v));
            }
        }
        let mut wanted: HashMap<String, &String> = HashMap::new();
        for file in files {
            for alias in usrmerge_aliases(file) {
                wanted.entry(alias).or_insert(file);
            }
        }
        let info = self.host("/var/lib/dpkg/info");
        let mut lists = Vec::new();
        let Some(listing) = absent_ok(&info, fs::read_dir(&info))? else {
            return Ok(HashMap::new());
        };
        for entry in listing {
            let entry = entry.map_err(io_err(&info))?;
            if let Some(stem) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".list"))
            {
                lists.push((stem.to_owned(), entry.path()));
            }
        }
        lists.sort();
        let mut owners = HashMap::new();
        for (stem, list) in lists {
            let (name, want_arch) = stem
                .split_once(':')
                .map_or((stem.as_str(), None), |(n, a)| (n, Some(a)));
            let candidates = installed.get(name).map(Vec::as_slice).unwrap_or_default();
            let found = match want_arch {
                Some(a) => candidates.iter().find(|(arch, _)| *arch == a),
                None if candidates.len() == 1 => candidates.first(),
                None => None,
            };
            let Some(&(arch, version)) = found else {
                continue;
            };
            let text = read_text(&list)?.unwrap_or_default();
            for line in text.lines() {
                if let Some(&file) = wanted.get(line) {
                    owners.entry(file.clone()).or_insert_with(|| PackageRef {
                        name: name.to_owned(),
                        version: version.to_owned(),
                        arch: arch.to_owned(),
                    });
                }
            }
        }
        Ok(owners)
    }
}

impl Session<'_> {
    fn elf(&mut self, real: &str) -> Result<Option<ElfObject>, UserlandError> {
        if let Some(cached) = self.elves.get(real) {
            return Ok(cached.clone());
        }
        let obj = read_elf(&self.resolver.host(real), real)?;
        self.elves.insert(real.to_owned(), obj.clone());
        Ok(obj)
    }

    fn keep(&mut self, walk: Walk) {
        self.links.extend(walk.links);
        self.files.insert(walk.real);
    }

    /// Replays the loader for one executable (its own namespace: objects already loaded
    /// satisfy later `DT_NEEDED` entries by name or soname, as in glibc); returns its
    /// real path.
    fn load_executable(&mut self, exe: &Path) -> Result<String, UserlandError> {
        let path = exe.to_str().ok_or_else(|| UserlandError::NonUtf8 {
            path: exe.to_path_buf(),
        })?;
        if !path.starts_with('/') {
            return Err(UserlandError::RelativeExecutable {
                path: exe.to_path_buf(),
            });
        }
        let walk = self
            .resolver
            .walk(path)?
            .ok_or_else(|| UserlandError::Missing {
                path: path.to_owned(),
            })?;
        // A FIFO or device would block or lie; only regular files can be executables.
        let is_file = self.resolver.host(&walk.real).is_file();
        let obj = if is_file { self.elf(&walk.real)? } else { None };
        let obj = obj.ok_or_else(|| UserlandError::NotElf {
            path: path.to_owned(),
        })?;
        let abi = obj.abi;
        let mut names: HashSet<String> = HashSet::new();
        let mut reals: HashSet<String> = HashSet::from([walk.real.clone()]);
        if let Some(interp) = &obj.interp {
            let found =
                self.resolver
                    .walk(interp)?
                    .ok_or_else(|| UserlandError::MissingInterpreter {
                        interpreter: interp.clone(),
                        executable: walk.real.clone(),
                    })?;
            // The loader is already mapped when libc asks for `ld-linux-*.so.2` by soname.
            if let Some(soname) = self.elf(&found.real)?.and_then(|o| o.soname) {
                names.insert(soname);
            }
            names.insert(interp.clone());
            reals.insert(found.real.clone());
            self.keep(found);
        }
        let origin = parent(&walk.real);
        let mut objects = vec![Loaded {
            real: walk.real.clone(),
            origin,
            obj,
            loader: None,
        }];
        let mut queue = VecDeque::from([0]);
        while let Some(i) = queue.pop_front() {
            for name in objects[i].obj.needed.clone() {
                if names.contains(&name) {
                    continue;
                }
                if is_injected_driver_library(&name) {
                    let needed_by = objects[i].real.clone();
                    self.skipped.insert(SkippedLibrary {
                        soname: name,
                        needed_by,
                        reason: DRIVER_REASON,
                    });
                    continue;
                }
                let (found, walk, obj) = self.search(&name, i, &objects, abi)?;
                names.insert(name);
                names.extend(obj.soname.clone());
                let real = walk.real.clone();
                self.keep(walk);
                if reals.insert(real.clone()) {
                    objects.push(Loaded {
                        real,
                        origin: parent(&found),
                        obj,
                        loader: Some(i),
                    });
                    queue.push_back(objects.len() - 1);
                }
            }
        }
        Ok(walk.real)
    }

    /// glibc `_dl_map_object` order: RPATH chain (if the needer has no RUNPATH), the
    /// needer's RUNPATH, then cache and default dirs unless the needer is `-z nodeflib`.
    fn search_dirs(&self, i: usize, objects: &[Loaded], abi: Abi) -> Vec<(String, DirSource)> {
        let lib = match abi.triplet() {
            Some(t) if self.resolver.host(&format!("/usr/lib/{t}")).is_dir() => format!("lib/{t}"),
            _ if abi.is_64 => "lib64".to_owned(),
            _ => "lib".to_owned(),
        };
        let expand = |list: &str, origin: &str| -> Vec<(String, DirSource)> {
            list.split(':')
                .map(|entry| expand_tokens(entry, origin, &lib, abi.platform()))
                .filter(|d| d.starts_with('/'))
                .map(|d| (d.trim_end_matches('/').to_owned(), DirSource::Object))
                .collect()
        };
        let me = &objects[i];
        let mut dirs = Vec::new();
        if me.obj.runpath.is_none() {
            let mut next = Some(i);
            while let Some(j) = next {
                if let (None, Some(rpath)) = (&objects[j].obj.runpath, &objects[j].obj.rpath) {
                    dirs.extend(expand(rpath, &objects[j].origin));
                }
                next = objects[j].loader;
            }
        }
        if let Some(runpath) = &me.obj.runpath {
            dirs.extend(expand(runpath, &me.origin));
        }
        if !me.obj.nodeflib {
            let defaults = abi.default_dirs();
            for dir in &self.conf_dirs {
                let in_defaults = defaults.contains(dir);
                let source = if in_defaults {
                    DirSource::Default
                } else {
                    DirSource::Cache
                };
                dirs.push((dir.clone(), source));
            }
            dirs.extend(defaults.into_iter().map(|d| (d, DirSource::Default)));
        }
        let mut seen = HashSet::new();
        dirs.retain(|(d, _)| seen.insert(d.clone()));
        dirs
    }

    /// Returns the path the loader would open, its resolution, and the object; like
    /// glibc, candidates of another class/machine or that are not ELF are passed over.
    fn search(
        &mut self,
        name: &str,
        i: usize,
        objects: &[Loaded],
        abi: Abi,
    ) -> Result<(String, Walk, ElfObject), UserlandError> {
        let needed_by = objects[i].real.clone();
        let (candidates, searched) = if name.contains('/') {
            if !name.starts_with('/') {
                return Err(UserlandError::RelativeNeeded {
                    library: name.to_owned(),
                    needed_by,
                });
            }
            (vec![(name.to_owned(), DirSource::Object)], vec![])
        } else {
            let dirs = self.search_dirs(i, objects, abi);
            let candidates = dirs
                .iter()
                .map(|(d, s)| (format!("{d}/{name}"), *s))
                .collect();
            (candidates, dirs.into_iter().map(|(d, _)| d).collect())
        };
        for (candidate, source) in candidates {
            let Some(walk) = self.resolver.walk(&candidate)? else {
                continue;
            };
            if !self.resolver.host(&walk.real).is_file() {
                continue;
            }
            match self.elf(&walk.real) {
                Ok(Some(obj)) if obj.abi == abi => {
                    if source == DirSource::Cache {
                        let dir = parent(&candidate);
                        self.cache_hits
                            .extend(self.conf_dirs.iter().position(|c| *c == dir));
                    }
                    return Ok((candidate, walk, obj));
                }
                Ok(_) | Err(UserlandError::Malformed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(UserlandError::LibraryNotFound {
            library: name.to_owned(),
            needed_by,
            searched,
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UserlandError + '_ {
    move |source| UserlandError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Absence is an answer (`None`), any other I/O failure an error naming the path.
fn absent_ok<T>(path: &Path, result: io::Result<T>) -> Result<Option<T>, UserlandError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(UserlandError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// dpkg and ldconfig files may hold non-UTF-8 bytes in places we never look at.
fn read_text(path: &Path) -> Result<Option<String>, UserlandError> {
    let bytes = absent_ok(path, fs::read(path))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn parent(path: &str) -> String {
    path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned()
}

/// Substitutes the loader's dynamic string tokens; unknown `$NAME`s stay literal.
fn expand_tokens(entry: &str, origin: &str, lib: &str, platform: &str) -> String {
    let mut out = String::new();
    let mut rest = entry;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (token, tail) = match after.strip_prefix('{').and_then(|b| b.split_once('}')) {
            Some(braced) => braced,
            None => after.split_at(
                after
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(after.len()),
            ),
        };
        match token {
            "ORIGIN" => out.push_str(origin),
            "LIB" => out.push_str(lib),
            "PLATFORM" => out.push_str(platform),
            _ => {
                out.push('$');
                rest = after;
                continue;
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The same file under its `/usr`-merged and unmerged spellings.
fn usrmerge_aliases(path: &str) -> Vec<String> {
    let merged_top = |p: &str| {
        p.strip_prefix('/')
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(top, _)| USRMERGE_DIRS.contains(&top))
    };
    let mut out = vec![path.to_owned()];
    match path.strip_prefix("/usr") {
        Some(rest) if merged_top(rest) => out.push(rest.to_owned()),
        None if merged_top(path) => out.push(format!("/usr{path}")),
        _ => {}
    }
    out
}

/// Shell-style match supporting `*` and `?`, enough for `ld.so.conf` includes.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            wildcard(rest, name) || (!name.is_empty() && wildcard(pattern, &name[1..]))
        }
        (Some((b'?', p)), Some((_, n))) => wildcard(p, n),
        (Some((pc, p)), Some((nc, n))) => pc == nc && wildcard(p, n),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

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
        let loader =
            resolve_in(&closure, &interp).expect("interpreter path resolves in the closure");
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
            ClosureEntry::File { path, package, .. } if path.ends_with("/libc.so.6") => {
                package.clone()
            }
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
            let out =
                chroot(rootfs, &["/bin/selftest", "--list"], &[]).expect("chroot worked once");
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
        assert!(
            wildcard(b"*.conf", b"x86_64-linux-gnu.conf") && !wildcard(b"*.conf", b"a.conf.bak")
        );
    }
}
