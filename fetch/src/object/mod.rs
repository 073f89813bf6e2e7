//! The driver shared by the backends built on the `object_store` crate: [`AzureBackend`]
//! (`azure://container/path`) and [`GcsBackend`] (`gs://bucket/key`). Each of them only says
//! how to build a client for one container or bucket (`Provider`); the transfers themselves
//! are written once, for these and for `s3://`, in the private module `bucket`. What is here is
//! `object_store`'s side of them:
//!
//! - every object carries its CRC64NVME as user metadata [`CHECKSUM_METADATA`] (base64 of the
//!   big-endian value, as S3 shows it), written on upload and checked on download;
//! - multipart uploads (Azure: blocks, then a block list; GCS: the XML multipart API): the
//!   file's CRC64NVME first (the metadata goes with the upload's start on GCS), then the parts,
//!   read at their offsets and sent in parallel, never the whole file in memory; one that fails
//!   or is dropped is aborted;
//! - listings go page by page ([`PaginatedListStore`]); deletions of a prefix use the store's
//!   bulk deletion (Azure's blob batch);
//! - `map_error` is the one place where `object_store` errors become [`ErrorKind`]s, and it
//!   blanks every configured secret (and any `sig=` of a SAS) out of what it keeps.
//!
//! [`AzureBackend`]: crate::AzureBackend
//! [`GcsBackend`]: crate::GcsBackend

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange,
    MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, TransferStats};
use crate::bucket::{
    self, AbortOnDrop, Body, Bucket, FileIdentity, Head, Limits, Listed, Listing, MIB, Naming,
    PendingUpload, Transfers, changed_while_read, combine_crc64nvme, file_identity,
    parse_stored_crc64nvme, read_part, slot, split_uri,
};
use crate::checksum::{Crc64Nvme, crc64nvme_reader};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::http::RetryPolicy;
use crate::local::run_blocking;
use crate::progress::Progress;
use crate::uri::Uri;

/// The smallest part of a multipart upload (GCS's minimum for all but the last part).
pub(crate) const MIN_PART_SIZE: u64 = 5 * MIB;
/// The largest part (Azure's largest block is 4000 MiB, GCS's part 5 GiB).
pub(crate) const MAX_PART_SIZE: u64 = 4000 * MIB;
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
    /// The backend's configuration.
    type Config: fmt::Debug + Default + Send + Sync;
    /// How messages name the scheme's parts.
    const NAMING: Naming;

    /// The provider of `config`.
    fn new(config: Self::Config) -> Self;
    /// The configuration in use.
    fn config(&self) -> &Self::Config;
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

impl Limits {
    /// Checks the limits of an `object_store` backend; `name` ("azure", "gcs") starts the
    /// message.
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

/// Fails unless `endpoint`, when set, is an `http://` or `https://` URL; `backend` ("azure",
/// "gcs") and `variable` (the setting to fix) go into the message.
pub(crate) fn check_endpoint(endpoint: Option<&str>, backend: &str, variable: &str) -> Result<()> {
    match endpoint {
        Some(endpoint)
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) =>
        {
            Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {backend} endpoint `{endpoint}` must start with http:// or https://: fix {variable}"
                ),
            ))
        }
        _ => Ok(()),
    }
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

/// The backend of a [`Provider`]; each public backend is one, under its own name
/// ([`ObjectBacked`]).
pub(crate) struct ObjectBackend<P: Provider> {
    provider: P,
    hints: Hints,
    /// A configuration error found by `from_env`, reported by every transfer.
    config_error: Option<Error>,
    /// One client per container or bucket, created on first use.
    stores: Mutex<HashMap<String, Arc<dyn Store>>>,
    transfers: Transfers,
}

impl<P: Provider> ObjectBackend<P> {
    /// A backend with `config`, already checked.
    pub(crate) fn new(config: P::Config) -> Self {
        ObjectBackend::with_error(P::new(config), None)
    }

