//! `herd server` and `herd up`: bind the listener, then hand it to the server library (and, for
//! `up`, start one local worker that connects to it).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_server::queue::QueueConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::{ServerArgs, UpArgs};
use crate::credentials;
use crate::exit::{self, Outcome};
use crate::local;

/// Runs `herd server` until `shutdown` fires.
pub async fn server(args: ServerArgs, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
    if args.heartbeat >= args.worker_timeout {
        return Err(exit::Error::usage(format!(
            "--heartbeat ({}s) must be shorter than --worker-timeout ({}s), or every worker would be declared lost",
            args.heartbeat.as_secs(),
            args.worker_timeout.as_secs()
        ))
        .into());
    }
    let data_dir = local::data_dir(args.data_dir)?;
    let config = herd_server::Config {
        database: args.database,
        data_dir: data_dir.clone(),
        queue: QueueConfig {
            worker_timeout: args.worker_timeout,
            heartbeat_interval: args.heartbeat,
        },
        worker_token_file: None,
        new_admin_token: args.new_admin_token,
    };
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the server listens on")?;
    let queue = herd_server::open(&config)
        .await
        .context("the herd server cannot start")?;
    // Written once the queue is loaded (and the admin token made): a script that waits for
    // it can use the server at once.
    if let Some(path) = &args.port_file {
        write_port_file(path, address)?;
    }
    info!(
        data_dir = %data_dir.display(),
        "listening on {address}; clients use --server http://{}",
        client_address(address)
    );
    herd_server::serve(queue, listener, shutdown)
        .await
        .context("the herd server stopped")?;
    Ok(Outcome::Success)
}

/// Runs `herd up`: a server on the embedded SQLite database plus one local worker, until
/// `shutdown` fires or either of them fails.
pub async fn up(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
    let data_dir = local::data_dir(args.data_dir)?;
    let (cores, memory_bytes) = herd_worker::host_resources();
    let concurrency = args.concurrency.unwrap_or(cores.max(1));
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the server listens on")?;
    let server_url = format!("http://{}", client_address(address));
    let worker_token_file = data_dir.join(LOCAL_WORKER_TOKEN_FILE);
    let server_config = herd_server::Config {
        database: None,
        data_dir: data_dir.clone(),
        queue: QueueConfig::default(),
        worker_token_file: Some(worker_token_file.clone()),
        new_admin_token: false,
    };
    let queue = herd_server::open(&server_config)
        .await
        .context("the herd server cannot start")?;
    let worker_token = credentials::read_token_file(&worker_token_file)?;
    log_in_locally(&data_dir, &server_url)?;
    if let Some(path) = &args.port_file {
        write_port_file(path, address)?;
    }
    let worker_config = herd_worker::Config {
        server: server_url.clone(),
        name: local::host_name(),
        batch: args.batch.clone(),
        concurrency,
        prefetch: 0,
        executor: herd_worker::ExecutorKind::Auto,
        allow_privileged: false,
        policy: args.policy.policy()?,
        work_dir: data_dir.join("worker"),
        cores,
        memory_bytes,
        token: worker_token,
    };
    info!(
        data_dir = %data_dir.display(),
        "herd is up: listening on {address}, one worker on batch `{}` running {concurrency} tasks at once; \
         launch with HERD_SERVER={server_url} herd launch -b {} ...",
        args.batch,
        args.batch
    );

    let mut server = tokio::spawn(herd_server::serve(queue, listener, shutdown.clone()));
    let mut worker = tokio::spawn(herd_worker::run(worker_config, shutdown.clone()));
    // Whichever stops first (an error, or the shutdown) stops the other.
    let (server_result, worker_result) = tokio::select! {
        result = &mut server => {
            shutdown.cancel();
            (result, worker.await)
        }
        result = &mut worker => {
            shutdown.cancel();
            (server.await, result)
        }
    };
    server_result
        .context("the herd server panicked")?
        .context("the herd server stopped")?;
    worker_result
        .context("the local worker panicked")?
        .context("the local worker stopped")?;
    Ok(Outcome::Success)
}

/// The file, in the data directory, where `herd up` keeps its local worker's token.
const LOCAL_WORKER_TOKEN_FILE: &str = "worker-token";

/// Saves the admin token of `herd up`'s server (`DATA_DIR/admin-token`) as this user's
/// credentials for `server_url`, so that the commands of the quickstart work as they are. A
/// data directory whose admin token is gone (an admin replaced it) is left alone.
fn log_in_locally(data_dir: &Path, server_url: &str) -> anyhow::Result<()> {
    let admin_token = data_dir.join(herd_server::ADMIN_TOKEN_FILE);
    if !admin_token.exists() {
        tracing::warn!(
            path = %admin_token.display(),
            "no admin token to log in with; run `herd login` with a token of this server"
        );
        return Ok(());
    }
    let token = credentials::read_token_file(&admin_token)?;
    let path = credentials::save(server_url, &token)?;
    tracing::debug!(credentials = %path.display(), "logged in to the local server");
    Ok(())
}

/// Binds `listen` (`HOST:PORT`; a bare host gets herd's default port), with a message that says
/// what to do when the address is taken or not allowed.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    let listen = listen.trim();
    let with_port = if listen.parse::<IpAddr>().is_ok() || !listen.contains(':') {
        match listen.parse::<Ipv6Addr>() {
            Ok(ipv6) => format!("[{ipv6}]:{}", herd_proto::DEFAULT_PORT),
            Err(_) => format!("{listen}:{}", herd_proto::DEFAULT_PORT),
        }
    } else {
        listen.to_owned()
    };
    TcpListener::bind(&with_port).await.map_err(|error| {
        let message = match error.kind() {
            ErrorKind::AddrInUse => format!(
                "cannot listen on {with_port}: the address is already in use (another herd server?); \
                 stop that process or choose another address with --listen HOST:PORT"
            ),
            ErrorKind::PermissionDenied => format!(
                "cannot listen on {with_port}: permission denied; ports below 1024 need privileges, choose a higher port with --listen"
            ),
            ErrorKind::AddrNotAvailable => format!(
                "cannot listen on {with_port}: this host has no such address; use 127.0.0.1:PORT, or 0.0.0.0:PORT for every interface"
            ),
            ErrorKind::InvalidInput => {
                return anyhow::Error::new(exit::Error::usage(format!(
                    "`{listen}` is not an address to listen on; give HOST:PORT such as 127.0.0.1:4373"
                )));
            }
            _ => format!("cannot listen on {with_port}: {error}"),
        };
        anyhow::Error::new(exit::Error::failed(message))
    })
}

/// The address a client on this host uses: a wildcard listen address becomes loopback.
pub fn client_address(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    }
}

/// Writes the bound address for scripts; through a rename, so a reader never sees half of it.
fn write_port_file(path: &Path, address: SocketAddr) -> anyhow::Result<()> {
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    std::fs::write(&temporary, format!("{address}\n"))
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write the address to --port-file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_address_says_so() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let error = bind(&address).await.unwrap_err().to_string();
        assert!(error.contains("already in use"), "{error}");
        let error = bind("not an address:x").await.unwrap_err();
        assert_eq!(exit::classify(&error).0, exit::USAGE, "{error}");
    }

    #[test]
    fn wildcard_addresses_become_loopback_for_clients() {
        let address: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(client_address(address).to_string(), "127.0.0.1:4000");
    }
}
