//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and their types, with
//! this gateway's configured limits written into the request schema so that a schema-driven client or
//! fuzzer agrees with the server.

use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error body every endpoint returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `invalid_request`, `request_timeout`, `unauthorized`, `email_not_confirmed`,
    /// `quota_exceeded`, `too_many_active_tasks`, `idempotency_key_reused`, `idempotency_key_in_use`,
    /// `not_found`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: String,
    /// Human-readable text.
    pub message: String,
    /// With `quota_exceeded`: ticks remaining today.
    #[schema(required = false)]
    pub remaining: Option<u32>,
    /// With `too_many_active_tasks`: the most queued-or-running tasks allowed.
    #[schema(required = false)]
    pub limit: Option<u32>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Euglena-rs gateway", description = "Submit mandates to the agent fleet and follow them."),
    paths(
        crate::routes::tasks::create_task,
        crate::routes::tasks::list_tasks,
        crate::routes::tasks::get_task,
        crate::routes::steer::cancel_task,
        crate::routes::steer::delete_task,
        crate::routes::events::task_events,
        crate::routes::queue::queue,
        crate::routes::agents::agent_count,
        crate::routes::health::health,
    ),
    components(schemas(
        crate::routes::tasks::CreateTask,
        shared::api::TaskResponse,
        shared::api::TaskList,
        shared::api::Usage,
        shared::api::CreatedEvent,
        shared::api::AcceptedEvent,
        shared::api::TickEvent,
        shared::api::MemoryEvent,
        shared::api::CancellingEvent,
        crate::routes::queue::QueueFigures,
        crate::routes::agents::AgentCount,
        crate::routes::health::Health,
        ErrorResponse,
    )),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Serve the document for this gateway's limits, built on the first request and kept (the limits do not
/// change while the gateway runs).
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.openapi.get_or_init(|| {
        let document = document(
            state.settings.max_mandate_chars,
            state.settings.max_ticks_per_task,
        );
        // A `Value` always serialises.
        Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
    });
    ([(CONTENT_TYPE, "application/json")], body.clone())
}

/// The answers every route behind a bearer token may give besides its own: the token is missing or
/// invalid, the user is not allowed (anonymous), or the signing keys or Redis cannot be reached.
const AUTHENTICATED_ANSWERS: [(&str, &str); 3] = [
    ("401", "`unauthorized`: missing or invalid token"),
    (
        "403",
        "`email_not_confirmed`: anonymous users are not allowed",
    ),
    (
        "503",
        "`unavailable`: a backend or the signing keys cannot be reached; retry later",
    ),
];

/// The document, with the request limits of a gateway configured with `max_mandate_chars` and
/// `max_ticks_per_task`, and every answer an authenticated route can give listed on it.
#[must_use]
pub fn document(max_mandate_chars: usize, max_ticks_per_task: u32) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    let create = &mut doc["components"]["schemas"]["CreateTask"]["properties"];
    create["mandate"] = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": max_mandate_chars,
        "description": format!(
            "What the agent should do: 1 to {max_mandate_chars} characters after trimming \
             surrounding white space."
        ),
    });
    create["max_ticks"] = json!({
        "type": "integer",
        "minimum": 1,
        "maximum": max_ticks_per_task,
        "default": crate::routes::tasks::DEFAULT_MAX_TICKS.min(max_ticks_per_task),
        "description": "The tick budget, charged to the daily quota up front and refunded for ticks \
                        not run. Leave it out for the default; `null` is refused.",
    });
    let error_body = json!({
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in operation.values_mut() {
                if operation.get("security").is_none() {
                    continue;
                }
                let Some(responses) = operation["responses"].as_object_mut() else {
                    continue;
                };
                for (status, description) in AUTHENTICATED_ANSWERS {
                    responses.entry(status).or_insert_with(
                        || json!({"description": description, "content": error_body.clone()}),
                    );
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_schema_carries_the_configured_limits() {
        let doc = document(120, 7);
        let create = &doc["components"]["schemas"]["CreateTask"];
        assert_eq!(create["properties"]["mandate"]["maxLength"], 120);
        assert_eq!(create["properties"]["mandate"]["minLength"], 1);
        let max_ticks = &create["properties"]["max_ticks"];
        assert_eq!(max_ticks["type"], "integer", "not nullable: {max_ticks}");
        assert_eq!(max_ticks["minimum"], 1);
        assert_eq!(max_ticks["maximum"], 7);
        assert_eq!(max_ticks["default"], 7, "the default never exceeds the cap");
        assert_eq!(create["required"], json!(["mandate"]));
    }

    #[test]
    fn every_authenticated_operation_lists_the_auth_and_outage_answers() {
        let doc = document(8000, 100);
        let mut checked = 0;
        for (path, operations) in doc["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                if operation.get("security").is_none() {
                    continue;
                }
                checked += 1;
                for status in ["401", "403", "503"] {
                    assert!(
                        operation["responses"][status]["content"]["application/json"].is_object(),
                        "{method} {path} lists {status}"
                    );
                }
            }
        }
        assert_eq!(checked, 7, "the authenticated operations");
    }
}
