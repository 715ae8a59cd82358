//! What the model answers each tick, and how leniently it is read.
//!
//! Models wrap JSON in code fences, add keys, leave optional keys out, write `"search"` for `"SEARCH"`
//! or put a whole action in one string. All of that is accepted; what cannot be read becomes a
//! [`ParseError`] whose text is fed back to the model as the next observation (the tick is still spent).

use serde_json::{Map, Value};

/// The action a tick ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Query the web search API.
    Search(String),
    /// Open a URL in the browser and read its text.
    Visit(String),
    /// Think without I/O.
    Think,
    /// Finish: synthesise the result.
    Exit,
}

impl Action {
    /// The verb as the model writes it.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Search(_) => "SEARCH",
            Action::Visit(_) => "VISIT",
            Action::Think => "THINK",
            Action::Exit => "EXIT",
        }
    }
}

/// One tick's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickOutput {
    /// The model's reasoning this tick.
    pub thought: String,
    /// One line to append to the task's history.
    pub history_update: String,
    /// A note to keep in the prompt from now on.
    pub note_update: Option<String>,
    /// Texts to store in vector memory.
    pub memory_write: Vec<String>,
    /// Queries to run against vector memory for the next tick.
    pub memory_query: Vec<String>,
    /// What to do now.
    pub next_action: Action,
    /// A deliverable produced this tick.
    pub deliverable: Option<String>,
}

/// The final synthesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthesis {
    /// What was done and found.
    pub summary: String,
    /// The deliverables.
    pub deliverables: Vec<String>,
}

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No JSON object could be found in the answer.
    #[error("no JSON object found in the answer")]
    NoJson,
    /// The JSON lacks a required key or has it in the wrong shape.
    #[error("{0}")]
    Shape(String),
}

/// Finds the JSON object in a model's answer: the whole text, a fenced block, or the outermost braces.
pub fn extract_object(text: &str) -> Result<Map<String, Value>, ParseError> {
    let trimmed = text.trim();
    let mut candidates = vec![trimmed.to_owned()];
    let mut rest = trimmed;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |n| n + 1);
        let Some(end) = after[body_start..].find("```") else {
            break;
        };
        candidates.push(after[body_start..body_start + end].trim().to_owned());
        rest = &after[body_start + end + 3..];
    }
    if let (Some(open), Some(close)) = (trimmed.find('{'), trimmed.rfind('}'))
        && open < close
    {
        candidates.push(trimmed[open..=close].to_owned());
    }
    candidates
        .iter()
        .find_map(|c| match serde_json::from_str::<Value>(c) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .ok_or(ParseError::NoJson)
}

fn string(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A list of strings; a lone string counts as a list of one, blanks are dropped.
fn strings(map: &Map<String, Value>, key: &str) -> Vec<String> {
    let items = match map.get(key) {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        })
        .collect()
}

