//! Q4_K, Q6_K and Q8_0 products over several activation rows (prefill
//! chunks, decode batches) on AVX512-VNNI, as outer products over tiles of
//! 16 weight rows. Q4_K is described here; [`q6k`] and [`q8_0`] follow it.
//!
//! The dot kernels (`super::avx512::q4k`) put 64 columns of one weight row
//! in a register against the same columns of one activation row: each
//! `vpmaddubsw` does 64 multiply-adds, but every 32-column sub-block's
//! scale must then be applied by a `vpmaddwd` + `vpaddd` of its own, per
//! activation row — three instructions per 64 products. Here a register
//! holds 4 columns of 16 weight rows (one 32-bit lane per row), an
//! activation row's same 4 bytes are broadcast against it, and `vpdpbusd`
//! accumulates 64 products into the 16 rows' sums; a sub-block's scale is
//! applied once per 32 columns (8 `vpdpbusd`), as llama.cpp's repacked
//! Q4_K GEMM does.
//!
//! The tile is rebuilt from the GGUF blocks for each product (the weights
//! stay in memory once, as the file has them): a 32-bit word of a row's
//! nibbles holds the low halves of 4 consecutive columns of sub-block `2j`
//! and the high halves of the same 4 columns of sub-block `2j + 1`, so a
//! 16 × 16 transposition of 32-bit words is the whole repacking; the
//! kernel splits nibbles with an AND and a shift, shared by the activation
//! rows of a call. (Gathering the words instead cost more than the
//! products themselves below 16 rows: 4 rows 20–22 ms against 10 ms.) The
//! integer sums are those of the dot kernels exactly; each block's sum is
//! scaled in f32 once per (row, block) instead of per lane.

use std::{arch::x86_64::*, cell::RefCell};

use super::{Act, QK_K};

/// Weight rows per tile: one 32-bit lane each.
pub(super) const TILE: usize = 16;

/// A tiled product: `(rows, acts, y, ldy, col0)`, see [`q4k`].
pub(super) type Kernel = unsafe fn(&[&[u8]], &[Act], *mut f32, usize, usize);

/// Activation rows per kernel call: 3 · 6 accumulators (two sub-block
/// sums and the block sum per row) plus the float sums stay in registers.
const MR: usize = 6;

/// Q4_K block bytes: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes.
const BLOCK: usize = 144;

/// Whether this CPU runs the tiles: AVX-512F/BW and VNNI.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// One block (256 columns) of a 16-row tile.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileBlock {
    /// `[j][q][r]`: row r's nibble word for columns `64j + 4q..+4` (low
    /// nibbles) and `64j + 32 + 4q..+4` (high nibbles).
    w: [[[u32; TILE]; 8]; 4],
    /// `[s][r]`: row r's 6-bit scale of sub-block s.
    scale: [[i32; TILE]; 8],
    /// `[s][r]`: row r's 6-bit min of sub-block s, in both i16 halves
    /// (against two 16-column activation sums at once).
    min: [[i32; TILE]; 8],
    d: [f32; TILE],
    dmin: [f32; TILE],
}

const EMPTY: TileBlock = TileBlock {
    w: [[[0; TILE]; 8]; 4],
    scale: [[0; TILE]; 8],
    min: [[0; TILE]; 8],
    d: [0.0; TILE],
    dmin: [0.0; TILE],
};

thread_local! {
    /// The tile being multiplied, reused across products on this thread.
    static TILE_BUF: RefCell<Vec<TileBlock>> = const { RefCell::new(Vec::new()) };
}

/// `y[t][r] = Σ rows[r] · acts[t]` for the (at most 16) weight rows
/// `rows` and every activation row, into `y` at column `col0` of rows of
/// `ldy` floats.
///
/// # Safety
/// [`available`] is true; each of `rows` is `blocks` whole Q4_K blocks and
/// each of `acts` covers as many columns (Q8_K, 16 sums per block); `y`
/// holds `acts.len()` rows of `ldy` floats, and this call alone writes
/// columns `col0..col0 + rows.len()` of them.
pub(super) unsafe fn q4k(rows: &[&[u8]], acts: &[Act], y: *mut f32, ldy: usize, col0: usize) {
    let kernels: [KernelFor<TileBlock>; MR] = [
        kernel::<1>,
        kernel::<2>,
        kernel::<3>,
        kernel::<4>,
        kernel::<5>,
        kernel::<6>,
    ];
    let blocks = rows[0].len() / BLOCK;
    // SAFETY: forwarded.
    unsafe {
        run(
            &TILE_BUF,
            EMPTY,
            blocks,
            rows,
            acts,
            (y, ldy, col0),
            build,
            &kernels,
        )
    }
}

