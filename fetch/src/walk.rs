//! The walk of a local folder that is about to be copied or uploaded, and the open of each of
//! its files: neither ever follows a symbolic link, so a transfer never leaves its folder.
//!
//! [`walk_files`] lists with `lstat` only: symbolic links (to files, to folders, dangling),
//! fifos, sockets and devices are left out and reported as [`Skipped`]; each folder is opened
//! with `O_NOFOLLOW | O_DIRECTORY` and listed through its descriptor (`/proc/self/fd/N`), so a
//! folder swapped for a link after it was seen is not listed through the link. Each file's
//! device and inode are recorded; [`open_listed`] opens it with `O_NOFOLLOW` and checks
//! (`fstat`) that it is still that regular file, so a swap between listing and opening cannot
//! make a transfer read anything else.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{Cancel, slash_path};

/// Why an entry of a walked folder was not transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A symbolic link: never followed.
    SymbolicLink,
    /// A fifo, a socket or a device.
    Special,
    /// A regular file with more than one name (hard link), refused on request.
    HardLinked,
    /// Replaced by something else while it was walked.
    Changed,
}

/// Something under a walked folder that was left out of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Path relative to the walked folder, `/`-separated; empty for the folder itself.
    pub path: String,
    /// Why it was left out.
    pub reason: SkipReason,
}

impl Skipped {
    /// What the entry is, as in `is a symbolic link`.
    pub fn what(&self) -> &'static str {
        match self.reason {
            SkipReason::SymbolicLink => "is a symbolic link",
            SkipReason::Special => "is a fifo, a socket or a device",
            SkipReason::HardLinked => "is a hard link (more than one name)",
            SkipReason::Changed => "changed while it was listed",
        }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "."
        } else {
            &self.path
        };
        write!(formatter, "{path} {}: not transferred", self.what())
    }
}

/// A regular file found by [`walk_files`].
#[derive(Debug, Clone)]
pub(crate) struct LocalFile {
    /// Path relative to the walked root.
    pub(crate) relative: PathBuf,
    /// Full path.
    pub(crate) path: PathBuf,
    /// Size when walked.
    pub(crate) size: u64,
    /// Device and inode when walked: [`open_listed`] opens this file or nothing.
    pub(crate) identity: (u64, u64),
}

/// What [`walk_files`] found: the regular files, sorted by relative path, and what it left out.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub(crate) files: Vec<LocalFile>,
    pub(crate) skipped: Vec<Skipped>,
}

/// Every regular file under `root`, recursively, never following a symbolic link (`root`
/// included: a link there yields nothing but a [`Skipped`] entry). With `refuse_hard_links`,
/// files with more than one name are skipped too. Empty folders yield nothing, as on object
/// stores.
pub(crate) fn walk_files(root: &Path, refuse_hard_links: bool, cancel: &Cancel) -> Result<Walk> {
    let mut walk = Walk::default();
    let metadata = fs::symlink_metadata(root).at("cannot read", root)?;
    if let Some(reason) = skip_reason(&metadata, false) {
        walk.skipped.push(Skipped {
            path: String::new(),
            reason,
        });
        return Ok(walk);
    }
    let identity = (metadata.dev(), metadata.ino());
    let mut pending = vec![(root.to_path_buf(), PathBuf::new(), identity)];
    while let Some((directory, relative, identity)) = pending.pop() {
        cancel.check()?;
        list_directory(
            (&directory, &relative, identity),
            refuse_hard_links,
            &mut walk,
            &mut pending,
        )?;
    }
    walk.files
        .sort_by(|left, right| left.relative.cmp(&right.relative));
    walk.skipped
        .sort_by(|left, right| left.path.cmp(&right.path));
    Ok(walk)
}

/// What a transfer of the folder `root` would leave out ([`walk_files`]'s [`Skipped`]
/// entries), hard links included when `refuse_hard_links`.
pub fn skipped_entries(root: &Path, refuse_hard_links: bool) -> Result<Vec<Skipped>> {
    Ok(walk_files(root, refuse_hard_links, &Cancel::default())?.skipped)
}

