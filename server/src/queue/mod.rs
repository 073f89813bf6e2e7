//! The queue: scheduling state in memory, every acknowledged change durable first.
//!
//! No tonic and no SQL here: the gRPC service converts messages and calls [`Queue`]; the
//! [`Store`] is reached only through the journal. Every mutation takes the lock, runs one
//! event through the pure state machine (`state/`), pushes the [`Change`] it produced (row
//! keys and effects) to the journal, and releases the lock; answers that promise durability (a
//! submit, a kill...) wait for the journal's commit.
//!
//! Layout: `state/` (the state machine: decisions only), `change.rs` (what a decision
//! produces), `journal.rs` (group commit, then the effects), this file (the [`Queue`]: the
//! lock, the journal, the live worker connections, the reaper, shutdown).
//!
//! The state addresses messages to a connection serial; the queue keeps the serial → sender
//! map. A sender is registered before its welcome is journaled and dropped by the state's
//! hangup effect, after everything journaled before it was sent, so nothing reaches a worker
//! before its commit and nothing is lost to a race with a reconnection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_proto::request::IdempotencyKey;
use herd_proto::session::{Hello, LogChunk, ToWorker};
use herd_proto::view::{BatchView, TaskView, WorkerView};
use herd_proto::{BatchName, Reason, TaskId, TaskReport, TaskSpec, TaskState, WorkerId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::logs::LogStore;
use crate::store::Store;
use crate::stored_spec;

mod access;
mod change;
mod journal;
mod state;

pub use access::new_secret;
use change::{Change, Effect};
use journal::{Journal, Refusals, take_refusal, wait_durable};
pub use state::{BOOTSTRAP_ADMIN, Caller, QuarantinePolicy, UserId};
use state::{State, SystemClock, require_admin};

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

/// Settings of the queue: worker liveness and the limit of task logs.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// A worker silent this long is declared lost and its tasks are given a new attempt.
    pub worker_timeout: Duration,
    /// How often workers send a heartbeat.
    pub heartbeat_interval: Duration,
    /// When a worker whose attempts keep failing for reasons that are not their tasks' own
    /// is given no task for a while.
    pub quarantine: QuarantinePolicy,
    /// How long an answer that promises durability waits for its commit while the database
    /// is unavailable, before the caller is told so (the change stays queued and is committed
    /// once the database is back); also how long a shutdown waits for the last commit.
    pub commit_timeout: Duration,
    /// The most bytes kept of each stream of each attempt's log (`--max-log-size`).
    pub max_log_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            worker_timeout: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(5),
            quarantine: QuarantinePolicy::default(),
            commit_timeout: Duration::from_secs(30),
            max_log_bytes: crate::logs::DEFAULT_MAX_BYTES,
        }
    }
}

/// What the lock guards: the state, and the journal, so that journal order is mutation order.
pub(crate) struct Locked {
    pub state: State,
    pub journal: Journal,
}

/// The sending half of a worker connection's stream.
type Sender = mpsc::UnboundedSender<ToWorker>;

pub(crate) struct Shared {
    locked: Mutex<Locked>,
    /// Live worker connections by serial. Inserted at connect, before the welcome is
    /// journaled; removed by the state's hangups, after the messages before them were sent.
    connections: Mutex<HashMap<u64, Sender>>,
    events: broadcast::Sender<Event>,
    logs: LogStore,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Sender>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the effects of committed changes, in order. The connections are locked once for
    /// the whole group, not once a message.
    pub(crate) fn run_effects(&self, effects: impl Iterator<Item = Effect>) {
        let mut connections = None;
        for effect in effects {
            match effect {
                Effect::Send(address, message) => {
                    let connections = connections.get_or_insert_with(|| self.connections());
                    if let Some(sender) = connections.get(&address.serial) {
                        // A closed connection: the worker reconciles when it comes back.
                        let _ = sender.send(message);
                    }
                }
                Effect::Hangup(address) => {
                    let connections = connections.get_or_insert_with(|| self.connections());
                    connections.remove(&address.serial);
                }
                Effect::Notify(event) => {
                    let _ = self.events.send(event);
                }
                Effect::RemoveLogs(task_id) => {
                    connections = None;
                    self.logs.remove(task_id);
                }
                Effect::Quarantine(worker_id, Some((seconds, reason))) => {
                    warn!(%worker_id, seconds, %reason, "worker quarantined");
                }
                Effect::Quarantine(worker_id, None) => {
                    info!(%worker_id, "worker quarantine over; it takes tasks again");
                }
            }
        }
    }
}

