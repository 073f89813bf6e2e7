//! The invariants of ARCHITECTURE.md that code can check: the dependency rules on the
//! dependency tree cargo really builds (not only the manifests), protocol types only at the
//! edge, and the size limits of production files and functions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Every package in the normal (not dev-, not build-) dependency tree of `package`, with the
/// features cargo resolves when building that package alone, as `cargo tree` prints it.
fn tree(package: &str, features: &[&str]) -> BTreeSet<String> {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command.output().expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains(package) && names.len() > 1,
        "cargo tree -p {package} printed no tree: the parser is wrong"
    );
    names
}

fn herd_crates(names: &BTreeSet<String>, itself: &str) -> BTreeSet<String> {
    names
        .iter()
        .filter(|name| name.starts_with("herd-") && *name != itself)
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn proto_and_fetch_are_leaves() {
    assert_eq!(
        herd_crates(&tree("herd-proto", &[]), "herd-proto"),
        set(&[])
    );
    assert_eq!(
        herd_crates(&tree("herd-fetch", &[]), "herd-fetch"),
        set(&[])
    );
}

#[test]
fn server_and_worker_never_depend_on_each_other() {
    assert_eq!(
        herd_crates(&tree("herd-server", &[]), "herd-server"),
        set(&["herd-proto"])
    );
    assert_eq!(
        herd_crates(&tree("herd-worker", &[]), "herd-worker"),
        set(&["herd-fetch", "herd-proto"])
    );
}

#[test]
fn only_launch_wires_server_and_worker_together() {
    let launch = herd_crates(&tree("herd-launch", &[]), "herd-launch");
    assert!(launch.contains("herd-server") && launch.contains("herd-worker"));
}

#[test]
fn each_side_effect_lives_in_one_crate() {
    let trees = [
        ("herd-proto", tree("herd-proto", &["client", "server"])),
        ("herd-fetch", tree("herd-fetch", &[])),
        ("herd-server", tree("herd-server", &[])),
        ("herd-worker", tree("herd-worker", &[])),
    ];
    for (krate, names) in &trees {
        if *krate != "herd-server" {
            assert!(
                !names.contains("sqlx"),
                "only server uses sqlx, not {krate}"
            );
        }
        if *krate != "herd-worker" {
            assert!(
                !names.contains("bollard"),
                "only worker uses bollard, not {krate}"
            );
        }
        if *krate != "herd-fetch" && *krate != "herd-worker" {
            for storage in ["aws-sdk-s3", "object_store", "suppaftp", "reqwest"] {
                assert!(
                    !names.contains(storage),
                    "only fetch talks to storage, not {krate} ({storage})"
                );
            }
        }
    }
}

#[test]
fn the_protocol_crate_pulls_no_runtime_unless_asked() {
    let plain = tree("herd-proto", &[]);
    for runtime in ["tokio", "tonic", "hyper", "mio"] {
        assert!(
            !plain.contains(runtime),
            "herd-proto without features pulls {runtime}"
        );
    }
    // The stubs are there when asked for: the check above is not vacuous.
    assert!(tree("herd-proto", &["client"]).contains("tonic"));
}

/// The modules that may name the generated protobuf types (besides `proto/src/lib.rs`, which
/// declares them): the conversions, the server's
/// gRPC service, the worker's connection and the CLI's client. The test crate is not
/// production code: it drives the protocol by hand on purpose (hand-made sessions, hostile
/// messages).
const PROTOCOL_EDGE: &[&str] = &[
    "proto/src/convert.rs",
    "proto/src/convert/access.rs",
    "server/src/service.rs",
    "server/src/service/access.rs",
    "worker/src/session/link.rs",
    "launch/src/client.rs",
];

/// The production sources: every `.rs` file under the library crates' `src/`.
fn production_sources() -> Vec<PathBuf> {
    fn walk(directory: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(directory).expect("source folders are readable") {
            let path = entry.expect("entries are readable").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for krate in ["proto", "server", "worker", "launch", "fetch"] {
        walk(&workspace().join(krate).join("src"), &mut found);
    }
    found.sort();
    assert!(found.len() > 40, "found only {} sources", found.len());
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace())
        .expect("under the workspace")
        .display()
        .to_string()
}

/// Whether `line` names the generated module: `pb::`, `herd_proto::pb`, `{self, ...}` imports
/// of it, or `pb` in a use list.
fn names_protobuf(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.contains("pb::")
        || code.contains("herd_proto::pb")
        || code.contains("crate::pb")
        || (code.trim_start().starts_with("use ")
            && code
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|word| word == "pb"))
}

#[test]
fn protocol_types_stay_at_the_edge() {
    let mut offenders = Vec::new();
    let mut edges_seen = BTreeSet::new();
    for path in production_sources() {
        let name = relative(&path);
        let text = std::fs::read_to_string(&path).expect("sources are readable");
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| names_protobuf(line))
            .map(|(index, _)| index + 1)
            .collect();
        if lines.is_empty() {
            continue;
        }
        if PROTOCOL_EDGE.contains(&name.as_str()) {
            edges_seen.insert(name);
        } else {
            offenders.push(format!("{name}: lines {lines:?}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "protobuf types outside the edge modules of ARCHITECTURE.md:\n{}",
        offenders.join("\n")
    );
    // Every listed edge exists and uses the protocol: a renamed or emptied module must leave
    // the list too, so that the list stays the real edge.
    let listed: BTreeSet<String> = PROTOCOL_EDGE.iter().map(|name| name.to_string()).collect();
    assert_eq!(
        edges_seen, listed,
        "edge modules that no longer use protobuf"
    );
}

#[test]
fn the_edge_detector_sees_every_spelling() {
    assert!(names_protobuf(
        "use herd_proto::pb::queue_client::QueueClient;"
    ));
    assert!(names_protobuf("use herd_proto::{TaskId, pb};"));
    assert!(names_protobuf("    let x = pb::Task::default();"));
    assert!(!names_protobuf("// pb:: in a comment"));
    assert!(!names_protobuf("let pbx = 1;"));
}

#[test]
fn every_module_says_what_it_holds() {
    let undocumented: Vec<String> = production_sources()
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("sources are readable");
            !text.starts_with("//!")
        })
        .map(|path| relative(path))
        .collect();
    assert!(
        undocumented.is_empty(),
        "modules without a `//!` doc at their top:\n{}",
        undocumented.join("\n")
    );
}

/// Production lines of a source: everything before its `#[cfg(test)]` module.
fn production_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .collect()
}

