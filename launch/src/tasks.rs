//! `herd task ...`: list, show, kill, retry, delete tasks and print their output.

use std::io::Write;

use anyhow::Context;
use herd_proto::Timestamp;
use herd_proto::request::{LogRequest, TaskFilter};
use herd_proto::session::LogStream;
use herd_proto::view::{AttemptView, TaskView};

use crate::cli::{TaskCommand, TaskListArgs, TaskLogsArgs, TaskShowArgs};
use crate::client::{self, Connection};
use crate::exit::Outcome;
use crate::launch::describe_spec;
use crate::output::{self, Table};

/// The widest the COMMAND column of `herd task list` gets.
const COMMAND_COLUMN: usize = 60;

/// Runs `herd task ...`.
pub async fn run(server: &str, command: TaskCommand) -> anyhow::Result<Outcome> {
    let mut connection = client::connect(server).await?;
    match command {
        TaskCommand::List(args) => list(&mut connection, args).await,
        TaskCommand::Show(args) => show(&mut connection, args).await,
        TaskCommand::Kill(args) => {
            let task = connection.kill(args.id).await?;
            note!("task {}: {}", task.id, state_line(&task));
            Ok(Outcome::Success)
        }
        TaskCommand::Retry(args) => {
            let task = connection.retry(args.id).await?;
            note!("task {} queued again as attempt {}", task.id, task.attempt);
            Ok(Outcome::Success)
        }
        TaskCommand::Delete(args) => {
            connection.delete_task(args.id).await?;
            note!("task {} deleted", args.id);
            Ok(Outcome::Success)
        }
        TaskCommand::Logs(args) => logs(&mut connection, args).await,
    }
}

