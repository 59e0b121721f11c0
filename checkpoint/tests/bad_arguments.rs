//! Bad arguments are typed errors, found before anything runs: plans that do not cover the chain
//! exactly (gaps, overlaps, empty segments, segments past the end, too few or too many layers),
//! nested plans that do not cover their segment or sit on a recorded one,
//! `checkpoint_sequential` with 0 segments or more segments than layers, empty chains, and
//! layer costs the planner cannot sum.

use checkpoint::planner::{self, ChainModel, LayerProfile, Plan, PlanOptions, Segment};
use checkpoint::{checkpoint_sequential, run_plan, run_with_policy, OpKind, Policy, Stage};
use std::cell::Cell;
use tape::ops;
use tape::{DType, Device, Error, Tape, Tensor};

const N: usize = 6;

/// `N` ReLU layers that count how often any of them runs.
fn chain(runs: &Cell<usize>) -> Vec<Stage<'_>> {
    (0..N)
        .map(|i| {
            Stage::new(format!("relu{i}"), OpKind::Relu, move |t, x| {
                runs.set(runs.get() + 1);
                ops::relu(t, x)
            })
        })
        .collect()
}

fn input() -> Tensor {
    tape::testing::randn_leaf(&[2, 3, 4, 4], DType::F64, &Device::cpu(), 1)
}

fn seg(range: std::ops::Range<usize>, checkpointed: bool) -> Segment {
    Segment {
        range,
        checkpointed,
    }
}

/// The message of an `InvalidArgument` error from `op`; panics on anything else.
fn invalid(result: tape::Result<Tensor>, op: &str) -> String {
    match result {
        Err(Error::InvalidArgument { op: o, msg }) if o == op => msg,
        Err(e) => panic!("expected InvalidArgument from {op}, got {e:?}"),
        Ok(_) => panic!("expected InvalidArgument from {op}, got a result"),
    }
}

/// Plans that do not cover `0..N` exactly, with a word their error must contain.
fn bad_plans() -> Vec<(&'static str, Plan, &'static str)> {
    vec![
        (
            "gap between checkpointed segments",
            Plan::new(vec![seg(0..2, true), seg(3..6, true)]),
            "gap",
        ),
        (
            // Adjacent recorded segments are merged; a gap between them must not be merged away.
            "gap between recorded segments",
            Plan::new(vec![seg(0..2, false), seg(3..6, false)]),
            "gap",
        ),
        ("gap at the start", Plan::new(vec![seg(1..6, true)]), "gap"),
        (
            "overlap",
            Plan::new(vec![seg(0..4, true), seg(3..6, false)]),
            "overlaps",
        ),
        (
            "overlap between recorded segments",
            Plan::new(vec![seg(0..4, false), seg(2..6, false)]),
            "overlaps",
        ),
        (
            "segment past the end",
            Plan::new(vec![seg(0..3, false), seg(3..8, true)]),
            "past the end",
        ),
        (
            "too short",
            Plan::new(vec![seg(0..3, true), seg(3..5, false)]),
            "covers layers 0..5",
        ),
        ("too long", Plan::keep_all(N + 1), "past the end"),
        (
            "empty segment",
            Plan::new(vec![seg(0..3, true), seg(3..3, true), seg(3..6, false)]),
            "empty",
        ),
        (
            "reversed segment",
            Plan::new(vec![
                seg(0..3, true),
                seg(std::ops::Range { start: 6, end: 3 }, false),
            ]),
            "empty",
        ),
        ("no segment", Plan::new(vec![]), "no segment"),
        (
            "gap in a nested plan",
            Plan::nested(vec![
                (
                    seg(0..4, true),
                    Some(Plan::new(vec![seg(0..2, true), seg(3..4, false)])),
                ),
                (seg(4..6, false), None),
            ]),
            "recompute plan of 0..4: gap",
        ),
        (
            "nested plan past its segment",
            Plan::nested(vec![
                (
                    seg(0..4, true),
                    Some(Plan::new(vec![seg(0..2, true), seg(2..5, false)])),
                ),
                (seg(4..6, false), None),
            ]),
            "past the end of the segment",
        ),
        (
            "nested plan too short",
            Plan::nested(vec![
                (seg(0..2, false), None),
                (seg(2..6, true), Some(Plan::new(vec![seg(2..5, true)]))),
            ]),
            "covers layers 2..5",
        ),
        (
            "nested plan two levels down",
            Plan::nested(vec![(
                seg(0..6, true),
                Some(Plan::nested(vec![
                    (
                        seg(0..3, true),
                        Some(Plan::new(vec![seg(0..1, true), seg(1..2, false)])),
                    ),
                    (seg(3..6, false), None),
                ])),
            )]),
            "recompute plan of 0..6: the recompute plan of 0..3: the plan covers layers 0..2",
        ),
        (
            "nested plan on a recorded segment",
            Plan::nested(vec![
                (seg(0..3, false), Some(Plan::new(vec![seg(0..3, true)]))),
                (seg(3..6, true), None),
            ]),
            "recorded but has a recompute plan",
        ),
    ]
}

