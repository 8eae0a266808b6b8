//! `coe exec-worker` behind `coe_exec_pool::ProcessPool` gives the outcomes of the in-process
//! sandbox, whatever the program does, and keeps working after programs that hit a limit.

use std::process::Command;
use std::sync::Arc;

use coe_exec::{ExecRequest, Executor, Limits, Outcome, Status};
use coe_exec_pool::ProcessPool;
use coe_sandbox::Sandbox;

fn pool(size: usize) -> ProcessPool {
    ProcessPool::new(size, || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coe"));
        command.arg("exec-worker");
        command
    })
    .unwrap()
}

/// An outcome without its wall time, which differs from run to run.
fn timeless(mut outcome: Outcome) -> Outcome {
    outcome.elapsed_ms = 0.0;
    outcome
}

const PROGRAMS: [(&str, Status); 7] = [
    ("def f(x):\n    return x + 1\n", Status::Passed),
    ("def f(x):\n    return x - 1\n", Status::Failed),
    (
        "def f(x):\n    raise ValueError('no')\nf(1)\n",
        Status::Error,
    ),
    ("def f(x)\n    return x\n", Status::SyntaxError),
    ("while True:\n    pass\n", Status::Timeout),
    ("s = 'a'\nwhile True:\n    s = s + s\n", Status::MemoryLimit),
    ("while True:\n    print('x' * 1000)\n", Status::OutputLimit),
];

#[test]
fn worker_processes_give_the_in_process_outcomes() {
    let sandbox = Sandbox::new(&Default::default()).unwrap();
    let pool = pool(2);
    let tests = vec!["assert f(1) == 2".to_owned(), "print(f(2))".to_owned()];
    let limits = Limits {
        timeout_ms: 500,
        memory_mib: 64,
        output_bytes: 4096,
    };
    for (program, status) in PROGRAMS {
        let request = ExecRequest {
            program,
            setup: "import math",
            tests: &tests,
            limits,
        };
        let here = timeless(sandbox.execute(&request).unwrap());
        let there = timeless(pool.execute(&request).unwrap());
        assert_eq!(here.status, status, "{program}");
        assert_eq!(there, here, "{program}");
    }
}

#[test]
fn parallel_callers_share_the_workers() {
    let pool = Arc::new(pool(2));
    let tests = vec!["assert f(1) == 2".to_owned()];
    std::thread::scope(|scope| {
        for thread in 0..3 {
            let pool = Arc::clone(&pool);
            let tests = &tests;
            scope.spawn(move || {
                for i in 0..6 {
                    let (program, status) = PROGRAMS[(thread + i) % 4];
                    let request = ExecRequest {
                        program,
                        setup: "",
                        tests,
                        limits: Limits::default(),
                    };
                    assert_eq!(pool.execute(&request).unwrap().status, status);
                }
            });
        }
    });
}
