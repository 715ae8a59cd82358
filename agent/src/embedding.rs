//! In-process sentence embeddings for the agent's memory.
//!
//! The agent embeds what it remembers and what it asks its memory with all-MiniLM-L6-v2 (384 dimensions),
//! computed in pure Rust (tokenizers, and the forward pass of the workspace's `minilm` crate), so memory needs
//! no embedding server. The model is read
//! from a directory holding `config.json`, `tokenizer.json` and `model.safetensors`
//! (`scripts/fetch-embedding-model.sh` fetches them). An embedding is the mean of the model's token states
//! over the attention mask, L2-normalised, so the dot product of two embeddings is their cosine similarity.
//!
//! Inference is CPU-bound: [`Embedder::embed`] runs it on tokio's blocking pool, never on the async runtime.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minilm::{Config, Model};
use tokenizers::{Tokenizer, TruncationParams};

/// Number of dimensions of an all-MiniLM-L6-v2 embedding.
pub const EMBEDDING_DIM: usize = 384;

/// Longest input, in tokens, the embedder reads; longer texts are truncated. all-MiniLM-L6-v2 was trained on
/// 256-token sequences (its position table holds 512).
pub const MAX_TOKENS: usize = 256;

/// Environment variable naming the model directory.
pub const MODEL_DIR_ENV: &str = "EMBEDDING_MODEL_DIR";

/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Texts run through the model together at most; bounds the memory one call can take.
const MAX_BATCH: usize = 32;

/// Embeddings kept for texts seen before (~1.6 KB each, so ~6.5 MB at most): an agent asks its memory the
/// same questions tick after tick, and an embedding is a pure function of the text.
const CACHE_ENTRIES: usize = 4_096;

