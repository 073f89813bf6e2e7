//! One bucket (or container) of an object store, as the object-store backends drive it. The
//! [`Bucket`] trait holds the few requests whose client differs (aws-sdk-s3 for `s3://`, in
//! [`s3`](crate::s3); `object_store` for `azure://` and `gs://`, in [`object`](crate::object));
//! everything else of a transfer is written here once, on top of it:
//!
//! - the four [`Backend`](crate::Backend) operations, [`get`], [`put`], [`list`] and [`delete`]:
//!   single objects and prefixes, the same checks and the same messages on every scheme (worded
//!   with the scheme's [`Naming`]);
//! - downloads: one GET streamed through an [`AtomicFile`], or from the multipart threshold on
//!   parallel ranged GETs (pinned to the object's etag) written at their offsets into a
//!   [`PartialFile`]; the CRC64NVME computed on the way is compared with the stored one, and a
//!   mismatch is an [`ErrorKind::Checksum`] error that leaves no file. Keys that would land
//!   outside the destination are refused before anything is written ([`download_plan`]);
//! - uploads in one request; multipart uploads are the client's ([`Bucket::put_multipart`]),
//!   with the helpers they share: [`read_part`], [`combine_crc64nvme`], [`file_identity`],
//!   [`changed_while_read`] and [`AbortOnDrop`];
//! - progress: every file announced as soon as its size is known (all the files of a tree up
//!   front), bytes counted per chunk, range or part, each file counted when committed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use futures::StreamExt as _;
use futures::stream::{BoxStream, FuturesUnordered};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

use crate::backend::{Entry, FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher, crc64nvme};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, AtomicFile, run_blocking, slash_path};
use crate::memory::join_key;
use crate::progress::{Progress, TryCount};
use crate::uri::{Scheme, Uri};

pub(crate) const MIB: u64 = 1024 * 1024;
/// The most parts herd puts in one multipart upload (S3's and GCS's limit; Azure allows 50,000
/// blocks).
pub(crate) const MAX_PARTS: u64 = 10_000;

/// How one scheme's messages name things.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Naming {
    pub(crate) scheme: Scheme,
    /// The backend in messages: "s3", "azure", "gcs".
    pub(crate) backend: &'static str,
    /// The article before `scheme://`: "an s3:// uri", "a gs:// uri".
    pub(crate) article: &'static str,
    /// The first component of the path: "bucket" or "container".
    pub(crate) container: &'static str,
    /// The rest of the path: "key" or "path".
    pub(crate) key: &'static str,
    /// What a file's name becomes when it is uploaded: "an s3 key", "an object name".
    pub(crate) object_name: &'static str,
}

/// How transfers are split and paced (from each backend's `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Objects and files of at least this many bytes move in parts.
    pub(crate) multipart_threshold: u64,
    /// Bytes per part and per ranged GET.
    pub(crate) part_size: u64,
    /// Requests in flight at once, shared by every transfer of the backend.
    pub(crate) concurrency: usize,
    /// Keys per listing page (and per deletion request where the store takes several).
    pub(crate) batch_size: usize,
}

impl Limits {
    /// The part size for a file of `size` bytes: the configured one, raised to stay within
    /// [`MAX_PARTS`] parts.
    pub(crate) fn part_size_for(&self, size: u64) -> u64 {
        let smallest = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.part_size.max(smallest)
    }

    /// Whether a file or object of `size` bytes moves in parts.
    pub(crate) fn is_large(&self, size: u64) -> bool {
        size > 0 && size >= self.multipart_threshold
    }
}

/// What all the transfers of one backend share: how they are split, the bound on the requests
/// in flight (and so on the memory held by part buffers), and the progress counters.
pub(crate) struct Transfers {
    pub(crate) limits: Limits,
    requests: Arc<Semaphore>,
    pub(crate) progress: Progress,
}

impl Transfers {
    /// Transfers within `limits`, counting nothing.
    pub(crate) fn new(limits: Limits) -> Self {
        Transfers {
            limits,
            requests: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            progress: Progress::disabled(),
        }
    }
}

/// What a HEAD says about an object.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
    /// The stored full-object CRC64NVME, when the object has one.
    pub(crate) crc64nvme: Option<Crc64Nvme>,
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) key: String,
    pub(crate) size: u64,
}

/// A listing: objects, and the sub-prefixes (ending with `/`) when listed with the delimiter.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) objects: Vec<Listed>,
    pub(crate) prefixes: Vec<String>,
}

