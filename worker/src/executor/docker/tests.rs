//! The pure parts of the Docker executor (the container body, pull references) and its
//! refusals that need no engine; the engine itself is tested in `tests/tests/docker.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use herd_proto::{TaskId, TaskRequest, TaskSpec};

use super::*;
use crate::executor::TaskDirs;

fn job(command: &[&str], options: &str) -> Job {
    let spec = TaskSpec::new(TaskRequest {
        command: command.iter().map(|word| word.to_string()).collect(),
        docker_image: Some("busybox:1".into()),
        docker_options: options.into(),
        ..TaskRequest::default()
    })
    .unwrap();
    let root = PathBuf::from("/scratch/attempt");
    Job {
        task_id: TaskId(17),
        attempt: 2,
        spec: Arc::new(spec),
        dirs: TaskDirs {
            input: root.join("input"),
            output: root.join("output"),
            resource: root.join("resource"),
            tmp: root.join("tmp"),
            root,
        },
        env: vec![("CPU".into(), "4".into()), ("THREADS".into(), "4".into())],
        name: "herd-w1-t17-a2".into(),
    }
}

fn body(job: &Job) -> ContainerCreateBody {
    container_body(job, job.spec.docker().unwrap()).unwrap()
}

#[test]
fn command_mounts_and_defaults() {
    let body = body(&job(&["sh", "-c", "echo hi"], ""));
    assert_eq!(body.image.as_deref(), Some("busybox:1"));
    assert_eq!(
        body.cmd,
        Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
    );
    assert_eq!(body.entrypoint, None);
    assert_eq!(body.working_dir, None);
    assert_eq!(body.user, None);
    assert_eq!(body.tty, Some(false));
    let host = body.host_config.unwrap();
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    let mounts: Vec<(String, String, bool)> = host
        .mounts
        .unwrap()
        .into_iter()
        .map(|mount| {
            (
                mount.source.unwrap(),
                mount.target.unwrap(),
                mount.read_only.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("/scratch/attempt/input".into(), "/input".into(), false),
            ("/scratch/attempt/output".into(), "/output".into(), false),
            ("/scratch/attempt/resource".into(), "/resource".into(), true),
            ("/scratch/attempt/tmp".into(), "/tmp".into(), false),
        ]
    );
    assert_eq!(host.binds, None);
    assert_eq!(host.privileged, None);
    assert_eq!(host.device_requests, None);
}

#[test]
fn options_become_host_config() {
    let body = body(&job(
        &["true"],
        "--shm-size 1g --network none -m 256m --cpus 0.5 -v /data:/data:ro -v cache:/cache \
         -w /work --entrypoint /bin/env --privileged",
    ));
    assert_eq!(body.entrypoint, Some(vec!["/bin/env".to_owned()]));
    assert_eq!(body.working_dir.as_deref(), Some("/work"));
    let host = body.host_config.unwrap();
    assert_eq!(host.shm_size, Some(1 << 30));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.privileged, Some(true));
    assert_eq!(
        host.binds,
        Some(vec!["/data:/data:ro".to_owned(), "cache:/cache".to_owned()])
    );
}

