//! SandboxFusion's `POST /run_code` for `language: "python"`: its request and response, and how
//! a coe outcome becomes a process-like result (exit code, stdout, stderr with a traceback).
//!
//! The field names, enum strings and the rule for the overall status follow SandboxFusion's
//! `sandbox/server/sandbox_api.py` and `sandbox/runners/types.py`; verl's client
//! (`verl/utils/reward_score/sandbox_fusion/utils.py`) reads `status`, `run_result.status`,
//! `return_code` and `stdout`, and its tool path concatenates `stdout + stderr`, so both are
//! always strings.

use std::collections::BTreeMap;

use coe_exec::{Limits, Outcome, Status};
use serde::{Deserialize, Serialize};

/// A `/run_code` request. Unknown fields are ignored, as SandboxFusion's pydantic model does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunCodeRequest {
    /// The program.
    pub code: String,
    /// Only `python` (or `python3`) runs here.
    pub language: String,
    /// Standard input of the program; `None`: empty.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds the run may take (SandboxFusion's default 10), clamped to the server's maximum.
    #[serde(default = "default_timeout_s")]
    pub run_timeout: f64,
    /// Seconds a compile step may take: Python has none, so it is accepted and unused.
    #[serde(default = "default_timeout_s")]
    pub compile_timeout: f64,
    /// Memory in MB; -1 (the default) or any value <= 0: the server's maximum.
    #[serde(default = "no_memory_limit", rename = "memory_limit_MB")]
    pub memory_limit_mb: i64,
    /// Files to write before the run (path to base64); entries whose value is null are
    /// skipped. The sandbox has no file system, so any other entry is a `SandboxError`.
    #[serde(default)]
    pub files: BTreeMap<String, Option<String>>,
    /// Files to read back after the run: none can exist, so a non-empty list is a
    /// `SandboxError`.
    #[serde(default)]
    pub fetch_files: Vec<String>,
}

fn default_timeout_s() -> f64 {
    10.0
}

fn no_memory_limit() -> i64 {
    -1
}

/// The overall status of a `/run_code` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// The program ran and exited with code 0.
    Success,
    /// The program ran and failed: a non-zero exit code or its time limit.
    Failed,
    /// The sandbox could not run it (unsupported language or files, an internal failure).
    SandboxError,
}

/// How the program's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// It ended by itself (whatever its exit code).
    Finished,
    /// It could not be run.
    Error,
    /// It was stopped at its time limit.
    TimeLimitExceeded,
}

/// SandboxFusion's `CommandRunResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRunResult {
    /// How it ended.
    pub status: CommandStatus,
    /// Wall time in seconds.
    pub execution_time: Option<f64>,
    /// The exit code; `None` when it was stopped.
    pub return_code: Option<i32>,
    /// Standard output.
    pub stdout: Option<String>,
    /// Standard error (a traceback when the program raised).
    pub stderr: Option<String>,
}

/// A `/run_code` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCodeResponse {
    /// The overall status.
    pub status: RunStatus,
    /// Why, when the status is `SandboxError`; empty otherwise.
    pub message: String,
    /// Always `null`: Python has no compile step.
    pub compile_result: Option<CommandRunResult>,
    /// The run; `null` when nothing ran.
    pub run_result: Option<CommandRunResult>,
    /// The replica that answered (`MY_POD_NAME`, as SandboxFusion reports it), when set.
    pub executor_pod_name: Option<String>,
    /// Files read back: always empty.
    pub files: BTreeMap<String, String>,
}

impl RunCodeResponse {
    /// A reply saying the sandbox could not run the request.
    pub fn sandbox_error(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status: RunStatus::SandboxError,
            run_result: Some(CommandRunResult {
                status: CommandStatus::Error,
                execution_time: None,
                return_code: None,
                stdout: Some(String::new()),
                stderr: Some(message.clone()),
            }),
            message,
            compile_result: None,
            executor_pod_name: pod_name(),
            files: BTreeMap::new(),
        }
    }
}

fn pod_name() -> Option<String> {
    std::env::var("MY_POD_NAME").ok()
}