/// What can go wrong loading the model or embedding texts.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// The model directory does not exist.
    #[error(
        "embedding model directory {} does not exist: run scripts/fetch-embedding-model.sh \
         (or point {MODEL_DIR_ENV} at a directory holding config.json, tokenizer.json and model.safetensors)",
        dir.display()
    )]
    MissingModelDir {
        /// The directory looked for.
        dir: PathBuf,
    },
    /// One of [`MODEL_FILES`] is missing from the model directory.
    #[error(
        "embedding model file {file} is missing from {}: run scripts/fetch-embedding-model.sh",
        dir.display()
    )]
    MissingModelFile {
        /// The model directory.
        dir: PathBuf,
        /// The missing file's name.
        file: &'static str,
    },
    /// A model file exists but could not be read.
    #[error("failed to read embedding model file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a BERT configuration the model runs.
    #[error("invalid embedding model config {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: minilm::Error,
    },
    /// The configured model does not produce [`EMBEDDING_DIM`]-dimensional embeddings.
    #[error("embedding model in {} has hidden size {actual}, expected {EMBEDDING_DIM}", dir.display())]
    WrongDimension {
        /// The model directory.
        dir: PathBuf,
        /// The model's hidden size.
        actual: usize,
    },
    /// `tokenizer.json` could not be loaded or configured.
    #[error("failed to load the tokenizer from {}: {source}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: tokenizers::Error,
    },
    /// Tokenising the input failed.
    #[error("failed to tokenise the input: {0}")]
    Tokenize(#[source] tokenizers::Error),
    /// Loading the weights or running the model failed.
    #[error("embedding model failed: {0}")]
    Model(#[from] minilm::Error),
    /// The blocking inference task panicked or was cancelled.
    #[error("embedding task did not complete: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// all-MiniLM-L6-v2 loaded once and shared: cloning is cheap and every clone uses the same weights.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: Model,
    tokenizer: Tokenizer,
    dir: PathBuf,
    /// Embeddings of recently embedded texts.
    cache: quick_cache::sync::Cache<String, Arc<[f32]>>,
}

impl fmt::Debug for Embedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Embedder")
            .field("model_dir", &self.inner.dir)
            .field("dimension", &EMBEDDING_DIM)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model from `dir` on tokio's blocking pool (it reads ~90 MB).
    ///
    /// # Errors
    /// As [`Embedder::load_blocking`].
    pub async fn load(dir: impl Into<PathBuf>) -> Result<Self, EmbeddingError> {
        let dir = dir.into();
        tokio::task::spawn_blocking(move || Self::load_blocking(&dir)).await?
    }

    /// Checks that `dir` holds the model's files, without loading them (cheap: for start-up, when the
    /// model itself is loaded on first use).
    ///
    /// # Errors
    /// [`EmbeddingError::MissingModelDir`] or [`EmbeddingError::MissingModelFile`] (naming the file).
    pub fn check_files(dir: &Path) -> Result<(), EmbeddingError> {
        if !dir.is_dir() {
            return Err(EmbeddingError::MissingModelDir {
                dir: dir.to_path_buf(),
            });
        }
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(EmbeddingError::MissingModelFile {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        Ok(())
    }

    /// Loads the model from `dir`, blocking the calling thread. Call it outside the async runtime.
    ///
    /// # Errors
    /// [`EmbeddingError::MissingModelDir`] or [`EmbeddingError::MissingModelFile`] (naming the file) when the
    /// model has not been fetched, and the other variants when a file is unreadable or not what it should be.
    pub fn load_blocking(dir: &Path) -> Result<Self, EmbeddingError> {
        Self::check_files(dir)?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| EmbeddingError::Read { path, source })
        };

        let config_path = dir.join("config.json");
        let config =
            Config::from_json(&read("config.json")?).map_err(|source| EmbeddingError::Config {
                path: config_path,
                source,
            })?;
        if config.hidden_size != EMBEDDING_DIM {
            return Err(EmbeddingError::WrongDimension {
                dir: dir.to_path_buf(),
                actual: config.hidden_size,
            });
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_error = |source| EmbeddingError::Tokenizer {
            path: tokenizer_path.clone(),
            source,
        };
        let mut tokenizer =
            Tokenizer::from_bytes(read("tokenizer.json")?).map_err(tokenizer_error)?;
        // The shipped tokenizer pads every input to 128 tokens; the model takes each text at its own length
        // instead, and reads up to the length it was trained on.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS.min(config.max_position_embeddings),
                ..TruncationParams::default()
            }))
            .map_err(tokenizer_error)?;

        // Read rather than memory-mapped: mapping a file is `unsafe`, which this crate forbids.
        let model = Model::from_safetensors(config, &read("model.safetensors")?)?;

        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                dir: dir.to_path_buf(),
                cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            }),
        })
    }

    /// Number of dimensions of the vectors this embedder returns.
    pub fn dimension(&self) -> usize {
        EMBEDDING_DIM
    }

    /// Embeds `texts`: one unit-length vector per text, in order. Texts embedded recently come from a cache;
    /// the others run through the model together, on tokio's blocking pool.
    ///
    /// # Errors
    /// [`EmbeddingError::Tokenize`] or [`EmbeddingError::Model`] when inference fails, and
    /// [`EmbeddingError::Task`] when the blocking task panics.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let (mut vectors, missing) = self.cached(&texts);
        if missing.is_empty() {
            return Ok(vectors.into_iter().flatten().collect());
        }
        let this = self.clone();
        let started = std::time::Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let texts: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
            this.compute(&texts).map(|computed| (missing, computed))
        })
        .await??;
        crate::metrics::embedded(started.elapsed());
        Ok(self.merge(&mut vectors, computed))
    }

    /// Embeds `texts` on the calling thread, as [`Embedder::embed`] does. Call it outside the async runtime.
    ///
    /// # Errors
    /// As [`Embedder::embed`], without [`EmbeddingError::Task`].
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let (mut vectors, missing) = self.cached(texts);
        let uncached: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
        let computed = self.compute(&uncached)?;
        Ok(self.merge(&mut vectors, (missing, computed)))
    }

    /// The cached vector of each text, and the positions of those not cached.
    fn cached(&self, texts: &[String]) -> (Vec<Option<Vec<f32>>>, Vec<usize>) {
        let vectors: Vec<Option<Vec<f32>>> = texts
            .iter()
            .map(|text| self.inner.cache.get(text).map(|v| v.to_vec()))
            .collect();
        let missing = (0..texts.len()).filter(|&i| vectors[i].is_none()).collect();
        (vectors, missing)
    }

    /// Caches the `computed` vectors of the texts at `missing` and fills them in.
    fn merge(
        &self,
        vectors: &mut [Option<Vec<f32>>],
        (missing, computed): (Vec<usize>, Vec<(String, Vec<f32>)>),
    ) -> Vec<Vec<f32>> {
        for (i, (text, vector)) in missing.into_iter().zip(computed) {
            self.inner.cache.insert(text, Arc::from(vector.as_slice()));
            vectors[i] = Some(vector);
        }
        vectors.iter_mut().filter_map(Option::take).collect()
    }

    /// Runs `texts` through the model, in batches of at most [`MAX_BATCH`].
    fn compute(&self, texts: &[String]) -> Result<Vec<(String, Vec<f32>)>, EmbeddingError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_BATCH) {
            vectors.extend(self.embed_batch(chunk)?);
        }
        Ok(texts.iter().cloned().zip(vectors).collect())
    }

    /// Number of embeddings cached now.
    pub fn cached_len(&self) -> usize {
        self.inner.cache.len()
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let Inner {
            model, tokenizer, ..
        } = &*self.inner;
        // One text at a time: the batch's texts are few and short, and encode_batch would use a thread pool.
        let encodings = texts
            .iter()
            .map(|text| tokenizer.encode(text.as_str(), true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EmbeddingError::Tokenize)?;
        let ids: Vec<&[u32]> = encodings
            .iter()
            .map(tokenizers::Encoding::get_ids)
            .collect();
        Ok(model.embed(&ids)?)
    }
}

