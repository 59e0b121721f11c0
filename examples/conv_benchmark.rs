//! Per-op convolution benchmark at ResNet-18 (CIFAR) and DenseNet-BC-100 shapes: median seconds
//! and GFLOP/s of the forward, the input gradient and the weight gradient of each shape, beside a
//! large sgemm measured in the same run (the GEMM kernel's reachable speed on this machine).
//!
//! `cargo run --release --example conv_benchmark` (batch 64, fp32, CPU, the rayon pool's threads:
//! set `RAYON_NUM_THREADS`); `-- --json` prints one JSON object per row, which
//! `scripts/torch_conv_benchmark.py --shapes FILE` reads to time PyTorch on the same shapes
//! (`scripts/compare_conv.sh` runs both and prints one table). `-- --only r1,d-b1-3x3` picks
//! shapes by name, `-- --set resnet` or `densenet` one family.
//!
//! Work per pass: `2 * n * cout * cin * kh * kw * hout * wout` flops (the same count for the
//! forward and each gradient, zero padding included), which is what PyTorch's convolutions are
//! credited with too.

use clap::{Parser, ValueEnum};
use std::process::ExitCode;
use std::time::Instant;
use tape::ops::{self, Conv2dOptions};
use tape::{DType, Device, Tape, Tensor};

/// One convolution shape: `cin -> cout`, a `k x k` kernel over `h x h` images.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Short name (`r*` ResNet-18, `d*` DenseNet-BC-100).
    name: &'static str,
    cin: usize,
    cout: usize,
    h: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// How many convolutions of this shape one training step of the network runs.
    count: usize,
}

/// ResNet-18 with the CIFAR stem on 32x32 images: every distinct convolution.
const RESNET: &[Shape] = &[
    shape("r-stem", 3, 64, 32, 3, 1, 1, 1),
    shape("r1", 64, 64, 32, 3, 1, 1, 4),
    shape("r2-down", 64, 128, 32, 3, 2, 1, 1),
    shape("r2", 128, 128, 16, 3, 1, 1, 3),
    shape("r2-skip", 64, 128, 32, 1, 2, 0, 1),
    shape("r3-down", 128, 256, 16, 3, 2, 1, 1),
    shape("r3", 256, 256, 8, 3, 1, 1, 3),
    shape("r3-skip", 128, 256, 16, 1, 2, 0, 1),
    shape("r4-down", 256, 512, 8, 3, 2, 1, 1),
    shape("r4", 512, 512, 4, 3, 1, 1, 3),
    shape("r4-skip", 256, 512, 8, 1, 2, 0, 1),
];

/// DenseNet-BC-100 (growth 12) on 32x32 images: a bottleneck (1x1 to 48 channels) and a 3x3
/// (48 to 12) of a middle layer of each block, and the transitions (counts: the layers of the
/// network the shape stands for).
const DENSENET: &[Shape] = &[
    shape("d-stem", 3, 24, 32, 3, 1, 1, 1),
    shape("d-b1-1x1", 120, 48, 32, 1, 1, 0, 16),
    shape("d-b1-3x3", 48, 12, 32, 3, 1, 1, 16),
    shape("d-t1", 216, 108, 32, 1, 1, 0, 1),
    shape("d-b2-1x1", 204, 48, 16, 1, 1, 0, 16),
    shape("d-b2-3x3", 48, 12, 16, 3, 1, 1, 16),
    shape("d-t2", 300, 150, 16, 1, 1, 0, 1),
    shape("d-b3-1x1", 246, 48, 8, 1, 1, 0, 16),
    shape("d-b3-3x3", 48, 12, 8, 3, 1, 1, 16),
];

#[allow(clippy::too_many_arguments)]
const fn shape(
    name: &'static str,
    cin: usize,
    cout: usize,
    h: usize,
    k: usize,
    stride: usize,
    pad: usize,
    count: usize,
) -> Shape {
    Shape {
        name,
        cin,
        cout,
        h,
        k,
        stride,
        pad,
        count,
    }
}

impl Shape {
    fn hout(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Flops of one pass over a batch of `n`.
    fn flops(&self, n: usize) -> f64 {
        let macs = n * self.cout * self.cin * self.k * self.k * self.hout() * self.hout();
        2.0 * macs as f64
    }
}

/// A pass of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Pass {
    /// The output.
    Forward,
    /// The input's gradient alone.
    InputGrad,
    /// The weight's gradient alone.
    WeightGrad,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "input_grad",
            Pass::WeightGrad => "weight_grad",
        }
    }
}

/// Which shapes to run.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Set {
    /// ResNet-18 and DenseNet-BC-100.
    All,
    /// ResNet-18 (CIFAR stem).
    Resnet,
    /// DenseNet-BC-100.
    Densenet,
}

#[derive(Parser, Debug)]
#[command(about = "Per-op convolution times at ResNet-18 and DenseNet-BC-100 shapes")]
struct Args {
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Measured runs per (shape, pass), after one warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Which family of shapes.
    #[arg(long, value_enum, default_value = "all")]
    set: Set,
    /// Only these shapes (by name, comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passes to time.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "forward,input-grad,weight-grad"
    )]
    passes: Vec<Pass>,
    /// Side of the square sgemm measured as the reference speed.
    #[arg(long, default_value_t = 2048)]
    sgemm: usize,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// The median of `times` (sorted in place).
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median seconds of `run` over `iters` calls after one warm-up call; `run` returns the
/// seconds of the part it times.
fn time(iters: usize, mut run: impl FnMut() -> Result<f64, String>) -> Result<f64, String> {
    run()?;
    let mut times = (0..iters.max(1))
        .map(|_| run())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(&mut times))
}

