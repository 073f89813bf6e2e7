//! The azure backend against `support::azure_server`, a contract fake of the Azure Blob REST
//! API on 127.0.0.1 (Azurite, the emulator, is an npm package and npm is out of reach here; the
//! fake's module documentation says what it implements). The fake checks every SharedKey
//! signature, so these tests also prove the credentials path.
//!
//! It runs the contract (`support/contract.rs`) and the steps every object store shares
//! (`support/stores.rs`), and checks what the fake shows of them: the CRC64NVME stored as
//! `x-ms-meta-crc64nvme` and verified on download, blocks and ranged downloads, pages and blob
//! batches, anonymous access.

mod support;

use std::fs;

use herd_fetch::azure::{Config, Credentials};
use herd_fetch::{
    AzureBackend, Backend as _, CHECKSUM_METADATA, ErrorKind, Progress, Resolver, Scheme, Secret,
    crc64nvme,
};

use support::azure_server::AzureServer;
use support::{FAST_RETRY, content, contract, paths, resolver_with, stores, tree, uri, write};

const MIB: u64 = 1024 * 1024;
const ACCOUNT: &str = "herdtest";

fn config(server: &AzureServer) -> Config {
    Config {
        account: Some(server.account.clone()),
        credentials: Credentials::AccessKey(Secret::new(&server.key)),
        endpoint: Some(server.endpoint()),
        retry: FAST_RETRY,
        ..Config::default()
    }
}

/// Blocks and ranges of 5 MiB from 5 MiB on.
fn small_parts(server: &AzureServer) -> Config {
    Config {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        concurrency: 3,
        ..config(server)
    }
}

fn resolver(config: Config) -> Resolver {
    resolver_with(Scheme::Azure, AzureBackend::new(config).unwrap())
}

#[tokio::test]
async fn azure_backend_follows_the_contract() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    let temp = tempfile::tempdir().unwrap();
    contract::suite(
        &resolver(config(&server)),
        &uri("azure://data/store/"),
        temp.path(),
        contract::Capabilities::READ_WRITE,
    )
    .await;
    assert!(server.blob_names("data").is_empty());
}

#[tokio::test]
async fn files_and_trees_round_trip_with_their_crc64nvme_stored_as_metadata() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    let resolver = resolver(small_parts(&server));
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

    let stats = stores::put_tree(&resolver, &source, "azure://data/tree/", sizes.len()).await;
    for file in &stats.checksums {
        let blob = server.blob("data", &format!("tree/{}", file.path)).unwrap();
        assert_eq!(
            blob.metadata.get(CHECKSUM_METADATA),
            Some(&file.crc64nvme.to_base64()),
            "{}",
            file.path
        );
        assert_eq!(blob.content, fs::read(source.join(&file.path)).unwrap());
    }
    // The large file went up as three blocks and one block list; the others in one request
    // each (names that need encoding are signed and stored as they are).
    let log = server.log();
    let blocks = log
        .iter()
        .filter(|logged| logged.target.contains("comp=block&"))
        .count();
    assert_eq!(blocks, 3, "{log:#?}");
    assert_eq!(
        log.iter()
            .filter(|logged| logged.target.contains("comp=blocklist"))
            .count(),
        1
    );

    stores::fetch_tree(
        &resolver,
        "azure://data/tree/",
        &temp.path().join("downloaded"),
        &source,
        &sizes.map(|(path, _)| path),
    )
    .await;
    // The large blob came down as ranges pinned to its etag.
    let ranged: Vec<_> = server
        .log()
        .into_iter()
        .filter(|logged| logged.method == "GET" && logged.range.is_some())
        .collect();
    assert_eq!(ranged.len(), 3, "{ranged:#?}");
    assert!(ranged.iter().all(|logged| logged.status == 206));

    // A single file, to an exact name and back.
    stores::round_trip_one(
        &resolver,
        &source.join("dir/deeper/odd.bin"),
        "azure://data/single/copy.bin",
        &temp.path().join("single"),
    )
    .await;
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_stored_checksum_fails_and_leaves_nothing() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    let temp = tempfile::tempdir().unwrap();
    let small = content(1000, 1);
    let large = content(11 * MIB as usize, 2);
    write(&temp.path().join("small.bin"), &small);
    write(&temp.path().join("large.bin"), &large);
    let backend = AzureBackend::new(small_parts(&server)).unwrap();
    for name in ["small.bin", "large.bin"] {
        let uri = uri(&format!("azure://data/{name}"));
        backend.put(&temp.path().join(name), &uri).await.unwrap();
        server.corrupt("data", name, 500);
        let destination = temp.path().join(format!("target-{name}"));
        let error = backend.get(&uri, &destination).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Checksum, "{}", error.report());
        assert!(error.kind().is_retryable());
        assert!(
            error.to_string().contains("stored checksum"),
            "{}",
            error.report()
        );
        assert!(tree(&destination).is_empty(), "{:?}", tree(&destination));
    }
    // A blob written by another tool, without the metadata, downloads unchecked.
    server.insert(
        "data",
        "foreign.txt",
        b"Hello, World!",
        &[("owner", "someone")],
    );
    let fetched = resolver(config(&server))
        .fetch(
            &uri("azure://data/foreign.txt"),
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
async fn listings_and_deletions_go_page_by_page() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    // Two names per List Blobs page.
    let resolver = resolver(Config {
        batch_size: 2,
        ..config(&server)
    });
    let temp = tempfile::tempdir().unwrap();
    stores::listings_and_deletions(&resolver, "azure://data/", temp.path()).await;
    let log = server.log();
    let pages = log
        .iter()
        .filter(|logged| logged.target.contains("comp=list") && logged.target.contains("marker="))
        .count();
    assert!(pages >= 4, "{pages} follow-up pages");
    // Everything was deleted in blob batches.
    assert!(server.blob_names("data").is_empty());
    assert!(
        log.iter()
            .any(|logged| logged.target.contains("comp=batch") && logged.status == 202)
    );
}

