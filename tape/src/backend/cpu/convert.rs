//! Conversions between the dtypes on the CPU, rounded to nearest (ties to even): the cast's
//! kernel and the 16-bit staging of batch norm use them. `bf16 <-> f32`, the conversions of
//! every bf16 op, run as branch-free integer arithmetic compiled for the widest SIMD level
//! (the same bits as the `half` crate's scalar conversions, at every level).

use crate::backend::cpu::map::{
    as_dtype, as_dtype_mut, as_dtype_slots, as_slots, write_copy, written_vec, PAR_MIN,
};
use crate::dtype::{bf16, f16, DType, Scalar};
use crate::simd::widest_simd;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per task of a parallel conversion.
const CHUNK: usize = 1 << 14;

/// `src` converted element by element, rounded to nearest (ties to even).
pub(crate) fn converted<S: Scalar, D: Scalar>(src: &[S]) -> Vec<D> {
    // SAFETY: every chunk of the output is written by `convert_into` from an equal-length
    // chunk of `src`.
    unsafe { written_vec(src.len(), |out| convert_par(out, src)) }
}

/// [`convert_into`], in parallel chunks for long slices.
pub(crate) fn convert_par<S: Scalar, D: Scalar>(out: &mut [MaybeUninit<D>], src: &[S]) {
    if src.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, s)| convert_into(o, s));
    } else {
        convert_into(out, src);
    }
}

/// Writes `src` converted into the slots `out` (equal lengths). Through `f32` when neither side
/// is `f64` (exact for a 16-bit source, one rounding for a 16-bit destination), else through
/// `f64` (exact from every dtype, one rounding into the destination).
pub(crate) fn convert_into<S: Scalar, D: Scalar>(out: &mut [MaybeUninit<D>], src: &[S]) {
    // The vectorised 16-bit <-> f32 conversions, where the dtypes are theirs.
    if typed(out, src, widen_bf16)
        || typed(out, src, narrow_bf16)
        || typed(out, src, widen_f16)
        || typed(out, src, narrow_f16)
    {
        return;
    }
    let wide = S::DTYPE == DType::F64 || D::DTYPE == DType::F64;
    for (o, &v) in out.iter_mut().zip(src) {
        o.write(if wide {
            D::of(v.f64())
        } else {
            D::of_f32(v.f32())
        });
    }
}

/// Runs `f` on `out` and `src` when they hold exactly its element types (`D = B`, `S = A`);
/// says whether it ran.
fn typed<S: Scalar, D: Scalar, A: Scalar, B: Scalar>(
    out: &mut [MaybeUninit<D>],
    src: &[S],
    f: fn(&mut [MaybeUninit<B>], &[A]),
) -> bool {
    match (as_dtype_slots(out), as_dtype(src)) {
        (Some(o), Some(s)) => {
            f(o, s);
            true
        }
        _ => false,
    }
}

/// The bits of a `bf16` as an `f32`'s: exact; a NaN made quiet, as `bf16::to_f32` makes it.
#[inline(always)]
fn widen_bf16_bits(b: u16) -> u32 {
    let b = if b & 0x7fff > 0x7f80 { b | 0x40 } else { b };
    u32::from(b) << 16
}

/// An `f32`'s bits rounded to a `bf16`'s, to nearest (ties to even) as `bf16::from_f32` rounds;
/// a NaN kept a quiet NaN with its sign and top payload bits.
#[inline(always)]
fn narrow_bf16_bits(x: u32) -> u16 {
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x40;
    (if x & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }) as u16
}

widest_simd!(
    /// `bf16` to `f32`: exact, the 16 bits moved to the top of an `f32`; NaNs made quiet, as
    /// `bf16::to_f32` makes them.
    fn widen_bf16(out: &mut [MaybeUninit<f32>], src: &[bf16]) = widen_bf16_body;
);

#[inline(always)]
fn widen_bf16_body(out: &mut [MaybeUninit<f32>], src: &[bf16]) {
    for (o, s) in out.iter_mut().zip(src) {
        o.write(f32::from_bits(widen_bf16_bits(s.to_bits())));
    }
}

widest_simd!(
    /// `f32` to `bf16`, rounded to nearest (ties to even) as `bf16::from_f32` rounds, NaNs kept
    /// quiet NaNs with their sign and top payload bits: the same bits, in branch-free integer
    /// arithmetic the compiler vectorises.
    fn narrow_bf16(out: &mut [MaybeUninit<bf16>], src: &[f32]) = narrow_bf16_body;
);

#[inline(always)]
fn narrow_bf16_body(out: &mut [MaybeUninit<bf16>], src: &[f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        o.write(bf16::from_bits(narrow_bf16_bits(s.to_bits())));
    }
}

