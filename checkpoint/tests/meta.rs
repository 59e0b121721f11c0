//! The checkpoint chain on a meta device: the chain's profile has the CPU's byte counts, and
//! every plan (naive, equal segments, per layer, the planner's nested plans) peaks at exactly
//! the CPU's bytes when it runs on meta.

use checkpoint::planner::{profile_chain, Plan, Segment};
use checkpoint::{run_plan, OpKind, Stage};
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Tape, Tensor};

const LAYERS: usize = 8;

/// A conv 3x3 / batch norm / ReLU chain's parameters on `dev`.
struct Chain {
    convs: Vec<Tensor>,
    norms: Vec<(Tensor, Tensor, RunningStats)>,
}

impl Chain {
    fn new(dev: &Device) -> Self {
        let c = 4;
        let mut chain = Chain {
            convs: Vec::new(),
            norms: Vec::new(),
        };
        for i in 0..LAYERS {
            let w = Tensor::randn(&[c, c, 3, 3], DType::F32, dev, i as u64).unwrap();
            chain.convs.push(w.with_requires_grad(true));
            chain
                .norms
                .push(tape::testing::batch_norm_params(c, DType::F32, dev));
        }
        chain
    }

    fn stages(&self) -> Vec<Stage<'_>> {
        (0..LAYERS)
            .map(|i| {
                let (w, (g, b, rs)) = (&self.convs[i], &self.norms[i]);
                Stage::new(format!("layer{i}"), OpKind::Other, move |t, x| {
                    let opts = Conv2dOptions {
                        stride: 1,
                        padding: 1,
                    };
                    let h = ops::conv2d(t, x, w, None, opts)?;
                    let h = ops::batch_norm2d(t, &h, g, b, rs, BatchNormOptions::default())?;
                    ops::relu(t, &h)
                })
            })
            .collect()
    }
}

/// The peak of one training step of the chain under `plan` on `dev`.
fn step_peak(dev: &Device, plan: &Plan) -> usize {
    let chain = Chain::new(dev);
    let stages = chain.stages();
    let x = Tensor::randn(&[2, 4, 8, 8], DType::F32, dev, 9).unwrap();
    dev.memory().reset_peak();
    let mut tape = Tape::recording();
    let y = run_plan(&mut tape, &stages, plan, &x).unwrap();
    let loss = ops::mean(&mut tape, &y).unwrap();
    drop(y);
    drop(tape.backward(&loss).unwrap());
    dev.memory().peak()
}

/// Each layer's profiled bytes (kept, transient) on `dev`, without the timings.
fn profiled_bytes(dev: &Device) -> Vec<String> {
    let chain = Chain::new(dev);
    let stages = chain.stages();
    let x = Tensor::randn(&[2, 4, 8, 8], DType::F32, dev, 9).unwrap();
    let held = dev.memory().current() as u64;
    let model = profile_chain(&Tape::recording(), &stages, &x, held).unwrap();
    let keep = model.predict(&Plan::keep_all(LAYERS)).unwrap().peak;
    let per_layer = model
        .predict(&Plan::equal_segments(LAYERS, LAYERS))
        .unwrap();
    vec![format!("{keep} {}", per_layer.peak)]
}

#[test]
fn the_chain_profile_and_every_plan_peak_as_on_the_cpu() {
    assert_eq!(
        profiled_bytes(&Device::meta()),
        profiled_bytes(&Device::cpu())
    );
    let cpu = Device::cpu();
    let chain = Chain::new(&cpu);
    let stages = chain.stages();
    let x = Tensor::randn(&[2, 4, 8, 8], DType::F32, &cpu, 9).unwrap();
    let model = profile_chain(&Tape::recording(), &stages, &x, 0).unwrap();
    let naive = model.predict(&Plan::keep_all(LAYERS)).unwrap().peak;
    let mut plans = vec![
        Plan::keep_all(LAYERS),
        Plan::equal_segments(LAYERS, 2),
        Plan::equal_segments(LAYERS, LAYERS),
    ];
    let least = model.least_peak(Default::default()).unwrap();
    plans.push(model.plan(least).unwrap());
    plans.push(model.plan((least + naive) / 2).unwrap());
    let segment = |range, checkpointed| Segment {
        range,
        checkpointed,
    };
    let inner = Plan::new(vec![segment(0..3, true), segment(3..6, false)]);
    plans.push(Plan::nested(vec![
        (segment(0..6, true), Some(inner)),
        (segment(6..LAYERS, false), None),
    ]));
    assert!(
        plans.iter().any(|p| p.depth() > 1),
        "no nested plan among {plans:?}"
    );
    for plan in &plans {
        let (on_cpu, on_meta) = (
            step_peak(&Device::cpu(), plan),
            step_peak(&Device::meta(), plan),
        );
        assert_eq!(on_meta, on_cpu, "plan {plan}");
    }
}
