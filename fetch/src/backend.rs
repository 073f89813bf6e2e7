//! The [`Backend`] trait every scheme implements, and the values it returns.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::checksum::Crc64Nvme;
use crate::error::Result;
use crate::local::OrderedSet;
use crate::uri::Uri;
use crate::walk::Skipped;

/// A boxed, sendable future: what [`Backend`] methods return, so that the trait stays
/// object-safe (`Arc<dyn Backend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One file moved by a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChecksum {
    /// Path relative to the transfer's root (the download directory, or the upload URI),
    /// `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC64NVME of the content, computed while it was copied.
    pub crc64nvme: Crc64Nvme,
}

/// What a transfer moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Number of files.
    pub files: u64,
    /// Total bytes.
    pub bytes: u64,
    /// One entry per file, in the order they were transferred.
    pub checksums: Vec<FileChecksum>,
    /// What an upload or copy of a local folder left out (symbolic links, fifos, sockets,
    /// devices): the caller tells its user.
    pub skipped: Vec<Skipped>,
}

impl TransferStats {
    /// Counts one more file.
    pub fn add(&mut self, file: FileChecksum) {
        self.files += 1;
        self.bytes += file.size;
        self.checksums.push(file);
    }

    /// The distinct first components of the transferred paths, in order of first appearance:
    /// the top-level items a download created.
    pub fn top_level_items(&self) -> Vec<String> {
        let mut items = OrderedSet::default();
        for file in &self.checksums {
            let first = file.path.split('/').next().unwrap_or_default();
            if !first.is_empty() {
                items.insert(first);
            }
        }
        items.into_vec()
    }
}

/// One result of [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full URI of the file, or of the sub-directory (ending with `/`).
    pub uri: Uri,
    /// Path relative to the listed URI, `/`-separated; a sub-directory ends with `/`. For a URI
    /// that names a single file, its file name.
    pub path: String,
    /// Size in bytes; 0 for a sub-directory.
    pub size: u64,
}

impl Entry {
    /// Whether this entry is a sub-directory (only in non-recursive listings).
    pub fn is_dir(&self) -> bool {
        self.uri.is_dir()
    }
}

/// Moves files between the local filesystem and one URI scheme.
///
/// Contract shared by every backend (and checked by the same behaviour suite):
/// - a URI ending with `/` is a directory or prefix and is transferred recursively; one without
///   names a single file, and naming a directory without the `/` is an
///   [`InvalidUri`](crate::ErrorKind::InvalidUri) error;
/// - downloads go *into* a local directory and never show a partial file under its final name;
/// - URIs reach a backend without actions (the [`Resolver`](crate::Resolver) applies them).
pub trait Backend: Send + Sync + 'static {
    /// Downloads `uri` into the local directory `destination` (created if missing): a file keeps
    /// its name (the URI's last component); a directory's content is laid out under
    /// `destination` with its relative paths; schemes that yield several files (run+fastq) write
    /// them all there. The returned paths are relative to `destination`.
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>>;

    /// Uploads the local file or directory `source` to `uri`. A file goes to `uri` itself, or
    /// under it with its own name when `uri` ends with `/`; a directory's content goes under
    /// `uri` (a directory, with or without the trailing `/`). The returned paths are relative to
    /// where the content went.
    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>>;

    /// Lists `uri`: for a file, the file itself; for a directory, every file under it when
    /// `recursive`, or its files and sub-directories (ending with `/`) otherwise. Sorted by path.
    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>>;

    /// Deletes `uri`: a file; or, for a directory, everything under it when `recursive`, or only
    /// the files directly in it otherwise. Deleting something that does not exist succeeds.
    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>>;
}
