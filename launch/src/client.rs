//! The connection to a herd server, and the one mapping from gRPC statuses to CLI errors.

use std::time::Duration;

use herd_proto::pb::queue_client::QueueClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::exit;

/// A client of the `Queue` service.
pub type Queue = QueueClient<Channel>;

/// The largest message sent or accepted: `herd launch --file` sends every task in one request.
/// The server accepts the same size.
pub const MAX_MESSAGE_BYTES: usize = herd_server::MAX_MESSAGE_BYTES;

/// How long to wait for the TCP connection before declaring the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client, with the address it talks to (for messages).
pub struct Connection {
    /// The `Queue` service.
    pub queue: Queue,
    /// The server URL, as normalized.
    pub server: String,
}

impl Connection {
    /// Turns a failed call into a CLI error that carries the server's message.
    pub fn error(&self, status: Status) -> anyhow::Error {
        status_error(status, &self.server)
    }
}

/// Normalizes a server address: `host:port` gets `http://`, an address without a port gets
/// herd's default port.
pub fn server_url(text: &str) -> Result<String, exit::Error> {
    let trimmed = text.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(exit::Error::usage(
            "the server address is empty; give --server http://HOST:4373 or set HERD_SERVER",
        ));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let invalid = || {
        exit::Error::usage(format!(
            "`{text}` is not a server address; give http://HOST:PORT or HOST:PORT, e.g. http://127.0.0.1:{}",
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

/// Connects to the server named by `--server`/`HERD_SERVER`. An unreachable server is an
/// [`exit::Kind::Unreachable`] error (exit code 3).
pub async fn connect(server: &str) -> anyhow::Result<Connection> {
    let url = server_url(server)?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| {
            exit::Error::usage(format!("`{server}` is not a server address: {error}"))
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    tracing::debug!(server = %url, "connecting");
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| exit::Error::unreachable(unreachable_message(&url, &error)))?;
    let queue = QueueClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Connection { queue, server: url })
}

/// The message for a server that does not answer, naming the innermost cause (e.g.
/// "Connection refused") rather than tonic's layers of wrapping.
fn unreachable_message(url: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    format!(
        "cannot reach the herd server at {url}: {innermost}; start one with `herd server` or `herd up`, \
         or set HERD_SERVER (or --server) to its address"
    )
}

/// The one mapping from a gRPC status to a CLI error: the server's own message, classified.
pub fn status_error(status: Status, server: &str) -> anyhow::Error {
    let message = status.message().to_owned();
    let error = match status.code() {
        Code::Unavailable => {
            // A status built by tonic from a transport failure carries the failure as its
            // source; one sent by the server (e.g. "shutting down") does not.
            if let Some(source) = std::error::Error::source(&status) {
                exit::Error::unreachable(unreachable_message(server, source))
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
        let error = status_error(Status::not_found("task 9 does not exist"), "http://h:1");
        assert_eq!(error.to_string(), "task 9 does not exist");
        assert_eq!(crate::exit::classify(&error).0, crate::exit::FAILURE);
        let error = status_error(Status::invalid_argument("bad"), "http://h:1");
        assert_eq!(crate::exit::classify(&error).0, crate::exit::USAGE);
        let error = status_error(Status::unavailable("shutting down"), "http://h:1");
        assert_eq!(crate::exit::classify(&error).0, crate::exit::UNREACHABLE);
    }
}
