//! [`FastqBackend`]: `run+fastq[@option...]://ACCESSION`, the FASTQ files of one sequencing
//! run, from ENA (over FTP or HTTPS) or from NCBI SRA (with sra-tools' `fasterq-dump`).
//!
//! The run is looked up with ENA's filereport API
//! (`{endpoint}/portal/api/filereport?accession=ACC&result=read_run&fields=run_accession,fastq_ftp,fastq_md5,fastq_bytes&format=tsv`),
//! which answers a TSV header line and one line per run; `fastq_ftp`, `fastq_md5` and
//! `fastq_bytes` are `;`-separated lists, the paths written without a scheme
//! (`ftp.sra.ebi.ac.uk/vol1/fastq/ERR385/002/ERR3857002/ERR3857002_1.fastq.gz`).
//!
//! Transports are tried in the order the options give them, by default `@ena-ftp`, `@ena-https`,
//! `@sra-tools`; the first that delivers every file wins, and a transport that fails leaves no
//! file behind. Over ENA each file's size and MD5 are checked against the report (a mismatch is
//! an [`ErrorKind::Checksum`] error, and the next transport is tried). `@sra-tools` runs
//! `fasterq-dump --split-3` and gzips its output, so the files have the same names as ENA's
//! (`ACC_1.fastq.gz`...). `@only-read1` keeps the `_1` files (or the single file of a run that
//! has one).
//!
//! Where ENA is, and where its files are downloaded from, is an [`EnaConfig`]: the defaults
//! are ENA's, `HERD_ENA_ENDPOINT`, `HERD_ENA_FTP_BASE` and `HERD_ENA_HTTPS_BASE` override them
//! (a mirror, or a test server).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use flate2::Compression;
use flate2::write::GzEncoder;
use tracing::{debug, warn};

use crate::backend::{Backend, BoxFuture, Entry, FileChecksum, TransferStats};
use crate::error::{Error, ErrorKind, IoContext as _, Result};
use crate::ftp::FtpBackend;
use crate::http::{Expected, HttpBackend, HttpTarget, hex};
use crate::local::{AtomicFile, copy_stream, run_blocking, temp_name};
use crate::progress::Progress;
use crate::uri::{SchemeOption, Uri};

/// Where run+fastq finds ENA, and where it downloads ENA's files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnaConfig {
    /// ENA's base URL: the filereport API is `{endpoint}/portal/api/filereport`. Default
    /// [`EnaConfig::DEFAULT_ENDPOINT`]; `HERD_ENA_ENDPOINT` in [`EnaConfig::from_env`].
    pub endpoint: String,
    /// For `@ena-ftp`: a URL prefix that replaces `ftp://HOST/` in front of each `fastq_ftp`
    /// path of the report (the path after the host is appended), e.g. `ftp://127.0.0.1:2121/`
    /// or a mirror. `None`: `ftp://` followed by the path as reported. `HERD_ENA_FTP_BASE` in
    /// [`EnaConfig::from_env`].
    pub ftp_base: Option<String>,
    /// For `@ena-https`: the same as `ftp_base`, in place of `https://HOST/` (an `http://`
    /// prefix is allowed, for tests). `HERD_ENA_HTTPS_BASE` in [`EnaConfig::from_env`].
    pub https_base: Option<String>,
}

impl EnaConfig {
    /// ENA's public endpoint.
    pub const DEFAULT_ENDPOINT: &'static str = "https://www.ebi.ac.uk/ena";
    /// The variable that overrides [`endpoint`](Self::endpoint).
    pub const ENDPOINT_VARIABLE: &'static str = "HERD_ENA_ENDPOINT";
    /// The variable that sets [`ftp_base`](Self::ftp_base).
    pub const FTP_BASE_VARIABLE: &'static str = "HERD_ENA_FTP_BASE";
    /// The variable that sets [`https_base`](Self::https_base).
    pub const HTTPS_BASE_VARIABLE: &'static str = "HERD_ENA_HTTPS_BASE";

    /// The defaults, overridden by the `HERD_ENA_*` variables that are set and not empty.
    pub fn from_env() -> EnaConfig {
        let variable = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let defaults = EnaConfig::default();
        EnaConfig {
            endpoint: variable(Self::ENDPOINT_VARIABLE).unwrap_or(defaults.endpoint),
            ftp_base: variable(Self::FTP_BASE_VARIABLE),
            https_base: variable(Self::HTTPS_BASE_VARIABLE),
        }
    }

