//! Prefill and decode speed of the policy on CPU, one backend per process (so peak memory is the
//! backend's own): the reference prompt (478 tokens) prefilled from scratch, then 128 tokens
//! decoded greedily with the KV cache. Prints one JSON line; `cargo xtask bench policy` runs it
//! for each backend beside llama.cpp and transformers and prints the table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use coe_policy::generate::rng;
use coe_policy::{Adapters, Policy, SamplingConfig, Session};

struct Args {
    backend: String,
    model: PathBuf,
    repeats: usize,
    decode_tokens: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        backend: "flex".into(),
        model: coe_policy::default_model_path(),
        repeats: 3,
        decode_tokens: 128,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => args.backend = value()?,
            "--model" => args.model = value()?.into(),
            "--repeats" => args.repeats = value()?.parse()?,
            "--decode-tokens" => args.decode_tokens = value()?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: policy-bench [--backend flex|ndarray|candle] \
                 [--model PATH] [--repeats N] [--decode-tokens N]"
            ),
        }
    }
    Ok(args)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    coe_benches::percentile(&values, 50.0)
}

fn measure<B: Backend>(args: &Args) -> Result<()> {
    let device = B::Device::default();
    let load = Instant::now();
    let policy = Policy::<B>::load(&args.model, &device)?;
    let load_s = load.elapsed().as_secs_f64();
    let prompt =
        std::fs::read_to_string(coe_benches::fixtures_dir().join("smollm2-reference/prompt.txt"))?;
    let ids = policy.tokenizer.encode(&prompt)?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = 0;
    // One warm-up round, then `repeats` timed ones.
    for round in 0..=args.repeats {
        let mut session = Session::new(&policy.model);
        session.push(&ids);
        let start = Instant::now();
        let logits = session.prefill(&policy.model, Adapters::On)?;
        let prefill_s = start.elapsed().as_secs_f64();
        let config = SamplingConfig::greedy(args.decode_tokens);
        let start = Instant::now();
        let (generation, _) = session
            .decode(
                &policy.model,
                &policy.tokenizer,
                logits,
                1,
                &config,
                &mut rng(0),
            )?
            .pop()
            .context("no generation")?;
        let decode_s = start.elapsed().as_secs_f64();
        generated = generation.tokens.len();
        if round > 0 {
            prefill.push(ids.len() as f64 / prefill_s);
            // The first token comes from the prefill's logits; the rest each cost one step.
            decode.push((generated - 1) as f64 / decode_s);
        }
    }
    let peak_rss_mib = coe_benches::peak_resident_kib().map(|k| k as f64 / 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("coe (burn {})", args.backend),
            "weights": "float32 (from Q4_1)",
            "prompt_tokens": ids.len(),
            "generated_tokens": generated,
            "prefill_tok_s": median(prefill),
            "decode_tok_s": median(decode),
            "peak_rss_mib": peak_rss_mib,
            "load_s": load_s,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !args.model.exists() {
        bail!(
            "no model at {}: run `cargo xtask model`",
            args.model.display()
        );
    }
    match args.backend.as_str() {
        "flex" => measure::<burn::backend::Flex>(&args),
        #[cfg(feature = "all-backends")]
        "ndarray" => measure::<burn::backend::NdArray>(&args),
        // Deprecated upstream in 0.21, still measured because it is one of the three choices.
        #[cfg(feature = "all-backends")]
        #[allow(deprecated)]
        "candle" => measure::<burn::backend::Candle>(&args),
        other => bail!(
            "backend {other} is not built in; build with --features all-backends for ndarray and candle"
        ),
    }
}
