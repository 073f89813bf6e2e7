//! The store's behaviour suite: every case runs on SQLite (a file in a temporary directory) and
//! on PostgreSQL (a fresh database from [`herd_tests::postgres`]; needs
//! `HERD_TEST_POSTGRES_URL`, see `scripts/start-postgres.sh`).
//!
//! Each case is an `async fn(&Fixture)`: the fixture names a database the case may open as many
//! times as it likes. [`store_suite!`] turns the list of cases into one test per engine.

use std::time::Instant;

use anyhow::{Context, ensure};
use herd_server::store::{
    AttemptRow, BatchRow, Snapshot, SqlStore, Store, StoreError, SubmissionRow, TaskRow, TokenRow,
    UserRow, WorkerRow, WriteSet,
};
use herd_tests::postgres::TestDatabase;
use sqlx::{AnyConnection, Connection};

/// A database for one case, removed when the fixture is dropped.
struct Fixture {
    url: String,
    engine: &'static str,
    _sqlite_directory: Option<tempfile::TempDir>,
    _postgres_database: Option<TestDatabase>,
}

impl Fixture {
    /// A SQLite file that does not exist yet, in a fresh temporary directory.
    fn sqlite() -> anyhow::Result<Fixture> {
        let directory = tempfile::tempdir()?;
        let url = format!("sqlite://{}", directory.path().join("herd.db").display());
        Ok(Fixture {
            url,
            engine: "sqlite",
            _sqlite_directory: Some(directory),
            _postgres_database: None,
        })
    }

    /// A fresh, empty PostgreSQL database.
    async fn postgres() -> anyhow::Result<Fixture> {
        let database = TestDatabase::create().await?;
        Ok(Fixture {
            url: database.url().to_owned(),
            engine: "postgres",
            _sqlite_directory: None,
            _postgres_database: Some(database),
        })
    }

    async fn open(&self) -> anyhow::Result<SqlStore> {
        SqlStore::open(&self.url)
            .await
            .with_context(|| format!("opening {}", self.url))
    }

    /// A raw connection, to look behind the store's back.
    async fn raw_connection(&self) -> anyhow::Result<AnyConnection> {
        sqlx::any::install_default_drivers();
        Ok(AnyConnection::connect(&self.url).await?)
    }
}

/// One `#[tokio::test]` per case and engine: `sqlite::<case>` and `postgres::<case>`.
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() -> anyhow::Result<()> {
                    let fixture = super::Fixture::sqlite()?;
                    super::$case(&fixture).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() -> anyhow::Result<()> {
                    let fixture = super::Fixture::postgres().await?;
                    super::$case(&fixture).await
                }
            )*
        }
    };
}

store_suite!(
    a_new_database_loads_empty,
    every_table_round_trips,
    an_upsert_replaces_the_row,
    deleting_a_task_removes_its_attempts,
    deletions_apply_after_upserts,
    deleting_batches_and_workers,
    a_repeated_key_keeps_the_last_image,
    a_failed_commit_changes_nothing,
    data_survives_reopening,
    opening_twice_migrates_once,
    a_large_write_set_mixes_new_and_stored_rows,
    a_hundred_thousand_tasks_round_trip,
    describe_hides_the_password,
);

// ---------------------------------------------------------------------------------------------
// Rows

