//! The agent's mind: the tick loop (docs/architecture.md), run for one task by the runtime through
//! [`TaskExecutor`].
//!
//! Each tick: build the prompt from the task's state, make one model call, read the answer leniently,
//! store memory writes, recall memory queries, then run the action (SEARCH, VISIT, THINK or EXIT) and keep
//! its observation for the next prompt. An unreadable answer costs the tick and is fed back. After EXIT or
//! `max_ticks`, one synthesis call writes the result. Model outages are classified for the runtime:
//! retryable (the message is requeued) or fatal (the task fails with the reason).

use crate::browser::{VisitError, VisitSession, Visitor};
use crate::embedding::{Embedder, EmbeddingError};
use crate::executor::{ExecutionError, Progress, TaskContext, TaskExecutor, TickReporter};
use crate::llm::{Completion, Llm, LlmError};
use crate::memory::{EdgeStore, Memory, MemoryError, Store, VectorStore};
use crate::prompt::{Budget, TickState, synthesis_messages, tick_messages};
use crate::search::{SearchClient, SearchError, format_hits};
use crate::settings::MindSettings;
use crate::ssrf::VisitPolicy;
use crate::tick::{Action, parse_synthesis, parse_tick};
use secrecy::ExposeSecret;
use shared::api::{
    EVENT_OBSERVATION_CHARS, EVENT_PARAM_CHARS, MemoryEvent, TickEvent, Usage, preview,
};
use shared::task::TaskResult;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Characters of search results kept as an observation.
const SEARCH_OBSERVATION_CHARS: usize = 6_000;

