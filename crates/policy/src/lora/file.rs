//! Saving and loading LoRA adapters alone, as safetensors in PEFT's names and layout
//! (`base_model.model.<module>.lora_A.weight` `[rank, d_in]`, `lora_B.weight` `[d_out, rank]`,
//! `r` and `lora_alpha` in the metadata), so the files are also readable by PEFT.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{LoraAdapter, LoraConfig};
use crate::PolicyError;
use crate::model::Llama;
use crate::weights::transpose;

fn tensor_name(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default()
}

/// Writes the model's adapters to `path` (write to a temporary file, then rename).
pub fn save_adapters<B: Backend>(
    model: &Llama<B>,
    config: &LoraConfig,
    path: &Path,
) -> Result<(), PolicyError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut ids = serde_json::Map::new();
    for (name, linear) in model.named_linears() {
        let Some(lora) = &linear.lora else { continue };
        ids.insert(
            name.clone(),
            serde_json::json!([lora.a.id.val(), lora.b.id.val()]),
        );
        let [d_in, rank] = lora.a.dims();
        let [_, d_out] = lora.b.dims();
        let a = transpose(&host(lora.a.val()), d_in, rank);
        let b = transpose(&host(lora.b.val()), rank, d_out);
        let bytes = |v: Vec<f32>| {
            v.into_iter()
                .flat_map(f32::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        owned.push((tensor_name(&name, "A"), vec![rank, d_in], bytes(a)));
        owned.push((tensor_name(&name, "B"), vec![d_out, rank], bytes(b)));
    }
    if owned.is_empty() {
        return Err(PolicyError::Weights(
            "the model has no adapters to save".into(),
        ));
    }
    let views = owned
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| PolicyError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("r".to_string(), config.rank.to_string()),
        ("lora_alpha".to_string(), config.alpha.to_string()),
        ("lora_dropout".to_string(), config.dropout.to_string()),
        // burn parameter ids, so a resumed run's optimiser state finds its parameters.
        (
            "coe_param_ids".to_string(),
            serde_json::Value::Object(ids).to_string(),
        ),
    ]
    .into();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| PolicyError::Weights(format!("serializing adapters: {e}")))?;
    coe_cache::write_atomically(path, &bytes).map_err(|source| PolicyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads adapters written by [`save_adapters`] (or PEFT) and attaches them to `model`,
/// replacing any it had. Returns the adapters' configuration.
pub fn load_adapters<B: Backend>(
    mut model: Llama<B>,
    path: &Path,
) -> Result<(Llama<B>, LoraConfig), PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |why: String| PolicyError::Weights(format!("{}: {why}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let number = |key: &str| -> Result<f64, PolicyError> {
        meta.get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| bad(format!("metadata has no number {key}")))
    };
    let config = LoraConfig {
        rank: number("r")? as usize,
        alpha: number("lora_alpha")?,
        dropout: number("lora_dropout").unwrap_or(0.0),
    };
    if config.rank == 0 {
        return Err(bad("rank 0".into()));
    }
    let param_ids: serde_json::Map<String, serde_json::Value> = meta
        .get("coe_param_ids")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let device = model.embed.val().device();
    let names: Vec<String> = model.named_linears().into_iter().map(|(n, _)| n).collect();
    let mut found = 0;
    for (name, linear) in names.iter().zip(model.linears_mut()) {
        let [d_in, d_out] = linear.weight.dims();
        let read =
            |which: &str, rows: usize, cols: usize| -> Result<Option<Vec<f32>>, PolicyError> {
                let key = tensor_name(name, which);
                let Ok(view) = file.tensor(&key) else {
                    return Ok(None);
                };
                if view.dtype() != Dtype::F32 || view.shape() != [rows, cols] {
                    return Err(bad(format!(
                        "{key}: {:?} {:?}, expected F32 [{rows}, {cols}]",
                        view.dtype(),
                        view.shape()
                    )));
                }
                Ok(Some(
                    view.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            };
        let (a, b) = match (
            read("A", config.rank, d_in)?,
            read("B", d_out, config.rank)?,
        ) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => {
                linear.lora = None;
                continue;
            }
            _ => return Err(bad(format!("{name}: only one of lora_A and lora_B"))),
        };
        let a = transpose(&a, config.rank, d_in);
        let b = transpose(&b, d_out, config.rank);
        let a = Tensor::from_data(TensorData::new(a, [d_in, config.rank]), &device);
        let b = Tensor::from_data(TensorData::new(b, [config.rank, d_out]), &device);
        let ids = param_ids
            .get(name.as_str())
            .and_then(|v| Some([v.get(0)?.as_u64()?, v.get(1)?.as_u64()?]));
        linear.lora = Some(match ids {
            Some(ids) => LoraAdapter::with_ids(a, b, ids, &config),
            None => LoraAdapter::new(a, b, &config),
        });
        found += 1;
    }
    if found == 0 {
        return Err(bad("no adapter matches this model's layers".into()));
    }
    Ok((model, config))
}
