//! Durable state: the server's in-memory queue is mirrored here, row by row.
//!
//! The queue never reads the database while it runs: it loads a [`Snapshot`] at start-up and
//! from then on only writes. Every change is a row image (insert-or-replace) or a deletion,
//! gathered into a [`WriteSet`] that one transaction applies. The journal coalesces many
//! changes into one write set, so durability costs one commit per group, not one per change.
//!
//! Rows are plain data in database types (`i64` ids, `String` states); the queue converts them
//! to domain types. Database errors become [`StoreError`] in exactly one place
//! ([`StoreError::from_sqlx`]).

use futures::future::BoxFuture;

mod sql;

pub use sql::SqlStore;

/// One task, as stored in table `tasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Task id (never reused).
    pub id: i64,
    /// Batch name.
    pub batch: String,
    /// Optional task name.
    pub name: Option<String>,
    /// The task specification: the JSON of its `herd_proto::TaskRequest`, immutable.
    pub spec: String,
    /// Lowercase task state.
    pub state: String,
    /// Current (or next) attempt number, from 1.
    pub attempt: i64,
    /// Exit code of the last attempt that exited.
    pub exit_code: Option<i64>,
    /// Failure or cancellation reason (snake_case).
    pub reason: Option<String>,
    /// Details for humans.
    pub message: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
    /// The user who queued it; `None` for tasks from before herd had users.
    pub owner: Option<i64>,
}

/// One attempt of a task, as stored in table `attempts` (key: `task_id`, `number`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// The task.
    pub task_id: i64,
    /// Attempt number, from 1.
    pub number: i64,
    /// The worker that ran it.
    pub worker_id: i64,
    /// That worker's name.
    pub worker_name: String,
    /// Lowercase state of this attempt.
    pub state: String,
    /// Exit code, when the command exited.
    pub exit_code: Option<i64>,
    /// Failure or cancellation reason.
    pub reason: Option<String>,
    /// Details for humans.
    pub message: Option<String>,
    /// Milliseconds since the epoch.
    pub assigned_at: i64,
    /// Milliseconds since the epoch.
    pub download_started_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub run_started_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub upload_started_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub ended_at: Option<i64>,
    /// JSON array of transfers (direction, uri, bytes, files).
    pub transfers: String,
}

/// A batch's own settings (its tasks are in `tasks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// Batch name (key).
    pub name: String,
    /// Paused batches hand out no task.
    pub paused: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// The user who owns it; `None` while no user does.
    pub owner: Option<i64>,
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Worker id (never reused).
    pub id: i64,
    /// Name (host name unless given).
    pub name: String,
    /// Batch it serves.
    pub batch: String,
    /// Slots.
    pub concurrency: i64,
    /// Extra tasks staged ahead.
    pub prefetch: i64,
    /// Runs Docker tasks.
    pub docker: bool,
    /// Runs privileged Docker tasks.
    pub allow_privileged: bool,
    /// CPU cores of its host.
    pub cores: i64,
    /// Memory of its host, bytes.
    pub memory_bytes: i64,
    /// herd version.
    pub version: String,
    /// Milliseconds since the epoch.
    pub registered_at: i64,
    /// Milliseconds since the epoch.
    pub last_seen: i64,
    /// Declared lost (silent too long); kept for history.
    pub lost: bool,
    /// The token it last connected with.
    pub token_id: Option<i64>,
    /// SHA-256 (hex) of the key that resumes its identity.
    pub resume_hash: Option<String>,
}

/// A user, as stored in table `users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// User id (never reused).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// May see and do everything.
    pub admin: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A token, as stored in table `tokens`: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Token id (never reused).
    pub id: i64,
    /// Its user.
    pub user_id: i64,
    /// `user` or `worker`.
    pub kind: String,
    /// A worker token limited to one batch.
    pub batch: Option<String>,
    /// What it is for.
    pub label: String,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch, once revoked.
    pub revoked_at: Option<i64>,
}

