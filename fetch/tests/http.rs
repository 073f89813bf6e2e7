//! The http(s) backend against a real HTTP/1.1 server on 127.0.0.1: the contract
//! (`support/contract.rs`) as a read-only backend of single files, over http and over https;
//! then what only HTTP has: names from URLs, resumption after a cut, short bodies, statuses,
//! retries, credentials, TLS trust.

mod support;

use std::fs;
use std::sync::Arc;

use herd_fetch::{
    Backend as _, ErrorKind, HttpBackend, Resolver, Scheme, crc64nvme, crc64nvme_file,
};

use support::contract::{self, Capabilities};
use support::http_server::{HttpServer, Route};
use support::{FAST_RETRY, content, resolver_with, tree, uri};

fn resolver() -> Resolver {
    let backend = Arc::new(HttpBackend::with_retry(FAST_RETRY));
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::Http, backend.clone());
    resolver.register(Scheme::Https, backend);
    resolver
}

/// Serves the contract's tree under `/store/` and runs the contract there through `resolver`.
async fn follows_the_contract(server: &HttpServer, resolver: &Resolver) {
    for (path, content) in contract::TREE {
        server.route(&format!("/store/{path}"), Route::File(content.to_vec()));
    }
    let temp = tempfile::tempdir().unwrap();
    let base = uri(&server.url("/store/"));
    contract::suite(resolver, &base, temp.path(), Capabilities::READ_FILES).await;
    assert!(
        server.log().iter().all(|logged| logged.method != "PUT"),
        "a read-only backend never writes"
    );
}

#[tokio::test]
async fn http_backend_follows_the_contract_read_only() {
    let server = HttpServer::start().await;
    follows_the_contract(&server, &resolver()).await;
}

#[tokio::test]
async fn https_backend_follows_the_contract_read_only() {
    let server = HttpServer::start_tls().await;
    follows_the_contract(&server, &https_resolver(trusting_the_test_ca())).await;
}

#[tokio::test]
async fn a_file_is_downloaded_with_its_checksum() {
    let server = HttpServer::start().await;
    let body = content(300_000, 1);
    server.route("/data/reads.fastq.gz", Route::File(body.clone()));
    server.route("/data/my%20notes.txt", Route::File(b"123456789".to_vec()));
    let temp = tempfile::tempdir().unwrap();

    let fetched = resolver()
        .fetch(&uri(&server.url("/data/reads.fastq.gz")), temp.path())
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["reads.fastq.gz"]);
    let path = temp.path().join("reads.fastq.gz");
    assert_eq!(fs::read(&path).unwrap(), body);
    let file = &fetched.stats.checksums[0];
    assert_eq!((file.path.as_str(), file.size), ("reads.fastq.gz", 300_000));
    assert_eq!(file.crc64nvme, crc64nvme(&body));
    assert_eq!(file.crc64nvme.to_base64(), crc64nvme_file(&path).unwrap());

    // The name is percent-decoded; a query is not part of it.
    let fetched = resolver()
        .fetch(
            &uri(&server.url("/data/my%20notes.txt?version=2")),
            temp.path(),
        )
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["my notes.txt"]);
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        "rosUhgp5mIg="
    );
    assert_eq!(tree(temp.path()), vec!["my notes.txt", "reads.fastq.gz"]);
}

