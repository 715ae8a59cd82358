//! The fleet under least privilege: a gateway and an agent in process, each on its own Redis and RabbitMQ
//! users (the rules of `docker/euglena-users.sh`), complete a task end to end through the HTTP API while
//! the metrics sidecar's user reads the fleet; nothing any of them sends is refused.

use euglena_tests::privilege::Accounts;
use jsonwebtoken::{EncodingKey, Header};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use shared::settings::Reader;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs `ticks` ticks (the mandate is ignored), recording each with a checkpoint, then completes.
struct Ticking {
    ticks: u32,
}

impl agent::TaskExecutor for Ticking {
    async fn execute(
        &self,
        task: agent::TaskContext,
        reporter: agent::TickReporter,
        _cancel: CancellationToken,
    ) -> Result<shared::task::TaskResult, agent::ExecutionError> {
        for tick in 1..=self.ticks {
            tokio::time::sleep(Duration::from_millis(50)).await;
            reporter.record(agent::Progress {
                event: shared::api::TickEvent {
                    tick,
                    action: "THINK".into(),
                    ..shared::api::TickEvent::default()
                },
                state: Some(json!({"tick": tick})),
                ..agent::Progress::default()
            });
        }
        Ok(shared::task::TaskResult {
            success: true,
            deliverables: vec![format!("done: {}", task.message.mandate)],
            summary: "done".into(),
            sources: Vec::new(),
            ticks_used: self.ticks,
        })
    }
}

#[tokio::test]
async fn privilege_a_gateway_and_an_agent_on_their_own_users_complete_a_task() {
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("e2e:{id}:");
    let queue = format!("e2e.{id}");
    // The broker's set-up declares the topology (the components' users may not declare anything).
    let admin = Connection::connect(
        euglena_tests::cleanup::RABBITMQ_URL,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    shared::queue::Topology::new(queue.clone(), 3)
        .declare(&admin.create_channel().await.unwrap())
        .await
        .unwrap();
    let _ = admin.close(200, "declared".into()).await;
    let accounts = Accounts::create(&prefix, &queue).await.unwrap();
    let secret = format!("secret-{id}");
    let common: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("HEALTH_PORT", "0"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("AGENT_INPUT_QUEUE", queue.as_str()),
        ("SUPABASE_JWT_SECRET", secret.as_str()),
        ("AGENT_STATUS_TIME", "0.5"),
        ("WORKER_TTL_SECONDS", "5"),
        ("MEMORY_ENABLED", "false"),
        ("STARTUP_TIMEOUT_SECONDS", "10"),
        ("STARTUP_DEADLINE_SECONDS", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let with = |account: &euglena_tests::privilege::Account| {
        let mut env = common.clone();
        env.insert("REDIS_URL".into(), account.redis_url.clone());
        env.insert("RABBITMQ_URL".into(), account.rabbitmq_url.clone());
        env
    };

    let stop = CancellationToken::new();
    let gateway = gateway::Application::build(
        gateway::Settings::from_source(with(&accounts.gateway)).unwrap(),
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", gateway.port());
    tokio::spawn(gateway.run_until_stopped(stop.clone().cancelled_owned()));
    let settings = agent::AgentSettings::from_source(&Reader::new(with(&accounts.agent))).unwrap();
    let agent = agent::Application::build(settings, Ticking { ticks: 3 })
        .await
        .unwrap();
    let agent = tokio::spawn(agent.run_until_stopped(stop.clone().cancelled_owned()));

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "alice", "aud": "authenticated", "role": "authenticated",
                "exp": now + 3600, "iat": now}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/tasks"))
        .bearer_auth(&token)
        .json(&json!({"mandate": "least privilege, end to end", "max_ticks": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = created["correlation_id"]
        .as_str()
        .expect("202 with an id")
        .to_owned();
    let (status, stream) = euglena_tests::sse::open(
        &client,
        &format!("{base}/tasks/{task}/events"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let frames = stream
        .unwrap()
        .until("completed", Duration::from_secs(30))
        .await;
    let ticks = frames.iter().filter(|f| f.event == "tick").count();
    assert_eq!(ticks, 3, "{frames:?}");

    let record: Value = client
        .get(format!("{base}/tasks/{task}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["result"]["deliverables"][0],
        "done: least privilege, end to end"
    );
    // The agent is live, as the sidecar's user reads the fleet.
    let mut sidecar = redis::Client::open(accounts.sidecar.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fleet = shared::presence::read_fleet(
        &mut sidecar,
        &shared::Keys::new(prefix.clone()),
        chrono::Utc::now().timestamp_millis(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(fleet.agents, 1);
    let count: Value = client
        .get(format!("{base}/agents/count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["count"], 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        accounts.redis_denials().await.unwrap(),
        Vec::<String>::new(),
        "nothing the gateway, the agent or the sidecar's user sent was refused"
    );
    drop(accounts);
    euglena_tests::cleanup::remove_test_state(&queue, &prefix);
}
