//! Staging: inputs into `/input`, resources through a per-worker cache into `/resource`, and
//! `/output` to its URI.
//!
//! The runner sees staging through the [`Staging`] trait, so its tests can script it;
//! [`FetchStaging`], through herd-fetch, is the one production implementation (tested end to
//! end by the cluster tests).
//!
//! Resources are fetched once per worker (actions applied) into
//! `<work-dir>/resources/<key>/`, keyed by the URI with its actions. A marker file written
//! last makes the cache survive a worker restart; concurrent first requests for the same
//! resource wait for one download. Each attempt gets the cached tree as hard links (a copy
//! across file systems), mounted read-only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herd_fetch::{Resolver, SkipReason, Skipped, TransferStats, Uri};
use herd_proto::TaskSpec;
use herd_proto::view::{Transfer, TransferredFile};
use tokio::sync::OnceCell;

use crate::Error;
use crate::executor::TaskDirs;

/// Marker written once a cached resource is complete; holds the URI.
const COMPLETE_MARKER: &str = ".herd-resource-complete";

fn transfer(direction: &str, uri: &Uri, stats: &TransferStats) -> Transfer {
    Transfer {
        direction: direction.to_owned(),
        uri: uri.redacted().to_string(),
        bytes: stats.bytes,
        files: u32::try_from(stats.files).unwrap_or(u32::MAX),
        items: stats
            .checksums
            .iter()
            .map(|file| TransferredFile {
                path: file.path.clone(),
                size: file.size,
                crc64nvme: file.crc64nvme.to_base64(),
            })
            .collect(),
    }
}

fn parse(text: &str) -> Result<Uri, Error> {
    Uri::parse(text).map_err(|source| Error::Fetch {
        context: "invalid URI".to_owned(),
        source,
    })
}

/// How an attempt's files move in and out.
pub(crate) trait Staging: Send + Sync + 'static {
    /// Stages the inputs and resources of `spec` into `dirs`; returns what was moved.
    fn stage_in(
        &self,
        spec: &TaskSpec,
        dirs: &TaskDirs,
    ) -> impl Future<Output = Result<Vec<Transfer>, Error>> + Send;

    /// Uploads the content of `source` (an attempt's `/output`) to `uri`, leaving out (and
    /// naming in [`Uploaded::skipped`]) symbolic links, fifos, sockets and devices, and also
    /// files with more than one name when `refuse_hard_links`.
    fn upload_output(
        &self,
        source: &Path,
        uri: &str,
        refuse_hard_links: bool,
    ) -> impl Future<Output = Result<Uploaded, Error>> + Send;
}

/// What an upload of `/output` moved, and what it left out.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub(crate) transfer: Transfer,
    /// One line per entry left out, for the task's log: `/output/x is a symbolic link: not
    /// uploaded`.
    pub(crate) skipped: Vec<String>,
}

/// Staging through herd-fetch, with the worker's resource cache.
pub(crate) struct FetchStaging {
    resolver: Arc<Resolver>,
    cache: ResourceCache,
}

impl FetchStaging {
    /// Staging with a resource cache under `work_dir`.
    pub fn new(work_dir: &Path) -> Self {
        let resolver = Arc::new(Resolver::new());
        FetchStaging {
            cache: ResourceCache::new(work_dir, resolver.clone()),
            resolver,
        }
    }
}

impl Staging for FetchStaging {
    async fn stage_in(&self, spec: &TaskSpec, dirs: &TaskDirs) -> Result<Vec<Transfer>, Error> {
        stage_in(&self.resolver, &self.cache, spec, dirs).await
    }

    async fn upload_output(
        &self,
        source: &Path,
        uri: &str,
        refuse_hard_links: bool,
    ) -> Result<Uploaded, Error> {
        upload_output(&self.resolver, source, uri, refuse_hard_links).await
    }
}

/// The worker's resource cache.
struct ResourceCache {
    root: PathBuf,
    resolver: Arc<Resolver>,
    downloads: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
}

impl ResourceCache {
    fn new(work_dir: &Path, resolver: Arc<Resolver>) -> Self {
        ResourceCache {
            root: work_dir.join("resources"),
            resolver,
            downloads: Mutex::new(HashMap::new()),
        }
    }

    /// The cached copy of `uri` (with its actions applied), downloading it if needed.
    async fn get(&self, uri: &Uri) -> Result<(PathBuf, bool), Error> {
        let key = uri.to_string();
        let folder = self.root.join(format!(
            "{:016x}",
            herd_fetch::checksum::crc64nvme(key.as_bytes()).as_u64()
        ));
        let cell = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            downloads.entry(key.clone()).or_default().clone()
        };
        let mut fetched = false;
        let path = cell
            .get_or_try_init(|| async {
                let marker = folder.join(COMPLETE_MARKER);
                if tokio::fs::read_to_string(&marker)
                    .await
                    .is_ok_and(|text| text == key)
                {
                    return Ok(folder.clone());
                }
                // An incomplete earlier download: start over.
                let _ = tokio::fs::remove_dir_all(&folder).await;
                tokio::fs::create_dir_all(&folder).await.map_err(|error| {
                    Error::io(
                        format!("cannot create the resource cache {}", folder.display()),
                        error,
                    )
                })?;
                self.resolver
                    .fetch(uri, &folder)
                    .await
                    .map_err(|source| Error::Fetch {
                        context: format!("resource {}", uri.redacted()),
                        source,
                    })?;
                tokio::fs::write(&marker, &key).await.map_err(|error| {
                    Error::io(format!("cannot write {}", marker.display()), error)
                })?;
                fetched = true;
                Ok::<PathBuf, Error>(folder.clone())
            })
            .await?;
        Ok((path.clone(), fetched))
    }
}

