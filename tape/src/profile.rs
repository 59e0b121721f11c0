//! A profiler of training steps that users can read: time per op kind, split into the forward
//! pass, recompute (checkpointed segments re-run inside backward), backward and the optimizer,
//! with call counts and each row's share of the profiled time, the way `torch.profiler`'s
//! `key_averages()` table reads.
//!
//! ```
//! use tape::{ops, profile, DType, Device, Tape, Tensor};
//! let dev = Device::cpu();
//! let x = Tensor::randn(&[4, 8], DType::F32, &dev, 0).unwrap().with_requires_grad(true);
//! profile::start();
//! let mut tape = Tape::recording();
//! let y = ops::relu(&mut tape, &x).unwrap();
//! let loss = ops::sum(&mut tape, &y).unwrap();
//! tape.backward(&loss).unwrap();
//! let report = profile::finish().unwrap();
//! assert_eq!(report.calls("relu", profile::Pass::Forward), 1);
//! println!("{report}");
//! ```
//!
//! Times are exclusive: an op's time excludes the ops it runs inside it (a checkpointed
//! segment's backward shows only its own bookkeeping; the recompute and the inner backward show
//! under their ops). The profiler records the calling thread's ops (the kernels' own worker
//! threads are inside those times); when it is off, an op pays one thread-local check.

pub use crate::context::Pass;
use crate::context::{self, ScopeGuard};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    started: Option<Instant>,
    /// Per (op, pass): calls and exclusive time.
    rows: HashMap<(&'static str, Pass), (u64, Duration)>,
    /// Time spent in the children of each open scope.
    stack: Vec<Duration>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Starts profiling the calling thread's ops (discarding any profile in progress).
pub fn start() {
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            started: Some(Instant::now()),
            ..State::default()
        })
    });
}

/// Whether the calling thread is being profiled.
pub fn is_active() -> bool {
    STATE.with(|s| s.borrow().is_some())
}

/// Stops profiling and returns the report (`None` if profiling was not started).
pub fn finish() -> Option<Report> {
    let state = STATE.with(|s| s.borrow_mut().take())?;
    let wall = state.started.map(|t| t.elapsed()).unwrap_or_default();
    let mut rows: Vec<Row> = state
        .rows
        .into_iter()
        .map(|((op, pass), (calls, time))| Row {
            op,
            pass,
            calls,
            seconds: time.as_secs_f64(),
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Some(Report {
        rows,
        wall_seconds: wall.as_secs_f64(),
    })
}

/// Runs `f` as one call of `op` in `pass` (see [`scope`]).
pub(crate) fn timed<R>(op: &'static str, pass: Pass, f: impl FnOnce() -> R) -> R {
    let _scope = scope(op, pass);
    f()
}

/// Times one call of `op` in `pass` from now until the returned guard drops (exclusive of
/// nested scopes), when the calling thread is being profiled.
pub(crate) fn scope(op: &'static str, pass: Pass) -> Scope {
    let active = STATE.with(|s| match s.borrow_mut().as_mut() {
        Some(st) => {
            st.stack.push(Duration::ZERO);
            true
        }
        None => false,
    });
    Scope {
        op,
        pass,
        start: active.then(Instant::now),
        _context: context::enter_op(op, pass),
    }
}

/// An open profiling scope (see [`scope`]).
pub(crate) struct Scope {
    op: &'static str,
    pass: Pass,
    start: Option<Instant>,
    /// The op's scope in the memory attribution context (closed after the timing).
    _context: ScopeGuard,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(t0) = self.start else { return };
        let total = t0.elapsed();
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().as_mut() {
                let children = st.stack.pop().unwrap_or_default();
                if let Some(parent) = st.stack.last_mut() {
                    *parent += total;
                }
                let row = st.rows.entry((self.op, self.pass)).or_default();
                row.0 += 1;
                row.1 += total.saturating_sub(children);
            }
        });
    }
}

/// One row of a [`Report`].
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The op.
    pub op: &'static str,
    /// The part of the step.
    pub pass: Pass,
    /// Number of calls.
    pub calls: u64,
    /// Exclusive time, seconds.
    pub seconds: f64,
}

/// What a profile measured: one row per (op, pass), largest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The rows, by time, largest first.
    pub rows: Vec<Row>,
    /// Wall time from [`start`] to [`finish`], seconds.
    pub wall_seconds: f64,
}

impl Report {
    /// Time in ops, seconds (the sum of the rows).
    pub fn op_seconds(&self) -> f64 {
        self.rows.iter().map(|r| r.seconds).sum()
    }

    /// Calls of `op` in `pass`.
    pub fn calls(&self, op: &str, pass: Pass) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.op == op && r.pass == pass)
            .map(|r| r.calls)
            .sum()
    }

    /// Seconds of `pass`, all ops.
    pub fn pass_seconds(&self, pass: Pass) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.pass == pass)
            .map(|r| r.seconds)
            .sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.op_seconds().max(1e-12);
        writeln!(
            f,
            "{:<18} {:<10} {:>7} {:>11} {:>9} {:>7}",
            "op", "pass", "calls", "total ms", "avg us", "share"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<18} {:<10} {:>7} {:>11.2} {:>9.1} {:>6.1}%",
                r.op,
                r.pass.to_string(),
                r.calls,
                r.seconds * 1e3,
                r.seconds * 1e6 / r.calls.max(1) as f64,
                100.0 * r.seconds / total
            )?;
        }
        for pass in [
            Pass::Forward,
            Pass::Recompute,
            Pass::Backward,
            Pass::Optimizer,
        ] {
            let s = self.pass_seconds(pass);
            if s > 0.0 {
                writeln!(
                    f,
                    "{:<18} {:<10} {:>7} {:>11.2} {:>9} {:>6.1}%",
                    "(all ops)",
                    pass.to_string(),
                    "",
                    s * 1e3,
                    "",
                    100.0 * s / total
                )?;
            }
        }
        write!(
            f,
            "ops {:.2} ms of {:.2} ms wall ({:.1}% outside ops: tape bookkeeping, data, allocation between ops)",
            total * 1e3,
            self.wall_seconds * 1e3,
            100.0 * (1.0 - total / self.wall_seconds.max(1e-12)).max(0.0)
        )
    }
}
