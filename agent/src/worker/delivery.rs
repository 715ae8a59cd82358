//! Answering a delivery (ack, requeue, dead-letter) and reading its origin headers.

use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use shared::queue::{Origin, REQUEST_ID_HEADER};
use shared::telemetry::{TRACEPARENT, TraceParent};

/// How a delivery is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Done with: the broker forgets the message.
    Ack,
    /// Given back to the queue.
    Requeue,
    /// Rejected without requeue: the broker dead-letters it.
    DeadLetter,
}

/// Answers a delivery; a failure only means the broker will redeliver, which is safe.
pub async fn answer(acker: &Acker, how: Answer) {
    let sent = match how {
        Answer::Ack => acker.ack(BasicAckOptions::default()).await,
        Answer::Requeue => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Answer::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    match sent {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            answer = ?how,
            "the delivery's channel is gone; the broker will redeliver the message"
        ),
        Err(error) => tracing::warn!(answer = ?how, %error, "cannot answer the delivery"),
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

/// A string header (the request id).
pub fn header_string(delivery: &Delivery, name: &str) -> Option<String> {
    match header(delivery, name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Where the message came from: its request id and trace context headers (a malformed `traceparent` is
/// ignored, and the task starts a trace of its own).
pub fn origin(delivery: &Delivery) -> Origin {
    Origin {
        request_id: header_string(delivery, REQUEST_ID_HEADER),
        trace: header_string(delivery, TRACEPARENT).and_then(|value| TraceParent::parse(&value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    fn delivery_with(headers: FieldTable) -> Delivery {
        let mut delivery = Delivery::mock(1, "".into(), "q".into(), true, Vec::new());
        delivery.properties = BasicProperties::default().with_headers(headers);
        delivery
    }

    #[test]
    fn the_request_id_is_read_from_its_header() {
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString("req-7".into()),
        );
        assert_eq!(
            header_string(&delivery_with(headers), REQUEST_ID_HEADER).as_deref(),
            Some("req-7")
        );
    }

    #[test]
    fn the_origin_carries_a_valid_traceparent_and_drops_a_malformed_one() {
        let trace = TraceParent::new_root();
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(trace.to_string().into()),
        );
        assert_eq!(origin(&delivery_with(headers)).trace, Some(trace));
        let mut headers = FieldTable::default();
        headers.insert(TRACEPARENT.into(), AMQPValue::LongString("00-zz".into()));
        assert_eq!(origin(&delivery_with(headers)).trace, None);
    }
}
