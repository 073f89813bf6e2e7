//! [`AzureBackend`]: `azure://container/path` and `azure://container/prefix/` on Azure Blob
//! Storage (block blobs), through the `object_store` crate; the transfers themselves
//! (checksums, parallel blocks and ranges, listings, deletions, errors) are the shared driver's,
//! in [`object`](crate::object).
//!
//! Every blob herd writes carries its CRC64NVME as the metadata `x-ms-meta-crc64nvme`; every
//! download is checked against it when present. Files from [`Config::multipart_threshold`] on
//! go up as blocks sent in parallel and committed with one block list (uncommitted blocks of a
//! failed upload are never visible, and Azure drops them after a week).
//!
//! # Configuration
//!
//! [`AzureBackend::from_env`] (what `Resolver::default` uses) reads, the later winning:
//! - `AZURE_STORAGE_CONNECTION_STRING`: `AccountName`, `AccountKey`, `SharedAccessSignature`,
//!   `BlobEndpoint` (or `DefaultEndpointsProtocol` + `EndpointSuffix`), and
//!   `UseDevelopmentStorage=true` (Azurite's well-known account on `127.0.0.1:10000`);
//! - `AZURE_STORAGE_ACCOUNT_NAME` (or `AZURE_STORAGE_ACCOUNT`), `AZURE_STORAGE_ACCOUNT_KEY` (or
//!   `AZURE_STORAGE_KEY`), `AZURE_STORAGE_SAS_TOKEN`;
//! - `HERD_AZURE_ENDPOINT` (or `AZURE_STORAGE_ENDPOINT`): the account's blob endpoint, such as
//!   `http://127.0.0.1:10000/devstoreaccount1` for an emulator (path-style); default
//!   `https://ACCOUNT.blob.core.windows.net`;
//! - `HERD_AZURE_ANONYMOUS=1`: no credentials, for public containers.
//!
//! An account key wins over a SAS token. Without either (and not anonymous), `object_store`'s
//! credential chain is used: a service principal (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
//! `AZURE_TENANT_ID`), workload identity (`AZURE_FEDERATED_TOKEN_FILE`), else the managed
//! identity of the machine. Nothing is read from the network until the first transfer.

use std::fmt;
use std::sync::Arc;

use object_store::azure::{MicrosoftAzureBuilder, split_sas};

use crate::bucket::{Limits, MIB, Naming};
use crate::error::{Error, ErrorKind, Result};
use crate::http::RetryPolicy;
use crate::object::{
    Cause, MAX_BATCH, ObjectBacked, ObjectBackend, Provider, Secret, Store, check_endpoint,
    client_settings,
};
use crate::progress::Progress;
use crate::uri::Scheme;

/// Azurite's well-known development account (public, documented by Microsoft).
const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";
const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How [`AzureBackend`] authenticates. `Debug` hides the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `object_store`'s chain: a service principal or workload identity from the `AZURE_*`
    /// variables, else the machine's managed identity.
    Chain,
    /// The storage account key (base64), signing every request (SharedKey).
    AccessKey(Secret),
    /// A shared access signature (the query string, with or without its `?`).
    SasToken(Secret),
    /// No credentials: public containers only.
    Anonymous,
}

/// Where [`AzureBackend`] finds its account, and how it splits large transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The storage account; required.
    pub account: Option<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// The account's blob endpoint (`http://127.0.0.1:10000/devstoreaccount1` for an emulator);
    /// `None`: `https://ACCOUNT.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// Files of at least this many bytes go up as blocks in parallel, and blobs of at least this
    /// many bytes come down as parallel ranged GETs.
    pub multipart_threshold: u64,
    /// Bytes per block and per ranged GET: from 5 MiB to 4000 MiB (Azure's largest block).
    /// Raised for a file that would need more than 10,000 blocks.
    pub part_size: u64,
    /// Requests in flight at once, shared by every transfer of the backend.
    pub concurrency: usize,
    /// Blobs per listing page: 1 to 1000.
    pub batch_size: usize,
    /// Retries of failed requests (5xx, timeouts, broken connections).
    pub retry: RetryPolicy,
}

impl Default for Config {
    /// No account or endpoint, the credential chain; 16 MiB threshold and blocks, 8 requests at
    /// once, pages of 1000.
    fn default() -> Self {
        Config {
            account: None,
            credentials: Credentials::Chain,
            endpoint: None,
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            concurrency: 8,
            batch_size: MAX_BATCH,
            retry: RetryPolicy::DEFAULT,
        }
    }
}

/// The fields of a storage connection string that herd uses.
#[derive(Debug, Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    endpoint: Option<String>,
}

