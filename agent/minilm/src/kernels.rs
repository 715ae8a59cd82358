//! The numeric pieces of the forward pass, generic over the SIMD instruction set [`pulp`] picks at run time
//! (AVX-512 or AVX2 + FMA on the x86-64 machines this runs on, scalar elsewhere). Every function is
//! `#[inline(always)]` so it is compiled into the one dispatched function that runs the whole pass, with its
//! instruction set.

use pulp::Simd;

/// A dense layer: `y = x W^T + b`, with `W` as PyTorch stores it (one row of `inputs` weights per output),
/// rounded to bfloat16 and packed two to a 32-bit word, so the 42 MB of f32 encoder weights take 21 MB.
///
/// With the few tokens of a memory text, the product is a matrix-vector one whose cost is streaming the
/// weights past the arithmetic, so they are stored in the order the kernel reads them: one sequential stream,
/// which the kernel asks for [`PREFETCH_WORDS`] ahead of its loads.
/// - Word `k` of a row holds weight `k` in its low half and weight `k + inputs/2` in its high half, so
///   unpacking is one shift (low halves) and one mask (high halves) per SIMD word, with no shuffles.
/// - Rows go in panels of [`PANEL_ROWS`]; a panel holds, for each run of [`CHUNK`] words, that run of each
///   of its rows in turn (one 64-byte cache line per row). The outputs are padded with zero rows to whole
///   panels. When `inputs / 2` is not a multiple of [`CHUNK`], the words past the last whole run are kept
///   apart, row by row, in `rest`.
#[derive(Debug)]
pub(crate) struct Linear {
    /// The panels: `panels * chunks * PANEL_ROWS * CHUNK` words.
    packed: Vec<u32>,
    /// Per padded row, its `inputs / 2 - chunks * CHUNK` words past the last whole run.
    rest: Vec<u32>,
    /// One bias per output.
    bias: Vec<f32>,
    /// Width of an input row (even).
    inputs: usize,
    /// Width of an output row.
    outputs: usize,
}

/// Rows of a panel: the kernel multiplies this many weight rows with each block of input rows.
const PANEL_ROWS: usize = 4;

/// Input rows multiplied with a panel at once, at most: a block's accumulators (rows x input rows) and the
/// input words it shares between rows must fit in the vector registers, of which AVX-512 has 32 (a 4 x 4
/// block) and AVX2 16 (4 x 2).
const MAX_BLOCK_TOKENS: usize = 4;

/// Input rows multiplied with a panel at once with the instruction set `S`.
#[inline(always)]
fn block_tokens<S: Simd>() -> usize {
    if std::mem::size_of::<S::f32s>() >= 64 {
        MAX_BLOCK_TOKENS
    } else {
        2
    }
}

/// Words in one run of a row within a panel: one 64-byte cache line, and a whole number of SIMD words for
/// every width `pulp` picks (1, 4, 8 or 16 lanes).
const CHUNK: usize = 16;

/// Bytes of input rows kept together while every panel streams past them: small enough to stay in the L2
/// cache, so the weights (the large operand) are read from memory once per tile rather than once per row.
const TILE_BYTES: usize = 96 * 1024;

/// How far ahead of the kernel, in words of the packed weights (16 KB), the next weights are asked for. The
/// kernel consumes a 64-byte line every few cycles while a line from memory takes hundreds: with the
/// hardware prefetcher alone (which stops at every 4 KB page) the arithmetic waited, at ~7 GB/s here; 8-16
/// KB ahead measured best (4 and 32 KB were slower).
const PREFETCH_WORDS: usize = 4096;

/// Asks the CPU to start loading a cache line before the kernel needs it (x86's `prefetcht0`, which never
/// faults, so it is safe); a no-op where it is not available. Free to make: SSE is part of x86-64, so the
/// check is settled at compile time there.
#[derive(Debug, Clone, Copy)]
struct Prefetch {
    #[cfg(target_arch = "x86_64")]
    sse: Option<pulp::core_arch::x86::Sse>,
}

