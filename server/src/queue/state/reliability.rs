//! Reliability: the crash limit, the quarantine of broken workers, and where retries go.
//!
//! The rules, written once here (README § Reliability tells users the same):
//! - **A crash** is an attempt that ended with reason `worker_lost`: its worker fell silent
//!   past `--worker-timeout` (killed, crashed, cut off) while holding it. It does not use up a
//!   `--retry`; the task is queued again first in line, until its `--crash-limit` (default
//!   [`DEFAULT_CRASH_LIMIT`](herd_proto::spec::DEFAULT_CRASH_LIMIT), 0 for no limit) is
//!   reached: then the task fails with reason `crash_limit` and a message naming the workers
//!   lost with it, so a task that kills its worker stops after a few. A worker that stops on
//!   purpose says goodbye first: its attempts end with reason `worker_stopped`, which counts
//!   neither as a crash nor against `--retry` (so does deleting a worker).
//! - **A quarantine** keeps tasks away from a worker whose last
//!   [`QuarantinePolicy::after`] attempts all failed for reasons that blame the worker
//!   (`input`, `output`, `executor`: not `exit_code`, `timeout` or a user's kill) within
//!   [`QuarantinePolicy::window`]. It lasts [`QuarantinePolicy::first`], twice that the next
//!   time, up to [`QuarantinePolicy::longest`]; a success resets it. It ends at the reaper's
//!   next tick after its end. It lives in memory only.
//! - **A retry prefers another worker**: a pending task that already failed on a worker is
//!   passed over by that worker while another connected worker that can serve it (and on which
//!   it has not failed) exists; if none does, it takes it. Only tasks with a failed attempt pay
//!   for this check, and a worker looks at most [`MAX_PASSED_OVER`] of them deep.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use herd_proto::{Reason, TaskId, TaskState, Timestamp, WorkerId};

use super::{Change, State, Task, Worker};

/// When a worker is quarantined, and for how long. A server setting (`herd server
/// --quarantine-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Failures in a row that blame the worker before it is quarantined; 0 never quarantines.
    pub after: u32,
    /// Those failures must all have happened within this long.
    pub window: Duration,
    /// The first quarantine's length; each following one is twice the previous one.
    pub first: Duration,
    /// The longest quarantine.
    pub longest: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            after: 5,
            window: Duration::from_secs(60),
            first: Duration::from_secs(30),
            longest: Duration::from_secs(600),
        }
    }
}

/// How many pending tasks that already failed on a worker it passes over, at most, looking
/// for one it has not failed: bounds the cost of a fill when many retries wait.
pub(super) const MAX_PASSED_OVER: usize = 64;

/// How much of the last failure's message a quarantine's reason quotes.
const MAX_LAST_FAILURE_CHARS: usize = 300;

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A worker's record of failures that blame it, and its quarantine.
#[derive(Default)]
pub(crate) struct Health {
    /// When each of its latest failures in a row that blame it happened (at most
    /// `QuarantinePolicy::after`).
    strikes: VecDeque<Instant>,
    /// How long its next quarantine lasts; zero until its first.
    next_quarantine: Duration,
    /// Its quarantine, while it lasts.
    pub quarantine: Option<Quarantine>,
}

/// A quarantined worker is given no task until `until`.
pub(crate) struct Quarantine {
    pub until: Instant,
    /// `until` on the wall clock, to show.
    pub until_wall: Timestamp,
    /// Why, for `herd worker list`.
    pub reason: String,
}

/// The workers lost with `task`'s attempts (its crashes), as `id (name)`, in order.
fn crashed_workers(task: &Task) -> Vec<String> {
    task.attempts
        .iter()
        .filter(|attempt| is_crash(attempt.state, attempt.reason))
        .map(|attempt| format!("{} ({})", attempt.worker, attempt.worker_name))
        .collect()
}

fn is_crash(state: TaskState, reason: Option<Reason>) -> bool {
    state == TaskState::Failed && reason == Some(Reason::WorkerLost)
}

/// Whether `task` has an attempt that failed on `worker_id` (not one whose worker stopped).
pub(super) fn failed_on(task: &Task, worker_id: WorkerId) -> bool {
    task.attempts.iter().any(|attempt| {
        attempt.worker == worker_id
            && attempt.state == TaskState::Failed
            && attempt.reason != Some(Reason::WorkerStopped)
    })
}

impl Worker {
    /// Connected, not stopping, not quarantined: it may be given tasks.
    pub(super) fn takes_tasks(&self) -> bool {
        self.connection.is_some() && !self.lost && !self.leaving && self.health.quarantine.is_none()
    }
}

