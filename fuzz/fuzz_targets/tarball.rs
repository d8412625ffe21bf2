//! The tarball readers: `verify::verify` (its streaming scan and every check, no key) and
//! `inspect::inspect`, on the same bytes.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use appliance::verify::{Against, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("tarball.tar", data);
    let _ = verify(&path, &Against::default());
    let _ = appliance::inspect::inspect(&path);
});
