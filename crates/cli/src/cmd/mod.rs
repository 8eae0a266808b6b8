//! One module per subcommand; what several of them share is here.

pub(crate) mod apply;
pub(crate) mod check;
pub(crate) mod eval;
pub(crate) mod generate;
pub(crate) mod plot;
pub(crate) mod prepare;
pub(crate) mod repair;
pub(crate) mod replay;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod train;

use std::path::{Path, PathBuf};

use coe_policy::{CpuBackend, Policy};
use coe_sandbox::Sandbox;

use crate::Failure;

/// The committed default policy (LoRA adapters for the default base model), found through the
/// workspace this binary was built from, so `coe repair` and `coe eval` work from any directory.
pub(crate) const DEFAULT_ADAPTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/policy/adapter.safetensors"
);

/// The adapters a model command uses: `--adapter PATH` that file, `--adapter none` none (the
/// base model alone); without `--adapter`, the committed default policy when the model is the
/// default one and the policy is there.
pub(crate) fn chosen_adapter(model: Option<&Path>, adapter: Option<&Path>) -> Option<PathBuf> {
    match adapter {
        Some(path) if path == Path::new("none") => None,
        Some(path) => Some(path.to_path_buf()),
        None => {
            let default = PathBuf::from(DEFAULT_ADAPTER);
            (model.is_none() && default.exists()).then_some(default)
        }
    }
}

/// The context limit of episodes played by `coe repair` and `coe eval`, in tokens (the paper's).
pub(crate) const CONTEXT_TOKENS: usize = coe_trainer::rollout::DEFAULT_CONTEXT;

/// The policy and episode options `coe repair` and `coe eval` share.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Base model: a GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// LoRA adapters to apply; `none` for the base model alone (default: the committed default
    /// policy, fixtures/policy/adapter.safetensors, on the default base model).
    #[arg(long, value_name = "PATH")]
    pub(crate) adapter: Option<PathBuf>,
    /// Episodes per task (1: greedy; more: sampled).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub(crate) samples: usize,
    /// Turns per episode.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) max_turns: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Threads running a turn's sandbox steps side by side (0: on the model's thread).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) workers: usize,
    /// Episodes generating together as one batch (more: faster, more memory).
    #[arg(long, default_value_t = coe_trainer::rollout::DEFAULT_BATCH, value_name = "N")]
    pub(crate) batch: usize,
}

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
        let (model, _) = coe_policy::lora::load_adapters(policy.model, adapter)
            .map_err(|e| Failure::Input(format!("loading adapters: {e}")))?;
        policy.model = model.merge_lora();
    }
    Ok(policy)
}

pub(crate) fn sandbox() -> Result<Sandbox, Failure> {
    Sandbox::new(&Default::default()).map_err(|e| Failure::Internal(format!("coe: {e}")))
}

pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Input(format!("coe: cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::Input(format!("coe: {} is not UTF-8 text", path.display())))
}
