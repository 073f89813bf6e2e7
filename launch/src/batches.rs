//! `herd batch ...`: list batches, pause, resume, stop or delete one, wait until one is done.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use herd_proto::BatchName;
use herd_proto::request::BatchAction;
use herd_proto::view::{BatchView, WorkerView};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BatchCommand, BatchWaitArgs, JsonArgs};
use crate::client::{self, Connection};
use crate::exit::{self, Outcome};
use crate::output::{self, Table};

/// Without a terminal, `batch wait` reports progress at most this often.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Runs `herd batch ...`.
pub async fn run(server: &str, command: BatchCommand) -> anyhow::Result<Outcome> {
    let mut connection = client::connect(server).await?;
    match command {
        BatchCommand::List(args) => list(&mut connection, args).await,
        BatchCommand::Pause(args) => {
            let batch = connection
                .control_batch(&args.name, BatchAction::Pause)
                .await?;
            note!(
                "batch `{}` paused: {} pending tasks wait, {} active go on",
                batch.name,
                batch.pending,
                batch.active
            );
            Ok(Outcome::Success)
        }
        BatchCommand::Resume(args) => {
            let batch = connection
                .control_batch(&args.name, BatchAction::Resume)
                .await?;
            note!(
                "batch `{}` resumed: {} tasks pending",
                batch.name,
                batch.pending
            );
            Ok(Outcome::Success)
        }
        BatchCommand::Stop(args) => {
            let batch = connection
                .control_batch(&args.name, BatchAction::Stop)
                .await?;
            note!(
                "batch `{}` stopped: its pending and active tasks are canceled",
                batch.name
            );
            Ok(Outcome::Success)
        }
        BatchCommand::Delete(args) => {
            let batch = connection
                .control_batch(&args.name, BatchAction::Delete)
                .await?;
            note!("batch `{}` deleted ({} tasks)", batch.name, batch.total());
            Ok(Outcome::Success)
        }
        BatchCommand::Wait(args) => wait(&mut connection, args).await,
    }
}

async fn list(connection: &mut Connection, args: JsonArgs) -> anyhow::Result<Outcome> {
    let batches = connection.batches().await?;
    if args.json {
        output::print_json(&batches)?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(vec![
        "NAME",
        "PAUSED",
        "PENDING",
        "ACTIVE",
        "SUCCEEDED",
        "FAILED",
        "CANCELED",
    ]);
    for batch in &batches {
        table.push(vec![
            batch.name.clone(),
            if batch.paused { "yes" } else { "no" }.to_owned(),
            batch.pending.to_string(),
            batch.active.to_string(),
            batch.succeeded.to_string(),
            batch.failed.to_string(),
            batch.canceled.to_string(),
        ]);
    }
    table.print()?;
    Ok(Outcome::Success)
}

/// `3/10 done: 2 active, 5 pending, 1 failed`
fn progress_text(batch: &BatchView) -> String {
    let mut parts = vec![
        format!("{} active", batch.active),
        format!("{} pending", batch.pending),
    ];
    if batch.failed > 0 {
        parts.push(format!("{} failed", batch.failed));
    }
    if batch.canceled > 0 {
        parts.push(format!("{} canceled", batch.canceled));
    }
    if batch.paused {
        parts.push("paused".to_owned());
    }
    parts.join(", ")
}

fn done(batch: &BatchView) -> u64 {
    batch.succeeded + batch.failed + batch.canceled
}

/// Progress on stderr: a bar on a terminal, otherwise a line per change at most every few
/// seconds (so that a log file does not fill with redraws).
enum Progress {
    Bar(ProgressBar),
    Lines { last_printed: Option<Instant> },
}

impl Progress {
    fn new(name: &BatchName) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { last_printed: None };
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{wide_bar}] {pos}/{len} done, {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("batch {name}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    fn update(&mut self, batch: &BatchView) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(batch.total());
                bar.set_position(done(batch));
                bar.set_message(progress_text(batch));
            }
            Progress::Lines { last_printed } => {
                if last_printed.is_some_and(|at| at.elapsed() < PLAIN_PROGRESS_INTERVAL) {
                    return;
                }
                *last_printed = Some(Instant::now());
                note!(
                    "batch {}: {}/{} done, {}",
                    batch.name,
                    done(batch),
                    batch.total(),
                    progress_text(batch)
                );
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

async fn wait(connection: &mut Connection, args: BatchWaitArgs) -> anyhow::Result<Outcome> {
    let mut summaries = connection.watch_batch(&args.name).await?;
    let mut progress = Progress::new(&args.name);
    let mut hinted = false;
    let last = loop {
        let summary = match summaries.next().await {
            Some(Ok(summary)) => summary,
            Some(Err(error)) => {
                progress.finish();
                return Err(error);
            }
            None => {
                progress.finish();
                return Err(exit::Error::unreachable(format!(
                    "the herd server at {} stopped answering before batch `{}` finished; \
                     run `herd batch wait {}` again once it is back",
                    connection.server(),
                    args.name,
                    args.name
                ))
                .into());
            }
        };
        if summary.is_finished() {
            break summary;
        }
        if !hinted {
            hinted = true;
            if let Some(hint) = idle_hint(connection, &summary).await {
                progress.finish();
                note!("{hint}");
                progress = Progress::new(&args.name);
            }
        }
        progress.update(&summary);
    };
    progress.finish();

    let unsuccessful = last.failed + last.canceled;
    if args.json {
        output::print_json(&last)?;
    } else {
        output::print(&format!(
            "batch {}: {} task{}, {} succeeded, {} failed, {} canceled\n",
            last.name,
            last.total(),
            if last.total() == 1 { "" } else { "s" },
            last.succeeded,
            last.failed,
            last.canceled
        ))?;
    }
    if unsuccessful == 0 {
        return Ok(Outcome::Success);
    }
    if last.failed > 0 {
        note!(
            "`herd task list -b {} -S failed` lists the failed tasks",
            last.name
        );
    }
    Ok(Outcome::Failure)
}

/// Why the batch's pending tasks might wait forever: it is paused, or no worker serves it.
async fn idle_hint(connection: &mut Connection, batch: &BatchView) -> Option<String> {
    if batch.pending == 0 {
        return None;
    }
    if batch.paused {
        return Some(format!(
            "batch `{}` is paused: its {} pending tasks wait until `herd batch resume {}`",
            batch.name, batch.pending, batch.name
        ));
    }
    let workers: Vec<WorkerView> = connection.workers().await.ok()?;
    let served = workers
        .iter()
        .any(|worker| worker.batch == batch.name && worker.status == "connected");
    (!served).then(|| {
        format!(
            "no connected worker serves batch `{}`: its tasks wait until one does \
             (`herd worker --batch {}`)",
            batch.name, batch.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_well() {
        let batch = BatchView {
            name: "b".into(),
            paused: false,
            pending: 5,
            active: 2,
            succeeded: 2,
            failed: 1,
            canceled: 0,
            owner: None,
        };
        assert_eq!(progress_text(&batch), "2 active, 5 pending, 1 failed");
        assert_eq!(done(&batch), 3);
    }
}
