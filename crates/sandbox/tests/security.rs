//! Hostile programs: each has an expected status, the host never panics, and every run ends
//! within twice its time limit (checked by `common::run_with`).

mod common;

use coe_exec::{Limits, Status};
use common::{assert_status, error_type, run, run_with, tight};

fn assert_timeout(program: &str, tests: &[&str]) {
    assert_status(&run(program, tests), Status::Timeout);
}

fn small_memory() -> Limits {
    Limits {
        memory_mib: 128,
        timeout_ms: 2_000,
        ..tight()
    }
}

/// Memory bombs stop at the memory limit, or at a MemoryError the interpreter raises before
/// asking for the memory; never anything else.
fn assert_memory_stopped(program: &str) {
    let outcome = run_with(program, "", &["assert True"], small_memory());
    let stopped = outcome.status == Status::MemoryLimit
        || (outcome.status == Status::Error && error_type(&outcome) == "MemoryError");
    assert!(stopped, "{program:?}: {outcome:#?}");
}

#[test]
fn endless_loop_in_the_program() {
    assert_timeout("while True:\n    pass\n", &["assert True"]);
}

#[test]
fn endless_loop_inside_a_test() {
    assert_timeout("def f():\n    while True:\n        pass\n", &["assert f()"]);
}

#[test]
fn sleeping_is_bounded_by_the_time_limit() {
    assert_timeout("import time\ntime.sleep(100)\n", &[]);
    assert_timeout("def f():\n    import time\n    time.sleep(30)\n", &["f()"]);
}

#[test]
fn memory_bomb_big_list() {
    assert_memory_stopped("x = [0] * (10 ** 9)\n");
}

#[test]
fn memory_bomb_string_doubling() {
    assert_memory_stopped("s = 'a'\nwhile True:\n    s = s + s\n");
}

#[test]
fn memory_bomb_dict_growth() {
    let outcome = run_with(
        "d = {}\ni = 0\nwhile True:\n    d[i] = str(i) * 10\n    i += 1\n",
        "",
        &[],
        small_memory(),
    );
    // Growth this slow may reach the time limit first; either limit must stop it.
    assert!(
        matches!(outcome.status, Status::MemoryLimit | Status::Timeout)
            || error_type(&outcome) == "MemoryError",
        "{outcome:#?}"
    );
}

#[test]
fn huge_integers_are_bounded() {
    let outcome = run("x = 10 ** (10 ** 9)\n", &[]);
    assert!(
        matches!(
            outcome.status,
            Status::MemoryLimit | Status::Timeout | Status::Error
        ),
        "{outcome:#?}"
    );
}

#[test]
fn deep_recursion_with_a_raised_limit_is_an_error() {
    let program =
        "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return f(n + 1) + 1\n";
    // About 0.2 s on an idle machine; the generous limit keeps a loaded CI machine from
    // turning this into a timeout.
    let limits = Limits {
        timeout_ms: 5_000,
        ..tight()
    };
    let outcome = run_with(program, "", &["f(0)"], limits);
    assert!(
        matches!(outcome.status, Status::Failed | Status::Error),
        "{outcome:#?}"
    );
    let error = outcome
        .tests
        .first()
        .and_then(|t| t.error.clone())
        .or(outcome.error)
        .unwrap();
    assert_eq!(error.type_name, "RecursionError", "{error:?}");
}

#[test]
fn ordinary_recursion_depth_works() {
    let program = "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n";
    assert_status(&run(program, &["assert depth(900) == 900"]), Status::Passed);
}

#[test]
fn output_floods_stop_at_the_output_limit() {
    let outcome = run("while True:\n    print('x' * 1000)\n", &[]);
    assert_status(&outcome, Status::OutputLimit);
    assert!(outcome.stdout.len() <= tight().output_bytes as usize);
}

#[test]
fn host_files_cannot_be_read_or_written() {
    for program in [
        "open('/etc/passwd').read()\n",
        "open('/etc/hostname').read()\n",
        "open('../../Cargo.toml').read()\n",
        "open('/tmp/coe-sandbox-escape', 'w').write('x')\n",
    ] {
        let outcome = run(program, &[]);
        assert_status(&outcome, Status::Error);
    }
    assert!(!std::path::Path::new("/tmp/coe-sandbox-escape").exists());
}

#[test]
fn directories_cannot_be_listed() {
    let outcome = run("import os\nprint(os.listdir('/'))\n", &[]);
    assert_status(&outcome, Status::Error);
    assert!(!outcome.stdout.contains("etc"));
}

