//! Helpers shared by the engine's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use proptest::prelude::*;
use tape::{ops, Context, DType, Device, Error, Phase, Tape, Tensor};

/// A proptest configuration of `cases` cases that writes no failure-persistence files.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// The forward phase of training, with seed and counter 0.
pub const TRAIN: Context = Context {
    training: true,
    phase: Phase::Forward,
    seed: 0,
    counter: 0,
    keep_batch_stats: true,
    precision: tape::Precision::F32,
};

/// An `f64` leaf (requires a gradient) with the values `data`.
pub fn leaf_f64(data: &[f64], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_f64(data, shape, DType::F64, dev)
        .unwrap()
        .with_requires_grad(true)
}

/// Standard normal `f64` values on the CPU times `scale`.
pub fn scaled_randn(shape: &[usize], scale: f64, seed: u64) -> tape::Result<Tensor> {
    let x = Tensor::randn(shape, DType::F64, &Device::cpu(), seed)?;
    ops::scale(&mut Tape::no_grad(), &x, scale)
}

/// `t` (which must have been made) as a leaf that requires a gradient.
pub fn leaf(t: tape::Result<Tensor>) -> Tensor {
    t.unwrap().with_requires_grad(true)
}

/// Whether `r` is a shape error of `op`.
pub fn is_shape_error(r: tape::Result<Tensor>, op: &str) -> bool {
    matches!(r, Err(Error::Shape { op: o, .. }) if o == op)
}

/// Whether `r` is an invalid-argument error of `op`.
pub fn is_invalid_argument(r: tape::Result<Tensor>, op: &str) -> bool {
    matches!(r, Err(Error::InvalidArgument { op: o, .. }) if o == op)
}

/// A shape of rank 1 to 3 (sizes 1 to 4), a scale in `[0.1, 4)` and a seed: a scaled random
/// input (see [`scaled_randn`]).
pub fn shape_scale_seed() -> impl Strategy<Value = (Vec<usize>, f64, u64)> {
    (
        prop::collection::vec(1usize..5, 1..4),
        0.1f64..4.0,
        0u64..1 << 62,
    )
}

/// Naive direct convolution of `x` by `w` (stride `s`, padding `p`) and its gradients (of
/// `sum(y * gy)`), in f64: `(y, gx, gw)`.
pub fn conv2d_reference(
    x: &[f64],
    w: &[f64],
    gy: &[f64],
    [n, ci, h, wd]: [usize; 4],
    [co, _, kh, kw]: [usize; 4],
    (s, p): (usize, usize),
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
    let mut y = vec![0.0; n * co * ho * wo];
    let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    for b in 0..n {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((b * co + o) * ho + oy) * wo + ox;
                    for c in 0..ci {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = (
                                    (oy * s + i) as isize - p as isize,
                                    (ox * s + j) as isize - p as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * ci + c) * h + iy as usize) * wd + ix as usize;
                                let wi = ((o * ci + c) * kh + i) * kw + j;
                                y[yi] += x[xi] * w[wi];
                                gx[xi] += gy[yi] * w[wi];
                                gw[wi] += gy[yi] * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, gx, gw)
}

/// The bytes the Winograd kernel reserves for any pass, `f32`, on `threads` threads. Each
/// channel's (or transformed kernel row's) 16 rows of `c` values take `16 c + 16` elements (a
/// cache line of padding). The transformed kernels: `max(cin, cout)` rows of `min(cin, cout)`.
/// Then the larger of two paths' needs:
/// - chunks of images, one after the other: the transformed input and the products of one
///   chunk, `(cin + cout)` rows of its tiles; a chunk holds enough images of `tiles =
///   ceil(h/2) ceil(w/2)` tiles for `max(64, 8 MiB / (64 (cin + cout)))` tiles, at least one
///   and at most `n`;
/// - blocks of images, one per thread group, when a block fits: `ceil(128 / tiles)` images (at
///   most `n`) whose `(cin + cout)` rows take at most 3 MiB: per group, those rows plus a
///   partial weight gradient (`16 cin cout`); groups as the conv tests count them, over
///   `ceil(n / images)` blocks.
///
/// From `tape/src/ops/conv2d/winograd.rs`.
pub fn winograd_workspace_bytes([n, cin, h, w]: [usize; 4], cout: usize, threads: usize) -> usize {
    let rows = |c: usize| 16 * c + 16;
    let tiles = h.div_ceil(2) * w.div_ceil(2);
    let kernels = cin.max(cout) * rows(cin.min(cout));
    let wanted = ((8 << 20) / (64 * (cin + cout))).max(64);
    let chunk_cols = wanted.div_ceil(tiles).clamp(1, n.max(1)) * tiles;
    let chunked = (cin + cout) * rows(chunk_cols);
    let block = |per: usize| (cin + cout) * rows(per * tiles);
    let per =
        Some(128usize.div_ceil(tiles).clamp(1, n.max(1))).filter(|&p| 4 * block(p) <= 3 << 20);
    let blocks = per.map_or(0, |per| {
        let jobs = n.div_ceil(per);
        let groups = jobs.div_ceil(jobs.div_ceil(threads.clamp(1, jobs.max(1))).max(1));
        groups * (block(per) + 16 * cin * cout)
    });
    4 * (kernels + chunked.max(blocks))
}
