//! The language model: one chat completion per call against any OpenAI-compatible server (OpenAI, vLLM,
//! Ollama, llama.cpp's server), through async-openai.
//!
//! Every call is bounded: a timeout per attempt, and a bounded number of retries with exponential
//! backoff on 429, 5xx, timeouts and transport errors. A task therefore never hangs on a dead model
//! server; it gets an [`LlmError`] that says whether another delivery could help.

use crate::prompt::{Message, Role};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::traits::RequestOptionsBuilder;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, ResponseFormat,
};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How to reach the model.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `MODEL_API_URL`: the OpenAI-compatible base URL (ending in `/v1`).
    pub api_url: String,
    /// `MODEL_NAME`.
    pub model: String,
    /// `OPENAI_API_KEY`; local servers usually need none.
    pub api_key: Option<SecretString>,
    /// `MODEL_TIMEOUT_SECONDS`: the longest one attempt may take.
    pub timeout: Duration,
    /// `MODEL_MAX_RETRIES`: retries after the first attempt, on 429/5xx/timeouts.
    pub max_retries: u32,
    /// `MODEL_RETRY_BASE_MS`: the first backoff; it doubles each retry, capped at 10 s.
    pub retry_base: Duration,
    /// `MODEL_MAX_TOKENS`: the longest answer, sent as `max_tokens` on every call (default 1024).
    pub max_tokens: u32,
}

/// Why the model gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Every attempt timed out.
    #[error("the model did not answer within {0:?} (after retries)")]
    Timeout(Duration),
    /// The server kept answering 429 or 5xx.
    #[error("the model server is unavailable: HTTP {status} (after retries): {message}")]
    Unavailable {
        /// The last status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server refused the request (4xx other than 429): retrying will not help.
    #[error("the model server refused the request: HTTP {status}: {message}")]
    Rejected {
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The connection failed (after retries).
    #[error("cannot reach the model server: {0}")]
    Transport(String),
    /// The answer had no content.
    #[error("the model answered with no content")]
    Empty,
    /// The task was cancelled while waiting.
    #[error("cancelled")]
    Cancelled,
}

impl LlmError {
    /// Whether another delivery of the task, later, could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::Timeout(_) | LlmError::Unavailable { .. } | LlmError::Transport(_)
        )
    }
}

/// One answer of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The answer's text.
    pub text: String,
    /// Prompt tokens, as the server reported them (0 when it reports none).
    pub prompt_tokens: u64,
    /// Completion tokens, as the server reported them (0 when it reports none).
    pub completion_tokens: u64,
    /// How long the call took, retries included.
    pub elapsed: Duration,
}

/// What one attempt produced.
enum Attempt {
    Done(Completion),
    Retry(LlmError),
    Fail(LlmError),
}

/// A chat-completions client.
#[derive(Debug, Clone)]
pub struct Llm {
    client: Client<OpenAIConfig>,
    settings: LlmSettings,
}

