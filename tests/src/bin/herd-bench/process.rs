//! The real `herd` binary as child processes (a server, a worker), what /proc says about a
//! process (CPU seconds, resident memory), and waits on a server's state.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_proto::access::{Bearer, Secret, TokenKind};
use herd_proto::pb;
use herd_proto::pb::queue_client::QueueClient;
use herd_tests::Client;
use herd_tests::Engine;
use herd_tests::postgres::TestDatabase;
use tokio::process::{Child, Command};

/// A dependency of a measurement is not there (PostgreSQL, Docker, HyperQueue): the
/// measurement is skipped, or fails under `--strict`.
#[derive(Debug)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Missing {}

/// The `herd` binary: `--herd`, else next to this executable (cargo puts both in the same
/// target folder).
pub fn find_herd(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--herd {}: no such file", path.display());
    }
    let executable = std::env::current_exe().context("cannot find herd-bench's own path")?;
    let sibling = executable.with_file_name("herd");
    if sibling.is_file() {
        return Ok(sibling);
    }
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    bail!(
        "no herd binary next to herd-bench ({}): build it with `cargo build{profile} -p herd-launch \
         --bin herd`, or give --herd PATH",
        sibling.display()
    )
}

/// CPU time and memory of one process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// User plus system CPU seconds of every thread so far.
    pub cpu_seconds: f64,
    /// Resident memory now (VmRSS), bytes.
    pub rss_bytes: u64,
    /// The highest resident memory so far (VmHWM), bytes.
    pub peak_rss_bytes: u64,
}

/// Reads /proc/PID/stat (utime + stime) and /proc/PID/status (VmRSS, VmHWM).
pub fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat; has the process exited?"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .context("short /proc/PID/stat")?
            .parse::<u64>()? as f64)
    };
    let cpu_seconds = (ticks(11)? + ticks(12)?) / clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        cpu_seconds,
        rss_bytes: kib("VmRSS:") * 1024,
        peak_rss_bytes: kib("VmHWM:") * 1024,
    })
}

/// `getconf CLK_TCK` (100 on every Linux we know of), read once.
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Bytes to MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `herd ARGS` as [`herd_tests::process::herd_command`] makes it, killed when dropped.
pub fn herd_command(herd: &Path) -> Command {
    let mut command = Command::from(herd_tests::process::herd_command(herd));
    command.kill_on_drop(true);
    command
}

/// A `herd server` process on `127.0.0.1:0` with a temporary data directory and, for
/// PostgreSQL, a fresh database; killed when dropped.
pub struct HerdServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The process id.
    pub pid: u32,
    child: Child,
    data_dir: tempfile::TempDir,
    // Dropped after the process is killed (field order).
    _database: Option<TestDatabase>,
}

impl HerdServer {
    /// Starts a server and waits until it answers.
    pub async fn start(herd: &Path, engine: Engine) -> anyhow::Result<HerdServer> {
        let database = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(postgres_database().await?),
        };
        let data_dir = tempfile::Builder::new()
            .prefix("herd-bench-server-")
            .tempdir()?;
        let port_file = data_dir.path().join("address");
        let log = std::fs::File::create(data_dir.path().join("server.log"))?;
        let mut command = herd_command(herd);
        command
            .arg("server")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(database) = &database {
            command.arg("--db").arg(database.url());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} server", herd.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().to_owned();
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "herd server exited with {status} before listening; its log:\n{}",
                    log_tail(&data_dir.path().join("server.log"))
                );
            }
            if Instant::now() > deadline {
                bail!("herd server did not write its address within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let server = HerdServer {
            url: format!("http://{address}"),
            pid,
            child,
            data_dir,
            _database: database,
        };
        server.client().await?;
        Ok(server)
    }

    /// `kill -9` of the server, then a start on the same address and data directory; the
    /// time from the kill to the server answering again.
    pub async fn kill_and_restart(&mut self, herd: &Path) -> anyhow::Result<Duration> {
        let begin = Instant::now();
        self.child.start_kill()?;
        self.child.wait().await?;
        let address = self.url.trim_start_matches("http://").to_owned();
        let port_file = self.data_dir.path().join("address");
        let _ = std::fs::remove_file(&port_file);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = std::fs::File::create(self.data_dir.path().join("server-restarted.log"))?;
            let mut command = herd_command(herd);
            command
                .arg("server")
                .arg("--listen")
                .arg(&address)
                .arg("--data-dir")
                .arg(self.data_dir.path())
                .arg("--port-file")
                .arg(&port_file)
                .stdout(Stdio::null())
                .stderr(log);
            if let Some(database) = &self._database {
                command.arg("--db").arg(database.url());
            }
            let mut child = command.spawn()?;
            loop {
                if std::fs::read_to_string(&port_file).is_ok_and(|text| !text.trim().is_empty()) {
                    self.pid = child.id().context("the server exited at once")?;
                    self.child = child;
                    self.client().await?;
                    return Ok(begin.elapsed());
                }
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("herd server did not start again within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The port may still be held for a moment after the kill.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the `Queue` service, as the admin.
    pub async fn client(&self) -> anyhow::Result<Client> {
        queue_client(&self.url, &self.admin_token()?).await
    }

    /// The file holding the admin token the server made on its first start.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.path().join(herd_server::ADMIN_TOKEN_FILE)
    }

    /// The admin token.
    pub fn admin_token(&self) -> anyhow::Result<Secret> {
        herd_tests::read_admin_token(self.data_dir.path())
    }

    /// A new worker token.
    pub async fn worker_token(&self) -> anyhow::Result<Secret> {
        herd_tests::make_token(
            &self.url,
            &self.admin_token()?,
            TokenKind::Worker,
            None,
            None,
        )
        .await
    }

    /// CPU and memory of the server process.
    pub fn stats(&self) -> anyhow::Result<ProcStats> {
        proc_stats(self.pid)
    }

    /// Fails with the server's log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "herd server exited with {status}; its log:\n{}",
                log_tail(&self.data_dir.path().join("server.log"))
            );
        }
        Ok(())
    }
}

