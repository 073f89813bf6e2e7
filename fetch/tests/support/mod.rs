//! Servers on loopback and helpers for the tests of the network backends (http, ftp,
//! run+fastq, azure, gs). Each test binary uses part of it.
#![allow(dead_code)]

pub mod azure_server;
pub mod contract;
pub mod ftp_server;
pub mod gcs_shim;
pub mod http1;
pub mod http_server;

use std::fs;
use std::path::Path;
use std::time::Duration;

use herd_fetch::RetryPolicy;
use md5::{Digest as _, Md5};

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

pub fn md5_hex(bytes: &[u8]) -> String {
    let digest: [u8; 16] = Md5::digest(bytes).into();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Every path under `root` (files and directories), relative, sorted; directories end with `/`.
pub fn tree(root: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    paths.sort();
    paths
}

fn collect(root: &Path, directory: &Path, paths: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            paths.push(format!("{relative}/"));
            collect(root, &path, paths);
        } else {
            paths.push(relative);
        }
    }
}
