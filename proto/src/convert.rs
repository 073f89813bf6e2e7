//! The one place where protobuf messages become domain types and back.
//!
//! `TryFrom<pb::X>` validates (a missing field or a bad value is an [`Error`], never a panic
//! and never a silent default); `From<&Domain>` cannot fail. Edge modules (the server's gRPC
//! service, the worker's session, the CLI's client) call these and nothing else of `pb`
//! beyond the generated clients and servers.

mod access;

use std::sync::Arc;
use std::time::Duration;

use crate::request::{BatchAction, LogRequest, TaskFilter};
use crate::session::{
    FromWorker, Hello, LogChunk, LogStream, ToWorker, bound_message, check_report,
};
use crate::spec::TaskRequest;
use crate::view::{AttemptView, BatchView, TaskView, Transfer, TransferredFile, WorkerView};
use crate::{
    BatchName, Error, Reason, TaskId, TaskReport, TaskSpec, TaskState, Timestamp, WorkerId, pb,
};

// ---- task states ----

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
fn state_from_i32(value: i32) -> Result<TaskState, Error> {
    let state = pb::TaskState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("unknown task state number {value}")))?;
    TaskState::try_from(state)
}

fn state_to_i32(state: TaskState) -> i32 {
    pb::TaskState::from(state).into()
}

fn reason_from(text: Option<String>) -> Result<Option<Reason>, Error> {
    text.map(|text| text.parse()).transpose()
}

// ---- specs ----

impl From<pb::TaskSpec> for TaskRequest {
    fn from(message: pb::TaskSpec) -> Self {
        TaskRequest {
            batch: message.batch,
            name: message.name,
            command: message.command,
            docker_image: message.docker_image,
            docker_options: message.docker_options,
            uid: message.uid,
            gid: message.gid,
            inputs: message.inputs,
            resources: message.resources,
            output: message.output,
            retry: message.retry,
            crash_limit: message.crash_limit,
            run_timeout_secs: message.run_timeout_secs,
            download_timeout_secs: message.download_timeout_secs,
        }
    }
}

impl From<TaskRequest> for pb::TaskSpec {
    fn from(request: TaskRequest) -> Self {
        pb::TaskSpec {
            batch: request.batch,
            name: request.name,
            command: request.command,
            docker_image: request.docker_image,
            docker_options: request.docker_options,
            uid: request.uid,
            gid: request.gid,
            inputs: request.inputs,
            resources: request.resources,
            output: request.output,
            retry: request.retry,
            crash_limit: request.crash_limit,
            run_timeout_secs: request.run_timeout_secs,
            download_timeout_secs: request.download_timeout_secs,
        }
    }
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = Error;

    fn try_from(message: pb::TaskSpec) -> Result<Self, Error> {
        TaskSpec::new(TaskRequest::from(message))
    }
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(spec: &TaskSpec) -> Self {
        pb::TaskSpec::from(spec.to_request())
    }
}

