//! [`BlockStorage`]: one buffer holding every feature map of a dense block, the seed paper's
//! "shared memory allocations". Each layer appends its channels; a layer's input is a channel
//! prefix of the buffer, which the fused batch norm + ReLU
//! ([`crate::ops::batch_norm_relu_prefix`]) reads in place as one tensor (no concatenation, one
//! call however many layers came before) and [`BlockStorage::gather`] copies out for ops that
//! need a tensor of their own. The gradient of the block's features is one block-sized buffer
//! of the storage into which every consumer's backward adds its channels in place; an appended
//! tensor's gradient is read back from its slice of that buffer.
//!
//! Backward order does the rest: an append is recorded before every consumer of its channels,
//! so its backward runs after all of theirs have added into the gradient buffer. The append of
//! the first channels runs last of all and frees the gradient buffer.

use crate::backend::{kernel_trait, kernels};
use crate::context::{self, Pass};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex, MutexGuard};

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

const OP: &str = "block_storage";

kernel_trait! {
    /// Device kernels of [`BlockStorage`]: channel ranges of NCHW buffers (`dst`/`src` of the same
    /// batch and image size).
    pub(crate) trait BlockStorageKernels {
        /// `dst[:, c0 .. c0 + k] = src` with `src` `[n, k, h, w]` (packed).
        fn write_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()>;
        /// `dst[:, c0 .. c0 + k] += src` with `src` `[n, k, h, w]` (packed).
        fn add_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()>;
        /// A packed copy of `src[:, c0 .. c0 + k]`.
        fn read_channels(&self, src: &Tensor, c0: usize, k: usize) -> Result<Tensor>;
    }
}

/// `(images, elements per image of the wide buffer, of the packed tensor, offset of the packed
/// run in a wide image)` for channels `c0 .. c0 + k` of `wide` against a packed `[n, k, h, w]`:
/// the runs every kernel of the storage copies or adds; fails unless the shapes agree.
pub(crate) fn channel_runs(
    wide: &Tensor,
    packed: [usize; 4],
    c0: usize,
) -> Result<(usize, usize, usize, usize)> {
    let [n, c, h, w] = wide.dims4(OP)?;
    let [pn, k, ph, pw] = packed;
    if (pn, ph, pw) != (n, h, w) || c0 + k > c {
        return Err(Error::shape(
            OP,
            format!(
                "channels {c0}..{} of {:?} for {packed:?}",
                c0 + k,
                wide.shape()
            ),
        ));
    }
    Ok((n, c * h * w, k * h * w, c0 * h * w))
}

/// The features: locked for every access.
#[derive(Debug)]
struct Features {
    /// `[n, capacity, h, w]`; channels past `filled` hold nothing yet.
    buffer: Tensor,
    filled: usize,
    /// Whether an appended tensor wanted a gradient.
    requires_grad: bool,
}

/// The gradient of the features (same shape), made by the first backward that adds into it.
/// Kept apart from the features so that what only touches the gradient (an append's or a
/// gather's backward) does not keep the features alive.
type Grad = Arc<Mutex<Option<Tensor>>>;

/// A dense block's feature maps in one `[n, capacity, h, w]` buffer, filled by appending
/// channels (see the module docs). Clones share the storage.
#[derive(Clone, Debug)]
pub struct BlockStorage {
    features: Arc<Mutex<Features>>,
    grad: Grad,
    dims: [usize; 4],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f(gradient)` on the gradient `grad` of a storage (made as zeros of `like` on first use),
/// which `f` hands back to be kept.
fn update_grad<R>(
    grad: &Grad,
    like: (&[usize], DType, &Device),
    f: impl FnOnce(Tensor) -> Result<(Tensor, R)>,
) -> Result<R> {
    let mut slot = lock(grad);
    let t = match slot.take() {
        Some(t) => t,
        None => {
            let _role = context::enter_op(OP, Pass::Backward);
            Tensor::zeros_large(like.0, like.1, like.2)?
        }
    };
    let (t, r) = f(t)?;
    *slot = Some(t);
    Ok(r)
}

impl BlockStorage {
    /// Empty storage for `capacity` channels of `n` images of `h x w`, charged to `device` at
    /// once.
    pub fn new([n, capacity, h, w]: [usize; 4], dtype: DType, device: &Device) -> Result<Self> {
        let _role = context::enter_op(OP, Pass::Forward);
        // Every channel is appended (written) before anything reads it.
        let buffer = Tensor::unfilled_large(&[n, capacity, h, w], dtype, device)?;
        Ok(BlockStorage {
            features: Arc::new(Mutex::new(Features {
                buffer,
                filled: 0,
                requires_grad: false,
            })),
            grad: Arc::new(Mutex::new(None)),
            dims: [n, capacity, h, w],
        })
    }

    /// `[n, capacity, h, w]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Channels appended so far.
    pub fn channels(&self) -> usize {
        lock(&self.features).filled
    }

