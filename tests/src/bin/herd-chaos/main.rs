//! herd-chaos: a randomized schedule of faults over real `herd server` and `herd worker`
//! processes, then a check that herd kept its promises.
//!
//! The schedule is drawn from a seed, printed first, so a failure can be replayed
//! (`herd-chaos --seed N`). While tasks are launched (`herd launch --file` with an idempotency
//! key, repeated until it answers), it kills workers (`kill -9`, mid-download, mid-run or
//! mid-upload as it happens), kills the server (`kill -9`, under the completion stream and
//! during submits) and cuts workers off the server (a TCP proxy drops their connections for
//! longer than the lost-worker timeout, then heals). Then it heals everything, lets the queue
//! drain, and checks, for every task:
//! - every id a launch acknowledged exists;
//! - the task ended (or is pending with a reason);
//! - at most one attempt succeeded, and none began after it: no task has two committed
//!   results, and no stale attempt's result was accepted;
//! - attempts are numbered 1, 2, ... without gaps;
//! - no task exists that no launch acknowledged (nothing queued twice);
//! - a succeeded task's output (each task writes `$HERD_ATTEMPT` to `a-$HERD_TASK_ID` in the
//!   one output folder) is its succeeded attempt's: no stale attempt uploaded after it.
//!
//! Usage: `herd-chaos [--seed N] [--events N] [--tasks N] [--engine sqlite|postgres|both]
//! [--herd PATH]`. Exit 0 when every check holds, 1 when one fails (with the seed and the
//! processes' logs), 2 when it cannot run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

mod cluster;
mod proxy;

use cluster::{Cluster, WORKER_TIMEOUT_SECS};

/// The command line.
struct Args {
    seed: u64,
    events: usize,
    tasks: usize,
    engines: Vec<bool>,
    herd: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seed: seed_from_clock(),
        events: 30,
        tasks: 200,
        engines: vec![false],
        herd: default_herd()?,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| {
            words
                .next()
                .with_context(|| format!("{name} needs a value"))
        };
        match word.as_str() {
            "--seed" => args.seed = value("--seed")?.parse().context("--seed: a number")?,
            "--events" => args.events = value("--events")?.parse().context("--events: a number")?,
            "--tasks" => args.tasks = value("--tasks")?.parse().context("--tasks: a number")?,
            "--engine" => {
                args.engines = match value("--engine")?.as_str() {
                    "sqlite" => vec![false],
                    "postgres" => vec![true],
                    "both" => vec![false, true],
                    other => bail!("--engine {other}: give sqlite, postgres or both"),
                }
            }
            "--herd" => args.herd = PathBuf::from(value("--herd")?),
            "--help" | "-h" => {
                println!(
                    "herd-chaos [--seed N] [--events N] [--tasks N] [--engine sqlite|postgres|both] [--herd PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`; see --help"),
        }
    }
    Ok(args)
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        | 1
}

/// The `herd` binary next to this one.
fn default_herd() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("herd"))
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorker(usize),
    KillServer,
    CutWorker(usize),
    /// `kill -9` of the server while a bulk launch is under way.
    KillServerDuringLaunch,
    /// PostgreSQL restarted under load (`HERD_TEST_POSTGRES_RESTART`, on PostgreSQL runs).
    RestartDatabase,
}

