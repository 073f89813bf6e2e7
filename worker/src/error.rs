//! [`Error`], herd-worker's one error type: why a worker cannot start, why an executor could
//! not run a job, why staging failed.
//!
//! Each variant keeps its cause typed as `source()` (an `io::Error`, bollard's error,
//! herd-fetch's error) and its message does not repeat it: what a person sees (a task's
//! failure reason, a log line) is [`Error::chain`], the message followed by every cause.

use std::path::PathBuf;

/// Why a worker, an executor or a staging step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// The server refused the worker's token; the message says why and what to do.
    #[error("{0}")]
    Unauthorized(String),
    /// The scratch folder cannot be used.
    #[error("cannot use the work directory {}", path.display())]
    WorkDir {
        /// The folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The task cannot be started as it is (the program is missing, an option is refused...):
    /// the message says what to change.
    #[error("cannot start the task: {0}")]
    Start(String),
    /// The Docker engine refused the task's container (a bad option, an image it cannot
    /// pull, a command it cannot start): `context` names the call and what to check, the
    /// engine's own reason is the source.
    #[error("cannot start the task: {context}")]
    Refused {
        /// The call that failed, and what to check.
        context: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// A call to the Docker engine failed.
    #[error("docker: {context}")]
    Docker {
        /// Which call, on what.
        context: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The Docker engine did not answer, or answered something impossible.
    #[error("docker: {0}")]
    Engine(String),
    /// A local input/output error.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A transfer through herd-fetch failed (an input, a resource, the upload of `/output`).
    #[error("{context}")]
    Fetch {
        /// Which transfer.
        context: String,
        /// herd-fetch's error, with its own causes.
        #[source]
        source: herd_fetch::Error,
    },
}

impl Error {
    /// The message followed by each of its causes: what a person must see (a task's failure
    /// reason, a log line), never `to_string()` alone.
    pub fn chain(&self) -> String {
        herd_fetch::error_chain(self)
    }

    /// An input/output error while doing `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
