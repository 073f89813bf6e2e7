//! The Docker executor: one container per attempt, driven through bollard.
//!
//! An attempt runs as the container named [`Job::name`]: the image of the task's
//! [`DockerSpec`], the task's command as `Cmd` (argv, no shell), herd's directories mounted on
//! `/input`, `/output`, `/resource` (read-only) and `/tmp`, and the `-O` options turned into the
//! matching container settings. The executor attaches to the container *before* starting it,
//! so not a byte of output is lost however quickly the command exits, and removes the container
//! (with its anonymous volumes) whatever happens: success, failure, error or cancellation.
//!
//! # Layout
//! - [`DockerExecutor`]: connecting to the engine and the [`Executor`] implementation.
//! - `container_body` and its helpers: pure functions from a [`Job`] to the engine's
//!   `ContainerCreateBody`, unit-tested without an engine in `docker/tests.rs`.
//! - `ContainerGuard`: removes the container even when the attempt's future is dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use herd_proto::docker::SecurityOpt;
use herd_proto::policy::{Policy, socket_refusal};
use herd_proto::spec::DockerSpec;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use herd_proto::session::LogStream;

use super::{Executor, Exit, Job, LogSink};
use crate::Error;

/// Where bollard (and the docker CLI) look for the engine when `DOCKER_HOST` is not set.
const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How long [`DockerExecutor::connect`] waits for the engine to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to keep reading output after the container was killed. The engine closes the
/// attached streams as soon as the container is gone; this only bounds a misbehaving engine.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(10);

/// Every container's security option: no process in it gains privileges through setuid.
const NO_NEW_PRIVILEGES: &str = "no-new-privileges";

/// The exit code of a process killed by SIGKILL, which is what the kernel's OOM killer sends.
const SIGKILL_EXIT_CODE: i32 = 128 + 9;

