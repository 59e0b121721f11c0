//! Launching the engine's NVRTC kernels: each op declares its kernels beside it
//! ([`nvrtc_program!`], with the op's `kernels.cu`), and [`launch!`] runs one of them on a GPU's
//! stream; the launch geometry helpers ([`grid`], [`multi_grid`], [`per_row`]) and the
//! [`PartList`] argument are shared. This layer knows no op.

use cudarc::driver::{DeviceRepr, LaunchConfig};

/// One op's NVRTC program: its CUDA source (compiled after `prelude.cuh`) and the names of its
/// kernels (each with the entry points `NAME_f32`, `NAME_f64`, `NAME_bf16` and `NAME_f16`),
/// compiled once per GPU at the first launch of one of them.
#[derive(Debug)]
pub(crate) struct Program {
    /// A name unique in the process (the declaring module and type).
    pub(crate) name: &'static str,
    /// The op's `kernels.cu`.
    pub(crate) source: &'static str,
    /// Kernel names without the dtype suffix, in the order of the declaring enum.
    pub(crate) kernels: &'static [&'static str],
}

/// A kernel of one op's [`Program`] (a variant of the enum [`nvrtc_program!`] declares).
pub(crate) trait Kernel: Copy + std::fmt::Debug {
    /// The program the kernel belongs to.
    fn program(self) -> &'static Program;
    /// Its position in [`Program::kernels`].
    fn index(self) -> usize;
}

/// Declares an op's NVRTC kernels: an enum with one variant per kernel, each naming its entry
/// points in the op's CUDA source (`source`, usually `include_str!("kernels.cu")` beside the
/// op), and its [`Kernel`] implementation.
macro_rules! nvrtc_program {
    (
        $(#[$attr:meta])*
        $vis:vis enum $k:ident from $src:expr => { $($id:ident = $name:literal,)* }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(clippy::enum_variant_names)]
        $vis enum $k {
            $(#[doc = concat!("`", $name, "_f32` / `_f64` / `_bf16` / `_f16`.")] $id,)*
        }

        impl $crate::device::cuda::Kernel for $k {
            fn program(self) -> &'static $crate::device::cuda::Program {
                static PROGRAM: $crate::device::cuda::Program = $crate::device::cuda::Program {
                    name: concat!(module_path!(), "::", stringify!($k)),
                    source: $src,
                    kernels: &[$($name,)*],
                };
                &PROGRAM
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use nvrtc_program;

/// Launches kernel `$k` (a [`Kernel`]) for `$dtype` on `$be`'s stream with launch configuration
/// `$cfg` and the kernel's arguments, compiling its program first if this GPU has not yet; the
/// value is a `Result<()>`. The caller passes the kernel's exact argument list, in order and
/// with the same types as its `kernels.cu` declares.
macro_rules! launch {
    ($be:expr, $k:expr, $dtype:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let be: &$crate::device::cuda::Backend = $be;
        let cfg: cudarc::driver::LaunchConfig = $cfg;
        match be.function($k, $dtype) {
            Err(e) => Err(e),
            Ok(f) => {
                let mut b = be.stream.launch_builder(&f);
                $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )*
                // SAFETY: the caller passes the kernel's exact argument list (see its
                // kernels.cu); buffers are sized from checked shapes and every kernel bounds its
                // indices by the sizes passed.
                let r = unsafe { b.launch(cfg) };
                r.map(|_| ()).map_err(|e| {
                    $crate::device::cuda::driver_err(concat!("kernel launch ", stringify!($k)), e)
                })
            }
        }
    }};
}
pub(crate) use launch;

/// Threads per block of the element-wise kernels.
pub(crate) const BLOCK: u32 = 256;
/// Threads per block of the reduction kernels (`RBLOCK` in `prelude.cuh`).
pub(crate) const RBLOCK: u32 = 256;
/// Most blocks of a grid-stride launch (enough to fill any current GPU several times over).
const MAX_BLOCKS: usize = 1 << 15;
/// Blocks of the first stage of a full sum (`sum_partial`).
pub(crate) const SUM_BLOCKS: usize = 1024;

/// A grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Most blocks a multi-tensor launch gives one tensor (they stride over its elements).
const MULTI_BLOCKS_PER_TENSOR: usize = 64;
/// Most tensors one multi-tensor launch gives their own blocks at once (the grid's y size, at
/// most 65535; the kernels loop over the rest).
const MULTI_TENSORS_AT_ONCE: usize = 4096;

/// A multi-tensor launch over `tensors` tensors, the longest `longest` elements: blocks
/// `(x, t)` work on tensor `t` (and `t + grid.y`, ...), the `x` blocks striding over its
/// elements (`TENSOR_STRIDE` and `GRID_STRIDE` in `prelude.cuh`).
pub(crate) fn multi_grid(longest: usize, tensors: usize) -> LaunchConfig {
    let x = longest
        .div_ceil(BLOCK as usize)
        .clamp(1, MULTI_BLOCKS_PER_TENSOR);
    let y = tensors.clamp(1, MULTI_TENSORS_AT_ONCE);
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One reduction block per row / channel (`rows` blocks of [`RBLOCK`] threads).
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (RBLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Most parts one `concat` / `split` launch handles (`MAX_PARTS` in `prelude.cuh`).
pub(crate) const MAX_PARTS: usize = 32;

/// Up to [`MAX_PARTS`] tensors of a concatenation: device addresses, row widths and offsets,
/// passed by value to `concat` / `split` (the layout of `PartList` in `prelude.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartList {
    pub(crate) ptr: [u64; MAX_PARTS],
    pub(crate) width: [u64; MAX_PARTS],
    pub(crate) offset: [u64; MAX_PARTS],
}

impl Default for PartList {
    fn default() -> Self {
        PartList {
            ptr: [0; MAX_PARTS],
            width: [0; MAX_PARTS],
            offset: [0; MAX_PARTS],
        }
    }
}

// SAFETY: `PartList` is `#[repr(C)]` plain data (u64 arrays) with the exact layout of the
// kernel's `struct PartList` (three arrays of 32 unsigned 64-bit integers, 8-byte aligned).
unsafe impl DeviceRepr for PartList {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_list_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<PartList>(), 3 * 8 * MAX_PARTS);
        assert_eq!(std::mem::align_of::<PartList>(), 8);
    }
}
