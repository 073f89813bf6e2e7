//! [`RetryPolicy`], shared by every network backend, and what decides a retry over HTTP: a
//! [`Failure`] is an error with whether another try may succeed and the server's
//! `Retry-After`; [`request_failure`] and [`status_failure`] make them from reqwest's errors and
//! from statuses. An untrusted TLS certificate is not retried: every try would meet it again.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;

use super::Config;
use crate::error::{Error, ErrorKind};

/// How many times, and how patiently, a network transfer is tried.
///
/// A try that fails with a transient error (connection refused or reset, timeout, HTTP 5xx, 408
/// or 429, FTP 4xx) is followed by another after a delay that doubles from `first_delay` up to
/// `max_delay`; after `attempts` failed tries the last error is returned. A try that moved the
/// transfer further than any before it (a broken download that is then resumed) does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries before giving up (at least 1).
    pub attempts: u32,
    /// Delay after the first failure.
    pub first_delay: Duration,
    /// Longest delay between two tries.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Five tries, 1 s after the first failure, doubling up to 30 s.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 5,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
    };

    /// The delay before the next try after `failures` failures (`failures >= 1`).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// Whether another try is allowed after `failures` failures.
    pub(crate) fn allows_another(&self, failures: u32) -> bool {
        failures < self.attempts.max(1)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// Why a try failed, and whether another may succeed.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) transient: bool,
    /// The server's `Retry-After`, when it gave one.
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
            retry_after: None,
        }
    }

    pub(super) fn transient(error: Error) -> Failure {
        Failure {
            error,
            transient: true,
            retry_after: None,
        }
    }
}

/// The error after the last allowed try failed with `last`: its message, and its causes.
pub(crate) fn gave_up(failures: u32, last: Error) -> Error {
    let tries = if failures == 1 { "try" } else { "tries" };
    let message = format!(
        "{} (gave up after {failures} failed {tries}; check the network or retry later)",
        last.message()
    );
    Error::replacing(last.kind(), message, last)
}

pub(super) fn request_failure(shown: &str, error: reqwest::Error) -> Failure {
    if is_certificate_error(&error) {
        // Another try meets the same certificate: fail now, and say how to trust it.
        let variable = Config::CA_BUNDLE_VARIABLE;
        return Failure::fatal(Error::with_source(
            ErrorKind::PermissionDenied,
            format!(
                "`{shown}`: the server's TLS certificate is not trusted; if it comes from a private certificate authority, set {variable} to that authority's PEM file"
            ),
            error.without_url(),
        ));
    }
    let transient = !(error.is_builder() || error.is_redirect());
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "too many redirections"
    } else {
        "the request failed"
    };
    Failure {
        error: Error::with_source(
            ErrorKind::Io,
            format!("`{shown}`: {what}"),
            error.without_url(),
        ),
        transient,
        retry_after: None,
    }
}

/// Whether the TLS handshake failed on the server's certificate (rustls reports
/// "invalid peer certificate: ...", deep in the error's causes).
fn is_certificate_error(error: &reqwest::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = cause {
        if current.to_string().contains("invalid peer certificate") {
            return true;
        }
        cause = current.source();
    }
    false
}

/// The error for a response with an unwanted status: 404/410 → not found, 401/403 →
/// permission denied, 5xx/408/429 → transient.
pub(super) fn status_failure(
    shown: &str,
    response: &reqwest::Response,
    status: StatusCode,
) -> Failure {
    let code = status.as_u16();
    let (kind, hint) = match code {
        404 | 410 => (ErrorKind::NotFound, "it does not exist; check the url"),
        401 | 403 => (
            ErrorKind::PermissionDenied,
            "access denied; check the credentials (user:password@ in the url) or the link's signature",
        ),
        _ => (ErrorKind::Io, "the server refused the request"),
    };
    let transient = status.is_server_error() || code == 408 || code == 429;
    let hint = if transient {
        "the server is unavailable or overloaded"
    } else {
        hint
    };
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Failure {
        error: Error::new(kind, format!("`{shown}`: http {status}: {hint}")),
        transient,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let delays: Vec<u128> = (1..=4).map(|n| retry.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        assert!(retry.allows_another(4));
        assert!(!retry.allows_another(5));
    }
}
