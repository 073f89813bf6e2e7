//! Hostile archives built in the test: every escape is refused with an `Unsafe` error naming the
//! entry, and nothing is written outside the target directory.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use herd_fetch::{Action, ErrorKind, Resolver, actions};

use crate::support::{Sandbox, TarEntry, ZipEntry, file_uri, gzip, tar, tree, write, zip};

/// Puts `bytes` as `name` in the sandbox's target, extracts it with `action`, and returns the
/// error, after checking that nothing appeared outside the target.
fn refused(sandbox: &Sandbox, name: &str, bytes: &[u8], action: Action) -> herd_fetch::Error {
    let outside_before = sandbox.outside_tree();
    write(&sandbox.target.join(name), bytes);
    let error = actions::apply(&sandbox.target, vec![name.to_owned()], &[action]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsafe, "{error}");
    assert_eq!(
        sandbox.outside_tree(),
        outside_before,
        "nothing written outside the target"
    );
    assert!(!Path::new("/etc/herd-escape").exists());
    for entry in tree(&sandbox.target) {
        let path = sandbox.target.join(entry.trim_end_matches('/'));
        if let Ok(target) = fs::read_link(&path) {
            panic!(
                "a symbolic link was left behind: {} -> {}",
                path.display(),
                target.display()
            );
        }
    }
    error
}

fn expected_message(sandbox: &Sandbox, archive: &str, entry: &str, reason: &str) -> String {
    format!(
        "refusing to extract `{}`: entry `{entry}` {reason}; the archive is malformed or hostile, and nothing was written outside `{}`",
        sandbox.target.join(archive).display(),
        sandbox.target.display()
    )
}

#[test]
fn tar_with_a_parent_component_is_refused() {
    let sandbox = Sandbox::new();
    let archive = tar(&[
        TarEntry::File("fine.txt", b"ok"),
        TarEntry::File("../escape", b"owned"),
    ]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            "../escape",
            "has a `..` component and would land outside the target"
        )
    );
    assert!(!sandbox.outside.join("escape").exists());

    let sandbox = Sandbox::new();
    let archive = gzip(&tar(&[TarEntry::File("a/../../escape", b"owned")]));
    let error = refused(&sandbox, "evil.tgz", &archive, Action::Untar);
    assert!(
        error
            .to_string()
            .contains("entry `a/../../escape` has a `..` component"),
        "{error}"
    );
}

#[test]
fn tar_with_an_absolute_path_is_refused() {
    let sandbox = Sandbox::new();
    let absolute = sandbox.outside.join("abs.txt");
    let name = absolute.to_str().unwrap();
    let archive = tar(&[TarEntry::File(name, b"owned")]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            name,
            "is an absolute path and would land outside the target"
        )
    );
    assert!(!absolute.exists());
}

#[test]
fn tar_with_a_symlink_to_etc_is_refused_before_anything_goes_through_it() {
    let sandbox = Sandbox::new();
    let archive = tar(&[
        TarEntry::Symlink("etc", "/etc"),
        TarEntry::File("etc/herd-escape", b"owned"),
    ]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            "etc",
            "is a symbolic link to the absolute path `/etc`, outside the target"
        )
    );
    assert!(!sandbox.target.join("etc").exists());
}

#[test]
fn tar_with_a_relative_symlink_out_is_refused() {
    let sandbox = Sandbox::new();
    let archive = tar(&[
        TarEntry::Dir("sub/"),
        TarEntry::Symlink("sub/up", "../../"),
        TarEntry::File("sub/up/escape.txt", b"owned"),
    ]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            "sub/up",
            "is a symbolic link to `../../`, which resolves outside the target"
        )
    );
    assert!(!sandbox.outside.join("escape.txt").exists());
}

#[test]
fn tar_with_a_symlink_chain_out_is_refused() {
    // `here -> .` is harmless alone, and `out -> here/..` reads as the target itself; together
    // they climb out of it.
    let sandbox = Sandbox::new();
    let archive = tar(&[
        TarEntry::Symlink("here", "."),
        TarEntry::Symlink("out", "here/.."),
        TarEntry::File("out/x", b"owned"),
    ]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            "out",
            "is a symbolic link to `here/..`, with `..` after a name, which could resolve outside the target through another link"
        )
    );
}

#[test]
fn tar_with_a_hard_link_outside_is_refused() {
    for (link, reason) in [
        (
            "../secret",
            "links to `../secret`, which has a `..` component and would land outside the target",
        ),
        (
            "ABSOLUTE",
            "links to `ABSOLUTE`, which is an absolute path and would land outside the target",
        ),
    ] {
        let sandbox = Sandbox::new();
        let secret = sandbox.outside.join("secret");
        write(&secret, b"top secret");
        let link = if link == "ABSOLUTE" {
            secret.to_str().unwrap().to_owned()
        } else {
            link.to_owned()
        };
        let reason = reason.replace("ABSOLUTE", secret.to_str().unwrap());
        let archive = tar(&[
            TarEntry::HardLink("hl", &link),
            TarEntry::File("hl", b"overwrite the secret"),
        ]);
        let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
        assert_eq!(
            error.to_string(),
            expected_message(&sandbox, "evil.tar", "hl", &reason)
        );
        assert_eq!(fs::read(&secret).unwrap(), b"top secret");
        assert_eq!(
            fs::metadata(&secret).unwrap().nlink(),
            1,
            "no new link to the secret"
        );
        assert!(!sandbox.target.join("hl").exists());
    }
}

