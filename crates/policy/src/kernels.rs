//! Vectorised softmax and SiLU for inference on the CPU backend.
//!
//! burn-flex 0.21 computes `exp` one element at a time through libm, in its softmax and in
//! every unary op; in an evaluation on one core that was 18% of all cycles for attention's
//! softmax and 4% for the MLP's SiLU (`perf` of `coe eval`, policy README). Here `exp` is a
//! branch-free polynomial (Cephes' `expf`: range reduction by ln 2, a degree-5 polynomial,
//! relative error below 2e-7) in loops the compiler vectorises, compiled for the CPU's widest
//! instructions at run time through `pulp` (already built for gemm), and rows are split over
//! rayon's threads as burn-flex does.
//!
//! [`softmax_last`] and [`silu`] take this path only for burn-flex tensors of `f32`, that is for
//! inference: under autodiff (training), on the GPU or for other element types they are burn's
//! own ops, so gradients never go through a kernel that has none.

use std::any::Any;

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::{TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `softmax` over the last dimension.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let width = x.dims()[D - 1];
    map_cpu_f32(&x, |input, output| softmax_rows(input, output, width))
        .unwrap_or_else(|| activation::softmax(x, D - 1))
}

/// `x * sigmoid(x)`, element by element.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    map_cpu_f32(&x, silu_slice).unwrap_or_else(|| activation::silu(x))
}

/// `kernel(input, output)` over `x`'s values in row-major order when `x` is a burn-flex `f32`
/// tensor (not one under autodiff), as a new tensor of `x`'s shape; `None` otherwise.
fn map_cpu_f32<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    kernel: impl FnOnce(&[f32], &mut [f32]),
) -> Option<Tensor<B, D>> {
    let TensorPrimitive::Float(primitive) = x.clone().into_primitive() else {
        return None;
    };
    let flex = (&primitive as &dyn Any).downcast_ref::<FlexTensor>()?;
    let contiguous = flex.to_contiguous();
    let input = contiguous.as_slice::<f32>()?;
    let mut output = vec![0.0f32; input.len()];
    kernel(input, &mut output);
    Some(Tensor::from_data(
        TensorData::new(output, x.shape()),
        &x.device(),
    ))
}

/// Values per rayon task: below this a row block is not worth a thread.
const PARALLEL_CHUNK: usize = 1 << 15;

/// Softmax of each `width`-long row of `input` into `output`.
pub(crate) fn softmax_rows(input: &[f32], output: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    let rows_per_task = (PARALLEL_CHUNK / width).max(1);
    let run = |input: &[f32], output: &mut [f32]| {
        pulp::Arch::new().dispatch(SoftmaxRows {
            input,
            output,
            width,
        })
    };
    if input.len() <= PARALLEL_CHUNK {
        run(input, output);
    } else {
        input
            .par_chunks(rows_per_task * width)
            .zip(output.par_chunks_mut(rows_per_task * width))
            .for_each(|(input, output)| run(input, output));
    }
}

/// SiLU of each value of `input` into `output`.
pub(crate) fn silu_slice(input: &[f32], output: &mut [f32]) {
    let run =
        |input: &[f32], output: &mut [f32]| pulp::Arch::new().dispatch(Silu { input, output });
    if input.len() <= PARALLEL_CHUNK {
        run(input, output);
    } else {
        input
            .par_chunks(PARALLEL_CHUNK)
            .zip(output.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|(input, output)| run(input, output));
    }
}

// The kernels as `pulp::WithSimd` operations: pulp calls `with_simd` inside a function compiled
// for the CPU it found (AVX-512, AVX2, ...), and everything below is inlined into it, so the
// loops are vectorised for that CPU. (A closure passed to `dispatch` was not inlined, and so
// compiled for the baseline x86-64 only.)

struct SoftmaxRows<'a> {
    input: &'a [f32],
    output: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let rows = self.input.chunks_exact(self.width);
        for (row, out) in rows.zip(self.output.chunks_exact_mut(self.width)) {
            softmax_row(row, out);
        }
    }
}

struct Silu<'a> {
    input: &'a [f32],
    output: &'a mut [f32],
}

impl pulp::WithSimd for Silu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (out, &x) in self.output.iter_mut().zip(self.input) {
            *out = x / (1.0 + exp(-x));
        }
    }
}

#[inline(always)]
fn softmax_row(row: &[f32], out: &mut [f32]) {
    let max = reduce(row, f32::NEG_INFINITY, f32::max);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = exp(x - max);
    }
    let inverse = 1.0 / reduce(out, 0.0, |a, b| a + b);
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

