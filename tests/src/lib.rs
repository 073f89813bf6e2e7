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
use herd_proto::access::{Bearer, Secret, TokenKind, TokenRequest};
use herd_proto::pb::access_client::AccessClient;
use herd_proto::pb::queue_client::QueueClient;
use herd_proto::pb::workers_client::WorkersClient;
use herd_proto::transport::{self, ClientTls};
use herd_proto::view::TaskView;
use herd_proto::{BatchName, TaskId, TaskRequest, TaskSpec, pb};
use herd_server::queue::QueueConfig;
use herd_worker::{ExecutorKind, Executors};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A `Queue` client that sends a token.
pub type Client = QueueClient<InterceptedService<Channel, Bearer>>;

/// An `Access` client that sends a token.
pub type Access = AccessClient<InterceptedService<Channel, Bearer>>;

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
    /// Its worker token; a cluster's workers get the cluster's when `None`.
    pub token: Option<Secret>,
    /// How the worker secures its connection; the default is plaintext to loopback.
    pub tls: ClientTls,
    /// How long failed attempts' folders are kept (`--keep-failed`).
    pub keep_failed: Duration,
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
            token: None,
            tls: ClientTls::default(),
            keep_failed: herd_worker::DEFAULT_KEEP_FAILED,
        }
    }
}

/// A running in-process worker.
pub struct WorkerHandle {
    /// Its scratch folder.
    pub work_dir: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Option<String>>,
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

