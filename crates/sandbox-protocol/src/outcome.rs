//! The host's reading of a response: the outcome of DESIGN.md section 6.

use std::time::Duration;

use coe_exec::{ErrorInfo, Outcome, Status, TestResult};

use crate::{Exception, Response, StepResult};

/// A response that does not describe a possible run. Python code cannot cause this (it cannot
/// reach the response channel), so it means the guest is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResponseError(pub String);

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
        let passed = Response {
            setup: StepResult::Completed,
            program: StepResult::Completed,
            tests: vec![StepResult::Completed, StepResult::Completed],
        };
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
}
