//! [`FileSink`]: the local file a download streams into, written by a task on the blocking pool
//! so that the async threads never wait on the disk, and checked against what the source
//! announced ([`Expected`]: size, MD5) before it takes its final name. The http, ftp and
//! run+fastq backends all download through it.

use std::io::Write as _;
use std::path::PathBuf;

use md5::{Digest as _, Md5};
use tokio::sync::mpsc;

use crate::checksum::Crc64Nvme;
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::local::{AtomicFile, run_blocking};
use crate::progress::Progress;

/// What a finished file must match before it is given its final name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expected {
    /// Where the bytes came from, as messages should show it (no secrets).
    pub(crate) source: String,
    /// The size announced by the source.
    pub(crate) size: Option<u64>,
    /// The MD5 announced by the source.
    pub(crate) md5: Option<[u8; 16]>,
}

/// A file fully written by a [`FileSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) crc64nvme: Crc64Nvme,
    pub(crate) size: u64,
    pub(crate) md5: Option<[u8; 16]>,
}

enum SinkMessage {
    Data(Vec<u8>),
    Restart,
    Commit(Expected),
}

/// A local file being downloaded: bytes sent from async code are written by a task on the
/// blocking pool into an [`AtomicFile`] (CRC64NVME, and MD5 when asked, computed on the way).
/// [`commit`](Self::commit) checks the size and MD5 and gives the file its final name; dropped
/// without a commit (an error, a cancelled download), the temporary file is removed.
pub(crate) struct FileSink {
    sender: Option<mpsc::Sender<SinkMessage>>,
    writer: Option<tokio::task::JoinHandle<Result<Written>>>,
    path: PathBuf,
    written: u64,
    progress: Progress,
    /// Whether the file's size was announced to `progress`.
    announced: bool,
}

impl FileSink {
    /// Starts the file that will be `path` (parent directories are created), announced to
    /// `progress` with its `size` when known (see [`announce`](Self::announce)).
    pub(crate) async fn create(
        path: PathBuf,
        with_md5: bool,
        progress: &Progress,
        size: Option<u64>,
    ) -> Result<FileSink> {
        let create_path = path.clone();
        let file = run_blocking(move |_| AtomicFile::create(&create_path)).await?;
        let (sender, receiver) = mpsc::channel(16);
        let writer = tokio::task::spawn_blocking(move || write_sink(file, receiver, with_md5));
        progress.expect_file(size.unwrap_or(0));
        Ok(FileSink {
            sender: Some(sender),
            writer: Some(writer),
            path,
            written: 0,
            progress: progress.clone(),
            announced: size.is_some(),
        })
    }

    /// Announces the file's size to the progress counters, if it was not known at creation.
    pub(crate) fn announce(&mut self, size: u64) {
        if !self.announced {
            self.announced = true;
            self.progress.expect_bytes(size);
        }
    }

    /// Bytes accepted since the file was started (or restarted).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`.
    pub(crate) async fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        let length = bytes.len() as u64;
        self.send(SinkMessage::Data(bytes)).await?;
        self.written += length;
        self.progress.transferred(length);
        Ok(())
    }

    /// Empties the file, to download it again from the start.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.send(SinkMessage::Restart).await?;
        self.progress.restarted(self.written);
        self.written = 0;
        Ok(())
    }

    /// Checks the file against `expected` and renames it to its final name; on a mismatch
    /// (kind [`ErrorKind::Checksum`]) nothing is left.
    pub(crate) async fn commit(mut self, expected: Expected) -> Result<Written> {
        self.send(SinkMessage::Commit(expected)).await?;
        self.sender = None;
        let written = self.join_writer().await?;
        self.progress.file_done();
        Ok(written)
    }

    /// Gives up the file: the temporary file is removed before this returns (a sink merely
    /// dropped, on cancellation, is removed by its writer shortly after).
    pub(crate) async fn abort(mut self) {
        self.sender = None;
        if self.writer.is_some() {
            let _ = self.join_writer().await;
        }
    }

    async fn send(&mut self, message: SinkMessage) -> Result<()> {
        let Some(sender) = &self.sender else {
            return Err(Error::new(ErrorKind::Io, "the file was already finished"));
        };
        if sender.send(message).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: it failed, and says why.
        self.sender = None;
        match self.join_writer().await {
            Err(error) => Err(error),
            Ok(_) => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the writer of `{}` stopped early; retry",
                    self.path.display()
                ),
            )),
        }
    }

    async fn join_writer(&mut self) -> Result<Written> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::new(ErrorKind::Io, "the file was already finished"));
        };
        writer.await.map_err(|error| {
            Error::with_source(ErrorKind::Io, "a file writer task panicked", error)
        })?
    }
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FileSink")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish()
    }
}

fn write_sink(
    mut file: AtomicFile,
    mut receiver: mpsc::Receiver<SinkMessage>,
    with_md5: bool,
) -> Result<Written> {
    let new_hasher = || with_md5.then(Md5::new);
    let mut md5 = new_hasher();
    let mut length: u64 = 0;
    while let Some(message) = receiver.blocking_recv() {
        match message {
            SinkMessage::Data(bytes) => {
                file.write_all(&bytes)
                    .at("cannot write", file.final_path())?;
                if let Some(hasher) = &mut md5 {
                    hasher.update(&bytes);
                }
                length += bytes.len() as u64;
            }
            SinkMessage::Restart => {
                let path = file.final_path().to_path_buf();
                drop(file);
                file = AtomicFile::create(&path)?;
                md5 = new_hasher();
                length = 0;
            }
            SinkMessage::Commit(expected) => {
                let md5 = md5.map(|hasher| <[u8; 16]>::from(hasher.finalize()));
                check_expected(&expected, length, md5)?;
                let (crc64nvme, size) = file.commit()?;
                return Ok(Written {
                    crc64nvme,
                    size,
                    md5,
                });
            }
        }
    }
    // The sender went away without a commit: the download failed or was cancelled; dropping
    // the file removes it.
    Err(Error::new(ErrorKind::Io, "the download was cancelled"))
}

fn check_expected(expected: &Expected, length: u64, md5: Option<[u8; 16]>) -> Result<()> {
    if let Some(size) = expected.size
        && size != length
    {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{}` has {length} bytes but {size} were announced: the download is incomplete or the source changed; download it again",
                expected.source
            ),
        ));
    }
    if let (Some(wanted), Some(actual)) = (expected.md5, md5)
        && wanted != actual
    {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{}` has md5 {} but {} was announced: the download is corrupt or the source changed; download it again",
                expected.source,
                hex(&actual),
                hex(&wanted)
            ),
        ));
    }
    Ok(())
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}
