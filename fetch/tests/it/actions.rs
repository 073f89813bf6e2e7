//! Actions on real downloads, through `Resolver::fetch`: each one, chained, and their errors.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use herd_fetch::{ErrorKind, Resolver, Uri, actions};

use crate::support::{TarEntry, ZipEntry, file_uri, gzip, tar, tree, write, zip};

async fn fetch(uri: &Uri, target: &std::path::Path) -> herd_fetch::Result<herd_fetch::Fetched> {
    Resolver::default().fetch(uri, target).await
}

#[tokio::test]
async fn gunzip_replaces_the_gz_file() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("remote/reads.fastq.gz");
    write(&source, &gzip(b"@r1\nACGT\n+\nIIII\n"));
    let target = temp.path().join("input");

    let fetched = fetch(&file_uri(&source, "|gunzip"), &target).await.unwrap();

    assert_eq!(fetched.items, vec!["reads.fastq"]);
    assert_eq!(
        fetched.stats.checksums[0].path, "reads.fastq.gz",
        "stats describe the download"
    );
    assert_eq!(tree(&target), vec!["reads.fastq"]);
    assert_eq!(
        fs::read(target.join("reads.fastq")).unwrap(),
        b"@r1\nACGT\n+\nIIII\n"
    );
    assert!(source.exists(), "the source is untouched");
}

#[tokio::test]
async fn gunzip_reads_multi_member_files_like_bgzip() {
    let temp = tempfile::tempdir().unwrap();
    let mut members = gzip(b"first member\n");
    members.extend(gzip(b"second member\n"));
    write(&temp.path().join("x.vcf.gz"), &members);
    let target = temp.path().join("t");
    fetch(&file_uri(&temp.path().join("x.vcf.gz"), "|gunzip"), &target)
        .await
        .unwrap();
    assert_eq!(
        fs::read(target.join("x.vcf")).unwrap(),
        b"first member\nsecond member\n"
    );
}

#[tokio::test]
async fn untar_extracts_tar_tar_gz_and_tgz_and_removes_the_archive() {
    let archive = tar(&[
        TarEntry::Dir("db/"),
        TarEntry::File("db/index.bin", b"123456789"),
        TarEntry::File("./db/sub/notes.txt", b"Hello, World!"),
        TarEntry::Symlink("db/latest", "index.bin"),
        TarEntry::HardLink("db/index.hard", "db/index.bin"),
        TarEntry::File("README", b"read me"),
    ]);
    for (name, bytes) in [
        ("db.tar", archive.clone()),
        ("db.tar.gz", gzip(&archive)),
        ("db.tgz", gzip(&archive)),
    ] {
        let temp = tempfile::tempdir().unwrap();
        write(&temp.path().join(name), &bytes);
        let target = temp.path().join("resource");

        let fetched = fetch(&file_uri(&temp.path().join(name), "|untar"), &target)
            .await
            .unwrap();

        assert_eq!(fetched.items, vec!["db", "README"], "{name}");
        assert_eq!(
            tree(&target),
            vec![
                "README",
                "db/",
                "db/index.bin",
                "db/index.hard",
                "db/latest",
                "db/sub/",
                "db/sub/notes.txt"
            ],
            "{name}"
        );
        assert_eq!(
            fs::read(target.join("db/latest")).unwrap(),
            b"123456789",
            "{name}: the link works"
        );
        assert_eq!(
            fs::read_link(target.join("db/latest")).unwrap().to_str(),
            Some("index.bin")
        );
        assert_eq!(
            fs::read(target.join("db/index.hard")).unwrap(),
            b"123456789"
        );
    }
}

