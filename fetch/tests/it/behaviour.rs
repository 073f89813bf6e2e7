//! One behaviour suite, every backend: the `Backend` contract (`tests/support/contract.rs`)
//! checked the same way on the local filesystem and on the in-memory object store, as the
//! tests of the remote schemes check it on theirs.

use std::sync::Arc;

use herd_fetch::{MemoryBackend, Resolver, Scheme, Uri};

use crate::support::contract::{Capabilities, suite};

/// The contract on the local filesystem, the base written `{prefix}/tmp/.../store/`.
async fn local_files_follow_the_contract(prefix: &str) {
    let temp = tempfile::tempdir().unwrap();
    let base = Uri::parse(&format!("{prefix}{}/store/", temp.path().display())).unwrap();
    let local = temp.path().join("local");
    suite(
        &Resolver::default(),
        &base,
        &local,
        Capabilities::READ_WRITE,
    )
    .await;
}

#[tokio::test]
async fn file_backend_follows_the_contract() {
    local_files_follow_the_contract("file://").await;
}

#[tokio::test]
async fn plain_paths_follow_the_contract() {
    local_files_follow_the_contract("").await;
}

#[tokio::test]
async fn memory_backend_follows_the_contract() {
    let temp = tempfile::tempdir().unwrap();
    let mut resolver = Resolver::empty();
    resolver.register(Scheme::S3, Arc::new(MemoryBackend::new()));
    suite(
        &resolver,
        &Uri::parse("s3://bucket/store/").unwrap(),
        temp.path(),
        Capabilities::READ_WRITE,
    )
    .await;
}
