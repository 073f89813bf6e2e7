//! What a worker reports about one task attempt.

use crate::view::Transfer;
use crate::{Reason, TaskId, TaskState, Timestamp};

/// The state of one attempt as its worker sees it. A terminal report stays in the worker's
/// outbox, and is sent again after a reconnection, until the server acknowledges it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// The attempt's new state.
    pub state: TaskState,
    /// When it got there (worker clock).
    pub at: Timestamp,
    /// Exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// Why it failed or was canceled.
    pub reason: Option<Reason>,
    /// Details for humans.
    pub message: Option<String>,
    /// Files moved in the phase that just ended.
    pub transfers: Vec<Transfer>,
}

impl TaskReport {
    /// A report of a plain state change, now.
    pub fn new(task_id: TaskId, attempt: u32, state: TaskState) -> Self {
        TaskReport {
            task_id,
            attempt,
            state,
            at: Timestamp::now(),
            exit_code: None,
            reason: None,
            message: None,
            transfers: Vec::new(),
        }
    }
}
