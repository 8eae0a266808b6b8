//! A training run's configuration (`fixtures/configs/*.toml`).

use std::path::{Path, PathBuf};

use coe_policy::{LoraConfig, SamplingConfig};
use coe_tool_state::{EpisodeConfig, Rewards};
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::grpo::GrpoConfig;
use crate::optim::OptimConfig;
use crate::rollout::PlayConfig;

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
    /// Optimiser steps between adapter snapshots kept in `snapshots/` (the checkpoint keeps
    /// only the latest), for choosing one on the validation set; 0: none.
    pub snapshot_every: usize,
    /// The optimiser.
    pub optim: OptimConfig,
    /// SFT: the demonstrations (`sft-train.jsonl` lines with `messages`).
    pub sft_data: Option<PathBuf>,
    /// Task ids whose demonstrations (SFT) and tasks (RL) are left out of training, for
    /// example `mbpp/672`, the MBPP task behind the README's example.
    pub exclude_tasks: Vec<String>,
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
    /// RL: the reward table (DESIGN.md section 7 by default; `progress` adds a credit for
    /// tests passing at a failing end).
    pub rewards: Rewards,
    /// RL and evaluation: turns per episode.
    pub max_turns: usize,
    /// RL and evaluation: how commands are sampled.
    pub sampling: SamplingConfig,
    /// RL and evaluation: threads running a turn's sandbox steps side by side (0: on the
    /// model's thread).
    pub workers: usize,
    /// RL and evaluation: episodes generating together as one batch.
    pub batch: usize,
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
            snapshot_every: 0,
            optim: OptimConfig::default(),
            sft_data: None,
            exclude_tasks: Vec::new(),
            rl_tasks: None,
            rl_demos: None,
            mbpp: PathBuf::from("fixtures/mbpp/mbpp.jsonl"),
            tasks_per_step: 8,
            grpo: GrpoConfig::default(),
            rewards: Rewards::default(),
            max_turns: 10,
            sampling: SamplingConfig::default(),
            workers: 1,
            batch: crate::rollout::DEFAULT_BATCH,
        }
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl RunConfig {
    /// Reads a TOML file and checks the settings that have a valid range.
    pub fn load(path: &Path) -> Result<Self, TrainerError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        let config: Self = toml::from_str(&text).map_err(|e| io_err(path, e))?;
        config.check().map_err(|e| io_err(path, e))?;
        Ok(config)
    }

    /// Settings that parse but make no sense: a replay share outside 0..=1, a progress credit
    /// that is negative or not below the solve reward (a repair must stay the best return).
    fn check(&self) -> Result<(), String> {
        let share = self.grpo.replay_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("grpo.replay_share must be in 0..=1, not {share}"));
        }
        let (progress, solved) = (self.rewards.progress, self.rewards.solved);
        if !(progress >= 0.0 && progress < solved) {
            return Err(format!(
                "rewards.progress must be at least 0 and below rewards.solved ({solved}), not {progress}"
            ));
        }
        Ok(())
    }

    /// The base model path.
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(coe_policy::default_model_path)
    }

    pub(crate) fn play_config(&self) -> PlayConfig {
        PlayConfig {
            episode: EpisodeConfig {
                max_turns: self.max_turns,
                rewards: self.rewards,
                ..EpisodeConfig::default()
            },
            sampling: self.sampling,
            context: self.context,
            workers: self.workers,
            batch: self.batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/configs");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 8, "{loaded} configs in {}", dir.display());
        let v2 = RunConfig::load(&dir.join("campaign-rl-v2.toml")).unwrap();
        assert!(v2.rewards.progress > 0.0 && v2.rewards.progress < v2.rewards.solved);
    }

    #[test]
    fn out_of_range_settings_and_misspelt_rewards_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |text: &str, needle: &str| {
            let path = dir.path().join("run.toml");
            std::fs::write(&path, text).unwrap();
            let error = RunConfig::load(&path).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        };
        refused("[grpo]\nreplay_share = 1.5\n", "replay_share");
        refused("[grpo]\nreplay_share = nan\n", "replay_share");
        refused("[rewards]\nprogress = -0.1\n", "rewards.progress");
        refused("[rewards]\nprogress = 1.0\n", "rewards.progress");
        refused("[rewards]\nprogres = 0.3\n", "progres");
    }
}
