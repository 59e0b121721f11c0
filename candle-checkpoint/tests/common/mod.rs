//! Helpers shared by the tests: small models with parameters as candle variables, and exact
//! comparison of gradients.

#![allow(dead_code)]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

/// A fully connected layer's parameters as variables.
pub struct Dense {
    pub w: Var,
    pub b: Var,
}

impl Dense {
    /// Weights of `out x inp`, deterministic from `seed`.
    pub fn new(inp: usize, out: usize, dtype: DType, seed: u64) -> Result<Self> {
        let w = values(out * inp, seed, 1.0 / (inp as f64).sqrt());
        let b = values(out, seed ^ 0x5555, 0.1);
        Ok(Dense {
            w: Var::from_tensor(&Tensor::from_vec(w, (out, inp), &Device::Cpu)?.to_dtype(dtype)?)?,
            b: Var::from_tensor(&Tensor::from_vec(b, out, &Device::Cpu)?.to_dtype(dtype)?)?,
        })
    }

    /// A candle-nn layer over the same variables (it captures them).
    pub fn linear(&self) -> candle_nn::Linear {
        candle_nn::Linear::new(self.w.as_tensor().clone(), Some(self.b.as_tensor().clone()))
    }

    /// The parameters, as tensors (to pass them in).
    pub fn params(&self) -> [Tensor; 2] {
        [self.w.as_tensor().clone(), self.b.as_tensor().clone()]
    }
}

/// `("x", x)` and then each layer's `("w", weight)` and `("b", bias)`: what a chain's gradients
/// are compared on.
pub fn input_and_layers<'a>(x: &'a Var, layers: &'a [Dense]) -> Vec<(&'static str, &'a Tensor)> {
    let mut of = vec![("x", x.as_tensor())];
    for l in layers {
        of.push(("w", l.w.as_tensor()));
        of.push(("b", l.b.as_tensor()));
    }
    of
}

/// `seg` on `x`: under [`candle_checkpoint::checkpoint`] when `checkpointed`, else directly.
pub fn maybe_checkpointed<F>(x: &Tensor, checkpointed: bool, seg: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    if checkpointed {
        let mut y =
            candle_checkpoint::checkpoint(std::slice::from_ref(x), move |a| Ok(vec![seg(&a[0])?]))
                .map_err(candle_core::Error::from)?;
        Ok(y.remove(0))
    } else {
        seg(x)
    }
}

/// `relu(x w^T + b)` with the parameters given.
pub fn dense(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)?.relu()
}

/// `n` deterministic values in `[-scale, scale)`.
pub fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A `rows x cols` input of `dtype`, deterministic from `seed`.
pub fn input(rows: usize, cols: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    Tensor::from_vec(values(rows * cols, seed, 1.0), (rows, cols), &Device::Cpu)?.to_dtype(dtype)
}

/// The bits of a tensor's elements (as f64: exact for f32 and f64).
pub fn bits(t: &Tensor) -> Vec<u64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("readable tensor")
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

/// Asserts both stores hold bit-identical gradients for every tensor of `of`.
pub fn assert_same_grads(naive: &GradStore, ckpt: &GradStore, of: &[(&str, &Tensor)]) {
    for (name, t) in of {
        let a = naive
            .get(t)
            .unwrap_or_else(|| panic!("naive run has no gradient for {name}"));
        let b = ckpt
            .get(t)
            .unwrap_or_else(|| panic!("checkpointed run has no gradient for {name}"));
        assert_eq!(bits(a), bits(b), "gradient of {name} differs");
    }
}
