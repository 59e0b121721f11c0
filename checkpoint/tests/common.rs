//! Random segment programs for the equivalence suite: chains and DAGs of the engine's ops with a
//! random choice of checkpointed, nested sub-blocks, run once naively and once with recompute.

#![allow(dead_code)]

use checkpoint::{checkpoint_with, CheckpointOptions};
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Gradients, Result, Tape, Tensor};

/// One step of a random program; `src` indices refer to the tensors available in the block.
#[derive(Clone, Debug)]
pub enum Item {
    Conv {
        src: usize,
        conv: usize,
    },
    Bn {
        src: usize,
        bn: usize,
    },
    Relu {
        src: usize,
    },
    Concat {
        srcs: Vec<usize>,
    },
    Dropout {
        src: usize,
        p: f64,
    },
    Pool {
        src: usize,
        max: bool,
    },
    Block {
        srcs: Vec<usize>,
        checkpointed: bool,
        body: Vec<Item>,
    },
}

/// A random program with the shapes of its parameters.
#[derive(Clone, Debug)]
pub struct Program {
    pub body: Vec<Item>,
    pub batch: usize,
    pub in_channels: usize,
    pub image: usize,
    /// (cout, cin, kernel, bias) per conv.
    pub convs: Vec<(usize, usize, usize, bool)>,
    pub bns: Vec<usize>,
    pub head_in: usize,
    pub classes: usize,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = tape::rng::mix64(self.0);
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// An op a negative control's fault acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exercise {
    /// A convolution (parameters whose gradients a checkpoint must hand back).
    Conv,
    /// A batch norm (running statistics a recompute must not update again).
    BatchNorm,
    /// A dropout (a mask a recompute must replay).
    Dropout,
}

impl Program {
    fn empty(rng: &mut Rng) -> Program {
        Program {
            body: Vec::new(),
            batch: 2 + rng.below(2),
            in_channels: 1 + rng.below(3),
            image: 3 + rng.below(3),
            convs: Vec::new(),
            bns: Vec::new(),
            head_in: 0,
            classes: 2 + rng.below(3),
        }
    }

    /// A random program from `seed`.
    pub fn random(seed: u64) -> Program {
        let mut rng = Rng(seed);
        let mut p = Program::empty(&mut rng);
        let mut avail = vec![p.in_channels];
        let n = 2 + rng.below(5);
        p.body = p.gen_block(&mut rng, &mut avail, 0, n);
        p.head_in = *avail.last().unwrap();
        p
    }

    /// A random program from `seed` that ends in a checkpointed block (random items, possibly
    /// nested blocks, then `op` on the block's output): `op` lies on the path to the loss inside
    /// a recomputed segment, so a fault acting on it changes what the step computes.
    pub fn random_exercising(seed: u64, op: Exercise) -> Program {
        let mut rng = Rng(seed);
        let mut p = Program::empty(&mut rng);
        let mut avail = vec![p.in_channels];
        let n = 1 + rng.below(4);
        p.body = p.gen_block(&mut rng, &mut avail, 0, n);
        let src = avail.len() - 1;
        let mut inner = vec![avail[src]];
        let n = rng.below(4);
        let mut body = p.gen_block(&mut rng, &mut inner, 1, n);
        let last = inner.len() - 1;
        let (item, ch) = match op {
            Exercise::Conv => {
                let cout = 1 + rng.below(4);
                let k = [1, 3][rng.below(2)];
                p.convs.push((cout, inner[last], k, rng.chance(0.5)));
                (
                    Item::Conv {
                        src: last,
                        conv: p.convs.len() - 1,
                    },
                    cout,
                )
            }
            Exercise::BatchNorm => {
                p.bns.push(inner[last]);
                (
                    Item::Bn {
                        src: last,
                        bn: p.bns.len() - 1,
                    },
                    inner[last],
                )
            }
            Exercise::Dropout => (
                Item::Dropout {
                    src: last,
                    p: [0.2, 0.5][rng.below(2)],
                },
                inner[last],
            ),
        };
        body.push(item);
        p.body.push(Item::Block {
            srcs: vec![src],
            checkpointed: true,
            body,
        });
        p.head_in = ch;
        p
    }

