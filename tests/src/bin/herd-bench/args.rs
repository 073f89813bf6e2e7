//! The command line of herd-bench: which measurements, their sizes, where things are.

use std::path::PathBuf;

use anyhow::{Context, bail};
use herd_tests::Engine;

/// One measurement of the suite, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// 1: `true` spawned directly from `--concurrency` threads.
    Spawn,
    /// 2: `true` tasks through a `herd server` and a `herd worker` process.
    EndToEnd,
    /// 3: the same through HyperQueue's LocalCluster.
    HyperQueue,
    /// 4: tasks through a `herd server` process and an instant executor.
    Dispatch,
    /// 5: submit → running on an idle worker.
    Latency,
    /// 6: many tasks queued in one request.
    Submit,
    /// 7a: server memory with many queued tasks.
    Memory,
    /// 7b: server CPU with many connected workers.
    Workers,
    /// 8: a Docker task through herd ÷ plain `docker run`.
    Docker,
}

impl Item {
    /// Every item, in running order.
    pub const ALL: [Item; 9] = [
        Item::Spawn,
        Item::EndToEnd,
        Item::HyperQueue,
        Item::Dispatch,
        Item::Latency,
        Item::Submit,
        Item::Memory,
        Item::Workers,
        Item::Docker,
    ];

    /// The name used by `--only` and `--skip`.
    pub fn name(self) -> &'static str {
        match self {
            Item::Spawn => "spawn",
            Item::EndToEnd => "e2e",
            Item::HyperQueue => "hq",
            Item::Dispatch => "dispatch",
            Item::Latency => "latency",
            Item::Submit => "submit",
            Item::Memory => "memory",
            Item::Workers => "workers",
            Item::Docker => "docker",
        }
    }

    /// The number of the item in the issue (4: "the benchmark suite").
    pub fn number(self) -> &'static str {
        match self {
            Item::Spawn => "1",
            Item::EndToEnd => "2",
            Item::HyperQueue => "3",
            Item::Dispatch => "4",
            Item::Latency => "5",
            Item::Submit => "6",
            Item::Memory | Item::Workers => "7",
            Item::Docker => "8",
        }
    }

    fn parse(name: &str) -> anyhow::Result<Item> {
        Item::ALL
            .into_iter()
            .find(|item| item.name() == name.trim())
            .with_context(|| {
                format!(
                    "unknown measurement `{name}`; choose among {}",
                    Item::ALL.map(Item::name).join(",")
                )
            })
    }
}

/// Everything herd-bench was asked to do.
#[derive(Debug, Clone)]
pub struct Args {
    /// The measurements to run.
    pub items: Vec<Item>,
    /// The database engines for items 2, 4, 5 and 6.
    pub engines: Vec<Engine>,
    /// Tasks of items 1–4.
    pub tasks: usize,
    /// Tasks of item 4 (default: `tasks`).
    pub dispatch_tasks: Option<usize>,
    /// Worker slots (items 2–4) and spawning threads (item 1).
    pub concurrency: usize,
    /// Slots of the instant-executor worker of item 4 (default: `concurrency`).
    pub dispatch_concurrency: Option<usize>,
    /// The workers' `--prefetch` in items 2 and 4 (default: the worker's own default).
    pub prefetch: Option<u32>,
    /// Tasks of item 5, in-process.
    pub latency_tasks: usize,
    /// Tasks of item 5 through the `herd launch` binary.
    pub cli_latency_tasks: usize,
    /// Tasks of item 6.
    pub submit_tasks: usize,
    /// Queued tasks of item 7a.
    pub queued_tasks: usize,
    /// Simulated workers of item 7b.
    pub workers: usize,
    /// Seconds the server CPU is measured in item 7b.
    pub workers_seconds: u64,
    /// Runs of each side of item 8.
    pub docker_runs: usize,
    /// The image of item 8.
    pub docker_image: String,
    /// Where to write the figures as JSON.
    pub json: Option<PathBuf>,
    /// The `herd` binary (default: next to herd-bench).
    pub herd: Option<PathBuf>,
    /// The Python of the HyperQueue venv.
    pub hq_python: Option<PathBuf>,
    /// The HyperQueue script.
    pub hq_script: Option<PathBuf>,
    /// A missing PostgreSQL, Docker or HyperQueue is an error, not a skip.
    pub strict: bool,
    /// `--small` was given (recorded in the JSON).
    pub small: bool,
}

