//! `coe`: Chain-of-Edits from the command line.
//!
//! Exit codes: 0 on success (whatever the Python program itself did), 1 when coe itself failed
//! (for instance the sandbox could not start), 2 for a usage error or bad input (unreadable
//! file, a command that does not parse or apply).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coe_dsl::parse_script;
use coe_tool_state::Program;

const ABOUT: &str = "\
Chain-of-Edits: a small language model repairs a broken Python program by driving an edit tool,
one command per turn, while the program and its unit tests run in a WebAssembly sandbox.

The edit language (line numbers are 1-based, text after >>> is verbatim):
  ADDL <n> >>><text>          insert <text> so that it becomes line n
  REPL <n> >>><text>          replace line n with <text>
  REPW <n> >>><old> >>><new>  in line n, replace every <old> by <new>
  DELL <n>                    delete line n
  EXIT                        end the episode";

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 coe itself failed; 2 usage error or bad input.";

#[derive(Debug, Parser)]
#[command(name = "coe", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Apply edit commands (one per line) to a program and print the result.
    ///
    /// Blank lines in EDITS are skipped and EXIT stops reading. The program keeps its line
    /// ending style. A command that does not parse or apply stops with exit code 2 and
    /// `edits line N: message` on stderr; nothing is printed to stdout then.
    Apply {
        /// The Python program to edit.
        program: PathBuf,
        /// The commands, one per line.
        edits: PathBuf,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
    /// coe itself failed: exit 1.
    Internal(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Input(_) => ExitCode::from(2),
            Failure::Internal(_) => ExitCode::from(1),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Input(message) | Failure::Internal(message) => message,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Apply { program, edits } => apply(&program, &edits).and_then(|out| print(&out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message());
            failure.exit_code()
        }
    }
}

fn apply(program_path: &Path, edits_path: &Path) -> Result<String, Failure> {
    let mut program = Program::parse(&read_text(program_path)?);
    let edits = read_text(edits_path)?;
    for (line, parsed) in parse_script(&edits) {
        let command = parsed.map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
        if command == coe_dsl::Command::Exit {
            break;
        }
        program
            .apply(&command)
            .map_err(|e| Failure::Input(format!("edits line {line}: {e}")))?;
    }
    Ok(program.to_source())
}

fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Input(format!("coe: cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::Input(format!("coe: {} is not UTF-8 text", path.display())))
}

fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A closed pipe (`coe apply ... | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Internal(format!("coe: cannot write output: {e}")))
        }
        _ => Ok(()),
    }
}