#[test]
fn host_sharing_options_become_host_config() {
    let created = body(&job(
        &["true"],
        "--cap-add SYS_ADMIN --cap-add=cap_net_admin --cap-drop NET_RAW \
         --device /dev/fuse --device /dev/sdb:/dev/xvdb:r --pid host --ipc container:db \
         --uts host --userns host --security-opt seccomp=unconfined \
         --security-opt apparmor:unconfined",
    ));
    let host = created.host_config.unwrap();
    assert_eq!(
        host.cap_add,
        Some(vec!["SYS_ADMIN".to_owned(), "NET_ADMIN".to_owned()])
    );
    assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_owned()]));
    let devices: Vec<(String, String, String)> = host
        .devices
        .unwrap()
        .into_iter()
        .map(|device| {
            (
                device.path_on_host.unwrap(),
                device.path_in_container.unwrap(),
                device.cgroup_permissions.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        vec![
            ("/dev/fuse".into(), "/dev/fuse".into(), "rwm".into()),
            ("/dev/sdb".into(), "/dev/xvdb".into(), "r".into()),
        ]
    );
    assert_eq!(host.pid_mode.as_deref(), Some("host"));
    assert_eq!(host.ipc_mode.as_deref(), Some("container:db"));
    assert_eq!(host.uts_mode.as_deref(), Some("host"));
    assert_eq!(host.userns_mode.as_deref(), Some("host"));
    // herd's no-new-privileges stays, first.
    assert_eq!(
        host.security_opt,
        Some(vec![
            "no-new-privileges".to_owned(),
            "seccomp=unconfined".to_owned(),
            "apparmor=unconfined".to_owned(),
        ])
    );
    let plain = body(&job(&["true"], "")).host_config.unwrap();
    assert_eq!(
        (plain.cap_add, plain.cap_drop, plain.devices, plain.pid_mode),
        (None, None, None, None)
    );
}

#[test]
fn no_new_privileges_goes_only_when_the_task_s_last_word_is_false() {
    let security = |options: &str| {
        body(&job(&["true"], options))
            .host_config
            .unwrap()
            .security_opt
            .unwrap()
    };
    assert_eq!(
        security("--security-opt no-new-privileges:false"),
        vec!["no-new-privileges=false"]
    );
    assert_eq!(
        security("--security-opt no-new-privileges"),
        vec!["no-new-privileges"]
    );
    assert_eq!(
        security("--security-opt no-new-privileges=false --security-opt no-new-privileges=true"),
        vec!["no-new-privileges"]
    );
    assert_eq!(
        security("--security-opt no-new-privileges=true --security-opt label=disable"),
        vec!["no-new-privileges", "label=disable"]
    );
}

#[test]
fn environment_merges_job_and_options() {
    let body = body(&job(&["true"], "-e THREADS=1 -e A=x=y -e EMPTY="));
    assert_eq!(
        body.env.unwrap(),
        vec!["CPU=4", "THREADS=1", "A=x=y", "EMPTY="]
    );
}

#[test]
fn user_from_uid_and_gid() {
    assert_eq!(user(Some(1234), Some(99)).as_deref(), Some("1234:99"));
    assert_eq!(user(Some(1234), None).as_deref(), Some("1234"));
    assert_eq!(user(None, Some(99)).as_deref(), Some("0:99"));
    assert_eq!(user(None, None), None);
}

#[test]
fn gpus_like_the_docker_cli() {
    let all = gpu_request("all");
    assert_eq!((all.count, all.device_ids.clone()), (Some(-1), None));
    assert_eq!(all.capabilities, Some(vec![vec!["gpu".to_owned()]]));
    let two = gpu_request("2");
    assert_eq!((two.count, two.device_ids), (Some(2), None));
    let devices = gpu_request("device=0,1");
    assert_eq!(devices.count, None);
    assert_eq!(
        devices.device_ids,
        Some(vec!["0".to_owned(), "1".to_owned()])
    );
}

#[test]
fn pulls_latest_only_when_no_tag_or_digest() {
    assert_eq!(pull_reference("busybox"), ("busybox", Some("latest")));
    assert_eq!(
        pull_reference("localhost:5000/team/tool"),
        ("localhost:5000/team/tool", Some("latest"))
    );
    assert_eq!(
        pull_reference("localhost:5000/team/tool:2"),
        ("localhost:5000/team/tool:2", None)
    );
    assert_eq!(
        pull_reference("busybox@sha256:abcd"),
        ("busybox@sha256:abcd", None)
    );
}

#[test]
fn a_bare_task_is_refused() {
    let mut bare = job(&["true"], "");
    let mut request = bare.spec.to_request();
    request.docker_image = None;
    request.docker_options.clear();
    bare.spec = Arc::new(TaskSpec::new(request).unwrap());
    let error = refusal(&bare);
    assert!(
        matches!(&error, Error::Start(message) if message.contains("no docker image")),
        "{error}"
    );
}

/// Runs `job` on an executor with the default policy and no engine (a socket never used):
/// for refusals, which happen before the engine is asked anything.
fn refusal(job: &Job) -> Error {
    refusal_by(job, Policy::default(), None)
}

fn refusal_by(job: &Job, policy: Policy, socket: Option<&str>) -> Error {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let executor = DockerExecutor {
        docker: Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
            .unwrap(),
        allow_privileged: false,
        policy: Arc::new(policy),
        socket: socket.map(PathBuf::from),
    };
    let (logs, _receiver) = LogSink::channel(1);
    runtime
        .block_on(executor.run(job, logs, CancellationToken::new()))
        .unwrap_err()
}

#[test]
fn the_worker_policy_is_checked_before_the_engine_is_asked() {
    for (options, flag) in [
        ("-v /etc:/host", "--allow-volume /etc"),
        ("-v cache:/cache", "--allow-named-volumes"),
        ("--network host", "--allow-docker-option network=host"),
        ("--pid host", "--allow-docker-option pid=host"),
        ("--cap-add SYS_ADMIN", "--allow-docker-option cap-add"),
        ("--device /dev/fuse", "--allow-docker-option device"),
        (
            "--security-opt no-new-privileges=false",
            "--allow-docker-option security-opt=unconfined",
        ),
    ] {
        let error = refusal(&job(&["true"], options));
        assert!(
            matches!(&error, Error::Start(message) if message.contains(flag)),
            "{options}: {error}"
        );
    }
}

#[test]
fn the_socket_of_this_worker_s_engine_is_never_mountable_wherever_it_is() {
    let mut policy = Policy::default();
    policy.allow_volume("/herd-test-srv").unwrap();
    let socket = Some("/herd-test-srv/engine/api.sock");
    for source in [
        "/herd-test-srv/engine",
        "/herd-test-srv/engine/api.sock",
        "/herd-test-srv",
    ] {
        let error = refusal_by(
            &job(&["true"], &format!("-v {source}:/e")),
            policy.clone(),
            socket,
        );
        assert!(
            matches!(&error, Error::Start(message) if message.contains("Docker socket")),
            "{source}: {error}"
        );
    }
}
