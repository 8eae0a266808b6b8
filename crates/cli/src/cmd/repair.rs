//! `coe repair`: a program repaired by the policy, turn by turn, with the diff.

use std::path::PathBuf;

use coe_policy::SamplingConfig;
use coe_policy::generate::rng;
use serde::Serialize;

use super::{
    CONTEXT_TOKENS, Parallelism, PolicyArgs, chosen_adapter, executor, load_policy, read_text,
};
use crate::Failure;
use crate::output::{json_line, print};

/// Options of `coe repair`.
#[derive(Debug, clap::Args)]
pub(crate) struct RepairArgs {
    /// The Python program to repair.
    pub(crate) program: PathBuf,
    /// A test snippet (usually one assert); repeatable, at least one.
    #[arg(long = "test", value_name = "SNIPPET")]
    pub(crate) tests: Vec<String>,
    /// What the program should do, in a sentence (shown to the model before the tests).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) task: String,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Print one JSON object (solved, turns, final_program, diff, episodes_played).
    #[arg(long)]
    pub(crate) json: bool,
    /// Start no further sampled episode after this many seconds.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub(crate) time_budget_s: f64,
}

/// Temperature of the sampled episodes after the greedy one.
const REPAIR_TEMPERATURE: f64 = 0.8;

#[derive(Serialize)]
struct RepairJson<'a> {
    solved: bool,
    turns: &'a [coe_tool_state::Turn],
    final_program: &'a str,
    diff: String,
    episodes_played: usize,
    /// Which of them is shown (1-based).
    episode: usize,
}

/// Episodes `coe repair` plays at most unless `--samples` says: a greedy one, then sampled ones.
const REPAIR_EPISODES: usize = 5;

pub(crate) fn repair(args: RepairArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let p = &args.policy;
    if args.tests.is_empty() {
        return Err(Failure::Input("give at least one --test".into()));
    }
    let most = p.samples.unwrap_or(REPAIR_EPISODES);
    if most == 0 {
        return Err(Failure::Input("--samples must be at least 1".into()));
    }
    let code = read_text(&args.program)?;
    let task = coe_tool_state::Task {
        task_id: args.program.display().to_string(),
        text: args.task.clone(),
        code: code.clone(),
        reference: None,
        setup: None,
        tests: args.tests.clone(),
    };
    let sandbox = executor(p.workers, Parallelism::Processes)?;
    let episode = coe_tool_state::EpisodeConfig {
        max_turns: p.max_turns,
        ..Default::default()
    };
    let probe = coe_tool_state::Episode::start(task.clone(), &sandbox, episode)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    if probe.is_passing() {
        return Err(Failure::Input(format!(
            "{}: the tests already pass; nothing to repair",
            args.program.display()
        )));
    }
    let adapter = chosen_adapter(p.model.as_deref(), p.adapter.as_deref())?;
    if p.adapter.is_none() && adapter.is_some() && !args.json {
        eprintln!("coe: using the built-in default policy");
    }
    let policy = load_policy(p.model.as_deref(), adapter.as_deref())?;
    let config = |temperature| coe_trainer::rollout::PlayConfig {
        episode,
        sampling: SamplingConfig {
            temperature,
            ..SamplingConfig::default()
        },
        context: CONTEXT_TOKENS,
        workers: p.workers,
        batch: p.batch,
    };
    // The tests are a verifier: a greedy episode first, then sampled ones (as many at a time as
    // decode together) until one passes, `most` are played or the time budget is spent.
    let mut rng = rng(p.seed);
    let mut played = 0;
    // The best episode so far (a solved one, else the highest return) and its number.
    let mut best: Option<(usize, coe_trainer::rollout::Rollout)> = None;
    let solved = |best: &Option<(usize, coe_trainer::rollout::Rollout)>| {
        best.as_ref().is_some_and(|(_, b)| b.trace.solved)
    };
    while played < most && !solved(&best) {
        if played > 0 && started.elapsed().as_secs_f64() > args.time_budget_s {
            if !args.json {
                eprintln!(
                    "coe: time budget of {} s spent after {played} episodes",
                    args.time_budget_s
                );
            }
            break;
        }
        let (temperature, n) = if played == 0 {
            (0.0, 1)
        } else {
            (REPAIR_TEMPERATURE, (most - played).min(p.batch.max(1)))
        };
        let rollouts =
            coe_trainer::rollout::play(&policy, &task, &sandbox, n, &config(temperature), &mut rng)
                .map_err(|e| Failure::Internal(e.to_string()))?;
        if rollouts.is_empty() {
            break;
        }
        let first = played;
        played += rollouts.len();
        for (i, rollout) in rollouts.into_iter().enumerate() {
            let better = best.as_ref().is_none_or(|(_, b)| {
                rollout.trace.solved || rollout.trace.total_reward > b.trace.total_reward
            });
            if better {
                best = Some((first + i + 1, rollout));
            }
            if solved(&best) {
                break;
            }
        }
    }
    let (chosen, best) = best.ok_or_else(|| Failure::Internal("no episode was played".into()))?;
    let trace = best.trace;
    let diff = similar::TextDiff::from_lines(&code, &trace.final_program)
        .unified_diff()
        .header("before", "after")
        .to_string();
    if args.json {
        return print(&json_line(&RepairJson {
            solved: trace.solved,
            turns: &trace.turns,
            final_program: &trace.final_program,
            diff,
            episodes_played: played,
            episode: chosen,
        })?);
    }
    let mut out = String::new();
    for turn in &trace.turns {
        out.push_str(&format!("turn {}: {}\n", turn.turn, turn.output));
        // EXIT changes nothing, so its observation repeats the previous turn's feedback.
        let feedback = if turn.effect == coe_tool_state::Effect::Exit {
            "(episode ended)"
        } else {
            coe_tool_state::split_observation(&turn.observation)
                .1
                .trim_end()
        };
        for line in feedback.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out.push_str(&format!(
        "\n{} after {} turns (episode {} of {played} played)\n\n{}",
        if trace.solved { "solved" } else { "not solved" },
        trace.turns.len(),
        chosen,
        if diff.is_empty() {
            "(program unchanged)\n".to_string()
        } else {
            diff
        }
    ));
    print(&out)
}
