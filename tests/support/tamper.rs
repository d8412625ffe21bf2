//! Rewrites image tarballs the way an attacker would, for the verification tamper matrix:
//! flip bytes in a blob, swap or drop blobs, or replace a blob and re-hash everything that
//! points at it (so only the signature can tell).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A tarball held in memory as its entries, in order.
pub struct Tarball {
    pub entries: Vec<(String, Vec<u8>, bool)>,
    /// The outer headers' mtime, kept on rewrite as a forger would.
    mtime: u64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tarball {
    pub fn read(path: &Path) -> Self {
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        let mut entries = Vec::new();
        let mut mtime = None;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            mtime.get_or_insert(e.header().mtime().unwrap());
            let name = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let dir = e.header().entry_type().is_dir();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            entries.push((name, bytes, dir));
        }
        Self {
            entries,
            mtime: mtime.unwrap_or(0),
        }
    }

    pub fn write(&self, path: &Path) {
        let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, bytes, dir) in &self.entries {
            let kind = if *dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            };
            let size = if *dir { 0 } else { bytes.len() as u64 };
            // Headers as appliance writes them, so each case fails on what it altered.
            let h = match appliance::archive::outer_header(name, size, kind, self.mtime) {
                Ok(bytes) => tar::Header::from_byte_slice(&bytes).clone(),
                Err(_) => {
                    // Raw name bytes: the tar crate refuses to write `..`, which attackers do.
                    let mut h = tar::Header::new_gnu();
                    h.set_size(size);
                    h.set_mode(if *dir { 0o755 } else { 0o644 });
                    h.set_entry_type(kind);
                    h.set_mtime(self.mtime);
                    let raw = &mut h.as_old_mut().name;
                    raw.fill(0);
                    raw[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    h
                }
            };
            builder.append(&h, &bytes[..]).unwrap();
        }
        builder.finish().unwrap();
    }

    pub fn get(&self, name: &str) -> &[u8] {
        &self
            .entries
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    pub fn json(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(self.get(name)).unwrap()
    }

    pub fn set(&mut self, name: &str, bytes: Vec<u8>) {
        let e = self.entries.iter_mut().find(|e| e.0 == name).unwrap();
        e.1 = bytes;
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|e| e.0 != name);
    }

    /// Replaces blob `hex` by `bytes` under its new digest, then rewrites every JSON document
    /// or blob whose descriptors point at it, recursively, as a forger would.
    pub fn replace_and_rehash(&mut self, hex: &str, bytes: Vec<u8>) -> String {
        let new_hex = sha256_hex(&bytes);
        let size = bytes.len();
        let old_name = format!("blobs/sha256/{hex}");
        let e = self.entries.iter_mut().find(|e| e.0 == old_name).unwrap();
        e.0 = format!("blobs/sha256/{new_hex}");
        e.1 = bytes;
        let referrers: Vec<String> = self
            .entries
            .iter()
            .filter(|e| !e.2 && e.0 != format!("blobs/sha256/{new_hex}"))
            .filter(|e| String::from_utf8_lossy(&e.1).contains(&format!("sha256:{hex}")))
            .map(|e| e.0.clone())
            .collect();
        for name in referrers {
            let mut value: serde_json::Value = serde_json::from_slice(self.get(&name)).unwrap();
            repoint(&mut value, hex, &new_hex, size);
            let bytes = serde_json::to_vec(&value).unwrap();
            match name.strip_prefix("blobs/sha256/") {
                Some(referrer) => {
                    let referrer = referrer.to_string();
                    self.replace_and_rehash(&referrer, bytes);
                }
                None => self.set(&name, bytes),
            }
        }
        new_hex
    }
}

fn repoint(v: &mut serde_json::Value, old: &str, new: &str, size: usize) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("digest").and_then(|d| d.as_str()) == Some(&format!("sha256:{old}")) {
                map.insert("digest".into(), format!("sha256:{new}").into());
                map.insert("size".into(), size.into());
            }
            for (_, child) in map.iter_mut() {
                repoint(child, old, new, size);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|i| repoint(i, old, new, size))
        }
        _ => {}
    }
}
