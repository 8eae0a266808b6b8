//! Products of a few rows by a large matrix on every core: the projections and logits of a
//! batched decode step (one row per live episode).
//!
//! burn-flex runs a product below 192^3 multiply-adds (every projection of a decode step) on one
//! thread. Here the weight's output columns are cut into one block per thread, and each thread
//! runs gemm (single-threaded, its own AVX-512/AVX2 kernels) on its block for all rows. Nothing
//! here computes: the split is the whole change, and gemm is the crate burn-flex already uses.
//!
//! Measured (`policy-bench`, alternated with the build before, nothing else running; benches
//! README): aggregate decode at batch 4 / 8 / 16 1.20x / 1.05x / 1.03x. A single row stays on
//! burn's path: split, its products (20-60 us each, 211 a token) wait for a woken rayon thread
//! each time, and single-stream decode fell from 35.5 to 24.4 tokens/s.

use burn::prelude::*;
use rayon::prelude::*;

use super::{cpu_f32, from_values};

/// The rows a product must have to be split by columns: at least two (see the module docs), at
/// most a batched decode step's (prefill's packed observations have hundreds of rows, where
/// burn-flex's gemm call already uses every core).
const SPLIT_ROWS: std::ops::RangeInclusive<usize> = 2..=16;

/// Block widths are multiples of this, so that blocks start on whole vectors (16 `f32` in an
/// AVX-512 register) and cache lines.
const COLUMN_ALIGN: usize = 16;

/// How the weight is stored.
#[derive(Clone, Copy)]
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

    /// The product `[m, n]`, in `threads` blocks of columns at once.
    fn product(&self, threads: usize) -> Vec<f32> {
        let [m, _, n] = self.shape;
        let width = n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN);
        // Each block is written `[m, its width]` into its own part, then copied into place:
        // blocks of columns are not contiguous in the output.
        let mut parts = vec![0.0f32; m * n];
        parts
            .par_chunks_mut(m * width)
            .enumerate()
            .for_each(|(b, part)| {
                let first = b * width;
                self.block(part, first..first + part.len() / m)
            });
        let mut output = vec![0.0f32; m * n];
        for (b, part) in parts.chunks(m * width).enumerate() {
            let block_width = part.len() / m;
            for (r, values) in part.chunks(block_width).enumerate() {
                output[r * n + b * width..][..block_width].copy_from_slice(values);
            }
        }
        output
    }

    /// Columns `columns` of the product for every row, into `part` `[m, columns.len()]`, by one
    /// single-threaded gemm call.
    fn block(&self, part: &mut [f32], columns: std::ops::Range<usize>) {
        let [m, k, n] = self.shape;
        let width = columns.len();
        assert!(part.len() == m * width && columns.end <= n);
        // (column stride, row stride) of the block of `w` as a `[k, width]` matrix.
        let (w_start, w_cs, w_rs) = match self.weight {
            Weight::InputsByOutputs => (columns.start, 1, n),
            Weight::OutputsByInputs => (columns.start * k, k, 1),
        };
        // SAFETY: the lengths were checked in `new` and above: every element gemm reads lies in
        // `x` (`m` rows of `k`) and in `w` (row `i < k`, column `c < n` at `w_start + c w_cs +
        // i w_rs < k n` for either layout), and every element it writes lies in `part`, which
        // this call owns.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                width,
                k,
                part.as_mut_ptr(),
                1,
                width as isize,
                false,
                self.x.as_ptr(),
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
        // One row and the most, ragged last blocks, the decode step's shapes (SmolLM2-135M:
        // 576 wide, 192 for keys and values, 1536 in the MLP, 49152 logits).
        let shapes = [
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
        let (x, e) = (tensor::<Cpu>(2, 576, 3), tensor::<Cpu>(49_152, 576, 4));
        let ours = with_threads(2, || list(matmul_transposed(x.clone(), e.clone())));
        assert_close(&ours, &list(x.matmul(e.transpose())), "logits");
    }

    #[test]
    fn one_thread_one_row_many_rows_narrow_weights_and_autodiff_go_to_burn() {
        let (x, w) = (tensor::<Cpu>(2, 8, 1), tensor::<Cpu>(8, 64, 2));
        assert!(with_threads(2, || few_rows(&x, &w, Weight::InputsByOutputs)).is_some());
        assert!(with_threads(1, || few_rows(&x, &w, Weight::InputsByOutputs)).is_none());
        let many = tensor::<Cpu>(SPLIT_ROWS.end() + 1, 8, 3);
        assert!(with_threads(2, || few_rows(&many, &w, Weight::InputsByOutputs)).is_none());
        let one = tensor::<Cpu>(1, 8, 11);
        assert!(with_threads(2, || few_rows(&one, &w, Weight::InputsByOutputs)).is_none());
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
