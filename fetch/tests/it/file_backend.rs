//! FileBackend on real files: copies with checksums, directory trees, and no partial file ever
//! left under a final name.

use std::fs;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use herd_fetch::{AtomicFile, Backend, ErrorKind, FileBackend, FileChecksum, Uri};

use crate::support::{CRC_123456789, CRC_EMPTY, CRC_HELLO, dir_uri, file_uri, tree, write};

fn checksums(stats: &herd_fetch::TransferStats) -> Vec<(String, u64, String)> {
    stats
        .checksums
        .iter()
        .map(
            |FileChecksum {
                 path,
                 size,
                 crc64nvme,
             }| (path.clone(), *size, crc64nvme.to_base64()),
        )
        .collect()
}

#[tokio::test]
async fn copies_a_file_with_its_checksum_and_mode() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("src/check.txt");
    write(&source, b"123456789");
    fs::set_permissions(&source, fs::Permissions::from_mode(0o750)).unwrap();
    let destination = temp.path().join("dest/deeper");

    let stats = FileBackend::new()
        .get(&file_uri(&source, ""), &destination)
        .await
        .unwrap();

    assert_eq!(stats.files, 1);
    assert_eq!(stats.bytes, 9);
    assert_eq!(
        checksums(&stats),
        vec![("check.txt".to_owned(), 9, CRC_123456789.to_owned())]
    );
    let copied = destination.join("check.txt");
    assert_eq!(fs::read(&copied).unwrap(), b"123456789");
    assert_eq!(
        fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o750
    );
    assert_eq!(
        tree(&destination),
        vec!["check.txt"],
        "no temporary file left"
    );
}

#[tokio::test]
async fn copies_a_directory_tree_preserving_its_layout() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("src");
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("sub/empty"), b"");
    write(&source.join("sub/deeper/hello.txt"), b"Hello, World!");
    let destination = temp.path().join("dest");

    let stats = FileBackend::new()
        .get(&dir_uri(&source), &destination)
        .await
        .unwrap();

    assert_eq!(stats.files, 3);
    assert_eq!(stats.bytes, 22);
    assert_eq!(
        checksums(&stats),
        vec![
            ("a.txt".to_owned(), 9, CRC_123456789.to_owned()),
            ("sub/deeper/hello.txt".to_owned(), 13, CRC_HELLO.to_owned()),
            ("sub/empty".to_owned(), 0, CRC_EMPTY.to_owned()),
        ]
    );
    assert_eq!(
        tree(&destination),
        vec![
            "a.txt",
            "sub/",
            "sub/deeper/",
            "sub/deeper/hello.txt",
            "sub/empty"
        ]
    );
    for checksum in &stats.checksums {
        let on_disk = herd_fetch::crc64nvme_file(destination.join(&checksum.path)).unwrap();
        assert_eq!(on_disk, checksum.crc64nvme.to_base64(), "{}", checksum.path);
    }
}

#[tokio::test]
async fn never_follows_symbolic_links_in_a_source_tree_and_reports_them() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("src");
    write(&source.join("real/file"), b"123456789");
    write(&temp.path().join("outside/secret"), b"secret");
    std::os::unix::fs::symlink("real/file", source.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/herd", source.join("dangling")).unwrap();
    std::os::unix::fs::symlink(temp.path().join("outside"), source.join("out")).unwrap();
    std::os::unix::fs::symlink("..", source.join("real/up")).unwrap();
    let destination = temp.path().join("dest");
    let stats = FileBackend::new()
        .get(&dir_uri(&source), &destination)
        .await
        .unwrap();
    assert_eq!(stats.files, 1, "only the regular file");
    assert_eq!(
        fs::read(destination.join("real/file")).unwrap(),
        b"123456789"
    );
    for name in ["link", "dangling", "out", "real/up"] {
        assert!(
            fs::symlink_metadata(destination.join(name)).is_err(),
            "{name}"
        );
    }
    let skipped: Vec<String> = stats.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "dangling is a symbolic link: not transferred",
            "link is a symbolic link: not transferred",
            "out is a symbolic link: not transferred",
            "real/up is a symbolic link: not transferred",
        ]
    );
}

