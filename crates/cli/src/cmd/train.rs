//! `coe train sft|rl`: a training run from a TOML configuration.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;

use super::{Device, Parallelism, executor};
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

/// `coe train`'s arguments: a configuration file and the overrides a run in the cache needs.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Which phase.
    #[arg(value_enum)]
    phase: Phase,
    /// The run's TOML configuration.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Continue from out_dir/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override the number of optimiser steps.
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Override the output folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Override the adapters to start from (for RL: the SFT snapshot chosen on validation).
    #[arg(long, value_name = "FILE")]
    init_adapter: Option<PathBuf>,
    /// Where the model trains.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

pub(crate) fn train(args: TrainArgs) -> Result<(), Failure> {
    let mut config = coe_trainer::config::RunConfig::load(&args.config)
        .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(steps) = args.steps {
        config.optim.steps = steps;
    }
    if let Some(out) = args.out {
        config.out_dir = out;
    }
    if let Some(adapter) = args.init_adapter {
        if !adapter.is_file() {
            return Err(Failure::Input(format!(
                "no adapter file at {}",
                adapter.display()
            )));
        }
        config.init_adapter = Some(adapter);
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
    let adapter = match args.device {
        Device::Cpu => run::<coe_policy::CpuTrainBackend>(args.phase, &config, args.resume)?,
        #[cfg(feature = "cuda")]
        Device::Cuda => run::<burn::backend::Autodiff<coe_policy::CudaBackend>>(
            args.phase,
            &config,
            args.resume,
        )?,
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => return Err(Device::cuda_missing()),
    };
    print(&format!(
        "adapter: {}\nmetrics: {}\nplots: {}\n",
        adapter.display(),
        config.out_dir.join("metrics.jsonl").display(),
        config.out_dir.join("plots").display()
    ))
}

/// Runs `phase` with the model on backend `B`'s default device; returns the final adapter.
fn run<B: AutodiffBackend>(
    phase: Phase,
    config: &coe_trainer::config::RunConfig,
    resume: bool,
) -> Result<PathBuf, Failure> {
    let failed = |e: coe_trainer::TrainerError| Failure::Internal(e.to_string());
    match phase {
        Phase::Sft => coe_trainer::sft::run_sft::<B>(config, resume).map_err(failed),
        Phase::Rl => {
            let sandbox = executor(config.workers, Parallelism::Processes)?;
            coe_trainer::grpo::run_rl::<B, _>(config, &sandbox, resume).map_err(failed)
        }
    }
}
