//! [`S3Backend`]: `s3://bucket/key` and `s3://bucket/prefix/` on Amazon S3 and S3-compatible
//! stores (SeaweedFS, MinIO, Ceph), through the AWS SDK, always with path-style addressing.
//!
//! Every object it writes carries a CRC64NVME checksum of type `FULL_OBJECT`, computed here while
//! the file is read (the KBase CDM Task Service refuses objects without one):
//! - below [`Config::multipart_threshold`], one PutObject with `x-amz-checksum-crc64nvme`;
//! - from it on, a multipart upload created for CRC64NVME `FULL_OBJECT`, parts sent in parallel,
//!   and CompleteMultipartUpload given the whole file's CRC64NVME, combined from the parts' CRCs.
//!   Any failure aborts the upload, so an object is either complete or absent.
//!
//! Every download is checksummed while written and compared, when the object has one, with its
//! stored full-object CRC64NVME; a mismatch is an [`ErrorKind::Checksum`] error and leaves no
//! file. Objects from [`Config::multipart_threshold`] on come down as parallel ranged GETs
//! written at their offsets into a temporary file.
//!
//! # Configuration
//!
//! [`S3Backend::from_env`] (what `Resolver::default` uses) reads herd's variables, which win
//! when set, over the usual AWS configuration (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_PROFILE`, `~/.aws/config`, `~/.aws/credentials`, the credentials chain):
//! `HERD_S3_ENDPOINT`, `HERD_S3_REGION` (else `us-east-1` when nothing sets a region),
//! `HERD_S3_ACCESS_KEY_ID` with `HERD_S3_SECRET_ACCESS_KEY`, and `HERD_S3_PROFILE`. Nothing is
//! read from the network until the first transfer, which creates the client.
//!
//! AWS SSO profiles and `credential_process` are not supported: this build leaves those parts of
//! the SDK out.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart, Delete,
    ObjectIdentifier,
};
use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{OnceCell, Semaphore, mpsc};
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher, crc64nvme};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, AtomicFile, run_blocking, slash_path};
use crate::memory::join_key;
use crate::progress::{Progress, TryCount};
use crate::uri::{Scheme, Uri};

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last one).
const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's largest number of parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// S3's largest ListObjectsV2 page and DeleteObjects request.
const MAX_BATCH: u32 = 1000;
/// The region used when neither herd's nor the AWS configuration sets one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A static access key. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The access key id (not secret: it shows in logs and server error messages).
    pub id: String,
    secret: String,
}

impl AccessKey {
    /// The key `id` with its secret.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        AccessKey {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

/// Where [`S3Backend`] finds its store, and how it splits large transfers. `None` fields fall
/// back to the AWS configuration (environment, `~/.aws/config`, `~/.aws/credentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Endpoint URL, such as `http://127.0.0.1:8333`; `None`: `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL` or the profile's `endpoint_url`, else AWS itself.
    pub endpoint: Option<String>,
    /// Region; `None`: `AWS_REGION` or the profile's, else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// A static access key; `None`: the AWS credentials chain (environment, profile files, web
    /// identity, container and instance metadata).
    pub access_key: Option<AccessKey>,
    /// Profile of the AWS configuration files; `None`: `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// Files of at least this many bytes go up as multipart uploads, and objects of at least
    /// this many bytes come down as parallel ranged GETs.
    pub multipart_threshold: u64,
    /// Bytes per part and per ranged GET: from 5 MiB (S3's minimum) to 5 GiB. Raised for a file
    /// that would need more than 10,000 parts.
    pub part_size: u64,
    /// Requests in flight at once (parts, ranges, whole small files), shared by every transfer
    /// of the backend: memory stays under about `concurrency` times the larger of `part_size`
    /// and `multipart_threshold`.
    pub concurrency: usize,
    /// Keys per ListObjectsV2 page and per DeleteObjects request: 1 to 1000 (S3's limit).
    pub batch_size: u32,
}

impl Default for Config {
    /// No endpoint, region, key or profile of its own (the AWS configuration decides); 16 MiB
    /// threshold and parts, 8 requests at once, batches of 1000.
    fn default() -> Self {
        Config {
            endpoint: None,
            region: None,
            access_key: None,
            profile: None,
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            concurrency: 8,
            batch_size: MAX_BATCH,
        }
    }
}

