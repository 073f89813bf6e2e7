//! The gs backend against a real fake-gcs-server on loopback, started by
//! `eval "$(bash scripts/start-gcs.sh)"`, which exports `HERD_TEST_GCS_ENDPOINT`. Without it
//! every test fails and says so: a skipped test would hide a broken backend.
//!
//! fake-gcs-server implements GCS's XML API (what `object_store`, and so `gs://`, speaks) for
//! reads, listings and deletions, but not its plain PUT uploads nor its multipart uploads: the
//! tests reach it through `support::gcs_shim`, which turns those writes into the JSON-API
//! uploads fake-gcs-server has and passes everything else through unchanged.
//!
//! Each test works in a bucket of its own. The contract part follows `tests/it/behaviour.rs`
//! step by step; the rest checks the CRC64NVME stored as `x-goog-meta-crc64nvme` and verified
//! on download, multipart uploads and ranged downloads, error kinds and credentials.

mod support;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_fetch::gcs::{Config, Credentials};
use herd_fetch::{
    Backend as _, ErrorKind, GcsBackend, Resolver, Scheme, Secret, Uri, crc64nvme, crc64nvme_file,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use support::gcs_shim::GcsShim;
use support::{FAST_RETRY, content, contract, tree, write};

const MIB: u64 = 1024 * 1024;

/// The fake-gcs-server the tests use.
fn upstream() -> String {
    match std::env::var("HERD_TEST_GCS_ENDPOINT") {
        Ok(value) if !value.is_empty() => value.trim_end_matches('/').to_owned(),
        _ => panic!(
            "HERD_TEST_GCS_ENDPOINT is not set: the gs tests need a real GCS emulator; start fake-gcs-server on loopback and export its address with\n    eval \"$(bash scripts/start-gcs.sh)\"\nthen run the tests again"
        ),
    }
}

/// A shim in front of the test server, and a new bucket with a name no other test uses.
async fn setup(purpose: &str) -> (GcsShim, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let upstream = upstream();
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
    let answer = reqwest::Client::new()
        .post(format!("{upstream}/storage/v1/b"))
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{name}\"}}"))
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!("fake-gcs-server does not answer at {upstream} ({error}); run eval \"$(bash scripts/start-gcs.sh)\"")
        });
    assert!(answer.status().is_success(), "{answer:?}");
    (GcsShim::start(&upstream).await, name)
}

fn config(shim: &GcsShim) -> Config {
    Config {
        endpoint: Some(shim.endpoint()),
        credentials: Credentials::Anonymous,
        retry: FAST_RETRY,
        ..Config::default()
    }
}

/// Parts and ranges of 5 MiB from 5 MiB on.
fn small_parts(shim: &GcsShim) -> Config {
    Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 3,
        ..config(shim)
    }
}

fn resolver(config: Config) -> Resolver {
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::Gs, Arc::new(GcsBackend::new(config).unwrap()));
    resolver
}

fn uri(text: &str) -> Uri {
    Uri::parse(text).unwrap()
}

fn paths(entries: &[herd_fetch::Entry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.path.as_str()).collect()
}

/// The `crc64nvme` metadata of an object, as fake-gcs-server's JSON API shows it.
async fn stored_checksum(bucket: &str, object: &str) -> Option<String> {
    let url = format!(
        "{}/storage/v1/b/{bucket}/o/{}",
        upstream(),
        utf8_percent_encode(object, NON_ALPHANUMERIC)
    );
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let start = text.find("\"crc64nvme\":\"")? + "\"crc64nvme\":\"".len();
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_owned())
}

