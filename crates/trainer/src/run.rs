//! Whole runs from a TOML configuration: SFT over the demonstration file, GRPO over live
//! episodes, evaluation over a task file. Each writes its outputs under one folder: metrics as
//! JSON Lines, checkpoints (written atomically), the final adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use coe_data::formats::{Demo, LineError, Transcript, read_json_lines};
use coe_exec::Executor;
use coe_policy::{LoraConfig, Policy, SamplingConfig, TextTokenizer};
use coe_tool_state::{EpisodeConfig, Task, Trace};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::chat::{Encoded, encode};
use crate::eval::{EvalSummary, summarize};
use crate::grpo::{GrpoConfig, episode_loss, group_advantages};
use crate::plot::plot_metrics;
use crate::progress::Progress;
use crate::rollout::{PlayConfig, play_tasks};
use crate::sft::{OptimConfig, Trainer};

/// A training run's configuration (`fixtures/configs/*.toml`). Defaults follow the paper where
/// it says: LoRA rank 16, groups of 4, beta 0.01, epsilon 0.2, 10 turns, context 2048.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Base model (GGUF file or Hugging Face folder); `None`: the default model.
    pub model: Option<PathBuf>,
    /// Adapters to start from (RL starts from the SFT adapter).
    pub init_adapter: Option<PathBuf>,
    /// LoRA settings of new adapters.
    pub lora: LoraConfig,
    /// Seed of data order, adapter initialisation, dropout and sampling.
    pub seed: u64,
    /// Context limit in tokens.
    pub context: usize,
    /// Where outputs go.
    pub out_dir: PathBuf,
    /// Optimiser steps between metric lines.
    pub log_every: usize,
    /// Optimiser steps between checkpoints.
    pub checkpoint_every: usize,
    /// The optimiser.
    pub optim: OptimConfig,
    /// SFT: the demonstrations (`sft-train.jsonl` lines with `messages`).
    pub sft_data: Option<PathBuf>,
    /// RL: the tasks (JSON Lines); or, when unset, broken programs from `rl_demos` with their
    /// MBPP tests from `mbpp`.
    pub rl_tasks: Option<PathBuf>,
    /// RL: demonstrations whose broken programs become tasks (`demos-train.jsonl`).
    pub rl_demos: Option<PathBuf>,
    /// RL: the MBPP file the demonstrations' task ids refer to.
    pub mbpp: PathBuf,
    /// RL: tasks per optimiser step.
    pub tasks_per_step: usize,
    /// RL: the GRPO settings.
    pub grpo: GrpoConfig,
    /// RL and evaluation: turns per episode.
    pub max_turns: usize,
    /// RL and evaluation: how commands are sampled.
    pub sampling: SamplingConfig,
    /// RL and evaluation: threads running sandbox steps while the model generates (0: none,
    /// steps run between generations).
    pub workers: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: None,
            init_adapter: None,
            lora: LoraConfig::default(),
            seed: 0,
            context: crate::rollout::DEFAULT_CONTEXT,
            out_dir: PathBuf::from("runs/default"),
            log_every: 1,
            checkpoint_every: 50,
            optim: OptimConfig::default(),
            sft_data: None,
            rl_tasks: None,
            rl_demos: None,
            mbpp: PathBuf::from("fixtures/mbpp/mbpp.jsonl"),
            tasks_per_step: 2,
            grpo: GrpoConfig::default(),
            max_turns: 10,
            sampling: SamplingConfig {
                temperature: 1.0,
                top_p: 1.0,
                max_tokens: 96,
                stop_at_newline: true,
            },
            workers: 1,
        }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl RunConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, TrainerError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        toml::from_str(&text).map_err(|e| io_err(path, e))
    }

    /// The base model path.
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(coe_policy::default_model_path)
    }

    fn play_config(&self) -> PlayConfig {
        PlayConfig {
            episode: EpisodeConfig {
                max_turns: self.max_turns,
                ..EpisodeConfig::default()
            },
            sampling: self.sampling,
            context: self.context,
            workers: self.workers,
        }
    }
}

/// Appends JSON lines to `metrics.jsonl`.
struct Metrics(std::fs::File, PathBuf);

impl Metrics {
    fn open(dir: &Path) -> Result<Self, TrainerError> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(Self(file, path))
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<(), TrainerError> {
        writeln!(self.0, "{value}").map_err(|e| io_err(&self.1, e))
    }
}

