//! The Docker executor against the real engine.
//!
//! Needs a running Docker engine and the image `herd-test-busybox:latest`, built by
//! `scripts/build-test-image.sh` (no registry needed). Without either, every test fails and
//! says so: these tests never skip.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herd_proto::policy::Policy;
use herd_proto::session::LogStream;
use herd_proto::{TaskId, TaskRequest, TaskSpec};
use herd_worker::Error;
use herd_worker::executor::docker::DockerExecutor;
use herd_worker::executor::{Executor, Exit, Job, LogSink, TaskDirs};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "herd-test-busybox:latest";

/// Generous: the slowest test's workload takes well under a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One attempt's directories (removed on drop) and its job.
struct Attempt {
    job: Job,
    _root: TempDir,
}

impl Attempt {
    fn dirs(&self) -> &TaskDirs {
        &self.job.dirs
    }
}

/// A container name unique to this test in this process: `herd-test-<label>-<pid>-<n>`.
fn container_name(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("herd-test-{label}-{}-{count}", std::process::id())
}

/// A job running `command` in the test image with `-O options`, its directories in a fresh
/// temporary root, every one world-writable so that a `--user` test can write.
fn attempt(label: &str, command: &[&str], options: &str) -> Attempt {
    attempt_with_image(label, IMAGE, command, options)
}

fn attempt_with_image(label: &str, image: &str, command: &[&str], options: &str) -> Attempt {
    let root = tempfile::tempdir().expect("create a temporary directory");
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir(&path).expect("create an attempt directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("make an attempt directory world-writable");
        path
    };
    let dirs = TaskDirs {
        input: dir("input"),
        output: dir("output"),
        resource: dir("resource"),
        tmp: dir("tmp"),
        root: root.path().to_owned(),
    };
    let command = command.iter().map(|word| word.to_string()).collect();
    let spec = TaskSpec::new(TaskRequest {
        command,
        docker_image: Some(image.to_owned()),
        docker_options: options.to_owned(),
        ..TaskRequest::default()
    })
    .expect("valid docker options");
    let job = Job {
        task_id: TaskId(1),
        attempt: 1,
        spec: Arc::new(spec),
        dirs,
        env: vec![
            ("CPU".into(), "3".into()),
            ("THREADS".into(), "3".into()),
            ("MEM".into(), "1".into()),
        ],
        name: container_name(label),
    };
    Attempt { job, _root: root }
}

/// The executor, or a failure that says what to do. Checks the test image too.
async fn executor() -> DockerExecutor {
    let executor = DockerExecutor::connect().await.unwrap_or_else(|error| {
        panic!(
            "{error}\nthe docker tests need a running Docker engine and the test image: \
             run scripts/build-test-image.sh"
        )
    });
    let inspect = docker_cli(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert!(
        inspect.status.success(),
        "the image {IMAGE} is missing: run scripts/build-test-image.sh ({})",
        String::from_utf8_lossy(&inspect.stderr).trim()
    );
    executor
}

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (install it to run the docker tests)")
}

/// Asserts that no container of this name exists any more, running or not.
fn assert_container_gone(name: &str) {
    let inspect = docker_cli(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        name,
    ]);
    assert!(
        !inspect.status.success(),
        "the container {name} still exists ({})",
        String::from_utf8_lossy(&inspect.stdout).trim()
    );
    let stderr = String::from_utf8_lossy(&inspect.stderr).to_lowercase();
    assert!(
        stderr.contains("no such"),
        "unexpected docker inspect failure: {stderr}"
    );
}

/// What an attempt printed, stream by stream.
#[derive(Debug, Default)]
struct Printed {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Printed {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("utf-8 stdout")
    }

    fn stderr(&self) -> String {
        String::from_utf8(self.stderr.clone()).expect("utf-8 stderr")
    }
}

async fn collect(mut receiver: mpsc::Receiver<(LogStream, Vec<u8>)>) -> Printed {
    let mut printed = Printed::default();
    while let Some((stream, chunk)) = receiver.recv().await {
        match stream {
            LogStream::Stdout => printed.stdout.extend(chunk),
            LogStream::Stderr => printed.stderr.extend(chunk),
        }
    }
    printed
}

/// Runs `job` to its end and checks that its container is gone afterwards.
async fn run(executor: &DockerExecutor, job: &Job) -> (Result<Exit, Error>, Printed) {
    let (logs, receiver) = LogSink::channel(16);
    let collector = tokio::spawn(collect(receiver));
    let result = tokio::time::timeout(
        RUN_TIMEOUT,
        executor.run(job, logs, CancellationToken::new()),
    )
    .await
    .expect("the attempt ended within the timeout");
    let printed = collector.await.expect("the log collector ends");
    assert_container_gone(&job.name);
    (result, printed)
}

