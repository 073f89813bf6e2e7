//! What is on the server: [`Session::probe`] says whether a path is a file, a directory or
//! absent (MLST when the server has it; else SIZE, then CWD to tell a directory from a missing
//! path, since SIZE fails the same way for both), [`Session::read_dir`] lists one directory
//! (MLSD, else LIST in Unix or DOS format, symbolic links skipped) and [`Session::walk`] a
//! tree.

use std::time::Duration;

use suppaftp::list::ListParser;

use tracing::debug;

use super::connection::{Failure, Link, Session, ftp_failure, reply_code, timed};
use super::{FtpBackend, Target, child, missing, not_a_directory};
use crate::error::{Error, ErrorKind, Result};

/// What a remote path is.
pub(super) enum Remote {
    File(Option<u64>),
    Dir,
    Missing,
}

/// One entry of a remote listing.
pub(super) struct Listed {
    /// Path relative to the listed directory (a sub-directory ends with `/` in non-recursive
    /// listings of [`Session::walk`]; the bare name in [`Session::read_dir`]).
    pub(super) relative: String,
    pub(super) size: u64,
    pub(super) is_dir: bool,
}

impl FtpBackend {
    /// The content of the directory named by the target, with retries: every file under it
    /// when `recursive`, or its files and sub-directories otherwise. Sorted by path.
    pub(super) async fn walk_dir(
        &self,
        link: &mut Link<'_>,
        recursive: bool,
    ) -> Result<Vec<Listed>> {
        let timeout = self.inner.timeout;
        retrying!(link, {
            let target = link.target;
            let session = link.session().await?;
            match session.probe(&target.path, target, timeout).await? {
                Remote::Missing => return Err(Failure::fatal(missing(&target.shown))),
                Remote::File(_) => return Err(Failure::fatal(not_a_directory(&target.shown))),
                Remote::Dir => {}
            }
            session.walk(&target.path, recursive, target, timeout).await
        })
    }
}

impl Session {
    /// Whether `path` is a file (with its size when the server tells), a directory, or absent.
    pub(super) async fn probe(
        &mut self,
        path: &str,
        target: &Target,
        timeout: Duration,
    ) -> std::result::Result<Remote, Failure> {
        let shown = &target.shown;
        let what = "cannot look up";
        if path.is_empty() || path == "/" {
            return Ok(Remote::Dir);
        }
        if self.mlst {
            return match timed(timeout, self.stream.mlst(Some(path))).await {
                Ok(Ok(line)) => match parse_mlsx(line.trim_start()) {
                    Some(fact) if fact.is_dir => Ok(Remote::Dir),
                    Some(fact) => Ok(Remote::File(fact.size)),
                    None => Err(Failure::fatal(Error::new(
                        ErrorKind::Io,
                        format!("`{shown}`: {what}: cannot read the server's MLST answer `{line}`"),
                    ))),
                },
                Ok(Err(error)) if reply_code(&error) == Some(550) => Ok(Remote::Missing),
                Ok(Err(error)) => Err(ftp_failure(error, what, shown)),
                Err(elapsed) => Err(elapsed.failure(what, shown)),
            };
        }
        let size_code = match timed(timeout, self.stream.size(path)).await {
            Ok(Ok(size)) => return Ok(Remote::File(Some(size as u64))),
            Ok(Err(error)) => match reply_code(&error) {
                Some(code) => code,
                None => return Err(ftp_failure(error, what, shown)),
            },
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        };
        // No size: a directory, something missing, or a server without SIZE. CWD tells.
        let home = match timed(timeout, self.stream.pwd()).await {
            Ok(Ok(home)) => home,
            Ok(Err(error)) => return Err(ftp_failure(error, what, shown)),
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        };
        match timed(timeout, self.stream.cwd(path)).await {
            Ok(Ok(())) => {
                self.command(timeout, what, shown, |stream| Box::pin(stream.cwd(home)))
                    .await?;
                Ok(Remote::Dir)
            }
            Ok(Err(error)) if reply_code(&error).is_some() => {
                if size_code == 550 {
                    Ok(Remote::Missing)
                } else {
                    Ok(Remote::File(None))
                }
            }
            Ok(Err(error)) => Err(ftp_failure(error, what, shown)),
            Err(elapsed) => Err(elapsed.failure(what, shown)),
        }
    }

