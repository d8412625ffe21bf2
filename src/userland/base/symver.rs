//! Checks that the base image's libraries define every symbol version the packed ELFs ask for
//! (`GLIBC_2.34` from `libc.so.6`, `GCC_4.2.0` from `libgcc_s.so.1`, ...).
//!
//! Why: finding `libc.so.6` in the base is not enough. A server linked on a build host with a
//! newer glibc than the base's loads nothing at run time ("version `GLIBC_2.34' not found"),
//! the classic failure of building on one distro release and running on an older one. The
//! loader's own rule is replayed: each `DT_VERNEED` entry (file, version) must match a
//! `DT_VERDEF` of the object whose `DT_SONAME` is that file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::BaseError;

/// What one ELF requires and defines.
struct Versions {
    soname: Option<String>,
    /// (library soname, version name)
    needs: Vec<(String, String)>,
    defines: BTreeSet<String>,
}

fn read(path: &Path) -> Result<Option<Versions>, BaseError> {
    let bytes = std::fs::read(path).map_err(|source| BaseError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
        return Ok(None);
    };
    let name = |offset: usize| elf.dynstrtab.get_at(offset).unwrap_or("").to_string();
    let mut needs = Vec::new();
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            let file = name(need.vn_file);
            for aux in need.iter() {
                needs.push((file.clone(), name(aux.vna_name)));
            }
        }
    }
    let mut defines = BTreeSet::new();
    if let Some(verdef) = &elf.verdef {
        for def in verdef.iter() {
            // The first aux entry is the version's own name; later ones name its parents.
            if let Some(aux) = def.iter().next() {
                defines.insert(name(aux.vda_name));
            }
        }
    }
    Ok(Some(Versions {
        soname: elf.soname.map(str::to_string),
        needs,
        defines,
    }))
}

/// `objects`: (image path, file under the rootfs) of the executables and every library of
/// their closure. Fails on the first version a library lacks, naming all three.
pub fn check(image: &str, objects: &[(String, &Path)]) -> Result<(), BaseError> {
    let mut provided: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut needs = Vec::new();
    for (image_path, file) in objects {
        let Some(versions) = read(file)? else {
            continue;
        };
        if let Some(soname) = versions.soname {
            provided.entry(soname).or_default().extend(versions.defines);
        }
        needs.extend(
            versions
                .needs
                .into_iter()
                .map(|(lib, version)| (image_path.clone(), lib, version)),
        );
    }
    verify(image, needs, &provided)
}

/// (elf, library, version) needs against each soname's defined versions.
fn verify(
    image: &str,
    needs: Vec<(String, String, String)>,
    provided: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(), BaseError> {
    for (elf, library, version) in needs {
        // Libraries outside the closure (the injected driver's) are not the base's to provide.
        let Some(defined) = provided.get(&library) else {
            continue;
        };
        if !defined.contains(&version) {
            let mut available: Vec<&String> = defined.iter().collect();
            available.sort_by(|a, b| version_order(a, b));
            return Err(BaseError::MissingSymbolVersion {
                image: image.to_string(),
                elf,
                library,
                version,
                newest: available.last().map(|s| s.to_string()).unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// `GLIBC_2.9` < `GLIBC_2.34`: compares the numeric parts numerically.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> (String, Vec<u64>) {
        let (prefix, rest) = s.split_once('_').unwrap_or((s, ""));
        (
            prefix.to_string(),
            rest.split('.').filter_map(|p| p.parse().ok()).collect(),
        )
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["GLIBC_2.34", "GLIBC_2.9", "GLIBC_2.2.5"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["GLIBC_2.2.5", "GLIBC_2.9", "GLIBC_2.34"]);
    }

    #[test]
    fn a_libc_older_than_the_binary_needs_is_named() {
        // This test binary is linked against the host's libc, so every need is met...
        let exe = std::env::current_exe().unwrap();
        let libc = std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6")
            .or_else(|_| std::fs::canonicalize("/lib64/libc.so.6"))
            .unwrap();
        let objects = [
            ("/exe".to_string(), exe.as_path()),
            ("/lib/libc.so.6".to_string(), libc.as_path()),
        ];
        check("host", &objects).unwrap();

        // ...and a libc lacking the newest version it needs (an older glibc) is refused.
        let versions = read(&exe).unwrap().unwrap();
        let mut wanted: Vec<&String> = versions
            .needs
            .iter()
            .filter(|(lib, _)| lib == "libc.so.6")
            .map(|(_, v)| v)
            .collect();
        wanted.sort_by(|a, b| version_order(a, b));
        let newest = wanted
            .last()
            .expect("the test binary needs versioned libc symbols");
        let mut defined = read(&libc).unwrap().unwrap().defines;
        defined.remove(*newest);
        let provided = BTreeMap::from([("libc.so.6".to_string(), defined)]);
        let needs = versions
            .needs
            .iter()
            .map(|(l, v)| ("/exe".to_string(), l.clone(), v.clone()))
            .collect();
        let err = verify("old-base", needs, &provided)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(newest.as_str()) && err.contains("libc.so.6"),
            "{err}"
        );
    }
}
