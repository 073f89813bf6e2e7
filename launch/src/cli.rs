//! The command line, declared with clap's derive API. Nothing here talks to a server: the
//! structs only describe flags, their defaults and their environment variables, and the
//! value parsers refuse malformed values before any command runs (exit code 2).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use herd_proto::policy::{DockerOption, Policy};
use herd_proto::request::IdempotencyKey;
use herd_proto::{BatchName, TaskId, TaskState, WorkerId};

/// The server address clients use when neither `--server` nor `HERD_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:4373";

/// The address `herd server` and `herd up` listen on by default: loopback only, so that a
/// server is never exposed to other hosts by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4373";

mod server;
pub use server::ServerArgs;

/// herd: a distributed task queue for scientific batch computing.
///
/// Queue commands with `herd launch`, run them on workers started with `herd worker`, and
/// follow them with `herd task` and `herd batch`. `herd up` starts a server and a local worker
/// in one process.
#[derive(Debug, Parser)]
#[command(name = "herd", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The herd server to talk to: a URL such as http://host:4373 (https:// for a server with
    /// TLS; HERD_CA_BUNDLE, HERD_CLIENT_CERT, HERD_CLIENT_KEY and HERD_INSECURE set how), or
    /// host:port.
    #[arg(short = 's', long = "server", env = "HERD_SERVER", default_value = DEFAULT_SERVER, global = true, display_order = 900)]
    pub server: String,

    /// Log more on stderr (-v: debug, -vv: trace). RUST_LOG, when set, takes precedence.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true, display_order = 901)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a command (or one command per line of a file) for the workers of a batch.
    Launch(LaunchArgs),
    /// List, show, kill, retry or delete tasks, and print their output.
    #[command(subcommand)]
    Task(TaskCommand),
    /// List batches, pause, resume, stop or delete one, or wait until one is done.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Run a worker (`herd worker --batch NAME`), or list and delete workers.
    Worker(WorkerCommand),
    /// Run a herd server until Ctrl-C or SIGTERM.
    Server(ServerArgs),
    /// Run a server on the embedded SQLite database plus one local worker, until Ctrl-C.
    Up(UpArgs),
    /// Copy, list, sync, delete or checksum files at any URI herd reaches (file, s3, ...).
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Save a token as this user's credentials for the server (checked first).
    Login(LoginArgs),
    /// Forget this user's saved token for the server.
    Logout,
    /// Show who the token in use belongs to.
    Whoami(JsonArgs),
    /// Add and list users (admins only).
    #[command(subcommand)]
    User(UserCommand),
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `herd login`
#[derive(Debug, Args)]
#[command(
    after_help = "The token is read from --token-file, else HERD_TOKEN, else the first line of standard input.\n\
                  It is saved, per server URL, in $HERD_CONFIG_DIR/credentials (default ~/.config/herd/credentials, mode 0600)."
)]
pub struct LoginArgs {
    /// A file holding the token.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `herd user`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and print their first token (shown once) on stdout.
    Add {
        /// The user's name: letters, digits, `.`, `_`, `@`, `-`.
        name: String,
        /// Make them an admin (sees and manages everything).
        #[arg(long = "admin")]
        admin: bool,
    },
    /// List the users.
    List(JsonArgs),
}

/// `herd token`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (shown once) on stdout; admins only.
    Create {
        /// For this user (default: yourself).
        #[arg(long = "user", value_name = "NAME")]
        user: Option<String>,
        /// A worker token: opens worker sessions only (`herd worker --token-file FILE`).
        #[arg(long = "worker")]
        worker: bool,
        /// Limit a worker token to this batch.
        #[arg(long = "batch", value_name = "NAME", requires = "worker")]
        batch: Option<BatchName>,
        /// What the token is for, shown by `herd token list`.
        #[arg(long = "label", value_name = "TEXT", default_value = "")]
        label: String,
    },
    /// List tokens: yours, or (admins) everyone's or one user's.
    List {
        /// Only this user's tokens.
        #[arg(long = "user", value_name = "NAME")]
        user: Option<String>,
        /// Print a JSON array on stdout instead of a table.
        #[arg(long = "json")]
        json: bool,
    },
    /// Revoke a token at once (its worker sessions are closed).
    Revoke {
        /// The token's id (see `herd token list`).
        id: u64,
    },
}