/// Stores an object directly in fake-gcs-server, as another client would.
async fn insert(bucket: &str, object: &str, content: &[u8], metadata: &[(&str, &str)]) {
    let url = format!(
        "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
        upstream(),
        utf8_percent_encode(object, NON_ALPHANUMERIC)
    );
    let mut request = reqwest::Client::new().post(url).body(content.to_vec());
    for (key, value) in metadata {
        request = request.header(format!("x-goog-meta-{key}"), *value);
    }
    assert!(request.send().await.unwrap().status().is_success());
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

#[tokio::test]
async fn gs_backend_follows_the_contract() {
    let (shim, bucket) = setup("contract").await;
    let temp = tempfile::tempdir().unwrap();
    contract::suite(
        &resolver(config(&shim)),
        &uri(&format!("gs://{bucket}/store/")),
        temp.path(),
    )
    .await;
    // Reads, listings and deletions went to fake-gcs-server unchanged.
    let log = shim.log();
    assert!(
        log.iter()
            .any(|logged| logged.handling == "forwarded" && logged.method == "GET")
    );
    assert!(
        log.iter()
            .any(|logged| logged.handling == "forwarded" && logged.method == "DELETE")
    );
}

#[tokio::test]
async fn files_and_trees_round_trip_with_their_crc64nvme_stored_as_metadata() {
    let (shim, bucket) = setup("roundtrip").await;
    let resolver = resolver(small_parts(&shim));
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("dir/small.bin", 100_000),
        ("dir/deeper/odd.bin", 11 * MIB as usize + 17),
        ("odd names/a b+c%20é.txt", 10),
    ];
    for (index, (path, size)) in sizes.iter().enumerate() {
        write(&source.join(path), &content(*size, index as u64));
    }

    let stats = resolver
        .put(&source, &uri(&format!("gs://{bucket}/tree/")))
        .await
        .unwrap();
    assert_eq!(stats.files, sizes.len() as u64);
    for file in &stats.checksums {
        let local = crc64nvme_file(source.join(&file.path)).unwrap();
        assert_eq!(file.crc64nvme.to_base64(), local, "{}", file.path);
        assert_eq!(
            stored_checksum(&bucket, &format!("tree/{}", file.path)).await,
            Some(local),
            "{}",
            file.path
        );
    }
    // The large file went up as a multipart upload of three parts.
    let log = shim.log();
    let count = |handling: &str| {
        log.iter()
            .filter(|logged| logged.handling == handling && logged.status < 300)
            .count()
    };
    assert_eq!(
        (count("initiate"), count("part"), count("complete")),
        (1, 3, 1),
        "{log:#?}"
    );
    assert_eq!(shim.open_uploads(), 0);

    let target = temp.path().join("downloaded");
    let fetched = resolver
        .fetch(&uri(&format!("gs://{bucket}/tree/")), &target)
        .await
        .unwrap();
    assert_eq!(fetched.stats.files, sizes.len() as u64);
    for (path, _) in sizes {
        assert_eq!(
            fs::read(target.join(path)).unwrap(),
            fs::read(source.join(path)).unwrap(),
            "{path}"
        );
    }
    // The large object came down as three ranged GETs, answered by fake-gcs-server.
    let ranged = shim
        .log()
        .into_iter()
        .filter(|logged| logged.method == "GET" && logged.range.is_some())
        .count();
    assert_eq!(ranged, 3);

    // A single file, to an exact name and back.
    let single = uri(&format!("gs://{bucket}/single/copy.bin"));
    resolver
        .put(&source.join("dir/small.bin"), &single)
        .await
        .unwrap();
    let fetched = resolver
        .fetch(&single, &temp.path().join("single"))
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["copy.bin"]);
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        crc64nvme_file(source.join("dir/small.bin")).unwrap()
    );
}

#[tokio::test]
async fn an_object_that_does_not_match_its_stored_checksum_fails_and_leaves_nothing() {
    let (shim, bucket) = setup("corrupt").await;
    let backend = GcsBackend::new(small_parts(&shim)).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let claimed = crc64nvme(b"what was uploaded").to_base64();
    for (name, size) in [("small.bin", 1000), ("large.bin", 11 * MIB as usize)] {
        insert(
            &bucket,
            name,
            &content(size, 5),
            &[("crc64nvme", claimed.as_str())],
        )
        .await;
        let destination = temp.path().join(format!("target-{name}"));
        let error = backend
            .get(&uri(&format!("gs://{bucket}/{name}")), &destination)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Checksum, "{}", error.report());
        assert!(error.to_string().contains(&claimed), "{error}");
        assert!(tree(&destination).is_empty(), "{:?}", tree(&destination));
    }
    // An object written by another tool, without the metadata, downloads unchecked.
    insert(&bucket, "foreign.txt", b"Hello, World!", &[]).await;
    let fetched = resolver(config(&shim))
        .fetch(
            &uri(&format!("gs://{bucket}/foreign.txt")),
            &temp.path().join("foreign"),
        )
        .await
        .unwrap();
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme,
        crc64nvme(b"Hello, World!")
    );
}

