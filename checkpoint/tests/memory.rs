//! Memory of a chain of n equal conv/BN/ReLU layers, from the engine's accounting: naive grows
//! ~n, sqrt(n) checkpointed segments ~sqrt(n), planner budgets hold, down to the least peak of
//! any plan, which nested checkpoints bring below that of any single-level plan.

use checkpoint::planner::{profile_chain, Plan, PlanOptions};
use checkpoint::{checkpoint_sequential, run_plan, run_with_policy, OpKind, Policy, Stage};
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Result, Tape, Tensor};

const BATCH: usize = 4;
const CH: usize = 8;
const IMG: usize = 16;

struct ChainParams {
    convs: Vec<Tensor>,
    bns: Vec<(Tensor, Tensor, RunningStats)>,
}

fn params(n: usize, dev: &Device) -> ChainParams {
    let convs = (0..n)
        .map(|i| tape::testing::randn_leaf(&[CH, CH, 3, 3], DType::F32, dev, i as u64))
        .collect();
    let bns = (0..n)
        .map(|_| tape::testing::batch_norm_params(CH, DType::F32, dev))
        .collect();
    ChainParams { convs, bns }
}

/// One layer per conv/BN/ReLU triple, or one layer per op (`fine`).
fn layers(p: &ChainParams, fine: bool) -> Vec<Stage<'_>> {
    let conv_opts = Conv2dOptions {
        stride: 1,
        padding: 1,
    };
    let mut out = Vec::new();
    for i in 0..p.convs.len() {
        let w = &p.convs[i];
        let (g, b, rs) = &p.bns[i];
        if fine {
            out.push(Stage::new(format!("conv{i}"), OpKind::Conv, move |t, x| {
                ops::conv2d(t, x, w, None, conv_opts)
            }));
            out.push(Stage::new(
                format!("bn{i}"),
                OpKind::BatchNorm,
                move |t, x| ops::batch_norm2d(t, x, g, b, rs, BatchNormOptions::default()),
            ));
            out.push(Stage::new(format!("relu{i}"), OpKind::Relu, |t, x| {
                ops::relu(t, x)
            }));
        } else {
            out.push(Stage::new(
                format!("layer{i}"),
                OpKind::Other,
                move |t, x| {
                    let h = ops::conv2d(t, x, w, None, conv_opts)?;
                    let h = ops::batch_norm2d(t, &h, g, b, rs, BatchNormOptions::default())?;
                    ops::relu(t, &h)
                },
            ));
        }
    }
    out
}

/// Peak bytes of one training step above what was allocated before it (parameters, input).
fn step_peak(
    n: usize,
    run: impl for<'a> Fn(&mut Tape<'a>, &'a [Stage<'a>], &Tensor) -> Result<Tensor>,
) -> usize {
    let dev = Device::cpu();
    let p = params(n, &dev);
    let ls = layers(&p, false);
    let x = Tensor::randn(&[BATCH, CH, IMG, IMG], DType::F32, &dev, 99).unwrap();
    let before = dev.memory().current();
    dev.memory().reset_peak();
    {
        let mut tape = Tape::recording();
        let y = run(&mut tape, &ls, &x).unwrap();
        let loss = ops::mean(&mut tape, &y).unwrap();
        drop(y);
        let _grads = tape.backward(&loss).unwrap();
    }
    dev.memory().peak() - before
}

fn exponent(small: (usize, usize), large: (usize, usize)) -> f64 {
    (large.1 as f64 / small.1 as f64).ln() / (large.0 as f64 / small.0 as f64).ln()
}

