//! [`Container`]: one container or bucket through its `object_store` client, the requests the
//! shared `bucket` code makes. The CRC64NVME travels as the user metadata
//! [`CHECKSUM_METADATA`]; parts of a multipart upload are spawned tasks ([`Spawned`]) so that
//! they run in parallel, and are aborted when the upload fails or is dropped.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::list::PaginatedListOptions;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload,
};
use tracing::{debug, warn};

use super::{CHECKSUM_METADATA, ObjectBackend, Provider, Store, object_path, redact};
use crate::bucket::{
    AbortOnDrop, Body, Bucket, FileIdentity, Head, Listed, Listing, Naming, PendingUpload,
    Transfers, changed_while_read, combine_crc64nvme, file_identity, parse_stored_crc64nvme,
    read_part, slot,
};
use crate::checksum::{Crc64Nvme, crc64nvme_reader};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::run_blocking;

/// The CRC64NVME an object carries in its metadata, if it has a valid one.
fn stored_crc64nvme(attributes: &Attributes) -> Option<Crc64Nvme> {
    let value = attributes.get(&Attribute::Metadata(CHECKSUM_METADATA.into()))?;
    parse_stored_crc64nvme(value.as_ref())
}

fn checksum_attributes(checksum: Crc64Nvme) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(CHECKSUM_METADATA.into()),
        AttributeValue::from(checksum.to_base64()),
    );
    attributes
}

/// A spawned task that is aborted when its handle is dropped (a failed or cancelled transfer
/// stops its parts).
struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Spawned<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(context)
    }
}

fn joined<T>(result: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|error| Error::with_source(ErrorKind::Io, "a transfer task failed", error))?
}

/// One container or bucket, through its client: what the functions of [`bucket`] drive.
pub(super) struct Container<'a, P: Provider> {
    pub(super) backend: &'a ObjectBackend<P>,
    pub(super) store: Arc<dyn Store>,
    pub(super) name: &'a str,
}

impl<P: Provider> Container<'_, P> {
    /// Maps an `object_store` error (see [`map_error`]).
    fn fail(&self, doing: &str, target: &str, error: object_store::Error) -> Error {
        self.backend.hints.fail(doing, target, error)
    }

    /// At most `limit` objects and prefixes under `prefix` (all when `None`), page after page.
    async fn list_some(
        &self,
        prefix: &str,
        delimited: bool,
        limit: Option<usize>,
        (doing, target): (&str, &str),
    ) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        let batch = limit.unwrap_or(self.backend.transfers.limits.batch_size);
        loop {
            let options = PaginatedListOptions {
                delimiter: delimited.then_some("/".into()),
                max_keys: Some(batch),
                page_token: token.clone(),
                ..PaginatedListOptions::default()
            };
            let page = self
                .store
                .list_paginated((!prefix.is_empty()).then_some(prefix), options)
                .await
                .map_err(|error| self.fail(doing, target, error))?;
            for object in page.result.objects {
                listing.objects.push(Listed {
                    key: object.location.to_string(),
                    size: object.size,
                });
            }
            for sub in page.result.common_prefixes {
                listing.prefixes.push(format!("{sub}/"));
            }
            if limit.is_some_and(|limit| listing.objects.len() + listing.prefixes.len() >= limit) {
                break;
            }
            match page.page_token {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => break,
            }
        }
        // Keys outside the prefix cannot come back, but a store may include the prefix itself.
        listing
            .objects
            .retain(|object| object.key.len() > prefix.len() && object.key.starts_with(prefix));
        Ok(listing)
    }

    /// Sends the parts of `file` (`identity` before the upload started) and checks that they
    /// combine into `expected`, the CRC64NVME the upload was started with.
    async fn send_parts(
        &self,
        guard: &mut AbortOnDrop<ObjectUpload>,
        file: Arc<File>,
        source: &Path,
        identity: FileIdentity,
        expected: Crc64Nvme,
    ) -> Result<()> {
        let (size, _, _) = identity;
        let part_size = self.backend.transfers.limits.part_size_for(size);
        let count = size.div_ceil(part_size);
        let mut running = FuturesUnordered::new();
        let mut pieces = Vec::with_capacity(count as usize);
        for index in 0..count {
            let offset = index * part_size;
            let length = part_size.min(size - offset);
            // At most `concurrency` parts in memory and in flight: wait for one to finish.
            let slot = loop {
                tokio::select! {
                    slot = slot(self) => break slot?,
                    Some(done) = running.next(), if !running.is_empty() => joined(done)?,
                }
            };
            let (content, checksum) =
                read_part(Arc::clone(&file), source, (offset, length)).await?;
            pieces.push((checksum, length));
            let upload = guard.upload();
            let part = upload
                .upload
                .put_part(PutPayload::from(Bytes::from(content)));
            let number = index + 1;
            let target = upload.target.clone();
            let hints = self.backend.hints.clone();
            let progress = self.backend.transfers.progress.clone();
            running.push(Spawned(tokio::spawn(async move {
                let _slot = slot;
                part.await.map_err(|error| {
                    hints.fail(&format!("cannot upload part {number} of"), &target, error)
                })?;
                progress.transferred(length);
                Ok(())
            })));
        }
        while let Some(done) = running.next().await {
            joined(done)?;
        }
        let (checksum, length) = combine_crc64nvme(pieces);
        let path = source.to_path_buf();
        let now = run_blocking(move |_| file_identity(&path)).await?;
        if length != size || checksum != expected || now != identity {
            return Err(changed_while_read(source));
        }
        Ok(())
    }
}