    /// The filereport URL for `accession`.
    pub fn report_url(&self, accession: &str) -> String {
        format!(
            "{}/portal/api/filereport?accession={accession}&result=read_run&fields=run_accession,fastq_ftp,fastq_md5,fastq_bytes&format=tsv",
            self.endpoint.trim_end_matches('/')
        )
    }

    /// The URL `transport` downloads the reported `host_path` (`HOST/path`) from.
    fn download_url(&self, transport: SchemeOption, host_path: &str) -> String {
        let (scheme, base) = match transport {
            SchemeOption::EnaHttps => ("https", &self.https_base),
            _ => ("ftp", &self.ftp_base),
        };
        match base {
            None => format!("{scheme}://{host_path}"),
            Some(base) => {
                let path = host_path.split_once('/').map_or("", |(_, path)| path);
                format!("{}/{path}", base.trim_end_matches('/'))
            }
        }
    }
}

impl Default for EnaConfig {
    fn default() -> Self {
        EnaConfig {
            endpoint: EnaConfig::DEFAULT_ENDPOINT.to_owned(),
            ftp_base: None,
            https_base: None,
        }
    }
}

/// `run+fastq://ACCESSION`: downloads (and lists) the FASTQ files of a run; uploads and
/// deletions are refused. See the [module](self) documentation.
#[derive(Debug, Clone)]
pub struct FastqBackend {
    ena: EnaConfig,
    http: HttpBackend,
    ftp: FtpBackend,
    fasterq_dump: PathBuf,
    progress: Progress,
}

impl Default for FastqBackend {
    /// ENA as [`EnaConfig::from_env`] says, default transfers, `fasterq-dump` from `PATH`.
    fn default() -> Self {
        FastqBackend::new(EnaConfig::from_env())
    }
}

impl FastqBackend {
    /// The backend for `ena`, with default HTTP and FTP transfers and `fasterq-dump` looked up
    /// on `PATH`.
    pub fn new(ena: EnaConfig) -> Self {
        FastqBackend {
            ena,
            http: HttpBackend::new(),
            ftp: FtpBackend::new(),
            fasterq_dump: PathBuf::from("fasterq-dump"),
            progress: Progress::disabled(),
        }
    }

    /// Uses `http` (the lookup and `@ena-https`) and `ftp` (`@ena-ftp`), e.g. with another
    /// retry policy.
    pub fn with_transfers(mut self, http: HttpBackend, ftp: FtpBackend) -> Self {
        self.http = http;
        self.ftp = ftp;
        if self.progress.is_enabled() {
            let progress = self.progress.clone();
            return self.with_progress(progress);
        }
        self
    }

