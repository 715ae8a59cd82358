//! The tasks a worker holds: the delivery each must be answered on, its tick, and the token that stops it
//! when its owner cancels it.
//!
//! Cancellations are noticed by polling: every [`CANCEL_POLL`] one pipelined round trip reads the
//! `cancel_requested` flag of every task held ([`InHand::poll_cancellations`]), so a cancel reaches the
//! task within that period whatever it is doing (waiting for the model, visiting a page), at a cost that
//! does not grow with the number of tasks held. Each tick's write also returns the flag.

use lapin::Acker;
use redis::aio::ConnectionManager;
use shared::Keys;
use shared::task::field;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the flags of the tasks held are read.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);

/// One task this worker holds, as presence and health show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInHand {
    /// The task id.
    pub id: Uuid,
    /// Ticks reported so far.
    pub tick: u32,
}

#[derive(Debug)]
struct Slot {
    acker: Acker,
    tick: watch::Receiver<u32>,
    /// Fired when the task's owner asked to cancel it.
    cancel: CancellationToken,
}

/// The tasks this worker holds, with the delivery each must be acked on.
#[derive(Debug, Clone)]
pub struct InHand {
    slots: Arc<Mutex<HashMap<Uuid, Slot>>>,
    count: watch::Sender<usize>,
}

impl Default for InHand {
    fn default() -> Self {
        Self {
            slots: Arc::default(),
            count: watch::channel(0).0,
        }
    }
}

impl InHand {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When `id` is running here, answer it on `acker` from now on (the old channel is gone).
    pub(super) fn adopt(&self, id: Uuid, acker: &Acker) -> bool {
        match self.lock().get_mut(&id) {
            Some(slot) => {
                slot.acker = acker.clone();
                true
            }
            None => false,
        }
    }

    /// Holds `id`, unless it is held already (then adopts `acker` and answers false).
    pub(super) fn claim(
        &self,
        id: Uuid,
        acker: &Acker,
        tick: watch::Receiver<u32>,
        cancel: CancellationToken,
    ) -> bool {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&id) {
            slot.acker = acker.clone();
            return false;
        }
        slots.insert(
            id,
            Slot {
                acker: acker.clone(),
                tick,
                cancel,
            },
        );
        self.count.send_replace(slots.len());
        true
    }

    /// Releases `id`, returning the delivery to answer.
    pub(super) fn release(&self, id: Uuid) -> Option<Acker> {
        let mut slots = self.lock();
        let slot = slots.remove(&id);
        self.count.send_replace(slots.len());
        slot.map(|slot| slot.acker)
    }

    /// The tasks held now.
    pub fn snapshot(&self) -> Vec<TaskInHand> {
        let mut tasks: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, slot)| TaskInHand {
                id: *id,
                tick: *slot.tick.borrow(),
            })
            .collect();
        tasks.sort_by_key(|task| task.id);
        tasks
    }

    /// How many tasks are held now.
    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Whether no task is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches the number of tasks held.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Reads the `cancel_requested` flag of every task held and not yet cancelled, in one round trip, and
    /// stops those whose owner asked. Returns how many it stopped.
    ///
    /// # Errors
    /// When Redis fails (the next poll tries again).
    pub async fn poll_cancellations(
        &self,
        redis: &ConnectionManager,
        keys: &Keys,
    ) -> Result<usize, redis::RedisError> {
        let watched: Vec<(Uuid, CancellationToken)> = self
            .lock()
            .iter()
            .filter(|(_, slot)| !slot.cancel.is_cancelled())
            .map(|(id, slot)| (*id, slot.cancel.clone()))
            .collect();
        if watched.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (id, _) in &watched {
            pipe.hget(keys.task(*id), field::CANCEL_REQUESTED);
        }
        let flags: Vec<Option<String>> = pipe.query_async(&mut redis.clone()).await?;
        let mut stopped = 0;
        for ((id, cancel), flag) in watched.iter().zip(flags) {
            if flag.as_deref() == Some("1") {
                tracing::info!(task_id = %id, "the task's owner asked to cancel it");
                cancel.cancel();
                stopped += 1;
            }
        }
        crate::metrics::cancellations(stopped);
        Ok(stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::message::Delivery;

    #[test]
    fn a_redelivery_of_a_held_task_is_adopted_not_held_twice() {
        let in_hand = InHand::default();
        let id = Uuid::new_v4();
        let first = Delivery::mock(1, "".into(), "q".into(), false, Vec::new());
        let second = Delivery::mock(2, "".into(), "q".into(), true, Vec::new());
        let ticks = watch::channel(0).1;
        assert!(in_hand.claim(id, &first.acker, ticks.clone(), CancellationToken::new()));
        assert!(in_hand.adopt(id, &second.acker));
        assert!(!in_hand.claim(id, &second.acker, ticks, CancellationToken::new()));
        assert_eq!(in_hand.len(), 1);
        assert_eq!(in_hand.release(id), Some(second.acker.clone()));
        assert!(in_hand.is_empty());
        assert!(!in_hand.adopt(id, &first.acker));
    }
}