#[tokio::test]
async fn inputs_are_read_and_outputs_reach_the_host() {
    let executor = executor().await;
    let attempt = attempt(
        "output",
        &[
            "sh",
            "-c",
            "tr a-z A-Z < /input/words > /output/upper && echo scratch > /tmp/scratch && ls /tmp",
        ],
        "",
    );
    std::fs::write(attempt.dirs().input.join("words"), "hello herd\n").unwrap();
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0), "{printed:?}");
    let upper = std::fs::read_to_string(attempt.dirs().output.join("upper")).unwrap();
    assert_eq!(upper, "HELLO HERD\n");
    assert_eq!(
        std::fs::read_to_string(attempt.dirs().tmp.join("scratch")).unwrap(),
        "scratch\n"
    );
    assert_eq!(printed.stdout(), "scratch\n");
}

#[tokio::test]
async fn stdout_and_stderr_arrive_separately_and_completely() {
    let executor = executor().await;
    let script = r#"i=0
while [ $i -lt 2000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done
printf 'last out without newline'; printf 'last err without newline' >&2"#;
    let attempt = attempt("streams", &["sh", "-c", script], "");
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0));
    for (text, prefix) in [(printed.stdout(), "out"), (printed.stderr(), "err")] {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2001, "{prefix}: {} lines", lines.len());
        for (number, line) in lines[..2000].iter().enumerate() {
            assert_eq!(*line, format!("{prefix} {number}"));
        }
        assert_eq!(lines[2000], format!("last {prefix} without newline"));
    }
}

#[tokio::test]
async fn the_exit_code_propagates() {
    let executor = executor().await;
    let attempt = attempt("exit", &["sh", "-c", "echo before; exit 7"], "");
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(7));
    assert_eq!(printed.stdout(), "before\n");
}

#[tokio::test]
async fn a_command_that_does_not_exist_fails_to_start_and_is_cleaned_up() {
    let executor = executor().await;
    let attempt = attempt("nocommand", &["herd-no-such-command"], "");
    let (result, _) = run(&executor, &attempt.job).await;
    let error = result.unwrap_err();
    assert!(matches!(&error, Error::Refused { .. }), "{error:?}");
    // The engine's own reason names the command.
    let shown = error.chain();
    assert!(shown.contains("herd-no-such-command"), "{shown}");
}

#[tokio::test]
async fn environment_comes_from_the_job_and_the_options() {
    let executor = executor().await;
    // cargo sets CARGO_MANIFEST_DIR for the tests it runs: a value the worker has, and which
    // the container must not see.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let attempt = attempt(
        "env",
        &[
            "sh",
            "-c",
            r#"echo "CPU=$CPU THREADS=$THREADS OPTION=$OPTION"
               echo "WORKER=${CARGO_MANIFEST_DIR-absent}""#,
        ],
        "-e 'OPTION=two words' -e THREADS=1",
    );
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0));
    assert_eq!(
        printed.stdout(),
        "CPU=3 THREADS=1 OPTION=two words\nWORKER=absent\n"
    );
}

#[tokio::test]
async fn resources_are_read_only() {
    let executor = executor().await;
    let attempt = attempt(
        "resource",
        &[
            "sh",
            "-c",
            "cat /resource/reference && echo new > /resource/new",
        ],
        "",
    );
    std::fs::write(attempt.dirs().resource.join("reference"), "GATTACA\n").unwrap();
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_ne!(
        result.unwrap(),
        Exit::Code(0),
        "writing to /resource succeeded"
    );
    assert_eq!(printed.stdout(), "GATTACA\n");
    assert!(
        printed.stderr().contains("Read-only file system"),
        "{printed:?}"
    );
    assert!(!attempt.dirs().resource.join("new").exists());
}

#[tokio::test]
async fn uid_and_gid_set_the_container_user() {
    let executor = executor().await;
    let mut attempt = attempt(
        "user",
        &["sh", "-c", "id -u; id -g; echo mine > /output/owned"],
        "",
    );
    let mut request = attempt.job.spec.to_request();
    request.uid = Some(1234);
    request.gid = Some(1234);
    attempt.job.spec = Arc::new(TaskSpec::new(request).unwrap());
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0), "{printed:?}");
    assert_eq!(printed.stdout(), "1234\n1234\n");
    let owned = std::fs::metadata(attempt.dirs().output.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 1234));
}

#[tokio::test]
async fn workdir_entrypoint_and_volumes_follow_the_options() {
    let shared_dir = tempfile::tempdir().unwrap();
    // The real path: the worker compares a mount's real path with the folders it allows.
    let shared = shared_dir.path().canonicalize().unwrap();
    let mut policy = Policy::default();
    policy.allow_volume(&shared.display().to_string()).unwrap();
    let executor = executor().await.policy(Arc::new(policy));
    std::fs::write(shared.join("shared.txt"), "shared\n").unwrap();
    let options = format!(
        "-w /output --entrypoint /bin/sh -v {}:/shared:ro --network none --shm-size 64m \
         --cpus 0.5",
        shared.display()
    );
    // With `--entrypoint /bin/sh`, the command is only sh's arguments.
    let script = r#"pwd
        cat /shared/shared.txt
        ls /sys/class/net
        df -k /dev/shm | tail -n 1 | awk '{print $2}'
        { cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; } |
            awk '{print $1}'"#;
    let attempt = attempt("options", &["-c", script], &options);
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0), "{printed:?}");
    // `--network none` leaves only the loopback interface; 64 MiB of shm; half a CPU is a
    // quota of 50 ms per 100 ms period.
    assert_eq!(printed.stdout(), "/output\nshared\nlo\n65536\n50000\n");
}

