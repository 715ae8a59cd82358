//! The agent's long-term memory: texts it chose to remember, recalled by meaning.
//!
//! [`Memory`] embeds texts with the in-process [`Embedder`] and keeps them in a [`VectorStore`], of which there
//! are two (SPEC section 5): [`EdgeStore`], a qdrant-edge shard embedded in the agent process on local disk
//! (used when `QDRANT_URL` is unset), and [`RemoteStore`], a collection on the Qdrant server at `QDRANT_URL`.
//! [`Store`] is whichever of the two the settings chose.
//!
//! Isolation is the invariant that matters: every point carries `owner`, `task_id` and `text` in its payload,
//! and every search filters on both `owner` and `task_id` (two `must` conditions), so one user's task never
//! recalls another task's or another user's memories.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition as RemoteCondition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    Distance as RemoteDistance, FieldType, Filter as RemoteFilter, PointStruct, QueryPointsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder, value::Kind,
};
use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FieldCondition,
    FieldIndexOperations, Filter, JsonPath, Match, NamedQuery, Payload, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStructPersisted,
    QueryEnum, QueryRequest, ScoringQuery, UpdateOperation, ValueVariants, VectorInternal,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use crate::embedding::{EMBEDDING_DIM, Embedder, EmbeddingError};

/// Payload key of the user who owns a memory.
pub const OWNER_KEY: &str = "owner";
/// Payload key of the task a memory belongs to.
pub const TASK_ID_KEY: &str = "task_id";
/// Payload key of the remembered text.
pub const TEXT_KEY: &str = "text";
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

/// What can go wrong remembering or recalling.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The embedded store's directory could not be created.
    #[error("failed to create the embedded Qdrant directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded qdrant-edge shard refused an operation.
    #[error("embedded Qdrant shard at {}: {action} failed", path.display())]
    Edge {
        /// The shard's directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: Box<qdrant_edge::OperationError>,
    },
    /// The Qdrant server refused a request or could not be reached.
    #[error("Qdrant server: {action} failed")]
    Remote {
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: Box<qdrant_client::QdrantError>,
    },
    /// The shard on disk was not made for this memory's vectors.
    #[error(
        "embedded Qdrant shard at {} holds vectors {found} (size, distance), not ({EMBEDDING_DIM}, Cosine)",
        path.display()
    )]
    Incompatible {
        /// The shard's directory.
        path: PathBuf,
        /// What the shard's default vector is configured as.
        found: String,
    },
    /// The server's collection was not made for this memory's vectors.
    #[error(
        "Qdrant collection {collection} holds vectors {found} (size, distance), not ({EMBEDDING_DIM}, Cosine)"
    )]
    IncompatibleCollection {
        /// The collection's name.
        collection: String,
        /// What the collection's default vector is configured as.
        found: String,
    },
    /// A vector of the wrong length was given.
    #[error("vector has {actual} dimensions, the memory stores {EMBEDDING_DIM}")]
    Dimension {
        /// The given vector's length.
        actual: usize,
    },
    /// Embedding the texts failed.
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    /// A blocking store task panicked or was cancelled.
    #[error("memory task did not complete: {0}")]
    Task(#[from] tokio::task::JoinError),
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
}

/// A qdrant-edge shard on local disk, embedded in this process.
///
/// qdrant-edge is synchronous and does disk I/O, so every call runs on tokio's blocking pool. The shard
/// guards itself with internal locks; it is shared behind an `Arc` so calls may overlap. One process must own
/// a directory at a time: give each agent process its own.
#[derive(Debug, Clone)]
pub struct EdgeStore {
    shard: Arc<EdgeShard>,
    path: PathBuf,
}

// The design relies on sharing the shard across blocking tasks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<EdgeShard>();
};