    /// Counts what this backend downloads in `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.http = self.http.with_progress(progress.clone());
        self.ftp = self.ftp.with_progress(progress.clone());
        self.progress = progress;
        self
    }

    /// Runs `program` for `@sra-tools`: a name looked up on `PATH` (default `fasterq-dump`) or
    /// a path.
    pub fn with_fasterq_dump(mut self, program: impl Into<PathBuf>) -> Self {
        self.fasterq_dump = program.into();
        self
    }

    /// Where ENA is.
    pub fn ena(&self) -> &EnaConfig {
        &self.ena
    }

    /// The run's FASTQ files as ENA reports them (`@only-read1` applied).
    async fn lookup(&self, accession: &str, only_read1: bool) -> Result<Vec<RunFile>> {
        let url = self.ena.report_url(accession);
        let target = HttpTarget::from_url(&url)?;
        let text = match self.http.get_text(&target).await {
            Ok(Some(text)) => text,
            Ok(None) => return Err(unknown_run(accession)),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(Error::with_source(
                    ErrorKind::NotFound,
                    unknown_run(accession).message(),
                    error,
                ));
            }
            Err(error) => {
                let message = format!("cannot look up run {accession} at ENA: {}", error.message());
                return Err(Error::replacing(error.kind(), message, error));
            }
        };
        let files = parse_report(&text, accession)?;
        Ok(if only_read1 { keep_read1(files) } else { files })
    }

    async fn get_impl(&self, uri: &Uri, destination: &Path) -> Result<TransferStats> {
        let accession = accession(uri)?;
        let only_read1 = uri.has_option(SchemeOption::OnlyRead1);
        let mut files: Option<Vec<RunFile>> = None;
        let mut lookup_failed = false;
        let mut failures: Vec<(String, Error)> = Vec::new();
        for transport in transports(uri) {
            let attempt = if transport == SchemeOption::SraTools {
                self.sra_tools(accession, only_read1, destination).await
            } else {
                if lookup_failed {
                    continue;
                }
                if files.is_none() {
                    match self.lookup(accession, only_read1).await {
                        Ok(found) => files = Some(found),
                        Err(error) => {
                            lookup_failed = true;
                            failures.push(("ENA lookup".to_owned(), error));
                            continue;
                        }
                    }
                }
                let Some(files) = &files else { continue };
                self.ena_download(transport, files, destination).await
            };
            match attempt {
                Ok(stats) => return Ok(stats),
                Err(error) => {
                    warn!(accession, transport = %transport, error = %error.report(), "run+fastq transport failed");
                    failures.push((format!("@{transport}"), error));
                }
            }
        }
        let mut failures = failures.into_iter();
        let Some((first_name, first)) = failures.next() else {
            return Err(Error::new(
                ErrorKind::InvalidUri,
                format!("run+fastq://{accession}: no transport to try"),
            ));
        };
        let rest: Vec<(String, Error)> = failures.collect();
        if rest.is_empty() {
            return Err(first);
        }
        // Each failure once, labelled unless its message already starts with its label.
        let labelled = |name: &str, error: &Error| {
            if error.message().starts_with(name) {
                error.message().to_owned()
            } else {
                format!("{name}: {}", error.message())
            }
        };
        let mut message = format!(
            "cannot fetch run {accession}: {}",
            labelled(&first_name, &first)
        );
        for (name, error) in &rest {
            message.push_str("; ");
            message.push_str(&labelled(name, error));
        }
        Err(Error::replacing(first.kind(), message, first))
    }

    /// Downloads every file over ENA's FTP or HTTPS; on failure removes those already
    /// downloaded.
    async fn ena_download(
        &self,
        transport: SchemeOption,
        files: &[RunFile],
        destination: &Path,
    ) -> Result<TransferStats> {
        let mut stats = TransferStats::default();
        let mut done: Vec<PathBuf> = Vec::new();
        for file in files {
            let url = self.ena.download_url(transport, &file.host_path);
            let path = destination.join(&file.name);
            if file.md5.is_none() {
                warn!(url, "ENA gives no md5 for this file: it is not checked");
            }
            let expected = Expected {
                source: url.clone(),
                size: file.size,
                md5: file.md5,
            };
            let result = match transport {
                SchemeOption::EnaHttps => match HttpTarget::from_url(&url) {
                    Ok(target) => self.http.download(&target, &path, expected).await,
                    Err(error) => Err(error),
                },
                _ => match Uri::parse(&url) {
                    Ok(uri) => self.ftp.download(&uri, &path, expected).await,
                    Err(error) => Err(error),
                },
            };
            match result {
                Ok(written) => {
                    done.push(path);
                    stats.add(FileChecksum {
                        path: file.name.clone(),
                        size: written.size,
                        crc64nvme: written.crc64nvme,
                    });
                }
                Err(error) => {
                    for path in done {
                        if let Err(remove) = tokio::fs::remove_file(&path).await {
                            warn!(path = %path.display(), error = %remove, "cannot remove a file of a failed run download");
                        }
                    }
                    return Err(error);
                }
            }
        }
        debug!(transport = %transport, files = stats.files, bytes = stats.bytes, "run downloaded from ENA");
        Ok(stats)
    }

    /// Downloads the run with `fasterq-dump` into a hidden directory of `destination`, then
    /// gzips each FASTQ file into `destination`.
    async fn sra_tools(
        &self,
        accession: &str,
        only_read1: bool,
        destination: &Path,
    ) -> Result<TransferStats> {
        let Some(program) = find_program(&self.fasterq_dump) else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "@sra-tools needs `{}` on the worker's PATH, and it is not there: install sra-tools (e.g. `conda install -c bioconda sra-tools`, or NCBI's sratoolkit), or use @ena-ftp or @ena-https",
                    self.fasterq_dump.display()
                ),
            ));
        };
        let work = destination.join(temp_name("sra"));
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|error| Error::io("cannot create the directory", &work, error))?;
        let result = self
            .run_fasterq_dump(&program, accession, only_read1, &work, destination)
            .await;
        if let Err(error) = tokio::fs::remove_dir_all(&work).await {
            warn!(path = %work.display(), %error, "cannot remove fasterq-dump's directory");
        }
        result
    }

    async fn run_fasterq_dump(
        &self,
        program: &Path,
        accession: &str,
        only_read1: bool,
        work: &Path,
        destination: &Path,
    ) -> Result<TransferStats> {
        debug!(program = %program.display(), accession, "running fasterq-dump");
        let output = tokio::process::Command::new(program)
            .arg("--split-3")
            .arg("--outdir")
            .arg(work)
            .arg("--temp")
            .arg(work)
            .arg(accession)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| {
                Error::with_source(
                    ErrorKind::Io,
                    format!("cannot run `{}`", program.display()),
                    error,
                )
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "`{} {accession}` failed ({}): {}; check the accession, the network and the disk space",
                    program.display(),
                    output.status,
                    tail.join(" / ")
                ),
            ));
        }
        let mut names = Vec::new();
        let mut entries = tokio::fs::read_dir(work)
            .await
            .map_err(|error| Error::io("cannot list", work, error))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|error| Error::io("cannot list", work, error))?
        {
            if let Some(name) = entry.file_name().to_str()
                && name.ends_with(".fastq")
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        if only_read1 {
            names = keep_read1_names(names);
        }
        if names.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "`{}` wrote no FASTQ file for run {accession}",
                    program.display()
                ),
            ));
        }
        let work = work.to_path_buf();
        let destination = destination.to_path_buf();
        let progress = self.progress.clone();
        run_blocking(move |cancel| {
            let mut stats = TransferStats::default();
            for name in names {
                let source = work.join(&name);
                let gzipped = format!("{name}.gz");
                let mut input = std::fs::File::open(&source).at("cannot open", &source)?;
                let target = destination.join(&gzipped);
                let mut encoder = GzEncoder::new(AtomicFile::create(&target)?, Compression::fast());
                copy_stream(&mut input, &mut encoder, cancel).at("cannot compress", &source)?;
                let file = encoder.finish().at("cannot write", &target)?;
                let (crc64nvme, size) = file.commit()?;
                // Counted once compressed: the size is not known before.
                progress.expect_file(size);
                progress.transferred(size);
                progress.file_done();
                stats.add(FileChecksum {
                    path: gzipped,
                    size,
                    crc64nvme,
                });
            }
            Ok(stats)
        })
        .await
    }

    async fn list_impl(&self, uri: &Uri) -> Result<Vec<Entry>> {
        let accession = accession(uri)?;
        let files = self
            .lookup(accession, uri.has_option(SchemeOption::OnlyRead1))
            .await?;
        let transport = transports(uri)
            .into_iter()
            .find(|transport| *transport != SchemeOption::SraTools)
            .unwrap_or(SchemeOption::EnaFtp);
        let mut entries = Vec::with_capacity(files.len());
        for file in files {
            entries.push(Entry {
                uri: Uri::parse(&self.ena.download_url(transport, &file.host_path))?,
                path: file.name,
                size: file.size.unwrap_or(0),
            });
        }
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        Ok(entries)
    }
}