/// Why `metadata` (from `lstat`) is not transferred, if it is not.
fn skip_reason(metadata: &fs::Metadata, refuse_hard_links: bool) -> Option<SkipReason> {
    let kind = metadata.file_type();
    if kind.is_symlink() {
        Some(SkipReason::SymbolicLink)
    } else if kind.is_fifo() || kind.is_socket() || kind.is_block_device() || kind.is_char_device()
    {
        Some(SkipReason::Special)
    } else if kind.is_file() && refuse_hard_links && metadata.nlink() > 1 {
        Some(SkipReason::HardLinked)
    } else {
        None
    }
}

type Pending = Vec<(PathBuf, PathBuf, (u64, u64))>;

/// Lists one folder (checked to be the one seen by its parent) into `walk` and `pending`.
fn list_directory(
    (directory, relative, identity): (&Path, &Path, (u64, u64)),
    refuse_hard_links: bool,
    walk: &mut Walk,
    pending: &mut Pending,
) -> Result<()> {
    let opened = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(directory)
    {
        Ok(opened) => opened,
        Err(error) if swapped(&error) => {
            walk.skipped.push(changed(relative));
            return Ok(());
        }
        Err(error) => return Err(Error::io("cannot open", directory, error)),
    };
    let metadata = opened.metadata().at("cannot read", directory)?;
    if (metadata.dev(), metadata.ino()) != identity {
        walk.skipped.push(changed(relative));
        return Ok(());
    }
    // The descriptor's own folder, whatever its path now leads to.
    let through_descriptor = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    let listed = if through_descriptor.is_dir() {
        through_descriptor
    } else {
        directory.to_path_buf()
    };
    for entry in fs::read_dir(&listed).at("cannot list", directory)? {
        let name = entry.at("cannot list", directory)?.file_name();
        let child_relative = relative.join(&name);
        let metadata = match fs::symlink_metadata(listed.join(&name)) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::io("cannot read", &directory.join(&name), error)),
        };
        if let Some(reason) = skip_reason(&metadata, refuse_hard_links) {
            walk.skipped.push(Skipped {
                path: slash_path(&child_relative),
                reason,
            });
        } else if metadata.is_dir() {
            let identity = (metadata.dev(), metadata.ino());
            pending.push((directory.join(&name), child_relative, identity));
        } else {
            walk.files.push(LocalFile {
                path: directory.join(&name),
                relative: child_relative,
                size: metadata.len(),
                identity: (metadata.dev(), metadata.ino()),
            });
        }
    }
    Ok(())
}

fn changed(relative: &Path) -> Skipped {
    Skipped {
        path: slash_path(relative),
        reason: SkipReason::Changed,
    }
}

/// Whether an open with `O_NOFOLLOW` failed because the path is now a link or not a folder.
fn swapped(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)
    )
}

