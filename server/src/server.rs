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
use crate::queue::{Queue, QueueConfig};
use crate::service;
use crate::store::{SqlStore, Store};
use crate::tls::Tls;

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
    /// TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`); `None` serves plaintext.
    pub tls: Option<Tls>,
}

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
    let logs = LogStore::new(config.data_dir.join("logs"));
    let queue = Queue::open(store, logs, config.queue.clone()).await?;
    serve(queue, listener, config.tls.as_ref(), shutdown).await
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
