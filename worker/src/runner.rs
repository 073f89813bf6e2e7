//! One attempt, from assignment to final report.
//!
//! ```text
//! assigned → wait to start → [downloading: stage /input and /resource] → wait for a run slot
//!          → running → [uploading: /output to its URI] → succeeded | failed | canceled
//! ```
//! An attempt starts (its folders, its staging) once fewer than `concurrency + prefetch` are
//! under way: the ones the server pipelines beyond that wait untouched. Phases without work
//! (no inputs, no output URI) are skipped. Every log chunk reaches the
//! server before the final report, so `herd task logs` after the end shows everything.

use std::sync::Arc;
use std::time::Duration;

use herd_proto::{Reason, TaskId, TaskReport, TaskSpec, TaskState};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::executor::{Exit, Job, LogSink, TaskDirs};
use crate::session::Shared;
use crate::staging;

/// Runs one attempt; always ends with a final report (unless the server forgot the attempt).
pub(crate) async fn run(
    shared: Arc<Shared>,
    task_id: TaskId,
    attempt: u32,
    spec: Arc<TaskSpec>,
    cancel: CancellationToken,
) {
    let dirs = shared.folders.dirs(task_id, attempt);
    let report = match attempt_phases(&shared, task_id, attempt, &spec, &dirs, &cancel).await {
        Ok(report) => report,
        Err(report) => *report,
    };
    let succeeded = report.state == TaskState::Succeeded;
    debug!(%task_id, attempt, state = %report.state, "attempt ended");
    shared.report(report).await;
    shared.finished(task_id, attempt);
    shared.janitor.release(dirs, succeeded);
}

fn final_report(
    task_id: TaskId,
    attempt: u32,
    state: TaskState,
    reason: Option<Reason>,
    message: Option<String>,
) -> TaskReport {
    let mut report = TaskReport::new(task_id, attempt, state);
    report.reason = reason;
    report.message = message;
    report
}

type Phase<T> = Result<T, Box<TaskReport>>;

