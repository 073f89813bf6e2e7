//! Local filesystem helpers shared by every backend: the atomic file writer, checksummed file
//! copies, directory walks, moves that merge directories, and running blocking work off the
//! async runtime with cancellation.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{debug, warn};

use crate::backend::{FileChecksum, TransferStats};
use crate::checksum::{BUFFER_SIZE, Crc64Nvme, HashingWriter};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::progress::{CountingWriter, Progress};
pub(crate) use crate::walk::{open_listed, open_regular, walk_files};

/// Prefix of the temporary names used in destination directories; a leftover one (after a
/// crash) can be deleted safely.
pub const TEMP_PREFIX: &str = ".herd-partial-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique hidden name for a temporary file or directory in the current process.
pub(crate) fn temp_name(kind: &str) -> String {
    let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{kind}-{}-{count}", std::process::id())
}

/// A file written under a temporary name in its destination directory and renamed to its
/// final name by [`commit`](Self::commit): the final name never shows a partial file. Dropped
/// without a commit (an error, a cancelled transfer), the temporary file is removed.
///
/// Bytes written are checksummed (CRC64NVME) on the way.
#[derive(Debug)]
pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    writer: Option<HashingWriter<File>>,
}

impl AtomicFile {
    /// Starts writing the file that will be `final_path`, creating its parent directories.
    pub fn create(final_path: impl AsRef<Path>) -> Result<AtomicFile> {
        let final_path = final_path.as_ref().to_path_buf();
        let directory = match final_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if final_path.file_name().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidUri,
                format!(
                    "`{}` does not name a file: give a file name",
                    final_path.display()
                ),
            ));
        }
        fs::create_dir_all(&directory).at("cannot create the directory", &directory)?;
        let temp_path = directory.join(temp_name("file"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .at("cannot create a file in", &directory)?;
        Ok(AtomicFile {
            final_path,
            temp_path,
            writer: Some(HashingWriter::new(file)),
        })
    }

    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Sets the permission bits (`mode & 0o777`) the file will have.
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        fs::set_permissions(&self.temp_path, fs::Permissions::from_mode(mode & 0o777))
            .at("cannot set the permissions of", &self.temp_path)
    }

    /// Flushes, closes and renames the file to its final name (replacing a file there), and
    /// returns the checksum and size of what was written.
    pub fn commit(mut self) -> Result<(Crc64Nvme, u64)> {
        let Some(mut writer) = self.writer.take() else {
            return Err(Error::new(ErrorKind::Io, "the file was already committed"));
        };
        writer.flush().at("cannot write", &self.temp_path)?;
        let (checksum, length) = writer.finish();
        drop(writer);
        rename_into_place(&self.temp_path, &self.final_path)?;
        // Renamed: nothing left for Drop to clean.
        self.temp_path = PathBuf::new();
        Ok((checksum, length))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.writer {
            Some(writer) => writer.write(bytes),
            None => Err(io::Error::other("the file was already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.writer = None;
        if !self.temp_path.as_os_str().is_empty()
            && let Err(error) = fs::remove_file(&self.temp_path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp_path.display(), %error, "cannot remove a temporary file");
        }
    }
}

/// Renames the finished file `temp_path` to `final_path`, refusing to replace a directory.
pub(crate) fn rename_into_place(temp_path: &Path, final_path: &Path) -> Result<()> {
    if fs::symlink_metadata(final_path).is_ok_and(|existing| existing.is_dir()) {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "cannot write `{}`: a directory is in the way; remove it or choose another destination",
                final_path.display()
            ),
        ));
    }
    fs::rename(temp_path, final_path).at("cannot move the finished file into place at", final_path)
}

/// Set when the future that started a blocking transfer is dropped (a timeout, a cancelled
/// task): the copy loop stops at its next buffer and cleans up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Io, "the transfer was cancelled"));
        }
        Ok(())
    }
}

struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

/// Runs blocking filesystem work on tokio's blocking pool; dropping the returned future asks
/// the work to stop (through the [`Cancel`] it receives).
pub(crate) async fn run_blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    let cancel = Cancel::default();
    let _guard = CancelOnDrop(cancel.clone());
    tokio::task::spawn_blocking(move || work(&cancel))
        .await
        .map_err(|error| {
            Error::with_source(ErrorKind::Io, "a file transfer task panicked", error)
        })?
}

/// Copies `reader` into `writer` in large buffers, checking `cancel` between buffers.
pub(crate) fn copy_stream(
    reader: &mut impl Read,
    writer: &mut impl Write,
    cancel: &Cancel,
) -> io::Result<u64> {
    let mut buffer = vec![0; BUFFER_SIZE];
    let mut total = 0;
    loop {
        if cancel.0.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the transfer was cancelled",
            ));
        }
        let count = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..count])?;
        total += count as u64;
    }
}