    fn gen_block(
        &mut self,
        rng: &mut Rng,
        avail: &mut Vec<usize>,
        depth: usize,
        len: usize,
    ) -> Vec<Item> {
        let mut items = Vec::new();
        for _ in 0..len {
            let pick =
                |rng: &mut Rng, avail: &Vec<usize>| avail.len() - 1 - rng.below(avail.len().min(3));
            let roll = rng.below(if depth < 3 { 8 } else { 6 });
            let (item, ch) = match roll {
                0 => {
                    let src = pick(rng, avail);
                    let cout = 1 + rng.below(4);
                    let k = [1, 3][rng.below(2)];
                    self.convs.push((cout, avail[src], k, rng.chance(0.5)));
                    (
                        Item::Conv {
                            src,
                            conv: self.convs.len() - 1,
                        },
                        cout,
                    )
                }
                1 => {
                    let src = pick(rng, avail);
                    self.bns.push(avail[src]);
                    (
                        Item::Bn {
                            src,
                            bn: self.bns.len() - 1,
                        },
                        avail[src],
                    )
                }
                2 => {
                    let src = pick(rng, avail);
                    (Item::Relu { src }, avail[src])
                }
                3 => {
                    let k = 1 + rng.below(3);
                    let srcs: Vec<usize> = (0..k).map(|_| rng.below(avail.len())).collect();
                    let ch = srcs.iter().map(|&s| avail[s]).sum();
                    (Item::Concat { srcs }, ch)
                }
                4 => {
                    let src = pick(rng, avail);
                    (
                        Item::Dropout {
                            src,
                            p: [0.2, 0.5][rng.below(2)],
                        },
                        avail[src],
                    )
                }
                5 => {
                    let src = pick(rng, avail);
                    (
                        Item::Pool {
                            src,
                            max: rng.chance(0.5),
                        },
                        avail[src],
                    )
                }
                _ => {
                    let k = 1 + rng.below(avail.len().min(3));
                    let srcs: Vec<usize> = (0..k).map(|j| avail.len() - 1 - j).collect();
                    let mut inner: Vec<usize> = srcs.iter().map(|&s| avail[s]).collect();
                    let n = 1 + rng.below(4);
                    let body = self.gen_block(rng, &mut inner, depth + 1, n);
                    let ch = *inner.last().unwrap();
                    (
                        Item::Block {
                            srcs,
                            checkpointed: rng.chance(0.7),
                            body,
                        },
                        ch,
                    )
                }
            };
            items.push(item);
            avail.push(ch);
        }
        items
    }

    /// Whether any block is checkpointed.
    pub fn has_checkpoint(&self) -> bool {
        fn any(items: &[Item]) -> bool {
            items.iter().any(|i| match i {
                Item::Block {
                    checkpointed, body, ..
                } => *checkpointed || any(body),
                _ => false,
            })
        }
        any(&self.body)
    }
}

/// Parameters and running statistics of one run.
pub struct Params {
    pub convs: Vec<(Tensor, Option<Tensor>)>,
    pub bns: Vec<(Tensor, Tensor, RunningStats)>,
    pub fc: (Tensor, Tensor),
}

