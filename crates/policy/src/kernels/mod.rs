//! Vectorised softmax and SiLU, and few-row products on every core ([`products`]), for
//! inference on the CPU backend.
//!
//! burn-flex 0.21 computes `exp` one element at a time through libm, in its softmax and in
//! every unary op; in an evaluation on one core that was 18% of all cycles for attention's
//! softmax and 4% for the MLP's SiLU (`perf` of `coe eval`, policy README). Here `exp` is a
//! branch-free polynomial (Cephes' `expf`: range reduction by ln 2, a degree-5 polynomial,
//! relative error below 2e-7) in loops the compiler vectorises, compiled for the CPU's widest
//! instructions at run time through `pulp` (already built for gemm), and rows are split over
//! rayon's threads as burn-flex does.
//!
//! [`softmax_last`], [`softmax_joined`], [`silu`] and the products take this path only for burn-flex tensors of
//! `f32`, that is for inference: under autodiff (training), on the GPU or for other element
//! types they are burn's own ops (for `softmax_joined`: join, softmax, split), so gradients never
//! go through a kernel that has none.

use std::any::Any;

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod products;
mod team;

pub(crate) use products::{matmul, matmul_transposed};

/// `softmax` over the last dimension.
pub(crate) fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let width = x.dims()[D - 1];
    if let Some(input) = cpu_f32(&x)
        && let Some(values) = input.as_slice::<f32>()
    {
        let mut output = vec![0.0f32; values.len()];
        softmax_rows([values, &[]], [&mut output, &mut []], [width, 0]);
        return from_values(output, x.shape(), &x.device());
    }
    activation::softmax(x, D - 1)
}

/// `softmax` over the last dimension of `first` and `second` joined along it, in two parts of
/// their shapes: attention over keys held in two blocks (a cache's bulk and tail, a block's
/// earlier positions and its own). On the CPU backend the blocks' scores are never copied into
/// one tensor nor the weights back out of it; elsewhere it is join, softmax, split. Their other
/// dimensions must be equal (as for joining them).
pub(crate) fn softmax_joined<B: Backend, const D: usize>(
    first: Tensor<B, D>,
    second: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let widths = [first.dims()[D - 1], second.dims()[D - 1]];
    // An empty part takes no weight (and burn cannot narrow to nothing).
    if widths[1] == 0 {
        return (softmax_last(first), second);
    }
    if widths[0] == 0 {
        return (first, softmax_last(second));
    }
    let cpu = cpu_f32(&first).zip(cpu_f32(&second));
    if let Some((a, b)) = cpu
        && let (Some(a), Some(b)) = (a.as_slice::<f32>(), b.as_slice::<f32>())
        && first.dims()[..D - 1] == second.dims()[..D - 1]
    {
        let (mut out_a, mut out_b) = (vec![0.0f32; a.len()], vec![0.0f32; b.len()]);
        softmax_rows([a, b], [&mut out_a, &mut out_b], widths);
        return (
            from_values(out_a, first.shape(), &first.device()),
            from_values(out_b, second.shape(), &second.device()),
        );
    }
    let joined = activation::softmax(Tensor::cat(vec![first, second], D - 1), D - 1);
    (
        joined.clone().narrow(D - 1, 0, widths[0]),
        joined.narrow(D - 1, widths[0], widths[1]),
    )
}

/// `x * sigmoid(x)`, element by element.
pub(crate) fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(input) = cpu_f32(&x)
        && let Some(values) = input.as_slice::<f32>()
    {
        let mut output = vec![0.0f32; values.len()];
        silu_slice(values, &mut output);
        return from_values(output, x.shape(), &x.device());
    }
    activation::silu(x)
}

/// `x` as a contiguous burn-flex tensor when it is one of `f32` (not under autodiff);
/// `None` otherwise.
fn cpu_f32<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<FlexTensor> {
    let TensorPrimitive::Float(primitive) = x.clone().into_primitive() else {
        return None;
    };
    let flex = (&primitive as &dyn Any).downcast_ref::<FlexTensor>()?;
    (flex.dtype() == DType::F32).then(|| flex.to_contiguous())
}

/// A tensor of `shape` on `device` holding `values` as `f32` (whatever the device's default
/// float type).
fn from_values<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: impl Into<Shape>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// Values per rayon task: below this a row block is not worth a thread.
const PARALLEL_CHUNK: usize = 1 << 15;

