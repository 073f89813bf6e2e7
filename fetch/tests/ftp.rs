//! The ftp backend against a real FTP server (pyftpdlib on 127.0.0.1, one per test): the
//! contract (`support/contract.rs`) with MLSD, and with LIST when the server has no MLSD; then
//! what only FTP has: anonymous read-only access, uploads through a temporary name and a
//! rename, the root never deleted, resumption with REST, credentials kept out of messages.

mod support;

use std::fs;

use herd_fetch::{ErrorKind, FtpBackend, Resolver, Scheme, crc64nvme, crc64nvme_file};

use support::contract::{self, Capabilities};
use support::ftp_server::{FtpServer, PASSWORD};
use support::{FAST_RETRY, content, resolver_with, tree, uri, write};

fn resolver() -> Resolver {
    resolver_with(Scheme::Ftp, FtpBackend::with_retry(FAST_RETRY))
}

/// The contract on `server`, as the writable user, in `store/`; nothing is left there.
async fn follows_the_contract(server: &FtpServer) {
    let temp = tempfile::tempdir().unwrap();
    let base = uri(&server.url("store/"));
    contract::suite(&resolver(), &base, temp.path(), Capabilities::READ_WRITE).await;
    assert!(!server.root.join("store").exists());
}

#[tokio::test]
async fn ftp_backend_follows_the_contract_with_mlsd() {
    let server = FtpServer::start();
    follows_the_contract(&server).await;
    assert!(
        server.log().contains("MLSD"),
        "the server offers MLSD: it is used"
    );
}

#[tokio::test]
async fn ftp_backend_follows_the_contract_with_list_when_the_server_has_no_mlsd() {
    let server = FtpServer::start_without_mlsd();
    follows_the_contract(&server).await;
    let log = server.log();
    assert!(log.contains("LIST"), "{log}");
    assert!(!log.contains("MLSD"), "{log}");
}

