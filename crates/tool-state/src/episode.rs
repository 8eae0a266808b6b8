//! Episodes: a task, a model's commands one per turn, the tool's feedback, and rewards.

use coe_dsl::Command;
use coe_exec::{ErrorInfo, Executor, ExecutorError, Limits, Outcome, Status};
use serde::{Deserialize, Serialize};

use crate::{Program, Task, render_feedback, render_invalid_command, render_observation};

/// Per-turn rewards (DESIGN.md section 7).
///
/// | event on turn `t` (of at most `T`) | reward |
/// |---|---|
/// | every turn, `EXIT` included | `turn` (-0.01) |
/// | the command makes failing tests pass (the first pass, or again after a break) | `solved` (+1) |
/// | the command makes passing tests fail | `broken` (-1): breaking is never free |
/// | the output is not a command | `malformed` (-0.5) |
/// | the command cannot be applied | `rejected` (-0.5) |
/// | turn `T` ends without `EXIT`, or the context fills before `EXIT` | `no_exit` (-0.5), plus `turn` for each turn not taken |
/// | `EXIT` while the tests fail | the same: `no_exit` plus `turn` for each turn not taken |
/// | an end with failing tests (turn limit, context cut or `EXIT`) | `progress` x the share of tests passing beyond the start's, if more pass (0 by default) |
///
/// So the return is `solved` exactly when the episode ends with passing tests (passes and
/// breaks cancel), the best return of any task is a repair on turn 1 and `EXIT` on turn 2, an
/// earlier finish always scores higher, and giving up scores exactly like trying with valid
/// commands until the limit, never better.
///
/// `progress` (off in DESIGN.md's table) gives an episode that fails at the end a signal
/// beyond its turn count: with it off, every episode of a group that fails with valid commands
/// has the same return, so GRPO learns nothing from the group. Kept below `solved`, it leaves
/// a repair the best return; it credits the final program (what an evaluation scores), never
/// less than nothing, so giving up at the start still never beats trying.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rewards {
    /// On a turn whose command makes failing tests pass.
    pub solved: f32,
    /// On a turn whose command makes passing tests fail.
    pub broken: f32,
    /// For output that does not parse as a command.
    pub malformed: f32,
    /// For a well-formed command the tool cannot apply (no such line, `REPW` text not found).
    /// DESIGN.md only names malformed commands; an inapplicable one is treated alike by
    /// default, since it too is a turn the tool had to refuse.
    pub rejected: f32,
    /// On every turn: the cost of a turn, so that a quicker repair is a better one.
    pub turn: f32,
    /// When the episode ends without `EXIT` (turn limit or full context), or with `EXIT` while
    /// the tests fail; each turn not taken adds `turn` as well.
    pub no_exit: f32,
    /// At an end with failing tests: times the share of the tests that pass at the end beyond
    /// the share that passed at the start (nothing when fewer pass). Below `solved`.
    pub progress: f32,
}

impl Default for Rewards {
    fn default() -> Self {
        Self {
            solved: 1.0,
            broken: -1.0,
            malformed: -0.5,
            rejected: -0.5,
            turn: -0.01,
            no_exit: -0.5,
            progress: 0.0,
        }
    }
}

impl Rewards {
    /// What ending early costs after `taken` of `max_turns` turns: `no_exit` plus the turns
    /// not taken, so ending early scores like playing valid commands up to the limit.
    pub fn unfinished(&self, taken: usize, max_turns: usize) -> f32 {
        self.no_exit + self.turn * max_turns.saturating_sub(taken) as f32
    }

    /// The credit of an end with failing tests: `progress` times the gain in the share of
    /// passing tests from `start` to `end` (shares in 0..=1), never negative.
    pub fn progress_credit(&self, start: f32, end: f32) -> f32 {
        self.progress * (end - start).max(0.0)
    }
}

/// How an episode is played.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EpisodeConfig {
    /// Turns before the episode ends without `EXIT` (the paper uses 10). With 0 the episode
    /// is over before its first turn.
    pub max_turns: usize,
    /// Limits for every execution.
    pub limits: Limits,
    /// The reward scheme.
    pub rewards: Rewards,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            max_turns: 10,
            limits: Limits::default(),
            rewards: Rewards::default(),
        }
    }
}

