//! `coe eval --traces FILE [--resume]`: each task's episodes (or answers) go to FILE as soon as
//! the task is done, so a stopped evaluation resumes where it stopped and loses only the tasks
//! in play. A task's episodes are seeded by its position in the task file alone, so a resumed
//! run plays exactly the episodes a straight one would, and ends with the same summary and the
//! same FILE (rewritten in task order at the end).
//!
//! Beside FILE, FILE.run.json keeps what the run is (task file and its checksum, shard, samples,
//! model, adapters and their checksum, settings), the wall time spent so far and whether it
//! finished: `--resume` refuses a FILE written by a different run, and a run without `--resume`
//! refuses to start over an unfinished one (it would throw its finished tasks away).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use coe_tool_state::{Task, Trace};
use coe_trainer::direct::DirectAnswer;
use coe_trainer::eval::{EvalSettings, TaskResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// One sample of a task in a traces file: an episode, or a direct answer.
pub(crate) trait Sample: Serialize + DeserializeOwned {
    /// The task it belongs to.
    fn task_id(&self) -> &str;
    /// Whether it solved the task.
    fn solved(&self) -> bool;
    /// The counts of one task's samples, at `index` of its task file.
    fn task_result(index: usize, task_id: &str, samples: &[Self]) -> TaskResult;
}

impl Sample for Trace {
    fn task_id(&self) -> &str {
        &self.task_id
    }

    fn solved(&self) -> bool {
        self.solved
    }

    fn task_result(index: usize, task_id: &str, samples: &[Self]) -> TaskResult {
        TaskResult {
            index,
            ..TaskResult::of_traces(task_id, samples)
        }
    }
}

impl Sample for DirectAnswer {
    fn task_id(&self) -> &str {
        &self.task_id
    }

    fn solved(&self) -> bool {
        self.solved
    }

    fn task_result(index: usize, task_id: &str, samples: &[Self]) -> TaskResult {
        coe_trainer::direct::answers_result(index, task_id, samples)
    }
}

/// What a traces file belongs to; a resumed run must be the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunKey {
    /// The task file, as given.
    pub(crate) tasks: PathBuf,
    /// Its sha256.
    pub(crate) tasks_sha256: String,
    /// `--model`, when given.
    pub(crate) model: Option<PathBuf>,
    /// The adapters' sha256 (`None`: the base model): adapter files are mostly all named
    /// `adapter.safetensors`.
    pub(crate) adapter_sha256: Option<String>,
    /// `--direct`'s prompts, when given.
    pub(crate) direct_prompts: Option<PathBuf>,
    /// `I/N`, when sharded.
    pub(crate) shard: Option<String>,
    /// `--limit`.
    pub(crate) limit: Option<usize>,
    /// Samples per task.
    pub(crate) samples: usize,
    /// How the episodes are played.
    pub(crate) settings: EvalSettings,
}

/// FILE.run.json: the run, the wall time its earlier processes spent, and whether it finished.
#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    run: RunKey,
    wall_s: f64,
    complete: bool,
}

/// A traces file being written task by task.
pub(crate) struct Progress<T> {
    path: PathBuf,
    record: PathBuf,
    key: RunKey,
    /// Wall time of the earlier processes of a resumed run.
    pub(crate) earlier_wall_s: f64,
    /// Each task's samples already in the file, by position in the run's task list.
    pub(crate) done: Vec<Option<Vec<T>>>,
    writer: BufWriter<File>,
}

fn io_failure(path: &Path, error: impl std::fmt::Display) -> Failure {
    Failure::Internal(format!("{}: {error}", path.display()))
}

