//! The messages between coe's sandbox host (`coe-sandbox`) and its WebAssembly guest
//! (`wasm-guests/python-runner`), encoded with postcard.
//!
//! The host writes a [`Request`] to the guest's stdin. The guest runs `setup`, the program, then
//! each test, and hands back a [`Response`] through a host function that Python code cannot
//! reach; the program's own stdout is only ever captured text. The guest reports facts (what
//! each step did); the host decides the status, so a guest that is confused or hostile can at
//! worst make its own run fail.

use std::borrow::Cow;

#[cfg(feature = "outcome")]
mod verdict;
#[cfg(feature = "outcome")]
pub use verdict::{
    Ending, GuestReport, ResponseError, RunEnd, VerdictError, decode_outcome,
    outcome_from_response, verdict,
};

use serde::{Deserialize, Serialize};

/// The module name of the host functions the guest imports.
pub const HOST_MODULE: &str = "coe";
/// The host function the guest calls once with the encoded [`Response`]: `(ptr: i32, len: i32)`.
pub const SUBMIT_FUNCTION: &str = "submit_response";
/// The host function the guest calls as it moves from one phase to the next: `(phase: i32)`,
/// with [`PHASE_TESTS`] before the first test and [`PHASE_DONE`] after the last. The host uses
/// the calls only to time the phases.
pub const PHASE_FUNCTION: &str = "mark_phase";
/// Setup and program are done; the tests start.
pub const PHASE_TESTS: i32 = 1;
/// The tests are done.
pub const PHASE_DONE: i32 = 2;
/// Largest response the host accepts, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<'a> {
    /// Code run first, in the program's namespace.
    pub setup: Cow<'a, str>,
    /// The program under repair.
    pub program: Cow<'a, str>,
    /// Test snippets, each compiled and run on its own in the program's namespace.
    pub tests: Vec<Cow<'a, str>>,
}

/// What one step (setup, program or a test) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    /// It ran to the end.
    Completed,
    /// It did not compile.
    CompileError(Exception),
    /// It raised (any `BaseException`, `SystemExit` and `KeyboardInterrupt` included).
    Raised(Exception),
    /// It did not run, because an earlier step failed.
    Skipped,
}

/// A Python exception, described for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// The exception class's name, e.g. `AssertionError`.
    pub type_name: String,
    /// `str(exception)`, cut to a bounded length.
    pub message: String,
    /// The line in the program (innermost frame there), or a syntax error's line.
    pub line: Option<u32>,
}

/// The guest's report of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The setup code.
    pub setup: StepResult,
    /// The program.
    pub program: StepResult,
    /// One entry per test, in request order.
    pub tests: Vec<StepResult>,
}
