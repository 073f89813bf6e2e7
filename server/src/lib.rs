//! herd-server: the queue server.
//!
//! # Layout
//! - [`queue`]: the scheduling state in memory and its transitions, made durable through a
//!   group-committing journal before any acknowledgement (no tonic, no SQL).
//! - [`store`]: the durable mirror of that state in SQLite or PostgreSQL (sqlx), and the one
//!   mapping of database errors.
//! - [`logs`]: task output, in files under the data directory.
//! - [`private`]: the data directory `0700`, its files `0600`.
//! - [`service`]: the gRPC services, thin: convert, call the queue, convert back.
//! - [`tls`]: the server's certificate, key and client CA, checked at start.
//! - [`run`]: wires them together and serves until shutdown.
//! - [`Error`]: the crate's one error type; [`chain`] renders one with its causes.

mod error;
pub mod logs;
pub mod private;
pub mod queue;
pub mod service;
pub mod store;
mod stored_spec;
pub mod tls;

mod server;

pub use error::{Error, chain};
pub use server::{
    ADMIN_TOKEN_FILE, Config, MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, open, run, serve,
};
pub use tls::Tls;
