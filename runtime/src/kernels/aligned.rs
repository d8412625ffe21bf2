//! A fixed-length, zero-initialised buffer aligned to 64 bytes (one cache
//! line), for packed weights and the KV pool.
//!
//! Why not `Vec<T>`: a panel of 16 f16 weights is 32 bytes, and the SIMD
//! loads of the kernels never straddle a cache line only if every panel
//! starts on a line boundary; `Vec` guarantees only `align_of::<T>()`.
//!
//! Large buffers (weights, the KV pool) come straight from anonymous
//! `mmap`: page-aligned and zero without a write. (The system allocator
//! zeroes over-aligned blocks with `memset`, touching every page at once:
//! 8 s for a 4 GiB pool here.)

use std::{
    alloc::{self, Layout},
    ops::{Deref, DerefMut},
    ptr::NonNull,
};

/// Plain-old-data element: any bit pattern (all zeros included) is valid.
///
/// # Safety
/// Implementors must be `Copy` types for which the all-zero bit pattern is a
/// valid value.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}
unsafe impl Pod for f32 {}
unsafe impl Pod for half::f16 {}
unsafe impl Pod for half::bf16 {}
unsafe impl Pod for u16 {}
unsafe impl Pod for u8 {}

const ALIGN: usize = 64;
/// From this size on, buffers are mapped rather than allocated.
const MAP_THRESHOLD: usize = 1 << 20;

pub struct AlignedVec<T: Pod> {
    ptr: NonNull<T>,
    len: usize,
}

#[cfg(unix)]
fn map_zeroed(bytes: usize) -> Option<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping; no address hint.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // Transparent huge pages where the kernel offers them (`madvise` mode is
    // Debian's default): weights and the KV pool are streamed end to end,
    // and 2 MiB pages spare the TLB a miss every 4 KiB (a forward's m=1
    // f16 products in `--bench kernels`, three runs each on the 2-core EPYC:
    // 14.0, 14.2, 14.7 ms before, 13.5, 13.4, 13.3 ms after); a 4 GiB pool
    // is faulted in 2048 pages instead of a million. Failure (no THP) is
    // harmless: the mapping stays on small pages.
    #[cfg(target_os = "linux")]
    // SAFETY: the range is the mapping just made; the advice changes only
    // how the kernel backs it.
    unsafe {
        libc::madvise(p, bytes, libc::MADV_HUGEPAGE)
    };
    NonNull::new(p.cast())
}

// SAFETY: the buffer is uniquely owned; `T: Send + Sync`.
unsafe impl<T: Pod> Send for AlignedVec<T> {}
unsafe impl<T: Pod> Sync for AlignedVec<T> {}

impl<T: Pod> AlignedVec<T> {
    /// `len` zeroed elements. The zero pages come from `calloc`-style
    /// allocation, so untouched parts cost no resident memory.
    pub fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
            };
        }
        #[cfg(unix)]
        if layout.size() >= MAP_THRESHOLD {
            let Some(ptr) = map_zeroed(layout.size()) else {
                alloc::handle_alloc_error(layout)
            };
            return Self {
                ptr: ptr.cast(),
                len,
            };
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("aligned buffer size overflows usize");
        Layout::from_size_align(bytes, ALIGN.max(align_of::<T>())).expect("aligned buffer layout")
    }

    pub fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }
}

impl<T: Pod> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        #[cfg(unix)]
        if layout.size() >= MAP_THRESHOLD {
            // SAFETY: mapped in `zeroed` with this size.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), layout.size()) };
            return;
        }
        if layout.size() != 0 {
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised (zeroed, `Pod`) elements at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AlignedVec<{}>[{}]",
            std::any::type_name::<T>(),
            self.len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_and_aligned() {
        for len in [0, 1, 17, 4096, (MAP_THRESHOLD / 2) + 3] {
            let mut v = AlignedVec::<half::f16>::zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| x.to_bits() == 0));
            if len > 0 {
                assert_eq!(v.as_ptr() as usize % ALIGN, 0);
                v[len - 1] = half::f16::ONE;
                assert_eq!(v[len - 1], half::f16::ONE);
            }
        }
    }
}
