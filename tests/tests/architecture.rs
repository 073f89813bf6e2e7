//! The dependency invariants of ARCHITECTURE.md, checked on every crate's manifest.

use std::collections::BTreeSet;
use std::path::Path;

/// The names in a manifest's `[dependencies]` table (not dev- or build-dependencies).
fn dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|error| panic!("{}: {error}", manifest.display()));
    let mut in_dependencies = false;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if !in_dependencies || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or_default()
            .trim();
        if !name.is_empty() {
            names.insert(name.to_owned());
        }
    }
    assert!(
        !names.is_empty(),
        "{} has no [dependencies]: the parser is wrong",
        manifest.display()
    );
    names
}

fn herd_crates(names: &BTreeSet<String>) -> BTreeSet<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with("herd-"))
        .collect()
}

#[test]
fn proto_and_fetch_are_leaves() {
    assert!(herd_crates(&dependencies("proto")).is_empty());
    assert!(herd_crates(&dependencies("fetch")).is_empty());
}

#[test]
fn server_and_worker_never_depend_on_each_other() {
    assert_eq!(
        herd_crates(&dependencies("server")),
        BTreeSet::from(["herd-proto"])
    );
    assert_eq!(
        herd_crates(&dependencies("worker")),
        BTreeSet::from(["herd-fetch", "herd-proto"])
    );
}

#[test]
fn each_side_effect_lives_in_one_crate() {
    for krate in ["proto", "fetch", "worker", "launch"] {
        assert!(
            !dependencies(krate).contains("sqlx"),
            "only server uses sqlx, not {krate}"
        );
    }
    for krate in ["proto", "fetch", "server", "launch"] {
        assert!(
            !dependencies(krate).contains("bollard"),
            "only worker uses bollard, not {krate}"
        );
    }
    for krate in ["proto", "server", "worker", "launch"] {
        let names = dependencies(krate);
        for storage in ["aws-sdk-s3", "reqwest", "object_store", "suppaftp"] {
            assert!(
                !names.contains(storage),
                "only fetch talks to storage, not {krate} ({storage})"
            );
        }
    }
    assert!(
        !dependencies("proto").contains("tokio"),
        "the protocol crate stays free of a runtime"
    );
}

#[test]
fn only_launch_wires_server_and_worker_together() {
    let launch = dependencies("launch");
    assert!(launch.contains("herd-server") && launch.contains("herd-worker"));
}
