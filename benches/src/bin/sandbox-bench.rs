//! The sandbox's throughput and latency against CPython started per run, side by side, printed
//! as a Markdown table. `cargo xtask bench sandbox` builds and runs it.
//!
//! Usage: `sandbox-bench [--rounds N] [--memory-runs N] [--coe PATH] [--pooling | --no-pooling]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use coe_benches::{
    at_least_one, cpython, mbpp, passed_outcomes, percentile, resident_kib, rotated_medians,
    write_task_file,
};
use coe_exec::{ExecRequest, Limits, Status};
use coe_sandbox::{Sandbox, SandboxConfig, Timings};
use coe_tool_state::Task;

/// Sandbox throughput and latency against CPython, and memory over many runs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Rounds, alternating the engines.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    rounds: usize,
    /// Runs in the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    memory_runs: usize,
    /// A `coe` binary, to measure `coe check` as a whole process too.
    #[arg(long)]
    coe: Option<PathBuf>,
    /// Pool instances (the default of SandboxConfig).
    #[arg(long, overrides_with = "no_pooling")]
    pooling: bool,
    /// Instantiate each run afresh.
    #[arg(long, overrides_with = "pooling")]
    no_pooling: bool,
}

impl Args {
    /// Whether instances are pooled: the last of `--pooling`/`--no-pooling`, else the default.
    fn pooling(&self) -> bool {
        match (self.pooling, self.no_pooling) {
            (true, _) => true,
            (_, true) => false,
            _ => SandboxConfig::default().pooling,
        }
    }

    fn config(&self, cache_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            cache_dir: Some(cache_dir),
            pooling: self.pooling(),
        }
    }
}

fn request(task: &Task) -> ExecRequest<'_> {
    task.request(&task.code, Limits::default())
}

/// Runs `work` for every index below `count` on `threads` threads; returns the results and
/// the rate per second.
fn timed_parallel<R: Send>(
    count: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<R> + Sync + Send,
) -> Result<(f64, Vec<R>)> {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let started = Instant::now();
    let results = pool.install(|| {
        (0..count)
            .into_par_iter()
            .map(work)
            .collect::<Result<Vec<R>>>()
    })?;
    Ok((count as f64 / started.elapsed().as_secs_f64(), results))
}

/// Runs every task `rounds` times; returns runs per second and the timings.
fn sandbox_throughput(
    sandbox: &Sandbox,
    tasks: &[Task],
    rounds: usize,
    threads: usize,
) -> Result<(f64, Vec<Timings>)> {
    timed_parallel(tasks.len() * rounds, threads, |index| {
        Ok(sandbox.run(&request(&tasks[index % tasks.len()]))?.timings)
    })
}

/// Runs every task once in a fresh CPython process; returns runs per second and latencies (ms).
fn cpython_throughput(python: &PathBuf, tasks: &[Task], threads: usize) -> Result<(f64, Vec<f64>)> {
    timed_parallel(tasks.len(), threads, |index| {
        let task = &tasks[index];
        let (_, elapsed) = cpython::run(
            python,
            task.setup(),
            &task.code,
            &task.tests,
            Duration::from_secs(10),
        )?;
        Ok(elapsed.as_secs_f64() * 1e3)
    })
}

fn millis(values: impl Iterator<Item = Duration>) -> Vec<f64> {
    let mut values: Vec<f64> = values.map(|d| d.as_secs_f64() * 1e3).collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Runs/s of `coe check` (whole process) over `file` with `jobs` workers run as `parallel`.
fn check_rate(coe: &Path, file: &Path, runs: usize, jobs: usize, parallel: &str) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(coe)
        .args(["check", "--jobs", &jobs.to_string(), "--parallel", parallel])
        .arg(file)
        .output()?;
    let elapsed = started.elapsed().as_secs_f64();
    let passed = passed_outcomes(&String::from_utf8_lossy(&output.stdout));
    if !output.status.success() || passed != runs {
        bail!("coe check --jobs {jobs} --parallel {parallel}: {passed} of {runs} runs passed");
    }
    Ok(runs as f64 / elapsed)
}

