//! How a task specification and an attempt's transfers are stored: JSON with stable field
//! names, independent of the protobuf encoding, readable with any SQL client.

use herd_proto::view::{Transfer, TransferredFile};
use herd_proto::{TaskRequest, TaskSpec};
use serde::{Deserialize, Serialize};

/// Encodes a specification for the `tasks.spec` column: the JSON of its [`TaskRequest`].
pub fn encode(spec: &TaskSpec) -> String {
    serde_json::to_string(&spec.to_request()).expect("a spec always serializes")
}

/// Why a stored value cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON herd writes.
    #[error("not valid JSON")]
    Json(#[from] serde_json::Error),
    /// Valid JSON, but not a valid task any more.
    #[error("not a valid task")]
    Invalid(#[from] herd_proto::Error),
}

/// Decodes and re-validates a stored specification.
pub fn decode(text: &str) -> Result<TaskSpec, DecodeError> {
    let request: TaskRequest = serde_json::from_str(text)?;
    Ok(TaskSpec::new(request)?)
}

#[derive(Serialize, Deserialize)]
struct StoredTransfer {
    direction: String,
    uri: String,
    bytes: u64,
    files: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Vec<StoredFile>,
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    path: String,
    size: u64,
    crc64nvme: String,
}

/// Encodes an attempt's transfers for the `attempts.transfers` column.
pub fn encode_transfers(transfers: &[Transfer]) -> String {
    let stored: Vec<StoredTransfer> = transfers
        .iter()
        .map(|transfer| StoredTransfer {
            direction: transfer.direction.clone(),
            uri: transfer.uri.clone(),
            bytes: transfer.bytes,
            files: transfer.files,
            items: transfer
                .items
                .iter()
                .map(|item| StoredFile {
                    path: item.path.clone(),
                    size: item.size,
                    crc64nvme: item.crc64nvme.clone(),
                })
                .collect(),
        })
        .collect();
    serde_json::to_string(&stored).expect("transfers always serialize")
}

/// Decodes an attempt's transfers.
pub fn decode_transfers(text: &str) -> Result<Vec<Transfer>, DecodeError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let stored: Vec<StoredTransfer> = serde_json::from_str(text)?;
    Ok(stored
        .into_iter()
        .map(|transfer| Transfer {
            direction: transfer.direction,
            uri: transfer.uri,
            bytes: transfer.bytes,
            files: transfer.files,
            items: transfer
                .items
                .into_iter()
                .map(|item| TransferredFile {
                    path: item.path,
                    size: item.size,
                    crc64nvme: item.crc64nvme,
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let spec = TaskSpec::new(TaskRequest {
            batch: "b".into(),
            command: vec!["sh".into(), "-c".into(), "echo 'a b'".into()],
            docker_image: Some("busybox".into()),
            docker_options: "-e X=1".into(),
            output: Some("/tmp/out/".into()),
            run_timeout_secs: Some(5),
            ..TaskRequest::default()
        })
        .unwrap();
        assert_eq!(decode(&encode(&spec)).unwrap(), spec);
        assert!(decode("{").is_err());
    }

    #[test]
    fn the_stored_form_keeps_its_field_names() {
        // Databases written by earlier versions hold this form: it must keep decoding.
        let stored = r#"{"batch":"b","command":["true"],"docker_image":"busybox","docker_options":"-e X=1","retry":2,"run_timeout_secs":5}"#;
        let spec = decode(stored).unwrap();
        assert_eq!(spec.retry(), 2);
        // From before `--crash-limit`: the default limit.
        assert_eq!(spec.crash_limit(), Some(3));
        assert_eq!(
            spec.docker().map(|docker| docker.image.as_str()),
            Some("busybox")
        );
        assert_eq!(encode(&spec), stored);
        let unlimited = r#"{"batch":"b","command":["true"],"retry":0,"crash_limit":0}"#;
        let spec = decode(unlimited).unwrap();
        assert_eq!(spec.crash_limit(), None);
        assert_eq!(encode(&spec), unlimited);
    }
}
