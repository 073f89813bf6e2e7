//! The processes under test: one `herd server` (SQLite in its data directory, or a fresh
//! PostgreSQL database) and `herd worker` processes, each behind its own [`Proxy`], all on
//! loopback; and the `herd` commands the schedule runs against them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_tests::postgres::TestDatabase;
use tokio::process::{Child, Command};

use crate::proxy::Proxy;

/// How long a silent worker lives for the server (short, so that the schedule sees losses).
pub const WORKER_TIMEOUT_SECS: u64 = 2;

/// A `herd` child process, killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> anyhow::Result<Process> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start herd")?;
        Ok(Process { child, log })
    }

    /// `kill -9`, and reap.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// The end of its log, for errors.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text.floor_char_boundary(start)..].to_owned()
    }
}

/// The server, its workers and their proxies.
pub struct Cluster {
    herd: PathBuf,
    pub directory: tempfile::TempDir,
    database: Option<TestDatabase>,
    pub address: SocketAddr,
    server: Option<Process>,
    restarts: usize,
    pub workers: Vec<Worker>,
}

/// One worker process and the proxy it reaches the server through.
pub struct Worker {
    pub proxy: Proxy,
    pub process: Option<Process>,
    pub name: String,
    starts: usize,
}

impl Cluster {
    /// Starts a server (on PostgreSQL if `postgres`) and `workers` bare workers of batch
    /// `chaos`, each with `concurrency` slots.
    pub async fn start(
        herd: &Path,
        postgres: bool,
        workers: usize,
        concurrency: u32,
    ) -> anyhow::Result<Cluster> {
        let directory = tempfile::Builder::new().prefix("herd-chaos-").tempdir()?;
        let database = if postgres {
            Some(TestDatabase::create().await?)
        } else {
            None
        };
        let mut cluster = Cluster {
            herd: herd.to_owned(),
            directory,
            database,
            address: "127.0.0.1:0".parse()?,
            server: None,
            restarts: 0,
            workers: Vec::new(),
        };
        cluster.start_server("127.0.0.1:0").await?;
        let created = cluster
            .herd(&["token", "create", "--worker", "--label", "chaos"])
            .await?;
        std::fs::write(cluster.path("worker-token"), created)?;
        for index in 0..workers {
            let proxy = Proxy::start(cluster.address).await?;
            cluster.workers.push(Worker {
                proxy,
                process: None,
                name: format!("chaos-{index}"),
                starts: 0,
            });
            cluster.start_worker(index, concurrency).await?;
        }
        Ok(cluster)
    }

    /// Whether the server runs on PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.database.is_some()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn start_server(&mut self, listen: &str) -> anyhow::Result<()> {
        let port_file = self.path("server.addr");
        let _ = std::fs::remove_file(&port_file);
        let mut command = Command::from(herd_tests::process::herd_command(&self.herd));
        command
            .args(["server", "--listen", listen, "--port-file"])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(self.path("data"))
            .args([
                "--worker-timeout",
                &WORKER_TIMEOUT_SECS.to_string(),
                "--heartbeat",
                "1",
            ]);
        if let Some(database) = &self.database {
            command.arg("--db").arg(database.url());
        }
        self.restarts += 1;
        let log = self.path(&format!("server-{}.log", self.restarts));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut server = Process::spawn(command, log)?;
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && !text.trim().is_empty()
            {
                self.address = text.trim().parse()?;
                self.server = Some(server);
                return Ok(());
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("herd server exited with {status}:\n{}", server.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "herd server did not start within 60 s:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` of the server, then a start on the same address, database and data
    /// directory (retried while the port is still held).
    pub async fn kill_and_restart_server(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill().await?;
        }
        let listen = self.address.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.start_server(&listen).await {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "restart failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts worker `index` (again), reaching the server through its proxy.
    pub async fn start_worker(&mut self, index: usize, concurrency: u32) -> anyhow::Result<()> {
        let token = self.path("worker-token");
        let herd = self.herd.clone();
        let work = self.path(&format!("work-{index}"));
        let worker = &mut self.workers[index];
        worker.starts += 1;
        let log = self
            .directory
            .path()
            .join(format!("worker-{index}-{}.log", worker.starts));
        let mut command = Command::from(herd_tests::process::herd_command(&herd));
        command
            .args(["worker", "--executor", "bare", "--batch", "chaos", "--name"])
            .arg(&worker.name)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--server")
            .arg(format!("http://{}", worker.proxy.address))
            .arg("--work-dir")
            .arg(work)
            .arg("--token-file")
            .arg(token);
        worker.process = Some(Process::spawn(command, log)?);
        Ok(())
    }

    /// `kill -9` of worker `index`.
    pub async fn kill_worker(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut process) = self.workers[index].process.take() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Runs `herd ARGS` against the server as its admin; its stdout, or an error with its
    /// stderr.
    pub async fn herd(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.herd_command(args).output().await?;
        if !output.status.success() {
            bail!(
                "herd {args:?} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `herd --server URL ARGS` as the admin.
    pub fn herd_command(&self, args: &[&str]) -> Command {
        let mut command = Command::from(herd_tests::process::herd_command(&self.herd));
        command
            .env("HERD_TOKEN_FILE", self.path("data").join("admin-token"))
            .arg("--server")
            .arg(self.url())
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// The logs of every process, for a failure.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Some(server) = &self.server {
            text.push_str(&format!("--- server\n{}\n", server.log_tail()));
        }
        for worker in &self.workers {
            if let Some(process) = &worker.process {
                text.push_str(&format!("--- {}\n{}\n", worker.name, process.log_tail()));
            }
        }
        text
    }
}
