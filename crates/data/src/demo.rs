//! Demonstrations: a corrupted reference repaired by the inverse of its corruption, played
//! through a real episode so every observation carries real feedback.

use coe_dsl::Command;
use coe_exec::{Executor, ExecutorError, Status};
use coe_tool_state::{Episode, EpisodeConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::formats::Demo;

use crate::corrupt::{Corpus, Corruption, EditKind, corrupt};
use crate::prompt::{Message, Role, opening};
use crate::{GENERATOR_VERSION, Task, stable_hash};

/// How many edits a corruption makes: a number drawn uniformly from `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditRange {
    /// At least this many edits (>= 1).
    pub min: usize,
    /// At most this many.
    pub max: usize,
}

impl EditRange {
    /// The paper's 1-5 edits.
    pub const DEFAULT: EditRange = EditRange { min: 1, max: 5 };
    /// The hard evaluation set's 3-5 edits.
    pub const HARD: EditRange = EditRange { min: 3, max: 5 };
}

impl Demo {
    /// The kinds of the corrupting edits.
    pub fn edit_kinds(&self) -> Vec<EditKind> {
        self.corruption.edits.iter().map(|e| e.kind).collect()
    }

    /// The SFT chat transcript: system prompt, first user message (task, tests, first
    /// observation), then one assistant command and one observation per turn.
    pub fn transcript(&self, task: &Task) -> Vec<Message> {
        let mut messages = opening(task, &self.trace.initial_observation);
        for (index, turn) in self.trace.turns.iter().enumerate() {
            messages.push(Message::new(Role::Assistant, turn.output.clone()));
            // The observation after the last turn (EXIT) is never shown to the model.
            if index + 1 < self.trace.turns.len() {
                messages.push(Message::new(Role::User, turn.observation.clone()));
            }
        }
        messages
    }
}

/// Why a demonstration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The executor failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// Replaying the repair did not solve the task: a bug in the generator, never data.
    #[error("task {task_id} sample {sample}: the repair did not pass the tests ({status:?})")]
    NotSolved {
        /// The task.
        task_id: String,
        /// The sample.
        sample: u32,
        /// The status at the end.
        status: Option<Status>,
    },
}

/// The random generator for `(seed, task, sample)`: the same triple always gives the same data.
pub fn rng_for(seed: u64, task_id: &str, sample: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(stable_hash(&[
        &seed.to_le_bytes(),
        task_id.as_bytes(),
        &sample.to_le_bytes(),
    ]))
}

/// Draws a corruption of `task`'s reference; `None` when the program offers no edit.
pub fn draw_corruption(
    task: &Task,
    corpus: &Corpus,
    range: EditRange,
    seed: u64,
    sample: u32,
) -> Option<Corruption> {
    let reference = task.reference.as_deref().unwrap_or(&task.code);
    let mut rng = rng_for(seed, &task.task_id, sample);
    let edits = rng.random_range(range.min.max(1)..=range.max.max(range.min).max(1));
    corrupt(reference, corpus, edits, &mut rng)
}

/// Makes demonstration `sample` of `task`. `Ok(None)` when the corruption does not make a test
/// fail (such corruptions are not kept).
pub fn make_demo<E: Executor>(
    task: &Task,
    corpus: &Corpus,
    range: EditRange,
    seed: u64,
    sample: u32,
    executor: E,
    config: EpisodeConfig,
) -> Result<Option<Demo>, DemoError> {
    let Some(corruption) = draw_corruption(task, corpus, range, seed, sample) else {
        return Ok(None);
    };
    let broken_task = Task {
        code: corruption.broken.clone(),
        ..task.clone()
    };
    let mut episode = Episode::start(broken_task, executor, config)?;
    if episode.is_passing() {
        return Ok(None);
    }
    let not_solved = |episode: &Episode<E>| DemoError::NotSolved {
        task_id: task.task_id.clone(),
        sample,
        status: episode.turns().last().and_then(|t| match &t.effect {
            coe_tool_state::Effect::Edited { status, .. } => Some(*status),
            _ => None,
        }),
    };
    for command in corruption.repair() {
        if episode.is_passing() || episode.is_done() {
            break;
        }
        episode.step(&command.to_string()).map_err(step_error)?;
    }
    if !episode.is_passing() || episode.is_done() {
        return Err(not_solved(&episode));
    }
    episode
        .step(&Command::Exit.to_string())
        .map_err(step_error)?;
    Ok(Some(Demo {
        task_id: task.task_id.clone(),
        seed,
        sample,
        generator: GENERATOR_VERSION,
        corruption,
        trace: episode.trace(),
    }))
}

fn step_error(error: coe_tool_state::StepError) -> DemoError {
    match error {
        coe_tool_state::StepError::Executor(e) => DemoError::Executor(e),
        // A fresh episode with at most 5 edits and 10 turns never ends early.
        coe_tool_state::StepError::Finished => DemoError::Executor(ExecutorError::new(
            "the episode ended before the repair was complete",
        )),
    }
}
