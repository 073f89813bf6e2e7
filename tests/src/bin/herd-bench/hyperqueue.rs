//! Item 3: the same `true` tasks through HyperQueue, by bench/hyperqueue-e2e.py run with the
//! venv's python (bench/setup.sh makes it).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::Command;

use crate::process::Missing;

/// What HyperQueue did.
pub struct HqRun {
    /// Tasks run.
    pub tasks: usize,
    /// Submit to the creation of the last task's output files (see the script).
    pub seconds: f64,
    /// Submit to the return of HyperQueue's wait, which polls once a second.
    pub seconds_to_wait_return: f64,
    /// HyperQueue's version.
    pub version: String,
}

/// The python to run the script with: `--hq-python`, `$HERD_BENCH_HQ_PYTHON`, or the venv
/// bench/setup.sh creates.
pub fn python(given: Option<&Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("HERD_BENCH_HQ_PYTHON").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let services = std::env::var_os("HERD_SERVICES_DIR")
        .filter(|path| !path.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp/herd-services"), PathBuf::from);
    services.join("hq-venv").join("bin").join("python")
}

/// The script: `--hq-script`, or bench/hyperqueue-e2e.py of the source tree herd-bench was
/// built from.
pub fn script(given: Option<&Path>) -> PathBuf {
    given.map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("bench")
                .join("hyperqueue-e2e.py")
        },
        Path::to_path_buf,
    )
}

/// Runs `tasks` `true` tasks on a HyperQueue LocalCluster with one worker of `cores` cores.
pub async fn run(
    python: &Path,
    script: &Path,
    tasks: usize,
    cores: usize,
) -> anyhow::Result<HqRun> {
    if !python.is_file() {
        return Err(Missing(format!(
            "no HyperQueue venv python at {}: run `bash bench/setup.sh` (or give --hq-python)",
            python.display()
        ))
        .into());
    }
    if !script.is_file() {
        bail!("{} is missing; give --hq-script PATH", script.display());
    }
    let output = Command::new(python)
        .arg(script)
        .arg("--tasks")
        .arg(tasks.to_string())
        .arg("--cores")
        .arg(cores.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} exited with {}:\n{}",
            script.display(),
            output.status,
            tail.join("\n")
        );
    }
    // HyperQueue prints a table of its own on stdout first; the JSON is the last line.
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no JSON line", script.display()))?;
    let value: Value = serde_json::from_str(line)?;
    let number = |name: &str| {
        value[name]
            .as_f64()
            .with_context(|| format!("the script's JSON has no number `{name}`"))
    };
    Ok(HqRun {
        tasks: number("tasks")? as usize,
        seconds: number("seconds")?,
        seconds_to_wait_return: number("seconds_to_wait_return")?,
        version: value["version"].as_str().unwrap_or("unknown").to_owned(),
    })
}
