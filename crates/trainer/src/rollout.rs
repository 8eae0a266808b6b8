//! Playing episodes with the policy against the real environment: the model writes one command
//! per turn, the episode applies and runs it, the observation is appended to the model's
//! context. The key/value cache lives across the turns of each episode.
//!
//! Episodes advance in lockstep: each turn, every live episode prefills its new observation (a
//! task's prompt once for its whole group), then all of them decode together as the rows of one
//! batch ([`coe_policy::generate::decode_batch`]), so each pass over the weights serves every
//! row; then their commands run in the environment, side by side on [`PlayConfig::workers`]
//! threads (sandbox steps take milliseconds). Every episode samples with its own seeded
//! generator, so results do not depend on batching or thread timing.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::prelude::Backend;
use coe_data::prompt::opening;
use coe_exec::{Executor, ExecutorError};
use coe_policy::generate::{decode_batch, prefill_batch};
use coe_policy::{Adapters, ChatMessage, Generation, Policy, SamplingConfig, Session, StopReason};
use coe_tool_state::{Episode, EpisodeConfig, StepError, Task, Trace};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::TrainerError;
use crate::chat::{answer_text, prompt_ids};

/// The model's part of one turn, for the policy-gradient update.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSpan {
    /// Index in [`Rollout::tokens`] of the first generated token.
    pub start: usize,
    /// Generated token count.
    pub len: usize,
    /// Log-probabilities of the generated tokens under the sampling policy.
    pub old_logprobs: Vec<f32>,
    /// The turn's reward.
    pub reward: f32,
}

/// One played episode: its trace and the token sequence the model saw and wrote.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The episode's record.
    pub trace: Trace,
    /// The whole conversation as token ids.
    pub tokens: Vec<u32>,
    /// The model's turns within `tokens`.
    pub turns: Vec<TurnSpan>,
    /// Whether the episode stopped because the context was full.
    pub context_full: bool,
}

/// The context limit of episodes unless a configuration says otherwise, in tokens (the
/// paper's).
pub const DEFAULT_CONTEXT: usize = 2048;

/// Settings of episodes played with the policy.
#[derive(Debug, Clone, Copy)]
pub struct PlayConfig {
    /// The environment's settings (turn limit, rewards, limits).
    pub episode: EpisodeConfig,
    /// How commands are sampled.
    pub sampling: SamplingConfig,
    /// Context limit in tokens; an episode whose conversation would exceed it ends there.
    pub context: usize,
    /// Threads that run the environment steps of a turn side by side; 0 runs them on the
    /// model's thread, one after the other.
    pub workers: usize,
    /// Episodes that generate together as the rows of one batch (tasks open while their groups
    /// fit; a group larger than this still opens alone). More rows share each pass over the
    /// weights and hold more key/value caches.
    pub batch: usize,
}

impl Default for PlayConfig {
    fn default() -> Self {
        Self {
            episode: EpisodeConfig::default(),
            sampling: SamplingConfig::default(),
            context: DEFAULT_CONTEXT,
            workers: 1,
            batch: DEFAULT_BATCH,
        }
    }
}

/// Episodes generating together unless a configuration says otherwise (see
/// [`PlayConfig::batch`]).
pub const DEFAULT_BATCH: usize = 16;

/// Where the time of [`play_tasks`] went, and how much work it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlayStats {
    /// Episodes played.
    pub episodes: usize,
    /// Environment steps (model turns applied and run).
    pub env_steps: usize,
    /// Tokens the model generated.
    pub generated_tokens: usize,
    /// Prompt and observation tokens the model read.
    pub prompt_tokens: usize,
    /// Seconds the model spent prefilling prompts and observations.
    pub prefill_s: f64,
    /// Seconds the model spent decoding commands.
    pub decode_s: f64,
    /// Batched decodes run (one per turn of the episodes generating together).
    pub decode_batches: usize,
    /// Rows over all batched decodes (`decode_rows / decode_batches`: the mean batch).
    pub decode_rows: usize,
    /// Seconds spent in the environment, summed over workers (program runs, tests).
    pub env_s: f64,
    /// Seconds from start to finish.
    pub wall_s: f64,
}

