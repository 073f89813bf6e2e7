//! End-to-end tests of the `herd` binary: the real binary, a real server and a real worker as
//! child processes, each test on its own ephemeral port and temporary directories.
//!
//! Nothing sleeps for a fixed time: every wait polls a condition with
//! [`herd_tests::wait_for`] (up to 30 s). The binary starts as
//! [`herd_tests::process::herd_command`] makes it. Child processes are killed when their
//! guard is dropped, even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

mod support;

use support::{Finished, KillOnDrop, herd_command, run, wait_until};

/// Runs `herd ARGS` without a server.
fn herd(args: &[&str]) -> Finished {
    run(herd_command().args(args))
}

/// A herd server on an ephemeral port, with its own data directory, and the workers started
/// against it.
struct Cluster {
    directory: TempDir,
    server_url: String,
    server: KillOnDrop,
    workers: Vec<KillOnDrop>,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `extra` flags.
    fn start_with(extra: &[&str]) -> Self {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let port_file = directory.path().join("server.addr");
        let mut server = KillOnDrop::spawn(
            herd_command()
                .args(["server", "--listen", "127.0.0.1:0", "--port-file"])
                .arg(&port_file)
                .arg("--data-dir")
                .arg(directory.path().join("data"))
                .args(extra),
            directory.path().join("server.log"),
        );
        let mut address = String::new();
        wait_until("the server to write its --port-file", || {
            server.assert_running("the server");
            address = std::fs::read_to_string(&port_file)
                .unwrap_or_default()
                .trim()
                .to_owned();
            !address.is_empty()
        });
        Cluster {
            directory,
            server_url: format!("http://{address}"),
            server,
            workers: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// `herd --server URL ARGS`, as the admin the server created.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = herd_command();
        command
            .env("HERD_TOKEN_FILE", self.path("data").join("admin-token"))
            .arg("--server")
            .arg(&self.server_url)
            .args(args);
        command
    }

    /// A file holding a worker token of this server (made once).
    fn worker_token_file(&self) -> PathBuf {
        let path = self.path("worker-token");
        if !path.exists() {
            let created = self.herd(&["token", "create", "--worker", "--label", "test"]);
            assert_eq!(created.code, 0, "{created:?}");
            write_file(&path, &created.stdout);
        }
        path
    }

    fn herd(&self, args: &[&str]) -> Finished {
        run(&mut self.command(args))
    }

    /// Starts a bare-process worker with one slot for `batch` named `name`, without waiting
    /// for it (it may die at once).
    fn spawn_worker(&self, batch: &str, name: &str) -> KillOnDrop {
        KillOnDrop::spawn(
            self.command(&[
                "worker",
                "--executor",
                "bare",
                "--concurrency",
                "1",
                "--batch",
                batch,
                "--name",
                name,
            ])
            .arg("--work-dir")
            .arg(self.path(&format!("work-{name}")))
            .arg("--token-file")
            .arg(self.worker_token_file()),
            self.path(&format!("worker-{name}.log")),
        )
    }

    /// Starts a bare-process worker for `batch` and waits until the server lists it connected.
    fn start_worker(&mut self, batch: &str) {
        self.start_worker_with(batch, &[]);
    }

    /// [`start_worker`](Self::start_worker) with extra environment variables.
    fn start_worker_with(&mut self, batch: &str, environment: &[(&str, String)]) {
        let name = format!("test-worker-{batch}");
        let worker = KillOnDrop::spawn(
            self.command(&[
                "worker",
                "--executor",
                "bare",
                "--concurrency",
                "2",
                "--batch",
                batch,
                "--name",
                &name,
            ])
            .arg("--work-dir")
            .arg(self.path(&format!("work-{batch}")))
            .arg("--token-file")
            .arg(self.worker_token_file())
            .envs(environment.iter().map(|(name, value)| (name, value))),
            self.path(&format!("worker-{batch}.log")),
        );
        self.workers.push(worker);
        wait_until("the worker to connect", || {
            for worker in &mut self.workers {
                worker.assert_running("the worker");
            }
            let workers = self.herd(&["worker", "list", "--json"]).json();
            workers
                .as_array()
                .expect("an array")
                .iter()
                .any(|worker| worker["name"] == name.as_str() && worker["status"] == "connected")
        });
    }

    fn task(&self, id: &str) -> Value {
        let shown = self.herd(&["task", "show", id, "--json"]);
        assert_eq!(shown.code, 0, "{shown:?}");
        shown.json()
    }

    fn task_count(&self) -> usize {
        let listed = self.herd(&["task", "list", "--json"]);
        assert_eq!(listed.code, 0, "{listed:?}");
        listed.json().as_array().expect("an array").len()
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address").port()
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the test file");
}

#[test]
fn an_unknown_flag_is_a_usage_error_naming_the_flag() {
    let finished = herd(&["launch", "--bogus", "echo", "hi"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("--bogus"), "{finished:?}");

    let finished = herd(&["task", "list", "--colour"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("--colour"), "{finished:?}");
}

#[test]
fn launch_without_a_command_is_a_usage_error() {
    let finished = herd(&["launch", "-b", "mybatch"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains("herd: no command given"),
        "{finished:?}"
    );
    assert!(finished.stdout.is_empty(), "{finished:?}");
}

#[test]
fn what_no_worker_may_allow_is_refused_at_launch() {
    let cluster = Cluster::start();
    for (options, expected) in [
        ("-e AWS_SECRET_ACCESS_KEY", "give a value"),
        (
            "-v /var/run/docker.sock:/var/run/docker.sock",
            "Docker socket",
        ),
        ("-v /run:/r", "Docker socket"),
    ] {
        let finished = cluster.herd(&["launch", "-d", "busybox", "-O", options, "true"]);
        assert_eq!(finished.code, 2, "{options}: {finished:?}");
        assert!(finished.stderr.contains(expected), "{finished:?}");
    }
    assert_eq!(cluster.task_count(), 0);
    // Worker flags are checked at start-up too.
    for args in [
        ["--allow-docker-option", "pid=sometimes"],
        ["--allow-volume", "/var/run"],
        ["--allow-volume", "data"],
        ["--pass-env", "A-B"],
    ] {
        for command in ["worker", "up"] {
            let finished = herd(&[command, args[0], args[1]]);
            assert_eq!(finished.code, 2, "{args:?}: {finished:?}");
            assert!(finished.stderr.contains(args[1]), "{finished:?}");
        }
    }
}

#[test]
fn a_bare_task_sees_none_of_its_worker_s_secrets() {
    let mut cluster = Cluster::start();
    let secret = format!("leak-{}", std::process::id());
    cluster.start_worker_with("secrets", &[("AWS_SECRET_ACCESS_KEY", secret.clone())]);
    let launched = cluster.herd(&["launch", "-b", "secrets", "sh", "-c", "env; echo done"]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    let waited = cluster.herd(&["batch", "wait", "secrets"]);
    assert_eq!(waited.code, 0, "{waited:?}");
    let mut logs = String::new();
    wait_until("the task's stdout in `herd task logs`", || {
        logs = cluster.herd(&["task", "logs", &id]).stdout;
        logs.contains("done")
    });
    assert!(!logs.contains(&secret), "{logs}");
    assert!(!logs.contains("AWS_SECRET"), "{logs}");
}

#[test]
fn zero_or_negative_concurrency_is_refused() {
    for bad in ["0", "-3"] {
        let finished = herd(&["worker", "--concurrency", bad]);
        assert_eq!(finished.code, 2, "{finished:?}");
        assert!(finished.stderr.contains("at least 1"), "{finished:?}");
    }
}

#[test]
fn an_unreachable_server_exits_3_and_says_what_to_do() {
    let address = format!("127.0.0.1:{}", free_port());
    let finished = herd(&["--server", &address, "task", "list"]);
    assert_eq!(finished.code, 3, "{finished:?}");
    assert!(
        finished.stderr.contains(&format!(
            "herd: cannot reach the herd server at http://{address}"
        )),
        "{finished:?}"
    );
    assert!(
        finished.stderr.contains("herd server` or `herd up`"),
        "{finished:?}"
    );
    assert!(finished.stderr.contains("HERD_SERVER"), "{finished:?}");

    // HERD_SERVER is read the same way.
    let finished = run(herd_command()
        .env("HERD_SERVER", &address)
        .args(["launch", "true"]));
    assert_eq!(finished.code, 3, "{finished:?}");
}

#[test]
fn refused_docker_options_queue_nothing() {
    let cluster = Cluster::start();
    let finished = cluster.herd(&[
        "launch",
        "-d",
        "ubuntu:24.04",
        "-O",
        "--mount type=bind,src=/,dst=/host",
        "true",
    ]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("`--mount`"), "{finished:?}");
    assert!(
        finished.stderr.contains("nothing was queued"),
        "{finished:?}"
    );

    let finished = cluster.herd(&["launch", "-O", "--gpus all", "true"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("-d IMAGE"), "{finished:?}");

    // A bad value of an option herd understands is refused at launch too.
    let finished = cluster.herd(&[
        "launch",
        "-d",
        "ubuntu:24.04",
        "-O",
        "--cap-add SYS_ADMINZ",
        "true",
    ]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("`--cap-add SYS_ADMINZ` is not a Linux capability"),
        "{finished:?}"
    );

    assert_eq!(cluster.task_count(), 0);
}

#[test]
fn invalid_uris_are_refused_before_queuing() {
    let cluster = Cluster::start();
    let finished = cluster.herd(&["launch", "-i", "bogus://bucket/sample.fq", "true"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("input (-i)"), "{finished:?}");
    assert!(
        finished.stderr.contains("unknown scheme `bogus`"),
        "{finished:?}"
    );

    let finished = cluster.herd(&["launch", "-r", "s3://bucket/db.tgz|unrar", "true"]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("resource (-r)"), "{finished:?}");

    assert_eq!(cluster.task_count(), 0);
}

#[test]
fn an_unknown_task_is_the_servers_not_found() {
    let cluster = Cluster::start();
    let finished = cluster.herd(&["task", "show", "999"]);
    assert_eq!(finished.code, 1, "{finished:?}");
    assert!(
        finished.stderr.contains("herd: task 999 does not exist"),
        "{finished:?}"
    );
    assert!(finished.stdout.is_empty(), "{finished:?}");
}

#[test]
fn test_mode_prints_the_task_and_queues_nothing() {
    let cluster = Cluster::start();
    let finished = cluster.herd(&[
        "launch",
        "-t",
        "-b",
        "b1",
        "-n",
        "greeting",
        "sh",
        "-c",
        "echo $CPU",
    ]);
    assert_eq!(finished.code, 0, "{finished:?}");
    assert!(
        finished.stdout.contains("sh -c 'echo $CPU'"),
        "{finished:?}"
    );
    assert!(finished.stdout.contains("greeting"), "{finished:?}");

    let finished = cluster.herd(&[
        "launch",
        "-t",
        "--json",
        "-d",
        "ubuntu:24.04",
        "-O",
        "--gpus all",
        "nvidia-smi",
    ]);
    assert_eq!(finished.code, 0, "{finished:?}");
    let spec = finished.json();
    assert_eq!(spec["command"], serde_json::json!(["nvidia-smi"]));
    assert_eq!(spec["docker"]["image"], "ubuntu:24.04");

    assert_eq!(cluster.task_count(), 0);
}

#[test]
fn a_file_queues_every_line_in_order_or_nothing() {
    let cluster = Cluster::start();
    let commands = cluster.path("commands.txt");
    write_file(
        &commands,
        "# three tasks\necho one\n\nsh -c 'echo two'\n  echo \"three and more\"\n",
    );
    let finished = cluster.herd(&[
        "launch",
        "-b",
        "files",
        "--file",
        commands.to_str().unwrap(),
    ]);
    assert_eq!(finished.code, 0, "{finished:?}");
    let ids: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(ids.len(), 3, "{finished:?}");

    let listed = cluster
        .herd(&["task", "list", "-b", "files", "--json"])
        .json();
    let tasks = listed.as_array().expect("an array");
    let listed_ids: Vec<String> = tasks.iter().map(|task| task["id"].to_string()).collect();
    assert_eq!(listed_ids, ids);
    let listed_commands: Vec<&Value> = tasks.iter().map(|task| &task["command"]).collect();
    assert_eq!(
        listed_commands,
        [
            &serde_json::json!(["echo", "one"]),
            &serde_json::json!(["sh", "-c", "echo two"]),
            &serde_json::json!(["echo", "three and more"]),
        ]
    );

    let bad = cluster.path("bad.txt");
    write_file(&bad, "echo fine\necho 'unclosed\necho also fine\n");
    let finished = cluster.herd(&["launch", "-b", "files", "--file", bad.to_str().unwrap()]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains(&format!("{}:2:", bad.display())),
        "{finished:?}"
    );
    assert!(
        finished.stderr.contains("nothing was queued"),
        "{finished:?}"
    );
    assert!(finished.stdout.is_empty(), "{finished:?}");
    assert_eq!(cluster.task_count(), 3);
}

#[test]
fn a_taken_address_is_a_clear_error() {
    let cluster = Cluster::start();
    let address = cluster.server_url.trim_start_matches("http://").to_owned();
    let finished = run(herd_command()
        .args(["server", "--listen", &address, "--data-dir"])
        .arg(cluster.path("second")));
    assert_eq!(finished.code, 1, "{finished:?}");
    assert!(finished.stderr.contains("already in use"), "{finished:?}");
}

#[test]
fn the_server_stops_cleanly_on_sigterm() {
    let mut cluster = Cluster::start();
    let pid = cluster.server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    assert_eq!(
        cluster.server.wait_for_exit(),
        Some(0),
        "{}",
        cluster.server.log()
    );
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let directory = tempfile::tempdir().unwrap();
    let commands = directory.path().join("many.txt");
    let text: String = (0..5_000)
        .map(|index| format!("echo task number {index}\n"))
        .collect();
    write_file(&commands, &text);
    let mut child = herd_command()
        .args(["launch", "-t", "--file"])
        .arg(&commands)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before anything is read: every write fails with a broken pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("herd:"), "{stderr}");
}

#[test]
fn a_task_runs_on_a_real_worker_from_launch_to_logs() {
    let mut cluster = Cluster::start();
    cluster.start_worker("cycle");
    let output_dir = cluster.path("out");
    let output_uri = format!("{}/", output_dir.display());

    let launched = cluster.herd(&[
        "launch",
        "-b",
        "cycle",
        "-n",
        "writes-a-result",
        "-o",
        &output_uri,
        "sh",
        "-c",
        "echo hello from herd; echo computed > $OUTPUT/result.txt",
    ]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    assert!(id.parse::<u64>().is_ok(), "{launched:?}");

    let waited = cluster.herd(&["batch", "wait", "cycle"]);
    assert_eq!(
        waited.code,
        0,
        "{waited:?}\nworker log:\n{}",
        cluster.workers[0].log()
    );
    assert!(waited.stdout.contains("1 succeeded"), "{waited:?}");

    let task = cluster.task(&id);
    assert_eq!(task["state"], "succeeded", "{task:#}");
    assert_eq!(task["exit_code"], 0, "{task:#}");
    assert_eq!(task["name"], "writes-a-result", "{task:#}");
    let attempts = task["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{task:#}");
    assert_eq!(attempts[0]["worker_name"], "test-worker-cycle", "{task:#}");
    assert!(attempts[0]["worker"].as_u64().is_some(), "{task:#}");
    assert!(attempts[0]["ended_at"].is_string(), "{task:#}");

    let result =
        std::fs::read_to_string(output_dir.join("result.txt")).expect("the output was uploaded");
    assert_eq!(result.trim(), "computed");

    wait_until("the task's stdout in `herd task logs`", || {
        let logs = cluster.herd(&["task", "logs", &id]);
        assert_eq!(logs.code, 0, "{logs:?}");
        logs.stdout.contains("hello from herd")
    });

    let shown = cluster.herd(&["task", "show", &id]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains("#1 on worker"), "{shown:?}");
    assert!(shown.stdout.contains("run "), "{shown:?}");

    // A failing command makes `batch wait` exit 1.
    let launched = cluster.herd(&[
        "launch",
        "-b",
        "cycle",
        "sh",
        "-c",
        "echo failing >&2; exit 3",
    ]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let failed_id = launched.stdout.trim().to_owned();
    let waited = cluster.herd(&["batch", "wait", "cycle", "--json"]);
    assert_eq!(waited.code, 1, "{waited:?}");
    let summary = waited.json();
    assert_eq!(summary["succeeded"], 1, "{summary:#}");
    assert_eq!(summary["failed"], 1, "{summary:#}");
    let task = cluster.task(&failed_id);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["exit_code"], 3, "{task:#}");
    wait_until("the task's stderr in `herd task logs --stderr`", || {
        cluster
            .herd(&["task", "logs", &failed_id, "--stderr"])
            .stdout
            .contains("failing")
    });
}

impl Cluster {
    /// `kill -9` the server, then start it again on the same address and data directory.
    fn kill_and_restart_server(&mut self) {
        self.kill_server();
        self.start_server_again();
    }

    /// `kill -9` the server.
    fn kill_server(&mut self) {
        self.server.child.kill().expect("SIGKILL the server");
        let status = self.server.child.wait().expect("reap the server");
        assert!(
            !status.success(),
            "the server was killed, not stopped: {status}"
        );
    }

    /// Starts the server again on its address and data directory.
    fn start_server_again(&mut self) {
        let address = self.server_url.trim_start_matches("http://").to_owned();
        let port_file = self.path("server.addr");
        std::fs::remove_file(&port_file).expect("remove the old port file");
        let mut starting: Option<KillOnDrop> = None;
        wait_until("the server to start again on its address", || {
            let server = starting.get_or_insert_with(|| {
                KillOnDrop::spawn(
                    herd_command()
                        .args(["server", "--listen", &address, "--port-file"])
                        .arg(&port_file)
                        .arg("--data-dir")
                        .arg(self.path("data")),
                    self.path("server-restarted.log"),
                )
            });
            if port_file.exists() {
                return true;
            }
            if server.child.try_wait().expect("poll the server").is_some() {
                // The port may still be held for a moment after the kill: start another.
                starting = None;
            }
            false
        });
        self.server = starting.expect("started above");
    }
}

#[test]
fn a_server_killed_mid_run_loses_nothing_it_acknowledged() {
    let mut cluster = Cluster::start();
    cluster.start_worker("durable");
    let marker = cluster.path("marker");
    let script = format!("sleep 2; echo finished > {}", marker.display());
    let running = cluster.herd(&["launch", "-b", "durable", "sh", "-c", &script]);
    assert_eq!(running.code, 0, "{running:?}");
    let running_id = running.stdout.trim().to_owned();
    wait_until("the long task to run", || {
        cluster.task(&running_id)["state"] == "running"
    });

    // 500 more tasks in a batch no worker serves: acknowledged, so they must all survive.
    let commands: String = (0..500)
        .map(|index| format!("echo queued {index}\n"))
        .collect();
    let file = cluster.path("tasks.txt");
    write_file(&file, &commands);
    let queued = cluster.herd(&[
        "launch",
        "-b",
        "waiting",
        "--file",
        file.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(queued.code, 0, "{queued:?}");
    let queued_ids: Vec<&str> = queued.stdout.lines().collect();
    assert_eq!(queued_ids.len(), 500);

    cluster.kill_and_restart_server();

    // Everything acknowledged is there; the running task was not killed and finishes once.
    assert_eq!(cluster.task_count(), 501);
    for id in [queued_ids[0], queued_ids[499]] {
        assert_eq!(cluster.task(id)["state"], "pending");
    }
    let waited = cluster.herd(&["batch", "wait", "durable"]);
    assert_eq!(
        waited.code,
        0,
        "{waited:?}\nworker log:\n{}",
        cluster.workers[0].log()
    );
    let task = cluster.task(&running_id);
    assert_eq!(task["state"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"].as_array().expect("attempts").len(),
        1,
        "{task:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&marker)
            .expect("the task finished")
            .trim(),
        "finished"
    );
}

/// The S3 server of `scripts/start-seaweedfs.sh` as `HERD_S3_*` settings for herd processes.
/// Without it the test fails and says how to start it: a skipped test would hide a broken
/// staging path.
fn s3_settings() -> Vec<(&'static str, String)> {
    let variable = |name: &str| match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs a real S3 server; run\n    eval \"$(bash scripts/start-seaweedfs.sh)\"\nand run the tests again"
        ),
    };
    vec![
        ("HERD_S3_ENDPOINT", variable("HERD_TEST_S3_ENDPOINT")),
        ("HERD_S3_ACCESS_KEY_ID", variable("HERD_TEST_S3_ACCESS_KEY")),
        (
            "HERD_S3_SECRET_ACCESS_KEY",
            variable("HERD_TEST_S3_SECRET_KEY"),
        ),
        ("HERD_S3_REGION", "us-east-1".to_owned()),
    ]
}

#[test]
fn a_task_stages_its_input_and_resource_from_s3_and_uploads_its_output_there() {
    let s3 = s3_settings();
    let mut cluster = Cluster::start();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .subsec_nanos();
    // SeaweedFS makes a bucket on its first upload.
    let bucket = format!("herd-cli-{}-{nanos}", std::process::id());
    let fetch = |args: &[&str]| {
        let finished = run(herd_command()
            .arg("fetch")
            .args(args)
            .envs(s3.iter().map(|(name, value)| (name, value))));
        assert_eq!(finished.code, 0, "herd fetch {args:?}: {finished:?}");
        finished
    };

    // An input, and a resource packed as a .tar.gz, put in the bucket with `herd fetch`.
    let local = cluster.path("local");
    std::fs::create_dir_all(local.join("ref")).expect("create the local folders");
    write_file(&local.join("reads.txt"), "r1\nr2\nr3\n");
    write_file(&local.join("ref/genome.txt"), "ACGT\n");
    let packed = Command::new("tar")
        .arg("czf")
        .arg(local.join("ref.tar.gz"))
        .arg("-C")
        .arg(&local)
        .arg("ref")
        .status()
        .expect("tar runs");
    assert!(packed.success());
    let input = format!("s3://{bucket}/in/reads.txt");
    let resource = format!("s3://{bucket}/db/ref.tar.gz");
    fetch(&[
        "copy",
        &local.join("reads.txt").display().to_string(),
        &input,
    ]);
    fetch(&[
        "copy",
        &local.join("ref.tar.gz").display().to_string(),
        &resource,
    ]);

    cluster.start_worker_with("remote", &s3);
    let launched = cluster.herd(&[
        "launch",
        "-b",
        "remote",
        "-i",
        &input,
        "-r",
        &format!("{resource}|untar"),
        "-o",
        &format!("s3://{bucket}/out/"),
        "sh",
        "-c",
        "wc -l < $INPUT/reads.txt > $OUTPUT/lines; cat $RESOURCE/ref/genome.txt > $OUTPUT/genome",
    ]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    let waited = cluster.herd(&["batch", "wait", "remote"]);
    assert_eq!(
        waited.code,
        0,
        "{waited:?}\nworker log:\n{}",
        cluster.workers[0].log()
    );

    // The output is in the bucket.
    let downloaded = cluster.path("downloaded");
    fetch(&[
        "copy",
        &format!("s3://{bucket}/out/"),
        &format!("{}/", downloaded.display()),
    ]);
    let read = |name: &str| {
        std::fs::read_to_string(downloaded.join(name))
            .unwrap_or_else(|error| panic!("{name} was uploaded: {error}"))
    };
    assert_eq!(read("lines").trim(), "3");
    assert_eq!(read("genome"), "ACGT\n");

    // Every transfer is recorded with the attempt, with each file's size and CRC64NVME.
    let task = cluster.task(&id);
    let transfers = task["attempts"][0]["transfers"]
        .as_array()
        .unwrap_or_else(|| panic!("transfers recorded: {task:#}"))
        .clone();
    let direction = |name: &str| {
        transfers
            .iter()
            .find(|transfer| transfer["direction"] == name)
            .unwrap_or_else(|| panic!("a {name} transfer: {task:#}"))
            .clone()
    };
    let staged = direction("input");
    assert_eq!(staged["uri"], input.as_str(), "{task:#}");
    assert_eq!(staged["items"][0]["size"], 9, "{task:#}");
    let local_crc = run(herd_command()
        .args(["fetch", "checksum"])
        .arg(local.join("reads.txt")));
    assert!(
        local_crc
            .stdout
            .starts_with(staged["items"][0]["crc64nvme"].as_str().unwrap_or("-")),
        "{local_crc:?} {task:#}"
    );
    assert_eq!(direction("resource")["files"], 1, "{task:#}");
    assert_eq!(direction("output")["files"], 2, "{task:#}");

    fetch(&["delete", "--recursive", &format!("s3://{bucket}/")]);
}

#[test]
fn a_fetch_that_cannot_write_says_why_and_actions_on_the_destination_are_usage_errors() {
    let directory = tempfile::tempdir().unwrap();
    let source = directory.path().join("a.txt");
    write_file(&source, "123456789");
    let blocker = directory.path().join("file.txt");
    write_file(&blocker, "a regular file, not a folder");
    // Under a regular file there can be no folder: the operating system says so, and so does
    // herd, with the path.
    let target = blocker.join("deeper/copy.txt");
    let source_text = source.to_str().expect("utf-8 path");
    let finished = herd(&[
        "fetch",
        "copy",
        source_text,
        target.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(finished.code, 1, "{finished:?}");
    assert!(
        finished.stderr.contains("Not a directory"),
        "the OS's reason: {finished:?}"
    );
    assert!(
        finished.stderr.contains(&blocker.display().to_string()),
        "{finished:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&blocker).unwrap(),
        "a regular file, not a folder"
    );

    let destination = format!("{}|gunzip", directory.path().join("out.txt").display());
    let finished = herd(&["fetch", "copy", source_text, &destination]);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains("put them on the source"),
        "{finished:?}"
    );
    assert!(!directory.path().join("out.txt").exists());
}

impl Cluster {
    /// `herd --server URL ARGS` with no token but the environment given (a user's own).
    fn command_as(&self, environment: &[(&str, &Path)], args: &[&str]) -> Command {
        let mut command = herd_command();
        for (name, value) in environment {
            command.env(name, value);
        }
        command.arg("--server").arg(&self.server_url).args(args);
        command
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn users_log_in_reach_only_their_tasks_and_lose_access_when_revoked() {
    let cluster = Cluster::start();
    // Without a token, every command says how to get one.
    let anonymous = run(&mut cluster.command_as(&[], &["task", "list"]));
    assert_eq!(anonymous.code, 1, "{anonymous:?}");
    assert!(anonymous.stderr.contains("herd login"), "{anonymous:?}");

    // The admin adds two users; each token goes alone to stdout, once.
    let alice = cluster.herd(&["user", "add", "alice"]);
    assert_eq!(alice.code, 0, "{alice:?}");
    let alice_token = alice.stdout.trim().to_owned();
    assert!(alice_token.starts_with("herd_"), "{alice:?}");
    assert!(alice.stderr.contains("shown this once"), "{alice:?}");
    let bob = cluster.herd(&["user", "add", "bob"]);
    write_file(&cluster.path("bob-token"), &bob.stdout);
    let duplicate = cluster.herd(&["user", "add", "alice"]);
    assert_eq!(duplicate.code, 1, "{duplicate:?}");
    assert!(duplicate.stderr.contains("exists already"), "{duplicate:?}");

    // Alice logs in: the token is checked, then saved 0600 in a 0700 folder.
    let config = cluster.path("alice-config");
    write_file(&cluster.path("alice-token"), &alice.stdout);
    let alice_env = [("HERD_CONFIG_DIR", config.as_path())];
    let login = run(cluster
        .command_as(&alice_env, &["login", "--token-file"])
        .arg(cluster.path("alice-token")));
    assert_eq!(login.code, 0, "{login:?}");
    assert!(login.stderr.contains("as alice"), "{login:?}");
    let credentials = config.join("credentials");
    assert_eq!(mode(&credentials), 0o600);
    assert_eq!(mode(&config), 0o700);
    let whoami = run(&mut cluster.command_as(&alice_env, &["whoami"]));
    assert!(whoami.stdout.starts_with("alice "), "{whoami:?}");
    let wrong = run(cluster
        .command_as(
            &[("HERD_CONFIG_DIR", cluster.path("x").as_path())],
            &["login", "--token-file"],
        )
        .arg(cluster.path("server.addr")));
    assert_eq!(wrong.code, 1, "a token the server does not know: {wrong:?}");
    assert!(
        !cluster.path("x").join("credentials").exists(),
        "nothing saved"
    );

    // Alice's task is hers: Bob cannot see it, the admin sees whose it is.
    let launched =
        run(&mut cluster.command_as(&alice_env, &["launch", "-b", "alices", "--", "true"]));
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    let bob_env = [("HERD_TOKEN_FILE", cluster.path("bob-token"))];
    let bob_env: Vec<(&str, &Path)> = bob_env
        .iter()
        .map(|(name, path)| (*name, path.as_path()))
        .collect();
    let refused = run(&mut cluster.command_as(&bob_env, &["task", "show", &id]));
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("belongs to another user"),
        "{refused:?}"
    );
    let taken = run(&mut cluster.command_as(&bob_env, &["launch", "-b", "alices", "--", "true"]));
    assert_eq!(taken.code, 1, "{taken:?}");
    assert!(
        taken.stderr.contains("belongs to user `alice`"),
        "{taken:?}"
    );
    let listed = run(&mut cluster.command_as(&bob_env, &["task", "list", "--json"]));
    assert_eq!(listed.json(), serde_json::json!([]), "{listed:?}");
    assert_eq!(cluster.task(&id)["owner"], "alice");

    // The admin revokes Alice's token: her next call is refused.
    let tokens = cluster
        .herd(&["token", "list", "--user", "alice", "--json"])
        .json();
    let token_id = tokens[0]["id"].to_string();
    let revoked = cluster.herd(&["token", "revoke", &token_id]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let after = run(&mut cluster.command_as(&alice_env, &["whoami"]));
    assert_eq!(after.code, 1, "{after:?}");
    assert!(after.stderr.contains("not valid"), "{after:?}");
    assert!(
        !after.stderr.contains(&alice_token),
        "the token is never echoed: {after:?}"
    );
}

#[test]
fn a_worker_needs_a_worker_token() {
    let cluster = Cluster::start();
    let missing = run(&mut cluster.command_as(&[], &["worker", "--executor", "bare"]));
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("herd token create --worker"),
        "{missing:?}"
    );
    // A user token is refused by the server, and the worker stops saying why.
    let admin = cluster.path("data").join("admin-token");
    let refused = run(cluster
        .command_as(&[], &["worker", "--executor", "bare", "--token-file"])
        .arg(&admin)
        .arg("--work-dir")
        .arg(cluster.path("work")));
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("user token cannot open a worker session"),
        "{refused:?}"
    );
}

#[test]
fn herd_up_logs_the_local_user_in_so_the_quickstart_needs_no_token() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let config = directory.path().join("config");
    let port_file = directory.path().join("address");
    let mut up = KillOnDrop::spawn(
        herd_command()
            .env("HERD_CONFIG_DIR", &config)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--concurrency",
                "1",
                "--port-file",
            ])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(directory.path().join("data")),
        directory.path().join("up.log"),
    );
    let mut address = String::new();
    wait_until("herd up to write its --port-file", || {
        up.assert_running("herd up");
        address = std::fs::read_to_string(&port_file)
            .unwrap_or_default()
            .trim()
            .to_owned();
        !address.is_empty()
    });
    assert_eq!(mode(&config.join("credentials")), 0o600);
    assert_eq!(
        mode(&directory.path().join("data").join("admin-token")),
        0o600
    );
    let server = format!("http://{address}");
    let herd_here = |args: &[&str]| {
        run(herd_command()
            .env("HERD_CONFIG_DIR", &config)
            .env("HERD_SERVER", &server)
            .args(args))
    };
    let launched = herd_here(&["launch", "--", "echo", "hello"]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let waited = herd_here(&["batch", "wait", "default"]);
    assert_eq!(waited.code, 0, "{waited:?}");
    let logs = herd_here(&["task", "logs", launched.stdout.trim()]);
    assert_eq!(logs.stdout, "hello\n", "{logs:?}");
    let log = up.log();
    assert!(
        !log.contains("herd_"),
        "no token in the server's log: {log}"
    );
}

#[test]
fn a_task_that_kills_its_worker_stops_at_the_crash_limit_and_others_still_run() {
    let cluster = Cluster::start_with(&["--worker-timeout", "2", "--heartbeat", "1"]);
    let launched = cluster.herd(&["launch", "-b", "poison", "sh", "-c", "kill -9 $PPID"]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let poison = launched.stdout.trim().to_owned();
    // Each worker takes the poison task first (a lost attempt goes first in line) and dies.
    for round in 1..=3 {
        let mut worker = cluster.spawn_worker("poison", &format!("victim-{round}"));
        let code = worker.wait_for_exit();
        assert_eq!(code, None, "killed by a signal; its log:\n{}", worker.log());
        wait_until("the lost attempt to be counted", || {
            let task = cluster.task(&poison);
            task["attempts"].as_array().is_some_and(|attempts| {
                attempts.len() == round && attempts[round - 1]["state"] == "failed"
            })
        });
    }
    let task = cluster.task(&poison);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["reason"], "crash_limit", "{task:#}");
    let message = task["message"].as_str().unwrap_or_default();
    for round in 1..=3 {
        assert!(message.contains(&format!("(victim-{round})")), "{message}");
    }
    // A healthy worker runs the other tasks; the poison one is not given to it.
    let launched = cluster.herd(&["launch", "-b", "poison", "true"]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let mut healthy = cluster.spawn_worker("poison", "healthy");
    let waited = cluster.herd(&["batch", "wait", "poison"]);
    healthy.assert_running("the healthy worker");
    assert!(waited.stdout.contains("1 succeeded"), "{waited:?}");
    assert_eq!(
        cluster.task(&poison)["attempts"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn a_worker_stopped_with_sigterm_hands_its_task_back_without_a_crash() {
    let cluster = Cluster::start();
    let marker = cluster.path("ran");
    let script = format!(
        "if [ -e {marker} ]; then exit 0; fi; touch {marker}; sleep 600",
        marker = marker.display()
    );
    let launched = cluster.herd(&[
        "launch",
        "-b",
        "stop",
        "--crash-limit",
        "1",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    let mut stopping = cluster.spawn_worker("stop", "stopping");
    wait_until("the task to run", || {
        cluster.task(&id)["state"] == "running"
    });
    // `running` is reported when the command starts, before its script reached `touch`.
    wait_until("the first attempt to leave its marker", || marker.exists());
    let pid = stopping.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    assert_eq!(stopping.wait_for_exit(), Some(0), "{}", stopping.log());
    // Queued again at once (the worker timeout is 20 s), as a stopped worker's task.
    let task = cluster.task(&id);
    assert_eq!(task["state"], "pending", "{task:#}");
    assert_eq!(task["attempts"][0]["reason"], "worker_stopped", "{task:#}");
    let listed = cluster.herd(&["worker", "list"]);
    assert!(listed.stdout.contains("stopped"), "{listed:?}");
    let _next = cluster.spawn_worker("stop", "next");
    let waited = cluster.herd(&["batch", "wait", "stop"]);
    assert!(waited.stdout.contains("1 succeeded"), "{waited:?}");
}

#[test]
fn a_launch_repeated_with_its_key_queues_once() {
    let cluster = Cluster::start();
    let first = cluster.herd(&["launch", "--idempotency-key", "run-42", "--", "true"]);
    assert_eq!(first.code, 0, "{first:?}");
    let again = cluster.herd(&["launch", "--idempotency-key", "run-42", "--", "true"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.stdout, first.stdout, "the same id");
    assert_eq!(cluster.task_count(), 1, "queued once");
    let bad = cluster.herd(&["launch", "--idempotency-key", "has space", "--", "true"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}
