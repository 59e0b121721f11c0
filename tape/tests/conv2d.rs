//! conv2d: finite-difference gradient checks over random geometries, known values, an f32
//! comparison with a naive direct convolution (forward and backward), every error path, and the
//! memory accounting of the im2col workspace and of saved tensors.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, conv2d, Conv2dOptions, Conv2dPass};
use tape::{DType, Device, Error, Tape, Tensor};

fn opts(stride: usize, padding: usize) -> Conv2dOptions {
    Conv2dOptions { stride, padding }
}

fn t(data: &[f64], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_f64(data, shape, DType::F64, dev).unwrap()
}

/// Geometry of one random case.
#[derive(Debug, Clone)]
struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
    seed: u64,
}

impl Case {
    /// The input's and the weight's shapes.
    fn shapes(&self) -> ([usize; 4], [usize; 4]) {
        (
            [self.n, self.cin, self.h, self.w],
            [self.cout, self.cin, self.kh, self.kw],
        )
    }

    /// Random `f64` input and weight (seeds `seed` and `seed ^ 1`) and the options.
    fn inputs(&self, dev: &Device) -> (Tensor, Tensor, Conv2dOptions) {
        let (xs, ws) = self.shapes();
        let x = Tensor::randn(&xs, DType::F64, dev, self.seed).unwrap();
        let w = Tensor::randn(&ws, DType::F64, dev, self.seed ^ 1).unwrap();
        (x, w, opts(self.stride, self.padding))
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..=3usize,
        1..=4usize,
        1..=4usize,
        1..=3usize,
        1..=3usize,
        1..=3usize,
        0..=2usize,
    )
        .prop_flat_map(|(n, cin, cout, kh, kw, stride, padding)| {
            let min = |k: usize| k.saturating_sub(2 * padding).max(1);
            (min(kh)..=min(kh) + 6, min(kw)..=min(kw) + 6, any::<u64>()).prop_map(
                move |(h, w, seed)| Case {
                    n,
                    cin,
                    cout,
                    kh,
                    kw,
                    stride,
                    padding,
                    h,
                    w,
                    seed,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn gradcheck_x_weight_bias(c in case()) {
        let dev = Device::cpu();
        let (x, w, o) = c.inputs(&dev);
        let b = Tensor::randn(&[c.cout], DType::F64, &dev, c.seed ^ 2).unwrap();
        let report = check_gradients(&[x, w, b], Tape::recording().context(), |tape, i| {
            conv2d(tape, &i[0], &i[1], Some(&i[2]), o)
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?} for {:?}", report, c);
    }

    #[test]
    fn gradcheck_without_bias(c in case()) {
        let dev = Device::cpu();
        let (x, w, o) = c.inputs(&dev);
        let report = check_gradients(&[x, w], Tape::recording().context(), |tape, i| {
            conv2d(tape, &i[0], &i[1], None, o)
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?} for {:?}", report, c);
    }

    /// Gradients asked of one input alone equal those of the full backward.
    #[test]
    fn partial_gradients_match_full(c in case()) {
        let dev = Device::cpu();
        let (x, w, o) = c.inputs(&dev);
        let grads_of = |x: &Tensor, w: &Tensor| {
            let mut tape = Tape::recording();
            let y = conv2d(&mut tape, x, w, None, o).unwrap();
            let loss = ops::sum(&mut tape, &y).unwrap();
            tape.backward(&loss).unwrap()
        };
        let (xg, wg) = (x.clone().with_requires_grad(true), w.clone().with_requires_grad(true));
        let full = grads_of(&xg, &wg);
        let only_x = grads_of(&xg, &w);
        let only_w = grads_of(&x, &wg);
        prop_assert!(only_x.get(&w).is_none() && only_w.get(&x).is_none());
        prop_assert_eq!(only_x.get(&xg).unwrap().to_f64_vec(), full.get(&xg).unwrap().to_f64_vec());
        prop_assert_eq!(only_w.get(&wg).unwrap().to_f64_vec(), full.get(&wg).unwrap().to_f64_vec());
    }
}

#[test]
fn hand_computed_2x2_kernel() {
    let dev = Device::cpu();
    let xs: Vec<f64> = (1..=9).map(f64::from).collect();
    let x = t(&xs, &[1, 1, 3, 3], &dev).with_requires_grad(true);
    let w = t(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2], &dev).with_requires_grad(true);
    let b = t(&[0.5], &[1], &dev).with_requires_grad(true);
    let mut tape = Tape::recording();
    let y = conv2d(&mut tape, &x, &w, Some(&b), Conv2dOptions::default()).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(y.to_f64_vec(), vec![37.5, 47.5, 67.5, 77.5]);
    let g = tape::testing::grads_of_sum(tape, &y);
    let gx = [1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0];
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), gx);
    assert_eq!(
        g.get(&w).unwrap().to_f64_vec(),
        vec![12.0, 16.0, 24.0, 28.0]
    );
    assert_eq!(g.get(&b).unwrap().to_f64_vec(), vec![4.0]);
}

#[test]
fn hand_computed_stride_and_padding() {
    let dev = Device::cpu();
    let xs: Vec<f64> = (1..=9).map(f64::from).collect();
    let x = t(&xs, &[1, 1, 3, 3], &dev);
    let w = t(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2], &dev);
    let y = conv2d(&mut Tape::no_grad(), &x, &w, None, opts(2, 1)).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(y.to_f64_vec(), vec![4.0, 18.0, 36.0, 77.0]);
}

#[test]
fn default_options_are_stride_1_padding_0() {
    assert_eq!(Conv2dOptions::default(), opts(1, 0));
}

/// Geometries of up to 8 images of up to 20x20 with strides 1 and 2: the larger ones span
/// several backward work chunks (256 output positions each), so the chunks' partial weight
/// gradients are summed; cout both below and above cin (the two grad-input paths).
fn larger_case() -> impl Strategy<Value = Case> {
    (
        1..=8usize,
        1..=5usize,
        1..=5usize,
        1..=3usize,
        1..=2usize,
        0..=1usize,
    )
        .prop_flat_map(|(n, cin, cout, k, stride, padding)| {
            (k..=20usize, k..=20usize, any::<u64>()).prop_map(move |(h, w, seed)| Case {
                n,
                cin,
                cout,
                kh: k,
                kw: k,
                stride,
                padding,
                h,
                w,
                seed,
            })
        })
}

/// Output, grad input and grad weight equal the naive direct convolution's in f64, on
/// geometries larger than a finite-difference check affords. Tolerance, per element: each
/// value is a sum of at most `k` products, and any order of summing them errs by at most
/// `gamma_k = k eps / (1 - k eps)` times the sum of the products' magnitudes (Higham, Accuracy
/// and Stability, 3.1), which is the reference run on the operands' absolute values. Engine
/// and reference each err by that much, so they differ by at most twice it. A bound scaled by
/// the largest value instead fails where the products cancel (a weight gradient of 2e-4 from
/// thirty products of order one).
fn check_against_reference(c: &Case) -> Result<(), TestCaseError> {
    let dev = Device::cpu();
    let (xs, ws) = c.shapes();
    let x = tape::testing::randn_leaf(&xs, DType::F64, &dev, c.seed);
    let w = tape::testing::randn_leaf(&ws, DType::F64, &dev, c.seed ^ 1);
    let mut tape = Tape::recording();
    let y = conv2d(&mut tape, &x, &w, None, opts(c.stride, c.padding)).unwrap();
    let gy = Tensor::randn(y.shape(), DType::F64, &dev, c.seed ^ 2).unwrap();
    let grads = tape.backward_from(&y, gy.clone()).unwrap();
    let (xv, wv, gyv) = (x.to_f64_vec(), w.to_f64_vec(), gy.to_f64_vec());
    let geometry = (c.stride, c.padding);
    let (ry, rgx, rgw) = common::conv2d_reference(&xv, &wv, &gyv, xs, ws, geometry);
    let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let (by, bgx, bgw) =
        common::conv2d_reference(&abs(&xv), &abs(&wv), &abs(&gyv), xs, ws, geometry);
    let [_, _, ho, wo] = *y.shape() else {
        unreachable!()
    };
    // The most products in one sum: an output's cin*kh*kw, an input gradient's at most
    // cout*kh*kw, a weight gradient's n*ho*wo.
    let k = (c.cin.max(c.cout) * c.kh * c.kw).max(c.n * ho * wo) as f64;
    let gamma = k * f64::EPSILON / (1.0 - k * f64::EPSILON);
    for (name, got, want, bound) in [
        ("y", y.to_f64_vec(), ry, by),
        ("gx", grads.get(&x).unwrap().to_f64_vec(), rgx, bgx),
        ("gw", grads.get(&w).unwrap().to_f64_vec(), rgw, bgw),
    ] {
        for (i, ((a, b), m)) in got.iter().zip(&want).zip(&bound).enumerate() {
            let tol = 2.0 * gamma * m;
            prop_assert!(
                (a - b).abs() <= tol,
                "{}[{}]: {:e} vs {:e} (tolerance {:e}) for {:?}",
                name,
                i,
                a,
                b,
                tol,
                c
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// [`check_against_reference`] on random geometries.
    #[test]
    fn f64_matches_naive_reference(c in larger_case()) {
        check_against_reference(&c)?;
    }
}

/// A case whose weight gradient cancels to 2e-4 from thirty products of order one: a tolerance
/// scaled by the largest value failed it.
#[test]
fn f64_reference_holds_under_cancellation() {
    let c = Case {
        n: 2,
        cin: 1,
        cout: 1,
        kh: 1,
        kw: 1,
        stride: 1,
        padding: 0,
        h: 15,
        w: 1,
        seed: 9914380012477128228,
    };
    check_against_reference(&c).unwrap();
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn f32_matches_naive_reference() {
    // (x shape, weight shape, stride, padding): pointwise, DenseNet-like 3x3 with cout < cin
    // (flipped grad-input path) and cout > cin (col2im path), strided, rectangular kernels; the
    // next three have columns wider than one cache block (256 KiB), so im2col runs in several
    // blocks of output rows on each path; the last three span 2 or 3 backward work chunks (256
    // output positions each) on the flipped, pointwise and col2im paths; then 512 output
    // channels, whose weight gradient is summed untransposed, over two work chunks.
    let cases: [([usize; 4], [usize; 4], usize, usize); 13] = [
        ([5, 8, 6, 6], [4, 8, 1, 1], 1, 0),
        ([5, 8, 7, 7], [4, 8, 3, 3], 1, 1),
        ([3, 3, 9, 8], [6, 3, 3, 3], 1, 1),
        ([4, 3, 9, 9], [5, 3, 3, 3], 2, 1),
        ([2, 4, 8, 7], [3, 4, 2, 3], 3, 2),
        ([3, 4, 5, 5], [2, 4, 1, 1], 2, 0),
        ([1, 64, 6, 64], [2, 64, 3, 3], 1, 1),
        ([1, 64, 7, 64], [70, 64, 3, 3], 2, 1),
        ([1, 40, 3, 256], [32, 40, 3, 3], 1, 1),
        ([6, 4, 12, 12], [3, 4, 3, 3], 1, 1),
        ([5, 6, 10, 10], [4, 6, 1, 1], 1, 0),
        ([4, 3, 20, 20], [5, 3, 3, 3], 2, 1),
        ([40, 3, 6, 5], [512, 3, 3, 3], 2, 1),
    ];
    for (seed, (xs, ws, s, p)) in cases.into_iter().enumerate() {
        let dev = Device::cpu();
        let x = tape::testing::randn_leaf(&xs, DType::F32, &dev, seed as u64);
        let w = tape::testing::randn_leaf(&ws, DType::F32, &dev, 100 + seed as u64);
        let mut tape = Tape::recording();
        let y = conv2d(&mut tape, &x, &w, None, opts(s, p)).unwrap();
        let gy = Tensor::randn(y.shape(), DType::F32, &dev, 200 + seed as u64).unwrap();
        let weighted = ops::mul(&mut tape, &y, &gy).unwrap();
        let grads = tape::testing::grads_of_sum(tape, &weighted);
        let (ry, rgx, rgw) = common::conv2d_reference(
            &x.to_f64_vec(),
            &w.to_f64_vec(),
            &gy.to_f64_vec(),
            xs,
            ws,
            (s, p),
        );
        let what = format!("{xs:?} * {ws:?} s{s} p{p}");
        assert_close(&y.to_f64_vec(), &ry, &format!("y of {what}"));
        assert_close(
            &grads.get(&x).unwrap().to_f64_vec(),
            &rgx,
            &format!("gx of {what}"),
        );
        assert_close(
            &grads.get(&w).unwrap().to_f64_vec(),
            &rgw,
            &format!("gw of {what}"),
        );
    }
}

#[test]
fn empty_batch_gives_empty_output_and_zero_grads() {
    let dev = Device::cpu();
    // The im2col path (f64), and Winograd's (f32, 32 channels on both sides).
    for (dtype, cin, cout) in [(DType::F64, 2, 3), (DType::F32, 32, 32)] {
        let x = common::leaf(Tensor::zeros(&[0, cin, 4, 4], dtype, &dev));
        let w = common::leaf(Tensor::ones(&[cout, cin, 3, 3], dtype, &dev));
        let mut tape = Tape::recording();
        let y = conv2d(&mut tape, &x, &w, None, opts(1, 1)).unwrap();
        assert_eq!(y.shape(), &[0, cout, 4, 4]);
        let g = tape::testing::grads_of_sum(tape, &y);
        assert!(g.get(&w).unwrap().to_f64_vec().iter().all(|&v| v == 0.0));
    }
}

#[test]
fn zero_channels_give_bias_and_zero_grads() {
    let dev = Device::cpu();
    // No input channels: the output is the bias alone.
    let x = common::leaf(Tensor::zeros(&[2, 0, 4, 4], DType::F64, &dev));
    let w = common::leaf(Tensor::zeros(&[3, 0, 3, 3], DType::F64, &dev));
    let b = t(&[1.0, 2.0, 3.0], &[3], &dev).with_requires_grad(true);
    let mut tape = Tape::recording();
    let y = conv2d(&mut tape, &x, &w, Some(&b), opts(1, 1)).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4, 4]);
    assert_eq!(y.to_f64_vec()[..16], [1.0; 16]);
    let loss = ops::sum(&mut tape, &y).unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&b).unwrap().to_f64_vec(), vec![32.0; 3]);
    // No output channels: an empty output.
    let x = common::leaf(Tensor::ones(&[2, 3, 4, 4], DType::F64, &dev));
    let w = common::leaf(Tensor::zeros(&[0, 3, 3, 3], DType::F64, &dev));
    let mut tape = Tape::recording();
    let y = conv2d(&mut tape, &x, &w, None, opts(2, 1)).unwrap();
    assert_eq!(y.shape(), &[2, 0, 2, 2]);
    let g = tape::testing::grads_of_sum(tape, &y);
    assert!(g.get(&x).unwrap().to_f64_vec().iter().all(|&v| v == 0.0));
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &dev).unwrap();
    let (x, w, b) = (z(&[1, 2, 4, 4]), z(&[3, 2, 3, 3]), z(&[3]));
    let mut tp = Tape::no_grad();
    let d = Conv2dOptions::default();
    let shape = |r| matches!(r, Err(Error::Shape { op: "conv2d", .. }));
    let invalid = |r| matches!(r, Err(Error::InvalidArgument { op: "conv2d", .. }));
    assert!(invalid(conv2d(&mut tp, &x, &w, None, opts(0, 0))));
    assert!(invalid(conv2d(&mut tp, &x, &z(&[3, 2, 0, 3]), None, d)));
    assert!(invalid(conv2d(&mut tp, &x, &z(&[3, 2, 3, 0]), None, d)));
    assert!(shape(conv2d(&mut tp, &z(&[2, 4, 4]), &w, None, d)));
    assert!(shape(conv2d(&mut tp, &x, &z(&[3, 2, 3]), None, d)));
    assert!(shape(conv2d(&mut tp, &x, &z(&[3, 1, 3, 3]), None, d)));
    assert!(shape(conv2d(&mut tp, &x, &w, Some(&z(&[2])), d)));
    assert!(shape(conv2d(&mut tp, &x, &w, Some(&z(&[3, 1])), d)));
    assert!(shape(conv2d(&mut tp, &x, &z(&[3, 2, 5, 3]), None, d)));
    assert!(shape(conv2d(
        &mut tp,
        &x,
        &z(&[3, 2, 3, 7]),
        None,
        opts(1, 1)
    )));
    assert!(shape(conv2d(&mut tp, &x, &w, None, opts(1, usize::MAX))));
    // A kernel that fits only thanks to the padding is fine.
    assert!(conv2d(&mut tp, &x, &z(&[3, 2, 6, 6]), Some(&b), opts(1, 1)).is_ok());
    let x32 = Tensor::zeros(&[1, 2, 4, 4], DType::F32, &dev).unwrap();
    assert!(matches!(
        conv2d(&mut tp, &x32, &w, None, d),
        Err(Error::DType { .. })
    ));
    let b32 = Tensor::zeros(&[3], DType::F32, &dev).unwrap();
    assert!(matches!(
        conv2d(&mut tp, &x, &w, Some(&b32), d),
        Err(Error::DType { .. })
    ));
    let other = Device::cpu();
    let w_other = Tensor::zeros(&[3, 2, 3, 3], DType::F64, &other).unwrap();
    assert!(matches!(
        conv2d(&mut tp, &x, &w_other, None, d),
        Err(Error::Device { .. })
    ));
    let b_other = Tensor::zeros(&[3], DType::F64, &other).unwrap();
    assert!(matches!(
        conv2d(&mut tp, &x, &w, Some(&b_other), d),
        Err(Error::Device { .. })
    ));
}

/// An upper bound on rayon's thread count, which sets how many column buffers live at once.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    env.unwrap_or(0).max(cores)
}