/// The queue. Cheap to share (`Arc<Queue>`).
pub struct Queue {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    /// Changes the database refused, by sequence number, with its reason.
    refused: Refusals,
    config: QueueConfig,
    closing: CancellationToken,
    next_connection: AtomicU64,
    /// The journal's writer, awaited by [`Queue::shutdown`].
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Queue {
    /// Loads the store's content and starts the journal writer. Rows a crash left
    /// inconsistent are repaired (see `state/rows.rs`), durably, before this returns.
    pub async fn open(
        store: Arc<dyn Store>,
        logs: LogStore,
        config: QueueConfig,
    ) -> Result<Arc<Queue>, Error> {
        let snapshot = store.load().await?;
        let mut state = State::new(Box::new(SystemClock));
        state.quarantine_policy = config.quarantine;
        let mut repairs = Change::default();
        state.restore(snapshot, &mut repairs)?;
        if state.instance_id == 0 {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|error| Error::Entropy(error.to_string()))?;
            // Positive as an i64 (it is stored in a BIGINT counter), never 0.
            state.instance_id = (u64::from_le_bytes(bytes) & (i64::MAX as u64)).max(1);
            repairs.counters();
        }
        let logs = logs.for_instance(state.instance_id);
        info!(
            tasks = state.tasks.len(),
            batches = state.batches.len(),
            workers = state.workers.len(),
            store = %store.describe(),
            "queue loaded"
        );
        let (events, _) = broadcast::channel(4096);
        let mut writer = None;
        let mut committed = None;
        let mut refused = None;
        let shared = Arc::new_cyclic(|weak| {
            let (journal, handle) = Journal::start(store.clone(), weak.clone());
            committed = Some(journal.committed());
            refused = Some(journal.refused());
            writer = Some(handle);
            Shared {
                locked: Mutex::new(Locked { state, journal }),
                connections: Mutex::new(HashMap::new()),
                events,
                logs,
            }
        });
        let queue = Arc::new(Queue {
            shared,
            committed: committed.expect("set by new_cyclic"),
            refused: refused.expect("set by new_cyclic"),
            config,
            closing: CancellationToken::new(),
            next_connection: AtomicU64::new(1),
            writer: Mutex::new(writer),
        });
        if !repairs.is_empty() {
            if !repairs.dirty.tasks.is_empty() {
                warn!("tasks left active by an interrupted server were queued again");
            }
            let sequence = queue.shared.lock().journal.push(repairs, false);
            if let Some(sequence) = sequence {
                wait_durable(queue.committed.clone(), sequence).await;
            }
        }
        Ok(queue)
    }

    /// Ends every worker session and every watch stream, so that a graceful shutdown of the
    /// gRPC server does not wait for streams that would never end. Workers reconnect.
    pub fn close(&self) {
        self.closing.cancel();
        self.shared.lock().state.close_sessions();
        self.shared.connections().clear();
    }

