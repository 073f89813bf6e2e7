//! The S3 backend against a real S3 server: SeaweedFS on loopback, started by
//! `eval "$(bash scripts/start-seaweedfs.sh)"`, which exports `HERD_TEST_S3_ENDPOINT`,
//! `HERD_TEST_S3_ACCESS_KEY` and `HERD_TEST_S3_SECRET_KEY`. Without them every test fails and
//! says so: a skipped S3 test would hide a broken backend.
//!
//! Each test works in a bucket of its own. It runs the contract (`support/contract.rs`) and the
//! steps every object store shares (`support/stores.rs`), and checks what only S3 has: stored
//! CRC64NVME checksums of type FULL_OBJECT, multipart uploads and ranged downloads, batched
//! deletions of more than a thousand keys, error kinds.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use herd_fetch::s3::{AccessKey, Config};
use herd_fetch::{Backend, ErrorKind, Progress, Resolver, S3Backend, Scheme, crc64nvme};

use support::{
    content, contract, paths, resolver_with, stores, tree, unique_bucket, uri, wait_until, write,
};

const MIB: u64 = 1024 * 1024;

/// The SeaweedFS the tests use.
struct Store {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

fn store() -> Store {
    let variable = |name: &str| match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: the S3 tests need a real S3 server; start SeaweedFS on loopback and export its settings with\n    eval \"$(bash scripts/start-seaweedfs.sh)\"\nthen run the tests again"
        ),
    };
    Store {
        endpoint: variable("HERD_TEST_S3_ENDPOINT"),
        access_key: variable("HERD_TEST_S3_ACCESS_KEY"),
        secret_key: variable("HERD_TEST_S3_SECRET_KEY"),
    }
}

/// The backend's configuration for the test store, with the defaults for sizes.
fn config(store: &Store) -> Config {
    Config {
        endpoint: Some(store.endpoint.clone()),
        region: Some("us-east-1".to_owned()),
        access_key: Some(AccessKey::new(&store.access_key, &store.secret_key)),
        ..Config::default()
    }
}

/// Parts and ranges of 5 MiB (S3's smallest) from 5 MiB on, three at a time.
fn small_parts(store: &Store) -> Config {
    Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 3,
        ..config(store)
    }
}

fn resolver(config: Config) -> Resolver {
    resolver_with(Scheme::S3, S3Backend::new(config).unwrap())
}

/// A plain SDK client, to look at what the backend stored.
fn sdk(store: &Store) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&store.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            &store.access_key,
            &store.secret_key,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A new bucket with a name no other test (or earlier run) uses.
async fn new_bucket(client: &aws_sdk_s3::Client, purpose: &str) -> String {
    let name = unique_bucket(purpose);
    client.create_bucket().bucket(&name).send().await.unwrap();
    name
}

/// Deletes every object of `bucket`, then the bucket.
async fn remove_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    resolver(config(&store()))
        .delete(&uri(&format!("s3://{bucket}/")), true)
        .await
        .unwrap();
    client.delete_bucket().bucket(bucket).send().await.unwrap();
}

