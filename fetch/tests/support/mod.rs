//! Servers on loopback and helpers for the tests of the network backends (http, ftp,
//! run+fastq, s3, azure, gs). Each test binary uses part of it.
#![allow(dead_code)]

pub mod azure_server;
pub mod contract;
mod files;
pub mod ftp_server;
pub mod gcs_shim;
pub mod http1;
pub mod http_server;
pub mod stores;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_fetch::{Backend, Entry, Resolver, RetryPolicy, Scheme, Uri};
use md5::{Digest as _, Md5};

pub use files::{tree, write};

/// Quick retries, so that failure paths take milliseconds.
pub const FAST_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    first_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(40),
};

/// `size` bytes that do not repeat in short cycles (a corrupted or shifted copy shows).
pub fn content(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// A resolver with `backend` for `scheme` only.
pub fn resolver_with(scheme: Scheme, backend: impl Backend) -> Resolver {
    let mut resolver = Resolver::empty();
    resolver.register(scheme, Arc::new(backend));
    resolver
}

pub fn uri(text: &str) -> Uri {
    Uri::parse(text).unwrap()
}

/// The paths of listed entries.
pub fn paths(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.path.as_str()).collect()
}

/// A bucket name no other test (or earlier run) uses: `herd-PURPOSE-...`, at most 63
/// characters.
pub fn unique_bucket(purpose: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "herd-{purpose}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    name.chars().take(63).collect()
}

/// How long a test waits for a condition before it fails (generous: a 2-core CI machine runs
/// every test binary at once, and an abort waits for the part in flight).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits, with [`herd_tests::wait_for`], until `condition` holds; fails after [`PATIENCE`]
/// naming `what`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    herd_tests::wait_for(what, PATIENCE, || {
        std::future::ready(condition().then_some(()))
    })
    .await
    .unwrap();
}

pub fn md5_hex(bytes: &[u8]) -> String {
    let digest: [u8; 16] = Md5::digest(bytes).into();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
