//! Reading tasks: MBPP rows, HumanEvalFix rows and coe task JSONL, into one [`Task`] type.

use std::path::Path;

use serde::Deserialize;

use crate::Task;
use crate::formats::{JsonLines, parse_json_lines_with, read_text};
use crate::normalize::normalize_source;

/// An MBPP row as published.
#[derive(Debug, Deserialize)]
struct MbppRow {
    task_id: u32,
    text: String,
    code: String,
    #[serde(default)]
    test_setup_code: String,
    test_list: Vec<String>,
}

/// Reads a JSON Lines file of MBPP rows, HumanEvalFix rows or coe tasks (detected per line).
/// Every reader of tasks (the data generator, `coe check`, `coe eval`, RL) comes here, so one
/// row always gives the same task and id.
pub fn read_tasks(path: &Path) -> std::io::Result<JsonLines<Task>> {
    Ok(parse_tasks(&read_text(path)?, &path.display().to_string()))
}

/// Parses JSON Lines text; `source` names it in errors.
///
/// MBPP rows become tasks `mbpp/<id>` whose `code` and `reference` are the normalised
/// reference solution (see [`normalize_source`]); other rows are read as coe tasks
/// (HumanEvalFix rows are coe tasks with an extra `bug_type`; evaluation sets' lines carry how
/// they were made) with their line endings normalised.
pub fn parse_tasks(text: &str, source: &str) -> JsonLines<Task> {
    parse_json_lines_with(text, source, parse_task)
}

/// Parses one task: a JSON object in any of the forms [`parse_tasks`] reads (it may span
/// lines).
pub fn parse_task(json: &str) -> Result<Task, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not a task: not JSON: {e}"))?;
    if value.get("test_list").is_some() {
        let row: MbppRow =
            serde_json::from_value(value).map_err(|e| format!("not an MBPP row: {e}"))?;
        let code = clean(&row.code);
        return Ok(Task {
            task_id: format!("mbpp/{}", row.task_id),
            text: row.text,
            reference: Some(code.clone()),
            code,
            setup: (!row.test_setup_code.trim().is_empty()).then(|| clean(&row.test_setup_code)),
            tests: row.test_list,
        });
    }
    let mut task: Task = serde_json::from_value(value).map_err(|e| format!("not a task: {e}"))?;
    task.code = endings(&task.code);
    task.reference = task.reference.as_deref().map(endings);
    Ok(task)
}

fn clean(source: &str) -> String {
    normalize_source(source).unwrap_or_else(|| endings(source))
}

fn endings(source: &str) -> String {
    coe_tool_state::Program::parse(source).to_python()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_format_and_reports_bad_lines() {
        let text = concat!(
            r#"{"task_id": 601, "text": "t", "code": "def f():\r\n\treturn 1 ", "test_setup_code": "", "test_list": ["assert f() == 1"], "challenge_test_list": []}"#,
            "\n\nnot json\n",
            r#"{"task_id": "HumanEvalFix/0", "text": "t", "code": "x = 1", "reference": "x = 2", "setup": "", "tests": ["assert x == 2"], "bug_type": "value misuse"}"#,
            "\n",
            r#"{"task_id": 3, "code": 5}"#,
            "\n",
        );
        let loaded = parse_tasks(text, "in.jsonl");
        assert_eq!(loaded.items.len(), 2);
        let mbpp = &loaded.items[0];
        assert_eq!(mbpp.task_id, "mbpp/601");
        assert_eq!(mbpp.code, "def f():\n    return 1\n");
        assert_eq!(mbpp.setup, None);
        assert_eq!(loaded.items[1].reference.as_deref(), Some("x = 2\n"));
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].starts_with("in.jsonl:3: not a task: not JSON"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("in.jsonl:5: not a task"),
            "{errors:?}"
        );
    }
}
