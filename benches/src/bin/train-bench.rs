//! Training speed: coe's SFT step against transformers + PEFT on the same demonstrations, and
//! the machine's matrix-product rate, in one run. `cargo xtask bench train` runs it.
//!
//! The first `--count` demonstrations of the SFT file (those that fit `--context`, in file
//! order) are encoded once by coe and written out, so both engines train on the same token ids
//! and loss masks. A step is one demonstration per micro-batch, every micro-batch's mean
//! next-token loss over its assistant tokens, averaged, then AdamW: coe's `Trainer::sft_step`
//! with `--parallel-parts` threads, and `benches/python/train_peer.py step` for the peer. Each
//! engine starts from fresh adapters (B = 0), so the first step's loss is the base model's and
//! must agree between the two (printed side by side). Repeats alternate coe and the peer; each
//! peer process takes an untimed warm-up step, as coe does once. Then a GEMM probe
//! (`train_peer.py gemm`: torch's float32 product at a training step's common shape) gives the
//! machine's rate, and the useful FLOPs of a step (counted below) give each engine's share.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use coe_benches::{at_least_one, median};
use coe_policy::{CpuTrainBackend, Llama, LlamaConfig, LoraConfig, Policy};
use coe_trainer::chat::Encoded;
use coe_trainer::optim::{OptimConfig, Trainer};
use coe_trainer::sft::load_demonstrations;

/// coe's SFT step against transformers + PEFT on the same demonstrations, and the machine's
/// GEMM rate.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The base model (GGUF or a Hugging Face folder).
    #[arg(long, default_value_os_t = coe_policy::default_model_path())]
    model: PathBuf,
    /// SFT demonstrations (JSON Lines).
    #[arg(long, default_value_os_t = coe_cache::cache_dir().join("data/sft-train.jsonl"))]
    demos: PathBuf,
    /// Demonstrations per step: the first ones that fit `--context`.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    count: usize,
    /// Longest demonstration in tokens.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Timed steps per engine.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    repeats: usize,
    /// Micro-batches whose gradients coe takes at once.
    #[arg(long, default_value_t = 2)]
    parallel_parts: usize,
    /// Threads for both engines.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    threads: usize,
    /// The peer's Python interpreter; without it coe runs alone.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where both engines train.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// A Llama-3.2-1B-shaped model with random weights instead of `--model`.
    #[arg(long)]
    random_1b: bool,
}

/// Useful floating-point operations of one training step over sequences of `lengths` tokens
/// with LoRA on a frozen base: each projection and the output head forward (2 per weight per
/// token) and backward to its input (2 more; frozen weights need no weight gradient), and the
/// causal half of attention's two products (4 d per earlier position per layer forward, twice
/// that backward). Adapters, norms and element-wise work are left out (a few percent).
fn step_flops(config: &LlamaConfig, lengths: &[usize]) -> f64 {
    let d = config.hidden_size as f64;
    let kv = d * config.num_key_value_heads as f64 / config.num_attention_heads as f64;
    let per_layer = d * d * 2.0 + d * kv * 2.0 + 3.0 * d * config.intermediate_size as f64;
    let layers = config.num_hidden_layers as f64;
    let per_token = 4.0 * per_layer * layers + 4.0 * config.vocab_size as f64 * d;
    lengths
        .iter()
        .map(|&n| {
            let n = n as f64;
            n * per_token + 12.0 * d * layers * n * (n + 1.0) / 2.0
        })
        .sum()
}

/// Runs the peer script and returns its JSON line.
fn peer(python: &PathBuf, args: &[&str]) -> Result<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/train_peer.py");
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "train_peer.py {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .last()
        .context("train_peer.py printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("reading {line}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.device.as_str() {
        "cpu" => bench::<CpuTrainBackend>(&args),
        #[cfg(feature = "cuda")]
        "cuda" => bench::<burn::backend::Autodiff<coe_policy::CudaBackend>>(&args),
        other => bail!("device {other} is not built in (cpu; cuda with --features cuda)"),
    }
}

