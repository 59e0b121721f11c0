//! Element-wise maps of the CPU kernels: parallel over elements for large buffers.

use crate::dtype::{Elem, Scalar};
use crate::error::Result;
use crate::simd::widest_simd;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many elements, element-wise kernels stay on one thread.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Elements per task of the parallel maps.
const MAP_CHUNK: usize = 1 << 14;

/// `out[i] = f(x[i])` as a new tensor on `x`'s device.
pub(crate) fn map_unary<T: Elem>(x: &Tensor, f: impl Fn(T) -> T + Sync) -> Result<Tensor> {
    let xs = x.as_slice::<T>()?;
    // SAFETY: `map1` writes every slot of its chunk (its input slice is as long).
    let out = unsafe { mapped(xs.len(), |o, at| map1(o, &xs[at..at + o.len()], &f)) };
    Tensor::from_vec(out, x.shape(), x.device())
}

/// `out[i] = f(a[i], b[i])` as a new tensor shaped like `a` (shapes checked by the caller).
pub(crate) fn map_binary<T: Elem>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(T, T) -> T + Sync,
) -> Result<Tensor> {
    let (xs, ys) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    let len = xs.len().min(ys.len());
    // SAFETY: `map2` writes every slot of its chunk (its input slices are as long).
    let out = unsafe {
        mapped(len, |o, at| {
            let end = at + o.len();
            map2(o, (&xs[at..end], &ys[at..end]), &f)
        })
    };
    Tensor::from_vec(out, a.shape(), a.device())
}

/// A vector of `len` elements written chunk by chunk by `fill(chunk, offset)` (in parallel for
/// large vectors), with no zero fill first.
///
/// # Safety
/// `fill` must write every slot of every chunk it is given.
unsafe fn mapped<T: Elem>(
    len: usize,
    fill: impl Fn(&mut [MaybeUninit<T>], usize) + Sync,
) -> Vec<T> {
    // SAFETY: the chunks cover all `len` slots, and the caller guarantees that `fill` writes
    // every slot it gets.
    unsafe {
        written_vec(len, |slots| {
            if len >= PAR_MIN {
                slots
                    .par_chunks_mut(MAP_CHUNK)
                    .enumerate()
                    .for_each(|(i, o)| fill(o, i * MAP_CHUNK));
            } else {
                fill(slots, 0);
            }
        })
    }
}

widest_simd!(
    /// `out[i] = f(x[i])` over equal-length slices.
    fn map1<T>(out: &mut [MaybeUninit<T>], x: &[T], f: impl Fn(T) -> T) = map1_body;
);

#[inline(always)]
fn map1_body<T: Elem>(out: &mut [MaybeUninit<T>], x: &[T], f: impl Fn(T) -> T) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(f(v));
    }
}

widest_simd!(
    /// `out[i] = f(a[i], b[i])` over equal-length slices.
    fn map2<T>(out: &mut [MaybeUninit<T>], ab: (&[T], &[T]), f: impl Fn(T, T) -> T) = map2_body;
);

#[inline(always)]
fn map2_body<T: Elem>(out: &mut [MaybeUninit<T>], (a, b): (&[T], &[T]), f: impl Fn(T, T) -> T) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        o.write(f(x, y));
    }
}

/// A vector of `len` elements written by `fill`, with no zero fill first (for kernels that
/// overwrite their whole output).
///
/// # Safety
/// `fill` must write every one of the `len` slots it is given.
pub(crate) unsafe fn written_vec<T>(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` initialised all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Writes `src` into the slots `dst` (equal lengths).
pub(crate) fn write_copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    dst.iter_mut().zip(src).for_each(|(d, &s)| {
        d.write(s);
    });
}

/// Fills the slots `dst` with `value` and returns them as initialised elements.
pub(crate) fn write_fill<T: Copy>(dst: &mut [MaybeUninit<T>], value: T) -> &mut [T] {
    dst.iter_mut().for_each(|d| {
        d.write(value);
    });
    // SAFETY: every slot was just written.
    unsafe { assume_init_mut(dst) }
}

/// Initialised elements as slots to overwrite (with initialised values only: the result must not
/// be used to un-initialise them).
pub(crate) fn as_slots<T: Copy>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and only initialised values (of a `Copy` type,
    // nothing to drop) are written through the result.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// `s` as a slice of `B` when `A` and `B` are the same dtype (`Scalar` is sealed, one type per
/// dtype: so the same type), else `None`.
pub(crate) fn as_dtype<A: Scalar, B: Scalar>(s: &[A]) -> Option<&[B]> {
    // SAFETY: equal dtypes mean `A` and `B` are one type.
    (A::DTYPE == B::DTYPE)
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

/// [`as_dtype`] of a mutable slice.
pub(crate) fn as_dtype_mut<A: Scalar, B: Scalar>(s: &mut [A]) -> Option<&mut [B]> {
    // SAFETY: as in `as_dtype`.
    (A::DTYPE == B::DTYPE)
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

/// [`as_dtype`] of slots.
pub(crate) fn as_dtype_slots<A: Scalar, B: Scalar>(
    s: &mut [MaybeUninit<A>],
) -> Option<&mut [MaybeUninit<B>]> {
    // SAFETY: as in `as_dtype`.
    (A::DTYPE == B::DTYPE)
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

/// Initialised slots as elements.
///
/// # Safety
/// Every slot of `s` must have been written.
pub(crate) unsafe fn assume_init_mut<T>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and the caller vouches for every slot.
    unsafe { &mut *(s as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// The planes of one channel of an output being written: `n` planes of `hw` elements, in image
/// order.
pub(crate) type ChannelPlanes<'a, T> = Vec<&'a mut [MaybeUninit<T>]>;

/// A new `n x c x hw` (NCHW) buffer written channel by channel, without a zero fill: `f(ch,
/// planes)` gets the `n` planes of channel `ch` and returns that channel's result; channels run
/// in parallel when `parallel`. Returns the buffer and the results, by channel.
///
/// # Safety
/// `f` must write every element of every plane it is given.
pub(crate) unsafe fn by_channel<T: Send, R: Send>(
    (n, c, hw): (usize, usize, usize),
    parallel: bool,
    f: impl Fn(usize, ChannelPlanes<'_, T>) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let len = n * c * hw;
    let mut buf: Vec<T> = Vec::with_capacity(len);
    let mut planes: Vec<ChannelPlanes<'_, T>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
    if hw > 0 {
        for (q, plane) in buf.spare_capacity_mut()[..len].chunks_mut(hw).enumerate() {
            planes[q % c].push(plane);
        }
    }
    let results: Vec<R> = if parallel {
        planes
            .into_par_iter()
            .enumerate()
            .map(|(ch, p)| f(ch, p))
            .collect()
    } else {
        planes
            .into_iter()
            .enumerate()
            .map(|(ch, p)| f(ch, p))
            .collect()
    };
    // SAFETY: every element belongs to exactly one plane, and the caller guarantees that `f`
    // wrote every element of every plane.
    unsafe { buf.set_len(len) };
    (buf, results)
}
