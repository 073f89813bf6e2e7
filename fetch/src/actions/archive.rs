//! Safe extraction of tar (plain or gzip) and zip archives into a directory, the *root*.
//!
//! Every entry is checked before anything is written for it:
//! - its path must be relative, without `..` (`.` is dropped);
//! - no directory between the root and the entry may be a symbolic link (so nothing is ever
//!   written *through* a link), and an existing file or link at the entry's name is removed,
//!   never followed;
//! - a hard link must name, with a safe path, a regular file that the archive already created;
//! - a symbolic link must be relative, may use `..` only at the start of its target (`../a/b`,
//!   not `a/../b`, which a link `a -> .` would turn into an escape), and must stay inside the
//!   root read from where it lies. Links are created last, after every file and directory, then
//!   each one is resolved again against the final tree, following the other links, as a second
//!   line of defence; an escaping link is removed with every link of the archive, and the
//!   extraction fails.
//!
//! A refusal is an error of kind [`Unsafe`](crate::ErrorKind::Unsafe) naming the entry. Fifos
//! and devices are skipped. Permission bits are kept without setuid, setgid or sticky bits.
//! The archive is removed after a successful extraction.
//!
//! `archive/proptests.rs` checks these promises on generated hostile archives.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use tracing::warn;

use crate::checksum::BUFFER_SIZE;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{self, Cancel, OrderedSet};

/// Longest symbolic-link chain followed when checking a link; longer is refused as a loop.
const MAX_LINK_FOLLOWS: usize = 40;
/// Longest symbolic-link target read from a zip entry.
const MAX_ZIP_LINK_TARGET: u64 = 4096;

/// Extracts the tar archive `archive` (plain or gzip-compressed, detected from its content)
/// into `root`, removes it, and returns the top-level names it created.
pub(crate) fn extract_tar(archive: &Path, root: &Path, cancel: &Cancel) -> Result<Vec<String>> {
    let file = File::open(archive).at("cannot open", archive)?;
    let identity = file.metadata().at("cannot read", archive)?;
    let mut buffered = BufReader::with_capacity(BUFFER_SIZE, file);
    let is_gzip = buffered
        .fill_buf()
        .at("cannot read", archive)?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if is_gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut extractor = Extractor::new(archive, root);
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|error| corrupt(archive, "tar", error))?;
    for entry in entries {
        cancel.check()?;
        let mut entry = entry.map_err(|error| corrupt(archive, "tar", error))?;
        let raw_path = entry
            .path()
            .map_err(|error| corrupt(archive, "tar", error))?
            .into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() || entry_type.is_pax_local_extensions() {
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let Some(relative) = extractor.check_path(&raw_path)? else {
            continue;
        };
        if entry_type.is_dir() {
            extractor.make_dir(&relative)?;
        } else if entry_type.is_file()
            || entry_type.is_gnu_sparse()
            || entry_type == tar::EntryType::Continuous
        {
            extractor.write_file(&relative, &raw_path, &mut entry, mode, cancel, "tar")?;
        } else if entry_type.is_symlink() || entry_type.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|error| corrupt(archive, "tar", error))?
                .map(|target| target.into_owned())
                .unwrap_or_default();
            if entry_type.is_symlink() {
                extractor.add_symlink(relative, &raw_path, target)?;
            } else {
                extractor.hard_link(&relative, &raw_path, &target)?;
            }
        } else {
            warn!(archive = %archive.display(), entry = %raw_path.display(), "skipping a tar entry that is not a file, directory or link");
        }
    }
    extractor.finish()?;
    remove_archive(archive, &identity)?;
    Ok(extractor.top_level.into_vec())
}

