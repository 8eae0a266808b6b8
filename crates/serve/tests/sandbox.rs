//! The service over the real sandbox: SandboxFusion's statuses for Python, hostile programs
//! under load next to good ones, and a Python standard-library client posting what verl posts.

mod common;

use std::sync::Arc;

use coe_sandbox::Sandbox;
use coe_serve::ServeConfig;
use common::Server;

fn server(workers: usize) -> Server {
    let sandbox = Sandbox::new(&Default::default()).expect("the sandbox starts");
    Server::start(
        Arc::new(sandbox),
        ServeConfig {
            workers,
            max_queue: 64,
            ..ServeConfig::default()
        },
    )
}

/// What verl's client posts for one test case (all eight keys, timeouts in seconds).
fn verl_request(code: &str, stdin: Option<&str>, run_timeout: f64) -> String {
    request_with_memory(code, stdin, run_timeout, 1024)
}

/// [`verl_request`] with another memory limit in MB.
fn request_with_memory(
    code: &str,
    stdin: Option<&str>,
    run_timeout: f64,
    memory_mb: u64,
) -> String {
    serde_json::json!({
        "compile_timeout": run_timeout,
        "run_timeout": run_timeout,
        "code": code,
        "stdin": stdin,
        "memory_limit_MB": memory_mb,
        "language": "python",
        "files": {},
        "fetch_files": [],
    })
    .to_string()
}

