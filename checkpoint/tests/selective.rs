//! The selective policy keeps what it says and recomputes the rest: a segment of linear,
//! GELU, matmul with a transposed operand, causal softmax, dropout and a residual add gives
//! bitwise the gradients of a plain recorded run under every policy; after the first pass it
//! holds exactly the kept ops' outputs (bytes); and its backward launches exactly the kept
//! ops' forward kernels fewer than a whole recompute does.

use checkpoint::{checkpoint_selective, SelectivePolicy};
use tape::ops::{self, MatmulOptions, SoftmaxOptions};
use tape::{DType, Device, Result, Tape, Tensor};

const N: usize = 6;
const D: usize = 5;

struct Params {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
}

fn params(dev: &Device) -> Params {
    let p = |shape: &[usize], seed| tape::testing::randn_leaf(shape, DType::F64, dev, seed);
    Params {
        w1: p(&[2 * D, D], 1),
        b1: p(&[2 * D], 2),
        w2: p(&[D, 2 * D], 3),
    }
}

/// `x + dropout(softmax_causal(h h^T) h) w2^T` with `h = gelu(x w1^T + b1)`, `[N, D]`.
fn segment(t: &mut Tape, p: &Params, x: &Tensor) -> Result<Tensor> {
    let h = ops::linear(t, x, &p.w1, Some(&p.b1))?; // kept: [N, 2D]
    let h = ops::gelu(t, &h)?;
    let kt = MatmulOptions {
        transpose_a: false,
        transpose_b: true,
    };
    let s = ops::matmul_with(t, &h, &h, kt)?; // kept: [N, N]
    let a = ops::softmax_with(t, &s, SoftmaxOptions { causal: true })?;
    let a = ops::dropout(t, &a, 0.25)?;
    let c = ops::matmul(t, &a, &h)?; // kept: [N, 2D]
    let y = ops::linear(t, &c, &p.w2, None)?; // kept: [N, D]
    ops::add(t, x, &y)
}

/// Bytes of the kept ops' outputs (f64).
const KEPT_BYTES: usize = 8 * (N * 2 * D + N * N + N * 2 * D + N * D);

struct Run {
    grads: Vec<Vec<f64>>,
    /// Bytes the step held after the forward pass, above what it held before.
    held_after_forward: usize,
    backward_launches: u64,
}

fn run(dev: &Device, p: &Params, x: &Tensor, policy: Option<&SelectivePolicy>) -> Run {
    let before = dev.memory().current();
    let mut tape = Tape::recording().with_seed(7);
    let out = match policy {
        Some(policy) => {
            checkpoint_selective(&mut tape, &[x], policy, |t, xs| segment(t, p, &xs[0])).unwrap()
        }
        None => segment(&mut tape, p, x).unwrap(),
    };
    let held_after_forward = dev.memory().current() - before;
    let seed = Tensor::full(out.shape(), 0.5, DType::F64, dev).unwrap();
    let (grads, counts) = dev.count(|| tape.backward_from(&out, seed).unwrap());
    let grads = [x, &p.w1, &p.b1, &p.w2]
        .iter()
        .map(|t| grads.get(t).unwrap().to_f64_vec())
        .collect();
    Run {
        grads,
        held_after_forward,
        backward_launches: counts.launches,
    }
}

#[test]
fn selective_checkpoint_keeps_the_kept_ops_outputs_and_recomputes_the_rest() {
    let dev = Device::cpu();
    let p = params(&dev);
    let x = tape::testing::randn_leaf(&[N, D], DType::F64, &dev, 4);
    let plain = run(&dev, &p, &x, None);
    let matmuls = SelectivePolicy::keep(&["linear", "matmul"]);
    let keep = run(&dev, &p, &x, Some(&matmuls));
    let all = run(&dev, &p, &x, Some(&SelectivePolicy::recompute_all()));
    // Same gradients, bit for bit (dropout replays its mask in the recompute).
    assert_eq!(keep.grads, plain.grads);
    assert_eq!(all.grads, plain.grads);
    // After the first pass: the output (both) plus the kept outputs (selective only).
    let out_bytes = 8 * N * D;
    assert_eq!(all.held_after_forward, out_bytes);
    assert_eq!(keep.held_after_forward, out_bytes + KEPT_BYTES);
    assert!(plain.held_after_forward > keep.held_after_forward);
    // Backward: the whole recompute runs the kept ops' forward kernels, the selective one not.
    let kept_forward_launches = {
        let mut t = Tape::no_grad();
        let h = Tensor::randn(&[N, 2 * D], DType::F64, &dev, 9).unwrap();
        let a = Tensor::randn(&[N, N], DType::F64, &dev, 9).unwrap();
        let kt = MatmulOptions {
            transpose_a: false,
            transpose_b: true,
        };
        let (_, c) = dev.count(|| {
            ops::linear(&mut t, &x, &p.w1, Some(&p.b1)).unwrap();
            ops::matmul_with(&mut t, &h, &h, kt).unwrap();
            ops::matmul(&mut t, &a, &h).unwrap();
            ops::linear(&mut t, &h, &p.w2, None).unwrap();
        });
        c.launches
    };
    assert!(kept_forward_launches >= 4);
    assert_eq!(
        all.backward_launches - keep.backward_launches,
        kept_forward_launches
    );
    assert_eq!(SelectivePolicy::compute_bound().kept_ops().len(), 3);
}

#[test]
fn selective_checkpoint_is_a_plain_call_in_eval_mode() {
    let dev = Device::cpu();
    let p = params(&dev);
    let x = Tensor::randn(&[N, D], DType::F64, &dev, 4).unwrap();
    let mut t = Tape::recording().training(false);
    let y = checkpoint_selective(&mut t, &[&x], &SelectivePolicy::compute_bound(), |t, xs| {
        segment(t, &p, &xs[0])
    })
    .unwrap();
    let want = segment(&mut Tape::no_grad(), &p, &x).unwrap();
    assert_eq!(y.to_f64_vec(), want.to_f64_vec());
}