fn parse_connection_string(text: &str) -> Result<ConnectionString> {
    let mut fields = std::collections::HashMap::new();
    for pair in text
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "AZURE_STORAGE_CONNECTION_STRING is malformed: expected `Name=value` pairs separated by `;`",
            ));
        };
        fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let field = |name: &str| fields.get(name).filter(|value| !value.is_empty()).cloned();
    if field("usedevelopmentstorage").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(ConnectionString {
            account: Some(DEVELOPMENT_ACCOUNT.to_owned()),
            key: Some(DEVELOPMENT_KEY.to_owned()),
            sas: None,
            endpoint: Some(format!("http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT}")),
        });
    }
    let account = field("accountname");
    let endpoint = field("blobendpoint").or_else(|| {
        let account = account.as_ref()?;
        let suffix = field("endpointsuffix")?;
        let protocol = field("defaultendpointsprotocol").unwrap_or_else(|| "https".to_owned());
        Some(format!("{protocol}://{account}.blob.{suffix}"))
    });
    Ok(ConnectionString {
        account,
        key: field("accountkey"),
        sas: field("sharedaccesssignature"),
        endpoint,
    })
}

impl Config {
    /// The defaults, with what the environment sets (see the [module documentation](self)).
    pub fn from_env() -> Result<Config> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let connection = match variable("AZURE_STORAGE_CONNECTION_STRING") {
            Some(text) => parse_connection_string(&text)?,
            None => ConnectionString::default(),
        };
        let account = variable("AZURE_STORAGE_ACCOUNT_NAME")
            .or_else(|| variable("AZURE_STORAGE_ACCOUNT"))
            .or(connection.account);
        let key = variable("AZURE_STORAGE_ACCOUNT_KEY")
            .or_else(|| variable("AZURE_STORAGE_KEY"))
            .or(connection.key);
        let sas = variable("AZURE_STORAGE_SAS_TOKEN").or(connection.sas);
        let anonymous = variable("HERD_AZURE_ANONYMOUS")
            .is_some_and(|value| !matches!(value.as_str(), "0" | "false" | "no"));
        let credentials = match (anonymous, key, sas) {
            (true, _, _) => Credentials::Anonymous,
            (false, Some(key), _) => Credentials::AccessKey(Secret::new(key)),
            (false, None, Some(sas)) => Credentials::SasToken(Secret::new(sas)),
            (false, None, None) => Credentials::Chain,
        };
        let config = Config {
            account,
            credentials,
            endpoint: variable("HERD_AZURE_ENDPOINT")
                .or_else(|| variable("AZURE_STORAGE_ENDPOINT"))
                .or(connection.endpoint),
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

    /// Checks the sizes and counts, and that the credentials can be used (without showing them).
    pub fn validate(&self) -> Result<()> {
        self.limits().validate("azure")?;
        if let Credentials::AccessKey(key) = &self.credentials
            && object_store::azure::AzureAccessKey::try_new(key.expose()).is_err()
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "the azure storage account key is not valid base64: copy it again from the portal into AZURE_STORAGE_ACCOUNT_KEY",
            ));
        }
        if let Credentials::SasToken(token) = &self.credentials
            && split_sas(token.expose()).is_err()
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "the azure SAS token is malformed: AZURE_STORAGE_SAS_TOKEN must be the query string of a SAS URL (sv=...&sig=...)",
            ));
        }
        check_endpoint(self.endpoint.as_deref(), "azure", "HERD_AZURE_ENDPOINT")
    }
}

/// Azure Blob Storage, for the shared driver.
pub(crate) struct Azure {
    config: Config,
}

impl Provider for Azure {
    type Config = Config;
    const NAMING: Naming = Naming {
        scheme: Scheme::Azure,
        backend: "azure",
        article: "an",
        container: "container",
        key: "path",
        object_name: "an object name",
    };