impl PlayStats {
    /// Seconds the model spent (prefill and decoding, on the calling thread).
    pub fn model_s(&self) -> f64 {
        self.prefill_s + self.decode_s
    }
}

/// The model's text for a turn: generated tokens without the stop token, first line only.
fn command_text<B: Backend>(policy: &Policy<B>, tokens: &[u32]) -> Result<String, TrainerError> {
    let text = answer_text(&policy.tokenizer, tokens)?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// The model's side of running episode `slot`.
fn running<B: Backend>(
    episodes: &mut [Option<Slot<B>>],
    slot: usize,
) -> Result<&mut Slot<B>, TrainerError> {
    episodes
        .get_mut(slot)
        .and_then(Option::as_mut)
        .ok_or_else(|| TrainerError::Data(format!("episode {slot} is not running")))
}

/// Plays `n` episodes of `task` from one shared prompt (prefilled once, then sampled `n` times).
pub fn play<B: Backend, E: Executor + Clone + Send>(
    policy: &Policy<B>,
    task: &Task,
    executor: &E,
    n: usize,
    config: &PlayConfig,
    rng: &mut StdRng,
) -> Result<Vec<Rollout>, TrainerError> {
    let (mut groups, _) = play_tasks(
        policy,
        std::slice::from_ref(task),
        executor,
        n,
        config,
        rng,
        |_, _| {},
    )?;
    Ok(groups.pop().unwrap_or_default())
}

/// Plays `n` episodes of every task, pipelined (see the module docs); `on_group(i, rollouts)`
/// sees task `i`'s group as soon as it is complete. Returns the groups in task order.
pub fn play_tasks<B: Backend, E: Executor + Clone + Send>(
    policy: &Policy<B>,
    tasks: &[Task],
    executor: &E,
    n: usize,
    config: &PlayConfig,
    rng: &mut StdRng,
    on_group: impl FnMut(usize, &[Rollout]),
) -> Result<(Vec<Vec<Rollout>>, PlayStats), TrainerError> {
    let seeds: Vec<u64> = tasks.iter().map(|_| rng.next_u64()).collect();
    play_tasks_seeded(policy, tasks, &seeds, executor, n, config, on_group)
}

/// [`play_tasks`] with each task's sampling seed given (`seeds[i]` for `tasks[i]`), so a task
/// plays the same episodes whichever other tasks it is played with (evaluation shards).
pub fn play_tasks_seeded<B: Backend, E: Executor + Clone + Send>(
    policy: &Policy<B>,
    tasks: &[Task],
    seeds: &[u64],
    executor: &E,
    n: usize,
    config: &PlayConfig,
    on_group: impl FnMut(usize, &[Rollout]),
) -> Result<(Vec<Vec<Rollout>>, PlayStats), TrainerError> {
    if seeds.len() != tasks.len() {
        return Err(TrainerError::Data(format!(
            "{} seeds for {} tasks",
            seeds.len(),
            tasks.len()
        )));
    }
    let started = Instant::now();
    let mut player = Player {
        policy,
        tasks,
        n,
        config,
        seeds,
        episodes: Vec::new(),
        groups: tasks.iter().map(|_| (0, Vec::new())).collect(),
        open_groups: 0,
        on_group,
        stats: PlayStats::default(),
        environment: PhantomData,
    };
    let result = if config.workers == 0 || tasks.is_empty() {
        player.run(&mut Inline::new(executor, config.episode))
    } else {
        std::thread::scope(|scope| {
            let mut pool = Pool::start(scope, executor, config.episode, config.workers);
            player.run(&mut pool)
        })
    };
    result?;
    player.stats.wall_s = started.elapsed().as_secs_f64();
    let groups = player
        .groups
        .into_iter()
        .map(|(_, rollouts)| rollouts.into_iter().flatten().collect())
        .collect();
    Ok((groups, player.stats))
}

/// Work for the environment.
enum Job<E> {
    /// Start task `group`'s episode (run its program once).
    Start { group: usize, task: Task },
    /// Apply `output` in episode `slot`.
    Step {
        slot: usize,
        episode: Box<Episode<E>>,
        output: String,
    },
}

/// The environment's answer to a [`Job`], with the seconds it took.
enum Done<E> {
    Started {
        group: usize,
        episode: Result<Box<Episode<E>>, ExecutorError>,
        secs: f64,
    },
    Stepped {
        slot: usize,
        episode: Box<Episode<E>>,
        result: Result<(), StepError>,
        secs: f64,
    },
}

fn run_job<E: Executor + Clone>(job: Job<E>, executor: &E, config: EpisodeConfig) -> Done<E> {
    let clock = Instant::now();
    match job {
        Job::Start { group, task } => {
            let episode = Episode::start(task, executor.clone(), config).map(Box::new);
            Done::Started {
                group,
                episode,
                secs: clock.elapsed().as_secs_f64(),
            }
        }
        Job::Step {
            slot,
            mut episode,
            output,
        } => {
            let result = episode.step(&output).map(|_| ());
            Done::Stepped {
                slot,
                episode,
                result,
                secs: clock.elapsed().as_secs_f64(),
            }
        }
    }
}

/// Runs environment jobs somewhere and hands back their results.
trait Environment<E> {
    fn submit(&mut self, job: Job<E>);
    /// A finished job, waiting for one when `block`; `None` when nothing is (or will be) done.
    fn next(&mut self, block: bool) -> Option<Done<E>>;
}

/// Runs each job at once on the calling thread.
struct Inline<'a, E> {
    executor: &'a E,
    config: EpisodeConfig,
    done: VecDeque<Done<E>>,
}

