//! The resolver: schemes without a backend, actions where they do not belong, and a fake
//! backend plugged in for a remote scheme without changing the caller.

use std::fs;
use std::sync::Arc;

use herd_fetch::{ErrorKind, MemoryBackend, Resolver, Scheme, Uri};

use crate::support::{CRC_123456789, TarEntry, gzip, tar, tree, write};

#[tokio::test]
async fn schemes_without_a_backend_say_so() {
    let resolver = Resolver::default();
    assert_eq!(
        resolver.schemes(),
        vec![
            Scheme::File,
            Scheme::S3,
            Scheme::Http,
            Scheme::Https,
            Scheme::Ftp,
            Scheme::Azure,
            Scheme::Gs,
            Scheme::RunFastq
        ]
    );
    let temp = tempfile::tempdir().unwrap();
    let cases = [(
        "fasp://era-fasp@host:/vol1/x",
        "fasp:// is not available in this build of herd yet; it will need IBM Aspera's `ascp` program on the worker; meanwhile download with `ascp` yourself and pass the local path",
    )];
    for (text, expected) in cases {
        let uri = Uri::parse(text).unwrap();
        let error = resolver.fetch(&uri, temp.path()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{text}");
        assert_eq!(error.to_string(), expected);
        assert_eq!(
            resolver.list(&uri, true).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            resolver.delete(&uri, false).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            resolver.put(temp.path(), &uri).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
    assert_eq!(
        resolver
            .backend(Scheme::Fasp)
            .err()
            .map(|error| error.kind()),
        Some(ErrorKind::Unsupported)
    );
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn actions_are_refused_outside_downloads() {
    let temp = tempfile::tempdir().unwrap();
    let resolver = Resolver::default();
    let uri = Uri::parse(&format!("{}/out/|gunzip", temp.path().display())).unwrap();
    let error = resolver.put(temp.path(), &uri).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert_eq!(
        error.to_string(),
        format!(
            "`|gunzip` in `{}/out/|gunzip`: actions apply to downloads only, not to uploads; remove it",
            temp.path().display()
        )
    );
    assert_eq!(
        resolver.list(&uri, true).await.unwrap_err().kind(),
        ErrorKind::InvalidUri
    );
    assert_eq!(
        resolver.delete(&uri, true).await.unwrap_err().kind(),
        ErrorKind::InvalidUri
    );
}

#[tokio::test]
async fn a_registered_backend_serves_its_scheme_with_actions() {
    // What a later S3 backend will do, played by the in-memory fake: the caller does not change.
    let store = MemoryBackend::new();
    store.insert(
        "refs/db.tar.gz",
        gzip(&tar(&[TarEntry::File("db/check", b"123456789")])),
    );
    let mut resolver = Resolver::default();
    resolver.register(Scheme::S3, Arc::new(store.clone()));
    let temp = tempfile::tempdir().unwrap();

    let uri = Uri::parse("s3://refs/db.tar.gz|untar|mv:v1").unwrap();
    let fetched = resolver.fetch(&uri, temp.path()).await.unwrap();

    assert_eq!(fetched.items, vec!["v1"]);
    assert_eq!(fetched.stats.files, 1);
    assert_eq!(tree(temp.path()), vec!["v1/", "v1/db/", "v1/db/check"]);
    assert_eq!(
        herd_fetch::crc64nvme_file(temp.path().join("v1/db/check")).unwrap(),
        CRC_123456789
    );

    write(&temp.path().join("out/result.txt"), b"123456789");
    let stats = resolver
        .put(
            &temp.path().join("out"),
            &Uri::parse("s3://results/task-1/").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), CRC_123456789);
    assert_eq!(
        store.object("results/task-1/result.txt").unwrap(),
        b"123456789"
    );
    assert_eq!(
        fs::read(temp.path().join("out/result.txt")).unwrap(),
        b"123456789"
    );
}

#[tokio::test]
async fn object_names_that_would_escape_the_download_directory_are_refused() {
    let store = MemoryBackend::new();
    store.insert("bucket/dir/../../escape", b"owned".to_vec());
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::S3, Arc::new(store));
    let temp = tempfile::tempdir().unwrap();
    let target = temp.path().join("t");
    let error = resolver
        .fetch(&Uri::parse("s3://bucket/dir/").unwrap(), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsafe);
    assert!(
        error.to_string().starts_with(
            "refusing to download the object `../../escape`: its name would land outside `"
        ),
        "{error}"
    );
    assert_eq!(tree(temp.path()), vec!["t/"]);
}