// ---- views ----

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
            state: state_to_i32(attempt.state),
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
            state: state_to_i32(task.state),
            attempt: task.attempt,
            exit_code: task.exit_code,
            reason: task.reason.map(|reason| reason.to_string()),
            message: task.message.clone(),
            created_at_ms: task.created_at.0,
            updated_at_ms: task.updated_at.0,
            attempts: task.attempts.iter().map(pb::Attempt::from).collect(),
            owner: task.owner.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Task> for TaskView {
    type Error = Error;

    fn try_from(task: pb::Task) -> Result<Self, Error> {
        let spec = TaskSpec::try_from(task.spec.ok_or(Error::MissingField("spec"))?)?;
        Ok(TaskView {
            id: TaskId(task.id),
            name: spec.name().map(str::to_owned),
            batch: spec.batch().clone(),
            command: spec.command().to_vec(),
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
            owner: Some(task.owner).filter(|owner| !owner.is_empty()),
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
            owner: batch.owner.clone().unwrap_or_default(),
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
            owner: Some(batch.owner).filter(|owner| !owner.is_empty()),
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
            quarantine_reason: worker.quarantine_reason.clone(),
            quarantined_until_ms: worker.quarantined_until.map(|until| until.0),
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
            quarantine_reason: worker.quarantine_reason,
            quarantined_until: worker.quarantined_until_ms.map(Timestamp),
        }
    }
}

// ---- requests of the Queue service ----

impl From<&TaskFilter> for pb::ListTasksRequest {
    fn from(filter: &TaskFilter) -> Self {
        pb::ListTasksRequest {
            batch: filter.batch.as_ref().map(BatchName::to_string),
            state: filter.state.map(state_to_i32),
            limit: filter.limit.unwrap_or(0),
        }
    }
}

impl TryFrom<pb::ListTasksRequest> for TaskFilter {
    type Error = Error;

    fn try_from(request: pb::ListTasksRequest) -> Result<Self, Error> {
        Ok(TaskFilter {
            batch: request.batch.map(BatchName::new).transpose()?,
            state: request.state.map(state_from_i32).transpose()?,
            limit: Some(request.limit).filter(|limit| *limit > 0),
        })
    }
}

impl From<&LogRequest> for pb::TaskLogsRequest {
    fn from(request: &LogRequest) -> Self {
        pb::TaskLogsRequest {
            id: request.task_id.0,
            attempt: request.attempt.unwrap_or(0),
            follow: request.follow,
            stderr: request.stream == LogStream::Stderr,
        }
    }
}

impl From<pb::TaskLogsRequest> for LogRequest {
    fn from(request: pb::TaskLogsRequest) -> Self {
        LogRequest {
            task_id: TaskId(request.id),
            attempt: Some(request.attempt).filter(|attempt| *attempt > 0),
            stream: if request.stderr {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            follow: request.follow,
        }
    }
}

impl From<BatchAction> for pb::BatchAction {
    fn from(action: BatchAction) -> Self {
        match action {
            BatchAction::Pause => pb::BatchAction::Pause,
            BatchAction::Resume => pb::BatchAction::Resume,
            BatchAction::Stop => pb::BatchAction::Stop,
            BatchAction::Delete => pb::BatchAction::Delete,
        }
    }
}

/// Decodes a protobuf `BatchAction` field (an `i32`).
impl TryFrom<i32> for BatchAction {
    type Error = Error;

    fn try_from(value: i32) -> Result<Self, Error> {
        match pb::BatchAction::try_from(value) {
            Ok(pb::BatchAction::Pause) => Ok(BatchAction::Pause),
            Ok(pb::BatchAction::Resume) => Ok(BatchAction::Resume),
            Ok(pb::BatchAction::Stop) => Ok(BatchAction::Stop),
            Ok(pb::BatchAction::Delete) => Ok(BatchAction::Delete),
            Ok(pb::BatchAction::Unspecified) => Err(Error::MissingField("action")),
            Err(_) => Err(Error::invalid(
                "action",
                format!(
                    "unknown batch action number {value}; is the client newer than the server?"
                ),
            )),
        }
    }
}

// ---- logs ----

impl From<LogStream> for pb::LogStream {
    fn from(stream: LogStream) -> Self {
        match stream {
            LogStream::Stdout => pb::LogStream::Stdout,
            LogStream::Stderr => pb::LogStream::Stderr,
        }
    }
}

/// Decodes a protobuf `LogStream` field (an `i32`): an unknown or absent stream is an error,
/// never read as stdout.
fn stream_from_i32(value: i32) -> Result<LogStream, Error> {
    match pb::LogStream::try_from(value) {
        Ok(pb::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(pb::LogStream::Stderr) => Ok(LogStream::Stderr),
        Ok(pb::LogStream::Unspecified) => Err(Error::MissingField("stream")),
        Err(_) => Err(Error::invalid(
            "stream",
            format!("unknown log stream number {value}"),
        )),
    }
}

impl From<&LogChunk> for pb::LogChunk {
    fn from(chunk: &LogChunk) -> Self {
        pb::LogChunk::from(chunk.clone())
    }
}

impl From<LogChunk> for pb::LogChunk {
    fn from(chunk: LogChunk) -> Self {
        pb::LogChunk {
            task_id: chunk.task_id.0,
            attempt: chunk.attempt,
            stream: pb::LogStream::from(chunk.stream).into(),
            data: chunk.data,
        }
    }
}

impl TryFrom<pb::LogChunk> for LogChunk {
    type Error = Error;

    fn try_from(chunk: pb::LogChunk) -> Result<Self, Error> {
        let chunk = LogChunk {
            task_id: TaskId(chunk.task_id),
            attempt: chunk.attempt,
            stream: stream_from_i32(chunk.stream)?,
            data: chunk.data,
        };
        chunk.check()?;
        Ok(chunk)
    }
}

// ---- the worker session ----

impl From<&TaskReport> for pb::TaskUpdate {
    fn from(report: &TaskReport) -> Self {
        pb::TaskUpdate {
            task_id: report.task_id.0,
            attempt: report.attempt,
            state: state_to_i32(report.state),
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
        let report = TaskReport {
            task_id: TaskId(update.task_id),
            attempt: update.attempt,
            state: state_from_i32(update.state)?,
            at: Timestamp(update.at_ms),
            exit_code: update.exit_code,
            reason: reason_from(update.reason)?,
            message: update.message.map(bound_message),
            transfers: update.transfers.into_iter().map(Transfer::from).collect(),
        };
        check_report(&report)?;
        Ok(report)
    }
}

fn reports_from(updates: Vec<pb::TaskUpdate>) -> Result<Vec<TaskReport>, Error> {
    updates.into_iter().map(TaskReport::try_from).collect()
}

impl From<&Hello> for pb::Hello {
    fn from(hello: &Hello) -> Self {
        pb::Hello {
            worker_id: hello.worker_id.map(|id| id.0),
            resume_key: hello.resume_key.clone(),
            name: hello.name.clone(),
            batch: hello.batch.to_string(),
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            docker: hello.docker,
            docker_only: !hello.bare,
            allow_privileged: hello.allow_privileged,
            cores: hello.cores,
            memory_bytes: hello.memory_bytes,
            version: hello.version.clone(),
            tasks: hello.tasks.iter().map(pb::TaskUpdate::from).collect(),
        }
    }
}

impl TryFrom<pb::Hello> for Hello {
    type Error = Error;

    fn try_from(hello: pb::Hello) -> Result<Self, Error> {
        let batch = if hello.batch.is_empty() {
            BatchName::default_batch()
        } else {
            BatchName::new(hello.batch)?
        };
        let hello = Hello {
            worker_id: hello.worker_id.map(WorkerId),
            resume_key: hello.resume_key,
            name: hello.name,
            batch,
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            docker: hello.docker,
            bare: !hello.docker_only,
            allow_privileged: hello.allow_privileged,
            cores: hello.cores,
            memory_bytes: hello.memory_bytes,
            version: hello.version,
            tasks: reports_from(hello.tasks)?,
        };
        hello.check()?;
        Ok(hello)
    }
}

impl From<&FromWorker> for pb::WorkerMessage {
    fn from(message: &FromWorker) -> Self {
        use pb::worker_message::Kind;
        let kind = match message {
            FromWorker::Hello(hello) => Kind::Hello(pb::Hello::from(hello)),
            FromWorker::Reports(reports) => Kind::Updates(pb::TaskUpdates {
                updates: reports.iter().map(pb::TaskUpdate::from).collect(),
            }),
            FromWorker::Log(chunk) => Kind::Log(pb::LogChunk::from(chunk)),
            FromWorker::Heartbeat => Kind::Heartbeat(pb::Heartbeat {}),
            FromWorker::Goodbye => Kind::Goodbye(pb::Goodbye {}),
        };
        pb::WorkerMessage { kind: Some(kind) }
    }
}

impl From<FromWorker> for pb::WorkerMessage {
    fn from(message: FromWorker) -> Self {
        use pb::worker_message::Kind;
        match message {
            // Log chunks are the bulk of a session: moved, not copied.
            FromWorker::Log(chunk) => pb::WorkerMessage {
                kind: Some(Kind::Log(pb::LogChunk::from(chunk))),
            },
            other => pb::WorkerMessage::from(&other),
        }
    }
}

impl TryFrom<pb::WorkerMessage> for FromWorker {
    type Error = Error;

    fn try_from(message: pb::WorkerMessage) -> Result<Self, Error> {
        use pb::worker_message::Kind;
        Ok(match message.kind.ok_or(Error::MissingField("kind"))? {
            Kind::Hello(hello) => FromWorker::Hello(Hello::try_from(hello)?),
            Kind::Update(update) => FromWorker::Reports(vec![TaskReport::try_from(update)?]),
            Kind::Updates(updates) => FromWorker::Reports(reports_from(updates.updates)?),
            Kind::Log(chunk) => FromWorker::Log(LogChunk::try_from(chunk)?),
            Kind::Heartbeat(_) => FromWorker::Heartbeat,
            Kind::Goodbye(_) => FromWorker::Goodbye,
        })
    }
}

impl From<&ToWorker> for pb::ServerMessage {
    fn from(message: &ToWorker) -> Self {
        use pb::server_message::Kind;
        let kind = match message {
            ToWorker::Welcome {
                worker_id,
                heartbeat_interval,
                resume_key,
                worker_timeout,
                instance_id,
            } => Kind::Welcome(pb::Welcome {
                worker_id: worker_id.0,
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
                resume_key: resume_key.clone(),
                worker_timeout_ms: worker_timeout.map_or(0, |timeout| timeout.as_millis() as u64),
                instance_id: *instance_id,
            }),
            ToWorker::Assign {
                task_id,
                attempt,
                spec,
            } => Kind::Assign(pb::Assign {
                task_id: task_id.0,
                attempt: *attempt,
                spec: Some(pb::TaskSpec::from(spec.as_ref())),
            }),
            ToWorker::Cancel {
                task_id,
                attempt,
                reason,
            } => Kind::Cancel(pb::Cancel {
                task_id: task_id.0,
                attempt: *attempt,
                reason: reason.clone(),
            }),
            ToWorker::Ack { task_id, attempt } => Kind::Ack(pb::Ack {
                task_id: task_id.0,
                attempt: *attempt,
            }),
            ToWorker::Shutdown { reason } => Kind::Shutdown(pb::Shutdown {
                reason: reason.clone(),
            }),
        };
        pb::ServerMessage { kind: Some(kind) }
    }
}

/// A server message the worker could not decode. When it is an assignment, the task and
/// attempt are known, so the worker can fail that attempt with the reason instead of
/// dropping it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{error}")]
pub struct UndecodableMessage {
    /// The assignment's task and attempt, when the message was one.
    pub assignment: Option<(TaskId, u32)>,
    /// What was wrong.
    #[source]
    pub error: Error,
}

impl TryFrom<pb::ServerMessage> for ToWorker {
    type Error = UndecodableMessage;

    fn try_from(message: pb::ServerMessage) -> Result<Self, UndecodableMessage> {
        use pb::server_message::Kind;
        let plain = |error| UndecodableMessage {
            assignment: None,
            error,
        };
        Ok(
            match message
                .kind
                .ok_or_else(|| plain(Error::MissingField("kind")))?
            {
                Kind::Welcome(welcome) => ToWorker::Welcome {
                    worker_id: WorkerId(welcome.worker_id),
                    heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms),
                    resume_key: welcome.resume_key,
                    worker_timeout: (welcome.worker_timeout_ms > 0)
                        .then(|| Duration::from_millis(welcome.worker_timeout_ms)),
                    instance_id: welcome.instance_id,
                },
                Kind::Assign(assign) => {
                    let task_id = TaskId(assign.task_id);
                    let spec = assign
                        .spec
                        .ok_or(Error::MissingField("spec"))
                        .and_then(TaskSpec::try_from)
                        .map_err(|error| UndecodableMessage {
                            assignment: Some((task_id, assign.attempt)),
                            error,
                        })?;
                    ToWorker::Assign {
                        task_id,
                        attempt: assign.attempt,
                        spec: Arc::new(spec),
                    }
                }
                Kind::Cancel(cancel) => ToWorker::Cancel {
                    task_id: TaskId(cancel.task_id),
                    attempt: cancel.attempt,
                    reason: cancel.reason,
                },
                Kind::Ack(ack) => ToWorker::Ack {
                    task_id: TaskId(ack.task_id),
                    attempt: ack.attempt,
                },
                Kind::Shutdown(shutdown) => ToWorker::Shutdown {
                    reason: shutdown.reason,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::new(TaskRequest {
            batch: "b1".into(),
            command: vec!["echo".into(), "hi there".into()],
            docker_image: Some("busybox:latest".into()),
            docker_options: "--shm-size 1g".into(),
            inputs: vec!["/data/in.txt".into()],
            run_timeout_secs: Some(30),
            retry: 2,
            ..TaskRequest::default()
        })
        .unwrap()
    }

    fn report() -> TaskReport {
        let mut report = TaskReport::new(TaskId(7), 2, TaskState::Failed);
        report.at = Timestamp(1_700_000_000_000);
        report.exit_code = Some(3);
        report.reason = Some(Reason::ExitCode);
        report.message = Some("exit code 3".into());
        report.transfers = vec![Transfer {
            direction: "output".into(),
            uri: "s3://b/out/".into(),
            bytes: 10,
            files: 1,
            items: vec![TransferredFile {
                path: "x".into(),
                size: 10,
                crc64nvme: "AAAAAAAAAAA=".into(),
            }],
        }];
        report
    }

    #[test]
    fn a_spec_survives_the_round_trip() {
        let spec = spec();
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

    #[test]
    fn a_worker_older_than_docker_only_runs_bare_tasks() {
        // A hello as an older worker sends it: no `docker_only` field.
        let old = pb::Hello {
            name: "w".into(),
            concurrency: 1,
            ..pb::Hello::default()
        };
        assert!(Hello::try_from(old).unwrap().bare);
    }

    #[test]
    fn every_worker_message_survives_the_round_trip() {
        let messages = [
            FromWorker::Hello(Hello {
                worker_id: Some(WorkerId(4)),
                resume_key: Some("herd_key".into()),
                name: "w".into(),
                batch: BatchName::new("b").unwrap(),
                concurrency: 2,
                prefetch: 1,
                docker: true,
                bare: false,
                allow_privileged: false,
                cores: 8,
                memory_bytes: 1 << 30,
                version: "0.1.0".into(),
                tasks: vec![report()],
            }),
            FromWorker::Reports(vec![
                report(),
                TaskReport::new(TaskId(1), 1, TaskState::Running),
            ]),
            FromWorker::Log(LogChunk {
                task_id: TaskId(7),
                attempt: 2,
                stream: LogStream::Stderr,
                data: b"oops\n".to_vec(),
            }),
            FromWorker::Heartbeat,
        ];
        for message in messages {
            let back = FromWorker::try_from(pb::WorkerMessage::from(&message)).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn every_server_message_survives_the_round_trip() {
        let messages = [
            ToWorker::Welcome {
                worker_id: WorkerId(3),
                heartbeat_interval: Duration::from_millis(1500),
                resume_key: "herd_key".into(),
                worker_timeout: Some(Duration::from_secs(20)),
                instance_id: 0x1234_5678_9abc_def0,
            },
            ToWorker::Assign {
                task_id: TaskId(9),
                attempt: 1,
                spec: Arc::new(spec()),
            },
            ToWorker::Cancel {
                task_id: TaskId(9),
                attempt: 1,
                reason: "killed".into(),
            },
            ToWorker::Ack {
                task_id: TaskId(9),
                attempt: 1,
            },
            ToWorker::Shutdown {
                reason: "deleted".into(),
            },
        ];
        for message in messages {
            let back = ToWorker::try_from(pb::ServerMessage::from(&message)).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn an_undecodable_assignment_names_its_task_and_attempt() {
        let message = pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Assign(pb::Assign {
                task_id: 5,
                attempt: 2,
                spec: Some(pb::TaskSpec::default()),
            })),
        };
        let error = ToWorker::try_from(message).unwrap_err();
        assert_eq!(error.assignment, Some((TaskId(5), 2)));
        assert!(error.to_string().contains("no command given"), "{error}");
    }

    #[test]
    fn an_unknown_log_stream_is_an_error_not_stdout() {
        for stream in [0, 3, -1] {
            let chunk = pb::LogChunk {
                task_id: 1,
                attempt: 1,
                stream,
                data: Vec::new(),
            };
            assert!(LogChunk::try_from(chunk).is_err(), "stream {stream}");
        }
    }

    #[test]
    fn a_single_update_is_a_list_of_one_report() {
        let message = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Update(pb::TaskUpdate::from(
                &report(),
            ))),
        };
        assert_eq!(
            FromWorker::try_from(message).unwrap(),
            FromWorker::Reports(vec![report()])
        );
    }

    #[test]
    fn requests_survive_the_round_trip() {
        let filter = TaskFilter {
            batch: Some(BatchName::new("b").unwrap()),
            state: Some(TaskState::Running),
            limit: Some(10),
        };
        assert_eq!(
            TaskFilter::try_from(pb::ListTasksRequest::from(&filter)).unwrap(),
            filter
        );
        assert_eq!(
            TaskFilter::try_from(pb::ListTasksRequest::from(&TaskFilter::default())).unwrap(),
            TaskFilter::default()
        );
        let logs = LogRequest {
            task_id: TaskId(3),
            attempt: Some(2),
            stream: LogStream::Stderr,
            follow: true,
        };
        assert_eq!(LogRequest::from(pb::TaskLogsRequest::from(&logs)), logs);
        for action in [
            BatchAction::Pause,
            BatchAction::Resume,
            BatchAction::Stop,
            BatchAction::Delete,
        ] {
            let number: i32 = pb::BatchAction::from(action).into();
            assert_eq!(BatchAction::try_from(number).unwrap(), action);
        }
        assert!(BatchAction::try_from(0).is_err());
        assert!(BatchAction::try_from(99).is_err());
    }
}
