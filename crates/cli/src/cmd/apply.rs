//! `coe apply`: edit commands applied to a program, the result printed.

use std::path::Path;

use coe_dsl::{Command, parse_script};
use coe_tool_state::Program;

use super::read_text;
use crate::Failure;
use crate::output::print;

pub(crate) fn apply(program_path: &Path, edits_path: &Path) -> Result<(), Failure> {
    let mut program = Program::parse(&read_text(program_path)?);
    let edits = read_text(edits_path)?;
    for (line, parsed) in parse_script(&edits) {
        let command = parsed.map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
        if command == Command::Exit {
            break;
        }
        program
            .apply(&command)
            .map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
    }
    print(&program.to_source())
}
