//! Sampling with a key/value cache that lives as long as an episode: a [`Session`] holds the
//! cache and the tokens not yet run, so each turn prefills only what was appended since.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::PolicyError;
use crate::cache::KvCache;
use crate::lora::Adapters;
use crate::model::Llama;
use crate::tokenizer::TextTokenizer;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Most tokens to generate per call.
    pub max_tokens: usize,
    /// Stop after a token containing a line break (one command per turn).
    pub stop_at_newline: bool,
    /// Stop once the text has opened and closed a fenced code block (a whole-program answer
    /// whose program is that block: nothing after it can change the program).
    #[serde(default)]
    pub stop_after_code_block: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 96,
            stop_at_newline: true,
            stop_after_code_block: false,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of up to `max_tokens`, stopping only at end of turn.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            stop_at_newline: false,
            stop_after_code_block: false,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn (or the text).
    EndOfTurn,
    /// A line break was generated.
    Newline,
    /// `max_tokens` was reached.
    #[default]
    MaxTokens,
    /// The context limit was reached.
    ContextFull,
    /// A fenced code block was closed ([`SamplingConfig::stop_after_code_block`]).
    CodeBlock,
}

/// One generated continuation.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// Generated ids, including the stop token when there was one.
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token under the sampling distribution's logits
    /// (temperature applied, before top-p): the "old" log-probs of the importance ratio.
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub stop: StopReason,
}

/// The state of one conversation with the model: cached positions plus tokens still to run.
#[derive(Debug, Clone)]
pub struct Session<B: Backend> {
    cache: KvCache<B>,
    tokens: Vec<u32>,
    pending: Vec<u32>,
}

