//! conv2d through Winograd's F(2x2, 3x3) (`f32`, 3x3, stride 1, padding 1, at least 32 channels
//! on both sides): output and both gradients against the naive direct convolution in f64,
//! within a rounding bound derived for the algorithm, on partial tiles, several chunks of
//! images, and fewer and more output than input channels.

mod common;

use tape::ops::{self, conv2d, Conv2dOptions, Conv2dPass};
use tape::{DType, Device, Tape, Tensor};

/// `Bᵀ`, `G` and `Aᵀ` of F(2x2, 3x3) (Lavin and Gray), row-major.
const BT: [f64; 16] = [
    1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0,
];
const G: [f64; 12] = [1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0];
const AT: [f64; 8] = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0];

/// `a (m x k) * b (k x n)`, row-major; `bt` says `b` is given as its transpose (`n x k`).
fn mm(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize), bt: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let bv = if bt { b[j * k + l] } else { b[l * n + j] };
                c[i * n + j] += a[i * k + l] * bv;
            }
        }
    }
    c
}

/// `|M| |X| |N|ᵀ` for `M (r x k)`, `X (k x k2)`, `N (c x k2)`.
fn sandwich(
    m: &[f64],
    x: &[f64],
    n: &[f64],
    (r, k, k2, c): (usize, usize, usize, usize),
) -> Vec<f64> {
    let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let left = mm(&abs(m), &abs(x), (r, k, k2), false);
    mm(&left, &abs(n), (r, k2, c), true)
}

/// The 4x4 input tile of `plane` (`h x w`, absolute values) at tile `(ty, tx)`: rows and
/// columns `2t - 1 .. 2t + 3`, zeros outside.
fn patch(plane: &[f64], (h, w): (usize, usize), (ty, tx): (usize, usize)) -> Vec<f64> {
    let mut d = vec![0.0; 16];
    for i in 0..4 {
        for j in 0..4 {
            let (y, x) = ((2 * ty + i) as isize - 1, (2 * tx + j) as isize - 1);
            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                d[4 * i + j] = plane[y as usize * w + x as usize].abs();
            }
        }
    }
    d
}

/// The output gradient's 2x2 tile (absolute values, zeros past the plane).
fn grad_patch(plane: &[f64], (h, w): (usize, usize), (ty, tx): (usize, usize)) -> Vec<f64> {
    let mut d = vec![0.0; 4];
    for a in 0..2 {
        for b in 0..2 {
            let (y, x) = (2 * ty + a, 2 * tx + b);
            if y < h && x < w {
                d[2 * a + b] = plane[y * w + x].abs();
            }
        }
    }
    d
}

