//! The flags of `herd server`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{DEFAULT_LISTEN, parse_seconds, parse_size};

/// `herd server`
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on; 0.0.0.0:4373 serves other hosts (with --tls-cert, or --insecure),
    /// port 0 picks a free port.
    #[arg(long = "listen", value_name = "ADDR", env = "HERD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data
    /// directory).
    #[arg(long = "db", value_name = "URL", env = "HERD_DB")]
    pub database: Option<String>,

    /// Where the database (by default) and the task logs live [default:
    /// $XDG_DATA_HOME/herd or ~/.local/share/herd].
    #[arg(long = "data-dir", value_name = "DIR", env = "HERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Seconds without news after which a worker is lost and its tasks are queued again.
    #[arg(long = "worker-timeout", value_name = "SECONDS", env = "HERD_WORKER_TIMEOUT", default_value = "20", value_parser = parse_seconds)]
    pub worker_timeout: Duration,

    /// Seconds between worker heartbeats; must be shorter than --worker-timeout.
    #[arg(long = "heartbeat", value_name = "SECONDS", env = "HERD_HEARTBEAT", default_value = "5", value_parser = parse_seconds)]
    pub heartbeat: Duration,

    /// Quarantine a worker (no task for 30 s, doubling up to 10 min, reset by a success) once
    /// its last N attempts failed within a minute for reasons that blame it (input, output,
    /// executor); 0 never quarantines.
    #[arg(
        long = "quarantine-after",
        value_name = "N",
        env = "HERD_QUARANTINE_AFTER",
        default_value_t = 5
    )]
    pub quarantine_after: u32,

    /// Once listening, write the bound address (e.g. 127.0.0.1:41234) to this file. Meant for
    /// scripts and tests that start a server with --listen 127.0.0.1:0.
    #[arg(long = "port-file", value_name = "PATH")]
    pub port_file: Option<PathBuf>,

    /// Make a new admin token and write it to DATA_DIR/admin-token (0600): the way back in
    /// when every admin token is lost or revoked.
    #[arg(long = "new-admin-token")]
    pub new_admin_token: bool,

    /// Serve TLS with this certificate (PEM, with its chain); needs --tls-key. Clients then
    /// use https:// URLs.
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        env = "HERD_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM); refused when other users can read it.
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        env = "HERD_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: every client (workers included) must present a certificate signed by a CA
    /// in this PEM file (HERD_CLIENT_CERT and HERD_CLIENT_KEY on their side).
    #[arg(
        long = "tls-client-ca",
        value_name = "FILE",
        env = "HERD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// The most kept of each stream (stdout, stderr) of each attempt's log, e.g. 64MiB or 1G;
    /// the rest is dropped and a marker line in the log says so.
    #[arg(long = "max-log-size", value_name = "SIZE", env = "HERD_MAX_LOG_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_log_size: u64,

    /// Serve without TLS on an address other hosts can reach (refused otherwise): requests,
    /// with their tokens and task secrets, travel in clear. Only on a network you trust.
    #[arg(long = "insecure")]
    pub insecure: bool,
}
