//! `y = x · Wᵀ` with bf16 weights and activations, on AVX512_BF16's dot
//! product (`vdpbf16ps`).
//!
//! Why: a prefill or a batch of many sequences is bound by the
//! multiply-adds, not by memory, and the f32 FMA kernels of the parent
//! module already run them at 80-100% of the FMA peak. `vdpbf16ps` does 32
//! multiply-adds of bf16 pairs into 16 f32 sums per instruction, twice
//! what an f32 FMA does, at the same rate on this project's CPU (a C loop
//! on the 2-core EPYC, 12 independent sums: FMA 8.5 G instructions/s, 273
//! GFLOP/s per core; `vdpbf16ps` 8.0 G/s, 512 GFLOP/s). The price is the
//! activations' precision: they are rounded to bf16 (to nearest even)
//! before the product, as PyTorch's and vLLM's bf16 CPU paths do; the
//! products are exact in f32 and every sum is kept in f32.
//!
//! - **Layout.** Weights in 16-row panels as in the parent module, but the
//!   two values of a column pair sit side by side
//!   ([`super::PackedData::Bf16Pairs`]): one 64-byte line is 16 rows × 2
//!   columns, which is one `vdpbf16ps` operand. An activation pair is one
//!   32-bit broadcast.
//! - **One order of sums for every batch.** A row's 32 output lanes are
//!   summed over the column pairs front to back into one register, from
//!   zero, whatever the number of rows in the call or the product: no
//!   blocking of `k` and no partial sums. So a sequence's logits do not
//!   depend on what else is in the batch (tested bitwise). One chain per
//!   register is no limit here: with `vdpbf16ps`' latency of a few cycles,
//!   two chains consume 64 weights per latency, far more than memory
//!   delivers to one core during decode, and prefill has 24 chains.
//! - **Two panels per call**, up to 12 rows: 24 accumulators of the 32
//!   registers, each broadcast feeding two instructions (as the parent's
//!   two-panel f32 kernel). Products of 13 to 24 rows (a decode step of
//!   many sequences) take one panel and all rows per call instead, so each
//!   panel streams from memory once (16 rows: 13.7-14.7 → 12.2-12.8 ms).
//!   The activation block of a prefill chunk stays in L2 without a `k`
//!   blocking because bf16 halves it: 64 rows of a 2816-column input are
//!   360 KiB.

use std::cell::RefCell;

use half::bf16;
use rayon::prelude::*;

use super::{NR, SERIAL_WORK, SendPtr, row_calls, split_work};

/// Rows of `x` per two-panel kernel call, at most (24 accumulators).
pub(crate) const MAX_ROWS: usize = 12;

/// Rows of `x` up to which a product of more than [`MAX_ROWS`] takes the
/// one-panel kernel, all rows in one call: the weights are then read once
/// (a 16-sequence decode step streams them from memory, and two 8-row
/// two-panel calls read every panel twice).
const ONE_PANEL_ROWS: usize = 24;

/// Activation values from which rounding them is split over the pool.
const PARALLEL_ROUNDING: usize = 1 << 16;

/// Whether this CPU has AVX-512F/BW/VL and AVX512_BF16, which the kernels need.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::Isa::Avx512.is_supported()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

