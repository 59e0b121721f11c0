//! Exact Pareto dynamic programming over a DAG of positions `0..=n`.
//!
//! Each edge moves from one position to a later one and adds `stored` bytes (kept until the end
//! of forward), raises `transient` (bytes alive only while one segment is recomputed: the total is
//! their maximum) and adds `cost`. A path's predicted peak is `stored + max(transient)`; we want
//! the cheapest path whose peak fits. The max makes the objective non-additive, so
//! [`cheapest_path`] fixes it: for each candidate cap on the transient it solves an additive
//! two-objective problem (stored bytes, cost) exactly, keeping per position only the labels on the
//! Pareto staircase. The best over all caps is the exact optimum.

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
    cost: f64,
    back: Option<(usize, usize, Edge)>,
}

/// Keeps the labels on the (stored, cost) staircase: sorted by stored bytes, each cheaper than
/// every one before it.
fn prune(mut labels: Vec<Label>) -> Vec<Label> {
    labels.sort_by(|a, b| a.stored.cmp(&b.stored).then(a.cost.total_cmp(&b.cost)));
    let mut kept: Vec<Label> = Vec::new();
    for l in labels {
        if kept.last().is_none_or(|k| l.cost < k.cost) {
            kept.push(l);
        }
    }
    kept
}

/// The cheapest path from 0 to `n` using only edges with `transient <= cap` and with
/// `stored <= free - cap`: a two-objective (stored, cost) Pareto search.
fn cheapest_under_cap(
    n: usize,
    free: u64,
    cap: u64,
    edges: &[Vec<Edge>],
) -> Option<(f64, Vec<Edge>)> {
    let room = free.checked_sub(cap)?;
    let mut fronts: Vec<Vec<Label>> = vec![Vec::new(); n + 1];
    fronts[0].push(Label {
        stored: 0,
        cost: 0.0,
        back: None,
    });
    for p in 0..n {
        let front = prune(std::mem::take(&mut fronts[p]));
        for (i, l) in front.iter().enumerate() {
            for e in edges[p]
                .iter()
                .filter(|e| e.transient <= cap && e.to > p && e.to <= n)
            {
                let stored = l.stored + e.stored;
                if stored <= room {
                    fronts[e.to].push(Label {
                        stored,
                        cost: l.cost + e.cost,
                        back: Some((p, i, *e)),
                    });
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
    Some((best.cost, path))
}

/// The cheapest path from 0 to `n` with `stored + max transient <= free`, as its edges; `None`
/// if no path fits. `edges(p)` lists the edges leaving position `p`.
///
/// The largest transient of the optimal path is one of the edges' transient values, so trying
/// each distinct value as a cap (edges above it excluded, `stored <= free - cap`) and keeping the
/// cheapest result is exact, and each try is a two-objective search with small fronts.
pub fn cheapest_path(n: usize, free: u64, edges: impl Fn(usize) -> Vec<Edge>) -> Option<Vec<Edge>> {
    let edges: Vec<Vec<Edge>> = (0..n).map(&edges).collect();
    let mut caps: Vec<u64> = edges.iter().flatten().map(|e| e.transient).collect();
    caps.push(0);
    caps.sort_unstable();
    caps.dedup();
    let mut best: Option<(f64, Vec<Edge>)> = None;
    for cap in caps.into_iter().take_while(|&cap| cap <= free) {
        if let Some(found) = cheapest_under_cap(n, free, cap, &edges) {
            if best.as_ref().is_none_or(|b| found.0 < b.0) {
                best = Some(found);
            }
        }
        if best.as_ref().is_some_and(|b| b.0 <= 0.0) {
            break; // nothing is cheaper than recomputing nothing
        }
    }
    best.map(|(_, path)| path)
}
