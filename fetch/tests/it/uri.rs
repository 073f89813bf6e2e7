//! The URI grammar: good URIs parse into the right parts and print back as written; bad ones
//! fail with a message that names the problem and what to do.

use std::path::Path;

use herd_fetch::{Action, ErrorKind, Scheme, SchemeOption, Uri};

fn error_of(text: &str) -> String {
    let error = Uri::parse(text).expect_err(text);
    assert_eq!(error.kind(), ErrorKind::InvalidUri, "{text}");
    error.to_string()
}

#[test]
fn plain_paths_are_local_files() {
    let absolute = Uri::parse("/data/refs/genome.fa").unwrap();
    assert_eq!(absolute.scheme(), Scheme::File);
    assert!(absolute.is_plain_path());
    assert!(!absolute.is_dir());
    assert_eq!(
        absolute.local_path(),
        Some(Path::new("/data/refs/genome.fa"))
    );
    assert_eq!(absolute.file_name(), Some("genome.fa"));

    let relative = Uri::parse("results/run1/").unwrap();
    assert_eq!(relative.scheme(), Scheme::File);
    assert!(relative.is_dir());
    assert_eq!(relative.local_path(), Some(Path::new("results/run1/")));
    assert_eq!(relative.file_name(), None);

    let with_actions = Uri::parse("db.tar.gz|untar").unwrap();
    assert_eq!(with_actions.path(), "db.tar.gz");
    assert_eq!(with_actions.actions(), &[Action::Untar]);
}

#[test]
fn file_uris_need_an_absolute_path() {
    let uri = Uri::parse("file:///abs/path").unwrap();
    assert_eq!(uri.scheme(), Scheme::File);
    assert!(!uri.is_plain_path());
    assert_eq!(uri.local_path(), Some(Path::new("/abs/path")));
    assert_eq!(uri.to_string(), "file:///abs/path");
    assert_eq!(
        error_of("file://relative/x"),
        "`file://relative/x` must have an absolute path: write file:///abs/path, or a plain relative path"
    );
}

#[test]
fn every_known_scheme_parses() {
    let cases = [
        ("s3://bucket/key.txt", Scheme::S3, "bucket/key.txt"),
        ("http://host/x", Scheme::Http, "host/x"),
        ("https://host:8443/x", Scheme::Https, "host:8443/x"),
        (
            "ftp://ftp.sra.ebi.ac.uk/vol1/x.fastq.gz",
            Scheme::Ftp,
            "ftp.sra.ebi.ac.uk/vol1/x.fastq.gz",
        ),
        ("azure://container/dir/", Scheme::Azure, "container/dir/"),
        ("gs://bucket/k", Scheme::Gs, "bucket/k"),
        ("run+fastq://SRR5666311", Scheme::RunFastq, "SRR5666311"),
        (
            "fasp://era-fasp@fasp.sra.ebi.ac.uk:/vol1/x.fastq.gz",
            Scheme::Fasp,
            "era-fasp@fasp.sra.ebi.ac.uk:/vol1/x.fastq.gz",
        ),
    ];
    for (text, scheme, path) in cases {
        let uri = Uri::parse(text).unwrap();
        assert_eq!(uri.scheme(), scheme, "{text}");
        assert_eq!(uri.path(), path, "{text}");
        assert_eq!(uri.to_string(), text, "display gives the uri back");
        assert_eq!(Uri::parse(&uri.to_string()).unwrap(), uri);
    }
    assert!(Uri::parse("azure://container/dir/").unwrap().is_dir());
}

#[test]
fn scheme_is_case_insensitive_and_printed_in_lower_case() {
    let uri = Uri::parse("S3://Bucket/Key").unwrap();
    assert_eq!(uri.scheme(), Scheme::S3);
    assert_eq!(uri.to_string(), "s3://Bucket/Key");
    assert_eq!(uri, Uri::parse("s3://Bucket/Key").unwrap());
}

