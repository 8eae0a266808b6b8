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
use crate::rollout::{PlayConfig, play_tasks_seeded};

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

/// One task's episodes, counted: what a summary is made of, and what lets summaries of
/// different shards of one set merge into exactly the summary of the whole set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's position in its task file (shards are merged in this order).
    #[serde(default)]
    pub index: usize,
    /// The task.
    pub task_id: String,
    /// Episodes (or answers) played.
    pub samples: usize,
    /// Of them, solved.
    pub solved: usize,
    /// Turns over all its episodes.
    pub turns: usize,
    /// Of them, malformed.
    pub malformed_turns: usize,
    /// Episodes that passed at some turn but not at the end.
    pub solved_then_broken: usize,
}

impl TaskResult {
    /// Counts one task's episodes.
    pub fn of_traces(task_id: &str, traces: &[Trace]) -> Self {
        Self {
            index: 0,
            task_id: task_id.to_owned(),
            samples: traces.len(),
            solved: traces.iter().filter(|t| t.solved).count(),
            turns: traces.iter().map(|t| t.turns.len()).sum(),
            malformed_turns: traces
                .iter()
                .flat_map(|t| &t.turns)
                .filter(|t| matches!(t.effect, Effect::Malformed { .. }))
                .count(),
            solved_then_broken: traces.iter().filter(|t| t.solved_then_broken()).count(),
        }
    }
}

/// A 95% interval, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// How an evaluation played, kept in its summary so that a summary says what it measured and
/// shards played differently are not merged as one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Turns allowed per episode (direct answers: 1).
    pub max_turns: usize,
    /// The model's context in tokens.
    pub context: usize,
    /// The sampling seed.
    pub seed: u64,
    /// Whole-program answers (the direct baseline) rather than edit episodes.
    pub direct: bool,
    /// The adapters evaluated (file name), `None` for the base model.
    pub adapter: Option<String>,
}

/// Metrics of an evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// How it played; absent in summaries written before settings were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<EvalSettings>,
    /// Tasks evaluated.
    pub tasks: usize,
    /// Episodes per task.
    pub samples: usize,
    /// Mean pass@1 over tasks, in percent.
    pub pass_at_1: f64,
    /// Mean pass@k over tasks (k = `samples`), in percent.
    pub pass_at_k: f64,
    /// 95% interval of `pass_at_1` (bootstrap over source problems: tasks, where each task has
    /// its own program); absent in summaries written before
    /// intervals were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_1_interval: Option<Interval>,
    /// 95% interval of `pass_at_k` (as `pass_at_1_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_k_interval: Option<Interval>,
    /// Mean turns per episode.
    pub mean_turns: f64,
    /// Share of turns whose output was not a command, in percent.
    pub malformed_rate: f64,
    /// Share of episodes that passed at some turn but not at the end, in percent.
    pub solved_then_broken_rate: f64,
    /// Wall time of the evaluation in seconds (summed over shards when merged), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Every task's counts, in task order: merging shards concatenates these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_task: Vec<TaskResult>,
}

/// Resamples of the bootstrap interval; fixed, with a fixed seed, so a summary is reproducible.
const BOOTSTRAP_RESAMPLES: usize = 2000;

impl EvalSummary {
    /// The summary of tasks' counts (pass@k with k = the most samples of any task).
    pub fn from_tasks(per_task: Vec<TaskResult>) -> Self {
        let samples = per_task.iter().map(|t| t.samples).max().unwrap_or(0);
        let pass1: Vec<f64> = per_task
            .iter()
            .map(|t| 100.0 * pass_at_k(t.samples, t.solved, 1))
            .collect();
        let passk: Vec<f64> = per_task
            .iter()
            .map(|t| 100.0 * pass_at_k(t.samples, t.solved, samples))
            .collect();
        let clusters = source_clusters(per_task.iter().map(|t| t.task_id.as_str()));
        let sum = |f: fn(&TaskResult) -> usize| per_task.iter().map(f).sum::<usize>();
        let (episodes, turns) = (sum(|t| t.samples), sum(|t| t.turns));
        let pct = |a: usize, b: usize| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        Self {
            settings: None,
            tasks: per_task.len(),
            samples,
            pass_at_1: mean(&pass1),
            pass_at_k: mean(&passk),
            pass_at_1_interval: interval(&pass1, &clusters),
            pass_at_k_interval: interval(&passk, &clusters),
            mean_turns: if episodes == 0 {
                0.0
            } else {
                turns as f64 / episodes as f64
            },
            malformed_rate: pct(sum(|t| t.malformed_turns), turns),
            solved_then_broken_rate: pct(sum(|t| t.solved_then_broken), episodes),
            wall_s: None,
            per_task,
        }
    }

