//! The agent's long-term memory: texts it chose to remember, recalled by meaning.
//!
//! [`Memory`] embeds texts with the in-process [`Embedder`] and keeps them in a [`VectorStore`], of which there
//! are two, one file each: [`EdgeStore`], a qdrant-edge shard embedded in the agent process on local disk
//! (used when `QDRANT_URL` is unset), and [`RemoteStore`], a collection on the Qdrant server at `QDRANT_URL`.
//! [`Store`] is whichever of the two the settings chose.
//!
//! Isolation is the invariant that matters: every point carries `owner`, `task_id` and `text` in its payload,
//! and every search filters on both `owner` and `task_id` (two `must` conditions), so one user's task never
//! recalls another task's or another user's memories.

//!
//! Retention: a deleted task's points are deleted ([`VectorStore::delete_task`]), and every point carries the
//! time it was written, so points older than the task records' lifetime are deleted too
//! ([`VectorStore::delete_written_before`]).

mod edge;
mod error;
mod remote;
#[cfg(test)]
mod tests;

pub use edge::EdgeStore;
pub use error::MemoryError;
pub use remote::RemoteStore;

use crate::embedding::{EMBEDDING_DIM, Embedder};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use uuid::Uuid;

/// Payload key of the user who owns a memory.
pub const OWNER_KEY: &str = "owner";
/// Payload key of the task a memory belongs to.
pub const TASK_ID_KEY: &str = "task_id";
/// Payload key of the remembered text.
pub const TEXT_KEY: &str = "text";
/// Payload key of the time the point was written (unix seconds), for retention.
pub const WRITTEN_AT_KEY: &str = "written_at";
/// Collection name used on a Qdrant server when none is configured.
pub const DEFAULT_COLLECTION: &str = "agent_memory";

/// A remembered text returned by a search, with its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    /// The text as it was remembered.
    pub text: String,
    /// Cosine similarity to the query (higher is closer; at most 1).
    pub score: f32,
}

fn check_dimension(vector: &[f32]) -> Result<(), MemoryError> {
    if vector.len() == EMBEDDING_DIM {
        Ok(())
    } else {
        Err(MemoryError::Dimension {
            actual: vector.len(),
        })
    }
}

/// A place to keep embedded texts, partitioned by owner and task.
///
/// Implementations must store `owner`, `task_id` and `text` with every point and return only points whose
/// `owner` and `task_id` both match the search's.
pub trait VectorStore: Send + Sync {
    /// Stores each `(text, vector)` as a new point owned by `owner` within `task_id`.
    ///
    /// # Errors
    /// [`MemoryError::Dimension`] for a vector that is not [`EMBEDDING_DIM`] long; a backend error otherwise.
    fn upsert(
        &self,
        owner: &str,
        task_id: Uuid,
        items: Vec<(String, Vec<f32>)>,
    ) -> impl Future<Output = Result<(), MemoryError>> + Send;

    /// Returns up to `limit` of `owner`'s texts within `task_id` closest to `vector`, closest first.
    ///
    /// # Errors
    /// [`MemoryError::Dimension`] for a vector that is not [`EMBEDDING_DIM`] long; a backend error otherwise.
    fn search(
        &self,
        owner: &str,
        task_id: Uuid,
        vector: Vec<f32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Recalled>, MemoryError>> + Send;

    /// Deletes every point of `owner`'s task `task_id` (the task was deleted).
    ///
    /// # Errors
    /// A backend error.
    fn delete_task(
        &self,
        owner: &str,
        task_id: Uuid,
    ) -> impl Future<Output = Result<(), MemoryError>> + Send;

    /// Deletes every point written before `cutoff` (unix seconds): memory outlives no task record.
    ///
    /// # Errors
    /// A backend error.
    fn delete_written_before(
        &self,
        cutoff: i64,
    ) -> impl Future<Output = Result<(), MemoryError>> + Send;

    /// How many points `owner`'s task `task_id` has.
    ///
    /// # Errors
    /// A backend error.
    fn count_task(
        &self,
        owner: &str,
        task_id: Uuid,
    ) -> impl Future<Output = Result<u64, MemoryError>> + Send;
}

/// Now, as stored in [`WRITTEN_AT_KEY`].
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The store the settings chose: embedded when `QDRANT_URL` is unset, the server otherwise.
#[derive(Debug, Clone)]
pub enum Store {
    /// qdrant-edge on local disk.
    Edge(EdgeStore),
    /// A Qdrant server.
    Remote(RemoteStore),
}

impl Store {
    /// Connects to the server at `qdrant_url` when it is given, and opens the embedded shard in `qdrant_path`
    /// otherwise.
    ///
    /// # Errors
    /// As [`RemoteStore::connect`] or [`EdgeStore::open`].
    pub async fn open(
        qdrant_url: Option<&str>,
        api_key: Option<String>,
        qdrant_path: &Path,
    ) -> Result<Self, MemoryError> {
        match qdrant_url {
            Some(url) => Ok(Self::Remote(
                RemoteStore::connect(url, api_key, DEFAULT_COLLECTION).await?,
            )),
            None => Ok(Self::Edge(EdgeStore::open(qdrant_path).await?)),
        }
    }
}

impl VectorStore for Store {
    async fn upsert(
        &self,
        owner: &str,
        task_id: Uuid,
        items: Vec<(String, Vec<f32>)>,
    ) -> Result<(), MemoryError> {
        match self {
            Self::Edge(store) => store.upsert(owner, task_id, items).await,
            Self::Remote(store) => store.upsert(owner, task_id, items).await,
        }
    }

