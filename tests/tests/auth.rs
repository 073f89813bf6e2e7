//! Authentication and ownership through the real gRPC server: every RPC of `herd.proto`
//! refuses a call without a token, with an unknown one, with a revoked one and with the wrong
//! kind; users reach only their own tasks and batches; worker tokens only open sessions; a
//! revoked worker stops. The server goes on serving after each refusal.

use std::str::FromStr;

use bytes::{Buf, BufMut};
use herd_proto::access::{Secret, TokenKind};
use herd_proto::pb;
use herd_tests::{Cluster, WAIT, WorkerOptions, shell_task, wait_for};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Every `rpc` of every `service` in the protocol file, as `/herd.v1.Service/Method` paths:
/// a new RPC is checked without anyone listing it here.
fn every_rpc() -> Vec<String> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/proto/herd.proto");
    let text = std::fs::read_to_string(file).expect("the protocol file");
    let mut service = None;
    let mut paths = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let method = rest.split('(').next().expect("a method name").trim();
            let service = service.as_deref().expect("an rpc inside a service");
            paths.push(format!("/herd.v1.{service}/{method}"));
        }
    }
    paths
}

/// Bytes as they are: a call of any method with an empty message (any protobuf message's
/// default), without knowing its types.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` with one empty message and `authorization` (raw header value, if any); the
/// status it ended with (`Ok` if it answered a first message).
async fn call(channel: Channel, path: &str, authorization: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(error) = grpc.ready().await {
        return tonic::Status::unavailable(error.to_string());
    }
    let mut request = tonic::Request::new(tokio_stream::iter(vec![Vec::new()]));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("a header value"));
    }
    let path = PathAndQuery::from_str(path).expect("a path");
    match grpc.streaming(request, path, Raw).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(_) => tonic::Status::ok("answered"),
        },
    }
}

