//! Q4_K, Q6_K and Q8_0 weights in a tiled layout for AVX512-VNNI: groups
//! of 16 weight rows interleaved 4 bytes at a time, multiplied as outer
//! products. Q4_K is described here; Q6_K and Q8_0 follow it.
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
//! Why the layout is kept rather than built per product (as the first
//! version of these kernels did from the GGUF rows, with 16 × 16 word
//! transpositions): the rebuild was 23% of a 16-sequence decode step of
//! the Q4_K_M bench model in `perf`, and with the tiles in memory every
//! row count runs on them, decode's single row included, so a sequence's
//! sums do not change with the batch it is in (Q6_K's two kernels, for few
//! and for many rows, give the same sums: tested bitwise). The layout
//! costs nothing for Q6_K and Q8_0 and 2.8% for Q4_K (its 6-bit scales
//! take a byte each) over the GGUF bytes, which are not kept: matrices
//! are repacked once at load ([`pack`]), and a row's GGUF bytes are given
//! back exactly ([`unpack_row`]) for the embedding lookup of a tied table.
//!
//! Within a group, each GGUF block (Q8_0: pair of blocks) becomes one
//! tile block: a 32-bit word of a row's Q4_K nibbles holds the low halves
//! of 4 consecutive columns of sub-block `2j` and the high halves of the
//! same 4 columns of sub-block `2j + 1`, so the kernel splits nibbles with
//! an AND and a shift, shared by the activation rows of a call. The
//! integer sums are those of the dot kernels exactly; each block's sum is
//! scaled in f32 once per (row, block) instead of per lane.

use std::{arch::x86_64::*, cell::RefCell};

use super::{Act, QK_K, QuantType};
use crate::kernels::{gemm::row_calls, isa::lanes16};

/// Weight rows per tile: one 32-bit lane each.
pub(super) const TILE: usize = 16;

/// Whether this CPU runs the tiles: AVX-512F/BW and VNNI.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Whether `ty` has a tiled layout.
pub(super) fn has_layout(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4K | QuantType::Q6K | QuantType::Q8_0)
}

/// Bytes of one group of 16 rows of `blocks` GGUF blocks of `ty`: a
/// multiple of 64, so every tile block starts on a cache line.
pub(super) fn group_bytes(ty: QuantType, blocks: usize) -> usize {
    match ty {
        QuantType::Q4K => blocks * size_of::<Q4Tile>(),
        QuantType::Q6K => blocks * size_of::<Q6Tile>(),
        QuantType::Q8_0 => blocks.div_ceil(2) * size_of::<Q8Tile>(),
        _ => unreachable!("no tiled layout for {}", ty.name()),
    }
}

/// One Q4_K block (256 columns) of a 16-row group.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q4Tile {
    /// `[j][q][r]`: row r's nibble word for columns `64j + 4q..+4` (low
    /// nibbles) and `64j + 32 + 4q..+4` (high nibbles): bytes `32j +
    /// 4q..+4` of the block's `qs`.
    w: [[[u32; TILE]; 8]; 4],
    /// `[s][r]`: row r's 6-bit scale of sub-block s.
    scale: [[u8; TILE]; 8],
    /// `[s][r]`: row r's 6-bit min of sub-block s.
    min: [[u8; TILE]; 8],
    /// Row r's f16 `d` and `dmin`, as the file has them.
    d: [u16; TILE],
    dmin: [u16; TILE],
}

/// One Q6_K block of a 16-row group, as words of 16 rows: `w[8n + q]`
/// holds row r's words `16n + q` and `16n + 8 + q` of the low-nibble bytes
/// and word `8n + q` of the high bits, the three registers the kernel
/// combines, side by side so that it reads the block front to back (in
/// the file's order the kernel jumped between three streams, and single
/// rows ran at half the bandwidth: 12.6 against 5.4 ms for the dot kernel
/// in `--bench quant`).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q6Tile {
    w: [[[u32; TILE]; 3]; 16],
    /// `[p][2r + h]`: row r's scale of sub-block `2p + h` (16 columns), so
    /// that a sign extension to i16 gives both scales of a pair per lane.
    pair: [[i8; 2 * TILE]; 8],
    d: [u16; TILE],
}

