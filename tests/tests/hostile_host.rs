//! Hostile tasks against a real cluster (in-process server and workers, a real Docker engine,
//! real processes): what a task may take of its worker's host is what the worker's policy
//! says, no more. Each test checks that the attack fails with a message naming the flag that
//! would allow it, that nothing leaks, and that the worker goes on serving.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use herd_proto::policy::{DockerOption, Policy};
use herd_proto::view::TaskView;
use herd_proto::{Reason, TaskId, TaskRequest, TaskState};
use herd_tests::{Cluster, WorkerHandle, WorkerOptions, shell_task, task_log};
use herd_worker::Executors;
use herd_worker::executor::bare::BareExecutor;
use herd_worker::executor::docker::DockerExecutor;

const IMAGE: &str = "herd-test-busybox:latest";

/// One test at a time: a container is named after its worker, task and attempt ids, which
/// every test's fresh cluster numbers alike, so two tests at once would replace each other's
/// containers on the one engine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A worker of `batch` following `policy`, with Docker and (when `bare`) the bare executor.
async fn worker(
    cluster: &Cluster,
    batch: &str,
    policy: Policy,
    bare: bool,
) -> anyhow::Result<WorkerHandle> {
    let policy = Arc::new(policy);
    let docker = DockerExecutor::connect().await.map_err(|error| {
        anyhow::anyhow!("{error}; start Docker and run scripts/build-test-image.sh")
    })?;
    let executors = Executors {
        bare: bare.then(|| {
            Arc::new(BareExecutor::with_policy(policy.clone()))
                as Arc<dyn herd_worker::executor::Executor>
        }),
        docker: Some(Arc::new(docker.policy(policy.clone()))),
    };
    cluster
        .add_worker(WorkerOptions {
            batch: batch.to_owned(),
            executors: Some(executors),
            policy: (*policy).clone(),
            ..WorkerOptions::default()
        })
        .await
}

fn docker_task(batch: &str, options: &str, script: &str) -> TaskRequest {
    TaskRequest {
        docker_image: Some(IMAGE.into()),
        docker_options: options.into(),
        ..shell_task(batch, script)
    }
}

async fn run(cluster: &Cluster, request: TaskRequest) -> anyhow::Result<TaskView> {
    let ids = cluster.submit(vec![request]).await?;
    finished(cluster, ids[0]).await
}

async fn finished(cluster: &Cluster, id: TaskId) -> anyhow::Result<TaskView> {
    cluster
        .wait_task(id, "finished", |task| task.state.is_terminal())
        .await
}

/// The task failed before anything ran, with a message containing `expected`.
fn assert_refused(task: &TaskView, expected: &str) {
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert_eq!(task.reason, Some(Reason::Executor), "{task:?}");
    let message = task.message.as_deref().unwrap_or_default();
    assert!(message.contains(expected), "{message}");
}

fn real_path(path: &Path) -> String {
    path.canonicalize().unwrap().display().to_string()
}

#[tokio::test]
async fn a_host_folder_is_mounted_only_under_an_allowed_prefix() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("shadow"), "host-secret\n")?;
    let host_path = real_path(host.path());
    let mut allowing = Policy::default();
    allowing.allow_volume(&host_path)?;
    let _default = worker(&cluster, "strict", Policy::default(), false).await?;
    let _allowing = worker(&cluster, "open", allowing, false).await?;

    let options = format!("-v {host_path}:/host:ro");
    let script = "cat /host/shadow > /output/x; cat /host/shadow";
    let output = tempfile::tempdir()?;
    let mut request = docker_task("strict", &options, script);
    request.output = Some(format!("{}/", output.path().display()));
    let refused = run(&cluster, request.clone()).await?;
    assert_refused(&refused, &format!("herd worker --allow-volume {host_path}"));
    assert!(!output.path().join("x").exists());
    let mut client = cluster.client().await?;
    assert!(
        !task_log(&mut client, refused.id, false)
            .await?
            .contains("host-secret")
    );

    request.batch = "open".into();
    let allowed = run(&cluster, request).await?;
    assert_eq!(allowed.state, TaskState::Succeeded, "{allowed:?}");
    assert_eq!(
        std::fs::read_to_string(output.path().join("x"))?,
        "host-secret\n"
    );

    // An escape through `..` from the allowed folder is a host folder like any other.
    let escape = format!("-v {host_path}/../../etc:/host:ro");
    let refused = run(&cluster, docker_task("open", &escape, "ls /host")).await?;
    assert_refused(&refused, "--allow-volume");
    // So is a link inside it that leads out, followed or climbed out of with `..`.
    let outside = tempfile::tempdir()?;
    std::fs::create_dir(outside.path().join("inner"))?;
    std::fs::write(outside.path().join("secret"), "outside-secret\n")?;
    std::os::unix::fs::symlink(outside.path().join("inner"), host.path().join("link"))?;
    for source in ["link", "link/..", "link/new-folder"] {
        let options = format!("-v {host_path}/{source}:/host");
        let refused = run(&cluster, docker_task("open", &options, "cat /host/secret")).await?;
        assert_refused(&refused, "--allow-volume");
    }
    assert!(!outside.path().join("inner/new-folder").exists());
    // The strict worker still serves.
    let fine = run(&cluster, docker_task("strict", "", "echo fine")).await?;
    assert_eq!(fine.state, TaskState::Succeeded, "{fine:?}");
    Ok(())
}

