//! Real chains for the memory-model and recursive-plan tests: a uniform conv/BN/ReLU chain and a
//! heterogeneous one (channel changes, a strided convolution, a residual block, max and average
//! pooling, ReLU + dropout, a pointwise convolution), in f32 or f64, with helpers to profile
//! them and measure one training step under a plan.

#![allow(dead_code)]

use checkpoint::planner::{profile_chain, ChainModel, Plan};
use checkpoint::{run_plan, OpKind, Stage};
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Result, Tape, Tensor};

/// What a layer computes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// conv3x3 (padding 1, `stride`) -> batch norm -> ReLU.
    Cbr {
        cin: usize,
        cout: usize,
        stride: usize,
    },
    /// `relu(x + bn(conv3x3(x)))`.
    Residual { c: usize },
    /// 3x3 max pooling, stride 1, padding 1 (keeps its input and output).
    MaxPool,
    /// 2x2 average pooling, stride 2 (keeps nothing).
    AvgPool,
    /// ReLU -> dropout (keeps ReLU's output and a mask, neither its input nor its output).
    ReluDropout,
    /// conv1x1 -> ReLU.
    Pointwise { cin: usize, cout: usize },
}

/// A chain's parameters, running statistics and input on a device of its own.
pub struct Chain {
    pub dev: Device,
    pub name: &'static str,
    pub dtype: DType,
    kinds: Vec<Kind>,
    /// Per layer: (conv weight, batch norm index) where it has them.
    params: Vec<(Option<Tensor>, Option<usize>)>,
    bns: Vec<(Tensor, Tensor, RunningStats)>,
    pub x: Tensor,
}

impl Chain {
    /// `n` conv3x3/BN/ReLU layers of 8 channels on a `[4, 8, 32, 32]` input.
    pub fn uniform(n: usize, dtype: DType) -> Chain {
        let kinds = vec![
            Kind::Cbr {
                cin: 8,
                cout: 8,
                stride: 1
            };
            n
        ];
        Chain::new("uniform", kinds, [4, 8, 32, 32], dtype)
    }

    /// Twelve layers of six kinds on a `[4, 3, 32, 32]` input: sizes from 8x32x32 down to
    /// 32x8x8 channels x pixels, layers that keep their input and output, or neither.
    pub fn heterogeneous(dtype: DType) -> Chain {
        use Kind::*;
        let kinds = vec![
            Cbr {
                cin: 3,
                cout: 8,
                stride: 1,
            },
            Cbr {
                cin: 8,
                cout: 8,
                stride: 1,
            },
            Residual { c: 8 },
            MaxPool,
            Cbr {
                cin: 8,
                cout: 16,
                stride: 2,
            },
            ReluDropout,
            Cbr {
                cin: 16,
                cout: 16,
                stride: 1,
            },
            AvgPool,
            Pointwise { cin: 16, cout: 32 },
            Cbr {
                cin: 32,
                cout: 32,
                stride: 1,
            },
            Residual { c: 32 },
            Cbr {
                cin: 32,
                cout: 16,
                stride: 1,
            },
        ];
        Chain::new("heterogeneous", kinds, [4, 3, 32, 32], dtype)
    }

    fn new(name: &'static str, kinds: Vec<Kind>, input: [usize; 4], dtype: DType) -> Chain {
        let dev = Device::cpu();
        let mut bns = Vec::new();
        let mut params = Vec::new();
        let weight = |cout: usize, cin: usize, k: usize, seed: usize| {
            let std = (2.0 / (k * k * cin) as f64).sqrt();
            let w = Tensor::randn(&[cout, cin, k, k], dtype, &dev, seed as u64).unwrap();
            let v: Vec<f64> = w.to_f64_vec().iter().map(|v| v * std).collect();
            Tensor::from_f64(&v, w.shape(), dtype, &dev)
                .unwrap()
                .with_requires_grad(true)
        };
        for (i, k) in kinds.iter().enumerate() {
            let mut bn = |c: usize| {
                bns.push(tape::testing::batch_norm_params(c, dtype, &dev));
                Some(bns.len() - 1)
            };
            params.push(match *k {
                Kind::Cbr { cin, cout, .. } => (Some(weight(cout, cin, 3, i)), bn(cout)),
                Kind::Residual { c } => (Some(weight(c, c, 3, i)), bn(c)),
                Kind::Pointwise { cin, cout } => (Some(weight(cout, cin, 1, i)), None),
                Kind::MaxPool | Kind::AvgPool | Kind::ReluDropout => (None, None),
            });
        }
        let x = Tensor::randn(&input, dtype, &dev, 99).unwrap();
        Chain {
            dev,
            name,
            dtype,
            kinds,
            params,
            bns,
            x,
        }
    }

