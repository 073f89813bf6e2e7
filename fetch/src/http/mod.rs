//! [`HttpBackend`]: downloads over `http://` and `https://` (read-only), with retries and
//! resumption by range.
//!
//! A download streams into an [`AtomicFile`] (checksummed while written) through a writer on
//! the blocking pool, so the async threads never wait on the disk. Connection errors, HTTP 5xx,
//! 408 and 429 are retried with exponential backoff ([`RetryPolicy`]); when a transfer breaks
//! after some bytes, the next try asks for the rest (`Range: bytes=N-`) and appends if the
//! server answers 206, or starts again from zero if it answers 200. A body shorter than its
//! `Content-Length` is never kept.
//!
//! The module also holds the pieces the other network backends (ftp, run+fastq) share: the
//! retry policy and the `FileSink` writer.
//!
//! # Layout
//!
//! - `mod.rs`: [`HttpBackend`] and its [`Config`], the [`Backend`] operations, and
//!   `HttpTarget`, a URL with its credentials kept apart (and out of messages).
//! - `download.rs`: the requests: a download resumed by range, the size of a file, a small text
//!   document (ENA's reports).
//! - `retry.rs`: [`RetryPolicy`], and the mapping of reqwest errors and HTTP statuses to an
//!   error and whether another try may succeed.
//! - `sink.rs`: `FileSink`, the file a download is written to on the blocking pool, checked
//!   (size, MD5) before it gets its name; ftp and run+fastq write through it too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

mod download;
mod retry;
mod sink;

pub use retry::RetryPolicy;
pub(crate) use retry::gave_up;
pub(crate) use sink::{Expected, FileSink, Written, hex};

/// A file name from a URL's last path component: percent-decoded, and refused (kind
/// [`ErrorKind::InvalidUri`]) when empty, `.`, `..`, or holding `/` or NUL once decoded.
pub(crate) fn decoded_file_name(component: &str, shown: &str) -> Result<String> {
    let decoded = percent_encoding::percent_decode_str(component)
        .decode_utf8()
        .map_err(|_| {
            Error::invalid_uri(format!(
                "the file name `{component}` in `{shown}` is not valid UTF-8 once percent-decoded: give a url whose last component is a valid name"
            ))
        })?;
    let bad = decoded.is_empty()
        || decoded == "."
        || decoded == ".."
        || decoded.contains('/')
        || decoded.contains('\0');
    if bad {
        return Err(Error::invalid_uri(format!(
            "`{shown}` does not end with a usable file name (got `{decoded}`): give the url of a file, e.g. https://host/data/reads.fastq.gz"
        )));
    }
    Ok(decoded.into_owned())
}

/// A request target: the URL without credentials, and the credentials apart.
#[derive(Clone)]
pub(crate) struct HttpTarget {
    url: reqwest::Url,
    credentials: Option<(String, String)>,
    /// The URL for messages (no password, no query).
    shown: String,
}

impl HttpTarget {
    /// The target of an `http://` or `https://` URI.
    pub(crate) fn from_uri(uri: &Uri) -> Result<HttpTarget> {
        let shown = uri.redacted().to_string();
        let scheme = match uri.scheme() {
            Scheme::Http => "http",
            Scheme::Https => "https",
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("the http backend cannot handle {other}:// (`{shown}`)"),
                ));
            }
        };
        let path = uri.path();
        let authority_end = path.find(['/', '?', '#']).unwrap_or(path.len());
        let (authority, rest) = path.split_at(authority_end);
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (Some((decode(user), decode(password))), host)
            }
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(Error::invalid_uri(format!(
                "`{shown}` has no host: write {scheme}://host/path"
            )));
        }
        let without_fragment = rest.split('#').next().unwrap_or_default();
        let url = reqwest::Url::parse(&format!("{scheme}://{host}{without_fragment}")).map_err(
            |error| {
                Error::with_source(
                    ErrorKind::InvalidUri,
                    format!("`{shown}` is not a valid url: check the host, port and path"),
                    error,
                )
            },
        )?;
        Ok(HttpTarget {
            url,
            credentials,
            shown,
        })
    }

    /// The target of a URL built by herd itself (no credentials), e.g. ENA's.
    pub(crate) fn from_url(url: &str) -> Result<HttpTarget> {
        let parsed = reqwest::Url::parse(url).map_err(|error| {
            Error::with_source(
                ErrorKind::InvalidUri,
                format!("`{url}` is not a valid url"),
                error,
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_uri(format!(
                "`{url}` is not an http or https url"
            )));
        }
        let mut shown = parsed.clone();
        if shown.query().is_some() {
            shown.set_query(Some("***"));
        }
        Ok(HttpTarget {
            url: parsed,
            credentials: None,
            shown: shown.to_string(),
        })
    }

    /// The URL for messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }
}

