//! The control connection of one operation: a logged-in [`Session`], the [`Link`] that holds
//! it, reopens it after a transient failure and counts the failures against the
//! [`RetryPolicy`](crate::http::RetryPolicy), and the mapping of client errors and FTP reply
//! codes to [`Failure`]s (an [`Error`] and whether another try may succeed).
//!
//! Every command goes through [`timed`]: suppaftp has no time-outs of its own, and a server that
//! stops answering would hang the transfer.

use std::future::Future;
use std::time::Duration;

use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpResult};
use tracing::{debug, warn};

use super::{FtpBackend, Target};
use crate::backend::BoxFuture;
use crate::error::{Error, ErrorKind, Result};
use crate::http::gave_up;

/// Why a try failed, and whether another may succeed.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) transient: bool,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    pub(super) fn transient(error: Error) -> Failure {
        Failure {
            error,
            transient: true,
        }
    }
}

/// A time-out (the server did not answer in time).
pub(super) struct Elapsed;

impl Elapsed {
    pub(super) fn failure(self, what: &str, shown: &str) -> Failure {
        Failure::transient(Error::new(
            ErrorKind::Io,
            format!(
                "`{shown}`: {what}: the server did not answer within {} s",
                FtpBackend::TIMEOUT.as_secs()
            ),
        ))
    }
}

pub(super) async fn timed<T>(
    timeout: Duration,
    future: impl Future<Output = FtpResult<T>>,
) -> std::result::Result<FtpResult<T>, Elapsed> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| Elapsed)
}

/// The reply code of an FTP error, if the server answered.
pub(super) fn reply_code(error: &FtpError) -> Option<u32> {
    match error {
        FtpError::UnexpectedResponse(response) => Some(response.status.code()),
        _ => None,
    }
}

/// Maps a client error: 550 → not found, 530/532/553 → permission denied; connection errors
/// and 421/425/426/450/451 are transient.
pub(super) fn ftp_failure(error: FtpError, what: &str, shown: &str) -> Failure {
    match error {
        FtpError::ConnectionError(source) => Failure::transient(Error::with_source(
            ErrorKind::Io,
            format!("`{shown}`: {what}: connection error"),
            source,
        )),
        FtpError::UnexpectedResponse(response) => {
            let code = response.status.code();
            let text = String::from_utf8_lossy(&response.body);
            let mut reply: String = text.lines().next().unwrap_or_default().trim().to_owned();
            if reply.len() > 200 {
                let mut end = 200;
                while !reply.is_char_boundary(end) {
                    end -= 1;
                }
                reply.truncate(end);
            }
            let lower = reply.to_ascii_lowercase();
            let refused = ["permission", "privilege", "denied", "not allowed"]
                .iter()
                .any(|word| lower.contains(word));
            let (kind, hint) = match code {
                // 550 says "not available": missing, or refused (the text tells).
                550 if refused => (
                    ErrorKind::PermissionDenied,
                    "check the user's permissions on the server",
                ),
                550 => (ErrorKind::NotFound, "check the path"),
                530 | 532 => (
                    ErrorKind::PermissionDenied,
                    "check the user and password in the uri",
                ),
                553 => (
                    ErrorKind::PermissionDenied,
                    "check the path and the permissions",
                ),
                _ => (ErrorKind::Io, "retry later or check the server"),
            };
            let transient = matches!(code, 421 | 425 | 426 | 450 | 451);
            Failure {
                error: Error::new(
                    kind,
                    format!("`{shown}`: {what}: the server answered `{reply}`; {hint}"),
                ),
                transient,
            }
        }
        other => Failure::fatal(Error::with_source(
            ErrorKind::Io,
            format!("`{shown}`: {what}: unexpected answer from the server"),
            other,
        )),
    }
}

/// One logged-in control connection.
pub(super) struct Session {
    pub(super) stream: AsyncFtpStream,
    /// Whether the server announced MLST (and so MLSD) in FEAT.
    pub(super) mlst: bool,
}

