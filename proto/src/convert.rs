//! The one place where protobuf messages become domain types and back.
//!
//! `TryFrom<pb::X>` validates (a missing field or a bad value is an [`Error`]); `From<&Domain>`
//! cannot fail.

use std::time::Duration;

use crate::view::{AttemptView, BatchView, TaskView, Transfer, TransferredFile, WorkerView};
use crate::{
    BatchName, Error, Reason, TaskId, TaskReport, TaskSpec, TaskState, Timestamp, WorkerId, pb,
};

impl From<TaskState> for pb::TaskState {
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::Pending => pb::TaskState::Pending,
            TaskState::Assigned => pb::TaskState::Assigned,
            TaskState::Downloading => pb::TaskState::Downloading,
            TaskState::Running => pb::TaskState::Running,
            TaskState::Uploading => pb::TaskState::Uploading,
            TaskState::Succeeded => pb::TaskState::Succeeded,
            TaskState::Failed => pb::TaskState::Failed,
            TaskState::Canceled => pb::TaskState::Canceled,
        }
    }
}

impl TryFrom<pb::TaskState> for TaskState {
    type Error = Error;

    fn try_from(state: pb::TaskState) -> Result<Self, Error> {
        Ok(match state {
            pb::TaskState::Unspecified => return Err(Error::MissingField("state")),
            pb::TaskState::Pending => TaskState::Pending,
            pb::TaskState::Assigned => TaskState::Assigned,
            pb::TaskState::Downloading => TaskState::Downloading,
            pb::TaskState::Running => TaskState::Running,
            pb::TaskState::Uploading => TaskState::Uploading,
            pb::TaskState::Succeeded => TaskState::Succeeded,
            pb::TaskState::Failed => TaskState::Failed,
            pb::TaskState::Canceled => TaskState::Canceled,
        })
    }
}

/// Decodes a protobuf enum field (an `i32`) into a domain state.
pub fn state_from_i32(value: i32) -> Result<TaskState, Error> {
    let state = pb::TaskState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("unknown task state number {value}")))?;
    TaskState::try_from(state)
}

fn reason_from(text: Option<String>) -> Result<Option<Reason>, Error> {
    text.map(|text| text.parse()).transpose()
}

fn seconds(value: Option<u64>) -> Option<Duration> {
    value.map(Duration::from_secs)
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = Error;

    fn try_from(message: pb::TaskSpec) -> Result<Self, Error> {
        let batch = if message.batch.is_empty() {
            BatchName::default_batch()
        } else {
            BatchName::new(message.batch)?
        };
        let mut spec = TaskSpec::new(batch, message.command);
        spec.name = message.name;
        spec.uid = message.uid;
        spec.gid = message.gid;
        spec.inputs = message.inputs;
        spec.resources = message.resources;
        spec.output = message.output;
        spec.retry = message.retry;
        spec.run_timeout = seconds(message.run_timeout_secs);
        spec.download_timeout = seconds(message.download_timeout_secs);
        match message.docker_image {
            Some(image) => spec = spec.with_docker(image, message.docker_options)?,
            None if !message.docker_options.trim().is_empty() => {
                return Err(Error::invalid(
                    "docker options",
                    "-O/--option needs a Docker image: add -d IMAGE",
                ));
            }
            None => {}
        }
        spec.validate()?;
        Ok(spec)
    }
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(spec: &TaskSpec) -> Self {
        pb::TaskSpec {
            batch: spec.batch.to_string(),
            name: spec.name.clone(),
            command: spec.command.clone(),
            docker_image: spec.docker.as_ref().map(|docker| docker.image.clone()),
            docker_options: spec
                .docker
                .as_ref()
                .map(|docker| docker.options_text.clone())
                .unwrap_or_default(),
            uid: spec.uid,
            gid: spec.gid,
            inputs: spec.inputs.clone(),
            resources: spec.resources.clone(),
            output: spec.output.clone(),
            retry: spec.retry,
            run_timeout_secs: spec.run_timeout.map(|duration| duration.as_secs()),
            download_timeout_secs: spec.download_timeout.map(|duration| duration.as_secs()),
        }
    }
}

