//! What the sandbox reports for ordinary programs: passes, failures, errors and their lines.

mod common;

use coe_exec::Status;
use common::{assert_status, error_type, run, run_with, tight};

const ADD: &str = "def add(a, b):\n    return a + b\n";

#[test]
fn passing_program() {
    let outcome = run(ADD, &["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]);
    assert_status(&outcome, Status::Passed);
    assert_eq!(outcome.tests_passed(), 2);
    assert_eq!(outcome.error, None);
}

#[test]
fn failing_tests_are_reported_one_by_one() {
    let outcome = run(
        "def add(a, b):\n    return a - b\n",
        &["assert add(1, 2) == 3", "assert add(0, 0) == 0", "add(1)"],
    );
    assert_status(&outcome, Status::Failed);
    let passed: Vec<bool> = outcome.tests.iter().map(|t| t.passed).collect();
    assert_eq!(passed, [false, true, false]);
    assert_eq!(
        outcome.tests[0].error.as_ref().unwrap().type_name,
        "AssertionError"
    );
    let type_error = outcome.tests[2].error.as_ref().unwrap();
    assert_eq!(type_error.type_name, "TypeError");
}

#[test]
fn errors_point_at_the_program_line() {
    let program = "def f(x):\n    y = x + 1\n    return undefined_name\n";
    let outcome = run(program, &["assert f(1) == 2"]);
    assert_status(&outcome, Status::Failed);
    let error = outcome.tests[0].error.as_ref().unwrap();
    assert_eq!(error.type_name, "NameError");
    assert!(error.message.contains("undefined_name"), "{error:?}");
    assert_eq!(error.line, Some(3));
}

#[test]
fn syntax_errors_have_their_line() {
    let outcome = run("def f(x):\n    return x +\n", &["assert f(1)"]);
    assert_status(&outcome, Status::SyntaxError);
    assert_eq!(error_type(&outcome), "SyntaxError");
    assert_eq!(outcome.error.as_ref().unwrap().line, Some(2));
    assert!(outcome.tests.is_empty());
}

#[test]
fn a_program_that_raises_is_an_error() {
    let outcome = run("x = 1\nraise ValueError('boom')\n", &["assert x == 1"]);
    assert_status(&outcome, Status::Error);
    let error = outcome.error.unwrap();
    assert_eq!(
        (error.type_name.as_str(), error.message.as_str()),
        ("ValueError", "boom")
    );
    assert_eq!(error.line, Some(2));
}

#[test]
fn setup_runs_first_in_the_same_namespace() {
    let outcome = run_with(
        "def g():\n    return helper() * 2\n",
        "def helper():\n    return 21\n",
        &["assert g() == 42"],
        tight(),
    );
    assert_status(&outcome, Status::Passed);
}

#[test]
fn stdout_is_captured() {
    let outcome = run("print('hello')\nprint(1 + 1)\n", &[]);
    assert_status(&outcome, Status::Passed);
    assert_eq!(outcome.stdout, "hello\n2\n");
}

#[test]
fn common_modules_are_available() {
    let program = "import re, math, heapq, collections, itertools, functools, bisect\n\
                   from typing import List\n\
                   def f(xs: List[int]):\n    return heapq.nsmallest(2, xs)\n";
    let outcome = run(
        program,
        &[
            "assert f([3, 1, 2]) == [1, 2]",
            "assert math.gcd(12, 18) == 6",
        ],
    );
    assert_status(&outcome, Status::Passed);
}

#[test]
fn each_run_starts_fresh() {
    let first = run("import builtins\nbuiltins.leak = 42\nLEAK = 1\n", &[]);
    assert_status(&first, Status::Passed);
    let second = run(
        "",
        &["assert not hasattr(__import__('builtins'), 'leak')", "LEAK"],
    );
    assert_status(&second, Status::Failed);
    assert!(second.tests[0].passed, "builtins changes do not carry over");
    assert_eq!(
        second.tests[1].error.as_ref().unwrap().type_name,
        "NameError"
    );
}

#[test]
fn the_sandbox_is_an_executor() {
    use coe_exec::{ExecRequest, Executor, Limits};
    let tests = vec!["assert add(2, 2) == 4".to_owned()];
    let outcome = common::sandbox()
        .execute(&ExecRequest {
            program: ADD,
            setup: "",
            tests: &tests,
            limits: Limits::default(),
        })
        .unwrap();
    assert_eq!(outcome.status, Status::Passed);
}
