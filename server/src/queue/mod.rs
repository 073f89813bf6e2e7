//! The queue: scheduling state in memory, every acknowledged change durable first.
//!
//! No tonic and no SQL here: the gRPC service converts messages and calls [`Queue`]; the
//! [`Store`] is reached only through the journal. Every mutation takes the state lock, changes
//! the state, records the rows it touched and its effects in the journal, and releases the
//! lock; answers that promise durability (a submit, a kill...) wait for the journal's commit.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_proto::session::{Hello, LogChunk, ToWorker};
use herd_proto::view::{BatchView, TaskView, WorkerView};
use herd_proto::{BatchName, Reason, TaskId, TaskReport, TaskSpec, TaskState, WorkerId};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::logs::LogStore;
use crate::store::{Store, StoreError};
use crate::stored_spec;

mod journal;
mod state;

use journal::{Change, Effect, Journal, wait_durable};
use state::State;

/// Something watchers may want to look at again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A task changed state (or was deleted).
    Task(TaskId),
    /// A batch's counts or settings changed (or it was deleted).
    Batch(BatchName),
    /// A task printed something.
    Log(TaskId),
}

/// What can go wrong with a queue operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No such task.
    #[error("task {0} does not exist; `herd task list` shows the tasks")]
    TaskNotFound(TaskId),
    /// No such batch.
    #[error("batch `{0}` does not exist; `herd batch list` shows the batches")]
    BatchNotFound(BatchName),
    /// No such worker.
    #[error("worker {0} does not exist; `herd worker list` shows the workers")]
    WorkerNotFound(WorkerId),
    /// The operation does not apply to the current state.
    #[error("{0}")]
    InvalidState(String),
    /// A value was refused.
    #[error(transparent)]
    Invalid(#[from] herd_proto::Error),
    /// The store failed at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server is shutting down.
    #[error("the server is shutting down; try again when it is back")]
    ShuttingDown,
}

/// Timing settings of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// A worker silent this long is declared lost and its tasks are given a new attempt.
    pub worker_timeout: Duration,
    /// How often workers send a heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            worker_timeout: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    logs: LogStore,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn run_effect(&self, effect: Effect) {
        match effect {
            Effect::Send(sender, message) => {
                // A closed connection: the worker reconciles when it comes back.
                let _ = sender.send(message);
            }
            Effect::Notify(event) => {
                let _ = self.events.send(event);
            }
            Effect::RemoveLogs(task_id) => self.logs.remove(task_id),
        }
    }
}

/// The queue. Cheap to share (`Arc<Queue>`).
pub struct Queue {
    shared: Arc<Shared>,
    committed: tokio::sync::watch::Receiver<u64>,
    config: QueueConfig,
    closing: CancellationToken,
}

impl Queue {
    /// Loads the store's content and starts the journal writer.
    pub async fn open(
        store: Arc<dyn Store>,
        logs: LogStore,
        config: QueueConfig,
    ) -> Result<Arc<Queue>, QueueError> {
        let snapshot = store.load().await?;
        let (events, _) = broadcast::channel(4096);
        let mut restore_error = None;
        let mut committed = None;
        let shared = Arc::new_cyclic(|weak| {
            let (journal, _writer) = Journal::start(store.clone(), weak.clone());
            committed = Some(journal.committed());
            let mut state = State::new(journal);
            if let Err(error) = state.restore(snapshot) {
                restore_error = Some(error);
            }
            Shared {
                state: Mutex::new(state),
                events,
                logs,
            }
        });
        if let Some(error) = restore_error {
            return Err(error.into());
        }
        {
            let state = shared.lock();
            info!(
                tasks = state.tasks.len(),
                batches = state.batches.len(),
                workers = state.workers.len(),
                store = %store.describe(),
                "queue loaded"
            );
        }
        Ok(Arc::new(Queue {
            shared,
            committed: committed.expect("set by new_cyclic"),
            config,
            closing: CancellationToken::new(),
        }))
    }

    /// Ends every worker session and every watch stream, so that a graceful shutdown of the
    /// gRPC server does not wait for streams that would never end. Workers reconnect.
    pub fn close(&self) {
        self.closing.cancel();
        self.shared.lock().close_sessions();
    }

