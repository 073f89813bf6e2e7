//! The worker's one stream to the server, kept open across server restarts.
//!
//! Each connection starts with a hello that lists every attempt the worker holds and its
//! latest report, so a restarted server learns what is still running (and nothing is killed
//! because the server went away). Reports are kept in an outbox: running attempts until they
//! end, terminal reports until the server acknowledges them (it does so once they are durable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_proto::pb::{self, server_message, worker_message};
use herd_proto::{TaskId, TaskReport, TaskSpec, WorkerId};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::executor::Stream;
use crate::{Config, Executors, runner};

/// One attempt the worker holds.
struct Held {
    latest: TaskReport,
    cancel: CancellationToken,
    /// The server told us to drop it: send nothing more about it.
    forgotten: bool,
}

/// State shared by the session loop and the runners.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub executors: Executors,
    /// Attempts under way (folders, staging, running): `concurrency + prefetch`. Beyond them,
    /// the server's pipeline: assigned attempts wait here, untouched, until one ends.
    pub started: Semaphore,
    /// Run slots: `concurrency` attempts run at once; prefetched ones wait here, staged.
    pub slots: Semaphore,
    /// Moves inputs and outputs.
    pub resolver: Arc<herd_fetch::Resolver>,
    /// Resources fetched once per worker.
    pub resources: crate::staging::ResourceCache,
    /// The attempts' folders, reused.
    pub folders: Arc<crate::folders::Folders>,
    /// Empties the folders of ended attempts for reuse.
    pub janitor: crate::folders::Janitor,
    held: Mutex<HashMap<(TaskId, u32), Held>>,
    /// Updates not yet sent on the current connection, in order (see [`flush_updates`]).
    unsent: Mutex<Vec<pb::TaskUpdate>>,
    /// Rung when `unsent` gains an update.
    unsent_added: Notify,
    /// The current connection's sender, `None` while disconnected.
    link: Mutex<Option<mpsc::Sender<pb::WorkerMessage>>>,
    worker_id: Mutex<Option<WorkerId>>,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, HashMap<(TaskId, u32), Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn link(&self) -> Option<mpsc::Sender<pb::WorkerMessage>> {
        self.link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_link(&self, link: Option<mpsc::Sender<pb::WorkerMessage>>) {
        *self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = link;
    }

    /// The worker's id, once the server has welcomed it.
    pub fn worker_id(&self) -> Option<WorkerId> {
        *self
            .worker_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsent(&self) -> MutexGuard<'_, Vec<pb::TaskUpdate>> {
        self.unsent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a report in the outbox and queues it for sending (see [`flush_updates`]).
    pub async fn report(&self, report: TaskReport) {
        {
            let mut held = self.held();
            match held.get_mut(&(report.task_id, report.attempt)) {
                Some(entry) if !entry.forgotten => entry.latest = report.clone(),
                _ => {
                    // Forgotten by order of the server.
                    held.remove(&(report.task_id, report.attempt));
                    return;
                }
            }
        }
        // Queued even while disconnected: the next hello, which carries the latest report of
        // every attempt, clears what it covers; what comes after it is sent once connected.
        self.unsent().push(pb::TaskUpdate::from(&report));
        self.unsent_added.notify_one();
    }

    /// Whether attempts wait to start: the server pipelined work to this worker, so its next
    /// assignment is not urgent.
    fn has_queued_work(&self) -> bool {
        let config = &self.config;
        self.held().len() > (config.concurrency + config.prefetch) as usize
    }

    /// Sends what an attempt printed; dropped while disconnected.
    pub async fn log(&self, task_id: TaskId, attempt: u32, stream: Stream, data: Vec<u8>) {
        let stream = match stream {
            Stream::Stdout => pb::LogStream::Stdout,
            Stream::Stderr => pb::LogStream::Stderr,
        };
        let chunk = pb::LogChunk {
            task_id: task_id.0,
            attempt,
            stream: stream.into(),
            data,
        };
        self.send(worker_message::Kind::Log(chunk)).await;
    }

    async fn send(&self, kind: worker_message::Kind) {
        if let Some(link) = self.link() {
            // A closed link means a reconnection is under way: the outbox covers reports.
            let _ = link.send(pb::WorkerMessage { kind: Some(kind) }).await;
        }
    }

    /// Forgets a finished attempt after its final report (unless an ack is still awaited).
    pub fn finished(&self, task_id: TaskId, attempt: u32) {
        let mut held = self.held();
        if held
            .get(&(task_id, attempt))
            .is_some_and(|entry| entry.forgotten)
        {
            held.remove(&(task_id, attempt));
        }
    }

    /// Whether the server dropped this attempt.
    pub fn is_forgotten(&self, task_id: TaskId, attempt: u32) -> bool {
        self.held()
            .get(&(task_id, attempt))
            .is_none_or(|entry| entry.forgotten)
    }
}

/// How long a worker with queued work gathers its updates before sending them in one message.
const GATHER_UPDATES: Duration = Duration::from_millis(5);

/// Sends the updates of `unsent` down `sender`, several at once: as soon as they come when the
/// worker has nothing queued (the server waits for them to give it work), after gathering
/// them for [`GATHER_UPDATES`] when it has (its slots are fed from its own queue; one message
/// and one commit then carry the updates of many tasks). Ends when the stream closes.
async fn flush_updates(shared: &Shared, sender: &mpsc::Sender<pb::WorkerMessage>) {
    loop {
        shared.unsent_added.notified().await;
        if shared.has_queued_work() {
            tokio::time::sleep(GATHER_UPDATES).await;
        }
        let updates = std::mem::take(&mut *shared.unsent());
        if updates.is_empty() {
            continue;
        }
        let message = pb::WorkerMessage {
            kind: Some(worker_message::Kind::Updates(pb::TaskUpdates { updates })),
        };
        if sender.send(message).await.is_err() {
            return;
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Connects, serves, and reconnects until `shutdown` or a deletion by the server.
pub(crate) async fn run(config: Arc<Config>, executors: Executors, shutdown: CancellationToken) {
    let resolver = Arc::new(herd_fetch::Resolver::new());
    // An attempt's folder is released (by the janitor's thread) after the next attempt took
    // its place, and with short tasks many wait for it at once: enough spares that a start
    // finds one ready, though the janitor lags a burst (a spare costs five inodes).
    let folders = Arc::new(crate::folders::Folders::new(
        &config.work_dir,
        8 * (config.concurrency + config.prefetch) as usize + 32,
    ));
    let shared = Arc::new(Shared {
        started: Semaphore::new((config.concurrency + config.prefetch) as usize),
        slots: Semaphore::new(config.concurrency as usize),
        resources: crate::staging::ResourceCache::new(&config.work_dir, resolver.clone()),
        janitor: crate::folders::Janitor::start(folders.clone()),
        folders,
        resolver,
        config,
        executors,
        held: Mutex::new(HashMap::new()),
        unsent: Mutex::new(Vec::new()),
        unsent_added: Notify::new(),
        link: Mutex::new(None),
        worker_id: Mutex::new(None),
    });
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = connect_and_serve(&shared, &shutdown) => outcome,
        };
        shared.set_link(None);
        match outcome {
            Outcome::Shutdown(reason) => {
                warn!(%reason, "the server asked this worker to stop");
                break;
            }
            Outcome::Stopped => break,
            Outcome::Broken {
                error,
                was_connected,
            } => {
                if was_connected {
                    backoff = MIN_BACKOFF;
                    warned = false;
                    warn!(%error, "lost the server; reconnecting");
                } else if !warned {
                    warn!(server = %shared.config.server, %error, "cannot reach the herd server; retrying");
                    warned = true;
                } else {
                    debug!(%error, "still cannot reach the server");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    // Stop every attempt still running.
    for entry in shared.held().values() {
        entry.cancel.cancel();
    }
}

enum Outcome {
    Shutdown(String),
    Stopped,
    Broken { error: String, was_connected: bool },
}

async fn connect_and_serve(shared: &Arc<Shared>, shutdown: &CancellationToken) -> Outcome {
    let broken = |error: String, was_connected: bool| Outcome::Broken {
        error,
        was_connected,
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(shared.config.server.clone()) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20)),
        Err(error) => return broken(format!("invalid server URL: {error}"), false),
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return broken(error_chain(&error), false),
    };
    let mut client =
        pb::workers_client::WorkersClient::new(channel).max_decoding_message_size(usize::MAX);
    let (sender, receiver) = mpsc::channel::<pb::WorkerMessage>(1024);
    let hello = hello(shared);
    if sender.send(hello).await.is_err() {
        return broken("the stream closed at once".to_owned(), false);
    }
    let mut inbound = match client.session(ReceiverStream::new(receiver)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return broken(status.message().to_owned(), false),
    };
    let heartbeat = match inbound.message().await {
        Ok(Some(pb::ServerMessage {
            kind: Some(server_message::Kind::Welcome(welcome)),
        })) => {
            let worker_id = WorkerId(welcome.worker_id);
            *shared
                .worker_id
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(worker_id);
            info!(%worker_id, server = %shared.config.server, batch = %shared.config.batch, "connected");
            Duration::from_millis(welcome.heartbeat_interval_ms.max(100))
        }
        Ok(_) => return broken("the server did not welcome the worker".to_owned(), false),
        Err(status) => return broken(status.message().to_owned(), false),
    };
    shared.set_link(Some(sender.clone()));
    let flusher = flush_updates(shared, &sender);
    tokio::pin!(flusher);
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Outcome::Stopped,
            () = &mut flusher => return broken("the stream closed".to_owned(), true),
            _ = ticker.tick() => {
                let beat = pb::WorkerMessage { kind: Some(worker_message::Kind::Heartbeat(pb::Heartbeat {})) };
                if sender.send(beat).await.is_err() {
                    return broken("the stream closed".to_owned(), true);
                }
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if let Some(outcome) = handle(shared, message) {
                        return outcome;
                    }
                }
                Ok(None) => return broken("the server closed the stream".to_owned(), true),
                Err(status) => return broken(status.message().to_owned(), true),
            },
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn hello(shared: &Shared) -> pb::WorkerMessage {
    let config = &shared.config;
    // The hello carries the latest update of every attempt: what was not sent is in it.
    shared.unsent().clear();
    let tasks = shared
        .held()
        .values()
        .filter(|entry| !entry.forgotten)
        .map(|entry| pb::TaskUpdate::from(&entry.latest))
        .collect();
    let hello = pb::Hello {
        worker_id: shared.worker_id().map(|id| id.0),
        name: config.name.clone(),
        batch: config.batch.to_string(),
        concurrency: config.concurrency,
        prefetch: config.prefetch,
        docker: shared.executors.docker.is_some(),
        allow_privileged: config.allow_privileged,
        cores: config.cores,
        memory_bytes: config.memory_bytes,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        tasks,
    };
    pb::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello)),
    }
}

fn handle(shared: &Arc<Shared>, message: pb::ServerMessage) -> Option<Outcome> {
    match message.kind? {
        server_message::Kind::Assign(assign) => {
            let task_id = TaskId(assign.task_id);
            let attempt = assign.attempt;
            let spec = match assign.spec.map(TaskSpec::try_from) {
                Some(Ok(spec)) => Arc::new(spec),
                Some(Err(error)) => {
                    warn!(%task_id, %error, "unusable assignment ignored");
                    return None;
                }
                None => {
                    warn!(%task_id, "assignment without a spec ignored");
                    return None;
                }
            };
            let cancel = CancellationToken::new();
            {
                let mut held = shared.held();
                if held.contains_key(&(task_id, attempt)) {
                    return None;
                }
                held.insert(
                    (task_id, attempt),
                    Held {
                        latest: TaskReport::new(task_id, attempt, herd_proto::TaskState::Assigned),
                        cancel: cancel.clone(),
                        forgotten: false,
                    },
                );
            }
            tokio::spawn(runner::run(shared.clone(), task_id, attempt, spec, cancel));
        }
        server_message::Kind::Cancel(cancel) => {
            let key = (TaskId(cancel.task_id), cancel.attempt);
            let mut held = shared.held();
            if let Some(entry) = held.get_mut(&key) {
                debug!(task_id = %key.0, attempt = key.1, reason = %cancel.reason, "attempt canceled by the server");
                entry.forgotten = true;
                entry.cancel.cancel();
                if entry.latest.state.is_terminal() {
                    held.remove(&key);
                }
            }
        }
        server_message::Kind::Ack(ack) => {
            let key = (TaskId(ack.task_id), ack.attempt);
            let mut held = shared.held();
            if held
                .get(&key)
                .is_some_and(|entry| entry.latest.state.is_terminal())
            {
                held.remove(&key);
            }
        }
        server_message::Kind::Shutdown(shutdown) => {
            return Some(Outcome::Shutdown(shutdown.reason));
        }
        server_message::Kind::Welcome(_) => {}
    }
    None
}
