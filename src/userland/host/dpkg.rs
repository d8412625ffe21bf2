//! Attributes closure files to the Debian packages that own them, for the image's SBOM,
//! by reading the dpkg database directly and matching both usrmerge spellings of a path.

use std::collections::{BTreeSet, HashMap};
use std::fs;

use super::root::{absent_ok, io_err, read_text};
use super::{HostResolver, PackageRef, UserlandError};

/// Top-level directories that usrmerge turns into `/X -> usr/X` aliases; dpkg may list
/// a file under either spelling.
const USRMERGE_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

impl HostResolver {
    /// Maps files to their dpkg packages by reading the database directly (one pass over
    /// `info/*.list`), trying both usrmerge spellings of each path.
    pub(super) fn dpkg_owners(
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

/// The same file under its `/usr`-merged and unmerged spellings.
pub(super) fn usrmerge_aliases(path: &str) -> Vec<String> {
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
