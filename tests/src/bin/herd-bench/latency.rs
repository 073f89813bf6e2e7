//! Item 5: from the submit to the moment a worker starts the task, on an idle worker
//! (concurrency 1, bare executor, `true`, one task at a time).
//!
//! - in-process: the Submit call on an open connection (the server and the worker in this
//!   process, as in the test harness), to the moment the worker's executor is called;
//! - `herd launch`: the same, but starting a `herd launch -- true` process per task, so the
//!   CLI's own start-up (process, runtime, connection) is counted.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_proto::{TaskId, pb};
use herd_tests::executors::ClockedExecutor;
use herd_tests::{Cluster, ClusterOptions, Engine, WorkerOptions};
use herd_worker::Executors;
use herd_worker::executor::bare::BareExecutor;

use crate::process::herd_command;

/// Latency samples, sorted.
pub struct Samples {
    /// Through the Submit call on an open connection.
    pub in_process: Vec<Duration>,
    /// Through a `herd launch` process (empty without the binary or with 0 tasks).
    pub cli: Vec<Duration>,
}

/// Measures `count` in-process and `cli_count` CLI samples.
pub async fn measure(
    engine: Engine,
    count: usize,
    herd: Option<&Path>,
    cli_count: usize,
) -> anyhow::Result<Samples> {
    let cluster = Cluster::start_with(ClusterOptions {
        engine,
        ..ClusterOptions::default()
    })
    .await?;
    let (clocked, mut started) = ClockedExecutor::new(Arc::new(BareExecutor::new()));
    let worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            executors: Some(Executors {
                bare: Some(Arc::new(clocked)),
                docker: None,
            }),
            ..WorkerOptions::default()
        })
        .await?;
    let mut client = cluster.client().await?;
    let admin = cluster.admin_token().await?;
    let spec = || pb::TaskSpec {
        batch: "default".to_owned(),
        command: vec!["true".to_owned()],
        ..pb::TaskSpec::default()
    };
    let wait_done =
        |id: u64| cluster.wait_task(TaskId(id), "done", |task| task.state.is_terminal());

    // A warm-up task also waits for the worker to connect.
    let warm_up = client
        .submit(pb::SubmitRequest {
            tasks: vec![spec()],
            idempotency_key: None,
        })
        .await?
        .into_inner()
        .ids;
    started.recv().await.context("worker stopped")?;
    wait_done(warm_up[0]).await?;

    let mut in_process = Vec::with_capacity(count);
    for _ in 0..count {
        let request = pb::SubmitRequest {
            tasks: vec![spec()],
            idempotency_key: None,
        };
        let begin = Instant::now();
        let ids = client.submit(request).await?.into_inner().ids;
        let (_, at) = started.recv().await.context("worker stopped")?;
        in_process.push(at.duration_since(begin));
        // Idle worker: wait until this one is over.
        wait_done(ids[0]).await?;
    }
    in_process.sort();

    let mut cli = Vec::with_capacity(cli_count);
    if let Some(herd) = herd {
        for _ in 0..cli_count {
            let mut command = herd_command(herd);
            command
                .env("HERD_TOKEN", admin.expose())
                .arg("launch")
                .arg("--server")
                .arg(&cluster.url)
                .arg("--")
                .arg("true")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let begin = Instant::now();
            let child = command.spawn().context("cannot start herd launch")?;
            let (_, at) = started.recv().await.context("worker stopped")?;
            cli.push(at.duration_since(begin));
            let output = child.wait_with_output().await?;
            if !output.status.success() {
                bail!(
                    "herd launch exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let id: u64 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .context("herd launch did not print a task id")?;
            wait_done(id).await?;
        }
        cli.sort();
    }
    let work_dir = worker.work_dir.clone();
    worker.stop().await;
    let _ = std::fs::remove_dir_all(work_dir);
    Ok(Samples { in_process, cli })
}
