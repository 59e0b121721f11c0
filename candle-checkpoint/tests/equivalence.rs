//! Gradients through checkpoints are bit-identical to the unwrapped candle run (f32 and f64):
//! parameters passed in or captured, nested segments, untracked inputs, several outputs used
//! downstream, chains under `checkpoint_sequential` and random plans (proptest).

mod common;

use candle_checkpoint::planner::{Plan, Segment};
use candle_checkpoint::{backward, checkpoint, checkpoint_sequential, run_plan, Stage};
use candle_core::{DType, Module, Result, Tensor, Var};
use common::{assert_same_grads, dense, input, input_and_layers, Dense};
use proptest::prelude::*;

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// Three dense layers of width `w`.
fn layers(w: usize, dtype: DType, seed: u64) -> Vec<Dense> {
    (0..3)
        .map(|i| Dense::new(w, w, dtype, seed + i).expect("layer"))
        .collect()
}

#[test]
fn passed_in_parameters() -> Result<()> {
    for dtype in DTYPES {
        let ls = layers(8, dtype, 1);
        let x = Var::from_tensor(&input(4, 8, dtype, 9)?)?;
        let run = |x: &Tensor, ps: &[Tensor]| -> Result<Tensor> {
            let h = dense(x, &ps[0], &ps[1])?;
            let h = dense(&h, &ps[2], &ps[3])?;
            dense(&h, &ps[4], &ps[5])
        };
        let params: Vec<Tensor> = ls.iter().flat_map(Dense::params).collect();
        let naive = backward(&run(x.as_tensor(), &params)?.sqr()?.sum_all()?)?;
        let mut args = vec![x.as_tensor().clone()];
        args.extend(params.iter().cloned());
        let y = checkpoint(&args, move |a| Ok(vec![run(&a[0], &a[1..])?]))?;
        // candle's own backward delivers passed-in parameters' gradients.
        let ckpt = y[0].sqr()?.sum_all()?.backward()?;
        let mut of = vec![("x", x.as_tensor())];
        of.extend(params.iter().map(|p| ("param", p)));
        assert_same_grads(&naive, &ckpt, &of);
    }
    Ok(())
}

#[test]
fn captured_parameters() -> Result<()> {
    for dtype in DTYPES {
        let ls = layers(8, dtype, 2);
        let mods: Vec<candle_nn::Linear> = ls.iter().map(Dense::linear).collect();
        let x = Var::from_tensor(&input(4, 8, dtype, 10)?)?;
        let run = move |x: &Tensor| -> Result<Tensor> {
            let mut h = x.clone();
            for m in &mods {
                h = m.forward(&h)?.relu()?;
            }
            Ok(h)
        };
        let naive = backward(&run(x.as_tensor())?.sqr()?.sum_all()?)?;
        let y = checkpoint(&[x.as_tensor().clone()], move |a| Ok(vec![run(&a[0])?]))?;
        let ckpt = backward(&y[0].sqr()?.sum_all()?)?;
        assert_same_grads(&naive, &ckpt, &input_and_layers(&x, &ls));
    }
    Ok(())
}

#[test]
fn untracked_input_with_captured_parameters() -> Result<()> {
    for dtype in DTYPES {
        let l = Dense::new(6, 6, dtype, 3)?;
        let m = l.linear();
        let x = input(5, 6, dtype, 11)?; // a plain tensor: no gradient wanted
        let naive = backward(&m.forward(&x)?.relu()?.sqr()?.sum_all()?)?;
        let m2 = m.clone();
        let y = checkpoint(std::slice::from_ref(&x), move |a| {
            Ok(vec![m2.forward(&a[0])?.relu()?])
        })?;
        assert!(y[0].track_op(), "the output tracks the captured parameters");
        let ckpt = backward(&y[0].sqr()?.sum_all()?)?;
        assert_same_grads(
            &naive,
            &ckpt,
            &[("w", l.w.as_tensor()), ("b", l.b.as_tensor())],
        );
        // candle leaves a gradient for an untracked argument of a tracked op; so does the
        // checkpoint, the same.
        assert_eq!(
            naive.get(&x).map(common::bits),
            ckpt.get(&x).map(common::bits),
            "the untracked input's gradient"
        );
    }
    Ok(())
}

#[test]
fn nothing_tracked_runs_once_untracked() -> Result<()> {
    let x = input(3, 4, DType::F32, 12)?;
    let y = checkpoint(std::slice::from_ref(&x), |a| Ok(vec![a[0].relu()?]))?;
    assert!(!y[0].track_op());
    assert_eq!(common::bits(&y[0]), common::bits(&x.relu()?));
    Ok(())
}

#[test]
fn nested_segments() -> Result<()> {
    for dtype in DTYPES {
        let ls = layers(8, dtype, 4);
        let mods: Vec<candle_nn::Linear> = ls.iter().map(Dense::linear).collect();
        let x = Var::from_tensor(&input(4, 8, dtype, 13)?)?;
        let naive = {
            let mut h = x.as_tensor().clone();
            for m in &mods {
                h = m.forward(&h)?.tanh()?;
            }
            backward(&h.sqr()?.sum_all()?)?
        };
        let outer = mods.clone();
        let y = checkpoint(&[x.as_tensor().clone()], move |a| {
            let first = outer[0].clone();
            let h = checkpoint(&[a[0].clone()], move |b| {
                Ok(vec![first.forward(&b[0])?.tanh()?])
            })?;
            let rest = outer[1..].to_vec();
            let h = checkpoint(&h, move |b| {
                let mut h = b[0].clone();
                for m in &rest {
                    h = m.forward(&h)?.tanh()?;
                }
                Ok(vec![h])
            })?;
            Ok(h)
        })?;
        let ckpt = backward(&y[0].sqr()?.sum_all()?)?;
        assert_same_grads(&naive, &ckpt, &input_and_layers(&x, &ls));
    }
    Ok(())
}

