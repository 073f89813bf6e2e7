//! What clients ask of the `Queue` service, beyond the specs and ids: filters, log requests,
//! batch actions. `convert` maps them to and from protobuf.

use crate::session::LogStream;
use crate::{BatchName, TaskId, TaskState};

/// The key that makes a submit safe to repeat: 1 to 128 printable ASCII characters, no
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// The longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

impl IdempotencyKey {
    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Self, crate::Error> {
        let text = text.into();
        if text.is_empty()
            || text.len() > MAX_IDEMPOTENCY_KEY_CHARS
            || !text.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(crate::Error::invalid(
                "idempotency key",
                format!(
                    "an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters and no spaces"
                ),
            ));
        }
        Ok(IdempotencyKey(text))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only this batch's.
    pub batch: Option<BatchName>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// At most this many, oldest first; `None` for all.
    pub limit: Option<u32>,
}

/// Which log to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    /// The task.
    pub task_id: TaskId,
    /// The attempt; `None` for the latest.
    pub attempt: Option<u32>,
    /// Which stream.
    pub stream: LogStream,
    /// Keep streaming what the attempt prints until it ends.
    pub follow: bool,
}

/// What to do to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAction {
    /// Give no new task of it to workers.
    Pause,
    /// Undo a pause.
    Resume,
    /// Cancel every unfinished task.
    Stop,
    /// Stop it and delete it with all its tasks.
    Delete,
}