/// `herd fetch`: files between URI schemes, as the workers move them.
#[derive(Debug, Subcommand)]
#[command(
    after_help = "URIs: scheme[@option...]://path[|action...]; a plain path is a local file; a trailing / \
                        is a folder, copied recursively.\nExamples:\n  herd fetch copy ./results/ s3://bucket/run1/\n  \
                        herd fetch copy 's3://bucket/db.tgz|untar' ./db/\n  herd fetch sync --include '*.fq.gz' s3://bucket/reads/ ./reads/"
)]
pub enum FetchCommand {
    /// Copy a file, or a folder (trailing /), from SOURCE to DESTINATION.
    Copy {
        /// What to copy.
        source: String,
        /// Where: a folder (trailing / or existing), or the name of the copy.
        destination: String,
    },
    /// List the files under a URI (full URIs).
    List {
        /// Everything under the URI, not only its first level.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// What to list.
        uri: String,
    },
    /// List the first level under a URI, with names relative to it.
    Nrlist {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// What to list.
        uri: String,
    },
    /// Copy the files of SOURCE that DESTINATION lacks or has with another size.
    Sync {
        /// The folder to copy from.
        source: String,
        /// The folder to copy to.
        destination: String,
        /// Only files matching this glob (`*`, `?`; without `/` it matches the file name).
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Skip files matching this glob.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
    },
    /// Delete a file, or the files of a folder (trailing /; --recursive for everything under it).
    Delete {
        /// Everything under the folder.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// What to delete.
        uri: String,
    },
    /// Print the CRC64NVME (base64, as S3 shows it) of each file at a URI.
    Checksum {
        /// The file or folder.
        uri: String,
    },
}

impl Command {
    /// Whether the command runs until stopped (a server, a worker): those log at `info` by
    /// default, while one-shot client commands only show warnings unless `-v` is given.
    pub fn is_long_running(&self) -> bool {
        match self {
            Command::Server(_) | Command::Up(_) => true,
            Command::Worker(worker) => worker.action.is_none(),
            Command::Launch(_)
            | Command::Task(_)
            | Command::Batch(_)
            | Command::Fetch(_)
            | Command::Login(_)
            | Command::Logout
            | Command::Whoami(_)
            | Command::User(_)
            | Command::Token(_) => false,
        }
    }
}

