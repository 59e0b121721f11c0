//! The planner's memory model, held independently of `ChainModel::predict`: predicted peaks of
//! hand-built profiles are literal numbers worked out event by event in the comments, and on
//! real chains (uniform and heterogeneous, f32 and f64) the engine's measured peak matches the
//! prediction for naive, equal-segment, nested and planned plans.

mod chains;

use chains::Chain;
use checkpoint::planner::{ChainModel, LayerProfile, Plan, PlanOptions, Segment};
use tape::DType;

fn seg(range: std::ops::Range<usize>, checkpointed: bool) -> Segment {
    Segment {
        range,
        checkpointed,
    }
}

/// Four layers, each with a 10-byte output, 5 bytes saved, a 1-byte parameter gradient and the
/// defaults of `LayerProfile::simple` (keeps its input and output, reuses its output, forward
/// peak 15 recorded, 5 reusing, 10 without recording, backward peak 10 = its input gradient);
/// costs 1, 2, 3, 4; 100 bytes held before the step.
fn four_layers() -> ChainModel {
    ChainModel {
        layers: (0..4)
            .map(|i| LayerProfile {
                param_grad_bytes: 1,
                ..LayerProfile::simple(format!("l{i}"), 10, 5, (i + 1) as f64)
            })
            .collect(),
        base_bytes: 100,
        loss_bytes: 0,
    }
}

/// Bytes above the 100 held before the step, event by event.
///
/// Naive: each layer's forward peaks 15 above what is alive and leaves 15 (saved 5 + output
/// 10): 15, 30, 45, 60. The loss gradient: 70. Layer 3's backward peaks 10 above: 80. (Then each
/// backward frees 25 and leaves an 11-byte gradient pair: 56, 42, 28, 14.) Peak 180.
///
/// `ckpt 0..2, keep 2..4`: first pass 10, then 10 + 10 (h1 alive while layer 1 runs) = 20,
/// leaving h2: 10. Layers 2, 3 recorded: 25, 40; loss gradient 50; layer 3's backward 60, leaves
/// 36; layer 2's backward 46, leaves h2 + δ2 + 2 = 22. Recompute 0..2: layer 0 recorded 37,
/// layer 1 reuses h2: 42; its backward (output held) 52, leaves 48; layer 0's backward 58, leaves
/// 34; the checkpoint frees h2 and δ2: 14. Peak 160; extra cost 1 + 2 = 3.
///
/// `ckpt 0..3 [ckpt 0..1, keep 1..3], keep 3..4`: first pass peaks 20, leaves h3: 10; layer 3
/// 25; loss gradient 35; layer 3's backward 45, leaves h3 + δ3 + 1 = 21. Recompute 0..3: a first
/// pass of layer 0 (31, leaves h1' 10: 31), layer 1 recorded 46, layer 2 reusing h3 51; layer 2's
/// backward (held) 61, leaves 57; layer 1's backward 67, leaves 43. Recompute 0..1: layer 0
/// reusing h1' 48, its backward 58. Peak 167 at layer 1's backward; layer 0 runs three times,
/// layers 1 and 2 twice: extra cost 2 * 1 + 2 + 3 = 7, 4 forwards recomputed.
#[test]
fn predicted_peaks_of_hand_built_plans() {
    let m = four_layers();
    let nested = Plan::nested(vec![
        (
            seg(0..3, true),
            Some(Plan::new(vec![seg(0..1, true), seg(1..3, false)])),
        ),
        (seg(3..4, false), None),
    ]);
    // (plan, peak, bytes at the end of forward, extra cost, recomputed, peak at: layer, nesting)
    let cases = [
        (Plan::keep_all(4), 180, 60, 0.0, 0, 3, 0),
        (Plan::equal_segments(4, 2), 160, 40, 3.0, 2, 3, 0),
        (nested, 167, 25, 7.0, 4, 1, 1),
    ];
    for (plan, peak, forward_end, cost, recomputed, layer, within) in cases {
        let p = m.predict(&plan).unwrap();
        assert_eq!(
            (p.peak, p.forward_end, p.extra_cost, p.recomputed_layers),
            (peak, forward_end, cost, recomputed),
            "{plan}"
        );
        assert_eq!((p.at.layer, p.at.within.len()), (layer, within), "{plan}");
    }
}

