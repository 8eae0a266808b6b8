//! The Llama decoder in burn, generic over the backend: RMSNorm, RoPE (Hugging Face's
//! `rotate_half` layout, with optional Llama-3 frequency scaling), grouped-query attention with a
//! key/value cache ([`crate::cache`]), SwiGLU MLP, tied or untied output head, and a LoRA-carrying
//! projection ([`crate::lora::LoraLinear`]) for each of the seven projections of a layer.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::PolicyError;
use crate::cache::{KvCache, LayerKv};
use crate::config::LlamaConfig;
use crate::kernels::{self, silu, softmax_joined, softmax_last};
use crate::lora::{Adapters, LoraConfig, LoraLinear};

/// Root-mean-square layer norm.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel gain.
    pub weight: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt();
        x.div(rms).mul(self.weight.val().unsqueeze())
    }
}

/// Self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub q: LoraLinear<B>,
    /// Key projection.
    pub k: LoraLinear<B>,
    /// Value projection.
    pub v: LoraLinear<B>,
    /// Output projection.
    pub o: LoraLinear<B>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// The SwiGLU feed-forward block.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection.
    pub gate: LoraLinear<B>,
    /// Up projection.
    pub up: LoraLinear<B>,
    /// Down projection.
    pub down: LoraLinear<B>,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub attn_norm: RmsNorm<B>,
    /// Attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub mlp_norm: RmsNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding `[vocab, d]` (also the output head when tied).
    pub embed: Param<Tensor<B, 2>>,
    /// Decoder layers.
    pub layers: Vec<Block<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Untied output head `[d, vocab]`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    config: LlamaConfig,
}

/// Cosine and sine tables for RoPE in the `rotate_half` layout (the frequency vector repeated
/// twice): one `head_dim` row per entry of `positions`, each written `copies` times in a row,
/// shaped `shape`.
fn rope_tables<B: Backend>(
    config: &LlamaConfig,
    positions: impl Iterator<Item = usize>,
    copies: usize,
    shape: [usize; 4],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let freqs = inverse_frequencies(config);
    let len = shape.iter().product();
    let mut cos = Vec::with_capacity(len);
    let mut sin = Vec::with_capacity(len);
    for pos in positions {
        let row_start = cos.len();
        for _ in 0..2 {
            for &f in &freqs {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        for _ in 1..copies {
            cos.extend_from_within(row_start..row_start + freqs.len() * 2);
            sin.extend_from_within(row_start..row_start + freqs.len() * 2);
        }
    }
    let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, shape), device);
    (table(cos), table(sin))
}

/// RoPE inverse frequencies, with Llama 3's scaling when configured.
fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let head_dim = config.head_dim();
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / config.rope_theta.powf(2.0 * i as f64 / head_dim as f64);
            let Some(s) = config.rope_scaling else {
                return f;
            };
            let wavelength = 2.0 * std::f64::consts::PI / f;
            let low_wavelength = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelength = s.original_max_position_embeddings / s.high_freq_factor;
            if wavelength < high_wavelength {
                f
            } else if wavelength > low_wavelength {
                f / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelength - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// What every layer needs about the positions of one forward pass: RoPE tables and, when more
/// than one token is new, the causal masks of its query blocks (built once per pass, not per
/// layer; see [`CausalBlocks`]).
struct Positions<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    causal: Option<CausalBlocks<B>>,
}

fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.narrow(3, half, half);
    Tensor::cat(vec![second.neg(), first], 3)
}

/// RoPE applied to `x` (`[.., heads, t, head_dim]`) with tables of the same shape or one that
/// broadcasts to it.
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    x.clone().mul(cos.clone()) + rotate_half(x).mul(sin.clone())
}

/// What every layer needs about the rows of [`Llama::forward_rows`]: where each row's tokens
/// sit in the packed batch, RoPE tables per token built at full size (`[tokens, heads, 1,
/// head_dim]` for queries, `[tokens, kv_heads, 1, head_dim]` for keys, so no product
/// broadcasts), and each row's causal blocks when it has more than one new token.
struct RowPositions<B: Backend> {
    spans: Vec<(usize, usize)>,
    query: (Tensor<B, 4>, Tensor<B, 4>),
    key: (Tensor<B, 4>, Tensor<B, 4>),
    causal: Vec<Option<CausalBlocks<B>>>,
}