#[tokio::test]
async fn the_docker_socket_is_never_mountable() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    // No worker can allow `/` or a folder holding the socket.
    for prefix in ["/", "/var", "/run", "/var/run"] {
        let error = Policy::default()
            .allow_volume(prefix)
            .unwrap_err()
            .to_string();
        assert!(error.contains("Docker socket"), "{prefix}: {error}");
    }
    // Nor can a task ask: the server refuses it, as `herd launch` does.
    for options in [
        "-v /var/run/docker.sock:/var/run/docker.sock",
        "-v /run:/r",
        "-v /:/host",
    ] {
        let error = cluster
            .submit(vec![docker_task("default", options, "true")])
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("Docker socket"),
            "{options}: {error:#}"
        );
    }
    // A link to the socket inside an allowed folder: the worker follows it and refuses.
    let allowed = tempfile::tempdir()?;
    let allowed_path = real_path(allowed.path());
    std::os::unix::fs::symlink("/var/run/docker.sock", allowed.path().join("sock"))?;
    let mut policy = Policy::default();
    policy.allow_volume(&allowed_path)?;
    let _worker = worker(&cluster, "default", policy, false).await?;
    let options = format!("-v {allowed_path}/sock:/var/run/docker.sock");
    let refused = run(&cluster, docker_task("default", &options, "ls -l /var/run")).await?;
    assert_refused(&refused, "Docker socket");
    let fine = run(&cluster, docker_task("default", "", "echo fine")).await?;
    assert_eq!(fine.state, TaskState::Succeeded, "{fine:?}");
    Ok(())
}

#[tokio::test]
async fn an_environment_variable_without_a_value_is_refused_at_submission() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    // cargo sets CARGO_PKG_NAME for the tests it runs: a variable the worker has.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    let error = cluster
        .submit(vec![docker_task("default", "-e CARGO_PKG_NAME", "env")])
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("give a value"), "{error:#}");
    Ok(())
}

#[tokio::test]
async fn host_networking_needs_the_worker_to_allow_it() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let allowing = Policy {
        docker_options: vec![DockerOption::NetworkHost],
        ..Policy::default()
    };
    let _default = worker(&cluster, "strict", Policy::default(), false).await?;
    let _allowing = worker(&cluster, "open", allowing, false).await?;
    let refused = run(&cluster, docker_task("strict", "--network host", "true")).await?;
    assert_refused(&refused, "herd worker --allow-docker-option network=host");
    let allowed = run(&cluster, docker_task("open", "--network host", "true")).await?;
    assert_eq!(allowed.state, TaskState::Succeeded, "{allowed:?}");
    Ok(())
}

/// The name of the container of `task`'s first attempt (the worker's
/// `herd-i<instance>-wW-tT-aA`).
fn container_name(cluster: &Cluster, task: &TaskView) -> String {
    let attempt = task.attempts.first().expect("the task had an attempt");
    format!(
        "herd-i{:016x}-w{}-t{}-a{}",
        cluster.instance_id().expect("the server's instance"),
        attempt.worker.0,
        task.id,
        attempt.number
    )
}