/// `coe check` with 1 worker, and with one per core as threads of one process and as worker
/// processes, over the same runs, rotated each round; prints the medians and the scaling.
fn workers_table(coe: &Path, tasks: &[Task], rounds: usize, cores: usize) -> Result<()> {
    let runs: Vec<Task> = (0..rounds).flat_map(|_| tasks.iter().cloned()).collect();
    let file = write_task_file(&runs, "coe-sandbox-bench")?;
    let settings = [(1, "processes"), (cores, "threads"), (cores, "processes")];
    let medians = rotated_medians(3, settings.len(), |which| {
        let (jobs, parallel) = settings[which];
        check_rate(coe, &file, runs.len(), jobs, parallel)
    })?;
    let _ = std::fs::remove_file(&file);
    println!(
        "\nWorkers: `coe check` over {} runs of the passing tasks, whole process, median of 3 (order rotated):\n",
        runs.len()
    );
    println!("| workers | runs/s | vs 1 worker |");
    println!("|---|---:|---:|");
    for ((jobs, parallel), median) in settings.iter().zip(&medians) {
        println!(
            "| `--jobs {jobs} --parallel {parallel}` | {median:.0} | {:.2}x |",
            median / medians[0]
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tasks = mbpp()?;
    let python = cpython::interpreter()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("# coe sandbox benchmark\n");
    println!(
        "Instance allocator: {}.\n",
        if args.pooling() {
            "pooling"
        } else {
            "on demand"
        }
    );
    println!(
        "MBPP reference programs with their tests ({} tasks); CPython baseline: `{} -I -S -c` per run; {cores} cores.\n",
        tasks.len(),
        python.display()
    );

    // One-off preparation, into an empty cache, then the cached load.
    let cache = std::env::temp_dir().join(format!("coe-bench-cache-{}", std::process::id()));
    let config = args.config(cache.clone());
    let fresh = Sandbox::new(&config)?;
    let compile_and_snapshot = fresh.prepare_time();
    drop(fresh);
    let sandbox = Sandbox::new(&config)?;
    let cached_load = sandbox.prepare_time();
    let first_run_started = Instant::now();
    sandbox.run(&request(&tasks[0]))?;
    let first_run = first_run_started.elapsed();

    // Outcomes must agree with expectations before timing means anything.
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in &tasks {
        statuses.push(sandbox.run(&request(task))?.outcome.status);
    }
    let passed = statuses.iter().filter(|s| **s == Status::Passed).count();
    // Tasks that hit the time limit in the sandbox dominate its total time; they are shown
    // separately so the typical task's speed is visible too.
    let within_limit: Vec<Task> = tasks
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| **status != Status::Timeout)
        .map(|(task, _)| task.clone())
        .collect();

    let (sandbox_one, timings) = sandbox_throughput(&sandbox, &tasks, args.rounds, 1)?;
    let (sandbox_all, _) = sandbox_throughput(&sandbox, &tasks, args.rounds, cores)?;
    let (typical_one, _) = sandbox_throughput(&sandbox, &within_limit, args.rounds, 1)?;
    let (typical_all, _) = sandbox_throughput(&sandbox, &within_limit, args.rounds, cores)?;
    let (cpython_one, cpython_latency) = cpython_throughput(&python, &tasks, 1)?;
    let (cpython_all, _) = cpython_throughput(&python, &tasks, cores)?;
    let (cpython_typical_one, _) = cpython_throughput(&python, &within_limit, 1)?;
    let (cpython_typical_all, _) = cpython_throughput(&python, &within_limit, cores)?;
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
    let skipped = tasks.len() - within_limit.len();
    println!(
        "| runs/s, 1 core, without the {skipped} task(s) over the sandbox's time limit | {typical_one:.0} | {cpython_typical_one:.1} | {:.1}x |",
        typical_one / cpython_typical_one
    );
    println!(
        "| runs/s, {cores} cores, same | {typical_all:.0} | {cpython_typical_all:.1} | {:.1}x |",
        typical_all / cpython_typical_all
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
        let passing: Vec<Task> = tasks
            .iter()
            .zip(&statuses)
            .filter(|(_, status)| **status == Status::Passed)
            .map(|(task, _)| task.clone())
            .collect();
        workers_table(coe, &passing, args.rounds, cores)?;
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
