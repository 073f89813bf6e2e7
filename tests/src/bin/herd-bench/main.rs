//! herd-bench: herd's benchmark suite (see `--help`, README.md "Performance" and
//! `bench/run.sh`, the one command for humans).
//!
//! Every measurement runs in this one process run, on this machine, and gives figures next to
//! the targets (reported, never asserted). Server-side figures come from a real
//! `herd server` process (the binary next to this one, or `--herd`): CPU from
//! /proc/PID/stat (utime + stime), memory from /proc/PID/status (VmRSS, VmHWM).
//!
//! # Layout
//! - `args`: the command line (`--only`, sizes, `--small`, `--strict`).
//! - `process`: `herd server` / `herd worker` child processes, /proc readings, waits.
//! - `spawn` (1), `e2e` (2 and 4), `hyperqueue` (3), `latency` (5), `submit` (6), `scale` (7),
//!   `docker` (8): one measurement each.
//! - `report`: figures, targets, the table on stdout, the JSON document.
//!
//! The table goes to stdout, progress to stderr. A missing PostgreSQL, Docker or HyperQueue is
//! reported as skipped, or is an error with `--strict` (or `CI=true`); a failed measurement
//! does not stop the others, and makes the exit code 1.

mod args;
mod docker;
mod e2e;
mod hyperqueue;
mod latency;
mod process;
mod report;
mod scale;
mod spawn;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use herd_tests::Engine;
use serde_json::json;

use crate::args::{Args, Item, engine_name};
use crate::process::{Missing, mib};
use crate::report::{Figure, Gap, Machine, Report, Target, format_value, millis, percentile};

/// What every measurement needs.
struct Bench {
    args: Args,
    /// The `herd` binary, or why there is none.
    herd: Result<PathBuf, String>,
    report: Report,
}

impl Bench {
    fn herd(&self) -> anyhow::Result<PathBuf> {
        self.herd.clone().map_err(anyhow::Error::msg)
    }

    /// Records a skip and returns true if `engine` is PostgreSQL and none is configured.
    fn without_postgres(&mut self, item: Item, what: &str, engine: Engine) -> bool {
        if engine != Engine::Postgres
            || std::env::var_os(herd_tests::postgres::ADMIN_URL_VARIABLE).is_some()
        {
            return false;
        }
        let error = anyhow::Error::new(Missing(format!(
            "{} is not set: run `eval \"$(bash scripts/start-postgres.sh)\"` (as root) first",
            herd_tests::postgres::ADMIN_URL_VARIABLE
        )));
        self.gap(item, what, Some(engine), &error);
        true
    }

