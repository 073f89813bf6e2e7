//! The S3 backend against a real S3 server: SeaweedFS on loopback, started by
//! `eval "$(bash scripts/start-seaweedfs.sh)"`, which exports `HERD_TEST_S3_ENDPOINT`,
//! `HERD_TEST_S3_ACCESS_KEY` and `HERD_TEST_S3_SECRET_KEY`. Without them every test fails and
//! says so: a skipped S3 test would hide a broken backend.
//!
//! Each test works in a bucket of its own. The contract part follows `tests/it/behaviour.rs`
//! step by step; the rest checks what only S3 has: stored CRC64NVME checksums of type
//! FULL_OBJECT, multipart uploads and ranged downloads, pagination, error kinds.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use herd_fetch::s3::{AccessKey, Config};
use herd_fetch::{Backend, ErrorKind, Resolver, S3Backend, Scheme, Uri, crc64nvme, crc64nvme_file};

const MIB: u64 = 1024 * 1024;
const CRC_123456789: &str = "rosUhgp5mIg=";
const CRC_EMPTY: &str = "AAAAAAAAAAA=";
const CRC_HELLO: &str = "1Km+Qyat0k0=";

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

fn resolver(config: Config) -> Resolver {
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::S3, Arc::new(S3Backend::new(config).unwrap()));
    resolver
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
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "herd-{purpose}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let name: String = name.chars().take(63).collect();
    client.create_bucket().bucket(&name).send().await.unwrap();
    name
}

/// Deletes every object of `bucket`, then the bucket.
async fn remove_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    let backend = resolver(config(&store()));
    backend
        .delete(&Uri::parse(&format!("s3://{bucket}/")).unwrap(), true)
        .await
        .unwrap();
    client.delete_bucket().bucket(bucket).send().await.unwrap();
}

fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// `size` bytes that differ from one file to the next.
fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// Every path under `root`, relative, sorted; directories end with `/`.
fn tree(root: &Path) -> Vec<String> {
    fn collect(root: &Path, directory: &Path, paths: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(directory) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                paths.push(format!("{relative}/"));
                collect(root, &path, paths);
            } else {
                paths.push(relative);
            }
        }
    }
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    paths.sort();
    paths
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

fn paths(entries: &[herd_fetch::Entry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.path.as_str()).collect()
}

