//! bf16 pointwise convolutions (1x1, stride 1, no padding) on the CPU's bf16 matrix units
//! (`backend::cpu::amx`): the products read the bf16 input, weight and output gradient as
//! they are, sum in `f32`, and each image's result is rounded into bf16 once; no `f32` copy
//! of an operand exists. A bf16 policy's pointwise convolutions run here on a CPU with the
//! units ([`on_tiles`]); elsewhere they run on `f32` copies, a chunk of images at a time. The
//! meta device charges the workspaces sized here.
//!
//! Per image `i`, with `P = h * w`: `y_i (cout x P) = W (cout x cin) * x_i`;
//! `gx_i (cin x P) = W^T * g_i`; `gW^T (cin x cout) += x_i * g_i^T`, summed over the images in
//! batch order (each product split over threads by its rows, which leaves every sum's order as
//! it is): the same bits at every thread count.

use super::cpu::groups;
use super::Geometry;
use crate::dtype::DType;

/// Whether a convolution of `geo` on `dtype` operands runs on the tiles.
pub(super) fn on_tiles(geo: &Geometry, dtype: DType) -> bool {
    dtype == DType::BF16 && geo.pointwise() && crate::simd::bf16_matrix_units()
}

/// Workspace bytes of a forward on the tiles: one image's `f32` result per thread group.
pub(super) fn forward_workspace_bytes(geo: &Geometry) -> usize {
    groups(geo.n) * geo.cout * geo.p() * 4
}

/// Workspace bytes of a backward on the tiles computing the input gradient (`x`) and the
/// weight gradient (`w`): one image's `f32` input gradient per thread group, and the weight
/// gradient's `f32` transpose.
pub(super) fn backward_workspace_bytes(geo: &Geometry, x: bool, w: bool) -> usize {
    let gx = if x {
        groups(geo.n) * geo.cin * geo.p()
    } else {
        0
    };
    let gw = if w { geo.cin * geo.cout } else { 0 };
    (gx + gw) * 4
}

#[cfg(target_arch = "x86_64")]
pub(super) use cpu::{backward, forward};

#[cfg(target_arch = "x86_64")]
mod cpu {
    use super::super::{Conv2dGrads, Geometry};
    use super::{backward_workspace_bytes, forward_workspace_bytes, groups};
    use crate::backend::cpu::amx::{self, Strided};
    use crate::backend::cpu::convert::convert_into;
    use crate::backend::cpu::map::written_vec;
    use crate::dtype::bf16;
    use crate::error::Result;
    use crate::tensor::Tensor;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// `f(i, out_i, acc)` for every image `i` of `n`, each output `len` elements, the images
    /// split into thread groups with one `acc` buffer of `acc_len` each; returns the output.
    fn per_image(
        n: usize,
        len: usize,
        acc_len: usize,
        f: impl Fn(usize, &mut [MaybeUninit<bf16>], &mut [f32]) + Sync,
    ) -> Vec<bf16> {
        let per = n.div_ceil(groups(n).max(1)).max(1);
        // SAFETY: every image's `len` elements are written by `f` (each caller's contract).
        unsafe {
            written_vec(n * len, |out| {
                out.par_chunks_mut((per * len).max(1))
                    .enumerate()
                    .for_each(|(gi, images)| {
                        let mut acc = vec![0f32; acc_len];
                        for (j, o) in images.chunks_mut(len.max(1)).enumerate() {
                            f(gi * per + j, o, &mut acc);
                        }
                    })
            })
        }
    }

