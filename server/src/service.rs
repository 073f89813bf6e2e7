//! The gRPC services, kept thin: convert the request, call the [`Queue`], convert back.
//! Queue errors become gRPC statuses in exactly one place ([`status_of`]).
//!
//! Every call of every service goes through the [`Authenticator`] first: its bearer token must
//! be one the server knows and has not revoked, and of the kind that service takes (user
//! tokens for `Queue` and `Access`, worker tokens for `Workers`); the [`Caller`] it stands for
//! rides in the request's extensions to the handler, which passes it to the queue, where
//! ownership is decided.

mod access;

pub use access::AccessService;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use herd_proto::access::TokenKind;
use herd_proto::pb;
use herd_proto::request::{BatchAction, IdempotencyKey, LogRequest, TaskFilter};
use herd_proto::session::{FromWorker, LogChunk, LogStream, MAX_SESSION_MESSAGE_BYTES};
use herd_proto::spec::MAX_TASKS_PER_SUBMIT;
use herd_proto::view::TaskView;
use herd_proto::{BatchName, TaskId, TaskSpec, WorkerId};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::queue::{Caller, Event, Queue};
use crate::{Error, chain};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The one mapping from server errors to gRPC statuses; the message carries every cause.
pub fn status_of(error: Error) -> Status {
    let message = chain(&error);
    match error {
        Error::TaskNotFound(_) | Error::BatchNotFound(_) | Error::WorkerNotFound(_) => {
            Status::not_found(message)
        }
        Error::AlreadyFinished { .. } | Error::NotFinished { .. } => {
            Status::failed_precondition(message)
        }
        Error::Invalid(_) => Status::invalid_argument(message),
        Error::Unauthenticated(_) => Status::unauthenticated(message),
        Error::Forbidden(_) => Status::permission_denied(message),
        Error::AlreadyExists(_) => Status::already_exists(message),
        Error::Store(_) | Error::ShuttingDown | Error::NotDurableYet(_) => {
            Status::unavailable(message)
        }
        Error::Refused(_)
        | Error::DataDir { .. }
        | Error::Transport(_)
        | Error::Entropy(_)
        | Error::TlsFile(_)
        | Error::KeyExposed { .. }
        | Error::TlsSetup(_) => Status::internal(message),
    }
}

fn invalid(error: herd_proto::Error) -> Status {
    status_of(Error::Invalid(error))
}

/// A task as users see it: secrets redacted (workers get the real spec in `Assign`).
fn shown(task: &TaskView) -> pb::Task {
    pb::Task::from(&task.redacted())
}

fn batch_name(text: &str) -> Result<BatchName, Status> {
    BatchName::new(text).map_err(invalid)
}

/// The services over `queue`, each behind its [`Authenticator`], ready to be served (the only
/// place the tonic servers are built).
pub fn routes(queue: Arc<Queue>) -> tonic::service::Routes {
    let users = Authenticator {
        queue: queue.clone(),
        kind: TokenKind::User,
    };
    let queue_service = pb::queue_server::QueueServer::new(QueueService::new(queue.clone()))
        .max_decoding_message_size(crate::MAX_REQUEST_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
    let access_service = pb::access_server::AccessServer::new(AccessService::new(queue.clone()))
        .max_decoding_message_size(MAX_ACCESS_MESSAGE_BYTES);
    let workers_service =
        pb::workers_server::WorkersServer::new(WorkersService::new(queue.clone()))
            .max_decoding_message_size(MAX_SESSION_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_SESSION_MESSAGE_BYTES);
    let workers = Authenticator {
        queue,
        kind: TokenKind::Worker,
    };
    tonic::service::Routes::new(InterceptedService::new(queue_service, users.clone()))
        .add_service(InterceptedService::new(access_service, users))
        .add_service(InterceptedService::new(workers_service, workers))
}

/// The largest request of the `Access` service (a user name, a label).
const MAX_ACCESS_MESSAGE_BYTES: usize = 64 * 1024;

/// Checks every call's bearer token before its handler runs (see the module's documentation).
#[derive(Clone)]
pub struct Authenticator {
    queue: Arc<Queue>,
    /// The kind of token this service takes.
    kind: TokenKind,
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer(request.metadata())?;
        let caller = self.queue.authenticate(token).map_err(status_of)?;
        if caller.kind != self.kind {
            return Err(Status::permission_denied(match caller.kind {
                TokenKind::Worker => {
                    "a worker token only opens worker sessions; use a user token (`herd login`)"
                }
                TokenKind::User => {
                    "a user token cannot open a worker session; give the worker a worker token (`herd token create --worker`, then `herd worker --token-file FILE`)"
                }
            }));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The token of `authorization: Bearer TOKEN`, if the header is there.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        Status::unauthenticated(
            "the authorization header is not printable text; send `Bearer TOKEN`",
        )
    })?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(Status::unauthenticated(
            "the authorization header is not `Bearer TOKEN`",
        )),
    }
}

/// The caller the [`Authenticator`] found for this request.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("this call was not authenticated"))
}