/// A fresh database on `HERD_TEST_POSTGRES_URL`, or [`Missing`].
pub async fn postgres_database() -> anyhow::Result<TestDatabase> {
    if std::env::var_os(herd_tests::postgres::ADMIN_URL_VARIABLE).is_none() {
        return Err(Missing(format!(
            "{} is not set: run `eval \"$(bash scripts/start-postgres.sh)\"` (as root) first",
            herd_tests::postgres::ADMIN_URL_VARIABLE
        ))
        .into());
    }
    TestDatabase::create().await
}

/// A `herd worker` process; killed when dropped.
pub struct HerdWorker {
    /// The process id.
    pub pid: u32,
    _child: Child,
    _work_dir: tempfile::TempDir,
}

impl HerdWorker {
    /// Starts `herd worker --executor EXECUTOR --concurrency N` on `batch` and waits until the
    /// server lists it as connected.
    pub async fn start(
        herd: &Path,
        server: &HerdServer,
        batch: &str,
        executor: &str,
        concurrency: usize,
        prefetch: Option<u32>,
    ) -> anyhow::Result<HerdWorker> {
        let work_dir = tempfile::Builder::new()
            .prefix("herd-bench-worker-")
            .tempdir()?;
        let log_path = work_dir.path().join("worker.log");
        let log = std::fs::File::create(&log_path)?;
        let name = format!("bench-{executor}-{}", std::process::id());
        let token_file = work_dir.path().join("token");
        std::fs::write(&token_file, server.worker_token().await?.expose())?;
        let mut command = herd_command(herd);
        command.arg("worker").arg("--token-file").arg(&token_file);
        if let Some(prefetch) = prefetch {
            command.arg("--prefetch").arg(prefetch.to_string());
        }
        let mut child = command
            .arg("--server")
            .arg(&server.url)
            .arg("--batch")
            .arg(batch)
            .arg("--executor")
            .arg(executor)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--work-dir")
            .arg(work_dir.path().join("scratch"))
            .arg("--name")
            .arg(&name)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} worker", herd.display()))?;
        let pid = child.id().context("the worker exited at once")?;
        let mut client = server.client().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let workers = client.list_workers(pb::Empty {}).await?.into_inner();
            if workers
                .workers
                .iter()
                .any(|worker| worker.name == name && worker.status == "connected")
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "herd worker exited with {status}; its log:\n{}",
                    log_tail(&log_path)
                );
            }
            if Instant::now() > deadline {
                bail!("herd worker did not connect within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(HerdWorker {
            pid,
            _child: child,
            _work_dir: work_dir,
        })
    }
}

/// A `Queue` client on `url`, once it answers (messages as large as the server takes).
pub async fn queue_client(url: &str, token: &Secret) -> anyhow::Result<Client> {
    let endpoint =
        herd_proto::transport::endpoint(url, &herd_proto::transport::ClientTls::default())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(error) if Instant::now() > deadline => {
                return Err(error).with_context(|| format!("cannot connect to {url}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    Ok(QueueClient::with_interceptor(channel, Bearer::new(token)?)
        .max_decoding_message_size(herd_server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(herd_server::MAX_MESSAGE_BYTES))
}

/// Polls the batch every 10 ms until `total` of its tasks have ended; returns when that was
/// seen. Fails if one failed or was canceled, or after `timeout`.
pub async fn wait_batch_done(
    client: &mut Client,
    batch: &str,
    total: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let batches = client.list_batches(pb::Empty {}).await?.into_inner();
        if let Some(summary) = batches.batches.iter().find(|summary| summary.name == batch) {
            if summary.failed + summary.canceled > 0 {
                bail!(
                    "{} tasks of batch {batch} failed and {} were canceled; see the server log",
                    summary.failed,
                    summary.canceled
                );
            }
            if summary.succeeded >= total {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {total} tasks of batch {batch} ended within {timeout:?}",
                    summary.succeeded
                );
            }
        } else if Instant::now() > deadline {
            bail!("batch {batch} never appeared within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A task of `batch` running `command` without a shell.
pub fn task(batch: &str, command: &[&str]) -> pb::TaskSpec {
    pb::TaskSpec {
        batch: batch.to_owned(),
        command: command.iter().map(|word| (*word).to_owned()).collect(),
        ..pb::TaskSpec::default()
    }
}

/// A generous limit for `tasks` to run: a minute plus 20 ms per task.
pub fn run_limit(tasks: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * tasks as u32
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