#[test]
fn im2col_workspace_is_counted_and_released() {
    let dev = Device::cpu();
    // 32 output channels: the im2col path (the direct 3x3 kernel takes at most 24).
    let (n, cin, cout, hw) = (8, 16, 32, 12);
    let x = Tensor::randn(&[n, cin, hw, hw], DType::F32, &dev, 1).unwrap();
    let w = Tensor::randn(&[cout, cin, 3, 3], DType::F32, &dev, 2).unwrap();
    let live = dev.memory().current();
    assert_eq!(live, x.size_in_bytes() + w.size_in_bytes());
    dev.memory().reset_peak();
    let y = conv2d(&mut Tape::no_grad(), &x, &w, None, opts(1, 1)).unwrap();
    let after = live + y.size_in_bytes();
    assert_eq!(
        dev.memory().current(),
        after,
        "workspace released after the forward"
    );
    let workspace = dev.memory().peak() - after;
    let one_image = cin * 9 * hw * hw * 4;
    assert!(
        workspace >= one_image,
        "im2col columns counted: {workspace} < {one_image}"
    );
    assert!(
        workspace <= n.min(max_threads()) * one_image,
        "batch chunked: {workspace}"
    );
    drop(y);

    // Backward: its workspace is counted and released too.
    let (x, w) = (x.with_requires_grad(true), w.with_requires_grad(true));
    let mut tape = Tape::recording();
    let y = conv2d(&mut tape, &x, &w, None, opts(1, 1)).unwrap();
    let loss = ops::sum(&mut tape, &y).unwrap();
    drop(y);
    let before = dev.memory().current();
    dev.memory().reset_peak();
    let grads = tape.backward(&loss).unwrap();
    let grad_bytes =
        grads.get(&x).unwrap().size_in_bytes() + grads.get(&w).unwrap().size_in_bytes();
    assert!(
        dev.memory().peak() > before + grad_bytes,
        "backward workspace counted"
    );
    drop(loss);
    assert_eq!(
        dev.memory().current(),
        live + grad_bytes,
        "everything else released"
    );
}

