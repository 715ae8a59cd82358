//! Making sure of the queue topology against the real broker, with an administrator's credentials (the
//! components' own users may not declare anything: see `privilege`): a missing topology is declared whole, an
//! existing one is only checked, a task queue created by an earlier release (dead-lettering through the
//! default exchange) is kept and keeps dead-lettering, and a queue with another delivery limit is refused.

use crate::helpers::{poll, rabbitmq_url};
use anyhow::Result;
use lapin::options::{
    BasicGetOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection, ConnectionProperties};
use shared::queue::{Ensured, Origin, PRECONDITION_FAILED, Topology, TopologyError, reply_code};
use shared::task::TaskMessage;
use std::time::Duration;
use uuid::Uuid;

/// Deletes `topology`'s queues and exchanges.
async fn remove(connection: &Connection, topology: &Topology) -> Result<()> {
    let channel = connection.create_channel().await?;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

async fn ready(connection: &Connection, queue: &str) -> Result<u32> {
    let channel = connection.create_channel().await?;
    Ok(shared::queue::ready_messages(&channel, queue).await?)
}

fn message() -> TaskMessage {
    TaskMessage {
        correlation_id: Uuid::new_v4(),
        mandate: "anything".into(),
        max_ticks: 1,
        owner: "user-1".into(),
        created_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_missing_topology_is_declared_whole_and_an_existing_one_only_checked() -> Result<()> {
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default()).await?;
    let topology = Topology::new(format!("test.topology.{}", Uuid::new_v4().simple()), 3);

    assert_eq!(topology.ensure(&connection).await?, Ensured::Declared);
    assert_eq!(topology.ensure(&connection).await?, Ensured::Present);

    // Published through its exchange, a task reaches the task queue; rejected, it reaches the DLQ through
    // the dead-letter exchange.
    let channel = connection.create_channel().await?;
    publish_then_dead_letter(&connection, &channel, &topology).await?;
    remove(&connection, &topology).await
}

#[tokio::test]
async fn a_task_queue_of_an_earlier_release_is_kept_and_keeps_dead_lettering() -> Result<()> {
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default()).await?;
    let topology = Topology::new(format!("test.topology.{}", Uuid::new_v4().simple()), 3);
    // As earlier releases declared it: the queues only, the task queue dead-lettering through the default
    // exchange.
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for (queue, arguments) in [
        (topology.parked_queue(), topology.parked_queue_arguments()),
        (topology.dead_letter_queue(), FieldTable::default()),
        (topology.queue.clone(), topology.legacy_queue_arguments()),
    ] {
        channel
            .queue_declare(queue.as_str().into(), durable, arguments)
            .await?;
    }

    assert_eq!(
        topology.ensure(&connection).await?,
        Ensured::DeclaredBesideLegacyQueue
    );
    assert_eq!(topology.ensure(&connection).await?, Ensured::Present);

    publish_then_dead_letter(&connection, &channel, &topology).await?;

    // A delivery limit other than the queue's is refused when the topology is declared, as it always
    // was (here a missing exchange makes it declare).
    let other = Topology::new(topology.queue.clone(), 5);
    let channel = connection.create_channel().await?;
    channel
        .exchange_delete(
            other.input_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    let refused = other
        .ensure(&connection)
        .await
        .expect_err("another delivery limit");
    assert!(
        matches!(&refused, TopologyError::Broker(e) if reply_code(e) == Some(PRECONDITION_FAILED)),
        "{refused}"
    );
    remove(&connection, &topology).await
}

/// Publishes a task through the topology (the broker confirms it routed), takes it from the task queue and
/// rejects it, then waits until it is in the DLQ.
async fn publish_then_dead_letter(
    connection: &Connection,
    channel: &lapin::Channel,
    topology: &Topology,
) -> Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = topology
        .publish(channel, &message(), &Origin::default())
        .await?
        .await?;
    assert!(matches!(confirm, Confirmation::Ack(None)), "routed");
    let got = channel
        .basic_get(topology.queue.as_str().into(), BasicGetOptions::default())
        .await?
        .expect("the task is in the task queue");
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await?;
    let dlq = topology.dead_letter_queue();
    poll(Duration::from_secs(5), || async {
        Ok((ready(connection, &dlq).await? == 1).then_some(()))
    })
    .await?;
    Ok(())
}
