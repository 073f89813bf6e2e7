//! Items 2 and 4: tasks through a real `herd server` process, from the first submit to the
//! last completion.
//!
//! - Item 2 (`e2e`): `true` tasks run by a real `herd worker --executor bare` process.
//! - Item 4 (`dispatch`): the worker runs in this process with the instant executor (every
//!   attempt ends at once with code 0), so the figure is herd's own overhead; the server's CPU
//!   comes from its own process, apart from the worker's.
//!
//! Both submit one warm-up task first (the worker is connected and everything is warm), then
//! all the tasks in one Submit call, and poll the batch every 10 ms until every task ended.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_proto::pb;
use herd_tests::executors::InstantExecutor;
use herd_tests::{Engine, WorkerOptions};
use herd_worker::Executors;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::process::{
    HerdServer, HerdWorker, ProcStats, proc_stats, run_limit, task, wait_batch_done,
};

const BATCH: &str = "bench";

/// What one run through a server gave.
pub struct Run {
    /// First submit to last completion.
    pub elapsed: Duration,
    /// Tasks run (the warm-up excluded).
    pub tasks: usize,
    /// Server CPU seconds over the run.
    pub server_cpu_seconds: f64,
    /// Worker CPU seconds over the run (its process, or this one for the instant executor).
    pub worker_cpu_seconds: f64,
}

impl Run {
    /// Tasks per second.
    pub fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU seconds per 1,000 tasks.
    pub fn per_thousand(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * 1000.0 / self.tasks as f64
    }

    /// The figures for the JSON.
    pub fn details(&self, concurrency: usize) -> Value {
        json!({
            "tasks": self.tasks,
            "concurrency": concurrency,
            "seconds": self.elapsed.as_secs_f64(),
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_seconds_per_1000_tasks": self.per_thousand(self.server_cpu_seconds),
            "worker_cpu_seconds": self.worker_cpu_seconds,
            "worker_cpu_seconds_per_1000_tasks": self.per_thousand(self.worker_cpu_seconds),
        })
    }
}

/// Item 2: `tasks` `true` tasks through `herd server` and `herd worker --executor bare`.
pub async fn end_to_end(
    herd: &Path,
    engine: Engine,
    tasks: usize,
    concurrency: usize,
    prefetch: Option<u32>,
) -> anyhow::Result<Run> {
    let server = HerdServer::start(herd, engine).await?;
    let worker = HerdWorker::start(herd, &server, BATCH, "bare", concurrency, prefetch).await?;
    let worker_pid = worker.pid;
    let run = through(&server, tasks, || proc_stats(worker_pid)).await?;
    drop(worker);
    Ok(run)
}

/// Item 4: `tasks` tasks through `herd server` and an in-process worker with the instant
/// executor.
pub async fn dispatch(
    herd: &Path,
    engine: Engine,
    tasks: usize,
    concurrency: usize,
    prefetch: Option<u32>,
) -> anyhow::Result<Run> {
    let server = HerdServer::start(herd, engine).await?;
    let defaults = WorkerOptions::default();
    let shutdown = CancellationToken::new();
    let worker = herd_tests::start_worker(
        &server.url,
        WorkerOptions {
            batch: BATCH.to_owned(),
            concurrency: concurrency as u32,
            prefetch: prefetch.unwrap_or(defaults.prefetch),
            executors: Some(Executors {
                bare: Some(Arc::new(InstantExecutor)),
                docker: None,
            }),
            token: Some(server.worker_token().await?),
            ..defaults
        },
        shutdown.clone(),
    )
    .await?;
    let client = server.client().await?;
    herd_tests::wait_for("the worker to connect", herd_tests::WAIT, || {
        let mut client = client.clone();
        async move {
            let workers = client.list_workers(pb::Empty {}).await.ok()?.into_inner();
            workers
                .workers
                .iter()
                .any(|worker| worker.status == "connected")
                .then_some(())
        }
    })
    .await?;
    let own_pid = std::process::id();
    let run = through(&server, tasks, || proc_stats(own_pid)).await;
    let work_dir = worker.work_dir.clone();
    worker.stop().await;
    let _ = std::fs::remove_dir_all(work_dir);
    run
}

/// One warm-up task, then `tasks` `true` tasks in one Submit; measured from that call to the
/// poll that sees the last one ended.
async fn through(
    server: &HerdServer,
    tasks: usize,
    worker_stats: impl Fn() -> anyhow::Result<ProcStats>,
) -> anyhow::Result<Run> {
    let mut client = server.client().await?;
    client
        .submit(pb::SubmitRequest {
            tasks: vec![task(BATCH, &["true"])],
            idempotency_key: None,
        })
        .await?;
    wait_batch_done(&mut client, BATCH, 1, run_limit(1)).await?;

    let request = pb::SubmitRequest {
        tasks: (0..tasks).map(|_| task(BATCH, &["true"])).collect(),
        idempotency_key: None,
    };
    let server_before = server.stats()?;
    let worker_before = worker_stats()?;
    let begin = Instant::now();
    let ids = client.submit(request).await?.into_inner().ids;
    anyhow::ensure!(ids.len() == tasks, "queued {} of {tasks}", ids.len());
    let end = wait_batch_done(&mut client, BATCH, tasks as u64 + 1, run_limit(tasks))
        .await
        .context("waiting for the tasks to end")?;
    let server_after = server.stats()?;
    let worker_after = worker_stats()?;
    Ok(Run {
        elapsed: end.duration_since(begin),
        tasks,
        server_cpu_seconds: server_after.cpu_seconds - server_before.cpu_seconds,
        worker_cpu_seconds: worker_after.cpu_seconds - worker_before.cpu_seconds,
    })
}
