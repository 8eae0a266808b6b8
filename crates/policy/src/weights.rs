//! Loading pretrained weights: a GGUF file (dequantised at load) or a Hugging Face folder
//! (`config.json`, `*.safetensors`, sharded or not). Both are read through one interface in
//! Hugging Face's tensor names and layout, so the model is built by one piece of code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

use crate::PolicyError;
use crate::config::LlamaConfig;
use crate::gguf::Gguf;
use crate::model::{LayerParts, Llama, Parts};

/// A source of named `f32` tensors in Hugging Face's names and `[out, in]` layout.
pub(crate) trait TensorSource {
    /// Whether the tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor's row-major shape and values.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), PolicyError>;
}

/// GGUF tensors under Hugging Face names, with llama.cpp's RoPE permutation of the query and
/// key rows undone (GGUF stores them for interleaved RoPE; the model uses `rotate_half`).
pub(crate) struct GgufSource<'a> {
    pub(crate) gguf: &'a Gguf,
    pub(crate) config: &'a LlamaConfig,
}

impl GgufSource<'_> {
    fn gguf_name(name: &str) -> Option<String> {
        let fixed = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(fixed) = fixed {
            return Some(fixed.to_string());
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let part = match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{part}"))
    }
}

impl TensorSource for GgufSource<'_> {
    fn contains(&self, name: &str) -> bool {
        Self::gguf_name(name).is_some_and(|n| self.gguf.tensors.contains_key(&n))
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), PolicyError> {
        let gguf_name = Self::gguf_name(name)
            .ok_or_else(|| PolicyError::Weights(format!("no tensor {name}")))?;
        let (shape, values) = self.gguf.dequantize(&gguf_name)?;
        let heads = if name.ends_with("q_proj.weight") {
            self.config.num_attention_heads
        } else if name.ends_with("k_proj.weight") {
            self.config.num_key_value_heads
        } else {
            return Ok((shape, values));
        };
        let values = unpermute_rope_rows(&values, &shape, heads)
            .ok_or_else(|| PolicyError::Weights(format!("{gguf_name}: shape {shape:?}")))?;
        Ok((shape, values))
    }
}

/// Reorders the rows of a `[heads * head_dim, d_in]` matrix from llama.cpp's interleaved pairs
/// (row `2j + p` of a head) to Hugging Face's halves (row `p * head_dim / 2 + j`).
fn unpermute_rope_rows(values: &[f32], shape: &[usize], heads: usize) -> Option<Vec<f32>> {
    let [rows, cols] = *shape else { return None };
    if heads == 0 || rows % heads != 0 || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for p in 0..2 {
                let from = (h * head_dim + 2 * j + p) * cols;
                let to = (h * head_dim + p * half + j) * cols;
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    Some(out)
}

/// Safetensors files of a Hugging Face folder, read into memory.
pub(crate) struct SafetensorsSource {
    files: Vec<(PathBuf, Vec<u8>)>,
    index: BTreeMap<String, usize>,
}

impl SafetensorsSource {
    pub(crate) fn open(dir: &Path) -> Result<Self, PolicyError> {
        let io = |path: &Path, e: std::io::Error| PolicyError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::Weights(format!(
                "{} has no *.safetensors files",
                dir.display()
            )));
        }
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            let names = SafeTensors::deserialize(&bytes)
                .map_err(|e| PolicyError::Weights(format!("{}: {e}", path.display())))?
                .names()
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
            for name in names {
                index.insert(name, files.len());
            }
            files.push((path, bytes));
        }
        Ok(Self { files, index })
    }
}

impl TensorSource for SafetensorsSource {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), PolicyError> {
        let missing = || PolicyError::Weights(format!("no tensor {name}"));
        let (path, bytes) = &self.files[*self.index.get(name).ok_or_else(missing)?];
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| PolicyError::Weights(format!("{}: {e}", path.display())))?;
        let view = file
            .tensor(name)
            .map_err(|e| PolicyError::Weights(format!("{}: {name}: {e}", path.display())))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(PolicyError::Weights(format!(
                    "{name}: dtype {other:?} is not supported (F32, F16, BF16)"
                )));
            }
        };
        Ok((view.shape().to_vec(), values))
    }
}