/// Extracts the zip archive `archive` (stored or deflate entries) into `root`, removes it, and
/// returns the top-level names it created.
pub(crate) fn extract_zip(archive: &Path, root: &Path, cancel: &Cancel) -> Result<Vec<String>> {
    let file = File::open(archive).at("cannot open", archive)?;
    let identity = file.metadata().at("cannot read", archive)?;
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|error| zip_error(archive, error))?;
    let mut extractor = Extractor::new(archive, root);
    for index in 0..zip.len() {
        cancel.check()?;
        let mut entry = zip
            .by_index(index)
            .map_err(|error| zip_error(archive, error))?;
        let name = entry
            .name()
            .map_err(|error| zip_error(archive, error))?
            .into_owned();
        let raw_path = PathBuf::from(&name);
        let Some(relative) = extractor.check_path(&raw_path)? else {
            continue;
        };
        if entry.is_dir() {
            extractor.make_dir(&relative)?;
        } else if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(MAX_ZIP_LINK_TARGET)
                .read_to_string(&mut target)
                .map_err(|error| corrupt(archive, "zip", error))?;
            extractor.add_symlink(relative, &raw_path, PathBuf::from(target))?;
        } else {
            let mode = entry.unix_mode().unwrap_or(0o644);
            extractor.write_file(&relative, &raw_path, &mut entry, mode, cancel, "zip")?;
        }
    }
    drop(zip);
    extractor.finish()?;
    remove_archive(archive, &identity)?;
    Ok(extractor.top_level.into_vec())
}

/// Removes the archive, unless an entry of its own replaced it (same name): then the entry stays.
fn remove_archive(archive: &Path, identity: &fs::Metadata) -> Result<()> {
    match fs::symlink_metadata(archive) {
        Ok(current) if current.dev() == identity.dev() && current.ino() == identity.ino() => {
            fs::remove_file(archive).at("cannot remove the extracted archive", archive)
        }
        _ => Ok(()),
    }
}

fn corrupt(archive: &Path, format: &str, error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            Error::io("cannot read", archive, error)
        }
        _ => Error::with_source(
            ErrorKind::InvalidData,
            format!(
                "`{}` is not a valid {format} archive (corrupt or truncated): download it again",
                archive.display()
            ),
            error,
        ),
    }
}

fn zip_error(archive: &Path, error: zip::result::ZipError) -> Error {
    match error {
        zip::result::ZipError::Io(error) => corrupt(archive, "zip", error),
        zip::result::ZipError::UnsupportedArchive(_) => Error::with_source(
            ErrorKind::Unsupported,
            format!(
                "`{}` uses a zip feature this build cannot read (only stored and deflate entries, without encryption): repack it",
                archive.display()
            ),
            error,
        ),
        error => Error::with_source(
            ErrorKind::InvalidData,
            format!(
                "`{}` is not a valid zip archive (corrupt or truncated): download it again",
                archive.display()
            ),
            error,
        ),
    }
}

/// Creates the directories of `relative` under `root` that are missing, refusing to go through
/// a symbolic link or a file.
/// `entry` is what the directories are for, named in errors.
pub(crate) fn create_dirs_inside(root: &Path, relative: &Path, entry: &Path) -> Result<()> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.is_symlink() => {
                return Err(Error::unsafe_entry(format!(
                    "refusing to write `{}` through the symbolic link `{}`: links inside the target are never followed",
                    entry.display(),
                    current.display()
                )));
            }
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "cannot create `{}`: `{}` is a file, not a directory",
                        entry.display(),
                        current.display()
                    ),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).at("cannot create the directory", &current)?;
            }
            Err(error) => return Err(Error::io("cannot read", &current, error)),
        }
    }
    Ok(())
}

/// Removes a file or symbolic link at `path` (never following it) so that an entry can take its
/// place; a directory there is an error.
fn clear_for_file(path: &Path, entry: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "cannot extract `{}`: a directory is in the way at `{}`",
                entry.display(),
                path.display()
            ),
        )),
        Ok(_) => fs::remove_file(path).at("cannot replace", path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io("cannot read", path, error)),
    }
}

struct PendingLink {
    relative: PathBuf,
    target: PathBuf,
}

struct Extractor<'a> {
    archive: &'a Path,
    root: &'a Path,
    top_level: OrderedSet,
    links: Vec<PendingLink>,
}

impl<'a> Extractor<'a> {
    fn new(archive: &'a Path, root: &'a Path) -> Self {
        Extractor {
            archive,
            root,
            top_level: OrderedSet::default(),
            links: Vec::new(),
        }
    }

    fn refuse(&self, entry: &Path, reason: &str) -> Error {
        Error::unsafe_entry(format!(
            "refusing to extract `{}`: entry `{}` {reason}; the archive is malformed or hostile, and nothing was written outside `{}`",
            self.archive.display(),
            entry.display(),
            self.root.display()
        ))
    }

