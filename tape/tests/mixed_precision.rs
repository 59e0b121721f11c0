//! The 16-bit dtypes: storage, casts, file I/O, every op in bf16 and f16 against its f32 result,
//! f32 accumulation, and the precision policy's casts.
//!
//! How the op tests can be exact: the f32 run gets the 16-bit inputs' values converted to f32
//! (exactly), so both runs' kernels see the same f32 numbers; a 16-bit op computes in f32 and
//! rounds its result once, so its output must equal the f32 output rounded to the 16-bit dtype
//! bit for bit, and so must its gradients (the output gradient is a 16-bit value too). That
//! implies the usual bound, `|y16 - y32| <= u |y32|` with the dtype's unit roundoff `u` (bf16
//! 2^-8, f16 2^-11), which `assert_rounded` checks as well, so a failure says which one broke.

use tape::dtype::{bf16, f16};
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Labels, Precision, Scalar, Tape, Tensor};

const LOW: [DType; 2] = [DType::BF16, DType::F16];

/// The one CPU device of this test binary (tensors of two `Device::cpu()` calls do not mix).
fn cpu() -> Device {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEV.get_or_init(Device::cpu).clone()
}

/// Random values of `shape` that `low` represents exactly, as an f32 tensor and a `low` one.
fn pair(shape: &[usize], low: DType, seed: u64) -> (Tensor, Tensor) {
    let x16 = Tensor::randn(shape, low, &cpu(), seed).unwrap();
    let x32 = x16.to_dtype(DType::F32).unwrap();
    (x32, x16)
}

/// Asserts `got` (a `low` tensor) equals `want` (f32) rounded to `low`, bit for bit, and
/// within the unit-roundoff bound.
fn assert_rounded(what: &str, got: &Tensor, want: &Tensor, low: DType) {
    assert_eq!(got.dtype(), low, "{what}: dtype");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let rounded = want.to_dtype(low).unwrap().to_f64_vec();
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let u = low.unit_roundoff();
    for i in 0..g.len() {
        assert!(
            (g[i] - w[i]).abs() <= u * w[i].abs() || g[i] == w[i],
            "{what}[{i}]: {} vs f32 {} beyond the unit roundoff {u:e}",
            g[i],
            w[i]
        );
        assert_eq!(
            g[i].to_bits(),
            rounded[i].to_bits(),
            "{what}[{i}]: not the f32 result rounded once"
        );
    }
}

/// Runs `f` on the f32 and on the `low` copies of inputs of `shapes` (leaves that want
/// gradients), backpropagates the same (16-bit-exact) output gradient through both, and checks
/// the output and every input gradient with [`assert_rounded`].
fn check_op(name: &str, shapes: &[&[usize]], f: impl Fn(&mut Tape, &[Tensor]) -> Tensor) {
    for low in LOW {
        let (mut xs32, mut xs16) = (Vec::new(), Vec::new());
        for (i, s) in shapes.iter().enumerate() {
            let (a, b) = pair(s, low, 7 + i as u64);
            xs32.push(a.with_requires_grad(true));
            xs16.push(b.with_requires_grad(true));
        }
        let mut tape32 = Tape::recording();
        let y32 = f(&mut tape32, &xs32);
        let mut tape16 = Tape::recording();
        let y16 = f(&mut tape16, &xs16);
        assert_rounded(&format!("{name} {low:?} output"), &y16, &y32, low);
        let (g32, g16) = pair(y32.shape(), low, 99);
        let grads32 = tape32.backward_from(&y32, g32).unwrap();
        let grads16 = tape16.backward_from(&y16, g16).unwrap();
        for (i, (a, b)) in xs32.iter().zip(&xs16).enumerate() {
            let (Some(ga), Some(gb)) = (grads32.get(a), grads16.get(b)) else {
                panic!("{name} {low:?}: input {i} got no gradient");
            };
            assert_rounded(&format!("{name} {low:?} grad {i}"), gb, ga, low);
        }
    }
}

