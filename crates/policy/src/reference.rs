//! The default model against its reference outputs (`fixtures/smollm2-reference`: transformers,
//! float32, on the same GGUF Q4_1 file dequantised): prompt token ids, top-5 logits at the last
//! prompt position and 128 greedy tokens. One comparison serves the CPU test and the GPU check,
//! so a backend is held to exactly what the CPU is.

use std::path::Path;

use burn::prelude::Backend;
use serde::Deserialize;

use crate::generate::{rng, top_k};
use crate::{Adapters, Policy, PolicyError, SamplingConfig, Session};

/// Largest difference allowed between a backend's top-5 logits and the reference's (llama.cpp
/// F32 is within 0.006 of it).
pub const LOGIT_TOLERANCE: f32 = 0.01;

/// What one backend gave against the reference files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReferenceCheck {
    /// The tokenizer gave the reference's prompt ids.
    pub prompt_ids_match: bool,
    /// The top-5 token ids at the last prompt position, in order, are the reference's.
    pub top5_ids_match: bool,
    /// Largest absolute difference of those five logits.
    pub worst_logit_difference: f32,
    /// How many of the 128 greedy tokens agree before the first difference.
    pub greedy_prefix_matching: usize,
    /// How many greedy tokens the reference holds (128).
    pub greedy_reference_len: usize,
}

impl ReferenceCheck {
    /// Everything agrees: prompt ids, top-5 ids, logits within [`LOGIT_TOLERANCE`], all greedy
    /// tokens.
    pub fn passed(&self) -> bool {
        self.prompt_ids_match
            && self.top5_ids_match
            && self.worst_logit_difference <= LOGIT_TOLERANCE
            && self.greedy_prefix_matching == self.greedy_reference_len
    }
}

#[derive(Deserialize)]
struct TopLogit {
    id: u32,
    logit: f32,
}

#[derive(Deserialize)]
struct Reference {
    top5_last_prompt_position: Vec<TopLogit>,
    greedy_ids_128: Vec<u32>,
}

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, PolicyError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PolicyError::Config(format!("{}: {e}", path.display())))
}

/// Runs the reference prompt of `dir` (`prompt.txt`, `prompt_ids.json`, `reference.json`)
/// through `policy` with its adapters on: one prefill for the top-5 logits, then a fresh greedy
/// generation of the reference's length with the KV cache.
pub fn check_reference<B: Backend>(
    policy: &Policy<B>,
    dir: &Path,
) -> Result<ReferenceCheck, PolicyError> {
    let prompt =
        std::fs::read_to_string(dir.join("prompt.txt")).map_err(|source| PolicyError::Io {
            path: dir.join("prompt.txt").display().to_string(),
            source,
        })?;
    let expected_ids: Vec<u32> = read(dir, "prompt_ids.json")?;
    let reference: Reference = read(dir, "reference.json")?;
    let prompt_ids = policy.tokenizer.encode(&prompt)?;

    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let logits = session.prefill(&policy.model, Adapters::On)?;
    let ours = top_k(&logits, reference.top5_last_prompt_position.len());
    let top5_ids_match = ours.len() == reference.top5_last_prompt_position.len()
        && ours
            .iter()
            .zip(&reference.top5_last_prompt_position)
            .all(|((id, _), expected)| *id == expected.id);
    let worst_logit_difference = ours
        .iter()
        .zip(&reference.top5_last_prompt_position)
        .map(|((_, logit), expected)| (logit - expected.logit).abs())
        .fold(0.0f32, f32::max);

    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let config = SamplingConfig::greedy(reference.greedy_ids_128.len());
    let generated = session
        .generate(&policy.model, &policy.tokenizer, 1, &config, &mut rng(0))?
        .pop()
        .map(|(generation, _)| generation.tokens)
        .unwrap_or_default();
    let greedy_prefix_matching = generated
        .iter()
        .zip(&reference.greedy_ids_128)
        .take_while(|(a, b)| a == b)
        .count();
    Ok(ReferenceCheck {
        prompt_ids_match: prompt_ids == expected_ids,
        top5_ids_match,
        worst_logit_difference,
        greedy_prefix_matching,
        greedy_reference_len: reference.greedy_ids_128.len(),
    })
}
