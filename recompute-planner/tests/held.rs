//! The held-graph model ([`HeldChain`]): its plans fit their budget by its own prediction and
//! cost no more than any single-level plan that fits (brute force over every plan of small
//! random chains); bad chains and nested plans are refused.

use proptest::prelude::*;
use recompute_planner::{Error, HeldChain, HeldStage, Plan, Segment};

/// A stage with the given bytes.
fn stage(i: usize, kept: u64, out: u64, bwd: u64, grads: u64, cost: f64) -> HeldStage {
    HeldStage {
        name: format!("s{i}"),
        input_bytes: out,
        output_bytes: out,
        kept_bytes: kept,
        forward_peak: kept + out / 2,
        // At least the forward's peak: backward terms dominate, so the search's bound on
        // forward terms is exact and the brute force's optimum is the planner's.
        backward_peak: kept + out + bwd,
        param_grad_bytes: grads,
        cost,
    }
}

/// Every single-level plan of `n` stages: each cut pattern, each checkpoint flag per segment.
fn all_plans(n: usize) -> Vec<Plan> {
    let mut plans = Vec::new();
    for cuts in 0u32..(1 << (n - 1)) {
        let mut ranges = Vec::new();
        let mut start = 0;
        for i in 0..n {
            if i + 1 == n || cuts & (1 << i) != 0 {
                ranges.push(start..i + 1);
                start = i + 1;
            }
        }
        for flags in 0u32..(1 << ranges.len()) {
            plans.push(Plan::new(
                ranges
                    .iter()
                    .enumerate()
                    .map(|(j, r)| Segment {
                        range: r.clone(),
                        checkpointed: flags & (1 << j) != 0,
                    })
                    .collect(),
            ));
        }
    }
    plans
}

/// The recompute cost of a single-level plan.
fn cost(chain: &HeldChain, plan: &Plan) -> f64 {
    plan.segments()
        .iter()
        .filter(|s| s.checkpointed)
        .flat_map(|s| s.range.clone())
        .map(|i| chain.stages[i].cost)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn plans_fit_and_are_cheapest(
        specs in proptest::collection::vec((1u64..50, 1u64..10, 1u64..60, 0u64..30, 1u32..5), 1..7),
        frac in 0.0f64..1.0,
    ) {
        let chain = HeldChain {
            stages: specs
                .iter()
                .enumerate()
                .map(|(i, &(k, o, b, g, c))| stage(i, k * 100, o * 100, b * 100, g * 100, c as f64))
                .collect(),
            base_bytes: 1000,
            loss_bytes: 10,
        };
        let n = chain.stages.len();
        let plans = all_plans(n);
        let peaks: Vec<u64> = plans.iter().map(|p| chain.predict(p).expect("predicts")).collect();
        let (lo, hi) = (*peaks.iter().min().unwrap(), *peaks.iter().max().unwrap());
        let budget = lo + ((hi - lo) as f64 * frac) as u64;
        let best = plans
            .iter()
            .zip(&peaks)
            .filter(|(_, &p)| p <= budget)
            .map(|(pl, _)| cost(&chain, pl))
            .fold(f64::INFINITY, f64::min);
        match chain.plan(budget) {
            Ok(plan) => {
                prop_assert!(chain.predict(&plan).expect("predicts") <= budget, "{}", plan);
                prop_assert!((cost(&chain, &plan) - best).abs() < 1e-9, "{} vs {}", plan, best);
            }
            Err(e) => prop_assert!(false, "a plan fits {}: {}", budget, e),
        }
        // The unwrapped plan always fits its own prediction.
        let naive = chain.predict(&Plan::keep_all(n)).expect("predicts");
        let plan = chain.plan(naive.max(hi)).expect("a plan fits the largest peak");
        prop_assert_eq!(cost(&chain, &plan), 0.0);
    }
}

#[test]
fn bad_chains_and_nested_plans_are_refused() {
    let mut chain = HeldChain {
        stages: vec![stage(0, 10, 5, 10, 1, 1.0), stage(1, 10, 5, 10, 1, 1.0)],
        base_bytes: 0,
        loss_bytes: 0,
    };
    let nested = Plan::nested(vec![(
        Segment {
            range: 0..2,
            checkpointed: true,
        },
        Some(Plan::equal_segments(2, 2)),
    )]);
    assert!(matches!(
        chain.predict(&nested),
        Err(Error::InvalidArgument { op: "planner", .. })
    ));
    assert!(
        chain.predict(&Plan::keep_all(3)).is_err(),
        "a plan of the wrong length"
    );
    assert!(chain.plan(0).is_err(), "nothing fits 0 bytes");
    chain.stages[1].cost = f64::NAN;
    assert!(chain.plan(1 << 30).is_err());
    chain.stages.clear();
    assert!(chain.predict(&Plan::keep_all(1)).is_err());
}
