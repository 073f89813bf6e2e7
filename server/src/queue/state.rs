//! The scheduling state, in memory, and every transition of it.
//!
//! One struct owns everything; each mutation goes through a method here that keeps the
//! indexes (per-batch pending queues and counts, per-worker task sets) right and records the
//! rows it touched in a [`Change`]. Nothing here awaits or does I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_proto::view::{AttemptView, BatchView, TaskView, Transfer, WorkerView};
use herd_proto::{
    BatchName, Reason, Requirement, TaskId, TaskSpec, TaskState, Timestamp, WorkerId,
};
use tokio::sync::mpsc;

use super::journal::{Change, Journal};
use herd_proto::TaskReport;
use herd_proto::session::{Hello, ToWorker};

use super::{Event, QueueError};
use crate::store::{AttemptRow, BatchRow, Snapshot, StoreError, TaskRow, WorkerRow};
use crate::stored_spec;

pub(crate) struct Attempt {
    pub number: u32,
    pub worker: WorkerId,
    pub worker_name: Arc<str>,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub assigned_at: Timestamp,
    pub download_started_at: Option<Timestamp>,
    pub run_started_at: Option<Timestamp>,
    pub upload_started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub transfers: Vec<Transfer>,
}

pub(crate) struct Task {
    pub spec: Arc<TaskSpec>,
    /// The spec as stored (JSON), computed once at submit.
    pub spec_json: Arc<str>,
    pub state: TaskState,
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub exit_code: Option<i32>,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub attempts: Vec<Attempt>,
}

#[derive(Default)]
pub(crate) struct Batch {
    pub paused: bool,
    pub created_at: Timestamp,
    /// Pending tasks by what they need, oldest first. May hold ids that are no longer
    /// pending (canceled, deleted): they are skipped when popped.
    pub queues: BTreeMap<Requirement, VecDeque<TaskId>>,
    pub counts: [u64; 8],
    /// How long this batch's attempts hold a worker's slot, in milliseconds: an exponentially
    /// weighted mean of those that ended, `None` until one did. Sets the pipeline's depth.
    pub slot_ms: Option<f64>,
}

/// The pipeline: beyond a worker's slots (`--concurrency` plus `--prefetch`), the server gives
/// it tasks to queue, so that a slot that frees starts the next task at once instead of
/// waiting for a round trip to the server and a commit. The worker does not touch a queued
/// task (no folders, no staging) until one of its slots frees. How many: enough for
/// [`PIPELINE_HORIZON_MS`] of the batch's recent attempts, at most [`PIPELINE_PER_SLOT`] per
/// slot, and none until one attempt of the batch ended or once they take longer than the
/// horizon. Short tasks are pipelined; long ones, where a round trip is negligible and a task
/// waiting behind another one would be costly, are not. The imbalance it can cause at the end
/// of a batch is bounded by the horizon.
const PIPELINE_HORIZON_MS: f64 = 100.0;
/// The pipeline's most tasks per slot.
const PIPELINE_PER_SLOT: usize = 32;
/// The weight of the latest attempt in [`Batch::slot_ms`].
const SLOT_MS_WEIGHT: f64 = 0.1;

impl Batch {
    /// Tasks queued on a worker with `slots` slots beyond them.
    fn pipeline_depth(&self, slots: usize) -> usize {
        let Some(slot_ms) = self.slot_ms else {
            return 0;
        };
        if slot_ms >= PIPELINE_HORIZON_MS {
            return 0;
        }
        let depth = (slots as f64 * PIPELINE_HORIZON_MS / slot_ms.max(0.1)).ceil();
        (depth as usize).min(slots * PIPELINE_PER_SLOT)
    }

    /// Counts one ended attempt's time in a slot.
    fn record_slot_time(&mut self, milliseconds: i64) {
        let sample = milliseconds.max(0) as f64;
        self.slot_ms = Some(match self.slot_ms {
            None => sample,
            Some(mean) => mean + SLOT_MS_WEIGHT * (sample - mean),
        });
    }
}

pub(crate) struct Connection {
    pub serial: u64,
    pub sender: mpsc::UnboundedSender<ToWorker>,
}

pub(crate) struct Worker {
    pub name: Arc<str>,
    pub batch: BatchName,
    pub concurrency: u32,
    pub prefetch: u32,
    pub docker: bool,
    pub allow_privileged: bool,
    pub cores: u32,
    pub memory_bytes: u64,
    pub version: String,
    pub registered_at: Timestamp,
    pub last_seen: Timestamp,
    /// Monotonic time of the last message (or of the server's start for reloaded workers).
    pub last_heard: Instant,
    pub lost: bool,
    pub connection: Option<Connection>,
    /// Tasks this worker holds (any active state).
    pub tasks: BTreeSet<TaskId>,
}

impl Worker {
    fn can_serve(&self, requirement: Requirement) -> bool {
        match requirement {
            Requirement::Bare => true,
            Requirement::Docker => self.docker,
            Requirement::PrivilegedDocker => self.docker && self.allow_privileged,
        }
    }

