//! Cleaning of the work directory by age and by size, run by the session's maintenance task
//! (at start, then every [`MAINTENANCE_PERIOD`]).
//!
//! - **Failed attempts' folders** (`WORK/tasks/TASK-ATTEMPT`, kept for inspection) go once
//!   they are older than `--keep-failed` (the age of the folder's last change: the attempt's
//!   end). Never the folder of an attempt under way. A folder that cannot be removed (files
//!   written as root by a Docker container while the worker is not root) is named in one
//!   warning with the reason, and not tried again while the worker runs.
//! - **The resource cache** (`WORK/resources`) is kept under `--cache-max-size`: the least
//!   recently used entries go first (a use touches the entry's manifest), never one an attempt
//!   under way uses. Folders whose name is not a SHA-256 key (the CRC-named entries of herd
//!   before 0.1) and manifests without their folder are removed.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

/// How often the maintenance task cleans.
pub(crate) const MAINTENANCE_PERIOD: Duration = Duration::from_secs(60);

/// Removes the failed attempts' folders under `tasks` older than `keep_failed`, except those
/// in `in_use` and those in `unremovable` (which gains the ones `remove` fails on, each
/// warned about once). Returns the folders removed.
pub(crate) fn sweep_failed(
    tasks: &Path,
    keep_failed: Duration,
    in_use: &HashSet<PathBuf>,
    unremovable: &mut HashSet<PathBuf>,
    mut remove: impl FnMut(&Path) -> io::Result<()>,
) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(tasks) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        // `.spare` and anything not named TASK-ATTEMPT is not an attempt's folder.
        if !is_attempt_name(&entry.file_name().to_string_lossy())
            || in_use.contains(&path)
            || unremovable.contains(&path)
        {
            continue;
        }
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        let age = metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .unwrap_or_default();
        if !metadata.is_dir() || age < keep_failed {
            continue;
        }
        match remove(&path) {
            Ok(()) => removed.push(path),
            Err(error) => {
                warn!(
                    folder = %path.display(),
                    %error,
                    "cannot remove a failed attempt's folder older than --keep-failed: its \
                     files were likely written as root by a Docker container; remove it as \
                     root, or run the worker as root. It is not tried again until the worker \
                     restarts"
                );
                unremovable.insert(path);
            }
        }
    }
    removed
}

/// `TASK-ATTEMPT`, both numbers.
pub(crate) fn is_attempt_name(name: &str) -> bool {
    // An instance prefix (`i` and 16 hex digits) first, when the server gave one.
    let name = match name.strip_prefix('i').and_then(|rest| rest.split_once('-')) {
        Some((instance, rest))
            if instance.len() == 16 && instance.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
        {
            rest
        }
        _ => name,
    };
    name.split_once('-').is_some_and(|(task, attempt)| {
        [task, attempt]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
    })
}

/// Removes a folder and everything in it, made writable first (a task may have made parts of
/// it read-only; the cache's entries are read-only by design).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    make_writable(path)?;
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

fn make_writable(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(path)? {
        make_writable(&entry?.path())?;
    }
    Ok(())
}

/// Whether `name` is a cache key: a SHA-256 in lowercase hex.
pub(crate) fn is_cache_key(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// One sealed cache entry.
struct CacheEntry {
    key: String,
    bytes: u64,
    last_used: SystemTime,
}

/// What a cache sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheSweep {
    /// Entries evicted to stay under the size limit, least recently used first.
    pub evicted: Vec<String>,
    /// Folders and files that were not entries (old CRC-named folders, orphan manifests).
    pub stray: Vec<String>,
}

/// Keeps the cache under `root` within `max_bytes` (see the module's documentation);
/// `claim(key)` is asked before an entry is evicted and says false when an attempt uses it
/// (it is then kept). An entry is taken out of the way by a rename first, so a claim that
/// comes after finds it missing and fetches it again.
pub(crate) fn sweep_cache(
    root: &Path,
    max_bytes: u64,
    mut claim: impl FnMut(&str, &dyn Fn() -> io::Result<()>) -> io::Result<bool>,
) -> CacheSweep {
    let mut sweep = CacheSweep::default();
    let Ok(listing) = fs::read_dir(root) else {
        return sweep;
    };
    let names: HashSet<String> = listing
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let mut entries = Vec::new();
    for name in &names {
        let path = root.join(name);
        if let Some(key) = name.strip_suffix(MANIFEST) {
            if !is_cache_key(key) || !names.contains(key) {
                remove_stray(&path, name, &mut sweep);
            }
            continue;
        }
        if name.ends_with(PARTIAL_MANIFEST) || name.starts_with(EVICTING) {
            remove_stray(&path, name, &mut sweep);
            continue;
        }
        if !is_cache_key(name) {
            remove_stray(&path, name, &mut sweep);
            continue;
        }
        // A folder without a manifest is being fetched (or was cut short): left alone.
        if let Some(entry) = sealed_entry(root, name) {
            entries.push(entry);
        }
    }
    let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
    entries.sort_by_key(|entry| entry.last_used);
    for entry in entries {
        if total <= max_bytes {
            break;
        }
        let folder = root.join(&entry.key);
        let manifest = root.join(format!("{}{MANIFEST}", entry.key));
        let aside = root.join(format!("{EVICTING}{}", entry.key));
        let take_aside = || {
            fs::remove_file(&manifest)?;
            fs::rename(&folder, &aside)
        };
        match claim(&entry.key, &take_aside) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                warn!(entry = %folder.display(), %error, "cannot evict a resource cache entry");
                continue;
            }
        }
        if let Err(error) = remove_tree(&aside) {
            warn!(entry = %aside.display(), %error, "cannot remove an evicted resource cache entry");
        }
        total = total.saturating_sub(entry.bytes);
        sweep.evicted.push(entry.key);
    }
    sweep
}

const MANIFEST: &str = ".manifest";
const PARTIAL_MANIFEST: &str = ".manifest-partial";
/// The prefix of an entry taken aside for removal.
const EVICTING: &str = ".evicting-";

fn remove_stray(path: &Path, name: &str, sweep: &mut CacheSweep) {
    let removed = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match removed {
        Ok(()) => {
            info!(path = %path.display(), "removed from the resource cache: not an entry of this herd (an old CRC-named entry, or an unfinished record)");
            sweep.stray.push(name.to_owned());
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot remove a stray file of the resource cache")
        }
    }
}

/// The size (of the files its manifest lists) and last use (its manifest's mtime) of a
/// sealed entry.
fn sealed_entry(root: &Path, key: &str) -> Option<CacheEntry> {
    let manifest = root.join(format!("{key}{MANIFEST}"));
    let last_used = fs::metadata(&manifest).ok()?.modified().ok()?;
    let text = fs::read_to_string(&manifest).ok()?;
    // Lines after the URI: `KIND MODE SIZE MTIME INODE /PATH`.
    let bytes = text
        .lines()
        .skip(1)
        .filter(|line| line.starts_with("f "))
        .filter_map(|line| line.split(' ').nth(2)?.parse::<u64>().ok())
        .sum();
    Some(CacheEntry {
        key: key.to_owned(),
        bytes,
        last_used,
    })
}

/// Marks the entry `key` under `root` used now (its manifest's mtime), for the LRU order.
pub(crate) fn touch(root: &Path, key: &str) {
    let manifest = root.join(format!("{key}{MANIFEST}"));
    let touched = fs::File::options()
        .write(true)
        .open(&manifest)
        .and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = touched {
        warn!(manifest = %manifest.display(), %error, "cannot record the use of a cached resource");
    }
}

#[cfg(test)]
mod tests;
