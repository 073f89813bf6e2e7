//! The queue with its journal on a real (SQLite) store: what is durable when.

use std::sync::Arc;

use herd_proto::session::{Hello, ToWorker};
use herd_proto::{BatchName, TaskReport, TaskRequest, TaskSpec, TaskState};
use tokio::sync::mpsc;

use super::{Queue, QueueConfig};
use crate::logs::LogStore;
use crate::store::{SqlStore, Store, StoreError};

pub(super) fn hello() -> Hello {
    Hello {
        worker_id: None,
        resume_key: None,
        name: "fake".to_owned(),
        batch: BatchName::default_batch(),
        concurrency: 1,
        prefetch: 0,
        docker: false,
        bare: true,
        allow_privileged: false,
        cores: 1,
        memory_bytes: 1 << 30,
        version: "test".to_owned(),
        tasks: Vec::new(),
    }
}

/// A queue on a SQLite file in `directory`, its admin, and one fake worker connected.
struct Connected {
    queue: Arc<Queue>,
    admin: super::Caller,
    worker_id: herd_proto::WorkerId,
    serial: u64,
    receiver: mpsc::UnboundedReceiver<ToWorker>,
}

async fn connected(directory: &std::path::Path) -> Result<Connected, Box<dyn std::error::Error>> {
    let url = format!("sqlite://{}", directory.join("herd.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&url).await?);
    let logs = LogStore::new(directory.join("logs"), crate::logs::DEFAULT_MAX_BYTES);
    let queue = Queue::open(store, logs, QueueConfig::default()).await?;
    let admin_secret = super::new_secret()?;
    assert!(queue.bootstrap(&admin_secret).await?);
    let admin = queue.authenticate(Some(&admin_secret))?;
    let worker = queue.local_worker_token("test").await?;
    let worker = queue.authenticate(Some(&worker.secret))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let (worker_id, serial) = queue.connect(&worker, hello(), sender)?;
    Ok(Connected {
        queue,
        admin,
        worker_id,
        serial,
        receiver,
    })
}

#[tokio::test]
async fn shutdown_waits_for_the_last_commit() -> Result<(), Box<dyn std::error::Error>> {
    let directory = tempfile::tempdir()?;
    let Connected {
        queue,
        admin,
        worker_id,
        serial,
        mut receiver,
    } = connected(directory.path()).await?;
    let spec = TaskSpec::new(TaskRequest {
        batch: BatchName::default_batch().to_string(),
        command: vec!["true".to_owned()],
        ..TaskRequest::default()
    })?;
    let ids = queue.submit(&admin, None, vec![spec]).await?;
    // The assignment is sent once committed.
    loop {
        match receiver.recv().await {
            Some(ToWorker::Assign { task_id, .. }) if task_id == ids[0] => break,
            Some(_) => continue,
            None => return Err("the connection closed before the assignment".into()),
        }
    }
    // A started phase is journaled lazily: alone, it would wait for company before its commit.
    queue.report(
        worker_id,
        serial,
        vec![TaskReport::new(ids[0], 1, TaskState::Running)],
    );
    let pushed = queue.shared.lock().journal.pushed();
    assert!(
        *queue.committed.borrow() < pushed,
        "the phase waits for company"
    );
    queue.close();
    queue.shutdown().await;
    assert_eq!(
        *queue.committed.borrow(),
        pushed,
        "shutdown waited for the commit"
    );

    let url = format!("sqlite://{}", directory.path().join("herd.db").display());
    let reopened = SqlStore::open(&url).await?;
    let snapshot = reopened.load().await?;
    let attempt = snapshot
        .attempts
        .iter()
        .find(|row| row.task_id == ids[0].0 as i64)
        .ok_or("the attempt was not stored")?;
    assert_eq!(attempt.state, "running", "the last change was committed");
    assert_eq!(snapshot.tasks[0].state, "running");
    // Once shut down, a change is refused rather than lost silently.
    let refused = queue.retry(&admin, ids[0]).await;
    assert!(refused.is_err());
    Ok(())
}

/// A store that can be made unavailable, as a PostgreSQL being restarted or a full disk is.
struct FlakyStore {
    inner: SqlStore,
    down: std::sync::atomic::AtomicBool,
}

impl Store for FlakyStore {
    fn load(&self) -> futures::future::BoxFuture<'_, Result<crate::store::Snapshot, StoreError>> {
        self.inner.load()
    }

    fn commit<'a>(
        &'a self,
        writes: &'a crate::store::WriteSet,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)) });
        }
        self.inner.commit(writes)
    }

    fn describe(&self) -> String {
        "flaky test store".to_owned()
    }
}