    /// Closes the journal and waits until everything pushed before is committed (and its
    /// effects run). Call it last: later changes are refused with [`Error::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.shared.lock().journal.close();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(mut writer) = writer else {
            return;
        };
        match tokio::time::timeout(self.config.commit_timeout, &mut writer).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "the journal writer failed"),
            Err(_) => {
                writer.abort();
                let pending = self
                    .shared
                    .lock()
                    .journal
                    .pushed_not_committed(&self.committed);
                tracing::error!(
                    changes = pending,
                    timeout_secs = self.config.commit_timeout.as_secs(),
                    "stopping without committing the last changes: the database is unavailable; none of them was acknowledged"
                );
            }
        }
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
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, Error>,
    ) -> (Result<T, Error>, Option<u64>) {
        self.mutate_with(false, mutation)
    }

    /// [`Queue::mutate`], journaled lazily when `lazy` (see [`journal`]): nobody may wait for
    /// the sequence number then, so none is returned.
    fn mutate_with<T>(
        &self,
        lazy: bool,
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, Error>,
    ) -> (Result<T, Error>, Option<u64>) {
        let mut locked = self.shared.lock();
        let mut change = Change::default();
        let result = mutation(&mut locked.state, &mut change);
        let sequence = locked.journal.push(change, lazy);
        (result, sequence.filter(|_| !lazy))
    }

    /// Like [`Queue::mutate`], and answers only once the change is durable.
    async fn mutate_durably<T>(
        &self,
        mutation: impl FnOnce(&mut State, &mut Change) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (result, sequence) = self.mutate(mutation);
        // A change that wrote nothing (a submit repeated with its key) may answer with what an
        // earlier change did: it waits for everything pushed before it to be durable too.
        let sequence = sequence.or_else(|| {
            let last = self.shared.lock().journal.last_pushed();
            (last > *self.committed.borrow()).then_some(last)
        });
        if let Some(sequence) = sequence {
            let waited = tokio::time::timeout(
                self.config.commit_timeout,
                wait_durable(self.committed.clone(), sequence),
            )
            .await;
            match waited {
                Ok(true) => {}
                Ok(false) => return Err(Error::ShuttingDown),
                Err(_) => return Err(Error::NotDurableYet(self.config.commit_timeout)),
            }
        }
        if let Some(sequence) = sequence
            && let Some(reason) = take_refusal(&self.refused, sequence)
        {
            return Err(Error::Refused(reason));
        }
        result
    }

    /// Queues tasks as the caller's; all of them are durable when this returns. With `key`, a
    /// repeat of the same user's submit within 24 hours returns the first one's ids and
    /// queues nothing.
    pub async fn submit(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<TaskId>, Error> {
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
            .mutate_durably(|state, change| state.submit_once(caller, key, encoded, change))
            .await?;
        tracing::debug!(
            tasks = count,
            encode_ms = encoded_at.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "tasks queued"
        );
        Ok(ids)
    }

    /// One task, if the caller may see it.
    pub fn task(&self, caller: &Caller, id: TaskId) -> Result<TaskView, Error> {
        self.shared.lock().state.task_view(caller, id)
    }

    /// The caller's tasks (every task for an admin), oldest first, optionally filtered;
    /// `limit` 0 means all.
    pub fn tasks(
        &self,
        caller: &Caller,
        batch: Option<&BatchName>,
        state: Option<TaskState>,
        limit: usize,
    ) -> Vec<TaskView> {
        self.shared
            .lock()
            .state
            .list_tasks(caller, batch, state, limit)
    }

    /// Kills a task (cancels it if pending).
    pub async fn kill(&self, caller: &Caller, id: TaskId) -> Result<TaskView, Error> {
        self.mutate_durably(|state, change| {
            state.check_task(caller, id)?;
            state.cancel(id, Reason::Killed, change)
        })
        .await?;
        self.task(caller, id)
    }

    /// Queues a finished task again.
    pub async fn retry(&self, caller: &Caller, id: TaskId) -> Result<TaskView, Error> {
        self.mutate_durably(|state, change| {
            state.check_task(caller, id)?;
            state.retry(id, change)
        })
        .await?;
        self.task(caller, id)
    }

    /// Deletes a task and its logs, killing it first if needed.
    pub async fn delete_task(&self, caller: &Caller, id: TaskId) -> Result<(), Error> {
        self.mutate_durably(|state, change| {
            state.check_task(caller, id)?;
            state.delete_task(id, change)
        })
        .await
    }

    /// The caller's batches (every batch for an admin) with their counts.
    pub fn batches(&self, caller: &Caller) -> Vec<BatchView> {
        self.shared.lock().state.list_batches(caller)
    }

    /// One batch, if the caller may see it.
    pub fn batch(&self, caller: &Caller, name: &BatchName) -> Result<BatchView, Error> {
        self.shared.lock().state.batch_view_for(caller, name)
    }

    /// Pauses or resumes a batch.
    pub async fn set_paused(
        &self,
        caller: &Caller,
        name: &BatchName,
        paused: bool,
    ) -> Result<BatchView, Error> {
        self.mutate_durably(|state, change| {
            state.check_batch(caller, name)?;
            state.set_paused(name, paused, change)
        })
        .await?;
        self.batch(caller, name)
    }

    /// Cancels every unfinished task of a batch.
    pub async fn stop_batch(&self, caller: &Caller, name: &BatchName) -> Result<BatchView, Error> {
        self.mutate_durably(|state, change| {
            state.check_batch(caller, name)?;
            state.stop_batch(name, change)
        })
        .await?;
        self.batch(caller, name)
    }

    /// Deletes a batch and all its tasks.
    pub async fn delete_batch(&self, caller: &Caller, name: &BatchName) -> Result<(), Error> {
        self.mutate_durably(|state, change| {
            state.check_batch(caller, name)?;
            state.delete_batch(name, change)
        })
        .await
    }

    /// Every worker the server knows (a user sees only their own tasks on them).
    pub fn workers(&self, caller: &Caller) -> Vec<WorkerView> {
        self.shared.lock().state.worker_views(caller)
    }

    /// Forgets a worker (telling it to exit if connected); its tasks get a new attempt.
    /// Admins only.
    pub async fn delete_worker(&self, caller: &Caller, id: WorkerId) -> Result<(), Error> {
        self.mutate_durably(|state, change| {
            require_admin(caller, "delete workers")?;
            state.delete_worker(id, change)
        })
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

    /// A worker connects with a worker token; messages for it go to `sender` (the welcome
    /// first). Returns its id and the serial number of this connection.
    pub fn connect(
        &self,
        caller: &Caller,
        hello: Hello,
        sender: Sender,
    ) -> Result<(WorkerId, u64), Error> {
        if hello.concurrency == 0 {
            return Err(herd_proto::Error::invalid(
                "concurrency",
                "a worker needs a concurrency of at least 1",
            )
            .into());
        }
        if self.closing.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let interval = self.config.heartbeat_interval;
        let timeout = self.config.worker_timeout;
        let serial = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let new_key = access::new_secret()?;
        // Known before the welcome is journaled, so the writer finds it.
        self.shared.connections().insert(serial, sender);
        let (result, _) = self.mutate(|state, change| {
            state.connect(caller, hello, &new_key, serial, interval, timeout, change)
        });
        let worker_id = match result {
            Ok(worker_id) => worker_id,
            Err(error) => {
                self.shared.connections().remove(&serial);
                return Err(error);
            }
        };
        info!(%worker_id, serial, "worker connected");
        Ok((worker_id, serial))
    }

    /// Reports from a worker's connection `serial`, in order, applied at once; ignored if that
    /// connection was replaced.
    pub fn report(&self, worker_id: WorkerId, serial: u64, mut reports: Vec<TaskReport>) {
        for report in reports
            .iter_mut()
            .filter(|report| report.state.is_terminal())
        {
            // The attempt's record says when its log lost its end to the cap.
            if let Some(truncated) = self.shared.logs.truncation(report.task_id, report.attempt) {
                report.message = Some(match report.message.take() {
                    Some(message) => format!("{message}; {truncated}"),
                    None => truncated,
                });
            }
        }
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
        self.shared.lock().state.touch(worker_id, serial)
    }

    /// Log output from a worker; dropped if the task or attempt is unknown.
    pub fn append_log(&self, worker_id: WorkerId, serial: u64, chunk: &LogChunk) {
        let LogChunk {
            task_id, attempt, ..
        } = *chunk;
        {
            let state = &mut self.shared.lock().state;
            if !state.touch(worker_id, serial) || !state.log_allowed(worker_id, task_id, attempt) {
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

    /// The worker on connection `serial` is stopping on purpose: its tasks are queued again
    /// without counting as a crash, and its stream is closed once that is durable.
    pub fn goodbye(&self, worker_id: WorkerId, serial: u64) {
        let _ = self.mutate(|state, change| {
            state.goodbye(worker_id, serial, change);
            Ok(())
        });
        info!(%worker_id, serial, "worker said goodbye; its tasks are queued again");
    }

    /// The worker's connection `serial` ended.
    pub fn disconnect(&self, worker_id: WorkerId, serial: u64) {
        let _ = self.mutate(|state, change| {
            state.disconnect(worker_id, serial, change);
            Ok(())
        });
        info!(%worker_id, serial, "worker disconnected");
    }

    /// Closes the log files of attempts that ended without a final report (killed, retried,
    /// their worker lost or deleted): an attempt's files stay open only while it is under way.
    fn close_ended_logs(&self) {
        if self.shared.logs.open_files() == 0 {
            return;
        }
        let locked = self.shared.lock();
        self.shared.logs.close_where(|task_id, attempt| {
            !locked
                .state
                .tasks
                .get(&task_id)
                .is_some_and(|task| task.attempt == attempt && task.state.is_active())
        });
    }

    /// Declares lost the workers silent for longer than the timeout, and closes the logs of
    /// attempts that ended, once a second, until `shutdown`.
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
                let (lost, _) = queue.mutate(|state, change| {
                    state.prune_submissions(change);
                    Ok(state.reap(timeout, change))
                });
                for worker_id in lost.unwrap_or_default() {
                    warn!(%worker_id, timeout_secs = timeout.as_secs(), "worker lost; its tasks are queued again");
                }
                queue.close_ended_logs();
            }
        })
    }
}

#[cfg(test)]
mod durability_tests;
