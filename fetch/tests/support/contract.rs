//! The steps of the `Backend` contract and of the transfers the `Resolver` builds on it (copy,
//! download to a name, sync, checksums): one behaviour suite, run on every backend, local
//! (`tests/it/behaviour.rs`, which includes this file) and remote (`tests/s3.rs`,
//! `tests/azure.rs`, `tests/gcs.rs`, `tests/ftp.rs`, `tests/http.rs`). A backend declares its
//! [`Capabilities`]: the suite checks that what it lacks is refused, and says which steps it
//! skipped for that reason. It needs `write` and `tree` from the support module it is part of.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use herd_fetch::{ErrorKind, FileBackend, Filter, MemoryBackend, Resolver, Scheme, Uri};

use super::{tree, write};

/// The known CRC64NVME values (base64, as S3 shows them).
pub const CRC_123456789: &str = "rosUhgp5mIg=";
pub const CRC_EMPTY: &str = "AAAAAAAAAAA=";
pub const CRC_HELLO: &str = "1Km+Qyat0k0=";

/// The files the suite works on, relative to the base URI: a writable backend gets them
/// uploaded by the suite; a read-only one must serve them under the base already.
pub const TREE: [(&str, &[u8]); 3] = [
    ("a.txt", b"123456789"),
    ("sub/b.txt", b"Hello, World!"),
    ("sub/deeper/c.txt", b""),
];

/// What a backend can do. The suite runs the steps of every capability a backend has; for one
/// it lacks, it checks that the operation is refused as unsupported or invalid, and prints
/// which steps it skipped and why (never silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Uploads and deletions.
    pub writes: bool,
    /// Directories: recursive downloads, listings of a prefix.
    pub directories: bool,
}

impl Capabilities {
    /// Everything: file, memory, object stores, ftp.
    pub const READ_WRITE: Capabilities = Capabilities {
        writes: true,
        directories: true,
    };
    /// Single files to read, nothing else: http(s).
    pub const READ_FILES: Capabilities = Capabilities {
        writes: false,
        directories: false,
    };
}

fn skipped(base: &Uri, steps: &str, missing: &str) {
    eprintln!(
        "contract on {}: skipped {steps}: the backend has no {missing} (its capabilities say so)",
        base.redacted()
    );
}

/// A local path as a URI, a folder when `path` ends with `/`.
fn local(path: &Path) -> Uri {
    Uri::parse(&path.display().to_string()).unwrap()
}

/// Runs the contract against `base`, a directory URI: one that does not exist yet for a
/// writable backend, one that serves [`TREE`] for a read-only one. `local` is a scratch
/// directory.
pub async fn suite(resolver: &Resolver, base: &Uri, local: &Path, can: Capabilities) {
    assert!(base.is_dir());
    let source = local.join("source");
    for (path, content) in TREE {
        write(&source.join(path), content);
    }

    if can.writes {
        // Listing something that does not exist.
        assert_eq!(
            resolver.list(base, true).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        upload_tree(resolver, base, &source).await;
    } else {
        skipped(base, "uploads and deletions", "writes");
        let error = resolver.put(&source, base).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{}", error.report());
        let error = resolver
            .delete(&base.join("a.txt").unwrap(), false)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{}", error.report());
    }
    if can.directories {
        lists_directories(resolver, base).await;
    } else {
        skipped(base, "listings and downloads of directories", "directories");
        let target = local.join("refused");
        let error = resolver.fetch(base, &target).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri, "{}", error.report());
        assert!(tree(&target).is_empty());
    }

    // Download a file, and a directory.
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
    let mut downloaded = vec!["a.txt"];
    if can.directories {
        let fetched = resolver
            .fetch(&base.join("sub/").unwrap(), &target)
            .await
            .unwrap();
        assert_eq!(fetched.items, vec!["b.txt", "deeper"]);
        downloaded = vec!["a.txt", "b.txt", "deeper/", "deeper/c.txt"];
        assert_eq!(tree(&target), downloaded);
        assert_eq!(fs::read(target.join("b.txt")).unwrap(), b"Hello, World!");

        // A directory without its slash.
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
    }
    // Something missing.
    let error = resolver
        .fetch(&base.join("missing.txt").unwrap(), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert_eq!(tree(&target), downloaded, "failed fetches leave nothing");

    transfers(resolver, base, local, can).await;
    if can.writes {
        uploads_and_deletions(resolver, base, &source).await;
    }
}

/// Uploads [`TREE`] from `source` to `base` and checks what the upload reports. Symbolic
/// links (to a file and a folder outside `source`) and a fifo put beside it are left out and
/// reported, never followed (the listings that follow show nothing else arrived), and removed
/// again.
async fn upload_tree(resolver: &Resolver, base: &Uri, source: &Path) {
    let outside = source.with_file_name("outside");
    write(&outside.join("secret"), b"marker-secret");
    std::os::unix::fs::symlink(outside.join("secret"), source.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, source.join("sub/linked")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(source.join("fifo"))
        .status();
    assert!(fifo.unwrap().success());
    let stats = resolver.put(source, base).await.unwrap();
    for hostile in ["link", "sub/linked", "fifo"] {
        fs::remove_file(source.join(hostile)).unwrap();
    }
    let skipped: Vec<String> = stats.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "fifo is a fifo, a socket or a device: not transferred",
            "link is a symbolic link: not transferred",
            "sub/linked is a symbolic link: not transferred",
        ]
    );
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
}