/// `softmax(q k^T / sqrt(head_dim)) v` for one new position against a layer's cached keys
/// and values (`q`: `[batch, kv_heads, groups, head_dim]`, query heads folded into the rows).
/// Scores are taken against each block of the cache and normalised together
/// ([`softmax_joined`]), then each block's values are weighted by their share, so the blocks
/// are never joined (nor, on the CPU backend, their scores).
fn attend_one<B: Backend>(q: Tensor<B, 4>, layer: &LayerKv<B>, head_dim: usize) -> Tensor<B, 4> {
    let (bulk_k, bulk_v) = &layer.bulk;
    let q = q.mul_scalar(1.0 / (head_dim as f64).sqrt());
    match &layer.tail {
        None => softmax_last(q.matmul(bulk_k.clone().swap_dims(2, 3))).matmul(bulk_v.clone()),
        Some((tail_k, tail_v)) => {
            let (bulk_weights, tail_weights) = softmax_joined(
                q.clone().matmul(bulk_k.clone().swap_dims(2, 3)),
                q.matmul(tail_k.clone().swap_dims(2, 3)),
            );
            bulk_weights.matmul(bulk_v.clone()) + tail_weights.matmul(tail_v.clone())
        }
    }
}

/// Query positions per block of causal attention: small enough that the diagonal blocks waste
/// little (a block computes `block / 2` masked scores per query on top of its real ones), large
/// enough that each block's products stay big matrix products.
const CAUSAL_BLOCK: usize = 128;

/// The additive masks of causal attention for `t` new positions, split in query blocks of
/// `block`: block `j`'s queries see every earlier position unmasked and need a mask only over
/// their own `block` keys, `[batch, kv_heads, groups * block, block]` (0 on and below the
/// diagonal, -inf above). Full blocks share one tensor; a shorter last block has its own.
struct CausalBlocks<B: Backend> {
    block: usize,
    heads: [usize; 3],
    full: Option<Tensor<B, 4>>,
    last: Option<Tensor<B, 4>>,
}

impl<B: Backend> CausalBlocks<B> {
    /// Masks for `t` new positions of `batch` sequences with `groups` query heads per each of
    /// `kv_heads` key/value heads.
    fn new(heads: [usize; 3], t: usize, block: usize, device: &B::Device) -> Self {
        let block = block.max(1);
        Self {
            block,
            heads,
            full: (t >= block).then(|| Self::build(heads, block, device)),
            last: (!t.is_multiple_of(block)).then(|| Self::build(heads, t % block, device)),
        }
    }

    /// The mask of a block of `b` queries. Built at full size, not broadcast: adding a
    /// broadcast `[1, 1, ..]` mask made the CPU backend walk it element by element through
    /// strided indexing.
    fn build([batch, kv_heads, groups]: [usize; 3], b: usize, device: &B::Device) -> Tensor<B, 4> {
        let mut values = Vec::with_capacity(batch * kv_heads * groups * b * b);
        for _ in 0..batch * kv_heads * groups {
            for i in 0..b {
                values.extend((0..b).map(|s| if s <= i { 0.0f32 } else { f32::NEG_INFINITY }));
            }
        }
        Tensor::from_data(
            TensorData::new(values, [batch, kv_heads, groups * b, b]),
            device,
        )
    }

    /// The mask of a block of `b` queries (those of [`CausalBlocks::new`]'s `t`: built then).
    fn mask(&self, b: usize, device: &B::Device) -> Tensor<B, 4> {
        let cached = if b == self.block {
            &self.full
        } else {
            &self.last
        };
        match cached {
            Some(mask) if mask.dims()[3] == b => mask.clone(),
            _ => Self::build(self.heads, b, device),
        }
    }
}