    fn new(config: Config) -> Self {
        Azure { config }
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn connect(&self, container: &str) -> Result<Arc<dyn Store>> {
        let config = &self.config;
        let Some(account) = &config.account else {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "no azure storage account is configured: set AZURE_STORAGE_ACCOUNT_NAME (with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN), or AZURE_STORAGE_CONNECTION_STRING",
            ));
        };
        let (options, retry) = client_settings(&config.retry);
        let mut builder = match config.credentials {
            Credentials::Chain => MicrosoftAzureBuilder::from_env(),
            _ => MicrosoftAzureBuilder::new(),
        }
        .with_account(account)
        .with_container_name(container)
        .with_retry(retry)
        .with_client_options(options);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/').to_owned())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = match &config.credentials {
            Credentials::Chain => builder,
            Credentials::AccessKey(key) => builder.with_access_key(key.expose()),
            Credentials::SasToken(token) => {
                let pairs = split_sas(token.expose()).map_err(|_| {
                    Error::new(
                        ErrorKind::PermissionDenied,
                        "the azure SAS token is malformed: AZURE_STORAGE_SAS_TOKEN must be the query string of a SAS URL (sv=...&sig=...)",
                    )
                })?;
                builder.with_sas_authorization(pairs)
            }
            Credentials::Anonymous => builder.with_skip_signature(true),
        };
        let store = builder.build().map_err(|error| {
            Error::with_source(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot set up the azure client for the container `{container}`: check AZURE_STORAGE_ACCOUNT_NAME, the credentials and HERD_AZURE_ENDPOINT"
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
        "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_CONNECTION_STRING; HERD_AZURE_ANONYMOUS=1 for a public container"
    }

    fn endpoint_advice(&self) -> &'static str {
        "HERD_AZURE_ENDPOINT, or the account name"
    }

    fn secrets(&self) -> Vec<String> {
        match &self.config.credentials {
            Credentials::AccessKey(secret) | Credentials::SasToken(secret) => {
                vec![secret.expose().to_owned()]
            }
            Credentials::Chain | Credentials::Anonymous => Vec::new(),
        }
    }
}

/// `azure://container/path` and `azure://container/prefix/`: see the
/// [module documentation](self).
///
/// Clients are created on first use, one per container, so building one (and a `Resolver`)
/// does no I/O.
pub struct AzureBackend(ObjectBackend<Azure>);

impl fmt::Debug for AzureBackend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug("AzureBackend", formatter)
    }
}

impl AzureBackend {
    /// A backend with `config`, checked with [`Config::validate`].
    pub fn new(config: Config) -> Result<AzureBackend> {
        config.validate()?;
        Ok(AzureBackend(ObjectBackend::new(config)))
    }

    /// A backend configured by [`Config::from_env`]. It never fails: a configuration error is
    /// reported by every transfer instead.
    pub fn from_env() -> AzureBackend {
        AzureBackend(ObjectBackend::from_env(Config::from_env()))
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(self, progress: Progress) -> Self {
        AzureBackend(self.0.with_progress(progress))
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.0.config()
    }
}

/// Its [`Backend`](crate::Backend) operations are the shared driver's.
impl ObjectBacked for AzureBackend {
    type Provider = Azure;

    fn driver(&self) -> &ObjectBackend<Azure> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend as _;
    use crate::uri::Uri;

    #[test]
    fn connection_strings_give_account_key_and_endpoint() {
        let parsed = parse_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(parsed.account.as_deref(), Some("acct"));
        assert_eq!(parsed.key.as_deref(), Some("a2V5"));
        assert_eq!(
            parsed.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        let parsed = parse_connection_string(
            "BlobEndpoint=http://127.0.0.1:9/acct;SharedAccessSignature=sv=1&sig=x",
        )
        .unwrap();
        assert_eq!(parsed.endpoint.as_deref(), Some("http://127.0.0.1:9/acct"));
        assert_eq!(parsed.sas.as_deref(), Some("sv=1&sig=x"));
        let parsed = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(parsed.account.as_deref(), Some(DEVELOPMENT_ACCOUNT));
        assert!(parse_connection_string("garbage").is_err());
    }

    #[test]
    fn bad_credentials_are_refused_without_showing_them() {
        let config = Config {
            account: Some("acct".into()),
            credentials: Credentials::AccessKey(Secret::new("not base64 at all!")),
            ..Config::default()
        };
        let error = AzureBackend::new(config).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert!(
            !error.report().contains("not base64 at all!"),
            "{}",
            error.report()
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = Config {
            account: Some("acct".into()),
            credentials: Credentials::AccessKey(Secret::new("c2VjcmV0a2V5")),
            ..Config::default()
        };
        let shown = format!("{:?}", AzureBackend::new(config).unwrap());
        assert!(shown.contains("acct"), "{shown}");
        assert!(!shown.contains("c2VjcmV0a2V5"), "{shown}");
    }

    #[tokio::test]
    async fn a_missing_account_says_what_to_set() {
        let backend = AzureBackend::new(Config::default()).unwrap();
        let uri = Uri::parse("azure://container/file.txt").unwrap();
        let error = backend.list(&uri, false).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert!(
            error.to_string().contains("AZURE_STORAGE_ACCOUNT_NAME"),
            "{error}"
        );
    }
}
