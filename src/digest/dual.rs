//! Two SHA-256 digests over one byte stream, for the price of one where the CPU allows.
//!
//! A first build needs two digests of every weight byte: the file's own (labels, SBOM, pins)
//! and its layer's (the blob name), which covers the tar header before the file and the padding
//! after it. Why not two `sha2::Sha256`s: with the x86 SHA extensions, a round instruction's
//! latency is twice its throughput, so one stream leaves half the unit idle. Two independent
//! states fed the same 64-byte blocks run at the speed of one (measured on the CI machine's AMD
//! EPYC: 2.0x the work rate of `sha2` on one core), and share the message schedule. Tar puts
//! file data at multiples of 512 bytes, so a layer's blocks and its file's blocks coincide.
//! No crate offers multi-stream SHA-256; elsewhere (other CPUs, misaligned streams) this falls
//! back to `sha2`'s own compression function, one stream after the other.

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

use super::Sha256Digest;

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A running SHA-256 whose block function can be shared with another one ([`update_both`]).
#[derive(Clone)]
pub struct StreamHasher {
    state: [u32; 8],
    /// A partial block: `block[..filled]` is pending.
    block: [u8; 64],
    filled: usize,
    len: u64,
}

impl Default for StreamHasher {
    fn default() -> Self {
        Self {
            state: IV,
            block: [0; 64],
            filled: 0,
            len: 0,
        }
    }
}

impl StreamHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, data: &[u8]) {
        let head = self.consumed_head(data);
        let blocks = self.fill(data);
        compress(&mut self.state, blocks);
        self.keep(&data[head + blocks.len() * 64..]);
        self.len += data.len() as u64;
    }

    pub fn finish(mut self) -> Sha256Digest {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.filled].copy_from_slice(&self.block[..self.filled]);
        tail[self.filled] = 0x80;
        let end = if self.filled < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        compress(&mut self.state, as_blocks(&tail[..end]));
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        Sha256Digest(out)
    }

    /// Completes the pending block from the head of `data` (compressing it if full) and
    /// returns the whole blocks that follow it in `data`.
    fn fill<'a>(&mut self, data: &'a [u8]) -> &'a [[u8; 64]] {
        let head = self.consumed_head(data);
        if self.filled > 0 {
            self.block[self.filled..self.filled + head].copy_from_slice(&data[..head]);
            self.filled += head;
            if self.filled == 64 {
                compress(&mut self.state, std::slice::from_ref(&self.block));
                self.filled = 0;
            }
        }
        let whole = (data.len() - head) / 64 * 64;
        as_blocks(&data[head..head + whole])
    }

    /// How many bytes at the head of `data` go into the pending block.
    fn consumed_head(&self, data: &[u8]) -> usize {
        if self.filled == 0 {
            0
        } else {
            (64 - self.filled).min(data.len())
        }
    }

    /// Keeps `rest` (shorter than a block, after the whole ones) as the pending block.
    fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.block[self.filled..self.filled + rest.len()].copy_from_slice(rest);
            self.filled += rest.len();
        }
    }
}

/// Feeds `data` to both hashers. The blocks are shared (one pass over memory, one message
/// schedule, interleaved rounds) when both are at the same offset within a block.
pub fn update_both(a: &mut StreamHasher, b: &mut StreamHasher, data: &[u8]) {
    if a.filled != b.filled {
        a.update(data);
        b.update(data);
        return;
    }
    let head = a.consumed_head(data);
    let blocks = a.fill(data);
    b.fill(data);
    compress_two(&mut a.state, &mut b.state, blocks);
    let rest = &data[head + blocks.len() * 64..];
    a.keep(rest);
    b.keep(rest);
    a.len += data.len() as u64;
    b.len += data.len() as u64;
}

/// `data` (whole blocks) as blocks. (`<[u8]>::as_chunks` needs Rust 1.88; the MSRV is 1.85.)
fn as_blocks(data: &[u8]) -> &[[u8; 64]] {
    debug_assert_eq!(data.len() % 64, 0);
    // SAFETY: `[u8; 64]` has alignment 1 and no padding, and `len / 64` blocks lie within `data`.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<[u8; 64]>(), data.len() / 64) }
}

fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    // SAFETY: `GenericArray<u8, U64>` has the layout of `[u8; 64]` (it is `repr(transparent)`
    // over it; generic-array's own `from_slice` casts the same way).
    let blocks = unsafe {
        std::slice::from_raw_parts(
            blocks.as_ptr().cast::<GenericArray<u8, U64>>(),
            blocks.len(),
        )
    };
    sha2::compress256(state, blocks);
}

fn compress_two(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        // SAFETY: the CPU has the instructions `shani::compress_two` is compiled for.
        unsafe { shani::compress_two(a, b, blocks) };
        return;
    }
    compress(a, blocks);
    compress(b, blocks);
}

