//! The forward pass of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) on the CPU, for sentence embeddings.
//!
//! An agent embeds a few short texts per tick (what it writes to memory and what it asks of it), so the
//! inputs are a handful of tokens and the dense layers are matrix-vector products that stream the encoder's
//! weights (21 MB in bfloat16) past a little arithmetic. General tensor libraries pad a batch to its longest
//! text and pack the weights for large products on every call; this crate does neither: every text keeps its
//! own length (attention runs per text, the dense layers over all tokens at once), and the weights are
//! stored once, at load, in the order the kernel reads them, prefetched ahead of it, with AVX-512 or
//! AVX2 + FMA kernels chosen at run time by [`pulp`] (safe code; scalar fallbacks elsewhere).
//!
//! [`Model::embed`] takes token ids (tokenise with the model's `tokenizer.json`) and returns the mean of the
//! last layer's token states, L2-normalised, as sentence-transformers does for this model.

mod kernels;

use std::path::Path;

use kernels::{LayerNorm, Linear, axpy, dot, gelu, softmax};
use pulp::{Arch, Simd, WithSimd};
use safetensors::{Dtype, SafeTensors};

/// What can go wrong loading the model or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `config.json` is not a BERT configuration this crate runs.
    #[error("invalid model config: {0}")]
    Config(String),
    /// `model.safetensors` is unreadable, or lacks a tensor or holds one of the wrong shape or type.
    #[error("invalid model weights: {0}")]
    Weights(String),
    /// An input cannot be embedded (no tokens, too many, or an id outside the vocabulary).
    #[error("invalid input: {0}")]
    Input(String),
}

/// The parts of a Hugging Face BERT `config.json` the forward pass needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    /// Width of a token state (384 for all-MiniLM-L6-v2).
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Layer normalisation epsilon.
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only `gelu` (BERT's erf form) is implemented.
    pub hidden_act: String,
}

