//! Which token the CLI sends, and where `herd login` keeps it.
//!
//! In order: `HERD_TOKEN` (the token itself), `HERD_TOKEN_FILE` (a file holding it), then the
//! credentials file, which holds one token per server URL: `$HERD_CONFIG_DIR/credentials`,
//! else `$XDG_CONFIG_HOME/herd/credentials`, else `~/.config/herd/credentials`. The file is
//! JSON (`{"servers": {"URL": "TOKEN"}}`), created `0600` in a `0700` folder and replaced
//! atomically; `herd login` and `herd up` write it. A file other users can read is used, with
//! a warning to fix its mode.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_proto::access::Secret;
use serde::{Deserialize, Serialize};

use crate::exit;

/// The credentials file's name in its folder.
const FILE_NAME: &str = "credentials";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Credentials {
    /// Token by server URL (as normalised by the client).
    #[serde(default)]
    servers: BTreeMap<String, String>,
}

/// Where the credentials file is, or `None` without a home folder.
pub fn path() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(directory) = non_empty("HERD_CONFIG_DIR") {
        return Some(PathBuf::from(directory).join(FILE_NAME));
    }
    if let Some(directory) = non_empty("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(directory).join("herd").join(FILE_NAME));
    }
    non_empty("HOME").map(|home| {
        PathBuf::from(home)
            .join(".config")
            .join("herd")
            .join(FILE_NAME)
    })
}

fn read(path: &Path) -> anyhow::Result<Credentials> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Credentials::default());
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read the credentials file {}", path.display()));
        }
    };
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the credentials file can be read by other users; run `chmod 600` on it"
        );
    }
    serde_json::from_str(&text).map_err(|error| {
        exit::Error::usage(format!(
            "the credentials file {} is not valid ({error}); remove it and run `herd login` again",
            path.display()
        ))
        .into()
    })
}

/// A token read from `file` (its first line), checked.
pub fn read_token_file(file: &Path) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    Secret::new(text.lines().next().unwrap_or_default()).map_err(|error| {
        exit::Error::usage(format!("the token file {}: {error}", file.display())).into()
    })
}

/// The token of `HERD_TOKEN` or `HERD_TOKEN_FILE`, if one is set.
pub fn from_environment() -> anyhow::Result<Option<Secret>> {
    if let Some(token) = std::env::var_os("HERD_TOKEN").filter(|value| !value.is_empty()) {
        let token = token.to_str().ok_or_else(|| {
            exit::Error::usage("HERD_TOKEN holds bytes that are not text; set it again")
        })?;
        let secret = Secret::new(token)
            .map_err(|error| exit::Error::usage(format!("HERD_TOKEN: {error}")))?;
        return Ok(Some(secret));
    }
    if let Some(file) = std::env::var_os("HERD_TOKEN_FILE").filter(|value| !value.is_empty()) {
        return read_token_file(Path::new(&file)).map(Some);
    }
    Ok(None)
}

/// The token to send to `server`: from the environment, else from the credentials file.
/// `None` when there is none (the server then says how to get one).
pub fn token_for(server: &str) -> anyhow::Result<Option<Secret>> {
    if let Some(secret) = from_environment()? {
        return Ok(Some(secret));
    }
    let Some(path) = path() else {
        return Ok(None);
    };
    let credentials = read(&path)?;
    match credentials.servers.get(server) {
        None => Ok(None),
        Some(token) => Secret::new(token).map(Some).map_err(|error| {
            exit::Error::usage(format!(
                "the credentials file {} holds a bad token for {server} ({error}); run `herd login` again",
                path.display()
            ))
            .into()
        }),
    }
}

/// Saves `token` as the one to send to `server`; returns the file's path.
pub fn save(server: &str, token: &Secret) -> anyhow::Result<PathBuf> {
    let path = path().ok_or_else(|| {
        exit::Error::usage(
            "no folder for the credentials file: set HERD_CONFIG_DIR (or HOME), or pass the token in HERD_TOKEN",
        )
    })?;
    let mut credentials = read(&path)?;
    credentials
        .servers
        .insert(server.to_owned(), token.expose().to_owned());
    write(&path, &credentials)?;
    Ok(path)
}

/// Forgets the token of `server`; whether there was one.
pub fn forget(server: &str) -> anyhow::Result<bool> {
    let Some(path) = path() else {
        return Ok(false);
    };
    let mut credentials = read(&path)?;
    let removed = credentials.servers.remove(server).is_some();
    if removed {
        write(&path, &credentials)?;
    }
    Ok(removed)
}

fn write(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let text =
        serde_json::to_string_pretty(credentials).context("cannot encode the credentials")?;
    herd_server::private::write_secret(path, &format!("{text}\n"))
        .with_context(|| format!("cannot write the credentials file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_credentials_are_private_and_per_server() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("herd").join(FILE_NAME);
        let mut credentials = Credentials::default();
        credentials
            .servers
            .insert("http://a:1".to_owned(), "herd_a".to_owned());
        credentials
            .servers
            .insert("http://b:2".to_owned(), "herd_b".to_owned());
        write(&path, &credentials).expect("written");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let folder = std::fs::metadata(path.parent().expect("a folder"))
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(folder, 0o700);
        let back = read(&path).expect("read back");
        assert_eq!(back.servers["http://b:2"], "herd_b");
        assert_eq!(back.servers.len(), 2);
    }

    #[test]
    fn a_corrupt_credentials_file_is_a_clear_error() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join(FILE_NAME);
        std::fs::write(&path, "{not json").expect("written");
        let error = read(&path).expect_err("refused").to_string();
        assert!(
            error.contains("not valid") && error.contains("herd login"),
            "{error}"
        );
    }

    #[test]
    fn a_token_file_gives_its_first_line() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("token");
        std::fs::write(&path, "herd_abc\n").expect("written");
        assert_eq!(read_token_file(&path).expect("read").expose(), "herd_abc");
        std::fs::write(&path, "herd bad\n").expect("written");
        assert!(read_token_file(&path).is_err());
    }
}