impl Llm {
    /// A client for `settings`.
    pub fn new(settings: LlmSettings) -> Self {
        let mut config = OpenAIConfig::new().with_api_base(settings.api_url.trim_end_matches('/'));
        // async-openai sends `Authorization: Bearer` only with a key; local servers need none.
        config = config.with_api_key(
            settings
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .unwrap_or_default(),
        );
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with timeouts always builds");
        // A plain transport: async-openai's default one retries 429/5xx three times on its own, which
        // would multiply with the retries below.
        let client = Client::with_config(config)
            .with_http_client(http.clone())
            .with_http_service(ReqwestService::new(http));
        Self { client, settings }
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// One completion of `messages`, asking for a JSON object. `conversation` (the task id) goes in the
    /// request's `user` field, which providers use for abuse tracking and the fixture model for scripts.
    ///
    /// # Errors
    /// [`LlmError`] after the bounded retries.
    pub async fn complete(
        &self,
        messages: &[Message],
        conversation: &str,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("model_call", model = %self.settings.model);
        let completed = self
            .complete_retrying(messages, conversation, cancel)
            .instrument(span)
            .await;
        let elapsed = started.elapsed();
        let (outcome, prompt, completion) = match &completed {
            Ok(done) => ("ok", done.prompt_tokens, done.completion_tokens),
            Err(LlmError::Cancelled) => ("cancelled", 0, 0),
            Err(_) => ("error", 0, 0),
        };
        crate::metrics::model_call(outcome, elapsed, prompt, completion);
        completed.map(|done| Completion { elapsed, ..done })
    }

    /// [`Llm::complete`], retrying what is worth retrying; the completion's `elapsed` is left for
    /// [`Llm::complete`] to set.
    async fn complete_retrying(
        &self,
        messages: &[Message],
        conversation: &str,
        cancel: &CancellationToken,
    ) -> Result<Completion, LlmError> {
        let request = CreateChatCompletionRequestArgs::default()
            .model(self.settings.model.clone())
            .messages(to_openai(messages))
            .response_format(ResponseFormat::JsonObject)
            // `max_tokens`, which every OpenAI-compatible server reads; OpenAI's reasoning models want
            // `max_completion_tokens` instead and are not supported.
            .max_tokens(self.settings.max_tokens)
            .user(conversation.to_owned())
            .build()
            .map_err(|e| LlmError::Rejected {
                status: 0,
                message: e.to_string(),
            })?;
        let mut backoff = self.settings.retry_base;
        let mut attempt = 0;
        loop {
            let outcome = tokio::select! {
                () = cancel.cancelled() => return Err(LlmError::Cancelled),
                outcome = self.attempt(request.clone()) => outcome,
            };
            match outcome {
                Attempt::Done(completion) => return Ok(completion),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(error) if attempt >= self.settings.max_retries => return Err(error),
                Attempt::Retry(error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, retry_in = ?backoff, "model call failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(LlmError::Cancelled),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn attempt(
        &self,
        request: async_openai::types::chat::CreateChatCompletionRequest,
    ) -> Attempt {
        let mut chat = self.client.chat();
        // The model server's spans (vLLM, a proxy) join the task's trace.
        if let Some(trace) = shared::telemetry::outgoing_traceparent() {
            chat = chat
                .header(shared::telemetry::TRACEPARENT, trace.to_string())
                .expect("a traceparent is hex digits and dashes, a valid header value");
        }
        let call = chat.create(request);
        // The HTTP client has the same timeout; this bounds body decoding and anything else too.
        let response = match tokio::time::timeout(self.settings.timeout, call).await {
            Err(_) => return Attempt::Retry(LlmError::Timeout(self.settings.timeout)),
            Ok(response) => response,
        };
        match response {
            Ok(response) => {
                let (prompt_tokens, completion_tokens) =
                    response.usage.as_ref().map_or((0, 0), |u| {
                        (u64::from(u.prompt_tokens), u64::from(u.completion_tokens))
                    });
                let content = response
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|choice| choice.message.content)
                    .filter(|c| !c.trim().is_empty());
                match content {
                    Some(text) => Attempt::Done(Completion {
                        text,
                        prompt_tokens,
                        completion_tokens,
                        elapsed: Duration::ZERO,
                    }),
                    None => Attempt::Fail(LlmError::Empty),
                }
            }
            Err(OpenAIError::ApiError(error)) => {
                let status = error.status_code.as_u16();
                let message = error.api_error.message.clone();
                if status == 429 || error.status_code.is_server_error() {
                    Attempt::Retry(LlmError::Unavailable { status, message })
                } else {
                    Attempt::Fail(LlmError::Rejected { status, message })
                }
            }
            Err(OpenAIError::Reqwest(error)) if error.is_timeout() => {
                Attempt::Retry(LlmError::Timeout(self.settings.timeout))
            }
            Err(OpenAIError::Reqwest(error)) => match error.status() {
                Some(status) if status.as_u16() == 429 || status.is_server_error() => {
                    Attempt::Retry(LlmError::Unavailable {
                        status: status.as_u16(),
                        message: error.without_url().to_string(),
                    })
                }
                Some(status) => Attempt::Fail(LlmError::Rejected {
                    status: status.as_u16(),
                    message: error.without_url().to_string(),
                }),
                None => Attempt::Retry(LlmError::Transport(error.without_url().to_string())),
            },
            // A body that is not a chat completion: garbage from the server; the tick is charged.
            Err(other) => Attempt::Fail(LlmError::Rejected {
                status: 200,
                message: other.to_string(),
            }),
        }
    }
}

fn to_openai(messages: &[Message]) -> Vec<ChatCompletionRequestMessage> {
    messages
        .iter()
        .map(|m| match m.role {
            Role::System => ChatCompletionRequestSystemMessageArgs::default()
                .content(m.content.clone())
                .build()
                .expect("a system message with content always builds")
                .into(),
            Role::User => ChatCompletionRequestUserMessageArgs::default()
                .content(m.content.clone())
                .build()
                .expect("a user message with content always builds")
                .into(),
        })
        .collect()
}
