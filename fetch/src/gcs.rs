//! [`GcsBackend`]: `gs://bucket/key` and `gs://bucket/prefix/` on Google Cloud Storage,
//! through the `object_store` crate (GCS's XML API); the transfers themselves (checksums,
//! parallel parts and ranges, listings, deletions, errors) are the shared driver's, in
//! [`object`](crate::object).
//!
//! Every object herd writes carries its CRC64NVME as the metadata `x-goog-meta-crc64nvme`; every
//! download is checked against it when present. Files from [`Config::multipart_threshold`] on go
//! up as an XML multipart upload whose parts are sent in parallel; a failed or interrupted one
//! is aborted.
//!
//! # Configuration
//!
//! [`GcsBackend::from_env`] (what `Resolver::default` uses) reads:
//! - credentials, the first set winning: `GOOGLE_SERVICE_ACCOUNT_KEY` (the JSON key itself),
//!   `GOOGLE_SERVICE_ACCOUNT` or `GOOGLE_SERVICE_ACCOUNT_PATH` (a JSON key file),
//!   `GOOGLE_APPLICATION_CREDENTIALS` (a service account or `gcloud auth
//!   application-default login` file); else the application default credentials
//!   (`~/.config/gcloud/application_default_credentials.json`, then the metadata server of a
//!   Google Cloud machine);
//! - `HERD_GCS_ANONYMOUS=1`: no credentials, for public buckets;
//! - `HERD_GCS_ENDPOINT`: another base URL than `https://storage.googleapis.com`, such as an
//!   emulator's; `STORAGE_EMULATOR_HOST` (the variable Google's client libraries read) is used
//!   when it is not set, and then means anonymous access unless credentials are set. A service
//!   account key may also carry `gcs_base_url` and `disable_oauth` (as `object_store`'s CI does
//!   for emulators).
//!
//! Nothing is read from the network (or from credential files) until the first transfer.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::StaticCredentialProvider;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};

use crate::bucket::{Limits, MIB, Naming};
use crate::error::{Error, ErrorKind, Result};
use crate::http::RetryPolicy;
use crate::object::{
    Cause, MAX_BATCH, ObjectBacked, ObjectBackend, Provider, Secret, Store, check_endpoint,
    client_settings,
};
use crate::progress::Progress;
use crate::uri::Scheme;

/// How [`GcsBackend`] authenticates. `Debug` hides the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Application default credentials: the gcloud file, else the metadata server.
    ApplicationDefault,
    /// A service account or authorized user JSON file (`GOOGLE_APPLICATION_CREDENTIALS`).
    ApplicationCredentials(PathBuf),
    /// A service account JSON key file.
    ServiceAccountFile(PathBuf),
    /// A service account JSON key, given whole.
    ServiceAccountKey(Secret),
    /// No credentials: public buckets and emulators only.
    Anonymous,
}

/// Where [`GcsBackend`] finds its store, and how it splits large transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the XML API; `None`: `https://storage.googleapis.com` (or the key's
    /// `gcs_base_url`).
    pub endpoint: Option<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Files of at least this many bytes go up as multipart uploads in parallel parts, and
    /// objects of at least this many bytes come down as parallel ranged GETs.
    pub multipart_threshold: u64,
    /// Bytes per part and per ranged GET: from 5 MiB (GCS's minimum) to 4000 MiB. Raised for a
    /// file that would need more than 10,000 parts (GCS's limit).
    pub part_size: u64,
    /// Requests in flight at once, shared by every transfer of the backend.
    pub concurrency: usize,
    /// Objects per listing page: 1 to 1000.
    pub batch_size: usize,
    /// Retries of failed requests (5xx, timeouts, broken connections).
    pub retry: RetryPolicy,
}

impl Default for Config {
    /// Google's endpoint, application default credentials; 16 MiB threshold and parts, 8
    /// requests at once, pages of 1000.
    fn default() -> Self {
        Config {
            endpoint: None,
            credentials: Credentials::ApplicationDefault,
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            concurrency: 8,
            batch_size: MAX_BATCH,
            retry: RetryPolicy::DEFAULT,
        }
    }
}

