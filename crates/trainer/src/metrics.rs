//! A run's metrics: one JSON line per logged step in `metrics.jsonl`, and their curves.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::TrainerError;
use crate::config::io_err;
use crate::plot::plot_metrics;

/// Appends JSON lines to `metrics.jsonl`.
pub(crate) struct Metrics(std::fs::File, PathBuf);

impl Metrics {
    /// Opens `dir/metrics.jsonl` for a run at `step` (its checkpoint's, 0 when fresh), first
    /// dropping the lines of later steps: a run stopped between checkpoints had logged steps
    /// that its resumption takes again, which would otherwise appear twice.
    pub(crate) fn open(dir: &Path, step: usize) -> Result<Self, TrainerError> {
        let path = dir.join("metrics.jsonl");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let later = |line: &str| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64())
                        .is_some_and(|s| s > step as u64)
                };
                // Each line parsed once: a long run's file is read at every resumption.
                let kept: Vec<&str> = text.lines().filter(|line| !later(line)).collect();
                let dropped = text.lines().count() - kept.len();
                if dropped > 0 {
                    eprintln!(
                        "warning: {}: dropping {dropped} lines of steps after {step}, which this run takes again",
                        path.display()
                    );
                    let kept: String = kept.iter().flat_map(|line| [*line, "\n"]).collect();
                    coe_cache::write_atomically(&path, kept.as_bytes())
                        .map_err(|e| io_err(&path, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(Self(file, path))
    }

    pub(crate) fn write(&mut self, value: &serde_json::Value) -> Result<(), TrainerError> {
        writeln!(self.0, "{value}").map_err(|e| io_err(&self.1, e))
    }
}

/// Redraws the run's curves into `dir/plots`; a failure to draw is reported, not fatal.
pub(crate) fn plot_run(dir: &Path) {
    if let Err(e) = plot_metrics(&dir.join("metrics.jsonl"), &dir.join("plots")) {
        eprintln!("warning: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_resumed_run_logs_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut metrics = Metrics::open(dir.path(), 0).unwrap();
        for step in 1..=7 {
            metrics.write(&serde_json::json!({ "step": step })).unwrap();
        }
        drop(metrics);
        // The checkpoint was at step 5; steps 6 and 7 are taken again.
        let mut metrics = Metrics::open(dir.path(), 5).unwrap();
        for step in 6..=8 {
            metrics.write(&serde_json::json!({ "step": step })).unwrap();
        }
        assert_eq!(steps(&path), (1..=8).collect::<Vec<_>>());
        // Nothing later than the checkpoint: the file is left as it was.
        let before = std::fs::read(&path).unwrap();
        drop(Metrics::open(dir.path(), 8).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
