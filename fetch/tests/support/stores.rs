//! Steps that the tests of the object-store backends (`tests/s3.rs`, `tests/azure.rs`,
//! `tests/gcs.rs`) share beyond the contract: each runs on a resolver for one store and checks
//! what every store must do the same way; the test around it adds what only its store can show
//! (stored checksums, request logs, open uploads).

use std::fs;
use std::path::Path;

use herd_fetch::{Error, ErrorKind, Progress, Resolver, TransferStats, crc64nvme_file};

use super::{content, paths, tree, uri, write};

const MIB: u64 = 1024 * 1024;

/// Writes `files` (relative path, size) under `source`, each with its own content.
pub fn write_files(source: &Path, files: &[(&str, usize)]) {
    for (index, (path, size)) in files.iter().enumerate() {
        write(&source.join(path), &content(*size, index as u64));
    }
}

/// Uploads the tree `source` (of `count` files) to the directory URI `base` and checks that the
/// CRC64NVME of every file uploaded is the local file's; returns what the upload reported.
pub async fn put_tree(
    resolver: &Resolver,
    source: &Path,
    base: &str,
    count: usize,
) -> TransferStats {
    let stats = resolver.put(source, &uri(base)).await.unwrap();
    assert_eq!(stats.files, count as u64);
    for file in &stats.checksums {
        let local = crc64nvme_file(source.join(&file.path)).unwrap();
        assert_eq!(file.crc64nvme.to_base64(), local, "{}", file.path);
    }
    stats
}

/// Downloads the directory URI `base` into `target` and checks each of `files` against the
/// same file under `source`: content and CRC64NVME.
pub async fn fetch_tree(
    resolver: &Resolver,
    base: &str,
    target: &Path,
    source: &Path,
    files: &[&str],
) {
    let fetched = resolver.fetch(&uri(base), target).await.unwrap();
    assert_eq!(fetched.stats.files, files.len() as u64);
    for path in files {
        assert_eq!(
            fs::read(target.join(path)).unwrap(),
            fs::read(source.join(path)).unwrap(),
            "{path}"
        );
        assert_eq!(
            crc64nvme_file(target.join(path)).unwrap(),
            crc64nvme_file(source.join(path)).unwrap(),
            "{path}"
        );
    }
}

/// Uploads the local file `source` to the exact name `object` and downloads it again into
/// `target`: same content, and both transfers report the local file's CRC64NVME, which is
/// returned.
pub async fn round_trip_one(
    resolver: &Resolver,
    source: &Path,
    object: &str,
    target: &Path,
) -> String {
    let object = uri(object);
    let local = crc64nvme_file(source).unwrap();
    let stats = resolver.put(source, &object).await.unwrap();
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), local);
    let fetched = resolver.fetch(&object, target).await.unwrap();
    let name = object.file_name().unwrap();
    assert_eq!(fetched.items, vec![name]);
    assert_eq!(fetched.stats.checksums[0].crc64nvme.to_base64(), local);
    assert_eq!(
        fs::read(target.join(name)).unwrap(),
        fs::read(source).unwrap()
    );
    local
}

