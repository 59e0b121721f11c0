//! The planner's dynamic programming is exact: on small chains it finds the optimum of a brute
//! force over every plan (nested ones included), its own peak equals the replayed prediction,
//! and its report says what is kept and recomputed.

use checkpoint::planner::{
    plan_choices, plan_in_order, ChainModel, Choice, LayerProfile, Plan, PlanOptions, Segment,
};
use proptest::prelude::*;

fn seg(range: std::ops::Range<usize>, checkpointed: bool) -> Segment {
    Segment {
        range,
        checkpointed,
    }
}

/// Every plan of the layers `s..t` with at most `depth` levels of checkpoints, as parts for
/// `Plan::nested`: each layer recorded or in a checkpointed segment, whose recompute is any such
/// plan of its layers but itself (a segment made of one checkpointed segment of the same
/// layers).
fn all_parts(s: usize, t: usize, depth: usize) -> Vec<Vec<(Segment, Option<Plan>)>> {
    if s == t {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in all_parts(s + 1, t, depth) {
        let mut p = vec![(seg(s..s + 1, false), None)];
        p.extend(rest);
        out.push(p);
    }
    if depth == 0 {
        return out;
    }
    for mid in s + 1..=t {
        let inner: Vec<Option<Plan>> = all_parts(s, mid, depth - 1)
            .into_iter()
            .filter(|p| !(p.len() == 1 && p[0].0.checkpointed && p[0].0.range == (s..mid)))
            .map(|p| {
                let plan = Plan::nested(p);
                plan.segments()
                    .iter()
                    .any(|x| x.checkpointed)
                    .then_some(plan)
            })
            .collect();
        let rests = all_parts(mid, t, depth);
        for i in &inner {
            for rest in &rests {
                let mut p = vec![(seg(s..mid, true), i.clone())];
                p.extend(rest.iter().cloned());
                out.push(p);
            }
        }
    }
    out
}

/// A random layer whose numbers keep the relations measured profiles have: each peak at least
/// the bytes its pass leaves, a reusing forward no lower than the recorded one without its
/// output, a held backward no lower than the free one.
fn layer(i: usize, v: &[u64; 12], input_bytes: u64) -> LayerProfile {
    let output = 1 + v[0] % 40;
    let saved = v[1] % 40;
    let forward_peak = saved + output + v[2] % 20;
    let input_grad = if i == 0 && v[3].is_multiple_of(2) {
        0
    } else {
        input_bytes
    };
    let param_grad = v[4] % 10;
    let backward_peak = input_grad + param_grad + v[5] % 30;
    LayerProfile {
        name: format!("l{i}"),
        output_bytes: output,
        saved_bytes: saved,
        keeps_input: !v[6].is_multiple_of(3),
        keeps_output: !v[7].is_multiple_of(3),
        reuses_output: !v[8].is_multiple_of(3),
        forward_peak,
        forward_peak_reusing: forward_peak - output + v[9] % 10,
        nograd_peak: output + v[10] % 20,
        backward_peak,
        backward_peak_held: backward_peak + v[11] % 25,
        input_grad_bytes: input_grad,
        param_grad_bytes: param_grad,
        cost: (1 + v[0] % 9) as f64,
    }
}

fn model(raw: &[[u64; 12]]) -> ChainModel {
    let mut layers: Vec<LayerProfile> = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let input = layers.last().map_or(1 + v[3] % 40, |l| l.output_bytes);
        layers.push(layer(i, v, input));
    }
    ChainModel {
        layers,
        base_bytes: 100,
        loss_bytes: raw[0][2] % 5,
    }
}

