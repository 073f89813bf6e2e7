//! One attempt, from assignment to final report.
//!
//! ```text
//! assigned → wait to start → [downloading: stage /input and /resource] → wait for a run slot
//!          → running → [uploading: /output to its URI] → succeeded | failed | canceled
//! ```
//! An attempt starts (its folders, its staging) once fewer than `concurrency + prefetch` are
//! under way: the ones the server pipelines beyond that wait untouched. Phases without work
//! (no inputs, no output URI) are skipped. Every log chunk reaches the [`Reporter`] before the
//! final report, so `herd task logs` after the end shows everything.
//!
//! A runner gets an [`Attempt`] (what to run), a [`Reporter`] (where its reports and logs go:
//! the session, or a test's recorder) and the worker's [`Resources`] (executors, staging,
//! folders, the two semaphores). Each phase is a function that returns what the next needs,
//! or the attempt's final report when the attempt ends there.

use std::sync::Arc;
use std::time::Duration;

use herd_proto::session::LogChunk;
use herd_proto::view::Transfer;
use herd_proto::{Reason, TaskId, TaskReport, TaskSpec, TaskState, WorkerId};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::executor::{Executor, Exit, Job, LogSink, TaskDirs};
use crate::folders::{Folders, Janitor};
use crate::staging::Staging;
use crate::{Config, Error, Executors};

#[cfg(test)]
mod tests;

/// Where a runner's reports and logs go.
pub(crate) trait Reporter: Send + Sync + 'static {
    /// Records the attempt's new state and queues it for the server (a final report stays
    /// until the server acknowledges it).
    fn report(&self, report: TaskReport);

    /// Sends what the attempt printed; waits when the connection is behind (back-pressure),
    /// and drops the chunk while disconnected.
    fn log(&self, chunk: LogChunk) -> impl Future<Output = ()> + Send;

    /// Whether the server dropped the attempt: then its output is not uploaded.
    fn is_forgotten(&self, task_id: TaskId, attempt: u32) -> bool;
}

/// The attempt a runner runs.
pub(crate) struct Attempt {
    /// The task.
    pub task_id: TaskId,
    /// The attempt's number.
    pub number: u32,
    /// What to run.
    pub spec: Arc<TaskSpec>,
    /// Fired when the server cancels the attempt or the worker stops.
    pub cancel: CancellationToken,
    /// The worker's id when the attempt was assigned: part of the container's name.
    pub worker_id: Option<WorkerId>,
    /// The server's database when the attempt was assigned (0: not said): part of the names of
    /// its folder and container.
    pub instance_id: u64,
}

/// What the runners of a worker share.
pub(crate) struct Resources<S> {
    /// Runs commands.
    pub executors: Executors,
    /// Moves inputs, resources and outputs.
    pub staging: S,
    /// The attempts' folders, reused.
    pub folders: Arc<Folders>,
    /// Empties the folders of ended attempts for reuse.
    pub janitor: Janitor,
    /// Attempts under way (folders, staging, running): `concurrency + prefetch`. Beyond them,
    /// the server's pipeline: assigned attempts wait here, untouched, until one ends.
    pub started: Semaphore,
    /// Run slots: `concurrency` attempts run at once; prefetched ones wait here, staged.
    pub slots: Semaphore,
    /// `CPU`, `THREADS` (cores per slot) and `MEM` (GB per slot), for every executor.
    pub env: Vec<(String, String)>,
}

impl Resources<crate::staging::FetchStaging> {
    /// The resources of a worker configured by `config`, staging through herd-fetch.
    pub fn new(config: &Config, executors: Executors) -> Self {
        // An attempt's folder is released (by the janitor's thread) after the next attempt
        // took its place, and with short tasks many wait for it at once: enough spares that a
        // start finds one ready, though the janitor lags a burst (a spare costs five inodes).
        let folders = Arc::new(Folders::new(
            &config.work_dir,
            8 * (config.concurrency + config.prefetch) as usize + 32,
        ));
        Resources::with_staging(
            config,
            executors,
            crate::staging::FetchStaging::new(&config.work_dir),
            folders,
        )
    }
}

