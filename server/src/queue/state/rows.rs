//! Row images for the journal, and the state rebuilt from rows at start-up.
//!
//! Restore is defensive about what a crash can leave behind, and strict about what it cannot
//! explain. An active task (`assigned` to `uploading`) whose current attempt has no row, or
//! whose worker has no row or was declared lost, holds no slot anywhere that anyone will ever
//! report on: it is queued again, first in line, with the next attempt number, and its
//! message says why (the repair is journaled like any change). A task whose stored spec cannot
//! be read, or no longer passes this version's checks (a limit that tightened, an option no
//! worker may allow any more), is failed with reason `invalid_spec` and never run; its stored
//! text is kept as it was, and the server starts. Any other value that cannot be read (a
//! state, a reason, a negative counter) refuses the start with an error naming the row:
//! guessing there would lose or rerun work silently.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use herd_proto::{BatchName, Reason, TaskId, TaskSpec, TaskState, Timestamp, WorkerId};

use super::{Attempt, Change, State, Task, Worker, state_index};
use crate::store::{AttemptRow, BatchRow, Snapshot, StoreError, TaskRow, WorkerRow};
use crate::stored_spec;

impl State {
    /// Rebuilds the state from what the store holds; `change` gets the repairs of rows a
    /// crash left inconsistent.
    pub fn restore(&mut self, snapshot: Snapshot, change: &mut Change) -> Result<(), StoreError> {
        for (name, value) in snapshot.counters {
            let value = u64::try_from(value)
                .map_err(|error| StoreError::corrupt(format!("counter {name} = {value}"), error))?;
            match name.as_str() {
                "next_task_id" => self.next_task_id = value,
                "next_worker_id" => self.next_worker_id = value,
                "next_user_id" => self.next_user_id = value,
                "next_token_id" => self.next_token_id = value,
                "instance_id" => self.instance_id = value,
                _ => {}
            }
        }
        self.restore_access(snapshot.users, snapshot.tokens)?;
        self.restore_submissions(snapshot.submissions)?;
        for row in snapshot.batches {
            let what = format!("batch row `{}`", row.name);
            let name =
                BatchName::new(row.name).map_err(|error| StoreError::corrupt(what, error))?;
            let owner = self.restored_owner(row.owner);
            let batch = self.batches.entry(name).or_default();
            batch.paused = row.paused;
            batch.created_at = Timestamp(row.created_at);
            batch.owner = owner;
        }
        for row in snapshot.workers {
            self.restore_worker(row)?;
        }
        let mut attempts_by_task: HashMap<i64, Vec<AttemptRow>> = HashMap::new();
        for row in snapshot.attempts {
            attempts_by_task.entry(row.task_id).or_default().push(row);
        }
        let mut orphans = Vec::new();
        let mut invalid = Vec::new();
        for row in snapshot.tasks {
            let attempts = attempts_by_task.remove(&row.id).unwrap_or_default();
            match self.restore_task(row, attempts)? {
                Restored::Fine => {}
                Restored::Orphan(task_id, why) => orphans.push((task_id, why)),
                Restored::InvalidSpec(task_id, why) => invalid.push((task_id, why)),
            }
        }
        for (task_id, why) in invalid {
            self.fail_invalid_spec(task_id, &why, change);
        }
        // Each goes to the front of its queue: in reverse, so they keep their order there.
        for (task_id, why) in orphans.into_iter().rev() {
            self.requeue_orphan(task_id, &why, change);
        }
        Ok(())
    }

