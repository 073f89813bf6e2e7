//! Staging: inputs into `/input`, resources through a per-worker cache into `/resource`, and
//! `/output` to its URI.
//!
//! The runner sees staging through the [`Staging`] trait, so its tests can script it;
//! [`FetchStaging`], through herd-fetch, is the one production implementation (tested end to
//! end by the cluster tests).
//!
//! Resources are fetched once per worker (actions applied) into
//! `<work-dir>/resources/<key>/`, keyed by the SHA-256 of the URI with its actions; concurrent
//! requests for the same resource wait for one download. A fetched entry is made read-only
//! (files 0444, folders 0555) and recorded in `<key>.manifest` beside it (kind, mode, size,
//! mtime and inode of everything in it), written last, so the cache survives a worker
//! restart. Before each reuse a fresh `lstat` walk is compared with the manifest: an entry a
//! task altered (a bare task as root can write through its hard links) is discarded and
//! fetched again, never served. Each attempt gets the cached tree as hard links (a copy across
//! file systems), mounted read-only in Docker.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herd_fetch::{Resolver, SkipReason, Skipped, TransferStats, Uri};
use herd_proto::TaskSpec;
use herd_proto::view::{Transfer, TransferredFile};
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::Error;
use crate::executor::TaskDirs;

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

    /// The attempt whose folders are `dirs` ended: what it used may be cleaned.
    fn finished(&self, _dirs: &TaskDirs) {}
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
    /// Keeps the resource cache within `max_bytes`, least recently used entries first, never
    /// one an attempt under way uses; removes old CRC-named entries. Blocking.
    pub fn sweep_cache(&self, max_bytes: u64) -> crate::cleaning::CacheSweep {
        self.cache.sweep(max_bytes)
    }

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

    fn finished(&self, dirs: &TaskDirs) {
        self.cache.in_use().remove(&dirs.root);
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
    /// One lock per key: the first request downloads, the others wait and reuse.
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The keys each attempt under way uses, by the attempt's folder: never evicted.
    in_use: Mutex<HashMap<PathBuf, Vec<String>>>,
}

