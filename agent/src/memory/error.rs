//! What can go wrong remembering, recalling or forgetting.

use crate::embedding::{EMBEDDING_DIM, EmbeddingError};
use std::path::PathBuf;

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
