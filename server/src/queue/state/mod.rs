//! The scheduling state, in memory, and every transition of it: a pure state machine.
//!
//! Events come in as method calls (a submit, a worker's hello, its reports, a disconnection,
//! a heartbeat, the reaper's tick, the users' actions); what they cause goes out in a
//! [`Change`]: the keys of the rows to persist and the effects to run once they are durable
//! (messages addressed to a worker connection by [`Address`], events for watchers). Nothing
//! here awaits, does I/O, holds a channel or reads the time except through [`Clock`], so the
//! whole machine runs in unit tests (`tests.rs`) without a runtime or a database. The
//! [`Queue`](super::Queue) owns the lock, the journal and the connections.
//!
//! Layout:
//! - this file: the types, the clock, and the few primitives every transition goes through
//!   ([`State::set_state`], the one place a task's state changes, which keeps the per-batch
//!   counts right; [`State::end_attempt`], the one way an attempt is ended by the server);
//! - `scheduling.rs`: submit, and handing pending tasks to workers (slots, then pipelines);
//! - `workers.rs`: a worker's connection, reports, disconnection, loss and deletion;
//! - `reliability.rs`: the crash limit, the quarantine of broken workers, where retries go;
//! - `actions.rs`: what users do to tasks and batches (kill, retry, delete, pause, stop);
//! - `rows.rs`: row images for the journal, and the restore from rows at start-up;
//! - `views.rs`: read-only views for listings.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use herd_proto::session::ToWorker;
use herd_proto::view::Transfer;
use herd_proto::{
    BatchName, Reason, Requirement, TaskId, TaskSpec, TaskState, Timestamp, WorkerId,
};

use super::Event;
use super::change::{Address, Change};

pub use access::{BOOTSTRAP_ADMIN, Caller, UserId, digest, require_admin};
use access::{Token, User};
use reliability::Health;
pub use reliability::QuarantinePolicy;
use submissions::Submission;

mod access;
mod actions;
mod reliability;
mod rows;
mod scheduling;
mod submissions;
mod views;
mod workers;

#[cfg(test)]
mod tests;

/// Where the state machine reads the time. The server uses [`SystemClock`]; tests use a fake
/// they move forward by hand.
pub(crate) trait Clock: Send {
    /// Wall-clock time, for what is stored and shown.
    fn now(&self) -> Timestamp;
    /// Monotonic time, for worker liveness.
    fn instant(&self) -> Instant;
}

/// The real clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

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
    /// The current attempt's number while active; the next one's while pending.
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub exit_code: Option<i32>,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub attempts: Vec<Attempt>,
    /// The user who queued it; `None` for tasks from before herd had users (admins only).
    pub owner: Option<UserId>,
}

impl Task {
    fn current_attempt(&mut self) -> Option<&mut Attempt> {
        let number = self.attempt;
        self.attempts
            .iter_mut()
            .find(|attempt| attempt.number == number)
    }
}

#[derive(Default)]
pub(crate) struct Batch {
    pub paused: bool,
    /// The user whose submit created it, or who first queued into it; `None` until then.
    pub owner: Option<UserId>,
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

pub(crate) struct Worker {
    pub name: Arc<str>,
    pub batch: BatchName,
    pub concurrency: u32,
    pub prefetch: u32,
    pub docker: bool,
    /// Runs tasks without an image. Not stored: it comes with every hello, and only a
    /// connected worker (one that said hello) is given tasks.
    pub bare: bool,
    pub allow_privileged: bool,
    pub cores: u32,
    pub memory_bytes: u64,
    pub version: String,
    pub registered_at: Timestamp,
    pub last_seen: Timestamp,
    /// Monotonic time of the last message (or of the server's start for reloaded workers).
    pub last_heard: Instant,
    pub lost: bool,
    /// It said goodbye (it is stopping on purpose): no task for it, and it is not reaped.
    /// Until its next hello; not stored.
    pub leaving: bool,
    /// Its recent failures that blame it, and its quarantine. Not stored.
    pub health: Health,
    /// The serial of its current connection, if connected.
    pub connection: Option<u64>,
    /// Tasks this worker holds (any active state).
    pub tasks: BTreeSet<TaskId>,
    /// The token of its current (or last) connection: revoking it closes the session.
    pub token: Option<u64>,
    /// SHA-256 (hex) of the key that lets a connection resume this identity; `None` for
    /// workers from before resume keys, which cannot be resumed.
    pub resume_hash: Option<String>,
}

impl Worker {
    fn can_serve(&self, requirement: Requirement) -> bool {
        match requirement {
            Requirement::Bare => self.bare,
            Requirement::Docker => self.docker,
            Requirement::PrivilegedDocker => self.docker && self.allow_privileged,
        }
    }