/// What HeadObject with checksum mode says: (ChecksumCRC64NVME, ChecksumType).
///
/// AWS reports `ChecksumType: FULL_OBJECT` for a single PutObject too; SeaweedFS 4.48 reports
/// it for multipart uploads only and leaves it out for single PUTs, where a CRC64NVME can only
/// be of the whole object. [`full_object`] accepts both.
async fn stored_checksum(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> (Option<String>, Option<ChecksumType>) {
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    (
        head.checksum_crc64_nvme().map(str::to_owned),
        head.checksum_type().cloned(),
    )
}

/// The stored checksum of a single PutObject, as [`stored_checksum`] gives it, counted as
/// `FULL_OBJECT` when the server leaves the type out (see there).
fn full_object(
    stored: (Option<String>, Option<ChecksumType>),
) -> (Option<String>, Option<ChecksumType>) {
    match stored {
        (checksum, None) => (checksum, Some(ChecksumType::FullObject)),
        other => other,
    }
}

#[tokio::test]
async fn s3_backend_follows_the_contract() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "contract").await;
    let temp = tempfile::tempdir().unwrap();
    contract::suite(
        &resolver(config(&store)),
        &uri(&format!("s3://{bucket}/store/")),
        temp.path(),
        contract::Capabilities::READ_WRITE,
    )
    .await;
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn files_and_trees_round_trip_with_full_object_crc64nvme() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "roundtrip").await;
    let resolver = resolver(config(&store));
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("dir/small.bin", 100_000),
        ("dir/deeper/mebibyte.bin", MIB as usize),
        ("dir/deeper/odd.bin", 3 * MIB as usize + 17),
    ];
    stores::write_files(&source, &sizes);

    // A single file, to an exact key, stored with its CRC64NVME, FULL_OBJECT.
    let local_crc = stores::round_trip_one(
        &resolver,
        &source.join("dir/deeper/odd.bin"),
        &format!("s3://{bucket}/single/odd.bin"),
        &temp.path().join("single"),
    )
    .await;
    assert_eq!(
        full_object(stored_checksum(&client, &bucket, "single/odd.bin").await),
        (Some(local_crc), Some(ChecksumType::FullObject))
    );

    // A tree (to a prefix named without its slash): every object stored with the local file's
    // CRC64NVME, FULL_OBJECT.
    let stats = stores::put_tree(
        &resolver,
        &source,
        &format!("s3://{bucket}/tree"),
        sizes.len(),
    )
    .await;
    for file in &stats.checksums {
        assert_eq!(
            full_object(stored_checksum(&client, &bucket, &format!("tree/{}", file.path)).await),
            (
                Some(file.crc64nvme.to_base64()),
                Some(ChecksumType::FullObject)
            ),
            "{}",
            file.path
        );
    }
    stores::fetch_tree(
        &resolver,
        &format!("s3://{bucket}/tree/"),
        &temp.path().join("downloaded"),
        &source,
        &sizes.map(|(path, _)| path),
    )
    .await;
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn multipart_uploads_store_a_full_object_checksum_and_ranged_downloads_verify_it() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "multipart").await;
    let resolver_small_parts = resolver(small_parts(&store));
    let temp = tempfile::tempdir().unwrap();
    let content = content(12 * MIB as usize + 12_345, 42);
    let source = temp.path().join("big.bin");
    write(&source, &content);
    let uri = uri(&format!("s3://{bucket}/data/big.bin"));

    let stats = resolver_small_parts.put(&source, &uri).await.unwrap();
    let local_crc = crc64nvme(&content).to_base64();
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), local_crc);
    assert_eq!(
        stored_checksum(&client, &bucket, "data/big.bin").await,
        (Some(local_crc.clone()), Some(ChecksumType::FullObject))
    );
    let parts = client
        .head_object()
        .bucket(&bucket)
        .key("data/big.bin")
        .part_number(1)
        .send()
        .await
        .unwrap()
        .parts_count();
    assert_eq!(parts, Some(3), "12 MiB in 5 MiB parts");

    // Down again in 5 MiB ranges, and in one GET with the default threshold of 16 MiB.
    for (name, resolver) in [
        ("ranges", &resolver_small_parts),
        ("whole", &resolver(config(&store))),
    ] {
        let target = temp.path().join(name);
        let fetched = resolver.fetch(&uri, &target).await.unwrap();
        assert_eq!(fetched.stats.checksums[0].crc64nvme.to_base64(), local_crc);
        assert_eq!(fs::read(target.join("big.bin")).unwrap(), content, "{name}");
        assert_eq!(tree(&target), vec!["big.bin"], "{name}");
    }
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn listings_and_deletions_go_page_by_page() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "pages").await;
    // Two keys per ListObjectsV2 page and per DeleteObjects request.
    let resolver = resolver(Config {
        batch_size: 2,
        ..config(&store)
    });
    let temp = tempfile::tempdir().unwrap();
    stores::listings_and_deletions(&resolver, &format!("s3://{bucket}/"), temp.path()).await;
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn more_than_a_thousand_keys_list_and_delete_in_full() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "thousand").await;
    let resolver = resolver(Config {
        concurrency: 32,
        ..config(&store)
    });
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let count = 1100;
    for index in 0..count {
        write(&source.join(format!("d{}/f{index:04}", index % 3)), b"x");
    }
    let base = uri(&format!("s3://{bucket}/many/"));
    let started = Instant::now();
    let stats = resolver.put(&source, &base).await.unwrap();
    assert_eq!(stats.files, count);
    let uploaded = started.elapsed();
    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(listed.len(), count as usize);
    assert!(listed.windows(2).all(|pair| pair[0].path < pair[1].path));
    let listed = resolver.list(&base, false).await.unwrap();
    assert_eq!(paths(&listed), vec!["d0/", "d1/", "d2/"]);
    resolver.delete(&base, true).await.unwrap();
    assert_eq!(
        resolver.list(&base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    eprintln!(
        "{count} objects: uploaded in {uploaded:?}, listed and deleted in {:?}",
        started.elapsed() - uploaded
    );
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn missing_objects_and_buckets_are_not_found() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "missing").await;
    let resolver = resolver(config(&store));
    let temp = tempfile::tempdir().unwrap();
    stores::missing_objects_and_buckets(
        &resolver,
        &format!("s3://{bucket}/"),
        &format!("s3://{bucket}-absent/"),
        "bucket",
        temp.path(),
    )
    .await;
    // (No upload to the missing bucket: SeaweedFS creates buckets on the first PUT.)
    let error = resolver
        .put(
            &temp.path().join("absent.txt"),
            &uri(&format!("s3://{bucket}-absent/key.txt")),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(tree(temp.path()).is_empty());
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn a_wrong_secret_is_permission_denied_and_never_shown() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "denied").await;
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("file.txt"), b"data");
    client
        .put_object()
        .bucket(&bucket)
        .key("file.txt")
        .body(b"data".to_vec().into())
        .send()
        .await
        .unwrap();

    let wrong_secret = "Wr0ngSecretThatMustNeverBeShown";
    let resolver = resolver(Config {
        access_key: Some(AccessKey::new(&store.access_key, wrong_secret)),
        ..config(&store)
    });
    let root = format!("s3://{bucket}/");
    stores::denied_everywhere(
        &resolver,
        &root,
        temp.path(),
        &[wrong_secret, &store.secret_key],
    )
    .await;
    // The object is still there, untouched.
    let listed = self::resolver(config(&store))
        .list(&uri(&root), true)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["file.txt"]);
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn failed_downloads_leave_no_partial_file() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "partial").await;
    let backend = S3Backend::new(Config {
        concurrency: 8,
        ..small_parts(&store)
    })
    .unwrap();
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("small.bin"), &content(1000, 1));
    write(
        &temp.path().join("large.bin"),
        &content(11 * MIB as usize, 2),
    );
    for name in ["small.bin", "large.bin"] {
        let uri = uri(&format!("s3://{bucket}/{name}"));
        backend.put(&temp.path().join(name), &uri).await.unwrap();
        // A directory where the file should land: the download completes, the rename fails.
        let destination = temp.path().join(format!("target-{name}"));
        fs::create_dir_all(destination.join(name).join("in-the-way")).unwrap();
        let error = backend.get(&uri, &destination).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
        assert!(
            error.to_string().contains("a directory is in the way"),
            "{error}"
        );
        assert_eq!(
            tree(&destination),
            vec![format!("{name}/"), format!("{name}/in-the-way/")],
            "no temporary file may be left"
        );
    }

    // Downloads dropped half-way (a timeout, a cancelled task) leave nothing either, once their
    // cleanup ran: one streamed GET, and ranged GETs one at a time.
    let whole = S3Backend::new(Config {
        multipart_threshold: 64 * MIB,
        ..config(&store)
    })
    .unwrap();
    let ranged = S3Backend::new(Config {
        concurrency: 1,
        ..small_parts(&store)
    })
    .unwrap();
    write(
        &temp.path().join("cancel.bin"),
        &content(40 * MIB as usize, 3),
    );
    let uri = uri(&format!("s3://{bucket}/cancel.bin"));
    ranged
        .put(&temp.path().join("cancel.bin"), &uri)
        .await
        .unwrap();
    for (name, backend) in [("whole", &whole), ("ranged", &ranged)] {
        let destination = temp.path().join(format!("cancelled-{name}"));
        fs::create_dir_all(&destination).unwrap();
        let started = async {
            while tree(&destination).is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            result = backend.get(&uri, &destination) => {
                panic!("the {name} download finished before it could be interrupted: {result:?}")
            }
            () = started => {}
        }
        wait_until("the cancelled download to clean up", || {
            tree(&destination).is_empty()
        })
        .await;
    }
    remove_bucket(&client, &bucket).await;
}

