//! `coe repair`: a program repaired by the policy, turn by turn, with the diff.

use std::path::PathBuf;

use coe_policy::SamplingConfig;
use coe_policy::generate::rng;
use serde::Serialize;

use super::{CONTEXT_TOKENS, PolicyArgs, chosen_adapter, load_policy, read_text, sandbox};
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
    /// Print one JSON object (solved, turns, final_program, diff).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct RepairJson<'a> {
    solved: bool,
    turns: &'a [coe_tool_state::Turn],
    final_program: &'a str,
    diff: String,
    episodes_played: usize,
}

pub(crate) fn repair(args: RepairArgs) -> Result<(), Failure> {
    let p = &args.policy;
    if args.tests.is_empty() {
        return Err(Failure::Input("give at least one --test".into()));
    }
    if p.samples == 0 {
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
    let sandbox = std::sync::Arc::new(sandbox()?);
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
    let adapter = chosen_adapter(p.model.as_deref(), p.adapter.as_deref());
    if p.adapter.is_none() && adapter.is_some() && !args.json {
        eprintln!("coe: using the default policy, fixtures/policy/adapter.safetensors");
    }
    if adapter.is_none() && !args.json {
        eprintln!(
            "coe: no adapter given and no trained default policy committed; using the base model alone"
        );
    }
    let policy = load_policy(p.model.as_deref(), adapter.as_deref())?;
    let config = coe_trainer::rollout::PlayConfig {
        episode,
        sampling: SamplingConfig {
            temperature: if p.samples == 1 { 0.0 } else { 0.8 },
            ..SamplingConfig::default()
        },
        context: CONTEXT_TOKENS,
        workers: p.workers,
        batch: p.batch,
    };
    let rollouts = coe_trainer::rollout::play(
        &policy,
        &task,
        &sandbox,
        p.samples,
        &config,
        &mut rng(p.seed),
    )
    .map_err(|e| Failure::Internal(e.to_string()))?;
    let played = rollouts.len();
    let best = rollouts
        .into_iter()
        .max_by(|a, b| {
            (a.trace.solved, a.trace.total_reward)
                .partial_cmp(&(b.trace.solved, b.trace.total_reward))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .ok_or_else(|| Failure::Internal("no episode was played".into()))?;
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
        "\n{} after {} turns\n\n{}",
        if trace.solved { "solved" } else { "not solved" },
        trace.turns.len(),
        if diff.is_empty() {
            "(program unchanged)\n".to_string()
        } else {
            diff
        }
    ));
    print(&out)
}