/// Seconds since the epoch, as `docker events --since/--until` take them.
fn engine_time(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).expect("after 1970");
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

/// How many times the engine created a container named `name` from `since` until now.
fn containers_created(name: &str, since: SystemTime) -> anyhow::Result<usize> {
    let output = Command::new("docker")
        .args(["events", "--since", &engine_time(since)])
        .args(["--until", &engine_time(SystemTime::now())])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("container={name}")])
        .args(["--format", "{{.Actor.Attributes.name}}"])
        .output()
        .map_err(|error| {
            anyhow::anyhow!("cannot run `docker events` (install the CLI): {error}")
        })?;
    anyhow::ensure!(
        output.status.success(),
        "`docker events` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = String::from_utf8(output.stdout)?;
    Ok(listed.lines().filter(|line| *line == name).count())
}

#[tokio::test]
async fn host_sharing_options_are_refused_by_default_before_any_container_exists()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let _default = worker(&cluster, "default", Policy::default(), false).await?;
    // The same worker runs a task without them, and `docker events` sees its container: the
    // checks below could see one too. (It also makes the server's task-log folder, which
    // names its instance.)
    let since = SystemTime::now();
    let fine = run(
        &cluster,
        docker_task("default", "--cap-drop NET_RAW", "echo fine"),
    )
    .await?;
    assert_eq!(fine.state, TaskState::Succeeded, "{fine:?}");
    assert_eq!(
        containers_created(&container_name(&cluster, &fine), since)?,
        1
    );
    // Taken just before each task, to the nanosecond: an earlier run of this test (whose
    // fresh cluster numbers workers and tasks alike) created containers of the same names.
    for (options, flag) in [
        (
            "--cap-add SYS_ADMIN",
            "herd worker --allow-docker-option cap-add",
        ),
        ("--pid host", "herd worker --allow-docker-option pid=host"),
        (
            "--security-opt seccomp=unconfined",
            "herd worker --allow-docker-option security-opt=unconfined",
        ),
    ] {
        let since = SystemTime::now();
        let refused = run(&cluster, docker_task("default", options, "echo ran")).await?;
        assert_refused(&refused, flag);
        assert_refused(&refused, options);
        let name = container_name(&cluster, &refused);
        assert_eq!(containers_created(&name, since)?, 0, "{options}: {name}");
    }
    Ok(())
}

/// The value of the field `name` (`CapEff`, `NoNewPrivs`, `Seccomp`) in the lines of
/// `/proc/self/status` that a task printed.
fn status_field<'a>(printed: &'a str, name: &str) -> &'a str {
    printed
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} line in {printed:?}"))
        .trim()
}

/// Whether the capability numbered `bit` (`capabilities(7)`) is in the printed `CapEff`.
fn has_effective_capability(printed: &str, bit: u32) -> bool {
    let hex = status_field(printed, "CapEff");
    let mask = u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad CapEff {hex:?}"));
    mask & (1 << bit) != 0
}

#[tokio::test]
async fn allowed_options_are_really_applied_to_the_container() -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let allowing = Policy {
        docker_options: vec![DockerOption::CapAdd, DockerOption::SecurityOptUnconfined],
        ..Policy::default()
    };
    let only_capabilities = Policy {
        docker_options: vec![DockerOption::CapAdd],
        ..Policy::default()
    };
    let _allowing = worker(&cluster, "open", allowing, false).await?;
    let _capabilities = worker(&cluster, "caps", only_capabilities, false).await?;
    let mut client = cluster.client().await?;
    let script = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status";

    // By default: docker's capabilities, herd's no-new-privileges, docker's seccomp filter.
    let plain = run(&cluster, docker_task("open", "", script)).await?;
    assert_eq!(plain.state, TaskState::Succeeded, "{plain:?}");
    let printed = task_log(&mut client, plain.id, false).await?;
    assert!(
        !has_effective_capability(&printed, CAP_NET_ADMIN),
        "{printed}"
    );
    assert_eq!(status_field(&printed, "NoNewPrivs"), "1", "{printed}");
    assert_eq!(status_field(&printed, "Seccomp"), "2", "{printed}");

    let options = "--cap-add=NET_ADMIN --security-opt no-new-privileges=false \
                   --security-opt seccomp=unconfined";
    let loosened = run(&cluster, docker_task("open", options, script)).await?;
    assert_eq!(loosened.state, TaskState::Succeeded, "{loosened:?}");
    let printed = task_log(&mut client, loosened.id, false).await?;
    assert!(
        has_effective_capability(&printed, CAP_NET_ADMIN),
        "{printed}"
    );
    assert_eq!(status_field(&printed, "NoNewPrivs"), "0", "{printed}");
    assert_eq!(status_field(&printed, "Seccomp"), "0", "{printed}");

    // Allowing capabilities does not allow dropping no-new-privileges.
    let refused = run(&cluster, docker_task("caps", options, script)).await?;
    assert_refused(
        &refused,
        "`--security-opt no-new-privileges=false` loosens the container's confinement: a \
         worker allows it with `herd worker --allow-docker-option security-opt=unconfined`",
    );
    Ok(())
}

