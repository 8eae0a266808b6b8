//! What the model reads: the system prompt, the first user message, chat transcripts for SFT,
//! and the direct-answer prompt used as the baseline.

use serde::{Deserialize, Serialize};

use crate::Task;

/// The system prompt: the edit language and its rules.
pub const SYSTEM_PROMPT: &str = "\
You repair Python programs with an editing tool. Each turn you see the program with numbered \
lines and the result of its tests, and you reply with exactly one command:
ADDL <n> >>><text>  insert <text> as new line n
REPL <n> >>><text>  replace line n with <text>
REPW <n> >>><old> >>><new>  in line n, replace every <old> with <new>
DELL <n>  delete line n
EXIT  stop (when all tests pass)
Text after >>> is used exactly as written, including leading spaces for indentation.";

/// The system prompt of the direct-answer baseline.
pub const DIRECT_SYSTEM_PROMPT: &str = "\
You repair Python programs. You see a program and the result of its tests; reply with the \
whole corrected program and nothing else.";

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The system prompt.
    System,
    /// The tool (task, tests, observations).
    User,
    /// The model (one command per turn).
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The first user message: task text, tests, then the first observation.
pub fn first_user_message(task: &Task, observation: &str) -> String {
    let mut text = String::new();
    if !task.text.trim().is_empty() {
        text.push_str("Task: ");
        text.push_str(task.text.trim());
        text.push_str("\n\n");
    }
    text.push_str("Tests:\n");
    for test in &task.tests {
        text.push_str(test.trim_end());
        text.push('\n');
    }
    text.push('\n');
    text.push_str(observation);
    text
}

/// The opening of a Chain-of-Edits conversation: system prompt and first user message.
pub fn opening(task: &Task, observation: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, SYSTEM_PROMPT),
        Message::new(Role::User, first_user_message(task, observation)),
    ]
}

/// The direct-answer prompt for the same task: the broken program and its test result; the
/// expected answer is the whole fixed program.
pub fn direct_prompt(task: &Task, observation: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, DIRECT_SYSTEM_PROMPT),
        Message::new(Role::User, first_user_message(task, observation)),
    ]
}