thread_local! {
    /// The calling thread's activations as bf16 pairs, kept between calls:
    /// a prefill chunk's are megabytes, which a fresh allocation would
    /// fault in page by page on every product.
    static PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `y[m × n] = x[m × k] · wᵀ` for `w` packed by
/// [`super::PackedMatrix::pack_bf16_pairs`], on rayon's pool.
pub(super) fn matmul(x: &[f32], m: usize, n: usize, k: usize, w: &[bf16], y: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    // Taken out, not borrowed: a product nested in another's parallel
    // region on this thread then finds an empty buffer instead of a
    // borrowed one.
    let mut pairs = PAIRS.with(|p| p.take());
    pairs.resize(m * kp, 0);
    let simd = supported();
    to_pairs(x, m, k, &mut pairs, simd);
    let xp: &[u32] = &pairs;
    let units = n.div_ceil(NR).div_ceil(2);
    let out = SendPtr(y.as_mut_ptr());
    // SAFETY: each (row range, panel pair) is computed by exactly one task
    // (`split_work`); `xp` is `m × kp`, `w` holds every panel of `kp × 32`
    // values, `y` is `m × n`.
    split_work(m, units, m * n * k < SERIAL_WORK, |rows, units| unsafe {
        run_block(simd, xp, kp, w, out, n, rows, units)
    });
    PAIRS.with(|p| p.replace(pairs));
}

/// `x` (`m × k` f32) rounded to bf16, two columns per `u32` (the even
/// column in the low half), rows of `kp` pairs; an odd last column is
/// paired with zero.
fn to_pairs(x: &[f32], m: usize, k: usize, out: &mut [u32], simd: bool) {
    let kp = k.div_ceil(2);
    let round = |(row, dst): (&[f32], &mut [u32])| round_row(row, dst, simd);
    let (x, out) = (&x[..m * k], &mut out[..m * kp]);
    if m * k < PARALLEL_ROUNDING {
        x.chunks_exact(k)
            .zip(out.chunks_exact_mut(kp))
            .for_each(round);
    } else {
        x.par_chunks_exact(k)
            .zip(out.par_chunks_exact_mut(kp))
            .with_min_len(8)
            .for_each(round);
    }
}

/// One row of f32 to bf16 pairs (`dst` holds `row.len().div_ceil(2)`), an
/// odd last value paired with zero. `simd` asks for the AVX-512 path, taken
/// where [`supported`] (both round to nearest even: tested).
pub(crate) fn round_row(row: &[f32], dst: &mut [u32], simd: bool) {
    assert_eq!(dst.len(), row.len().div_ceil(2), "round_row: pairs");
    #[cfg(target_arch = "x86_64")]
    if simd && supported() {
        // SAFETY: `supported()`: the CPU has the features; the lengths
        // were checked.
        return unsafe { x86::round_row(row, dst) };
    }
    let _ = simd;
    for (j, d) in dst.iter_mut().enumerate() {
        let lo = bf16::from_f32(row[2 * j]).to_bits();
        let hi = row
            .get(2 * j + 1)
            .map_or(0, |&v| bf16::from_f32(v).to_bits());
        *d = u32::from(lo) | u32::from(hi) << 16;
    }
}

/// `dst[2i] = a[i]`, `dst[2i + 1] = b[i]` for 16 lanes: two 16-lane rows of
/// a reduction dimension side by side, as the kernel's operand wants them.
///
/// # Safety
/// `a` and `b` hold 16 values, `dst` 32; `simd` only where [`supported`].
pub(crate) unsafe fn interleave(a: *const bf16, b: *const bf16, dst: *mut bf16, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: forwarded.
        return unsafe { x86::interleave(a, b, dst) };
    }
    let _ = simd;
    for i in 0..NR {
        // SAFETY: forwarded.
        unsafe {
            *dst.add(2 * i) = *a.add(i);
            *dst.add(2 * i + 1) = *b.add(i);
        }
    }
}

