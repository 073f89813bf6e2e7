//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL, through one code path.
//!
//! Both engines are reached through `sqlx::Any` with the same SQL; the only differences are
//! the migration folder, the connection settings, the bind-parameter limit and, in the
//! generated multi-row statements, the placeholder spelling (`?` on SQLite, where sqlx binds
//! `$N` in quadratic time; see [`Engine::push_placeholder`]). The schema uses only types the Any
//! driver can decode: 64-bit integers (ids, counts, epoch-millisecond timestamps and 0/1 flags)
//! and TEXT.
//!
//! Layout:
//! - [`SqlStore::open`]: URL parsing, connection settings, migrations;
//! - `commit`: one transaction of multi-row upserts (`INSERT .. ON CONFLICT .. DO UPDATE`) in
//!   chunks under the engine's bind-parameter limit (rows certainly new, above the highest
//!   stored id, get a plain `INSERT`), then deletions;
//! - `load`: every row of every table, decoded into the row structs of [`super`];
//! - [`StoreError::from_sqlx`]: the one mapping from `sqlx::Error` to [`StoreError`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, Row, SqlSafeStr};

use super::{AttemptRow, BatchRow, Snapshot, Store, StoreError, TaskRow, WorkerRow, WriteSet};

/// What the URL schemes herd accepts look like, for error messages.
const SUPPORTED_URLS: &str = "use sqlite://PATH (or sqlite:PATH) for an embedded SQLite file, \
     or postgres://USER:PASSWORD@HOST:PORT/DATABASE (or postgresql://...) for PostgreSQL";

/// Upper bound on rows per multi-row statement. Larger statements stop paying off: the SQL text
/// grows and PostgreSQL plans a bigger VALUES list, while the round trips saved are already few.
const MAX_ROWS_PER_STATEMENT: usize = 1_000;

/// From this many rows, a table keyed by a never-reused integer id is written in two parts:
/// rows above the highest stored id with a plain `INSERT`, the rest with an upsert. A plain
/// insert costs PostgreSQL about two thirds of an `ON CONFLICT` one (no speculative insertion),
/// which matters for a bulk submission; below this size the extra `SELECT MAX` is not worth it.
const SPLIT_NEW_ROWS_FROM: usize = 256;

/// How long SQLite waits on a lock held by another connection before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Connections in the PostgreSQL pool. The queue has a single writer; the rest serve `load`
/// and reconnects.
const POSTGRES_MAX_CONNECTIONS: u32 = 4;

