//! Private files: the data directory is `0700`, and the database and the task logs in it are
//! `0600`, whatever the umask, because they hold every task's spec (with its secrets) and
//! output. An existing directory or file left readable by others is tightened, with a warning.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every folder the server creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file the server creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents as `0700`; an existing `path` readable, writable or
/// searchable by its group or others is made `0700`, with a warning.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    tighten(path, DIR_MODE)
}

/// Creates `path` as an empty `0600` file if missing; an existing one open to its group or
/// others is made `0600`, with a warning.
pub fn create_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    tighten(path, FILE_MODE)
}

/// Replaces `path` with `content`, all or nothing: written to a new `0600` file beside it,
/// flushed to disk, then renamed over it. For secrets (tokens, credentials): never readable by
/// others, never half-written.
pub fn write_secret(path: &Path, content: &str) -> io::Result<()> {
    use std::io::Write;
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    if let Some(directory) = directory {
        create_dir(directory)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temporary)?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Opens `path` for appending, creating it `0600` if missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Takes the group's and others' permissions away from `path` if it has any; `NotFound` is
/// fine (a file SQLite has not created yet).
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let current = metadata.permissions().mode() & 0o777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        mode = format!("{current:o}"),
        "other users could read this; making it private ({mode:o})"
    );
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_files_are_created_private_and_existing_ones_tightened() {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("a/b");
        create_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let open = root.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let file = root.path().join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read_to_string(&file).unwrap(), "x", "never truncated");
        let fresh = root.path().join("g");
        drop(open_append(&fresh).unwrap());
        assert_eq!(mode(&fresh), 0o600);
        tighten(&root.path().join("missing"), FILE_MODE).unwrap();
    }
}
