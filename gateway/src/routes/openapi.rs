//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and their types.

use axum::Json;
use serde::Serialize;
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
    /// A stable code: `invalid_request`, `unauthorized`, `email_not_confirmed`, `quota_exceeded`,
    /// `too_many_active_tasks`, `idempotency_key_reused`, `idempotency_key_in_use`, `not_found`,
    /// `unavailable`, `internal`.
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

/// Serve the document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