impl Backend for FastqBackend {
    fn get<'a>(
        &'a self,
        uri: &'a Uri,
        destination: &'a Path,
    ) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(self.get_impl(uri, destination))
    }

    fn put<'a>(&'a self, _source: &'a Path, uri: &'a Uri) -> BoxFuture<'a, Result<TransferStats>> {
        Box::pin(async move { Err(read_only(uri, "upload to")) })
    }

    fn list<'a>(&'a self, uri: &'a Uri, _recursive: bool) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(self.list_impl(uri))
    }

    fn delete<'a>(&'a self, uri: &'a Uri, _recursive: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Err(read_only(uri, "delete")) })
    }
}

fn read_only(uri: &Uri, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "cannot {what} `{}`: run+fastq is read-only; submit reads to ENA or SRA with their own tools",
            uri.redacted()
        ),
    )
}

fn unknown_run(accession: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("ENA knows no run {accession}: check the accession (e.g. SRR000001, ERR000001)"),
    )
}

/// The run accession of `uri`: letters and digits only.
fn accession(uri: &Uri) -> Result<&str> {
    let accession = uri.path();
    if accession.is_empty() || !accession.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return Err(Error::invalid_uri(format!(
            "`{}` must name one run accession, letters and digits only: e.g. run+fastq://SRR000001",
            uri.redacted()
        )));
    }
    Ok(accession)
}

