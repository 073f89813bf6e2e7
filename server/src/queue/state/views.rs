//! Read-only views of the state, for listings and watchers (all reads are served from memory).

use herd_proto::view::{AttemptView, BatchView, TaskView, WorkerView};
use herd_proto::{BatchName, TaskId, TaskState};

use super::{State, Task, state_index};
use crate::Error;

impl State {
    pub fn task_view(&self, id: TaskId) -> Result<TaskView, Error> {
        let task = self.tasks.get(&id).ok_or(Error::TaskNotFound(id))?;
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

    /// Whether logs of this attempt are expected.
    pub fn log_allowed(&self, task_id: TaskId, attempt: u32) -> bool {
        self.tasks
            .get(&task_id)
            .is_some_and(|task| task.attempts.iter().any(|known| known.number == attempt))
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
    }
}
