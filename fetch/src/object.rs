//! The driver shared by the backends built on the `object_store` crate: [`AzureBackend`]
//! (`azure://container/path`) and [`GcsBackend`] (`gs://bucket/key`). Each of them only says
//! how to build a client for one container or bucket (`Provider`); everything else is here,
//! once:
//!
//! - uploads: files below the multipart threshold go up in one request; larger ones as a
//!   multipart upload (Azure: blocks, then a block list; GCS: the XML multipart API) whose parts
//!   are read at their offsets and sent in parallel, never the whole file in memory. Every object
//!   carries its CRC64NVME as user metadata [`CHECKSUM_METADATA`] (base64 of the big-endian
//!   value, as S3 shows it). A multipart upload that fails or is dropped is aborted.
//! - downloads: streamed into an [`AtomicFile`], or from the threshold on as parallel ranged
//!   GETs (pinned to the object's etag) written at their offsets into a temporary file; the
//!   CRC64NVME computed on the way is compared with the stored one when the object has it, and a
//!   mismatch is an [`ErrorKind::Checksum`] error that leaves no file.
//! - listings go page by page ([`PaginatedListStore`]); deletions of a prefix use the store's
//!   bulk deletion (Azure's blob batch).
//! - `map_error` is the one place where `object_store` errors become [`ErrorKind`]s, and it
//!   blanks every configured secret (and any `sig=` of a SAS) out of what it keeps.
//!
//! [`AzureBackend`]: crate::AzureBackend
//! [`GcsBackend`]: crate::GcsBackend

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use futures::stream::FuturesUnordered;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange,
    MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

use crate::backend::{Entry, FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher, crc64nvme, crc64nvme_reader};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::http::RetryPolicy;
use crate::local::{self, AtomicFile, run_blocking, slash_path};
use crate::memory::join_key;
use crate::uri::{Scheme, Uri};

pub(crate) const MIB: u64 = 1024 * 1024;
/// The smallest part of a multipart upload (GCS's minimum for all but the last part).
pub(crate) const MIN_PART_SIZE: u64 = 5 * MIB;
/// The largest part (Azure's largest block is 4000 MiB, GCS's part 5 GiB).
pub(crate) const MAX_PART_SIZE: u64 = 4000 * MIB;
/// The most parts herd puts in one upload (GCS's limit; Azure allows 50,000 blocks).
const MAX_PARTS: u64 = 10_000;
/// The largest listing page: GCS's `max-keys` limit (Azure allows 5000).
pub(crate) const MAX_BATCH: usize = 1000;

/// The user metadata key under which every object written by herd carries its CRC64NVME
/// (`x-ms-meta-crc64nvme` on Azure, `x-goog-meta-crc64nvme` on GCS).
pub const CHECKSUM_METADATA: &str = "crc64nvme";

/// The store of one container or bucket: an [`ObjectStore`] that also lists page by page.
pub(crate) trait Store: ObjectStore + PaginatedListStore {}

impl<T: ObjectStore + PaginatedListStore> Store for T {}

/// What a scheme built on this driver provides.
pub(crate) trait Provider: Send + Sync + 'static {
    /// The scheme it serves.
    const SCHEME: Scheme;
    /// What the first component of the URI's path is called: "container" or "bucket".
    const CONTAINER: &'static str;
    /// Lower-case name for messages: "azure", "gcs".
    const NAME: &'static str;

    /// A client for `container` (no I/O: clients connect on their first request).
    fn connect(&self, container: &str) -> Result<Arc<dyn Store>>;
    /// Sizes and counts of transfers.
    fn limits(&self) -> Limits;
    /// What to check when access is denied, naming the variables to set.
    fn credentials_advice(&self) -> &'static str;
    /// What to check when the endpoint does not answer.
    fn endpoint_advice(&self) -> &'static str;
    /// The configured secrets (keys, tokens, private keys), blanked out of every error.
    fn secrets(&self) -> Vec<String>;
}

/// How transfers are split and paced; see the `Config` of each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) multipart_threshold: u64,
    pub(crate) part_size: u64,
    pub(crate) concurrency: usize,
    pub(crate) batch_size: usize,
}

impl Limits {
    /// Checks the limits; `name` ("azure", "gcs") starts the message.
    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        let problem = if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            format!(
                "the {name} part size must be from 5 MiB to 4000 MiB, not {} bytes",
                self.part_size
            )
        } else if self.multipart_threshold == 0 {
            format!("the {name} multipart threshold must be at least 1 byte")
        } else if self.concurrency == 0 {
            format!("the {name} concurrency must be at least 1")
        } else if !(1..=MAX_BATCH).contains(&self.batch_size) {
            format!(
                "the {name} batch size must be from 1 to 1000, not {}",
                self.batch_size
            )
        } else {
            return Ok(());
        };
        Err(Error::new(ErrorKind::Unsupported, problem))
    }

    /// The part size for a file of `size` bytes: the configured one, raised to stay within
    /// 10,000 parts.
    fn part_size_for(&self, size: u64) -> u64 {
        let smallest = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.part_size.max(smallest)
    }

    fn is_large(&self, size: u64) -> bool {
        size > 0 && size >= self.multipart_threshold
    }
}