#[test]
fn tar_hard_link_to_a_file_it_did_not_create_is_refused() {
    let sandbox = Sandbox::new();
    let archive = tar(&[TarEntry::HardLink("hl", "missing")]);
    let error = refused(&sandbox, "evil.tar", &archive, Action::Untar);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.tar",
            "hl",
            "is a hard link to `missing`, which is not a file the archive created before it"
        )
    );
}

#[test]
fn an_existing_symlink_in_the_target_is_never_written_through() {
    let sandbox = Sandbox::new();
    std::os::unix::fs::symlink(&sandbox.outside, sandbox.target.join("data")).unwrap();
    write(
        &sandbox.target.join("db.tar"),
        &tar(&[TarEntry::File("data/escape.txt", b"owned")]),
    );
    let error =
        actions::apply(&sandbox.target, vec!["db.tar".to_owned()], &[Action::Untar]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsafe);
    assert_eq!(
        error.to_string(),
        format!(
            "refusing to write `data/escape.txt` through the symbolic link `{}`: links inside the target are never followed",
            sandbox.target.join("data").display()
        )
    );
    assert!(!sandbox.outside.join("escape.txt").exists());

    // A file entry replaces a link at its own name instead of writing through it.
    let sandbox = Sandbox::new();
    let victim = sandbox.outside.join("victim");
    write(&victim, b"untouched");
    std::os::unix::fs::symlink(&victim, sandbox.target.join("file.txt")).unwrap();
    write(
        &sandbox.target.join("ok.tar"),
        &tar(&[TarEntry::File("file.txt", b"new content")]),
    );
    actions::apply(&sandbox.target, vec!["ok.tar".to_owned()], &[Action::Untar]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    assert_eq!(
        fs::read(sandbox.target.join("file.txt")).unwrap(),
        b"new content"
    );
    assert!(
        !fs::symlink_metadata(sandbox.target.join("file.txt"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn zip_with_a_parent_component_is_refused() {
    let sandbox = Sandbox::new();
    let archive = zip(&[
        ZipEntry::File("ok.txt", b"fine"),
        ZipEntry::File("../evil.txt", b"owned"),
    ]);
    let error = refused(&sandbox, "evil.zip", &archive, Action::Unzip);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.zip",
            "../evil.txt",
            "has a `..` component and would land outside the target"
        )
    );
    assert!(!sandbox.outside.join("evil.txt").exists());
}

#[test]
fn zip_with_an_absolute_path_or_an_escaping_symlink_is_refused() {
    let sandbox = Sandbox::new();
    let absolute = sandbox.outside.join("abs.txt");
    let archive = zip(&[ZipEntry::File(absolute.to_str().unwrap(), b"owned")]);
    let error = refused(&sandbox, "evil.zip", &archive, Action::Unzip);
    assert!(
        error
            .to_string()
            .contains("is an absolute path and would land outside the target"),
        "{error}"
    );
    assert!(!absolute.exists());

    let sandbox = Sandbox::new();
    let archive = zip(&[ZipEntry::Symlink("passwd", "/etc/passwd")]);
    let error = refused(&sandbox, "evil.zip", &archive, Action::Unzip);
    assert_eq!(
        error.to_string(),
        expected_message(
            &sandbox,
            "evil.zip",
            "passwd",
            "is a symbolic link to the absolute path `/etc/passwd`, outside the target"
        )
    );

    let sandbox = Sandbox::new();
    let archive = zip(&[ZipEntry::Symlink("up", "../../x")]);
    let error = refused(&sandbox, "evil.zip", &archive, Action::Unzip);
    assert!(
        error.to_string().contains(
            "entry `up` is a symbolic link to `../../x`, which resolves outside the target"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_fetch_leaves_nothing_in_the_target_either() {
    let sandbox = Sandbox::new();
    let remote = sandbox.outside.join("remote");
    let archive = tar(&[
        TarEntry::File("db/good.bin", &[0u8; 4096]),
        TarEntry::Symlink("db/ok-link", "good.bin"),
        TarEntry::File("../escape", b"owned"),
    ]);
    write(&remote.join("db.tar.gz"), &gzip(&archive));
    let before = sandbox.outside_tree();

    let uri = file_uri(&remote.join("db.tar.gz"), "|untar");
    let error = Resolver::default()
        .fetch(&uri, &sandbox.target)
        .await
        .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::Unsafe);
    assert!(
        error
            .to_string()
            .contains("entry `../escape` has a `..` component"),
        "{error}"
    );
    assert_eq!(sandbox.outside_tree(), before);
    assert_eq!(
        tree(&sandbox.target),
        Vec::<String>::new(),
        "the staging directory is removed with the partial extraction"
    );
}
