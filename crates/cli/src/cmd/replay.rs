//! `coe replay`: an episode played with scripted commands.

use std::path::Path;

use coe_exec::Limits;
use coe_tool_state::{Episode, EpisodeConfig};
use serde::Serialize;

use super::{read_text, sandbox};
use crate::Failure;
use crate::output::{json_line, print};

#[derive(Serialize)]
struct TurnJson<'a> {
    turn: usize,
    output: &'a str,
    command: Option<String>,
    reward: f32,
    solved: bool,
    observation: &'a str,
}

#[derive(Serialize)]
struct SummaryJson {
    solved: bool,
    turns: usize,
    #[serde(rename = "return")]
    total_reward: f32,
}

pub(crate) fn replay(
    task_path: &Path,
    edits_path: &Path,
    max_turns: usize,
    limits: Limits,
    json: bool,
) -> Result<(), Failure> {
    // The messages read "not a task: ..." or "not an MBPP row: ...".
    let task = coe_data::sources::parse_task(&read_text(task_path)?)
        .map_err(|e| Failure::Input(format!("coe: {} is {e}", task_path.display())))?;
    let edits = read_text(edits_path)?;
    let sandbox = sandbox()?;
    let config = EpisodeConfig {
        max_turns,
        limits,
        ..EpisodeConfig::default()
    };
    let executor_failed = |e: &dyn std::fmt::Display| Failure::Internal(format!("coe: {e}"));
    let mut episode = Episode::start(task, &sandbox, config).map_err(|e| executor_failed(&e))?;
    if !json {
        print(&format!(
            "initial observation:\n{}\n\n",
            episode.observation()
        ))?;
    }
    for output in edits.lines().filter(|line| !line.trim().is_empty()) {
        if episode.is_done() {
            break;
        }
        let turn = episode.step(output).map_err(|e| executor_failed(&e))?;
        let text = if json {
            json_line(&TurnJson {
                turn: turn.turn,
                output: &turn.output,
                command: turn.command.as_ref().map(ToString::to_string),
                reward: turn.reward,
                solved: turn.passing,
                observation: &turn.observation,
            })?
        } else {
            format!(
                "turn {}: {}\nreward: {}  solved: {}\n{}\n\n",
                turn.turn, turn.output, turn.reward, turn.passing, turn.observation
            )
        };
        print(&text)?;
    }
    let trace = episode.trace();
    let summary = SummaryJson {
        solved: trace.solved,
        turns: trace.turns.len(),
        total_reward: trace.total_reward,
    };
    if json {
        print(&json_line(&summary)?)
    } else {
        print(&format!(
            "solved: {}  turns: {}  return: {}\n",
            summary.solved, summary.turns, summary.total_reward
        ))
    }
}
