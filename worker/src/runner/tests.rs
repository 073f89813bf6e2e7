//! The runner against a scripted executor, scripted staging and a recording reporter: the
//! exact reports each path sends, and the semaphores given back. One test runs the real
//! staging (herd-fetch) into a work directory where writing fails.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use herd_fetch::ErrorKind;
use herd_proto::session::LogStream;
use herd_proto::{BatchName, TaskRequest};

use super::*;
use crate::ExecutorKind;
use crate::staging::{FetchStaging, Uploaded};

/// What a runner sent, in order.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Report(TaskReport),
    Log(LogStream, Vec<u8>),
}

/// A report as the tests compare it: state, reason, exit code, message.
type Seen = (TaskState, Option<Reason>, Option<i32>, Option<String>);

/// Records what the runner sends.
#[derive(Clone, Default)]
struct Recorder {
    sent: Arc<Mutex<Vec<Sent>>>,
    forgotten: Arc<AtomicBool>,
    /// Fired once the runner reports this state (to cancel mid-phase).
    cancel_on: Option<(TaskState, CancellationToken)>,
}

impl Recorder {
    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// The reports as (state, reason, exit code, message).
    fn reports(&self) -> Vec<Seen> {
        self.sent()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::Report(report) => Some((
                    report.state,
                    report.reason,
                    report.exit_code,
                    report.message,
                )),
                Sent::Log(..) => None,
            })
            .collect()
    }
}

impl Reporter for Recorder {
    fn report(&self, report: TaskReport) {
        if let Some((state, cancel)) = &self.cancel_on
            && *state == report.state
        {
            cancel.cancel();
        }
        self.sent.lock().unwrap().push(Sent::Report(report));
    }

    async fn log(&self, chunk: LogChunk) {
        self.sent
            .lock()
            .unwrap()
            .push(Sent::Log(chunk.stream, chunk.data));
    }

    fn is_forgotten(&self, _task_id: TaskId, _attempt: u32) -> bool {
        self.forgotten.load(Ordering::SeqCst)
    }
}

/// What the scripted staging does.
enum Stage {
    Moves(Vec<Transfer>),
    Fails(fn() -> Error),
    /// Never ends (until canceled).
    Hangs,
}

struct ScriptedStaging {
    stage: Stage,
    upload: Result<Transfer, fn() -> Error>,
    /// The upload never ends (until canceled), as a slow one would.
    upload_hangs: bool,
}

impl Staging for ScriptedStaging {
    async fn stage_in(&self, _spec: &TaskSpec, _dirs: &TaskDirs) -> Result<Vec<Transfer>, Error> {
        match &self.stage {
            Stage::Moves(transfers) => Ok(transfers.clone()),
            Stage::Fails(error) => Err(error()),
            Stage::Hangs => std::future::pending().await,
        }
    }

    async fn upload_output(
        &self,
        _source: &Path,
        _uri: &str,
        _refuse_hard_links: bool,
    ) -> Result<Uploaded, Error> {
        if self.upload_hangs {
            std::future::pending::<()>().await;
        }
        let transfer = self.upload.clone().map_err(|error| error())?;
        Ok(Uploaded {
            transfer,
            skipped: vec!["herd: /output/x is a symbolic link: not uploaded".to_owned()],
        })
    }
}

/// What the scripted executor does.
#[derive(Clone, Copy)]
enum Run {
    /// Prints `out` on stdout and `err` on stderr, then exits with the code.
    Exits(i32),
    /// Runs until canceled, then reports it killed.
    UntilCanceled,
    /// Cannot start: a permission error.
    Errs,
}

struct ScriptedExecutor(Run);

impl Executor for ScriptedExecutor {
    fn run<'a>(
        &'a self,
        _job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        let script = self.0;
        Box::pin(async move {
            match script {
                Run::Exits(code) => {
                    logs.send(LogStream::Stdout, b"out".to_vec()).await;
                    logs.send(LogStream::Stderr, b"err".to_vec()).await;
                    Ok(Exit::Code(code))
                }
                Run::UntilCanceled => {
                    cancel.cancelled().await;
                    Ok(Exit::Killed)
                }
                Run::Errs => Err(Error::io(
                    "cannot start `tool`",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                )),
            }
        })
    }

    fn name(&self) -> &'static str {
        "scripted"
    }
}