impl<S> Resources<S> {
    /// The resources of a worker configured by `config`, staging with `staging`.
    pub fn with_staging(
        config: &Config,
        executors: Executors,
        staging: S,
        folders: Arc<Folders>,
    ) -> Self {
        Resources {
            executors,
            staging,
            janitor: Janitor::start(folders.clone()),
            folders,
            started: Semaphore::new((config.concurrency + config.prefetch) as usize),
            slots: Semaphore::new(config.concurrency as usize),
            env: task_env(config),
        }
    }
}

/// An attempt that ended before its last phase, with its final report (boxed: the phases'
/// results stay small).
type Ended = Box<TaskReport>;

/// Runs one attempt; always ends with a final report (the session drops it when the server
/// forgot the attempt).
pub(crate) async fn run<S: Staging, R: Reporter>(
    attempt: Attempt,
    reporter: R,
    resources: Arc<Resources<S>>,
) {
    let dirs = resources
        .folders
        .dirs(attempt.instance_id, attempt.task_id, attempt.number);
    let report = match phases(&attempt, &reporter, &resources, &dirs).await {
        Ok(report) => report,
        Err(report) => *report,
    };
    let succeeded = report.state == TaskState::Succeeded;
    debug!(task_id = %attempt.task_id, attempt = attempt.number, state = %report.state, "attempt ended");
    reporter.report(report);
    resources.staging.finished(&dirs);
    resources.janitor.release(dirs, succeeded);
}

/// The phases in order; the permits of `started` and `slots` are held until the command ended.
async fn phases<S: Staging, R: Reporter>(
    attempt: &Attempt,
    reporter: &R,
    resources: &Resources<S>,
    dirs: &TaskDirs,
) -> Result<TaskReport, Ended> {
    // Pipelined attempts wait here, untouched.
    let started = acquire(attempt, &resources.started).await?;
    prepare_folders(attempt, &resources.folders, dirs).await?;
    let input_transfers = stage(attempt, reporter, &resources.staging, dirs).await?;
    // Prefetched attempts wait here, staged.
    let slot = acquire(attempt, &resources.slots).await?;
    let executor = executor_for(attempt, &resources.executors)?;
    let mut running = TaskReport::new(attempt.task_id, attempt.number, TaskState::Running);
    running.transfers = input_transfers;
    reporter.report(running);
    let job = Job {
        task_id: attempt.task_id,
        attempt: attempt.number,
        spec: attempt.spec.clone(),
        dirs: dirs.clone(),
        env: attempt_env(&resources.env, attempt),
        name: container_name(attempt),
    };
    let execution = execute(attempt, reporter, executor.as_ref(), &job).await;
    drop(slot);
    drop(started);
    let outcome = outcome(attempt, execution)?;
    upload(attempt, reporter, &resources.staging, dirs, outcome).await
}

/// A final report of `attempt`.
fn final_report(
    attempt: &Attempt,
    state: TaskState,
    reason: Option<Reason>,
    message: Option<String>,
) -> TaskReport {
    let mut report = TaskReport::new(attempt.task_id, attempt.number, state);
    report.reason = reason;
    report.message = message;
    report
}

fn failed(attempt: &Attempt, reason: Reason, message: String) -> Ended {
    Box::new(final_report(
        attempt,
        TaskState::Failed,
        Some(reason),
        Some(message),
    ))
}

fn canceled(attempt: &Attempt) -> Ended {
    Box::new(final_report(
        attempt,
        TaskState::Canceled,
        Some(Reason::Killed),
        Some("canceled by the server".to_owned()),
    ))
}

/// A permit of `semaphore`, unless the attempt is canceled first.
async fn acquire<'a>(
    attempt: &Attempt,
    semaphore: &'a Semaphore,
) -> Result<SemaphorePermit<'a>, Ended> {
    tokio::select! {
        _ = attempt.cancel.cancelled() => Err(canceled(attempt)),
        permit = semaphore.acquire() => permit.map_err(|_| canceled(attempt)),
    }
}

/// Makes the attempt's folders exist: a spare folder renamed into place right here, or new
/// ones made on the blocking pool; then gives them (0700) to the task's user.
async fn prepare_folders(
    attempt: &Attempt,
    folders: &Arc<Folders>,
    dirs: &TaskDirs,
) -> Result<(), Ended> {
    let (uid, gid) = (attempt.spec.uid(), attempt.spec.gid());
    let fail = |error| {
        let error = Error::io("cannot create the task's folders", error);
        failed(attempt, Reason::Executor, error.chain())
    };
    if folders.reuse_spare(dirs) {
        // Ten system calls: cheap enough for the async threads, like the rename.
        return folders.give(dirs, uid, gid).map_err(fail);
    }
    let (creating, target) = (folders.clone(), dirs.clone());
    tokio::task::spawn_blocking(move || {
        creating.create(&target)?;
        creating.give(&target, uid, gid)
    })
    .await
    .unwrap_or_else(|error| Err(std::io::Error::other(error)))
    .map_err(fail)
}