/// One call of a tile's kernel: `(tile, acts, y at the call's first row
/// and column, ldy, mask of the tile's rows)`.
type KernelFor<B> = unsafe fn(&[B], &[Act], *mut f32, usize, __mmask16);

/// Builds the tile of `rows` in this thread's buffer and runs the kernels
/// over the activation rows, `kernels.len()` at a time (`kernels[i]`
/// takes `i + 1` rows).
///
/// # Safety
/// As [`q4k`], for the block type that `build` and `kernels` read.
#[allow(clippy::too_many_arguments)]
unsafe fn run<B: Copy + 'static>(
    buf: &'static std::thread::LocalKey<RefCell<Vec<B>>>,
    empty: B,
    blocks: usize,
    rows: &[&[u8]],
    acts: &[Act],
    (y, ldy, col0): (*mut f32, usize, usize),
    build: unsafe fn(&[&[u8]], &mut [B]),
    kernels: &[KernelFor<B>],
) {
    debug_assert!(!rows.is_empty() && rows.len() <= TILE);
    buf.with_borrow_mut(|tile| {
        // `build` writes every field of every block: no clearing needed.
        if tile.len() < blocks {
            tile.resize(blocks, empty);
        }
        let tile = &mut tile[..blocks];
        // SAFETY: as this function's.
        unsafe { build(rows, tile) };
        let mask = ((1u32 << rows.len()) - 1) as __mmask16;
        let mut t = 0;
        while t < acts.len() {
            let mr = kernels.len().min(acts.len() - t);
            // SAFETY: rows t..t + mr of `y` exist; the columns are ours.
            unsafe { kernels[mr - 1](tile, &acts[t..t + mr], y.add(t * ldy + col0), ldy, mask) };
            t += mr;
        }
    });
}

/// Asks for the rows' memory and returns the first row's address with the
/// other rows' offsets from it (for gathers). The rows of one matrix are
/// one contiguous run: it is prefetched first, in order, rather than met
/// line by line as misses while 16 rows a row apart are read (with
/// gathers this took 4-row Q4_K products from 27–35 to 20–22 ms).
#[target_feature(enable = "avx512f")]
fn fetch(rows: &[&[u8]]) -> (*const u8, __m512i) {
    let base = rows[0].as_ptr();
    let offsets: [i32; TILE] = std::array::from_fn(|r| {
        // Their distance fits i32: 16 rows of a 152k-column Q4_K matrix
        // are 1.4 MB.
        rows.get(r)
            .map_or(0, |row| (row.as_ptr() as isize - base as isize) as i32)
    });
    let span = offsets[rows.len() - 1] as usize + rows[rows.len() - 1].len();
    for line in (0..span).step_by(64) {
        // SAFETY: inside the rows' run.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(line).cast()) };
    }
    // SAFETY: 16 offsets.
    (base, unsafe { _mm512_loadu_si512(offsets.as_ptr().cast()) })
}

