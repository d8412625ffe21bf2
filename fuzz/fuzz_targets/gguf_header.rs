//! The GGUF header reader (`appliance_gguf::read::Header`) and what the builder checks of a
//! GGUF model file's header (`fetch::gguf::read_set`: split keys, architecture, the tokenizer
//! metadata, tensor types).
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use appliance::fetch::gguf::read_set;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("model.gguf", data);
    let _ = read_set(&[("model.gguf", &path)], false);
});
