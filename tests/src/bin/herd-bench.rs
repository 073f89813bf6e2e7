//! herd-bench: measures what the core issue names, on SQLite and PostgreSQL.
//!
//! - latency: a no-op task from the submit call to the moment a worker starts running it, on an
//!   idle worker (one task at a time), p50/p90/p99 over `--latency-tasks` tasks;
//! - submit: `--submit-tasks` tasks queued in one request (what `herd launch --file` sends),
//!   durable when the call returns; seconds and tasks/s.
//!
//! Prints a table and, with `--json FILE`, writes the figures. PostgreSQL is measured when
//! `HERD_TEST_POSTGRES_URL` is set (see scripts/start-postgres.sh). Build with `--release`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_proto::TaskSpec;
use herd_proto::pb;
use herd_tests::executors::ClockedExecutor;
use herd_tests::{Cluster, ClusterOptions, Engine, WorkerOptions, shell_task};
use herd_worker::Executors;
use herd_worker::executor::bare::BareExecutor;

struct Args {
    latency_tasks: usize,
    submit_tasks: usize,
    json: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        latency_tasks: 1000,
        submit_tasks: 100_000,
        json: None,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .with_context(|| format!("{word} needs a value"))
        };
        match word.as_str() {
            "--latency-tasks" => args.latency_tasks = value()?.parse()?,
            "--submit-tasks" => args.submit_tasks = value()?.parse()?,
            "--json" => args.json = Some(value()?),
            "-h" | "--help" => {
                println!("herd-bench [--latency-tasks N] [--submit-tasks N] [--json FILE]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument `{other}`; see --help"),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn latency(engine: Engine, count: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    let cluster = Cluster::start_with(ClusterOptions {
        engine,
        ..ClusterOptions::default()
    })
    .await?;
    let (clocked, mut started) = ClockedExecutor::new(Arc::new(BareExecutor::new()));
    let _worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            executors: Some(Executors {
                bare: Arc::new(clocked),
                docker: None,
            }),
            ..WorkerOptions::default()
        })
        .await?;
    let mut client = cluster.client().await?;
    let mut samples = Vec::with_capacity(count);
    // A warm-up task also waits for the worker to connect.
    let warm_up = cluster.submit(vec![spec()]).await?;
    started.recv().await.context("worker stopped")?;
    cluster
        .wait_task(warm_up[0], "done", |task| task.state.is_terminal())
        .await?;
    for _ in 0..count {
        let request = pb::SubmitRequest {
            tasks: vec![pb::TaskSpec::from(&spec())],
        };
        let begin = Instant::now();
        let ids = client.submit(request).await?.into_inner().ids;
        let (_, at) = started.recv().await.context("worker stopped")?;
        samples.push(at.duration_since(begin));
        // Idle worker: wait until this one is over.
        cluster
            .wait_task(herd_proto::TaskId(ids[0]), "done", |task| {
                task.state.is_terminal()
            })
            .await?;
    }
    samples.sort();
    Ok((
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
    ))
}

fn spec() -> TaskSpec {
    TaskSpec::new(
        herd_proto::BatchName::default_batch(),
        vec!["true".to_owned()],
    )
}

async fn submit(engine: Engine, count: usize) -> anyhow::Result<Duration> {
    let cluster = Cluster::start_with(ClusterOptions {
        engine,
        ..ClusterOptions::default()
    })
    .await?;
    let mut client = cluster.client().await?;
    let tasks: Vec<pb::TaskSpec> = (0..count)
        .map(|index| {
            pb::TaskSpec::from(&shell_task(
                "bench",
                &format!("echo sample_{index} | wc -c"),
            ))
        })
        .collect();
    let begin = Instant::now();
    let ids = client
        .submit(pb::SubmitRequest { tasks })
        .await?
        .into_inner()
        .ids;
    let elapsed = begin.elapsed();
    anyhow::ensure!(ids.len() == count, "queued {} of {count}", ids.len());
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut engines = vec![("sqlite", Engine::Sqlite)];
    if std::env::var_os(herd_tests::postgres::ADMIN_URL_VARIABLE).is_some() {
        engines.push(("postgres", Engine::Postgres));
    } else {
        eprintln!("herd-bench: HERD_TEST_POSTGRES_URL is not set; measuring SQLite only");
    }
    let mut results = Vec::new();
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "database", "p50 ms", "p90 ms", "p99 ms", "submit s", "submit task/s"
    );
    for (name, engine) in engines {
        let (p50, p90, p99) = latency(engine, args.latency_tasks).await?;
        let submit_time = submit(engine, args.submit_tasks).await?;
        let rate = args.submit_tasks as f64 / submit_time.as_secs_f64();
        println!(
            "{name:<10} {:>12.2} {:>12.2} {:>12.2} {:>14.3} {:>14.0}",
            millis(p50),
            millis(p90),
            millis(p99),
            submit_time.as_secs_f64(),
            rate
        );
        results.push(serde_json::json!({
            "database": name,
            "latency_tasks": args.latency_tasks,
            "latency_ms": {"p50": millis(p50), "p90": millis(p90), "p99": millis(p99)},
            "submit_tasks": args.submit_tasks,
            "submit_seconds": submit_time.as_secs_f64(),
            "submit_tasks_per_second": rate,
        }));
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        eprintln!("herd-bench: figures written to {path}");
    }
    Ok(())
}
