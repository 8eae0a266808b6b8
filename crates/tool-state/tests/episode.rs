//! Episodes against a fake executor: turns, rewards, endings and traces.

use coe_exec::testing::{FAILS_EVERY_TEST, FakeExecutor};
use coe_tool_state::{Effect, EndReason, Episode, EpisodeConfig, Rewards, Status, StepError, Task};
use proptest::prelude::*;

const TURN: f32 = -0.01;

#[track_caller]
fn assert_close(actual: f32, expected: f32) {
    assert!(
        (actual - expected).abs() < 1e-5,
        "{actual} is not {expected}"
    );
}

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

/// The default episode settings with another turn limit.
fn turns(max_turns: usize) -> EpisodeConfig {
    EpisodeConfig {
        max_turns,
        ..EpisodeConfig::default()
    }
}

/// An episode of the broken task with `max_turns` turns.
fn broken(max_turns: usize) -> Episode<FakeExecutor> {
    Episode::start(task(BROKEN), fake(), turns(max_turns)).unwrap()
}

const BROKEN: &str = "def add(a, b):\n    return a - b\n";

#[test]
fn a_repair_is_rewarded_once_and_exit_ends_it() {
    let executor = fake();
    let mut episode = Episode::start(task(BROKEN), &executor, EpisodeConfig::default()).unwrap();
    assert!(!episode.is_passing());
    insta::assert_snapshot!("initial_observation", episode.observation());

    let turn = episode.step("REPW 2 >>>- >>>+\n").unwrap();
    assert_close(turn.reward, 1.0 + TURN);
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

    // Passing again after a no-op edit earns nothing more: only the turn's cost.
    let turn = episode.step("REPL 2 >>>    return a + b").unwrap();
    assert_close(turn.reward, TURN);

    let turn = episode.step("EXIT").unwrap();
    assert_eq!(turn.effect, Effect::Exit);
    assert_close(turn.reward, TURN);
    assert_eq!(episode.end(), Some(EndReason::Exit));
    assert!(matches!(episode.step("EXIT"), Err(StepError::Finished)));

    let trace = episode.trace();
    assert!(trace.solved);
    assert_close(trace.total_reward, 1.0 + 3.0 * TURN);
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
    assert_close(turn.reward, -0.5 + TURN);
    assert!(matches!(turn.effect, Effect::Malformed { .. }));
    assert_eq!(turn.command, None);
    insta::assert_snapshot!("malformed_observation", &turn.observation);

    let turn = episode.step("DELL 9").unwrap();
    assert_close(turn.reward, -0.5 + TURN);
    assert!(matches!(turn.effect, Effect::Rejected { .. }));
    insta::assert_snapshot!("rejected_observation", &turn.observation);

    let turn = episode.step("REPW 2 >>>* >>>+").unwrap();
    assert_close(turn.reward, -0.5 + TURN);
    assert_eq!(episode.program(), &before);
    // Refused commands are never run.
    assert_eq!(executor.runs(), 1);
}

#[test]
fn running_out_of_turns_costs_half_on_the_last_turn_and_breaking_costs_the_solve() {
    let mut episode = broken(3);
    episode.step("REPW 2 >>>- >>>+").unwrap();
    episode.step("REPW 2 >>>+ >>>-").unwrap();
    let last = episode.step("REPW 2 >>>- >>>*").unwrap();
    assert_close(last.reward, -0.5 + TURN);
    assert_eq!(episode.end(), Some(EndReason::TurnLimit));
    let trace = episode.trace();
    let rewards: Vec<f32> = trace.turns.iter().map(|t| t.reward).collect();
    for (reward, expected) in rewards.iter().zip([1.0 + TURN, -1.0 + TURN, -0.5 + TURN]) {
        assert_close(*reward, expected);
    }
    assert!(trace.solved_then_broken());
    // Solved then broken: the pass and the break cancel, as if it had never passed.
    assert_close(trace.total_reward, -0.5 + 3.0 * TURN);
}

#[test]
fn a_second_repair_after_a_break_pays_again() {
    let mut episode = broken(10);
    for command in [
        "REPW 2 >>>- >>>+",
        "REPW 2 >>>+ >>>-",
        "REPW 2 >>>- >>>+",
        "EXIT",
    ] {
        episode.step(command).unwrap();
    }
    let trace = episode.trace();
    assert!(trace.solved);
    // +1, -1, +1: the return counts the repair that stands, once.
    assert_close(trace.total_reward, 1.0 + 4.0 * TURN);
}