impl EdgeStore {
    /// Opens the shard in `path`, creating the directory and a new shard (384-dimensional cosine vectors,
    /// keyword indexes on `owner` and `task_id`) when none is there yet.
    ///
    /// # Errors
    /// [`MemoryError::CreateDir`] when the directory cannot be created, [`MemoryError::Edge`] when the shard
    /// cannot be created or loaded, [`MemoryError::Incompatible`] when it holds vectors of another size or
    /// distance.
    #[tracing::instrument(skip_all)]
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, MemoryError> {
        let path = path.into();
        tracing::debug!(path = %path.display(), "opening the embedded Qdrant shard");
        tokio::task::spawn_blocking(move || Self::open_blocking(path)).await?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, MemoryError> {
        std::fs::create_dir_all(&path).map_err(|source| MemoryError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let edge_error = |action: &'static str| {
            let path = path.clone();
            move |source| MemoryError::Edge {
                path,
                action,
                source: Box::new(source),
            }
        };

        // qdrant-edge writes its config file first when it creates a shard, so its presence means "load".
        let shard = if path.join("edge_config.json").is_file() {
            let shard = EdgeShard::load(&path, None).map_err(edge_error("loading the shard"))?;
            let vectors = shard.config().vectors.get("").map(|v| (v.size, v.distance));
            if vectors != Some((EMBEDDING_DIM, Distance::Cosine)) {
                return Err(MemoryError::Incompatible {
                    path,
                    found: format!("{vectors:?}"),
                });
            }
            shard
        } else {
            let config = EdgeConfig {
                vectors: HashMap::from([(
                    String::new(), // the default (unnamed) vector
                    EdgeVectorParams {
                        size: EMBEDDING_DIM,
                        distance: Distance::Cosine,
                        on_disk: None,
                        multivector_config: None,
                        datatype: None,
                        quantization_config: None,
                        hnsw_config: None,
                    },
                )]),
                ..EdgeConfig::default()
            };
            let shard = EdgeShard::new(&path, config).map_err(edge_error("creating the shard"))?;
            for key in [OWNER_KEY, TASK_ID_KEY] {
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: json_path(key),
                            field_schema: Some(PayloadFieldSchema::FieldType(
                                PayloadSchemaType::Keyword,
                            )),
                        }),
                    ))
                    .map_err(edge_error("creating a payload index"))?;
            }
            shard
        };
        Ok(Self {
            shard: Arc::new(shard),
            path,
        })
    }

    /// The shard's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes and closes the shard on the blocking pool, waiting until it is done, so the directory can be
    /// reopened at once. Dropping an `EdgeStore` without calling this also flushes (when the last clone
    /// goes), but on whichever thread drops it.
    ///
    /// # Errors
    /// [`MemoryError::Task`] when the flush panics.
    pub async fn close(self) -> Result<(), MemoryError> {
        tokio::task::spawn_blocking(move || drop(self)).await?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        action: &'static str,
        work: impl FnOnce(&EdgeShard) -> Result<T, qdrant_edge::OperationError> + Send + 'static,
    ) -> Result<T, MemoryError> {
        let shard = Arc::clone(&self.shard);
        let result = tokio::task::spawn_blocking(move || work(&shard)).await?;
        result.map_err(|source| MemoryError::Edge {
            path: self.path.clone(),
            action,
            source: Box::new(source),
        })
    }
}

fn json_path(key: &str) -> JsonPath {
    key.parse()
        .expect("a plain payload key is a valid JSON path")
}

fn match_keyword(key: &str, value: String) -> Condition {
    Condition::Field(FieldCondition::new_match(
        json_path(key),
        Match::new_value(ValueVariants::String(value)),
    ))
}

impl VectorStore for EdgeStore {
    async fn upsert(
        &self,
        owner: &str,
        task_id: Uuid,
        items: Vec<(String, Vec<f32>)>,
    ) -> Result<(), MemoryError> {
        if items.is_empty() {
            return Ok(());
        }
        let points = items
            .into_iter()
            .map(|(text, vector)| {
                check_dimension(&vector)?;
                let payload = serde_json::Map::from_iter([
                    (OWNER_KEY.to_owned(), owner.into()),
                    (TASK_ID_KEY.to_owned(), task_id.to_string().into()),
                    (TEXT_KEY.to_owned(), text.into()),
                ]);
                Ok(PointStructPersisted {
                    id: PointId::Uuid(Uuid::new_v4()),
                    vector: VectorStructPersisted::Single(vector),
                    payload: Some(Payload::from(payload)),
                })
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.blocking("upserting points", move |shard| shard.update(operation))
            .await
    }

    async fn search(
        &self,
        owner: &str,
        task_id: Uuid,
        vector: Vec<f32>,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        check_dimension(&vector)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(vector),
                using: None,
            }))),
            filter: Some(Filter {
                must: Some(vec![
                    match_keyword(OWNER_KEY, owner.to_owned()),
                    match_keyword(TASK_ID_KEY, task_id.to_string()),
                ]),
                ..Filter::default()
            }),
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let points = self
            .blocking("searching", move |shard| shard.query(request))
            .await?;
        Ok(points
            .into_iter()
            .filter_map(|point| {
                let text = point.payload?.0.remove(TEXT_KEY)?;
                match text {
                    serde_json::Value::String(text) => Some(Recalled {
                        text,
                        score: point.score,
                    }),
                    _ => None,
                }
            })
            .collect())
    }
}