/// Runs each attempt in its own Docker container.
///
/// Build it with [`DockerExecutor::connect`]. Every container runs with `no-new-privileges`;
/// the worker's [`Policy`] is checked before a container is created. Privileged containers (`-O --privileged`) are
/// refused unless the worker opts in with [`DockerExecutor::allow_privileged`], which is what
/// the worker's `--allow-privileged` flag sets.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    allow_privileged: bool,
    policy: Arc<Policy>,
    /// The real path of the engine's Unix socket, which no task may mount.
    socket: Option<std::path::PathBuf>,
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST` when set, like the docker CLI, else
    /// `unix:///var/run/docker.sock`), negotiates the API version down to what the engine
    /// speaks (bollard defaults to a newer one than e.g. Docker 20.10's 1.41), and pings it.
    ///
    /// Privileged containers are refused until [`DockerExecutor::allow_privileged`] says
    /// otherwise.
    pub async fn connect() -> Result<Self, Error> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
        let advice = "start Docker or run the worker with --executor bare";
        let no_engine = |source: DockerError| Error::Docker {
            context: format!("no Docker engine answers at {host} ({advice})"),
            source,
        };
        let docker = Docker::connect_with_host(&host).map_err(no_engine)?;
        let handshake = async {
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, DockerError>(docker)
        };
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(error)) => return Err(no_engine(error)),
            Err(_) => {
                return Err(Error::Engine(format!(
                    "no Docker engine answers at {host} within {} s: {advice}",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let version = docker.client_version();
        let api_version = format!("{}.{}", version.major_version, version.minor_version);
        info!(%host, %api_version, "connected to the docker engine");
        Ok(DockerExecutor {
            docker,
            allow_privileged: false,
            policy: Arc::new(Policy::default()),
            socket: host
                .strip_prefix("unix://")
                .and_then(|path| real_path(Path::new(path))),
        })
    }

    /// What tasks may take of the host (host folders, named volumes, host namespaces); the
    /// default [`Policy`] allows none of it. A refused task fails before any container exists.
    pub fn policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Whether tasks may run privileged containers (`-O --privileged`); `false` by default.
    /// A refused task fails to start with a message telling how to allow it.
    pub fn allow_privileged(mut self, allow: bool) -> Self {
        self.allow_privileged = allow;
        self
    }

    async fn run_job(
        &self,
        job: &Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> Result<Exit, Error> {
        let Some(docker_spec) = job.spec.docker() else {
            return Err(Error::Start(
                "the task has no docker image: run it on a worker with the bare executor".into(),
            ));
        };
        if docker_spec.options.privileged && !self.allow_privileged {
            return Err(Error::Start(
                "the task asks for --privileged and this worker refuses privileged containers: \
                 run it on a worker started with --allow-privileged"
                    .into(),
            ));
        }
        self.policy
            .check_docker(&docker_spec.options, real_path)
            .map_err(|refusal| Error::Start(refusal.0))?;
        // Docker mounts the real paths that were checked, not links that may change meanwhile.
        let mut checked = docker_spec.clone();
        for volume in &mut checked.options.volumes {
            let Some(real) = real_path(Path::new(&volume.source)) else {
                continue;
            };
            // The socket this worker's engine listens on, wherever `DOCKER_HOST` puts it.
            if self
                .socket
                .as_deref()
                .is_some_and(|socket| socket.starts_with(&real))
            {
                return Err(Error::Start(socket_refusal(volume).0));
            }
            if let Some(real) = real.to_str() {
                volume.source = real.to_owned();
            }
        }
        let body = container_body(job, &checked)?;

        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(Exit::Killed),
            present = self.ensure_image(&docker_spec.image) => present?,
        }

        // A container of this name can only be left over by a worker that crashed mid-attempt.
        remove_container(&self.docker, &job.name)
            .await
            .map_err(|error| {
                engine_error(
                    format!("cannot remove the stale container `{}`", job.name),
                    error,
                )
            })?;

        // Armed before the container exists: dropped mid-create, it still cleans up by name.
        let guard = ContainerGuard::new(self.docker.clone(), job.name.clone());
        let result = self.create_and_run(job, body, &logs, &cancel).await;
        if let Err(error) = guard.remove().await {
            warn!(
                container = %job.name,
                %error,
                "cannot remove the container; the next attempt of this name removes it"
            );
        }
        result
    }

    /// Makes sure `image` is present, pulling it once if it is not.
    async fn ensure_image(&self, image: &str) -> Result<(), Error> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(error) if status_code(&error) == Some(404) => {}
            Err(error) => {
                return Err(engine_error(
                    format!("cannot inspect the image `{image}`"),
                    error,
                ));
            }
        }
        info!(%image, "image not present locally; pulling it");
        let (reference, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(reference);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let mut progress = self.docker.create_image(Some(options.build()), None, None);
        while let Some(item) = progress.next().await {
            if let Err(error) = item {
                return Err(Error::Refused {
                    context: format!(
                        "the image `{image}` is neither present locally nor pullable (load or \
                         build it on this worker, or fix its name)"
                    ),
                    source: error,
                });
            }
        }
        info!(%image, "image pulled");
        Ok(())
    }

    async fn create_and_run(
        &self,
        job: &Job,
        body: ContainerCreateBody,
        logs: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<Exit, Error> {
        let name = job.name.as_str();
        let image = body.image.clone().unwrap_or_default();
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(|error| match status_code(&error) {
                // A bad request is the task's configuration (a mount, a volume, an option).
                Some(400) => Error::Refused {
                    context: format!(
                        "cannot create the container `{name}` from `{image}` (check the task's \
                         docker options)"
                    ),
                    source: error,
                },
                _ => engine_error(format!("cannot create the container `{name}`"), error),
            })?;

        // Attach before starting: output written before the attach would otherwise be lost to
        // us (and with a logging driver that keeps nothing, lost altogether).
        let attach_options = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .docker
            .attach_container(name, Some(attach_options))
            .await
            .map_err(|error| {
                engine_error(format!("cannot attach to the container `{name}`"), error)
            })?;
        let mut output = attached.output;

        if let Err(error) = self.docker.start_container(name, None).await {
            return Err(Error::Refused {
                context: format!(
                    "the container `{name}` from `{image}` did not start (check the command and \
                     the image)"
                ),
                source: error,
            });
        }
        debug!(container = name, %image, "container started");

        // The attached streams end when the container's stdout and stderr close, that is when
        // it exits; only then is the exit code asked for, so every line is delivered first.
        let copied = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            copied = copy_output(&mut output, logs) => Some(copied),
        };
        match copied {
            None => return Ok(self.kill(name, &mut output, logs).await),
            Some(Err(error)) => {
                return Err(engine_error(
                    format!("lost the output of the container `{name}`"),
                    error,
                ));
            }
            Some(Ok(())) => {}
        }

        let code = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(self.kill(name, &mut output, logs).await),
            code = wait_for_exit(&self.docker, name) => code?,
        };
        if code == SIGKILL_EXIT_CODE && self.was_oom_killed(name).await {
            warn!(
                container = name,
                "the container ran out of memory and was killed"
            );
            let message = "herd: the container ran out of memory and was killed; ask for more \
                           with -O --memory, or run it on a larger worker\n";
            logs.send(LogStream::Stderr, message.as_bytes().to_vec())
                .await;
        }
        debug!(container = name, code, "container exited");
        Ok(Exit::Code(code))
    }

    /// Kills the container and forwards what it printed until then.
    async fn kill(
        &self,
        name: &str,
        output: &mut (impl Stream<Item = Result<LogOutput, DockerError>> + Unpin),
        logs: &LogSink,
    ) -> Exit {
        info!(container = name, "cancelled; killing the container");
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        if let Err(error) = self.docker.kill_container(name, Some(options)).await {
            // Not running any more (409) or already gone (404): removal handles the rest.
            debug!(container = name, %error, "kill failed");
        }
        if tokio::time::timeout(DRAIN_AFTER_KILL, copy_output(output, logs))
            .await
            .is_err()
        {
            warn!(
                container = name,
                "the output of the killed container did not end; dropping the rest"
            );
        }
        Exit::Killed
    }

    async fn was_oom_killed(&self, name: &str) -> bool {
        match self.docker.inspect_container(name, None).await {
            Ok(inspect) => inspect
                .state
                .and_then(|state| state.oom_killed)
                .unwrap_or(false),
            Err(error) => {
                debug!(container = name, %error, "cannot inspect the exited container");
                false
            }
        }
    }
}

