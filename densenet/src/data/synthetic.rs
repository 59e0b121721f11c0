//! A small, clearly SYNTHETIC dataset (not CIFAR-10) for runs without data: every class has its
//! own colour and stripe orientation; each image adds a random stripe phase, a random brightness
//! shift and per-pixel Gaussian noise. A small DenseNet learns it within an epoch or two, so a
//! training run without data still shows the loss falling.

use super::Dataset;

/// Colour of class `k` of `classes`: evenly spaced hues at moderate saturation, RGB in `[0, 1]`.
fn class_colour(k: usize, classes: usize) -> [f64; 3] {
    let hue = k as f64 / classes as f64 * 6.0;
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let rgb = match hue as usize {
        0 => [1.0, x, 0.0],
        1 => [x, 1.0, 0.0],
        2 => [0.0, 1.0, x],
        3 => [0.0, x, 1.0],
        4 => [x, 0.0, 1.0],
        _ => [1.0, 0.0, x],
    };
    rgb.map(|v| 0.25 + 0.5 * v)
}

/// `n` images of the synthetic distribution, drawn from random stream `stream`.
fn generate(n: usize, classes: usize, image: usize, seed: u64, stream: u64) -> Dataset {
    let plane = image * image;
    let mut images = Vec::with_capacity(n * 3 * plane);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        // Balanced labels: any prefix (--limit-test) holds every class about equally.
        let label = i % classes;
        let colour = class_colour(label, classes);
        let angle = std::f64::consts::PI * label as f64 / classes as f64;
        let (ky, kx) = (angle.sin(), angle.cos());
        let freq = std::f64::consts::TAU / 8.0; // an 8-pixel stripe period
        let base = (i as u64) << 20;
        let phase = std::f64::consts::TAU * tape::rng::uniform(seed, stream, base);
        let shift = 0.1 * (2.0 * tape::rng::uniform(seed, stream, base + 1) - 1.0);
        for (c, &col) in colour.iter().enumerate() {
            for p in 0..plane {
                let (y, x) = ((p / image) as f64, (p % image) as f64);
                let stripe = (freq * (ky * y + kx * x) + phase).sin();
                let noise = tape::rng::normal(seed, stream, base + 2 + (c * plane + p) as u64);
                let v = col + 0.15 * stripe + shift + 0.08 * noise;
                images.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        labels.push(label as u8);
    }
    Dataset::new(images, labels, [3, image, image], classes)
        .expect("synthetic sizes are consistent")
}

/// A synthetic (train, test) pair of RGB `image` x `image` datasets with `classes` classes, both
/// normalised with the training set's per-channel statistics; reproducible from `seed`, and the
/// test images are distinct draws of the same distribution.
///
/// # Panics
/// If `classes` is not in `1..=256` or `image` is 0.
pub fn synthetic(
    n_train: usize,
    n_test: usize,
    classes: usize,
    image: usize,
    seed: u64,
) -> (Dataset, Dataset) {
    assert!(
        (1..=256).contains(&classes),
        "synthetic: classes must be in 1..=256, got {classes}"
    );
    assert!(image > 0, "synthetic: image size must be at least 1");
    let train = generate(n_train, classes, image, seed, 1);
    let test = generate(n_test, classes, image, seed, 2);
    let (mean, std) = train.channel_stats();
    let norm = |d: Dataset| {
        d.with_normalization(&mean, &std)
            .expect("channel_stats gives finite, positive stds")
    };
    (norm(train), norm(test))
}
