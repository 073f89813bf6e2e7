//! Whole transfers between any two URIs, written once over the backends' four operations:
//! [`Resolver::copy`] (any direction, remote to remote included), [`Resolver::download_to`] (to a
//! file name), [`Resolver::sync`] (what the destination lacks, chosen by a [`Filter`] of globs)
//! and [`Resolver::checksums`]. `herd fetch` is these functions behind a command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::backend::{FileChecksum, TransferStats};
use crate::checksum::crc64nvme_file_sized;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{StagingDir, run_blocking};
use crate::resolver::Resolver;
use crate::uri::Uri;

/// Which files a [`Resolver::sync`] copies: those that match one of the `include` globs (every
/// file when there is none) and none of the `exclude` globs.
///
/// A glob is shell-style: `*` matches any run of characters and `?` one character, neither
/// crossing a `/`; every other character matches itself. A glob without `/` is matched
/// against the file's name, wherever the file is; one with `/` against its path relative to
/// the synchronised folder (`reads/*.fq.gz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Filter {
    /// The files matching one of `include` (every file when it is empty) and none of
    /// `exclude`.
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Filter {
        Filter { include, exclude }
    }

    /// Whether the file at `path` (relative, `/`-separated) is selected.
    pub fn selects(&self, path: &str) -> bool {
        let matches = |pattern: &String| {
            let target = if pattern.contains('/') {
                path
            } else {
                path.rsplit('/').next().unwrap_or(path)
            };
            glob_match(pattern, target)
        };
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

/// Whether `name` matches the shell-style `pattern` (`*` and `?`, which never match a `/`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    glob_match_bytes(pattern.as_bytes(), name.as_bytes())
}

fn glob_match_bytes(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match_bytes(&pattern[1..], name)
                || (!name.is_empty() && name[0] != b'/' && glob_match_bytes(pattern, &name[1..]))
        }
        (Some(b'?'), Some(&character)) => {
            character != b'/' && glob_match_bytes(&pattern[1..], &name[1..])
        }
        (Some(expected), Some(character)) => {
            expected == character && glob_match_bytes(&pattern[1..], &name[1..])
        }
        _ => false,
    }
}

impl Resolver {
    /// What [`copy`](Self::copy) refuses before it moves anything: actions on the destination
    /// (they apply to what is downloaded). An [`ErrorKind::InvalidUri`] error.
    pub fn check_copy(destination: &Uri) -> Result<()> {
        if !destination.actions().is_empty() {
            return Err(Error::invalid_uri(
                "actions (`|untar`...) apply to what is downloaded: put them on the source",
            ));
        }
        Ok(())
    }

    /// Copies `source` to `destination`, whatever their schemes; `source`'s actions apply.
    ///
    /// - To a local destination: into it when it is a folder (it ends with `/`, it is an
    ///   existing directory, or `source` is a folder), else to that file name
    ///   ([`download_to`](Self::download_to)).
    /// - From a local source without actions: an upload ([`put`](Self::put)).
    /// - Otherwise (remote to remote, or actions to apply first): downloaded into a temporary
    ///   directory, then uploaded from there (a single file as itself, anything else as a
    ///   folder), and the directory removed. Staging on disk rather than streaming keeps every
    ///   backend's checks (checksums, resumption, atomic names) on both sides.
    ///
    /// The returned paths are those of the last step (the upload, or the download).
    pub async fn copy(&self, source: &Uri, destination: &Uri) -> Result<TransferStats> {
        Resolver::check_copy(destination)?;
        if let Some(target) = destination.local_path() {
            let existing_dir = tokio::fs::metadata(target)
                .await
                .is_ok_and(|metadata| metadata.is_dir());
            if destination.is_dir() || source.is_dir() || existing_dir {
                return Ok(self.fetch(source, target).await?.stats);
            }
            return self.download_to(source, target).await;
        }
        match source.local_path() {
            Some(path) if source.actions().is_empty() => self.put(path, destination).await,
            _ => self.copy_through_local(source, destination).await,
        }
    }

    async fn copy_through_local(&self, source: &Uri, destination: &Uri) -> Result<TransferStats> {
        let temp = std::env::temp_dir();
        let staging = run_blocking(move |_| StagingDir::create(&temp)).await?;
        let uploaded = async {
            let fetched = self.fetch(source, staging.path()).await?;
            let upload_from = match fetched.items.as_slice() {
                [single] if !source.is_dir() && source.actions().is_empty() => {
                    staging.path().join(single)
                }
                _ => staging.path().to_path_buf(),
            };
            self.put(&upload_from, destination).await
        }
        .await;
        discard(staging).await?;
        uploaded
    }