/// How long to wait for a connection before reporting the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The database engine behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// Bind parameters one statement may carry (SQLite's `SQLITE_MAX_VARIABLE_NUMBER` default
    /// since 3.32, and PostgreSQL's 16-bit parameter count).
    fn max_bind_parameters(self) -> usize {
        match self {
            Engine::Sqlite => 32_766,
            Engine::Postgres => 65_535,
        }
    }

    /// Writes the placeholder of bind parameter `number` (from 1) into `sql`.
    ///
    /// SQLite gets anonymous `?`: sqlx binds every numbered or named parameter by asking
    /// SQLite for its name, a linear scan of the statement's parameter list, which makes a
    /// statement with thousands of `$N` quadratic (100,000 task rows took minutes). With `?`
    /// the lookup finds no name and binding is linear. PostgreSQL only understands `$N`.
    fn push_placeholder(self, sql: &mut String, number: usize) {
        match self {
            Engine::Sqlite => sql.push('?'),
            Engine::Postgres => {
                sql.push('$');
                sql.push_str(&number.to_string());
            }
        }
    }

    /// The embedded migrations of this engine, in version order.
    fn migrations(self) -> Vec<Migration> {
        MIGRATIONS
            .iter()
            .map(|embedded| {
                let sql = match self {
                    Engine::Sqlite => embedded.sqlite,
                    Engine::Postgres => embedded.postgres,
                };
                Migration::new(
                    embedded.version,
                    Cow::Borrowed(embedded.description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect()
    }
}

/// One schema migration, embedded in the binary for both engines.
struct EmbeddedMigration {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, oldest first. The files live in the workspace's `migrations/` folder, one
/// sub-folder per engine; a new migration is a new pair of files and a new entry here.
const MIGRATIONS: &[EmbeddedMigration] = &[EmbeddedMigration {
    version: 1,
    description: "initial",
    sqlite: include_str!("../../../migrations/sqlite/0001_initial.sql"),
    postgres: include_str!("../../../migrations/postgres/0001_initial.sql"),
}];

/// The durable store on SQLite or PostgreSQL, reached through `sqlx::Any`.
///
/// SQLite runs with one connection in WAL mode with `synchronous=FULL`, so a commit that
/// returns has been fsynced; PostgreSQL gets a small pool. Every commit is one transaction.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    engine: Engine,
    /// The URL without password.
    description: String,
}

impl SqlStore {
    /// Connects to the database at `url`, creating a SQLite file if missing, and migrates the
    /// schema to the current version.
    ///
    /// Accepted: `sqlite://PATH`, `sqlite:PATH` (relative or absolute; percent-encoded like any
    /// URL), `postgres://...` and `postgresql://...`. Anything else is
    /// [`StoreError::InvalidUrl`].
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let url = url.trim();
        let description = redact_password(url);
        let invalid = |message: String| StoreError::InvalidUrl {
            url: description.clone(),
            message,
        };

        let scheme = match url.split_once(':') {
            Some((scheme, _)) => scheme.to_ascii_lowercase(),
            None if url.is_empty() => {
                return Err(invalid(format!("the URL is empty; {SUPPORTED_URLS}")));
            }
            None => return Err(invalid(format!("the URL has no scheme; {SUPPORTED_URLS}"))),
        };
        let (engine, connect_url, pool_options) = match scheme.as_str() {
            "sqlite" => {
                let connect_url = sqlite_connect_url(url).map_err(invalid)?;
                (Engine::Sqlite, connect_url, sqlite_pool_options())
            }
            "postgres" | "postgresql" => (
                Engine::Postgres,
                url.to_owned(),
                AnyPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT),
            ),
            other => {
                return Err(invalid(format!(
                    "herd does not support the `{other}` scheme; {SUPPORTED_URLS}"
                )));
            }
        };

        let connect_error = |error| match error {
            // Unknown parameters, unparseable host or port and the like.
            sqlx::Error::Configuration(source) => invalid(format!("{source}; {SUPPORTED_URLS}")),
            other => StoreError::from_sqlx(other),
        };
        // One direct connection first: the pool retries a refused connection until its
        // acquire timeout and then reports only "pool timed out", without the cause.
        let probe = AnyConnection::connect(&connect_url)
            .await
            .map_err(connect_error)?;
        probe.close().await.map_err(StoreError::from_sqlx)?;
        let pool = pool_options
            .connect(&connect_url)
            .await
            .map_err(connect_error)?;

        let migrator = Migrator::with_migrations(engine.migrations());
        migrator.run(&pool).await.map_err(StoreError::Migration)?;

        tracing::debug!(database = %description, "store opened and migrated");
        Ok(SqlStore {
            pool,
            engine,
            description,
        })
    }

    /// Reads every table (see [`Store::load`]).
    async fn load_all(&self) -> Result<Snapshot, StoreError> {
        let tasks = sqlx::query(
            "SELECT id, batch, name, spec, state, attempt, exit_code, reason, message, \
             created_at, updated_at FROM tasks ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_task)
        .collect::<Result<Vec<_>, _>>()?;

        let attempts = sqlx::query(
            "SELECT task_id, number, worker_id, worker_name, state, exit_code, reason, message, \
             assigned_at, download_started_at, run_started_at, upload_started_at, ended_at, \
             transfers FROM attempts ORDER BY task_id, number",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_attempt)
        .collect::<Result<Vec<_>, _>>()?;

        let batches = sqlx::query("SELECT name, paused, created_at FROM batches ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?
            .iter()
            .map(decode_batch)
            .collect::<Result<Vec<_>, _>>()?;

        let workers = sqlx::query(
            "SELECT id, name, batch, concurrency, prefetch, docker, allow_privileged, cores, \
             memory_bytes, version, registered_at, last_seen, lost FROM workers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_worker)
        .collect::<Result<Vec<_>, _>>()?;

        let counters = sqlx::query("SELECT name, value FROM counters ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?
            .iter()
            .map(|row| Ok((column(row, "name")?, column(row, "value")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;

        Ok(Snapshot {
            tasks,
            attempts,
            batches,
            workers,
            counters,
        })
    }

    /// Applies a write set in one transaction (see [`Store::commit`]).
    async fn commit_all(&self, writes: &WriteSet) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        let mut writer = Writer {
            connection: &mut transaction,
            engine: self.engine,
        };

        // Tasks before attempts: an attempt refers to its task.
        let tasks = last_per_key(&writes.tasks, |task| task.id);
        let (new_tasks, tasks) = writer.split_new_rows(&TASKS, tasks, |task| task.id).await?;
        writer
            .rows(&TASKS, &new_tasks, bind_task, Write::Insert)
            .await?;
        writer
            .rows(&TASKS, &tasks, bind_task, Write::Upsert)
            .await?;
        let attempts = last_per_key(&writes.attempts, |attempt| {
            (attempt.task_id, attempt.number)
        });
        writer
            .rows(&ATTEMPTS, &attempts, bind_attempt, Write::Upsert)
            .await?;
        let batches = last_per_key(&writes.batches, |batch| batch.name.as_str());
        writer
            .rows(&BATCHES, &batches, bind_batch, Write::Upsert)
            .await?;
        let workers = last_per_key(&writes.workers, |worker| worker.id);
        let (new_workers, workers) = writer
            .split_new_rows(&WORKERS, workers, |worker| worker.id)
            .await?;
        writer
            .rows(&WORKERS, &new_workers, bind_worker, Write::Insert)
            .await?;
        writer
            .rows(&WORKERS, &workers, bind_worker, Write::Upsert)
            .await?;
        let counters = last_per_key(&writes.counters, |(name, _)| name.as_str());
        writer
            .rows(&COUNTERS, &counters, bind_counter, Write::Upsert)
            .await?;

        let deleted_tasks = last_per_key(&writes.deleted_tasks, |id| *id);
        // Explicit, though the foreign key cascades: the schema must not be the only guard.
        writer.delete(&ATTEMPTS, "task_id", &deleted_tasks).await?;
        writer.delete(&TASKS, "id", &deleted_tasks).await?;
        let deleted_batches = last_per_key(&writes.deleted_batches, |name| name.as_str());
        writer.delete(&BATCHES, "name", &deleted_batches).await?;
        let deleted_workers = last_per_key(&writes.deleted_workers, |id| *id);
        writer.delete(&WORKERS, "id", &deleted_workers).await?;

        transaction.commit().await.map_err(StoreError::from_sqlx)
    }
}

impl Store for SqlStore {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(self.load_all())
    }

    fn commit<'a>(&'a self, writes: &'a WriteSet) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.commit_all(writes))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

impl StoreError {
    /// The one mapping from a sqlx error to a [`StoreError`]: connection, I/O and pool errors
    /// (and the database refusing connections or being busy) are [`StoreError::Unavailable`],
    /// decode errors are [`StoreError::Corrupt`], anything else is [`StoreError::Database`].
    pub fn from_sqlx(error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => StoreError::Unavailable(error),
            sqlx::Error::Database(ref database_error) if is_unavailable(&**database_error) => {
                StoreError::Unavailable(error)
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::corrupt("value", error)
            }
            other => StoreError::Database(other),
        }
    }
}

/// Whether a database error means "cannot reach or use the database right now" rather than
/// "this statement is wrong".
fn is_unavailable(error: &dyn DatabaseError) -> bool {
    if let Some(sqlite) = error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // Primary result codes: BUSY, LOCKED, IOERR, CANTOPEN, FULL.
        let primary = sqlite
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .map(|code| code & 0xff);
        return matches!(primary, Some(5 | 6 | 10 | 13 | 14));
    }
    if let Some(postgres) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // Class 08 (connection exception), 53 (insufficient resources), and the server
        // shutting down or starting up (57P01..57P03).
        let code = postgres.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57P01" | "57P02" | "57P03");
    }
    false
}

/// Pool settings for SQLite: one connection (the queue is the only writer), never recycled,
/// set up for durability at every connect. Not pinged before each use: it is a file opened in
/// this process, with nothing between that could break it, and a ping costs a round trip to
/// sqlx's SQLite thread before every commit.
fn sqlite_pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|connection, _metadata| {
            Box::pin(async move {
                // WAL lets readers run beside the writer and makes commits one append;
                // synchronous=FULL fsyncs the WAL at every commit, so an acknowledged write
                // survives a power cut. Foreign keys are off by default in SQLite.
                let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                    .fetch_one(&mut *connection)
                    .await?;
                if !journal_mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(
                        journal_mode,
                        "SQLite refused WAL journaling (in-memory database or a file system \
                         without shared memory); commits stay atomic but slower"
                    );
                }
                for pragma in [
                    "PRAGMA synchronous = FULL",
                    "PRAGMA foreign_keys = ON",
                    // `PRAGMA` takes no bind parameters; the value is a constant of ours.
                    &format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
                ] {
                    sqlx::query(AssertSqlSafe(pragma))
                        .execute(&mut *connection)
                        .await?;
                }
                Ok(())
            })
        })
}

/// Turns a user's `sqlite://PATH` or `sqlite:PATH` into the URL sqlx is given, with
/// `mode=rwc` (create if missing) unless a mode is set. Errors are messages for
/// [`StoreError::InvalidUrl`].
fn sqlite_connect_url(url: &str) -> Result<String, String> {
    let after_scheme = &url["sqlite:".len()..];
    let rest = after_scheme.strip_prefix("//").unwrap_or(after_scheme);
    let (encoded_path, parameters) = match rest.split_once('?') {
        Some((path, parameters)) => (path, Some(parameters)),
        None => (rest, None),
    };
    let path = percent_decode(encoded_path)?;
    if path.is_empty() {
        return Err(format!(
            "no file path after the scheme; {SUPPORTED_URLS}, e.g. sqlite:///var/lib/herd/herd.db"
        ));
    }
    // `sqlite:////abs` names the same file as `sqlite:///abs`; more than one leading slash
    // would make sqlx read a host name.
    let path = match path.strip_prefix("//") {
        Some(_) => format!("/{}", path.trim_start_matches('/')),
        None => path,
    };

    let in_memory = path == ":memory:"
        || parameters.is_some_and(|parameters| parameters.contains("mode=memory"));
    if !in_memory {
        let parent = Path::new(&path)
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent
            && !parent.is_dir()
        {
            return Err(format!(
                "directory `{}` does not exist; create it or choose another path for the \
                 SQLite file",
                parent.display()
            ));
        }
    }

    // Build `sqlite:PATH` rather than `sqlite://PATH`: after `//` a URL parser would read a
    // relative path's first segment as a host name and lowercase it.
    let mut connect_url = format!("sqlite:{}", percent_encode(&path));
    let parameters = parameters.unwrap_or_default();
    let has_mode = parameters.split('&').any(|pair| pair.starts_with("mode="));
    let extra = if has_mode { "" } else { "mode=rwc" };
    let joined: Vec<&str> = [parameters, extra]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
    if !joined.is_empty() {
        connect_url.push('?');
        connect_url.push_str(&joined.join("&"));
    }
    Ok(connect_url)
}

/// Decodes `%XX` escapes in a URL path.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let value = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "bad percent escape at byte {index} of the path; write `%25` for a \
                         literal `%`"
                    )
                })?;
            decoded.push(value);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "the path is not UTF-8 once percent-decoded".to_owned())
}