/// The steps of `tests/it/behaviour.rs`, on S3.
#[tokio::test]
async fn s3_backend_follows_the_contract() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "contract").await;
    let resolver = resolver(config(&store));
    let base = Uri::parse(&format!("s3://{bucket}/store/")).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let local = temp.path();
    let source = local.join("source");
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("sub/b.txt"), b"Hello, World!");
    write(&source.join("sub/deeper/c.txt"), b"");

    // Listing something that does not exist.
    assert_eq!(
        resolver.list(&base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Upload a tree.
    let stats = resolver.put(&source, &base).await.unwrap();
    assert_eq!((stats.files, stats.bytes), (3, 22));
    let sums: Vec<(String, String)> = stats
        .checksums
        .iter()
        .map(|file| (file.path.clone(), file.crc64nvme.to_base64()))
        .collect();
    let expected = [
        ("a.txt", CRC_123456789),
        ("sub/b.txt", CRC_HELLO),
        ("sub/deeper/c.txt", CRC_EMPTY),
    ];
    assert_eq!(
        sums,
        expected.map(|(path, crc)| (path.to_owned(), crc.to_owned()))
    );

    // List it, recursively and not.
    let entries = resolver.list(&base, true).await.unwrap();
    let listed: Vec<(&str, u64)> = entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.size))
        .collect();
    assert_eq!(
        listed,
        vec![("a.txt", 9), ("sub/b.txt", 13), ("sub/deeper/c.txt", 0)]
    );
    assert_eq!(entries[1].uri, base.join("sub/b.txt").unwrap());
    let entries = resolver.list(&base, false).await.unwrap();
    let listed: Vec<(&str, u64, bool)> = entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.size, entry.is_dir()))
        .collect();
    assert_eq!(listed, vec![("a.txt", 9, false), ("sub/", 0, true)]);
    let single = resolver
        .list(&base.join("a.txt").unwrap(), false)
        .await
        .unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!((single[0].path.as_str(), single[0].size), ("a.txt", 9));

    // Download a file and a directory.
    let target = local.join("target");
    let fetched = resolver
        .fetch(&base.join("a.txt").unwrap(), &target)
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["a.txt"]);
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        CRC_123456789
    );
    let fetched = resolver
        .fetch(&base.join("sub/").unwrap(), &target)
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["b.txt", "deeper"]);
    assert_eq!(
        tree(&target),
        vec!["a.txt", "b.txt", "deeper/", "deeper/c.txt"]
    );
    assert_eq!(fs::read(target.join("b.txt")).unwrap(), b"Hello, World!");

    // A directory without its slash, and something missing.
    let error = resolver
        .fetch(&base.join("sub").unwrap(), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri, "{error}");
    assert!(
        error
            .to_string()
            .ends_with("is a directory: end the uri with `/` to transfer it recursively"),
        "{error}"
    );
    let error = resolver
        .fetch(&base.join("missing.txt").unwrap(), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert_eq!(
        tree(&target),
        vec!["a.txt", "b.txt", "deeper/", "deeper/c.txt"],
        "failed fetches leave nothing"
    );

    // Upload a single file under a directory URI, and to an exact name.
    let stats = resolver
        .put(&source.join("a.txt"), &base.join("single/").unwrap())
        .await
        .unwrap();
    assert_eq!(stats.checksums[0].path, "a.txt");
    resolver
        .put(&source.join("a.txt"), &base.join("renamed.txt").unwrap())
        .await
        .unwrap();
    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(
        paths(&listed),
        vec![
            "a.txt",
            "renamed.txt",
            "single/a.txt",
            "sub/b.txt",
            "sub/deeper/c.txt"
        ]
    );

    // Delete: a file (twice: deleting what is gone succeeds), a directory's own files, everything.
    resolver
        .delete(&base.join("a.txt").unwrap(), false)
        .await
        .unwrap();
    resolver
        .delete(&base.join("a.txt").unwrap(), false)
        .await
        .unwrap();
    let error = resolver
        .delete(&base.join("sub").unwrap(), true)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    resolver
        .delete(&base.join("sub/").unwrap(), false)
        .await
        .unwrap();
    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(
        paths(&listed),
        vec!["renamed.txt", "single/a.txt", "sub/deeper/c.txt"]
    );
    resolver.delete(&base, true).await.unwrap();
    assert_eq!(
        resolver.list(&base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
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
    for (index, (path, size)) in sizes.iter().enumerate() {
        write(&source.join(path), &pseudo_random(*size, index as u64));
    }

    // A single file, to an exact key.
    let single = Uri::parse(&format!("s3://{bucket}/single/odd.bin")).unwrap();
    let stats = resolver
        .put(&source.join("dir/deeper/odd.bin"), &single)
        .await
        .unwrap();
    let local_crc = crc64nvme_file(source.join("dir/deeper/odd.bin")).unwrap();
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), local_crc);
    assert_eq!(
        full_object(stored_checksum(&client, &bucket, "single/odd.bin").await),
        (Some(local_crc.clone()), Some(ChecksumType::FullObject))
    );
    let target = temp.path().join("single");
    let fetched = resolver.fetch(&single, &target).await.unwrap();
    assert_eq!(fetched.stats.checksums[0].crc64nvme.to_base64(), local_crc);
    assert_eq!(
        fs::read(target.join("odd.bin")).unwrap(),
        fs::read(source.join("dir/deeper/odd.bin")).unwrap()
    );

    // A tree: every object stored with the local file's CRC64NVME, FULL_OBJECT.
    let base = Uri::parse(&format!("s3://{bucket}/tree")).unwrap();
    let stats = resolver.put(&source, &base).await.unwrap();
    assert_eq!(stats.files, sizes.len() as u64);
    for file in &stats.checksums {
        let local_crc = crc64nvme_file(source.join(&file.path)).unwrap();
        assert_eq!(file.crc64nvme.to_base64(), local_crc, "{}", file.path);
        assert_eq!(
            full_object(stored_checksum(&client, &bucket, &format!("tree/{}", file.path)).await),
            (Some(local_crc), Some(ChecksumType::FullObject)),
            "{}",
            file.path
        );
    }
    let target = temp.path().join("downloaded");
    let fetched = resolver
        .fetch(
            &Uri::parse(&format!("s3://{bucket}/tree/")).unwrap(),
            &target,
        )
        .await
        .unwrap();
    assert_eq!(fetched.stats.files, sizes.len() as u64);
    for (path, _) in sizes {
        assert_eq!(
            fs::read(target.join(path)).unwrap(),
            fs::read(source.join(path)).unwrap(),
            "{path}"
        );
        assert_eq!(
            crc64nvme_file(target.join(path)).unwrap(),
            crc64nvme_file(source.join(path)).unwrap()
        );
    }
    remove_bucket(&client, &bucket).await;
}