#[test]
fn naive_grows_linearly_and_sqrt_segments_grow_with_sqrt_n() {
    let naive = |n| {
        step_peak(n, |t, ls, x| {
            run_plan(t, ls, &checkpoint::planner::Plan::keep_all(ls.len()), x)
        })
    };
    let sqrt = |n: usize| {
        step_peak(n, move |t, ls, x| {
            checkpoint_sequential(t, ls, (n as f64).sqrt().round() as usize, x)
        })
    };
    let (n1, n2) = (16, 64);
    let (a1, a2) = (naive(n1), naive(n2));
    let (s1, s2) = (sqrt(n1), sqrt(n2));
    let e_naive = exponent((n1, a1), (n2, a2));
    let e_sqrt = exponent((n1, s1), (n2, s2));
    println!("naive: {a1} -> {a2} bytes (exponent {e_naive:.2}); sqrt(n): {s1} -> {s2} (exponent {e_sqrt:.2})");
    assert!((0.9..=1.1).contains(&e_naive), "naive exponent {e_naive}");
    assert!((0.3..=0.7).contains(&e_sqrt), "sqrt(n) exponent {e_sqrt}");
    assert!(
        s2 * 3 < a2,
        "sqrt(n) segments must save memory: {s2} vs {a2}"
    );
}

#[test]
fn planner_budget_holds_on_the_real_chain() {
    let n = 32;
    let dev = Device::cpu();
    let p = params(n, &dev);
    let ls = layers(&p, false);
    let x = Tensor::randn(&[BATCH, CH, IMG, IMG], DType::F32, &dev, 99).unwrap();
    let before = dev.memory().current();
    let model = {
        let tape = Tape::recording();
        profile_chain(&tape, &ls, &x, before as u64).unwrap()
    };
    assert_eq!(
        dev.memory().current(),
        before,
        "the dry run frees everything"
    );
    let naive_pred = model.predict(&Plan::keep_all(n)).unwrap().peak;
    let least = model.front(PlanOptions::default()).unwrap()[0].peak;
    let least_flat = model.front(PlanOptions { max_depth: Some(1) }).unwrap()[0].peak;
    println!("naive {naive_pred}, least single-level {least_flat}, least {least}");
    assert!(
        least < least_flat,
        "nested checkpoints must reach below single-level ones: {least} vs {least_flat}"
    );
    let fracs = [0.6, 0.4];
    let budgets = fracs.map(|f| (naive_pred as f64 * f) as u64);
    for budget in budgets.into_iter().chain([least]) {
        let plan = model.plan(budget).unwrap();
        println!("{}", model.report(&plan).unwrap());
        dev.memory().reset_peak();
        {
            let mut tape = Tape::recording();
            let y = run_plan(&mut tape, &ls, &plan, &x).unwrap();
            let loss = ops::mean(&mut tape, &y).unwrap();
            drop(y);
            let _grads = tape.backward(&loss).unwrap();
        }
        let peak = dev.memory().peak() as u64;
        println!(
            "budget {budget}: measured peak {peak}, predicted {}",
            model.predict(&plan).unwrap().peak
        );
        assert!(peak <= budget, "peak {peak} over budget {budget}");
    }
    assert!(
        model.plan(least - 1).is_err(),
        "a budget below the least peak of any plan is an error"
    );
    assert!(model
        .plan_with(least_flat - 1, PlanOptions { max_depth: Some(1) })
        .is_err());
}

#[test]
fn keep_conv_policy_saves_memory_over_naive() {
    let dev = Device::cpu();
    let p = params(8, &dev);
    let fine = layers(&p, true);
    let x = Tensor::randn(&[BATCH, CH, IMG, IMG], DType::F32, &dev, 99).unwrap();
    let mut peaks = Vec::new();
    for policy in [
        Policy::KeepAll,
        Policy::Keep(vec![OpKind::Conv]),
        Policy::RecomputeAll,
    ] {
        dev.memory().reset_peak();
        let before = dev.memory().current();
        let mut tape = Tape::recording();
        let y = run_with_policy(&mut tape, &fine, &policy, &x).unwrap();
        let loss = ops::mean(&mut tape, &y).unwrap();
        drop(y);
        let _g = tape.backward(&loss).unwrap();
        peaks.push(dev.memory().peak() - before);
    }
    println!(
        "keep all {}, keep conv {}, recompute all {}",
        peaks[0], peaks[1], peaks[2]
    );
    assert!(
        peaks[1] < peaks[0],
        "keeping only conv outputs must save memory"
    );
    // One segment over the whole chain recomputes everything at once: no saving at the peak.
    assert!(peaks[2] >= peaks[1]);
}
