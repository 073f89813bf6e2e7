//! `S3Bucket`: the requests the shared `bucket` code makes, through aws-sdk-s3. Checksums are
//! asked for on every GET and HEAD (`ChecksumMode::Enabled`) and sent with every PUT, and only a
//! `FULL_OBJECT` CRC64NVME counts as stored: a composite one cannot be compared with a file's.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use tracing::debug;

use crate::bucket::{
    AbortOnDrop, Body, Bucket, FileIdentity, Head, Listed, Listing, Naming, Transfers,
    parse_stored_crc64nvme,
};
use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, Result};

use super::errors::map_error;
use super::multipart::S3Upload;
use super::{NAMING, S3Backend};

/// The full-object CRC64NVME stored with an object, if it has one. Composite checksums (per
/// part, written `value-N`) cannot be compared with a whole file's CRC and count as none.
pub(super) fn stored_crc64nvme(
    value: Option<&str>,
    checksum_type: Option<&ChecksumType>,
) -> Option<Crc64Nvme> {
    let value = value?;
    if matches!(checksum_type, Some(ChecksumType::Composite)) || value.contains('-') {
        return None;
    }
    parse_stored_crc64nvme(value)
}

/// Fails when the store reports, for what it just stored, a full-object checksum other than the
/// one computed here (a store that does not validate checksums may do that).
pub(super) fn check_stored(stored: Option<Crc64Nvme>, sent: Crc64Nvme, target: &str) -> Result<()> {
    match stored {
        Some(stored) if stored != sent => Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{target}` was stored with crc64nvme {stored} but {sent} was sent: the data was corrupted on the way; upload it again"
            ),
        )),
        _ => Ok(()),
    }
}

/// One bucket, through the backend's client: what the functions of [`bucket`] drive.
pub(super) struct S3Bucket<'a> {
    pub(super) backend: &'a S3Backend,
    pub(super) client: &'a Client,
    pub(super) name: &'a str,
}

impl Bucket for S3Bucket<'_> {
    /// The key itself.
    type Location = String;
    const NAMING: Naming = NAMING;

    fn name(&self) -> &str {
        self.name
    }

    fn transfers(&self) -> &Transfers {
        &self.backend.transfers
    }

    fn locate(&self, key: &str, _target: &str) -> Result<String> {
        Ok(key.to_owned())
    }

    /// HeadObject with checksum mode.
    async fn head(&self, key: &String, target: &str) -> Result<Option<Head>> {
        let response = self
            .client
            .head_object()
            .bucket(self.name)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match response {
            Ok(head) => Ok(Some(Head {
                size: head.content_length().unwrap_or(0).max(0) as u64,
                etag: head.e_tag().map(str::to_owned),
                crc64nvme: stored_crc64nvme(head.checksum_crc64_nvme(), head.checksum_type()),
            })),
            Err(error) => {
                let error = map_error("cannot read", target, error);
                if error.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// ListObjectsV2, page after page.
    async fn list_prefix(
        &self,
        prefix: &str,
        delimited: bool,
        (doing, target): (&str, &str),
    ) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(self.name)
                .prefix(prefix)
                .max_keys(self.backend.config.batch_size as i32);
            if delimited {
                request = request.delimiter("/");
            }
            if let Some(token) = &token {
                request = request.continuation_token(token);
            }
            let page = request
                .send()
                .await
                .map_err(|error| map_error(doing, target, error))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    listing.objects.push(Listed {
                        key: key.to_owned(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            for common in page.common_prefixes() {
                if let Some(sub) = common.prefix() {
                    listing.prefixes.push(sub.to_owned());
                }
            }
            let next = page
                .next_continuation_token()
                .filter(|_| page.is_truncated() == Some(true));
            match next {
                Some(next) if token.as_deref() != Some(next) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(listing)
    }

    /// One ListObjectsV2 request for one key.
    async fn has_prefix(&self, prefix: &str, (doing, target): (&str, &str)) -> Result<bool> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(self.name)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|error| map_error(doing, target, error))?;
        Ok(!page.contents().is_empty() || !page.common_prefixes().is_empty())
    }

    /// GetObject with checksum mode.
    async fn get_whole(&self, key: &String, target: &str) -> Result<Body> {
        let response = self
            .client
            .get_object()
            .bucket(self.name)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|error| map_error("cannot download", target, error))?;
        let crc64nvme = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        let length = response.content_length().map(|length| length.max(0) as u64);
        let shown = target.to_owned();
        let chunks = futures::stream::try_unfold(response.body, |mut body| async move {
            Ok(body.try_next().await?.map(|chunk| (chunk, body)))
        })
        .map_err(move |error: ByteStreamError| map_error("cannot download", &shown, error))
        .boxed();
        Ok(Body {
            crc64nvme,
            length,
            chunks,
        })
    }

    /// A ranged GetObject, `If-Match` the etag.
    async fn get_range(
        &self,
        key: &String,
        etag: Option<&str>,
        (offset, length): (u64, u64),
        target: &str,
    ) -> Result<Bytes> {
        let mut request = self
            .client
            .get_object()
            .bucket(self.name)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + length - 1));
        if let Some(etag) = etag {
            // Every range from the same version of the object, or a PreconditionFailed error.
            request = request.if_match(etag);
        }
        let response = request
            .send()
            .await
            .map_err(|error| map_error("cannot download", target, error))?;
        Ok(response
            .body
            .collect()
            .await
            .map_err(|error| map_error("cannot download", target, error))?
            .into_bytes())
    }

    /// One PutObject carrying the CRC64NVME.
    async fn put_whole(
        &self,
        key: &String,
        content: Vec<u8>,
        checksum: Crc64Nvme,
        target: &str,
    ) -> Result<()> {
        let response = self
            .client
            .put_object()
            .bucket(self.name)
            .key(key)
            .content_length(content.len() as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(checksum.to_base64())
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|error| map_error("cannot upload to", target, error))?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, target)
    }

    /// A multipart upload created for a full-object CRC64NVME, its parts sent in parallel.
    async fn put_multipart(
        &self,
        key: &String,
        source: &Path,
        identity: FileIdentity,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        // The upload is created by a task of its own: were this future dropped while the request
        // is in flight, the server would hold an upload nobody knows of. The task gets the id
        // whatever happens, and if no one is left to receive it, drops the guard, which aborts.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = self
            .client
            .create_multipart_upload()
            .bucket(self.name)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject);
        let (client, bucket, owned_key, owned_target) = (
            self.client.clone(),
            self.name.to_owned(),
            key.clone(),
            target.to_owned(),
        );
        tokio::spawn(async move {
            let created = match request.send().await {
                Ok(created) => created,
                Err(error) => {
                    let error =
                        map_error("cannot start a multipart upload to", &owned_target, error);
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let Some(upload_id) = created.upload_id().map(str::to_owned) else {
                let _ = sender.send(Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "cannot upload to `{owned_target}`: the server started a multipart upload without an upload id; retry"
                    ),
                )));
                return;
            };
            let guard = AbortOnDrop::new(S3Upload {
                client,
                bucket,
                key: owned_key,
                upload_id: upload_id.clone(),
                target: owned_target,
            });
            // Unreceived, the guard comes back in the error and is dropped here: aborted.
            let _ = sender.send(Ok((upload_id, guard)));
        });
        let (upload_id, mut guard) = receiver.await.map_err(|_| {
            Error::new(
                ErrorKind::Io,
                format!("cannot upload to `{target}`: the task starting the multipart upload failed; retry"),
            )
        })??;
        let result = self
            .send_parts(source, identity, key, &upload_id, target)
            .await;
        match result {
            Ok(done) => {
                guard.disarm();
                Ok(done)
            }
            Err(error) => {
                guard.abort().await;
                Err(error)
            }
        }
    }

    /// DeleteObject.
    async fn delete_object(&self, key: &String, target: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(self.name)
            .key(key)
            .send()
            .await
            .map_err(|error| map_error("cannot delete", target, error))?;
        Ok(())
    }

    /// DeleteObjects, `batch_size` keys per request.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        let bucket = self.name;
        for batch in keys.chunks(self.backend.config.batch_size as usize) {
            let shown = self.object_uri(&batch[0]);
            let identifiers = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            let delete = Delete::builder()
                .set_objects(Some(identifiers))
                .quiet(true)
                .build()
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            let response = self
                .client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|error| map_error("cannot delete", &shown, error))?;
            if let Some(failed) = response.errors().first() {
                let key = failed.key().unwrap_or_default().to_owned();
                return Err(map_error(
                    &format!("cannot delete ({} keys failed)", response.errors().len()),
                    &self.object_uri(&key),
                    failed.clone(),
                ));
            }
            debug!(bucket, keys = batch.len(), "deleted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::checksum::crc64nvme;

    #[test]
    fn stored_checksums_count_only_when_full_object() {
        let value = "rosUhgp5mIg=";
        let full = Some(crc64nvme(b"123456789"));
        assert_eq!(stored_crc64nvme(Some(value), None), full);
        assert_eq!(
            stored_crc64nvme(Some(value), Some(&ChecksumType::FullObject)),
            full
        );
        assert_eq!(
            stored_crc64nvme(Some(value), Some(&ChecksumType::Composite)),
            None
        );
        assert_eq!(stored_crc64nvme(Some("rosUhgp5mIg=-3"), None), None);
        assert_eq!(stored_crc64nvme(Some("not base64"), None), None);
        assert_eq!(stored_crc64nvme(None, None), None);
    }
}
