//! Get and put. A download streams into a [`FileSink`] and, after a broken transfer, asks for
//! the rest with `REST` (and starts over from zero when the server refuses it); an upload goes
//! to a temporary name in the target directory, its size on the server is checked, and only
//! then is it renamed to the final name.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use suppaftp::FtpError;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::debug;

use super::connection::{Elapsed, Failure, Link, Session, ftp_failure, timed};
use super::listing::Remote;
use super::{BUFFER_SIZE, FtpBackend, Target, child, is_a_directory, missing, split_parent};
use crate::backend::{FileChecksum, TransferStats};
use crate::checksum::{Crc64Nvme, Crc64NvmeHasher};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Expected, FileSink, Written};
use crate::local::{self, run_blocking, slash_path, temp_name};
use crate::memory::join_key;
use crate::progress::{Progress, TryCount};
use crate::uri::Uri;

/// A local file to upload, with its device and inode when a walk listed it.
type Local = (std::path::PathBuf, Option<(u64, u64)>);

impl FtpBackend {
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
        (local, listed): &Local,
        remote: &str,
    ) -> Result<(Crc64Nvme, u64)> {
        let listed = *listed;
        link.failures = 0;
        let size = tokio::fs::symlink_metadata(local)
            .await
            .map_or(0, |metadata| metadata.len());
        self.progress.expect_file(size);
        loop {
            match self.store_once(link, (local, listed), remote).await {
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
        (local, listed): (&Path, Option<(u64, u64)>),
        remote: &str,
    ) -> std::result::Result<(Crc64Nvme, u64), Failure> {
        let timeout = self.inner.timeout;
        let shown = link.target.shown.clone();
        let (parent, _) = split_parent(remote);
        let temp = child(parent, &temp_name("upload"));
        let mut file = local::open_regular(local, listed)
            .map(tokio::fs::File::from_std)
            .map_err(Failure::fatal)?;
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

    pub(super) async fn get_impl(&self, uri: &Uri, destination: &Path) -> Result<TransferStats> {
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

    pub(super) async fn put_impl(&self, source: &Path, uri: &Uri) -> Result<TransferStats> {
        let target = Target::from_uri(uri)?;
        let metadata = tokio::fs::metadata(source)
            .await
            .map_err(|error| Error::io("cannot read", source, error))?;
        let mut uploads: Vec<(Local, String, String)> = Vec::new();
        let mut skipped = Vec::new();
        if metadata.is_dir() {
            let root = source.to_path_buf();
            let walk = run_blocking(move |cancel| local::walk_files(&root, false, cancel)).await?;
            skipped = walk.skipped;
            for file in walk.files {
                let relative = slash_path(&file.relative);
                let remote = child(&target.path, &relative);
                uploads.push(((file.path, Some(file.identity)), remote, relative));
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
            uploads.push(((source.to_path_buf(), None), remote, name));
        }
        let mut link = Link::new(self, &target);
        let result = self.upload_all(&mut link, uploads).await;
        link.close().await;
        result.map(|stats| TransferStats { skipped, ..stats })
    }

    async fn upload_all(
        &self,
        link: &mut Link<'_>,
        uploads: Vec<(Local, String, String)>,
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
}

impl Session {
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
}