/// One im2col column block of `rows` rows over outputs of `out_rows x out_cols` per image, as
/// `tape/src/ops/conv2d/cpu.rs` sizes it for f32 (`Cols::block_shape`): whole output rows of one
/// image, at least 256 columns and more when `BLOCK_BYTES` = 256 KiB holds more; or, when two
/// whole images fit in 256 columns, as many whole images as reach 256 columns, at most `images`.
/// Returns (elements, images per block, columns).
fn column_block(
    rows: usize,
    out_rows: usize,
    out_cols: usize,
    images: usize,
) -> (usize, usize, usize) {
    let p = out_rows * out_cols;
    let (block_rows, images) = if 2 * p <= 256 {
        (out_rows, 256usize.div_ceil(p).clamp(1, images))
    } else {
        let target = ((256 << 10) / (rows * 4)).max(256);
        (target.div_ceil(out_cols).clamp(1, out_rows), 1)
    };
    let cols = block_rows * out_cols * images;
    (rows * cols, images, cols)
}

/// Elements a block of several images stages its `channels`-row output in (none for blocks of
/// one image, computed in place).
fn staging((_, images, cols): (usize, usize, usize), channels: usize) -> usize {
    if images > 1 {
        channels * cols
    } else {
        0
    }
}

/// Elements of the direct 3x3 kernel's workspace for one image of `cin` planes of `h x w` to
/// `cout` planes: the input zero-padded to `(h + 2) x (w + 2)` planes plus 32 elements of room
/// for the last vector's reads, and one group's 12 output planes of `h` rows of `w + 2`, in
/// whole vectors of 16.
fn direct_workspace(cin: usize, h: usize, w: usize) -> usize {
    cin * (h + 2) * (w + 2) + 32 + 12 * (h * (w + 2)).next_multiple_of(16)
}

