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
    ("kl", "kl", "KL to the reference policy"),
    ("malformed_rate", "malformed_rate", "Malformed-command rate"),
    ("tokens_per_s", "throughput", "Training tokens per second"),
];

fn plot_err(e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Data(format!("plotting: {e}"))
}

/// The metrics [`summarize_metrics`] tabulates, in its column order.
const SUMMARISED: [&str; 8] = [
    "loss",
    "solve_rate",
    "mean_turns",
    "context_cut_rate",
    "malformed_rate",
    "kl",
    "skipped_groups",
    "tokens_per_s",
];

/// A metric's (step, value) points, by metric key.
type Series<'k> = BTreeMap<&'k str, Vec<(f64, f64)>>;

/// Each wanted key's (step, value) points in `metrics` (JSON Lines), in step order; a step
/// logged twice (a run resumed before its checkpoint) counts once, with its last line. Lines
/// that are not JSON objects with a numeric `step` are skipped, so a half-written last line
/// does no harm.
fn read_series<'k>(
    metrics: &Path,
    keys: impl Iterator<Item = &'k str> + Clone,
) -> Result<Series<'k>, TrainerError> {
    let text = std::fs::read_to_string(metrics).map_err(|e| TrainerError::Io {
        path: metrics.display().to_string(),
        message: e.to_string(),
    })?;
    let mut by_step: BTreeMap<u64, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(step) = map.get("step").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        by_step.insert(step, map);
    }
    let mut series = Series::new();
    for (step, map) in &by_step {
        for key in keys.clone() {
            if let Some(value) = map.get(key).and_then(serde_json::Value::as_f64)
                && value.is_finite()
            {
                series.entry(key).or_default().push((*step as f64, value));
            }
        }
    }
    Ok(series)
}

