//! Paged attention on the CPU: queries of many sequences against their
//! blocks in the KV pool, with online softmax (no score matrix beyond one
//! 16-key tile per query row), grouped-query sharing and causal / sliding
//! window masks.
//!
//! Work is split into tasks of (sequence, KV head, run of query tokens):
//! the query heads of one KV head's group are processed together so each
//! key and value is converted from the cache dtype once per task, and the
//! scores (`Q·Kᵀ`) and the weighted values (`P·V`) both run on the GEMM
//! micro-kernel ([`super::gemm::tile`]). That is why the pool layout is
//! what it is (per layer, `bs` = block size, a multiple of 16):
//!
//! - keys `[block][kv_head][head_dim][bs]`: 16 consecutive keys of one head
//!   are one kernel column, so the keys of a block are a weight panel;
//! - values `[block][bs][kv_head][head_dim]` (one row per token): 16
//!   consecutive dims of one value row are one kernel column.
//!
//! Both buffers carry a tail of [`KV_TAIL`] elements because the kernel
//! reads all 16 lanes of a column even when a head has fewer dims.
//!
//! A bf16 pool in a prefill task (more query rows than the one-panel
//! kernel takes), on a CPU with AVX512_BF16, takes the bf16 dot-product
//! kernel for both products instead ([`DotBuffers`]): each 64-key chunk's
//! keys and values are regrouped into its pair layout (one permute per 16
//! lanes) and the queries and probabilities rounded to bf16. A 4000-token
//! prompt of the bench model: 4.07-4.62 → 3.58-3.73 s.

use rayon::prelude::*;

use half::bf16;

use super::{
    gemm::{Elem, NR, WeightDType, bf16_dot, max_rows, pair_rows, row_calls, tile, tile_lanes},
    isa::Isa,
};

/// Elements past the end of a layer's K and V buffers that kernels may read.
pub const KV_TAIL: usize = NR;

/// Shape of one layer's K/V pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Elements of one layer's K (or V) buffer, the tail included.
    pub fn elems(&self) -> usize {
        self.num_blocks * self.block_size * self.kv_heads * self.head_dim + KV_TAIL
    }

    #[inline]
    fn k_index(&self, slot: usize, head: usize, d: usize) -> usize {
        let (block, off) = (slot / self.block_size, slot % self.block_size);
        ((block * self.kv_heads + head) * self.head_dim + d) * self.block_size + off
    }

    #[inline]
    fn v_index(&self, slot: usize, head: usize, d: usize) -> usize {
        (slot * self.kv_heads + head) * self.head_dim + d
    }
}

/// One sequence's part of a packed batch, as attention sees it.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan<'a> {
    /// First row of this sequence's queries in the batch.
    pub q_start: usize,
    /// Query tokens this step: the last `q_len` of `ctx_len` positions.
    pub q_len: usize,
    /// Positions with keys in the cache, this step's included.
    pub ctx_len: usize,
    /// Physical block of each logical block.
    pub block_table: &'a [u32],
}

/// Writes the new tokens' keys and values (`tokens × kv_heads × head_dim`,
/// f32) into the pool at `slots` (block · block_size + offset).
pub fn write_kv<E: Elem>(
    shape: &KvShape,
    k_new: &[f32],
    v_new: &[f32],
    slots: &[u32],
    k_cache: &mut [E],
    v_cache: &mut [E],
) {
    let row = shape.kv_heads * shape.head_dim;
    assert_eq!(k_new.len(), slots.len() * row, "write_kv: keys");
    assert_eq!(v_new.len(), slots.len() * row, "write_kv: values");
    for (t, &slot) in slots.iter().enumerate() {
        let slot = slot as usize;
        assert!(
            slot < shape.num_blocks * shape.block_size,
            "write_kv: slot {slot} outside the pool"
        );
        for h in 0..shape.kv_heads {
            for d in 0..shape.head_dim {
                let i = t * row + h * shape.head_dim + d;
                k_cache[shape.k_index(slot, h, d)] = E::from_f32(k_new[i]);
                v_cache[shape.v_index(slot, h, d)] = E::from_f32(v_new[i]);
            }
        }
    }
}

