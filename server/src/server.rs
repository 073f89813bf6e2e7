//! Wiring: open the store, load the queue, serve both gRPC services until shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::Error;
use crate::logs::LogStore;
use crate::private;
use crate::queue::{BOOTSTRAP_ADMIN, Queue, QueueConfig, new_secret};
use crate::service;
use crate::store::{SqlStore, Store};
use crate::tls::Tls;
use herd_proto::access::TokenKind;

/// The largest answer of the `Queue` service (and what clients accept): a listing of a
/// million tasks fits.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// The largest request the `Queue` service accepts: a submit of 100,000 tasks
/// ([`herd_proto::spec::MAX_TASKS_PER_SUBMIT`]) of ~2.6 KiB each on average. A typical
/// bioinformatics task (an image, a shell command, two inputs, a resource, an output) is
/// ~350 bytes: 100,000 of them are ~35 MB.
pub const MAX_REQUEST_BYTES: usize = 256 << 20;

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database URL: `sqlite://PATH` or `postgres://...`. `None`: SQLite in the data directory.
    pub database: Option<String>,
    /// Where the SQLite database (by default) and the task logs live.
    pub data_dir: PathBuf,
    /// Worker liveness settings.
    pub queue: QueueConfig,
    /// Where to keep a worker token for a worker started with the server (`herd up`): made
    /// at start unless the file already holds a valid one.
    pub worker_token_file: Option<PathBuf>,
    /// Make a new admin token at start and write it to `DATA_DIR/admin-token`, even if the
    /// server has users already (`herd server --new-admin-token`).
    pub new_admin_token: bool,
    /// TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`); `None` serves plaintext.
    pub tls: Option<Tls>,
}

/// The file, in the data directory, where the server writes the admin token it creates on
/// its first start.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

impl Config {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("herd.db").display()),
        }
    }
}

/// Opens the store, loads the queue and serves on `listener` until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let queue = open(&config).await?;
    serve(queue, listener, config.tls.as_ref(), shutdown).await
}

/// Opens the store and loads the queue; on a server with no user yet, creates the admin and
/// writes its token to `DATA_DIR/admin-token` (`0600`); writes the local worker's token if
/// asked to.
pub async fn open(config: &Config) -> Result<Arc<Queue>, Error> {
    let data_dir_error = |source| Error::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    private::create_dir(&config.data_dir).map_err(data_dir_error)?;
    let default_database = config
        .database
        .is_none()
        .then(|| config.data_dir.join("herd.db"));
    if let Some(path) = &default_database {
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode.
        private::create_file(path).map_err(data_dir_error)?;
    }
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&config.database_url()).await?);
    if let Some(path) = &default_database {
        for suffix in ["-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            private::tighten(Path::new(&name), private::FILE_MODE).map_err(data_dir_error)?;
        }
    }
    let logs = LogStore::new(config.data_dir.join("logs"), config.queue.max_log_bytes);
    let queue = Queue::open(store, logs, config.queue.clone()).await?;
    if queue.needs_bootstrap() {
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        let secret = new_secret()?;
        // The file first: a crash between the two leaves a token that does not work yet, and
        // the next start makes a new one; the other order could leave no way in.
        private::write_secret(&path, &format!("{secret}\n")).map_err(data_dir_error)?;
        queue.bootstrap(&secret).await?;
        info!(
            path = %path.display(),
            "created the admin user `{BOOTSTRAP_ADMIN}`; its token is in this file, readable by this system user only"
        );
    } else if config.new_admin_token {
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        let token = queue.new_admin_token("--new-admin-token").await?;
        private::write_secret(&path, &format!("{}\n", token.secret)).map_err(data_dir_error)?;
        info!(
            path = %path.display(),
            token_id = token.info.id,
            "made a new admin token for `{}`; it is in this file, readable by this system user only",
            token.info.user
        );
    }
    if let Some(path) = &config.worker_token_file {
        ensure_worker_token(&queue, path).await?;
    }
    Ok(queue)
}

/// Keeps a valid worker token in `path`: the one there if the server knows it, else a new one.
async fn ensure_worker_token(queue: &Queue, path: &Path) -> Result<(), Error> {
    if let Ok(text) = std::fs::read_to_string(path)
        && queue
            .authenticate(Some(text.trim()))
            .is_ok_and(|caller| caller.kind == TokenKind::Worker)
    {
        return Ok(());
    }
    let token = queue.local_worker_token("local worker").await?;
    private::write_secret(path, &format!("{}\n", token.secret)).map_err(|source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves an opened queue on `listener` (with TLS when `tls` is given) until `shutdown`
/// fires.
pub async fn serve(
    queue: Arc<Queue>,
    listener: TcpListener,
    tls: Option<&Tls>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let address = listener.local_addr().ok();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        crate::tls::install_crypto_provider();
        builder = match builder.tls_config(tls.server_config()) {
            Ok(builder) => builder,
            Err(error) => {
                // Checked by `Tls::from_files`, so not expected; the queue still closes cleanly.
                queue.close();
                queue.shutdown().await;
                return Err(error.into());
            }
        };
    }
    let reaper = queue.spawn_reaper(shutdown.clone());
    // Long-lived streams (worker sessions, log follows, batch watches) end when shutdown
    // begins; otherwise the graceful shutdown would wait for them forever.
    let closer = tokio::spawn({
        let queue = queue.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            queue.close();
        }
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Some(address) = address {
        info!(
            %address,
            tls = tls.is_some(),
            client_certificates = tls.is_some_and(Tls::requires_client_certificates),
            "herd server listening"
        );
    }
    let served = builder
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_routes(service::routes(queue.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    reaper.abort();
    closer.abort();
    // Whatever was accepted (and anything a worker reported) is committed before returning.
    queue.close();
    queue.shutdown().await;
    served?;
    info!("herd server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a server on `database` and returns what it failed with, rendered for a user.
    async fn start_failure(database: String) -> String {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let config = Config {
            database: Some(database),
            data_dir: directory.path().to_path_buf(),
            queue: QueueConfig::default(),
            worker_token_file: None,
            new_admin_token: false,
            tls: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let shutdown = CancellationToken::new();
        let error = run(config, listener, shutdown)
            .await
            .expect_err("the database cannot be used");
        crate::chain(&error)
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_reported_with_its_reason() {
        // The database file is a directory: SQLite's own reason must reach the user.
        let directory = tempfile::tempdir().expect("a temporary directory");
        let blocker = directory.path().join("herd.db");
        std::fs::create_dir(&blocker).expect("a directory");
        let message = start_failure(format!("sqlite://{}", blocker.display())).await;
        assert!(
            message.starts_with("the database is unavailable: ")
                && message.contains("unable to open database file"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_refused_database_connection_is_reported_with_its_reason() {
        // Port 1 on loopback: nothing listens there.
        let message = start_failure("postgres://herd@127.0.0.1:1/herd".to_owned()).await;
        assert!(
            message.starts_with("the database is unavailable: ")
                && message.to_lowercase().contains("connection refused"),
            "{message}"
        );
    }
}