impl<T: Sample> Progress<T> {
    /// Starts FILE afresh, or with `resume` keeps the tasks it already holds in full (a
    /// missing FILE resumes nothing). `tasks`: the run's tasks, in order.
    pub(crate) fn open(
        path: &Path,
        key: RunKey,
        tasks: &[(usize, Task)],
        resume: bool,
    ) -> Result<Self, Failure> {
        let record = PathBuf::from(format!("{}.run.json", path.display()));
        if !resume
            && path.exists()
            && let Ok(earlier) = read_record(&record)
            && !earlier.complete
        {
            return Err(Failure::Input(format!(
                "{} holds an unfinished run: add --resume to go on with it (same command), or \
                 delete the file to start again",
                path.display()
            )));
        }
        let (done, earlier_wall_s) = if resume && path.exists() {
            let earlier = read_record(&record)?;
            if earlier.run != key {
                return Err(Failure::Input(format!(
                    "--resume: {} was written by another run ({}); this one is {}: run the same \
                     command, or write the traces elsewhere",
                    path.display(),
                    serde_json::to_string(&earlier.run).unwrap_or_default(),
                    serde_json::to_string(&key).unwrap_or_default(),
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| io_failure(path, e))?;
            (
                completed_tasks(&text, path, tasks, key.samples)?,
                earlier.wall_s,
            )
        } else {
            (tasks.iter().map(|_| None).collect(), 0.0)
        };
        // Keep exactly the complete tasks (a task cut short by the stop is played again).
        coe_data::formats::write_json_lines(path, done.iter().flatten().flatten())
            .map_err(|e| io_failure(path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_failure(path, e))?;
        let progress = Self {
            path: path.to_owned(),
            record,
            key,
            earlier_wall_s,
            done,
            writer: BufWriter::new(file),
        };
        progress.save_record(0.0, false)?;
        Ok(progress)
    }

    /// Appends one finished task's samples and records the wall time so far (`wall_s`: this
    /// process's).
    pub(crate) fn task_done(&mut self, samples: &[T], wall_s: f64) -> Result<(), Failure> {
        for sample in samples {
            serde_json::to_writer(&mut self.writer, sample)
                .map_err(|e| io_failure(&self.path, e))?;
            self.writer
                .write_all(b"\n")
                .map_err(|e| io_failure(&self.path, e))?;
        }
        self.writer.flush().map_err(|e| io_failure(&self.path, e))?;
        self.save_record(wall_s, false)
    }

    /// Rewrites FILE with every task's samples in task order, as a straight run leaves it, and
    /// marks the run finished (`wall_s`: this process's).
    pub(crate) fn finish(self, groups: &[Vec<T>], wall_s: f64) -> Result<(), Failure> {
        coe_data::formats::write_json_lines(&self.path, groups.iter().flatten())
            .map_err(|e| io_failure(&self.path, e))?;
        self.save_record(wall_s, true)
    }

    fn save_record(&self, wall_s: f64, complete: bool) -> Result<(), Failure> {
        let record = RunRecord {
            run: self.key.clone(),
            wall_s: self.earlier_wall_s + wall_s,
            complete,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| io_failure(&self.record, e))?;
        coe_cache::write_atomically(&self.record, &bytes).map_err(|e| io_failure(&self.record, e))
    }
}

fn read_record(path: &Path) -> Result<RunRecord, Failure> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::Input(format!(
            "--resume: no {} (the traces were not written by a resumable coe eval)",
            path.display()
        )),
        _ => io_failure(path, e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))
}

/// The tasks whose `samples` samples are all in `text` (a traces file written task by task),
/// by position in `tasks`. Only the end of the file may be incomplete (a stop mid-write): a
/// bad line or a short task anywhere else means the file is not this run's, an error.
fn completed_tasks<T: Sample>(
    text: &str,
    path: &Path,
    tasks: &[(usize, Task)],
    samples: usize,
) -> Result<Vec<Option<Vec<T>>>, Failure> {
    let mut position = HashMap::with_capacity(tasks.len());
    for (i, (_, task)) in tasks.iter().enumerate() {
        if position.insert(task.task_id.as_str(), i).is_some() {
            return Err(Failure::Input(format!(
                "--resume: task {} appears twice in the task file, so its episodes cannot be \
                 told apart",
                task.task_id
            )));
        }
    }
    let bad = |line: usize, why: String| {
        Failure::Input(format!("--resume: {} line {line}: {why}", path.display()))
    };
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut parsed: Vec<(usize, T)> = Vec::with_capacity(lines.len());
    for (k, &(number, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(sample) => parsed.push((number + 1, sample)),
            // The last line may have been cut by the stop.
            Err(_) if k + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(bad(number + 1, e.to_string())),
        }
    }
    let mut done: Vec<Option<Vec<T>>> = tasks.iter().map(|_| None).collect();
    let mut group: Vec<T> = Vec::new();
    let mut line_of_group = 0;
    let mut iter = parsed.into_iter().peekable();
    while let Some((number, sample)) = iter.next() {
        if group.is_empty() {
            line_of_group = number;
        }
        let same_task_next = iter
            .peek()
            .is_some_and(|(_, next)| next.task_id() == sample.task_id());
        group.push(sample);
        if same_task_next && group.len() < samples {
            continue;
        }
        let id = group[0].task_id().to_owned();
        let at_end = iter.peek().is_none();
        match position.get(id.as_str()) {
            None => {
                return Err(bad(
                    line_of_group,
                    format!("task {id} is not one of this run's tasks"),
                ));
            }
            Some(&i) if done[i].is_some() => {
                return Err(bad(
                    line_of_group,
                    format!("task {id} is in the file twice"),
                ));
            }
            Some(&i) if group.len() == samples => done[i] = Some(std::mem::take(&mut group)),
            // A task cut short by the stop: played again.
            Some(_) if at_end => group.clear(),
            Some(_) => {
                return Err(bad(
                    line_of_group,
                    format!("task {id} has {} samples, not {samples}", group.len()),
                ));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(ids: &[&str]) -> Vec<(usize, Task)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let task = Task {
                    task_id: (*id).into(),
                    text: String::new(),
                    code: "x = 1".into(),
                    reference: None,
                    setup: None,
                    tests: vec!["assert x == 1".into()],
                };
                (i * 3, task)
            })
            .collect()
    }

    fn answer(id: &str, solved: bool) -> String {
        let answer = DirectAnswer {
            task_id: id.into(),
            text: "x = 1".into(),
            program: "x = 1".into(),
            status: if solved {
                coe_exec::Status::Passed
            } else {
                coe_exec::Status::Failed
            },
            solved,
        };
        serde_json::to_string(&answer).unwrap() + "\n"
    }

    fn read(text: &str, ids: &[&str], samples: usize) -> Result<Vec<Option<usize>>, String> {
        completed_tasks::<DirectAnswer>(text, Path::new("t.jsonl"), &tasks(ids), samples)
            .map(|done| {
                done.iter()
                    .map(|d| d.as_ref().map(|g| g.iter().filter(|a| a.solved).count()))
                    .collect()
            })
            .map_err(|f| match f {
                Failure::Input(m) | Failure::Internal(m) => m,
            })
    }

    #[test]
    fn complete_tasks_are_kept_in_any_order_and_a_cut_end_is_played_again() {
        let b = answer("b", true) + &answer("b", false);
        let a = answer("a", false) + &answer("a", false);
        // Tasks finish out of order (the pipeline); each complete one is kept where it belongs.
        assert_eq!(
            read(&(b.clone() + &a), &["a", "b", "c"], 2),
            Ok(vec![Some(0), Some(1), None])
        );
        // The stop cut the last task short, or its last line in the middle.
        let short = b.clone() + &answer("a", true);
        assert_eq!(read(&short, &["a", "b"], 2), Ok(vec![None, Some(1)]));
        let full = b.clone() + &a;
        let cut = &full[..full.len() - 10];
        assert_eq!(read(cut, &["a", "b"], 2), Ok(vec![None, Some(1)]));
        assert_eq!(read("", &["a"], 2), Ok(vec![None]));
    }

    #[test]
    fn a_file_of_another_run_is_refused() {
        let b = answer("b", true) + &answer("b", false);
        // A task this run does not have, or with fewer samples than this run takes (before
        // the end), or twice.
        let other = read(&b, &["a"], 2).unwrap_err();
        assert!(
            other.contains("task b is not one of this run's tasks"),
            "{other}"
        );
        let fewer = answer("a", true) + &b;
        let fewer = read(&fewer, &["a", "b"], 2).unwrap_err();
        assert!(
            fewer.contains("line 1: task a has 1 samples, not 2"),
            "{fewer}"
        );
        let twice = read(&(b.clone() + &b), &["a", "b"], 2).unwrap_err();
        assert!(
            twice.contains("line 3: task b is in the file twice"),
            "{twice}"
        );
        // A broken line before the end is not a stop mid-write.
        let broken = "{not json\n".to_string() + &b;
        assert!(read(&broken, &["b"], 2).unwrap_err().contains("line 1"));
        // Ids that repeat in the task file cannot be told apart.
        let repeated = read(&b, &["b", "b"], 2).unwrap_err();
        assert!(repeated.contains("appears twice"), "{repeated}");
    }
}