/// A file or function longer than the limits says why, in a comment starting with this.
const LENGTH_REASON: &str = "Why this is long:";

#[test]
fn production_files_stay_under_800_lines() {
    let mut offenders = Vec::new();
    for path in production_sources() {
        let text = std::fs::read_to_string(&path).expect("sources are readable");
        let lines = production_lines(&text);
        let header: String = lines.iter().take(30).copied().collect();
        if lines.len() > 800 && !header.contains(LENGTH_REASON) {
            offenders.push(format!("{}: {} lines", relative(&path), lines.len()));
        }
    }
    assert!(
        offenders.is_empty(),
        "files over 800 production lines without `{LENGTH_REASON}` near their top:\n{}",
        offenders.join("\n")
    );
}

/// Functions of `lines` longer than `limit` lines, as (name, first line, length). A function
/// starts at a line `INDENT[pub ][async ]fn NAME` and ends at the first line that is INDENT
/// followed by `}`, as rustfmt lays them out.
fn long_functions(lines: &[&str], limit: usize) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(position) = words.iter().position(|word| *word == "fn") else {
            continue;
        };
        let qualifiers_only = words[..position].iter().all(|word| {
            ["pub", "async", "const", "unsafe", "extern"].contains(word) || word.starts_with("pub(")
        });
        if !qualifiers_only || line.trim_end().ends_with(';') {
            continue;
        }
        let name = words
            .get(position + 1)
            .map(|word| word.split(['(', '<']).next().unwrap_or_default())
            .unwrap_or_default()
            .to_owned();
        let closing = format!("{}}}", " ".repeat(indent));
        let Some(length) = lines[index + 1..]
            .iter()
            .position(|candidate| *candidate == closing)
            .map(|offset| offset + 2)
        else {
            continue;
        };
        let explained = lines[index.saturating_sub(12)..index]
            .iter()
            .any(|comment| comment.contains(LENGTH_REASON));
        if length > limit && !explained {
            found.push((name, index + 1, length));
        }
    }
    found
}

#[test]
fn production_functions_stay_under_100_lines() {
    let mut offenders = Vec::new();
    for path in production_sources() {
        let text = std::fs::read_to_string(&path).expect("sources are readable");
        for (name, line, length) in long_functions(&production_lines(&text), 100) {
            offenders.push(format!("{}:{line} {name}: {length} lines", relative(&path)));
        }
    }
    assert!(
        offenders.is_empty(),
        "functions over 100 lines without `{LENGTH_REASON}` in the comment above them:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_function_measure_finds_long_functions() {
    let mut source = vec!["pub async fn long(x: u32) -> u32 {"];
    source.extend(std::iter::repeat_n("    let y = 1;", 120));
    source.push("}");
    source.push("    fn short() {");
    source.push("    }");
    let found = long_functions(&source, 100);
    assert_eq!(found, vec![("long".to_owned(), 1, 122)]);
    let mut explained = vec!["/// Why this is long: a table."];
    explained.extend(source);
    assert!(long_functions(&explained, 100).is_empty());
}