/// Copies the regular file `source` to `destination` through an [`AtomicFile`], keeping the
/// permission bits; fails, leaving nothing at `destination`, if the source changes size while
/// it is read. `source` is opened without following a symbolic link, and must be the file of
/// `identity` (device, inode) when given.
///
/// Bytes and the finished file are counted in `progress` (the caller announces the file).
pub(crate) fn copy_file(
    source: &Path,
    identity: Option<(u64, u64)>,
    destination: &Path,
    cancel: &Cancel,
    progress: &Progress,
) -> Result<(Crc64Nvme, u64)> {
    cancel.check()?;
    let mut input = open_regular(source, identity)?;
    let metadata = input.metadata().at("cannot read the metadata of", source)?;
    let mut output = AtomicFile::create(destination)?;
    let mut counted = CountingWriter {
        inner: &mut output,
        progress,
    };
    let copied = copy_stream(&mut input, &mut counted, cancel).map_err(|error| {
        if error.kind() == io::ErrorKind::Interrupted {
            Error::with_source(ErrorKind::Io, "the transfer was cancelled", error)
        } else {
            Error::with_source(
                ErrorKind::Io,
                format!(
                    "cannot copy `{}` to `{}`",
                    source.display(),
                    destination.display()
                ),
                error,
            )
        }
    })?;
    if copied != metadata.len() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "`{}` changed size while it was copied ({} bytes when opened, {copied} read): something is still writing it; retry once it is complete",
                source.display(),
                metadata.len()
            ),
        ));
    }
    output.set_mode(metadata.mode())?;
    let (checksum, length) = output.commit()?;
    progress.file_done();
    debug!(source = %source.display(), destination = %destination.display(), bytes = length, "copied");
    Ok((checksum, length))
}

/// The whole content of the open file `file` (read from `path`).
pub(crate) fn read_all(mut file: File, path: &Path) -> Result<Vec<u8>> {
    let mut content = Vec::new();
    file.read_to_end(&mut content).at("cannot read", path)?;
    Ok(content)
}

/// Names without repeats, in order of first insertion; linear time, for downloads of many files.
#[derive(Debug, Default)]
pub(crate) struct OrderedSet {
    items: Vec<String>,
    seen: HashSet<String>,
}

impl OrderedSet {
    pub(crate) fn insert(&mut self, item: &str) {
        if !self.seen.contains(item) {
            self.seen.insert(item.to_owned());
            self.items.push(item.to_owned());
        }
    }

    pub(crate) fn into_vec(self) -> Vec<String> {
        self.items
    }
}

/// A relative path written with `/` whatever the platform (lossy for non-UTF-8 names).
pub(crate) fn slash_path(relative: &Path) -> String {
    let parts: Vec<String> = relative
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Copies the tree under `source` into `destination` (created if missing), file by file through
/// [`AtomicFile`]s; every file is announced to `progress` before the first is copied.
pub(crate) fn copy_tree(
    source: &Path,
    destination: &Path,
    cancel: &Cancel,
    progress: &Progress,
) -> Result<TransferStats> {
    let walk = walk_files(source, false, cancel)?;
    fs::create_dir_all(destination).at("cannot create the directory", destination)?;
    for file in &walk.files {
        progress.expect_file(file.size);
    }
    let mut stats = TransferStats {
        skipped: walk.skipped,
        ..TransferStats::default()
    };
    for file in walk.files {
        let (crc64nvme, size) = copy_file(
            &file.path,
            Some(file.identity),
            &destination.join(&file.relative),
            cancel,
            progress,
        )?;
        stats.add(FileChecksum {
            path: slash_path(&file.relative),
            size,
            crc64nvme,
        });
    }
    Ok(stats)
}

/// Moves `source` to `destination` by renaming (same filesystem). A directory onto an existing
/// directory merges into it; a file replaces a file or symbolic link. Symbolic links at the
/// destination are never followed.
pub(crate) fn move_merge(source: &Path, destination: &Path) -> Result<()> {
    let source_metadata = fs::symlink_metadata(source).at("cannot read", source)?;
    match fs::symlink_metadata(destination) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            match fs::rename(source, destination) {
                // Another fetch created the same directory meanwhile: merge into it.
                Err(error)
                    if source_metadata.is_dir()
                        && error.kind() == io::ErrorKind::DirectoryNotEmpty =>
                {
                    move_merge(source, destination)
                }
                result => result.at("cannot move into place", destination),
            }
        }
        Err(error) => Err(Error::io("cannot read", destination, error)),
        Ok(existing) if existing.is_dir() => {
            if !source_metadata.is_dir() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "cannot put the file `{}` where the directory `{}` is: remove the directory or use |mv:DIR",
                        source.display(),
                        destination.display()
                    ),
                ));
            }
            for entry in fs::read_dir(source).at("cannot list", source)? {
                let entry = entry.at("cannot list", source)?;
                move_merge(&entry.path(), &destination.join(entry.file_name()))?;
            }
            fs::remove_dir(source).at("cannot remove the emptied directory", source)
        }
        Ok(_) => {
            if source_metadata.is_dir() {
                fs::remove_file(destination).at("cannot replace", destination)?;
            }
            fs::rename(source, destination).at("cannot move into place", destination)
        }
    }
}

/// A hidden directory created inside a target directory, removed with its content when dropped
/// unless [`keep`](Self::keep) was called.
#[derive(Debug)]
pub(crate) struct StagingDir {
    path: PathBuf,
    remove: bool,
}

impl StagingDir {
    pub(crate) fn create(parent: &Path) -> Result<StagingDir> {
        fs::create_dir_all(parent).at("cannot create the directory", parent)?;
        let path = parent.join(temp_name("staging"));
        fs::create_dir(&path).at("cannot create a staging directory in", parent)?;
        Ok(StagingDir { path, remove: true })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the (by then empty) directory and disarms the drop.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.remove = false;
        fs::remove_dir(&self.path).at("cannot remove the staging directory", &self.path)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.remove
            && let Err(error) = fs::remove_dir_all(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), %error, "cannot remove a staging directory");
        }
    }
}