/// The mind could not be assembled at start-up.
#[derive(Debug, thiserror::Error)]
pub enum MindError {
    /// The embedding model could not be loaded.
    #[error("cannot load the embedding model: {0}")]
    Embedding(#[from] EmbeddingError),
    /// The vector store could not be opened.
    #[error("cannot open the memory store: {0}")]
    Memory(#[from] MemoryError),
    /// The search client could not be built.
    #[error("cannot set up the search API client: {0}")]
    Search(#[from] SearchError),
}

/// Memory that is set up on first use: an idle agent, or one whose tasks never write or query memory,
/// never loads the embedding model (~90 MB) nor opens the store. Forgetting a task opens the store
/// alone, and only when there may be something to forget.
#[derive(Debug)]
struct LazyMemory {
    settings: crate::settings::MemorySettings,
    store: tokio::sync::OnceCell<Store>,
    memory: tokio::sync::OnceCell<Memory>,
}

impl LazyMemory {
    fn new(settings: crate::settings::MemorySettings) -> Self {
        Self {
            settings,
            store: tokio::sync::OnceCell::new(),
            memory: tokio::sync::OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&Store, MindError> {
        self.store
            .get_or_try_init(|| async {
                let settings = &self.settings;
                let store = Store::open(
                    settings.qdrant_url.as_deref(),
                    settings
                        .qdrant_api_key
                        .as_ref()
                        .map(|k| k.expose_secret().to_owned()),
                    &settings.qdrant_path,
                )
                .await?;
                tracing::info!("memory store open");
                Ok(store)
            })
            .await
    }

    async fn get(&self) -> Result<&Memory, MindError> {
        self.memory
            .get_or_try_init(|| async {
                let store = self.store().await?.clone();
                let embedder = Embedder::load(self.settings.model_dir.clone()).await?;
                tracing::info!("memory ready");
                Ok(Memory::new(embedder, store))
            })
            .await
    }

    /// The store, when it may hold points: open already, a server, or an embedded shard left on disk by
    /// an earlier run. `None` when there is nothing to forget.
    async fn existing_store(&self) -> Result<Option<&Store>, MindError> {
        let may_hold_points = self.store.initialized()
            || self.settings.qdrant_url.is_some()
            || EdgeStore::exists_in(&self.settings.qdrant_path);
        if may_hold_points {
            Ok(Some(self.store().await?))
        } else {
            Ok(None)
        }
    }
}

/// What the mind needs besides the model.
#[derive(Debug)]
pub struct Mind {
    llm: Llm,
    search: Option<SearchClient>,
    visitor: Visitor,
    memory: Option<LazyMemory>,
    budget: Budget,
    recall_limit: usize,
}

/// The state one task accumulates across ticks: what its checkpoint holds, so a redelivered task can
/// resume where it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TaskState {
    /// One line per past tick, oldest first.
    pub history: Vec<String>,
    /// Notes the model kept.
    pub notes: Vec<String>,
    /// Texts recalled from memory for the next tick.
    pub memories: Vec<String>,
    /// Deliverables produced so far.
    pub deliverables: Vec<String>,
    /// URLs visited so far.
    pub sources: Vec<String>,
    /// What the last action produced, for the next prompt.
    pub observation: Option<String>,
    /// Ticks whose answer could be used.
    pub usable_answers: u32,
    /// Why the last unusable answer could not be used.
    pub last_parse_error: Option<String>,
    /// What the task consumed so far.
    pub usage: Usage,
    /// The model chose EXIT: a resume goes straight to the synthesis.
    pub exited: bool,
}

/// What one tick led to.
enum TickEnd {
    /// Go on with the next tick.
    Next,
    /// The model chose EXIT.
    Exit,
}

impl Mind {
    /// Builds the mind from its settings. The embedding model's files are checked now but loaded, and the
    /// memory store opened, on the first tick that writes or queries memory; the browser starts on the
    /// first VISIT.
    ///
    /// # Errors
    /// [`MindError`] naming the part that could not be set up.
    pub async fn build(settings: &MindSettings) -> Result<Self, MindError> {
        let memory = if settings.memory.enabled {
            Embedder::check_files(&settings.memory.model_dir)?;
            Some(LazyMemory::new(settings.memory.clone()))
        } else {
            tracing::warn!(
                "memory is disabled (MEMORY_ENABLED=false): memory writes and queries are ignored"
            );
            None
        };
        let search = settings.search.clone().map(SearchClient::new).transpose()?;
        let visitor = Visitor::new(
            settings.browser.clone(),
            VisitPolicy::from_allowlist_setting(&settings.visit_allowlist),
        );
        Ok(Self {
            llm: crate::llm::Llm::new(settings.llm.clone()),
            search,
            visitor,
            memory,
            budget: Budget::for_model(
                settings.context_tokens as usize,
                settings.llm.max_tokens as usize,
            ),
            recall_limit: 5,
        })
    }

    /// The browser, so the runtime can close it at shutdown.
    pub fn visitor(&self) -> &Visitor {
        &self.visitor
    }

    async fn run(
        &self,
        task: &TaskContext,
        ticks: &TickReporter,
        session: &mut VisitSession,
        cancel: &CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        let (mut state, done) = resumed_state(task);
        let mut exited = state.exited;
        let mut ticks_used = done;
        let next = if exited { u32::MAX } else { done + 1 };
        for tick in next..=task.message.max_ticks {
            let end = self
                .tick(task, tick, &mut state, ticks, session, cancel)
                .instrument(tracing::info_span!("tick", tick))
                .await?;
            ticks_used = tick;
            if matches!(end, TickEnd::Exit) {
                exited = true;
                break;
            }
        }
        if state.usable_answers == 0 {
            let reason = state
                .last_parse_error
                .clone()
                .unwrap_or_else(|| "no answer".to_owned());
            return Err(ExecutionError::Fatal(format!(
                "the model gave no usable answer in {ticks_used} ticks (last: {reason})"
            )));
        }
        self.synthesise(task, state, exited, ticks_used, ticks, cancel)
            .await
    }

    /// One tick: the prompt, one model call, the answer read, memory, the action; then the tick's record.
    async fn tick(
        &self,
        task: &TaskContext,
        tick: u32,
        state: &mut TaskState,
        ticks: &TickReporter,
        session: &mut VisitSession,
        cancel: &CancellationToken,
    ) -> Result<TickEnd, ExecutionError> {
        let message = &task.message;
        let prompt_started = Instant::now();
        let messages = tick_messages(
            &TickState {
                mandate: &message.mandate,
                tick,
                max_ticks: message.max_ticks,
                history: &state.history,
                notes: &state.notes,
                memories: &state.memories,
                observation: state.observation.as_deref(),
                deliverables: &state.deliverables,
            },
            &self.budget,
        );
        let prompt_work = prompt_started.elapsed();
        let answer = self
            .llm
            .complete(&messages, &task.id.to_string(), cancel)
            .await
            .map_err(|e| classify(&e, tick))?;
        ticks.report(tick);
        count_call(&mut state.usage, &answer);
        let mut event = TickEvent {
            tick,
            model_ms: u64::try_from(answer.elapsed.as_millis()).unwrap_or(u64::MAX),
            tokens_in: answer.prompt_tokens,
            tokens_out: answer.completion_tokens,
            ..TickEvent::default()
        };
        let started = Instant::now();
        let output = match parse_tick(&answer.text) {
            Ok(output) => output,
            Err(error) => {
                tracing::warn!(tick, %error, "unusable model answer");
                state.history.push(format!(
                    "tick {tick}: the answer could not be used ({error})"
                ));
                let feedback = format!(
                    "Your last answer could not be used: {error}. Answer with ONE JSON object as instructed."
                );
                event.action = "INVALID".to_owned();
                crate::metrics::tick("INVALID");
                event.observation = preview(&feedback, EVENT_OBSERVATION_CHARS);
                state.observation = Some(feedback);
                state.last_parse_error = Some(error.to_string());
                self.record(ticks, event, None, state);
                return Ok(TickEnd::Next);
            }
        };
        state.usable_answers += 1;
        let verb = output.next_action.verb();
        tracing::info!(tick, action = verb, "tick");
        crate::metrics::tick(verb);
        if !output.history_update.is_empty() {
            state
                .history
                .push(format!("tick {tick} ({verb}): {}", output.history_update));
        }
        if let Some(note) = output.note_update {
            state.notes.push(note);
        }
        if let Some(deliverable) = output.deliverable {
            state.deliverables.push(deliverable);
        }
        let mut memory_notice = None;
        let mut memory_event = None;
        let uses_memory = !output.memory_write.is_empty() || !output.memory_query.is_empty();
        if let (Some(lazy), true) = (&self.memory, uses_memory) {
            memory_event = Some(MemoryEvent {
                tick,
                writes: u32::try_from(output.memory_write.len()).unwrap_or(u32::MAX),
                queries: u32::try_from(output.memory_query.len()).unwrap_or(u32::MAX),
            });
            // One embedding call for this tick's writes and queries together.
            let recalled = match lazy.get().await {
                Ok(memory) => memory
                    .remember_and_recall(
                        &message.owner,
                        task.id,
                        output.memory_write,
                        output.memory_query,
                        self.recall_limit,
                    )
                    .await
                    .map_err(MindError::from),
                Err(error) => Err(error),
            };
            state.memories = match recalled {
                Ok(recalled) => recalled.into_iter().map(|r| r.text).collect(),
                Err(error) => {
                    tracing::warn!(%error, "memory failed");
                    memory_notice = Some(format!("(memory was unavailable this tick: {error})"));
                    Vec::new()
                }
            };
        } else if self.memory.is_some() {
            state.memories.clear();
        }
        // The agent's own work this tick: the prompt, reading the answer, memory; not the model's time
        // nor the action's I/O. `bench/fleet.sh` reads it from these debug lines.
        let local_work = prompt_work + started.elapsed();
        event.action = verb.to_owned();
        let (end, observation) = match output.next_action {
            Action::Exit => {
                state.exited = true;
                (TickEnd::Exit, None)
            }
            Action::Think => (
                TickEnd::Next,
                Some("You thought; nothing was fetched.".to_owned()),
            ),
            Action::Search(query) => {
                event.param = preview(&query, EVENT_PARAM_CHARS);
                state.usage.searches += 1;
                (TickEnd::Next, Some(self.search(&query).await))
            }
            Action::Visit(url) => {
                event.param = preview(&url, EVENT_PARAM_CHARS);
                state.usage.visits += 1;
                let visit_started = Instant::now();
                let visited = session.visit(&url).await;
                crate::metrics::visit(
                    visited.as_ref().map_or_else(VisitError::outcome, |_| "ok"),
                    visit_started.elapsed(),
                );
                let observation = match visited {
                    Ok(page) => {
                        if !state.sources.contains(&page.final_url) {
                            state.sources.push(page.final_url.clone());
                        }
                        page.observation()
                    }
                    Err(error) => {
                        tracing::info!(%error, "visit failed");
                        format!("VISIT {url} failed: {}", error.for_model())
                    }
                };
                (TickEnd::Next, Some(observation))
            }
        };
        tracing::debug!(
            tick,
            local_work_us = local_work.as_micros() as u64,
            "tick work"
        );
        state.observation = match (observation, memory_notice) {
            (Some(o), Some(n)) => Some(format!("{o}\n{n}")),
            (o, n) => o.or(n),
        };
        event.observation = state
            .observation
            .as_deref()
            .map(|o| preview(o, EVENT_OBSERVATION_CHARS))
            .unwrap_or_default();
        self.record(ticks, event, memory_event, state);
        Ok(end)
    }

    /// Hands the tick's record to the runtime, which stores it with its events.
    fn record(
        &self,
        ticks: &TickReporter,
        mut event: TickEvent,
        memory: Option<MemoryEvent>,
        state: &TaskState,
    ) {
        event.usage = state.usage;
        ticks.record(Progress {
            event,
            memory,
            deliverables: state.deliverables.clone(),
            sources: state.sources.clone(),
            state: Some(serde_json::to_value(state).expect("a task state always serialises")),
        });
    }

    async fn search(&self, query: &str) -> String {
        let Some(search) = &self.search else {
            crate::metrics::search("unconfigured", Duration::ZERO);
            return format!("SEARCH {query} failed: no search API is configured (SEARCH_API_URL)");
        };
        let started = Instant::now();
        let found = search.search(query).await;
        crate::metrics::search(
            if found.is_ok() { "ok" } else { "error" },
            started.elapsed(),
        );
        match found {
            Ok(hits) => format_hits(query, &hits, SEARCH_OBSERVATION_CHARS),
            Err(error) => format!("SEARCH {query} failed: {error}"),
        }
    }

    async fn synthesise(
        &self,
        task: &TaskContext,
        mut state: TaskState,
        exited: bool,
        ticks_used: u32,
        ticks: &TickReporter,
        cancel: &CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        let messages = synthesis_messages(
            &task.message.mandate,
            &state.history,
            &state.notes,
            &state.deliverables,
            &self.budget,
        );
        let answer = self
            .llm
            .complete(&messages, &task.id.to_string(), cancel)
            .await
            .map_err(|e| classify(&e, ticks_used))?;
        count_call(&mut state.usage, &answer);
        ticks.usage(state.usage);
        let result = match parse_synthesis(&answer.text) {
            Ok(synthesis) => TaskResult {
                success: exited,
                deliverables: if synthesis.deliverables.is_empty() {
                    state.deliverables
                } else {
                    synthesis.deliverables
                },
                summary: if exited {
                    synthesis.summary
                } else {
                    format!(
                        "{} (the tick budget of {} ran out before the agent chose EXIT)",
                        synthesis.summary, task.message.max_ticks
                    )
                },
                sources: state.sources,
                ticks_used,
            },
            Err(error) => TaskResult {
                success: false,
                summary: format!(
                    "The final summary could not be written: the model's synthesis was unusable ({error}). \
                     The deliverables gathered during the task are kept."
                ),
                deliverables: state.deliverables,
                sources: state.sources,
                ticks_used,
            },
        };
        Ok(result)
    }
}

/// The state a task starts from, and the ticks already run: where an earlier delivery left it, or from
/// scratch. A working state this release cannot read starts afresh after the ticks already run (logged).
fn resumed_state(task: &TaskContext) -> (TaskState, u32) {
    let Some(resume) = &task.resume else {
        return (TaskState::default(), 0);
    };
    let mut state = match &resume.state {
        Some(value) => serde_json::from_value::<TaskState>(value.clone()).unwrap_or_else(|error| {
            tracing::warn!(task_id = %task.id, %error, "the working state cannot be read; resuming afresh");
            TaskState::default()
        }),
        None => TaskState::default(),
    };
    state.usage = resume.usage;
    (state, resume.tick.min(task.message.max_ticks))
}

/// Counts one answered model call in `usage`.
fn count_call(usage: &mut Usage, answer: &Completion) {
    usage.model_calls += 1;
    usage.prompt_tokens += answer.prompt_tokens;
    usage.completion_tokens += answer.completion_tokens;
}

/// Maps a model failure at `tick` to what the runtime should do with the task.
fn classify(error: &LlmError, tick: u32) -> ExecutionError {
    let message = format!("model call failed at tick {tick}: {error}");
    if error.is_retryable() {
        ExecutionError::Retryable(message)
    } else {
        ExecutionError::Fatal(message)
    }
}

impl TaskExecutor for Mind {
    async fn execute(
        &self,
        task: TaskContext,
        ticks: TickReporter,
        cancel: CancellationToken,
    ) -> Result<TaskResult, ExecutionError> {
        let span = tracing::info_span!("mind", model = self.llm.model());
        async {
            let mut session = self.visitor.session();
            let result = self.run(&task, &ticks, &mut session, &cancel).await;
            session.close().await;
            result
        }
        .instrument(span)
        .await
    }

    async fn forget(&self, owner: &str, task: Uuid) -> Result<(), String> {
        let Some(lazy) = &self.memory else {
            return Ok(());
        };
        match lazy.existing_store().await.map_err(|e| e.to_string())? {
            Some(store) => store
                .delete_task(owner, task)
                .await
                .map_err(|e| shared::errors::chain(&e)),
            None => Ok(()),
        }
    }

    async fn forget_written_before(&self, cutoff: i64) -> Result<(), String> {
        let Some(lazy) = &self.memory else {
            return Ok(());
        };
        match lazy.existing_store().await.map_err(|e| e.to_string())? {
            Some(store) => store
                .delete_written_before(cutoff)
                .await
                .map_err(|e| shared::errors::chain(&e)),
            None => Ok(()),
        }
    }
}