/// The answer to a whole-object GET.
pub(crate) struct Body {
    /// The stored full-object CRC64NVME, when the object has one.
    pub(crate) crc64nvme: Option<Crc64Nvme>,
    /// The length the answer announced, when it did.
    pub(crate) length: Option<u64>,
    /// The content, its errors already mapped (they say "cannot download").
    pub(crate) chunks: BoxStream<'static, Result<Bytes>>,
}

/// The size and modification time of a local file, to notice it changing while it is uploaded.
pub(crate) type FileIdentity = (u64, Option<SystemTime>);

/// The requests on one bucket that each client makes its own way; [`get`], [`put`], [`list`]
/// and [`delete`] do the rest. Errors name `target`, the URI the caller was given (or the
/// object's own URI inside a tree), after the `doing` of a `context`.
pub(crate) trait Bucket: Sync {
    /// Where an object is, in the client's terms.
    type Location: Send + Sync;
    /// How messages name the scheme's parts.
    const NAMING: Naming;

    /// The bucket's (or container's) name.
    fn name(&self) -> &str;
    /// The backend's limits, request slots and progress.
    fn transfers(&self) -> &Transfers;

    /// The location of `key`, or an [`ErrorKind::InvalidUri`] when the store cannot name it.
    fn locate(&self, key: &str, target: &str) -> Result<Self::Location>;
    /// A HEAD with the stored checksum; `None` when there is no such object.
    fn head(
        &self,
        location: &Self::Location,
        target: &str,
    ) -> impl Future<Output = Result<Option<Head>>> + Send;
    /// Every object under `prefix`, page after page; with `delimited`, only those directly
    /// under it, plus its sub-prefixes.
    fn list_prefix(
        &self,
        prefix: &str,
        delimited: bool,
        context: (&str, &str),
    ) -> impl Future<Output = Result<Listing>> + Send;
    /// Whether anything is stored under `prefix`.
    fn has_prefix(
        &self,
        prefix: &str,
        context: (&str, &str),
    ) -> impl Future<Output = Result<bool>> + Send;
    /// One GET of the whole object.
    fn get_whole(
        &self,
        location: &Self::Location,
        target: &str,
    ) -> impl Future<Output = Result<Body>> + Send;
    /// The bytes `offset..offset + length` of the object (`range`), of the version `etag` when
    /// given.
    fn get_range(
        &self,
        location: &Self::Location,
        etag: Option<&str>,
        range: (u64, u64),
        target: &str,
    ) -> impl Future<Output = Result<Bytes>> + Send;
    /// One request storing `content` with its CRC64NVME.
    fn put_whole(
        &self,
        location: &Self::Location,
        content: Vec<u8>,
        checksum: Crc64Nvme,
        target: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A multipart upload of the local file `source`, whose size and modification time were
    /// `identity` before it started, with its full-object CRC64NVME; counts each part as
    /// transferred and aborts the upload on any failure. Returns the checksum and the size.
    fn put_multipart(
        &self,
        location: &Self::Location,
        source: &Path,
        identity: FileIdentity,
        target: &str,
    ) -> impl Future<Output = Result<(Crc64Nvme, u64)>> + Send;
    /// Deletes one object.
    fn delete_object(
        &self,
        location: &Self::Location,
        target: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes `keys`; those already gone count as deleted.
    fn delete_keys(&self, keys: Vec<String>) -> impl Future<Output = Result<()>> + Send;

    /// `scheme://bucket/key`, for messages.
    fn object_uri(&self, key: &str) -> String {
        format!("{}://{}/{key}", Self::NAMING.scheme, self.name())
    }
}

/// The bucket and key of a URI of `naming`'s scheme (`scheme://bucket` has an empty key).
pub(crate) fn split_uri<'u>(uri: &'u Uri, naming: &Naming) -> Result<(&'u str, &'u str)> {
    if uri.scheme() != naming.scheme {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the {} backend cannot handle `{}`: it is not {} {}:// uri",
                naming.backend,
                uri.redacted(),
                naming.article,
                naming.scheme
            ),
        ));
    }
    let (container, key) = uri.path().split_once('/').unwrap_or((uri.path(), ""));
    if container.is_empty() {
        return Err(Error::invalid_uri(format!(
            "`{}` has no {word}: write {}://{word}/{}",
            uri.redacted(),
            naming.scheme,
            naming.key,
            word = naming.container,
        )));
    }
    Ok((container, key))
}