#[tokio::test]
async fn anonymous_reads_a_large_tree_and_mistakes_are_refused() {
    let server = FtpServer::start();
    let big = content(700_000, 11);
    write(&server.root.join("pub/a.txt"), b"123456789");
    write(&server.root.join("pub/sub/b.txt"), b"Hello, World!");
    write(&server.root.join("pub/sub/big.bin"), &big);
    let resolver = resolver();
    let temp = tempfile::tempdir().unwrap();

    let fetched = resolver
        .fetch(&uri(&server.anonymous_url("pub/sub/")), temp.path())
        .await
        .unwrap();
    let files: Vec<(&str, u64)> = fetched
        .stats
        .checksums
        .iter()
        .map(|file| (file.path.as_str(), file.size))
        .collect();
    assert_eq!(files, vec![("b.txt", 13), ("big.bin", 700_000)]);
    for file in &fetched.stats.checksums {
        let local = temp.path().join(&file.path);
        assert_eq!(
            file.crc64nvme.to_base64(),
            crc64nvme_file(&local).unwrap(),
            "{}",
            file.path
        );
        assert_eq!(
            fs::read(&local).unwrap(),
            fs::read(server.root.join("pub/sub").join(&file.path)).unwrap()
        );
    }
    assert_eq!(fetched.stats.checksums[1].crc64nvme, crc64nvme(&big));

    // A file named as a directory, and directories that do not exist.
    let error = resolver
        .fetch(&uri(&server.anonymous_url("pub/a.txt/")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri, "{error}");
    for missing in ["nothing/", "pub/nothing/"] {
        let error = resolver
            .fetch(&uri(&server.anonymous_url(missing)), temp.path())
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::NotFound,
            "{missing}: {}",
            error.report()
        );
        assert_eq!(
            resolver
                .list(&uri(&server.anonymous_url(missing)), true)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
    assert_eq!(
        tree(temp.path()),
        vec!["b.txt", "big.bin"],
        "failed fetches leave nothing"
    );
}

#[tokio::test]
async fn uploads_go_through_a_temporary_name_and_the_root_is_never_deleted() {
    let server = FtpServer::start();
    let resolver = resolver();
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("source");
    let big = content(400_000, 12);
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("sub/big.bin"), &big);
    let base = uri(&server.url("runs/r1/"));

    let stats = resolver.put(&source, &base).await.unwrap();
    assert_eq!(stats.checksums[1].crc64nvme, crc64nvme(&big));
    assert_eq!(stats.bytes, 9 + 400_000);
    assert_eq!(
        tree(&server.root),
        vec![
            "runs/",
            "runs/r1/",
            "runs/r1/a.txt",
            "runs/r1/sub/",
            "runs/r1/sub/big.bin",
        ],
        "no temporary name is left on the server"
    );
    assert_eq!(
        fs::read(server.root.join("runs/r1/sub/big.bin")).unwrap(),
        big
    );
    let log = server.log();
    assert!(
        log.contains("STOR") && log.contains(".herd-partial-upload-"),
        "uploads go to a temporary name"
    );
    assert!(
        log.contains("RNFR") && log.contains("RNTO"),
        "then are renamed"
    );

    // A file to an exact name replaces the one there.
    write(&local.path().join("new.txt"), b"Hello, World!");
    resolver
        .put(
            &local.path().join("new.txt"),
            &uri(&server.url("runs/r1/a.txt")),
        )
        .await
        .unwrap();
    assert_eq!(
        fs::read(server.root.join("runs/r1/a.txt")).unwrap(),
        b"Hello, World!"
    );

    assert_eq!(
        resolver
            .delete(&uri(&server.url("")), true)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unsafe
    );
    assert!(server.root.join("runs/r1/a.txt").exists());
}

#[tokio::test]
async fn refusals_and_credentials() {
    let server = FtpServer::start();
    write(&server.root.join("pub/a.txt"), b"123456789");
    let resolver = resolver();
    let local = tempfile::tempdir().unwrap();
    write(&local.path().join("x.txt"), b"x");

    // Anonymous may read, not write.
    let error = resolver
        .put(
            &local.path().join("x.txt"),
            &uri(&server.anonymous_url("pub/x.txt")),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::PermissionDenied,
        "{}",
        error.report()
    );
    assert!(!server.root.join("pub/x.txt").exists());

    // A wrong password: refused, and never shown.
    let wrong = format!(
        "ftp://herd:bad-{PASSWORD}@{}",
        server.url("pub/a.txt").split_once('@').unwrap().1
    );
    let error = resolver
        .fetch(&uri(&wrong), local.path())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::PermissionDenied,
        "{}",
        error.report()
    );
    let shown = format!("{} | {error:?}", error.report());
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("herd:***@"), "{shown}");

    // Every other error keeps the password out too.
    let errors = [
        resolver
            .fetch(&uri(&server.url("pub/missing.txt")), local.path())
            .await
            .unwrap_err(),
        resolver
            .list(&uri(&server.url("pub/a.txt/")), false)
            .await
            .unwrap_err(),
        resolver
            .delete(&uri(&server.url("pub/a.txt/")), false)
            .await
            .unwrap_err(),
    ];
    for error in errors {
        let shown = format!("{} | {error:?}", error.report());
        assert!(!shown.contains(PASSWORD), "{shown}");
    }

    // Nothing listens: a connection error, retried, password hidden.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = resolver
        .fetch(
            &uri(&format!("ftp://herd:{PASSWORD}@127.0.0.1:{port}/a.txt")),
            local.path(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
    assert!(
        error.to_string().contains("gave up after 3 failed tries"),
        "{error}"
    );
    assert!(!error.report().contains(PASSWORD), "{}", error.report());
    assert_eq!(tree(local.path()), vec!["x.txt"]);
}

#[tokio::test]
async fn a_broken_download_resumes_with_rest() {
    let server = FtpServer::start_cutting_downloads_after(300_000);
    let body = content(1_000_000, 21);
    write(&server.root.join("runs/reads.fq.gz"), &body);
    let temp = tempfile::tempdir().unwrap();

    let fetched = resolver()
        .fetch(&uri(&server.anonymous_url("runs/reads.fq.gz")), temp.path())
        .await
        .unwrap();
    assert_eq!(fs::read(temp.path().join("reads.fq.gz")).unwrap(), body);
    assert_eq!(fetched.stats.checksums[0].crc64nvme, crc64nvme(&body));
    assert_eq!(tree(temp.path()), vec!["reads.fq.gz"]);

    // The first RETR broke; the second asked for the rest with REST.
    let log = server.log();
    let retrievals = log.matches("<- RETR runs/reads.fq.gz").count();
    assert_eq!(retrievals, 2, "{log}");
    let offsets: Vec<u64> = log
        .lines()
        .filter_map(|line| line.split("REST ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(offsets.len(), 1, "{log}");
    assert!(offsets[0] > 0 && offsets[0] <= 300_000, "{log}");
}

#[tokio::test]
async fn progress_counts_a_resumed_download_and_an_upload() {
    let server = FtpServer::start_cutting_downloads_after(200_000);
    let body = content(600_000, 22);
    write(&server.root.join("in/reads.fq"), &body);
    let progress = herd_fetch::Progress::new();
    let backend = FtpBackend::with_retry(FAST_RETRY).with_progress(progress.clone());
    let resolver = resolver_with(Scheme::Ftp, backend);
    let temp = tempfile::tempdir().unwrap();

    resolver
        .fetch(&uri(&server.url("in/reads.fq")), temp.path())
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (1, 1));
    assert_eq!((now.bytes_expected, now.bytes_done), (600_000, 600_000));

    resolver
        .put(&temp.path().join("reads.fq"), &uri(&server.url("out/")))
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (2, 2));
    assert_eq!((now.bytes_expected, now.bytes_done), (1_200_000, 1_200_000));
    assert_eq!(fs::read(server.root.join("out/reads.fq")).unwrap(), body);
}
