//! The one fake executor every test suite uses (feature `testing`): it runs nothing, so tests
//! of the editor, episodes and training need no sandbox and take microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::{ErrorInfo, ExecRequest, Executor, ExecutorError, Outcome, Status, TestResult};

/// A program containing this text (and not the pass marker) fails every test in the fake.
pub const FAILS_EVERY_TEST: &str = "# fake: fails every test";

/// Passes a program when it contains a marker text; otherwise its first test fails with an
/// `AssertionError` and the others pass, or every test fails when the program contains
/// [`FAILS_EVERY_TEST`]. It counts its runs and can be told to fail as an executor. Clones
/// share the count and the switch.
#[derive(Debug, Clone)]
pub struct FakeExecutor {
    marker: Arc<str>,
    runs: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

impl FakeExecutor {
    /// A fake that passes programs containing `marker`.
    pub fn passing_when(marker: &str) -> Self {
        Self {
            marker: marker.into(),
            runs: Arc::default(),
            broken: Arc::default(),
        }
    }

    /// Runs so far (a broken run does not count).
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }

    /// From now on every run fails as an executor (`true`) or runs again (`false`).
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::Relaxed);
    }
}

impl Executor for FakeExecutor {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(ExecutorError::new("the fake is broken"));
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let passed = request.program.contains(&*self.marker);
        let fails_all = !passed && request.program.contains(FAILS_EVERY_TEST);
        let tests: Vec<TestResult> = (0..request.tests.len())
            .map(|i| TestResult {
                passed: passed || (i > 0 && !fails_all),
                error: (!passed && (i == 0 || fails_all)).then(|| ErrorInfo {
                    type_name: "AssertionError".into(),
                    message: String::new(),
                    line: None,
                }),
            })
            .collect();
        Ok(Outcome {
            status: if passed {
                Status::Passed
            } else {
                Status::Failed
            },
            error: tests.iter().find_map(|t| t.error.clone()),
            tests,
            stdout: String::new(),
            stderr: String::new(),
            elapsed_ms: 1.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    #[test]
    fn passes_on_the_marker_counts_and_breaks() {
        let fake = FakeExecutor::passing_when("return 1");
        let tests = vec!["a".to_owned(), "b".to_owned()];
        let request = |program| ExecRequest {
            program,
            setup: "",
            tests: &tests,
            limits: Limits::default(),
        };
        assert_eq!(
            fake.execute(&request("return 1")).unwrap().status,
            Status::Passed
        );
        let failed = fake.execute(&request("return 2")).unwrap();
        assert_eq!((failed.status, failed.tests_passed()), (Status::Failed, 1));
        let all_failed = fake.execute(&request(FAILS_EVERY_TEST)).unwrap();
        assert_eq!(
            (all_failed.status, all_failed.tests_passed()),
            (Status::Failed, 0)
        );
        let clone = fake.clone();
        clone.set_broken(true);
        assert!(fake.execute(&request("return 1")).is_err());
        assert_eq!(fake.runs(), 3);
    }
}