impl Prefetch {
    fn new() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            sse: pulp::core_arch::x86::Sse::try_new(),
        }
    }

    /// Starts loading the cache line that holds `word`.
    #[inline(always)]
    fn line(self, word: &u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(sse) = self.sse {
            sse._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(word).cast(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = word;
    }
}

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
        let chunks = half / CHUNK;
        let padded = outputs.next_multiple_of(PANEL_ROWS);
        // Word `k` of row `j`; the padding rows are zero.
        let word = |j: usize, k: usize| {
            if j < outputs {
                let row = &weight[j * inputs..(j + 1) * inputs];
                bf16_bits(row[k]) | (bf16_bits(row[k + half]) << 16)
            } else {
                0
            }
        };
        let mut packed = Vec::with_capacity(padded * chunks * CHUNK);
        for panel in 0..padded / PANEL_ROWS {
            for chunk in 0..chunks {
                for r in 0..PANEL_ROWS {
                    let j = panel * PANEL_ROWS + r;
                    packed.extend((chunk * CHUNK..(chunk + 1) * CHUNK).map(|k| word(j, k)));
                }
            }
        }
        let rest = (0..padded)
            .flat_map(|j| (chunks * CHUNK..half).map(move |k| (j, k)))
            .map(|(j, k)| word(j, k))
            .collect();
        Some(Self {
            packed,
            rest,
            bias,
            inputs,
            outputs,
        })
    }

    /// `out[t] = x[t] W^T + b` for the `x.len() / inputs` rows of `x`.
    ///
    /// Each panel is unpacked in registers, word by word, and multiplied with a block of input rows at once
    /// (see [`block_tokens`]), so the loads of the packed weights overlap the arithmetic and nothing
    /// unpacked goes back to memory. A panel (3-12 KB) stays in L1 while the blocks of a tile of input rows
    /// pass it; a tile fits in L2.
    #[inline(always)]
    pub(crate) fn forward<S: Simd>(&self, simd: S, x: &[f32], out: &mut [f32]) {
        let (inputs, outputs) = (self.inputs, self.outputs);
        let rows = x.len() / inputs;
        debug_assert_eq!(x.len(), rows * inputs);
        debug_assert_eq!(out.len(), rows * outputs);
        let half = inputs / 2;
        let chunks = half / CHUNK;
        let rest = half - chunks * CHUNK;
        let panel_words = chunks * CHUNK * PANEL_ROWS;
        let block_tokens = block_tokens::<S>();
        let prefetch = Prefetch::new();
        let tile = (TILE_BYTES / (inputs * 4)).max(block_tokens) / block_tokens * block_tokens;
        let mut first = 0;
        while first < rows {
            let last = (first + tile).min(rows);
            for (p, bias) in self.bias.chunks(PANEL_ROWS).enumerate() {
                let panel = Panel {
                    words: &self.packed[p * panel_words..(p + 1) * panel_words],
                    ahead: self
                        .packed
                        .get(p * panel_words + PREFETCH_WORDS..)
                        .unwrap_or_default(),
                    prefetch,
                    rest: &self.rest[p * PANEL_ROWS * rest..(p + 1) * PANEL_ROWS * rest],
                };
                let j = p * PANEL_ROWS;
                let mut t = first;
                while t < last {
                    let n = (last - t).min(block_tokens);
                    let x = |i: usize| &x[(t + i) * inputs..][..inputs];
                    let sums = match n {
                        1 => widen(panel.times::<S, 1>(simd, [x(0)])),
                        2 => widen(panel.times::<S, 2>(simd, [x(0), x(1)])),
                        3 => widen(panel.times::<S, 3>(simd, [x(0), x(1), x(2)])),
                        _ => panel.times::<S, MAX_BLOCK_TOKENS>(simd, [x(0), x(1), x(2), x(3)]),
                    };
                    for (i, sums) in sums.iter().enumerate().take(n) {
                        let out = &mut out[(t + i) * outputs + j..][..bias.len()];
                        for ((out, sum), bias) in out.iter_mut().zip(sums).zip(bias) {
                            *out = sum + bias;
                        }
                    }
                    t += n;
                }
            }
            first = last;
        }
    }
}

/// `m` widened to [`MAX_BLOCK_TOKENS`] rows (the missing ones zero).
#[inline(always)]
fn widen<const T: usize>(m: [[f32; PANEL_ROWS]; T]) -> [[f32; PANEL_ROWS]; MAX_BLOCK_TOKENS] {
    let mut wide = [[0.0; PANEL_ROWS]; MAX_BLOCK_TOKENS];
    wide[..T].copy_from_slice(&m);
    wide
}

/// One panel of a [`Linear`]: [`PANEL_ROWS`] weight rows.
struct Panel<'a> {
    /// The rows' runs of [`CHUNK`] words, interleaved.
    words: &'a [u32],
    /// The rows' words past their last whole run, row by row.
    rest: &'a [u32],
    /// The packed weights from [`PREFETCH_WORDS`] past the panel's start on (to prefetch).
    ahead: &'a [u32],
    prefetch: Prefetch,
}

