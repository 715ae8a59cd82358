//! The prompt for each tick and for the final synthesis: pure functions of the task's state.
//!
//! The whole prompt fits the model's context: `MODEL_CONTEXT_TOKENS` less the `MODEL_MAX_TOKENS` kept for
//! the answer. Within that, each part that grows (history, notes, recalled memory, page text) also has a
//! cap of its own, which bounds the cost of every tick (with the defaults the caps alone fit the default
//! context). When the parts together would not fit, the oldest history goes first, then recalled memory,
//! notes and the oldest deliverables; the last observation is cut last. Tokens are estimated as four characters each, which overestimates for English and keeps the
//! budget on the safe side.

/// A chat message's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The task state.
    User,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// Token budgets: the prompt as a whole, and the caps of the parts that grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The whole prompt, every message included: the context less the answer's `max_tokens`.
    pub prompt_tokens: usize,
    /// History lines (the newest kept).
    pub history_tokens: usize,
    /// Notes (the newest kept).
    pub notes_tokens: usize,
    /// Recalled memories.
    pub memory_tokens: usize,
    /// The last observation (page text, search results).
    pub observation_tokens: usize,
    /// Deliverables (the newest kept).
    pub deliverables_tokens: usize,
}

/// The default context (`MODEL_CONTEXT_TOKENS`).
pub const DEFAULT_CONTEXT_TOKENS: usize = 16_000;
/// The default answer bound (`MODEL_MAX_TOKENS`).
pub const DEFAULT_MAX_TOKENS: usize = 1024;

impl Default for Budget {
    fn default() -> Self {
        Self::for_model(DEFAULT_CONTEXT_TOKENS, DEFAULT_MAX_TOKENS)
    }
}

impl Budget {
    /// The budgets for a model with `context_tokens` of context answering in at most `max_tokens`.
    pub fn for_model(context_tokens: usize, max_tokens: usize) -> Self {
        Self {
            prompt_tokens: context_tokens.saturating_sub(max_tokens),
            history_tokens: 1500,
            notes_tokens: 600,
            memory_tokens: 600,
            observation_tokens: 2000,
            deliverables_tokens: 3000,
        }
    }
}

/// The task state a tick prompt is built from.
#[derive(Debug, Clone, Copy)]
pub struct TickState<'a> {
    /// The mandate.
    pub mandate: &'a str,
    /// This tick's number, from 1.
    pub tick: u32,
    /// The budget.
    pub max_ticks: u32,
    /// One line per past tick, oldest first.
    pub history: &'a [String],
    /// Notes the model kept, oldest first.
    pub notes: &'a [String],
    /// Texts recalled from vector memory for this tick.
    pub memories: &'a [String],
    /// What the last action produced.
    pub observation: Option<&'a str>,
    /// Deliverables produced so far.
    pub deliverables: &'a [String],
}

/// Estimated tokens in `text`.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Estimated tokens in a whole prompt.
pub fn prompt_tokens(messages: &[Message]) -> usize {
    messages.iter().map(|m| estimate_tokens(&m.content)).sum()
}

/// The marker appended to cut text.
const CUT: &str = " …[truncated]";

/// `text` cut to at most about `tokens` tokens (marker included) at a character boundary.
pub fn truncate_to_tokens(text: &str, tokens: usize) -> String {
    let limit = tokens.saturating_mul(4);
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let keep = limit.saturating_sub(CUT.chars().count());
    let cut: String = text.chars().take(keep).collect();
    format!("{cut}{CUT}")
}

/// The newest `items` that fit in `tokens` (each costs its estimate plus one for its bullet), in their
/// original order, how many were dropped, and the tokens the kept ones cost.
pub fn newest_within(items: &[String], tokens: usize) -> (Vec<&str>, usize, usize) {
    let mut used = 0;
    let mut kept = Vec::new();
    for item in items.iter().rev() {
        let cost = estimate_tokens(item) + 1;
        if used + cost > tokens {
            break;
        }
        used += cost;
        kept.push(item.as_str());
    }
    kept.reverse();
    let dropped = items.len() - kept.len();
    (kept, dropped, used)
}

