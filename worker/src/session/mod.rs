//! The worker's one stream to the server, kept open across server restarts.
//!
//! Each connection starts with a hello that lists every attempt the worker holds and its
//! latest report, so a restarted server learns what is still running (and nothing is killed
//! because the server went away). Reports are kept in an [`Outbox`]: running attempts until
//! they end, terminal reports until the server acknowledges them (it does so once they are
//! durable).
//!
//! # Layout
//! - this module: [`Session`] (the outbox, the current connection, what runners need),
//!   the reconnection loop, the handling of each server message, and the [`Reporter`] the
//!   runners report through.
//! - `link`: the connection itself, the only code that sees protobuf.
//! - `outbox`: [`Outbox`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_proto::convert::UndecodableMessage;
use herd_proto::session::{FromWorker, Hello, LogChunk, ToWorker};
use herd_proto::{Reason, TaskId, TaskReport, TaskSpec, TaskState, WorkerId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::runner::{self, Attempt, Reporter, Resources};
use crate::staging::FetchStaging;
use crate::{Config, Executors};

mod link;
mod outbox;

use link::{Incoming, Outgoing};
use outbox::Outbox;

/// This worker's herd version, told to the server and to users of tasks it cannot read.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a worker with queued work gathers its updates before sending them in one message.
const GATHER_UPDATES: Duration = Duration::from_millis(5);

/// How long a stopping worker waits for the server to take its goodbye (and close the stream)
/// before it leaves anyway.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);
/// How long a connection and its welcome may take.
const GREETING_LIMIT: Duration = Duration::from_secs(15);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The session's state, shared by the session loop and (as their [`Reporter`]) the runners.
pub(crate) struct Session {
    config: Arc<Config>,
    /// Whether this worker runs Docker tasks (told in the hello).
    docker: bool,
    /// Whether this worker runs tasks without an image (told in the hello).
    bare: bool,
    outbox: Outbox,
    /// What the runners run attempts with.
    resources: Arc<Resources<FetchStaging>>,
    /// The current connection's sender, `None` while disconnected.
    link: Mutex<Option<Outgoing>>,
    /// The identity the server gave, with the key that resumes it.
    identity: Mutex<Option<(WorkerId, String)>>,
    /// The server's database, from the last welcome (0: not said).
    instance: std::sync::atomic::AtomicU64,
    /// When the worker lost the server, and how long the server waits for it.
    contact: Mutex<Contact>,
}

/// What the worker knows of its standing with the server, to fence itself in time.
#[derive(Debug, Default)]
struct Contact {
    /// How long the server waits for a silent worker, less one heartbeat (the server may have
    /// last heard from the worker that long before the connection broke); from the welcome.
    fence_after: Option<Duration>,
    /// Since when the worker has had no connection; `None` while connected.
    cut_off_since: Option<Instant>,
    /// Whether the worker fenced itself since it was cut off.
    fenced: bool,
    /// A hello is on its way: the attempts it lists are the server's again if it answers, so
    /// they must not be dropped behind its back.
    connecting: bool,
}

impl Session {
    fn new(config: Arc<Config>, executors: Executors) -> Session {
        Session {
            docker: executors.docker.is_some(),
            bare: executors.bare.is_some(),
            outbox: Outbox::default(),
            resources: Arc::new(Resources::new(&config, executors)),
            link: Mutex::new(None),
            identity: Mutex::new(None),
            instance: std::sync::atomic::AtomicU64::new(0),
            contact: Mutex::new(Contact::default()),
            config,
        }
    }

    fn link(&self) -> Option<Outgoing> {
        self.link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_link(&self, link: Option<Outgoing>) {
        {
            let mut contact = self.contact();
            contact.connecting = false;
            if link.is_some() {
                contact.cut_off_since = None;
                contact.fenced = false;
            } else {
                contact.cut_off_since.get_or_insert_with(Instant::now);
            }
        }
        *self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = link;
    }

    fn contact(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.contact
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fences the worker once it has been cut off from the server for longer than the server
    /// waits before giving its attempts to others: they are dropped (see [`Outbox::fence`]),
    /// so that no output of theirs lands after (or over) their new attempts' outputs.
    fn fence_if_cut_off(&self) {
        let mut contact = self.contact();
        let (Some(limit), Some(since)) = (contact.fence_after, contact.cut_off_since) else {
            return;
        };
        if contact.fenced || contact.connecting || since.elapsed() < limit {
            return;
        }
        contact.fenced = true;
        let dropped = self.outbox.fence();
        if dropped > 0 {
            warn!(
                attempts = dropped,
                cut_off_secs = since.elapsed().as_secs(),
                "cut off from the server for longer than its --worker-timeout: the server has \
                 given this worker's attempts to others, so they are stopped and their outputs \
                 are not uploaded"
            );
        }
    }

    /// The worker's id and resume key, once the server has welcomed it.
    fn identity(&self) -> Option<(WorkerId, String)> {
        self.identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The worker's id, once the server has welcomed it.
    fn worker_id(&self) -> Option<WorkerId> {
        self.identity().map(|(worker_id, _)| worker_id)
    }

    fn set_identity(&self, worker_id: WorkerId, resume_key: String) {
        *self
            .identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((worker_id, resume_key));
    }

    /// Whether attempts wait to start: the server pipelined work to this worker, so its next
    /// assignment is not urgent.
    fn has_queued_work(&self) -> bool {
        let config = &self.config;
        self.outbox.len() > (config.concurrency + config.prefetch) as usize
    }

    fn hello(&self) -> FromWorker {
        // Fenced first if it is time: the hello does not offer attempts the server gave away.
        self.fence_if_cut_off();
        self.contact().connecting = true;
        let config = &self.config;
        let identity = self.identity();
        FromWorker::Hello(Hello {
            worker_id: identity.as_ref().map(|(worker_id, _)| *worker_id),
            resume_key: identity.map(|(_, key)| key),
            name: config.name.clone(),
            batch: config.batch.clone(),
            concurrency: config.concurrency,
            prefetch: config.prefetch,
            docker: self.docker,
            bare: self.bare,
            allow_privileged: config.allow_privileged,
            cores: config.cores,
            memory_bytes: config.memory_bytes,
            version: VERSION.to_owned(),
            // The latest report of every attempt: what was not sent is in it.
            tasks: self.outbox.snapshot(),
        })
    }

    /// Starts a runner for an assigned attempt (once: the server may repeat an assignment).
    fn start(self: &Arc<Self>, task_id: TaskId, number: u32, spec: Arc<TaskSpec>) {
        let cancel = CancellationToken::new();
        if !self.outbox.hold(task_id, number, cancel.clone()) {
            return;
        }
        let attempt = Attempt {
            task_id,
            number,
            spec,
            cancel,
            worker_id: self.worker_id(),
            instance_id: self.instance.load(std::sync::atomic::Ordering::SeqCst),
        };
        tokio::spawn(runner::run(attempt, self.clone(), self.resources.clone()));
    }

    /// An assignment this worker cannot read (a newer server's spec, say) fails its attempt
    /// with the reason, like any final report, so that the task does not wait forever.
    fn refuse_assignment(&self, task_id: TaskId, attempt: u32, error: &UndecodableMessage) {
        let reason = herd_fetch::error_chain(error);
        warn!(%task_id, attempt, error = %reason, "cannot read an assignment; failing the attempt");
        if !self.outbox.hold(task_id, attempt, CancellationToken::new()) {
            return;
        }
        let mut report = TaskReport::new(task_id, attempt, TaskState::Failed);
        report.reason = Some(Reason::Executor);
        report.message = Some(format!(
            "this worker (herd {VERSION}) cannot read the assignment: {reason}; upgrade the worker"
        ));
        self.outbox.push(report);
    }
}

impl Reporter for Arc<Session> {
    fn report(&self, report: TaskReport) {
        self.outbox.push(report);
    }

    async fn log(&self, chunk: LogChunk) {
        if let Some(link) = self.link() {
            // A closed link means a reconnection is under way: logs are not kept.
            let _ = link.send(FromWorker::Log(chunk)).await;
        }
    }

    fn is_forgotten(&self, task_id: TaskId, attempt: u32) -> bool {
        self.outbox.is_forgotten(task_id, attempt)
    }
}

/// Sends the outbox's reports down `link`, several at once: as soon as they come when the
/// worker has nothing queued (the server waits for them to give it work), after gathering
/// them for [`GATHER_UPDATES`] when it has (its slots are fed from its own queue; one message
/// and one commit then carry the updates of many tasks). Ends when the stream closes.
async fn flush_reports(session: &Session, link: &Outgoing) {
    let mut batch = Vec::new();
    loop {
        session.outbox.pushed().await;
        if session.has_queued_work() {
            tokio::time::sleep(GATHER_UPDATES).await;
        }
        session.outbox.drain_into(&mut batch);
        if batch.is_empty() {
            continue;
        }
        if link.send_reports(&mut batch).await.is_err() {
            return;
        }
    }
}

/// Connects, serves, and reconnects until `shutdown` or a deletion by the server. Fails if the
/// server refuses the worker's token (retrying cannot help then).
pub(crate) async fn run(
    config: Arc<Config>,
    executors: Executors,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let session = Arc::new(Session::new(config, executors));
    let watchdog_stop = shutdown.child_token();
    tokio::spawn(watch_contact(session.clone(), watchdog_stop.clone()));
    tokio::spawn(maintain(session.clone(), watchdog_stop.clone()));
    let _watchdog = watchdog_stop.drop_guard();
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        // Watches `shutdown` itself, to say goodbye when connected.
        let outcome = connect_and_serve(&session, &shutdown).await;
        session.set_link(None);
        match outcome {
            Outcome::Shutdown(reason) => {
                warn!(%reason, "the server asked this worker to stop");
                break;
            }
            Outcome::Stopped => break,
            Outcome::Refused(reason) => {
                session.outbox.cancel_all();
                return Err(reason);
            }
            Outcome::Broken {
                error,
                was_connected,
            } => {
                if was_connected {
                    backoff = MIN_BACKOFF;
                    warned = false;
                    warn!(%error, "lost the server; reconnecting");
                } else if !warned {
                    warn!(server = %session.config.server, %error, "cannot reach the herd server; retrying");
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
    session.outbox.cancel_all();
    Ok(())
}

/// How often the watchdog checks whether the worker must fence itself.
const WATCH_CONTACT: Duration = Duration::from_millis(100);

/// Fences the session when it has been cut off for too long (see
/// [`Session::fence_if_cut_off`]), until `stop`.
async fn watch_contact(session: Arc<Session>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(WATCH_CONTACT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => session.fence_if_cut_off(),
        }
    }
}

/// Cleans the work directory (see [`crate::cleaning`]) at start, then every
/// [`MAINTENANCE_PERIOD`](crate::cleaning::MAINTENANCE_PERIOD) (more often when
/// `--keep-failed` is shorter), on the blocking threads, until `stop`.
async fn maintain(session: Arc<Session>, stop: CancellationToken) {
    let keep_failed = session.config.keep_failed;
    let cache_max_bytes = session.config.cache_max_bytes;
    let period = keep_failed.clamp(Duration::from_secs(1), crate::cleaning::MAINTENANCE_PERIOD);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let resources = session.resources.clone();
        let cleaned = tokio::task::spawn_blocking(move || {
            let removed = resources.folders.sweep_failed(keep_failed);
            (removed, resources.staging.sweep_cache(cache_max_bytes))
        })
        .await;
        if let Ok((removed, cache)) = cleaned
            && !(removed.is_empty() && cache.evicted.is_empty())
        {
            debug!(
                failed_folders = removed.len(),
                cache_entries = cache.evicted.len(),
                "cleaned the work directory"
            );
        }
    }
}

enum Outcome {
    Shutdown(String),
    Stopped,
    /// The server refused the worker's token.
    Refused(String),
    Broken {
        error: String,
        was_connected: bool,
    },
}

fn broken(error: impl Into<String>, was_connected: bool) -> Outcome {
    Outcome::Broken {
        error: error.into(),
        was_connected,
    }
}

async fn connect_and_serve(session: &Arc<Session>, shutdown: &CancellationToken) -> Outcome {
    let config = &session.config;
    // Bounded: while a hello is on its way the worker does not fence itself (see `Contact`).
    let greeting = async {
        let hello = session.hello();
        let (link, mut incoming) =
            match link::connect(&config.server, &config.tls, &config.token, &hello).await {
                Ok(connection) => connection,
                Err(link::ConnectError::Refused(reason)) => return Err(Outcome::Refused(reason)),
                Err(link::ConnectError::Failed(error)) => return Err(broken(error, false)),
            };
        match welcome(session, &mut incoming).await {
            Ok(heartbeat) => Ok((link, incoming, heartbeat)),
            Err(error) => Err(broken(error, false)),
        }
    };
    let greeted = tokio::select! {
        _ = shutdown.cancelled() => return Outcome::Stopped,
        greeted = tokio::time::timeout(GREETING_LIMIT, greeting) => greeted,
    };
    let (link, mut incoming, heartbeat) = match greeted {
        Ok(Ok(greeted)) => greeted,
        Ok(Err(outcome)) => return outcome,
        Err(_) => {
            let limit = GREETING_LIMIT.as_secs();
            return broken(
                format!("the server did not welcome the worker within {limit} s"),
                false,
            );
        }
    };
    session.set_link(Some(link.clone()));
    let flusher = flush_reports(session, &link);
    tokio::pin!(flusher);
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                say_goodbye(session, &link, &mut incoming).await;
                return Outcome::Stopped;
            }
            () = &mut flusher => return broken("the stream closed", true),
            _ = ticker.tick() => {
                if link.send(FromWorker::Heartbeat).await.is_err() {
                    return broken("the stream closed", true);
                }
            }
            message = incoming.next() => match message {
                Ok(Some(message)) => {
                    if let Some(outcome) = handle(session, message) {
                        return outcome;
                    }
                }
                Ok(None) => return broken("the server closed the stream", true),
                Err(error) => return broken(error, true),
            },
        }
    }
}

/// Tells the server this worker is stopping, after the reports not sent yet, and waits (at
/// most [`GOODBYE_WAIT`]) for it to close the stream, which it does once the attempts this
/// worker held are queued again: they are then not taken for a crash. The attempts are
/// stopped once the goodbye is sent; acknowledgements that arrive meanwhile are applied.
async fn say_goodbye(session: &Session, link: &Outgoing, incoming: &mut Incoming) {
    let mut reports = Vec::new();
    session.outbox.drain_into(&mut reports);
    if !reports.is_empty() && link.send_reports(&mut reports).await.is_err() {
        return;
    }
    if link.send(FromWorker::Goodbye).await.is_err() {
        return;
    }
    // The server gives these attempts to other workers as soon as it took the goodbye: stop
    // them now rather than after its answer. What they report is not sent any more.
    session.outbox.cancel_all();
    let closed = async {
        loop {
            match incoming.next().await {
                Ok(Some(Ok(ToWorker::Ack { task_id, attempt }))) => {
                    session.outbox.ack(task_id, attempt)
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    if tokio::time::timeout(GOODBYE_WAIT, closed).await.is_err() {
        warn!(
            "the server did not take this worker's goodbye in time; it will queue the attempts this worker held again once it declares the worker lost"
        );
    } else {
        info!("said goodbye to the server; the attempts this worker held are queued again");
    }
}

/// Waits for the server's welcome; returns the heartbeat interval it asks for.
async fn welcome(session: &Session, incoming: &mut Incoming) -> Result<Duration, String> {
    match incoming.next().await? {
        Some(Ok(ToWorker::Welcome {
            worker_id,
            heartbeat_interval,
            resume_key,
            worker_timeout,
            instance_id,
        })) => {
            if session.worker_id().is_some_and(|known| known != worker_id) {
                warn!(%worker_id, "the server gave this worker a new identity; the attempts it held under the old one will run elsewhere");
            }
            let before = session
                .instance
                .swap(instance_id, std::sync::atomic::Ordering::SeqCst);
            if before != 0 && before != instance_id {
                // Another database (a reset server): nothing held belongs to it.
                warn!(
                    old = format!("{before:016x}"),
                    new = format!("{instance_id:016x}"),
                    "the server's database is not the one this worker worked for; stopping the attempts it held"
                );
                session.outbox.cancel_all();
            }
            session.set_identity(worker_id, resume_key);
            session.contact().fence_after =
                worker_timeout.map(|timeout| timeout.saturating_sub(heartbeat_interval));
            let config = &session.config;
            info!(%worker_id, server = %config.server, batch = %config.batch, "connected");
            Ok(heartbeat_interval.max(Duration::from_millis(100)))
        }
        Some(Err(error)) => Err(format!(
            "cannot read the server's welcome: {}",
            herd_fetch::error_chain(&error)
        )),
        _ => Err("the server did not welcome the worker".to_owned()),
    }
}

/// Acts on one message from the server; `Some` ends the connection.
fn handle(
    session: &Arc<Session>,
    message: Result<ToWorker, UndecodableMessage>,
) -> Option<Outcome> {
    let message = match message {
        Ok(message) => message,
        Err(error) => {
            match error.assignment {
                Some((task_id, attempt)) => session.refuse_assignment(task_id, attempt, &error),
                None => warn!(
                    error = %herd_fetch::error_chain(&error),
                    "ignored a message from the server that this worker cannot read"
                ),
            }
            return None;
        }
    };
    match message {
        ToWorker::Assign {
            task_id,
            attempt,
            spec,
        } => session.start(task_id, attempt, spec),
        ToWorker::Cancel {
            task_id,
            attempt,
            reason,
        } => {
            if session.outbox.forget(task_id, attempt) {
                debug!(%task_id, attempt, %reason, "attempt canceled by the server");
            }
        }
        ToWorker::Ack { task_id, attempt } => session.outbox.ack(task_id, attempt),
        ToWorker::Shutdown { reason } => return Some(Outcome::Shutdown(reason)),
        ToWorker::Welcome { .. } => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::link::samples;
    use super::*;

    fn session(work_dir: &std::path::Path) -> Arc<Session> {
        let config = Config {
            server: "http://127.0.0.1:1".to_owned(),
            tls: herd_proto::transport::ClientTls::default(),
            name: "test".to_owned(),
            batch: herd_proto::BatchName::default_batch(),
            concurrency: 1,
            prefetch: 0,
            executor: crate::ExecutorKind::Bare,
            allow_privileged: false,
            policy: herd_proto::policy::Policy::default(),
            work_dir: work_dir.to_path_buf(),
            cores: 1,
            memory_bytes: 1 << 30,
            token: herd_proto::access::Secret::new("herd_test").expect("a token"),
            keep_failed: crate::DEFAULT_KEEP_FAILED,
            cache_max_bytes: crate::DEFAULT_CACHE_MAX_BYTES,
        };
        let executors = Executors {
            bare: Some(Arc::new(crate::executor::bare::BareExecutor::new())),
            docker: None,
        };
        Arc::new(Session::new(Arc::new(config), executors))
    }

    fn drained(session: &Session) -> Vec<TaskReport> {
        let mut batch = Vec::new();
        session.outbox.drain_into(&mut batch);
        batch
    }

    #[tokio::test]
    async fn an_assignment_this_worker_cannot_read_fails_its_attempt_until_acknowledged() {
        let work = tempfile::tempdir().unwrap();
        let session = session(work.path());
        let unreadable = || samples::assignment_without_spec(TaskId(5), 2);
        assert!(handle(&session, unreadable()).is_none());
        let sent = drained(&session);
        assert_eq!(sent.len(), 1, "{sent:?}");
        let report = &sent[0];
        assert_eq!((report.task_id, report.attempt), (TaskId(5), 2));
        assert_eq!(report.state, TaskState::Failed);
        assert_eq!(report.reason, Some(Reason::Executor));
        let message = report.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with(&format!(
                "this worker (herd {VERSION}) cannot read the assignment: "
            )) && message.contains("spec")
                && message.ends_with("; upgrade the worker"),
            "{message}"
        );

        // Repeated, it is not reported twice; kept for the next hello until acknowledged.
        handle(&session, unreadable());
        assert!(drained(&session).is_empty());
        assert_eq!(session.outbox.snapshot(), sent);
        handle(
            &session,
            Ok(ToWorker::Ack {
                task_id: TaskId(5),
                attempt: 2,
            }),
        );
        assert!(session.outbox.snapshot().is_empty());
    }

    #[tokio::test]
    async fn another_unreadable_message_is_ignored() {
        let work = tempfile::tempdir().unwrap();
        let session = session(work.path());
        assert!(handle(&session, samples::unknown_kind()).is_none());
        assert!(drained(&session).is_empty());
        assert_eq!(session.outbox.len(), 0);
    }

    #[tokio::test]
    async fn a_worker_cut_off_past_the_server_s_timeout_drops_its_attempts_before_its_hello() {
        let work = tempfile::tempdir().unwrap();
        let session = session(work.path());
        let cancel = CancellationToken::new();
        assert!(session.outbox.hold(TaskId(1), 1, cancel.clone()));
        session
            .outbox
            .push(TaskReport::new(TaskId(1), 1, TaskState::Running));
        // Connected once (the welcome told the limit), then cut off.
        session.contact().fence_after = Some(Duration::from_secs(3600));
        session.set_link(None);
        session.fence_if_cut_off();
        assert!(!cancel.is_cancelled(), "not yet past the limit");

        // While a hello is on its way, its attempts are the server's again: kept.
        session.contact().fence_after = Some(Duration::ZERO);
        session.contact().connecting = true;
        session.fence_if_cut_off();
        assert!(!cancel.is_cancelled(), "not behind a hello's back");
        session.set_link(None);

        // The next hello fences first, and does not offer the attempt.
        let FromWorker::Hello(hello) = session.hello() else {
            panic!("a hello");
        };
        assert!(cancel.is_cancelled());
        assert!(hello.tasks.is_empty(), "{:?}", hello.tasks);
        assert!(session.outbox.is_forgotten(TaskId(1), 1));
    }
}