#[tokio::test]
async fn a_directory_needs_its_trailing_slash_and_a_file_must_not_have_one() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("src");
    write(&source.join("a.txt"), b"x");
    let destination = temp.path().join("dest");

    let error = FileBackend::new()
        .get(&file_uri(&source, ""), &destination)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert_eq!(
        error.to_string(),
        format!(
            "`{}` is a directory: end the uri with `/` to transfer it recursively",
            source.display()
        )
    );

    let error = FileBackend::new()
        .get(&dir_uri(&source.join("a.txt")), &destination)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert_eq!(
        error.to_string(),
        format!(
            "`{}` is not a directory: remove the trailing `/` to name a file",
            source.join("a.txt").display()
        )
    );
    assert!(!destination.exists());
}

#[tokio::test]
async fn a_missing_source_is_not_found() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("missing.txt");
    let error = FileBackend::new()
        .get(&file_uri(&missing, ""), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read `{}`: it does not exist; check the path",
            missing.display()
        )
    );
    assert!(!error.kind().is_retryable());
}

/// A source that fails after some bytes, like a network filesystem whose file vanishes mid-read.
struct VanishingSource {
    remaining: usize,
}

impl Read for VanishingSource {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "stale file handle"));
        }
        let count = buffer.len().min(self.remaining);
        buffer[..count].fill(b'x');
        self.remaining -= count;
        Ok(count)
    }
}

#[test]
fn a_source_vanishing_mid_copy_leaves_no_file() {
    let temp = tempfile::tempdir().unwrap();
    let final_path = temp.path().join("out/data.bin");
    let mut file = AtomicFile::create(&final_path).unwrap();
    let error = io::copy(&mut VanishingSource { remaining: 3 << 20 }, &mut file).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    let during = tree(&temp.path().join("out"));
    assert_eq!(
        during.len(),
        1,
        "only the temporary file exists while copying: {during:?}"
    );
    assert!(during[0].starts_with(".herd-partial-"), "{during:?}");
    assert!(
        !final_path.exists(),
        "nothing under the final name before the commit"
    );
    drop(file);
    assert_eq!(
        tree(&temp.path().join("out")),
        Vec::<String>::new(),
        "the temporary file is gone"
    );
}

#[test]
fn an_atomic_file_appears_only_when_committed() {
    let temp = tempfile::tempdir().unwrap();
    let final_path = temp.path().join("hello.txt");
    write(&final_path, b"old content");
    let mut file = AtomicFile::create(&final_path).unwrap();
    file.write_all(b"Hello, World!").unwrap();
    assert_eq!(
        fs::read(&final_path).unwrap(),
        b"old content",
        "the old file stays until the commit"
    );
    let (checksum, length) = file.commit().unwrap();
    assert_eq!((checksum.to_base64().as_str(), length), (CRC_HELLO, 13));
    assert_eq!(fs::read(&final_path).unwrap(), b"Hello, World!");
    assert_eq!(tree(temp.path()), vec!["hello.txt"]);
}

#[tokio::test]
async fn a_source_changing_size_while_copied_leaves_no_file() {
    // /proc files report a size of 0 and then yield bytes: exactly what a file being written by
    // another process looks like to a copy.
    let temp = tempfile::tempdir().unwrap();
    let uri = Uri::parse("file:///proc/self/status").unwrap();
    let error = FileBackend::new().get(&uri, temp.path()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io);
    let message = error.to_string();
    assert!(
        message.starts_with(
            "`/proc/self/status` changed size while it was copied (0 bytes when opened, "
        ),
        "{message}"
    );
    assert!(
        message.ends_with("read): something is still writing it; retry once it is complete"),
        "{message}"
    );
    assert!(error.kind().is_retryable());
    assert_eq!(
        tree(temp.path()),
        Vec::<String>::new(),
        "neither the file nor a temporary file is left"
    );
}

#[tokio::test]
async fn an_unwritable_destination_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("src");
    write(&source.join("a.txt"), b"123456789");
    write(&source.join("b.txt"), b"Hello, World!");

    // The destination's parent is a file: nothing can be created.
    let blocker = temp.path().join("blocker");
    write(&blocker, b"i am a file");
    let error = FileBackend::new()
        .get(&file_uri(&source.join("a.txt"), ""), &blocker.join("dest"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io);
    assert_eq!(
        error.to_string(),
        format!(
            "cannot create the directory `{}`",
            blocker.join("dest").display()
        )
    );
    assert_eq!(fs::read(&blocker).unwrap(), b"i am a file");

    // The final name is taken by a directory: the data is written, the rename fails, the
    // temporary file is removed, the directory is untouched.
    let destination = temp.path().join("dest");
    write(&destination.join("b.txt/keep"), b"keep me");
    let error = FileBackend::new()
        .get(&dir_uri(&source), &destination)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io);
    assert_eq!(
        error.to_string(),
        format!(
            "cannot write `{}`: a directory is in the way; remove it or choose another destination",
            destination.join("b.txt").display()
        )
    );
    assert_eq!(
        tree(&destination),
        vec!["a.txt", "b.txt/", "b.txt/keep"],
        "no temporary file, no partial b.txt"
    );
}