#[tokio::test]
async fn a_bare_task_gets_none_of_the_worker_s_environment_unless_passed() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    // The in-process worker's environment is this test's: cargo sets CARGO_PKG_NAME in it.
    let worker_value = std::env::var("CARGO_PKG_NAME")?;
    let mut passing = Policy::default();
    passing.pass_env("CARGO_PKG_NAME")?;
    let _default = worker(&cluster, "strict", Policy::default(), true).await?;
    let _passing = worker(&cluster, "open", passing, true).await?;
    let script = "echo \"${CARGO_PKG_NAME-absent}\"; env";
    let mut client = cluster.client().await?;
    let strict = run(&cluster, shell_task("strict", script)).await?;
    assert_eq!(strict.state, TaskState::Succeeded, "{strict:?}");
    let printed = task_log(&mut client, strict.id, false).await?;
    assert!(printed.starts_with("absent\n"), "{printed}");
    assert!(!printed.contains(&worker_value), "{printed}");
    let open = run(&cluster, shell_task("open", script)).await?;
    let printed = task_log(&mut client, open.id, false).await?;
    assert!(
        printed.starts_with(&format!("{worker_value}\n")),
        "{printed}"
    );
    Ok(())
}

#[tokio::test]
async fn root_on_a_bare_worker_needs_allow_root() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let allowing = Policy {
        root: true,
        ..Policy::default()
    };
    let _default = worker(&cluster, "strict", Policy::default(), true).await?;
    let _allowing = worker(&cluster, "open", allowing, true).await?;
    for (uid, gid, flag) in [(Some(0), None, "`-u 0`"), (None, Some(0), "`-g 0`")] {
        let request = TaskRequest {
            uid,
            gid,
            ..shell_task("strict", "id -u")
        };
        let refused = run(&cluster, request).await?;
        assert_refused(&refused, flag);
        assert_refused(&refused, "herd worker --allow-root");
    }
    let request = TaskRequest {
        uid: Some(0),
        ..shell_task("open", "id -u")
    };
    let allowed = run(&cluster, request).await?;
    // The tests run as root (see CONTRIBUTING.md); setuid(0) would fail otherwise.
    assert_eq!(allowed.state, TaskState::Succeeded, "{allowed:?}");
    Ok(())
}

#[tokio::test]
async fn a_docker_only_worker_never_receives_a_bare_task() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await?;
    let _docker_only = worker(&cluster, "default", Policy::default(), false).await?;
    let ids = cluster
        .submit(vec![
            shell_task("default", "echo on-the-host"),
            docker_task("default", "", "echo in-a-container"),
        ])
        .await?;
    // The Docker task, queued after the bare one, runs; the bare one waits.
    let docker = finished(&cluster, ids[1]).await?;
    assert_eq!(docker.state, TaskState::Succeeded, "{docker:?}");
    let waiting = cluster.task(ids[0]).await?;
    assert_eq!(waiting.state, TaskState::Pending, "{waiting:?}");
    assert!(waiting.attempts.is_empty(), "{waiting:?}");

    let _bare = cluster.add_worker(WorkerOptions::default()).await?;
    let bare = finished(&cluster, ids[0]).await?;
    assert_eq!(bare.state, TaskState::Succeeded, "{bare:?}");
    assert_eq!(bare.attempts.len(), 1, "{bare:?}");
    Ok(())
}
