//! The CLI's one door to a herd server: every command goes through [`Connection`], with domain
//! types in and out (protobuf stays in this module), and the one mapping from gRPC statuses to
//! CLI errors ([`status_error`]).

use std::time::Duration;

use anyhow::Context;
use herd_proto::access::{
    Bearer, Identity, NewToken, Secret, TokenInfo, TokenRequest, UserInfo, UserName,
};
use herd_proto::pb::access_client::AccessClient;
use herd_proto::pb::queue_client::QueueClient;
use herd_proto::request::{BatchAction, IdempotencyKey, LogRequest, TaskFilter};
use herd_proto::session::LogChunk;
use herd_proto::transport::{self, ClientTls, Failure};
use herd_proto::view::{BatchView, TaskView, WorkerView};
use herd_proto::{BatchName, TaskId, TaskSpec, WorkerId, pb};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::exit;

/// The largest message sent or accepted: `herd launch --file` sends every task in one request.
/// The server accepts the same size.
pub const MAX_MESSAGE_BYTES: usize = herd_server::MAX_MESSAGE_BYTES;

/// How long to wait for the TCP connection before declaring the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a herd server's `Queue` service. Every call returns domain types; a failed
/// call is an error classified for the CLI's exit code ([`status_error`]).
#[derive(Clone)]
pub struct Connection {
    queue: QueueClient<InterceptedService<Channel, Bearer>>,
    access: AccessClient<InterceptedService<Channel, Bearer>>,
    server: String,
    tls: ClientTls,
}

/// A stream of items from the server (log chunks, batch summaries), decoded as they come.
pub struct Items<M, T> {
    stream: Streaming<M>,
    server: String,
    tls: ClientTls,
    decode: fn(M) -> anyhow::Result<T>,
}

impl<M, T> Items<M, T> {
    /// The next item; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<anyhow::Result<T>> {
        match self.stream.message().await {
            Ok(Some(message)) => Some((self.decode)(message)),
            Ok(None) => None,
            Err(status) => Some(Err(status_error(status, &self.server, &self.tls))),
        }
    }
}

impl Connection {
    /// The server's URL, as normalized (for messages).
    pub fn server(&self) -> &str {
        &self.server
    }

    fn error(&self, status: Status) -> anyhow::Error {
        status_error(status, &self.server, &self.tls)
    }

    /// Queues `specs` atomically; their ids, in order.
    pub async fn submit(
        &mut self,
        specs: &[TaskSpec],
        key: Option<&IdempotencyKey>,
    ) -> anyhow::Result<Vec<TaskId>> {
        let request = pb::SubmitRequest {
            tasks: specs.iter().map(pb::TaskSpec::from).collect(),
            idempotency_key: key.map(|key| key.as_str().to_owned()),
        };
        let reply = self.queue.submit(request).await;
        let ids = reply.map_err(|status| self.error(status))?.into_inner().ids;
        if ids.len() != specs.len() {
            anyhow::bail!(
                "the server returned {} ids for {} tasks; check `herd task list` before launching again",
                ids.len(),
                specs.len()
            );
        }
        Ok(ids.into_iter().map(TaskId).collect())
    }

    /// One task with its attempts.
    pub async fn task(&mut self, id: TaskId) -> anyhow::Result<TaskView> {
        let reply = self.queue.get_task(pb::TaskRef { id: id.0 }).await;
        task_view(reply.map_err(|status| self.error(status))?.into_inner())
    }

    /// Tasks, oldest first.
    pub async fn tasks(&mut self, filter: &TaskFilter) -> anyhow::Result<Vec<TaskView>> {
        let reply = self
            .queue
            .list_tasks(pb::ListTasksRequest::from(filter))
            .await;
        reply
            .map_err(|status| self.error(status))?
            .into_inner()
            .tasks
            .into_iter()
            .map(task_view)
            .collect()
    }

    /// Kills a task; the task as it is then.
    pub async fn kill(&mut self, id: TaskId) -> anyhow::Result<TaskView> {
        let reply = self.queue.kill_task(pb::TaskRef { id: id.0 }).await;
        task_view(reply.map_err(|status| self.error(status))?.into_inner())
    }

