//! `herd worker`: run a worker, or list and delete the workers a server knows.

use anyhow::Context;
use herd_proto::Timestamp;
use herd_proto::transport::ClientTls;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::{ExecutorChoice, JsonArgs, WorkerAction, WorkerCommand, WorkerRunArgs};
use crate::client::{self, Connection};
use crate::credentials;
use crate::exit::{self, Outcome};
use crate::local;
use crate::output::{self, Table};

/// Runs `herd worker list|delete`, or a worker until `shutdown` fires.
pub async fn run(
    server: &str,
    command: WorkerCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    match command.action {
        None => run_worker(server, command.run, shutdown).await,
        Some(WorkerAction::List(args)) => {
            let mut connection = client::connect(server).await?;
            list(&mut connection, args).await
        }
        Some(WorkerAction::Delete(args)) => {
            let mut connection = client::connect(server).await?;
            connection.delete_worker(args.id).await?;
            note!("worker {} deleted", args.id);
            Ok(Outcome::Success)
        }
    }
}

/// The worker configuration the flags describe, with the host's defaults filled in.
pub fn worker_config(server: &str, args: WorkerRunArgs) -> anyhow::Result<herd_worker::Config> {
    let server = client::server_url(server)?;
    let (cores, memory_bytes) = herd_worker::host_resources();
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None => local::default_data_dir()?.join("worker"),
    };
    let name = args.name.unwrap_or_else(local::host_name);
    let policy = args.policy.policy()?;
    let token = match &args.token_file {
        Some(file) => credentials::read_token_file(file)?,
        None => credentials::from_environment()?.ok_or_else(|| {
            exit::Error::usage(
                "a worker needs a worker token: an admin makes one with `herd token create --worker` \
                 (on the server's host, `herd` finds the admin's token in DATA_DIR/admin-token); \
                 pass it with --token-file FILE (or HERD_TOKEN_FILE), or in HERD_TOKEN",
            )
        })?,
    };
    let tls = ClientTls::from_env().map_err(|error| exit::Error::usage(error.to_string()))?;
    Ok(herd_worker::Config {
        server,
        tls,
        name,
        batch: args.batch,
        concurrency: args.concurrency.unwrap_or(cores.max(1)),
        prefetch: args.prefetch,
        executor: match args.executor {
            ExecutorChoice::Docker => herd_worker::ExecutorKind::Docker,
            ExecutorChoice::Bare => herd_worker::ExecutorKind::Bare,
            ExecutorChoice::Auto => herd_worker::ExecutorKind::Auto,
        },
        allow_privileged: args.allow_privileged,
        policy,
        work_dir,
        cores,
        memory_bytes,
        token,
        keep_failed: args.keep_failed,
        cache_max_bytes: args.cache_max_size,
    })
}

async fn run_worker(
    server: &str,
    args: WorkerRunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    let config = worker_config(server, args)?;
    info!(
        server = %config.server,
        batch = %config.batch,
        concurrency = config.concurrency,
        work_dir = %config.work_dir.display(),
        "worker {} starting",
        config.name
    );
    herd_worker::run(config, shutdown)
        .await
        .context("the worker stopped")?;
    Ok(Outcome::Success)
}

async fn list(connection: &mut Connection, args: JsonArgs) -> anyhow::Result<Outcome> {
    let workers = connection.workers().await?;
    if args.json {
        output::print_json(&workers)?;
        return Ok(Outcome::Success);
    }
    let now = Timestamp::now();
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "BATCH",
        "STATUS",
        "TASKS",
        "CONCURRENCY",
        "DOCKER",
        "LAST SEEN",
    ]);
    for worker in &workers {
        table.push(vec![
            worker.id.to_string(),
            worker.name.clone(),
            worker.batch.clone(),
            match worker.quarantined_until {
                Some(until) => format!(
                    "{} ({} left)",
                    worker.status,
                    output::duration(until.since(now))
                ),
                None => worker.status.clone(),
            },
            worker.tasks.len().to_string(),
            worker.concurrency.to_string(),
            if worker.docker { "yes" } else { "no" }.to_owned(),
            format!("{} ago", output::duration(now.since(worker.last_seen))),
        ]);
    }
    table.print()?;
    for worker in &workers {
        if let Some(reason) = &worker.quarantine_reason {
            output::print(&format!(
                "worker {} ({}) is quarantined: {reason}\n",
                worker.id, worker.name
            ))?;
        }
    }
    Ok(Outcome::Success)
}
