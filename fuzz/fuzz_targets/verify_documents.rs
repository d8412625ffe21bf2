//! The documents `appliance verify` parses after its scan: the cosign signatures index, the
//! signature and attestation manifests, the simple-signing payload, the DSSE envelopes and their
//! in-toto statements (and the image index, manifest and config they hang from), plus the
//! public-key PEM parser (`sign::keys::parse_public`).
//!
//! Input: `[slot, flags, document...]`. The scan of a genuine signed tarball
//! (`data/signed-tiny.tar`) is taken once; `slot` picks one of its JSON documents or blobs (in
//! name order; the last slot is the public key), whose bytes become `document`, and
//! `verify::check_scan` runs on that scan, with the tarball's key when `flags & 1`. The altered
//! blob keeps its name and size: the scan of a forger who rehashed it and rewrote its
//! descriptors, which is what an unsigned check must withstand.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use std::sync::{Mutex, OnceLock};

use appliance::digest::Sha256Digest;
use appliance::sign::keys;
use appliance::verify::scan::{Scan, scan};
use appliance::verify::{Against, check_scan};
use libfuzzer_sys::fuzz_target;

const TARBALL: &[u8] = include_bytes!("../data/signed-tiny.tar");
const PUBLIC_KEY: &str = include_str!("../data/signed-tiny.pub");

/// A JSON document (`documents`) or JSON blob (`blobs`) of the template scan.
enum Slot {
    Document(String),
    Blob(Sha256Digest),
}

struct Template {
    scan: Scan,
    slots: Vec<Slot>,
    key: p256::ecdsa::VerifyingKey,
}

fn template() -> &'static Mutex<Template> {
    static TEMPLATE: OnceLock<Mutex<Template>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let path = scratch::write("template.tar", TARBALL);
        let scan = scan(&path).expect("the template tarball scans");
        let _ = std::fs::remove_file(&path);
        let mut named: Vec<(String, Slot)> = scan
            .documents
            .keys()
            .map(|name| (name.clone(), Slot::Document(name.clone())))
            .collect();
        named.extend(
            scan.blobs
                .iter()
                .filter(|(_, info)| info.json.is_some())
                .map(|(digest, _)| {
                    (
                        format!("blobs/sha256/{}", digest.hex()),
                        Slot::Blob(*digest),
                    )
                }),
        );
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let key = keys::parse_public("template key", PUBLIC_KEY).expect("the template key parses");
        Mutex::new(Template {
            scan,
            slots: named.into_iter().map(|(_, slot)| slot).collect(),
            key,
        })
    })
}

/// The bytes `slot` names in `scan`.
fn stored<'a>(scan: &'a mut Scan, slot: &Slot) -> &'a mut Vec<u8> {
    match slot {
        Slot::Document(name) => scan.documents.get_mut(name).unwrap(),
        Slot::Blob(digest) => scan.blobs.get_mut(digest).unwrap().json.as_mut().unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [slot, flags, document @ ..] = data else {
        return;
    };
    let mut template = template().lock().unwrap();
    let template = &mut *template;
    let Some(slot) = template.slots.get(*slot as usize) else {
        if let Ok(text) = std::str::from_utf8(document) {
            let _ = keys::parse_public("fuzzed key", text);
        }
        return;
    };
    let genuine = std::mem::replace(stored(&mut template.scan, slot), document.to_vec());
    let against = Against {
        key: (flags & 1 == 1).then_some(&template.key),
        ..Against::default()
    };
    let _ = check_scan(&template.scan, None, &against);
    *stored(&mut template.scan, slot) = genuine;
});
