//! herd-fetch moves files between URI schemes: herd's worker stages task inputs, resources and
//! outputs with it, and `herd fetch` exposes it on the command line. It knows nothing about
//! tasks.
//!
//! A URI is `scheme[@option...]://path[|action...]` or a plain local path; a path ending in `/`
//! is a directory, transferred recursively. [`Uri::parse`] checks the grammar once; a
//! [`Resolver`] picks the [`Backend`] for the scheme, and [`Resolver::fetch`] downloads into a
//! directory and applies the actions (`|gunzip`, `|untar`, `|unzip`, `|mv:DIR`). Every file is
//! checksummed (CRC64NVME, as S3 does) while it is copied. On top of the backends, the
//! resolver does whole transfers between any two URIs: [`Resolver::copy`],
//! [`Resolver::download_to`], [`Resolver::sync`] (with a [`Filter`] of globs) and
//! [`Resolver::checksums`]. Errors carry an [`ErrorKind`] to branch on, and their causes as
//! typed sources; show them to people with [`error_chain`].
//!
//! ```no_run
//! # async fn example() -> herd_fetch::Result<()> {
//! use herd_fetch::{Resolver, Uri};
//!
//! let resolver = Resolver::default();
//! let uri = Uri::parse("/data/refs/genome.tar.gz|untar|mv:genome")?;
//! let fetched = resolver.fetch(&uri, std::path::Path::new("/scratch/resource")).await?;
//! for file in &fetched.stats.checksums {
//!     println!("{} {} {}", file.path, file.size, file.crc64nvme);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`uri`]: the grammar: [`Uri`], [`Scheme`], [`SchemeOption`], [`Action`].
//! - [`error`]: [`Error`] and [`ErrorKind`], the crate's one error type, and [`error_chain`],
//!   the message with its causes ("cannot write `x`: No space left on device").
//! - [`backend`]: the object-safe [`Backend`] trait (get, put, list, delete) and what it
//!   returns ([`TransferStats`], [`FileChecksum`], [`Entry`]).
//! - [`resolver`]: [`Resolver`], scheme → backend, and whole fetches staged in a hidden
//!   directory so that a failure leaves nothing behind.
//! - [`transfer`]: the transfers `herd fetch` offers, on [`Resolver`]: copy in any direction
//!   (remote to remote through a temporary directory), download to a file name, sync of what
//!   the destination lacks, checksums; [`Filter`] and [`glob_match`], the sync's globs.
//! - [`file`](mod@file): [`FileBackend`], the local filesystem (`file://` and plain paths).
//! - [`http`]: [`HttpBackend`], `http://` and `https://` downloads with retries and resumption
//!   by range, and the [`RetryPolicy`] the network backends share.
//! - [`s3`]: [`S3Backend`], `s3://bucket/key` through aws-sdk-s3: path-style, a full-object
//!   CRC64NVME on every upload and checked on download, parallel multipart transfers.
//! - [`azure`]: [`AzureBackend`], `azure://container/path` on Azure Blob Storage, and [`gcs`]:
//!   [`GcsBackend`], `gs://bucket/key` on Google Cloud Storage, both through the `object_store`
//!   crate and configured from the usual `AZURE_*` / `GOOGLE_*` variables.
//! - [`object`]: the `object_store` driver the two share (CRC64NVME stored as the metadata
//!   `crc64nvme`, parallel multipart uploads, paged listings, bulk deletions, the one mapping of
//!   their errors, secrets kept out of messages).
//! - `bucket` (private): what the three object-store backends share, written once over a small
//!   trait of the requests their clients make differently: the four operations on objects and
//!   prefixes, downloads streamed or by parallel ranges into a temporary file and checked
//!   against the stored CRC64NVME, uploads, keys refused when they would escape the destination,
//!   progress counting.
//! - [`ftp`]: [`FtpBackend`], `ftp://` (get, put through a temporary name, list, delete).
//! - [`fastq`]: [`FastqBackend`], `run+fastq://ACCESSION` from ENA (ftp, https) or with
//!   sra-tools, MD5-checked; [`EnaConfig`] says where ENA is.
//! - [`memory`]: [`MemoryBackend`], an in-memory object store for tests of code that transfers.
//! - [`actions`]: the actions, with tar and zip extraction (`actions/archive.rs`) that refuses
//!   entries escaping the target directory.
//! - [`checksum`]: CRC64NVME: [`crc64nvme_file`], streaming hashers and readers/writers.
//! - [`local`]: [`AtomicFile`] (temporary name, then rename) and the other local helpers that
//!   every backend shares.
//! - [`walk`]: the walk of a local folder and the open of its files, which never follow a
//!   symbolic link (an upload never leaves its folder), and the [`Skipped`] entries it reports.
//!
//! # Invariants
//!
//! - No partial file is ever visible under its final name: files are written under a
//!   `.herd-partial-*` name in their destination directory and renamed when complete; the
//!   temporary file is removed on failure or cancellation. (Durability across a power loss is not
//!   promised: files are not fsynced.)
//! - Extraction writes nothing outside its target directory and leaves no link pointing out of it.
//! - Backends never see actions; only [`Resolver::fetch`] applies them, and uploads, listings and
//!   deletions refuse URIs that carry them.
//! - `Display` of a [`Uri`] is the URI as written, secrets included; logs and error messages use
//!   [`Uri::redacted`] (and `Debug`, which is redacted).
//! - Adding a scheme means adding a backend and registering it in `Resolver::default`: callers do
//!   not change.

pub mod actions;
pub mod azure;
pub mod backend;
mod bucket;
pub mod checksum;
pub mod error;
pub mod fastq;
pub mod file;
pub mod ftp;
pub mod gcs;
pub mod http;
pub mod local;
pub mod memory;
pub mod object;
pub mod progress;
pub mod resolver;
pub mod s3;
pub mod transfer;
pub mod uri;
pub mod walk;

pub use azure::AzureBackend;
pub use backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
pub use checksum::{
    Crc64Nvme, Crc64NvmeHasher, crc64nvme, crc64nvme_file, crc64nvme_reader, verify_crc64nvme_file,
};
pub use error::{Error, ErrorKind, Result, error_chain};
pub use fastq::{EnaConfig, FastqBackend};
pub use file::FileBackend;
pub use ftp::FtpBackend;
pub use gcs::GcsBackend;
pub use http::{HttpBackend, RetryPolicy};
pub use local::AtomicFile;
pub use memory::MemoryBackend;
pub use object::{CHECKSUM_METADATA, Secret};
pub use progress::Progress;
pub use resolver::{Fetched, Resolver};
pub use s3::S3Backend;
pub use transfer::{Filter, glob_match};
pub use uri::{Action, Scheme, SchemeOption, SubDir, Uri};
pub use walk::{SkipReason, Skipped};
