//! The server store: a collection on a Qdrant server, over gRPC.

use super::{
    MemoryError, OWNER_KEY, Recalled, TASK_ID_KEY, TEXT_KEY, VectorStore, WRITTEN_AT_KEY,
    check_dimension,
};
use crate::embedding::EMBEDDING_DIM;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition as RemoteCondition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance as RemoteDistance, FieldType,
    Filter as RemoteFilter, PointStruct, QueryPointsBuilder, Range, UpsertPointsBuilder,
    VectorParamsBuilder, value::Kind,
};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// A collection on a Qdrant server, reached over gRPC (`QDRANT_URL`, e.g. `http://qdrant:6334`).
#[derive(Clone)]
pub struct RemoteStore {
    pub(super) client: Qdrant,
    collection: String,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

/// The points of `owner`'s task `task_id`.
fn task_filter(owner: &str, task_id: Uuid) -> RemoteFilter {
    RemoteFilter::must([
        RemoteCondition::matches(OWNER_KEY, owner.to_owned()),
        RemoteCondition::matches(TASK_ID_KEY, task_id.to_string()),
    ])
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
        for (key, kind) in [
            (OWNER_KEY, FieldType::Keyword),
            (TASK_ID_KEY, FieldType::Keyword),
            (WRITTEN_AT_KEY, FieldType::Integer),
        ] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&self.collection, key, kind).wait(true),
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
        let written_at = super::unix_now();
        let points = items
            .into_iter()
            .map(|(text, vector)| {
                check_dimension(&vector)?;
                let payload = qdrant_client::Payload::from([
                    (OWNER_KEY, owner.into()),
                    (TASK_ID_KEY, task_id.to_string().into()),
                    (TEXT_KEY, text.into()),
                    (WRITTEN_AT_KEY, written_at.into()),
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
        let filter = task_filter(owner, task_id);
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

    async fn delete_task(&self, owner: &str, task_id: Uuid) -> Result<(), MemoryError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(task_filter(owner, task_id))
                    .wait(true),
            )
            .await
            .map_err(remote_error("deleting a task's points"))?;
        Ok(())
    }

    async fn delete_written_before(&self, cutoff: i64) -> Result<(), MemoryError> {
        let old = RemoteFilter::must([RemoteCondition::range(
            WRITTEN_AT_KEY,
            Range {
                lt: Some(cutoff as f64),
                ..Range::default()
            },
        )]);
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(old)
                    .wait(true),
            )
            .await
            .map_err(remote_error("deleting old points"))?;
        Ok(())
    }

    async fn count_task(&self, owner: &str, task_id: Uuid) -> Result<u64, MemoryError> {
        let response = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(task_filter(owner, task_id))
                    .exact(true),
            )
            .await
            .map_err(remote_error("counting points"))?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}