/// Why a request cannot run here.
pub fn unsupported(request: &RunCodeRequest) -> Option<String> {
    if !matches!(request.language.as_str(), "python" | "python3") {
        return Some(format!(
            "language {:?} is not supported: coe's sandbox runs Python only",
            request.language
        ));
    }
    if let Some(path) = request
        .files
        .iter()
        .find_map(|(path, content)| content.as_ref().map(|_| path))
    {
        return Some(format!(
            "files are not supported (got {path:?}): coe's sandbox gives a program no file system"
        ));
    }
    if let Some(path) = request.fetch_files.first() {
        return Some(format!(
            "fetch_files is not supported (asked for {path:?}): coe's sandbox gives a program no file system"
        ));
    }
    None
}

/// The limits of a request: its time and memory, clamped to the server's `max`.
pub fn limits(request: &RunCodeRequest, max: Limits) -> Limits {
    let seconds = request.run_timeout;
    // No usable time or memory (NaN, <= 0, SandboxFusion's -1): the server's maximum.
    crate::LimitsRequest {
        timeout_ms: (seconds.is_finite() && seconds > 0.0)
            .then(|| (seconds * 1000.0).ceil() as u64),
        memory_mib: u64::try_from(request.memory_limit_mb)
            .ok()
            .filter(|&mb| mb > 0),
        output_bytes: None,
    }
    .clamped(max.timeout_ms, max)
}

/// The program the sandbox runs for `code`: it gives the program `stdin` (as text, with a
/// `.buffer` for programs that read bytes), runs it as `__main__` under the file name
/// `<string>`, and on an uncaught exception prints the traceback to stderr (without the
/// wrapper's own frame) before letting the exception end the run, as `python file.py` would.
/// `sys.exit` ends with CPython's exit code: `None` 0, an integer masked to 0-255, anything
/// else printed to stderr and 1.
pub fn program(code: &str, stdin: Option<&str>) -> String {
    // A JSON string is a valid Python string literal (its escapes are Python's too).
    let literal = |text: &str| serde_json::Value::from(text).to_string();
    let stdin = stdin.map_or_else(|| "None".to_string(), literal);
    format!(
        r#"def __coe_run(source, stdin):
    import io, sys, traceback
    data = (stdin or "").encode("utf-8", "surrogatepass")
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        exec(compile(source, "<string>", "exec"), globals())
    except SystemExit as exit:
        code = exit.code
        if code is None:
            code = 0
        elif isinstance(code, int):
            code = code & 0xFF
        else:
            print(code, file=sys.stderr)
            code = 1
        raise SystemExit(code) from None
    except BaseException as error:
        trace = error.__traceback__
        traceback.print_exception(type(error), error, trace.tb_next if trace else None)
        raise
    finally:
        sys.stderr.flush()
__coe_run({}, {stdin})
"#,
        literal(code)
    )
}

/// The process exit code `python file.py` would have ended with.
pub fn exit_code(outcome: &Outcome) -> i32 {
    match (&outcome.status, &outcome.error) {
        (Status::Passed, _) => 0,
        (Status::Error, Some(error)) if error.type_name == "SystemExit" => {
            match error.message.trim() {
                "" | "None" => 0,
                code => code.parse().unwrap_or(1),
            }
        }
        _ => 1,
    }
}

