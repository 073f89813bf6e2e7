//! End-to-end behaviour of a real server and real workers, in-process, on SQLite and on
//! PostgreSQL: lifecycle, logs, outputs, retries, timeouts, kills, lost workers, stale
//! results, batches, and restarts of the server under running work.

use std::time::Duration;

use herd_proto::pb::{self, server_message, worker_message};
use herd_proto::{Reason, TaskId, TaskRequest, TaskState};
use herd_server::queue::QueueConfig;
use herd_tests::{
    Cluster, ClusterOptions, Engine, WAIT, WorkerOptions, shell_task, task_log, wait_for,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn options(engine: Engine) -> ClusterOptions {
    ClusterOptions {
        engine,
        queue: QueueConfig {
            worker_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(200),
            ..QueueConfig::default()
        },
    }
}

async fn a_task_runs_with_logs_and_output(engine: Engine) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(options(engine)).await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let output = tempfile::tempdir()?;
    let mut spec = shell_task(
        "default",
        "echo hello; echo to-stderr >&2; echo \"cpu=$CPU\" > \"$OUTPUT/result.txt\"; mkdir \"$OUTPUT/sub\"; echo x > \"$OUTPUT/sub/y\"",
    );
    spec.name = Some("first".to_owned());
    spec.output = Some(format!("{}/", output.path().display()));
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    assert_eq!(task.exit_code, Some(0));
    assert_eq!(task.name.as_deref(), Some("first"));
    assert_eq!(task.attempts.len(), 1);
    let attempt = &task.attempts[0];
    assert_eq!(attempt.number, 1);
    assert!(attempt.run_started_at.is_some() && attempt.ended_at.is_some());
    assert!(
        attempt.upload_started_at.is_some(),
        "an output URI means an upload phase"
    );
    assert!(attempt.ended_at.unwrap() >= attempt.started_at);
    let result = std::fs::read_to_string(output.path().join("result.txt"))?;
    assert!(result.starts_with("cpu="), "{result}");
    assert_eq!(std::fs::read_to_string(output.path().join("sub/y"))?, "x\n");
    let mut client = cluster.client().await?;
    assert_eq!(task_log(&mut client, ids[0], false).await?, "hello\n");
    assert_eq!(task_log(&mut client, ids[0], true).await?, "to-stderr\n");
    assert!(
        attempt
            .transfers
            .iter()
            .any(|transfer| transfer.direction == "output" && transfer.files == 2)
    );
    Ok(())
}

#[tokio::test]
async fn a_task_runs_with_logs_and_output_on_sqlite() -> anyhow::Result<()> {
    a_task_runs_with_logs_and_output(Engine::Sqlite).await
}

#[tokio::test]
async fn a_task_runs_with_logs_and_output_on_postgres() -> anyhow::Result<()> {
    a_task_runs_with_logs_and_output(Engine::Postgres).await
}

#[tokio::test]
async fn inputs_are_staged_and_the_output_is_uploaded_even_on_failure() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("reads.txt"), "a\nb\nc\n")?;
    let output = tempfile::tempdir()?;
    let mut spec = shell_task(
        "default",
        "wc -l < \"$INPUT/reads.txt\" > \"$OUTPUT/count\"; exit 4",
    );
    spec.inputs = vec![source.path().join("reads.txt").display().to_string()];
    spec.output = Some(format!("file://{}/", output.path().display()));
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.exit_code, Some(4));
    assert_eq!(task.reason, Some(Reason::ExitCode));
    assert_eq!(
        std::fs::read_to_string(output.path().join("count"))?.trim(),
        "3"
    );
    let attempt = &task.attempts[0];
    assert!(attempt.download_started_at.is_some());
    let input = attempt
        .transfers
        .iter()
        .find(|transfer| transfer.direction == "input")
        .expect("the input transfer is recorded");
    assert_eq!(input.bytes, 6);
    assert_eq!(input.items.len(), 1);
    assert_eq!(
        (input.items[0].path.as_str(), input.items[0].size),
        ("reads.txt", 6)
    );
    assert_eq!(
        input.items[0].crc64nvme,
        herd_fetch::crc64nvme(b"a\nb\nc\n").to_base64()
    );
    let output = attempt
        .transfers
        .iter()
        .find(|transfer| transfer.direction == "output")
        .expect("the output transfer is recorded");
    let paths: Vec<&str> = output.items.iter().map(|item| item.path.as_str()).collect();
    assert_eq!(paths, vec!["count"]);
    Ok(())
}

