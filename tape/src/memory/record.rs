//! The buffer record behind a memory report: while a device records ([`MemoryStats::
//! start_recording`](super::MemoryStats::start_recording)), every buffer and workspace charged to
//! it is noted with what the thread was running ([`crate::context`]), and the set alive at the
//! highest point is kept.

use super::report::{Entry, MemoryReport, Role};
use super::Warning;
use crate::context::{self, Pass};
use crate::dtype::DType;
use std::collections::HashMap;
use std::sync::Arc;

/// What was charged: a buffer (of a dtype) or a kernel's workspace.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Charge {
    /// A tensor buffer of `len` elements of a dtype.
    Buffer(DType, usize),
    /// A kernel's workspace.
    Workspace,
}

/// The live buffers and the set alive at the peak.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    live: HashMap<u64, Entry>,
    /// Bytes charged before recording started, not itemised.
    held_before: usize,
    current: usize,
    peak: usize,
    at_peak: Vec<Entry>,
    peak_context: context::Context,
    /// The buffer whose charge set the peak (its shape arrives just after).
    peak_setter: Option<u64>,
    warnings: Vec<Warning>,
}

/// The role of a new charge from what the thread is running.
fn role_of(charge: Charge, ctx: &context::Context) -> Role {
    match (charge, ctx.op) {
        (Charge::Workspace, _) => Role::Workspace,
        (_, Some(("block_storage", _))) => Role::BlockStorage,
        (_, Some((_, Pass::Forward))) => Role::Activation,
        (_, Some((_, Pass::Recompute))) => Role::Recomputed,
        (_, Some((_, Pass::Backward))) => Role::Gradient,
        (_, Some((_, Pass::Optimizer))) => Role::OptimizerState,
        (_, None) => Role::Other,
    }
}

impl Recorder {
    /// A record of a device holding `held_before` bytes now.
    pub(crate) fn new(held_before: usize) -> Self {
        Recorder {
            held_before,
            peak: held_before,
            current: held_before,
            ..Recorder::default()
        }
    }

    /// `bytes` charged for `id`.
    pub(crate) fn alloc(&mut self, id: u64, bytes: usize, charge: Charge) {
        let ctx = context::current();
        let (dtype, shape) = match charge {
            Charge::Buffer(dtype, len) => (Some(dtype), vec![len]),
            Charge::Workspace => (None, vec![bytes]),
        };
        let entry = Entry {
            id,
            role: role_of(charge, &ctx),
            op: ctx.op.map(|(op, _)| op),
            scope: ctx.name.clone(),
            shape,
            dtype,
            bytes,
            held_at_report: false,
        };
        self.live.insert(id, entry);
        self.current += bytes;
        if self.current > self.peak {
            self.mark_peak(ctx);
            self.peak_setter = Some(id);
        }
    }

    /// The buffer `id` released.
    pub(crate) fn free(&mut self, id: u64) {
        if let Some(e) = self.live.remove(&id) {
            self.current -= e.bytes;
        }
    }

    /// Buffer `id` now has a tensor of `shape` over it.
    pub(crate) fn shape(&mut self, id: u64, shape: &[usize]) {
        if let Some(e) = self.live.get_mut(&id) {
            if e.shape.iter().product::<usize>() == shape.iter().product::<usize>() {
                e.shape = shape.to_vec();
            }
        }
        if self.peak_setter == Some(id) {
            if let Some(e) = self.at_peak.iter_mut().find(|e| e.id == id) {
                e.shape = shape.to_vec();
            }
        }
    }

    /// Restarts the peak from what is held now.
    pub(crate) fn reset_peak(&mut self) {
        self.mark_peak(context::current());
        self.peak_setter = None;
    }

    fn mark_peak(&mut self, ctx: context::Context) {
        self.peak = self.current;
        self.at_peak = self.live.values().cloned().collect();
        self.peak_context = ctx;
    }

    /// Notes `warning` (once).
    pub(crate) fn warn(&mut self, warning: Warning) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// The report of the peak so far.
    pub(crate) fn report(&self) -> MemoryReport {
        let mut entries = self.at_peak.clone();
        for e in &mut entries {
            e.held_at_report = self.live.contains_key(&e.id);
        }
        if self.held_before > 0 {
            entries.push(Entry {
                id: 0,
                role: Role::Other,
                op: None,
                scope: Some(Arc::from("(held before recording started)")),
                shape: vec![self.held_before],
                dtype: None,
                bytes: self.held_before,
                held_at_report: true,
            });
        }
        entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id)));
        MemoryReport {
            peak_bytes: self.peak,
            phase: self.peak_context.op,
            phase_scope: self.peak_context.name.clone(),
            entries,
            noted: self.warnings.clone(),
        }
    }
}
