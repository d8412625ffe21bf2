//! `y = x · Wᵀ` for weights in GGML's block-quantized formats (the ones
//! GGUF files carry), computed the way llama.cpp computes them: each
//! activation row is quantized to 8-bit blocks once per product, and every
//! weight block meets it in integer multiply-adds (`maddubs` on AVX2), with
//! one float scale multiply per block.
//!
//! Why integer dots: decode streams every weight byte once per step, so a
//! Q4_K matrix (4.5 bits a weight) is 3.6× less memory traffic than f16 —
//! but only if unpacking a block is cheaper than loading it. Unpacking to
//! f32 costs more instructions than it saves; 8-bit products keep the
//! nibbles packed in registers (candle 0.11.1's own path reaches 0.70× of
//! llama.cpp on Q4_K_M and 0.44× on Q8_0 here: `shared/notes/engine.md`).
//!
//! Why llama.cpp's activation formats ([`QuantType::Q8_0`]-style blocks of
//! 32 with an f16 scale for Q8_0/Q4_0 weights, Q8_K blocks of 256 with an
//! f32 scale and 16-element sums for the K-quants): the integer sums are then
//! the same as llama.cpp's, so greedy outputs on a GGUF file agree with
//! `llama-server` on it, which is what an Ollama user checks first.
//!
//! Batching: one weight row is unpacked once and dotted with up to eight
//! activation rows ([`ROWS`]), so a decode step of 16 sequences costs far
//! less than 16 single-row products. Q4_K has a 512-bit kernel for CPUs with
//! AVX-512BW (1.23× the AVX2 kernel at 4–16 rows in `--bench quant`). Where
//! AVX512-VNNI runs, Q4_K, Q6_K and Q8_0 matrices are instead repacked at
//! load into 16-row tiles multiplied as outer products (`tiles`): 1.6–2.9×
//! these dot kernels at 16 rows, 2.5–5× at 128; for a single row Q4_K and
//! Q8_0 are as fast or faster, Q6_K 10–20% slower.

use half::f16;
use rayon::prelude::*;

use super::{aligned::AlignedVec, isa::Isa};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Activation rows dotted with one unpacked weight row at a time.
pub const ROWS: usize = 8;

/// The GGML block formats with kernels here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// Weights per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block, as GGUF stores it.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// llama.cpp's name for the type (`Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The activation format the weight blocks are dotted with.
    fn activation(self) -> ActFormat {
        match self {
            Self::Q4_0 | Self::Q8_0 => ActFormat::Q8_0,
            Self::Q4K | Self::Q5K | Self::Q6K => ActFormat::Q8K,
        }
    }
}

/// A quantized `rows × cols` weight matrix: each row is `cols /
/// block_elems` consecutive blocks, exactly the bytes of the GGUF tensor,
/// or (after [`QuantMatrix::into_tiles`]) the same blocks in groups of 16
/// rows interleaved for the AVX512-VNNI kernels (`tiles`).
pub struct QuantMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    /// Whether `data` holds the tiled layout rather than GGUF rows.
    tiled: bool,
    data: AlignedVec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({} {}x{})",
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{ty} needs a multiple of {block} columns, got {cols}")]
    Columns {
        ty: &'static str,
        block: usize,
        cols: usize,
    },
    #[error("{ty} {rows}x{cols} is {expected} bytes, got {got}")]
    Size {
        ty: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
}

