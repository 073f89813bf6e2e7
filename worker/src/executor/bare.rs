//! The bare executor: the command runs as a process on the worker's host, for hosts without
//! Docker (scitq's "no docker" mode).
//!
//! The process starts in the attempt's folder, in a process group of its own (so a kill
//! reaches its children). When the command exits, what it left running in its group is
//! killed: a task ends with its command.
//!
//! # Environment
//! The worker's environment is *not* inherited (it may hold cloud keys or tokens). A task gets:
//! - `PATH` (the worker's, or `/usr/local/bin:/usr/bin:/bin`), and `LANG` and `TZ` when the
//!   worker has them;
//! - `HOME` set to the attempt's folder (tools that write dotfiles write them there, not in
//!   the worker's home); a worker that passes `--pass-env HOME` gives its own instead;
//! - the variables the worker names with `--pass-env NAME`, with the worker's values;
//! - herd's own: `INPUT`, `OUTPUT`, `RESOURCE`, `TEMP` (and `TMPDIR`), the attempt's folders
//!   without a trailing slash, and `CPU`, `THREADS`, `MEM`, `HERD_TASK_ID`, `HERD_ATTEMPT`.
//!
//! The fixed part is built once per worker ([`BareExecutor::with_policy`]), not per task.
//! A task asking for uid 0 or gid 0 is refused unless the worker's policy allows root.
//!
//! A command named without a slash is looked up on the worker's `PATH` once (see
//! [`ProgramPaths`]), not at every start.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use herd_proto::policy::Policy;
use herd_proto::session::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Executor, Exit, Job, LogSink};
use crate::Error;

/// What `PATH` is when the worker has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs commands as host processes.
#[derive(Debug, Clone)]
pub struct BareExecutor {
    programs: Arc<ProgramPaths>,
    /// The worker's part of every task's environment, in the order it is applied.
    base_env: Arc<[(OsString, OsString)]>,
    policy: Arc<Policy>,
}

impl Default for BareExecutor {
    fn default() -> Self {
        BareExecutor::new()
    }
}

impl BareExecutor {
    /// A bare executor with the default policy: no root, no variable passed from the worker.
    pub fn new() -> Self {
        BareExecutor::with_policy(Arc::new(Policy::default()))
    }

    /// A bare executor following `policy` (`--allow-root`, `--pass-env`).
    pub fn with_policy(policy: Arc<Policy>) -> Self {
        let worker = |name: &str| std::env::var_os(name).map(|value| (OsString::from(name), value));
        let path = worker("PATH").unwrap_or_else(|| ("PATH".into(), DEFAULT_PATH.into()));
        let base_env = std::iter::once(path)
            .chain(["LANG", "TZ"].into_iter().filter_map(worker))
            .chain(policy.pass_env.iter().filter_map(|name| worker(name)))
            .collect();
        BareExecutor {
            programs: Arc::default(),
            base_env,
            policy,
        }
    }
}

/// Where the commands named without a slash were found on the worker's `PATH`.
///
/// `execvp` searches `PATH` in the child at every start: one `execve` per directory until one
/// succeeds. With the long `PATH`s of scientific hosts (pyenv, conda, cargo, modules before
/// `/usr/bin`) the failed `execve`s cost more than starting a short command itself. So the
/// worker looks a name up once, as `execvp` would (the first executable regular file along
/// `PATH`), and starts that path with the name as `argv[0]`. A path that no longer starts (the
/// file is gone) is looked up again. A `PATH` with a relative directory (which would depend on
/// the task's folder) is left to `execvp`.
#[derive(Debug, Default)]
struct ProgramPaths {
    found: Mutex<HashMap<String, PathBuf>>,
}

impl ProgramPaths {
    fn found(&self) -> std::sync::MutexGuard<'_, HashMap<String, PathBuf>> {
        self.found
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The path to start for `program`, or `None` to let `execvp` search.
    fn resolve(&self, program: &str) -> Option<PathBuf> {
        if program.is_empty() || program.contains('/') {
            return None;
        }
        if let Some(path) = self.found().get(program) {
            return Some(path.clone());
        }
        let path = search_path(program, &std::env::var_os("PATH")?)?;
        self.found().insert(program.to_owned(), path.clone());
        Some(path)
    }

    fn forget(&self, program: &str) {
        self.found().remove(program);
    }
}