#[tokio::test]
async fn a_missing_input_fails_the_attempt_with_the_reason() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let mut spec = shell_task("default", "true");
    spec.inputs = vec!["/nonexistent/herd/input.txt".to_owned()];
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.reason, Some(Reason::Input));
    assert!(
        task.message
            .as_deref()
            .unwrap_or_default()
            .contains("/nonexistent/herd/input.txt"),
        "{task:?}"
    );
    Ok(())
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_next_attempt_number() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let mut spec = shell_task("default", "exit 3");
    spec.retry = 2;
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "failed", |task| task.state == TaskState::Failed)
        .await?;
    assert_eq!(task.attempts.len(), 3, "{task:?}");
    assert_eq!(
        task.attempts
            .iter()
            .map(|attempt| attempt.number)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        task.attempts
            .iter()
            .all(|attempt| attempt.exit_code == Some(3))
    );
    assert_eq!(task.exit_code, Some(3));

    // A manual retry runs it once more.
    let mut client = cluster.client().await?;
    client.retry_task(pb::TaskRef { id: ids[0].0 }).await?;
    let task = cluster
        .wait_task(ids[0], "failed again", |task| {
            task.attempts.len() == 4 && task.state.is_terminal()
        })
        .await?;
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.attempt, 4);
    Ok(())
}

#[tokio::test]
async fn run_timeout_kills_the_task() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let mut spec = shell_task("default", "sleep 30");
    spec.run_timeout_secs = Some(1);
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "failed", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.reason, Some(Reason::Timeout));
    let attempt = &task.attempts[0];
    let ran = attempt
        .ended_at
        .unwrap()
        .since(attempt.run_started_at.unwrap());
    assert!(
        ran >= Duration::from_millis(900) && ran < Duration::from_secs(20),
        "ran {ran:?}"
    );
    Ok(())
}

/// A cluster on SQLite with one worker of one slot.
async fn cluster_with_one_slot() -> anyhow::Result<(Cluster, herd_tests::WorkerHandle)> {
    let cluster = Cluster::start().await?;
    let worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        })
        .await?;
    Ok((cluster, worker))
}