/// A submit made with an idempotency key, as stored in table `submissions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRow {
    /// `USER_ID:KEY`.
    pub key: String,
    /// The user who made it.
    pub user_id: i64,
    /// Its first task (its ids are consecutive).
    pub first_task_id: i64,
    /// How many tasks it queued.
    pub task_count: i64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Everything the store holds, read once at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every task.
    pub tasks: Vec<TaskRow>,
    /// Every attempt of every task.
    pub attempts: Vec<AttemptRow>,
    /// Every batch row.
    pub batches: Vec<BatchRow>,
    /// Every worker.
    pub workers: Vec<WorkerRow>,
    /// Every user.
    pub users: Vec<UserRow>,
    /// Every token.
    pub tokens: Vec<TokenRow>,
    /// Submits made with an idempotency key, not yet expired.
    pub submissions: Vec<SubmissionRow>,
    /// Named counters (`next_task_id`, `next_worker_id`).
    pub counters: Vec<(String, i64)>,
}

/// Changes applied in one transaction. Within one write set a key appears at most once per
/// list (the journal coalesces); the store applies upserts first, then deletions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// Tasks to insert or replace.
    pub tasks: Vec<TaskRow>,
    /// Attempts to insert or replace.
    pub attempts: Vec<AttemptRow>,
    /// Tasks to delete, with their attempts.
    pub deleted_tasks: Vec<i64>,
    /// Batches to insert or replace.
    pub batches: Vec<BatchRow>,
    /// Batches to delete (their tasks are listed in `deleted_tasks`).
    pub deleted_batches: Vec<String>,
    /// Workers to insert or replace.
    pub workers: Vec<WorkerRow>,
    /// Workers to delete.
    pub deleted_workers: Vec<i64>,
    /// Users to insert or replace.
    pub users: Vec<UserRow>,
    /// Tokens to insert or replace (tokens are revoked, never deleted).
    pub tokens: Vec<TokenRow>,
    /// Submits to remember.
    pub submissions: Vec<SubmissionRow>,
    /// Expired submits to forget, by key.
    pub deleted_submissions: Vec<String>,
    /// Counters to set.
    pub counters: Vec<(String, i64)>,
}

impl WriteSet {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.attempts.is_empty()
            && self.deleted_tasks.is_empty()
            && self.batches.is_empty()
            && self.deleted_batches.is_empty()
            && self.workers.is_empty()
            && self.deleted_workers.is_empty()
            && self.users.is_empty()
            && self.tokens.is_empty()
            && self.submissions.is_empty()
            && self.deleted_submissions.is_empty()
            && self.counters.is_empty()
    }
}

/// What went wrong with the database. Messages say what failed; the cause is the `source`
/// (see [`crate::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one herd can use.
    #[error("invalid database URL `{url}`: {message}")]
    InvalidUrl {
        /// The URL with any password removed.
        url: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The database cannot be reached (connection refused, pool closed, I/O error).
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Migrating the schema failed.
    #[error("the database migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded.
    #[error("corrupt {what} in the database; repair or remove it, or restore a backup")]
    Corrupt {
        /// Which row (and column), e.g. `task row 12, column spec`.
        what: String,
        /// What is wrong with it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other database error.
    #[error("the database refused a statement")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether the database refused the statement itself (invalid data, a constraint): trying
    /// the same write again cannot succeed. Anything else may pass on a later try.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Database(_))
    }

    /// A value of row `what` that cannot be read, for `source`.
    pub fn corrupt(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// The durable side of the queue. Implemented by [`SqlStore`] (SQLite and PostgreSQL).
pub trait Store: Send + Sync + 'static {
    /// Reads everything, once, at start-up.
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, StoreError>>;
    /// Applies a write set in one transaction: all of it or nothing.
    fn commit<'a>(&'a self, writes: &'a WriteSet) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The database, for logs (no password).
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_statement_is_permanent() {
        assert!(StoreError::Database(sqlx::Error::RowNotFound).is_permanent());
        assert!(!StoreError::Unavailable(sqlx::Error::PoolTimedOut).is_permanent());
        assert!(!StoreError::Unavailable(sqlx::Error::PoolClosed).is_permanent());
    }
}