/// Seconds of `f`, with its result.
fn timed<R>(f: impl FnOnce() -> R) -> (f64, R) {
    let t = Instant::now();
    let r = f();
    (t.elapsed().as_secs_f64(), r)
}

/// Median seconds of a square `m x m x m` fp32 matrix product.
fn sgemm_seconds(dev: &Device, m: usize, iters: usize) -> Result<f64, String> {
    let a = Tensor::randn(&[m, m], DType::F32, dev, 1).map_err(|e| e.to_string())?;
    let b = Tensor::randn(&[m, m], DType::F32, dev, 2).map_err(|e| e.to_string())?;
    time(iters, || {
        let mut tape = Tape::no_grad();
        let (s, r) = timed(|| ops::matmul(&mut tape, &a, &b));
        r.map_err(|e| e.to_string())?;
        Ok(s)
    })
}

/// Median seconds of one pass of `s` over a batch of `n`.
fn pass_seconds(
    dev: &Device,
    s: &Shape,
    n: usize,
    pass: Pass,
    iters: usize,
) -> Result<f64, String> {
    let err = |e: tape::Error| e.to_string();
    let opts = Conv2dOptions {
        stride: s.stride,
        padding: s.pad,
    };
    let x = Tensor::randn(&[n, s.cin, s.h, s.h], DType::F32, dev, 3).map_err(err)?;
    let w = Tensor::randn(&[s.cout, s.cin, s.k, s.k], DType::F32, dev, 4).map_err(err)?;
    let (x, w) = match pass {
        Pass::Forward => (x, w),
        Pass::InputGrad => (x.with_requires_grad(true), w),
        Pass::WeightGrad => (x, w.with_requires_grad(true)),
    };
    let ho = s.hout();
    let seed = Tensor::randn(&[n, s.cout, ho, ho], DType::F32, dev, 5).map_err(err)?;
    time(iters, || {
        if pass == Pass::Forward {
            let mut tape = Tape::no_grad();
            let (secs, y) = timed(|| ops::conv2d(&mut tape, &x, &w, None, opts));
            y.map_err(err)?;
            return Ok(secs);
        }
        let mut tape = Tape::recording();
        let y = ops::conv2d(&mut tape, &x, &w, None, opts).map_err(err)?;
        let seed = seed.deep_copy().map_err(err)?;
        let (secs, grads) = timed(|| tape.backward_from(&y, seed));
        grads.map_err(err)?;
        Ok(secs)
    })
}

/// One measured row.
struct Row<'a> {
    shape: &'a Shape,
    pass: Pass,
    median_s: f64,
    gflops: f64,
}

fn print_row(r: &Row, n: usize, sgemm_gflops: f64, json: bool) {
    let s = r.shape;
    let frac = r.gflops / sgemm_gflops;
    if json {
        println!(
            "{{\"name\":\"{}\",\"n\":{n},\"cin\":{},\"cout\":{},\"h\":{},\"k\":{},\"stride\":{},\"pad\":{},\"count\":{},\"pass\":\"{}\",\"median_s\":{:.6},\"gflops\":{:.2},\"sgemm_gflops\":{:.2},\"frac_sgemm\":{:.4}}}",
            s.name, s.cin, s.cout, s.h, s.k, s.stride, s.pad, s.count, r.pass.name(), r.median_s, r.gflops, sgemm_gflops, frac
        );
    } else {
        println!(
            "{:<10} {:>4}->{:<4} {:>2}x{:<2} k{} s{} {:<12} {:>9.2} ms {:>7.1} GFLOP/s {:>5.1}%",
            s.name,
            s.cin,
            s.cout,
            s.h,
            s.h,
            s.k,
            s.stride,
            r.pass.name(),
            r.median_s * 1e3,
            r.gflops,
            100.0 * frac
        );
    }
}

fn run(args: &Args) -> Result<(), String> {
    let dev = Device::cpu();
    let m = args.sgemm;
    let sgemm_s = sgemm_seconds(&dev, m, args.iters)?;
    let sgemm_gflops = 2.0 * (m * m * m) as f64 / sgemm_s / 1e9;
    if args.json {
        println!("{{\"name\":\"sgemm\",\"m\":{m},\"median_s\":{sgemm_s:.6},\"gflops\":{sgemm_gflops:.2}}}");
    } else {
        println!(
            "batch {}, fp32; sgemm {m}^3: {:.2} ms, {sgemm_gflops:.1} GFLOP/s",
            args.batch,
            sgemm_s * 1e3
        );
    }
    let shapes = match args.set {
        Set::All => [RESNET, DENSENET].concat(),
        Set::Resnet => RESNET.to_vec(),
        Set::Densenet => DENSENET.to_vec(),
    };
    let wanted = |s: &Shape| args.only.is_empty() || args.only.iter().any(|o| o == s.name);
    for s in shapes.iter().filter(|s| wanted(s)) {
        for &pass in &args.passes {
            let median_s = pass_seconds(&dev, s, args.batch, pass, args.iters)?;
            let gflops = s.flops(args.batch) / median_s / 1e9;
            let row = Row {
                shape: s,
                pass,
                median_s,
                gflops,
            };
            print_row(&row, args.batch, sgemm_gflops, args.json);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