impl Executor for DockerExecutor {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<Exit, Error>> {
        self.run_job(job, logs, cancel).boxed()
    }

    fn name(&self) -> &'static str {
        "docker"
    }
}

/// Removes the container of an attempt when dropped, unless [`ContainerGuard::remove`] did.
/// The normal paths call `remove` and wait for it; the drop is for an attempt whose future is
/// abandoned mid-way, which must not leave a container running on the host. The removal it
/// spawns needs the runtime to live on (it does in a worker; a runtime shutting down at once,
/// as at the end of a failed test, may never run it).
struct ContainerGuard {
    docker: Docker,
    name: String,
    armed: bool,
}

impl ContainerGuard {
    fn new(docker: Docker, name: String) -> Self {
        ContainerGuard {
            docker,
            name,
            armed: true,
        }
    }

    async fn remove(mut self) -> Result<(), DockerError> {
        self.armed = false;
        remove_container(&self.docker, &self.name).await
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(container = %self.name, "no runtime left to remove the container");
            return;
        };
        let docker = self.docker.clone();
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            if let Err(error) = remove_container(&docker, &name).await {
                warn!(container = %name, %error, "cannot remove an abandoned attempt's container");
            }
        });
    }
}

/// Force-removes a container and its anonymous volumes; one that does not exist, or that the
/// engine is already removing, is not an error.
async fn remove_container(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(error) if status_code(&error) == Some(404) => Ok(()),
        Err(error)
            if status_code(&error) == Some(409)
                && server_message(&error).contains("already in progress") =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Forwards the attached output to `logs` until the container closes its stdout and stderr.
async fn copy_output(
    output: &mut (impl Stream<Item = Result<LogOutput, DockerError>> + Unpin),
    logs: &LogSink,
) -> Result<(), DockerError> {
    while let Some(chunk) = output.next().await {
        match chunk? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                logs.send(LogStream::Stdout, message.to_vec()).await;
            }
            LogOutput::StdErr { message } => logs.send(LogStream::Stderr, message.to_vec()).await,
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(())
}

/// The exit code of a container that has stopped (or is about to).
async fn wait_for_exit(docker: &Docker, name: &str) -> Result<i32, Error> {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut responses = docker.wait_container(name, Some(options));
    // bollard turns a non-zero exit into an error; both carry the code.
    let code = match responses.next().await {
        Some(Ok(response)) => response.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(error)) => {
            return Err(engine_error(
                format!("cannot wait for the container `{name}`"),
                error,
            ));
        }
        None => {
            return Err(Error::Engine(format!(
                "the engine gave no exit code for the container `{name}`: check the engine's logs"
            )));
        }
    };
    i32::try_from(code).map_err(|_| {
        Error::Engine(format!(
            "the container `{name}` exited with the impossible code {code}"
        ))
    })
}

