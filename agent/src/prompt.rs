//! The prompt for each tick and for the final synthesis: pure functions of the task's state.
//!
//! Everything that grows (history, notes, recalled memory, page text) is bounded by a token budget so a
//! long task never outgrows the model's context. Tokens are estimated as four characters each, which
//! overestimates for English and keeps the budget on the safe side.

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

/// Token budgets for the parts of a tick prompt that grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// History lines (the newest kept).
    pub history_tokens: usize,
    /// Notes (the newest kept).
    pub notes_tokens: usize,
    /// Recalled memories.
    pub memory_tokens: usize,
    /// The last observation (page text, search results).
    pub observation_tokens: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            history_tokens: 1500,
            notes_tokens: 600,
            memory_tokens: 600,
            observation_tokens: 2000,
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

/// `text` cut to about `tokens` tokens at a character boundary, marked when cut.
pub fn truncate_to_tokens(text: &str, tokens: usize) -> String {
    let limit = tokens.saturating_mul(4);
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let cut: String = text.chars().take(limit).collect();
    format!("{cut} …[truncated]")
}

/// The newest `items` that fit in `tokens`, in their original order.
pub fn newest_within(items: &[String], tokens: usize) -> (Vec<&str>, usize) {
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
    (kept, dropped)
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

/// The messages for one tick.
pub fn tick_messages(state: &TickState<'_>, budget: &Budget) -> Vec<Message> {
    let mut user = format!(
        "# Mandate\n{}\n\nTick {} of {} ({} left after this one).\n",
        state.mandate,
        state.tick,
        state.max_ticks,
        state.max_ticks.saturating_sub(state.tick)
    );
    let (history, dropped) = newest_within(state.history, budget.history_tokens);
    section(&mut user, "History", &history, dropped);
    let (notes, dropped) = newest_within(state.notes, budget.notes_tokens);
    section(&mut user, "Notes", &notes, dropped);
    let (memories, dropped) = newest_within(state.memories, budget.memory_tokens);
    section(&mut user, "Recalled memory", &memories, dropped);
    let deliverables: Vec<&str> = state.deliverables.iter().map(String::as_str).collect();
    section(&mut user, "Deliverables so far", &deliverables, 0);
    user.push_str("\n## Last observation\n");
    match state.observation {
        Some(observation) => {
            user.push_str(&truncate_to_tokens(observation, budget.observation_tokens));
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

/// The messages for the final synthesis.
pub fn synthesis_messages(
    mandate: &str,
    history: &[String],
    notes: &[String],
    deliverables: &[String],
    budget: &Budget,
) -> Vec<Message> {
    let mut user = format!("# Mandate\n{mandate}\n");
    let (history, dropped) = newest_within(history, budget.history_tokens);
    section(&mut user, "History", &history, dropped);
    let (notes, dropped) = newest_within(notes, budget.notes_tokens);
    section(&mut user, "Notes", &notes, dropped);
    let deliverables: Vec<&str> = deliverables.iter().map(String::as_str).collect();
    section(&mut user, "Deliverables", &deliverables, 0);
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
        let (kept, dropped) = newest_within(&items, 5);
        assert_eq!(kept, vec!["cccccccc"]);
        assert_eq!(dropped, 2);
        let (kept, dropped) = newest_within(&items, 100);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0], "aaaaaaaa");
        assert_eq!(dropped, 0);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let text = "é".repeat(100);
        let cut = truncate_to_tokens(&text, 5);
        assert!(cut.starts_with(&"é".repeat(20)));
        assert!(cut.ends_with("…[truncated]"));
    }

    #[test]
    fn the_synthesis_prompt_lists_deliverables() {
        let messages = synthesis_messages("m", &[], &[], &["report".into()], &Budget::default());
        assert!(messages[0].content.contains("summary"));
        assert!(messages[1].content.contains("- report"));
    }
}
