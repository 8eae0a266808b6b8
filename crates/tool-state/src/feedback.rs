//! The observation text and the feedback made from an execution outcome.
//!
//! Everything here is what the model reads after each turn, so it is short and deterministic:
//! the same program and outcome always give the same bytes (timings are never shown).

use std::fmt::Write as _;

use coe_exec::{ErrorInfo, Limits, Outcome, Status};

use crate::Program;

/// Longest exception message shown, in characters.
const MESSAGE_LIMIT: usize = 160;
/// Longest test source shown, in characters.
const TEST_LIMIT: usize = 120;
/// Most failing tests listed one by one.
const FAILURES_LISTED: usize = 5;

/// The separator between the program listing and the feedback.
pub const FEEDBACK_SEPARATOR: &str = "***";

/// Renders the observation of DESIGN.md section 4: the numbered program, `***`, the feedback.
///
/// ```
/// use coe_tool_state::{Program, render_observation};
/// let program = Program::parse("def add(a, b):\n    return a - b\n");
/// assert_eq!(
///     render_observation(&program, "All 3 tests passed."),
///     "L 1 def add(a, b):\nL 2     return a - b\n***\nAll 3 tests passed."
/// );
/// ```
pub fn render_observation(program: &Program, feedback: &str) -> String {
    let mut text = String::with_capacity(
        program.lines().iter().map(|l| l.len() + 8).sum::<usize>() + feedback.len() + 8,
    );
    for (index, line) in program.lines().iter().enumerate() {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "L {} {line}", index + 1);
    }
    text.push_str(FEEDBACK_SEPARATOR);
    text.push('\n');
    text.push_str(feedback);
    text
}

/// Splits an observation made by [`render_observation`] into the numbered listing (each line
/// still `L n ...`) and the feedback. The separator is the first line that is exactly `***`:
/// listing lines always start with `L `, so a program or feedback that contains `***` cannot
/// move it. Text without a separator is all listing.
///
/// ```
/// use coe_tool_state::{Program, render_observation, split_observation};
/// let program = Program::parse("s = '***'\n***\n");
/// let observation = render_observation(&program, "Failed.\n***\n");
/// assert_eq!(
///     split_observation(&observation),
///     ("L 1 s = '***'\nL 2 ***\n", "Failed.\n***\n")
/// );
/// ```
pub fn split_observation(observation: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in observation.split_inclusive('\n') {
        if line.trim_end_matches('\n') == FEEDBACK_SEPARATOR {
            return (&observation[..offset], &observation[offset + line.len()..]);
        }
        offset += line.len();
    }
    (observation, "")
}

/// Renders the feedback for an execution outcome: one short deterministic text per status.
///
/// `tests` are the test snippets that were run (to quote the failing ones) and `limits` the
/// limits they ran under (to say which was hit).
pub fn render_feedback(outcome: &Outcome, tests: &[String], limits: &Limits) -> String {
    let total = tests.len();
    match outcome.status {
        Status::Passed => match total {
            0 => "The program ran without errors (there are no tests).".to_owned(),
            1 => "The test passed.".to_owned(),
            n => format!("All {n} tests passed."),
        },
        Status::Failed => render_failures(outcome, tests),
        Status::Error => match &outcome.error {
            Some(error) => format!("The program raised {} before the tests ran.", Error(error)),
            None => "The program failed before the tests ran.".to_owned(),
        },
        Status::SyntaxError => match &outcome.error {
            Some(error) => format!("The program does not compile: {}.", Error(error)),
            None => "The program does not compile.".to_owned(),
        },
        Status::Timeout => format!(
            "Time limit exceeded: the run took longer than {} ms.",
            limits.timeout_ms
        ),
        Status::MemoryLimit => format!(
            "Memory limit exceeded: the program needed more than {} MiB.",
            limits.memory_mib
        ),
        Status::OutputLimit => format!(
            "Output limit exceeded: the program printed more than {} bytes.",
            limits.output_bytes
        ),
    }
}

/// Renders the feedback for a command the tool refused (malformed or inapplicable).
pub fn render_invalid_command(message: &str) -> String {
    format!("Invalid command: {message}. The program is unchanged.")
}

fn render_failures(outcome: &Outcome, tests: &[String]) -> String {
    let failing: Vec<(usize, Option<&ErrorInfo>)> = outcome
        .tests
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.passed)
        .map(|(i, t)| (i, t.error.as_ref()))
        .collect();
    let mut text = format!(
        "{} of {} tests failed.",
        failing.len().max(1),
        tests.len().max(outcome.tests.len())
    );
    for (index, error) in failing.iter().take(FAILURES_LISTED) {
        let source = tests.get(*index).map_or("", String::as_str);
        let _ = write!(text, "\nFAILED {}", one_line(source, TEST_LIMIT));
        match error {
            Some(error) => {
                let _ = write!(text, "\n  {}", Error(error));
            }
            None => text.push_str("\n  (no error reported)"),
        }
    }
    if failing.len() > FAILURES_LISTED {
        let _ = write!(text, "\n... and {} more", failing.len() - FAILURES_LISTED);
    }
    text
}

/// An exception as `Type: message (line N)`, on one line.
struct Error<'a>(&'a ErrorInfo);

impl std::fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = self.0;
        f.write_str(&one_line(&error.type_name, 60))?;
        if !error.message.is_empty() {
            write!(f, ": {}", one_line(&error.message, MESSAGE_LIMIT))?;
        }
        if let Some(line) = error.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Joins the lines of `text` with ` | ` and cuts it after `limit` characters, so that each
/// feedback item stays on one line.
fn one_line(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit + 3));
    let mut pieces = text
        .trim()
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.is_empty());
    if let Some(first) = pieces.next() {
        out.push_str(first);
    }
    for piece in pieces {
        out.push_str(" | ");
        out.push_str(piece.trim_start());
    }
    match out.char_indices().nth(limit) {
        Some((cut, _)) => {
            out.truncate(cut);
            out.push_str("...");
            out
        }
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_joins_and_cuts() {
        assert_eq!(one_line("a\n  b\n\nc  ", 50), "a | b | c");
        assert_eq!(one_line("abcdef", 3), "abc...");
        assert_eq!(one_line("é中文字", 2), "é中...");
        assert_eq!(one_line("", 5), "");
    }
}