#[test]
fn dtypes_have_their_sizes_and_are_charged_by_size() {
    assert_eq!(DType::BF16.size_in_bytes(), 2);
    assert_eq!(DType::F16.size_in_bytes(), 2);
    // A device of its own: the other tests of this binary allocate on `cpu()` meanwhile.
    let dev = Device::cpu();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let before = dev.memory().current();
        let t = Tensor::zeros(&[1000], dtype, &dev).unwrap();
        assert_eq!(
            dev.memory().current() - before,
            1000 * dtype.size_in_bytes()
        );
        assert_eq!(t.size_in_bytes(), 1000 * dtype.size_in_bytes());
    }
}

/// `f64` values (`Tensor::from_f64`, `to_dtype`, the `f64` conversions) round to bf16 and f16
/// once, to nearest (ties to even), checked against the nearest of the three 16-bit neighbours
/// of a first guess, chosen by exact `f64` differences. Among the values: `f32`s just past a
/// 16-bit halfway point (the `half` crate's `bf16::from_f64` rounds `-11.781251907`, bits
/// `0xc13c8002`, down to `-11.75`), `f32`s on one, and `f64`s with bits below `f32`'s.
#[test]
fn f64_values_round_once_to_16_bits() {
    fn nearest<T: Scalar>(x: f64, bits: impl Fn(T) -> u16, of_bits: impl Fn(u16) -> T) -> u16 {
        let guess = bits(T::of_f32(x as f32));
        let cands = [guess.wrapping_sub(1), guess, guess.wrapping_add(1)];
        let key = |b: u16| ((x - of_bits(b).f64()).abs(), b & 1);
        cands
            .into_iter()
            .filter(|&b| of_bits(b).f64().is_finite() && (of_bits(b).f64() >= 0.0) == (x >= 0.0))
            .min_by(|&a, &b| key(a).partial_cmp(&key(b)).unwrap())
            .unwrap()
    }
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut checked = 0;
    for i in 0..200_000 {
        let r = next();
        // |x| in [2^-10, 2^10): normal in both dtypes.
        let mag = 1.0 + (r >> 12) as f64 / (1u64 << 52) as f64;
        let x = mag * 2f64.powi((r % 20) as i32 - 10) * if r & 1 == 1 { -1.0 } else { 1.0 };
        let x = match i % 3 {
            0 => x,
            // An f32 just past, or on, a 16-bit halfway point.
            1 => f32::from_bits(((x as f32).to_bits() & !0xffff) | 0x8000 | (r as u32 & 3)) as f64,
            _ => x as f32 as f64,
        };
        let b = nearest(x, bf16::to_bits, bf16::from_bits);
        assert_eq!(bf16::of(x).to_bits(), b, "bf16 of {x:e}");
        let h = nearest(x, f16::to_bits, f16::from_bits);
        assert_eq!(f16::of(x).to_bits(), h, "f16 of {x:e}");
        checked += 1;
    }
    assert_eq!(checked, 200_000);
    let t = Tensor::from_f64(&[-11.781251907348633], &[1], DType::BF16, &cpu()).unwrap();
    assert_eq!(t.to_f64_vec(), vec![-11.8125]);
}