    /// Queues a finished task again; the task as it is then.
    pub async fn retry(&mut self, id: TaskId) -> anyhow::Result<TaskView> {
        let reply = self.queue.retry_task(pb::TaskRef { id: id.0 }).await;
        task_view(reply.map_err(|status| self.error(status))?.into_inner())
    }

    /// Deletes a task and its logs.
    pub async fn delete_task(&mut self, id: TaskId) -> anyhow::Result<()> {
        let reply = self.queue.delete_task(pb::TaskRef { id: id.0 }).await;
        reply.map_err(|status| self.error(status))?;
        Ok(())
    }

    /// What an attempt printed, in chunks; with `follow`, until the attempt ends.
    pub async fn logs(
        &mut self,
        request: &LogRequest,
    ) -> anyhow::Result<Items<pb::LogChunk, LogChunk>> {
        let reply = self
            .queue
            .task_logs(pb::TaskLogsRequest::from(request))
            .await;
        Ok(Items {
            stream: reply.map_err(|status| self.error(status))?.into_inner(),
            server: self.server.clone(),
            tls: self.tls.clone(),
            decode: |chunk| {
                LogChunk::try_from(chunk).context("the server sent an unreadable log chunk")
            },
        })
    }

    /// Every batch with its counts.
    pub async fn batches(&mut self) -> anyhow::Result<Vec<BatchView>> {
        let reply = self.queue.list_batches(pb::Empty {}).await;
        let batches = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(batches.batches.into_iter().map(BatchView::from).collect())
    }

    /// Pauses, resumes, stops or deletes a batch; the batch as it is then.
    pub async fn control_batch(
        &mut self,
        name: &BatchName,
        action: BatchAction,
    ) -> anyhow::Result<BatchView> {
        let request = pb::BatchRequest {
            name: name.to_string(),
            action: pb::BatchAction::from(action).into(),
        };
        let reply = self.queue.control_batch(request).await;
        Ok(BatchView::from(
            reply.map_err(|status| self.error(status))?.into_inner(),
        ))
    }

    /// A batch's counts now and at every change.
    pub async fn watch_batch(
        &mut self,
        name: &BatchName,
    ) -> anyhow::Result<Items<pb::BatchSummary, BatchView>> {
        let request = pb::BatchRef {
            name: name.to_string(),
        };
        let reply = self.queue.watch_batch(request).await;
        Ok(Items {
            stream: reply.map_err(|status| self.error(status))?.into_inner(),
            server: self.server.clone(),
            tls: self.tls.clone(),
            decode: |summary| Ok(BatchView::from(summary)),
        })
    }

    /// Every worker the server knows.
    pub async fn workers(&mut self) -> anyhow::Result<Vec<WorkerView>> {
        let reply = self.queue.list_workers(pb::Empty {}).await;
        let workers = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(workers.workers.into_iter().map(WorkerView::from).collect())
    }

    /// Forgets a worker; its tasks get a new attempt.
    pub async fn delete_worker(&mut self, id: WorkerId) -> anyhow::Result<()> {
        let reply = self.queue.delete_worker(pb::WorkerRef { id: id.0 }).await;
        reply.map_err(|status| self.error(status))?;
        Ok(())
    }

    // ---- users and tokens ----

    /// Who the token belongs to.
    pub async fn who_am_i(&mut self) -> anyhow::Result<Identity> {
        let reply = self.access.who_am_i(pb::Empty {}).await;
        let identity = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(Identity::try_from(identity)?)
    }

    /// Adds a user; their first token.
    pub async fn add_user(&mut self, name: &UserName, admin: bool) -> anyhow::Result<NewToken> {
        let request = pb::AddUserRequest {
            name: name.to_string(),
            admin,
        };
        let reply = self.access.add_user(request).await;
        let token = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(NewToken::try_from(token)?)
    }

