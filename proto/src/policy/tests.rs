//! Unit tests of the worker policy: every refused form, every allowed form.

use std::path::{Path, PathBuf};

use super::*;

fn options(text: &str) -> DockerOptions {
    DockerOptions::parse(text).unwrap()
}

fn refusal(policy: &Policy, text: &str) -> String {
    policy
        .check_docker(&options(text), |_| None)
        .unwrap_err()
        .to_string()
}

fn allowed(policy: &Policy, text: &str) -> bool {
    policy.check_docker(&options(text), |_| None).is_ok()
}

#[test]
fn the_default_policy_refuses_every_host_folder_and_names_the_flag() {
    let policy = Policy::default();
    let message = refusal(&policy, "-v /etc:/host");
    assert_eq!(
        message,
        "`-v /etc:/host` mounts a host folder: a worker allows it with \
         `herd worker --allow-volume /etc`"
    );
    for text in ["--volume /data:/d:ro", "--volume=/home/user/../../etc:/h"] {
        assert!(refusal(&policy, text).contains("--allow-volume"), "{text}");
    }
    let message = refusal(&policy, "-v /data/../etc/./x:/h");
    assert!(message.contains("--allow-volume /etc/x"), "{message}");
    for relative in ["-v ./data:/d", "-v ~/data:/d", "-v data/x:/d", "-v ../x:/d"] {
        let message = refusal(&policy, relative);
        assert!(
            message.contains("relative host path"),
            "{relative}: {message}"
        );
    }
}

#[test]
fn named_volumes_need_their_flag() {
    let message = refusal(&Policy::default(), "-v cache:/cache");
    assert!(message.contains("--allow-named-volumes"), "{message}");
    let policy = Policy {
        named_volumes: true,
        ..Policy::default()
    };
    assert!(allowed(&policy, "-v cache:/cache -v my.vol-2:/v:ro"));
    assert!(!allowed(&policy, "-v /data:/d"));
}

#[test]
fn allowed_prefixes_take_the_folder_and_what_is_under_it_only() {
    let mut policy = Policy::default();
    policy.allow_volume("/data/").unwrap();
    policy.allow_volume("/scratch/./shared").unwrap();
    assert!(allowed(&policy, "-v /data:/d"));
    assert!(allowed(&policy, "-v /data/:/d"));
    assert!(allowed(&policy, "-v /data/genomes/hg38:/g:ro"));
    assert!(allowed(&policy, "-v /scratch/shared/x:/x"));
    assert!(allowed(&policy, "-v /data/a/../b:/b"));
    // A sibling sharing the prefix's letters, an escape through `..`, a parent.
    for text in [
        "-v /database:/d",
        "-v /data/../etc:/e",
        "-v /data/../../etc:/e",
        "-v /scratch:/s",
    ] {
        let message = refusal(&policy, text);
        assert!(message.contains("--allow-volume"), "{text}: {message}");
    }
}

#[test]
fn a_link_under_an_allowed_folder_cannot_lead_outside_it() {
    let mut policy = Policy::default();
    policy.allow_volume("/data").unwrap();
    let resolve = |path: &Path| -> Option<PathBuf> {
        (path == Path::new("/data/link")).then(|| PathBuf::from("/etc"))
    };
    assert!(
        policy
            .check_docker(&options("-v /data/link:/l"), resolve)
            .is_err()
    );
    let to_socket = |_: &Path| Some(PathBuf::from("/run/docker.sock"));
    let message = policy
        .check_docker(&options("-v /data/sock:/s"), to_socket)
        .unwrap_err()
        .to_string();
    assert!(message.contains("Docker socket"), "{message}");
}

#[test]
fn the_docker_socket_is_never_mountable() {
    for text in [
        "-v /var/run/docker.sock:/var/run/docker.sock",
        "-v /run/docker.sock:/s",
        "-v /home/me/.docker/run/docker.sock:/s",
        "-v /var/run:/r",
        "-v /run/:/r",
        "-v /var:/v",
        "-v /:/host",
        "-v /data/../run:/r",
        "-v /var/run/../run/./docker.sock:/s:ro",
        "-v /run/containerd:/c",
        "-v /run/user/1000/podman/podman.sock:/p",
    ] {
        let error = DockerOptions::parse(text).unwrap_err().to_string();
        assert!(
            error.contains("Docker socket") && error.contains("no worker allows it"),
            "{text}: {error}"
        );
    }
    let mut policy = Policy::default();
    for prefix in ["/", "/var", "/run", "/var/run/docker.sock"] {
        let error = policy.allow_volume(prefix).unwrap_err().to_string();
        assert!(error.contains("Docker socket"), "{prefix}: {error}");
    }
    assert!(policy.allow_volume("relative").is_err());
    // A named volume called docker.sock is not the socket.
    assert!(docker_socket_mount(&options("-v docker.sock:/v").volumes[0]).is_none());
}

