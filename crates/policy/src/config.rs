//! The shape of a Llama-family model, read from a Hugging Face `config.json` or GGUF metadata.

use serde::{Deserialize, Serialize};

use crate::PolicyError;
use crate::gguf::Gguf;

/// Llama 3's long-context RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Scale applied to low frequencies.
    pub factor: f64,
    /// Wavelength threshold factor for low frequencies.
    pub low_freq_factor: f64,
    /// Wavelength threshold factor for high frequencies.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: f64,
}

/// The hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Optional Llama-3 frequency scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Whether the output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the position tables cover.
    pub max_position_embeddings: usize,
}

/// `config.json` as Hugging Face writes it (only the fields coe reads).
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A tiny random-weight configuration for tests (2 layers, GQA 4/2, vocabulary 64).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            max_position_embeddings: 4096,
        }
    }

    /// Llama-3.2-1B's shape (for benchmarks with random weights).
    pub fn llama_3_2_1b() -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            tie_word_embeddings: true,
            max_position_embeddings: 131_072,
        }
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |why: &str| Err(PolicyError::Config(why.to_string()));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive");
        }
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad("heads must divide hidden_size and key/value heads must divide heads");
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad("the head dimension must be even for RoPE");
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, PolicyError> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| PolicyError::Config(format!("config.json: {e}")))?;
        if let Some(kind) = hf.model_type.as_deref()
            && kind != "llama"
        {
            return Err(PolicyError::Config(format!(
                "config.json: model_type {kind:?} is not a Llama model"
            )));
        }
        let rope_scaling =
            match hf.rope_scaling {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => {
                    let kind = value
                        .get("rope_type")
                        .or_else(|| value.get("type"))
                        .and_then(|v| v.as_str())
                        .unwrap_or("");
                    if kind != "llama3" {
                        return Err(PolicyError::Config(format!(
                            "config.json: rope_scaling type {kind:?} is not supported (only llama3)"
                        )));
                    }
                    Some(serde_json::from_value(value).map_err(|e| {
                        PolicyError::Config(format!("config.json: rope_scaling: {e}"))
                    })?)
                }
            };
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            rope_scaling,
            tie_word_embeddings: hf.tie_word_embeddings,
            max_position_embeddings: hf.max_position_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the configuration from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, PolicyError> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(PolicyError::Config(format!(
                "GGUF architecture {arch:?} is not llama"
            )));
        }
        let int = |key: &str| -> Result<usize, PolicyError> {
            usize::try_from(gguf.get_u64(&format!("llama.{key}"))?)
                .map_err(|_| PolicyError::Config(format!("llama.{key} is too large")))
        };
        let heads = int("attention.head_count")?;
        let vocab_size = match int("vocab_size") {
            Ok(n) => n,
            Err(_) => gguf.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let config = Self {
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            rms_norm_eps: gguf.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: gguf.get_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            tie_word_embeddings: !gguf.tensors.contains_key("output.weight"),
            max_position_embeddings: int("context_length")?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_llama_3_config_json() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
            "vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
            "rms_norm_eps":1e-05,"rope_theta":500000.0,"tie_word_embeddings":true,
            "max_position_embeddings":131072,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        assert_eq!(
            LlamaConfig::from_hf_json(text).unwrap(),
            LlamaConfig::llama_3_2_1b()
        );
    }

    #[test]
    fn rejects_other_models_and_bad_shapes() {
        let err = LlamaConfig::from_hf_json(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        let bad = r#"{"vocab_size":10,"hidden_size":30,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":4}"#;
        assert!(LlamaConfig::from_hf_json(bad).is_err());
        assert!(LlamaConfig::from_hf_json("not json").is_err());
    }
}