impl<B: Backend> Session<B> {
    /// An empty session.
    pub fn new(model: &Llama<B>) -> Self {
        Self {
            cache: model.new_cache(),
            tokens: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Appends tokens (run on the next generation or [`Session::prefill`]).
    pub fn push(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
        self.pending.extend_from_slice(tokens);
    }

    /// Every token of the conversation so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions already in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Runs the pending tokens and returns the logits after the last one.
    pub fn prefill(
        &mut self,
        model: &Llama<B>,
        adapters: Adapters,
    ) -> Result<Vec<f32>, PolicyError> {
        prefill_batch(model, &mut [self], adapters)?
            .pop()
            .ok_or_else(|| PolicyError::Generation("the model returned no logits".into()))
    }

    /// Samples `n` continuations of the session. The pending tokens are run once and the rows
    /// decode together, sharing the prompt's cache; each result comes with its own session (its
    /// generated tokens appended), ready for the next turn.
    pub fn generate(
        mut self,
        model: &Llama<B>,
        tokenizer: &TextTokenizer,
        n: usize,
        config: &SamplingConfig,
        rng: &mut StdRng,
    ) -> Result<Vec<(Generation, Session<B>)>, PolicyError> {
        let logits = self.prefill(model, Adapters::On)?;
        self.decode(model, tokenizer, logits, n, config, rng)
    }

    /// Like [`Session::generate`], for a session whose pending tokens were already run by
    /// [`Session::prefill`], which returned `logits`. One row samples with `rng`; several rows
    /// each get a generator seeded from it, so a row's tokens do not depend on the others'.
    pub fn decode(
        self,
        model: &Llama<B>,
        tokenizer: &TextTokenizer,
        logits: Vec<f32>,
        n: usize,
        config: &SamplingConfig,
        rng: &mut StdRng,
    ) -> Result<Vec<(Generation, Session<B>)>, PolicyError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n == 1 {
            return decode_batch(model, tokenizer, vec![(self, logits)], &mut [rng], config);
        }
        let mut rngs = row_generators(rng, n);
        let rows = (0..n).map(|_| (self.clone(), logits.clone())).collect();
        let mut rngs: Vec<&mut StdRng> = rngs.iter_mut().collect();
        decode_batch(model, tokenizer, rows, &mut rngs, config)
    }
}

/// The generators of `n` rows sampled from one prompt, each seeded from `rng` in turn: a row's
/// draws depend on `rng` and its place alone, so the rows may decode in any batch.
pub fn row_generators(rng: &mut StdRng, n: usize) -> Vec<StdRng> {
    (0..n)
        .map(|_| StdRng::seed_from_u64(rng.next_u64()))
        .collect()
}

/// Whether `text` has opened and closed a fenced code block (two fences).
fn closes_code_block(text: &str) -> bool {
    text.matches("```").count() >= 2
}

/// Runs the pending tokens of several sessions as one packed batch ([`Llama::forward_rows`])
/// and returns the logits after each session's last token.
pub fn prefill_batch<B: Backend>(
    model: &Llama<B>,
    sessions: &mut [&mut Session<B>],
    adapters: Adapters,
) -> Result<Vec<Vec<f32>>, PolicyError> {
    let limit = model.config().max_position_embeddings;
    for session in sessions.iter() {
        if session.pending.is_empty() {
            return Err(PolicyError::Generation(
                "nothing to run: push tokens before generating".into(),
            ));
        }
        if session.tokens.len() > limit {
            return Err(PolicyError::Generation(format!(
                "the conversation ({} tokens) exceeds the context limit {limit}",
                session.tokens.len()
            )));
        }
    }
    let pending: Vec<Vec<u32>> = sessions.iter().map(|s| s.pending.clone()).collect();
    let rows: Vec<&[u32]> = pending.iter().map(Vec::as_slice).collect();
    let mut caches: Vec<&mut KvCache<B>> = sessions.iter_mut().map(|s| &mut s.cache).collect();
    let hidden = model.forward_rows(&rows, &mut caches, adapters)?;
    let logits = logits_rows(model.logits(hidden));
    if logits.len() != rows.len() {
        return Err(PolicyError::Generation(
            "the model returned no logits".into(),
        ));
    }
    // Run: no longer pending (on an error above they stay, and the caches are unchanged).
    for session in sessions.iter_mut() {
        session.pending.clear();
    }
    Ok(logits)
}

/// Samples a continuation of each of several prefilled sessions at once: `rows[i]` is a session
/// whose pending tokens were run and the logits after its last token; it samples with
/// `rngs[i]`. Every step runs the rows still generating as one batch
/// ([`Llama::forward_rows`]); a row that stops leaves the batch. Each row's tokens and
/// log-probabilities are those it would get decoding alone (up to float rounding), whatever the
/// other rows hold. Returns each row's generation and its session, ready for the next turn.
pub fn decode_batch<B: Backend>(
    model: &Llama<B>,
    tokenizer: &TextTokenizer,
    rows: Vec<(Session<B>, Vec<f32>)>,
    rngs: &mut [&mut StdRng],
    config: &SamplingConfig,
) -> Result<Vec<(Generation, Session<B>)>, PolicyError> {
    if rngs.len() != rows.len() {
        return Err(PolicyError::Generation(format!(
            "{} generators for {} rows",
            rngs.len(),
            rows.len()
        )));
    }
    if rows.iter().any(|(session, _)| !session.pending.is_empty()) {
        return Err(PolicyError::Generation(
            "decode needs a prefilled session".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    if let Some((_, logits)) = rows.iter().find(|(_, logits)| logits.len() != vocab) {
        return Err(PolicyError::Generation(format!(
            "{} logits for a vocabulary of {vocab}",
            logits.len()
        )));
    }
    let limit = model.config().max_position_embeddings;
    let (mut sessions, mut current): (Vec<Session<B>>, Vec<Vec<f32>>) = rows.into_iter().unzip();
    let mut generations: Vec<Generation> = sessions.iter().map(|_| Generation::default()).collect();
    let bases: Vec<usize> = sessions.iter().map(Session::cached).collect();
    // Rows still generating, by index.
    let mut live: Vec<usize> = (0..sessions.len()).collect();
    for step in 0..config.max_tokens {
        let mut going = Vec::with_capacity(live.len());
        for (&row, logits) in live.iter().zip(&current) {
            let (token, logprob) = sample(logits, config, rngs[row]);
            let generation = &mut generations[row];
            generation.tokens.push(token);
            generation.logprobs.push(logprob);
            let stop = if tokenizer.is_stop(token) {
                Some(StopReason::EndOfTurn)
            } else if config.stop_at_newline && tokenizer.has_newline(token) {
                Some(StopReason::Newline)
            } else if config.stop_after_code_block
                && tokenizer.has_backtick(token)
                && closes_code_block(&tokenizer.decode(&generation.tokens)?)
            {
                Some(StopReason::CodeBlock)
            } else if bases[row] + step + 1 >= limit {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            match stop {
                Some(stop) => generation.stop = stop,
                None => going.push(row),
            }
        }
        live = going;
        if live.is_empty() || step + 1 == config.max_tokens {
            break;
        }
        let last: Vec<[u32; 1]> = live
            .iter()
            .map(|&row| [generations[row].tokens.last().copied().unwrap_or(0)])
            .collect();
        let last: Vec<&[u32]> = last.iter().map(|t| t.as_slice()).collect();
        let mut caches: Vec<&mut KvCache<B>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(row, _)| live.binary_search(row).is_ok())
            .map(|(_, session)| &mut session.cache)
            .collect();
        let hidden = model.forward_rows(&last, &mut caches, Adapters::On)?;
        current = logits_rows(model.logits(hidden));
        if current.len() != live.len() {
            return Err(PolicyError::Generation(
                "the model returned no logits".into(),
            ));
        }
    }
    Ok(generations
        .into_iter()
        .zip(sessions)
        .map(|(generation, mut session)| {
            // Every generated token but the last has been run through the model.
            session.tokens.extend_from_slice(&generation.tokens);
            session.pending = generation
                .tokens
                .last()
                .map(|&t| vec![t])
                .unwrap_or_default();
            (generation, session)
        })
        .collect())
}

/// A `[rows, len]` integer tensor of token ids.
pub(crate) fn tokens_tensor<B: Backend>(
    rows: &[Vec<u32>],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let len = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}

/// Logits `[n, vocab]` as host rows.
fn logits_rows<B: Backend>(logits: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [n, vocab] = logits.dims();
    let flat: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default();
    if flat.len() != n * vocab {
        return Vec::new();
    }
    flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect()
}

/// Picks a token and returns it with its log-probability under `logits / temperature`.
fn sample(logits: &[f32], config: &SamplingConfig, rng: &mut StdRng) -> (u32, f32) {
    let temperature = if config.temperature > 0.0 {
        config.temperature as f32
    } else {
        1.0
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scaled: Vec<f32> = logits.iter().map(|&l| (l - max) / temperature).collect();
    let log_z = scaled.iter().map(|&s| s.exp()).sum::<f32>().ln();
    let logprob = |i: usize| scaled[i] - log_z;
    if config.temperature <= 0.0 {
        let best = argmax(logits);
        return (best as u32, logprob(best));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Only nucleus sampling needs the tokens by probability; plain sampling skips the sort.
    if config.top_p < 1.0 {
        order.sort_unstable_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    }
    let mut kept = Vec::new();
    let mut mass = 0.0f64;
    for &i in &order {
        let p = f64::from(logprob(i).exp());
        kept.push((i, p));
        mass += p;
        if mass >= config.top_p {
            break;
        }
    }
    let mut draw = rng.random::<f64>() * mass;
    for &(i, p) in &kept {
        draw -= p;
        if draw <= 0.0 {
            return (i as u32, logprob(i));
        }
    }
    let (i, _) = kept.last().copied().unwrap_or((0, 0.0));
    (i as u32, logprob(i))
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// The `k` largest logits as `(id, logit)`, largest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| (i as u32, logits[i]))
        .collect()
}

/// A seeded random generator for sampling.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Log-probabilities of chosen tokens, for training: runs `tokens` (`[batch, len]`, right-padded)
/// without a cache and returns, for each `(row, position)` in `targets`, the log-probability of
/// `tokens[row][position]` given the tokens before it (position >= 1). Only the target rows go
/// through the output head, which keeps the `[n, vocab]` logits small.
pub fn token_logprobs<B: Backend>(
    model: &Llama<B>,
    tokens: &[Vec<u32>],
    targets: &[(usize, usize)],
    adapters: Adapters,
) -> Result<Tensor<B, 1>, PolicyError> {
    let len = tokens.first().map_or(0, Vec::len);
    if tokens.iter().any(|row| row.len() != len) {
        return Err(PolicyError::Generation(
            "rows must be padded to one length".into(),
        ));
    }
    if let Some(&(row, pos)) = targets
        .iter()
        .find(|&&(row, pos)| row >= tokens.len() || pos == 0 || pos >= len)
    {
        return Err(PolicyError::Generation(format!(
            "target (row {row}, position {pos}) is outside the batch"
        )));
    }
    if len == 0 {
        return Err(PolicyError::Generation("no tokens to run".into()));
    }
    check_ids(model, tokens.iter().flatten())?;
    let device = model.embed.val().device();
    let mut cache = model.new_cache();
    let hidden = model.forward(tokens_tensor::<B>(tokens, &device), &mut cache, adapters);
    let d = model.config().hidden_size;
    let flat = hidden.reshape([tokens.len() * len, d]);
    // The state after position p - 1 predicts position p.
    let rows: Vec<usize> = targets.iter().map(|&(r, p)| r * len + p - 1).collect();
    let ids: Vec<u32> = targets.iter().map(|&(r, p)| tokens[r][p]).collect();
    Ok(pick_logprobs(model, flat, &rows, &ids))
}

/// An error naming the first id that is not in the model's vocabulary.
pub(crate) fn check_ids<'a, B: Backend>(
    model: &Llama<B>,
    ids: impl IntoIterator<Item = &'a u32>,
) -> Result<(), PolicyError> {
    let vocab = model.config().vocab_size;
    match ids.into_iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(PolicyError::Generation(format!(
            "token id {id} is outside the vocabulary ({vocab} ids)"
        ))),
        None => Ok(()),
    }
}

/// Log-probabilities of `ids[i]` given the hidden state `hidden[rows[i]]` (`hidden`: `[n, d]`).
fn pick_logprobs<B: Backend>(
    model: &Llama<B>,
    hidden: Tensor<B, 2>,
    rows: &[usize],
    ids: &[u32],
) -> Tensor<B, 1> {
    let device = hidden.device();
    let n = rows.len();
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let picked = hidden.select(0, Tensor::from_data(TensorData::new(rows, [n]), &device));
    let logprobs = log_softmax(model.logits(picked), 1);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
    logprobs.gather(1, ids).reshape([n])
}

/// [`token_logprobs`] for several sequences that begin with the same `shared` tokens (the
/// episodes of a group share their prompt): the shared tokens run once, and every sequence
/// continues from their cache, so under autodiff the gradients of all of them flow into that one
/// graph of the shared part. `targets[i]` are positions in `sequences[i]`; each must be past
/// `shared` (its predicting state lies in the continuation). Returns one tensor per sequence.
pub fn shared_prefix_logprobs<B: Backend>(
    model: &Llama<B>,
    sequences: &[&[u32]],
    shared: usize,
    targets: &[Vec<usize>],
    adapters: Adapters,
) -> Result<Vec<Tensor<B, 1>>, PolicyError> {
    if targets.len() != sequences.len() {
        return Err(PolicyError::Generation(format!(
            "{} target lists for {} sequences",
            targets.len(),
            sequences.len()
        )));
    }
    if sequences.is_empty() {
        return Ok(Vec::new());
    }
    check_ids(model, sequences.iter().flat_map(|s| s.iter()))?;
    let prefix = sequences
        .first()
        .map_or(&[][..], |s| &s[..shared.min(s.len())]);
    for (i, (sequence, positions)) in sequences.iter().zip(targets).enumerate() {
        if sequence.len() < shared || sequence[..shared] != *prefix {
            return Err(PolicyError::Generation(format!(
                "sequence {i} does not begin with the {shared} shared tokens"
            )));
        }
        if positions.is_empty() {
            return Err(PolicyError::Generation(format!(
                "sequence {i} has no targets"
            )));
        }
        if let Some(p) = positions
            .iter()
            .find(|&&p| p <= shared || p >= sequence.len())
        {
            return Err(PolicyError::Generation(format!(
                "target {p} of sequence {i} is not after the shared part ({shared} tokens) and \
                 inside the sequence ({} tokens)",
                sequence.len()
            )));
        }
    }
    let device = model.embed.val().device();
    let mut cache = model.new_cache();
    if shared > 0 {
        model.forward(
            tokens_tensor::<B>(&[prefix.to_vec()], &device),
            &mut cache,
            adapters,
        );
    }
    let d = model.config().hidden_size;
    sequences
        .iter()
        .zip(targets)
        .map(|(sequence, positions)| {
            let continuation = sequence[shared..].to_vec();
            let len = continuation.len();
            let mut cache = cache.clone();
            let hidden = model.forward(
                tokens_tensor::<B>(&[continuation], &device),
                &mut cache,
                adapters,
            );
            let rows: Vec<usize> = positions.iter().map(|&p| p - 1 - shared).collect();
            let ids: Vec<u32> = positions.iter().map(|&p| sequence[p]).collect();
            Ok(pick_logprobs(model, hidden.reshape([len, d]), &rows, &ids))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::closes_code_block;

    #[test]
    fn a_code_block_is_closed_by_its_second_fence() {
        assert!(!closes_code_block(
            "Here is the fix:\n```python\ndef f():\n"
        ));
        assert!(closes_code_block("```python\ndef f():\n    return 1\n```"));
        assert!(closes_code_block("```\nx = 1\n```\nMore text"));
        assert!(!closes_code_block("use `x` and ``y``"));
    }
}