/// What a section costs beyond its lines: its title, the "omitted" note or "(none)", the newlines.
const SECTION_TOKENS: usize = 16;

/// Hands out what is left of the prompt budget, part by part.
struct Allowance(usize);

impl Allowance {
    /// The budget left after `fixed` tokens and `sections` section headers.
    fn after(budget: &Budget, fixed: usize, sections: usize) -> Self {
        Self(
            budget
                .prompt_tokens
                .saturating_sub(fixed + sections * SECTION_TOKENS),
        )
    }

    /// The newest `items` within `cap` and what is left.
    fn newest<'a>(&mut self, items: &'a [String], cap: usize) -> (Vec<&'a str>, usize) {
        let (kept, dropped, used) = newest_within(items, cap.min(self.0));
        self.0 -= used;
        (kept, dropped)
    }

    /// `text` within `cap` and what is left.
    fn text(&mut self, text: &str, cap: usize) -> String {
        let cut = truncate_to_tokens(text, cap.min(self.0));
        self.0 = self.0.saturating_sub(estimate_tokens(&cut));
        cut
    }
}

/// The mandate, cut to half the prompt budget in case a gateway accepts mandates longer than the model
/// can read.
fn mandate_within(mandate: &str, budget: &Budget) -> String {
    truncate_to_tokens(mandate, budget.prompt_tokens / 2)
}

const TICK_INSTRUCTIONS: &str = r#"You are an autonomous research agent working through a mandate one tick at a time.
Each tick you choose exactly one action:
- SEARCH <query>: search the web; you will see titles, URLs and snippets.
- VISIT <url>: open a page in a browser; you will see its text.
- THINK: reason without I/O (use it to plan or to write a deliverable).
- EXIT: finish; a final summary is written from your history, notes and deliverables.
Answer with ONE JSON object and nothing else:
{"thought": "...", "history_update": "one line for the history", "note_update": "a note to keep, or null",
 "memory_write": ["facts worth remembering"], "memory_query": ["what to recall next tick"],
 "next_action": {"verb": "SEARCH" | "VISIT" | "THINK" | "EXIT", "param": "query or URL, else empty"},
 "deliverable": "a finished deliverable, or null"}
Use EXIT as soon as the mandate is fulfilled or the budget is nearly spent."#;

const SYNTHESIS_INSTRUCTIONS: &str = r#"You finished working on a mandate. Write the final result.
Answer with ONE JSON object and nothing else: {"summary": "what was done and found", "deliverables": ["..."]}"#;

fn section(out: &mut String, title: &str, lines: &[&str], dropped: usize) {
    out.push_str(&format!("\n## {title}\n"));
    if dropped > 0 {
        out.push_str(&format!("({dropped} older entries omitted)\n"));
    }
    if lines.is_empty() {
        out.push_str("(none)\n");
    }
    for line in lines {
        out.push_str(&format!("- {line}\n"));
    }
}