const HELP: &str = "\
herd-bench: herd's benchmark suite. Prints a table of figures, each next to its target
(targets are reported, never asserted), and writes them as JSON with --json FILE.

USAGE: herd-bench [--small] [OPTIONS]

Measurements (all by default; --only/--skip take a comma-separated list):
  spawn     1. raw spawn rate: --tasks `true` processes from --concurrency threads
  e2e       2. herd end to end: --tasks `true` tasks, `herd server` + `herd worker --executor
               bare --concurrency C` processes, first submit to last completion
  hq        3. HyperQueue end to end: the same through LocalCluster (bench/hyperqueue-e2e.py)
  dispatch  4. dispatch without processes: `herd server` process + an instant executor worker;
               tasks/s and server CPU seconds per 1,000 tasks
  latency   5. submit -> running on an idle worker (in-process Submit, and `herd launch`)
  submit    6. --submit-tasks queued in one Submit call and with `herd launch --file`
  memory    7. server RSS with --queued-tasks queued
  workers   7. server CPU with --workers simulated workers connected and heartbeating
  docker    8. a herd task in Docker / plain `docker run`, median of --docker-runs

Options:
  --small                   CI sizes: --tasks 300 --latency-tasks 100 --cli-latency-tasks 10
                            --submit-tasks 10000 --queued-tasks 100000 --workers 100
                            --workers-seconds 5 --docker-runs 3 (explicit flags win)
  --only LIST, --skip LIST  measurements to run / leave out
  --engines LIST            the databases of e2e, dispatch, latency and submit
                            [sqlite,postgres]; PostgreSQL needs HERD_TEST_POSTGRES_URL
                            (scripts/start-postgres.sh), without it its figures are skipped
  --tasks N                 tasks of spawn, e2e, hq and dispatch [5000]
  --dispatch-tasks N        tasks of dispatch [--tasks]
  --concurrency N           worker slots and spawning threads [the number of cores]
  --dispatch-concurrency N  slots of the instant-executor worker [--concurrency]
  --prefetch N              the workers' --prefetch in e2e and dispatch [herd worker's default]
  --latency-tasks N         in-process latency samples [1000]
  --cli-latency-tasks N     `herd launch` latency samples [100]
  --submit-tasks N          tasks queued at once [100000]
  --queued-tasks N          tasks queued for the memory figure [1000000]
  --workers N               simulated workers [1000]
  --workers-seconds N       how long their server CPU is measured [20]
  --docker-runs N           runs of each Docker side [20]
  --docker-image IMAGE      [herd-test-busybox:latest] (scripts/build-test-image.sh)
  --json FILE               write the figures as JSON
  --herd PATH               the herd binary [next to herd-bench]
  --hq-python PATH          the HyperQueue venv's python [$HERD_BENCH_HQ_PYTHON, else
                            /var/tmp/herd-services/hq-venv/bin/python] (bench/setup.sh)
  --hq-script PATH          [bench/hyperqueue-e2e.py of this source tree]
  --strict                  a missing PostgreSQL, Docker or HyperQueue is an error (also
                            when CI=true); otherwise it is reported as skipped
";

/// Parses the command line; prints the help and exits on `-h`.
pub fn parse() -> anyhow::Result<Args> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    parse_from(&words)
}

