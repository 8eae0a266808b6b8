//! GRPO with a reward per turn, and the RL run that uses it.
//!
//! For a group of `G` episodes of one task, episode `i` with turn rewards `r_{i,1..T_i}` (the
//! table is [`coe_tool_state::Rewards`]):
//!
//! - per-turn return: `R_{i,t} = sum_{u >= t} r_{i,u}` (undiscounted reward-to-go);
//! - advantage, normalised per turn index across the group: with `S_t` the episodes of the
//!   group that have a turn `t`, `A_{i,t} = (R_{i,t} - mean_{j in S_t} R_{j,t}) /
//!   std_{j in S_t} R_{j,t}`, and `A_{i,t} = 0` when that deviation is below `1e-4` (rewards
//!   are multiples of 0.01 or a progress credit on shares of tests: anything smaller is
//!   rounding). Turn 1 compares whole-episode returns, as GRPO does; a later turn is compared
//!   only with the same turn of the episodes that got that far, so a turn after a mistake is
//!   not blamed for it (the turns before it are: their reward-to-go includes it), identical
//!   episodes get 0 at every turn, and no group's numbers touch another's. A turn that only one
//!   episode of the group reached (the others ended earlier) is compared with the group's
//!   whole-episode returns, so a repair made after every other episode had stopped still
//!   counts;
//! - every token `k` the model generated in turn `t` gets `A_{i,t}`; with
//!   `rho = exp(log pi(k) - log pi_old(k))` (`pi_old`: the sampling policy, log-probs recorded
//!   at rollout) the objective is `min(rho A, clip(rho, 1 - eps, 1 + eps) A)`;
//! - KL to the reference policy, the policy at the start of RL (the SFT adapter merged into
//!   the base, frozen), per token, with the k3 estimator `exp(q - p) - (q - p) - 1` where
//!   `p = log pi`, `q = log pi_ref`; the reference log-probs are computed without autodiff
//!   before the update, and not at all when `beta = 0`;
//! - loss of a group = `-sum over the group's tokens (objective - beta * KL) / tokens of the
//!   group` (token-level: a 3-token `EXIT` weighs what 3 tokens of a long episode weigh), and
//!   the step's loss is the mean over groups. Groups in which every advantage is 0 teach
//!   nothing and are skipped (counted in the metrics);
//! - the update's policy is the sampling policy: LoRA dropout is off in RL, so the first
//!   update's ratio is 1 on every token (logged as `max_log_ratio`). GRPO samples at
//!   temperature 1 with no nucleus cut, so the recorded log-probs are the policy's own.
//!
//! Tasks: only a group whose episodes differ gives a signal, so each step replays tasks the
//! policy has solved sometimes. A share `replay_share` of the step's tasks is drawn among the
//! tasks played before, with weights `p (1 - p) + 0.01` where `p = (solves + 2 m) / (episodes +
//! 2)` shrinks a task's solve rate toward the run's `m` (a task played once, 4 episodes, 2
//! solved, weighs 8x one with none solved when `m` is 6%); the rest are tasks not played yet,
//! uniformly. Weights over the whole pool would not do it: with tens of thousands of unplayed
//! tasks each as likely as a half-solved one, a run of 1,000 episodes replays almost none (the
//! campaign's first 65 steps replayed 1 task of 259). The counts are saved in checkpoints, so
//! a resumed run draws the same tasks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use coe_data::formats::Demo;
use coe_exec::Executor;
use coe_policy::generate::shared_prefix_logprobs;
use coe_policy::{Adapters, Llama, LlamaConfig, Policy};
use coe_tool_state::{Effect, Task};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::config::{RunConfig, io_err};
use crate::metrics::{Metrics, plot_run};
use crate::progress::Progress;
use crate::rollout::{Rollout, play_tasks};
use crate::run::{finish, keep_snapshot, load_tasks, read_strict, start};

/// A deviation of returns below this is rounding, not a preference.
const MIN_STD: f32 = 1e-4;
/// Every played task keeps at least this selection weight.
const SELECTION_FLOOR: f64 = 0.01;
/// The checkpoint file of the task sampler's counts.
const SAMPLER_FILE: &str = "task_sampler.json";
/// The checkpoint file naming what the KL reference was built from.
const REFERENCE_FILE: &str = "reference.json";

/// GRPO hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Episodes per task.
    pub group_size: usize,
    /// Clip range of the importance ratio.
    pub epsilon: f32,
    /// Weight of the KL penalty to the reference policy (0: no penalty, no reference pass).
    pub beta: f32,
    /// Share of a step's tasks replayed from the tasks played before (see the module docs).
    pub replay_share: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 4,
            epsilon: 0.2,
            beta: 0.01,
            replay_share: 0.5,
        }
    }
}

/// Per-turn returns (reward-to-go) of each episode.
fn returns(rewards: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rewards
        .iter()
        .map(|turns| {
            let mut to_go = 0.0;
            let mut out: Vec<f32> = turns
                .iter()
                .rev()
                .map(|&r| {
                    to_go += r;
                    to_go
                })
                .collect();
            out.reverse();
            out
        })
        .collect()
}