    /// The entry's path, relative and normalized; `None` for an entry that names the root itself.
    fn check_path(&self, raw: &Path) -> Result<Option<PathBuf>> {
        let relative = self.safe_relative(raw, raw, "")?;
        Ok((relative.components().next().is_some()).then_some(relative))
    }

    /// Records that `relative` was (or will be) created, for the list of top-level names.
    fn note(&mut self, relative: &Path) {
        if let Some(Component::Normal(first)) = relative.components().next() {
            self.top_level.insert(&first.to_string_lossy());
        }
    }

    fn safe_relative(&self, path: &Path, entry: &Path, what: &str) -> Result<PathBuf> {
        let mut relative = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => relative.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.refuse(
                        entry,
                        &format!("{what}has a `..` component and would land outside the target"),
                    ));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(
                        entry,
                        &format!("{what}is an absolute path and would land outside the target"),
                    ));
                }
            }
        }
        Ok(relative)
    }

    fn make_dir(&mut self, relative: &Path) -> Result<()> {
        self.note(relative);
        if let Some(parent) = relative.parent() {
            create_dirs_inside(self.root, parent, relative)?;
        }
        let path = self.root.join(relative);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => {
                fs::remove_file(&path).at("cannot replace", &path)?;
                fs::create_dir(&path).at("cannot create the directory", &path)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).at("cannot create the directory", &path)
            }
            Err(error) => Err(Error::io("cannot read", &path, error)),
        }
    }

    fn write_file(
        &mut self,
        relative: &Path,
        entry: &Path,
        content: &mut impl Read,
        mode: u32,
        cancel: &Cancel,
        format: &str,
    ) -> Result<()> {
        self.note(relative);
        if let Some(parent) = relative.parent() {
            create_dirs_inside(self.root, parent, relative)?;
        }
        let path = self.root.join(relative);
        clear_for_file(&path, entry)?;
        // create_new: fails rather than follow anything that appeared at the name since.
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("cannot create", &path)?;
        local::copy_stream(content, &mut output, cancel).map_err(|error| match error.kind() {
            io::ErrorKind::Interrupted => {
                Error::with_source(ErrorKind::Io, "the transfer was cancelled", error)
            }
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::PermissionDenied => Error::io("cannot write", &path, error),
            _ => corrupt(self.archive, format, error),
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o777))
            .at("cannot set the permissions of", &path)
    }

    fn hard_link(&mut self, relative: &Path, entry: &Path, target: &Path) -> Result<()> {
        if target.as_os_str().is_empty() {
            return Err(self.refuse(entry, "is a hard link without a target"));
        }
        let shown = format!("links to `{}`, which ", target.display());
        let target_relative = self.safe_relative(target, entry, &shown)?;
        if let Some(parent) = target_relative.parent() {
            self.check_no_link_in(parent, entry)?;
        }
        let source = self.root.join(&target_relative);
        if !fs::symlink_metadata(&source).is_ok_and(|metadata| metadata.is_file()) {
            return Err(self.refuse(
                entry,
                &format!(
                    "is a hard link to `{}`, which is not a file the archive created before it",
                    target.display()
                ),
            ));
        }
        self.note(relative);
        if let Some(parent) = relative.parent() {
            create_dirs_inside(self.root, parent, relative)?;
        }
        let path = self.root.join(relative);
        if path == source {
            return Ok(());
        }
        clear_for_file(&path, entry)?;
        fs::hard_link(&source, &path).at("cannot create the hard link", &path)
    }

    /// Fails if a directory on the way from the root to `relative` is a symbolic link.
    fn check_no_link_in(&self, relative: &Path, entry: &Path) -> Result<()> {
        let mut current = self.root.to_path_buf();
        for component in relative.components() {
            current.push(component);
            if fs::symlink_metadata(&current).is_ok_and(|metadata| metadata.is_symlink()) {
                return Err(self.refuse(
                    entry,
                    &format!("goes through the symbolic link `{}`", current.display()),
                ));
            }
        }
        Ok(())
    }

    fn add_symlink(&mut self, relative: PathBuf, entry: &Path, target: PathBuf) -> Result<()> {
        if target.as_os_str().is_empty() {
            return Err(self.refuse(entry, "is a symbolic link without a target"));
        }
        if target.has_root() {
            return Err(self.refuse(
                entry,
                &format!(
                    "is a symbolic link to the absolute path `{}`, outside the target",
                    target.display()
                ),
            ));
        }
        // `..` may only lead the target: the climb then goes through real directories (links are
        // never written through), so reading it lexically is exact, and every name after it
        // either is a real directory or a link checked the same way.
        let mut depth = relative.components().count().saturating_sub(1);
        let mut named = false;
        for component in target.components() {
            match component {
                Component::Normal(_) => {
                    depth += 1;
                    named = true;
                }
                Component::ParentDir if named => {
                    return Err(self.refuse(
                        entry,
                        &format!(
                            "is a symbolic link to `{}`, with `..` after a name, which could resolve outside the target through another link",
                            target.display()
                        ),
                    ));
                }
                Component::ParentDir if depth == 0 => {
                    return Err(self.refuse(
                        entry,
                        &format!(
                            "is a symbolic link to `{}`, which resolves outside the target",
                            target.display()
                        ),
                    ));
                }
                Component::ParentDir => depth -= 1,
                _ => {}
            }
        }
        self.note(&relative);
        self.links.push(PendingLink { relative, target });
        Ok(())
    }

    /// Creates the symbolic links, then checks each against the final tree.
    fn finish(&mut self) -> Result<()> {
        let mut created: Vec<PathBuf> = Vec::new();
        let result = self.create_links(&mut created);
        if result.is_err() {
            for path in &created {
                let _ = fs::remove_file(path);
            }
        }
        result
    }

    fn create_links(&self, created: &mut Vec<PathBuf>) -> Result<()> {
        for link in &self.links {
            if let Some(parent) = link.relative.parent() {
                create_dirs_inside(self.root, parent, &link.relative)?;
            }
            let path = self.root.join(&link.relative);
            clear_for_file(&path, &link.relative)?;
            std::os::unix::fs::symlink(&link.target, &path)
                .at("cannot create the symbolic link", &path)?;
            created.push(path);
        }
        for link in &self.links {
            if !resolves_inside(self.root, &link.relative) {
                return Err(self.refuse(
                    &link.relative,
                    &format!(
                        "is a symbolic link to `{}`, which resolves outside the target through other links",
                        link.target.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

enum Step {
    Up,
    Name(OsString),
}

/// Whether the symbolic link at `relative` (under `root`) resolves inside `root`, following the
/// links it meets the way the kernel would; a missing component ends the walk (the kernel would
/// fail there), too many links count as outside.
fn resolves_inside(root: &Path, relative: &Path) -> bool {
    let mut current: Vec<OsString> = relative
        .parent()
        .map(|parent| {
            parent
                .components()
                .map(|component| component.as_os_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let Ok(target) = fs::read_link(root.join(relative)) else {
        return false;
    };
    let mut pending: VecDeque<Step> = VecDeque::new();
    if !push_front_target(&mut pending, &target) {
        return false;
    }
    let mut follows = 0;
    while let Some(step) = pending.pop_front() {
        match step {
            Step::Up => {
                if current.pop().is_none() {
                    return false;
                }
            }
            Step::Name(name) => {
                current.push(name);
                let path = current
                    .iter()
                    .fold(root.to_path_buf(), |path, name| path.join(name));
                match fs::symlink_metadata(&path) {
                    Ok(metadata) if metadata.is_symlink() => {
                        follows += 1;
                        if follows > MAX_LINK_FOLLOWS {
                            return false;
                        }
                        let Ok(next) = fs::read_link(&path) else {
                            return false;
                        };
                        current.pop();
                        if !push_front_target(&mut pending, &next) {
                            return false;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
        }
    }
    true
}

/// Queues `target`'s components in front of `pending`; false for an absolute target.
fn push_front_target(pending: &mut VecDeque<Step>, target: &Path) -> bool {
    let mut steps = Vec::new();
    for component in target.components() {
        match component {
            Component::Normal(name) => steps.push(Step::Name(name.to_owned())),
            Component::ParentDir => steps.push(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    for step in steps.into_iter().rev() {
        pending.push_front(step);
    }
    true
}

#[cfg(test)]
mod proptests;