fn parse_action(value: Option<&Value>) -> Result<Action, ParseError> {
    let (verb, param) = match value {
        Some(Value::Object(action)) => (
            string(action, "verb")
                .or_else(|| string(action, "action"))
                .unwrap_or_default(),
            string(action, "param")
                .or_else(|| string(action, "parameter"))
                .or_else(|| string(action, "query"))
                .or_else(|| string(action, "url"))
                .unwrap_or_default(),
        ),
        Some(Value::String(line)) => {
            let line = line.trim();
            let (verb, param) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (verb.to_owned(), param.trim().to_owned())
        }
        _ => {
            return Err(ParseError::Shape(
                "next_action is missing: give {\"verb\": \"SEARCH\"|\"VISIT\"|\"THINK\"|\"EXIT\", \"param\": \"...\"}".into(),
            ));
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "SEARCH" if !param.is_empty() => Ok(Action::Search(param)),
        "VISIT" if !param.is_empty() => Ok(Action::Visit(param)),
        "SEARCH" | "VISIT" => Err(ParseError::Shape(format!(
            "{} needs a param ({})",
            verb.to_ascii_uppercase(),
            if verb.eq_ignore_ascii_case("SEARCH") {
                "the query"
            } else {
                "the URL"
            }
        ))),
        "THINK" => Ok(Action::Think),
        "EXIT" => Ok(Action::Exit),
        other => Err(ParseError::Shape(format!(
            "unknown verb {other:?}: use SEARCH, VISIT, THINK or EXIT"
        ))),
    }
}

/// Reads one tick's answer.
///
/// # Errors
/// [`ParseError`] saying what is wrong, to be shown to the model.
pub fn parse_tick(text: &str) -> Result<TickOutput, ParseError> {
    let map = extract_object(text)?;
    Ok(TickOutput {
        thought: string(&map, "thought").unwrap_or_default(),
        history_update: string(&map, "history_update").unwrap_or_default(),
        note_update: string(&map, "note_update"),
        memory_write: strings(&map, "memory_write"),
        memory_query: strings(&map, "memory_query"),
        next_action: parse_action(map.get("next_action"))?,
        deliverable: string(&map, "deliverable"),
    })
}

/// Reads the synthesis answer.
///
/// # Errors
/// [`ParseError`] when there is no JSON object or no summary.
pub fn parse_synthesis(text: &str) -> Result<Synthesis, ParseError> {
    let map = extract_object(text)?;
    let summary = string(&map, "summary")
        .ok_or_else(|| ParseError::Shape("the synthesis has no summary".into()))?;
    Ok(Synthesis {
        summary,
        deliverables: strings(&map, "deliverables"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_answer_is_read_field_by_field() {
        let out = parse_tick(
            r#"{"thought":"t","history_update":"h","note_update":"n","memory_write":["a","b"],
               "memory_query":["q"],"next_action":{"verb":"SEARCH","param":"rust async"},
               "deliverable":"d"}"#,
        )
        .unwrap();
        assert_eq!(out.thought, "t");
        assert_eq!(out.history_update, "h");
        assert_eq!(out.note_update.as_deref(), Some("n"));
        assert_eq!(out.memory_write, vec!["a", "b"]);
        assert_eq!(out.memory_query, vec!["q"]);
        assert_eq!(out.next_action, Action::Search("rust async".into()));
        assert_eq!(out.deliverable.as_deref(), Some("d"));
    }

    #[test]
    fn missing_optional_keys_are_defaulted_and_unknown_keys_ignored() {
        let out = parse_tick(r#"{"next_action":{"verb":"THINK"},"mood":"great"}"#).unwrap();
        assert_eq!(out.next_action, Action::Think);
        assert!(out.memory_write.is_empty());
        assert_eq!(out.note_update, None);
        assert_eq!(out.deliverable, None);
    }

    #[test]
    fn a_fenced_json_object_is_accepted() {
        let text = "Sure! Here is my answer:\n```json\n{\"next_action\": {\"verb\": \"EXIT\", \"param\": \"\"}}\n```\nThanks.";
        assert_eq!(parse_tick(text).unwrap().next_action, Action::Exit);
    }

    #[test]
    fn an_object_amid_prose_is_accepted() {
        let text = "I will visit it. {\"next_action\": {\"verb\": \"visit\", \"param\": \"https://example.org/\"}} done";
        assert_eq!(
            parse_tick(text).unwrap().next_action,
            Action::Visit("https://example.org/".into())
        );
    }

    #[test]
    fn an_action_written_as_one_string_is_accepted() {
        let out = parse_tick(r#"{"next_action":"SEARCH best rust books"}"#).unwrap();
        assert_eq!(out.next_action, Action::Search("best rust books".into()));
    }

    #[test]
    fn a_lone_string_counts_as_a_list_of_one() {
        let out =
            parse_tick(r#"{"memory_write":"remember me","next_action":{"verb":"THINK"}}"#).unwrap();
        assert_eq!(out.memory_write, vec!["remember me"]);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(
            parse_tick("I don't know what to do"),
            Err(ParseError::NoJson)
        );
        assert_eq!(parse_tick("[1, 2, 3]"), Err(ParseError::NoJson));
    }

    #[test]
    fn a_missing_or_unknown_action_is_refused_with_a_reason() {
        let missing = parse_tick(r#"{"thought":"hmm"}"#).unwrap_err().to_string();
        assert!(missing.contains("next_action is missing"), "{missing}");
        let unknown = parse_tick(r#"{"next_action":{"verb":"DANCE"}}"#)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown verb"), "{unknown}");
        let empty = parse_tick(r#"{"next_action":{"verb":"VISIT","param":" "}}"#)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("VISIT needs a param"), "{empty}");
    }

    #[test]
    fn a_synthesis_needs_a_summary() {
        let ok = parse_synthesis(r#"{"summary":"s","deliverables":["a"]}"#).unwrap();
        assert_eq!(ok.deliverables, vec!["a"]);
        assert!(parse_synthesis(r#"{"deliverables":["a"]}"#).is_err());
    }
}
