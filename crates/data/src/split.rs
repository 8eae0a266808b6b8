//! MBPP splits by task id (DESIGN.md section 8).

use serde::{Deserialize, Serialize};

/// Which part of MBPP a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Tasks 1-10: MBPP's few-shot prompts; unused.
    Prompt,
    /// Tasks 11-510: never trained on.
    Test,
    /// Tasks 511-600.
    Validation,
    /// Tasks 601-974: demonstrations and RL tasks.
    Train,
}

impl Split {
    /// The split of MBPP task `id`, or `None` outside 1-974.
    pub fn of_mbpp(id: u32) -> Option<Self> {
        match id {
            1..=10 => Some(Split::Prompt),
            11..=510 => Some(Split::Test),
            511..=600 => Some(Split::Validation),
            601..=974 => Some(Split::Train),
            _ => None,
        }
    }

    /// The split of an MBPP task id as written in files (`"601"` or `"mbpp/601"`).
    pub fn of_task_id(task_id: &str) -> Option<Self> {
        let digits = task_id.strip_prefix("mbpp/").unwrap_or(task_id);
        Self::of_mbpp(digits.parse().ok()?)
    }

    /// The split's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Split::Prompt => "prompt",
            Split::Test => "test",
            Split::Validation => "validation",
            Split::Train => "train",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert_eq!(Split::of_mbpp(10), Some(Split::Prompt));
        assert_eq!(Split::of_mbpp(11), Some(Split::Test));
        assert_eq!(Split::of_mbpp(510), Some(Split::Test));
        assert_eq!(Split::of_mbpp(511), Some(Split::Validation));
        assert_eq!(Split::of_mbpp(601), Some(Split::Train));
        assert_eq!(Split::of_mbpp(974), Some(Split::Train));
        assert_eq!(Split::of_mbpp(975), None);
        assert_eq!(Split::of_task_id("mbpp/600"), Some(Split::Validation));
        assert_eq!(Split::of_task_id("HumanEvalFix/3"), None);
        assert_eq!(Split::of_task_id("x"), None);
    }
}
