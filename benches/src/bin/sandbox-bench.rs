//! The sandbox's throughput and latency against CPython started per run, side by side, printed
//! as a Markdown table. `cargo xtask bench sandbox` builds and runs it.
//!
//! Usage: `sandbox-bench [--rounds N] [--memory-runs N] [--coe PATH]`

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use coe_benches::{cpython, mbpp, percentile, resident_kib};
use coe_exec::{ExecRequest, Limits, Status};
use coe_sandbox::{Sandbox, SandboxConfig, Timings};
use coe_tool_state::Task;

struct Args {
    rounds: usize,
    memory_runs: usize,
    coe: Option<PathBuf>,
    pooling: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rounds: 3,
        memory_runs: 100_000,
        coe: None,
        pooling: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => args.rounds = value()?.parse()?,
            "--memory-runs" => args.memory_runs = value()?.parse()?,
            "--coe" => args.coe = Some(PathBuf::from(value()?)),
            "--pooling" => args.pooling = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn request<'a>(task: &'a Task) -> ExecRequest<'a> {
    ExecRequest {
        program: &task.code,
        setup: task.setup(),
        tests: &task.tests,
        limits: Limits::default(),
    }
}

/// Runs every task `rounds` times on `threads` threads; returns runs per second and timings.
fn sandbox_throughput(
    sandbox: &Sandbox,
    tasks: &[Task],
    rounds: usize,
    threads: usize,
) -> Result<(f64, Vec<Timings>)> {
    let total = tasks.len() * rounds;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let timings = std::thread::scope(|scope| -> Result<Vec<Timings>> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Timings>> {
                    let mut timings = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= total {
                            return Ok(timings);
                        }
                        let report = sandbox.run(&request(&tasks[index % tasks.len()]))?;
                        timings.push(report.timings);
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))??,
            );
        }
        Ok(all)
    })?;
    Ok((total as f64 / started.elapsed().as_secs_f64(), timings))
}

fn cpython_throughput(python: &PathBuf, tasks: &[Task], threads: usize) -> Result<(f64, Vec<f64>)> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| -> Result<Vec<f64>> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<f64>> {
                    let mut latencies = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = tasks.get(index) else {
                            return Ok(latencies);
                        };
                        let (_, elapsed) = cpython::run(
                            python,
                            task.setup(),
                            &task.code,
                            &task.tests,
                            Duration::from_secs(10),
                        )?;
                        latencies.push(elapsed.as_secs_f64() * 1e3);
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))??,
            );
        }
        Ok(all)
    })?;
    Ok((
        tasks.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
    ))
}

