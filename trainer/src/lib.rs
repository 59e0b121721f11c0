//! `trainer`: the training loop the workspace's models share. A model's training is a [`Task`]
//! (queue one step on a batch, evaluate, say which module and optimizer hold its state);
//! [`fit`] runs it for a number of epochs with a learning-rate [`Schedule`], shows progress
//! ([`Progress`]: a bar on a terminal, a line every tenth of an epoch otherwise), evaluates after
//! every epoch, and with a run directory ([`RunDir`]) saves the weights, the optimizer state and
//! a JSON state file atomically after every epoch, from which a later run resumes at the next
//! epoch (bit for bit the run it continues, when the task's batches and seeds depend only on the
//! epoch and batch index).
//!
//! [`anomaly`] is the guarded optimizer update every model's training step uses: the update is
//! skipped on the device when the loss, a gradient or a parameter is not finite, and the step
//! fails naming the culprit. [`fit`] holds the run's [`anomaly::AnomalyGuard`] and hands it to
//! every step: a step's flag is checked when the next step queues its update, and the epoch's
//! last step before the epoch is evaluated and saved.
//!
//! Steps are queued without waiting: a step's loss and hit count stay on the device, are copied
//! to the host asynchronously ([`tape::ops::PendingScalar`]) and added up once there, so a
//! steady-state step makes no host sync (the epoch's end waits for the last ones).
//!
//! A task that trains with dynamic loss scaling ([`tape::optim::LossScaler`], for f16) hands
//! its scaler to [`fit`] through [`Task::loss_scaler`]: the run directory records the scaler's
//! settings and state with every epoch and a resumed run restores them.

pub mod anomaly;
mod eval;
mod fit;
mod progress;
mod run_dir;
mod schedule;

pub use eval::Eval;
pub use fit::{fit, EpochReport, FitOptions, Queued, Task, TrainError};
pub use progress::Progress;
pub use run_dir::{LossScalerRecord, RunDir, RunState, ScalerStateError};
pub use schedule::Schedule;