    /// Waits (at most [`WAIT`]) for the worker to stop by itself; the error it stopped with.
    pub async fn stopped(self) -> anyhow::Result<Option<String>> {
        Ok(tokio::time::timeout(WAIT, self.task)
            .await
            .context("the worker did not stop by itself")??)
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
    /// The worker token of this cluster's workers, made on first use.
    worker_token: tokio::sync::OnceCell<Secret>,
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
            worker_token: tokio::sync::OnceCell::new(),
        };
        cluster.serve(listener);
        Ok(cluster)
    }

    fn serve(&mut self, listener: TcpListener) {
        let config = herd_server::Config {
            database: self.database.clone(),
            data_dir: self.data_dir.path().to_path_buf(),
            queue: self.options.queue.clone(),
            worker_token_file: None,
            new_admin_token: false,
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

    /// A channel to the server, once it answers.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let url = self.url.clone();
        wait_for("the server to accept connections", WAIT, || {
            let url = url.clone();
            async move {
                transport::endpoint(&url, &ClientTls::default())
                    .ok()?
                    .connect()
                    .await
                    .ok()
            }
        })
        .await
    }

    /// The token of the admin the server created on its first start, once the server
    /// accepts it (the listener is bound before the queue is loaded).
    pub async fn admin_token(&self) -> anyhow::Result<Secret> {
        let channel = self.channel().await?;
        wait_for("the server to accept its admin token", WAIT, || {
            let channel = channel.clone();
            async move {
                let token = read_admin_token(self.data_dir.path()).ok()?;
                let mut access = AccessClient::with_interceptor(channel, Bearer::new(&token).ok()?);
                access.who_am_i(pb::Empty {}).await.ok()?;
                Some(token)
            }
        })
        .await
    }

    /// A client of the `Queue` service as the admin, once the server answers.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let token = self.admin_token().await?;
        self.client_with(Some(&token)).await
    }

    /// A client of the `Queue` service sending `token` (none: no header at all).
    pub async fn client_with(&self, token: Option<&Secret>) -> anyhow::Result<Client> {
        let bearer = match token {
            Some(token) => Bearer::new(token)?,
            None => Bearer::anonymous(),
        };
        Ok(QueueClient::with_interceptor(self.channel().await?, bearer)
            .max_decoding_message_size(herd_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(herd_server::MAX_MESSAGE_BYTES))
    }

    /// A client of the `Access` service sending `token`.
    pub async fn access_with(&self, token: &Secret) -> anyhow::Result<Access> {
        Ok(AccessClient::with_interceptor(
            self.channel().await?,
            Bearer::new(token)?,
        ))
    }

    /// A new token made by the admin (for `user`, or the admin; a worker token if asked).
    pub async fn create_token(
        &self,
        user: Option<&str>,
        kind: TokenKind,
        batch: Option<&str>,
    ) -> anyhow::Result<Secret> {
        let admin = self.admin_token().await?;
        make_token(&self.url, &admin, kind, user, batch).await
    }

    /// Adds a user (not an admin); their first token.
    pub async fn add_user(&self, name: &str) -> anyhow::Result<Secret> {
        let admin = self.admin_token().await?;
        let token = self
            .access_with(&admin)
            .await?
            .add_user(pb::AddUserRequest {
                name: name.to_owned(),
                admin: false,
            })
            .await?
            .into_inner();
        Ok(Secret::new(&token.secret)?)
    }

    /// A client of the `Workers` service with the cluster's worker token, for tests that play
    /// a worker by hand.
    pub async fn workers_client(
        &self,
    ) -> anyhow::Result<WorkersClient<InterceptedService<Channel, Bearer>>> {
        let token = self.worker_token().await?;
        Ok(WorkersClient::with_interceptor(
            self.channel().await?,
            Bearer::new(&token)?,
        ))
    }

    /// The worker token of this cluster's workers.
    pub async fn worker_token(&self) -> anyhow::Result<Secret> {
        self.worker_token
            .get_or_try_init(|| self.create_token(None, TokenKind::Worker, None))
            .await
            .cloned()
    }

    /// Starts an in-process worker (with the cluster's worker token unless it has one).
    pub async fn add_worker(&self, mut options: WorkerOptions) -> anyhow::Result<WorkerHandle> {
        if options.token.is_none() {
            options.token = Some(self.worker_token().await?);
        }
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
            idempotency_key: None,
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

    /// The identity of the server's database, as its task-log folder is named (once a task
    /// has printed something).
    pub fn instance_id(&self) -> anyhow::Result<u64> {
        let logs = self.data_dir.path().join("logs");
        let names: Vec<String> = std::fs::read_dir(&logs)
            .with_context(|| format!("cannot list {}", logs.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        match names.as_slice() {
            [name] => Ok(u64::from_str_radix(name, 16)?),
            other => bail!(
                "expected one instance folder in {}, found {other:?}",
                logs.display()
            ),
        }
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

/// A new token made on the server at `url` with the admin token `admin`.
pub async fn make_token(
    url: &str,
    admin: &Secret,
    kind: TokenKind,
    user: Option<&str>,
    batch: Option<&str>,
) -> anyhow::Result<Secret> {
    let request = TokenRequest {
        user: user.map(herd_proto::access::UserName::new).transpose()?,
        kind,
        batch: batch.map(BatchName::new).transpose()?,
        label: "test".to_owned(),
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let token = AccessClient::with_interceptor(channel, Bearer::new(admin)?)
        .create_token(pb::CreateTokenRequest::from(&request))
        .await?
        .into_inner();
    Ok(Secret::new(&token.secret)?)
}

/// The admin token a server wrote in its data directory on its first start.
pub fn read_admin_token(data_dir: &std::path::Path) -> anyhow::Result<Secret> {
    let path = data_dir.join(herd_server::ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Secret::new(&text)?)
}

/// Starts an in-process worker of the server at `server_url` (any server: in-process, or a
/// `herd server` process); it stops when `shutdown` fires or its handle is stopped.
pub async fn start_worker(
    server_url: &str,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkerHandle> {
    let token = options
        .token
        .context("a worker needs a token: set WorkerOptions::token")?;
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
        token,
        keep_failed: options.keep_failed,
        cache_max_bytes: herd_worker::DEFAULT_CACHE_MAX_BYTES,
    };
    let executors = match options.executors {
        Some(executors) => executors,
        None => herd_worker::executors(&config).await?,
    };
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            match herd_worker::run_with(config, executors, shutdown).await {
                Ok(()) => None,
                Err(error) => {
                    tracing::error!(%error, "test worker failed");
                    Some(error.to_string())
                }
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
pub async fn task_log(client: &mut Client, id: TaskId, stderr: bool) -> anyhow::Result<String> {
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