const WORKERS: usize = 3;
const CONCURRENCY: u32 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("herd-chaos: {error:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "herd-chaos: seed {} ({} events, {} tasks; replay with --seed {})",
        args.seed, args.events, args.tasks, args.seed
    );
    let mut failed = false;
    for &postgres in &args.engines {
        let engine = if postgres { "postgres" } else { "sqlite" };
        match run(&args, postgres).await {
            Ok(report) => println!("herd-chaos [{engine}]: ok: {report}"),
            Err(error) => {
                println!(
                    "herd-chaos [{engine}]: FAILED (seed {}): {error:#}",
                    args.seed
                );
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// One run on one engine; a summary line, or what went wrong (with the logs).
async fn run(args: &Args, postgres: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut rng = Rng(args.seed);
    let mut cluster = Cluster::start(&args.herd, postgres, WORKERS, CONCURRENCY).await?;
    let outcome = schedule(&mut cluster, &mut rng, args).await;
    match outcome {
        Ok((acknowledged, faults)) => {
            let checked = check(&mut cluster, &acknowledged)
                .await
                .with_context(|| format!("processes' logs:\n{}", cluster.logs()))?;
            Ok(format!(
                "{faults} faults, {} tasks acknowledged, {checked}; {:.1} s",
                acknowledged.len(),
                started.elapsed().as_secs_f64()
            ))
        }
        Err(error) => Err(error.context(format!("processes' logs:\n{}", cluster.logs()))),
    }
}

/// Runs the faults, launching tasks between them; the ids acknowledged and the faults run.
async fn schedule(
    cluster: &mut Cluster,
    rng: &mut Rng,
    args: &Args,
) -> anyhow::Result<(Vec<u64>, usize)> {
    // Restarting PostgreSQL under load: on PostgreSQL runs, with the command the test set-up
    // gives (scripts/start-postgres.sh). It restarts the shared test cluster: run alone.
    let restart_database = if cluster.uses_postgres() {
        let command = std::env::var("HERD_TEST_POSTGRES_RESTART").ok();
        if command.is_none() {
            println!(
                "herd-chaos:   HERD_TEST_POSTGRES_RESTART is not set: no PostgreSQL restarts in this run"
            );
        }
        command
    } else {
        None
    };
    let launches = 5.max(args.events / 4);
    let per_launch = args.tasks.div_ceil(launches);
    let mut acknowledged = Vec::new();
    let mut launched = 0;
    for event in 0..args.events {
        if launched < launches && event % (args.events / launches).max(1) == 0 {
            let ids = launch(cluster, rng, launched, per_launch).await?;
            acknowledged.extend(ids);
            launched += 1;
        }
        let fault = match rng.below(8) {
            0 | 1 => Fault::KillWorker(rng.below(WORKERS as u64) as usize),
            2 | 3 => Fault::KillServer,
            4 => Fault::KillServerDuringLaunch,
            5 if restart_database.is_some() => Fault::RestartDatabase,
            _ => Fault::CutWorker(rng.below(WORKERS as u64) as usize),
        };
        println!("herd-chaos:   event {event}: {fault:?}");
        match fault {
            Fault::KillWorker(index) => {
                cluster.kill_worker(index).await?;
                tokio::time::sleep(Duration::from_millis(rng.below(800))).await;
                cluster.start_worker(index, CONCURRENCY).await?;
            }
            Fault::KillServer => cluster.kill_and_restart_server().await?,
            Fault::RestartDatabase => {
                let command = restart_database.as_deref().unwrap_or_default();
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .status()
                    .await?;
                if !status.success() {
                    bail!("`{command}` exited with {status}");
                }
            }
            Fault::KillServerDuringLaunch => {
                let number = 1_000 + event;
                let file = write_launch_file(cluster, rng, number, BULK_LAUNCH)?;
                let args = launch_args(&output_dir(cluster), number, &file);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut running = cluster
                    .herd_command(&args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()?;
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                cluster.kill_and_restart_server().await?;
                // The launch retries by itself when it lost the answer; one that could not
                // connect at all is run again with the same key.
                let output = running.wait().await?;
                let ids = if output.success() {
                    let mut stdout = String::new();
                    if let Some(mut pipe) = running.stdout.take() {
                        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stdout).await?;
                    }
                    parse_ids(&stdout, BULK_LAUNCH)?
                } else {
                    launch_until_answered(cluster, number, &file, BULK_LAUNCH).await?
                };
                acknowledged.extend(ids);
            }
            Fault::CutWorker(index) => {
                cluster.workers[index].proxy.cut();
                tokio::time::sleep(Duration::from_secs(WORKER_TIMEOUT_SECS + 1)).await;
                cluster.workers[index].proxy.heal();
            }
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(600))).await;
    }
    while launched < launches {
        acknowledged.extend(launch(cluster, rng, launched, per_launch).await?);
        launched += 1;
    }
    Ok((acknowledged, args.events))
}

/// Where every task's output goes (`a-<task>`, holding its attempt's number).
fn output_dir(cluster: &Cluster) -> String {
    format!("{}/", cluster.path("out").display())
}

/// Tasks in one launch cut by a `kill -9` of the server.
const BULK_LAUNCH: usize = 500;

/// Launches `count` short tasks with one `herd launch --file`, repeated with the same
/// idempotency key until it answers (the server may be down); the ids it acknowledged.
async fn launch(
    cluster: &Cluster,
    rng: &mut Rng,
    number: usize,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    let file = write_launch_file(cluster, rng, number, count)?;
    launch_until_answered(cluster, number, &file, count).await
}

fn launch_args(output: &str, number: usize, file: &str) -> Vec<String> {
    [
        "launch",
        "-b",
        "chaos",
        "-o",
        output,
        "--idempotency-key",
        &format!("chaos-{number}"),
        "--file",
        file,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn parse_ids(stdout: &str, count: usize) -> anyhow::Result<Vec<u64>> {
    let ids = stdout
        .lines()
        .map(|line| line.trim().parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("launch printed {stdout}"))?;
    if ids.len() != count {
        bail!("a launch acknowledged {} ids for {count} tasks", ids.len());
    }
    Ok(ids)
}

/// The file of launch `number`: `count` tasks, mostly short, some long enough to be caught
/// mid-run by a fault.
fn write_launch_file(
    cluster: &Cluster,
    rng: &mut Rng,
    number: usize,
    count: usize,
) -> anyhow::Result<String> {
    let mut lines = String::new();
    for _ in 0..count {
        // Mostly short tasks; some run long enough to be caught mid-run by a fault.
        // (A bulk launch is all short tasks: it is there to be cut mid-submit.)
        let sleep = match rng.below(10) {
            0 if count < BULK_LAUNCH => format!("1.{}", rng.below(10)),
            _ => format!("0.0{}", rng.below(10)),
        };
        // Its output names the task and holds the attempt: a stale attempt's upload after the
        // newer one would show.
        lines.push_str(&format!(
            "sh -c 'sleep {sleep}; echo $HERD_ATTEMPT > $OUTPUT/a-$HERD_TASK_ID'\n"
        ));
    }
    let file = cluster.path(&format!("launch-{number}.txt"));
    std::fs::write(&file, lines)?;
    Ok(file.to_string_lossy().into_owned())
}

/// Runs launch `number` of `file` until it answers, always with the same key.
async fn launch_until_answered(
    cluster: &Cluster,
    number: usize,
    file: &str,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    let args = launch_args(&output_dir(cluster), number, file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match cluster.herd(&args).await {
            Ok(stdout) => return parse_ids(&stdout, count),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "launch not answered; again with the same key");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.context("no launch answered within 120 s")),
        }
    }
}

/// Heals everything, waits for the queue to drain, and checks every task; a summary.
async fn check(cluster: &mut Cluster, acknowledged: &[u64]) -> anyhow::Result<String> {
    for index in 0..cluster.workers.len() {
        cluster.workers[index].proxy.heal();
        if cluster.workers[index].process.is_none() {
            cluster.start_worker(index, CONCURRENCY).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let tasks = loop {
        let listed: Value = serde_json::from_str(
            &cluster
                .herd(&["task", "list", "-b", "chaos", "--json"])
                .await?,
        )?;
        let tasks = listed.as_array().context("a JSON array")?.clone();
        let open = tasks
            .iter()
            .filter(|task| {
                !matches!(
                    task["state"].as_str(),
                    Some("succeeded" | "failed" | "canceled")
                )
            })
            .count();
        if open == 0 {
            break tasks;
        }
        if Instant::now() > deadline {
            bail!("{open} tasks still not ended 180 s after the last fault");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut violations = Vec::new();
    let known: std::collections::BTreeSet<u64> = tasks
        .iter()
        .filter_map(|task| task["id"].as_u64())
        .collect();
    for id in acknowledged {
        if !known.contains(id) {
            violations.push(format!("task {id} was acknowledged and is gone"));
        }
    }
    // Every launch was retried with its key until it answered: a task nobody acknowledged was
    // queued twice.
    let acknowledged_set: std::collections::BTreeSet<u64> = acknowledged.iter().copied().collect();
    if acknowledged_set.len() != acknowledged.len() {
        violations.push("a launch acknowledged an id another launch did".to_owned());
    }
    for id in known.difference(&acknowledged_set) {
        violations.push(format!(
            "task {id} exists but no launch acknowledged it (queued twice?)"
        ));
    }
    let (mut succeeded, mut failed, mut attempts) = (0, 0, 0);
    for task in &tasks {
        let id = task["id"].as_u64().unwrap_or_default();
        let state = task["state"].as_str().unwrap_or_default();
        let list = task["attempts"].as_array().cloned().unwrap_or_default();
        attempts += list.len();
        let wins: Vec<u64> = list
            .iter()
            .filter(|attempt| attempt["state"] == "succeeded")
            .filter_map(|attempt| attempt["number"].as_u64())
            .collect();
        if wins.len() > 1 {
            violations.push(format!(
                "task {id} has {} succeeded attempts: {wins:?}",
                wins.len()
            ));
        }
        let numbers: Vec<u64> = list
            .iter()
            .filter_map(|attempt| attempt["number"].as_u64())
            .collect();
        if numbers != (1..=numbers.len() as u64).collect::<Vec<_>>() {
            violations.push(format!("task {id} has attempts numbered {numbers:?}"));
        }
        if let Some(win) = wins.first()
            && numbers.last() != Some(win)
        {
            violations.push(format!("task {id} has attempts after its success #{win}"));
        }
        match state {
            "succeeded" => {
                succeeded += 1;
                if wins.is_empty() {
                    violations.push(format!("task {id} succeeded without a succeeded attempt"));
                }
                let written = std::fs::read_to_string(cluster.path("out").join(format!("a-{id}")));
                match (written, wins.first()) {
                    (Ok(text), Some(win)) if text.trim() != win.to_string() => violations.push(format!(
                        "task {id}'s output was written by attempt {}, its result is attempt {win} (a stale attempt uploaded after the newer one)",
                        text.trim()
                    )),
                    (Err(error), _) => {
                        violations.push(format!("task {id} succeeded and its output is missing: {error}"))
                    }
                    _ => {}
                }
            }
            _ => {
                failed += 1;
                if !wins.is_empty() {
                    violations.push(format!("task {id} is {state} with a succeeded attempt"));
                }
            }
        }
    }
    if !violations.is_empty() {
        bail!(
            "{} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    Ok(format!(
        "{} tasks ended ({succeeded} succeeded, {failed} failed or canceled), {attempts} attempts, 0 violations",
        tasks.len()
    ))
}
