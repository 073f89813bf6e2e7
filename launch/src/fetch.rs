//! `herd fetch`: moving files between URI schemes from the command line, with the same
//! library (herd-fetch) the workers stage with.
//!
//! - `copy SRC DST`: a file, or a folder (trailing `/`), in any direction; a local destination
//!   that is not a folder names the copy; resource actions (`|untar`...) apply to downloads;
//! - `list [--recursive] URI` (full URIs) and `nrlist URI` (one level, relative names);
//! - `sync SRC DST [--include GLOB]... [--exclude GLOB]...`: copies the files missing at the
//!   destination or of another size;
//! - `delete [--recursive] URI`;
//! - `checksum URI`: the CRC64NVME of each file, base64 as S3 shows it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_fetch::{Resolver, TransferStats, Uri};
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
            let bar = Bar::start(format!("copying {}", source.redacted()), &progress);
            let started = Instant::now();
            let stats = copy(&resolver, &source, &destination).await;
            Bar::finish_option(bar);
            let stats = stats?;
            summary("copied", &stats, started.elapsed());
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
            let (source, destination) = (parse(&source)?, parse(&destination)?);
            let bar = Bar::start(format!("synchronising {}", source.redacted()), &progress);
            let started = Instant::now();
            let stats = sync(&resolver, &source, &destination, &include, &exclude).await;
            Bar::finish_option(bar);
            summary("synchronised", &stats?, started.elapsed());
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
            let result = checksum(&resolver, &uri).await;
            Bar::finish_option(bar);
            result?
        }
    }
    Ok(Outcome::Success)
}

fn parse(text: &str) -> anyhow::Result<Uri> {
    let uri = Uri::parse(text).map_err(|error| exit::Error::usage(error.to_string()))?;
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
            Ok(Uri::parse(&text).map_err(|error| exit::Error::usage(error.to_string()))?)
        }
        _ => Ok(uri),
    }
}

fn failed(error: herd_fetch::Error) -> anyhow::Error {
    exit::Error::failed(error.to_string()).into()
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

/// Copies `source` to `destination`, whatever their schemes.
pub async fn copy(
    resolver: &Resolver,
    source: &Uri,
    destination: &Uri,
) -> anyhow::Result<TransferStats> {
    if !destination.actions().is_empty() {
        return Err(exit::Error::usage(
            "actions (`|untar`...) apply to what is downloaded: put them on the source",
        )
        .into());
    }
    if let Some(target) = destination.local_path() {
        return download(resolver, source, target, destination.is_dir()).await;
    }
    match source.local_path() {
        Some(path) if source.actions().is_empty() => {
            resolver.put(path, destination).await.map_err(failed)
        }
        _ => {
            // Remote to remote, or actions to apply first: through a local staging folder.
            let staging = tempfile::tempdir().context("cannot create a staging folder")?;
            let fetched = resolver
                .fetch(source, staging.path())
                .await
                .map_err(failed)?;
            let upload_from = match fetched.items.as_slice() {
                [single] if !source.is_dir() && source.actions().is_empty() => {
                    staging.path().join(single)
                }
                _ => staging.path().to_path_buf(),
            };
            resolver
                .put(&upload_from, destination)
                .await
                .map_err(failed)
        }
    }
}

/// Downloads into a folder, or to a file name (through a staging folder next to it, then a
/// rename, so no partial file ever shows under that name).
async fn download(
    resolver: &Resolver,
    source: &Uri,
    target: &Path,
    target_is_dir: bool,
) -> anyhow::Result<TransferStats> {
    if target_is_dir || target.is_dir() || source.is_dir() {
        return Ok(resolver.fetch(source, target).await.map_err(failed)?.stats);
    }
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".herd-fetch-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
    let fetched = resolver
        .fetch(source, staging.path())
        .await
        .map_err(failed)?;
    match fetched.items.as_slice() {
        [single] => {
            std::fs::rename(staging.path().join(single), target)
                .with_context(|| format!("cannot move the download to {}", target.display()))?;
            Ok(fetched.stats)
        }
        items => Err(exit::Error::failed(format!(
            "{} gave {} items, which cannot all be named {}; end the destination with / to copy into a folder",
            source.redacted(),
            items.len(),
            target.display()
        ))
        .into()),
    }
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

/// Whether `name` matches the shell-style `pattern` (`*`, `?`; `*` does not cross `/`).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name)
                || (!name.is_empty() && name[0] != b'/' && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(&character)) => {
            character != b'/' && glob_match(&pattern[1..], &name[1..])
        }
        (Some(expected), Some(character)) => {
            expected == character && glob_match(&pattern[1..], &name[1..])
        }
        _ => false,
    }
}

