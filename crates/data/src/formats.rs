//! Every file the pipeline writes or reads, in one place: one public type per line format, the
//! one JSON Lines reader (errors as `file:line: message`, the rest of the file still read) and
//! the one writer (atomic).
//!
//! | file | line type | written by | read by |
//! |---|---|---|---|
//! | `fixtures/mbpp/mbpp.jsonl`, `fixtures/humanevalfix/humanevalfix.jsonl`, any task file | [`Task`] (MBPP rows too: [`crate::sources`]) | (published) | `coe-data`, `coe check`, `coe eval`, RL |
//! | `fixtures/eval/<set>.jsonl` | [`EvalTask`] (a [`Task`] and how it was made) | `coe-data` | `coe eval` (as tasks) |
//! | `fixtures/eval/<set>.direct.jsonl` | [`DirectPrompt`] | `coe-data` | `coe eval --direct` |
//! | `<cache>/data/demos-<split>.jsonl` | [`Demo`] | `coe-data` | `coe-data stats`, RL tasks from demonstrations |
//! | `<cache>/data/sft-<split>.jsonl` | [`Transcript`] | `coe-data` | SFT |

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::Task;
use crate::corrupt::{Corruption, EditKind};
use crate::prompt::Message;
use coe_tool_state::Trace;

/// A line of a demonstration file: a corrupted reference repaired by the inverse of its
/// corruption, played through a real episode ([`crate::demo`] makes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demo {
    /// The task it was made from.
    pub task_id: String,
    /// The data set's seed.
    pub seed: u64,
    /// Which sample of the task (several demos per task).
    pub sample: u32,
    /// The generator version.
    pub generator: u32,
    /// The corruption: broken program and the edits that made it.
    pub corruption: Corruption,
    /// The episode: observations and the commands of the repair, ending with `EXIT`.
    pub trace: Trace,
}

/// A line of an evaluation set: the task to repair (its `code` broken) and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalTask {
    /// The task; its fields are the line's top-level fields.
    #[serde(flatten)]
    pub task: Task,
    /// The data set's seed.
    pub seed: u64,
    /// Which sample of the task's corruptions.
    pub sample: u32,
    /// The generator version ([`crate::GENERATOR_VERSION`]).
    pub generator: u32,
    /// The kinds of the corrupting edits (none for HumanEvalFix's own bugs).
    #[serde(default)]
    pub edits: Vec<EditKind>,
}

/// A line of a direct-answer prompt file: the whole fixed program is asked for in one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectPrompt {
    /// The task it belongs to.
    pub task_id: String,
    /// System prompt, then the task, its tests and the first observation.
    pub messages: Vec<Message>,
    /// The reference program (for reading; evaluation runs the tests instead).
    #[serde(default)]
    pub answer: String,
}

/// A line of an SFT file: one demonstration as a chat transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The task it was made from (hand-written transcripts may leave it out).
    #[serde(default)]
    pub task_id: String,
    /// Which demonstration of the task.
    #[serde(default)]
    pub sample: u32,
    /// System prompt, the opening user message, then one command and one observation per turn.
    pub messages: Vec<Message>,
}

/// A line of an input file that could not be read; the rest of the file still is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The file (as given).
    pub source: String,
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// The items read from a JSON Lines file, and the lines that could not be read.
#[derive(Debug, Clone)]
pub struct JsonLines<T> {
    /// Items in file order.
    pub items: Vec<T>,
    /// One entry per malformed line, in file order.
    pub errors: Vec<LineError>,
}

impl<T> Default for JsonLines<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl<T> JsonLines<T> {
    /// The items when every line was read, else the first error (for files the pipeline made
    /// itself, where a bad line means a broken file).
    pub fn strict(self) -> Result<Vec<T>, LineError> {
        match self.errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(self.items),
        }
    }
}

/// Parses JSON Lines text with `parse` for each non-blank line; `source` names the text in
/// errors.
pub fn parse_json_lines_with<T>(
    text: &str,
    source: &str,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> JsonLines<T> {
    let mut read = JsonLines::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(line) {
            Ok(item) => read.items.push(item),
            Err(message) => read.errors.push(LineError {
                source: source.to_owned(),
                line: index + 1,
                message,
            }),
        }
    }
    read
}

/// Parses JSON Lines text of `T`s.
pub fn parse_json_lines<T: DeserializeOwned>(text: &str, source: &str) -> JsonLines<T> {
    parse_json_lines_with(text, source, |line| {
        serde_json::from_str(line).map_err(|e| e.to_string())
    })
}

/// Reads a JSON Lines file of `T`s; only a file that cannot be read at all is an error.
pub fn read_json_lines<T: DeserializeOwned>(path: &Path) -> std::io::Result<JsonLines<T>> {
    Ok(parse_json_lines(
        &read_text(path)?,
        &path.display().to_string(),
    ))
}

/// Reads a whole text file; the error names the file.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Writes `items` as JSON Lines, atomically (readers see the old file or the whole new one).
pub fn write_json_lines<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    coe_cache::write_atomically_with(path, |file| {
        for item in items {
            serde_json::to_writer(&mut *file, &item)?;
            file.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Role;

    #[test]
    fn lines_round_trip_and_bad_lines_are_named_and_skipped() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("transcripts.jsonl");
        let transcripts: Vec<Transcript> = (0..3)
            .map(|i| Transcript {
                task_id: format!("mbpp/{i}"),
                sample: i,
                messages: vec![Message::new(Role::Assistant, "EXIT")],
            })
            .collect();
        write_json_lines(&path, &transcripts).unwrap();
        let read: JsonLines<Transcript> = read_json_lines(&path).unwrap();
        assert_eq!(read.items, transcripts);
        assert!(read.errors.is_empty());

        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "{oops\n\n");
        let read: JsonLines<Transcript> = parse_json_lines(&text, "in.jsonl");
        assert_eq!(read.items.len(), 3, "the good lines are still read");
        assert_eq!(read.errors.len(), 1);
        assert!(
            read.errors[0].to_string().starts_with("in.jsonl:1: "),
            "{}",
            read.errors[0]
        );
        assert!(read.strict().is_err());
    }

    #[test]
    fn eval_tasks_are_tasks_with_provenance() {
        let line = r#"{"task_id":"mbpp/11","text":"t","code":"x = 1\n","reference":"x = 2\n","tests":["assert x == 2"],"seed":1,"sample":3,"generator":1,"edits":["replace_line"]}"#;
        let item: EvalTask = serde_json::from_str(line).unwrap();
        assert_eq!(item.task.task_id, "mbpp/11");
        assert_eq!(item.sample, 3);
        assert_eq!(serde_json::to_string(&item).unwrap(), line);
        // The same line read as a plain task keeps the task's fields.
        let task: Task = serde_json::from_str(line).unwrap();
        assert_eq!(task, item.task);
    }
}