/// The key prefix of a directory URI's content: `key/`, or nothing for a whole bucket.
pub(crate) fn directory_prefix(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    }
}

fn names_a_container(uri: &Uri, naming: &Naming) -> Error {
    Error::invalid_uri(format!(
        "`{}` names a {word}, not an object: add a {}, or end it with `/` for the {word}'s content",
        uri.redacted(),
        naming.key,
        word = naming.container
    ))
}

fn prefix_without_slash(uri: &Uri) -> Error {
    Error::invalid_uri(format!(
        "`{}` is a directory: end the uri with `/` to transfer it recursively",
        uri.redacted()
    ))
}

fn nothing_under(uri: &Uri) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("nothing under `{}`: check the uri", uri.redacted()),
    )
}

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

/// Runs `tasks` with at most `limit` at once and returns their results in the tasks' order; the
/// first error drops (cancels) the others. (A loop rather than stream combinators: closures held
/// across awaits make the backends' futures fail the `Send` check.)
pub(crate) async fn run_all<T, F>(tasks: Vec<F>, limit: usize) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>>,
{
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(tasks.len()).collect();
    let mut waiting = tasks.into_iter().enumerate();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            let Some((index, task)) = waiting.next() else {
                break;
            };
            running.push(async move { (index, task.await) });
        }
        let Some((index, result)) = running.next().await else {
            break;
        };
        results[index] = Some(result?);
    }
    Ok(results.into_iter().flatten().collect())
}

/// Waits for a request slot; held for the duration of one request and its buffer.
pub(crate) async fn slot<B: Bucket>(bucket: &B) -> Result<OwnedSemaphorePermit> {
    Arc::clone(&bucket.transfers().requests)
        .acquire_owned()
        .await
        .map_err(|error| {
            Error::with_source(
                ErrorKind::Io,
                format!("the {} backend was shut down", B::NAMING.backend),
                error,
            )
        })
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

/// The size and modification time of a file, to notice it changing while it is uploaded.
pub(crate) fn file_identity(path: &Path) -> Result<FileIdentity> {
    let metadata = fs::metadata(path).at("cannot read", path)?;
    Ok((metadata.len(), metadata.modified().ok()))
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

// The Backend operations.

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
        let (crc64nvme, size) = upload_file(bucket, source, &key).await?;
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
    let files = run_blocking(move |cancel| local::walk_files(&root, cancel)).await?;
    for file in &files {
        progress.expect_file(file.size);
    }
    let uploads: Vec<(String, String, PathBuf)> = files
        .into_iter()
        .map(|file| {
            let relative = slash_path(&file.relative);
            (format!("{prefix}{relative}"), relative, file.path)
        })
        .collect();
    let tasks: Vec<_> = uploads
        .iter()
        .map(|(key, _, path)| upload_file(bucket, path, key))
        .collect();
    let results = run_all(tasks, bucket.transfers().limits.concurrency).await?;
    for ((_, relative, _), (crc64nvme, size)) in uploads.into_iter().zip(results) {
        stats.add(FileChecksum {
            path: relative,
            size,
            crc64nvme,
        });
    }
    Ok(stats)
}

/// Lists `uri` (of `bucket`, with `key`); see [`Backend::list`].
///
/// [`Backend::list`]: crate::Backend::list
pub(crate) async fn list<B: Bucket>(
    bucket: &B,
    uri: &Uri,
    key: &str,
    recursive: bool,
) -> Result<Vec<Entry>> {
    let shown = uri.redacted().to_string();
    let base = uri.without_actions();
    if !uri.is_dir() && !key.is_empty() {
        let location = bucket.locate(key, &shown)?;
        if let Some(head) = bucket.head(&location, &shown).await? {
            let name = uri.file_name().unwrap_or_default().to_owned();
            return Ok(vec![Entry {
                uri: base,
                path: name,
                size: head.size,
            }]);
        }
    }
    let prefix = directory_prefix(key);
    let listing = bucket
        .list_prefix(&prefix, !recursive, ("cannot list", &shown))
        .await?;
    let mut entries = Vec::new();
    for object in listing.objects {
        let Some(relative) = object.key.strip_prefix(&prefix) else {
            continue;
        };
        if relative.is_empty() || relative.ends_with('/') {
            continue;
        }
        entries.push(Entry {
            uri: base.join(relative)?,
            path: relative.to_owned(),
            size: object.size,
        });
    }
    for sub in listing.prefixes {
        let Some(relative) = sub.strip_prefix(&prefix) else {
            continue;
        };
        if relative.is_empty() || relative == "/" {
            continue;
        }
        entries.push(Entry {
            uri: base.join(relative)?,
            path: relative.to_owned(),
            size: 0,
        });
    }
    if entries.is_empty() {
        return Err(nothing_under(uri));
    }
    entries.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(entries)
}

/// Deletes `uri` (of `bucket`, with `key`); see [`Backend::delete`].
///
/// [`Backend::delete`]: crate::Backend::delete
pub(crate) async fn delete<B: Bucket>(
    bucket: &B,
    uri: &Uri,
    key: &str,
    recursive: bool,
) -> Result<()> {
    let shown = uri.redacted().to_string();
    // Deleting what does not exist (even the bucket) succeeds.
    let absent = |error: Error| {
        if error.kind() == ErrorKind::NotFound {
            Ok(())
        } else {
            Err(error)
        }
    };
    if !uri.is_dir() {
        if key.is_empty() {
            return Err(names_a_container(uri, &B::NAMING));
        }
        let location = bucket.locate(key, &shown)?;
        match bucket.head(&location, &shown).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let prefix = format!("{key}/");
                return match bucket.has_prefix(&prefix, ("cannot delete", &shown)).await {
                    Ok(true) => Err(prefix_without_slash(uri)),
                    Ok(false) => Ok(()),
                    Err(error) => absent(error),
                };
            }
            Err(error) => return absent(error),
        }
        bucket.delete_object(&location, &shown).await?;
        debug!(uri = %shown, "deleted");
        return Ok(());
    }
    let prefix = directory_prefix(key);
    let listing = match bucket
        .list_prefix(&prefix, !recursive, ("cannot delete", &shown))
        .await
    {
        Ok(listing) => listing,
        Err(error) => return absent(error),
    };
    let keys: Vec<String> = listing
        .objects
        .into_iter()
        .map(|object| object.key)
        .collect();
    bucket.delete_keys(keys).await
}

