//! What `coe` prints: outcomes and turns, as text for people and JSON for scripts.

use std::fmt::Write as _;
use std::io::Write as _;

use coe_exec::{ErrorInfo, Outcome};
use serde::Serialize;

use crate::Failure;

/// An outcome as text for a person.
pub(crate) fn outcome_text(outcome: &Outcome, tests: &[String]) -> String {
    let mut text = format!(
        "status: {}\ntests: {}/{} passed\n",
        outcome.status.as_str(),
        outcome.tests_passed(),
        tests.len()
    );
    for (index, result) in outcome.tests.iter().enumerate() {
        let mark = if result.passed { "ok  " } else { "FAIL" };
        let source = tests.get(index).map_or("", String::as_str);
        let _ = writeln!(text, "  {mark} {source}");
        if let Some(error) = &result.error {
            let _ = writeln!(text, "       {}", error_text(error));
        }
    }
    if let Some(error) = &outcome.error {
        let _ = writeln!(text, "error: {}", error_text(error));
    }
    if !outcome.stdout.is_empty() {
        let _ = writeln!(text, "stdout:\n{}", outcome.stdout.trim_end_matches('\n'));
    }
    let _ = writeln!(text, "elapsed: {:.2} ms", outcome.elapsed_ms);
    text
}

fn error_text(error: &ErrorInfo) -> String {
    let mut text = error.type_name.clone();
    if !error.message.is_empty() {
        let _ = write!(text, ": {}", error.message);
    }
    if let Some(line) = error.line {
        let _ = write!(text, " (line {line})");
    }
    text
}

/// Serialises `value` as one JSON line.
pub(crate) fn json_line(value: &impl Serialize) -> Result<String, Failure> {
    serde_json::to_string(value)
        .map(|mut line| {
            line.push('\n');
            line
        })
        .map_err(|e| Failure::Internal(format!("coe: cannot encode JSON: {e}")))
}

/// Writes to stdout; a closed pipe (`coe ... | head`) is the reader's choice, not a failure.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Internal(format!("coe: cannot write output: {e}")))
        }
        _ => Ok(()),
    }
}
