//! The sweeps on real folders: ages set through mtimes, a remover that fails on demand.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Makes `path` look last changed `age` ago.
fn age(path: &Path, age: Duration) {
    fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn attempt_folder(tasks: &Path, name: &str, old: Duration) -> PathBuf {
    let folder = tasks.join(name);
    fs::create_dir_all(folder.join("output")).unwrap();
    fs::write(folder.join("output/partial.txt"), "x").unwrap();
    age(&folder, old);
    folder
}

#[test]
fn failed_folders_go_after_keep_failed_except_those_in_use() {
    let work = tempfile::tempdir().unwrap();
    let tasks = work.path();
    let old = attempt_folder(tasks, "7-1", 2 * HOUR);
    let young = attempt_folder(tasks, "8-1", Duration::ZERO);
    let running = attempt_folder(tasks, "9-2", 2 * HOUR);
    let spare = attempt_folder(tasks, ".spare", 2 * HOUR);
    let other = attempt_folder(tasks, "notes", 2 * HOUR);
    let in_use = HashSet::from([running.clone()]);
    let mut unremovable = HashSet::new();
    let removed = sweep_failed(tasks, HOUR, &in_use, &mut unremovable, remove_tree);
    assert_eq!(removed, vec![old.clone()]);
    assert!(!old.exists());
    for kept in [&young, &running, &spare, &other] {
        assert!(kept.exists(), "{}", kept.display());
    }
    // With --keep-failed 0, the young one goes too.
    let removed = sweep_failed(
        tasks,
        Duration::ZERO,
        &in_use,
        &mut unremovable,
        remove_tree,
    );
    assert_eq!(removed, vec![young]);
}

#[test]
fn a_folder_that_cannot_be_removed_is_tried_once() {
    let work = tempfile::tempdir().unwrap();
    let stuck = attempt_folder(work.path(), "7-1", 2 * HOUR);
    let tries = Cell::new(0);
    let refuse = |_: &Path| {
        tries.set(tries.get() + 1);
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    };
    let mut unremovable = HashSet::new();
    let in_use = HashSet::new();
    assert!(sweep_failed(work.path(), HOUR, &in_use, &mut unremovable, refuse).is_empty());
    assert!(sweep_failed(work.path(), HOUR, &in_use, &mut unremovable, refuse).is_empty());
    assert_eq!(tries.get(), 1, "not tried again");
    assert!(unremovable.contains(&stuck));
}

#[test]
fn a_tree_made_read_only_is_removed() {
    let work = tempfile::tempdir().unwrap();
    let folder = attempt_folder(work.path(), "7-1", Duration::ZERO);
    let inner = folder.join("output");
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o500)).unwrap();
    fs::set_permissions(&folder, fs::Permissions::from_mode(0o500)).unwrap();
    remove_tree(&folder).unwrap();
    assert!(!folder.exists());
    remove_tree(&folder).unwrap();
}

fn key(byte: char) -> String {
    std::iter::repeat_n(byte, 64).collect()
}

/// A sealed-looking entry of `bytes` (one file), last used `old` ago.
fn entry(root: &Path, key: &str, bytes: u64, old: Duration) {
    fs::create_dir_all(root.join(key)).unwrap();
    let manifest = root.join(format!("{key}.manifest"));
    fs::write(
        &manifest,
        format!("s3://bucket/{key}\nd 555 4096 1.0 1 /\nf 444 {bytes} 1.0 2 /data"),
    )
    .unwrap();
    age(&manifest, old);
}

#[test]
fn the_cache_evicts_least_recently_used_entries_past_its_size_and_keeps_those_in_use() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (oldest, in_use, newer, newest) = (key('a'), key('b'), key('c'), key('d'));
    entry(root, &oldest, 100, 4 * HOUR);
    entry(root, &in_use, 100, 3 * HOUR);
    entry(root, &newer, 100, 2 * HOUR);
    entry(root, &newest, 100, HOUR);
    // Old CRC-named entries, an orphan manifest and an unfinished download.
    fs::create_dir_all(root.join("1a2b3c4d/sub")).unwrap();
    fs::set_permissions(root.join("1a2b3c4d/sub"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(root.join(format!("{}.manifest", key('e'))), "s3://x\n").unwrap();
    fs::create_dir_all(root.join(key('f'))).unwrap();

    let sweep = sweep_cache(root, 200, |key, take_aside| {
        if key == in_use {
            return Ok(false);
        }
        take_aside()?;
        Ok(true)
    });
    assert_eq!(sweep.evicted, vec![oldest.clone(), newer.clone()]);
    let mut stray = sweep.stray.clone();
    stray.sort();
    assert_eq!(
        stray,
        vec!["1a2b3c4d".to_owned(), format!("{}.manifest", key('e'))]
    );
    let mut left: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            in_use.clone(),
            format!("{in_use}.manifest"),
            newest.clone(),
            format!("{newest}.manifest"),
            key('f'),
        ]
    );
    // Within its size, nothing more goes.
    let again = sweep_cache(root, 200, |_, take_aside| take_aside().map(|()| true));
    assert_eq!(again, CacheSweep::default());
}

#[test]
fn only_sha256_names_are_cache_keys_and_task_attempt_names_attempts() {
    assert!(is_cache_key(&crate::staging::cache_key("s3://bucket/db")));
    assert!(!is_cache_key("1a2b3c4d"));
    assert!(!is_cache_key(&key('A')));
    assert!(is_attempt_name("12-3"));
    assert!(!is_attempt_name(".spare"));
    assert!(!is_attempt_name("12-"));
    assert!(!is_attempt_name("a-1"));
}
