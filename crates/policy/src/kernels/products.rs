//! Products of a few rows by a large matrix on every core: the projections and logits of a
//! decode step (one row per live episode).
//!
//! burn-flex runs a product below 192^3 multiply-adds (every projection of a decode step) on one
//! thread. Here the product is cut into a few parts per thread and each part is one
//! single-threaded gemm call (its own AVX-512/AVX2 kernels): gemm is the crate burn-flex already
//! uses, and nothing here multiplies by itself.
//!
//! - Several rows (a batched step): blocks of output columns, on rayon's threads.
//! - One row (a single stream): each part reads a contiguous block of the weight's memory, since
//!   a matrix-vector product is bound by memory, not arithmetic: for a projection `[k, n]`, a
//!   block of its rows (of the inputs) gives a partial sum of the whole output, and the parts
//!   are added; for the logits `[n, k]`, a block of its rows gives a block of the output.
//!   A block of columns of `[k, n]` instead took as long as the whole product (measured: 576 x
//!   1536, one core, 170 us either way; a block of rows, 80-106 us). The parts run on
//!   [`team`]'s spinning helpers: a product takes 20-220 us, about what waking a rayon thread
//!   costs on these machines.
//!
//! Measured (`policy-bench`, alternated with the build before, nothing else running; policy
//! README): see the README's "Products on both cores for a single stream".

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use burn::prelude::*;
use rayon::prelude::*;

use super::{cpu_f32, from_values, team};

/// The rows a product must have to be split: at most a batched decode step's (prefill's packed
/// observations have hundreds of rows, where burn-flex's gemm call already uses every core).
const SPLIT_ROWS: std::ops::RangeInclusive<usize> = 1..=16;

/// Parts per thread: more parts than threads, so that a thread the machine is slow to run
/// leaves its share to the others.
const PARTS_PER_THREAD: usize = 2;

/// Block widths are multiples of this, so that blocks start on whole vectors (16 `f32` in an
/// AVX-512 register) and cache lines.
const COLUMN_ALIGN: usize = 16;

/// How the weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weight {
    /// `[k, n]`: the product is `x w` (a projection).
    InputsByOutputs,
    /// `[n, k]`: the product is `x wᵀ` (logits against the tied embedding).
    OutputsByInputs,
}

/// `x w` for `x` `[m, k]` and `w` `[k, n]`.
pub(crate) fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    few_rows(&x, &w, Weight::InputsByOutputs).unwrap_or_else(|| x.matmul(w))
}

/// `x wᵀ` for `x` `[m, k]` and `w` `[n, k]`; elsewhere than the fast path, `(w xᵀ)ᵀ`, which
/// keeps a large `w` as gemm's contiguous left operand instead of copying a transposed view.
pub(crate) fn matmul_transposed<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    few_rows(&x, &w, Weight::OutputsByInputs).unwrap_or_else(|| w.matmul(x.transpose()).transpose())
}

/// The product on the CPU backend for `f32` tensors of [`SPLIT_ROWS`] rows (not under
/// autodiff) when there is more than one thread; `None` where burn's matmul should run.
fn few_rows<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
    weight: Weight,
) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let (weight_k, n) = match (weight, w.dims()) {
        (Weight::InputsByOutputs, [k, n]) | (Weight::OutputsByInputs, [n, k]) => (k, n),
    };
    let threads = rayon::current_num_threads();
    if threads < 2 || !SPLIT_ROWS.contains(&m) || k == 0 || n < 2 * COLUMN_ALIGN || k != weight_k {
        return None;
    }
    let (xs, ws) = (cpu_f32(x)?, cpu_f32(w)?);
    let operands = Operands::new(
        xs.as_slice::<f32>()?,
        ws.as_slice::<f32>()?,
        [m, k, n],
        weight,
    )?;
    Some(from_values(operands.product(threads), [m, n], &x.device()))
}

