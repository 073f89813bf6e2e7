//! [`FtpBackend`]: `ftp://[user[:password]@]host[:port]/path`, over plain FTP in passive mode.
//!
//! - Anonymous (`anonymous`, password `anonymous@`) unless the URI gives `user:password@`
//!   (percent-decoded, so `%40` stands for `@`); the password never shows in messages.
//! - Paths are taken literally (no percent-decoding) and are relative to the login directory,
//!   as curl does; write `ftp://host//abs/path` for an absolute path.
//! - Directories (`/` suffix) are listed with MLSD when the server announces MLST in FEAT, else
//!   with LIST (Unix or DOS format).
//! - Uploads go to a hidden temporary name in the target directory and are renamed once
//!   complete, so no partial file shows under its final name; the size on the server is
//!   checked before the rename.
//! - Data connections go to the control connection's address whatever PASV answers (as curl
//!   does), which works behind NAT.
//! - Transient failures (connection errors, 4xx replies, time-outs) are retried on a new
//!   connection ([`RetryPolicy`]); an interrupted download resumes with `REST` when the server
//!   allows it, and starts over otherwise.
//!
//! # Layout
//!
//! - `mod.rs`: [`FtpBackend`] and its [`Backend`] operations, list and delete among them;
//!   `Target`, what an `ftp://` URI names; the `retrying!` macro, defined before the
//!   sub-modules because a `macro_rules!` is only visible in the code that follows it.
//! - `connection.rs`: one logged-in control connection (`Session`), the `Link` that reopens it
//!   after a transient failure and counts the tries, and the one mapping of FTP replies to
//!   errors that says whether to retry (`Failure`).
//! - `listing.rs`: what a remote path is (MLST, else SIZE and then CWD), directory listings
//!   (MLSD, else LIST) and the walk of a tree.
//! - `transfer.rs`: get and put, with the resumption by `REST` and the upload through a
//!   temporary name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use suppaftp::FtpError;

use crate::backend::{Backend, BoxFuture, Entry, TransferStats};
use crate::error::{Error, ErrorKind, Result};
use crate::http::RetryPolicy;
use crate::progress::Progress;
use crate::uri::{Scheme, Uri};

/// Size of the buffers data is moved in.
const BUFFER_SIZE: usize = 256 * 1024;

/// Runs `$body` (a block that uses `$link`, a `&mut Link`, and returns a
/// `Result<T, Failure>`) until it succeeds, fails for good, or the tries are used up; gives a
/// `Result<T>`. (A macro rather than a method taking an async closure: the futures of async
/// closures cannot be proven `Send` yet.)
macro_rules! retrying {
    ($link:ident, $body:block) => {{
        $link.failures = 0;
        loop {
            let outcome: std::result::Result<_, Failure> = async $body.await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(failure) => {
                    if let Err(error) = $link.recover(failure, false).await {
                        break Err(error);
                    }
                }
            }
        }
    }};
}

mod connection;
mod listing;
mod transfer;

use connection::{Failure, Link, ftp_failure, timed};
use listing::Remote;

/// `ftp://`: get (a file, or a directory recursively), put (through a temporary name and a
/// rename), list and delete. See the [module](self) documentation for the details.
#[derive(Clone)]
pub struct FtpBackend {
    inner: Arc<Inner>,
    progress: Progress,
}

struct Inner {
    retry: RetryPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for FtpBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FtpBackend")
            .field("retry", &self.inner.retry)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Default for FtpBackend {
    fn default() -> Self {
        FtpBackend::new()
    }
}

impl FtpBackend {
    /// How long connecting, a reply, or a read or write on a data connection may take.
    pub const TIMEOUT: Duration = Duration::from_secs(60);

    /// The backend with [`RetryPolicy::DEFAULT`].
    pub fn new() -> Self {
        FtpBackend::with_retry(RetryPolicy::DEFAULT)
    }

    /// The backend with the retry policy `retry`.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        FtpBackend {
            inner: Arc::new(Inner {
                retry,
                timeout: FtpBackend::TIMEOUT,
            }),
            progress: Progress::disabled(),
        }
    }

    /// Counts what this backend moves in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.inner.retry
    }
}