/// `herd launch`: the options of scitq-launch, with the same letters.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  herd launch -b mybatch -d ubuntu:24.04 sh -c 'echo $CPU'\n  \
                  herd launch -b mybatch -i s3://bucket/sample.fq.gz -o s3://bucket/results/ -- mytool --threads 4\n  \
                  herd launch -b mybatch --file commands.txt"
)]
pub struct LaunchArgs {
    /// The batch the task belongs to; only workers of this batch take it.
    #[arg(
        short = 'b',
        long = "batch",
        default_value = "default",
        value_name = "NAME"
    )]
    pub batch: BatchName,

    /// Run the command in this Docker image; without it the command runs on the worker's host.
    #[arg(short = 'd', long = "docker", value_name = "IMAGE")]
    pub docker: Option<String>,

    /// More `docker run` options, in one string (e.g. -O '--gpus all'); needs -d.
    #[arg(
        short = 'O',
        long = "option",
        value_name = "DOCKER OPTIONS",
        allow_hyphen_values = true
    )]
    pub docker_options: Option<String>,

    /// Run the command as this user id.
    #[arg(short = 'u', long = "uid", value_name = "UID")]
    pub uid: Option<u32>,

    /// Run the command as this group id.
    #[arg(short = 'g', long = "gid", value_name = "GID")]
    pub gid: Option<u32>,

    /// A name for the task, to find it again.
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,

    /// A file copied into /input ($INPUT without Docker) before the command runs; repeatable.
    #[arg(short = 'i', long = "input", value_name = "URI")]
    pub inputs: Vec<String>,

    /// A shared file fetched once per worker into /resource ($RESOURCE), optionally with
    /// |gunzip, |untar, |unzip or |mv:DIR; repeatable.
    #[arg(short = 'r', long = "resource", value_name = "URI")]
    pub resources: Vec<String>,

    /// Where the content of /output ($OUTPUT) is copied when the command ends.
    #[arg(short = 'o', long = "output", value_name = "URI")]
    pub output: Option<String>,

    /// Print what would be queued and queue nothing.
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Make the launch safe to repeat: the same key (and user) within 24 hours returns the
    /// first launch's ids and queues nothing. Without it, herd makes one for this launch, so
    /// its own retries (after a lost answer) never queue twice.
    #[arg(long = "idempotency-key", value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<IdempotencyKey>,

    /// Retry a failed attempt up to N times.
    #[arg(long = "retry", value_name = "N", default_value_t = 0)]
    pub retry: u32,

    /// Fail the task once N of its attempts were lost with their worker (a crash: the worker
    /// fell silent), rather than run it on worker after worker; 0 for no limit. Lost attempts
    /// do not count against --retry.
    #[arg(long = "crash-limit", value_name = "N", default_value_t = herd_proto::spec::DEFAULT_CRASH_LIMIT)]
    pub crash_limit: u32,

    /// Kill the command after this long: seconds, or a duration such as 90m or 2h.
    #[arg(long = "run-timeout", value_name = "SECONDS", value_parser = parse_duration)]
    pub run_timeout: Option<Duration>,

    /// Fail the attempt if fetching inputs and resources takes longer: seconds, or 30m, 1h...
    #[arg(long = "download-timeout", value_name = "SECONDS", value_parser = parse_duration)]
    pub download_timeout: Option<Duration>,

    /// Queue one task per line of FILE (`-` reads stdin), all at once or none at all. Lines are
    /// split like a shell would; blank lines and lines starting with # are skipped.
    #[arg(long = "file", value_name = "FILE", conflicts_with = "command")]
    pub file: Option<PathBuf>,

    /// Print JSON on stdout instead of plain ids.
    #[arg(long = "json")]
    pub json: bool,

    /// The command and its arguments; options after the command belong to the command. Use
    /// `--` before a command that starts with a dash.
    // No `allow_hyphen_values`: a misspelt herd option before the command must be an error,
    // not the command. Once the command has started, `trailing_var_arg` keeps every later word.
    #[arg(value_name = "COMMAND", trailing_var_arg = true, num_args = 0..)]
    pub command: Vec<String>,
}

/// `herd task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks, oldest first.
    List(TaskListArgs),
    /// Show one task with its attempts.
    Show(TaskShowArgs),
    /// Kill a task: a pending one is canceled, a running one is stopped on its worker.
    Kill(TaskRefArgs),
    /// Queue a finished task again, as a new attempt.
    Retry(TaskRefArgs),
    /// Forget a finished task and its logs.
    Delete(TaskRefArgs),
    /// Print a task's output (stdout by default) as it comes.
    Logs(TaskLogsArgs),
}

/// `herd task list`
#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// Only the tasks of this batch.
    #[arg(short = 'b', long = "batch", value_name = "NAME")]
    pub batch: Option<BatchName>,

    /// Only the tasks in this state: pending, assigned, downloading, running, uploading,
    /// succeeded, failed or canceled.
    #[arg(short = 'S', long = "state", value_name = "STATE")]
    pub state: Option<TaskState>,

    /// At most N tasks (0: all).
    #[arg(long = "limit", value_name = "N", default_value_t = 0)]
    pub limit: u32,

    /// Print a JSON array on stdout instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

/// `herd task show`
#[derive(Debug, Args)]
pub struct TaskShowArgs {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: TaskId,

    /// Print the task as JSON on stdout.
    #[arg(long = "json")]
    pub json: bool,
}

/// A command that names one task.
#[derive(Debug, Args)]
pub struct TaskRefArgs {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: TaskId,
}

/// `herd task logs`
#[derive(Debug, Args)]
pub struct TaskLogsArgs {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: TaskId,

    /// Keep printing until the attempt ends.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,

    /// Print the command's stderr instead of its stdout.
    #[arg(long = "stderr")]
    pub stderr: bool,

    /// Print this attempt (1 is the first) instead of the latest.
    #[arg(long = "attempt", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
}

