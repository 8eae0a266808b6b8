//! Experience throughput: the policy plays GRPO-style groups of episodes against the real
//! sandbox, as RL does, and the run reports episodes/s, environment steps/s, generated tokens/s
//! and where the time went (prefill, decode, sandbox). Each repeat plays the same tasks with the
//! same seed once per setting (`--batch`: episodes decoding together; `--workers`: sandbox
//! threads), interleaved, so the comparison shares the machine's noise. Prints one JSON line per
//! run, then a table of medians. `cargo xtask bench experience` runs it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use coe_benches::median;
use coe_policy::generate::rng;
use coe_policy::{CpuBackend, Policy, SamplingConfig};
use coe_tool_state::EpisodeConfig;
use coe_trainer::rollout::{PlayConfig, PlayStats, play_tasks};

struct Args {
    model: PathBuf,
    adapter: Option<PathBuf>,
    tasks: PathBuf,
    limit: usize,
    group: usize,
    max_turns: usize,
    repeats: usize,
    workers: Vec<usize>,
    batches: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: coe_policy::default_model_path(),
        adapter: None,
        tasks: coe_benches::fixtures_dir().join("eval/mbpp-synthetic-test.jsonl"),
        limit: 2,
        group: 4,
        max_turns: 10,
        repeats: 3,
        workers: vec![1],
        batches: vec![1, 4, 16],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--adapter" => args.adapter = Some(value()?.into()),
            "--tasks" => args.tasks = value()?.into(),
            "--limit" => args.limit = value()?.parse()?,
            "--group" => args.group = value()?.parse()?,
            "--max-turns" => args.max_turns = value()?.parse()?,
            "--repeats" => args.repeats = value()?.parse()?,
            "--workers" => args.workers = list(&value()?)?,
            "--batch" => args.batches = list(&value()?)?,
            other => bail!(
                "unknown argument {other}; usage: experience-bench [--model PATH] [--adapter PATH] \
                 [--tasks FILE] [--limit N] [--group G] [--max-turns N] [--repeats N] \
                 [--workers 1] [--batch 1,4,16]"
            ),
        }
    }
    if args.workers.is_empty()
        || args.batches.is_empty()
        || args.repeats == 0
        || args.limit == 0
        || args.group == 0
    {
        bail!("--workers, --batch, --repeats, --limit and --group need at least one");
    }
    Ok(args)
}

fn list(text: &str) -> Result<Vec<usize>> {
    Ok(text.split(',').map(str::parse).collect::<Result<_, _>>()?)
}

fn main() -> Result<()> {
    let args = parse_args()?;
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
        sampling: SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 96,
            stop_at_newline: true,
        },
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