/// Settings of the [`HttpBackend`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// How failed tries are retried.
    pub retry: RetryPolicy,
    /// PEM files of certificate authorities to trust for `https://`, besides the system's
    /// (a site or a cluster with a private CA).
    pub ca_bundles: Vec<PathBuf>,
}

impl Config {
    /// The environment variable naming extra CA bundles (PEM files, `:`-separated).
    pub const CA_BUNDLE_VARIABLE: &'static str = "HERD_CA_BUNDLE";

    /// The default retry policy, and the CA bundles of `HERD_CA_BUNDLE`.
    pub fn from_env() -> Config {
        let ca_bundles = std::env::var_os(Self::CA_BUNDLE_VARIABLE)
            .map(|value| {
                std::env::split_paths(&value)
                    .filter(|path| !path.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Config {
            retry: RetryPolicy::DEFAULT,
            ca_bundles,
        }
    }
}

fn build_client(ca_bundles: &[PathBuf]) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("herd-fetch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(HttpBackend::CONNECT_TIMEOUT)
        .read_timeout(HttpBackend::READ_TIMEOUT);
    for path in ca_bundles {
        let variable = Config::CA_BUNDLE_VARIABLE;
        let pem = std::fs::read(path).map_err(|error| {
            Error::with_source(
                ErrorKind::Unsupported,
                format!(
                    "cannot read the CA bundle `{}` ({variable}); point {variable} to a PEM file of certificates",
                    path.display()
                ),
                error,
            )
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|certificates| !certificates.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the CA bundle `{}` ({variable}) holds no PEM certificate; point {variable} to a PEM file of certificates",
                        path.display()
                    ),
                )
            })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| {
        Error::with_source(
            ErrorKind::Unsupported,
            "cannot set up the http client (tls)",
            error.without_url(),
        )
    })
}

/// `http://` and `https://`: downloads and single-URL listings; uploads and deletions are
/// refused (HTTP has no standard way to write or list here).
///
/// `user:password@` in the URL is sent as basic authentication and never shown in messages.
/// A URL ending with `/` is refused: HTTP has no listing protocol to download a directory with.
/// Responses are taken as they are (no `Accept-Encoding`), so a `.gz` file stays compressed.
#[derive(Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
    progress: Progress,
}

struct Inner {
    /// The client, or why it could not be built (reported by every call).
    client: Result<reqwest::Client>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpBackend")
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl Default for HttpBackend {
    fn default() -> Self {
        HttpBackend::new()
    }
}

impl HttpBackend {
    /// How long connecting may take.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long a response may stay silent before the try fails.
    pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

    /// The backend configured from the environment ([`Config::from_env`]).
    pub fn new() -> Self {
        HttpBackend::with_config(Config::from_env())
    }

