//! `coe train sft|rl`: a training run from a TOML configuration.

use std::path::{Path, PathBuf};

use super::sandbox;
use crate::Failure;
use crate::output::print;

/// Which training phase `coe train` runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Phase {
    /// Supervised fine-tuning on the demonstrations.
    Sft,
    /// GRPO over live sandbox episodes.
    Rl,
}

pub(crate) fn train(
    phase: Phase,
    config_path: &Path,
    resume: bool,
    steps: Option<usize>,
    out: Option<PathBuf>,
) -> Result<(), Failure> {
    let mut config = coe_trainer::config::RunConfig::load(config_path)
        .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(steps) = steps {
        config.optim.steps = steps;
    }
    if let Some(out) = out {
        config.out_dir = out;
    }
    // Data made by `cargo xtask data` lives in the cache.
    let data = coe_cache::cache_dir().join("data");
    if config.sft_data.is_none() {
        config.sft_data = Some(data.join("sft-train.jsonl"));
    }
    if config.rl_tasks.is_none() && config.rl_demos.is_none() {
        config.rl_demos = Some(data.join("demos-train.jsonl"));
    }
    if !config.model_path().exists() {
        return Err(Failure::Input(format!(
            "no base model at {}: run `cargo xtask model`",
            config.model_path().display()
        )));
    }
    let failed = |e: coe_trainer::TrainerError| Failure::Internal(e.to_string());
    let adapter = match phase {
        Phase::Sft => coe_trainer::sft::run_sft::<coe_policy::CpuTrainBackend>(&config, resume)
            .map_err(failed)?,
        Phase::Rl => {
            let sandbox = std::sync::Arc::new(sandbox()?);
            coe_trainer::grpo::run_rl::<coe_policy::CpuTrainBackend, _>(&config, &sandbox, resume)
                .map_err(failed)?
        }
    };
    print(&format!(
        "adapter: {}\nmetrics: {}\nplots: {}\n",
        adapter.display(),
        config.out_dir.join("metrics.jsonl").display(),
        config.out_dir.join("plots").display()
    ))
}