/// Causal `softmax(q k^T / sqrt(head_dim)) v` for the newest `t` positions (`q`: `[batch,
/// kv_heads, groups * t, head_dim]`, query heads folded into the rows head by head) against
/// `keys` and `values` (`[batch, kv_heads, total, head_dim]`, the new positions last). Queries
/// go in blocks of positions: a block's scores cover only the keys it may see, split into the
/// earlier ones (never masked) and its own block (masked), so no masked half of the square is
/// computed and no full mask is built, and autodiff keeps about half the scores it would.
/// Callers pass a layer's bulk: a pass of more than one new position folds the tail in first
/// ([`extend`]).
fn attend_causal<B: Backend>(
    q: Tensor<B, 4>,
    t: usize,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    causal: &CausalBlocks<B>,
    head_dim: usize,
) -> Tensor<B, 4> {
    let [batch, kv_heads, rows, _] = q.dims();
    let groups = rows / t;
    let offset = keys.dims()[2] - t;
    let heads = kv_heads * groups;
    let q = q
        .mul_scalar(1.0 / (head_dim as f64).sqrt())
        .reshape([batch, heads, t, head_dim]);
    let mut outs = Vec::with_capacity(t.div_ceil(causal.block));
    for start in (0..t).step_by(causal.block) {
        let b = causal.block.min(t - start);
        let mask = causal.mask(b, &q.device());
        let qb = q
            .clone()
            .narrow(2, start, b)
            .reshape([batch, kv_heads, groups * b, head_dim]);
        let seen = offset + start;
        let own_k = keys.clone().narrow(2, seen, b);
        let own_v = values.clone().narrow(2, seen, b);
        let own_scores = qb.clone().matmul(own_k.swap_dims(2, 3)) + mask;
        let out = if seen == 0 {
            softmax_last(own_scores).matmul(own_v)
        } else {
            let past_scores = qb.matmul(keys.clone().narrow(2, 0, seen).swap_dims(2, 3));
            let (past_weights, own_weights) = softmax_joined(past_scores, own_scores);
            past_weights.matmul(values.clone().narrow(2, 0, seen)) + own_weights.matmul(own_v)
        };
        outs.push(out.reshape([batch, heads, b, head_dim]));
    }
    Tensor::cat(outs, 2).reshape([batch, kv_heads, groups * t, head_dim])
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        positions: &Positions<B>,
        cache: &mut Option<LayerKv<B>>,
        adapters: Adapters,
    ) -> Tensor<B, 2> {
        let t = x.dims()[0] / batch;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let split =
            |y: Tensor<B, 2>, heads: usize| y.reshape([batch, t, heads, hd]).swap_dims(1, 2);
        let q = split(self.q.forward(x.clone(), adapters), h);
        let k = split(self.k.forward(x.clone(), adapters), kvh);
        let v = split(self.v.forward(x, adapters), kvh);
        let q = rotate(q, &positions.cos, &positions.sin);
        let k = rotate(k, &positions.cos, &positions.sin);
        let layer = extend(cache, k, v, false);
        // Query heads g*i..g*(i+1) share key/value head i: fold them into the row dimension so
        // keys and values are never copied per query head.
        let q = q.reshape([batch, kvh, (h / kvh) * t, hd]);
        let out = match &positions.causal {
            Some(causal) => {
                debug_assert!(layer.tail.is_none(), "extend folds the tail when t > 1");
                let (keys, values) = &layer.bulk;
                attend_causal(q, t, keys, values, causal, hd)
            }
            None => attend_one(q, layer, hd),
        };
        let out = out
            .reshape([batch, h, t, hd])
            .swap_dims(1, 2)
            .reshape([batch * t, h * hd]);
        self.o.forward(out, adapters)
    }

    /// New positions of several independent sequences packed one after another (`x`:
    /// `[tokens, d]`): the projections run once over all of them, attention per row against
    /// that row's own cache.
    fn forward_rows(
        &self,
        x: Tensor<B, 2>,
        positions: &RowPositions<B>,
        caches: &mut [&mut Option<LayerKv<B>>],
        adapters: Adapters,
    ) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let q = self.q.forward(x.clone(), adapters).reshape([n, h, 1, hd]);
        let k = self.k.forward(x.clone(), adapters).reshape([n, kvh, 1, hd]);
        let v = self.v.forward(x, adapters).reshape([n, kvh, 1, hd]);
        let q = rotate(q, &positions.query.0, &positions.query.1);
        let k = rotate(k, &positions.key.0, &positions.key.1);
        // `[t, heads, 1, hd]` rows of the packed batch as `[1, heads, t, hd]`.
        let row = |y: &Tensor<B, 4>, start: usize, t: usize, heads: usize| {
            y.clone()
                .narrow(0, start, t)
                .reshape([1, t, heads, hd])
                .swap_dims(1, 2)
        };
        let outs: Vec<Tensor<B, 2>> = caches
            .iter_mut()
            .zip(&positions.spans)
            .zip(&positions.causal)
            .map(|((cache, &(start, t)), causal)| {
                let layer = extend(
                    cache,
                    row(&k, start, t, kvh),
                    row(&v, start, t, kvh),
                    t == 1,
                );
                let q = row(&q, start, t, h).reshape([1, kvh, (h / kvh) * t, hd]);
                match causal {
                    Some(causal) => {
                        debug_assert!(layer.tail.is_none(), "extend folds the tail when t > 1");
                        let (keys, values) = &layer.bulk;
                        attend_causal(q, t, keys, values, causal, hd)
                    }
                    None => attend_one(q, layer, hd),
                }
                .reshape([1, h, t, hd])
                .swap_dims(1, 2)
                .reshape([t, h * hd])
            })
            .collect();
        self.o.forward(Tensor::cat(outs, 0), adapters)
    }
}

