//! A task's checkpoint (`task:{id}:state`): what it had done after its last stored tick, so a redelivery
//! resumes there instead of starting again.
//!
//! The runtime writes it with every tick, in the same atomic step as the tick's status and events: the
//! tick, the usage, the deliverables and sources (what a task cancelled right after a resume keeps), and
//! the executor's own working state, which only the executor reads. A checkpoint this release cannot read
//! (written by a newer one, or damaged) is logged and the task resumes from its record: after the ticks the
//! record counts, with a fresh working state, so its budget still holds.

use crate::executor::{Progress, Resume};
use serde::{Deserialize, Serialize};
use shared::api::Usage;

/// The checkpoint format this release writes.
const VERSION: u32 = 1;

/// A task's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The format (1).
    pub version: u32,
    /// Ticks run, across all deliveries.
    pub tick: u32,
    /// Usage so far.
    pub usage: Usage,
    /// Deliverables so far.
    #[serde(default)]
    pub deliverables: Vec<String>,
    /// Sources so far.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The executor's working state.
    #[serde(default)]
    pub state: Option<serde_json::Value>,
    /// How long the task has run so far, across deliveries (ms), so its run-time bound holds across
    /// redeliveries too.
    #[serde(default)]
    pub run_ms: u64,
}

/// The checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// It is not JSON of this shape.
    #[error("the checkpoint does not parse: {0}")]
    Malformed(#[from] serde_json::Error),
    /// It was written in a format this release does not know.
    #[error("the checkpoint is format {0}; this release reads format {VERSION}")]
    Version(u32),
}

impl Checkpoint {
    /// The checkpoint after the tick `progress` records, `run` into the task's run time.
    pub fn of(progress: &Progress, run: std::time::Duration) -> Self {
        Self {
            version: VERSION,
            tick: progress.event.tick,
            usage: progress.event.usage,
            deliverables: progress.deliverables.clone(),
            sources: progress.sources.clone(),
            state: progress.state.clone(),
            run_ms: u64::try_from(run.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The stored text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint always serialises")
    }

    /// Reads a stored checkpoint.
    ///
    /// # Errors
    /// [`CheckpointError`] when it is not one this release can resume from.
    pub fn decode(text: &str) -> Result<Self, CheckpointError> {
        let checkpoint: Self = serde_json::from_str(text)?;
        if checkpoint.version != VERSION {
            return Err(CheckpointError::Version(checkpoint.version));
        }
        Ok(checkpoint)
    }

    /// Where the executor resumes.
    pub fn resume(&self) -> Resume {
        Resume {
            tick: self.tick,
            usage: self.usage,
            state: self.state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_resumes_after_its_tick() {
        let mut progress = Progress::default();
        progress.event.tick = 7;
        progress.event.usage.model_calls = 7;
        progress.deliverables = vec!["d".into()];
        progress.state = Some(serde_json::json!({"history": ["a"]}));
        let checkpoint = Checkpoint::of(&progress, std::time::Duration::from_millis(1_500));
        let back = Checkpoint::decode(&checkpoint.encode()).unwrap();
        assert_eq!(back, checkpoint);
        assert_eq!(back.run_ms, 1_500);
        let resume = back.resume();
        assert_eq!(resume.tick, 7);
        assert_eq!(resume.usage.model_calls, 7);
        assert_eq!(resume.state, progress.state);
    }

    #[test]
    fn a_damaged_or_newer_checkpoint_is_refused_with_a_reason() {
        assert!(matches!(
            Checkpoint::decode("{not json"),
            Err(CheckpointError::Malformed(_))
        ));
        let newer = r#"{"version":2,"tick":3,"usage":{},"state":null}"#;
        assert!(matches!(
            Checkpoint::decode(newer),
            Err(CheckpointError::Version(2))
        ));
        // Fields a later release adds in the same format are ignored.
        let extra = r#"{"version":1,"tick":3,"usage":{},"future":true}"#;
        assert_eq!(Checkpoint::decode(extra).unwrap().tick, 3);
    }
}
