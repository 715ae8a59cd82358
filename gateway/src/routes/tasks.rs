//! `POST /tasks`, `GET /tasks/{id}` and `GET /tasks`.

use crate::error::ApiError;
use crate::extract::{AuthUser, JsonBody, TaskId};
use crate::routes::openapi::ErrorResponse;
use crate::state::AppState;
use crate::store::{
    Created, Cursor, Idempotency, ListQuery, NewTask, ReplayState,
    create::{Replay, replay},
};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::ShownStatus;
use shared::api::{TaskList, TaskResponse};
use shared::queue::Origin;
use shared::task::{TaskMessage, TaskRecord};
use utoipa::ToSchema;
use uuid::Uuid;

/// `max_ticks` when the request leaves it out.
pub const DEFAULT_MAX_TICKS: u32 = 50;
/// Tasks per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 20;
/// The most tasks a page may hold.
pub const MAX_PAGE: usize = 100;
/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The header a client sets to make `POST /tasks` safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header marking an answer repeated for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The body of `POST /tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What the agent should do; 1 to `MAX_MANDATE_CHARS` characters after trimming.
    pub mandate: String,
    /// The tick budget, charged to the daily quota up front; 1 to `MAX_TICKS_PER_TASK`, default 50.
    /// Left out means the default; `null` is refused, as the schema says it is an integer.
    #[serde(default, deserialize_with = "present_integer")]
    pub max_ticks: Option<i64>,
}

/// A field that may be left out but, when present, must be an integer (not `null`).
fn present_integer<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    i64::deserialize(de).map(Some)
}

/// A validated request: what the API's rules leave of the body.
#[derive(Debug, PartialEq, Eq)]
pub struct ValidTask {
    /// Trimmed mandate.
    pub mandate: String,
    /// Tick budget.
    pub max_ticks: u32,
}

/// Checks a `POST /tasks` body against the limits.
///
/// # Errors
/// [`ApiError::InvalidRequest`] saying which rule was broken.
pub fn validate(
    body: CreateTask,
    max_mandate_chars: usize,
    max_ticks_per_task: u32,
) -> Result<ValidTask, ApiError> {
    let mandate = body.mandate.trim();
    let chars = mandate.chars().count();
    if chars == 0 {
        return Err(ApiError::InvalidRequest("mandate must not be empty".into()));
    }
    if chars > max_mandate_chars {
        return Err(ApiError::InvalidRequest(format!(
            "mandate is {chars} characters; the limit is {max_mandate_chars}"
        )));
    }
    let max_ticks = match body.max_ticks {
        None => DEFAULT_MAX_TICKS.min(max_ticks_per_task),
        Some(n) if n >= 1 && n <= i64::from(max_ticks_per_task) => {
            u32::try_from(n).expect("bounded by a u32 above")
        }
        Some(n) => {
            return Err(ApiError::InvalidRequest(format!(
                "max_ticks must be between 1 and {max_ticks_per_task}, got {n}"
            )));
        }
    };
    Ok(ValidTask {
        mandate: mandate.to_owned(),
        max_ticks,
    })
}

/// Checks an `Idempotency-Key` (1 to 255 printable ASCII characters) and identifies the request by what
/// it asks for, after validation (so `" x "` and `"x"` are the same request).
///
/// # Errors
/// [`ApiError::InvalidRequest`] for a key outside those rules.
pub fn idempotency(
    headers: &HeaderMap,
    keys: &shared::Keys,
    owner: &str,
    task: &ValidTask,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|key| {
        (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len())
            && key.bytes().all(|b| (0x20..0x7f).contains(&b))
    });
    let Some(key) = key else {
        return Err(ApiError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )));
    };
    let mut digest = Sha256::new();
    digest.update(task.max_ticks.to_be_bytes());
    digest.update(task.mandate.as_bytes());
    let fingerprint = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(Idempotency {
        key: keys.idempotency(owner, key),
        fingerprint,
    }))
}

/// Create a task: charge the quota, record it, queue it.
#[utoipa::path(
    post,
    path = "/tasks",
    request_body = CreateTask,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Makes the request safe to retry: 1 to 255 printable ASCII characters, kept per user for 24 hours. The same key with the same body answers the first request's task (with the same status code and `Idempotent-Replayed: true`) and charges nothing."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued (the broker confirmed)", body = TaskResponse,
         headers(("Location" = String, description = "The task's URL"),
                 ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated Idempotency-Key"))),
        (status = 400, description = "Not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Email not confirmed", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: the body did not arrive within 5 s of the head; nothing was charged", body = ErrorResponse),
        (status = 409, description = "`idempotency_key_in_use`: the first request with this key has not been answered yet; retry shortly", body = ErrorResponse),
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Invalid body or Idempotency-Key (`invalid_request`), or the key was used with another body (`idempotency_key_reused`)", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded` (`error.remaining` says what is left today) or `too_many_active_tasks` (`error.limit`)", body = ErrorResponse),
        (status = 503, description = "Redis or RabbitMQ unavailable; nothing was charged", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(task_id, user))]
