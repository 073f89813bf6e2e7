//! [`Resolver`]: picks the backend for a URI's scheme, and runs whole fetches (download, then
//! actions, staged so that nothing half-done shows in the target directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::debug;

use crate::actions;
use crate::backend::{Backend, Entry, TransferStats};
use crate::error::{Error, ErrorKind, Result};
use crate::file::FileBackend;
use crate::local::{self, StagingDir, run_blocking};
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

/// What [`Resolver::fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// What was downloaded, before the actions ran (paths relative to the target directory).
    pub stats: TransferStats,
    /// The top-level names the fetch left in the target directory, after the actions.
    pub items: Vec<String>,
}

/// The backends of this build, keyed by scheme.
///
/// `Resolver::default()` has every backend this build ships: `file` and plain paths, `s3`,
/// `azure` (Azure Blob Storage) and `gs` (Google Cloud Storage), each configured from the
/// environment (see [`S3Backend`](crate::S3Backend), [`AzureBackend`](crate::AzureBackend) and
/// [`GcsBackend`](crate::GcsBackend)), `http`, `https`, `ftp` and `run+fastq`.
/// Schemes without a backend fail with an error of kind [`ErrorKind::Unsupported`] that says so.
#[derive(Clone)]
pub struct Resolver {
    backends: BTreeMap<Scheme, Arc<dyn Backend>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Resolver")
            .field("schemes", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with_progress(Progress::disabled())
    }
}

impl Resolver {
    /// Every backend this build ships, counting what they move in `progress` (what
    /// `herd fetch` draws its progress bars from).
    pub fn with_progress(progress: Progress) -> Self {
        let mut resolver = Resolver::empty();
        let file = FileBackend::new().with_progress(progress.clone());
        resolver.register(Scheme::File, Arc::new(file));
        let http = crate::http::HttpBackend::new().with_progress(progress.clone());
        let http = Arc::new(http);
        resolver.register(Scheme::Http, http.clone());
        resolver.register(Scheme::Https, http);
        let ftp = crate::ftp::FtpBackend::new().with_progress(progress.clone());
        resolver.register(Scheme::Ftp, Arc::new(ftp));
        let fastq = crate::fastq::FastqBackend::default().with_progress(progress.clone());
        resolver.register(Scheme::RunFastq, Arc::new(fastq));
        let s3 = crate::s3::S3Backend::from_env().with_progress(progress.clone());
        resolver.register(Scheme::S3, Arc::new(s3));
        let azure = crate::azure::AzureBackend::from_env().with_progress(progress.clone());
        resolver.register(Scheme::Azure, Arc::new(azure));
        let gcs = crate::gcs::GcsBackend::from_env().with_progress(progress);
        resolver.register(Scheme::Gs, Arc::new(gcs));
        resolver
    }

    /// Every backend this build ships.
    pub fn new() -> Self {
        Resolver::default()
    }

    /// A resolver without any backend (tests register fakes in it).
    pub fn empty() -> Self {
        Resolver {
            backends: BTreeMap::new(),
        }
    }

    /// Uses `backend` for `scheme`, replacing any backend registered for it.
    pub fn register(&mut self, scheme: Scheme, backend: Arc<dyn Backend>) -> &mut Self {
        self.backends.insert(scheme, backend);
        self
    }

    /// The schemes that have a backend.
    pub fn schemes(&self) -> Vec<Scheme> {
        self.backends.keys().copied().collect()
    }

    /// The backend for `scheme`, or an [`ErrorKind::Unsupported`] error that says the scheme is
    /// not available in this build.
    pub fn backend(&self, scheme: Scheme) -> Result<&Arc<dyn Backend>> {
        self.backends
            .get(&scheme)
            .ok_or_else(|| unsupported(scheme))
    }

    /// Downloads `uri` into `target_dir` (created if missing) and applies its actions.
    ///
    /// The download and the actions run in a hidden staging directory inside `target_dir`; only
    /// once all succeeded are the resulting items moved into `target_dir` (a directory merges
    /// into an existing one, a file replaces one). On error nothing of this fetch is left.
    pub async fn fetch(&self, uri: &Uri, target_dir: &Path) -> Result<Fetched> {
        let backend = self.backend(uri.scheme())?;
        let target: PathBuf = target_dir.to_path_buf();
        let staging = run_blocking(move |_| StagingDir::create(&target)).await?;
        let stats = match backend.get(&uri.without_actions(), staging.path()).await {
            Ok(stats) => stats,
            Err(error) => {
                // Remove what the failed download left, off the async threads.
                run_blocking(move |_| {
                    drop(staging);
                    Ok(())
                })
                .await?;
                return Err(error);
            }
        };
        let actions_list = uri.actions().to_vec();
        let target: PathBuf = target_dir.to_path_buf();
        let downloaded = stats.top_level_items();
        let items = run_blocking(move |cancel| {
            let items =
                actions::apply_cancellable(staging.path(), downloaded, &actions_list, cancel)?;
            for item in &items {
                local::move_merge(&staging.path().join(item), &target.join(item))?;
            }
            staging.finish()?;
            Ok(items)
        })
        .await?;
        debug!(uri = %uri.redacted(), files = stats.files, bytes = stats.bytes, "fetched");
        Ok(Fetched { stats, items })
    }

    /// Uploads the local file or directory `source` to `uri` (see [`Backend::put`]).
    pub async fn put(&self, source: &Path, uri: &Uri) -> Result<TransferStats> {
        refuse_actions(uri, "uploads")?;
        self.backend(uri.scheme())?.put(source, uri).await
    }

    /// Lists `uri` (see [`Backend::list`]).
    pub async fn list(&self, uri: &Uri, recursive: bool) -> Result<Vec<Entry>> {
        refuse_actions(uri, "listings")?;
        self.backend(uri.scheme())?.list(uri, recursive).await
    }

    /// Deletes `uri` (see [`Backend::delete`]).
    pub async fn delete(&self, uri: &Uri, recursive: bool) -> Result<()> {
        refuse_actions(uri, "deletions")?;
        self.backend(uri.scheme())?.delete(uri, recursive).await
    }
}

fn refuse_actions(uri: &Uri, what: &str) -> Result<()> {
    if let Some(action) = uri.actions().first() {
        return Err(Error::invalid_uri(format!(
            "`|{action}` in `{}`: actions apply to downloads only, not to {what}; remove it",
            uri.redacted()
        )));
    }
    Ok(())
}

fn unsupported(scheme: Scheme) -> Error {
    let need = match scheme {
        Scheme::Fasp => {
            "; it will need IBM Aspera's `ascp` program on the worker; meanwhile download with `ascp` yourself and pass the local path"
        }
        Scheme::RunFastq => {
            "; it will fetch runs from ENA over ftp or https, or with sra-tools' `fasterq-dump` (@sra-tools); meanwhile download the FASTQ files yourself and pass their path"
        }
        _ => "; meanwhile copy the data to a path the worker can read and pass that path",
    };
    Error::new(
        ErrorKind::Unsupported,
        format!("{scheme}:// is not available in this build of herd yet{need}"),
    )
}
