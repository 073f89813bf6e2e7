//! Actions (`|gunzip`, `|untar`, `|unzip`, `|mv:DIR`) applied to downloaded items.
//!
//! The *items* are the top-level names a download created in a directory (a file's name, or
//! the first components of a directory download). Each action turns the items into new ones:
//! gunzip replaces `x.gz` by `x`, untar and unzip replace the archive by its top-level entries,
//! mv replaces everything by the folder it moved them into. Items an action does not apply to
//! pass through unchanged; an action that applies to none of them is an error.
//!
//! Extraction never writes outside its directory: `archive.rs` says how.

mod archive;

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, AtomicFile, Cancel, OrderedSet};
use crate::uri::{Action, SubDir};

const TAR_SUFFIXES: [&str; 3] = [".tar", ".tar.gz", ".tgz"];
const UNSUPPORTED_TAR_SUFFIXES: [&str; 7] = [
    ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst", ".tzst",
];

/// Applies `actions` in order to `items` (top-level names in `root`) and returns the items
/// after the last one. Blocking: call it from a blocking thread.
///
/// On error, `root` may hold part of the result, but never anything written outside it.
pub fn apply(root: &Path, items: Vec<String>, actions: &[Action]) -> Result<Vec<String>> {
    apply_cancellable(root, items, actions, &Cancel::default())
}

pub(crate) fn apply_cancellable(
    root: &Path,
    mut items: Vec<String>,
    actions: &[Action],
    cancel: &Cancel,
) -> Result<Vec<String>> {
    for action in actions {
        cancel.check()?;
        items = match action {
            Action::Gunzip => gunzip_items(root, items, cancel)?,
            Action::Untar => extract_items(root, items, Format::Tar, cancel)?,
            Action::Unzip => extract_items(root, items, Format::Zip, cancel)?,
            Action::Move(dir) => move_items(root, items, dir)?,
        };
    }
    Ok(items)
}

fn is_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_file())
}

fn nothing_to_do(action: &str, wanted: &str, items: &[String]) -> Error {
    let found = if items.is_empty() {
        "the download is empty".to_owned()
    } else {
        format!(
            "the download holds {}",
            items
                .iter()
                .map(|item| format!("`{item}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Error::invalid_uri(format!(
        "`|{action}` needs {wanted} but {found}: remove |{action} or fix the uri"
    ))
}

fn gunzip_items(root: &Path, items: Vec<String>, cancel: &Cancel) -> Result<Vec<String>> {
    if !items
        .iter()
        .any(|item| item.ends_with(".gz") && is_file(&root.join(item)))
    {
        return Err(nothing_to_do("gunzip", "a file ending in .gz", &items));
    }
    let mut result = OrderedSet::default();
    for item in items {
        let Some(stem) = item.strip_suffix(".gz").filter(|stem| !stem.is_empty()) else {
            result.insert(&item);
            continue;
        };
        let compressed = root.join(&item);
        if !is_file(&compressed) {
            result.insert(&item);
            continue;
        }
        gunzip_file(&compressed, &root.join(stem), cancel)?;
        fs::remove_file(&compressed).at("cannot remove", &compressed)?;
        result.insert(stem);
    }
    Ok(result.into_vec())
}

/// Decompresses the gzip file `source` (several members allowed, as bgzip writes) into
/// `destination`, atomically, keeping the permission bits.
pub(crate) fn gunzip_file(source: &Path, destination: &Path, cancel: &Cancel) -> Result<()> {
    let input = File::open(source).at("cannot open", source)?;
    let mode = input
        .metadata()
        .at("cannot read", source)?
        .permissions()
        .mode();
    let mut decoder = MultiGzDecoder::new(BufReader::new(input));
    let mut output = AtomicFile::create(destination)?;
    local::copy_stream(&mut decoder, &mut output, cancel).map_err(|error| match error.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            Error::with_source(
                ErrorKind::InvalidData,
                format!(
                    "`{}` is not valid gzip (corrupt or truncated): download it again",
                    source.display()
                ),
                error,
            )
        }
        _ => Error::io("cannot decompress", source, error),
    })?;
    output.set_mode(mode)?;
    output.commit()?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Format {
    Tar,
    Zip,
}

fn extract_items(
    root: &Path,
    items: Vec<String>,
    format: Format,
    cancel: &Cancel,
) -> Result<Vec<String>> {
    let matches = |item: &str| match format {
        Format::Tar => TAR_SUFFIXES.iter().any(|suffix| item.ends_with(suffix)),
        Format::Zip => item.ends_with(".zip"),
    };
    let (action, wanted) = match format {
        Format::Tar => ("untar", "a file ending in .tar, .tar.gz or .tgz"),
        Format::Zip => ("unzip", "a file ending in .zip"),
    };
    if matches!(format, Format::Tar)
        && let Some(item) = items.iter().find(|item| {
            UNSUPPORTED_TAR_SUFFIXES
                .iter()
                .any(|suffix| item.ends_with(suffix))
        })
    {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot untar `{item}`: only .tar, .tar.gz and .tgz archives are supported; recompress it with gzip"
            ),
        ));
    }
    if !items
        .iter()
        .any(|item| matches(item) && is_file(&root.join(item)))
    {
        return Err(nothing_to_do(action, wanted, &items));
    }
    let mut result = OrderedSet::default();
    for item in items {
        let archive_path = root.join(&item);
        if !matches(&item) || !is_file(&archive_path) {
            result.insert(&item);
            continue;
        }
        let extracted = match format {
            Format::Tar => archive::extract_tar(&archive_path, root, cancel)?,
            Format::Zip => archive::extract_zip(&archive_path, root, cancel)?,
        };
        for name in extracted {
            result.insert(&name);
        }
    }
    Ok(result.into_vec())
}

fn move_items(root: &Path, items: Vec<String>, dir: &SubDir) -> Result<Vec<String>> {
    let first = dir
        .as_str()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if items.contains(&first) {
        return Err(Error::invalid_uri(format!(
            "`|mv:{}` would move `{first}` into itself: choose a folder name that the download does not already use",
            dir.as_str()
        )));
    }
    let target = root.join(dir.as_path());
    archive::create_dirs_inside(root, dir.as_path(), dir.as_path())?;
    for item in &items {
        local::move_merge(&root.join(item), &target.join(item))?;
    }
    Ok(vec![first])
}
