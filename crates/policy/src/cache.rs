//! The key/value cache of a forward pass that continues earlier ones.

use burn::prelude::*;

/// Keys and values of every layer for the tokens seen so far, `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
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

    /// The same cache repeated `times` along the batch (to sample several continuations of one
    /// prompt).
    pub fn repeat(&self, times: usize) -> Self {
        self.map(self.len, |t| t.clone().repeat_dim(0, times))
    }

    /// Row `row` of the batch, keeping only its first `len` positions.
    pub fn row(&self, row: usize, len: usize) -> Self {
        let len = len.min(self.len);
        self.map(len, |t| t.clone().narrow(0, row, 1).narrow(2, 0, len))
    }

    /// A cache of `len` positions made by applying `f` to every layer's keys and values.
    fn map(&self, len: usize, f: impl Fn(&Tensor<B, 4>) -> Tensor<B, 4>) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|kv| kv.as_ref().map(|(k, v)| (f(k), f(v))))
                .collect(),
            len,
        }
    }
}
