//! The run+fastq backend against local servers: ENA's filereport served by the test HTTP server,
//! the FASTQ files by a test FTP server (`@ena-ftp`) and the HTTP server (`@ena-https`). The
//! report's `ftp.sra.ebi.ac.uk/...` paths are sent to them through [`EnaConfig`]'s bases.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use herd_fetch::{
    EnaConfig, ErrorKind, FastqBackend, FtpBackend, HttpBackend, Resolver, Scheme, crc64nvme,
    crc64nvme_file,
};

use support::ftp_server::FtpServer;
use support::http_server::{ENA_HEADER, HttpServer, Route};
use support::{FAST_RETRY, content, md5_hex, resolver_with, tree, uri, write};

const RUN: &str = "ERR3857002";
const DIRECTORY: &str = "vol1/fastq/ERR385/002/ERR3857002";

struct Ena {
    http: HttpServer,
    ftp: FtpServer,
    read1: Vec<u8>,
    read2: Vec<u8>,
}

impl Ena {
    /// A run with two files, served identically over ftp and http, and a report with their
    /// sizes and MD5s.
    async fn start() -> Ena {
        let ftp = FtpServer::start();
        let http = HttpServer::start().await;
        let read1 = content(300_000, 21);
        let read2 = content(250_000, 22);
        for (name, body) in [("_1", &read1), ("_2", &read2)] {
            let path = format!("{DIRECTORY}/{RUN}{name}.fastq.gz");
            write(&ftp.root.join(&path), body);
            http.route(&format!("/{path}"), Route::File(body.clone()));
        }
        let report = format!(
            "{ENA_HEADER}\n{RUN}\tftp.sra.ebi.ac.uk/{DIRECTORY}/{RUN}_1.fastq.gz;ftp.sra.ebi.ac.uk/{DIRECTORY}/{RUN}_2.fastq.gz\t{};{}\t{};{}\n",
            md5_hex(&read1),
            md5_hex(&read2),
            read1.len(),
            read2.len()
        );
        let mut reports = BTreeMap::new();
        reports.insert(RUN.to_owned(), report);
        http.route("/ena/portal/api/filereport", Route::EnaReports(reports));
        Ena {
            http,
            ftp,
            read1,
            read2,
        }
    }

    fn config(&self) -> EnaConfig {
        EnaConfig {
            endpoint: self.http.url("/ena"),
            ftp_base: Some(self.ftp.anonymous_url("")),
            https_base: Some(self.http.url("/")),
        }
    }

    fn resolver(&self, fasterq_dump: &str) -> Resolver {
        let backend = FastqBackend::new(self.config())
            .with_transfers(
                HttpBackend::with_retry(FAST_RETRY),
                FtpBackend::with_retry(FAST_RETRY),
            )
            .with_fasterq_dump(fasterq_dump);
        resolver_with(Scheme::RunFastq, backend)
    }

    /// The GETs of FASTQ files the HTTP server saw (not the report).
    fn https_downloads(&self) -> usize {
        self.http
            .log()
            .iter()
            .filter(|logged| logged.target.ends_with(".fastq.gz"))
            .count()
    }
}

const NO_FASTERQ_DUMP: &str = "/nonexistent/herd-test/fasterq-dump";

#[tokio::test]
async fn a_run_is_downloaded_over_ena_ftp_with_md5_checks() {
    let ena = Ena::start().await;
    let temp = tempfile::tempdir().unwrap();
    let fetched = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(&uri(&format!("run+fastq://{RUN}")), temp.path())
        .await
        .unwrap();
    let names = [format!("{RUN}_1.fastq.gz"), format!("{RUN}_2.fastq.gz")];
    assert_eq!(fetched.items, names);
    assert_eq!(fs::read(temp.path().join(&names[0])).unwrap(), ena.read1);
    assert_eq!(fs::read(temp.path().join(&names[1])).unwrap(), ena.read2);
    let sums: Vec<(u64, String)> = fetched
        .stats
        .checksums
        .iter()
        .map(|file| (file.size, file.crc64nvme.to_base64()))
        .collect();
    assert_eq!(
        sums,
        vec![
            (300_000, crc64nvme(&ena.read1).to_base64()),
            (250_000, crc64nvme(&ena.read2).to_base64())
        ]
    );
    assert_eq!(
        sums[0].1,
        crc64nvme_file(temp.path().join(&names[0])).unwrap()
    );
    assert_eq!(ena.https_downloads(), 0, "ena-ftp comes first and worked");
    let report = &ena.http.requests_to("/ena/portal/api/filereport")[0].target;
    assert!(
        report.ends_with(&format!(
            "?accession={RUN}&result=read_run&fields=run_accession,fastq_ftp,fastq_md5,fastq_bytes&format=tsv"
        )),
        "{report}"
    );
    assert_eq!(tree(temp.path()), names.to_vec());
}

#[tokio::test]
async fn only_read1_and_ena_https() {
    let ena = Ena::start().await;
    let temp = tempfile::tempdir().unwrap();
    let fetched = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(
            &uri(&format!("run+fastq@ena-https@only-read1://{RUN}")),
            temp.path(),
        )
        .await
        .unwrap();
    assert_eq!(fetched.items, vec![format!("{RUN}_1.fastq.gz")]);
    assert_eq!(
        fs::read(temp.path().join(&fetched.items[0])).unwrap(),
        ena.read1
    );
    assert_eq!(ena.https_downloads(), 1);
    assert!(!ena.ftp.log().contains("RETR"), "ena-ftp was not asked for");

    let entries = ena
        .resolver(NO_FASTERQ_DUMP)
        .list(&uri(&format!("run+fastq@only-read1://{RUN}")), false)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].path.as_str(), entries[0].size),
        ("ERR3857002_1.fastq.gz", 300_000)
    );
    assert_eq!(
        entries[0].uri,
        uri(&ena
            .ftp
            .anonymous_url(&format!("{DIRECTORY}/{RUN}_1.fastq.gz")))
    );
}

