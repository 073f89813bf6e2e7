//! What the `herd` process exits with, and the one place where an error becomes an exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (also when stdout was closed early: a broken pipe is not a failure) |
//! | 1 | the operation failed: a task failed or was canceled in `batch wait`, the server refused (not found, wrong state...) |
//! | 2 | usage: a flag, value, command line or `--file` line is wrong (clap's own code) |
//! | 3 | the server cannot be reached |

use std::fmt;
use std::process::ExitCode;

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything went as asked.
    Success,
    /// The command ran to its end but reports a failure (e.g. a task failed in `batch wait`);
    /// what failed was already printed.
    Failure,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Failure => ExitCode::from(FAILURE),
        }
    }
}

/// Exit code of a failed operation.
pub const FAILURE: u8 = 1;
/// Exit code of a usage error (same as clap's).
pub const USAGE: u8 = 2;
/// Exit code when the server cannot be reached.
pub const UNREACHABLE: u8 = 3;

/// The class of an error, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's input is wrong (exit 2).
    Usage,
    /// The server cannot be reached (exit 3).
    Unreachable,
    /// The server refused or the operation failed (exit 1).
    Failed,
}

/// An error with a class. Carried inside an `anyhow::Error`; anything else exits 1.
#[derive(Debug)]
pub struct Error {
    /// What class of error, hence which exit code.
    pub kind: Kind,
    /// The message shown after `herd: `.
    pub message: String,
}

impl Error {
    /// A usage error: the command line or an input file is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Usage,
            message: message.into(),
        }
    }

    /// The server cannot be reached.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Unreachable,
            message: message.into(),
        }
    }

    /// The operation failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Failed,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What `main` does with an error: the exit code, and the message to print on stderr (none for
/// a broken pipe, which only means that the reader of stdout is gone).
pub fn classify(error: &anyhow::Error) -> (u8, Option<String>) {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return (0, None);
    }
    let code = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Error>())
        .map_or(FAILURE, |classified| match classified.kind {
            Kind::Usage => USAGE,
            Kind::Unreachable => UNREACHABLE,
            Kind::Failed => FAILURE,
        });
    (code, Some(format!("{error:#}")))
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn classes_map_to_exit_codes_through_context() {
        let error = anyhow::Error::new(Error::unreachable("down")).context("while listing");
        assert_eq!(
            classify(&error),
            (UNREACHABLE, Some("while listing: down".to_owned()))
        );
        let error = anyhow::Error::new(Error::usage("bad"));
        assert_eq!(classify(&error).0, USAGE);
        assert_eq!(classify(&anyhow::anyhow!("other")).0, FAILURE);
    }

    #[test]
    fn a_broken_pipe_is_quiet_success() {
        let result: Result<(), std::io::Error> = Err(std::io::ErrorKind::BrokenPipe.into());
        let error = result.context("writing").unwrap_err();
        assert_eq!(classify(&error), (0, None));
    }
}
