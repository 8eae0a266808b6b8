//! The default model against reference outputs of SmolLM2-135M-Instruct (transformers, float32,
//! on the same GGUF Q4_1 file dequantised): prompt token ids, top-5 logits at the last prompt
//! position, and 128 greedy tokens. Needs `cargo xtask model`; skipped with a message without it.

use std::path::PathBuf;

use coe_policy::generate::{rng, top_k};
use coe_policy::{Adapters, CpuBackend, Policy, SamplingConfig, Session};
use serde_json::Value;

/// Largest difference allowed between our logits and the reference's (llama.cpp F32 is within
/// 0.006 of it).
const LOGIT_TOLERANCE: f32 = 0.01;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2-reference")
}

fn load() -> Option<Policy<CpuBackend>> {
    let path = coe_policy::default_model_path();
    if !path.exists() {
        eprintln!(
            "SKIPPED: {} is missing; run `cargo xtask model` to fetch the default model",
            path.display()
        );
        return None;
    }
    Some(Policy::load(&path, &Default::default()).expect("the default model loads"))
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(reference_dir().join(name)).expect("reference file");
    serde_json::from_str(&text).expect("reference JSON")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn smollm2_matches_the_reference() {
    let Some(policy) = load() else { return };
    let prompt = std::fs::read_to_string(reference_dir().join("prompt.txt")).unwrap();
    let prompt_ids = policy.tokenizer.encode(&prompt).unwrap();
    assert_eq!(
        prompt_ids,
        ids(&read_json("prompt_ids.json")),
        "prompt token ids"
    );

    let reference = read_json("reference.json");
    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let logits = session.prefill(&policy.model, Adapters::On).unwrap();
    let ours = top_k(&logits, 5);
    let mut worst = 0.0f32;
    for (expected, (id, logit)) in reference["top5_last_prompt_position"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ours)
    {
        assert_eq!(
            u64::from(*id),
            expected["id"].as_u64().unwrap(),
            "top-5 ids: {ours:?}"
        );
        worst = worst.max((logit - expected["logit"].as_f64().unwrap() as f32).abs());
    }
    eprintln!("largest top-5 logit difference: {worst:.5}");
    assert!(worst <= LOGIT_TOLERANCE, "logits differ by {worst}");

    // Greedy decoding of 128 tokens from the prompt (a fresh session: prefill + cached decode).
    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let config = SamplingConfig::greedy(128);
    let (generation, _) = session
        .generate(&policy.model, &policy.tokenizer, 1, &config, &mut rng(0))
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        generation.tokens,
        ids(&reference["greedy_ids_128"]),
        "greedy ids"
    );
}