/// Per-turn advantages of one group, normalised per turn index (see the module docs).
pub fn group_advantages(rewards: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let returns = returns(rewards);
    let longest = returns.iter().map(Vec::len).max().unwrap_or(0);
    let stats = |at: &[f32]| {
        let n = at.len() as f32;
        let mean = at.iter().sum::<f32>() / n;
        let std = (at.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        (mean, std)
    };
    // Mean and deviation of the returns at each turn index, over the episodes that have it; a
    // turn only one episode reached has no peer, so it is compared with the whole-episode
    // returns (turn 1's) instead of getting 0.
    let at = |t: usize| -> Vec<f32> { returns.iter().filter_map(|r| r.get(t).copied()).collect() };
    let whole = stats(&at(0));
    let per_turn: Vec<(f32, f32)> = (0..longest)
        .map(|t| {
            let at = at(t);
            if at.len() < 2 { whole } else { stats(&at) }
        })
        .collect();
    returns
        .iter()
        .map(|episode| {
            episode
                .iter()
                .zip(&per_turn)
                .map(|(value, &(mean, std))| {
                    if std < MIN_STD {
                        0.0
                    } else {
                        (value - mean) / std
                    }
                })
                .collect()
        })
        .collect()
}

/// A token the model generated in an episode, as the update sees it.
struct GeneratedToken {
    /// `(row 0, position)` in the episode's tokens.
    target: (usize, usize),
    /// Its log-prob under the sampling policy.
    old: f32,
    /// The index of its turn.
    turn: usize,
}

/// The tokens of an episode the update trains on.
fn generated_tokens(rollout: &Rollout) -> Result<Vec<GeneratedToken>, TrainerError> {
    let mut tokens = Vec::new();
    for (turn, span) in rollout.turns.iter().enumerate() {
        for k in 0..span.len {
            let pos = span.start + k;
            if pos == 0 || pos >= rollout.tokens.len() {
                return Err(TrainerError::Data(format!(
                    "turn span at {pos} is outside the episode"
                )));
            }
            let old = span.old_logprobs.get(k).copied().ok_or_else(|| {
                TrainerError::Data(format!("turn {turn} has no log-prob for token {k}"))
            })?;
            tokens.push(GeneratedToken {
                target: (0, pos),
                old,
                turn,
            });
        }
    }
    Ok(tokens)
}

/// How many leading tokens all `sequences` share and the update can run once for all of them:
/// their common prefix, ending before the state that predicts the earliest generated token (at
/// position `first_target`).
fn shared_len(sequences: &[&[u32]], first_target: usize) -> usize {
    let Some(first) = sequences.first() else {
        return 0;
    };
    let common = sequences[1..].iter().fold(first.len(), |len, other| {
        first[..len]
            .iter()
            .zip(other.iter())
            .take_while(|(a, b)| a == b)
            .count()
    });
    common.min(first_target.saturating_sub(1))
}

/// Log-probabilities of each episode's generated `tokens` under `model` (adapters on, if it
/// has any), the episodes' shared prefix run once.
fn logprobs_of<B: Backend>(
    model: &Llama<B>,
    rollouts: &[&Rollout],
    tokens: &[Vec<GeneratedToken>],
) -> Result<Vec<Tensor<B, 1>>, TrainerError> {
    let sequences: Vec<&[u32]> = rollouts.iter().map(|r| r.tokens.as_slice()).collect();
    let targets: Vec<Vec<usize>> = tokens
        .iter()
        .map(|t| t.iter().map(|t| t.target.1).collect())
        .collect();
    let first_target = tokens
        .iter()
        .filter_map(|t| t.first().map(|t| t.target.1))
        .min()
        .unwrap_or(0);
    let shared = shared_len(&sequences, first_target);
    Ok(shared_prefix_logprobs(
        model,
        &sequences,
        shared,
        &targets,
        Adapters::On,
    )?)
}

/// The generated tokens of each episode; an error when one has none.
fn episodes_tokens(rollouts: &[&Rollout]) -> Result<Vec<Vec<GeneratedToken>>, TrainerError> {
    rollouts
        .iter()
        .map(|r| {
            let tokens = generated_tokens(r)?;
            if tokens.is_empty() {
                return Err(TrainerError::Data("an episode without tokens".into()));
            }
            Ok(tokens)
        })
        .collect()
}

/// Log-probabilities of the generated tokens of a group's episodes under `reference` (no
/// autodiff): the `q` of the KL term, computed once before the update, the shared prompt once.
pub fn reference_logprobs<B: Backend>(
    reference: &Llama<B>,
    rollouts: &[&Rollout],
) -> Result<Vec<Vec<f32>>, TrainerError> {
    let tokens = episodes_tokens(rollouts)?;
    Ok(logprobs_of(reference, rollouts, &tokens)?
        .into_iter()
        .map(|t| {
            t.into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap_or_default()
        })
        .collect())
}

/// Several episodes' part of a group's GRPO loss.
#[derive(Debug, Clone)]
pub struct EpisodeLoss<B: Backend> {
    /// The loss to minimise: the episodes' token terms summed and divided by the normaliser
    /// (a scalar tensor that carries gradients).
    pub loss: Tensor<B, 1>,
    /// What the loss measured on the way, for the metrics.
    pub stats: UpdateStats,
}

/// What an update measured of its episodes, summed over parts with [`UpdateStats::merge`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpdateStats {
    /// Sum of the per-token KL to the reference (k3 estimator); 0 without a reference.
    pub kl_sum: f64,
    /// Generated tokens.
    pub tokens: usize,
    /// The largest `|log pi - log pi_old|` over the episodes' tokens: 0 (within rounding) on
    /// the first update of a step, when the policy is still the one that sampled.
    pub max_log_ratio: f32,
}

