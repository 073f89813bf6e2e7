//! herd-launch: everything behind the `herd` binary. `main.rs` only parses the command line,
//! installs tracing and turns the result into an exit code; see its documentation for the
//! layout of this crate.

/// Writes one line on stderr for a human (a confirmation, a hint). Unlike `eprintln!` it does
/// not panic when stderr is closed.
macro_rules! note {
    ($($argument:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($argument)*);
    }};
}

pub mod access;
pub mod batches;
pub mod cli;
pub mod client;
pub mod credentials;
pub mod exit;
pub mod fetch;
pub mod launch;
pub mod local;
pub mod output;
pub mod serve;
pub mod tasks;
pub mod workers;

use cli::{Cli, Command};
use exit::Outcome;

/// Runs the command `cli` describes. Long-running commands (server, worker, up) stop cleanly on
/// Ctrl-C or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let server = cli.server;
    match cli.command {
        Command::Launch(args) => launch::run(&server, args).await,
        Command::Task(command) => tasks::run(&server, command).await,
        Command::Batch(command) => batches::run(&server, command).await,
        Command::Worker(command) => {
            let shutdown = if command.action.is_none() {
                local::shutdown_on_signals()
            } else {
                tokio_util::sync::CancellationToken::new()
            };
            workers::run(&server, command, shutdown).await
        }
        Command::Server(args) => serve::server(args, local::shutdown_on_signals()).await,
        Command::Up(args) => serve::up(args, local::shutdown_on_signals()).await,
        Command::Fetch(command) => fetch::run(command).await,
        Command::Login(args) => access::login(&server, args).await,
        Command::Logout => access::logout(&server),
        Command::Whoami(args) => access::whoami(&server, args).await,
        Command::User(command) => access::user(&server, command).await,
        Command::Token(command) => access::token(&server, command).await,
    }
}