impl Config {
    /// The defaults, with `HERD_S3_ENDPOINT`, `HERD_S3_REGION`, `HERD_S3_PROFILE` and
    /// `HERD_S3_ACCESS_KEY_ID` + `HERD_S3_SECRET_ACCESS_KEY` where set (empty counts as unset).
    pub fn from_env() -> Result<Config> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let access_key = match (
            variable("HERD_S3_ACCESS_KEY_ID"),
            variable("HERD_S3_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some(AccessKey::new(id, secret)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(half_a_key(
                    "HERD_S3_ACCESS_KEY_ID",
                    "HERD_S3_SECRET_ACCESS_KEY",
                ));
            }
            (None, Some(_)) => {
                return Err(half_a_key(
                    "HERD_S3_SECRET_ACCESS_KEY",
                    "HERD_S3_ACCESS_KEY_ID",
                ));
            }
        };
        Ok(Config {
            endpoint: variable("HERD_S3_ENDPOINT"),
            region: variable("HERD_S3_REGION"),
            access_key,
            profile: variable("HERD_S3_PROFILE"),
            ..Config::default()
        })
    }

    /// Checks the sizes and counts against S3's limits.
    pub fn validate(&self) -> Result<()> {
        let problem = if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            format!(
                "the s3 part size must be from 5 MiB to 5 GiB (S3's limits), not {} bytes",
                self.part_size
            )
        } else if self.multipart_threshold == 0 {
            "the s3 multipart threshold must be at least 1 byte".to_owned()
        } else if self.concurrency == 0 {
            "the s3 concurrency must be at least 1".to_owned()
        } else if !(1..=MAX_BATCH).contains(&self.batch_size) {
            format!(
                "the s3 batch size must be from 1 to 1000 (S3's limit), not {}",
                self.batch_size
            )
        } else {
            return Ok(());
        };
        Err(Error::new(ErrorKind::Unsupported, problem))
    }
}

fn half_a_key(set: &str, missing: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{set} is set but {missing} is not: set both, or neither to use the AWS credentials chain"
        ),
    )
}

/// `s3://bucket/key` and `s3://bucket/prefix/`: see the [module documentation](self).
///
/// The client is created on first use, so building one (and a `Resolver`) does no I/O.
pub struct S3Backend {
    config: Config,
    /// A configuration error found by [`S3Backend::from_env`], reported by every transfer.
    config_error: Option<(ErrorKind, String)>,
    client: OnceCell<Client>,
    /// Bounds the requests in flight (and so the memory held by part buffers).
    requests: Arc<Semaphore>,
    progress: Progress,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("S3Backend")
            .field("config", &self.config)
            .field("config_error", &self.config_error)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl S3Backend {
    /// A backend with `config`, checked with [`Config::validate`].
    pub fn new(config: Config) -> Result<S3Backend> {
        config.validate()?;
        Ok(S3Backend::unchecked(config, None))
    }

    /// A backend configured by [`Config::from_env`]. It never fails: a configuration error
    /// (such as half an access key) is reported by every transfer instead.
    pub fn from_env() -> S3Backend {
        match Config::from_env() {
            Ok(config) => S3Backend::unchecked(config, None),
            Err(error) => {
                let reported = (error.kind(), error.message().to_owned());
                S3Backend::unchecked(Config::default(), Some(reported))
            }
        }
    }

    fn unchecked(config: Config, config_error: Option<(ErrorKind, String)>) -> S3Backend {
        let requests = Arc::new(Semaphore::new(config.concurrency.max(1)));
        S3Backend {
            config,
            config_error,
            client: OnceCell::new(),
            requests,
            progress: Progress::disabled(),
        }
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn client(&self) -> Result<&Client> {
        if let Some((kind, message)) = &self.config_error {
            return Err(Error::new(*kind, message.clone()));
        }
        Ok(self.client.get_or_init(|| build_client(&self.config)).await)
    }

    /// Waits for a request slot; held for the duration of one request and its buffer.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.requests.acquire().await.map_err(|error| {
            Error::with_source(ErrorKind::Io, "the s3 backend was shut down", error)
        })
    }

    /// The part size for a file of `size` bytes: the configured one, raised to stay within
    /// S3's 10,000 parts.
    fn part_size_for(&self, size: u64) -> u64 {
        let smallest = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.config.part_size.max(smallest)
    }

    fn is_large(&self, size: u64) -> bool {
        size > 0 && size >= self.config.multipart_threshold
    }
}

async fn build_client(config: &Config) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(key) = &config.access_key {
        loader =
            loader.credentials_provider(Credentials::new(&key.id, &key.secret, None, None, "herd"));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(true);
    if shared.region().is_none() {
        builder = builder.region(Region::from_static(DEFAULT_REGION));
    }
    debug!(
        endpoint = ?config.endpoint,
        region = ?shared.region(),
        profile = ?config.profile,
        "s3 client created"
    );
    Client::from_conf(builder.build())
}