    /// Downloads `source` (and applies its actions) to the local file name `target`, its
    /// parent directories created: through a staging directory next to it and a rename, so no
    /// partial file ever shows under that name. A source that gives more than one item is
    /// refused with an [`ErrorKind::InvalidUri`] error, and nothing is left behind.
    pub async fn download_to(&self, source: &Uri, target: &Path) -> Result<TransferStats> {
        let parent = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = run_blocking(move |_| StagingDir::create(&parent)).await?;
        let fetched = match self.fetch(source, staging.path()).await {
            Ok(fetched) => fetched,
            Err(error) => {
                discard(staging).await?;
                return Err(error);
            }
        };
        let [single] = fetched.items.as_slice() else {
            discard(staging).await?;
            return Err(Error::invalid_uri(format!(
                "{} gave {} items, which cannot all be named {}; end the destination with / to copy into a folder",
                source.redacted(),
                fetched.items.len(),
                target.display()
            )));
        };
        let downloaded = staging.path().join(single);
        let target = target.to_path_buf();
        run_blocking(move |_| {
            std::fs::rename(&downloaded, &target).at("cannot move the download to", &target)?;
            staging.finish()
        })
        .await?;
        Ok(fetched.stats)
    }

    /// Copies the files under `source` that `destination` lacks, or has with another size,
    /// among those `filter` selects; both are taken as folders (a missing trailing `/` is
    /// added), and a destination that does not exist yet is created. Returns what was copied.
    pub async fn sync(
        &self,
        source: &Uri,
        destination: &Uri,
        filter: &Filter,
    ) -> Result<TransferStats> {
        let (source, destination) = (source.as_dir()?, destination.as_dir()?);
        let wanted = self.list(&source, true).await?;
        let present = match self.list(&destination, true).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let existing: HashMap<&str, u64> = present
            .iter()
            .map(|entry| (entry.path.as_str(), entry.size))
            .collect();
        let mut total = TransferStats::default();
        for entry in wanted {
            if entry.is_dir() || !filter.selects(&entry.path) {
                continue;
            }
            if existing.get(entry.path.as_str()) == Some(&entry.size) {
                continue;
            }
            let target = destination.join(&entry.path)?;
            let stats = self.copy(&entry.uri, &target).await?;
            for file in stats.checksums {
                total.add(file);
            }
        }
        Ok(total)
    }

    /// The CRC64NVME and size of every file `uri` names. A local file without actions is read
    /// in place and keeps its path as written; anything else is downloaded into a temporary
    /// directory (actions applied), checksummed on the way, and removed: paths are then
    /// relative to the download, as in [`TransferStats`].
    pub async fn checksums(&self, uri: &Uri) -> Result<Vec<FileChecksum>> {
        if let Some(path) = uri.local_path()
            && !uri.is_dir()
            && uri.actions().is_empty()
        {
            let path = path.to_path_buf();
            return run_blocking(move |_| {
                let (crc64nvme, size) = crc64nvme_file_sized(&path)?;
                Ok(vec![FileChecksum {
                    path: path.display().to_string(),
                    size,
                    crc64nvme,
                }])
            })
            .await;
        }
        let temp = std::env::temp_dir();
        let staging = run_blocking(move |_| StagingDir::create(&temp)).await?;
        let fetched = self.fetch(uri, staging.path()).await;
        discard(staging).await?;
        Ok(fetched?.stats.checksums)
    }
}

/// Removes a staging directory and what is in it, off the async threads.
async fn discard(staging: StagingDir) -> Result<()> {
    run_blocking(move |_| {
        drop(staging);
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_the_shell_and_never_cross_a_slash() {
        assert!(glob_match("*.fq.gz", "s1.fq.gz"));
        assert!(!glob_match("*.fq.gz", "s1.fq"));
        assert!(glob_match("s?.txt", "s1.txt"));
        assert!(!glob_match("s?.txt", "s/.txt"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn a_filter_matches_names_anywhere_and_paths_from_the_root() {
        let include = |patterns: &[&str]| {
            Filter::new(patterns.iter().map(|p| p.to_string()).collect(), Vec::new())
        };
        assert!(include(&["*.fq.gz"]).selects("dir/s1.fq.gz"));
        assert!(include(&["dir/*"]).selects("dir/s1.fq.gz"));
        assert!(!include(&["dir/*"]).selects("other/s1.fq.gz"));
        assert!(!include(&["dir/*"]).selects("dir/sub/s1.fq.gz"));
        let exclude = Filter::new(Vec::new(), vec!["*.gz".to_owned()]);
        assert!(!exclude.selects("dir/s1.fq.gz"));
        assert!(exclude.selects("dir/s1.fq"));
        assert!(Filter::default().selects("anything/at/all"));
        let both = Filter::new(vec!["*.fq*".to_owned()], vec!["*.gz".to_owned()]);
        assert!(both.selects("a.fq") && !both.selects("a.fq.gz"));
    }
}