/// While the database is down, an answer that promises durability says so after the commit
/// timeout instead of hanging; the change is committed once the database is back, a repeat
/// with the same key then returns its ids, and a shutdown while it is down ends in bounded
/// time.
#[tokio::test]
async fn a_database_outage_is_reported_then_ridden_out() -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::atomic::Ordering;
    let directory = tempfile::tempdir()?;
    let url = format!("sqlite://{}", directory.path().join("herd.db").display());
    let store = Arc::new(FlakyStore {
        inner: SqlStore::open(&url).await?,
        down: false.into(),
    });
    let config = QueueConfig {
        commit_timeout: std::time::Duration::from_millis(300),
        ..QueueConfig::default()
    };
    let logs = LogStore::new(
        directory.path().join("logs"),
        crate::logs::DEFAULT_MAX_BYTES,
    );
    let queue = Queue::open(store.clone(), logs, config).await?;
    let secret = super::new_secret()?;
    queue.bootstrap(&secret).await?;
    let admin = queue.authenticate(Some(&secret))?;
    let key = herd_proto::request::IdempotencyKey::new("outage-1")?;
    let spec = || {
        TaskSpec::new(TaskRequest {
            command: vec!["true".to_owned()],
            ..TaskRequest::default()
        })
    };

    store.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let refused = queue
            .submit(&admin, Some(&key), vec![spec()?])
            .await
            .expect_err("not durable while the database is down");
        assert!(
            matches!(refused, crate::Error::NotDurableYet(_)),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("database is unavailable"),
            "{refused}"
        );
    }

    store.down.store(false, Ordering::SeqCst);
    let ids = queue.submit(&admin, Some(&key), vec![spec()?]).await?;
    assert_eq!(ids.len(), 1);
    let stored = store.inner.load().await?;
    assert_eq!(
        stored.tasks.len(),
        1,
        "queued once, committed once the database was back"
    );

    // A shutdown while the database is down does not hang.
    store.down.store(true, Ordering::SeqCst);
    let _ = queue.submit(&admin, None, vec![spec()?]).await;
    queue.close();
    tokio::time::timeout(std::time::Duration::from_secs(10), queue.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn the_log_of_a_killed_attempt_is_closed() -> Result<(), Box<dyn std::error::Error>> {
    let directory = tempfile::tempdir()?;
    let Connected {
        queue,
        admin,
        worker_id,
        serial,
        mut receiver,
    } = connected(directory.path()).await?;
    let spec = TaskSpec::new(TaskRequest {
        batch: BatchName::default_batch().to_string(),
        command: vec!["yes".to_owned()],
        ..TaskRequest::default()
    })?;
    let ids = queue.submit(&admin, None, vec![spec]).await?;
    while !matches!(receiver.recv().await, Some(ToWorker::Assign { .. }) | None) {}
    queue.report(
        worker_id,
        serial,
        vec![TaskReport::new(ids[0], 1, TaskState::Running)],
    );
    let chunk = herd_proto::session::LogChunk {
        task_id: ids[0],
        attempt: 1,
        stream: herd_proto::session::LogStream::Stdout,
        data: b"y\n".to_vec(),
    };
    queue.append_log(worker_id, serial, &chunk);
    queue.close_ended_logs();
    assert_eq!(queue.logs().open_files(), 1, "open while the attempt runs");
    // Killed: no final report comes from the worker, and the file is closed all the same.
    queue.kill(&admin, ids[0]).await?;
    queue.close_ended_logs();
    assert_eq!(
        queue.logs().open_files(),
        0,
        "closed once the attempt ended"
    );
    Ok(())
}

/// Each database gets an identity once, kept across restarts; a reset database (a new file
/// with the same data directory) gets another, and its task logs are in another folder, so
/// its task 1 never appends to an older task 1's log.
#[tokio::test]
async fn a_reset_database_never_meets_an_older_one_s_logs() -> Result<(), Box<dyn std::error::Error>>
{
    let directory = tempfile::tempdir()?;
    let logs_root = directory.path().join("logs");
    let open = |name: &str| {
        let url = format!("sqlite://{}", directory.path().join(name).display());
        let logs = LogStore::new(&logs_root, crate::logs::DEFAULT_MAX_BYTES);
        async move {
            let store: Arc<dyn Store> = Arc::new(SqlStore::open(&url).await?);
            Ok::<_, Box<dyn std::error::Error>>(
                Queue::open(store, logs, QueueConfig::default()).await?,
            )
        }
    };
    let first = open("herd.db").await?;
    let instance = first.shared.lock().state.instance_id;
    assert_ne!(instance, 0);
    let path = first.logs().path(
        herd_proto::TaskId(1),
        1,
        herd_proto::session::LogStream::Stdout,
    );
    assert!(
        path.starts_with(logs_root.join(format!("{instance:016x}"))),
        "{}",
        path.display()
    );
    first.close();
    first.shutdown().await;
    drop(first);
    let again = open("herd.db").await?;
    assert_eq!(
        again.shared.lock().state.instance_id,
        instance,
        "kept across a restart"
    );
    again.close();
    again.shutdown().await;
    let reset = open("reset.db").await?;
    let other = reset.shared.lock().state.instance_id;
    assert_ne!(other, instance, "a new database is another instance");
    let new_path = reset.logs().path(
        herd_proto::TaskId(1),
        1,
        herd_proto::session::LogStream::Stdout,
    );
    assert_ne!(new_path, path);
    Ok(())
}
