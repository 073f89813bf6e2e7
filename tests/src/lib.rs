//! herd-tests: the test harness and the end-to-end tests.
//!
//! # Layout
//! - [`Cluster`]: a real server (gRPC on `127.0.0.1:0`, a temporary SQLite or PostgreSQL
//!   database, a temporary data directory) and real workers, in-process. The server can be
//!   stopped and started again on the same port and database, to test durability and
//!   reconnection.
//! - [`start_worker`]: an in-process worker of any server, e.g. a `herd server` process
//!   (herd-bench runs its instant-executor worker that way).
//! - [`postgres`]: a fresh PostgreSQL database per test (`HERD_TEST_POSTGRES_URL`).
//! - [`executors`]: executors for tests and benchmarks (an instant one, and a wrapper that
//!   records when attempts start).
//! - [`wait_for`]: waits on a condition with a timeout; never a fixed sleep. The one such
//!   helper of the workspace: herd-fetch's and herd-launch's tests use it too (herd-tests is
//!   their dev-dependency).
//! - [`process`]: the one way to start the `herd` binary (launch's CLI tests, herd-bench).
//!
//! The tests themselves are in `tests/tests/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use herd_proto::pb::queue_client::QueueClient;
use herd_proto::transport::{self, ClientTls};
use herd_proto::view::TaskView;
use herd_proto::{BatchName, TaskId, TaskRequest, TaskSpec, pb};
use herd_server::queue::QueueConfig;
use herd_worker::{ExecutorKind, Executors};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod executors;
pub mod postgres;
pub mod process;

/// How long harness waits last before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 10 ms until it gives a value, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Installs a tracing subscriber once (`RUST_LOG` selects what shows).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Which database a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite in the cluster's temporary data directory.
    Sqlite,
    /// A fresh PostgreSQL database (needs `HERD_TEST_POSTGRES_URL`).
    Postgres,
}

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The database engine.
    pub engine: Engine,
    /// Worker liveness settings.
    pub queue: QueueConfig,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            engine: Engine::Sqlite,
            queue: QueueConfig::default(),
        }
    }
}

/// Settings of one test worker.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Batch served.
    pub batch: String,
    /// Slots.
    pub concurrency: u32,
    /// Extra staged tasks.
    pub prefetch: u32,
    /// Executors; bare only by default.
    pub executors: Option<Executors>,
    /// Accept privileged Docker tasks.
    pub allow_privileged: bool,
    /// What tasks may take of the worker's host; the default allows nothing.
    pub policy: herd_proto::policy::Policy,
    /// How the worker secures its connection; the default is plaintext to loopback.
    pub tls: ClientTls,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            batch: "default".to_owned(),
            concurrency: 2,
            prefetch: 0,
            executors: None,
            allow_privileged: false,
            policy: herd_proto::policy::Policy::default(),
            tls: ClientTls::default(),
        }
    }
}

/// A running in-process worker.
pub struct WorkerHandle {
    /// Its scratch folder.
    pub work_dir: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops the worker (its running attempts are killed) and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Stops the worker at once without waiting, as a crash would (its stream just ends).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// A server and its workers, in-process, on loopback.
pub struct Cluster {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's address.
    pub address: SocketAddr,
    /// The data directory (SQLite database, logs).
    pub data_dir: tempfile::TempDir,
    options: ClusterOptions,
    database: Option<String>,
    postgres: Option<postgres::TestDatabase>,
    server: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    workers_shutdown: CancellationToken,
}

impl Cluster {
    /// A cluster on SQLite with default settings.
    pub async fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with(ClusterOptions::default()).await
    }

    /// A cluster with these settings.
    pub async fn start_with(options: ClusterOptions) -> anyhow::Result<Cluster> {
        init_tracing();
        let data_dir = tempfile::tempdir()?;
        let (database, postgres) = match options.engine {
            Engine::Sqlite => (None, None),
            Engine::Postgres => {
                let database = postgres::TestDatabase::create().await?;
                (Some(database.url().to_owned()), Some(database))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let mut cluster = Cluster {
            url: format!("http://{address}"),
            address,
            data_dir,
            options,
            database,
            postgres,
            server: None,
            workers_shutdown: CancellationToken::new(),
        };
        cluster.serve(listener);
        Ok(cluster)
    }

    fn serve(&mut self, listener: TcpListener) {
        let config = herd_server::Config {
            database: self.database.clone(),
            data_dir: self.data_dir.path().to_path_buf(),
            queue: self.options.queue.clone(),
            tls: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                herd_server::run(config, listener, shutdown)
                    .await
                    .context("server failed")
            }
        });
        self.server = Some((shutdown, task));
    }

    /// Stops the server (workers stay up and will reconnect).
    pub async fn stop_server(&mut self) -> anyhow::Result<()> {
        if let Some((shutdown, task)) = self.server.take() {
            shutdown.cancel();
            task.await??;
        }
        Ok(())
    }

    /// Starts the server again on the same port and database.
    pub async fn restart_server(&mut self) -> anyhow::Result<()> {
        let listener = wait_for("the port to be free", WAIT, || async {
            TcpListener::bind(self.address).await.ok()
        })
        .await?;
        self.serve(listener);
        Ok(())
    }

