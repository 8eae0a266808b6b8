//! `coe check`: every task of a file in the sandbox, one JSON outcome per line.

use std::path::Path;

use coe_exec::{ExecRequest, Limits};

use super::{read_text, sandbox};
use crate::output::{OutcomeJson, json_line, print};
use crate::{Failure, Field};

pub(crate) fn check(
    tasks_path: &Path,
    field: Field,
    jobs: Option<usize>,
    limits: Limits,
) -> Result<(), Failure> {
    // The same reader as every other task reader, so an MBPP row gets the same id everywhere.
    let read =
        coe_data::sources::parse_tasks(&read_text(tasks_path)?, &tasks_path.display().to_string());
    for error in &read.errors {
        eprintln!("{error}");
    }
    let mut malformed = read.errors.len();
    let tasks = read.items;
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