impl QuantMatrix {
    /// Wraps the bytes of a GGUF tensor of `ty` (shape `rows × cols`).
    pub fn new(ty: QuantType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(QuantError::Columns {
                ty: ty.name(),
                block: ty.block_elems(),
                cols,
            });
        }
        let expected = rows * cols / ty.block_elems() * ty.block_bytes();
        if bytes.len() != expected {
            return Err(QuantError::Size {
                ty: ty.name(),
                rows,
                cols,
                expected,
                got: bytes.len(),
            });
        }
        let mut data = AlignedVec::zeroed(expected);
        data.copy_from_slice(bytes);
        Ok(Self {
            ty,
            rows,
            cols,
            tiled: false,
            data,
        })
    }

    /// The matrix in the layout of the fastest kernels `isa` and this CPU
    /// have: the tiles where AVX512-VNNI runs them (Q4_K, Q6_K, Q8_0),
    /// else unchanged. Done once at load; the GGUF bytes are not kept.
    pub fn into_tiles(self, isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        if !self.tiled && isa >= Isa::Avx512 && tiles::available() && tiles::has_layout(self.ty) {
            let blocks = self.cols / self.ty.block_elems();
            let groups = self.rows.div_ceil(tiles::TILE);
            let mut data = AlignedVec::zeroed(groups * tiles::group_bytes(self.ty, blocks));
            tiles::pack(self.ty, &self.data, self.rows, blocks, &mut data);
            return Self {
                tiled: true,
                data,
                ..self
            };
        }
        let _ = isa;
        self
    }

    /// Stacks matrices of one type along rows (a fused projection), in the
    /// first one's layout.
    pub fn concat(parts: &[&QuantMatrix]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.ty != first.ty || p.cols != first.cols)
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let rb = first.row_bytes();
        let mut bytes = vec![0u8; rows * rb];
        let mut at = 0;
        for p in parts {
            for r in 0..p.rows {
                p.row_bytes_into(r, &mut bytes[at..at + rb]);
                at += rb;
            }
        }
        let stacked = Self::new(first.ty, rows, first.cols, &bytes).ok()?;
        Some(if first.tiled {
            stacked.into_tiles(Isa::best())
        } else {
            stacked
        })
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Whether the matrix is in the tiled layout.
    pub fn is_tiled(&self) -> bool {
        self.tiled
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// Row `r`'s GGUF bytes, in the GGUF layout.
    fn row_data(&self, r: usize) -> &[u8] {
        debug_assert!(!self.tiled);
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r`'s GGUF bytes into `out`, in either layout.
    fn row_bytes_into(&self, r: usize, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.tiled {
            let blocks = self.cols / self.ty.block_elems();
            return tiles::unpack_row(self.ty, &self.data, blocks, r, out);
        }
        out.copy_from_slice(self.row_data(r));
    }

    /// Row `r` in f32, exactly as GGML's reference dequantization.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.tiled {
            let mut row = vec![0u8; self.row_bytes()];
            self.row_bytes_into(r, &mut row);
            dequantize(self.ty, &row, out);
        } else {
            dequantize(self.ty, self.row_data(r), out);
        }
    }
}

/// Dequantizes whole blocks of `ty` from `src` into `out` (`out.len()`
/// values: `src` holds exactly that many), in the arithmetic order of
/// GGML's `dequantize_row_*` so that the values are bit-identical to
/// gguf-py's `gguf.quants.dequantize`.
pub fn dequantize(ty: QuantType, src: &[u8], out: &mut [f32]) {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    assert_eq!(src.len() / bb * be, out.len(), "dequantize: size mismatch");
    for (b, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            QuantType::Q8_0 => {
                let d = half(b, 0);
                for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                    *y = q as i8 as f32 * d;
                }
            }
            QuantType::Q4_0 => {
                let d = half(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (half(b, 0), half(b, 2));
                let scales: &[u8; 12] = b[4..16].try_into().expect("12 scale bytes");
                let (qh, qs) = if ty == QuantType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * j..32 * j + 32];
                    for l in 0..32 {
                        let (mut lo, mut hi) = ((q[l] & 0xF) as u32, (q[l] >> 4) as u32);
                        if !qh.is_empty() {
                            lo += (((qh[l] >> (2 * j)) & 1) as u32) << 4;
                            hi += (((qh[l] >> (2 * j + 1)) & 1) as u32) << 4;
                        }
                        y[64 * j + l] = d1 * lo as f32 - m1;
                        y[64 * j + 32 + l] = d2 * hi as f32 - m2;
                    }
                }
            }
            QuantType::Q6K => {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                let sc = |i: usize| b[192 + i] as i8 as f32;
                let d = half(b, 208);
                for n in 0..2 {
                    let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], &mut y[128 * n..]);
                    for l in 0..32 {
                        let is = 8 * n + l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc(is) * q1 as f32;
                        y[l + 32] = d * sc(is + 2) * q2 as f32;
                        y[l + 64] = d * sc(is + 4) * q3 as f32;
                        y[l + 96] = d * sc(is + 6) * q4 as f32;
                    }
                }
            }
        }
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActFormat {
    /// Blocks of 32: an f16-rounded scale, 32 `i8`.
    Q8_0,
    /// Blocks of 256: an f32 scale, 256 `i8`, 16 sums of 16.
    Q8K,
}

/// Activation rows quantized for one product: per row, `blocks` scales,
/// `blocks · block` values and (Q8_K) `blocks · 16` partial sums.
struct QuantizedRows {
    cols: usize,
    block: usize,
    d: Vec<f32>,
    q: AlignedVec<u8>,
    sums: Vec<i16>,
}

impl QuantizedRows {
    fn new(format: ActFormat, x: &[f32], m: usize, k: usize) -> Self {
        let block = match format {
            ActFormat::Q8_0 => 32,
            ActFormat::Q8K => QK_K,
        };
        let blocks = k / block;
        let mut d = vec![0f32; m * blocks];
        let mut q = AlignedVec::<u8>::zeroed(m * k);
        // Q8_K keeps 16 partial sums per block, Q8_0 one.
        let per_block = if format == ActFormat::Q8K { 16 } else { 1 };
        let mut sums = vec![0i16; m * blocks * per_block];
        let work = |((xb, qb), (d, s)): BlockOut| quantize_block(format, xb, qb, d, s);
        // Blocks are independent: a prefill chunk's rows (hundreds) are
        // quantized on every thread, a decode step's few rows on this one.
        if m * k >= 1 << 16 && rayon::current_num_threads() > 1 {
            x.par_chunks_exact(block)
                .zip(q.par_chunks_exact_mut(block))
                .zip(d.par_iter_mut().zip(sums.par_chunks_exact_mut(per_block)))
                .for_each(work);
        } else {
            x.chunks_exact(block)
                .zip(q.chunks_exact_mut(block))
                .zip(d.iter_mut().zip(sums.chunks_exact_mut(per_block)))
                .for_each(work);
        }
        Self {
            cols: k,
            block,
            d,
            q,
            sums,
        }
    }

    fn blocks(&self) -> usize {
        self.cols / self.block
    }
}

/// A block's input and where its quantized values, scale and sums go.
type BlockOut<'a> = ((&'a [f32], &'a mut [u8]), (&'a mut f32, &'a mut [i16]));

/// One block of an activation row in `format`: its 8-bit values `q`, scale
/// `d` and (Q8_K) 16 partial sums, exactly as llama.cpp's x86
/// `quantize_row_q8_0` / `quantize_row_q8_K` compute them.
fn quantize_block(format: ActFormat, xb: &[f32], qb: &mut [u8], d: &mut f32, sums: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F just checked; the block shapes are the format's.
        unsafe { avx512::quantize_block(format, xb, qb, d, sums) };
        return;
    }
    quantize_block_scalar(format, xb, qb, d, sums);
}

/// [`quantize_block`] one value at a time: the definition the vector
/// version is tested against, bit for bit.
fn quantize_block_scalar(
    format: ActFormat,
    xb: &[f32],
    qb: &mut [u8],
    d: &mut f32,
    sums: &mut [i16],
) {
    match format {
        ActFormat::Q8_0 => {
            // 127 / max, rounding half to even.
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dd = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (o, v) in qb.iter_mut().zip(xb) {
                *o = (v * id).round_ties_even() as i8 as u8;
            }
            // The block's sum, for kernels that multiply by `w + 128`.
            sums[0] = qb.iter().map(|&v| v as i8 as i16).sum();
            *d = f16::from_f32(dd).to_f32();
        }
        ActFormat::Q8K => {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                qb.fill(0);
                *d = 0.0;
                sums.fill(0);
                return;
            }
            let iscale = -127.0 / max;
            for (o, v) in qb.iter_mut().zip(xb) {
                *o = ((iscale * v).round() as i32).min(127) as i8 as u8;
            }
            for (s, g) in sums.iter_mut().zip(qb.chunks(16)) {
                *s = g.iter().map(|&v| v as i8 as i16).sum();
            }
            *d = 1.0 / iscale;
        }
    }
}

/// One activation row as the dot kernels read it.
#[derive(Clone, Copy)]
struct Act<'a> {
    d: &'a [f32],
    q: &'a [u8],
    sums: &'a [i16],
}

impl QuantizedRows {
    fn row(&self, t: usize) -> Act<'_> {
        let nb = self.blocks();
        Act {
            d: &self.d[t * nb..(t + 1) * nb],
            q: &self.q[t * self.cols..(t + 1) * self.cols],
            sums: if self.block == QK_K {
                &self.sums[t * self.cols / 16..(t + 1) * self.cols / 16]
            } else {
                &self.sums[t * nb..(t + 1) * nb]
            },
        }
    }
}

/// Weight rows per parallel task.
const ROW_CHUNK: usize = 16;

/// `y[m × w.rows()] = x[m × w.cols()] · wᵀ`, on rayon's pool.
pub fn qmatmul(isa: Isa, x: &[f32], m: usize, w: &QuantMatrix, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "qmatmul: x is not {m}x{k}");
    assert_eq!(y.len(), m * n, "qmatmul: y is not {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    let acts = QuantizedRows::new(w.ty.activation(), x, m, k);
    let out = SendPtr(y.as_mut_ptr());
    // Tasks own whole chunks of weight rows, so each output cell has one writer.
    let parallel = rayon::current_num_threads() > 1 && m * n * k >= (1 << 16);
    let for_each_chunk = |chunk_rows: usize, work: &(dyn Fn(usize) + Sync)| {
        let chunks = n.div_ceil(chunk_rows);
        if parallel {
            (0..chunks).into_par_iter().for_each(work);
        } else {
            (0..chunks).for_each(work);
        }
    };
    #[cfg(target_arch = "x86_64")]
    if w.tiled {
        let all: Vec<Act> = (0..m).map(|t| acts.row(t)).collect();
        let stride = tiles::group_bytes(w.ty, k / w.ty.block_elems());
        let groups = n.div_ceil(tiles::TILE);
        for_each_chunk(tiles::TILE, &|g| {
            let lo = g * tiles::TILE;
            // A single row streams the groups at memory speed, which the
            // hardware prefetcher follows alone (asked for as well, 1-row
            // products measured slower: Q4_K 4.0-4.3 → 4.7-6.7 ms).
            if m > 1 && g + 1 < groups {
                let next = (g + 1) * stride;
                tiles::prefetch_group(&w.data[next..next + stride.min(tiles::GROUP_PREFETCH)]);
            }
            // SAFETY: tiled only where AVX512-VNNI runs (`into_tiles`);
            // group g of the packed data (AlignedVec: 64-byte aligned,
            // groups a multiple of 64 bytes); activations in the type's
            // format over `k` columns; this task alone writes columns
            // lo..lo + 16 of y (m × n).
            unsafe {
                tiles::product(
                    w.ty,
                    &w.data[g * stride..(g + 1) * stride],
                    tiles::TILE.min(n - lo),
                    &all,
                    (out.get(), n, lo),
                )
            };
        });
        return;
    }
    for_each_chunk(ROW_CHUNK, &|chunk| {
        let rows = chunk * ROW_CHUNK..n.min((chunk + 1) * ROW_CHUNK);
        let mut sums = [0f32; ROWS];
        // x rows outer, weight rows inner: a group of activation rows and
        // the chunk's weight rows both stay in L1 while they meet.
        let mut t = 0;
        while t < m {
            let group = ROWS.min(m - t);
            let a: [Act; ROWS] = std::array::from_fn(|i| acts.row((t + i).min(m - 1)));
            for r in rows.clone() {
                dot(isa, w.ty, w.row_data(r), &a[..group], &mut sums[..group]);
                for (i, s) in sums[..group].iter().enumerate() {
                    // SAFETY: each (t + i, r) cell is written by the one
                    // task that owns weight row r; y is m × n.
                    unsafe { *out.get().add((t + i) * n + r) = *s };
                }
            }
            t += group;
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint cells and are joined before the borrow ends.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[i] = Σ row · acts[i]` for one weight row of `ty`.
fn dot(isa: Isa, ty: QuantType, w: &[u8], acts: &[Act], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512
        && matches!(ty, QuantType::Q4K | QuantType::Q6K)
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: AVX-512F (checked for `isa`) and BW just now; whole blocks as below.
        return unsafe {
            match ty {
                QuantType::Q4K => avx512::q4k(w, acts, out),
                _ => avx512::q6k(w, acts, out),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Generic {
        // SAFETY: `isa` was checked against this CPU (Isa::best / tests);
        // the slices hold whole blocks of the same column count.
        match ty {
            QuantType::Q8_0 => return unsafe { avx2::q8_0(w, acts, out) },
            QuantType::Q4K => return unsafe { avx2::q4k(w, acts, out) },
            QuantType::Q6K => return unsafe { avx2::q6k(w, acts, out) },
            QuantType::Q4_0 | QuantType::Q5K => {}
        }
    }
    let _ = isa;
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = dot_generic(ty, w, a);
    }
}

/// The portable dot product: GGML's reference `vec_dot_*` sums.
fn dot_generic(ty: QuantType, w: &[u8], a: &Act) -> f32 {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    let mut total = 0f32;
    for (i, b) in w.chunks_exact(bb).enumerate() {
        let q8 = |j: usize| a.q[i * be + j] as i8 as i32;
        match ty {
            QuantType::Q8_0 => {
                let s: i32 = (0..32).map(|j| b[2 + j] as i8 as i32 * q8(j)).sum();
                total += half(b, 0) * a.d[i] * s as f32;
            }
            QuantType::Q4_0 => {
                let s: i32 = (0..16)
                    .map(|j| {
                        ((b[2 + j] & 0xF) as i32 - 8) * q8(j)
                            + ((b[2 + j] >> 4) as i32 - 8) * q8(j + 16)
                    })
                    .sum();
                total += half(b, 0) * a.d[i] * s as f32;
            }
            QuantType::Q4K | QuantType::Q5K => {
                let scales: &[u8; 12] = b[4..16].try_into().expect("12 scale bytes");
                let (qh, qs) = if ty == QuantType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..4 {
                    for h in 0..2 {
                        let (sc, m) = scale_min_k4(2 * j + h, scales);
                        let mut s = 0i32;
                        for l in 0..32 {
                            let mut v = ((qs[32 * j + l] >> (4 * h)) & 0xF) as i32;
                            if !qh.is_empty() {
                                v += (((qh[l] >> (2 * j + h)) & 1) as i32) << 4;
                            }
                            s += v * q8(64 * j + 32 * h + l);
                        }
                        sumi += sc as i32 * s;
                        let sub = 4 * j + 2 * h;
                        summ += m as i32
                            * (a.sums[i * 16 + sub] as i32 + a.sums[i * 16 + sub + 1] as i32);
                    }
                }
                total += half(b, 0) * a.d[i] * sumi as f32 - half(b, 2) * a.d[i] * summ as f32;
            }
            QuantType::Q6K => {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                let mut sumi = 0i32;
                for n in 0..2 {
                    for part in 0..4 {
                        for half16 in 0..2 {
                            let mut s = 0i32;
                            for l in 16 * half16..16 * half16 + 16 {
                                let lo = ql[64 * n + l + 32 * (part & 1)];
                                let lo = if part >= 2 { lo >> 4 } else { lo & 0xF };
                                let hi = (qh[32 * n + l] >> (2 * part)) & 3;
                                let v = (lo | (hi << 4)) as i32 - 32;
                                s += v * q8(128 * n + 32 * part + l);
                            }
                            let sc = b[192 + 8 * n + 2 * part + half16] as i8 as i32;
                            sumi += sc * s;
                        }
                    }
                }
                total += half(b, 208) * a.d[i] * sumi as f32;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod tiles;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 twins of [`super::dot_generic`] for the types GGUF files are
    //! mostly made of (Q8_0, and Q4_K + Q6_K for Q4_K_M), after llama.cpp's
    //! `ggml_vec_dot_*_q8_*` for AVX2 (scales and minimums in SIMD too),
    //! widened to several activation rows per unpacked weight block.

    use std::arch::x86_64::*;

    use super::{Act, QK_K, ROWS};

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// An f16 at `b[at..at + 2]`, converted by F16C (the `half` crate
    /// would test the CPU on every call in a generic build).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn h2f(b: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// 32 bytes at `p[at..]`.
    ///
    /// # Safety
    /// `at + 32 <= p.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn load(p: &[u8], at: usize) -> __m256i {
        debug_assert!(at + 32 <= p.len());
        unsafe { _mm256_loadu_si256(p.as_ptr().add(at) as *const __m256i) }
    }

    /// # Safety
    /// `w` is whole Q8_0 blocks; each `acts[t]` covers as many columns.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0(w: &[u8], acts: &[Act], out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let ones = _mm256_set1_epi16(1);
        for (i, b) in w.chunks_exact(34).enumerate() {
            let dw = h2f(b, 0);
            let q = unsafe { load(b, 2) };
            let aw = _mm256_sign_epi8(q, q);
            for (a, acc) in acts.iter().zip(acc.iter_mut()) {
                let x = unsafe { load(a.q, 32 * i) };
                let sx = _mm256_sign_epi8(x, q);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                let d = dw * unsafe { *a.d.get_unchecked(i) };
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }

    /// A Q4_K block's header: `d`, `dmin`, and its 12 scale bytes unpacked
    /// (llama.cpp's `utmp` shuffle) into 8 six-bit scales and 8 mins, each as
    /// i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn q4k_header(b: &[u8]) -> (f32, f32, __m128i, __m128i) {
        const K1: u32 = 0x3f3f_3f3f;
        const K2: u32 = 0x0f0f_0f0f;
        const K3: u32 = 0x0303_0303;
        let u =
            |j: usize| u32::from_le_bytes([b[4 + 4 * j], b[5 + 4 * j], b[6 + 4 * j], b[7 + 4 * j]]);
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let t3 = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
        let t2 = u1 & K1;
        let t1 = (u2 & K2) | (((u0 >> 6) & K3) << 4);
        let t0 = u0 & K1;
        let ms = _mm256_cvtepu8_epi16(_mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32));
        (
            h2f(b, 0),
            h2f(b, 2),
            _mm256_castsi256_si128(ms),
            _mm256_extracti128_si256(ms, 1),
        )
    }

    /// A row's min correction for block `i`: Σ over the 8 sub-blocks of
    /// min · (sum of the row's 32 bytes there), as 4 i32 lanes.
    ///
    /// # Safety
    /// The row has 16 sums per block up to block `i`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn q4k_mins(a: &Act, i: usize, mins: __m128i) -> __m128i {
        // SAFETY: 16 sums per block of the row.
        let sums = unsafe { _mm256_loadu_si256(a.sums.as_ptr().add(16 * i) as *const __m256i) };
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(sums),
            _mm256_extracti128_si256(sums, 1),
        );
        _mm_madd_epi16(mins, pairs)
    }

    /// The sum of the four lanes of `m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn hsum128(m: __m128) -> f32 {
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }

    /// # Safety
    /// `w` is whole Q4_K blocks; each `acts[t]` covers as many columns
    /// (Q8_K: 16 sums per block).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k(w: &[u8], acts: &[Act], out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut acc_m = [_mm_setzero_ps(); ROWS];
        let m4 = _mm256_set1_epi8(0xF);
        for (i, b) in w.chunks_exact(144).enumerate() {
            let (d, dmin, sc128, mins) = q4k_header(b);
            // scale[j]: scale j broadcast to every i16 lane.
            let scale: [__m256i; 8] = std::array::from_fn(|j| {
                // Bytes (2j, 2j + 1) of every i16 lane: the shuffle mask.
                let lo = (2 * j) as i16;
                let shuf = _mm_set1_epi16(lo | ((lo + 1) << 8));
                let s = _mm_shuffle_epi8(sc128, shuf);
                _mm256_set_m128i(s, s)
            });
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let bits = unsafe { load(b, 16 + 32 * j) };
                lo[j] = _mm256_and_si256(bits, m4);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            }
            for (t, a) in acts.iter().enumerate() {
                let base = QK_K * i;
                let mut sumi = _mm256_setzero_si256();
                for j in 0..4 {
                    let xl = unsafe { load(a.q, base + 64 * j) };
                    let xh = unsafe { load(a.q, base + 64 * j + 32) };
                    let pl = _mm256_madd_epi16(scale[2 * j], _mm256_maddubs_epi16(lo[j], xl));
                    let ph = _mm256_madd_epi16(scale[2 * j + 1], _mm256_maddubs_epi16(hi[j], xh));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
                }
                let pm = unsafe { q4k_mins(a, i, mins) };
                let dx = unsafe { *a.d.get_unchecked(i) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi), acc[t]);
                acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(-dmin * dx), _mm_cvtepi32_ps(pm), acc_m[t]);
            }
        }
        for ((o, acc), m) in out.iter_mut().zip(acc).zip(acc_m) {
            *o = hsum(acc) + hsum128(m);
        }
    }

    /// One Q6_K block unpacked: `d`, the 16 scales as i16, `q[n][part]` (32
    /// unsigned 6-bit values each: the stored value + 32, columns
    /// 128n + 32part..) and `scale[n][part]` (i16 lanes 0–7 and 8–15: the
    /// scales of its two 16-value groups).
    #[allow(clippy::type_complexity)]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn q6k_unpack(b: &[u8]) -> (f32, __m256i, [[__m256i; 4]; 2], [[__m256i; 4]; 2]) {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let d = h2f(b, 208);
        // SAFETY: a block is 210 bytes; the scales are bytes 192..208.
        let sc8 = unsafe { _mm_loadu_si128(b.as_ptr().add(192) as *const __m128i) };
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let mut q = [[_mm256_setzero_si256(); 4]; 2];
        let mut scale = [[_mm256_setzero_si256(); 4]; 2];
        for n in 0..2 {
            // SAFETY: 64n + 64 <= 128 and 128 + 32n + 32 <= 192.
            let ql0 = unsafe { load(b, 64 * n) };
            let ql1 = unsafe { load(b, 64 * n + 32) };
            let qh = unsafe { load(b, 128 + 32 * n) };
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
            let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
            q[n][0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), h0);
            q[n][1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), h1);
            q[n][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2);
            q[n][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3);
            for (part, s) in scale[n].iter_mut().enumerate() {
                let g = (8 * n + 2 * part) as i64;
                const ONES: i64 = 0x0101_0101_0101_0101;
                let shuf = _mm_set_epi64x((g + 1) * ONES, g * ONES);
                *s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, shuf));
            }
        }
        (d, sc16, q, scale)
    }

    /// A row's `-32 · Σ_g sc_g · (Σ x over group g)` for Q6_K block `i` (the
    /// stored values are the weights + 32).
    ///
    /// # Safety
    /// The row has 16 sums per block up to block `i`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn q6k_offset(a: &Act, i: usize, sc16: __m256i) -> __m256i {
        // SAFETY: 16 sums per block of the row.
        let sums = unsafe { _mm256_loadu_si256(a.sums.as_ptr().add(16 * i) as *const __m256i) };
        _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(_mm256_madd_epi16(sums, sc16), 5),
        )
    }

    /// # Safety
    /// `w` is whole Q6_K blocks; each `acts[t]` covers as many columns
    /// (Q8_K: 16 sums per block).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k(w: &[u8], acts: &[Act], out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for (i, b) in w.chunks_exact(210).enumerate() {
            let (d, sc16, q, scale) = q6k_unpack(b);
            for (t, a) in acts.iter().enumerate() {
                let base = QK_K * i;
                let mut sumi = unsafe { q6k_offset(a, i, sc16) };
                for n in 0..2 {
                    for part in 0..4 {
                        let x = unsafe { load(a.q, base + 128 * n + 32 * part) };
                        let p = _mm256_maddubs_epi16(q[n][part], x);
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale[n][part], p));
                    }
                }
                let dx = unsafe { *a.d.get_unchecked(i) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi), acc[t]);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }
}

