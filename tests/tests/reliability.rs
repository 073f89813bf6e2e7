//! End-to-end reliability: a task that takes its workers down stops at its crash limit, a
//! worker stopped on purpose hands its tasks back without a crash, and a broken worker is
//! quarantined while its failed tasks succeed on a healthy one.

use std::sync::Arc;
use std::time::Duration;

use herd_proto::pb;
use herd_proto::view::WorkerView;
use herd_proto::{Reason, TaskRequest, TaskState};
use herd_server::queue::QueueConfig;
use herd_tests::executors::BrokenExecutor;
use herd_tests::{Cluster, ClusterOptions, Engine, WAIT, WorkerOptions, shell_task, wait_for};
use herd_worker::Executors;

fn options(worker_timeout: Duration) -> ClusterOptions {
    ClusterOptions {
        engine: Engine::Sqlite,
        queue: QueueConfig {
            worker_timeout,
            heartbeat_interval: Duration::from_millis(200),
            ..QueueConfig::default()
        },
    }
}

fn one_slot() -> WorkerOptions {
    WorkerOptions {
        concurrency: 1,
        ..WorkerOptions::default()
    }
}

async fn workers(cluster: &Cluster) -> anyhow::Result<Vec<WorkerView>> {
    let listed = cluster
        .client()
        .await?
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    Ok(listed.into_iter().map(WorkerView::from).collect())
}

#[tokio::test]
async fn a_task_that_takes_its_workers_down_fails_at_its_crash_limit() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(options(Duration::from_secs(2))).await?;
    let mut requests = vec![shell_task("default", "sleep 600")];
    requests.extend((0..2).map(|_| shell_task("default", "true")));
    let ids = cluster.submit(requests).await?;
    let poison = ids[0];
    let mut crashed = Vec::new();
    for round in 1..=3 {
        let worker = cluster.add_worker(one_slot()).await?;
        let task = cluster
            .wait_task(poison, &format!("running, attempt {round}"), |task| {
                task.attempt == round && task.state == TaskState::Running
            })
            .await?;
        let attempt = task.attempts.last().expect("the running attempt");
        crashed.push(format!("{} ({})", attempt.worker, attempt.worker_name));
        // The worker dies with the task (what `kill -9 $PPID` does to a bare worker).
        worker.abort();
    }
    let task = cluster
        .wait_task(poison, "failed", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert_eq!(task.reason, Some(Reason::CrashLimit));
    assert_eq!(task.attempts.len(), 3);
    assert!(
        task.attempts
            .iter()
            .all(|attempt| attempt.reason == Some(Reason::WorkerLost)),
        "{task:?}"
    );
    let message = task.message.as_deref().unwrap_or_default();
    for worker in &crashed {
        assert!(message.contains(worker.as_str()), "{worker} in {message}");
    }
    // The other tasks still run, on a worker that the poison task is not given again.
    let _healthy = cluster.add_worker(one_slot()).await?;
    for id in &ids[1..] {
        let task = cluster
            .wait_task(*id, "finished", |task| task.state.is_terminal())
            .await?;
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    }
    assert_eq!(cluster.task(poison).await?.attempts.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_worker_stopped_on_purpose_hands_its_task_back_without_a_crash() -> anyhow::Result<()> {
    // A timeout longer than the wait: only the goodbye can queue the task again in time.
    let cluster = Cluster::start_with(options(Duration::from_secs(120))).await?;
    let marker = tempfile::tempdir()?;
    let script = format!(
        "if [ -e {dir}/ran ]; then exit 0; fi; touch {dir}/ran; sleep 600",
        dir = marker.path().display()
    );
    let ids = cluster
        .submit(vec![TaskRequest {
            crash_limit: Some(1),
            ..shell_task("default", &script)
        }])
        .await?;
    let stopping = cluster.add_worker(one_slot()).await?;
    cluster
        .wait_task(ids[0], "running", |task| task.state == TaskState::Running)
        .await?;
    // `running` is reported when the command starts, not when its script reached `touch`: a
    // stop before that would leave attempt 2 to sleep.
    let ran = marker.path().join("ran");
    herd_tests::wait_for("the first attempt to leave its marker", WAIT, || {
        let exists = ran.exists();
        async move { exists.then_some(()) }
    })
    .await?;
    tokio::time::timeout(WAIT, stopping.stop()).await?;
    let task = cluster
        .wait_task(ids[0], "queued again", |task| task.attempt == 2)
        .await?;
    assert_eq!(
        task.attempts[0].reason,
        Some(Reason::WorkerStopped),
        "{task:?}"
    );
    let listed = workers(&cluster).await?;
    assert_eq!(listed[0].status, "stopped", "{listed:?}");
    let _next = cluster.add_worker(one_slot()).await?;
    let task = cluster
        .wait_task(ids[0], "finished", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    Ok(())
}

#[tokio::test]
async fn a_broken_worker_is_quarantined_and_its_tasks_succeed_elsewhere() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(options(Duration::from_secs(20))).await?;
    let broken = WorkerOptions {
        executors: Some(Executors {
            bare: Some(Arc::new(BrokenExecutor)),
            docker: None,
        }),
        ..one_slot()
    };
    let _broken = cluster.add_worker(broken).await?;
    wait_for("the broken worker to connect", WAIT, || async {
        let listed = workers(&cluster).await.ok()?;
        (listed.len() == 1 && listed[0].status == "connected").then_some(())
    })
    .await?;
    let _healthy = cluster.add_worker(one_slot()).await?;
    // One retry each: a task that failed on the broken worker runs on the healthy one.
    let requests = (0..12)
        .map(|_| TaskRequest {
            retry: 1,
            ..shell_task("default", "sleep 0.1")
        })
        .collect();
    let ids = cluster.submit(requests).await?;
    let quarantined = wait_for("the broken worker to be quarantined", WAIT, || async {
        let listed = workers(&cluster).await.ok()?;
        listed
            .into_iter()
            .find(|worker| worker.status == "quarantined")
    })
    .await?;
    assert_eq!(quarantined.id, herd_proto::WorkerId(1));
    let reason = quarantined.quarantine_reason.unwrap_or_default();
    assert!(reason.contains("executor"), "{reason}");
    assert!(quarantined.quarantined_until.is_some());
    for id in &ids {
        let task = cluster
            .wait_task(*id, "finished", |task| task.state.is_terminal())
            .await?;
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
        let last = task.attempts.last().expect("an attempt");
        assert_ne!(last.worker, quarantined.id, "{task:?}");
    }
    Ok(())
}
