//! A stand-in for the Lambda Runtime API (the endpoints `lambda_runtime` calls), so the `bootstrap` binary
//! can be run as Lambda runs it: it fetches the next invocation and posts a response or an error.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What the function answered for one invocation.
#[derive(Debug)]
pub enum Answer {
    Response(Value),
    Error(Value),
}

#[derive(Debug, Clone)]
struct Api {
    events: Arc<Mutex<VecDeque<(String, Value)>>>,
    answers: mpsc::UnboundedSender<(String, Answer)>,
}

/// A running fake Runtime API serving `events` in order, then holding further polls open.
#[derive(Debug)]
pub struct RuntimeApi {
    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    pub answers: mpsc::UnboundedReceiver<(String, Answer)>,
}

pub async fn start(events: Vec<(String, Value)>) -> RuntimeApi {
    let (answers, receiver) = mpsc::unbounded_channel();
    let api = Api {
        events: Arc::new(Mutex::new(events.into())),
        answers,
    };
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router).await });
    RuntimeApi {
        address,
        answers: receiver,
    }
}

async fn next(State(api): State<Api>) -> impl IntoResponse {
    let event = api.events.lock().unwrap().pop_front();
    let Some((id, event)) = event else {
        // No more invocations: hold the poll open, as Lambda does between events.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:autoscaler"),
    );
    (headers, event.to_string())
}

async fn response(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = api.answers.send((id, Answer::Response(value)));
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = api.answers.send((id, Answer::Error(value)));
    StatusCode::ACCEPTED
}

/// The EventBridge scheduled event Lambda delivers every 2 minutes.
pub fn scheduled_event() -> Value {
    serde_json::json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-23T06:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/autoscaler-every-2-minutes"],
        "detail": {}
    })
}
