//! The RabbitMQ topology: the three queues, the exchanges that feed them, and how a service makes sure they
//! exist.
//!
//! `agent.mandates` is a durable quorum queue whose `x-delivery-limit` dead-letters a message that keeps
//! failing, through the exchange `agent.mandates.dlx`, into `agent.mandates.dlq`. The agents' dead-letter
//! sweeper empties that DLQ into the parking queue `agent.mandates.dlq.parked`, through the exchange
//! `agent.mandates.dlq.parking`, where operators inspect dead letters. The gateway publishes tasks through
//! the exchange `agent.mandates.in`. Each exchange is a durable direct exchange bound to its one queue with
//! the queue's name as the binding key, so write permission on an exchange reaches that queue and no other:
//! nobody publishes through the default exchange, which reaches every queue of the vhost.
//!
//! The services do not create the topology when it exists: [`Topology::ensure`] checks every exchange and
//! queue passively (which needs no permission) and declares the whole topology only when a piece is missing,
//! which only an administrator's credentials may do. The components' own users may not declare anything (a
//! `configure` permission would let them delete the queues too), so wherever they are used the broker's
//! set-up creates the topology (`docker/euglena-users.sh rabbitmq-definitions`).
//!
//! RabbitMQ refuses a re-declaration with different arguments, so the arguments are built in exactly one
//! place: [`Topology::queue_arguments`] and [`Topology::parked_queue_arguments`].

use crate::task::TaskMessage;
use crate::telemetry::{TRACEPARENT, TraceParent};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
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

/// The exchange through which the sweeper parks the dead letters of `dead_letter_queue`:
/// `{dead_letter_queue}.parking`, bound to [`parked_queue_of`] only.
pub fn parking_exchange_of(dead_letter_queue: &str) -> String {
    format!("{dead_letter_queue}.parking")
}

/// Messages ready in `queue` (not handed to a consumer), by a passive declare: needs no permission and fails
/// when the queue does not exist.
pub async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    Ok(channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count())
}

/// `ACCESS_REFUSED`: the user lacks the permission the operation needs.
pub const ACCESS_REFUSED: u16 = 403;
/// `NOT_FOUND`: the exchange or queue does not exist.
pub const NOT_FOUND: u16 = 404;
/// `PRECONDITION_FAILED`: e.g. a queue re-declared with other arguments than it has.
pub const PRECONDITION_FAILED: u16 = 406;

/// The AMQP reply code of an error the broker sent (`403` for `ACCESS_REFUSED`, ...); `None` for an
/// error of the connection itself.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(error) => Some(error.get_id()),
        _ => None,
    }
}

/// Why the topology could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A piece of the topology does not exist, and the broker refused to let this user create it.
    #[error(
        "the queue topology is incomplete ({missing} does not exist) and this user may not create it \
         ({refused}): the broker's set-up creates it (docs/operations.md, \"Credentials: the \
         components' users\")"
    )]
    Missing {
        /// The first piece found missing (`exchange 'agent.mandates.in'`, `queue 'agent.mandates'`).
        missing: String,
        /// The broker's refusal.
        refused: String,
    },
    /// The broker failed or refused a check or a declaration, e.g. `PRECONDITION_FAILED` when a queue
    /// exists with other arguments.
    #[error("cannot declare the queue topology: {0}")]
    Broker(#[from] lapin::Error),
}

