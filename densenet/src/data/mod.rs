//! Datasets for training and evaluation.
//!
//! - [`Dataset`]: labelled 8-bit images stored channel-planar (`C x H x W` per image, exactly the
//!   CIFAR-10 byte layout), with per-channel normalisation statistics; [`Dataset::batch`] and
//!   [`Dataset::augmented_batch`] turn a list of indices into an `[n, c, h, w]` tensor plus labels.
//! - [`cifar`]: the CIFAR-10 binary format ([`load_cifar10`]).
//! - [`augment`]: the seed's augmentation (4-pixel zero-padded random crop, random horizontal
//!   flip), reproducible from a seed.
//! - [`synthetic`](mod@synthetic): a small, clearly synthetic, learnable dataset for runs without
//!   data.
//! - [`epoch_order`] / [`epoch_batches`]: a shuffled, seeded sample order per epoch.

pub mod augment;
pub mod cifar;
pub mod synthetic;

pub use augment::{Augment, CropFlip};
pub use cifar::{load_cifar10, load_cifar10_files, parse_cifar10, CIFAR10_MEAN, CIFAR10_STD};
pub use synthetic::synthetic;

use crate::error::{DenseNetError, Result};
use tape::dtype::{bf16, f16};
use tape::{DType, Device, Scalar, Tensor};

/// Labelled 8-bit images, each stored channel-planar (`C x H x W`, row-major planes), plus the
/// per-channel mean and standard deviation (of pixel values scaled to `[0, 1]`) used to
/// normalise batches.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    channels: usize,
    height: usize,
    width: usize,
    num_classes: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// A batch ready for the model.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Normalised images `[n, c, h, w]`.
    pub images: Tensor,
    /// Class index of each image.
    pub labels: Vec<usize>,
}

