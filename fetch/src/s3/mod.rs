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
//!
//! What a transfer does (single objects and prefixes, ranges, checks, progress, messages) is
//! shared with `azure://` and `gs://` (the crate's private `bucket` module); this module makes
//! S3's own requests for it.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

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
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, TransferStats};
use crate::bucket::{
    self, AbortOnDrop, Body, Bucket, FileIdentity, Head, Limits, Listed, Listing, MIB, Naming,
    PendingUpload, Transfers, changed_while_read, combine_crc64nvme, file_identity,
    parse_stored_crc64nvme, read_part, run_all, slot, split_uri,
};
use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::run_blocking;
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

/// S3's smallest part (except the last one).
const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's largest ListObjectsV2 page and DeleteObjects request.
const MAX_BATCH: u32 = 1000;
/// The region used when neither herd's nor the AWS configuration sets one.
pub const DEFAULT_REGION: &str = "us-east-1";

const NAMING: Naming = Naming {
    scheme: Scheme::S3,
    backend: "s3",
    article: "an",
    container: "bucket",
    key: "key",
    object_name: "an s3 key",
};

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

    fn limits(&self) -> Limits {
        Limits {
            multipart_threshold: self.multipart_threshold,
            part_size: self.part_size,
            concurrency: self.concurrency,
            batch_size: self.batch_size as usize,
        }
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
    config_error: Option<Error>,
    client: OnceCell<Client>,
    transfers: Transfers,
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
            Err(error) => S3Backend::unchecked(Config::default(), Some(error)),
        }
    }

    fn unchecked(config: Config, config_error: Option<Error>) -> S3Backend {
        S3Backend {
            transfers: Transfers::new(config.limits()),
            config,
            config_error,
            client: OnceCell::new(),
        }
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.transfers.progress = progress;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn client(&self) -> Result<&Client> {
        if let Some(error) = &self.config_error {
            return Err(error.clone());
        }
        Ok(self.client.get_or_init(|| build_client(&self.config)).await)
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
    parse_stored_crc64nvme(value)
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

/// One bucket, through the backend's client: what the functions of [`bucket`] drive.
struct S3Bucket<'a> {
    backend: &'a S3Backend,
    client: &'a Client,
    name: &'a str,
}

impl Bucket for S3Bucket<'_> {
    /// The key itself.
    type Location = String;
    const NAMING: Naming = NAMING;

    fn name(&self) -> &str {
        self.name
    }

    fn transfers(&self) -> &Transfers {
        &self.backend.transfers
    }

    fn locate(&self, key: &str, _target: &str) -> Result<String> {
        Ok(key.to_owned())
    }

    /// HeadObject with checksum mode.
    async fn head(&self, key: &String, target: &str) -> Result<Option<Head>> {
        let response = self
            .client
            .head_object()
            .bucket(self.name)
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
                let error = map_error("cannot read", target, error);
                if error.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// ListObjectsV2, page after page.
    async fn list_prefix(
        &self,
        prefix: &str,
        delimited: bool,
        (doing, target): (&str, &str),
    ) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(self.name)
                .prefix(prefix)
                .max_keys(self.backend.config.batch_size as i32);
            if delimited {
                request = request.delimiter("/");
            }
            if let Some(token) = &token {
                request = request.continuation_token(token);
            }
            let page = request
                .send()
                .await
                .map_err(|error| map_error(doing, target, error))?;
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

    /// One ListObjectsV2 request for one key.
    async fn has_prefix(&self, prefix: &str, (doing, target): (&str, &str)) -> Result<bool> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(self.name)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|error| map_error(doing, target, error))?;
        Ok(!page.contents().is_empty() || !page.common_prefixes().is_empty())
    }

    /// GetObject with checksum mode.
    async fn get_whole(&self, key: &String, target: &str) -> Result<Body> {
        let response = self
            .client
            .get_object()
            .bucket(self.name)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|error| map_error("cannot download", target, error))?;
        let crc64nvme = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        let length = response.content_length().map(|length| length.max(0) as u64);
        let shown = target.to_owned();
        let chunks = futures::stream::try_unfold(response.body, |mut body| async move {
            Ok(body.try_next().await?.map(|chunk| (chunk, body)))
        })
        .map_err(move |error: ByteStreamError| map_error("cannot download", &shown, error))
        .boxed();
        Ok(Body {
            crc64nvme,
            length,
            chunks,
        })
    }

    /// A ranged GetObject, `If-Match` the etag.
    async fn get_range(
        &self,
        key: &String,
        etag: Option<&str>,
        (offset, length): (u64, u64),
        target: &str,
    ) -> Result<Bytes> {
        let mut request = self
            .client
            .get_object()
            .bucket(self.name)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + length - 1));
        if let Some(etag) = etag {
            // Every range from the same version of the object, or a PreconditionFailed error.
            request = request.if_match(etag);
        }
        let response = request
            .send()
            .await
            .map_err(|error| map_error("cannot download", target, error))?;
        Ok(response
            .body
            .collect()
            .await
            .map_err(|error| map_error("cannot download", target, error))?
            .into_bytes())
    }

    /// One PutObject carrying the CRC64NVME.
    async fn put_whole(
        &self,
        key: &String,
        content: Vec<u8>,
        checksum: Crc64Nvme,
        target: &str,
    ) -> Result<()> {
        let response = self
            .client
            .put_object()
            .bucket(self.name)
            .key(key)
            .content_length(content.len() as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(checksum.to_base64())
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|error| map_error("cannot upload to", target, error))?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, target)
    }

    /// A multipart upload created for a full-object CRC64NVME, its parts sent in parallel.
    async fn put_multipart(
        &self,
        key: &String,
        source: &Path,
        identity: FileIdentity,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        // The upload is created by a task of its own: were this future dropped while the request
        // is in flight, the server would hold an upload nobody knows of. The task gets the id
        // whatever happens, and if no one is left to receive it, drops the guard, which aborts.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = self
            .client
            .create_multipart_upload()
            .bucket(self.name)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject);
        let (client, bucket, owned_key, owned_target) = (
            self.client.clone(),
            self.name.to_owned(),
            key.clone(),
            target.to_owned(),
        );
        tokio::spawn(async move {
            let created = match request.send().await {
                Ok(created) => created,
                Err(error) => {
                    let error =
                        map_error("cannot start a multipart upload to", &owned_target, error);
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let Some(upload_id) = created.upload_id().map(str::to_owned) else {
                let _ = sender.send(Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "cannot upload to `{owned_target}`: the server started a multipart upload without an upload id; retry"
                    ),
                )));
                return;
            };
            let guard = AbortOnDrop::new(S3Upload {
                client,
                bucket,
                key: owned_key,
                upload_id: upload_id.clone(),
                target: owned_target,
            });
            // Unreceived, the guard comes back in the error and is dropped here: aborted.
            let _ = sender.send(Ok((upload_id, guard)));
        });
        let (upload_id, mut guard) = receiver.await.map_err(|_| {
            Error::new(
                ErrorKind::Io,
                format!("cannot upload to `{target}`: the task starting the multipart upload failed; retry"),
            )
        })??;
        let result = self
            .send_parts(source, identity, key, &upload_id, target)
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

    /// DeleteObject.
    async fn delete_object(&self, key: &String, target: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(self.name)
            .key(key)
            .send()
            .await
            .map_err(|error| map_error("cannot delete", target, error))?;
        Ok(())
    }

    /// DeleteObjects, `batch_size` keys per request.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        let bucket = self.name;
        for batch in keys.chunks(self.backend.config.batch_size as usize) {
            let shown = self.object_uri(&batch[0]);
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
            let response = self
                .client
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
                    &self.object_uri(&key),
                    failed.clone(),
                ));
            }
            debug!(bucket, keys = batch.len(), "deleted");
        }
        Ok(())
    }
}