    fn status(&self) -> &'static str {
        if self.lost {
            "lost"
        } else if self.connection.is_some() {
            "connected"
        } else {
            "disconnected"
        }
    }
}

pub(crate) struct State {
    pub journal: Journal,
    next_task_id: u64,
    next_worker_id: u64,
    next_connection: u64,
    /// Boxed: a hash map keeps up to half its slots empty, and an empty slot costs the size of
    /// its value; a pointer there instead of a whole task saves ~150 bytes a task at a million.
    pub tasks: HashMap<TaskId, Box<Task>>,
    pub batches: BTreeMap<BatchName, Batch>,
    pub workers: BTreeMap<WorkerId, Worker>,
}

fn state_index(state: TaskState) -> usize {
    state as usize
}

impl State {
    pub fn new(journal: Journal) -> Self {
        State {
            journal,
            next_task_id: 1,
            next_worker_id: 1,
            next_connection: 1,
            tasks: HashMap::new(),
            batches: BTreeMap::new(),
            workers: BTreeMap::new(),
        }
    }

    // ---- loading and row images ----

    /// Rebuilds the state from what the store holds.
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let now = Instant::now();
        for (name, value) in snapshot.counters {
            let value = u64::try_from(value)
                .map_err(|_| StoreError::Corrupt(format!("counter {name} = {value}")))?;
            match name.as_str() {
                "next_task_id" => self.next_task_id = value,
                "next_worker_id" => self.next_worker_id = value,
                _ => {}
            }
        }
        for row in snapshot.batches {
            let name =
                BatchName::new(row.name).map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let batch = self.batches.entry(name).or_default();
            batch.paused = row.paused;
            batch.created_at = Timestamp(row.created_at);
        }
        for row in snapshot.workers {
            let id = WorkerId(row.id as u64);
            let batch = BatchName::new(row.batch)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            self.next_worker_id = self.next_worker_id.max(id.0 + 1);
            self.workers.insert(
                id,
                Worker {
                    name: row.name.into(),
                    batch,
                    concurrency: row.concurrency as u32,
                    prefetch: row.prefetch as u32,
                    docker: row.docker,
                    allow_privileged: row.allow_privileged,
                    cores: row.cores as u32,
                    memory_bytes: row.memory_bytes as u64,
                    version: row.version,
                    registered_at: Timestamp(row.registered_at),
                    last_seen: Timestamp(row.last_seen),
                    last_heard: now,
                    lost: row.lost,
                    connection: None,
                    tasks: BTreeSet::new(),
                },
            );
        }
        let mut attempts_by_task: HashMap<i64, Vec<AttemptRow>> = HashMap::new();
        for row in snapshot.attempts {
            attempts_by_task.entry(row.task_id).or_default().push(row);
        }
        for row in snapshot.tasks {
            let id = TaskId(row.id as u64);
            self.next_task_id = self.next_task_id.max(id.0 + 1);
            let spec = stored_spec::decode(&row.spec)
                .map_err(|error| StoreError::Corrupt(format!("task {id}: {error}")))?;
            let state: TaskState = row
                .state
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("task {id}: state {}", row.state)))?;
            let mut attempts = Vec::new();
            for attempt in attempts_by_task.remove(&row.id).unwrap_or_default() {
                attempts.push(attempt_from_row(attempt)?);
            }
            attempts.sort_by_key(|attempt| attempt.number);
            let worker = if state.is_active() {
                attempts
                    .iter()
                    .find(|attempt| attempt.number as i64 == row.attempt)
                    .map(|attempt| attempt.worker)
            } else {
                None
            };
            let task =
                Task {
                    spec: Arc::new(spec),
                    spec_json: row.spec.into(),
                    state,
                    attempt: row.attempt as u32,
                    worker,
                    exit_code: row.exit_code.map(|code| code as i32),
                    reason: row.reason.map(|text| text.parse()).transpose().map_err(
                        |error: herd_proto::Error| StoreError::Corrupt(error.to_string()),
                    )?,
                    message: row.message,
                    created_at: Timestamp(row.created_at),
                    updated_at: Timestamp(row.updated_at),
                    attempts,
                };
            let batch = self.batches.entry(task.spec.batch().clone()).or_default();
            batch.counts[state_index(state)] += 1;
            if state == TaskState::Pending {
                batch
                    .queues
                    .entry(task.spec.requirement())
                    .or_default()
                    .push_back(id);
            }
            if let Some(worker_id) = worker {
                match self.workers.get_mut(&worker_id) {
                    Some(worker) => {
                        worker.tasks.insert(id);
                    }
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "task {id} is on unknown worker {worker_id}"
                        )));
                    }
                }
            }
            self.tasks.insert(id, Box::new(task));
        }
        Ok(())
    }

    pub fn task_row(&self, id: TaskId) -> Option<TaskRow> {
        let task = self.tasks.get(&id)?;
        Some(TaskRow {
            id: id.0 as i64,
            batch: task.spec.batch().to_string(),
            name: task.spec.name().map(str::to_owned),
            spec: task.spec_json.to_string(),
            state: task.state.as_str().to_owned(),
            attempt: i64::from(task.attempt),
            exit_code: task.exit_code.map(i64::from),
            reason: task.reason.map(|reason| reason.as_str().to_owned()),
            message: task.message.clone(),
            created_at: task.created_at.0,
            updated_at: task.updated_at.0,
        })
    }

    pub fn attempt_row(&self, id: TaskId, number: u32) -> Option<AttemptRow> {
        let task = self.tasks.get(&id)?;
        let attempt = task
            .attempts
            .iter()
            .find(|attempt| attempt.number == number)?;
        Some(AttemptRow {
            task_id: id.0 as i64,
            number: i64::from(number),
            worker_id: attempt.worker.0 as i64,
            worker_name: attempt.worker_name.to_string(),
            state: attempt.state.as_str().to_owned(),
            exit_code: attempt.exit_code.map(i64::from),
            reason: attempt.reason.map(|reason| reason.as_str().to_owned()),
            message: attempt.message.clone(),
            assigned_at: attempt.assigned_at.0,
            download_started_at: attempt.download_started_at.map(Timestamp::millis),
            run_started_at: attempt.run_started_at.map(Timestamp::millis),
            upload_started_at: attempt.upload_started_at.map(Timestamp::millis),
            ended_at: attempt.ended_at.map(Timestamp::millis),
            transfers: stored_spec::encode_transfers(&attempt.transfers),
        })
    }

    pub fn batch_row(&self, name: &BatchName) -> Option<BatchRow> {
        let batch = self.batches.get(name)?;
        Some(BatchRow {
            name: name.to_string(),
            paused: batch.paused,
            created_at: batch.created_at.0,
        })
    }

    pub fn worker_row(&self, id: WorkerId) -> Option<WorkerRow> {
        let worker = self.workers.get(&id)?;
        Some(WorkerRow {
            id: id.0 as i64,
            name: worker.name.to_string(),
            batch: worker.batch.to_string(),
            concurrency: i64::from(worker.concurrency),
            prefetch: i64::from(worker.prefetch),
            docker: worker.docker,
            allow_privileged: worker.allow_privileged,
            cores: i64::from(worker.cores),
            memory_bytes: worker.memory_bytes as i64,
            version: worker.version.clone(),
            registered_at: worker.registered_at.0,
            last_seen: worker.last_seen.0,
            lost: worker.lost,
        })
    }

    pub fn counter_rows(&self) -> Vec<(String, i64)> {
        vec![
            ("next_task_id".to_owned(), self.next_task_id as i64),
            ("next_worker_id".to_owned(), self.next_worker_id as i64),
        ]
    }

    // ---- views ----

    pub fn task_view(&self, id: TaskId) -> Result<TaskView, QueueError> {
        let task = self.tasks.get(&id).ok_or(QueueError::TaskNotFound(id))?;
        Ok(view_of(id, task))
    }

    pub fn list_tasks(
        &self,
        batch: Option<&BatchName>,
        state: Option<TaskState>,
        limit: usize,
    ) -> Vec<TaskView> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, task)| batch.is_none_or(|name| task.spec.batch() == name))
            .filter(|(_, task)| state.is_none_or(|wanted| task.state == wanted))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        if limit > 0 {
            ids.truncate(limit);
        }
        ids.into_iter()
            .map(|id| view_of(id, &self.tasks[&id]))
            .collect()
    }

    pub fn batch_view(&self, name: &BatchName) -> Option<BatchView> {
        let batch = self.batches.get(name)?;
        let count = |state: TaskState| batch.counts[state_index(state)];
        Some(BatchView {
            name: name.to_string(),
            paused: batch.paused,
            pending: count(TaskState::Pending),
            active: count(TaskState::Assigned)
                + count(TaskState::Downloading)
                + count(TaskState::Running)
                + count(TaskState::Uploading),
            succeeded: count(TaskState::Succeeded),
            failed: count(TaskState::Failed),
            canceled: count(TaskState::Canceled),
        })
    }

    pub fn list_batches(&self) -> Vec<BatchView> {
        self.batches
            .keys()
            .filter_map(|name| self.batch_view(name))
            .collect()
    }

    pub fn worker_views(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, worker)| WorkerView {
                id: *id,
                name: worker.name.to_string(),
                batch: worker.batch.to_string(),
                concurrency: worker.concurrency,
                prefetch: worker.prefetch,
                status: worker.status().to_owned(),
                docker: worker.docker,
                cores: worker.cores,
                memory_bytes: worker.memory_bytes,
                tasks: worker.tasks.iter().copied().collect(),
                registered_at: worker.registered_at,
                last_seen: worker.last_seen,
                version: worker.version.clone(),
            })
            .collect()
    }

    // ---- the one place task states change ----

    fn set_state(&mut self, id: TaskId, next: TaskState, change: &mut Change) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let previous = task.state;
        task.state = next;
        task.updated_at = Timestamp::now();
        change.task(id);
        let batch_name = task.spec.batch().clone();
        if let Some(batch) = self.batches.get_mut(&batch_name) {
            batch.counts[state_index(previous)] =
                batch.counts[state_index(previous)].saturating_sub(1);
            batch.counts[state_index(next)] += 1;
        }
        change.notify(Event::Task(id));
        if previous != next {
            change.notify(Event::Batch(batch_name));
        }
    }

    fn enqueue(&mut self, id: TaskId, front: bool) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let requirement = task.spec.requirement();
        let batch = self.batches.entry(task.spec.batch().clone()).or_default();
        let queue = batch.queues.entry(requirement).or_default();
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
    }

    fn ensure_batch(&mut self, name: &BatchName, change: &mut Change) {
        if !self.batches.contains_key(name) {
            self.batches.insert(
                name.clone(),
                Batch {
                    created_at: Timestamp::now(),
                    ..Batch::default()
                },
            );
            change.batch(name);
        }
    }

    // ---- submit ----

    pub fn submit(&mut self, specs: Vec<(TaskSpec, String)>, change: &mut Change) -> Vec<TaskId> {
        let now = Timestamp::now();
        let mut ids = Vec::with_capacity(specs.len());
        let mut batches = BTreeSet::new();
        for (spec, spec_json) in specs {
            let id = TaskId(self.next_task_id);
            self.next_task_id += 1;
            self.ensure_batch(spec.batch(), change);
            let batch = self.batches.get_mut(spec.batch()).expect("ensured above");
            batch.counts[state_index(TaskState::Pending)] += 1;
            batch
                .queues
                .entry(spec.requirement())
                .or_default()
                .push_back(id);
            batches.insert(spec.batch().clone());
            self.tasks.insert(
                id,
                Box::new(Task {
                    spec: Arc::new(spec),
                    spec_json: spec_json.into(),
                    state: TaskState::Pending,
                    attempt: 1,
                    worker: None,
                    exit_code: None,
                    reason: None,
                    message: None,
                    created_at: now,
                    updated_at: now,
                    attempts: Vec::new(),
                }),
            );
            change.task(id);
            ids.push(id);
        }
        change.counters();
        for name in batches {
            change.notify(Event::Batch(name.clone()));
            self.schedule_batch(&name, change);
        }
        ids
    }

    // ---- scheduling ----

    /// How many more tasks `worker` can take: its free slots (`--concurrency` plus
    /// `--prefetch`, less the tasks it holds that are not uploading), and, with `pipeline`, the
    /// room left in its pipeline too.
    fn free_slots(&self, worker: &Worker, pipeline: bool) -> usize {
        let busy = worker
            .tasks
            .iter()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|task| task.state != TaskState::Uploading)
            })
            .count();
        let slots = worker.concurrency as usize + worker.prefetch as usize;
        let depth = match self.batches.get(&worker.batch) {
            Some(batch) if pipeline => batch.pipeline_depth(worker.concurrency as usize),
            _ => 0,
        };
        (slots + depth).saturating_sub(busy)
    }

    /// Gives pending tasks of `name` to its idle workers: first every worker's free slots,
    /// then their pipelines, so no task is queued behind another while a slot is free.
    pub fn schedule_batch(&mut self, name: &BatchName, change: &mut Change) {
        let workers: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, worker)| &worker.batch == name && worker.connection.is_some())
            .map(|(id, _)| *id)
            .collect();
        for pipeline in [false, true] {
            for &worker in &workers {
                if self
                    .batches
                    .get(name)
                    .is_none_or(|batch| batch.counts[state_index(TaskState::Pending)] == 0)
                {
                    return;
                }
                self.fill_worker(worker, pipeline, change);
            }
        }
    }

    /// Fills `worker_id`'s free slots and pipeline with pending tasks of its batch that it can
    /// serve.
    pub fn schedule_worker(&mut self, worker_id: WorkerId, change: &mut Change) {
        self.fill_worker(worker_id, true, change);
    }

    fn fill_worker(&mut self, worker_id: WorkerId, pipeline: bool, change: &mut Change) {
        let Some(worker) = self.workers.get(&worker_id) else {
            return;
        };
        if worker.connection.is_none() || worker.lost {
            return;
        }
        let mut free = self.free_slots(worker, pipeline);
        while free > 0 {
            let Some(task_id) = self.pop_pending(worker_id) else {
                return;
            };
            self.assign(task_id, worker_id, change);
            free -= 1;
        }
    }

    fn pop_pending(&mut self, worker_id: WorkerId) -> Option<TaskId> {
        let worker = self.workers.get(&worker_id)?;
        let batch = self.batches.get_mut(&worker.batch)?;
        if batch.paused {
            return None;
        }
        loop {
            // The oldest head among the queues this worker can serve.
            let requirement = batch
                .queues
                .iter()
                .filter(|(requirement, queue)| worker.can_serve(**requirement) && !queue.is_empty())
                .min_by_key(|(_, queue)| queue.front().copied())
                .map(|(requirement, _)| *requirement)?;
            let id = batch.queues.get_mut(&requirement)?.pop_front()?;
            if self
                .tasks
                .get(&id)
                .is_some_and(|task| task.state == TaskState::Pending)
            {
                return Some(id);
            }
        }
    }

    fn assign(&mut self, task_id: TaskId, worker_id: WorkerId, change: &mut Change) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let Some(connection) = &worker.connection else {
            return;
        };
        let sender = connection.sender.clone();
        worker.tasks.insert(task_id);
        let worker_name = worker.name.clone();
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.worker = Some(worker_id);
        let number = task.attempt;
        task.attempts.push(Attempt {
            number,
            worker: worker_id,
            worker_name,
            state: TaskState::Assigned,
            exit_code: None,
            reason: None,
            message: None,
            assigned_at: Timestamp::now(),
            download_started_at: None,
            run_started_at: None,
            upload_started_at: None,
            ended_at: None,
            transfers: Vec::new(),
        });
        let message = ToWorker::Assign {
            task_id,
            attempt: number,
            spec: task.spec.clone(),
        };
        change.attempt(task_id, number);
        self.set_state(task_id, TaskState::Assigned, change);
        change.send(&sender, message);
    }

    // ---- workers ----

    /// A worker (re)connects. Returns its id and the serial of this connection.
    pub fn connect(
        &mut self,
        hello: Hello,
        sender: mpsc::UnboundedSender<ToWorker>,
        heartbeat_interval: Duration,
        change: &mut Change,
    ) -> (WorkerId, u64) {
        let now = Timestamp::now();
        let serial = self.next_connection;
        self.next_connection += 1;
        let known = hello.worker_id.filter(|id| self.workers.contains_key(id));
        let worker_id = match known {
            Some(id) => id,
            None => {
                let id = WorkerId(self.next_worker_id);
                self.next_worker_id += 1;
                change.counters();
                id
            }
        };
        let entry = self.workers.entry(worker_id).or_insert_with(|| Worker {
            name: hello.name.clone().into(),
            batch: hello.batch.clone(),
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            docker: hello.docker,
            allow_privileged: hello.allow_privileged,
            cores: hello.cores,
            memory_bytes: hello.memory_bytes,
            version: hello.version.clone(),
            registered_at: now,
            last_seen: now,
            last_heard: Instant::now(),
            lost: false,
            connection: None,
            tasks: BTreeSet::new(),
        });
        entry.name = hello.name.into();
        entry.batch = hello.batch.clone();
        entry.concurrency = hello.concurrency;
        entry.prefetch = hello.prefetch;
        entry.docker = hello.docker;
        entry.allow_privileged = hello.allow_privileged;
        entry.cores = hello.cores;
        entry.memory_bytes = hello.memory_bytes;
        entry.version = hello.version;
        entry.last_seen = now;
        entry.last_heard = Instant::now();
        entry.lost = false;
        entry.connection = Some(Connection {
            serial,
            sender: sender.clone(),
        });
        change.worker(worker_id);
        change.send(
            &sender,
            ToWorker::Welcome {
                worker_id,
                heartbeat_interval,
            },
        );
        self.ensure_batch(&hello.batch, change);

        // Reconcile: what the worker reports against what the server gave it.
        let reported: BTreeSet<TaskId> = hello.tasks.iter().map(|report| report.task_id).collect();
        let held: Vec<TaskId> = self.workers[&worker_id].tasks.iter().copied().collect();
        for task_id in held {
            if !reported.contains(&task_id) {
                self.requeue(
                    task_id,
                    Reason::WorkerLost,
                    "the worker reconnected without this task",
                    change,
                );
            }
        }
        for report in hello.tasks {
            self.report(worker_id, report, change);
        }
        self.schedule_worker(worker_id, change);
        (worker_id, serial)
    }

    /// Whether `serial` is the worker's current connection; refreshes its liveness.
    pub fn touch(&mut self, worker_id: WorkerId, serial: u64) -> bool {
        match self.workers.get_mut(&worker_id) {
            Some(worker)
                if worker
                    .connection
                    .as_ref()
                    .is_some_and(|connection| connection.serial == serial) =>
            {
                worker.last_heard = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// The connection ended (the worker may come back within the timeout).
    pub fn disconnect(&mut self, worker_id: WorkerId, serial: u64, change: &mut Change) {
        if let Some(worker) = self.workers.get_mut(&worker_id)
            && worker
                .connection
                .as_ref()
                .is_some_and(|connection| connection.serial == serial)
        {
            worker.connection = None;
            worker.last_heard = Instant::now();
            worker.last_seen = Timestamp::now();
            change.worker(worker_id);
        }
    }

    /// Declares lost every worker not heard from within `timeout`; their tasks get a new attempt.
    pub fn reap(&mut self, timeout: Duration, change: &mut Change) -> Vec<WorkerId> {
        let now = Instant::now();
        let silent: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, worker)| !worker.lost && now.duration_since(worker.last_heard) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for worker_id in &silent {
            let worker = self.workers.get_mut(worker_id).expect("listed above");
            worker.lost = true;
            worker.connection = None;
            let tasks: Vec<TaskId> = worker.tasks.iter().copied().collect();
            change.worker(*worker_id);
            let message = format!(
                "worker {worker_id} was silent for more than {}s",
                timeout.as_secs()
            );
            for task_id in tasks {
                self.requeue(task_id, Reason::WorkerLost, &message, change);
            }
        }
        if !silent.is_empty() {
            let batches: BTreeSet<BatchName> = self.batches.keys().cloned().collect();
            for name in batches {
                self.schedule_batch(&name, change);
            }
        }
        silent
    }

    /// Ends the current attempt of an active task badly and queues a new attempt, first in line.
    fn requeue(&mut self, task_id: TaskId, reason: Reason, message: &str, change: &mut Change) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if !task.state.is_active() {
            return;
        }
        let number = task.attempt;
        if let Some(worker_id) = task.worker.take()
            && let Some(worker) = self.workers.get_mut(&worker_id)
        {
            worker.tasks.remove(&task_id);
            if let Some(connection) = &worker.connection {
                change.send(
                    &connection.sender,
                    ToWorker::Cancel {
                        task_id,
                        attempt: number,
                        reason: message.to_owned(),
                    },
                );
            }
        }
        let task = self.tasks.get_mut(&task_id).expect("present above");
        if let Some(attempt) = task
            .attempts
            .iter_mut()
            .find(|attempt| attempt.number == number)
        {
            attempt.state = TaskState::Failed;
            attempt.reason = Some(reason);
            attempt.message = Some(message.to_owned());
            attempt.ended_at = Some(Timestamp::now());
        }
        task.attempt += 1;
        change.attempt(task_id, number);
        self.set_state(task_id, TaskState::Pending, change);
        self.enqueue(task_id, true);
    }

    /// Applies one task report from a worker's current connection.
    pub fn report(&mut self, worker_id: WorkerId, report: TaskReport, change: &mut Change) {
        let sender = self
            .workers
            .get(&worker_id)
            .and_then(|worker| worker.connection.as_ref())
            .map(|c| c.sender.clone());
        let current = self.tasks.get(&report.task_id).is_some_and(|task| {
            task.attempt == report.attempt
                && task.worker == Some(worker_id)
                && task.state.is_active()
        });
        if !current {
            // A late or stale report (an old attempt, a deleted or killed task): refuse it
            // and tell the worker to drop it.
            if let Some(sender) = &sender {
                change.send(
                    sender,
                    ToWorker::Cancel {
                        task_id: report.task_id,
                        attempt: report.attempt,
                        reason: "this attempt is no longer current".to_owned(),
                    },
                );
            }
            return;
        }
        let task = self.tasks.get_mut(&report.task_id).expect("checked above");
        if !task.state.worker_may_move_to(report.state) {
            // A duplicate (resent after a reconnection); nothing new.
            return;
        }
        let at = report.at;
        let attempt = task
            .attempts
            .iter_mut()
            .find(|attempt| attempt.number == report.attempt)
            .expect("an active task has its current attempt");
        attempt.state = report.state;
        match report.state {
            TaskState::Downloading => attempt.download_started_at = Some(at),
            TaskState::Running => attempt.run_started_at = Some(at),
            TaskState::Uploading => attempt.upload_started_at = Some(at),
            _ => {}
        }
        if !report.transfers.is_empty() {
            attempt.transfers.extend(report.transfers);
        }
        change.attempt(report.task_id, report.attempt);
        if !report.state.is_terminal() {
            self.set_state(report.task_id, report.state, change);
            if report.state == TaskState::Uploading {
                // Uploading tasks do not hold a slot.
                self.schedule_worker(worker_id, change);
            }
            return;
        }
        attempt.ended_at = Some(at);
        let slot_started = attempt
            .download_started_at
            .or(attempt.run_started_at)
            .unwrap_or(attempt.assigned_at);
        let slot_ms = at.millis() - slot_started.millis();
        attempt.exit_code = report.exit_code;
        attempt.reason = report.reason;
        attempt.message = report.message.clone();
        task.exit_code = report.exit_code.or(task.exit_code);
        task.reason = report.reason;
        task.message = report.message;
        task.worker = None;
        let counted_failures = task
            .attempts
            .iter()
            .filter(|attempt| {
                attempt.state == TaskState::Failed && attempt.reason != Some(Reason::WorkerLost)
            })
            .count();
        let retry =
            report.state == TaskState::Failed && counted_failures <= task.spec.retry() as usize;
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.tasks.remove(&report.task_id);
        }
        if report.state == TaskState::Succeeded
            && let Some(batch) = self.batches.get_mut(task.spec.batch())
        {
            batch.record_slot_time(slot_ms);
        }
        if let Some(sender) = &sender {
            change.send(
                sender,
                ToWorker::Ack {
                    task_id: report.task_id,
                    attempt: report.attempt,
                },
            );
        }
        if retry {
            let task = self.tasks.get_mut(&report.task_id).expect("checked above");
            task.attempt += 1;
            self.set_state(report.task_id, TaskState::Pending, change);
            self.enqueue(report.task_id, false);
            let batch = self.tasks[&report.task_id].spec.batch().clone();
            self.schedule_batch(&batch, change);
        } else {
            self.set_state(report.task_id, report.state, change);
        }
        self.schedule_worker(worker_id, change);
    }

    /// Forgets a worker; its tasks get a new attempt elsewhere.
    pub fn delete_worker(
        &mut self,
        worker_id: WorkerId,
        change: &mut Change,
    ) -> Result<(), QueueError> {
        let worker = self
            .workers
            .get(&worker_id)
            .ok_or(QueueError::WorkerNotFound(worker_id))?;
        if let Some(connection) = &worker.connection {
            change.send(
                &connection.sender,
                ToWorker::Shutdown {
                    reason: "this worker was deleted".to_owned(),
                },
            );
        }
        let tasks: Vec<TaskId> = worker.tasks.iter().copied().collect();
        let batch = worker.batch.clone();
        for task_id in tasks {
            self.requeue(
                task_id,
                Reason::WorkerLost,
                "its worker was deleted",
                change,
            );
        }
        self.workers.remove(&worker_id);
        change.worker(worker_id);
        self.schedule_batch(&batch, change);
        Ok(())
    }

    // ---- user actions on tasks ----

    /// Cancels a task: pending ones at once, active ones are killed on their worker.
    pub fn cancel(
        &mut self,
        task_id: TaskId,
        reason: Reason,
        change: &mut Change,
    ) -> Result<(), QueueError> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or(QueueError::TaskNotFound(task_id))?;
        if task.state.is_terminal() {
            return Err(QueueError::InvalidState(format!(
                "task {task_id} has already {}; nothing to kill",
                match task.state {
                    TaskState::Succeeded => "succeeded",
                    TaskState::Failed => "failed",
                    _ => "been canceled",
                }
            )));
        }
        let now = Timestamp::now();
        let message = match reason {
            Reason::BatchStopped => "its batch was stopped",
            _ => "killed by a user",
        };
        task.reason = Some(reason);
        task.message = Some(message.to_owned());
        if task.state.is_active() {
            let number = task.attempt;
            if let Some(attempt) = task
                .attempts
                .iter_mut()
                .find(|attempt| attempt.number == number)
            {
                attempt.state = TaskState::Canceled;
                attempt.reason = Some(reason);
                attempt.message = Some(message.to_owned());
                attempt.ended_at = Some(now);
            }
            change.attempt(task_id, number);
            if let Some(worker_id) = task.worker.take()
                && let Some(worker) = self.workers.get_mut(&worker_id)
            {
                worker.tasks.remove(&task_id);
                if let Some(connection) = &worker.connection {
                    change.send(
                        &connection.sender,
                        ToWorker::Cancel {
                            task_id,
                            attempt: number,
                            reason: message.to_owned(),
                        },
                    );
                }
                self.set_state(task_id, TaskState::Canceled, change);
                self.schedule_worker(worker_id, change);
                return Ok(());
            }
        }
        self.set_state(task_id, TaskState::Canceled, change);
        Ok(())
    }

    /// Queues a finished task again, as a new attempt.
    pub fn retry(&mut self, task_id: TaskId, change: &mut Change) -> Result<(), QueueError> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or(QueueError::TaskNotFound(task_id))?;
        if !task.state.is_terminal() {
            return Err(QueueError::InvalidState(format!(
                "task {task_id} is {}; only a finished task can be retried (kill it first)",
                task.state
            )));
        }
        if !task.attempts.is_empty() {
            task.attempt = task
                .attempts
                .iter()
                .map(|attempt| attempt.number)
                .max()
                .unwrap_or(0)
                + 1;
        }
        task.reason = None;
        task.message = None;
        let batch = task.spec.batch().clone();
        self.set_state(task_id, TaskState::Pending, change);
        self.enqueue(task_id, false);
        self.schedule_batch(&batch, change);
        Ok(())
    }

    /// Removes a task (killing it first if it runs).
    pub fn delete_task(&mut self, task_id: TaskId, change: &mut Change) -> Result<(), QueueError> {
        let task = self
            .tasks
            .get(&task_id)
            .ok_or(QueueError::TaskNotFound(task_id))?;
        if !task.state.is_terminal() {
            self.cancel(task_id, Reason::Killed, change)?;
        }
        let task = self.tasks.remove(&task_id).expect("present above");
        if let Some(batch) = self.batches.get_mut(task.spec.batch()) {
            batch.counts[state_index(task.state)] =
                batch.counts[state_index(task.state)].saturating_sub(1);
        }
        change.task(task_id);
        change.notify(Event::Task(task_id));
        change.notify(Event::Batch(task.spec.batch().clone()));
        change.remove_logs(task_id);
        Ok(())
    }

    // ---- batches ----

    pub fn set_paused(
        &mut self,
        name: &BatchName,
        paused: bool,
        change: &mut Change,
    ) -> Result<(), QueueError> {
        let batch = self
            .batches
            .get_mut(name)
            .ok_or_else(|| QueueError::BatchNotFound(name.clone()))?;
        batch.paused = paused;
        change.batch(name);
        change.notify(Event::Batch(name.clone()));
        if !paused {
            self.schedule_batch(name, change);
        }
        Ok(())
    }

    fn unfinished(&self, name: &BatchName) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.spec.batch() == name && !task.state.is_terminal())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn stop_batch(&mut self, name: &BatchName, change: &mut Change) -> Result<(), QueueError> {
        if !self.batches.contains_key(name) {
            return Err(QueueError::BatchNotFound(name.clone()));
        }
        for task_id in self.unfinished(name) {
            self.cancel(task_id, Reason::BatchStopped, change)?;
        }
        if let Some(batch) = self.batches.get_mut(name) {
            batch.queues.clear();
        }
        Ok(())
    }

    pub fn delete_batch(
        &mut self,
        name: &BatchName,
        change: &mut Change,
    ) -> Result<(), QueueError> {
        self.stop_batch(name, change)?;
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.spec.batch() == name)
            .map(|(id, _)| *id)
            .collect();
        for task_id in ids {
            self.delete_task(task_id, change)?;
        }
        self.batches.remove(name);
        change.batch(name);
        change.notify(Event::Batch(name.clone()));
        Ok(())
    }

    /// Ends every worker session (the server is stopping); workers will reconnect.
    pub fn close_sessions(&mut self) {
        for worker in self.workers.values_mut() {
            worker.connection = None;
        }
    }

    /// Whether logs of this attempt are expected.
    pub fn log_allowed(&self, task_id: TaskId, attempt: u32) -> bool {
        self.tasks
            .get(&task_id)
            .is_some_and(|task| task.attempts.iter().any(|known| known.number == attempt))
    }
}

