//! What one mutation of the state produces: the keys of the rows it touched ([`Dirty`]) and
//! what must happen once those rows are durable ([`Effect`]s), in order.
//!
//! Pure data: the state machine fills a [`Change`] and knows nothing of channels or of the
//! database; the journal turns the keys into rows at commit time, and the queue turns the
//! effects into sends afterwards. Messages are addressed to a worker *connection* (an
//! [`Address`]), so a message meant for a connection that has since been replaced is dropped
//! instead of reaching the worker's new session.

use herd_proto::session::ToWorker;
use herd_proto::{BatchName, TaskId, WorkerId};

use super::Event;
use super::state::UserId;

/// One connection of one worker. Serials are never reused within a server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Address {
    pub worker: WorkerId,
    pub serial: u64,
}

/// Keys of rows a change touched.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub tasks: Vec<TaskId>,
    pub attempts: Vec<(TaskId, u32)>,
    pub batches: Vec<BatchName>,
    pub workers: Vec<WorkerId>,
    pub users: Vec<UserId>,
    pub tokens: Vec<u64>,
    /// Submits remembered or forgotten, by stored key.
    pub submissions: Vec<String>,
    pub counters: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.attempts.is_empty()
            && self.batches.is_empty()
            && self.workers.is_empty()
            && self.users.is_empty()
            && self.tokens.is_empty()
            && self.submissions.is_empty()
            && !self.counters
    }
}

/// Something to do once a change is durable.
#[derive(Debug, PartialEq)]
pub(crate) enum Effect {
    /// A message to a worker, through the connection that was current at the change.
    Send(Address, ToWorker),
    /// The state let go of this connection (replaced, lost, deleted, closed): once the
    /// messages before this one are sent, the connection's stream ends.
    Hangup(Address),
    /// Tell watchers.
    Notify(Event),
    /// Remove a task's log directory.
    RemoveLogs(TaskId),
    /// A worker was quarantined (for so many seconds, and why), or its quarantine ended
    /// (`None`): for the server's log.
    Quarantine(WorkerId, Option<(u64, String)>),
}

impl Effect {
    /// Whether a worker waits for this: such a change is never journaled lazily.
    pub fn reaches_a_worker(&self) -> bool {
        matches!(self, Effect::Send(..) | Effect::Hangup(_))
    }
}

/// A change: the rows it touched and what follows from it.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub dirty: Dirty,
    pub effects: Vec<Effect>,
    /// Tasks this change created (a submit): what to remove from memory if the database
    /// refuses the change.
    pub created_tasks: Vec<TaskId>,
}

impl Change {
    pub fn task(&mut self, id: TaskId) {
        self.dirty.tasks.push(id);
    }

    pub fn attempt(&mut self, id: TaskId, number: u32) {
        self.dirty.attempts.push((id, number));
    }

    pub fn batch(&mut self, name: &BatchName) {
        self.dirty.batches.push(name.clone());
    }

    pub fn worker(&mut self, id: WorkerId) {
        self.dirty.workers.push(id);
    }

    pub fn user(&mut self, id: UserId) {
        self.dirty.users.push(id);
    }

    pub fn token(&mut self, id: u64) {
        self.dirty.tokens.push(id);
    }

    pub fn submission(&mut self, key: String) {
        self.dirty.submissions.push(key);
    }

    pub fn counters(&mut self) {
        self.dirty.counters = true;
    }

    pub fn send(&mut self, to: Address, message: ToWorker) {
        self.effects.push(Effect::Send(to, message));
    }

    pub fn hangup(&mut self, connection: Address) {
        self.effects.push(Effect::Hangup(connection));
    }

    pub fn notify(&mut self, event: Event) {
        self.effects.push(Effect::Notify(event));
    }

    pub fn quarantine(&mut self, worker: WorkerId, started: Option<(u64, String)>) {
        self.effects.push(Effect::Quarantine(worker, started));
    }

    pub fn remove_logs(&mut self, id: TaskId) {
        self.effects.push(Effect::RemoveLogs(id));
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty() && self.effects.is_empty() && self.created_tasks.is_empty()
    }
}