impl FtpBackend {
    async fn list_impl(&self, uri: &Uri, recursive: bool) -> Result<Vec<Entry>> {
        let target = Target::from_uri(uri)?;
        let mut link = Link::new(self, &target);
        let result = self.list_with(&mut link, uri, recursive).await;
        link.close().await;
        result
    }

    async fn list_with(
        &self,
        link: &mut Link<'_>,
        uri: &Uri,
        recursive: bool,
    ) -> Result<Vec<Entry>> {
        let target = link.target;
        let timeout = self.inner.timeout;
        let kind = retrying!(link, {
            let session = link.session().await?;
            session.probe(&target.path, target, timeout).await
        })?;
        let base = uri.without_actions();
        match kind {
            Remote::Missing => Err(missing(&target.shown)),
            Remote::File(_) if uri.is_dir() => Err(not_a_directory(&target.shown)),
            Remote::File(size) => Ok(vec![Entry {
                uri: base,
                path: uri.file_name().unwrap_or_default().to_owned(),
                size: size.unwrap_or(0),
            }]),
            Remote::Dir => {
                let listed = self.walk_dir(link, recursive).await?;
                let mut entries = Vec::with_capacity(listed.len());
                for item in listed {
                    entries.push(Entry {
                        uri: base.join(&item.relative)?,
                        path: item.relative,
                        size: item.size,
                    });
                }
                Ok(entries)
            }
        }
    }

    async fn delete_impl(&self, uri: &Uri, recursive: bool) -> Result<()> {
        let target = Target::from_uri(uri)?;
        if uri.is_dir() && recursive && (target.path.is_empty() || target.path == "/") {
            return Err(Error::unsafe_entry(format!(
                "refusing to delete everything under `{}`: it is the server's root or login directory; delete its sub-directories one by one",
                target.shown
            )));
        }
        let mut link = Link::new(self, &target);
        let result = self.delete_with(&mut link, uri, recursive).await;
        link.close().await;
        result
    }

    async fn delete_with(&self, link: &mut Link<'_>, uri: &Uri, recursive: bool) -> Result<()> {
        let timeout = self.inner.timeout;
        let is_dir = uri.is_dir();
        retrying!(link, {
            let target = link.target;
            let session = link.session().await?;
            let what = "cannot delete";
            match session.probe(&target.path, target, timeout).await? {
                Remote::Missing => return Ok(()),
                Remote::File(_) if is_dir => {
                    return Err(Failure::fatal(not_a_directory(&target.shown)));
                }
                Remote::File(_) => {
                    return session
                        .command(timeout, what, &target.shown, |stream| {
                            Box::pin(stream.rm(&target.path))
                        })
                        .await;
                }
                Remote::Dir if !is_dir => {
                    return Err(Failure::fatal(is_a_directory(&target.shown)));
                }
                Remote::Dir => {}
            }
            let mut directories = Vec::new();
            let mut pending = vec![target.path.clone()];
            while let Some(directory) = pending.pop() {
                for item in session.read_dir(&directory, target, timeout).await? {
                    let path = child(&directory, &item.relative);
                    if item.is_dir {
                        if recursive {
                            pending.push(path);
                        }
                    } else {
                        session
                            .command(timeout, what, &target.shown, |stream| {
                                Box::pin(stream.rm(&path))
                            })
                            .await?;
                    }
                }
                directories.push(directory);
            }
            // Deepest first; a directory that keeps sub-directories (non-recursive) stays.
            for directory in directories.iter().rev() {
                let result = timed(timeout, session.stream.rmdir(directory)).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(FtpError::UnexpectedResponse(_))) if !recursive => {}
                    Ok(Err(error)) => return Err(ftp_failure(error, what, &target.shown)),
                    Err(elapsed) => return Err(elapsed.failure(what, &target.shown)),
                }
            }
            Ok(())
        })
    }
}