/// Two-stream SHA-256 with the x86 SHA extensions: the single-stream code of the `sha2` crate
/// (`sha256/x86.rs`, after Intel's reference), with a second state whose rounds interleave.
#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    pub fn available() -> bool {
        is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("sse2")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1")
    }

    /// The state in the ABEF/CDGH order the round instructions use.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(state: &[u32; 8]) -> (__m128i, __m128i) {
        let (dcba, efgh) = (
            _mm_set_epi32(
                state[3] as i32,
                state[2] as i32,
                state[1] as i32,
                state[0] as i32,
            ),
            _mm_set_epi32(
                state[7] as i32,
                state[6] as i32,
                state[5] as i32,
                state[4] as i32,
            ),
        );
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(efgh, 0x1B);
        (
            _mm_alignr_epi8(cdab, efgh, 8),
            _mm_blend_epi16(efgh, cdab, 0xF0),
        )
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn store(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgef = _mm_alignr_epi8(dchg, feba, 8);
        let mut words = [0u32; 8];
        // SAFETY: `words` is 32 bytes, two unaligned 16-byte stores fit it.
        unsafe {
            _mm_storeu_si128(words.as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(words.as_mut_ptr().add(4).cast(), hgef);
        }
        *state = words;
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn schedule(v0: __m128i, v1: __m128i, v2: __m128i, v3: __m128i) -> __m128i {
        let t1 = _mm_sha256msg1_epu32(v0, v1);
        let t2 = _mm_alignr_epi8(v3, v2, 4);
        _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), v3)
    }

    /// # Safety
    /// The CPU must have SHA, SSE2, SSSE3 and SSE4.1 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress_two(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
        let mask = _mm_set_epi64x(
            0x0C0D_0E0F_0809_0A0Bu64 as i64,
            0x0405_0607_0001_0203u64 as i64,
        );
        let (mut abef_a, mut cdgh_a) = load(a);
        let (mut abef_b, mut cdgh_b) = load(b);
        for block in blocks {
            let saved = (abef_a, cdgh_a, abef_b, cdgh_b);
            let mut w = [_mm_setzero_si128(); 16];
            for (i, word) in w.iter_mut().take(4).enumerate() {
                // SAFETY: bytes 16*i..16*i+16 of the 64-byte block; unaligned load.
                let raw = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * i).cast()) };
                *word = _mm_shuffle_epi8(raw, mask);
            }
            for i in 0..16 {
                if i >= 4 {
                    w[i] = schedule(w[i - 4], w[i - 3], w[i - 2], w[i - 1]);
                }
                // SAFETY: K has 64 words; 4*i+4 <= 64.
                let k = unsafe { _mm_loadu_si128(K.as_ptr().add(4 * i).cast()) };
                let t1 = _mm_add_epi32(w[i], k);
                let t2 = _mm_shuffle_epi32(t1, 0x0E);
                cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, t1);
                cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, t1);
                abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, t2);
                abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, t2);
            }
            abef_a = _mm_add_epi32(abef_a, saved.0);
            cdgh_a = _mm_add_epi32(cdgh_a, saved.1);
            abef_b = _mm_add_epi32(abef_b, saved.2);
            cdgh_b = _mm_add_epi32(cdgh_b, saved.3);
        }
        store(a, abef_a, cdgh_a);
        store(b, abef_b, cdgh_b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) ^ seed).rotate_left(7) as u8)
            .collect()
    }

    #[test]
    fn one_stream_matches_sha2_at_every_split() {
        let data = bytes(1000, 1);
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000] {
            for split in [0, 1, 63, 64, 100, len] {
                let split = split.min(len);
                let mut h = StreamHasher::new();
                h.update(&data[..split]);
                h.update(&data[split..len]);
                assert_eq!(h.len(), len as u64);
                assert_eq!(h.finish(), Sha256Digest::of(&data[..len]), "{len}/{split}");
            }
        }
    }

    /// A layer (header, file, padding) and the file inside it, as the export feeds them; and
    /// a misaligned pair, which takes the one-after-the-other path.
    #[test]
    fn two_streams_match_sha2_aligned_or_not() {
        let file = bytes(3 * 1024 * 1024 + 333, 2);
        for header in [512usize, 1536, 700] {
            let head = bytes(header, 3);
            let mut layer = StreamHasher::new();
            layer.update(&head);
            let mut inner = StreamHasher::new();
            let mut at = 0usize;
            for piece in [1, 63, 64, 4096, 1 << 20, 5, usize::MAX] {
                let end = file.len().min(at.saturating_add(piece));
                update_both(&mut layer, &mut inner, &file[at..end]);
                at = end;
            }
            layer.update(&[0u8; 1024]);
            assert_eq!(
                inner.finish(),
                Sha256Digest::of(&file),
                "file after {header}"
            );
            let whole = [&head[..], &file[..], &[0u8; 1024]].concat();
            assert_eq!(layer.finish(), Sha256Digest::of(&whole), "layer, {header}");
        }
    }

    #[test]
    fn the_fallback_gives_the_same_states() {
        let data = bytes(64 * 100, 4);
        let blocks = as_blocks(&data);
        let (mut a, mut b) = (IV, [7u32; 8]);
        compress_two(&mut a, &mut b, blocks);
        let (mut a2, mut b2) = (IV, [7u32; 8]);
        compress(&mut a2, blocks);
        compress(&mut b2, blocks);
        assert_eq!((a, b), (a2, b2));
    }
}
