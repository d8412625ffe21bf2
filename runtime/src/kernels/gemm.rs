//! `y = x · Wᵀ` on the CPU, for weights packed once at load time.
//!
//! Decode multiplies every weight matrix by a handful of activation rows,
//! so its speed is the speed at which the weights stream from memory; candle
//! 0.11's generic path reaches about a third of that here (measured: F16
//! decode 12.9 tok/s against llama.cpp's 42.3 on the same model and cores).
//! Prefill multiplies them by hundreds of rows, so there the FMA units are
//! the limit. One layout and one micro-kernel serve both:
//!
//! - **Packing.** W (`rows × cols`, row-major as checkpoints store it) is cut
//!   into panels of [`NR`] = 16 rows; inside a panel the 16 values of each
//!   column are contiguous (`panel[k * 16 + r]`). A panel streams through
//!   memory in one linear pass, and one column of it is one (f32: two) SIMD
//!   loads, converted to f32 in registers (F16C / a shift for bf16). Weights
//!   stay in their checkpoint dtype: no f32 copy.
//! - **Micro-kernel.** `MR` activation rows × 16 weight rows of `y`,
//!   accumulated in registers over `k`: per column, the 16 weights are
//!   loaded once and each activation value is broadcast against them
//!   (`2·MR` FMAs per weight load). With few rows the FMA latency chain is
//!   the limit, so the kernel then keeps `U` independent partial sums over
//!   interleaved columns.
//! - **Two panels on AVX-512.** With more rows than one call covers
//!   (prefill, and decode batches past 8 sequences), the kernel takes two
//!   panels at once: up to 12 rows × 32 weight rows in 24 registers, so
//!   each broadcast feeds two FMAs and enough independent sums hide the
//!   FMA latency. `--bench kernels` on the 2-core EPYC (Zen 5, peak 464
//!   GFLOP/s by a pure-FMA loop): m=16 196 → 275 GFLOP/s, m=64 415,
//!   m=128 337 → 425.
//! - **Threads.** Panels (and, for prefill, row blocks) are split across
//!   rayon's pool; a `k` blocking keeps the activation block in L2 while
//!   every panel of a thread's share passes over it.
//!
//! Where the CPU has AVX512_BF16, bf16 weights go to [`bf16_dot`] instead:
//! bf16 products at twice the FMA rate, for the price of rounding the
//! activations to bf16.
//!
//! The same micro-kernel computes attention scores and the probability ×
//! value product (`kernels::attention`): its weight operand takes any
//! stride between columns (`ldw`), which the KV cache layout is built for.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use rayon::prelude::*;

use super::{
    aligned::{AlignedVec, Pod},
    isa::Isa,
};

pub mod bf16_dot;

/// Weight rows per panel: one AVX-512 register, two AVX2 registers of f32.
pub const NR: usize = 16;

/// The dtype packed weights (and the KV cache) are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    F16,
    Bf16,
}