/// Builds the tile from the rows' blocks. Missing rows (a last tile of
/// fewer than 16) read row 0 and get zero scales, so they add nothing.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn build(rows: &[&[u8]], tile: &mut [TileBlock]) {
    let (base, idx) = fetch(rows);
    // Lanes of missing rows get zero scales and minimums.
    let valid = ((1u32 << rows.len()) - 1) as __mmask16;
    for (i, tb) in tile.iter_mut().enumerate() {
        // The nibble words: per half block (64 bytes = j 2h and 2h + 1),
        // one load per row and a 16 x 16 transposition of 32-bit words.
        for h in 0..2 {
            // SAFETY: bytes 16 + 64h..80 + 64h of block i in every row
            // (missing rows read row 0); `w` is 4 x 8 x 16 words.
            unsafe {
                let rv: [__m512i; TILE] = std::array::from_fn(|r| {
                    let row = rows.get(r).unwrap_or(&rows[0]);
                    _mm512_loadu_si512(row.as_ptr().add(BLOCK * i + 16 + 64 * h).cast())
                });
                let cols = transpose16(rv);
                let w = tb.w.as_mut_ptr().cast::<__m512i>().add(16 * h);
                for (c, v) in cols.into_iter().enumerate() {
                    _mm512_storeu_si512(w.add(c).cast(), v);
                }
            }
        }
        // Scales and minimums as `scale_min_k4` unpacks them, 16 rows at
        // once: the 12 scale bytes are three gathered words per row.
        // SAFETY: bytes 0..16 of block i in every row.
        unsafe {
            let at = base.add(BLOCK * i);
            let g = |o: usize| _mm512_i32gather_epi32::<1>(idx, at.add(o).cast());
            let (dd, u0, u1, u2) = (g(0), g(4), g(8), g(12));
            let byte = |u: __m512i, b: u32| {
                _mm512_and_si512(
                    _mm512_srlv_epi32(u, _mm512_set1_epi32(8 * b as i32)),
                    _mm512_set1_epi32(0xFF),
                )
            };
            let (k63, k15) = (_mm512_set1_epi32(63), _mm512_set1_epi32(15));
            for s in 0..4u32 {
                let (b0, b1, b2) = (byte(u0, s), byte(u1, s), byte(u2, s));
                let (sc, m) = (_mm512_and_si512(b0, k63), _mm512_and_si512(b1, k63));
                let hi_sc = _mm512_or_si512(
                    _mm512_and_si512(b2, k15),
                    _mm512_slli_epi32::<4>(_mm512_srli_epi32::<6>(b0)),
                );
                let hi_m = _mm512_or_si512(
                    _mm512_srli_epi32::<4>(b2),
                    _mm512_slli_epi32::<4>(_mm512_srli_epi32::<6>(b1)),
                );
                let both = |v: __m512i| _mm512_or_si512(v, _mm512_slli_epi32::<16>(v));
                let st = |dst: &mut [i32; TILE], v: __m512i| {
                    _mm512_storeu_si512(dst.as_mut_ptr().cast(), v)
                };
                let s = s as usize;
                st(
                    &mut tb.scale[s],
                    _mm512_mask_mov_epi32(_mm512_setzero_si512(), valid, sc),
                );
                st(
                    &mut tb.min[s],
                    _mm512_mask_mov_epi32(_mm512_setzero_si512(), valid, both(m)),
                );
                st(
                    &mut tb.scale[s + 4],
                    _mm512_mask_mov_epi32(_mm512_setzero_si512(), valid, hi_sc),
                );
                st(
                    &mut tb.min[s + 4],
                    _mm512_mask_mov_epi32(_mm512_setzero_si512(), valid, both(hi_m)),
                );
            }
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
            let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
            _mm512_storeu_ps(tb.d.as_mut_ptr(), _mm512_maskz_mov_ps(valid, d));
            _mm512_storeu_ps(tb.dmin.as_mut_ptr(), _mm512_maskz_mov_ps(valid, dmin));
        }
    }
}

/// `out[c][r] = rows[r][c]` for 16 registers of 16 words.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // Pairs of rows interleaved by word, then by pairs of words: within
    // each 128-bit lane L of u[4g + k] lie words 4L + k of rows 4g..4g + 4.
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, k) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + k / 2], t[4 * g + 2 + k / 2]);
        if k % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Then the 128-bit lanes: word 4L + k of all rows is lane L of
    // u[k], u[4 + k], u[8 + k], u[12 + k], in that order.
    let mut out = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let (a, b, c, d) = (u[k], u[4 + k], u[8 + k], u[12 + k]);
        let v0 = _mm512_shuffle_i32x4::<0x88>(a, b);
        let v1 = _mm512_shuffle_i32x4::<0xDD>(a, b);
        let w0 = _mm512_shuffle_i32x4::<0x88>(c, d);
        let w1 = _mm512_shuffle_i32x4::<0xDD>(c, d);
        out[k] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        out[4 + k] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        out[8 + k] = _mm512_shuffle_i32x4::<0xDD>(v0, w0);
        out[12 + k] = _mm512_shuffle_i32x4::<0xDD>(v1, w1);
    }
    out
}