/// Escapes every byte of a path that could change the URL's meaning.
fn percent_encode(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/:+,=@".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The URL without its password (`user:secret@host` becomes `user@host`, and query parameters
/// named like `password` are dropped), for logs and error messages.
fn redact_password(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (before_fragment, None),
    };

    let mut redacted = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user_info, host)) => {
                    let user = user_info
                        .split_once(':')
                        .map_or(user_info, |(user, _)| user);
                    format!("{user}@{host}")
                }
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let key = pair.split('=').next().unwrap_or_default();
                !key.to_ascii_lowercase().contains("password")
            })
            .collect();
        if !kept.is_empty() {
            redacted.push('?');
            redacted.push_str(&kept.join("&"));
        }
    }
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(fragment);
    }
    redacted
}

/// A query on the Any driver with its arguments.
type AnyQuery = Query<'static, Any, AnyArguments>;

/// A table [`Writer`] writes, and how.
struct Table {
    name: &'static str,
    /// Every column, in the order the bind function binds them.
    columns: &'static [&'static str],
    /// The primary key columns (the conflict target).
    key: &'static [&'static str],
}

const TASKS: Table = Table {
    name: "tasks",
    columns: &[
        "id",
        "batch",
        "name",
        "spec",
        "state",
        "attempt",
        "exit_code",
        "reason",
        "message",
        "created_at",
        "updated_at",
    ],
    key: &["id"],
};

