//! Shared helpers for the sandbox's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Instant;

use coe_exec::{ExecRequest, Limits, Outcome, Status};
use coe_sandbox::Sandbox;

/// One sandbox per test binary: the first test loads (or builds) the guest.
pub(crate) fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(&Default::default()).expect("the sandbox starts"))
}

/// Limits for hostile programs: short time, small memory.
pub(crate) fn tight() -> Limits {
    Limits {
        timeout_ms: 500,
        memory_mib: 256,
        output_bytes: 16 * 1024,
    }
}

/// Runs `program` with `tests` and checks the run ended within twice its time limit.
pub(crate) fn run_with(program: &str, setup: &str, tests: &[&str], limits: Limits) -> Outcome {
    let tests: Vec<String> = tests.iter().map(|t| (*t).to_owned()).collect();
    let sandbox = sandbox();
    let started = Instant::now();
    let outcome = sandbox
        .run(&ExecRequest {
            program,
            setup,
            tests: &tests,
            limits,
        })
        .unwrap()
        .outcome;
    let elapsed = started.elapsed();
    assert!(
        elapsed <= 2 * limits.timeout(),
        "the run took {elapsed:?}, over twice its limit of {:?}",
        limits.timeout()
    );
    outcome
}

/// Runs `program` with `tests` under [`tight`] limits.
pub(crate) fn run(program: &str, tests: &[&str]) -> Outcome {
    run_with(program, "", tests, tight())
}

/// Asserts the status, showing the whole outcome when it differs.
pub(crate) fn assert_status(outcome: &Outcome, status: Status) {
    assert_eq!(outcome.status, status, "{outcome:#?}");
}

/// The type name of the outcome's first error, or "".
pub(crate) fn error_type(outcome: &Outcome) -> &str {
    outcome.error.as_ref().map_or("", |e| e.type_name.as_str())
}
