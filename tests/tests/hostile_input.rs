//! Hostile input at the edge, through the real gRPC API: every string a client or a worker
//! sends is checked before it reaches the queue (NUL bytes, lengths, counts, numbers), a bad
//! task refuses its whole submit and queues nothing, and the server goes on serving.

use herd_proto::pb::{self, server_message, worker_message};
use herd_proto::{TaskRequest, TaskState};
use herd_tests::{Cluster, ClusterOptions, Engine, WAIT, shell_task};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A request straight on the wire: `TaskSpec::new` on the client side is skipped on purpose.
fn wire(request: TaskRequest) -> pb::TaskSpec {
    pb::TaskSpec::from(request)
}

async fn submit_raw(
    cluster: &Cluster,
    tasks: Vec<pb::TaskSpec>,
) -> Result<Vec<u64>, tonic::Status> {
    let mut client = cluster.client().await.expect("a client");
    client
        .submit(pb::SubmitRequest {
            tasks,
            idempotency_key: None,
        })
        .await
        .map(|response| response.into_inner().ids)
}

async fn task_count(cluster: &Cluster) -> anyhow::Result<usize> {
    let mut client = cluster.client().await?;
    let response = client
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner();
    Ok(response.tasks.len())
}

/// Submits `bad` after a good task in the same request: refused with `InvalidArgument`
/// whose message contains each of `words`, and nothing queued.
async fn assert_refused(cluster: &Cluster, bad: TaskRequest, words: &[&str]) -> anyhow::Result<()> {
    let good = wire(shell_task("default", "true"));
    let status = submit_raw(cluster, vec![good, wire(bad)])
        .await
        .expect_err("a bad task is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "`{word}` in {:?}",
            status.message()
        );
    }
    assert!(
        status.message().contains("nothing was queued"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains('\0'));
    assert_eq!(
        task_count(cluster).await?,
        0,
        "nothing queued after {words:?}"
    );
    Ok(())
}

async fn nul_bytes_are_refused_field_by_field_and_nothing_is_queued(
    engine: Engine,
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        engine,
        ..ClusterOptions::default()
    })
    .await?;
    let base = || shell_task("default", "true");
    let cases: Vec<(TaskRequest, &str)> = vec![
        (
            TaskRequest {
                name: Some("a\0b".into()),
                ..base()
            },
            "invalid name",
        ),
        (shell_task("default", "echo a\0b"), "invalid command"),
        (
            TaskRequest {
                inputs: vec!["/data/a\0b".into()],
                ..base()
            },
            "invalid input",
        ),
        (
            TaskRequest {
                resources: vec!["s3://b/\0".into()],
                ..base()
            },
            "invalid resource",
        ),
        (
            TaskRequest {
                output: Some("/out/\0".into()),
                ..base()
            },
            "invalid output",
        ),
        (
            TaskRequest {
                docker_image: Some("busybox".into()),
                docker_options: "--shm-size\u{0}1g".into(),
                ..base()
            },
            "invalid docker options",
        ),
        (
            TaskRequest {
                docker_image: Some("busy\0box".into()),
                ..base()
            },
            "invalid docker image",
        ),
        (shell_task("b\0", "true"), "invalid batch"),
    ];
    for (bad, field) in cases {
        assert_refused(&cluster, bad, &[field, "task 2 of 2"]).await?;
    }
    // The server still serves.
    let ids = submit_raw(&cluster, vec![wire(base())]).await?;
    assert_eq!(ids.len(), 1);
    assert_eq!(task_count(&cluster).await?, 1);
    Ok(())
}

#[tokio::test]
async fn nul_bytes_are_refused_field_by_field_and_nothing_is_queued_sqlite() -> anyhow::Result<()> {
    nul_bytes_are_refused_field_by_field_and_nothing_is_queued(Engine::Sqlite).await
}

/// PostgreSQL refuses a NUL in text at commit time: it must never get that far.
#[tokio::test]
async fn nul_bytes_are_refused_field_by_field_and_nothing_is_queued_postgres() -> anyhow::Result<()>
{
    nul_bytes_are_refused_field_by_field_and_nothing_is_queued(Engine::Postgres).await
}