    /// A backend with the configuration read from the environment; without one, the default
    /// configuration and its error, which every transfer then reports.
    pub(crate) fn from_env(configured: Result<P::Config>) -> Self {
        match configured {
            Ok(config) => ObjectBackend::new(config),
            Err(error) => ObjectBackend::with_error(P::new(P::Config::default()), Some(error)),
        }
    }

    fn with_error(provider: P, config_error: Option<Error>) -> Self {
        let hints = Hints {
            provider: P::NAMING.backend,
            container: P::NAMING.container,
            credentials: provider.credentials_advice(),
            endpoint: provider.endpoint_advice(),
            secrets: provider.secrets().into(),
        };
        ObjectBackend {
            transfers: Transfers::new(provider.limits()),
            provider,
            hints,
            config_error,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// Counts what this backend moves in `progress`.
    pub(crate) fn with_progress(mut self, progress: Progress) -> Self {
        self.transfers.progress = progress;
        self
    }

    /// The configuration in use.
    pub(crate) fn config(&self) -> &P::Config {
        self.provider.config()
    }

    /// `Debug` of the public backend `name`: its configuration (secrets hidden), and how many
    /// containers or buckets it has clients for.
    pub(crate) fn debug(&self, name: &str, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct(name)
            .field("config", self.config())
            .field("config_error", &self.config_error)
            .field(
                &format!("{}s", P::NAMING.container),
                &self.lock_stores().len(),
            )
            .finish()
    }

    fn lock_stores(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Store>>> {
        // A panic while holding the lock cannot leave the map half-updated: keep going.
        self.stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self, container: &str) -> Result<Arc<dyn Store>> {
        if let Some(error) = &self.config_error {
            return Err(error.clone());
        }
        if let Some(store) = self.lock_stores().get(container) {
            return Ok(Arc::clone(store));
        }
        let store = self.provider.connect(container)?;
        self.lock_stores()
            .insert(container.to_owned(), Arc::clone(&store));
        Ok(store)
    }

    /// The container a URI names and its key; fails with the configuration error, if any.
    fn open<'a>(&'a self, uri: &'a Uri) -> Result<(Container<'a, P>, &'a str)> {
        let (container, key) = split_uri(uri, &P::NAMING)?;
        let store = self.store(container)?;
        Ok((
            Container {
                backend: self,
                store,
                name: container,
            },
            key,
        ))
    }
}

/// A public backend that is one [`ObjectBackend`] under its own name: it is a
/// [`Backend`] through it.
pub(crate) trait ObjectBacked: Send + Sync + 'static {
    /// The scheme's provider.
    type Provider: Provider;
    /// The backend it is.
    fn driver(&self) -> &ObjectBackend<Self::Provider>;
}

impl<T: ObjectBacked> Backend for T {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (container, key) = self.driver().open(uri)?;
            bucket::get(&container, uri, key, destination).await
        })
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (container, key) = self.driver().open(uri)?;
            bucket::put(&container, source, uri, key).await
        })
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            let (container, key) = self.driver().open(uri)?;
            bucket::list(&container, uri, key, recursive).await
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (container, key) = self.driver().open(uri)?;
            bucket::delete(&container, uri, key, recursive).await
        })
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
    parse_stored_crc64nvme(value.as_ref())
}

fn checksum_attributes(checksum: Crc64Nvme) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(CHECKSUM_METADATA.into()),
        AttributeValue::from(checksum.to_base64()),
    );
    attributes
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

/// One container or bucket, through its client: what the functions of [`bucket`] drive.
struct Container<'a, P: Provider> {
    backend: &'a ObjectBackend<P>,
    store: Arc<dyn Store>,
    name: &'a str,
}

