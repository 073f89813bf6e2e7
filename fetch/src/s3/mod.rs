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

//!
//! # Layout
//!
//! - `mod.rs`: [`S3Backend`], its lazily built client, and the [`Backend`] operations, which
//!   hand every transfer to the shared `bucket` code.
//! - `config.rs`: [`Config`] and [`AccessKey`], read from herd's and AWS's variables, and the
//!   client built from them.
//! - `errors.rs`: `map_error`, the one place where SDK errors become [`ErrorKind`]s.
//! - `requests.rs`: `S3Bucket`, the requests the shared code makes (HEAD, list, GET, PUT,
//!   delete), and the reading of stored checksums.
//! - `multipart.rs`: the parts of a multipart upload sent in parallel, and its abort.

use std::fmt;
use std::path::Path;

use aws_sdk_s3::Client;
use tokio::sync::OnceCell;

use crate::backend::{Backend, BoxFuture, Entry, TransferStats};
use crate::bucket::{self, MIB, Naming, Transfers, split_uri};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

mod config;
mod errors;
mod multipart;
mod requests;

use config::build_client;
pub use config::{AccessKey, Config};
use requests::S3Bucket;

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
    use crate::error::ErrorKind;

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
