//! What the CPU benches share: the 283M bench model's shape (the model of
//! `shared/bench/vs-llamacpp`), deterministic inputs and best-of timing.

#![allow(dead_code)]

use std::time::{Duration, Instant};

pub const HIDDEN: usize = 1024;
pub const FFN: usize = 2816;
pub const LAYERS: usize = 16;
pub const VOCAB: usize = 50257;
pub const KV: usize = 256;

/// `n` small pseudo-random values (xorshift from `seed`).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64 ^ seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect()
}

/// The fastest of `repeat` timed runs of `f`, after one warm-up run.
pub fn best_of(repeat: usize, mut f: impl FnMut()) -> Duration {
    f();
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}