/// Elements of the direct kernel's weight-gradient workspace: the padded input (as in
/// [`direct_workspace`]) and the output gradient transposed onto `h` rows of `w + 2` positions
/// (whole vectors of 16), 16 channels a position, in groups of 16 channels.
fn direct_weight_grad_workspace(cin: usize, cout: usize, h: usize, w: usize) -> usize {
    cin * (h + 2) * (w + 2) + 32 + cout.div_ceil(16) * 16 * (h * (w + 2)).next_multiple_of(16)
}

/// Elements of the direct kernel's packed weights: `cin x 9` per output channel, output
/// channels in groups of 12 (the last one padded with zeros).
fn direct_kernel(cin: usize, cout: usize) -> usize {
    cout.div_ceil(12) * cin * 9 * 12
}

/// Thread groups for `jobs` jobs on `threads` threads (`groups` in the CPU kernels): as many as
/// the fewest rounds of one job per thread need.
fn thread_groups(jobs: usize, threads: usize) -> usize {
    jobs.div_ceil(jobs.div_ceil(threads.clamp(1, jobs.max(1))).max(1))
}

/// Bytes of the CPU forward and backward workspaces of an f32 conv of `x` `[n, cin, h, w]` with
/// a `[cout, cin, k, k]` kernel, both gradients wanted, on `threads` threads. From
/// `forward_workspace`, `backward_workspace`, `chunk_images` and `groups` in
/// `tape/src/ops/conv2d/cpu.rs`, with `K = cin*k*k`:
/// - forward: one group per thread (at most one per job: an image, or the images of one block
///   when a block holds several) holding a column block of `x` (`K` rows; none for a pointwise
///   conv) and, when a block holds several images, its `cout`-row output;
/// - backward: the batch in chunks of `ceil(256 / (hout*wout))` images, one group per thread (at
///   most one per chunk) holding the larger of the column blocks of grad weight (`x`'s, `K`
///   rows) and grad input (`gout`'s, `cout*k*k` rows over the input's `h x w`, on the flipped
///   path: stride 1 and `cout < cin`; else `x`'s again), the larger of their staging blocks
///   (the output gradient's `cout` rows, or on the flipped path the input gradient's `cin`
///   rows), plus a `cout x K` partial weight gradient; and one flipped kernel
///   (`cin*cout*k*k`) on the flipped path;
/// - a 3x3 conv of stride 1 and padding 1 with at least 32 channels on both sides runs
///   Winograd's F(2x2, 3x3) instead, one workspace per thread group where blocks of images fit
///   ([`common::winograd_workspace_bytes`]);
/// - a 3x3 conv of stride 1 and padding 1 with at most 24 output channels runs the direct kernel
///   (`tape/src/ops/conv2d/direct.rs`) instead: forward jobs of one image, each group holding
///   [`direct_workspace`] and the kernel packed in groups of 12 output channels; in backward,
///   the weight gradient's column block is [`direct_weight_grad_workspace`], with no staging;
///   on the flipped
///   path its input gradient runs it too (from the output gradient's `cout` channels to
///   `cin`), its workspace in place of the gradient's column block, no staging, and the
///   flipped kernel packed the same way in place of the flipped kernel.
fn conv_workspace_bytes(
    [n, cin, h, w]: [usize; 4],
    cout: usize,
    k: usize,
    o: Conv2dOptions,
    threads: usize,
) -> (usize, usize) {
    if k == 3 && (o.stride, o.padding) == (1, 1) && cin.min(cout) >= 32 {
        let bytes = common::winograd_workspace_bytes([n, cin, h, w], cout, threads);
        return (bytes, bytes);
    }
    let (hout, wout) = (
        (h + 2 * o.padding - k) / o.stride + 1,
        (w + 2 * o.padding - k) / o.stride + 1,
    );
    let kk = cin * k * k;
    let pointwise = k == 1 && o.stride == 1 && o.padding == 0;
    let chunk = 256usize.div_ceil(hout * wout).clamp(1, n);
    let xb = column_block(kk, hout, wout, chunk);
    let flipped = !pointwise && o.stride == 1 && cout < cin;
    let direct = k == 3 && o.stride == 1 && o.padding == 1 && cout <= 24;
    let (xcols, xstage) = if direct {
        (direct_weight_grad_workspace(cin, cout, h, w), 0)
    } else if pointwise {
        (0, 0)
    } else {
        (xb.0, staging(xb, cout))
    };
    let (gcols, gstage) = if flipped && direct {
        (direct_workspace(cout, h, w), 0)
    } else if flipped {
        let gb = column_block(cout * k * k, h, w, chunk);
        (gb.0, staging(gb, cin))
    } else {
        (xcols, xstage)
    };
    let fb = column_block(kk, hout, wout, n);
    let units = if pointwise || direct {
        n
    } else {
        n.div_ceil(fb.1)
    };
    let fspace = if direct {
        direct_workspace(cin, h, w) + direct_kernel(cin, cout)
    } else if pointwise {
        0
    } else {
        fb.0 + staging(fb, cout)
    };
    let forward = thread_groups(units, threads) * fspace;
    let chunks = n.div_ceil(chunk);
    let per_group = xcols.max(gcols) + xstage.max(gstage) + cout * kk;
    let flip = match (flipped, direct) {
        (true, true) => direct_kernel(cout, cin),
        (true, false) => cin * cout * k * k,
        (false, _) => 0,
    };
    let backward = thread_groups(chunks, threads) * per_group + flip;
    (4 * forward, 4 * backward)
}

