//! One bucket (or container) of an object store, as the object-store backends drive it. The
//! [`Bucket`] trait holds the few requests whose client differs (aws-sdk-s3 for `s3://`, in
//! [`s3`](crate::s3); `object_store` for `azure://` and `gs://`, in [`object`](crate::object));
//! everything else of a transfer is written here once, on top of it:
//!
//! - the four [`Backend`](crate::Backend) operations, [`get`], [`put`], [`list`] and [`delete`]:
//!   single objects and prefixes, the same checks and the same messages on every scheme (worded
//!   with the scheme's [`Naming`]);
//! - downloads: one GET streamed through an [`AtomicFile`](crate::AtomicFile), or from the
//!   multipart threshold on parallel ranged GETs (pinned to the object's etag) written at their
//!   offsets into a [`PartialFile`](download::PartialFile); the CRC64NVME computed on the way is
//!   compared with the stored one, and a mismatch is an [`ErrorKind::Checksum`] error that leaves
//!   no file. Keys that would land outside the destination are refused before anything is
//!   written ([`download_plan`](download::download_plan));
//! - uploads in one request; multipart uploads are the client's ([`Bucket::put_multipart`]),
//!   with the helpers they share: [`read_part`], [`combine_crc64nvme`], [`file_identity`],
//!   [`changed_while_read`] and [`AbortOnDrop`];
//! - progress: every file announced as soon as its size is known (all the files of a tree up
//!   front), bytes counted per chunk, range or part, each file counted when committed.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Bucket`] trait and what it returns, [`Limits`] and [`Transfers`], the
//!   parsing of `scheme://bucket/key`, [`run_all`] and the request slots, and the two
//!   operations that move no file: [`list`] and [`delete`].
//! - `download.rs`: [`get`]: the plan of a prefix's download, whole and ranged GETs, the
//!   [`PartialFile`](download::PartialFile) that ranges are written into, the checks against
//!   the stored CRC64NVME.
//! - `upload.rs`: [`put`]: whole uploads, and the pieces the clients' multipart uploads share.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{BoxStream, FuturesUnordered};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::backend::Entry;
use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

mod download;
mod upload;

pub(crate) use download::{get, parse_stored_crc64nvme};
pub(crate) use upload::{
    AbortOnDrop, PendingUpload, changed_while_read, combine_crc64nvme, file_identity, put,
    read_part,
};

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

/// The size, modification time, and device and inode of a local file: to notice it changing
/// while it is uploaded, and to read that very file whenever it is opened again.
pub(crate) type FileIdentity = (u64, Option<SystemTime>, (u64, u64));

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

// The Backend operations.

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

#[cfg(test)]
mod tests {
    use super::*;

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