#[tokio::test]
async fn multipart_uploads_store_a_full_object_checksum_and_ranged_downloads_verify_it() {
    let store = store();
    let client = sdk(&store);
    let bucket = new_bucket(&client, "multipart").await;
    let small_parts = Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 3,
        ..config(&store)
    };
    let resolver_small_parts = resolver(small_parts);
    let temp = tempfile::tempdir().unwrap();
    let content = pseudo_random(12 * MIB as usize + 12_345, 42);
    let source = temp.path().join("big.bin");
    write(&source, &content);
    let uri = Uri::parse(&format!("s3://{bucket}/data/big.bin")).unwrap();

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
    let source = temp.path().join("source");
    let files = [
        "a1", "a2", "a3", "b/1", "b/2", "b/3", "c/d/1", "c/d/2", "e/1",
    ];
    for file in files {
        write(&source.join(file), file.as_bytes());
    }
    let base = Uri::parse(&format!("s3://{bucket}/p/")).unwrap();
    resolver.put(&source, &base).await.unwrap();

    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(paths(&listed), files.to_vec());
    let listed = resolver.list(&base, false).await.unwrap();
    assert_eq!(paths(&listed), vec!["a1", "a2", "a3", "b/", "c/", "e/"]);
    // The whole bucket, and a prefix named without its slash.
    let listed = resolver
        .list(&Uri::parse(&format!("s3://{bucket}/")).unwrap(), false)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["p/"]);
    let listed = resolver
        .list(&Uri::parse(&format!("s3://{bucket}/p/b")).unwrap(), true)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["1", "2", "3"]);

    // A download of every page.
    let target = temp.path().join("target");
    let fetched = resolver.fetch(&base, &target).await.unwrap();
    assert_eq!(fetched.stats.files, files.len() as u64);

    // Non-recursive: only the files directly under the prefix.
    resolver.delete(&base, false).await.unwrap();
    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(
        paths(&listed),
        vec!["b/1", "b/2", "b/3", "c/d/1", "c/d/2", "e/1"]
    );
    // Recursive, in batches of two.
    resolver.delete(&base, true).await.unwrap();
    assert_eq!(
        resolver.list(&base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
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
    let base = Uri::parse(&format!("s3://{bucket}/many/")).unwrap();
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

    let uri = Uri::parse(&format!("s3://{bucket}/no/such/key.txt")).unwrap();
    let error = resolver.fetch(&uri, temp.path()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert_eq!(
        error.to_string(),
        format!("`s3://{bucket}/no/such/key.txt` does not exist: check the uri")
    );
    assert!(!error.kind().is_retryable());
    let error = resolver.list(&uri, false).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    let error = resolver
        .fetch(
            &Uri::parse(&format!("s3://{bucket}/no/")).unwrap(),
            temp.path(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert_eq!(
        error.to_string(),
        format!("nothing under `s3://{bucket}/no/`: check the uri")
    );

    let no_bucket = format!("{bucket}-absent");
    let uri = Uri::parse(&format!("s3://{no_bucket}/key.txt")).unwrap();
    let error = resolver.fetch(&uri, temp.path()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(
        error.to_string().contains("the bucket does not exist"),
        "{}",
        error.report()
    );
    let error = resolver
        .put(&temp.path().join("absent.txt"), &uri)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    // (No upload to the missing bucket: SeaweedFS creates buckets on the first PUT.)
    // Deleting what does not exist succeeds, as on every backend.
    resolver.delete(&uri, false).await.unwrap();
    resolver
        .delete(&Uri::parse(&format!("s3://{no_bucket}/")).unwrap(), true)
        .await
        .unwrap();
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
    let file = Uri::parse(&format!("s3://{bucket}/file.txt")).unwrap();
    let prefix = Uri::parse(&format!("s3://{bucket}/")).unwrap();
    let target = temp.path().join("target");
    let errors = [
        resolver.fetch(&file, &target).await.unwrap_err(),
        resolver.fetch(&prefix, &target).await.unwrap_err(),
        resolver
            .put(&temp.path().join("file.txt"), &file)
            .await
            .unwrap_err(),
        resolver.list(&prefix, true).await.unwrap_err(),
        resolver.delete(&file, false).await.unwrap_err(),
        resolver.delete(&prefix, true).await.unwrap_err(),
    ];
    for error in errors {
        assert_eq!(
            error.kind(),
            ErrorKind::PermissionDenied,
            "{}",
            error.report()
        );
        assert!(
            error.to_string().contains("check the credentials"),
            "{error}"
        );
        for shown in [error.to_string(), error.report(), format!("{error:?}")] {
            assert!(!shown.contains(wrong_secret), "the secret leaked: {shown}");
            assert!(
                !shown.contains(&store.secret_key),
                "a secret leaked: {shown}"
            );
        }
    }
    assert!(!target.exists() || tree(&target).is_empty());
    // The object is still there, untouched.
    let listed = self::resolver(config(&store))
        .list(&prefix, true)
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
    let small_parts = Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        ..config(&store)
    };
    let backend = S3Backend::new(small_parts).unwrap();
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("small.bin"), &pseudo_random(1000, 1));
    write(
        &temp.path().join("large.bin"),
        &pseudo_random(11 * MIB as usize, 2),
    );
    for name in ["small.bin", "large.bin"] {
        let uri = Uri::parse(&format!("s3://{bucket}/{name}")).unwrap();
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
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 1,
        ..config(&store)
    })
    .unwrap();
    write(
        &temp.path().join("cancel.bin"),
        &pseudo_random(40 * MIB as usize, 3),
    );
    let uri = Uri::parse(&format!("s3://{bucket}/cancel.bin")).unwrap();
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
        wait_for(
            || tree(&destination).is_empty(),
            "the cancelled download to clean up",
        )
        .await;
    }
    remove_bucket(&client, &bucket).await;
}

/// Polls `condition` until it holds, failing after 60 s (generous: a 2-core CI machine runs
/// every test binary at once, and an abort waits for the part in flight).
async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 1,
        ..config(&store)
    })
    .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("big.bin");
    let content = pseudo_random(64 * MIB as usize, 7);

    // The source shrinks while it is uploaded: an error, and the upload is aborted.
    write(&source, &content);
    let uri = Uri::parse(&format!("s3://{bucket}/shrinking.bin")).unwrap();
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
    let uri = Uri::parse(&format!("s3://{bucket}/dropped.bin")).unwrap();
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
    let small_parts = Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 3,
        ..config(&store)
    };
    let progress = herd_fetch::Progress::new();
    let backend = S3Backend::new(small_parts)
        .unwrap()
        .with_progress(progress.clone());
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::S3, Arc::new(backend));
    let temp = tempfile::tempdir().unwrap();
    let big = 11 * MIB + 7;
    write(
        &temp.path().join("up/big.bin"),
        &pseudo_random(big as usize, 5),
    );
    write(&temp.path().join("up/small/a.txt"), b"123456789");
    let total = big + 9;

    let uri = Uri::parse(&format!("s3://{bucket}/tree/")).unwrap();
    resolver.put(&temp.path().join("up"), &uri).await.unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (2, 2));
    assert_eq!((now.bytes_expected, now.bytes_done), (total, total));

    resolver
        .fetch(&uri, &temp.path().join("down"))
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (4, 4));
    assert_eq!((now.bytes_expected, now.bytes_done), (2 * total, 2 * total));

    let single = Uri::parse(&format!("s3://{bucket}/tree/big.bin")).unwrap();
    resolver
        .fetch(&single, &temp.path().join("one"))
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (5, 5));
    assert_eq!(now.bytes_done, 2 * total + big);
    assert_eq!(now.bytes_expected, now.bytes_done);
    remove_bucket(&client, &bucket).await;
}