impl<P: Provider> Container<'_, P> {
    /// Maps an `object_store` error (see [`map_error`]).
    fn fail(&self, doing: &str, target: &str, error: object_store::Error) -> Error {
        self.backend.hints.fail(doing, target, error)
    }

    /// At most `limit` objects and prefixes under `prefix` (all when `None`), page after page.
    async fn list_some(
        &self,
        prefix: &str,
        delimited: bool,
        limit: Option<usize>,
        (doing, target): (&str, &str),
    ) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        let batch = limit.unwrap_or(self.backend.transfers.limits.batch_size);
        loop {
            let options = PaginatedListOptions {
                delimiter: delimited.then_some("/".into()),
                max_keys: Some(batch),
                page_token: token.clone(),
                ..PaginatedListOptions::default()
            };
            let page = self
                .store
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

    /// Sends the parts of `file` (`identity` before the upload started) and checks that they
    /// combine into `expected`, the CRC64NVME the upload was started with.
    async fn send_parts(
        &self,
        guard: &mut AbortOnDrop<ObjectUpload>,
        file: Arc<File>,
        source: &Path,
        identity: FileIdentity,
        expected: Crc64Nvme,
    ) -> Result<()> {
        let (size, _) = identity;
        let part_size = self.backend.transfers.limits.part_size_for(size);
        let count = size.div_ceil(part_size);
        let mut running = FuturesUnordered::new();
        let mut pieces = Vec::with_capacity(count as usize);
        for index in 0..count {
            let offset = index * part_size;
            let length = part_size.min(size - offset);
            // At most `concurrency` parts in memory and in flight: wait for one to finish.
            let slot = loop {
                tokio::select! {
                    slot = slot(self) => break slot?,
                    Some(done) = running.next(), if !running.is_empty() => joined(done)?,
                }
            };
            let (content, checksum) =
                read_part(Arc::clone(&file), source, (offset, length)).await?;
            pieces.push((checksum, length));
            let upload = guard.upload();
            let part = upload
                .upload
                .put_part(PutPayload::from(Bytes::from(content)));
            let number = index + 1;
            let target = upload.target.clone();
            let hints = self.backend.hints.clone();
            let progress = self.backend.transfers.progress.clone();
            running.push(Spawned(tokio::spawn(async move {
                let _slot = slot;
                part.await.map_err(|error| {
                    hints.fail(&format!("cannot upload part {number} of"), &target, error)
                })?;
                progress.transferred(length);
                Ok(())
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

impl<P: Provider> Bucket for Container<'_, P> {
    type Location = ObjectPath;
    const NAMING: Naming = P::NAMING;

    fn name(&self) -> &str {
        self.name
    }

    fn transfers(&self) -> &Transfers {
        &self.backend.transfers
    }

    fn locate(&self, key: &str, target: &str) -> Result<ObjectPath> {
        object_path(key, target)
    }

    async fn head(&self, location: &ObjectPath, target: &str) -> Result<Option<Head>> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(location, options).await {
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

    async fn list_prefix(
        &self,
        prefix: &str,
        delimited: bool,
        context: (&str, &str),
    ) -> Result<Listing> {
        self.list_some(prefix, delimited, None, context).await
    }

    async fn has_prefix(&self, prefix: &str, context: (&str, &str)) -> Result<bool> {
        let listing = self.list_some(prefix, false, Some(1), context).await?;
        Ok(!listing.objects.is_empty() || !listing.prefixes.is_empty())
    }

    async fn get_whole(&self, location: &ObjectPath, target: &str) -> Result<Body> {
        let response = self
            .store
            .get_opts(location, GetOptions::default())
            .await
            .map_err(|error| self.fail("cannot download", target, error))?;
        let crc64nvme = stored_crc64nvme(&response.attributes);
        let length = response.range.end - response.range.start;
        let (hints, shown) = (self.backend.hints.clone(), target.to_owned());
        let chunks = response
            .into_stream()
            .map_err(move |error| hints.fail("cannot download", &shown, error))
            .boxed();
        Ok(Body {
            crc64nvme,
            length: Some(length),
            chunks,
        })
    }

    async fn get_range(
        &self,
        location: &ObjectPath,
        etag: Option<&str>,
        (offset, length): (u64, u64),
        target: &str,
    ) -> Result<Bytes> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + length)),
            // Every range from the same version of the object, or a precondition error.
            if_match: etag.map(str::to_owned),
            ..GetOptions::default()
        };
        async { self.store.get_opts(location, options).await?.bytes().await }
            .await
            .map_err(|error| self.fail("cannot download", target, error))
    }

    async fn put_whole(
        &self,
        location: &ObjectPath,
        content: Vec<u8>,
        checksum: Crc64Nvme,
        target: &str,
    ) -> Result<()> {
        let options = PutOptions {
            attributes: checksum_attributes(checksum),
            ..PutOptions::default()
        };
        self.store
            .put_opts(location, PutPayload::from(Bytes::from(content)), options)
            .await
            .map_err(|error| self.fail("cannot upload to", target, error))?;
        Ok(())
    }

    /// The file's CRC64NVME first (the metadata goes with the upload's start on GCS), then the
    /// parts in parallel, each checksummed again; the parts' CRCs must combine into the first
    /// one, or the file changed and the upload is aborted.
    async fn put_multipart(
        &self,
        location: &ObjectPath,
        source: &Path,
        identity: FileIdentity,
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
        // Started by a task of its own: were this future dropped while the request is in flight,
        // the store would hold an upload nobody knows of. The task gets the upload whatever
        // happens, and if no one is left to receive it, drops the guard, which aborts.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (store, owned_location, owned_target) =
            (Arc::clone(&self.store), location.clone(), target.to_owned());
        tokio::spawn(async move {
            let started = store
                .put_multipart_opts(&owned_location, options)
                .await
                .map(|upload| {
                    AbortOnDrop::new(ObjectUpload {
                        upload,
                        target: owned_target,
                    })
                });
            // Unreceived, the guard comes back in the error and is dropped here: aborted.
            let _ = sender.send(started);
        });
        let mut guard = receiver
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot upload to `{target}`: the task starting the multipart upload failed; retry"),
                )
            })?
            .map_err(|error| self.fail("cannot start a multipart upload to", target, error))?;
        let result = self
            .send_parts(&mut guard, Arc::new(file), source, identity, checksum)
            .await;
        if let Err(error) = result {
            guard.abort().await;
            return Err(error);
        }
        match guard.upload().upload.complete().await {
            Ok(_) => {
                guard.disarm();
                Ok((checksum, size))
            }
            Err(error) => {
                let error = self.fail("cannot complete the multipart upload to", target, error);
                guard.abort().await;
                Err(error)
            }
        }
    }

    async fn delete_object(&self, location: &ObjectPath, _target: &str) -> Result<()> {
        self.delete_keys(vec![location.to_string()]).await
    }

    /// The store's bulk deletion.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let count = keys.len();
        let mut locations = Vec::with_capacity(count);
        for key in &keys {
            locations.push(object_path(key, &self.object_uri(key))?);
        }
        let stream = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(stream);
        let mut index = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    let key = keys.get(index).map_or("", String::as_str);
                    return Err(self.fail("cannot delete", &self.object_uri(key), error));
                }
            }
            index += 1;
        }
        debug!(container = self.name, keys = count, "deleted");
        Ok(())
    }
}

/// A multipart upload `object_store` started.
struct ObjectUpload {
    upload: Box<dyn MultipartUpload>,
    target: String,
}

impl PendingUpload for ObjectUpload {
    fn target(&self) -> &str {
        &self.target
    }

    async fn abort(&mut self) {
        match self.upload.abort().await {
            Ok(()) => debug!(uri = %self.target, "multipart upload aborted"),
            // The error may hold a URL with a SAS signature: blanked out.
            Err(error) => warn!(
                uri = %self.target,
                error = %redact(&error.to_string(), &[]),
                "a multipart upload may be left over"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::MAX_PARTS;

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
