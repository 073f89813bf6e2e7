//! `herd fetch`: moving files between URI schemes from the command line, with the same
//! library (herd-fetch) the workers stage with. This module is only the command line's side:
//! it parses the URIs, draws progress bars, prints results and maps errors to exit codes; the
//! transfers themselves are [`Resolver`]'s (`copy`, `sync`, `checksums`, `list`, `delete`).
//!
//! - `copy SRC DST`: a file, or a folder (trailing `/`), in any direction; a local destination
//!   that is not a folder names the copy; resource actions (`|untar`...) apply to downloads;
//! - `list [--recursive] URI` (full URIs) and `nrlist URI` (one level, relative names);
//! - `sync SRC DST [--include GLOB]... [--exclude GLOB]...`: copies the files missing at the
//!   destination or of another size;
//! - `delete [--recursive] URI`;
//! - `checksum URI`: the CRC64NVME of each file, base64 as S3 shows it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_fetch::{FileChecksum, Filter, Resolver, TransferStats, Uri, error_chain};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::FetchCommand;
use crate::exit::{self, Outcome};
use crate::output;

/// Runs one `herd fetch` command.
pub async fn run(command: FetchCommand) -> anyhow::Result<Outcome> {
    let progress = counters();
    let resolver = Resolver::with_progress(progress.clone());
    match command {
        FetchCommand::Copy {
            source,
            destination,
        } => {
            let (source, destination) = (parse(&source)?, parse(&destination)?);
            Resolver::check_copy(&destination).map_err(usage)?;
            let bar = Bar::start(format!("copying {}", source.redacted()), &progress);
            let started = Instant::now();
            let stats = resolver.copy(&source, &destination).await;
            Bar::finish_option(bar);
            summary("copied", &stats.map_err(failed)?, started.elapsed());
        }
        FetchCommand::List {
            recursive,
            json,
            uri,
        } => list(&resolver, &parse(&uri)?, recursive, json, false).await?,
        FetchCommand::Nrlist { json, uri } => {
            list(&resolver, &parse(&uri)?, false, json, true).await?
        }
        FetchCommand::Sync {
            source,
            destination,
            include,
            exclude,
        } => {
            let source = parse(&source)?.as_dir().map_err(usage)?;
            let destination = parse(&destination)?.as_dir().map_err(usage)?;
            let filter = Filter::new(include, exclude);
            let bar = Bar::start(format!("synchronising {}", source.redacted()), &progress);
            let started = Instant::now();
            let stats = resolver.sync(&source, &destination, &filter).await;
            Bar::finish_option(bar);
            summary("synchronised", &stats.map_err(failed)?, started.elapsed());
        }
        FetchCommand::Delete { recursive, uri } => {
            let uri = parse(&uri)?;
            if uri.is_dir() && !recursive {
                note!(
                    "deleting only the files directly in {}; add --recursive for everything under it",
                    uri.redacted()
                );
            }
            resolver.delete(&uri, recursive).await.map_err(failed)?;
            note!("deleted {}", uri.redacted());
        }
        FetchCommand::Checksum { uri } => {
            let uri = parse(&uri)?;
            let bar = Bar::start(format!("reading {}", uri.redacted()), &progress);
            let checksums = resolver.checksums(&uri).await;
            Bar::finish_option(bar);
            print_checksums(&checksums.map_err(failed)?)?
        }
    }
    Ok(Outcome::Success)
}

fn parse(text: &str) -> anyhow::Result<Uri> {
    let uri = Uri::parse(text).map_err(usage)?;
    // A relative local path is taken from the current directory.
    match uri.local_path() {
        Some(path) if path.is_relative() => {
            let absolute = std::env::current_dir()
                .context("cannot read the current directory")?
                .join(path);
            let mut text = absolute.display().to_string();
            if uri.is_dir() && !text.ends_with('/') {
                text.push('/');
            }
            for action in uri.actions() {
                text.push('|');
                text.push_str(&action.to_string());
            }
            Ok(Uri::parse(&text).map_err(usage)?)
        }
        _ => Ok(uri),
    }
}