    /// The summary of several shards of one set, exactly as if it had been evaluated at once
    /// (tasks in shard order; the wall time is the shards' sum). An error when a shard has no
    /// per-task counts (written before they were kept) or two shards hold the same task (shards
    /// of different runs or splits), which would count it twice.
    pub fn merge(shards: &[EvalSummary]) -> Result<Self, String> {
        if shards.iter().any(|s| s.per_task.len() != s.tasks) {
            return Err("a shard has no per-task counts (rerun it with this coe)".into());
        }
        let mut per_task: Vec<TaskResult> =
            shards.iter().flat_map(|s| s.per_task.clone()).collect();
        per_task.sort_by_key(|t| t.index);
        if let Some(pair) = per_task.windows(2).find(|p| p[0].index == p[1].index) {
            return Err(format!(
                "task {} ({}) is in two shards: shards of different runs?",
                pair[0].index, pair[0].task_id
            ));
        }
        let settings = shards.first().and_then(|s| s.settings.clone());
        if shards.iter().any(|s| s.settings != settings) {
            return Err(
                "the shards were played with different settings (temperature, turns, \
                 context, seed, adapters): shards of different runs?"
                    .into(),
            );
        }
        let mut merged = Self::from_tasks(per_task);
        merged.wall_s = shards.iter().map(|s| s.wall_s).sum();
        merged.settings = settings;
        Ok(merged)
    }
}

/// Two policies' results compared task by task on the tasks both played: how much better the
/// first is, and how likely a gap that large is by chance. Pairing removes the tasks' own
/// difficulty from the comparison, so it tells apart policies whose separate intervals overlap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedDifference {
    /// Tasks in both summaries (matched by task id).
    pub shared_tasks: usize,
    /// Mean over the shared tasks of the first policy's pass@1 minus the second's, in
    /// percentage points.
    pub pass_at_1: f64,
    /// 95% bootstrap interval of that difference, resampling source problems with their pairs
    /// intact (as [`EvalSummary::pass_at_1_interval`] resamples them).
    pub interval: Option<Interval>,
    /// Shared tasks where the first policy solved a larger share of its episodes.
    pub better: usize,
    /// Shared tasks where it solved a smaller share.
    pub worse: usize,
    /// Two-sided exact sign test over `better` against `worse` (ties left out): the chance of a
    /// split at least this uneven if neither policy were better.
    pub sign_test_p: f64,
}

impl EvalSummary {
    /// `self` against `other`, paired by task; `None` when they share no task.
    pub fn paired_difference(&self, other: &EvalSummary) -> Option<PairedDifference> {
        let theirs: std::collections::HashMap<&str, &TaskResult> = other
            .per_task
            .iter()
            .map(|t| (t.task_id.as_str(), t))
            .collect();
        let pass1 = |t: &TaskResult| 100.0 * pass_at_k(t.samples, t.solved, 1);
        let (mut shared, mut differences) = (Vec::new(), Vec::new());
        for mine in &self.per_task {
            if let Some(their) = theirs.get(mine.task_id.as_str()) {
                shared.push(mine.task_id.as_str());
                differences.push(pass1(mine) - pass1(their));
            }
        }
        if shared.is_empty() {
            return None;
        }
        let better = differences.iter().filter(|&&d| d > 0.0).count();
        let worse = differences.iter().filter(|&&d| d < 0.0).count();
        Some(PairedDifference {
            shared_tasks: shared.len(),
            pass_at_1: mean(&differences),
            interval: bootstrap_interval(&differences, &source_clusters(shared.iter().copied())),
            better,
            worse,
            sign_test_p: sign_test(better, worse),
        })
    }
}