/// The bucket and key of an `s3://` URI (`s3://bucket` has an empty key).
fn location(uri: &Uri) -> Result<(&str, &str)> {
    if uri.scheme() != Scheme::S3 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the s3 backend cannot handle `{}`: it is not an s3:// uri",
                uri.redacted()
            ),
        ));
    }
    let (bucket, key) = uri.path().split_once('/').unwrap_or((uri.path(), ""));
    if bucket.is_empty() {
        return Err(Error::invalid_uri(format!(
            "`{}` has no bucket: write s3://bucket/key",
            uri.redacted()
        )));
    }
    Ok((bucket, key))
}

/// The key prefix of a directory URI's content: `key/`, or nothing for a whole bucket.
fn directory_prefix(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    }
}

fn object_uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

fn names_a_bucket(uri: &Uri) -> Error {
    Error::invalid_uri(format!(
        "`{}` names a bucket, not an object: add a key, or end it with `/` for the bucket's content",
        uri.redacted()
    ))
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

/// A failed S3 call, reduced to what [`map_error`] classifies.
struct Failure {
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
fn map_error(doing: &str, target: &str, failure: impl Into<Failure>) -> Error {
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

/// The full-object CRC64NVME stored with an object, if it has one. Composite checksums (per
/// part, written `value-N`) cannot be compared with a whole file's CRC and count as none.
fn stored_crc64nvme(
    value: Option<&str>,
    checksum_type: Option<&ChecksumType>,
) -> Option<Crc64Nvme> {
    let value = value?;
    if matches!(checksum_type, Some(ChecksumType::Composite)) || value.contains('-') {
        return None;
    }
    match Crc64Nvme::from_base64(value) {
        Ok(checksum) => Some(checksum),
        Err(_) => {
            warn!(
                value,
                "ignoring a stored crc64nvme that is not base64 of 8 bytes"
            );
            None
        }
    }
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
/// first error drops (cancels) the others. (A loop rather than stream combinators: closures held
/// across awaits make the backend's futures fail the `Send` check.)
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

/// What HeadObject says about an object.
#[derive(Debug, Clone)]
struct Head {
    size: u64,
    etag: Option<String>,
    crc64nvme: Option<Crc64Nvme>,
}

/// One object of a listing.
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    size: u64,
}

/// A listing: objects, and the sub-prefixes when listed with the `/` delimiter.
#[derive(Debug, Default)]
struct Listing {
    objects: Vec<Listed>,
    prefixes: Vec<String>,
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

/// A part uploaded to S3.
struct UploadedPart {
    number: i32,
    etag: String,
    crc64nvme: Crc64Nvme,
    length: u64,
}

/// Aborts a multipart upload that neither completed nor was aborted by hand: when the upload's
/// future is dropped (a timeout, a cancelled task), from a task spawned on the runtime.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.upload_id = None;
    }

    async fn abort(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort_upload(&self.client, &self.bucket, &self.key, &upload_id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (client, bucket, key) =
                    (self.client.clone(), self.bucket.clone(), self.key.clone());
                runtime
                    .spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
            }
            Err(_) => warn!(
                uri = %object_uri(&self.bucket, &self.key),
                upload_id,
                "cannot abort an interrupted multipart upload outside a runtime; a lifecycle rule will have to"
            ),
        }
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => debug!(uri = %object_uri(bucket, key), upload_id, "multipart upload aborted"),
        Err(error) => {
            let error = map_error(
                "cannot abort the multipart upload to",
                &object_uri(bucket, key),
                error,
            );
            warn!(upload_id, error = %error.report(), "a multipart upload may be left over");
        }
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
impl S3Backend {
    /// Uploads the local file `source` to `bucket/key`; returns its checksum and size.
    async fn upload_file(
        &self,
        client: &Client,
        source: &Path,
        bucket: &str,
        key: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let path = source.to_path_buf();
        let (size, modified) = run_blocking(move |_| {
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
        let result = if self.is_large(size) {
            self.upload_multipart(client, source, (size, modified), bucket, key)
                .await
        } else {
            self.upload_whole(client, source, size, bucket, key).await
        };
        if let Ok((checksum, length)) = &result {
            self.progress.file_done();
            debug!(source = %source.display(), uri = %object_uri(bucket, key), bytes = length, crc64nvme = %checksum, "uploaded");
        }
        result
    }

    /// One PutObject carrying the CRC64NVME computed while the file was read.
    async fn upload_whole(
        &self,
        client: &Client,
        source: &Path,
        size: u64,
        bucket: &str,
        key: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let target = object_uri(bucket, key);
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
        let response = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_length(size as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(checksum.to_base64())
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|error| map_error("cannot upload to", &target, error))?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, &target)?;
        self.progress.transferred(size);
        Ok((checksum, size))
    }

    /// A multipart upload with a full-object CRC64NVME; aborted on any failure.
    async fn upload_multipart(
        &self,
        client: &Client,
        source: &Path,
        identity: (u64, Option<SystemTime>),
        bucket: &str,
        key: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let target = object_uri(bucket, key);
        let (size, _) = identity;
        let part_size = self.part_size_for(size);
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
            .map_err(|error| map_error("cannot start a multipart upload to", &target, error))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot upload to `{target}`: the server started a multipart upload without an upload id; retry"
                ),
            ));
        };
        let mut guard = AbortOnDrop {
            client: client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self
            .send_parts(client, source, identity, part_size, bucket, key, &upload_id)
            .await;
        match result {
            Ok(done) => {
                guard.disarm();
                Ok(done)
            }
            Err(error) => {
                guard.abort().await;
                Err(error)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_parts(
        &self,
        client: &Client,
        source: &Path,
        identity: (u64, Option<SystemTime>),
        part_size: u64,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let target = object_uri(bucket, key);
        let (size, _) = identity;
        let path = source.to_path_buf();
        let file =
            Arc::new(run_blocking(move |_| File::open(&path).at("cannot open", &path)).await?);
        let count = size.div_ceil(part_size);
        let uploads: Vec<_> = (0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.send_part(
                    client,
                    Arc::clone(&file),
                    source,
                    (offset, length),
                    index as i32 + 1,
                    (bucket, key, upload_id),
                )
            })
            .collect();
        let parts = run_all(uploads, self.config.concurrency).await?;
        let (checksum, length) =
            combine_crc64nvme(parts.iter().map(|part| (part.crc64nvme, part.length)));
        let path = source.to_path_buf();
        let now = run_blocking(move |_| file_identity(&path)).await?;
        if length != size || now != identity {
            return Err(changed_while_read(source));
        }
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|part| {
                CompletedPart::builder()
                    .part_number(part.number)
                    .e_tag(&part.etag)
                    .checksum_crc64_nvme(part.crc64nvme.to_base64())
                    .build()
            })
            .collect();
        let response = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .checksum_type(ChecksumType::FullObject)
            .checksum_crc64_nvme(checksum.to_base64())
            .mpu_object_size(size as i64)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| {
                map_error("cannot complete the multipart upload to", &target, error)
            })?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, &target)?;
        Ok((checksum, size))
    }

    async fn send_part(
        &self,
        client: &Client,
        file: Arc<File>,
        source: &Path,
        (offset, length): (u64, u64),
        number: i32,
        (bucket, key, upload_id): (&str, &str, &str),
    ) -> Result<UploadedPart> {
        let _slot = self.slot().await?;
        let path = source.to_path_buf();
        let (content, checksum) = run_blocking(move |cancel| {
            cancel.check()?;
            let mut content = vec![0; length as usize];
            match file.read_exact_at(&mut content, offset) {
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
        let response = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(length as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(checksum.to_base64())
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|error| {
                map_error(
                    &format!("cannot upload part {number} of"),
                    &object_uri(bucket, key),
                    error,
                )
            })?;
        let Some(etag) = response.e_tag().map(str::to_owned) else {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot upload part {number} of `{}`: the server answered without an etag; retry",
                    object_uri(bucket, key)
                ),
            ));
        };
        self.progress.transferred(length);
        Ok(UploadedPart {
            number,
            etag,
            crc64nvme: checksum,
            length,
        })
    }
}

