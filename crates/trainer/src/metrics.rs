//! A run's metrics: one JSON line per logged step in `metrics.jsonl`, and their curves.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::TrainerError;
use crate::config::io_err;
use crate::plot::plot_metrics;

/// Appends JSON lines to `metrics.jsonl`.
pub(crate) struct Metrics(std::fs::File, PathBuf);

impl Metrics {
    pub(crate) fn open(dir: &Path) -> Result<Self, TrainerError> {
        let path = dir.join("metrics.jsonl");
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
