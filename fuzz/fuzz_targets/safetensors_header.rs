//! The safetensors header reader of the GGUF converter (`appliance-gguf`), which reads the
//! quantizer's input checkpoints.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("model.safetensors", data);
    let _ = appliance_gguf::convert::read_safetensors_header(&path);
});
