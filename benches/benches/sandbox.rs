//! One MBPP task (a reference solution and its three asserts), run in the sandbox and in a
//! CPython process started for the run, side by side; an empty run (instantiation cost); and
//! 200 MBPP references on 1 and 2 workers, as threads sharing one sandbox and (when `COE_BIN`
//! names a `coe` binary) as `coe check` worker processes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coe_benches::{cpython, mbpp, passed_outcomes, write_task_file};
use coe_exec::{ExecRequest, Executor, Limits};
use coe_exec_pool::ProcessPool;
use coe_sandbox::Sandbox;
use coe_tool_state::Task;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn sandbox_vs_cpython(c: &mut Criterion) {
    let tasks = mbpp().expect("MBPP fixtures load");
    let task = tasks
        .iter()
        .find(|t| t.task_id == "mbpp/2")
        .expect("MBPP task 2");
    let sandbox = Sandbox::new(&Default::default()).expect("the sandbox starts");
    let python = cpython::interpreter().expect("python3 is installed");
    let request = task.request(&task.code, Limits::default());

    let mut group = c.benchmark_group("mbpp_task");
    group.bench_function("coe_sandbox", |b| {
        b.iter(|| sandbox.run(&request).expect("runs"));
    });
    group.sample_size(30);
    group.bench_function("cpython_subprocess", |b| {
        b.iter(|| {
            cpython::run(
                &python,
                task.setup(),
                &task.code,
                &task.tests,
                Duration::from_secs(10),
            )
            .expect("runs")
        });
    });
    group.finish();

    let empty: Vec<String> = Vec::new();
    c.bench_function("sandbox_empty_run", |b| {
        b.iter(|| {
            sandbox
                .run(&ExecRequest {
                    program: "",
                    setup: "",
                    tests: &empty,
                    limits: Limits::default(),
                })
                .expect("runs")
        });
    });
}

/// Runs every task on a pool of `workers` threads sharing `sandbox`.
/// Runs every task on `workers` threads calling `executor` (the sandbox itself, or a pool of
/// worker processes that the threads hand their runs to).
fn run_on_threads(executor: &(impl Executor + Sync), tasks: &[Task], workers: usize) {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        tasks.par_iter().for_each(|task| {
            executor
                .execute(&task.request(&task.code, Limits::default()))
                .expect("runs");
        });
    });
}

/// Runs the task file with `coe check --jobs N --parallel processes` and checks every task passed.
fn run_on_processes(coe: &Path, file: &Path, tasks: usize, workers: usize) {
    let output = Command::new(coe)
        .args([
            "check",
            "--parallel",
            "processes",
            "--jobs",
            &workers.to_string(),
        ])
        .arg(file)
        .output()
        .expect("coe check starts");
    assert_eq!(
        passed_outcomes(&String::from_utf8_lossy(&output.stdout)),
        tasks,
        "every reference passes"
    );
}

fn workers(c: &mut Criterion) {
    let tasks: Vec<Task> = mbpp()
        .expect("MBPP fixtures load")
        .into_iter()
        .filter(|task| task.task_id != "mbpp/123")
        .take(200)
        .collect();
    let sandbox = Sandbox::new(&Default::default()).expect("the sandbox starts");
    let mut group = c.benchmark_group("mbpp_200_workers");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tasks.len() as u64));
    for workers in [1, 2] {
        group.bench_function(format!("threads_{workers}"), |b| {
            b.iter(|| run_on_threads(&sandbox, &tasks, workers));
        });
    }
    // The process pool is `coe check`'s; it needs the binary (`COE_BIN`), which a criterion
    // bench of this crate cannot build.
    if let Some(coe) = std::env::var_os("COE_BIN") {
        // The `Executor` pool of `coe serve`, rollouts and the data generator: long-lived
        // `coe exec-worker` processes, started once.
        for workers in [1, 2] {
            let coe = coe.clone();
            let pool = ProcessPool::new(workers, move || {
                let mut command = Command::new(&coe);
                command.arg("exec-worker");
                command
            })
            .expect("the worker processes start");
            group.bench_function(format!("executor_pool_{workers}"), |b| {
                b.iter(|| run_on_threads(&pool, &tasks, workers));
            });
        }
        let file = write_task_file(&tasks, "coe-criterion-workers").expect("a task file");
        for workers in [1, 2] {
            group.bench_function(format!("processes_{workers}"), |b| {
                b.iter(|| run_on_processes(Path::new(&coe), &file, tasks.len(), workers));
            });
        }
        let _ = std::fs::remove_file(file);
    }
    group.finish();
}

criterion_group!(benches, sandbox_vs_cpython, workers);
criterion_main!(benches);
