//! Property tests of the `-O` parser: sequences of words drawn from the options herd knows,
//! their edge-case values and junk. The exhaustive three-word test in `policy/tests.rs` covers
//! short sequences of a fixed vocabulary; these cover longer ones and arbitrary text.

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::DockerOptions;
use crate::policy::{DockerOption, Policy, docker_socket_mount};

/// Few enough cases to stay well under a second in debug builds, and no regression files.
fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every flag spelling the parser knows, and some it does not.
const FLAGS: [&str; 28] = [
    "-v",
    "--volume",
    "-e",
    "--env",
    "--network",
    "--net",
    "--gpus",
    "--shm-size",
    "-m",
    "--memory",
    "--cpus",
    "-w",
    "--workdir",
    "--entrypoint",
    "--privileged",
    "--cap-add",
    "--cap-drop",
    "--device",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--security-opt",
    "--mount",
    "--label",
    "-it",
    "--",
    "-",
];

/// Values that are edge cases of some flag: paths (the socket among them), sizes, modes.
const VALUES: [&str; 36] = [
    "",
    "=",
    "host",
    "container:db",
    "container:",
    "none",
    "private",
    "/",
    "/run",
    "/var/run/docker.sock:/s",
    "/run/../var/run:/r",
    "/data:/d:ro",
    "/data:/output",
    "cache:/c",
    "a:/b:zz",
    "./x:/b",
    "/dev/fuse",
    "/dev/sda:/dev/x:rw",
    "/dev/../etc:/e",
    "SYS_ADMIN",
    "cap_net_admin",
    "ALL",
    "seccomp=unconfined",
    "no-new-privileges:false",
    "apparmor=docker-default",
    "label:disable",
    "A=1",
    "A",
    "=A",
    "2g",
    "-1",
    "1e308",
    "NaN",
    "all",
    "device=0,1",
    "99999999999999999999g",
];

/// One word: a flag, a flag with an inline value, a value, or junk (quotes and NUL included).
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(FLAGS.to_vec()).prop_map(str::to_owned),
        (
            proptest::sample::select(FLAGS.to_vec()),
            proptest::sample::select(VALUES.to_vec())
        )
            .prop_map(|(flag, value)| format!("{flag}={value}")),
        proptest::sample::select(VALUES.to_vec()).prop_map(str::to_owned),
        "[ -~\u{0}]{0,12}",
    ]
}

/// A line of up to 10 words, separated by spaces.
fn line() -> impl Strategy<Value = String> {
    proptest::collection::vec(word(), 0..10).prop_map(|words| words.join(" "))
}

/// A policy that allows everything a worker can allow, with `/data` as a host folder.
fn permissive() -> Policy {
    let mut policy = Policy {
        named_volumes: true,
        docker_options: DockerOption::ALL.to_vec(),
        ..Policy::default()
    };
    policy.allow_volume("/data").unwrap();
    policy
}

/// A complete, valid option: a long flag and a value the parser accepts for it.
fn valid_option() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        Just(("--gpus", "all".to_owned())),
        (1u32..64).prop_map(|count| ("--gpus", count.to_string())),
        "[A-Z_][A-Z0-9_]{0,8}=[a-z0-9 ]{0,8}".prop_map(|entry| ("--env", entry)),
        (1i64..4096).prop_map(|megabytes| ("--shm-size", format!("{megabytes}m"))),
        (1i64..4096).prop_map(|megabytes| ("--memory", format!("{megabytes}m"))),
        (1u32..64).prop_map(|cpus| ("--cpus", format!("{cpus}.5"))),
        "/[a-z]{1,6}/[a-z]{1,6}".prop_map(|path| ("--workdir", path)),
        "(bridge|none|host|container:[a-z]{1,5})".prop_map(|mode| ("--network", mode)),
        "(SYS_ADMIN|cap_net_admin|ALL|chown)".prop_map(|capability| ("--cap-add", capability)),
        "(NET_RAW|all)".prop_map(|capability| ("--cap-drop", capability)),
        "/dev/[a-z]{1,6}(:/dev/[a-z]{1,6})?(:(r|rw|rwm|m))?".prop_map(|device| ("--device", device)),
        "(host|container:[a-z]{1,5})".prop_map(|mode| ("--pid", mode)),
        "(host|private|shareable|none|container:[a-z0-9]{1,5})".prop_map(|mode| ("--ipc", mode)),
        Just(("--uts", "host".to_owned())),
        Just(("--userns", "host".to_owned())),
        "(no-new-privileges([=:](true|false))?|seccomp[=:]unconfined|apparmor[=:][a-z][a-z-]{0,9}|label[=:]disable|systempaths=unconfined)"
            .prop_map(|option| ("--security-opt", option)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in "\\PC{0,64}") {
        if let Ok(options) = DockerOptions::parse(&text) {
            let _ = Policy::default().check_docker(&options, |_| None);
        }
    }

    #[test]
    fn whatever_is_accepted_holds_no_socket_nor_valueless_variable(text in line()) {
        let Ok(options) = DockerOptions::parse(&text) else {
            return Ok(());
        };
        for volume in &options.volumes {
            prop_assert!(docker_socket_mount(volume).is_none(), "{text}: {volume:?}");
        }
        for entry in &options.env {
            prop_assert!(entry.contains('=') && !entry.starts_with('='), "{text}: {entry}");
        }
        // A refusal by a worker names the flag that would allow it.
        if let Err(refusal) = Policy::default().check_docker(&options, |_| None) {
            prop_assert!(refusal.0.contains("herd worker --allow-"), "{text}: {refusal}");
        }
        // A worker allowing everything refuses nothing the parser accepted, but the socket.
        let resolved_to_itself = |path: &std::path::Path| Some(path.to_path_buf());
        if let Err(refusal) = permissive().check_docker(&options, resolved_to_itself) {
            prop_assert!(
                refusal.0.contains("--allow-volume") || refusal.0.contains("Docker socket"),
                "{text}: {refusal}"
            );
        }
    }

    #[test]
    fn an_environment_variable_without_a_value_is_always_refused(
        before in proptest::collection::vec(valid_option(), 0..4),
        after in proptest::collection::vec(valid_option(), 0..4),
        key in "[A-Za-z_][A-Za-z0-9_]{0,15}",
        spelling in proptest::sample::select(vec!["-e {}", "--env {}", "--env={}"]),
    ) {
        let render = |options: &[(&str, String)]| {
            options
                .iter()
                .map(|(flag, value)| format!("{flag} '{value}'"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let text = format!(
            "{} {} {}",
            render(&before),
            spelling.replace("{}", &key),
            render(&after)
        );
        let error = DockerOptions::parse(&text);
        prop_assert!(error.is_err(), "{text}: {error:?}");
        let message = error.unwrap_err().to_string();
        prop_assert!(message.contains("give a value"), "{text}: {message}");
    }

    #[test]
    fn both_spellings_of_an_option_parse_alike(
        options in proptest::collection::vec(valid_option(), 1..8),
    ) {
        let spaced: Vec<String> = options
            .iter()
            .map(|(flag, value)| format!("{flag} '{value}'"))
            .collect();
        let inline: Vec<String> = options
            .iter()
            .map(|(flag, value)| format!("'{flag}={value}'"))
            .collect();
        let spaced_text = spaced.join(" ");
        let from_spaced = DockerOptions::parse(&spaced_text);
        prop_assert!(from_spaced.is_ok(), "{spaced_text}: {from_spaced:?}");
        let inline_text = inline.join(" ");
        prop_assert_eq!(from_spaced, DockerOptions::parse(&inline_text), "{}", inline_text);
    }
}
