//! Hostile files in an attempt's folders, through real workers (bare, and Docker on the real
//! engine with `herd-test-busybox:latest`): `/output` uploads never leave `/output` (symbolic
//! links, fifos, sockets and devices are left out, and hard links too in Docker tasks, each
//! named in the task's stderr log), and nothing leaks to the destination.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use herd_proto::{TaskId, TaskRequest, TaskState};
use herd_tests::{Cluster, WorkerHandle, WorkerOptions, shell_task, task_log};

const IMAGE: &str = "herd-test-busybox:latest";
const MARKER: &str = "marker-host-secret-6c1d";

/// A worker with the bare and the Docker executors.
async fn docker_worker(cluster: &Cluster) -> anyhow::Result<WorkerHandle> {
    let executors = herd_tests::bare_and_docker_executors().await?;
    cluster
        .add_worker(WorkerOptions {
            executors: Some(executors),
            ..WorkerOptions::default()
        })
        .await
}

/// A folder on the host holding a file with [`MARKER`]: what a task must not exfiltrate.
fn host_secret() -> anyhow::Result<tempfile::TempDir> {
    let secret = tempfile::tempdir()?;
    std::fs::write(secret.path().join("secret"), MARKER)?;
    Ok(secret)
}

/// Every path (files, folders, links) under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Asserts that nothing under `root` holds [`MARKER`].
fn assert_no_marker(root: &Path) {
    for relative in tree(root) {
        let path = root.join(&relative);
        if path.is_file() {
            let content = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&content).contains(MARKER),
                "{relative} leaked the host secret"
            );
        }
    }
}

/// Runs `spec` with `-o` to a fresh local folder; returns the task's end, its stderr log and
/// the folder.
async fn run_with_output(
    cluster: &Cluster,
    mut spec: TaskRequest,
) -> anyhow::Result<(TaskId, String, tempfile::TempDir)> {
    let output = tempfile::tempdir()?;
    spec.output = Some(format!("{}/", output.path().display()));
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let mut client = cluster.client().await?;
    let stderr = task_log(&mut client, ids[0], true).await?;
    Ok((ids[0], stderr, output))
}

/// One cluster for every Docker task of this file: containers are named by worker, task and
/// attempt, so two clusters of one process would share names (and replace each other's).
#[tokio::test]
async fn docker_tasks_cannot_upload_host_files_through_links() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _worker = docker_worker(&cluster).await?;
    a_docker_task_cannot_upload_a_host_file_through_a_symbolic_link(&cluster).await?;
    a_docker_task_s_hard_links_and_fifos_are_left_out(&cluster).await
}

async fn a_docker_task_cannot_upload_a_host_file_through_a_symbolic_link(
    cluster: &Cluster,
) -> anyhow::Result<()> {
    let secret = host_secret()?;
    let script = format!(
        "ln -s {} /output/x && ln -s {} /output/folder && echo kept > /output/kept",
        secret.path().join("secret").display(),
        secret.path().display()
    );
    let spec = TaskRequest {
        docker_image: Some(IMAGE.into()),
        ..shell_task("default", &script)
    };
    let (_, stderr, output) = run_with_output(cluster, spec).await?;
    assert_eq!(tree(output.path()), ["kept"]);
    assert_no_marker(output.path());
    assert_eq!(
        stderr,
        "herd: /output/folder is a symbolic link: not uploaded\n\
         herd: /output/x is a symbolic link: not uploaded\n"
    );
    Ok(())
}

