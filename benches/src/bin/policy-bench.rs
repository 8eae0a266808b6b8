//! Prefill and decode speed of the policy on CPU or GPU, one backend per process (so peak memory is the
//! backend's own): the reference prompt (478 tokens) prefilled from scratch, then 128 tokens
//! decoded greedily with the KV cache, and the reference check (`coe_policy::reference`) on the
//! same backend. Prints one JSON line; `cargo xtask bench policy` runs it
//! for each backend beside llama.cpp and transformers and prints the table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Parser;
use coe_benches::{at_least_one, median};
use coe_policy::generate::{decode_batch, prefill_batch, rng};
use coe_policy::{Adapters, Policy, SamplingConfig, Session};

/// Policy prefill and decode speed (single stream and batched) against llama.cpp and
/// transformers, with the reference check.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The burn backend measured.
    #[arg(long, default_value = "flex", value_parser = ["flex", "ndarray", "candle", "cuda"])]
    backend: String,
    /// The base model (GGUF or a Hugging Face folder).
    #[arg(long, default_value_os_t = coe_policy::default_model_path())]
    model: PathBuf,
    /// Timed runs per measurement.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    repeats: usize,
    /// Tokens decoded per run.
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    decode_tokens: usize,
    /// The float type the weights and activations are held in (the backend's default float
    /// type, set before the model loads): float32, or float16 to measure half-size weights.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    float: String,
}

fn measure<B: Backend>(args: &Args) -> Result<()> {
    let device = B::Device::default();
    if args.float == "f16" {
        burn::tensor::set_default_dtypes::<B>(
            &device,
            burn::tensor::DType::F16,
            burn::tensor::DType::I32,
        )
        .map_err(|e| anyhow::anyhow!("float16 on backend {}: {e:?}", args.backend))?;
    }
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
    let (batch_decode, observation_prefill) = batched(&policy, &ids, args)?;
    // The same comparison as the CPU test: a GPU backend must give the reference's outputs.
    let reference = coe_policy::reference::check_reference(
        &policy,
        &coe_benches::fixtures_dir().join("smollm2-reference"),
    )?;
    let peak_rss_mib = coe_benches::peak_resident_kib().map(|k| k as f64 / 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("coe (burn {})", args.backend),
            "weights": format!("{} (from Q4_1)", if args.float == "f16" { "float16" } else { "float32" }),
            "prompt_tokens": ids.len(),
            "generated_tokens": generated,
            "prefill_tok_s": median(&prefill),
            "decode_tok_s": median(&decode),
            "batch_decode_tok_s": batch_decode,
            "observation_prefill_tok_s": observation_prefill,
            "peak_rss_mib": peak_rss_mib,
            "load_s": load_s,
            "reference": reference,
            "reference_passed": reference.passed(),
        })
    );
    Ok(())
}

/// Rows that continue the prompt's session, as the episodes of RL groups do: aggregate greedy
/// decode speed at batch 1, 4, 8 and 16 (every row decodes `decode_tokens` steps unless it
/// ends its turn), and the prefill of an 8-row turn of 160-token observations after the prompt,
/// one row at a time against one packed batch. Medians of `repeats`.
fn batched<B: Backend>(
    policy: &Policy<B>,
    ids: &[u32],
    args: &Args,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let model = &policy.model;
    let mut prompt = Session::new(model);
    prompt.push(ids);
    let logits = prompt.prefill(model, Adapters::On)?;
    let config = SamplingConfig::greedy(args.decode_tokens);
    let mut decode = serde_json::Map::new();
    for batch in [1usize, 4, 8, 16] {
        let mut rates = Vec::new();
        for _ in 0..args.repeats {
            let rows = (0..batch)
                .map(|_| (prompt.clone(), logits.clone()))
                .collect();
            let mut rngs: Vec<_> = (0..batch).map(|i| rng(i as u64)).collect();
            let mut rngs: Vec<_> = rngs.iter_mut().collect();
            let start = Instant::now();
            let out = decode_batch(model, &policy.tokenizer, rows, &mut rngs, &config)?;
            let secs = start.elapsed().as_secs_f64();
            let steps: usize = out
                .iter()
                .map(|(g, _)| g.tokens.len().saturating_sub(1))
                .sum();
            rates.push(steps as f64 / secs);
        }
        decode.insert(batch.to_string(), median(&rates).into());
    }
    let observation: Vec<u32> = ids.iter().copied().cycle().take(160).collect();
    let (mut alone, mut packed) = (Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        let mut sessions: Vec<Session<B>> = (0..8).map(|_| prompt.clone()).collect();
        for session in &mut sessions {
            session.push(&observation);
        }
        let mut again = sessions.clone();
        let start = Instant::now();
        for session in &mut sessions {
            session.prefill(model, Adapters::On)?;
        }
        alone.push((8 * observation.len()) as f64 / start.elapsed().as_secs_f64());
        let mut refs: Vec<_> = again.iter_mut().collect();
        let start = Instant::now();
        prefill_batch(model, &mut refs, Adapters::On)?;
        packed.push((8 * observation.len()) as f64 / start.elapsed().as_secs_f64());
    }
    Ok((
        decode.into(),
        serde_json::json!({"one_by_one": median(&alone), "packed": median(&packed)}),
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.model.exists() {
        bail!(
            "no model at {}: run `cargo xtask model`",
            args.model.display()
        );
    }
    match args.backend.as_str() {
        "flex" => measure::<burn::backend::Flex>(&args),
        #[cfg(feature = "cuda")]
        "cuda" => measure::<coe_policy::CudaBackend>(&args),
        #[cfg(feature = "all-backends")]
        "ndarray" => measure::<burn::backend::NdArray>(&args),
        // Deprecated upstream in 0.21, still measured because it is one of the three choices.
        #[cfg(feature = "all-backends")]
        #[allow(deprecated)]
        "candle" => measure::<burn::backend::Candle>(&args),
        other => bail!(
            "backend {other} is not built in; build with --features all-backends for ndarray and \
             candle, --features cuda for cuda"
        ),
    }
}