impl Panel<'_> {
    /// The dot products of the panel's rows with `T` input rows: `[t][r] = x_t . w_r`.
    #[inline(always)]
    fn times<S: Simd, const T: usize>(&self, simd: S, x: [&[f32]; T]) -> [[f32; PANEL_ROWS]; T] {
        let half = x[0].len() / 2;
        let rest = self.rest.len() / PANEL_ROWS;
        let whole = half - rest;
        // SIMD words per run of one row (1 with 16 lanes, 2 with 8, ...).
        let per_run = CHUNK / (std::mem::size_of::<S::u32s>() / 4);
        let words = S::as_simd_u32s(self.words).0;
        let low: [&[S::f32s]; T] = std::array::from_fn(|t| S::as_simd_f32s(&x[t][..whole]).0);
        let high: [&[S::f32s]; T] =
            std::array::from_fn(|t| S::as_simd_f32s(&x[t][half..half + whole]).0);
        let sixteen = simd.splat_u32s(16);
        let top = simd.splat_u32s(0xFFFF_0000);
        let zero = simd.splat_f32s(0.0);
        let mut acc = [[zero; PANEL_ROWS]; T];
        for (c, run) in words.chunks_exact(PANEL_ROWS * per_run).enumerate() {
            for r in 0..PANEL_ROWS {
                if let Some(word) = self.ahead.get((c * PANEL_ROWS + r) * CHUNK) {
                    self.prefetch.line(word);
                }
            }
            for v in 0..per_run {
                let k = c * per_run + v;
                let mut xl = [zero; T];
                let mut xh = [zero; T];
                for t in 0..T {
                    xl[t] = low[t][k];
                    xh[t] = high[t][k];
                }
                for r in 0..PANEL_ROWS {
                    let word = run[r * per_run + v];
                    let wl = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(word, sixteen));
                    let wh = simd.transmute_f32s_u32s(simd.and_u32s(word, top));
                    for t in 0..T {
                        acc[t][r] = simd.mul_add_f32s(wl, xl[t], acc[t][r]);
                        acc[t][r] = simd.mul_add_f32s(wh, xh[t], acc[t][r]);
                    }
                }
            }
        }
        let mut sums = [[0.0; PANEL_ROWS]; T];
        for t in 0..T {
            for r in 0..PANEL_ROWS {
                let tail: f32 = self.rest[r * rest..(r + 1) * rest]
                    .iter()
                    .zip(&x[t][whole..half])
                    .zip(&x[t][half + whole..])
                    .map(|((&word, &a), &b)| {
                        f32::from_bits(word << 16) * a + f32::from_bits(word & 0xFFFF_0000) * b
                    })
                    .sum();
                sums[t][r] = simd.reduce_sum_f32s(acc[t][r]) + tail;
            }
        }
        sums
    }
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
            self.0.forward(simd, self.1, self.2);
        }
    }

    #[test]
    fn a_dense_layer_matches_the_textbook_product_for_every_shape_of_tile_and_tail() {
        // Half-widths that are not a multiple of the 16-word run exercise the words kept apart (13 and 7
        // alone, 21 and 40 after whole runs), outputs that are not a multiple of four the zero padding rows,
        // 1..=9 input rows every size of the last block, and 300 rows of 384 more than one tile.
        for (inputs, outputs, rows) in [
            (384, 384, 1),
            (384, 1536, 7),
            (1536, 384, 6),
            (26, 5, 9),
            (14, 3, 4),
            (42, 7, 5),
            (80, 9, 2),
            (384, 6, 300),
        ] {
            let weight = values(inputs * outputs, 1);
            let bias = values(outputs, 2);
            let layer = Linear::new(&weight, bias.clone(), inputs, outputs).unwrap();
            let x = values(rows * inputs, 3);
            let expected = naive_linear(&weight, &bias, inputs, &x);
            // Every instruction set this machine has: scalar, and on x86-64 AVX2 (8 lanes) and AVX-512 (16
            // lanes) when present, then whatever `Arch` picks.
            let mut results = Vec::new();
            let mut run = |name: &str, with: &dyn Fn(Run<'_>)| {
                let mut out = vec![f32::NAN; rows * outputs];
                with(Run(&layer, &x, &mut out));
                results.push((name.to_owned(), out));
            };
            run("scalar", &|op| op.with_simd(pulp::Scalar::new()));
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                run("avx2", &|op| v3.vectorize(|| op.with_simd(v3)));
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(v4) = pulp::x86::V4::try_new() {
                run("avx512", &|op| v4.vectorize(|| op.with_simd(v4)));
            }
            run("dispatched", &|op| pulp::Arch::new().dispatch(op));
            for (name, out) in &results {
                for (got, want) in out.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() < 1e-3,
                        "{name} {inputs}x{outputs}x{rows}: {got} != {want}"
                    );
                }
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