// Uploads.

/// Uploads the local file `source` to `key`; returns its checksum and size.
async fn upload_file<B: Bucket>(bucket: &B, source: &Path, key: &str) -> Result<(Crc64Nvme, u64)> {
    let target = bucket.object_uri(key);
    let location = bucket.locate(key, &target)?;
    let path = source.to_path_buf();
    let identity = run_blocking(move |_| {
        let metadata = fs::metadata(&path).at("cannot read", &path)?;
        if !metadata.is_file() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "`{}` is not a regular file (a fifo, socket or device): only files and directories can be uploaded",
                    path.display()
                ),
            ));
        }
        Ok((metadata.len(), metadata.modified().ok()))
    })
    .await?;
    let (size, _) = identity;
    let result = if bucket.transfers().limits.is_large(size) {
        bucket
            .put_multipart(&location, source, identity, &target)
            .await
    } else {
        upload_whole(bucket, source, size, &location, &target).await
    };
    if let Ok((checksum, length)) = &result {
        bucket.transfers().progress.file_done();
        debug!(source = %source.display(), uri = %target, bytes = length, crc64nvme = %checksum, "uploaded");
    }
    result
}

/// One request carrying the content and its CRC64NVME.
async fn upload_whole<B: Bucket>(
    bucket: &B,
    source: &Path,
    size: u64,
    location: &B::Location,
    target: &str,
) -> Result<(Crc64Nvme, u64)> {
    let _slot = slot(bucket).await?;
    let path = source.to_path_buf();
    let (content, checksum) = run_blocking(move |_| {
        let content = fs::read(&path).at("cannot read", &path)?;
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

// Downloads.

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

    #[test]
    fn part_sizes_stay_within_ten_thousand_parts() {
        let limits = Limits {
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            concurrency: 8,
            batch_size: 1000,
        };
        assert_eq!(limits.part_size_for(100 * MIB), 16 * MIB);
        let huge = 5 * 1024 * 1024 * MIB; // 5 TiB, S3's largest object
        let part = limits.part_size_for(huge);
        assert!(huge.div_ceil(part) <= MAX_PARTS);
        assert_eq!(part % MIB, 0);
        assert!(!limits.is_large(0));
        assert!(limits.is_large(16 * MIB));
    }

    #[test]
    fn directory_prefixes_end_with_a_slash() {
        assert_eq!(directory_prefix(""), "");
        assert_eq!(directory_prefix("a"), "a/");
        assert_eq!(directory_prefix("a/"), "a/");
    }
}