/// The planner against a brute force over every plan of at most `depth` levels: the plan it
/// returns fits the budget, costs the least any fitting plan costs and, among those, peaks the
/// least; its dynamic programming's peak equals the replay's; and it fails exactly when no plan
/// fits.
fn check_against_brute_force(
    m: &ChainModel,
    depth: Option<usize>,
    budget_frac: f64,
) -> Result<(), TestCaseError> {
    let n = m.layers.len();
    let plans: Vec<Plan> = all_parts(0, n, depth.unwrap_or(n + 1))
        .into_iter()
        .map(Plan::nested)
        .collect();
    let preds: Vec<_> = plans.iter().map(|p| m.predict(p).unwrap()).collect();
    let lo = preds.iter().map(|p| p.peak).min().unwrap();
    let hi = preds.iter().map(|p| p.peak).max().unwrap();
    let budget = lo + ((hi - lo) as f64 * budget_frac) as u64;
    let fits = |p: &&checkpoint::planner::Prediction| p.peak <= budget;
    let best_cost = preds
        .iter()
        .filter(fits)
        .map(|p| p.extra_cost)
        .fold(f64::INFINITY, f64::min);
    let tol = 1e-9 * (1.0 + best_cost);
    let best_peak = preds
        .iter()
        .filter(fits)
        .filter(|p| p.extra_cost <= best_cost + tol)
        .map(|p| p.peak)
        .min()
        .unwrap();
    let options = PlanOptions { max_depth: depth };
    let plan = m.plan_with(budget, options).unwrap();
    prop_assert!(plan.depth() <= depth.unwrap_or(usize::MAX), "{}", plan);
    let pred = m.predict(&plan).unwrap();
    prop_assert!(pred.peak <= budget);
    prop_assert!(
        (pred.extra_cost - best_cost).abs() <= tol,
        "{} costs {} > {}",
        plan,
        pred.extra_cost,
        best_cost
    );
    prop_assert_eq!(pred.peak, best_peak, "{}", plan);
    prop_assert_eq!(m.planned_peak(budget, options).unwrap(), Some(pred.peak));
    prop_assert!(m.plan_with(lo - 1, options).is_err());
    prop_assert_eq!(m.front(options).unwrap()[0].peak, lo);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn recursive_plans_equal_brute_force_optimum(
        raw in prop::collection::vec(any::<[u64; 12]>(), 1..6),
        budget_frac in 0.0f64..1.0,
    ) {
        check_against_brute_force(&model(&raw), None, budget_frac)?;
    }

    #[test]
    fn single_level_plans_equal_brute_force_optimum(
        raw in prop::collection::vec(any::<[u64; 12]>(), 1..7),
        budget_frac in 0.0f64..1.0,
    ) {
        check_against_brute_force(&model(&raw), Some(1), budget_frac)?;
    }

    #[test]
    fn choices_equal_brute_force_optimum(
        units in prop::collection::vec(prop::collection::vec((0u64..40, 0u64..40, 0u32..10), 1..4), 1..6),
        free in 0u64..200,
    ) {
        let units = choices(&units);
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

/// Units of choices from `(stored, transient, cost)` triples.
fn choices(raw: &[Vec<(u64, u64, u32)>]) -> Vec<Vec<Choice>> {
    raw.iter()
        .map(|u| {
            u.iter()
                .map(|&(s, t, c)| Choice {
                    stored: s,
                    transient: t,
                    cost: c as f64,
                })
                .collect()
        })
        .collect()
}

/// The brute force's enumeration is complete: plans of layers 0..n with any nesting, counted by
/// hand for small n (1 layer: keep, or checkpoint it; 2 layers: 8; 3 layers: 48).
#[test]
fn the_brute_force_sees_every_plan() {
    let counts: Vec<usize> = (1..=3).map(|n| all_parts(0, n, n + 1).len()).collect();
    assert_eq!(counts, vec![2, 8, 48]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    #[test]
    fn in_order_choices_equal_brute_force_optimum(
        units in prop::collection::vec(prop::collection::vec((0u64..40, 0u64..60, 0u32..10), 1..4), 1..7),
        free in 0u64..250,
    ) {
        let units = choices(&units);
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
    let m = ChainModel {
        layers: (0..32)
            .map(|i| LayerProfile::simple(format!("l{i}"), 10, 5, 1.0))
            .collect(),
        base_bytes: 100,
        loss_bytes: 4,
    };
    let naive = m.predict(&Plan::keep_all(32)).unwrap().peak;
    let least = m.front(PlanOptions::default()).unwrap()[0].peak;
    let plan = m.plan(least).unwrap();
    assert!(
        plan.depth() >= 2,
        "the least peak needs nested checkpoints here: {plan}"
    );
    let text = m.report(&plan).unwrap();
    println!("{text}");
    for word in [
        "predicted peak",
        "recompute",
        "extra forward cost",
        "levels of checkpoints",
        "the backward of layer",
    ] {
        assert!(text.contains(word), "'{word}' missing from:\n{text}");
    }
    let err = m.plan(least - 1).unwrap_err().to_string();
    assert!(
        err.contains("budget") && err.contains(&least.to_string()),
        "{err}"
    );
    let flat = m
        .plan_with(naive, PlanOptions { max_depth: Some(1) })
        .unwrap();
    assert_eq!(
        flat,
        Plan::keep_all(32),
        "the naive budget needs no recompute"
    );
}
