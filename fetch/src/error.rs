//! The crate's one error type: a [`ErrorKind`] to branch on, a message for people, and the
//! underlying cause kept as `source()`.

use std::fmt;
use std::io;
use std::path::Path;

/// What went wrong, coarsely: callers branch on this (retry or not, which exit code, which
/// task failure class), never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URI does not follow the grammar, or does not fit the operation (an action on an
    /// upload, a directory without its trailing `/`).
    InvalidUri,
    /// The source (file, directory, object, archive member) does not exist.
    NotFound,
    /// The operating system or the remote side refused access.
    PermissionDenied,
    /// The scheme, option or archive format is not available in this build.
    Unsupported,
    /// Data did not match its expected checksum or size.
    Checksum,
    /// A gzip, tar or zip stream is corrupt or truncated.
    InvalidData,
    /// An archive entry or a path would land outside its target directory; nothing was written
    /// outside it.
    Unsafe,
    /// Any other input/output failure (disk full, source changed while read, ...).
    Io,
}

impl ErrorKind {
    /// Whether trying the same transfer again may succeed: true for transient failures (I/O,
    /// a checksum or a corrupt download that a new download may fix), false for mistakes that
    /// the same request will repeat.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Io | ErrorKind::Checksum | ErrorKind::InvalidData
        )
    }

    /// The kind's name in lower case, for logs and for `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidUri => "invalid uri",
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Checksum => "checksum",
            ErrorKind::InvalidData => "invalid data",
            ErrorKind::Unsafe => "unsafe",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An error of herd-fetch: a kind, a lower-case message that says what failed and what to do,
/// and the underlying cause as `source()` (not repeated in the message; see [`Error::report`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The result type of herd-fetch.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message` and no underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` with `message`, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong, coarsely.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by every cause in the chain, joined with `: `; what a log line or a
    /// task's failure reason should show.
    pub fn report(&self) -> String {
        let mut text = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }

    /// An I/O failure on `path`: the kind follows the OS error, the message names the path and
    /// the operation (`doing`, e.g. "cannot read") and, for the common kinds, what to check.
    pub(crate) fn io(doing: &str, path: &Path, error: io::Error) -> Self {
        let shown = path.display();
        match error.kind() {
            io::ErrorKind::NotFound => Error::with_source(
                ErrorKind::NotFound,
                format!("{doing} `{shown}`: it does not exist; check the path"),
                error,
            ),
            io::ErrorKind::PermissionDenied => Error::with_source(
                ErrorKind::PermissionDenied,
                format!(
                    "{doing} `{shown}`: permission denied; check the owner and mode of the path"
                ),
                error,
            ),
            _ => Error::with_source(ErrorKind::Io, format!("{doing} `{shown}`"), error),
        }
    }

    pub(crate) fn invalid_uri(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidUri, message)
    }

    pub(crate) fn unsafe_entry(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsafe, message)
    }
}

/// Extension to attach a path and an operation to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error with [`Error::io`].
    fn at(self, doing: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, doing: &str, path: &Path) -> Result<T> {
        self.map_err(|error| Error::io(doing, path, error))
    }
}
