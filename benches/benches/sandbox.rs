//! One MBPP task (a reference solution and its three asserts), run in the sandbox and in a
//! CPython process started for the run, side by side; plus an empty run (instantiation cost).

use std::time::Duration;

use coe_benches::{cpython, mbpp};
use coe_exec::{ExecRequest, Limits};
use coe_sandbox::Sandbox;
use criterion::{Criterion, criterion_group, criterion_main};

fn sandbox_vs_cpython(c: &mut Criterion) {
    let tasks = mbpp().expect("MBPP fixtures load");
    let task = tasks
        .iter()
        .find(|t| t.task_id == "mbpp/2")
        .expect("MBPP task 2");
    let sandbox = Sandbox::new(&Default::default()).expect("the sandbox starts");
    let python = cpython::interpreter().expect("python3 is installed");
    let request = ExecRequest {
        program: &task.code,
        setup: task.setup(),
        tests: &task.tests,
        limits: Limits::default(),
    };

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

criterion_group!(benches, sandbox_vs_cpython);
criterion_main!(benches);
