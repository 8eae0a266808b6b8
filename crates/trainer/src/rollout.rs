//! Playing episodes with the policy against the real environment: the model writes one command
//! per turn, the episode applies and runs it, the observation is appended to the model's
//! context. The key/value cache lives across the turns of each episode.

use burn::prelude::Backend;
use coe_data::prompt::opening;
use coe_exec::Executor;
use coe_policy::{ChatMessage, Policy, SamplingConfig, Session, StopReason};
use coe_tool_state::{Episode, EpisodeConfig, Task, Trace};
use rand::rngs::StdRng;

use crate::TrainerError;

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

/// Settings of episodes played with the policy.
#[derive(Debug, Clone, Copy)]
pub struct PlayConfig {
    /// The environment's settings (turn limit, rewards, limits).
    pub episode: EpisodeConfig,
    /// How commands are sampled.
    pub sampling: SamplingConfig,
    /// Context limit in tokens; an episode whose conversation would exceed it ends there.
    pub context: usize,
}

/// The model's text for a turn: generated tokens without the stop token, first line only.
fn command_text<B: Backend>(policy: &Policy<B>, tokens: &[u32]) -> Result<String, TrainerError> {
    let visible: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|&t| !policy.tokenizer.is_stop(t))
        .collect();
    let text = policy.tokenizer.decode(&visible)?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Plays `n` episodes of `task` from one shared prompt (prefilled once, then sampled `n` times).
pub fn play<B: Backend, E: Executor + Clone>(
    policy: &Policy<B>,
    task: &Task,
    executor: &E,
    n: usize,
    config: &PlayConfig,
    rng: &mut StdRng,
) -> Result<Vec<Rollout>, TrainerError> {
    let template = policy.tokenizer.template();
    let first = Episode::start(task.clone(), executor.clone(), config.episode)?;
    let messages = opening(task, first.observation());
    let chat: Vec<ChatMessage<'_>> = messages
        .iter()
        .map(|m| ChatMessage {
            role: crate::chat::role_name(m.role),
            content: &m.content,
        })
        .collect();
    let prompt = policy.tokenizer.encode(&template.render(&chat, true))?;
    let mut session = Session::new(&policy.model);
    session.push(&prompt);
    let firsts = session.generate(&policy.model, &policy.tokenizer, n, &config.sampling, rng)?;
    let mut rollouts = Vec::with_capacity(n);
    let mut first = Some(first);
    for (generation, session) in firsts {
        let episode = match first.take() {
            Some(episode) => episode,
            None => Episode::start(task.clone(), executor.clone(), config.episode)?,
        };
        rollouts.push(continue_episode(
            policy,
            episode,
            prompt.len(),
            generation,
            session,
            config,
            rng,
        )?);
    }
    Ok(rollouts)
}

fn continue_episode<B: Backend, E: Executor>(
    policy: &Policy<B>,
    mut episode: Episode<E>,
    prompt_len: usize,
    mut generation: coe_policy::Generation,
    mut session: Session<B>,
    config: &PlayConfig,
    rng: &mut StdRng,
) -> Result<Rollout, TrainerError> {
    let template = policy.tokenizer.template();
    let mut turns = Vec::new();
    let mut start = prompt_len;
    let mut context_full = false;
    loop {
        let output = command_text(policy, &generation.tokens)?;
        let turn = episode.step(&output)?;
        turns.push(TurnSpan {
            start,
            len: generation.tokens.len(),
            old_logprobs: generation.logprobs.clone(),
            reward: turn.reward,
        });
        if episode.is_done() {
            break;
        }
        // Close the assistant message as the template does, then the next observation.
        let mut text = String::new();
        if generation.stop != StopReason::EndOfTurn {
            text.push_str(template.end_of_turn());
        }
        text.push_str(template.after_end_of_turn());
        text.push_str(&template.message(ChatMessage {
            role: "user",
            content: episode.observation(),
        }));
        text.push_str(template.generation_prompt());
        let next = policy.tokenizer.encode(&text)?;
        if session.tokens().len() + next.len() + config.sampling.max_tokens > config.context {
            context_full = true;
            break;
        }
        session.push(&next);
        start = session.tokens().len();
        let (g, s) = session
            .generate(&policy.model, &policy.tokenizer, 1, &config.sampling, rng)?
            .pop()
            .ok_or_else(|| TrainerError::Data("no generation".into()))?;
        generation = g;
        session = s;
    }
    Ok(Rollout {
        trace: episode.trace(),
        tokens: session.tokens().to_vec(),
        turns,
        context_full,
    })
}