/// The peaks of a conv's forward and backward hold, beyond their inputs, outputs and gradients,
/// exactly the CPU kernels' workspaces, on 1, 2 and 3 threads, and `conv2d_pass_workspace_bytes`
/// says how much for each pass (the backward with and without the input's gradient): a kernel
/// that runs without charging its workspace (or charges the wrong size), or a prediction that
/// differs, fails here. Cases: the direct 3x3 kernel (forward and input gradient) at 32x32 and
/// 6x6; a strided conv on the col2im path with several images per work chunk; a pointwise conv;
/// blocks of several whole images on the flipped path (forward jobs of 16, 16 and 8 images);
/// the flipped grad-input path with column blocks of fewer rows than the output (31 output
/// channels keep these two off Winograd's path); Winograd in per-thread blocks of images with fewer
/// outputs than inputs, over odd planes with more, and over chunks one after the
/// other (too many channels for a block).
#[test]
fn conv_workspaces_are_charged_exactly() {
    let cases = [
        ([3, 64, 32, 32], 8, 3, opts(1, 1)),
        ([6, 4, 20, 20], 8, 3, opts(2, 1)),
        ([5, 16, 12, 12], 8, 1, opts(1, 0)),
        ([4, 32, 6, 6], 8, 3, opts(1, 1)),
        ([40, 256, 4, 4], 31, 3, opts(1, 1)),
        ([3, 64, 32, 32], 31, 3, opts(1, 1)),
        ([13, 40, 9, 9], 33, 3, opts(1, 1)),
        ([2, 32, 7, 5], 48, 3, opts(1, 1)),
        ([400, 192, 2, 2], 192, 3, opts(1, 1)),
    ];
    for (shape, cout, k, o) in cases {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (forward, backward) = conv_workspace_bytes(shape, cout, k, o, threads);
            let what = format!("{shape:?} -> {cout} k{k} {o:?} on {threads} threads");
            pool.install(|| {
                let dev = Device::cpu();
                let w_shape = [cout, shape[1], k, k];
                let predicted = |pass| {
                    ops::conv2d_pass_workspace_bytes(&dev, shape, w_shape, o, DType::F32, pass)
                        .unwrap()
                };
                assert_eq!(predicted(Conv2dPass::Forward), forward, "{what}: forward");
                let full = Conv2dPass::Backward { input_grad: true };
                assert_eq!(predicted(full), backward, "{what}: backward");
                assert_eq!(
                    ops::conv2d_workspace_bytes(&dev, shape, w_shape, o, DType::F32).unwrap(),
                    forward.max(backward),
                    "{what}: the larger pass"
                );
                let x = tape::testing::randn_leaf(&shape, DType::F32, &dev, 1);
                let w = tape::testing::randn_leaf(&[cout, shape[1], k, k], DType::F32, &dev, 2);
                let mut tape = Tape::recording();
                let before = dev.memory().current();
                dev.memory().reset_peak();
                let y = conv2d(&mut tape, &x, &w, None, o).unwrap();
                let out = y.size_in_bytes();
                assert_eq!(
                    dev.memory().peak() - before,
                    out + forward,
                    "{what}: forward peak = output + workspace"
                );
                let gy = Tensor::randn(y.shape(), DType::F32, &dev, 3).unwrap();
                let before = dev.memory().current();
                dev.memory().reset_peak();
                let grads = tape.backward_from(&y, gy).unwrap();
                let grad_bytes = x.size_in_bytes() + w.size_in_bytes();
                assert_eq!(
                    dev.memory().peak() - before,
                    grad_bytes + backward,
                    "{what}: backward peak = gradients + workspace ({backward} bytes)"
                );
                drop(grads);

                // The weight's gradient only (an input image): less workspace, as predicted.
                let x = x.detach();
                let mut tape = Tape::recording();
                let y = conv2d(&mut tape, &x, &w, None, o).unwrap();
                let gy = Tensor::randn(y.shape(), DType::F32, &dev, 3).unwrap();
                let before = dev.memory().current();
                dev.memory().reset_peak();
                let grads = tape.backward_from(&y, gy).unwrap();
                let weight_only = predicted(Conv2dPass::Backward { input_grad: false });
                assert_eq!(
                    dev.memory().peak() - before,
                    w.size_in_bytes() + weight_only,
                    "{what}: weight-only backward peak = its gradient + workspace"
                );
                assert!(weight_only <= backward, "{what}");
                drop(grads);
            });
        }
    }
}

