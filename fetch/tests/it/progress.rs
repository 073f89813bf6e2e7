//! Progress counters: what `herd fetch` draws its bars from. Each file is announced with its
//! size before or as it moves, and bytes count once even when a transfer is retried.

use herd_fetch::progress::Snapshot;
use herd_fetch::{Progress, Resolver, Uri};

use crate::support::write;

#[tokio::test]
async fn a_tree_copied_through_the_resolver_is_counted_file_by_file() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    write(&source.join("a.txt"), &[b'a'; 1000]);
    write(&source.join("sub/b.txt"), &[b'b'; 2500]);
    write(&source.join("sub/deeper/c.txt"), b"");
    let progress = Progress::new();
    let resolver = Resolver::with_progress(progress.clone());

    let uri = Uri::parse(&format!("{}/", source.display())).unwrap();
    resolver
        .fetch(&uri, &temp.path().join("copy"))
        .await
        .unwrap();
    let expected = Snapshot {
        files_expected: 3,
        files_done: 3,
        bytes_expected: 3500,
        bytes_done: 3500,
    };
    assert_eq!(progress.snapshot(), expected);

    // The same counters go on adding up over the next transfer (an upload, here).
    let single = Uri::parse(&temp.path().join("out/a.txt").display().to_string()).unwrap();
    resolver.put(&source.join("a.txt"), &single).await.unwrap();
    assert_eq!(
        progress.snapshot(),
        Snapshot {
            files_expected: 4,
            files_done: 4,
            bytes_expected: 4500,
            bytes_done: 4500,
        }
    );
}

#[tokio::test]
async fn the_default_resolver_counts_nothing() {
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("a.txt"), b"123456789");
    let uri = Uri::parse(&temp.path().join("a.txt").display().to_string()).unwrap();
    let progress = Progress::disabled();
    Resolver::with_progress(progress.clone())
        .fetch(&uri, &temp.path().join("copy"))
        .await
        .unwrap();
    assert_eq!(progress.snapshot(), Snapshot::default());
}
