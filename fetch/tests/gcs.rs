//! The gs backend against a real fake-gcs-server on loopback, started by
//! `eval "$(bash scripts/start-gcs.sh)"`, which exports `HERD_TEST_GCS_ENDPOINT`. Without it
//! every test fails and says so: a skipped test would hide a broken backend.
//!
//! fake-gcs-server implements GCS's XML API (what `object_store`, and so `gs://`, speaks) for
//! reads, listings and deletions, but not its plain PUT uploads nor its multipart uploads: the
//! tests reach it through `support::gcs_shim`, which turns those writes into the JSON-API
//! uploads fake-gcs-server has and passes everything else through unchanged.
//!
//! Each test works in a bucket of its own. It runs the contract (`support/contract.rs`) and the
//! steps every object store shares (`support/stores.rs`), and checks the CRC64NVME stored as
//! `x-goog-meta-crc64nvme` and verified on download, multipart uploads and ranged downloads,
//! service account keys.

mod support;

use std::time::Duration;

use herd_fetch::gcs::{Config, Credentials};
use herd_fetch::{
    Backend as _, ErrorKind, GcsBackend, Progress, Resolver, Scheme, Secret, crc64nvme,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use support::gcs_shim::GcsShim;
use support::{
    FAST_RETRY, content, contract, resolver_with, stores, tree, unique_bucket, uri, wait_until,
    write,
};

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
    let upstream = upstream();
    let name = unique_bucket(purpose);
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
    resolver_with(Scheme::Gs, GcsBackend::new(config).unwrap())
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

#[tokio::test]
async fn gs_backend_follows_the_contract() {
    let (shim, bucket) = setup("contract").await;
    let temp = tempfile::tempdir().unwrap();
    contract::suite(
        &resolver(config(&shim)),
        &uri(&format!("gs://{bucket}/store/")),
        temp.path(),
        contract::Capabilities::READ_WRITE,
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
    stores::write_files(&source, &sizes);

    let stats = stores::put_tree(
        &resolver,
        &source,
        &format!("gs://{bucket}/tree/"),
        sizes.len(),
    )
    .await;
    for file in &stats.checksums {
        assert_eq!(
            stored_checksum(&bucket, &format!("tree/{}", file.path)).await,
            Some(file.crc64nvme.to_base64()),
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

    stores::fetch_tree(
        &resolver,
        &format!("gs://{bucket}/tree/"),
        &temp.path().join("downloaded"),
        &source,
        &sizes.map(|(path, _)| path),
    )
    .await;
    // The large object came down as three ranged GETs, answered by fake-gcs-server.
    let ranged = shim
        .log()
        .into_iter()
        .filter(|logged| logged.method == "GET" && logged.range.is_some())
        .count();
    assert_eq!(ranged, 3);

    // A single file, to an exact name and back.
    stores::round_trip_one(
        &resolver,
        &source.join("dir/small.bin"),
        &format!("gs://{bucket}/single/copy.bin"),
        &temp.path().join("single"),
    )
    .await;
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
    stores::listings_and_deletions(&resolver, &format!("gs://{bucket}/"), temp.path()).await;
}

#[tokio::test]
async fn missing_objects_and_buckets_are_not_found() {
    let (shim, bucket) = setup("missing").await;
    let resolver = resolver(config(&shim));
    let temp = tempfile::tempdir().unwrap();

    stores::missing_objects_and_buckets(
        &resolver,
        &format!("gs://{bucket}/"),
        &format!("gs://{bucket}-absent/"),
        "bucket",
        temp.path(),
    )
    .await;
    write(&temp.path().join("file.txt"), b"data");
    let error = resolver
        .put(
            &temp.path().join("file.txt"),
            &uri(&format!("gs://{bucket}-absent/key.txt")),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(
        error.to_string().contains("the bucket does not exist"),
        "{}",
        error.report()
    );
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
        stores::assert_never_shown(error, &[marker]);
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
    // Interrupted once a part has arrived: before that, the backend may not have the upload's
    // id yet (the answer to the initiation may still be on its way), and a dropped request
    // cannot abort what it never heard of.
    let started = async {
        while !shim.log().iter().any(|logged| logged.handling == "part") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        result = backend.put(&source, &target) => {
            panic!("the upload finished before it could be interrupted: {result:?}")
        }
        () = started => {}
    }
    assert_eq!(shim.open_uploads(), 1);
    wait_until("the dropped upload to be aborted", || {
        shim.open_uploads() == 0
    })
    .await;
    let error = resolver(config(&shim))
        .list(&target, false)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "no object may appear");
    assert!(shim.log().iter().any(|logged| logged.handling == "abort"));
}

#[tokio::test]
async fn progress_counts_multipart_uploads_ranged_downloads_and_trees() {
    let (shim, bucket) = setup("progress").await;
    let progress = Progress::new();
    let backend = GcsBackend::new(small_parts(&shim))
        .unwrap()
        .with_progress(progress.clone());
    let resolver = resolver_with(Scheme::Gs, backend);
    let temp = tempfile::tempdir().unwrap();
    stores::progress_counts_trees_parts_and_ranges(
        &resolver,
        &progress,
        &format!("gs://{bucket}/"),
        temp.path(),
    )
    .await;
}

#[test]
fn the_default_resolver_has_gs() {
    assert!(Resolver::default().schemes().contains(&Scheme::Gs));
}