/// What a turn's output did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// The command edited the program, which was then run.
    Edited {
        /// The execution status after the edit.
        status: Status,
        /// Tests that passed after the edit.
        tests_passed: usize,
        /// Tests run.
        tests_total: usize,
    },
    /// The output is not a command; the program is unchanged.
    Malformed {
        /// The parse error's message.
        message: String,
    },
    /// The command could not be applied; the program is unchanged.
    Rejected {
        /// The edit error's message.
        message: String,
    },
    /// `EXIT`: the episode ended.
    Exit,
}

/// One turn of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// The turn's number, from 1.
    pub turn: usize,
    /// The model's raw output.
    pub output: String,
    /// The parsed command, when the output parsed.
    pub command: Option<Command>,
    /// What happened.
    pub effect: Effect,
    /// Whether the program passes its tests after this turn.
    pub passing: bool,
    /// The reward of this turn (including the no-`EXIT` penalty on a last turn).
    pub reward: f32,
    /// The observation the model sees after this turn.
    pub observation: String,
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The model wrote `EXIT`.
    Exit,
    /// The turn limit was reached without `EXIT`.
    TurnLimit,
    /// The conversation filled the model's context before `EXIT` ([`Episode::cut`]).
    ContextFull,
}

/// The record of an episode, for data files, training and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The task played.
    pub task_id: String,
    /// The observation before the first turn.
    pub initial_observation: String,
    /// The execution status of the starting program.
    pub initial_status: Status,
    /// The starting program's first error (its own, or its first failing test's).
    #[serde(default)]
    pub initial_error: Option<ErrorInfo>,
    /// Every turn, in order.
    pub turns: Vec<Turn>,
    /// Why the episode ended; `None` while it is running.
    pub end: Option<EndReason>,
    /// Whether the program passes its tests at the end.
    pub solved: bool,
    /// The sum of the turns' rewards.
    #[serde(rename = "return")]
    pub total_reward: f32,
    /// The program at the end, in the task's line ending style.
    pub final_program: String,
}

impl Trace {
    /// Whether the tests passed after some turn but not at the end.
    pub fn solved_then_broken(&self) -> bool {
        !self.solved && self.turns.iter().any(|t| t.passing)
    }
}

/// Why [`Episode::step`] could not take a turn. The episode is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The episode already ended.
    #[error("the episode has ended")]
    Finished,
    /// The executor failed (not the program); the edit was not kept.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

/// A running episode: the tool's state between turns. Cloning copies the state (the executor
/// handle is cloned): a group of episodes of one task starts from one run of its program.
#[derive(Debug, Clone)]
pub struct Episode<E> {
    task: Task,
    executor: E,
    config: EpisodeConfig,
    program: Program,
    passing: bool,
    /// The share of the tests the program passes now, and did at the start (0 when it does not
    /// run).
    passing_share: f32,
    initial_passing_share: f32,
    initial_status: Status,
    initial_error: Option<ErrorInfo>,
    initial_observation: String,
    observation: String,
    turns: Vec<Turn>,
    end: Option<EndReason>,
}

impl<E: Executor> Episode<E> {
    /// Starts an episode: runs the task's program once to make the first observation.
    pub fn start(task: Task, executor: E, config: EpisodeConfig) -> Result<Self, ExecutorError> {
        let program = Program::parse(&task.code);
        let outcome = execute(&executor, &task, &program, &config.limits)?;
        let feedback = render_feedback(&outcome, &task.tests, &config.limits);
        let observation = render_observation(&program, &feedback);
        let passing = outcome.is_passed();
        let share = passing_share(&outcome, task.tests.len());
        Ok(Self {
            task,
            executor,
            config,
            program,
            passing,
            passing_share: share,
            initial_passing_share: share,
            initial_status: outcome.status,
            initial_error: outcome.error,
            initial_observation: observation.clone(),
            observation,
            turns: Vec::new(),
            end: (config.max_turns == 0).then_some(EndReason::TurnLimit),
        })
    }

