//! Measurement tools for coe: loading the bundled task sets, and running programs with the real
//! CPython interpreter as the baseline.
//!
//! Binaries: `sandbox-bench` (throughput and latency table, `cargo xtask bench sandbox`),
//! `policy-bench` (prefill and decode against llama.cpp and transformers, `cargo xtask bench
//! policy`), `experience-bench` (RL experience throughput, `cargo xtask bench experience`) and
//! `compat` (sandbox versus CPython on MBPP and HumanEvalFix, `cargo xtask compat`). Criterion
//! benches are in `benches/`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod cpython;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coe_data::sources::read_tasks;
use coe_tool_state::Task;

/// The workspace's `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Reads a task file with coe-data's loader (MBPP rows normalised as the data pipeline does);
/// a malformed line is an error here, since the bundled files have none.
pub fn load_tasks(path: &Path) -> Result<Vec<Task>> {
    let loaded = read_tasks(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(loaded.strict()?)
}

/// MBPP's 974 tasks (`code` is the reference solution).
pub fn mbpp() -> Result<Vec<Task>> {
    load_tasks(&fixtures_dir().join("mbpp/mbpp.jsonl"))
}

/// HumanEvalFix's 164 tasks (`code` buggy, `reference` fixed).
pub fn humanevalfix() -> Result<Vec<Task>> {
    load_tasks(&fixtures_dir().join("humanevalfix/humanevalfix.jsonl"))
}

/// Writes `tasks` as a JSON Lines task file (what `coe check` reads) in the temporary
/// directory, named after `name` and this process.
pub fn write_task_file(tasks: &[Task], name: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{name}-{}.jsonl", std::process::id()));
    let mut lines = String::new();
    for task in tasks {
        lines += &serde_json::to_string(task)?;
        lines.push('\n');
    }
    std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A command-line count that must be at least one (clap `value_parser`).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// How many lines of `coe check`'s output report a passed task.
pub fn passed_outcomes(check_stdout: &str) -> usize {
    check_stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|outcome| outcome["status"] == "passed")
        .count()
}

/// Runs each of `runners` `rounds` times, the order rotated each round so no runner always goes
/// first, and returns each runner's median measure (`measure(runner)` returns one, e.g. seconds).
pub fn rotated_medians(
    rounds: usize,
    runners: usize,
    mut measure: impl FnMut(usize) -> Result<f64>,
) -> Result<Vec<f64>> {
    let mut measures = vec![Vec::with_capacity(rounds); runners];
    for round in 0..rounds {
        for turn in 0..runners {
            let runner = (turn + round) % runners;
            measures[runner].push(measure(runner)?);
        }
    }
    Ok(measures.iter().map(|values| median(values)).collect())
}

/// The median of `values` (nearest rank, as [`percentile`]); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// The p-th percentile (0-100) of sorted `values`, by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The resident set size of this process in KiB, from `/proc/self/status` (Linux).
pub fn resident_kib() -> Option<u64> {
    status_kib("self", "VmRSS:")
}

/// The resident set size of process `pid` in KiB (Linux).
pub fn process_resident_kib(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "VmRSS:")
}

/// The peak resident set size (high-water mark) of this process in KiB (Linux).
pub fn peak_resident_kib() -> Option<u64> {
    status_kib("self", "VmHWM:")
}

/// A KiB field of `/proc/<process>/status`, e.g. `VmRSS:`.
fn status_kib(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}