fn attempt_from_row(row: AttemptRow) -> Result<Attempt, StoreError> {
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "attempt {} of task {}: {what}",
            row.number, row.task_id
        ))
    };
    Ok(Attempt {
        number: row.number as u32,
        worker: WorkerId(row.worker_id as u64),
        worker_name: row.worker_name.as_str().into(),
        state: row
            .state
            .parse()
            .map_err(|_| corrupt(format!("state {}", row.state)))?,
        exit_code: row.exit_code.map(|code| code as i32),
        reason: row
            .reason
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|_| corrupt("reason".to_owned()))?,
        message: row.message.clone(),
        assigned_at: Timestamp(row.assigned_at),
        download_started_at: row.download_started_at.map(Timestamp),
        run_started_at: row.run_started_at.map(Timestamp),
        upload_started_at: row.upload_started_at.map(Timestamp),
        ended_at: row.ended_at.map(Timestamp),
        transfers: stored_spec::decode_transfers(&row.transfers).map_err(corrupt)?,
    })
}

fn view_of(id: TaskId, task: &Task) -> TaskView {
    TaskView {
        id,
        name: task.spec.name().map(str::to_owned),
        batch: task.spec.batch().clone(),
        command: task.spec.command().to_vec(),
        state: task.state,
        attempt: task.attempt,
        exit_code: task.exit_code,
        reason: task.reason,
        message: task.message.clone(),
        created_at: task.created_at,
        updated_at: task.updated_at,
        attempts: task
            .attempts
            .iter()
            .map(|attempt| AttemptView {
                number: attempt.number,
                worker: attempt.worker,
                worker_name: attempt.worker_name.to_string(),
                state: attempt.state,
                exit_code: attempt.exit_code,
                reason: attempt.reason,
                message: attempt.message.clone(),
                started_at: attempt.assigned_at,
                download_started_at: attempt.download_started_at,
                run_started_at: attempt.run_started_at,
                upload_started_at: attempt.upload_started_at,
                ended_at: attempt.ended_at,
                transfers: attempt.transfers.clone(),
            })
            .collect(),
        spec: (*task.spec).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_after(samples: &[i64]) -> Batch {
        let mut batch = Batch::default();
        for sample in samples {
            batch.record_slot_time(*sample);
        }
        batch
    }

    #[test]
    fn nothing_is_pipelined_before_an_attempt_of_the_batch_ended() {
        assert_eq!(Batch::default().pipeline_depth(4), 0);
    }

    #[test]
    fn the_pipeline_holds_the_horizon_s_worth_of_tasks_up_to_its_cap() {
        // 10 ms a task, 2 slots: 100 ms of work is 20 tasks.
        assert_eq!(batch_after(&[10]).pipeline_depth(2), 20);
        // Instant tasks: capped at 32 a slot.
        assert_eq!(batch_after(&[0]).pipeline_depth(2), 64);
        assert_eq!(batch_after(&[1]).pipeline_depth(1), 32);
    }

    #[test]
    fn long_tasks_are_not_pipelined() {
        assert_eq!(batch_after(&[100]).pipeline_depth(8), 0);
        assert_eq!(batch_after(&[3_600_000]).pipeline_depth(8), 0);
    }

    #[test]
    fn the_mean_follows_the_latest_attempts() {
        // Short tasks, then the batch turns to long ones: the pipeline closes.
        let mut batch = batch_after(&[1; 20]);
        assert!(batch.pipeline_depth(2) > 0);
        for _ in 0..30 {
            batch.record_slot_time(10_000);
        }
        assert_eq!(batch.pipeline_depth(2), 0);
        let mean = batch.slot_ms.expect("samples were recorded");
        assert!(mean > 1_000.0 && mean < 10_000.0, "{mean}");
    }
}
