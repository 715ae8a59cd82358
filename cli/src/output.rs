//! What the commands print: words for people, or JSON with `--json`.

use crate::client::QueueFigures;
use shared::ShownStatus;
use shared::api::TaskResponse;
use std::fmt::Write;

/// The exit code a finished task means: 0 completed, 1 failed, 3 cancelled (0 while it still runs).
pub fn exit_code_of(task: &TaskResponse) -> u8 {
    match task.status {
        ShownStatus::Failed => 1,
        ShownStatus::Cancelled => 3,
        ShownStatus::Completed
        | ShownStatus::InQueue
        | ShownStatus::InProgress
        | ShownStatus::Cancelling => 0,
    }
}

/// A task as text: what it is, where it is, and its result once finished.
pub fn task(task: &TaskResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Task {}", task.correlation_id);
    let _ = writeln!(
        out,
        "  status   {} (tick {} of {})",
        task.status.as_str(),
        task.tick,
        task.max_ticks
    );
    let _ = writeln!(out, "  mandate  {}", one_line(&task.mandate, 200));
    let _ = writeln!(
        out,
        "  created  {}   updated {}",
        task.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        task.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let u = &task.usage;
    let _ = writeln!(
        out,
        "  usage    {} model calls, {} tokens in, {} out, {} searches, {} visits",
        u.model_calls, u.prompt_tokens, u.completion_tokens, u.searches, u.visits
    );
    if let Some(error) = &task.error {
        let _ = writeln!(out, "  error    {error}");
    }
    if let Some(result) = &task.result {
        let _ = writeln!(out, "\n{}", result.summary);
        if !result.deliverables.is_empty() {
            let _ = writeln!(out, "\nDeliverables:");
            for deliverable in &result.deliverables {
                let _ = writeln!(out, "  - {}", deliverable.replace('\n', "\n    "));
            }
        }
        if !result.sources.is_empty() {
            let _ = writeln!(out, "\nSources:");
            for source in &result.sources {
                let _ = writeln!(out, "  - {source}");
            }
        }
    }
    out
}

/// One line per task, newest first.
pub fn list(tasks: &[TaskResponse]) -> String {
    if tasks.is_empty() {
        return "No tasks.\n".to_owned();
    }
    let mut out = format!(
        "{:<36}  {:<11}  {:>9}  {:<16}  {}\n",
        "ID", "STATUS", "TICKS", "CREATED (UTC)", "MANDATE"
    );
    for task in tasks {
        let _ = writeln!(
            out,
            "{:<36}  {:<11}  {:>9}  {:<16}  {}",
            task.correlation_id,
            task.status.as_str(),
            format!("{}/{}", task.tick, task.max_ticks),
            task.created_at.format("%Y-%m-%d %H:%M"),
            one_line(&task.mandate, 60)
        );
    }
    out
}

/// The fleet in a sentence.
pub fn fleet(figures: &QueueFigures) -> String {
    format!(
        "{} {} live; {} {} waiting, {} being worked on\n",
        figures.agents,
        plural(figures.agents, "agent", "agents"),
        figures.ready,
        plural(figures.ready, "task", "tasks"),
        figures.in_flight
    )
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `text` on one line, cut at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max - 1).collect::<String>())
    } else {
        flat
    }
}

/// JSON for `--json`.
pub fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("an API value always serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_or_multi_line_mandate_is_one_cut_line() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line(&"x".repeat(20), 5), "xxxx…");
    }

    #[test]
    fn the_fleet_reads_as_a_sentence() {
        let figures = QueueFigures {
            ready: 1,
            in_flight: 2,
            agents: 1,
        };
        assert_eq!(
            fleet(&figures),
            "1 agent live; 1 task waiting, 2 being worked on\n"
        );
    }
}
