//! CPU kernels of the pooling ops. Every (image, channel) plane is independent; large batches
//! run their planes in parallel.

use super::{PoolKernels, PoolMode, Window};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Runs `f(out_plane, in_plane)` over matching planes, in parallel when the work is large.
fn per_plane<T: Elem>(
    out: &mut [T],
    out_len: usize,
    inp: &[T],
    in_len: usize,
    f: impl Fn(&mut [T], &[T]) + Sync,
) {
    let (ol, il) = (out_len.max(1), in_len.max(1));
    if out.len() + inp.len() >= PAR_MIN {
        out.par_chunks_mut(ol)
            .zip(inp.par_chunks(il))
            .for_each(|(o, i)| f(o, i));
    } else {
        out.chunks_mut(ol)
            .zip(inp.chunks(il))
            .for_each(|(o, i)| f(o, i));
    }
}

impl Window {
    /// The input rows (or columns) `[lo, hi)` of output `o` along an axis of length `len`.
    fn span(&self, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.padding as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.kernel as isize).max(0) as usize).min(len);
        (lo.min(hi), hi)
    }

    /// Index in the plane of the window's largest element (first on ties; NaN wins).
    fn argmax<T: Elem>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let ((y0, y1), (x0, x1)) = (self.span(oy, self.h), self.span(ox, self.w));
        let mut best = y0 * self.w + x0;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * self.w + x;
                let (v, b) = (plane[i], plane[best]);
                if v > b || (v.is_nan() && !b.is_nan()) {
                    best = i;
                }
            }
        }
        best
    }
}

impl Window {
    /// Windows that tile the plane: no padding, stride = kernel (DenseNet's 2x2/2 transitions).
    fn tiles(&self) -> bool {
        self.padding == 0 && self.stride == self.kernel
    }
}

/// Average pooling over tiling windows: the same sums, in the same order (row by row, left to
/// right, from `Sum`'s starting value), as [`avg_forward`]'s general path, without its span
/// arithmetic per output.
fn avg_forward_tiles<T: Elem>(win: &Window, x: &[T], out: &mut [T]) {
    let (k, w, wout) = (win.kernel, win.w, win.wout);
    let div = T::of((k * k) as f64);
    let start: T = std::iter::empty::<T>().sum();
    per_plane(out, win.hout * wout, x, win.h * w, |o, plane| {
        for (oy, row) in o.chunks_exact_mut(wout).enumerate() {
            let rows = &plane[oy * k * w..(oy + 1) * k * w];
            for (ox, v) in row.iter_mut().enumerate() {
                let mut s = start;
                for r in rows.chunks_exact(w) {
                    for &e in &r[ox * k..ox * k + k] {
                        s += e;
                    }
                }
                *v = s / div;
            }
        }
    });
}

/// Grad input of average pooling over tiling windows: each input element gets its window's
/// share once (`0 + share`, as [`avg_backward`]'s accumulation gives).
fn avg_backward_tiles<T: Elem>(win: &Window, g: &[T], gx: &mut [T]) {
    let (k, w, wout) = (win.kernel, win.w, win.wout);
    let div = T::of((k * k) as f64);
    per_plane(gx, win.h * w, g, win.hout * wout, |plane, go| {
        for (oy, grow) in go.chunks_exact(wout).enumerate() {
            let rows = &mut plane[oy * k * w..(oy + 1) * k * w];
            for r in rows.chunks_exact_mut(w) {
                for (ox, &gv) in grow.iter().enumerate() {
                    let share = T::zero() + gv / div;
                    r[ox * k..ox * k + k].fill(share);
                }
                // Columns past the last window get no gradient.
                r[wout * k..].fill(T::zero());
            }
        }
        // Rows past the last window get no gradient.
        plane[win.hout * k * w..].fill(T::zero());
    });
}

/// Average pooling, zero padding counted in the divisor (`kernel^2`).
fn avg_forward<T: Elem>(win: &Window, x: &[T], out: &mut [T]) {
    if win.tiles() {
        return avg_forward_tiles(win, x, out);
    }
    avg_forward_general(win, x, out)
}

/// [`avg_forward`] for any window.
fn avg_forward_general<T: Elem>(win: &Window, x: &[T], out: &mut [T]) {
    let div = T::of((win.kernel * win.kernel) as f64);
    per_plane(out, win.hout * win.wout, x, win.h * win.w, |o, plane| {
        for (oy, row) in o.chunks_exact_mut(win.wout).enumerate() {
            let (y0, y1) = win.span(oy, win.h);
            for (ox, v) in row.iter_mut().enumerate() {
                let (x0, x1) = win.span(ox, win.w);
                let s: T = (y0..y1)
                    .flat_map(|y| &plane[y * win.w + x0..y * win.w + x1])
                    .copied()
                    .sum();
                *v = s / div;
            }
        }
    });
}

/// Grad input of average pooling: each output's gradient spread evenly over its window.
fn avg_backward<T: Elem>(win: &Window, g: &[T], gx: &mut [T]) {
    if win.tiles() {
        return avg_backward_tiles(win, g, gx);
    }
    avg_backward_general(win, g, gx)
}

/// [`avg_backward`] for any window (`gx` must hold zeros).
fn avg_backward_general<T: Elem>(win: &Window, g: &[T], gx: &mut [T]) {
    let div = T::of((win.kernel * win.kernel) as f64);
    per_plane(gx, win.h * win.w, g, win.hout * win.wout, |plane, go| {
        for (oy, row) in go.chunks_exact(win.wout).enumerate() {
            let (y0, y1) = win.span(oy, win.h);
            for (ox, &gv) in row.iter().enumerate() {
                let (x0, x1) = win.span(ox, win.w);
                let share = gv / div;
                for y in y0..y1 {
                    plane[y * win.w + x0..y * win.w + x1]
                        .iter_mut()
                        .for_each(|v| *v += share);
                }
            }
        }
    });
}

