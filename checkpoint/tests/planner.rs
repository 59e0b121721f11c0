//! The planner's dynamic programming is exact: on small chains it finds the brute-force optimum,
//! and its report says what is kept and recomputed.

use checkpoint::planner::{
    plan_choices, plan_in_order, ChainModel, Choice, LayerProfile, Plan, Segment,
};
use proptest::prelude::*;

fn model(saved: &[u64], out: &[u64], cost: &[f64]) -> ChainModel {
    ChainModel {
        layers: (0..saved.len())
            .map(|i| LayerProfile {
                name: format!("l{i}"),
                saved_bytes: saved[i],
                output_bytes: out[i],
                cost: cost[i],
            })
            .collect(),
        base_bytes: 100,
        grad_bytes: 10,
    }
}

/// Every plan of an n-layer chain: each composition of n into segments, each segment either
/// checkpointed or not.
fn all_plans(n: usize) -> Vec<Plan> {
    let mut plans = Vec::new();
    for cuts in 0u32..(1 << (n - 1)) {
        let mut bounds = vec![0];
        for i in 1..n {
            if cuts & (1 << (i - 1)) != 0 {
                bounds.push(i);
            }
        }
        bounds.push(n);
        let k = bounds.len() - 1;
        for flags in 0u32..(1 << k) {
            let segments = (0..k)
                .map(|s| Segment {
                    range: bounds[s]..bounds[s + 1],
                    checkpointed: flags & (1 << s) != 0,
                })
                .collect();
            plans.push(Plan::new(segments));
        }
    }
    plans
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    #[test]
    fn dp_plan_equals_brute_force_optimum(
        layers in prop::collection::vec((1u64..50, 1u64..20, 1u32..10), 1..7),
        budget_frac in 0.0f64..1.0,
    ) {
        let saved: Vec<u64> = layers.iter().map(|l| l.0 + l.1).collect();
        let out: Vec<u64> = layers.iter().map(|l| l.1).collect();
        let cost: Vec<f64> = layers.iter().map(|l| l.2 as f64).collect();
        let m = model(&saved, &out, &cost);
        let plans = all_plans(saved.len());
        let peaks: Vec<u64> = plans.iter().map(|p| m.predict(p).unwrap().peak).collect();
        let (lo, hi) = (*peaks.iter().min().unwrap(), *peaks.iter().max().unwrap());
        let budget = lo + ((hi - lo) as f64 * budget_frac) as u64;
        let best = plans
            .iter()
            .filter(|p| m.predict(p).unwrap().peak <= budget)
            .map(|p| m.predict(p).unwrap().extra_cost)
            .fold(f64::INFINITY, f64::min);
        let plan = m.plan(budget).unwrap();
        let pred = m.predict(&plan).unwrap();
        prop_assert!(pred.peak <= budget);
        prop_assert_eq!(pred.extra_cost, best);
        prop_assert!(m.plan(lo - 1).is_err());
    }

    #[test]
    fn choices_equal_brute_force_optimum(
        units in prop::collection::vec(prop::collection::vec((0u64..40, 0u64..40, 0u32..10), 1..4), 1..6),
        free in 0u64..200,
    ) {
        let units: Vec<Vec<Choice>> = units
            .iter()
            .map(|u| u.iter().map(|&(s, t, c)| Choice { stored: s, transient: t, cost: c as f64 }).collect())
            .collect();
        // Brute force over every combination.
        let mut best = f64::INFINITY;
        let total: usize = units.iter().map(|u| u.len()).product();
        for mut code in 0..total {
            let (mut stored, mut transient, mut cost) = (0, 0, 0.0);
            for u in &units {
                let c = u[code % u.len()];
                code /= u.len();
                stored += c.stored;
                transient = transient.max(c.transient);
                cost += c.cost;
            }
            if stored + transient <= free {
                best = best.min(cost);
            }
        }
        match plan_choices(&units, free) {
            Ok(pick) => {
                let stored: u64 = pick.iter().zip(&units).map(|(&i, u)| u[i].stored).sum();
                let transient = pick.iter().zip(&units).map(|(&i, u)| u[i].transient).max().unwrap();
                let cost: f64 = pick.iter().zip(&units).map(|(&i, u)| u[i].cost).sum();
                prop_assert!(stored + transient <= free);
                prop_assert_eq!(cost, best);
            }
            Err(_) => prop_assert!(best.is_infinite()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    #[test]
    fn in_order_choices_equal_brute_force_optimum(
        units in prop::collection::vec(prop::collection::vec((0u64..40, 0u64..60, 0u32..10), 1..4), 1..7),
        free in 0u64..250,
    ) {
        let units: Vec<Vec<Choice>> = units
            .iter()
            .map(|u| u.iter().map(|&(s, t, c)| Choice { stored: s, transient: t, cost: c as f64 }).collect())
            .collect();
        // The peak of a choice: unit i's backward holds what units 0..=i keep plus its transient.
        let peak = |pick: &[usize]| {
            let mut kept = 0;
            let mut peak = 0;
            for (&i, u) in pick.iter().zip(&units) {
                kept += u[i].stored;
                peak = peak.max(kept + u[i].transient);
            }
            peak
        };
        let mut best = f64::INFINITY;
        let total: usize = units.iter().map(|u| u.len()).product();
        for mut code in 0..total {
            let pick: Vec<usize> = units.iter().map(|u| { let i = code % u.len(); code /= u.len(); i }).collect();
            if peak(&pick) <= free {
                best = best.min(pick.iter().zip(&units).map(|(&i, u)| u[i].cost).sum());
            }
        }
        match plan_in_order(&units, free) {
            Ok(pick) => {
                prop_assert!(peak(&pick) <= free);
                let cost: f64 = pick.iter().zip(&units).map(|(&i, u)| u[i].cost).sum();
                prop_assert_eq!(cost, best);
            }
            Err(_) => prop_assert!(best.is_infinite()),
        }
    }
}

/// Three units, hand-solved: kept bytes are freed in reverse order, so a big early transient
/// does not meet the later units' kept bytes.
#[test]
fn in_order_choices_on_a_hand_solved_case() {
    let c = |stored, transient, cost| Choice {
        stored,
        transient,
        cost,
    };
    // Unit 0: keep 10 (cost 0), or keep 1 and hold 30 in its backward (cost 5). Unit 1: keep 20
    // (cost 0) or 2 (cost 10). Unit 2: keep 20 (cost 0) or 2 (cost 9).
    let units = vec![
        vec![c(10, 0, 0.0), c(1, 30, 5.0)],
        vec![c(20, 0, 0.0), c(2, 0, 10.0)],
        vec![c(20, 0, 0.0), c(2, 0, 9.0)],
    ];
    // Everything kept: 10 + 20 + 20 = 50.
    assert_eq!(plan_in_order(&units, 50).unwrap(), vec![0, 0, 0]);
    // Unit 0 recomputed: max(1 + 30, 1 + 20 + 20) = 41 at cost 5 (its 30 comes after the later
    // units freed theirs; a sum-plus-max model would say 1 + 20 + 20 + 30 = 71).
    assert_eq!(plan_in_order(&units, 41).unwrap(), vec![1, 0, 0]);
    // Under 41: unit 2 shrunk, 10 + 20 + 2 = 32 at cost 9.
    assert_eq!(plan_in_order(&units, 40).unwrap(), vec![0, 0, 1]);
    // Under 32: max(1 + 30, 1 + 20 + 2) = 31 at cost 14 beats 10 + 2 + 2 = 14 at cost 19.
    assert_eq!(plan_in_order(&units, 31).unwrap(), vec![1, 0, 1]);
    assert_eq!(plan_in_order(&units, 30).unwrap(), vec![0, 1, 1]);
    // Under 14 nothing fits (recomputing unit 0 holds 31).
    assert!(plan_in_order(&units, 13).is_err());
}

#[test]
fn equal_segments_and_policy_plans() {
    let p = Plan::equal_segments(10, 3);
    let ranges: Vec<_> = p
        .segments()
        .iter()
        .map(|s| (s.range.clone(), s.checkpointed))
        .collect();
    assert_eq!(ranges, vec![(0..3, true), (3..6, true), (6..10, false)]);
    assert!(p.check_covers(10).is_ok());
    assert!(p.check_covers(11).is_err());
    let whole = Plan::equal_segments(4, 1);
    assert_eq!(
        whole.segments(),
        &[Segment {
            range: 0..4,
            checkpointed: true
        }]
    );
}

#[test]
fn report_names_kept_and_recomputed_segments() {
    let m = model(&[10, 10, 10, 10], &[5, 5, 5, 5], &[1.0; 4]);
    let plan = m.plan(150).unwrap();
    let text = m.report(&plan).unwrap();
    assert!(text.contains("predicted peak"), "{text}");
    assert!(text.contains("recompute"), "{text}");
    assert!(text.contains("extra forward cost"), "{text}");
    let err = m.plan(50).unwrap_err().to_string();
    assert!(err.contains("budget"), "{err}");
}
