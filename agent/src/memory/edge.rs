//! The embedded store: a qdrant-edge shard on local disk, in the agent's own process.

use super::{
    MemoryError, OWNER_KEY, Recalled, TASK_ID_KEY, TEXT_KEY, VectorStore, WRITTEN_AT_KEY,
    check_dimension,
};
use crate::embedding::EMBEDDING_DIM;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldCondition, FieldIndexOperations, Filter, JsonPath, Match, NamedQuery, Payload,
    PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, QueryRequest, Range, ScoringQuery, UpdateOperation,
    ValueVariants, VectorInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

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

        let shard = if Self::exists_in(&path) {
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
            for (key, kind) in [
                (OWNER_KEY, PayloadSchemaType::Keyword),
                (TASK_ID_KEY, PayloadSchemaType::Keyword),
                (WRITTEN_AT_KEY, PayloadSchemaType::Integer),
            ] {
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: json_path(key),
                            field_schema: Some(PayloadFieldSchema::FieldType(kind)),
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

    /// Whether `path` holds a shard (qdrant-edge writes its config file first when it creates one).
    pub fn exists_in(path: &Path) -> bool {
        path.join("edge_config.json").is_file()
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

/// The points of `owner`'s task `task_id`.
fn task_filter(owner: &str, task_id: Uuid) -> Filter {
    Filter {
        must: Some(vec![
            match_keyword(OWNER_KEY, owner.to_owned()),
            match_keyword(TASK_ID_KEY, task_id.to_string()),
        ]),
        ..Filter::default()
    }
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
        let written_at = super::unix_now();
        let points = items
            .into_iter()
            .map(|(text, vector)| {
                check_dimension(&vector)?;
                let payload = serde_json::Map::from_iter([
                    (OWNER_KEY.to_owned(), owner.into()),
                    (TASK_ID_KEY.to_owned(), task_id.to_string().into()),
                    (TEXT_KEY.to_owned(), text.into()),
                    (WRITTEN_AT_KEY.to_owned(), written_at.into()),
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
            filter: Some(task_filter(owner, task_id)),
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

    async fn delete_task(&self, owner: &str, task_id: Uuid) -> Result<(), MemoryError> {
        let operation = UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(
            task_filter(owner, task_id),
        ));
        self.blocking("deleting a task's points", move |shard| {
            shard.update(operation)
        })
        .await
    }

    async fn delete_written_before(&self, cutoff: i64) -> Result<(), MemoryError> {
        let old = Filter {
            must: Some(vec![Condition::Field(FieldCondition::new_range(
                json_path(WRITTEN_AT_KEY),
                Range {
                    lt: Some(qdrant_edge::external::ordered_float::OrderedFloat(
                        cutoff as f64,
                    )),
                    ..Range::default()
                },
            ))]),
            ..Filter::default()
        };
        let operation = UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(old));
        self.blocking("deleting old points", move |shard| shard.update(operation))
            .await
    }

    async fn count_task(&self, owner: &str, task_id: Uuid) -> Result<u64, MemoryError> {
        let request = CountRequest {
            filter: Some(task_filter(owner, task_id)),
            exact: true,
        };
        let count = self
            .blocking("counting points", move |shard| shard.count(request))
            .await?;
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }
}
