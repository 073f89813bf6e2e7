//! The bare executor: the command runs as a process on the worker's host, for hosts without
//! Docker (scitq's "no docker" mode).
//!
//! The process starts in the attempt's folder, in a process group of its own (so a kill
//! reaches its children), with `INPUT`, `OUTPUT`, `RESOURCE`, `TEMP` (and `TMPDIR`) set to the
//! attempt's folders, without a trailing slash, plus `CPU`, `THREADS` and `MEM`. When the
//! command exits, what it left running in its group is killed: a task ends with its command.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{ExecError, Executor, Exit, Job, LogSink, Stream};

/// Runs commands as host processes.
#[derive(Debug, Default, Clone)]
pub struct BareExecutor {}

impl BareExecutor {
    /// A bare executor.
    pub fn new() -> Self {
        BareExecutor {}
    }
}

/// Sends SIGKILL to every process of the group `group`.
fn kill_group(group: u32) {
    let Ok(group) = i32::try_from(group) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects; a negative pid names
    // the process group we created for this task. ESRCH (already gone) is fine.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

async fn pump(mut reader: impl AsyncRead + Unpin, stream: Stream, logs: LogSink) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => logs.send(stream, buffer[..count].to_vec()).await,
        }
    }
}

fn no_slash(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    match text.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

impl Executor for BareExecutor {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, ExecError>> {
        Box::pin(async move {
            let program = &job.spec.command[0];
            let mut command = Command::new(program);
            command
                .args(&job.spec.command[1..])
                .current_dir(&job.dirs.root)
                .envs(
                    job.env
                        .iter()
                        .map(|(key, value)| (key.as_str(), value.as_str())),
                )
                .env("INPUT", no_slash(&job.dirs.input))
                .env("OUTPUT", no_slash(&job.dirs.output))
                .env("RESOURCE", no_slash(&job.dirs.resource))
                .env("TEMP", no_slash(&job.dirs.tmp))
                .env("TMPDIR", no_slash(&job.dirs.tmp))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            if let Some(uid) = job.spec.uid {
                command.uid(uid);
            }
            if let Some(gid) = job.spec.gid {
                command.gid(gid);
            }
            let mut child = command.spawn().map_err(|error| {
                ExecError::Start(match error.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("`{program}` is not found on this worker's PATH")
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        format!("`{program}` cannot be executed: permission denied")
                    }
                    _ => format!("`{program}`: {error}"),
                })
            })?;
            let group = child.id().unwrap_or(0);
            let stdout = child
                .stdout
                .take()
                .map(|pipe| tokio::spawn(pump(pipe, Stream::Stdout, logs.clone())));
            let stderr = child
                .stderr
                .take()
                .map(|pipe| tokio::spawn(pump(pipe, Stream::Stderr, logs.clone())));
            drop(logs);
            let waited = tokio::select! {
                status = child.wait() => Some(status),
                _ = cancel.cancelled() => None,
            };
            // The task is over: whatever it left in its group goes too, which also closes the
            // pipes so the pumps finish.
            kill_group(group);
            let status = match waited {
                Some(status) => Some(status.map_err(|source| ExecError::Io {
                    context: "waiting for the task's process".to_owned(),
                    source,
                })?),
                None => {
                    let _ = child.wait().await;
                    None
                }
            };
            for pump in [stdout, stderr].into_iter().flatten() {
                let _ = pump.await;
            }
            Ok(match status {
                None => Exit::Killed,
                Some(status) => Exit::Code(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                ),
            })
        })
    }

    fn name(&self) -> &'static str {
        "bare"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use herd_proto::{BatchName, TaskId, TaskSpec};

    use super::*;
    use crate::executor::TaskDirs;

    fn job(root: &std::path::Path, command: &[&str]) -> Job {
        let dirs = TaskDirs {
            root: root.to_path_buf(),
            input: root.join("input"),
            output: root.join("output"),
            resource: root.join("resource"),
            tmp: root.join("tmp"),
        };
        for dir in [&dirs.input, &dirs.output, &dirs.resource, &dirs.tmp] {
            std::fs::create_dir_all(dir).unwrap();
        }
        Job {
            task_id: TaskId(1),
            attempt: 1,
            spec: Arc::new(TaskSpec::new(
                BatchName::default_batch(),
                command.iter().map(|word| word.to_string()).collect(),
            )),
            dirs,
            env: vec![("CPU".to_owned(), "3".to_owned())],
            name: "test".to_owned(),
        }
    }

    async fn run(
        job: &Job,
        cancel: CancellationToken,
    ) -> (Result<Exit, ExecError>, Vec<u8>, Vec<u8>) {
        let (sink, mut receiver) = LogSink::channel(16);
        let collector = tokio::spawn(async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some((stream, data)) = receiver.recv().await {
                match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                }
            }
            (out, err)
        });
        let result = BareExecutor::new().run(job, sink, cancel).await;
        let (out, err) = collector.await.unwrap();
        (result, out, err)
    }

    #[tokio::test]
    async fn runs_with_the_task_environment() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(
            dir.path(),
            &[
                "sh",
                "-c",
                "echo \"$CPU $INPUT\"; echo err >&2; echo data > \"$OUTPUT/f\"; exit 3",
            ],
        );
        let (result, out, err) = run(&job, CancellationToken::new()).await;
        assert_eq!(result.unwrap(), Exit::Code(3));
        let expected = format!("3 {}\n", dir.path().join("input").display());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(err, b"err\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("output/f")).unwrap(),
            "data\n"
        );
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), &["sh", "-c", "sleep 60 & sleep 60"]);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let (result, _, _) = run(&job, cancel).await;
        assert_eq!(result.unwrap(), Exit::Killed);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), &["herd-no-such-program"]);
        let (result, _, _) = run(&job, CancellationToken::new()).await;
        let error = result.unwrap_err().to_string();
        assert!(error.contains("not found on this worker's PATH"), "{error}");
    }
}