#[tokio::test]
async fn untar_keeps_permission_bits_without_setuid() {
    let temp = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o4755);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, "bin/tool", &b"#!x"[..])
        .unwrap();
    write(
        &temp.path().join("tools.tar"),
        &builder.into_inner().unwrap(),
    );
    let target = temp.path().join("t");
    fetch(&file_uri(&temp.path().join("tools.tar"), "|untar"), &target)
        .await
        .unwrap();
    assert_eq!(
        fs::metadata(target.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

#[tokio::test]
async fn unzip_extracts_and_removes_the_archive() {
    let temp = tempfile::tempdir().unwrap();
    let archive = zip(&[
        ZipEntry::Dir("ref/"),
        ZipEntry::File("ref/genome.fa", b">chr1\nACGT\n"),
        ZipEntry::Symlink("ref/current.fa", "genome.fa"),
        ZipEntry::File("top.txt", b"Hello, World!"),
    ]);
    write(&temp.path().join("ref.zip"), &archive);
    let target = temp.path().join("t");

    let fetched = fetch(&file_uri(&temp.path().join("ref.zip"), "|unzip"), &target)
        .await
        .unwrap();

    assert_eq!(fetched.items, vec!["ref", "top.txt"]);
    assert_eq!(
        tree(&target),
        vec!["ref/", "ref/current.fa", "ref/genome.fa", "top.txt"]
    );
    assert_eq!(
        fs::read(target.join("ref/current.fa")).unwrap(),
        b">chr1\nACGT\n"
    );
}

#[tokio::test]
async fn mv_moves_the_item_into_a_sub_folder() {
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("hello.txt"), b"Hello, World!");
    let target = temp.path().join("t");
    write(&target.join("data/previous.txt"), b"already there");

    let fetched = fetch(
        &file_uri(&temp.path().join("hello.txt"), "|mv:data/greetings"),
        &target,
    )
    .await
    .unwrap();

    assert_eq!(fetched.items, vec!["data"]);
    assert_eq!(
        tree(&target),
        vec![
            "data/",
            "data/greetings/",
            "data/greetings/hello.txt",
            "data/previous.txt"
        ]
    );
}

#[tokio::test]
async fn chained_actions_run_in_order() {
    let temp = tempfile::tempdir().unwrap();
    let archive = tar(&[
        TarEntry::File("kraken/hash.k2d", b"123456789"),
        TarEntry::File("kraken/taxo.k2d", b""),
    ]);
    // gunzip turns db.tar.gz into db.tar, untar extracts it, mv files the result under dbs/v2.
    write(&temp.path().join("db.tar.gz"), &gzip(&archive));
    let target = temp.path().join("resource");

    let fetched = fetch(
        &file_uri(&temp.path().join("db.tar.gz"), "|gunzip|untar|mv:dbs/v2"),
        &target,
    )
    .await
    .unwrap();

    assert_eq!(fetched.items, vec!["dbs"]);
    assert_eq!(
        tree(&target),
        vec![
            "dbs/",
            "dbs/v2/",
            "dbs/v2/kraken/",
            "dbs/v2/kraken/hash.k2d",
            "dbs/v2/kraken/taxo.k2d"
        ]
    );

    // A zip holding a gzip file: unzip, then gunzip what came out.
    let nested = zip(&[ZipEntry::File("table.tsv.gz", &gzip(b"a\tb\n"))]);
    write(&temp.path().join("bundle.zip"), &nested);
    let target = temp.path().join("input");
    let fetched = fetch(
        &file_uri(&temp.path().join("bundle.zip"), "|unzip|gunzip"),
        &target,
    )
    .await
    .unwrap();
    assert_eq!(fetched.items, vec!["table.tsv"]);
    assert_eq!(fs::read(target.join("table.tsv")).unwrap(), b"a\tb\n");
}

#[tokio::test]
async fn actions_apply_to_every_item_of_a_directory_download() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("runs");
    write(&source.join("r1.fastq.gz"), &gzip(b"read 1"));
    write(&source.join("r2.fastq.gz"), &gzip(b"read 2"));
    write(&source.join("sample.json"), b"{}");
    let target = temp.path().join("input");

    let uri = Uri::parse(&format!("{}/|gunzip|mv:sample", source.display())).unwrap();
    let fetched = fetch(&uri, &target).await.unwrap();

    assert_eq!(fetched.items, vec!["sample"]);
    assert_eq!(
        tree(&target),
        vec![
            "sample/",
            "sample/r1.fastq",
            "sample/r2.fastq",
            "sample/sample.json"
        ]
    );
}