#[tokio::test]
async fn oversized_fields_counts_and_numbers_are_refused_with_the_limit() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let base = || shell_task("default", "true");
    let cases: Vec<(TaskRequest, &[&str])> = vec![
        (
            TaskRequest {
                name: Some("n".repeat(257)),
                ..base()
            },
            &["invalid name", "256"],
        ),
        (
            shell_task("default", &"x".repeat((1 << 20) + 1)),
            &["invalid command", "1048576"],
        ),
        (
            TaskRequest {
                inputs: vec![format!("/{}", "a".repeat(8 << 10))],
                ..base()
            },
            &["invalid input", "8192"],
        ),
        (
            TaskRequest {
                inputs: vec!["/in".into(); 10_001],
                ..base()
            },
            &["invalid inputs", "10000"],
        ),
        (
            TaskRequest {
                resources: vec!["/r".into(); 1_001],
                ..base()
            },
            &["invalid resources", "1000"],
        ),
        (
            TaskRequest {
                docker_image: Some("busybox".into()),
                docker_options: format!("--label a={}", "x".repeat(16 << 10)),
                ..base()
            },
            &["invalid docker options", "16384"],
        ),
        (
            TaskRequest {
                uid: Some(u32::MAX),
                ..base()
            },
            &["invalid uid", "2147483647"],
        ),
        (
            TaskRequest {
                gid: Some(1 << 31),
                ..base()
            },
            &["invalid gid", "2147483647"],
        ),
        (
            TaskRequest {
                retry: 101,
                ..base()
            },
            &["invalid retry", "100"],
        ),
        (
            TaskRequest {
                run_timeout_secs: Some(31 * 24 * 3600),
                ..base()
            },
            &["invalid run timeout", "30 days"],
        ),
        (
            TaskRequest {
                download_timeout_secs: Some(u64::MAX),
                ..base()
            },
            &["invalid download timeout", "30 days"],
        ),
        (
            shell_task(&"b".repeat(129), "true"),
            &["invalid batch", "128"],
        ),
    ];
    for (bad, words) in cases {
        assert_refused(&cluster, bad, words).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_submit_of_more_than_100_000_tasks_says_to_split_the_file() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let task = wire(shell_task("default", "true"));
    let status = submit_raw(&cluster, vec![task; 100_001])
        .await
        .expect_err("too many tasks");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("split the file into parts of at most 100000 lines"),
        "{}",
        status.message()
    );
    assert_eq!(task_count(&cluster).await?, 0);
    Ok(())
}

/// Opens a worker session with `hello`; the server's first answer.
async fn open_session(
    cluster: &Cluster,
    hello: pb::Hello,
) -> anyhow::Result<(
    mpsc::Sender<pb::WorkerMessage>,
    Result<tonic::Streaming<pb::ServerMessage>, tonic::Status>,
)> {
    let mut client = cluster.workers_client().await?;
    let (sender, receiver) = mpsc::channel(16);
    sender
        .send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Hello(hello)),
        })
        .await?;
    let answer = client
        .session(ReceiverStream::new(receiver))
        .await
        .map(tonic::Response::into_inner);
    Ok((sender, answer))
}