/// Softmax of each row formed by joining row `r` of `inputs[0]` (`widths[0]` long) and row `r`
/// of `inputs[1]` (`widths[1]`, possibly 0), into `outputs` of the same shapes. Parts whose
/// lengths are not whole rows of the same count are left alone (callers pass whole tensors).
fn softmax_rows(inputs: [&[f32]; 2], outputs: [&mut [f32]; 2], widths: [usize; 2]) {
    let row = widths[0] + widths[1];
    let rows = inputs[0].len().checked_div(widths[0]).unwrap_or(0);
    let whole = |part: usize, len: usize| rows * widths[part] == len;
    if rows == 0
        || !whole(0, inputs[0].len())
        || !whole(1, inputs[1].len())
        || !whole(0, outputs[0].len())
        || !whole(1, outputs[1].len())
    {
        return;
    }
    let rows_per_task = (PARALLEL_CHUNK / row).max(1);
    // Blocks of whole rows, each part cut at the same rows.
    let mut blocks = Vec::with_capacity(rows.div_ceil(rows_per_task));
    let ([mut in_a, mut in_b], [mut out_a, mut out_b]) = (inputs, outputs);
    for start in (0..rows).step_by(rows_per_task) {
        let take = rows_per_task.min(rows - start);
        let (a, rest_a) = in_a.split_at(take * widths[0]);
        let (b, rest_b) = in_b.split_at(take * widths[1]);
        let (oa, rest_oa) = std::mem::take(&mut out_a).split_at_mut(take * widths[0]);
        let (ob, rest_ob) = std::mem::take(&mut out_b).split_at_mut(take * widths[1]);
        blocks.push(SoftmaxRows {
            inputs: [a, b],
            outputs: [oa, ob],
            widths,
        });
        (in_a, in_b, out_a, out_b) = (rest_a, rest_b, rest_oa, rest_ob);
    }
    if blocks.len() == 1 {
        blocks
            .into_iter()
            .for_each(|b| pulp::Arch::new().dispatch(b));
    } else {
        blocks
            .into_par_iter()
            .for_each(|b| pulp::Arch::new().dispatch(b));
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
    inputs: [&'a [f32]; 2],
    outputs: [&'a mut [f32]; 2],
    widths: [usize; 2],
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let [wa, wb] = self.widths;
        let [a, b] = self.inputs;
        let [oa, ob] = self.outputs;
        for r in 0..a.len() / wa {
            softmax_row(
                [&a[r * wa..(r + 1) * wa], &b[r * wb..(r + 1) * wb]],
                [&mut oa[r * wa..(r + 1) * wa], &mut ob[r * wb..(r + 1) * wb]],
            );
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
        // x sigmoid(x) with e^-|x|, which never overflows: for x < 0, x e^x / (1 + e^x).
        for (out, &x) in self.output.iter_mut().zip(self.input) {
            let e = exp(-x.abs());
            *out = if x >= 0.0 { x } else { x * e } / (1.0 + e);
        }
    }
}

/// Softmax of one row given in two parts.
#[inline(always)]
fn softmax_row([a, b]: [&[f32]; 2], [oa, ob]: [&mut [f32]; 2]) {
    let max = reduce(a, f32::NEG_INFINITY, f32::max).max(reduce(b, f32::NEG_INFINITY, f32::max));
    // One loop per part: a chained iterator would not be vectorised.
    for (o, &x) in oa.iter_mut().zip(a) {
        *o = exp(x - max);
    }
    for (o, &x) in ob.iter_mut().zip(b) {
        *o = exp(x - max);
    }
    let inverse = 1.0 / (reduce(oa, 0.0, |x, y| x + y) + reduce(ob, 0.0, |x, y| x + y));
    for o in oa.iter_mut() {
        *o *= inverse;
    }
    for o in ob.iter_mut() {
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
// 355/512: few enough bits that n * LN2_HIGH is exact for every n the clamp allows.
const LN2_HIGH: f32 = 355.0 / 512.0;
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

    /// The largest absolute difference between two equally long lists of values.
    pub(super) fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    pub(super) fn values(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic values of both signs and several magnitudes.
        (0..n)
            .map(|i| {
                let t = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as f32;
                (t / u32::MAX as f32 - 0.5) * 40.0
            })
            .collect()
    }

    #[test]
    fn the_vectorised_path_is_taken_on_the_cpu_backend_only() {
        let device = Default::default();
        let data = TensorData::new(values(12, 1), [3, 4]);
        assert!(cpu_f32(&Tensor::<Cpu, 2>::from_data(data.clone(), &device)).is_some());
        assert!(cpu_f32(&Tensor::<Grad, 2>::from_data(data, &device)).is_none());
    }

    #[test]
    fn silu_of_large_values_is_their_limit() {
        let device = Default::default();
        let x = Tensor::<Cpu, 1>::from_floats([-3.0e38, -1.0e4, -100.0, 100.0, 1.0e4], &device);
        let y = silu(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(&y[..2], &[0.0, 0.0]);
        assert!(y[2].abs() < 1e-40);
        assert_eq!(&y[3..], &[100.0, 1.0e4]);
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
            let worst = largest_difference(&fast, &burn);
            assert!(worst < 1e-6, "softmax {rows}x{width}: {worst:e}");
            assert_eq!(fast[width / 2], 0.0);
            for row in fast.chunks(width) {
                let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
                assert!((sum - 1.0).abs() < 1e-5, "a row sums to {sum}");
            }
            let fast = silu(x.clone()).into_data().to_vec::<f32>().unwrap();
            let burn = activation::silu(x).into_data().to_vec::<f32>().unwrap();
            // (SiLU of the -inf entry is NaN, here as in burn.)
            for (a, b) in fast.iter().zip(&burn).filter(|(_, b)| b.is_finite()) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "silu {a} vs {b}");
            }
        }
    }

    #[test]
    fn softmax_joined_equals_the_softmax_of_the_joined_scores() {
        let device = Default::default();
        for (rows, widths) in [(3, [5, 2]), (9, [130, 64]), (50, [1_000, 70]), (2, [1, 1])] {
            let part = |w: usize, seed| {
                Tensor::<Cpu, 3>::from_data(
                    TensorData::new(values(rows * w, seed), [1, rows, w]),
                    &device,
                )
            };
            let (a, b) = (part(widths[0], 1), part(widths[1], 2));
            // Masked entries in the second part, as in causal attention's own block.
            let mask = Tensor::<Cpu, 3>::from_data(
                TensorData::new(
                    (0..rows * widths[1])
                        .map(|i| if i % 3 == 1 { f32::NEG_INFINITY } else { 0.0 })
                        .collect::<Vec<f32>>(),
                    [1, rows, widths[1]],
                ),
                &device,
            );
            let b = b + mask;
            // The first part read through a view (every other row of a wider tensor).
            let a = Tensor::cat(vec![a.clone(), a], 2)
                .reshape([1, rows * 2, widths[0]])
                .narrow(1, 0, rows);
            let (fast_a, fast_b) = softmax_joined(a.clone(), b.clone());
            let joined = activation::softmax(Tensor::cat(vec![a, b], 2), 2);
            let expected = [
                joined.clone().narrow(2, 0, widths[0]),
                joined.narrow(2, widths[0], widths[1]),
            ];
            for (fast, expected) in [fast_a, fast_b].into_iter().zip(expected) {
                assert_eq!(fast.dims(), expected.dims());
                let fast = fast.into_data().to_vec::<f32>().unwrap();
                let expected = expected.into_data().to_vec::<f32>().unwrap();
                let worst = largest_difference(&fast, &expected);
                assert!(worst < 1e-6, "{rows} rows of {widths:?}: {worst:e}");
            }
        }
    }

    #[test]
    fn an_empty_part_takes_no_weight() {
        let device = Default::default();
        let a = Tensor::<Cpu, 2>::from_data(TensorData::new(values(12, 4), [3, 4]), &device);
        let empty = Tensor::<Cpu, 2>::empty([3, 0], &device);
        let expected = activation::softmax(a.clone(), 1).into_data();
        let (weights, rest) = softmax_joined(a.clone(), empty.clone());
        weights
            .into_data()
            .assert_approx_eq::<f32>(&expected, Default::default());
        assert_eq!(rest.dims(), [3, 0]);
        let (rest, weights) = softmax_joined(empty, a);
        weights
            .into_data()
            .assert_approx_eq::<f32>(&expected, Default::default());
        assert_eq!(rest.dims(), [3, 0]);
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
        assert!(largest_difference(&fast, &burn) < 1e-6);
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
        let joined = gradient(|x| {
            let (a, b) = softmax_joined(x.clone().narrow(1, 0, 6), x.narrow(1, 6, 5));
            Tensor::cat(vec![a, b], 1)
        });
        assert_eq!(joined, theirs);
    }
}
