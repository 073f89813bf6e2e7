//! Executors for tests and benchmarks, not for users.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use herd_proto::TaskId;
use herd_worker::Error;
use herd_worker::executor::{Executor, Exit, Job, LogSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Finishes every attempt at once with exit code 0: measures herd's own overhead.
#[derive(Debug, Default)]
pub struct InstantExecutor;

impl Executor for InstantExecutor {
    fn run<'a>(
        &'a self,
        _job: &'a Job,
        _logs: LogSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        Box::pin(async { Ok(Exit::Code(0)) })
    }

    fn name(&self) -> &'static str {
        "instant"
    }
}

/// Fails every attempt at once with an executor error, as a worker whose container engine
/// is broken would: tests the quarantine of broken workers.
#[derive(Debug, Default)]
pub struct BrokenExecutor;

impl Executor for BrokenExecutor {
    fn run<'a>(
        &'a self,
        _job: &'a Job,
        _logs: LogSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        Box::pin(async {
            Err(Error::Start(
                "this test executor is broken on purpose".to_owned(),
            ))
        })
    }

    fn name(&self) -> &'static str {
        "broken"
    }
}

/// Wraps an executor and reports the moment each attempt starts running.
pub struct ClockedExecutor {
    inner: Arc<dyn Executor>,
    started: mpsc::UnboundedSender<(TaskId, Instant)>,
}

impl ClockedExecutor {
    /// Wraps `inner`; start times arrive on the returned receiver.
    pub fn new(inner: Arc<dyn Executor>) -> (Self, mpsc::UnboundedReceiver<(TaskId, Instant)>) {
        let (started, receiver) = mpsc::unbounded_channel();
        (ClockedExecutor { inner, started }, receiver)
    }
}

impl Executor for ClockedExecutor {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        let _ = self.started.send((job.task_id, Instant::now()));
        self.inner.run(job, logs, cancel)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}