/// The planner on the same model: its plan's peak, as its dynamic programming computes it,
/// equals the replay's; a budget of 160 admits the cost-3 plan above; 159 needs more recompute.
#[test]
fn planned_peaks_equal_the_replayed_ones() {
    let m = four_layers();
    for budget in 150..=185 {
        match m.plan(budget) {
            Ok(plan) => {
                let p = m.predict(&plan).unwrap();
                assert!(p.peak <= budget, "{plan}: {} over {budget}", p.peak);
                let planned = m.planned_peak(budget, PlanOptions::default()).unwrap();
                assert_eq!(planned, Some(p.peak), "budget {budget}: {plan}");
            }
            Err(_) => assert_eq!(
                m.planned_peak(budget, PlanOptions::default()).unwrap(),
                None
            ),
        }
    }
    assert_eq!(m.predict(&m.plan(180).unwrap()).unwrap().extra_cost, 0.0);
    let at_160 = m.predict(&m.plan(160).unwrap()).unwrap();
    assert!(at_160.extra_cost <= 3.0, "{at_160:?}");
    assert!(m.predict(&m.plan(159).unwrap()).unwrap().extra_cost > at_160.extra_cost);
}

/// Plans of every kind for an `n`-layer chain: naive, equal segments (1, 2, 3 and one per
/// layer), a three-level nested plan, and the planner's, single-level and recursive, at budgets
/// from the naive peak down to the least peak of any plan (the percentages place a budget between
/// the two).
fn plans(model: &ChainModel) -> Vec<(String, Plan, Option<u64>)> {
    let n = model.layers.len();
    let h = n / 2;
    let nested = Plan::nested(vec![
        (
            seg(0..h, true),
            Some(Plan::new(vec![seg(0..h / 2, true), seg(h / 2..h, false)])),
        ),
        (
            seg(h..n - 2, true),
            Some(Plan::nested(vec![
                (seg(h..h + 1, true), None),
                (
                    seg(h + 1..n - 2, true),
                    Some(Plan::new(vec![
                        seg(h + 1..h + 2, true),
                        seg(h + 2..n - 2, false),
                    ])),
                ),
            ])),
        ),
        (seg(n - 2..n, false), None),
    ]);
    let mut out = vec![
        ("naive".to_string(), Plan::keep_all(n), None),
        ("one segment".into(), Plan::equal_segments(n, 1), None),
        ("2 segments".into(), Plan::equal_segments(n, 2), None),
        ("3 segments".into(), Plan::equal_segments(n, 3), None),
        ("per layer".into(), Plan::equal_segments(n, n), None),
        ("nested, 3 levels".into(), nested, None),
    ];
    let naive = model.predict(&Plan::keep_all(n)).unwrap().peak;
    let least = model.front(PlanOptions::default()).unwrap()[0].peak;
    let least_flat = model.front(PlanOptions { max_depth: Some(1) }).unwrap()[0].peak;
    let between = |f: f64| least + ((naive - least) as f64 * f) as u64;
    for (what, budget, depth) in [
        ("planner 70%", between(0.7), None),
        ("planner 40%", between(0.4), None),
        ("planner 40%, flat", between(0.4).max(least_flat), Some(1)),
        ("planner 15%", between(0.15), None),
        ("planner, tightest", least, None),
    ] {
        let options = PlanOptions { max_depth: depth };
        let plan = model
            .plan_with(budget, options)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        out.push((what.to_string(), plan, Some(budget)));
    }
    out
}

/// Measured (engine accounting) against predicted peaks on one chain: within 1% for every plan
/// (the issue asks 5%; the replay is exact to the byte on these chains), and every planned plan
/// within its budget.
fn measured_matches_predicted(chain: &Chain) {
    let layers = chain.layers();
    let model = chain.profile(&layers);
    for (name, plan, budget) in plans(&model) {
        let measured = chain.measured_peak(&layers, &plan);
        let p = model.predict(&plan).unwrap();
        let err = (p.peak as f64 - measured as f64) / measured as f64;
        println!(
            "{} {:?} {name:<20} measured {measured:>9} predicted {:>9} ({:+.3}%), {} recomputed, at {}",
            chain.name,
            chain.dtype,
            p.peak,
            100.0 * err,
            p.recomputed_layers,
            p.at
        );
        assert!(
            err.abs() <= 0.01,
            "{} {:?} {name} ({plan}): predicted {} vs measured {measured}",
            chain.name,
            chain.dtype,
            p.peak
        );
        if let Some(budget) = budget {
            assert!(measured <= budget, "{name}: {measured} over {budget}");
        }
    }
}

#[test]
fn measured_matches_predicted_uniform_f32() {
    measured_matches_predicted(&Chain::uniform(10, DType::F32));
}

#[test]
fn measured_matches_predicted_uniform_f64() {
    measured_matches_predicted(&Chain::uniform(10, DType::F64));
}

#[test]
fn measured_matches_predicted_heterogeneous_f32() {
    measured_matches_predicted(&Chain::heterogeneous(DType::F32));
}

#[test]
fn measured_matches_predicted_heterogeneous_f64() {
    measured_matches_predicted(&Chain::heterogeneous(DType::F64));
}
