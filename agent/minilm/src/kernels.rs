//! The numeric pieces of the forward pass, generic over the SIMD instruction set [`pulp`] picks at run time
//! (AVX2 + FMA on the machines this runs on, SSE or scalar elsewhere). Every function is `#[inline(always)]`
//! so it is compiled into the one dispatched function that runs the whole pass, with its instruction set.

use pulp::Simd;

/// A dense layer: `y = x W^T + b`, with `W` as PyTorch stores it (one row of `inputs` weights per output)
/// but rounded to bfloat16 and packed two to a word, so the 42 MB of f32 encoder weights take 21 MB and fit
/// in a server's L3 cache: with few tokens, reading the weights is most of the work. Word `k` of a row holds
/// weight `k` in its low half and weight `k + inputs/2` in its high half, so unpacking a row is one shift
/// (low halves) and one mask (high halves) per SIMD word, with no shuffles.
#[derive(Debug)]
pub(crate) struct Linear {
    /// `outputs` rows of `inputs / 2` packed words.
    packed: Vec<u32>,
    /// One bias per output.
    bias: Vec<f32>,
    /// Width of an input row (even).
    inputs: usize,
    /// Width of an output row.
    outputs: usize,
}

/// Bytes of input rows kept together while every weight row streams past them: small enough to stay in the
/// L2 cache, so the weights (the large operand) are read from memory once per tile rather than once per row.
const TILE_BYTES: usize = 96 * 1024;

/// `value` rounded to the nearest bfloat16 (ties to even), as the top 16 bits of an f32.
fn bf16_bits(value: f32) -> u32 {
    let bits = value.to_bits();
    bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16
}

impl Linear {
    /// A layer of `outputs` rows of `inputs` weights (`weight.len() == inputs * outputs`), or `None` when
    /// `inputs` is odd or the lengths disagree.
    pub(crate) fn new(
        weight: &[f32],
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
    ) -> Option<Self> {
        if !inputs.is_multiple_of(2) || weight.len() != inputs * outputs || bias.len() != outputs {
            return None;
        }
        let half = inputs / 2;
        let packed = weight
            .chunks_exact(inputs)
            .flat_map(|row| {
                (0..half).map(move |k| bf16_bits(row[k]) | (bf16_bits(row[k + half]) << 16))
            })
            .collect();
        Some(Self {
            packed,
            bias,
            inputs,
            outputs,
        })
    }