    /// The forward: `y = conv(x, w) + bias`, bf16 `[n, cout, h, w]`.
    pub(crate) fn forward(
        geo: &Geometry,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (xs, ws) = (x.as_slice::<bf16>()?, w.as_slice::<bf16>()?);
        let bias = bias.map(|b| b.as_slice::<bf16>()).transpose()?;
        let (p, is, os) = (geo.p(), geo.cin * geo.p(), geo.cout * geo.p());
        let _workspace = x.device().reserve(forward_workspace_bytes(geo))?;
        let weight = Strided {
            data: ws,
            rs: geo.cin,
            cs: 1,
        };
        let out = per_image(geo.n, os, os, |i, o, acc| {
            if let Some(b) = bias {
                for (row, &bv) in acc.chunks_exact_mut(p.max(1)).zip(b) {
                    row.fill(bv.to_f32());
                }
            }
            let image = Strided {
                data: &xs[i * is..][..is],
                rs: p,
                cs: 1,
            };
            let dims = (geo.cout, p, geo.cin);
            // SAFETY: `on_tiles` held for the caller; `acc` holds the `cout x P` block (with
            // the bias in it when `accumulate`) and no operand aliases it.
            unsafe {
                amx::gemm(
                    acc.as_mut_ptr(),
                    p,
                    weight,
                    image,
                    dims,
                    bias.is_some(),
                    false,
                )
            };
            convert_into(o, acc);
        });
        Tensor::from_vec(out, &geo.out_shape(), x.device())
    }

    /// The gradients from the output gradient `g`: the input's (bf16) when `w` is given, the
    /// weight's (`f32`) when `x` is, the bias's (`f32`) when `want_bias`.
    pub(crate) fn backward(
        geo: &Geometry,
        g: &Tensor,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        let dev = g.device();
        let gs = g.as_slice::<bf16>()?;
        let (p, is, os) = (geo.p(), geo.cin * geo.p(), geo.cout * geo.p());
        let _workspace = dev.reserve(backward_workspace_bytes(geo, w.is_some(), x.is_some()))?;
        let gb = match want_bias {
            true => {
                let mut gb = vec![0f32; geo.cout];
                for image in gs.chunks_exact(os.max(1)) {
                    for (b, plane) in gb.iter_mut().zip(image.chunks_exact(p.max(1))) {
                        *b += plane.iter().map(|v| v.to_f32()).sum::<f32>();
                    }
                }
                Some(Tensor::from_vec(gb, &[geo.cout], dev)?)
            }
            false => None,
        };
        let grad_out = |i: usize, transposed: bool| Strided {
            data: &gs[i * os..][..os],
            rs: if transposed { 1 } else { p },
            cs: if transposed { p } else { 1 },
        };
        let gw = match x {
            Some(x) => {
                let xs = x.as_slice::<bf16>()?;
                let mut t = vec![0f32; geo.cin * geo.cout];
                for i in 0..geo.n {
                    let image = Strided {
                        data: &xs[i * is..][..is],
                        rs: p,
                        cs: 1,
                    };
                    let dims = (geo.cin, geo.cout, p);
                    // SAFETY: as in `forward`; `t` holds the `cin x cout` block, initialised.
                    unsafe {
                        amx::gemm(
                            t.as_mut_ptr(),
                            geo.cout,
                            image,
                            grad_out(i, true),
                            dims,
                            i > 0,
                            true,
                        )
                    };
                }
                let gw: Vec<f32> = (0..geo.cout * geo.cin)
                    .map(|e| t[(e % geo.cin) * geo.cout + e / geo.cin])
                    .collect();
                Some(Tensor::from_vec(gw, &[geo.cout, geo.cin, 1, 1], dev)?)
            }
            None => None,
        };
        let gx = match w {
            Some(w) => {
                let weight_t = Strided {
                    data: w.as_slice::<bf16>()?,
                    rs: 1,
                    cs: geo.cin,
                };
                let gx = per_image(geo.n, is, is, |i, o, acc| {
                    let dims = (geo.cin, p, geo.cout);
                    // SAFETY: as in `forward`; `acc` holds the `cin x P` block.
                    unsafe {
                        amx::gemm(
                            acc.as_mut_ptr(),
                            p,
                            weight_t,
                            grad_out(i, false),
                            dims,
                            false,
                            false,
                        )
                    };
                    convert_into(o, acc);
                });
                Some(Tensor::from_vec(gx, &[geo.n, geo.cin, geo.h, geo.w], dev)?)
            }
            None => None,
        };
        Ok((gx, gw, gb))
    }
}