/// The first executable regular file named `program` along `path`, like `execvp`; `None` when
/// there is none or a relative directory comes first.
fn search_path(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    for dir in std::env::split_paths(path) {
        if !dir.is_absolute() {
            return None;
        }
        let candidate = dir.join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        if executable {
            return Some(candidate);
        }
    }
    None
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

/// The most a pump reads at once.
const CHUNK: usize = 64 * 1024;

async fn pump(mut reader: impl AsyncRead + Unpin, stream: LogStream, logs: LogSink) {
    // Read into spare capacity: no 64 KiB zeroed per stream per task, most of which print
    // little or nothing.
    let mut buffer = Vec::with_capacity(CHUNK);
    loop {
        buffer.clear();
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => logs.send(stream, buffer.clone()).await,
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

/// The command of `job`, started from `resolved` (with the name as `argv[0]`) when given, in
/// an environment of `base_env` and the job's own variables only.
fn command_for(job: &Job, base_env: &[(OsString, OsString)], resolved: Option<&Path>) -> Command {
    let program = &job.spec.command()[0];
    let mut command = match resolved {
        Some(path) => {
            let mut command = Command::new(path);
            command.arg0(program);
            command
        }
        None => Command::new(program),
    };
    command
        .args(&job.spec.command()[1..])
        .current_dir(&job.dirs.root)
        .env_clear()
        .env("HOME", no_slash(&job.dirs.root))
        .envs(base_env.iter().map(|(key, value)| (key, value)))
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
    if let Some(uid) = job.spec.uid() {
        command.uid(uid);
    }
    if let Some(gid) = job.spec.gid() {
        command.gid(gid);
    }
    command
}

impl Executor for BareExecutor {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        Box::pin(async move {
            let program = &job.spec.command()[0];
            self.policy
                .check_user(job.spec.uid(), job.spec.gid())
                .map_err(|refusal| Error::Start(refusal.0))?;
            let base_env = &self.base_env;
            // Another user's rights may differ: the search is left to execvp then.
            let resolved = if job.spec.uid().is_none() && job.spec.gid().is_none() {
                self.programs.resolve(program)
            } else {
                None
            };
            let spawned = match &resolved {
                Some(path) => match command_for(job, base_env, Some(path)).spawn() {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        self.programs.forget(program);
                        command_for(job, base_env, None).spawn()
                    }
                    other => other,
                },
                None => command_for(job, base_env, None).spawn(),
            };
            let mut child = spawned.map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::Start(format!("`{program}` is not found on this worker's PATH"))
                }
                std::io::ErrorKind::PermissionDenied => {
                    Error::Start(format!("`{program}` cannot be executed: permission denied"))
                }
                _ => Error::io(format!("cannot start `{program}`"), error),
            })?;
            let group = child.id().unwrap_or(0);
            let stdout = child
                .stdout
                .take()
                .map(|pipe| tokio::spawn(pump(pipe, LogStream::Stdout, logs.clone())));
            let stderr = child
                .stderr
                .take()
                .map(|pipe| tokio::spawn(pump(pipe, LogStream::Stderr, logs.clone())));
            drop(logs);
            let waited = tokio::select! {
                status = child.wait() => Some(status),
                _ = cancel.cancelled() => None,
            };
            // The task is over: whatever it left in its group goes too, which also closes the
            // pipes so the pumps finish.
            kill_group(group);
            let status = match waited {
                Some(status) => Some(
                    status.map_err(|source| Error::io("waiting for the task's process", source))?,
                ),
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

    use herd_proto::{TaskId, TaskRequest, TaskSpec};

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
            spec: Arc::new(
                TaskSpec::new(TaskRequest {
                    command: command.iter().map(|word| word.to_string()).collect(),
                    ..TaskRequest::default()
                })
                .unwrap(),
            ),
            dirs,
            env: vec![("CPU".to_owned(), "3".to_owned())],
            name: "test".to_owned(),
        }
    }

    async fn run(job: &Job, cancel: CancellationToken) -> (Result<Exit, Error>, Vec<u8>, Vec<u8>) {
        let (sink, mut receiver) = LogSink::channel(16);
        let collector = tokio::spawn(async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some((stream, data)) = receiver.recv().await {
                match stream {
                    LogStream::Stdout => out.extend(data),
                    LogStream::Stderr => err.extend(data),
                }
            }
            (out, err)
        });
        let result = BareExecutor::new().run(job, sink, cancel).await;
        let (out, err) = collector.await.unwrap();
        (result, out, err)
    }

    #[test]
    fn the_path_search_finds_the_first_executable_file_like_execvp() {
        let root = tempfile::tempdir().unwrap();
        let [empty, plain, first, second] =
            ["empty", "plain", "first", "second"].map(|name| root.path().join(name));
        for dir in [&empty, &plain, &first, &second] {
            std::fs::create_dir(dir).unwrap();
        }
        // Not executable, a folder, then two executables: the first of those wins.
        std::fs::write(plain.join("tool"), "").unwrap();
        std::fs::create_dir(empty.join("tool")).unwrap();
        for dir in [&first, &second] {
            std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join("tool"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let path = std::env::join_paths([&empty, &plain, &first, &second]).unwrap();
        assert_eq!(search_path("tool", &path), Some(first.join("tool")));
        assert_eq!(search_path("missing", &path), None);
        // A relative directory before the match depends on the task's folder: left to execvp.
        let relative = std::env::join_paths([Path::new("bin"), &first]).unwrap();
        assert_eq!(search_path("tool", &relative), None);
    }

    #[tokio::test]
    async fn a_command_found_on_the_path_keeps_its_name_as_argv0() {
        let dir = tempfile::tempdir().unwrap();
        let executor = BareExecutor::new();
        for _ in 0..2 {
            // The second run starts the path found by the first.
            let job = job(dir.path(), &["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline"]);
            let (sink, mut receiver) = LogSink::channel(16);
            let result = executor.run(&job, sink, CancellationToken::new()).await;
            assert_eq!(result.unwrap(), Exit::Code(0));
            let mut out = Vec::new();
            while let Some((_, data)) = receiver.recv().await {
                out.extend(data);
            }
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("sh -c "), "argv: {out:?}");
        }
        assert!(executor.programs.found().contains_key("sh"));
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

    async fn run_with(executor: &BareExecutor, job: &Job) -> (Result<Exit, Error>, String) {
        let (sink, mut receiver) = LogSink::channel(16);
        let result = executor.run(job, sink, CancellationToken::new()).await;
        let mut out = Vec::new();
        while let Some((_, data)) = receiver.recv().await {
            out.extend(data);
        }
        (result, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn the_worker_environment_stays_the_worker_s_unless_passed() {
        // cargo sets CARGO_MANIFEST_DIR for the tests it runs: a variable this worker has.
        let worker_value = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"${CARGO_MANIFEST_DIR-absent} $HOME ${PATH:+path}\"; env | wc -l";
        let job = job(dir.path(), &["sh", "-c", script]);
        let (result, out) = run_with(&BareExecutor::new(), &job).await;
        assert_eq!(result.unwrap(), Exit::Code(0));
        let mut lines = out.lines();
        let home = no_slash(dir.path());
        assert_eq!(lines.next().unwrap(), format!("absent {home} path"));
        // PATH, HOME, herd's seven, CPU, sh's own PWD (and LANG and TZ when set): no more.
        let count: usize = lines.next().unwrap().trim().parse().unwrap();
        assert!(count <= 13, "{count} variables: {out}");

        let mut policy = Policy::default();
        policy.pass_env("CARGO_MANIFEST_DIR").unwrap();
        let passing = BareExecutor::with_policy(Arc::new(policy));
        let (result, out) = run_with(&passing, &job).await;
        assert_eq!(result.unwrap(), Exit::Code(0));
        assert!(
            out.starts_with(&format!("{worker_value} {home} path\n")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn root_needs_the_worker_to_allow_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut root_job = job(dir.path(), &["id", "-u"]);
        let mut request = root_job.spec.to_request();
        request.uid = Some(0);
        root_job.spec = Arc::new(TaskSpec::new(request).unwrap());
        let (result, _) = run_with(&BareExecutor::new(), &root_job).await;
        let error = result.unwrap_err();
        assert!(
            matches!(&error, Error::Start(message) if message.contains("--allow-root")),
            "{error}"
        );
        let allowing = BareExecutor::with_policy(Arc::new(Policy {
            root: true,
            ..Policy::default()
        }));
        let (result, out) = run_with(&allowing, &root_job).await;
        // The tests run as root; elsewhere setuid(0) fails, which is the host's refusal.
        if result.is_ok() {
            assert_eq!(out, "0\n");
        }
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
