//! `herd task show` and `herd task list`, the real binary against an in-process server, never
//! print a URI's password or the value of `-e KEY=VALUE`, in text or in `--json`.

use std::path::Path;

use herd_proto::TaskRequest;
use herd_tests::Cluster;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// Runs `herd --server URL ARGS` as the cluster's admin, off the runtime; its stdout, after
/// checking it succeeded.
async fn herd(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let mut command = herd_tests::process::herd_command(Path::new(HERD));
    command
        .env("HERD_TOKEN", cluster.admin_token().await?.expose())
        .arg("--server")
        .arg(&cluster.url)
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(output.status.success(), "herd {args:?} failed: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_show_and_list_never_print_secrets() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let ids = cluster
        .submit(vec![TaskRequest {
            command: vec!["sh".into(), "-c".into(), "echo $TOKEN".into()],
            docker_image: Some("busybox".into()),
            docker_options: "-e TOKEN=secret-value --shm-size 1g".into(),
            inputs: vec!["ftp://user:hunter2@host/x".into()],
            resources: vec!["https://h/r.tar?X-Amz-Signature=signed-value|untar".into()],
            ..TaskRequest::default()
        }])
        .await?;
    let id = ids[0].to_string();
    let outputs = [
        herd(&cluster, &["task", "show", &id]).await?,
        herd(&cluster, &["task", "show", &id, "--json"]).await?,
        herd(&cluster, &["task", "list"]).await?,
        herd(&cluster, &["task", "list", "--json"]).await?,
    ];
    for output in &outputs {
        for secret in ["secret-value", "hunter2", "signed-value"] {
            assert!(!output.contains(secret), "`{secret}` printed: {output}");
        }
    }
    assert!(outputs[0].contains("-e TOKEN=***"), "{}", outputs[0]);
    assert!(
        outputs[0].contains("ftp://user:***@host/x"),
        "{}",
        outputs[0]
    );
    assert!(outputs[1].contains("X-Amz-Signature=***"), "{}", outputs[1]);
    Ok(())
}
