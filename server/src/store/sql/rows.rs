//! Rows on the wire to the database: the tables and their columns, binding row structs to
//! multi-row statements, the [`Writer`] that applies them in chunks within one transaction,
//! and decoding rows read back into the row structs of [`crate::store`].

use std::collections::HashSet;
use std::hash::Hash;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};

use super::{Engine, MAX_ROWS_PER_STATEMENT, SPLIT_NEW_ROWS_FROM};
use crate::store::{
    AttemptRow, BatchRow, StoreError, SubmissionRow, TaskRow, TokenRow, UserRow, WorkerRow,
};

/// A query on the Any driver with its arguments.
pub(super) type AnyQuery = Query<'static, Any, AnyArguments>;

/// A table [`Writer`] writes, and how.
pub(super) struct Table {
    name: &'static str,
    /// Every column, in the order the bind function binds them.
    columns: &'static [&'static str],
    /// The primary key columns (the conflict target).
    key: &'static [&'static str],
}

pub(super) const TASKS: Table = Table {
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
        "owner",
    ],
    key: &["id"],
};

pub(super) const ATTEMPTS: Table = Table {
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

pub(super) const BATCHES: Table = Table {
    name: "batches",
    columns: &["name", "paused", "created_at", "owner"],
    key: &["name"],
};

pub(super) const WORKERS: Table = Table {
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
        "token_id",
        "resume_hash",
    ],
    key: &["id"],
};

pub(super) const SUBMISSIONS: Table = Table {
    name: "submissions",
    columns: &[
        "key",
        "user_id",
        "first_task_id",
        "task_count",
        "created_at",
    ],
    key: &["key"],
};

pub(super) const USERS: Table = Table {
    name: "users",
    columns: &["id", "name", "admin", "created_at"],
    key: &["id"],
};

pub(super) const TOKENS: Table = Table {
    name: "tokens",
    columns: &[
        "id",
        "user_id",
        "kind",
        "batch",
        "label",
        "hash",
        "created_at",
        "revoked_at",
    ],
    key: &["id"],
};

pub(super) const COUNTERS: Table = Table {
    name: "counters",
    columns: &["name", "value"],
    key: &["name"],
};

pub(super) fn bind_task(query: AnyQuery, task: &TaskRow) -> AnyQuery {
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
        .bind(task.owner)
}

pub(super) fn bind_attempt(query: AnyQuery, attempt: &AttemptRow) -> AnyQuery {
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

pub(super) fn bind_batch(query: AnyQuery, batch: &BatchRow) -> AnyQuery {
    query
        .bind(batch.name.as_str())
        .bind(i64::from(batch.paused))
        .bind(batch.created_at)
        .bind(batch.owner)
}

pub(super) fn bind_worker(query: AnyQuery, worker: &WorkerRow) -> AnyQuery {
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
        .bind(worker.token_id)
        .bind(worker.resume_hash.as_deref())
}

pub(super) fn bind_submission(query: AnyQuery, row: &SubmissionRow) -> AnyQuery {
    query
        .bind(row.key.as_str())
        .bind(row.user_id)
        .bind(row.first_task_id)
        .bind(row.task_count)
        .bind(row.created_at)
}

pub(super) fn bind_user(query: AnyQuery, user: &UserRow) -> AnyQuery {
    query
        .bind(user.id)
        .bind(user.name.as_str())
        .bind(i64::from(user.admin))
        .bind(user.created_at)
}

pub(super) fn bind_token(query: AnyQuery, token: &TokenRow) -> AnyQuery {
    query
        .bind(token.id)
        .bind(token.user_id)
        .bind(token.kind.as_str())
        .bind(token.batch.as_deref())
        .bind(token.label.as_str())
        .bind(token.hash.as_str())
        .bind(token.created_at)
        .bind(token.revoked_at)
}

pub(super) fn bind_counter(query: AnyQuery, counter: &(String, i64)) -> AnyQuery {
    query.bind(counter.0.as_str()).bind(counter.1)
}

/// The rows of `rows` whose key does not appear again later in the list: the last image of
/// each key wins, as if the rows were applied one by one. (PostgreSQL refuses to update the
/// same row twice in one statement.) Order of the survivors is preserved.
pub(super) fn last_per_key<'r, T, K: Hash + Eq>(
    rows: &'r [T],
    key: impl Fn(&'r T) -> K,
) -> Vec<&'r T> {
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
pub(super) struct Writer<'c> {
    pub(super) connection: &'c mut AnyConnection,
    pub(super) engine: Engine,
}

/// How [`Writer::rows`] treats a row whose key is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
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
    pub(super) async fn split_new_rows<'r, T>(
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
    pub(super) async fn rows<T>(
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
    pub(super) async fn delete<K: KeyValue>(
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
pub(super) fn insert_sql(engine: Engine, table: &Table, row_count: usize, mode: Write) -> String {
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
pub(super) trait KeyValue: Sync {
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
pub(super) fn column<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name).map_err(StoreError::from_sqlx)
}

/// Reads a 0/1 column as a flag.
pub(super) fn flag(
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

pub(super) fn decode_task(row: &AnyRow) -> Result<TaskRow, StoreError> {
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
        owner: column(row, "owner")?,
    })
}

pub(super) fn decode_attempt(row: &AnyRow) -> Result<AttemptRow, StoreError> {
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

pub(super) fn decode_batch(row: &AnyRow) -> Result<BatchRow, StoreError> {
    let name: String = column(row, "name")?;
    Ok(BatchRow {
        paused: flag(row, "paused", "batches", &name)?,
        created_at: column(row, "created_at")?,
        owner: column(row, "owner")?,
        name,
    })
}

pub(super) fn decode_worker(row: &AnyRow) -> Result<WorkerRow, StoreError> {
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
        token_id: column(row, "token_id")?,
        resume_hash: column(row, "resume_hash")?,
    })
}

pub(super) fn decode_submission(row: &AnyRow) -> Result<SubmissionRow, StoreError> {
    Ok(SubmissionRow {
        key: column(row, "key")?,
        user_id: column(row, "user_id")?,
        first_task_id: column(row, "first_task_id")?,
        task_count: column(row, "task_count")?,
        created_at: column(row, "created_at")?,
    })
}

pub(super) fn decode_user(row: &AnyRow) -> Result<UserRow, StoreError> {
    let id: i64 = column(row, "id")?;
    Ok(UserRow {
        id,
        name: column(row, "name")?,
        admin: flag(row, "admin", "users", &id)?,
        created_at: column(row, "created_at")?,
    })
}

pub(super) fn decode_token(row: &AnyRow) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id: column(row, "id")?,
        user_id: column(row, "user_id")?,
        kind: column(row, "kind")?,
        batch: column(row, "batch")?,
        label: column(row, "label")?,
        hash: column(row, "hash")?,
        created_at: column(row, "created_at")?,
        revoked_at: column(row, "revoked_at")?,
    })
}
