//! `coe plot`: a training run's curves redrawn.

use std::path::Path;

use crate::Failure;
use crate::output::print;

pub(crate) fn plot(dir: &Path) -> Result<(), Failure> {
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
    print(&out)
}
