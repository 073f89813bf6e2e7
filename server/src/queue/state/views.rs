//! Read-only views of the state, for listings and watchers (all reads are served from memory).
//! Each shows the caller only what they may see: their own tasks and batches, or everything
//! for an admin.

use herd_proto::view::{AttemptView, BatchView, TaskView, WorkerView};
use herd_proto::{BatchName, TaskId, TaskState, WorkerId};

use super::{Caller, State, Task, state_index};
use crate::Error;

impl State {
    /// Task `id`, if the caller may see it.
    pub fn task_view(&self, caller: &Caller, id: TaskId) -> Result<TaskView, Error> {
        self.check_task(caller, id)?;
        Ok(self.view_of(id, &self.tasks[&id]))
    }

    /// The caller's tasks (an admin's: every task), oldest first, filtered; `limit` 0: all.
    pub fn list_tasks(
        &self,
        caller: &Caller,
        batch: Option<&BatchName>,
        state: Option<TaskState>,
        limit: usize,
    ) -> Vec<TaskView> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, task)| caller.may_access(task.owner))
            .filter(|(_, task)| batch.is_none_or(|name| task.spec.batch() == name))
            .filter(|(_, task)| state.is_none_or(|wanted| task.state == wanted))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        if limit > 0 {
            ids.truncate(limit);
        }
        ids.into_iter()
            .map(|id| self.view_of(id, &self.tasks[&id]))
            .collect()
    }

    /// Batch `name`, if the caller may see it.
    pub fn batch_view_for(&self, caller: &Caller, name: &BatchName) -> Result<BatchView, Error> {
        self.check_batch(caller, name)?;
        Ok(self.batch_view(name).expect("checked above"))
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
            owner: self.owner_name(batch.owner),
        })
    }

    /// The caller's batches (an admin's: every batch).
    pub fn list_batches(&self, caller: &Caller) -> Vec<BatchView> {
        self.batches
            .iter()
            .filter(|(_, batch)| caller.may_access(batch.owner))
            .filter_map(|(name, _)| self.batch_view(name))
            .collect()
    }

    /// Every worker (workers serve everyone); a user who is not an admin sees, of the tasks
    /// each one holds, only their own.
    pub fn worker_views(&self, caller: &Caller) -> Vec<WorkerView> {
        let visible = |id: &TaskId| {
            self.tasks
                .get(id)
                .is_some_and(|task| caller.may_access(task.owner))
        };
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
                tasks: worker.tasks.iter().copied().filter(visible).collect(),
                registered_at: worker.registered_at,
                last_seen: worker.last_seen,
                version: worker.version.clone(),
                quarantine_reason: worker
                    .health
                    .quarantine
                    .as_ref()
                    .map(|quarantine| quarantine.reason.clone()),
                quarantined_until: worker
                    .health
                    .quarantine
                    .as_ref()
                    .map(|quarantine| quarantine.until_wall),
            })
            .collect()
    }

    /// Whether worker `worker_id` may write the log of this attempt: it is the task's current
    /// attempt, on that worker, and still under way. Any other chunk is dropped.
    pub fn log_allowed(&self, worker_id: WorkerId, task_id: TaskId, attempt: u32) -> bool {
        self.tasks.get(&task_id).is_some_and(|task| {
            task.attempt == attempt && task.worker == Some(worker_id) && task.state.is_active()
        })
    }

    fn view_of(&self, id: TaskId, task: &Task) -> TaskView {
        let mut view = view_of(id, task);
        view.owner = self.owner_name(task.owner);
        view
    }
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
        owner: None,
    }
}
