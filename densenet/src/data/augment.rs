//! The seed's training augmentation: `RandomCrop(32, padding=4)` (a crop of the image's size
//! from the image zero-padded by `pad` pixels on every side) then `RandomHorizontalFlip()`.
//! Padding is black in pixel space, before normalisation, as torchvision pads the PIL image.
//! Draws are counter-based ([`tape::rng::uniform`]): they depend only on (seed, epoch, image
//! index), never on batch order or threads.

/// The augmentation recipe and its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on every side before the crop (4 in the seed); 0 disables cropping.
    pub pad: usize,
    /// Whether to flip horizontally with probability 1/2.
    pub flip: bool,
    /// Seed of the draws.
    pub seed: u64,
}

impl Augment {
    /// The seed's recipe: 4-pixel padded random crop and random horizontal flip.
    pub fn cifar(seed: u64) -> Self {
        Augment {
            pad: 4,
            flip: true,
            seed,
        }
    }

    /// The crop offset and flip for image `index` in `epoch`.
    pub fn draw(&self, epoch: u64, index: u64) -> CropFlip {
        let stream = epoch ^ 0x4155_474D_454E_5400; // "AUGMENT"
        let offset = |k: u64| {
            let span = 2 * self.pad + 1;
            let r = ((tape::rng::uniform(self.seed, stream, 3 * index + k) * span as f64) as usize)
                .min(span - 1);
            r as isize - self.pad as isize
        };
        CropFlip {
            dy: offset(0),
            dx: offset(1),
            flip: self.flip && tape::rng::uniform(self.seed, stream, 3 * index + 2) < 0.5,
        }
    }
}

/// One image's crop and flip. The output pixel `(y, x)` is the input pixel
/// `(y + dy, x' + dx)` with `x' = w - 1 - x` if flipped (else `x`), or 0 when that falls outside
/// the image: `(dy, dx) = (top - pad, left - pad)` for a crop at `(top, left)` of the padded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CropFlip {
    /// Vertical shift of the crop window, in `[-pad, pad]`.
    pub dy: isize,
    /// Horizontal shift of the crop window, in `[-pad, pad]`.
    pub dx: isize,
    /// Mirror the crop left to right.
    pub flip: bool,
}

impl CropFlip {
    /// Writes the cropped (and flipped) copy of the channel-planar image `src` of shape
    /// `[c, h, w]` into `dst` (same size). Panics if either buffer is not `c * h * w` bytes.
    pub fn apply(&self, src: &[u8], [c, h, w]: [usize; 3], dst: &mut [u8]) {
        assert_eq!(src.len(), c * h * w, "source is not a {c}x{h}x{w} image");
        assert_eq!(
            dst.len(),
            c * h * w,
            "destination is not a {c}x{h}x{w} image"
        );
        for ch in 0..c {
            let (sp, dp) = (
                &src[ch * h * w..(ch + 1) * h * w],
                &mut dst[ch * h * w..(ch + 1) * h * w],
            );
            for y in 0..h {
                let sy = y as isize + self.dy;
                let row = &mut dp[y * w..(y + 1) * w];
                if sy < 0 || sy >= h as isize {
                    row.fill(0);
                    continue;
                }
                let srow = &sp[sy as usize * w..(sy as usize + 1) * w];
                for (x, out) in row.iter_mut().enumerate() {
                    let xc = if self.flip { w - 1 - x } else { x };
                    let sx = xc as isize + self.dx;
                    *out = if sx < 0 || sx >= w as isize {
                        0
                    } else {
                        srow[sx as usize]
                    };
                }
            }
        }
    }
}