impl Config {
    /// The defaults, with what the environment sets (see the [module documentation](self)).
    pub fn from_env() -> Result<Config> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let emulator = variable("STORAGE_EMULATOR_HOST").map(|host| {
            if host.contains("://") {
                host
            } else {
                format!("http://{host}")
            }
        });
        let anonymous = variable("HERD_GCS_ANONYMOUS")
            .is_some_and(|value| !matches!(value.as_str(), "0" | "false" | "no"));
        let credentials = if anonymous {
            Credentials::Anonymous
        } else if let Some(key) = variable("GOOGLE_SERVICE_ACCOUNT_KEY") {
            Credentials::ServiceAccountKey(Secret::new(key))
        } else if let Some(path) =
            variable("GOOGLE_SERVICE_ACCOUNT").or_else(|| variable("GOOGLE_SERVICE_ACCOUNT_PATH"))
        {
            Credentials::ServiceAccountFile(PathBuf::from(path))
        } else if let Some(path) = variable("GOOGLE_APPLICATION_CREDENTIALS") {
            Credentials::ApplicationCredentials(PathBuf::from(path))
        } else if emulator.is_some() {
            Credentials::Anonymous
        } else {
            Credentials::ApplicationDefault
        };
        let config = Config {
            endpoint: variable("HERD_GCS_ENDPOINT").or(emulator),
            credentials,
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }

    fn limits(&self) -> Limits {
        Limits {
            multipart_threshold: self.multipart_threshold,
            part_size: self.part_size,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
        }
    }

    /// Checks the sizes and counts, and the endpoint's form.
    pub fn validate(&self) -> Result<()> {
        self.limits().validate("gcs")?;
        check_endpoint(self.endpoint.as_deref(), "gcs", "HERD_GCS_ENDPOINT")
    }
}

/// Google Cloud Storage, for the shared driver.
pub(crate) struct Gcs {
    config: Config,
}

impl Provider for Gcs {
    type Config = Config;
    const NAMING: Naming = Naming {
        scheme: Scheme::Gs,
        backend: "gcs",
        article: "a",
        container: "bucket",
        key: "path",
        object_name: "an object name",
    };

    fn new(config: Config) -> Self {
        Gcs { config }
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn connect(&self, bucket: &str) -> Result<Arc<dyn Store>> {
        let config = &self.config;
        let (options, retry) = client_settings(&config.retry);
        let allow_http = config
            .endpoint
            .as_ref()
            .is_some_and(|endpoint| endpoint.starts_with("http://"));
        let mut builder = GoogleCloudStorageBuilder::new()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(options.with_allow_http(allow_http));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_base_url(endpoint.trim_end_matches('/'));
        }
        let (builder, source) = match &config.credentials {
            Credentials::ApplicationDefault => (
                builder,
                "the application default credentials (~/.config/gcloud/application_default_credentials.json)",
            ),
            Credentials::ApplicationCredentials(path) => (
                builder.with_application_credentials(path.to_string_lossy()),
                "GOOGLE_APPLICATION_CREDENTIALS",
            ),
            Credentials::ServiceAccountFile(path) => (
                builder.with_service_account_path(path.to_string_lossy()),
                "GOOGLE_SERVICE_ACCOUNT",
            ),
            Credentials::ServiceAccountKey(key) => (
                builder.with_service_account_key(key.expose()),
                "GOOGLE_SERVICE_ACCOUNT_KEY",
            ),
            // Reads skip the signature; object_store's uploads ask the credential provider
            // whatever that says, so give them an empty token rather than let them fall back to
            // the metadata server.
            Credentials::Anonymous => (
                builder.with_skip_signature(true).with_credentials(Arc::new(
                    StaticCredentialProvider::new(GcpCredential {
                        bearer: String::new(),
                    }),
                )),
                "HERD_GCS_ENDPOINT",
            ),
        };
        let store = builder.build().map_err(|error| {
            Error::with_source(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot set up the gcs client for the bucket `{bucket}`: check {source} (a readable JSON key), or set HERD_GCS_ANONYMOUS=1 for a public bucket"
                ),
                Cause::new(&error, &self.secrets()),
            )
        })?;
        Ok(Arc::new(store))
    }

    fn limits(&self) -> Limits {
        self.config.limits()
    }

    fn credentials_advice(&self) -> &'static str {
        "GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_SERVICE_ACCOUNT or GOOGLE_SERVICE_ACCOUNT_KEY, or `gcloud auth application-default login`; HERD_GCS_ANONYMOUS=1 for a public bucket"
    }

    fn endpoint_advice(&self) -> &'static str {
        "HERD_GCS_ENDPOINT or STORAGE_EMULATOR_HOST when set"
    }

    fn secrets(&self) -> Vec<String> {
        let Credentials::ServiceAccountKey(key) = &self.config.credentials else {
            return Vec::new();
        };
        let mut secrets = vec![key.expose().to_owned()];
        // The private key as it shows inside the JSON, and its body line by line.
        if let Some(start) = key.expose().find("-----BEGIN") {
            let rest = &key.expose()[start..];
            let end = rest.find('"').unwrap_or(rest.len());
            secrets.push(rest[..end].to_owned());
            secrets.extend(
                rest[..end]
                    .split("\\n")
                    .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        secrets
    }
}

/// `gs://bucket/key` and `gs://bucket/prefix/`: see the [module documentation](self).
///
/// Clients are created on first use, one per bucket, so building one (and a `Resolver`) does
/// no I/O.
pub struct GcsBackend(ObjectBackend<Gcs>);

impl fmt::Debug for GcsBackend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug("GcsBackend", formatter)
    }
}