impl UpdateStats {
    /// The statistics of both parts together.
    pub fn merge(self, other: Self) -> Self {
        Self {
            kl_sum: self.kl_sum + other.kl_sum,
            tokens: self.tokens + other.tokens,
            max_log_ratio: self.max_log_ratio.max(other.max_log_ratio),
        }
    }
}

/// One episode of a group, as the update takes it.
#[derive(Debug, Clone, Copy)]
pub struct UpdateEpisode<'a> {
    /// The played episode.
    pub rollout: &'a Rollout,
    /// Its per-turn advantages ([`group_advantages`]).
    pub advantages: &'a [f32],
    /// Reference log-probs of its generated tokens, when the KL term is on.
    pub reference: Option<&'a [f32]>,
}

/// The GRPO loss of episodes of one group (see the module docs), divided by `normaliser` (the
/// generated tokens of the whole group). Their shared prompt runs once and its graph serves
/// all of them: one backward of this loss gives the gradients per-episode losses would.
pub fn episodes_loss<B: Backend>(
    model: &Llama<B>,
    episodes: &[UpdateEpisode<'_>],
    normaliser: usize,
    config: &GrpoConfig,
) -> Result<EpisodeLoss<B>, TrainerError> {
    let rollouts: Vec<&Rollout> = episodes.iter().map(|e| e.rollout).collect();
    let tokens = episodes_tokens(&rollouts)?;
    let logprobs = logprobs_of(model, &rollouts, &tokens)?;
    let device = model.embed.val().device();
    let mut total: Option<EpisodeLoss<B>> = None;
    for ((episode, tokens), new) in episodes.iter().zip(&tokens).zip(logprobs) {
        let part = objective(new, tokens, episode, normaliser, config, &device)?;
        total = Some(match total {
            None => part,
            Some(sum) => EpisodeLoss {
                loss: sum.loss + part.loss,
                stats: sum.stats.merge(part.stats),
            },
        });
    }
    total.ok_or_else(|| TrainerError::Data("a loss of no episodes".into()))
}

/// One episode's clipped objective and KL term from its tokens' log-probs `new`.
fn objective<B: Backend>(
    new: Tensor<B, 1>,
    tokens: &[GeneratedToken],
    episode: &UpdateEpisode<'_>,
    normaliser: usize,
    config: &GrpoConfig,
    device: &B::Device,
) -> Result<EpisodeLoss<B>, TrainerError> {
    let n = tokens.len();
    let old: Vec<f32> = tokens.iter().map(|t| t.old).collect();
    let adv: Vec<f32> = tokens
        .iter()
        .map(|t| episode.advantages.get(t.turn).copied().unwrap_or(0.0))
        .collect();
    let old = Tensor::<B, 1>::from_data(TensorData::new(old, [n]), device);
    let adv = Tensor::<B, 1>::from_data(TensorData::new(adv, [n]), device);
    let log_ratio = new.clone() - old;
    let max_log_ratio = log_ratio
        .clone()
        .detach()
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    let ratio = log_ratio.exp();
    let unclipped = ratio.clone() * adv.clone();
    let clipped = ratio.clamp(1.0 - config.epsilon, 1.0 + config.epsilon) * adv;
    let mut per_token = unclipped.min_pair(clipped);
    let mut kl_sum = 0.0;
    if let Some(reference) = episode.reference {
        if reference.len() != n {
            return Err(TrainerError::Data(format!(
                "{} reference log-probs for {n} tokens",
                reference.len()
            )));
        }
        let reference = Tensor::<B, 1>::from_data(TensorData::new(reference.to_vec(), [n]), device);
        let log_ratio_ref = reference - new;
        let kl = log_ratio_ref.clone().exp() - log_ratio_ref - 1.0;
        kl_sum = f64::from(kl.clone().detach().sum().into_scalar().elem::<f32>());
        per_token = per_token - kl.mul_scalar(config.beta);
    }
    Ok(EpisodeLoss {
        loss: per_token.sum().neg().div_scalar(normaliser.max(1) as f32),
        stats: UpdateStats {
            kl_sum,
            tokens: n,
            max_log_ratio,
        },
    })
}

/// Splits a group's episodes (by their token counts) into runs whose autodiff graphs together
/// stay within `budget` bytes ([`UPDATE_MEMORY_BYTES`] shared by the runs taken at once). An
/// episode of `t` tokens continuing a `p`-token prompt keeps, for backward, about three
/// `[heads, t - p, t]` attention arrays per layer and about `10 d + 5 ff` activations per layer
/// and token, plus its log-softmax over the vocabulary (two `vocab` rows per token, counting
/// every continuation token as a target: an upper bound). Each run is one backward with the
/// prompt run once; an episode over the budget alone runs alone.
pub fn update_chunks(
    lengths: &[usize],
    prompt: usize,
    model: &LlamaConfig,
    budget: usize,
) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, &len) in lengths.iter().enumerate() {
        let c = update_bytes(len, prompt, model);
        match chunks.last_mut() {
            Some(chunk) if used + c <= budget => {
                chunk.push(i);
                used += c;
            }
            _ => {
                chunks.push(vec![i]);
                used = c;
            }
        }
    }
    chunks
}