/// The real path of the host path `path`: symbolic links and `..` resolved by the file system
/// in its longest existing ancestor, the rest (which Docker creates) appended and normalised.
/// `None` for a relative path or a named volume.
fn real_path(path: &Path) -> Option<std::path::PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let joined = missing
                .iter()
                .rev()
                .fold(real, |real, name| real.join(name));
            return Some(herd_proto::policy::normalise(&joined));
        }
        missing.push(existing.file_name().unwrap_or(std::ffi::OsStr::new("..")));
        existing = existing.parent()?;
    }
}

/// Builds what the engine needs to create the attempt's container.
fn container_body(job: &Job, docker_spec: &DockerSpec) -> Result<ContainerCreateBody, Error> {
    let options = &docker_spec.options;
    let dirs = &job.dirs;
    let mounts = vec![
        bind_mount(&dirs.input, "/input", false)?,
        bind_mount(&dirs.output, "/output", false)?,
        bind_mount(&dirs.resource, "/resource", true)?,
        bind_mount(&dirs.tmp, "/tmp", false)?,
    ];
    // `-v` keeps docker's own semantics (a missing host directory is created, a name is a
    // named volume), which is what `Binds` does and a bind `Mount` does not.
    let binds: Vec<String> = options
        .volumes
        .iter()
        .map(|volume| {
            let mode = if volume.read_only { ":ro" } else { "" };
            format!("{}:{}{mode}", volume.source, volume.target)
        })
        .collect();
    let host_config = HostConfig {
        mounts: Some(mounts),
        binds: (!binds.is_empty()).then_some(binds),
        device_requests: options.gpus.as_deref().map(|gpus| vec![gpu_request(gpus)]),
        shm_size: options.shm_size,
        network_mode: options.network.clone(),
        memory: options.memory,
        nano_cpus: options.nano_cpus,
        privileged: options.privileged.then_some(true),
        cap_add: (!options.cap_add.is_empty()).then(|| options.cap_add.clone()),
        cap_drop: (!options.cap_drop.is_empty()).then(|| options.cap_drop.clone()),
        devices: (!options.devices.is_empty()).then(|| {
            options
                .devices
                .iter()
                .map(|device| DeviceMapping {
                    path_on_host: Some(device.host.clone()),
                    path_in_container: Some(device.container.clone()),
                    cgroup_permissions: Some(device.permissions.clone()),
                })
                .collect()
        }),
        pid_mode: options.pid.clone(),
        ipc_mode: options.ipc.clone(),
        uts_mode: options.uts.clone(),
        userns_mode: options.userns.clone(),
        security_opt: Some(security_options(&options.security_opt)),
        ..Default::default()
    };
    let entrypoint = options.entrypoint.as_ref().map(|entrypoint| {
        // As in `docker run --entrypoint ""`: an empty string clears the image's entrypoint.
        vec![entrypoint.clone()]
    });
    let labels = [
        ("herd.task".to_owned(), job.task_id.to_string()),
        ("herd.attempt".to_owned(), job.attempt.to_string()),
    ];
    Ok(ContainerCreateBody {
        image: Some(docker_spec.image.clone()),
        cmd: Some(job.spec.command().to_vec()),
        entrypoint,
        env: Some(container_env(&job.env, &options.env)),
        user: user(job.spec.uid(), job.spec.gid()),
        working_dir: options.workdir.clone(),
        labels: Some(labels.into_iter().collect()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The container's security options: herd's `no-new-privileges` (a setuid binary in the image
/// must not turn the task's user into root), then the task's own. Only a task whose last
/// `no-new-privileges` says `false` goes without it, and the worker's policy refused that
/// task unless it allows `security-opt=unconfined`.
fn security_options(task_options: &[SecurityOpt]) -> Vec<String> {
    let no_new_privileges = task_options
        .iter()
        .rev()
        .find_map(|option| match option {
            SecurityOpt::NoNewPrivileges(value) => Some(*value),
            _ => None,
        })
        .unwrap_or(true);
    let mut engine_options = Vec::with_capacity(task_options.len() + 1);
    engine_options.push(if no_new_privileges {
        NO_NEW_PRIVILEGES.to_owned()
    } else {
        SecurityOpt::NoNewPrivileges(false).engine_value()
    });
    engine_options.extend(
        task_options
            .iter()
            .filter(|option| !matches!(option, SecurityOpt::NoNewPrivileges(_)))
            .map(SecurityOpt::engine_value),
    );
    engine_options
}

/// A bind mount of one of herd's directories. A `Mount` rather than a `Binds` string: a host
/// path containing `:` stays one path, and a missing directory is an error, not a new one.
fn bind_mount(source: &Path, target: &str, read_only: bool) -> Result<Mount, Error> {
    let absolute = std::path::absolute(source).map_err(|error| {
        Error::io(
            format!("cannot resolve the directory {}", source.display()),
            error,
        )
    })?;
    let Some(source) = absolute.to_str() else {
        return Err(Error::Start(format!(
            "the directory {} is not valid UTF-8 and cannot be given to docker: use a worker \
             directory with a plain name",
            absolute.display()
        )));
    };
    Ok(Mount {
        typ: Some(MountType::BIND),
        source: Some(source.to_owned()),
        target: Some(target.to_owned()),
        read_only: Some(read_only),
        ..Default::default()
    })
}

/// The container's environment: the executor's common variables, then `-e`, a later value of
/// a key replacing an earlier one. `-e KEY` takes the worker's value and, like docker, leaves
/// the variable out when the worker has none.
fn container_env(job_env: &[(String, String)], option_env: &[String]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set =
        |key: &str, value: String| match merged.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1 = value,
            None => merged.push((key.to_owned(), value)),
        };
    for (key, value) in job_env {
        set(key, value.clone());
    }
    for entry in option_env {
        // The parser refuses `-e KEY` without a value: the worker's environment is its own.
        if let Some((key, value)) = entry.split_once('=') {
            set(key, value.to_owned());
        }
    }
    merged
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// Docker's `User`: `uid:gid`, `uid` alone, or `0:gid` for a group alone.
fn user(uid: Option<u32>, gid: Option<u32>) -> Option<String> {
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some(format!("{uid}:{gid}")),
        (Some(uid), None) => Some(uid.to_string()),
        (None, Some(gid)) => Some(format!("0:{gid}")),
        (None, None) => None,
    }
}

/// `--gpus` as docker's CLI sends it: `all`, a count, or `device=ID,ID`.
fn gpu_request(gpus: &str) -> DeviceRequest {
    let (count, device_ids) = if gpus == "all" {
        (Some(-1), None)
    } else if let Some(ids) = gpus.strip_prefix("device=") {
        let ids = ids.split(',').map(str::trim).filter(|id| !id.is_empty());
        (None, Some(ids.map(str::to_owned).collect()))
    } else {
        // The option parser accepted only a positive count here.
        (gpus.parse::<i64>().ok(), None)
    };
    DeviceRequest {
        driver: Some(String::new()),
        count,
        device_ids,
        capabilities: Some(vec![vec!["gpu".to_owned()]]),
        ..Default::default()
    }
}

/// What to ask the engine to pull: an image without a tag or digest means `:latest`, as with
/// `docker pull` (the API alone would pull every tag of the repository).
fn pull_reference(image: &str) -> (&str, Option<&str>) {
    let last_component = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last_component.contains(':') {
        (image, None)
    } else {
        (image, Some("latest"))
    }
}

fn status_code(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message when there is one, rather than bollard's wrapping of it.
fn server_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn engine_error(context: String, source: DockerError) -> Error {
    Error::Docker { context, source }
}

#[cfg(test)]
mod tests;