impl<'a, E> Inline<'a, E> {
    fn new(executor: &'a E, config: EpisodeConfig) -> Self {
        Self {
            executor,
            config,
            done: VecDeque::new(),
        }
    }
}

impl<E: Executor + Clone> Environment<E> for Inline<'_, E> {
    fn submit(&mut self, job: Job<E>) {
        self.done
            .push_back(run_job(job, self.executor, self.config));
    }

    fn next(&mut self, _block: bool) -> Option<Done<E>> {
        self.done.pop_front()
    }
}

/// Worker threads fed through a shared queue; they stop when the pool is dropped.
struct Pool<E> {
    jobs: Option<Sender<Job<E>>>,
    done: Receiver<Done<E>>,
    in_flight: usize,
}

impl<E: Executor + Clone + Send> Pool<E> {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        executor: &E,
        config: EpisodeConfig,
        workers: usize,
    ) -> Self
    where
        E: 'scope,
    {
        let (jobs, queue) = mpsc::channel::<Job<E>>();
        let (finished, done) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..workers {
            let queue = Arc::clone(&queue);
            let finished = finished.clone();
            // Each worker owns an executor handle, so executors need not be shared (Sync).
            let executor = executor.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a job, not while running it.
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if finished.send(run_job(job, &executor, config)).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            jobs: Some(jobs),
            done,
            in_flight: 0,
        }
    }
}

impl<E> Drop for Pool<E> {
    fn drop(&mut self) {
        // Closing the queue lets the workers return, so the scope can join them.
        self.jobs.take();
    }
}

impl<E: Send> Environment<E> for Pool<E> {
    fn submit(&mut self, job: Job<E>) {
        if let Some(jobs) = &self.jobs
            && jobs.send(job).is_ok()
        {
            self.in_flight += 1;
        }
    }

    fn next(&mut self, block: bool) -> Option<Done<E>> {
        if self.in_flight == 0 {
            return None;
        }
        let done = if block {
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        };
        if done.is_some() {
            self.in_flight -= 1;
        }
        done
    }
}

/// The model's side of an episode between its turns.
struct Slot<B: Backend> {
    group: usize,
    index: usize,
    session: Session<B>,
    turns: Vec<TurnSpan>,
    /// The generation the environment is applying now, and where it starts in the session.
    pending: Generation,
    start: usize,
    rng: StdRng,
}