/// Stages inputs and resources (`downloading`) within `--download-timeout`.
async fn stage<R: Reporter>(
    attempt: &Attempt,
    reporter: &R,
    staging: &impl Staging,
    dirs: &TaskDirs,
) -> Result<Vec<Transfer>, Ended> {
    let spec = &attempt.spec;
    if spec.inputs().is_empty() && spec.resources().is_empty() {
        return Ok(Vec::new());
    }
    reporter.report(TaskReport::new(
        attempt.task_id,
        attempt.number,
        TaskState::Downloading,
    ));
    let limit = spec.download_timeout();
    let staged = tokio::select! {
        _ = attempt.cancel.cancelled() => return Err(canceled(attempt)),
        staged = with_timeout(limit, staging.stage_in(spec, dirs)) => staged,
    };
    match staged {
        Some(Ok(transfers)) => Ok(transfers),
        Some(Err(error)) => Err(failed(attempt, Reason::Input, error.chain())),
        None => Err(failed(
            attempt,
            Reason::Input,
            format!(
                "staging took longer than --download-timeout {}s",
                limit.map_or(0, |limit| limit.as_secs())
            ),
        )),
    }
}

async fn with_timeout<T>(limit: Option<Duration>, work: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
        None => Some(work.await),
    }
}

/// The executor for the attempt: Docker when it has an image, bare otherwise.
fn executor_for(attempt: &Attempt, executors: &Executors) -> Result<Arc<dyn Executor>, Ended> {
    if attempt.spec.docker().is_none() {
        return executors.bare.clone().ok_or_else(|| {
            failed(
                attempt,
                Reason::Executor,
                "this task runs on the host and this worker runs Docker tasks only \
                 (--executor docker): run it on a worker started with --executor bare or auto"
                    .to_owned(),
            )
        });
    }
    executors.docker.clone().ok_or_else(|| {
        failed(
            attempt,
            Reason::Executor,
            "this task needs Docker and this worker has no Docker executor".to_owned(),
        )
    })
}

/// How the command ended, and whether the run deadline ended it.
struct Execution {
    result: Result<Exit, Error>,
    timed_out: bool,
}

/// Runs the job, its output forwarded to the reporter as it comes; every chunk is forwarded
/// when this returns.
async fn execute<R: Reporter>(
    attempt: &Attempt,
    reporter: &R,
    executor: &dyn Executor,
    job: &Job,
) -> Execution {
    let (sink, receiver) = LogSink::channel(64);
    let running = run_until_deadline(attempt, executor, job, sink);
    let forwarding = forward_logs(attempt, reporter, receiver);
    let (execution, ()) = tokio::join!(running, forwarding);
    execution
}

/// Runs the job; past `--run-timeout`, cancels it and waits for the executor to kill it.
async fn run_until_deadline(
    attempt: &Attempt,
    executor: &dyn Executor,
    job: &Job,
    sink: LogSink,
) -> Execution {
    let cancel = attempt.cancel.child_token();
    let running = executor.run(job, sink, cancel.clone());
    let Some(limit) = attempt.spec.run_timeout() else {
        return Execution {
            result: running.await,
            timed_out: false,
        };
    };
    tokio::pin!(running);
    tokio::select! {
        result = &mut running => return Execution { result, timed_out: false },
        () = tokio::time::sleep(limit) => {}
    }
    cancel.cancel();
    Execution {
        result: running.await,
        timed_out: true,
    }
}

async fn forward_logs<R: Reporter>(
    attempt: &Attempt,
    reporter: &R,
    mut receiver: mpsc::Receiver<(herd_proto::session::LogStream, Vec<u8>)>,
) {
    while let Some((stream, data)) = receiver.recv().await {
        let chunk = LogChunk {
            task_id: attempt.task_id,
            attempt: attempt.number,
            stream,
            data,
        };
        reporter.log(chunk).await;
    }
}