    fn restore_worker(&mut self, row: WorkerRow) -> Result<(), StoreError> {
        let id = WorkerId(row.id as u64);
        let batch = BatchName::new(row.batch).map_err(|error| {
            StoreError::corrupt(format!("worker row {id}, column batch"), error)
        })?;
        self.next_worker_id = self.next_worker_id.max(id.0 + 1);
        self.workers.insert(
            id,
            Worker {
                name: row.name.into(),
                batch,
                concurrency: row.concurrency as u32,
                prefetch: row.prefetch as u32,
                docker: row.docker,
                // Until its next hello says otherwise; it gets no task before that hello.
                bare: true,
                allow_privileged: row.allow_privileged,
                cores: row.cores as u32,
                memory_bytes: row.memory_bytes as u64,
                version: row.version,
                registered_at: Timestamp(row.registered_at),
                last_seen: Timestamp(row.last_seen),
                last_heard: self.clock.instant(),
                lost: row.lost,
                leaving: false,
                health: Default::default(),
                connection: None,
                tasks: BTreeSet::new(),
                token: row.token_id.map(|id| id as u64),
                resume_hash: row.resume_hash,
            },
        );
        Ok(())
    }

    /// Restores one task; says whether it needs a repair once everything is loaded (see the
    /// module's documentation).
    fn restore_task(
        &mut self,
        row: TaskRow,
        attempt_rows: Vec<AttemptRow>,
    ) -> Result<Restored, StoreError> {
        let id = TaskId(row.id as u64);
        let column = |name: &str| format!("task row {id}, column {name}");
        self.next_task_id = self.next_task_id.max(id.0 + 1);
        let (spec, invalid) = match stored_spec::decode(&row.spec) {
            Ok(spec) => (spec, None),
            Err(error) => (placeholder_spec(&row.batch), Some(crate::chain(&error))),
        };
        let state: TaskState = row
            .state
            .parse()
            .map_err(|error| StoreError::corrupt(column("state"), error))?;
        let reason = row
            .reason
            .as_deref()
            .map(str::parse::<Reason>)
            .transpose()
            .map_err(|error| StoreError::corrupt(column("reason"), error))?;
        let mut attempts = attempt_rows
            .into_iter()
            .map(attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        attempts.sort_by_key(|attempt| attempt.number);
        let mut orphan = None;
        let mut worker = None;
        if state.is_active() {
            let current = attempts
                .iter()
                .find(|attempt| i64::from(attempt.number) == row.attempt);
            match current.map(|attempt| (attempt.worker, self.workers.get_mut(&attempt.worker))) {
                None => {
                    orphan = Some(format!(
                        "attempt {} has no record (the server stopped between two commits)",
                        row.attempt
                    ));
                }
                Some((worker_id, None)) => {
                    orphan = Some(format!("its worker {worker_id} is not known any more"));
                }
                Some((worker_id, Some(known))) if known.lost => {
                    orphan = Some(format!("its worker {worker_id} was lost"));
                }
                Some((worker_id, Some(known))) => {
                    known.tasks.insert(id);
                    worker = Some(worker_id);
                }
            }
        }
        let task = Task {
            spec: Arc::new(spec),
            spec_json: row.spec.into(),
            state,
            attempt: row.attempt as u32,
            worker,
            exit_code: row.exit_code.map(|code| code as i32),
            reason,
            message: row.message,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            attempts,
            owner: self.restored_owner(row.owner),
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
        self.tasks.insert(id, Box::new(task));
        Ok(match (invalid, orphan) {
            (Some(why), _) => Restored::InvalidSpec(id, why),
            (None, Some(why)) => Restored::Orphan(id, why),
            (None, None) => Restored::Fine,
        })
    }

    /// Fails, at start-up, a task whose stored spec cannot be used; its row keeps the stored
    /// text (the journal writes `spec_json`, which is the row's own).
    fn fail_invalid_spec(&mut self, task_id: TaskId, why: &str, change: &mut Change) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.state.is_terminal() {
            return;
        }
        let message = format!(
            "its stored specification cannot be run by this herd version ({why}); it was not started again: fix the row or queue the task anew"
        );
        if task.state.is_active() {
            self.end_attempt(
                task_id,
                TaskState::Failed,
                Reason::InvalidSpec,
                &message,
                change,
            );
        }
        let task = self.tasks.get_mut(&task_id).expect("present above");
        task.reason = Some(Reason::InvalidSpec);
        task.message = Some(message);
        self.set_state(task_id, TaskState::Failed, change);
    }

    /// Queues again, first in line and as a new attempt, an active task that no worker holds.
    fn requeue_orphan(&mut self, task_id: TaskId, why: &str, change: &mut Change) {
        let message = format!("queued again at start-up: {why}");
        if let Some(task) = self.tasks.get(&task_id)
            && task
                .attempts
                .iter()
                .any(|attempt| attempt.number == task.attempt)
        {
            self.end_attempt(
                task_id,
                TaskState::Failed,
                Reason::WorkerLost,
                &message,
                change,
            );
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let last = task.attempts.iter().map(|attempt| attempt.number).max();
        task.attempt = last.unwrap_or(0).max(task.attempt) + 1;
        task.worker = None;
        task.reason = Some(Reason::WorkerLost);
        task.message = Some(message);
        self.set_state(task_id, TaskState::Pending, change);
        self.enqueue(task_id, true);
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
            owner: task.owner.map(|user| user.0 as i64),
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
            owner: batch.owner.map(|user| user.0 as i64),
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
            token_id: worker.token.map(|id| id as i64),
            resume_hash: worker.resume_hash.clone(),
        })
    }