impl Params {
    pub fn new(p: &Program, dtype: DType, dev: &Device, seed: u64) -> Result<Params> {
        let mut s = seed;
        let mut next = || {
            s += 1;
            s
        };
        let mut convs = Vec::new();
        for &(co, ci, k, bias) in &p.convs {
            let w = Tensor::randn(&[co, ci, k, k], dtype, dev, next())?.with_requires_grad(true);
            let b = if bias {
                Some(Tensor::randn(&[co], dtype, dev, next())?.with_requires_grad(true))
            } else {
                None
            };
            convs.push((w, b));
        }
        let mut bns = Vec::new();
        for &c in &p.bns {
            let w =
                Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, dev, next())?.with_requires_grad(true);
            let b = Tensor::randn(&[c], dtype, dev, next())?.with_requires_grad(true);
            bns.push((w, b, RunningStats::new(c, dtype, dev)?));
        }
        let fw =
            Tensor::randn(&[p.classes, p.head_in], dtype, dev, next())?.with_requires_grad(true);
        let fb = Tensor::randn(&[p.classes], dtype, dev, next())?.with_requires_grad(true);
        Ok(Params {
            convs,
            bns,
            fc: (fw, fb),
        })
    }

    /// Every trainable tensor, in a fixed order.
    pub fn trainable(&self) -> Vec<&Tensor> {
        let mut v = Vec::new();
        for (w, b) in &self.convs {
            v.push(w);
            if let Some(b) = b {
                v.push(b);
            }
        }
        for (w, b, _) in &self.bns {
            v.push(w);
            v.push(b);
        }
        v.push(&self.fc.0);
        v.push(&self.fc.1);
        v
    }
}

/// How checkpointed blocks run.
#[derive(Clone, Debug)]
pub struct RunMode {
    /// Honour the `checkpointed` flags (false: the naive run).
    pub recompute: bool,
    /// Options handed to every checkpoint (fault injection for negative controls).
    pub options: CheckpointOptions,
}

pub fn run_items<'a>(
    tape: &mut Tape<'a>,
    items: &'a [Item],
    params: &'a Params,
    mut avail: Vec<Tensor>,
    mode: &'a RunMode,
) -> Result<Tensor> {
    for item in items {
        let y = match item {
            Item::Conv { src, conv } => {
                let (w, b) = &params.convs[*conv];
                let k = w.shape()[2];
                let opts = Conv2dOptions {
                    stride: 1,
                    padding: k / 2,
                };
                ops::conv2d(tape, &avail[*src], w, b.as_ref(), opts)?
            }
            Item::Bn { src, bn } => {
                let (w, b, rs) = &params.bns[*bn];
                ops::batch_norm2d(tape, &avail[*src], w, b, rs, BatchNormOptions::default())?
            }
            Item::Relu { src } => ops::relu(tape, &avail[*src])?,
            Item::Concat { srcs } => {
                let xs: Vec<&Tensor> = srcs.iter().map(|&s| &avail[s]).collect();
                ops::concat(tape, &xs)?
            }
            Item::Dropout { src, p } => ops::dropout(tape, &avail[*src], *p)?,
            Item::Pool { src, max } => {
                if *max {
                    ops::max_pool2d(tape, &avail[*src], 3, 1, 1)?
                } else {
                    ops::avg_pool2d(tape, &avail[*src], 3, 1, 1)?
                }
            }
            Item::Block {
                srcs,
                checkpointed,
                body,
            } => {
                let inputs: Vec<Tensor> = srcs.iter().map(|&s| avail[s].clone()).collect();
                if *checkpointed && mode.recompute {
                    let refs: Vec<&Tensor> = inputs.iter().collect();
                    checkpoint_with(tape, &refs, mode.options.clone(), move |t, xs| {
                        run_items(t, body, params, xs.to_vec(), mode)
                    })?
                } else {
                    run_items(tape, body, params, inputs, mode)?
                }
            }
        };
        avail.push(y);
    }
    Ok(avail.pop().expect("a block has at least one item"))
}

/// Everything one training step of a program produces.
pub struct StepResult {
    pub loss: Vec<f64>,
    pub logits: Vec<f64>,
    pub param_grads: Vec<Vec<f64>>,
    pub input_grad: Vec<f64>,
    pub running: Vec<(Vec<f64>, Vec<f64>)>,
    pub peak: usize,
}