/// A herd-fetch error for the user: its message and its causes (the OS's reason...), exit 1.
fn failed(error: herd_fetch::Error) -> anyhow::Error {
    exit::Error::failed(error_chain(&error)).into()
}

/// A herd-fetch error about the command line's URIs, with its causes: exit 2.
fn usage(error: herd_fetch::Error) -> anyhow::Error {
    exit::Error::usage(error_chain(&error)).into()
}

/// A progress bar on stderr while a transfer runs, fed by the resolver's counters: bytes moved
/// of those announced, throughput, time left, files. Only when stderr is a terminal (the
/// counters are then enabled; see [`counters`]).
struct Bar {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

/// The counters the resolver fills: counting only when a bar will show them.
fn counters() -> herd_fetch::Progress {
    if std::io::stderr().is_terminal() {
        herd_fetch::Progress::new()
    } else {
        herd_fetch::Progress::disabled()
    }
}

impl Bar {
    /// How often the bar is redrawn from the counters.
    const TICK: Duration = Duration::from_millis(150);

    fn start(label: String, progress: &herd_fetch::Progress) -> Option<Bar> {
        if !progress.is_enabled() {
            return None;
        }
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .map(|style| style.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        // Until a size is known: a spinner and the bytes so far; then a bar with the time left.
        let bar = ProgressBar::no_length().with_style(style("{spinner} {msg} {bytes}"));
        let sized = style(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        );
        bar.set_message(label.clone());
        bar.enable_steady_tick(Bar::TICK);
        let (shown, counters) = (bar.clone(), progress.clone());
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Bar::TICK);
            let mut has_length = false;
            loop {
                interval.tick().await;
                let now = counters.snapshot();
                if now.bytes_expected > 0 {
                    if !has_length {
                        has_length = true;
                        shown.set_style(sized.clone());
                    }
                    shown.set_length(now.bytes_expected.max(now.bytes_done));
                }
                shown.set_position(now.bytes_done);
                if now.files_expected > 1 {
                    shown.set_message(format!(
                        "{label} · {}/{} files",
                        now.files_done, now.files_expected
                    ));
                }
            }
        });
        Some(Bar { bar, ticker })
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }

    fn finish_option(bar: Option<Bar>) {
        if let Some(bar) = bar {
            bar.finish();
        }
    }
}

fn summary(verb: &str, stats: &TransferStats, elapsed: Duration) {
    for skipped in &stats.skipped {
        note!("skipped {skipped}");
    }
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mib = stats.bytes as f64 / (1024.0 * 1024.0);
    note!(
        "{verb} {} file{}, {} in {:.2}s ({:.1} MiB/s)",
        stats.files,
        if stats.files == 1 { "" } else { "s" },
        output::bytes(stats.bytes),
        seconds,
        mib / seconds
    );
}

#[derive(Serialize)]
struct Listed {
    uri: String,
    path: String,
    size: u64,
}

async fn list(
    resolver: &Resolver,
    uri: &Uri,
    recursive: bool,
    json: bool,
    relative: bool,
) -> anyhow::Result<()> {
    let entries = resolver.list(uri, recursive).await.map_err(failed)?;
    let listed: Vec<Listed> = entries
        .iter()
        .map(|entry| Listed {
            uri: entry.uri.redacted().to_string(),
            path: entry.path.clone(),
            size: entry.size,
        })
        .collect();
    if json {
        return output::print_json(&listed);
    }
    let mut text = String::new();
    for entry in &listed {
        let name = if relative { &entry.path } else { &entry.uri };
        text.push_str(&format!("{:>12}  {name}\n", entry.size));
    }
    output::print(&text)
}

fn print_checksums(checksums: &[FileChecksum]) -> anyhow::Result<()> {
    let mut text = String::new();
    for file in checksums {
        text.push_str(&format!("{}  {}\n", file.crc64nvme.to_base64(), file.path));
    }
    output::print(&text)
}