#[test]
fn host_namespaces_need_their_option_by_name() {
    let policy = Policy::default();
    let message = refusal(&policy, "--network host");
    assert_eq!(
        message,
        "`--network host` shares a namespace of the host: a worker allows it with \
         `herd worker --allow-docker-option network=host`"
    );
    assert!(refusal(&policy, "--net=container:db").contains("network=container"));
    assert!(allowed(&policy, "--network none --gpus all"));
    assert!(allowed(&policy, "--network bridge"));
    let host_only = Policy {
        docker_options: vec!["network=host".parse().unwrap()],
        ..Policy::default()
    };
    assert!(allowed(&host_only, "--network host"));
    assert!(!allowed(&host_only, "--network container:db"));
}

#[test]
fn every_host_sharing_option_is_refused_by_default_and_names_its_flag() {
    let cases = [
        ("--pid host", "--pid host", "pid=host"),
        ("--pid=container:db", "--pid container:db", "pid=container"),
        ("--ipc host", "--ipc host", "ipc=host"),
        ("--ipc=container:db", "--ipc container:db", "ipc=container"),
        ("--uts=host", "--uts host", "uts=host"),
        ("--userns host", "--userns host", "userns=host"),
        ("--cap-add SYS_ADMIN", "--cap-add SYS_ADMIN", "cap-add"),
        ("--cap-add=cap_net_raw", "--cap-add NET_RAW", "cap-add"),
        (
            "--device /dev/fuse",
            "--device /dev/fuse:/dev/fuse:rwm",
            "device",
        ),
        (
            "--security-opt seccomp=unconfined",
            "--security-opt seccomp=unconfined",
            "security-opt=unconfined",
        ),
        (
            "--security-opt=apparmor:unconfined",
            "--security-opt apparmor=unconfined",
            "security-opt=unconfined",
        ),
        (
            "--security-opt label:disable",
            "--security-opt label=disable",
            "security-opt=unconfined",
        ),
        (
            "--security-opt no-new-privileges:false",
            "--security-opt no-new-privileges=false",
            "security-opt=unconfined",
        ),
        (
            "--security-opt systempaths=unconfined",
            "--security-opt systempaths=unconfined",
            "security-opt=unconfined",
        ),
    ];
    for (text, shown, name) in cases {
        let message = refusal(&Policy::default(), text);
        assert!(
            message.starts_with(&format!("`{shown}` "))
                && message.ends_with(&format!("`herd worker --allow-docker-option {name}`")),
            "{text}: {message}"
        );
        // Allowed by its own name, and by no other.
        let only = |option: DockerOption| Policy {
            docker_options: vec![option],
            ..Policy::default()
        };
        let needed: DockerOption = name.parse().unwrap();
        assert!(allowed(&only(needed), text), "{text}");
        for other in DockerOption::ALL
            .into_iter()
            .filter(|other| *other != needed)
        {
            assert!(!allowed(&only(other), text), "{text} allowed by {other}");
        }
    }
    let message = refusal(&Policy::default(), "--ipc container:db");
    assert!(
        message.starts_with("`--ipc container:db` shares another container's namespace"),
        "{message}"
    );
    // Several options: the first refused one is named.
    let message = refusal(
        &Policy {
            docker_options: vec![DockerOption::CapAdd],
            ..Policy::default()
        },
        "--cap-add NET_ADMIN --device /dev/kvm:rw",
    );
    assert!(
        message.contains("--allow-docker-option device"),
        "{message}"
    );
}

