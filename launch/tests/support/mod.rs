//! What the CLI's test files share: the `herd` binary as a child process, its output, waiting
//! on a condition, and a process guard that kills what it started.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// The `herd` binary with no `HERD_*` or `RUST_LOG` setting inherited from the environment.
pub fn herd_command() -> Command {
    herd_tests::process::herd_command(Path::new(HERD))
}

/// What a finished `herd` command printed, and its exit code.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }
}

/// Runs `command` to its end.
pub fn run(command: &mut Command) -> Finished {
    let output = command.output().expect("the herd binary runs");
    Finished {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `condition` with [`herd_tests::wait_for`] until it holds, or panics after
/// [`herd_tests::WAIT`] naming `what`. The tests are synchronous (they drive child
/// processes): the wait runs on a runtime of its own.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime to wait on");
    runtime
        .block_on(herd_tests::wait_for(what, herd_tests::WAIT, || {
            std::future::ready(condition().then_some(()))
        }))
        .unwrap_or_else(|error| panic!("{error}"));
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop {
    pub child: Child,
    log: PathBuf,
}

impl KillOnDrop {
    /// Starts `command` with its stderr in `log`.
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the herd binary");
        KillOnDrop { child, log }
    }

    /// What it wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the process's log if it has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().expect("poll the child") {
            panic!(
                "{what} exited early with {status}; its log:\n{}",
                self.log()
            );
        }
    }

    /// Waits for the process to exit and gives its exit code.
    pub fn wait_for_exit(&mut self) -> Option<i32> {
        let mut status = None;
        wait_until("the process to exit", || {
            status = self.child.try_wait().expect("poll the child");
            status.is_some()
        });
        status.and_then(|status| status.code())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
