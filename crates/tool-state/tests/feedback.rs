//! Snapshots of the feedback for every status: this is what the model reads.

use coe_tool_state::{
    ErrorInfo, Limits, Outcome, Program, Status, TestResult, render_feedback, render_observation,
};

fn error(type_name: &str, message: &str, line: Option<u32>) -> Option<ErrorInfo> {
    Some(ErrorInfo {
        type_name: type_name.into(),
        message: message.into(),
        line,
    })
}

fn outcome(status: Status, tests: Vec<TestResult>, error: Option<ErrorInfo>) -> Outcome {
    Outcome {
        status,
        tests,
        error,
        stdout: "ignored\n".into(),
        stderr: String::new(),
        elapsed_ms: 12.5,
    }
}

fn pass() -> TestResult {
    TestResult {
        passed: true,
        error: None,
    }
}

fn fail(error: Option<ErrorInfo>) -> TestResult {
    TestResult {
        passed: false,
        error,
    }
}

#[test]
fn feedback_for_every_status() {
    let tests: Vec<String> = vec![
        "assert add(1, 2) == 3".into(),
        "assert add(2, 2) == 4".into(),
        "assert add('a', 1) == 'a1'".into(),
    ];
    let limits = Limits::default();
    let long = "x".repeat(400);
    let cases = [
        (
            "passed",
            outcome(Status::Passed, vec![pass(), pass(), pass()], None),
        ),
        (
            "failed",
            outcome(
                Status::Failed,
                vec![
                    fail(error("AssertionError", "", None)),
                    pass(),
                    fail(error(
                        "TypeError",
                        "can only concatenate str (not \"int\") to str",
                        Some(2),
                    )),
                ],
                error("AssertionError", "", None),
            ),
        ),
        (
            "failed_long_message",
            outcome(
                Status::Failed,
                vec![
                    fail(error("ValueError", &format!("bad\nvalue {long}"), None)),
                    pass(),
                    pass(),
                ],
                None,
            ),
        ),
        (
            "error",
            outcome(
                Status::Error,
                vec![],
                error("NameError", "name 'ad' is not defined", Some(3)),
            ),
        ),
        (
            "syntax_error",
            outcome(
                Status::SyntaxError,
                vec![],
                error("SyntaxError", "invalid syntax", Some(2)),
            ),
        ),
        ("timeout", outcome(Status::Timeout, vec![pass()], None)),
        (
            "memory_limit",
            outcome(Status::MemoryLimit, vec![], error("MemoryError", "", None)),
        ),
        ("output_limit", outcome(Status::OutputLimit, vec![], None)),
    ];
    let mut report = String::new();
    for (name, outcome) in &cases {
        report.push_str(&format!(
            "== {name}\n{}\n",
            render_feedback(outcome, &tests, &limits)
        ));
    }
    let single = outcome(Status::Passed, vec![pass()], None);
    report.push_str(&format!(
        "== passed_single\n{}\n",
        render_feedback(&single, &tests[..1], &limits)
    ));
    let none = outcome(Status::Passed, vec![], None);
    report.push_str(&format!(
        "== passed_no_tests\n{}\n",
        render_feedback(&none, &[], &limits)
    ));
    insta::assert_snapshot!(report);
}

#[test]
fn feedback_lists_at_most_five_failures() {
    let tests: Vec<String> = (0..8)
        .map(|i| format!("assert f({i}) == {i}\nassert True"))
        .collect();
    let results = (0..8)
        .map(|_| fail(error("AssertionError", "", None)))
        .collect();
    let text = render_feedback(
        &outcome(Status::Failed, results, None),
        &tests,
        &Limits::default(),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn observation_of_a_crlf_program_with_tabs() {
    let program = Program::parse("def f(x):\r\n\tif x:\r\n\t\treturn 1\r\n\treturn 0\r\n");
    insta::assert_snapshot!(render_observation(&program, "All 3 tests passed."));
    assert_eq!(render_observation(&Program::parse(""), "x"), "***\nx");
}