fn millis(values: impl Iterator<Item = Duration>) -> Vec<f64> {
    let mut values: Vec<f64> = values.map(|d| d.as_secs_f64() * 1e3).collect();
    values.sort_by(f64::total_cmp);
    values
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let tasks = mbpp()?;
    let python = cpython::interpreter()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("# coe sandbox benchmark\n");
    println!(
        "MBPP reference programs with their tests ({} tasks); CPython baseline: `{} -I -S -c` per run; {cores} cores.\n",
        tasks.len(),
        python.display()
    );

    // One-off preparation, into an empty cache, then the cached load.
    let cache = std::env::temp_dir().join(format!("coe-bench-cache-{}", std::process::id()));
    let config = SandboxConfig {
        cache_dir: Some(cache.clone()),
        pooling: args.pooling,
    };
    let fresh = Sandbox::new(&config)?;
    let compile_and_snapshot = fresh.prepare_time();
    drop(fresh);
    let sandbox = Sandbox::new(&config)?;
    let cached_load = sandbox.prepare_time();
    let first_run_started = Instant::now();
    sandbox.run(&request(&tasks[0]))?;
    let first_run = first_run_started.elapsed();

    // Outcomes must agree with expectations before timing means anything.
    let passed = tasks
        .iter()
        .filter(|task| {
            sandbox
                .run(&request(task))
                .is_ok_and(|report| report.outcome.status == Status::Passed)
        })
        .count();

    let (sandbox_one, timings) = sandbox_throughput(&sandbox, &tasks, args.rounds, 1)?;
    let (sandbox_all, _) = sandbox_throughput(&sandbox, &tasks, args.rounds, cores)?;
    let (cpython_one, cpython_latency) = cpython_throughput(&python, &tasks, 1)?;
    let (cpython_all, _) = cpython_throughput(&python, &tasks, cores)?;
    let mut cpython_latency = cpython_latency;
    cpython_latency.sort_by(f64::total_cmp);

    println!("| measure | coe sandbox | CPython subprocess | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| runs/s, 1 core | {sandbox_one:.0} | {cpython_one:.1} | {:.1}x |",
        sandbox_one / cpython_one
    );
    println!(
        "| runs/s, {cores} cores | {sandbox_all:.0} | {cpython_all:.1} | {:.1}x |",
        sandbox_all / cpython_all
    );
    let total = millis(timings.iter().map(|t| t.total));
    println!(
        "| latency p50 / p90 / p99 (ms) | {:.3} / {:.3} / {:.3} | {:.2} / {:.2} / {:.2} | {:.1}x (p50) |",
        percentile(&total, 50.0),
        percentile(&total, 90.0),
        percentile(&total, 99.0),
        percentile(&cpython_latency, 50.0),
        percentile(&cpython_latency, 90.0),
        percentile(&cpython_latency, 99.0),
        percentile(&cpython_latency, 50.0) / percentile(&total, 50.0)
    );
    println!("\nPer-run latency split (sandbox, 1 core, ms):\n");
    println!("| phase | p50 | p90 | p99 |");
    println!("|---|---:|---:|---:|");
    for (name, values) in [
        ("instantiate", millis(timings.iter().map(|t| t.instantiate))),
        (
            "request + setup + program",
            millis(timings.iter().map(|t| t.program)),
        ),
        ("tests", millis(timings.iter().map(|t| t.tests))),
        ("total", total.clone()),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            percentile(&values, 50.0),
            percentile(&values, 90.0),
            percentile(&values, 99.0)
        );
    }
    println!("\nOne-off and start-up costs:\n");
    println!("| what | time |");
    println!("|---|---:|");
    println!(
        "| compile + snapshot (empty cache, once) | {:.1} s |",
        compile_and_snapshot.as_secs_f64()
    );
    println!(
        "| load the cached module (`Sandbox::new`) | {:.1} ms |",
        cached_load.as_secs_f64() * 1e3
    );
    println!(
        "| first run in a fresh sandbox | {:.2} ms |",
        first_run.as_secs_f64() * 1e3
    );
    if let Some(coe) = &args.coe {
        let program = std::env::temp_dir().join(format!("coe-bench-{}.py", std::process::id()));
        std::fs::write(&program, &tasks[1].code)?;
        let mut starts = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let status = Command::new(coe)
                .arg("run")
                .arg(&program)
                .args(tasks[1].tests.iter().flat_map(|t| ["--test", t.as_str()]))
                .arg("--json")
                .output()?;
            if !status.status.success() {
                bail!("{} run failed", coe.display());
            }
            starts.push(started.elapsed().as_secs_f64() * 1e3);
        }
        starts.sort_by(f64::total_cmp);
        println!(
            "| cold process: `coe run` of an MBPP task, whole process (median of 20) | {:.1} ms |",
            percentile(&starts, 50.0)
        );
        let _ = std::fs::remove_file(program);
    }
    println!(
        "\nMBPP references passing in the sandbox: {passed} / {}",
        tasks.len()
    );

    if args.memory_runs > 0 {
        let before = resident_kib().unwrap_or(0);
        sandbox_throughput(
            &sandbox,
            &tasks,
            args.memory_runs.div_ceil(tasks.len()),
            cores,
        )?;
        let after = resident_kib().unwrap_or(0);
        println!(
            "\nHost memory over {} runs: resident set {:.1} MiB before, {:.1} MiB after.",
            args.memory_runs.div_ceil(tasks.len()) * tasks.len(),
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}
