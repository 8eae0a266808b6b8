//! Episodes against a fake executor: turns, rewards, endings and traces.

use coe_exec::testing::FakeExecutor;
use coe_tool_state::{Effect, EndReason, Episode, EpisodeConfig, Status, StepError, Task};

/// Passes when the program contains `return a + b`; fails its first test otherwise.
fn fake() -> FakeExecutor {
    FakeExecutor::passing_when("return a + b")
}

fn task(code: &str) -> Task {
    Task {
        task_id: "toy/1".into(),
        text: "Add two numbers.".into(),
        code: code.into(),
        reference: Some("def add(a, b):\n    return a + b\n".into()),
        setup: None,
        tests: vec![
            "assert add(1, 2) == 3".into(),
            "assert add(0, 0) == 0".into(),
        ],
    }
}

const BROKEN: &str = "def add(a, b):\n    return a - b\n";

#[test]
fn a_repair_is_rewarded_once_and_exit_ends_it() {
    let executor = fake();
    let mut episode = Episode::start(task(BROKEN), &executor, EpisodeConfig::default()).unwrap();
    assert!(!episode.is_passing());
    insta::assert_snapshot!("initial_observation", episode.observation());

    let turn = episode.step("REPW 2 >>>- >>>+\n").unwrap();
    assert_eq!(turn.reward, 1.0);
    assert!(turn.passing);
    assert_eq!(
        turn.effect,
        Effect::Edited {
            status: Status::Passed,
            tests_passed: 2,
            tests_total: 2
        }
    );
    insta::assert_snapshot!("solved_observation", &turn.observation);

    // Passing again after a no-op edit earns nothing more.
    let turn = episode.step("REPL 2 >>>    return a + b").unwrap();
    assert_eq!(turn.reward, 0.0);

    let turn = episode.step("EXIT").unwrap();
    assert_eq!(turn.effect, Effect::Exit);
    assert_eq!(turn.reward, 0.0);
    assert_eq!(episode.end(), Some(EndReason::Exit));
    assert!(matches!(episode.step("EXIT"), Err(StepError::Finished)));

    let trace = episode.trace();
    assert!(trace.solved);
    assert_eq!(trace.total_reward, 1.0);
    assert_eq!(trace.turns.len(), 3);
    assert_eq!(trace.final_program, "def add(a, b):\n    return a + b\n");
    assert!(!trace.solved_then_broken());
    // Starting run plus two edits; EXIT runs nothing.
    assert_eq!(executor.runs(), 3);
}

#[test]
fn malformed_and_rejected_commands_cost_half_and_change_nothing() {
    let executor = fake();
    let mut episode = Episode::start(task(BROKEN), &executor, EpisodeConfig::default()).unwrap();
    let before = episode.program().clone();

    let turn = episode.step("I think line 2 is wrong").unwrap();
    assert_eq!(turn.reward, -0.5);
    assert!(matches!(turn.effect, Effect::Malformed { .. }));
    assert_eq!(turn.command, None);
    insta::assert_snapshot!("malformed_observation", &turn.observation);

    let turn = episode.step("DELL 9").unwrap();
    assert_eq!(turn.reward, -0.5);
    assert!(matches!(turn.effect, Effect::Rejected { .. }));
    insta::assert_snapshot!("rejected_observation", &turn.observation);

    let turn = episode.step("REPW 2 >>>* >>>+").unwrap();
    assert_eq!(turn.reward, -0.5);
    assert_eq!(episode.program(), &before);
    // Refused commands are never run.
    assert_eq!(executor.runs(), 1);
}

#[test]
fn running_out_of_turns_costs_half_on_the_last_turn() {
    let config = EpisodeConfig {
        max_turns: 3,
        ..EpisodeConfig::default()
    };
    let mut episode = Episode::start(task(BROKEN), fake(), config).unwrap();
    episode.step("REPW 2 >>>- >>>+").unwrap();
    episode.step("REPW 2 >>>+ >>>-").unwrap();
    let last = episode.step("REPW 2 >>>- >>>*").unwrap();
    assert_eq!(last.reward, -0.5);
    assert_eq!(episode.end(), Some(EndReason::TurnLimit));
    let trace = episode.trace();
    assert_eq!(
        trace.turns.iter().map(|t| t.reward).collect::<Vec<_>>(),
        [1.0, 0.0, -0.5]
    );
    assert!(trace.solved_then_broken());
    assert_eq!(trace.total_reward, 0.5);
}

#[test]
fn a_solve_on_the_last_turn_still_pays_minus_the_missing_exit() {
    let config = EpisodeConfig {
        max_turns: 1,
        ..EpisodeConfig::default()
    };
    let mut episode = Episode::start(task(BROKEN), fake(), config).unwrap();
    assert_eq!(episode.step("REPW 2 >>>- >>>+").unwrap().reward, 0.5);
    assert!(episode.is_done());
}

#[test]
fn a_program_that_already_passes_earns_no_solve_reward() {
    let solved = "def add(a, b):\n    return a + b\n";
    let mut episode = Episode::start(task(solved), fake(), EpisodeConfig::default()).unwrap();
    assert!(episode.is_passing());
    assert_eq!(
        episode.step("REPL 1 >>>def add(a, b):").unwrap().reward,
        0.0
    );
}

#[test]
fn zero_turns_means_over_before_it_starts() {
    let config = EpisodeConfig {
        max_turns: 0,
        ..EpisodeConfig::default()
    };
    let mut episode = Episode::start(task(BROKEN), fake(), config).unwrap();
    assert!(episode.is_done());
    assert!(matches!(episode.step("EXIT"), Err(StepError::Finished)));
}

#[test]
fn an_executor_failure_keeps_the_episode_as_it_was() {
    let executor = fake();
    let mut episode = Episode::start(task(BROKEN), &executor, EpisodeConfig::default()).unwrap();
    let observation = episode.observation().to_owned();
    executor.set_broken(true);
    assert!(matches!(
        episode.step("REPW 2 >>>- >>>+"),
        Err(StepError::Executor(_))
    ));
    assert_eq!(episode.observation(), observation);
    assert!(episode.turns().is_empty());
    assert_eq!(episode.program().to_source(), BROKEN);
    executor.set_broken(false);
    assert_eq!(episode.step("REPW 2 >>>- >>>+").unwrap().turn, 1);
}

#[test]
fn traces_round_trip_through_json() {
    let mut episode = Episode::start(task(BROKEN), fake(), EpisodeConfig::default()).unwrap();
    episode.step("REPW 2 >>>- >>>+").unwrap();
    episode.step("nonsense").unwrap();
    episode.step("EXIT").unwrap();
    let trace = episode.trace();
    let json = serde_json::to_string(&trace).unwrap();
    assert!(json.contains(r#""command":"REPW 2 >>>- >>>+""#));
    assert!(json.contains(r#""return":0.5"#));
    let back: coe_tool_state::Trace = serde_json::from_str(&json).unwrap();
    assert_eq!(back, trace);
}