#[tokio::test]
async fn listings_and_deletions_cover_prefixes() {
    let (shim, bucket) = setup("listing").await;
    let resolver = resolver(Config {
        batch_size: 2,
        ..config(&shim)
    });
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let files = [
        "a1", "a2", "a3", "b/1", "b/2", "b/3", "c/d/1", "c/d/2", "e/1",
    ];
    for file in files {
        write(&source.join(file), file.as_bytes());
    }
    let base = uri(&format!("gs://{bucket}/p/"));
    resolver.put(&source, &base).await.unwrap();

    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(paths(&listed), files.to_vec());
    let listed = resolver.list(&base, false).await.unwrap();
    assert_eq!(paths(&listed), vec!["a1", "a2", "a3", "b/", "c/", "e/"]);
    let listed = resolver
        .list(&uri(&format!("gs://{bucket}/")), false)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["p/"]);
    let listed = resolver
        .list(&uri(&format!("gs://{bucket}/p/b")), true)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["1", "2", "3"]);

    resolver.delete(&base, false).await.unwrap();
    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(
        paths(&listed),
        vec!["b/1", "b/2", "b/3", "c/d/1", "c/d/2", "e/1"]
    );
    resolver.delete(&base, true).await.unwrap();
    assert_eq!(
        resolver.list(&base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn missing_objects_and_buckets_are_not_found() {
    let (shim, bucket) = setup("missing").await;
    let resolver = resolver(config(&shim));
    let temp = tempfile::tempdir().unwrap();

    let missing = uri(&format!("gs://{bucket}/no/such/key.txt"));
    let error = resolver.fetch(&missing, temp.path()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert_eq!(
        error.to_string(),
        format!("`gs://{bucket}/no/such/key.txt` does not exist: check the uri")
    );
    let error = resolver.list(&missing, false).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());

    let no_bucket = format!("{bucket}-absent");
    let in_missing_bucket = uri(&format!("gs://{no_bucket}/key.txt"));
    let error = resolver
        .fetch(&in_missing_bucket, temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    write(&temp.path().join("file.txt"), b"data");
    let error = resolver
        .put(&temp.path().join("file.txt"), &in_missing_bucket)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(
        error.to_string().contains("the bucket does not exist"),
        "{}",
        error.report()
    );
    resolver.delete(&in_missing_bucket, false).await.unwrap();
    resolver.delete(&missing, false).await.unwrap();
    assert_eq!(tree(temp.path()), vec!["file.txt"]);
}

#[tokio::test]
async fn a_service_account_key_is_used_and_never_shown() {
    let (shim, bucket) = setup("key").await;
    let marker = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjHerdSecretMarker";
    // The form object_store's CI gives emulators: no OAuth (and the base URL, which
    // HERD_GCS_ENDPOINT overrides here so that plain http is allowed).
    let key = format!(
        r#"{{"gcs_base_url": "{}", "disable_oauth": true, "client_email": "test@example.invalid", "private_key_id": "1", "private_key": "-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n"}}"#,
        shim.endpoint()
    );
    let resolver = resolver(Config {
        endpoint: Some(shim.endpoint()),
        credentials: Credentials::ServiceAccountKey(Secret::new(&key)),
        retry: FAST_RETRY,
        ..Config::default()
    });
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("file.txt"), b"data");
    let file = uri(&format!("gs://{bucket}/file.txt"));
    resolver
        .put(&temp.path().join("file.txt"), &file)
        .await
        .unwrap();
    assert_eq!(resolver.list(&file, false).await.unwrap().len(), 1);

    let errors = [
        resolver
            .fetch(&uri(&format!("gs://{bucket}-absent/x")), temp.path())
            .await
            .unwrap_err(),
        resolver
            .put(
                &temp.path().join("file.txt"),
                &uri(&format!("gs://{bucket}-absent/x")),
            )
            .await
            .unwrap_err(),
    ];
    let malformed = GcsBackend::new(Config {
        credentials: Credentials::ServiceAccountKey(Secret::new(format!(
            "{{\"private_key\": \"{marker}\", broken"
        ))),
        ..Config::default()
    })
    .unwrap();
    let refused = malformed.list(&file, true).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::PermissionDenied,
        "{}",
        refused.report()
    );
    assert!(
        refused.to_string().contains("GOOGLE_SERVICE_ACCOUNT_KEY"),
        "{refused}"
    );
    for error in errors.iter().chain([&refused]) {
        for shown in [error.to_string(), error.report(), format!("{error:?}")] {
            assert!(!shown.contains(marker), "the private key leaked: {shown}");
        }
    }
    assert!(!format!("{malformed:?}").contains(marker));
}

#[tokio::test]
async fn interrupted_multipart_uploads_are_aborted() {
    let (shim, bucket) = setup("abort").await;
    // One 5 MiB part at a time: time enough to interrupt.
    let backend = GcsBackend::new(Config {
        concurrency: 1,
        ..small_parts(&shim)
    })
    .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("big.bin");
    write(&source, &content(40 * MIB as usize, 7));
    let target = uri(&format!("gs://{bucket}/dropped.bin"));
    let started = async {
        while shim.open_uploads() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        result = backend.put(&source, &target) => {
            panic!("the upload finished before it could be interrupted: {result:?}")
        }
        () = started => {}
    }
    wait_for(
        || shim.open_uploads() == 0,
        "the dropped upload to be aborted",
    )
    .await;
    let error = resolver(config(&shim))
        .list(&target, false)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "no object may appear");
    assert!(shim.log().iter().any(|logged| logged.handling == "abort"));
}

#[test]
fn the_default_resolver_has_gs() {
    assert!(Resolver::default().schemes().contains(&Scheme::Gs));
}