/// The `Queue` service: what users and tools call.
pub struct QueueService {
    queue: Arc<Queue>,
}

impl QueueService {
    /// Serves `queue`.
    pub fn new(queue: Arc<Queue>) -> Self {
        QueueService { queue }
    }
}

/// How much of a log one message carries at most.
const LOG_CHUNK: usize = 64 * 1024;

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let key = request
            .idempotency_key
            .map(IdempotencyKey::new)
            .transpose()
            .map_err(invalid)?;
        let tasks = request.tasks;
        if tasks.is_empty() {
            return Err(Status::invalid_argument("no task to queue"));
        }
        let count = tasks.len();
        if count > MAX_TASKS_PER_SUBMIT {
            return Err(Status::invalid_argument(format!(
                "{count} tasks in one submit; the limit is {MAX_TASKS_PER_SUBMIT}: split the file into parts of at most {MAX_TASKS_PER_SUBMIT} lines; nothing was queued"
            )));
        }
        let specs = tasks
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                TaskSpec::try_from(spec).map_err(|error| {
                    let position = if count > 1 {
                        format!("task {} of {count}: ", index + 1)
                    } else {
                        String::new()
                    };
                    Status::invalid_argument(format!("{position}{error}; nothing was queued"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self
            .queue
            .submit(&caller, key.as_ref(), specs)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubmitResponse {
            ids: ids.into_iter().map(|id| id.0).collect(),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = caller(&request)?;
        let filter = TaskFilter::try_from(request.into_inner()).map_err(invalid)?;
        let tasks = self.queue.tasks(
            &caller,
            filter.batch.as_ref(),
            filter.state,
            filter.limit.unwrap_or(0) as usize,
        );
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(shown).collect(),
        }))
    }

    async fn get_task(&self, request: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        let caller = caller(&request)?;
        let task = self
            .queue
            .task(&caller, TaskId(request.into_inner().id))
            .map_err(status_of)?;
        Ok(Response::new(shown(&task)))
    }

    async fn kill_task(&self, request: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        let caller = caller(&request)?;
        let task = self
            .queue
            .kill(&caller, TaskId(request.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(Response::new(shown(&task)))
    }

    async fn retry_task(
        &self,
        request: Request<pb::TaskRef>,
    ) -> Result<Response<pb::Task>, Status> {
        let caller = caller(&request)?;
        let task = self
            .queue
            .retry(&caller, TaskId(request.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(Response::new(shown(&task)))
    }

    async fn delete_task(
        &self,
        request: Request<pb::TaskRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = caller(&request)?;
        self.queue
            .delete_task(&caller, TaskId(request.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Empty {}))
    }

    type TaskLogsStream = BoxStream<pb::LogChunk>;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let caller = caller(&request)?;
        let request = LogRequest::from(request.into_inner());
        let task_id = request.task_id;
        // Subscribe before the first read, so nothing written in between is missed.
        let events = self.queue.subscribe();
        let task = self.queue.task(&caller, task_id).map_err(status_of)?;
        let attempt = match request.attempt {
            None => task
                .attempts
                .last()
                .map_or(task.attempt, |attempt| attempt.number),
            Some(wanted) if wanted <= task.attempt => wanted,
            Some(wanted) => {
                return Err(Status::not_found(format!(
                    "task {task_id} has no attempt {wanted}; its latest is {}",
                    task.attempt
                )));
            }
        };
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(follow_log(
            self.queue.clone(),
            caller,
            events,
            task_id,
            attempt,
            request.stream,
            request.follow,
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_batches(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::ListBatchesResponse {
            batches: self
                .queue
                .batches(&caller)
                .iter()
                .map(pb::BatchSummary::from)
                .collect(),
        }))
    }

    async fn control_batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchSummary>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let name = batch_name(&request.name)?;
        let action = match BatchAction::try_from(request.action) {
            Ok(action) => action,
            Err(herd_proto::Error::MissingField(_)) => {
                return Err(Status::invalid_argument("no batch action given"));
            }
            Err(error) => return Err(invalid(error)),
        };
        let summary = match action {
            BatchAction::Pause => self.queue.set_paused(&caller, &name, true).await,
            BatchAction::Resume => self.queue.set_paused(&caller, &name, false).await,
            BatchAction::Stop => self.queue.stop_batch(&caller, &name).await,
            BatchAction::Delete => {
                let before = self.queue.batch(&caller, &name).map_err(status_of)?;
                self.queue
                    .delete_batch(&caller, &name)
                    .await
                    .map(|()| before)
            }
        }
        .map_err(status_of)?;
        Ok(Response::new(pb::BatchSummary::from(&summary)))
    }

    type WatchBatchStream = BoxStream<pb::BatchSummary>;

    async fn watch_batch(
        &self,
        request: Request<pb::BatchRef>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        let caller = caller(&request)?;
        let name = batch_name(&request.into_inner().name)?;
        let mut events = self.queue.subscribe();
        let first = self.queue.batch(&caller, &name).map_err(status_of)?;
        let (sender, receiver) = mpsc::channel(4);
        let queue = self.queue.clone();
        let closing = self.queue.closing();
        tokio::spawn(async move {
            let mut last = first;
            if sender
                .send(Ok(pb::BatchSummary::from(&last)))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let event = tokio::select! {
                    _ = closing.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(Event::Batch(changed)) if changed == name => {}
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Let a burst of changes settle into one summary.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events.try_recv().is_ok() {}
                let Ok(summary) = queue.batch(&caller, &name) else {
                    let _ = sender
                        .send(Err(Status::not_found(format!(
                            "batch `{name}` was deleted"
                        ))))
                        .await;
                    return;
                };
                if summary != last {
                    last = summary;
                    if sender
                        .send(Ok(pb::BatchSummary::from(&last)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_workers(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: self
                .queue
                .workers(&caller)
                .iter()
                .map(pb::Worker::from)
                .collect(),
        }))
    }

    async fn delete_worker(
        &self,
        request: Request<pb::WorkerRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = caller(&request)?;
        self.queue
            .delete_worker(&caller, WorkerId(request.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Empty {}))
    }
}

/// Whether an attempt can print nothing more: it ended, or the task moved on or is gone.
fn attempt_finished(queue: &Queue, caller: &Caller, task_id: TaskId, attempt: u32) -> bool {
    match queue.task(caller, task_id) {
        Err(_) => true,
        Ok(task) => match task.attempts.iter().find(|known| known.number == attempt) {
            Some(known) => known.ended_at.is_some() || known.state.is_terminal(),
            None => task.state.is_terminal() || task.attempt > attempt,
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn follow_log(
    queue: Arc<Queue>,
    caller: Caller,
    mut events: broadcast::Receiver<Event>,
    task_id: TaskId,
    attempt: u32,
    stream: LogStream,
    follow: bool,
    sender: mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let mut offset = 0u64;
    loop {
        // Decide before reading: if it was finished before this read, the read sees everything.
        let finished = !follow || attempt_finished(&queue, &caller, task_id, attempt);
        loop {
            let data = match queue
                .logs()
                .read_from(task_id, attempt, stream, offset, LOG_CHUNK)
            {
                Ok(data) => data,
                Err(error) => {
                    let _ = sender
                        .send(Err(Status::internal(format!(
                            "cannot read the log: {error}"
                        ))))
                        .await;
                    return;
                }
            };
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            let chunk = LogChunk {
                task_id,
                attempt,
                stream,
                data,
            };
            if sender.send(Ok(pb::LogChunk::from(chunk))).await.is_err() {
                return;
            }
        }
        if finished || queue.closing().is_cancelled() {
            return;
        }
        loop {
            let wake = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
            match wake {
                Ok(Ok(Event::Log(id) | Event::Task(id))) if id == task_id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
            }
        }
    }
}

/// The `Workers` service: one bidirectional stream per connected worker.
pub struct WorkersService {
    queue: Arc<Queue>,
}

impl WorkersService {
    /// Serves `queue`.
    pub fn new(queue: Arc<Queue>) -> Self {
        WorkersService { queue }
    }
}

#[tonic::async_trait]
impl pb::workers_server::Workers for WorkersService {
    type SessionStream = BoxStream<pb::ServerMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = caller(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream closed before the worker said hello")
        })?;
        let hello = match FromWorker::try_from(first) {
            Ok(FromWorker::Hello(hello)) => hello,
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a worker session must be a hello",
                ));
            }
            Err(error) => return Err(invalid(error)),
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let (worker_id, serial) = self
            .queue
            .connect(&caller, hello, sender)
            .map_err(status_of)?;
        let queue = self.queue.clone();
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%worker_id, %status, "worker stream error");
                        break;
                    }
                };
                match FromWorker::try_from(message) {
                    Ok(FromWorker::Reports(reports)) => queue.report(worker_id, serial, reports),
                    Ok(FromWorker::Log(chunk)) => queue.append_log(worker_id, serial, &chunk),
                    Ok(FromWorker::Heartbeat) => {
                        if !queue.heartbeat(worker_id, serial) {
                            break;
                        }
                    }
                    // The worker is stopping: the queue closes the stream once its attempts
                    // are queued again; this loop ends when the worker's side closes.
                    Ok(FromWorker::Goodbye) => queue.goodbye(worker_id, serial),
                    Ok(FromWorker::Hello(_)) => {
                        warn!(%worker_id, "a second hello on a worker session ignored");
                    }
                    // A log chunk of an unknown stream is refused here, never read as stdout.
                    Err(error) => {
                        warn!(%worker_id, %error, "invalid message from a worker ignored")
                    }
                }
            }
            queue.disconnect(worker_id, serial);
        });
        let outbound = UnboundedReceiverStream::new(receiver)
            .map(|message| Ok(pb::ServerMessage::from(&message)));
        Ok(Response::new(Box::pin(outbound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn statuses_carry_the_cause_of_a_database_failure() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = Error::Store(StoreError::Unavailable(sqlx::Error::Io(refused)));
        let status = status_of(error);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("the database is unavailable: ")
                && status.message().contains("connection refused"),
            "{}",
            status.message()
        );
    }
}
