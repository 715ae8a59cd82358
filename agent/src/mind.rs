//! The agent's mind: the tick loop of SPEC section 5, run for one task by the runtime through
//! [`TaskExecutor`].
//!
//! Each tick: build the prompt from the task's state, make one model call, read the answer leniently,
//! store memory writes, recall memory queries, then run the action (SEARCH, VISIT, THINK or EXIT) and keep
//! its observation for the next prompt. An unreadable answer costs the tick and is fed back. After EXIT or
//! `max_ticks`, one synthesis call writes the result. Model outages are classified for the runtime:
//! retryable (the message is requeued) or fatal (the task fails with the reason).

use crate::browser::{VisitSession, Visitor};
use crate::embedding::{Embedder, EmbeddingError};
use crate::executor::{ExecutionError, TaskContext, TaskExecutor, TickReporter};
use crate::llm::{Llm, LlmError};
use crate::memory::{Memory, MemoryError, Store};
use crate::prompt::{Budget, TickState, synthesis_messages, tick_messages};
use crate::search::{SearchClient, SearchError, format_hits};
use crate::settings::MindSettings;
use crate::ssrf::VisitPolicy;
use crate::tick::{Action, ParseError, parse_synthesis, parse_tick};
use secrecy::ExposeSecret;
use shared::task::TaskResult;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
/// never loads the embedding model (~90 MB) nor opens the store.
#[derive(Debug)]
struct LazyMemory {
    settings: crate::settings::MemorySettings,
    memory: tokio::sync::OnceCell<Memory>,
}

impl LazyMemory {
    async fn get(&self) -> Result<&Memory, MindError> {
        self.memory
            .get_or_try_init(|| async {
                let settings = &self.settings;
                let embedder = Embedder::load(settings.model_dir.clone()).await?;
                let store = Store::open(
                    settings.qdrant_url.as_deref(),
                    settings
                        .qdrant_api_key
                        .as_ref()
                        .map(|k| k.expose_secret().to_owned()),
                    &settings.qdrant_path,
                )
                .await?;
                tracing::info!("memory ready");
                Ok(Memory::new(embedder, store))
            })
            .await
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

/// The state one task accumulates across ticks.
#[derive(Debug, Default)]
struct TaskState {
    history: Vec<String>,
    notes: Vec<String>,
    memories: Vec<String>,
    deliverables: Vec<String>,
    sources: Vec<String>,
    observation: Option<String>,
    usable_answers: u32,
    last_parse_error: Option<ParseError>,
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
            Some(LazyMemory {
                settings: settings.memory.clone(),
                memory: tokio::sync::OnceCell::new(),
            })
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
            budget: Budget::default(),
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
        let message = &task.message;
        let conversation = task.id.to_string();
        let mut state = TaskState::default();
        let mut exited = false;
        let mut ticks_used = 0;
        for tick in 1..=message.max_ticks {
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
                .complete(&messages, &conversation, cancel)
                .await
                .map_err(|e| classify(&e, tick))?;
            ticks_used = tick;
            ticks.report(tick);
            let started = Instant::now();
            let output = match parse_tick(&answer) {
                Ok(output) => output,
                Err(error) => {
                    tracing::warn!(tick, %error, "unusable model answer");
                    state.history.push(format!(
                        "tick {tick}: the answer could not be used ({error})"
                    ));
                    state.observation = Some(format!(
                        "Your last answer could not be used: {error}. Answer with ONE JSON object as instructed."
                    ));
                    state.last_parse_error = Some(error);
                    continue;
                }
            };
            state.usable_answers += 1;
            let verb = output.next_action.verb();
            tracing::info!(tick, action = verb, "tick");
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
            let uses_memory = !output.memory_write.is_empty() || !output.memory_query.is_empty();
            if let (Some(lazy), true) = (&self.memory, uses_memory) {
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
                        memory_notice =
                            Some(format!("(memory was unavailable this tick: {error})"));
                        Vec::new()
                    }
                };
            } else if self.memory.is_some() {
                state.memories.clear();
            }
            // The agent's own work this tick: the prompt, reading the answer, memory; not the model's time
            // nor the action's I/O. `bench/fleet.sh` reads it from these debug lines.
            let local_work = prompt_work + started.elapsed();
            let observation = match output.next_action {
                Action::Exit => {
                    exited = true;
                    None
                }
                Action::Think => Some("You thought; nothing was fetched.".to_owned()),
                Action::Search(query) => Some(self.search(&query).await),
                Action::Visit(url) => Some(match session.visit(&url).await {
                    Ok(page) => {
                        if !state.sources.contains(&page.final_url) {
                            state.sources.push(page.final_url.clone());
                        }
                        page.observation()
                    }
                    Err(error) => format!("VISIT {url} failed: {error}"),
                }),
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
            if exited {
                break;
            }
        }
        if state.usable_answers == 0 {
            let reason = state
                .last_parse_error
                .map_or_else(|| "no answer".to_owned(), |e| e.to_string());
            return Err(ExecutionError::Fatal(format!(
                "the model gave no usable answer in {ticks_used} ticks (last: {reason})"
            )));
        }
        self.synthesise(task, state, exited, ticks_used, cancel)
            .await
    }

    async fn search(&self, query: &str) -> String {
        let Some(search) = &self.search else {
            return format!("SEARCH {query} failed: no search API is configured (SEARCH_API_URL)");
        };
        match search.search(query).await {
            Ok(hits) => format_hits(query, &hits, SEARCH_OBSERVATION_CHARS),
            Err(error) => format!("SEARCH {query} failed: {error}"),
        }
    }

    async fn synthesise(
        &self,
        task: &TaskContext,
        state: TaskState,
        exited: bool,
        ticks_used: u32,
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
        let result = match parse_synthesis(&answer) {
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
}