impl Session {
    pub(super) async fn connect(
        target: &Target,
        timeout: Duration,
    ) -> std::result::Result<Session, Failure> {
        let shown = &target.shown;
        let what = "cannot connect";
        let address = (target.host.as_str(), target.port);
        let mut stream = match timed(timeout, AsyncFtpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ftp_failure(error, what, shown)),
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        };
        stream.set_passive_nat_workaround(true);
        let what = "cannot log in";
        match timed(timeout, stream.login(&target.user, &target.password)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let mut failure = ftp_failure(error, what, shown);
                if failure.error.kind() == ErrorKind::Io && !failure.transient {
                    failure.error = Error::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "{}; check the user and password in the uri",
                            failure.error.message()
                        ),
                    );
                }
                return Err(failure);
            }
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        }
        let what = "cannot switch to binary mode";
        match timed(timeout, stream.transfer_type(FileType::Binary)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ftp_failure(error, what, shown)),
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        }
        let mlst = match timed(timeout, stream.feat()).await {
            Ok(Ok(features)) => features.keys().any(|key| key.eq_ignore_ascii_case("MLST")),
            Ok(Err(FtpError::UnexpectedResponse(_))) => false,
            Ok(Err(error)) => return Err(ftp_failure(error, "cannot read the features", shown)),
            Err(elapsed) => return Err(elapsed.failure("cannot read the features", shown)),
        };
        debug!(url = %shown, mlst, "ftp session opened");
        Ok(Session { stream, mlst })
    }

    /// Runs one command that returns nothing, mapping its errors.
    pub(super) async fn command<'s, F>(
        &'s mut self,
        timeout: Duration,
        what: &str,
        shown: &str,
        command: F,
    ) -> std::result::Result<(), Failure>
    where
        F: FnOnce(&'s mut AsyncFtpStream) -> BoxFuture<'s, FtpResult<()>>,
    {
        match timed(timeout, command(&mut self.stream)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ftp_failure(error, what, shown)),
            Err(elapsed) => Err(elapsed.failure(what, shown)),
        }
    }

    /// Removes `path`, ignoring any error (cleanup of a temporary upload).
    pub(super) async fn remove_quietly(&mut self, path: &str, timeout: Duration) {
        match timed(timeout, self.stream.rm(path)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(path, %error, "cannot remove a temporary upload"),
            Err(_) => debug!(path, "cannot remove a temporary upload: no answer"),
        }
    }
}

/// The connection an operation uses, re-opened after a transient failure, and the count of
/// failures so far.
pub(super) struct Link<'a> {
    backend: &'a FtpBackend,
    pub(super) target: &'a Target,
    session: Option<Session>,
    pub(super) failures: u32,
}

impl<'a> Link<'a> {
    pub(super) fn new(backend: &'a FtpBackend, target: &'a Target) -> Link<'a> {
        Link {
            backend,
            target,
            session: None,
            failures: 0,
        }
    }

    /// The open session, connecting if needed.
    pub(super) async fn session(&mut self) -> std::result::Result<&mut Session, Failure> {
        if self.session.is_none() {
            let session = Session::connect(self.target, self.backend.inner.timeout).await?;
            self.session = Some(session);
        }
        match self.session.as_mut() {
            Some(session) => Ok(session),
            None => Err(Failure::fatal(Error::new(
                ErrorKind::Io,
                "the ftp session was lost",
            ))),
        }
    }

    /// After a failed try: the error when it is final or the tries are used up; otherwise
    /// waits, and drops the connection so that the next try opens a new one. A try that
    /// `progressed` does not count.
    pub(super) async fn recover(&mut self, failure: Failure, progressed: bool) -> Result<()> {
        if !failure.transient {
            return Err(failure.error);
        }
        self.session = None;
        if !progressed {
            self.failures += 1;
        }
        let retry = self.backend.inner.retry;
        if !retry.allows_another(self.failures) {
            return Err(gave_up(self.failures, failure.error));
        }
        warn!(
            url = %self.target.shown,
            failures = self.failures,
            error = %failure.error.report(),
            "ftp transfer failed; trying again"
        );
        tokio::time::sleep(retry.delay(self.failures.max(1))).await;
        Ok(())
    }

    /// Logs out, best effort.
    pub(super) async fn close(mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.stream.quit()).await;
        }
    }
}
