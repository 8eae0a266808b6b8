//! GRPO with a reward per turn.
//!
//! For a group of `G` episodes of one task, episode `i` with turn rewards `r_{i,1..T_i}`:
//!
//! - per-turn return: `R_{i,t} = sum_{u >= t} r_{i,u}` (undiscounted reward-to-go);
//! - advantage, normalised over all turns of all episodes of the group:
//!   `A_{i,t} = (R_{i,t} - mean(R)) / (std(R) + 1e-6)`, and `A = 0` for every turn when
//!   `std(R) < 1e-6` (nothing to prefer);
//! - every token `k` the model generated in turn `t` gets `A_{i,t}`; with
//!   `rho = exp(log pi(k) - log pi_old(k))` (`pi_old`: the sampling policy, log-probs recorded
//!   at rollout) the objective is `min(rho A, clip(rho, 1 - eps, 1 + eps) A)`;
//! - KL to the frozen base (adapters off), per token, with the k3 estimator
//!   `exp(q - p) - (q - p) - 1` where `p = log pi`, `q = log pi_ref`;
//! - loss = `-mean over tokens (objective - beta * KL)`; defaults `eps = 0.2`, `beta = 0.01`.

use burn::prelude::*;
use burn::tensor::TensorData;
use coe_policy::generate::token_logprobs;
use coe_policy::{Adapters, Llama};
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::rollout::Rollout;

/// GRPO hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Episodes per task.
    pub group_size: usize,
    /// Clip range of the importance ratio.
    pub epsilon: f32,
    /// Weight of the KL penalty to the frozen base.
    pub beta: f32,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 4,
            epsilon: 0.2,
            beta: 0.01,
        }
    }
}

/// Normalised per-turn advantages of a group (see the module docs for the formula).
pub fn group_advantages(rewards: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let returns: Vec<Vec<f32>> = rewards
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
        .collect();
    let all: Vec<f32> = returns.iter().flatten().copied().collect();
    if all.is_empty() {
        return returns;
    }
    let mean = all.iter().sum::<f32>() / all.len() as f32;
    let var = all.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / all.len() as f32;
    let std = var.sqrt();
    returns
        .into_iter()
        .map(|turns| {
            turns
                .into_iter()
                .map(|r| {
                    if std < 1e-6 {
                        0.0
                    } else {
                        (r - mean) / (std + 1e-6)
                    }
                })
                .collect()
        })
        .collect()
}

/// One episode's part of the GRPO objective.
#[derive(Debug, Clone)]
pub struct EpisodeLoss<B: Backend> {
    /// The loss to minimise (a scalar tensor that carries gradients).
    pub loss: Tensor<B, 1>,
    /// Mean per-token KL to the frozen base (k3 estimator), for the logs.
    pub kl: f32,
}

/// The GRPO loss of one episode, given its turns' advantages. `None` when the episode has no
/// generated tokens.
pub fn episode_loss<B: Backend>(
    model: &Llama<B>,
    rollout: &Rollout,
    advantages: &[f32],
    config: &GrpoConfig,
) -> Result<Option<EpisodeLoss<B>>, TrainerError> {
    let mut targets = Vec::new();
    let mut old = Vec::new();
    let mut adv = Vec::new();
    for (span, &a) in rollout.turns.iter().zip(advantages) {
        for k in 0..span.len {
            let pos = span.start + k;
            if pos == 0 || pos >= rollout.tokens.len() {
                return Err(TrainerError::Data(format!(
                    "turn span at {pos} is outside the episode"
                )));
            }
            targets.push((0, pos));
            old.push(span.old_logprobs.get(k).copied().unwrap_or(0.0));
            adv.push(a);
        }
    }
    if targets.is_empty() {
        return Ok(None);
    }
    let n = targets.len();
    let device = model.embed.val().device();
    let rows = vec![rollout.tokens.clone()];
    let new = token_logprobs(model, &rows, &targets, Adapters::On)?;
    let reference = token_logprobs(model, &rows, &targets, Adapters::Off)?.detach();
    let old = Tensor::<B, 1>::from_data(TensorData::new(old, [n]), &device);
    let adv = Tensor::<B, 1>::from_data(TensorData::new(adv, [n]), &device);
    let ratio = (new.clone() - old).exp();
    let unclipped = ratio.clone() * adv.clone();
    let clipped = ratio.clamp(1.0 - config.epsilon, 1.0 + config.epsilon) * adv;
    let objective = unclipped.min_pair(clipped);
    let log_ratio_ref = reference - new;
    let kl = log_ratio_ref.clone().exp() - log_ratio_ref - 1.0;
    let mean_kl = kl.clone().detach().mean().into_scalar().elem::<f32>();
    let per_token = objective - kl.mul_scalar(config.beta);
    Ok(Some(EpisodeLoss {
        loss: per_token.mean().neg(),
        kl: mean_kl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_rewards_give_zero_advantages() {
        let adv = group_advantages(&[vec![0.0, -0.5], vec![0.0, -0.5], vec![0.0, -0.5]]);
        assert!(adv.iter().flatten().all(|&a| a == 0.0));
        assert!(group_advantages(&[]).is_empty());
    }

    #[test]
    fn returns_are_reward_to_go_and_normalised() {
        let adv = group_advantages(&[vec![0.0, 1.0], vec![-0.5, -0.5]]);
        // Returns: [1, 1] and [-1, -0.5]; mean 0.125.
        assert!(adv[0][0] > 0.0 && adv[0][0] == adv[0][1]);
        assert!(adv[1][0] < adv[1][1] && adv[1][1] < 0.0);
        let all: Vec<f32> = adv.iter().flatten().copied().collect();
        let mean = all.iter().sum::<f32>() / all.len() as f32;
        assert!(mean.abs() < 1e-5);
    }
}
