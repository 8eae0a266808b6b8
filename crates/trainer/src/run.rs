//! What SFT and GRPO runs share: loading the base model and the adapters (fresh, from a file,
//! or from a checkpoint), saving the final adapter with the run's configuration, and reading the
//! pipeline's files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use coe_data::formats::{LineError, read_json_lines};
use coe_policy::{LoraConfig, Policy, TextTokenizer};
use coe_tool_state::Task;

use crate::TrainerError;
use crate::config::{RunConfig, io_err};
use crate::metrics::plot_run;
use crate::optim::Trainer;

/// A run's model, ready to train.
pub(crate) struct Started<B: AutodiffBackend> {
    /// The optimiser state and the model with its adapters.
    pub(crate) trainer: Trainer<B>,
    /// The base model's tokenizer.
    pub(crate) tokenizer: TextTokenizer,
    /// The adapters' settings as they were loaded (or made): what the saved files carry.
    pub(crate) lora: LoraConfig,
}

/// Loads the base, then the adapters: from the checkpoint when resuming, else from
/// `init_adapter`, else fresh.
pub(crate) fn start<B: AutodiffBackend>(
    config: &RunConfig,
    resume: bool,
) -> Result<Started<B>, TrainerError> {
    let device = B::Device::default();
    let policy = Policy::<B>::load(&config.model_path(), &device)?;
    let checkpoint = config.out_dir.join("checkpoint");
    let (trainer, lora) = if resume && checkpoint.exists() {
        let (trainer, state) =
            Trainer::load_checkpoint(policy.model, &checkpoint, config.optim.clone())?;
        (trainer, state.lora)
    } else {
        let (model, lora) = match &config.init_adapter {
            Some(path) => coe_policy::lora::load_adapters(policy.model, path)?,
            None => (
                policy.model.attach_lora(&config.lora, config.seed, &device),
                config.lora,
            ),
        };
        let mut trainer = Trainer::new(model, config.optim.clone());
        trainer.seed = config.seed;
        (trainer, lora)
    };
    Ok(Started {
        trainer,
        tokenizer: policy.tokenizer,
        lora,
    })
}

/// Saves the final adapter (with `lora`, the settings it was loaded or made with) and the
/// run's configuration, and redraws the curves.
pub(crate) fn finish<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    lora: &LoraConfig,
    config: &RunConfig,
) -> Result<PathBuf, TrainerError> {
    let path = config.out_dir.join("adapter.safetensors");
    coe_policy::lora::save_adapters(&trainer.model, lora, &path)?;
    let text = toml::to_string(config).map_err(|e| io_err(&config.out_dir, e))?;
    let config_path = config.out_dir.join("config.toml");
    coe_cache::write_atomically(&config_path, text.as_bytes())
        .map_err(|e| io_err(&config_path, e))?;
    plot_run(&config.out_dir);
    Ok(path)
}

/// Keeps a copy of the adapter as `snapshots/step-N.safetensors` every
/// [`RunConfig::snapshot_every`] steps, for choosing a checkpoint on the validation set.
pub(crate) fn keep_snapshot<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    lora: &LoraConfig,
    config: &RunConfig,
) -> Result<(), TrainerError> {
    if config.snapshot_every == 0 || !trainer.step.is_multiple_of(config.snapshot_every) {
        return Ok(());
    }
    let dir = config.out_dir.join("snapshots");
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let path = dir.join(format!("step-{}.safetensors", trainer.step));
    coe_policy::lora::save_adapters(&trainer.model, lora, &path)?;
    Ok(())
}

/// Reads a task file (coe tasks, evaluation sets, MBPP or HumanEvalFix rows) the way every
/// task reader does ([`coe_data::sources::read_tasks`]); a malformed line is an error naming it.
pub fn load_tasks(path: &Path) -> Result<Vec<Task>, TrainerError> {
    let read = coe_data::sources::read_tasks(path).map_err(|e| io_err(path, e))?;
    read.strict().map_err(line_error)
}

/// Every line of a JSON Lines file the pipeline made; a malformed line is an error naming it.
pub(crate) fn read_strict<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, TrainerError> {
    let read = read_json_lines::<T>(path).map_err(|e| io_err(path, e))?;
    read.strict().map_err(line_error)
}

fn line_error(error: LineError) -> TrainerError {
    TrainerError::Io {
        path: error.source,
        message: format!("line {}: {}", error.line, error.message),
    }
}