impl Backend for FtpBackend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(self.get_impl(uri, destination))
    }

    fn put<'a>(&'a self, source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(self.put_impl(source, uri))
    }

    fn list<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(self.list_impl(uri, recursive))
    }

    fn delete<'a>(&'a self, uri: &'a Uri, recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete_impl(uri, recursive))
    }
}

/// Where an `ftp://` URI points.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// The path sent to the server, without a trailing `/`: relative to the login directory
    /// (empty for the login directory itself), or absolute when it starts with `/`.
    path: String,
    /// The URI for messages (password hidden).
    shown: String,
}

impl Target {
    fn from_uri(uri: &Uri) -> Result<Target> {
        let shown = uri.redacted().to_string();
        if uri.scheme() != Scheme::Ftp {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the ftp backend cannot handle {}:// (`{shown}`)",
                    uri.scheme()
                ),
            ));
        }
        let text = uri.path();
        let (authority, rest) = text.split_at(text.find('/').unwrap_or(text.len()));
        let (user, password, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (decode(user), decode(password), host_port)
            }
            None => ("anonymous".to_owned(), "anonymous@".to_owned(), authority),
        };
        let (host, port) = split_host_port(host_port).ok_or_else(|| {
            Error::invalid_uri(format!(
                "`{shown}` has no valid host[:port]: write ftp://host/path or ftp://host:2121/path"
            ))
        })?;
        let relative = rest.strip_prefix('/').unwrap_or(rest);
        let trimmed = relative.trim_end_matches('/');
        let path = if trimmed.is_empty() && relative.starts_with('/') {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        };
        if path.split('/').any(|component| component == "..") {
            return Err(Error::invalid_uri(format!(
                "`{shown}` contains `..`: write the path without it"
            )));
        }
        Ok(Target {
            host,
            port,
            user,
            password,
            path,
            shown,
        })
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; port 21 by default.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => 21,
            None => return None,
        };
        return (!host.is_empty()).then(|| (host.to_owned(), port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (text, 21),
    };
    (!host.is_empty() && !host.contains(':')).then(|| (host.to_owned(), port))
}

/// `base/name` (`name` alone when `base` is the login directory).
fn child(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// (parent, last component) of a remote path; the parent is empty for the login directory.
fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

fn missing(shown: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("`{shown}` does not exist: check the path"),
    )
}

fn is_a_directory(shown: &str) -> Error {
    Error::invalid_uri(format!(
        "`{shown}` is a directory: end the uri with `/` to transfer it recursively"
    ))
}

fn not_a_directory(shown: &str) -> Error {
    Error::invalid_uri(format!(
        "`{shown}` is not a directory: remove the trailing `/` to name a file"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed() {
        let uri = Uri::parse("ftp://me:p%40ss@[::1]:2121/dir/sub/").unwrap();
        let target = Target::from_uri(&uri).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 2121));
        assert_eq!(
            (target.user.as_str(), target.password.as_str()),
            ("me", "p@ss")
        );
        assert_eq!(target.path, "dir/sub");
        assert!(!target.shown.contains("p%40ss"));

        let uri = Uri::parse("ftp://ftp.example.org//pub/file.txt").unwrap();
        let target = Target::from_uri(&uri).unwrap();
        assert_eq!((target.user.as_str(), target.port), ("anonymous", 21));
        assert_eq!(target.path, "/pub/file.txt");
        assert_eq!(
            Target::from_uri(&Uri::parse("ftp://h/").unwrap())
                .unwrap()
                .path,
            ""
        );
        assert!(Target::from_uri(&Uri::parse("ftp://h:x/a").unwrap()).is_err());
        assert!(Target::from_uri(&Uri::parse("ftp://h/a/../b").unwrap()).is_err());
    }

    #[test]
    fn remote_paths_are_joined_and_split() {
        assert_eq!(child("", "a"), "a");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("d", "a"), "d/a");
        assert_eq!(split_parent("a"), ("", "a"));
        assert_eq!(split_parent("/a"), ("/", "a"));
        assert_eq!(split_parent("d/e/a"), ("d/e", "a"));
    }
}
