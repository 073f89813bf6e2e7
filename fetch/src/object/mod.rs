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
//! # Layout
//!
//! - `mod.rs`: the `Provider` trait a scheme implements, `ObjectBackend` (one client per
//!   container, built on first use and kept), the [`Backend`] operations of every
//!   `ObjectBacked` scheme, the settings and limits the providers share, and [`Secret`].
//! - `errors.rs`: `map_error` and the redaction of secrets.
//! - `container.rs`: `Container`, the requests the shared `bucket` code makes (HEAD, paged
//!   lists, GET, PUT, multipart uploads, bulk deletions), and the checksum metadata.

//!
//! [`AzureBackend`]: crate::AzureBackend
//! [`GcsBackend`]: crate::GcsBackend

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::list::PaginatedListStore;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::backend::{Backend, BoxFuture, Entry, TransferStats};
use crate::bucket::{self, Limits, MIB, Naming, Transfers, split_uri};
use crate::error::{Error, ErrorKind, Result};
use crate::http::RetryPolicy;
use crate::progress::Progress;
use crate::uri::Uri;

mod container;
mod errors;

use container::Container;
pub(crate) use errors::{Cause, Hints, redact};

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bucket::MAX_PARTS;

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
}