/// Bytes of the workspaces of a bf16 conv of `x` `[n, cin, h, w]` with a `[cout, cin, k, k]`
/// kernel (stride 1, padding `(k - 1) / 2`) on the CPU's bf16 matrix units, on `threads`
/// threads: (forward, backward with both gradients). From `tape/src/ops/conv2d/tiles.rs`, with
/// `C32` a channel count rounded up to 32, `T = k * k` taps and the grid `hp = h + k - 1` by
/// `wp = w + k - 1`, whose products span `cols = round32(h * wp)` columns and whose planes hold
/// `plane = even(max(hp * wp, cols + (k - 1) * wp + k - 1))` elements:
/// - forward: the packed kernel (`cout32 * T * cin32` bf16) and per thread group (one per
///   image, at most one per thread) a batch of images as channel pairs (`cin32 / 2` planes of
///   words each): as many as fit in 1 MiB, at least one, at most the group's share;
/// - backward: the same for the input gradient with `cin` and `cout` swapped, after the kernel
///   flipped and transposed (`cout * cin * T` bf16), and for the
///   weight gradient, for a chunk of `c = max(4, ceil(4096 / cols))` images (at most `n`),
///   their plain grids (`cin` rounded up to 16 planes of bf16 each) and packed output gradients
///   (`cout32 * cols` bf16 each), one output gradient spread on `cols` (`cout * cols` bf16) per
///   thread group preparing them, and the sums, `T * cin16 * cout32` in f32.
fn tile_workspace_bytes(
    [n, cin, h, w]: [usize; 4],
    cout: usize,
    k: usize,
    threads: usize,
) -> (usize, usize) {
    let r32 = |c: usize| c.div_ceil(32) * 32;
    let (wp, hp, taps) = (w + k - 1, h + k - 1, k * k);
    let cols = r32(h * wp);
    let plane = (hp * wp).max(cols + (k - 1) * wp + k - 1).div_ceil(2) * 2;
    let same = |c_in: usize, c_out: usize| {
        let image = r32(c_in) / 2 * plane * 4;
        let groups = thread_groups(n, threads);
        let batch = ((1 << 20) / image).clamp(1, n.div_ceil(groups));
        r32(c_out) * taps * r32(c_in) * 2 + groups * batch * image
    };
    let r16 = |c: usize| c.div_ceil(16) * 16;
    let images = 4096usize.div_ceil(cols).max(4).min(n);
    let weight = images * (r16(cin) * plane + r32(cout) * cols) * 2
        + thread_groups(images, threads) * cout * cols * 2
        + taps * r16(cin) * r32(cout) * 4;
    let flipped = cout * cin * taps * 2;
    (same(cin, cout), flipped + same(cout, cin) + weight)
}

