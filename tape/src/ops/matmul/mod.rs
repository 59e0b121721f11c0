//! Batched matrix product: `[.., m, k] x [.., k, n] -> [.., m, n]` over equal leading (batch)
//! dimensions, plain 2-D matrices included. Either operand may be taken transposed as it is
//! stored ([`MatmulOptions`]), so attention's `q k^T` needs no copy of `k`. Backward is two more
//! products of the same kind (no transposed copies either), and keeps `a` only if `b` wants a
//! gradient and `b` only if `a` does.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod meta;

use super::autocast::to_low;
use super::checks::check_grad;
use super::widen::via_f32_for;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "matmul";

/// The sizes of one batched product `op(a) (m x k) * op(b) (k x n)`, `batch` times, each
/// operand stored row-major as it is (`[m, k]`) or as its transpose (`[k, m]`, `ta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatmulDims {
    pub(crate) batch: usize,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `a` is stored as `op(a)`'s transpose, `[.., k, m]`.
    pub(crate) ta: bool,
    /// `b` is stored as `op(b)`'s transpose, `[.., n, k]`.
    pub(crate) tb: bool,
}

kernel_trait! {
    /// Device kernels of `matmul` (shapes checked by the caller).
    pub(crate) trait MatmulKernels {
        /// `op(a) * op(b)` for each of `dims.batch` matrix pairs, stored back to back (`a`'s items
        /// `m * k` elements apart, `b`'s `k * n`), as a new tensor of `out_shape` (`batch * m * n`
        /// elements, each product row-major).
        fn matmul_batched(
            &self,
            a: &Tensor,
            b: &Tensor,
            dims: MatmulDims,
            out_shape: &[usize],
        ) -> Result<Tensor>;
    }
}

/// Which operands of a [`matmul_with`] are taken transposed (as stored, without a copy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatmulOptions {
    /// Use `a`'s last two dimensions transposed: `a` is `[.., k, m]`.
    pub transpose_a: bool,
    /// Use `b`'s last two dimensions transposed: `b` is `[.., n, k]`.
    pub transpose_b: bool,
}

/// `a b`: `a` is `[.., m, k]`, `b` is `[.., k, n]` with the same leading dimensions (none for
/// plain matrices); gives `[.., m, n]`. See [`matmul_with`].
pub fn matmul(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_with(tape, a, b, MatmulOptions::default())
}

/// `op(a) op(b)`, where `op` transposes the last two dimensions of the operands that `options`
/// names: `a` is `[.., m, k]` (`[.., k, m]` transposed), `b` is `[.., k, n]` (`[.., n, k]`
/// transposed), both of the same rank (at least 2) with equal leading dimensions, which are
/// batch dimensions (no broadcasting); gives `[.., m, n]`. Mismatched shapes are
/// [`Error::Shape`], mixed dtypes or devices [`Error::DType`] / [`Error::Device`].
pub fn matmul_with(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    options: MatmulOptions,
) -> Result<Tensor> {
    let (a, b) = (to_low(tape, a)?, to_low(tape, b)?);
    let (a, b) = (a.as_ref(), b.as_ref());
    let _profile = tape.profile_op(OP);
    let (dims, out_shape) = check(a, b, options)?;
    let k = kernels(a.device())?;
    let dtype = a.dtype();
    // The product on f32 copies of 16-bit operands, rounded to the operands' dtype (on the
    // operands themselves where the kernel takes them: cuBLAS with f32 compute).
    let product = move |x: &Tensor, y: &Tensor, d: MatmulDims, shape: &[usize]| {
        via_f32_for(&k, [x, y], dtype, |[x, y]| k.matmul_batched(x, y, d, shape))
    };
    let out = match tape.take_known_output(&out_shape, a) {
        Some(known) => known,
        None => product(a, b, dims, &out_shape)?,
    };
    let (ka, kb) = (GradKey::of(a), GradKey::of(b));
    let record = tape.needs_grad(&[a, b]);
    // The gradient of each operand needs the other one only.
    let saved_a = (record && b.requires_grad()).then(|| a.clone());
    let saved_b = (record && a.requires_grad()).then(|| b.clone());
    let a_shape = a.shape().to_vec();
    let b_shape = b.shape().to_vec();
    let gshape = out_shape.clone();
    Ok(tape.record(OP, &[a, b], out, move |g, grads| {
        check_grad(OP, g, &gshape, saved_a.as_ref().or(saved_b.as_ref()))?;
        let MatmulDims {
            batch,
            m,
            n,
            k: inner,
            ta,
            tb,
        } = dims;
        if let Some(b) = saved_b {
            // d op(a) = g op(b)^T (m x k); stored transposed, da = op(b) g^T (k x m).
            let da = if ta {
                let d = MatmulDims {
                    batch,
                    m: inner,
                    n: m,
                    k: n,
                    ta: tb,
                    tb: true,
                };
                product(&b, g, d, &a_shape)?
            } else {
                let d = MatmulDims {
                    batch,
                    m,
                    n: inner,
                    k: n,
                    ta: false,
                    tb: !tb,
                };
                product(g, &b, d, &a_shape)?
            };
            grads.accumulate(&ka, da)?;
        }
        if let Some(a) = saved_a {
            // d op(b) = op(a)^T g (k x n); stored transposed, db = g^T op(a) (n x k).
            let db = if tb {
                let d = MatmulDims {
                    batch,
                    m: n,
                    n: inner,
                    k: m,
                    ta: true,
                    tb: ta,
                };
                product(g, &a, d, &b_shape)?
            } else {
                let d = MatmulDims {
                    batch,
                    m: inner,
                    n,
                    k: m,
                    ta: !ta,
                    tb: false,
                };
                product(&a, g, d, &b_shape)?
            };
            grads.accumulate(&kb, db)?;
        }
        Ok(())
    }))
}

/// The sizes of the product and its output shape, or why the operands do not fit.
fn check(a: &Tensor, b: &Tensor, options: MatmulOptions) -> Result<(MatmulDims, Vec<usize>)> {
    a.check_compatible(b, OP)?;
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 {
        return Err(Error::shape(
            OP,
            format!("both operands need at least 2 dimensions, got {sa:?} and {sb:?}"),
        ));
    }
    if sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
        return Err(Error::shape(
            OP,
            format!("the leading (batch) dimensions differ: {sa:?} vs {sb:?}"),
        ));
    }
    let r = sa.len();
    let (m, ka) = if options.transpose_a {
        (sa[r - 1], sa[r - 2])
    } else {
        (sa[r - 2], sa[r - 1])
    };
    let (kb, n) = if options.transpose_b {
        (sb[r - 1], sb[r - 2])
    } else {
        (sb[r - 2], sb[r - 1])
    };
    if ka != kb {
        return Err(Error::shape(
            OP,
            format!(
                "inner dimensions differ: {sa:?}{} x {sb:?}{} multiplies {m}x{ka} by {kb}x{n}",
                if options.transpose_a { "^T" } else { "" },
                if options.transpose_b { "^T" } else { "" },
            ),
        ));
    }
    let batch = sa[..r - 2].iter().product();
    let mut out_shape = sa[..r - 2].to_vec();
    out_shape.extend([m, n]);
    let dims = MatmulDims {
        batch,
        m,
        n,
        k: ka,
        ta: options.transpose_a,
        tb: options.transpose_b,
    };
    Ok((dims, out_shape))
}
