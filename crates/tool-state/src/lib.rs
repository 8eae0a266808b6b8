//! The Chain-of-Edits tool: the state a model edits, one command per turn.
//!
//! - [`Program`]: the program as lines, keeping its line ending style; [`Program::apply`] applies
//!   a [`coe_dsl::Command`] or refuses it with an [`EditError`], leaving the program unchanged.
//! - [`render_observation`] and [`render_feedback`]: the text the model reads after each turn.
//! - [`Episode`]: a task played turn by turn against an [`Executor`], with the per-turn rewards
//!   of DESIGN.md section 7, recorded as a serde [`Trace`].
//!
//! The crate runs programs only through the [`Executor`] trait (from `coe-exec`), so it does not
//! depend on any sandbox; its tests use a small fake.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod episode;
mod feedback;
mod program;
mod task;

pub use coe_exec::{
    ErrorInfo, ExecRequest, Executor, ExecutorError, Limits, Outcome, Status, TestResult,
};
pub use episode::{Effect, EndReason, Episode, EpisodeConfig, Rewards, StepError, Trace, Turn};
pub use feedback::{
    FEEDBACK_SEPARATOR, render_feedback, render_invalid_command, render_observation,
    split_observation,
};
pub use program::{EditError, LineEnding, Program};
pub use task::Task;
