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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest as _, Md5};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{AtomicFile, run_blocking};
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

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

/// What a finished file must match before it is given its final name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expected {
    /// Where the bytes came from, as messages should show it (no secrets).
    pub(crate) source: String,
    /// The size announced by the source.
    pub(crate) size: Option<u64>,
    /// The MD5 announced by the source.
    pub(crate) md5: Option<[u8; 16]>,
}

/// A file fully written by a [`FileSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) crc64nvme: Crc64Nvme,
    pub(crate) size: u64,
    pub(crate) md5: Option<[u8; 16]>,
}

enum SinkMessage {
    Data(Vec<u8>),
    Restart,
    Commit(Expected),
}

/// A local file being downloaded: bytes sent from async code are written by a task on the
/// blocking pool into an [`AtomicFile`] (CRC64NVME, and MD5 when asked, computed on the way).
/// [`commit`](Self::commit) checks the size and MD5 and gives the file its final name; dropped
/// without a commit (an error, a cancelled download), the temporary file is removed.
pub(crate) struct FileSink {
    sender: Option<mpsc::Sender<SinkMessage>>,
    writer: Option<tokio::task::JoinHandle<Result<Written>>>,
    path: PathBuf,
    written: u64,
    progress: Progress,
    /// Whether the file's size was announced to `progress`.
    announced: bool,
}

impl FileSink {
    /// Starts the file that will be `path` (parent directories are created), announced to
    /// `progress` with its `size` when known (see [`announce`](Self::announce)).
    pub(crate) async fn create(
        path: PathBuf,
        with_md5: bool,
        progress: &Progress,
        size: Option<u64>,
    ) -> Result<FileSink> {
        let create_path = path.clone();
        let file = run_blocking(move |_| AtomicFile::create(&create_path)).await?;
        let (sender, receiver) = mpsc::channel(16);
        let writer = tokio::task::spawn_blocking(move || write_sink(file, receiver, with_md5));
        progress.expect_file(size.unwrap_or(0));
        Ok(FileSink {
            sender: Some(sender),
            writer: Some(writer),
            path,
            written: 0,
            progress: progress.clone(),
            announced: size.is_some(),
        })
    }

    /// Announces the file's size to the progress counters, if it was not known at creation.
    pub(crate) fn announce(&mut self, size: u64) {
        if !self.announced {
            self.announced = true;
            self.progress.expect_bytes(size);
        }
    }

    /// Bytes accepted since the file was started (or restarted).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`.
    pub(crate) async fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        let length = bytes.len() as u64;
        self.send(SinkMessage::Data(bytes)).await?;
        self.written += length;
        self.progress.transferred(length);
        Ok(())
    }

    /// Empties the file, to download it again from the start.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.send(SinkMessage::Restart).await?;
        self.progress.restarted(self.written);
        self.written = 0;
        Ok(())
    }

    /// Checks the file against `expected` and renames it to its final name; on a mismatch
    /// (kind [`ErrorKind::Checksum`]) nothing is left.
    pub(crate) async fn commit(mut self, expected: Expected) -> Result<Written> {
        self.send(SinkMessage::Commit(expected)).await?;
        self.sender = None;
        let written = self.join_writer().await?;
        self.progress.file_done();
        Ok(written)
    }

    /// Gives up the file: the temporary file is removed before this returns (a sink merely
    /// dropped, on cancellation, is removed by its writer shortly after).
    pub(crate) async fn abort(mut self) {
        self.sender = None;
        if self.writer.is_some() {
            let _ = self.join_writer().await;
        }
    }

    async fn send(&mut self, message: SinkMessage) -> Result<()> {
        let Some(sender) = &self.sender else {
            return Err(Error::new(ErrorKind::Io, "the file was already finished"));
        };
        if sender.send(message).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: it failed, and says why.
        self.sender = None;
        match self.join_writer().await {
            Err(error) => Err(error),
            Ok(_) => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the writer of `{}` stopped early; retry",
                    self.path.display()
                ),
            )),
        }
    }

    async fn join_writer(&mut self) -> Result<Written> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::new(ErrorKind::Io, "the file was already finished"));
        };
        writer.await.map_err(|error| {
            Error::with_source(ErrorKind::Io, "a file writer task panicked", error)
        })?
    }
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FileSink")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish()
    }
}

