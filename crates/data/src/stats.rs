//! Statistics of a data set, next to the paper's figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coe_exec::{ErrorInfo, Status};
use serde::Serialize;

/// How a broken program fails, as the paper counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The program runs and an `assert` fails.
    FailedAssert,
    /// It does not compile.
    SyntaxError,
    /// A `NameError`.
    NameError,
    /// Anything else (other exceptions, limits).
    Other,
}

impl FailureKind {
    /// Classifies a starting status and its first error.
    pub fn of(status: Status, error: Option<&ErrorInfo>) -> Self {
        let type_name = error.map_or("", |e| e.type_name.as_str());
        match status {
            Status::SyntaxError => FailureKind::SyntaxError,
            _ if type_name == "NameError" || type_name == "UnboundLocalError" => {
                FailureKind::NameError
            }
            Status::Failed if type_name == "AssertionError" => FailureKind::FailedAssert,
            _ => FailureKind::Other,
        }
    }

    /// A short name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::FailedAssert => "failed assert",
            FailureKind::SyntaxError => "syntax error",
            FailureKind::NameError => "name error",
            FailureKind::Other => "other",
        }
    }
}

/// Character-level Levenshtein distance (insertions, deletions, substitutions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// One item of a data set, as the statistics see it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its task.
    pub task_id: String,
    /// Commands in its repair (including `EXIT`), when it is a demonstration.
    pub turns: Option<usize>,
    /// Characters of its text (the SFT transcript, or the broken program).
    pub chars: usize,
    /// Edit distance between the broken program and the reference.
    pub edit_distance: usize,
    /// How the broken program fails.
    pub failure: FailureKind,
    /// Whether the broken program runs and fails a test (status `failed`, any exception
    /// inside a test), the paper's "failed tests".
    pub fails_tests: bool,
}

/// Statistics of one data set.
#[derive(Debug, Clone, Serialize)]
pub struct SetStats {
    /// The set's name.
    pub name: String,
    /// Distinct tasks.
    pub tasks: usize,
    /// Items (demonstrations or evaluation tasks).
    pub items: usize,
    /// Mean turns per demonstration.
    pub mean_turns: Option<f64>,
    /// Mean characters per item.
    pub mean_chars: f64,
    /// Total characters.
    pub total_chars: usize,
    /// Mean edit distance, broken to reference.
    pub mean_edit_distance: f64,
    /// Edit distance distribution: bucket upper bound (inclusive) to share of items.
    pub edit_distance_histogram: BTreeMap<String, f64>,
    /// Share of each failure kind.
    pub failure_shares: BTreeMap<String, f64>,
    /// Share of items whose broken program runs and fails a test.
    pub fails_tests_share: f64,
}

impl SetStats {
    /// Computes the statistics of `items`.
    pub fn new(name: &str, items: &[Item]) -> Self {
        let n = items.len().max(1) as f64;
        let mut tasks: Vec<&str> = items.iter().map(|i| i.task_id.as_str()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        let turns: Vec<usize> = items.iter().filter_map(|i| i.turns).collect();
        let mut histogram = BTreeMap::new();
        for item in items {
            let bucket = match item.edit_distance {
                0..=10 => "0-10",
                11..=25 => "11-25",
                26..=50 => "26-50",
                51..=100 => "51-100",
                101..=200 => "101-200",
                _ => "201+",
            };
            *histogram.entry(bucket.to_owned()).or_insert(0.0) += 1.0 / n;
        }
        let mut failure_shares = BTreeMap::new();
        for item in items {
            *failure_shares
                .entry(item.failure.as_str().to_owned())
                .or_insert(0.0) += 1.0 / n;
        }
        let total_chars = items.iter().map(|i| i.chars).sum();
        Self {
            name: name.to_owned(),
            tasks: tasks.len(),
            items: items.len(),
            mean_turns: (!turns.is_empty())
                .then(|| turns.iter().sum::<usize>() as f64 / turns.len() as f64),
            mean_chars: total_chars as f64 / n,
            total_chars,
            mean_edit_distance: items.iter().map(|i| i.edit_distance).sum::<usize>() as f64 / n,
            edit_distance_histogram: histogram,
            failure_shares,
            fails_tests_share: items.iter().filter(|i| i.fails_tests).count() as f64 / n,
        }
    }

    /// A Markdown report of several sets.
    pub fn table(sets: &[SetStats]) -> String {
        let mut text = String::from(
            "| set | tasks | items | turns/demo | chars/item | total chars | edit distance (mean) | runs, fails a test | failed assert | syntax | name error | other |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for set in sets {
            let share = |kind: FailureKind| {
                format!(
                    "{:.1}%",
                    100.0
                        * set
                            .failure_shares
                            .get(kind.as_str())
                            .copied()
                            .unwrap_or(0.0)
                )
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {:.0} | {} | {:.1} | {:.1}% | {} | {} | {} | {} |",
                set.name,
                set.tasks,
                set.items,
                set.mean_turns.map_or("-".to_owned(), |t| format!("{t:.2}")),
                set.mean_chars,
                set.total_chars,
                set.mean_edit_distance,
                100.0 * set.fails_tests_share,
                share(FailureKind::FailedAssert),
                share(FailureKind::SyntaxError),
                share(FailureKind::NameError),
                share(FailureKind::Other),
            );
        }
        text.push_str("\nEdit distance distribution (share of items):\n\n| set | 0-10 | 11-25 | 26-50 | 51-100 | 101-200 | 201+ |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for set in sets {
            let cell = |bucket: &str| {
                format!(
                    "{:.1}%",
                    100.0
                        * set
                            .edit_distance_histogram
                            .get(bucket)
                            .copied()
                            .unwrap_or(0.0)
                )
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} |",
                set.name,
                cell("0-10"),
                cell("11-25"),
                cell("26-50"),
                cell("51-100"),
                cell("101-200"),
                cell("201+")
            );
        }
        text.push_str("\nPaper: demos average 39.93 characters of edit distance, its evaluation set 135.6; 81.2% of its evaluation set fails by a failed test.\n");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("a - b", "a + b"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn failure_kinds() {
        let error = |t: &str| ErrorInfo {
            type_name: t.into(),
            message: String::new(),
            line: None,
        };
        assert_eq!(
            FailureKind::of(Status::Failed, Some(&error("AssertionError"))),
            FailureKind::FailedAssert
        );
        assert_eq!(
            FailureKind::of(Status::SyntaxError, Some(&error("IndentationError"))),
            FailureKind::SyntaxError
        );
        assert_eq!(
            FailureKind::of(Status::Error, Some(&error("NameError"))),
            FailureKind::NameError
        );
        assert_eq!(
            FailureKind::of(Status::Failed, Some(&error("TypeError"))),
            FailureKind::Other
        );
        assert_eq!(FailureKind::of(Status::Timeout, None), FailureKind::Other);
    }
}