#[test]
fn run_plan_rejects_plans_that_do_not_cover_the_chain() {
    let runs = Cell::new(0);
    let layers = chain(&runs);
    let x = input();
    for (what, plan, word) in bad_plans() {
        let mut tape = Tape::recording();
        let msg = invalid(run_plan(&mut tape, &layers, &plan, &x), "plan");
        assert!(msg.contains(word), "{what}: '{msg}' lacks '{word}'");
        assert_eq!(runs.get(), 0, "{what}: no layer runs before the check");
        assert!(tape.is_empty(), "{what}: nothing is recorded");
        // The same check guards the planner's prediction and report.
        let model = profile_model(N);
        for err in [
            model.predict(&plan).err(),
            model.report(&plan).err(),
            plan.check_covers(N).err(),
        ] {
            match err {
                Some(planner::Error::InvalidArgument { op: "plan", msg: m }) => assert_eq!(m, msg),
                other => panic!("{what}: expected the same InvalidArgument, got {other:?}"),
            }
        }
    }
}

#[test]
fn valid_plans_run_and_match_the_naive_output() {
    let runs = Cell::new(0);
    let layers = chain(&runs);
    let x = input();
    let naive = {
        let mut tape = Tape::recording();
        run_plan(&mut tape, &layers, &Plan::keep_all(N), &x)
            .unwrap()
            .to_f64_vec()
    };
    for plan in [
        Plan::new(vec![seg(0..2, false), seg(2..6, false)]),
        Plan::new(vec![seg(0..1, true), seg(1..4, false), seg(4..6, true)]),
        Plan::equal_segments(N, N),
        Plan::equal_segments(N, 1),
        Plan::nested(vec![
            (
                seg(0..4, true),
                Some(Plan::new(vec![seg(0..1, true), seg(1..4, false)])),
            ),
            (seg(4..6, false), None),
        ]),
    ] {
        assert!(plan.check_covers(N).is_ok(), "{plan:?}");
        let mut tape = Tape::recording();
        let y = run_plan(&mut tape, &layers, &plan, &x).unwrap();
        assert_eq!(y.to_f64_vec(), naive, "{plan:?}");
    }
}

#[test]
fn checkpoint_sequential_rejects_bad_segment_counts() {
    let runs = Cell::new(0);
    let layers = chain(&runs);
    let x = input();
    for segments in [0, N + 1, 1000] {
        let mut tape = Tape::recording();
        let msg = invalid(
            checkpoint_sequential(&mut tape, &layers, segments, &x),
            "checkpoint_sequential",
        );
        assert!(
            msg.contains(&format!("1..={N}")) && msg.contains(&format!("got {segments}")),
            "{segments} segments: {msg}"
        );
        assert_eq!(runs.get(), 0, "no layer runs before the check");
    }
    for segments in [1, 2, N] {
        let mut tape = Tape::recording();
        assert!(checkpoint_sequential(&mut tape, &layers, segments, &x).is_ok());
    }
}

#[test]
fn empty_chains_are_errors() {
    let x = input();
    let empty: Vec<Stage> = Vec::new();
    let mut tape = Tape::recording();
    let msg = invalid(
        checkpoint_sequential(&mut tape, &empty, 1, &x),
        "checkpoint_sequential",
    );
    assert!(msg.contains("no layers"), "{msg}");
    let msg = invalid(run_plan(&mut tape, &empty, &Plan::keep_all(0), &x), "plan");
    assert!(msg.contains("no layers"), "{msg}");
    let msg = invalid(
        run_with_policy(&mut tape, &empty, &Policy::Keep(vec![OpKind::Conv]), &x),
        "plan",
    );
    assert!(msg.contains("no layers"), "{msg}");
    match profile_model(0).plan(1 << 30) {
        Err(planner::Error::InvalidArgument { op: "planner", msg }) => {
            assert!(msg.contains("no layers"), "{msg}")
        }
        other => panic!("expected InvalidArgument from the planner, got {other:?}"),
    }
}

#[test]
fn bad_costs_are_errors() {
    for cost in [f64::NAN, -1.0, f64::INFINITY] {
        let mut model = profile_model(3);
        model.layers[1].cost = cost;
        for result in [
            model.plan(1 << 30).err(),
            model.front(PlanOptions::default()).err(),
        ] {
            match result {
                Some(planner::Error::InvalidArgument { op: "planner", msg }) => {
                    assert!(msg.contains("l1") && msg.contains("cost"), "{msg}")
                }
                other => panic!("cost {cost}: expected InvalidArgument, got {other:?}"),
            }
        }
    }
}

/// A hand-made model of `n` layers (the bytes do not matter here).
fn profile_model(n: usize) -> ChainModel {
    ChainModel {
        layers: (0..n)
            .map(|i| LayerProfile::simple(format!("l{i}"), 5, 5, 1.0))
            .collect(),
        base_bytes: 0,
        loss_bytes: 0,
    }
}