    /// Fires when the queue is closing: long-lived streams end then.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// The queue's timing settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Runs `mutation` under the lock and journals what it changed; returns its result and
    /// the sequence number to wait for.
    fn mutate<T>(
        &self,
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, QueueError>,
    ) -> (Result<T, QueueError>, Option<u64>) {
        self.mutate_with(false, mutation)
    }

    /// [`Queue::mutate`], journaled lazily when `lazy` (see [`journal`]): nobody may wait for
    /// the sequence number then, so none is returned.
    fn mutate_with<T>(
        &self,
        lazy: bool,
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, QueueError>,
    ) -> (Result<T, QueueError>, Option<u64>) {
        let mut state = self.shared.lock();
        let mut change = Change::default();
        let result = mutation(&mut state, &mut change);
        let sequence = state.journal.push(change, lazy);
        (result, sequence.filter(|_| !lazy))
    }

    /// Like [`Queue::mutate`], and answers only once the change is durable.
    async fn mutate_durably<T>(
        &self,
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let (result, sequence) = self.mutate(mutation);
        if let Some(sequence) = sequence
            && !wait_durable(self.committed.clone(), sequence).await
        {
            return Err(QueueError::ShuttingDown);
        }
        result
    }

    /// Queues tasks; all of them are durable when this returns.
    pub async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, QueueError> {
        let started = std::time::Instant::now();
        let count = specs.len();
        // Encoding happens outside the lock.
        let encoded: Vec<(TaskSpec, String)> = specs
            .into_iter()
            .map(|spec| {
                let json = stored_spec::encode(&spec);
                (spec, json)
            })
            .collect();
        let encoded_at = started.elapsed();
        let ids = self
            .mutate_durably(|state, change| Ok(state.submit(encoded, change)))
            .await?;
        tracing::debug!(
            tasks = count,
            encode_ms = encoded_at.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "tasks queued"
        );
        Ok(ids)
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Result<TaskView, QueueError> {
        self.shared.lock().task_view(id)
    }

    /// Tasks, oldest first, optionally filtered; `limit` 0 means all.
    pub fn tasks(
        &self,
        batch: Option<&BatchName>,
        state: Option<TaskState>,
        limit: usize,
    ) -> Vec<TaskView> {
        self.shared.lock().list_tasks(batch, state, limit)
    }

    /// Kills a task (cancels it if pending).
    pub async fn kill(&self, id: TaskId) -> Result<TaskView, QueueError> {
        self.mutate_durably(|state, change| state.cancel(id, Reason::Killed, change))
            .await?;
        self.task(id)
    }

    /// Queues a finished task again.
    pub async fn retry(&self, id: TaskId) -> Result<TaskView, QueueError> {
        self.mutate_durably(|state, change| state.retry(id, change))
            .await?;
        self.task(id)
    }

    /// Deletes a task and its logs, killing it first if needed.
    pub async fn delete_task(&self, id: TaskId) -> Result<(), QueueError> {
        self.mutate_durably(|state, change| state.delete_task(id, change))
            .await
    }

    /// Every batch with its counts.
    pub fn batches(&self) -> Vec<BatchView> {
        self.shared.lock().list_batches()
    }

    /// One batch.
    pub fn batch(&self, name: &BatchName) -> Result<BatchView, QueueError> {
        self.shared
            .lock()
            .batch_view(name)
            .ok_or_else(|| QueueError::BatchNotFound(name.clone()))
    }

    /// Pauses or resumes a batch.
    pub async fn set_paused(
        &self,
        name: &BatchName,
        paused: bool,
    ) -> Result<BatchView, QueueError> {
        self.mutate_durably(|state, change| state.set_paused(name, paused, change))
            .await?;
        self.batch(name)
    }

    /// Cancels every unfinished task of a batch.
    pub async fn stop_batch(&self, name: &BatchName) -> Result<BatchView, QueueError> {
        self.mutate_durably(|state, change| state.stop_batch(name, change))
            .await?;
        self.batch(name)
    }

    /// Deletes a batch and all its tasks.
    pub async fn delete_batch(&self, name: &BatchName) -> Result<(), QueueError> {
        self.mutate_durably(|state, change| state.delete_batch(name, change))
            .await
    }

    /// Every worker the server knows.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.shared.lock().worker_views()
    }

