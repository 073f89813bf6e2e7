//! The crate's one error type: a [`ErrorKind`] to branch on, a message for people, and the
//! underlying cause kept, typed, as `source()`; [`error_chain`] renders a message with its
//! causes, which is what a person must see.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

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
/// and the underlying cause as `source()` (not repeated in the message: show errors to people
/// with [`error_chain`] or [`Error::report`], never with `to_string()` alone).
///
/// Cloning is cheap and keeps the cause (it is shared), so that a backend can fail every call
/// with the error its set-up met.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    /// The cause itself (an `io::Error`, a client's error...), not a wrapper: callers may
    /// downcast it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// The result type of herd-fetch.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error`'s message followed by each of its causes, joined with `: ` ("cannot write `x`: No
/// space left on device (os error 28)"); a cause whose text the message before it already
/// contains is left out, so nothing is said twice. What a person must see of any error: a
/// terminal's line, a log, a task's failure reason.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut cause = error.source();
    while let Some(current) = cause {
        let shown = current.to_string();
        if !shown.is_empty() && !previous.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        previous = shown;
        cause = current.source();
    }
    text
}

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
            source: Some(Arc::from(source.into())),
        }
    }

    /// An error of `kind` with `message`, which says again or replaces what `error` said,
    /// caused by what caused `error` (its typed causes, not their text): a report does not say
    /// the same thing twice.
    pub(crate) fn replacing(kind: ErrorKind, message: impl Into<String>, error: Error) -> Self {
        Error {
            kind,
            message: message.into(),
            source: error.source,
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

    /// The message followed by every cause in the chain: [`error_chain`] of this error.
    pub fn report(&self) -> String {
        error_chain(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_shows_each_cause_once_and_keeps_it_typed() {
        let os = io::Error::from_raw_os_error(20);
        let error = Error::io("cannot write", Path::new("/data/x"), os);
        assert_eq!(error.to_string(), "cannot write `/data/x`");
        assert_eq!(
            error_chain(&error),
            "cannot write `/data/x`: Not a directory (os error 20)"
        );
        assert_eq!(error.report(), error_chain(&error));
        let source = std::error::Error::source(&error).unwrap();
        assert!(source.downcast_ref::<io::Error>().is_some(), "typed");

        // A message that already says what its cause says does not repeat it.
        let repeated = Error::with_source(
            ErrorKind::Io,
            "no space: No space left on device (os error 28)",
            io::Error::from_raw_os_error(28),
        );
        assert_eq!(
            error_chain(&repeated),
            "no space: No space left on device (os error 28)"
        );

        // A replacing message keeps the causes of the error it replaces, and clones share them.
        let replaced = Error::replacing(ErrorKind::Io, "gave up", error.clone());
        assert_eq!(replaced.report(), "gave up: Not a directory (os error 20)");
    }
}