/// `herd batch ...`
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// List batches with their task counts.
    List(JsonArgs),
    /// Stop giving the batch's tasks to workers; running tasks go on.
    Pause(BatchRefArgs),
    /// Give the batch's tasks to workers again.
    Resume(BatchRefArgs),
    /// Cancel every pending and running task of the batch.
    Stop(BatchRefArgs),
    /// Forget the batch and its finished tasks.
    Delete(BatchRefArgs),
    /// Wait until nothing is pending or running; exit 1 if a task failed or was canceled.
    Wait(BatchWaitArgs),
}

/// A command whose only option is `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print a JSON array on stdout instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

/// A command that names one batch.
#[derive(Debug, Args)]
pub struct BatchRefArgs {
    /// The batch's name.
    #[arg(value_name = "NAME")]
    pub name: BatchName,
}

/// `herd batch wait`
#[derive(Debug, Args)]
pub struct BatchWaitArgs {
    /// The batch's name.
    #[arg(value_name = "NAME")]
    pub name: BatchName,

    /// Print the final counts as JSON on stdout.
    #[arg(long = "json")]
    pub json: bool,
}

/// `herd worker`: runs a worker, unless a subcommand is given.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WorkerCommand {
    /// `list` or `delete`; without one, run a worker.
    #[command(subcommand)]
    pub action: Option<WorkerAction>,

    /// How to run a worker.
    #[command(flatten)]
    pub run: WorkerRunArgs,
}

/// `herd worker list|delete`
#[derive(Debug, Subcommand)]
pub enum WorkerAction {
    /// List the workers the server knows.
    List(JsonArgs),
    /// Forget a worker; a connected one is told to stop.
    Delete(WorkerRefArgs),
}

/// A command that names one worker.
#[derive(Debug, Args)]
pub struct WorkerRefArgs {
    /// The worker's id (see `herd worker list`).
    #[arg(value_name = "ID")]
    pub id: WorkerId,
}

/// Which executors a worker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorChoice {
    /// Docker tasks only (tasks without an image go to bare or auto workers); fails without
    /// Docker.
    Docker,
    /// Host processes only; tasks that need Docker are left to other workers.
    Bare,
    /// Docker when an engine answers, host processes otherwise.
    Auto,
}

/// `herd worker` (running one).
#[derive(Debug, Args)]
pub struct WorkerRunArgs {
    /// The batch whose tasks this worker takes.
    #[arg(
        short = 'b',
        long = "batch",
        value_name = "NAME",
        default_value = "default"
    )]
    pub batch: BatchName,

    /// Tasks run at once (default: the number of cores).
    #[arg(short = 'c', long = "concurrency", value_name = "N", value_parser = parse_concurrency, allow_negative_numbers = true)]
    pub concurrency: Option<u32>,

    /// Extra tasks whose inputs are fetched ahead of a free slot.
    #[arg(long = "prefetch", value_name = "N", default_value_t = 0)]
    pub prefetch: u32,

    /// How commands run: docker, bare (host processes only) or auto.
    #[arg(long = "executor", value_enum, default_value_t = ExecutorChoice::Docker)]
    pub executor: ExecutorChoice,

    /// Scratch space for task folders and the resource cache (default: DATA_DIR/worker).
    #[arg(long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// The worker's name (default: the host name).
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,

    /// Run tasks that ask for `-O --privileged`.
    #[arg(long = "allow-privileged")]
    pub allow_privileged: bool,

    /// A file holding the worker's token (made by an admin with `herd token create --worker`);
    /// without it, the token in HERD_TOKEN.
    #[arg(long = "token-file", value_name = "FILE", env = "HERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// How long a failed attempt's folder is kept for inspection (e.g. 24h, 30m, 0).
    #[arg(long = "keep-failed", value_name = "DURATION", env = "HERD_KEEP_FAILED", default_value = "24h", value_parser = parse_age)]
    pub keep_failed: Duration,

    /// The most the resource cache keeps (e.g. 50GiB); least recently used entries go first.
    #[arg(long = "cache-max-size", value_name = "SIZE", env = "HERD_CACHE_MAX_SIZE", default_value = "50GiB", value_parser = parse_size)]
    pub cache_max_size: u64,

    /// What tasks may take of this host.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// What a worker lets its tasks take of its host (`herd worker` and `herd up`).
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Let Docker tasks mount this host folder, or anything under it, with `-O "-v ..."`
    /// (absolute; repeatable). The Docker socket is never mountable.
    #[arg(long = "allow-volume", value_name = "PREFIX", value_parser = parse_volume_prefix)]
    pub allow_volume: Vec<String>,

    /// Let Docker tasks mount named volumes (`-O "-v NAME:/path"`).
    #[arg(long = "allow-named-volumes")]
    pub allow_named_volumes: bool,

    /// Let Docker tasks use a host-sharing option by name (repeatable); the help lists every
    /// name, from [`DockerOption::names`].
    #[arg(long = "allow-docker-option", value_name = "NAME", help = allow_docker_option_help())]
    pub allow_docker_option: Vec<DockerOption>,

    /// Let bare tasks run as uid 0 or gid 0 (`herd launch -u 0` / `-g 0`).
    #[arg(long = "allow-root")]
    pub allow_root: bool,

    /// Give bare tasks this variable of the worker's environment (repeatable); they get no
    /// other (see the README for the variables every bare task gets).
    #[arg(long = "pass-env", value_name = "NAME", value_parser = parse_env_name)]
    pub pass_env: Vec<String>,
}