    pub fn counter_rows(&self) -> Vec<(String, i64)> {
        vec![
            ("next_task_id".to_owned(), self.next_task_id as i64),
            ("next_worker_id".to_owned(), self.next_worker_id as i64),
            ("next_user_id".to_owned(), self.next_user_id as i64),
            ("next_token_id".to_owned(), self.next_token_id as i64),
            ("instance_id".to_owned(), self.instance_id as i64),
        ]
    }
}

/// What restoring one task row found.
enum Restored {
    Fine,
    /// Active, but its attempt or worker is gone: queued again.
    Orphan(TaskId, String),
    /// Its spec cannot be read or checked: failed, not run.
    InvalidSpec(TaskId, String),
}

/// The spec kept in memory for a task whose stored one cannot be used: it is never run (the
/// task is failed at once), and the stored text stays in the database as it was.
fn placeholder_spec(batch: &str) -> TaskSpec {
    let batch = BatchName::new(batch)
        .map(|name| name.to_string())
        .unwrap_or_else(|_| BatchName::default_batch().to_string());
    TaskSpec::new(herd_proto::TaskRequest {
        batch,
        command: vec!["false".to_owned()],
        ..herd_proto::TaskRequest::default()
    })
    .expect("a minimal spec is valid")
}

fn attempt_from_row(row: AttemptRow) -> Result<Attempt, StoreError> {
    let column = |name: &str| {
        format!(
            "attempt row {} of task {}, column {name}",
            row.number, row.task_id
        )
    };
    Ok(Attempt {
        number: row.number as u32,
        worker: WorkerId(row.worker_id as u64),
        worker_name: row.worker_name.as_str().into(),
        state: row
            .state
            .parse()
            .map_err(|error| StoreError::corrupt(column("state"), error))?,
        exit_code: row.exit_code.map(|code| code as i32),
        reason: row
            .reason
            .as_deref()
            .map(str::parse::<Reason>)
            .transpose()
            .map_err(|error| StoreError::corrupt(column("reason"), error))?,
        message: row.message.clone(),
        assigned_at: Timestamp(row.assigned_at),
        download_started_at: row.download_started_at.map(Timestamp),
        run_started_at: row.run_started_at.map(Timestamp),
        upload_started_at: row.upload_started_at.map(Timestamp),
        ended_at: row.ended_at.map(Timestamp),
        transfers: stored_spec::decode_transfers(&row.transfers)
            .map_err(|error| StoreError::corrupt(column("transfers"), error))?,
    })
}
