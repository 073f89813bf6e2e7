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

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use suppaftp::list::ListParser;
use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpResult};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Expected, FileSink, RetryPolicy, Written, gave_up};
use crate::local::{self, run_blocking, slash_path, temp_name};
use crate::memory::join_key;
use crate::progress::{Progress, TryCount};
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

    /// Downloads the single file `uri` to the local file `path`, checking `expected` (the
    /// run+fastq backend's entry point).
    pub(crate) async fn download(
        &self,
        uri: &Uri,
        path: &Path,
        mut expected: Expected,
    ) -> Result<Written> {
        let target = Target::from_uri(uri)?;
        if expected.source.is_empty() {
            expected.source = target.shown.clone();
        }
        let mut link = Link::new(self, &target);
        let result = self.get_file(&mut link, path, expected).await;
        link.close().await;
        result
    }

    async fn get_file(
        &self,
        link: &mut Link<'_>,
        path: &Path,
        expected: Expected,
    ) -> Result<Written> {
        let target = link.target;
        let timeout = self.inner.timeout;
        let remote = target.path.clone();
        let kind = retrying!(link, {
            let session = link.session().await?;
            session.probe(&remote, target, timeout).await
        })?;
        let size = match kind {
            Remote::Missing => return Err(missing(&target.shown)),
            Remote::Dir => return Err(is_a_directory(&target.shown)),
            Remote::File(size) => size,
        };
        self.download_file(link, &remote, path, expected, size)
            .await
    }

    /// Downloads `remote` into `path`, resuming after a broken transfer.
    async fn download_file(
        &self,
        link: &mut Link<'_>,
        remote: &str,
        path: &Path,
        mut expected: Expected,
        size: Option<u64>,
    ) -> Result<Written> {
        let announced = expected.size.or(size);
        let mut sink = FileSink::create(
            path.to_path_buf(),
            expected.md5.is_some(),
            &self.progress,
            announced,
        )
        .await?;
        if let Err(error) = self.fill(link, remote, &mut sink).await {
            sink.abort().await;
            return Err(error);
        }
        if expected.size.is_none() {
            expected.size = size;
        }
        let written = sink.commit(expected).await?;
        debug!(url = %link.target.shown, remote, bytes = written.size, "downloaded");
        Ok(written)
    }

    /// Tries until `sink` holds all of `remote`.
    async fn fill(&self, link: &mut Link<'_>, remote: &str, sink: &mut FileSink) -> Result<()> {
        link.failures = 0;
        let mut furthest = 0;
        loop {
            let failure = match self.retrieve_once(link, remote, sink).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            let progressed = sink.written() > furthest;
            furthest = furthest.max(sink.written());
            link.recover(failure, progressed).await?;
        }
    }

    async fn retrieve_once(
        &self,
        link: &mut Link<'_>,
        remote: &str,
        sink: &mut FileSink,
    ) -> std::result::Result<(), Failure> {
        let timeout = self.inner.timeout;
        let shown = link.target.shown.clone();
        let session = link.session().await?;
        let offset = sink.written();
        if offset > 0 {
            // REST is sent right before RETR; a server that refuses it fails the RETR.
            let _ = session.stream.resume_transfer(offset as usize).await;
        }
        let what = format!("cannot download `{remote}`");
        let mut stream = match timed(timeout, session.stream.retr_as_stream(remote)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let failure = ftp_failure(error, &what, &shown);
                if offset > 0 && !failure.transient {
                    // Most likely REST refused: start again from zero, without it.
                    sink.restart().await.map_err(Failure::fatal)?;
                    return Err(Failure::transient(failure.error));
                }
                return Err(failure);
            }
            Err(elapsed) => return Err(elapsed.failure(&what, &shown)),
        };
        let mut buffer = vec![0; BUFFER_SIZE];
        loop {
            let count = match tokio::time::timeout(timeout, stream.read(&mut buffer)).await {
                Ok(Ok(count)) => count,
                Ok(Err(error)) => {
                    return Err(Failure::transient(Error::with_source(
                        ErrorKind::Io,
                        format!(
                            "`{shown}`: the transfer of `{remote}` broke after {} bytes",
                            sink.written()
                        ),
                        error,
                    )));
                }
                Err(_) => return Err(Elapsed.failure(&what, &shown)),
            };
            if count == 0 {
                break;
            }
            sink.write(buffer[..count].to_vec())
                .await
                .map_err(Failure::fatal)?;
        }
        match timed(timeout, stream.finish()).await {
            Ok(Ok(())) => Ok(()),
            // The server says the transfer failed: whatever arrived may be incomplete.
            Ok(Err(error)) => {
                let mut failure = ftp_failure(error, &what, &shown);
                failure.transient = true;
                Err(failure)
            }
            Err(elapsed) => Err(elapsed.failure(&what, &shown)),
        }
    }

    /// Uploads the local file `local` to `remote` through a temporary name in the same remote
    /// directory, renamed once complete and checked.
    async fn upload_file(
        &self,
        link: &mut Link<'_>,
        local: &Path,
        remote: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        link.failures = 0;
        let size = tokio::fs::metadata(local)
            .await
            .map_or(0, |metadata| metadata.len());
        self.progress.expect_file(size);
        loop {
            match self.store_once(link, local, remote).await {
                Ok(done) => {
                    self.progress.file_done();
                    return Ok(done);
                }
                Err(failure) => link.recover(failure, false).await?,
            }
        }
    }

    async fn store_once(
        &self,
        link: &mut Link<'_>,
        local: &Path,
        remote: &str,
    ) -> std::result::Result<(Crc64Nvme, u64), Failure> {
        let timeout = self.inner.timeout;
        let shown = link.target.shown.clone();
        let (parent, _) = split_parent(remote);
        let temp = child(parent, &temp_name("upload"));
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|error| Failure::fatal(Error::io("cannot open", local, error)))?;
        let length = file
            .metadata()
            .await
            .map_err(|error| {
                Failure::fatal(Error::io("cannot read the metadata of", local, error))
            })?
            .len();
        let session = link.session().await?;
        let result = session
            .store(
                &mut file,
                local,
                (&temp, remote),
                &shown,
                timeout,
                &self.progress,
            )
            .await;
        let (checksum, sent) = match result {
            Ok(done) => done,
            Err(failure) => {
                session.remove_quietly(&temp, timeout).await;
                return Err(failure);
            }
        };
        if sent != length {
            session.remove_quietly(&temp, timeout).await;
            return Err(Failure::fatal(Error::new(
                ErrorKind::Io,
                format!(
                    "`{}` changed size while it was uploaded ({length} bytes when opened, {sent} read): something is still writing it; retry once it is complete",
                    local.display()
                ),
            )));
        }
        Ok((checksum, sent))
    }

    async fn get_impl(&self, uri: &Uri, destination: &Path) -> Result<TransferStats> {
        let target = Target::from_uri(uri)?;
        let mut link = Link::new(self, &target);
        let result = self.get_with(&mut link, uri, destination).await;
        link.close().await;
        result
    }

    async fn get_with(
        &self,
        link: &mut Link<'_>,
        uri: &Uri,
        destination: &Path,
    ) -> Result<TransferStats> {
        let target = link.target;
        let mut stats = TransferStats::default();
        if !uri.is_dir() {
            let Some(name) = uri.file_name() else {
                return Err(Error::invalid_uri(format!(
                    "`{}` does not end with a file name",
                    target.shown
                )));
            };
            let expected = Expected {
                source: target.shown.clone(),
                ..Expected::default()
            };
            let written = self
                .get_file(link, &destination.join(name), expected)
                .await?;
            stats.add(FileChecksum {
                path: name.to_owned(),
                size: written.size,
                crc64nvme: written.crc64nvme,
            });
            return Ok(stats);
        }
        let files = self.walk_dir(link, true).await?;
        for file in files {
            let local = join_key(destination, &file.relative)?;
            let remote = child(&target.path, &file.relative);
            let expected = Expected {
                source: format!("{}{}", target.shown, file.relative),
                ..Expected::default()
            };
            let written = self
                .download_file(link, &remote, &local, expected, Some(file.size))
                .await?;
            stats.add(FileChecksum {
                path: file.relative,
                size: written.size,
                crc64nvme: written.crc64nvme,
            });
        }
        Ok(stats)
    }

    /// The content of the directory named by the target, with retries: every file under it
    /// when `recursive`, or its files and sub-directories otherwise. Sorted by path.
    async fn walk_dir(&self, link: &mut Link<'_>, recursive: bool) -> Result<Vec<Listed>> {
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

    async fn put_impl(&self, source: &Path, uri: &Uri) -> Result<TransferStats> {
        let target = Target::from_uri(uri)?;
        let metadata = tokio::fs::metadata(source)
            .await
            .map_err(|error| Error::io("cannot read", source, error))?;
        let mut uploads: Vec<(std::path::PathBuf, String, String)> = Vec::new();
        if metadata.is_dir() {
            let root = source.to_path_buf();
            let files = run_blocking(move |cancel| local::walk_files(&root, cancel)).await?;
            for file in files {
                let relative = slash_path(&file.relative);
                let remote = child(&target.path, &relative);
                uploads.push((file.path, remote, relative));
            }
        } else {
            let remote = if uri.is_dir() {
                let Some(name) = source.file_name().and_then(|name| name.to_str()) else {
                    return Err(Error::invalid_uri(format!(
                        "`{}` has no usable file name",
                        source.display()
                    )));
                };
                child(&target.path, name)
            } else {
                target.path.clone()
            };
            let (_, name) = split_parent(&remote);
            if name.is_empty() || name == "." || name == ".." {
                return Err(Error::invalid_uri(format!(
                    "`{}` does not name a file to upload to: give the file name, or end the uri with `/`",
                    target.shown
                )));
            }
            let name = name.to_owned();
            uploads.push((source.to_path_buf(), remote, name));
        }
        let mut link = Link::new(self, &target);
        let result = self.upload_all(&mut link, uploads).await;
        link.close().await;
        result
    }

    async fn upload_all(
        &self,
        link: &mut Link<'_>,
        uploads: Vec<(std::path::PathBuf, String, String)>,
    ) -> Result<TransferStats> {
        let timeout = self.inner.timeout;
        let mut created: HashSet<String> = HashSet::new();
        let mut stats = TransferStats::default();
        for (local, remote, relative) in uploads {
            let (parent, _) = split_parent(&remote);
            let parent = parent.to_owned();
            if !parent.is_empty() && !created.contains(&parent) {
                retrying!(link, {
                    let shown = link.target.shown.clone();
                    let session = link.session().await?;
                    session.make_dirs(&parent, &shown, timeout).await
                })?;
                created.insert(parent);
            }
            let (crc64nvme, size) = self.upload_file(link, &local, &remote).await?;
            stats.add(FileChecksum {
                path: relative,
                size,
                crc64nvme,
            });
        }
        Ok(stats)
    }

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

/// Why a try failed, and whether another may succeed.
struct Failure {
    error: Error,
    transient: bool,
}

impl Failure {
    fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    fn transient(error: Error) -> Failure {
        Failure {
            error,
            transient: true,
        }
    }
}

/// A time-out (the server did not answer in time).
struct Elapsed;

impl Elapsed {
    fn failure(self, what: &str, shown: &str) -> Failure {
        Failure::transient(Error::new(
            ErrorKind::Io,
            format!(
                "`{shown}`: {what}: the server did not answer within {} s",
                FtpBackend::TIMEOUT.as_secs()
            ),
        ))
    }
}

async fn timed<T>(
    timeout: Duration,
    future: impl Future<Output = FtpResult<T>>,
) -> std::result::Result<FtpResult<T>, Elapsed> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| Elapsed)
}

