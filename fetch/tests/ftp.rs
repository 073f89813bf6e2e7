//! The ftp backend against a real FTP server (pyftpdlib on 127.0.0.1, one per test): get of a
//! file and of a directory (MLSD, and LIST when the server has no MLSD), put through a
//! temporary name and a rename, list, delete, checksums, errors and credentials.

mod support;

use std::fs;
use std::path::Path;

use herd_fetch::{ErrorKind, FtpBackend, Resolver, Scheme, crc64nvme, crc64nvme_file};

use support::ftp_server::{FtpServer, PASSWORD};
use support::{FAST_RETRY, content, resolver_with, tree, uri, write};

fn resolver() -> Resolver {
    resolver_with(Scheme::Ftp, FtpBackend::with_retry(FAST_RETRY))
}

/// `root/pub/`: a.txt, sub/b.txt, sub/deeper/c.txt (empty), sub/big.bin.
fn seed(root: &Path) -> Vec<u8> {
    let big = content(700_000, 11);
    write(&root.join("pub/a.txt"), b"123456789");
    write(&root.join("pub/sub/b.txt"), b"Hello, World!");
    write(&root.join("pub/sub/deeper/c.txt"), b"");
    write(&root.join("pub/sub/big.bin"), &big);
    big
}

async fn gets_a_file_and_a_directory(server: &FtpServer) {
    let big = seed(&server.root);
    let resolver = resolver();
    let temp = tempfile::tempdir().unwrap();

    let fetched = resolver
        .fetch(&uri(&server.anonymous_url("pub/a.txt")), temp.path())
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["a.txt"]);
    assert_eq!(
        fetched.stats.checksums[0].crc64nvme.to_base64(),
        "rosUhgp5mIg="
    );

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
    assert_eq!(
        files,
        vec![("b.txt", 13), ("big.bin", 700_000), ("deeper/c.txt", 0)]
    );
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
    assert_eq!(
        tree(temp.path()),
        vec!["a.txt", "b.txt", "big.bin", "deeper/", "deeper/c.txt"]
    );

    // Listings, recursive and not.
    let entries = resolver
        .list(&uri(&server.anonymous_url("pub/")), true)
        .await
        .unwrap();
    let listed: Vec<(&str, u64)> = entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a.txt", 9),
            ("sub/b.txt", 13),
            ("sub/big.bin", 700_000),
            ("sub/deeper/c.txt", 0)
        ]
    );
    assert_eq!(entries[1].uri, uri(&server.anonymous_url("pub/sub/b.txt")));
    let entries = resolver
        .list(&uri(&server.anonymous_url("pub/")), false)
        .await
        .unwrap();
    let listed: Vec<(&str, bool)> = entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.is_dir()))
        .collect();
    assert_eq!(listed, vec![("a.txt", false), ("sub/", true)]);
    let single = resolver
        .list(&uri(&server.anonymous_url("pub/sub/b.txt")), false)
        .await
        .unwrap();
    assert_eq!((single[0].path.as_str(), single[0].size), ("b.txt", 13));

    // Mistakes.
    let error = resolver
        .fetch(&uri(&server.anonymous_url("pub/sub")), temp.path())
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
        .fetch(&uri(&server.anonymous_url("pub/a.txt/")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri, "{error}");
    for missing in ["pub/missing.txt", "nothing/", "pub/nothing/"] {
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
        vec!["a.txt", "b.txt", "big.bin", "deeper/", "deeper/c.txt"],
        "failed fetches leave nothing"
    );
}

#[tokio::test]
async fn get_and_list_with_mlsd() {
    let server = FtpServer::start();
    gets_a_file_and_a_directory(&server).await;
    assert!(
        server.log().contains("MLSD"),
        "the server offers MLSD: it is used"
    );
}

#[tokio::test]
async fn get_and_list_with_list_when_the_server_has_no_mlsd() {
    let server = FtpServer::start_without_mlsd();
    gets_a_file_and_a_directory(&server).await;
    let log = server.log();
    assert!(log.contains("LIST"), "{log}");
    assert!(!log.contains("MLSD"), "{log}");
}

#[tokio::test]
async fn put_list_get_and_delete_a_tree() {
    let server = FtpServer::start();
    let resolver = resolver();
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("source");
    let big = content(400_000, 12);
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("sub/b.txt"), b"Hello, World!");
    write(&source.join("sub/deeper/c.txt"), b"");
    write(&source.join("sub/big.bin"), &big);
    let base = uri(&server.url("runs/r1/"));

    let stats = resolver.put(&source, &base).await.unwrap();
    let sums: Vec<(&str, String)> = stats
        .checksums
        .iter()
        .map(|file| (file.path.as_str(), file.crc64nvme.to_base64()))
        .collect();
    assert_eq!(
        sums,
        vec![
            ("a.txt", "rosUhgp5mIg=".to_owned()),
            ("sub/b.txt", "1Km+Qyat0k0=".to_owned()),
            ("sub/big.bin", crc64nvme(&big).to_base64()),
            ("sub/deeper/c.txt", "AAAAAAAAAAA=".to_owned()),
        ]
    );
    assert_eq!(stats.bytes, 9 + 13 + 400_000);
    assert_eq!(
        tree(&server.root),
        vec![
            "runs/",
            "runs/r1/",
            "runs/r1/a.txt",
            "runs/r1/sub/",
            "runs/r1/sub/b.txt",
            "runs/r1/sub/big.bin",
            "runs/r1/sub/deeper/",
            "runs/r1/sub/deeper/c.txt"
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

    // A file to an exact name (replacing one), and under a directory uri.
    write(&local.path().join("new.txt"), b"Hello, World!");
    let stats = resolver
        .put(
            &local.path().join("new.txt"),
            &uri(&server.url("runs/r1/a.txt")),
        )
        .await
        .unwrap();
    assert_eq!(stats.checksums[0].path, "a.txt");
    assert_eq!(
        fs::read(server.root.join("runs/r1/a.txt")).unwrap(),
        b"Hello, World!"
    );
    let stats = resolver
        .put(
            &local.path().join("new.txt"),
            &uri(&server.url("runs/other/")),
        )
        .await
        .unwrap();
    assert_eq!(stats.checksums[0].path, "new.txt");
    assert!(server.root.join("runs/other/new.txt").is_file());

    // Read it back as the writable user.
    let target = local.path().join("target");
    let fetched = resolver.fetch(&base, &target).await.unwrap();
    assert_eq!(fetched.items, vec!["a.txt", "sub"]);
    assert_eq!(fs::read(target.join("sub/big.bin")).unwrap(), big);

    // Deletions: a file, a directory's files only, then everything; missing things succeed.
    resolver
        .delete(&uri(&server.url("runs/other/new.txt")), false)
        .await
        .unwrap();
    assert!(!server.root.join("runs/other/new.txt").exists());
    resolver
        .delete(&uri(&server.url("runs/other/new.txt")), false)
        .await
        .unwrap();
    let error = resolver
        .delete(&uri(&server.url("runs/r1")), true)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    resolver
        .delete(&uri(&server.url("runs/r1/sub/")), false)
        .await
        .unwrap();
    assert_eq!(
        tree(&server.root.join("runs/r1/sub")),
        vec!["deeper/", "deeper/c.txt"],
        "a non-recursive delete keeps sub-directories"
    );
    resolver.delete(&base, true).await.unwrap();
    assert!(!server.root.join("runs/r1").exists());
    resolver.delete(&base, true).await.unwrap();
    assert_eq!(
        resolver
            .delete(&uri(&server.url("")), true)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unsafe
    );
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
