//! The guest interpreter's speed against CPython, as a user meets it: each CPU-bound program of
//! `benches/python/cpu` run by `coe run` and by `python3 -I -S`, and `coe check --jobs 1` over
//! the first 200 MBPP references (task 123 left out) against one CPython subprocess per task,
//! every run a whole process. Several `coe` binaries (for example guests built with different
//! profiles) run side by side, in an order rotated each round. `cargo xtask bench guest` builds
//! and runs it with the release `coe`.
//!
//! Usage: `guest-bench --coe [LABEL=]PATH [--coe LABEL=PATH ...] [--rounds N]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use coe_benches::{at_least_one, cpython, mbpp, passed_outcomes, rotated_medians, write_task_file};
use coe_tool_state::Task;

/// A `coe` binary under test and the name its column gets.
#[derive(Clone)]
struct Coe {
    label: String,
    path: PathBuf,
}

/// The guest interpreter on CPU-bound programs, and `coe check`, against CPython.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A `coe` binary to measure, as `LABEL=PATH` or `PATH`; repeat to compare builds.
    #[arg(long = "coe", required = true, value_parser = parse_coe)]
    coes: Vec<Coe>,
    /// Rounds, alternating the engines.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    rounds: usize,
}

fn parse_coe(text: &str) -> Result<Coe, String> {
    let (label, path) = text.split_once('=').unwrap_or(("coe", text));
    Ok(Coe {
        label: label.to_owned(),
        path: PathBuf::from(path),
    })
}

/// Generous: the slowest program takes about a second in either interpreter.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `command`, checks it succeeded, and returns its stdout and wall time.
fn timed(command: &mut Command) -> Result<(String, Duration)> {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let elapsed = started.elapsed();
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((String::from_utf8(output.stdout)?, elapsed))
}

/// `coe run --json`'s stdout field, after checking the run passed.
fn sandbox_stdout(json: &str) -> Result<String> {
    let outcome: serde_json::Value = serde_json::from_str(json)?;
    ensure!(
        outcome["status"] == "passed",
        "the sandbox run did not pass: {json}"
    );
    Ok(outcome["stdout"].as_str().unwrap_or_default().to_owned())
}

/// One row of the table: a median wall time per runner, CPython first.
struct Row {
    name: String,
    seconds: Vec<f64>,
}

fn print_table(coes: &[Coe], rows: &[Row]) {
    let mut header = "| workload | CPython s |".to_owned();
    let mut rule = "|---|---:|".to_owned();
    for coe in coes {
        header += &format!(" {} s | CPython / {} |", coe.label, coe.label);
        rule += "---:|---:|";
    }
    println!("{header}\n{rule}");
    for row in rows {
        let cpython = row.seconds[0];
        let mut line = format!("| {} | {cpython:.3} |", row.name);
        for seconds in &row.seconds[1..] {
            line += &format!(" {seconds:.3} | {:.2}x |", cpython / seconds);
        }
        println!("{line}");
    }
}

/// The CPU-bound programs, each run by CPython and every `coe`, rotated each round; the
/// sandbox must print what CPython printed.
fn programs(args: &Args, python: &Path) -> Result<Vec<Row>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cpu");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "py"));
    files.sort();
    let mut rows = Vec::new();
    for file in &files {
        // CPython's output once, so every sandbox run is checked against it.
        let expected = timed(Command::new(python).args(["-I", "-S"]).arg(file))?.0;
        let timeout = PROGRAM_TIMEOUT.as_millis().to_string();
        let seconds = rotated_medians(args.rounds, args.coes.len() + 1, |runner| {
            if runner == 0 {
                return Ok(timed(Command::new(python).args(["-I", "-S"]).arg(file))?
                    .1
                    .as_secs_f64());
            }
            let coe = &args.coes[runner - 1];
            let (json, elapsed) = timed(
                Command::new(&coe.path)
                    .args(["run", "--json", "--timeout-ms", &timeout])
                    .arg(file),
            )?;
            let stdout = sandbox_stdout(&json)?;
            ensure!(
                stdout == expected,
                "{} printed {stdout:?} for {}, CPython {expected:?}",
                coe.label,
                file.display()
            );
            Ok(elapsed.as_secs_f64())
        })?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        rows.push(Row {
            name: format!("`{name}`"),
            seconds,
        });
    }
    Ok(rows)
}

/// `coe check --jobs 1` over `tasks` (one process) against one CPython subprocess per task.
fn check(args: &Args, python: &PathBuf, tasks: &[Task]) -> Result<Row> {
    let file = write_task_file(tasks, "coe-guest-bench")?;
    let seconds = rotated_medians(args.rounds, args.coes.len() + 1, |runner| {
        if runner == 0 {
            let mut total = Duration::ZERO;
            for task in tasks {
                let (result, elapsed) = cpython::run(
                    python,
                    task.setup(),
                    &task.code,
                    &task.tests,
                    PROGRAM_TIMEOUT,
                )?;
                ensure!(result.is_some(), "CPython timed out on {}", task.task_id);
                total += elapsed;
            }
            return Ok(total.as_secs_f64());
        }
        let coe = &args.coes[runner - 1];
        let (stdout, elapsed) = timed(
            Command::new(&coe.path)
                .args(["check", "--jobs", "1"])
                .arg(&file),
        )?;
        let passed = passed_outcomes(&stdout);
        ensure!(
            passed == tasks.len(),
            "{}: {passed} of {} tasks passed",
            coe.label,
            tasks.len()
        );
        Ok(elapsed.as_secs_f64())
    })?;
    let _ = std::fs::remove_file(&file);
    Ok(Row {
        name: format!(
            "`coe check --jobs 1`, first {} MBPP references",
            tasks.len()
        ),
        seconds,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let python = cpython::interpreter()?;
    let version = timed(Command::new(&python).arg("--version"))?.0;
    println!("# Guest interpreter against CPython\n");
    println!(
        "{} against {}; whole processes, medians of {} rounds, order rotated each round.\n",
        args.coes
            .iter()
            .map(|c| format!("{} ({})", c.label, c.path.display()))
            .collect::<Vec<_>>()
            .join(", "),
        version.trim(),
        args.rounds
    );
    let mut rows = programs(&args, &python)?;
    let tasks: Vec<Task> = mbpp()?
        .into_iter()
        .filter(|task| task.task_id != "mbpp/123")
        .take(200)
        .collect();
    rows.push(check(&args, &python, &tasks)?);
    print_table(&args.coes, &rows);
    Ok(())
}
