//! The host's verdict on a run: from how it ended (a trap, a limit hit, the output's size, the
//! guest's report) to the outcome of DESIGN.md section 6. Pure functions with no wasmtime in
//! them, so every ending is unit-tested and fuzzed here; the sandbox only observes the run.

use std::time::Duration;

use coe_exec::{ErrorInfo, Outcome, Status, TestResult};

use crate::{Exception, Response, StepResult};

/// A response that does not describe a possible run. Python code cannot cause this (it cannot
/// reach the response channel), so it means the guest is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResponseError(pub String);

/// How the guest's execution ended, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `_start` returned.
    Returned,
    /// The guest called `proc_exit` with this code (Python's `sys.exit` or `os._exit`).
    Exited(i32),
    /// The time limit stopped it (the wall-clock timeout or the epoch deadline).
    TimedOut,
    /// It ran out of the native stack (deep recursion in the interpreter).
    StackOverflow,
    /// Any other trap, with its message.
    Trapped(String),
    /// The guest could not be started (instantiation failed), with the reason.
    NotStarted(String),
}

/// What the guest handed to the host's response function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GuestReport {
    /// Nothing (the run ended before reporting).
    #[default]
    Missing,
    /// The encoded [`Response`].
    Received(Vec<u8>),
    /// A call the host refused (outside memory, too large, twice), with why.
    Invalid(String),
}

/// Everything the host knows when a run is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// How the execution ended.
    pub ending: Ending,
    /// The guest's report.
    pub report: GuestReport,
    /// Whether the memory limit refused a growth.
    pub memory_limit_hit: bool,
    /// Whether the program printed more than the output limit.
    pub output_exceeded: bool,
    /// What the program printed, cut to the output limit.
    pub stdout: String,
    /// How many tests the request had.
    pub tests_requested: usize,
    /// The run's wall time.
    pub elapsed: Duration,
}

/// Why a run has no outcome: the sandbox, not the program, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    /// The guest reported something impossible (see [`ResponseError`]).
    #[error("{0}")]
    InvalidResponse(String),
    /// The guest never started.
    #[error("instantiating the guest: {0}")]
    NotStarted(String),
}

/// The outcome of a run, decided by the host. In order: output over its limit; else the
/// guest's report when it made one; else the ending (a time limit, then the memory limit, then
/// an exit, a stack overflow or another trap, each an error of the program's).
pub fn verdict(end: RunEnd) -> Result<Outcome, VerdictError> {
    let limit = |status: Status, error: Option<ErrorInfo>| Outcome {
        status,
        tests: Vec::new(),
        error,
        stdout: end.stdout.clone(),
        stderr: String::new(),
        elapsed_ms: end.elapsed.as_secs_f64() * 1000.0,
    };
    let program_error = |type_name: &str, message: String| {
        limit(
            Status::Error,
            Some(ErrorInfo {
                type_name: type_name.into(),
                message,
                line: None,
            }),
        )
    };
    if end.output_exceeded {
        return Ok(limit(Status::OutputLimit, None));
    }
    match &end.report {
        GuestReport::Received(bytes) => {
            return decode_outcome(bytes, end.tests_requested, end.stdout.clone(), end.elapsed)
                .map_err(|e| VerdictError::InvalidResponse(e.to_string()));
        }
        GuestReport::Invalid(reason) => return Err(VerdictError::InvalidResponse(reason.clone())),
        GuestReport::Missing => {}
    }
    Ok(match &end.ending {
        Ending::TimedOut => limit(Status::Timeout, None),
        _ if end.memory_limit_hit => limit(Status::MemoryLimit, None),
        Ending::NotStarted(reason) => return Err(VerdictError::NotStarted(reason.clone())),
        Ending::Returned => program_error("SystemExit", exited_early(0)),
        Ending::Exited(code) => program_error("SystemExit", exited_early(*code)),
        Ending::StackOverflow => program_error(
            "RecursionError",
            "maximum recursion depth exceeded (the sandbox's stack is exhausted)".into(),
        ),
        Ending::Trapped(message) => program_error(
            "InterpreterError",
            format!("the Python interpreter stopped: {message}"),
        ),
    })
}

fn exited_early(code: i32) -> String {
    format!("the program exited (code {code}) before the tests finished")
}

/// Decodes a postcard response and turns it into an outcome. Any bytes are safe to pass.
pub fn decode_outcome(
    bytes: &[u8],
    tests_requested: usize,
    stdout: String,
    elapsed: Duration,
) -> Result<Outcome, ResponseError> {
    let response: Response =
        postcard::from_bytes(bytes).map_err(|e| ResponseError(format!("undecodable: {e}")))?;
    outcome_from_response(response, tests_requested, stdout, elapsed)
}