#[test]
fn run_fastq_takes_its_options_in_order() {
    let uri = Uri::parse("run+fastq@sra-tools@ena-ftp@only-read1://SRR123").unwrap();
    assert_eq!(
        uri.options(),
        &[
            SchemeOption::SraTools,
            SchemeOption::EnaFtp,
            SchemeOption::OnlyRead1
        ]
    );
    assert!(uri.has_option(SchemeOption::OnlyRead1));
    assert!(!uri.has_option(SchemeOption::EnaHttps));
    assert_eq!(uri.path(), "SRR123");
    assert_eq!(
        uri.to_string(),
        "run+fastq@sra-tools@ena-ftp@only-read1://SRR123"
    );
    assert!(Uri::parse("run+fastq@ena-https://ERR3857002").is_ok());
}

#[test]
fn actions_chain_in_order() {
    let uri = Uri::parse("https://host/x.tar.gz|gunzip|untar|unzip|mv:./db//v1/").unwrap();
    let db = herd_fetch::SubDir::new("db/v1").unwrap();
    assert_eq!(
        uri.actions(),
        &[
            Action::Gunzip,
            Action::Untar,
            Action::Unzip,
            Action::Move(db)
        ]
    );
    assert_eq!(uri.file_name(), Some("x.tar.gz"));
    assert_eq!(uri.path(), "host/x.tar.gz");
    assert_eq!(
        uri.to_string(),
        "https://host/x.tar.gz|gunzip|untar|unzip|mv:./db//v1/"
    );
    assert_eq!(uri.without_actions().to_string(), "https://host/x.tar.gz");
    assert_eq!(uri.actions()[3].to_string(), "mv:db/v1");
}

#[test]
fn credentials_are_redacted_for_logs() {
    let uri = Uri::parse("ftp://alice:s3cr3t@ftp.example.org/data/x.gz|gunzip").unwrap();
    assert_eq!(
        uri.to_string(),
        "ftp://alice:s3cr3t@ftp.example.org/data/x.gz|gunzip",
        "display keeps the uri usable"
    );
    assert_eq!(
        uri.redacted().to_string(),
        "ftp://alice:***@ftp.example.org/data/x.gz|gunzip"
    );
    assert!(
        !format!("{uri:?}").contains("s3cr3t"),
        "debug is redacted: {uri:?}"
    );

    let http = Uri::parse("https://bob:pa:ss@host/file?X-Amz-Signature=abc#part").unwrap();
    assert_eq!(
        http.redacted().to_string(),
        "https://bob:***@host/file?***#part"
    );
    assert_eq!(http.file_name(), Some("file"));

    let user_only = Uri::parse("fasp://era-fasp@fasp.sra.ebi.ac.uk:/vol1/x").unwrap();
    assert_eq!(
        user_only.redacted().to_string(),
        "fasp://era-fasp@fasp.sra.ebi.ac.uk:/vol1/x"
    );

    let s3 = Uri::parse("s3://bucket/a:b@c/key").unwrap();
    assert_eq!(
        s3.redacted().to_string(),
        "s3://bucket/a:b@c/key",
        "s3 paths hold no credentials"
    );

    let message = error_of("ftpx://alice:s3cr3t@host/a");
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(message.contains("ftpx://alice:***@host/a"), "{message}");
}

#[test]
fn join_builds_child_uris() {
    let base = Uri::parse("s3://bucket/dir|untar").unwrap();
    assert_eq!(
        base.join("a/b.txt").unwrap().to_string(),
        "s3://bucket/dir/a/b.txt"
    );
    assert!(base.join("sub/").unwrap().is_dir());
    let local = Uri::parse("/tmp/x/").unwrap();
    assert_eq!(
        local.join("y").unwrap().local_path(),
        Some(Path::new("/tmp/x/y"))
    );
    for bad in ["", "/abs", "../up", "a/../../b", "a|gunzip"] {
        let error = base.join(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri);
    }
    assert_eq!(
        base.join("../up").unwrap_err().to_string(),
        "cannot join `../up` to `s3://bucket/dir|untar`: give a relative path without `..` or `|`"
    );
}