/// Values per run of the `f16` conversions (a stack buffer each).
const F16_RUN: usize = 256;

/// `f16` to `f32` (exact): the AVX-512 conversion instruction at that level, else the `half`
/// crate's slice conversion a run at a time (F16C where the CPU has it); the same bits.
fn widen_f16(out: &mut [MaybeUninit<f32>], src: &[f16]) {
    let done = f16_x86::widen(out, src);
    let mut buf = [0f32; F16_RUN];
    for (o, s) in out[done..]
        .chunks_mut(F16_RUN)
        .zip(src[done..].chunks(F16_RUN))
    {
        let b = &mut buf[..s.len()];
        s.convert_to_f32_slice(b);
        write_copy(o, b);
    }
}

/// `f32` to `f16`, rounded to nearest (ties to even), as [`widen_f16`] converts.
fn narrow_f16(out: &mut [MaybeUninit<f16>], src: &[f32]) {
    let done = f16_x86::narrow(out, src);
    let mut buf = [f16::ZERO; F16_RUN];
    for (o, s) in out[done..]
        .chunks_mut(F16_RUN)
        .zip(src[done..].chunks(F16_RUN))
    {
        let b = &mut buf[..s.len()];
        b.convert_from_f32_slice(s);
        write_copy(o, b);
    }
}

/// The AVX-512 `f16 <-> f32` conversions (`vcvtph2ps`, `vcvtps2ph` rounding to nearest even):
/// whole vectors of 16, at that SIMD level only; each returns how many it converted.
mod f16_x86 {
    use crate::dtype::f16;
    use std::mem::MaybeUninit;

    /// Converts the first multiple of 16 of `src` into `out` (equal lengths).
    pub(super) fn widen(out: &mut [MaybeUninit<f32>], src: &[f16]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
            let n = src.len().min(out.len()) / 16 * 16;
            // SAFETY: the level says the CPU has AVX-512 F; both slices hold `n` elements.
            unsafe { x86::widen(out.as_mut_ptr().cast(), src.as_ptr().cast(), n) };
            return n;
        }
        0
    }

    /// Converts the first multiple of 16 of `src` into `out` (equal lengths).
    pub(super) fn narrow(out: &mut [MaybeUninit<f16>], src: &[f32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
            let n = src.len().min(out.len()) / 16 * 16;
            // SAFETY: as in `widen`.
            unsafe { x86::narrow(out.as_mut_ptr().cast(), src.as_ptr(), n) };
            return n;
        }
        0
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// # Safety
        /// AVX-512 F; `src` and `out` hold `n` (a multiple of 16) elements.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn widen(out: *mut f32, src: *const u16, n: usize) {
            for i in (0..n).step_by(16) {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(src.add(i).cast()));
                _mm512_storeu_ps(out.add(i), v);
            }
        }

        /// # Safety
        /// As [`widen`].
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn narrow(out: *mut u16, src: *const f32, n: usize) {
            for i in (0..n).step_by(16) {
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_loadu_ps(src.add(i)),
                );
                _mm256_storeu_si256(out.add(i).cast(), h);
            }
        }
    }
}

/// `acc[i] = round(acc[i] + round(v[i]))`, the `f32` sum rounded to `acc`'s 16-bit dtype: what
/// adding the rounded `f32` value `v[i]` into a 16-bit gradient computes (each operand widened
/// exactly, the sum taken in `f32`, rounded once). Vectorised for bf16; for f16 through the
/// slice conversions a run at a time.
pub(crate) fn add_rounded<S: Scalar>(acc: &mut [S], v: &[f32]) {
    if let Some(acc) = as_dtype_mut(acc) {
        return add_rounded_bf16(acc, v);
    }
    if let Some(acc) = as_dtype_mut::<S, f16>(acc) {
        return add_rounded_f16(acc, v);
    }
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = S::of_f32(a.f32() + S::of_f32(v).f32());
    }
}

/// [`add_rounded`] for f16, through [`widen_f16`] and [`narrow_f16`] a run at a time.
fn add_rounded_f16(acc: &mut [f16], v: &[f32]) {
    let (mut sum, mut rounded, mut back) = ([0f32; F16_RUN], [f16::ZERO; F16_RUN], [0f32; F16_RUN]);
    for (a, v) in acc.chunks_mut(F16_RUN).zip(v.chunks(F16_RUN)) {
        let n = a.len();
        widen_f16(as_slots(&mut sum[..n]), a);
        narrow_f16(as_slots(&mut rounded[..n]), v);
        widen_f16(as_slots(&mut back[..n]), &rounded[..n]);
        sum[..n]
            .iter_mut()
            .zip(&back[..n])
            .for_each(|(s, &b)| *s += b);
        narrow_f16(as_slots(a), &sum[..n]);
    }
}