/// The memory an episode of `tokens` tokens continuing a `prompt`-token prompt holds for its
/// backward (see [`update_chunks`]).
pub fn update_bytes(tokens: usize, prompt: usize, model: &LlamaConfig) -> usize {
    let (layers, heads) = (model.num_hidden_layers, model.num_attention_heads);
    let per_token = 4
        * (layers * (10 * model.hidden_size + 5 * model.intermediate_size) + 2 * model.vocab_size);
    let new = tokens.saturating_sub(prompt);
    12 * layers * heads * new * tokens + per_token * new
}

/// A group the update learns from: its episodes with their per-turn advantages, and the tokens
/// they generated (the group's loss normaliser).
type KeptGroup = (Vec<(Rollout, Vec<f32>)>, usize);

/// The memory the autodiff graphs of one backward may hold (see [`update_chunks`]).
pub const UPDATE_MEMORY_BYTES: usize = 6 << 30;

/// How often each task was played and solved so far; draws the tasks of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSampler {
    episodes: Vec<u32>,
    solves: Vec<u32>,
}

impl TaskSampler {
    /// Counts for `tasks` tasks, none played yet.
    pub fn new(tasks: usize) -> Self {
        Self {
            episodes: vec![0; tasks],
            solves: vec![0; tasks],
        }
    }

    /// The run's solve rate so far, `(solves + 1) / (episodes + 2)`.
    fn mean_solve_rate(&self) -> f64 {
        let sum = |counts: &[u32]| counts.iter().map(|&c| f64::from(c)).sum::<f64>();
        (sum(&self.solves) + 1.0) / (sum(&self.episodes) + 2.0)
    }

    /// Task `i`'s weight among the played tasks: highest for tasks solved about half the
    /// time, its rate shrunk toward the run's `mean` (see the module docs).
    fn weight(&self, i: usize, mean: f64) -> f64 {
        let p = (f64::from(self.solves[i]) + 2.0 * mean) / (f64::from(self.episodes[i]) + 2.0);
        p * (1.0 - p) + SELECTION_FLOOR
    }

    /// `count` different tasks (all of them when there are fewer): on average `replay_share`
    /// of them (rounded up or down at random, so one task a step is a replay half the time at
    /// 0.5) drawn among the played tasks by weight, the rest among the unplayed ones
    /// uniformly; either kind fills in when the other runs out. A share outside 0..=1 (or NaN)
    /// counts as the nearest bound (NaN: 0); [`RunConfig::load`] refuses such configs.
    ///
    /// [`RunConfig::load`]: crate::config::RunConfig::load
    pub fn choose(&self, count: usize, replay_share: f64, rng: &mut StdRng) -> Vec<usize> {
        let (played, mut fresh): (Vec<usize>, Vec<usize>) =
            (0..self.episodes.len()).partition(|&i| self.episodes[i] > 0);
        let count = count.min(self.episodes.len());
        let share = if replay_share.is_nan() {
            0.0
        } else {
            replay_share.clamp(0.0, 1.0)
        };
        let expected = count as f64 * share;
        let wanted =
            expected.floor() as usize + usize::from(rng.random::<f64>() < expected.fract());
        let replays = wanted
            .max(count.saturating_sub(fresh.len()))
            .min(played.len());
        // Weighted draw without replacement (Efraimidis and Spirakis: the largest
        // u^(1/w), compared as ln(u)/w, which does not underflow for small weights).
        let mean = self.mean_solve_rate();
        let mut keyed: Vec<(f64, usize)> = played
            .into_iter()
            .map(|i| (rng.random::<f64>().ln() / self.weight(i, mean), i))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut chosen: Vec<usize> = keyed.into_iter().take(replays).map(|(_, i)| i).collect();
        let (new, _) = fresh.partial_shuffle(rng, count - replays);
        chosen.extend_from_slice(new);
        chosen
    }