/// The reply code of an FTP error, if the server answered.
fn reply_code(error: &FtpError) -> Option<u32> {
    match error {
        FtpError::UnexpectedResponse(response) => Some(response.status.code()),
        _ => None,
    }
}

/// Maps a client error: 550 → not found, 530/532/553 → permission denied; connection errors
/// and 421/425/426/450/451 are transient.
fn ftp_failure(error: FtpError, what: &str, shown: &str) -> Failure {
    match error {
        FtpError::ConnectionError(source) => Failure::transient(Error::with_source(
            ErrorKind::Io,
            format!("`{shown}`: {what}: connection error"),
            source,
        )),
        FtpError::UnexpectedResponse(response) => {
            let code = response.status.code();
            let text = String::from_utf8_lossy(&response.body);
            let mut reply: String = text.lines().next().unwrap_or_default().trim().to_owned();
            if reply.len() > 200 {
                let mut end = 200;
                while !reply.is_char_boundary(end) {
                    end -= 1;
                }
                reply.truncate(end);
            }
            let lower = reply.to_ascii_lowercase();
            let refused = ["permission", "privilege", "denied", "not allowed"]
                .iter()
                .any(|word| lower.contains(word));
            let (kind, hint) = match code {
                // 550 says "not available": missing, or refused (the text tells).
                550 if refused => (
                    ErrorKind::PermissionDenied,
                    "check the user's permissions on the server",
                ),
                550 => (ErrorKind::NotFound, "check the path"),
                530 | 532 => (
                    ErrorKind::PermissionDenied,
                    "check the user and password in the uri",
                ),
                553 => (
                    ErrorKind::PermissionDenied,
                    "check the path and the permissions",
                ),
                _ => (ErrorKind::Io, "retry later or check the server"),
            };
            let transient = matches!(code, 421 | 425 | 426 | 450 | 451);
            Failure {
                error: Error::new(
                    kind,
                    format!("`{shown}`: {what}: the server answered `{reply}`; {hint}"),
                ),
                transient,
            }
        }
        other => Failure::fatal(Error::with_source(
            ErrorKind::Io,
            format!("`{shown}`: {what}: unexpected answer from the server"),
            other,
        )),
    }
}