/// The messages for one tick, within `budget`.
pub fn tick_messages(state: &TickState<'_>, budget: &Budget) -> Vec<Message> {
    let mut user = format!(
        "# Mandate\n{}\n\nTick {} of {} ({} left after this one).\n",
        mandate_within(state.mandate, budget),
        state.tick,
        state.max_ticks,
        state.max_ticks.saturating_sub(state.tick)
    );
    let fixed = estimate_tokens(TICK_INSTRUCTIONS) + estimate_tokens(&user);
    let mut left = Allowance::after(budget, fixed, 5);
    // Taken in the order they are kept longest: what is left over goes to the history last.
    let observation = state
        .observation
        .map(|o| left.text(o, budget.observation_tokens));
    let (deliverables, deliverables_dropped) =
        left.newest(state.deliverables, budget.deliverables_tokens);
    let (notes, notes_dropped) = left.newest(state.notes, budget.notes_tokens);
    let (memories, memories_dropped) = left.newest(state.memories, budget.memory_tokens);
    let (history, history_dropped) = left.newest(state.history, budget.history_tokens);
    section(&mut user, "History", &history, history_dropped);
    section(&mut user, "Notes", &notes, notes_dropped);
    section(&mut user, "Recalled memory", &memories, memories_dropped);
    section(
        &mut user,
        "Deliverables so far",
        &deliverables,
        deliverables_dropped,
    );
    user.push_str("\n## Last observation\n");
    match observation {
        Some(observation) => {
            user.push_str(&observation);
            user.push('\n');
        }
        None => user.push_str("(none yet: this is the first tick)\n"),
    }
    vec![
        Message {
            role: Role::System,
            content: TICK_INSTRUCTIONS.to_owned(),
        },
        Message {
            role: Role::User,
            content: user,
        },
    ]
}