#[tokio::test]
async fn missing_blobs_and_containers_are_not_found() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    let resolver = resolver(config(&server));
    let temp = tempfile::tempdir().unwrap();

    stores::missing_objects_and_buckets(
        &resolver,
        "azure://data/",
        "azure://absent/",
        "container",
        temp.path(),
    )
    .await;
    write(&temp.path().join("file.txt"), b"data");
    let error = resolver
        .put(
            &temp.path().join("file.txt"),
            &uri("azure://absent/blob.txt"),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(error.to_string().contains("the container does not exist"));
    assert_eq!(tree(temp.path()), vec!["file.txt"]);
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_server_and_never_shown() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    server.insert("data", "file.txt", b"data", &[]);
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("file.txt"), b"data");

    // A well-formed key of the right length that is not the account's.
    let wrong_key = "V3JvbmdLZXlUaGF0TXVzdE5ldmVyQmVTaG93bldyb25nS2V5VGhhdE11c3ROZXZlcg==";
    let resolver = resolver(Config {
        credentials: Credentials::AccessKey(Secret::new(wrong_key)),
        ..config(&server)
    });
    let errors = stores::denied_everywhere(
        &resolver,
        "azure://data/",
        temp.path(),
        &[wrong_key, &server.key],
    )
    .await;
    for error in errors {
        assert!(
            error.to_string().contains("AZURE_STORAGE_ACCOUNT_KEY"),
            "{error}"
        );
    }
    assert!(
        server.log().iter().any(|logged| logged.status == 403),
        "the server refused the signature"
    );
    // The blob is still there, untouched.
    assert_eq!(server.blob("data", "file.txt").unwrap().content, b"data");
}

#[tokio::test]
async fn anonymous_access_reads_public_containers_only() {
    let server = AzureServer::start(ACCOUNT).await;
    server.make_public("public");
    server.insert("public", "open.txt", b"123456789", &[]);
    server.create_container("private");
    server.insert("private", "closed.txt", b"secret", &[]);
    let resolver = resolver(Config {
        credentials: Credentials::Anonymous,
        ..config(&server)
    });
    let temp = tempfile::tempdir().unwrap();
    let fetched = resolver
        .fetch(&uri("azure://public/open.txt"), temp.path())
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["open.txt"]);
    let listed = resolver.list(&uri("azure://public/"), true).await.unwrap();
    assert_eq!(paths(&listed), vec!["open.txt"]);

    let error = resolver
        .list(&uri("azure://private/"), true)
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::PermissionDenied,
        "{}",
        error.report()
    );
    let error = resolver
        .put(
            &temp.path().join("open.txt"),
            &uri("azure://public/new.txt"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::PermissionDenied,
        "{}",
        error.report()
    );
    assert!(server.blob("public", "new.txt").is_none());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_io_error_that_names_the_setting() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resolver = resolver(Config {
        account: Some(ACCOUNT.to_owned()),
        credentials: Credentials::Anonymous,
        endpoint: Some(format!("http://127.0.0.1:{port}/{ACCOUNT}")),
        retry: FAST_RETRY,
        ..Config::default()
    });
    let error = resolver
        .list(&uri("azure://data/"), true)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
    assert!(error.kind().is_retryable());
    assert!(error.to_string().contains("HERD_AZURE_ENDPOINT"), "{error}");
}

#[tokio::test]
async fn progress_counts_block_uploads_ranged_downloads_and_trees() {
    let server = AzureServer::start(ACCOUNT).await;
    server.create_container("data");
    let progress = Progress::new();
    let backend = AzureBackend::new(small_parts(&server))
        .unwrap()
        .with_progress(progress.clone());
    let resolver = resolver_with(Scheme::Azure, backend);
    let temp = tempfile::tempdir().unwrap();
    stores::progress_counts_trees_parts_and_ranges(
        &resolver,
        &progress,
        "azure://data/",
        temp.path(),
    )
    .await;
}

#[test]
fn the_default_resolver_has_azure() {
    assert!(Resolver::default().schemes().contains(&Scheme::Azure));
}
