//! coe-policy: the language model that drives the edit tool.
//!
//! A Llama-family decoder in burn, generic over the backend ([`model::Llama`]), loaded from a
//! GGUF file (dequantised at load) or a Hugging Face folder; its tokenizer and chat template
//! ([`tokenizer`]); LoRA ([`lora`]: the adapters, the projection that carries them, their
//! files); the key/value cache ([`cache`]); and sampling with that cache persisting across the
//! turns of an episode ([`generate`]); the check against the reference outputs
//! ([`reference`]).
//!
//! The crate knows nothing of Python or sandboxes: it turns token ids into token ids.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod cache;
pub mod config;
pub mod generate;
mod kernels;
// Internal: public only so the fuzz target can drive the parser (`fuzz/fuzz_targets/gguf_read.rs`).
#[doc(hidden)]
pub mod gguf;
pub mod lora;
pub mod model;
pub mod reference;
pub mod tokenizer;
mod weights;

use std::path::Path;

use burn::prelude::Backend;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use generate::{Generation, SamplingConfig, Session, StopReason};
pub use gguf::GgufError;
pub use lora::{Adapters, LoraAdapter, LoraConfig, LoraLinear};
pub use model::Llama;
pub use tokenizer::{ChatMessage, ChatTemplate, TextTokenizer};

/// The CPU backend used by default (the fastest of burn 0.21's CPU backends on SmolLM2-135M;
/// see the crate README for the measurement).
pub type CpuBackend = burn::backend::Flex;

/// The CPU backend with automatic differentiation, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<CpuBackend>;

/// The CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A GGUF file is invalid.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// The model configuration is invalid or unsupported.
    #[error("model configuration: {0}")]
    Config(String),
    /// Weights are missing, have the wrong shape or type.
    #[error("weights: {0}")]
    Weights(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Generation was asked something impossible.
    #[error("generation: {0}")]
    Generation(String),
}

/// A model with its tokenizer, on a device.
#[derive(Debug)]
pub struct Policy<B: Backend> {
    /// The network.
    pub model: Llama<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: TextTokenizer,
}

impl<B: Backend> Policy<B> {
    /// Loads a model: a `.gguf` file, or a Hugging Face folder with `config.json`,
    /// `*.safetensors` and `tokenizer.json`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, PolicyError> {
        if path.is_dir() {
            let read = |name: &str| -> Result<String, PolicyError> {
                let file = path.join(name);
                std::fs::read_to_string(&file).map_err(|source| PolicyError::Io {
                    path: file.display().to_string(),
                    source,
                })
            };
            let config = LlamaConfig::from_hf_json(&read("config.json")?)?;
            let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"))?;
            let source = weights::SafetensorsSource::open(path)?;
            let model = weights::build_model(&config, &source, device)?;
            return Ok(Self { model, tokenizer });
        }
        let gguf = gguf::Gguf::open(path)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let tokenizer = TextTokenizer::from_gguf(&gguf)?;
        let source = weights::GgufSource {
            gguf: &gguf,
            config: &config,
        };
        let model = weights::build_model(&config, &source, device)?;
        Ok(Self { model, tokenizer })
    }
}

pub use coe_cache::{default_model_path, model_dir};
