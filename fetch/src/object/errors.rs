//! `map_error`: the one place where `object_store` errors become [`ErrorKind`]s, told apart by
//! variant and, where `object_store` keeps the type private, by the HTTP status or the words of
//! the error's text; and [`redact`], which blanks every configured secret and any SAS `sig=` out
//! of what an error keeps, since `object_store`'s messages can carry them.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// What [`map_error`] needs to know of the provider.
#[derive(Debug, Clone)]
pub(crate) struct Hints {
    pub(crate) provider: &'static str,
    pub(crate) container: &'static str,
    pub(crate) credentials: &'static str,
    pub(crate) endpoint: &'static str,
    pub(crate) secrets: Arc<[String]>,
}

impl Hints {
    pub(super) fn fail(&self, doing: &str, target: &str, error: object_store::Error) -> Error {
        map_error(doing, target, &error, self)
    }
}

/// The text of an `object_store` error with the secrets blanked out: what an error keeps as its
/// source, so that no report can show a key or a token.
#[derive(Debug)]
pub(crate) struct Cause(String);

impl fmt::Display for Cause {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Cause {}

impl Cause {
    pub(crate) fn new(error: &dyn std::error::Error, secrets: &[String]) -> Cause {
        Cause(redact(&error.to_string(), secrets))
    }
}

/// `text` with every secret, and the value of every `sig=` (a SAS signature), replaced by `***`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        let secret = secret.trim();
        if secret.len() >= 4 {
            text = text.replace(secret, "***");
        }
    }
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sig=") {
        let value_start = at + "sig=".len();
        redacted.push_str(&rest[..value_start]);
        redacted.push_str("***");
        let value_end = rest[value_start..]
            .find(|character: char| {
                character == '&'
                    || character == '"'
                    || character == '\''
                    || character.is_whitespace()
            })
            .map_or(rest.len(), |end| value_start + end);
        rest = &rest[value_end..];
    }
    redacted.push_str(rest);
    redacted
}

/// The HTTP status of a failed request: from the error's variant, else from the text of the
/// request error it wraps (`object_store` keeps that type private), e.g. a listing's.
fn status_of(error: &object_store::Error, text: &str) -> Option<u16> {
    match error {
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        object_store::Error::Precondition { .. } => Some(412),
        object_store::Error::NotModified { .. } => Some(304),
        object_store::Error::AlreadyExists { .. } => Some(409),
        _ => {
            let at = text.find("status code: ")? + "status code: ".len();
            text.get(at..at + 3)?.parse().ok()
        }
    }
}

/// Whether the request got no complete answer: the connection failed, broke or timed out.
fn is_transport_failure(error: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<object_store::client::HttpError>() {
            return !matches!(http.kind(), object_store::client::HttpErrorKind::Decode);
        }
        cause = current.source();
    }
    false
}

