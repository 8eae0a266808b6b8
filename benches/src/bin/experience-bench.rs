//! Experience throughput: the policy plays GRPO-style groups of episodes against the real
//! sandbox, as RL does, and the run reports episodes/s, environment steps/s, generated tokens/s
//! and where the time went (prefill, decode, sandbox). Each repeat plays the same tasks with the
//! same seed once per setting (`--batch`: episodes decoding together; `--workers`: sandbox
//! threads), interleaved, so the comparison shares the machine's noise. Prints one JSON line per
//! run, then a table of medians. `cargo xtask bench experience` runs it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use coe_benches::{at_least_one, median};
use coe_policy::generate::rng;
use coe_policy::{CpuBackend, Policy, SamplingConfig};
use coe_tool_state::EpisodeConfig;
use coe_trainer::rollout::{PlayConfig, PlayStats, play_tasks};

/// RL experience throughput: episodes/s, steps/s and tokens/s, with the time split between
/// prefill, decode and sandbox.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The base model (GGUF or a Hugging Face folder).
    #[arg(long, default_value_os_t = coe_policy::default_model_path())]
    model: PathBuf,
    /// LoRA adapter to play with; none: the base model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Task file (JSON Lines).
    #[arg(long, default_value_os_t = coe_benches::fixtures_dir().join("eval/mbpp-synthetic-test.jsonl"))]
    tasks: PathBuf,
    /// Tasks played, from the file's start.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    limit: usize,
    /// Episodes per task (the GRPO group).
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    group: usize,
    /// Turns per episode at most.
    #[arg(long, default_value_t = 10)]
    max_turns: usize,
    /// Runs per setting.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    repeats: usize,
    /// Sandbox worker counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = at_least_one)]
    workers: Vec<usize>,
    /// Episodes decoding together, comma-separated.
    #[arg(long = "batch", value_delimiter = ',', default_value = "1,4,16", value_parser = at_least_one)]
    batches: Vec<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Default::default();
    let mut policy = Policy::<CpuBackend>::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(adapter) = &args.adapter {
        policy.model = coe_policy::lora::load_adapters(policy.model, adapter)
            .with_context(|| format!("loading {}", adapter.display()))?
            .0;
    }
    let mut tasks = coe_benches::load_tasks(&args.tasks)?;
    tasks.truncate(args.limit);
    let sandbox = coe_sandbox::Sandbox::new(&Default::default())?;
    // RL's sampling settings (fixtures/configs/rl.toml).
    let config = PlayConfig {
        episode: EpisodeConfig {
            max_turns: args.max_turns,
            ..EpisodeConfig::default()
        },
        // GRPO's sampling: temperature 1, one command per turn.
        sampling: SamplingConfig::default(),
        ..PlayConfig::default()
    };
    let settings: Vec<(usize, usize)> = args
        .batches
        .iter()
        .flat_map(|&b| args.workers.iter().map(move |&w| (b, w)))
        .collect();
    let mut runs: Vec<Vec<PlayStats>> = vec![Vec::new(); settings.len()];
    for repeat in 0..args.repeats {
        for (i, &(batch, workers)) in settings.iter().enumerate() {
            let config = PlayConfig {
                workers,
                batch,
                ..config
            };
            let (groups, stats) = play_tasks(
                &policy,
                &tasks,
                &sandbox,
                args.group,
                &config,
                &mut rng(repeat as u64),
                |_, _| {},
            )?;
            let solved = groups.iter().flatten().filter(|r| r.trace.solved).count();
            println!(
                "{}",
                serde_json::json!({
                    "repeat": repeat, "batch": batch, "workers": workers, "solved": solved,
                    "stats": stats,
                })
            );
            runs[i].push(stats);
        }
    }
    println!(
        "\nSmolLM2-135M on CPU, {} tasks x {} episodes, up to {} turns; medians of {} runs\n",
        tasks.len(),
        args.group,
        args.max_turns,
        args.repeats
    );
    println!(
        "| batch | sandbox workers | mean rows | episodes/s | env steps/s | generated tok/s | prefill share | decode share | sandbox share | wall s | speed-up vs first |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let wall = |stats: &[PlayStats]| median(&stats.iter().map(|s| s.wall_s).collect::<Vec<_>>());
    let baseline = wall(&runs[0]);
    for (&(batch, workers), stats) in settings.iter().zip(&runs) {
        let rate = |f: &dyn Fn(&PlayStats) -> f64| median(&stats.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {batch} | {workers} | {:.1} | {:.3} | {:.2} | {:.1} | {:.1}% | {:.1}% | {:.1}% | {:.1} | {:.2}x |",
            rate(&|s| s.decode_rows as f64 / s.decode_batches.max(1) as f64),
            rate(&|s| s.episodes as f64 / s.wall_s),
            rate(&|s| s.env_steps as f64 / s.wall_s),
            rate(&|s| s.generated_tokens as f64 / s.wall_s),
            100.0 * rate(&|s| s.prefill_s / s.wall_s),
            100.0 * rate(&|s| s.decode_s / s.wall_s),
            100.0 * rate(&|s| s.env_s / s.wall_s),
            wall(stats),
            baseline / wall(stats),
        );
    }
    Ok(())
}