#[tokio::test]
async fn every_rpc_refuses_a_missing_unknown_revoked_or_wrong_kind_of_token() -> anyhow::Result<()>
{
    let cluster = Cluster::start().await?;
    let rpcs = every_rpc();
    for expected in [
        "/herd.v1.Queue/Submit",
        "/herd.v1.Queue/TaskLogs",
        "/herd.v1.Access/WhoAmI",
        "/herd.v1.Access/RevokeToken",
        "/herd.v1.Workers/Session",
    ] {
        assert!(
            rpcs.iter().any(|rpc| rpc == expected),
            "{expected} in {rpcs:?}"
        );
    }
    let user = cluster.add_user("alice").await?;
    let revoked = cluster.add_user("bob").await?;
    let admin = cluster.admin_token().await?;
    let mut access = cluster.access_with(&admin).await?;
    let bob_tokens = access
        .list_tokens(pb::ListTokensRequest {
            user: Some("bob".to_owned()),
        })
        .await?
        .into_inner()
        .tokens;
    access
        .revoke_token(pb::TokenRef {
            id: bob_tokens[0].id,
        })
        .await?;
    let worker = cluster.worker_token().await?;
    let unknown = format!("Bearer herd_{}", "A".repeat(43));
    let revoked = format!("Bearer {}", revoked.expose());
    let channel = cluster.channel().await?;
    for rpc in &rpcs {
        for (what, header, code) in [
            ("no token", None, Code::Unauthenticated),
            (
                "an unknown token",
                Some(unknown.as_str()),
                Code::Unauthenticated,
            ),
            (
                "a revoked token",
                Some(revoked.as_str()),
                Code::Unauthenticated,
            ),
            (
                "not a bearer token",
                Some("Basic YWxpY2U6cHc="),
                Code::Unauthenticated,
            ),
        ] {
            let status = call(channel.clone(), rpc, header).await;
            assert_eq!(status.code(), code, "{rpc} with {what}: {status:?}");
            assert!(
                !status.message().contains("herd_AAAA"),
                "the token is not echoed: {status:?}"
            );
        }
        let wrong_kind = if rpc.starts_with("/herd.v1.Workers/") {
            format!("Bearer {}", user.expose())
        } else {
            format!("Bearer {}", worker.expose())
        };
        let status = call(channel.clone(), rpc, Some(&wrong_kind)).await;
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{rpc} with the wrong kind of token: {status:?}"
        );
    }
    // Refusals change nothing and the server goes on serving.
    let mut client = cluster.client().await?;
    let tasks = client
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "nothing was queued: {tasks:?}");
    let status = call(
        channel,
        "/herd.v1.Access/WhoAmI",
        Some(&format!("Bearer {}", admin.expose())),
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn a_user_cannot_see_change_or_read_the_logs_of_another_user_s_task() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let alice = cluster.add_user("alice").await?;
    let bob = cluster.add_user("bob").await?;
    let mut as_alice = cluster.client_with(Some(&alice)).await?;
    let mut as_bob = cluster.client_with(Some(&bob)).await?;
    let task = pb::TaskSpec::from(&herd_proto::TaskSpec::new(shell_task(
        "alices",
        "echo private",
    ))?);
    let id = as_alice
        .submit(pb::SubmitRequest {
            tasks: vec![task.clone()],
            idempotency_key: None,
        })
        .await?
        .into_inner()
        .ids[0];
    let worker = cluster
        .add_worker(WorkerOptions {
            batch: "alices".to_owned(),
            ..WorkerOptions::default()
        })
        .await?;
    cluster
        .wait_task(herd_proto::TaskId(id), "succeeded", |task| {
            task.state == herd_proto::TaskState::Succeeded
        })
        .await?;
    let reference = || pb::TaskRef { id };
    let refusals = [
        as_bob.get_task(reference()).await.map(|_| ()),
        as_bob.kill_task(reference()).await.map(|_| ()),
        as_bob.retry_task(reference()).await.map(|_| ()),
        as_bob.delete_task(reference()).await.map(|_| ()),
        as_bob
            .task_logs(pb::TaskLogsRequest {
                id,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        as_bob
            .control_batch(pb::BatchRequest {
                name: "alices".to_owned(),
                action: pb::BatchAction::Delete as i32,
            })
            .await
            .map(|_| ()),
        as_bob
            .watch_batch(pb::BatchRef {
                name: "alices".to_owned(),
            })
            .await
            .map(|_| ()),
        as_bob
            .delete_worker(pb::WorkerRef { id: 1 })
            .await
            .map(|_| ()),
        as_bob
            .submit(pb::SubmitRequest {
                tasks: vec![task],
                idempotency_key: None,
            })
            .await
            .map(|_| ()),
    ];
    for (index, refused) in refusals.into_iter().enumerate() {
        let status = refused.expect_err("another user's");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "call {index}: {status:?}"
        );
    }
    let listed = as_bob
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    assert!(listed.is_empty(), "{listed:?}");
    let batches = as_bob
        .list_batches(pb::Empty {})
        .await?
        .into_inner()
        .batches;
    assert!(batches.is_empty(), "{batches:?}");
    let workers = as_bob
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    assert!(
        workers.iter().all(|worker| worker.tasks.is_empty()),
        "workers are listed without others' tasks: {workers:?}"
    );
    // Alice still has her task, its log and its batch; the admin sees who owns it.
    let mine = as_alice.get_task(reference()).await?.into_inner();
    assert_eq!(mine.state, pb::TaskState::Succeeded as i32);
    let mut log = as_alice
        .task_logs(pb::TaskLogsRequest {
            id,
            ..Default::default()
        })
        .await?
        .into_inner();
    let chunk = log.message().await?.expect("a chunk");
    assert_eq!(chunk.data, b"private\n");
    let shown = cluster
        .client()
        .await?
        .get_task(reference())
        .await?
        .into_inner();
    assert_eq!(shown.owner, "alice");
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_worker_token_cannot_submit_and_a_revoked_worker_stops() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let token = cluster
        .create_token(None, TokenKind::Worker, Some("only"))
        .await?;
    let mut as_worker = cluster.client_with(Some(&token)).await?;
    let task = pb::TaskSpec::from(&herd_proto::TaskSpec::new(shell_task("only", "true"))?);
    let status = as_worker
        .submit(pb::SubmitRequest {
            tasks: vec![task],
            idempotency_key: None,
        })
        .await
        .expect_err("a worker token cannot submit");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("worker sessions"), "{status:?}");
    // The token serves its batch only.
    let elsewhere = cluster
        .add_worker(WorkerOptions {
            batch: "other".to_owned(),
            token: Some(token.clone()),
            ..WorkerOptions::default()
        })
        .await?;
    let error = elsewhere.stopped().await?.expect("refused");
    assert!(error.contains("serves batch `only` only"), "{error}");
    let worker = cluster
        .add_worker(WorkerOptions {
            batch: "only".to_owned(),
            token: Some(token.clone()),
            ..WorkerOptions::default()
        })
        .await?;
    let mut client = cluster.client().await?;
    wait_for("the worker to connect", WAIT, || {
        let mut client = client.clone();
        async move {
            let workers = client.list_workers(pb::Empty {}).await.ok()?.into_inner();
            workers
                .workers
                .iter()
                .any(|worker| worker.status == "connected")
                .then_some(())
        }
    })
    .await?;
    let admin = cluster.admin_token().await?;
    let mut access = cluster.access_with(&admin).await?;
    let identity = cluster
        .access_with(&token)
        .await?
        .who_am_i(pb::Empty {})
        .await
        .expect_err("a worker token calls no Access method");
    assert_eq!(identity.code(), Code::PermissionDenied);
    let tokens = access
        .list_tokens(pb::ListTokensRequest::default())
        .await?
        .into_inner()
        .tokens;
    let id = tokens
        .iter()
        .find(|listed| listed.batch.as_deref() == Some("only"))
        .expect("the worker token is listed")
        .id;
    access.revoke_token(pb::TokenRef { id }).await?;
    let error = worker
        .stopped()
        .await?
        .expect("the worker stops with a reason");
    assert!(error.contains("the server refused this worker"), "{error}");
    let listed = client
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    assert!(
        listed.iter().all(|worker| worker.status != "connected"),
        "{listed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_shown_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let secret = cluster.add_user("carol").await?;
    let admin = cluster.admin_token().await?;
    // The database and its write-ahead log, where the latest rows are.
    let mut database = std::fs::read(cluster.data_dir.path().join("herd.db"))?;
    database.extend(std::fs::read(cluster.data_dir.path().join("herd.db-wal")).unwrap_or_default());
    assert!(
        database.windows(5).any(|window| window == b"carol"),
        "the user's row is there to search"
    );
    for token in [&secret, &admin] {
        let needle = token.expose().as_bytes();
        assert!(
            !database
                .windows(needle.len())
                .any(|window| window == needle),
            "a token is in the database file"
        );
    }
    let listed = cluster
        .access_with(&admin)
        .await?
        .list_tokens(pb::ListTokensRequest::default())
        .await?
        .into_inner();
    let text = format!("{listed:?}");
    assert!(!text.contains(secret.expose()) && !text.contains(admin.expose()));
    let mode = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).map(|metadata| metadata.permissions().mode() & 0o777)
    };
    assert_eq!(
        mode(&cluster.data_dir.path().join(herd_server::ADMIN_TOKEN_FILE))?,
        0o600
    );
    assert!(Secret::new(&format!("{} ", secret.expose())).is_ok());
    Ok(())
}