/// Model work that is ready to run.
enum Ready<E> {
    /// A task's first observation is in: prefill its prompt and sample the group's commands.
    Open {
        group: usize,
        episode: Box<Episode<E>>,
    },
    /// An episode took a step and goes on: sample its next command.
    Continue {
        slot: usize,
        episode: Box<Episode<E>>,
    },
}

struct Player<'a, B: Backend, E, F> {
    policy: &'a Policy<B>,
    tasks: &'a [Task],
    n: usize,
    config: &'a PlayConfig,
    seeds: &'a [u64],
    episodes: Vec<Option<Slot<B>>>,
    /// Per task: episodes still running, and the finished rollouts by index in the group.
    groups: Vec<(usize, Vec<Option<Rollout>>)>,
    /// Tasks started and not yet complete.
    open_groups: usize,
    on_group: F,
    stats: PlayStats,
    environment: PhantomData<fn() -> E>,
}

impl<B: Backend, E: Executor + Clone, F: FnMut(usize, &[Rollout])> Player<'_, B, E, F> {
    fn run(&mut self, env: &mut impl Environment<E>) -> Result<(), TrainerError> {
        // Tasks open while their episodes fit in one decode batch, so only their key/value
        // caches are held at once (one task at least, whatever its group size).
        let groups_at_once = (self.config.batch / self.n.max(1)).max(1);
        let mut next_task = 0;
        loop {
            while self.open_groups < groups_at_once && next_task < self.tasks.len() {
                env.submit(Job::Start {
                    group: next_task,
                    task: self.tasks[next_task].clone(),
                });
                next_task += 1;
                self.open_groups += 1;
            }
            if self.open_groups == 0 {
                return Ok(());
            }
            // Lockstep: wait for every environment job in flight (they take milliseconds), so
            // the model runs all the work they make ready as one batch.
            let mut ready = Vec::new();
            while let Some(done) = env.next(true) {
                if let Some(work) = self.finished(done)? {
                    ready.push(work);
                }
            }
            if ready.is_empty() && self.open_groups > 0 {
                return Err(TrainerError::Data(
                    "episodes are open but nothing is running".into(),
                ));
            }
            self.model_turn(ready, env)?;
        }
    }

    /// Books a finished environment job; returns the model work it makes ready.
    fn finished(&mut self, done: Done<E>) -> Result<Option<Ready<E>>, TrainerError> {
        match done {
            Done::Started {
                group,
                episode,
                secs,
            } => {
                self.stats.env_s += secs;
                Ok(Some(Ready::Open {
                    group,
                    episode: episode?,
                }))
            }
            Done::Stepped {
                slot,
                episode,
                result,
                secs,
            } => {
                self.stats.env_s += secs;
                self.stats.env_steps += 1;
                result?;
                let state = running(&mut self.episodes, slot)?;
                let reward = episode.turns().last().map_or(0.0, |t| t.reward);
                state.turns.push(TurnSpan {
                    start: state.start,
                    len: state.pending.tokens.len(),
                    old_logprobs: std::mem::take(&mut state.pending.logprobs),
                    reward,
                });
                if episode.is_done() {
                    self.close(slot, &episode, false);
                    Ok(None)
                } else {
                    Ok(Some(Ready::Continue { slot, episode }))
                }
            }
        }
    }

    /// One model turn of every ready episode: what is new to each (a group's prompt once for
    /// all its episodes, or an episode's observation) is prefilled as one packed batch, then
    /// all decode together, then their commands go to the environment.
    fn model_turn(
        &mut self,
        ready: Vec<Ready<E>>,
        env: &mut impl Environment<E>,
    ) -> Result<(), TrainerError> {
        let clock = Instant::now();
        let mut work = Vec::with_capacity(ready.len());
        let mut sessions = Vec::with_capacity(ready.len());
        for item in ready {
            let session = match &item {
                Ready::Open { group, episode } => self.opening(*group, episode)?,
                Ready::Continue { slot, episode } => self.observe(*slot, episode)?,
            };
            match session {
                Some(session) => {
                    work.push(item);
                    sessions.push(session);
                }
                // Cut by the context: scored like the turn limit.
                None => match item {
                    Ready::Continue { slot, mut episode } => {
                        episode.cut();
                        self.close(slot, &episode, true);
                    }
                    Ready::Open { group, mut episode } => {
                        episode.cut();
                        self.cut_group(group, &episode);
                    }
                },
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let model = &self.policy.model;
        let mut refs: Vec<&mut Session<B>> = sessions.iter_mut().collect();
        let logits = prefill_batch(model, &mut refs, Adapters::On)?;
        self.stats.prefill_s += clock.elapsed().as_secs_f64();
        let mut rows: Vec<DecodeRow<B, E>> = Vec::new();
        for ((item, session), logits) in work.into_iter().zip(sessions).zip(logits) {
            match item {
                Ready::Open { group, episode } => {
                    rows.extend(self.open(group, episode, session, logits)?);
                }
                Ready::Continue { slot, episode } => rows.push((slot, episode, session, logits)),
            }
        }
        let clock = Instant::now();
        rows.sort_unstable_by_key(|row| row.0);
        let (slots, episodes, inputs) = rows.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut slots, mut episodes, mut inputs), (slot, episode, session, logits)| {
                slots.push(slot);
                episodes.push(episode);
                inputs.push((session, logits));
                (slots, episodes, inputs)
            },
        );
        // Each episode samples with its own generator, so batching does not change its draws.
        let mut rngs: Vec<&mut StdRng> = self
            .episodes
            .iter_mut()
            .enumerate()
            .filter(|(slot, _)| slots.binary_search(slot).is_ok())
            .filter_map(|(_, state)| state.as_mut().map(|s| &mut s.rng))
            .collect();
        let generations = decode_batch(
            model,
            &self.policy.tokenizer,
            inputs,
            &mut rngs,
            &self.config.sampling,
        )?;
        self.stats.decode_s += clock.elapsed().as_secs_f64();
        self.stats.decode_rows += slots.len();
        self.stats.decode_batches += 1;
        for ((slot, episode), (generation, session)) in
            slots.into_iter().zip(episodes).zip(generations)
        {
            let state = running(&mut self.episodes, slot)?;
            state.session = session;
            state.pending = generation;
            self.submit_step(slot, episode, env)?;
        }
        Ok(())
    }

    /// A session holding task `group`'s prompt, not yet run; `None` when the prompt and a
    /// command would not fit the context.
    fn opening(
        &mut self,
        group: usize,
        episode: &Episode<E>,
    ) -> Result<Option<Session<B>>, TrainerError> {
        let policy = self.policy;
        let messages = opening(&self.tasks[group], episode.observation());
        let prompt = prompt_ids(&policy.tokenizer, &messages)?;
        if prompt.len() + self.config.sampling.max_tokens > self.config.context {
            return Ok(None);
        }
        self.stats.prompt_tokens += prompt.len();
        let mut session = Session::new(&policy.model);
        session.push(&prompt);
        Ok(Some(session))
    }

    /// Reports task `group`'s episodes as cut before their first turn (its prompt does not fit
    /// the context).
    fn cut_group(&mut self, group: usize, episode: &Episode<E>) {
        let rollout = Rollout {
            trace: episode.trace(),
            tokens: Vec::new(),
            turns: Vec::new(),
            context_full: true,
        };
        self.stats.episodes += self.n;
        self.groups[group] = (0, (0..self.n).map(|_| Some(rollout.clone())).collect());
        self.group_done(group);
    }

    /// Gives task `group`'s episodes their slots: one decode row each, all sharing the
    /// prefilled prompt's cache.
    fn open(
        &mut self,
        group: usize,
        episode: Box<Episode<E>>,
        session: Session<B>,
        logits: Vec<f32>,
    ) -> Result<Vec<DecodeRow<B, E>>, TrainerError> {
        let policy = self.policy;
        let mut rng = StdRng::seed_from_u64(self.seeds[group]);
        let count = self.n;
        self.groups[group] = (count, (0..count).map(|_| None).collect());
        if count == 0 {
            self.group_done(group);
        }
        let mut episode = Some(episode);
        let mut rows = Vec::with_capacity(count);
        for index in 0..count {
            // The last episode takes the started one; the others are copies of it.
            let episode = if index + 1 == count {
                episode.take()
            } else {
                episode.clone()
            }
            .ok_or_else(|| TrainerError::Data("no episode to continue".into()))?;
            let slot = self.episodes.len();
            self.episodes.push(Some(Slot {
                group,
                index,
                session: Session::new(&policy.model),
                turns: Vec::new(),
                pending: Generation::default(),
                start: session.tokens().len(),
                rng: StdRng::seed_from_u64(rng.next_u64()),
            }));
            rows.push((slot, episode, session.clone(), logits.clone()));
        }
        Ok(rows)
    }

    /// Episode `slot`'s session with the observation after its step appended, not yet run;
    /// `None` when it would not fit the context.
    fn observe(
        &mut self,
        slot: usize,
        episode: &Episode<E>,
    ) -> Result<Option<Session<B>>, TrainerError> {
        let policy = self.policy;
        let template = policy.tokenizer.template();
        let state = running(&mut self.episodes, slot)?;
        // Close the assistant message as the template does, then the next observation.
        let mut text = String::new();
        if state.pending.stop != StopReason::EndOfTurn {
            text.push_str(template.end_of_turn());
        }
        text.push_str(template.after_end_of_turn());
        text.push_str(&template.message(ChatMessage {
            role: "user",
            content: episode.observation(),
        }));
        text.push_str(template.generation_prompt());
        let next = policy.tokenizer.encode(&text)?;
        let needed = state.session.tokens().len() + next.len() + self.config.sampling.max_tokens;
        if needed > self.config.context {
            return Ok(None);
        }
        self.stats.prompt_tokens += next.len();
        let mut session = std::mem::replace(&mut state.session, Session::new(&policy.model));
        session.push(&next);
        state.start = session.tokens().len();
        Ok(Some(session))
    }

    /// Sends the pending command of episode `slot` to the environment.
    fn submit_step(
        &mut self,
        slot: usize,
        episode: Box<Episode<E>>,
        env: &mut impl Environment<E>,
    ) -> Result<(), TrainerError> {
        let state = running(&mut self.episodes, slot)?;
        self.stats.generated_tokens += state.pending.tokens.len();
        let output = command_text(self.policy, &state.pending.tokens)?;
        env.submit(Job::Step {
            slot,
            episode,
            output,
        });
        Ok(())
    }

    /// Ends episode `slot`, freeing its cache; reports its group when that was the last one.
    fn close(&mut self, slot: usize, episode: &Episode<E>, context_full: bool) {
        let Some(state) = self.episodes.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.stats.episodes += 1;
        let mut turns = state.turns;
        // The last turn's reward may have changed since it was booked (a context cut).
        if let (Some(span), Some(turn)) = (turns.last_mut(), episode.turns().last()) {
            span.reward = turn.reward;
        }
        let (running, rollouts) = &mut self.groups[state.group];
        rollouts[state.index] = Some(Rollout {
            trace: episode.trace(),
            tokens: state.session.tokens().to_vec(),
            turns,
            context_full,
        });
        *running -= 1;
        if *running == 0 {
            self.group_done(state.group);
        }
    }

    fn group_done(&mut self, group: usize) {
        self.open_groups -= 1;
        let rollouts: Vec<Rollout> = self.groups[group].1.iter().flatten().cloned().collect();
        (self.on_group)(group, &rollouts);
    }
}

/// An episode ready to decode: its slot, the episode, its prefilled session and the logits
/// after the session's last token.
type DecodeRow<B, E> = (usize, Box<Episode<E>>, Session<B>, Vec<f32>);