    /// The backend with the retry policy `retry` and only the system's certificate authorities.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        HttpBackend::with_config(Config {
            retry,
            ca_bundles: Vec::new(),
        })
    }

    /// The backend with `config`. A client that cannot be set up (an unreadable CA bundle)
    /// makes every call fail with the reason.
    pub fn with_config(config: Config) -> Self {
        let client = build_client(&config.ca_bundles);
        HttpBackend {
            inner: Arc::new(Inner {
                client,
                retry: config.retry,
            }),
            progress: Progress::disabled(),
        }
    }

    /// Counts what this backend downloads in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.inner.retry
    }

    fn client(&self) -> Result<&reqwest::Client> {
        self.inner.client.as_ref().map_err(Error::clone)
    }

    fn request(
        &self,
        method: reqwest::Method,
        target: &HttpTarget,
    ) -> Result<reqwest::RequestBuilder> {
        let mut request = self.client()?.request(method, target.url.clone());
        if let Some((user, password)) = &target.credentials {
            request = request.basic_auth(user, Some(password));
        }
        Ok(request)
    }
}

fn read_only(uri: &Uri, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "cannot {what} `{}`: http and https are read-only in herd; upload to s3://, ftp:// or a local path instead",
            uri.redacted()
        ),
    )
}

fn refuse_directory(uri: &Uri) -> Result<()> {
    if uri.is_dir() {
        return Err(Error::invalid_uri(format!(
            "`{}` ends with `/`, but http has no directory listing: name a single file, or use ftp:// or s3:// to transfer a directory",
            uri.redacted()
        )));
    }
    Ok(())
}

/// The decoded file name a download of `uri` gets.
fn file_name(uri: &Uri) -> Result<String> {
    let shown = uri.redacted().to_string();
    let path = uri.path();
    let without_query = path.split(['?', '#']).next().unwrap_or_default();
    let Some((_, after_host)) = without_query.split_once('/') else {
        return Err(Error::invalid_uri(format!(
            "`{shown}` names no file after the host: give the url of a file, e.g. https://host/data/reads.fastq.gz"
        )));
    };
    let last = after_host.rsplit('/').next().unwrap_or_default();
    decoded_file_name(last, &shown)
}

impl Backend for HttpBackend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            refuse_directory(uri)?;
            let name = file_name(uri)?;
            let target = HttpTarget::from_uri(uri)?;
            let expected = Expected {
                source: target.shown().to_owned(),
                ..Expected::default()
            };
            let written = self
                .download(&target, &destination.join(&name), expected)
                .await?;
            let mut stats = TransferStats::default();
            stats.add(FileChecksum {
                path: name,
                size: written.size,
                crc64nvme: written.crc64nvme,
            });
            Ok(stats)
        })
    }

    fn put<'a>(&'a self, _source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move { Err(read_only(uri, "upload to")) })
    }

    fn list<'a>(&'a self, uri: &'a Uri, _recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            refuse_directory(uri)?;
            let name = file_name(uri)?;
            let target = HttpTarget::from_uri(uri)?;
            let size = self.remote_size(&target).await?.unwrap_or(0);
            Ok(vec![Entry {
                uri: uri.without_actions(),
                path: name,
                size,
            }])
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, _recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Err(read_only(uri, "delete")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_credentials_out_of_the_url() {
        let uri = Uri::parse("https://me:p%40ss@example.org:8443/a/b%20c.txt?sig=1#top").unwrap();
        let target = HttpTarget::from_uri(&uri).unwrap();
        assert_eq!(
            target.url.as_str(),
            "https://example.org:8443/a/b%20c.txt?sig=1"
        );
        assert_eq!(
            target.credentials,
            Some(("me".to_owned(), "p@ss".to_owned()))
        );
        assert!(!target.shown().contains("p%40ss"));
        assert_eq!(file_name(&uri).unwrap(), "b c.txt");
    }

    #[test]
    fn bad_file_names_are_refused() {
        for text in [
            "https://host",
            "https://host/",
            "https://host/a/%2E%2E",
            "https://host/a%2Fb",
            "https://host/a/.",
        ] {
            let uri = Uri::parse(text).unwrap();
            let result = refuse_directory(&uri).and_then(|()| file_name(&uri));
            assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidUri, "{text}");
        }
    }
}
