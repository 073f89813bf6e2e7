//! [`map_error`]: the one place where the SDK's errors (service errors with their code and
//! status, transport and body errors, credential errors) become an [`ErrorKind`] and a message
//! with advice. The code and status are taken apart into a [`Failure`] first, so that the
//! mapping is a plain table of them.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStreamError;

use crate::error::{Error, ErrorKind};

/// A failed S3 call, reduced to what [`map_error`] classifies.
pub(super) struct Failure {
    /// The S3 error code (`NoSuchKey`, `AccessDenied`...), when the server sent one.
    code: Option<String>,
    /// The HTTP status, when the server answered.
    status: Option<u16>,
    /// No complete answer: the request was not sent, timed out, or the body broke off.
    transport: bool,
    /// No usable credentials: none configured, or their provider failed (not a timeout).
    credentials: bool,
    /// The SDK found that a response body did not match the checksum the server sent with it.
    checksum_mismatch: bool,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl<E> From<SdkError<E, HttpResponse>> for Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn from(error: SdkError<E, HttpResponse>) -> Failure {
        let code = error.code().map(str::to_owned);
        let status = error
            .raw_response()
            .map(|response| response.status().as_u16());
        let mut transport = matches!(
            error,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        );
        let mut credentials = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(current) = cause {
            if let Some(problem) = current.downcast_ref::<CredentialsError>() {
                // A provider that timed out may answer next time; any other failure (nothing
                // configured, a bad profile, instance metadata refusing) will not.
                credentials = !matches!(problem, CredentialsError::ProviderTimedOut(_));
                transport = !credentials;
            }
            cause = current.source();
        }
        Failure {
            code,
            status,
            transport,
            credentials,
            checksum_mismatch: false,
            source: Box::new(error),
        }
    }
}

impl From<ByteStreamError> for Failure {
    fn from(error: ByteStreamError) -> Failure {
        // The SDK's response checksum validation reports a mismatch as a body error whose
        // cause says so; its error type is private to a crate we do not depend on.
        let mut checksum_mismatch = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(current) = cause {
            if current
                .to_string()
                .to_ascii_lowercase()
                .contains("checksum mismatch")
            {
                checksum_mismatch = true;
            }
            cause = current.source();
        }
        Failure {
            code: None,
            status: None,
            transport: true,
            credentials: false,
            checksum_mismatch,
            source: Box::new(error),
        }
    }
}

impl From<aws_sdk_s3::types::Error> for Failure {
    /// One key's failure inside a DeleteObjects answer.
    fn from(error: aws_sdk_s3::types::Error) -> Failure {
        let text = format!(
            "{}: {}",
            error.code().unwrap_or("unknown error"),
            error.message().unwrap_or_default()
        );
        Failure {
            code: error.code().map(str::to_owned),
            status: None,
            transport: false,
            credentials: false,
            checksum_mismatch: false,
            source: text.into(),
        }
    }
}

impl From<aws_sdk_s3::error::BuildError> for Failure {
    fn from(error: aws_sdk_s3::error::BuildError) -> Failure {
        Failure {
            code: None,
            status: None,
            transport: false,
            credentials: false,
            checksum_mismatch: false,
            source: Box::new(error),
        }
    }
}

