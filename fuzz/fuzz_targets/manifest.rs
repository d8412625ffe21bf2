//! `Manifest::parse`: the TOML manifest parser and every validation `appliance build` and
//! `appliance verify --manifest` run on it (local sources are not required to exist, as for an
//! auditor's review).
#![no_main]

use std::path::Path;

use appliance::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent-appliance-fuzz");
    let _ = Manifest::parse(text, &base.join("appliance.toml"), base, None, false);
});