/// 512-bit kernels (AVX-512F + BW): one register holds a Q4_K sub-block
/// pair's 64 weights, so each activation row needs half the instructions of
/// the AVX2 path, and the 32 registers hold a whole block's weights and
/// scales across eight rows without spilling.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::avx2::{hsum, hsum128, q4k_header, q4k_mins, q6k_offset, q6k_unpack};
    use super::{Act, ActFormat, QK_K, ROWS};

    /// [`super::quantize_block_scalar`] 16 values at a time, with the same
    /// arithmetic (each product is the same f32 multiply; rounding is
    /// done exactly, half away from zero for Q8_K as `f32::round`, half to
    /// even for Q8_0), so the bytes are identical. At 16 decode rows the
    /// scalar version, with a libm `roundf` call per value, took 17% of a
    /// step of the Q4_K_M bench model (`perf`).
    ///
    /// # Safety
    /// AVX-512F; `xb`/`qb` hold one block of the format (32 or 256).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_block(
        format: ActFormat,
        xb: &[f32],
        qb: &mut [u8],
        d: &mut f32,
        sums: &mut [i16],
    ) {
        let n = xb.len();
        debug_assert!(n.is_multiple_of(16) && qb.len() == n);
        let load = |c: usize| unsafe { _mm512_loadu_ps(xb.as_ptr().add(16 * c)) };
        let mut amax_v = _mm512_setzero_ps();
        for c in 0..n / 16 {
            amax_v = _mm512_max_ps(amax_v, _mm512_abs_ps(load(c)));
        }
        let amax = _mm512_reduce_max_ps(amax_v);
        // The scaled values, as i32 lanes, per 16 values.
        let store = |c: usize, q: __m512i, qb: &mut [u8]| unsafe {
            _mm_storeu_si128(qb.as_mut_ptr().add(16 * c).cast(), _mm512_cvtepi32_epi8(q))
        };
        match format {
            ActFormat::Q8_0 => {
                let dd = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let mut total = 0i32;
                for c in 0..n / 16 {
                    let x = _mm512_mul_ps(load(c), _mm512_set1_ps(id));
                    let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        x,
                    );
                    let q = _mm512_cvttps_epi32(r);
                    total += _mm512_reduce_add_epi32(q);
                    store(c, q, qb);
                }
                sums[0] = total as i16;
                *d = f16::from_f32(dd).to_f32();
            }
            ActFormat::Q8K => {
                if amax == 0.0 {
                    qb.fill(0);
                    *d = 0.0;
                    sums.fill(0);
                    return;
                }
                // The first value of the largest magnitude, as the scalar
                // scan (strictly greater) keeps it.
                let first = (0..n / 16)
                    .find_map(|c| {
                        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(
                            _mm512_abs_ps(load(c)),
                            _mm512_set1_ps(amax),
                        );
                        (hit != 0).then(|| 16 * c + hit.trailing_zeros() as usize)
                    })
                    .expect("amax is one of the values");
                let iscale = -127.0 / xb[first];
                let half = _mm512_set1_ps(0.5);
                for (c, sum) in sums.iter_mut().enumerate().take(n / 16) {
                    let x = _mm512_mul_ps(_mm512_set1_ps(iscale), load(c));
                    // Half away from zero, exactly: t = trunc(x) and the
                    // exact remainder x - t decide the step.
                    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
                    let up =
                        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(x, t)), half);
                    // ±1 with x's sign (integer ops: AVX-512F alone).
                    let step = _mm512_castsi512_ps(_mm512_or_si512(
                        _mm512_castps_si512(_mm512_set1_ps(1.0)),
                        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)),
                    ));
                    let r = _mm512_mask_add_ps(t, up, t, step);
                    let q = _mm512_min_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(127));
                    *sum = _mm512_reduce_add_epi32(q) as i16;
                    store(c, q, qb);
                }
                *d = 1.0 / iscale;
            }
        }
    }

    /// # Safety
    /// `w` is whole Q4_K blocks; each `acts[t]` covers as many columns
    /// (Q8_K: 16 sums per block); AVX-512F and BW.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn q4k(w: &[u8], acts: &[Act], out: &mut [f32]) {
        let mut acc = [_mm512_setzero_ps(); ROWS];
        let mut acc_m = [_mm_setzero_ps(); ROWS];
        let m4 = _mm256_set1_epi8(0xF);
        for (i, b) in w.chunks_exact(144).enumerate() {
            let (d, dmin, sc128, mins) = q4k_header(b);
            let broadcast = |s: usize| {
                let lo = (2 * s) as i16;
                let v = _mm_shuffle_epi8(sc128, _mm_set1_epi16(lo | ((lo + 1) << 8)));
                _mm256_set_m128i(v, v)
            };
            // Per 64 columns j: the 32 low nibbles (columns 64j..64j+32,
            // scale 2j) in the low half, the 32 high nibbles (the next 32,
            // scale 2j + 1) in the high half — the order the row's bytes
            // have in memory, so one 64-byte load meets them.
            let mut wq = [_mm512_setzero_si512(); 4];
            let mut scale = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                // SAFETY: 16 + 32 · 4 = 144 bytes, one block.
                let bits = unsafe { _mm256_loadu_si256(b.as_ptr().add(16 + 32 * j).cast()) };
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                wq[j] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                scale[j] = _mm512_inserti64x4(
                    _mm512_castsi256_si512(broadcast(2 * j)),
                    broadcast(2 * j + 1),
                    1,
                );
            }
            for (t, a) in acts.iter().enumerate() {
                let base = QK_K * i;
                let mut sumi = _mm512_setzero_si512();
                for j in 0..4 {
                    debug_assert!(base + 64 * j + 64 <= a.q.len());
                    // SAFETY: the row covers block i.
                    let x = unsafe { _mm512_loadu_si512(a.q.as_ptr().add(base + 64 * j).cast()) };
                    let p = _mm512_madd_epi16(scale[j], _mm512_maddubs_epi16(wq[j], x));
                    sumi = _mm512_add_epi32(sumi, p);
                }
                let pm = unsafe { q4k_mins(a, i, mins) };
                let dx = unsafe { *a.d.get_unchecked(i) };
                acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * dx), _mm512_cvtepi32_ps(sumi), acc[t]);
                acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(-dmin * dx), _mm_cvtepi32_ps(pm), acc_m[t]);
            }
        }
        for ((o, acc), m) in out.iter_mut().zip(acc).zip(acc_m) {
            *o = _mm512_reduce_add_ps(acc) + hsum128(m);
        }
    }

    /// # Safety
    /// `w` is whole Q6_K blocks; each `acts[t]` covers as many columns
    /// (Q8_K: 16 sums per block); AVX-512F and BW.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn q6k(w: &[u8], acts: &[Act], out: &mut [f32]) {
        let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for (i, b) in w.chunks_exact(210).enumerate() {
            let (d, sc16, q, scale) = q6k_unpack(b);
            // Parts (0, 1) and (2, 3) of each 128 columns side by side: 64
            // consecutive columns per register, as the row's bytes lie.
            let wq: [__m512i; 4] =
                std::array::from_fn(|k| join(q[k / 2][2 * (k % 2)], q[k / 2][2 * (k % 2) + 1]));
            let ws: [__m512i; 4] = std::array::from_fn(|k| {
                join(scale[k / 2][2 * (k % 2)], scale[k / 2][2 * (k % 2) + 1])
            });
            for (t, a) in acts.iter().enumerate() {
                let base = QK_K * i;
                let mut wide = _mm512_setzero_si512();
                for k in 0..4 {
                    debug_assert!(base + 64 * k + 64 <= a.q.len());
                    // SAFETY: the row covers block i.
                    let x = unsafe { _mm512_loadu_si512(a.q.as_ptr().add(base + 64 * k).cast()) };
                    let p = _mm512_maddubs_epi16(wq[k], x);
                    wide = _mm512_add_epi32(wide, _mm512_madd_epi16(ws[k], p));
                }
                let sumi = _mm256_add_epi32(
                    unsafe { q6k_offset(a, i, sc16) },
                    _mm256_add_epi32(
                        _mm512_castsi512_si256(wide),
                        _mm512_extracti64x4_epi64(wide, 1),
                    ),
                );
                let dx = unsafe { *a.d.get_unchecked(i) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi), acc[t]);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift).
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect()
    }

    /// Random blocks of `ty` with sane (finite, small) f16 scales.
    fn random_blocks(ty: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut b = bytes(rows * cols / ty.block_elems() * ty.block_bytes(), seed);
        let scale = |b: &mut [u8], at: usize, v: f32| {
            b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        };
        for (i, blk) in b.chunks_exact_mut(ty.block_bytes()).enumerate() {
            let v = 0.001 + (i % 7) as f32 * 0.0007;
            match ty {
                QuantType::Q4_0 | QuantType::Q8_0 => scale(blk, 0, v),
                QuantType::Q4K | QuantType::Q5K => {
                    scale(blk, 0, v);
                    scale(blk, 2, v * 0.5);
                }
                QuantType::Q6K => scale(blk, 208, v),
            }
        }
        b
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        bytes(n, seed)
            .into_iter()
            .map(|b| (b as f32 - 127.5) / 64.0)
            .collect()
    }

    const TYPES: [QuantType; 5] = [
        QuantType::Q4_0,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The integer dot products equal the float dot of the dequantized
    /// weights with the dequantized activations, for every type, ISA and
    /// row count, in the GGUF layout and (where this CPU runs them) the
    /// tiles.
    #[test]
    fn dots_match_dequantized_products() {
        // Not a multiple of 16 rows: the tiles' last group is partial.
        let n = 37;
        // 512 columns for every type, and an odd count of 32-column blocks
        // (the tiles hold Q8_0 blocks two at a time).
        let shapes = TYPES
            .map(|ty| (ty, 512))
            .into_iter()
            .chain([(QuantType::Q8_0, 544)]);
        for (ty, k) in shapes {
            let blocks = random_blocks(ty, n, k, 7);
            let w = QuantMatrix::new(ty, n, k, &blocks).expect("matrix");
            let tiled = QuantMatrix::new(ty, n, k, &blocks)
                .expect("matrix")
                .into_tiles(Isa::best());
            // Every call size of the tiles (Q4_K 1..=8 rows, Q8_0 1..=6,
            // Q6_K 1..=4 in registers and passes of 1..=8 above 4 rows) and
            // of the dot kernels (1..=8).
            for m in [1, 3, 4, 6, 7, 8, 9, 13, 15, 16, 17, 18, 19, 20, 21] {
                let x = values(m * k, 11 + m as u64);
                let acts = QuantizedRows::new(ty.activation(), &x, m, k);
                let mut want = vec![0f32; m * n];
                let mut row = vec![0f32; k];
                for r in 0..n {
                    w.dequantize_row(r, &mut row);
                    for t in 0..m {
                        let a = acts.row(t);
                        want[t * n + r] = (0..k)
                            .map(|j| {
                                row[j] as f64 * (a.q[j] as i8 as f64) * a.d[j / acts.block] as f64
                            })
                            .sum::<f64>() as f32;
                    }
                }
                let runs = Isa::supported()
                    .into_iter()
                    .map(|isa| (isa, &w))
                    .chain([(Isa::best(), &tiled)]);
                for (isa, w) in runs {
                    let mut y = vec![0f32; m * n];
                    qmatmul(isa, &x, m, w, &mut y);
                    for (i, (g, e)) in y.iter().zip(&want).enumerate() {
                        let tol = 1e-3 * (1.0 + e.abs());
                        assert!(
                            (g - e).abs() <= tol,
                            "{} {isa:?} tiled={} m={m} cell {i}: {g} vs {e}",
                            ty.name(),
                            w.is_tiled()
                        );
                    }
                }
            }
        }
    }

    /// The tiles give back every row's GGUF bytes (the embedding lookup of
    /// a tied table reads them), stack like GGUF rows, and give a row the
    /// same sums bit for bit whatever the other rows of the product are
    /// (a sequence's logits do not depend on its batch).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiles_keep_the_blocks_and_batch_invariance() {
        if !(Isa::best() >= Isa::Avx512 && tiles::available()) {
            return;
        }
        for (ty, k) in [
            (QuantType::Q4K, 2816),
            (QuantType::Q6K, 2816),
            (QuantType::Q8_0, 544),
            (QuantType::Q8_0, 512),
        ] {
            let n = 37;
            let blocks = random_blocks(ty, n, k, 21);
            let tiled = QuantMatrix::new(ty, n, k, &blocks)
                .expect("matrix")
                .into_tiles(Isa::best());
            assert!(tiled.is_tiled());
            let rb = tiled.row_bytes();
            let (mut row, mut want, mut got) = (vec![0u8; rb], vec![0f32; k], vec![0f32; k]);
            for r in 0..n {
                tiled.row_bytes_into(r, &mut row);
                assert!(row == blocks[r * rb..(r + 1) * rb], "{} row {r}", ty.name());
                dequantize(ty, &blocks[r * rb..(r + 1) * rb], &mut want);
                tiled.dequantize_row(r, &mut got);
                assert_eq!(got, want, "{} row {r}", ty.name());
            }
            let head = QuantMatrix::new(ty, 5, k, &blocks[..5 * rb]).expect("matrix");
            let stacked = QuantMatrix::concat(&[&head, &tiled]).expect("one type");
            assert!(stacked.is_tiled() == head.is_tiled() && stacked.rows() == 5 + n);
            stacked.row_bytes_into(5 + 17, &mut row);
            assert!(row == blocks[17 * rb..18 * rb], "{} stacked", ty.name());
            let stacked = QuantMatrix::concat(&[&tiled, &head]).expect("one type");
            assert!(stacked.is_tiled());
            stacked.row_bytes_into(n + 3, &mut row);
            assert!(row == blocks[3 * rb..4 * rb], "{} stacked tiles", ty.name());

            let m = 13;
            let x = values(m * k, 5);
            let mut all = vec![0f32; m * n];
            qmatmul(Isa::best(), &x, m, &tiled, &mut all);
            for t in [0, 6, 12] {
                let mut one = vec![0f32; n];
                qmatmul(Isa::best(), &x[t * k..(t + 1) * k], 1, &tiled, &mut one);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&one),
                    bits(&all[t * n..(t + 1) * n]),
                    "{} row {t}",
                    ty.name()
                );
            }
        }
    }

    /// Bit-identical to gguf-py's `gguf.quants.dequantize` on random
    /// blocks (`scripts/make-quant-testdata.py` wrote the reference).
    #[test]
    fn dequantization_matches_gguf_py() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quants");
        for ty in TYPES {
            let read = |ext: &str| {
                let path = dir.join(format!("{}.{ext}", ty.name()));
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            };
            let blocks = read("blocks");
            let want: Vec<f32> = read("f32")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &blocks, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{} value {i}: {g} vs {w}",
                    ty.name()
                );
            }
        }
    }

    #[test]
    fn quantized_activations_stay_close_to_the_input() {
        let (m, k) = (2, 512);
        let x = values(m * k, 3);
        for format in [ActFormat::Q8_0, ActFormat::Q8K] {
            let acts = QuantizedRows::new(format, &x, m, k);
            for t in 0..m {
                let a = acts.row(t);
                for j in 0..k {
                    let back = a.q[j] as i8 as f32 * a.d[j / acts.block];
                    let amax = 2.0;
                    assert!(
                        (back - x[t * k + j]).abs() <= amax / 127.0,
                        "{format:?} {j}"
                    );
                }
            }
        }
    }

    /// The vector quantizer gives the scalar one's bytes, scales and sums,
    /// on random blocks and on blocks whose scaled values sit exactly on
    /// halves (where the two roundings differ) or tie for the largest.
    #[test]
    fn vector_activation_quantization_is_bit_identical() {
        let mut blocks: Vec<Vec<f32>> = (0..64).map(|s| values(256, 100 + s)).collect();
        // Largest magnitude 127 (Q8_K: -127 / -127 = 1, Q8_0: 127 / 127 =
        // 1), so every other value is scaled by exactly ±1.
        let mut halves: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
        halves[5] = -127.0;
        halves[9] = 127.0;
        blocks.push(halves.clone());
        halves[5] = 127.0;
        halves[9] = -127.0;
        blocks.push(halves);
        blocks.push(vec![0.0; 256]);
        for xb in &blocks {
            for (format, n, per) in [(ActFormat::Q8K, 256, 16), (ActFormat::Q8_0, 32, 1)] {
                for part in xb.chunks_exact(n) {
                    let (mut q1, mut q2) = (vec![0u8; n], vec![0u8; n]);
                    let (mut d1, mut d2) = (0f32, 0f32);
                    let (mut s1, mut s2) = (vec![0i16; per], vec![0i16; per]);
                    quantize_block_scalar(format, part, &mut q1, &mut d1, &mut s1);
                    quantize_block(format, part, &mut q2, &mut d2, &mut s2);
                    assert_eq!(q1, q2, "{format:?} values");
                    assert_eq!(d1.to_bits(), d2.to_bits(), "{format:?} scale");
                    assert_eq!(s1, s2, "{format:?} sums");
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let err = QuantMatrix::new(QuantType::Q4K, 2, 100, &[]).expect_err("columns");
        assert!(err.to_string().contains("multiple of 256"), "{err}");
        let err = QuantMatrix::new(QuantType::Q8_0, 2, 64, &[0; 10]).expect_err("size");
        assert!(err.to_string().contains("136 bytes"), "{err}");
    }

    #[test]
    fn concat_stacks_rows_of_one_type() {
        let matrix = |ty, rows, cols, seed| {
            QuantMatrix::new(ty, rows, cols, &random_blocks(ty, rows, cols, seed)).expect("matrix")
        };
        let a = matrix(QuantType::Q8_0, 2, 64, 1);
        let b = matrix(QuantType::Q8_0, 3, 64, 2);
        let c = QuantMatrix::concat(&[&a, &b]).expect("same type");
        assert_eq!((c.rows(), c.cols()), (5, 64));
        let mut row = vec![0f32; 64];
        let mut want = vec![0f32; 64];
        c.dequantize_row(3, &mut row);
        b.dequantize_row(1, &mut want);
        assert_eq!(row, want);
        let q6 = matrix(QuantType::Q6K, 1, 256, 3);
        let q4 = matrix(QuantType::Q4K, 1, 256, 4);
        assert!(QuantMatrix::concat(&[&q6, &q4]).is_none());
    }
}
