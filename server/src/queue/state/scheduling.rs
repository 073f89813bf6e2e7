//! Submitting tasks and handing pending tasks to workers.
//!
//! Every worker's free slots (`--concurrency` plus `--prefetch`, less the attempts it holds
//! that are not uploading) are filled first, then their pipelines (see
//! [`PIPELINE_HORIZON_MS`](super::PIPELINE_HORIZON_MS)), so no task waits behind another
//! while a slot is free anywhere. Within a batch, a worker takes the oldest pending task among
//! the requirements it can serve (a bare worker never gets a Docker task), except one that
//! already failed there while another worker could take it (see `reliability.rs`). A
//! quarantined or stopping worker gets nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use herd_proto::session::ToWorker;
use herd_proto::{BatchName, TaskId, TaskSpec, TaskState, WorkerId};

use super::reliability::{MAX_PASSED_OVER, better_left_to_another};
use super::{Attempt, Caller, Change, State, Task, Worker, state_index};
use crate::Error;
use crate::queue::Event;

impl State {
    /// Queues tasks (with their stored JSON, encoded outside the lock) as the caller's, and
    /// schedules them. Refused, with nothing queued, if any of their batches belongs to
    /// another user; a batch nobody owns yet becomes the caller's.
    pub fn submit(
        &mut self,
        caller: &Caller,
        specs: Vec<(TaskSpec, String)>,
        change: &mut Change,
    ) -> Result<Vec<TaskId>, Error> {
        self.check_submit(caller, specs.iter().map(|(spec, _)| spec.batch()))?;
        let now = self.clock.now();
        let mut ids = Vec::with_capacity(specs.len());
        let mut batches = BTreeSet::new();
        for (spec, spec_json) in specs {
            let id = TaskId(self.next_task_id);
            self.next_task_id += 1;
            let existed = self.batches.contains_key(spec.batch());
            self.ensure_batch(spec.batch(), change);
            let batch = self.batches.get_mut(spec.batch()).expect("ensured above");
            if batch.owner.is_none() {
                batch.owner = Some(caller.user);
                if existed {
                    change.batch(spec.batch());
                }
            }
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
                    owner: Some(caller.user),
                }),
            );
            change.task(id);
            change.created_tasks.push(id);
            ids.push(id);
        }
        change.counters();
        for name in batches {
            change.notify(Event::Batch(name.clone()));
            self.schedule_batch(&name, change);
        }
        Ok(ids)
    }

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
        if !worker.takes_tasks() {
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

    /// The oldest pending task `worker_id` can serve, taken off its queue. Tasks that failed
    /// on this worker and that another worker could take are passed over (at most
    /// [`MAX_PASSED_OVER`]) and put back where they were.
    fn pop_pending(&mut self, worker_id: WorkerId) -> Option<TaskId> {
        let worker = self.workers.get(&worker_id)?;
        let batch = self.batches.get_mut(&worker.batch)?;
        if batch.paused {
            return None;
        }
        let mut passed_over = Vec::new();
        let found = loop {
            // The oldest head among the queues this worker can serve.
            let Some(requirement) = batch
                .queues
                .iter()
                .filter(|(requirement, queue)| worker.can_serve(**requirement) && !queue.is_empty())
                .min_by_key(|(_, queue)| queue.front().copied())
                .map(|(requirement, _)| *requirement)
            else {
                break None;
            };
            let Some(id) = batch.queues.get_mut(&requirement)?.pop_front() else {
                break None;
            };
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if task.state != TaskState::Pending {
                continue;
            }
            if !better_left_to_another(task, worker_id, &self.workers) {
                break Some(id);
            }
            passed_over.push((requirement, id));
            if passed_over.len() >= MAX_PASSED_OVER {
                break None;
            }
        };
        for (requirement, id) in passed_over.into_iter().rev() {
            batch.queues.entry(requirement).or_default().push_front(id);
        }
        found
    }

    fn assign(&mut self, task_id: TaskId, worker_id: WorkerId, change: &mut Change) {
        let now = self.clock.now();
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let Some(address) = worker.address(worker_id) else {
            return;
        };
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
            assigned_at: now,
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
        change.send(address, message);
    }
}
