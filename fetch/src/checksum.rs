//! CRC64NVME, the checksum S3 computes on every upload (`x-amz-checksum-crc64nvme`): computed
//! while data is copied, shown as S3 shows it (base64 of the big-endian `u64`).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crc_fast::{CrcAlgorithm, Digest};

use crate::error::{Error, ErrorKind, IoContext as _, Result};

/// Size of the buffer used to stream files: large enough that the CRC and the system calls cost
/// little next to the disk.
pub(crate) const BUFFER_SIZE: usize = 256 * 1024;

/// A CRC64NVME value. `Display` shows it as S3 does: base64 of the big-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Crc64Nvme(u64);

impl Crc64Nvme {
    /// The checksum of zero bytes.
    pub const EMPTY: Crc64Nvme = Crc64Nvme(0);

    /// Wraps a raw value.
    pub fn from_u64(value: u64) -> Crc64Nvme {
        Crc64Nvme(value)
    }

    /// The raw value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Base64 of the big-endian bytes, as S3 sends it in `x-amz-checksum-crc64nvme`.
    pub fn to_base64(self) -> String {
        BASE64.encode(self.0.to_be_bytes())
    }

    /// Reads the S3 form (base64 of eight big-endian bytes).
    pub fn from_base64(text: &str) -> Result<Crc64Nvme> {
        let bytes = BASE64
            .decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok());
        match bytes {
            Some(bytes) => Ok(Crc64Nvme(u64::from_be_bytes(bytes))),
            None => Err(Error::new(
                ErrorKind::Checksum,
                format!(
                    "`{text}` is not a crc64nvme checksum: expected base64 of 8 bytes, e.g. rosUhgp5mIg="
                ),
            )),
        }
    }
}

impl fmt::Display for Crc64Nvme {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_base64())
    }
}

/// A streaming CRC64NVME: feed it with [`update`](Self::update) or as an `io::Write`.
#[derive(Clone)]
pub struct Crc64NvmeHasher {
    digest: Digest,
    length: u64,
}

impl Crc64NvmeHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Crc64NvmeHasher {
            digest: Digest::new(CrcAlgorithm::Crc64Nvme),
            length: 0,
        }
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// The checksum of every byte seen so far.
    pub fn finish(&self) -> Crc64Nvme {
        Crc64Nvme(self.digest.finalize())
    }

    /// How many bytes have been seen.
    pub fn length(&self) -> u64 {
        self.length
    }
}

impl Default for Crc64NvmeHasher {
    fn default() -> Self {
        Crc64NvmeHasher::new()
    }
}

impl fmt::Debug for Crc64NvmeHasher {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Crc64NvmeHasher")
            .field("length", &self.length)
            .field("crc64nvme", &self.finish())
            .finish()
    }
}

impl Write for Crc64NvmeHasher {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that checksums what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Crc64NvmeHasher,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Crc64NvmeHasher::new(),
        }
    }

    /// The checksum and the number of bytes read so far.
    pub fn finish(&self) -> (Crc64Nvme, u64) {
        (self.hasher.finish(), self.hasher.length())
    }

    /// Gives the inner reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..count]);
        Ok(count)
    }
}

/// A writer that checksums what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Crc64NvmeHasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Crc64NvmeHasher::new(),
        }
    }

    /// The checksum and the number of bytes written so far.
    pub fn finish(&self) -> (Crc64Nvme, u64) {
        (self.hasher.finish(), self.hasher.length())
    }

    /// Gives the inner writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..count]);
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The CRC64NVME of `bytes`.
pub fn crc64nvme(bytes: &[u8]) -> Crc64Nvme {
    Crc64Nvme(crc_fast::checksum(CrcAlgorithm::Crc64Nvme, bytes))
}

/// The CRC64NVME of everything `reader` yields, and how many bytes that was.
pub fn crc64nvme_reader(mut reader: impl Read) -> io::Result<(Crc64Nvme, u64)> {
    let mut hasher = Crc64NvmeHasher::new();
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..count]);
    }
    Ok((hasher.finish(), hasher.length()))
}

/// The CRC64NVME of the file at `path`, in S3's base64 form.
pub fn crc64nvme_file(path: impl AsRef<Path>) -> Result<String> {
    let (checksum, _) = crc64nvme_file_sized(path.as_ref())?;
    Ok(checksum.to_base64())
}

/// The CRC64NVME of the file at `path`, and its size.
pub(crate) fn crc64nvme_file_sized(path: &Path) -> Result<(Crc64Nvme, u64)> {
    let file = File::open(path).at("cannot open", path)?;
    crc64nvme_reader(file).at("cannot read", path)
}

/// Checks that the file at `path` has the CRC64NVME `expected` (base64); an error of kind
/// [`ErrorKind::Checksum`] otherwise.
pub fn verify_crc64nvme_file(path: impl AsRef<Path>, expected: &str) -> Result<()> {
    let path = path.as_ref();
    let expected = Crc64Nvme::from_base64(expected)?;
    let actual = Crc64Nvme::from_base64(&crc64nvme_file(path)?)?;
    if actual != expected {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "`{}` has crc64nvme {actual} but {expected} was expected: the file is corrupt or changed; download it again",
                path.display()
            ),
        ));
    }
    Ok(())
}