impl GcsBackend {
    /// A backend with `config`, checked with [`Config::validate`].
    pub fn new(config: Config) -> Result<GcsBackend> {
        config.validate()?;
        Ok(GcsBackend(ObjectBackend::new(config)))
    }

    /// A backend configured by [`Config::from_env`]. It never fails: a configuration error is
    /// reported by every transfer instead.
    pub fn from_env() -> GcsBackend {
        GcsBackend(ObjectBackend::from_env(Config::from_env()))
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(self, progress: Progress) -> Self {
        GcsBackend(self.0.with_progress(progress))
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.0.config()
    }
}

/// Its [`Backend`](crate::Backend) operations are the shared driver's.
impl ObjectBacked for GcsBackend {
    type Provider = Gcs;

    fn driver(&self) -> &ObjectBackend<Gcs> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend as _;
    use crate::uri::Uri;

    #[test]
    fn private_keys_count_as_secrets() {
        let key = r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC\n-----END PRIVATE KEY-----\n", "client_email": "x@y"}"#;
        let provider = Gcs {
            config: Config {
                credentials: Credentials::ServiceAccountKey(Secret::new(key)),
                ..Config::default()
            },
        };
        let secrets = provider.secrets();
        assert!(
            secrets
                .iter()
                .any(|secret| secret == "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC"),
            "{secrets:?}"
        );
        let shown = format!("{:?}", provider.config);
        assert!(!shown.contains("MIIEvQIBADANBgkqhkiG9w0"), "{shown}");
    }

    #[test]
    fn endpoints_need_a_scheme() {
        let config = Config {
            endpoint: Some("127.0.0.1:4443".into()),
            ..Config::default()
        };
        assert_eq!(
            GcsBackend::new(config).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[tokio::test]
    async fn an_unreadable_key_file_says_what_to_check() {
        let backend = GcsBackend::new(Config {
            credentials: Credentials::ServiceAccountFile(PathBuf::from("/nonexistent/key.json")),
            ..Config::default()
        })
        .unwrap();
        let uri = Uri::parse("gs://bucket/file.txt").unwrap();
        let error = backend.list(&uri, false).await.unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::PermissionDenied,
            "{}",
            error.report()
        );
        assert!(
            error.to_string().contains("GOOGLE_SERVICE_ACCOUNT"),
            "{error}"
        );
    }
}