/// The HTTP client settings every provider uses: `object_store`'s retries follow herd's
/// [`RetryPolicy`]; requests may take long (a part of hundreds of MiB on a slow link).
pub(crate) fn client_settings(retry: &RetryPolicy) -> (ClientOptions, RetryConfig) {
    let options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(600));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: retry.first_delay,
            max_backoff: retry.max_delay,
            base: 2.0,
        },
        max_retries: retry.attempts.max(1) as usize - 1,
        retry_timeout: Duration::from_secs(180),
    };
    (options, retry)
}

/// A secret from the configuration: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, to hand to the client; never to a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

/// The backend of a [`Provider`]: implements everything of [`Backend`](crate::Backend).
pub(crate) struct ObjectBackend<P: Provider> {
    pub(crate) provider: P,
    hints: Hints,
    /// A configuration error found by `from_env`, reported by every transfer.
    config_error: Option<(ErrorKind, String)>,
    /// One client per container or bucket, created on first use.
    stores: Mutex<HashMap<String, Arc<dyn Store>>>,
    /// Bounds the requests in flight (and so the memory held by part buffers).
    requests: Arc<Semaphore>,
}

impl<P: Provider> ObjectBackend<P> {
    pub(crate) fn new(provider: P, config_error: Option<(ErrorKind, String)>) -> Self {
        let requests = Arc::new(Semaphore::new(provider.limits().concurrency.max(1)));
        let hints = Hints {
            provider: P::NAME,
            container: P::CONTAINER,
            credentials: provider.credentials_advice(),
            endpoint: provider.endpoint_advice(),
            secrets: provider.secrets().into(),
        };
        ObjectBackend {
            provider,
            hints,
            config_error,
            stores: Mutex::new(HashMap::new()),
            requests,
        }
    }

    pub(crate) fn config_error(&self) -> Option<&(ErrorKind, String)> {
        self.config_error.as_ref()
    }

    pub(crate) fn connected(&self) -> usize {
        self.lock_stores().len()
    }

    fn lock_stores(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Store>>> {
        // A panic while holding the lock cannot leave the map half-updated: keep going.
        self.stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self, container: &str) -> Result<Arc<dyn Store>> {
        if let Some((kind, message)) = &self.config_error {
            return Err(Error::new(*kind, message.clone()));
        }
        if let Some(store) = self.lock_stores().get(container) {
            return Ok(Arc::clone(store));
        }
        let store = self.provider.connect(container)?;
        self.lock_stores()
            .insert(container.to_owned(), Arc::clone(&store));
        Ok(store)
    }

    fn limits(&self) -> Limits {
        self.provider.limits()
    }

    /// Waits for a request slot; held for the duration of one request and its buffer.
    async fn slot(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.requests)
            .acquire_owned()
            .await
            .map_err(|error| Error::with_source(ErrorKind::Io, "the backend was shut down", error))
    }

    /// Maps an `object_store` error (see [`map_error`]).
    fn fail(&self, doing: &str, target: &str, error: object_store::Error) -> Error {
        self.hints.fail(doing, target, error)
    }

    /// The container and key of a URI of this scheme (`scheme://container` has an empty key).
    fn location<'u>(&self, uri: &'u Uri) -> Result<(&'u str, &'u str)> {
        if uri.scheme() != P::SCHEME {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} backend cannot handle `{}`: it is not a {}:// uri",
                    P::NAME,
                    uri.redacted(),
                    P::SCHEME
                ),
            ));
        }
        let (container, key) = uri.path().split_once('/').unwrap_or((uri.path(), ""));
        if container.is_empty() {
            return Err(Error::invalid_uri(format!(
                "`{}` has no {word}: write {}://{word}/path",
                uri.redacted(),
                P::SCHEME,
                word = P::CONTAINER
            )));
        }
        Ok((container, key))
    }

    fn object_uri(&self, container: &str, key: &str) -> String {
        format!("{}://{container}/{key}", P::SCHEME)
    }

    fn names_a_container(&self, uri: &Uri) -> Error {
        Error::invalid_uri(format!(
            "`{}` names a {word}, not an object: add a path, or end it with `/` for the {word}'s content",
            uri.redacted(),
            word = P::CONTAINER
        ))
    }
}

/// The object path of a key written in a URI; keys the store cannot name (empty components,
/// `.` or `..`) are an [`ErrorKind::InvalidUri`].
fn object_path(key: &str, shown: &str) -> Result<ObjectPath> {
    ObjectPath::parse(key).map_err(|error| {
        Error::with_source(
            ErrorKind::InvalidUri,
            format!(
                "`{shown}` cannot name an object: remove empty components, `.` and `..` from its path"
            ),
            error,
        )
    })
}

/// The key prefix of a directory URI's content: `key/`, or nothing for a whole container.
fn directory_prefix(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    }
}

fn prefix_without_slash(uri: &Uri) -> Error {
    Error::invalid_uri(format!(
        "`{}` is a directory: end the uri with `/` to transfer it recursively",
        uri.redacted()
    ))
}

