//! Item 6: many tasks queued at once, durable when the call returns, into a fresh
//! `herd server` process each time:
//!
//! - one Submit call from this process (what `herd launch --file` sends);
//! - the `herd launch --file FILE` binary, which also reads, splits and checks the file and
//!   prints every id; timed from its start to its exit.
//!
//! Each task is `sh -c 'echo sample_N | wc -c'` in batch `bench`, which no worker serves.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::bail;
use herd_proto::pb;
use herd_tests::Engine;

use crate::process::{HerdServer, herd_command, task};

fn script(index: usize) -> String {
    format!("echo sample_{index} | wc -c")
}

/// One Submit call of `count` tasks; the time of the call.
pub async fn grpc(herd: &Path, engine: Engine, count: usize) -> anyhow::Result<Duration> {
    let server = HerdServer::start(herd, engine).await?;
    let mut client = server.client().await?;
    let tasks: Vec<pb::TaskSpec> = (0..count)
        .map(|index| task("bench", &["sh", "-c", &script(index)]))
        .collect();
    let begin = Instant::now();
    let ids = client
        .submit(pb::SubmitRequest {
            tasks,
            idempotency_key: None,
        })
        .await?
        .into_inner()
        .ids;
    let elapsed = begin.elapsed();
    anyhow::ensure!(ids.len() == count, "queued {} of {count}", ids.len());
    Ok(elapsed)
}

/// `herd launch -b bench --file FILE` with `count` lines; the time from its start to its exit.
pub async fn cli(herd: &Path, engine: Engine, count: usize) -> anyhow::Result<Duration> {
    let server = HerdServer::start(herd, engine).await?;
    let folder = tempfile::Builder::new()
        .prefix("herd-bench-submit-")
        .tempdir()?;
    let file = folder.path().join("commands.txt");
    let mut text = String::with_capacity(count * 40);
    for index in 0..count {
        text.push_str(&format!("sh -c '{}'\n", script(index)));
    }
    std::fs::write(&file, text)?;
    let mut command = herd_command(herd);
    command
        .env("HERD_TOKEN_FILE", server.admin_token_file())
        .arg("launch")
        .arg("--server")
        .arg(&server.url)
        .arg("-b")
        .arg("bench")
        .arg("--file")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let begin = Instant::now();
    let output = command.spawn()?.wait_with_output().await?;
    let elapsed = begin.elapsed();
    if !output.status.success() {
        bail!(
            "herd launch --file exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let printed = output.stdout.iter().filter(|byte| **byte == b'\n').count();
    anyhow::ensure!(
        printed == count,
        "herd launch printed {printed} ids for {count} lines"
    );
    Ok(elapsed)
}