/// A part uploaded to S3.
struct UploadedPart {
    number: i32,
    etag: String,
    crc64nvme: Crc64Nvme,
    length: u64,
}

impl S3Bucket<'_> {
    async fn send_parts(
        &self,
        source: &Path,
        identity: FileIdentity,
        key: &str,
        upload_id: &str,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let (size, _) = identity;
        let limits = &self.backend.transfers.limits;
        let part_size = limits.part_size_for(size);
        let path = source.to_path_buf();
        let file =
            Arc::new(run_blocking(move |_| File::open(&path).at("cannot open", &path)).await?);
        let count = size.div_ceil(part_size);
        let uploads: Vec<_> = (0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.send_part(
                    Arc::clone(&file),
                    source,
                    (offset, length),
                    index as i32 + 1,
                    (key, upload_id, target),
                )
            })
            .collect();
        let parts = run_all(uploads, limits.concurrency).await?;
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
        let response = self
            .client
            .complete_multipart_upload()
            .bucket(self.name)
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
            .map_err(|error| map_error("cannot complete the multipart upload to", target, error))?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, target)?;
        Ok((checksum, size))
    }

    async fn send_part(
        &self,
        file: Arc<File>,
        source: &Path,
        (offset, length): (u64, u64),
        number: i32,
        (key, upload_id, target): (&str, &str, &str),
    ) -> Result<UploadedPart> {
        let _slot = slot(self).await?;
        let (content, checksum) = read_part(file, source, (offset, length)).await?;
        let response = self
            .client
            .upload_part()
            .bucket(self.name)
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
                map_error(&format!("cannot upload part {number} of"), target, error)
            })?;
        let Some(etag) = response.e_tag().map(str::to_owned) else {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot upload part {number} of `{target}`: the server answered without an etag; retry"
                ),
            ));
        };
        self.backend.transfers.progress.transferred(length);
        Ok(UploadedPart {
            number,
            etag,
            crc64nvme: checksum,
            length,
        })
    }
}