fn task(id: i64) -> TaskRow {
    TaskRow {
        id,
        batch: "default".to_owned(),
        name: Some(format!("task-{id}")),
        spec: format!(r#"{{"command":"echo {id}","container":"debian:12","retries":2}}"#),
        state: "pending".to_owned(),
        attempt: 1,
        exit_code: None,
        reason: None,
        message: None,
        created_at: 1_700_000_000_000 + id,
        updated_at: 1_700_000_000_000 + id,
        owner: Some(1),
    }
}

fn attempt(task_id: i64, number: i64) -> AttemptRow {
    AttemptRow {
        task_id,
        number,
        worker_id: 7,
        worker_name: "node-7".to_owned(),
        state: "running".to_owned(),
        exit_code: None,
        reason: None,
        message: None,
        assigned_at: 1_700_000_100_000,
        download_started_at: Some(1_700_000_100_001),
        run_started_at: Some(1_700_000_100_002),
        upload_started_at: None,
        ended_at: None,
        transfers: "[]".to_owned(),
    }
}

fn batch(name: &str, paused: bool) -> BatchRow {
    BatchRow {
        name: name.to_owned(),
        paused,
        created_at: 1_700_000_000_000,
        owner: None,
    }
}

fn worker(id: i64) -> WorkerRow {
    WorkerRow {
        id,
        name: format!("node-{id}"),
        batch: "default".to_owned(),
        concurrency: 4,
        prefetch: 1,
        docker: true,
        allow_privileged: false,
        cores: 16,
        memory_bytes: 64 << 30,
        version: "0.1.0".to_owned(),
        registered_at: 1_700_000_000_000,
        last_seen: 1_700_000_200_000,
        lost: false,
        token_id: Some(2),
        resume_hash: Some("ab".repeat(32)),
    }
}

fn user(id: i64, name: &str, admin: bool) -> UserRow {
    UserRow {
        id,
        name: name.to_owned(),
        admin,
        created_at: 1_700_000_000_000,
    }
}

fn token(id: i64, user_id: i64, kind: &str, batch: Option<&str>) -> TokenRow {
    TokenRow {
        id,
        user_id,
        kind: kind.to_owned(),
        batch: batch.map(str::to_owned),
        label: "ünïcode 'label'".to_owned(),
        hash: format!("{id:064x}"),
        created_at: 1_700_000_000_000,
        revoked_at: (id % 2 == 0).then_some(1_700_000_000_001),
    }
}

fn counter(name: &str, value: i64) -> (String, i64) {
    (name.to_owned(), value)
}

/// A write set that exercises every column shape: NULL and non-NULL optionals, both flag
/// values, extreme integers, quotes and non-ASCII text.
fn varied_write_set() -> WriteSet {
    let finished = TaskRow {
        state: "failed".to_owned(),
        attempt: 2,
        exit_code: Some(-1),
        reason: Some("exit_code".to_owned()),
        message: Some("l'exécution a échoué: \"exit 255\" ✗\n".to_owned()),
        name: None,
        batch: "ünïcode batch".to_owned(),
        updated_at: i64::MAX,
        owner: None,
        ..task(2)
    };
    let ended = AttemptRow {
        state: "failed".to_owned(),
        exit_code: Some(255),
        reason: Some("exit_code".to_owned()),
        message: Some("'; DROP TABLE tasks; --".to_owned()),
        upload_started_at: Some(1_700_000_100_003),
        ended_at: Some(1_700_000_100_004),
        transfers: r#"[{"direction":"output","uri":"s3://b/k","bytes":12,"files":1}]"#.to_owned(),
        ..attempt(2, 1)
    };
    let lost_worker = WorkerRow {
        docker: false,
        allow_privileged: true,
        lost: true,
        memory_bytes: i64::MIN,
        token_id: None,
        resume_hash: None,
        ..worker(9)
    };
    WriteSet {
        tasks: vec![task(1), finished, task(3)],
        attempts: vec![attempt(1, 1), ended, attempt(2, 2)],
        batches: vec![batch("default", false), batch("ünïcode batch", true)],
        workers: vec![worker(7), lost_worker],
        users: vec![user(1, "admin", true), user(2, "bob", false)],
        tokens: vec![
            token(1, 1, "user", None),
            token(2, 1, "worker", Some("ünïcode batch")),
            token(3, 2, "user", None),
        ],
        submissions: vec![
            SubmissionRow {
                key: "2:retry-1".to_owned(),
                user_id: 2,
                first_task_id: 1,
                task_count: 3,
                created_at: 1_700_000_000_000,
            },
            SubmissionRow {
                key: "1:ünïcode 'key'".to_owned(),
                user_id: 1,
                first_task_id: 2,
                task_count: 100_000,
                created_at: i64::MAX,
            },
        ],
        counters: vec![counter("next_task_id", 4), counter("next_worker_id", 10)],
        ..WriteSet::default()
    }
}

/// What `load` returns after `writes` on an empty database: every list in key order.
fn snapshot_of(writes: &WriteSet) -> Snapshot {
    let mut snapshot = Snapshot {
        tasks: writes.tasks.clone(),
        attempts: writes.attempts.clone(),
        batches: writes.batches.clone(),
        workers: writes.workers.clone(),
        users: writes.users.clone(),
        tokens: writes.tokens.clone(),
        submissions: writes.submissions.clone(),
        counters: writes.counters.clone(),
    };
    snapshot.tasks.sort_by_key(|task| task.id);
    snapshot
        .attempts
        .sort_by_key(|attempt| (attempt.task_id, attempt.number));
    snapshot.batches.sort_by(|a, b| a.name.cmp(&b.name));
    snapshot.workers.sort_by_key(|worker| worker.id);
    snapshot.users.sort_by_key(|user| user.id);
    snapshot.tokens.sort_by_key(|token| token.id);
    snapshot.submissions.sort_by(|a, b| a.key.cmp(&b.key));
    snapshot.counters.sort();
    snapshot
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn a_new_database_loads_empty(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    assert_eq!(store.load().await?, Snapshot::default());
    // An empty write set is fine too, and still leaves nothing.
    store.commit(&WriteSet::default()).await?;
    assert_eq!(store.load().await?, Snapshot::default());
    Ok(())
}

async fn every_table_round_trips(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    let writes = varied_write_set();
    store.commit(&writes).await?;
    assert_eq!(store.load().await?, snapshot_of(&writes));
    Ok(())
}

async fn an_upsert_replaces_the_row(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    store.commit(&varied_write_set()).await?;

    let running = TaskRow {
        state: "running".to_owned(),
        name: None,
        message: Some("started".to_owned()),
        updated_at: 1_800_000_000_000,
        ..task(1)
    };
    let succeeded = AttemptRow {
        state: "succeeded".to_owned(),
        exit_code: Some(0),
        ended_at: Some(1_800_000_000_000),
        ..attempt(1, 1)
    };
    let update = WriteSet {
        tasks: vec![running.clone()],
        attempts: vec![succeeded.clone()],
        batches: vec![batch("default", true)],
        workers: vec![WorkerRow {
            lost: true,
            concurrency: 1,
            ..worker(7)
        }],
        counters: vec![counter("next_task_id", 5)],
        ..WriteSet::default()
    };
    store.commit(&update).await?;

    let mut expected = snapshot_of(&varied_write_set());
    expected.tasks[0] = running;
    expected.attempts[0] = succeeded;
    expected.batches[0].paused = true;
    expected.workers[0].lost = true;
    expected.workers[0].concurrency = 1;
    expected.counters[0].1 = 5;
    assert_eq!(store.load().await?, expected);
    Ok(())
}

async fn deleting_a_task_removes_its_attempts(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    store.commit(&varied_write_set()).await?;
    store
        .commit(&WriteSet {
            deleted_tasks: vec![2],
            ..WriteSet::default()
        })
        .await?;

    let loaded = store.load().await?;
    let task_ids: Vec<i64> = loaded.tasks.iter().map(|task| task.id).collect();
    assert_eq!(task_ids, [1, 3]);
    let attempt_keys: Vec<(i64, i64)> = loaded
        .attempts
        .iter()
        .map(|attempt| (attempt.task_id, attempt.number))
        .collect();
    assert_eq!(
        attempt_keys,
        [(1, 1)],
        "the attempts of task 2 must be gone"
    );
    // Nothing else was touched.
    assert_eq!(loaded.batches.len(), 2);
    assert_eq!(loaded.workers.len(), 2);
    Ok(())
}

async fn deletions_apply_after_upserts(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    // One write set that creates task 5 with an attempt and deletes it: nothing of it stays.
    store
        .commit(&WriteSet {
            tasks: vec![task(4), task(5)],
            attempts: vec![attempt(5, 1)],
            deleted_tasks: vec![5],
            batches: vec![batch("gone", false)],
            deleted_batches: vec!["gone".to_owned()],
            workers: vec![worker(3)],
            deleted_workers: vec![3],
            ..WriteSet::default()
        })
        .await?;
    let loaded = store.load().await?;
    assert_eq!(loaded.tasks, [task(4)]);
    assert_eq!(loaded.attempts, []);
    assert_eq!(loaded.batches, []);
    assert_eq!(loaded.workers, []);
    Ok(())
}

async fn deleting_batches_and_workers(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    store.commit(&varied_write_set()).await?;
    store
        .commit(&WriteSet {
            deleted_batches: vec!["ünïcode batch".to_owned(), "never existed".to_owned()],
            deleted_workers: vec![7, 12_345],
            ..WriteSet::default()
        })
        .await?;

    let loaded = store.load().await?;
    let expected = snapshot_of(&varied_write_set());
    assert_eq!(loaded.batches, [batch("default", false)]);
    let worker_ids: Vec<i64> = loaded.workers.iter().map(|worker| worker.id).collect();
    assert_eq!(worker_ids, [9]);
    // Tasks of a deleted batch stay until they are deleted themselves.
    assert_eq!(loaded.tasks, expected.tasks);
    assert_eq!(loaded.attempts, expected.attempts);
    Ok(())
}

async fn a_repeated_key_keeps_the_last_image(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    let first = TaskRow {
        state: "pending".to_owned(),
        ..task(1)
    };
    let last = TaskRow {
        state: "cancelled".to_owned(),
        reason: Some("user".to_owned()),
        ..task(1)
    };
    let last_attempt = AttemptRow {
        state: "cancelled".to_owned(),
        ..attempt(1, 1)
    };
    store
        .commit(&WriteSet {
            tasks: vec![first, task(2), last.clone()],
            attempts: vec![attempt(1, 1), last_attempt.clone()],
            batches: vec![batch("default", false), batch("default", true)],
            workers: vec![
                worker(7),
                WorkerRow {
                    lost: true,
                    ..worker(7)
                },
            ],
            counters: vec![counter("next_task_id", 2), counter("next_task_id", 3)],
            deleted_tasks: vec![2, 2],
            ..WriteSet::default()
        })
        .await?;

    let loaded = store.load().await?;
    assert_eq!(loaded.tasks, [last]);
    assert_eq!(loaded.attempts, [last_attempt]);
    assert_eq!(loaded.batches, [batch("default", true)]);
    assert_eq!(
        loaded.workers,
        [WorkerRow {
            lost: true,
            ..worker(7)
        }]
    );
    assert_eq!(loaded.counters, [counter("next_task_id", 3)]);
    Ok(())
}

async fn a_failed_commit_changes_nothing(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    let writes = varied_write_set();
    store.commit(&writes).await?;

    // The new task is written first, then the attempt of a task that does not exist fails.
    let failing = WriteSet {
        tasks: vec![task(10)],
        attempts: vec![attempt(999, 1)],
        counters: vec![counter("next_task_id", 11)],
        ..WriteSet::default()
    };
    let error = store
        .commit(&failing)
        .await
        .expect_err("an attempt of a missing task must violate the foreign key");
    assert!(
        matches!(error, StoreError::Database(_)),
        "expected a database error, got {error:?}"
    );
    assert_eq!(store.load().await?, snapshot_of(&writes), "all or nothing");

    // The store is still usable afterwards.
    store
        .commit(&WriteSet {
            tasks: vec![task(10)],
            ..WriteSet::default()
        })
        .await?;
    assert_eq!(store.load().await?.tasks.len(), 4);
    Ok(())
}

async fn data_survives_reopening(fixture: &Fixture) -> anyhow::Result<()> {
    let writes = varied_write_set();
    {
        let store = fixture.open().await?;
        store.commit(&writes).await?;
    }
    let reopened = fixture.open().await?;
    assert_eq!(reopened.load().await?, snapshot_of(&writes));
    Ok(())
}

async fn opening_twice_migrates_once(fixture: &Fixture) -> anyhow::Result<()> {
    let first = fixture.open().await?;
    first.commit(&varied_write_set()).await?;
    // A second store on the same database, while the first is still open.
    let second = fixture.open().await?;
    assert_eq!(second.load().await?, snapshot_of(&varied_write_set()));
    drop(second);
    let third = fixture.open().await?;
    assert_eq!(third.load().await?, first.load().await?);

    let mut raw = fixture.raw_connection().await?;
    let (applied, newest): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut raw)
            .await?;
    assert_eq!(
        (applied, newest),
        (3, 3),
        "three migrations, each applied once"
    );
    raw.close().await?;
    Ok(())
}

/// Large write sets insert rows above the highest stored id without `ON CONFLICT`; rows at or
/// below it, stored or not, must still be upserted correctly.
async fn a_large_write_set_mixes_new_and_stored_rows(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    let stored: Vec<TaskRow> = (1..=300).chain([5_000]).map(task).collect();
    store
        .commit(&WriteSet {
            tasks: stored.clone(),
            workers: (1..=300).map(worker).collect(),
            ..WriteSet::default()
        })
        .await?;

    let cancelled = |id| TaskRow {
        state: "cancelled".to_owned(),
        ..task(id)
    };
    // 250..=300 are stored, 4_700..=4_999 are not but lie below the highest id, 5_000 is
    // stored and is the highest, 5_001..=5_100 are new.
    let second: Vec<TaskRow> = (250..=300).chain(4_700..=5_100).map(cancelled).collect();
    let more_workers: Vec<WorkerRow> = (290..=600)
        .map(|id| WorkerRow {
            lost: true,
            ..worker(id)
        })
        .collect();
    store
        .commit(&WriteSet {
            tasks: second.clone(),
            workers: more_workers.clone(),
            ..WriteSet::default()
        })
        .await?;

    let mut expected: Vec<TaskRow> = (1..250).map(task).chain(second).collect();
    expected.sort_by_key(|task| task.id);
    let loaded = store.load().await?;
    assert_eq!(loaded.tasks.len(), expected.len());
    assert_eq!(loaded.tasks, expected);
    let expected_workers: Vec<WorkerRow> = (1..290).map(worker).chain(more_workers).collect();
    assert_eq!(loaded.workers, expected_workers);
    Ok(())
}

async fn a_hundred_thousand_tasks_round_trip(fixture: &Fixture) -> anyhow::Result<()> {
    const COUNT: i64 = 100_000;
    let store = fixture.open().await?;
    let writes = WriteSet {
        tasks: (1..=COUNT).map(task).collect(),
        batches: vec![batch("default", false)],
        counters: vec![counter("next_task_id", COUNT + 1)],
        ..WriteSet::default()
    };

    let started = Instant::now();
    store.commit(&writes).await?;
    let insert_time = started.elapsed();

    let updates = WriteSet {
        tasks: writes
            .tasks
            .iter()
            .map(|task| TaskRow {
                state: "running".to_owned(),
                ..task.clone()
            })
            .collect(),
        ..WriteSet::default()
    };
    let started = Instant::now();
    store.commit(&updates).await?;
    let update_time = started.elapsed();

    let started = Instant::now();
    let loaded = store.load().await?;
    let load_time = started.elapsed();
    eprintln!(
        "{}: 100k tasks: insert commit {insert_time:.2?}, update commit {update_time:.2?}, \
         load {load_time:.2?}",
        fixture.engine
    );

    ensure!(
        loaded.tasks.len() == COUNT as usize,
        "expected {COUNT} tasks, loaded {}",
        loaded.tasks.len()
    );
    assert_eq!(loaded.tasks.first(), updates.tasks.first());
    assert_eq!(loaded.tasks.last(), updates.tasks.last());
    assert!(loaded.tasks.iter().all(|task| task.state == "running"));
    assert_eq!(loaded.counters, [counter("next_task_id", COUNT + 1)]);
    Ok(())
}

async fn describe_hides_the_password(fixture: &Fixture) -> anyhow::Result<()> {
    let store = fixture.open().await?;
    let description = store.describe();
    match fixture.engine {
        // The test role's password is `herd`, as is its name: `herd:herd@` must not appear.
        "postgres" => {
            assert!(!description.contains(":herd@"), "{description}");
            assert!(description.contains("herd@"), "{description}");
        }
        _ => assert_eq!(description, fixture.url),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Engine-specific and URL cases

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() -> anyhow::Result<()> {
    let fixture = Fixture::sqlite()?;
    let path = fixture.url.trim_start_matches("sqlite://").to_owned();
    assert!(!std::path::Path::new(&path).exists());
    // The `sqlite:PATH` spelling names the same file.
    let store = SqlStore::open(&format!("sqlite:{path}")).await?;
    store.commit(&varied_write_set()).await?;
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} was not created"
    );

    let mut raw = fixture.raw_connection().await?;
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await?;
    assert_eq!(journal_mode, "wal");
    let task_count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&mut raw)
        .await?;
    assert_eq!(task_count, 3);
    raw.close().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_rejects_a_missing_directory() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let url = format!("sqlite://{}/missing/herd.db", directory.path().display());
    let error = SqlStore::open(&url)
        .await
        .expect_err("the directory is missing");
    let StoreError::InvalidUrl { message, .. } = &error else {
        panic!("expected InvalidUrl, got {error:?}");
    };
    assert!(message.contains("does not exist"), "{message}");
    Ok(())
}

#[tokio::test]
async fn invalid_urls_are_rejected_with_the_supported_schemes() {
    for url in [
        "mysql://herd:s3cret@localhost/herd",
        "herd.db",
        "",
        "http://localhost:5432/herd",
    ] {
        let error = SqlStore::open(url)
            .await
            .expect_err("the URL must be refused");
        let StoreError::InvalidUrl {
            url: shown,
            message,
        } = &error
        else {
            panic!("{url:?}: expected InvalidUrl, got {error:?}");
        };
        assert!(
            message.contains("sqlite://") && message.contains("postgres://"),
            "{url:?}: the message must name the schemes that work: {message}"
        );
        let text = error.to_string();
        assert!(!text.contains("s3cret"), "password leaked: {text}");
        assert!(!shown.contains("s3cret"), "password leaked: {shown}");
    }

    let error = SqlStore::open("sqlite://").await.expect_err("no path");
    assert!(
        matches!(&error, StoreError::InvalidUrl { message, .. } if message.contains("no file path")),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let error = SqlStore::open("postgres://herd:s3cret@127.0.0.1:1/herd")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "expected Unavailable, got {error:?}"
    );
    assert!(!error.to_string().contains("s3cret"), "{error}");
}