    /// The f32 weights of row `j`, written into `out` (`inputs` long).
    #[inline(always)]
    fn unpack_row<S: Simd>(&self, simd: S, j: usize, out: &mut [f32]) {
        let half = self.inputs / 2;
        let words = &self.packed[j * half..(j + 1) * half];
        let (low, high) = out.split_at_mut(half);
        let (words, word_tail) = S::as_simd_u32s(words);
        let (low, low_tail) = S::as_mut_simd_f32s(low);
        let (high, high_tail) = S::as_mut_simd_f32s(high);
        let sixteen = simd.splat_u32s(16);
        let top = simd.splat_u32s(0xFFFF_0000);
        for ((&word, low), high) in words.iter().zip(low).zip(high) {
            *low = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(word, sixteen));
            *high = simd.transmute_f32s_u32s(simd.and_u32s(word, top));
        }
        for ((&word, low), high) in word_tail.iter().zip(low_tail).zip(high_tail) {
            *low = f32::from_bits(word << 16);
            *high = f32::from_bits(word & 0xFFFF_0000);
        }
    }

    /// `out[t] = x[t] W^T + b` for the `x.len() / inputs` rows of `x`.
    ///
    /// Few-token inputs make this a matrix-vector product bound by reading the weights, so each pair of
    /// weight rows is unpacked once per tile of input rows (into `scratch`, `2 * inputs` long, which stays in
    /// L1) and multiplied with up to four input rows at once (eight independent accumulators, enough to keep
    /// two FMA units busy).
    #[inline(always)]
    pub(crate) fn forward<S: Simd>(
        &self,
        simd: S,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (inputs, outputs) = (self.inputs, self.outputs);
        let rows = x.len() / inputs;
        debug_assert_eq!(x.len(), rows * inputs);
        debug_assert_eq!(out.len(), rows * outputs);
        let (w0, w1) = scratch[..2 * inputs].split_at_mut(inputs);
        let tile = (TILE_BYTES / (inputs * 4)).max(4);
        let mut first = 0;
        while first < rows {
            let last = (first + tile).min(rows);
            let mut j = 0;
            while j + 2 <= outputs {
                self.unpack_row(simd, j, w0);
                self.unpack_row(simd, j + 1, w1);
                let mut t = first;
                while t + 4 <= last {
                    let xs = |r: usize| &x[r * inputs..(r + 1) * inputs];
                    let d = dot_2x4(simd, w0, w1, [xs(t), xs(t + 1), xs(t + 2), xs(t + 3)]);
                    for (r, [d0, d1]) in d.into_iter().enumerate() {
                        out[(t + r) * outputs + j] = d0 + self.bias[j];
                        out[(t + r) * outputs + j + 1] = d1 + self.bias[j + 1];
                    }
                    t += 4;
                }
                while t < last {
                    let row = &x[t * inputs..(t + 1) * inputs];
                    out[t * outputs + j] = dot(simd, w0, row) + self.bias[j];
                    out[t * outputs + j + 1] = dot(simd, w1, row) + self.bias[j + 1];
                    t += 1;
                }
                j += 2;
            }
            if j < outputs {
                self.unpack_row(simd, j, w0);
                for t in first..last {
                    out[t * outputs + j] =
                        dot(simd, w0, &x[t * inputs..(t + 1) * inputs]) + self.bias[j];
                }
            }
            first = last;
        }
    }
}

/// The dot products of two weight rows with four input rows, all of one length: `[[w0.x0, w1.x0], ...]`.
#[inline(always)]
fn dot_2x4<S: Simd>(simd: S, w0: &[f32], w1: &[f32], x: [&[f32]; 4]) -> [[f32; 2]; 4] {
    let (w0v, w0t) = S::as_simd_f32s(w0);
    let (w1v, w1t) = S::as_simd_f32s(w1);
    let (x0v, x0t) = S::as_simd_f32s(x[0]);
    let (x1v, x1t) = S::as_simd_f32s(x[1]);
    let (x2v, x2t) = S::as_simd_f32s(x[2]);
    let (x3v, x3t) = S::as_simd_f32s(x[3]);
    let zero = simd.splat_f32s(0.0);
    let (mut a00, mut a01, mut a10, mut a11) = (zero, zero, zero, zero);
    let (mut a20, mut a21, mut a30, mut a31) = (zero, zero, zero, zero);
    for (((((&a, &b), &p0), &p1), &p2), &p3) in
        w0v.iter().zip(w1v).zip(x0v).zip(x1v).zip(x2v).zip(x3v)
    {
        a00 = simd.mul_add_f32s(a, p0, a00);
        a01 = simd.mul_add_f32s(b, p0, a01);
        a10 = simd.mul_add_f32s(a, p1, a10);
        a11 = simd.mul_add_f32s(b, p1, a11);
        a20 = simd.mul_add_f32s(a, p2, a20);
        a21 = simd.mul_add_f32s(b, p2, a21);
        a30 = simd.mul_add_f32s(a, p3, a30);
        a31 = simd.mul_add_f32s(b, p3, a31);
    }
    let tail = |w: &[f32], x: &[f32]| -> f32 { w.iter().zip(x).map(|(a, b)| a * b).sum() };
    [
        [
            simd.reduce_sum_f32s(a00) + tail(w0t, x0t),
            simd.reduce_sum_f32s(a01) + tail(w1t, x0t),
        ],
        [
            simd.reduce_sum_f32s(a10) + tail(w0t, x1t),
            simd.reduce_sum_f32s(a11) + tail(w1t, x1t),
        ],
        [
            simd.reduce_sum_f32s(a20) + tail(w0t, x2t),
            simd.reduce_sum_f32s(a21) + tail(w1t, x2t),
        ],
        [
            simd.reduce_sum_f32s(a30) + tail(w0t, x3t),
            simd.reduce_sum_f32s(a31) + tail(w1t, x3t),
        ],
    ]
}

