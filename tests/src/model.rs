//! A scripted OpenAI-compatible chat-completions server.
//!
//! Each script is keyed by a marker string: a request whose messages contain the marker (tests put it
//! in the mandate) gets that script's next reply. A reply is a JSON answer, raw text (garbage), an HTTP
//! error status, or either after a delay. When a script runs out it repeats its last reply. Requests
//! that match no script get the default script, if one is set, else a 400 saying so; the default script
//! keeps one position per conversation (the request's `user` field, which the agent sets to the task id),
//! so every task walks it from the start. Every request is recorded so tests can look at the prompts the
//! agent built.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds a reply from the request it answers (e.g. to echo text the agent put in its prompt).
pub type ReplyFn = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// One scripted reply.
#[derive(Clone)]
pub enum Reply {
    /// Answer with this JSON value as the message content (serialised).
    Json(Value),
    /// Answer with this text as the message content, verbatim (e.g. garbage, or a fenced block).
    Text(String),
    /// Fail with this HTTP status (e.g. 429, 500) and an OpenAI-shaped error body.
    Status(u16),
    /// Wait, then give the inner reply.
    Delayed(Duration, Box<Reply>),
    /// A reply computed from the request body.
    Computed(ReplyFn),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Json(v) => f.debug_tuple("Json").field(v).finish(),
            Reply::Text(t) => f.debug_tuple("Text").field(t).finish(),
            Reply::Status(s) => f.debug_tuple("Status").field(s).finish(),
            Reply::Delayed(d, r) => f.debug_tuple("Delayed").field(d).field(r).finish(),
            Reply::Computed(_) => f.write_str("Computed(..)"),
        }
    }
}

/// The text of every message in a chat-completions request, joined.
pub fn prompt_text(request: &Value) -> String {
    request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

impl Reply {
    /// A tick answer: `{"thought", "next_action": {"verb", "param"}, ...}` with `extra` merged in.
    pub fn action(verb: &str, param: &str, extra: Value) -> Self {
        let mut answer = json!({
            "thought": format!("next: {verb} {param}"),
            "history_update": format!("did {verb} {param}"),
            "note_update": null,
            "memory_write": [],
            "memory_query": [],
            "next_action": {"verb": verb, "param": param},
            "deliverable": null,
        });
        if let (Some(base), Some(extra)) = (answer.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        Reply::Json(answer)
    }

    /// A synthesis answer.
    pub fn synthesis(summary: &str, deliverables: &[&str]) -> Self {
        Reply::Json(json!({"summary": summary, "deliverables": deliverables}))
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The script that answered, if any.
    pub script: Option<String>,
    /// The request body.
    pub body: Value,
    /// The request's `traceparent` header, if it carried one.
    pub traceparent: Option<String>,
}

#[derive(Debug, Default)]
struct Scripts {
    scripts: Vec<(String, Vec<Reply>, usize)>,
    default: Option<(Vec<Reply>, HashMap<String, usize>)>,
    requests: Vec<Recorded>,
}

/// Handle to a running fixture model.
#[derive(Debug, Clone)]
pub struct FixtureModel {
    /// `http://127.0.0.1:PORT/v1`: what `MODEL_API_URL` should be.
    pub base_url: String,
    state: Arc<Mutex<Scripts>>,
}

impl FixtureModel {
    /// Starts the server on 127.0.0.1 (`port` 0 picks one).
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(Scripts::default()));
        let router = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let address: SocketAddr = crate::serve(router, port).await?;
        Ok(Self {
            base_url: format!("http://{address}/v1"),
            state,
        })
    }

    /// Requests containing `marker` get `replies`, in order.
    pub fn script(&self, marker: &str, replies: Vec<Reply>) {
        self.lock().scripts.push((marker.to_owned(), replies, 0));
    }

    /// Requests matching no marker get `replies`, in order, one position per conversation.
    pub fn default_script(&self, replies: Vec<Reply>) {
        self.lock().default = Some((replies, HashMap::new()));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests answered by the script keyed `marker`.
    pub fn requests_for(&self, marker: &str) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.script.as_deref() == Some(marker))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scripts> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn next(replies: &[Reply], cursor: &mut usize) -> Option<Reply> {
    let reply = replies.get(*cursor).or_else(|| replies.last())?.clone();
    *cursor += 1;
    Some(reply)
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "fixture-model", "object": "model", "owned_by": "euglena-tests"}]}),
    )
}

async fn complete(
    State(state): State<Arc<Mutex<Scripts>>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = body["messages"].to_string();
    let (script, reply) = {
        let mut scripts = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = scripts
            .scripts
            .iter_mut()
            .find(|(marker, _, _)| text.contains(marker.as_str()))
            .map(|(marker, replies, cursor)| (Some(marker.clone()), next(replies, cursor)));
        let (script, reply) = match found {
            Some(found) => found,
            None => (
                None,
                scripts.default.as_mut().and_then(|(replies, cursors)| {
                    let conversation = body["user"].as_str().unwrap_or_default().to_owned();
                    next(replies, cursors.entry(conversation).or_default())
                }),
            ),
        };
        scripts.requests.push(Recorded {
            script: script.clone(),
            body: body.clone(),
            traceparent,
        });
        (script, reply)
    };
    let Some(mut reply) = reply else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "no fixture script matches this request", "type": "invalid_request_error"}})),
        )
            .into_response();
    };
    loop {
        match reply {
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (
                    status,
                    Json(json!({"error": {"message": format!("fixture failure {code}"), "type": "server_error"}})),
                )
                    .into_response();
            }
            Reply::Computed(build) => reply = build(&body),
            Reply::Json(value) => return completion(&body, &script, &value.to_string()),
            Reply::Text(text) => return completion(&body, &script, &text),
        }
    }
}

/// Tokens as the fixture counts them: a word-ish four characters each, so usage is non-zero and grows
/// with the prompt, as a real model's would.
fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

fn completion(request: &Value, script: &Option<String>, content: &str) -> Response {
    let model = request["model"].as_str().unwrap_or("fixture-model");
    let prompt_tokens = tokens(&prompt_text(request));
    let completion_tokens = tokens(content);
    Json(json!({
        "id": format!("chatcmpl-fixture-{}", script.as_deref().unwrap_or("default")),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}
