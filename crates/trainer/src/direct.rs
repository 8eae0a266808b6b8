//! The direct-answer baseline: the same model is asked for the whole fixed program in one
//! answer (prompts from `fixtures/eval/*.direct.jsonl`), sampled as many times as Chain-of-Edits
//! episodes are, and each answer is run against the task's tests in the same executor.

use std::path::Path;

use burn::prelude::Backend;
pub use coe_data::formats::DirectPrompt;
use coe_exec::{ExecRequest, Executor, Limits, Status};
use coe_policy::generate::{decode_batch, prefill_batch, row_generators};
use coe_policy::{Adapters, Policy, SamplingConfig, Session};
use coe_tool_state::Task;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::chat::{answer_text, prompt_ids};
use crate::eval::{EvalSummary, TaskResult};

/// One sampled answer and what its program did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectAnswer {
    /// The task answered.
    pub task_id: String,
    /// The model's whole answer.
    pub text: String,
    /// The program taken from it.
    pub program: String,
    /// The execution status of that program with the task's tests.
    pub status: Status,
    /// Whether every test passed.
    pub solved: bool,
}

/// Reads a `*.direct.jsonl` file.
pub fn load_prompts(path: &Path) -> Result<Vec<DirectPrompt>, TrainerError> {
    crate::run::read_strict(path)
}

/// The program in an answer: the first fenced code block when there is one (the fence may be
/// unclosed), else the whole answer.
pub fn extract_program(answer: &str) -> String {
    let Some(start) = answer.find("```") else {
        return answer.trim_matches('\n').to_string();
    };
    let after = &answer[start + 3..];
    // Skip the fence's language tag line ("```python").
    let body = after.split_once('\n').map_or("", |(_, rest)| rest);
    let code = body.find("```").map_or(body, |end| &body[..end]);
    code.trim_matches('\n').to_string()
}

/// Samples `samples` whole-program answers per task and runs them; returns the summary (pass@1,
/// pass@k; one "turn" per answer) and the answers grouped by task. Every task needs a prompt
/// with its `task_id`. Each task comes with its position in its file, which seeds its answers
/// (so shards answer as a whole run would). Up to `batch` answers decode together (whole tasks:
/// at least one task's samples), prompts prefilled as one packed batch; a row's draws depend on
/// its task's seed alone, so the batch changes no answer.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_direct<B: Backend, E: Executor>(
    policy: &Policy<B>,
    indexed_tasks: &[(usize, Task)],
    prompts: &[DirectPrompt],
    executor: &E,
    samples: usize,
    batch: usize,
    sampling: &SamplingConfig,
    limits: &Limits,
    seed: u64,
    mut on_task: impl FnMut(usize, &[DirectAnswer]),
) -> Result<(EvalSummary, Vec<Vec<DirectAnswer>>), TrainerError> {
    let mut groups = Vec::with_capacity(indexed_tasks.len());
    let mut per_task = Vec::with_capacity(indexed_tasks.len());
    let tasks_at_once = (batch / samples.max(1)).max(1);
    for (chunk_index, chunk) in indexed_tasks.chunks(tasks_at_once).enumerate() {
        let mut sessions = Vec::with_capacity(chunk.len());
        for (_, task) in chunk {
            let prompt = prompts
                .iter()
                .find(|p| p.task_id == task.task_id)
                .ok_or_else(|| {
                    TrainerError::Data(format!("no direct prompt for {}", task.task_id))
                })?;
            let mut session = Session::new(&policy.model);
            session.push(&prompt_ids(&policy.tokenizer, &prompt.messages)?);
            sessions.push(session);
        }
        let mut refs: Vec<&mut Session<B>> = sessions.iter_mut().collect();
        let logits = prefill_batch(&policy.model, &mut refs, Adapters::On)?;
        // Every task's rows: its session and logits once per sample, generators from its seed.
        let mut rows = Vec::with_capacity(chunk.len() * samples);
        let mut rngs = Vec::with_capacity(chunk.len() * samples);
        for (((index, _), session), logits) in chunk.iter().zip(sessions).zip(logits) {
            let mut rng = StdRng::seed_from_u64(crate::eval::task_seed(seed, *index));
            rngs.extend(row_generators(&mut rng, samples));
            rows.extend((0..samples).map(|_| (session.clone(), logits.clone())));
        }
        let mut rng_refs: Vec<&mut StdRng> = rngs.iter_mut().collect();
        let generations = decode_batch(
            &policy.model,
            &policy.tokenizer,
            rows,
            &mut rng_refs,
            sampling,
        )?;
        for (offset, ((index, task), task_generations)) in chunk
            .iter()
            .zip(generations.chunks(samples.max(1)))
            .enumerate()
        {
            let mut answers = Vec::with_capacity(task_generations.len());
            for (generation, _) in task_generations {
                let text = answer_text(&policy.tokenizer, &generation.tokens)?;
                let program = extract_program(&text);
                let outcome = executor.execute(&ExecRequest {
                    program: &program,
                    setup: task.setup(),
                    tests: &task.tests,
                    limits: *limits,
                })?;
                answers.push(DirectAnswer {
                    task_id: task.task_id.clone(),
                    text,
                    program,
                    status: outcome.status,
                    solved: outcome.is_passed(),
                });
            }
            on_task(chunk_index * tasks_at_once + offset, &answers);
            per_task.push(answers_result(*index, &task.task_id, &answers));
            groups.push(answers);
        }
    }
    Ok((EvalSummary::from_tasks(per_task), groups))
}

/// The counts of one task's answers, at `index` of its task file; each answer counts as one
/// turn.
pub fn answers_result(index: usize, task_id: &str, answers: &[DirectAnswer]) -> TaskResult {
    TaskResult {
        index,
        task_id: task_id.to_owned(),
        samples: answers.len(),
        solved: answers.iter().filter(|a| a.solved).count(),
        turns: answers.len(),
        malformed_turns: 0,
        solved_then_broken: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_come_from_the_first_fence_or_the_whole_answer() {
        assert_eq!(
            extract_program("Here:\n```python\ndef f():\n    return 1\n```\nDone."),
            "def f():\n    return 1"
        );
        assert_eq!(extract_program("```\nx = 1\n"), "x = 1");
        assert_eq!(extract_program("\nx = 2\n"), "x = 2");
        assert_eq!(extract_program("```"), "");
    }
}