/// The transports of `uri` in the order given, or the default order.
fn transports(uri: &Uri) -> Vec<SchemeOption> {
    let given: Vec<SchemeOption> = uri
        .options()
        .iter()
        .copied()
        .filter(|option| *option != SchemeOption::OnlyRead1)
        .collect();
    if given.is_empty() {
        vec![
            SchemeOption::EnaFtp,
            SchemeOption::EnaHttps,
            SchemeOption::SraTools,
        ]
    } else {
        given
    }
}

/// One FASTQ file of a run, as ENA reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunFile {
    /// `HOST/path`, as in `fastq_ftp`.
    host_path: String,
    /// The last component of the path.
    name: String,
    md5: Option<[u8; 16]>,
    size: Option<u64>,
}

fn field<'t>(row: &[&'t str], index: usize) -> &'t str {
    row.get(index).copied().unwrap_or_default()
}

/// Reads ENA's filereport TSV for `accession`.
fn parse_report(text: &str, accession: &str) -> Result<Vec<RunFile>> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let Some(header) = lines.next() else {
        return Err(unknown_run(accession));
    };
    let columns = ReportColumns::find(header, accession)?;
    let rows: Vec<Vec<&str>> = lines
        .map(|line| line.split('\t').map(str::trim).collect())
        .collect();
    let row = run_row(&rows, columns.run, accession)?;
    let list = |text: &str| -> Vec<String> {
        text.split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let paths = list(field(row, columns.ftp));
    let md5s = list(field(row, columns.md5));
    let sizes = list(field(row, columns.bytes));
    if paths.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "ENA has no FASTQ files for run {accession} (only submitted files, or not yet processed): try @sra-tools"
            ),
        ));
    }
    run_files(accession, paths, &md5s, &sizes)
}

/// Where the columns herd reads are in ENA's report.
struct ReportColumns {
    run: usize,
    ftp: usize,
    md5: usize,
    bytes: usize,
}

impl ReportColumns {
    /// The columns named in `header`; a missing one is an error.
    fn find(header: &str, accession: &str) -> Result<ReportColumns> {
        let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
        let column = |name: &str| {
            columns
                .iter()
                .position(|column| *column == name)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "ENA's report for {accession} has no `{name}` column (header `{}`): check HERD_ENA_ENDPOINT",
                            header.trim()
                        ),
                    )
                })
        };
        Ok(ReportColumns {
            run: column("run_accession")?,
            ftp: column("fastq_ftp")?,
            md5: column("fastq_md5")?,
            bytes: column("fastq_bytes")?,
        })
    }
}

/// The row of the run `accession` among `rows`; an accession that names a study or a sample
/// (several runs) says which runs it has.
fn run_row<'r, 't>(
    rows: &'r [Vec<&'t str>],
    run_column: usize,
    accession: &str,
) -> Result<&'r [&'t str]> {
    let Some(row) = rows
        .iter()
        .find(|row| field(row, run_column).eq_ignore_ascii_case(accession))
    else {
        if rows.is_empty() {
            return Err(unknown_run(accession));
        }
        let runs: Vec<&str> = rows
            .iter()
            .map(|row| field(row, run_column))
            .take(5)
            .collect();
        let more = if rows.len() > 5 { ", ..." } else { "" };
        return Err(Error::invalid_uri(format!(
            "{accession} is not a run accession: ENA lists {} runs under it ({}{more}); fetch each with run+fastq://RUN",
            rows.len(),
            runs.join(", ")
        )));
    };
    Ok(row)
}

/// The files of a run from the `fastq_ftp`, `fastq_md5` and `fastq_bytes` lists of its row;
/// `md5s` and `sizes` must be empty or as long as `paths`.
fn run_files(
    accession: &str,
    paths: Vec<String>,
    md5s: &[String],
    sizes: &[String],
) -> Result<Vec<RunFile>> {
    let malformed = |what: &str| {
        Error::new(
            ErrorKind::InvalidData,
            format!("ENA's report for {accession} is malformed: {what}; retry later"),
        )
    };
    if !md5s.is_empty() && md5s.len() != paths.len() {
        return Err(malformed("fastq_md5 and fastq_ftp have different lengths"));
    }
    if !sizes.is_empty() && sizes.len() != paths.len() {
        return Err(malformed(
            "fastq_bytes and fastq_ftp have different lengths",
        ));
    }
    let mut files = Vec::with_capacity(paths.len());
    for (index, host_path) in paths.into_iter().enumerate() {
        let name = host_path.rsplit('/').next().unwrap_or_default().to_owned();
        if !host_path.contains('/') || name.is_empty() || name == "." || name == ".." {
            return Err(malformed(&format!("`{host_path}` is not a HOST/path")));
        }
        let md5 = match md5s.get(index) {
            Some(text) => {
                Some(parse_md5(text).ok_or_else(|| malformed(&format!("`{text}` is not an md5")))?)
            }
            None => None,
        };
        let size = match sizes.get(index) {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| malformed(&format!("`{text}` is not a size")))?,
            ),
            None => None,
        };
        files.push(RunFile {
            host_path,
            name,
            md5,
            size,
        });
    }
    Ok(files)
}