/// Max pooling (padding never wins).
fn max_forward<T: Elem>(win: &Window, x: &[T], out: &mut [T]) {
    per_plane(out, win.hout * win.wout, x, win.h * win.w, |o, plane| {
        for (oy, row) in o.chunks_exact_mut(win.wout).enumerate() {
            for (ox, v) in row.iter_mut().enumerate() {
                *v = plane[win.argmax(plane, oy, ox)];
            }
        }
    });
}

/// Grad input of max pooling: each output's gradient goes to its window's argmax in `x`.
fn max_backward<T: Elem>(win: &Window, x: &[T], g: &[T], gx: &mut [T]) {
    let (il, ol) = (win.h * win.w, win.hout * win.wout);
    let job = |(plane_gx, (plane_x, go)): (&mut [T], (&[T], &[T]))| {
        for (oy, row) in go.chunks_exact(win.wout).enumerate() {
            for (ox, &gv) in row.iter().enumerate() {
                plane_gx[win.argmax(plane_x, oy, ox)] += gv;
            }
        }
    };
    if gx.len() >= PAR_MIN {
        gx.par_chunks_mut(il)
            .zip(x.par_chunks(il).zip(g.par_chunks(ol)))
            .for_each(job);
    } else {
        gx.chunks_mut(il)
            .zip(x.chunks(il).zip(g.chunks(ol)))
            .for_each(job);
    }
}

/// Mean of each plane: `x` is `planes x hw`, `out` has one value per plane.
fn global_avg_forward<T: Elem>(x: &[T], hw: usize, out: &mut [T]) {
    let div = T::of(hw as f64);
    per_plane(out, 1, x, hw, |o, plane| {
        o[0] = plane.iter().copied().sum::<T>() / div
    });
}

/// Grad input of the plane means: each plane gets its gradient divided by `hw`.
fn global_avg_backward<T: Elem>(g: &[T], hw: usize, gx: &mut [T]) {
    let div = T::of(hw as f64);
    per_plane(gx, hw, g, 1, |plane, go| plane.fill(go[0] / div));
}

impl PoolKernels for Cpu {
    fn pool_forward(&self, mode: PoolMode, x: &Tensor, win: &Window) -> Result<Tensor> {
        let [n, c, _, _] = x.dims4(mode.op())?;
        let mut out = Tensor::zeros(&[n, c, win.hout, win.wout], x.dtype(), x.device())?;
        dispatch_float!(x.dtype(), T => {
            let (xs, o) = (x.as_slice::<T>()?, out.make_mut::<T>()?);
            match mode {
                PoolMode::Avg => avg_forward::<T>(win, xs, o),
                PoolMode::Max => max_forward::<T>(win, xs, o),
            }
        });
        Ok(out)
    }

    fn pool_backward(
        &self,
        mode: PoolMode,
        saved: Option<(&Tensor, &Tensor)>,
        g: &Tensor,
        win: &Window,
        x_shape: &[usize],
    ) -> Result<Tensor> {
        let mut gx = Tensor::zeros(x_shape, g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => {
            let (gs, o) = (g.as_slice::<T>()?, gx.make_mut::<T>()?);
            match (mode, saved) {
                (PoolMode::Avg, _) => avg_backward::<T>(win, gs, o),
                (PoolMode::Max, Some((x, _))) => max_backward::<T>(win, x.as_slice::<T>()?, gs, o),
                (PoolMode::Max, None) => {
                    return Err(Error::Backward("max_pool2d: input not saved".into()))
                }
            }
        });
        Ok(gx)
    }

    fn global_avg_forward(&self, x: &Tensor, hw: usize) -> Result<Tensor> {
        let [n, c, _, _] = x.dims4("global_avg_pool")?;
        let mut out = Tensor::zeros(&[n, c], x.dtype(), x.device())?;
        dispatch_float!(x.dtype(), T => global_avg_forward::<T>(x.as_slice::<T>()?, hw, out.make_mut::<T>()?));
        Ok(out)
    }

    fn global_avg_backward(&self, g: &Tensor, hw: usize, x_shape: &[usize]) -> Result<Tensor> {
        let mut gx = Tensor::zeros(x_shape, g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => global_avg_backward::<T>(g.as_slice::<T>()?, hw, gx.make_mut::<T>()?));
        Ok(gx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiling fast paths give the general paths' bits, with odd planes that leave rows and
    /// columns outside every window.
    #[test]
    fn tiling_paths_equal_the_general_ones_bit_for_bit() {
        for (k, h, w) in [(2, 8, 8), (2, 7, 9), (3, 10, 7), (1, 4, 5)] {
            let win = Window::new("avg_pool2d", [2, 3, h, w], k, k, 0).unwrap();
            assert!(win.tiles());
            let x: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| crate::rng::normal(7, 0, i as u64) as f32)
                .collect();
            let out_len = 2 * 3 * win.hout * win.wout;
            let (mut a, mut b) = (vec![0.0f32; out_len], vec![0.0f32; out_len]);
            avg_forward_tiles(&win, &x, &mut a);
            avg_forward_general(&win, &x, &mut b);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let g: Vec<f32> = (0..out_len)
                .map(|i| crate::rng::normal(8, 0, i as u64) as f32)
                .collect();
            let (mut ga, mut gb) = (vec![1.0f32; x.len()], vec![0.0f32; x.len()]);
            avg_backward_tiles(&win, &g, &mut ga);
            avg_backward_general(&win, &g, &mut gb);
            assert_eq!(
                ga.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                gb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
