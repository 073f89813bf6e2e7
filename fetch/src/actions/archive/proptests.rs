//! Property tests of extraction: tar and zip archives built in memory from generated entries,
//! hostile ones included (`..`, absolute paths, `a/../../b`, links leading out, hard links to
//! files outside, names longer than a tar header holds, setuid modes). Whatever the archive,
//! the extraction either succeeds or fails with a clear error, and never changes anything
//! outside the root: the folder around it is listed before and after (without following
//! links), every link left in the root resolves inside it, no file in the root shares an inode
//! with a file outside it, and no file keeps a setuid, setgid or sticky bit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Cursor, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::{extract_tar, extract_zip};
use crate::error::ErrorKind;
use crate::local::Cancel;

/// Enough cases to meet most combinations of the small vocabulary below, in about a second.
fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// What an archive entry is.
#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
}

/// A name made of friendly and hostile components: 120 bytes is beyond a tar header's 100,
/// 300 beyond what Linux allows a file name (255). Hostile parts are rare enough that most
/// archives get past their first entries.
fn name() -> impl Strategy<Value = String> {
    let long = "n".repeat(120);
    let too_long = "m".repeat(300);
    let component = prop_oneof![
        14 => proptest::sample::select(vec![
            "a".to_owned(),
            "b".to_owned(),
            "dir".to_owned(),
            "x y".to_owned(),
            "outside".to_owned(),
            "archive.tar".to_owned(),
            long,
        ]),
        1 => Just(too_long),
        1 => Just("..".to_owned()),
        1 => Just(".".to_owned()),
    ];
    let lead = prop_oneof![
        12 => Just(""),
        1 => Just("/"),
        1 => Just("./"),
        1 => Just("../"),
    ];
    (lead, proptest::collection::vec(component, 1..4))
        .prop_map(|(lead, components)| format!("{lead}{}", components.join("/")))
}

/// A link target: inside, climbing out, absolute, through `..` after a name, or a name.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "",
            ".",
            "..",
            "../..",
            "../outside/secret",
            "../../outside",
            "/etc/passwd",
            "/",
            "a/../../..",
            "a/../b",
            "./a",
            "b/c",
        ])
        .prop_map(str::to_owned),
        name(),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
        2 => Just(Kind::Dir),
        2 => target().prop_map(Kind::Symlink),
        1 => target().prop_map(Kind::HardLink),
    ];
    let mode = proptest::sample::select(vec![0o644, 0o755, 0o600, 0o4755, 0o6755, 0o1777]);
    (name(), kind, mode).prop_map(|(name, kind, mode)| Entry { name, kind, mode })
}

/// A tar archive of `entries`, names and link targets written as given (the `tar` crate's
/// own setters refuse `..`, which is the point here); GNU long-name records for long ones.
fn tar_archive(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (entry_type, data, link) = match &entry.kind {
            Kind::File(data) => (tar::EntryType::Regular, data.clone(), None),
            Kind::Dir => (tar::EntryType::Directory, Vec::new(), None),
            Kind::Symlink(target) => (tar::EntryType::Symlink, Vec::new(), Some(target)),
            Kind::HardLink(target) => (tar::EntryType::Link, Vec::new(), Some(target)),
        };
        if entry.name.len() > 100 {
            append_long(&mut builder, tar::EntryType::GNULongName, &entry.name);
        }
        if let Some(link) = link.filter(|link| link.len() > 100) {
            append_long(&mut builder, tar::EntryType::GNULongLink, link);
        }
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().expect("a GNU header");
        copy_truncated(&mut gnu.name, entry.name.as_bytes());
        if let Some(link) = link {
            copy_truncated(&mut gnu.linkname, link.as_bytes());
        }
        header.set_entry_type(entry_type);
        header.set_size(data.len() as u64);
        header.set_mode(entry.mode);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, data.as_slice()).expect("in memory");
    }
    builder.into_inner().expect("in memory")
}