fn transfer(direction: &str) -> Transfer {
    Transfer {
        direction: direction.to_owned(),
        uri: format!("mem://{direction}"),
        bytes: 3,
        files: 1,
        items: Vec::new(),
    }
}

fn disk_full() -> Error {
    Error::Fetch {
        context: "input s3://bucket/reads.fq".to_owned(),
        source: herd_fetch::Error::with_source(
            ErrorKind::Io,
            "cannot write `reads.fq`",
            io::Error::from_raw_os_error(libc::ENOSPC),
        ),
    }
}

fn refused() -> Error {
    Error::Fetch {
        context: "output s3://bucket/out/".to_owned(),
        source: herd_fetch::Error::with_source(
            ErrorKind::PermissionDenied,
            "cannot upload `out/result.txt`",
            io::Error::from(io::ErrorKind::PermissionDenied),
        ),
    }
}

fn config(work_dir: &Path) -> Config {
    Config {
        server: "http://127.0.0.1:1".to_owned(),
        tls: herd_proto::transport::ClientTls::default(),
        name: "test".to_owned(),
        batch: BatchName::default_batch(),
        concurrency: 1,
        prefetch: 0,
        executor: ExecutorKind::Bare,
        allow_privileged: false,
        policy: herd_proto::policy::Policy::default(),
        work_dir: work_dir.to_path_buf(),
        cores: 2,
        memory_bytes: 4_000_000_000,
        token: herd_proto::access::Secret::new("herd_test").expect("a token"),
        keep_failed: crate::DEFAULT_KEEP_FAILED,
        cache_max_bytes: crate::DEFAULT_CACHE_MAX_BYTES,
    }
}

fn resources<S>(work_dir: &Path, staging: S, run: Run) -> Arc<Resources<S>> {
    let executor: Arc<dyn Executor> = Arc::new(ScriptedExecutor(run));
    let executors = Executors {
        bare: Some(executor),
        docker: None,
    };
    let folders = Arc::new(Folders::new(work_dir, 4));
    Arc::new(Resources::with_staging(
        &config(work_dir),
        executors,
        staging,
        folders,
    ))
}

/// An attempt of a bare task; `inputs` and `output` make the staging phases happen.
fn attempt(change: impl FnOnce(&mut TaskRequest)) -> Attempt {
    let mut request = TaskRequest {
        command: vec!["tool".to_owned()],
        ..TaskRequest::default()
    };
    change(&mut request);
    Attempt {
        task_id: TaskId(7),
        number: 2,
        spec: Arc::new(TaskSpec::new(request).unwrap()),
        cancel: CancellationToken::new(),
        worker_id: Some(WorkerId(1)),
        instance_id: 0xabc,
    }
}

fn with_input(request: &mut TaskRequest) {
    request.inputs = vec!["s3://bucket/reads.fq".to_owned()];
}

fn with_output(request: &mut TaskRequest) {
    request.output = Some("s3://bucket/out/".to_owned());
}

/// Runs `attempt` to its end and checks that it gave back its semaphores' permits.
async fn run_attempt<S: Staging>(
    attempt: Attempt,
    recorder: &Recorder,
    resources: Arc<Resources<S>>,
) {
    let limit = std::time::Duration::from_secs(30);
    tokio::time::timeout(limit, run(attempt, recorder.clone(), resources.clone()))
        .await
        .expect("the attempt ends");
    assert_eq!(
        resources.slots.available_permits(),
        1,
        "the run slot is free"
    );
    assert_eq!(
        resources.started.available_permits(),
        1,
        "the start is free"
    );
}