impl Dataset {
    /// A dataset from raw channel-planar images (`labels.len() * channels * height * width`
    /// bytes) and labels in `0..num_classes`, normalised with mean 0.5 and std 0.5 per channel
    /// until [`Dataset::with_normalization`] says otherwise. Fails on inconsistent sizes or a
    /// label out of range.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        [channels, height, width]: [usize; 3],
        num_classes: usize,
    ) -> Result<Self> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(DenseNetError::Data(format!(
                "image shape {channels}x{height}x{width} has a zero dimension"
            )));
        }
        if num_classes == 0 || num_classes > 256 {
            return Err(DenseNetError::Data(format!(
                "num_classes must be in 1..=256 (labels are bytes), got {num_classes}"
            )));
        }
        let per_image = channels * height * width;
        if images.len() != labels.len() * per_image {
            return Err(DenseNetError::Data(format!(
                "{} image bytes for {} labels of {channels}x{height}x{width} images (expected {})",
                images.len(),
                labels.len(),
                labels.len() * per_image
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DenseNetError::Data(format!(
                "image {i} has label {l}, expected 0..={}",
                num_classes - 1
            )));
        }
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
            num_classes,
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
        })
    }

    /// The same data normalised with these per-channel statistics (of pixels in `[0, 1]`); fails
    /// unless there is one positive finite std and one finite mean per channel.
    pub fn with_normalization(mut self, mean: &[f32], std: &[f32]) -> Result<Self> {
        if mean.len() != self.channels || std.len() != self.channels {
            return Err(DenseNetError::Data(format!(
                "normalisation needs {} means and stds, got {} and {}",
                self.channels,
                mean.len(),
                std.len()
            )));
        }
        if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DenseNetError::Data(format!(
                "normalisation mean {mean:?} / std {std:?}: means must be finite, stds finite and > 0"
            )));
        }
        self.mean = mean.to_vec();
        self.std = std.to_vec();
        Ok(self)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes (labels are in `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// `[channels, height, width]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Bytes of one image.
    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The raw bytes of image `i` (channel-planar); panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// All raw image bytes, image after image.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// Every label.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Per-channel normalisation mean (pixels scaled to `[0, 1]`).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-channel normalisation standard deviation (pixels scaled to `[0, 1]`).
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Keeps only the first `n` images (all of them if `n >= len()`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
    }

    /// Per-channel mean and standard deviation of the pixels (scaled to `[0, 1]`) of every image;
    /// a std of 0 is reported as 1 so it can normalise.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.images.chunks_exact(self.image_len().max(1)) {
            for (c, p) in img.chunks_exact(plane).enumerate() {
                for &v in p {
                    let v = v as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let s = (q / count - m * m).max(0.0).sqrt();
                if s > 0.0 {
                    s as f32
                } else {
                    1.0
                }
            })
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// The images at `indices` as a normalised `[n, c, h, w]` tensor of `dtype` on `device`,
    /// plus their labels. Fails on an empty list or an index out of range.
    pub fn batch(&self, indices: &[usize], dtype: DType, device: &Device) -> Result<Batch> {
        self.make_batch(indices, None, dtype, device)
    }

    /// Like [`Dataset::batch`], with each image cropped and flipped as `augment` draws for
    /// (`epoch`, dataset index): the same seed, epoch and index always give the same image,
    /// whatever the batch order.
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        augment: &Augment,
        epoch: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Batch> {
        self.make_batch(indices, Some((augment, epoch)), dtype, device)
    }

    fn make_batch(
        &self,
        indices: &[usize],
        augment: Option<(&Augment, u64)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Batch> {
        if indices.is_empty() {
            return Err(DenseNetError::Data(
                "a batch needs at least one image".into(),
            ));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DenseNetError::Data(format!(
                "image index {bad} is out of range for a dataset of {} images",
                self.len()
            )));
        }
        let shape = [indices.len(), self.channels, self.height, self.width];
        let images = match dtype {
            DType::F32 => {
                Tensor::from_vec(self.normalized::<f32>(indices, augment), &shape, device)?
            }
            DType::F64 => {
                Tensor::from_vec(self.normalized::<f64>(indices, augment), &shape, device)?
            }
            DType::BF16 => {
                Tensor::from_vec(self.normalized::<bf16>(indices, augment), &shape, device)?
            }
            DType::F16 => {
                Tensor::from_vec(self.normalized::<f16>(indices, augment), &shape, device)?
            }
        };
        let labels = indices.iter().map(|&i| self.labels[i] as usize).collect();
        Ok(Batch { images, labels })
    }

    /// Normalised values of the images at `indices` (already range-checked).
    fn normalized<T: Scalar>(&self, indices: &[usize], augment: Option<(&Augment, u64)>) -> Vec<T> {
        let n = self.image_len();
        let plane = self.height * self.width;
        // A lookup table per channel: 256 values, so each pixel costs one load.
        let lut: Vec<T> = (0..self.channels)
            .flat_map(|c| {
                let (m, s) = (self.mean[c] as f64, self.std[c] as f64);
                (0..256).map(move |v| T::of((v as f64 / 255.0 - m) / s))
            })
            .collect();
        let mut out = Vec::with_capacity(indices.len() * n);
        let mut scratch = vec![0u8; n];
        for &i in indices {
            let img = match augment {
                Some((aug, epoch)) => {
                    let cf = aug.draw(epoch, i as u64);
                    cf.apply(self.image(i), self.image_shape(), &mut scratch);
                    &scratch[..]
                }
                None => self.image(i),
            };
            for (c, p) in img.chunks_exact(plane).enumerate() {
                let table = &lut[c * 256..(c + 1) * 256];
                out.extend(p.iter().map(|&v| table[v as usize]));
            }
        }
        out
    }
}

/// A random permutation of `0..n` for `epoch`, reproducible from `seed` (Fisher-Yates on
/// [`tape::rng::uniform`]).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let stream = epoch ^ 0x5348_5546_464C_4500; // "SHUFFLE": keeps it apart from other streams
    for i in (1..n).rev() {
        let j = ((tape::rng::uniform(seed, stream, i as u64) * (i + 1) as f64) as usize).min(i);
        order.swap(i, j);
    }
    order
}

/// The shuffled sample order of [`epoch_order`] cut into batches of `batch` indices (the last
/// one may be shorter, as PyTorch's `DataLoader` without `drop_last`). A `batch` of 0 counts as 1.
pub fn epoch_batches(n: usize, batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    epoch_order(n, seed, epoch)
        .chunks(batch.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}