impl PolicyArgs {
    /// The worker policy these flags describe.
    pub fn policy(&self) -> Result<Policy, herd_proto::Error> {
        let mut policy = Policy {
            named_volumes: self.allow_named_volumes,
            docker_options: self.allow_docker_option.clone(),
            root: self.allow_root,
            ..Policy::default()
        };
        for prefix in &self.allow_volume {
            policy.allow_volume(prefix)?;
        }
        for name in &self.pass_env {
            policy.pass_env(name)?;
        }
        Ok(policy)
    }
}

/// The help of `--allow-docker-option`, listing every name a worker can allow.
fn allow_docker_option_help() -> String {
    format!(
        "Let Docker tasks use a host-sharing docker option (repeatable): {}",
        DockerOption::names()
    )
}

fn parse_volume_prefix(text: &str) -> Result<String, String> {
    Policy::default()
        .allow_volume(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_env_name(text: &str) -> Result<String, String> {
    Policy::default()
        .pass_env(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

/// `herd up`
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on (loopback unless --insecure: `herd up` has no TLS); port 0 picks a
    /// free port.
    #[arg(long = "listen", value_name = "ADDR", env = "HERD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Where the database, the task logs and the worker's scratch space live [default:
    /// $XDG_DATA_HOME/herd or ~/.local/share/herd].
    #[arg(long = "data-dir", value_name = "DIR", env = "HERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Tasks the local worker runs at once (default: the number of cores).
    #[arg(short = 'c', long = "concurrency", value_name = "N", value_parser = parse_concurrency, allow_negative_numbers = true)]
    pub concurrency: Option<u32>,

    /// The batch the local worker serves.
    #[arg(
        short = 'b',
        long = "batch",
        value_name = "NAME",
        default_value = "default"
    )]
    pub batch: BatchName,

    /// Once listening, write the bound address to this file (for scripts).
    #[arg(long = "port-file", value_name = "PATH")]
    pub port_file: Option<PathBuf>,

    /// Listen on an address other hosts can reach (refused otherwise): `herd up` has no TLS,
    /// so requests travel in clear. Only on a network you trust; use `herd server` with
    /// --tls-cert for anything else.
    #[arg(long = "insecure")]
    pub insecure: bool,

    /// What tasks may take of this host.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Parses a task count of at least 1 (`--concurrency`).
fn parse_concurrency(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(count) if count >= 1 && count <= i64::from(u32::MAX) => Ok(count as u32),
        Ok(_) => Err(format!("the concurrency must be at least 1 (got {text})")),
        Err(_) => Err(format!(
            "`{text}` is not a whole number; give the number of tasks run at once, e.g. 4"
        )),
    }
}

/// Parses a whole number of seconds, at least 1.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("give at least 1 second".to_owned()),
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => Err(format!("`{text}` is not a whole number of seconds")),
    }
}