/// A container can hard-link, into `/output`, a host file it can read on the same file
/// system: files with more than one name are left out.
async fn a_docker_task_s_hard_links_and_fifos_are_left_out(
    cluster: &Cluster,
) -> anyhow::Result<()> {
    let spec = TaskRequest {
        docker_image: Some(IMAGE.into()),
        ..shell_task(
            "default",
            "echo twice > /output/a && ln /output/a /output/b && mkfifo /output/fifo \
             && echo kept > /output/kept",
        )
    };
    let (_, stderr, output) = run_with_output(cluster, spec).await?;
    assert_eq!(
        tree(output.path()),
        ["kept"],
        "the fifo did not hang the upload"
    );
    assert_eq!(
        stderr,
        "herd: /output/a is a hard link (more than one name): not uploaded\n\
         herd: /output/b is a hard link (more than one name): not uploaded\n\
         herd: /output/fifo is a fifo, a socket or a device: not uploaded\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_bare_task_cannot_upload_through_a_linked_folder_or_a_linked_output() -> anyhow::Result<()>
{
    let cluster = Cluster::start().await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let secret = host_secret()?;
    let script = format!(
        "mkdir \"$OUTPUT/sub\" && echo kept > \"$OUTPUT/sub/kept\" && ln -s {} \"$OUTPUT/sub/linked\"",
        secret.path().display()
    );
    let (_, stderr, output) = run_with_output(&cluster, shell_task("default", &script)).await?;
    assert_eq!(tree(output.path()), ["sub", "sub/kept"]);
    assert_no_marker(output.path());
    assert_eq!(
        stderr,
        "herd: /output/sub/linked is a symbolic link: not uploaded\n"
    );

    // `/output` itself swapped for a link to the host folder: nothing is uploaded.
    let script = format!(
        "rmdir \"$OUTPUT\" && ln -s {} \"$OUTPUT\"",
        secret.path().display()
    );
    let (_, stderr, output) = run_with_output(&cluster, shell_task("default", &script)).await?;
    assert!(tree(output.path()).is_empty());
    assert_eq!(stderr, "herd: /output is a symbolic link: not uploaded\n");
    Ok(())
}

/// The SHA-256 of `text`, lowercase hex, by the system's `sha256sum`.
fn sha256_hex(text: &str) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

/// The cache folders (not their manifests) of a worker.
fn cache_folders(worker: &WorkerHandle) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(worker.work_dir.join("resources"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_bare_task_that_alters_a_cached_resource_poisons_no_later_task() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        })
        .await?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("db.txt"), "original\n")?;
    let resource = source.path().join("db.txt").display().to_string();
    let with_resource = |script: &str| TaskRequest {
        resources: vec![resource.clone()],
        ..shell_task("default", script)
    };

    // As root, the mode is no obstacle: the task writes through its hard link to the cache.
    let (first, _, _) = run_with_output(
        &cluster,
        with_resource(
            "chmod 644 \"$RESOURCE/db.txt\"; echo poisoned > \"$RESOURCE/db.txt\"; \
             cat \"$RESOURCE/db.txt\" > \"$OUTPUT/seen\"",
        ),
    )
    .await?;
    let (second, _, output) = run_with_output(
        &cluster,
        with_resource("cat \"$RESOURCE/db.txt\" > \"$OUTPUT/seen\""),
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(output.path().join("seen"))?,
        "original\n"
    );
    let fetched = |task: herd_proto::view::TaskView| {
        task.attempts[0]
            .transfers
            .iter()
            .any(|transfer| transfer.direction == "resource")
    };
    assert!(
        fetched(cluster.task(first).await?),
        "the first task fetched"
    );
    assert!(
        fetched(cluster.task(second).await?),
        "the altered entry was discarded and fetched again"
    );

    // Untouched, it is served from the cache: no new download.
    let (third, _, output) = run_with_output(
        &cluster,
        with_resource("cat \"$RESOURCE/db.txt\" > \"$OUTPUT/seen\""),
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(output.path().join("seen"))?,
        "original\n"
    );
    assert!(
        !fetched(cluster.task(third).await?),
        "served from the cache"
    );

    // Another URI text, another folder: each named by the SHA-256 of its URI text.
    std::fs::write(source.path().join("other.txt"), "other\n")?;
    let other = source.path().join("other.txt").display().to_string();
    let spec = TaskRequest {
        resources: vec![other.clone()],
        ..shell_task("default", "true")
    };
    run_with_output(&cluster, spec).await?;
    let mut expected = vec![
        sha256_hex(&herd_fetch::Uri::parse(&resource)?.to_string()),
        sha256_hex(&herd_fetch::Uri::parse(&other)?.to_string()),
    ];
    expected.sort();
    assert_eq!(cache_folders(&worker), expected);
    Ok(())
}

#[tokio::test]
async fn attempt_folders_are_private_and_belong_to_the_task_s_user() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let worker = cluster.add_worker(WorkerOptions::default()).await?;
    let report = "stat -c '%a %u %g' \"$OUTPUT\" \"$(dirname \"$OUTPUT\")\" > \"$OUTPUT/modes\"";
    let spec = TaskRequest {
        uid: Some(65534),
        gid: Some(65534),
        ..shell_task("default", report)
    };
    let (_, _, output) = run_with_output(&cluster, spec).await?;
    assert_eq!(
        std::fs::read_to_string(output.path().join("modes"))?,
        "700 65534 65534\n700 65534 65534\n"
    );
    // The next attempt in the reused folder, without -u: the worker's again.
    let (_, _, output) = run_with_output(&cluster, shell_task("default", report)).await?;
    let tasks = std::fs::metadata(worker.work_dir.join("tasks"))?;
    let line = format!("700 {} {}\n", tasks.uid(), tasks.gid());
    assert_eq!(
        std::fs::read_to_string(output.path().join("modes"))?,
        line.repeat(2)
    );
    Ok(())
}