/// The cache folder name of a URI (with its actions): its SHA-256, lowercase hex. A
/// cryptographic hash: no two URIs can be made to share an entry (a CRC could be).
pub(crate) fn cache_key(uri_text: &str) -> String {
    Sha256::digest(uri_text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl ResourceCache {
    fn new(work_dir: &Path, resolver: Arc<Resolver>) -> Self {
        ResourceCache {
            root: work_dir.join("resources"),
            resolver,
            entries: Mutex::new(HashMap::new()),
            in_use: Mutex::new(HashMap::new()),
        }
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Vec<String>>> {
        self.in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Evicts least recently used entries past `max_bytes` and removes what is not an entry
    /// (see [`crate::cleaning`]); blocking.
    fn sweep(&self, max_bytes: u64) -> crate::cleaning::CacheSweep {
        crate::cleaning::sweep_cache(&self.root, max_bytes, |key, take_aside| {
            let in_use = self.in_use();
            if in_use
                .values()
                .any(|keys| keys.iter().any(|used| used == key))
            {
                return Ok(false);
            }
            take_aside()?;
            Ok(true)
        })
    }

    /// The cached copy of `uri` (with its actions applied), downloading it if it is missing
    /// or was altered since it was recorded (then discarded first, never served); true when
    /// it was downloaded.
    async fn get(&self, uri: &Uri) -> Result<(PathBuf, bool), Error> {
        let text = uri.to_string();
        let key = cache_key(&text);
        let folder = self.root.join(&key);
        let manifest = self.root.join(format!("{key}{MANIFEST_SUFFIX}"));
        let lock = {
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            entries.entry(key.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let (checked_folder, checked_manifest) = (folder.clone(), manifest.clone());
        let verdict = blocking("the resource cache check", move || {
            Ok(check_entry(&checked_folder, &checked_manifest, &text))
        })
        .await?;
        match verdict {
            Verdict::Intact => {
                crate::cleaning::touch(&self.root, &key);
                return Ok((folder, false));
            }
            Verdict::Missing => {}
            Verdict::Altered => warn!(
                resource = %uri.redacted(),
                folder = %folder.display(),
                "a cached resource was altered since it was fetched: discarded, fetched again"
            ),
        }
        let (discarded, unrecorded) = (folder.clone(), manifest.clone());
        blocking("the resource cache cleanup", move || {
            discard(&discarded, &unrecorded)
        })
        .await?;
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
        let (sealed, recorded, text) = (folder.clone(), manifest.clone(), uri.to_string());
        blocking("the resource cache record", move || {
            seal(&sealed, &recorded, &text)
        })
        .await?;
        Ok((folder, true))
    }
}

/// Beside each cache folder `KEY`, `KEY.manifest` (outside what tasks see): the URI, then one
/// line per entry (kind, mode, size, mtime, inode, path). Written last: a folder without it is
/// an unfinished download.
const MANIFEST_SUFFIX: &str = ".manifest";

/// What [`check_entry`] found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Recorded and unchanged: serve it.
    Intact,
    /// Never completed: fetch it.
    Missing,
    /// Changed since it was recorded: discard it and fetch again.
    Altered,
}

/// Runs `work` on the blocking threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::io(format!("{what} stopped"), std::io::Error::other(error)))?
}

/// Compares the entry's recorded manifest with a fresh `lstat` walk of its folder.
fn check_entry(folder: &Path, manifest: &Path, uri_text: &str) -> Verdict {
    let Ok(recorded) = std::fs::read_to_string(manifest) else {
        return Verdict::Missing;
    };
    match describe(folder) {
        Ok(now) if recorded == manifest_text(uri_text, &now) => Verdict::Intact,
        _ => Verdict::Altered,
    }
}

fn manifest_text(uri_text: &str, description: &str) -> String {
    format!("{uri_text}\n{description}")
}

/// One line per file, folder and link under `folder` (itself included), sorted: kind, mode,
/// size, mtime, inode and relative path; `lstat` only.
fn describe(folder: &Path) -> std::io::Result<String> {
    let mut lines = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        let kind = metadata.file_type();
        let letter = if kind.is_dir() {
            'd'
        } else if kind.is_symlink() {
            'l'
        } else {
            'f'
        };
        let relative = path.strip_prefix(folder).unwrap_or(&path);
        lines.push(format!(
            "{letter} {:o} {} {}.{:09} {} /{}",
            metadata.mode() & 0o7777,
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec(),
            metadata.ino(),
            relative.display()
        ));
        if kind.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    lines.sort();
    Ok(lines.join("\n"))
}

/// Makes a fetched entry read-only (files 0444, folders 0555; links untouched) and records
/// its manifest (written under a temporary name, then renamed).
fn seal(folder: &Path, manifest: &Path, uri_text: &str) -> Result<(), Error> {
    let failed = |error| Error::io(format!("cannot record {}", folder.display()), error);
    set_modes(folder, 0o444, 0o555).map_err(failed)?;
    let description = describe(folder).map_err(failed)?;
    let temporary = manifest.with_extension("manifest-partial");
    std::fs::write(&temporary, manifest_text(uri_text, &description)).map_err(failed)?;
    std::fs::rename(&temporary, manifest).map_err(failed)
}

/// Sets the mode of every file and folder under `folder` (itself included), links excepted;
/// folders after their content, so that a read-only folder is never in the way.
fn set_modes(folder: &Path, file_mode: u32, folder_mode: u32) -> std::io::Result<()> {
    let kind = std::fs::symlink_metadata(folder)?.file_type();
    if kind.is_symlink() {
        return Ok(());
    }
    if !kind.is_dir() {
        return std::fs::set_permissions(folder, std::fs::Permissions::from_mode(file_mode));
    }
    // Writable while its content changes.
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(folder)? {
        set_modes(&entry?.path(), file_mode, folder_mode)?;
    }
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(folder_mode))
}

/// Removes an entry (made writable first) and its manifest; what is already gone is fine.
fn discard(folder: &Path, manifest: &Path) -> Result<(), Error> {
    let failed = |error| Error::io(format!("cannot discard {}", folder.display()), error);
    match std::fs::remove_file(manifest) {
        Err(error) if !gone(&error) => return Err(failed(error)),
        _ => {}
    }
    match set_modes(folder, 0o644, 0o755) {
        Err(error) if gone(&error) => return Ok(()),
        result => result.map_err(failed)?,
    }
    std::fs::remove_dir_all(folder).map_err(failed)
}

/// Whether `error` says there is nothing there (missing, or under something not a folder).
fn gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR)
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
    if !resources.is_empty() {
        // Claimed before they are looked up: a sweep then keeps them until the attempt ends.
        let keys = resources.iter().map(|uri| cache_key(&uri.to_string()));
        cache.in_use().insert(dirs.root.clone(), keys.collect());
    }
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

/// Hard-links (or copies) every file under `source` into `destination`.
fn link_tree(source: &Path, destination: &Path) -> std::io::Result<TransferStats> {
    let mut stats = TransferStats::default();
    let mut pending = vec![(source.to_path_buf(), destination.to_path_buf())];
    while let Some((from, to)) = pending.pop() {
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            let name = entry.file_name();
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A sealed entry with a file and a sub-folder; returns (temp, folder, manifest).
    fn sealed_entry() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let folder = temp.path().join("entry");
        fs::create_dir_all(folder.join("sub")).unwrap();
        fs::write(folder.join("sub/db"), "original").unwrap();
        let manifest = temp.path().join("entry.manifest");
        seal(&folder, &manifest, "s3://bucket/db|untar").unwrap();
        (temp, folder, manifest)
    }

    #[test]
    fn the_key_is_the_sha256_of_the_uri_text() {
        assert_eq!(
            cache_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_sealed_entry_is_read_only_and_intact_until_altered() {
        let (_temp, folder, manifest) = sealed_entry();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&folder.join("sub/db")), 0o444);
        assert_eq!(mode(&folder.join("sub")), 0o555);
        let uri = "s3://bucket/db|untar";
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Intact);
        assert_eq!(
            check_entry(&folder, &manifest, "s3://bucket/other"),
            Verdict::Altered,
            "another URI's manifest"
        );

        // Written through (as root can, whatever the mode).
        fs::set_permissions(folder.join("sub/db"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Altered);
        fs::write(folder.join("sub/db"), "poisoned").unwrap();
        fs::set_permissions(folder.join("sub/db"), fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Altered);
        discard(&folder, &manifest).unwrap();
        assert!(!folder.exists() && !manifest.exists());
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Missing);
    }

    #[test]
    fn an_added_or_replaced_file_is_an_altered_entry() {
        let (_temp, folder, manifest) = sealed_entry();
        let uri = "s3://bucket/db|untar";
        fs::set_permissions(folder.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(folder.join("sub/extra"), "x").unwrap();
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Altered);
        fs::remove_file(folder.join("sub/extra")).unwrap();
        // Same name, same size, a new inode.
        fs::remove_file(folder.join("sub/db")).unwrap();
        fs::write(folder.join("sub/db"), "poisoned").unwrap();
        assert_eq!(check_entry(&folder, &manifest, uri), Verdict::Altered);
    }

    #[tokio::test]
    async fn a_resource_in_use_is_not_evicted_until_its_attempt_ended() {
        let work = tempfile::tempdir().unwrap();
        let resource = work.path().join("reference.fa");
        std::fs::write(&resource, ">chr1\nACGT\n").unwrap();
        let staging = FetchStaging::new(work.path());
        let spec = TaskSpec::new(herd_proto::TaskRequest {
            command: vec!["tool".to_owned()],
            resources: vec![resource.display().to_string()],
            ..herd_proto::TaskRequest::default()
        })
        .unwrap();
        let root = work.path().join("tasks/1-1");
        let dirs = TaskDirs {
            input: root.join("input"),
            output: root.join("output"),
            resource: root.join("resource"),
            tmp: root.join("tmp"),
            root,
        };
        for dir in [&dirs.input, &dirs.output, &dirs.resource, &dirs.tmp] {
            std::fs::create_dir_all(dir).unwrap();
        }
        staging.stage_in(&spec, &dirs).await.unwrap();
        let key = cache_key(&parse(&resource.display().to_string()).unwrap().to_string());
        let entry = work.path().join("resources").join(&key);
        assert!(entry.exists());
        // Over the limit (0 bytes), but in use.
        assert!(staging.sweep_cache(0).evicted.is_empty());
        assert!(entry.exists());
        staging.finished(&dirs);
        assert_eq!(staging.sweep_cache(0).evicted, vec![key]);
        assert!(!entry.exists());
        assert!(
            dirs.resource.join("reference.fa").exists(),
            "the attempt's links stay"
        );
    }
}