/// Computes `y[rows, panels 2u..2u + 2]` for every `u` in `units`.
///
/// # Safety
/// As [`matmul`]'s note: `xp` is `m × kp` with `rows` inside `m`, `w` holds
/// every panel of the units, `out` is `m × n`, no other thread writes the
/// same cells, and `simd` only where [`supported`].
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    simd: bool,
    xp: &[u32],
    kp: usize,
    w: &[bf16],
    out: SendPtr,
    n: usize,
    rows: std::ops::Range<usize>,
    units: std::ops::Range<usize>,
) {
    let panels = n.div_ceil(NR);
    let panel_len = kp * 2 * NR;
    for u in units {
        let p = 2 * u;
        let two = p + 1 < panels;
        let nr = (n - p * NR).min(if two { 2 * NR } else { NR });
        // SAFETY: panel `p` (and `p + 1` when `two`) exist.
        let w0 = unsafe { w.as_ptr().add(p * panel_len) };
        let w1 = if two {
            unsafe { w0.add(panel_len) }
        } else {
            w0
        };
        if rows.len() > MAX_ROWS && rows.len() <= ONE_PANEL_ROWS {
            for (h, wp) in [w0, w1].into_iter().enumerate().take(1 + usize::from(two)) {
                // SAFETY: every row of `rows`; the call writes the
                // panel's columns `(p + h) * NR..` of them.
                unsafe {
                    let (x, c) = (
                        xp.as_ptr().add(rows.start * kp),
                        out.0.add(rows.start * n + (p + h) * NR),
                    );
                    let nr = (nr - h * NR).min(NR);
                    tile(simd, rows.len(), kp, wp, wp, x, kp, c, n, nr, false);
                }
            }
            continue;
        }
        for (r0, mr) in row_calls(rows.len(), MAX_ROWS, true) {
            let r = rows.start + r0;
            // SAFETY: rows `r..r + mr` exist in `xp` and `y`; the call
            // writes columns `p * NR..p * NR + nr` of them.
            unsafe {
                let (x, c) = (xp.as_ptr().add(r * kp), out.0.add(r * n + p * NR));
                tile(simd, mr, kp, w0, w1, x, kp, c, n, nr, false);
            }
        }
    }
}

/// One kernel call: `c[t][l] = Σ_j dot(x[t][j], w[j][l])` for `t < mr`,
/// `l < nr <= 32`, where lanes 0..16 are the rows of the panel at `w0` and
/// lanes 16..32 those at `w1` (`w1 = w0` with `nr <= 16`: the second half
/// is computed and dropped), `x[t][j]` (a pair) is at `x + t·ldx + j`, and
/// `c[t][l]` at `c + t·ldc + l` (added to it with `accumulate`). With
/// `MAX_ROWS < mr <= ONE_PANEL_ROWS`
/// the one-panel kernel runs over `w0` alone (then `nr <= 16`): the same
/// sums in the same order.
///
/// # Safety
/// The pointers cover those ranges; `mr <= ONE_PANEL_ROWS`, and `nr <= 16`
/// past `MAX_ROWS`; `simd` only where [`supported`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    simd: bool,
    mr: usize,
    kp: usize,
    w0: *const bf16,
    w1: *const bf16,
    x: *const u32,
    ldx: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        macro_rules! go {
            ($($m:literal),*; $($o:literal),*) => {
                match mr {
                    // SAFETY: forwarded.
                    $($m => unsafe { x86::tile::<$m, 2>(kp, [w0, w1], x, ldx, c, ldc, nr, accumulate) },)*
                    // SAFETY: forwarded; `nr <= 16`.
                    $($o => unsafe { x86::tile::<$o, 1>(kp, [w0, w1], x, ldx, c, ldc, nr, accumulate) },)*
                    _ => unreachable!("bf16 tile of {mr} rows"),
                }
            };
        }
        return go!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12; 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24);
    }
    let _ = simd;
    // SAFETY: forwarded.
    unsafe { tile_generic(mr, kp, w0, w1, x, ldx, c, ldc, nr, accumulate) }
}