/// The report of how the command ended (exit code, deadline, cancellation, executor error).
fn outcome(attempt: &Attempt, execution: Execution) -> Result<TaskReport, Ended> {
    Ok(match execution.result {
        Ok(Exit::Code(0)) => {
            let mut report = final_report(attempt, TaskState::Succeeded, None, None);
            report.exit_code = Some(0);
            report
        }
        Ok(Exit::Code(code)) => {
            let mut report = final_report(
                attempt,
                TaskState::Failed,
                Some(Reason::ExitCode),
                Some(format!("exited with code {code}")),
            );
            report.exit_code = Some(code);
            report
        }
        Ok(Exit::Killed) if execution.timed_out => {
            let limit = attempt
                .spec
                .run_timeout()
                .map_or(0, |limit| limit.as_secs());
            final_report(
                attempt,
                TaskState::Failed,
                Some(Reason::Timeout),
                Some(format!("killed after --run-timeout {limit}s")),
            )
        }
        Ok(Exit::Killed) => return Err(canceled(attempt)),
        Err(error) => final_report(
            attempt,
            TaskState::Failed,
            Some(Reason::Executor),
            Some(error.chain()),
        ),
    })
}

/// Uploads `/output` (`uploading`), whether the command succeeded or not; a failed upload
/// fails the attempt, keeping what was wrong before. Nothing is uploaded for an attempt the
/// server dropped, and an upload under way stops when the attempt is canceled.
async fn upload<R: Reporter>(
    attempt: &Attempt,
    reporter: &R,
    staging: &impl Staging,
    dirs: &TaskDirs,
    mut outcome: TaskReport,
) -> Result<TaskReport, Ended> {
    let Some(output) = attempt.spec.output() else {
        return Ok(outcome);
    };
    if reporter.is_forgotten(attempt.task_id, attempt.number) {
        return Err(canceled(attempt));
    }
    reporter.report(TaskReport::new(
        attempt.task_id,
        attempt.number,
        TaskState::Uploading,
    ));
    let refuse_hard_links = attempt.spec.docker().is_some();
    // The server may refuse the attempt while its output is on its way (it gave the task to
    // another worker): the upload stops there, so a newer attempt's files are not overwritten.
    let uploaded = tokio::select! {
        _ = attempt.cancel.cancelled() => return Err(canceled(attempt)),
        uploaded = staging.upload_output(&dirs.output, output, refuse_hard_links) => uploaded,
    };
    match uploaded {
        Ok(uploaded) => {
            for line in uploaded.skipped {
                reporter
                    .log(LogChunk {
                        task_id: attempt.task_id,
                        attempt: attempt.number,
                        stream: herd_proto::session::LogStream::Stderr,
                        data: format!("{line}\n").into_bytes(),
                    })
                    .await;
            }
            outcome.transfers.push(uploaded.transfer);
        }
        Err(error) => {
            let failure = format!("the upload of /output failed: {}", error.chain());
            outcome.state = TaskState::Failed;
            outcome.reason.get_or_insert(Reason::Output);
            outcome.message = Some(match outcome.message.take() {
                Some(earlier) => format!("{earlier}; and {failure}"),
                None => failure,
            });
        }
    }
    Ok(outcome)
}

/// `CPU`, `THREADS` (cores per slot) and `MEM` (GB per slot), for every executor.
fn task_env(config: &Config) -> Vec<(String, String)> {
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

/// The worker's task environment plus this attempt's `HERD_TASK_ID` and `HERD_ATTEMPT` (a task
/// can name its outputs after them).
fn attempt_env(common: &[(String, String)], attempt: &Attempt) -> Vec<(String, String)> {
    let mut env = common.to_vec();
    env.push(("HERD_TASK_ID".to_owned(), attempt.task_id.to_string()));
    env.push(("HERD_ATTEMPT".to_owned(), attempt.number.to_string()));
    env
}

/// `herd-i<instance>-w<worker>-t<task>-a<attempt>`: unique on the host even when several
/// servers (or a reset one) share its Docker engine.
fn container_name(attempt: &Attempt) -> String {
    let worker = attempt.worker_id.map_or(0, |id| id.0);
    if attempt.instance_id == 0 {
        format!("herd-w{worker}-t{}-a{}", attempt.task_id, attempt.number)
    } else {
        format!(
            "herd-i{:016x}-w{worker}-t{}-a{}",
            attempt.instance_id, attempt.task_id, attempt.number
        )
    }
}