/// Stages inputs and resources of `spec` into `dirs`; returns what was moved.
async fn stage_in(
    resolver: &Resolver,
    cache: &ResourceCache,
    spec: &TaskSpec,
    dirs: &TaskDirs,
) -> Result<Vec<Transfer>, Error> {
    let inputs: Vec<Uri> = spec
        .inputs()
        .iter()
        .map(|text| parse(text))
        .collect::<Result<_, _>>()?;
    let resources: Vec<Uri> = spec
        .resources()
        .iter()
        .map(|text| parse(text))
        .collect::<Result<_, _>>()?;
    let downloads = inputs.iter().map(|uri| async move {
        resolver
            .fetch(uri, &dirs.input)
            .await
            .map(|fetched| transfer("input", uri, &fetched.stats))
            .map_err(|source| Error::Fetch {
                context: format!("input {}", uri.redacted()),
                source,
            })
    });
    let mut transfers = futures::future::try_join_all(downloads).await?;
    for uri in &resources {
        let (cached, fetched) = cache.get(uri).await?;
        let destination = dirs.resource.clone();
        let linked = tokio::task::spawn_blocking(move || link_tree(&cached, &destination))
            .await
            .map_err(|error| Error::io("resource linking stopped", std::io::Error::other(error)))?
            .map_err(|error| {
                Error::io(format!("cannot link resource {}", uri.redacted()), error)
            })?;
        if fetched {
            transfers.push(transfer("resource", uri, &linked));
        }
    }
    Ok(transfers)
}

/// Hard-links (or copies) every file under `source` into `destination`, skipping the marker.
fn link_tree(source: &Path, destination: &Path) -> std::io::Result<TransferStats> {
    let mut stats = TransferStats::default();
    let mut pending = vec![(source.to_path_buf(), destination.to_path_buf())];
    while let Some((from, to)) = pending.pop() {
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == COMPLETE_MARKER {
                continue;
            }
            let kind = entry.file_type()?;
            let target = to.join(&name);
            if kind.is_dir() {
                pending.push((entry.path(), target));
            } else if kind.is_symlink() {
                let link = std::fs::read_link(entry.path())?;
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(link, &target)?;
            } else {
                let _ = std::fs::remove_file(&target);
                if std::fs::hard_link(entry.path(), &target).is_err() {
                    std::fs::copy(entry.path(), &target)?;
                }
                stats.files += 1;
                stats.bytes += entry.metadata()?.len();
            }
        }
    }
    Ok(stats)
}

/// Uploads the content of `/output` to `uri`. With `refuse_hard_links` (Docker tasks, whose
/// processes are all gone by now: nothing can swap a name between the walk and the removal),
/// files with more than one name are first removed from `/output` (a container could have
/// hard-linked a host file it can read); the upload itself leaves out links and special files.
async fn upload_output(
    resolver: &Resolver,
    source: &Path,
    uri: &str,
    refuse_hard_links: bool,
) -> Result<Uploaded, Error> {
    let uri = parse(uri)?;
    let mut skipped = Vec::new();
    if refuse_hard_links {
        let root = source.to_path_buf();
        skipped = tokio::task::spawn_blocking(move || remove_hard_links(&root))
            .await
            .map_err(|error| {
                Error::io("the /output check stopped", std::io::Error::other(error))
            })??;
    }
    let stats = resolver
        .put(source, &uri)
        .await
        .map_err(|source| Error::Fetch {
            context: format!("output {}", uri.redacted()),
            source,
        })?;
    skipped.extend(stats.skipped.iter().map(log_line));
    Ok(Uploaded {
        transfer: transfer("output", &uri, &stats),
        skipped,
    })
}

/// The task's log line for an entry of `/output` that was not uploaded.
fn log_line(entry: &Skipped) -> String {
    let path = if entry.path.is_empty() {
        "/output".to_owned()
    } else {
        format!("/output/{}", entry.path)
    };
    format!("herd: {path} {}: not uploaded", entry.what())
}

/// Removes the files of `output` that have more than one name; returns their log lines.
fn remove_hard_links(output: &Path) -> Result<Vec<String>, Error> {
    let entries =
        herd_fetch::walk::skipped_entries(output, true).map_err(|source| Error::Fetch {
            context: "cannot list /output".to_owned(),
            source,
        })?;
    let mut lines = Vec::new();
    for entry in entries {
        if entry.reason != SkipReason::HardLinked {
            continue;
        }
        let path = output.join(&entry.path);
        std::fs::remove_file(&path)
            .map_err(|error| Error::io(format!("cannot remove {}", path.display()), error))?;
        lines.push(log_line(&entry));
    }
    Ok(lines)
}