/// The messages for the final synthesis, within `budget`.
pub fn synthesis_messages(
    mandate: &str,
    history: &[String],
    notes: &[String],
    deliverables: &[String],
    budget: &Budget,
) -> Vec<Message> {
    let mut user = format!("# Mandate\n{}\n", mandate_within(mandate, budget));
    let fixed = estimate_tokens(SYNTHESIS_INSTRUCTIONS) + estimate_tokens(&user);
    let mut left = Allowance::after(budget, fixed, 3);
    let (deliverables, deliverables_dropped) =
        left.newest(deliverables, budget.deliverables_tokens);
    let (notes, notes_dropped) = left.newest(notes, budget.notes_tokens);
    let (history, history_dropped) = left.newest(history, budget.history_tokens);
    section(&mut user, "History", &history, history_dropped);
    section(&mut user, "Notes", &notes, notes_dropped);
    section(
        &mut user,
        "Deliverables",
        &deliverables,
        deliverables_dropped,
    );
    vec![
        Message {
            role: Role::System,
            content: SYNTHESIS_INSTRUCTIONS.to_owned(),
        },
        Message {
            role: Role::User,
            content: user,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state<'a>(history: &'a [String], observation: Option<&'a str>) -> TickState<'a> {
        TickState {
            mandate: "find the tallest tree",
            tick: 3,
            max_ticks: 10,
            history,
            notes: &[],
            memories: &[],
            observation,
            deliverables: &[],
        }
    }

    #[test]
    fn the_prompt_carries_the_mandate_the_tick_and_the_observation() {
        let messages = tick_messages(&state(&[], Some("Hyperion is 115.9 m")), &Budget::default());
        assert_eq!(messages[0].role, Role::System);
        assert!(messages[0].content.contains("ONE JSON object"));
        let user = &messages[1].content;
        assert!(user.contains("find the tallest tree"));
        assert!(user.contains("Tick 3 of 10 (7 left"));
        assert!(user.contains("Hyperion is 115.9 m"));
    }

    #[test]
    fn history_keeps_the_newest_entries_within_its_budget() {
        let history: Vec<String> = (0..100)
            .map(|n| format!("entry number {n:03} {}", "x".repeat(30)))
            .collect();
        let budget = Budget {
            history_tokens: 60,
            ..Budget::default()
        };
        let user = tick_messages(&state(&history, None), &budget)[1]
            .content
            .clone();
        assert!(user.contains("entry number 099"));
        assert!(!user.contains("entry number 000"));
        assert!(user.contains("older entries omitted"));
    }

    #[test]
    fn a_long_observation_is_truncated_to_its_budget() {
        let page = "word ".repeat(10_000);
        let budget = Budget {
            observation_tokens: 100,
            ..Budget::default()
        };
        let user = tick_messages(&state(&[], Some(&page)), &budget)[1]
            .content
            .clone();
        assert!(user.contains("…[truncated]"));
        assert!(estimate_tokens(&user) < 400, "{}", estimate_tokens(&user));
    }

    #[test]
    fn newest_within_keeps_order_and_counts_what_it_dropped() {
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.repeat(8)).collect();
        let (kept, dropped, used) = newest_within(&items, 5);
        assert_eq!(kept, vec!["cccccccc"]);
        assert_eq!((dropped, used), (2, 3));
        let (kept, dropped, used) = newest_within(&items, 100);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0], "aaaaaaaa");
        assert_eq!((dropped, used), (0, 9));
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let text = "é".repeat(100);
        let cut = truncate_to_tokens(&text, 5);
        assert!(cut.starts_with(&"é".repeat(7)));
        assert!(cut.ends_with("…[truncated]"));
        assert!(estimate_tokens(&cut) <= 5, "{cut}");
    }

    #[test]
    fn the_synthesis_prompt_lists_deliverables() {
        let messages = synthesis_messages("m", &[], &[], &["report".into()], &Budget::default());
        assert!(messages[0].content.contains("summary"));
        assert!(messages[1].content.contains("- report"));
    }

    fn lines(count: usize, label: &str, chars: usize) -> Vec<String> {
        (0..count)
            .map(|n| format!("{label} {n:03} {}", "x".repeat(chars)))
            .collect()
    }

    #[test]
    fn when_the_parts_do_not_fit_the_oldest_history_goes_first() {
        let history = lines(40, "history", 200);
        let notes = lines(3, "note", 40);
        let page = "word ".repeat(1_000);
        let budget = Budget::for_model(3_000, 1_000);
        let messages = tick_messages(
            &TickState {
                notes: &notes,
                ..state(&history, Some(&page))
            },
            &budget,
        );
        assert!(
            prompt_tokens(&messages) <= 2_000,
            "{}",
            prompt_tokens(&messages)
        );
        let user = &messages[1].content;
        assert!(user.contains("history 039"), "the newest history stays");
        assert!(!user.contains("history 000"), "the oldest goes");
        assert!(user.contains("older entries omitted"));
        assert!(
            user.contains("note 000") && user.contains("note 002"),
            "notes are kept"
        );
        assert!(
            user.contains(&"word ".repeat(300)),
            "the observation is kept"
        );
    }

    #[test]
    fn a_mandate_longer_than_the_model_can_read_is_cut() {
        let mandate = "m".repeat(40_000);
        let budget = Budget::for_model(4_000, 1_000);
        let messages = tick_messages(
            &TickState {
                mandate: &mandate,
                ..state(&[], None)
            },
            &budget,
        );
        assert!(prompt_tokens(&messages) <= 3_000);
        let messages = synthesis_messages(&mandate, &[], &[], &[], &budget);
        assert!(prompt_tokens(&messages) <= 3_000);
    }

    proptest::proptest! {
        #[test]
        fn every_prompt_fits_its_budget(
            context in 1_500usize..20_000,
            history in proptest::collection::vec(".{0,400}", 0..60),
            notes in proptest::collection::vec(".{0,300}", 0..20),
            memories in proptest::collection::vec(".{0,300}", 0..10),
            deliverables in proptest::collection::vec(".{0,2000}", 0..20),
            observation in proptest::option::of(".{0,20000}"),
            mandate in ".{1,3000}",
        ) {
            let budget = Budget::for_model(context, 500);
            let state = TickState {
                mandate: &mandate,
                tick: 7,
                max_ticks: 100,
                history: &history,
                notes: &notes,
                memories: &memories,
                observation: observation.as_deref(),
                deliverables: &deliverables,
            };
            let tick = tick_messages(&state, &budget);
            proptest::prop_assert!(prompt_tokens(&tick) <= budget.prompt_tokens);
            let synthesis = synthesis_messages(&mandate, &history, &notes, &deliverables, &budget);
            proptest::prop_assert!(prompt_tokens(&synthesis) <= budget.prompt_tokens);
        }
    }
}