#[tokio::test]
async fn a_session_cannot_take_over_a_connected_worker_s_identity() -> anyhow::Result<()> {
    use herd_proto::pb::{server_message, worker_message};
    let cluster = Cluster::start().await?;
    let worker = cluster.add_worker(WorkerOptions::default()).await?;
    let mut client = cluster.client().await?;
    let victim = wait_for("the worker to connect", WAIT, || {
        let mut client = client.clone();
        async move {
            let workers = client.list_workers(pb::Empty {}).await.ok()?.into_inner();
            workers
                .workers
                .iter()
                .find(|worker| worker.status == "connected")
                .map(|worker| worker.id)
        }
    })
    .await?;
    // A session with the same worker token names the victim's id, without its resume key.
    let mut workers = cluster.workers_client().await?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Hello(pb::Hello {
                worker_id: Some(victim),
                resume_key: Some("herd_guessed".to_owned()),
                name: "intruder".to_owned(),
                batch: "default".to_owned(),
                concurrency: 1,
                ..Default::default()
            })),
        })
        .await?;
    let mut inbound = workers
        .session(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let Some(server_message::Kind::Welcome(welcome)) =
        inbound.message().await?.and_then(|message| message.kind)
    else {
        anyhow::bail!("no welcome");
    };
    assert_ne!(
        welcome.worker_id, victim,
        "a new identity, not the victim's"
    );
    assert!(welcome.resume_key.starts_with("herd_"));
    let listed = client
        .list_workers(pb::Empty {})
        .await?
        .into_inner()
        .workers;
    let original = listed
        .iter()
        .find(|listed| listed.id == victim)
        .expect("the victim is still listed");
    assert_eq!(
        original.status, "connected",
        "the victim keeps its connection"
    );
    assert_ne!(original.name, "intruder");
    // The victim still works.
    let ids = cluster
        .submit(vec![shell_task("default", "echo still mine")])
        .await?;
    let done = cluster
        .wait_task(ids[0], "ended", |task| task.state.is_terminal())
        .await?;
    assert_eq!(done.state, herd_proto::TaskState::Succeeded);
    drop(sender);
    worker.stop().await;
    Ok(())
}