/// Two-sided exact sign test: `P(min(X, n - X) <= min(a, b))` for `X ~ Binomial(a + b, 1/2)`,
/// at most 1.
fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    let tail_end = a.min(b);
    // P(X = i) term by term from P(X = 0) = 2^-n (above f64's smallest for any set here).
    let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
    let mut tail = 0.0;
    for i in 0..=tail_end {
        tail += term;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    (2.0 * tail).min(1.0)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The source problem of each task (by id), as an index: tasks made from one program
/// (`mbpp/511#0` and `mbpp/511#1`, two corruptions of MBPP 511) share one, since they are not
/// independent draws.
fn source_clusters<'a>(task_ids: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut sources: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    task_ids
        .into_iter()
        .map(|id| {
            let source = id.split_once('#').map_or(id, |(s, _)| s);
            let next = sources.len();
            *sources.entry(source).or_insert(next)
        })
        .collect()
}

/// The 95% interval of the mean of per-task rates `values` (percent), tasks grouped by
/// `clusters` (see [`source_clusters`]): the bootstrap's over clusters, except when every task
/// scored 0 or every task 100, where resampling can only return that value (an interval of width
/// 0, as if 0 of 100 proved a rate of 0); there the Wilson score interval of 0 (or all)
/// successes in that many source problems says how high (or low) the rate may still be.
fn interval(values: &[f64], clusters: &[usize]) -> Option<Interval> {
    let sources = clusters.iter().max().map_or(0, |&m| m + 1) as f64;
    if values.iter().all(|&v| v == 0.0) || values.iter().all(|&v| v == 100.0) {
        return (sources > 0.0).then(|| wilson(values[0] / 100.0, sources));
    }
    bootstrap_interval(values, clusters)
}

/// The Wilson score interval (95%) of a proportion `p` observed in `n` trials, in percent.
fn wilson(p: f64, n: f64) -> Interval {
    const Z: f64 = 1.959_963_984_540_054;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    // At p = 0 (or 1) the bound is 0 (or 1) exactly; the formula leaves rounding dust there.
    Interval {
        low: if p <= 0.0 {
            0.0
        } else {
            100.0 * (centre - half).max(0.0)
        },
        high: if p >= 1.0 {
            100.0
        } else {
            100.0 * (centre + half).min(1.0)
        },
    }
}

/// The 2.5th and 97.5th percentiles of the mean of `values` over clusters resampled with
/// replacement (source problems, not tasks or episodes, are the unit: the samples of one task,
/// and the tasks of one problem, are not independent). With one task per cluster this is the
/// plain bootstrap over tasks.
fn bootstrap_interval(values: &[f64], clusters: &[usize]) -> Option<Interval> {
    use rand::Rng;
    if values.is_empty() || clusters.len() != values.len() {
        return None;
    }
    let count = clusters.iter().max().map_or(0, |&m| m + 1);
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); count];
    for (&cluster, &value) in clusters.iter().zip(values) {
        members[cluster].push(value);
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let (mut total, mut tasks) = (0.0, 0usize);
            for _ in 0..count {
                let drawn = &members[rng.random_range(0..count)];
                total += drawn.iter().sum::<f64>();
                tasks += drawn.len();
            }
            total / tasks.max(1) as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(Interval {
        low: at(0.025),
        high: at(0.975),
    })
}

/// Summarises episodes grouped by task (each inner vector: one task's samples).
pub fn summarize(groups: &[Vec<Trace>]) -> EvalSummary {
    EvalSummary::from_tasks(
        groups
            .iter()
            .enumerate()
            .map(|(index, group)| {
                let id = group.first().map_or("", |t| t.task_id.as_str());
                TaskResult {
                    index,
                    ..TaskResult::of_traces(id, group)
                }
            })
            .collect(),
    )
}