fn write_sink(
    mut file: AtomicFile,
    mut receiver: mpsc::Receiver<SinkMessage>,
    with_md5: bool,
) -> Result<Written> {
    let new_hasher = || with_md5.then(Md5::new);
    let mut md5 = new_hasher();
    let mut length: u64 = 0;
    while let Some(message) = receiver.blocking_recv() {
        match message {
            SinkMessage::Data(bytes) => {
                file.write_all(&bytes)
                    .at("cannot write", file.final_path())?;
                if let Some(hasher) = &mut md5 {
                    hasher.update(&bytes);
                }
                length += bytes.len() as u64;
            }
            SinkMessage::Restart => {
                let path = file.final_path().to_path_buf();
                drop(file);
                file = AtomicFile::create(&path)?;
                md5 = new_hasher();
                length = 0;
            }
            SinkMessage::Commit(expected) => {
                let md5 = md5.map(|hasher| <[u8; 16]>::from(hasher.finalize()));
                check_expected(&expected, length, md5)?;
                let (crc64nvme, size) = file.commit()?;
                return Ok(Written {
                    crc64nvme,
                    size,
                    md5,
                });
            }
        }
    }
    // The sender went away without a commit: the download failed or was cancelled; dropping
    // the file removes it.
    Err(Error::new(ErrorKind::Io, "the download was cancelled"))
}

fn check_expected(expected: &Expected, length: u64, md5: Option<[u8; 16]>) -> Result<()> {
    if let Some(size) = expected.size
        && size != length
    {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{}` has {length} bytes but {size} were announced: the download is incomplete or the source changed; download it again",
                expected.source
            ),
        ));
    }
    if let (Some(wanted), Some(actual)) = (expected.md5, md5)
        && wanted != actual
    {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{}` has md5 {} but {} was announced: the download is corrupt or the source changed; download it again",
                expected.source,
                hex(&actual),
                hex(&wanted)
            ),
        ));
    }
    Ok(())
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

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

/// Why a try failed, and whether another may succeed.
struct Failure {
    error: Error,
    transient: bool,
    /// The server's `Retry-After`, when it gave one.
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
            retry_after: None,
        }
    }

    fn transient(error: Error) -> Failure {
        Failure {
            error,
            transient: true,
            retry_after: None,
        }
    }
}