    /// Books `episodes` episodes of task `i`, `solved` of them solved.
    pub fn record(&mut self, i: usize, episodes: usize, solved: usize) {
        let add = |count: &mut u32, n: usize| *count = count.saturating_add(n as u32);
        add(&mut self.episodes[i], episodes);
        add(&mut self.solves[i], solved);
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

/// The reference policy of the KL term: the base with `init_adapter` (the SFT adapter, when RL
/// starts from one) merged in, on the inference backend. Built from the files, so a resumed run
/// has the same reference as the run it resumes.
pub fn reference_policy<B: Backend>(
    base: Llama<B>,
    init_adapter: Option<&Path>,
) -> Result<Llama<B>, TrainerError> {
    Ok(match init_adapter {
        Some(path) => coe_policy::lora::load_adapters(base, path)?.0.merge_lora(),
        None => base,
    })
}

/// What identifies the KL reference of a run: the sha256 of the adapter file it starts from
/// (`null`: the base model alone). Kept in the checkpoint, since the reference is rebuilt from
/// the files when a run resumes.
fn reference_identity(init_adapter: Option<&Path>) -> Result<serde_json::Value, TrainerError> {
    let sha256 = match init_adapter {
        Some(path) => Some(coe_cache::sha256_file(path).map_err(|e| io_err(path, e))?),
        None => None,
    };
    Ok(serde_json::json!({ "init_adapter_sha256": sha256 }))
}

/// Refuses to resume a run whose KL reference came from other adapters than `identity` names
/// (a resumed run given another `--init-adapter` would otherwise anchor to another policy in
/// silence). A checkpoint without the file, written before it existed, is taken as it is.
fn check_reference(checkpoint: &Path, identity: &serde_json::Value) -> Result<(), TrainerError> {
    let path = checkpoint.join(REFERENCE_FILE);
    let saved: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io_err(&path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path, e)),
    };
    if saved == *identity {
        Ok(())
    } else {
        Err(TrainerError::Data(format!(
            "{}: the run's KL reference was built from {saved}, this one would be built from \
             {identity}: resume with the init adapter the run started from",
            path.display()
        )))
    }
}

/// The model rollouts sample from: the policy being trained, on the inference backend, with
/// its adapters merged into the weights (one matrix product per projection instead of three;
/// made once per optimiser step). Its log-probs are the update's `pi_old`.
pub fn sampling_model<B: AutodiffBackend>(model: &Llama<B>) -> Llama<B::InnerBackend> {
    model.valid().merge_lora()
}