/// A collection on a Qdrant server, reached over gRPC (`QDRANT_URL`, e.g. `http://qdrant:6334`).
#[derive(Clone)]
pub struct RemoteStore {
    client: Qdrant,
    collection: String,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

fn remote_error(action: &'static str) -> impl FnOnce(qdrant_client::QdrantError) -> MemoryError {
    move |source| MemoryError::Remote {
        action,
        source: Box::new(source),
    }
}

impl RemoteStore {
    /// Connects to the server at `url` (its gRPC port) and creates `collection` (384-dimensional cosine
    /// vectors, keyword indexes on `owner` and `task_id`) when it does not exist yet.
    ///
    /// # Errors
    /// [`MemoryError::Remote`] when the URL is invalid, the server cannot be reached within the timeouts, or it
    /// refuses to create the collection.
    #[tracing::instrument(skip(api_key))]
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
    ) -> Result<Self, MemoryError> {
        // The client's own compatibility check blocks the calling thread on a health check: skip it, and let
        // the existence check below be the first (async, bounded) contact with the server.
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .skip_compatibility_check()
            .build()
            .map_err(remote_error("building the client"))?;
        let store = Self {
            client,
            collection: collection.to_owned(),
        };
        store.ensure_collection().await?;
        Ok(store)
    }

    async fn ensure_collection(&self) -> Result<(), MemoryError> {
        let exists = |action: &'static str| async move {
            self.client
                .collection_exists(&self.collection)
                .await
                .map_err(remote_error(action))
        };
        if exists("checking the collection").await? {
            return self.check_vectors().await;
        }
        let created = self
            .client
            .create_collection(
                CreateCollectionBuilder::new(&self.collection).vectors_config(
                    VectorParamsBuilder::new(EMBEDDING_DIM as u64, RemoteDistance::Cosine),
                ),
            )
            .await;
        if let Err(error) = created {
            // Another agent may have created it in the meantime; only then is the failure harmless.
            if !exists("checking the collection after a failed create").await? {
                return Err(remote_error("creating the collection")(error));
            }
            return self.check_vectors().await;
        }
        for key in [OWNER_KEY, TASK_ID_KEY] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        key,
                        FieldType::Keyword,
                    )
                    .wait(true),
                )
                .await
                .map_err(remote_error("creating a payload index"))?;
        }
        Ok(())
    }

    /// Refuses a collection whose vectors are not [`EMBEDDING_DIM`]-dimensional cosine ones (made by another
    /// model, or by hand): searching it would fail on every tick, or worse, rank by the wrong measure.
    async fn check_vectors(&self) -> Result<(), MemoryError> {
        use qdrant_client::qdrant::vectors_config::Config as VectorsKind;
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(remote_error("reading the collection's configuration"))?;
        let vectors = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config);
        let found = match vectors {
            Some(VectorsKind::Params(params))
                if params.size == EMBEDDING_DIM as u64
                    && params.distance == RemoteDistance::Cosine as i32 =>
            {
                return Ok(());
            }
            Some(VectorsKind::Params(params)) => format!(
                "({}, {})",
                params.size,
                RemoteDistance::try_from(params.distance).map_or_else(
                    |_| params.distance.to_string(),
                    |d| d.as_str_name().to_owned()
                )
            ),
            Some(VectorsKind::ParamsMap(map)) => {
                format!("named {:?}", map.map.keys().collect::<Vec<_>>())
            }
            None => "(none)".to_owned(),
        };
        Err(MemoryError::IncompatibleCollection {
            collection: self.collection.clone(),
            found,
        })
    }
}