    /// Whether an appended tensor wanted a gradient (so its consumers' backward has one to
    /// make).
    pub fn requires_grad(&self) -> bool {
        lock(&self.features).requires_grad
    }

    /// Copies `x` (`[n, k, h, w]`) into the next `k` channels and returns the first of them.
    /// When `x` wants a gradient, backward reads it from those channels of the storage's
    /// gradient.
    pub fn append(&self, tape: &mut Tape, x: &Tensor) -> Result<usize> {
        let _profile = tape.profile_op("block_append");
        let c0 = self.write_next(x.dims4(OP)?, x, |buffer, c0| {
            kernels(x.device())?.write_channels(buffer, x, c0)
        })?;
        self.record_appended(tape, x, c0);
        Ok(c0)
    }

    /// Has `write(buffer, c0)` fill the next `k` channels of the buffer, `[n, k, h, w]` =
    /// `dims` (checked against the storage; `like` gives the dtype and device), and returns the
    /// first of them: for a kernel that writes its output straight into the storage (its backward
    /// reads the channels' gradient itself).
    pub(crate) fn write_next(
        &self,
        [xn, k, xh, xw]: [usize; 4],
        like: &Tensor,
        write: impl FnOnce(&mut Tensor, usize) -> Result<()>,
    ) -> Result<usize> {
        let [n, capacity, h, w] = self.dims;
        let mut st = lock(&self.features);
        st.buffer.check_compatible(like, OP)?;
        let c0 = st.filled;
        if (xn, xh, xw) != (n, h, w) || c0 + k > capacity {
            return Err(Error::shape(
                OP,
                format!(
                    "cannot append [{xn}, {k}, {xh}, {xw}] to storage [{n}, {capacity}, {h}, \
                     {w}] holding {c0} channels"
                ),
            ));
        }
        write(&mut st.buffer, c0)?;
        st.filled = c0 + k;
        Ok(c0)
    }

    /// Records, when `x` wants a gradient, that `x` was appended to channels `c0 ..`: backward
    /// reads its gradient from those channels of the storage's gradient.
    fn record_appended(&self, tape: &mut Tape, x: &Tensor, c0: usize) {
        if !tape.needs_grad(&[x]) {
            return;
        }
        lock(&self.features).requires_grad = true;
        let k = x.shape().get(1).copied().unwrap_or(0);
        let (grad, key) = (self.grad.clone(), GradKey::of(x));
        tape.record_effect("block_append", move |grads| {
            let mut slot = lock(&grad);
            let g = match slot.as_ref() {
                Some(g) => Some(kernels(g.device())?.read_channels(g, c0, k)?),
                None => None,
            };
            if c0 == 0 {
                // The first channels' append is the block's last backward step.
                *slot = None;
            }
            drop(slot);
            match g {
                Some(g) => grads.accumulate(&key, g),
                None => Ok(()),
            }
        });
    }

    /// A packed copy of the first `c` channels (the concatenation of everything appended up to
    /// them), for ops that need a tensor of their own; its gradient is added into the storage's.
    pub fn gather(&self, tape: &mut Tape, c: usize) -> Result<Tensor> {
        let _profile = tape.profile_op("block_gather");
        let st = lock(&self.features);
        check_prefix(&st, c)?;
        let k = kernels(st.buffer.device())?;
        let out = k.read_channels(&st.buffer, 0, c)?;
        if !(tape.is_recording() && st.requires_grad) {
            return Ok(out);
        }
        let (dtype, device) = (st.buffer.dtype(), st.buffer.device().clone());
        drop(st);
        let (grad, dims) = (self.grad.clone(), self.dims);
        Ok(tape.record_always("block_gather", out, move |g, _grads| {
            update_grad(&grad, (&dims, dtype, &device), |mut t| {
                k.add_channels(&mut t, g, 0)?;
                Ok((t, ()))
            })
        }))
    }