/// The largest ENA report or other text document read into memory.
const MAX_TEXT_BYTES: usize = 64 << 20;

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

    /// Downloads `target` to the local file `path` (through a temporary name), retrying and
    /// resuming; `expected` is checked before the file gets its name (`with_md5` computes the
    /// MD5 on the way).
    pub(crate) async fn download(
        &self,
        target: &HttpTarget,
        path: &Path,
        expected: Expected,
    ) -> Result<Written> {
        let mut sink = FileSink::create(
            path.to_path_buf(),
            expected.md5.is_some(),
            &self.progress,
            expected.size,
        )
        .await?;
        let total = match self.fill(target, &mut sink).await {
            Ok(total) => total,
            Err(error) => {
                sink.abort().await;
                return Err(error);
            }
        };
        let mut expected = expected;
        if expected.source.is_empty() {
            expected.source = target.shown().to_owned();
        }
        if expected.size.is_none() {
            expected.size = total;
        }
        let written = sink.commit(expected).await?;
        debug!(url = %target.shown(), bytes = written.size, "downloaded");
        Ok(written)
    }

    /// Tries until `sink` holds all of `target`; returns the size the server announced.
    async fn fill(&self, target: &HttpTarget, sink: &mut FileSink) -> Result<Option<u64>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        let mut furthest = 0;
        let mut total: Option<u64> = None;
        loop {
            let failure = match self.download_once(target, sink, &mut total).await {
                Ok(()) => return Ok(total),
                Err(failure) => failure,
            };
            if !failure.transient {
                return Err(failure.error);
            }
            if sink.written() > furthest {
                furthest = sink.written();
            } else {
                failures += 1;
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            let delay = retry
                .delay(failures.max(1))
                .max(failure.retry_after.unwrap_or_default().min(retry.max_delay));
            warn!(
                url = %target.shown(),
                failures,
                bytes = sink.written(),
                error = %failure.error.report(),
                "http download failed; trying again"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: asks for what `sink` lacks and appends it.
    async fn download_once(
        &self,
        target: &HttpTarget,
        sink: &mut FileSink,
        total: &mut Option<u64>,
    ) -> std::result::Result<(), Failure> {
        let shown = target.shown();
        let offset = sink.written();
        let mut request = self
            .request(reqwest::Method::GET, target)
            .map_err(Failure::fatal)?;
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| request_failure(shown, error))?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = content_range(&response);
                match range {
                    Some(ContentRange::Bytes { start, total: size }) if start == offset => {
                        if size.is_some() {
                            *total = size;
                        }
                    }
                    _ => {
                        // Not the part asked for: start again from zero.
                        sink.restart().await.map_err(Failure::fatal)?;
                        return Err(Failure::transient(Error::new(
                            ErrorKind::Io,
                            format!(
                                "`{shown}`: the server sent another part than bytes {offset}- when asked to resume"
                            ),
                        )));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                if let Some(ContentRange::Unsatisfied { total: size }) = content_range(&response)
                    && size == offset
                {
                    // Everything had arrived already.
                    *total = Some(size);
                    return Ok(());
                }
                sink.restart().await.map_err(Failure::fatal)?;
                return Err(Failure::transient(Error::new(
                    ErrorKind::Io,
                    format!("`{shown}`: the server refused to resume at byte {offset}"),
                )));
            }
            status if status.is_success() => {
                if offset > 0 {
                    debug!(url = %shown, offset, "the server ignored the range: downloading again from zero");
                    sink.restart().await.map_err(Failure::fatal)?;
                }
                *total = header_length(&response);
            }
            status => return Err(status_failure(shown, &response, status)),
        }
        if let Some(size) = *total {
            sink.announce(size);
        }
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => sink.write(bytes.to_vec()).await.map_err(Failure::fatal)?,
                Ok(None) => break,
                Err(error) => {
                    let received = sink.written();
                    let of = total.map(|size| format!(" of {size}")).unwrap_or_default();
                    return Err(Failure::transient(Error::with_source(
                        ErrorKind::Io,
                        format!("`{shown}`: the transfer broke after {received}{of} bytes"),
                        error.without_url(),
                    )));
                }
            }
        }
        if let Some(size) = *total {
            let received = sink.written();
            if received < size {
                return Err(Failure::transient(Error::new(
                    ErrorKind::Io,
                    format!(
                        "`{shown}`: the server sent {received} of {size} bytes, then closed the connection"
                    ),
                )));
            }
            if received > size {
                return Err(Failure::fatal(Error::new(
                    ErrorKind::Checksum,
                    format!(
                        "`{shown}`: the server sent {received} bytes but announced {size}; download it again"
                    ),
                )));
            }
        }
        Ok(())
    }

    /// The size of `target` (HEAD, or GET without reading the body when HEAD is refused), with
    /// retries.
    async fn remote_size(&self, target: &HttpTarget) -> Result<Option<u64>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        let mut method = reqwest::Method::HEAD;
        loop {
            let failure = match self.size_once(target, method.clone()).await {
                Ok(Some(size)) => return Ok(size),
                Ok(None) => {
                    method = reqwest::Method::GET;
                    continue;
                }
                Err(failure) => failure,
            };
            failures += 1;
            if !failure.transient {
                return Err(failure.error);
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            tokio::time::sleep(retry.delay(failures)).await;
        }
    }

    /// `Ok(None)`: the server refuses HEAD, ask with GET.
    async fn size_once(
        &self,
        target: &HttpTarget,
        method: reqwest::Method,
    ) -> std::result::Result<Option<Option<u64>>, Failure> {
        let is_head = method == reqwest::Method::HEAD;
        let response = self
            .request(method, target)
            .map_err(Failure::fatal)?
            .send()
            .await
            .map_err(|error| request_failure(target.shown(), error))?;
        let status = response.status();
        if is_head
            && matches!(
                status,
                StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
            )
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_failure(target.shown(), &response, status));
        }
        Ok(Some(header_length(&response)))
    }

    /// GETs `target` as text (at most 64 MiB), with retries: for small documents such as ENA's
    /// reports. `Ok(None)` when the server answers 204 No Content.
    pub(crate) async fn get_text(&self, target: &HttpTarget) -> Result<Option<String>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        loop {
            let failure = match self.get_text_once(target).await {
                Ok(text) => return Ok(text),
                Err(failure) => failure,
            };
            failures += 1;
            if !failure.transient {
                return Err(failure.error);
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            warn!(url = %target.shown(), failures, error = %failure.error.report(), "http request failed; trying again");
            tokio::time::sleep(retry.delay(failures)).await;
        }
    }

    async fn get_text_once(
        &self,
        target: &HttpTarget,
    ) -> std::result::Result<Option<String>, Failure> {
        let shown = target.shown();
        let mut response = self
            .request(reqwest::Method::GET, target)
            .map_err(Failure::fatal)?
            .send()
            .await
            .map_err(|error| request_failure(shown, error))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_failure(shown, &response, status));
        }
        let announced = header_length(&response);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    body.extend_from_slice(&bytes);
                    if body.len() > MAX_TEXT_BYTES {
                        return Err(Failure::fatal(Error::new(
                            ErrorKind::InvalidData,
                            format!(
                                "`{shown}` is larger than {} MiB: not the document expected",
                                MAX_TEXT_BYTES >> 20
                            ),
                        )));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(Failure::transient(Error::with_source(
                        ErrorKind::Io,
                        format!("`{shown}`: the transfer broke"),
                        error.without_url(),
                    )));
                }
            }
        }
        if let Some(size) = announced
            && size != body.len() as u64
        {
            return Err(Failure::transient(Error::new(
                ErrorKind::Io,
                format!(
                    "`{shown}`: the server sent {} of {size} bytes, then closed the connection",
                    body.len()
                ),
            )));
        }
        String::from_utf8(body).map(Some).map_err(|error| {
            Failure::fatal(Error::with_source(
                ErrorKind::InvalidData,
                format!("`{shown}` is not utf-8 text"),
                error,
            ))
        })
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

fn request_failure(shown: &str, error: reqwest::Error) -> Failure {
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
fn status_failure(shown: &str, response: &reqwest::Response, status: StatusCode) -> Failure {
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

/// `Content-Length`, read from the header itself (reqwest's `content_length` is a body hint).
fn header_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

enum ContentRange {
    /// `bytes START-END/TOTAL` (TOTAL may be `*`).
    Bytes { start: u64, total: Option<u64> },
    /// `bytes */TOTAL`, with a 416.
    Unsatisfied { total: u64 },
}

fn content_range(response: &reqwest::Response) -> Option<ContentRange> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.trim().parse().ok()?,
        });
    }
    let (start, _end) = range.split_once('-')?;
    Some(ContentRange::Bytes {
        start: start.trim().parse().ok()?,
        total: total.trim().parse().ok(),
    })
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
