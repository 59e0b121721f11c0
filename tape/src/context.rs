//! What the calling thread is running, for attributing memory: the op and the part of the step
//! ([`Pass`]) of each open op scope, and the module scope names (`features.denseblock2.
//! denselayer7.norm1`) that modules open around their forward. Nothing is kept unless a device
//! records its buffers ([`crate::MemoryStats::start_recording`]): until then entering a scope
//! costs one atomic load.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which part of a step an op ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// A checkpointed segment re-run inside backward.
    Recompute,
    /// Backward closures.
    Backward,
    /// Parameter updates.
    Optimizer,
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pass::Forward => "forward",
            Pass::Recompute => "recompute",
            Pass::Backward => "backward",
            Pass::Optimizer => "optimizer",
        })
    }
}

/// Devices recording their buffers now: the context is kept only while one is.
static RECORDING: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Frames {
    ops: Vec<(&'static str, Pass)>,
    names: Vec<Arc<str>>,
}

thread_local! {
    static FRAMES: RefCell<Frames> = RefCell::default();
}

/// Whether any device records its buffers (and so wants the context).
pub(crate) fn wanted() -> bool {
    RECORDING.load(Ordering::Relaxed) > 0
}

/// A device starts (`true`) or stops recording its buffers.
pub(crate) fn set_recording(on: bool) {
    match on {
        true => RECORDING.fetch_add(1, Ordering::Relaxed),
        false => RECORDING.fetch_sub(1, Ordering::Relaxed),
    };
}

/// The calling thread's innermost op, its pass, and the innermost module scope name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The op and the part of the step it ran in, if an op was running.
    pub op: Option<(&'static str, Pass)>,
    /// The module scope (a state-dict prefix), if a module had opened one.
    pub name: Option<Arc<str>>,
}

/// The calling thread's context now (empty unless a device records its buffers).
pub fn current() -> Context {
    if !wanted() {
        return Context::default();
    }
    FRAMES.with(|f| {
        let f = f.borrow();
        Context {
            op: f.ops.last().copied(),
            name: f.names.last().cloned(),
        }
    })
}

/// The innermost module scope name, to carry into a backward closure (`None` unless a device
/// records its buffers).
pub(crate) fn current_name() -> Option<Arc<str>> {
    if !wanted() {
        return None;
    }
    FRAMES.with(|f| f.borrow().names.last().cloned())
}

/// An open scope; closing it (dropping) pops what it pushed.
#[must_use = "the scope closes when this guard drops"]
pub struct ScopeGuard {
    pushed: Option<bool>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let Some(op) = self.pushed else { return };
        FRAMES.with(|f| {
            let mut f = f.borrow_mut();
            match op {
                true => f.ops.pop().map(|_| ()),
                false => f.names.pop().map(|_| ()),
            };
        });
    }
}

/// Opens an op scope: allocations until the guard drops are attributed to `op` in `pass`.
pub(crate) fn enter_op(op: &'static str, pass: Pass) -> ScopeGuard {
    if !wanted() {
        return ScopeGuard { pushed: None };
    }
    FRAMES.with(|f| f.borrow_mut().ops.push((op, pass)));
    ScopeGuard { pushed: Some(true) }
}

/// Opens a module scope named `name` (a state-dict prefix such as `features.denseblock1.
/// denselayer1.norm1`): the memory report names what is allocated until the guard drops,
/// backward closures recorded meanwhile included, after it. Nothing is done unless a device
/// records its buffers.
pub fn module_scope(name: &str) -> ScopeGuard {
    if !wanted() {
        return ScopeGuard { pushed: None };
    }
    enter_name(Some(Arc::from(name)))
}

/// Re-opens a module scope carried by a backward closure.
pub(crate) fn enter_name(name: Option<Arc<str>>) -> ScopeGuard {
    match name {
        Some(name) => {
            FRAMES.with(|f| f.borrow_mut().names.push(name));
            ScopeGuard {
                pushed: Some(false),
            }
        }
        None => ScopeGuard { pushed: None },
    }
}

/// Which pass of a training step an op runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The step's one real forward pass: batch norm updates its running statistics here.
    Forward,
    /// A checkpointed segment re-run inside backward: batch norm leaves running statistics alone
    /// and dropout replays its mask.
    Recompute,
}

impl From<Phase> for Pass {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Forward => Pass::Forward,
            Phase::Recompute => Pass::Recompute,
        }
    }
}