    /// Where messages for this worker go now, if anywhere.
    fn address(&self, id: WorkerId) -> Option<Address> {
        self.connection.map(|serial| Address { worker: id, serial })
    }

    fn status(&self) -> &'static str {
        if self.lost {
            "lost"
        } else if self.leaving {
            "stopped"
        } else if self.connection.is_some() && self.health.quarantine.is_some() {
            "quarantined"
        } else if self.connection.is_some() {
            "connected"
        } else {
            "disconnected"
        }
    }
}

pub(crate) struct State {
    clock: Box<dyn Clock>,
    next_task_id: u64,
    next_worker_id: u64,
    next_user_id: u64,
    next_token_id: u64,
    /// This database's identity (random, made once; 0 until [`State::ensure_instance_id`]).
    pub instance_id: u64,
    /// Boxed: a hash map keeps up to half its slots empty, and an empty slot costs the size of
    /// its value; a pointer there instead of a whole task saves ~150 bytes a task at a million.
    pub tasks: HashMap<TaskId, Box<Task>>,
    pub batches: BTreeMap<BatchName, Batch>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub users: BTreeMap<UserId, User>,
    pub tokens: BTreeMap<u64, Token>,
    /// Token ids by the SHA-256 (hex) of their secret.
    pub token_index: HashMap<Arc<str>, u64>,
    /// When workers are quarantined (a server setting).
    pub quarantine_policy: QuarantinePolicy,
    /// Submits made with an idempotency key, by `USER_ID:KEY`.
    pub submissions: HashMap<String, Submission>,
}

fn state_index(state: TaskState) -> usize {
    state as usize
}

impl State {
    pub fn new(clock: Box<dyn Clock>) -> Self {
        State {
            clock,
            next_task_id: 1,
            next_worker_id: 1,
            next_user_id: 1,
            next_token_id: 1,
            instance_id: 0,
            tasks: HashMap::new(),
            batches: BTreeMap::new(),
            workers: BTreeMap::new(),
            users: BTreeMap::new(),
            tokens: BTreeMap::new(),
            token_index: HashMap::new(),
            quarantine_policy: QuarantinePolicy::default(),
            submissions: HashMap::new(),
        }
    }

    /// The one place task states change: keeps the per-batch counts right and tells watchers.
    fn set_state(&mut self, id: TaskId, next: TaskState, change: &mut Change) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let previous = task.state;
        task.state = next;
        task.updated_at = self.clock.now();
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

    /// Ends the current attempt of an active task with `state` (failed or canceled), `reason`
    /// and `message`, detaches the task from its worker and tells that worker (if connected)
    /// to drop the attempt. The task's own state is left to the caller. Returns the worker
    /// that held it, whose slot is now free.
    fn end_attempt(
        &mut self,
        task_id: TaskId,
        state: TaskState,
        reason: Reason,
        message: &str,
        change: &mut Change,
    ) -> Option<WorkerId> {
        let now = self.clock.now();
        let task = self.tasks.get_mut(&task_id)?;
        let number = task.attempt;
        if let Some(attempt) = task.current_attempt() {
            attempt.state = state;
            attempt.reason = Some(reason);
            attempt.message = Some(message.to_owned());
            attempt.ended_at = Some(now);
        }
        change.attempt(task_id, number);
        let worker_id = task.worker.take()?;
        let worker = self.workers.get_mut(&worker_id)?;
        worker.tasks.remove(&task_id);
        if let Some(address) = worker.address(worker_id) {
            change.send(
                address,
                ToWorker::Cancel {
                    task_id,
                    attempt: number,
                    reason: message.to_owned(),
                },
            );
        }
        Some(worker_id)
    }

    /// Ends the current attempt of an active task as failed and queues a new attempt, first in
    /// line (the task was not at fault: its worker stopped, was deleted or forgot it). A lost
    /// worker's attempts go through [`State::lose_attempt`] instead, which counts crashes.
    fn requeue(&mut self, task_id: TaskId, reason: Reason, message: &str, change: &mut Change) {
        if !self
            .tasks
            .get(&task_id)
            .is_some_and(|task| task.state.is_active())
        {
            return;
        }
        self.end_attempt(task_id, TaskState::Failed, reason, message, change);
        self.queue_next_attempt(task_id, change);
    }

    /// Queues a task whose attempt the server ended as a new attempt, first in line.
    fn queue_next_attempt(&mut self, task_id: TaskId, change: &mut Change) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.attempt += 1;
        self.set_state(task_id, TaskState::Pending, change);
        self.enqueue(task_id, true);
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
                    created_at: self.clock.now(),
                    ..Batch::default()
                },
            );
            change.batch(name);
        }
    }
}

#[cfg(test)]
mod pipeline_tests {
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