/// What each output of a Winograd convolution sums in magnitude: `|Aᵀ| [Σ_c (|G||g||G|ᵀ) ⊙
/// (|Bᵀ||d||Bᵀ|ᵀ)] |Aᵀ|ᵀ + |bias|` per tile, for `x` (`n x cin x h x w`) and kernels `k(co,
/// ci)` (3x3 each).
fn forward_magnitudes(
    x: &[f64],
    k: &dyn Fn(usize, usize) -> Vec<f64>,
    bias: &[f64],
    [n, cin, h, w]: [usize; 4],
    cout: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; n * cout * h * w];
    let u: Vec<Vec<f64>> = (0..cout * cin)
        .map(|p| sandwich(&G, &k(p / cin, p % cin), &G, (4, 3, 3, 4)))
        .collect();
    for b in 0..n {
        for ty in 0..h.div_ceil(2) {
            for tx in 0..w.div_ceil(2) {
                let v: Vec<Vec<f64>> = (0..cin)
                    .map(|c| {
                        let plane = &x[(b * cin + c) * h * w..][..h * w];
                        sandwich(&BT, &patch(plane, (h, w), (ty, tx)), &BT, (4, 4, 4, 4))
                    })
                    .collect();
                for co in 0..cout {
                    let mut m = vec![0.0; 16];
                    for c in 0..cin {
                        for (e, (a, b)) in m.iter_mut().zip(u[co * cin + c].iter().zip(&v[c])) {
                            *e += a * b;
                        }
                    }
                    let t = sandwich(&AT, &m, &AT, (2, 4, 4, 2));
                    for (i, row) in t.chunks(2).enumerate() {
                        for (j, &val) in row.iter().enumerate() {
                            let (yy, xx) = (2 * ty + i, 2 * tx + j);
                            if yy < h && xx < w {
                                let at = ((b * cout + co) * h + yy) * w + xx;
                                y[at] = val + bias.get(co).map_or(0.0, |v| v.abs());
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// What each weight-gradient element sums in magnitude: `|G|ᵀ [Σ_tiles (|A||dY||A|ᵀ) ⊙
/// (|Bᵀ||d||Bᵀ|ᵀ)] |G|`.
fn weight_grad_magnitudes(
    x: &[f64],
    gy: &[f64],
    [n, cin, h, w]: [usize; 4],
    cout: usize,
) -> Vec<f64> {
    let a: Vec<f64> = (0..8).map(|i| AT[(i % 2) * 4 + i / 2]).collect(); // A = Aᵀᵀ, 4 x 2
    let gt: Vec<f64> = (0..12).map(|i| G[(i % 4) * 3 + i / 4]).collect(); // Gᵀ, 3 x 4
    let mut du = vec![vec![0.0; 16]; cout * cin];
    for b in 0..n {
        for ty in 0..h.div_ceil(2) {
            for tx in 0..w.div_ceil(2) {
                let dys: Vec<Vec<f64>> = (0..cout)
                    .map(|co| {
                        let plane = &gy[(b * cout + co) * h * w..][..h * w];
                        sandwich(&a, &grad_patch(plane, (h, w), (ty, tx)), &a, (4, 2, 2, 4))
                    })
                    .collect();
                for c in 0..cin {
                    let plane = &x[(b * cin + c) * h * w..][..h * w];
                    let v = sandwich(&BT, &patch(plane, (h, w), (ty, tx)), &BT, (4, 4, 4, 4));
                    for (co, dy) in dys.iter().enumerate() {
                        for (e, (p, q)) in du[co * cin + c].iter_mut().zip(dy.iter().zip(&v)) {
                            *e += p * q;
                        }
                    }
                }
            }
        }
    }
    du.iter()
        .flat_map(|t| sandwich(&gt, t, &gt, (3, 4, 4, 3)))
        .collect()
}

/// `γ_k = k u / (1 - k u)` for `f32`'s unit roundoff `u = 2^-24` (Higham, 3.1).
fn gamma32(k: usize) -> f64 {
    let ku = k as f64 * (f32::EPSILON as f64 / 2.0);
    ku / (1.0 - ku)
}

/// Output, input gradient and weight gradient of `f32` convolutions that take Winograd's path
/// (its workspace, predicted, says so) equal the naive f64 convolution within the algorithm's
/// rounding bound. Derivation, per element, with `γ_k` as in [`gamma32`] and `|·|` the same
/// computation on absolute values (transform matrices included, [`forward_magnitudes`]):
/// - output: the kernel transform `G g Gᵀ` adds at most twice per pass (γ_4), the input
///   transform `Bᵀ d B` once per pass (γ_2), one product, the GEMM's sum over `cin` channels in
///   any order (γ_cin), the output transform `Aᵀ m A` at most twice per pass (γ_4), the bias
///   once: `|ŷ - y| <= γ_{cin+12} |y|`;
/// - input gradient: the same convolution of the output gradient with the flipped kernel,
///   no bias: `γ_{cout+11}`;
/// - weight gradient: `A dY Aᵀ` (γ_2), `Bᵀ d B` (γ_2), one product, the sum over all `n tiles`
///   tiles (γ_{n tiles}: chunks add one after another), `Gᵀ t G` at most twice per pass (γ_4):
///   `γ_{n tiles + 9}`.
///
/// The f64 reference itself errs by at most `γ^f64_K` times the direct magnitudes, added.
#[test]
fn winograd_matches_naive_reference_within_its_bound() {
    // (x shape, cout): per-thread blocks of 6 images of 9x9 with fewer outputs than inputs
    // (the weight gradient in runs of 24, 24 and 2 images, the last block of 2); odd rectangular planes (partial tiles on both edges) with more outputs; 1x1
    // images (one tile, padding only); a 2x18 strip; channels too many for a block of 128
    // tiles in 3 MiB, so two chunks one after the other (341 and 59 images of one tile).
    let cases: [([usize; 4], usize); 5] = [
        ([50, 40, 9, 9], 33),
        ([400, 192, 2, 2], 192),
        ([2, 32, 7, 5], 48),
        ([3, 33, 1, 1], 32),
        ([1, 32, 2, 18], 32),
    ];
    let dev = Device::cpu();
    let opts = Conv2dOptions {
        stride: 1,
        padding: 1,
    };
    for (seed, (xs, cout)) in cases.into_iter().enumerate() {
        let [n, cin, h, w] = xs;
        let ws = [cout, cin, 3, 3];
        let what = format!("{xs:?} -> {cout}");
        for pass in [
            Conv2dPass::Forward,
            Conv2dPass::Backward { input_grad: true },
        ] {
            let bytes = ops::conv2d_pass_workspace_bytes(&dev, xs, ws, opts, DType::F32, pass);
            assert_eq!(
                bytes.unwrap(),
                common::winograd_workspace_bytes(xs, cout, rayon::current_num_threads()),
                "{what}: {pass:?}"
            );
        }
        let seed = 10 * seed as u64;
        let x = tape::testing::randn_leaf(&xs, DType::F32, &dev, seed);
        let wt = tape::testing::randn_leaf(&ws, DType::F32, &dev, seed + 1);
        let b = tape::testing::randn_leaf(&[cout], DType::F32, &dev, seed + 2);
        let mut tape = Tape::recording();
        let y = conv2d(&mut tape, &x, &wt, Some(&b), opts).unwrap();
        let gy = Tensor::randn(y.shape(), DType::F32, &dev, seed + 3).unwrap();
        let grads = tape.backward_from(&y, gy.clone()).unwrap();

        let (xv, wv, bv, gyv) = (
            x.to_f64_vec(),
            wt.to_f64_vec(),
            b.to_f64_vec(),
            gy.to_f64_vec(),
        );
        let (mut ry, rgx, rgw) = common::conv2d_reference(&xv, &wv, &gyv, xs, ws, (1, 1));
        for (i, v) in ry.iter_mut().enumerate() {
            *v += bv[i / (h * w) % cout];
        }
        let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
        let (mut dy, dgx, dgw) =
            common::conv2d_reference(&abs(&xv), &abs(&wv), &abs(&gyv), xs, ws, (1, 1));
        for (i, v) in dy.iter_mut().enumerate() {
            *v += bv[i / (h * w) % cout].abs();
        }
        let kernel = |co: usize, ci: usize| wv[(co * cin + ci) * 9..][..9].to_vec();
        let flipped = |ci: usize, co: usize| {
            let mut k = kernel(co, ci);
            k.reverse();
            k
        };
        let my = forward_magnitudes(&xv, &kernel, &bv, xs, cout);
        let mgx = forward_magnitudes(&gyv, &flipped, &[], [n, cout, h, w], cin);
        let mgw = weight_grad_magnitudes(&xv, &gyv, xs, cout);
        let tiles = h.div_ceil(2) * w.div_ceil(2);
        let g64 = |k: usize| {
            let ku = k as f64 * f64::EPSILON / 2.0;
            ku / (1.0 - ku)
        };
        for (name, got, want, mag, k, direct, kd) in [
            ("y", y.to_f64_vec(), ry, my, cin + 12, dy, 9 * cin + 1),
            (
                "gx",
                grads.get(&x).unwrap().to_f64_vec(),
                rgx,
                mgx,
                cout + 11,
                dgx,
                9 * cout,
            ),
            (
                "gw",
                grads.get(&wt).unwrap().to_f64_vec(),
                rgw,
                mgw,
                n * tiles + 9,
                dgw,
                n * h * w,
            ),
        ] {
            assert_eq!(got.len(), want.len(), "{what}: {name}");
            for (i, (((a, b), m), d)) in got.iter().zip(&want).zip(&mag).zip(&direct).enumerate() {
                let tol = gamma32(k) * m + g64(kd) * d;
                assert!(
                    (a - b).abs() <= tol,
                    "{what}: {name}[{i}] = {a:e}, reference {b:e}, bound {tol:e}"
                );
            }
        }
    }
}
