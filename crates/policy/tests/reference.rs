//! The default model against reference outputs of SmolLM2-135M-Instruct (transformers, float32,
//! on the same GGUF Q4_1 file dequantised): prompt token ids, top-5 logits at the last prompt
//! position, and 128 greedy tokens. Needs `cargo xtask model`: without it the tests say so and return,
//! except under `CI=true`, where they fail.

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
    let path = coe_cache::default_model_for_tests().unwrap()?;
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

/// The tokenizer built from GGUF metadata, written as `tokenizer.json` and read back through the
/// `tokenizer.json` path, gives the same ids on a fixed set of texts (code, digits, unicode,
/// special tokens), and those ids decode back to the text.
#[test]
fn tokenizer_json_and_gguf_paths_agree() {
    let Some(policy) = load() else { return };
    let dir = std::env::temp_dir().join(format!("coe-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    policy.tokenizer.save(&path).unwrap();
    let reloaded = coe_policy::TextTokenizer::from_file(&path).unwrap();
    let texts = [
        "def max_of_three(a, b, c):\n    return max(a, max(b, c))\n",
        "  12 |     x = 1234567890 + 3.14159e-10",
        "REPL 3 'if n % 2 == 0:'\nREPW 7 'range(n)' 'range(n + 1)'\nEXIT",
        "naïve café — 日本語 🙂 \t tabs\r\n",
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ];
    for text in texts {
        let ids = policy.tokenizer.encode(text).unwrap();
        assert_eq!(reloaded.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(policy.tokenizer.decode(&ids).unwrap(), text);
    }
    // Digits are split one by one.
    assert_eq!(policy.tokenizer.encode("1234").unwrap().len(), 4);
    std::fs::remove_dir_all(&dir).ok();
}
