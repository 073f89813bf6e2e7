//! [`MemoryBackend`]: an object store in memory, the fake used to test code that transfers
//! files without a real server (register it for `s3`, say, in a [`Resolver`](crate::Resolver)).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::checksum::crc64nvme;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, AtomicFile, run_blocking, slash_path};
use crate::uri::Uri;

type Objects = BTreeMap<String, Arc<[u8]>>;

/// Objects keyed by the URI's path (`bucket/key` for `s3://bucket/key`), with object-store
/// semantics: a directory is a prefix ending with `/`. Clones share the same objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    objects: Arc<Mutex<Objects>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    /// Stores `bytes` under `key` (a URI's path, such as `bucket/dir/file`).
    pub fn insert(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        self.lock().insert(key.to_owned(), Arc::from(bytes.into()));
    }

    /// The bytes stored under `key`.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().get(key).map(|bytes| bytes.to_vec())
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        // A panic while holding the lock cannot leave the map half-updated: keep going.
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The objects under the prefix `prefix` (ending with `/`), as (relative key, bytes).
    fn under(&self, prefix: &str) -> Vec<(String, Arc<[u8]>)> {
        self.lock()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, bytes)| (key[prefix.len()..].to_owned(), Arc::clone(bytes)))
            .collect()
    }

    fn is_prefix(&self, key: &str) -> bool {
        !self.under(&format!("{key}/")).is_empty()
    }
}

fn directory_key(uri: &Uri) -> String {
    let path = uri.path();
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

fn prefix_without_slash(uri: &Uri) -> Error {
    Error::invalid_uri(format!(
        "`{}` is a directory: end the uri with `/` to transfer it recursively",
        uri.redacted()
    ))
}

/// `destination/relative` for a key read from a store, refusing keys that would leave
/// `destination` (`..`, absolute, empty components).
pub(crate) fn join_key(destination: &Path, relative: &str) -> Result<PathBuf> {
    let path = Path::new(relative);
    let safe = !relative.is_empty()
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
        && !relative.split('/').any(str::is_empty);
    if !safe {
        return Err(Error::unsafe_entry(format!(
            "refusing to download the object `{relative}`: its name would land outside `{}`",
            destination.display()
        )));
    }
    Ok(destination.join(path))
}

impl Backend for MemoryBackend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let objects: Vec<(String, Arc<[u8]>)> = if uri.is_dir() {
                let objects = self.under(uri.path());
                if objects.is_empty() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("nothing under `{}`: check the uri", uri.redacted()),
                    ));
                }
                objects
            } else {
                let Some(bytes) = self.lock().get(uri.path()).cloned() else {
                    if self.is_prefix(uri.path()) {
                        return Err(prefix_without_slash(uri));
                    }
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("`{}` does not exist: check the uri", uri.redacted()),
                    ));
                };
                let name = uri.file_name().unwrap_or_default().to_owned();
                vec![(name, bytes)]
            };
            let destination = destination.to_path_buf();
            run_blocking(move |cancel| {
                let mut stats = TransferStats::default();
                for (relative, bytes) in objects {
                    cancel.check()?;
                    let mut file = AtomicFile::create(join_key(&destination, &relative)?)?;
                    std::io::Write::write_all(&mut file, &bytes)
                        .at("cannot write", file.final_path())?;
                    let (crc64nvme, size) = file.commit()?;
                    stats.add(FileChecksum {
                        path: relative,
                        size,
                        crc64nvme,
                    });
                }
                Ok(stats)
            })
            .await
        })
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let source_path = source.to_path_buf();
            let uri_owned = uri.clone();
            let (uploads, skipped) = run_blocking(move |cancel| {
                let metadata = fs::metadata(&source_path).at("cannot read", &source_path)?;
                let mut uploads = Vec::new();
                let mut skipped = Vec::new();
                if metadata.is_dir() {
                    let prefix = directory_key(&uri_owned);
                    let walk = local::walk_files(&source_path, false, cancel)?;
                    skipped = walk.skipped;
                    for file in walk.files {
                        let relative = slash_path(&file.relative);
                        let bytes = local::read_all(local::open_listed(&file)?, &file.path)?;
                        uploads.push((format!("{prefix}{relative}"), relative, bytes));
                    }
                } else {
                    let name = source_path
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let key = if uri_owned.is_dir() {
                        format!("{}{name}", uri_owned.path())
                    } else {
                        uri_owned.path().to_owned()
                    };
                    let relative = key.rsplit('/').next().unwrap_or_default().to_owned();
                    let bytes =
                        local::read_all(local::open_regular(&source_path, None)?, &source_path)?;
                    uploads.push((key, relative, bytes));
                }
                Ok((uploads, skipped))
            })
            .await?;
            let mut stats = TransferStats {
                skipped,
                ..TransferStats::default()
            };
            let mut objects = self.lock();
            for (key, relative, bytes) in uploads {
                stats.add(FileChecksum {
                    path: relative,
                    size: bytes.len() as u64,
                    crc64nvme: crc64nvme(&bytes),
                });
                objects.insert(key, Arc::from(bytes));
            }
            Ok(stats)
        })
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            let base = uri.without_actions();
            if !uri.is_dir()
                && let Some(bytes) = self.lock().get(uri.path())
            {
                let name = uri.file_name().unwrap_or_default().to_owned();
                return Ok(vec![Entry {
                    uri: base,
                    path: name,
                    size: bytes.len() as u64,
                }]);
            }
            let objects = self.under(&directory_key(uri));
            if objects.is_empty() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("nothing under `{}`: check the uri", uri.redacted()),
                ));
            }
            let mut entries: Vec<Entry> = Vec::new();
            for (relative, bytes) in objects {
                let (path, size) = match relative.split_once('/') {
                    Some((directory, _)) if !recursive => (format!("{directory}/"), 0),
                    _ => (relative, bytes.len() as u64),
                };
                if entries.last().is_some_and(|last| last.path == path) {
                    continue;
                }
                entries.push(Entry {
                    uri: base.join(&path)?,
                    path,
                    size,
                });
            }
            entries.sort_by(|left, right| left.path.cmp(&right.path));
            entries.dedup_by(|left, right| left.path == right.path);
            Ok(entries)
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !uri.is_dir() {
                if self.lock().remove(uri.path()).is_none() && self.is_prefix(uri.path()) {
                    return Err(prefix_without_slash(uri));
                }
                return Ok(());
            }
            let prefix = uri.path().to_owned();
            let mut objects = self.lock();
            objects.retain(|key, _| match key.strip_prefix(&prefix) {
                Some(relative) => !recursive && relative.contains('/'),
                None => true,
            });
            Ok(())
        })
    }
}