/// A credential provider that failed: a token request, a key that does not decode, a service
/// account file that cannot be read.
fn is_credential_failure(text: &str) -> bool {
    [
        "token request",
        "Token",
        "credential",
        "Credential",
        "Invalid Access Key",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// The one place where `object_store` errors become [`ErrorKind`]s: `doing` (such as "cannot
/// download") and `target` (a URI) start the message, which then says what to do. The error is
/// kept as the source, with the secrets blanked out ([`Cause`]).
pub(crate) fn map_error(
    doing: &str,
    target: &str,
    error: &object_store::Error,
    hints: &Hints,
) -> Error {
    let text = error.to_string();
    let missing_container = [
        "ContainerNotFound",
        "NoSuchBucket",
        "The specified bucket does not exist",
    ]
    .iter()
    .any(|code| text.contains(code));
    let (kind, advice) = match (error, status_of(error, &text)) {
        (_, Some(404)) if missing_container => (
            ErrorKind::NotFound,
            format!(
                "the {} does not exist; check its name, or create it first",
                hints.container
            ),
        ),
        (_, Some(404)) => (
            ErrorKind::NotFound,
            "it does not exist; check the uri".to_owned(),
        ),
        (_, Some(401 | 403)) => (
            ErrorKind::PermissionDenied,
            format!(
                "access denied; check the credentials ({}) and what they may access",
                hints.credentials
            ),
        ),
        (_, Some(304 | 412)) => (
            ErrorKind::Io,
            "the object changed while it was transferred; retry".to_owned(),
        ),
        (_, Some(409)) => (
            ErrorKind::Io,
            "the object was written by someone else meanwhile; retry".to_owned(),
        ),
        (object_store::Error::InvalidPath { .. }, _) => (
            ErrorKind::InvalidUri,
            "the store holds an object whose name herd cannot use (empty components, `.` or `..`); rename it".to_owned(),
        ),
        (
            object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::UnknownConfigurationKey { .. },
            _,
        ) => (
            ErrorKind::Unsupported,
            format!("the {} store does not support this operation", hints.provider),
        ),
        _ if text.contains("Md5Mismatch") || text.contains("InvalidDigest") => (
            ErrorKind::Checksum,
            "the data did not match its checksum on the way; retry".to_owned(),
        ),
        _ if is_credential_failure(&text) => (
            ErrorKind::PermissionDenied,
            format!(
                "no usable {} credentials; {}",
                hints.provider, hints.credentials
            ),
        ),
        _ if is_transport_failure(error) => (
            ErrorKind::Io,
            format!(
                "no complete answer from the {} endpoint; check that it is reachable ({}) and retry",
                hints.provider, hints.endpoint
            ),
        ),
        (_, Some(status)) if status >= 500 => (
            ErrorKind::Io,
            format!("the {} server failed; retry later", hints.provider),
        ),
        _ => (ErrorKind::Io, format!("the {} request failed", hints.provider)),
    };
    Error::with_source(
        kind,
        format!("{doing} `{target}`: {advice}"),
        Cause::new(error, &hints.secrets),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_sas_signatures_are_blanked_out() {
        let secrets = vec!["c2VjcmV0LWtleQ==".to_owned()];
        let text =
            "key c2VjcmV0LWtleQ== at https://a.blob/c/x?sv=2023&sig=abc%2Bdef&se=1 and sig=zzz";
        assert_eq!(
            redact(text, &secrets),
            "key *** at https://a.blob/c/x?sv=2023&sig=***&se=1 and sig=***"
        );
    }

    #[test]
    fn errors_map_to_kinds_without_secrets() {
        let secrets = vec!["TopSecretKeyValue".to_owned()];
        let hints = Hints {
            provider: "azure",
            container: "container",
            credentials: "AZURE_STORAGE_ACCOUNT_KEY",
            endpoint: "HERD_AZURE_ENDPOINT",
            secrets: secrets.into(),
        };
        let source = |text: &str| -> Box<dyn std::error::Error + Send + Sync> { text.into() };
        let cases = [
            (
                object_store::Error::NotFound {
                    path: "x".into(),
                    source: source("BlobNotFound"),
                },
                ErrorKind::NotFound,
            ),
            (
                object_store::Error::PermissionDenied {
                    path: "x".into(),
                    source: source("AuthenticationFailed TopSecretKeyValue"),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                object_store::Error::Unauthenticated {
                    path: "x".into(),
                    source: source("401"),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                object_store::Error::Precondition {
                    path: "x".into(),
                    source: source("412"),
                },
                ErrorKind::Io,
            ),
            (
                object_store::Error::Generic {
                    store: "x",
                    source: source("error sending request: connection refused"),
                },
                ErrorKind::Io,
            ),
            (
                object_store::Error::Generic {
                    store: "x",
                    source: source("Error performing token request"),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                object_store::Error::Generic {
                    store: "x",
                    source: source("Server returned non-2xx status code: 403 Forbidden: <Error>"),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                object_store::Error::Generic {
                    store: "x",
                    source: source("Server returned non-2xx status code: 503 Service Unavailable"),
                },
                ErrorKind::Io,
            ),
        ];
        for (error, kind) in cases {
            let mapped = map_error("cannot download", "azure://c/k", &error, &hints);
            assert_eq!(mapped.kind(), kind, "{}", mapped.report());
            assert!(
                mapped
                    .to_string()
                    .starts_with("cannot download `azure://c/k`: "),
                "{mapped}"
            );
            assert!(
                !mapped.report().contains("TopSecretKeyValue"),
                "{}",
                mapped.report()
            );
        }
        let missing = object_store::Error::Generic {
            store: "x",
            source: source("status code: 404 Not Found: <Code>ContainerNotFound</Code>"),
        };
        let mapped = map_error("cannot list", "azure://c/", &missing, &hints);
        assert!(
            mapped.to_string().contains("the container does not exist"),
            "{mapped}"
        );
    }
}