/// Turns the guest's report into an outcome; the host, not the guest, decides the status.
pub fn outcome_from_response(
    response: Response,
    tests_requested: usize,
    stdout: String,
    elapsed: Duration,
) -> Result<Outcome, ResponseError> {
    if response.tests.len() != tests_requested {
        return Err(ResponseError(format!(
            "{} test results for {tests_requested} tests",
            response.tests.len()
        )));
    }
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let early = |step: StepResult| match step {
        StepResult::CompileError(e) => Some((Status::SyntaxError, Some(error_info(e)))),
        StepResult::Raised(e) => Some((Status::Error, Some(error_info(e)))),
        StepResult::Completed => None,
        StepResult::Skipped => Some((Status::Error, None)),
    };
    if let Some((status, error)) = early(response.setup).or_else(|| early(response.program)) {
        return Ok(Outcome {
            status,
            tests: Vec::new(),
            error,
            stdout,
            stderr: String::new(),
            elapsed_ms,
        });
    }
    let mut tests = Vec::with_capacity(response.tests.len());
    for step in response.tests {
        tests.push(match step {
            StepResult::Completed => TestResult {
                passed: true,
                error: None,
            },
            StepResult::CompileError(e) | StepResult::Raised(e) => TestResult {
                passed: false,
                error: Some(error_info(e)),
            },
            StepResult::Skipped => {
                return Err(ResponseError(
                    "a test was skipped after the program completed".into(),
                ));
            }
        });
    }
    let error = tests.iter().find_map(|t| t.error.clone());
    let status = if tests.iter().all(|t| t.passed) {
        Status::Passed
    } else {
        Status::Failed
    };
    Ok(Outcome {
        status,
        tests,
        error,
        stdout,
        stderr: String::new(),
        elapsed_ms,
    })
}