#[tokio::test]
async fn a_cut_transfer_resumes_with_a_range() {
    let server = HttpServer::start().await;
    let body = content(500_000, 2);
    server.route(
        "/cut.bin",
        Route::CutOnce {
            body: body.clone(),
            after: 123_456,
            honour_range: true,
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let fetched = resolver()
        .fetch(&uri(&server.url("/cut.bin")), temp.path())
        .await
        .unwrap();
    assert_eq!(fs::read(temp.path().join("cut.bin")).unwrap(), body);
    assert_eq!(fetched.stats.checksums[0].crc64nvme, crc64nvme(&body));
    let requests = server.requests_to("/cut.bin");
    let ranges: Vec<(Option<&str>, u16)> = requests
        .iter()
        .map(|logged| (logged.range.as_deref(), logged.status))
        .collect();
    assert_eq!(ranges, vec![(None, 200), (Some("bytes=123456-"), 206)]);
    assert_eq!(tree(temp.path()), vec!["cut.bin"]);
}

#[tokio::test]
async fn a_server_that_ignores_the_range_is_downloaded_again_from_zero() {
    let server = HttpServer::start().await;
    let body = content(200_000, 3);
    server.route(
        "/norange.bin",
        Route::CutOnce {
            body: body.clone(),
            after: 50_000,
            honour_range: false,
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let fetched = resolver()
        .fetch(&uri(&server.url("/norange.bin")), temp.path())
        .await
        .unwrap();
    assert_eq!(fs::read(temp.path().join("norange.bin")).unwrap(), body);
    assert_eq!(fetched.stats.checksums[0].crc64nvme, crc64nvme(&body));
    let statuses: Vec<u16> = server
        .requests_to("/norange.bin")
        .iter()
        .map(|logged| logged.status)
        .collect();
    assert_eq!(statuses, vec![200, 200]);
}

#[tokio::test]
async fn a_short_body_is_an_error_and_leaves_no_file() {
    let server = HttpServer::start().await;
    server.route(
        "/short.bin",
        Route::Short {
            body: content(1_000, 4),
            announced: 5_000,
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let error = resolver()
        .fetch(&uri(&server.url("/short.bin")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
    assert!(
        error.to_string().contains("1000 of 5000 bytes"),
        "{}",
        error.report()
    );
    assert!(
        error.to_string().contains("gave up after 3 failed tries"),
        "{error}"
    );
    assert_eq!(
        tree(temp.path()),
        Vec::<String>::new(),
        "no file, no partial file"
    );

    // Straight through the backend too: nothing under any name.
    let error = HttpBackend::with_retry(FAST_RETRY)
        .get(&uri(&server.url("/short.bin")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io);
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn statuses_map_to_error_kinds_and_server_errors_are_retried() {
    let server = HttpServer::start().await;
    server.route("/forbidden", Route::Status(403));
    server.route("/broken", Route::Status(500));
    server.route(
        "/flaky.txt",
        Route::FailThenServe {
            status: 503,
            failures: 2,
            body: b"Hello, World!".to_vec(),
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let resolver = resolver();
    let cases = [
        (
            "/missing.txt",
            ErrorKind::NotFound,
            "http 404 Not Found: it does not exist; check the url",
        ),
        (
            "/forbidden",
            ErrorKind::PermissionDenied,
            "http 403 Forbidden: access denied",
        ),
        (
            "/broken",
            ErrorKind::Io,
            "http 500 Internal Server Error: the server is unavailable or overloaded",
        ),
    ];
    for (path, kind, text) in cases {
        let error = resolver
            .fetch(&uri(&server.url(path)), temp.path())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), kind, "{path}: {}", error.report());
        assert!(error.to_string().contains(text), "{path}: {error}");
    }
    assert_eq!(
        server.requests_to("/missing.txt").len(),
        1,
        "404 is not retried"
    );
    assert_eq!(
        server.requests_to("/forbidden").len(),
        1,
        "403 is not retried"
    );
    assert_eq!(
        server.requests_to("/broken").len(),
        3,
        "500 is retried up to the policy"
    );

    let fetched = resolver
        .fetch(&uri(&server.url("/flaky.txt")), temp.path())
        .await
        .unwrap();
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        "1Km+Qyat0k0="
    );
    assert_eq!(server.requests_to("/flaky.txt").len(), 3);
    assert_eq!(tree(temp.path()), vec!["flaky.txt"]);
}

#[tokio::test]
async fn credentials_are_sent_and_never_shown() {
    let server = HttpServer::start().await;
    let password = "hunter2-Secret";
    server.route(
        "/private/data.txt",
        Route::BasicAuth {
            user: "alice".into(),
            password: password.into(),
            body: b"123456789".to_vec(),
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let resolver = resolver();

    let good = uri(&server.url_with_credentials("alice", password, "/private/data.txt"));
    let fetched = resolver.fetch(&good, temp.path()).await.unwrap();
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        "rosUhgp5mIg="
    );
    let sent = server.requests_to("/private/data.txt")[0]
        .authorization
        .clone();
    assert_eq!(sent.as_deref(), Some("Basic YWxpY2U6aHVudGVyMi1TZWNyZXQ="));

    let wrong_password = "wrong-Secret9";
    let port_closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cases = [
        (
            server.url_with_credentials("alice", wrong_password, "/private/data.txt"),
            ErrorKind::PermissionDenied,
        ),
        (
            server.url_with_credentials("alice", wrong_password, "/nothing/here.txt?sig=topsecret"),
            ErrorKind::NotFound,
        ),
        (
            format!("http://alice:{wrong_password}@127.0.0.1:{port_closed}/data.txt"),
            ErrorKind::Io,
        ),
    ];
    for (text, kind) in cases {
        let error = resolver.fetch(&uri(&text), temp.path()).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{}", error.report());
        let shown = format!("{} | {error:?}", error.report());
        assert!(!shown.contains(wrong_password), "{shown}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("alice:***@"), "{shown}");
    }
    assert_eq!(tree(temp.path()), vec!["data.txt"]);
}

#[tokio::test]
async fn listing_gives_the_size_and_writes_are_refused() {
    let server = HttpServer::start().await;
    server.route("/data/a.bin", Route::File(content(4_321, 5)));
    let resolver = resolver();
    let file = uri(&server.url("/data/a.bin"));
    let entries = resolver.list(&file, false).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].path.as_str(), entries[0].size),
        ("a.bin", 4_321)
    );
    assert_eq!(entries[0].uri, file);
    assert_eq!(server.requests_to("/data/a.bin")[0].method, "HEAD");
    assert_eq!(
        resolver
            .list(&uri(&server.url("/data/missing")), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    let temp = tempfile::tempdir().unwrap();
    let directory = uri(&server.url("/data/"));
    let error = resolver.fetch(&directory, temp.path()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert!(
        error.to_string().contains("http has no directory listing"),
        "{error}"
    );
    let error = resolver.put(temp.path(), &file).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.to_string().contains("read-only"), "{error}");
    let error = resolver.delete(&file, false).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(
        server.requests_to("/data/").len(),
        0,
        "refused before any request"
    );
}

#[tokio::test]
async fn the_default_resolver_has_http_https_ftp_and_run_fastq() {
    let schemes = Resolver::default().schemes();
    for scheme in [Scheme::Http, Scheme::Https, Scheme::Ftp, Scheme::RunFastq] {
        assert!(schemes.contains(&scheme), "{scheme} in {schemes:?}");
    }
}

fn https_resolver(config: herd_fetch::http::Config) -> Resolver {
    resolver_with(Scheme::Https, HttpBackend::with_config(config))
}

fn trusting_the_test_ca() -> herd_fetch::http::Config {
    herd_fetch::http::Config {
        retry: FAST_RETRY,
        ca_bundles: vec![support::http_server::tls_ca_path()],
    }
}

#[tokio::test]
async fn https_downloads_from_a_server_whose_ca_is_trusted_and_resumes() {
    let server = HttpServer::start_tls().await;
    assert!(server.url("/").starts_with("https://127.0.0.1:"));
    let body = content(400_000, 11);
    server.route("/secure/reads.fq", Route::File(body.clone()));
    server.route(
        "/secure/cut.bin",
        Route::CutOnce {
            body: body.clone(),
            after: 100_000,
            honour_range: true,
        },
    );
    let temp = tempfile::tempdir().unwrap();
    let resolver = https_resolver(trusting_the_test_ca());

    let fetched = resolver
        .fetch(&uri(&server.url("/secure/reads.fq")), temp.path())
        .await
        .unwrap();
    assert_eq!(fs::read(temp.path().join("reads.fq")).unwrap(), body);
    assert_eq!(fetched.stats.checksums[0].crc64nvme, crc64nvme(&body));

    // A transfer cut in the middle resumes over TLS with a range.
    resolver
        .fetch(&uri(&server.url("/secure/cut.bin")), temp.path())
        .await
        .unwrap();
    assert_eq!(fs::read(temp.path().join("cut.bin")).unwrap(), body);
    let ranges: Vec<_> = server
        .requests_to("/secure/cut.bin")
        .into_iter()
        .map(|logged| logged.range)
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=100000-".to_owned())]);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_once_and_says_how_to_trust_it() {
    let server = HttpServer::start_tls().await;
    server.route("/secure/reads.fq", Route::File(content(1000, 12)));
    let temp = tempfile::tempdir().unwrap();
    let resolver = https_resolver(herd_fetch::http::Config {
        retry: FAST_RETRY,
        ca_bundles: Vec::new(),
    });

    let error = resolver
        .fetch(&uri(&server.url("/secure/reads.fq")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("TLS certificate is not trusted"),
        "{message}"
    );
    assert!(message.contains("HERD_CA_BUNDLE"), "{message}");
    // No request got through the handshake, and nothing was retried or written.
    assert!(server.log().is_empty(), "{:?}", server.log());
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn an_unreadable_or_empty_ca_bundle_is_a_clear_error() {
    let temp = tempfile::tempdir().unwrap();
    let not_pem = temp.path().join("not-a-bundle.pem");
    fs::write(&not_pem, "hello\n").unwrap();
    for (bundle, expected) in [
        (temp.path().join("missing.pem"), "cannot read the CA bundle"),
        (not_pem, "holds no PEM certificate"),
    ] {
        let resolver = https_resolver(herd_fetch::http::Config {
            retry: FAST_RETRY,
            ca_bundles: vec![bundle.clone()],
        });
        let error = resolver
            .fetch(&uri("https://127.0.0.1:9/file"), temp.path())
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&bundle.display().to_string()), "{message}");
        assert!(message.contains("HERD_CA_BUNDLE"), "{message}");
    }
}

#[tokio::test]
async fn progress_counts_each_byte_once_when_a_download_starts_again() {
    let server = HttpServer::start().await;
    let body = content(300_000, 13);
    // The server ignores the range of the second try: the download starts again from zero.
    server.route(
        "/restart.bin",
        Route::CutOnce {
            body: body.clone(),
            after: 120_000,
            honour_range: false,
        },
    );
    let progress = herd_fetch::Progress::new();
    let backend = HttpBackend::with_retry(FAST_RETRY).with_progress(progress.clone());
    let resolver = resolver_with(Scheme::Http, backend);
    let temp = tempfile::tempdir().unwrap();

    resolver
        .fetch(&uri(&server.url("/restart.bin")), temp.path())
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (1, 1));
    assert_eq!((now.bytes_expected, now.bytes_done), (300_000, 300_000));
}