    /// Records a measurement that gave no figure: skipped if a dependency is missing.
    fn gap(&mut self, item: Item, what: &str, engine: Option<Engine>, error: &anyhow::Error) {
        let missing = error.downcast_ref::<Missing>().is_some();
        self.report.gap(Gap {
            item: item.number(),
            what: what.to_owned(),
            engine: engine.map(engine_name),
            missing,
            reason: format!("{error:#}").replace('\n', " / "),
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("herd-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args = args::parse()?;
    // Warnings of the in-process server and worker (items 4 and 5) go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let begin = Instant::now();
    let machine = Machine::read();
    eprintln!("herd-bench: {}", machine.describe());
    let herd = process::find_herd(args.herd.as_deref()).map_err(|error| format!("{error:#}"));
    match &herd {
        Ok(path) => eprintln!("herd-bench: herd binary {}", path.display()),
        Err(error) => eprintln!("herd-bench: {error}"),
    }
    let settings = json!({
        "items": args.items.iter().map(|item| item.name()).collect::<Vec<_>>(),
        "engines": args.engines.iter().map(|engine| engine_name(*engine)).collect::<Vec<_>>(),
        "tasks": args.tasks,
        "dispatch_tasks": args.dispatch_tasks.unwrap_or(args.tasks),
        "concurrency": args.concurrency,
        "dispatch_concurrency": args.dispatch_concurrency.unwrap_or(args.concurrency),
        "latency_tasks": args.latency_tasks,
        "cli_latency_tasks": args.cli_latency_tasks,
        "submit_tasks": args.submit_tasks,
        "queued_tasks": args.queued_tasks,
        "workers": args.workers,
        "workers_seconds": args.workers_seconds,
        "docker_runs": args.docker_runs,
        "docker_image": args.docker_image,
        "small": args.small,
        "strict": args.strict,
        "herd": herd.as_ref().ok().map(|path| path.display().to_string()),
    });
    let mut bench = Bench {
        report: Report::new(machine, settings),
        herd,
        args,
    };

    for item in bench.args.items.clone() {
        eprintln!("herd-bench: {}. {}", item.number(), item.name());
        match item {
            Item::Spawn => spawn_rate(&mut bench).await,
            Item::EndToEnd => end_to_end(&mut bench).await,
            Item::HyperQueue => hyperqueue(&mut bench).await,
            Item::Dispatch => dispatch(&mut bench).await,
            Item::Latency => latency(&mut bench).await,
            Item::Submit => submit(&mut bench).await,
            Item::Memory => memory(&mut bench).await,
            Item::Workers => workers(&mut bench).await,
            Item::Docker => docker(&mut bench).await,
        }
    }
    comparisons(&mut bench);

    let elapsed = begin.elapsed();
    print!("{}", bench.report.table());
    eprintln!("herd-bench: done in {:.0} s", elapsed.as_secs_f64());
    if let Some(path) = &bench.args.json {
        if let Some(folder) = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
        {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(
            path,
            serde_json::to_string_pretty(&bench.report.json(elapsed))? + "\n",
        )?;
        eprintln!("herd-bench: figures written to {}", path.display());
    }

    let failed = bench
        .report
        .gaps()
        .iter()
        .filter(|gap| !gap.missing)
        .count();
    let missing = bench.report.gaps().iter().filter(|gap| gap.missing).count();
    if failed > 0 {
        eprintln!("herd-bench: {failed} measurement(s) failed");
        return Ok(ExitCode::from(1));
    }
    if missing > 0 && bench.args.strict {
        eprintln!(
            "herd-bench: {missing} measurement(s) could not run for a missing dependency, an \
             error with --strict / CI=true"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Item 1.
async fn spawn_rate(bench: &mut Bench) {
    let (tasks, threads) = (bench.args.tasks, bench.args.concurrency);
    match spawn::raw_spawn(tasks, threads).await {
        Ok(elapsed) => {
            let seconds = elapsed.as_secs_f64();
            bench.report.add(
                Figure::new(
                    "1",
                    "spawn_tasks_per_second",
                    format!("raw spawn rate: `true` from {threads} threads"),
                    None,
                    tasks as f64 / seconds,
                    "tasks/s",
                )
                .note(format!(
                    "{} processes in {seconds:.2} s; the machine's limit",
                    report::thousands(tasks as u64)
                ))
                .details(json!({"tasks": tasks, "threads": threads, "seconds": seconds})),
            );
        }
        Err(error) => bench.gap(Item::Spawn, "raw spawn rate", None, &error),
    }
}

/// Item 2.
async fn end_to_end(bench: &mut Bench) {
    let (tasks, concurrency) = (bench.args.tasks, bench.args.concurrency);
    for engine in bench.args.engines.clone() {
        if bench.without_postgres(Item::EndToEnd, "herd end to end", engine) {
            continue;
        }
        let result = async {
            let herd = bench.herd()?;
            e2e::end_to_end(&herd, engine, tasks, concurrency, bench.args.prefetch).await
        }
        .await;
        match result {
            Ok(run) => bench.report.add(
                Figure::new(
                    "2",
                    "e2e_tasks_per_second",
                    format!("herd end to end: `true`, bare worker, concurrency {concurrency}"),
                    Some(engine_name(engine)),
                    run.rate(),
                    "tasks/s",
                )
                .note(format!(
                    "{} tasks in {:.2} s; CPU-s per 1,000 tasks: server {:.3}, worker {:.3}",
                    report::thousands(tasks as u64),
                    run.elapsed.as_secs_f64(),
                    run.per_thousand(run.server_cpu_seconds),
                    run.per_thousand(run.worker_cpu_seconds)
                ))
                .details(run.details(concurrency)),
            ),
            Err(error) => bench.gap(Item::EndToEnd, "herd end to end", Some(engine), &error),
        }
    }
}

/// Item 3.
async fn hyperqueue(bench: &mut Bench) {
    let (tasks, cores) = (bench.args.tasks, bench.args.concurrency);
    let python = hyperqueue::python(bench.args.hq_python.as_deref());
    let script = hyperqueue::script(bench.args.hq_script.as_deref());
    match hyperqueue::run(&python, &script, tasks, cores).await {
        Ok(run) => bench.report.add(
            Figure::new(
                "3",
                "hyperqueue_tasks_per_second",
                format!("HyperQueue end to end: LocalCluster, 1 worker, {cores} cores"),
                None,
                run.tasks as f64 / run.seconds,
                "tasks/s",
            )
            .note(format!(
                "{} tasks in {:.2} s to the last start ({:.2} s to its wait's return); HQ {}",
                report::thousands(run.tasks as u64),
                run.seconds,
                run.seconds_to_wait_return,
                run.version
            ))
            .details(json!({
                "tasks": run.tasks,
                "cores": cores,
                "seconds": run.seconds,
                "seconds_to_wait_return": run.seconds_to_wait_return,
                "version": run.version,
            })),
        ),
        Err(error) => bench.gap(Item::HyperQueue, "HyperQueue end to end", None, &error),
    }
}

/// Item 4.
async fn dispatch(bench: &mut Bench) {
    let tasks = bench.args.dispatch_tasks.unwrap_or(bench.args.tasks);
    let concurrency = bench
        .args
        .dispatch_concurrency
        .unwrap_or(bench.args.concurrency);
    for engine in bench.args.engines.clone() {
        if bench.without_postgres(Item::Dispatch, "dispatch", engine) {
            continue;
        }
        let result = async {
            let herd = bench.herd()?;
            e2e::dispatch(&herd, engine, tasks, concurrency, bench.args.prefetch).await
        }
        .await;
        match result {
            Ok(run) => {
                bench.report.add(
                    Figure::new(
                        "4",
                        "dispatch_tasks_per_second",
                        format!("dispatch: instant executor, concurrency {concurrency}"),
                        Some(engine_name(engine)),
                        run.rate(),
                        "tasks/s",
                    )
                    .target(Target::AtLeast(20_000.0))
                    .note(format!(
                        "{} tasks in {:.2} s",
                        report::thousands(tasks as u64),
                        run.elapsed.as_secs_f64()
                    ))
                    .details(run.details(concurrency)),
                );
                bench.report.add(
                    Figure::new(
                        "4",
                        "dispatch_server_cpu_seconds_per_1000_tasks",
                        "dispatch: server CPU seconds per 1,000 tasks",
                        Some(engine_name(engine)),
                        run.per_thousand(run.server_cpu_seconds),
                        "s",
                    )
                    .note(format!(
                        "server process; the worker (this process) used {:.3} s",
                        run.per_thousand(run.worker_cpu_seconds)
                    )),
                );
            }
            Err(error) => bench.gap(Item::Dispatch, "dispatch", Some(engine), &error),
        }
    }
}

/// Item 5.
async fn latency(bench: &mut Bench) {
    let (count, cli_count) = (bench.args.latency_tasks, bench.args.cli_latency_tasks);
    for engine in bench.args.engines.clone() {
        if bench.without_postgres(Item::Latency, "latency", engine) {
            continue;
        }
        let herd = bench.herd.clone().ok();
        let result = latency::measure(engine, count, herd.as_deref(), cli_count).await;
        let samples = match result {
            Ok(samples) => samples,
            Err(error) => {
                bench.gap(Item::Latency, "latency", Some(engine), &error);
                continue;
            }
        };
        let series = [
            (
                "Submit call (in-process) -> running",
                &samples.in_process,
                ["latency_p50_ms", "latency_p90_ms", "latency_p99_ms"],
            ),
            (
                "`herd launch` process -> running",
                &samples.cli,
                [
                    "cli_latency_p50_ms",
                    "cli_latency_p90_ms",
                    "cli_latency_p99_ms",
                ],
            ),
        ];
        for (what, sorted, keys) in series {
            if sorted.is_empty() {
                continue;
            }
            let quantiles = [
                (0.5, "p50", keys[0], Some(Target::AtMost(5.0))),
                (0.9, "p90", keys[1], None),
                (0.99, "p99", keys[2], Some(Target::AtMost(50.0))),
            ];
            for (fraction, name, key, target) in quantiles {
                let mut figure = Figure::new(
                    "5",
                    key,
                    format!("latency {name}: {what}"),
                    Some(engine_name(engine)),
                    millis(percentile(sorted, fraction)),
                    "ms",
                )
                .note(format!(
                    "{} tasks, idle worker",
                    report::thousands(sorted.len() as u64)
                ));
                if let Some(target) = target {
                    figure = figure.target(target);
                }
                bench.report.add(figure);
            }
        }
        if cli_count > 0 && samples.cli.is_empty() {
            let error = anyhow::anyhow!(
                "{}",
                bench
                    .herd
                    .clone()
                    .err()
                    .unwrap_or_else(|| "no samples".to_owned())
            );
            bench.gap(
                Item::Latency,
                "latency via `herd launch`",
                Some(engine),
                &error,
            );
        }
    }
}

/// Item 6.
async fn submit(bench: &mut Bench) {
    let count = bench.args.submit_tasks;
    // 2 s for 100,000 tasks, scaled to the size asked.
    let target = Target::AtMost(2.0 * count as f64 / 100_000.0);
    let scaled = if count == 100_000 {
        String::new()
    } else {
        "; target scaled to the size".to_owned()
    };
    for engine in bench.args.engines.clone() {
        if bench.without_postgres(Item::Submit, "submit", engine) {
            continue;
        }
        let result = async {
            let herd = bench.herd()?;
            submit::grpc(&herd, engine, count).await
        }
        .await;
        match result {
            Ok(elapsed) => bench.report.add(
                Figure::new(
                    "6",
                    "submit_grpc_seconds",
                    format!(
                        "queue {} tasks: one Submit call",
                        report::thousands(count as u64)
                    ),
                    Some(engine_name(engine)),
                    elapsed.as_secs_f64(),
                    "s",
                )
                .target(target)
                .note(format!(
                    "{} tasks/s, durable; server process{scaled}",
                    report::thousands((count as f64 / elapsed.as_secs_f64()) as u64)
                )),
            ),
            Err(error) => bench.gap(Item::Submit, "submit, one call", Some(engine), &error),
        }
        let result = async {
            let herd = bench.herd()?;
            submit::cli(&herd, engine, count).await
        }
        .await;
        match result {
            Ok(elapsed) => bench.report.add(
                Figure::new(
                    "6",
                    "submit_cli_seconds",
                    format!(
                        "queue {} tasks: `herd launch --file`",
                        report::thousands(count as u64)
                    ),
                    Some(engine_name(engine)),
                    elapsed.as_secs_f64(),
                    "s",
                )
                .target(target)
                .note(format!("process start to exit, durable{scaled}")),
            ),
            Err(error) => bench.gap(
                Item::Submit,
                "submit, herd launch --file",
                Some(engine),
                &error,
            ),
        }
    }
}

/// Item 7, memory.
async fn memory(bench: &mut Bench) {
    let count = bench.args.queued_tasks;
    let result = async {
        let herd = bench.herd()?;
        scale::memory(&herd, count).await
    }
    .await;
    match result {
        Ok(memory) => {
            report_restart(bench, &memory);
            let grown = memory
                .queued
                .rss_bytes
                .saturating_sub(memory.baseline.rss_bytes);
            let scaled = if count == 1_000_000 {
                ""
            } else {
                "; target scaled to the size"
            };
            bench.report.add(
                Figure::new(
                    "7",
                    "memory_rss_mib",
                    format!("server RSS, {} tasks queued", report::thousands(count as u64)),
                    Some("sqlite"),
                    mib(memory.queued.rss_bytes),
                    "MiB",
                )
                .target(Target::AtMost(1024.0 * count as f64 / 1_000_000.0))
                .note(format!(
                    "peak {:.0} MiB, at start {:.0} MiB, {:.0} B per task; queued in {:.1} s{scaled}",
                    mib(memory.queued.peak_rss_bytes),
                    mib(memory.baseline.rss_bytes),
                    grown as f64 / count as f64,
                    memory.submit.as_secs_f64()
                ))
                .details(json!({
                    "tasks": memory.tasks,
                    "rss_bytes": memory.queued.rss_bytes,
                    "peak_rss_bytes": memory.queued.peak_rss_bytes,
                    "baseline_rss_bytes": memory.baseline.rss_bytes,
                    "bytes_per_task": grown as f64 / count as f64,
                    "submit_seconds": memory.submit.as_secs_f64(),
                })),
            );
        }
        Err(error) => bench.gap(Item::Memory, "server memory, queued tasks", None, &error),
    }
}

/// Item 7, restart: the server killed with every task queued, serving again.
fn report_restart(bench: &mut Bench, memory: &crate::scale::Memory) {
    let count = memory.tasks;
    bench.report.add(
        Figure::new(
            "7",
            "restart_seconds",
            format!(
                "server kill -9 to serving again, {} tasks in the store",
                report::thousands(count as u64)
            ),
            Some("sqlite"),
            memory.restart.as_secs_f64(),
            "s",
        )
        .target(Target::AtMost(5.0 * count as f64 / 1_000_000.0))
        .note(
            "the reliability issue's target: 5 s with 1,000,000 tasks; scaled to the size"
                .to_owned(),
        )
        .details(json!({ "tasks": count, "restart_seconds": memory.restart.as_secs_f64() })),
    );
}

/// Item 7, workers.
async fn workers(bench: &mut Bench) {
    let (count, seconds) = (bench.args.workers, bench.args.workers_seconds);
    let result = async {
        let herd = bench.herd()?;
        scale::workers(&herd, count, seconds).await
    }
    .await;
    match result {
        Ok(workers) => {
            let cores = workers.cpu_seconds / workers.window.as_secs_f64();
            let scaled = if count == 1000 {
                ""
            } else {
                "; target scaled to the size"
            };
            bench.report.add(
                Figure::new(
                    "7",
                    "workers_server_cores",
                    format!(
                        "server CPU, {} workers connected, heartbeat {} s",
                        report::thousands(count as u64),
                        workers.heartbeat.as_secs_f64()
                    ),
                    Some("sqlite"),
                    cores,
                    "cores",
                )
                .target(Target::AtMost(0.5 * count as f64 / 1000.0))
                .note(format!(
                    "over {:.0} s ({} heartbeats); connected in {:.1} s; RSS {:.0} MiB{scaled}",
                    workers.window.as_secs_f64(),
                    workers.heartbeats,
                    workers.connect.as_secs_f64(),
                    mib(workers.stats.rss_bytes)
                ))
                .details(json!({
                    "workers": workers.workers,
                    "heartbeat_seconds": workers.heartbeat.as_secs_f64(),
                    "window_seconds": workers.window.as_secs_f64(),
                    "server_cpu_seconds": workers.cpu_seconds,
                    "heartbeats": workers.heartbeats,
                    "connect_seconds": workers.connect.as_secs_f64(),
                    "rss_bytes": workers.stats.rss_bytes,
                })),
            );
        }
        Err(error) => bench.gap(Item::Workers, "server CPU, connected workers", None, &error),
    }
}

/// Item 8.
async fn docker(bench: &mut Bench) {
    let (runs, image) = (bench.args.docker_runs, bench.args.docker_image.clone());
    let result = async {
        let herd = bench.herd()?;
        docker::measure(&herd, &image, runs).await
    }
    .await;
    match result {
        Ok(samples) => {
            let plain = docker::median(&samples.plain);
            let through_herd = docker::median(&samples.herd);
            bench.report.add(
                Figure::new(
                    "8",
                    "docker_overhead_ratio",
                    format!("Docker: herd task / `docker run` (median of {runs})"),
                    Some("sqlite"),
                    through_herd.as_secs_f64() / plain.as_secs_f64(),
                    "x",
                )
                .target(Target::AtMost(1.10))
                .note(format!(
                    "{} / {}; {image} true",
                    format_value(millis(through_herd), "ms"),
                    format_value(millis(plain), "ms")
                ))
                .details(json!({
                    "runs": runs,
                    "image": image,
                    "herd_ms": samples.herd.iter().map(|sample| millis(*sample)).collect::<Vec<_>>(),
                    "docker_run_ms": samples.plain.iter().map(|sample| millis(*sample)).collect::<Vec<_>>(),
                    "herd_median_ms": millis(through_herd),
                    "docker_run_median_ms": millis(plain),
                })),
            );
        }
        Err(error) => bench.gap(Item::Docker, "Docker overhead", None, &error),
    }
}

/// The figures made of others: herd end to end against the raw spawn rate and HyperQueue.
fn comparisons(bench: &mut Bench) {
    let rate = |report: &Report, key: &str, engine: Option<&str>| {
        report.find(key, engine).map(|figure| figure.value)
    };
    let spawn = rate(&bench.report, "spawn_tasks_per_second", None);
    let hq = rate(&bench.report, "hyperqueue_tasks_per_second", None);
    for engine in bench.args.engines.clone() {
        let name = engine_name(engine);
        let Some(herd) = rate(&bench.report, "e2e_tasks_per_second", Some(name)) else {
            continue;
        };
        if let Some(spawn) = spawn {
            bench.report.add(
                Figure::new(
                    "2",
                    "e2e_percent_of_spawn_rate",
                    "herd end to end / raw spawn rate",
                    Some(name),
                    100.0 * herd / spawn,
                    "%",
                )
                .target(Target::AtLeast(70.0)),
            );
        }
        if let Some(hq) = hq {
            bench.report.add(
                Figure::new(
                    "3",
                    "e2e_times_hyperqueue",
                    "herd end to end / HyperQueue end to end",
                    Some(name),
                    herd / hq,
                    "x",
                )
                .target(Target::AtLeast(3.0)),
            );
        }
    }
}