/// Listings of [`TREE`] under `base`, recursive and not.
async fn lists_directories(resolver: &Resolver, base: &Uri) {
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
}

/// Uploads of single files, then deletions, down to nothing under `base`.
async fn uploads_and_deletions(resolver: &Resolver, base: &Uri, source: &Path) {
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

/// The transfers the resolver builds on the backend: copies to a local name and into a local
/// folder, a real OS failure reported with its reason, checksums, copies to another backend and
/// back (remote to remote), within the backend, sync both ways with filters. Whatever it writes
/// in the backend, it removes.
async fn transfers(resolver: &Resolver, base: &Uri, scratch: &Path, can: Capabilities) {
    let out = scratch.join("transfers");
    let file = base.join("a.txt").unwrap();

    // To a local file name (parents created, no staging left), and into a local folder.
    let stats = resolver
        .copy(&file, &local(&out.join("renamed/b.txt")))
        .await
        .unwrap();
    assert_eq!(stats.files, 1);
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), CRC_123456789);
    assert_eq!(fs::read(out.join("renamed/b.txt")).unwrap(), b"123456789");
    assert_eq!(tree(&out.join("renamed")), vec!["b.txt"], "no staging left");
    resolver
        .copy(&file, &local(&out.join("folder/")))
        .await
        .unwrap();
    assert_eq!(fs::read(out.join("folder/a.txt")).unwrap(), b"123456789");
    // An existing folder, named without its slash, is copied into.
    resolver
        .copy(&file, &local(&out.join("folder")))
        .await
        .unwrap();
    assert_eq!(tree(&out.join("folder")), vec!["a.txt"]);

    // A real OS failure: under a regular file there can be no file. The kind, the path and
    // the operating system's reason all reach the report.
    let under_a_file = out.join("renamed/b.txt/deeper/c.txt");
    let error = resolver
        .copy(&file, &local(&under_a_file))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{}", error.report());
    let report = herd_fetch::error_chain(&error);
    assert!(
        report.contains(&out.join("renamed/b.txt").display().to_string()),
        "{report}"
    );
    assert!(report.contains("Not a directory"), "{report}");
    assert!(
        !error.to_string().contains("Not a directory"),
        "the cause is a source, not text"
    );
    assert_eq!(tree(&out.join("renamed")), vec!["b.txt"]);

    // Checksums of a file: a local one read in place (its path as given), a remote one
    // downloaded to a temporary directory that goes away (its name).
    let sums = resolver.checksums(&file).await.unwrap();
    let sums: Vec<(String, u64, String)> = sums
        .into_iter()
        .map(|sum| (sum.path, sum.size, sum.crc64nvme.to_base64()))
        .collect();
    let shown = file
        .local_path()
        .map_or("a.txt".to_owned(), |path| path.display().to_string());
    assert_eq!(sums, vec![(shown, 9, CRC_123456789.to_owned())]);

    // Remote to remote: to another backend (an in-memory store), and back when writable.
    let other_scheme = if base.scheme() == Scheme::Gs {
        Scheme::Azure
    } else {
        Scheme::Gs
    };
    let other = MemoryBackend::new();
    let mut both = resolver.clone();
    both.register(other_scheme, Arc::new(other.clone()));
    // Syncs list local folders too: the resolvers of the remote tests have no file backend.
    if resolver.backend(Scheme::File).is_err() {
        both.register(Scheme::File, Arc::new(FileBackend::new()));
    }
    let elsewhere = Uri::parse(&format!("{other_scheme}://elsewhere/copied.txt")).unwrap();
    let stats = both.copy(&file, &elsewhere).await.unwrap();
    assert_eq!(stats.checksums[0].crc64nvme.to_base64(), CRC_123456789);
    assert_eq!(other.object("elsewhere/copied.txt").unwrap(), b"123456789");

    if can.directories {
        // A folder cannot be downloaded to one name: refused, nothing left.
        let error = resolver
            .download_to(&base.join("sub/").unwrap(), &out.join("one-name"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri, "{}", error.report());
        assert!(
            error
                .to_string()
                .contains("end the destination with / to copy into a folder"),
            "{error}"
        );
        assert_eq!(
            tree(&out),
            vec!["folder/", "folder/a.txt", "renamed/", "renamed/b.txt"]
        );

        // Sync the backend's folder (named without its slash) into a local one; again, which
        // copies nothing; then a file of another size is copied again, through globs.
        let synced = out.join("synced/");
        let stats = both
            .sync(
                &base.join("sub").unwrap(),
                &local(&synced),
                &Filter::default(),
            )
            .await
            .unwrap();
        assert_eq!((stats.files, stats.bytes), (2, 13));
        assert_eq!(tree(&synced), vec!["b.txt", "deeper/", "deeper/c.txt"]);
        let stats = both
            .sync(
                &base.join("sub/").unwrap(),
                &local(&synced),
                &Filter::default(),
            )
            .await
            .unwrap();
        assert_eq!(stats.files, 0, "nothing missing, nothing copied");
        write(&synced.join("b.txt"), b"short");
        write(&synced.join("deeper/c.txt"), b"longer than before");
        let only_b = Filter::new(vec!["*.txt".to_owned()], vec!["c.*".to_owned()]);
        let stats = both
            .sync(&base.join("sub/").unwrap(), &local(&synced), &only_b)
            .await
            .unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(fs::read(synced.join("b.txt")).unwrap(), b"Hello, World!");
        assert_eq!(
            fs::read(synced.join("deeper/c.txt")).unwrap(),
            b"longer than before"
        );
    } else {
        skipped(
            base,
            "download_to of a folder and sync from the backend",
            "directories",
        );
        let error = both
            .sync(base, &local(&out.join("synced/")), &Filter::default())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri, "{}", error.report());
    }

    if !can.writes {
        skipped(base, "copies and syncs into the backend", "writes");
        let error = both
            .copy(&elsewhere, &base.join("copies/back.txt").unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{}", error.report());
        return;
    }
    let copies = base.join("copies/").unwrap();
    // From the other backend back, from a local file, and within the backend.
    both.copy(&elsewhere, &copies.join("back.txt").unwrap())
        .await
        .unwrap();
    let source = scratch.join("source");
    resolver
        .copy(
            &local(&source.join("a.txt")),
            &copies.join("up.txt").unwrap(),
        )
        .await
        .unwrap();
    let stats = resolver
        .copy(
            &copies.join("up.txt").unwrap(),
            &copies.join("again/").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stats.checksums[0].path, "up.txt");
    // Sync a local folder into the backend: `sub/*` takes sub/b.txt, not what is deeper.
    let only_sub = Filter::new(vec!["sub/*".to_owned()], Vec::new());
    let stats = both
        .sync(&local(&source), &copies.join("synced").unwrap(), &only_sub)
        .await
        .unwrap();
    assert_eq!(stats.files, 1);
    assert_eq!(
        listed_paths(resolver, &copies).await,
        vec!["again/up.txt", "back.txt", "synced/sub/b.txt", "up.txt"]
    );
    for path in ["again/up.txt", "back.txt", "up.txt"] {
        let sums = resolver
            .checksums(&copies.join(path).unwrap())
            .await
            .unwrap();
        assert_eq!(sums[0].crc64nvme.to_base64(), CRC_123456789, "{path}");
    }
    resolver.delete(&copies, true).await.unwrap();
    assert_eq!(
        resolver.list(&copies, true).await.unwrap_err().kind(),
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
