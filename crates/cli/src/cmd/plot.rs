//! `coe plot`: a training run's curves redrawn.

use std::path::Path;

use crate::Failure;
use crate::output::print;

/// Redraws `dir/plots/*.svg` from `dir/metrics.jsonl` and prints their paths, then the run's
/// metrics over windows of `window` steps (mean, smallest, largest).
pub(crate) fn plot(dir: &Path, window: usize) -> Result<(), Failure> {
    let metrics = dir.join("metrics.jsonl");
    if !metrics.is_file() {
        return Err(Failure::Input(format!(
            "coe: no {} (is {} a training run's folder?)",
            metrics.display(),
            dir.display()
        )));
    }
    let written = coe_trainer::plot::plot_metrics(&metrics, &dir.join("plots"))
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let mut out = String::new();
    for path in written {
        out.push_str(&format!("{}\n", path.display()));
    }
    if let Some(table) = coe_trainer::plot::summarize_metrics(&metrics, window)
        .map_err(|e| Failure::Internal(e.to_string()))?
    {
        out.push_str(&format!(
            "\nmean (smallest-largest a step) over {window} steps at a time:\n\n{table}"
        ));
    }
    print(&out)
}