/// The reply for the outcome of [`program`] run under `limits`.
pub fn response(outcome: &Outcome, limits: Limits) -> RunCodeResponse {
    let mut stderr = outcome.stderr.clone();
    let note = match outcome.status {
        Status::MemoryLimit => Some(format!(
            "MemoryError: the program went over its memory limit of {} MiB",
            limits.memory_mib
        )),
        Status::OutputLimit => Some(format!(
            "coe: the program wrote more than {} bytes of output and was stopped",
            limits.output_bytes
        )),
        _ => None,
    };
    if let Some(note) = note {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&note);
        stderr.push('\n');
    }
    let (status, return_code) = if outcome.status == Status::Timeout {
        (CommandStatus::TimeLimitExceeded, None)
    } else {
        (CommandStatus::Finished, Some(exit_code(outcome)))
    };
    let overall = if status == CommandStatus::Finished && return_code == Some(0) {
        RunStatus::Success
    } else {
        RunStatus::Failed
    };
    RunCodeResponse {
        status: overall,
        message: String::new(),
        compile_result: None,
        run_result: Some(CommandRunResult {
            status,
            execution_time: Some(outcome.elapsed_ms / 1000.0),
            return_code,
            stdout: Some(outcome.stdout.clone()),
            stderr: Some(stderr),
        }),
        executor_pod_name: pod_name(),
        files: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use coe_exec::ErrorInfo;

    use super::*;

    fn outcome(status: Status, error: Option<(&str, &str)>) -> Outcome {
        Outcome {
            status,
            tests: Vec::new(),
            error: error.map(|(type_name, message)| ErrorInfo {
                type_name: type_name.into(),
                message: message.into(),
                line: None,
            }),
            stdout: "out\n".into(),
            stderr: String::new(),
            elapsed_ms: 12.0,
        }
    }

    #[test]
    fn exit_codes_follow_python() {
        assert_eq!(exit_code(&outcome(Status::Passed, None)), 0);
        for (message, code) in [("", 0), ("None", 0), ("3", 3), ("-2", -2), ("bye", 1)] {
            let ended = outcome(Status::Error, Some(("SystemExit", message)));
            assert_eq!(exit_code(&ended), code, "SystemExit({message:?})");
        }
        assert_eq!(
            exit_code(&outcome(Status::Error, Some(("ValueError", "3")))),
            1
        );
        assert_eq!(exit_code(&outcome(Status::MemoryLimit, None)), 1);
    }

    #[test]
    fn statuses_follow_sandbox_fusion() {
        let limits = Limits::default();
        let ok = response(&outcome(Status::Passed, None), limits);
        assert_eq!(ok.status, RunStatus::Success);
        let run = ok.run_result.unwrap();
        assert_eq!(
            (run.status, run.return_code),
            (CommandStatus::Finished, Some(0))
        );
        assert_eq!(run.execution_time, Some(0.012));
        let raised = response(&outcome(Status::Error, Some(("KeyError", "k"))), limits);
        assert_eq!(raised.status, RunStatus::Failed);
        assert_eq!(raised.run_result.unwrap().return_code, Some(1));
        let stopped = response(&outcome(Status::Timeout, None), limits);
        assert_eq!(stopped.status, RunStatus::Failed);
        let run = stopped.run_result.unwrap();
        assert_eq!(
            (run.status, run.return_code),
            (CommandStatus::TimeLimitExceeded, None)
        );
        let memory = response(&outcome(Status::MemoryLimit, None), limits);
        let stderr = memory.run_result.unwrap().stderr.unwrap();
        assert!(stderr.starts_with("MemoryError"), "{stderr}");
    }

    #[test]
    fn limits_are_clamped_to_the_server() {
        let max = Limits {
            timeout_ms: 5_000,
            memory_mib: 512,
            output_bytes: 1024,
        };
        let mut request: RunCodeRequest =
            serde_json::from_str(r#"{"code": "", "language": "python"}"#).unwrap();
        assert_eq!(limits(&request, max), max);
        request.run_timeout = 0.25;
        request.memory_limit_mb = 64;
        assert_eq!(limits(&request, max).timeout_ms, 250);
        assert_eq!(limits(&request, max).memory_mib, 64);
        request.run_timeout = f64::NAN;
        request.memory_limit_mb = 1 << 40;
        assert_eq!(limits(&request, max).timeout_ms, 5_000);
        assert_eq!(limits(&request, max).memory_mib, 512);
    }

    #[test]
    fn only_python_without_files_runs() {
        let parse = |json: &str| serde_json::from_str::<RunCodeRequest>(json).unwrap();
        assert!(unsupported(&parse(r#"{"code": "", "language": "python"}"#)).is_none());
        let cpp = unsupported(&parse(r#"{"code": "", "language": "cpp"}"#)).unwrap();
        assert!(cpp.contains("Python only"), "{cpp}");
        let skipped = r#"{"code": "", "language": "python", "files": {"a.txt": null}}"#;
        assert!(unsupported(&parse(skipped)).is_none());
        let files = r#"{"code": "", "language": "python", "files": {"a.txt": "aGk="}}"#;
        assert!(unsupported(&parse(files)).unwrap().contains("a.txt"));
        let fetch = r#"{"code": "", "language": "python", "fetch_files": ["out"]}"#;
        assert!(unsupported(&parse(fetch)).is_some());
    }
}