/// The dot product of two slices of one length.
#[inline(always)]
pub(crate) fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (av, at) = S::as_simd_f32s(a);
    let (bv, bt) = S::as_simd_f32s(b);
    let zero = simd.splat_f32s(0.0);
    // Two accumulators: one FMA's latency is hidden behind the other's.
    let (mut s0, mut s1) = (zero, zero);
    let mut pairs = av.chunks_exact(2).zip(bv.chunks_exact(2));
    for (a, b) in &mut pairs {
        s0 = simd.mul_add_f32s(a[0], b[0], s0);
        s1 = simd.mul_add_f32s(a[1], b[1], s1);
    }
    if av.len() % 2 == 1 {
        s0 = simd.mul_add_f32s(av[av.len() - 1], bv[bv.len() - 1], s0);
    }
    let tail: f32 = at.iter().zip(bt).map(|(a, b)| a * b).sum();
    simd.reduce_sum_f32s(simd.add_f32s(s0, s1)) + tail
}

/// `y += alpha * x`.
#[inline(always)]
pub(crate) fn axpy<S: Simd>(simd: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let (xv, xt) = S::as_simd_f32s(x);
    let (yv, yt) = S::as_mut_simd_f32s(y);
    let a = simd.splat_f32s(alpha);
    for (y, &x) in yv.iter_mut().zip(xv) {
        *y = simd.mul_add_f32s(a, x, *y);
    }
    for (y, x) in yt.iter_mut().zip(xt) {
        *y += alpha * x;
    }
}

/// A layer normalisation's learned scale and shift.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    /// Scale, one per feature.
    pub(crate) weight: Vec<f32>,
    /// Shift, one per feature.
    pub(crate) bias: Vec<f32>,
    /// Added to the variance.
    pub(crate) eps: f32,
}

impl LayerNorm {
    /// Normalises each row of `x` (rows of `weight.len()` features) in place.
    #[inline(always)]
    pub(crate) fn forward(&self, x: &mut [f32]) {
        let width = self.weight.len();
        for row in x.chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * scale * w + b;
            }
        }
    }

    /// BERT's residual connection and normalisation: `x += residual`, then [`LayerNorm::forward`].
    #[inline(always)]
    pub(crate) fn add_and_forward(&self, residual: &[f32], x: &mut [f32]) {
        for (v, r) in x.iter_mut().zip(residual) {
            *v += r;
        }
        self.forward(x);
    }
}

/// GELU as BERT defines it, `x/2 (1 + erf(x/sqrt 2))`, applied in place.
///
/// `erf` is Abramowitz and Stegun's 7.1.28 (absolute error under 3e-7), which needs no `exp` and so
/// vectorises: this runs on every one of the 1,536 intermediate features of every token in every layer.
#[inline(always)]
pub(crate) fn gelu(x: &mut [f32]) {
    for v in x {
        let z = (*v * std::f32::consts::FRAC_1_SQRT_2).abs();
        let p = 1.0
            + z * (0.070_523_08
                + z * (0.042_282_01
                    + z * (0.009_270_527
                        + z * (0.000_152_014_3 + z * (0.000_276_567_2 + z * 0.000_043_063_8)))));
        let p2 = p * p;
        let p4 = p2 * p2;
        let p8 = p4 * p4;
        let erf = 1.0 - 1.0 / (p8 * p8);
        let erf = if *v < 0.0 { -erf } else { erf };
        *v = 0.5 * *v * (1.0 + erf);
    }
}

