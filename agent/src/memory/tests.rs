//! The memory contract, run against both stores, and each store's own tests.

use super::*;
use crate::embedding::test_support::embedder;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    CreateCollectionBuilder, Distance as RemoteDistance, VectorParamsBuilder,
};
use qdrant_edge::{Distance, EdgeConfig, EdgeShard, EdgeVectorParams};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

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

    pub(super) async fn one_owners_recall_never_returns_another_owners_memories<S: VectorStore>(
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

    pub(super) async fn two_tasks_of_one_owner_do_not_see_each_others_memories<S: VectorStore>(
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

    pub(super) async fn deleting_a_task_forgets_its_points_and_no_others<S: VectorStore>(
        memory: &Memory<S>,
    ) {
        let (task, other) = (Uuid::new_v4(), Uuid::new_v4());
        memory
            .remember("alice", task, texts(&["forget me", "and me"]))
            .await
            .unwrap();
        memory
            .remember("alice", other, texts(&["keep me"]))
            .await
            .unwrap();
        memory
            .remember("bob", task, texts(&["bob's own"]))
            .await
            .unwrap();
        assert_eq!(memory.store().count_task("alice", task).await.unwrap(), 2);

        memory.store().delete_task("alice", task).await.unwrap();

        assert_eq!(memory.store().count_task("alice", task).await.unwrap(), 0);
        assert_eq!(memory.store().count_task("alice", other).await.unwrap(), 1);
        assert_eq!(memory.store().count_task("bob", task).await.unwrap(), 1);
        // Deleting again is harmless.
        memory.store().delete_task("alice", task).await.unwrap();
    }

    pub(super) async fn points_written_before_the_cutoff_are_deleted_and_later_ones_kept<
        S: VectorStore,
    >(
        memory: &Memory<S>,
    ) {
        let task = Uuid::new_v4();
        memory
            .remember("alice", task, texts(&["an old memory"]))
            .await
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        memory
            .store()
            .delete_written_before(now - 60)
            .await
            .unwrap();
        assert_eq!(memory.store().count_task("alice", task).await.unwrap(), 1);
        memory.store().delete_written_before(now + 2).await.unwrap();
        assert_eq!(memory.store().count_task("alice", task).await.unwrap(), 0);
    }

    /// Checked before anything reaches the store (for the server, before anything is sent).
    pub(super) async fn a_vector_of_the_wrong_size_is_refused<S: VectorStore>(memory: &Memory<S>) {
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
            deleting_a_task_forgets_its_points_and_no_others,
            points_written_before_the_cutoff_are_deleted_and_later_ones_kept,
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
        std::env::var("QDRANT_EMULATOR_URL").unwrap_or_else(|_| "http://127.0.0.1:16334".to_owned())
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
    async fn connecting_creates_a_cosine_collection_of_the_embedding_size_and_agents_may_race() {
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
                .expect("the Qdrant emulator needs .venv: run scripts/ensure-qdrant-emulator.sh");
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

        let store = RemoteStore::connect(&emulator.url, Some("test-key-7c1d".into()), &collection)
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
        let result = Store::open(Some("http://127.0.0.1:1"), None, Path::new("/nonexistent")).await;
        let error = result.unwrap_err();
        assert!(matches!(error, MemoryError::Remote { .. }), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
    }
}
