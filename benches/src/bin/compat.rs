//! Compatibility report: every MBPP reference solution and every HumanEvalFix program, run in
//! the sandbox and in CPython, with every task whose outcome differs and why.
//! `cargo xtask compat` builds and runs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use coe_benches::cpython::{self, CpythonResult};
use coe_benches::{humanevalfix, mbpp};
use coe_exec::{ExecRequest, Limits, Outcome, Status};
use coe_sandbox::Sandbox;
use coe_tool_state::Task;

/// The outcome in both interpreters for one program of a task.
struct Comparison {
    task_id: String,
    sandbox: Outcome,
    cpython: Option<CpythonResult>,
}

impl Comparison {
    /// CPython's status; a run killed at the time limit counts as `timeout`.
    fn cpython_status(&self) -> Status {
        self.cpython
            .as_ref()
            .map_or(Status::Timeout, CpythonResult::status)
    }

    fn differs(&self) -> bool {
        self.cpython_status() != self.sandbox.status
    }

    fn reason(&self) -> String {
        let sandbox_error = self.sandbox.error.as_ref().map_or(String::new(), describe);
        let cpython = match &self.cpython {
            None => "timed out".to_owned(),
            Some(result) => {
                let error = result.first_error().map_or(String::new(), |e| {
                    describe(&coe_exec::ErrorInfo {
                        type_name: e.type_name.clone(),
                        message: e.message.clone(),
                        line: e.line,
                    })
                });
                format!("{}{error}", result.status().as_str())
            }
        };
        format!(
            "sandbox {}{sandbox_error}; CPython {cpython}",
            self.sandbox.status.as_str()
        )
    }
}

/// ` (Type: message)`, or ` (Type)` without a message.
fn describe(error: &coe_exec::ErrorInfo) -> String {
    if error.message.is_empty() {
        format!(" ({})", error.type_name)
    } else {
        format!(" ({}: {})", error.type_name, one_line(&error.message))
    }
}

fn one_line(text: &str) -> String {
    let text = text.replace('\n', " ");
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Runs `program_of(task)` for every task in both interpreters, on all cores.
fn compare(
    sandbox: &Sandbox,
    python: &PathBuf,
    tasks: &[Task],
    program_of: impl Fn(&Task) -> &str + Sync,
) -> Result<Vec<Comparison>> {
    let limits = Limits {
        timeout_ms: 10_000,
        ..Limits::default()
    };
    use rayon::prelude::*;
    let mut all = tasks
        .par_iter()
        .map(|task| -> Result<Comparison> {
            let program = program_of(task);
            let sandbox_outcome = sandbox
                .run(&ExecRequest {
                    program,
                    setup: task.setup(),
                    tests: &task.tests,
                    limits,
                })?
                .outcome;
            let (cpython_result, _) = cpython::run(
                python,
                task.setup(),
                program,
                &task.tests,
                Duration::from_secs(10),
            )?;
            Ok(Comparison {
                task_id: task.task_id.clone(),
                sandbox: sandbox_outcome,
                cpython: cpython_result,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    all.sort_by_key(|c| natural_key(&c.task_id));
    Ok(all)
}

/// Sorts `HumanEvalFix/10` after `HumanEvalFix/9`.
fn natural_key(id: &str) -> (String, u64) {
    let digits: String = id.chars().rev().take_while(char::is_ascii_digit).collect();
    let number = digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    (
        id.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned(),
        number,
    )
}

fn report(title: &str, comparisons: &[Comparison]) -> usize {
    let sandbox_passed = comparisons
        .iter()
        .filter(|c| c.sandbox.status == Status::Passed)
        .count();
    let cpython_passed = comparisons
        .iter()
        .filter(|c| c.cpython_status() == Status::Passed)
        .count();
    let differing: Vec<&Comparison> = comparisons.iter().filter(|c| c.differs()).collect();
    println!("## {title}\n");
    println!(
        "{} programs: {sandbox_passed} pass in the sandbox, {cpython_passed} in CPython; {} differ.\n",
        comparisons.len(),
        differing.len()
    );
    for comparison in &differing {
        println!("- {}: {}", comparison.task_id, comparison.reason());
    }
    if !differing.is_empty() {
        println!();
    }
    comparisons
        .iter()
        .filter(|c| c.sandbox.status == Status::Passed && c.cpython_status() != Status::Passed)
        .count()
}

fn main() -> Result<()> {
    let sandbox = Sandbox::new(&Default::default())?;
    let python = cpython::interpreter()?;
    println!(
        "# Sandbox compatibility with CPython ({})\n",
        python.display()
    );

    let mbpp = mbpp()?;
    let mbpp_results = compare(&sandbox, &python, &mbpp, |task| &task.code)?;
    let false_passes = report("MBPP reference solutions", &mbpp_results);

    let hef = humanevalfix()?;
    let references = compare(&sandbox, &python, &hef, |task| {
        task.reference.as_deref().unwrap_or("")
    })?;
    let false_passes = false_passes
        + report(
            "HumanEvalFix reference programs (all must pass)",
            &references,
        );
    let buggy = compare(&sandbox, &python, &hef, |task| &task.code)?;
    let buggy_passing = buggy
        .iter()
        .filter(|c| c.sandbox.status == Status::Passed)
        .count();
    let false_passes = false_passes + report("HumanEvalFix buggy programs (all must fail)", &buggy);

    let references_failing = references
        .iter()
        .filter(|c| c.sandbox.status != Status::Passed)
        .count();
    println!(
        "Summary: {false_passes} program(s) pass in the sandbox but not in CPython; \
         {references_failing} HumanEvalFix reference(s) fail; {buggy_passing} buggy program(s) pass."
    );
    Ok(())
}
