//! `cargo bench --bench sha256_pair`: the two digests a first build computes per weight byte
//! (the file's and its layer's), with `digest::dual` against two `sha2::Sha256` on one core,
//! measured in the same run. Prints MB/s of weights and the ratio.

use std::time::Instant;

use appliance::digest::dual::{StreamHasher, update_both};
use sha2::{Digest as _, Sha256};

fn main() {
    const MIB: usize = 1 << 20;
    let data: Vec<u8> = (0..256 * MIB as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let header = [0u8; 512];
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        let (mut layer, mut file) = (Sha256::new(), Sha256::new());
        layer.update(header);
        for piece in data.chunks(MIB) {
            layer.update(piece);
            file.update(piece);
        }
        std::hint::black_box((layer.finalize(), file.finalize()));
        let two_sha2 = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let (mut layer, mut file) = (StreamHasher::new(), StreamHasher::new());
        layer.update(&header);
        for piece in data.chunks(MIB) {
            update_both(&mut layer, &mut file, piece);
        }
        std::hint::black_box((layer.finish(), file.finish()));
        let dual = start.elapsed().as_secs_f64();
        best = (best.0.min(two_sha2), best.1.min(dual));
    }
    let mb = data.len() as f64 / 1e6;
    println!("two sha2::Sha256 streams  {:>6.0} MB/s", mb / best.0);
    println!("digest::dual              {:>6.0} MB/s", mb / best.1);
    println!("ratio                     {:>6.2}x", best.0 / best.1);
}