fn parse_md5(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut md5 = [0; 16];
    for (index, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    debug_assert_eq!(hex(&md5), text.to_ascii_lowercase());
    Some(md5)
}

/// Whether a FASTQ file name is read 1: `NAME_1.fastq[.gz]`.
fn is_read1(name: &str) -> bool {
    name.split('.')
        .next()
        .is_some_and(|stem| stem.ends_with("_1"))
}

/// The `_1` files, or the single file of a run that has one.
fn keep_read1(files: Vec<RunFile>) -> Vec<RunFile> {
    if files.len() <= 1 {
        return files;
    }
    let read1: Vec<RunFile> = files
        .iter()
        .filter(|file| is_read1(&file.name))
        .cloned()
        .collect();
    if read1.is_empty() {
        warn!("@only-read1: no `_1` file among several: keeping them all");
        return files;
    }
    read1
}

fn keep_read1_names(names: Vec<String>) -> Vec<String> {
    if names.len() <= 1 {
        return names;
    }
    let read1: Vec<String> = names
        .iter()
        .filter(|name| is_read1(name))
        .cloned()
        .collect();
    if read1.is_empty() { names } else { read1 }
}

/// `program` if it is a path to an executable, or the first executable of that name on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(program))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "run_accession\tfastq_ftp\tfastq_md5\tfastq_bytes\n\
        ERR3857002\tftp.sra.ebi.ac.uk/vol1/fastq/ERR385/002/ERR3857002/ERR3857002_1.fastq.gz;ftp.sra.ebi.ac.uk/vol1/fastq/ERR385/002/ERR3857002/ERR3857002_2.fastq.gz\t0123456789abcdef0123456789abcdef;fedcba9876543210fedcba9876543210\t10;20\n";

    #[test]
    fn reports_are_read() {
        let files = parse_report(REPORT, "ERR3857002").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "ERR3857002_1.fastq.gz");
        assert_eq!(files[1].size, Some(20));
        assert_eq!(
            hex(&files[0].md5.unwrap()),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(keep_read1(files).len(), 1);
        let error =
            parse_report("run_accession\tfastq_ftp\tfastq_md5\tfastq_bytes\n", "ERR1").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert!(error.message().contains("ERR1"), "{error}");
        let error = parse_report(REPORT, "PRJEB1").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidUri, "{error}");
    }

    #[test]
    fn download_urls_follow_the_bases() {
        let path = "ftp.sra.ebi.ac.uk/vol1/fastq/x_1.fastq.gz";
        let mut ena = EnaConfig::default();
        assert_eq!(
            ena.download_url(SchemeOption::EnaFtp, path),
            "ftp://ftp.sra.ebi.ac.uk/vol1/fastq/x_1.fastq.gz"
        );
        assert_eq!(
            ena.download_url(SchemeOption::EnaHttps, path),
            "https://ftp.sra.ebi.ac.uk/vol1/fastq/x_1.fastq.gz"
        );
        ena.https_base = Some("http://127.0.0.1:8080/".to_owned());
        assert_eq!(
            ena.download_url(SchemeOption::EnaHttps, path),
            "http://127.0.0.1:8080/vol1/fastq/x_1.fastq.gz"
        );
    }

    #[test]
    fn accessions_and_transports_are_checked() {
        assert!(accession(&Uri::parse("run+fastq://SRR1/").unwrap()).is_err());
        assert!(accession(&Uri::parse("run+fastq://SRR1&x=1").unwrap()).is_err());
        let uri = Uri::parse("run+fastq@only-read1@ena-https@sra-tools://SRR1").unwrap();
        assert_eq!(
            transports(&uri),
            vec![SchemeOption::EnaHttps, SchemeOption::SraTools]
        );
        assert_eq!(
            transports(&Uri::parse("run+fastq://SRR1").unwrap()).len(),
            3
        );
        assert!(is_read1("SRR1_1.fastq.gz") && !is_read1("SRR1_2.fastq.gz"));
    }
}
