//! [`Labels`]: the class index of every row of a batch, kept on the batch's device, so that the
//! loss, its gradient and the accuracy read them there (one host-to-device copy when made, none
//! per use, and no synchronisation).

use crate::device::cuda::{self, Indices};
use crate::device::Device;
use crate::error::{Error, Result};
use std::fmt;
use std::sync::Arc;

struct Inner {
    values: Vec<usize>,
    device: Device,
    /// The indices as `i32` on a GPU (`None` on the CPU, where kernels read `values`).
    on_device: Option<Indices>,
}

/// Class indices of a batch (one per row of the logits) on a device: on a GPU they are copied
/// there once, as `i32`, when made; on the CPU they stay in host memory. Cheap to clone (shared).
/// The indices are also kept on the host, where the ops check them against the number of
/// classes without reading the device.
#[derive(Clone)]
pub struct Labels(Arc<Inner>);

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Labels({} on {})", self.0.values.len(), self.0.device)
    }
}

impl Labels {
    /// `values` on `device`: a host-to-device copy on a GPU (charged to its memory accounting
    /// while the labels live), none on the CPU. Fails on a GPU when an index exceeds `i32`.
    pub fn new(values: &[usize], device: &Device) -> Result<Self> {
        let on_device = if device.is_cuda() {
            if let Some(&y) = values.iter().find(|&&y| i32::try_from(y).is_err()) {
                return Err(Error::invalid(
                    "Labels::new",
                    format!("label {y} exceeds the GPU's 32-bit indices"),
                ));
            }
            Some(cuda::upload_indices(device, values)?)
        } else {
            None
        };
        Ok(Labels(Arc::new(Inner {
            values: values.to_vec(),
            device: device.clone(),
            on_device,
        })))
    }

    /// The class indices (the host copy).
    pub fn values(&self) -> &[usize] {
        &self.0.values
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.values.len()
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.0.values.is_empty()
    }

    /// The device the labels live on.
    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// The indices on the GPU, for CUDA kernels.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn indices(&self, op: &'static str) -> Result<&Indices> {
        self.0.on_device.as_ref().ok_or_else(|| Error::Device {
            op,
            lhs: self.0.device.to_string(),
            rhs: "a CUDA device".into(),
        })
    }

    /// Fails unless there is one label per row of `rows` rows, each `< classes`, on `device`.
    pub(crate) fn check(
        &self,
        op: &'static str,
        rows: usize,
        classes: usize,
        device: &Device,
    ) -> Result<()> {
        self.0.device.check_same(device, op)?;
        if self.len() != rows {
            return Err(Error::shape(
                op,
                format!("{} labels for {rows} rows of logits", self.len()),
            ));
        }
        if let Some((i, &y)) = self
            .values()
            .iter()
            .enumerate()
            .find(|(_, &y)| y >= classes)
        {
            return Err(Error::invalid(
                op,
                format!("label {y} (row {i}) is out of range for {classes} classes"),
            ));
        }
        Ok(())
    }
}
