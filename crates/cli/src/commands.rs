//! The subcommands.

use std::path::Path;

use coe_dsl::{Command, parse_script};
use coe_exec::{ExecRequest, Limits};
use coe_sandbox::Sandbox;
use coe_tool_state::{Episode, EpisodeConfig, Program, Task};
use serde::Serialize;

use crate::output::{OutcomeJson, json_line, outcome_text, print};
use crate::{Failure, Field};

pub(crate) fn apply(program_path: &Path, edits_path: &Path) -> Result<(), Failure> {
    let mut program = Program::parse(&read_text(program_path)?);
    let edits = read_text(edits_path)?;
    for (line, parsed) in parse_script(&edits) {
        let command = parsed.map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
        if command == Command::Exit {
            break;
        }
        program
            .apply(&command)
            .map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
    }
    print(&program.to_source())
}

pub(crate) fn run(
    program_path: &Path,
    tests: &[String],
    setup_path: Option<&Path>,
    limits: Limits,
    json: bool,
) -> Result<(), Failure> {
    let program = read_text(program_path)?;
    let setup = setup_path.map(read_text).transpose()?.unwrap_or_default();
    let sandbox = sandbox()?;
    let outcome = sandbox
        .run(&ExecRequest {
            program: &program,
            setup: &setup,
            tests,
            limits,
        })
        .map_err(|e| Failure::Internal(format!("coe: {e}")))?
        .outcome;
    if json {
        print(&json_line(&OutcomeJson::new(&outcome, tests.len(), None))?)
    } else {
        print(&outcome_text(&outcome, tests))
    }
}

pub(crate) fn check(
    tasks_path: &Path,
    field: Field,
    jobs: Option<usize>,
    limits: Limits,
) -> Result<(), Failure> {
    let text = read_text(tasks_path)?;
    let mut tasks = Vec::new();
    let mut malformed = 0usize;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Task>(line) {
            Ok(task) => tasks.push(task),
            Err(error) => {
                malformed += 1;
                eprintln!(
                    "{}:{}: not a task: {error}",
                    tasks_path.display(),
                    index + 1
                );
            }
        }
    }
    let sandbox = sandbox()?;
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, tasks.len().max(1));
    let results: Vec<Result<String, Failure>> = run_parallel(&tasks, jobs, |task| {
        let program = match field {
            Field::Code => Some(task.code.as_str()),
            Field::Reference => task.reference.as_deref(),
        };
        let Some(program) = program else {
            return Err(Failure::Input(format!(
                "task {}: has no reference",
                task.task_id
            )));
        };
        let outcome = sandbox
            .run(&ExecRequest {
                program,
                setup: task.setup(),
                tests: &task.tests,
                limits,
            })
            .map_err(|e| Failure::Internal(format!("coe: task {}: {e}", task.task_id)))?
            .outcome;
        json_line(&OutcomeJson::new(
            &outcome,
            task.tests.len(),
            Some(&task.task_id),
        ))
    })?;
    let mut internal = None;
    for result in results {
        match result {
            Ok(line) => print(&line)?,
            Err(Failure::Input(message)) => {
                malformed += 1;
                eprintln!("{message}");
            }
            Err(failure) => internal = Some(failure),
        }
    }
    if let Some(failure) = internal {
        return Err(failure);
    }
    if malformed > 0 {
        return Err(Failure::Input(format!(
            "coe: {malformed} task(s) could not be run"
        )));
    }
    Ok(())
}

/// Runs `work` on every item with `jobs` threads; results keep the input order.
fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync + Send,
) -> Result<Vec<R>, Failure> {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Failure::Internal(format!("coe: cannot start {jobs} workers: {e}")))?;
    Ok(pool.install(|| items.par_iter().map(work).collect()))
}

#[derive(Serialize)]
struct TurnJson<'a> {
    turn: usize,
    output: &'a str,
    command: Option<String>,
    reward: f32,
    solved: bool,
    observation: &'a str,
}

#[derive(Serialize)]
struct SummaryJson {
    solved: bool,
    turns: usize,
    #[serde(rename = "return")]
    total_reward: f32,
}

pub(crate) fn replay(
    task_path: &Path,
    edits_path: &Path,
    max_turns: usize,
    limits: Limits,
    json: bool,
) -> Result<(), Failure> {
    let task: Task = serde_json::from_str(&read_text(task_path)?)
        .map_err(|e| Failure::Input(format!("coe: {} is not a task: {e}", task_path.display())))?;
    let edits = read_text(edits_path)?;
    let sandbox = sandbox()?;
    let config = EpisodeConfig {
        max_turns,
        limits,
        ..EpisodeConfig::default()
    };
    let executor_failed = |e: &dyn std::fmt::Display| Failure::Internal(format!("coe: {e}"));
    let mut episode = Episode::start(task, &sandbox, config).map_err(|e| executor_failed(&e))?;
    if !json {
        print(&format!(
            "initial observation:\n{}\n\n",
            episode.observation()
        ))?;
    }
    for output in edits.lines().filter(|line| !line.trim().is_empty()) {
        if episode.is_done() {
            break;
        }
        let turn = episode.step(output).map_err(|e| executor_failed(&e))?;
        let text = if json {
            json_line(&TurnJson {
                turn: turn.turn,
                output: &turn.output,
                command: turn.command.as_ref().map(ToString::to_string),
                reward: turn.reward,
                solved: turn.passing,
                observation: &turn.observation,
            })?
        } else {
            format!(
                "turn {}: {}\nreward: {}  solved: {}\n{}\n\n",
                turn.turn, turn.output, turn.reward, turn.passing, turn.observation
            )
        };
        print(&text)?;
    }
    let trace = episode.trace();
    let summary = SummaryJson {
        solved: trace.solved,
        turns: trace.turns.len(),
        total_reward: trace.total_reward,
    };
    if json {
        print(&json_line(&summary)?)
    } else {
        print(&format!(
            "solved: {}  turns: {}  return: {}\n",
            summary.solved, summary.turns, summary.total_reward
        ))
    }
}

pub(crate) fn prepare() -> Result<(), Failure> {
    let sandbox = sandbox()?;
    print(&format!(
        "sandbox ready in {:.2} s (cache: {})\n",
        sandbox.prepare_time().as_secs_f64(),
        coe_sandbox::cache_dir_default().join("sandbox").display()
    ))
}

pub(crate) fn sandbox() -> Result<Sandbox, Failure> {
    Sandbox::new(&Default::default()).map_err(|e| Failure::Internal(format!("coe: {e}")))
}

pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Input(format!("coe: cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::Input(format!("coe: {} is not UTF-8 text", path.display())))
}
