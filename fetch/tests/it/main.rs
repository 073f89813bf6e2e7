//! Integration tests of herd-fetch, on real files in temporary directories. One binary, one
//! module per area.

mod actions;
mod behaviour;
mod checksum;
mod file_backend;
mod hostile_archives;
mod progress;
mod resolver;
mod support;
mod uri;
