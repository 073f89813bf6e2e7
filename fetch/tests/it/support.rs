//! Helpers shared by the tests: trees of files, archives built in the test, directory listings.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use herd_fetch::Uri;

/// The `Backend` contract, shared with the test binaries of the remote schemes (which use the
/// capabilities the local backends do not need).
#[allow(dead_code)]
#[path = "../support/contract.rs"]
pub mod contract;
#[path = "../support/files.rs"]
mod files;

pub use contract::{CRC_123456789, CRC_EMPTY, CRC_HELLO};
pub use files::{tree, write};

/// The URI of a local directory (with its trailing `/`).
pub fn dir_uri(path: &Path) -> Uri {
    Uri::parse(&format!("{}/", path.display())).unwrap()
}

/// The URI of a local file, with `suffix` (actions) appended.
pub fn file_uri(path: &Path, suffix: &str) -> Uri {
    Uri::parse(&format!("file://{}{suffix}", path.display())).unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An entry of a test tar archive.
pub enum TarEntry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A tar archive with `entries`, names written raw (the tar crate refuses to *write* `..` and
/// absolute names, which is exactly what hostile archives hold).
pub fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match entry {
            TarEntry::File(name, data) => (name, tar::EntryType::Regular, None, data),
            TarEntry::Dir(name) => (name, tar::EntryType::Directory, None, b""),
            TarEntry::Symlink(name, target) => (name, tar::EntryType::Symlink, Some(target), b""),
            TarEntry::HardLink(name, target) => (name, tar::EntryType::Link, Some(target), b""),
        };
        let mut header = tar::Header::new_gnu();
        {
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if matches!(kind, tar::EntryType::Directory) {
            0o755
        } else {
            0o644
        });
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// An entry of a test zip archive.
pub enum ZipEntry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub fn zip(entries: &[ZipEntry<'_>]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for entry in entries {
        match entry {
            ZipEntry::File(name, data) => {
                writer.start_file(*name, options).unwrap();
                writer.write_all(data).unwrap();
            }
            ZipEntry::Dir(name) => writer.add_directory(*name, options).unwrap(),
            ZipEntry::Symlink(name, target) => writer.add_symlink(*name, *target, options).unwrap(),
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A temporary directory laid out as `outside/` (must stay untouched) and `outside/target/`
/// (where things are extracted).
pub struct Sandbox {
    _temp: tempfile::TempDir,
    pub outside: PathBuf,
    pub target: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        let target = outside.join("target");
        fs::create_dir_all(&target).unwrap();
        Sandbox {
            _temp: temp,
            outside,
            target,
        }
    }

    /// Everything under `outside`, except what is under `target`.
    pub fn outside_tree(&self) -> Vec<String> {
        tree(&self.outside)
            .into_iter()
            .filter(|path| !path.starts_with("target/"))
            .collect()
    }
}