/// Lanes of the reductions: 16 independent accumulators let the compiler keep them in one
/// AVX-512 register (or two AVX2 ones) instead of a serial chain.
const LANES: usize = 16;

/// `values` folded by `op` from `init`, lane by lane, then across lanes.
#[inline(always)]
fn reduce(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, v);
        }
    }
    lanes.iter().chain(rest).fold(init, |acc, &v| op(acc, v))
}

// Cephes `expf`: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two so
// that n ln 2 is exact to f32), exp(r) = 1 + r + r^2 P(r) on |r| <= ln 2 / 2.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Below this exp is taken as 0 (exp(-87) ~ 1.6e-38, near the smallest normal f32).
const EXP_MIN: f32 = -87.0;
/// Above this exp is clamped (2^127 is the largest power of two an f32 holds).
const EXP_MAX: f32 = 88.0;

/// `e^x` within 2e-7 relative for `x` in [-87, 88], 0 below, `e^88` above.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let clamped = x.clamp(EXP_MIN, EXP_MAX);
    let n = (clamped * LOG2E + 0.5).floor();
    let r = clamped - n * LN2_HIGH - n * LN2_LOW;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // 2^n built in the exponent field; n is in [-126, 127] after the clamp.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_MIN { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cpu = burn::backend::Flex;
    type Grad = burn::backend::Autodiff<Cpu>;

    #[test]
    fn exp_is_within_two_parts_in_ten_million_and_zero_for_minus_infinity() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = f64::from(x).exp();
            let relative = ((f64::from(exp(x)) - exact) / exact).abs();
            worst = worst.max(relative);
            x += 0.000_7;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic values of both signs and several magnitudes.
        (0..n)
            .map(|i| {
                let t = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as f32;
                (t / u32::MAX as f32 - 0.5) * 40.0
            })
            .collect()
    }

    #[test]
    fn softmax_and_silu_equal_burns_on_the_cpu_backend() {
        let device = Default::default();
        // Narrow and wide rows, one row past the parallel threshold, a masked entry.
        for (rows, width) in [(3, 5), (7, 130), (40, 1_000), (2, 40_000)] {
            let mut data = values(rows * width, width as u32);
            data[width / 2] = f32::NEG_INFINITY;
            let x = Tensor::<Cpu, 2>::from_data(TensorData::new(data, [rows, width]), &device);
            let fast = softmax_last(x.clone()).into_data().to_vec::<f32>().unwrap();
            let burn = activation::softmax(x.clone(), 1)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let worst = fast
                .iter()
                .zip(&burn)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-6, "softmax {rows}x{width}: {worst:e}");
            assert_eq!(fast[width / 2], 0.0);
            for row in fast.chunks(width) {
                let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
                assert!((sum - 1.0).abs() < 1e-5, "a row sums to {sum}");
            }
            let fast = silu(x.clone()).into_data().to_vec::<f32>().unwrap();
            let burn = activation::silu(x).into_data().to_vec::<f32>().unwrap();
            // (SiLU of the -inf entry: burn's is NaN, this one's -inf; neither arises.)
            for (a, b) in fast.iter().zip(&burn).filter(|(_, b)| b.is_finite()) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "silu {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_strided_view_is_read_in_its_logical_order() {
        let device = Default::default();
        let x = Tensor::<Cpu, 2>::from_data(TensorData::new(values(6 * 9, 3), [6, 9]), &device);
        let view = x.swap_dims(0, 1).narrow(0, 2, 5);
        let fast = softmax_last(view.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let burn = activation::softmax(view, 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (a, b) in fast.iter().zip(&burn) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn under_autodiff_the_gradient_is_burns() {
        let device = Default::default();
        let data = TensorData::new(values(4 * 11, 7), [4, 11]);
        let weights =
            Tensor::<Grad, 2>::from_data(TensorData::new(values(4 * 11, 9), [4, 11]), &device);
        let gradient = |f: fn(Tensor<Grad, 2>) -> Tensor<Grad, 2>| {
            let x = Tensor::<Grad, 2>::from_data(data.clone(), &device).require_grad();
            let grads = (f(x.clone()) * weights.clone()).sum().backward();
            x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
        };
        let ours = gradient(softmax_last);
        let theirs = gradient(|x| activation::softmax(x, 1));
        assert!(
            ours.iter().any(|g| g.abs() > 1e-4),
            "the gradient reached the input"
        );
        assert_eq!(ours, theirs);
        assert_eq!(gradient(silu), gradient(activation::silu));
    }
}
