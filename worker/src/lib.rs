//! herd-worker: takes the tasks of one batch from a herd server and runs them.
//!
//! # Layout
//! - [`run`] / [`run_with`]: connect, run tasks, reconnect after any break, until shutdown
//!   (or until the server deletes the worker).
//! - `session`: the one long-lived bidirectional gRPC stream: hello (with every task the
//!   worker holds), assignments and cancellations in, state reports, logs and heartbeats out.
//!   Terminal reports stay in its outbox until the server acknowledges them. Its `link`
//!   module is the only code that sees protobuf.
//! - `runner`: one attempt from assignment to final report, phase by phase: staging
//!   (`/input`, `/resource`), a run slot, the executor under the run deadline, the outcome,
//!   the upload of `/output`; it reports through a `Reporter`.
//! - [`executor`]: how a command runs: Docker (bollard) or a bare process group.
//! - `staging`: inputs, resources and outputs through herd-fetch, behind a trait.
//! - `folders`: the attempts' folders, reused, emptied by a janitor thread.
//! - `cleaning`: failed attempts' folders removed after `--keep-failed`, the resource cache
//!   kept under `--cache-max-size`.
//! - [`Error`]: the crate's one error type; [`Error::chain`] is what people see.

use std::path::PathBuf;
use std::sync::Arc;

use herd_proto::BatchName;
use herd_proto::access::Secret;
use herd_proto::policy::Policy;
use herd_proto::transport::ClientTls;
use tokio_util::sync::CancellationToken;

mod cleaning;
mod error;
pub mod executor;
mod folders;
mod runner;
mod session;
mod staging;

pub use error::Error;
use executor::Executor;

/// Which executors a worker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Docker tasks only: tasks without an image go to workers with a bare executor. Fails
    /// at start if no Docker engine answers.
    Docker,
    /// Bare processes only; tasks that need Docker go to other workers.
    Bare,
    /// Docker if an engine answers, bare otherwise (what `herd up` uses).
    Auto,
}

/// Everything a worker needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's URL, e.g. `http://127.0.0.1:4373` or `https://herd.example.org:4373`.
    pub server: String,
    /// How the connection is secured: the CAs trusted besides the system's, the client
    /// certificate presented, whether plaintext beyond loopback is allowed
    /// ([`herd_proto::transport::ClientTls::from_env`] reads them from `HERD_*` variables).
    pub tls: ClientTls,
    /// The worker's name (the host name by default).
    pub name: String,
    /// The batch it serves.
    pub batch: BatchName,
    /// Tasks run at once (at least 1).
    pub concurrency: u32,
    /// Extra tasks staged ahead of a free slot.
    pub prefetch: u32,
    /// Executors offered.
    pub executor: ExecutorKind,
    /// Run `--privileged` Docker tasks.
    pub allow_privileged: bool,
    /// What else tasks may take of the host: host folders, named volumes, host namespaces,
    /// root, the worker's environment variables (see [`herd_proto::policy`]).
    pub policy: Policy,
    /// Scratch space: one folder per attempt, and the resource cache.
    pub work_dir: PathBuf,
    /// CPU cores given to tasks (`CPU` = cores / concurrency).
    pub cores: u32,
    /// Memory given to tasks, bytes (`MEM` = memory / concurrency, in GB).
    pub memory_bytes: u64,
    /// The worker token it connects with (`herd token create --worker`).
    pub token: Secret,
    /// How long a failed attempt's folder is kept for inspection (`--keep-failed`).
    pub keep_failed: std::time::Duration,
    /// The most the resource cache keeps, bytes (`--cache-max-size`); least recently used
    /// entries go first.
    pub cache_max_bytes: u64,
}

/// The default of [`Config::keep_failed`]: a day.
pub const DEFAULT_KEEP_FAILED: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The default of [`Config::cache_max_bytes`]: 50 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 50 << 30;

/// The executors a worker runs tasks with.
#[derive(Clone)]
pub struct Executors {
    /// For tasks without a Docker image; `None` on workers started with `--executor docker`,
    /// which run Docker tasks only (the server sends them no other).
    pub bare: Option<Arc<dyn Executor>>,
    /// For tasks with a Docker image; `None` on workers without Docker.
    pub docker: Option<Arc<dyn Executor>>,
}

/// Host facts used for defaults: cores and memory.
pub fn host_resources() -> (u32, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get() as u32);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    (cores, memory)
}

/// Builds the executors `config` asks for.
pub async fn executors(config: &Config) -> Result<Executors, Error> {
    let policy = Arc::new(config.policy.clone());
    let bare: Option<Arc<dyn Executor>> = (config.executor != ExecutorKind::Docker).then(|| {
        Arc::new(executor::bare::BareExecutor::with_policy(policy.clone())) as Arc<dyn Executor>
    });
    let docker_with = |docker: executor::docker::DockerExecutor| -> Arc<dyn Executor> {
        Arc::new(
            docker
                .allow_privileged(config.allow_privileged)
                .policy(policy.clone()),
        )
    };
    let docker: Option<Arc<dyn Executor>> = match config.executor {
        ExecutorKind::Bare => None,
        ExecutorKind::Docker => Some(docker_with(
            executor::docker::DockerExecutor::connect().await?,
        )),
        ExecutorKind::Auto => match executor::docker::DockerExecutor::connect().await {
            Ok(docker) => Some(docker_with(docker)),
            Err(error) => {
                tracing::info!(error = %error.chain(), "no Docker engine: running bare tasks only");
                None
            }
        },
    };
    Ok(Executors { bare, docker })
}

/// Runs a worker until `shutdown` fires or the server deletes it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let executors = executors(&config).await?;
    run_with(config, executors, shutdown).await
}

/// Runs a worker with the given executors (tests and benchmarks pass their own).
pub async fn run_with(
    config: Config,
    executors: Executors,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if config.concurrency == 0 {
        return Err(Error::Config("--concurrency must be at least 1".to_owned()));
    }
    // A URL or TLS setting that can never work stops the worker now, rather than failing
    // every reconnection.
    herd_proto::transport::endpoint(&config.server, &config.tls)
        .map_err(|error| Error::Config(error.to_string()))?;
    std::fs::create_dir_all(&config.work_dir).map_err(|source| Error::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    session::run(Arc::new(config), executors, shutdown)
        .await
        .map_err(Error::Unauthorized)
}
