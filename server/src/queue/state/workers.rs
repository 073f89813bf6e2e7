//! Workers: a connection (hello and reconciliation), reports, liveness, disconnection, loss
//! and deletion.
//!
//! A report is applied only if it is about the task's current attempt on that very worker
//! and the task is still active; anything else (an old attempt, another worker's task, a
//! killed or deleted task) is refused with a Cancel, so the worker drops it, and changes
//! nothing. A worker that reconnects says which attempts it holds: those the server gave it
//! and it no longer has are queued again; the reports it carries are applied as if just sent.
//!
//! Identity is the server's: a new session gets a fresh worker id and a resume key (a secret
//! only its SHA-256 of which is kept). A session resumes an identity only by presenting that
//! key; one that names another worker's id without it is given a new identity, so it can
//! neither take over that worker's connection nor report on its attempts.

use std::collections::BTreeSet;
use std::time::Duration;

use herd_proto::access::TokenKind;
use herd_proto::session::{Hello, ToWorker};
use herd_proto::{BatchName, Reason, TaskId, TaskReport, TaskState, WorkerId};

use super::access::digest;
use super::{Address, Caller, Change, State, Worker};
use crate::Error;

/// Refuses a session whose token is not a worker token, or is one for another batch.
fn check_worker_token(caller: &Caller, hello: &Hello) -> Result<(), Error> {
    if caller.kind != TokenKind::Worker {
        return Err(Error::Forbidden(
            "a user token cannot open a worker session; give the worker a worker token (`herd token create --worker`)".to_owned(),
        ));
    }
    if let Some(only) = &caller.batch
        && only != &hello.batch
    {
        return Err(Error::Forbidden(format!(
            "this worker token serves batch `{only}` only, not `{}`; start the worker with --batch {only}, or use another token",
            hello.batch
        )));
    }
    Ok(())
}