const ATTEMPTS: Table = Table {
    name: "attempts",
    columns: &[
        "task_id",
        "number",
        "worker_id",
        "worker_name",
        "state",
        "exit_code",
        "reason",
        "message",
        "assigned_at",
        "download_started_at",
        "run_started_at",
        "upload_started_at",
        "ended_at",
        "transfers",
    ],
    key: &["task_id", "number"],
};

const BATCHES: Table = Table {
    name: "batches",
    columns: &["name", "paused", "created_at"],
    key: &["name"],
};

const WORKERS: Table = Table {
    name: "workers",
    columns: &[
        "id",
        "name",
        "batch",
        "concurrency",
        "prefetch",
        "docker",
        "allow_privileged",
        "cores",
        "memory_bytes",
        "version",
        "registered_at",
        "last_seen",
        "lost",
    ],
    key: &["id"],
};

const COUNTERS: Table = Table {
    name: "counters",
    columns: &["name", "value"],
    key: &["name"],
};

fn bind_task(query: AnyQuery, task: &TaskRow) -> AnyQuery {
    query
        .bind(task.id)
        .bind(task.batch.as_str())
        .bind(task.name.as_deref())
        .bind(task.spec.as_str())
        .bind(task.state.as_str())
        .bind(task.attempt)
        .bind(task.exit_code)
        .bind(task.reason.as_deref())
        .bind(task.message.as_deref())
        .bind(task.created_at)
        .bind(task.updated_at)
}

