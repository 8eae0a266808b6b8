//! Subcommands that run the language model.

use std::path::{Path, PathBuf};

use coe_policy::generate::{rng, top_k};
use coe_policy::{Adapters, ChatMessage, CpuBackend, Policy, SamplingConfig, Session};
use serde::Serialize;

use crate::Failure;
use crate::commands::read_text;
use crate::output::{json_line, print};

/// Loads the base model (the default one unless `model` names a GGUF file or Hugging Face
/// folder) and, when given, LoRA adapters.
pub(crate) fn load_policy(
    model: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Policy<CpuBackend>, Failure> {
    let path: PathBuf = match model {
        Some(path) => path.to_path_buf(),
        None => coe_policy::default_model_path(),
    };
    if !path.exists() {
        return Err(Failure::Input(if model.is_some() {
            format!("no model at {}", path.display())
        } else {
            format!(
                "the default model is not installed at {}: run `cargo xtask model` to fetch it",
                path.display()
            )
        }));
    }
    let mut policy = Policy::<CpuBackend>::load(&path, &Default::default())
        .map_err(|e| Failure::Input(format!("loading {}: {e}", path.display())))?;
    if let Some(adapter) = adapter {
        let (model, _) = coe_policy::adapter::load_adapters(policy.model, adapter)
            .map_err(|e| Failure::Input(format!("loading adapters: {e}")))?;
        policy.model = model.merge_lora();
    }
    Ok(policy)
}

/// Options of `coe generate`.
pub(crate) struct GenerateArgs {
    pub(crate) prompt_file: PathBuf,
    pub(crate) model: Option<PathBuf>,
    pub(crate) adapter: Option<PathBuf>,
    pub(crate) raw: bool,
    pub(crate) max_tokens: usize,
    pub(crate) greedy: bool,
    pub(crate) temperature: f64,
    pub(crate) top_p: f64,
    pub(crate) seed: u64,
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
