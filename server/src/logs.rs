//! Task logs: what each attempt printed, kept in files under the server's data directory.
//!
//! Layout: `<data-dir>/logs/<instance>/<task id>/<attempt>.stdout` and `.stderr`, where
//! `<instance>` is the database's identity (16 hex digits). Logs stay out of the
//! database on purpose: they are large, append-only and read sequentially. Folders are
//! created `0700` and files `0600` ([`crate::private`]).
//!
//! Each stream of each attempt keeps at most `max_bytes` (`herd server --max-log-size`): what
//! comes after is dropped, and one marker line says so in the log itself
//! ([`truncation_marker`]), so a task printing without end (`yes`) cannot fill the server's
//! disk. A file stays open while its attempt is under way and is closed when the attempt ends,
//! however it ends.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use herd_proto::TaskId;
use herd_proto::session::LogStream;

/// The default cap of one stream of one attempt: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// One open log file.
struct OpenLog {
    file: File,
    /// Bytes in the file, marker excluded.
    written: u64,
    /// Bytes dropped past the cap (the marker was written with the first).
    dropped: u64,
}

/// Appends and reads task logs.
pub struct LogStore {
    root: PathBuf,
    max_bytes: u64,
    open: Mutex<HashMap<(TaskId, u32, LogStream), OpenLog>>,
}

/// The line written once into a log that reached `max_bytes`.
pub fn truncation_marker(max_bytes: u64, stream: LogStream) -> String {
    format!(
        "\n[herd: log truncated at {}; the rest of {} is dropped (herd server --max-log-size)]\n",
        human_size(max_bytes),
        stream.as_str()
    )
}

/// `64 MiB`, `1 KiB`, `100 B`: exact binary units when they fit, bytes otherwise.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

impl LogStore {
    /// Keeps logs under `root` (created when needed), at most `max_bytes` per attempt and
    /// stream.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        LogStore {
            root: root.into(),
            max_bytes,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The same store, in the folder of database `instance`: a database reset with the same
    /// data directory (new task 1, old task 1's log) never appends to an older one's logs.
    pub fn for_instance(mut self, instance: u64) -> Self {
        self.root = self.root.join(format!("{instance:016x}"));
        self
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

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskId, u32, LogStream), OpenLog>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a chunk, up to the cap; past it, writes the marker once and drops the rest.
    pub fn append(
        &self,
        task: TaskId,
        attempt: u32,
        stream: LogStream,
        data: &[u8],
    ) -> io::Result<()> {
        let mut open = self.open();
        let log = match open.entry((task, attempt, stream)) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let path = self.path(task, attempt, stream);
                create_parent(&path)?;
                let file = crate::private::open_append(&path)?;
                // Reopened after a restart: what is there counts (a marker too, which keeps
                // the file over the cap, so nothing more is written).
                let written = file.metadata()?.len();
                let dropped = u64::from(written > self.max_bytes);
                entry.insert(OpenLog {
                    file,
                    written,
                    dropped,
                })
            }
        };
        let room = self.max_bytes.saturating_sub(log.written);
        let kept = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if !kept.is_empty() {
            log.file.write_all(kept)?;
            log.written += kept.len() as u64;
        }
        let rest = (data.len() - kept.len()) as u64;
        if rest > 0 {
            if log.dropped == 0 {
                log.file
                    .write_all(truncation_marker(self.max_bytes, stream).as_bytes())?;
            }
            log.dropped += rest;
        }
        Ok(())
    }

    /// What the attempt's streams dropped past the cap, for its record: `None` when nothing
    /// was dropped (or its files were closed).
    pub fn truncation(&self, task: TaskId, attempt: u32) -> Option<String> {
        let open = self.open();
        let dropped: Vec<String> = [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .filter_map(|stream| {
                let log = open.get(&(task, attempt, stream))?;
                (log.dropped > 0).then(|| format!("{} bytes of {}", log.dropped, stream.as_str()))
            })
            .collect();
        (!dropped.is_empty()).then(|| {
            format!(
                "log truncated at {} (herd server --max-log-size): {} dropped",
                human_size(self.max_bytes),
                dropped.join(" and ")
            )
        })
    }

    /// Closes the files of an attempt that ended.
    pub fn close(&self, task: TaskId, attempt: u32) {
        let mut open = self.open();
        open.remove(&(task, attempt, LogStream::Stdout));
        open.remove(&(task, attempt, LogStream::Stderr));
    }

    /// Closes the files of every attempt for which `ended` says so.
    pub fn close_where(&self, mut ended: impl FnMut(TaskId, u32) -> bool) {
        self.open()
            .retain(|(task, attempt, _), _| !ended(*task, *attempt));
    }

    /// How many log files are open.
    pub fn open_files(&self) -> usize {
        self.open().len()
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
            self.open().retain(|(id, _, _), _| *id != task);
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
        let logs = LogStore::new(dir.path(), DEFAULT_MAX_BYTES);
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

    #[test]
    fn a_stream_past_the_cap_keeps_the_cap_and_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1024);
        for _ in 0..10 {
            logs.append(TaskId(1), 1, LogStream::Stdout, &[b'y'; 300])
                .unwrap();
        }
        logs.append(TaskId(1), 1, LogStream::Stderr, b"fine\n")
            .unwrap();
        let marker = truncation_marker(1024, LogStream::Stdout);
        assert!(marker.contains("log truncated at 1 KiB"), "{marker}");
        let stdout = fs::read(logs.path(TaskId(1), 1, LogStream::Stdout)).unwrap();
        assert_eq!(stdout.len(), 1024 + marker.len());
        assert!(stdout.ends_with(marker.as_bytes()));
        assert_eq!(
            logs.truncation(TaskId(1), 1).as_deref(),
            Some(
                "log truncated at 1 KiB (herd server --max-log-size): 1976 bytes of stdout \
                 dropped"
            )
        );

        // Reopened (a restarted server): still full, nothing more is written.
        logs.close(TaskId(1), 1);
        assert_eq!(logs.open_files(), 0);
        logs.append(TaskId(1), 1, LogStream::Stdout, b"more")
            .unwrap();
        let again = fs::read(logs.path(TaskId(1), 1, LogStream::Stdout)).unwrap();
        assert_eq!(again, stdout);

        logs.close_where(|task, attempt| (task, attempt) == (TaskId(1), 1));
        assert_eq!(logs.open_files(), 0);
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1000), "1000 B");
    }
}