/// `R` activation rows against the whole tile.
///
/// # Safety
/// As [`q4k`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel<const R: usize>(
    tile: &[TileBlock],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let m4 = _mm512_set1_epi8(0xF);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_m = [_mm512_setzero_ps(); R];
    for (i, tb) in tile.iter().enumerate() {
        let col = QK_K * i;
        let mut sumi = [_mm512_setzero_si512(); R];
        for j in 0..4 {
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for q in 0..8 {
                // SAFETY: the tile block holds [j][q]; rows cover column
                // `col + 64j + 32 + 4q + 4 <= col + 256`.
                unsafe {
                    let raw = _mm512_loadu_si512(tb.w[j][q].as_ptr().cast());
                    let wl = _mm512_and_si512(raw, m4);
                    let wh = _mm512_and_si512(_mm512_srli_epi32::<4>(raw), m4);
                    for t in 0..R {
                        let x = acts[t].q.as_ptr().add(col + 64 * j + 4 * q);
                        let xl = _mm512_set1_epi32(x.cast::<i32>().read_unaligned());
                        let xh = _mm512_set1_epi32(x.add(32).cast::<i32>().read_unaligned());
                        lo[t] = _mm512_dpbusd_epi32(lo[t], wl, xl);
                        hi[t] = _mm512_dpbusd_epi32(hi[t], wh, xh);
                    }
                }
            }
            // SAFETY: aligned arrays of 16 i32.
            let (sl, sh) = unsafe {
                (
                    _mm512_loadu_si512(tb.scale[2 * j].as_ptr().cast()),
                    _mm512_loadu_si512(tb.scale[2 * j + 1].as_ptr().cast()),
                )
            };
            for t in 0..R {
                sumi[t] = _mm512_add_epi32(
                    sumi[t],
                    _mm512_add_epi32(_mm512_mullo_epi32(lo[t], sl), _mm512_mullo_epi32(hi[t], sh)),
                );
            }
        }
        // SAFETY: aligned arrays of 16 f32 / i32; each act has 16 sums
        // per block.
        unsafe {
            let d = _mm512_loadu_ps(tb.d.as_ptr());
            let dmin = _mm512_loadu_ps(tb.dmin.as_ptr());
            for t in 0..R {
                let a = &acts[t];
                let mut pm = _mm512_setzero_si512();
                let sums = a.sums.as_ptr().add(16 * i);
                for s in 0..8 {
                    let mins = _mm512_loadu_si512(tb.min[s].as_ptr().cast());
                    let pair = _mm512_set1_epi32(sums.add(2 * s).cast::<i32>().read_unaligned());
                    pm = _mm512_dpwssd_epi32(pm, mins, pair);
                }
                let dx = _mm512_set1_ps(*a.d.get_unchecked(i));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
                acc_m[t] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(pm), acc_m[t]);
            }
        }
    }
    for t in 0..R {
        // SAFETY: row t of `y`, the call's columns only.
        unsafe { _mm512_mask_storeu_ps(y.add(t * ldy), mask, _mm512_sub_ps(acc[t], acc_m[t])) };
    }
}

/// Q8_0 block bytes: f16 d, 32 signed bytes.
const Q8_BLOCK: usize = 34;

/// One Q8_0 block (32 columns) of a 16-row tile: `w[q][r]` is row r's
/// weights of columns `4q..4q + 4` plus 128 (as `u8`, what `vpdpbusd`
/// takes unsigned), `d[r]` its scale.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q8Block {
    w: [[u32; TILE]; 8],
    d: [f32; TILE],
}

thread_local! {
    static Q8_BUF: RefCell<Vec<Q8Block>> = const { RefCell::new(Vec::new()) };
}

