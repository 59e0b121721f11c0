//! The host memory cache. A training step frees and allocates the same buffers every step; by
//! default glibc maps blocks above a moving threshold straight from the OS and unmaps them on
//! free, and trims its heap, so each step pays page faults and zeroing for fresh memory. On the
//! first `Device::cpu()` the engine sets glibc's mmap threshold to its maximum (32 MiB: blocks up
//! to that size come from the heap and are reused from its size-classed free lists) and turns
//! heap trimming off (freed memory stays for the next step). Blocks above 32 MiB still get their
//! own mappings, which keeps fragmentation, and so the resident set, in check: measured at
//! DenseNet-BC-100 batch 64 (one run), step times naive 1.46 -> 1.19 s, Layer 1.29 -> 1.19 s,
//! peak RSS within 1% of glibc's defaults or lower. (Taking every block from the heap was as
//! fast in naive mode but raised Layer mode's peak RSS by 17%.)
//!
//! A dense block's shared storage and its gradient (56 MB each at DenseNet-BC-100 batch 64) ask
//! for transparent huge pages (`advise_huge_pages`): they are read a plane (4 KiB) per image
//! at the stride of the whole block. Keeping such blocks in a pool of the engine's own, to skip
//! their page faults, was tried and left out: a pooled block sits idle in the resident set
//! through the next forward's peak (naive mode frees block 1's storage after block 1).
//!
//! [`reserved_bytes`] reports what the process holds (its resident set: PyTorch's "reserved"
//! beside the engine's "allocated", [`crate::MemoryStats`]), and [`release`] hands the cache's
//! unused part back to the OS. Set the environment variable `TAPE_HOST_CACHE=0` to keep glibc's
//! defaults. On other platforms this module does nothing.

use std::sync::Once;

static CONFIGURE: Once = Once::new();

/// Host buffers of at least this many bytes are worth huge pages (glibc maps them on their own).
pub const LARGE_BYTES: usize = 32 << 20;

/// Asks the OS to back a large host buffer with huge pages where it can (Linux's transparent
/// huge pages in `madvise` mode): a block storage is read and written a plane (a few KiB) per
/// image at a stride of the whole block, one small page per plane otherwise.
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    let bytes = std::mem::size_of_val(v);
    if is_enabled() && bytes >= LARGE_BYTES {
        platform::advise_huge(v.as_ptr() as usize, bytes);
    }
}

/// Whether the cache is switched on (it is, on glibc, unless `TAPE_HOST_CACHE=0`).
pub fn is_enabled() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::env::var("TAPE_HOST_CACHE").map_or(true, |v| v != "0")
}

/// Configures the allocator once per process (called by `Device::cpu()`).
pub(crate) fn configure() {
    CONFIGURE.call_once(|| {
        if is_enabled() {
            platform::cache_everything();
        }
    });
}

/// Bytes of host memory the process holds (its resident set: tensors, the cache's reusable
/// blocks, code), where the OS tells (Linux).
pub fn reserved_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Returns the allocator's unused cached memory to the OS; the next steps pay page faults again
/// until the cache is warm.
pub fn release() {
    platform::release()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod platform {
    pub(super) fn cache_everything() {
        // SAFETY: mallopt only changes glibc's allocation policy; it is called once, before the
        // engine allocates its buffers. M_MMAP_THRESHOLD 32 MiB (glibc's maximum on 64-bit):
        // smaller blocks come from the heap; M_TRIM_THRESHOLD -1: freed memory at the top of the
        // heap is never returned (a documented value).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    }

    pub(super) fn advise_huge(addr: usize, bytes: usize) {
        const HUGE: usize = 2 << 20;
        let start = addr.next_multiple_of(HUGE);
        let end = (addr + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside one live allocation of the caller's; MADV_HUGEPAGE
            // only changes how the kernel backs it (the contents stay), and a failure is
            // harmless (small pages stay).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }

    pub(super) fn release() {
        // SAFETY: malloc_trim only returns free pages of glibc's own heaps to the OS.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod platform {
    pub(super) fn cache_everything() {}

    pub(super) fn advise_huge(_addr: usize, _bytes: usize) {}

    pub(super) fn release() {}
}
