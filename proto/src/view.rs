//! Read-only views of tasks, attempts, batches and workers: what the server reports and what
//! `herd ... --json` prints.

use serde::Serialize;

use crate::{BatchName, Reason, TaskId, TaskSpec, TaskState, Timestamp, WorkerId};

/// Files moved for one URI of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// `input`, `resource` or `output`.
    pub direction: String,
    /// The URI as given to `herd launch`.
    pub uri: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Files moved.
    pub files: u32,
    /// Each file moved, relative to the URI, with its size and checksum.
    pub items: Vec<TransferredFile>,
}

/// One file of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferredFile {
    /// Path relative to the transfer's URI (or download folder).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC64NVME, base64 of the big-endian value (as S3 shows it).
    pub crc64nvme: String,
}

/// One try at running a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    /// 1 for the first try.
    pub number: u32,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// That worker's name.
    pub worker_name: String,
    /// Where this attempt stands or how it ended.
    pub state: TaskState,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it failed or was canceled.
    pub reason: Option<Reason>,
    /// Details for humans.
    pub message: Option<String>,
    /// When the worker was given the task: the attempt's start.
    pub started_at: Timestamp,
    /// When staging began.
    pub download_started_at: Option<Timestamp>,
    /// When the command started.
    pub run_started_at: Option<Timestamp>,
    /// When the upload of `/output` began.
    pub upload_started_at: Option<Timestamp>,
    /// When the attempt ended.
    pub ended_at: Option<Timestamp>,
    /// Files staged in and out.
    pub transfers: Vec<Transfer>,
}

/// A task with its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskView {
    /// The task's id.
    pub id: TaskId,
    /// Its optional name.
    pub name: Option<String>,
    /// Its batch.
    pub batch: BatchName,
    /// The command, as argv.
    pub command: Vec<String>,
    /// Where the task stands.
    pub state: TaskState,
    /// The current (or next) attempt number.
    pub attempt: u32,
    /// The exit code of the last attempt that exited.
    pub exit_code: Option<i32>,
    /// Why the task failed or was canceled.
    pub reason: Option<Reason>,
    /// Details for humans.
    pub message: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptView>,
    /// The full specification.
    pub spec: TaskSpec,
    /// The user who queued it (`None` for tasks queued before herd had users).
    pub owner: Option<String>,
}

/// Task counts of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BatchView {
    /// The batch's name.
    pub name: String,
    /// Paused batches give no new task to workers.
    pub paused: bool,
    /// Tasks waiting for a worker.
    pub pending: u64,
    /// Tasks on a worker.
    pub active: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks that were canceled.
    pub canceled: u64,
    /// The user who owns it (`None` while no user does).
    pub owner: Option<String>,
}

impl BatchView {
    /// Every task of the batch.
    pub fn total(&self) -> u64 {
        self.pending + self.active + self.succeeded + self.failed + self.canceled
    }

    /// Nothing pending or running.
    pub fn is_finished(&self) -> bool {
        self.pending == 0 && self.active == 0
    }
}

/// A worker as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// The worker's id.
    pub id: WorkerId,
    /// Its name (the host name unless given).
    pub name: String,
    /// The batch it takes tasks from.
    pub batch: String,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Extra tasks staged ahead.
    pub prefetch: u32,
    /// `connected`, `quarantined` (connected, but given no task for now), `stopped` (said
    /// goodbye), `disconnected` (may come back) or `lost`.
    pub status: String,
    /// Why it is quarantined, while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    /// When its quarantine ends, while it is quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_until: Option<Timestamp>,
    /// Whether it runs Docker tasks.
    pub docker: bool,
    /// CPU cores of its host.
    pub cores: u32,
    /// Memory of its host, in bytes.
    pub memory_bytes: u64,
    /// The tasks it holds.
    pub tasks: Vec<TaskId>,
    /// When it first registered.
    pub registered_at: Timestamp,
    /// When the server last heard from it.
    pub last_seen: Timestamp,
    /// herd version of the worker.
    pub version: String,
}