    /// A client of the `Queue` service, once the server answers.
    pub async fn client(&self) -> anyhow::Result<QueueClient<Channel>> {
        let url = self.url.clone();
        let channel = wait_for("the server to accept connections", WAIT, || {
            let url = url.clone();
            async move {
                transport::endpoint(&url, &ClientTls::default())
                    .ok()?
                    .connect()
                    .await
                    .ok()
            }
        })
        .await?;
        Ok(QueueClient::new(channel)
            .max_decoding_message_size(herd_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(herd_server::MAX_MESSAGE_BYTES))
    }

    /// Starts an in-process worker.
    pub async fn add_worker(&self, options: WorkerOptions) -> anyhow::Result<WorkerHandle> {
        start_worker(&self.url, options, self.workers_shutdown.child_token()).await
    }

    /// Checks and queues tasks; returns their ids.
    pub async fn submit(&self, requests: Vec<TaskRequest>) -> anyhow::Result<Vec<TaskId>> {
        let specs = requests
            .into_iter()
            .map(TaskSpec::new)
            .collect::<Result<Vec<_>, _>>()?;
        let request = pb::SubmitRequest {
            tasks: specs.iter().map(pb::TaskSpec::from).collect(),
        };
        let response = self.client().await?.submit(request).await?;
        Ok(response.into_inner().ids.into_iter().map(TaskId).collect())
    }

    /// Reads one task.
    pub async fn task(&self, id: TaskId) -> anyhow::Result<TaskView> {
        let task = self
            .client()
            .await?
            .get_task(pb::TaskRef { id: id.0 })
            .await?
            .into_inner();
        Ok(TaskView::try_from(task)?)
    }

    /// Waits until `check` holds for task `id`; returns the task then.
    pub async fn wait_task(
        &self,
        id: TaskId,
        what: &str,
        check: impl Fn(&TaskView) -> bool,
    ) -> anyhow::Result<TaskView> {
        let client = self.client().await?;
        let check = &check;
        wait_for(&format!("task {id} to be {what}"), WAIT, || {
            let mut client = client.clone();
            async move {
                let task = client
                    .get_task(pb::TaskRef { id: id.0 })
                    .await
                    .ok()?
                    .into_inner();
                let task = TaskView::try_from(task).ok()?;
                check(&task).then_some(task)
            }
        })
        .await
    }

    /// Whether this cluster runs on PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.workers_shutdown.cancel();
        if let Some((shutdown, _)) = &self.server {
            shutdown.cancel();
        }
    }
}

/// Starts an in-process worker of the server at `server_url` (any server: in-process, or a
/// `herd server` process); it stops when `shutdown` fires or its handle is stopped.
pub async fn start_worker(
    server_url: &str,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkerHandle> {
    let work_dir = tempfile::tempdir()?.keep();
    let (cores, memory_bytes) = herd_worker::host_resources();
    let config = herd_worker::Config {
        server: server_url.to_owned(),
        tls: options.tls,
        name: format!(
            "test-worker-{}",
            work_dir
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("x")
        ),
        batch: BatchName::new(options.batch)?,
        concurrency: options.concurrency,
        prefetch: options.prefetch,
        executor: ExecutorKind::Bare,
        allow_privileged: options.allow_privileged,
        policy: options.policy,
        work_dir: work_dir.clone(),
        cores,
        memory_bytes,
    };
    let executors = match options.executors {
        Some(executors) => executors,
        None => herd_worker::executors(&config).await?,
    };
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            if let Err(error) = herd_worker::run_with(config, executors, shutdown).await {
                tracing::error!(%error, "test worker failed");
            }
        }
    });
    Ok(WorkerHandle {
        work_dir,
        shutdown,
        task,
    })
}

/// The bare and the Docker executors, on the real engine (the tests need
/// `scripts/build-test-image.sh`'s image).
pub async fn bare_and_docker_executors() -> anyhow::Result<Executors> {
    let docker = herd_worker::executor::docker::DockerExecutor::connect()
        .await
        .map_err(|error| {
            anyhow::anyhow!("{error}; start Docker and run scripts/build-test-image.sh")
        })?;
    Ok(Executors {
        bare: Some(Arc::new(herd_worker::executor::bare::BareExecutor::new())),
        docker: Some(Arc::new(docker)),
    })
}

/// A bare task in `batch` running `script` through `sh -c`.
pub fn shell_task(batch: &str, script: &str) -> TaskRequest {
    TaskRequest {
        batch: batch.to_owned(),
        command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        ..TaskRequest::default()
    }
}

/// Reads a task's whole log (stdout, or stderr) for its latest attempt.
pub async fn task_log(
    client: &mut QueueClient<Channel>,
    id: TaskId,
    stderr: bool,
) -> anyhow::Result<String> {
    let request = pb::TaskLogsRequest {
        id: id.0,
        attempt: 0,
        follow: false,
        stderr,
    };
    let mut stream = client.task_logs(request).await?.into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = stream.message().await? {
        text.extend(chunk.data);
    }
    Ok(String::from_utf8(text)?)
}

/// Keeps an `Arc` type in the public API so executors can be shared.
pub type SharedExecutor = Arc<dyn herd_worker::executor::Executor>;
