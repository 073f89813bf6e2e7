//! The parts of a multipart upload: read at their offsets and sent in parallel within the
//! backend's request slots, each with its CRC64NVME, which CompleteMultipartUpload combines
//! into the full-object checksum; and [`S3Upload`], which aborts an upload that did not
//! complete.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};

use tracing::{debug, warn};

use crate::bucket::{
    FileIdentity, PendingUpload, changed_while_read, combine_crc64nvme, file_identity, read_part,
    run_all, slot,
};
use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, Result};
use crate::local::run_blocking;

use super::errors::map_error;
use super::requests::{S3Bucket, check_stored, stored_crc64nvme};

/// A part uploaded to S3.
pub(super) struct UploadedPart {
    pub(super) number: i32,
    pub(super) etag: String,
    pub(super) crc64nvme: Crc64Nvme,
    pub(super) length: u64,
}

impl S3Bucket<'_> {
    pub(super) async fn send_parts(
        &self,
        source: &Path,
        identity: FileIdentity,
        key: &str,
        upload_id: &str,
        target: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let (size, _, inode) = identity;
        let limits = &self.backend.transfers.limits;
        let part_size = limits.part_size_for(size);
        let path = source.to_path_buf();
        let file =
            Arc::new(run_blocking(move |_| crate::local::open_regular(&path, Some(inode))).await?);
        let count = size.div_ceil(part_size);
        let uploads: Vec<_> = (0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.send_part(
                    Arc::clone(&file),
                    source,
                    (offset, length),
                    index as i32 + 1,
                    (key, upload_id, target),
                )
            })
            .collect();
        let parts = run_all(uploads, limits.concurrency).await?;
        let (checksum, length) =
            combine_crc64nvme(parts.iter().map(|part| (part.crc64nvme, part.length)));
        let path = source.to_path_buf();
        let now = run_blocking(move |_| file_identity(&path)).await?;
        if length != size || now != identity {
            return Err(changed_while_read(source));
        }
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|part| {
                CompletedPart::builder()
                    .part_number(part.number)
                    .e_tag(&part.etag)
                    .checksum_crc64_nvme(part.crc64nvme.to_base64())
                    .build()
            })
            .collect();
        let response = self
            .client
            .complete_multipart_upload()
            .bucket(self.name)
            .key(key)
            .upload_id(upload_id)
            .checksum_type(ChecksumType::FullObject)
            .checksum_crc64_nvme(checksum.to_base64())
            .mpu_object_size(size as i64)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| map_error("cannot complete the multipart upload to", target, error))?;
        let stored = stored_crc64nvme(response.checksum_crc64_nvme(), response.checksum_type());
        check_stored(stored, checksum, target)?;
        Ok((checksum, size))
    }

    async fn send_part(
        &self,
        file: Arc<File>,
        source: &Path,
        (offset, length): (u64, u64),
        number: i32,
        (key, upload_id, target): (&str, &str, &str),
    ) -> Result<UploadedPart> {
        let _slot = slot(self).await?;
        let (content, checksum) = read_part(file, source, (offset, length)).await?;
        let response = self
            .client
            .upload_part()
            .bucket(self.name)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(length as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_crc64_nvme(checksum.to_base64())
            .body(ByteStream::from(content))
            .send()
            .await
            .map_err(|error| {
                map_error(&format!("cannot upload part {number} of"), target, error)
            })?;
        let Some(etag) = response.e_tag().map(str::to_owned) else {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot upload part {number} of `{target}`: the server answered without an etag; retry"
                ),
            ));
        };
        self.backend.transfers.progress.transferred(length);
        Ok(UploadedPart {
            number,
            etag,
            crc64nvme: checksum,
            length,
        })
    }
}

/// A multipart upload S3 knows by its id.
pub(super) struct S3Upload {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) target: String,
}

impl PendingUpload for S3Upload {
    fn target(&self) -> &str {
        &self.target
    }

    async fn abort(&mut self) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        let upload_id = &self.upload_id;
        match result {
            Ok(_) => debug!(uri = %self.target, upload_id, "multipart upload aborted"),
            Err(error) => {
                let error = map_error("cannot abort the multipart upload to", &self.target, error);
                warn!(upload_id, error = %error.report(), "a multipart upload may be left over");
            }
        }
    }
}