/// Attention parameters shared by every sequence of a batch.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub num_heads: usize,
    /// `1/sqrt(head_dim)` for standard models.
    pub scale: f32,
    /// Sliding window: a query at position `p` sees keys `p - window + 1..=p`.
    pub window: Option<usize>,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint rows/heads of the output, joined before return.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `out[t][h] = softmax(q[t][h] · Kᵀ) · V` over each sequence's cached
/// positions (causal, optionally windowed). `q` and `out` are
/// `tokens × num_heads × head_dim` f32.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<E: Elem>(
    isa: Isa,
    shape: &KvShape,
    params: &AttentionParams,
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    seqs: &[SeqSpan<'_>],
    out: &mut [f32],
) {
    let (nh, hd) = (params.num_heads, shape.head_dim);
    assert!(
        shape.block_size.is_multiple_of(NR) && shape.block_size > 0,
        "block size {} is not a multiple of {NR}",
        shape.block_size
    );
    assert!(
        nh % shape.kv_heads == 0,
        "{nh} heads over {} KV heads",
        shape.kv_heads
    );
    assert_eq!(q.len(), out.len());
    assert!(k_cache.len() >= shape.elems() && v_cache.len() >= shape.elems());
    let group = nh / shape.kv_heads;
    for s in seqs {
        assert!(s.q_len <= s.ctx_len, "more queries than positions");
        assert!(
            (s.q_start + s.q_len) * nh * hd <= q.len(),
            "queries outside q"
        );
        assert!(
            s.block_table.len() * shape.block_size >= s.ctx_len,
            "block table too short for {} positions",
            s.ctx_len
        );
        assert!(
            s.block_table
                .iter()
                .all(|&b| (b as usize) < shape.num_blocks),
            "block outside the pool"
        );
    }
    // Query tokens per task: enough rows to fill the micro-kernel and to
    // convert each chunk of values to f32 for many rows (96 rows rather
    // than 48 took a 4000-token prompt from 4.16 to 3.90-4.05 s; 192 gave
    // no more), few enough that long prompts make many tasks.
    let q_tile = (96 / group).clamp(1, 32);
    let tasks: Vec<(usize, usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| {
            (0..s.q_len.div_ceil(q_tile))
                .flat_map(move |qt| (0..shape.kv_heads).map(move |g| (si, g, qt)))
        })
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |&(si, g, qt): &(usize, usize, usize)| {
        let s = &seqs[si];
        let t0 = qt * q_tile;
        let t1 = s.q_len.min(t0 + q_tile);
        let o = out_ptr;
        // SAFETY: this task alone writes heads `g*group..(g+1)*group` of
        // rows `q_start+t0..q_start+t1`; bounds were checked above.
        unsafe {
            attend_tile(
                isa, shape, params, group, q, k_cache, v_cache, s, g, t0, t1, o,
            )
        };
    };
    let work: usize = seqs.iter().map(|s| s.q_len * s.ctx_len).sum::<usize>() * nh * hd;
    if tasks.len() == 1 || work < (1 << 15) {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// Keys per softmax update: four 16-key panels. Long enough that the
/// value product runs 64-deep in the micro-kernel, short enough that a
/// tile's scores stay in L1.
const KEY_CHUNK: usize = 64;

/// One task: query tokens `t0..t1` of `s`, the query heads of KV head `g`.
///
/// # Safety
/// Only this call writes those outputs; shapes were validated by the caller.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile<E: Elem>(
    isa: Isa,
    shape: &KvShape,
    params: &AttentionParams,
    group: usize,
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    s: &SeqSpan<'_>,
    g: usize,
    t0: usize,
    t1: usize,
    out: SendPtr,
) {
    let (nh, hd, bs, nkv) = (
        params.num_heads,
        shape.head_dim,
        shape.block_size,
        shape.kv_heads,
    );
    let rows = (t1 - t0) * group;
    let first_pos = s.ctx_len - s.q_len;
    // Row r is query token t0 + r / group, head g * group + r % group.
    let pos = |r: usize| first_pos + t0 + r / group;
    let lo = |r: usize| params.window.map_or(0, |w| (pos(r) + 1).saturating_sub(w));

    let mut qs = vec![0f32; rows * hd];
    for r in 0..rows {
        let src = ((s.q_start + t0 + r / group) * nh + g * group + r % group) * hd;
        for (d, v) in qs[r * hd..(r + 1) * hd].iter_mut().enumerate() {
            *v = q[src + d] * params.scale;
        }
    }
    let mut o = vec![0f32; rows * hd];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut scores = vec![0f32; rows * KEY_CHUNK];
    // Values of the chunk in f32, rows padded to whole 16-lane columns so
    // the kernel's reads stay inside.
    let hd_pad = hd.next_multiple_of(NR);
    let mr_max = max_rows(isa);

    // Prefill tasks on AVX-512 take the two-panel kernel: 32 keys (or
    // value dims) per call.
    let pair = pair_rows(isa).filter(|_| rows > mr_max);
    let wide = pair.is_some();
    let (lanes, mr_call) = pair.map_or((NR, mr_max), |pr| (2 * NR, pr));
    // A bf16 cache in a prefill task, where the CPU has AVX512_BF16: both
    // products on the bf16 dot-product kernel (twice the FMA rate), with
    // the queries and the probabilities rounded to bf16 as they enter
    // them, like the model's own products (`gemm::bf16_dot`).
    let mut dot = (rows > mr_max
        && isa == Isa::Avx512
        && E::DTYPE == WeightDType::Bf16
        && hd.is_multiple_of(NR)
        && bf16_dot::supported())
    .then(|| DotBuffers::new(&qs, rows, hd));
    let mut vbuf = if rows > mr_max && dot.is_none() {
        vec![0f32; KEY_CHUNK * hd_pad]
    } else {
        Vec::new()
    };
    let key_hi = pos(rows - 1) + 1;
    let mut j0 = (lo(0) / NR) * NR;
    while j0 < key_hi {
        let keys = KEY_CHUNK.min(key_hi - j0);
        if rows <= mr_max {
            // Decode reads each key and value once, a few multiply-adds
            // per byte, from blocks scattered over the pool that the
            // hardware prefetcher cannot follow: ask for the next chunk's
            // blocks while this one is computed.
            let next = j0 + KEY_CHUNK..key_hi.min(j0 + 2 * KEY_CHUNK);
            for b in (next.start / bs..next.end.div_ceil(bs)).filter(|_| !next.is_empty()) {
                prefetch_block(shape, k_cache, v_cache, s.block_table[b] as usize, g);
            }
        }
        if let Some(d) = &mut dot {
            // SAFETY: E is bf16 (checked with `dot`); the chunk's keys are
            // below `key_hi`, inside the sequence's blocks.
            unsafe { d.scores(shape, k_cache.as_ptr().cast(), s, g, j0, keys, &mut scores) };
        } else {
            // Scores: rows × keys, one 16-key panel per call, or two where the
            // task takes the two-panel kernel (prefill on AVX-512).
            for p0 in (0..keys).step_by(lanes) {
                let k_panel = |j: usize| {
                    let block = s.block_table[j / bs] as usize;
                    ((block * nkv + g) * hd) * bs + (j % bs)
                };
                let two = wide && p0 + NR < keys;
                let a = k_panel(j0 + p0);
                let b = if two { k_panel(j0 + p0 + NR) } else { a };
                for (r, mr) in row_calls(rows, mr_call, wide) {
                    // SAFETY: each panel is `hd` columns of stride `bs` inside
                    // one block (16 keys never cross a block: `bs` is a
                    // multiple of 16 and `j0 + p0` one too); `qs`/`scores` hold
                    // `rows`, and a scores row KEY_CHUNK >= p0 + 32 values.
                    unsafe {
                        tile_lanes(
                            isa,
                            wide,
                            mr,
                            hd,
                            k_cache.as_ptr().add(a),
                            k_cache.as_ptr().add(b),
                            bs,
                            qs.as_ptr().add(r * hd),
                            hd,
                            scores.as_mut_ptr().add(r * KEY_CHUNK + p0),
                            KEY_CHUNK,
                            if two { 2 * NR } else { NR },
                            false,
                        )
                    };
                }
            }
        }
        // Online softmax; masked scores become exact zeros in P. The keys a
        // row sees are one run (causal, and the window's lower edge), so the
        // mask is two fills around it rather than a test per score.
        for r in 0..rows {
            let row = &mut scores[r * KEY_CHUNK..r * KEY_CHUNK + keys];
            let a = lo(r).saturating_sub(j0).min(keys);
            let b = (pos(r) + 1).saturating_sub(j0).min(keys);
            if a >= b {
                row.fill(0.0);
                continue;
            }
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            let row = &mut row[a..b];
            let mx = max_of(isa, row);
            let m_new = m[r].max(mx);
            let corr = (m[r] - m_new).exp();
            let sum = exp_shifted(isa, row, m_new);
            l[r] = l[r] * corr + sum;
            if corr != 1.0 {
                for v in &mut o[r * hd..(r + 1) * hd] {
                    *v *= corr;
                }
            }
            m[r] = m_new;
        }
        if rows <= mr_max {
            // Decode: each value is used by one group of rows; read it
            // straight from the cache, one 16-key panel (inside one block)
            // at a time, rather than convert it first.
            for p0 in (0..keys).step_by(NR) {
                let j = j0 + p0;
                let slot = s.block_table[j / bs] as usize * bs + j % bs;
                for d0 in (0..hd).step_by(NR) {
                    // SAFETY: `min(16, keys - p0)` value rows from `slot`
                    // lie in one block below `key_hi`; lanes past `hd` read
                    // the next head or the pool's tail and are not stored.
                    unsafe {
                        tile(
                            isa,
                            rows,
                            NR.min(keys - p0),
                            v_cache.as_ptr().add((slot * nkv + g) * hd + d0),
                            nkv * hd,
                            scores.as_ptr().add(p0),
                            KEY_CHUNK,
                            o.as_mut_ptr().add(d0),
                            hd,
                            NR.min(hd - d0),
                            true,
                        )
                    };
                }
            }
            j0 += keys;
            continue;
        }
        if let Some(d) = &mut dot {
            // SAFETY: as for the scores.
            unsafe {
                d.values(
                    shape,
                    v_cache.as_ptr().cast(),
                    s,
                    g,
                    j0,
                    keys,
                    &scores,
                    &mut o,
                )
            };
            j0 += keys;
            continue;
        }
        // Prefill: the chunk's values in f32 once for all rows (positions
        // below `key_hi` only: slots past the context may hold another
        // sequence's stale values).
        for j in 0..keys {
            let slot = s.block_table[(j0 + j) / bs] as usize * bs + (j0 + j) % bs;
            let src = &v_cache[(slot * nkv + g) * hd..][..hd];
            E::slice_to_f32(src, &mut vbuf[j * hd_pad..j * hd_pad + hd]);
        }
        // O += P · V.
        for d0 in (0..hd).step_by(lanes) {
            let nr = lanes.min(hd - d0);
            let w1 = if nr > NR { d0 + NR } else { d0 };
            for (r, mr) in row_calls(rows, mr_call, wide) {
                // SAFETY: `vbuf` has `keys` rows of `hd_pad` (a multiple of
                // 16) values, so lanes past `hd` read inside it; only `nr`
                // columns of `o` are written.
                unsafe {
                    tile_lanes(
                        isa,
                        wide,
                        mr,
                        keys,
                        vbuf.as_ptr().add(d0),
                        vbuf.as_ptr().add(w1),
                        hd_pad,
                        scores.as_ptr().add(r * KEY_CHUNK),
                        KEY_CHUNK,
                        o.as_mut_ptr().add(r * hd + d0),
                        hd,
                        nr,
                        true,
                    )
                };
            }
        }
        j0 += keys;
    }
    for r in 0..rows {
        let dst = ((s.q_start + t0 + r / group) * nh + g * group + r % group) * hd;
        let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
        for d in 0..hd {
            // SAFETY: see the function's contract.
            unsafe { *out.0.add(dst + d) = o[r * hd + d] * inv };
        }
    }
}

/// A prefill task's operands for the bf16 dot-product kernel: its queries
/// as bf16 pairs along `head_dim` (once), and per chunk the keys and values
/// regrouped into the kernel's layout (`gemm::bf16_dot`: two values of the
/// reduction dimension side by side in each lane) and the probabilities as
/// bf16 pairs along the keys.
struct DotBuffers {
    simd: bool,
    rows: usize,
    hd: usize,
    q: Vec<u32>,
    /// `[16-key panel][hd / 2][16 keys][2]`.
    k: Vec<bf16>,
    /// `[16-dim panel][KEY_CHUNK / 2][16 dims][2]`.
    v: Vec<bf16>,
    /// `[row][KEY_CHUNK / 2]`.
    p: Vec<u32>,
}

impl DotBuffers {
    fn new(qs: &[f32], rows: usize, hd: usize) -> Self {
        let simd = bf16_dot::supported();
        let mut q = vec![0u32; rows * hd / 2];
        for (src, dst) in qs.chunks_exact(hd).zip(q.chunks_exact_mut(hd / 2)) {
            bf16_dot::round_row(src, dst, simd);
        }
        Self {
            simd,
            rows,
            hd,
            q,
            k: vec![bf16::ZERO; KEY_CHUNK * hd],
            v: vec![bf16::ZERO; KEY_CHUNK * hd],
            p: vec![0; rows * KEY_CHUNK / 2],
        }
    }

    /// `scores[r][..keys]` for keys `j0..j0 + keys` of sequence `s`.
    ///
    /// # Safety
    /// `k_cache` is the layer's bf16 key buffer of `shape`, and those keys
    /// are in `s`'s blocks.
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores(
        &mut self,
        shape: &KvShape,
        k_cache: *const bf16,
        s: &SeqSpan<'_>,
        g: usize,
        j0: usize,
        keys: usize,
        scores: &mut [f32],
    ) {
        let (bs, hd, hp) = (shape.block_size, self.hd, self.hd / 2);
        for p0 in (0..keys).step_by(NR) {
            let j = j0 + p0;
            let panel = ((s.block_table[j / bs] as usize * shape.kv_heads + g) * hd) * bs + j % bs;
            let dst = &mut self.k[(p0 / NR) * hp * 2 * NR..][..hp * 2 * NR];
            for d in 0..hp {
                // SAFETY: dims 2d and 2d + 1 of 16 keys of one block (lanes
                // past `keys` are other slots of the block, never stored).
                unsafe {
                    let a = k_cache.add(panel + 2 * d * bs);
                    bf16_dot::interleave(a, a.add(bs), dst.as_mut_ptr().add(d * 2 * NR), self.simd);
                }
            }
        }
        for p0 in (0..keys).step_by(2 * NR) {
            let w0 = self.k[(p0 / NR) * hp * 2 * NR..].as_ptr();
            let two = p0 + NR < keys;
            let w1 = if two {
                w0.wrapping_add(hp * 2 * NR)
            } else {
                w0
            };
            for (r, mr) in row_calls(self.rows, bf16_dot::MAX_ROWS, true) {
                // SAFETY: the panels built above; `q` and `scores` hold
                // `rows` rows, a scores row `KEY_CHUNK >= p0 + nr` values.
                unsafe {
                    bf16_dot::tile(
                        self.simd,
                        mr,
                        hp,
                        w0,
                        w1,
                        self.q.as_ptr().add(r * hp),
                        hp,
                        scores.as_mut_ptr().add(r * KEY_CHUNK + p0),
                        KEY_CHUNK,
                        (keys - p0).min(2 * NR),
                        false,
                    )
                };
            }
        }
    }

    /// `o[r] += p[r] · V` for keys `j0..j0 + keys`, `p` the rows of
    /// `scores` (masked probabilities).
    ///
    /// # Safety
    /// As [`Self::scores`], for `v_cache`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn values(
        &mut self,
        shape: &KvShape,
        v_cache: *const bf16,
        s: &SeqSpan<'_>,
        g: usize,
        j0: usize,
        keys: usize,
        scores: &[f32],
        o: &mut [f32],
    ) {
        let (bs, hd, nkv) = (shape.block_size, self.hd, shape.kv_heads);
        let kp = keys.div_ceil(2);
        let zeros = [bf16::ZERO; NR];
        let row = |j: usize| {
            let slot = s.block_table[(j0 + j) / bs] as usize * bs + (j0 + j) % bs;
            (slot * nkv + g) * hd
        };
        for jp in 0..kp {
            let (a, b) = (row(2 * jp), (2 * jp + 1 < keys).then(|| row(2 * jp + 1)));
            for d0 in (0..hd).step_by(NR) {
                let dst = &mut self.v[(d0 / NR) * (KEY_CHUNK / 2) * 2 * NR + jp * 2 * NR..];
                // SAFETY: value rows of keys below `key_hi` (an odd last
                // key is paired with zeros, not with a stale slot).
                unsafe {
                    let vb = b.map_or(zeros.as_ptr(), |b| v_cache.add(b + d0));
                    bf16_dot::interleave(v_cache.add(a + d0), vb, dst.as_mut_ptr(), self.simd);
                }
            }
        }
        for (src, dst) in scores
            .chunks_exact(KEY_CHUNK)
            .zip(self.p.chunks_exact_mut(KEY_CHUNK / 2))
        {
            bf16_dot::round_row(&src[..keys], &mut dst[..kp], self.simd);
        }
        let panel = (KEY_CHUNK / 2) * 2 * NR;
        for d0 in (0..hd).step_by(2 * NR) {
            let w0 = self.v[(d0 / NR) * panel..].as_ptr();
            let two = d0 + NR < hd;
            let w1 = if two { w0.wrapping_add(panel) } else { w0 };
            for (r, mr) in row_calls(self.rows, bf16_dot::MAX_ROWS, true) {
                // SAFETY: the panels built above (`kp` pairs each); `p`
                // and `o` hold `rows` rows.
                unsafe {
                    bf16_dot::tile(
                        self.simd,
                        mr,
                        kp,
                        w0,
                        w1,
                        self.p.as_ptr().add(r * KEY_CHUNK / 2),
                        KEY_CHUNK / 2,
                        o.as_mut_ptr().add(r * hd + d0),
                        hd,
                        (hd - d0).min(2 * NR),
                        true,
                    )
                };
            }
        }
    }
}

