//! The optimizer step fused into backward: after each of several steps every parameter is
//! bit-identical to the unwrapped run's followed by candle-nn's optimizer step (SGD, AdamW; f32
//! and f64), or by the written-out formula for SGD with momentum and weight decay; shared
//! parameters, parameters also used outside checkpoints or passed in, and nested checkpoints
//! are updated once from their whole gradient; misuse is a typed error.

mod common;

use candle_checkpoint::fused::{AdamW, FusedUpdate, ParamUpdate, Sgd};
use candle_checkpoint::planner::Plan;
use candle_checkpoint::{checkpoint, run_plan, Error, FusedError, Result, Stage};
use candle_core::backprop::GradStore;
use candle_core::{DType, Module, Tensor, Var};
use candle_nn::optim::{Optimizer, ParamsAdamW, SGD};
use common::{bits, dense, input, Dense};

/// Blocks, width, batch and steps of the chains below.
const BLOCKS: usize = 4;
const WIDTH: usize = 24;
const BATCH: usize = 8;
const STEPS: usize = 3;

/// A chain of `BLOCKS` blocks of two captured candle-nn layers (ReLU after each).
fn chain(dtype: DType) -> (Vec<Dense>, Vec<Stage>) {
    let layers: Vec<Dense> = (0..2 * BLOCKS)
        .map(|i| Dense::new(WIDTH, WIDTH, dtype, 10 + i as u64).expect("layer"))
        .collect();
    let stages = (0..BLOCKS)
        .map(|b| {
            let mods: Vec<candle_nn::Linear> =
                layers[2 * b..2 * b + 2].iter().map(Dense::linear).collect();
            Stage::new(format!("block{b}"), move |x| {
                let mut h = x.clone();
                for m in &mods {
                    h = m.forward(&h)?.relu()?;
                }
                Ok(h)
            })
        })
        .collect();
    (layers, stages)
}

/// Every variable of `layers`, weights and biases.
fn vars(layers: &[Dense]) -> Vec<Var> {
    layers
        .iter()
        .flat_map(|l| [l.w.clone(), l.b.clone()])
        .collect()
}

/// The loss of a chain's output.
fn loss(y: &Tensor) -> candle_core::Result<Tensor> {
    y.sqr()?.sum_all()
}

/// Asserts two parameter lists hold bit-identical values.
fn assert_same_params(naive: &[Var], fused: &[Var], step: usize) {
    for (i, (a, b)) in naive.iter().zip(fused).enumerate() {
        assert_eq!(bits(a), bits(b), "parameter {i} differs after step {step}");
    }
}

/// Asserts the fused step returned no gradient of `params` (it consumed them).
fn assert_none_returned(rest: &GradStore, params: &[Var]) {
    for (i, p) in params.iter().enumerate() {
        assert!(
            rest.get(p).is_none(),
            "parameter {i}'s gradient was returned"
        );
    }
}

/// `STEPS` steps of the unwrapped chain with `opt` against the per-block chain with `fused`,
/// the parameters compared after each.
fn compare<O: Optimizer>(
    dtype: DType,
    opt: impl Fn(Vec<Var>) -> O,
    update: impl ParamUpdate + 'static,
) -> Result<()> {
    let (naive_layers, naive) = chain(dtype);
    let (fused_layers, stages) = chain(dtype);
    let mut opt = opt(vars(&naive_layers));
    let fused = FusedUpdate::new(&vars(&fused_layers), update)?;
    let x = input(BATCH, WIDTH, dtype, 3)?;
    for step in 1..=STEPS {
        // A learning-rate schedule: both optimizers scaled alike each step.
        let lr = fused.learning_rate() * 0.5;
        opt.set_learning_rate(lr);
        fused.set_learning_rate(lr);
        let g = loss(&run_plan(&naive, &Plan::keep_all(BLOCKS), &x)?)?.backward()?;
        opt.step(&g)?;
        let s = fused.begin()?;
        let y = run_plan(&stages, &Plan::equal_segments(BLOCKS, BLOCKS), &x)?;
        let rest = s.backward(&loss(&y)?)?;
        assert_none_returned(&rest, &vars(&fused_layers));
        assert_same_params(&vars(&naive_layers), &vars(&fused_layers), step);
    }
    Ok(())
}

#[test]
fn fused_sgd_matches_candle_sgd_f32_and_f64() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        compare(dtype, |v| SGD::new(v, 0.05).expect("sgd"), Sgd::new(0.05))?;
    }
    Ok(())
}

#[test]
fn fused_adamw_matches_candle_adamw_f32_and_f64() -> Result<()> {
    let params = ParamsAdamW {
        lr: 0.01,
        weight_decay: 0.1,
        ..ParamsAdamW::default()
    };
    for dtype in [DType::F32, DType::F64] {
        let p = params.clone();
        compare(
            dtype,
            move |v| candle_nn::AdamW::new(v, p.clone()).expect("adamw"),
            AdamW::new(params.clone()),
        )?;
    }
    Ok(())
}