/// Parts for a call on the team with `threads` threads.
fn team_parts(threads: usize) -> usize {
    (threads * PARTS_PER_THREAD).min(team::MAX_PARTS)
}

/// Runs `task(i, chunks[i])` for every chunk on the team; each chunk is written by one part.
fn on_team(chunks: Vec<&mut [f32]>, task: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let chunks: Vec<Mutex<&mut [f32]>> = chunks.into_iter().map(Mutex::new).collect();
    team::for_each_part(chunks.len(), &|i| {
        task(
            i,
            &mut chunks[i].lock().unwrap_or_else(PoisonError::into_inner),
        );
    });
}

/// The two sides of a product `[m, k] x [k, n]`, their lengths checked against the shape.
struct Operands<'a> {
    x: &'a [f32],
    w: &'a [f32],
    shape: [usize; 3],
    weight: Weight,
}

impl<'a> Operands<'a> {
    /// `None` when a length does not match the shape `[m, k, n]`.
    fn new(x: &'a [f32], w: &'a [f32], shape: [usize; 3], weight: Weight) -> Option<Self> {
        let [m, k, n] = shape;
        (x.len() == m * k && w.len() == k * n).then_some(Self {
            x,
            w,
            shape,
            weight,
        })
    }

    /// The product `[m, n]`, split over `threads` threads.
    fn product(&self, threads: usize) -> Vec<f32> {
        match (self.shape[0], self.weight) {
            (1, Weight::InputsByOutputs) => self.one_row_by_inputs(threads),
            _ => self.by_columns(threads),
        }
    }

    /// The product in blocks of output columns: for several rows on rayon's threads (the rest of
    /// a batched step runs there too, where a spinning helper would compete with them for the
    /// cores); for one row (only with `[n, k]` weights: a contiguous block of rows each) on the
    /// team.
    fn by_columns(&self, threads: usize) -> Vec<f32> {
        let [m, k, n] = self.shape;
        let blocks = if m == 1 { team_parts(threads) } else { threads };
        let width = n.div_ceil(blocks).next_multiple_of(COLUMN_ALIGN);
        // Each block is written `[m, its width]` into its own part, then copied into place:
        // blocks of columns are not contiguous in the output (but are for one row).
        let mut parts = vec![0.0f32; m * n];
        let block = |b: usize, part: &mut [f32]| {
            let first = b * width;
            self.block(part, first..first + part.len() / m, 0..k);
        };
        if m == 1 {
            on_team(parts.chunks_mut(width).collect(), &block);
        } else {
            parts
                .par_chunks_mut(m * width)
                .enumerate()
                .for_each(|(b, part)| block(b, part));
        }
        if m == 1 {
            return parts;
        }
        let mut output = vec![0.0f32; m * n];
        for (b, part) in parts.chunks(m * width).enumerate() {
            let block_width = part.len() / m;
            for (r, values) in part.chunks(block_width).enumerate() {
                output[r * n + b * width..][..block_width].copy_from_slice(values);
            }
        }
        output
    }

    /// One row by a `[k, n]` weight on the team: each part takes a block of the weight's rows
    /// (contiguous in memory) and the matching inputs, for a partial sum of the whole output;
    /// the partial sums are then added in part order (so the result does not depend on which
    /// thread ran which part; it does, in the last bits, on the number of threads).
    fn one_row_by_inputs(&self, threads: usize) -> Vec<f32> {
        let [_, k, n] = self.shape;
        let depth = k.div_ceil(team_parts(threads));
        // No part without inputs (5 inputs in 4 parts: depths 2, 2, 1).
        let parts = k.div_ceil(depth);
        let mut partials = vec![0.0f32; parts * n];
        on_team(partials.chunks_mut(n).collect(), &|p, partial| {
            let inputs = p * depth..((p + 1) * depth).min(k);
            self.block(partial, 0..n, inputs);
        });
        let (output, rest) = partials.split_at_mut(n);
        for partial in rest.chunks(n) {
            output.iter_mut().zip(partial).for_each(|(o, p)| *o += p);
        }
        partials.truncate(n);
        partials
    }