/// The one place where S3 error codes and HTTP statuses become [`ErrorKind`]s: `doing` (such as
/// "cannot download") and `target` (an `s3://` URI) start the message, which then says what to
/// do. Credentials never reach the message: only the SDK error, kept as the source, says more
/// (codes, messages, request ids).
pub(super) fn map_error(doing: &str, target: &str, failure: impl Into<Failure>) -> Error {
    let failure = failure.into();
    let (kind, advice) = match (failure.code.as_deref(), failure.status) {
        (Some("NoSuchBucket"), _) => (
            ErrorKind::NotFound,
            "the bucket does not exist; check the bucket name",
        ),
        (Some("NoSuchUpload"), _) => (
            ErrorKind::Io,
            "the multipart upload vanished (aborted elsewhere or expired); retry",
        ),
        (Some("NoSuchKey" | "NotFound"), _) | (None, Some(404)) => {
            (ErrorKind::NotFound, "it does not exist; check the uri")
        }
        (
            Some(
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "AllAccessDisabled"
                | "AccountProblem"
                | "InvalidSecurity"
                | "AuthorizationHeaderMalformed",
            ),
            _,
        )
        | (_, Some(401 | 403)) => (
            ErrorKind::PermissionDenied,
            "access denied; check the credentials (HERD_S3_ACCESS_KEY_ID and HERD_S3_SECRET_ACCESS_KEY, or the AWS profile) and what they may access",
        ),
        (
            Some(
                "BadDigest"
                | "InvalidDigest"
                | "XAmzContentChecksumMismatch"
                | "XAmzContentSHA256Mismatch"
                | "InvalidChecksum",
            ),
            _,
        ) => (
            ErrorKind::Checksum,
            "the data did not match its checksum on the way; retry",
        ),
        _ if failure.checksum_mismatch => (
            ErrorKind::Checksum,
            "the data did not match the object's stored checksum; retry, and if it persists the stored object is corrupt",
        ),
        (Some("PreconditionFailed"), _) | (_, Some(412)) => (
            ErrorKind::Io,
            "the object changed while it was downloaded; retry",
        ),
        (Some("InvalidBucketName" | "KeyTooLongError"), _) => (
            ErrorKind::InvalidUri,
            "the store refuses this bucket name or key; check the uri",
        ),
        _ if failure.credentials => (
            ErrorKind::PermissionDenied,
            "no usable s3 credentials; set HERD_S3_ACCESS_KEY_ID and HERD_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or name a profile with HERD_S3_PROFILE or AWS_PROFILE",
        ),
        _ if failure.transport => (
            ErrorKind::Io,
            "no complete answer from the s3 endpoint; check that it is reachable (HERD_S3_ENDPOINT or AWS_ENDPOINT_URL) and retry",
        ),
        (_, Some(status)) if status >= 500 => (ErrorKind::Io, "the s3 server failed; retry later"),
        _ => (ErrorKind::Io, "the s3 request failed"),
    };
    Error::with_source(
        kind,
        format!("{doing} `{target}`: {advice}"),
        failure.source,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_map_to_kinds() {
        let failure = |code: Option<&str>, status: Option<u16>| Failure {
            code: code.map(str::to_owned),
            status,
            transport: false,
            credentials: false,
            checksum_mismatch: false,
            source: "from the server".into(),
        };
        let cases = [
            (failure(Some("NoSuchKey"), Some(404)), ErrorKind::NotFound),
            (
                failure(Some("NoSuchBucket"), Some(404)),
                ErrorKind::NotFound,
            ),
            (failure(None, Some(404)), ErrorKind::NotFound),
            (failure(Some("NoSuchUpload"), Some(404)), ErrorKind::Io),
            (
                failure(Some("AccessDenied"), Some(403)),
                ErrorKind::PermissionDenied,
            ),
            (
                failure(Some("SignatureDoesNotMatch"), Some(403)),
                ErrorKind::PermissionDenied,
            ),
            (failure(None, Some(403)), ErrorKind::PermissionDenied),
            (failure(Some("BadDigest"), Some(400)), ErrorKind::Checksum),
            (
                failure(Some("PreconditionFailed"), Some(412)),
                ErrorKind::Io,
            ),
            (
                failure(Some("InvalidBucketName"), Some(400)),
                ErrorKind::InvalidUri,
            ),
            (failure(Some("SlowDown"), Some(503)), ErrorKind::Io),
            (failure(None, Some(500)), ErrorKind::Io),
            (
                Failure {
                    transport: true,
                    ..failure(None, None)
                },
                ErrorKind::Io,
            ),
            (
                Failure {
                    credentials: true,
                    ..failure(None, None)
                },
                ErrorKind::PermissionDenied,
            ),
            (
                Failure {
                    checksum_mismatch: true,
                    transport: true,
                    ..failure(None, None)
                },
                ErrorKind::Checksum,
            ),
        ];
        for (failure, kind) in cases {
            let shown = format!("{:?}/{:?}", failure.code, failure.status);
            let error = map_error("cannot download", "s3://b/k", failure);
            assert_eq!(error.kind(), kind, "{shown}");
            assert!(
                error
                    .to_string()
                    .starts_with("cannot download `s3://b/k`: "),
                "{error}"
            );
            assert!(
                error.report().ends_with(": from the server"),
                "{}",
                error.report()
            );
        }
    }
}
