//! What users do to tasks and batches: kill, retry, delete; pause, resume, stop, delete.
//!
//! A kill ends the current attempt through [`State::end_attempt`] (the worker is told to drop
//! it, whatever phase it is in, staging included) and frees the slot at once. A retry, by a
//! user or automatic, is always a new attempt with the next number.

use herd_proto::{BatchName, Reason, TaskId, TaskState};

use super::{Change, State, state_index};
use crate::Error;
use crate::queue::Event;

impl State {
    /// Cancels a task: pending ones at once, active ones are killed on their worker.
    pub fn cancel(
        &mut self,
        task_id: TaskId,
        reason: Reason,
        change: &mut Change,
    ) -> Result<(), Error> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or(Error::TaskNotFound(task_id))?;
        if task.state.is_terminal() {
            return Err(Error::AlreadyFinished {
                task_id,
                state: task.state,
            });
        }
        let message = match reason {
            Reason::BatchStopped => "its batch was stopped",
            _ => "killed by a user",
        };
        task.reason = Some(reason);
        task.message = Some(message.to_owned());
        let freed = if task.state.is_active() {
            self.end_attempt(task_id, TaskState::Canceled, reason, message, change)
        } else {
            None
        };
        self.set_state(task_id, TaskState::Canceled, change);
        if let Some(worker_id) = freed {
            self.schedule_worker(worker_id, change);
        }
        Ok(())
    }

    /// Queues a finished task again, as a new attempt.
    pub fn retry(&mut self, task_id: TaskId, change: &mut Change) -> Result<(), Error> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or(Error::TaskNotFound(task_id))?;
        if !task.state.is_terminal() {
            return Err(Error::NotFinished {
                task_id,
                state: task.state,
            });
        }
        if let Some(last) = task.attempts.iter().map(|attempt| attempt.number).max() {
            task.attempt = last + 1;
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
    pub fn delete_task(&mut self, task_id: TaskId, change: &mut Change) -> Result<(), Error> {
        let task = self
            .tasks
            .get(&task_id)
            .ok_or(Error::TaskNotFound(task_id))?;
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

    /// Pauses (no task of it is handed out) or resumes a batch.
    pub fn set_paused(
        &mut self,
        name: &BatchName,
        paused: bool,
        change: &mut Change,
    ) -> Result<(), Error> {
        let batch = self
            .batches
            .get_mut(name)
            .ok_or_else(|| Error::BatchNotFound(name.clone()))?;
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

    /// Cancels every unfinished task of a batch.
    pub fn stop_batch(&mut self, name: &BatchName, change: &mut Change) -> Result<(), Error> {
        if !self.batches.contains_key(name) {
            return Err(Error::BatchNotFound(name.clone()));
        }
        // Emptied first: a slot freed by a cancel must not take a task about to be canceled.
        if let Some(batch) = self.batches.get_mut(name) {
            batch.queues.clear();
        }
        for task_id in self.unfinished(name) {
            self.cancel(task_id, Reason::BatchStopped, change)?;
        }
        Ok(())
    }

    /// Stops a batch and deletes it with every task.
    pub fn delete_batch(&mut self, name: &BatchName, change: &mut Change) -> Result<(), Error> {
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
}
