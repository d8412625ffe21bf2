//! `cargo bench -p appliance-server --bench quant`: the quantized products
//! (`kernels::quant`) against candle 0.11.1's own quantized matmul
//! (`QMatMul`, its repacked AVX2 tiles where it has them) on the same GGML
//! blocks, same process, same threads. Shapes are the 283M bench model of
//! `shared/bench/vs-llamacpp` (16 layers + LM head, one distinct matrix per
//! layer so the weights stream from memory as in a real forward).
//!
//! Prints, per type and row count: our time for a forward's products in
//! the layout the server loads (the tiles on AVX512-VNNI), the weight
//! bandwidth that implies, the time of the dot kernels on the GGUF rows
//! where that differs, candle's time and candle / ours (above 1: ours
//! faster). Environment: `BENCH_REPEAT` (default 3), `BENCH_M` (default
//! `1,16,128`), `BENCH_TYPES` (default `q4_k,q6_k,q8_0`).

#[path = "common/mod.rs"]
mod common;

use appliance_server::kernels::{
    isa::Isa,
    quant::{QuantMatrix, QuantType, qmatmul},
};
use candle_core::{
    Device, Module, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor},
};
use common::{FFN, HIDDEN, KV, LAYERS, VOCAB, best_of, values};

fn main() -> candle_core::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let repeat: usize = env("BENCH_REPEAT")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ms: Vec<usize> = env("BENCH_M")
        .map(|v| v.split(',').filter_map(|m| m.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 128]);
    let types = env("BENCH_TYPES").unwrap_or_else(|| "q4_k,q6_k,q8_0".into());
    let isa = Isa::best();
    println!(
        "isa {} | rayon threads {} | best of {repeat}",
        isa.name(),
        rayon::current_num_threads()
    );
    let mut shapes = vec![(VOCAB, HIDDEN, 1)];
    for _ in 0..LAYERS {
        shapes.extend([
            (HIDDEN + 2 * KV, HIDDEN, 1),
            (HIDDEN, HIDDEN, 1),
            (2 * FFN, HIDDEN, 1),
            (HIDDEN, FFN, 1),
        ]);
    }
    for name in types.split(',') {
        let (ours_ty, candle_ty) = match name {
            "q4_k" => (QuantType::Q4K, GgmlDType::Q4K),
            "q6_k" => (QuantType::Q6K, GgmlDType::Q6K),
            "q8_0" => (QuantType::Q8_0, GgmlDType::Q8_0),
            "q4_0" => (QuantType::Q4_0, GgmlDType::Q4_0),
            "q5_k" => (QuantType::Q5K, GgmlDType::Q5K),
            other => panic!("BENCH_TYPES: unknown {other}"),
        };
        let mut ours = Vec::new();
        let mut rows_layout = Vec::new();
        let mut theirs = Vec::new();
        for (i, &(rows, cols, _)) in shapes.iter().enumerate() {
            let w = Tensor::from_vec(values(rows * cols, i as u64), (rows, cols), &Device::Cpu)?;
            let q = QTensor::quantize(&w, candle_ty)?;
            let data = q.data()?;
            let matrix = || QuantMatrix::new(ours_ty, rows, cols, &data).expect("same blocks");
            let tiled = matrix().into_tiles(isa);
            if tiled.is_tiled() {
                rows_layout.push(matrix());
            }
            ours.push(tiled);
            theirs.push(QMatMul::from_qtensor(q)?);
        }
        let bytes: usize = ours.iter().map(QuantMatrix::bytes).sum();
        for &m in &ms {
            let xs: Vec<Vec<f32>> = ours.iter().map(|w| values(m * w.cols(), 7)).collect();
            let mut ys: Vec<Vec<f32>> = ours.iter().map(|w| vec![0f32; m * w.rows()]).collect();
            let t_ours = best_of(repeat, || {
                for ((w, x), y) in ours.iter().zip(&xs).zip(ys.iter_mut()) {
                    qmatmul(isa, x, m, w, y);
                }
            });
            let t_rows = (!rows_layout.is_empty()).then(|| {
                best_of(repeat, || {
                    for ((w, x), y) in rows_layout.iter().zip(&xs).zip(ys.iter_mut()) {
                        qmatmul(isa, x, m, w, y);
                    }
                })
            });
            let xts: Vec<Tensor> = ours
                .iter()
                .zip(&xs)
                .map(|(w, x)| Tensor::from_vec(x.clone(), (m, w.cols()), &Device::Cpu))
                .collect::<candle_core::Result<_>>()?;
            let t_candle = best_of(repeat, || {
                for (w, x) in theirs.iter().zip(&xts) {
                    let _ = w.forward(x).expect("candle qmatmul");
                }
            });
            let flops = 2.0
                * m as f64
                * ours
                    .iter()
                    .map(|w| (w.rows() * w.cols()) as f64)
                    .sum::<f64>();
            let rows_ms = t_rows.map_or(String::new(), |t| {
                format!(" | GGUF rows {:>8.2} ms", t.as_secs_f64() * 1e3)
            });
            println!(
                "{name} m={m:>3}: ours {:>8.2} ms ({:>5.1} GB/s, {:>6.1} GFLOP/s){rows_ms} | candle {:>8.2} ms | candle/ours {:.2}x",
                t_ours.as_secs_f64() * 1e3,
                bytes as f64 / t_ours.as_secs_f64() / 1e9,
                flops / t_ours.as_secs_f64() / 1e9,
                t_candle.as_secs_f64() * 1e3,
                t_candle.as_secs_f64() / t_ours.as_secs_f64()
            );
        }
    }
    Ok(())
}