    /// Forgets a worker (telling it to exit if connected); its tasks get a new attempt.
    pub async fn delete_worker(&self, id: WorkerId) -> Result<(), QueueError> {
        self.mutate_durably(|state, change| state.delete_worker(id, change))
            .await
    }

    /// Events for watchers (batch progress, log following).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The task logs.
    pub fn logs(&self) -> &LogStore {
        &self.shared.logs
    }

    // ---- the worker side ----

    /// A worker connects; messages for it go to `sender` (the welcome first). Returns its id
    /// and the serial number of this connection.
    pub fn connect(
        &self,
        hello: Hello,
        sender: mpsc::UnboundedSender<ToWorker>,
    ) -> Result<(WorkerId, u64), QueueError> {
        if hello.concurrency == 0 {
            return Err(herd_proto::Error::invalid(
                "concurrency",
                "a worker needs a concurrency of at least 1",
            )
            .into());
        }
        let interval = self.config.heartbeat_interval;
        let (result, _) =
            self.mutate(|state, change| Ok(state.connect(hello, sender, interval, change)));
        let (worker_id, serial) = result?;
        info!(%worker_id, serial, "worker connected");
        Ok((worker_id, serial))
    }

    /// Reports from a worker's connection `serial`, in order, applied at once; ignored if that
    /// connection was replaced.
    pub fn report(&self, worker_id: WorkerId, serial: u64, reports: Vec<TaskReport>) {
        let terminal: Vec<(TaskId, u32)> = reports
            .iter()
            .filter(|report| report.state.is_terminal())
            .map(|report| (report.task_id, report.attempt))
            .collect();
        // A task that started a phase promises nothing: that change rides with the next commit.
        let _ = self.mutate_with(terminal.is_empty(), |state, change| {
            if state.touch(worker_id, serial) {
                for report in reports {
                    state.report(worker_id, report, change);
                }
            }
            Ok(())
        });
        for (task_id, attempt) in terminal {
            self.shared.logs.close(task_id, attempt);
        }
    }

    /// A heartbeat; false if the connection is no longer the worker's current one.
    pub fn heartbeat(&self, worker_id: WorkerId, serial: u64) -> bool {
        self.shared.lock().touch(worker_id, serial)
    }

    /// Log output from a worker; dropped if the task or attempt is unknown.
    pub fn append_log(&self, worker_id: WorkerId, serial: u64, chunk: &LogChunk) {
        let LogChunk {
            task_id, attempt, ..
        } = *chunk;
        {
            let mut state = self.shared.lock();
            if !state.touch(worker_id, serial) || !state.log_allowed(task_id, attempt) {
                return;
            }
        }
        if let Err(error) = self
            .shared
            .logs
            .append(task_id, attempt, chunk.stream, &chunk.data)
        {
            warn!(%task_id, attempt, %error, "cannot write task log");
            return;
        }
        let _ = self.shared.events.send(Event::Log(task_id));
    }

    /// The worker's connection `serial` ended.
    pub fn disconnect(&self, worker_id: WorkerId, serial: u64) {
        let _ = self.mutate(|state, change| {
            state.disconnect(worker_id, serial, change);
            Ok(())
        });
        info!(%worker_id, serial, "worker disconnected");
    }

    /// Declares lost the workers silent for longer than the timeout, once a second, until
    /// `shutdown`.
    pub fn spawn_reaper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let queue = Arc::downgrade(self);
        let timeout = self.config.worker_timeout;
        let period = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let Some(queue) = queue.upgrade() else {
                    return;
                };
                let (lost, _) = queue.mutate(|state, change| Ok(state.reap(timeout, change)));
                for worker_id in lost.unwrap_or_default() {
                    warn!(%worker_id, timeout_secs = timeout.as_secs(), "worker lost; its tasks are queued again");
                }
            }
        })
    }
}