/// Plays `samples` episodes of each task with the policy (pipelined, see [`play_tasks_seeded`])
/// and summarises them; `on_task(i, traces)` sees each task's episodes when they are complete.
/// Each task comes with its position in its task file: its episodes are seeded from `seed` and
/// that position alone, so any shard of a file plays exactly the episodes a whole run would
/// (and [`EvalSummary::merge`] of the shards equals the whole run's summary).
pub fn evaluate<B: Backend, E: Executor + Clone + Send>(
    policy: &Policy<B>,
    indexed_tasks: &[(usize, Task)],
    executor: &E,
    samples: usize,
    config: &PlayConfig,
    seed: u64,
    mut on_task: impl FnMut(usize, &[Trace]),
) -> Result<(EvalSummary, Vec<Vec<Trace>>), TrainerError> {
    let (indices, tasks): (Vec<usize>, Vec<Task>) = indexed_tasks.iter().cloned().unzip();
    let seeds: Vec<u64> = indices.iter().map(|&i| task_seed(seed, i)).collect();
    let (groups, _) = play_tasks_seeded(
        policy,
        &tasks,
        &seeds,
        executor,
        samples,
        config,
        |i, group| {
            let traces: Vec<Trace> = group.iter().map(|r| r.trace.clone()).collect();
            on_task(i, &traces);
        },
    )?;
    let groups: Vec<Vec<Trace>> = groups
        .into_iter()
        .map(|group| group.into_iter().map(|r| r.trace).collect())
        .collect();
    let per_task = groups
        .iter()
        .zip(tasks.iter().zip(&indices))
        .map(|(traces, (task, &index))| TaskResult {
            index,
            ..TaskResult::of_traces(&task.task_id, traces)
        })
        .collect();
    Ok((EvalSummary::from_tasks(per_task), groups))
}