/// Redraws the run's curves into `dir/plots`; a failure to draw is reported, not fatal.
fn plot_run(dir: &Path) {
    if let Err(e) = plot_metrics(&dir.join("metrics.jsonl"), &dir.join("plots")) {
        eprintln!("warning: {e}");
    }
}

/// Loads the base, then the adapters: from the checkpoint when resuming, else from
/// `init_adapter`, else fresh.
fn start<B: AutodiffBackend>(
    config: &RunConfig,
    resume: bool,
) -> Result<(Trainer<B>, TextTokenizer), TrainerError> {
    let device = B::Device::default();
    let policy = Policy::<B>::load(&config.model_path(), &device)?;
    let checkpoint = config.out_dir.join("checkpoint");
    let trainer = if resume && checkpoint.exists() {
        Trainer::load_checkpoint(policy.model, &checkpoint, config.optim.clone())?.0
    } else {
        let model = match &config.init_adapter {
            Some(path) => coe_policy::lora::load_adapters(policy.model, path)?.0,
            None => policy.model.attach_lora(&config.lora, config.seed, &device),
        };
        let mut trainer = Trainer::new(model, config.optim.clone());
        trainer.seed = config.seed;
        trainer
    };
    Ok((trainer, policy.tokenizer))
}

fn finish<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    config: &RunConfig,
) -> Result<PathBuf, TrainerError> {
    let path = config.out_dir.join("adapter.safetensors");
    coe_policy::lora::save_adapters(&trainer.model, &config.lora, &path)?;
    let text = toml::to_string(config).map_err(|e| io_err(&config.out_dir, e))?;
    std::fs::write(config.out_dir.join("config.toml"), text)
        .map_err(|e| io_err(&config.out_dir, e))?;
    plot_run(&config.out_dir);
    Ok(path)
}

/// Reads and encodes the demonstrations of `path` (JSON Lines with `messages`). Returns them
/// with the number skipped because their opening and first command exceed `context` (they
/// teach nothing at that length); an error when none is left.
pub fn load_demonstrations(
    tokenizer: &TextTokenizer,
    path: &Path,
    context: usize,
) -> Result<(Vec<Encoded>, usize), TrainerError> {
    let mut examples = Vec::new();
    let mut too_long = 0;
    for record in read_strict::<Transcript>(path)? {
        match encode(tokenizer, &record.messages, context) {
            Ok(encoded) => examples.push(encoded),
            Err(TrainerError::TooLong { .. }) => too_long += 1,
            Err(e) => return Err(e),
        }
    }
    if examples.is_empty() {
        return Err(TrainerError::Data(format!(
            "{} has no demonstrations that fit {context} tokens",
            path.display()
        )));
    }
    Ok((examples, too_long))
}

/// Supervised fine-tuning; returns the final adapter's path. With `resume`, continues from
/// `out_dir/checkpoint` exactly (same data order, dropout masks and optimiser state).
pub fn run_sft<B: AutodiffBackend>(
    config: &RunConfig,
    resume: bool,
) -> Result<PathBuf, TrainerError> {
    std::fs::create_dir_all(&config.out_dir).map_err(|e| io_err(&config.out_dir, e))?;
    let (mut trainer, tokenizer) = start::<B>(config, resume)?;
    let data_path = config
        .sft_data
        .clone()
        .ok_or_else(|| TrainerError::Data("sft_data is not set".into()))?;
    let (examples, too_long) = load_demonstrations(&tokenizer, &data_path, config.context)?;
    if too_long > 0 {
        eprintln!(
            "sft: skipped {too_long} demonstrations whose opening and first command exceed {} tokens",
            config.context
        );
    }
    let mut metrics = Metrics::open(&config.out_dir)?;
    let per_step = config.optim.grad_accum.max(1);
    let shuffled = |epoch: usize| {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        ));
        order
    };
    // The shuffle of the current epoch, made once per epoch.
    let mut order: (usize, Vec<usize>) = (0, shuffled(0));
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let progress = Progress::new("sft", trainer.step, config.optim.steps);
    while trainer.step < config.optim.steps {
        // Example k of the run is example (k mod n) of epoch (k / n)'s shuffled order.
        let first = trainer.step * per_step;
        let mut batches: Vec<Vec<&Encoded>> = Vec::with_capacity(per_step);
        for k in first..first + per_step {
            let epoch = k / examples.len();
            if order.0 != epoch {
                order = (epoch, shuffled(epoch));
            }
            batches.push(vec![&examples[order.1[k % examples.len()]]]);
        }
        tokens_seen += batches
            .iter()
            .flatten()
            .map(|e| e.tokens.len())
            .sum::<usize>();
        let report = trainer.sft_step(&batches)?;
        if report.step % config.log_every.max(1) == 0 || report.step == config.optim.steps {
            let elapsed = started.elapsed().as_secs_f64();
            let line = serde_json::json!({
                "phase": "sft", "step": report.step, "loss": report.loss, "lr": report.lr,
                "epoch": (first as f64) / examples.len() as f64,
                "tokens": tokens_seen, "tokens_per_s": tokens_seen as f64 / elapsed,
                "elapsed_s": elapsed,
            });
            progress.log(&line);
            metrics.write(&line)?;
        }
        progress.step(
            report.step,
            &format!(
                "loss {:.3} {:.0} tok/s",
                report.loss,
                tokens_seen as f64 / started.elapsed().as_secs_f64()
            ),
        );
        if report.step % config.checkpoint_every.max(1) == 0 {
            trainer.save_checkpoint(&config.out_dir.join("checkpoint"), &config.lora)?;
            plot_run(&config.out_dir);
        }
    }
    progress.finish();
    finish(&trainer, config)
}