    /// The chain's layers.
    pub fn layers(&self) -> Vec<Stage<'_>> {
        self.kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let (w, bn) = &self.params[i];
                let w = w.as_ref();
                let bn = bn.map(|b| &self.bns[b]);
                Stage::new(format!("{kind:?}#{i}"), OpKind::Other, move |t, x| {
                    forward(kind, w, bn, t, x)
                })
            })
            .collect()
    }

    /// The model from a dry run, with the bytes allocated now as the base.
    pub fn profile(&self, layers: &[Stage<'_>]) -> ChainModel {
        let base = self.dev.memory().current() as u64;
        let model = profile_chain(&Tape::recording(), layers, &self.x, base).unwrap();
        assert_eq!(
            self.dev.memory().current() as u64,
            base,
            "the dry run frees everything"
        );
        model
    }

    /// Runs one training step (forward, mean, backward) under `plan`; returns the device's peak
    /// bytes over it, the loss and the gradients of every parameter (conv weights, then batch
    /// norm weights and biases).
    pub fn step(&self, layers: &[Stage<'_>], plan: &Plan) -> (u64, f64, Vec<Vec<f64>>) {
        self.dev.memory().reset_peak();
        let (loss, grads) = {
            let mut tape = Tape::recording();
            let y = run_plan(&mut tape, layers, plan, &self.x).unwrap();
            let loss = ops::mean(&mut tape, &y).unwrap();
            drop(y);
            let grads = tape.backward(&loss).unwrap();
            let mut out = Vec::new();
            for t in self.parameters() {
                out.push(
                    grads
                        .get(t)
                        .expect("every parameter gets a gradient")
                        .to_f64_vec(),
                );
            }
            (loss.scalar().unwrap(), out)
        };
        (self.dev.memory().peak() as u64, loss, grads)
    }

    /// The device's peak bytes over one training step under `plan`.
    pub fn measured_peak(&self, layers: &[Stage<'_>], plan: &Plan) -> u64 {
        self.step(layers, plan).0
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let mut out: Vec<&Tensor> = self.params.iter().filter_map(|p| p.0.as_ref()).collect();
        for (g, b, _) in &self.bns {
            out.push(g);
            out.push(b);
        }
        out
    }

    /// Every batch norm's running mean and variance, concatenated.
    pub fn running_stats(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for (_, _, rs) in &self.bns {
            out.extend(rs.mean().to_f64_vec());
            out.extend(rs.var().to_f64_vec());
        }
        out
    }
}

fn forward(
    kind: Kind,
    w: Option<&Tensor>,
    bn: Option<&(Tensor, Tensor, RunningStats)>,
    t: &mut Tape<'_>,
    x: &Tensor,
) -> Result<Tensor> {
    let conv = |t: &mut Tape<'_>, x: &Tensor, stride, padding| {
        let w = w.expect("a conv layer has a weight");
        ops::conv2d(t, x, w, None, Conv2dOptions { stride, padding })
    };
    let norm = |t: &mut Tape<'_>, h: &Tensor| {
        let (g, b, rs) = bn.expect("a batch-norm layer has its parameters");
        ops::batch_norm2d(t, h, g, b, rs, BatchNormOptions::default())
    };
    match kind {
        Kind::Cbr { stride, .. } => {
            let h = conv(t, x, stride, 1)?;
            let h = norm(t, &h)?;
            ops::relu(t, &h)
        }
        Kind::Residual { .. } => {
            let h = conv(t, x, 1, 1)?;
            let h = norm(t, &h)?;
            let h = ops::add(t, x, &h)?;
            ops::relu(t, &h)
        }
        Kind::MaxPool => ops::max_pool2d(t, x, 3, 1, 1),
        Kind::AvgPool => ops::avg_pool2d(t, x, 2, 2, 0),
        Kind::ReluDropout => {
            let h = ops::relu(t, x)?;
            ops::dropout(t, &h, 0.2)
        }
        Kind::Pointwise { .. } => {
            let h = conv(t, x, 1, 0)?;
            ops::relu(t, &h)
        }
    }
}
