//! The default model against reference outputs of SmolLM2-135M-Instruct (transformers, float32,
//! on the same GGUF Q4_1 file dequantised): prompt token ids, top-5 logits at the last prompt
//! position, and 128 greedy tokens. Needs `cargo xtask model`: without it the tests say so and return,
//! except under `CI=true`, where they fail.

use std::path::PathBuf;

use coe_policy::reference::{LOGIT_TOLERANCE, check_reference};
use coe_policy::{CpuBackend, Policy};

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2-reference")
}

fn load() -> Option<Policy<CpuBackend>> {
    let path = coe_cache::default_model_for_tests().unwrap()?;
    Some(Policy::load(&path, &Default::default()).expect("the default model loads"))
}

#[test]
fn smollm2_matches_the_reference() {
    let Some(policy) = load() else { return };
    let check = check_reference(&policy, &reference_dir()).unwrap();
    eprintln!("{check:?}");
    assert!(check.prompt_ids_match, "prompt token ids");
    assert!(check.top5_ids_match, "top-5 ids");
    assert!(
        check.worst_logit_difference <= LOGIT_TOLERANCE,
        "logits differ by {}",
        check.worst_logit_difference
    );
    assert_eq!(
        check.greedy_prefix_matching, check.greedy_reference_len,
        "greedy ids"
    );
    assert!(check.passed());
}

/// The tokenizer built from GGUF metadata, written as `tokenizer.json` and read back through the
/// `tokenizer.json` path, gives the same ids on a fixed set of texts (code, digits, unicode,
/// special tokens), and those ids decode back to the text.
#[test]
fn tokenizer_json_and_gguf_paths_agree() {
    let Some(policy) = load() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
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
}
