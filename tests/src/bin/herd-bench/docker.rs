//! Item 8: what herd adds to a Docker task. The wall time of a herd task running `true` in
//! the image (a Submit call to the poll, every 5 ms, that sees it ended; a `herd server`
//! process and a `herd worker --executor docker --concurrency 1` process), divided by the wall
//! time of `docker run --rm IMAGE true` (the CLI process, start to exit). Runs alternate
//! between the two, after one warm-up run of each; medians.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_proto::pb;
use herd_proto::view::TaskView;
use herd_tests::Engine;
use tokio::process::Command;

use crate::process::{HerdServer, HerdWorker, Missing};

/// The two sides' samples, sorted.
pub struct DockerRuns {
    /// `docker run --rm IMAGE true`.
    pub plain: Vec<Duration>,
    /// The same through herd.
    pub herd: Vec<Duration>,
}

/// Median of sorted samples.
pub fn median(sorted: &[Duration]) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        length if length % 2 == 1 => sorted[length / 2],
        length => (sorted[length / 2 - 1] + sorted[length / 2]) / 2,
    }
}

/// Runs both sides `runs` times.
pub async fn measure(herd: &Path, image: &str, runs: usize) -> anyhow::Result<DockerRuns> {
    check_docker(image).await?;
    let server = HerdServer::start(herd, Engine::Sqlite).await?;
    let _worker = HerdWorker::start(herd, &server, "docker", "docker", 1, None).await?;
    let mut client = server.client().await?;
    let spec = || pb::TaskSpec {
        batch: "docker".to_owned(),
        command: vec!["true".to_owned()],
        docker_image: Some(image.to_owned()),
        ..pb::TaskSpec::default()
    };
    let mut herd_task = async || -> anyhow::Result<Duration> {
        let begin = Instant::now();
        let ids = client
            .submit(pb::SubmitRequest {
                tasks: vec![spec()],
                idempotency_key: None,
            })
            .await?
            .into_inner()
            .ids;
        let id = *ids.first().context("no id")?;
        let deadline = begin + Duration::from_secs(120);
        loop {
            let task = client.get_task(pb::TaskRef { id }).await?.into_inner();
            let view = TaskView::try_from(task)?;
            if view.state.is_terminal() {
                let elapsed = begin.elapsed();
                if view.state != herd_proto::TaskState::Succeeded {
                    bail!(
                        "the herd Docker task ended {}: {}",
                        view.state,
                        view.message.unwrap_or_default()
                    );
                }
                return Ok(elapsed);
            }
            if Instant::now() > deadline {
                bail!("the herd Docker task did not end within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    docker_run(image).await?;
    herd_task().await?;
    let mut plain = Vec::with_capacity(runs);
    let mut through_herd = Vec::with_capacity(runs);
    for _ in 0..runs {
        plain.push(docker_run(image).await?);
        through_herd.push(herd_task().await?);
    }
    plain.sort();
    through_herd.sort();
    Ok(DockerRuns {
        plain,
        herd: through_herd,
    })
}

/// `docker run --rm IMAGE true`, start to exit.
async fn docker_run(image: &str) -> anyhow::Result<Duration> {
    let begin = Instant::now();
    let output = Command::new("docker")
        .args(["run", "--rm", image, "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run docker")?;
    let elapsed = begin.elapsed();
    if !output.status.success() {
        bail!(
            "docker run exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// A Docker engine answers and has the image (nothing can be pulled here).
async fn check_docker(image: &str) -> anyhow::Result<()> {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .await;
    match version {
        Ok(output) if output.status.success() => {}
        Ok(_) => {
            return Err(Missing(
                "no Docker engine answers: start Docker (DOCKER_HOST selects another engine)"
                    .to_owned(),
            )
            .into());
        }
        Err(_) => {
            return Err(Missing("the docker CLI is not installed".to_owned()).into());
        }
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if !inspect.success() {
        return Err(Missing(format!(
            "the image {image} is missing: build it with `bash scripts/build-test-image.sh`"
        ))
        .into());
    }
    Ok(())
}