impl<P: Provider> Bucket for Container<'_, P> {
    type Location = ObjectPath;
    const NAMING: Naming = P::NAMING;

    fn name(&self) -> &str {
        self.name
    }

    fn transfers(&self) -> &Transfers {
        &self.backend.transfers
    }

    fn locate(&self, key: &str, target: &str) -> Result<ObjectPath> {
        object_path(key, target)
    }

    async fn head(&self, location: &ObjectPath, target: &str) -> Result<Option<Head>> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(location, options).await {
            Ok(result) => Ok(Some(Head {
                size: result.meta.size,
                etag: result.meta.e_tag.clone(),
                crc64nvme: stored_crc64nvme(&result.attributes),
            })),
            // A HEAD answer has no body: a missing container looks like a missing object here,
            // and the listing that follows tells them apart.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.fail("cannot read", target, error)),
        }
    }

    async fn list_prefix(
        &self,
        prefix: &str,
        delimited: bool,
        context: (&str, &str),
    ) -> Result<Listing> {
        self.list_some(prefix, delimited, None, context).await
    }

    async fn has_prefix(&self, prefix: &str, context: (&str, &str)) -> Result<bool> {
        let listing = self.list_some(prefix, false, Some(1), context).await?;
        Ok(!listing.objects.is_empty() || !listing.prefixes.is_empty())
    }

    async fn get_whole(&self, location: &ObjectPath, target: &str) -> Result<Body> {
        let response = self
            .store
            .get_opts(location, GetOptions::default())
            .await
            .map_err(|error| self.fail("cannot download", target, error))?;
        let crc64nvme = stored_crc64nvme(&response.attributes);
        let length = response.range.end - response.range.start;
        let (hints, shown) = (self.backend.hints.clone(), target.to_owned());
        let chunks = response
            .into_stream()
            .map_err(move |error| hints.fail("cannot download", &shown, error))
            .boxed();
        Ok(Body {
            crc64nvme,
            length: Some(length),
            chunks,
        })
    }

    async fn get_range(
        &self,
        location: &ObjectPath,
        etag: Option<&str>,
        (offset, length): (u64, u64),
        target: &str,
    ) -> Result<Bytes> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + length)),
            // Every range from the same version of the object, or a precondition error.
            if_match: etag.map(str::to_owned),
            ..GetOptions::default()
        };
        async { self.store.get_opts(location, options).await?.bytes().await }
            .await
            .map_err(|error| self.fail("cannot download", target, error))
    }

    async fn put_whole(
        &self,
        location: &ObjectPath,
        content: Vec<u8>,
        checksum: Crc64Nvme,
        target: &str,
    ) -> Result<()> {
        let options = PutOptions {
            attributes: checksum_attributes(checksum),
            ..PutOptions::default()
        };
        self.store
            .put_opts(location, PutPayload::from(Bytes::from(content)), options)
            .await
            .map_err(|error| self.fail("cannot upload to", target, error))?;
        Ok(())
    }

    /// The file's CRC64NVME first (the metadata goes with the upload's start on GCS), then the
    /// parts in parallel, each checksummed again; the parts' CRCs must combine into the first
    /// one, or the file changed and the upload is aborted.
    async fn put_multipart(
        &self,
        location: &ObjectPath,
        source: &Path,
        identity: FileIdentity,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let (size, _, inode) = identity;
        let path = source.to_path_buf();
        let (file, (checksum, length)) = run_blocking(move |cancel| {
            let file = crate::local::open_regular(&path, Some(inode))?;
            cancel.check()?;
            let sums = crc64nvme_reader(&file).at("cannot read", &path)?;
            Ok((file, sums))
        })
        .await?;
        if length != size {
            return Err(changed_while_read(source));
        }
        let options = PutMultipartOptions {
            attributes: checksum_attributes(checksum),
            ..PutMultipartOptions::default()
        };
        // Started by a task of its own: were this future dropped while the request is in flight,
        // the store would hold an upload nobody knows of. The task gets the upload whatever
        // happens, and if no one is left to receive it, drops the guard, which aborts.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (store, owned_location, owned_target) =
            (Arc::clone(&self.store), location.clone(), target.to_owned());
        tokio::spawn(async move {
            let started = store
                .put_multipart_opts(&owned_location, options)
                .await
                .map(|upload| {
                    AbortOnDrop::new(ObjectUpload {
                        upload,
                        target: owned_target,
                    })
                });
            // Unreceived, the guard comes back in the error and is dropped here: aborted.
            let _ = sender.send(started);
        });
        let mut guard = receiver
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot upload to `{target}`: the task starting the multipart upload failed; retry"),
                )
            })?
            .map_err(|error| self.fail("cannot start a multipart upload to", target, error))?;
        let result = self
            .send_parts(&mut guard, Arc::new(file), source, identity, checksum)
            .await;
        if let Err(error) = result {
            guard.abort().await;
            return Err(error);
        }
        match guard.upload().upload.complete().await {
            Ok(_) => {
                guard.disarm();
                Ok((checksum, size))
            }
            Err(error) => {
                let error = self.fail("cannot complete the multipart upload to", target, error);
                guard.abort().await;
                Err(error)
            }
        }
    }

    async fn delete_object(&self, location: &ObjectPath, _target: &str) -> Result<()> {
        self.delete_keys(vec![location.to_string()]).await
    }

    /// The store's bulk deletion.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let count = keys.len();
        let mut locations = Vec::with_capacity(count);
        for key in &keys {
            locations.push(object_path(key, &self.object_uri(key))?);
        }
        let stream = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(stream);
        let mut index = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    let key = keys.get(index).map_or("", String::as_str);
                    return Err(self.fail("cannot delete", &self.object_uri(key), error));
                }
            }
            index += 1;
        }
        debug!(container = self.name, keys = count, "deleted");
        Ok(())
    }
}

/// A multipart upload `object_store` started.
struct ObjectUpload {
    upload: Box<dyn MultipartUpload>,
    target: String,
}

impl PendingUpload for ObjectUpload {
    fn target(&self) -> &str {
        &self.target
    }

    async fn abort(&mut self) {
        match self.upload.abort().await {
            Ok(()) => debug!(uri = %self.target, "multipart upload aborted"),
            // The error may hold a URL with a SAS signature: blanked out.
            Err(error) => warn!(
                uri = %self.target,
                error = %redact(&error.to_string(), &[]),
                "a multipart upload may be left over"
            ),
        }
    }
}
