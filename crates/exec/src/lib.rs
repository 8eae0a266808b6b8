//! The contract between coe's editor and whatever runs Python for it.
//!
//! [`coe-tool-state`](https://docs.rs/coe-tool-state) asks an [`Executor`] to run a program and
//! its tests; `coe-sandbox` implements it with RustPython under wasmtime, and test suites use the
//! one fake behind the `testing` feature (`testing::FakeExecutor`). Keeping the contract in this
//! tiny crate means neither side depends on the other's heavy dependencies.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Wall-clock bound for the whole run (program, setup and every test), in milliseconds.
    pub timeout_ms: u64,
    /// Memory the guest may use, in MiB.
    pub memory_mib: u64,
    /// Bytes of standard output the program may write before it is stopped.
    pub output_bytes: u64,
}

impl Limits {
    /// The time limit as a [`Duration`].
    pub const fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    /// Generous for MBPP-sized programs (which finish in milliseconds), tight enough that a
    /// runaway program costs little.
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            memory_mib: 256,
            output_bytes: 64 * 1024,
        }
    }
}

/// What to run: `setup`, then `program`, then each test in the program's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExecRequest<'a> {
    /// The program under repair.
    pub program: &'a str,
    /// Code run before the program (imports, fixtures); often empty.
    pub setup: &'a str,
    /// Test snippets, usually one `assert` each; each runs on its own.
    pub tests: &'a [String],
    /// Resource limits.
    pub limits: Limits,
}

/// The overall result of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program ran and every test passed.
    Passed,
    /// The program ran and at least one test failed or raised.
    Failed,
    /// The setup or the program raised before the tests could run.
    Error,
    /// The setup or the program does not compile.
    SyntaxError,
    /// The time limit was hit.
    Timeout,
    /// The memory limit was hit.
    MemoryLimit,
    /// The output limit was hit.
    OutputLimit,
}

impl Status {
    /// Every status, for exhaustive tests and reports.
    pub const ALL: [Status; 7] = [
        Status::Passed,
        Status::Failed,
        Status::Error,
        Status::SyntaxError,
        Status::Timeout,
        Status::MemoryLimit,
        Status::OutputLimit,
    ];

    /// The snake_case name used in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::SyntaxError => "syntax_error",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
        }
    }
}

/// A Python exception, as reported by the runner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The exception's type name, e.g. `AssertionError`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The exception's message (may be empty).
    pub message: String,
    /// The line of the program under repair it was raised at (its innermost frame there), when
    /// it came from the program; `None` when it was raised elsewhere (for instance by a test's
    /// own `assert`).
    pub line: Option<u32>,
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TestResult {
    /// Whether the test ran to the end without raising.
    pub passed: bool,
    /// What it raised, when it failed.
    pub error: Option<ErrorInfo>,
}

/// The structured outcome of one execution (DESIGN.md section 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The overall status.
    pub status: Status,
    /// One entry per test that ran, in order; empty when the program never got to the tests.
    pub tests: Vec<TestResult>,
    /// The first error: the program's own, or the first failing test's.
    pub error: Option<ErrorInfo>,
    /// Captured standard output, truncated to a cap.
    pub stdout: String,
    /// Captured standard error (what the program wrote to `sys.stderr`), truncated to the same
    /// cap; empty when it wrote none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Wall time of the execution in milliseconds.
    pub elapsed_ms: f64,
}

impl Outcome {
    /// How many tests passed.
    pub fn tests_passed(&self) -> usize {
        self.tests.iter().filter(|t| t.passed).count()
    }

    /// Whether the program solved its task: every test ran and passed.
    pub fn is_passed(&self) -> bool {
        self.status == Status::Passed
    }
}

/// The JSON form of an outcome: what `coe run --json` prints, each line of `coe check`, and the
/// reply of `coe serve`'s `/v1/run` (DESIGN.md section 9).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeJson<'a> {
    /// The task, where the outcome is one of many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<&'a str>,
    /// [`Status::as_str`].
    pub status: &'static str,
    /// Tests that passed.
    pub tests_passed: usize,
    /// Tests requested (those that never ran count too).
    pub tests_total: usize,
    /// The tests that ran.
    pub tests: &'a [TestResult],
    /// The first error.
    pub error: Option<&'a ErrorInfo>,
    /// Captured standard output.
    pub stdout: &'a str,
    /// Captured standard error, when there was any.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub stderr: &'a str,
    /// Wall time in milliseconds, to the microsecond.
    pub elapsed_ms: f64,
}

impl<'a> OutcomeJson<'a> {
    /// The JSON form of `outcome`, of a request with `tests_total` tests.
    pub fn new(outcome: &'a Outcome, tests_total: usize, task_id: Option<&'a str>) -> Self {
        Self {
            task_id,
            status: outcome.status.as_str(),
            tests_passed: outcome.tests_passed(),
            tests_total,
            tests: &outcome.tests,
            error: outcome.error.as_ref(),
            stdout: &outcome.stdout,
            stderr: &outcome.stderr,
            elapsed_ms: (outcome.elapsed_ms * 1000.0).round() / 1000.0,
        }
    }
}

/// A failure of the executor itself (not of the program): the sandbox could not be started, the
/// runner answered garbage, and so on. Programs never cause this; it means the run told nothing.
#[derive(Debug, thiserror::Error)]
#[error("executor failed: {message}")]
pub struct ExecutorError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ExecutorError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Runs a program and its tests. Implementations must contain whatever the program does: the
/// outcome reports it, the caller is never harmed by it.
///
/// An executor that "runs" nothing and passes programs that return a constant, to show the
/// contract (a real one is `coe_sandbox::Sandbox`):
///
/// ```
/// use coe_exec::{ExecRequest, Executor, ExecutorError, Limits, Outcome, Status, TestResult};
///
/// struct Constant;
///
/// impl Executor for Constant {
///     fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
///         let passed = request.program.contains("return 1");
///         Ok(Outcome {
///             status: if passed { Status::Passed } else { Status::Failed },
///             tests: request
///                 .tests
///                 .iter()
///                 .map(|_| TestResult { passed, error: None })
///                 .collect(),
///             error: None,
///             stdout: String::new(),
///             stderr: String::new(),
///             elapsed_ms: 0.0,
///         })
///     }
/// }
///
/// let tests = vec!["assert f() == 1".to_owned()];
/// let request = ExecRequest {
///     program: "def f():\n    return 1\n",
///     setup: "",
///     tests: &tests,
///     limits: Limits::default(),
/// };
/// let outcome = Constant.execute(&request)?;
/// assert!(outcome.is_passed());
/// assert_eq!(outcome.tests_passed(), 1);
/// # Ok::<(), ExecutorError>(())
/// ```
pub trait Executor {
    /// Runs `request` and reports the outcome.
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError>;
}

impl<E: Executor + ?Sized> Executor for &E {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        (**self).execute(request)
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        (**self).execute(request)
    }
}

impl<E: Executor + ?Sized> Executor for std::sync::Arc<E> {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        (**self).execute(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_serde() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    #[test]
    fn error_info_serialises_type_field() {
        let info = ErrorInfo {
            type_name: "NameError".into(),
            message: "name 'x' is not defined".into(),
            line: Some(3),
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["type"], "NameError");
        assert_eq!(json["line"], 3);
    }

    #[test]
    fn limits_fill_missing_fields_with_defaults() {
        let limits: Limits = serde_json::from_str(r#"{"timeout_ms": 50}"#).unwrap();
        assert_eq!(limits.timeout(), Duration::from_millis(50));
        assert_eq!(limits.memory_mib, Limits::default().memory_mib);
    }
}