impl From<&Transfer> for pb::Transfer {
    fn from(transfer: &Transfer) -> Self {
        pb::Transfer {
            direction: transfer.direction.clone(),
            uri: transfer.uri.clone(),
            bytes: transfer.bytes,
            files: transfer.files,
            items: transfer
                .items
                .iter()
                .map(|item| pb::TransferredFile {
                    path: item.path.clone(),
                    size: item.size,
                    crc64nvme: item.crc64nvme.clone(),
                })
                .collect(),
        }
    }
}

impl From<pb::Transfer> for Transfer {
    fn from(transfer: pb::Transfer) -> Self {
        Transfer {
            direction: transfer.direction,
            uri: transfer.uri,
            bytes: transfer.bytes,
            files: transfer.files,
            items: transfer
                .items
                .into_iter()
                .map(|item| TransferredFile {
                    path: item.path,
                    size: item.size,
                    crc64nvme: item.crc64nvme,
                })
                .collect(),
        }
    }
}

impl From<&AttemptView> for pb::Attempt {
    fn from(attempt: &AttemptView) -> Self {
        pb::Attempt {
            number: attempt.number,
            worker_id: attempt.worker.0,
            worker_name: attempt.worker_name.clone(),
            state: pb::TaskState::from(attempt.state).into(),
            exit_code: attempt.exit_code,
            reason: attempt.reason.map(|reason| reason.to_string()),
            message: attempt.message.clone(),
            assigned_at_ms: attempt.started_at.0,
            download_started_at_ms: attempt.download_started_at.map(Timestamp::millis),
            run_started_at_ms: attempt.run_started_at.map(Timestamp::millis),
            upload_started_at_ms: attempt.upload_started_at.map(Timestamp::millis),
            ended_at_ms: attempt.ended_at.map(Timestamp::millis),
            transfers: attempt.transfers.iter().map(pb::Transfer::from).collect(),
        }
    }
}

impl TryFrom<pb::Attempt> for AttemptView {
    type Error = Error;

    fn try_from(attempt: pb::Attempt) -> Result<Self, Error> {
        Ok(AttemptView {
            number: attempt.number,
            worker: WorkerId(attempt.worker_id),
            worker_name: attempt.worker_name,
            state: state_from_i32(attempt.state)?,
            exit_code: attempt.exit_code,
            reason: reason_from(attempt.reason)?,
            message: attempt.message,
            started_at: Timestamp(attempt.assigned_at_ms),
            download_started_at: attempt.download_started_at_ms.map(Timestamp),
            run_started_at: attempt.run_started_at_ms.map(Timestamp),
            upload_started_at: attempt.upload_started_at_ms.map(Timestamp),
            ended_at: attempt.ended_at_ms.map(Timestamp),
            transfers: attempt.transfers.into_iter().map(Transfer::from).collect(),
        })
    }
}

impl From<&TaskView> for pb::Task {
    fn from(task: &TaskView) -> Self {
        pb::Task {
            id: task.id.0,
            spec: Some(pb::TaskSpec::from(&task.spec)),
            state: pb::TaskState::from(task.state).into(),
            attempt: task.attempt,
            exit_code: task.exit_code,
            reason: task.reason.map(|reason| reason.to_string()),
            message: task.message.clone(),
            created_at_ms: task.created_at.0,
            updated_at_ms: task.updated_at.0,
            attempts: task.attempts.iter().map(pb::Attempt::from).collect(),
        }
    }
}

impl TryFrom<pb::Task> for TaskView {
    type Error = Error;

    fn try_from(task: pb::Task) -> Result<Self, Error> {
        let spec = TaskSpec::try_from(task.spec.ok_or(Error::MissingField("spec"))?)?;
        Ok(TaskView {
            id: TaskId(task.id),
            name: spec.name.clone(),
            batch: spec.batch.clone(),
            command: spec.command.clone(),
            state: state_from_i32(task.state)?,
            attempt: task.attempt,
            exit_code: task.exit_code,
            reason: reason_from(task.reason)?,
            message: task.message,
            created_at: Timestamp(task.created_at_ms),
            updated_at: Timestamp(task.updated_at_ms),
            attempts: task
                .attempts
                .into_iter()
                .map(AttemptView::try_from)
                .collect::<Result<_, _>>()?,
            spec,
        })
    }
}

