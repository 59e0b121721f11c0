//! [`Tensor`]: a run-time shaped, run-time typed array on a [`Device`]. Clones are cheap and share
//! the buffer; every tensor has a unique [`TensorId`] by which the tape keys gradients.

use crate::device::storage::Buffer;
use crate::device::Device;
use crate::dtype::{CpuData, DType, Scalar};
use crate::error::{Error, Result};
use crate::rng;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identifies a tensor for gradient bookkeeping. Reshapes and recomputations get new ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TensorId {
    /// A fresh, never used id.
    pub fn fresh() -> Self {
        TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// An n-dimensional array (images are NCHW). Immutable once made, except through the engine's
/// copy-on-write updates (optimizers), which keep the id.
#[derive(Clone)]
pub struct Tensor {
    id: TensorId,
    shape: Vec<usize>,
    buf: Arc<Buffer>,
    requires_grad: bool,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, {:?}, {}{})",
            self.id,
            self.shape,
            self.dtype(),
            self.device(),
            if self.requires_grad { ", grad" } else { "" }
        )
    }
}

pub(crate) fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_data(data: CpuData, shape: &[usize], device: &Device) -> Result<Self> {
        if data.len() != numel_of(shape) {
            return Err(Error::shape(
                "tensor",
                format!("{} elements do not fill shape {:?}", data.len(), shape),
            ));
        }
        Ok(Self::from_buffer(Buffer::new(device, data)?, shape))
    }

    /// A new tensor (fresh id, no gradient) over `buf`, which holds at least `shape`'s elements.
    pub(crate) fn from_buffer(buf: Buffer, shape: &[usize]) -> Self {
        buf.device.memory().note_shape(buf.id, shape);
        Tensor {
            id: TensorId::fresh(),
            shape: shape.to_vec(),
            buf: Arc::new(buf),
            requires_grad: false,
        }
    }

    /// The buffer (for device kernels).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn buffer(&self) -> &Buffer {
        &self.buf
    }

    /// The buffer for writing in place, copied first if it is shared (the id stays).
    pub(crate) fn buffer_mut(&mut self) -> Result<&mut Buffer> {
        if Arc::get_mut(&mut self.buf).is_none() {
            self.buf = Arc::new(self.buf.try_clone()?);
        }
        Arc::get_mut(&mut self.buf).ok_or_else(|| {
            Error::Backward("a buffer made unique was shared again (engine bug)".into())
        })
    }

    /// A tensor of `shape` on a meta device: charged, with no values (what a meta kernel
    /// returns).
    pub(crate) fn meta(shape: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::from_buffer(
            Buffer::meta(device, dtype, numel_of(shape))?,
            shape,
        ))
    }

    /// A tensor from a vector of elements; `data.len()` must equal the shape's element count.
    pub fn from_vec<T: Scalar>(data: Vec<T>, shape: &[usize], device: &Device) -> Result<Self> {
        Self::from_data(T::wrap(data), shape, device)
    }

    /// A tensor of the given dtype from `f64` values (rounded to nearest for the narrower ones).
    pub fn from_f64(data: &[f64], shape: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        dispatch_scalar!(dtype, T => Self::from_vec(data.iter().map(|&v| T::of(v)).collect::<Vec<T>>(), shape, device))
    }

    /// Standard normal values, reproducible from `seed`.
    pub fn randn(shape: &[usize], dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        if device.is_meta() {
            return Self::meta(shape, dtype, device);
        }
        let v: Vec<f64> = (0..numel_of(shape) as u64)
            .map(|i| rng::normal(seed, 0, i))
            .collect();
        Self::from_f64(&v, shape, dtype, device)
    }

    /// Uniform values in [lo, hi), reproducible from `seed`.
    pub fn rand_uniform(
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        if device.is_meta() {
            return Self::meta(shape, dtype, device);
        }
        let v: Vec<f64> = (0..numel_of(shape) as u64)
            .map(|i| lo + (hi - lo) * rng::uniform(seed, 1, i))
            .collect();
        Self::from_f64(&v, shape, dtype, device)
    }

    /// The buffer's id (shared by views and clones, new after a copy-on-write): what names a
    /// buffer in a [`crate::memory::MemoryReport`].
    pub fn buffer_id(&self) -> u64 {
        self.buf.id
    }

    /// The tensor's id.
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel_of(&self.shape)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.buf.data.dtype()
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &Device {
        &self.buf.device
    }

    /// Bytes of the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }

    /// Whether the tape computes a gradient for this tensor.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// Marks this tensor (a leaf such as a parameter or an input) as needing a gradient.
    pub fn with_requires_grad(mut self, requires_grad: bool) -> Self {
        self.requires_grad = requires_grad;
        self
    }

    /// A tensor of `shape`, `dtype` and `device` without values, which takes no memory: the
    /// output of an op declared known in advance ([`crate::Tape::set_known_output`]) when that
    /// op's backward reads nothing of its output (conv2d, linear, dropout), so that a recompute
    /// need not bring the first pass's values back. Every read of its values fails with
    /// [`crate::Error::NoValues`]; kernels given it as an input fail the same way.
    pub fn stand_in(shape: &[usize], dtype: DType, device: &Device) -> Tensor {
        let len = shape.iter().product();
        Tensor {
            id: TensorId::fresh(),
            shape: shape.to_vec(),
            buf: Arc::new(Buffer::stand_in(device, dtype, len)),
            requires_grad: false,
        }
    }

    /// Whether the tensor holds values: false on a meta device and for a
    /// [`Tensor::stand_in`].
    pub fn has_values(&self) -> bool {
        self.buf.has_values()
    }

    /// The same data as a new leaf: new id, no gradient, shared buffer.
    pub fn detach(&self) -> Self {
        Tensor {
            id: TensorId::fresh(),
            shape: self.shape.clone(),
            buf: self.buf.clone(),
            requires_grad: false,
        }
    }

    /// Whether two tensors share one buffer.
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The same buffer under another shape (same element count), with a new id; used by the
    /// `reshape` op, which also records the gradient's way back.
    pub(crate) fn view_as(&self, shape: &[usize]) -> Result<Self> {
        if numel_of(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {:?}", self.shape, shape),
            ));
        }
        Ok(Tensor {
            id: TensorId::fresh(),
            shape: shape.to_vec(),
            buf: self.buf.clone(),
            requires_grad: false,
        })
    }

    /// The dimensions of a rank-4 (NCHW) tensor.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::shape(
                op,
                format!("expected an NCHW tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// The error of host access to a tensor that lives on a GPU or a meta device.
    fn not_on_host(&self, op: &'static str) -> Error {
        if !self.has_values() {
            return Error::NoValues {
                op,
                device: self.device().to_string(),
            };
        }
        Error::invalid(
            op,
            format!(
                "the tensor lives on {}, not in host memory: copy it with to_vec, to_f64_vec or \
                 to_device(&Device::cpu()) first",
                self.device()
            ),
        )
    }

    /// The elements, if the dtype is `T` and the tensor is in host memory (a CUDA tensor is an
    /// [`Error::InvalidArgument`]: use [`Tensor::to_vec`] or [`Tensor::to_device`]).
    pub fn as_slice<T: Scalar>(&self) -> Result<&[T]> {
        let data = self
            .buf
            .data
            .cpu()
            .ok_or_else(|| self.not_on_host("as_slice"))?;
        T::slice(data).ok_or(Error::DType {
            op: "as_slice",
            expected: T::DTYPE,
            got: self.dtype(),
        })
    }

    /// Mutable elements, copying the buffer first if it is shared (the id stays). Host
    /// tensors only.
    pub(crate) fn make_mut<T: Scalar>(&mut self) -> Result<&mut [T]> {
        if !matches!(self.device().kind(), crate::DeviceKind::Cpu) {
            return Err(self.not_on_host("make_mut"));
        }
        let got = self.dtype();
        let data = self
            .buffer_mut()?
            .data
            .cpu_mut()
            .ok_or(Error::InvalidArgument {
                op: "make_mut",
                msg: "the tensor is not in host memory".into(),
            })?;
        T::slice_mut(data).ok_or(Error::DType {
            op: "make_mut",
            expected: T::DTYPE,
            got,
        })
    }

    /// A copy of the elements, if the dtype is `T` (from the GPU for a CUDA tensor).
    pub fn to_vec<T: Scalar>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DType {
                op: "to_vec",
                expected: T::DTYPE,
                got: self.dtype(),
            });
        }
        self.read_host(|d| T::slice(d).unwrap_or_default()[..self.numel()].to_vec())
    }

    /// `f` of the elements in host memory: the buffer itself on the CPU, a device-to-host copy
    /// of a GPU buffer (which may hold more elements than the shape: read `numel()` of them).
    fn read_host<R>(&self, f: impl FnOnce(&CpuData) -> R) -> Result<R> {
        match self.buf.host_read() {
            Some(d) => Ok(f(d)),
            None => Ok(f(&self.buf.to_host()?)),
        }
    }

    /// The elements converted to `f64`, whatever the dtype and device.
    ///
    /// For a CUDA tensor this is a device-to-host copy, which can only fail if the GPU itself
    /// failed (a sticky CUDA error from an earlier kernel): then every element is NaN, so the
    /// failure cannot pass unnoticed, and the next op reports the error. Use
    /// [`Tensor::try_to_f64_vec`] to get the error itself.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.try_to_f64_vec()
            .unwrap_or_else(|_| vec![f64::NAN; self.numel()])
    }

    /// The elements converted to `f64`, whatever the dtype and device; a failed copy from a GPU
    /// is an error.
    pub fn try_to_f64_vec(&self) -> Result<Vec<f64>> {
        self.read_host(|d| d.to_f64(self.numel()))
    }

    /// A copy in a buffer of its own on the same device (charged; on a meta device only
    /// charged), as a new leaf: new id, no gradient, same shape, dtype and values.
    pub fn deep_copy(&self) -> Result<Tensor> {
        Ok(Self::from_buffer(self.buf.try_clone()?, &self.shape))
    }

    /// A copy on `device` (host to GPU, GPU to host, or between devices), as a new leaf: new
    /// id, no gradient, same shape and dtype.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let mut data = self.buf.to_host()?;
        data.truncate(self.numel());
        Self::from_data(data, &self.shape, device)
    }

    /// Overwrites the elements in place with `values` (converted to this dtype; as many as the
    /// tensor has), copying a shared buffer first; the id stays. Any device (a meta device
    /// keeps no values: only the copy is charged).
    pub(crate) fn overwrite_from_f64(&mut self, values: &[f64]) -> Result<()> {
        if self.device().is_meta() {
            return self.buffer_mut().map(|_| ());
        }
        if self.device().is_cuda() {
            let n = self.numel().min(values.len());
            let device = self.device().clone();
            return crate::device::cuda::overwrite(&device, self.buffer_mut()?, &values[..n]);
        }
        dispatch_scalar!(self.dtype(), T => {
            let d = self.make_mut::<T>()?;
            for (o, &v) in d.iter_mut().zip(values) {
                *o = T::of(v);
            }
        });
        Ok(())
    }

    /// The value of a one-element tensor.
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "scalar",
                format!("expected one element, got shape {:?}", self.shape),
            ));
        }
        Ok(self.try_to_f64_vec()?[0])
    }

    /// A copy in another dtype (a new leaf).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if self.device().is_meta() {
            return Self::meta(&self.shape, dtype, self.device());
        }
        Self::from_f64(&self.try_to_f64_vec()?, &self.shape, dtype, self.device())
    }

    /// Fails with a shape error unless `self` and `other` have equal shapes.
    pub fn check_same_shape(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape(
                op,
                format!("shapes differ: {:?} vs {:?}", self.shape, other.shape),
            ));
        }
        Ok(())
    }

    /// Fails unless `self` and `other` share dtype and device.
    pub fn check_compatible(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DType {
                op,
                expected: self.dtype(),
                got: other.dtype(),
            });
        }
        self.device().check_same(other.device(), op)
    }
}

impl crate::memory::HasBuffer for Tensor {
    fn buffer_id(&self) -> u64 {
        Tensor::buffer_id(self)
    }
}
