//! Task logs: what each attempt printed, kept in files under the server's data directory.
//!
//! Layout: `<data-dir>/logs/<task id>/<attempt>.stdout` and `.stderr`. Logs stay out of the
//! database on purpose: they are large, append-only and read sequentially. Folders are
//! created `0700` and files `0600` ([`crate::private`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use herd_proto::TaskId;
use herd_proto::session::LogStream;

/// Appends and reads task logs.
pub struct LogStore {
    root: PathBuf,
    open: Mutex<HashMap<(TaskId, u32, LogStream), File>>,
}

impl LogStore {
    /// Keeps logs under `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LogStore {
            root: root.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The folder of one task's logs.
    pub fn task_dir(&self, task: TaskId) -> PathBuf {
        self.root.join(task.0.to_string())
    }

    /// The file of one stream of one attempt.
    pub fn path(&self, task: TaskId, attempt: u32, stream: LogStream) -> PathBuf {
        self.task_dir(task)
            .join(format!("{attempt}.{}", stream.as_str()))
    }

    /// Appends a chunk.
    pub fn append(
        &self,
        task: TaskId,
        attempt: u32,
        stream: LogStream,
        data: &[u8],
    ) -> io::Result<()> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file = match open.entry((task, attempt, stream)) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let path = self.path(task, attempt, stream);
                create_parent(&path)?;
                entry.insert(crate::private::open_append(&path)?)
            }
        };
        file.write_all(data)
    }

    /// Closes the files of an attempt that ended.
    pub fn close(&self, task: TaskId, attempt: u32) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.remove(&(task, attempt, LogStream::Stdout));
        open.remove(&(task, attempt, LogStream::Stderr));
    }

    /// Reads what follows `offset`, at most `limit` bytes; empty when nothing was written yet.
    pub fn read_from(
        &self,
        task: TaskId,
        attempt: u32,
        stream: LogStream,
        offset: u64,
        limit: usize,
    ) -> io::Result<Vec<u8>> {
        let mut file = match File::open(self.path(task, attempt, stream)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut buffer = Vec::new();
        file.take(limit as u64).read_to_end(&mut buffer)?;
        Ok(buffer)
    }

    /// Deletes every log of a task.
    pub fn remove(&self, task: TaskId) {
        {
            let mut open = self
                .open
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            open.retain(|(id, _, _), _| *id != task);
        }
        match fs::remove_dir_all(self.task_dir(task)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(task_id = %task, %error, "cannot remove task logs"),
        }
    }
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => crate::private::create_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path());
        logs.append(TaskId(7), 1, LogStream::Stdout, b"hello ")
            .unwrap();
        logs.append(TaskId(7), 1, LogStream::Stdout, b"world\n")
            .unwrap();
        logs.append(TaskId(7), 1, LogStream::Stderr, b"oops\n")
            .unwrap();
        assert_eq!(
            logs.read_from(TaskId(7), 1, LogStream::Stdout, 0, 1024)
                .unwrap(),
            b"hello world\n"
        );
        assert_eq!(
            logs.read_from(TaskId(7), 1, LogStream::Stdout, 6, 3)
                .unwrap(),
            b"wor"
        );
        assert_eq!(
            logs.read_from(TaskId(7), 2, LogStream::Stdout, 0, 1024)
                .unwrap(),
            b""
        );
        logs.remove(TaskId(7));
        assert!(!logs.task_dir(TaskId(7)).exists());
    }
}
