//! Shared helpers of the densenet integration tests.

#![allow(dead_code)]

use densenet::model::BudgetModel;
use densenet::{DenseLayerMode, DenseNet};

const MODES: [DenseLayerMode; 3] = [
    DenseLayerMode::Keep,
    DenseLayerMode::RecomputeBottleneck,
    DenseLayerMode::RecomputeLayer,
];

/// A budget under which the exact planner must mix modes, with the modes it must pick; `None`
/// when no budget can make it mix (a single dense layer, or layers too small to move the peak,
/// which the stem, head or parameter gradients set).
///
/// Every assignment of modes is enumerated with the budget model's predicted peak
/// (`BudgetModel::predict`) and recompute FLOPs, independently of the planner's dynamic
/// programming. A mixed assignment that is strictly cheaper than every other assignment whose
/// predicted peak is not larger is the planner's unique optimum at a budget equal to its peak.
/// Networks of more than 10 dense layers are not searched.
pub fn mixing_plan(model: &DenseNet, shape: [usize; 4]) -> Option<(u64, Vec<Vec<DenseLayerMode>>)> {
    mixing_plan_held(model, shape, model.device().memory().current() as u64)
}

/// [`mixing_plan`] for when the device will hold `held` bytes as forward starts (e.g. once an
/// optimizer has made its state).
pub fn mixing_plan_held(
    model: &DenseNet,
    shape: [usize; 4],
    held: u64,
) -> Option<(u64, Vec<Vec<DenseLayerMode>>)> {
    let bm = BudgetModel::new(model, shape, held);
    let n: usize = bm.layers.iter().map(Vec::len).sum();
    if !(2..=10).contains(&n) {
        return None;
    }
    let digits = |code: usize| (0..n).map(move |i| (code / 3usize.pow(i as u32)) % 3);
    let modes_of = |code: usize| -> Vec<Vec<DenseLayerMode>> {
        let mut d = digits(code);
        bm.layers
            .iter()
            .map(|b| b.iter().map(|_| MODES[d.next().unwrap_or(2)]).collect())
            .collect()
    };
    let mut all: Vec<(u64, f64, usize)> = (0..3usize.pow(n as u32))
        .map(|code| {
            let peak = bm.predict(&modes_of(code)).expect("modes match the blocks");
            let cost = bm
                .layers
                .iter()
                .flatten()
                .zip(digits(code))
                .fold(0.0f64, |sum, (c, m)| sum + c.flops[m]);
            (peak, cost, code)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut cheapest_below = f64::INFINITY;
    let mut i = 0;
    while i < all.len() {
        let peak = all[i].0;
        let group = all[i..].iter().take_while(|a| a.0 == peak).count();
        let (best, runner_up) = (
            all[i].1,
            all.get(i + 1).filter(|a| a.0 == peak).map(|a| a.1),
        );
        let code = all[i].2;
        let unique = runner_up.is_none_or(|r| best < r) && best < cheapest_below;
        let mixed = digits(code).any(|m| m != code % 3);
        if unique && mixed {
            return Some((peak, modes_of(code)));
        }
        cheapest_below = cheapest_below.min(best);
        i += group;
    }
    None
}