/// Reads a task file (coe tasks, evaluation sets, MBPP or HumanEvalFix rows) the way every
/// task reader does ([`coe_data::sources::read_tasks`]); a malformed line is an error naming it.
pub fn load_tasks(path: &Path) -> Result<Vec<Task>, TrainerError> {
    let read = coe_data::sources::read_tasks(path).map_err(|e| io_err(path, e))?;
    read.strict().map_err(line_error)
}

/// Every line of a JSON Lines file the pipeline made; a malformed line is an error naming it.
pub(crate) fn read_strict<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, TrainerError> {
    let read = read_json_lines::<T>(path).map_err(|e| io_err(path, e))?;
    read.strict().map_err(line_error)
}

fn line_error(error: LineError) -> TrainerError {
    TrainerError::Io {
        path: error.source,
        message: format!("line {}: {}", error.line, error.message),
    }
}

/// RL tasks from demonstrations: each demonstration's broken program with its MBPP task's
/// tests, in file order.
pub fn tasks_from_demos(demos: &Path, mbpp: &Path) -> Result<Vec<Task>, TrainerError> {
    let mbpp_tasks = load_tasks(mbpp)?;
    let by_id: std::collections::HashMap<&str, &Task> =
        mbpp_tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let mut tasks = Vec::new();
    for demo in read_strict::<Demo>(demos)? {
        let task = by_id.get(demo.task_id.as_str()).ok_or_else(|| {
            TrainerError::Data(format!(
                "{}: no MBPP task {}",
                demos.display(),
                demo.task_id
            ))
        })?;
        tasks.push(Task {
            code: demo.corruption.broken,
            ..(*task).clone()
        });
    }
    Ok(tasks)
}