/// A bf16 conv on the CPU's bf16 matrix units charges exactly its workspaces, on 1, 2 and 3
/// threads: the forward's peak is its output plus [`tile_workspace_bytes`]'s forward, and
/// `conv2d_pass_workspace_bytes` says so for each pass; a meta device charges what the CPU
/// does, forward and backward. Cases: DenseNet's 3x3 48 -> 12 at 32x32; an odd grid with an odd
/// channel count; a pointwise conv.
#[test]
fn tile_workspaces_are_charged_exactly() {
    if !tape::simd::bf16_matrix_units() {
        eprintln!("skipped: this CPU (or OS) gives no bf16 matrix units (AMX)");
        return;
    }
    let cases = [
        ([3, 48, 32, 32], 12, 3),
        ([5, 21, 9, 9], 40, 3),
        ([6, 70, 8, 8], 48, 1),
    ];
    for (shape, cout, k) in cases {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (forward, backward) = tile_workspace_bytes(shape, cout, k, threads);
            let o = opts(1, (k - 1) / 2);
            let what = format!("bf16 {shape:?} -> {cout} k{k} on {threads} threads");
            pool.install(|| {
                let w_shape = [cout, shape[1], k, k];
                let mut peaks = Vec::new();
                for dev in [Device::cpu(), Device::meta()] {
                    let predicted = |pass| {
                        ops::conv2d_pass_workspace_bytes(&dev, shape, w_shape, o, DType::BF16, pass)
                            .unwrap()
                    };
                    assert_eq!(predicted(Conv2dPass::Forward), forward, "{what}: forward");
                    let full = Conv2dPass::Backward { input_grad: true };
                    assert_eq!(predicted(full), backward, "{what}: backward");
                    let x = tape::testing::randn_leaf(&shape, DType::BF16, &dev, 1);
                    let w = tape::testing::randn_leaf(&w_shape, DType::BF16, &dev, 2);
                    let mut tape = Tape::recording();
                    let before = dev.memory().current();
                    dev.memory().reset_peak();
                    let y = conv2d(&mut tape, &x, &w, None, o).unwrap();
                    let fwd = dev.memory().peak() - before;
                    assert_eq!(fwd, y.size_in_bytes() + forward, "{what}: forward peak");
                    let gy = Tensor::zeros(y.shape(), DType::BF16, &dev).unwrap();
                    let before = dev.memory().current();
                    dev.memory().reset_peak();
                    let grads = tape.backward_from(&y, gy).unwrap();
                    let bwd = dev.memory().peak() - before;
                    assert!(bwd >= backward, "{what}: backward peak {bwd} < workspace");
                    peaks.push((fwd, bwd));
                    drop(grads);
                }
                assert_eq!(
                    peaks[0], peaks[1],
                    "{what}: CPU vs meta (forward, backward) peaks"
                );
            });
        }
    }
}

/// Bytes the device still holds once the caller has dropped its own `x` and `w` handles after a
/// forward, given which of them want a gradient and whether the tape records.
fn held_after_forward(x_grad: bool, w_grad: bool, recording: bool) -> (usize, [usize; 3]) {
    let dev = Device::cpu();
    let x = Tensor::randn(&[2, 3, 5, 5], DType::F64, &dev, 1)
        .unwrap()
        .with_requires_grad(x_grad);
    let w = Tensor::randn(&[4, 3, 3, 3], DType::F64, &dev, 2)
        .unwrap()
        .with_requires_grad(w_grad);
    let sizes = [x.size_in_bytes(), w.size_in_bytes(), 2 * 4 * 5 * 5 * 8];
    let mut tape = if recording {
        Tape::recording()
    } else {
        Tape::no_grad()
    };
    let y = conv2d(&mut tape, &x, &w, None, opts(1, 1)).unwrap();
    drop((x, w));
    let held = dev.memory().current();
    drop((tape, y));
    (held, sizes)
}

