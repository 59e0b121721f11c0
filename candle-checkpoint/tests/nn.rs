//! Modules with side effects inside checkpointed segments: the adapter's batch norm updates its
//! running statistics once per step (candle-nn's updates them again in the recompute), and the
//! adapter's dropout replays its masks (gradients bit-identical to the unwrapped run).

mod common;

use candle_checkpoint::nn::{BatchNorm, Dropout};
use candle_checkpoint::{backward, checkpoint, is_recomputing, rng};
use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use common::{assert_same_grads, bits, input, maybe_checkpointed, Dense};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Running mean, running variance and gradients (x, w, b, the norm's weight), as bits.
type StepBits = (Vec<u64>, Vec<u64>, Vec<Vec<u64>>);

#[test]
fn recompute_safe_batch_norm_updates_running_statistics_once() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let l = Dense::new(6, 6, dtype, 1)?;
        let x = Var::from_tensor(&input(8, 6, dtype, 2)?)?;
        let step = |checkpointed: bool| -> Result<StepBits> {
            let bn = BatchNorm::new(6, dtype, &candle_core::Device::Cpu)?;
            let lin = l.linear();
            let (bn2, lin2) = (bn.clone(), lin.clone());
            let seg =
                move |x: &Tensor| -> Result<Tensor> { bn2.forward(&lin2.forward(x)?)?.relu() };
            let y = maybe_checkpointed(x.as_tensor(), checkpointed, seg)?;
            let g = backward(&y.sqr()?.sum_all()?).map_err(candle_core::Error::from)?;
            let grads = [
                x.as_tensor(),
                l.w.as_tensor(),
                l.b.as_tensor(),
                bn.weight.as_tensor(),
            ]
            .iter()
            .map(|t| bits(g.get(t).expect("gradient")))
            .collect();
            Ok((
                bits(bn.running_mean.as_tensor()),
                bits(bn.running_var.as_tensor()),
                grads,
            ))
        };
        let naive = step(false)?;
        let ckpt = step(true)?;
        assert_eq!(naive.0, ckpt.0, "running mean updated once");
        assert_eq!(naive.1, ckpt.1, "running variance updated once");
        assert_eq!(naive.2, ckpt.2, "gradients identical");
        assert_ne!(
            naive.0,
            bits(&Tensor::zeros(6, dtype, &candle_core::Device::Cpu)?)
        );
    }
    Ok(())
}

/// candle-nn's batch norm inside a checkpointed segment updates its running statistics a second
/// time when the segment is recomputed (this is why the adapter has its own).
#[test]
fn candle_nn_batch_norm_updates_twice_inside_a_segment() -> Result<()> {
    let dev = candle_core::Device::Cpu;
    let make = || {
        candle_nn::BatchNorm::new(
            4,
            Tensor::zeros(4, DType::F64, &dev)?,
            Tensor::ones(4, DType::F64, &dev)?,
            Tensor::ones(4, DType::F64, &dev)?,
            Tensor::zeros(4, DType::F64, &dev)?,
            1e-5,
        )
    };
    let x = Var::from_tensor(&(input(8, 4, DType::F64, 3)? + 2.0)?)?;
    let once = make()?;
    let y = once.forward_t(x.as_tensor(), true)?;
    drop(y);
    let twice = make()?;
    let _ = twice.forward_t(x.as_tensor(), true)?;
    let _ = twice.forward_t(x.as_tensor(), true)?;

    let bn = make()?;
    let inner = bn.clone();
    let y = checkpoint(&[x.as_tensor().clone()], move |a| {
        Ok(vec![inner.forward_t(&a[0], true)?])
    })
    .map_err(candle_core::Error::from)?;
    assert_eq!(
        bits(bn.running_mean()),
        bits(once.running_mean()),
        "first pass: one update"
    );
    backward(&y[0].sqr()?.sum_all()?).map_err(candle_core::Error::from)?;
    assert_eq!(
        bits(bn.running_mean()),
        bits(twice.running_mean()),
        "recompute: a second update"
    );
    assert_ne!(bits(once.running_mean()), bits(twice.running_mean()));
    Ok(())
}

#[test]
fn dropout_masks_replay() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let l = Dense::new(16, 16, dtype, 4)?;
        let x = Var::from_tensor(&input(8, 16, dtype, 5)?)?;
        let drop = Dropout::new(0.5)?;
        let step = |checkpointed: bool| -> Result<candle_core::backprop::GradStore> {
            rng::seed(42);
            let lin = l.linear();
            let seg = move |x: &Tensor| -> Result<Tensor> {
                drop.forward_t(&lin.forward(x)?.relu()?, true)?.tanh()
            };
            let y = maybe_checkpointed(x.as_tensor(), checkpointed, seg)?;
            // A draw after the segment: the recompute must not shift the stream.
            let after = drop.mask(&y)?;
            let loss = (y.sqr()?.sum_all()? + after.sum_all()?)?;
            backward(&loss).map_err(candle_core::Error::from)
        };
        let naive = step(false)?;
        let ckpt = step(true)?;
        assert_same_grads(
            &naive,
            &ckpt,
            &[
                ("x", x.as_tensor()),
                ("w", l.w.as_tensor()),
                ("b", l.b.as_tensor()),
            ],
        );
        let m = drop.mask(x.as_tensor())?;
        let zeros = bits(&m)
            .iter()
            .filter(|b| f64::from_bits(**b) == 0.0)
            .count();
        assert!(
            zeros > 0 && zeros < 8 * 16,
            "the mask drops some, not all: {zeros}"
        );
    }
    Ok(())
}

#[test]
fn the_recompute_phase_is_visible_inside_the_segment_only() -> Result<()> {
    let seen = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (s, r) = (seen.clone(), runs.clone());
    let x = Var::from_tensor(&input(2, 3, DType::F32, 6)?)?;
    assert!(!is_recomputing());
    let y = checkpoint(&[x.as_tensor().clone()], move |a| {
        r.fetch_add(1, Ordering::SeqCst);
        if is_recomputing() {
            s.fetch_add(1, Ordering::SeqCst);
        }
        Ok(vec![a[0].exp()?])
    })
    .map_err(candle_core::Error::from)?;
    assert_eq!(
        (runs.load(Ordering::SeqCst), seen.load(Ordering::SeqCst)),
        (1, 0)
    );
    backward(&y[0].sum_all()?).map_err(candle_core::Error::from)?;
    assert_eq!(
        (runs.load(Ordering::SeqCst), seen.load(Ordering::SeqCst)),
        (2, 1)
    );
    assert!(!is_recomputing());
    Ok(())
}
