//! `coe run`: one program and its tests in the sandbox.

use std::path::Path;

use coe_exec::{ExecRequest, Limits};

use super::{read_text, sandbox};
use crate::Failure;
use crate::output::{json_line, outcome_text, print};
use coe_exec::OutcomeJson;

pub(crate) fn run(
    program_path: &Path,
    tests: &[String],
    setup_path: Option<&Path>,
    limits: Limits,
    json: bool,
) -> Result<(), Failure> {
    let program = read_text(program_path)?;
    let setup = setup_path.map(read_text).transpose()?.unwrap_or_default();
    let sandbox = sandbox()?;
    let outcome = sandbox
        .run(&ExecRequest {
            program: &program,
            setup: &setup,
            tests,
            limits,
        })
        .map_err(|e| Failure::Internal(format!("coe: {e}")))?
        .outcome;
    if json {
        print(&json_line(&OutcomeJson::new(&outcome, tests.len(), None))?)
    } else {
        print(&outcome_text(&outcome, tests))
    }
}