#[test]
fn run_code_gives_sandbox_fusion_statuses() {
    let server = server(2);
    let run = |code: &str, stdin: Option<&str>, timeout: f64| {
        let (status, _, reply) = server.post("/run_code", &verl_request(code, stdin, timeout));
        assert_eq!(status, 200, "{reply}");
        reply
    };
    let sum = run(
        "a, b = map(int, input().split())\nprint(a + b)\n",
        Some("1 2"),
        10.0,
    );
    assert_eq!(sum["status"], "Success", "{sum}");
    assert_eq!(sum["run_result"]["status"], "Finished");
    assert_eq!(sum["run_result"]["return_code"], 0);
    assert_eq!(sum["run_result"]["stdout"], "3\n");
    assert_eq!(sum["run_result"]["stderr"], "");
    assert!(sum["compile_result"].is_null());
    assert!(sum["run_result"]["execution_time"].as_f64().unwrap() > 0.0);
    // Programs that read bytes find them under sys.stdin.buffer.
    let bytes = run(
        "import sys\nprint(sys.stdin.buffer.readline().decode().strip()[::-1])",
        Some("abc\n"),
        10.0,
    );
    assert_eq!(bytes["run_result"]["stdout"], "cba\n", "{bytes}");
    // Any text survives the trip into the program: line separators, quotes, backslashes.
    let odd = run(
        "s = '\u{2028}\\\\'\nprint(len(s), repr('\"\"\"'))  # \\",
        None,
        10.0,
    );
    assert_eq!(odd["run_result"]["stdout"], "2 '\"\"\"'\n", "{odd}");
    // Reading past the end of stdin is an EOFError, as in CPython.
    let eof = run("input()\n", None, 10.0);
    assert!(
        eof["run_result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("EOFError"),
        "{eof}"
    );
    // An uncaught exception: exit code 1 and a traceback that points at the program's line.
    let raised = run("x = 1\nprint('before')\ny = x / 0\n", None, 10.0);
    assert_eq!(raised["status"], "Failed");
    assert_eq!(raised["run_result"]["status"], "Finished");
    assert_eq!(raised["run_result"]["return_code"], 1);
    assert_eq!(raised["run_result"]["stdout"], "before\n");
    let stderr = raised["run_result"]["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("Traceback (most recent call last):"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("ZeroDivisionError: division by zero"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("__coe_run"),
        "the wrapper's frame shows: {stderr}"
    );
    // sys.exit's code is the exit code; a message goes to stderr with code 1.
    for (code, expected) in [
        ("import sys\nsys.exit(3)", 3),
        ("import sys\nsys.exit(0)", 0),
        ("raise SystemExit", 0),
        ("import sys\nsys.exit(False)", 0),
        ("import sys\nsys.exit(256)", 0),
        ("import sys\nsys.exit(-2)", 254),
        ("import sys\nsys.exit('3')", 1),
    ] {
        let reply = run(code, None, 10.0);
        assert_eq!(
            reply["run_result"]["return_code"], expected,
            "{code}: {reply}"
        );
        let overall = if expected == 0 { "Success" } else { "Failed" };
        assert_eq!(reply["status"], overall, "{code}");
    }
    let message = run("import sys\nsys.exit('bye')", None, 10.0);
    assert_eq!(message["run_result"]["return_code"], 1);
    assert_eq!(message["run_result"]["stderr"], "bye\n");
    // A syntax error is a failed run with the error on stderr.
    let syntax = run("def f(:\n    pass\n", None, 10.0);
    assert_eq!(
        (
            syntax["status"].as_str(),
            syntax["run_result"]["return_code"].as_i64()
        ),
        (Some("Failed"), Some(1))
    );
    assert!(
        syntax["run_result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("SyntaxError"),
        "{syntax}"
    );
    // What the program writes to stderr itself is kept.
    let warned = run(
        "import sys\nprint('careful', file=sys.stderr)\nprint('ok')",
        None,
        10.0,
    );
    assert_eq!(warned["status"], "Success");
    assert_eq!(warned["run_result"]["stderr"], "careful\n");
    let partial = run("import sys\nsys.stderr.write('no newline')", None, 10.0);
    assert_eq!(partial["run_result"]["stderr"], "no newline", "{partial}");
    // `if __name__ == "__main__"` runs, as with `python file.py`.
    let main = run(
        "if __name__ == '__main__':\n    print('main')\n",
        None,
        10.0,
    );
    assert_eq!(main["run_result"]["stdout"], "main\n");
    // The time limit: TimeLimitExceeded, no exit code, overall Failed.
    let endless = run("while True:\n    pass\n", None, 0.3);
    assert_eq!(endless["status"], "Failed");
    assert_eq!(endless["run_result"]["status"], "TimeLimitExceeded");
    assert!(endless["run_result"]["return_code"].is_null());
}

/// A hostile program's request: 64 MB, so a memory bomb meets its memory limit well before its
/// time limit even in a slow build.
fn hostile_request(code: &str) -> String {
    request_with_memory(code, None, 1.0, 64)
}

#[test]
fn hostile_programs_under_load_harm_no_other_request() {
    let server = Arc::new(server(2));
    let hostile = [
        ("while True:\n    pass\n", "TimeLimitExceeded"),
        ("x = 'a' * 10\nwhile True:\n    x = x + x\n", "Finished"),
        ("while True:\n    print('flood' * 1000)\n", "Finished"),
        ("print(open('/etc/passwd').read())\n", "Finished"),
        (
            "import os\nprint(os.environ.get('HOME'), os.listdir('/'))\n",
            "Finished",
        ),
        ("import subprocess\nsubprocess.run(['ls'])\n", "Finished"),
        (
            "import socket\nsocket.create_connection(('127.0.0.1', 80))\n",
            "Finished",
        ),
    ];
    let mut threads = Vec::new();
    for round in 0..3 {
        for (code, _) in hostile {
            let server = server.clone();
            threads.push(std::thread::spawn(move || {
                let (status, _, reply) = server.post("/run_code", &hostile_request(code));
                (None, status, reply)
            }));
        }
        for i in 0..6 {
            let server = server.clone();
            let n = round * 10 + i;
            threads.push(std::thread::spawn(move || {
                let code = "n = int(input())\nprint(sum(range(n)))\n";
                let body = verl_request(code, Some(&n.to_string()), 10.0);
                let (status, _, reply) = server.post("/run_code", &body);
                (Some((0..n).sum::<usize>()), status, reply)
            }));
        }
    }
    for thread in threads {
        let (expected, status, reply) = thread.join().unwrap();
        assert_eq!(status, 200, "{reply}");
        match expected {
            Some(sum) => {
                assert_eq!(reply["status"], "Success", "{reply}");
                assert_eq!(reply["run_result"]["stdout"], format!("{sum}\n"));
            }
            None => {
                // Contained: a failed run of its own, never a host's file, variable or process.
                assert_eq!(reply["status"], "Failed", "{reply}");
                let stdout = reply["run_result"]["stdout"].as_str().unwrap();
                assert!(!stdout.contains("root:"), "{stdout}");
                assert!(!stdout.contains("/root"), "{stdout}");
            }
        }
    }
    for (code, status) in hostile {
        let (_, _, reply) = server.post("/run_code", &hostile_request(code));
        assert_eq!(reply["run_result"]["status"], status, "{code}: {reply}");
    }
}

/// The reply parsed as verl's `_process_single_case` does: pass when `status` is Success,
/// `run_result.status` Finished and stdout matches once trailing newlines are stripped.
const VERL_CLIENT: &str = r#"
import json, sys, urllib.request

url = sys.argv[1]
cases = [("a,b=map(int,input().split())\nprint(a+b)\n\n", "1 2", "3", True),
         ("print(int(input()) * 2)\n\n", "21", "41", False),
         ("raise ValueError('no')\n\n", "", None, "runtime_error")]
for code, stdin, expected, verdict in cases:
    payload = {"compile_timeout": 10, "run_timeout": 10, "code": code, "stdin": stdin,
               "memory_limit_MB": 1024, "language": "python", "files": {}, "fetch_files": []}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read().decode())
    run = reply.get("run_result") or {}
    if reply.get("status") == "Success" and run.get("status") == "Finished":
        got = str(run.get("stdout") or "").rstrip("\n") == str(expected).rstrip("\n")
    elif reply.get("status") == "Failed" and run.get("status") == "Finished" and run.get("return_code") != 0:
        got = "runtime_error"
    else:
        got = "unexpected: " + json.dumps(reply)
    # The tool path concatenates both streams: they must be strings.
    _ = run["stdout"] + run["stderr"]
    assert got == verdict, (code, got, reply)
print("verl-client-ok")
"#;

#[test]
fn a_python_client_posting_what_verl_posts_reads_the_replies() {
    let server = server(1);
    let output = std::process::Command::new("python3")
        .args(["-c", VERL_CLIENT, &server.url("/run_code")])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("verl-client-ok"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
