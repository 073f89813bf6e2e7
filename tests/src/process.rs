//! The `herd` binary as a child process: the one way tests and herd-bench start it, with no
//! `HERD_*` or `RUST_LOG` setting inherited from the environment that runs them (a developer's
//! `HERD_SERVER` must not send a test's commands elsewhere).

use std::path::Path;
use std::process::{Command, Stdio};

/// The settings a `herd` child process never inherits.
pub const CLEARED_VARIABLES: [&str; 17] = [
    "HERD_SERVER",
    "HERD_TOKEN",
    "HERD_TOKEN_FILE",
    "HERD_CONFIG_DIR",
    "HERD_LISTEN",
    "HERD_DB",
    "HERD_DATA_DIR",
    "HERD_WORKER_TIMEOUT",
    "HERD_HEARTBEAT",
    "HERD_TLS_CERT",
    "HERD_TLS_KEY",
    "HERD_TLS_CLIENT_CA",
    "HERD_CA_BUNDLE",
    "HERD_CLIENT_CERT",
    "HERD_CLIENT_KEY",
    "HERD_INSECURE",
    "RUST_LOG",
];

/// `herd` (the binary at `herd`) with none of [`CLEARED_VARIABLES`] and stdin closed; add the
/// arguments. Async code turns it into a `tokio::process::Command` with `From`.
pub fn herd_command(herd: &Path) -> Command {
    let mut command = Command::new(herd);
    for variable in CLEARED_VARIABLES {
        command.env_remove(variable);
    }
    // Credentials a command saves (`herd login`, `herd up`) go to a folder of this test run,
    // never to the developer's own.
    command.env(
        "HERD_CONFIG_DIR",
        std::env::temp_dir().join(format!("herd-test-config-{}", std::process::id())),
    );
    command.stdin(Stdio::null());
    command
}
