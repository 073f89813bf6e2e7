//! The steps of the `Backend` contract: one behaviour suite, run on every backend, local
//! (`tests/it/behaviour.rs`, which includes this file) and remote (`tests/s3.rs`,
//! `tests/azure.rs`, `tests/gcs.rs`). It needs `write` and `tree` from the support module it
//! is part of.

use std::fs;
use std::path::Path;

use herd_fetch::{ErrorKind, Resolver, Uri};

use super::{tree, write};

/// The known CRC64NVME values (base64, as S3 shows them).
pub const CRC_123456789: &str = "rosUhgp5mIg=";
pub const CRC_EMPTY: &str = "AAAAAAAAAAA=";
pub const CRC_HELLO: &str = "1Km+Qyat0k0=";

/// Runs the contract against `base`, a directory URI that does not exist yet; `local` is a scratch
/// directory.
pub async fn suite(resolver: &Resolver, base: &Uri, local: &Path) {
    assert!(base.is_dir());
    let source = local.join("source");
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("sub/b.txt"), b"Hello, World!");
    write(&source.join("sub/deeper/c.txt"), b"");

    // Listing something that does not exist.
    assert_eq!(
        resolver.list(base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Upload a tree.
    let stats = resolver.put(&source, base).await.unwrap();
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
    let entries = resolver.list(base, true).await.unwrap();
    let listed: Vec<(&str, u64)> = entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.size))
        .collect();
    assert_eq!(
        listed,
        vec![("a.txt", 9), ("sub/b.txt", 13), ("sub/deeper/c.txt", 0)]
    );
    assert_eq!(entries[1].uri, base.join("sub/b.txt").unwrap());
    let entries = resolver.list(base, false).await.unwrap();
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
    assert_eq!(
        listed_paths(resolver, base).await,
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
    assert_eq!(
        listed_paths(resolver, base).await,
        vec!["renamed.txt", "single/a.txt", "sub/deeper/c.txt"]
    );
    resolver.delete(base, true).await.unwrap();
    assert_eq!(
        resolver.list(base, true).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// The paths of everything under `base`, recursively.
async fn listed_paths(resolver: &Resolver, base: &Uri) -> Vec<String> {
    resolver
        .list(base, true)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.path)
        .collect()
}