#[tokio::test]
async fn a_memory_limit_kills_a_greedy_command_and_says_so() {
    let executor = executor().await;
    // 200 MB in a shell variable, against 16 MiB of memory (and as much swap at most).
    let greedy = r#"x=$(head -c 200000000 /dev/zero | tr '\0' a); echo "${#x}""#;
    let attempt = attempt("memory", &["sh", "-c", greedy], "-m 16m");
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(137), "{printed:?}");
    assert!(
        printed.stderr().contains("ran out of memory"),
        "{printed:?}"
    );
}

#[tokio::test]
async fn cancellation_kills_the_container_quickly() {
    let executor = executor().await;
    let attempt = attempt("cancel", &["sh", "-c", "echo started; exec sleep 60"], "");
    let (logs, mut receiver) = LogSink::channel(16);
    let cancel = CancellationToken::new();
    let running = executor.run(&attempt.job, logs, cancel.clone());
    let observer = async {
        // Cancel once the command is surely running: it has printed.
        let (stream, chunk) = receiver
            .recv()
            .await
            .expect("the command prints before it sleeps");
        assert_eq!(
            (stream, chunk.as_slice()),
            (LogStream::Stdout, b"started\n".as_slice())
        );
        let cancelled_at = Instant::now();
        cancel.cancel();
        cancelled_at
    };
    let (result, cancelled_at) =
        tokio::time::timeout(RUN_TIMEOUT, async { tokio::join!(running, observer) })
            .await
            .expect("the attempt ended within the timeout");
    assert_eq!(result.unwrap(), Exit::Killed);
    let elapsed = cancelled_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "the kill took {elapsed:?}"
    );
    assert_container_gone(&attempt.job.name);
}

#[tokio::test]
async fn a_stale_container_of_the_same_name_is_replaced() {
    let executor = executor().await;
    let attempt = attempt("stale", &["echo", "fresh"], "");
    let created = docker_cli(&[
        "create",
        "--name",
        &attempt.job.name,
        IMAGE,
        "echo",
        "stale",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let (result, printed) = run(&executor, &attempt.job).await;
    assert_eq!(result.unwrap(), Exit::Code(0));
    assert_eq!(printed.stdout(), "fresh\n");
}

#[tokio::test]
async fn a_missing_image_fails_to_start_and_names_the_image() {
    let executor = executor().await;
    let image = "herd-test-no-such-image:never";
    let attempt = attempt_with_image("noimage", image, &["true"], "");
    let (result, _) = run(&executor, &attempt.job).await;
    let error = result.unwrap_err();
    assert!(matches!(&error, Error::Refused { .. }), "{error:?}");
    let message = error.chain();
    assert!(message.contains(image), "{message}");
    assert!(
        message.contains("neither present locally nor pullable"),
        "{message}"
    );
}

#[tokio::test]
async fn privileged_needs_the_worker_to_allow_it() {
    let executor = executor().await;
    let attempt = attempt("privileged", &["true"], "--privileged");
    let (result, _) = run(&executor, &attempt.job).await;
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::Start(message) if message.contains("--allow-privileged")),
        "{error}"
    );

    // Allowed, the container reaches the engine. Whether a privileged container can start
    // depends on the host (not inside an unprivileged container, for one), so only the
    // refusal is checked to be gone.
    let allowing = executor.allow_privileged(true);
    let (result, _) = run(&allowing, &attempt.job).await;
    if let Err(error) = result {
        assert!(!error.to_string().contains("--allow-privileged"), "{error}");
    }
}

#[tokio::test]
async fn a_bare_task_is_refused() {
    let executor = executor().await;
    let mut attempt = attempt("bare", &["true"], "");
    let mut request = attempt.job.spec.to_request();
    request.docker_image = None;
    attempt.job.spec = Arc::new(TaskSpec::new(request).unwrap());
    let (result, _) = run(&executor, &attempt.job).await;
    assert!(matches!(result, Err(Error::Start(_))), "{result:?}");
}

#[tokio::test]
async fn a_container_the_engine_refuses_to_create_fails_with_the_engine_s_reason() {
    let executor = executor().await;
    // The option parser takes any size; the engine refuses a memory limit below its minimum.
    let attempt = attempt("refused", &["true"], "-m 1k");
    let (result, _) = run(&executor, &attempt.job).await;
    let error = result.unwrap_err();
    assert!(matches!(&error, Error::Refused { .. }), "{error:?}");
    let shown = error.chain();
    assert!(
        shown.contains("cannot create the container")
            && shown.contains("check the task's docker options"),
        "{shown}"
    );
    // The engine's own words, kept as the typed cause.
    assert!(
        shown.to_lowercase().contains("minimum memory limit"),
        "{shown}"
    );
}
