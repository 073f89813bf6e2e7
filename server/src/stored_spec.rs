//! How a task specification and an attempt's transfers are stored: JSON with stable field
//! names, independent of the protobuf encoding, readable with any SQL client.

use std::time::Duration;

use herd_proto::view::{Transfer, TransferredFile};
use herd_proto::{TaskSpec, pb};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct StoredSpec {
    batch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    docker_options: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(default)]
    retry: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    download_timeout_secs: Option<u64>,
}

/// Encodes a specification for the `tasks.spec` column.
pub fn encode(spec: &TaskSpec) -> String {
    let stored = StoredSpec {
        batch: spec.batch.to_string(),
        name: spec.name.clone(),
        command: spec.command.clone(),
        docker_image: spec.docker.as_ref().map(|docker| docker.image.clone()),
        docker_options: spec
            .docker
            .as_ref()
            .map(|docker| docker.options_text.clone())
            .unwrap_or_default(),
        uid: spec.uid,
        gid: spec.gid,
        inputs: spec.inputs.clone(),
        resources: spec.resources.clone(),
        output: spec.output.clone(),
        retry: spec.retry,
        run_timeout_secs: spec.run_timeout.map(|duration| duration.as_secs()),
        download_timeout_secs: spec.download_timeout.map(|duration| duration.as_secs()),
    };
    serde_json::to_string(&stored).expect("a spec always serializes")
}

/// Decodes and re-validates a stored specification.
pub fn decode(text: &str) -> Result<TaskSpec, String> {
    let stored: StoredSpec =
        serde_json::from_str(text).map_err(|error| format!("spec is not valid JSON: {error}"))?;
    let message = pb::TaskSpec {
        batch: stored.batch,
        name: stored.name,
        command: stored.command,
        docker_image: stored.docker_image,
        docker_options: stored.docker_options,
        uid: stored.uid,
        gid: stored.gid,
        inputs: stored.inputs,
        resources: stored.resources,
        output: stored.output,
        retry: stored.retry,
        run_timeout_secs: stored.run_timeout_secs,
        download_timeout_secs: stored.download_timeout_secs,
    };
    let spec = TaskSpec::try_from(message).map_err(|error| error.to_string())?;
    debug_assert!(
        spec.run_timeout
            .is_none_or(|timeout| timeout >= Duration::from_secs(1))
    );
    Ok(spec)
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
pub fn decode_transfers(text: &str) -> Result<Vec<Transfer>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let stored: Vec<StoredTransfer> = serde_json::from_str(text)
        .map_err(|error| format!("transfers are not valid JSON: {error}"))?;
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
    use herd_proto::BatchName;

    use super::*;

    #[test]
    fn specs_round_trip() {
        let mut spec = TaskSpec::new(
            BatchName::new("b").unwrap(),
            vec!["sh".into(), "-c".into(), "echo 'a b'".into()],
        )
        .with_docker("busybox", "-e X=1")
        .unwrap();
        spec.output = Some("/tmp/out/".into());
        spec.run_timeout = Some(Duration::from_secs(5));
        assert_eq!(decode(&encode(&spec)).unwrap(), spec);
        assert!(decode("{").is_err());
    }
}
