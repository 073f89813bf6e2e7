//! The session's connection: the only place herd-worker touches protobuf.
//!
//! It opens the gRPC stream, and converts at the edge with herd-proto's `convert` impls and
//! nothing else: [`FromWorker`] out, [`ToWorker`] in (or the [`UndecodableMessage`] that says
//! why not, naming the attempt when it was an assignment). Everything past this module speaks
//! domain types.

use std::time::Duration;

use herd_proto::TaskReport;
use herd_proto::access::{Bearer, Secret};
use herd_proto::convert::UndecodableMessage;
use herd_proto::pb;
use herd_proto::session::{FromWorker, ToWorker};
use herd_proto::transport::{self, ClientTls};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Messages the sender can queue before a send waits.
const OUTGOING_CAPACITY: usize = 1024;

/// The sending half of a connection; cheap to clone.
#[derive(Clone)]
pub(super) struct Outgoing(mpsc::Sender<pb::WorkerMessage>);

/// The stream closed: a reconnection is under way or about to be.
#[derive(Debug)]
pub(super) struct Closed;

impl Outgoing {
    /// Sends `message` (a log chunk's bytes are moved, not copied).
    pub async fn send(&self, message: FromWorker) -> Result<(), Closed> {
        self.0
            .send(pb::WorkerMessage::from(message))
            .await
            .map_err(|_| Closed)
    }

    /// Sends `reports` in one message, leaving `reports` empty with its capacity, for the
    /// next ones.
    pub async fn send_reports(&self, reports: &mut Vec<TaskReport>) -> Result<(), Closed> {
        let message = FromWorker::Reports(std::mem::take(reports));
        let wire = pb::WorkerMessage::from(&message);
        if let FromWorker::Reports(mut sent) = message {
            sent.clear();
            *reports = sent;
        }
        self.0.send(wire).await.map_err(|_| Closed)
    }
}

/// The receiving half of a connection (with what it connected to, to describe a break).
pub(super) struct Incoming {
    stream: tonic::Streaming<pb::ServerMessage>,
    server: String,
    tls: ClientTls,
}

impl Incoming {
    /// The next message from the server, decoded; `None` when the server closed the stream;
    /// an error (the status's message) when the stream broke.
    pub async fn next(&mut self) -> Result<Option<Result<ToWorker, UndecodableMessage>>, String> {
        match self.stream.message().await {
            Ok(message) => Ok(message.map(decode)),
            Err(status) => Err(status_message(&status, &self.server, &self.tls)),
        }
    }
}

/// What a failed call says: the server's own message, or for a failure of the transport
/// (e.g. a server that wants a client certificate refusing the handshake) its cause.
fn status_message(status: &tonic::Status, server: &str, tls: &ClientTls) -> String {
    match std::error::Error::source(status) {
        Some(source) => transport::describe_failure(source, server, tls).to_string(),
        None => status.message().to_owned(),
    }
}

/// Decodes what the server sent.
fn decode(message: pb::ServerMessage) -> Result<ToWorker, UndecodableMessage> {
    ToWorker::try_from(message)
}

/// Why a session could not be opened.
pub(super) enum ConnectError {
    /// The server refused the worker's token (unknown, revoked, the wrong kind or batch):
    /// trying again cannot help.
    Refused(String),
    /// Anything else (unreachable, closed, a TLS handshake that failed): for a log line, and
    /// a retry. A TLS failure says what to set (`HERD_CA_BUNDLE`...).
    Failed(String),
}

/// Connects to `server` (with `tls`'s settings) with `token` and opens the session, `hello`
/// first.
pub(super) async fn connect(
    server: &str,
    tls: &ClientTls,
    token: &Secret,
    hello: &FromWorker,
) -> Result<(Outgoing, Incoming), ConnectError> {
    let bearer = Bearer::new(token).map_err(|error| ConnectError::Refused(error.to_string()))?;
    let endpoint = transport::endpoint(server, tls)
        .map_err(|error| ConnectError::Refused(error.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint.connect().await.map_err(|error| {
        ConnectError::Failed(transport::describe_failure(&error, server, tls).to_string())
    })?;
    let mut client = pb::workers_client::WorkersClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(herd_proto::session::MAX_SESSION_MESSAGE_BYTES);
    let (sender, receiver) = mpsc::channel::<pb::WorkerMessage>(OUTGOING_CAPACITY);
    if sender.send(pb::WorkerMessage::from(hello)).await.is_err() {
        return Err(ConnectError::Failed("the stream closed at once".to_owned()));
    }
    let inbound = client
        .session(ReceiverStream::new(receiver))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ConnectError::Refused(
                format!("the server refused this worker: {}", status.message()),
            ),
            _ => ConnectError::Failed(status_message(&status, server, tls)),
        })?
        .into_inner();
    Ok((
        Outgoing(sender),
        Incoming {
            stream: inbound,
            server: server.to_owned(),
            tls: tls.clone(),
        },
    ))
}

/// Messages as a server would send them, decoded: for the session's tests, which see no
/// protobuf.
#[cfg(test)]
pub(super) mod samples {
    use herd_proto::TaskId;

    use super::*;

    /// An assignment without its spec: what a newer server's spec looks like to this worker.
    pub fn assignment_without_spec(
        task_id: TaskId,
        attempt: u32,
    ) -> Result<ToWorker, UndecodableMessage> {
        decode(pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Assign(pb::Assign {
                task_id: task_id.0,
                attempt,
                spec: None,
            })),
        })
    }

    /// A message of a kind this worker does not know (or an empty one).
    pub fn unknown_kind() -> Result<ToWorker, UndecodableMessage> {
        decode(pb::ServerMessage { kind: None })
    }
}
