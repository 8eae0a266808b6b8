//! `coe check`: every task of a file in the sandbox, one JSON outcome per line.

use std::path::Path;

use coe_exec::Limits;
use coe_sandbox::Sandbox;
use coe_tool_state::Task;

use super::{Parallelism, read_text, sandbox};
use crate::output::{json_line, print};
use crate::{Failure, Field};
use coe_exec::OutcomeJson;

/// One line a worker process writes per task: the outcome line, or why the task did not run.
#[derive(serde::Serialize, serde::Deserialize)]
enum WorkerLine {
    Outcome(String),
    Input(String),
    Internal(String),
}

pub(crate) fn check(
    tasks_path: &Path,
    field: Field,
    jobs: Option<usize>,
    parallelism: Parallelism,
    worker: Option<Shard>,
    limits: Limits,
) -> Result<(), Failure> {
    // The same reader as every other task reader, so an MBPP row gets the same id everywhere.
    let read =
        coe_data::sources::parse_tasks(&read_text(tasks_path)?, &tasks_path.display().to_string());
    if worker.is_none() {
        for error in &read.errors {
            eprintln!("{error}");
        }
    }
    let mut malformed = read.errors.len();
    let tasks = read.items;
    // Prepares (and caches) the compiled guest before any worker process loads it.
    let sandbox = sandbox()?;
    let run = |task: &Task| run_task(&sandbox, task, field, limits);
    if let Some(shard) = worker {
        for task in tasks.iter().skip(shard.index).step_by(shard.count) {
            let line = match run(task) {
                Ok(line) => WorkerLine::Outcome(line),
                Err(Failure::Input(message)) => WorkerLine::Input(message),
                Err(Failure::Internal(message)) => WorkerLine::Internal(message),
            };
            print(&json_line(&line)?)?;
        }
        return Ok(());
    }
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, tasks.len().max(1));
    // Workers read the file again: only a regular file reads the same twice (not a pipe).
    let rereadable = std::fs::metadata(tasks_path).is_ok_and(|m| m.is_file());
    let results: Vec<Result<String, Failure>> =
        if jobs > 1 && parallelism == Parallelism::Processes && rereadable {
            run_processes(tasks_path, &tasks, field, jobs, limits)?
        } else {
            run_parallel(&tasks, jobs, run)?
        };
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

/// Runs one task's program (its code or its reference) and tests; its outcome as a JSON line.
fn run_task(
    sandbox: &Sandbox,
    task: &Task,
    field: Field,
    limits: Limits,
) -> Result<String, Failure> {
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
        .run(&task.request(program, limits))
        .map_err(|e| Failure::Internal(format!("coe: task {}: {e}", task.task_id)))?
        .outcome;
    json_line(&OutcomeJson::new(
        &outcome,
        task.tests.len(),
        Some(&task.task_id),
    ))
}

/// Runs the tasks in `jobs` worker processes (this binary, `check --worker I/N`), worker `i`
/// taking every `jobs`-th task from `i`; results keep the input order.
fn run_processes(
    tasks_path: &Path,
    tasks: &[Task],
    field: Field,
    jobs: usize,
    limits: Limits,
) -> Result<Vec<Result<String, Failure>>, Failure> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Internal(format!("coe: cannot find its own binary: {e}")))?;
    let field = match field {
        Field::Code => "code",
        Field::Reference => "reference",
    };
    let mut children = Vec::with_capacity(jobs);
    for index in 0..jobs {
        let child = Command::new(&exe)
            .arg("check")
            .arg(tasks_path)
            .args(["--field", field])
            .args(["--timeout-ms", &limits.timeout_ms.to_string()])
            .args(["--memory-mib", &limits.memory_mib.to_string()])
            .args(["--worker", &format!("{index}/{jobs}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                for mut started in children {
                    started.kill().ok();
                    started.wait().ok();
                }
                return Err(Failure::Internal(format!(
                    "coe: cannot start worker {index}: {e}"
                )));
            }
        }
    }
    // Each worker's output is read on its own thread, so no worker blocks on a full pipe.
    let outputs: Vec<(Vec<WorkerLine>, Option<String>)> = std::thread::scope(|scope| {
        let readers: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(index, child)| scope.spawn(move || read_worker(index, child)))
            .collect();
        readers
            .into_iter()
            .map(|reader| {
                reader
                    .join()
                    .unwrap_or_else(|_| (Vec::new(), Some("coe: a worker reader failed".into())))
            })
            .collect()
    });
    let failures: Vec<Option<String>> = outputs.iter().map(|(_, f)| f.clone()).collect();
    let mut lines: Vec<std::vec::IntoIter<WorkerLine>> =
        outputs.into_iter().map(|(l, _)| l.into_iter()).collect();
    // A worker that died costs only the tasks it did not report, as a failed thread would.
    Ok(tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let worker = i % jobs;
            match lines[worker].next() {
                Some(WorkerLine::Outcome(line)) => Ok(line),
                Some(WorkerLine::Input(message)) => Err(Failure::Input(message)),
                Some(WorkerLine::Internal(message)) => Err(Failure::Internal(message)),
                None => Err(Failure::Internal(format!(
                    "coe: task {}: worker {worker} gave no result{}",
                    task.task_id,
                    failures[worker]
                        .as_deref()
                        .map_or(String::new(), |f| format!(" ({f})"))
                ))),
            }
        })
        .collect())
}

/// Every line worker `index` wrote, and why it failed when it did not exit successfully.
fn read_worker(index: usize, child: std::process::Child) -> (Vec<WorkerLine>, Option<String>) {
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return (Vec::new(), Some(format!("worker {index}: {e}"))),
    };
    let mut failure =
        (!output.status.success()).then(|| format!("worker {index} failed ({})", output.status));
    let mut lines = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match serde_json::from_str(line) {
            Ok(parsed) => lines.push(parsed),
            // A cut last line (the worker was killed mid-write) ends what it reported.
            Err(e) => {
                failure.get_or_insert_with(|| format!("worker {index} wrote a bad line: {e}"));
                break;
            }
        }
    }
    (lines, failure)
}

/// Worker `index` of `count` (`I/N`): the tasks it takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("{text}: expected I/N"))?;
        let index: usize = index.parse().map_err(|_| format!("{text}: bad index"))?;
        let count: usize = count.parse().map_err(|_| format!("{text}: bad count"))?;
        if count == 0 || index >= count {
            return Err(format!("{text}: needs 0 <= I < N"));
        }
        Ok(Self { index, count })
    }
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
