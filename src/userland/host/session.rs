//! One `resolve` call's caches and accumulated results, and the replay of the loader
//! for each executable: its own namespace, breadth-first over `DT_NEEDED`, skipping
//! driver libraries the container runtime injects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;

use super::elf::{ElfObject, read_elf};
use super::root::{Walk, parent};
use super::{
    DRIVER_REASON, HostResolver, SkippedLibrary, UserlandError, is_injected_driver_library,
};

/// An object loaded into one executable's (simulated) process.
pub(super) struct Loaded {
    pub(super) real: String,
    pub(super) origin: String,
    pub(super) obj: ElfObject,
    pub(super) loader: Option<usize>,
}

/// Caches and accumulated results of one `resolve` call.
pub(super) struct Session<'a> {
    pub(super) resolver: &'a HostResolver,
    pub(super) conf_dirs: Vec<String>,
    pub(super) elves: HashMap<String, Option<ElfObject>>,
    /// Indices into `conf_dirs` that some library was found through.
    pub(super) cache_hits: BTreeSet<usize>,
    pub(super) files: BTreeSet<String>,
    pub(super) links: BTreeMap<String, String>,
    pub(super) skipped: BTreeSet<SkippedLibrary>,
}

impl Session<'_> {
    pub(super) fn elf(&mut self, real: &str) -> Result<Option<ElfObject>, UserlandError> {
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
    pub(super) fn load_executable(&mut self, exe: &Path) -> Result<String, UserlandError> {
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
}
