//! The baseline: the real CPython binary started once per run (`-I -S -c`), as DESIGN.md
//! section 10 prescribes (not the `python3` shim on PATH, which adds 50 ms or more a launch).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use coe_exec::Status;
use serde::Deserialize;

/// Runs setup, program and each test like the sandbox guest does, and prints one JSON line.
/// The request comes in `sys.argv` (setup, program, tests...) and the JSON is written by hand,
/// so the baseline pays for no module import that the sandbox does not.
const HARNESS: &str = r#"
import sys
def q(s):
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n').replace('\r', '\\r').replace('\t', '\\t') + '"'
def describe(e, syntax=False):
    line = None
    if syntax and getattr(e, 'filename', None) == '<program>':
        line = e.lineno
    else:
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == '<program>':
                line = tb.tb_lineno
            tb = tb.tb_next
    try:
        message = str(e)[:500]
    except BaseException:
        message = ''
    message = ''.join(c if c >= ' ' else ' ' for c in message)
    return '{"type":' + q(type(e).__name__) + ',"message":' + q(message) + ',"line":' + ('null' if line is None else str(int(line))) + '}'
def step(source, name, g):
    try:
        code = compile(source, name, 'exec')
    except BaseException as e:
        return '{"kind":"compile_error","error":' + describe(e, True) + '}'
    try:
        exec(code, g)
    except BaseException as e:
        return '{"kind":"raised","error":' + describe(e) + '}'
    return '{"kind":"completed"}'
SKIPPED = '{"kind":"skipped"}'
COMPLETED = '{"kind":"completed"}'
g = {'__name__': '__main__'}
setup = step(sys.argv[1], '<setup>', g)
program = step(sys.argv[2], '<program>', g) if setup == COMPLETED else SKIPPED
tests = [step(t, '<test>', g) if program == COMPLETED else SKIPPED for t in sys.argv[3:]]
try:
    sys.stdout.flush()
except BaseException:
    pass
sys.__stdout__.write('\n@@coe-harness@@{"setup":' + setup + ',"program":' + program + ',"tests":[' + ','.join(tests) + ']}\n')
"#;

const MARKER: &str = "@@coe-harness@@";

/// What CPython did with one request.
#[derive(Debug, Clone, Deserialize)]
pub struct CpythonResult {
    /// The setup step.
    pub setup: Step,
    /// The program step.
    pub program: Step,
    /// One entry per test.
    pub tests: Vec<Step>,
}

/// One step's result.
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    /// `completed`, `compile_error`, `raised` or `skipped`.
    pub kind: String,
    /// The exception, when there was one.
    pub error: Option<StepError>,
}

/// An exception CPython reported.
#[derive(Debug, Clone, Deserialize)]
pub struct StepError {
    /// Its class name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `str(e)`.
    pub message: String,
    /// The program line, when the error came from the program.
    pub line: Option<u32>,
}

impl CpythonResult {
    /// The status coe would report for this result.
    pub fn status(&self) -> Status {
        for step in [&self.setup, &self.program] {
            match step.kind.as_str() {
                "compile_error" => return Status::SyntaxError,
                "completed" => {}
                _ => return Status::Error,
            }
        }
        if self.tests.iter().all(|t| t.kind == "completed") {
            Status::Passed
        } else {
            Status::Failed
        }
    }

    /// The first error of the run (setup, program, then tests).
    pub fn first_error(&self) -> Option<&StepError> {
        [&self.setup, &self.program]
            .into_iter()
            .chain(self.tests.iter())
            .find_map(|step| step.error.as_ref())
    }
}

/// The real interpreter binary behind `python3` (resolving version-manager shims).
pub fn interpreter() -> Result<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3 to find the real interpreter")?;
    if !output.status.success() {
        bail!("python3 -c 'import sys; print(sys.executable)' failed");
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_file() {
        bail!(
            "python3 reports {} as its executable, which is not a file",
            path.display()
        );
    }
    Ok(path)
}

/// Runs one request in a fresh CPython process; returns the result and the wall time.
pub fn run(
    python: &PathBuf,
    setup: &str,
    program: &str,
    tests: &[String],
    timeout: Duration,
) -> Result<(Option<CpythonResult>, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(python)
        .args(["-I", "-S", "-c", HARNESS, setup, program])
        .args(tests)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    // Wait with a deadline: a CPython run may loop forever too.
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((None, started.elapsed()));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let elapsed = started.elapsed();
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .rsplit_once(MARKER)
        .and_then(|(_, json)| serde_json::from_str(json.trim()).ok());
    Ok((result, elapsed))
}
