//! `herd server` and `herd up`: bind the listener, then hand it to the server library (and, for
//! `up`, start one local worker that connects to it).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_proto::transport::ClientTls;
use herd_server::queue::{QuarantinePolicy, QueueConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            herd_server::Tls::from_files(cert, key, args.tls_client_ca.as_deref())
                .map_err(|error| exit::Error::usage(herd_server::chain(&error)))?,
        ),
        // clap requires both or neither.
        _ => None,
    };
    let data_dir = local::data_dir(args.data_dir)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = herd_server::Config {
        database: args.database,
        data_dir: data_dir.clone(),
        queue: QueueConfig {
            worker_timeout: args.worker_timeout,
            heartbeat_interval: args.heartbeat,
            quarantine: QuarantinePolicy {
                after: args.quarantine_after,
                ..QuarantinePolicy::default()
            },
            max_log_bytes: args.max_log_size,
            ..QueueConfig::default()
        },
        worker_token_file: None,
        new_admin_token: args.new_admin_token,
        tls,
    };
    // An address is judged before binding when it is one; a host name once resolved and bound
    // (the listener is dropped with the error, before anything is accepted).
    // (With --insecure the one check after binding warns.)
    if let Some(address) = literal_address(&args.listen)
        && !args.insecure
    {
        check_exposure(address, config.tls.is_some(), false, "herd server")?;
    }
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the server listens on")?;
    check_exposure(address, config.tls.is_some(), args.insecure, "herd server")?;
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
        "listening on {address}; clients use --server {scheme}://{}",
        client_address(address)
    );
    herd_server::serve(queue, listener, config.tls.as_ref(), shutdown)
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
    if let Some(address) = literal_address(&args.listen)
        && !args.insecure
    {
        check_exposure(address, false, false, "herd up")?;
    }
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the server listens on")?;
    check_exposure(address, false, args.insecure, "herd up")?;
    let server_url = format!("http://{}", client_address(address));
    let worker_token_file = data_dir.join(LOCAL_WORKER_TOKEN_FILE);
    let server_config = herd_server::Config {
        database: None,
        data_dir: data_dir.clone(),
        queue: QueueConfig::default(),
        worker_token_file: Some(worker_token_file.clone()),
        new_admin_token: false,
        tls: None,
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
        // The local worker talks to this process's own server over loopback.
        tls: ClientTls::default(),
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
        keep_failed: herd_worker::DEFAULT_KEEP_FAILED,
        cache_max_bytes: herd_worker::DEFAULT_CACHE_MAX_BYTES,
    };
    info!(
        data_dir = %data_dir.display(),
        "herd is up: listening on {address}, one worker on batch `{}` running {concurrency} tasks at once; \
         launch with HERD_SERVER={server_url} herd launch -b {} ...",
        args.batch,
        args.batch
    );

    let mut server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { herd_server::serve(queue, listener, None, shutdown).await }
    });
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

/// `listen` when it is an IP address (with or without a port), not a host name.
fn literal_address(listen: &str) -> Option<SocketAddr> {
    let listen = listen.trim();
    if let Ok(address) = listen.parse::<SocketAddr>() {
        return Some(address);
    }
    let ip = listen.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, herd_proto::DEFAULT_PORT))
}

/// Refuses to serve plaintext on an address other hosts can reach (a wildcard, a LAN address):
/// every request, with its token and its tasks' secrets, would cross the network in clear.
/// With `--insecure` the server starts anyway, with a warning.
fn check_exposure(
    address: SocketAddr,
    tls: bool,
    insecure: bool,
    command: &str,
) -> anyhow::Result<()> {
    if tls || address.ip().is_loopback() {
        return Ok(());
    }
    if insecure {
        warn!(
            %address,
            "serving WITHOUT TLS on an address other hosts can reach (--insecure): requests, with \
             their tokens and task secrets, travel in clear; use this only on a network you trust"
        );
        return Ok(());
    }
    let remedy = if command == "herd up" {
        "listen on 127.0.0.1 (`herd up` has no TLS; run `herd server --tls-cert FILE --tls-key FILE` \
         and `herd worker` to serve other hosts), or add --insecure if the network is trusted"
    } else {
        "give --tls-cert FILE and --tls-key FILE (clients then use https://), listen on 127.0.0.1, \
         or add --insecure if the network is trusted"
    };
    Err(exit::Error::usage(format!(
        "{command} refuses to listen on {address} without TLS: other hosts can reach it, and \
         their requests (with their tokens and task secrets) would travel in clear; {remedy}"
    ))
    .into())
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
    fn plaintext_beyond_loopback_needs_insecure() {
        let wildcard: SocketAddr = "0.0.0.0:4373".parse().unwrap();
        let error = check_exposure(wildcard, false, false, "herd server").unwrap_err();
        assert_eq!(exit::classify(&error).0, exit::USAGE);
        let message = error.to_string();
        assert!(
            message.contains("--tls-cert")
                && message.contains("--insecure")
                && message.contains("in clear"),
            "{message}"
        );
        let lan: SocketAddr = "[2001:db8::1]:4373".parse().unwrap();
        assert!(check_exposure(lan, false, false, "herd up").is_err());
        assert!(check_exposure(wildcard, false, true, "herd server").is_ok());
        assert!(check_exposure(wildcard, true, false, "herd server").is_ok());
        assert_eq!(
            literal_address("0.0.0.0"),
            Some("0.0.0.0:4373".parse().unwrap())
        );
        assert_eq!(literal_address("[::]:0"), Some("[::]:0".parse().unwrap()));
        assert_eq!(literal_address("myhost:4373"), None);
        for loopback in ["127.0.0.1:1", "127.0.0.2:1", "[::1]:1"] {
            assert!(check_exposure(loopback.parse().unwrap(), false, false, "herd up").is_ok());
        }
    }

    #[test]
    fn wildcard_addresses_become_loopback_for_clients() {
        let address: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(client_address(address).to_string(), "127.0.0.1:4000");
    }
}
