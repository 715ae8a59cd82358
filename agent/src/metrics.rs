//! The agent's Prometheus metrics, rendered on the health port's `GET /metrics`.
//!
//! Labels are bounded: an action is one of the verbs, an outcome one of a few fixed words; no task id,
//! URL or query is ever a label. The recorder is the process's one ([`shared::telemetry::metrics`]).

use std::time::Duration;

/// Tasks this agent ended, by `outcome` (`completed`, `failed`, `cancelled`).
pub const TASKS: &str = "agent_tasks_total";
/// Ticks run, by `action` (`SEARCH`, `VISIT`, `THINK`, `EXIT`, or `INVALID` for an unusable answer).
pub const TICKS: &str = "agent_ticks_total";
/// Model calls (retries included), by `outcome` (`ok`, `error`, `cancelled`).
pub const MODEL_CALL_SECONDS: &str = "agent_model_call_duration_seconds";
/// Tokens the model server reported, by `kind` (`prompt`, `completion`).
pub const MODEL_TOKENS: &str = "agent_model_tokens_total";
/// Page visits, by `outcome` (`ok`, `refused`, `timeout`, `error`).
pub const VISIT_SECONDS: &str = "agent_visit_duration_seconds";
/// Web searches, by `outcome` (`ok`, `error`, `unconfigured`).
pub const SEARCH_SECONDS: &str = "agent_search_duration_seconds";
/// Time to embed one batch of memory texts.
pub const EMBEDDING_SECONDS: &str = "agent_embedding_duration_seconds";
/// Tasks held by this agent now.
pub const TASKS_IN_HAND: &str = "agent_tasks_in_hand";
/// Ticks stored with their checkpoint, by `outcome` (`stored`, `lost`).
pub const CHECKPOINT_WRITES: &str = "agent_checkpoint_writes_total";
/// Cancellations requested by a task's owner and noticed by this agent.
pub const CANCELLATIONS: &str = "agent_cancellations_total";

/// Counts a task this agent ended.
pub fn task_ended(outcome: &'static str) {
    ::metrics::counter!(TASKS, "outcome" => outcome).increment(1);
}

/// Counts a tick by its action.
pub fn tick(action: &'static str) {
    ::metrics::counter!(TICKS, "action" => action).increment(1);
}

/// Records one model call: how long it took, how it ended, and the tokens it used.
pub fn model_call(
    outcome: &'static str,
    took: Duration,
    prompt_tokens: u64,
    completion_tokens: u64,
) {
    ::metrics::histogram!(MODEL_CALL_SECONDS, "outcome" => outcome).record(took);
    if prompt_tokens > 0 {
        ::metrics::counter!(MODEL_TOKENS, "kind" => "prompt").increment(prompt_tokens);
    }
    if completion_tokens > 0 {
        ::metrics::counter!(MODEL_TOKENS, "kind" => "completion").increment(completion_tokens);
    }
}

/// Records one page visit.
pub fn visit(outcome: &'static str, took: Duration) {
    ::metrics::histogram!(VISIT_SECONDS, "outcome" => outcome).record(took);
}

/// Records one web search.
pub fn search(outcome: &'static str, took: Duration) {
    ::metrics::histogram!(SEARCH_SECONDS, "outcome" => outcome).record(took);
}

/// Records one embedding batch.
pub fn embedded(took: Duration) {
    ::metrics::histogram!(EMBEDDING_SECONDS).record(took);
}

/// Sets how many tasks this agent holds (read when `/metrics` is scraped).
#[allow(clippy::cast_precision_loss)] // a handful of tasks
pub fn tasks_in_hand(count: usize) {
    ::metrics::gauge!(TASKS_IN_HAND).set(count as f64);
}

/// Counts a tick write and its checkpoint.
pub fn checkpoint_written(stored: bool) {
    let outcome = if stored { "stored" } else { "lost" };
    ::metrics::counter!(CHECKPOINT_WRITES, "outcome" => outcome).increment(1);
}

/// Counts cancellations noticed.
pub fn cancellations(count: usize) {
    ::metrics::counter!(CANCELLATIONS).increment(count as u64);
}