/// A multipart upload S3 knows by its id.
struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    target: String,
}

impl PendingUpload for S3Upload {
    fn target(&self) -> &str {
        &self.target
    }

    async fn abort(&mut self) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        let upload_id = &self.upload_id;
        match result {
            Ok(_) => debug!(uri = %self.target, upload_id, "multipart upload aborted"),
            Err(error) => {
                let error = map_error("cannot abort the multipart upload to", &self.target, error);
                warn!(upload_id, error = %error.report(), "a multipart upload may be left over");
            }
        }
    }
}

impl S3Backend {
    /// The bucket a URI names and its key; fails with the configuration error, if any.
    async fn open<'a>(&'a self, uri: &'a Uri) -> Result<(S3Bucket<'a>, &'a str)> {
        let (bucket, key) = split_uri(uri, &NAMING)?;
        let client = self.client().await?;
        Ok((
            S3Bucket {
                backend: self,
                client,
                name: bucket,
            },
            key,
        ))
    }
}

impl Backend for S3Backend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (bucket, key) = self.open(uri).await?;
            bucket::get(&bucket, uri, key, destination).await
        })
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let (bucket, key) = self.open(uri).await?;
            bucket::put(&bucket, source, uri, key).await
        })
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            let (bucket, key) = self.open(uri).await?;
            bucket::list(&bucket, uri, key, recursive).await
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (bucket, key) = self.open(uri).await?;
            bucket::delete(&bucket, uri, key, recursive).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::crc64nvme;

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
        assert_eq!(split_uri(&uri, &NAMING).unwrap(), ("bucket", "dir/key.txt"));
        let uri = Uri::parse("s3://bucket").unwrap();
        assert_eq!(split_uri(&uri, &NAMING).unwrap(), ("bucket", ""));
        let uri = Uri::parse("s3:///key").unwrap();
        let error = split_uri(&uri, &NAMING).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri);
        assert_eq!(
            error.to_string(),
            "`s3:///key` has no bucket: write s3://bucket/key"
        );
        let uri = Uri::parse("/local/file").unwrap();
        let error = split_uri(&uri, &NAMING).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(
            error.to_string().ends_with("it is not an s3:// uri"),
            "{error}"
        );
    }
}