/// A GNU `././@LongLink` record carrying a name or link target longer than 100 bytes.
fn append_long(builder: &mut tar::Builder<Vec<u8>>, entry_type: tar::EntryType, text: &str) {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    let mut header = tar::Header::new_gnu();
    copy_truncated(
        &mut header.as_gnu_mut().expect("a GNU header").name,
        b"././@LongLink",
    );
    header.set_entry_type(entry_type);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, data.as_slice()).expect("in memory");
}

fn copy_truncated(field: &mut [u8], bytes: &[u8]) {
    let length = bytes.len().min(field.len());
    field[..length].copy_from_slice(&bytes[..length]);
}

/// A zip archive of `entries` (zip has no hard links: those become files naming their
/// target). An entry the writer refuses (a repeated name) is left out.
fn zip_archive(entries: &[Entry]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for entry in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(entry.mode);
        let written = match &entry.kind {
            Kind::File(data) => writer
                .start_file(entry.name.as_str(), options)
                .and_then(|()| writer.write_all(data).map_err(zip::result::ZipError::Io)),
            Kind::HardLink(target) => {
                writer
                    .start_file(entry.name.as_str(), options)
                    .and_then(|()| {
                        writer
                            .write_all(target.as_bytes())
                            .map_err(zip::result::ZipError::Io)
                    })
            }
            Kind::Dir => writer.add_directory(entry.name.as_str(), options),
            Kind::Symlink(target) => writer.add_symlink(entry.name.as_str(), target, options),
        };
        if written.is_err() {
            writer.abort_file().ok();
        }
    }
    writer.finish().expect("in memory").into_inner()
}

/// What a listing records of one path, links never followed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File { content: Vec<u8>, inode: (u64, u64) },
    Dir,
    Link(PathBuf),
    Other,
}

/// Every path under `folder` (itself excluded), links listed and not followed.
fn list(folder: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut seen = BTreeMap::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for child in fs::read_dir(&directory).expect("a listable folder") {
            let path = child.expect("a readable entry").path();
            let metadata = fs::symlink_metadata(&path).expect("an entry just listed");
            let recorded = if metadata.is_symlink() {
                Seen::Link(fs::read_link(&path).expect("a link just listed"))
            } else if metadata.is_dir() {
                pending.push(path.clone());
                Seen::Dir
            } else if metadata.is_file() {
                Seen::File {
                    content: fs::read(&path).expect("a file just listed"),
                    inode: (metadata.dev(), metadata.ino()),
                }
            } else {
                Seen::Other
            };
            seen.insert(path, recorded);
        }
    }
    seen
}

/// Where the link at `link` (in a real folder) leads as far as the kernel could follow it:
/// the longest prefix of its target that exists, resolved. A write through the link lands
/// there (or in a missing name right under it).
fn furthest_reach(link: &Path) -> PathBuf {
    let target = fs::read_link(link).expect("a link");
    let base = link.parent().expect("a link has a folder");
    let mut reached = fs::canonicalize(base).expect("a real folder");
    let mut candidate = base.to_path_buf();
    for component in target.components() {
        candidate.push(component.as_os_str());
        match fs::canonicalize(&candidate) {
            Ok(real) => reached = real,
            Err(_) => break,
        }
    }
    if target.is_absolute() {
        // Not resolved step by step from `base`: whatever it names is outside.
        return PathBuf::from("/");
    }
    reached
}

/// A folder around the root: `root/` (empty), `outside/secret`, `outside/dir/`, and the
/// archive (`archive.tar` or `archive.zip`) beside them.
struct Scene {
    _folder: tempfile::TempDir,
    around: PathBuf,
    root: PathBuf,
    archive: PathBuf,
}

fn scene(archive_name: &str, bytes: &[u8]) -> Scene {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let around = fs::canonicalize(folder.path()).expect("a real folder");
    let root = around.join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(around.join("outside/dir")).unwrap();
    fs::write(around.join("outside/secret"), "secret").unwrap();
    let archive = around.join(archive_name);
    fs::write(&archive, bytes).unwrap();
    Scene {
        _folder: folder,
        around,
        root,
        archive,
    }
}