/// Opens the regular file `path` for reading without following a symbolic link (`O_NOFOLLOW`,
/// and `O_NONBLOCK` so that a fifo put in its place cannot hang the open), and checks that what
/// was opened is a regular file, and the one of `identity` (device, inode) when given.
pub(crate) fn open_regular(path: &Path, identity: Option<(u64, u64)>) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| {
            if error.raw_os_error() == Some(libc::ELOOP) {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "`{}` is a symbolic link: links are never followed; give the file it points to",
                        path.display()
                    ),
                )
            } else {
                Error::io("cannot open", path, error)
            }
        })?;
    let metadata = file.metadata().at("cannot read the metadata of", path)?;
    if !metadata.is_file() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "`{}` is not a regular file (a fifo, socket or device): only files and directories can be transferred",
                path.display()
            ),
        ));
    }
    if identity.is_some_and(|identity| identity != (metadata.dev(), metadata.ino())) {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "`{}` was replaced by another file while the transfer ran: something is still writing the folder; retry once it is complete",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Opens a file found by [`walk_files`]: that very file, or an error.
pub(crate) fn open_listed(file: &LocalFile) -> Result<File> {
    open_regular(&file.path, Some(file.identity))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn fifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.unwrap().success());
    }

    fn skipped(walk: &Walk) -> Vec<(String, SkipReason)> {
        walk.skipped
            .iter()
            .map(|entry| (entry.path.clone(), entry.reason))
            .collect()
    }

    fn relatives(walk: &Walk) -> Vec<String> {
        walk.files
            .iter()
            .map(|file| slash_path(&file.relative))
            .collect()
    }

    /// A folder holding a regular file, a secret outside it, and every kind of hostile entry.
    fn hostile_tree() -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "marker-secret").unwrap();
        let root = temp.path().join("output");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/kept"), "kept").unwrap();
        symlink(outside.join("secret"), root.join("to-file")).unwrap();
        symlink(&outside, root.join("to-folder")).unwrap();
        symlink("/nonexistent/herd", root.join("dangling")).unwrap();
        fifo(&root.join("fifo"));
        let _listener = UnixListener::bind(root.join("socket")).unwrap();
        fs::hard_link(outside.join("secret"), root.join("sub/hard")).unwrap();
        (temp, root)
    }

    #[test]
    fn links_fifos_and_sockets_are_skipped_and_never_followed() {
        let (_temp, root) = hostile_tree();
        let walk = walk_files(&root, false, &Cancel::default()).unwrap();
        assert_eq!(relatives(&walk), ["sub/hard", "sub/kept"]);
        assert_eq!(
            skipped(&walk),
            [
                ("dangling".to_owned(), SkipReason::SymbolicLink),
                ("fifo".to_owned(), SkipReason::Special),
                ("socket".to_owned(), SkipReason::Special),
                ("to-file".to_owned(), SkipReason::SymbolicLink),
                ("to-folder".to_owned(), SkipReason::SymbolicLink),
            ]
        );
    }

    #[test]
    fn hard_links_are_skipped_on_request() {
        let (_temp, root) = hostile_tree();
        let walk = walk_files(&root, true, &Cancel::default()).unwrap();
        assert_eq!(relatives(&walk), ["sub/kept"]);
        assert!(
            skipped(&walk).contains(&("sub/hard".to_owned(), SkipReason::HardLinked)),
            "{:?}",
            walk.skipped
        );
        assert_eq!(
            walk.skipped
                .iter()
                .find(|entry| entry.reason == SkipReason::HardLinked)
                .unwrap()
                .to_string(),
            "sub/hard is a hard link (more than one name): not transferred"
        );
    }

    #[test]
    fn a_linked_root_yields_nothing() {
        let (temp, _root) = hostile_tree();
        let linked = temp.path().join("linked-output");
        symlink(temp.path().join("outside"), &linked).unwrap();
        let walk = walk_files(&linked, false, &Cancel::default()).unwrap();
        assert!(walk.files.is_empty());
        assert_eq!(skipped(&walk), [(String::new(), SkipReason::SymbolicLink)]);
    }

    #[test]
    fn a_file_swapped_for_a_link_after_listing_is_never_opened_through_it() {
        let (temp, root) = hostile_tree();
        let walk = walk_files(&root, false, &Cancel::default()).unwrap();
        let kept = walk
            .files
            .iter()
            .find(|file| file.path.ends_with("sub/kept"))
            .unwrap();
        fs::remove_file(&kept.path).unwrap();
        symlink(temp.path().join("outside/secret"), &kept.path).unwrap();
        let error = open_listed(kept).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");

        // Swapped for another regular file (the hard link to the secret): refused too.
        fs::remove_file(&kept.path).unwrap();
        fs::hard_link(temp.path().join("outside/secret"), &kept.path).unwrap();
        let error = open_listed(kept).unwrap_err();
        assert!(error.to_string().contains("was replaced"), "{error}");

        // A fifo in its place: the open neither hangs nor reads it.
        fs::remove_file(&kept.path).unwrap();
        fifo(&kept.path);
        let error = open_listed(kept).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn a_folder_swapped_for_a_link_after_listing_is_not_listed_through_it() {
        let (temp, root) = hostile_tree();
        let listed = fs::symlink_metadata(root.join("sub")).unwrap();
        fs::rename(root.join("sub"), temp.path().join("moved")).unwrap();
        symlink(temp.path().join("outside"), root.join("sub")).unwrap();
        let mut walk = Walk::default();
        let mut pending = Pending::new();
        list_directory(
            (
                &root.join("sub"),
                Path::new("sub"),
                (listed.dev(), listed.ino()),
            ),
            false,
            &mut walk,
            &mut pending,
        )
        .unwrap();
        assert!(walk.files.is_empty() && pending.is_empty());
        assert_eq!(skipped(&walk), [("sub".to_owned(), SkipReason::Changed)]);
    }
}
