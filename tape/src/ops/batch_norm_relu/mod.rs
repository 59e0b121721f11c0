//! Fused concat -> batch norm -> ReLU over several NCHW tensors (DenseNet's layer input), without
//! materialising the concatenation or the pre-activation. The result equals
//! `relu(batch_norm2d(concat(parts)))`, with the same running-statistic semantics; backward saves
//! only the parts (which a DenseNet keeps anyway), per-channel statistics, the weight and the
//! output (the ReLU mask, which the following convolution keeps anyway).
//!
//! [`batch_norm_relu_prefix`] takes its input as the first channels of a [`BlockStorage`]
//! instead: read in place as one part (one call however many tensors were appended), its input
//! gradient added in place into the storage's gradient.

use super::batch_norm::{
    check_affine, check_batch, check_sync, BatchNormOptions, BatchStatsReducer, BnStats,
    RunningStats,
};
use super::checks::check_grad;
use crate::backend::{kernel_trait, kernels};
use crate::block_storage::{BlockStorage, GradHandle};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::{Phase, Tape};
use crate::tensor::Tensor;
use std::sync::Arc;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

const OP: &str = "batch_norm_relu";

/// The arguments of the fused forward kernel (checked by the caller).
pub(crate) struct BnReluForward<'a> {
    /// The parts, `[n, widths[k], h, w]` each, of which the first `channels[k]` channels count
    /// (all of them, except for a channel prefix of a [`BlockStorage`]).
    pub(crate) parts: &'a [&'a Tensor],
    pub(crate) channels: &'a [usize],
    pub(crate) widths: &'a [usize],
    pub(crate) weight: &'a Tensor,
    pub(crate) bias: &'a Tensor,
    pub(crate) running: &'a RunningStats,
    pub(crate) opts: BatchNormOptions,
    /// Batch statistics (training) or the running ones (eval).
    pub(crate) training: bool,
    /// Fold the batch into `running` (training, forward phase only).
    pub(crate) update_running: bool,
    /// Return the statistics backward needs.
    pub(crate) want_stats: bool,
    /// The batch statistics to normalise with, kept by the first pass of a recomputed segment
    /// (training, recompute phase): no statistics pass, the first pass's output bit for bit.
    pub(crate) given: Option<&'a BnStats>,
}

/// The arguments of the fused backward kernel: what the op saved, and which gradients it wants.
pub(crate) struct BnReluBackward<'a> {
    pub(crate) g: &'a Tensor,
    pub(crate) parts: &'a [&'a Tensor],
    pub(crate) channels: &'a [usize],
    pub(crate) widths: &'a [usize],
    /// Channels per image of each part's existing gradient in `into` (the part's width, or a
    /// block storage's for a gathered copy of its channels).
    pub(crate) into_widths: &'a [usize],
    /// The output (its positive elements are the ReLU mask).
    pub(crate) out: &'a Tensor,
    pub(crate) stats: &'a BnStats,
    pub(crate) weight: &'a Tensor,
    /// The forward's bias: with the weight and the statistics, the forward's shift, from which
    /// the CPU recomputes the ReLU mask of `f32`/`f64` outputs instead of reading `out`.
    pub(crate) bias: &'a Tensor,
    pub(crate) training: bool,
    /// The forward pass's `eps` (cuDNN asks for it again).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) eps: f64,
    pub(crate) want_parts: &'a [bool],
    pub(crate) want_weight: bool,
    pub(crate) want_bias: bool,
    /// A synchronised layer's reducer (training): the input gradient's sums are global.
    pub(crate) sync: Option<&'a dyn BatchStatsReducer>,
}

/// The gradients of the parts, the weight and the bias (each when wanted).
pub(crate) type BnReluGrads = (Vec<Option<Tensor>>, Option<Tensor>, Option<Tensor>);

kernel_trait! {
    /// Device kernels of the fused concat -> batch norm -> ReLU.
    pub(crate) trait BatchNormReluKernels {
        /// The output `[n, C, h, w]` (packed) and, when asked, the statistics backward needs.
        fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)>;
        /// The wanted gradients from the output gradient. `into[k]`, when given, is part `k`'s
        /// existing gradient, `into_widths[k]` channels per image of which the part's are the
        /// first: its input gradient is added into it in place, and it comes back as that
        /// part's gradient. A part narrower than its buffer always comes with one.
        fn bn_relu_backward(
            &self,
            a: &BnReluBackward<'_>,
            into: Vec<Option<Tensor>>,
        ) -> Result<BnReluGrads>;
    }
}