fn bind_attempt(query: AnyQuery, attempt: &AttemptRow) -> AnyQuery {
    query
        .bind(attempt.task_id)
        .bind(attempt.number)
        .bind(attempt.worker_id)
        .bind(attempt.worker_name.as_str())
        .bind(attempt.state.as_str())
        .bind(attempt.exit_code)
        .bind(attempt.reason.as_deref())
        .bind(attempt.message.as_deref())
        .bind(attempt.assigned_at)
        .bind(attempt.download_started_at)
        .bind(attempt.run_started_at)
        .bind(attempt.upload_started_at)
        .bind(attempt.ended_at)
        .bind(attempt.transfers.as_str())
}

fn bind_batch(query: AnyQuery, batch: &BatchRow) -> AnyQuery {
    query
        .bind(batch.name.as_str())
        .bind(i64::from(batch.paused))
        .bind(batch.created_at)
}

fn bind_worker(query: AnyQuery, worker: &WorkerRow) -> AnyQuery {
    query
        .bind(worker.id)
        .bind(worker.name.as_str())
        .bind(worker.batch.as_str())
        .bind(worker.concurrency)
        .bind(worker.prefetch)
        .bind(i64::from(worker.docker))
        .bind(i64::from(worker.allow_privileged))
        .bind(worker.cores)
        .bind(worker.memory_bytes)
        .bind(worker.version.as_str())
        .bind(worker.registered_at)
        .bind(worker.last_seen)
        .bind(i64::from(worker.lost))
}

fn bind_counter(query: AnyQuery, counter: &(String, i64)) -> AnyQuery {
    query.bind(counter.0.as_str()).bind(counter.1)
}