/// [`q4k`] for Q8_0 weights and Q8_0 activations (with their block sums).
/// `Σ w·x = Σ (w + 128)·x − 128 · Σ x`: exact in i32, then each block is
/// scaled in f32 by `d_w · d_x`, as the dot kernels do.
///
/// # Safety
/// As [`q4k`], with Q8_0 blocks and activations.
pub(super) unsafe fn q8_0(rows: &[&[u8]], acts: &[Act], y: *mut f32, ldy: usize, col0: usize) {
    let kernels: [KernelFor<Q8Block>; MR] = [
        kernel_q8::<1>,
        kernel_q8::<2>,
        kernel_q8::<3>,
        kernel_q8::<4>,
        kernel_q8::<5>,
        kernel_q8::<6>,
    ];
    let empty = Q8Block {
        w: [[0; TILE]; 8],
        d: [0.0; TILE],
    };
    let blocks = rows[0].len() / Q8_BLOCK;
    // SAFETY: forwarded.
    unsafe {
        run(
            &Q8_BUF,
            empty,
            blocks,
            rows,
            acts,
            (y, ldy, col0),
            build_q8,
            &kernels,
        )
    }
}

/// Builds a Q8_0 tile: two blocks' weights per row in one register, one
/// transposition per pair of blocks (an odd last block is paired with
/// itself). Missing rows read row 0 with a zero scale.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn build_q8(rows: &[&[u8]], tile: &mut [Q8Block]) {
    fetch(rows);
    let flip = _mm512_set1_epi8(-128);
    let blocks = tile.len();
    for i in (0..blocks).step_by(2) {
        let i1 = (i + 1).min(blocks - 1);
        // SAFETY: blocks i and i1 are whole in every row (missing rows
        // read row 0).
        unsafe {
            let rv: [__m512i; TILE] = std::array::from_fn(|r| {
                let row = rows.get(r).unwrap_or(&rows[0]).as_ptr();
                let lo = _mm256_loadu_si256(row.add(Q8_BLOCK * i + 2).cast());
                let hi = _mm256_loadu_si256(row.add(Q8_BLOCK * i1 + 2).cast());
                _mm512_xor_si512(
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi),
                    flip,
                )
            });
            let cols = transpose16(rv);
            for (c, v) in cols.into_iter().enumerate() {
                let (b, q) = if c < 8 { (i, c) } else { (i1, c - 8) };
                _mm512_storeu_si512(tile[b].w[q].as_mut_ptr().cast(), v);
            }
        }
        for b in [i, i1] {
            for (r, d) in tile[b].d.iter_mut().enumerate() {
                *d = rows.get(r).map_or(0.0, |row| {
                    let at = Q8_BLOCK * b;
                    half::f16::from_le_bytes([row[at], row[at + 1]]).to_f32()
                });
            }
        }
    }
}

/// `R` activation rows against a whole Q8_0 tile.
///
/// # Safety
/// As [`q8_0`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel_q8<const R: usize>(
    tile: &[Q8Block],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, tb) in tile.iter().enumerate() {
        let mut p = [_mm512_setzero_si512(); R];
        for q in 0..8 {
            // SAFETY: the tile block holds [q]; rows cover columns 32i..32i + 32.
            unsafe {
                let wv = _mm512_loadu_si512(tb.w[q].as_ptr().cast());
                for t in 0..R {
                    let x = acts[t].q.as_ptr().add(32 * i + 4 * q);
                    p[t] = _mm512_dpbusd_epi32(
                        p[t],
                        wv,
                        _mm512_set1_epi32(x.cast::<i32>().read_unaligned()),
                    );
                }
            }
        }
        // SAFETY: 16 scales; each act has one sum and one scale per block.
        unsafe {
            let d = _mm512_loadu_ps(tb.d.as_ptr());
            for t in 0..R {
                let a = &acts[t];
                let xsum = i32::from(*a.sums.get_unchecked(i));
                let exact = _mm512_sub_epi32(p[t], _mm512_set1_epi32(128 * xsum));
                let dx = _mm512_set1_ps(*a.d.get_unchecked(i));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(exact), acc[t]);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: row t of `y`, the call's columns only.
        unsafe { _mm512_mask_storeu_ps(y.add(t * ldy), mask, *a) };
    }
}

