//! A progress bar for training runs (indicatif): steps done, a short status, rate and ETA on
//! a terminal; nothing but the metric lines when stderr is not one.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A run's progress over its optimiser steps.
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A bar for `phase` at step `done` of `total`, drawn on stderr when it is a terminal.
    pub(crate) fn new(phase: &str, done: usize, total: usize) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        // The template is a constant; were it ever rejected, the default style still works.
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  {elapsed} elapsed, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(phase.to_string());
        bar.set_position(done as u64);
        bar.reset_eta();
        Self(bar)
    }

    /// Moves to step `step` with a short status message.
    pub(crate) fn step(&self, step: usize, message: &str) {
        self.0.set_message(message.to_string());
        self.0.set_position(step as u64);
    }

    /// Prints a metrics line above the bar (plainly when there is no bar).
    pub(crate) fn log(&self, line: &serde_json::Value) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Leaves the finished bar on screen.
    pub(crate) fn finish(&self) {
        self.0.finish();
    }
}