/// Where each object listed under `prefix` lands under `destination`: (relative path, object,
/// local path). Keys that would land outside `destination` (`..`, empty components) fail the
/// whole download with [`ErrorKind::Unsafe`] before anything is written; zero-byte "folder"
/// markers (keys ending with `/`, which consoles create) are skipped.
fn download_plan(
    prefix: &str,
    objects: Vec<Listed>,
    destination: &Path,
) -> Result<Vec<(String, Listed, PathBuf)>> {
    let mut downloads = Vec::new();
    for object in objects {
        let relative = object.key[prefix.len()..].to_owned();
        if relative.is_empty() || relative.ends_with('/') {
            continue;
        }
        let target = join_key(destination, &relative)?;
        downloads.push((relative, object, target));
    }
    Ok(downloads)
}

/// Fails when the store reports, for what it just stored, a full-object checksum other than the
/// one computed here (a store that does not validate checksums may do that).
fn check_stored(stored: Option<Crc64Nvme>, sent: Crc64Nvme, target: &str) -> Result<()> {
    match stored {
        Some(stored) if stored != sent => Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{target}` was stored with crc64nvme {stored} but {sent} was sent: the data was corrupted on the way; upload it again"
            ),
        )),
        _ => Ok(()),
    }
}

// Downloads.
impl S3Backend {
    /// HeadObject with the stored checksum; `None` when there is no such object.
    async fn head(&self, client: &Client, bucket: &str, key: &str) -> Result<Option<Head>> {
        let response = client
            .head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match response {
            Ok(head) => Ok(Some(Head {
                size: head.content_length().unwrap_or(0).max(0) as u64,
                etag: head.e_tag().map(str::to_owned),
                crc64nvme: stored_crc64nvme(head.checksum_crc64_nvme(), head.checksum_type()),
            })),
            Err(error) => {
                let error = map_error("cannot read", &object_uri(bucket, key), error);
                if error.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Downloads `bucket/key` to the local file `target`, by ranges when `size_hint` (from a
    /// listing) says it is large.
    async fn download(
        &self,
        client: &Client,
        bucket: &str,
        key: &str,
        size_hint: Option<u64>,
        target: &Path,
    ) -> Result<(Crc64Nvme, u64)> {
        let result = match size_hint {
            Some(size) if self.is_large(size) => {
                let Some(head) = self.head(client, bucket, key).await? else {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "`{}` vanished while it was downloaded: retry",
                            object_uri(bucket, key)
                        ),
                    ));
                };
                if self.is_large(head.size) {
                    self.download_ranges(client, bucket, key, &head, target)
                        .await
                } else {
                    self.download_whole(client, bucket, key, target).await
                }
            }
            _ => self.download_whole(client, bucket, key, target).await,
        };
        if let Ok((checksum, length)) = &result {
            self.progress.file_done();
            debug!(uri = %object_uri(bucket, key), target = %target.display(), bytes = length, crc64nvme = %checksum, "downloaded");
        }
        result
    }

    /// One GetObject, streamed through an [`AtomicFile`].
    async fn download_whole(
        &self,
        client: &Client,
        bucket: &str,
        key: &str,
        target: &Path,
    ) -> Result<(Crc64Nvme, u64)> {
        let shown = object_uri(bucket, key);
        let _slot = self.slot().await?;
        let response = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|error| map_error("cannot download", &shown, error))?;
        let expected = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        let expected_length = response.content_length().map(|length| length.max(0) as u64);
        let mut body = response.body;

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
        let mut counted = TryCount::new(&self.progress);
        let counter = &mut counted;
        let reader = async move {
            while let Some(chunk) = body.try_next().await? {
                counter.add(chunk.len() as u64);
                if sender.send(chunk).await.is_err() {
                    // The writer stopped; its error says why.
                    break;
                }
            }
            Ok::<(), ByteStreamError>(())
        };
        let (written, read) = tokio::join!(writer, reader);
        let (file, hasher) = written?;
        read.map_err(|error| map_error("cannot download", &shown, error))?;
        if let Some(expected_length) = expected_length
            && hasher.length() != expected_length
        {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot download `{shown}`: {} of {expected_length} bytes arrived; retry",
                    hasher.length()
                ),
            ));
        }
        let actual = hasher.finish();
        let committed =
            run_blocking(move |_| commit_verified(file, actual, expected, &shown)).await?;
        counted.keep();
        Ok(committed)
    }

    /// Parallel ranged GETs written at their offsets; the parts' CRCs combine into the whole
    /// file's, checked against the stored one before the file is renamed into place.
    async fn download_ranges(
        &self,
        client: &Client,
        bucket: &str,
        key: &str,
        head: &Head,
        target: &Path,
    ) -> Result<(Crc64Nvme, u64)> {
        let shown = object_uri(bucket, key);
        let size = head.size;
        let path = target.to_path_buf();
        let partial = run_blocking(move |_| PartialFile::create(&path, size)).await?;
        let part_size = self.part_size_for(size);
        let count = size.div_ceil(part_size);
        let ranges: Vec<_> = (0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.download_range(
                    client,
                    (bucket, key),
                    head.etag.as_deref(),
                    (offset, length),
                    Arc::clone(&partial.file),
                    &partial.temp_path,
                )
            })
            .collect();
        let pieces = run_all(ranges, self.config.concurrency).await?;
        let (actual, length) = combine_crc64nvme(pieces);
        if length != size {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot download `{shown}`: {length} of {size} bytes arrived; retry"),
            ));
        }
        check_crc64nvme(head.crc64nvme, actual, &shown)?;
        run_blocking(move |_| partial.commit()).await?;
        Ok((actual, size))
    }

    async fn download_range(
        &self,
        client: &Client,
        (bucket, key): (&str, &str),
        etag: Option<&str>,
        (offset, length): (u64, u64),
        file: Arc<File>,
        temp_path: &Path,
    ) -> Result<(Crc64Nvme, u64)> {
        let shown = object_uri(bucket, key);
        let _slot = self.slot().await?;
        let mut request = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + length - 1));
        if let Some(etag) = etag {
            // Every range from the same version of the object, or a PreconditionFailed error.
            request = request.if_match(etag);
        }
        let response = request
            .send()
            .await
            .map_err(|error| map_error("cannot download", &shown, error))?;
        let content = response
            .body
            .collect()
            .await
            .map_err(|error| map_error("cannot download", &shown, error))?
            .into_bytes();
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
        let piece = run_blocking(move |_| {
            file.write_all_at(&content, offset)
                .at("cannot write", &path)?;
            Ok((crc64nvme(&content), length))
        })
        .await?;
        self.progress.transferred(length);
        Ok(piece)
    }
}

// Listings and deletions.
impl S3Backend {
    /// Every object under `prefix` (ListObjectsV2, page after page); with `delimited`, only
    /// those directly under it, plus its sub-prefixes.
    async fn list_prefix(
        &self,
        client: &Client,
        bucket: &str,
        prefix: &str,
        delimited: bool,
    ) -> Result<Listing> {
        let shown = object_uri(bucket, prefix);
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let mut request = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(self.config.batch_size as i32);
            if delimited {
                request = request.delimiter("/");
            }
            if let Some(token) = &token {
                request = request.continuation_token(token);
            }
            let page = request
                .send()
                .await
                .map_err(|error| map_error("cannot list", &shown, error))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    listing.objects.push(Listed {
                        key: key.to_owned(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            for common in page.common_prefixes() {
                if let Some(sub) = common.prefix() {
                    listing.prefixes.push(sub.to_owned());
                }
            }
            let next = page
                .next_continuation_token()
                .filter(|_| page.is_truncated() == Some(true));
            match next {
                Some(next) if token.as_deref() != Some(next) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(listing)
    }

    /// Whether anything is stored under `prefix`; errors say `doing` `target`, the URI the
    /// caller was given.
    async fn has_prefix(
        &self,
        client: &Client,
        bucket: &str,
        prefix: &str,
        (doing, target): (&str, &str),
    ) -> Result<bool> {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|error| map_error(doing, target, error))?;
        Ok(!page.contents().is_empty() || !page.common_prefixes().is_empty())
    }

    /// Deletes `keys`, `batch_size` per DeleteObjects request.
    async fn delete_keys(&self, client: &Client, bucket: &str, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(self.config.batch_size as usize) {
            let shown = object_uri(bucket, &batch[0]);
            let identifiers = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            let delete = Delete::builder()
                .set_objects(Some(identifiers))
                .quiet(true)
                .build()
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            let response = client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            if let Some(failed) = response.errors().first() {
                let key = failed.key().unwrap_or_default().to_owned();
                return Err(map_error(
                    &format!("cannot delete ({} keys failed)", response.errors().len()),
                    &object_uri(bucket, &key),
                    failed.clone(),
                ));
            }
            debug!(bucket, keys = batch.len(), "deleted");
        }
        Ok(())
    }
}

impl Backend for S3Backend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (bucket, key) = location(uri)?;
            let client = self.client().await?;
            let mut stats = TransferStats::default();
            if !uri.is_dir() {
                if key.is_empty() {
                    return Err(names_a_bucket(uri));
                }
                let Some(name) = uri.file_name() else {
                    return Err(Error::invalid_uri(format!(
                        "`{}` does not end with a file name",
                        uri.redacted()
                    )));
                };
                let Some(head) = self.head(client, bucket, key).await? else {
                    let shown = uri.redacted().to_string();
                    let prefix = format!("{key}/");
                    if self
                        .has_prefix(client, bucket, &prefix, ("cannot download", &shown))
                        .await?
                    {
                        return Err(prefix_without_slash(uri));
                    }
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("`{}` does not exist: check the uri", uri.redacted()),
                    ));
                };
                let target = destination.join(name);
                self.progress.expect_file(head.size);
                let (crc64nvme, size) = if self.is_large(head.size) {
                    self.download_ranges(client, bucket, key, &head, &target)
                        .await?
                } else {
                    self.download_whole(client, bucket, key, &target).await?
                };
                self.progress.file_done();
                stats.add(FileChecksum {
                    path: name.to_owned(),
                    size,
                    crc64nvme,
                });
                return Ok(stats);
            }

            let prefix = directory_prefix(key);
            let listing = self.list_prefix(client, bucket, &prefix, false).await?;
            let downloads = download_plan(&prefix, listing.objects, destination)?;
            if downloads.is_empty() {
                return Err(nothing_under(uri));
            }
            for (_, object, _) in &downloads {
                self.progress.expect_file(object.size);
            }
            let tasks: Vec<_> = downloads
                .iter()
                .map(|(_, object, target)| {
                    self.download(client, bucket, &object.key, Some(object.size), target)
                })
                .collect();
            let results = run_all(tasks, self.config.concurrency).await?;
            for ((relative, _, _), (crc64nvme, size)) in downloads.into_iter().zip(results) {
                stats.add(FileChecksum {
                    path: relative,
                    size,
                    crc64nvme,
                });
            }
            Ok(stats)
        })
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (bucket, key) = location(uri)?;
            let client = self.client().await?;
            let source_path = source.to_path_buf();
            let metadata =
                run_blocking(move |_| fs::metadata(&source_path).at("cannot read", &source_path))
                    .await?;
            let mut stats = TransferStats::default();
            if !metadata.is_dir() {
                let key = if uri.is_dir() || key.is_empty() {
                    let Some(name) = source.file_name().and_then(|name| name.to_str()) else {
                        return Err(Error::invalid_uri(format!(
                            "`{}` has no file name that can be an s3 key: rename it or give the full key",
                            source.display()
                        )));
                    };
                    format!("{}{name}", directory_prefix(key))
                } else {
                    key.to_owned()
                };
                self.progress.expect_file(metadata.len());
                let (crc64nvme, size) = self.upload_file(client, source, bucket, &key).await?;
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
            for file in &files {
                self.progress.expect_file(file.size);
            }
            let uploads: Vec<(String, String, PathBuf)> = files
                .into_iter()
                .map(|file| {
                    let relative = slash_path(&file.relative);
                    (format!("{prefix}{relative}"), relative, file.path)
                })
                .collect();
            let tasks: Vec<_> = uploads
                .iter()
                .map(|(key, _, path)| self.upload_file(client, path, bucket, key))
                .collect();
            let results = run_all(tasks, self.config.concurrency).await?;
            for ((_, relative, _), (crc64nvme, size)) in uploads.into_iter().zip(results) {
                stats.add(FileChecksum {
                    path: relative,
                    size,
                    crc64nvme,
                });
            }
            Ok(stats)
        })
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            let (bucket, key) = location(uri)?;
            let client = self.client().await?;
            let base = uri.without_actions();
            if !uri.is_dir()
                && !key.is_empty()
                && let Some(head) = self.head(client, bucket, key).await?
            {
                let name = uri.file_name().unwrap_or_default().to_owned();
                return Ok(vec![Entry {
                    uri: base,
                    path: name,
                    size: head.size,
                }]);
            }
            let prefix = directory_prefix(key);
            let listing = self
                .list_prefix(client, bucket, &prefix, !recursive)
                .await?;
            let mut entries = Vec::new();
            for object in listing.objects {
                let relative = &object.key[prefix.len()..];
                if relative.is_empty() || relative.ends_with('/') {
                    continue;
                }
                entries.push(Entry {
                    uri: base.join(relative)?,
                    path: relative.to_owned(),
                    size: object.size,
                });
            }
            for sub in listing.prefixes {
                let relative = &sub[prefix.len()..];
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
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (bucket, key) = location(uri)?;
            let client = self.client().await?;
            // Deleting what does not exist (even the bucket) succeeds.
            let absent = |error: Error| {
                if error.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(error)
                }
            };
            if !uri.is_dir() {
                if key.is_empty() {
                    return Err(names_a_bucket(uri));
                }
                match self.head(client, bucket, key).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let shown = uri.redacted().to_string();
                        let prefix = format!("{key}/");
                        let found = self
                            .has_prefix(client, bucket, &prefix, ("cannot delete", &shown))
                            .await;
                        return match found {
                            Ok(true) => Err(prefix_without_slash(uri)),
                            Ok(false) => Ok(()),
                            Err(error) => absent(error),
                        };
                    }
                    Err(error) => return absent(error),
                }
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|error| map_error("cannot delete", &object_uri(bucket, key), error))?;
                debug!(uri = %uri.redacted(), "deleted");
                return Ok(());
            }
            let prefix = directory_prefix(key);
            let listing = match self.list_prefix(client, bucket, &prefix, !recursive).await {
                Ok(listing) => listing,
                Err(error) => return absent(error),
            };
            let keys: Vec<String> = listing
                .objects
                .into_iter()
                .map(|object| object.key)
                .collect();
            self.delete_keys(client, bucket, keys).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_fails_with_checksum_and_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let target = temp.path().join("object.bin");
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"123456789").unwrap();
        let actual = crc64nvme(b"123456789");
        let stored = crc64nvme(b"something else");
        let error = commit_verified(file, actual, Some(stored), "s3://b/object.bin").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Checksum);
        assert!(error.to_string().contains(&stored.to_base64()), "{error}");
        assert!(error.kind().is_retryable());
        let left: Vec<_> = fs::read_dir(temp.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing may be left: {left:?}");
    }

    #[test]
    fn a_match_or_no_stored_checksum_commits() {
        let temp = tempfile::tempdir().unwrap();
        for (name, stored) in [("a", Some(crc64nvme(b"abc"))), ("b", None)] {
            let mut file = AtomicFile::create(temp.path().join(name)).unwrap();
            file.write_all(b"abc").unwrap();
            let (checksum, size) =
                commit_verified(file, crc64nvme(b"abc"), stored, "s3://b/x").unwrap();
            assert_eq!((checksum, size), (crc64nvme(b"abc"), 3));
            assert_eq!(fs::read(temp.path().join(name)).unwrap(), b"abc");
        }
    }

    #[test]
    fn an_unfinished_ranged_download_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let target = temp.path().join("big.bin");
        let partial = PartialFile::create(&target, 1 << 20).unwrap();
        partial.file.write_all_at(b"start", 0).unwrap();
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 1);
        drop(partial);
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 0);
        let partial = PartialFile::create(&target, 3).unwrap();
        partial.file.write_all_at(b"xyz", 0).unwrap();
        partial.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"xyz");
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
        assert_eq!(combine_crc64nvme([]), (Crc64Nvme::EMPTY, 0));
    }

    #[test]
    fn stored_checksums_count_only_when_full_object() {
        let value = "rosUhgp5mIg=";
        let full = Some(crc64nvme(b"123456789"));
        assert_eq!(stored_crc64nvme(Some(value), None), full);
        assert_eq!(
            stored_crc64nvme(Some(value), Some(&ChecksumType::FullObject)),
            full
        );
        assert_eq!(
            stored_crc64nvme(Some(value), Some(&ChecksumType::Composite)),
            None
        );
        assert_eq!(stored_crc64nvme(Some("rosUhgp5mIg=-3"), None), None);
        assert_eq!(stored_crc64nvme(Some("not base64"), None), None);
        assert_eq!(stored_crc64nvme(None, None), None);
    }

    #[test]
    fn part_sizes_stay_within_ten_thousand_parts() {
        let backend = S3Backend::new(Config::default()).unwrap();
        assert_eq!(backend.part_size_for(100 * MIB), 16 * MIB);
        let huge = 5 * 1024 * 1024 * MIB; // 5 TiB, S3's largest object
        let part = backend.part_size_for(huge);
        assert!(huge.div_ceil(part) <= MAX_PARTS);
        assert_eq!(part % MIB, 0);
    }

    #[test]
    fn configurations_outside_s3_limits_are_refused() {
        let cases = [
            Config {
                part_size: MIB,
                ..Config::default()
            },
            Config {
                concurrency: 0,
                ..Config::default()
            },
            Config {
                batch_size: 1001,
                ..Config::default()
            },
            Config {
                multipart_threshold: 0,
                ..Config::default()
            },
        ];
        for config in cases {
            let error = S3Backend::new(config).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = Config {
            access_key: Some(AccessKey::new("AKIDEXAMPLE", "wJalrXUtnFEMI")),
            ..Config::default()
        };
        let backend = S3Backend::new(config).unwrap();
        let shown = format!("{backend:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
    }

    #[test]
    fn keys_that_would_escape_the_destination_are_refused() {
        let listed = |key: &str| Listed {
            key: key.to_owned(),
            size: 1,
        };
        let destination = Path::new("/scratch/target");
        let plan = download_plan(
            "p/",
            vec![
                listed("p/"),
                listed("p/a"),
                listed("p/sub/"),
                listed("p/sub/b"),
            ],
            destination,
        )
        .unwrap();
        let planned: Vec<(&str, &Path)> = plan
            .iter()
            .map(|(relative, _, path)| (relative.as_str(), path.as_path()))
            .collect();
        assert_eq!(
            planned,
            vec![
                ("a", Path::new("/scratch/target/a")),
                ("sub/b", Path::new("/scratch/target/sub/b"))
            ]
        );
        for hostile in ["p/../escape", "p/a/../../escape", "p//absolute", "p/./a/"] {
            let result = download_plan("p/", vec![listed("p/a"), listed(hostile)], destination);
            if hostile.ends_with('/') {
                assert!(result.is_ok(), "{hostile}");
                continue;
            }
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Unsafe, "{hostile}");
        }
    }

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

    #[test]
    fn uris_split_into_bucket_and_key() {
        let uri = Uri::parse("s3://bucket/dir/key.txt").unwrap();
        assert_eq!(location(&uri).unwrap(), ("bucket", "dir/key.txt"));
        let uri = Uri::parse("s3://bucket").unwrap();
        assert_eq!(location(&uri).unwrap(), ("bucket", ""));
        let uri = Uri::parse("s3:///key").unwrap();
        assert_eq!(location(&uri).unwrap_err().kind(), ErrorKind::InvalidUri);
        let uri = Uri::parse("/local/file").unwrap();
        assert_eq!(location(&uri).unwrap_err().kind(), ErrorKind::Unsupported);
        assert_eq!(directory_prefix(""), "");
        assert_eq!(directory_prefix("a"), "a/");
        assert_eq!(directory_prefix("a/"), "a/");
    }
}