fn parse_from(words: &[String]) -> anyhow::Result<Args> {
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let small = words.iter().any(|word| word == "--small");
    let mut args = Args {
        items: Item::ALL.to_vec(),
        engines: vec![Engine::Sqlite, Engine::Postgres],
        tasks: if small { 300 } else { 5000 },
        dispatch_tasks: None,
        concurrency: cores,
        dispatch_concurrency: None,
        prefetch: None,
        latency_tasks: if small { 100 } else { 1000 },
        cli_latency_tasks: if small { 10 } else { 100 },
        submit_tasks: if small { 10_000 } else { 100_000 },
        queued_tasks: if small { 100_000 } else { 1_000_000 },
        workers: if small { 100 } else { 1000 },
        workers_seconds: if small { 5 } else { 20 },
        docker_runs: if small { 3 } else { 20 },
        docker_image: "herd-test-busybox:latest".to_owned(),
        json: None,
        herd: None,
        hq_python: None,
        hq_script: None,
        strict: std::env::var("CI").is_ok_and(|value| value == "true"),
        small,
    };
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .map(String::as_str)
                .with_context(|| format!("{word} needs a value; see --help"))
        };
        let count = |text: &str| -> anyhow::Result<usize> {
            text.replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|count| *count > 0)
                .with_context(|| format!("{word} takes a whole number of at least 1, not `{text}`"))
        };
        match word.as_str() {
            "--small" => {}
            "--only" => args.items = items(value()?)?,
            "--skip" => {
                let skipped = items(value()?)?;
                args.items.retain(|item| !skipped.contains(item));
            }
            "--engines" => args.engines = engines(value()?)?,
            "--tasks" => args.tasks = count(value()?)?,
            "--dispatch-tasks" => args.dispatch_tasks = Some(count(value()?)?),
            "--concurrency" => args.concurrency = count(value()?)?,
            "--dispatch-concurrency" => args.dispatch_concurrency = Some(count(value()?)?),
            "--prefetch" => {
                let text = value()?;
                args.prefetch = Some(text.parse().with_context(|| {
                    format!("--prefetch takes a whole number (0 or more), not `{text}`")
                })?);
            }
            "--latency-tasks" => args.latency_tasks = count(value()?)?,
            "--cli-latency-tasks" => args.cli_latency_tasks = count(value()?)?,
            "--submit-tasks" => args.submit_tasks = count(value()?)?,
            "--queued-tasks" => args.queued_tasks = count(value()?)?,
            "--workers" => args.workers = count(value()?)?,
            "--workers-seconds" => args.workers_seconds = count(value()?)? as u64,
            "--docker-runs" => args.docker_runs = count(value()?)?,
            "--docker-image" => args.docker_image = value()?.to_owned(),
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--herd" => args.herd = Some(PathBuf::from(value()?)),
            "--hq-python" => args.hq_python = Some(PathBuf::from(value()?)),
            "--hq-script" => args.hq_script = Some(PathBuf::from(value()?)),
            "--strict" => args.strict = true,
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`; see --help"),
        }
    }
    if args.items.is_empty() {
        bail!("nothing to measure: --only/--skip left no measurement");
    }
    Ok(args)
}

fn items(list: &str) -> anyhow::Result<Vec<Item>> {
    let chosen = list
        .split(',')
        .filter(|name| !name.trim().is_empty())
        .map(Item::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Running order, whatever the order given.
    Ok(Item::ALL
        .into_iter()
        .filter(|item| chosen.contains(item))
        .collect())
}

fn engines(list: &str) -> anyhow::Result<Vec<Engine>> {
    let mut engines = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let engine = match name {
            "sqlite" => Engine::Sqlite,
            "postgres" | "postgresql" => Engine::Postgres,
            other => bail!("unknown database engine `{other}`; choose sqlite and/or postgres"),
        };
        if !engines.contains(&engine) {
            engines.push(engine);
        }
    }
    if engines.is_empty() {
        bail!("--engines needs sqlite and/or postgres");
    }
    Ok(engines)
}

/// The short name of an engine, as printed.
pub fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "sqlite",
        Engine::Postgres => "postgres",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> anyhow::Result<Args> {
        parse_from(
            &words
                .iter()
                .map(|word| (*word).to_owned())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn small_sets_sizes_that_explicit_flags_override() -> anyhow::Result<()> {
        let args = parse_words(&["--workers", "7", "--small"])?;
        assert_eq!(args.workers, 7);
        assert_eq!(args.tasks, 300);
        assert!(args.small);
        Ok(())
    }

    #[test]
    fn only_and_skip_keep_the_running_order() -> anyhow::Result<()> {
        let args = parse_words(&["--only", "docker,spawn,e2e", "--skip", "e2e"])?;
        assert_eq!(args.items, vec![Item::Spawn, Item::Docker]);
        assert!(parse_words(&["--only", "nope"]).is_err());
        assert!(parse_words(&["--tasks", "0"]).is_err());
        Ok(())
    }
}