impl State {
    /// A worker (re)connects on connection `serial` (unique within the server's life) with a
    /// worker token; its welcome goes there. `new_key` is the resume key to give it if it gets
    /// a new identity. Returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        caller: &Caller,
        hello: Hello,
        new_key: &str,
        serial: u64,
        heartbeat_interval: Duration,
        worker_timeout: Duration,
        change: &mut Change,
    ) -> Result<WorkerId, Error> {
        check_worker_token(caller, &hello)?;
        let now = self.clock.now();
        let heard = self.clock.instant();
        let (worker_id, resume_key) = self.identity_of(&hello, new_key, change);
        let worker = self.workers.entry(worker_id).or_insert_with(|| Worker {
            name: hello.name.as_str().into(),
            batch: hello.batch.clone(),
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            docker: hello.docker,
            bare: hello.bare,
            allow_privileged: hello.allow_privileged,
            cores: hello.cores,
            memory_bytes: hello.memory_bytes,
            version: hello.version.clone(),
            registered_at: now,
            last_seen: now,
            last_heard: heard,
            lost: false,
            leaving: false,
            health: Default::default(),
            connection: None,
            tasks: BTreeSet::new(),
            token: None,
            resume_hash: Some(digest(&resume_key)),
        });
        if let Some(previous) = worker.address(worker_id) {
            change.hangup(previous);
        }
        worker.name = hello.name.into();
        worker.batch = hello.batch.clone();
        worker.concurrency = hello.concurrency;
        worker.prefetch = hello.prefetch;
        worker.docker = hello.docker;
        worker.bare = hello.bare;
        worker.allow_privileged = hello.allow_privileged;
        worker.cores = hello.cores;
        worker.memory_bytes = hello.memory_bytes;
        worker.version = hello.version;
        worker.last_seen = now;
        worker.last_heard = heard;
        worker.lost = false;
        worker.leaving = false;
        worker.connection = Some(serial);
        worker.token = Some(caller.token);
        change.worker(worker_id);
        change.send(
            Address {
                worker: worker_id,
                serial,
            },
            ToWorker::Welcome {
                worker_id,
                heartbeat_interval,
                resume_key,
                worker_timeout: Some(worker_timeout),
                instance_id: self.instance_id,
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
        Ok(worker_id)
    }

    /// The identity a hello resumes (the worker it names, if it presents that worker's resume
    /// key), or a new one with `new_key`; with the key to welcome it with.
    fn identity_of(
        &mut self,
        hello: &Hello,
        new_key: &str,
        change: &mut Change,
    ) -> (WorkerId, String) {
        let presented = hello.resume_key.as_deref().map(digest);
        let known = hello.worker_id.filter(|id| {
            self.workers.get(id).is_some_and(|worker| {
                worker.resume_hash.is_some() && worker.resume_hash == presented
            })
        });
        match (known, &hello.resume_key) {
            (Some(id), Some(key)) => (id, key.clone()),
            _ => {
                let id = WorkerId(self.next_worker_id);
                self.next_worker_id += 1;
                change.counters();
                (id, new_key.to_owned())
            }
        }
    }

    /// Whether `serial` is the worker's current connection; refreshes its liveness.
    pub fn touch(&mut self, worker_id: WorkerId, serial: u64) -> bool {
        match self.workers.get_mut(&worker_id) {
            Some(worker) if worker.connection == Some(serial) => {
                worker.last_heard = self.clock.instant();
                true
            }
            _ => false,
        }
    }

    /// The connection ended (the worker may come back within the timeout).
    pub fn disconnect(&mut self, worker_id: WorkerId, serial: u64, change: &mut Change) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if worker.connection != Some(serial) {
            return;
        }
        worker.connection = None;
        worker.last_heard = self.clock.instant();
        worker.last_seen = self.clock.now();
        change.worker(worker_id);
        change.hangup(Address {
            worker: worker_id,
            serial,
        });
    }

    /// The worker on connection `serial` is stopping on purpose: it gets no more tasks, the
    /// attempts it holds get a new attempt first in line (reason `worker_stopped`, neither a
    /// crash nor a retry), and its stream is closed once that is durable.
    pub fn goodbye(&mut self, worker_id: WorkerId, serial: u64, change: &mut Change) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if worker.connection != Some(serial) {
            return;
        }
        change.hangup(Address {
            worker: worker_id,
            serial,
        });
        self.stop_worker(worker_id, "its worker stopped before it ended", change);
    }

    /// Lets go of a worker that stopped on purpose (a goodbye, a revoked token): no more
    /// tasks for it, the reaper leaves it, and its attempts get a new attempt first in line
    /// with reason `worker_stopped` and `message` (neither a crash nor a retry).
    pub(super) fn stop_worker(&mut self, worker_id: WorkerId, message: &str, change: &mut Change) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        worker.leaving = true;
        worker.connection = None;
        worker.last_seen = self.clock.now();
        let batch = worker.batch.clone();
        let tasks: Vec<TaskId> = worker.tasks.iter().copied().collect();
        for task_id in tasks {
            self.requeue(task_id, Reason::WorkerStopped, message, change);
        }
        change.worker(worker_id);
        self.schedule_batch(&batch, change);
    }

    /// Declares lost every worker not heard from within `timeout` (a crash for the attempts
    /// it held: they get a new attempt first in line, within their crash limit), and ends the
    /// quarantines that are over. Returns the workers declared lost.
    pub fn reap(&mut self, timeout: Duration, change: &mut Change) -> Vec<WorkerId> {
        self.release_quarantines(change);
        let now = self.clock.instant();
        let silent: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, worker)| {
                !worker.lost && !worker.leaving && now.duration_since(worker.last_heard) > timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for worker_id in &silent {
            let worker = self.workers.get_mut(worker_id).expect("listed above");
            let message = format!(
                "worker {worker_id} was silent for more than {}s",
                timeout.as_secs()
            );
            worker.lost = true;
            if let Some(address) = worker.address(*worker_id) {
                change.hangup(address);
            }
            // Let go of the connection first: a lost worker is not told about its tasks.
            worker.connection = None;
            let tasks: Vec<TaskId> = worker.tasks.iter().copied().collect();
            for task_id in tasks {
                self.lose_attempt(task_id, &message, change);
            }
            change.worker(*worker_id);
        }
        if !silent.is_empty() {
            let batches: Vec<BatchName> = self.batches.keys().cloned().collect();
            for name in batches {
                self.schedule_batch(&name, change);
            }
        }
        silent
    }

    /// Applies one task report from a worker's current connection.
    pub fn report(&mut self, worker_id: WorkerId, mut report: TaskReport, change: &mut Change) {
        let address = self
            .workers
            .get(&worker_id)
            .and_then(|worker| worker.address(worker_id));
        let current = self.tasks.get(&report.task_id).is_some_and(|task| {
            task.attempt == report.attempt
                && task.worker == Some(worker_id)
                && task.state.is_active()
        });
        if !current {
            // A late or stale report (an old attempt, a deleted or killed task): refuse it
            // and tell the worker to drop it.
            if let Some(address) = address {
                change.send(
                    address,
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
        let attempt = task
            .current_attempt()
            .expect("an active task has its current attempt");
        attempt.state = report.state;
        match report.state {
            TaskState::Downloading => attempt.download_started_at = Some(report.at),
            TaskState::Running => attempt.run_started_at = Some(report.at),
            TaskState::Uploading => attempt.upload_started_at = Some(report.at),
            _ => {}
        }
        if !report.transfers.is_empty() {
            attempt.transfers.append(&mut report.transfers);
        }
        change.attempt(report.task_id, report.attempt);
        if report.state.is_terminal() {
            self.finish_attempt(worker_id, address, report, change);
            return;
        }
        self.set_state(report.task_id, report.state, change);
        if report.state == TaskState::Uploading {
            // Uploading tasks do not hold a slot.
            self.schedule_worker(worker_id, change);
        }
    }

    /// The final report of the current attempt (already checked and recorded as the
    /// attempt's state): acknowledge it, free the slot, retry the task if the failure is
    /// within its `--retry`, and give the worker its next task.
    fn finish_attempt(
        &mut self,
        worker_id: WorkerId,
        address: Option<Address>,
        report: TaskReport,
        change: &mut Change,
    ) {
        let task = self.tasks.get_mut(&report.task_id).expect("checked above");
        let attempt = task.current_attempt().expect("checked above");
        attempt.ended_at = Some(report.at);
        let slot_started = attempt
            .download_started_at
            .or(attempt.run_started_at)
            .unwrap_or(attempt.assigned_at);
        let slot_ms = report.at.millis() - slot_started.millis();
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
                attempt.state == TaskState::Failed
                    && attempt.reason.is_none_or(Reason::counts_against_retry)
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
        let (state, reason) = (report.state, report.reason);
        // Copied only when it may be quoted in a quarantine's reason.
        let message = reason
            .is_some_and(Reason::blames_worker)
            .then(|| task.message.clone())
            .flatten();
        self.record_outcome(worker_id, state, reason, message.as_deref(), change);
        if let Some(address) = address {
            change.send(
                address,
                ToWorker::Ack {
                    task_id: report.task_id,
                    attempt: report.attempt,
                },
            );
        }
        if retry {
            let task = self.tasks.get_mut(&report.task_id).expect("checked above");
            task.attempt += 1;
            let batch = task.spec.batch().clone();
            self.set_state(report.task_id, TaskState::Pending, change);
            self.enqueue(report.task_id, false);
            self.schedule_batch(&batch, change);
        } else {
            self.set_state(report.task_id, report.state, change);
        }
        self.schedule_worker(worker_id, change);
    }

    /// Forgets a worker (telling it to exit if connected); its tasks get a new attempt.
    pub fn delete_worker(&mut self, worker_id: WorkerId, change: &mut Change) -> Result<(), Error> {
        let worker = self
            .workers
            .get(&worker_id)
            .ok_or(Error::WorkerNotFound(worker_id))?;
        let address = worker.address(worker_id);
        if let Some(address) = address {
            change.send(
                address,
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
                Reason::WorkerStopped,
                "its worker was deleted",
                change,
            );
        }
        if let Some(address) = address {
            change.hangup(address);
        }
        self.workers.remove(&worker_id);
        change.worker(worker_id);
        self.schedule_batch(&batch, change);
        Ok(())
    }

    /// Forgets every connection (the server is stopping; the queue drops their senders).
    pub fn close_sessions(&mut self) {
        for worker in self.workers.values_mut() {
            worker.connection = None;
        }
    }
}