/// The rows of `rows` whose key does not appear again later in the list: the last image of
/// each key wins, as if the rows were applied one by one. (PostgreSQL refuses to update the
/// same row twice in one statement.) Order of the survivors is preserved.
fn last_per_key<'r, T, K: Hash + Eq>(rows: &'r [T], key: impl Fn(&'r T) -> K) -> Vec<&'r T> {
    let mut seen = HashSet::with_capacity(rows.len());
    let mut kept: Vec<&T> = rows
        .iter()
        .rev()
        .filter(|row| seen.insert(key(row)))
        .collect();
    kept.reverse();
    kept
}

/// Writes within one transaction.
struct Writer<'c> {
    connection: &'c mut AnyConnection,
    engine: Engine,
}

/// How [`Writer::rows`] treats a row whose key is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Fail (the caller knows the rows are new).
    Insert,
    /// Replace it.
    Upsert,
}

impl Writer<'_> {
    /// Splits rows of a table keyed by one integer column into those whose key is above the
    /// highest stored key (certainly new: `.0`) and the others (`.1`). Small lists are not
    /// split: everything goes to `.1`.
    ///
    /// Sound whatever the id policy, since the transaction is the only writer: a key above the
    /// maximum cannot be stored. (Were a second writer to slip a row in, the plain insert would
    /// fail on the primary key rather than overwrite anything.)
    async fn split_new_rows<'r, T>(
        &mut self,
        table: &Table,
        rows: Vec<&'r T>,
        key: fn(&T) -> i64,
    ) -> Result<(Vec<&'r T>, Vec<&'r T>), StoreError> {
        if rows.len() < SPLIT_NEW_ROWS_FROM {
            return Ok((Vec::new(), rows));
        }
        let [key_column] = table.key else {
            return Ok((Vec::new(), rows));
        };
        let highest: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT MAX({key_column}) FROM {}",
            table.name
        )))
        .fetch_one(&mut *self.connection)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(match highest {
            None => (rows, Vec::new()),
            Some(highest) => rows.into_iter().partition(|row| key(row) > highest),
        })
    }

    /// Writes `rows` with multi-row `INSERT` statements (with `ON CONFLICT (key) DO UPDATE` for
    /// [`Write::Upsert`]), as many rows per statement as the parameter limit allows.
    async fn rows<T>(
        &mut self,
        table: &Table,
        rows: &[&T],
        bind: fn(AnyQuery, &T) -> AnyQuery,
        mode: Write,
    ) -> Result<(), StoreError> {
        let engine = self.engine;
        let rows_per_statement =
            (engine.max_bind_parameters() / table.columns.len()).min(MAX_ROWS_PER_STATEMENT);
        // Every full chunk shares one SQL text, so the driver prepares it once.
        let mut full_chunk_sql: Option<String> = None;
        for chunk in rows.chunks(rows_per_statement) {
            let sql = if chunk.len() == rows_per_statement {
                full_chunk_sql
                    .get_or_insert_with(|| insert_sql(engine, table, rows_per_statement, mode))
                    .clone()
            } else {
                insert_sql(engine, table, chunk.len(), mode)
            };
            let mut query: AnyQuery = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = bind(query, row);
            }
            query
                .execute(&mut *self.connection)
                .await
                .map_err(StoreError::from_sqlx)?;
        }
        Ok(())
    }

    /// Deletes the rows of `table` whose `column` is one of `keys`.
    async fn delete<K: KeyValue>(
        &mut self,
        table: &Table,
        column: &str,
        keys: &[&K],
    ) -> Result<(), StoreError> {
        let engine = self.engine;
        for chunk in keys.chunks(engine.max_bind_parameters().min(MAX_ROWS_PER_STATEMENT)) {
            let mut sql = format!("DELETE FROM {} WHERE {column} IN (", table.name);
            for number in 1..=chunk.len() {
                if number > 1 {
                    sql.push_str(", ");
                }
                engine.push_placeholder(&mut sql, number);
            }
            sql.push(')');
            let mut query: AnyQuery = sqlx::query(AssertSqlSafe(sql));
            for key in chunk {
                query = key.bind_to(query);
            }
            query
                .execute(&mut *self.connection)
                .await
                .map_err(StoreError::from_sqlx)?;
        }
        Ok(())
    }
}

