//! coe-trainer: turns the parts into the paper's method.
//!
//! - [`config`]: a run's configuration (`RunConfig`, from TOML);
//! - [`chat`]: demonstrations as token sequences with a loss mask on the model's own tokens;
//! - [`optim`]: the optimiser (AdamW, warm-up + cosine, accumulation, clipping), its steps
//!   and checkpoints, shared by SFT and GRPO;
//! - [`sft`]: supervised fine-tuning (`run_sft`);
//! - [`rollout`]: episodes played by the policy against the real environment;
//! - [`grpo`]: per-turn advantages normalised per turn index within a group, the clipped
//!   objective, the KL penalty to the policy RL starts from, task selection, and `run_rl`;
//! - [`eval`]: evaluation (`evaluate`), pass@k and the other metrics;
//! - [`direct`]: the direct-answer baseline (the whole fixed program in one answer);
//! - [`run`]: what the runs share (loading models and adapters, saving, reading files);
//! - [`plot`]: curves of a run's metrics as SVG.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod chat;
pub mod config;
pub mod direct;
pub mod eval;
pub mod grpo;
mod metrics;
pub mod optim;
pub mod plot;
mod progress;
pub mod rollout;
pub mod run;
pub mod sft;

/// Why training or evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The model failed.
    #[error(transparent)]
    Policy(#[from] coe_policy::PolicyError),
    /// The environment's executor failed.
    #[error(transparent)]
    Executor(#[from] coe_exec::ExecutorError),
    /// An episode could not take a step.
    #[error(transparent)]
    Step(#[from] coe_tool_state::StepError),
    /// Training data is unusable.
    #[error("data: {0}")]
    Data(String),
    /// A conversation's opening and first command alone exceed the context.
    #[error("the opening and first command need more than {context} tokens")]
    TooLong {
        /// The context limit.
        context: usize,
    },
    /// The loss became NaN or infinite; the last good state is kept.
    #[error("training diverged at step {step}: loss {loss}")]
    Diverged {
        /// The step that failed.
        step: usize,
        /// The loss seen.
        loss: f64,
    },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}