/// Extracts with `extract` and checks every promise of the module.
fn check_extraction(
    scene: &Scene,
    extract: fn(&Path, &Path, &Cancel) -> crate::error::Result<Vec<String>>,
) -> Result<(), TestCaseError> {
    let before = list(&scene.around);
    let outside_inodes: BTreeSet<(u64, u64)> = before
        .values()
        .filter_map(|seen| match seen {
            Seen::File { inode, .. } => Some(*inode),
            _ => None,
        })
        .collect();
    let result = extract(&scene.archive, &scene.root, &Cancel::default());
    let after = list(&scene.around);

    // Outside the root, nothing changed but the archive, which goes only on success.
    let outside = |listing: &BTreeMap<PathBuf, Seen>| -> BTreeMap<PathBuf, Seen> {
        listing
            .iter()
            .filter(|(path, _)| !path.starts_with(&scene.root) && **path != scene.archive)
            .map(|(path, seen)| (path.clone(), seen.clone()))
            .collect()
    };
    prop_assert_eq!(outside(&before), outside(&after));
    let archive_left = after.contains_key(&scene.archive);
    prop_assert_eq!(archive_left, result.is_err(), "{:?}", result);

    for (path, seen) in after
        .iter()
        .filter(|(path, _)| path.starts_with(&scene.root))
    {
        match seen {
            Seen::Link(_) => {
                let reach = furthest_reach(path);
                prop_assert!(
                    reach.starts_with(&scene.root),
                    "{} leads to {} ({result:?})",
                    path.display(),
                    reach.display()
                );
            }
            Seen::File { inode, .. } => {
                prop_assert!(
                    !outside_inodes.contains(inode),
                    "{} is a hard link to a file outside the root",
                    path.display()
                );
                let mode = fs::symlink_metadata(path).unwrap().permissions().mode();
                prop_assert_eq!(mode & 0o7000, 0, "{} kept mode {:o}", path.display(), mode);
            }
            Seen::Dir | Seen::Other => {}
        }
    }

    if let Err(error) = &result {
        let message = error.to_string();
        prop_assert!(!message.is_empty());
        if error.kind() == ErrorKind::Unsafe {
            prop_assert!(
                message.contains("refusing to") && message.contains("`"),
                "{message}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_tar_archive_never_writes_outside_its_root(
        entries in proptest::collection::vec(entry(), 0..8),
    ) {
        let scene = scene("archive.tar", &tar_archive(&entries));
        check_extraction(&scene, extract_tar)?;
    }

    #[test]
    fn a_zip_archive_never_writes_outside_its_root(
        entries in proptest::collection::vec(entry(), 0..8),
    ) {
        let scene = scene("archive.zip", &zip_archive(&entries));
        check_extraction(&scene, extract_zip)?;
    }
}

/// The properties above are only as good as their checks: a link planted outside the
/// extraction's promises is caught by them.
#[test]
fn the_checks_catch_a_link_that_leads_outside() {
    let scene = scene("archive.tar", &tar_archive(&[]));
    std::os::unix::fs::symlink("../outside", scene.root.join("escape")).unwrap();
    let reach = furthest_reach(&scene.root.join("escape"));
    assert_eq!(reach, scene.around.join("outside"));
    std::os::unix::fs::symlink("../outside/missing", scene.root.join("dangling")).unwrap();
    let reach = furthest_reach(&scene.root.join("dangling"));
    assert_eq!(reach, scene.around.join("outside"));
    fs::create_dir(scene.root.join("inner")).unwrap();
    std::os::unix::fs::symlink("../a/b", scene.root.join("inner/fine")).unwrap();
    assert!(furthest_reach(&scene.root.join("inner/fine")).starts_with(&scene.root));
}