/// Builds the model from a tensor source, checking every shape against the configuration.
pub(crate) fn build_model<B: Backend>(
    config: &LlamaConfig,
    source: &dyn TensorSource,
    device: &B::Device,
) -> Result<Llama<B>, PolicyError> {
    let fetch = |name: &str, expected: &[usize]| -> Result<Vec<f32>, PolicyError> {
        let (shape, values) = source.tensor(name)?;
        if shape != expected || values.len() != expected.iter().product::<usize>() {
            return Err(PolicyError::Weights(format!(
                "{name}: shape {shape:?}, expected {expected:?} from the configuration"
            )));
        }
        Ok(values)
    };
    let vector = |name: &str, n: usize| -> Result<Tensor<B, 1>, PolicyError> {
        Ok(Tensor::from_data(
            TensorData::new(fetch(name, &[n])?, [n]),
            device,
        ))
    };
    // PyTorch `[out, in]` to burn's `[in, out]`.
    let projection = |name: &str, d_in: usize, d_out: usize| -> Result<Tensor<B, 2>, PolicyError> {
        let values = fetch(name, &[d_out, d_in])?;
        Ok(Tensor::from_data(
            TensorData::new(transpose(&values, d_out, d_in), [d_in, d_out]),
            device,
        ))
    };
    let (d, ff) = (config.hidden_size, config.intermediate_size);
    let (q_dim, kv_dim) = (
        config.num_attention_heads * config.head_dim(),
        config.num_key_value_heads * config.head_dim(),
    );
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = |part: &str| format!("model.layers.{i}.{part}.weight");
        layers.push(LayerParts {
            attn_norm: vector(&p("input_layernorm"), d)?,
            q: projection(&p("self_attn.q_proj"), d, q_dim)?,
            k: projection(&p("self_attn.k_proj"), d, kv_dim)?,
            v: projection(&p("self_attn.v_proj"), d, kv_dim)?,
            o: projection(&p("self_attn.o_proj"), q_dim, d)?,
            mlp_norm: vector(&p("post_attention_layernorm"), d)?,
            gate: projection(&p("mlp.gate_proj"), d, ff)?,
            up: projection(&p("mlp.up_proj"), d, ff)?,
            down: projection(&p("mlp.down_proj"), ff, d)?,
        });
    }
    let embed_values = fetch("model.embed_tokens.weight", &[config.vocab_size, d])?;
    let embed = Tensor::from_data(
        TensorData::new(embed_values, [config.vocab_size, d]),
        device,
    );
    let lm_head = if config.tie_word_embeddings || !source.contains("lm_head.weight") {
        None
    } else {
        Some(projection("lm_head.weight", d, config.vocab_size)?)
    };
    let mut config = config.clone();
    config.tie_word_embeddings = lm_head.is_none();
    let parts = Parts {
        embed,
        layers,
        norm: vector("model.norm.weight", d)?,
        lm_head,
    };
    Ok(Llama::from_parts(config, parts))
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_llama_cpp_permutation() {
        // One head of dim 4, one column: HF rows [a0, a1, b0, b1] are stored by llama.cpp as
        // interleaved pairs [a0, b0, a1, b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        let hf = unpermute_rope_rows(&gguf, &[4, 1], 1).unwrap();
        assert_eq!(hf, vec![10.0, 11.0, 20.0, 21.0]);
        assert!(unpermute_rope_rows(&gguf, &[4, 1], 3).is_none());
    }

    #[test]
    fn maps_names() {
        assert_eq!(
            GgufSource::gguf_name("model.layers.12.self_attn.k_proj.weight").as_deref(),
            Some("blk.12.attn_k.weight")
        );
        assert_eq!(GgufSource::gguf_name("model.layers.x"), None);
    }
}