pub async fn create_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateTask>,
) -> Result<Response, ApiError> {
    let settings = &state.settings;
    let task = validate(
        body,
        settings.max_mandate_chars,
        settings.max_ticks_per_task,
    )?;
    let idempotency = idempotency(&headers, state.store.keys(), &user.sub, &task)?;
    let id = Uuid::new_v4();
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let now = chrono::Utc::now();
    let keys = state.store.keys();
    let mut record = TaskRecord::new_pending(
        &user.sub,
        &task.mandate,
        task.max_ticks,
        &keys.quota(&user.sub, now),
        &keys.user_active(&user.sub),
        now,
    );
    record.idempotency_key = idempotency.as_ref().map(|i| i.key.clone());
    let trace = shared::telemetry::current_trace();
    record.traceparent = trace.map(|trace| trace.to_string());

    let created = state
        .store
        .create(&NewTask {
            id,
            record: &record,
            daily_limit: settings.daily_tick_limit,
            active_cap: settings.max_active_tasks_per_user,
            idempotency: idempotency.clone(),
        })
        .await;
    let created = match created {
        Ok(created) => created,
        Err(error) => {
            // Redis may have run the create and answered late: make sure it charges nothing.
            let reason = format!("the task could not be recorded: {error}");
            state.enqueuer.abandon(id, &reason).await;
            return Err(ApiError::Unavailable(reason));
        }
    };
    match created {
        Created::Recorded { .. } => {}
        Created::QuotaExceeded { remaining } => {
            crate::metrics::refused("quota_exceeded");
            return Err(ApiError::QuotaExceeded {
                remaining,
                requested: task.max_ticks,
            });
        }
        Created::TooManyActive { active } => {
            crate::metrics::refused("too_many_active_tasks");
            return Err(ApiError::TooManyActiveTasks {
                active,
                limit: settings.max_active_tasks_per_user,
            });
        }
        Created::Duplicate => return Err(ApiError::Internal(format!("task id {id} collided"))),
        Created::Abandoned => {
            return Err(ApiError::Internal(format!(
                "task id {id} was abandoned before it was created"
            )));
        }
        Created::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        Created::Replay { task, state: first } => {
            return replayed(&state, &user.sub, task, first).await;
        }
    }

    let message = TaskMessage {
        correlation_id: id,
        mandate: task.mandate,
        max_ticks: task.max_ticks,
        owner: user.sub,
        created_at: record.created_at,
    };
    let origin = Origin {
        request_id: headers
            .get(crate::startup::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        trace,
    };
    let max_ticks = message.max_ticks;
    state
        .enqueuer
        .enqueue(message, origin, idempotency.map(|i| i.key))
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::info!(max_ticks, "task queued");
    Ok(accepted(TaskResponse::from_record(id, record), false))
}

/// 202 with the task, its `Location`, and `Idempotent-Replayed` when it answers a repeated key.
fn accepted(task: TaskResponse, replayed: bool) -> Response {
    let location = format!("/tasks/{}", task.correlation_id);
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(task),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The answer to a request that repeats an `Idempotency-Key` with the same body.
async fn replayed(
    state: &AppState,
    owner: &str,
    task: Uuid,
    first: ReplayState,
) -> Result<Response, ApiError> {
    let record = state
        .store
        .get_owned(task, owner)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        // Deleted between the script and this read: the key is being released; try again.
        .ok_or(ApiError::IdempotencyKeyInUse)?;
    tracing::info!(task_id = %task, "repeated Idempotency-Key answered from the first request");
    match replay(first, &record) {
        Replay::Accepted => Ok(accepted(TaskResponse::from_record(task, record), true)),
        Replay::InUse => Err(ApiError::IdempotencyKeyInUse),
        Replay::Unavailable => {
            let mut response =
                ApiError::Unavailable("replaying the first request's 503".into()).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

/// Read a task the caller owns.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    params(("id" = Uuid, Path, description = "The task id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task", body = TaskResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such task, or not yours", body = ErrorResponse),
        (status = 503, description = "Redis unavailable", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id, user))]
pub async fn get_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    TaskId(id): TaskId,
) -> Result<Json<TaskResponse>, ApiError> {
    // Another user's task is indistinguishable from a missing one.
    let record = state
        .store
        .get_owned(id, &user.sub)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(TaskResponse::from_record(id, record)))
}

/// Query parameters of `GET /tasks`, as documented (all optional).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Tasks per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Only tasks with one of these shown statuses, comma-separated (e.g. `in_queue,in_progress`).
    pub status: Option<String>,
}