/// `INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)`, followed for [`Write::Upsert`] by
/// `ON CONFLICT (a) DO UPDATE SET b = excluded.b` (with `?` placeholders on SQLite).
fn insert_sql(engine: Engine, table: &Table, row_count: usize, mode: Write) -> String {
    let column_count = table.columns.len();
    let mut sql = String::with_capacity(128 + row_count * column_count * 8);
    sql.push_str("INSERT INTO ");
    sql.push_str(table.name);
    sql.push_str(" (");
    sql.push_str(&table.columns.join(", "));
    sql.push_str(") VALUES ");
    let mut parameter = 0;
    for row in 0..row_count {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..column_count {
            if column > 0 {
                sql.push_str(", ");
            }
            parameter += 1;
            engine.push_placeholder(&mut sql, parameter);
        }
        sql.push(')');
    }
    if mode == Write::Insert {
        return sql;
    }
    sql.push_str(" ON CONFLICT (");
    sql.push_str(&table.key.join(", "));
    sql.push_str(") DO UPDATE SET ");
    let updates: Vec<String> = table
        .columns
        .iter()
        .filter(|column| !table.key.contains(column))
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    sql.push_str(&updates.join(", "));
    sql
}

/// A key value that can be bound into a `DELETE .. WHERE column IN (..)`.
trait KeyValue: Sync {
    fn bind_to(&self, query: AnyQuery) -> AnyQuery;
}

impl KeyValue for i64 {
    fn bind_to(&self, query: AnyQuery) -> AnyQuery {
        query.bind(*self)
    }
}

impl KeyValue for String {
    fn bind_to(&self, query: AnyQuery) -> AnyQuery {
        query.bind(self.as_str())
    }
}

/// Reads one column; a NULL where none belongs or a wrong type is [`StoreError::Corrupt`].
fn column<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name).map_err(StoreError::from_sqlx)
}

/// Reads a 0/1 column as a flag.
fn flag(
    row: &AnyRow,
    name: &str,
    table: &str,
    key: &dyn std::fmt::Display,
) -> Result<bool, StoreError> {
    match column::<i64>(row, name)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(StoreError::corrupt(
            format!("{table} row {key}, column `{name}`"),
            format!("it holds {other}, expected 0 or 1"),
        )),
    }
}

fn decode_task(row: &AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        id: column(row, "id")?,
        batch: column(row, "batch")?,
        name: column(row, "name")?,
        spec: column(row, "spec")?,
        state: column(row, "state")?,
        attempt: column(row, "attempt")?,
        exit_code: column(row, "exit_code")?,
        reason: column(row, "reason")?,
        message: column(row, "message")?,
        created_at: column(row, "created_at")?,
        updated_at: column(row, "updated_at")?,
    })
}

fn decode_attempt(row: &AnyRow) -> Result<AttemptRow, StoreError> {
    Ok(AttemptRow {
        task_id: column(row, "task_id")?,
        number: column(row, "number")?,
        worker_id: column(row, "worker_id")?,
        worker_name: column(row, "worker_name")?,
        state: column(row, "state")?,
        exit_code: column(row, "exit_code")?,
        reason: column(row, "reason")?,
        message: column(row, "message")?,
        assigned_at: column(row, "assigned_at")?,
        download_started_at: column(row, "download_started_at")?,
        run_started_at: column(row, "run_started_at")?,
        upload_started_at: column(row, "upload_started_at")?,
        ended_at: column(row, "ended_at")?,
        transfers: column(row, "transfers")?,
    })
}

fn decode_batch(row: &AnyRow) -> Result<BatchRow, StoreError> {
    let name: String = column(row, "name")?;
    Ok(BatchRow {
        paused: flag(row, "paused", "batches", &name)?,
        created_at: column(row, "created_at")?,
        name,
    })
}