/// What [`Topology::ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Every exchange and queue exists; nothing was declared.
    Present,
    /// Something was missing, and the whole topology was declared.
    Declared,
    /// Something was missing and the whole topology was declared, except that the task queue exists
    /// with the arguments of earlier releases (dead-lettering through the default exchange) and keeps
    /// them.
    DeclaredBesideLegacyQueue,
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

    /// `{queue}.in`: the exchange the gateway publishes tasks to, bound to the task queue only.
    pub fn input_exchange(&self) -> String {
        format!("{}.in", self.queue)
    }

    /// `{queue}.dlx`: the task queue's dead-letter exchange, bound to the DLQ only. Only the broker
    /// publishes there (dead-lettering needs no user's permission).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// `{queue}.dlq.parking`: the exchange the dead-letter sweeper parks dead letters through, bound to the
    /// parking queue only.
    pub fn parking_exchange(&self) -> String {
        parking_exchange_of(&self.dead_letter_queue())
    }

    /// The three exchanges, in the order they are declared.
    pub fn exchanges(&self) -> [String; 3] {
        [
            self.input_exchange(),
            self.dead_letter_exchange(),
            self.parking_exchange(),
        ]
    }

    /// The three queues, in the order they are declared (a queue's dead-letter target first).
    pub fn queues(&self) -> [String; 3] {
        [
            self.parked_queue(),
            self.dead_letter_queue(),
            self.queue.clone(),
        ]
    }

    /// The bindings, `(exchange, queue)`: each exchange to its one queue, with the queue's name as the
    /// binding key (and so as the routing key of whatever is published or dead-lettered through it).
    pub fn bindings(&self) -> [(String, String); 3] {
        [
            (self.input_exchange(), self.queue.clone()),
            (self.dead_letter_exchange(), self.dead_letter_queue()),
            (self.parking_exchange(), self.parked_queue()),
        ]
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

    /// The task queue's arguments: quorum, delivery limit, dead-lettering to the DLQ through
    /// [`Topology::dead_letter_exchange`].
    pub fn queue_arguments(&self) -> FieldTable {
        self.task_queue_arguments(&self.dead_letter_exchange())
    }

    /// The task queue's arguments as releases before the dead-letter exchange declared them: dead-lettering
    /// through the default exchange, with the same routing key. Such a queue keeps working (the broker
    /// dead-letters without any user's permission); only its arguments cannot be changed in place.
    pub fn legacy_queue_arguments(&self) -> FieldTable {
        self.task_queue_arguments("")
    }

    fn task_queue_arguments(&self, dead_letter_exchange: &str) -> FieldTable {
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
            AMQPValue::LongString(dead_letter_exchange.into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue().into()),
        );
        args
    }

    /// Makes sure the topology exists on `connection`: checks every exchange and queue passively (no
    /// permission needed) and, when one is missing, declares the whole topology, which only a user allowed
    /// to configure it may do. The arguments of what exists are not checked: whoever created it built them
    /// from the same settings (`MAX_DELIVERIES` must agree everywhere). Bindings cannot be checked without
    /// the management API; a missing one shows as unroutable publishes.
    ///
    /// A task queue created by an earlier release (dead-lettering through the default exchange) refuses
    /// the new arguments; it is kept as it is, with the exchanges declared beside it, and a warning says
    /// how to move it (docs/operations.md).
    ///
    /// # Errors
    /// [`TopologyError::Missing`] when a piece is missing and the broker refuses to let this user create
    /// it; [`TopologyError::Broker`] when the broker fails, or refuses the declaration otherwise (e.g.
    /// `PRECONDITION_FAILED`: a queue exists with other arguments).
    pub async fn ensure(&self, connection: &Connection) -> Result<Ensured, TopologyError> {
        let Some(missing) = self.first_missing(connection).await? else {
            return Ok(Ensured::Present);
        };
        tracing::info!(queue = %self.queue, %missing, "declaring the queue topology");
        let channel = connection.create_channel().await?;
        match self.declare(&channel).await {
            Ok(()) => {
                close(&channel).await;
                Ok(Ensured::Declared)
            }
            // The channel is closed by the refusal.
            Err(error) if reply_code(&error) == Some(ACCESS_REFUSED) => {
                Err(TopologyError::Missing {
                    missing,
                    refused: error.to_string(),
                })
            }
            Err(error) if reply_code(&error) == Some(PRECONDITION_FAILED) => {
                self.declare_beside_legacy_queue(connection, error).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// After the declaration failed with `PRECONDITION_FAILED` (`refused`): declares the topology again
    /// with the task queue's arguments of earlier releases, keeping the broker's first refusal when that
    /// fails too (then the queue differs in something else, e.g. its delivery limit).
    async fn declare_beside_legacy_queue(
        &self,
        connection: &Connection,
        refused: lapin::Error,
    ) -> Result<Ensured, TopologyError> {
        let channel = connection.create_channel().await?;
        match self
            .declare_with(&channel, self.legacy_queue_arguments())
            .await
        {
            Ok(()) => {
                close(&channel).await;
                tracing::warn!(
                    queue = %self.queue,
                    "the task queue was created by an earlier release and dead-letters through the default \
                     exchange; it keeps working, with the new exchanges beside it. To move it to its \
                     dead-letter exchange, see docs/operations.md, \"Changing the queue's arguments\""
                );
                Ok(Ensured::DeclaredBesideLegacyQueue)
            }
            Err(_) => Err(refused.into()),
        }
    }

    /// The first exchange or queue that does not exist (`exchange 'x'`, `queue 'q'`), by passive
    /// declares on a channel of their own.
    async fn first_missing(&self, connection: &Connection) -> Result<Option<String>, lapin::Error> {
        let channel = connection.create_channel().await?;
        let passive_exchange = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in self.exchanges() {
            let checked = channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    passive_exchange,
                    FieldTable::default(),
                )
                .await;
            if let Err(error) = checked {
                return missing_or(error, format!("exchange '{exchange}'"));
            }
        }
        let passive_queue = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for queue in self.queues() {
            let checked = channel
                .queue_declare(queue.as_str().into(), passive_queue, FieldTable::default())
                .await;
            if let Err(error) = checked {
                return missing_or(error, format!("queue '{queue}'"));
            }
        }
        close(&channel).await;
        Ok(None)
    }

    /// Declares the whole topology on `channel` (idempotent): the exchanges, the parking queue, the DLQ, the
    /// task queue, and the bindings. This is the broker set-up's job (an administrator's credentials: the
    /// components' users may not declare anything); services call [`Topology::ensure`].
    ///
    /// # Errors
    /// The broker's error, e.g. `PRECONDITION_FAILED` when the queue exists with other arguments, or
    /// `ACCESS_REFUSED` for a user not allowed to configure the topology.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        self.declare_with(channel, self.queue_arguments()).await
    }

    async fn declare_with(
        &self,
        channel: &Channel,
        queue_arguments: FieldTable,
    ) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in self.exchanges() {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await?;
        }
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
            .queue_declare(self.queue.as_str().into(), durable, queue_arguments)
            .await?;
        for (exchange, queue) in self.bindings() {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Publishes `message` persistently and `mandatory` to the task queue, through
    /// [`Topology::input_exchange`], on `channel`, returning the broker's confirm to await. `origin` travels
    /// in the message's headers.
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
                self.input_exchange().as_str().into(),
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

/// `Ok(Some(what))` when the broker answered `NOT_FOUND`; the error otherwise.
fn missing_or(error: lapin::Error, what: String) -> Result<Option<String>, lapin::Error> {
    match reply_code(&error) {
        Some(NOT_FOUND) => Ok(Some(what)),
        _ => Err(error),
    }
}

/// Closes a channel opened for declaring, which nothing else uses.
async fn close(channel: &Channel) {
    if let Err(error) = channel.close(200, "topology checked".into()).await {
        tracing::debug!(%error, "cannot close the topology channel");
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
            inner.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("q.dlx".into()))
        );
        assert_eq!(
            inner.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("q.dlq".into()))
        );
    }

    #[test]
    fn the_legacy_arguments_differ_only_in_dead_lettering_through_the_default_exchange() {
        let topology = Topology::new("q", 5);
        let (mut legacy, mut current) = (
            topology.legacy_queue_arguments().inner().clone(),
            topology.queue_arguments().inner().clone(),
        );
        assert_eq!(
            legacy.remove("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("".into()))
        );
        current.remove("x-dead-letter-exchange");
        assert_eq!(legacy, current);
    }

    #[test]
    fn each_exchange_is_bound_to_one_queue_by_that_queues_name() {
        let topology = Topology::new("agent.mandates", 3);
        assert_eq!(
            topology.exchanges(),
            [
                "agent.mandates.in",
                "agent.mandates.dlx",
                "agent.mandates.dlq.parking"
            ]
        );
        assert_eq!(
            topology.bindings(),
            [
                ("agent.mandates.in".to_owned(), "agent.mandates".to_owned()),
                (
                    "agent.mandates.dlx".to_owned(),
                    "agent.mandates.dlq".to_owned()
                ),
                (
                    "agent.mandates.dlq.parking".to_owned(),
                    "agent.mandates.dlq.parked".to_owned()
                ),
            ]
        );
        assert_eq!(
            parking_exchange_of(&topology.dead_letter_queue()),
            topology.parking_exchange()
        );
        // No exchange shares a queue's name: permissions are regular expressions on both kinds of name.
        for exchange in topology.exchanges() {
            assert!(!topology.queues().contains(&exchange), "{exchange}");
        }
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