/// Q6_K block bytes: 128 low-nibble bytes, 64 bytes of 2-bit highs, 16
/// signed scales, f16 d.
const Q6_BLOCK: usize = 210;

/// Activation rows per Q6_K call: four sub-block sums per row live at once.
const MR6: usize = 4;

/// One Q6_K block of a 16-row tile, as words of 16 rows: `ql[c][r]` is
/// row r's word c of the low-nibble bytes, `qh[c][r]` of the high bits.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q6Block {
    ql: [[u32; TILE]; 32],
    qh: [[u32; TILE]; 16],
    /// `[s][r]`: row r's scale of sub-block s (16 columns).
    scale: [[i32; TILE]; 16],
    /// `[p][r]`: scales of sub-blocks 2p and 2p + 1 as two i16.
    pair: [[i32; TILE]; 8],
    d: [f32; TILE],
}

thread_local! {
    static Q6_BUF: RefCell<Vec<Q6Block>> = const { RefCell::new(Vec::new()) };
}

/// [`q4k`] for Q6_K weights (Q8_K activations). A weight is `u − 32` with
/// `u` in 0..64: the tiles multiply `u` (unsigned, as `vpdpbusd` takes it)
/// and take `32 · Σ scale · (16-column activation sum)` off per block.
///
/// # Safety
/// As [`q4k`], with Q6_K blocks.
pub(super) unsafe fn q6k(rows: &[&[u8]], acts: &[Act], y: *mut f32, ldy: usize, col0: usize) {
    let kernels: [KernelFor<Q6Block>; MR6] = [
        kernel_q6::<1>,
        kernel_q6::<2>,
        kernel_q6::<3>,
        kernel_q6::<4>,
    ];
    let empty = Q6Block {
        ql: [[0; TILE]; 32],
        qh: [[0; TILE]; 16],
        scale: [[0; TILE]; 16],
        pair: [[0; TILE]; 8],
        d: [0.0; TILE],
    };
    let blocks = rows[0].len() / Q6_BLOCK;
    // SAFETY: forwarded.
    unsafe {
        run(
            &Q6_BUF,
            empty,
            blocks,
            rows,
            acts,
            (y, ldy, col0),
            build_q6,
            &kernels,
        )
    }
}

/// Builds a Q6_K tile: three 16 x 16 word transpositions per block (the
/// two halves of `ql`, then `qh`), the scales by gathers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn build_q6(rows: &[&[u8]], tile: &mut [Q6Block]) {
    let (base, idx) = fetch(rows);
    let valid = ((1u32 << rows.len()) - 1) as __mmask16;
    for (i, tb) in tile.iter_mut().enumerate() {
        // SAFETY: bytes 0..192 of block i in every row (missing rows read
        // row 0); the destinations are 16 words each.
        unsafe {
            for (part, dst) in [(0usize, 0usize), (64, 16), (128, 0)] {
                let rv: [__m512i; TILE] = std::array::from_fn(|r| {
                    let row = rows.get(r).unwrap_or(&rows[0]);
                    _mm512_loadu_si512(row.as_ptr().add(Q6_BLOCK * i + part).cast())
                });
                let out = if part < 128 {
                    tb.ql.as_mut_ptr().add(dst).cast::<__m512i>()
                } else {
                    tb.qh.as_mut_ptr().cast::<__m512i>()
                };
                for (c, v) in transpose16(rv).into_iter().enumerate() {
                    _mm512_storeu_si512(out.add(c).cast(), v);
                }
            }
            // Scales: bytes 192..208, four gathered words; d: the high
            // half of the word at 206 (inside the block).
            let at = base.add(Q6_BLOCK * i);
            let g = |o: usize| _mm512_i32gather_epi32::<1>(idx, at.add(o).cast());
            let words = [g(192), g(196), g(200), g(204)];
            for s in 0..16 {
                let w = words[s / 4];
                let shifted = _mm512_slli_epi32::<24>(_mm512_srlv_epi32(
                    w,
                    _mm512_set1_epi32(8 * (s % 4) as i32),
                ));
                let sc = _mm512_maskz_mov_epi32(valid, _mm512_srai_epi32::<24>(shifted));
                _mm512_storeu_si512(tb.scale[s].as_mut_ptr().cast(), sc);
            }
            for p in 0..8 {
                let lo = _mm512_loadu_si512(tb.scale[2 * p].as_ptr().cast());
                let hi = _mm512_loadu_si512(tb.scale[2 * p + 1].as_ptr().cast());
                let v = _mm512_or_si512(
                    _mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)),
                    _mm512_slli_epi32::<16>(hi),
                );
                _mm512_storeu_si512(tb.pair[p].as_mut_ptr().cast(), v);
            }
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(g(206))));
            _mm512_storeu_ps(tb.d.as_mut_ptr(), _mm512_maskz_mov_ps(valid, d));
        }
    }
}

