//! Which SIMD instruction set the CPU kernels use, chosen at run time.
//!
//! The shipped server is compiled for generic x86-64 (it must start on any
//! site's CPU), so the fast paths are compiled with `#[target_feature]` and
//! picked here from `cpuid`, never from `-C target-cpu=native`.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust; any CPU.
    Generic,
    /// x86-64 with AVX2, FMA and F16C (Intel Haswell, AMD Zen and later).
    Avx2,
    /// x86-64 with AVX-512F (and the AVX2 set): 16 f32 lanes per register.
    Avx512,
}

impl Isa {
    /// The best set this CPU supports (cached after the first call).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|isa| isa.is_supported())
                .unwrap_or(Isa::Generic)
        })
    }

    /// Whether this CPU can run kernels built for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// Every set this CPU supports, slowest first (tests run each).
    pub fn supported() -> Vec<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512 => "avx512f",
        }
    }
}

/// The AVX-512 mask of the first `min(n, 16)` lanes: a partial panel, a
/// group's live rows, a row's tail.
#[cfg(target_arch = "x86_64")]
pub fn lanes16(n: usize) -> std::arch::x86_64::__mmask16 {
    if n >= 16 {
        !0
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// Writes a kernel's accumulators out: `tiles[t][h]` to `c + t·ldc + 16h`,
/// the first `nr` of its `16·P` lanes only (a partial panel), added to
/// what is there with `accumulate`. One epilogue for every AVX-512 kernel
/// that keeps `P` 16-lane registers per row.
///
/// # Safety
/// AVX-512F (inlined into the kernels, whose target features it takes);
/// `c` covers `tiles.len()` rows of stride `ldc` and `nr` lanes each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn store_tiles<const P: usize>(
    tiles: &[[std::arch::x86_64::__m512; P]],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; P] = std::array::from_fn(|h| lanes16(nr.saturating_sub(16 * h)));
    for (t, row) in tiles.iter().enumerate() {
        for (h, (&v, &mask)) in row.iter().zip(&masks).enumerate() {
            if mask == 0 {
                continue;
            }
            // SAFETY: the caller's contract: row t, lanes below `nr`.
            unsafe {
                let cp = c.add(t * ldc + 16 * h);
                let v = if accumulate {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cp))
                } else {
                    v
                };
                _mm512_mask_storeu_ps(cp, mask, v);
            }
        }
    }
}