/// SGD with momentum and weight decay written out (PyTorch's formulation) over a `GradStore`.
struct MomentumReference {
    vars: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    lr: f64,
}

impl Optimizer for MomentumReference {
    type Config = ();

    fn new(vars: Vec<Var>, _: ()) -> candle_core::Result<Self> {
        let buffers = vec![None; vars.len()];
        Ok(MomentumReference {
            vars,
            buffers,
            lr: 0.05,
        })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        for (v, buf) in self.vars.iter().zip(&mut self.buffers) {
            let Some(g) = grads.get(v) else { continue };
            let g = (g + (v.as_tensor() * 0.01)?)?;
            let b = match buf.take() {
                Some(b) => ((b * 0.9)? + g)?,
                None => g,
            };
            v.set(&v.sub(&(&b * self.lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}

#[test]
fn fused_sgd_with_momentum_and_weight_decay_matches_the_formula() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let update = Sgd::new(0.05).with_momentum(0.9).with_weight_decay(0.01);
        compare(
            dtype,
            |v| MomentumReference::new(v, ()).expect("reference"),
            update,
        )?;
    }
    Ok(())
}

/// Three layers: `a` captured by two checkpointed segments, `c` by one and by the recorded
/// tail, `b` passed into a checkpointed segment as inputs. (Every parameter's gradient is a sum
/// of at most two contributions, which floating-point addition sums alike in either order.)
struct Shared {
    a: Dense,
    b: Dense,
    c: Dense,
}

impl Shared {
    fn new() -> Result<Self> {
        let d = |seed| Dense::new(WIDTH, WIDTH, DType::F64, seed);
        Ok(Shared {
            a: d(40)?,
            b: d(41)?,
            c: d(42)?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        [&self.a, &self.b, &self.c]
            .iter()
            .flat_map(|l| [l.w.clone(), l.b.clone()])
            .collect()
    }

    /// `relu(c(relu(a(b(relu(c(relu(a(x)))))))))` (with `b` as `dense`), checkpointed or not.
    fn forward(&self, x: &Tensor, ckpt: bool) -> Result<Tensor> {
        let (a, c) = (self.a.linear(), self.c.linear());
        let [w, b] = self.b.params();
        let seg_a = move |h: &Tensor| a.forward(h)?.relu();
        let seg_c = move |h: &Tensor| c.forward(h)?.relu();
        if !ckpt {
            let h = dense(&seg_c(&seg_a(x)?)?, &w, &b)?;
            return Ok(seg_c(&seg_a(&h)?)?);
        }
        let ckpt_a = |h: Tensor| -> Result<Tensor> {
            let f = seg_a.clone();
            Ok(checkpoint(&[h], move |t| Ok(vec![f(&t[0])?]))?.remove(0))
        };
        let h = ckpt_a(x.clone())?;
        let f = seg_c.clone();
        let mid = move |t: &[Tensor]| Ok(vec![dense(&f(&t[0])?, &t[1], &t[2])?]);
        let h = checkpoint(&[h, w, b], mid)?.remove(0);
        Ok(seg_c(&ckpt_a(h)?)?)
    }
}

#[test]
fn shared_and_passed_in_parameters_are_updated_once_from_their_whole_gradient() -> Result<()> {
    let (naive, fused_model) = (Shared::new()?, Shared::new()?);
    let mut opt = SGD::new(naive.vars(), 0.02)?;
    let fused = FusedUpdate::new(&fused_model.vars(), Sgd::new(0.02))?;
    let x = input(BATCH, WIDTH, DType::F64, 5)?;
    for step in 1..=STEPS {
        opt.step(&loss(&naive.forward(&x, false)?)?.backward()?)?;
        let s = fused.begin()?;
        let y = fused_model.forward(&x, true)?;
        let rest = s.backward(&loss(&y)?)?;
        assert_none_returned(&rest, &fused_model.vars());
        assert_same_params(&naive.vars(), &fused_model.vars(), step);
    }
    Ok(())
}

/// `x -> relu(a(relu(b(x))))` with `b` in a checkpoint nested inside the outer one.
fn nested(a: &Dense, b: &Dense, x: &Tensor, ckpt: bool) -> Result<Tensor> {
    let (la, lb) = (a.linear(), b.linear());
    if !ckpt {
        return Ok(la.forward(&lb.forward(x)?.relu()?)?.relu()?);
    }
    let outer = move |t: &[Tensor]| {
        let lb = lb.clone();
        let h = checkpoint(&[t[0].clone()], move |u| {
            Ok(vec![lb.forward(&u[0])?.relu()?])
        })?;
        Ok(vec![la.forward(&h[0])?.relu()?])
    };
    Ok(checkpoint(std::slice::from_ref(x), outer)?.remove(0))
}

#[test]
fn nested_checkpoints_update_each_parameter_once() -> Result<()> {
    let layers = |seed| -> Result<[Dense; 2]> {
        Ok([
            Dense::new(WIDTH, WIDTH, DType::F32, seed)?,
            Dense::new(WIDTH, WIDTH, DType::F32, seed + 1)?,
        ])
    };
    let (naive, model) = (layers(60)?, layers(60)?);
    let mut opt = candle_nn::AdamW::new_lr(vars(&naive), 0.01)?;
    let fused = FusedUpdate::new(
        &vars(&model),
        AdamW::new(ParamsAdamW {
            lr: 0.01,
            ..Default::default()
        }),
    )?;
    let x = Var::from_tensor(&input(BATCH, WIDTH, DType::F32, 6)?)?;
    for step in 1..=STEPS {
        opt.step(&loss(&nested(&naive[0], &naive[1], &x, false)?)?.backward()?)?;
        let s = fused.begin()?;
        let y = nested(&model[0], &model[1], &x, true)?;
        let rest = s.backward(&loss(&y)?)?;
        assert!(rest.get(&x).is_some(), "the input's gradient is returned");
        assert_same_params(&vars(&naive), &vars(&model), step);
    }
    Ok(())
}

#[test]
fn a_second_step_on_the_thread_is_an_error() -> Result<()> {
    let (layers, _) = chain(DType::F32);
    let fused = FusedUpdate::new(&vars(&layers), Sgd::new(0.1))?;
    let other = FusedUpdate::new(&vars(&layers), Sgd::new(0.1))?;
    let _step = fused.begin()?;
    let second = other.begin().map(drop);
    match second {
        Err(Error::Fused(FusedError::StepActive)) => Ok(()),
        Err(e) => panic!("expected StepActive, got {e}"),
        Ok(()) => panic!("a second step began"),
    }
}

#[test]
fn a_forward_before_the_step_began_is_an_uncounted_use() -> Result<()> {
    let (layers, stages) = chain(DType::F32);
    let fused = FusedUpdate::new(&vars(&layers), Sgd::new(0.1))?;
    let before = bits(&layers[0].w);
    let x = input(BATCH, WIDTH, DType::F32, 3)?;
    let y = run_plan(&stages, &Plan::equal_segments(BLOCKS, BLOCKS), &x)?;
    let s = fused.begin()?;
    match s.backward(&loss(&y)?) {
        Err(Error::Fused(FusedError::UncountedUse {
            uses: 0,
            arrived: 1,
            ..
        })) => {}
        Err(e) => panic!("expected UncountedUse, got {e}"),
        Ok(_) => panic!("an uncounted gradient was accepted"),
    }
    assert_eq!(
        bits(&layers[0].w),
        before,
        "the first block's weight was updated"
    );
    Ok(())
}

/// An optimizer that records, for each update, the parameter and whether a recompute was
/// running, and passes the update on to SGD.
struct Recording {
    sgd: Sgd,
    log: std::sync::Arc<std::sync::Mutex<Vec<(candle_core::TensorId, bool)>>>,
}

impl ParamUpdate for Recording {
    fn add_param(&mut self, var: &Var) -> candle_core::Result<()> {
        self.sgd.add_param(var)
    }

    fn begin_step(&mut self) {
        self.sgd.begin_step();
    }

    fn update(&mut self, var: &Var, grad: Tensor) -> candle_core::Result<()> {
        let inside = candle_checkpoint::is_recomputing();
        self.log.lock().expect("log").push((var.id(), inside));
        self.sgd.update(var, grad)
    }

    fn learning_rate(&self) -> f64 {
        self.sgd.learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.sgd.set_learning_rate(lr);
    }
}

#[test]
fn captured_parameters_are_updated_inside_their_segments_recompute() -> Result<()> {
    let (layers, stages) = chain(DType::F32);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = Recording {
        sgd: Sgd::new(0.1),
        log: log.clone(),
    };
    let fused = FusedUpdate::new(&vars(&layers), rec)?;
    let x = input(BATCH, WIDTH, DType::F32, 3)?;
    let s = fused.begin()?;
    let y = run_plan(&stages, &Plan::equal_segments(BLOCKS, BLOCKS), &x)?;
    s.backward(&loss(&y)?)?;
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 4 * BLOCKS, "each parameter is updated once");
    // The last block is recorded, not checkpointed: its parameters wait for the store.
    for (i, v) in vars(&layers).iter().enumerate() {
        let inside = log.iter().find(|(id, _)| *id == v.id()).map(|(_, r)| *r);
        let want = i < 4 * (BLOCKS - 1);
        assert_eq!(
            inside,
            Some(want),
            "parameter {i}: updated inside a recompute"
        );
    }
    Ok(())
}
