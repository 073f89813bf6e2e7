//! `herd task ...`: list, show, kill, retry, delete tasks and print their output.

use std::io::Write;

use anyhow::Context;
use herd_proto::view::{AttemptView, TaskView};
use herd_proto::{Timestamp, pb};
use tokio_stream::StreamExt;

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
            let reply = connection
                .queue
                .kill_task(pb::TaskRef { id: args.id.0 })
                .await;
            let task = task_view(
                reply
                    .map_err(|status| connection.error(status))?
                    .into_inner(),
            )?;
            note!("task {}: {}", task.id, state_line(&task));
            Ok(Outcome::Success)
        }
        TaskCommand::Retry(args) => {
            let reply = connection
                .queue
                .retry_task(pb::TaskRef { id: args.id.0 })
                .await;
            let task = task_view(
                reply
                    .map_err(|status| connection.error(status))?
                    .into_inner(),
            )?;
            note!("task {} queued again as attempt {}", task.id, task.attempt);
            Ok(Outcome::Success)
        }
        TaskCommand::Delete(args) => {
            let reply = connection
                .queue
                .delete_task(pb::TaskRef { id: args.id.0 })
                .await;
            reply.map_err(|status| connection.error(status))?;
            note!("task {} deleted", args.id);
            Ok(Outcome::Success)
        }
        TaskCommand::Logs(args) => logs(&mut connection, args).await,
    }
}

/// Converts a task from the server into its view; a malformed one is the server's fault.
pub fn task_view(task: pb::Task) -> anyhow::Result<TaskView> {
    let id = task.id;
    TaskView::try_from(task).with_context(|| format!("the server sent an unreadable task {id}"))
}

/// Fetches one task.
pub async fn get(connection: &mut Connection, id: u64) -> anyhow::Result<TaskView> {
    let reply = connection.queue.get_task(pb::TaskRef { id }).await;
    task_view(
        reply
            .map_err(|status| connection.error(status))?
            .into_inner(),
    )
}

async fn list(connection: &mut Connection, args: TaskListArgs) -> anyhow::Result<Outcome> {
    let request = pb::ListTasksRequest {
        batch: args.batch.map(|batch| batch.to_string()),
        state: args.state.map(|state| pb::TaskState::from(state).into()),
        limit: args.limit,
    };
    let reply = connection.queue.list_tasks(request).await;
    let tasks = reply
        .map_err(|status| connection.error(status))?
        .into_inner()
        .tasks
        .into_iter()
        .map(task_view)
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    let task = get(connection, args.id.0).await?;
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
    let request = pb::TaskLogsRequest {
        id: args.id.0,
        attempt: args.attempt.unwrap_or(0),
        follow: args.follow,
        stderr: args.stderr,
    };
    let reply = connection.queue.task_logs(request).await;
    let mut chunks = reply
        .map_err(|status| connection.error(status))?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|status| connection.error(status))?;
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
    use herd_proto::{BatchName, Reason, TaskId, TaskSpec, TaskState, WorkerId};

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
        let spec = TaskSpec::new(
            BatchName::default_batch(),
            vec!["sh".into(), "-c".into(), "exit 3".into()],
        );
        let task = TaskView {
            id: TaskId(7),
            name: None,
            batch: spec.batch.clone(),
            command: spec.command.clone(),
            state: TaskState::Failed,
            attempt: 1,
            exit_code: Some(3),
            reason: Some(Reason::ExitCode),
            message: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(9_300),
            attempts: vec![attempt()],
            spec,
        };
        let text = describe_task(&task, Timestamp(10_000));
        assert!(text.contains("failed (exit_code, exit code 3)"), "{text}");
        assert!(text.contains("command:          sh -c 'exit 3'"), "{text}");
        assert!(text.contains("#1 on worker 3 (node-1): failed"), "{text}");
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