/// A pattern without `/` matches the file name anywhere; one with `/` matches the relative path.
fn selected(path: &str, include: &[String], exclude: &[String]) -> bool {
    let matches = |pattern: &String| {
        let target = if pattern.contains('/') {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        glob_match(pattern.as_bytes(), target.as_bytes())
    };
    (include.is_empty() || include.iter().any(matches)) && !exclude.iter().any(matches)
}

async fn sync(
    resolver: &Resolver,
    source: &Uri,
    destination: &Uri,
    include: &[String],
    exclude: &[String],
) -> anyhow::Result<TransferStats> {
    let as_dir =
        |uri: &Uri| -> anyhow::Result<Uri> {
            if uri.is_dir() {
                return Ok(uri.clone());
            }
            Ok(Uri::parse(&format!("{uri}/"))
                .map_err(|error| exit::Error::usage(error.to_string()))?)
        };
    let (source, destination) = (as_dir(source)?, as_dir(destination)?);
    let wanted = resolver.list(&source, true).await.map_err(failed)?;
    let present = match resolver.list(&destination, true).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == herd_fetch::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(failed(error)),
    };
    let existing: std::collections::HashMap<&str, u64> = present
        .iter()
        .map(|entry| (entry.path.as_str(), entry.size))
        .collect();
    let mut total = TransferStats::default();
    for entry in wanted {
        if entry.is_dir() || !selected(&entry.path, include, exclude) {
            continue;
        }
        if existing.get(entry.path.as_str()) == Some(&entry.size) {
            continue;
        }
        let target = destination.join(&entry.path).map_err(failed)?;
        let stats = copy(resolver, &entry.uri, &target).await?;
        for file in stats.checksums {
            total.add(file);
        }
    }
    Ok(total)
}

async fn checksum(resolver: &Resolver, uri: &Uri) -> anyhow::Result<()> {
    let mut text = String::new();
    match uri.local_path() {
        Some(path) if !uri.is_dir() && uri.actions().is_empty() => {
            let value = herd_fetch::crc64nvme_file(path).map_err(failed)?;
            text.push_str(&format!("{value}  {}\n", path.display()));
        }
        _ => {
            let staging = tempfile::tempdir().context("cannot create a staging folder")?;
            let fetched = resolver.fetch(uri, staging.path()).await.map_err(failed)?;
            for file in &fetched.stats.checksums {
                text.push_str(&format!("{}  {}\n", file.crc64nvme.to_base64(), file.path));
            }
        }
    }
    output::print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_the_shell() {
        assert!(glob_match(b"*.fq.gz", b"s1.fq.gz"));
        assert!(!glob_match(b"*.fq.gz", b"s1.fq"));
        assert!(glob_match(b"s?.txt", b"s1.txt"));
        assert!(!glob_match(b"*", b"a/b"));
        assert!(selected("dir/s1.fq.gz", &["*.fq.gz".into()], &[]));
        assert!(!selected("dir/s1.fq.gz", &[], &["*.gz".into()]));
        assert!(selected("dir/s1.fq.gz", &["dir/*".into()], &[]));
        assert!(!selected("other/s1.fq.gz", &["dir/*".into()], &[]));
    }

    #[tokio::test]
    async fn copies_to_a_file_name_and_into_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "123456789").unwrap();
        let resolver = Resolver::default();
        let source = Uri::parse(&dir.path().join("a.txt").display().to_string()).unwrap();
        let renamed = Uri::parse(&dir.path().join("out/b.txt").display().to_string()).unwrap();
        let stats = copy(&resolver, &source, &renamed).await.unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/b.txt")).unwrap(),
            "123456789"
        );
        let folder = Uri::parse(&format!("{}/", dir.path().join("folder").display())).unwrap();
        copy(&resolver, &source, &folder).await.unwrap();
        assert!(dir.path().join("folder/a.txt").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no staging folder is left behind");
    }
}