impl WeightDType {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// A weight element: stored narrow, computed in f32.
pub trait Elem: Pod + Default {
    const DTYPE: WeightDType;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = src[i]` as f32, vectorised where the CPU allows.
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

impl Elem for f32 {
    const DTYPE: WeightDType = WeightDType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Elem for f16 {
    const DTYPE: WeightDType = WeightDType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

impl Elem for bf16 {
    const DTYPE: WeightDType = WeightDType::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

/// Storage of a packed matrix in one of the weight dtypes.
#[derive(Debug)]
pub enum PackedData {
    F32(AlignedVec<f32>),
    F16(AlignedVec<f16>),
    Bf16(AlignedVec<bf16>),
    /// bf16 in the layout of the bf16 dot-product kernel ([`bf16_dot`]):
    /// inside a panel, column pair `j` of the 16 rows is 32 values,
    /// `panel[j * 32 + r * 2 + (k % 2)]`, one cache line; an odd last
    /// column is paired with a zero.
    Bf16Pairs(AlignedVec<bf16>),
}

/// A `rows × cols` weight matrix in 16-row panels (see the module doc).
/// Rows past `rows` in the last panel are zero.
#[derive(Debug)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: PackedData,
}

impl PackedMatrix {
    /// Packs row-major `src` (`rows × cols`), converting each value to `E`.
    pub fn pack<S: Copy + Sync, E: Elem>(
        src: &[S],
        rows: usize,
        cols: usize,
        convert: impl Fn(S) -> E + Sync,
    ) -> Self
    where
        PackedData: From<AlignedVec<E>>,
    {
        assert_eq!(src.len(), rows * cols, "packing a {rows}x{cols} matrix");
        let panels = rows.div_ceil(NR);
        let mut out = AlignedVec::<E>::zeroed(panels * cols * NR);
        out.par_chunks_mut(cols * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                let valid = NR.min(rows - p * NR);
                for r in 0..valid {
                    let row = &src[(p * NR + r) * cols..][..cols];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * NR + r] = convert(v);
                    }
                }
            });
        Self {
            rows,
            cols,
            data: out.into(),
        }
    }

    /// Packs row-major `src` (`rows × cols`) for the bf16 dot-product
    /// kernel ([`bf16_dot`]), converting each value to bf16.
    pub fn pack_bf16_pairs<S: Copy + Sync>(
        src: &[S],
        rows: usize,
        cols: usize,
        convert: impl Fn(S) -> bf16 + Sync,
    ) -> Self {
        assert_eq!(src.len(), rows * cols, "packing a {rows}x{cols} matrix");
        let panel_len = cols.div_ceil(2) * 2 * NR;
        let mut out = AlignedVec::<bf16>::zeroed(rows.div_ceil(NR) * panel_len);
        out.par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..NR.min(rows - p * NR) {
                    let row = &src[(p * NR + r) * cols..][..cols];
                    for (k, &v) in row.iter().enumerate() {
                        panel[pair_index(k, r)] = convert(v);
                    }
                }
            });
        Self {
            rows,
            cols,
            data: PackedData::Bf16Pairs(out),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> WeightDType {
        match self.data {
            PackedData::F32(_) => WeightDType::F32,
            PackedData::F16(_) => WeightDType::F16,
            PackedData::Bf16(_) | PackedData::Bf16Pairs(_) => WeightDType::Bf16,
        }
    }

    /// Bytes held (padding of the last panel included).
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(v) => v.bytes(),
            PackedData::F16(v) => v.bytes(),
            PackedData::Bf16(v) | PackedData::Bf16Pairs(v) => v.bytes(),
        }
    }

    /// Row `r` converted back to f32 (tests and embedding-style lookups).
    pub fn row(&self, r: usize) -> Vec<f32> {
        fn get<E: Elem>(d: &[E], r: usize, cols: usize) -> Vec<f32> {
            let panel = &d[(r / NR) * cols * NR..];
            (0..cols).map(|k| panel[k * NR + r % NR].to_f32()).collect()
        }
        match &self.data {
            PackedData::F32(d) => get(d, r, self.cols),
            PackedData::F16(d) => get(d, r, self.cols),
            PackedData::Bf16(d) => get(d, r, self.cols),
            PackedData::Bf16Pairs(d) => {
                let panel = &d[(r / NR) * self.cols.div_ceil(2) * 2 * NR..];
                (0..self.cols)
                    .map(|k| panel[pair_index(k, r % NR)].to_f32())
                    .collect()
            }
        }
    }
}

/// Where column `k` of panel row `r` sits in a [`PackedData::Bf16Pairs`] panel.
fn pair_index(k: usize, r: usize) -> usize {
    (k / 2) * 2 * NR + r * 2 + k % 2
}

impl From<AlignedVec<f32>> for PackedData {
    fn from(v: AlignedVec<f32>) -> Self {
        Self::F32(v)
    }
}
impl From<AlignedVec<f16>> for PackedData {
    fn from(v: AlignedVec<f16>) -> Self {
        Self::F16(v)
    }
}
impl From<AlignedVec<bf16>> for PackedData {
    fn from(v: AlignedVec<bf16>) -> Self {
        Self::Bf16(v)
    }
}

/// `y[m × w.rows()] = x[m × w.cols()] · wᵀ`, on rayon's pool.
pub fn matmul(isa: Isa, x: &[f32], m: usize, w: &PackedMatrix, y: &mut [f32]) {
    assert_eq!(x.len(), m * w.cols, "matmul: x is not {m}x{}", w.cols);
    assert_eq!(y.len(), m * w.rows, "matmul: y is not {m}x{}", w.rows);
    match &w.data {
        PackedData::F32(d) => matmul_typed(isa, x, m, w.rows, w.cols, d, y),
        PackedData::F16(d) => matmul_typed(isa, x, m, w.rows, w.cols, d, y),
        PackedData::Bf16(d) => matmul_typed(isa, x, m, w.rows, w.cols, d, y),
        PackedData::Bf16Pairs(d) => bf16_dot::matmul(x, m, w.rows, w.cols, d, y),
    }
}

/// A raw pointer that may cross to rayon's threads: each task writes a
/// disjoint part of the output.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes, joined before the borrow ends.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Rows of `x` above which the product is blocked for prefill.
const SMALL_M: usize = 8;
/// Activation rows per block in prefill: 64 × KC f32 = 128 KiB, in L2.
const MC: usize = 64;
/// Columns per `k` block in prefill.
const KC: usize = 512;
/// Below this many multiply-adds a product runs on the calling thread:
/// waking the pool costs more.
const SERIAL_WORK: usize = 1 << 16;

fn matmul_typed<E: Elem>(
    isa: Isa,
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    w: &[E],
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let out = SendPtr(y.as_mut_ptr());
    // SAFETY: every (row block, panel) pair is computed by exactly one task
    // (`split_work`), `x` and `w` hold `m × k` and `panels × k × NR`
    // values, and `y` holds `m × n`.
    split_work(m, panels, m * n * k < SERIAL_WORK, |rows, panels| unsafe {
        run_block(isa, x, k, w, out, n, rows, panels)
    });
}

/// Splits an `m`-row product over `units` column units (panels, or pairs
/// of them) into `run(rows, units)` calls on rayon's pool, each cell once:
/// - `serial` (too little work to wake the pool) or one thread: one call;
/// - decode (`m <= SMALL_M`): the weights stream once, in a few shares per
///   thread taken in turn, so that a slow thread (an interrupt, the HTTP
///   runtime) is balanced by the others taking more shares;
/// - prefill: a grid of (row block of `MC`, unit share) cells.
fn split_work(
    m: usize,
    units: usize,
    serial: bool,
    run: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let share = |s: usize, shares: usize| s * units / shares..(s + 1) * units / shares;
    if serial || threads == 1 {
        run(0..m, 0..units);
    } else if m <= SMALL_M {
        let shares = (threads * 4).min(units);
        let next = AtomicUsize::new(0);
        (0..threads).into_par_iter().for_each(|_| {
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= shares {
                    break;
                }
                run(0..m, share(s, shares));
            }
        });
    } else {
        let row_blocks = m.div_ceil(MC);
        let shares = units.min((threads * 4).div_ceil(row_blocks).max(1));
        (0..row_blocks * shares).into_par_iter().for_each(|cell| {
            let (rb, s) = (cell / shares, cell % shares);
            run(rb * MC..m.min((rb + 1) * MC), share(s, shares));
        });
    }
}

/// Computes `y[rows, panels]` with `k` blocking. With more rows than one
/// call of the one-panel kernel covers, and a CPU that has it, the
/// two-panel kernel runs ([`tile_lanes`]): each broadcast activation value
/// then feeds two FMAs, and 2·MR independent sums hide the FMA latency
/// (one panel and 8 rows leave exactly the 8 chains two FMA ports need).
///
/// # Safety
/// `x` is `m × k`, `w` holds at least `panels.end` panels of `k × NR`, `y`
/// (through `out`) is `m × n`, and no other thread writes the same cells.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block<E: Elem>(
    isa: Isa,
    x: &[f32],
    k: usize,
    w: &[E],
    out: SendPtr,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let pair = pair_rows(isa).filter(|_| rows.len() > max_rows(isa));
    let (step, mr_max) = pair.map_or((1, max_rows(isa)), |mr| (2, mr));
    // Decode (a few rows) streams each panel front to back in one call:
    // blocking `k` there (KC) made the weights a run of 16 KiB pieces a
    // panel apart, read in two passes, which the hardware prefetcher
    // followed worse (`--bench kernels` f16 1 row: 14.6-15.8 ms, 29-32
    // GB/s, against 11.7-12.4 for candle's gemm on the same weights).
    let kc_max = if rows.len() <= SMALL_M { k } else { KC };
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        for p in panels.clone().step_by(step) {
            let two = step == 2 && p + 1 < panels.end;
            let nr = (n - p * NR).min(if two { 2 * NR } else { NR });
            // SAFETY: panel `p` (and `p + 1` when `two`) starts at
            // `p * k * NR`; column `k0` of it at `k0 * NR` further.
            let wp = unsafe { w.as_ptr().add(p * k * NR + k0 * NR) };
            for (r0, mr) in row_calls(rows.len(), mr_max, pair.is_some()) {
                let r = rows.start + r0;
                // SAFETY: rows `r..r + mr` exist in `x` and `y`; the call
                // writes columns `p * NR..p * NR + nr` of them. (Converting
                // the panel to f32 once per row block instead measured
                // slower, 56-71 against 85-110 GFLOP/s at 16 rows, AVX2.)
                unsafe {
                    let (xr, yr) = (x.as_ptr().add(r * k + k0), out.0.add(r * n + p * NR));
                    let w1 = if two { wp.add(k * NR) } else { wp };
                    tile_lanes(
                        isa,
                        pair.is_some(),
                        mr,
                        kc,
                        wp,
                        w1,
                        NR,
                        xr,
                        k,
                        yr,
                        n,
                        nr,
                        k0 > 0,
                    )
                };
            }
        }
        k0 += kc;
    }
}

/// `rows` split into consecutive kernel calls of at most `max` rows, as
/// `(first, rows)`: for the two-panel kernel (`even`) as evenly as can be
/// (16 rows by 12: two 8s, not 12 + 4, which would leave the second call
/// too few sums to hide the FMA latency); for the one-panel kernel `max`
/// at a time and the rest last, as it always was (its unrolling depends on
/// the row count, so this keeps its sums' order).
pub fn row_calls(rows: usize, max: usize, even: bool) -> impl Iterator<Item = (usize, usize)> {
    let calls = rows.div_ceil(max);
    (0..calls).map(move |c| {
        if even {
            let lo = rows * c / calls;
            (lo, rows * (c + 1) / calls - lo)
        } else {
            (c * max, max.min(rows - c * max))
        }
    })
}

/// Rows of `x` per call of the two-panel AVX-512 kernel, at most: 24 of
/// the 32 vector registers accumulate.
const PAIR_ROWS: usize = 12;

/// Rows one two-panel [`tile_lanes`] call covers at most, where `isa` has
/// the two-panel kernel (AVX-512: 32 vector registers).
pub fn pair_rows(isa: Isa) -> Option<usize> {
    (isa == Isa::Avx512).then_some(PAIR_ROWS)
}

/// One kernel call over up to 32 weight lanes, so one loop serves both
/// kernels. With `pair` (the CPU has the two-panel kernel, see
/// [`pair_rows`]): `c[t][r] (+)= Σ_k x[t][k] · w[k][r]` for `t < mr` and
/// `r < nr <= 32`, where lanes 0..16 of column `k` are at `w0 + k·ldw` and
/// lanes 16..32 at `w1 + k·ldw` (two panels need not be adjacent: in the
/// KV pool they are two blocks; with `nr <= 16` pass `w1 = w0`, the second
/// half is computed and dropped). Without: [`tile`] over `w0` alone
/// (`nr <= 16`; `w1` unused).
///
/// # Safety
/// As [`tile`], for both halves with `pair`; then `mr <= pair_rows(isa)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn tile_lanes<E: Elem>(
    isa: Isa,
    pair: bool,
    mr: usize,
    kc: usize,
    w0: *const E,
    w1: *const E,
    ldw: usize,
    x: *const f32,
    ldx: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    if !pair {
        // SAFETY: forwarded.
        return unsafe { tile(isa, mr, kc, w0, ldw, x, ldx, c, ldc, nr, accumulate) };
    }
    debug_assert!(
        pair_rows(isa).is_some_and(|m| mr <= m),
        "two-panel call on {isa:?}"
    );
    #[cfg(target_arch = "x86_64")]
    macro_rules! go {
        ($($m:literal),*) => {
            match mr {
                // SAFETY: forwarded; `pair_rows` said AVX-512.
                $($m => unsafe {
                    x86::pair_avx512::<E, $m>(kc, w0, w1, ldw, x, ldx, c, ldc, nr, accumulate)
                },)*
                _ => unreachable!("pair tile of {mr} rows"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    go!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no two-panel kernel on this architecture");
}

/// Rows of `x` one micro-kernel call covers at most.
pub fn max_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8,
        Isa::Avx2 => 6,
        Isa::Generic => 4,
    }
}

/// One micro-kernel call: `c[t][r] (+)= Σ_k x[t][k] · w[k][r]` for
/// `t < mr`, `r < nr`, where `x[t][k]` is at `x + t·ldx + k`, `w[k][r]` at
/// `w + k·ldw + r` and `c[t][r]` at `c + t·ldc + r`. `accumulate` adds to
/// `c` instead of overwriting it.
///
/// All 16 weight lanes of each column are read even when `nr < 16`: the
/// memory behind them must be readable (panels are padded; the KV pool has
/// a tail).
///
/// # Safety
/// The pointers cover the ranges above; `mr <= max_rows(isa)`; `isa` is
/// supported by this CPU.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn tile<E: Elem>(
    isa: Isa,
    mr: usize,
    kc: usize,
    w: *const E,
    ldw: usize,
    x: *const f32,
    ldx: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    macro_rules! go {
        ($f:ident; $($m:literal => $u:literal),*) => {
            match mr {
                $($m => unsafe { $f::<E, $m, $u>(kc, w, ldw, x, ldx, c, ldc, nr, accumulate) },)*
                _ => unreachable!("tile of {mr} rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => go!(tile_avx2; 1 => 4, 2 => 2, 3 => 2, 4 => 1, 5 => 1, 6 => 1),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            go!(tile_avx512; 1 => 8, 2 => 4, 3 => 2, 4 => 2, 5 => 1, 6 => 1, 7 => 1, 8 => 1)
        }
        _ => go!(tile_generic; 1 => 1, 2 => 1, 3 => 1, 4 => 1),
    }
}

#[cfg(target_arch = "x86_64")]
use x86::{tile_avx2, tile_avx512};

/// Portable micro-kernel: the reference the SIMD ones are tested against.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_generic<E: Elem, const MR: usize, const U: usize>(
    kc: usize,
    w: *const E,
    ldw: usize,
    x: *const f32,
    ldx: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    for k in 0..kc {
        // SAFETY: the caller guarantees the ranges (see `tile`).
        let wk = unsafe { std::slice::from_raw_parts(w.add(k * ldw), NR) };
        for (t, row) in acc.iter_mut().enumerate() {
            let xv = unsafe { *x.add(t * ldx + k) };
            for (a, &wv) in row.iter_mut().zip(wk) {
                *a = xv.mul_add(wv.to_f32(), *a);
            }
        }
    }
    for (t, row) in acc.iter().enumerate() {
        for (r, &a) in row.iter().enumerate().take(nr) {
            let cp = unsafe { &mut *c.add(t * ldc + r) };
            *cp = if accumulate { *cp + a } else { a };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Elem, NR, WeightDType};
    use crate::kernels::isa::store_tiles;

    /// Software prefetch distance for streaming weights, in bytes: the
    /// hardware prefetcher alone left m=1 products at 15.6 GB/s here, with
    /// this 19-21 GB/s (a plain streaming read: 23 GB/s).
    const PREFETCH: usize = 1024;

    /// 8 (AVX2) or 16 (AVX-512) consecutive elements as f32 lanes. The
    /// dtype is a constant, so each instantiation keeps one branch.
    #[inline(always)]
    unsafe fn load8<E: Elem>(p: *const E) -> __m256 {
        unsafe {
            match E::DTYPE {
                WeightDType::F32 => _mm256_loadu_ps(p.cast()),
                WeightDType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                WeightDType::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
                )),
            }
        }
    }

    #[inline(always)]
    unsafe fn load16<E: Elem>(p: *const E) -> __m512 {
        unsafe {
            match E::DTYPE {
                WeightDType::F32 => _mm512_loadu_ps(p.cast()),
                WeightDType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
                WeightDType::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())),
                )),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<E: Elem, const MR: usize, const U: usize>(
        kc: usize,
        w: *const E,
        ldw: usize,
        x: *const f32,
        ldx: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        unsafe {
            let mut acc = [[[_mm256_setzero_ps(); 2]; MR]; U];
            let mut k = 0;
            while k + U <= kc {
                if MR <= 2 && ldw == NR {
                    // Few rows: the weights stream and memory is the limit.
                    // Ask for the lines PREFETCH bytes ahead now.
                    let ahead = w.add(k * ldw).cast::<i8>().add(PREFETCH);
                    for line in 0..(U * NR * size_of::<E>()).div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.add(line * 64));
                    }
                }
                for (u, acc_u) in acc.iter_mut().enumerate() {
                    let wp = w.add((k + u) * ldw);
                    let w0 = load8(wp);
                    let w1 = load8(wp.add(8));
                    for (t, a) in acc_u.iter_mut().enumerate() {
                        let xb = _mm256_broadcast_ss(&*x.add(t * ldx + k + u));
                        a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                        a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
                    }
                }
                k += U;
            }
            while k < kc {
                let wp = w.add(k * ldw);
                let w0 = load8(wp);
                let w1 = load8(wp.add(8));
                for (t, a) in acc[0].iter_mut().enumerate() {
                    let xb = _mm256_broadcast_ss(&*x.add(t * ldx + k));
                    a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
                }
                k += 1;
            }
            let (first, rest) = acc.split_at_mut(1);
            for part in rest.iter() {
                for (a, p) in first[0].iter_mut().zip(part) {
                    a[0] = _mm256_add_ps(a[0], p[0]);
                    a[1] = _mm256_add_ps(a[1], p[1]);
                }
            }
            for (t, a) in acc[0].iter().enumerate() {
                let cp = c.add(t * ldc);
                if nr == NR {
                    let (mut lo, mut hi) = (a[0], a[1]);
                    if accumulate {
                        lo = _mm256_add_ps(lo, _mm256_loadu_ps(cp));
                        hi = _mm256_add_ps(hi, _mm256_loadu_ps(cp.add(8)));
                    }
                    _mm256_storeu_ps(cp, lo);
                    _mm256_storeu_ps(cp.add(8), hi);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
                    for (r, v) in tmp.iter().enumerate().take(nr) {
                        let o = &mut *cp.add(r);
                        *o = if accumulate { *o + v } else { *v };
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn pair_avx512<E: Elem, const MR: usize>(
        kc: usize,
        w0: *const E,
        w1: *const E,
        ldw: usize,
        x: *const f32,
        ldx: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for k in 0..kc {
                _mm_prefetch::<_MM_HINT_T0>(w0.add((k + PREFETCH_K) * ldw).cast());
                _mm_prefetch::<_MM_HINT_T0>(w1.add((k + PREFETCH_K) * ldw).cast());
                let a = load16(w0.add(k * ldw));
                let b = load16(w1.add(k * ldw));
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*x.add(t * ldx + k));
                    acc_t[0] = _mm512_fmadd_ps(xb, a, acc_t[0]);
                    acc_t[1] = _mm512_fmadd_ps(xb, b, acc_t[1]);
                }
            }
            store_tiles(&acc, c, ldc, nr, accumulate);
        }
    }

    /// Rows of a panel ahead that the AVX-512 kernels prefetch (4 KiB of
    /// f16). `--bench kernels` f16, 2 runs each: 32 rows ahead 4 rows
    /// 13.3-13.8 ms, 16 rows 21.9-23.3; 64: 12.0-12.1, 20.6-21.8; 128:
    /// 10.0-11.0, 19.4-20.9; 256: 11.3-12.1, 22.0-22.4. (A prefetch past
    /// the panel's end is a harmless hint.)
    const PREFETCH_K: usize = 128;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx512<E: Elem, const MR: usize, const U: usize>(
        kc: usize,
        w: *const E,
        ldw: usize,
        x: *const f32,
        ldx: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); MR]; U];
            let mut k = 0;
            while k + U <= kc {
                // The weights of a decode product stream from memory: ask
                // for them ahead.
                _mm_prefetch::<_MM_HINT_T0>(w.add((k + PREFETCH_K) * ldw).cast());
                for (u, acc_u) in acc.iter_mut().enumerate() {
                    let wv = load16(w.add((k + u) * ldw));
                    for (t, a) in acc_u.iter_mut().enumerate() {
                        let xb = _mm512_set1_ps(*x.add(t * ldx + k + u));
                        *a = _mm512_fmadd_ps(xb, wv, *a);
                    }
                }
                k += U;
            }
            while k < kc {
                let wv = load16(w.add(k * ldw));
                for (t, a) in acc[0].iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*x.add(t * ldx + k));
                    *a = _mm512_fmadd_ps(xb, wv, *a);
                }
                k += 1;
            }
            let (first, rest) = acc.split_at_mut(1);
            for part in rest.iter() {
                for (a, p) in first[0].iter_mut().zip(part) {
                    *a = _mm512_add_ps(*a, *p);
                }
            }
            store_tiles(&acc[0].map(|v| [v]), c, ldc, nr, accumulate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1).
    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f64; m * n];
        for t in 0..m {
            for r in 0..n {
                y[t * n + r] = (0..k)
                    .map(|i| f64::from(x[t * k + i]) * f64::from(w[r * k + i]))
                    .sum();
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn check<E: Elem>(isa: Isa, m: usize, n: usize, k: usize)
    where
        PackedData: From<AlignedVec<E>>,
    {
        let x = values(m * k, 1 + m as u64);
        // Round the weights to E first, so the reference sees what the
        // kernel sees.
        let w: Vec<f32> = values(n * k, 7 + n as u64)
            .into_iter()
            .map(|v| E::from_f32(v).to_f32())
            .collect();
        let packed = PackedMatrix::pack(&w, n, k, E::from_f32);
        let mut y = vec![f32::NAN; m * n];
        matmul(isa, &x, m, &packed, &mut y);
        let want = reference(&x, m, &w, n, k);
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            let tol = 1e-5 * (k as f32).sqrt() * 4.0;
            assert!(
                (a - b).abs() <= tol,
                "{isa:?} {:?} m={m} n={n} k={k}: y[{i}] = {a}, want {b}",
                E::DTYPE
            );
        }
    }

    #[test]
    fn every_isa_and_dtype_matches_a_float64_reference() {
        for isa in Isa::supported() {
            for (m, n, k) in [
                (1, 16, 8),
                (1, 17, 3),
                (2, 40, 33),
                (3, 5, 1),
                (5, 33, 100),
                (7, 64, 64),
                (9, 48, 520),
                (70, 35, 1030),
                (130, 100, 64),
                (1, 1000, 1024),
                // Two-panel kernel (AVX-512, more than 8 rows): every
                // row count per call, a lone last panel, a part-filled pair.
                (12, 64, 9),
                (16, 50, 40),
                (23, 17, 33),
                (24, 33, 17),
                (100, 48, 600),
            ] {
                check::<f32>(isa, m, n, k);
                check::<f16>(isa, m, n, k);
                check::<bf16>(isa, m, n, k);
            }
        }
    }

    #[test]
    fn packing_keeps_every_row() {
        let w = values(37 * 5, 3);
        let p = PackedMatrix::pack(&w, 37, 5, |v: f32| v);
        for r in 0..37 {
            assert_eq!(p.row(r), &w[r * 5..r * 5 + 5]);
        }
        assert_eq!(p.bytes(), 48 * 5 * 4, "3 panels of 16 rows");
    }
}
