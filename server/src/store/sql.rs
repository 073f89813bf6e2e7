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
use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, SqlSafeStr};

use super::{Snapshot, Store, StoreError, WriteSet};

mod rows;

use rows::*;

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
const MIGRATIONS: &[EmbeddedMigration] = &[
    EmbeddedMigration {
        version: 1,
        description: "initial",
        sqlite: include_str!("../../../migrations/sqlite/0001_initial.sql"),
        postgres: include_str!("../../../migrations/postgres/0001_initial.sql"),
    },
    EmbeddedMigration {
        version: 2,
        description: "access",
        sqlite: include_str!("../../../migrations/sqlite/0002_access.sql"),
        postgres: include_str!("../../../migrations/postgres/0002_access.sql"),
    },
    EmbeddedMigration {
        version: 3,
        description: "submissions",
        sqlite: include_str!("../../../migrations/sqlite/0003_submissions.sql"),
        postgres: include_str!("../../../migrations/postgres/0003_submissions.sql"),
    },
];

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
                let connect_url =
                    sqlite_connect_url(url).map_err(|error| invalid(error.to_string()))?;
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
             created_at, updated_at, owner FROM tasks ORDER BY id",
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

        let batches =
            sqlx::query("SELECT name, paused, created_at, owner FROM batches ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?
                .iter()
                .map(decode_batch)
                .collect::<Result<Vec<_>, _>>()?;

        let workers = sqlx::query(
            "SELECT id, name, batch, concurrency, prefetch, docker, allow_privileged, cores, \
             memory_bytes, version, registered_at, last_seen, lost, token_id, resume_hash \
             FROM workers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_worker)
        .collect::<Result<Vec<_>, _>>()?;

        let users = sqlx::query("SELECT id, name, admin, created_at FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?
            .iter()
            .map(decode_user)
            .collect::<Result<Vec<_>, _>>()?;

        let tokens = sqlx::query(
            "SELECT id, user_id, kind, batch, label, hash, created_at, revoked_at FROM tokens \
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_token)
        .collect::<Result<Vec<_>, _>>()?;

        let submissions = sqlx::query(
            "SELECT key, user_id, first_task_id, task_count, created_at FROM submissions \
             ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?
        .iter()
        .map(decode_submission)
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
            users,
            tokens,
            submissions,
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

        // Users before tokens (a token refers to its user), tokens before anything else.
        let users = last_per_key(&writes.users, |user| user.id);
        writer
            .rows(&USERS, &users, bind_user, Write::Upsert)
            .await?;
        let tokens = last_per_key(&writes.tokens, |token| token.id);
        writer
            .rows(&TOKENS, &tokens, bind_token, Write::Upsert)
            .await?;

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
        let submissions = last_per_key(&writes.submissions, |row| row.key.as_str());
        writer
            .rows(&SUBMISSIONS, &submissions, bind_submission, Write::Upsert)
            .await?;
        let deleted_submissions = last_per_key(&writes.deleted_submissions, |key| key.as_str());
        writer
            .delete(&SUBMISSIONS, "key", &deleted_submissions)
            .await?;

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
        // Class 08 (connection exception), 40 (transaction rollback: serialization failure,
        // deadlock), 53 (insufficient resources), a lock not available or a canceled
        // statement (55P03, 57014), and the server shutting down or starting up
        // (57P01..57P03): worth trying again, unlike a refused statement (e.g. 22021, a NUL
        // byte in text), which the journal does not retry.
        let code = postgres.code();
        return code.starts_with("08")
            || code.starts_with("40")
            || code.starts_with("53")
            || matches!(code, "55P03" | "57014" | "57P01" | "57P02" | "57P03");
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

/// Why a `sqlite:` URL names no file herd can use (the message of [`StoreError::InvalidUrl`]).
#[derive(Debug, thiserror::Error)]
enum SqlitePathError {
    #[error("no file path after the scheme; {SUPPORTED_URLS}, e.g. sqlite:///var/lib/herd/herd.db")]
    NoPath,
    #[error("bad percent escape at byte {0} of the path; write `%25` for a literal `%`")]
    BadEscape(usize),
    #[error("the path is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error(
        "directory `{}` does not exist; create it or choose another path for the SQLite file",
        .0.display()
    )]
    NoDirectory(std::path::PathBuf),
}

/// Turns a user's `sqlite://PATH` or `sqlite:PATH` into the URL sqlx is given, with
/// `mode=rwc` (create if missing) unless a mode is set.
fn sqlite_connect_url(url: &str) -> Result<String, SqlitePathError> {
    let after_scheme = &url["sqlite:".len()..];
    let rest = after_scheme.strip_prefix("//").unwrap_or(after_scheme);
    let (encoded_path, parameters) = match rest.split_once('?') {
        Some((path, parameters)) => (path, Some(parameters)),
        None => (rest, None),
    };
    let path = percent_decode(encoded_path)?;
    if path.is_empty() {
        return Err(SqlitePathError::NoPath);
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
            return Err(SqlitePathError::NoDirectory(parent.to_path_buf()));
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
fn percent_decode(text: &str) -> Result<String, SqlitePathError> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let value = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(SqlitePathError::BadEscape(index))?;
            decoded.push(value);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| SqlitePathError::NotUtf8)
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
                .to_string()
                .contains("no file path")
        );
        assert!(
            sqlite_connect_url("sqlite:///no/such/directory/herd.db")
                .unwrap_err()
                .to_string()
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