/// Where the op's input channels come from.
#[derive(Clone)]
enum Input {
    /// Separate tensors, concatenated along channels.
    Parts(Vec<Tensor>),
    /// The first channels of a block storage, whose gradient takes the input gradient.
    Prefix(BlockStorage),
    /// A packed copy of the first channels of a block storage (kept for backward), whose input
    /// gradient is added into the storage's gradient in place (when the channels want one).
    Gathered(Tensor, Option<GradHandle>),
}

/// What backward keeps, on every device.
struct Saved {
    input: Input,
    out: Tensor,
    stats: BnStats,
    weight: Tensor,
    bias: Tensor,
    /// A synchronised layer's reducer (training only).
    sync: Option<Arc<dyn BatchStatsReducer>>,
}

/// Shapes of the parts: `(n, channels of each part, h, w)`, checked to agree.
fn check_parts(parts: &[&Tensor]) -> Result<(usize, Vec<usize>, usize, usize)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid(OP, "needs at least one input"))?;
    let [n, _, h, w] = first.dims4(OP)?;
    let mut channels = Vec::with_capacity(parts.len());
    for p in parts {
        first.check_compatible(p, OP)?;
        let [pn, pc, ph, pw] = p.dims4(OP)?;
        if (pn, ph, pw) != (n, h, w) {
            return Err(Error::shape(
                OP,
                format!(
                    "inputs must agree on batch and image size: {:?} vs {:?}",
                    first.shape(),
                    p.shape()
                ),
            ));
        }
        channels.push(pc);
    }
    Ok((n, channels, h, w))
}

/// `relu(batch_norm2d(concat(parts)))` along channels, computed without the concatenation.
/// `weight`, `bias` and `running` cover all channels of all parts.
pub fn batch_norm_relu(
    tape: &mut Tape,
    parts: &[&Tensor],
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let (n, channels, h, w) = check_parts(parts)?;
    let owned = Input::Parts(parts.iter().map(|&p| p.clone()).collect());
    let record = tape.needs_grad(parts) || tape.needs_grad(&[weight, bias]);
    let widths = channels.clone();
    let shape = (n, channels, widths, h, w);
    fused(
        tape,
        parts,
        shape,
        owned,
        record,
        (weight, bias, running, opts),
    )
}

/// `relu(batch_norm2d(x))` of the first `channels` channels `x` of `storage`, read in place
/// (one call however many tensors were appended): a dense layer's input in shared block
/// storage. The input gradient is added into the storage's gradient. `weight`, `bias` and
/// `running` cover the `channels` channels.
pub fn batch_norm_relu_prefix(
    tape: &mut Tape,
    storage: &BlockStorage,
    channels: usize,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let [n, width, h, w] = storage.dims();
    let input = Input::Prefix(storage.clone());
    let record = records(tape, storage, [weight, bias]);
    storage.with_prefix(channels, |features| {
        let shape = (n, vec![channels], vec![width], h, w);
        let affine = (weight, bias, running, opts);
        fused(tape, &[features], shape, input, record, affine)
    })
}

/// `relu(batch_norm2d(x))` of a packed copy `x` of the first `channels` channels of `storage`
/// (a concatenation of everything appended up to them, which backward keeps, as a naive
/// DenseNet layer's input), its input gradient added in place into the storage's gradient (no
/// gradient of the copy, no separate add). `weight`, `bias` and `running` cover the `channels`
/// channels.
pub fn batch_norm_relu_gathered(
    tape: &mut Tape,
    storage: &BlockStorage,
    channels: usize,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let [n, _, h, w] = storage.dims();
    let copy = storage.read(0, channels)?;
    let record = records(tape, storage, [weight, bias]);
    let grad = match storage.requires_grad() {
        true => Some(storage.grad_handle()?),
        false => None,
    };
    let input = Input::Gathered(copy.clone(), grad);
    let shape = (n, vec![channels], vec![channels], h, w);
    let affine = (weight, bias, running, opts);
    fused(tape, &[&copy], shape, input, record, affine)
}

/// Whether an op over `storage`'s channels with these parameters records its backward.
fn records(tape: &Tape, storage: &BlockStorage, params: [&Tensor; 2]) -> bool {
    tape.is_recording() && (storage.requires_grad() || tape.needs_grad(&params))
}

/// The shapes of a fused op's input: `(n, channels, widths, h, w)`.
type Shape = (usize, Vec<usize>, Vec<usize>, usize, usize);