fn nothing_under(uri: &Uri) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("nothing under `{}`: check the uri", uri.redacted()),
    )
}

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
    fn fail(&self, doing: &str, target: &str, error: object_store::Error) -> Error {
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

/// The CRC64NVME an object carries in its metadata, if it has a valid one.
fn stored_crc64nvme(attributes: &Attributes) -> Option<Crc64Nvme> {
    let value = attributes.get(&Attribute::Metadata(CHECKSUM_METADATA.into()))?;
    match Crc64Nvme::from_base64(value.as_ref()) {
        Ok(checksum) => Some(checksum),
        Err(_) => {
            warn!(
                value = value.as_ref(),
                "ignoring a stored crc64nvme that is not base64 of 8 bytes"
            );
            None
        }
    }
}

fn checksum_attributes(checksum: Crc64Nvme) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(CHECKSUM_METADATA.into()),
        AttributeValue::from(checksum.to_base64()),
    );
    attributes
}

/// Fails with [`ErrorKind::Checksum`] when the stored checksum (if any) is not `actual`.
fn check_crc64nvme(expected: Option<Crc64Nvme>, actual: Crc64Nvme, target: &str) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{target}` came down with crc64nvme {actual} but the object's stored checksum is {expected}: the data was corrupted on the way or the object is damaged; retry, and if it persists upload the object again"
            ),
        )),
        _ => Ok(()),
    }
}

/// Renames a downloaded file into place if its checksum matches the stored one; otherwise
/// removes it and fails with [`ErrorKind::Checksum`].
fn commit_verified(
    file: AtomicFile,
    actual: Crc64Nvme,
    expected: Option<Crc64Nvme>,
    target: &str,
) -> Result<(Crc64Nvme, u64)> {
    check_crc64nvme(expected, actual, target)?;
    let (written, length) = file.commit()?;
    if written != actual {
        return Err(Error::new(
            ErrorKind::Io,
            format!("`{target}` changed on disk while it was written: retry"),
        ));
    }
    Ok((written, length))
}

/// The CRC64NVME of the concatenation of pieces, from their CRCs and lengths, in order.
fn combine_crc64nvme(pieces: impl IntoIterator<Item = (Crc64Nvme, u64)>) -> (Crc64Nvme, u64) {
    let mut total = Crc64Nvme::EMPTY;
    let mut length = 0;
    for (checksum, piece_length) in pieces {
        total = Crc64Nvme::from_u64(crc_fast::checksum_combine(
            CrcAlgorithm::Crc64Nvme,
            total.as_u64(),
            checksum.as_u64(),
            piece_length,
        ));
        length += piece_length;
    }
    (total, length)
}

/// Runs `tasks` with at most `limit` at once and returns their results in the tasks' order; the
/// first error drops (cancels) the others.
async fn run_all<T, F>(tasks: Vec<F>, limit: usize) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>>,
{
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(tasks.len()).collect();
    let mut waiting = tasks.into_iter().enumerate();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            let Some((index, task)) = waiting.next() else {
                break;
            };
            running.push(async move { (index, task.await) });
        }
        let Some((index, result)) = running.next().await else {
            break;
        };
        results[index] = Some(result?);
    }
    Ok(results.into_iter().flatten().collect())
}

/// A spawned task that is aborted when its handle is dropped (a failed or cancelled transfer
/// stops its parts).
struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Spawned<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(context)
    }
}

fn joined<T>(result: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|error| Error::with_source(ErrorKind::Io, "a transfer task failed", error))?
}

/// One object of a listing.
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    size: u64,
}

/// A listing: objects, and the sub-prefixes (ending with `/`) when listed with the delimiter.
#[derive(Debug, Default)]
struct Listing {
    objects: Vec<Listed>,
    prefixes: Vec<String>,
}

/// What a HEAD says about an object.
#[derive(Debug, Clone)]
struct Head {
    size: u64,
    etag: Option<String>,
    crc64nvme: Option<Crc64Nvme>,
}

/// Where each object listed under `prefix` lands under `destination`: (relative path, object,
/// local path). Names that would land outside `destination` fail the whole download with
/// [`ErrorKind::Unsafe`] before anything is written; empty "folder" markers (zero-byte objects
/// named like a prefix of other objects, which consoles create) are skipped.
fn download_plan(
    prefix: &str,
    objects: Vec<Listed>,
    destination: &Path,
) -> Result<Vec<(String, Listed, PathBuf)>> {
    let mut directories = HashSet::new();
    for object in &objects {
        let mut end = 0;
        while let Some(slash) = object.key[end..].find('/') {
            end += slash + 1;
            directories.insert(object.key[..end - 1].to_owned());
        }
    }
    let mut downloads = Vec::new();
    for object in objects {
        let relative = object.key[prefix.len()..].to_owned();
        if relative.is_empty() || (object.size == 0 && directories.contains(&object.key)) {
            continue;
        }
        let target = join_key(destination, &relative)?;
        downloads.push((relative, object, target));
    }
    Ok(downloads)
}

/// The size and modification time of a file, to notice it changing while it is uploaded.
fn file_identity(path: &Path) -> Result<(u64, Option<SystemTime>)> {
    let metadata = fs::metadata(path).at("cannot read", path)?;
    Ok((metadata.len(), metadata.modified().ok()))
}

fn changed_while_read(path: &Path) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "`{}` changed while it was uploaded: something is still writing it; retry once it is complete",
            path.display()
        ),
    )
}

/// Aborts a multipart upload that neither completed nor was aborted by hand: when the upload's
/// future is dropped (a timeout, a cancelled task), from a task spawned on the runtime.
struct AbortOnDrop {
    upload: Option<Box<dyn MultipartUpload>>,
    target: String,
}

impl AbortOnDrop {
    fn upload(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.upload
            .as_mut()
            .expect("the upload is present until completed or aborted")
    }

    async fn abort(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            abort_upload(upload.as_mut(), &self.target).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let target = self.target.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { abort_upload(upload.as_mut(), &target).await });
            }
            Err(_) => warn!(
                uri = %target,
                "cannot abort an interrupted multipart upload outside a runtime; a lifecycle rule will have to"
            ),
        }
    }
}

async fn abort_upload(upload: &mut dyn MultipartUpload, target: &str) {
    match upload.abort().await {
        Ok(()) => debug!(uri = %target, "multipart upload aborted"),
        // The error may hold a URL with a SAS signature: blanked out.
        Err(error) => warn!(
            uri = %target,
            error = %redact(&error.to_string(), &[]),
            "a multipart upload may be left over"
        ),
    }
}

/// A file filled at offsets by parallel ranged GETs, under a temporary name in its destination
/// directory: renamed into place by [`commit`](Self::commit), removed if dropped before. (An
/// [`AtomicFile`] writes in sequence only.)
struct PartialFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl PartialFile {
    fn create(final_path: &Path, size: u64) -> Result<PartialFile> {
        let directory = match final_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&directory).at("cannot create the directory", &directory)?;
        let temp_path = directory.join(local::temp_name("file"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .at("cannot create a file in", &directory)?;
        let partial = PartialFile {
            final_path: final_path.to_path_buf(),
            temp_path,
            file: Arc::new(file),
            committed: false,
        };
        partial
            .file
            .set_len(size)
            .at("cannot allocate", &partial.temp_path)?;
        Ok(partial)
    }

    fn commit(mut self) -> Result<()> {
        if fs::symlink_metadata(&self.final_path).is_ok_and(|existing| existing.is_dir()) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot write `{}`: a directory is in the way; remove it or choose another destination",
                    self.final_path.display()
                ),
            ));
        }
        fs::rename(&self.temp_path, &self.final_path).at(
            "cannot move the finished file into place at",
            &self.final_path,
        )?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed
            && let Err(error) = fs::remove_file(&self.temp_path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp_path.display(), %error, "cannot remove a temporary file");
        }
    }
}

// Uploads.
impl<P: Provider> ObjectBackend<P> {
    /// Uploads the local file `source` to `container/key`; returns its checksum and size.
    async fn upload_file(
        &self,
        store: &Arc<dyn Store>,
        source: &Path,
        container: &str,
        key: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let target = self.object_uri(container, key);
        let location = object_path(key, &target)?;
        let path = source.to_path_buf();
        let identity = run_blocking(move |_| {
            let metadata = fs::metadata(&path).at("cannot read", &path)?;
            if !metadata.is_file() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "`{}` is not a regular file (a fifo, socket or device): only files and directories can be uploaded",
                        path.display()
                    ),
                ));
            }
            Ok((metadata.len(), metadata.modified().ok()))
        })
        .await?;
        let (size, _) = identity;
        let result = if self.limits().is_large(size) {
            self.upload_multipart(store, source, identity, &location, &target)
                .await
        } else {
            self.upload_whole(store, source, size, &location, &target)
                .await
        };
        if let Ok((checksum, length)) = &result {
            debug!(source = %source.display(), uri = %target, bytes = length, crc64nvme = %checksum, "uploaded");
        }
        result
    }

    /// One request carrying the content and its CRC64NVME as metadata.
    async fn upload_whole(
        &self,
        store: &Arc<dyn Store>,
        source: &Path,
        size: u64,
        location: &ObjectPath,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let _slot = self.slot().await?;
        let path = source.to_path_buf();
        let (content, checksum) = run_blocking(move |_| {
            let content = fs::read(&path).at("cannot read", &path)?;
            if content.len() as u64 != size {
                return Err(changed_while_read(&path));
            }
            let checksum = crc64nvme(&content);
            Ok((content, checksum))
        })
        .await?;
        let options = PutOptions {
            attributes: checksum_attributes(checksum),
            ..PutOptions::default()
        };
        store
            .put_opts(location, PutPayload::from(Bytes::from(content)), options)
            .await
            .map_err(|error| self.fail("cannot upload to", target, error))?;
        Ok((checksum, size))
    }

    /// A multipart upload: the file's CRC64NVME first (the metadata goes with the upload's
    /// start on GCS), then the parts in parallel, each checksummed again; the parts' CRCs must
    /// combine into the first one, or the file changed and the upload is aborted.
    async fn upload_multipart(
        &self,
        store: &Arc<dyn Store>,
        source: &Path,
        identity: (u64, Option<SystemTime>),
        location: &ObjectPath,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let (size, _) = identity;
        let path = source.to_path_buf();
        let (file, (checksum, length)) = run_blocking(move |cancel| {
            let file = File::open(&path).at("cannot open", &path)?;
            cancel.check()?;
            let sums = crc64nvme_reader(&file).at("cannot read", &path)?;
            Ok((file, sums))
        })
        .await?;
        if length != size {
            return Err(changed_while_read(source));
        }
        let options = PutMultipartOptions {
            attributes: checksum_attributes(checksum),
            ..PutMultipartOptions::default()
        };
        let upload = store
            .put_multipart_opts(location, options)
            .await
            .map_err(|error| self.fail("cannot start a multipart upload to", target, error))?;
        let mut guard = AbortOnDrop {
            upload: Some(upload),
            target: target.to_owned(),
        };
        let result = self
            .send_parts(
                &mut guard,
                Arc::new(file),
                source,
                identity,
                checksum,
                target,
            )
            .await;
        if result.is_err() {
            guard.abort().await;
            return result.map(|()| (checksum, size));
        }
        match guard.upload().complete().await {
            Ok(_) => {
                guard.upload = None;
                Ok((checksum, size))
            }
            Err(error) => {
                let error = self.fail("cannot complete the multipart upload to", target, error);
                guard.abort().await;
                Err(error)
            }
        }
    }

    async fn send_parts(
        &self,
        guard: &mut AbortOnDrop,
        file: Arc<File>,
        source: &Path,
        identity: (u64, Option<SystemTime>),
        expected: Crc64Nvme,
        target: &str,
    ) -> Result<()> {
        let (size, _) = identity;
        let part_size = self.limits().part_size_for(size);
        let count = size.div_ceil(part_size);
        let mut running = FuturesUnordered::new();
        let mut pieces = Vec::with_capacity(count as usize);
        for index in 0..count {
            let offset = index * part_size;
            let length = part_size.min(size - offset);
            // At most `concurrency` parts in memory and in flight: wait for one to finish.
            let slot = loop {
                tokio::select! {
                    slot = self.slot() => break slot?,
                    Some(done) = running.next(), if !running.is_empty() => joined(done)?,
                }
            };
            let part_file = Arc::clone(&file);
            let path = source.to_path_buf();
            let (content, checksum) = run_blocking(move |cancel| {
                cancel.check()?;
                let mut content = vec![0; length as usize];
                match part_file.read_exact_at(&mut content, offset) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(changed_while_read(&path));
                    }
                    Err(error) => return Err(Error::io("cannot read", &path, error)),
                }
                let checksum = crc64nvme(&content);
                Ok((content, checksum))
            })
            .await?;
            pieces.push((checksum, length));
            let part = guard
                .upload()
                .put_part(PutPayload::from(Bytes::from(content)));
            let number = index + 1;
            let shown = target.to_owned();
            let hints = self.hints.clone();
            running.push(Spawned(tokio::spawn(async move {
                let _slot = slot;
                part.await.map_err(|error| {
                    hints.fail(&format!("cannot upload part {number} of"), &shown, error)
                })
            })));
        }
        while let Some(done) = running.next().await {
            joined(done)?;
        }
        let (checksum, length) = combine_crc64nvme(pieces);
        let path = source.to_path_buf();
        let now = run_blocking(move |_| file_identity(&path)).await?;
        if length != size || checksum != expected || now != identity {
            return Err(changed_while_read(source));
        }
        Ok(())
    }
}

// Downloads.
impl<P: Provider> ObjectBackend<P> {
    /// A HEAD with the stored checksum; `None` when there is no such object.
    async fn head(
        &self,
        store: &Arc<dyn Store>,
        location: &ObjectPath,
        target: &str,
    ) -> Result<Option<Head>> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match store.get_opts(location, options).await {
            Ok(result) => Ok(Some(Head {
                size: result.meta.size,
                etag: result.meta.e_tag.clone(),
                crc64nvme: stored_crc64nvme(&result.attributes),
            })),
            // A HEAD answer has no body: a missing container looks like a missing object here,
            // and the listing that follows tells them apart.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.fail("cannot read", target, error)),
        }
    }

    /// Downloads `container/key` to the local file `target`, by ranges when `size_hint` (from a
    /// listing) says it is large.
    async fn download(
        &self,
        store: &Arc<dyn Store>,
        container: &str,
        key: &str,
        size_hint: u64,
        target: &Path,
    ) -> Result<(Crc64Nvme, u64)> {
        let shown = self.object_uri(container, key);
        let location = object_path(key, &shown)?;
        let result = if self.limits().is_large(size_hint) {
            let Some(head) = self.head(store, &location, &shown).await? else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("`{shown}` vanished while it was downloaded: retry"),
                ));
            };
            if self.limits().is_large(head.size) {
                self.download_ranges(store, &location, &head, target, &shown)
                    .await
            } else {
                self.download_whole(store, &location, target, &shown).await
            }
        } else {
            self.download_whole(store, &location, target, &shown).await
        };
        if let Ok((checksum, length)) = &result {
            debug!(uri = %shown, target = %target.display(), bytes = length, crc64nvme = %checksum, "downloaded");
        }
        result
    }

    /// One GET, streamed through an [`AtomicFile`].
    async fn download_whole(
        &self,
        store: &Arc<dyn Store>,
        location: &ObjectPath,
        target: &Path,
        shown: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let _slot = self.slot().await?;
        let response = store
            .get_opts(location, GetOptions::default())
            .await
            .map_err(|error| self.fail("cannot download", shown, error))?;
        let expected = stored_crc64nvme(&response.attributes);
        let expected_length = response.range.end - response.range.start;
        let mut body = response.into_stream();

        let (sender, mut receiver) = mpsc::channel::<Bytes>(16);
        let path = target.to_path_buf();
        let writer = run_blocking(move |cancel| {
            let mut file = AtomicFile::create(&path)?;
            let mut hasher = Crc64NvmeHasher::new();
            while let Some(chunk) = receiver.blocking_recv() {
                cancel.check()?;
                file.write_all(&chunk).at("cannot write", &path)?;
                hasher.update(&chunk);
            }
            Ok((file, hasher))
        });
        let reader = async move {
            while let Some(chunk) = body.try_next().await? {
                if sender.send(chunk).await.is_err() {
                    // The writer stopped; its error says why.
                    break;
                }
            }
            Ok::<(), object_store::Error>(())
        };
        let (written, read) = tokio::join!(writer, reader);
        let (file, hasher) = written?;
        read.map_err(|error| self.fail("cannot download", shown, error))?;
        if hasher.length() != expected_length {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot download `{shown}`: {} of {expected_length} bytes arrived; retry",
                    hasher.length()
                ),
            ));
        }
        let actual = hasher.finish();
        let shown = shown.to_owned();
        run_blocking(move |_| commit_verified(file, actual, expected, &shown)).await
    }

    /// Parallel ranged GETs written at their offsets; the parts' CRCs combine into the whole
    /// file's, checked against the stored one before the file is renamed into place.
    async fn download_ranges(
        &self,
        store: &Arc<dyn Store>,
        location: &ObjectPath,
        head: &Head,
        target: &Path,
        shown: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let size = head.size;
        let path = target.to_path_buf();
        let partial = run_blocking(move |_| PartialFile::create(&path, size)).await?;
        let part_size = self.limits().part_size_for(size);
        let count = size.div_ceil(part_size);
        let ranges: Vec<_> = (0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.download_range(
                    store,
                    location,
                    head.etag.clone(),
                    (offset, length),
                    (Arc::clone(&partial.file), &partial.temp_path),
                    shown,
                )
            })
            .collect();
        let pieces = run_all(ranges, self.limits().concurrency).await?;
        let (actual, length) = combine_crc64nvme(pieces);
        if length != size {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot download `{shown}`: {length} of {size} bytes arrived; retry"),
            ));
        }
        check_crc64nvme(head.crc64nvme, actual, shown)?;
        run_blocking(move |_| partial.commit()).await?;
        Ok((actual, size))
    }

    async fn download_range(
        &self,
        store: &Arc<dyn Store>,
        location: &ObjectPath,
        etag: Option<String>,
        (offset, length): (u64, u64),
        (file, temp_path): (Arc<File>, &Path),
        shown: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let _slot = self.slot().await?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + length)),
            // Every range from the same version of the object, or a precondition error.
            if_match: etag,
            ..GetOptions::default()
        };
        let content = async { store.get_opts(location, options).await?.bytes().await }
            .await
            .map_err(|error| self.fail("cannot download", shown, error))?;
        if content.len() as u64 != length {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot download `{shown}`: bytes {offset}+{length} came back as {} bytes; retry",
                    content.len()
                ),
            ));
        }
        let path = temp_path.to_path_buf();
        run_blocking(move |_| {
            file.write_all_at(&content, offset)
                .at("cannot write", &path)?;
            Ok((crc64nvme(&content), length))
        })
        .await
    }
}

// Listings and deletions.
impl<P: Provider> ObjectBackend<P> {
    /// Every object under `prefix`, page after page; with `delimited`, only those directly
    /// under it, plus its sub-prefixes. At most `limit` objects and prefixes when given.
    async fn list_prefix(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        delimited: bool,
        limit: Option<usize>,
        (doing, target): (&str, &str),
    ) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        let batch = limit.unwrap_or(self.limits().batch_size);
        loop {
            let options = PaginatedListOptions {
                delimiter: delimited.then_some("/".into()),
                max_keys: Some(batch),
                page_token: token.clone(),
                ..PaginatedListOptions::default()
            };
            let page = store
                .list_paginated((!prefix.is_empty()).then_some(prefix), options)
                .await
                .map_err(|error| self.fail(doing, target, error))?;
            for object in page.result.objects {
                listing.objects.push(Listed {
                    key: object.location.to_string(),
                    size: object.size,
                });
            }
            for sub in page.result.common_prefixes {
                listing.prefixes.push(format!("{sub}/"));
            }
            if limit.is_some_and(|limit| listing.objects.len() + listing.prefixes.len() >= limit) {
                break;
            }
            match page.page_token {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => break,
            }
        }
        // Keys outside the prefix cannot come back, but a store may include the prefix itself.
        listing
            .objects
            .retain(|object| object.key.len() > prefix.len() && object.key.starts_with(prefix));
        Ok(listing)
    }

    /// Whether anything is stored under `prefix`.
    async fn has_prefix(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        context: (&str, &str),
    ) -> Result<bool> {
        let listing = self
            .list_prefix(store, prefix, false, Some(1), context)
            .await?;
        Ok(!listing.objects.is_empty() || !listing.prefixes.is_empty())
    }

    /// Deletes `keys` with the store's bulk deletion; those already gone count as deleted.
    async fn delete_keys(
        &self,
        store: &Arc<dyn Store>,
        container: &str,
        keys: Vec<String>,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let count = keys.len();
        let mut locations = Vec::with_capacity(count);
        for key in &keys {
            locations.push(object_path(key, &self.object_uri(container, key))?);
        }
        let stream = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
        let mut results = store.delete_stream(stream);
        let mut index = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    let key = keys.get(index).map_or("", String::as_str);
                    return Err(self.fail(
                        "cannot delete",
                        &self.object_uri(container, key),
                        error,
                    ));
                }
            }
            index += 1;
        }
        debug!(container, keys = count, "deleted");
        Ok(())
    }
}

// The Backend operations.
impl<P: Provider> ObjectBackend<P> {
    pub(crate) async fn get(&self, uri: &Uri, destination: &Path) -> Result<TransferStats> {
        let (container, key) = self.location(uri)?;
        let store = self.store(container)?;
        let shown = uri.redacted().to_string();
        let mut stats = TransferStats::default();
        if !uri.is_dir() {
            if key.is_empty() {
                return Err(self.names_a_container(uri));
            }
            let Some(name) = uri.file_name() else {
                return Err(Error::invalid_uri(format!(
                    "`{shown}` does not end with a file name"
                )));
            };
            let location = object_path(key, &shown)?;
            let Some(head) = self.head(&store, &location, &shown).await? else {
                let prefix = format!("{key}/");
                if self
                    .has_prefix(&store, &prefix, ("cannot download", &shown))
                    .await?
                {
                    return Err(prefix_without_slash(uri));
                }
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("`{shown}` does not exist: check the uri"),
                ));
            };
            let target = destination.join(name);
            let (crc64nvme, size) = if self.limits().is_large(head.size) {
                self.download_ranges(&store, &location, &head, &target, &shown)
                    .await?
            } else {
                self.download_whole(&store, &location, &target, &shown)
                    .await?
            };
            stats.add(FileChecksum {
                path: name.to_owned(),
                size,
                crc64nvme,
            });
            return Ok(stats);
        }

        let prefix = directory_prefix(key);
        let listing = self
            .list_prefix(&store, &prefix, false, None, ("cannot download", &shown))
            .await?;
        let downloads = download_plan(&prefix, listing.objects, destination)?;
        if downloads.is_empty() {
            return Err(nothing_under(uri));
        }
        let tasks: Vec<_> = downloads
            .iter()
            .map(|(_, object, target)| {
                self.download(&store, container, &object.key, object.size, target)
            })
            .collect();
        let results = run_all(tasks, self.limits().concurrency).await?;
        for ((relative, _, _), (crc64nvme, size)) in downloads.into_iter().zip(results) {
            stats.add(FileChecksum {
                path: relative,
                size,
                crc64nvme,
            });
        }
        Ok(stats)
    }

    pub(crate) async fn put(&self, source: &Path, uri: &Uri) -> Result<TransferStats> {
        let (container, key) = self.location(uri)?;
        let store = self.store(container)?;
        let source_path = source.to_path_buf();
        let metadata =
            run_blocking(move |_| fs::metadata(&source_path).at("cannot read", &source_path))
                .await?;
        let mut stats = TransferStats::default();
        if !metadata.is_dir() {
            let key = if uri.is_dir() || key.is_empty() {
                let Some(name) = source.file_name().and_then(|name| name.to_str()) else {
                    return Err(Error::invalid_uri(format!(
                        "`{}` has no file name that can be an object name: rename it or give the full path",
                        source.display()
                    )));
                };
                format!("{}{name}", directory_prefix(key))
            } else {
                key.to_owned()
            };
            let (crc64nvme, size) = self.upload_file(&store, source, container, &key).await?;
            let name = key.rsplit('/').next().unwrap_or_default().to_owned();
            stats.add(FileChecksum {
                path: name,
                size,
                crc64nvme,
            });
            return Ok(stats);
        }

        let prefix = directory_prefix(key);
        let root = source.to_path_buf();
        let files = run_blocking(move |cancel| local::walk_files(&root, cancel)).await?;
        let uploads: Vec<(String, String, PathBuf)> = files
            .into_iter()
            .map(|file| {
                let relative = slash_path(&file.relative);
                (format!("{prefix}{relative}"), relative, file.path)
            })
            .collect();
        let tasks: Vec<_> = uploads
            .iter()
            .map(|(key, _, path)| self.upload_file(&store, path, container, key))
            .collect();
        let results = run_all(tasks, self.limits().concurrency).await?;
        for ((_, relative, _), (crc64nvme, size)) in uploads.into_iter().zip(results) {
            stats.add(FileChecksum {
                path: relative,
                size,
                crc64nvme,
            });
        }
        Ok(stats)
    }

    pub(crate) async fn list(&self, uri: &Uri, recursive: bool) -> Result<Vec<Entry>> {
        let (container, key) = self.location(uri)?;
        let store = self.store(container)?;
        let shown = uri.redacted().to_string();
        let base = uri.without_actions();
        if !uri.is_dir() && !key.is_empty() {
            let location = object_path(key, &shown)?;
            if let Some(head) = self.head(&store, &location, &shown).await? {
                let name = uri.file_name().unwrap_or_default().to_owned();
                return Ok(vec![Entry {
                    uri: base,
                    path: name,
                    size: head.size,
                }]);
            }
        }
        let prefix = directory_prefix(key);
        let listing = self
            .list_prefix(&store, &prefix, !recursive, None, ("cannot list", &shown))
            .await?;
        let mut entries = Vec::new();
        for object in listing.objects {
            let relative = &object.key[prefix.len()..];
            entries.push(Entry {
                uri: base.join(relative)?,
                path: relative.to_owned(),
                size: object.size,
            });
        }
        for sub in listing.prefixes {
            let Some(relative) = sub.strip_prefix(&prefix) else {
                continue;
            };
            if relative.is_empty() || relative == "/" {
                continue;
            }
            entries.push(Entry {
                uri: base.join(relative)?,
                path: relative.to_owned(),
                size: 0,
            });
        }
        if entries.is_empty() {
            return Err(nothing_under(uri));
        }
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        Ok(entries)
    }

    pub(crate) async fn delete(&self, uri: &Uri, recursive: bool) -> Result<()> {
        let (container, key) = self.location(uri)?;
        let store = self.store(container)?;
        let shown = uri.redacted().to_string();
        // Deleting what does not exist (even the container) succeeds.
        let absent = |error: Error| {
            if error.kind() == ErrorKind::NotFound {
                Ok(())
            } else {
                Err(error)
            }
        };
        if !uri.is_dir() {
            if key.is_empty() {
                return Err(self.names_a_container(uri));
            }
            let location = object_path(key, &shown)?;
            match self.head(&store, &location, &shown).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let prefix = format!("{key}/");
                    return match self
                        .has_prefix(&store, &prefix, ("cannot delete", &shown))
                        .await
                    {
                        Ok(true) => Err(prefix_without_slash(uri)),
                        Ok(false) => Ok(()),
                        Err(error) => absent(error),
                    };
                }
                Err(error) => return absent(error),
            }
            self.delete_keys(&store, container, vec![key.to_owned()])
                .await?;
            debug!(uri = %shown, "deleted");
            return Ok(());
        }
        let prefix = directory_prefix(key);
        let listing = match self
            .list_prefix(&store, &prefix, !recursive, None, ("cannot delete", &shown))
            .await
        {
            Ok(listing) => listing,
            Err(error) => return absent(error),
        };
        let keys: Vec<String> = listing
            .objects
            .into_iter()
            .map(|object| object.key)
            .collect();
        self.delete_keys(&store, container, keys).await
    }
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
    fn a_mismatch_fails_with_checksum_and_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let mut file = AtomicFile::create(temp.path().join("object.bin")).unwrap();
        file.write_all(b"123456789").unwrap();
        let stored = crc64nvme(b"something else");
        let error =
            commit_verified(file, crc64nvme(b"123456789"), Some(stored), "gs://b/o").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Checksum);
        assert!(error.to_string().contains(&stored.to_base64()), "{error}");
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 0);
    }

    #[test]
    fn crcs_of_pieces_combine_into_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|index| (index * 7 + 3) as u8).collect();
        let pieces = [0..1, 1..40_000, 40_000..40_000, 40_000..100_000];
        let combined = combine_crc64nvme(
            pieces
                .iter()
                .map(|range| (crc64nvme(&data[range.clone()]), range.len() as u64)),
        );
        assert_eq!(combined, (crc64nvme(&data), data.len() as u64));
    }

    #[test]
    fn folder_markers_are_skipped_and_escapes_refused() {
        let listed = |key: &str, size: u64| Listed {
            key: key.to_owned(),
            size,
        };
        let destination = Path::new("/scratch/target");
        let plan = download_plan(
            "p/",
            vec![listed("p/a", 1), listed("p/sub", 0), listed("p/sub/b", 2)],
            destination,
        )
        .unwrap();
        let planned: Vec<&str> = plan
            .iter()
            .map(|(relative, _, _)| relative.as_str())
            .collect();
        assert_eq!(planned, vec!["a", "sub/b"]);
        let error = download_plan("p/", vec![listed("p/../x", 1)], destination).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsafe);
    }

    #[test]
    fn limits_are_checked() {
        let good = Limits {
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            concurrency: 8,
            batch_size: 1000,
        };
        assert!(good.validate("gcs").is_ok());
        for bad in [
            Limits {
                part_size: MIB,
                ..good
            },
            Limits {
                concurrency: 0,
                ..good
            },
            Limits {
                batch_size: 0,
                ..good
            },
            Limits {
                multipart_threshold: 0,
                ..good
            },
        ] {
            assert_eq!(
                bad.validate("gcs").unwrap_err().kind(),
                ErrorKind::Unsupported
            );
        }
        let huge = 5 * 1024 * 1024 * MIB;
        assert!(huge.div_ceil(good.part_size_for(huge)) <= MAX_PARTS);
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
