//! Exact Pareto dynamic programming over a DAG of positions `0..=n`.
//!
//! Each edge moves from one position to a later one and adds `stored` bytes (kept until the end
//! of forward), raises `transient` (bytes alive only while one segment is recomputed: the total is
//! their maximum) and adds `cost`. A path's predicted peak is `stored + max(transient)`; we want
//! the cheapest path whose peak fits. Because the max makes the objective non-additive, every
//! position keeps the set of labels not dominated in (stored, transient, cost); labels that
//! already exceed the budget are dropped (both terms only grow). The result is exact.

/// One way to move from a position to a later one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    /// Position the edge leads to (greater than where it starts).
    pub to: usize,
    /// Bytes added to what stays stored.
    pub stored: u64,
    /// Bytes alive only while this edge's segment is recomputed.
    pub transient: u64,
    /// Cost added (recompute time or FLOPs).
    pub cost: f64,
    /// Caller's tag (which option this edge is).
    pub tag: usize,
}

#[derive(Clone, Copy, Debug)]
struct Label {
    stored: u64,
    transient: u64,
    cost: f64,
    back: Option<(usize, usize, Edge)>,
}

fn dominates(a: &Label, b: &Label) -> bool {
    a.stored <= b.stored && a.transient <= b.transient && a.cost <= b.cost
}

fn prune(labels: Vec<Label>) -> Vec<Label> {
    let mut sorted = labels;
    sorted.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(a.stored.cmp(&b.stored))
            .then(a.transient.cmp(&b.transient))
    });
    let mut kept: Vec<Label> = Vec::new();
    for l in sorted {
        if !kept.iter().any(|k| dominates(k, &l)) {
            kept.push(l);
        }
    }
    kept
}

/// The cheapest path from 0 to `n` with `stored + max transient <= free`, as its edges; `None`
/// if no path fits. `edges(p)` lists the edges leaving position `p`.
pub fn cheapest_path(n: usize, free: u64, edges: impl Fn(usize) -> Vec<Edge>) -> Option<Vec<Edge>> {
    let mut fronts: Vec<Vec<Label>> = vec![Vec::new(); n + 1];
    fronts[0].push(Label {
        stored: 0,
        transient: 0,
        cost: 0.0,
        back: None,
    });
    for p in 0..n {
        let front = prune(std::mem::take(&mut fronts[p]));
        for (i, l) in front.iter().enumerate() {
            for e in edges(p) {
                let next = Label {
                    stored: l.stored + e.stored,
                    transient: l.transient.max(e.transient),
                    cost: l.cost + e.cost,
                    back: Some((p, i, e)),
                };
                if next.stored + next.transient <= free && e.to <= n && e.to > p {
                    fronts[e.to].push(next);
                }
            }
        }
        fronts[p] = front;
    }
    let best = fronts[n]
        .iter()
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .copied()?;
    let mut path = Vec::new();
    let mut cur = best;
    while let Some((p, i, e)) = cur.back {
        path.push(e);
        cur = fronts[p][i];
    }
    path.reverse();
    Some(path)
}
