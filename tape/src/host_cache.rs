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
//! Blocks of 32 MiB and more that come back at the same size every step (a dense block's shared
//! storage) are kept by the engine itself: such a buffer, freed, goes to a
//! small pool (at most [`POOL_BUFFERS`] buffers, [`POOL_BYTES`] in all) instead of back to the
//! OS, and the next request of exactly its size takes it from there, so a steady-state step
//! neither page-faults on them nor pays the cross-core TLB shootdowns of unmapping them. The
//! engine's accounting counts a pooled buffer as freed (it is "reserved", not "allocated").
//! Other large buffers are not pooled: their sizes vary (a naive layer's concatenation), and
//! keeping them raised the resident set by gigabytes in a trial.
//!
//! [`reserved_bytes`] reports what the process holds (its resident set: PyTorch's "reserved"
//! beside the engine's "allocated", [`crate::MemoryStats`]), and [`release`] hands the cache's
//! unused part back to the OS. Set the environment variable `TAPE_HOST_CACHE=0` to keep glibc's
//! defaults. On other platforms this module does nothing.

use crate::dtype::{CpuData, Elem};
use std::sync::{Mutex, Once};

static CONFIGURE: Once = Once::new();

/// Host buffers of at least this many bytes are pooled when freed (glibc's largest mmap
/// threshold: smaller ones are reused from its heap).
pub const POOL_MIN_BYTES: usize = 32 << 20;
/// Most buffers the pool keeps.
pub const POOL_BUFFERS: usize = 16;
/// Most bytes the pool keeps.
pub const POOL_BYTES: usize = 4 << 30;

/// Freed large host buffers, most recent last.
static POOL: Mutex<Vec<CpuData>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<CpuData>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes_of(data: &CpuData) -> usize {
    data.len() * data.dtype().size_in_bytes()
}

/// Keeps a freed host buffer for reuse if it is large and the pool has room (else it is freed).
pub(crate) fn recycle(data: CpuData) {
    if !is_enabled() || bytes_of(&data) < POOL_MIN_BYTES {
        return;
    }
    let mut p = pool();
    let held: usize = p.iter().map(bytes_of).sum();
    if p.len() < POOL_BUFFERS && held + bytes_of(&data) <= POOL_BYTES {
        p.push(data);
    }
}

/// An empty vector with room for exactly `len` elements of `T`: a pooled buffer of that size if
/// there is one, else a new allocation.
pub(crate) fn vec_with_capacity<T: Elem>(len: usize) -> Vec<T> {
    if len * std::mem::size_of::<T>() >= POOL_MIN_BYTES {
        let mut p = pool();
        let found = p
            .iter()
            .rposition(|d| d.dtype() == T::DTYPE && d.len() == len);
        if let Some(i) = found {
            if let Ok(mut v) = T::unwrap(p.swap_remove(i)) {
                v.clear();
                return v;
            }
        }
    }
    Vec::with_capacity(len)
}

/// Asks the OS to back a large host buffer with huge pages where it can (Linux's transparent
/// huge pages in `madvise` mode): a block storage is read and written a plane (a few KiB) per
/// image at a stride of the whole block, one small page per plane otherwise.
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    let bytes = std::mem::size_of_val(v);
    if is_enabled() && bytes >= POOL_MIN_BYTES {
        platform::advise_huge(v.as_ptr() as usize, bytes);
    }
}

/// Bytes held by the pool of freed large buffers.
pub fn pooled_bytes() -> usize {
    pool().iter().map(bytes_of).sum()
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
    pool().clear();
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

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    /// A large pooled buffer, freed, comes back for the next request of its size (the same
    /// allocation, zeroed again), and the engine's accounting counts it as freed meanwhile.
    #[test]
    fn large_pooled_buffers_are_reused_and_not_counted_while_pooled() {
        if !super::is_enabled() {
            return;
        }
        let dev = Device::cpu();
        // An odd size no other test asks for: 32 MiB and 4 KiB more.
        let shape = [1, 1, 8 * 1024 + 1, 1024];
        let before = dev.memory().current();
        let a = Tensor::zeros_pooled(&shape, DType::F32, &dev).unwrap();
        let bytes = a.size_in_bytes();
        assert!(bytes >= super::POOL_MIN_BYTES);
        let ptr = a.as_slice::<f32>().unwrap().as_ptr();
        let mut a2 = a;
        a2.make_mut::<f32>().unwrap()[7] = 3.0;
        drop(a2);
        assert_eq!(
            dev.memory().current(),
            before,
            "a pooled buffer is not allocated"
        );
        let b = Tensor::zeros_pooled(&shape, DType::F32, &dev).unwrap();
        assert_eq!(
            b.as_slice::<f32>().unwrap().as_ptr(),
            ptr,
            "the pooled allocation"
        );
        assert!(b.as_slice::<f32>().unwrap().iter().all(|&v| v == 0.0));
        assert_eq!(dev.memory().current(), before + bytes);
    }
}