    /// A packed copy of channels `c0 .. c0 + k`, outside any tape (the output a checkpointed
    /// segment appended, handed back to its recompute).
    pub fn read(&self, c0: usize, k: usize) -> Result<Tensor> {
        let st = lock(&self.features);
        check_prefix(&st, c0 + k)?;
        kernels(st.buffer.device())?.read_channels(&st.buffer, c0, k)
    }

    /// `f(features)` on the buffer, after checking that its first `c` channels are filled.
    pub(crate) fn with_prefix<R>(
        &self,
        c: usize,
        f: impl FnOnce(&Tensor) -> Result<R>,
    ) -> Result<R> {
        let st = lock(&self.features);
        check_prefix(&st, c)?;
        f(&st.buffer)
    }

    /// Records, when `x` wants a gradient, that `x` stands for channels an op wrote into the
    /// storage and whose backward reads their gradient from the storage's in place
    /// ([`crate::ops::conv2d_into_storage`]), as a checkpointed segment's output: backward gives
    /// `x` a stand-in gradient (no bytes), so that the segment's recompute, and with it that
    /// op's backward, runs.
    pub fn record_written(&self, tape: &mut Tape, x: &Tensor) {
        if !tape.needs_grad(&[x]) {
            return;
        }
        lock(&self.features).requires_grad = true;
        let (key, shape, dtype, device) = (
            GradKey::of(x),
            x.shape().to_vec(),
            x.dtype(),
            x.device().clone(),
        );
        tape.record_effect("block_written", move |grads| {
            grads.accumulate(&key, Tensor::stand_in(&shape, dtype, &device))
        });
    }

    /// A handle on the storage's gradient for a backward that reads it in place; marks the
    /// storage as wanting a gradient.
    pub(crate) fn grad_reader(&self) -> Result<GradHandle> {
        lock(&self.features).requires_grad = true;
        self.grad_handle()
    }

    /// A handle on the storage's gradient alone (it does not keep the features alive).
    pub(crate) fn grad_handle(&self) -> Result<GradHandle> {
        let st = lock(&self.features);
        Ok(GradHandle {
            grad: self.grad.clone(),
            dims: self.dims,
            dtype: st.buffer.dtype(),
            device: st.buffer.device().clone(),
        })
    }

    /// `f(features, gradient)`: the gradient made (zeros) on first use, handed to `f` to add
    /// into and kept.
    pub(crate) fn with_grad<R>(
        &self,
        f: impl FnOnce(&Tensor, Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        let st = lock(&self.features);
        let like = (&self.dims[..], st.buffer.dtype(), st.buffer.device());
        update_grad(&self.grad, like, |grad| f(&st.buffer, grad))
    }
}

/// A block storage's gradient without its features ([`BlockStorage::grad_handle`]): for a
/// backward that adds into the gradient but reads no feature in place.
#[derive(Clone)]
pub(crate) struct GradHandle {
    grad: Grad,
    dims: [usize; 4],
    dtype: DType,
    device: Device,
}

impl GradHandle {
    /// `[n, capacity, h, w]` of the storage.
    pub(crate) fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// `f(gradient)`: the gradient made (zeros) on first use, handed to `f` to add into and
    /// kept.
    pub(crate) fn with_grad<R>(&self, f: impl FnOnce(Tensor) -> Result<(Tensor, R)>) -> Result<R> {
        update_grad(&self.grad, (&self.dims, self.dtype, &self.device), f)
    }

    /// `f(gradient)` if a backward has made the gradient (`None` otherwise: nothing to read).
    pub(crate) fn with_existing<R>(
        &self,
        f: impl FnOnce(&Tensor) -> Result<R>,
    ) -> Result<Option<R>> {
        lock(&self.grad).as_ref().map(f).transpose()
    }
}

/// Fails unless `c` is a non-empty prefix of the filled channels.
fn check_prefix(st: &Features, c: usize) -> Result<()> {
    if c == 0 || c > st.filled {
        return Err(Error::invalid(
            OP,
            format!("channels 0..{c} asked of a storage holding {}", st.filled),
        ));
    }
    Ok(())
}