#[test]
fn cast_rounds_to_nearest_even_and_its_gradient_comes_back_in_the_source_dtype() {
    let dev = cpu();
    // 1 + 2^-8 is halfway between two bf16 neighbours: ties to even gives 1; 1 + 3 * 2^-9 is
    // above the halfway point: rounds up to 1 + 2^-7.
    let vals = [
        1.0,
        1.0 + 2f64.powi(-8),
        1.0 + 3.0 * 2f64.powi(-9),
        -2.5,
        65504.0,
        1e-8,
    ];
    let x = Tensor::from_f64(&vals, &[6], DType::F32, &dev)
        .unwrap()
        .with_requires_grad(true);
    let mut tape = Tape::recording();
    let y = ops::cast(&mut tape, &x, DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want: Vec<f64> = vals
        .iter()
        .map(|&v| bf16::from_f32(v as f32).to_f64())
        .collect();
    assert_eq!(y.to_f64_vec(), want);
    assert_eq!(y.to_f64_vec()[1], 1.0, "ties to even");
    assert_eq!(y.to_f64_vec()[2], 1.0 + 2f64.powi(-7));
    let f = ops::cast(&mut Tape::no_grad(), &x, DType::F16).unwrap();
    let want16: Vec<f64> = vals
        .iter()
        .map(|&v| f16::from_f32(v as f32).to_f64())
        .collect();
    assert_eq!(f.to_f64_vec(), want16);
    let g = Tensor::from_f64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[6], DType::BF16, &dev).unwrap();
    let grads = tape.backward_from(&y, g).unwrap();
    let gx = grads.get(&x).unwrap();
    assert_eq!(gx.dtype(), DType::F32, "the f32 leaf gets an f32 gradient");
    assert_eq!(gx.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // A cast to the tensor's own dtype is the tensor itself.
    let same = ops::cast(&mut Tape::no_grad(), &x, DType::F32).unwrap();
    assert!(same.shares_buffer(&x));
}

#[test]
fn sixteen_bit_values_survive_f32_and_back_exactly() {
    for low in LOW {
        let (x32, x16) = pair(&[4096], low, 3);
        let back = ops::cast(&mut Tape::no_grad(), &x32, low).unwrap();
        assert_eq!(back.to_f64_vec(), x16.to_f64_vec(), "{low:?}");
    }
}

#[test]
fn safetensors_files_hold_bf16_and_f16_tensors() {
    let dir = std::env::temp_dir().join(format!("tape-mp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    let (_, b) = pair(&[3, 5], DType::BF16, 1);
    let (_, h) = pair(&[7], DType::F16, 2);
    tape::nn::save_tensors(&path, &[("b".into(), b.clone()), ("h".into(), h.clone())]).unwrap();
    let back = tape::nn::load_tensors(&path).unwrap();
    assert_eq!(back["b"].shape, vec![3, 5]);
    assert_eq!(back["b"].values, b.to_f64_vec());
    assert_eq!(back["h"].values, h.to_f64_vec());
    // The file stores them as 16-bit: 2 bytes per element plus the header.
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(len < 200 + 2 * (15 + 7), "{len} bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sums_accumulate_in_f32() {
    // 1024 ones: a bf16 accumulator stops at 256 (256 + 1 rounds back to 256), an f16 one at
    // 2048; f32 accumulation gives 1024 exactly, which both dtypes represent.
    let dev = cpu();
    for low in LOW {
        let ones = Tensor::ones(&[1, 1024], low, &dev).unwrap();
        let col = Tensor::ones(&[1, 1024], low, &dev).unwrap();
        let y = ops::linear(&mut Tape::no_grad(), &ones, &col, None).unwrap();
        assert_eq!(y.to_f64_vec(), vec![1024.0], "{low:?} linear");
        let big = Tensor::ones(&[4096], low, &dev).unwrap();
        let s = ops::sum(&mut Tape::no_grad(), &big).unwrap();
        assert_eq!(s.to_f64_vec(), vec![4096.0], "{low:?} sum");
        let x = Tensor::ones(&[1, 1024, 2, 2], low, &dev).unwrap();
        let w = Tensor::ones(&[1, 1024, 1, 1], low, &dev).unwrap();
        let c = ops::conv2d(&mut Tape::no_grad(), &x, &w, None, Conv2dOptions::default()).unwrap();
        assert_eq!(c.to_f64_vec(), vec![1024.0; 4], "{low:?} conv2d");
    }
}

/// The CPU's bf16 matrix units are switched process-wide: the tests that switch them hold this.
static MATRIX_UNITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with the bf16 matrix units (where the CPU has them) switched `on`.
fn with_matrix_units<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let _held = MATRIX_UNITS.lock().unwrap_or_else(|e| e.into_inner());
    let was = tape::simd::set_bf16_matrix_units(on);
    let r = f();
    tape::simd::set_bf16_matrix_units(was);
    r
}

/// The convolutions the weighted-op tests run: (name, input shapes, op, the longest sum of
/// products behind any output or gradient element).
#[allow(clippy::type_complexity)]
fn weighted_cases() -> Vec<(
    &'static str,
    Vec<Vec<usize>>,
    Box<dyn Fn(&mut Tape, &[Tensor]) -> Tensor>,
    usize,
)> {
    let pad1 = Conv2dOptions {
        stride: 1,
        padding: 1,
    };
    let strided = Conv2dOptions {
        stride: 2,
        padding: 1,
    };
    vec![
        (
            "conv2d",
            vec![vec![2, 3, 6, 6], vec![4, 3, 3, 3], vec![4]],
            Box::new(move |t, x| ops::conv2d(t, &x[0], &x[1], Some(&x[2]), pad1).unwrap()),
            2 * 36,
        ),
        (
            "conv2d 1x1",
            vec![vec![2, 5, 4, 4], vec![3, 5, 1, 1]],
            Box::new(|t, x| ops::conv2d(t, &x[0], &x[1], None, Conv2dOptions::default()).unwrap()),
            2 * 16,
        ),
        // 3x3, padding 1 (on the bf16 matrix units: a padded grid 11 wide, an odd count of
        // channels, so pairs of the sums' terms straddle two taps; 40 output channels, one
        // and a quarter tile slabs).
        (
            "conv2d 3x3, odd grid",
            vec![vec![3, 21, 9, 9], vec![40, 21, 3, 3], vec![40]],
            Box::new(move |t, x| ops::conv2d(t, &x[0], &x[1], Some(&x[2]), pad1).unwrap()),
            3 * 81,
        ),
        (
            "conv2d 3x3, wide",
            vec![vec![2, 34, 16, 16], vec![48, 34, 3, 3]],
            Box::new(move |t, x| ops::conv2d(t, &x[0], &x[1], None, pad1).unwrap()),
            9 * 48,
        ),
        // 11 images of 32x32: a 16-bit convolution runs 8 images at a time (8 + 3).
        (
            "conv2d 3x3, 11 images",
            vec![vec![11, 2, 32, 32], vec![3, 2, 3, 3]],
            Box::new(move |t, x| ops::conv2d(t, &x[0], &x[1], None, strided).unwrap()),
            11 * 16 * 16,
        ),
        (
            "conv2d 1x1, 11 images",
            vec![vec![11, 3, 32, 32], vec![2, 3, 1, 1]],
            Box::new(|t, x| ops::conv2d(t, &x[0], &x[1], None, Conv2dOptions::default()).unwrap()),
            11 * 32 * 32,
        ),
    ]
}

#[test]
fn weighted_ops_in_16_bit_are_the_f32_results_rounded_once() {
    // On the f32 kernels (matrix units off). A 16-bit convolution's weight gradient adds its
    // chunks' f32 sums, an order that differs from the f32 kernel's image-by-image sum by f32
    // rounding (2^-24 relative per addition); rounded to 16 bits the two agree unless a sum
    // lies that close to a 16-bit rounding boundary, which none of these seeds' sums does.
    with_matrix_units(false, || {
        for (name, shapes, f, _) in weighted_cases() {
            let shapes: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
            check_op(name, &shapes, f);
        }
    });
    check_op("linear", &[&[5, 7], &[3, 7], &[3]], |t, x| {
        ops::linear(t, &x[0], &x[1], Some(&x[2])).unwrap()
    });
    check_op("matmul", &[&[2, 4, 5], &[2, 5, 3]], |t, x| {
        ops::matmul(t, &x[0], &x[1]).unwrap()
    });
}

/// On the bf16 matrix units a convolution's f32 sums run in another order than the f32
/// kernel's, so its bf16 result is the f32 result rounded once only up to that order. The
/// bound: both orders are within `gamma_K * S` of the exact sum (`S` the sum of the products'
/// magnitudes, `K` terms, `gamma_K = K u32 / (1 - K u32)`), so they differ by at most
/// `d = 2 gamma_K S`, and rounding to bf16 adds `u |y|`: `|y16 - y32| <= u |y32| + (1 + u) d`.
/// `S` comes from the same op on the inputs' magnitudes (its f32 rounding is far below `d`).
#[test]
fn weighted_ops_on_bf16_matrix_units_are_within_f32_sum_order_of_the_f32_results() {
    if !tape::simd::bf16_matrix_units() {
        eprintln!("skipped: this CPU (or OS) gives no bf16 matrix units (AMX)");
        return;
    }
    let low = DType::BF16;
    let abs = |t: &Tensor| {
        let v: Vec<f64> = t.to_f64_vec().iter().map(|v| v.abs()).collect();
        Tensor::from_f64(&v, t.shape(), DType::F32, &cpu()).unwrap()
    };
    with_matrix_units(true, || {
        for (name, shapes, f, terms) in weighted_cases() {
            let (mut xs32, mut xs16, mut mags) = (Vec::new(), Vec::new(), Vec::new());
            for (i, s) in shapes.iter().enumerate() {
                let (a, b) = pair(s, low, 7 + i as u64);
                mags.push(abs(&a).with_requires_grad(true));
                xs32.push(a.with_requires_grad(true));
                xs16.push(b.with_requires_grad(true));
            }
            let (mut t32, mut t16, mut tm) =
                (Tape::recording(), Tape::recording(), Tape::recording());
            let (y32, y16, ym) = (f(&mut t32, &xs32), f(&mut t16, &xs16), f(&mut tm, &mags));
            let (g32, g16) = pair(y32.shape(), low, 99);
            let gm = abs(&g32);
            let gamma = terms as f64 * DType::F32.unit_roundoff();
            let gamma = gamma / (1.0 - gamma);
            let u = low.unit_roundoff();
            let check = |what: String, got: &Tensor, want: &Tensor, mag: &Tensor| {
                let (g, w, m) = (got.to_f64_vec(), want.to_f64_vec(), mag.to_f64_vec());
                for i in 0..g.len() {
                    let bound = u * w[i].abs() + (1.0 + u) * 2.0 * gamma * m[i];
                    assert!(
                        (g[i] - w[i]).abs() <= bound,
                        "{what}[{i}]: {} vs f32 {} (bound {bound:e})",
                        g[i],
                        w[i]
                    );
                }
            };
            check(format!("{name} output"), &y16, &y32, &ym);
            let grads32 = t32.backward_from(&y32, g32).unwrap();
            let grads16 = t16.backward_from(&y16, g16).unwrap();
            let gradsm = tm.backward_from(&ym, gm).unwrap();
            for (i, ((a, b), m)) in xs32.iter().zip(&xs16).zip(&mags).enumerate() {
                let (ga, gb, gm) = (
                    grads32.get(a).unwrap(),
                    grads16.get(b).unwrap(),
                    gradsm.get(m).unwrap(),
                );
                check(format!("{name} grad {i}"), gb, ga, gm);
            }
        }
    });
}

/// A 16-bit convolution's weight gradient is summed over chunks of 8 images (32x32), each from
/// `f32` copies of that chunk of the input and output gradient: the backward never holds an `f32`
/// copy of the whole input (which would take `4 * numel(x)` bytes, twice the 16-bit input).
#[test]
fn weight_gradient_in_16_bit_never_copies_the_whole_input_to_f32() {
    let dev = Device::cpu();
    let (n, cin, cout) = (64, 16, 8);
    for low in LOW {
        let x = Tensor::randn(&[n, cin, 32, 32], low, &dev, 1).unwrap();
        let w = Tensor::randn(&[cout, cin, 1, 1], low, &dev, 2)
            .unwrap()
            .with_requires_grad(true);
        let mut tape = Tape::recording();
        let y = ops::conv2d(&mut tape, &x, &w, None, Conv2dOptions::default()).unwrap();
        let g = Tensor::randn(y.shape(), low, &dev, 3).unwrap();
        let before = dev.memory().current();
        dev.memory().reset_peak();
        let grads = tape.backward_from(&y, g).unwrap();
        assert!(grads.get(&w).is_some(), "{low:?}: weight gradient");
        let added = dev.memory().peak() - before;
        let whole_copy = 4 * x.numel();
        // Per chunk: f32 copies of 8 of 64 images of x and of g (1/8 of each), the kernel's
        // column-free workspace and a partial gradient: well under a quarter of a whole copy.
        assert!(
            added < whole_copy / 4,
            "{low:?}: backward added {added} bytes; an f32 copy of x alone is {whole_copy}"
        );
    }
}

#[test]
fn element_wise_and_pooling_ops_in_16_bit_are_the_f32_results_rounded_once() {
    let s: &[usize] = &[2, 3, 4, 4];
    check_op("relu", &[s], |t, x| ops::relu(t, &x[0]).unwrap());
    check_op("add", &[s, s], |t, x| ops::add(t, &x[0], &x[1]).unwrap());
    check_op("mul", &[s, s], |t, x| ops::mul(t, &x[0], &x[1]).unwrap());
    check_op("scale", &[s], |t, x| ops::scale(t, &x[0], 0.3).unwrap());
    check_op("gelu", &[s], |t, x| ops::gelu(t, &x[0]).unwrap());
    check_op("avg_pool2d", &[s], |t, x| {
        ops::avg_pool2d(t, &x[0], 2, 2, 0).unwrap()
    });
    check_op("max_pool2d", &[s], |t, x| {
        ops::max_pool2d(t, &x[0], 3, 2, 1).unwrap()
    });
    check_op("global_avg_pool", &[s], |t, x| {
        ops::global_avg_pool(t, &x[0]).unwrap()
    });
    check_op("concat", &[s, &[2, 5, 4, 4]], |t, x| {
        ops::concat(t, &[&x[0], &x[1]]).unwrap()
    });
    check_op("dropout", &[s], |t, x| ops::dropout(t, &x[0], 0.3).unwrap());
    check_op("narrow", &[&[3, 9]], |t, x| {
        ops::narrow(t, &x[0], 1, 2, 4).unwrap()
    });
    check_op("permute", &[&[2, 3, 4]], |t, x| {
        ops::permute(t, &x[0], &[2, 0, 1]).unwrap()
    });
    check_op("reshape", &[&[2, 3, 4]], |t, x| {
        ops::reshape(t, &x[0], &[6, 4]).unwrap()
    });
    check_op("sum", &[&[3, 9]], |t, x| ops::sum(t, &x[0]).unwrap());
    check_op("mean", &[&[3, 9]], |t, x| ops::mean(t, &x[0]).unwrap());
    check_op("embedding", &[&[10, 4]], |t, x| {
        ops::embedding(t, &x[0], &[3, 1, 3, 9], &[2, 2]).unwrap()
    });
    check_op("cross_entropy", &[&[4, 6]], |t, x| {
        ops::cross_entropy(t, &x[0], &[0, 5, 2, 2]).unwrap()
    });
}

#[test]
fn normalisations_in_16_bit_are_the_f32_results_rounded_once() {
    let dev = cpu();
    // Batch norm: 16-bit input, f32 parameters and running statistics (each run its own).
    for fused in [false, true] {
        for low in LOW {
            let (x32, x16) = pair(&[4, 3, 5, 5], low, 11);
            let w = Tensor::rand_uniform(&[3], 0.5, 1.5, DType::F32, &dev, 12).unwrap();
            let b = Tensor::randn(&[3], DType::F32, &dev, 13).unwrap();
            let run = |x: &Tensor| {
                let x = x.clone().with_requires_grad(true);
                let (w, b) = (
                    w.detach().with_requires_grad(true),
                    b.detach().with_requires_grad(true),
                );
                let running = RunningStats::new(3, DType::F32, &dev).unwrap();
                let mut tape = Tape::recording();
                let opts = BatchNormOptions::default();
                let y = match fused {
                    true => ops::batch_norm_relu(&mut tape, &[&x], &w, &b, &running, opts),
                    false => ops::batch_norm2d(&mut tape, &x, &w, &b, &running, opts),
                }
                .unwrap();
                let (_, g16) = pair(y.shape(), low, 14);
                let g = g16.to_dtype(y.dtype()).unwrap();
                let grads = tape.backward_from(&y, g).unwrap();
                let gx = grads.get(&x).unwrap().clone();
                let (gw, gb) = (
                    grads.get(&w).unwrap().clone(),
                    grads.get(&b).unwrap().clone(),
                );
                (y, gx, gw, gb, running.mean().to_f64_vec())
            };
            let (y32, gx32, gw32, gb32, m32) = run(&x32);
            let (y16, gx16, gw16, gb16, m16) = run(&x16);
            let what = format!("batch norm (fused {fused}) {low:?}");
            assert_rounded(&format!("{what} output"), &y16, &y32, low);
            assert_rounded(&format!("{what} input grad"), &gx16, &gx32, low);
            assert_eq!(gw16.dtype(), DType::F32, "{what}: f32 weight, f32 gradient");
            assert_eq!(gw16.to_f64_vec(), gw32.to_f64_vec(), "{what} weight grad");
            assert_eq!(gb16.to_f64_vec(), gb32.to_f64_vec(), "{what} bias grad");
            assert_eq!(
                m16, m32,
                "{what}: running mean from the same f32 statistics"
            );
        }
    }
    check_op("layer_norm", &[&[3, 8], &[8], &[8]], |t, x| {
        ops::layer_norm(t, &x[0], Some(&x[1]), Some(&x[2]), 1e-5).unwrap()
    });
}

#[test]
fn the_bf16_policy_casts_as_autocast_does() {
    let dev = cpu();
    let x = Tensor::randn(&[2, 3, 5, 5], DType::F32, &dev, 1).unwrap();
    let w = Tensor::randn(&[4, 3, 3, 3], DType::F32, &dev, 2)
        .unwrap()
        .with_requires_grad(true);
    let lw = Tensor::randn(&[6, 4], DType::F32, &dev, 3)
        .unwrap()
        .with_requires_grad(true);
    let mut tape = Tape::recording().with_precision(Precision::Bf16);
    assert_eq!(tape.precision(), Precision::Bf16);
    let y = ops::conv2d(&mut tape, &x, &w, None, Conv2dOptions::default()).unwrap();
    assert_eq!(y.dtype(), DType::BF16, "convolution: low precision");
    let r = ops::relu(&mut tape, &y).unwrap();
    assert_eq!(r.dtype(), DType::BF16, "relu: the input's dtype");
    let p = ops::global_avg_pool(&mut tape, &r).unwrap();
    let logits = ops::linear(&mut tape, &p, &lw, None).unwrap();
    assert_eq!(logits.dtype(), DType::BF16, "linear: low precision");
    let labels = Labels::new(&[1, 4], &dev).unwrap();
    let loss = ops::cross_entropy_labels(&mut tape, &logits, &labels).unwrap();
    assert_eq!(loss.dtype(), DType::F32, "cross-entropy: f32");
    let f32_bias = Tensor::randn(&[2, 6], DType::F32, &dev, 4).unwrap();
    let sum = ops::add(&mut tape, &logits, &f32_bias).unwrap();
    assert_eq!(sum.dtype(), DType::F32, "add: promoted to the wider dtype");
    let grads = tape.backward(&loss).unwrap();
    for (name, p) in [("conv weight", &w), ("linear weight", &lw)] {
        let g = grads.get(p).unwrap();
        assert_eq!(
            g.dtype(),
            DType::F32,
            "{name}: master weights get f32 gradients"
        );
        assert!(
            g.to_f64_vec().iter().any(|&v| v != 0.0),
            "{name}: a real gradient"
        );
    }
    // Under the f32 policy nothing is cast.
    let mut plain = Tape::recording();
    let y = ops::conv2d(&mut plain, &x, &w, None, Conv2dOptions::default()).unwrap();
    assert_eq!(y.dtype(), DType::F32);
}

#[test]
fn the_policy_parses_from_its_flag() {
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("F16".parse::<Precision>().unwrap(), Precision::F16);
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert!("f8".parse::<Precision>().is_err());
    assert_eq!(Precision::Bf16.low_dtype(), Some(DType::BF16));
    assert_eq!(Precision::F32.low_dtype(), None);
}

#[test]
fn a_16_bit_input_to_a_kernel_without_a_16_bit_path_is_a_typed_error() {
    // Scalars of the half types convert exactly to f64 and back.
    assert_eq!(bf16::of(0.5).f64(), 0.5);
    assert_eq!(f16::of(-3.0).f64(), -3.0);
    // Mixing a bf16 input with an f32 weight outside a policy is a dtype error, not a panic.
    let dev = cpu();
    let x = Tensor::zeros(&[1, 1, 2, 2], DType::BF16, &dev).unwrap();
    let w = Tensor::zeros(&[1, 1, 1, 1], DType::F32, &dev).unwrap();
    let e = ops::conv2d(&mut Tape::no_grad(), &x, &w, None, Conv2dOptions::default());
    assert!(matches!(e, Err(tape::Error::DType { .. })), "{e:?}");
}

/// Softmax and log-softmax backward read the op's saved output, which a 16-bit op keeps
/// rounded: their gradients are not the f32 ones rounded once, but within a first-order bound
/// of the output's rounding. With `y' = y (1 + d)`, `|d| <= u`, and `G = max |g|`:
/// softmax `gx = y (g - s)`, `s = sum g y` (`|s| <= G`, `sum y = 1`), moves by at most
/// `u y (|g| + 3G)`; log-softmax `gx = g - exp(y) S`, `S = sum g` (`|S| <= d G` over a row of
/// `d`), with `|y' - y| <= u |y|`, moves by at most `u exp(y) |y| d G` (times 1.01 for the
/// exponential's second-order term); plus the final rounding `u |gx|` and f32's own error,
/// `2^-20 d G`. Outputs are still the f32 ones rounded once.
#[test]
fn softmaxes_in_16_bit_are_within_the_rounding_of_their_saved_output() {
    let (rows, d) = (3, 9);
    for log in [false, true] {
        for low in LOW {
            let run = |x: &Tensor| {
                let x = x.clone().with_requires_grad(true);
                let mut tape = Tape::recording();
                let y = match log {
                    true => ops::log_softmax(&mut tape, &x),
                    false => ops::softmax(&mut tape, &x),
                }
                .unwrap();
                let (_, g16) = pair(y.shape(), low, 5);
                let g = g16.to_dtype(y.dtype()).unwrap();
                let gx = tape
                    .backward_from(&y, g.clone())
                    .unwrap()
                    .get(&x)
                    .unwrap()
                    .clone();
                (y, gx, g.to_f64_vec())
            };
            let (x32, x16) = pair(&[rows, d], low, 4);
            let (y32, gx32, g) = run(&x32);
            let (y16, gx16, _) = run(&x16);
            let what = format!("{} {low:?}", if log { "log_softmax" } else { "softmax" });
            assert_rounded(&format!("{what} output"), &y16, &y32, low);
            let u = low.unit_roundoff();
            let big_g = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let (y, got, want) = (y32.to_f64_vec(), gx16.to_f64_vec(), gx32.to_f64_vec());
            for i in 0..y.len() {
                let moved = match log {
                    true => 1.01 * y[i].exp() * y[i].abs() * d as f64 * big_g,
                    false => y[i] * (g[i].abs() + 3.0 * big_g),
                };
                let tol = u * (moved + want[i].abs()) + 2f64.powi(-20) * d as f64 * big_g;
                assert!(
                    (got[i] - want[i]).abs() <= tol,
                    "{what} grad[{i}]: {} vs {} (tolerance {tol:e})",
                    got[i],
                    want[i]
                );
            }
        }
    }
}