#[test]
fn breaking_a_passing_program_is_not_free() {
    let solved = "def add(a, b):\n    return a + b\n";
    let mut episode = Episode::start(task(solved), fake(), EpisodeConfig::default()).unwrap();
    let turn = episode.step("REPW 2 >>>+ >>>-").unwrap();
    assert_close(turn.reward, -1.0 + TURN);
}

#[test]
fn giving_up_scores_exactly_like_trying_valid_commands_to_the_limit() {
    let mut quitter = broken(4);
    let exit = quitter.step("EXIT").unwrap();
    assert_close(exit.reward, TURN + -0.5 + 3.0 * TURN);
    assert_eq!(quitter.end(), Some(EndReason::Exit));

    let mut trier = broken(4);
    for command in [
        "REPW 2 >>>- >>>*",
        "REPW 2 >>>* >>>/",
        "REPW 2 >>>/ >>>-",
        "DELL 2",
    ] {
        trier.step(command).unwrap();
    }
    assert_eq!(trier.end(), Some(EndReason::TurnLimit));
    assert_close(quitter.total_reward(), trier.total_reward());
    // Exiting once the tests pass is the only exit without the penalty.
    let mut finisher = broken(4);
    finisher.step("REPW 2 >>>- >>>+").unwrap();
    assert_close(finisher.step("EXIT").unwrap().reward, TURN);
}

#[test]
fn a_context_cut_scores_like_the_turn_limit() {
    let mut cut = broken(5);
    cut.step("REPW 2 >>>- >>>*").unwrap();
    cut.step("REPW 2 >>>* >>>/").unwrap();
    cut.cut();
    assert_eq!(cut.end(), Some(EndReason::ContextFull));
    assert!(matches!(cut.step("EXIT"), Err(StepError::Finished)));
    let total = cut.total_reward();
    cut.cut();
    assert_close(cut.total_reward(), total);

    // Valid, non-repairing commands up to the limit score the same.
    let mut limit = broken(5);
    for i in 0..5 {
        let command = if i % 2 == 0 {
            "REPW 2 >>>- >>>*"
        } else {
            "REPW 2 >>>* >>>-"
        };
        limit.step(command).unwrap();
    }
    assert_eq!(limit.end(), Some(EndReason::TurnLimit));
    assert_close(total, limit.total_reward());
    assert_close(total, 2.0 * TURN + Rewards::default().unfinished(2, 5));
}

/// Settings with a progress credit of 0.3 and `max_turns` turns.
fn with_progress(max_turns: usize) -> EpisodeConfig {
    EpisodeConfig {
        max_turns,
        rewards: Rewards {
            progress: 0.3,
            ..Rewards::default()
        },
        ..EpisodeConfig::default()
    }
}

/// The broken task failing both of its tests (`FAILS_EVERY_TEST` on line 3).
fn failing_all() -> Task {
    task(&format!("{BROKEN}{FAILS_EVERY_TEST}\n"))
}

#[test]
fn progress_credits_tests_passing_beyond_the_start_at_every_failing_end() {
    let unfinished = |taken| Rewards::default().unfinished(taken, 3);
    // 0 of 2 tests at the start, 1 of 2 once line 3 goes: 0.3 x 1/2 at the end.
    let mut limit = Episode::start(failing_all(), fake(), with_progress(3)).unwrap();
    limit.step("DELL 3").unwrap();
    limit.step("REPW 2 >>>- >>>*").unwrap();
    let last = limit.step("REPW 2 >>>* >>>-").unwrap();
    assert_close(last.reward, TURN - 0.5 + 0.15);
    assert_eq!(limit.end(), Some(EndReason::TurnLimit));
    // A cut after the end pays nothing more.
    let total = limit.total_reward();
    limit.cut();
    assert_close(limit.total_reward(), total);

    let mut exit = Episode::start(failing_all(), fake(), with_progress(3)).unwrap();
    exit.step("DELL 3").unwrap();
    assert_close(
        exit.step("EXIT").unwrap().reward,
        TURN + unfinished(2) + 0.15,
    );
    assert_close(exit.total_reward(), limit.total_reward());

    let mut cut = Episode::start(failing_all(), fake(), with_progress(3)).unwrap();
    cut.step("DELL 3").unwrap();
    cut.cut();
    assert_close(cut.total_reward(), TURN + unfinished(1) + 0.15);
}