#[tokio::test]
async fn kill_stops_a_running_task_and_frees_the_slot() -> anyhow::Result<()> {
    let (cluster, _worker) = cluster_with_one_slot().await?;
    let ids = cluster
        .submit(vec![
            shell_task("default", "sleep 60"),
            shell_task("default", "echo next"),
        ])
        .await?;
    cluster
        .wait_task(ids[0], "running", |task| task.state == TaskState::Running)
        .await?;
    assert_eq!(
        cluster.task(ids[1]).await?.state,
        TaskState::Pending,
        "one slot: the second waits"
    );
    let mut client = cluster.client().await?;
    let killed = client
        .kill_task(pb::TaskRef { id: ids[0].0 })
        .await?
        .into_inner();
    assert_eq!(killed.state, i32::from(pb::TaskState::Canceled));
    let next = cluster
        .wait_task(ids[1], "succeeded", |task| {
            task.state == TaskState::Succeeded
        })
        .await?;
    assert_eq!(next.exit_code, Some(0));
    let killed = cluster.task(ids[0]).await?;
    assert_eq!(killed.reason, Some(Reason::Killed));
    // Killing it again is refused with a clear message.
    let error = client
        .kill_task(pb::TaskRef { id: ids[0].0 })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(
        error.message().contains("nothing to kill"),
        "{}",
        error.message()
    );
    let missing = client
        .get_task(pb::TaskRef { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("task 999999 does not exist"));
    Ok(())
}

#[tokio::test]
async fn batches_pause_resume_stop_and_delete() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut client = cluster.client().await?;
    let first = cluster.submit(vec![shell_task("b1", "true")]).await?;
    client
        .control_batch(pb::BatchRequest {
            name: "b1".to_owned(),
            action: pb::BatchAction::Pause.into(),
        })
        .await?;
    let _worker = cluster
        .add_worker(WorkerOptions {
            batch: "b1".to_owned(),
            ..WorkerOptions::default()
        })
        .await?;
    let more = cluster.submit(vec![shell_task("b1", "true")]).await?;
    // Paused: nothing starts. Give the worker a moment to prove it.
    wait_for("the worker to connect", WAIT, || async {
        let workers = cluster
            .client()
            .await
            .ok()?
            .list_workers(pb::Empty {})
            .await
            .ok()?
            .into_inner()
            .workers;
        workers
            .iter()
            .any(|worker| worker.status == "connected")
            .then_some(())
    })
    .await?;
    assert_eq!(cluster.task(first[0]).await?.state, TaskState::Pending);
    client
        .control_batch(pb::BatchRequest {
            name: "b1".to_owned(),
            action: pb::BatchAction::Resume.into(),
        })
        .await?;
    for id in first.iter().chain(&more) {
        cluster
            .wait_task(*id, "succeeded", |task| task.state == TaskState::Succeeded)
            .await?;
    }
    let running = cluster
        .submit(vec![
            shell_task("b1", "sleep 60"),
            shell_task("b1", "sleep 60"),
            shell_task("b1", "sleep 60"),
        ])
        .await?;
    cluster
        .wait_task(running[0], "running", |task| {
            task.state == TaskState::Running
        })
        .await?;
    let summary = client
        .control_batch(pb::BatchRequest {
            name: "b1".to_owned(),
            action: pb::BatchAction::Stop.into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            summary.pending,
            summary.active,
            summary.canceled,
            summary.succeeded
        ),
        (0, 0, 3, 2)
    );
    for id in &running {
        let task = cluster.task(*id).await?;
        assert_eq!(
            (task.state, task.reason),
            (TaskState::Canceled, Some(Reason::BatchStopped))
        );
    }
    client
        .control_batch(pb::BatchRequest {
            name: "b1".to_owned(),
            action: pb::BatchAction::Delete.into(),
        })
        .await?;
    assert_eq!(
        client
            .get_task(pb::TaskRef { id: first[0].0 })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    let batches = client
        .list_batches(pb::Empty {})
        .await?
        .into_inner()
        .batches;
    assert!(batches.iter().all(|batch| batch.name != "b1"));
    let unknown = client
        .control_batch(pb::BatchRequest {
            name: "nope".to_owned(),
            action: pb::BatchAction::Pause.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn docker_tasks_wait_for_a_docker_worker() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _bare = cluster.add_worker(WorkerOptions::default()).await?;
    let docker_task = TaskRequest {
        docker_image: Some("herd-test-busybox:latest".into()),
        ..shell_task("default", "true")
    };
    let ids = cluster
        .submit(vec![docker_task, shell_task("default", "true")])
        .await?;
    cluster
        .wait_task(ids[1], "succeeded", |task| {
            task.state == TaskState::Succeeded
        })
        .await?;
    assert_eq!(
        cluster.task(ids[0]).await?.state,
        TaskState::Pending,
        "a bare worker never takes a docker task"
    );
    Ok(())
}

/// A hand-driven worker session, to play a worker that misbehaves.
struct FakeWorker {
    sender: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::ServerMessage>,
    worker_id: u64,
    resume_key: String,
}

impl FakeWorker {
    /// Opens a session: a new identity, or `resume`'s (the id and key of an earlier one).
    async fn connect(
        cluster: &Cluster,
        resume: Option<&FakeWorker>,
        tasks: Vec<pb::TaskUpdate>,
    ) -> anyhow::Result<FakeWorker> {
        let mut client = cluster.workers_client().await?;
        let (sender, receiver) = mpsc::channel(16);
        let hello = pb::Hello {
            worker_id: resume.map(|earlier| earlier.worker_id),
            resume_key: resume.map(|earlier| earlier.resume_key.clone()),
            name: "fake".to_owned(),
            batch: "default".to_owned(),
            concurrency: 1,
            tasks,
            ..Default::default()
        };
        sender
            .send(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            })
            .await?;
        let mut inbound = client
            .session(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let Some(server_message::Kind::Welcome(welcome)) =
            inbound.message().await?.and_then(|message| message.kind)
        else {
            anyhow::bail!("no welcome");
        };
        Ok(FakeWorker {
            sender,
            inbound,
            worker_id: welcome.worker_id,
            resume_key: welcome.resume_key,
        })
    }

    /// Sends updates as one `TaskUpdates` message.
    async fn send_updates(&self, updates: Vec<pb::TaskUpdate>) -> anyhow::Result<()> {
        self.sender
            .send(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Updates(pb::TaskUpdates { updates })),
            })
            .await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<server_message::Kind> {
        let message = tokio::time::timeout(WAIT, self.inbound.message()).await??;
        message
            .and_then(|message| message.kind)
            .ok_or_else(|| anyhow::anyhow!("stream ended"))
    }
}

fn update(
    task_id: TaskId,
    attempt: u32,
    state: pb::TaskState,
    exit_code: Option<i32>,
) -> pb::TaskUpdate {
    pb::TaskUpdate {
        task_id: task_id.0,
        attempt,
        state: state.into(),
        at_ms: herd_proto::Timestamp::now().0,
        exit_code,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_lost_worker_s_task_gets_a_new_attempt_and_its_late_result_is_rejected()
-> anyhow::Result<()> {
    let cluster = Cluster::start_with(options(Engine::Sqlite)).await?;
    let ids = cluster.submit(vec![shell_task("default", "true")]).await?;
    let mut fake = FakeWorker::connect(&cluster, None, Vec::new()).await?;
    let server_message::Kind::Assign(assign) = fake.next().await? else {
        anyhow::bail!("expected an assignment");
    };
    assert_eq!((assign.task_id, assign.attempt), (ids[0].0, 1));
    fake.sender
        .send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Update(update(
                ids[0],
                1,
                pb::TaskState::Running,
                None,
            ))),
        })
        .await?;
    cluster
        .wait_task(ids[0], "running", |task| task.state == TaskState::Running)
        .await?;
    // Silence: no heartbeat. After the 2 s timeout the task goes back to pending, attempt 2.
    let task = cluster
        .wait_task(ids[0], "requeued", |task| task.state == TaskState::Pending)
        .await?;
    assert_eq!(task.attempt, 2);
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerLost));
    let workers = cluster
        .client()
        .await?
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    assert_eq!(
        workers
            .iter()
            .find(|worker| worker.id == fake.worker_id)
            .map(|worker| worker.status.as_str()),
        Some("lost")
    );

    // The old worker comes back with a success for attempt 1: refused, and told to drop it.
    let late = update(ids[0], 1, pb::TaskState::Succeeded, Some(0));
    let mut again = FakeWorker::connect(&cluster, Some(&fake), vec![late]).await?;
    let mut saw_cancel = false;
    for _ in 0..2 {
        match again.next().await? {
            server_message::Kind::Cancel(cancel)
                if cancel.task_id == ids[0].0 && cancel.attempt == 1 =>
            {
                saw_cancel = true;
                break;
            }
            // It may be handed attempt 2 of the same task first: that is the new attempt.
            server_message::Kind::Assign(assign) => assert_eq!(assign.attempt, 2),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!(saw_cancel, "the stale result must be refused");
    let task = cluster.task(ids[0]).await?;
    assert_ne!(
        task.state,
        TaskState::Succeeded,
        "a late result of an old attempt must not count"
    );
    assert_eq!(task.attempts[0].state, TaskState::Failed);
    Ok(())
}

async fn work_survives_a_server_restart(engine: Engine) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(options(engine)).await?;
    let _worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        })
        .await?;
    let marker = tempfile::tempdir()?;
    let script = format!(
        "sleep 1.5; echo done > {}/marker; echo finished",
        marker.path().display()
    );
    let ids = cluster
        .submit(vec![
            shell_task("default", &script),
            shell_task("default", "echo second"),
        ])
        .await?;
    cluster
        .wait_task(ids[0], "running", |task| task.state == TaskState::Running)
        .await?;
    cluster.stop_server().await?;
    cluster.restart_server().await?;
    // Both tasks were acknowledged: both are there, and the running one was not killed.
    let first = cluster
        .wait_task(ids[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(first.state, TaskState::Succeeded, "{first:?}");
    assert_eq!(
        first.attempts.len(),
        1,
        "the running attempt went on through the restart"
    );
    assert_eq!(
        std::fs::read_to_string(marker.path().join("marker"))?,
        "done\n"
    );
    let second = cluster
        .wait_task(ids[1], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(second.state, TaskState::Succeeded);
    let mut client = cluster.client().await?;
    assert_eq!(task_log(&mut client, ids[1], false).await?, "second\n");
    Ok(())
}

// A kill -9 of a real server process is tested with the binary: launch/tests/cli.rs,
// `a_server_killed_mid_run_loses_nothing_it_acknowledged`.
#[tokio::test]
async fn work_survives_a_server_restart_on_sqlite() -> anyhow::Result<()> {
    work_survives_a_server_restart(Engine::Sqlite).await
}

#[tokio::test]
async fn work_survives_a_server_restart_on_postgres() -> anyhow::Result<()> {
    work_survives_a_server_restart(Engine::Postgres).await
}

#[tokio::test]
async fn a_deleted_worker_is_told_to_stop_and_its_tasks_requeued() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let ids = cluster
        .submit(vec![shell_task("default", "sleep 60")])
        .await?;
    let mut fake = FakeWorker::connect(&cluster, None, Vec::new()).await?;
    let server_message::Kind::Assign(_) = fake.next().await? else {
        anyhow::bail!("expected an assignment");
    };
    let mut client = cluster.client().await?;
    client
        .delete_worker(pb::WorkerRef { id: fake.worker_id })
        .await?;
    let mut saw_shutdown = false;
    for _ in 0..3 {
        if let server_message::Kind::Shutdown(_) = fake.next().await? {
            saw_shutdown = true;
            break;
        }
    }
    assert!(saw_shutdown);
    let task = cluster.task(ids[0]).await?;
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert!(
        client
            .list_workers(pb::Empty {})
            .await?
            .into_inner()
            .workers
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn a_docker_task_writes_its_output_through_a_real_engine() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let worker_options = WorkerOptions::default();
    let executors = herd_tests::bare_and_docker_executors().await?;
    let _worker = cluster
        .add_worker(WorkerOptions {
            executors: Some(executors),
            ..worker_options
        })
        .await?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("reads.txt"), "r1\nr2\n")?;
    let output = tempfile::tempdir()?;
    let mut spec = TaskRequest {
        docker_image: Some("herd-test-busybox:latest".into()),
        docker_options: "-e GREETING=hi".into(),
        ..shell_task(
            "default",
            "wc -l < /input/reads.txt > /output/count; echo \"cpu=$CPU threads=$THREADS mem=$MEM greeting=$GREETING\" > /output/env; echo in-container",
        )
    };
    spec.inputs = vec![source.path().join("reads.txt").display().to_string()];
    spec.output = Some(format!("{}/", output.path().display()));
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    assert_eq!(
        std::fs::read_to_string(output.path().join("count"))?.trim(),
        "2"
    );
    let env = std::fs::read_to_string(output.path().join("env"))?;
    assert!(
        env.contains("greeting=hi") && env.contains("cpu=") && !env.contains("cpu= "),
        "{env}"
    );
    let mut client = cluster.client().await?;
    assert_eq!(
        task_log(&mut client, ids[0], false).await?,
        "in-container\n"
    );
    Ok(())
}

/// A cluster whose fake workers are not declared lost while a test takes its time.
fn patient() -> ClusterOptions {
    ClusterOptions {
        engine: Engine::Sqlite,
        queue: QueueConfig {
            worker_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(1),
            ..QueueConfig::default()
        },
    }
}

/// Runs the first of `tasks` queued tasks on a fake worker with one slot, its attempt having
/// held the slot `slot_ms`, and returns the assignments that follow its acknowledgement.
async fn assignments_after_one_attempt_of(slot_ms: i64, tasks: usize) -> anyhow::Result<usize> {
    let cluster = Cluster::start_with(patient()).await?;
    let ids = cluster
        .submit((0..tasks).map(|_| shell_task("default", "true")).collect())
        .await?;
    let mut fake = FakeWorker::connect(&cluster, None, Vec::new()).await?;
    let server_message::Kind::Assign(first) = fake.next().await? else {
        anyhow::bail!("expected an assignment");
    };
    assert_eq!(first.task_id, ids[0].0);
    // That nothing more comes before an attempt of the batch ended is checked without a
    // timing window by the state machine's unit tests (herd-server, `queue::state::tests`).

    let ended = herd_proto::Timestamp::now().0;
    let mut running = update(ids[0], 1, pb::TaskState::Running, None);
    running.at_ms = ended - slot_ms;
    let mut succeeded = update(ids[0], 1, pb::TaskState::Succeeded, Some(0));
    succeeded.at_ms = ended;
    fake.send_updates(vec![running, succeeded]).await?;
    let mut acknowledged = false;
    let mut assigned = 0;
    loop {
        // The acknowledgement waits for a commit (slow on a loaded machine); the assignments
        // that follow it come at once.
        let patience = if acknowledged {
            Duration::from_millis(500)
        } else {
            WAIT
        };
        match tokio::time::timeout(patience, fake.inbound.message()).await {
            Err(_elapsed) => break,
            Ok(message) => match message?.and_then(|message| message.kind) {
                Some(server_message::Kind::Ack(ack)) => {
                    assert_eq!((ack.task_id, ack.attempt), (ids[0].0, 1));
                    acknowledged = true;
                }
                Some(server_message::Kind::Assign(_)) => assigned += 1,
                other => anyhow::bail!("unexpected {other:?}"),
            },
        }
    }
    assert!(acknowledged, "the final report must be acknowledged");
    let task = cluster.task(ids[0]).await?;
    assert_eq!(task.state, TaskState::Succeeded);
    assert!(task.attempts[0].run_started_at.is_some());
    Ok(assigned)
}

#[tokio::test]
async fn short_tasks_are_pipelined_to_a_worker_beyond_its_slots() -> anyhow::Result<()> {
    // A task that took 2 ms: its slot, plus 32 queued (the cap; 100 ms would be 50 tasks).
    assert_eq!(assignments_after_one_attempt_of(2, 60).await?, 33);
    Ok(())
}

// That long tasks are not pipelined, and that every worker's free slots are filled before
// any pipeline, are the state machine's unit tests (herd-server, `queue::state::tests`): here
// they could only be checked by waiting for nothing to come.

#[tokio::test]
async fn a_started_phase_is_written_soon_without_another_change() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(patient()).await?;
    let ids = cluster.submit(vec![shell_task("default", "true")]).await?;
    let mut fake = FakeWorker::connect(&cluster, None, Vec::new()).await?;
    let server_message::Kind::Assign(_) = fake.next().await? else {
        anyhow::bail!("expected an assignment");
    };
    fake.send_updates(vec![update(ids[0], 1, pb::TaskState::Running, None)])
        .await?;
    // Nothing else happens: the lazy change is committed on its own, a few ms later.
    let database = format!(
        "sqlite://{}",
        cluster.data_dir.path().join("herd.db").display()
    );
    let store = herd_server::store::SqlStore::open(&database).await?;
    let id = ids[0].0 as i64;
    wait_for("the running state in the database", WAIT, || {
        let store = &store;
        async move {
            let snapshot = herd_server::store::Store::load(store).await.ok()?;
            let task = snapshot.tasks.iter().find(|task| task.id == id)?;
            let attempt = snapshot
                .attempts
                .iter()
                .find(|attempt| attempt.task_id == id)?;
            (task.state == "running" && attempt.run_started_at.is_some()).then_some(())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_worker_starts_no_pipelined_task_before_a_slot_frees() -> anyhow::Result<()> {
    let (cluster, _worker) = cluster_with_one_slot().await?;
    // A quick task first: the batch's tasks look short, so the next ones are pipelined.
    let first = cluster.submit(vec![shell_task("default", "true")]).await?;
    cluster
        .wait_task(first[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("in.txt"), "x")?;
    let specs = (0..4)
        .map(|_| {
            let mut spec = shell_task("default", "sleep 0.2");
            spec.inputs = vec![source.path().join("in.txt").display().to_string()];
            spec
        })
        .collect();
    let ids = cluster.submit(specs).await?;
    let client = cluster.client().await?;
    let most_under_way = std::cell::Cell::new(0);
    let most_held = std::cell::Cell::new(0);
    let (most_under_way_ref, most_held_ref) = (&most_under_way, &most_held);
    wait_for("every pipelined task to succeed", WAIT, || {
        let mut client = client.clone();
        let ids = &ids;
        async move {
            let listed = client.list_tasks(pb::ListTasksRequest::default()).await;
            let tasks = match listed {
                Ok(response) => response.into_inner().tasks,
                Err(status) => return Some(Err(anyhow::Error::from(status))),
            };
            let count = |states: &[pb::TaskState]| {
                tasks
                    .iter()
                    .filter(|task| ids.iter().any(|id| id.0 == task.id))
                    .filter(|task| states.iter().any(|state| *state as i32 == task.state))
                    .count()
            };
            use pb::TaskState::{Assigned, Canceled, Downloading, Failed, Running, Succeeded};
            most_under_way_ref.set(most_under_way_ref.get().max(count(&[Downloading, Running])));
            most_held_ref.set(
                most_held_ref
                    .get()
                    .max(count(&[Assigned, Downloading, Running])),
            );
            if count(&[Failed, Canceled]) > 0 {
                return Some(Err(anyhow::anyhow!("a task failed: {tasks:?}")));
            }
            (count(&[Succeeded]) == ids.len()).then_some(Ok(()))
        }
    })
    .await??;
    let (most_under_way, most_held) = (most_under_way.get(), most_held.get());
    assert!(most_held > 1, "the tasks were pipelined to the worker");
    assert_eq!(
        most_under_way, 1,
        "one slot: one task staged or running at a time"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_cut_off_past_the_timeout_stops_its_attempt_and_uploads_nothing()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(options(Engine::Sqlite)).await?;
    let _worker = cluster
        .add_worker(WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        })
        .await?;
    let scratch = tempfile::tempdir()?;
    let output = tempfile::tempdir()?;
    let (pid_file, marker, gate) = (
        scratch.path().join("pid"),
        scratch.path().join("marker"),
        scratch.path().join("gate"),
    );
    // The first attempt writes its output and then waits for a gate the test opens only once
    // that attempt was fenced; the second writes its own output at once.
    let script = format!(
        "if [ -e {marker} ]; then echo new > \"$OUTPUT/result.txt\"; exit 0; fi; \
         touch {marker}; echo $$ > {pid}; echo old > \"$OUTPUT/old.txt\"; \
         while [ ! -e {gate} ]; do sleep 0.05; done; echo old > \"$OUTPUT/result.txt\"",
        marker = marker.display(),
        pid = pid_file.display(),
        gate = gate.display(),
    );
    let mut spec = shell_task("default", &script);
    spec.output = Some(format!("file://{}/", output.path().display()));
    let ids = cluster.submit(vec![spec]).await?;
    cluster
        .wait_task(ids[0], "running", |task| task.state == TaskState::Running)
        .await?;
    let pid = wait_for("the first attempt to write its pid", WAIT, || async {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        text.trim().parse::<u32>().ok()
    })
    .await?;

    // Cut off past --worker-timeout (2 s): the worker stops the attempt by itself.
    cluster.stop_server().await?;
    let process = std::path::PathBuf::from(format!("/proc/{pid}"));
    wait_for("the cut-off worker to stop its attempt", WAIT, || async {
        (!process.exists()).then_some(())
    })
    .await?;
    std::fs::write(&gate, b"")?;
    cluster.restart_server().await?;

    let task = cluster
        .wait_task(ids[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    assert_eq!(task.attempts.len(), 2, "{task:?}");
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerLost));
    assert_eq!(
        std::fs::read_to_string(output.path().join("result.txt"))?,
        "new\n"
    );
    assert!(
        !output.path().join("old.txt").exists(),
        "the fenced attempt's output must not be uploaded"
    );
    Ok(())
}

#[tokio::test]
async fn a_log_past_the_cap_keeps_the_cap_and_a_marker_and_the_server_keeps_serving()
-> anyhow::Result<()> {
    let cap = 64 * 1024;
    let cluster = Cluster::start_with(ClusterOptions {
        queue: QueueConfig {
            max_log_bytes: cap,
            ..QueueConfig::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let _worker = cluster.add_worker(WorkerOptions::default()).await?;
    let ids = cluster
        .submit(vec![shell_task("default", "yes | head -c 5000000")])
        .await?;
    let task = cluster
        .wait_task(ids[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let message = task.attempts[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("log truncated at 64 KiB") && message.contains("of stdout dropped"),
        "{message}"
    );
    let mut client = cluster.client().await?;
    let log = task_log(&mut client, ids[0], false).await?;
    let marker = herd_server::logs::truncation_marker(cap, herd_proto::session::LogStream::Stdout);
    assert_eq!(log.len() as u64, cap + marker.len() as u64);
    assert!(log.ends_with(&marker), "{}", &log[log.len() - 200..]);
    // The server still serves: another task runs and logs.
    let next = cluster
        .submit(vec![shell_task("default", "echo after")])
        .await?;
    cluster
        .wait_task(next[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task_log(&mut client, next[0], false).await?, "after\n");
    Ok(())
}

#[tokio::test]
async fn a_failed_docker_attempt_s_root_owned_files_are_cleaned_after_keep_failed()
-> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let executors = herd_tests::bare_and_docker_executors().await?;
    let worker = cluster
        .add_worker(WorkerOptions {
            executors: Some(executors),
            keep_failed: Duration::from_secs(2),
            ..WorkerOptions::default()
        })
        .await?;
    // As root in the container: a read-only folder in /output and a file in /tmp.
    let spec = TaskRequest {
        docker_image: Some("herd-test-busybox:latest".into()),
        ..shell_task(
            "default",
            "mkdir -p /output/d /tmp/t; echo x > /output/d/f; echo y > /tmp/t/g; \
             chmod 500 /output/d /tmp/t; exit 3",
        )
    };
    let ids = cluster.submit(vec![spec]).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert_eq!(task.exit_code, Some(3));
    // `i<the server's instance>-<task>-1`.
    let suffix = format!("-{}-1", ids[0]);
    let folder = std::fs::read_dir(worker.work_dir.join("tasks"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('i') && name.ends_with(&suffix))
        })
        .ok_or_else(|| anyhow::anyhow!("the failed attempt's folder is not there"))?;
    assert!(
        folder.join("output/d/f").exists(),
        "kept for inspection at first"
    );
    wait_for(
        "the failed attempt's folder to be removed past --keep-failed 2s",
        WAIT,
        || async { (!folder.exists()).then_some(()) },
    )
    .await?;
    Ok(())
}