/// The sampling seed of the task at `index` of a file (SplitMix64 of both).
pub fn task_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

    #[test]
    fn a_rate_of_zero_or_all_still_has_an_interval_of_some_width() {
        // 0 of 100 tasks: Wilson's upper bound, about 3.7%, not [0, 0].
        let none = interval(&[0.0; 100], &(0..100).collect::<Vec<_>>()).unwrap();
        assert_eq!(none.low, 0.0);
        assert!((none.high - 3.70).abs() < 0.01, "{none:?}");
        let all = interval(&[100.0; 100], &(0..100).collect::<Vec<_>>()).unwrap();
        assert!(
            (all.low - 96.30).abs() < 0.01 && all.high == 100.0,
            "{all:?}"
        );
        // 1 of 20: Wilson's textbook interval is [0.89, 23.61]; the bootstrap's differs, but
        // contains the rate and is no longer of width 0.
        assert!((wilson(0.05, 20.0).low - 0.89).abs() < 0.01);
        assert!((wilson(0.05, 20.0).high - 23.61).abs() < 0.01);
        let mut one = vec![0.0; 19];
        one.push(100.0);
        let some = interval(&one, &(0..20).collect::<Vec<_>>()).unwrap();
        assert!(some.low <= 5.0 && some.high > 5.0, "{some:?}");
        assert!(interval(&[], &[]).is_none());
    }

    fn counted(task_id: &str, samples: usize, solved: usize) -> TaskResult {
        TaskResult {
            index: 0,
            task_id: task_id.into(),
            samples,
            solved,
            turns: samples,
            malformed_turns: 0,
            solved_then_broken: 0,
        }
    }

    #[test]
    fn a_policy_paired_with_itself_differs_by_nothing() {
        let summary = EvalSummary::from_tasks(
            (0..30)
                .map(|i| counted(&format!("t{i}"), 4, i % 5))
                .collect(),
        );
        let same = summary.paired_difference(&summary).unwrap();
        assert_eq!(same.shared_tasks, 30);
        assert_eq!(same.pass_at_1, 0.0);
        assert_eq!((same.better, same.worse), (0, 0));
        assert_eq!(same.sign_test_p, 1.0);
        let interval = same.interval.unwrap();
        assert_eq!((interval.low, interval.high), (0.0, 0.0));
    }

    #[test]
    fn the_paired_difference_is_the_gap_on_shared_tasks_with_its_sign_test() {
        // 14 tasks the first policy solves once in 4 and the second never; 86 both never; the
        // second also played a task the first did not, which is left out.
        let first = EvalSummary::from_tasks(
            (0..100)
                .map(|i| counted(&format!("t{i}"), 4, usize::from(i < 14)))
                .collect(),
        );
        let mut second_tasks: Vec<TaskResult> =
            (0..100).map(|i| counted(&format!("t{i}"), 4, 0)).collect();
        second_tasks.push(counted("only-second", 4, 4));
        let second = EvalSummary::from_tasks(second_tasks);
        let gap = first.paired_difference(&second).unwrap();
        assert_eq!(gap.shared_tasks, 100);
        assert!((gap.pass_at_1 - 3.5).abs() < 1e-12, "{gap:?}");
        assert_eq!((gap.better, gap.worse), (14, 0));
        // Two-sided: 2 * 2^-14.
        assert!((gap.sign_test_p - 2f64.powi(-13)).abs() < 1e-15);
        let interval = gap.interval.unwrap();
        assert!(interval.low > 0.0 && interval.high > 3.5, "{interval:?}");
        // The other way round: the same gap, negated, and the same test.
        let back = second.paired_difference(&first).unwrap();
        assert!((back.pass_at_1 + 3.5).abs() < 1e-12);
        assert_eq!((back.better, back.worse), (0, 14));
        assert_eq!(back.sign_test_p, gap.sign_test_p);
        // No shared task: nothing to compare.
        let apart = EvalSummary::from_tasks(vec![counted("elsewhere", 1, 1)]);
        assert!(first.paired_difference(&apart).is_none());
    }

    #[test]
    fn the_sign_test_matches_binomial_tails() {
        // 5 against 5 is as even as a split can be; 1 against 9: 2 * 11 / 1024.
        assert_eq!(sign_test(5, 5), 1.0);
        assert!((sign_test(1, 9) - 22.0 / 1024.0).abs() < 1e-15);
        assert!((sign_test(9, 1) - 22.0 / 1024.0).abs() < 1e-15);
        assert_eq!(sign_test(0, 0), 1.0);
        // 0 against 400 stays above zero.
        assert!(sign_test(0, 400) > 0.0);
    }

    #[test]
    fn two_corruptions_of_one_program_are_one_draw_of_the_bootstrap() {
        let task = |id: &str, solved| TaskResult {
            index: 0,
            task_id: id.into(),
            samples: 1,
            solved,
            turns: 1,
            malformed_turns: 0,
            solved_then_broken: 0,
        };
        let per_task: Vec<TaskResult> = (0..20)
            .flat_map(|p| {
                let solved = usize::from(p % 4 == 0);
                [
                    task(&format!("mbpp/{p}#0"), solved),
                    task(&format!("mbpp/{p}#1"), solved),
                ]
            })
            .collect();
        assert_eq!(
            source_clusters(per_task.iter().map(|t| t.task_id.as_str()))[..4],
            [0, 0, 1, 1]
        );
        // Pairs that always agree carry the information of 20 problems, not 40 tasks: the
        // interval is as wide as that of the 20 problems alone, wider than treating 40 as
        // independent.
        let pairs = EvalSummary::from_tasks(per_task.clone())
            .pass_at_1_interval
            .unwrap();
        let singles: Vec<TaskResult> = per_task.iter().step_by(2).cloned().collect();
        let alone = EvalSummary::from_tasks(singles).pass_at_1_interval.unwrap();
        let values: Vec<f64> = per_task.iter().map(|t| 100.0 * t.solved as f64).collect();
        let independent = bootstrap_interval(&values, &(0..40).collect::<Vec<_>>()).unwrap();
        assert_eq!((pairs.low, pairs.high), (alone.low, alone.high));
        assert!(pairs.high - pairs.low > independent.high - independent.low + 5.0);
        // One task per program: the plain bootstrap over tasks.
        assert_eq!(source_clusters(["a", "b"]), [0, 1]);
    }
}