fn hello(concurrency: u32, name: &str) -> pb::Hello {
    pb::Hello {
        name: name.to_owned(),
        batch: "default".to_owned(),
        concurrency,
        version: "test".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_worker_hello_out_of_range_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.client().await?;
    let cases = [
        (hello(0, "w"), "invalid concurrency"),
        (hello(5000, "w"), "give 1 to 4096"),
        (hello(1, "w\0"), "invalid worker name"),
        (hello(1, &"w".repeat(257)), "the limit is 256"),
        (
            pb::Hello {
                version: "v".repeat(65),
                ..hello(1, "w")
            },
            "invalid worker version",
        ),
    ];
    for (bad, words) in cases {
        let (_sender, answer) = open_session(&cluster, bad).await?;
        let status = answer.expect_err("a bad hello is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{}", status.message());
    }
    let mut client = cluster.client().await?;
    let workers = client
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    assert!(workers.is_empty(), "{workers:?}");
    Ok(())
}

#[tokio::test]
async fn bad_log_chunks_and_reports_are_ignored_and_the_session_goes_on() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let ids = cluster.submit(vec![shell_task("default", "true")]).await?;
    let (sender, answer) = open_session(&cluster, hello(1, "fake")).await?;
    let mut inbound = answer?;
    let mut next = async || -> anyhow::Result<server_message::Kind> {
        let message = tokio::time::timeout(WAIT, inbound.message()).await??;
        message
            .and_then(|message| message.kind)
            .ok_or_else(|| anyhow::anyhow!("stream ended"))
    };
    let server_message::Kind::Welcome(_) = next().await? else {
        anyhow::bail!("expected a welcome");
    };
    let server_message::Kind::Assign(assign) = next().await? else {
        anyhow::bail!("expected an assignment");
    };
    assert_eq!(assign.task_id, ids[0].0);
    let log = |stream: i32, size: usize| pb::WorkerMessage {
        kind: Some(worker_message::Kind::Log(pb::LogChunk {
            task_id: ids[0].0,
            attempt: 1,
            stream,
            data: vec![b'x'; size],
        })),
    };
    let update = |state: pb::TaskState, message: Option<String>| pb::WorkerMessage {
        kind: Some(worker_message::Kind::Update(pb::TaskUpdate {
            task_id: ids[0].0,
            attempt: 1,
            state: state.into(),
            at_ms: herd_proto::Timestamp::now().0,
            exit_code: Some(0),
            message,
            ..Default::default()
        })),
    };
    sender.send(update(pb::TaskState::Running, None)).await?;
    sender
        .send(log(pb::LogStream::Stdout as i32, (1 << 20) + 1))
        .await?;
    sender.send(log(77, 3)).await?;
    sender.send(log(pb::LogStream::Stdout as i32, 3)).await?;
    // A final report with a NUL and an oversized message is taken, its message made safe to
    // store (PostgreSQL refuses NUL in text) and cut to the limit with a marker.
    let long = format!("a\0b{}", "x".repeat(64 << 10));
    sender
        .send(update(pb::TaskState::Succeeded, Some(long)))
        .await?;
    let task = cluster
        .wait_task(ids[0], "succeeded", |task| task.state.is_terminal())
        .await?;
    assert_eq!(task.state, TaskState::Succeeded);
    let message = task.attempts[0].message.clone().unwrap_or_default();
    assert!(message.starts_with("a\u{FFFD}bxx"), "{}", &message[..20]);
    assert!(message.len() <= 64 << 10, "{}", message.len());
    assert!(message.ends_with("longer than 64 KiB]"));
    let mut client = cluster.client().await?;
    assert_eq!(
        herd_tests::task_log(&mut client, ids[0], false).await?,
        "xxx"
    );
    Ok(())
}

/// Secrets in URIs and `-e` values are never shown to users (task show and list, text and
/// JSON, messages), while the worker receives the real values in its assignment.
#[tokio::test]
async fn secrets_are_shown_redacted_and_the_worker_gets_the_real_values() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut task = shell_task("default", "echo $TOKEN > /output/token");
    task.docker_image = Some("busybox".into());
    task.docker_options = "-e TOKEN=secret-value --shm-size 1g".into();
    task.inputs = vec!["ftp://user:hunter2@host/x".into()];
    task.resources = vec!["https://h/r.tar?sv=1&sig=signed-value|untar".into()];
    let ids = cluster.submit(vec![task]).await?;
    let (sender, answer) = open_session(
        &cluster,
        pb::Hello {
            docker: true,
            ..hello(1, "fake")
        },
    )
    .await?;
    let mut inbound = answer?;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let message = tokio::time::timeout(WAIT, inbound.message()).await??;
        kinds.extend(message.and_then(|message| message.kind));
    }
    let server_message::Kind::Assign(assign) = &kinds[1] else {
        anyhow::bail!("expected an assignment, got {kinds:?}");
    };
    let given = assign.spec.as_ref().expect("a spec");
    assert_eq!(given.docker_options, "-e TOKEN=secret-value --shm-size 1g");
    assert_eq!(given.inputs, ["ftp://user:hunter2@host/x"]);
    assert_eq!(
        given.resources,
        ["https://h/r.tar?sv=1&sig=signed-value|untar"]
    );
    sender
        .send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Update(pb::TaskUpdate {
                task_id: ids[0].0,
                attempt: 1,
                state: pb::TaskState::Failed.into(),
                at_ms: herd_proto::Timestamp::now().0,
                reason: Some("input".into()),
                message: Some("cannot fetch ftp://user:hunter2@host/x: refused".into()),
                ..Default::default()
            })),
        })
        .await?;
    let view = cluster
        .wait_task(ids[0], "failed", |task| task.state.is_terminal())
        .await?;
    let mut client = cluster.client().await?;
    let listed = client
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner();
    let shown = [
        format!("{listed:?}"),
        format!("{view:?}"),
        serde_json::to_string(&view)?,
    ];
    for text in shown {
        for secret in ["secret-value", "hunter2", "signed-value"] {
            assert!(!text.contains(secret), "`{secret}` shown in {text}");
        }
    }
    let spec = view.spec;
    assert_eq!(
        spec.docker().unwrap().options_text,
        "-e TOKEN=*** --shm-size 1g"
    );
    assert_eq!(spec.inputs(), ["ftp://user:***@host/x"]);
    assert_eq!(spec.resources(), ["https://h/r.tar?sv=1&sig=***|untar"]);
    assert_eq!(
        view.attempts[0].message.as_deref(),
        Some("cannot fetch ftp://user:***@host/x: refused")
    );
    Ok(())
}