impl State {
    /// Ends the current attempt of an active task whose worker was lost (a crash), and queues
    /// it again first in line, or fails it once it reached its `--crash-limit`.
    pub(super) fn lose_attempt(&mut self, task_id: TaskId, message: &str, change: &mut Change) {
        if !self
            .tasks
            .get(&task_id)
            .is_some_and(|task| task.state.is_active())
        {
            return;
        }
        self.end_attempt(
            task_id,
            TaskState::Failed,
            Reason::WorkerLost,
            message,
            change,
        );
        let task = self.tasks.get_mut(&task_id).expect("present above");
        let workers = crashed_workers(task);
        let Some(limit) = task.spec.crash_limit() else {
            self.queue_next_attempt(task_id, change);
            return;
        };
        if workers.len() < limit as usize {
            self.queue_next_attempt(task_id, change);
            return;
        }
        task.reason = Some(Reason::CrashLimit);
        task.message = Some(format!(
            "its attempts were lost with their worker {} times (--crash-limit {limit}), on workers {}; \
             the task may be crashing them (see `herd task logs {task_id}`); to run it again, \
             `herd task retry {task_id}`, or launch it with a higher --crash-limit (0: no limit)",
            workers.len(),
            workers.join(", "),
        ));
        self.set_state(task_id, TaskState::Failed, change);
    }

    /// Records how an attempt on `worker_id` ended (a final report): a failure that blames
    /// the worker is a strike, enough of them in a row within the window quarantine it; any
    /// other failure clears the strikes, a success also resets the quarantine's length.
    pub(super) fn record_outcome(
        &mut self,
        worker_id: WorkerId,
        state: TaskState,
        reason: Option<Reason>,
        message: Option<&str>,
        change: &mut Change,
    ) {
        let policy = self.quarantine_policy;
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let health = &mut worker.health;
        let blamed = state == TaskState::Failed && reason.is_some_and(Reason::blames_worker);
        if !blamed || policy.after == 0 {
            // The common case, on the hot path: no clock read.
            health.strikes.clear();
            if state == TaskState::Succeeded {
                health.next_quarantine = Duration::ZERO;
            }
            return;
        }
        let now = self.clock.instant();
        let wall_now = self.clock.now();
        health.strikes.push_back(now);
        while health.strikes.len() > policy.after as usize {
            health.strikes.pop_front();
        }
        let within_window = health
            .strikes
            .front()
            .is_some_and(|first| now.duration_since(*first) <= policy.window);
        if health.strikes.len() < policy.after as usize || !within_window {
            return;
        }
        health.strikes.clear();
        let length = if health.next_quarantine.is_zero() {
            policy.first
        } else {
            health.next_quarantine
        };
        health.next_quarantine = (length * 2).min(policy.longest);
        let last = match (reason, message) {
            (Some(reason), Some(message)) => format!("{reason}: {message}"),
            (Some(reason), None) => reason.to_string(),
            _ => String::new(),
        };
        let reason = format!(
            "its last {} attempts failed within {} s for reasons that are not their tasks' own (the last: {}); \
             it gets no task for {} s; check the worker's host (disk, Docker, network, credentials)",
            policy.after,
            policy.window.as_secs(),
            shorten(&last, MAX_LAST_FAILURE_CHARS),
            length.as_secs(),
        );
        change.quarantine(worker_id, Some((length.as_secs(), reason.clone())));
        health.quarantine = Some(Quarantine {
            until: now + length,
            until_wall: Timestamp(wall_now.0 + length.as_millis() as i64),
            reason,
        });
    }

    /// Ends the quarantines that are over, and gives those workers tasks again.
    pub(super) fn release_quarantines(&mut self, change: &mut Change) {
        let now = self.clock.instant();
        let released: Vec<WorkerId> = self
            .workers
            .iter_mut()
            .filter_map(|(id, worker)| {
                let over = worker
                    .health
                    .quarantine
                    .as_ref()
                    .is_some_and(|quarantine| quarantine.until <= now);
                over.then(|| {
                    worker.health.quarantine = None;
                    *id
                })
            })
            .collect();
        for worker_id in released {
            change.quarantine(worker_id, None);
            self.schedule_worker(worker_id, change);
        }
    }
}

/// Whether `worker_id` should leave `task` to another worker: it failed there before, and a
/// worker of `batch` that takes tasks, can serve it and has not failed it exists.
pub(super) fn better_left_to_another(
    task: &Task,
    worker_id: WorkerId,
    workers: &std::collections::BTreeMap<WorkerId, Worker>,
) -> bool {
    if task.attempts.is_empty() || !failed_on(task, worker_id) {
        return false;
    }
    let requirement = task.spec.requirement();
    workers.iter().any(|(id, worker)| {
        *id != worker_id
            && &worker.batch == task.spec.batch()
            && worker.takes_tasks()
            && worker.can_serve(requirement)
            && !failed_on(task, *id)
    })
}