    async fn search(
        &self,
        owner: &str,
        task_id: Uuid,
        vector: Vec<f32>,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        match self {
            Self::Edge(store) => store.search(owner, task_id, vector, limit).await,
            Self::Remote(store) => store.search(owner, task_id, vector, limit).await,
        }
    }

    async fn delete_task(&self, owner: &str, task_id: Uuid) -> Result<(), MemoryError> {
        match self {
            Self::Edge(store) => store.delete_task(owner, task_id).await,
            Self::Remote(store) => store.delete_task(owner, task_id).await,
        }
    }

    async fn delete_written_before(&self, cutoff: i64) -> Result<(), MemoryError> {
        match self {
            Self::Edge(store) => store.delete_written_before(cutoff).await,
            Self::Remote(store) => store.delete_written_before(cutoff).await,
        }
    }

    async fn count_task(&self, owner: &str, task_id: Uuid) -> Result<u64, MemoryError> {
        match self {
            Self::Edge(store) => store.count_task(owner, task_id).await,
            Self::Remote(store) => store.count_task(owner, task_id).await,
        }
    }
}

/// What the agent's tick loop talks to: remembers texts and recalls them by meaning, scoped to one owner's
/// task.
#[derive(Debug, Clone)]
pub struct Memory<S = Store> {
    embedder: Embedder,
    store: S,
}

impl<S: VectorStore> Memory<S> {
    /// Combines an embedder and a store.
    pub fn new(embedder: Embedder, store: S) -> Self {
        Self { embedder, store }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back, for example to [`EdgeStore::close`] it.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Remembers `texts` for `owner`'s task `task_id`. Blank texts and repeats within the call are skipped.
    ///
    /// # Errors
    /// [`MemoryError::Embedding`] when embedding fails, a store error when storing does.
    pub async fn remember(
        &self,
        owner: &str,
        task_id: Uuid,
        texts: Vec<String>,
    ) -> Result<(), MemoryError> {
        self.remember_and_recall(owner, task_id, texts, Vec::new(), 0)
            .await
            .map(drop)
    }

    /// Recalls up to `limit` distinct texts of `owner`'s task `task_id` closest to any of `queries`, closest
    /// first (a text found by several queries counts once, with its best score). Blank queries are skipped.
    ///
    /// # Errors
    /// [`MemoryError::Embedding`] when embedding fails, a store error when searching does.
    pub async fn recall(
        &self,
        owner: &str,
        task_id: Uuid,
        queries: Vec<String>,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        self.remember_and_recall(owner, task_id, Vec::new(), queries, limit)
            .await
    }

    /// [`Memory::remember`] `writes`, then [`Memory::recall`] `queries` (which may find the new writes), with
    /// one embedding call for both: what a tick does with the model's `memory_write` and `memory_query`.
    ///
    /// # Errors
    /// As [`Memory::remember`] and [`Memory::recall`]; nothing is searched when storing fails.
    #[tracing::instrument(
        skip_all,
        fields(task_id = %task_id, writes = writes.len(), queries = queries.len())
    )]
    pub async fn remember_and_recall(
        &self,
        owner: &str,
        task_id: Uuid,
        writes: Vec<String>,
        queries: Vec<String>,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let writes = clean(writes);
        let queries = if limit == 0 {
            Vec::new()
        } else {
            clean(queries)
        };
        if writes.is_empty() && queries.is_empty() {
            return Ok(Vec::new());
        }
        let mut vectors = self
            .embedder
            .embed(writes.iter().chain(&queries).cloned().collect())
            .await?;
        let query_vectors = vectors.split_off(writes.len());
        if !writes.is_empty() {
            self.store
                .upsert(owner, task_id, writes.into_iter().zip(vectors).collect())
                .await?;
        }

        let mut best: HashMap<String, f32> = HashMap::new();
        for vector in query_vectors {
            for hit in self.store.search(owner, task_id, vector, limit).await? {
                let score = best.entry(hit.text).or_insert(hit.score);
                *score = score.max(hit.score);
            }
        }
        let mut recalled: Vec<Recalled> = best
            .into_iter()
            .map(|(text, score)| Recalled { text, score })
            .collect();
        recalled.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.text.cmp(&b.text))
        });
        recalled.truncate(limit);
        Ok(recalled)
    }
}

/// Trims texts, drops blank ones and repeats (keeping the first), preserving order.
fn clean(texts: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    texts
        .into_iter()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty() && seen.insert(text.clone()))
        .collect()
}
