//! Evaluation: episodes per task with the policy, then pass@1, pass@k (the unbiased estimator
//! of Chen et al. 2021), mean turns, malformed-command rate and solved-then-broken rate.

use burn::prelude::Backend;
use coe_exec::Executor;
use coe_policy::Policy;
use coe_tool_state::{Effect, Task, Trace};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::TrainerError;
use crate::rollout::{PlayConfig, play_tasks};

/// Unbiased pass@k for one task with `n` samples of which `c` passed:
/// `1 - C(n - c, k) / C(n, k)`, computed as a product to stay exact for large `n`.
/// `k` is clamped to `n`; `n = 0` gives 0.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    let k = k.min(n);
    if n == 0 || k == 0 {
        return 0.0;
    }
    let c = c.min(n);
    if n - c < k {
        return 1.0;
    }
    // C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    let fail: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - fail
}

/// Metrics of an evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Episodes per task.
    pub samples: usize,
    /// Mean pass@1 over tasks, in percent.
    pub pass_at_1: f64,
    /// Mean pass@k over tasks (k = `samples`), in percent.
    pub pass_at_k: f64,
    /// Mean turns per episode.
    pub mean_turns: f64,
    /// Share of turns whose output was not a command, in percent.
    pub malformed_rate: f64,
    /// Share of episodes that passed at some turn but not at the end, in percent.
    pub solved_then_broken_rate: f64,
}

/// Summarises episodes grouped by task (each inner vector: one task's samples).
pub fn summarize(groups: &[Vec<Trace>]) -> EvalSummary {
    let samples = groups.iter().map(Vec::len).max().unwrap_or(0);
    let tasks = groups.len().max(1) as f64;
    let mut pass1 = 0.0;
    let mut passk = 0.0;
    let (mut episodes, mut turns, mut malformed, mut broken) = (0usize, 0usize, 0usize, 0usize);
    for group in groups {
        let solved = group.iter().filter(|t| t.solved).count();
        pass1 += pass_at_k(group.len(), solved, 1);
        passk += pass_at_k(group.len(), solved, samples);
        for trace in group {
            episodes += 1;
            turns += trace.turns.len();
            malformed += trace
                .turns
                .iter()
                .filter(|t| matches!(t.effect, Effect::Malformed { .. }))
                .count();
            broken += usize::from(trace.solved_then_broken());
        }
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    EvalSummary {
        tasks: groups.len(),
        samples,
        pass_at_1: 100.0 * pass1 / tasks,
        pass_at_k: 100.0 * passk / tasks,
        mean_turns: if episodes == 0 {
            0.0
        } else {
            turns as f64 / episodes as f64
        },
        malformed_rate: pct(malformed, turns),
        solved_then_broken_rate: pct(broken, episodes),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: u64, k: u64) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        for n in 1..12u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let expected = 1.0 - binomial(n - c, k) / binomial(n, k);
                    let got = pass_at_k(n as usize, c as usize, k as usize);
                    assert!((got - expected).abs() < 1e-9, "n={n} c={c} k={k}");
                }
            }
        }
        assert_eq!(pass_at_k(4, 1, 1), 0.25);
        assert_eq!(pass_at_k(0, 0, 1), 0.0);
        assert_eq!(pass_at_k(4, 4, 9), 1.0);
    }
}