/// GRPO over live episodes; returns the final adapter's path.
pub fn run_rl<B: AutodiffBackend, E: Executor + Clone + Send>(
    config: &RunConfig,
    executor: &E,
    resume: bool,
) -> Result<PathBuf, TrainerError> {
    if config.sampling.temperature != 1.0 || config.sampling.top_p < 1.0 {
        return Err(TrainerError::Data(
            "GRPO samples at temperature 1 with top_p 1: the importance ratio needs the \
             policy's own log-probs"
                .into(),
        ));
    }
    std::fs::create_dir_all(&config.out_dir).map_err(|e| io_err(&config.out_dir, e))?;
    // Checked before anything loads: a refused resumption costs nothing.
    let reference_id = reference_identity(config.init_adapter.as_deref())?;
    if resume {
        check_reference(&config.out_dir.join("checkpoint"), &reference_id)?;
    }
    let started_run = start::<B>(config, resume)?;
    let (mut trainer, tokenizer, lora) =
        (started_run.trainer, started_run.tokenizer, started_run.lora);
    // On-policy: the update must score tokens with the policy that sampled them.
    trainer.model.set_lora_dropout(0.0);
    let reference = if config.grpo.beta > 0.0 {
        let base =
            Policy::<B::InnerBackend>::load(&config.model_path(), &Default::default())?.model;
        Some(reference_policy(base, config.init_adapter.as_deref())?)
    } else {
        None
    };
    let tasks = match (&config.rl_tasks, &config.rl_demos) {
        (Some(path), _) => load_tasks(path)?,
        (None, Some(demos)) => tasks_from_demos(demos, &config.mbpp)?,
        (None, None) => {
            return Err(TrainerError::Data("set rl_tasks or rl_demos".into()));
        }
    };
    let tasks: Vec<Task> = tasks
        .into_iter()
        .filter(|task| !config.exclude_tasks.contains(&task.task_id))
        .collect();
    if tasks.is_empty() {
        return Err(TrainerError::Data("no RL tasks".into()));
    }
    // Demonstration files list each task's samples together: visit them in a seeded order.
    let mut tasks = tasks;
    tasks.shuffle(&mut StdRng::seed_from_u64(config.seed));
    let checkpoint = config.out_dir.join("checkpoint");
    let mut sampler_state = match std::fs::read(checkpoint.join(SAMPLER_FILE)) {
        Ok(bytes) if resume => serde_json::from_slice::<TaskSampler>(&bytes)
            .map_err(|e| io_err(&checkpoint.join(SAMPLER_FILE), e))?,
        _ => TaskSampler::new(tasks.len()),
    };
    if sampler_state.episodes.len() != tasks.len() {
        return Err(TrainerError::Data(format!(
            "the checkpoint's task counts are for {} tasks, the run has {}",
            sampler_state.episodes.len(),
            tasks.len()
        )));
    }
    let mut metrics = Metrics::open(&config.out_dir, trainer.step)?;
    let play_config = config.play_config();
    let started = Instant::now();
    let progress = Progress::new("rl", trainer.step, config.optim.steps);
    while trainer.step < config.optim.steps {
        let step = trainer.step;
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(step as u64));
        let sampler = Policy {
            model: sampling_model(&trainer.model),
            tokenizer: tokenizer.clone(),
        };
        let chosen =
            sampler_state.choose(config.tasks_per_step, config.grpo.replay_share, &mut rng);
        let batch: Vec<Task> = chosen.iter().map(|&i| tasks[i].clone()).collect();
        let (groups, stats) = play_tasks(
            &sampler,
            &batch,
            executor,
            config.grpo.group_size,
            &play_config,
            &mut rng,
            |_, _| {},
        )?;
        let (mut reward_sum, mut solved, mut malformed, mut turns, mut count) =
            (0.0f64, 0, 0, 0, 0usize);
        // Episodes the context cut before an end: they score like the turn limit.
        let mut context_cut = 0usize;
        // Per kept group: its episodes with their advantages, and its generated tokens.
        let mut kept: Vec<KeptGroup> = Vec::new();
        let mut skipped_groups = 0;
        for (&task, group) in chosen.iter().zip(groups) {
            let group_solved = group.iter().filter(|r| r.trace.solved).count();
            sampler_state.record(task, group.len(), group_solved);
            for rollout in &group {
                count += 1;
                context_cut += usize::from(rollout.context_full);
                reward_sum += f64::from(rollout.trace.total_reward);
                turns += rollout.trace.turns.len();
                malformed += rollout
                    .trace
                    .turns
                    .iter()
                    .filter(|t| matches!(t.effect, Effect::Malformed { .. }))
                    .count();
            }
            solved += group_solved;
            let rewards: Vec<Vec<f32>> = group
                .iter()
                .map(|r| r.turns.iter().map(|t| t.reward).collect())
                .collect();
            let advantages = group_advantages(&rewards);
            if advantages.iter().flatten().all(|&a| a == 0.0) {
                skipped_groups += 1;
                continue;
            }
            let tokens: usize = group
                .iter()
                .flat_map(|r| r.turns.iter().map(|t| t.len))
                .sum();
            let episodes: Vec<(Rollout, Vec<f32>)> = group
                .into_iter()
                .zip(advantages)
                .filter(|(rollout, _)| rollout.turns.iter().any(|t| t.len > 0))
                .collect();
            if !episodes.is_empty() {
                kept.push((episodes, tokens));
            }
        }
        let kept_groups = chosen.len() - skipped_groups;
        let reference_clock = Instant::now();
        let references: Vec<Option<Vec<Vec<f32>>>> = kept
            .iter()
            .map(|(episodes, _)| {
                let rollouts: Vec<&Rollout> = episodes.iter().map(|(r, _)| r).collect();
                reference
                    .as_ref()
                    .map(|model| reference_logprobs(model, &rollouts))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let reference_s = reference_clock.elapsed().as_secs_f64();
        // One backward per run of a group's episodes that fits the memory budget, the group's
        // prompt computed once per run.
        let model_config = trainer.model.config();
        // Runs taken at once share the memory budget.
        let budget = UPDATE_MEMORY_BYTES / trainer.parts_at_once();
        // (group, its episodes in the run, the run's memory).
        let parts: Vec<(usize, Vec<usize>, usize)> = kept
            .iter()
            .enumerate()
            .flat_map(|(g, (episodes, _))| {
                let lengths: Vec<usize> = episodes.iter().map(|(r, _)| r.tokens.len()).collect();
                let prompt = episodes
                    .iter()
                    .filter_map(|(r, _)| r.turns.first().map(|t| t.start))
                    .min()
                    .unwrap_or(0);
                update_chunks(&lengths, prompt, model_config, budget)
                    .into_iter()
                    .map(move |chunk| {
                        let bytes = chunk
                            .iter()
                            .map(|&i| update_bytes(lengths[i], prompt, model_config))
                            .sum();
                        (g, chunk, bytes)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let update = Instant::now();
        let grpo = config.grpo;
        let (report, part_stats) = if parts.is_empty() {
            (trainer.skip_step(), Vec::new())
        } else {
            let work = |(g, chunk, _): &(usize, Vec<usize>, usize)| {
                let episodes = &kept[*g].0;
                chunk
                    .iter()
                    .map(|&i| episodes[i].0.tokens.len() as u64)
                    .sum()
            };
            // A run over its share of the budget (one long episode) runs with nothing beside
            // it: two at once could need more memory than the machine has.
            let alone = |(_, _, bytes): &(usize, Vec<usize>, usize)| *bytes > budget;
            trainer.step_sum(&parts, work, alone, |model, (g, chunk, _)| {
                let (episodes, tokens) = &kept[*g];
                let update: Vec<UpdateEpisode<'_>> = chunk
                    .iter()
                    .map(|&i| UpdateEpisode {
                        rollout: &episodes[i].0,
                        advantages: &episodes[i].1,
                        reference: references[*g].as_ref().map(|r| r[i].as_slice()),
                    })
                    .collect();
                let part = episodes_loss(model, &update, *tokens, &grpo)?;
                Ok((part.loss.div_scalar(kept_groups.max(1) as f32), part.stats))
            })?
        };
        let update_stats = part_stats
            .into_iter()
            .fold(UpdateStats::default(), UpdateStats::merge);
        let kl = update_stats.kl_sum / update_stats.tokens.max(1) as f64;
        let count = count.max(1) as f64;
        let line = serde_json::json!({
            "phase": "rl", "step": report.step, "loss": report.loss, "lr": report.lr,
            "mean_return": reward_sum / count, "solve_rate": solved as f64 / count,
            "kl": kl, "mean_turns": turns as f64 / count,
            "malformed_rate": malformed as f64 / turns.max(1) as f64,
            "skipped_groups": skipped_groups, "max_log_ratio": update_stats.max_log_ratio,
            "context_cut_rate": context_cut as f64 / count,
            "episodes": stats.episodes, "env_steps": stats.env_steps,
            "generated_tokens": stats.generated_tokens,
            "rollout_s": stats.wall_s, "model_s": stats.model_s(), "env_s": stats.env_s,
            "reference_s": reference_s,
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
            let counts = serde_json::to_vec(&sampler_state).map_err(|e| io_err(&checkpoint, e))?;
            let reference =
                serde_json::to_vec(&reference_id).map_err(|e| io_err(&checkpoint, e))?;
            trainer.save_checkpoint(
                &checkpoint,
                &lora,
                &[(SAMPLER_FILE, counts), (REFERENCE_FILE, reference)],
            )?;
            plot_run(&config.out_dir);
        }
        keep_snapshot(&trainer, &lora, config)?;
    }
    progress.finish();
    finish(&trainer, &lora, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_resumes_only_with_the_reference_it_started_from() {
        let dir = tempfile::tempdir().unwrap();
        let (sft, other) = (dir.path().join("sft.bin"), dir.path().join("other.bin"));
        std::fs::write(&sft, b"adapter one").unwrap();
        std::fs::write(&other, b"adapter two").unwrap();
        let checkpoint = dir.path().join("checkpoint");
        std::fs::create_dir_all(&checkpoint).unwrap();
        let started = reference_identity(Some(&sft)).unwrap();
        // A checkpoint from before the file existed resumes as it did.
        check_reference(&checkpoint, &started).unwrap();
        std::fs::write(
            checkpoint.join(REFERENCE_FILE),
            serde_json::to_vec(&started).unwrap(),
        )
        .unwrap();
        check_reference(&checkpoint, &reference_identity(Some(&sft)).unwrap()).unwrap();
        for other in [
            reference_identity(Some(&other)).unwrap(),
            reference_identity(None).unwrap(),
        ] {
            let error = check_reference(&checkpoint, &other)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("init adapter the run started from"),
                "{error}"
            );
        }
        assert!(reference_identity(Some(&dir.path().join("missing"))).is_err());
    }

    const TURN: f32 = -0.01;

    #[test]
    fn identical_episodes_get_zero_advantage_at_every_turn() {
        // Four optimal episodes: repair on turn 1, EXIT on turn 2. Pooled normalisation gave
        // the EXIT turn -1 every time; per turn index there is nothing to prefer.
        let optimal = vec![1.0 + TURN, TURN];
        let adv = group_advantages(&vec![optimal; 4]);
        assert!(adv.iter().flatten().all(|&a| a == 0.0), "{adv:?}");
        let failing = vec![TURN, TURN, -0.5 + TURN];
        let adv = group_advantages(&vec![failing; 3]);
        assert!(adv.iter().flatten().all(|&a| a == 0.0), "{adv:?}");
        assert!(group_advantages(&[]).is_empty());
    }

    #[test]
    fn a_solving_episode_is_credited_at_every_turn_over_the_same_turn_of_failing_ones() {
        let turns = 5;
        // Solves on turn 3, exits on turn 4.
        let solver = vec![TURN, TURN, 1.0 + TURN, TURN];
        // Valid commands to the limit; one malformed command; giving up on turn 2.
        let mut tried = vec![TURN; turns];
        tried[turns - 1] += -0.5;
        let mut sloppy = tried.clone();
        sloppy[1] += -0.5;
        let quitter = vec![TURN, TURN - 0.5 + TURN * (turns - 2) as f32];
        let adv = group_advantages(&[solver.clone(), tried, sloppy, quitter]);
        for t in 0..solver.len() {
            for (other, row) in adv.iter().enumerate().skip(1) {
                if let Some(&a) = row.get(t) {
                    assert!(
                        adv[0][t] > a,
                        "turn {t}: solver {} vs episode {other} {a}",
                        adv[0][t]
                    );
                }
            }
        }
        // The turns up to the malformed one carry its penalty in their reward-to-go (turn 1
        // of the sloppy episode is below the tried one's), the turns after it compare equal.
        assert!(adv[2][0] < adv[1][0]);
        assert_eq!(adv[2][3], adv[1][3]);
    }

    #[test]
    fn a_repair_after_every_other_episode_ended_still_gets_credit() {
        // Three episodes stop by turn 2 (context cut, EXIT); the fourth repairs on turn 4.
        let late_solver = vec![TURN, TURN, TURN, 1.0 + TURN, TURN];
        let stopped = vec![TURN, TURN - 0.5];
        let adv = group_advantages(&[late_solver, stopped.clone(), stopped.clone(), stopped]);
        for (t, &a) in adv[0].iter().enumerate().skip(2) {
            assert!(a > 0.0, "turn {}: {a}", t + 1);
        }
        // Alone at a turn, compared with the whole-episode returns: its return-to-go from
        // turn 5 (the EXIT) is below its turn-1 return, yet above the stopped ones'.
        assert!(adv[0][3] > adv[0][4]);
        // One episode alone in its group still learns nothing.
        assert!(
            group_advantages(&[vec![1.0, TURN]])
                .iter()
                .flatten()
                .all(|&a| a == 0.0)
        );
    }

    #[test]
    fn no_advantage_depends_on_another_group() {
        let a = vec![vec![1.0 + TURN, TURN], vec![TURN, -0.5 + TURN]];
        let b = vec![vec![-0.5 + TURN], vec![1.0 + TURN, TURN], vec![TURN, TURN]];
        let alone = group_advantages(&a);
        // The step maps groups one by one; a's numbers are the same next to any other group.
        let together: Vec<Vec<Vec<f32>>> = [&a, &b].iter().map(|g| group_advantages(g)).collect();
        assert_eq!(together[0], alone);
        let mut pooled = a.clone();
        pooled.extend(b);
        assert_ne!(
            group_advantages(&pooled)[..2],
            alone[..],
            "pooling would change them"
        );
    }

    #[test]
    fn the_sampler_replays_tasks_solved_sometimes_and_resumes_exactly() {
        // A large pool, as in the campaign: 22 played tasks among 10,000, one half solved,
        // twenty never solved, one always solved.
        let mut sampler = TaskSampler::new(10_000);
        sampler.record(0, 4, 2);
        (1..=20).for_each(|i| sampler.record(i, 4, 0));
        sampler.record(21, 4, 4);
        let mean = sampler.mean_solve_rate();
        assert!(sampler.weight(0, mean) > 5.0 * sampler.weight(1, mean));
        assert!(sampler.weight(0, mean) > sampler.weight(21, mean));
        let mut counts = [0; 22];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let chosen = sampler.choose(4, 0.5, &mut rng);
            // Two replays and two unplayed tasks, all different.
            assert_eq!(chosen.iter().filter(|&&i| i < 22).count(), 2, "{chosen:?}");
            let mut distinct = chosen.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 4);
            for i in chosen.into_iter().filter(|&i| i < 22) {
                counts[i] += 1;
            }
        }
        // Expected about 770 against at most about 145 (a simulation of the same draw).
        let most_failed = counts[1..=20].iter().max().copied().unwrap_or(0);
        assert!(counts[0] > 3 * most_failed, "{counts:?}");
        // One task a step at share 0.5: a replay about half the time, so new tasks keep
        // coming (rounding 0.5 up would replay the first task forever).
        let replayed = (0..1000)
            .filter(|_| sampler.choose(1, 0.5, &mut rng)[0] < 22)
            .count();
        assert!((400..600).contains(&replayed), "{replayed}");
        assert!(sampler.choose(0, 0.5, &mut rng).is_empty());
        assert!(
            sampler
                .choose(4, f64::NAN, &mut rng)
                .iter()
                .all(|&i| i >= 22)
        );
        assert_eq!(
            sampler
                .choose(4, 7.0, &mut rng)
                .iter()
                .filter(|&&i| i < 22)
                .count(),
            4
        );
        // Nothing played yet, or no replay share: only unplayed tasks.
        let fresh = TaskSampler::new(10).choose(4, 0.5, &mut rng);
        assert_eq!(fresh.len(), 4);
        assert!(sampler.choose(4, 0.0, &mut rng).iter().all(|&i| i >= 22));
        // Every task when asked for more, played ones filling in for missing fresh ones.
        let mut small = TaskSampler::new(3);
        small.record(1, 4, 1);
        let mut all = small.choose(5, 0.0, &mut rng);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
        // Saved and restored counts draw the same tasks from the same seed.
        let restored: TaskSampler =
            serde_json::from_str(&serde_json::to_string(&sampler).unwrap()).unwrap();
        assert_eq!(
            sampler.choose(4, 0.5, &mut StdRng::seed_from_u64(9)),
            restored.choose(4, 0.5, &mut StdRng::seed_from_u64(9))
        );
    }

    #[test]
    fn update_runs_fit_the_memory_budget() {
        // SmolLM2-135M's shape.
        let model = LlamaConfig {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            ..LlamaConfig::tiny()
        };
        let prompt = 400;
        // Four short episodes share one run, and so one pass over the prompt.
        assert_eq!(
            update_chunks(&[600, 700, 650, 800], prompt, &model, UPDATE_MEMORY_BYTES),
            [vec![0, 1, 2, 3]]
        );
        // Long ones split into runs; one too long alone runs alone.
        let lengths = [2000, 2048, 1900, 30_000];
        let chunks = update_chunks(&lengths, prompt, &model, UPDATE_MEMORY_BYTES);
        assert_eq!(chunks.concat(), [0, 1, 2, 3]);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.last().unwrap(), &[3]);
        // Many short ones still fill runs, not one unbounded run: the per-token terms count.
        let short = vec![600; 40];
        assert!(update_chunks(&short, prompt, &model, UPDATE_MEMORY_BYTES).len() > 1);
    }

    #[test]
    fn the_shared_part_ends_before_the_first_generated_token_is_predicted() {
        let (a, b, c) = ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [1, 2, 7, 4, 9]);
        // Prompt [1, 2, 3, 4], commands from position 4: the state after token 4 predicts the
        // first command token, so the shared part stops at 3 tokens.
        assert_eq!(shared_len(&[&a, &b], 4), 3);
        assert_eq!(shared_len(&[&a, &b, &c], 4), 2);
        assert_eq!(shared_len(&[&a], 4), 3);
        assert_eq!(shared_len(&[&a, &a], 0), 0);
        assert_eq!(shared_len(&[], 4), 0);
    }
}