/// A Markdown table of a run's metrics (`metrics.jsonl`) over windows of `window` steps (1-10,
/// 11-20, ...) and over all steps: each metric's mean, with its smallest and largest value a
/// step, for reading a run's course as figures rather than curves. `None` where the file has
/// none of the tabulated metrics; `window` 0 counts as 1.
pub fn summarize_metrics(metrics: &Path, window: usize) -> Result<Option<String>, TrainerError> {
    let series = read_series(metrics, SUMMARISED.iter().copied())?;
    let columns: Vec<&str> = SUMMARISED
        .iter()
        .copied()
        .filter(|key| series.contains_key(key))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let window = window.max(1) as u64;
    let mut windows: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for points in series.values() {
        for &(step, _) in points {
            let step = step as u64;
            let first = step.saturating_sub(1) / window * window + 1;
            let span = windows.entry(first).or_insert((step, step));
            span.0 = span.0.min(step);
            span.1 = span.1.max(step);
        }
    }
    let cell = |key: &str, span: Option<(u64, u64)>| {
        let values: Vec<f64> = series[key]
            .iter()
            .filter(|(step, _)| span.is_none_or(|(a, b)| (a..=b).contains(&(*step as u64))))
            .map(|(_, value)| *value)
            .collect();
        if values.is_empty() {
            return "-".to_string();
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{mean:.3} ({low:.3}-{high:.3})")
    };
    let mut md = format!("| steps | {} |\n|---|", columns.join(" | "));
    md.push_str(&"---:|".repeat(columns.len()));
    md.push('\n');
    let mut row = |label: String, span: Option<(u64, u64)>| {
        let cells: Vec<String> = columns.iter().map(|key| cell(key, span)).collect();
        md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    };
    for (first, (_, last)) in &windows {
        row(format!("{first}-{last}"), Some((*first, *last)));
    }
    row("all".into(), None);
    Ok(Some(md))
}

/// Reads `metrics` and writes one SVG per metric it has (loss, reward, solve rate, KL, ...)
/// into `out_dir`, named `<metric>.svg`; returns their paths. Lines that are not JSON objects
/// with a numeric `step` are skipped, so a half-written last line does no harm.
pub fn plot_metrics(metrics: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, TrainerError> {
    let series = read_series(metrics, CURVES.iter().map(|(key, _, _)| *key))?;
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

/// One bar group of [`plot_pass_rates`]: a policy's pass@1 and pass@k on one evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct PassRates {
    /// The evaluation set.
    pub set: String,
    /// The policy (or baseline).
    pub policy: String,
    /// pass@1 in percent.
    pub pass_at_1: f64,
    /// pass@k in percent.
    pub pass_at_k: f64,
    /// pass@1's 95% interval `(low, high)` in percent, drawn as a whisker.
    pub pass_at_1_interval: Option<(f64, f64)>,
    /// pass@k's 95% interval.
    pub pass_at_k_interval: Option<(f64, f64)>,
}

/// Bar chart of pass@1 (solid) and pass@k (light) per evaluation set and policy, with each
/// rate's 95% interval as a whisker (pass@1's at a third of the bar, pass@k's at two thirds),
/// as SVG.
pub fn plot_pass_rates(rows: &[PassRates], k: usize, path: &Path) -> Result<(), TrainerError> {
    let mut sets: Vec<&str> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    for row in rows {
        if !sets.contains(&row.set.as_str()) {
            sets.push(&row.set);
        }
        if !policies.contains(&row.policy.as_str()) {
            policies.push(&row.policy);
        }
    }
    if rows.is_empty() {
        return Err(TrainerError::Data("no evaluation results to plot".into()));
    }
    let slots = (policies.len() + 1) as f64;
    let top = rows
        .iter()
        .flat_map(|r| {
            let highs =
                [r.pass_at_1_interval, r.pass_at_k_interval].map(|i| i.map_or(0.0, |i| i.1));
            [r.pass_at_k, r.pass_at_1, highs[0], highs[1]]
        })
        .fold(10.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (880, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("pass@1 (solid) and pass@{k} (light), percent"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..sets.len() as f64, 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(sets.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < sets.len() {
                sets[i].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("percent of tasks")
        .draw()
        .map_err(plot_err)?;
    for (p, policy) in policies.iter().enumerate() {
        let color = Palette99::pick(p).to_rgba();
        let bars = rows.iter().filter(|r| r.policy == *policy).filter_map(|r| {
            let s = sets.iter().position(|name| *name == r.set)? as f64;
            let left = s + (p as f64 + 0.5) / slots;
            Some((left, left + 1.0 / slots, r))
        });
        let bars: Vec<_> = bars.collect();
        chart
            .draw_series(bars.iter().map(|&(l, r, row)| {
                Rectangle::new([(l, 0.0), (r, row.pass_at_k)], color.mix(0.35).filled())
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(
                bars.iter().map(|&(l, r, row)| {
                    Rectangle::new([(l, 0.0), (r, row.pass_at_1)], color.filled())
                }),
            )
            .map_err(plot_err)?
            .label(policy.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        // Whiskers: the interval's span, with short caps at both ends.
        let cap = 0.08 / slots;
        let whiskers = bars.iter().flat_map(|&(l, r, row)| {
            [
                (l + (r - l) / 3.0, row.pass_at_1_interval),
                (l + 2.0 * (r - l) / 3.0, row.pass_at_k_interval),
            ]
            .into_iter()
            .filter_map(|(x, interval)| interval.map(|(low, high)| (x, low, high)))
            .flat_map(move |(x, low, high)| {
                [
                    vec![(x, low), (x, high)],
                    vec![(x - cap, low), (x + cap, low)],
                    vec![(x - cap, high), (x + cap, high)],
                ]
            })
        });
        chart
            .draw_series(whiskers.map(|points| PathElement::new(points, BLACK.stroke_width(1))))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_curve_per_metric_present_and_skips_bad_lines() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
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
    }

    #[test]
    fn summarises_metrics_by_window_with_a_resumed_step_counted_once() {
        let scratch = tempfile::tempdir().unwrap();
        let metrics = scratch.path().join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=12 {
            text.push_str(&format!(
                "{{\"step\":{step},\"solve_rate\":{},\"kl\":0.5}}\n",
                f64::from(step) / 10.0
            ));
        }
        // Step 12 again after a resume: its last line stands.
        text.push_str("{\"step\":12,\"solve_rate\":0.0,\"kl\":0.5}\nnot json\n");
        std::fs::write(&metrics, text).unwrap();
        let table = summarize_metrics(&metrics, 10).unwrap().unwrap();
        assert_eq!(
            table,
            "| steps | solve_rate | kl |\n|---|---:|---:|\n\
             | 1-10 | 0.550 (0.100-1.000) | 0.500 (0.500-0.500) |\n\
             | 11-12 | 0.550 (0.000-1.100) | 0.500 (0.500-0.500) |\n\
             | all | 0.550 (0.000-1.100) | 0.500 (0.500-0.500) |\n"
        );
        std::fs::write(&metrics, "{\"step\":1,\"other\":1}\n").unwrap();
        assert_eq!(summarize_metrics(&metrics, 10).unwrap(), None);
        assert!(summarize_metrics(&scratch.path().join("missing"), 10).is_err());
    }

    #[test]
    fn draws_a_bar_per_policy_and_set() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("bars.svg");
        let row = |set: &str, policy: &str, p1: f64| PassRates {
            set: set.into(),
            policy: policy.into(),
            pass_at_1: p1,
            pass_at_k: p1 * 2.0,
            pass_at_1_interval: Some((p1 * 0.5, p1 * 1.5 + 1.0)),
            // Within the bars, so the axis (and its grid lines) stay the same.
            pass_at_k_interval: (p1 > 0.0).then_some((p1 * 1.5, p1 * 2.0)),
        };
        let rows = [
            row("mbpp", "base", 0.0),
            row("mbpp", "sft", 12.5),
            row("humanevalfix", "sft", 3.0),
        ];
        plot_pass_rates(&rows, 4, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("pass@4") && svg.contains("humanevalfix") && svg.contains("sft"));
        // Two rectangles (pass@1, pass@k) per row, plus legend boxes.
        assert!(svg.matches("<rect").count() >= 2 * rows.len());
        // Three lines (span and two caps) per interval: five intervals given.
        let without: Vec<PassRates> = rows
            .iter()
            .map(|r| PassRates {
                pass_at_1_interval: None,
                pass_at_k_interval: None,
                ..r.clone()
            })
            .collect();
        plot_pass_rates(&without, 4, &path).unwrap();
        let plain = std::fs::read_to_string(&path).unwrap();
        let lines = |svg: &str| svg.matches("<polyline").count();
        assert_eq!(lines(&svg) - lines(&plain), 3 * 5);
        assert!(plot_pass_rates(&[], 4, &path).is_err());
    }
}
