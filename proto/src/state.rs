//! The task state machine and the reasons an attempt ends badly.
//!
//! ```text
//! pending → assigned → downloading → running → uploading → succeeded | failed | canceled
//! ```
//! A worker moves an attempt forward only (phases may be skipped: a task with no inputs goes
//! from `assigned` to `running`). Only the server moves a task back to `pending`: a retry, or a
//! lost worker, which always starts a new attempt.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::Error;

/// Where a task (or one attempt of it) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Queued, waiting for a worker.
    Pending,
    /// Given to a worker, which has not started it yet.
    Assigned,
    /// The worker is staging inputs and resources.
    Downloading,
    /// The command runs.
    Running,
    /// The worker is uploading `/output`.
    Uploading,
    /// Exited 0 and its output, if any, is uploaded.
    Succeeded,
    /// Ended without success; `reason` says why.
    Failed,
    /// Killed by a user, or its batch was stopped.
    Canceled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Downloading,
        TaskState::Running,
        TaskState::Uploading,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Canceled,
    ];

    /// The lowercase name used in the CLI, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Downloading => "downloading",
            TaskState::Running => "running",
            TaskState::Uploading => "uploading",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }

    /// Succeeded, failed or canceled: nothing more will happen to it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Canceled
        )
    }

    /// On a worker: assigned, downloading, running or uploading.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TaskState::Assigned
                | TaskState::Downloading
                | TaskState::Running
                | TaskState::Uploading
        )
    }

    /// Whether a worker may move an attempt from `self` to `next`: forward only, and never out
    /// of a terminal state.
    pub fn worker_may_move_to(self, next: TaskState) -> bool {
        self.is_active() && next != TaskState::Pending && next > self
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let lower = text.trim().to_ascii_lowercase();
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = TaskState::ALL.iter().map(|state| state.as_str()).collect();
                Error::invalid(
                    "state",
                    format!(
                        "`{text}` is not a task state; use one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Why an attempt failed or was canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The command exited with a non-zero code.
    ExitCode,
    /// The command ran longer than `--run-timeout`.
    Timeout,
    /// Staging inputs or resources failed (or exceeded `--download-timeout`).
    Input,
    /// Uploading `/output` failed.
    Output,
    /// The executor could not start or watch the command (Docker error, missing program...).
    Executor,
    /// The worker stopped answering (a crash); the task was given to another attempt.
    WorkerLost,
    /// A user killed the task.
    Killed,
    /// A user stopped the task's batch.
    BatchStopped,
    /// The worker was stopped or deleted (not a crash); the task was given to another attempt.
    WorkerStopped,
    /// The task's attempts were lost with their worker `--crash-limit` times.
    CrashLimit,
    /// The stored specification could not be read or no longer passes this version's checks
    /// (found at start-up): the task is not run, its stored text is kept as it was.
    InvalidSpec,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 11] = [
        Reason::ExitCode,
        Reason::Timeout,
        Reason::Input,
        Reason::Output,
        Reason::Executor,
        Reason::WorkerLost,
        Reason::Killed,
        Reason::BatchStopped,
        Reason::WorkerStopped,
        Reason::CrashLimit,
        Reason::InvalidSpec,
    ];

    /// The snake_case name used in the CLI, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ExitCode => "exit_code",
            Reason::Timeout => "timeout",
            Reason::Input => "input",
            Reason::Output => "output",
            Reason::Executor => "executor",
            Reason::WorkerLost => "worker_lost",
            Reason::Killed => "killed",
            Reason::BatchStopped => "batch_stopped",
            Reason::WorkerStopped => "worker_stopped",
            Reason::CrashLimit => "crash_limit",
            Reason::InvalidSpec => "invalid_spec",
        }
    }

    /// Whether a failed attempt ending so uses up one of the task's `--retry`: not when its
    /// worker was lost (that counts against `--crash-limit`) or stopped.
    pub fn counts_against_retry(self) -> bool {
        !matches!(self, Reason::WorkerLost | Reason::WorkerStopped)
    }

    /// Whether an attempt ending so says something is wrong with the worker rather than the
    /// task: staging, uploading or the executor failed. Such failures in a row quarantine the
    /// worker.
    pub fn blames_worker(self) -> bool {
        matches!(self, Reason::Input | Reason::Output | Reason::Executor)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or_else(|| {
                Error::invalid("reason", format!("`{text}` is not a known failure reason"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        }
        assert!("finished".parse::<TaskState>().is_err());
    }

    #[test]
    fn workers_only_move_forward() {
        assert!(TaskState::Assigned.worker_may_move_to(TaskState::Running));
        assert!(TaskState::Running.worker_may_move_to(TaskState::Failed));
        assert!(!TaskState::Running.worker_may_move_to(TaskState::Downloading));
        assert!(!TaskState::Succeeded.worker_may_move_to(TaskState::Failed));
        assert!(!TaskState::Pending.worker_may_move_to(TaskState::Running));
        assert!(!TaskState::Running.worker_may_move_to(TaskState::Pending));
    }
}