/// Asks for KV head `g`'s keys and values in `block`: the keys are one run
/// (`[kv_head][head_dim][bs]` per block), the values a row per token.
fn prefetch_block<E: Elem>(shape: &KvShape, k_cache: &[E], v_cache: &[E], block: usize, g: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (bs, hd, nkv) = (shape.block_size, shape.head_dim, shape.kv_heads);
        let line = 64 / size_of::<E>();
        let fetch = |p: *const E| {
            // SAFETY: prefetching is a hint; SSE is part of x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
        };
        let k = ((block * nkv + g) * hd) * bs;
        for at in (k..k + hd * bs).step_by(line) {
            fetch(k_cache[at..].as_ptr());
        }
        for t in 0..bs {
            let v = ((block * bs + t) * nkv + g) * hd;
            for at in (v..v + hd).step_by(line) {
                fetch(v_cache[at..].as_ptr());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (shape, k_cache, v_cache, block, g);
}

/// The largest value of a non-empty `x` (scores: no NaN).
fn max_of(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: `isa` says AVX-512F is present.
        return unsafe { x86::max_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` says AVX2 is present.
        return unsafe { x86::max_avx2(x) };
    }
    let _ = isa;
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x[i] = exp(x[i] - shift)` (exactly 0 for `-inf`), returning the sum.
/// Softmax is exp-bound on the CPU once the products are blocked: libm's
/// scalar `expf` cost more than the scores and values together.
fn exp_shifted(isa: Isa, x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: `isa` says AVX-512F is present.
        return unsafe { x86::exp_shifted_avx512(x, shift) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` says AVX2 and FMA are present.
        return unsafe { x86::exp_shifted_avx2(x, shift) };
    }
    let _ = isa;
    let mut sum = 0.0;
    for v in x {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::{
        activation::x86::{exp8, exp16},
        isa::lanes16,
    };

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_avx512(x: &[f32]) -> f32 {
        let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..x.len()).step_by(16) {
            // SAFETY: the mask covers the values left.
            let v = unsafe { _mm512_mask_loadu_ps(acc, lanes16(x.len() - j), x.as_ptr().add(j)) };
            acc = _mm512_max_ps(acc, v);
        }
        _mm512_reduce_max_ps(acc)
    }

    /// [`exp_shifted_avx2`] 16 lanes at a time, a masked tail instead of
    /// libm for the last values (softmax rows here are at most 64 keys,
    /// often fewer: the AVX2 version took 11.5% of a 4000-token prompt's
    /// samples in `perf`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_avx512(x: &mut [f32], shift: f32) -> f32 {
        let shift_v = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        for j in (0..x.len()).step_by(16) {
            let k = lanes16(x.len() - j);
            // SAFETY: the mask covers the values left.
            unsafe {
                let v = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(j)), shift_v);
                let e = _mm512_maskz_mov_ps(k, exp16(v));
                _mm512_mask_storeu_ps(x.as_mut_ptr().add(j), k, e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_avx2(x: &[f32]) -> f32 {
        unsafe {
            let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut chunks = x.chunks_exact(8);
            for c in &mut chunks {
                acc = _mm256_max_ps(acc, _mm256_loadu_ps(c.as_ptr()));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            lanes
                .iter()
                .chain(chunks.remainder())
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        }
    }

    /// Cephes' `expf` on 8 lanes: range reduction by ln 2, a degree-5
    /// polynomial, exponent by integer add. Relative error below 2e-7 on
    /// the range softmax feeds it (`x <= 0`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) -> f32 {
        unsafe {
            let shift_v = _mm256_set1_ps(shift);
            let mut acc = _mm256_setzero_ps();
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                let v = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift_v);
                let e = exp8(v);
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut sum: f32 = lanes.iter().sum();
            for v in chunks.into_remainder() {
                *v = (*v - shift).exp();
                sum += *v;
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    struct Case {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        /// (positions already cached, new query tokens) per sequence.
        seqs: Vec<(usize, usize)>,
        window: Option<usize>,
    }

    /// Dense causal attention in f64 over the full K/V of each sequence.
    fn dense(
        c: &Case,
        q: &[f32],
        keys: &[Vec<f32>],
        vals: &[Vec<f32>],
        q_rows: &[usize],
    ) -> Vec<f32> {
        let (nh, hd, nkv) = (c.heads, c.head_dim, c.kv_heads);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f32; q.len()];
        for (si, &(cached, new)) in c.seqs.iter().enumerate() {
            for i in 0..new {
                let pos = cached + i;
                let row = q_rows[si] + i;
                for h in 0..nh {
                    let g = h / group;
                    let lo = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let qv = &q[(row * nh + h) * hd..][..hd];
                    let sc: Vec<f64> = (lo..=pos)
                        .map(|j| {
                            let kv = &keys[si][(j * nkv + g) * hd..][..hd];
                            qv.iter()
                                .zip(kv)
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (lo..=pos)
                            .zip(&ex)
                            .map(|(j, e)| e * f64::from(vals[si][(j * nkv + g) * hd + d]))
                            .sum();
                        out[(row * nh + h) * hd + d] = (v / sum) as f32;
                    }
                }
            }
        }
        out
    }

    fn run_case<E: Elem>(isa: Isa, c: &Case, tol: f32) {
        let (nh, nkv, hd, bs) = (c.heads, c.kv_heads, c.head_dim, c.block_size);
        let blocks_needed: usize = c.seqs.iter().map(|(a, b)| (a + b).div_ceil(bs)).sum();
        // A pool larger than needed, with sequences' blocks scattered in
        // reverse order and garbage in the unused slots.
        let shape = KvShape {
            num_blocks: blocks_needed * 2 + 1,
            block_size: bs,
            kv_heads: nkv,
            head_dim: hd,
        };
        let mut k_cache = vec![E::from_f32(1e4); shape.elems()];
        let mut v_cache = vec![E::from_f32(-3e4); shape.elems()];
        let mut next_block = shape.num_blocks;
        let mut tables = Vec::new();
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        let total_q: usize = c.seqs.iter().map(|s| s.1).sum();
        let q = values(total_q * nh * hd, 99);
        let mut q_rows = Vec::new();
        let mut row = 0;
        for (si, &(cached, new)) in c.seqs.iter().enumerate() {
            let len = cached + new;
            let table: Vec<u32> = (0..len.div_ceil(bs))
                .map(|_| {
                    next_block -= 2;
                    next_block as u32
                })
                .collect();
            // Values rounded to E, so the reference sees what the cache holds.
            let kq: Vec<f32> = values(len * nkv * hd, 1 + si as u64)
                .into_iter()
                .map(|v| E::from_f32(v).to_f32())
                .collect();
            let vq: Vec<f32> = values(len * nkv * hd, 100 + si as u64)
                .into_iter()
                .map(|v| E::from_f32(v).to_f32())
                .collect();
            let slots: Vec<u32> = (0..len)
                .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
                .collect();
            // Cached part first, then the new tokens, as the engine does.
            let row_len = nkv * hd;
            write_kv(
                &shape,
                &kq[..cached * row_len],
                &vq[..cached * row_len],
                &slots[..cached],
                &mut k_cache,
                &mut v_cache,
            );
            write_kv(
                &shape,
                &kq[cached * row_len..],
                &vq[cached * row_len..],
                &slots[cached..],
                &mut k_cache,
                &mut v_cache,
            );
            tables.push(table);
            keys.push(kq);
            vals.push(vq);
            q_rows.push(row);
            row += new;
        }
        let spans: Vec<SeqSpan<'_>> = c
            .seqs
            .iter()
            .zip(&tables)
            .zip(&q_rows)
            .map(|((&(cached, new), table), &q_start)| SeqSpan {
                q_start,
                q_len: new,
                ctx_len: cached + new,
                block_table: table,
            })
            .collect();
        let params = AttentionParams {
            num_heads: nh,
            scale: 1.0 / (hd as f32).sqrt(),
            window: c.window,
        };
        let mut out = vec![f32::NAN; q.len()];
        paged_attention(
            isa, &shape, &params, &q, &k_cache, &v_cache, &spans, &mut out,
        );
        let want = dense(c, &q, &keys, &vals, &q_rows);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= tol,
                "{isa:?} {:?} heads {nh}/{nkv} hd {hd} bs {bs} seqs {:?}: out[{i}] = {a}, want {b}",
                E::DTYPE,
                c.seqs
            );
        }
    }

    fn cases() -> Vec<Case> {
        let mut cases = Vec::new();
        // Lengths around block boundaries, decode and prefill, GQA and MHA.
        for (heads, kv_heads, head_dim) in [
            (4, 2, 16),
            (8, 2, 8),
            (4, 1, 64),
            (2, 2, 4),
            (16, 4, 64),
            (6, 2, 48),
        ] {
            for len in [1, 15, 16, 17, 49] {
                cases.push(Case {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size: 16,
                    seqs: vec![(len - 1, 1), (0, len), (len / 2, len - len / 2)],
                    window: None,
                });
            }
        }
        // A batch mixing decodes and chunks, larger blocks, windows.
        cases.push(Case {
            heads: 8,
            kv_heads: 2,
            head_dim: 32,
            block_size: 32,
            seqs: vec![(100, 1), (0, 70), (33, 31), (64, 1), (5, 40)],
            window: None,
        });
        for window in [1, 5, 16, 40] {
            cases.push(Case {
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                block_size: 16,
                seqs: vec![(60, 1), (0, 50), (20, 17)],
                window: Some(window),
            });
        }
        cases
    }

    #[test]
    fn vector_exp_matches_libm_and_zeroes_masked_scores() {
        for isa in Isa::supported() {
            let mut x: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.1).collect();
            x.extend([f32::NEG_INFINITY, -1e30, 0.0]);
            let want: Vec<f32> = x.iter().map(|v| (v - 0.5).exp()).collect();
            let sum = exp_shifted(isa, &mut x, 0.5);
            for (i, (a, b)) in x.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 3e-7 * b.max(1e-30),
                    "{isa:?} exp at {i}: {a} vs {b}"
                );
            }
            assert_eq!(x[1000], 0.0, "-inf gives exactly 0");
            assert!((sum - want.iter().sum::<f32>()).abs() < 1e-5, "{isa:?}");
        }
    }

    #[test]
    fn paged_attention_equals_dense_attention() {
        for isa in Isa::supported() {
            for c in cases() {
                run_case::<f32>(isa, &c, 2e-5);
                run_case::<f16>(isa, &c, 2e-4);
                run_case::<bf16>(isa, &c, 2e-3);
            }
        }
    }
}
