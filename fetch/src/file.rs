//! [`FileBackend`]: `file:///abs/path` and plain paths, on the local filesystem.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, Cancel, run_blocking, slash_path};
use crate::progress::Progress;
use crate::uri::Uri;

/// The local filesystem. Every file is written under a temporary name in its destination
/// directory and renamed once complete, and checksummed (CRC64NVME) while copied. Symbolic
/// links in a source tree are followed.
#[derive(Debug, Clone, Default)]
pub struct FileBackend {
    progress: Progress,
}

impl FileBackend {
    /// The backend.
    pub fn new() -> Self {
        FileBackend::default()
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }
}

/// The URI's local path without its trailing `/` (which the URI's `is_dir` keeps): system calls
/// on `file/` fail with "not a directory" before the backend can say which mistake it is.
fn local_path(uri: &Uri) -> Result<PathBuf> {
    match uri.local_path().and_then(|path| path.to_str()) {
        Some(path) => {
            let trimmed = path.trim_end_matches('/');
            Ok(PathBuf::from(
                if trimmed.is_empty() && path.starts_with('/') {
                    "/"
                } else {
                    trimmed
                },
            ))
        }
        None => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the file backend cannot handle `{}`: it is not a local path",
                uri.redacted()
            ),
        )),
    }
}

fn not_a_directory(path: &Path) -> Error {
    Error::invalid_uri(format!(
        "`{}` is not a directory: remove the trailing `/` to name a file",
        path.display()
    ))
}

fn is_a_directory(path: &Path) -> Error {
    Error::invalid_uri(format!(
        "`{}` is a directory: end the uri with `/` to transfer it recursively",
        path.display()
    ))
}

fn get_blocking(
    uri: &Uri,
    source: &Path,
    destination: &Path,
    cancel: &Cancel,
    progress: &Progress,
) -> Result<TransferStats> {
    let metadata = fs::metadata(source).at("cannot read", source)?;
    if uri.is_dir() {
        if !metadata.is_dir() {
            return Err(not_a_directory(source));
        }
        return local::copy_tree(source, destination, cancel, progress);
    }
    if metadata.is_dir() {
        return Err(is_a_directory(source));
    }
    let Some(name) = uri.file_name() else {
        return Err(Error::invalid_uri(format!(
            "`{}` does not end with a file name",
            uri.redacted()
        )));
    };
    progress.expect_file(metadata.len());
    let (crc64nvme, size) =
        local::copy_file(source, None, &destination.join(name), cancel, progress)?;
    let mut stats = TransferStats::default();
    stats.add(FileChecksum {
        path: name.to_owned(),
        size,
        crc64nvme,
    });
    Ok(stats)
}

fn put_blocking(
    source: &Path,
    uri: &Uri,
    destination: &Path,
    cancel: &Cancel,
    progress: &Progress,
) -> Result<TransferStats> {
    let metadata = fs::metadata(source).at("cannot read", source)?;
    if metadata.is_dir() {
        return local::copy_tree(source, destination, cancel, progress);
    }
    let target = if uri.is_dir() {
        let Some(name) = source.file_name() else {
            return Err(Error::invalid_uri(format!(
                "`{}` has no file name",
                source.display()
            )));
        };
        destination.join(name)
    } else {
        destination.to_path_buf()
    };
    progress.expect_file(metadata.len());
    let (crc64nvme, size) = local::copy_file(source, None, &target, cancel, progress)?;
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stats = TransferStats::default();
    stats.add(FileChecksum {
        path: name,
        size,
        crc64nvme,
    });
    Ok(stats)
}

fn list_blocking(uri: &Uri, path: &Path, recursive: bool, cancel: &Cancel) -> Result<Vec<Entry>> {
    let metadata = fs::metadata(path).at("cannot list", path)?;
    let base = uri.without_actions();
    if !metadata.is_dir() {
        if uri.is_dir() {
            return Err(not_a_directory(path));
        }
        let name = uri.file_name().unwrap_or_default().to_owned();
        return Ok(vec![Entry {
            uri: base,
            path: name,
            size: metadata.len(),
        }]);
    }
    let mut entries = Vec::new();
    if recursive {
        for file in local::walk_files(path, false, cancel)?.files {
            let relative = slash_path(&file.relative);
            entries.push(Entry {
                uri: base.join(&relative)?,
                path: relative,
                size: file.size,
            });
        }
        return Ok(entries);
    }
    for child in fs::read_dir(path).at("cannot list", path)? {
        let child = child.at("cannot list", path)?;
        let name = child.file_name().to_string_lossy().into_owned();
        let metadata = match fs::metadata(child.path()) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::io("cannot read", &child.path(), error)),
        };
        if metadata.is_dir() {
            let relative = format!("{name}/");
            entries.push(Entry {
                uri: base.join(&relative)?,
                path: relative,
                size: 0,
            });
        } else if metadata.is_file() {
            entries.push(Entry {
                uri: base.join(&name)?,
                path: name,
                size: metadata.len(),
            });
        }
    }
    entries.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(entries)
}

fn delete_blocking(uri: &Uri, path: &Path, recursive: bool) -> Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(Error::io("cannot delete", path, error)),
    };
    let is_dir = metadata.is_dir()
        || (metadata.is_symlink() && fs::metadata(path).is_ok_and(|target| target.is_dir()));
    if !is_dir {
        if uri.is_dir() {
            return Err(not_a_directory(path));
        }
        return fs::remove_file(path).at("cannot delete", path);
    }
    if !uri.is_dir() {
        return Err(is_a_directory(path));
    }
    // A directory URI deletes what it names, through a symbolic link if it is one.
    let real = fs::canonicalize(path).at("cannot resolve", path)?;
    if real.parent().is_none() {
        return Err(Error::unsafe_entry(format!(
            "refusing to delete `{}`: it is the root directory",
            path.display()
        )));
    }
    if recursive {
        return fs::remove_dir_all(&real).at("cannot delete", &real);
    }
    for child in fs::read_dir(&real).at("cannot list", &real)? {
        let child = child.at("cannot list", &real)?;
        let file_type = child.file_type().at("cannot read", &child.path())?;
        if !file_type.is_dir() {
            fs::remove_file(child.path()).at("cannot delete", &child.path())?;
        }
    }
    match fs::remove_dir(&real) {
        Ok(()) => Ok(()),
        // Sub-directories remain: the directory stays, which is what a non-recursive delete means.
        Err(error) if error.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(error) => Err(Error::io("cannot delete", &real, error)),
    }
}

impl Backend for FileBackend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let source = local_path(uri)?;
            let uri = uri.clone();
            let destination = destination.to_path_buf();
            let progress = self.progress.clone();
            run_blocking(move |cancel| get_blocking(&uri, &source, &destination, cancel, &progress))
                .await
        })
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move {
            let destination = local_path(uri)?;
            let uri = uri.clone();
            let source = source.to_path_buf();
            let progress = self.progress.clone();
            run_blocking(move |cancel| put_blocking(&source, &uri, &destination, cancel, &progress))
                .await
        })
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(async move {
            let path = local_path(uri)?;
            let uri = uri.clone();
            run_blocking(move |cancel| list_blocking(&uri, &path, recursive, cancel)).await
        })
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = local_path(uri)?;
            let uri = uri.clone();
            run_blocking(move |_| delete_blocking(&uri, &path, recursive)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uri::Scheme;

    #[test]
    fn schemes_other_than_file_are_refused() {
        let uri = Uri::parse("s3://bucket/key").unwrap();
        let error = local_path(&uri).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert_eq!(uri.scheme(), Scheme::S3);
    }
}
