//! Measures upload and download throughput of the S3 backend against the test store.
//!
//! ```text
//! eval "$(bash scripts/start-seaweedfs.sh)"
//! cargo run --release -p herd-fetch --example s3_throughput -- /var/tmp/herd-1g.bin 1024 [PART_MIB] [CONCURRENCY]
//! ```
//!
//! Creates FILE with SIZE_MIB MiB of pseudo-random bytes if it does not exist, uploads it to a
//! new bucket, downloads it next to FILE, checks that the CRC64NVME values agree, prints MiB/s,
//! and removes the object, the bucket and the downloaded copy.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use herd_fetch::s3::{AccessKey, Config};
use herd_fetch::{Backend, S3Backend, Uri, crc64nvme_file};

const MIB: u64 = 1024 * 1024;

fn variable(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run eval \"$(bash scripts/start-seaweedfs.sh)\" first")
    })
}

fn create_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut output = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        output.write_all(&block)?;
    }
    output.flush()
}

/// A plain SDK client for the bucket itself, which the backend does not manage.
fn sdk_client() -> Result<aws_sdk_s3::Client, String> {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(variable("HERD_TEST_S3_ENDPOINT")?)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            variable("HERD_TEST_S3_ACCESS_KEY")?,
            variable("HERD_TEST_S3_SECRET_KEY")?,
            None,
            None,
            "example",
        ))
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [file, size_mib, rest @ ..] = arguments.as_slice() else {
        return Err("usage: s3_throughput FILE SIZE_MIB [PART_MIB] [CONCURRENCY]".into());
    };
    let file = PathBuf::from(file);
    let size = size_mib.parse::<u64>()? * MIB;
    let mut config = Config {
        endpoint: Some(variable("HERD_TEST_S3_ENDPOINT")?),
        region: Some("us-east-1".to_owned()),
        access_key: Some(AccessKey::new(
            variable("HERD_TEST_S3_ACCESS_KEY")?,
            variable("HERD_TEST_S3_SECRET_KEY")?,
        )),
        ..Config::default()
    };
    if let Some(part_mib) = rest.first() {
        config.part_size = part_mib.parse::<u64>()? * MIB;
        config.multipart_threshold = config.part_size;
    }
    if let Some(concurrency) = rest.get(1) {
        config.concurrency = concurrency.parse()?;
    }
    if std::fs::metadata(&file).map(|metadata| metadata.len()).ok() != Some(size) {
        eprintln!("writing {} MiB to {}", size / MIB, file.display());
        create_file(&file, size)?;
    }
    let local_crc = crc64nvme_file(&file)?;
    eprintln!(
        "part size {} MiB, {} requests at once",
        config.part_size / MIB,
        config.concurrency
    );
    let backend = S3Backend::new(config)?;

    let sdk = sdk_client()?;
    let bucket = format!("herd-throughput-{}", std::process::id());
    sdk.create_bucket().bucket(&bucket).send().await?;
    let bucket_uri = Uri::parse(&format!("s3://{bucket}/"))?;
    let uri = bucket_uri.join("object.bin")?;
    let started = Instant::now();
    let uploaded = backend.put(&file, &uri).await?;
    let upload_seconds = started.elapsed().as_secs_f64();

    let download_dir = file.with_extension("download");
    let started = Instant::now();
    let downloaded = backend.get(&uri, &download_dir).await?;
    let download_seconds = started.elapsed().as_secs_f64();

    let mib = size as f64 / MIB as f64;
    println!(
        "upload   {mib:.0} MiB in {upload_seconds:.2} s: {:.0} MiB/s",
        mib / upload_seconds
    );
    println!(
        "download {mib:.0} MiB in {download_seconds:.2} s: {:.0} MiB/s",
        mib / download_seconds
    );
    let same = uploaded.checksums[0].crc64nvme.to_base64() == local_crc
        && downloaded.checksums[0].crc64nvme.to_base64() == local_crc;
    println!(
        "crc64nvme {local_crc}: {}",
        if same { "matches" } else { "DIFFERS" }
    );

    backend.delete(&bucket_uri, true).await?;
    sdk.delete_bucket().bucket(&bucket).send().await?;
    std::fs::remove_dir_all(&download_dir)?;
    if !same {
        return Err("the checksums differ".into());
    }
    Ok(())
}