/// Two Q8_0 blocks (64 columns) of a 16-row group: `w[b][q][r]` is row
/// r's weights of columns `32b + 4q..+4` plus 128 (as `u8`, what
/// `vpdpbusd` takes unsigned), `d[b][r]` its f16 scale. A group of an odd
/// block count ends in a zero block that no kernel reads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q8Tile {
    w: [[[u32; TILE]; 8]; 2],
    d: [[u16; TILE]; 2],
}

const _: () = assert!(size_of::<Q4Tile>() == 2368 && size_of::<Q6Tile>() == 3392);
const _: () = assert!(size_of::<Q8Tile>() == 1088);

/// The tile blocks of one group.
///
/// # Safety
/// `group` is a whole group of `T` written by [`pack`], at a 64-byte
/// aligned address (`T` is plain integers: any bytes are a valid value).
unsafe fn blocks_of<T>(group: &[u8]) -> &[T] {
    debug_assert!(group.len().is_multiple_of(size_of::<T>()));
    debug_assert!((group.as_ptr() as usize).is_multiple_of(align_of::<T>()));
    // SAFETY: as the caller promises.
    unsafe { std::slice::from_raw_parts(group.as_ptr().cast(), group.len() / size_of::<T>()) }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Repacks `rows` GGUF rows of `ty` (`blocks` blocks each, row after row
/// in `gguf`) into groups of 16 rows of [`group_bytes`] each, in `out`
/// (zeroed, `rows.div_ceil(16)` groups). Rows past the last one stay zero:
/// zero scales, so they add nothing and are never stored.
pub(super) fn pack(ty: QuantType, gguf: &[u8], rows: usize, blocks: usize, out: &mut [u8]) {
    let (bb, stride) = (ty.block_bytes(), group_bytes(ty, blocks));
    let row_bytes = blocks * bb;
    for (g, group) in out.chunks_exact_mut(stride).enumerate() {
        let live = TILE.min(rows - TILE * g);
        let src = |r: usize, i: usize| {
            let at = (TILE * g + r) * row_bytes + i * bb;
            &gguf[at..at + bb]
        };
        match ty {
            QuantType::Q4K => {
                // SAFETY: a group of Q4_K tiles (zeroed bytes are valid).
                let tiles = unsafe { blocks_mut::<Q4Tile>(group) };
                for (i, t) in tiles.iter_mut().enumerate() {
                    for r in 0..live {
                        let b = src(r, i);
                        t.d[r] = u16_at(b, 0);
                        t.dmin[r] = u16_at(b, 2);
                        let scales: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
                        for s in 0..8 {
                            (t.scale[s][r], t.min[s][r]) = super::scale_min_k4(s, scales);
                        }
                        for j in 0..4 {
                            for q in 0..8 {
                                t.w[j][q][r] = u32_at(b, 16 + 32 * j + 4 * q);
                            }
                        }
                    }
                }
            }
            QuantType::Q6K => {
                // SAFETY: as above, Q6_K tiles.
                let tiles = unsafe { blocks_mut::<Q6Tile>(group) };
                for (i, t) in tiles.iter_mut().enumerate() {
                    for r in 0..live {
                        let b = src(r, i);
                        for n in 0..2 {
                            for q in 0..8 {
                                let w = &mut t.w[8 * n + q];
                                w[0][r] = u32_at(b, 4 * (16 * n + q));
                                w[1][r] = u32_at(b, 4 * (16 * n + 8 + q));
                                w[2][r] = u32_at(b, 128 + 4 * (8 * n + q));
                            }
                        }
                        for s in 0..16 {
                            t.pair[s / 2][2 * r + s % 2] = b[192 + s] as i8;
                        }
                        t.d[r] = u16_at(b, 208);
                    }
                }
            }
            QuantType::Q8_0 => {
                // SAFETY: as above, Q8_0 tile pairs.
                let tiles = unsafe { blocks_mut::<Q8Tile>(group) };
                for i in 0..blocks {
                    let t = &mut tiles[i / 2];
                    for r in 0..live {
                        let b = src(r, i);
                        t.d[i % 2][r] = u16_at(b, 0);
                        for q in 0..8 {
                            t.w[i % 2][q][r] = u32_at(b, 2 + 4 * q) ^ 0x8080_8080;
                        }
                    }
                }
            }
            _ => unreachable!("no tiled layout for {}", ty.name()),
        }
    }
}

/// [`blocks_of`], writable.
///
/// # Safety
/// As [`blocks_of`].
unsafe fn blocks_mut<T>(group: &mut [u8]) -> &mut [T] {
    debug_assert!(group.len().is_multiple_of(size_of::<T>()));
    debug_assert!((group.as_ptr() as usize).is_multiple_of(align_of::<T>()));
    // SAFETY: as the caller promises.
    unsafe {
        std::slice::from_raw_parts_mut(group.as_mut_ptr().cast(), group.len() / size_of::<T>())
    }
}

/// Row `r`'s GGUF bytes (`blocks` blocks of `ty`) from the groups in
/// `data`, exactly as [`pack`] read them.
pub(super) fn unpack_row(ty: QuantType, data: &[u8], blocks: usize, r: usize, out: &mut [u8]) {
    let (bb, stride) = (ty.block_bytes(), group_bytes(ty, blocks));
    let group = &data[(r / TILE) * stride..(r / TILE + 1) * stride];
    let r = r % TILE;
    for (i, b) in out.chunks_exact_mut(bb).enumerate() {
        match ty {
            QuantType::Q4K => {
                // SAFETY: a group written by `pack`, at a multiple of 64.
                let t = unsafe { &blocks_of::<Q4Tile>(group)[i] };
                b[0..2].copy_from_slice(&t.d[r].to_le_bytes());
                b[2..4].copy_from_slice(&t.dmin[r].to_le_bytes());
                // The inverse of `scale_min_k4`: bytes 0..4 hold scales
                // 0..4 and the top bits of scales 4..8, bytes 4..8 the
                // same for the minimums, bytes 8..12 the low nibbles of
                // scale and minimum 4..8.
                let (sc, mn) = (|s: usize| t.scale[s][r], |s: usize| t.min[s][r]);
                for j in 0..4 {
                    b[4 + j] = sc(j) | (sc(j + 4) >> 4) << 6;
                    b[8 + j] = mn(j) | (mn(j + 4) >> 4) << 6;
                    b[12 + j] = (sc(j + 4) & 0xF) | (mn(j + 4) & 0xF) << 4;
                }
                for j in 0..4 {
                    for q in 0..8 {
                        let at = 16 + 32 * j + 4 * q;
                        b[at..at + 4].copy_from_slice(&t.w[j][q][r].to_le_bytes());
                    }
                }
            }
            QuantType::Q6K => {
                // SAFETY: as above.
                let t = unsafe { &blocks_of::<Q6Tile>(group)[i] };
                let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                for n in 0..2 {
                    for q in 0..8 {
                        let w = &t.w[8 * n + q];
                        put(4 * (16 * n + q), w[0][r]);
                        put(4 * (16 * n + 8 + q), w[1][r]);
                        put(128 + 4 * (8 * n + q), w[2][r]);
                    }
                }
                for s in 0..16 {
                    b[192 + s] = t.pair[s / 2][2 * r + s % 2] as u8;
                }
                b[208..210].copy_from_slice(&t.d[r].to_le_bytes());
            }
            QuantType::Q8_0 => {
                // SAFETY: as above.
                let t = unsafe { &blocks_of::<Q8Tile>(group)[i / 2] };
                b[0..2].copy_from_slice(&t.d[i % 2][r].to_le_bytes());
                for q in 0..8 {
                    let w = t.w[i % 2][q][r] ^ 0x8080_8080;
                    b[2 + 4 * q..6 + 4 * q].copy_from_slice(&w.to_le_bytes());
                }
            }
            _ => unreachable!("no tiled layout for {}", ty.name()),
        }
    }
}

/// `[f::<1>, f::<2>, ...]`: a kernel's instances by row count, entry `i`
/// taking `i + 1` rows (as [`run`] indexes them).
macro_rules! by_rows {
    ($f:ident; $($r:literal),*) => {
        [$($f::<$r>),*]
    };
}

/// One call of a group's kernel: `(tile blocks, acts, y at the call's
/// first row and column, ldy, mask of the group's live rows)`.
type KernelFor<B> = unsafe fn(&[B], &[Act], *mut f32, usize, __mmask16);

/// `y[t][col0 + r] = Σ row r · acts[t]` for the `live` rows of one group
/// (`group`, [`group_bytes`] of `ty`) and every activation row, into `y`
/// of rows of `ldy` floats.
///
/// # Safety
/// [`available`] is true; `group` was written by [`pack`] for `ty` at a
/// 64-byte aligned address; each of `acts` covers the group's columns in
/// `ty`'s activation format; `y` holds `acts.len()` rows of `ldy` floats,
/// and this call alone writes columns `col0..col0 + live` of them.
pub(super) unsafe fn product(
    ty: QuantType,
    group: &[u8],
    live: usize,
    acts: &[Act],
    (y, ldy, col0): (*mut f32, usize, usize),
) {
    debug_assert!(live > 0 && live <= TILE);
    let mask = lanes16(live);
    // SAFETY: forwarded; the group holds `ty`'s tile blocks.
    unsafe {
        match ty {
            // Up to 8 rows a call: two sub-block sums, the block sum and
            // one float sum per row (the minimum terms are subtracted from
            // the same sum, not kept apart). 6 rows with a separate
            // minimum sum measured 4-6% slower (`--bench quant` Q4_K 8 rows
            // 7.5 / 6.9-7.1 ms, 16 rows 10.9-11.1 / 10.2-10.7, 128 rows 56.6
            // / 52.3-53.4).
            QuantType::Q4K => run(
                blocks_of::<Q4Tile>(group),
                acts,
                (y, ldy, col0, mask),
                &by_rows!(kernel; 1, 2, 3, 4, 5, 6, 7, 8),
            ),
            // Up to 4 rows the weights are rebuilt in registers, per
            // call; above, once per block into L1 for every row
            // (`product_q6`). `--bench quant` Q6_K, registers / L1: 1 row
            // 5.8-6.5 / 7.8-11.9 ms, 4 rows 7.7-9.6 / 9.1-9.5, 16 rows
            // 17.6-18.9 / 16.2-16.4, 128 rows 80-86 / 64-68.
            QuantType::Q6K if acts.len() <= 4 => run(
                blocks_of::<Q6Tile>(group),
                acts,
                (y, ldy, col0, mask),
                &by_rows!(kernel_q6; 1, 2, 3, 4),
            ),
            QuantType::Q6K => product_q6(blocks_of::<Q6Tile>(group), acts, (y, ldy, col0, mask)),
            QuantType::Q8_0 => run(
                blocks_of::<Q8Tile>(group),
                acts,
                (y, ldy, col0, mask),
                &by_rows!(kernel_q8; 1, 2, 3, 4, 5, 6),
            ),
            _ => unreachable!("no tiled layout for {}", ty.name()),
        }
    }
}

/// Runs the kernels over the activation rows, `kernels.len()` at a time
/// (`kernels[i]` takes `i + 1` rows; a row's sums do not depend on which).
///
/// # Safety
/// As [`product`].
unsafe fn run<B>(
    tiles: &[B],
    acts: &[Act],
    (y, ldy, col0, mask): (*mut f32, usize, usize, __mmask16),
    kernels: &[KernelFor<B>],
) {
    for (t, mr) in row_calls(acts.len(), kernels.len(), false) {
        // SAFETY: rows t..t + mr of `y` exist; the columns are ours.
        unsafe { kernels[mr - 1](tiles, &acts[t..t + mr], y.add(t * ldy + col0), ldy, mask) };
    }
}

/// Bytes of the next group asked for ahead ([`prefetch_group`]): its first
/// blocks, after which the kernels' own one-block-ahead prefetch keeps up.
/// (The whole group, 13-37 KiB, cost 5.9% of a 16-row decode step's
/// samples in the prefetch loop itself.)
pub(super) const GROUP_PREFETCH: usize = 8192;

/// Asks for the start of a group into L2 before its product starts (called for
/// the next group while this one is multiplied). Within a group the
/// kernels fetch one block ahead, but each group's first block was a miss
/// met with nothing else to do: in `perf annotate` of a 16-row Q6_K
/// product its first load took 12% of the kernel's samples (`--bench
/// quant` 128 rows, prefetching the whole group then: Q4_K 62.6 →
/// 52.6–53.9 ms, Q6_K 86 → 80–83; the first 8 KiB since, no slower).
pub(super) fn prefetch_group(group: &[u8]) {
    debug_assert!(group.len() <= GROUP_PREFETCH);
    for line in (0..group.len()).step_by(64) {
        // SAFETY: prefetching is a hint; the address is inside `group`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(group.as_ptr().add(line).cast()) };
    }
}

/// Asks for the next tile block while this one is multiplied. The
/// hardware prefetcher alone left the first pass over a group short of
/// the bandwidth (`--bench quant`, Q6_K 4 rows 10.0 → 7.7 ms, 16 rows
/// 20.2 → 18.3).
#[inline(always)]
fn prefetch<B>(next: Option<&B>) {
    if let Some(next) = next {
        let p: *const i8 = (next as *const B).cast();
        for line in (0..size_of::<B>()).step_by(64) {
            // SAFETY: prefetching is a hint; the address is inside `next`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(line)) };
        }
    }
}

/// 16 f16 values to f32.
///
/// # Safety
/// AVX-512F and F16C.
#[inline(always)]
unsafe fn f16x16(v: &[u16; TILE]) -> __m512 {
    // SAFETY: 32 bytes.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().cast())) }
}

/// `R` activation rows against a group's Q4_K tiles.
///
/// # Safety
/// As [`product`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel<const R: usize>(
    tile: &[Q4Tile],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let m4 = _mm512_set1_epi8(0xF);
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, tb) in tile.iter().enumerate() {
        prefetch(tile.get(i + 1));
        let col = QK_K * i;
        let mut sumi = [_mm512_setzero_si512(); R];
        for j in 0..4 {
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for q in 0..8 {
                // SAFETY: the tile block holds [j][q]; rows cover column
                // `col + 64j + 32 + 4q + 4 <= col + 256`.
                unsafe {
                    let raw = _mm512_load_si512(tb.w[j][q].as_ptr().cast());
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
            // SAFETY: 16 bytes each.
            let (sl, sh) = unsafe {
                (
                    _mm512_cvtepu8_epi32(_mm_load_si128(tb.scale[2 * j].as_ptr().cast())),
                    _mm512_cvtepu8_epi32(_mm_load_si128(tb.scale[2 * j + 1].as_ptr().cast())),
                )
            };
            for t in 0..R {
                sumi[t] = _mm512_add_epi32(
                    sumi[t],
                    _mm512_add_epi32(_mm512_mullo_epi32(lo[t], sl), _mm512_mullo_epi32(hi[t], sh)),
                );
            }
        }
        // The minimums in both i16 halves of each lane, against two
        // 16-column activation sums at once.
        // SAFETY: 16 bytes each.
        let mins: [__m512i; 8] = std::array::from_fn(|s| unsafe {
            let v = _mm512_cvtepu8_epi32(_mm_load_si128(tb.min[s].as_ptr().cast()));
            _mm512_or_si512(v, _mm512_slli_epi32::<16>(v))
        });
        // SAFETY: 16 f16 each; each act has 16 sums and a scale per block.
        unsafe {
            let d = f16x16(&tb.d);
            let dmin = f16x16(&tb.dmin);
            for t in 0..R {
                let a = &acts[t];
                let mut pm = _mm512_setzero_si512();
                let sums = a.sums.as_ptr().add(16 * i);
                for (s, m) in mins.iter().enumerate() {
                    let pair = _mm512_set1_epi32(sums.add(2 * s).cast::<i32>().read_unaligned());
                    pm = _mm512_dpwssd_epi32(pm, *m, pair);
                }
                let dx = _mm512_set1_ps(*a.d.get_unchecked(i));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(pm), acc[t]);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: row t of `y`, the call's columns only.
        unsafe { _mm512_mask_storeu_ps(y.add(t * ldy), mask, *a) };
    }
}

/// `R` activation rows against a group's Q8_0 tiles. `Σ w·x = Σ (w +
/// 128)·x − 128 · Σ x`: exact in i32, then each block is scaled in f32 by
/// `d_w · d_x`, as the dot kernels do.
///
/// # Safety
/// As [`product`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel_q8<const R: usize>(
    tile: &[Q8Tile],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    // The activations' block count: a padded last tile's zero block is
    // not read.
    let blocks = acts[0].d.len();
    for i in 0..blocks {
        let (tb, b) = (&tile[i / 2], i % 2);
        if b == 0 {
            prefetch(tile.get(i / 2 + 1));
        }
        let mut p = [_mm512_setzero_si512(); R];
        for q in 0..8 {
            // SAFETY: the tile block holds [b][q]; rows cover columns 32i..32i + 32.
            unsafe {
                let wv = _mm512_load_si512(tb.w[b][q].as_ptr().cast());
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
            let d = f16x16(&tb.d[b]);
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

/// A Q6_K tile block with its weights rebuilt: `v[s][k]` holds columns
/// `16s + 4k..+4` of the 16 rows as `u` (0..64), `scale[s]` sub-block s's
/// scales, `pair[p]` those of sub-blocks 2p and 2p + 1 as two i16 per
/// lane, `d` the rows' scales in f32.
#[repr(C, align(64))]
struct Q6Unpacked {
    v: [[__m512i; 4]; 16],
    scale: [__m512i; 16],
    pair: [__m512i; 8],
    d: __m512,
}

thread_local! {
    /// The rebuilt block of a [`product_q6`], one per thread: every field
    /// is written before it is read, and zeroing 5.6 KiB per 16-row group
    /// showed as `memset` in a decode step's profile.
    static Q6_SCRATCH: RefCell<Box<Q6Unpacked>> = RefCell::new(Box::new(Q6Unpacked {
        v: [[zero(); 4]; 16],
        scale: [zero(); 16],
        pair: [zero(); 8],
        d: zero_ps(),
    }));
}

/// A zero register outside `#[target_feature]` code (AVX-512F is only
/// known to be present at run time).
fn zero() -> __m512i {
    // SAFETY: `__m512i` is plain bits; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

fn zero_ps() -> __m512 {
    // SAFETY: as `zero`.
    unsafe { std::mem::zeroed() }
}

/// Activation rows per Q6_K row pass: two sums per row live at once.
const MR6: usize = 8;

/// A group's Q6_K product: each tile block is rebuilt once into a
/// [`Q6Unpacked`] in L1, then every run of [`MR6`] activation rows passes
/// over it, adding into `y` (which holds the sums between blocks).
///
/// Why: rebuilding a 6-bit weight costs 17 vector operations per 4 words,
/// and the kernel that rebuilt them in registers for every call could hold
/// only 4 rows' sums (four sub-blocks' at a time), so a 16-row decode step
/// rebuilt each block four times; the LM head of a Q4_K_M file is Q6_K,
/// and it ran at 1.5× the Q4_K kernel's time per weight.
///
/// # Safety
/// As [`product`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn product_q6(
    tile: &[Q6Tile],
    acts: &[Act],
    (y, ldy, col0, mask): (*mut f32, usize, usize, __mmask16),
) {
    let passes: [Q6Pass; MR6] = by_rows!(q6_rows; 1, 2, 3, 4, 5, 6, 7, 8);
    Q6_SCRATCH.with_borrow_mut(|u| {
        for (i, tb) in tile.iter().enumerate() {
            prefetch(tile.get(i + 1));
            // SAFETY: the caller's target features.
            unsafe { unpack_q6(tb, u) };
            for (t, r) in row_calls(acts.len(), MR6, false) {
                // SAFETY: rows t..t + r of `y`, the group's columns; each
                // act covers block i.
                unsafe { passes[r - 1](u, &acts[t..t + r], i, y.add(t * ldy + col0), ldy, mask) };
            }
        }
    });
}

/// One row pass: `(block, acts, block index, y at the pass's first row and
/// the group's column, ldy, live rows)`.
type Q6Pass = unsafe fn(&Q6Unpacked, &[Act], usize, *mut f32, usize, __mmask16);

/// The 6-bit values of word `q` of half `n` of a Q6_K tile block (`w` =
/// `tb.w[8n + q]`) for its four sub-blocks `8n + 2g + q / 4`, g = 0..4:
/// each byte is a low nibble with two high bits above it.
///
/// # Safety
/// AVX-512F (inlined into the kernels).
#[inline(always)]
unsafe fn q6_values(w: &[[u32; TILE]; 3]) -> [__m512i; 4] {
    // SAFETY: three aligned registers' worth; the caller's features.
    unsafe {
        let m4 = _mm512_set1_epi8(0xF);
        let m30 = _mm512_set1_epi8(0x30);
        let a = _mm512_load_si512(w[0].as_ptr().cast());
        let b = _mm512_load_si512(w[1].as_ptr().cast());
        let h = _mm512_load_si512(w[2].as_ptr().cast());
        let join = |lo: __m512i, hi: __m512i| {
            _mm512_or_si512(_mm512_and_si512(lo, m4), _mm512_and_si512(hi, m30))
        };
        [
            join(a, _mm512_slli_epi32::<4>(h)),
            join(b, _mm512_slli_epi32::<2>(h)),
            join(_mm512_srli_epi32::<4>(a), h),
            join(_mm512_srli_epi32::<4>(b), _mm512_srli_epi32::<2>(h)),
        ]
    }
}

/// Rebuilds block `tb` into `u`.
///
/// # Safety
/// AVX-512F/BW (inlined into [`product_q6`]).
#[inline(always)]
unsafe fn unpack_q6(tb: &Q6Tile, u: &mut Q6Unpacked) {
    // SAFETY: aligned fields of `tb`; the caller's target features.
    unsafe {
        for n in 0..2 {
            for q in 0..8 {
                // Word q of half n: sub-blocks 8n + 2g + q / 4, word q % 4.
                let v = q6_values(&tb.w[8 * n + q]);
                for (g, vg) in v.into_iter().enumerate() {
                    u.v[8 * n + 2 * g + q / 4][q % 4] = vg;
                }
            }
        }
        for p in 0..8 {
            let pv = _mm512_cvtepi8_epi16(_mm256_load_si256(tb.pair[p].as_ptr().cast()));
            u.pair[p] = pv;
            u.scale[2 * p] = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pv));
            u.scale[2 * p + 1] = _mm512_srai_epi32::<16>(pv);
        }
        u.d = f16x16(&tb.d);
    }
}

/// `R` activation rows against one rebuilt Q6_K block (block `i` of the
/// group), added into `y` (set on block 0).
///
/// # Safety
/// As [`product_q6`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_rows<const R: usize>(
    u: &Q6Unpacked,
    acts: &[Act],
    i: usize,
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let col = QK_K * i;
    let mut sumi = [_mm512_setzero_si512(); R];
    for s in 0..16 {
        let mut p = [_mm512_setzero_si512(); R];
        for k in 0..4 {
            let v = u.v[s][k];
            for t in 0..R {
                // SAFETY: the act covers column col + 16s + 4k + 4.
                let x = unsafe { acts[t].q.as_ptr().add(col + 16 * s + 4 * k) };
                // SAFETY: as above.
                let xb = _mm512_set1_epi32(unsafe { x.cast::<i32>().read_unaligned() });
                p[t] = _mm512_dpbusd_epi32(p[t], v, xb);
            }
        }
        for t in 0..R {
            sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(p[t], u.scale[s]));
        }
    }
    for t in 0..R {
        let a = &acts[t];
        // SAFETY: each act has 16 sums and a scale per block; row t of `y`
        // holds the group's live columns.
        unsafe {
            let sums = a.sums.as_ptr().add(16 * i);
            let mut off = _mm512_setzero_si512();
            for (p, pv) in u.pair.iter().enumerate() {
                let x = _mm512_set1_epi32(sums.add(2 * p).cast::<i32>().read_unaligned());
                off = _mm512_dpwssd_epi32(off, *pv, x);
            }
            let exact = _mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<5>(off));
            let dx = _mm512_set1_ps(*a.d.get_unchecked(i));
            let row = y.add(t * ldy);
            let before = if i == 0 {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(mask, row)
            };
            let sum = _mm512_fmadd_ps(_mm512_mul_ps(u.d, dx), _mm512_cvtepi32_ps(exact), before);
            _mm512_mask_storeu_ps(row, mask, sum);
        }
    }
}

/// `R` activation rows against a group's Q6_K tiles. A weight is `u − 32`
/// with `u` in 0..64: the tiles multiply `u` (unsigned, as `vpdpbusd`
/// takes it) and take `32 · Σ scale · (16-column activation sum)` off per
/// block.
///
/// # Safety
/// As [`product`]; `acts.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel_q6<const R: usize>(
    tile: &[Q6Tile],
    acts: &[Act],
    y: *mut f32,
    ldy: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, tb) in tile.iter().enumerate() {
        let col = QK_K * i;
        prefetch(tile.get(i + 1));
        // Pair p: the scales of sub-blocks 2p and 2p + 1 as two i16 per
        // lane, loaded where used (held in registers for the whole block
        // they were spilled and indexed on the stack: `--bench quant`
        // Q6_K 128 rows 93 → 86 ms).
        // SAFETY: 32 bytes.
        let pair = |p: usize| unsafe {
            _mm512_cvtepi8_epi16(_mm256_load_si256(tb.pair[p].as_ptr().cast()))
        };
        let mut sumi = [_mm512_setzero_si512(); R];
        for n in 0..2 {
            for half in 0..2 {
                // Sub-blocks 8n + 2g + half, g = 0..4 (columns 128n + 32g
                // + 16·half..+16), over words q of this half.
                let mut part = [[_mm512_setzero_si512(); R]; 4];
                for q in 4 * half..4 * half + 4 {
                    // SAFETY: the block holds w[8n + q]; the rows cover column
                    // col + 128n + 96 + 4q + 4.
                    unsafe {
                        let v = q6_values(&tb.w[8 * n + q]);
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
                    // Sub-block 8n + 2g + half: pair 4n + g, the low or
                    // high i16 of each lane, sign-extended.
                    let pv = pair(4 * n + g);
                    let sc = if half == 0 {
                        _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pv))
                    } else {
                        _mm512_srai_epi32::<16>(pv)
                    };
                    for t in 0..R {
                        sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(pg[t], sc));
                    }
                }
            }
        }
        // SAFETY: 16 f16; each act has 16 sums and a scale per block.
        unsafe {
            let d = f16x16(&tb.d);
            for t in 0..R {
                let a = &acts[t];
                let sums = a.sums.as_ptr().add(16 * i);
                let mut off = _mm512_setzero_si512();
                for p in 0..8 {
                    let x = _mm512_set1_epi32(sums.add(2 * p).cast::<i32>().read_unaligned());
                    off = _mm512_dpwssd_epi32(off, pair(p), x);
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