/// The op over `parts` (from `input`), recording its backward when `record`.
fn fused(
    tape: &mut Tape,
    parts: &[&Tensor],
    (n, channels, widths, h, w): Shape,
    input: Input,
    record: bool,
    (weight, bias, running, opts): (&Tensor, &Tensor, &RunningStats, BatchNormOptions),
) -> Result<Tensor> {
    opts.validate()?;
    let c: usize = channels.iter().sum();
    check_affine(OP, parts[0], c, weight, bias, running)?;
    let training = tape.is_training();
    check_batch(OP, training, n * h * w)?;
    check_sync(OP, training, parts[0], running)?;
    let k = kernels(parts[0].device())?;
    let batch = running.batch_plan(tape, training);
    let (out, stats) = k.bn_relu_forward(&BnReluForward {
        parts,
        channels: &channels,
        widths: &widths,
        weight,
        bias,
        running,
        opts,
        training,
        update_running: training && tape.phase() == Phase::Forward,
        want_stats: record || batch.keep,
        given: batch.given.as_ref(),
    })?;
    running.keep_batch(&batch, stats.as_ref());
    let stats = match stats {
        Some(stats) if record => stats,
        _ => return Ok(out),
    };
    let part_keys: Vec<GradKey> = match &input {
        Input::Parts(ps) => ps.iter().map(GradKey::of).collect(),
        Input::Prefix(..) | Input::Gathered(..) => Vec::new(),
    };
    let saved = Saved {
        input,
        out: out.clone(),
        stats,
        weight: weight.clone(),
        bias: bias.clone(),
        sync: running.sync().filter(|_| training).map(|s| s.reducer()),
    };
    let (kw, kb) = (GradKey::of(weight), GradKey::of(bias));
    Ok(tape.record_always(OP, out, move |g, grads| {
        check_grad(OP, g, saved.out.shape(), Some(&saved.out))?;
        let backward = |parts: &[&Tensor], want_parts: &[bool], into, into_widths: &[usize]| {
            let args = BnReluBackward {
                g,
                parts,
                channels: &channels,
                widths: &widths,
                into_widths,
                out: &saved.out,
                stats: &saved.stats,
                weight: &saved.weight,
                bias: &saved.bias,
                training,
                eps: opts.eps,
                want_parts,
                want_weight: kw.requires_grad(),
                want_bias: kb.requires_grad(),
                sync: saved.sync.as_deref(),
            };
            k.bn_relu_backward(&args, into)
        };
        let (gw, gb) = match &saved.input {
            Input::Parts(ps) => {
                let want: Vec<bool> = part_keys.iter().map(GradKey::requires_grad).collect();
                // Gradients the parts already have are added into in place.
                let into = part_keys
                    .iter()
                    .map(|key| grads.take_for_accumulation(key))
                    .collect();
                let refs: Vec<&Tensor> = ps.iter().collect();
                let (gparts, gw, gb) = backward(&refs, &want, into, &widths)?;
                for (key, gx) in part_keys.iter().zip(gparts) {
                    if let Some(gx) = gx {
                        grads.accumulate(key, gx)?;
                    }
                }
                (gw, gb)
            }
            Input::Prefix(storage) if storage.requires_grad() => {
                storage.with_grad(|features, grad| {
                    let into = vec![Some(grad)];
                    let (gparts, gw, gb) = backward(&[features], &[true], into, &widths)?;
                    Ok((storage_grad(gparts)?, (gw, gb)))
                })?
            }
            Input::Prefix(storage) => {
                let c = channels[0];
                let (_, gw, gb) = storage.with_prefix(c, |features| {
                    backward(&[features], &[false], vec![None], &widths)
                })?;
                (gw, gb)
            }
            Input::Gathered(copy, Some(handle)) => {
                let wide = [handle.dims()[1]];
                handle.with_grad(|grad| {
                    let (gparts, gw, gb) = backward(&[copy], &[true], vec![Some(grad)], &wide)?;
                    Ok((storage_grad(gparts)?, (gw, gb)))
                })?
            }
            Input::Gathered(copy, _) => {
                let (_, gw, gb) = backward(&[copy], &[false], vec![None], &widths)?;
                (gw, gb)
            }
        };
        for (key, grad) in [(&kw, gw), (&kb, gb)] {
            if let Some(grad) = grad {
                grads.accumulate(key, grad)?;
            }
        }
        Ok(())
    }))
}

/// The storage's gradient, which the one part's backward added into and handed back.
fn storage_grad(mut gparts: Vec<Option<Tensor>>) -> Result<Tensor> {
    gparts
        .pop()
        .flatten()
        .ok_or_else(|| Error::Backward("batch_norm_relu: the storage gradient was lost".into()))
}
