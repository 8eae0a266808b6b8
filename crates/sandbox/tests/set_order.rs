//! Sets iterate, pop and print in CPython's order: every program in `data/set_order.jsonl`
//! (written by `data/set_order.py` with CPython 3.11) prints in the sandbox what it printed in
//! CPython. The programs build sets of ints, negative and 64-bit ints, floats and tuples of
//! sizes 0-2,000 in fourteen ways, run 300 random sequences of set operations, and include the
//! MBPP tasks that failed only for set order.

mod common;

use coe_exec::{ExecRequest, Limits, Status};
use common::sandbox;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    program: String,
    stdout: String,
}

fn cases() -> Vec<Case> {
    include_str!("data/set_order.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a case of set_order.jsonl"))
        .collect()
}

/// The first line where `actual` differs from `expected`, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    for line in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (None, None) => break,
            (want, got) if want != got => {
                return format!("line {line}: CPython {want:?}, sandbox {got:?}");
            }
            _ => {}
        }
    }
    "no line differs".to_owned()
}

#[test]
fn sets_iterate_in_cpythons_order() {
    let limits = Limits {
        timeout_ms: 60_000,
        memory_mib: 512,
        output_bytes: 1 << 20,
    };
    let cases = cases();
    assert!(cases.len() >= 20, "set_order.jsonl lost its cases");
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = sandbox()
            .run(&ExecRequest {
                program: &case.program,
                setup: "",
                tests: &[],
                limits,
            })
            .expect("the sandbox runs")
            .outcome;
        if outcome.status != Status::Passed {
            failures.push(format!(
                "{}: {:?} {:?}",
                case.name, outcome.status, outcome.error
            ));
        } else if outcome.stdout != case.stdout {
            let difference = first_difference(&case.stdout, &outcome.stdout);
            failures.push(format!("{}: {difference}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} programs print sets in another order than CPython:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
