//! Facts of the local machine the long-running commands need: the data directory, the host
//! name, and Ctrl-C / SIGTERM turned into a cancellation token.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::exit;

/// `$HERD_DATA_DIR`, else `$XDG_DATA_HOME/herd`, else `~/.local/share/herd`.
pub fn default_data_dir() -> Result<PathBuf, exit::Error> {
    if let Some(dir) = std::env::var_os("HERD_DATA_DIR").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute());
    if let Some(xdg) = xdg {
        return Ok(xdg.join("herd"));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute());
    match home {
        Some(home) => Ok(home.join(".local").join("share").join("herd")),
        None => Err(exit::Error::usage(
            "cannot find a data directory: neither XDG_DATA_HOME nor HOME is set; pass --data-dir DIR or set HERD_DATA_DIR",
        )),
    }
}

/// The data directory given, or the default one.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf, exit::Error> {
    match given {
        Some(path) => Ok(path),
        None => default_data_dir(),
    }
}

/// The machine's host name, the default name of a worker.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "herd-worker".to_owned())
}

/// A token cancelled at the first Ctrl-C or SIGTERM. A second signal exits at once (code 130),
/// for when a clean stop takes too long.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("stopping; a second Ctrl-C or SIGTERM stops at once");
        cancel.cancel();
        wait_for_signal().await;
        warn!("stopped at once on a second signal");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops cleanly");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
