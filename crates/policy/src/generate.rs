//! Sampling with a key/value cache that lives as long as an episode: a [`Session`] holds the
//! cache and the tokens not yet run, so each turn prefills only what was appended since.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 96,
            stop_at_newline: true,
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
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn (or the text).
    EndOfTurn,
    /// A line break was generated.
    Newline,
    /// `max_tokens` was reached.
    MaxTokens,
    /// The context limit was reached.
    ContextFull,
}

/// One generated continuation.
#[derive(Debug, Clone)]
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
        if self.pending.is_empty() {
            return Err(PolicyError::Generation(
                "nothing to run: push tokens before generating".into(),
            ));
        }
        let limit = model.config().max_position_embeddings;
        if self.tokens.len() > limit {
            return Err(PolicyError::Generation(format!(
                "the conversation ({} tokens) exceeds the context limit {limit}",
                self.tokens.len()
            )));
        }
        let pending = std::mem::take(&mut self.pending);
        let device = model.embed.val().device();
        let input = tokens_tensor::<B>(&[pending], &device);
        let hidden = model.forward(input, &mut self.cache, adapters);
        let [_, t, d] = hidden.dims();
        let last = hidden.narrow(1, t - 1, 1).reshape([1, d]);
        logits_rows(model.logits(last))
            .pop()
            .ok_or_else(|| PolicyError::Generation("the model returned no logits".into()))
    }

    /// Samples `n` continuations of the session. The pending tokens are run once, the cache is
    /// repeated `n` times and the rows decode together; each result comes with its own session
    /// (its generated tokens appended), ready for the next turn.
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
    /// [`Session::prefill`], which returned `logits`.
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
        if !self.pending.is_empty() {
            return Err(PolicyError::Generation(
                "decode needs a prefilled session".into(),
            ));
        }
        let limit = model.config().max_position_embeddings;
        let base = self.cache.len();
        let mut cache = if n > 1 {
            self.cache.repeat(n)
        } else {
            self.cache.clone()
        };
        let mut rows: Vec<Generation> = (0..n)
            .map(|_| Generation {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        let mut done = vec![false; n];
        let mut current: Vec<Vec<f32>> = vec![logits; n];
        let device = model.embed.val().device();
        for step in 0..config.max_tokens {
            for (i, row) in rows.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                let (token, logprob) = sample(&current[i], config, rng);
                row.tokens.push(token);
                row.logprobs.push(logprob);
                let stop = if tokenizer.is_stop(token) {
                    Some(StopReason::EndOfTurn)
                } else if config.stop_at_newline && tokenizer.has_newline(token) {
                    Some(StopReason::Newline)
                } else if base + step + 1 >= limit {
                    Some(StopReason::ContextFull)
                } else {
                    None
                };
                if let Some(stop) = stop {
                    row.stop = stop;
                    done[i] = true;
                }
            }
            if done.iter().all(|&d| d) || step + 1 == config.max_tokens {
                break;
            }
            // Finished rows run their last token again; their cache tail is cut off below.
            let last: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| vec![r.tokens.last().copied().unwrap_or(0)])
                .collect();
            let hidden =
                model.forward(tokens_tensor::<B>(&last, &device), &mut cache, Adapters::On);
            let d = model.config().hidden_size;
            current = logits_rows(model.logits(hidden.reshape([n, d])));
        }
        let mut out = Vec::with_capacity(n);
        for (i, generation) in rows.into_iter().enumerate() {
            // Every generated token but the last has been run through the model.
            let ran = generation.tokens.len().saturating_sub(1);
            let cache = cache.row(i, base + ran);
            let mut tokens = self.tokens.clone();
            tokens.extend_from_slice(&generation.tokens);
            let pending = generation
                .tokens
                .last()
                .map(|&t| vec![t])
                .unwrap_or_default();
            out.push((
                generation,
                Session {
                    cache,
                    tokens,
                    pending,
                },
            ));
        }
        Ok(out)
    }
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
    let device = model.embed.val().device();
    let mut cache = model.new_cache();
    let hidden = model.forward(tokens_tensor::<B>(tokens, &device), &mut cache, adapters);
    let d = model.config().hidden_size;
    let flat = hidden.reshape([tokens.len() * len, d]);
    // The state after position p - 1 predicts position p.
    let rows: Vec<i64> = targets
        .iter()
        .map(|&(r, p)| (r * len + p - 1) as i64)
        .collect();
    let ids: Vec<i64> = targets
        .iter()
        .map(|&(r, p)| i64::from(tokens[r][p]))
        .collect();
    let n = targets.len();
    let picked = flat.select(0, Tensor::from_data(TensorData::new(rows, [n]), &device));
    let logprobs = log_softmax(model.logits(picked), 1);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
    Ok(logprobs.gather(1, ids).reshape([n]))
}
