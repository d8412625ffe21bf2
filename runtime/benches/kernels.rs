//! `cargo bench -p appliance-server --bench kernels`: the CPU kernels
//! against candle 0.11's own matmul on the same shapes, same process, same
//! threads. Shapes are one layer of the 283M bench model of
//! `shared/bench/vs-llamacpp` (hidden 1024, 16/4 heads, FFN 2816, vocab
//! 50257), repeated for its 16 layers plus the LM head, so "tok/s" below is
//! the decode rate those products alone would allow.
//!
//! Prints, per case: our time, candle's time, and the ratio (candle / ours:
//! above 1 means ours is faster). Environment: `BENCH_REPEAT` (default 5),
//! `BENCH_M` (rows to try, e.g. `1,16`; default `1,4,16,64,256`),
//! `BENCH_WEIGHTS` (ours: `f16`, the default; `bf16`, the f32-FMA kernel on
//! bf16 weights; `bf16-dot`, the AVX512_BF16 kernel, where the CPU has it).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use appliance_server::kernels::{
    attention::{AttentionParams, KvShape, SeqSpan, paged_attention, write_kv},
    gemm::{PackedMatrix, bf16_dot, matmul},
    isa::Isa,
};
use candle_core::{DType, Device, Tensor};
use common::{FFN, HIDDEN, KV, LAYERS, VOCAB, best_of, values};
use half::{bf16, f16};

/// (rows, cols, count per forward) of the bench model's products.
fn shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (HIDDEN + 2 * KV, HIDDEN, LAYERS), // fused q, k, v
        (HIDDEN, HIDDEN, LAYERS),          // o
        (2 * FFN, HIDDEN, LAYERS),         // fused gate, up
        (HIDDEN, FFN, LAYERS),             // down
        (VOCAB, HIDDEN, 1),                // lm head
    ]
}