/// What a remote path is.
enum Remote {
    File(Option<u64>),
    Dir,
    Missing,
}

/// One entry of a remote listing.
struct Listed {
    /// Path relative to the listed directory (a sub-directory ends with `/` in non-recursive
    /// listings of [`Session::walk`]; the bare name in [`Session::read_dir`]).
    relative: String,
    size: u64,
    is_dir: bool,
}

/// One logged-in control connection.
struct Session {
    stream: AsyncFtpStream,
    /// Whether the server announced MLST (and so MLSD) in FEAT.
    mlst: bool,
}

impl Session {
    async fn connect(target: &Target, timeout: Duration) -> std::result::Result<Session, Failure> {
        let shown = &target.shown;
        let what = "cannot connect";
        let address = (target.host.as_str(), target.port);
        let mut stream = match timed(timeout, AsyncFtpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ftp_failure(error, what, shown)),
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        };
        stream.set_passive_nat_workaround(true);
        let what = "cannot log in";
        match timed(timeout, stream.login(&target.user, &target.password)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let mut failure = ftp_failure(error, what, shown);
                if failure.error.kind() == ErrorKind::Io && !failure.transient {
                    failure.error = Error::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "{}; check the user and password in the uri",
                            failure.error.message()
                        ),
                    );
                }
                return Err(failure);
            }
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        }
        let what = "cannot switch to binary mode";
        match timed(timeout, stream.transfer_type(FileType::Binary)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ftp_failure(error, what, shown)),
            Err(elapsed) => return Err(elapsed.failure(what, shown)),
        }
        let mlst = match timed(timeout, stream.feat()).await {
            Ok(Ok(features)) => features.keys().any(|key| key.eq_ignore_ascii_case("MLST")),
            Ok(Err(FtpError::UnexpectedResponse(_))) => false,
            Ok(Err(error)) => return Err(ftp_failure(error, "cannot read the features", shown)),
            Err(elapsed) => return Err(elapsed.failure("cannot read the features", shown)),
        };
        debug!(url = %shown, mlst, "ftp session opened");
        Ok(Session { stream, mlst })
    }

    /// Runs one command that returns nothing, mapping its errors.
    async fn command<'s, F>(
        &'s mut self,
        timeout: Duration,
        what: &str,
        shown: &str,
        command: F,
    ) -> std::result::Result<(), Failure>
    where
        F: FnOnce(&'s mut AsyncFtpStream) -> BoxFuture<'s, FtpResult<()>>,
    {
        match timed(timeout, command(&mut self.stream)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ftp_failure(error, what, shown)),
            Err(elapsed) => Err(elapsed.failure(what, shown)),
        }
    }

    /// Whether `path` is a file (with its size when the server tells), a directory, or absent.
    async fn probe(
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
    async fn read_dir(
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
    async fn walk(
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

    /// Creates `directory` and its parents, ignoring those that exist.
    async fn make_dirs(
        &mut self,
        directory: &str,
        shown: &str,
        timeout: Duration,
    ) -> std::result::Result<(), Failure> {
        let mut path = String::new();
        if directory.starts_with('/') {
            path.push('/');
        }
        for component in directory.split('/').filter(|part| !part.is_empty()) {
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(component);
            match timed(timeout, self.stream.mkdir(&path)).await {
                Ok(Ok(())) => {}
                // It exists (or cannot be made: the upload into it says so).
                Ok(Err(FtpError::UnexpectedResponse(_))) => {}
                Ok(Err(error)) => {
                    return Err(ftp_failure(
                        error,
                        &format!("cannot create the directory `{path}`"),
                        shown,
                    ));
                }
                Err(elapsed) => return Err(elapsed.failure("cannot create a directory", shown)),
            }
        }
        Ok(())
    }

    /// Sends `file` to `temp`, checks its size on the server, and renames it to `remote`.
    /// What it sends is counted in `progress`, and taken back if it fails.
    async fn store(
        &mut self,
        file: &mut tokio::fs::File,
        local: &Path,
        (temp, remote): (&str, &str),
        shown: &str,
        timeout: Duration,
        progress: &Progress,
    ) -> std::result::Result<(Crc64Nvme, u64), Failure> {
        let mut counted = TryCount::new(progress);
        let what = format!("cannot upload to `{remote}`");
        let mut stream = match timed(timeout, self.stream.put_with_stream(temp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ftp_failure(error, &what, shown)),
            Err(elapsed) => return Err(elapsed.failure(&what, shown)),
        };
        let mut hasher = Crc64NvmeHasher::new();
        let mut buffer = vec![0; BUFFER_SIZE];
        loop {
            let count = file
                .read(&mut buffer)
                .await
                .map_err(|error| Failure::fatal(Error::io("cannot read", local, error)))?;
            if count == 0 {
                break;
            }
            hasher.update(&buffer[..count]);
            match tokio::time::timeout(timeout, stream.write_all(&buffer[..count])).await {
                Ok(Ok(())) => counted.add(count as u64),
                Ok(Err(error)) => {
                    return Err(Failure::transient(Error::with_source(
                        ErrorKind::Io,
                        format!("`{shown}`: {what}: the transfer broke"),
                        error,
                    )));
                }
                Err(_) => return Err(Elapsed.failure(&what, shown)),
            }
        }
        match timed(timeout, stream.finish()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let mut failure = ftp_failure(error, &what, shown);
                failure.transient = true;
                return Err(failure);
            }
            Err(elapsed) => return Err(elapsed.failure(&what, shown)),
        }
        let sent = hasher.length();
        if let Ok(Ok(size)) = timed(timeout, self.stream.size(temp)).await
            && size as u64 != sent
        {
            return Err(Failure::transient(Error::new(
                ErrorKind::Io,
                format!("`{shown}`: {what}: the server kept {size} of {sent} bytes"),
            )));
        }
        let rename = timed(timeout, self.stream.rename(temp, remote)).await;
        if !matches!(rename, Ok(Ok(()))) {
            // Some servers do not rename over an existing file: remove it and try again.
            let _ = timed(timeout, self.stream.rm(remote)).await;
            match timed(timeout, self.stream.rename(temp, remote)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(ftp_failure(error, &what, shown)),
                Err(elapsed) => return Err(elapsed.failure(&what, shown)),
            }
        }
        counted.keep();
        Ok((hasher.finish(), sent))
    }

    /// Removes `path`, ignoring any error (cleanup of a temporary upload).
    async fn remove_quietly(&mut self, path: &str, timeout: Duration) {
        match timed(timeout, self.stream.rm(path)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(path, %error, "cannot remove a temporary upload"),
            Err(_) => debug!(path, "cannot remove a temporary upload: no answer"),
        }
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

/// The connection an operation uses, re-opened after a transient failure, and the count of
/// failures so far.
struct Link<'a> {
    backend: &'a FtpBackend,
    target: &'a Target,
    session: Option<Session>,
    failures: u32,
}

impl<'a> Link<'a> {
    fn new(backend: &'a FtpBackend, target: &'a Target) -> Link<'a> {
        Link {
            backend,
            target,
            session: None,
            failures: 0,
        }
    }

    /// The open session, connecting if needed.
    async fn session(&mut self) -> std::result::Result<&mut Session, Failure> {
        if self.session.is_none() {
            let session = Session::connect(self.target, self.backend.inner.timeout).await?;
            self.session = Some(session);
        }
        match self.session.as_mut() {
            Some(session) => Ok(session),
            None => Err(Failure::fatal(Error::new(
                ErrorKind::Io,
                "the ftp session was lost",
            ))),
        }
    }

    /// After a failed try: the error when it is final or the tries are used up; otherwise
    /// waits, and drops the connection so that the next try opens a new one. A try that
    /// `progressed` does not count.
    async fn recover(&mut self, failure: Failure, progressed: bool) -> Result<()> {
        if !failure.transient {
            return Err(failure.error);
        }
        self.session = None;
        if !progressed {
            self.failures += 1;
        }
        let retry = self.backend.inner.retry;
        if !retry.allows_another(self.failures) {
            return Err(gave_up(self.failures, failure.error));
        }
        warn!(
            url = %self.target.shown,
            failures = self.failures,
            error = %failure.error.report(),
            "ftp transfer failed; trying again"
        );
        tokio::time::sleep(retry.delay(self.failures.max(1))).await;
        Ok(())
    }

    /// Logs out, best effort.
    async fn close(mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.stream.quit()).await;
        }
    }
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