#[test]
fn progress_never_pays_for_fewer_passing_tests_nor_beats_a_repair() {
    // 1 of 2 tests at the start, 0 of 2 after adding the fake's marker: no credit, no cost.
    let mut worse = Episode::start(task(BROKEN), fake(), with_progress(2)).unwrap();
    worse
        .step(&format!("ADDL 3 >>>{FAILS_EVERY_TEST}"))
        .unwrap();
    let last = worse.step("REPW 2 >>>- >>>*").unwrap();
    assert_close(last.reward, TURN - 0.5);
    // Giving up at the start gets no credit, so it never beats trying.
    let mut quitter = Episode::start(failing_all(), fake(), with_progress(2)).unwrap();
    assert_close(
        quitter.step("EXIT").unwrap().reward,
        TURN + Rewards::default().unfinished(1, 2),
    );
    // A repair is still the best return: the solve, not a credit.
    let mut repair = Episode::start(failing_all(), fake(), with_progress(2)).unwrap();
    repair.step("REPW 2 >>>- >>>+").unwrap();
    assert_close(repair.step("EXIT").unwrap().reward, TURN);
    assert_close(repair.total_reward(), 1.0 + 2.0 * TURN);
    // Reaching the limit with passing tests: the missing EXIT costs, no credit is added.
    let mut late = Episode::start(failing_all(), fake(), with_progress(1)).unwrap();
    assert_close(
        late.step("REPW 2 >>>- >>>+").unwrap().reward,
        1.0 + TURN - 0.5,
    );
    // Off by default: DESIGN.md's table.
    assert_eq!(Rewards::default().progress, 0.0);
}

#[test]
fn a_solve_on_the_last_turn_still_pays_minus_the_missing_exit() {
    let mut episode = broken(1);
    assert_close(
        episode.step("REPW 2 >>>- >>>+").unwrap().reward,
        1.0 + TURN - 0.5,
    );
    assert!(episode.is_done());
}

#[test]
fn a_program_that_already_passes_earns_no_solve_reward() {
    let solved = "def add(a, b):\n    return a + b\n";
    let mut episode = Episode::start(task(solved), fake(), EpisodeConfig::default()).unwrap();
    assert!(episode.is_passing());
    assert_close(
        episode.step("REPL 1 >>>def add(a, b):").unwrap().reward,
        TURN,
    );
}

#[test]
fn zero_turns_means_over_before_it_starts() {
    let mut episode = broken(0);
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
    let mut episode = broken(10);
    episode.step("REPW 2 >>>- >>>+").unwrap();
    episode.step("nonsense").unwrap();
    episode.step("EXIT").unwrap();
    let trace = episode.trace();
    let json = serde_json::to_string(&trace).unwrap();
    assert!(json.contains(r#""command":"REPW 2 >>>- >>>+""#));
    assert!(json.contains(r#""return":"#));
    let back: coe_tool_state::Trace = serde_json::from_str(&json).unwrap();
    assert_eq!(back, trace);
}

/// One model output of the property test: a repair, a break, a harmless valid edit, a
/// malformed line, a refused command, or EXIT.
fn output() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "REPW 2 >>>- >>>+",
        "REPW 2 >>>+ >>>-",
        "REPL 1 >>>def add(a, b):",
        "fix it",
        "DELL 9",
        "EXIT",
    ])
}

proptest! {
    /// The scheme's promises (DESIGN.md section 7) for any play: nothing beats repairing on
    /// turn 1 and exiting on turn 2; an episode that ends failing, however it ends, scores at
    /// most what trying valid commands to the limit scores; one that ends passing scores
    /// above that unless it paid for refused commands.
    #[test]
    fn rewards_keep_their_promises(outputs in prop::collection::vec(output(), 1..12), max_turns in 2usize..11) {
        let mut episode = broken(max_turns);
        for output in &outputs {
            if episode.is_done() {
                break;
            }
            episode.step(output).unwrap();
        }
        if !episode.is_done() {
            episode.cut();
        }
        let trace = episode.trace();
        let best = 1.0 + 2.0 * TURN;
        let give_up = -0.5 + max_turns as f32 * TURN;
        prop_assert!(trace.total_reward <= best + 1e-5, "{} > best {best}", trace.total_reward);
        let refused = trace
            .turns
            .iter()
            .filter(|t| matches!(t.effect, Effect::Malformed { .. } | Effect::Rejected { .. }))
            .count();
        if !trace.solved {
            prop_assert!(trace.total_reward <= give_up + 1e-5);
        } else if refused == 0 {
            prop_assert!(trace.total_reward > give_up);
        }
    }
}