/// Nine files under `{root}p/`, through a resolver whose listing pages (and deletion batches,
/// where the store has them) hold two keys: recursive and non-recursive listings, the whole
/// bucket, a prefix named without its slash, a download of every page, then deletions of the
/// prefix's own files and of everything. `root` is the URI of an existing, empty bucket
/// (`s3://bucket/`).
pub async fn listings_and_deletions(resolver: &Resolver, root: &str, local: &Path) {
    let source = local.join("source");
    let files = [
        "a1", "a2", "a3", "b/1", "b/2", "b/3", "c/d/1", "c/d/2", "e/1",
    ];
    for file in files {
        write(&source.join(file), file.as_bytes());
    }
    let base = uri(&format!("{root}p/"));
    resolver.put(&source, &base).await.unwrap();

    let listed = resolver.list(&base, true).await.unwrap();
    assert_eq!(paths(&listed), files.to_vec());
    let listed = resolver.list(&base, false).await.unwrap();
    assert_eq!(paths(&listed), vec!["a1", "a2", "a3", "b/", "c/", "e/"]);
    assert!(listed[3].is_dir());
    assert_eq!(listed[3].uri, uri(&format!("{root}p/b/")));
    // The whole bucket, and a prefix named without its slash.
    let listed = resolver.list(&uri(root), false).await.unwrap();
    assert_eq!(paths(&listed), vec!["p/"]);
    let listed = resolver
        .list(&uri(&format!("{root}p/b")), true)
        .await
        .unwrap();
    assert_eq!(paths(&listed), vec!["1", "2", "3"]);

    // A download of every page.
    let fetched = resolver.fetch(&base, &local.join("target")).await.unwrap();
    assert_eq!(fetched.stats.files, files.len() as u64);

    // Non-recursive: only the files directly under the prefix; then everything.
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

/// Objects missing from `root`, an existing bucket, and from `missing_root`, a bucket that does
/// not exist (called a `word`: "bucket", "container"): downloads and listings are
/// [`ErrorKind::NotFound`] with messages that say so, and deleting them succeeds. Writes
/// nothing under `local`.
pub async fn missing_objects_and_buckets(
    resolver: &Resolver,
    root: &str,
    missing_root: &str,
    word: &str,
    local: &Path,
) {
    let missing = uri(&format!("{root}no/such/key.txt"));
    let error = resolver.fetch(&missing, local).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert_eq!(
        error.to_string(),
        format!("`{missing}` does not exist: check the uri")
    );
    assert!(!error.kind().is_retryable());
    let error = resolver.list(&missing, false).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    let error = resolver
        .fetch(&uri(&format!("{root}no/")), local)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert_eq!(
        error.to_string(),
        format!("nothing under `{root}no/`: check the uri")
    );

    let in_missing_bucket = uri(&format!("{missing_root}key.txt"));
    let error = resolver.fetch(&in_missing_bucket, local).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
    assert!(
        error
            .to_string()
            .contains(&format!("the {word} does not exist")),
        "{}",
        error.report()
    );
    // Deleting what does not exist succeeds, as on every backend.
    resolver.delete(&in_missing_bucket, false).await.unwrap();
    resolver.delete(&uri(missing_root), true).await.unwrap();
    resolver.delete(&missing, false).await.unwrap();
}

/// Every operation on `{root}file.txt` and on `root` through a resolver whose credentials the
/// store refuses: each fails with [`ErrorKind::PermissionDenied`], says to check the
/// credentials, and never shows any of `secrets`; nothing is downloaded into `local/target`.
/// `local/file.txt` must exist. Returns the errors, for what the store's messages add.
pub async fn denied_everywhere(
    resolver: &Resolver,
    root: &str,
    local: &Path,
    secrets: &[&str],
) -> Vec<Error> {
    let file = uri(&format!("{root}file.txt"));
    let prefix = uri(root);
    let target = local.join("target");
    let errors = vec![
        resolver.fetch(&file, &target).await.unwrap_err(),
        resolver.fetch(&prefix, &target).await.unwrap_err(),
        resolver
            .put(&local.join("file.txt"), &file)
            .await
            .unwrap_err(),
        resolver.list(&prefix, true).await.unwrap_err(),
        resolver.delete(&file, false).await.unwrap_err(),
        resolver.delete(&prefix, true).await.unwrap_err(),
    ];
    for error in &errors {
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
        assert_never_shown(error, secrets);
    }
    assert!(!target.exists() || tree(&target).is_empty());
    errors
}

/// `error`'s message, report and `Debug` show none of `secrets`.
pub fn assert_never_shown(error: &Error, secrets: &[&str]) {
    for shown in [error.to_string(), error.report(), format!("{error:?}")] {
        for secret in secrets {
            assert!(!shown.contains(secret), "a secret leaked: {shown}");
        }
    }
}

/// `progress` counts, through `resolver` (a backend with 5 MiB parts, built with `progress`),
/// a tree uploaded to `{root}tree/` (an 11 MiB file in three parts and a small one), the tree
/// downloaded (the large file by ranges), and the large file downloaded alone: every file and
/// every byte once, announced before it moves.
pub async fn progress_counts_trees_parts_and_ranges(
    resolver: &Resolver,
    progress: &Progress,
    root: &str,
    local: &Path,
) {
    let big = 11 * MIB + 7;
    write(&local.join("up/big.bin"), &content(big as usize, 5));
    write(&local.join("up/small/a.txt"), b"123456789");
    let total = big + 9;

    let tree_uri = uri(&format!("{root}tree/"));
    resolver.put(&local.join("up"), &tree_uri).await.unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (2, 2));
    assert_eq!((now.bytes_expected, now.bytes_done), (total, total));

    resolver
        .fetch(&tree_uri, &local.join("down"))
        .await
        .unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (4, 4));
    assert_eq!((now.bytes_expected, now.bytes_done), (2 * total, 2 * total));

    let single = uri(&format!("{root}tree/big.bin"));
    resolver.fetch(&single, &local.join("one")).await.unwrap();
    let now = progress.snapshot();
    assert_eq!((now.files_expected, now.files_done), (5, 5));
    assert_eq!(now.bytes_done, 2 * total + big);
    assert_eq!(now.bytes_expected, now.bytes_done);
}