#[tokio::test]
async fn a_read_only_destination_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("a.txt");
    write(&source, b"123456789");
    let destination = temp.path().join("readonly");
    fs::create_dir(&destination).unwrap();
    fs::set_permissions(&destination, fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores permission bits: only check what can be checked.
    let enforced = fs::File::create(destination.join("probe")).is_err();
    let result = FileBackend::new()
        .get(&file_uri(&source, ""), &destination)
        .await;
    fs::set_permissions(&destination, fs::Permissions::from_mode(0o755)).unwrap();
    if enforced {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert_eq!(tree(&destination), Vec::<String>::new());
    } else {
        let _ = fs::remove_file(destination.join("probe"));
        result.unwrap();
        assert_eq!(tree(&destination), vec!["a.txt"]);
    }
}

#[tokio::test]
async fn put_uploads_a_file_or_a_tree() {
    let temp = tempfile::tempdir().unwrap();
    let output = temp.path().join("output");
    write(&output.join("result.txt"), b"Hello, World!");
    write(&output.join("logs/run.log"), b"");
    let store = temp.path().join("store");

    let stats = FileBackend::new()
        .put(&output, &file_uri(&store.join("task1"), ""))
        .await
        .unwrap();
    assert_eq!(
        checksums(&stats),
        vec![
            ("logs/run.log".to_owned(), 0, CRC_EMPTY.to_owned()),
            ("result.txt".to_owned(), 13, CRC_HELLO.to_owned())
        ]
    );
    assert_eq!(
        tree(&store),
        vec![
            "task1/",
            "task1/logs/",
            "task1/logs/run.log",
            "task1/result.txt"
        ]
    );

    let stats = FileBackend::new()
        .put(&output.join("result.txt"), &dir_uri(&store.join("single")))
        .await
        .unwrap();
    assert_eq!(
        checksums(&stats),
        vec![("result.txt".to_owned(), 13, CRC_HELLO.to_owned())]
    );
    let stats = FileBackend::new()
        .put(
            &output.join("result.txt"),
            &file_uri(&store.join("renamed.txt"), ""),
        )
        .await
        .unwrap();
    assert_eq!(
        checksums(&stats),
        vec![("renamed.txt".to_owned(), 13, CRC_HELLO.to_owned())]
    );
    assert_eq!(
        fs::read(store.join("single/result.txt")).unwrap(),
        b"Hello, World!"
    );
    assert_eq!(
        fs::read(store.join("renamed.txt")).unwrap(),
        b"Hello, World!"
    );
}

#[tokio::test]
async fn delete_refuses_the_root_directory() {
    let error = FileBackend::new()
        .delete(&Uri::parse("/").unwrap(), true)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsafe);
    assert_eq!(
        error.to_string(),
        "refusing to delete `/`: it is the root directory"
    );
    assert!(Path::new("/etc").exists());
}

#[tokio::test]
async fn a_dropped_transfer_leaves_no_temporary_file() {
    // A download timeout drops the future: the blocking copy notices and cleans up.
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("big.bin");
    write(&source, &vec![7u8; 64 << 20]);
    let destination = temp.path().join("dest");
    let uri = file_uri(&source, "");
    let backend = FileBackend::new();
    let transfer = backend.get(&uri, &destination);
    let _ = tokio::time::timeout(std::time::Duration::from_micros(1), transfer).await;
    // The blocking thread finishes (or aborts) shortly after; wait for the directory to settle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let entries = tree(&destination);
        // 64 MiB cannot be copied within the timer's first tick: the copy is always cut short.
        if entries.is_empty() {
            break;
        }
        assert!(
            !entries.contains(&"big.bin".to_owned()),
            "the cancelled copy completed: {entries:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "temporary file still there: {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