    /// Takes one turn: parses the model's `output`, applies it, runs the program when it
    /// changed, and records the turn with its reward and the new observation.
    pub fn step(&mut self, output: &str) -> Result<&Turn, StepError> {
        if self.end.is_some() {
            return Err(StepError::Finished);
        }
        let rewards = self.config.rewards;
        let parsed = Command::parse(output);
        let (command, effect, mut reward) = match parsed {
            Err(error) => {
                let message = error.to_string();
                self.show_feedback(&render_invalid_command(&message));
                (None, Effect::Malformed { message }, rewards.malformed)
            }
            Ok(Command::Exit) => (Some(Command::Exit), Effect::Exit, 0.0),
            Ok(command) => {
                let (effect, reward) = self.edit(&command)?;
                (Some(command), effect, reward)
            }
        };
        reward += rewards.turn;
        let taken = self.turns.len() + 1;
        if effect == Effect::Exit {
            self.end = Some(EndReason::Exit);
            if !self.passing {
                // Giving up scores like trying until the limit.
                reward += rewards.unfinished(taken, self.config.max_turns) + self.credit();
            }
        } else if taken >= self.config.max_turns {
            self.end = Some(EndReason::TurnLimit);
            reward += rewards.no_exit + self.credit();
        }
        let index = self.turns.len();
        self.turns.push(Turn {
            turn: index + 1,
            output: output.to_owned(),
            command,
            effect,
            passing: self.passing,
            reward,
            observation: self.observation.clone(),
        });
        Ok(&self.turns[index])
    }

    /// Ends the episode because the model's context is full (the next observation would not
    /// fit): scored like reaching the turn limit, on the last turn taken. Does nothing to an
    /// episode that has ended.
    pub fn cut(&mut self) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(EndReason::ContextFull);
        let penalty = self
            .config
            .rewards
            .unfinished(self.turns.len(), self.config.max_turns)
            + self.credit();
        if let Some(last) = self.turns.last_mut() {
            last.reward += penalty;
        }
    }

    /// Applies a well-formed edit and runs the result; on executor failure nothing changes.
    fn edit(&mut self, command: &Command) -> Result<(Effect, f32), ExecutorError> {
        let mut edited = self.program.clone();
        if let Err(error) = edited.apply(command) {
            let message = error.to_string();
            self.show_feedback(&render_invalid_command(&message));
            return Ok((Effect::Rejected { message }, self.config.rewards.rejected));
        }
        let outcome = execute(&self.executor, &self.task, &edited, &self.config.limits)?;
        self.program = edited;
        let was_passing = self.passing;
        self.passing = outcome.is_passed();
        self.passing_share = passing_share(&outcome, self.task.tests.len());
        let reward = match (was_passing, self.passing) {
            (false, true) => self.config.rewards.solved,
            (true, false) => self.config.rewards.broken,
            _ => 0.0,
        };
        let feedback = render_feedback(&outcome, &self.task.tests, &self.config.limits);
        self.show_feedback(&feedback);
        let effect = Effect::Edited {
            status: outcome.status,
            tests_passed: outcome.tests_passed(),
            tests_total: outcome.tests.len(),
        };
        Ok((effect, reward))
    }

    fn show_feedback(&mut self, feedback: &str) {
        self.observation = render_observation(&self.program, feedback);
    }

    /// The progress credit of ending now (nothing when the tests pass: `solved` paid for it).
    fn credit(&self) -> f32 {
        if self.passing {
            return 0.0;
        }
        self.config
            .rewards
            .progress_credit(self.initial_passing_share, self.passing_share)
    }
}

/// The share of the task's `total` tests an outcome passed: a test that did not run (the
/// program did not compile, or stopped before it) counts as failed.
fn passing_share(outcome: &Outcome, total: usize) -> f32 {
    if total == 0 {
        return 0.0;
    }
    outcome.tests_passed().min(total) as f32 / total as f32
}

impl<E> Episode<E> {
    /// The task being repaired.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The program as it stands.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// What the model sees now: the numbered program and the latest feedback.
    pub fn observation(&self) -> &str {
        &self.observation
    }

    /// The turns taken so far.
    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// Whether the program passes its tests now.
    pub fn is_passing(&self) -> bool {
        self.passing
    }

    /// Why the episode ended, or `None` while it runs.
    pub fn end(&self) -> Option<EndReason> {
        self.end
    }

    /// Whether the episode has ended.
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// The sum of the rewards so far.
    pub fn total_reward(&self) -> f32 {
        self.turns.iter().map(|t| t.reward).sum()
    }

    /// The record of the episode so far.
    pub fn trace(&self) -> Trace {
        Trace {
            task_id: self.task.task_id.clone(),
            initial_observation: self.initial_observation.clone(),
            initial_status: self.initial_status,
            initial_error: self.initial_error.clone(),
            turns: self.turns.clone(),
            end: self.end,
            solved: self.passing,
            total_reward: self.total_reward(),
            final_program: self.program.to_source(),
        }
    }
}

fn execute<E: Executor>(
    executor: &E,
    task: &Task,
    program: &Program,
    limits: &Limits,
) -> Result<Outcome, ExecutorError> {
    let source = program.to_python();
    executor.execute(&task.request(&source, *limits))
}