    /// Every user.
    pub async fn users(&mut self) -> anyhow::Result<Vec<UserInfo>> {
        let reply = self.access.list_users(pb::Empty {}).await;
        let users = reply
            .map_err(|status| self.error(status))?
            .into_inner()
            .users;
        Ok(users
            .into_iter()
            .map(UserInfo::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Makes a token.
    pub async fn create_token(&mut self, request: &TokenRequest) -> anyhow::Result<NewToken> {
        let reply = self
            .access
            .create_token(pb::CreateTokenRequest::from(request))
            .await;
        let token = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(NewToken::try_from(token)?)
    }

    /// Tokens (of one user, or the caller's own; every one for an admin).
    pub async fn tokens(&mut self, user: Option<&UserName>) -> anyhow::Result<Vec<TokenInfo>> {
        let request = pb::ListTokensRequest {
            user: user.map(UserName::to_string),
        };
        let reply = self.access.list_tokens(request).await;
        let tokens = reply
            .map_err(|status| self.error(status))?
            .into_inner()
            .tokens;
        Ok(tokens
            .into_iter()
            .map(TokenInfo::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Revokes a token.
    pub async fn revoke_token(&mut self, id: u64) -> anyhow::Result<TokenInfo> {
        let reply = self.access.revoke_token(pb::TokenRef { id }).await;
        let token = reply.map_err(|status| self.error(status))?.into_inner();
        Ok(TokenInfo::try_from(token)?)
    }
}

/// Converts a task from the server into its view; a malformed one is the server's fault.
fn task_view(task: pb::Task) -> anyhow::Result<TaskView> {
    let id = task.id;
    TaskView::try_from(task).with_context(|| format!("the server sent an unreadable task {id}"))
}

/// Normalizes a server address: `host:port` gets `http://` (an `https://` URL stays as given),
/// an address without a port gets herd's default port.
pub fn server_url(text: &str) -> Result<String, exit::Error> {
    let trimmed = text.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(exit::Error::usage(
            "the server address is empty; give --server http://HOST:4373 (https:// for a server with TLS) or set HERD_SERVER",
        ));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let invalid = || {
        exit::Error::usage(format!(
            "`{text}` is not a server address; give http://HOST:PORT, https://HOST:PORT or HOST:PORT, e.g. http://127.0.0.1:{}",
            herd_proto::DEFAULT_PORT
        ))
    };
    let uri: tonic::codegen::http::Uri = with_scheme.parse().map_err(|_| invalid())?;
    let scheme = uri.scheme_str().ok_or_else(invalid)?;
    if scheme != "http" && scheme != "https" {
        return Err(exit::Error::usage(format!(
            "`{text}`: the server address must start with http:// or https://"
        )));
    }
    let authority = uri.authority().ok_or_else(invalid)?;
    if authority.port().is_some() {
        return Ok(with_scheme);
    }
    Ok(format!(
        "{scheme}://{}:{}",
        authority.host(),
        herd_proto::DEFAULT_PORT
    ))
}

/// Connects to the server named by `--server`/`HERD_SERVER`, secured as the environment
/// says (`HERD_CA_BUNDLE`, `HERD_CLIENT_CERT`/`HERD_CLIENT_KEY`, `HERD_INSECURE`; see
/// [`herd_proto::transport`]). An unreachable server is an [`exit::Kind::Unreachable`] error
/// (exit code 3); settings that cannot work are usage errors (exit code 2).
pub async fn connect(server: &str) -> anyhow::Result<Connection> {
    let url = server_url(server)?;
    let token = crate::credentials::token_for(&url)?;
    connect_with(&url, token.as_ref()).await
}

/// Connects to the server at `url` (as normalised by [`server_url`]) with `token`.
pub async fn connect_with(url: &str, token: Option<&Secret>) -> anyhow::Result<Connection> {
    let url = url.to_owned();
    let bearer = match token {
        Some(token) => Bearer::new(token).map_err(|error| exit::Error::usage(error.to_string()))?,
        None => Bearer::anonymous(),
    };
    let tls = ClientTls::from_env().map_err(|error| exit::Error::usage(error.to_string()))?;
    let endpoint = transport::endpoint(&url, &tls)
        .map_err(|error| exit::Error::usage(error.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    tracing::debug!(server = %url, "connecting");
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| exit::Error::unreachable(unreachable_message(&url, &tls, &error)))?;
    let queue = QueueClient::with_interceptor(channel.clone(), bearer.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let access = AccessClient::with_interceptor(channel, bearer);
    Ok(Connection {
        queue,
        access,
        server: url,
        tls,
    })
}

/// The message for a server that does not answer: a failed TLS handshake says why and what to
/// set (e.g. `HERD_CA_BUNDLE`); anything else names the innermost cause (e.g. "Connection
/// refused") rather than tonic's layers of wrapping.
fn unreachable_message(
    url: &str,
    tls: &ClientTls,
    error: &(dyn std::error::Error + 'static),
) -> String {
    match transport::describe_failure(error, url, tls) {
        Failure::Tls(reason) => {
            format!("cannot connect securely to the herd server at {url}: {reason}")
        }
        Failure::Other(reason) => format!(
            "cannot reach the herd server at {url}: {reason}; start one with `herd server` or `herd up`, \
             or set HERD_SERVER (or --server) to its address"
        ),
    }
}

/// The one mapping from a gRPC status to a CLI error: the server's own message, classified
/// (`tls`: how the client connected to `server`, for the hints of a failed handshake).
pub fn status_error(status: Status, server: &str, tls: &ClientTls) -> anyhow::Error {
    let message = status.message().to_owned();
    // A TLS handshake the server broke off after the client's side completed (TLS 1.3: a
    // server that wants a client certificate) ends the first call, whatever its code.
    if let Some(source) = std::error::Error::source(&status)
        && let Failure::Tls(_) = transport::describe_failure(source, server, tls)
    {
        return anyhow::Error::new(exit::Error::unreachable(unreachable_message(
            server, tls, source,
        )));
    }
    let error = match status.code() {
        Code::Unavailable => {
            // A status built by tonic from a transport failure carries the failure as its
            // source; one sent by the server (e.g. "shutting down") does not.
            if let Some(source) = std::error::Error::source(&status) {
                exit::Error::unreachable(unreachable_message(server, tls, source))
            } else {
                exit::Error::unreachable(format!(
                    "the herd server at {server} is unavailable: {message}"
                ))
            }
        }
        Code::InvalidArgument | Code::OutOfRange => exit::Error::usage(message),
        Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Aborted
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => exit::Error::failed(message),
        Code::DeadlineExceeded | Code::Cancelled => exit::Error::failed(format!(
            "the call to the herd server at {server} was cut short: {message}"
        )),
        Code::Ok | Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss => {
            exit::Error::failed(format!("the herd server at {server} failed: {message}"))
        }
    };
    anyhow::Error::new(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized() {
        assert_eq!(
            server_url("127.0.0.1:4000").unwrap(),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            server_url("http://example.org:80/").unwrap(),
            "http://example.org:80"
        );
        assert_eq!(server_url("myserver").unwrap(), "http://myserver:4373");
        assert_eq!(
            server_url("https://herd.example.org").unwrap(),
            "https://herd.example.org:4373"
        );
        assert!(server_url("").is_err());
        assert!(server_url("ftp://x:1").is_err());
    }

    #[test]
    fn statuses_keep_the_server_message_and_their_class() {
        let error = status_error(
            Status::not_found("task 9 does not exist"),
            "http://h:1",
            &ClientTls::default(),
        );
        assert_eq!(error.to_string(), "task 9 does not exist");
        assert_eq!(crate::exit::classify(&error).0, crate::exit::FAILURE);
        let error = status_error(
            Status::invalid_argument("bad"),
            "http://h:1",
            &ClientTls::default(),
        );
        assert_eq!(crate::exit::classify(&error).0, crate::exit::USAGE);
        let error = status_error(
            Status::unavailable("shutting down"),
            "http://h:1",
            &ClientTls::default(),
        );
        assert_eq!(crate::exit::classify(&error).0, crate::exit::UNREACHABLE);
    }
}