async fn attempt_phases(
    shared: &Arc<Shared>,
    task_id: TaskId,
    attempt: u32,
    spec: &Arc<TaskSpec>,
    dirs: &TaskDirs,
    cancel: &CancellationToken,
) -> Phase<TaskReport> {
    let fail = |state: TaskState, reason: Reason, message: String| {
        Box::new(final_report(
            task_id,
            attempt,
            state,
            Some(reason),
            Some(message),
        ))
    };
    let canceled = || {
        fail(
            TaskState::Canceled,
            Reason::Killed,
            "canceled by the server".to_owned(),
        )
    };
    // Wait to start (pipelined attempts wait here, untouched).
    let started = tokio::select! {
        _ = cancel.cancelled() => return Err(canceled()),
        permit = shared.started.acquire() => match permit {
            Ok(permit) => permit,
            Err(_) => return Err(canceled()),
        },
    };
    // A spare folder is renamed into place right here; making new ones takes the blocking
    // pool.
    if !shared.folders.reuse_spare(dirs) {
        let preparing = (shared.clone(), dirs.clone());
        let created = tokio::task::spawn_blocking(move || preparing.0.folders.create(&preparing.1))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)));
        created.map_err(|error| {
            fail(
                TaskState::Failed,
                Reason::Executor,
                format!("cannot create the task's folders: {error}"),
            )
        })?;
    }

    // Downloading.
    let mut input_transfers = Vec::new();
    if !spec.inputs().is_empty() || !spec.resources().is_empty() {
        shared
            .report(TaskReport::new(task_id, attempt, TaskState::Downloading))
            .await;
        let staging = staging::stage_in(&shared.resolver, &shared.resources, spec, dirs);
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(canceled()),
            result = with_timeout(spec.download_timeout(), staging) => result,
        };
        match result {
            Some(Ok(transfers)) => input_transfers = transfers,
            Some(Err(message)) => return Err(fail(TaskState::Failed, Reason::Input, message)),
            None => {
                let limit = spec
                    .download_timeout()
                    .map_or(0, |timeout| timeout.as_secs());
                return Err(fail(
                    TaskState::Failed,
                    Reason::Input,
                    format!("staging took longer than --download-timeout {limit}s"),
                ));
            }
        }
    }

    // Wait for a run slot (prefetched attempts wait here, staged).
    let permit = tokio::select! {
        _ = cancel.cancelled() => return Err(canceled()),
        permit = shared.slots.acquire() => match permit {
            Ok(permit) => permit,
            Err(_) => return Err(canceled()),
        },
    };
    let executor = match spec.docker() {
        Some(_) => match &shared.executors.docker {
            Some(docker) => docker.clone(),
            None => {
                return Err(fail(
                    TaskState::Failed,
                    Reason::Executor,
                    "this task needs Docker and this worker has no Docker executor".to_owned(),
                ));
            }
        },
        None => shared.executors.bare.clone(),
    };
    let mut running = TaskReport::new(task_id, attempt, TaskState::Running);
    running.transfers = input_transfers;
    shared.report(running).await;

    // Running.
    let job = Job {
        task_id,
        attempt,
        spec: spec.clone(),
        dirs: dirs.clone(),
        env: task_env(&shared.config),
        name: format!(
            "herd-w{}-t{task_id}-a{attempt}",
            shared.worker_id().map_or(0, |id| id.0)
        ),
    };
    let (sink, mut receiver) = LogSink::channel(64);
    let forwarder = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some((stream, data)) = receiver.recv().await {
                shared.log(task_id, attempt, stream, data).await;
            }
        })
    };
    let execution_cancel = cancel.child_token();
    let run_timeout = spec.run_timeout();
    let timed_out = {
        let deadline_cancel = execution_cancel.clone();
        let deadline = async move {
            match run_timeout {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    deadline_cancel.cancel();
                    true
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let execution = executor.run(&job, sink, execution_cancel.clone());
        tokio::pin!(execution);
        let mut timed_out = false;
        let result = loop {
            tokio::select! {
                result = &mut execution => break result,
                fired = &mut deadline, if !timed_out => timed_out = fired,
            }
        };
        (result, timed_out)
    };
    let (result, timed_out) = timed_out;
    // Every chunk reaches the server before the final report.
    let _ = forwarder.await;
    drop(permit);
    drop(started);

    let mut outcome = match result {
        Ok(Exit::Code(0)) => {
            let mut report = final_report(task_id, attempt, TaskState::Succeeded, None, None);
            report.exit_code = Some(0);
            report
        }
        Ok(Exit::Code(code)) => {
            let mut report = final_report(
                task_id,
                attempt,
                TaskState::Failed,
                Some(Reason::ExitCode),
                Some(format!("exited with code {code}")),
            );
            report.exit_code = Some(code);
            report
        }
        Ok(Exit::Killed) if timed_out => {
            let limit = run_timeout.map_or(0, |timeout| timeout.as_secs());
            final_report(
                task_id,
                attempt,
                TaskState::Failed,
                Some(Reason::Timeout),
                Some(format!("killed after --run-timeout {limit}s")),
            )
        }
        Ok(Exit::Killed) => return Err(canceled()),
        Err(error) => final_report(
            task_id,
            attempt,
            TaskState::Failed,
            Some(Reason::Executor),
            Some(error.to_string()),
        ),
    };

    // Uploading, whether the command succeeded or not.
    if let Some(output) = spec.output() {
        if shared.is_forgotten(task_id, attempt) {
            return Err(canceled());
        }
        shared
            .report(TaskReport::new(task_id, attempt, TaskState::Uploading))
            .await;
        match staging::upload_output(&shared.resolver, &dirs.output, output).await {
            Ok(transfer) => outcome.transfers.push(transfer),
            Err(message) => {
                let earlier = outcome.message.take();
                outcome.state = TaskState::Failed;
                if outcome.reason.is_none() {
                    outcome.reason = Some(Reason::Output);
                }
                outcome.message = Some(match earlier {
                    Some(earlier) => {
                        format!("{earlier}; and the upload of /output failed: {message}")
                    }
                    None => format!("the upload of /output failed: {message}"),
                });
            }
        }
    }
    Ok(outcome)
}

async fn with_timeout<T>(limit: Option<Duration>, work: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
        None => Some(work.await),
    }
}

/// `CPU`, `THREADS` (cores per slot) and `MEM` (GB per slot), for every executor.
fn task_env(config: &crate::Config) -> Vec<(String, String)> {
    let cpu = (config.cores / config.concurrency).max(1);
    let memory_gb = config.memory_bytes as f64 / f64::from(config.concurrency) / 1e9;
    vec![
        ("CPU".to_owned(), cpu.to_string()),
        ("THREADS".to_owned(), cpu.to_string()),
        (
            "MEM".to_owned(),
            format!("{}", memory_gb.floor().max(1.0) as u64),
        ),
    ]
}
