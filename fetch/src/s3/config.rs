//! [`Config`] of the [`S3Backend`](super::S3Backend): herd's `HERD_S3_*` variables over the
//! usual AWS configuration, the limits S3 puts on parts, and the client built from them (always
//! path-style, so that SeaweedFS, MinIO and Ceph work without DNS per bucket).

use std::fmt;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use tracing::debug;

use crate::bucket::{Limits, MIB};
use crate::error::{Error, ErrorKind, Result};

use super::{DEFAULT_REGION, MAX_BATCH, MAX_PART_SIZE, MIN_PART_SIZE};

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

    pub(super) fn limits(&self) -> Limits {
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

pub(super) async fn build_client(config: &Config) -> Client {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::S3Backend;

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
}
