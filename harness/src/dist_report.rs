//! Benchmark rows of a data-parallel run: each rank's [`CaseResult`] with its rank, the world
//! size and the step's communication ([`StepCommStats`]), gathered on rank 0, which alone
//! prints them ([`print_dist_cases`]).

use crate::report::{print_case, CaseResult};
use dist::{ProcessGroup, StepComm};
use serde::{Deserialize, Serialize};

/// One step's gradient communication on one rank, averaged over the measured steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepCommStats {
    /// Bytes this rank sent into all-reduces per step.
    pub comm_bytes: u64,
    /// Buckets all-reduced per step.
    pub comm_buckets: usize,
    /// Seconds per step the all-reduces ran on the communication thread.
    pub comm_s: f64,
    /// Seconds per step this rank waited for them after backward (not overlapped).
    pub comm_exposed_s: f64,
}

impl StepCommStats {
    /// The mean of `steps`.
    pub fn mean(steps: &[StepComm]) -> Self {
        let n = steps.len().max(1);
        let sum = |f: &dyn Fn(&StepComm) -> f64| steps.iter().map(f).sum::<f64>() / n as f64;
        StepCommStats {
            comm_bytes: sum(&|c| c.bytes as f64) as u64,
            comm_buckets: sum(&|c| c.buckets as f64).round() as usize,
            comm_s: sum(&|c| c.comm_s),
            comm_exposed_s: sum(&|c| c.exposed_s),
        }
    }
}

/// A benchmark row of one rank of a data-parallel run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistCaseResult {
    /// The case as one process measured it (batch: per process).
    #[serde(flatten)]
    pub case: CaseResult,
    /// Processes in the run.
    pub world_size: usize,
    /// This row's rank.
    pub rank: usize,
    /// The step's communication.
    #[serde(flatten)]
    pub comm: StepCommStats,
}

/// Gathers every rank's `row` on rank 0 (an all-gather of their JSON) and prints them there,
/// rank by rank: one JSON object each when `json`, else a table line and a communication line
/// (`baseline`: the naive row of the same rank, for the ratios). Every rank must call it.
pub fn print_dist_cases(
    group: &ProcessGroup,
    row: &DistCaseResult,
    json: bool,
    baselines: &[DistCaseResult],
) -> Result<Vec<DistCaseResult>, String> {
    let text = serde_json::to_vec(row).map_err(|e| e.to_string())?;
    let lens = group
        .all_gather_f64(&[text.len() as f64])
        .map_err(|e| e.to_string())?;
    let width = lens.iter().map(|l| l[0] as usize).max().unwrap_or(0);
    let mut padded: Vec<f64> = text.iter().map(|&b| f64::from(b)).collect();
    padded.resize(width, f64::from(b' '));
    let all = group.all_gather_f64(&padded).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for bytes in all {
        let bytes: Vec<u8> = bytes.iter().map(|&b| b as u8).collect();
        rows.push(serde_json::from_slice::<DistCaseResult>(&bytes).map_err(|e| e.to_string())?);
    }
    if group.is_root() {
        for r in &rows {
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
                continue;
            }
            let base = baselines.iter().find(|b| b.rank == r.rank).map(|b| &b.case);
            print_case(&r.case, false, base);
            let c = &r.comm;
            let step = r.case.measured.median_s.max(1e-12);
            println!(
                "  rank {}/{}: {:.1} MB all-reduced in {} buckets, {:.3} s communicating, \
                 {:.3} s exposed ({:.1}% of the step)",
                r.rank,
                r.world_size,
                c.comm_bytes as f64 / 1e6,
                c.comm_buckets,
                c.comm_s,
                c.comm_exposed_s,
                100.0 * c.comm_exposed_s / step
            );
        }
    }
    Ok(rows)
}