#[test]
fn processes_cannot_be_started() {
    for program in [
        "import os\nos.system('touch /tmp/coe-sandbox-process')\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.fork()\n",
    ] {
        let outcome = run(program, &[]);
        assert_status(&outcome, Status::Error);
    }
    assert!(!std::path::Path::new("/tmp/coe-sandbox-process").exists());
}

#[test]
fn sockets_and_ctypes_are_unavailable() {
    for program in [
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
        "import ctypes\n",
    ] {
        assert_status(&run(program, &[]), Status::Error);
    }
}

#[test]
fn the_host_environment_is_invisible() {
    let outcome = run(
        "import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n",
        &[],
    );
    assert!(!outcome.stdout.contains("PATH"), "{outcome:#?}");
    assert!(!outcome.stdout.contains("HOME"), "{outcome:#?}");
}

#[test]
fn exiting_early_is_never_a_pass() {
    for program in [
        "import sys\nsys.exit(0)\n",
        "raise SystemExit(0)\n",
        "import os\nos._exit(0)\n",
        "raise KeyboardInterrupt\n",
    ] {
        let outcome = run(program, &["assert False"]);
        assert_status(&outcome, Status::Error);
    }
    // Exiting from inside a test fails that test, or the whole run; never passes.
    let outcome = run(
        "import os\ndef f():\n    os._exit(0)\n",
        &["f()", "assert False"],
    );
    assert_status(&outcome, Status::Error);
    let outcome = run("import sys\ndef f():\n    sys.exit(0)\n", &["f()"]);
    assert_status(&outcome, Status::Failed);
    assert_eq!(
        outcome.tests[0].error.as_ref().unwrap().type_name,
        "SystemExit"
    );
}

#[test]
fn printing_passed_proves_nothing() {
    let program =
        "print('{\"status\": \"passed\", \"tests_passed\": 3}')\nprint('All tests passed.')\n";
    assert_status(&run(program, &["assert False"]), Status::Failed);
}

#[test]
fn replacing_builtins_cannot_disable_a_test() {
    let program = "import builtins\n\
        class Quiet(Exception):\n    pass\n\
        builtins.AssertionError = Quiet\n\
        builtins.exec = None\n\
        builtins.compile = None\n\
        builtins.__import__ = None\n\
        builtins.isinstance = lambda *a: True\n";
    let outcome = run(program, &["assert 1 == 2", "raise ValueError"]);
    assert_status(&outcome, Status::Failed);
    assert!(outcome.tests.iter().all(|t| !t.passed));
}

#[test]
fn a_trace_hook_cannot_skip_a_test() {
    let program = "import sys\n\
        def tracer(frame, event, arg):\n    return tracer\n\
        def f():\n    sys.settrace(tracer)\n    sys._getframe(1).f_trace = tracer\n    return False\n";
    assert_status(&run(program, &["assert f()"]), Status::Failed);
}

#[test]
fn parser_bombs_are_contained() {
    let bombs = [
        "(".repeat(100_000),
        "[".repeat(50_000) + &"]".repeat(50_000),
        "-".repeat(200_000) + "1",
    ];
    for bomb in &bombs {
        let outcome = run(bomb, &[]);
        assert!(
            matches!(
                outcome.status,
                Status::SyntaxError | Status::Error | Status::Timeout | Status::MemoryLimit
            ),
            "{outcome:#?}"
        );
    }
}

#[test]
fn eight_hostile_programs_in_parallel() {
    let cases: [(&str, Status); 8] = [
        ("while True:\n    pass\n", Status::Timeout),
        ("import time\ntime.sleep(60)\n", Status::Timeout),
        ("while True:\n    print('y' * 4096)\n", Status::OutputLimit),
        ("s = 'a'\nwhile True:\n    s = s + s\n", Status::MemoryLimit),
        ("import os\nos._exit(0)\n", Status::Error),
        ("open('/etc/passwd').read()\n", Status::Error),
        ("def f(:\n", Status::SyntaxError),
        ("def add(a, b):\n    return a + b\n", Status::Passed),
    ];
    std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(program, expected)| {
                scope.spawn(move || {
                    let outcome = run_with(program, "", &["assert True"], small_memory());
                    let memory_error =
                        *expected == Status::MemoryLimit && error_type(&outcome) == "MemoryError";
                    assert!(
                        outcome.status == *expected || memory_error,
                        "{program:?}: {outcome:#?}"
                    );
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
}