#[test]
fn local_paths_become_uris() {
    let uri = Uri::from_local_path("/scratch/task 1/output/").unwrap();
    assert!(uri.is_dir());
    assert_eq!(uri.local_path(), Some(Path::new("/scratch/task 1/output/")));
    assert_eq!(
        Uri::from_local_path("/tmp/a|b").unwrap_err().to_string(),
        "`/tmp/a|b` contains `|`, which starts an action in a uri: rename it"
    );
}

#[test]
fn surrounding_whitespace_is_ignored() {
    assert_eq!(Uri::parse("  s3://b/k \n").unwrap().to_string(), "s3://b/k");
}

#[test]
fn bad_uris_say_what_is_wrong_and_what_to_do() {
    let cases = [
        (
            "",
            "empty uri: give a local path, file:///abs/path or scheme://path, e.g. s3://bucket/key",
        ),
        (
            "   ",
            "empty uri: give a local path, file:///abs/path or scheme://path, e.g. s3://bucket/key",
        ),
        (
            "foo://x",
            "unknown scheme `foo` in `foo://x`: known schemes are file, s3, http, https, ftp, azure, gs, run+fastq, fasp; a plain path is a local file",
        ),
        (
            "://x",
            "unknown scheme `(none)` in `://x`: known schemes are file, s3, http, https, ftp, azure, gs, run+fastq, fasp; a plain path is a local file",
        ),
        (
            "s3@fast://b/k",
            "unknown option `@fast` for s3: s3 takes no options",
        ),
        (
            "run+fastq@ena-sftp://SRR1",
            "unknown option `@ena-sftp` for run+fastq: run+fastq options are @ena-ftp, @ena-https, @sra-tools, @only-read1",
        ),
        (
            "s3@://b/k",
            "empty option in `s3@://b/k`: remove the `@` or name an option after it",
        ),
        (
            "s3://b/k|gunzip|explode",
            "unknown action `|explode`: known actions are |gunzip, |untar, |unzip, |mv:DIR",
        ),
        (
            "s3://b/k||gunzip",
            "empty action in `s3://b/k||gunzip`: remove the extra `|`",
        ),
        (
            "s3://b/k|",
            "empty action in `s3://b/k|`: remove the extra `|`",
        ),
        (
            "s3://",
            "empty path in `s3://`: put the path after `://`, e.g. s3://bucket/key",
        ),
        (
            "run+fastq://",
            "empty path in `run+fastq://`: put the path after `://`, e.g. run+fastq://SRR000001",
        ),
        (
            "|gunzip",
            "empty path in `|gunzip`: put a path before the first `|`",
        ),
        (
            "x.gz|gunzip:fast",
            "`|gunzip` takes no argument: write |gunzip alone, not |gunzip:fast",
        ),
        (
            "x.tgz|mv",
            "`|mv` needs a folder: write |mv:DIR, e.g. |mv:db",
        ),
        ("x.tgz|mv:", "`|mv:` needs a folder name, e.g. |mv:db"),
        (
            "x.tgz|mv:./",
            "`|mv:./` must name a sub-folder, e.g. |mv:db",
        ),
        (
            "x.tgz|mv:/abs",
            "`|mv:/abs` must name a folder relative to the download directory, e.g. |mv:db, not an absolute path",
        ),
        (
            "x.tgz|mv:a/../../b",
            "`|mv:a/../../b` must not contain `..`: name a folder inside the download directory, e.g. |mv:db",
        ),
        (
            "x.tgz|mv:..",
            "`|mv:..` must not contain `..`: name a folder inside the download directory, e.g. |mv:db",
        ),
        (
            "/tmp/a\0b",
            "`/tmp/a\\u{0}b` contains a NUL byte: remove it",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(text), expected, "message for {text:?}");
    }
}

#[test]
fn uri_parse_is_cheap() {
    // Not a benchmark: a guard against accidental quadratic work or I/O in parsing.
    let start = std::time::Instant::now();
    for index in 0..20_000 {
        let text = format!("run+fastq@ena-ftp://SRR{index}|mv:runs");
        let uri: Uri = text.parse().unwrap();
        assert_eq!(uri.scheme(), Scheme::RunFastq);
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