/// One training step: forward, cross-entropy, backward; on a device of its own.
pub fn step(p: &Program, dtype: DType, mode: &RunMode, seed: u64) -> Result<StepResult> {
    let dev = Device::cpu();
    let params = Params::new(p, dtype, &dev, seed)?;
    let x = Tensor::randn(
        &[p.batch, p.in_channels, p.image, p.image],
        dtype,
        &dev,
        seed ^ 77,
    )?
    .with_requires_grad(true);
    let labels: Vec<usize> = (0..p.batch)
        .map(|i| (i * 7 + seed as usize) % p.classes)
        .collect();
    dev.memory().reset_peak();
    let (loss, logits, grads): (Tensor, Tensor, Gradients) = {
        let mut tape = Tape::recording().with_seed(seed);
        let h = run_items(&mut tape, &p.body, &params, vec![x.clone()], mode)?;
        let g = ops::global_avg_pool(&mut tape, &h)?;
        let logits = ops::linear(&mut tape, &g, &params.fc.0, Some(&params.fc.1))?;
        let loss = ops::cross_entropy(&mut tape, &logits, &labels)?;
        let grads = tape.backward(&loss)?;
        (loss, logits, grads)
    };
    let param_grads = params
        .trainable()
        .iter()
        .map(|t| {
            grads
                .get(t)
                .map(|g| g.to_f64_vec())
                .unwrap_or_else(|| vec![0.0; t.numel()])
        })
        .collect();
    Ok(StepResult {
        loss: loss.to_f64_vec(),
        logits: logits.to_f64_vec(),
        param_grads,
        input_grad: grads.get(&x).map(|g| g.to_f64_vec()).unwrap_or_default(),
        running: params
            .bns
            .iter()
            .map(|(_, _, rs)| (rs.mean().to_f64_vec(), rs.var().to_f64_vec()))
            .collect(),
        peak: dev.memory().peak(),
    })
}

/// `max |a - b| / max(max |b|, 1e-30)`: the norm-relative difference of two tensors.
pub fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `max |a - b|`.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// The first difference beyond `tol` between two step results, if any.
///
/// Loss, logits and running statistics are compared tensor by tensor, relative to each one's
/// largest value. Gradients are compared relative to the largest gradient of the step (the
/// infinity-norm relative error of the whole gradient vector, reported per tensor): some
/// gradients are analytically zero (a conv bias whose output only reaches the loss through batch
/// norm cancels exactly), and their computed values are pure rounding noise of the terms that
/// cancel, which no per-tensor relative measure can judge.
pub fn compare(a: &StepResult, b: &StepResult, tol: f64) -> Option<String> {
    let mut pairs: Vec<(String, &[f64], &[f64])> = vec![
        ("loss".into(), &a.loss, &b.loss),
        ("logits".into(), &a.logits, &b.logits),
    ];
    for (i, (x, y)) in a.running.iter().zip(&b.running).enumerate() {
        pairs.push((format!("running mean {i}"), &x.0, &y.0));
        pairs.push((format!("running var {i}"), &x.1, &y.1));
    }
    let tensor_wise = pairs.into_iter().find_map(|(name, x, y)| {
        let d = rel_diff(x, y);
        (d > tol || d.is_nan()).then(|| format!("{name}: relative difference {d:e} > {tol:e}"))
    });
    if tensor_wise.is_some() {
        return tensor_wise;
    }
    let mut grads: Vec<(String, &[f64], &[f64])> =
        vec![("input grad".into(), &a.input_grad, &b.input_grad)];
    for (i, (x, y)) in a.param_grads.iter().zip(&b.param_grads).enumerate() {
        grads.push((format!("param grad {i}"), x, y));
    }
    let scale = grads
        .iter()
        .flat_map(|g| g.2.iter())
        .fold(1e-30f64, |m, v| m.max(v.abs()));
    grads.into_iter().find_map(|(name, x, y)| {
        let d = max_abs_diff(x, y) / scale;
        (d > tol || d.is_nan())
            .then(|| format!("{name}: difference {d:e} of the largest gradient > {tol:e}"))
    })
}
