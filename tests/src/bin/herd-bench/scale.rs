//! Item 7: a `herd server` process (SQLite) at scale.
//!
//! - memory: its resident memory (VmRSS) once `--queued-tasks` tasks are queued, in Submit
//!   calls of 100,000, in a batch no worker serves; and its peak (VmHWM) on the way;
//! - workers: `--workers` simulated workers, each on its own HTTP/2 connection with the real
//!   worker's settings, open the worker stream, say hello, and send a heartbeat at the interval
//!   the server's welcome gives (5 s by default), their phases spread over the interval as
//!   workers started at different times would be; the server's CPU is measured over
//!   `--workers-seconds` once they are all connected.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use herd_proto::access::{Bearer, Secret};
use herd_proto::pb::{self, server_message, worker_message};
use herd_tests::Engine;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::process::{HerdServer, ProcStats, task};

/// Memory of a server with many queued tasks.
pub struct Memory {
    /// Tasks queued.
    pub tasks: usize,
    /// Before any task.
    pub baseline: ProcStats,
    /// Once all are queued.
    pub queued: ProcStats,
    /// Time to queue them all.
    pub submit: Duration,
    /// From the `kill -9` of the server with them all queued to its answering again on the
    /// same database.
    pub restart: Duration,
}

/// Queues `count` tasks in calls of 100,000 and reads the server's memory.
pub async fn memory(herd: &Path, count: usize) -> anyhow::Result<Memory> {
    const CHUNK: usize = 100_000;
    let server = HerdServer::start(herd, Engine::Sqlite).await?;
    let mut client = server.client().await?;
    let baseline = server.stats()?;
    let begin = Instant::now();
    let mut queued = 0;
    while queued < count {
        let size = CHUNK.min(count - queued);
        let tasks = (queued..queued + size)
            .map(|index| {
                task(
                    "queued",
                    &["sh", "-c", &format!("echo sample_{index} | wc -c")],
                )
            })
            .collect();
        let ids = client
            .submit(pb::SubmitRequest {
                tasks,
                idempotency_key: None,
            })
            .await?
            .into_inner()
            .ids;
        anyhow::ensure!(ids.len() == size, "queued {} of {size}", ids.len());
        queued += size;
    }
    let submit = begin.elapsed();
    let queued = server.stats()?;
    let mut server = server;
    let restart = server.kill_and_restart(herd).await?;
    Ok(Memory {
        tasks: count,
        baseline,
        queued,
        submit,
        restart,
    })
}

/// A server's CPU with many idle workers connected.
pub struct Workers {
    /// Simulated workers.
    pub workers: usize,
    /// Time to connect them all.
    pub connect: Duration,
    /// The heartbeat interval the server asked for.
    pub heartbeat: Duration,
    /// The measuring window.
    pub window: Duration,
    /// Server CPU seconds over the window.
    pub cpu_seconds: f64,
    /// Heartbeats sent in the window.
    pub heartbeats: u64,
    /// Server memory at the end.
    pub stats: ProcStats,
}