/// Appends keys and values to a layer's cache: to its tail when `decoding` (one token, so the
/// bulk is not copied), else joined into one block.
fn extend<B: Backend>(
    cache: &mut Option<LayerKv<B>>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    decoding: bool,
) -> &LayerKv<B> {
    if let Some(layer) = cache {
        if decoding {
            layer.append(k, v);
        } else {
            // One copy of everything cached plus the new positions (joining the tail first
            // would copy the bulk twice).
            let (mut keys, mut values) = (vec![layer.bulk.0.clone()], vec![layer.bulk.1.clone()]);
            if let Some((tail_k, tail_v)) = layer.tail.take() {
                keys.push(tail_k);
                values.push(tail_v);
            }
            keys.push(k);
            values.push(v);
            layer.bulk = (Tensor::cat(keys, 2), Tensor::cat(values, 2));
        }
        return layer;
    }
    cache.insert(LayerKv {
        bulk: (k, v),
        tail: None,
    })
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>, adapters: Adapters) -> Tensor<B, 2> {
        let gate = silu(self.gate.forward(x.clone(), adapters));
        self.down
            .forward(gate * self.up.forward(x, adapters), adapters)
    }
}

/// Builds a model from named tensors in Hugging Face's layout (see [`crate::weights`]).
pub(crate) struct Parts<B: Backend> {
    pub(crate) embed: Tensor<B, 2>,
    pub(crate) layers: Vec<LayerParts<B>>,
    pub(crate) norm: Tensor<B, 1>,
    pub(crate) lm_head: Option<Tensor<B, 2>>,
}

/// One layer's tensors; projections already `[d_in, d_out]`.
pub(crate) struct LayerParts<B: Backend> {
    pub(crate) attn_norm: Tensor<B, 1>,
    pub(crate) q: Tensor<B, 2>,
    pub(crate) k: Tensor<B, 2>,
    pub(crate) v: Tensor<B, 2>,
    pub(crate) o: Tensor<B, 2>,
    pub(crate) mlp_norm: Tensor<B, 1>,
    pub(crate) gate: Tensor<B, 2>,
    pub(crate) up: Tensor<B, 2>,
    pub(crate) down: Tensor<B, 2>,
}

impl<B: Backend> Llama<B> {
    pub(crate) fn from_parts(config: LlamaConfig, parts: Parts<B>) -> Self {
        let norm = |w: Tensor<B, 1>| RmsNorm {
            weight: Param::from_tensor(w).set_require_grad(false),
            eps: config.rms_norm_eps,
        };
        let layers = parts
            .layers
            .into_iter()
            .map(|l| Block {
                attn_norm: norm(l.attn_norm),
                attn: Attention {
                    q: LoraLinear::frozen(l.q),
                    k: LoraLinear::frozen(l.k),
                    v: LoraLinear::frozen(l.v),
                    o: LoraLinear::frozen(l.o),
                    heads: config.num_attention_heads,
                    kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim(),
                },
                mlp_norm: norm(l.mlp_norm),
                mlp: Mlp {
                    gate: LoraLinear::frozen(l.gate),
                    up: LoraLinear::frozen(l.up),
                    down: LoraLinear::frozen(l.down),
                },
            })
            .collect();
        Self {
            embed: Param::from_tensor(parts.embed).set_require_grad(false),
            layers,
            norm: norm(parts.norm),
            lm_head: parts
                .lm_head
                .map(|w| Param::from_tensor(w).set_require_grad(false)),
            config,
        }
    }