#[test]
fn several_outputs_used_downstream() -> Result<()> {
    for dtype in DTYPES {
        let l = Dense::new(6, 6, dtype, 5)?;
        let [w, b] = l.params();
        let x = Var::from_tensor(&input(3, 6, dtype, 14)?)?;
        let seg = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Vec<Tensor>> {
            let h = dense(x, w, b)?;
            Ok(vec![h.clone(), h.sqr()?.sum_keepdim(1)?, x.tanh()?])
        };
        let tail = |o: &[Tensor]| -> Result<Tensor> {
            // The outputs used in another order, one twice.
            (o[2].broadcast_mul(&o[1])?.sum_all()? + (o[0].sum_all()? * o[1].sum_all()?)?)?
                + o[0].sqr()?.sum_all()?
        };
        let naive = backward(&tail(&seg(x.as_tensor(), &w, &b)?)?)?;
        let y = checkpoint(&[x.as_tensor().clone(), w.clone(), b.clone()], move |a| {
            seg(&a[0], &a[1], &a[2])
        })?;
        assert_eq!(y.len(), 3);
        let ckpt = backward(&tail(&y)?)?;
        assert_same_grads(&naive, &ckpt, &[("x", x.as_tensor()), ("w", &w), ("b", &b)]);
    }
    Ok(())
}

/// A chain of `n` stages over candle-nn layers of width `w` (tanh between them).
fn chain(n: usize, w: usize, dtype: DType, seed: u64) -> (Vec<Dense>, Vec<Stage>) {
    let ls: Vec<Dense> = (0..n)
        .map(|i| Dense::new(w, w, dtype, seed + i as u64).expect("layer"))
        .collect();
    let stages = ls
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let m = l.linear();
            Stage::new(format!("l{i}"), move |x| m.forward(x)?.tanh())
        })
        .collect();
    (ls, stages)
}

/// The chain's input gradient and parameters' gradients under `plan`, as bits.
fn chain_grads(ls: &[Dense], stages: &[Stage], plan: &Plan, x: &Var) -> Vec<Vec<u64>> {
    let y = run_plan(stages, plan, x.as_tensor()).expect("plan runs");
    let g = backward(&y.sqr().and_then(|t| t.sum_all()).expect("loss")).expect("backward");
    let mut out = vec![common::bits(g.get(x.as_tensor()).expect("x grad"))];
    for l in ls {
        out.push(common::bits(g.get(l.w.as_tensor()).expect("w grad")));
        out.push(common::bits(g.get(l.b.as_tensor()).expect("b grad")));
    }
    out
}

#[test]
fn checkpoint_sequential_matches_the_naive_run() -> Result<()> {
    for dtype in DTYPES {
        let (ls, stages) = chain(6, 5, dtype, 20);
        let x = Var::from_tensor(&input(3, 5, dtype, 15)?)?;
        let naive = chain_grads(&ls, &stages, &Plan::keep_all(6), &x);
        for k in 1..=6 {
            let y = checkpoint_sequential(&stages, k, x.as_tensor()).expect("runs");
            let g = backward(&y.sqr()?.sum_all()?).expect("backward");
            let mut got = vec![common::bits(g.get(x.as_tensor()).expect("x grad"))];
            for l in &ls {
                got.push(common::bits(g.get(l.w.as_tensor()).expect("w")));
                got.push(common::bits(g.get(l.b.as_tensor()).expect("b")));
            }
            assert_eq!(got, naive, "{k} segments");
        }
        assert!(checkpoint_sequential(&stages, 0, x.as_tensor()).is_err());
        assert!(checkpoint_sequential(&stages, 7, x.as_tensor()).is_err());
    }
    Ok(())
}

/// A plan from cut points and flags; a checkpointed segment of two or more layers gets a
/// nested plan (its first layer checkpointed) when `nest` says so.
fn plan_from(n: usize, cuts: &[bool], flags: &[bool], nest: &[bool]) -> Plan {
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 0..n {
        if i + 1 == n || cuts[i] {
            let range = start..i + 1;
            let checkpointed = flags[i];
            let inner = (checkpointed && nest[i] && range.len() >= 2).then(|| {
                Plan::new(vec![
                    Segment {
                        range: range.start..range.start + 1,
                        checkpointed: true,
                    },
                    Segment {
                        range: range.start + 1..range.end,
                        checkpointed: false,
                    },
                ])
            });
            parts.push((
                Segment {
                    range,
                    checkpointed,
                },
                inner,
            ));
            start = i + 1;
        }
    }
    Plan::nested(parts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_chains_and_plans_match_the_naive_run(
        n in 1usize..7,
        width in 1usize..6,
        seed in 0u64..1000,
        cuts in proptest::collection::vec(any::<bool>(), 7),
        flags in proptest::collection::vec(any::<bool>(), 7),
        nest in proptest::collection::vec(any::<bool>(), 7),
        f64_ in any::<bool>(),
    ) {
        let dtype = if f64_ { DType::F64 } else { DType::F32 };
        let (ls, stages) = chain(n, width, dtype, seed);
        let x = Var::from_tensor(&input(2, width, dtype, seed + 7).expect("x")).expect("var");
        let plan = plan_from(n, &cuts, &flags, &nest);
        prop_assert!(plan.check_covers(n).is_ok(), "{plan}");
        let naive = chain_grads(&ls, &stages, &Plan::keep_all(n), &x);
        prop_assert_eq!(chain_grads(&ls, &stages, &plan, &x), naive, "{}", plan);
    }
}