#[test]
fn backward_saves_only_what_it_needs() {
    let (held, [xb, wb, yb]) = held_after_forward(true, false, true);
    assert_eq!(held, wb + yb, "grad of x needs only the weight");
    let (held, _) = held_after_forward(false, true, true);
    assert_eq!(held, xb + yb, "grad of the weight needs only the input");
    let (held, _) = held_after_forward(true, true, true);
    assert_eq!(held, xb + wb + yb);
    let (held, _) = held_after_forward(true, true, false);
    assert_eq!(held, yb, "a tape that does not record keeps nothing");
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops::{self, Conv2dOptions};
    use tape::testing::*;
    use tape::{CudaOptions, DType, Device, Tape, Tensor};

    #[test]
    fn conv2d_matches_cpu() {
        for_gpu_cases(1, 12, |dev, p, case, dtype| {
            let k = [1, 3, 5, 7][p.int(0, 3)];
            let stride = p.int(1, 2);
            let padding = p.int(0, k / 2);
            let (n, cin, cout) = (p.int(1, 4), p.int(1, 9), p.int(1, 9));
            let h = p.int(k.saturating_sub(2 * padding).max(1), 12);
            let w = p.int(k.saturating_sub(2 * padding).max(1), 12);
            let bias = p.bool();
            let mut inputs = vec![
                randn(&[n, cin, h, w], dtype, case * 10 + 1),
                randn(&[cout, cin, k, k], dtype, case * 10 + 2),
            ];
            if bias {
                inputs.push(randn(&[cout], dtype, case * 10 + 3));
            }
            let opts = Conv2dOptions { stride, padding };
            let mask = vec![true; inputs.len()];
            let f = move |t: &mut Tape, x: &[Tensor]| ops::conv2d(t, &x[0], &x[1], x.get(2), opts);
            let what = format!(
                "conv2d x{:?} k{k} s{stride} p{padding} cout{cout} bias{bias}",
                [n, cin, h, w]
            );
            compare(dev, &what, &inputs, &mask, training(), &f);
            // Only the weight wants a gradient (grad input skipped), then only the input.
            let mut only_w = vec![false; inputs.len()];
            only_w[1] = true;
            compare(dev, &what, &inputs, &only_w, training(), &f);
            let mut only_x = vec![false; inputs.len()];
            only_x[0] = true;
            compare(dev, &what, &inputs, &only_x, training(), &f);
        });
    }

    #[test]
    fn conv2d_tf32_runs_close() {
        let Some(dev) = gpu_with(CudaOptions {
            tf32: true,
            ..CudaOptions::default()
        }) else {
            return;
        };
        let x = randn(&[4, 16, 12, 12], DType::F32, 1);
        let w = randn(&[8, 16, 3, 3], DType::F32, 2);
        let opts = super::opts(1, 1);
        let f = |t: &mut Tape, x: &[Tensor]| ops::conv2d(t, &x[0], &x[1], None, opts);
        let (a, _) = eval(
            &Device::cpu(),
            &[x.clone(), w.clone()],
            &[true, true],
            training(),
            &f,
        );
        let (b, _) = eval(&dev, &[x, w], &[true, true], training(), &f);
        let e = rel(&b, &a);
        assert!(e <= 2e-2, "TF32 conv differs by {e:e}");
    }

    /// Algorithms measured with cuDNN's `Find` and one persistent workspace: the same results as
    /// the CPU (strict fp32 and f64), the workspace charged once and kept (a second pass over
    /// the same shapes allocates no workspace and leaves the accounting where the first left
    /// it).
    #[test]
    fn conv2d_measured_algorithms_and_persistent_workspace() {
        let Some(dev) = gpu_with(CudaOptions {
            measure_conv_algorithms: true,
            persistent_workspace: true,
            ..CudaOptions::default()
        }) else {
            return;
        };
        let cases = [
            ([4, 16, 12, 12], [8, 16, 3, 3], 1, 1),
            ([2, 8, 9, 9], [16, 8, 1, 1], 1, 0),
            ([2, 3, 19, 19], [6, 3, 7, 7], 2, 3),
        ];
        for dtype in DTYPES {
            for (i, &(xs, ws, stride, padding)) in cases.iter().enumerate() {
                let inputs = [
                    randn(&xs, dtype, 10 * i as u64 + 1),
                    randn(&ws, dtype, 10 * i as u64 + 2),
                ];
                let opts = Conv2dOptions { stride, padding };
                let f = move |t: &mut Tape, x: &[Tensor]| ops::conv2d(t, &x[0], &x[1], None, opts);
                let what = format!("measured conv2d x{xs:?} w{ws:?} {dtype:?}");
                compare(&dev, &what, &inputs, &[true, true], training(), &f);
            }
        }
        // Every shape is planned and the shared workspace is as large as it gets: another pass
        // holds nothing more once it is done.
        let held = dev.memory().current();
        let x = randn(&cases[0].0, DType::F32, 1).to_device(&dev).unwrap();
        let w = randn(&cases[0].1, DType::F32, 2)
            .to_device(&dev)
            .unwrap()
            .with_requires_grad(true);
        let mut tape = Tape::recording();
        let y = ops::conv2d(&mut tape, &x, &w, None, super::opts(1, 1)).unwrap();
        let loss = ops::sum(&mut tape, &y).unwrap();
        drop(y);
        drop(tape.backward(&loss).unwrap());
        drop((loss, x, w));
        dev.synchronize().unwrap();
        assert_eq!(
            dev.memory().current(),
            held,
            "the persistent workspace stays as it was"
        );
    }
}
