//! Executors: how a staged task attempt actually runs.
//!
//! The worker prepares a [`Job`] (directories staged, environment computed), then hands it to
//! an [`Executor`]: [`docker::DockerExecutor`] (one container per attempt, through bollard) or
//! [`bare::BareExecutor`] (a process group on the host). The runner owns timeouts and
//! cancellation: it cancels the token, and the executor kills what it started, cleans up, and
//! returns [`Exit::Killed`]. What the command prints goes to a [`LogSink`], tagged with
//! herd-proto's [`LogStream`].

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use herd_proto::session::LogStream;
use herd_proto::{TaskId, TaskSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;

pub mod bare;
pub mod docker;

/// The host directories of one attempt. Docker mounts them on `/input`, `/output`,
/// `/resource` (read-only) and `/tmp`; the bare executor passes them as `INPUT`, `OUTPUT`,
/// `RESOURCE` and `TEMP`.
#[derive(Debug, Clone)]
pub struct TaskDirs {
    /// The attempt's scratch root; the bare executor's working directory.
    pub root: PathBuf,
    /// Staged inputs.
    pub input: PathBuf,
    /// What the task writes; uploaded afterwards.
    pub output: PathBuf,
    /// Resources, shared read-only.
    pub resource: PathBuf,
    /// Scratch space, removed after a successful attempt.
    pub tmp: PathBuf,
}

/// Everything an executor needs to run one attempt.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task.
    pub task_id: TaskId,
    /// The attempt number.
    pub attempt: u32,
    /// What to run.
    pub spec: Arc<TaskSpec>,
    /// Where.
    pub dirs: TaskDirs,
    /// Environment common to every executor: `CPU`, `THREADS`, `MEM`, `HERD_TASK_ID`,
    /// `HERD_ATTEMPT`.
    pub env: Vec<(String, String)>,
    /// A name unique on this host, e.g. `herd-w3-t17-a1` (the container's name).
    pub name: String,
}

/// Where an executor sends what the command prints, as it prints it.
#[derive(Debug, Clone)]
pub struct LogSink {
    sender: mpsc::Sender<(LogStream, Vec<u8>)>,
}

impl LogSink {
    /// A sink and the receiver that drains it.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<(LogStream, Vec<u8>)>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (LogSink { sender }, receiver)
    }

    /// Sends a chunk; waits when the receiver is behind (back-pressure, not loss).
    pub async fn send(&self, stream: LogStream, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        // The receiver is gone only when the attempt is being abandoned: nothing to keep.
        let _ = self.sender.send((stream, data)).await;
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code (128 + signal number when a signal ended it).
    Code(i32),
    /// The cancellation token fired and the executor killed it.
    Killed,
}

/// Runs one attempt to its end.
pub trait Executor: Send + Sync + 'static {
    /// Runs `job`, streaming its output into `logs`. When `cancel` fires, kills the command,
    /// cleans up, and returns `Ok(Exit::Killed)`.
    fn run<'a>(
        &'a self,
        job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>>;

    /// Short name for logs: `docker` or `bare`.
    fn name(&self) -> &'static str;
}
