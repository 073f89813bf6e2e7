//! [`put`] and the pieces of uploads: one request for a small file; for a large one the
//! client's [`Bucket::put_multipart`], which reads parts at their offsets with [`read_part`],
//! combines their CRCs into the file's ([`combine_crc64nvme`]), notices a file that changes
//! while it is read ([`file_identity`], [`changed_while_read`]) and is aborted if it neither
//! completes nor is aborted by hand ([`AbortOnDrop`]).

use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crc_fast::CrcAlgorithm;
use tracing::{debug, warn};

use super::{Bucket, FileIdentity, directory_prefix, run_all, slot};
use crate::backend::{FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, crc64nvme};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, run_blocking, slash_path};
use crate::uri::Uri;

/// The CRC64NVME of the concatenation of pieces, from their CRCs and lengths, in order.
pub(crate) fn combine_crc64nvme(
    pieces: impl IntoIterator<Item = (Crc64Nvme, u64)>,
) -> (Crc64Nvme, u64) {
    let mut total = Crc64Nvme::EMPTY;
    let mut length = 0;
    for (checksum, piece_length) in pieces {
        total = Crc64Nvme::from_u64(crc_fast::checksum_combine(
            CrcAlgorithm::Crc64Nvme,
            total.as_u64(),
            checksum.as_u64(),
            piece_length,
        ));
        length += piece_length;
    }
    (total, length)
}

/// The size, modification time, device and inode of a file (never through a symbolic link),
/// to notice it changing while it is uploaded.
pub(crate) fn file_identity(path: &Path) -> Result<FileIdentity> {
    let metadata = fs::symlink_metadata(path).at("cannot read", path)?;
    Ok(identity_of(&metadata))
}

fn identity_of(metadata: &fs::Metadata) -> FileIdentity {
    (
        metadata.len(),
        metadata.modified().ok(),
        (metadata.dev(), metadata.ino()),
    )
}

pub(crate) fn changed_while_read(path: &Path) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "`{}` changed while it was uploaded: something is still writing it; retry once it is complete",
            path.display()
        ),
    )
}

/// Reads the part `offset..offset + length` of the open file `source` (off the async threads)
/// and its CRC64NVME; a file that became shorter is [`changed_while_read`].
pub(crate) async fn read_part(
    file: Arc<File>,
    source: &Path,
    (offset, length): (u64, u64),
) -> Result<(Vec<u8>, Crc64Nvme)> {
    let path = source.to_path_buf();
    run_blocking(move |cancel| {
        cancel.check()?;
        let mut content = vec![0; length as usize];
        match file.read_exact_at(&mut content, offset) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(changed_while_read(&path));
            }
            Err(error) => return Err(Error::io("cannot read", &path, error)),
        }
        let checksum = crc64nvme(&content);
        Ok((content, checksum))
    })
    .await
}

/// A multipart upload that was started and that the client can abort.
pub(crate) trait PendingUpload: Send + 'static {
    /// The object's URI, for logs.
    fn target(&self) -> &str;
    /// Aborts the upload; a failure is logged, not returned (a lifecycle rule will have to
    /// clean up).
    fn abort(&mut self) -> impl Future<Output = ()> + Send;
}

/// Aborts a multipart upload that neither completed nor was aborted by hand: when the upload's
/// future is dropped (a timeout, a cancelled task), from a task spawned on the runtime.
pub(crate) struct AbortOnDrop<U: PendingUpload>(Option<U>);

impl<U: PendingUpload> AbortOnDrop<U> {
    pub(crate) fn new(upload: U) -> Self {
        AbortOnDrop(Some(upload))
    }

    /// The upload, until it is completed or aborted.
    pub(crate) fn upload(&mut self) -> &mut U {
        self.0
            .as_mut()
            .expect("the upload is present until completed or aborted")
    }

    /// The upload completed: nothing to abort.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }

    pub(crate) async fn abort(&mut self) {
        if let Some(mut upload) = self.0.take() {
            upload.abort().await;
        }
    }
}

impl<U: PendingUpload> Drop for AbortOnDrop<U> {
    fn drop(&mut self) {
        let Some(mut upload) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { upload.abort().await });
            }
            Err(_) => warn!(
                uri = %upload.target(),
                "cannot abort an interrupted multipart upload outside a runtime; a lifecycle rule will have to"
            ),
        }
    }
}