/// GRPO over live episodes; returns the final adapter's path.
pub fn run_rl<B: AutodiffBackend, E: Executor + Clone + Send>(
    config: &RunConfig,
    executor: &E,
    resume: bool,
) -> Result<PathBuf, TrainerError> {
    std::fs::create_dir_all(&config.out_dir).map_err(|e| io_err(&config.out_dir, e))?;
    let (mut trainer, tokenizer) = start::<B>(config, resume)?;
    let tasks = match (&config.rl_tasks, &config.rl_demos) {
        (Some(path), _) => load_tasks(path)?,
        (None, Some(demos)) => tasks_from_demos(demos, &config.mbpp)?,
        (None, None) => {
            return Err(TrainerError::Data("set rl_tasks or rl_demos".into()));
        }
    };
    if tasks.is_empty() {
        return Err(TrainerError::Data("no RL tasks".into()));
    }
    // Demonstration files list each task's samples together: visit them in a seeded order.
    let mut tasks = tasks;
    tasks.shuffle(&mut StdRng::seed_from_u64(config.seed));
    let mut metrics = Metrics::open(&config.out_dir)?;
    let play_config = config.play_config();
    let started = Instant::now();
    let progress = Progress::new("rl", trainer.step, config.optim.steps);
    while trainer.step < config.optim.steps {
        let step = trainer.step;
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(step as u64));
        let sampler = Policy {
            model: trainer.model.valid(),
            tokenizer: tokenizer.clone(),
        };
        let batch: Vec<Task> = (0..config.tasks_per_step)
            .map(|j| tasks[(step * config.tasks_per_step + j) % tasks.len()].clone())
            .collect();
        let (groups, stats) = play_tasks(
            &sampler,
            &batch,
            executor,
            config.grpo.group_size,
            &play_config,
            &mut rng,
            |_, _| {},
        )?;
        let mut episodes = Vec::new();
        let (mut reward_sum, mut solved, mut malformed, mut turns) = (0.0f64, 0, 0, 0);
        for group in groups {
            let rewards: Vec<Vec<f32>> = group
                .iter()
                .map(|r| r.turns.iter().map(|t| t.reward).collect())
                .collect();
            let advantages = group_advantages(&rewards);
            for (rollout, adv) in group.into_iter().zip(advantages) {
                reward_sum += f64::from(rollout.trace.total_reward);
                solved += usize::from(rollout.trace.solved);
                turns += rollout.trace.turns.len();
                malformed += rollout
                    .trace
                    .turns
                    .iter()
                    .filter(|t| matches!(t.effect, coe_tool_state::Effect::Malformed { .. }))
                    .count();
                episodes.push((rollout, adv));
            }
        }
        let count = episodes.len().max(1) as f64;
        let grpo = config.grpo;
        let trainable: Vec<_> = episodes
            .iter()
            .filter(|(r, _)| !r.turns.is_empty())
            .collect();
        let mut kls = Vec::with_capacity(trainable.len());
        let update = Instant::now();
        let report = trainer.step_with(&trainable, |model, (rollout, adv)| {
            let part = episode_loss(model, rollout, adv, &grpo)?
                .ok_or_else(|| TrainerError::Data("an episode without tokens".into()))?;
            kls.push(f64::from(part.kl));
            Ok(part.loss)
        })?;
        let kl = kls.iter().sum::<f64>() / kls.len().max(1) as f64;
        let line = serde_json::json!({
            "phase": "rl", "step": report.step, "loss": report.loss, "lr": report.lr,
            "mean_return": reward_sum / count, "solve_rate": solved as f64 / count,
            "kl": kl, "mean_turns": turns as f64 / count,
            "malformed_rate": malformed as f64 / turns.max(1) as f64,
            "episodes": stats.episodes, "env_steps": stats.env_steps,
            "generated_tokens": stats.generated_tokens,
            "rollout_s": stats.wall_s, "model_s": stats.model_s, "env_s": stats.env_s,
            "update_s": update.elapsed().as_secs_f64(),
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        progress.step(
            report.step,
            &format!(
                "return {:.2} solved {:.0}% kl {kl:.4} {:.2} episodes/s",
                reward_sum / count,
                100.0 * solved as f64 / count,
                stats.episodes as f64 / stats.wall_s.max(1e-9)
            ),
        );
        progress.log(&line);
        metrics.write(&line)?;
        if report.step % config.checkpoint_every.max(1) == 0 {
            trainer.save_checkpoint(&config.out_dir.join("checkpoint"), &config.lora)?;
            plot_run(&config.out_dir);
        }
    }
    progress.finish();
    finish(&trainer, config)
}

/// Plays `samples` episodes of each task with the policy (pipelined, see [`play_tasks`]) and
/// summarises them; `on_task(i, traces)` sees each task's episodes when they are complete.
pub fn evaluate<B: Backend, E: Executor + Clone + Send>(
    policy: &Policy<B>,
    tasks: &[Task],
    executor: &E,
    samples: usize,
    config: &PlayConfig,
    seed: u64,
    mut on_task: impl FnMut(usize, &[Trace]),
) -> Result<(EvalSummary, Vec<Vec<Trace>>), TrainerError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (groups, _) = play_tasks(
        policy,
        tasks,
        executor,
        samples,
        config,
        &mut rng,
        |i, group| {
            let traces: Vec<Trace> = group.iter().map(|r| r.trace.clone()).collect();
            on_task(i, &traces);
        },
    )?;
    let groups: Vec<Vec<Trace>> = groups
        .into_iter()
        .map(|group| group.into_iter().map(|r| r.trace).collect())
        .collect();
    Ok((summarize(&groups), groups))
}