/// The data directory is `0700`; the database, its WAL files, the log folders and the log
/// files are `0600` (`0700` for folders).
#[tokio::test]
async fn the_data_directory_and_its_files_are_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start().await?;
    let _worker = cluster
        .add_worker(herd_tests::WorkerOptions::default())
        .await?;
    let ids = cluster
        .submit(vec![shell_task("default", "echo out; echo err >&2")])
        .await?;
    cluster
        .wait_task(ids[0], "succeeded", |task| {
            task.state == TaskState::Succeeded
        })
        .await?;
    let mut client = cluster.client().await?;
    assert_eq!(
        herd_tests::task_log(&mut client, ids[0], false).await?,
        "out\n"
    );
    let mode = |path: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    let data = cluster.data_dir.path();
    assert_eq!(mode(data)?, 0o700);
    assert_eq!(mode(&data.join("herd.db"))?, 0o600);
    for suffix in ["herd.db-wal", "herd.db-shm"] {
        let path = data.join(suffix);
        if path.exists() {
            assert_eq!(mode(&path)?, 0o600, "{suffix}");
        }
    }
    let logs = data.join("logs");
    assert_eq!(mode(&logs)?, 0o700);
    let logs = logs.join(format!("{:016x}", cluster.instance_id()?));
    assert_eq!(mode(&logs)?, 0o700);
    let task_logs = logs.join(ids[0].0.to_string());
    assert_eq!(mode(&task_logs)?, 0o700);
    for stream in ["1.stdout", "1.stderr"] {
        assert_eq!(mode(&task_logs.join(stream))?, 0o600, "{stream}");
    }
    Ok(())
}

/// A worker message over the session's 16 MiB limit ends that session only; the server goes
/// on serving.
#[tokio::test]
async fn a_worker_message_over_the_size_limit_ends_only_its_session() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (sender, answer) = open_session(&cluster, hello(1, "fake")).await?;
    let mut inbound = answer?;
    let welcome = tokio::time::timeout(WAIT, inbound.message()).await??;
    assert!(matches!(
        welcome.and_then(|message| message.kind),
        Some(server_message::Kind::Welcome(_))
    ));
    let limit = herd_proto::session::MAX_SESSION_MESSAGE_BYTES;
    sender
        .send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Log(pb::LogChunk {
                task_id: 1,
                attempt: 1,
                stream: pb::LogStream::Stdout as i32,
                data: vec![b'x'; limit + 1],
            })),
        })
        .await?;
    // The server drops the session: the stream ends (or fails) instead of hanging.
    while let Ok(Some(_)) = tokio::time::timeout(WAIT, inbound.message()).await? {}
    let ids = submit_raw(&cluster, vec![wire(shell_task("default", "true"))]).await?;
    assert_eq!(ids.len(), 1);
    Ok(())
}

/// A store that refuses, as a database refuses a bad statement, every commit writing a task
/// named `poison`.
struct RefusingStore {
    inner: herd_server::store::SqlStore,
}