/// Uploads the local file or directory `source` to `uri` (of `bucket`, with `key`); see
/// [`Backend::put`].
///
/// [`Backend::put`]: crate::Backend::put
pub(crate) async fn put<B: Bucket>(
    bucket: &B,
    source: &Path,
    uri: &Uri,
    key: &str,
) -> Result<TransferStats> {
    let progress = &bucket.transfers().progress;
    let source_path = source.to_path_buf();
    let metadata =
        run_blocking(move |_| fs::metadata(&source_path).at("cannot read", &source_path)).await?;
    let mut stats = TransferStats::default();
    if !metadata.is_dir() {
        let key = if uri.is_dir() || key.is_empty() {
            let Some(name) = source.file_name().and_then(|name| name.to_str()) else {
                return Err(Error::invalid_uri(format!(
                    "`{}` has no file name that can be {}: rename it or give the full {}",
                    source.display(),
                    B::NAMING.object_name,
                    B::NAMING.key
                )));
            };
            format!("{}{name}", directory_prefix(key))
        } else {
            key.to_owned()
        };
        progress.expect_file(metadata.len());
        let (crc64nvme, size) = upload_file(bucket, source, None, &key).await?;
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        stats.add(FileChecksum {
            path: name,
            size,
            crc64nvme,
        });
        return Ok(stats);
    }

    let prefix = directory_prefix(key);
    let root = source.to_path_buf();
    let walk = run_blocking(move |cancel| local::walk_files(&root, false, cancel)).await?;
    stats.skipped = walk.skipped;
    for file in &walk.files {
        progress.expect_file(file.size);
    }
    let uploads: Vec<(String, String, PathBuf, (u64, u64))> = walk
        .files
        .into_iter()
        .map(|file| {
            let relative = slash_path(&file.relative);
            (
                format!("{prefix}{relative}"),
                relative,
                file.path,
                file.identity,
            )
        })
        .collect();
    let tasks: Vec<_> = uploads
        .iter()
        .map(|(key, _, path, identity)| upload_file(bucket, path, Some(*identity), key))
        .collect();
    let results = run_all(tasks, bucket.transfers().limits.concurrency).await?;
    for ((_, relative, _, _), (crc64nvme, size)) in uploads.into_iter().zip(results) {
        stats.add(FileChecksum {
            path: relative,
            size,
            crc64nvme,
        });
    }
    Ok(stats)
}

/// Uploads the local file `source` (the file of `listed`, device and inode, when given) to
/// `key`; returns its checksum and size. Never follows a symbolic link.
async fn upload_file<B: Bucket>(
    bucket: &B,
    source: &Path,
    listed: Option<(u64, u64)>,
    key: &str,
) -> Result<(Crc64Nvme, u64)> {
    let target = bucket.object_uri(key);
    let location = bucket.locate(key, &target)?;
    let path = source.to_path_buf();
    let identity = run_blocking(move |_| {
        let metadata = local::open_regular(&path, listed)?
            .metadata()
            .at("cannot read", &path)?;
        Ok(identity_of(&metadata))
    })
    .await?;
    let (size, _, inode) = identity;
    let result = if bucket.transfers().limits.is_large(size) {
        bucket
            .put_multipart(&location, source, identity, &target)
            .await
    } else {
        upload_whole(bucket, source, (size, inode), &location, &target).await
    };
    if let Ok((checksum, length)) = &result {
        bucket.transfers().progress.file_done();
        debug!(source = %source.display(), uri = %target, bytes = length, crc64nvme = %checksum, "uploaded");
    }
    result
}

/// One request carrying the content of `source` (`size` bytes, that device and inode) and its
/// CRC64NVME.
async fn upload_whole<B: Bucket>(
    bucket: &B,
    source: &Path,
    (size, inode): (u64, (u64, u64)),
    location: &B::Location,
    target: &str,
) -> Result<(Crc64Nvme, u64)> {
    let _slot = slot(bucket).await?;
    let path = source.to_path_buf();
    let (content, checksum) = run_blocking(move |_| {
        let content = local::read_all(local::open_regular(&path, Some(inode))?, &path)?;
        if content.len() as u64 != size {
            return Err(changed_while_read(&path));
        }
        let checksum = crc64nvme(&content);
        Ok((content, checksum))
    })
    .await?;
    bucket
        .put_whole(location, content, checksum, target)
        .await?;
    bucket.transfers().progress.transferred(size);
    Ok((checksum, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_of_pieces_combine_into_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|index| (index * 7 + 3) as u8).collect();
        let pieces = [0..1, 1..40_000, 40_000..40_000, 40_000..100_000];
        let combined = combine_crc64nvme(
            pieces
                .iter()
                .map(|range| (crc64nvme(&data[range.clone()]), range.len() as u64)),
        );
        assert_eq!(combined, (crc64nvme(&data), data.len() as u64));
        assert_eq!(combine_crc64nvme([]), (Crc64Nvme::EMPTY, 0));
    }
}
