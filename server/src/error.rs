//! herd-server's one error type, [`Error`], and [`chain`], which renders an error with its
//! causes for a user.
//!
//! The store's failures keep their own kinds ([`StoreError`], mapped from sqlx in exactly one
//! place, `StoreError::from_sqlx`) and reach callers inside [`Error::Store`], sources intact.
//! Messages name what failed and what to do, never their cause: the cause is the `source`,
//! and [`chain`] (used by the service's one mapping to gRPC statuses, and by `anyhow`'s `{:#}`
//! in the binary) appends it, so each cause is shown once.

use std::path::PathBuf;

use herd_proto::{BatchName, TaskId, TaskState, WorkerId};

use crate::store::StoreError;

/// What can go wrong in the server: a refused request, the database, start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such task.
    #[error("task {0} does not exist; `herd task list` shows the tasks")]
    TaskNotFound(TaskId),
    /// No such batch.
    #[error("batch `{0}` does not exist; `herd batch list` shows the batches")]
    BatchNotFound(BatchName),
    /// No such worker.
    #[error("worker {0} does not exist; `herd worker list` shows the workers")]
    WorkerNotFound(WorkerId),
    /// A kill of a task that has already finished.
    #[error("task {task_id} has already {}; nothing to kill", finished(*state))]
    AlreadyFinished {
        /// The task.
        task_id: TaskId,
        /// Its (terminal) state.
        state: TaskState,
    },
    /// A retry of a task that has not finished.
    #[error("task {task_id} is {state}; only a finished task can be retried (kill it first)")]
    NotFinished {
        /// The task.
        task_id: TaskId,
        /// Its (unfinished) state.
        state: TaskState,
    },
    /// A value was refused.
    #[error(transparent)]
    Invalid(#[from] herd_proto::Error),
    /// The call carried no token, or one the server does not know (or revoked). The message
    /// says which, and what to do.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's token is valid, but may not do this (another user's task or batch, an
    /// admin-only action, the wrong kind of token). The message says why.
    #[error("{0}")]
    Forbidden(String),
    /// Something with that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operating system gave no random bytes for a secret.
    #[error("cannot make a secret: the system's random source failed: {0}")]
    Entropy(String),
    /// The database failed (at start-up: the queue retries commits until they succeed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database refused a change (its statement, not its connection): the change was
    /// not made. Carries the database's reason.
    #[error("the database refused this change, so it was not made: {0}")]
    Refused(String),
    /// The change is made in memory and queued, but the database did not confirm it within the
    /// commit timeout (it is unavailable): it is committed once the database is back.
    #[error(
        "the database is unavailable (no commit for {}s): this change is not confirmed yet; the server keeps retrying and commits it once the database is back. `herd launch` retries with its idempotency key; otherwise check (`herd task list`) before doing it again",
        .0.as_secs()
    )]
    NotDurableYet(std::time::Duration),
    /// The server is shutting down.
    #[error("the server is shutting down; try again when it is back")]
    ShuttingDown,
    /// The data directory cannot be used.
    #[error("cannot use the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file (`--tls-cert`, `--tls-key`, `--tls-client-ca`) cannot be used.
    #[error(transparent)]
    TlsFile(#[from] herd_proto::pem::FileError),
    /// The TLS key file can be read by any user.
    #[error(
        "--tls-key {path} can be read by other users (mode {mode:03o}); run `chmod 600 {path}` \
         (or 640, for a group that needs it)",
        path = path.display()
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The certificate, key and client CA do not make a working TLS setup (rustls's reason).
    #[error(
        "--tls-cert, --tls-key and --tls-client-ca cannot be used together ({0}); check that the \
         key is the certificate's"
    )]
    TlsSetup(String),
    /// Serving failed.
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

fn finished(state: TaskState) -> &'static str {
    match state {
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        _ => "been canceled",
    }
}

/// `error` and its causes, outermost first, joined by `: `. A cause whose text the message
/// already shows (an error that prints its source) is not repeated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_shows_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let error = Error::DataDir {
            path: PathBuf::from("/data"),
            source: io,
        };
        assert_eq!(
            chain(&error),
            "cannot use the data directory /data: permission denied"
        );
        let store = Error::Store(StoreError::Unavailable(sqlx::Error::PoolClosed));
        let text = chain(&store);
        assert!(text.starts_with("the database is unavailable: "), "{text}");
        assert_eq!(text.matches("closed").count(), 1, "{text}");
    }
}
