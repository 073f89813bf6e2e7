//! [`get`] and what it needs: where each object of a prefix lands ([`download_plan`], which
//! refuses keys that would escape the destination before anything is written), one streamed GET
//! through an [`AtomicFile`] or, for large objects, parallel ranged GETs pinned to the etag and
//! written at their offsets into a [`PartialFile`]. Either way the CRC64NVME computed on the way
//! must match the stored one before the file gets its name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    Body, Bucket, Head, Listed, combine_crc64nvme, directory_prefix, names_a_container,
    nothing_under, prefix_without_slash, run_all, slot,
};
use crate::backend::{FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher, crc64nvme};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, AtomicFile, run_blocking};
use crate::memory::join_key;
use crate::progress::TryCount;
use crate::uri::Uri;

/// A stored CRC64NVME (base64 of the big-endian value), if it is a valid one.
pub(crate) fn parse_stored_crc64nvme(value: &str) -> Option<Crc64Nvme> {
    match Crc64Nvme::from_base64(value) {
        Ok(checksum) => Some(checksum),
        Err(_) => {
            warn!(
                value,
                "ignoring a stored crc64nvme that is not base64 of 8 bytes"
            );
            None
        }
    }
}

/// Fails with [`ErrorKind::Checksum`] when the stored checksum (if any) is not `actual`.
pub(crate) fn check_crc64nvme(
    expected: Option<Crc64Nvme>,
    actual: Crc64Nvme,
    target: &str,
) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{target}` came down with crc64nvme {actual} but the object's stored checksum is {expected}: the data was corrupted on the way or the object is damaged; retry, and if it persists upload the object again"
            ),
        )),
        _ => Ok(()),
    }
}

/// Renames a downloaded file into place if its checksum matches the stored one; otherwise
/// removes it and fails with [`ErrorKind::Checksum`].
pub(crate) fn commit_verified(
    file: AtomicFile,
    actual: Crc64Nvme,
    expected: Option<Crc64Nvme>,
    target: &str,
) -> Result<(Crc64Nvme, u64)> {
    check_crc64nvme(expected, actual, target)?;
    let (written, length) = file.commit()?;
    if written != actual {
        return Err(Error::new(
            ErrorKind::Io,
            format!("`{target}` changed on disk while it was written: retry"),
        ));
    }
    Ok((written, length))
}

/// Where each object listed under `prefix` lands under `destination`: (relative path, object,
/// local path). Keys that would land outside `destination` (`..`, empty components) fail the
/// whole download with [`ErrorKind::Unsafe`] before anything is written. "Folder" markers,
/// which consoles create, are skipped: keys ending with `/`, and empty objects named like a
/// prefix of other objects (how `object_store` lists them, without their `/`).
pub(crate) fn download_plan(
    prefix: &str,
    objects: Vec<Listed>,
    destination: &Path,
) -> Result<Vec<(String, Listed, PathBuf)>> {
    let mut directories = HashSet::new();
    for object in &objects {
        let mut end = 0;
        while let Some(slash) = object.key[end..].find('/') {
            end += slash + 1;
            directories.insert(object.key[..end - 1].to_owned());
        }
    }
    let mut downloads = Vec::new();
    for object in objects {
        let Some(relative) = object.key.strip_prefix(prefix) else {
            continue;
        };
        let marker =
            relative.ends_with('/') || (object.size == 0 && directories.contains(&object.key));
        if relative.is_empty() || marker {
            continue;
        }
        let relative = relative.to_owned();
        let target = join_key(destination, &relative)?;
        downloads.push((relative, object, target));
    }
    Ok(downloads)
}

/// A file filled at offsets by parallel ranged GETs, under a temporary name in its destination
/// directory: renamed into place by [`commit`](Self::commit), removed if dropped before. (An
/// [`AtomicFile`] writes in sequence only.)
pub(crate) struct PartialFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl PartialFile {
    pub(crate) fn create(final_path: &Path, size: u64) -> Result<PartialFile> {
        let directory = match final_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&directory).at("cannot create the directory", &directory)?;
        let temp_path = directory.join(local::temp_name("file"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .at("cannot create a file in", &directory)?;
        let partial = PartialFile {
            final_path: final_path.to_path_buf(),
            temp_path,
            file: Arc::new(file),
            committed: false,
        };
        partial
            .file
            .set_len(size)
            .at("cannot allocate", &partial.temp_path)?;
        Ok(partial)
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        local::rename_into_place(&self.temp_path, &self.final_path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed
            && let Err(error) = fs::remove_file(&self.temp_path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp_path.display(), %error, "cannot remove a temporary file");
        }
    }
}

/// Downloads `uri` (of `bucket`, with `key`) into `destination`; see [`Backend::get`].
///
/// [`Backend::get`]: crate::Backend::get
pub(crate) async fn get<B: Bucket>(
    bucket: &B,
    uri: &Uri,
    key: &str,
    destination: &Path,
) -> Result<TransferStats> {
    let shown = uri.redacted().to_string();
    let progress = &bucket.transfers().progress;
    let mut stats = TransferStats::default();
    if !uri.is_dir() {
        if key.is_empty() {
            return Err(names_a_container(uri, &B::NAMING));
        }
        let Some(name) = uri.file_name() else {
            return Err(Error::invalid_uri(format!(
                "`{shown}` does not end with a file name"
            )));
        };
        let location = bucket.locate(key, &shown)?;
        let Some(head) = bucket.head(&location, &shown).await? else {
            let prefix = format!("{key}/");
            if bucket
                .has_prefix(&prefix, ("cannot download", &shown))
                .await?
            {
                return Err(prefix_without_slash(uri));
            }
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("`{shown}` does not exist: check the uri"),
            ));
        };
        let target = destination.join(name);
        progress.expect_file(head.size);
        let (crc64nvme, size) = if bucket.transfers().limits.is_large(head.size) {
            download_ranges(bucket, &location, &head, &target, &shown).await?
        } else {
            download_whole(bucket, &location, &target, &shown).await?
        };
        progress.file_done();
        stats.add(FileChecksum {
            path: name.to_owned(),
            size,
            crc64nvme,
        });
        return Ok(stats);
    }

    let prefix = directory_prefix(key);
    let listing = bucket
        .list_prefix(&prefix, false, ("cannot download", &shown))
        .await?;
    let downloads = download_plan(&prefix, listing.objects, destination)?;
    if downloads.is_empty() {
        return Err(nothing_under(uri));
    }
    for (_, object, _) in &downloads {
        progress.expect_file(object.size);
    }
    let tasks: Vec<_> = downloads
        .iter()
        .map(|(_, object, target)| download(bucket, &object.key, object.size, target))
        .collect();
    let results = run_all(tasks, bucket.transfers().limits.concurrency).await?;
    for ((relative, _, _), (crc64nvme, size)) in downloads.into_iter().zip(results) {
        stats.add(FileChecksum {
            path: relative,
            size,
            crc64nvme,
        });
    }
    Ok(stats)
}

/// Downloads `key` to the local file `target`, by ranges when `size_hint` (from a listing) says
/// it is large.
async fn download<B: Bucket>(
    bucket: &B,
    key: &str,
    size_hint: u64,
    target: &Path,
) -> Result<(Crc64Nvme, u64)> {
    let shown = bucket.object_uri(key);
    let location = bucket.locate(key, &shown)?;
    let limits = &bucket.transfers().limits;
    let result = if limits.is_large(size_hint) {
        let Some(head) = bucket.head(&location, &shown).await? else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("`{shown}` vanished while it was downloaded: retry"),
            ));
        };
        if limits.is_large(head.size) {
            download_ranges(bucket, &location, &head, target, &shown).await
        } else {
            download_whole(bucket, &location, target, &shown).await
        }
    } else {
        download_whole(bucket, &location, target, &shown).await
    };
    if let Ok((checksum, length)) = &result {
        bucket.transfers().progress.file_done();
        debug!(uri = %shown, target = %target.display(), bytes = length, crc64nvme = %checksum, "downloaded");
    }
    result
}

/// One GET, streamed through an [`AtomicFile`]; what it counted is taken back if it fails.
async fn download_whole<B: Bucket>(
    bucket: &B,
    location: &B::Location,
    target: &Path,
    shown: &str,
) -> Result<(Crc64Nvme, u64)> {
    let _slot = slot(bucket).await?;
    let Body {
        crc64nvme: expected,
        length: expected_length,
        mut chunks,
    } = bucket.get_whole(location, shown).await?;

    let (sender, mut receiver) = mpsc::channel::<Bytes>(16);
    let path = target.to_path_buf();
    let writer = run_blocking(move |cancel| {
        let mut file = AtomicFile::create(&path)?;
        let mut hasher = Crc64NvmeHasher::new();
        while let Some(chunk) = receiver.blocking_recv() {
            cancel.check()?;
            file.write_all(&chunk).at("cannot write", &path)?;
            hasher.update(&chunk);
        }
        Ok((file, hasher))
    });
    let mut counted = TryCount::new(&bucket.transfers().progress);
    let counter = &mut counted;
    let reader = async move {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            counter.add(chunk.len() as u64);
            if sender.send(chunk).await.is_err() {
                // The writer stopped; its error says why.
                break;
            }
        }
        Ok::<(), Error>(())
    };
    let (written, read) = tokio::join!(writer, reader);
    let (file, hasher) = written?;
    read?;
    if let Some(expected_length) = expected_length
        && hasher.length() != expected_length
    {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "cannot download `{shown}`: {} of {expected_length} bytes arrived; retry",
                hasher.length()
            ),
        ));
    }
    let actual = hasher.finish();
    let shown = shown.to_owned();
    let committed = run_blocking(move |_| commit_verified(file, actual, expected, &shown)).await?;
    counted.keep();
    Ok(committed)
}

/// Parallel ranged GETs written at their offsets; the parts' CRCs combine into the whole
/// file's, checked against the stored one before the file is renamed into place.
async fn download_ranges<B: Bucket>(
    bucket: &B,
    location: &B::Location,
    head: &Head,
    target: &Path,
    shown: &str,
) -> Result<(Crc64Nvme, u64)> {
    let size = head.size;
    let path = target.to_path_buf();
    let partial = run_blocking(move |_| PartialFile::create(&path, size)).await?;
    let limits = &bucket.transfers().limits;
    let part_size = limits.part_size_for(size);
    let count = size.div_ceil(part_size);
    let ranges: Vec<_> = (0..count)
        .map(|index| {
            let offset = index * part_size;
            let length = part_size.min(size - offset);
            download_range(
                bucket,
                location,
                head.etag.as_deref(),
                (offset, length),
                &partial,
                shown,
            )
        })
        .collect();
    let pieces = run_all(ranges, limits.concurrency).await?;
    let (actual, length) = combine_crc64nvme(pieces);
    if length != size {
        return Err(Error::new(
            ErrorKind::Io,
            format!("cannot download `{shown}`: {length} of {size} bytes arrived; retry"),
        ));
    }
    check_crc64nvme(head.crc64nvme, actual, shown)?;
    run_blocking(move |_| partial.commit()).await?;
    Ok((actual, size))
}

async fn download_range<B: Bucket>(
    bucket: &B,
    location: &B::Location,
    etag: Option<&str>,
    (offset, length): (u64, u64),
    partial: &PartialFile,
    shown: &str,
) -> Result<(Crc64Nvme, u64)> {
    let _slot = slot(bucket).await?;
    let content = bucket
        .get_range(location, etag, (offset, length), shown)
        .await?;
    if content.len() as u64 != length {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "cannot download `{shown}`: bytes {offset}+{length} came back as {} bytes; retry",
                content.len()
            ),
        ));
    }
    let (file, path) = (Arc::clone(&partial.file), partial.temp_path.clone());
    let piece = run_blocking(move |_| {
        file.write_all_at(&content, offset)
            .at("cannot write", &path)?;
        Ok((crc64nvme(&content), length))
    })
    .await?;
    bucket.transfers().progress.transferred(length);
    Ok(piece)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_fails_with_checksum_and_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let mut file = AtomicFile::create(temp.path().join("object.bin")).unwrap();
        file.write_all(b"123456789").unwrap();
        let actual = crc64nvme(b"123456789");
        let stored = crc64nvme(b"something else");
        let error = commit_verified(file, actual, Some(stored), "s3://b/object.bin").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Checksum);
        assert!(error.to_string().contains(&stored.to_base64()), "{error}");
        assert!(error.kind().is_retryable());
        let left: Vec<_> = fs::read_dir(temp.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing may be left: {left:?}");
    }

    #[test]
    fn a_match_or_no_stored_checksum_commits() {
        let temp = tempfile::tempdir().unwrap();
        for (name, stored) in [("a", Some(crc64nvme(b"abc"))), ("b", None)] {
            let mut file = AtomicFile::create(temp.path().join(name)).unwrap();
            file.write_all(b"abc").unwrap();
            let (checksum, size) =
                commit_verified(file, crc64nvme(b"abc"), stored, "s3://b/x").unwrap();
            assert_eq!((checksum, size), (crc64nvme(b"abc"), 3));
            assert_eq!(fs::read(temp.path().join(name)).unwrap(), b"abc");
        }
    }

    #[test]
    fn an_unfinished_ranged_download_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let target = temp.path().join("big.bin");
        let partial = PartialFile::create(&target, 1 << 20).unwrap();
        partial.file.write_all_at(b"start", 0).unwrap();
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 1);
        drop(partial);
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 0);
        let partial = PartialFile::create(&target, 3).unwrap();
        partial.file.write_all_at(b"xyz", 0).unwrap();
        partial.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"xyz");
    }

    fn listed(key: &str, size: u64) -> Listed {
        Listed {
            key: key.to_owned(),
            size,
        }
    }

    #[test]
    fn keys_that_would_escape_the_destination_are_refused() {
        let destination = Path::new("/scratch/target");
        let plan = download_plan(
            "p/",
            vec![
                listed("p/", 1),
                listed("p/a", 1),
                listed("p/sub/", 1),
                listed("p/sub/b", 1),
            ],
            destination,
        )
        .unwrap();
        let planned: Vec<(&str, &Path)> = plan
            .iter()
            .map(|(relative, _, path)| (relative.as_str(), path.as_path()))
            .collect();
        assert_eq!(
            planned,
            vec![
                ("a", Path::new("/scratch/target/a")),
                ("sub/b", Path::new("/scratch/target/sub/b"))
            ]
        );
        for hostile in ["p/../escape", "p/a/../../escape", "p//absolute", "p/./a/"] {
            let result = download_plan(
                "p/",
                vec![listed("p/a", 1), listed(hostile, 1)],
                destination,
            );
            if hostile.ends_with('/') {
                assert!(result.is_ok(), "{hostile}");
                continue;
            }
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Unsafe, "{hostile}");
        }
    }

    #[test]
    fn folder_markers_are_skipped_and_escapes_refused() {
        let destination = Path::new("/scratch/target");
        let plan = download_plan(
            "p/",
            vec![listed("p/a", 1), listed("p/sub", 0), listed("p/sub/b", 2)],
            destination,
        )
        .unwrap();
        let planned: Vec<&str> = plan
            .iter()
            .map(|(relative, _, _)| relative.as_str())
            .collect();
        assert_eq!(planned, vec!["a", "sub/b"]);
        let error = download_plan("p/", vec![listed("p/../x", 1)], destination).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsafe);
    }
}