impl herd_server::store::Store for RefusingStore {
    fn load(
        &self,
    ) -> futures::future::BoxFuture<
        '_,
        Result<herd_server::store::Snapshot, herd_server::store::StoreError>,
    > {
        self.inner.load()
    }

    fn commit<'a>(
        &'a self,
        writes: &'a herd_server::store::WriteSet,
    ) -> futures::future::BoxFuture<'a, Result<(), herd_server::store::StoreError>> {
        let poisoned = writes
            .tasks
            .iter()
            .any(|task| task.name.as_deref() == Some("poison"));
        if poisoned {
            return Box::pin(async {
                Err(herd_server::store::StoreError::Database(
                    sqlx::Error::Protocol("invalid byte sequence (test)".into()),
                ))
            });
        }
        self.inner.commit(writes)
    }

    fn describe(&self) -> String {
        "refusing test store".to_owned()
    }
}

/// A change the database refuses is refused to its caller with the database's reason, is not
/// retried forever, and the queue goes on: a good submit in the same group commit, and the
/// next one, succeed.
#[tokio::test]
async fn a_change_the_database_refuses_is_refused_to_its_caller_and_the_queue_goes_on()
-> anyhow::Result<()> {
    herd_tests::init_tracing();
    let data = tempfile::tempdir()?;
    let inner =
        herd_server::store::SqlStore::open(&format!("sqlite://{}/herd.db", data.path().display()))
            .await?;
    let store: std::sync::Arc<dyn herd_server::store::Store> =
        std::sync::Arc::new(RefusingStore { inner });
    let logs = herd_server::logs::LogStore::new(
        data.path().join("logs"),
        herd_server::logs::DEFAULT_MAX_BYTES,
    );
    let queue = herd_server::queue::Queue::open(store, logs, Default::default()).await?;
    let admin = herd_server::queue::new_secret()?;
    assert!(queue.bootstrap(&admin).await?);
    let admin = herd_proto::access::Secret::new(&admin)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(herd_server::serve(queue, listener, None, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let client = pb::queue_client::QueueClient::with_interceptor(
        channel,
        herd_proto::access::Bearer::new(&admin)?,
    );
    let named = |name: &str| {
        let mut task = shell_task("default", "true");
        task.name = Some(name.to_owned());
        pb::SubmitRequest {
            tasks: vec![wire(task)],
            idempotency_key: None,
        }
    };
    let (bad, good) = tokio::time::timeout(WAIT, async {
        let mut first = client.clone();
        let mut second = client.clone();
        tokio::join!(first.submit(named("poison")), second.submit(named("fine")))
    })
    .await?;
    let status = bad.expect_err("the refused change is refused to its caller");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains("the database refused this change")
            && status.message().contains("invalid byte sequence (test)"),
        "{}",
        status.message()
    );
    assert_eq!(good?.into_inner().ids.len(), 1);
    let mut client = client.clone();
    let later = tokio::time::timeout(WAIT, client.submit(named("later"))).await??;
    assert_eq!(later.into_inner().ids.len(), 1);
    let names = wait_for_names(&mut client, 2).await?;
    assert_eq!(
        names,
        ["fine", "later"],
        "the refused task is gone from memory"
    );
    shutdown.cancel();
    server.await??;
    let reopened =
        herd_server::store::SqlStore::open(&format!("sqlite://{}/herd.db", data.path().display()))
            .await?;
    let stored = herd_server::store::Store::load(&reopened).await?;
    let stored_names: Vec<_> = stored
        .tasks
        .iter()
        .filter_map(|task| task.name.as_deref())
        .collect();
    assert_eq!(stored_names, ["fine", "later"]);
    Ok(())
}

/// The names of the listed tasks, once there are `count` of them.
async fn wait_for_names(
    client: &mut herd_tests::Client,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    herd_tests::wait_for("the listing to settle", WAIT, || {
        let mut client = client.clone();
        async move {
            let tasks = client
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .ok()?
                .into_inner()
                .tasks;
            let names: Vec<String> = tasks
                .into_iter()
                .filter_map(|task| task.spec.and_then(|spec| spec.name))
                .collect();
            (names.len() == count).then_some(names)
        }
    })
    .await
}