    /// Columns `columns` of the product for every row, summed over the inputs `inputs` only
    /// (all of them but in [`Operands::one_row_by_inputs`]), into `part` `[m, columns.len()]`,
    /// by one single-threaded gemm call.
    fn block(&self, part: &mut [f32], columns: Range<usize>, inputs: Range<usize>) {
        let [m, k, n] = self.shape;
        let width = columns.len();
        assert!(part.len() == m * width && columns.end <= n && inputs.end <= k);
        // (column stride, row stride) of the block of `w` as a `[inputs.len(), width]` matrix,
        // and where it starts.
        let (w_cs, w_rs) = match self.weight {
            Weight::InputsByOutputs => (1, n),
            Weight::OutputsByInputs => (k, 1),
        };
        let w_start = columns.start * w_cs + inputs.start * w_rs;
        // SAFETY: the lengths were checked in `new` and above: every element gemm reads lies in
        // `x` (`m` rows of `k`, from column `inputs.start` to `inputs.end`) and in `w` (input
        // `i < k`, output `c < n` at `c w_cs + i w_rs < k n` for either layout), and every
        // element it writes lies in `part`, which this call owns.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                width,
                inputs.len(),
                part.as_mut_ptr(),
                1,
                width as isize,
                false,
                self.x.as_ptr().add(inputs.start),
                1,
                k as isize,
                self.w.as_ptr().add(w_start),
                w_cs as isize,
                w_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{largest_difference, values};

    type Cpu = burn::backend::Flex;
    type Grad = burn::backend::Autodiff<Cpu>;

    fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(f)
    }