fn main() -> candle_core::Result<()> {
    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let isa = Isa::best();
    println!(
        "isa {} | rayon threads {} | best of {repeat}",
        isa.name(),
        rayon::current_num_threads()
    );
    let weights = std::env::var("BENCH_WEIGHTS").unwrap_or_else(|_| "f16".into());
    let pack = |w: &[f32], rows, cols, c: usize| match weights.as_str() {
        "f16" => PackedMatrix::pack(w, rows, cols, |v: f32| f16::from_f32(v + c as f32 * 1e-4)),
        "bf16" => PackedMatrix::pack(w, rows, cols, |v: f32| bf16::from_f32(v + c as f32 * 1e-4)),
        "bf16-dot" if bf16_dot::supported() => {
            PackedMatrix::pack_bf16_pairs(w, rows, cols, |v: f32| {
                bf16::from_f32(v + c as f32 * 1e-4)
            })
        }
        other => panic!("BENCH_WEIGHTS={other}: f16, bf16 or bf16-dot (needs AVX512_BF16)"),
    };
    // One distinct matrix per layer, as in the model: 464 MB that cannot
    // stay in the last-level cache between forwards.
    let mut layers: Vec<Vec<PackedMatrix>> = Vec::new();
    let mut candle: Vec<Tensor> = Vec::new();
    for (rows, cols, count) in shapes() {
        let w = values(rows * cols, 0);
        let mut copies = Vec::new();
        for c in 0..count {
            copies.push(pack(&w, rows, cols, c));
        }
        layers.push(copies);
        candle.push(Tensor::from_vec(w, (rows, cols), &Device::Cpu)?.to_dtype(DType::F16)?);
    }
    let weight_bytes: usize = layers.iter().flatten().map(PackedMatrix::bytes).sum();
    println!(
        "{weights} weights per forward: {:.0} MB",
        weight_bytes as f64 / 1e6
    );

    let ms: Vec<usize> = std::env::var("BENCH_M")
        .ok()
        .map(|v| v.split(',').filter_map(|m| m.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64, 256]);
    for m in ms {
        // A forward's worth of products, every layer's own weights.
        let inputs: Vec<Vec<f32>> = layers.iter().map(|l| values(m * l[0].cols(), 0)).collect();
        let mut outputs: Vec<Vec<f32>> =
            layers.iter().map(|l| vec![0f32; m * l[0].rows()]).collect();
        let ours = best_of(repeat, || {
            let depth = layers[0].len();
            for layer in 0..depth {
                for (i, mats) in layers.iter().enumerate() {
                    if let Some(w) = mats.get(layer) {
                        matmul(isa, &inputs[i], m, w, &mut outputs[i]);
                    }
                }
            }
        });
        // candle's fastest f16 route: f16 activations, f16 matmul (one
        // weight per shape, repeated: it only gains from the cache).
        let mut theirs = Duration::ZERO;
        for ((t, mats), x) in candle.iter().zip(&layers).zip(&inputs) {
            let xt =
                Tensor::from_vec(x.clone(), (m, t.dim(1)?), &Device::Cpu)?.to_dtype(DType::F16)?;
            let wt = t.t()?;
            theirs += best_of(repeat, || {
                let _ = xt.matmul(&wt).expect("candle matmul");
            }) * mats.len() as u32;
        }
        let flops = 2.0 * m as f64 * weight_bytes as f64 / 2.0;
        println!(
            "m={m:>3}: ours {:>8.2} ms ({:>6.1} GB/s, {:>6.1} GFLOP/s) | candle f16 {:>8.2} ms | candle/ours {:.2}x",
            ours.as_secs_f64() * 1e3,
            weight_bytes as f64 / ours.as_secs_f64() / 1e9,
            flops / ours.as_secs_f64() / 1e9,
            theirs.as_secs_f64() * 1e3,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // Attention: one layer, 16 heads over 4 KV heads, dim 64, f16 cache.
    let shape = KvShape {
        num_blocks: 1024,
        block_size: 16,
        kv_heads: 4,
        head_dim: 64,
    };
    let mut k_cache = vec![f16::ZERO; shape.elems()];
    let mut v_cache = vec![f16::ZERO; shape.elems()];
    let kv_row = shape.kv_heads * shape.head_dim;
    let slots: Vec<u32> = (0..shape.num_blocks as u32 * 16).collect();
    let kv = values(slots.len() * kv_row, 0);
    write_kv(&shape, &kv, &kv, &slots, &mut k_cache, &mut v_cache);
    let params = AttentionParams {
        num_heads: 16,
        scale: 0.125,
        window: None,
    };
    let table: Vec<u32> = (0..shape.num_blocks as u32).collect();
    for (label, seqs, ctx) in [
        ("decode 16 seqs x 192 ctx", 16, 192),
        ("decode 1 seq x 4000 ctx", 1, 4000),
    ] {
        let q = values(seqs * 16 * 64, 0);
        let spans: Vec<SeqSpan<'_>> = (0..seqs)
            .map(|i| SeqSpan {
                q_start: i,
                q_len: 1,
                ctx_len: ctx,
                block_table: &table[i * 12..],
            })
            .collect();
        let mut out = vec![0f32; q.len()];
        let t = best_of(repeat, || {
            paged_attention(
                isa, &shape, &params, &q, &k_cache, &v_cache, &spans, &mut out,
            )
        });
        println!(
            "attention {label}: {:.3} ms per layer",
            t.as_secs_f64() * 1e3
        );
    }
    for (q_len, ctx) in [(512usize, 512usize), (512, 4000)] {
        let q = values(q_len * 16 * 64, 0);
        let spans = [SeqSpan {
            q_start: 0,
            q_len,
            ctx_len: ctx,
            block_table: &table,
        }];
        let mut out = vec![0f32; q.len()];
        let t = best_of(repeat, || {
            paged_attention(
                isa, &shape, &params, &q, &k_cache, &v_cache, &spans, &mut out,
            )
        });
        // Causal: the chunk's queries see on average ctx - q_len/2 keys.
        let keys = (ctx - q_len / 2) as f64;
        let flops = 4.0 * q_len as f64 * keys * 64.0 * 16.0;
        println!(
            "attention prefill chunk {q_len} at ctx {ctx}: {:.2} ms per layer ({:.1} GFLOP/s)",
            t.as_secs_f64() * 1e3,
            flops / t.as_secs_f64() / 1e9
        );
    }
    Ok(())
}