impl Config {
    /// Parses and checks a `config.json`.
    ///
    /// # Errors
    /// [`Error::Config`] when the JSON does not parse or describes a model this crate cannot run.
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        let config: Self =
            serde_json::from_slice(json).map_err(|e| Error::Config(e.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(Error::Config(format!(
                "activation {:?} is not implemented (only \"gelu\")",
                config.hidden_act
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(Error::Config(format!(
                "{} attention heads do not divide the hidden size {}",
                config.num_attention_heads, config.hidden_size
            )));
        }
        Ok(config)
    }
}

/// One encoder layer's weights.
#[derive(Debug)]
struct Layer {
    /// Query, key and value projections in one matrix: each output row is `[q | k | v]`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The model, loaded once and shared (it is immutable; `embed` takes `&self`).
#[derive(Debug)]
pub struct Model {
    config: Config,
    /// `vocab_size` rows of `hidden_size`.
    word_embeddings: Vec<f32>,
    /// `max_position_embeddings` rows of `hidden_size`.
    position_embeddings: Vec<f32>,
    /// The row of token type 0 (every input is a single segment).
    token_type_embedding: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    arch: Arch,
}

/// Reads named tensors out of a safetensors file, with or without the `bert.` prefix some exports add.
struct Tensors<'a>(SafeTensors<'a>);

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let view = self
            .0
            .tensor(name)
            .or_else(|_| self.0.tensor(&format!("bert.{name}")))
            .map_err(|_| Error::Weights(format!("tensor {name} is missing")))?;
        if view.shape() != shape {
            return Err(Error::Weights(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        if view.dtype() != Dtype::F32 {
            return Err(Error::Weights(format!(
                "tensor {name} is {:?}; only F32 weights are supported",
                view.dtype()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The weight and bias of a dense layer, in f32.
    fn dense(
        &self,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        Ok((
            self.get(&format!("{name}.weight"), &[outputs, inputs])?,
            self.get(&format!("{name}.bias"), &[outputs])?,
        ))
    }

    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, Error> {
        let (weight, bias) = self.dense(name, inputs, outputs)?;
        packed(name, &weight, bias, inputs, outputs)
    }

    fn layer_norm(&self, name: &str, width: usize, eps: f32) -> Result<LayerNorm, Error> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[width])?,
            bias: self.get(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }
}

/// The dense layer `name`, packed (see `Linear`); its input width must be even.
fn packed(
    name: &str,
    weight: &[f32],
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
) -> Result<Linear, Error> {
    Linear::new(weight, bias, inputs, outputs).ok_or_else(|| {
        Error::Weights(format!(
            "{name}: input width {inputs} is odd, which is not supported"
        ))
    })
}

impl Model {
    /// Loads the model from a directory holding `config.json` and `model.safetensors`.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Weights`], naming the file and what is wrong with it.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map_err(|e| Error::Weights(format!("cannot read {}: {e}", path.display())))
        };
        let config = Config::from_json(&read("config.json")?)?;
        Self::from_safetensors(config, &read("model.safetensors")?)
    }

    /// Builds the model from its configuration and the bytes of its `model.safetensors`.
    ///
    /// # Errors
    /// [`Error::Weights`] when a tensor is missing, of another shape, or not F32.
    pub fn from_safetensors(config: Config, bytes: &[u8]) -> Result<Self, Error> {
        let tensors =
            Tensors(SafeTensors::deserialize(bytes).map_err(|e| Error::Weights(e.to_string()))?);
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{i}");
            let [q, k, v] = ["query", "key", "value"]
                .map(|part| tensors.dense(&format!("{prefix}.attention.self.{part}"), h, h));
            let ((qw, qb), (kw, kb), (vw, vb)) = (q?, k?, v?);
            let qkv = packed(
                &format!("{prefix}.attention.self"),
                &[qw, kw, vw].concat(),
                [qb, kb, vb].concat(),
                h,
                3 * h,
            )?;
            layers.push(Layer {
                qkv,
                attention_out: tensors.linear(&format!("{prefix}.attention.output.dense"), h, h)?,
                attention_norm: tensors.layer_norm(
                    &format!("{prefix}.attention.output.LayerNorm"),
                    h,
                    eps,
                )?,
                intermediate: tensors.linear(
                    &format!("{prefix}.intermediate.dense"),
                    h,
                    config.intermediate_size,
                )?,
                output: tensors.linear(
                    &format!("{prefix}.output.dense"),
                    config.intermediate_size,
                    h,
                )?,
                output_norm: tensors.layer_norm(&format!("{prefix}.output.LayerNorm"), h, eps)?,
            });
        }
        let token_types = tensors
            .get("embeddings.token_type_embeddings.weight", &[2, h])
            .or_else(|_| tensors.get("embeddings.token_type_embeddings.weight", &[1, h]))?;
        Ok(Self {
            word_embeddings: tensors
                .get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: tensors.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type_embedding: token_types[..h].to_vec(),
            embedding_norm: tensors.layer_norm("embeddings.LayerNorm", h, eps)?,
            layers,
            arch: Arch::new(),
            config,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Embeds each token sequence (with its `[CLS]` and `[SEP]`, as the tokenizer produces them): the mean of
    /// its last-layer token states, L2-normalised, so the dot product of two embeddings is their cosine.
    ///
    /// # Errors
    /// [`Error::Input`] when a sequence is empty, longer than the model reads, or holds an id outside the
    /// vocabulary; nothing is computed then.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, Error> {
        for (i, ids) in sequences.iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::Input(format!("sequence {i} has no tokens")));
            }
            if ids.len() > self.config.max_position_embeddings {
                return Err(Error::Input(format!(
                    "sequence {i} has {} tokens; the model reads at most {}",
                    ids.len(),
                    self.config.max_position_embeddings
                )));
            }
            if let Some(id) = ids
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(Error::Input(format!(
                    "sequence {i} holds token id {id}, outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.arch.dispatch(Forward {
            model: self,
            sequences,
        }))
    }
}

/// One forward pass over a batch, run with the instruction set [`Arch::dispatch`] picks.
struct Forward<'a> {
    model: &'a Model,
    sequences: &'a [&'a [u32]],
}

impl WithSimd for Forward<'_> {
    type Output = Vec<Vec<f32>>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Forward { model, sequences } = self;
        let config = &model.config;
        let h = config.hidden_size;
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();

        // Token states of every sequence, one after the other: dense layers see all tokens at once.
        let mut x = Vec::with_capacity(tokens * h);
        for ids in sequences {
            for (position, &id) in ids.iter().enumerate() {
                let word = &model.word_embeddings[id as usize * h..(id as usize + 1) * h];
                let place = &model.position_embeddings[position * h..(position + 1) * h];
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(&model.token_type_embedding)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        model.embedding_norm.forward(&mut x);

        let mut qkv = vec![0.0; tokens * 3 * h];
        let mut context = vec![0.0; tokens * h];
        let mut projected = vec![0.0; tokens * h];
        let mut intermediate = vec![0.0; tokens * config.intermediate_size];
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut scores = vec![0.0; longest];
        for layer in &model.layers {
            layer.qkv.forward(simd, &x, &mut qkv);
            attention(simd, config, sequences, &qkv, &mut scores, &mut context);
            layer.attention_out.forward(simd, &context, &mut projected);
            layer.attention_norm.add_and_forward(&x, &mut projected);
            std::mem::swap(&mut x, &mut projected);

            layer.intermediate.forward(simd, &x, &mut intermediate);
            gelu(&mut intermediate);
            layer.output.forward(simd, &intermediate, &mut projected);
            layer.output_norm.add_and_forward(&x, &mut projected);
            std::mem::swap(&mut x, &mut projected);
        }

        // Mean over each sequence's tokens, then unit length: scaling the sum to unit length gives the same
        // vector, so the division by the token count is left out.
        let mut first = 0;
        sequences
            .iter()
            .map(|ids| {
                let mut sum = vec![0.0; h];
                for row in x[first * h..(first + ids.len()) * h].chunks_exact(h) {
                    axpy(simd, 1.0, row, &mut sum);
                }
                first += ids.len();
                let norm = dot(simd, &sum, &sum).sqrt().max(1e-12);
                sum.iter_mut().for_each(|v| *v /= norm);
                sum
            })
            .collect()
    }
}

/// Multi-head self-attention of each sequence over itself: `context = softmax(q k^T / sqrt(d)) v` per head,
/// reading `[q | k | v]` rows from `qkv`.
#[inline(always)]
fn attention<S: Simd>(
    simd: S,
    config: &Config,
    sequences: &[&[u32]],
    qkv: &[f32],
    scores: &mut [f32],
    context: &mut [f32],
) {
    let h = config.hidden_size;
    let heads = config.num_attention_heads;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    context.fill(0.0);
    let mut first = 0;
    for ids in sequences {
        let n = ids.len();
        let row = |t: usize| &qkv[(first + t) * 3 * h..(first + t + 1) * 3 * h];
        for head in 0..heads {
            let (q_at, k_at, v_at) = (head * d, h + head * d, 2 * h + head * d);
            for i in 0..n {
                let q = &row(i)[q_at..q_at + d];
                let scores = &mut scores[..n];
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(simd, q, &row(j)[k_at..k_at + d]) * scale;
                }
                softmax(scores);
                let out =
                    &mut context[(first + i) * h + head * d..(first + i) * h + (head + 1) * d];
                for (j, &p) in scores.iter().enumerate() {
                    axpy(simd, p, &row(j)[v_at..v_at + d], out);
                }
            }
        }
        first += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_another_activation_is_refused_by_name() {
        let json = br#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,
            "max_position_embeddings":4,"vocab_size":10,"layer_norm_eps":1e-12,"hidden_act":"relu"}"#;
        let error = Config::from_json(json).unwrap_err().to_string();
        assert!(error.contains("\"relu\""), "{error}");
    }

    #[test]
    fn a_config_whose_heads_do_not_divide_the_width_is_refused() {
        let json = br#"{"hidden_size":10,"num_hidden_layers":1,"num_attention_heads":3,"intermediate_size":16,
            "max_position_embeddings":4,"vocab_size":10,"layer_norm_eps":1e-12,"hidden_act":"gelu"}"#;
        assert!(Config::from_json(json).is_err());
    }
}