fn error_info(exception: Exception) -> ErrorInfo {
    ErrorInfo {
        type_name: exception.type_name,
        message: exception.message,
        line: exception.line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(type_name: &str) -> Exception {
        Exception {
            type_name: type_name.into(),
            message: "m".into(),
            line: Some(2),
        }
    }

    fn decode(response: &Response, tests: usize) -> Result<Outcome, ResponseError> {
        let bytes = postcard::to_allocvec(response).unwrap();
        decode_outcome(&bytes, tests, String::new(), Duration::from_millis(1))
    }

    #[test]
    fn statuses_follow_the_steps() {
        let passed = all_passed();
        assert_eq!(decode(&passed, 2).unwrap().status, Status::Passed);

        let failed = Response {
            tests: vec![
                StepResult::Completed,
                StepResult::Raised(exception("AssertionError")),
            ],
            ..passed.clone()
        };
        let outcome = decode(&failed, 2).unwrap();
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.tests_passed(), 1);
        assert_eq!(outcome.error.unwrap().type_name, "AssertionError");

        let syntax = Response {
            program: StepResult::CompileError(exception("SyntaxError")),
            tests: vec![StepResult::Skipped, StepResult::Skipped],
            ..passed.clone()
        };
        let outcome = decode(&syntax, 2).unwrap();
        assert_eq!(outcome.status, Status::SyntaxError);
        assert!(outcome.tests.is_empty());

        let setup_error = Response {
            setup: StepResult::Raised(exception("ImportError")),
            program: StepResult::Skipped,
            tests: vec![StepResult::Skipped, StepResult::Skipped],
        };
        assert_eq!(decode(&setup_error, 2).unwrap().status, Status::Error);
    }

    fn all_passed() -> Response {
        Response {
            setup: StepResult::Completed,
            program: StepResult::Completed,
            tests: vec![StepResult::Completed, StepResult::Completed],
        }
    }

    fn end(ending: Ending) -> RunEnd {
        RunEnd {
            ending,
            report: GuestReport::Missing,
            memory_limit_hit: false,
            output_exceeded: false,
            stdout: "partial".into(),
            tests_requested: 2,
            elapsed: Duration::from_millis(3),
        }
    }

    fn status_and_error(end: RunEnd) -> (Status, Option<String>) {
        let outcome = verdict(end).unwrap();
        (outcome.status, outcome.error.map(|e| e.type_name))
    }

    #[test]
    fn every_ending_has_one_verdict() {
        let error = |name: &str| (Status::Error, Some(name.to_owned()));
        assert_eq!(
            status_and_error(end(Ending::TimedOut)),
            (Status::Timeout, None)
        );
        assert_eq!(status_and_error(end(Ending::Returned)), error("SystemExit"));
        assert_eq!(
            status_and_error(end(Ending::Exited(3))),
            error("SystemExit")
        );
        assert_eq!(
            status_and_error(end(Ending::StackOverflow)),
            error("RecursionError")
        );
        assert_eq!(
            status_and_error(end(Ending::Trapped("unreachable".into()))),
            error("InterpreterError")
        );
        let exited = verdict(end(Ending::Exited(3))).unwrap();
        assert!(exited.error.unwrap().message.contains("code 3"));
        assert_eq!(exited.stdout, "partial");
        assert!(exited.tests.is_empty());
        assert!(matches!(
            verdict(end(Ending::NotStarted("no memory".into()))),
            Err(VerdictError::NotStarted(_))
        ));
    }

    #[test]
    fn limits_come_before_the_ending_and_output_before_everything() {
        // A time limit wins over the memory limit; the memory limit over how the trap looked.
        let both = RunEnd {
            memory_limit_hit: true,
            ..end(Ending::TimedOut)
        };
        assert_eq!(status_and_error(both), (Status::Timeout, None));
        let memory = RunEnd {
            memory_limit_hit: true,
            ..end(Ending::Trapped("out of bounds".into()))
        };
        assert_eq!(status_and_error(memory), (Status::MemoryLimit, None));
        // Output over the limit wins even over a report that says every test passed.
        let passed = all_passed();
        let flooded = RunEnd {
            output_exceeded: true,
            report: GuestReport::Received(postcard::to_allocvec(&passed).unwrap()),
            ..end(Ending::Returned)
        };
        assert_eq!(status_and_error(flooded), (Status::OutputLimit, None));
    }

    #[test]
    fn a_report_decides_over_the_ending_and_a_bad_one_is_the_sandbox_s_fault() {
        let passed = all_passed();
        // The program exited after reporting (the guest exits with the report's code).
        let reported = RunEnd {
            report: GuestReport::Received(postcard::to_allocvec(&passed).unwrap()),
            ..end(Ending::Exited(0))
        };
        assert_eq!(status_and_error(reported), (Status::Passed, None));
        let refused = RunEnd {
            report: GuestReport::Invalid("twice".into()),
            ..end(Ending::Returned)
        };
        assert!(matches!(
            verdict(refused),
            Err(VerdictError::InvalidResponse(_))
        ));
        let garbage = RunEnd {
            report: GuestReport::Received(vec![0xff; 3]),
            ..end(Ending::Returned)
        };
        assert!(matches!(
            verdict(garbage),
            Err(VerdictError::InvalidResponse(_))
        ));
    }

    #[test]
    fn impossible_responses_are_errors() {
        let response = Response {
            setup: StepResult::Completed,
            program: StepResult::Completed,
            tests: vec![StepResult::Completed],
        };
        assert!(decode(&response, 3).is_err(), "wrong number of tests");
        let skipped = Response {
            tests: vec![StepResult::Skipped],
            ..response
        };
        assert!(
            decode(&skipped, 1).is_err(),
            "a test skipped after a completed program"
        );
        for garbage in [&b""[..], b"\xff\xff\xff\xff", b"\x00\x01"] {
            assert!(decode_outcome(garbage, 1, String::new(), Duration::ZERO).is_err());
        }
    }

    fn ending() -> impl proptest::strategy::Strategy<Value = Ending> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Ending::Returned),
            any::<i32>().prop_map(Ending::Exited),
            Just(Ending::TimedOut),
            Just(Ending::StackOverflow),
            ".*".prop_map(Ending::Trapped),
            ".*".prop_map(Ending::NotStarted),
        ]
    }

    fn report() -> impl proptest::strategy::Strategy<Value = GuestReport> {
        use proptest::prelude::*;
        prop_oneof![
            Just(GuestReport::Missing),
            ".*".prop_map(GuestReport::Invalid),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(GuestReport::Received),
            // Well-formed reports, so the decoding path is reached too.
            proptest::collection::vec(0u8..3, 0..4).prop_map(|steps| {
                let step = |s: u8| match s {
                    0 => StepResult::Completed,
                    1 => StepResult::Raised(exception("AssertionError")),
                    _ => StepResult::Skipped,
                };
                GuestReport::Received(
                    postcard::to_allocvec(&Response {
                        setup: StepResult::Completed,
                        program: StepResult::Completed,
                        tests: steps.into_iter().map(step).collect(),
                    })
                    .unwrap(),
                )
            }),
        ]
    }

    proptest::proptest! {
        /// What the fuzz target `verdict` checks, on every test run: any ending, report and
        /// flags give a verdict without panicking; output over its limit is always
        /// `output_limit`; an outcome has the requested number of test results or none.
        #[test]
        fn any_run_end_has_a_sound_verdict(
            ending in ending(),
            report in report(),
            memory_limit_hit: bool,
            output_exceeded: bool,
            tests_requested in 0usize..4,
        ) {
            let end = RunEnd {
                ending,
                report,
                memory_limit_hit,
                output_exceeded,
                stdout: String::new(),
                tests_requested,
                elapsed: Duration::from_millis(1),
            };
            if let Ok(outcome) = verdict(end) {
                proptest::prop_assert!(
                    outcome.tests.is_empty() || outcome.tests.len() == tests_requested
                );
                proptest::prop_assert_eq!(output_exceeded, outcome.status == Status::OutputLimit);
            }
        }
    }
}
