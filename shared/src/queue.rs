//! The RabbitMQ topology, declared identically by every service that touches it.
//!
//! `agent.mandates` is a durable quorum queue whose `x-delivery-limit` dead-letters a message that keeps
//! failing into `agent.mandates.dlq` through the default exchange. The agents' dead-letter sweeper empties
//! that DLQ into the parking queue `agent.mandates.dlq.parked`, where operators inspect dead letters. RabbitMQ
//! refuses a re-declaration with different arguments, so the arguments are built in exactly one place:
//! [`Topology::queue_arguments`] and [`Topology::parked_queue_arguments`].

use crate::task::TaskMessage;
use crate::telemetry::{TRACEPARENT, TraceParent};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use uuid::Uuid;

/// The default task queue name.
pub const DEFAULT_QUEUE: &str = "agent.mandates";

/// How many dead letters the parking queue keeps at most; past it the oldest are dropped.
pub const PARKED_MAX_LENGTH: i64 = 100_000;

/// How long the parking queue keeps a dead letter: 14 days, in milliseconds.
pub const PARKED_MESSAGE_TTL_MS: i64 = 14 * 24 * 60 * 60 * 1_000;

/// The parking queue of the dead-letter queue `dead_letter_queue`: `{dead_letter_queue}.parked`.
pub fn parked_queue_of(dead_letter_queue: &str) -> String {
    format!("{dead_letter_queue}.parked")
}

/// The AMQP header carrying the HTTP request id from the gateway to the agent's task span.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where a task message comes from, carried in its headers: the id of the HTTP request that created the
/// task (`x-request-id`) and its W3C trace context (`traceparent`), which the agent's task span continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The HTTP request id.
    pub request_id: Option<String>,
    /// The trace context the task's span continues.
    pub trace: Option<TraceParent>,
}

/// Names and limits of the task queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The task queue.
    pub queue: String,
    /// Deliveries before RabbitMQ dead-letters a message.
    pub max_deliveries: u32,
}

impl Topology {
    /// The topology for `queue` with `max_deliveries`.
    pub fn new(queue: impl Into<String>, max_deliveries: u32) -> Self {
        Self {
            queue: queue.into(),
            max_deliveries,
        }
    }

    /// `{queue}.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// `{queue}.dlq.parked`: where the dead-letter sweeper moves every dead letter it has handled.
    pub fn parked_queue(&self) -> String {
        parked_queue_of(&self.dead_letter_queue())
    }

    /// The parking queue's arguments: at most [`PARKED_MAX_LENGTH`] messages, the oldest dropped first,
    /// each kept [`PARKED_MESSAGE_TTL_MS`] at most.
    ///
    /// The sweeper parks every dead letter, and nothing else takes them out: unbounded, the queue would
    /// grow for as long as tasks keep dying until the broker's disk or memory alarm blocks every publisher,
    /// the gateway included. The tasks' outcomes are already in Redis, so a parked letter only serves an
    /// operator's inspection: two weeks and the latest 100,000 are plenty for that, and `drop-head` keeps
    /// the newest ones (rather than refusing new ones) when the bound is reached.
    pub fn parked_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(PARKED_MAX_LENGTH),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(PARKED_MESSAGE_TTL_MS),
        );
        args
    }

    /// The task queue's arguments: quorum, delivery limit, dead-lettering to the DLQ.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.max_deliveries)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue().into()),
        );
        args
    }

    /// Declares the parking queue, the DLQ and the task queue (idempotent).
    ///
    /// # Errors
    /// The broker's error, e.g. `PRECONDITION_FAILED` when the queue exists with other arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.parked_queue().as_str().into(),
                durable,
                self.parked_queue_arguments(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue().as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.queue.as_str().into(), durable, self.queue_arguments())
            .await?;
        Ok(())
    }

    /// Publishes `message` persistently and `mandatory` to the task queue on `channel`, returning the
    /// broker's confirm to await. `origin` travels in the message's headers.
    ///
    /// # Errors
    /// When the channel cannot send (closed, broker gone).
    pub async fn publish(
        &self,
        channel: &Channel,
        message: &TaskMessage,
        origin: &Origin,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        let body = serde_json::to_vec(message).expect("a TaskMessage always serialises");
        channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                message_properties(message.correlation_id, origin),
            )
            .await
    }
}

/// Properties of a task message: persistent JSON, `message_id` and `correlation_id` = task id, and
/// `origin` in the headers.
pub fn message_properties(task_id: Uuid, origin: &Origin) -> BasicProperties {
    let id: ShortString = task_id.to_string().into();
    let mut headers = FieldTable::default();
    if let Some(request_id) = &origin.request_id {
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString(request_id.as_str().into()),
        );
    }
    if let Some(trace) = &origin.trace {
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(trace.to_string().into()),
        );
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.clone())
        .with_correlation_id(id)
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_queue_is_named_after_the_queue() {
        assert_eq!(
            Topology::new("agent.mandates", 3).dead_letter_queue(),
            "agent.mandates.dlq"
        );
    }

    #[test]
    fn the_parking_queue_is_named_after_the_dead_letter_queue() {
        let topology = Topology::new("agent.mandates", 3);
        assert_eq!(topology.parked_queue(), "agent.mandates.dlq.parked");
        assert_eq!(
            parked_queue_of(&topology.dead_letter_queue()),
            topology.parked_queue()
        );
    }

    #[test]
    fn the_parking_queue_is_bounded_in_length_and_age_dropping_the_oldest() {
        let args = Topology::new("q", 5).parked_queue_arguments();
        let inner = args.inner();
        assert_eq!(
            inner.get("x-max-length"),
            Some(&AMQPValue::LongLongInt(100_000))
        );
        assert_eq!(
            inner.get("x-overflow"),
            Some(&AMQPValue::LongString("drop-head".into()))
        );
        assert_eq!(
            inner.get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(1_209_600_000))
        );
    }

    #[test]
    fn the_queue_is_a_quorum_queue_with_a_delivery_limit_and_a_dlq() {
        let args = Topology::new("q", 5).queue_arguments();
        let inner = args.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            inner.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            inner.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("q.dlq".into()))
        );
    }

    #[test]
    fn messages_are_persistent_json_identified_by_the_task_id() {
        let id = Uuid::new_v4();
        let trace = TraceParent::new_root();
        let props = message_properties(
            id,
            &Origin {
                request_id: Some("req-1".into()),
                trace: Some(trace),
            },
        );
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get(TRACEPARENT),
            Some(&AMQPValue::LongString(trace.to_string().into()))
        );
        assert_eq!(
            headers.get(REQUEST_ID_HEADER),
            Some(&AMQPValue::LongString("req-1".into()))
        );
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            props.message_id().as_ref().map(|s| s.to_string()),
            Some(id.to_string())
        );
        assert_eq!(
            props.correlation_id().as_ref().map(|s| s.to_string()),
            Some(id.to_string())
        );
    }
}
