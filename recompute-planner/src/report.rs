//! [`ChainModel::report`]: a plan and its prediction in words.

use crate::error::Result;
use crate::{ChainModel, Plan};
use std::fmt::Write;

impl ChainModel {
    /// A human-readable account of `plan`: its segments (nested recompute plans indented), the
    /// predicted peak, where it happens and what is alive then, and the extra cost; fails like
    /// [`ChainModel::predict`] for a plan that does not fit the chain.
    pub fn report(&self, plan: &Plan) -> Result<String> {
        let p = self.predict(plan)?;
        let total = self.forward_cost();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan for {} layers: {} levels of checkpoints, {} layer forwards recomputed",
            self.layers.len(),
            plan.depth(),
            p.recomputed_layers
        );
        self.write_segments(&mut s, plan, 1);
        let a = &p.at;
        let _ = writeln!(
            s,
            "predicted peak {} bytes, at {a}:\n  held before the step {} + checkpoints {} + \
             recorded layers {} + gradients {} + parameter gradients {} + the running layer's \
             own {}",
            p.peak,
            self.base_bytes,
            a.checkpoint_bytes,
            a.recorded_bytes,
            a.gradient_bytes,
            a.param_grad_bytes,
            a.working_bytes
        );
        let _ = write!(
            s,
            "extra forward cost {:.4} ({:.1}% of one forward)",
            p.extra_cost,
            if total > 0.0 {
                100.0 * p.extra_cost / total
            } else {
                0.0
            }
        );
        Ok(s)
    }

    fn write_segments(&self, s: &mut String, plan: &Plan, level: usize) {
        for (i, seg) in plan.segments().iter().enumerate() {
            let r = &seg.range;
            let what = if seg.checkpointed {
                "recompute"
            } else {
                "keep"
            };
            let _ = write!(
                s,
                "{:indent$}{what:<9} layers {:>3}..{:<3} ({} .. {})",
                "",
                r.start,
                r.end,
                self.layers[r.start].name,
                self.layers[r.end - 1].name,
                indent = 2 * level
            );
            if seg.checkpointed {
                let _ = write!(
                    s,
                    ": keeps its output, {} bytes",
                    self.layers[r.end - 1].output_bytes
                );
            }
            let _ = writeln!(s);
            if let Some(inner) = plan.inner(i) {
                self.write_segments(s, inner, level + 1);
            }
        }
    }
}
