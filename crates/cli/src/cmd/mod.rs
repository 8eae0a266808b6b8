//! One module per subcommand; what several of them share is here.

pub(crate) mod apply;
pub(crate) mod check;
pub(crate) mod eval;
mod eval_resume;
pub(crate) mod exec_worker;
pub(crate) mod generate;
pub(crate) mod plot;
pub(crate) mod prepare;
pub(crate) mod repair;
pub(crate) mod replay;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod train;

use std::path::{Path, PathBuf};

use coe_policy::{CpuBackend, Policy};
use coe_sandbox::Sandbox;

use crate::Failure;

/// The committed default policy (LoRA adapters for the default base model), built into the
/// binary so that an installed or moved `coe` still has it.
#[cfg(feature = "embedded-policy")]
const DEFAULT_ADAPTER: &[u8] = include_bytes!("../../../../fixtures/policy/adapter.safetensors");

/// Without the built-in copy (a binary carried where every byte counts, such as the GPU
/// check's): the checkout's file.
#[cfg(not(feature = "embedded-policy"))]
fn default_adapter_file() -> Result<PathBuf, Failure> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/policy/adapter.safetensors");
    if path.is_file() {
        return Ok(path);
    }
    Err(Failure::Input(format!(
        "this coe was built without its default policy (feature embedded-policy) and {} is \
         missing: pass --adapter",
        path.display()
    )))
}

/// The default policy as a file the loader can read: written once into the cache under its
/// SHA-256 (a file already there is used only when its bytes hash to its name).
#[cfg(feature = "embedded-policy")]
fn default_adapter_file() -> Result<PathBuf, Failure> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(DEFAULT_ADAPTER);
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = coe_cache::cache_dir()
        .join("policy")
        .join(format!("default-{name}.safetensors"));
    let intact = std::fs::read(&path).is_ok_and(|bytes| Sha256::digest(&bytes) == digest);
    if intact {
        return Ok(path);
    }
    if coe_cache::write_atomically(&path, DEFAULT_ADAPTER).is_ok() {
        return Ok(path);
    }
    // A cache that cannot be written (read-only home): a private temporary copy instead.
    let temporary = std::env::temp_dir().join(format!(
        "coe-default-policy-{name}-{}.safetensors",
        std::process::id()
    ));
    coe_cache::write_atomically(&temporary, DEFAULT_ADAPTER).map_err(|e| {
        Failure::Internal(format!(
            "coe: cannot write the default policy to {} or {}: {e}",
            path.display(),
            temporary.display()
        ))
    })?;
    Ok(temporary)
}

/// The adapters a model command uses: `--adapter PATH` that file, `--adapter none` none (the
/// base model alone); without `--adapter`, the built-in default policy when the model is the
/// default one.
pub(crate) fn chosen_adapter(
    model: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Option<PathBuf>, Failure> {
    match adapter {
        Some(path) if path == Path::new("none") => Ok(None),
        Some(path) => Ok(Some(path.to_path_buf())),
        None if model.is_none() => default_adapter_file().map(Some),
        None => Ok(None),
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
    /// LoRA adapters to apply; `none` for the base model alone (default: the built-in default
    /// policy, fixtures/policy/adapter.safetensors, on the default base model).
    #[arg(long, value_name = "PATH")]
    pub(crate) adapter: Option<PathBuf>,
    /// Episodes per task (`coe eval`: 1, greedy, by default; more are sampled. `coe repair`:
    /// the most it plays, a greedy one then sampled ones, 5 by default).
    #[arg(long, value_name = "K")]
    pub(crate) samples: Option<usize>,
    /// Turns per episode.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) max_turns: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Threads running a turn's sandbox steps side by side (0: on the model's thread).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) workers: usize,
    /// Episodes (or, with --direct, answers) generating together as one batch (more: faster,
    /// more memory).
    #[arg(long, default_value_t = coe_trainer::rollout::DEFAULT_BATCH, value_name = "N")]
    pub(crate) batch: usize,
}

/// Where a model command runs its model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Device {
    /// The CPU (burn-flex).
    #[default]
    Cpu,
    /// The first CUDA GPU (burn-cuda), in a `coe` built with `--features cuda`.
    Cuda,
}

impl Device {
    /// The error of `--device cuda` in a `coe` built without the `cuda` feature.
    #[cfg_attr(feature = "cuda", allow(dead_code))]
    pub(crate) fn cuda_missing() -> Failure {
        Failure::Input(
            "this coe was built without CUDA: build it with `cargo build --release -p coe-cli \
             --features cuda`"
                .into(),
        )
    }
}

/// Loads the base model (the default one unless `model` names a GGUF file or Hugging Face
/// folder) and, when given, LoRA adapters, on the CPU.
pub(crate) fn load_policy(
    model: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Policy<CpuBackend>, Failure> {
    load_policy_on(model, adapter, &Default::default())
}

/// [`load_policy`] on any backend's device.
pub(crate) fn load_policy_on<B: burn::prelude::Backend>(
    model: Option<&Path>,
    adapter: Option<&Path>,
    device: &B::Device,
) -> Result<Policy<B>, Failure> {
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
    let mut policy = Policy::<B>::load(&path, device)
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

/// How a command spreads its sandbox runs over cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Parallelism {
    /// Worker processes of this binary (the default): a run's copy-on-write faults then flush
    /// no other worker's TLB, which one shared address space does on every fault (see the
    /// coe-exec-pool README).
    Processes,
    /// Threads of this process, sharing one sandbox.
    Threads,
}

/// The executor of `workers` sandbox runs that overlap other work of this process (each other,
/// or the model's threads during rollouts): a pool of `coe exec-worker` processes, so no run's
/// page faults interrupt the other threads; or one in-process sandbox for `Threads` and for
/// `workers == 0` (runs on the caller's thread, overlapping nothing).
pub(crate) fn executor(
    workers: usize,
    parallelism: Parallelism,
) -> Result<std::sync::Arc<dyn coe_exec::Executor + Send + Sync>, Failure> {
    // Compiles (and caches) the guest once, before any worker process loads it.
    let sandbox = sandbox()?;
    if workers == 0 || parallelism == Parallelism::Threads {
        return Ok(std::sync::Arc::new(sandbox));
    }
    drop(sandbox);
    let pool = coe_exec_pool::ProcessPool::of_current_exe(workers, &["exec-worker"])
        .map_err(|e| Failure::Internal(format!("coe: {e}")))?;
    Ok(std::sync::Arc::new(pool))
}

pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Input(format!("coe: cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::Input(format!("coe: {} is not UTF-8 text", path.display())))
}
