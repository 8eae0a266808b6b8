//! The key/value cache of a forward pass that continues earlier ones.
//!
//! Each layer keeps its keys and values in at most two blocks: the bulk, and a short tail that
//! single-token decoding grows. Growing one tensor by concatenation copies all of it on every
//! token (the CPU backend has no in-place append), so a decode step copies only the tail, and the
//! tail folds into the bulk once every [`TAIL_POSITIONS`] tokens: the per-token copying falls by
//! that factor while attention reads both blocks without joining them.

use burn::prelude::*;

/// Positions the tail holds before it is folded into the bulk.
pub const TAIL_POSITIONS: usize = 64;

/// Keys and values `[batch, kv_heads, positions, head_dim]` of one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv<B: Backend> {
    pub(crate) bulk: (Tensor<B, 4>, Tensor<B, 4>),
    pub(crate) tail: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> LayerKv<B> {
    /// Every position in one block (folds the tail in; a copy only when there is a tail).
    pub(crate) fn joined(&mut self) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if let Some((k, v)) = self.tail.take() {
            let (k0, v0) = self.bulk.clone();
            self.bulk = (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2));
        }
        self.bulk.clone()
    }

    /// Appends positions to the tail, folding it into the bulk when it is full.
    pub(crate) fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let tail = match self.tail.take() {
            Some((k0, v0)) => (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2)),
            None => (k, v),
        };
        let full = tail.0.dims()[2] >= TAIL_POSITIONS;
        self.tail = Some(tail);
        if full {
            self.joined();
        }
    }
}

/// Keys and values of every layer for the tokens seen so far.
///
/// Cloning is cheap: tensors are shared, and appending makes new ones, so sessions cloned from
/// one prompt (the samples of a group) share its cache without copying it.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<Option<LayerKv<B>>>,
    pub(crate) len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            len: 0,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequences this cache holds (1 for a session's; 0 while empty).
    pub fn batch(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|layer| layer.bulk.0.dims()[0])
            .next()
            .unwrap_or(0)
    }
}