/// Connects `count` simulated workers, lets them settle for one heartbeat interval, then
/// measures the server's CPU for `seconds`.
pub async fn workers(herd: &Path, count: usize, seconds: u64) -> anyhow::Result<Workers> {
    check_open_files(count)?;
    let mut server = HerdServer::start(herd, Engine::Sqlite).await?;
    // One worker token for the whole simulated fleet, as a real fleet would share one.
    let token = server.worker_token().await?;
    let stop = CancellationToken::new();
    let heartbeats = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicUsize::new(0));
    let interval_ms = Arc::new(AtomicU64::new(0));

    let begin = Instant::now();
    // Connect 64 at a time, as a fleet coming up would, without flooding the listen backlog.
    let connected: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|index| {
            let url = server.url.clone();
            let token = token.clone();
            let stop = stop.clone();
            let heartbeats = heartbeats.clone();
            let broken = broken.clone();
            let interval_ms = interval_ms.clone();
            async move {
                let (ready, welcomed) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let outcome = simulated_worker(
                        url,
                        token,
                        index,
                        count,
                        ready,
                        stop,
                        heartbeats,
                        interval_ms,
                    )
                    .await;
                    if outcome.is_err() {
                        broken.fetch_add(1, Ordering::Relaxed);
                    }
                });
                welcomed
                    .await
                    .map_err(|_| anyhow::anyhow!("simulated worker {index} ended early"))?
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failures: Vec<String> = connected
        .into_iter()
        .filter_map(|result| result.err().map(|error| format!("{error:#}")))
        .collect();
    if let Some(first) = failures.first() {
        stop.cancel();
        bail!(
            "{} of {count} simulated workers could not connect; the first: {first}",
            failures.len()
        );
    }
    let connect = begin.elapsed();

    let mut client = server.client().await?;
    let listed = client.list_workers(pb::Empty {}).await?.into_inner();
    let connected = listed
        .workers
        .iter()
        .filter(|worker| worker.status == "connected")
        .count();
    anyhow::ensure!(
        connected == count,
        "the server lists {connected} connected workers, expected {count}"
    );

    let heartbeat = Duration::from_millis(interval_ms.load(Ordering::Relaxed));
    // Let the connection burst settle: one full heartbeat round before measuring.
    tokio::time::sleep(heartbeat).await;
    let before = server.stats()?;
    let beats_before = heartbeats.load(Ordering::Relaxed);
    let window_begin = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = server.stats()?;
    let window = window_begin.elapsed();
    let beats = heartbeats.load(Ordering::Relaxed) - beats_before;
    stop.cancel();
    server.check_running()?;
    let broken = broken.load(Ordering::Relaxed);
    anyhow::ensure!(broken == 0, "{broken} simulated worker streams broke");
    Ok(Workers {
        workers: count,
        connect,
        heartbeat,
        window,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        heartbeats: beats,
        stats: after,
    })
}

/// One worker: its own connection (the real worker's endpoint settings), hello, welcome, then
/// a heartbeat every interval until `stop`.
#[allow(clippy::too_many_arguments)]
async fn simulated_worker(
    url: String,
    token: Secret,
    index: usize,
    count: usize,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
    heartbeats: Arc<AtomicU64>,
    interval_ms: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let session = async {
        let channel =
            herd_proto::transport::endpoint(&url, &herd_proto::transport::ClientTls::default())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .connect()
                .await
                .context("cannot connect")?;
        let mut client =
            pb::workers_client::WorkersClient::with_interceptor(channel, Bearer::new(&token)?);
        let (sender, receiver) = mpsc::channel::<pb::WorkerMessage>(16);
        let hello = pb::Hello {
            worker_id: None,
            name: format!("simulated-{index}"),
            batch: "idle".to_owned(),
            concurrency: 1,
            cores: 1,
            memory_bytes: 1 << 30,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..pb::Hello::default()
        };
        sender
            .send(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            })
            .await
            .ok()
            .context("the stream closed at once")?;
        let mut inbound = client
            .session(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let Some(server_message::Kind::Welcome(welcome)) =
            inbound.message().await?.and_then(|message| message.kind)
        else {
            bail!("the server did not welcome the worker");
        };
        anyhow::Ok((sender, inbound, welcome.heartbeat_interval_ms.max(100)))
    };
    let (sender, mut inbound, interval) = match session.await {
        Ok(session) => session,
        Err(error) => {
            let _ = ready.send(Err(anyhow::anyhow!("{error:#}")));
            return Err(error);
        }
    };
    interval_ms.store(interval, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    let interval = Duration::from_millis(interval);
    // Spread the phases over one interval.
    let phase = interval.mul_f64(index as f64 / count as f64);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let beat = pb::WorkerMessage {
                    kind: Some(worker_message::Kind::Heartbeat(pb::Heartbeat {})),
                };
                sender.send(beat).await.ok().context("the stream closed")?;
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            message = inbound.message() => match message {
                Ok(Some(_)) => {}
                Ok(None) => bail!("the server closed the stream"),
                Err(status) => bail!("the stream broke: {}", status.message()),
            },
        }
    }
}

/// Each simulated worker holds a socket here and one in the server (a child of this process,
/// with the same limit): fail early with what to do rather than halfway.
fn check_open_files(workers: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<usize>().ok());
    let needed = workers + 256;
    match soft {
        Some(soft) if soft < needed => bail!(
            "{workers} simulated workers need about {needed} open files and the limit is {soft}: \
             raise it (`ulimit -n {}`) or give fewer --workers",
            needed.next_power_of_two()
        ),
        _ => Ok(()),
    }
}