widest_simd!(
    /// [`add_rounded`] for bf16, through [`widen_bf16_bits`] and [`narrow_bf16_bits`].
    fn add_rounded_bf16(acc: &mut [bf16], v: &[f32]) = add_rounded_bf16_body;
);

#[inline(always)]
fn add_rounded_bf16_body(acc: &mut [bf16], v: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(v) {
        let rounded_v = widen_bf16_bits(narrow_bf16_bits(v.to_bits()));
        let sum = f32::from_bits(widen_bf16_bits(a.to_bits())) + f32::from_bits(rounded_v);
        *a = bf16::from_bits(narrow_bf16_bits(sum.to_bits()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::for_each_supported_level;

    /// `f32` bit patterns: every 4099th of all 2^32 (all exponents, signs and NaN payloads
    /// show up) and the edges: ties on both sides of even, the largest finite values, the
    /// infinities, signalling and quiet NaNs, subnormals.
    fn f32_patterns() -> Vec<f32> {
        let edges = [
            0x3f80_8000u32, // 1 + 2^-8: a tie, rounds down to even
            0x3f81_8000,    // a tie, rounds up to even
            0x3f80_8001,
            0x3f80_7fff,
            0x7f7f_ffff, // the largest f32: rounds up to infinity
            0x7f7f_7fff,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001, // a signalling NaN
            0xffc0_0001,
            0x0000_0001,
            0x8000_8000,
            0x007f_ffff,
        ];
        (0..=u32::MAX)
            .step_by(4099)
            .chain(edges)
            .map(f32::from_bits)
            .collect()
    }

    /// A 16-bit dtype's bit pattern.
    trait Bits: Scalar {
        fn bits(self) -> u16;
        fn of_bits(b: u16) -> Self;
    }

    impl Bits for bf16 {
        fn bits(self) -> u16 {
            self.to_bits()
        }
        fn of_bits(b: u16) -> Self {
            bf16::from_bits(b)
        }
    }

    impl Bits for f16 {
        fn bits(self) -> u16 {
            self.to_bits()
        }
        fn of_bits(b: u16) -> Self {
            f16::from_bits(b)
        }
    }

    /// At every SIMD level, for the 16-bit dtype `S`: `f32` to `S` gives the `half` crate's
    /// scalar `from_f32` bits for [`f32_patterns`], every `S` to `f32` its `to_f32` bits, and
    /// [`add_rounded`] the bits of the same sum through the scalar conversions.
    fn conversions_give_the_scalar_bits<S: Bits>() {
        let name = S::DTYPE;
        let src = f32_patterns();
        let want: Vec<u16> = src.iter().map(|&v| S::of_f32(v).bits()).collect();
        let all: Vec<S> = (0..=u16::MAX).map(S::of_bits).collect();
        let want_wide: Vec<u32> = all.iter().map(|v| v.f32().to_bits()).collect();
        let acc0: Vec<S> = src.iter().rev().map(|&x| S::of_f32(x * 0.75)).collect();
        let want_sum: Vec<u16> = acc0
            .iter()
            .zip(&src)
            .map(|(a, &v)| S::of_f32(a.f32() + S::of_f32(v).f32()).bits())
            .collect();
        for_each_supported_level(|level| {
            let got: Vec<S> = converted(&src);
            let bits: Vec<u16> = got.iter().map(|v| v.bits()).collect();
            assert!(
                bits == want,
                "{level}: f32 -> {name:?} differs from the scalar one"
            );
            let wide: Vec<f32> = converted(&all);
            let wide: Vec<u32> = wide.iter().map(|v| v.to_bits()).collect();
            assert!(
                wide == want_wide,
                "{level}: {name:?} -> f32 differs from the scalar one"
            );
            let mut acc = acc0.clone();
            add_rounded(&mut acc, &src);
            let bits: Vec<u16> = acc.iter().map(|a| a.bits()).collect();
            assert!(
                bits == want_sum,
                "{level}: {name:?} rounded add differs from the scalar one"
            );
        });
    }

    #[test]
    fn bf16_conversions_and_rounded_add_give_the_scalar_bits_at_every_simd_level() {
        conversions_give_the_scalar_bits::<bf16>();
    }

    #[test]
    fn f16_conversions_and_rounded_add_give_the_scalar_bits_at_every_simd_level() {
        conversions_give_the_scalar_bits::<f16>();
    }
}