#[tokio::test]
async fn a_staged_attempt_runs_forwards_its_output_and_uploads() {
    // The scripted upload leaves out one entry: its line reaches stderr before the end.
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Moves(vec![transfer("input")]),
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    let attempt = attempt(|request| {
        with_input(request);
        with_output(request);
    });
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    let sent = recorder.sent();
    let states: Vec<String> = sent
        .iter()
        .map(|sent| match sent {
            Sent::Report(report) => report.state.to_string(),
            Sent::Log(stream, data) => format!("{stream}:{}", String::from_utf8_lossy(data)),
        })
        .collect();
    assert_eq!(
        states,
        vec![
            "downloading",
            "running",
            "stdout:out",
            "stderr:err",
            "uploading",
            "stderr:herd: /output/x is a symbolic link: not uploaded\n",
            "succeeded"
        ]
    );
    let Sent::Report(running) = &sent[1] else {
        panic!("{sent:?}")
    };
    assert_eq!(running.transfers, vec![transfer("input")]);
    let Some(Sent::Report(last)) = sent.last() else {
        panic!("{sent:?}")
    };
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(last.transfers, vec![transfer("output")]);
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_code() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    run_attempt(
        attempt(|_| {}),
        &recorder,
        resources(work.path(), staging, Run::Exits(3)),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Running, None, None, None),
            (
                TaskState::Failed,
                Some(Reason::ExitCode),
                Some(3),
                Some("exited with code 3".to_owned())
            ),
        ]
    );
    assert_eq!(
        recorder.sent().len(),
        4,
        "both chunks forwarded before the end"
    );
}

#[tokio::test]
async fn a_staging_failure_fails_the_attempt_with_its_causes() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Fails(disk_full),
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    run_attempt(
        attempt(with_input),
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    let expected = format!(
        "input s3://bucket/reads.fq: cannot write `reads.fq`: {}",
        io::Error::from_raw_os_error(libc::ENOSPC)
    );
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Downloading, None, None, None),
            (TaskState::Failed, Some(Reason::Input), None, Some(expected)),
        ]
    );
}

#[tokio::test]
async fn canceled_during_staging_the_attempt_ends_canceled() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let attempt = attempt(with_input);
    let recorder = Recorder {
        cancel_on: Some((TaskState::Downloading, attempt.cancel.clone())),
        ..Recorder::default()
    };
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Downloading, None, None, None),
            (
                TaskState::Canceled,
                Some(Reason::Killed),
                None,
                Some("canceled by the server".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn past_the_run_deadline_the_command_is_killed_and_the_attempt_times_out() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    let attempt = attempt(|request| request.run_timeout_secs = Some(1));
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::UntilCanceled),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Running, None, None, None),
            (
                TaskState::Failed,
                Some(Reason::Timeout),
                None,
                Some("killed after --run-timeout 1s".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn canceled_while_running_the_attempt_ends_canceled_without_upload() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let attempt = attempt(with_output);
    let recorder = Recorder {
        cancel_on: Some((TaskState::Running, attempt.cancel.clone())),
        ..Recorder::default()
    };
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::UntilCanceled),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Running, None, None, None),
            (
                TaskState::Canceled,
                Some(Reason::Killed),
                None,
                Some("canceled by the server".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn a_failed_upload_fails_the_attempt_and_keeps_the_earlier_reason() {
    let upload_failure = format!(
        "the upload of /output failed: output s3://bucket/out/: cannot upload \
         `out/result.txt`: {}",
        io::Error::from(io::ErrorKind::PermissionDenied)
    );
    for (code, reason, message) in [
        (0, Reason::Output, upload_failure.clone()),
        (
            3,
            Reason::ExitCode,
            format!("exited with code 3; and {upload_failure}"),
        ),
    ] {
        let work = tempfile::tempdir().unwrap();
        let staging = ScriptedStaging {
            stage: Stage::Hangs,
            upload: Err(refused),
            upload_hangs: false,
        };
        let recorder = Recorder::default();
        run_attempt(
            attempt(with_output),
            &recorder,
            resources(work.path(), staging, Run::Exits(code)),
        )
        .await;
        assert_eq!(
            recorder.reports(),
            vec![
                (TaskState::Running, None, None, None),
                (TaskState::Uploading, None, None, None),
                (TaskState::Failed, Some(reason), Some(code), Some(message)),
            ]
        );
    }
}

#[tokio::test]
async fn a_forgotten_attempt_uploads_nothing() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    recorder.forgotten.store(true, Ordering::SeqCst);
    run_attempt(
        attempt(with_output),
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    let states: Vec<TaskState> = recorder.reports().into_iter().map(|r| r.0).collect();
    assert_eq!(states, vec![TaskState::Running, TaskState::Canceled]);
}

#[tokio::test]
async fn an_executor_error_fails_the_attempt_with_its_cause() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    run_attempt(
        attempt(|_| {}),
        &recorder,
        resources(work.path(), staging, Run::Errs),
    )
    .await;
    let expected = format!(
        "cannot start `tool`: {}",
        io::Error::from(io::ErrorKind::PermissionDenied)
    );
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Running, None, None, None),
            (
                TaskState::Failed,
                Some(Reason::Executor),
                None,
                Some(expected)
            ),
        ]
    );
}