/// Softmax of `x`, in place.
#[inline(always)]
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    for v in x {
        *v *= inverse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulp::WithSimd;

    /// The product in f64 with the weights as the layer holds them (rounded to bfloat16).
    fn naive_linear(weight: &[f32], bias: &[f32], inputs: usize, x: &[f32]) -> Vec<f32> {
        let outputs = bias.len();
        let rows = x.len() / inputs;
        let mut out = vec![0.0; rows * outputs];
        for t in 0..rows {
            for j in 0..outputs {
                let mut s = bias[j] as f64;
                for k in 0..inputs {
                    let w = f32::from_bits(bf16_bits(weight[j * inputs + k]) << 16);
                    s += w as f64 * x[t * inputs + k] as f64;
                }
                out[t * outputs + j] = s as f32;
            }
        }
        out
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    struct Run<'a>(&'a Linear, &'a [f32], &'a mut [f32]);

    impl pulp::WithSimd for Run<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let mut scratch = vec![0.0; 2 * self.0.inputs];
            self.0.forward(simd, self.1, self.2, &mut scratch);
        }
    }

    #[test]
    fn a_dense_layer_matches_the_textbook_product_for_every_shape_of_tile_and_tail() {
        // Half-widths that are not a multiple of the SIMD width exercise the tails, odd outputs the single
        // last row, 1..=9 rows every mix of the four-row block and single rows, and 300 rows of 384 more than
        // one tile.
        for (inputs, outputs, rows) in [
            (384, 384, 1),
            (384, 1536, 7),
            (26, 5, 9),
            (14, 3, 4),
            (384, 6, 300),
        ] {
            let weight = values(inputs * outputs, 1);
            let bias = values(outputs, 2);
            let layer = Linear::new(&weight, bias.clone(), inputs, outputs).unwrap();
            let x = values(rows * inputs, 3);
            let expected = naive_linear(&weight, &bias, inputs, &x);
            let mut scalar = vec![f32::NAN; rows * outputs];
            Run(&layer, &x, &mut scalar).with_simd(pulp::Scalar::new());
            let mut dispatched = vec![f32::NAN; rows * outputs];
            pulp::Arch::new().dispatch(Run(&layer, &x, &mut dispatched));
            for (got, want) in scalar
                .iter()
                .zip(&expected)
                .chain(dispatched.iter().zip(&expected))
            {
                assert!(
                    (got - want).abs() < 1e-3,
                    "{inputs}x{outputs}x{rows}: {got} != {want}"
                );
            }
        }
    }

    #[test]
    fn weights_round_to_the_nearest_bfloat16() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(-2.5), 0xC020);
        // 1 + 2^-8 is halfway between two bfloat16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
    }

    #[test]
    fn a_layer_of_odd_width_or_mismatched_lengths_is_refused() {
        assert!(Linear::new(&[0.0; 15], vec![0.0; 5], 3, 5).is_none());
        assert!(Linear::new(&[0.0; 8], vec![0.0; 5], 4, 2).is_none());
    }

    #[test]
    fn gelu_follows_the_exact_definition() {
        // Reference values of x/2 (1 + erf(x/sqrt 2)), from Python's math.erf.
        for (x, want) in [
            (-3.0f32, -0.004_049_694),
            (-1.0, -0.158_655_25),
            (-0.1, -0.046_017_216),
            (0.0, 0.0),
            (0.5, 0.345_731_23),
            (1.0, 0.841_344_7),
            (2.5, 2.484_475_8),
            (10.0, 10.0),
        ] {
            let mut v = [x];
            gelu(&mut v);
            assert!((v[0] - want).abs() < 1e-6, "gelu({x}) = {} != {want}", v[0]);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let mut x = [1.0, 3.0, 2.0, -50.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[0] > x[3]);
    }

    #[test]
    fn layer_norm_gives_each_row_zero_mean_and_unit_variance_before_scale_and_shift() {
        let norm = LayerNorm {
            weight: vec![2.0; 4],
            bias: vec![1.0; 4],
            eps: 1e-12,
        };
        let mut x = [1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        norm.forward(&mut x);
        let first: Vec<f32> = x[..4].iter().map(|v| (v - 1.0) / 2.0).collect();
        assert!(first.iter().sum::<f32>().abs() < 1e-5);
        assert!((first.iter().map(|v| v * v).sum::<f32>() / 4.0 - 1.0).abs() < 1e-4);
        assert_eq!(&x[4..], &[1.0; 4]);
    }
}