#[test]
fn options_that_take_nothing_of_the_host_need_no_flag() {
    let policy = Policy::default();
    for text in [
        "--cap-drop ALL --cap-drop=NET_RAW",
        "--ipc private",
        "--ipc=shareable",
        "--ipc none",
        "--security-opt no-new-privileges",
        "--security-opt no-new-privileges=true",
        "--security-opt apparmor=docker-default",
        "--gpus all",
    ] {
        assert!(allowed(&policy, text), "{text}");
    }
}

#[test]
fn option_names_and_environment_names_are_checked() {
    for option in DockerOption::ALL {
        assert_eq!(option.name().parse::<DockerOption>().unwrap(), option);
    }
    let error = "pid=sometimes"
        .parse::<DockerOption>()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`pid=sometimes`")
            && error.contains("network=host, network=container, pid=host")
            && error.contains("cap-add, device, security-opt=unconfined"),
        "{error}"
    );
    let mut policy = Policy::default();
    policy.pass_env("HTTP_PROXY").unwrap();
    policy.pass_env("_x1").unwrap();
    for bad in ["", "1A", "A-B", "A=B", "A B"] {
        assert!(policy.pass_env(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn root_needs_its_flag() {
    let policy = Policy::default();
    assert!(policy.check_user(None, None).is_ok());
    assert!(policy.check_user(Some(1000), Some(1000)).is_ok());
    let message = policy.check_user(Some(0), None).unwrap_err().to_string();
    assert!(
        message.contains("`-u 0`") && message.contains("--allow-root"),
        "{message}"
    );
    let message = policy
        .check_user(Some(1000), Some(0))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`-g 0`") && message.contains("--allow-root"),
        "{message}"
    );
    let root = Policy {
        root: true,
        ..Policy::default()
    };
    assert!(root.check_user(Some(0), Some(0)).is_ok());
}

#[test]
fn normalising_is_lexical() {
    for (path, expected) in [
        ("/a/./b/../c/", "/a/c"),
        ("/..", "/"),
        ("/../etc", "/etc"),
        ("/", "/"),
        ("a/../../b", "../b"),
    ] {
        assert_eq!(
            normalise(Path::new(path)),
            PathBuf::from(expected),
            "{path}"
        );
    }
}

#[test]
fn no_sequence_of_three_words_makes_the_parser_or_the_policy_panic() {
    // Every flag the parser knows, some it does not, and values that are edge cases of each
    // (empty, `=`, quotes, `..`, the socket, relative paths): all 3-word sequences.
    let words = [
        "-v",
        "--volume",
        "--volume=",
        "-e",
        "--env=",
        "--network",
        "--net=host",
        "--gpus",
        "--shm-size",
        "-m",
        "--cpus",
        "-w",
        "--entrypoint",
        "--privileged",
        "--privileged=false",
        "--cap-add",
        "--cap-drop=all",
        "--device",
        "--pid",
        "--ipc=container:x",
        "--security-opt",
        "--mount",
        "=",
        "''",
        "'",
        "\"a b\"",
        "A",
        "A=",
        "=A",
        "host",
        "container:x",
        "/",
        "/run",
        "/data/../run:/r",
        "/a:/b:ro",
        "/a:/b:zz",
        "a:/b",
        "~/x:/b",
        "./x:/b",
        "/a:/output",
        "0",
        "-1",
        "1e308",
        "NaN",
        "99999999999g",
        "device=0",
        "SYS_ADMIN",
        "/dev/null:r",
        "seccomp=unconfined",
        "\u{0}",
    ];
    let mut policy = Policy {
        named_volumes: true,
        docker_options: DockerOption::ALL.to_vec(),
        ..Policy::default()
    };
    policy.allow_volume("/data").unwrap();
    let mut accepted = 0;
    for first in words {
        for second in words {
            for third in words {
                let text = format!("{first} {second} {third}");
                if let Ok(parsed) = DockerOptions::parse(&text) {
                    accepted += 1;
                    let _ = Policy::default().check_docker(&parsed, |_| None);
                    let _ = policy.check_docker(&parsed, |path| Some(path.to_path_buf()));
                    // Whatever was accepted never holds the socket or a valueless variable.
                    assert!(
                        parsed
                            .volumes
                            .iter()
                            .all(|v| docker_socket_mount(v).is_none())
                    );
                    assert!(parsed.env.iter().all(|entry| entry.contains('=')), "{text}");
                }
            }
        }
    }
    assert!(accepted > 100, "only {accepted} accepted");
}
