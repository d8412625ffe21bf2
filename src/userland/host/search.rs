//! The glibc loader's library search order: the `DT_RPATH` chain, `DT_RUNPATH` (with
//! `$ORIGIN`/`$LIB`/`$PLATFORM` expanded), the directories of `/etc/ld.so.conf`
//! (standing in for `ld.so.cache`), then the built-in default directories.

use std::collections::HashSet;
use std::fs;

use super::elf::{Abi, ElfObject};
use super::root::{Walk, absent_ok, io_err, parent, read_text};
use super::session::{Loaded, Session};
use super::{HostResolver, UserlandError};

/// Where a search directory came from: the image's loader (which has no `ld.so.cache`)
/// searches `Object` and `Default` directories too, but not `Cache` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirSource {
    Object,
    Cache,
    Default,
}

impl Session<'_> {
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
    pub(super) fn search(
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

impl Abi {
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

impl HostResolver {
    /// Collects directories like `ldconfig` would put into `ld.so.cache`.
    pub(super) fn parse_ld_so_conf(
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
}

/// Substitutes the loader's dynamic string tokens; unknown `$NAME`s stay literal.
pub(super) fn expand_tokens(entry: &str, origin: &str, lib: &str, platform: &str) -> String {
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

/// Shell-style match supporting `*` and `?`, enough for `ld.so.conf` includes.
pub(super) fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
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
