//! [`MemoryReport`]: every buffer alive at a device's peak, with its role, the module scope and
//! op that made it, its shape, dtype and bytes; totals per role that add up to the peak; and
//! the point of the step where the peak happened.

use super::Warning;
use crate::context::Pass;
use crate::dtype::DType;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Why a buffer is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A trainable parameter (named by [`MemoryReport::classify`]).
    Parameter,
    /// A parameter's gradient (named by [`MemoryReport::classify`]).
    ParameterGradient,
    /// Optimizer state (momentum, moments), made in the update or named by
    /// [`MemoryReport::classify`].
    OptimizerState,
    /// Made by an op in the forward pass and still held: saved for backward by a recorded op,
    /// kept as a checkpointed segment's input (or, for a batch norm in it, its batch statistics,
    /// for the recompute), or held by the caller.
    Activation,
    /// Made again by the recompute of a checkpointed segment inside backward.
    Recomputed,
    /// Made in backward: a gradient on its way down (or a parameter's, until classified).
    Gradient,
    /// A dense block's shared feature storage (or its gradient).
    BlockStorage,
    /// A kernel's workspace (im2col columns, a convolution algorithm's scratch).
    Workspace,
    /// Anything else: inputs, buffers made outside any op.
    Other,
}

impl Role {
    /// Every role, in report order.
    pub const ALL: [Role; 9] = [
        Role::Parameter,
        Role::ParameterGradient,
        Role::OptimizerState,
        Role::Activation,
        Role::Recomputed,
        Role::Gradient,
        Role::BlockStorage,
        Role::Workspace,
        Role::Other,
    ];

    /// The role's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Parameter => "parameter",
            Role::ParameterGradient => "parameter gradient",
            Role::OptimizerState => "optimizer state",
            Role::Activation => "activation (forward)",
            Role::Recomputed => "recomputed",
            Role::Gradient => "gradient (backward)",
            Role::BlockStorage => "block storage",
            Role::Workspace => "workspace",
            Role::Other => "other",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One buffer alive at the peak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The buffer (see [`crate::Tensor::buffer_id`]); 0 for the bytes held before recording started.
    pub id: u64,
    /// Why it is held.
    pub role: Role,
    /// The op that made it, if one was running.
    pub op: Option<&'static str>,
    /// The module scope it was made in (a state-dict prefix), if any.
    pub scope: Option<Arc<str>>,
    /// Its shape (a workspace: its bytes).
    pub shape: Vec<usize>,
    /// Its dtype (none for a workspace).
    pub dtype: Option<DType>,
    /// Bytes charged for it.
    pub bytes: usize,
    /// Whether it was still alive when the report was made.
    pub held_at_report: bool,
}

/// Every buffer alive at a device's peak ([`crate::MemoryStats::report`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    /// The peak: the entries' bytes add up to it.
    pub peak_bytes: usize,
    /// The op and pass running when the peak was reached (none outside any op).
    pub phase: Option<(&'static str, Pass)>,
    /// The module scope at the peak, if any.
    pub phase_scope: Option<Arc<str>>,
    /// The buffers alive at the peak, largest first.
    pub entries: Vec<Entry>,
    /// Warnings noted while recording (checkpointing that saved nothing).
    pub noted: Vec<Warning>,
}

/// Anything that names the buffer it holds (a [`crate::Tensor`]), so that a report can say what
/// the buffer is ([`MemoryReport::classify`]).
pub trait HasBuffer {
    /// The buffer's id, as the report's entries carry it.
    fn buffer_id(&self) -> u64;
}

/// The smallest share of the peak a tensor held by the caller must have to be warned about
/// (the logits and the loss a step hands back are far below it).
pub const HELD_WARNING_SHARE: f64 = 0.01;

impl MemoryReport {
    /// Gives the buffers of the named tensors the role `role` and, where no module scope named
    /// them, their name (parameters, their gradients and the optimizer's state are known to
    /// the caller, not to the ops that made them).
    pub fn classify<'t, B: HasBuffer + 't>(
        &mut self,
        tensors: impl IntoIterator<Item = (&'t str, &'t B)>,
        role: Role,
    ) {
        let names: HashMap<u64, &str> = tensors
            .into_iter()
            .map(|(name, t)| (t.buffer_id(), name))
            .collect();
        for e in &mut self.entries {
            if let Some(name) = names.get(&e.id) {
                e.role = role;
                e.scope.get_or_insert_with(|| Arc::from(*name));
            }
        }
    }

    /// Bytes per role, in [`Role::ALL`]'s order, roles with none left out; they add up to
    /// [`MemoryReport::peak_bytes`].
    pub fn totals(&self) -> Vec<(Role, usize)> {
        Role::ALL
            .iter()
            .map(|&r| {
                let bytes = self.entries.iter().filter(|e| e.role == r).map(|e| e.bytes);
                (r, bytes.sum())
            })
            .filter(|&(_, b)| b > 0)
            .collect()
    }

    /// Everything the report warns about: the warnings noted while recording, then each
    /// activation (or recomputed tensor) alive at the peak and still held when the report was
    /// made, of at least [`HELD_WARNING_SHARE`] of the peak.
    pub fn warnings(&self) -> Vec<Warning> {
        let least = (self.peak_bytes as f64 * HELD_WARNING_SHARE) as usize;
        let held = self.entries.iter().filter(|e| {
            e.held_at_report
                && matches!(e.role, Role::Activation | Role::Recomputed)
                && e.bytes >= least.max(1)
        });
        let mut out = self.noted.clone();
        out.extend(held.map(|e| Warning::HeldByCaller {
            scope: e.scope.clone(),
            op: e.op,
            bytes: e.bytes,
        }));
        out
    }

    /// The `n` largest entries.
    pub fn largest(&self, n: usize) -> &[Entry] {
        &self.entries[..n.min(self.entries.len())]
    }

    /// The report as text: the peak and where it happened, the totals per role, then the
    /// `n` largest entries.
    pub fn render(&self, n: usize) -> String {
        let mut out = String::new();
        let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
        let at = match (&self.phase, &self.phase_scope) {
            (Some((op, pass)), Some(s)) => format!("in {pass}, {op} of {s}"),
            (Some((op, pass)), None) => format!("in {pass}, {op}"),
            (None, _) => "outside any op".into(),
        };
        out += &format!(
            "peak {} ({} buffers), reached {at}\n",
            mb(self.peak_bytes),
            self.entries.len()
        );
        for (role, bytes) in self.totals() {
            let share = 100.0 * bytes as f64 / self.peak_bytes.max(1) as f64;
            out += &format!("  {:<22} {:>11} {:>6.1}%\n", role.name(), mb(bytes), share);
        }
        for w in self.warnings() {
            out += &format!("warning: {w}\n");
        }
        out += &format!("the {} largest:\n", n.min(self.entries.len()));
        for e in self.largest(n) {
            let dtype = e
                .dtype
                .map_or("-".to_string(), |d| format!("{d:?}").to_lowercase());
            out += &format!(
                "  {:>11}  {:<20} {:<18} {:<5} {:<16} {}\n",
                mb(e.bytes),
                e.role.name(),
                format!("{:?}", e.shape),
                dtype,
                e.op.unwrap_or("-"),
                e.scope.as_deref().unwrap_or("-")
            );
        }
        out
    }
}