    fn tensor<B: Backend>(rows: usize, columns: usize, seed: u32) -> Tensor<B, 2> {
        let data = values(rows * columns, seed)
            .iter()
            .map(|v| v / 20.0)
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(data, [rows, columns]), &Default::default())
    }

    fn list(x: Tensor<Cpu, 2>) -> Vec<f32> {
        x.into_data().to_vec::<f32>().unwrap()
    }

    /// Equal up to rounding: sums taken in another order differ by a few units in the last
    /// place of the largest value.
    fn assert_close(ours: &[f32], burns: &[f32], what: &str) {
        let worst = largest_difference(ours, burns);
        let largest = burns.iter().fold(1.0f32, |a, b| a.max(b.abs()));
        assert!(
            worst <= 2e-6 * largest,
            "{what}: {worst:e} off (largest {largest})"
        );
    }

    #[test]
    fn few_row_products_on_several_threads_equal_burns() {
        // One row and the most, ragged last blocks, fewer inputs than parts, the decode step's
        // shapes (SmolLM2-135M: 576 wide, 192 for keys and values, 1536 in the MLP, 49152
        // logits).
        let shapes = [
            (1, 3, 40),
            (1, 5, 40),
            (1, 576, 1536),
            (1, 1536, 576),
            (1, 70, 130),
            (2, 3, 40),
            (2, 64, 64),
            (3, 70, 130),
            (16, 576, 1536),
            (2, 1536, 576),
            (4, 576, 192),
        ];
        for threads in [2, 3] {
            for (m, k, n) in shapes {
                let (x, w) = (tensor::<Cpu>(m, k, 1), tensor::<Cpu>(k, n, 2));
                // The transposed weight as its own contiguous tensor, as the embedding is.
                let wt =
                    Tensor::<Cpu, 2>::from_data(w.clone().transpose().into_data(), &x.device());
                let burns = list(x.clone().matmul(w.clone()));
                let (ours, ours_transposed) = with_threads(threads, || {
                    let ours = few_rows(&x, &w, Weight::InputsByOutputs).map(list);
                    (ours, few_rows(&x, &wt, Weight::OutputsByInputs).map(list))
                });
                let what = format!("{m}x{k}x{n} on {threads} threads");
                assert_close(&ours.expect("the split path"), &burns, &what);
                assert_close(&ours_transposed.expect("the split path"), &burns, &what);
            }
        }
        for rows in [1, 2] {
            let (x, e) = (tensor::<Cpu>(rows, 576, 3), tensor::<Cpu>(49_152, 576, 4));
            let ours = with_threads(2, || list(matmul_transposed(x.clone(), e.clone())));
            assert_close(&ours, &list(x.matmul(e.transpose())), "logits");
        }
    }

    #[test]
    fn one_thread_many_rows_narrow_weights_and_autodiff_go_to_burn() {
        let (x, w) = (tensor::<Cpu>(2, 8, 1), tensor::<Cpu>(8, 64, 2));
        assert!(with_threads(2, || few_rows(&x, &w, Weight::InputsByOutputs)).is_some());
        assert!(with_threads(1, || few_rows(&x, &w, Weight::InputsByOutputs)).is_none());
        let many = tensor::<Cpu>(SPLIT_ROWS.end() + 1, 8, 3);
        assert!(with_threads(2, || few_rows(&many, &w, Weight::InputsByOutputs)).is_none());
        let one = tensor::<Cpu>(1, 8, 11);
        assert!(with_threads(2, || few_rows(&one, &w, Weight::InputsByOutputs)).is_some());
        assert!(with_threads(1, || few_rows(&one, &w, Weight::InputsByOutputs)).is_none());
        let narrow = tensor::<Cpu>(8, 2 * COLUMN_ALIGN - 1, 4);
        assert!(with_threads(2, || few_rows(&x, &narrow, Weight::InputsByOutputs)).is_none());
        let (xg, wg) = (tensor::<Grad>(2, 8, 5), tensor::<Grad>(8, 64, 6));
        assert!(with_threads(2, || few_rows(&xg, &wg, Weight::InputsByOutputs)).is_none());
        // And the public functions give burn's values on every path.
        for (x, w) in [(x, w.clone()), (one, w.clone()), (many, w)] {
            let burns = list(x.clone().matmul(w.clone()));
            for threads in [1, 2] {
                let ours = with_threads(threads, || list(matmul(x.clone(), w.clone())));
                assert_close(&ours, &burns, "matmul");
            }
        }
    }

    #[test]
    fn a_split_product_is_the_same_bits_every_time() {
        // Whichever thread runs which part, partial sums are added in part order: sampling
        // and greedy decoding are reproducible for a given thread count (the parts, and so
        // the last bits, follow the number of threads).
        let (x, w) = (tensor::<Cpu>(1, 576, 16), tensor::<Cpu>(576, 1536, 17));
        let first = with_threads(2, || list(matmul(x.clone(), w.clone())));
        for _ in 0..20 {
            assert_eq!(
                with_threads(2, || list(matmul(x.clone(), w.clone()))),
                first
            );
        }
    }

    #[test]
    fn a_strided_view_is_read_in_its_logical_order() {
        let w = tensor::<Cpu>(8, 40, 7);
        let view = tensor::<Cpu>(8, 3, 8).transpose();
        let ours = with_threads(2, || list(matmul(view.clone(), w.clone())));
        assert_close(&ours, &list(view.matmul(w)), "a transposed view");
    }

    #[test]
    fn under_autodiff_the_gradient_is_burns() {
        let x = tensor::<Grad>(2, 8, 9).require_grad();
        let w = tensor::<Grad>(8, 40, 10);
        let gradient = |y: Tensor<Grad, 2>| {
            let grads = (y.clone() * y).sum().backward();
            x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
        };
        let ours = with_threads(2, || gradient(matmul(x.clone(), w.clone())));
        assert!(
            ours.iter().any(|g| g.abs() > 1e-4),
            "the gradient reached x"
        );
        assert_eq!(ours, gradient(x.clone().matmul(w)));
    }
}