/// bf16 bits to f32 (exact).
fn widen(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// The portable kernel, and the definition the SIMD one is tested against:
/// per lane, the odd product and then the even one added to the f32 sum
/// (both exact in f32), as Intel's SDM defines `vdpbf16ps`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_generic(
    mr: usize,
    kp: usize,
    w0: *const bf16,
    w1: *const bf16,
    x: *const u32,
    ldx: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    for t in 0..mr {
        for lane in 0..nr {
            let (w, r) = if lane < NR {
                (w0, lane)
            } else {
                (w1, lane - NR)
            };
            let mut acc = 0f32;
            for j in 0..kp {
                // SAFETY: the caller guarantees the ranges (see `tile`).
                let (xv, we, wo) = unsafe {
                    (
                        *x.add(t * ldx + j),
                        *w.add(j * 2 * NR + r * 2),
                        *w.add(j * 2 * NR + r * 2 + 1),
                    )
                };
                acc += widen(xv >> 16) * wo.to_f32();
                acc += widen(xv & 0xffff) * we.to_f32();
            }
            // SAFETY: as above.
            unsafe {
                let o = c.add(t * ldc + lane);
                *o = if accumulate { *o + acc } else { acc };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::NR;
    use crate::kernels::isa::store_tiles;

    /// Column pairs ahead that the kernel prefetches: 4 KiB of a panel, the
    /// distance the parent's f32 kernels measured best.
    const PREFETCH: usize = 64;

    /// See [`super::interleave`]: one two-source permute (AVX512BW).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn interleave(a: *const bf16, b: *const bf16, dst: *mut bf16) {
        unsafe {
            let ab = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(a.cast())),
                _mm256_loadu_si256(b.cast()),
            );
            // Word 2i from a[i] (index i), word 2i + 1 from b[i] (index 16 + i).
            let idx = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            _mm512_storeu_si512(dst.cast(), _mm512_permutexvar_epi16(idx, ab));
        }
    }

    /// One row of `k` f32 to `kp` bf16 pairs, 16 values a step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_row(row: &[f32], dst: &mut [u32]) {
        let k = row.len();
        let out = dst.as_mut_ptr().cast::<u16>();
        let mut i = 0;
        while i < k {
            let mask = crate::kernels::isa::lanes16(k - i);
            // SAFETY: lanes past `k` are masked off; `dst` holds
            // `k.div_ceil(2) * 2 >= k` halves.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(out.add(i).cast(), mask, h);
            }
            i += 16;
        }
        if k % 2 == 1 {
            // SAFETY: the last pair's high half.
            unsafe { *out.add(k) = 0 };
        }
    }

    /// See [`super::tile`]: `P` panels (`w[..P]`), each broadcast pair
    /// feeding `P` instructions.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const MR: usize, const P: usize>(
        kp: usize,
        w: [*const bf16; 2],
        x: *const u32,
        ldx: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; MR];
            for j in 0..kp {
                let ws: [__m512bh; P] = std::array::from_fn(|h| {
                    _mm_prefetch::<_MM_HINT_T0>(w[h].add((j + PREFETCH) * 2 * NR).cast());
                    std::mem::transmute(_mm512_loadu_si512(w[h].add(j * 2 * NR).cast()))
                });
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let xb: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*x.add(t * ldx + j) as i32));
                    for (a, wh) in acc_t.iter_mut().zip(&ws) {
                        *a = _mm512_dpbf16_ps(*a, *wh, xb);
                    }
                }
            }
            store_tiles(&acc, c, ldc, nr, accumulate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::{PackedMatrix, tests::values},
        *,
    };

    fn round(v: f32) -> f32 {
        bf16::from_f32(v).to_f32()
    }

    /// Every kernel (portable, and AVX512_BF16 where this CPU has it)
    /// against a float64 product of the bf16-rounded operands: the only
    /// error left is the f32 sums'.
    #[test]
    fn bf16_dot_products_match_a_float64_reference() {
        for (m, n, k) in [
            (1, 16, 8),
            (1, 17, 3),
            (2, 40, 33),
            (3, 5, 1),
            (7, 64, 64),
            (9, 48, 521),
            (12, 64, 9),
            (13, 50, 40),
            (16, 33, 77),
            (24, 48, 30),
            (70, 35, 1031),
            (130, 100, 64),
            (1, 1000, 1024),
        ] {
            let x = values(m * k, 1 + m as u64);
            let w = values(n * k, 7 + n as u64);
            let packed = PackedMatrix::pack_bf16_pairs(&w, n, k, bf16::from_f32);
            for r in [0, n / 2, n - 1] {
                let want: Vec<f32> = w[r * k..][..k].iter().map(|&v| round(v)).collect();
                assert_eq!(packed.row(r), want, "row {r} of {n}x{k}");
            }
            let super::super::PackedData::Bf16Pairs(data) = &packed.data else {
                unreachable!()
            };
            // The portable kernel by hand (`matmul` takes the SIMD one
            // where this CPU has it), on one thread.
            let mut pairs = vec![0; m * k.div_ceil(2)];
            to_pairs(&x, m, k, &mut pairs, false);
            let mut y = vec![f32::NAN; m * n];
            let units = n.div_ceil(NR).div_ceil(2);
            // SAFETY: the whole product, on this thread.
            unsafe {
                let out = SendPtr(y.as_mut_ptr());
                run_block(false, &pairs, k.div_ceil(2), data, out, n, 0..m, 0..units);
            }
            check(&x, &w, &y, m, n, k, "portable");
            if supported() {
                let mut y = vec![f32::NAN; m * n];
                super::super::matmul(super::super::Isa::best(), &x, m, &packed, &mut y);
                check(&x, &w, &y, m, n, k, "avx512bf16");
            }
        }
    }

    fn check(x: &[f32], w: &[f32], y: &[f32], m: usize, n: usize, k: usize, which: &str) {
        for t in 0..m {
            for r in 0..n {
                let want: f64 = (0..k)
                    .map(|i| f64::from(round(x[t * k + i])) * f64::from(round(w[r * k + i])))
                    .sum();
                let got = y[t * n + r];
                let tol = 1e-5 * (k as f64).sqrt() * 4.0;
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "{which} m={m} n={n} k={k}: y[{t}][{r}] = {got}, want {want}"
                );
            }
        }
    }

    /// A row's sums do not depend on its batch: one row alone gives the
    /// same bits as the same row inside 1..=40-row products (every kernel
    /// row count, the decode and the prefill split).
    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        let (n, k) = (150, 701);
        let w = values(n * k, 3);
        let packed = PackedMatrix::pack_bf16_pairs(&w, n, k, bf16::from_f32);
        let rows = values(40 * k, 5);
        let isa = super::super::Isa::best();
        let mut alone = vec![0f32; 40 * n];
        for t in 0..40 {
            super::super::matmul(
                isa,
                &rows[t * k..][..k],
                1,
                &packed,
                &mut alone[t * n..][..n],
            );
        }
        for m in [2, 7, 8, 9, 12, 13, 15, 16, 24, 25, 40] {
            let mut y = vec![0f32; m * n];
            super::super::matmul(isa, &rows[..m * k], m, &packed, &mut y);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                alone[..m * n]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "{m} rows"
            );
        }
    }

    /// The SIMD interleave is the portable one.
    #[test]
    fn interleave_puts_two_rows_side_by_side() {
        let a: Vec<bf16> = (0..16).map(|i| bf16::from_f32(i as f32)).collect();
        let b: Vec<bf16> = (0..16).map(|i| bf16::from_f32(-1.0 - i as f32)).collect();
        let want: Vec<bf16> = (0..32)
            .map(|i| if i % 2 == 0 { a[i / 2] } else { b[i / 2] })
            .collect();
        for simd in [false, supported()] {
            let mut dst = vec![bf16::ZERO; 32];
            // SAFETY: 16, 16 and 32 values.
            unsafe { interleave(a.as_ptr(), b.as_ptr(), dst.as_mut_ptr(), simd) };
            assert_eq!(dst, want, "simd {simd}");
        }
    }

    /// The SIMD rounding of activations is the portable one (to nearest
    /// even), ties and an odd tail included.
    #[test]
    fn activations_round_the_same_on_every_path() {
        if !supported() {
            return;
        }
        let mut x = values(3 * 37, 9);
        // Ties: halfway between two bf16 values, both parities.
        x[0] = f32::from_bits(0x3f80_8000);
        x[1] = f32::from_bits(0x3f81_8000);
        let (mut a, mut b) = (vec![0; 3 * 19], vec![1; 3 * 19]);
        to_pairs(&x, 3, 37, &mut a, false);
        to_pairs(&x, 3, 37, &mut b, true);
        assert_eq!(a, b);
    }
}