    /// The entries directly in `directory` (bare names), without `.` and `..`; symbolic links
    /// that LIST shows are skipped.
    pub(super) async fn read_dir(
        &mut self,
        directory: &str,
        target: &Target,
        timeout: Duration,
    ) -> std::result::Result<Vec<Listed>, Failure> {
        let shown = &target.shown;
        let what = format!("cannot list `{directory}`");
        let argument = (!directory.is_empty()).then_some(directory);
        let lines = if self.mlst {
            timed(timeout, self.stream.mlsd(argument)).await
        } else {
            timed(timeout, self.stream.list(argument)).await
        };
        let lines = match lines {
            Ok(Ok(lines)) => lines,
            Ok(Err(error)) => return Err(ftp_failure(error, &what, shown)),
            Err(elapsed) => return Err(elapsed.failure(&what, shown)),
        };
        let mut entries = Vec::new();
        for line in lines {
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                continue;
            }
            let listed = if self.mlst {
                parse_mlsx(line)
            } else {
                parse_list_line(line)
            };
            let Some(fact) = listed else {
                debug!(url = %shown, line, "skipping a listing line that cannot be read");
                continue;
            };
            if fact.skip || fact.name.is_empty() || fact.name == "." || fact.name == ".." {
                continue;
            }
            if fact.name.contains('/') {
                // Some servers answer with paths: keep the last component.
                let name = fact.name.rsplit('/').next().unwrap_or_default().to_owned();
                if name.is_empty() {
                    continue;
                }
                entries.push(Listed {
                    relative: name,
                    size: fact.size.unwrap_or(0),
                    is_dir: fact.is_dir,
                });
                continue;
            }
            entries.push(Listed {
                relative: fact.name,
                size: fact.size.unwrap_or(0),
                is_dir: fact.is_dir,
            });
        }
        Ok(entries)
    }

    /// Every file under `root` (`recursive`), or its files and sub-directories (ending with
    /// `/`), with paths relative to `root`, sorted.
    pub(super) async fn walk(
        &mut self,
        root: &str,
        recursive: bool,
        target: &Target,
        timeout: Duration,
    ) -> std::result::Result<Vec<Listed>, Failure> {
        let mut found = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(relative_dir) = pending.pop() {
            let remote_dir = if relative_dir.is_empty() {
                root.to_owned()
            } else {
                child(root, &relative_dir)
            };
            for entry in self.read_dir(&remote_dir, target, timeout).await? {
                let relative = if relative_dir.is_empty() {
                    entry.relative
                } else {
                    format!("{relative_dir}/{}", entry.relative)
                };
                if entry.is_dir {
                    if recursive {
                        pending.push(relative);
                    } else {
                        found.push(Listed {
                            relative: format!("{relative}/"),
                            size: 0,
                            is_dir: true,
                        });
                    }
                } else {
                    found.push(Listed {
                        relative,
                        size: entry.size,
                        is_dir: false,
                    });
                }
            }
        }
        found.sort_by(|left, right| left.relative.cmp(&right.relative));
        Ok(found)
    }
}

/// The facts of one MLSD/MLST line, or one LIST line.
struct Fact {
    name: String,
    size: Option<u64>,
    is_dir: bool,
    /// `cdir`, `pdir`, or something that is neither a file nor a directory.
    skip: bool,
}

/// `type=file;size=12;modify=...; name` (RFC 3659); `None` if it cannot be read.
fn parse_mlsx(line: &str) -> Option<Fact> {
    let (facts, name) = match line.strip_prefix(' ') {
        Some(name) => ("", name),
        None => {
            let end = line.find("; ")?;
            (&line[..=end], &line[end + 2..])
        }
    };
    let mut size = None;
    let mut kind = None;
    for fact in facts.split(';') {
        let Some((key, value)) = fact.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("type") {
            kind = Some(value.to_ascii_lowercase());
        } else if key.eq_ignore_ascii_case("size") {
            size = value.parse().ok();
        }
    }
    let kind = kind.unwrap_or_else(|| "file".to_owned());
    let is_dir = kind == "dir";
    let skip = !(is_dir || kind == "file");
    Some(Fact {
        name: name.to_owned(),
        size,
        is_dir,
        skip,
    })
}

/// A Unix or DOS LIST line; symbolic links are skipped.
fn parse_list_line(line: &str) -> Option<Fact> {
    let file = ListParser::parse_posix(line)
        .or_else(|_| ListParser::parse_dos(line))
        .ok()?;
    Some(Fact {
        name: file.name().to_owned(),
        size: Some(file.size() as u64),
        is_dir: file.is_directory(),
        skip: file.is_symlink(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_are_read() {
        let fact = parse_mlsx("type=file;size=12;modify=20240101000000; a b.txt").unwrap();
        assert_eq!(
            (fact.name.as_str(), fact.size, fact.is_dir),
            ("a b.txt", Some(12), false)
        );
        let fact = parse_mlsx("type=cdir;modify=20240101000000; .").unwrap();
        assert!(fact.skip);
        let fact = parse_list_line("drwxr-xr-x 2 user group 4096 Nov 5 13:46 sub").unwrap();
        assert!(fact.is_dir);
        let fact =
            parse_list_line("-rw-r--r-- 1 user group 1234 Nov 5 2020 data.fastq.gz").unwrap();
        assert_eq!(
            (fact.name.as_str(), fact.size),
            ("data.fastq.gz", Some(1234))
        );
        assert!(parse_list_line("total 12").is_none());
    }
}