#[tokio::test]
async fn a_wrong_md5_on_ena_ftp_falls_back_to_ena_https() {
    let ena = Ena::start().await;
    // Same size, different bytes: only the MD5 can tell.
    let mut corrupt = ena.read2.clone();
    corrupt[1000] ^= 0xff;
    write(
        &ena.ftp.root.join(format!("{DIRECTORY}/{RUN}_2.fastq.gz")),
        &corrupt,
    );
    let temp = tempfile::tempdir().unwrap();
    let fetched = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(&uri(&format!("run+fastq://{RUN}")), temp.path())
        .await
        .unwrap();
    assert_eq!(fetched.stats.files, 2);
    assert_eq!(
        fs::read(temp.path().join(format!("{RUN}_2.fastq.gz"))).unwrap(),
        ena.read2
    );
    assert_eq!(fetched.stats.checksums[1].crc64nvme, crc64nvme(&ena.read2));
    assert!(ena.ftp.log().contains("RETR"), "ena-ftp was tried first");
    assert_eq!(ena.https_downloads(), 2, "then both files over https");
    assert_eq!(tree(temp.path()).len(), 2, "nothing left of the failed try");

    // With only ena-ftp: a checksum error, and no file at all.
    let error = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(
            &uri(&format!("run+fastq@ena-ftp://{RUN}")),
            &temp.path().join("ftp-only"),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Checksum, "{}", error.report());
    assert!(error.to_string().contains("has md5"), "{error}");
    assert_eq!(tree(&temp.path().join("ftp-only")), Vec::<String>::new());
}

#[tokio::test]
async fn every_transport_failing_is_one_error_naming_each() {
    let ena = Ena::start().await;
    let mut corrupt = ena.read1.clone();
    corrupt[0] ^= 1;
    write(
        &ena.ftp.root.join(format!("{DIRECTORY}/{RUN}_1.fastq.gz")),
        &corrupt,
    );
    ena.http.route(
        &format!("/{DIRECTORY}/{RUN}_1.fastq.gz"),
        Route::File(corrupt),
    );
    let temp = tempfile::tempdir().unwrap();
    let error = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(&uri(&format!("run+fastq://{RUN}")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Checksum, "{}", error.report());
    let message = error.to_string();
    for part in [
        "cannot fetch run ERR3857002: @ena-ftp: ",
        "; @ena-https: ",
        "; @sra-tools needs `/nonexistent/herd-test/fasterq-dump`",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn an_unknown_accession_is_not_found() {
    let ena = Ena::start().await;
    let temp = tempfile::tempdir().unwrap();
    for text in [
        "run+fastq://SRR000000001",
        "run+fastq@ena-https://SRR000000001",
    ] {
        let error = ena
            .resolver(NO_FASTERQ_DUMP)
            .fetch(&uri(text), temp.path())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{}", error.report());
        assert!(
            error.to_string().contains("ENA knows no run SRR000000001"),
            "{error}"
        );
    }
    let error = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(&uri("run+fastq://SRR1/x"), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidUri);
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn sra_tools_without_fasterq_dump_says_to_install_it() {
    let ena = Ena::start().await;
    let temp = tempfile::tempdir().unwrap();
    let error = ena
        .resolver(NO_FASTERQ_DUMP)
        .fetch(&uri(&format!("run+fastq@sra-tools://{RUN}")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{}", error.report());
    assert!(error.to_string().contains("install sra-tools"), "{error}");
    assert!(
        ena.http.log().is_empty(),
        "sra-tools alone does not ask ENA"
    );

    // The default program name is looked up on PATH.
    let error = ena
        .resolver("herd-test-no-such-fasterq-dump")
        .fetch(&uri(&format!("run+fastq@sra-tools://{RUN}")), temp.path())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(
        error.to_string().contains("on the worker's PATH"),
        "{error}"
    );
    assert_eq!(tree(temp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn sra_tools_output_is_gzipped_under_ena_names() {
    let ena = Ena::start().await;
    let tools = tempfile::tempdir().unwrap();
    let program = tools.path().join("fasterq-dump");
    // A stand-in for fasterq-dump: writes ACC_1.fastq and ACC_2.fastq into --outdir.
    fs::write(
        &program,
        "#!/bin/sh\nset -e\nwhile [ $# -gt 1 ]; do\n  case $1 in --outdir) out=$2; shift;; esac\n  shift\ndone\n\
         printf '@r1\\nACGT\\n+\\nIIII\\n' > \"$out/${1}_1.fastq\"\nprintf '@r2\\nTTTT\\n+\\nIIII\\n' > \"$out/${1}_2.fastq\"\n",
    )
    .unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let fetched = ena
        .resolver(program.to_str().unwrap())
        .fetch(
            &uri("run+fastq@sra-tools@only-read1://SRR000001"),
            temp.path(),
        )
        .await
        .unwrap();
    assert_eq!(fetched.items, vec!["SRR000001_1.fastq.gz"]);
    let gzipped = fs::read(temp.path().join("SRR000001_1.fastq.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gzipped[..]), &mut text)
        .unwrap();
    assert_eq!(text, "@r1\nACGT\n+\nIIII\n");
    assert_eq!(fetched.stats.checksums[0].crc64nvme, crc64nvme(&gzipped));
    assert_eq!(
        tree(temp.path()),
        vec!["SRR000001_1.fastq.gz"],
        "no work directory left"
    );
}