/// `R` activation rows against a whole Q6_K tile.
///
/// # Safety
/// As [`q6k`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel_q6<const R: usize>(
    tile: &[Q6Block],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, tb) in tile.iter().enumerate() {
        let col = QK_K * i;
        let mut sumi = [_mm512_setzero_si512(); R];
        for n in 0..2 {
            for half in 0..2 {
                // Sub-blocks 8n + 2g + half, g = 0..4 (columns 128n + 32g
                // + 16·half..+16), over words q of this half.
                let mut part = [[_mm512_setzero_si512(); R]; 4];
                for q in 4 * half..4 * half + 4 {
                    // SAFETY: words 16n + q and 16n + 8 + q of ql, 8n + q of
                    // qh; the rows cover column col + 128n + 96 + 4q + 4.
                    unsafe {
                        let a = _mm512_loadu_si512(tb.ql[16 * n + q].as_ptr().cast());
                        let b = _mm512_loadu_si512(tb.ql[16 * n + 8 + q].as_ptr().cast());
                        let h = _mm512_loadu_si512(tb.qh[8 * n + q].as_ptr().cast());
                        let v = [
                            _mm512_or_si512(
                                _mm512_and_si512(a, m4),
                                _mm512_and_si512(_mm512_slli_epi32::<4>(h), m30),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(b, m4),
                                _mm512_and_si512(_mm512_slli_epi32::<2>(h), m30),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi32::<4>(a), m4),
                                _mm512_and_si512(h, m30),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi32::<4>(b), m4),
                                _mm512_and_si512(_mm512_srli_epi32::<2>(h), m30),
                            ),
                        ];
                        for t in 0..R {
                            let x = acts[t].q.as_ptr().add(col + 128 * n + 4 * q);
                            for (g, vg) in v.iter().enumerate() {
                                let xb =
                                    _mm512_set1_epi32(x.add(32 * g).cast::<i32>().read_unaligned());
                                part[g][t] = _mm512_dpbusd_epi32(part[g][t], *vg, xb);
                            }
                        }
                    }
                }
                for (g, pg) in part.iter().enumerate() {
                    // SAFETY: 16 scales.
                    let sc = unsafe {
                        _mm512_loadu_si512(tb.scale[8 * n + 2 * g + half].as_ptr().cast())
                    };
                    for t in 0..R {
                        sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(pg[t], sc));
                    }
                }
            }
        }
        // SAFETY: 16 pairs; each act has 16 sums per block.
        unsafe {
            let d = _mm512_loadu_ps(tb.d.as_ptr());
            for t in 0..R {
                let a = &acts[t];
                let sums = a.sums.as_ptr().add(16 * i);
                let mut off = _mm512_setzero_si512();
                for p in 0..8 {
                    let pair = _mm512_loadu_si512(tb.pair[p].as_ptr().cast());
                    let x = _mm512_set1_epi32(sums.add(2 * p).cast::<i32>().read_unaligned());
                    off = _mm512_dpwssd_epi32(off, pair, x);
                }
                let exact = _mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<5>(off));
                let dx = _mm512_set1_ps(*a.d.get_unchecked(i));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(exact), acc[t]);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: row t of `y`, the call's columns only.
        unsafe { _mm512_mask_storeu_ps(y.add(t * ldy), mask, *a) };
    }
}