#[tokio::test]
async fn a_docker_task_on_a_worker_without_docker_fails_and_frees_its_slot() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: false,
    };
    let recorder = Recorder::default();
    let attempt = attempt(|request| request.docker_image = Some("busybox".to_owned()));
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![(
            TaskState::Failed,
            Some(Reason::Executor),
            None,
            Some("this task needs Docker and this worker has no Docker executor".to_owned())
        )]
    );
}

/// The real staging, into a work directory where the resource cache cannot be made: the
/// operating system's reason reaches the report.
#[tokio::test]
async fn a_real_staging_failure_reports_the_operating_system_s_reason() {
    let work = tempfile::tempdir().unwrap();
    let resource = work.path().join("reference.fa");
    std::fs::write(&resource, ">chr1\nACGT\n").unwrap();
    // The cache lives under `WORK/resources/`: a regular file there stops every write.
    std::fs::write(work.path().join("resources"), "not a directory").unwrap();
    let staging = FetchStaging::new(work.path());
    let recorder = Recorder::default();
    let attempt = attempt(|request| {
        request.resources = vec![resource.display().to_string()];
    });
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    let reports = recorder.reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let (state, reason, _, message) = &reports[1];
    assert_eq!((*state, *reason), (TaskState::Failed, Some(Reason::Input)));
    let os_reason = io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
    let message = message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("cannot create the resource cache") && message.contains(&os_reason),
        "{message}"
    );
}

/// The real staging of an input into a destination under a regular file.
#[tokio::test]
async fn a_real_input_that_cannot_be_written_reports_the_operating_system_s_reason() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("reads.fq");
    std::fs::write(&input, "@r1\nACGT\n+\nIIII\n").unwrap();
    let blocker = work.path().join("blocker");
    std::fs::write(&blocker, "a file").unwrap();
    let under_file = blocker.join("attempt");
    let dirs = TaskDirs {
        input: under_file.join("input"),
        output: under_file.join("output"),
        resource: under_file.join("resource"),
        tmp: under_file.join("tmp"),
        root: under_file,
    };
    let spec = TaskSpec::new(TaskRequest {
        command: vec!["tool".to_owned()],
        inputs: vec![input.display().to_string()],
        ..TaskRequest::default()
    })
    .unwrap();
    let error = FetchStaging::new(work.path())
        .stage_in(&spec, &dirs)
        .await
        .unwrap_err();
    let shown = error.chain();
    let os_reason = io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
    assert!(
        shown.starts_with(&format!("input {}", input.display())) && shown.contains(&os_reason),
        "{shown}"
    );
}

#[tokio::test]
async fn canceled_while_uploading_the_upload_stops_and_the_attempt_ends_canceled() {
    let work = tempfile::tempdir().unwrap();
    let staging = ScriptedStaging {
        stage: Stage::Hangs,
        upload: Ok(transfer("output")),
        upload_hangs: true,
    };
    let attempt = attempt(with_output);
    // The server refuses the attempt once its output is on its way.
    let recorder = Recorder {
        cancel_on: Some((TaskState::Uploading, attempt.cancel.clone())),
        ..Recorder::default()
    };
    run_attempt(
        attempt,
        &recorder,
        resources(work.path(), staging, Run::Exits(0)),
    )
    .await;
    assert_eq!(
        recorder.reports(),
        vec![
            (TaskState::Running, None, None, None),
            (TaskState::Uploading, None, None, None),
            (
                TaskState::Canceled,
                Some(Reason::Killed),
                None,
                Some("canceled by the server".to_owned())
            ),
        ]
    );
}