impl VectorStore for RemoteStore {
    async fn upsert(
        &self,
        owner: &str,
        task_id: Uuid,
        items: Vec<(String, Vec<f32>)>,
    ) -> Result<(), MemoryError> {
        if items.is_empty() {
            return Ok(());
        }
        let points = items
            .into_iter()
            .map(|(text, vector)| {
                check_dimension(&vector)?;
                let payload = qdrant_client::Payload::from([
                    (OWNER_KEY, owner.into()),
                    (TASK_ID_KEY, task_id.to_string().into()),
                    (TEXT_KEY, text.into()),
                ]);
                Ok(PointStruct::new(
                    Uuid::new_v4().to_string(),
                    vector,
                    payload,
                ))
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(remote_error("upserting points"))?;
        Ok(())
    }

    async fn search(
        &self,
        owner: &str,
        task_id: Uuid,
        vector: Vec<f32>,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        check_dimension(&vector)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = RemoteFilter::must([
            RemoteCondition::matches(OWNER_KEY, owner.to_owned()),
            RemoteCondition::matches(TASK_ID_KEY, task_id.to_string()),
        ]);
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&self.collection)
                    .query(vector)
                    .filter(filter)
                    .limit(limit as u64)
                    .with_payload(true),
            )
            .await
            .map_err(remote_error("searching"))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|mut point| match point.payload.remove(TEXT_KEY)?.kind? {
                Kind::StringValue(text) => Some(Recalled {
                    text,
                    score: point.score,
                }),
                _ => None,
            })
            .collect())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::test_support::embedder;

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|t| t.to_string()).collect()
    }

    fn recalled_texts(recalled: &[Recalled]) -> Vec<&str> {
        recalled.iter().map(|r| r.text.as_str()).collect()
    }

    /// What both stores must do alike. Each function runs once against each store: see [`contract_tests`]
    /// and the `edge` and `remote` modules below.
    mod contract {
        use super::*;

        pub(super) async fn recall_returns_the_semantically_closest_text_first<S: VectorStore>(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4();
            memory
                .remember(
                    "alice",
                    task,
                    texts(&[
                        "bananas are yellow",
                        "the capital of France is Paris",
                        "my printer is out of ink",
                    ]),
                )
                .await
                .unwrap();

            let recalled = memory
                .recall(
                    "alice",
                    task,
                    texts(&["Which city is France's capital?"]),
                    3,
                )
                .await
                .unwrap();

            assert_eq!(recalled.len(), 3, "{recalled:?}");
            assert_eq!(
                recalled[0].text, "the capital of France is Paris",
                "{recalled:?}"
            );
            assert!(recalled[0].score > recalled[1].score, "{recalled:?}");
        }

        pub(super) async fn one_owners_recall_never_returns_another_owners_memories<
            S: VectorStore,
        >(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4(); // the same task id for both owners: only the owner tells them apart
            memory
                .remember("alice", task, texts(&["alice's secret is 4242"]))
                .await
                .unwrap();
            memory
                .remember("bob", task, texts(&["bob likes tea"]))
                .await
                .unwrap();

            let bob = memory
                .recall("bob", task, texts(&["alice's secret is 4242"]), 10)
                .await
                .unwrap();
            assert_eq!(recalled_texts(&bob), ["bob likes tea"]);

            let alice = memory
                .recall("alice", task, texts(&["alice's secret is 4242"]), 10)
                .await
                .unwrap();
            assert_eq!(recalled_texts(&alice), ["alice's secret is 4242"]);

            let nobody = memory
                .recall("carol", task, texts(&["alice's secret is 4242"]), 10)
                .await
                .unwrap();
            assert!(nobody.is_empty(), "{nobody:?}");
        }

        pub(super) async fn two_tasks_of_one_owner_do_not_see_each_others_memories<
            S: VectorStore,
        >(
            memory: &Memory<S>,
        ) {
            let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
            memory
                .remember(
                    "alice",
                    first,
                    texts(&["the first task found a recipe for bread"]),
                )
                .await
                .unwrap();
            memory
                .remember(
                    "alice",
                    second,
                    texts(&["the second task found a train timetable"]),
                )
                .await
                .unwrap();

            let query = texts(&["the first task found a recipe for bread"]);
            let recalled = memory.recall("alice", second, query, 10).await.unwrap();
            assert_eq!(
                recalled_texts(&recalled),
                ["the second task found a train timetable"]
            );
        }

        pub(super) async fn recall_merges_hits_from_several_queries_without_duplicates<
            S: VectorStore,
        >(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4();
            memory
                .remember(
                    "alice",
                    task,
                    texts(&["cats purr when content", "dogs bark at strangers"]),
                )
                .await
                .unwrap();

            let recalled = memory
                .recall(
                    "alice",
                    task,
                    texts(&["why do cats purr", "do cats purr", "barking dogs"]),
                    10,
                )
                .await
                .unwrap();

            let mut found = recalled_texts(&recalled);
            found.sort_unstable();
            assert_eq!(found, ["cats purr when content", "dogs bark at strangers"]);
            assert!(
                recalled.windows(2).all(|w| w[0].score >= w[1].score),
                "{recalled:?}"
            );
        }

        pub(super) async fn remember_and_recall_stores_the_writes_and_finds_them_with_older_memories<
            S: VectorStore,
        >(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4();
            memory
                .remember("alice", task, texts(&["the museum opens at nine"]))
                .await
                .unwrap();

            let recalled = memory
                .remember_and_recall(
                    "alice",
                    task,
                    texts(&["the museum closes at six"]),
                    texts(&["museum opening hours"]),
                    5,
                )
                .await
                .unwrap();

            let mut found = recalled_texts(&recalled);
            found.sort_unstable();
            assert_eq!(
                found,
                ["the museum closes at six", "the museum opens at nine"]
            );
            let later = memory
                .recall("alice", task, texts(&["when does the museum close"]), 1)
                .await
                .unwrap();
            assert_eq!(recalled_texts(&later), ["the museum closes at six"]);
        }

        pub(super) async fn recall_returns_at_most_the_limit<S: VectorStore>(memory: &Memory<S>) {
            let task = Uuid::new_v4();
            memory
                .remember(
                    "alice",
                    task,
                    texts(&["one apple", "two pears", "three plums", "four figs"]),
                )
                .await
                .unwrap();
            let recalled = memory
                .recall("alice", task, texts(&["fruit", "numbers"]), 2)
                .await
                .unwrap();
            assert_eq!(recalled.len(), 2, "{recalled:?}");
        }

        pub(super) async fn blank_and_repeated_texts_are_remembered_once<S: VectorStore>(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4();
            memory
                .remember(
                    "alice",
                    task,
                    texts(&["  ", "", "the sky is blue", "the sky is blue "]),
                )
                .await
                .unwrap();
            let hits = memory
                .store()
                .search(
                    "alice",
                    task,
                    embedder()
                        .await
                        .embed(texts(&["sky"]))
                        .await
                        .unwrap()
                        .remove(0),
                    10,
                )
                .await
                .unwrap();
            assert_eq!(recalled_texts(&hits), ["the sky is blue"]);
        }

        /// Checked before anything reaches the store (for the server, before anything is sent).
        pub(super) async fn a_vector_of_the_wrong_size_is_refused<S: VectorStore>(
            memory: &Memory<S>,
        ) {
            let task = Uuid::new_v4();
            let error = memory
                .store()
                .upsert("alice", task, vec![("text".into(), vec![0.5; 3])])
                .await
                .unwrap_err();
            assert!(
                matches!(error, MemoryError::Dimension { actual: 3 }),
                "{error:?}"
            );
            let error = memory
                .store()
                .search("alice", task, vec![0.5; 385], 1)
                .await
                .unwrap_err();
            assert!(
                matches!(error, MemoryError::Dimension { actual: 385 }),
                "{error:?}"
            );
        }
    }

    /// Declares one `#[tokio::test]` per contract function, each on a fresh memory from `$memory()` (which
    /// returns the memory and whatever must live as long as it).
    macro_rules! contract_tests {
        ($memory:ident) => {
            contract_tests!($memory:
                a_vector_of_the_wrong_size_is_refused,
            recall_returns_the_semantically_closest_text_first,
            one_owners_recall_never_returns_another_owners_memories,
            two_tasks_of_one_owner_do_not_see_each_others_memories,
            recall_merges_hits_from_several_queries_without_duplicates,
            remember_and_recall_stores_the_writes_and_finds_them_with_older_memories,
            recall_returns_at_most_the_limit,
            blank_and_repeated_texts_are_remembered_once,
            );
        };
        ($memory:ident: $($name:ident,)+) => {$(
            #[tokio::test]
            async fn $name() {
                let (memory, _keep) = $memory().await;
                super::contract::$name(&memory).await;
                // Before what it keeps alive: a shard flushes into its directory when dropped.
                drop(memory);
            }
        )+};
    }

    /// The embedded qdrant-edge shard.
    mod edge {
        use super::*;

        async fn memory_in(dir: &Path) -> Memory<EdgeStore> {
            Memory::new(embedder().await, EdgeStore::open(dir).await.unwrap())
        }

        async fn memory() -> (Memory<EdgeStore>, tempfile::TempDir) {
            let dir = tempfile::tempdir().unwrap();
            (memory_in(dir.path()).await, dir)
        }

        contract_tests!(memory);

        /// Remembers a text, lets the shard go (closed, or just dropped), and recalls it from a new one.
        async fn remembered_across_reopening(close: bool) {
            let dir = tempfile::tempdir().unwrap();
            let task = Uuid::new_v4();
            let memory = memory_in(dir.path()).await;
            memory
                .remember("alice", task, texts(&["the launch code is blue"]))
                .await
                .unwrap();
            if close {
                memory.into_store().close().await.unwrap();
            } else {
                drop(memory);
            }

            let reopened = memory_in(dir.path()).await;
            let recalled = reopened
                .recall("alice", task, texts(&["launch code"]), 5)
                .await
                .unwrap();
            assert_eq!(recalled_texts(&recalled), ["the launch code is blue"]);
        }

        #[tokio::test]
        async fn memories_survive_closing_and_reopening_the_shard() {
            remembered_across_reopening(true).await;
        }

        #[tokio::test]
        async fn memories_survive_a_plain_drop_of_the_shard() {
            remembered_across_reopening(false).await;
        }

        #[tokio::test]
        async fn a_shard_made_for_other_vectors_is_refused_on_open() {
            let dir = tempfile::tempdir().unwrap();
            let config = EdgeConfig {
                vectors: HashMap::from([(
                    String::new(),
                    EdgeVectorParams {
                        size: 8,
                        distance: Distance::Dot,
                        on_disk: None,
                        multivector_config: None,
                        datatype: None,
                        quantization_config: None,
                        hnsw_config: None,
                    },
                )]),
                ..EdgeConfig::default()
            };
            drop(EdgeShard::new(dir.path(), config).unwrap());

            let error = EdgeStore::open(dir.path()).await.unwrap_err();
            assert!(
                matches!(error, MemoryError::Incompatible { .. }),
                "{error:?}"
            );
        }

        #[tokio::test]
        async fn opening_creates_the_shard_directory_when_it_is_missing() {
            let dir = tempfile::tempdir().unwrap();
            let nested = dir.path().join("qdrant").join("agent-1");
            let store = EdgeStore::open(&nested).await.unwrap();
            assert!(nested.join("edge_config.json").is_file());
            store.close().await.unwrap();
        }
    }

    /// A Qdrant server, spoken to over gRPC by qdrant-client: the Qdrant emulator of
    /// `scripts/ensure-qdrant-emulator.sh` (no Qdrant server can be installed here; the emulator is Qdrant's
    /// own Python reference implementation behind Qdrant's own gRPC definitions).
    mod remote {
        use super::*;

        /// The emulator's address: `QDRANT_EMULATOR_URL`, as `scripts/test.sh` exports it.
        fn emulator_url() -> String {
            std::env::var("QDRANT_EMULATOR_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:16334".to_owned())
        }

        /// A fresh collection name, so tests never share one.
        fn new_collection() -> String {
            format!("test_memory_{}", Uuid::new_v4().simple())
        }

        async fn connect(collection: &str) -> RemoteStore {
            RemoteStore::connect(&emulator_url(), None, collection)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot reach the Qdrant emulator at {}: {} (start it with \
                         scripts/ensure-qdrant-emulator.sh)",
                        emulator_url(),
                        shared::errors::chain(&e)
                    )
                })
        }

        async fn memory() -> (Memory<RemoteStore>, ()) {
            let store = connect(&new_collection()).await;
            (Memory::new(embedder().await, store), ())
        }

        contract_tests!(memory);

        #[tokio::test]
        async fn connecting_creates_a_cosine_collection_of_the_embedding_size_and_agents_may_race()
        {
            let collection = new_collection();
            let (first, second) = tokio::join!(connect(&collection), connect(&collection));
            drop(second);
            let info = first
                .client
                .collection_info(&collection)
                .await
                .unwrap()
                .result
                .unwrap();
            let params = info
                .config
                .unwrap()
                .params
                .unwrap()
                .vectors_config
                .unwrap()
                .config;
            let Some(qdrant_client::qdrant::vectors_config::Config::Params(params)) = params else {
                panic!("unnamed vector parameters expected, got {params:?}");
            };
            assert_eq!(params.size, EMBEDDING_DIM as u64);
            assert_eq!(params.distance, RemoteDistance::Cosine as i32);
            // A third agent finds it and keeps it.
            connect(&collection).await;
        }

        #[tokio::test]
        async fn a_collection_made_for_other_vectors_is_refused_on_connect() {
            let collection = new_collection();
            let client = Qdrant::from_url(&emulator_url()).build().unwrap();
            client
                .create_collection(
                    CreateCollectionBuilder::new(&collection)
                        .vectors_config(VectorParamsBuilder::new(8, RemoteDistance::Dot)),
                )
                .await
                .unwrap();

            let error = RemoteStore::connect(&emulator_url(), None, &collection)
                .await
                .unwrap_err();
            assert!(
                matches!(&error, MemoryError::IncompatibleCollection { found, .. } if found == "(8, Dot)"),
                "{error:?}"
            );
        }

        #[tokio::test]
        async fn store_open_with_a_url_uses_the_server_and_not_the_disk() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(Some(&emulator_url()), None, &dir.path().join("unused"))
                .await
                .unwrap();
            assert!(matches!(store, Store::Remote(_)), "{store:?}");
            assert!(!dir.path().join("unused").exists());
        }

        /// An emulator of its own that requires an API key, stopped when dropped.
        struct KeyedEmulator {
            url: String,
            _process: tokio::process::Child,
        }

        impl KeyedEmulator {
            async fn start(key: &str) -> Self {
                let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let process = tokio::process::Command::new(root.join(".venv/bin/python"))
                    .arg(root.join("scripts/qdrant-emulator/server.py"))
                    .args(["--port", &port.to_string()])
                    .env("QDRANT_EMULATOR_API_KEY", key)
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect(
                        "the Qdrant emulator needs .venv: run scripts/ensure-qdrant-emulator.sh",
                    );
                let url = format!("http://127.0.0.1:{port}");
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the keyed emulator never listened"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Self {
                    url,
                    _process: process,
                }
            }
        }

        #[tokio::test]
        async fn the_api_key_is_sent_and_a_missing_or_wrong_key_is_refused() {
            let emulator = KeyedEmulator::start("test-key-7c1d").await;
            let collection = new_collection();

            for key in [None, Some("wrong-key".to_owned())] {
                let error = RemoteStore::connect(&emulator.url, key.clone(), &collection)
                    .await
                    .unwrap_err();
                let message = shared::errors::chain(&error);
                assert!(
                    message.contains("API key") || message.contains("Unauthenticated"),
                    "key {key:?}: {message}"
                );
                assert!(!message.contains("test-key-7c1d"), "{message}");
            }

            let store =
                RemoteStore::connect(&emulator.url, Some("test-key-7c1d".into()), &collection)
                    .await
                    .unwrap();
            let memory = Memory::new(embedder().await, store);
            let task = Uuid::new_v4();
            memory
                .remember("alice", task, texts(&["the key works"]))
                .await
                .unwrap();
            let recalled = memory
                .recall("alice", task, texts(&["does the key work"]), 5)
                .await
                .unwrap();
            assert_eq!(recalled_texts(&recalled), ["the key works"]);
        }

        #[tokio::test]
        async fn an_unreachable_qdrant_server_fails_fast_instead_of_hanging() {
            // Nothing listens on port 1.
            let started = std::time::Instant::now();
            let result =
                Store::open(Some("http://127.0.0.1:1"), None, Path::new("/nonexistent")).await;
            let error = result.unwrap_err();
            assert!(matches!(error, MemoryError::Remote { .. }), "{error:?}");
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "took {:?}",
                started.elapsed()
            );
        }
    }
}