fn bench<B: AutodiffBackend>(args: &Args) -> Result<()> {
    let device = B::Device::default();
    let mut policy = Policy::<B>::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if args.random_1b {
        // The demonstrations are still encoded by the default model's tokenizer: its ids are
        // all below the larger vocabulary.
        policy.model = Llama::random(LlamaConfig::llama_3_2_1b(), 0, &device);
    }
    let (mut demos, _) = load_demonstrations(&policy.tokenizer, &args.demos, args.context, &[])
        .with_context(|| format!("reading {}", args.demos.display()))?;
    if demos.len() < args.count {
        bail!(
            "{} holds {} demonstrations that fit, fewer than --count {}",
            args.demos.display(),
            demos.len(),
            args.count
        );
    }
    demos.truncate(args.count);
    let lengths: Vec<usize> = demos.iter().map(|e| e.tokens.len()).collect();
    let tokens: usize = lengths.iter().sum();
    let flops = step_flops(policy.model.config(), &lengths);
    let sequences =
        std::env::temp_dir().join(format!("coe-train-bench-{}.json", std::process::id()));
    let rows: Vec<serde_json::Value> = demos
        .iter()
        .map(|e| serde_json::json!({"ids": e.tokens, "targets": e.targets}))
        .collect();
    std::fs::write(&sequences, serde_json::to_vec(&rows)?)?;
    eprintln!(
        "train-bench: {} demonstrations, {tokens} tokens per step ({:.1} GFLOP), {} repeats",
        args.count,
        flops / 1e9,
        args.repeats
    );

    let lora = LoraConfig {
        rank: 16,
        alpha: 32.0,
        dropout: 0.0,
    };
    let optim = OptimConfig {
        lr: 3e-4,
        warmup_steps: 0,
        steps: args.repeats + 1,
        grad_accum: args.count,
        parallel_parts: args.parallel_parts,
        weight_decay: 0.0,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::new(policy.model.attach_lora(&lora, 0, &device), optim);
    let batches: Vec<Vec<&Encoded>> = demos.iter().map(|e| vec![e]).collect();
    // The warm-up step (allocations, thread pools); its loss is the base model's.
    let coe_first_loss = trainer.sft_step(&batches)?.loss;
    let (mut coe_s, mut peer_s) = (Vec::new(), Vec::new());
    let mut peer_first_loss = None;
    let mut peer_engine = String::new();
    let (threads, sequences_arg) = (args.threads.to_string(), sequences.to_string_lossy());
    let model_arg = args.model.to_string_lossy();
    let mut peer_extra = vec!["--device", args.device.as_str()];
    if args.random_1b {
        peer_extra.push("--random-1b");
    }
    for repeat in 0..args.repeats {
        let start = Instant::now();
        trainer.sft_step(&batches)?;
        coe_s.push(start.elapsed().as_secs_f64());
        eprintln!("train-bench: repeat {repeat}: coe {:.1} s", coe_s[repeat]);
        if let Some(python) = &args.python {
            let row = peer(
                python,
                &[
                    "step",
                    &model_arg,
                    &sequences_arg,
                    "--threads",
                    &threads,
                    "--repeats",
                    "1",
                ]
                .iter()
                .chain(&peer_extra)
                .copied()
                .collect::<Vec<_>>(),
            )?;
            let seconds = row["step_s"][0].as_f64().context("peer step_s")?;
            peer_first_loss = row["first_loss"].as_f64();
            peer_engine = row["engine"].as_str().unwrap_or("peer").to_string();
            peer_s.push(seconds);
            eprintln!("train-bench: repeat {repeat}: peer {seconds:.1} s");
        }
    }
    // The probe measures this CPU; a GPU's rate is not what it gives.
    let gemm = match &args.python {
        Some(python) if args.device == "cpu" => {
            let row = peer(python, &["gemm", "--threads", &threads, "--repeats", "5"])?;
            row["gflops"].as_f64()
        }
        _ => None,
    };
    std::fs::remove_file(&sequences).ok();

    let coe_row = (
        format!(
            "coe ({}, {} parts at once{})",
            B::name(&device),
            args.parallel_parts,
            if args.random_1b {
                ", random Llama-3.2-1B shape"
            } else {
                ""
            }
        ),
        median(&coe_s),
        coe_first_loss,
    );
    let peer_row = (!peer_s.is_empty()).then(|| {
        (
            peer_engine,
            median(&peer_s),
            peer_first_loss.unwrap_or(f64::NAN),
        )
    });
    println!(
        "{}",
        serde_json::json!({
            "device": args.device, "random_1b": args.random_1b,
            "demonstrations": args.count, "tokens_per_step": tokens, "gflop_per_step": flops / 1e9,
            "coe_step_s": coe_s, "peer_step_s": peer_s, "coe_first_loss": coe_first_loss,
            "peer_first_loss": peer_first_loss, "gemm_gflops": gemm,
        })
    );
    let peer_rate = peer_row
        .as_ref()
        .map(|(_, seconds, _)| tokens as f64 / seconds);
    println!(
        "\n| engine | step s (median of {}) | tokens/s | GFLOP/s | share of the GEMM probe | vs peer | first-step loss |",
        args.repeats
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (engine, seconds, loss) in std::iter::once(&coe_row).chain(&peer_row) {
        let rate = tokens as f64 / seconds;
        let gflops = flops / seconds / 1e9;
        println!(
            "| {engine} | {seconds:.1} | {rate:.1} | {gflops:.1} | {} | {} | {loss:.4} |",
            gemm.map_or("-".into(), |g| format!("{:.0}%", 100.0 * gflops / g)),
            peer_rate.map_or("-".into(), |p| format!("{:.2}x", rate / p)),
        );
    }
    if let Some(g) = gemm {
        println!(
            "\nGEMM probe (torch float32 [1024, 576] x [576, 1536], {threads} threads): {g:.1} GFLOP/s"
        );
    }
    Ok(())
}