/// Cosine similarity of two vectors (for embeddings from [`Embedder`], which are unit length, their dot
/// product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// Test support shared with the memory tests: one embedder per test binary, loaded from
/// `EMBEDDING_MODEL_DIR` or the repository's default `.local/models/all-MiniLM-L6-v2`.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::{Embedder, MODEL_DIR_ENV};

    /// Where the tests look for the model.
    pub(crate) fn model_dir() -> PathBuf {
        std::env::var_os(MODEL_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/models/all-MiniLM-L6-v2")
            })
    }

    /// The shared embedder; panics with the loader's message (which says how to fetch the model) when the
    /// model is missing, so a machine without it fails these tests instead of skipping them.
    pub(crate) async fn embedder() -> Embedder {
        static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
        tokio::task::spawn_blocking(|| {
            EMBEDDER
                .get_or_init(|| {
                    let dir = model_dir();
                    Embedder::load_blocking(&dir).unwrap_or_else(|e| {
                        panic!("the embedding tests need the model ({MODEL_DIR_ENV} or the default path): {e}")
                    })
                })
                .clone()
        })
        .await
        .expect("loading the embedder panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::embedder;
    use super::*;

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn paraphrases_are_clearly_closer_than_unrelated_sentences() {
        let embedder = embedder().await;
        let v = embedder
            .embed(strings(&[
                "The cat sits on the mat.",
                "A kitten is resting on a rug.",
                "Quarterly revenue grew by twelve percent.",
            ]))
            .await
            .unwrap();

        let paraphrase = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        assert!(paraphrase > 0.5, "paraphrase cosine {paraphrase}");
        assert!(unrelated < 0.2, "unrelated cosine {unrelated}");
        assert!(
            paraphrase - unrelated > 0.4,
            "paraphrase {paraphrase} vs unrelated {unrelated}"
        );
    }

    #[tokio::test]
    async fn texts_embed_as_the_reference_implementation_embedded_them() {
        // Tokenizer and model together against embeddings recorded from candle-transformers' BertModel (f32
        // weights; ours are bfloat16, hence a cosine a little under 1).
        #[derive(serde::Deserialize)]
        struct Reference {
            cases: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            text: String,
            embedding: Vec<f32>,
        }
        let reference: Reference =
            serde_json::from_str(include_str!("../minilm/tests/data/reference.json")).unwrap();
        let embedder = embedder().await;
        let texts = reference.cases.iter().map(|c| c.text.clone()).collect();
        let vectors = embedder.embed(texts).await.unwrap();
        for (case, vector) in reference.cases.iter().zip(vectors) {
            let similarity = cosine(&case.embedding, &vector);
            assert!(similarity > 0.9999, "{:?}: cosine {similarity}", case.text);
        }
    }

    #[tokio::test]
    async fn texts_seen_before_come_from_the_cache_in_order_with_the_same_vectors() {
        let embedder = embedder().await;
        let unique = |name: &str| format!("{name} {}", uuid::Uuid::new_v4());
        let (a, b, c) = (unique("alpha"), unique("beta"), unique("gamma"));
        let first = embedder.embed(vec![a.clone(), b.clone()]).await.unwrap();
        let cached = embedder.cached_len();

        // `a` and `b` come from the cache, `c` from the model, and the order is the caller's.
        let mixed = embedder
            .embed(vec![b.clone(), c.clone(), a.clone()])
            .await
            .unwrap();
        assert_eq!(embedder.cached_len(), cached + 1);
        assert_eq!(mixed[0], first[1]);
        assert_eq!(mixed[2], first[0]);
        let alone = embedder.embed_blocking(std::slice::from_ref(&c)).unwrap();
        assert_eq!(mixed[1], alone[0]);
        assert!(
            cosine(&mixed[1], &mixed[0]) < 0.999,
            "distinct texts, distinct vectors"
        );
    }

    #[tokio::test]
    async fn embeddings_are_unit_length_with_384_dimensions() {
        let embedder = embedder().await;
        let vectors = embedder.embed(strings(&["hello world", ""])).await.unwrap();
        assert_eq!(vectors.len(), 2);
        for v in vectors {
            assert_eq!(v.len(), EMBEDDING_DIM);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
    }

    #[tokio::test]
    async fn a_text_embeds_the_same_alone_as_beside_a_longer_one() {
        // Padding in a mixed batch must not change a text's embedding.
        let embedder = embedder().await;
        let alone = embedder.embed(strings(&["short text"])).await.unwrap();
        let long =
            "a much longer sentence that forces the short one to be padded with many tokens "
                .repeat(4);
        let batched = embedder
            .embed(vec!["short text".into(), long])
            .await
            .unwrap();
        let similarity = cosine(&alone[0], &batched[0]);
        assert!(similarity > 0.9999, "cosine {similarity}");
    }

    #[tokio::test]
    async fn texts_longer_than_the_model_window_are_truncated_not_rejected() {
        let embedder = embedder().await;
        let huge = "word ".repeat(5 * MAX_TOKENS);
        let vectors = embedder.embed(vec![huge]).await.unwrap();
        assert_eq!(vectors[0].len(), EMBEDDING_DIM);
    }

    #[tokio::test]
    async fn more_texts_than_one_batch_all_get_an_embedding_in_order() {
        let embedder = embedder().await;
        let texts: Vec<String> = (0..MAX_BATCH + 3)
            .map(|i| format!("note number {i}"))
            .collect();
        let all = embedder.embed(texts.clone()).await.unwrap();
        assert_eq!(all.len(), texts.len());
        let last = embedder
            .embed(vec![texts[MAX_BATCH + 2].clone()])
            .await
            .unwrap();
        assert!(cosine(&all[MAX_BATCH + 2], &last[0]) > 0.9999);
    }

    #[tokio::test]
    async fn an_empty_batch_embeds_to_nothing() {
        let embedder = embedder().await;
        assert!(embedder.embed(Vec::new()).await.unwrap().is_empty());
    }

    #[test]
    fn a_missing_model_directory_says_to_run_the_fetch_script() {
        let dir = std::env::temp_dir().join(format!("no-such-model-{}", uuid::Uuid::new_v4()));
        let error = Embedder::load_blocking(&dir).unwrap_err();
        assert!(
            matches!(error, EmbeddingError::MissingModelDir { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("scripts/fetch-embedding-model.sh"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_model_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let error = Embedder::load_blocking(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                EmbeddingError::MissingModelFile {
                    file: "model.safetensors",
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("model.safetensors"), "{message}");
        assert!(
            message.contains("scripts/fetch-embedding-model.sh"),
            "{message}"
        );
    }
}
