//! A repair task (DESIGN.md section 5).

use coe_exec::{ExecRequest, Limits};
use serde::{Deserialize, Deserializer, Serialize};

/// One task: a program to repair and the tests that decide when it is repaired.
///
/// Read from JSON Lines: `{"task_id": str, "text": str, "code": str, "reference": str?,
/// "setup": str?, "tests": [str]}`. A numeric `task_id` is accepted and kept as its decimal
/// text. MBPP's published rows (`test_list`, `test_setup_code`) are read by `coe-data`'s
/// `sources`, which every task reader uses, so one row always gives one id (`mbpp/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// A unique id, e.g. `mbpp/601` or `HumanEvalFix/0`.
    #[serde(deserialize_with = "string_or_number")]
    pub task_id: String,
    /// The problem statement in English.
    #[serde(default)]
    pub text: String,
    /// The program to repair.
    pub code: String,
    /// A correct program, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Code run before the program and its tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Test snippets; the task is solved when every one passes.
    pub tests: Vec<String>,
}

impl Task {
    /// The setup code, empty when there is none.
    pub fn setup(&self) -> &str {
        self.setup.as_deref().unwrap_or("")
    }

    /// An executor request that runs `program` (this task's code, its reference or a program
    /// made from them) with this task's setup and tests.
    pub fn request<'a>(&'a self, program: &'a str, limits: Limits) -> ExecRequest<'a> {
        ExecRequest {
            program,
            setup: self.setup(),
            tests: &self.tests,
            limits,
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(i64),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_design_format() {
        let task: Task = serde_json::from_str(
            r#"{"task_id": 7, "text": "t", "code": "x = 1", "tests": ["assert x == 1"]}"#,
        )
        .unwrap();
        assert_eq!(task.task_id, "7");
        assert_eq!(task.setup(), "");
        assert_eq!(task.reference, None);
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(
            json,
            r#"{"task_id":"7","text":"t","code":"x = 1","tests":["assert x == 1"]}"#
        );
        assert!(
            serde_json::from_str::<Task>(r#"{"task_id": 1.5, "code": "", "tests": []}"#).is_err()
        );
        assert!(serde_json::from_str::<Task>(r#"{"task_id": "a"}"#).is_err());
    }
}