/// Reads `GET /tasks`'s query string.
///
/// # Errors
/// [`ApiError::InvalidRequest`] naming the parameter that is wrong (an unknown one included).
pub fn list_query(raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let invalid = |m: String| ApiError::InvalidRequest(m);
    let mut query = ListQuery {
        limit: DEFAULT_PAGE,
        after: None,
        statuses: None,
    };
    let mut seen = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if seen.contains(&name) {
            return Err(invalid(format!("{name} is given more than once")));
        }
        seen.push(name.clone());
        match &*name {
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| invalid(format!("limit must be 1 to {MAX_PAGE}")))?;
            }
            "after" => {
                query.after = Some(Cursor::decode(&value).map_err(|e| invalid(e.to_string()))?);
            }
            "status" => {
                let statuses = value
                    .split(',')
                    .map(|s| s.trim().parse::<ShownStatus>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        let known: Vec<_> = ShownStatus::ALL.iter().map(|s| s.as_str()).collect();
                        invalid(format!("status: {e}; use {}", known.join(", ")))
                    })?;
                query.statuses = Some(statuses);
            }
            other => {
                return Err(invalid(format!(
                    "unknown parameter {other:?}: use limit, after or status"
                )));
            }
        }
    }
    Ok(query)
}

/// List the caller's tasks, newest first.
#[utoipa::path(
    get,
    path = "/tasks",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of tasks, newest first; stable while new tasks arrive", body = TaskList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 422, description = "A parameter is invalid (limit out of range, a cursor this API did not hand out, an unknown status or parameter)", body = ErrorResponse),
        (status = 503, description = "Redis unavailable", body = ErrorResponse),
    )
)]
#[tracing::instrument(skip_all, fields(user))]
pub async fn list_tasks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RawQuery(raw): RawQuery,
) -> Result<Json<TaskList>, ApiError> {
    let query = list_query(raw.as_deref())?;
    let page = state
        .store
        .list(&user.sub, &query)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(TaskList {
        has_more: page.next.is_some(),
        next: page.next.map(|c| c.encode()),
        data: page
            .tasks
            .into_iter()
            .map(|(id, record)| TaskResponse::from_record(id, record))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(mandate: &str, max_ticks: Option<i64>) -> CreateTask {
        CreateTask {
            mandate: mandate.into(),
            max_ticks,
        }
    }

    #[test]
    fn a_mandate_is_trimmed_and_max_ticks_defaults_to_fifty() {
        let task = validate(body("  find cats \n", None), 8000, 100).unwrap();
        assert_eq!(
            task,
            ValidTask {
                mandate: "find cats".into(),
                max_ticks: 50
            }
        );
    }

    #[test]
    fn a_blank_mandate_is_refused() {
        assert!(validate(body("   ", None), 8000, 100).is_err());
    }

    #[test]
    fn the_mandate_limit_counts_characters_not_bytes() {
        assert!(validate(body(&"é".repeat(10), None), 10, 100).is_ok());
        assert!(validate(body(&"é".repeat(11), None), 10, 100).is_err());
    }

    #[test]
    fn max_ticks_outside_its_range_is_refused() {
        for n in [0, -1, 101, i64::MAX] {
            assert!(validate(body("m", Some(n)), 8000, 100).is_err(), "{n}");
        }
        assert_eq!(
            validate(body("m", Some(100)), 8000, 100).unwrap().max_ticks,
            100
        );
        assert_eq!(
            validate(body("m", Some(1)), 8000, 100).unwrap().max_ticks,
            1
        );
    }

    #[test]
    fn list_parameters_default_and_parse() {
        let query = list_query(None).unwrap();
        assert_eq!(query.limit, DEFAULT_PAGE);
        assert!(query.after.is_none() && query.statuses.is_none());
        let query = list_query(Some("limit=5&status=in_queue,cancelling")).unwrap();
        assert_eq!(query.limit, 5);
        assert_eq!(
            query.statuses,
            Some(vec![ShownStatus::InQueue, ShownStatus::Cancelling])
        );
    }

    #[test]
    fn bad_list_parameters_are_refused_with_their_name() {
        for (raw, named) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=ten", "limit"),
            ("after=garbage", "after"),
            ("status=done", "status"),
            ("status=", "status"),
            ("limit=1&limit=2", "limit"),
            ("page=2", "page"),
        ] {
            let error = list_query(Some(raw)).unwrap_err().to_string();
            assert!(error.contains(named), "{raw}: {error}");
        }
    }

    #[test]
    fn an_idempotency_key_must_be_printable_ascii_of_at_most_255() {
        let keys = shared::Keys::new("p:");
        let task = ValidTask {
            mandate: "m".into(),
            max_ticks: 3,
        };
        let with = |key: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(key).unwrap());
            idempotency(&headers, &keys, "u", &task)
        };
        assert!(with(&"k".repeat(255)).unwrap().is_some());
        assert!(with(&"k".repeat(256)).is_err());
        assert!(with("").is_err());
        assert!(with("tab\there").is_err());
        let entry = with("order-7").unwrap().unwrap();
        assert_eq!(entry.key, "p:idempotency:u:order-7");
        assert_eq!(
            idempotency(&HeaderMap::new(), &keys, "u", &task)
                .unwrap()
                .map(|i| i.key),
            None
        );
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint_and_another_does_not() {
        let keys = shared::Keys::new("p:");
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k"));
        let print = |mandate: &str, max_ticks| {
            let task = ValidTask {
                mandate: mandate.into(),
                max_ticks,
            };
            idempotency(&headers, &keys, "u", &task)
                .unwrap()
                .unwrap()
                .fingerprint
        };
        assert_eq!(print("find", 3), print("find", 3));
        assert_ne!(print("find", 3), print("find", 4));
        assert_ne!(print("find", 3), print("find!", 3));
    }

    #[test]
    fn the_default_budget_never_exceeds_the_per_task_limit() {
        assert_eq!(validate(body("m", None), 8000, 20).unwrap().max_ticks, 20);
    }
}