async fn multipart_uploads_in_progress(client: &aws_sdk_s3::Client, bucket: &str) -> usize {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

#[tokio::test]
async fn interrupted_multipart_uploads_are_aborted() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "abort").await;
    // One 5 MiB part at a time: 13 requests in a row, time enough to interrupt.
    let backend = S3Backend::new(Config {
        concurrency: 1,
        ..small_parts(&store)
    })
    .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("big.bin");
    let content = content(64 * MIB as usize, 7);

    // The source shrinks while it is uploaded: an error, and the upload is aborted.
    write(&source, &content);
    let uri = uri(&format!("s3://{bucket}/shrinking.bin"));
    let shrink = async {
        loop {
            if multipart_uploads_in_progress(&client, &bucket).await > 0 {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&source)
                    .unwrap()
                    .set_len(MIB)
                    .unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (result, ()) = tokio::join!(backend.put(&source, &uri), shrink);
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
    assert!(
        error.to_string().contains("changed while it was uploaded"),
        "{error}"
    );
    assert_eq!(multipart_uploads_in_progress(&client, &bucket).await, 0);
    assert!(
        client
            .head_object()
            .bucket(&bucket)
            .key("shrinking.bin")
            .send()
            .await
            .is_err(),
        "no object may appear"
    );

    // The upload is dropped (a timeout, a cancelled task): aborted in the background.
    write(&source, &content);
    let uri = self::uri(&format!("s3://{bucket}/dropped.bin"));
    let started = async {
        while multipart_uploads_in_progress(&client, &bucket).await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        result = backend.put(&source, &uri) => panic!("the upload finished before it could be interrupted: {result:?}"),
        () = started => {}
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while multipart_uploads_in_progress(&client, &bucket).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        client
            .head_object()
            .bucket(&bucket)
            .key("dropped.bin")
            .send()
            .await
            .is_err(),
        "no object may appear"
    );
    remove_bucket(&client, &bucket).await;
}

#[test]
fn the_default_resolver_has_s3() {
    // Building it reads the environment only: the client is created by the first transfer.
    assert!(Resolver::default().schemes().contains(&Scheme::S3));
}

#[tokio::test]
async fn progress_counts_multipart_uploads_ranged_downloads_and_trees() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "progress").await;
    let progress = Progress::new();
    let backend = S3Backend::new(small_parts(&store))
        .unwrap()
        .with_progress(progress.clone());
    let resolver = resolver_with(Scheme::S3, backend);
    let temp = tempfile::tempdir().unwrap();
    stores::progress_counts_trees_parts_and_ranges(
        &resolver,
        &progress,
        &format!("s3://{bucket}/"),
        temp.path(),
    )
    .await;
    remove_bucket(&client, &bucket).await;
}
