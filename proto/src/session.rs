//! The messages of a worker's session, as domain types: what a worker says ([`FromWorker`])
//! and what the server tells it ([`ToWorker`]), plus the task output both sides and the log
//! readers share ([`LogStream`], [`LogChunk`]). `convert` maps them to and from protobuf.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::{BatchName, TaskId, TaskReport, TaskSpec, WorkerId};

/// Which stream of a task's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for LogStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Part of what one attempt printed on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// Which stream.
    pub stream: LogStream,
    /// The bytes, as printed (not necessarily UTF-8, not necessarily whole lines).
    pub data: Vec<u8>,
}

/// What a worker says when it (re)connects.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// Its identity from an earlier connection, so the server keeps its tasks.
    pub worker_id: Option<WorkerId>,
    /// Its name (the host name unless given).
    pub name: String,
    /// The batch it serves.
    pub batch: BatchName,
    /// Tasks run at once; at least 1.
    pub concurrency: u32,
    /// Extra tasks staged ahead.
    pub prefetch: u32,
    /// Whether it runs Docker tasks.
    pub docker: bool,
    /// Whether it runs tasks without an image on its host (not with `--executor docker`).
    pub bare: bool,
    /// Whether it runs privileged Docker tasks.
    pub allow_privileged: bool,
    /// CPU cores of its host.
    pub cores: u32,
    /// Memory of its host, in bytes.
    pub memory_bytes: u64,
    /// Its herd version.
    pub version: String,
    /// Every attempt it holds, with its latest report.
    pub tasks: Vec<TaskReport>,
}

/// A message from a worker to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    /// The first message of a session.
    Hello(Hello),
    /// Reports, in the order they happened (one or several).
    Reports(Vec<TaskReport>),
    /// Output of a running attempt.
    Log(LogChunk),
    /// Still alive.
    Heartbeat,
}

/// A message from the server to one worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    /// The answer to a worker's hello.
    Welcome {
        /// The worker's identity, to give back when reconnecting.
        worker_id: WorkerId,
        /// How often the worker must show it is alive.
        heartbeat_interval: Duration,
    },
    /// Run this attempt.
    Assign {
        /// The task.
        task_id: TaskId,
        /// The attempt number.
        attempt: u32,
        /// What to run.
        spec: Arc<TaskSpec>,
    },
    /// Stop this attempt and forget it (killed by a user, or no longer the task's current
    /// attempt).
    Cancel {
        /// The task.
        task_id: TaskId,
        /// The attempt.
        attempt: u32,
        /// Why, for the worker's log.
        reason: String,
    },
    /// The attempt's final report is durable: the worker may forget it.
    Ack {
        /// The task.
        task_id: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// The worker was deleted: finish nothing more and exit.
    Shutdown {
        /// Why.
        reason: String,
    },
}
