//! LoRA: the low-rank adapters trained beside the frozen base, the projection that carries them
//! ([`LoraLinear`]), and their files ([`file`]: safetensors in PEFT's names and layout).

mod file;

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::Rng;
use rand::rngs::StdRng;

use crate::kernels;

pub use file::{load_adapters, save_adapters};

/// Whether a forward pass uses the LoRA adapters (off gives the frozen base model, the
/// reference for the KL term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapters {
    /// Base plus adapters.
    On,
    /// The base model alone.
    Off,
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// Rank of the update.
    pub rank: usize,
    /// Scaling numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
}

impl Default for LoraConfig {
    /// The paper's setting: rank 16, alpha 32, dropout 0.05.
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
        }
    }
}

/// A low-rank update `s * (x A) B` beside a frozen weight.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[d_in, rank]`, random at start.
    pub a: Param<Tensor<B, 2>>,
    /// `[rank, d_out]`, zero at start so a new adapter changes nothing.
    pub b: Param<Tensor<B, 2>>,
    /// `alpha / rank`.
    pub scale: f64,
    dropout: Dropout,
}

impl<B: Backend> LoraAdapter<B> {
    /// An adapter from its matrices `a` `[d_in, rank]` and `b` `[rank, d_out]`.
    pub fn new(a: Tensor<B, 2>, b: Tensor<B, 2>, config: &LoraConfig) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: config.alpha / config.rank as f64,
            dropout: DropoutConfig::new(config.dropout).init(),
        }
    }

    /// Sets the dropout on the adapter's input (active only under autodiff, that is in
    /// training); GRPO sets 0 so that the policy it updates is the one it sampled from.
    pub fn set_dropout(&mut self, prob: f64) {
        self.dropout = DropoutConfig::new(prob).init();
    }

    /// The dropout probability on the adapter's input.
    pub fn dropout(&self) -> f64 {
        self.dropout.prob
    }

    /// Like [`LoraAdapter::new`], keeping given parameter ids (so an optimiser's saved state,
    /// which is keyed by parameter id, still applies after a reload).
    pub fn with_ids(a: Tensor<B, 2>, b: Tensor<B, 2>, ids: [u64; 2], config: &LoraConfig) -> Self {
        let mut adapter = Self::new(a, b, config);
        adapter.a = Param::initialized(ParamId::from(ids[0]), adapter.a.val());
        adapter.b = Param::initialized(ParamId::from(ids[1]), adapter.b.val());
        adapter
    }
}

/// A bias-free projection `x W` with `W` stored `[d_in, d_out]` and an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The (frozen) base weight, `[d_in, d_out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// The trainable adapter, when attached.
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    pub(crate) fn frozen(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            lora: None,
        }
    }

    /// `x` is `[n, d_in]`.
    pub(crate) fn forward(&self, x: Tensor<B, 2>, adapters: Adapters) -> Tensor<B, 2> {
        let base = kernels::matmul(x.clone(), self.weight.val());
        match (&self.lora, adapters) {
            (Some(lora), Adapters::On) => {
                let low = lora.dropout.forward(x).matmul(lora.a.val());
                base + low.matmul(lora.b.val()).mul_scalar(lora.scale)
            }
            _ => base,
        }
    }

    pub(crate) fn attach(&mut self, config: &LoraConfig, rng: &mut StdRng, device: &B::Device) {
        let [d_in, d_out] = self.weight.dims();
        // Kaiming-uniform bound for A as PEFT does; B zero.
        let bound = (1.0 / d_in as f32).sqrt();
        let values = (0..d_in * config.rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect::<Vec<f32>>();
        let a = Tensor::from_data(TensorData::new(values, [d_in, config.rank]), device);
        let b = Tensor::zeros([config.rank, d_out], device);
        self.lora = Some(LoraAdapter::new(a, b, config));
    }

    pub(crate) fn merge(&mut self) {
        if let Some(lora) = self.lora.take() {
            let delta = lora.a.val().matmul(lora.b.val()).mul_scalar(lora.scale);
            let merged = self.weight.val() + delta;
            self.weight = Param::from_tensor(merged.detach()).set_require_grad(false);
        }
    }
}
