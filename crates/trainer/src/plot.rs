//! Curves of a run's metrics (`metrics.jsonl`) as SVG files, drawn with `plotters`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::TrainerError;

/// The metrics worth a curve: key in `metrics.jsonl`, file stem, title.
const CURVES: [(&str, &str, &str); 6] = [
    ("loss", "loss", "Loss"),
    ("mean_return", "reward", "Mean episode return"),
    ("solve_rate", "solve_rate", "Solve rate"),
    ("kl", "kl", "KL to the base model"),
    ("malformed_rate", "malformed_rate", "Malformed-command rate"),
    ("tokens_per_s", "throughput", "Training tokens per second"),
];

fn plot_err(e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Data(format!("plotting: {e}"))
}

/// Reads `metrics` and writes one SVG per metric it has (loss, reward, solve rate, KL, ...)
/// into `out_dir`, named `<metric>.svg`; returns their paths. Lines that are not JSON objects
/// with a numeric `step` are skipped, so a half-written last line does no harm.
pub fn plot_metrics(metrics: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, TrainerError> {
    let text = std::fs::read_to_string(metrics).map_err(|e| TrainerError::Io {
        path: metrics.display().to_string(),
        message: e.to_string(),
    })?;
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(step) = map.get("step").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        for (key, _, _) in CURVES {
            if let Some(value) = map.get(key).and_then(serde_json::Value::as_f64)
                && value.is_finite()
            {
                series.entry(key).or_default().push((step, value));
            }
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainerError::Io {
        path: out_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut written = Vec::new();
    for (key, stem, title) in CURVES {
        let Some(points) = series.get(key) else {
            continue;
        };
        let path = out_dir.join(format!("{stem}.svg"));
        draw_curve(&path, title, points)?;
        written.push(path);
    }
    Ok(written)
}

/// Padded bounds of `values` (a flat series still gets a visible range).
fn range(values: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let low = values.clone().fold(f64::INFINITY, f64::min);
    let high = values.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((high - low) * 0.05).max(high.abs().max(1e-3) * 0.05);
    (low - pad)..(high + pad)
}

/// One line chart: the raw values, and a moving average when there are many noisy points.
fn draw_curve(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<(), TrainerError> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x = range(points.iter().map(|p| p.0));
    let y = range(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("optimiser step")
        .draw()
        .map_err(plot_err)?;
    let raw = RGBColor(120, 150, 200);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), &raw))
        .map_err(plot_err)?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 2, raw.filled())))
        .map_err(plot_err)?;
    let window = (points.len() / 10).max(1);
    if window > 1 {
        let smooth: Vec<(f64, f64)> = points
            .windows(window)
            .map(|w| {
                let n = w.len() as f64;
                (
                    w.iter().map(|p| p.0).sum::<f64>() / n,
                    w.iter().map(|p| p.1).sum::<f64>() / n,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("mean of {window}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_curve_per_metric_present_and_skips_bad_lines() {
        let dir = std::env::temp_dir().join(format!("coe-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=30 {
            text.push_str(&format!(
                "{{\"step\":{step},\"loss\":{},\"kl\":0.01}}\n",
                1.0 / f64::from(step)
            ));
        }
        text.push_str("not json\n{\"loss\": 1}\n{\"step\": 31, \"loss\"");
        std::fs::write(&metrics, text).unwrap();
        let written = plot_metrics(&metrics, &dir.join("plots")).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["loss.svg", "kl.svg"]);
        let svg = std::fs::read_to_string(&written[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Loss") && svg.contains("<polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