    /// A model with random weights (tests and benchmarks of a model's shape); the same seed
    /// gives the same weights on every backend and thread.
    pub fn random(config: LlamaConfig, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal = |shape: [usize; 2], std: f32| {
            let values = (0..shape[0] * shape[1])
                .map(|_| std * standard_normal(&mut rng))
                .collect::<Vec<f32>>();
            Tensor::from_data(TensorData::new(values, shape), device)
        };
        let (d, ff, hd) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let ones = || Tensor::ones([d], device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerParts {
                attn_norm: ones(),
                q: normal([d, config.num_attention_heads * hd], 0.02),
                k: normal([d, config.num_key_value_heads * hd], 0.02),
                v: normal([d, config.num_key_value_heads * hd], 0.02),
                o: normal([config.num_attention_heads * hd, d], 0.02),
                mlp_norm: ones(),
                gate: normal([d, ff], 0.02),
                up: normal([d, ff], 0.02),
                down: normal([ff, d], 0.02),
            })
            .collect();
        let parts = Parts {
            // Larger than the projections so a random model's logits are not all equal.
            embed: normal([config.vocab_size, d], 0.05),
            layers,
            norm: ones(),
            lm_head: (!config.tie_word_embeddings).then(|| normal([d, config.vocab_size], 0.02)),
        };
        Self::from_parts(config, parts)
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// An empty key/value cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Runs `tokens` (`[batch, t]`) after the positions already in `cache` and appends them to
    /// it; returns the final hidden states `[batch, t, d]` (see [`Llama::logits`]).
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        adapters: Adapters,
    ) -> Tensor<B, 3> {
        let [batch, t] = tokens.dims();
        let device = tokens.device();
        let d = self.config.hidden_size;
        let hd = self.config.head_dim();
        let start = cache.len;
        let (cos, sin) =
            rope_tables::<B>(&self.config, start..start + t, 1, [1, 1, t, hd], &device);
        let groups = self.config.num_attention_heads / self.config.num_key_value_heads;
        let positions = Positions {
            cos,
            sin,
            causal: (t > 1).then(|| {
                let kv_heads = self.config.num_key_value_heads;
                CausalBlocks::new([batch, kv_heads, groups], t, CAUSAL_BLOCK, &device)
            }),
        };
        let mut x =
            burn::tensor::module::embedding(self.embed.val(), tokens).reshape([batch * t, d]);
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.attn_norm.forward(x.clone());
            x = x + layer.attn.forward(h, batch, &positions, kv, adapters);
            let h = layer.mlp_norm.forward(x.clone());
            x = x + layer.mlp.forward(h, adapters);
        }
        cache.len += t;
        self.norm.forward(x).reshape([batch, t, d])
    }

    /// Runs new tokens of several independent sequences at once: `rows[i]` follows the
    /// positions in `caches[i]` (rows and caches may all differ in length) and is appended to
    /// it. The rows are packed one after another, so the projections and the MLP make one pass
    /// over the weights for all of them; attention runs per row against that row's own cache,
    /// so no row is padded or masked for another. Returns the final hidden state of each row's
    /// last token, `[rows, d]`.
    pub fn forward_rows(
        &self,
        rows: &[&[u32]],
        caches: &mut [&mut KvCache<B>],
        adapters: Adapters,
    ) -> Result<Tensor<B, 2>, PolicyError> {
        if rows.is_empty() || caches.len() != rows.len() || rows.iter().any(|r| r.is_empty()) {
            return Err(PolicyError::Generation(format!(
                "{} rows for {} caches: a forward pass needs one non-empty row per cache",
                rows.len(),
                caches.len()
            )));
        }
        if let Some(cache) = caches.iter().find(|c| c.layers.len() != self.layers.len()) {
            return Err(PolicyError::Generation(format!(
                "a cache of {} layers for a model of {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        if caches.iter().any(|c| c.batch() > 1) {
            return Err(PolicyError::Generation(
                "forward_rows needs one sequence per cache (a cache of a batched forward holds \
                 several)"
                    .into(),
            ));
        }
        crate::generate::check_ids(self, rows.iter().flat_map(|r| r.iter()))?;
        let device = self.embed.val().device();
        let (d, hd) = (self.config.hidden_size, self.config.head_dim());
        let (heads, kv_heads) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
        );
        let mut spans = Vec::with_capacity(rows.len());
        let mut offset = 0;
        for row in rows {
            spans.push((offset, row.len()));
            offset += row.len();
        }
        let tokens = offset;
        let token_positions = || {
            caches
                .iter()
                .zip(rows)
                .flat_map(|(cache, row)| cache.len..cache.len + row.len())
        };
        let table = |copies: usize| {
            rope_tables::<B>(
                &self.config,
                token_positions(),
                copies,
                [tokens, copies, 1, hd],
                &device,
            )
        };
        let groups = heads / kv_heads;
        let causal = rows
            .iter()
            .map(|row| {
                let t = row.len();
                (t > 1).then(|| CausalBlocks::new([1, kv_heads, groups], t, CAUSAL_BLOCK, &device))
            })
            .collect();
        let positions = RowPositions {
            spans,
            query: table(heads),
            key: table(kv_heads),
            causal,
        };
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&t| i64::from(t)))
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, tokens]), &device);
        let mut x = burn::tensor::module::embedding(self.embed.val(), ids).reshape([tokens, d]);
        for (index, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut Option<LayerKv<B>>> = caches
                .iter_mut()
                .map(|cache| &mut cache.layers[index])
                .collect();
            let h = layer.attn_norm.forward(x.clone());
            x = x + layer
                .attn
                .forward_rows(h, &positions, &mut layer_caches, adapters);
            let h = layer.mlp_norm.forward(x.clone());
            x = x + layer.mlp.forward(h, adapters);
        }
        for (cache, row) in caches.iter_mut().zip(rows) {
            cache.len += row.len();
        }
        let last: Vec<i64> = positions
            .spans
            .iter()
            .map(|&(start, t)| (start + t - 1) as i64)
            .collect();
        let last = Tensor::from_data(TensorData::new(last, [rows.len()]), &device);
        Ok(self.norm.forward(x.select(0, last)))
    }

    /// Output logits `[n, vocab]` for hidden states `[n, d]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => kernels::matmul(hidden, head.val()),
            None => kernels::matmul_transposed(hidden, self.embed.val()),
        }
    }

    /// Attaches fresh LoRA adapters to every attention and MLP projection (`A` drawn from
    /// `seed`, `B` zero).
    pub fn attach_lora(mut self, config: &LoraConfig, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        for layer in &mut self.layers {
            for linear in layer.linears_mut() {
                linear.attach(config, &mut rng, device);
            }
        }
        self
    }

    /// Sets the dropout of every adapter (see [`crate::LoraAdapter::set_dropout`]).
    pub fn set_lora_dropout(&mut self, prob: f64) {
        for linear in self.linears_mut() {
            if let Some(lora) = &mut linear.lora {
                lora.set_dropout(prob);
            }
        }
    }

    /// The largest dropout probability of any adapter (0 without adapters).
    pub fn lora_dropout(&self) -> f64 {
        self.layers
            .iter()
            .flat_map(Block::linears)
            .filter_map(|linear| linear.lora.as_ref())
            .map(crate::LoraAdapter::dropout)
            .fold(0.0, f64::max)
    }

    /// Folds the adapters into the base weights (`W + s A B`) for faster inference.
    pub fn merge_lora(mut self) -> Self {
        for layer in &mut self.layers {
            for linear in layer.linears_mut() {
                linear.merge();
            }
        }
        self
    }

    /// Every LoRA-carrying projection with its Hugging Face name, in a fixed order.
    pub fn named_linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.names().into_iter().zip(layer.linears()) {
                out.push((format!("model.layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// Mutable access to the projections, in the order of [`Llama::named_linears`].
    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear<B>> {
        self.layers
            .iter_mut()
            .flat_map(|layer| layer.linears_mut())
            .collect()
    }
}

impl<B: Backend> Block<B> {
    fn names(&self) -> [&'static str; 7] {
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
    }

    fn linears(&self) -> [&LoraLinear<B>; 7] {
        let (a, m) = (&self.attn, &self.mlp);
        [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
    }

    fn linears_mut(&mut self) -> [&mut LoraLinear<B>; 7] {
        let (a, m) = (&mut self.attn, &mut self.mlp);
        [
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
            &mut m.gate,
            &mut m.up,
            &mut m.down,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    type Grad = burn::backend::Autodiff<crate::CpuBackend>;

    /// Causal attention the plain way: the whole square of scores with a full additive mask.
    fn masked_square<B: Backend>(
        q: Tensor<B, 4>,
        t: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        head_dim: usize,
    ) -> Tensor<B, 4> {
        let [batch, kv_heads, rows, _] = q.dims();
        let total = keys.dims()[2];
        let offset = total - t;
        let mask: Vec<f32> = (0..batch * kv_heads * rows)
            .flat_map(|r| {
                let i = r % t;
                (0..total).map(move |s| {
                    if s <= offset + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_data(
            TensorData::new(mask, [batch, kv_heads, rows, total]),
            &q.device(),
        );
        let scores = q
            .matmul(keys.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        softmax(scores + mask, 3).matmul(values)
    }

    /// Random `q` (`[batch, kv_heads, groups * t, hd]`), keys and values (`offset + t`
    /// positions) on the autodiff backend, tracked for gradients.
    fn inputs(
        [batch, kv_heads, groups, hd]: [usize; 4],
        t: usize,
        offset: usize,
    ) -> [Tensor<Grad, 4>; 3] {
        let device = Default::default();
        let normal = |shape: [usize; 4]| {
            Tensor::<Grad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
        };
        [
            normal([batch, kv_heads, groups * t, hd]),
            normal([batch, kv_heads, offset + t, hd]),
            normal([batch, kv_heads, offset + t, hd]),
        ]
    }

    fn max_difference<const D: usize>(
        a: Tensor<crate::CpuBackend, D>,
        b: Tensor<crate::CpuBackend, D>,
    ) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn blocked_causal_attention_equals_the_masked_square_with_its_gradients() {
        let (batch, kv_heads, groups, hd) = (2, 2, 3, 8);
        // (new positions, cached positions before them, query block): several full blocks
        // with a short last one after a cache, whole blocks from position 0, one short block.
        for (t, offset, block) in [(11, 5, 4), (8, 0, 4), (3, 7, 4), (9, 0, 128)] {
            let [q, keys, values] = inputs([batch, kv_heads, groups, hd], t, offset);
            let causal =
                CausalBlocks::<Grad>::new([batch, kv_heads, groups], t, block, &q.device());
            let blocked = attend_causal(q.clone(), t, &keys, &values, &causal, hd);
            let square = masked_square(q.clone(), t, keys.clone(), values.clone(), hd);
            assert_eq!(blocked.dims(), square.dims());
            let forward = max_difference(blocked.clone().inner(), square.clone().inner());
            assert!(
                forward < 1e-5,
                "t {t}, offset {offset}: outputs differ by {forward}"
            );
            // Without autodiff (inference: the vectorised softmax over the two key blocks).
            let causal = CausalBlocks::<crate::CpuBackend>::new(
                [batch, kv_heads, groups],
                t,
                block,
                &q.device(),
            );
            let [q_, keys_, values_] = [&q, &keys, &values].map(|x| x.clone().inner());
            let inference = attend_causal(q_, t, &keys_, &values_, &causal, hd);
            let forward = max_difference(inference, square.clone().inner());
            assert!(
                forward < 1e-5,
                "t {t}, offset {offset}: inference outputs differ by {forward}"
            );

            // The same weighted sum of outputs through each: equal gradients at every input.
            let weights = Tensor::<Grad, 4>::random(
                blocked.dims(),
                Distribution::Normal(0.0, 1.0),
                &q.device(),
            );
            let blocked_grads = (blocked * weights.clone()).sum().backward();
            let square_grads = (square * weights).sum().backward();
            for (name, input) in [("q", &q), ("keys", &keys), ("values", &values)] {
                let (Some(a), Some(b)) = (input.grad(&blocked_grads), input.grad(&square_grads))
                else {
                    panic!("no gradient for {name}");
                };
                let difference = max_difference(a, b);
                assert!(
                    difference < 1e-4,
                    "t {t}, offset {offset}: gradients of {name} differ by {difference}"
                );
            }
        }
    }
}