#[tokio::test]
async fn an_action_that_finds_nothing_to_do_fails_and_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("plain.txt"), b"not compressed");
    let target = temp.path().join("t");
    for (suffix, expected) in [
        (
            "|gunzip",
            "`|gunzip` needs a file ending in .gz but the download holds `plain.txt`: remove |gunzip or fix the uri",
        ),
        (
            "|untar",
            "`|untar` needs a file ending in .tar, .tar.gz or .tgz but the download holds `plain.txt`: remove |untar or fix the uri",
        ),
        (
            "|unzip",
            "`|unzip` needs a file ending in .zip but the download holds `plain.txt`: remove |unzip or fix the uri",
        ),
    ] {
        let error = fetch(&file_uri(&temp.path().join("plain.txt"), suffix), &target)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri, "{suffix}");
        assert_eq!(error.to_string(), expected);
        assert_eq!(
            tree(&target),
            Vec::<String>::new(),
            "{suffix}: the staging directory is gone"
        );
    }
}

#[tokio::test]
async fn corrupt_and_unsupported_archives_fail_cleanly() {
    let temp = tempfile::tempdir().unwrap();
    let target = temp.path().join("t");

    write(&temp.path().join("broken.gz"), b"\x1f\x8b not really gzip");
    let error = fetch(
        &file_uri(&temp.path().join("broken.gz"), "|gunzip"),
        &target,
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
    assert!(
        error
            .to_string()
            .ends_with("broken.gz` is not valid gzip (corrupt or truncated): download it again"),
        "{error}"
    );

    let mut truncated = gzip(&tar(&[TarEntry::File("a", &[1u8; 100_000])]));
    truncated.truncate(truncated.len() / 2);
    write(&temp.path().join("cut.tgz"), &truncated);
    let error = fetch(&file_uri(&temp.path().join("cut.tgz"), "|untar"), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
    assert!(
        error.to_string().ends_with(
            "cut.tgz` is not a valid tar archive (corrupt or truncated): download it again"
        ),
        "{error}"
    );

    write(&temp.path().join("junk.zip"), b"PK not a zip");
    let error = fetch(&file_uri(&temp.path().join("junk.zip"), "|unzip"), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);

    write(&temp.path().join("db.tar.xz"), b"xz");
    let error = fetch(&file_uri(&temp.path().join("db.tar.xz"), "|untar"), &target)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(
        error.to_string(),
        "cannot untar `db.tar.xz`: only .tar, .tar.gz and .tgz archives are supported; recompress it with gzip"
    );
    assert_eq!(tree(&target), Vec::<String>::new());
}

#[tokio::test]
async fn mv_into_an_item_of_the_same_name_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("db"), b"a file named db");
    let error = fetch(
        &file_uri(&temp.path().join("db"), "|mv:db/old"),
        &temp.path().join("t"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert_eq!(
        error.to_string(),
        "`|mv:db/old` would move `db` into itself: choose a folder name that the download does not already use"
    );
}

#[test]
fn apply_works_on_a_directory_the_caller_already_has() {
    let temp = tempfile::tempdir().unwrap();
    write(&temp.path().join("a.txt.gz"), &gzip(b"123456789"));
    let uri = Uri::parse("a.txt.gz|gunzip|mv:x").unwrap();
    let items = actions::apply(temp.path(), vec!["a.txt.gz".to_owned()], uri.actions()).unwrap();
    assert_eq!(items, vec!["x"]);
    assert_eq!(tree(temp.path()), vec!["x/", "x/a.txt"]);
    assert_eq!(
        herd_fetch::crc64nvme_file(temp.path().join("x/a.txt")).unwrap(),
        crate::support::CRC_123456789
    );
}