impl From<&BatchView> for pb::BatchSummary {
    fn from(batch: &BatchView) -> Self {
        pb::BatchSummary {
            name: batch.name.clone(),
            paused: batch.paused,
            pending: batch.pending,
            active: batch.active,
            succeeded: batch.succeeded,
            failed: batch.failed,
            canceled: batch.canceled,
        }
    }
}

impl From<pb::BatchSummary> for BatchView {
    fn from(batch: pb::BatchSummary) -> Self {
        BatchView {
            name: batch.name,
            paused: batch.paused,
            pending: batch.pending,
            active: batch.active,
            succeeded: batch.succeeded,
            failed: batch.failed,
            canceled: batch.canceled,
        }
    }
}

impl From<&WorkerView> for pb::Worker {
    fn from(worker: &WorkerView) -> Self {
        pb::Worker {
            id: worker.id.0,
            name: worker.name.clone(),
            batch: worker.batch.clone(),
            concurrency: worker.concurrency,
            prefetch: worker.prefetch,
            status: worker.status.clone(),
            docker: worker.docker,
            cores: worker.cores,
            memory_bytes: worker.memory_bytes,
            tasks: worker.tasks.iter().map(|id| id.0).collect(),
            registered_at_ms: worker.registered_at.0,
            last_seen_ms: worker.last_seen.0,
            version: worker.version.clone(),
        }
    }
}

impl From<pb::Worker> for WorkerView {
    fn from(worker: pb::Worker) -> Self {
        WorkerView {
            id: WorkerId(worker.id),
            name: worker.name,
            batch: worker.batch,
            concurrency: worker.concurrency,
            prefetch: worker.prefetch,
            status: worker.status,
            docker: worker.docker,
            cores: worker.cores,
            memory_bytes: worker.memory_bytes,
            tasks: worker.tasks.into_iter().map(TaskId).collect(),
            registered_at: Timestamp(worker.registered_at_ms),
            last_seen: Timestamp(worker.last_seen_ms),
            version: worker.version,
        }
    }
}

impl From<&TaskReport> for pb::TaskUpdate {
    fn from(report: &TaskReport) -> Self {
        pb::TaskUpdate {
            task_id: report.task_id.0,
            attempt: report.attempt,
            state: pb::TaskState::from(report.state).into(),
            at_ms: report.at.0,
            exit_code: report.exit_code,
            reason: report.reason.map(|reason| reason.to_string()),
            message: report.message.clone(),
            transfers: report.transfers.iter().map(pb::Transfer::from).collect(),
        }
    }
}

impl TryFrom<pb::TaskUpdate> for TaskReport {
    type Error = Error;

    fn try_from(update: pb::TaskUpdate) -> Result<Self, Error> {
        Ok(TaskReport {
            task_id: TaskId(update.task_id),
            attempt: update.attempt,
            state: state_from_i32(update.state)?,
            at: Timestamp(update.at_ms),
            exit_code: update.exit_code,
            reason: reason_from(update.reason)?,
            message: update.message,
            transfers: update.transfers.into_iter().map(Transfer::from).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_round_trip() {
        let mut spec = TaskSpec::new(
            BatchName::new("b1").unwrap(),
            vec!["echo".into(), "hi there".into()],
        )
        .with_docker("busybox:latest", "--shm-size 1g")
        .unwrap();
        spec.inputs = vec!["/data/in.txt".into()];
        spec.run_timeout = Some(Duration::from_secs(30));
        spec.retry = 2;
        let back = TaskSpec::try_from(pb::TaskSpec::from(&spec)).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn docker_options_without_an_image_are_refused() {
        let message = pb::TaskSpec {
            command: vec!["true".into()],
            docker_options: "--gpus all".into(),
            ..Default::default()
        };
        let error = TaskSpec::try_from(message).unwrap_err().to_string();
        assert!(error.contains("needs a Docker image"), "{error}");
    }

    #[test]
    fn a_task_without_spec_is_a_missing_field() {
        let error = TaskView::try_from(pb::Task::default()).unwrap_err();
        assert_eq!(error, Error::MissingField("spec"));
    }
}