fn decode_worker(row: &AnyRow) -> Result<WorkerRow, StoreError> {
    let id: i64 = column(row, "id")?;
    Ok(WorkerRow {
        id,
        name: column(row, "name")?,
        batch: column(row, "batch")?,
        concurrency: column(row, "concurrency")?,
        prefetch: column(row, "prefetch")?,
        docker: flag(row, "docker", "workers", &id)?,
        allow_privileged: flag(row, "allow_privileged", "workers", &id)?,
        cores: column(row, "cores")?,
        memory_bytes: column(row, "memory_bytes")?,
        version: column(row, "version")?,
        registered_at: column(row, "registered_at")?,
        last_seen: column(row, "last_seen")?,
        lost: flag(row, "lost", "workers", &id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_passwords() {
        assert_eq!(
            redact_password("postgres://herd:secret@db:5432/herd?sslmode=require&password=x"),
            "postgres://herd@db:5432/herd?sslmode=require"
        );
        assert_eq!(redact_password("postgres://db/herd"), "postgres://db/herd");
        assert_eq!(
            redact_password("sqlite:///var/lib/herd.db"),
            "sqlite:///var/lib/herd.db"
        );
        assert_eq!(redact_password("sqlite:herd.db"), "sqlite:herd.db");
    }

    #[test]
    fn sqlite_urls_become_opaque_paths_that_create_the_file() {
        let directory = std::env::temp_dir();
        let absolute = format!("{}/Herd Test.db", directory.display());
        assert_eq!(
            sqlite_connect_url(&format!("sqlite://{absolute}")).unwrap(),
            format!("sqlite:{}?mode=rwc", percent_encode(&absolute))
        );
        assert_eq!(
            sqlite_connect_url("sqlite:Herd.db").unwrap(),
            "sqlite:Herd.db?mode=rwc"
        );
        assert_eq!(
            sqlite_connect_url("sqlite://Herd.db").unwrap(),
            "sqlite:Herd.db?mode=rwc"
        );
        assert_eq!(
            sqlite_connect_url("sqlite:my%20db.db?mode=ro").unwrap(),
            "sqlite:my%20db.db?mode=ro"
        );
        assert!(
            sqlite_connect_url("sqlite://")
                .unwrap_err()
                .contains("no file path")
        );
        assert!(
            sqlite_connect_url("sqlite:///no/such/directory/herd.db")
                .unwrap_err()
                .contains("does not exist")
        );
    }

    /// The durability settings hold on the store's own connection (they are per connection,
    /// so the behaviour suite cannot see them from outside).
    #[tokio::test]
    async fn sqlite_connection_is_set_up_for_durability() -> Result<(), StoreError> {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", directory.path().join("herd.db").display());
        let store = SqlStore::open(&url).await?;
        let pragma = |name: &'static str| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(name)
                    .fetch_one(&pool)
                    .await
                    .map_err(StoreError::from_sqlx)
            }
        };
        assert_eq!(pragma("PRAGMA synchronous").await?, 2, "synchronous=FULL");
        assert_eq!(pragma("PRAGMA foreign_keys").await?, 1);
        assert_eq!(pragma("PRAGMA busy_timeout").await?, 5_000);
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        assert_eq!(journal_mode, "wal");
        Ok(())
    }

    #[test]
    fn last_occurrence_of_a_key_wins() {
        let rows = [(1, "a"), (2, "b"), (1, "c"), (3, "d"), (2, "e")];
        let kept: Vec<_> = last_per_key(&rows, |row| row.0)
            .into_iter()
            .copied()
            .collect();
        assert_eq!(kept, [(1, "c"), (3, "d"), (2, "e")]);
    }

    #[test]
    fn insert_sql_numbers_parameters_across_rows() {
        assert_eq!(
            insert_sql(Engine::Postgres, &COUNTERS, 2, Write::Insert),
            "INSERT INTO counters (name, value) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            insert_sql(Engine::Postgres, &COUNTERS, 2, Write::Upsert),
            "INSERT INTO counters (name, value) VALUES ($1, $2), ($3, $4) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        );
        assert_eq!(
            insert_sql(Engine::Sqlite, &COUNTERS, 2, Write::Upsert),
            "INSERT INTO counters (name, value) VALUES (?, ?), (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        );
    }
}