/// Parses a size in bytes: `1000`, `64MiB`, `50G` (K, M, G, T are binary units, with or
/// without `iB`/`B`), at least 1 KiB.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size; give bytes or e.g. 64MiB, 50GiB"
            ));
        }
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(bytes) if bytes >= 1024 => Ok(bytes),
        Some(_) => Err(format!("`{text}` is too small; give at least 1KiB")),
        None => Err(format!(
            "`{text}` is not a size; give bytes or e.g. 64MiB, 50GiB"
        )),
    }
}

/// Parses an age: plain seconds (`0`, `3600`) or a humantime duration (`30m`, `24h`).
fn parse_age(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    trimmed
        .parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(trimmed))
        .map_err(|_| format!("`{text}` is not a duration; give seconds (3600) or e.g. 30m, 24h"))
}

/// Parses a timeout: plain seconds (`3600`) or a humantime duration (`90m`, `1h 30m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let duration = match trimmed.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(trimmed).map_err(|_| {
            format!(
                "`{text}` is not a duration; give seconds (3600) or a duration such as 90m or 2h"
            )
        })?,
    };
    if duration < Duration::from_secs(1) {
        return Err(
            "a timeout must be at least 1 second; leave the option out for none".to_owned(),
        );
    }
    Ok(Duration::from_secs(duration.as_secs()))
}

fn parse_idempotency_key(text: &str) -> Result<IdempotencyKey, String> {
    IdempotencyKey::new(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn launch_keeps_options_after_the_command_for_the_command() {
        let cli = Cli::try_parse_from([
            "herd",
            "launch",
            "-b",
            "b1",
            "sh",
            "-c",
            "echo $CPU",
            "-b",
            "x",
        ])
        .unwrap();
        let Command::Launch(launch) = cli.command else {
            panic!("not launch")
        };
        assert_eq!(launch.batch.as_str(), "b1");
        assert_eq!(launch.command, ["sh", "-c", "echo $CPU", "-b", "x"]);
    }

    #[test]
    fn launch_accepts_a_dash_option_string_and_a_double_dash() {
        let cli = Cli::try_parse_from([
            "herd",
            "launch",
            "-d",
            "img",
            "-O",
            "--gpus all",
            "--",
            "-x",
        ])
        .unwrap();
        let Command::Launch(launch) = cli.command else {
            panic!("not launch")
        };
        assert_eq!(launch.docker_options.as_deref(), Some("--gpus all"));
        assert_eq!(launch.command, ["-x"]);
    }

    #[test]
    fn worker_and_up_list_and_take_every_docker_option_name() {
        for command in ["worker", "up"] {
            let help = Cli::command()
                .find_subcommand_mut(command)
                .unwrap()
                .render_help()
                .to_string();
            // Help wraps lines; compare without the line breaks.
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            for option in DockerOption::ALL {
                assert!(
                    help.contains(option.name()),
                    "{command}: {option} in {help}"
                );
                let parsed =
                    Cli::try_parse_from(["herd", command, "--allow-docker-option", option.name()]);
                assert!(parsed.is_ok(), "{command} {option}: {parsed:?}");
            }
        }
    }

    #[test]
    fn an_unknown_option_before_the_command_is_an_error() {
        let error = Cli::try_parse_from(["herd", "launch", "--bogus", "echo"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--bogus"), "{error}");
    }

    #[test]
    fn worker_runs_unless_a_subcommand_is_given() {
        let cli = Cli::try_parse_from(["herd", "worker", "--concurrency", "3"]).unwrap();
        let Command::Worker(worker) = cli.command else {
            panic!("not worker")
        };
        assert!(worker.action.is_none());
        assert_eq!(worker.run.concurrency, Some(3));

        let cli = Cli::try_parse_from(["herd", "worker", "list", "--json"]).unwrap();
        let Command::Worker(worker) = cli.command else {
            panic!("not worker")
        };
        assert!(matches!(
            worker.action,
            Some(WorkerAction::List(JsonArgs { json: true }))
        ));
    }

    #[test]
    fn concurrency_must_be_positive() {
        for bad in ["0", "-2", "many"] {
            let error = Cli::try_parse_from(["herd", "worker", "--concurrency", bad]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("50G"), Ok(50 << 30));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("1 kb"), Ok(1024));
        assert!(parse_size("12").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5PB").is_err());
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_age("a while").is_err());
    }
}