async fn list(connection: &mut Connection, args: TaskListArgs) -> anyhow::Result<Outcome> {
    let filter = TaskFilter {
        batch: args.batch,
        state: args.state,
        limit: Some(args.limit).filter(|limit| *limit > 0),
    };
    let tasks = connection.tasks(&filter).await?;
    if args.json {
        output::print_json(&tasks)?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(vec![
        "ID", "NAME", "BATCH", "STATE", "ATTEMPT", "EXIT", "COMMAND",
    ]);
    for task in &tasks {
        table.push(vec![
            task.id.to_string(),
            task.name.clone().unwrap_or_else(|| "-".to_owned()),
            task.batch.to_string(),
            task.state.to_string(),
            task.attempt.to_string(),
            task.exit_code
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
            output::truncate(&output::command_line(&task.command), COMMAND_COLUMN),
        ]);
    }
    table.print()?;
    Ok(Outcome::Success)
}

async fn show(connection: &mut Connection, args: TaskShowArgs) -> anyhow::Result<Outcome> {
    let task = connection.task(args.id).await?;
    if args.json {
        output::print_json(&task)?;
    } else {
        output::print(&describe_task(&task, Timestamp::now()))?;
    }
    Ok(Outcome::Success)
}

/// `succeeded`, `failed (exit_code, exit code 3): message`...
fn state_line(task: &TaskView) -> String {
    let mut line = task.state.to_string();
    let mut details = Vec::new();
    if let Some(reason) = task.reason {
        details.push(reason.to_string());
    }
    if let Some(code) = task.exit_code {
        details.push(format!("exit code {code}"));
    }
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    if let Some(message) = &task.message {
        line.push_str(&format!(": {message}"));
    }
    line
}

/// The readable form of `herd task show`: the task, then each attempt with its phases.
pub fn describe_task(task: &TaskView, now: Timestamp) -> String {
    let mut text = format!("task {}\n", task.id);
    text.push_str(&format!("  {:<17} {}\n", "state:", state_line(task)));
    text.push_str(&describe_spec(&task.spec, "  "));
    if let Some(owner) = &task.owner {
        text.push_str(&format!("  {:<17} {owner}\n", "owner:"));
    }
    text.push_str(&format!("  {:<17} {}\n", "created:", task.created_at));
    text.push_str(&format!("  {:<17} {}\n", "updated:", task.updated_at));
    if task.attempts.is_empty() {
        text.push_str("attempts: none yet\n");
        return text;
    }
    text.push_str("attempts:\n");
    for attempt in &task.attempts {
        text.push_str(&describe_attempt(attempt, now));
    }
    text
}

fn describe_attempt(attempt: &AttemptView, now: Timestamp) -> String {
    let mut text = format!(
        "  #{} on worker {} ({}): {}",
        attempt.number, attempt.worker, attempt.worker_name, attempt.state
    );
    let mut details = Vec::new();
    if let Some(reason) = attempt.reason {
        details.push(reason.to_string());
    }
    if let Some(code) = attempt.exit_code {
        details.push(format!("exit code {code}"));
    }
    if !details.is_empty() {
        text.push_str(&format!(" ({})", details.join(", ")));
    }
    text.push('\n');
    if let Some(message) = &attempt.message {
        text.push_str(&format!("      message:  {message}\n"));
    }
    text.push_str(&format!("      started:  {}\n", attempt.started_at));
    if let Some(ended) = attempt.ended_at {
        text.push_str(&format!("      ended:    {ended}\n"));
    }
    let phases = phases(attempt, now);
    if !phases.is_empty() {
        text.push_str(&format!("      phases:   {}\n", phases.join(", ")));
    }
    for transfer in &attempt.transfers {
        text.push_str(&format!(
            "      {:<9} {} ({} in {} file{})\n",
            format!("{}:", transfer.direction),
            transfer.uri,
            output::bytes(transfer.bytes),
            transfer.files,
            if transfer.files == 1 { "" } else { "s" }
        ));
        const SHOWN: usize = 20;
        for item in transfer.items.iter().take(SHOWN) {
            text.push_str(&format!(
                "                {}  {:>10}  {}\n",
                item.crc64nvme,
                output::bytes(item.size),
                item.path
            ));
        }
        if transfer.items.len() > SHOWN {
            text.push_str(&format!(
                "                ... and {} more (--json lists them all)\n",
                transfer.items.len() - SHOWN
            ));
        }
    }
    text
}

/// Per-phase durations of an attempt: `wait 0.2s, download 3.1s, run 4m 05s, upload 1.0s`.
/// A phase still going on is measured up to `now` and marked `so far`.
fn phases(attempt: &AttemptView, now: Timestamp) -> Vec<String> {
    let marks = [
        ("wait", Some(attempt.started_at)),
        ("download", attempt.download_started_at),
        ("run", attempt.run_started_at),
        ("upload", attempt.upload_started_at),
    ];
    let mut phases = Vec::new();
    for (index, (label, start)) in marks.iter().enumerate() {
        let Some(start) = start else { continue };
        let next_start = marks[index + 1..].iter().find_map(|(_, later)| *later);
        let (end, ongoing) = match (next_start, attempt.ended_at) {
            (Some(next), _) => (next, false),
            (None, Some(ended)) => (ended, false),
            (None, None) => (now, true),
        };
        let mut phase = format!("{label} {}", output::duration(end.since(*start)));
        if ongoing {
            phase.push_str(" so far");
        }
        phases.push(phase);
    }
    phases
}

async fn logs(connection: &mut Connection, args: TaskLogsArgs) -> anyhow::Result<Outcome> {
    let request = LogRequest {
        task_id: args.id,
        attempt: args.attempt.filter(|attempt| *attempt > 0),
        stream: if args.stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        follow: args.follow,
    };
    let mut chunks = connection.logs(&request).await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        // Raw bytes, flushed at once: a follower sees the output as the command writes it.
        stdout
            .write_all(&chunk.data)
            .context("cannot write the log on stdout")?;
        stdout.flush().context("cannot write the log on stdout")?;
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use herd_proto::view::Transfer;
    use herd_proto::{Reason, TaskId, TaskRequest, TaskSpec, TaskState, WorkerId};

    use super::*;

    fn attempt() -> AttemptView {
        AttemptView {
            number: 1,
            worker: WorkerId(3),
            worker_name: "node-1".into(),
            state: TaskState::Failed,
            exit_code: Some(3),
            reason: Some(Reason::ExitCode),
            message: None,
            started_at: Timestamp(1_000),
            download_started_at: Some(Timestamp(1_200)),
            run_started_at: Some(Timestamp(4_300)),
            upload_started_at: None,
            ended_at: Some(Timestamp(9_300)),
            transfers: vec![Transfer {
                direction: "input".into(),
                uri: "s3://b/k".into(),
                bytes: 2048,
                files: 1,
                items: vec![herd_proto::view::TransferredFile {
                    path: "k".into(),
                    size: 2048,
                    crc64nvme: "rosUhgp5mIg=".into(),
                }],
            }],
        }
    }

    #[test]
    fn phases_are_measured_between_marks() {
        assert_eq!(
            phases(&attempt(), Timestamp(0)),
            ["wait 200ms", "download 3.1s", "run 5.0s"]
        );
        let mut running = attempt();
        running.ended_at = None;
        assert_eq!(phases(&running, Timestamp(10_300))[2], "run 6.0s so far");
    }

    #[test]
    fn a_task_reads_as_a_block() {
        let spec = TaskSpec::new(TaskRequest {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            ..TaskRequest::default()
        })
        .unwrap();
        let task = TaskView {
            id: TaskId(7),
            name: None,
            batch: spec.batch().clone(),
            command: spec.command().to_vec(),
            state: TaskState::Failed,
            attempt: 1,
            exit_code: Some(3),
            reason: Some(Reason::ExitCode),
            message: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(9_300),
            attempts: vec![attempt()],
            spec,
            owner: Some("alice".to_owned()),
        };
        let text = describe_task(&task, Timestamp(10_000));
        assert!(text.contains("failed (exit_code, exit code 3)"), "{text}");
        assert!(text.contains("command:          sh -c 'exit 3'"), "{text}");
        assert!(text.contains("#1 on worker 3 (node-1): failed"), "{text}");
        assert!(text.contains("owner:            alice"), "{text}");
        assert!(
            text.contains("input:    s3://b/k (2.0 KiB in 1 file)"),
            "{text}"
        );
        assert!(
            text.contains("rosUhgp5mIg="),
            "each file's checksum is shown: {text}"
        );
    }
}
