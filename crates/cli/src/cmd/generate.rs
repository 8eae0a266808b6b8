//! `coe generate`: plain generation, for checking a model.

use std::path::PathBuf;

use coe_policy::generate::{rng, top_k};
use coe_policy::{Adapters, ChatMessage, SamplingConfig, Session};
use serde::Serialize;

use super::{load_policy, read_text};
use crate::Failure;
use crate::output::{json_line, print};

/// Options of `coe generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// The prompt text.
    #[arg(long, value_name = "FILE")]
    pub(crate) prompt_file: PathBuf,
    /// A GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// LoRA adapters (safetensors) to apply to the model.
    #[arg(long, value_name = "PATH")]
    pub(crate) adapter: Option<PathBuf>,
    /// Tokenize the prompt file as it is, without the chat template.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub(crate) max_tokens: usize,
    /// Always pick the most likely token.
    #[arg(long)]
    pub(crate) greedy: bool,
    /// Sampling temperature (ignored with --greedy).
    #[arg(long, default_value_t = 0.7)]
    pub(crate) temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    pub(crate) top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Print one JSON object: prompt_ids, ids, text, top5_first, stop.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct GenerateJson {
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    top5_first: Vec<(u32, f32)>,
    stop: coe_policy::StopReason,
}

pub(crate) fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let text = read_text(&args.prompt_file)?;
    let policy = load_policy(args.model.as_deref(), args.adapter.as_deref())?;
    let prompt = if args.raw {
        text
    } else {
        let template = policy.tokenizer.template();
        template.render(
            &[ChatMessage {
                role: "user",
                content: &text,
            }],
            true,
        )
    };
    let internal = |e: coe_policy::PolicyError| Failure::Internal(e.to_string());
    let prompt_ids = policy.tokenizer.encode(&prompt).map_err(internal)?;
    if prompt_ids.is_empty() {
        return Err(Failure::Input("the prompt is empty".into()));
    }
    let config = SamplingConfig {
        temperature: if args.greedy { 0.0 } else { args.temperature },
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        stop_at_newline: false,
        stop_after_code_block: false,
    };
    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let first = session
        .prefill(&policy.model, Adapters::On)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let (generation, _) = session
        .decode(
            &policy.model,
            &policy.tokenizer,
            first.clone(),
            1,
            &config,
            &mut rng(args.seed),
        )
        .map_err(|e| Failure::Input(e.to_string()))?
        .pop()
        .ok_or_else(|| Failure::Internal("no generation".into()))?;
    let mut visible = generation.tokens.clone();
    if visible.last().is_some_and(|&t| policy.tokenizer.is_stop(t)) {
        visible.pop();
    }
    let text = policy.tokenizer.decode(&visible).map_err(internal)?;
    if args.json {
        print(&json_line(&GenerateJson {
            prompt_ids,
            ids: generation.tokens,
            text,
            top5_first: top_k(&first, 5),
            stop: generation.stop,
        })?)
    } else {
        print(&format!("{text}\n"))
    }
}
