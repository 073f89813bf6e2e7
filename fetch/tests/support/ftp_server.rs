//! A private FTP server per test: `tests/support/ftp_server.py` (pyftpdlib) as a child process
//! on 127.0.0.1, on a port the OS picks, serving a fresh temporary directory. The python comes
//! from `HERD_TEST_FTP_PYTHON`, else from the venv `scripts/start-ftp.sh` installs; without it
//! the tests fail (they never skip) and say how to install it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The writable user.
pub const USER: &str = "herd";
/// Its password: distinctive, so that tests can check it never shows in a message.
pub const PASSWORD: &str = "pw-Zq81-secret";

pub struct FtpServer {
    child: Child,
    port: u16,
    /// What the server serves.
    pub root: PathBuf,
    log: PathBuf,
    _temp: tempfile::TempDir,
}

/// The python that has pyftpdlib.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("HERD_TEST_FTP_PYTHON") {
        return PathBuf::from(python);
    }
    let services = std::env::var_os("HERD_SERVICES_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/herd-services"), PathBuf::from);
    services.join("ftp/venv/bin/python")
}

impl FtpServer {
    /// A server that offers MLSD.
    pub fn start() -> FtpServer {
        FtpServer::launch(&[])
    }

    /// A server without MLSD and MLST, so that clients fall back to LIST.
    pub fn start_without_mlsd() -> FtpServer {
        FtpServer::launch(&["--no-mlsd"])
    }

    /// A server whose first download of each file breaks after `bytes` bytes (the data
    /// connection closes, the server answers 426); later downloads are whole.
    pub fn start_cutting_downloads_after(bytes: u64) -> FtpServer {
        FtpServer::launch(&["--cut-retr-after", &bytes.to_string()])
    }

    fn launch(extra: &[&str]) -> FtpServer {
        let python = python();
        assert!(
            python.exists(),
            "the ftp tests need pyftpdlib: `{}` does not exist; run `eval \"$(sudo bash scripts/start-ftp.sh)\"` \
             (it installs pyftpdlib into a venv under /var/tmp/herd-services), or set HERD_TEST_FTP_PYTHON \
             to a python that has pyftpdlib",
            python.display()
        );
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let log = temp.path().join("server.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ftp_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--root")
            .arg(&root)
            .args(["--user", USER, "--password", PASSWORD, "--watch-stdin"])
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(temp.path().join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run `{}`: {error}", python.display()));
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(temp.path().join("stderr")).unwrap_or_default();
            panic!(
                "the test ftp server did not start (is pyftpdlib installed for `{}`? run scripts/start-ftp.sh): {stderr}",
                python.display()
            );
        };
        FtpServer {
            child,
            port,
            root,
            log,
            _temp: temp,
        }
    }

    /// `ftp://herd:PASSWORD@127.0.0.1:PORT/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ftp://{USER}:{PASSWORD}@127.0.0.1:{}/{path}", self.port)
    }

    /// `ftp://127.0.0.1:PORT/{path}` (anonymous, read-only).
    pub fn anonymous_url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }

    /// The commands the server received so far (pyftpdlib's log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
