//! [`Buf`]: the host buffers collectives move (one per dtype the engine has), and [`Pending`]:
//! the handle of a collective started on the communication thread.

use crate::error::{DistError, Result};
use std::sync::mpsc::Receiver;
use tape::{DType, Device, Tensor};

/// Host values of one dtype, as collectives send and receive them.
#[derive(Clone, Debug, PartialEq)]
pub enum Buf {
    /// `f32` values.
    F32(Vec<f32>),
    /// `f64` values.
    F64(Vec<f64>),
}

impl Buf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Buf::F32(v) => 4 * v.len(),
            Buf::F64(v) => 8 * v.len(),
        }
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::F64(_) => DType::F64,
        }
    }

    /// `len` zeros of `dtype` (`F32` or `F64`: gradients are reduced in their master dtype).
    pub fn zeros(dtype: DType, len: usize) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Buf::F32(vec![0.0; len]),
            DType::F64 => Buf::F64(vec![0.0; len]),
            DType::BF16 | DType::F16 => return Err(unreduced(dtype)),
        })
    }

    /// The elements of `t` (read back from its device), in its dtype (`F32` or `F64`).
    pub fn of(t: &Tensor) -> Result<Self> {
        Ok(match t.dtype() {
            DType::F32 => Buf::F32(t.to_vec::<f32>()?),
            DType::F64 => Buf::F64(t.to_vec::<f64>()?),
            dtype @ (DType::BF16 | DType::F16) => return Err(unreduced(dtype)),
        })
    }

    /// Copies the elements of `t` (its dtype must be this buffer's) into `self[at..]`.
    pub fn write_at(&mut self, at: usize, t: &Tensor) -> Result<()> {
        let n = t.numel();
        if at + n > self.len() || t.dtype() != self.dtype() {
            return Err(DistError::Invalid {
                op: "Buf::write_at",
                msg: format!(
                    "{n} {:?} values at {at} into {} {:?} values",
                    t.dtype(),
                    self.len(),
                    self.dtype()
                ),
            });
        }
        match self {
            Buf::F32(v) => copy_into(&mut v[at..at + n], t),
            Buf::F64(v) => copy_into(&mut v[at..at + n], t),
        }
    }

    /// The elements `at..at + numel` as a tensor of `shape` on `device`.
    pub fn tensor(&self, at: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if at + n > self.len() {
            return Err(DistError::Invalid {
                op: "Buf::tensor",
                msg: format!("{n} values at {at} of {}", self.len()),
            });
        }
        Ok(match self {
            Buf::F32(v) => Tensor::from_vec(v[at..at + n].to_vec(), shape, device)?,
            Buf::F64(v) => Tensor::from_vec(v[at..at + n].to_vec(), shape, device)?,
        })
    }

    /// Divides every element by `n` (a sum into a mean).
    pub fn divide(&mut self, n: usize) {
        match self {
            Buf::F32(v) => v.iter_mut().for_each(|x| *x /= n as f32),
            Buf::F64(v) => v.iter_mut().for_each(|x| *x /= n as f64),
        }
    }
}

/// Copies `t`'s elements (of `dst`'s element type) into `dst`: in place from host memory, or
/// read back from a device.
fn copy_into<T: tape::Elem>(dst: &mut [T], t: &Tensor) -> Result<()> {
    if t.device().is_cuda() {
        dst.copy_from_slice(&t.to_vec::<T>()?);
    } else {
        dst.copy_from_slice(&t.as_slice::<T>()?[..dst.len()]);
    }
    Ok(())
}

/// A collective started on the communication thread: [`Pending::wait`] blocks until it is
/// done and gives its result.
pub struct Pending<T>(Inner<T>);

enum Inner<T> {
    Done(Result<T>),
    Running {
        rx: Receiver<(Result<T>, f64)>,
        rank: usize,
    },
}

impl<T> Pending<T> {
    /// A collective already done (the single-process world).
    pub fn done(result: Result<T>) -> Self {
        Pending(Inner::Done(result))
    }

    /// A collective whose result, with the seconds it ran, `rx` will receive (from the
    /// communication thread of `rank`).
    pub fn running(rx: Receiver<(Result<T>, f64)>, rank: usize) -> Self {
        Pending(Inner::Running { rx, rank })
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<T> {
        self.wait_timed().map(|(t, _)| t)
    }

    /// Waits for the result and the seconds the collective itself ran (0 when nothing was
    /// communicated).
    pub fn wait_timed(self) -> Result<(T, f64)> {
        match self.0 {
            Inner::Done(r) => r.map(|t| (t, 0.0)),
            Inner::Running { rx, rank } => {
                let (result, secs) = rx.recv().map_err(|_| DistError::Stopped { rank })?;
                result.map(|t| (t, secs))
            }
        }
    }
}

/// The error for a 16-bit buffer: parameters (and so their gradients) stay in `f32` under
/// mixed precision, and the reduction runs in their dtype.
fn unreduced(dtype: DType) -> DistError {
    DistError::Invalid {
        op: "Buf",
        msg: format!("{dtype:?} values are not reduced: keep parameters in F32 (mixed precision keeps master weights in F32)"),
    }
}
