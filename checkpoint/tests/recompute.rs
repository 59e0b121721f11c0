//! The shared recompute setting: every spelling parses and prints back, sizes read with units,
//! a model's check names what it runs, and the plan cache plans again only when the bytes held
//! change.

use checkpoint::{parse_bytes, PlanCache, Recompute, RecomputeError, Selective};
use std::cell::Cell;

#[test]
fn every_setting_parses_and_prints_back() {
    for (s, r) in [
        ("naive", Recompute::Naive),
        ("per-block", Recompute::PerBlock),
        ("selective", Recompute::Selective(Selective::ComputeBound)),
        ("selective-linear", Recompute::Selective(Selective::Linear)),
        ("bottleneck", Recompute::Selective(Selective::Bottleneck)),
        ("layer", Recompute::Selective(Selective::Layer)),
        ("budget:12345", Recompute::Budget(12345)),
        ("plan", Recompute::Plan),
    ] {
        assert_eq!(s.parse::<Recompute>().unwrap(), r, "{s}");
        assert_eq!(r.to_string(), s);
    }
    assert_eq!(
        "efficient".parse::<Recompute>().unwrap(),
        Recompute::Selective(Selective::Bottleneck)
    );
    assert_eq!(Recompute::default(), Recompute::Naive);
    for (s, bytes) in [
        ("budget:480MB", 480_000_000),
        ("budget:16GB", 16_000_000_000),
        ("budget:1.5GiB", 1_610_612_736),
        ("budget:2kb", 2000),
    ] {
        assert_eq!(
            s.parse::<Recompute>().unwrap(),
            Recompute::Budget(bytes),
            "{s}"
        );
    }
    assert!(matches!(
        "fast".parse::<Recompute>(),
        Err(RecomputeError::Unknown(_))
    ));
    for bad in ["budget:", "budget:-1", "budget:1e6", "budget:12XB"] {
        assert!(
            matches!(bad.parse::<Recompute>(), Err(RecomputeError::Size { .. })),
            "{bad}"
        );
    }
    assert!(parse_bytes("").is_err());
    assert_eq!(parse_bytes(" 7 B ").unwrap(), 7);
}

#[test]
fn a_model_names_the_settings_it_runs() {
    let runs = [Recompute::Naive, Recompute::PerBlock, Recompute::Budget(0)];
    assert_eq!(
        Recompute::Budget(99).check("M", &runs),
        Ok(Recompute::Budget(99))
    );
    let err = Recompute::Plan.check("M", &runs).unwrap_err();
    assert_eq!(
        err,
        RecomputeError::Unsupported {
            model: "M",
            setting: Recompute::Plan,
            supported: vec!["naive".into(), "per-block".into(), "budget:SIZE".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "M does not run the recompute setting 'plan': it runs naive, per-block, budget:SIZE"
    );
    assert!(Selective::ComputeBound.policy().is_some());
    assert!(Selective::Layer.policy().is_none());
}

#[test]
fn the_plan_cache_plans_again_only_when_the_bytes_held_change() {
    let cache: PlanCache<(usize, u64), u64> = PlanCache::new();
    let made = Cell::new(0);
    let plan = |v: u64| {
        made.set(made.get() + 1);
        Ok::<_, ()>(v)
    };
    assert_eq!(cache.get_or_make((2, 100), 10, || plan(1)), Ok(1));
    assert_eq!(cache.get_or_make((2, 100), 10, || plan(2)), Ok(1));
    assert_eq!(made.get(), 1, "same key, same bytes held: no planning");
    assert_eq!(cache.get_or_make((2, 100), 20, || plan(3)), Ok(3));
    assert_eq!(made.get(), 2, "the bytes held changed: planned again");
    assert_eq!(cache.get_or_make((4, 100), 20, || plan(4)), Ok(4));
    assert_eq!(cache.last(), Some(4));
    assert_eq!(cache.get(&(2, 100)), Some(3));
    assert_eq!(cache.get_or_make((2, 100), 20, || plan(5)), Ok(3));
    assert_eq!(cache.last(), Some(3));
    assert_eq!(cache.get_or_make((8, 1), 0, || Err(())), Err(()));
    assert_eq!(cache.get(&(8, 1)), None, "a failed planning keeps nothing");
    cache.clear();
    assert_eq!(cache.last(), None);
}
