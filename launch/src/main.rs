//! `herd`: the one command-line binary of herd, a distributed task queue for scientific batch
//! computing. It queues tasks with the options of scitq's `scitq-launch` (`herd launch -b BATCH
//! -d IMAGE -i URI ... COMMAND`), follows and manages tasks, batches and workers, and runs the
//! server (`herd server`), a worker (`herd worker`) or both at once (`herd up`).
//!
//! # Manners
//! Data goes to stdout (ids, tables, logs, `--json` documents: one JSON document per command,
//! arrays for lists); everything else (errors as `herd: <message>`, hints, progress, logs) goes
//! to stderr. Progress bars are drawn only when stderr is a terminal. A closed stdout (`| head`)
//! ends the command quietly with code 0. Exit codes: 0 done, 1 the operation failed (a task
//! failed or was canceled in `batch wait`, the server refused), 2 usage (a wrong flag, value,
//! command or `--file` line), 3 the server cannot be reached.
//!
//! # Layout
//! - `main.rs` (this file): parse the command line, install the tracing subscriber (stderr,
//!   `-v`/`RUST_LOG`), run, map the result to an exit code. Nothing else.
//! - [`herd_launch::cli`]: the clap definitions: every command, flag, default and `HERD_*`
//!   variable.
//! - [`herd_launch::launch`]: `herd launch`: build, check (the same checks as the server, plus
//!   URIs through herd-fetch) and submit tasks in one request; `--file`, `-t`.
//! - [`herd_launch::tasks`], [`herd_launch::batches`], [`herd_launch::workers`]: the client
//!   commands, and `herd worker` running a worker through herd-worker.
//! - [`herd_launch::serve`]: `herd server` and `herd up`: bind, then run herd-server (and a local
//!   worker).
//! - [`herd_launch::client`]: the connection, and the one mapping of gRPC statuses to errors.
//! - [`herd_launch::exit`]: exit codes and the one place errors become them.
//! - [`herd_launch::output`]: JSON, tables and formatting on stdout; [`herd_launch::local`]:
//!   data directory, host name, shutdown signals.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herd_launch::cli::Cli;
use herd_launch::exit;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_tracing(cli.verbose, cli.command.is_long_running());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report(&anyhow::Error::new(error).context("cannot start the async runtime"));
        }
    };
    let result = runtime.block_on(herd_launch::run(cli));
    // Do not wait for stray blocking work (e.g. a read of stdin) once the command is done.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(outcome) => outcome.into(),
        Err(error) => report(&error),
    }
}

/// Prints `herd: <message>` on stderr (nothing for a broken pipe) and gives the exit code.
fn report(error: &anyhow::Error) -> ExitCode {
    let (code, message) = exit::classify(error);
    if let Some(message) = message {
        let _ = writeln!(std::io::stderr(), "herd: {message}");
    }
    ExitCode::from(code)
}

/// Logs go to stderr. `RUST_LOG` wins; otherwise herd's crates log at `info` for a server or a
/// worker and at `warn` for one-shot commands, `-v` at `debug`, `-vv` at `trace`.
fn install_tracing(verbose: u8, long_running: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives).ok(),
        _ => None,
    };
    let filter = filter.unwrap_or_else(|| {
        let level = match (verbose, long_running) {
            (0, false) => "warn",
            (0, true) => "info",
            (1, _) => "debug",
            _ => "trace",
        };
        let directives: Vec<String> = [
            "herd",
            "herd_launch",
            "herd_server",
            "herd_worker",
            "herd_fetch",
            "herd_proto",
        ]
        .iter()
        .map(|target| format!("{target}={level}"))
        .collect();
        EnvFilter::new(format!("warn,{}", directives.join(",")))
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 0)
        .with_env_filter(filter)
        .init();
}
