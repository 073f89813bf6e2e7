//! The messages of a worker's session, as domain types: what a worker says ([`FromWorker`])
//! and what the server tells it ([`ToWorker`]), plus the task output both sides and the log
//! readers share ([`LogStream`], [`LogChunk`]). `convert` maps them to and from protobuf.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::{BatchName, Error, TaskId, TaskReport, TaskSpec, WorkerId};

/// The longest worker name, in bytes.
pub const MAX_WORKER_NAME_BYTES: usize = 256;
/// The longest version string a worker may give, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;
/// The most tasks a worker may run at once, and the most it may stage ahead.
pub const MAX_CONCURRENCY: u32 = 4096;
/// The longest message a report may carry, in bytes (a worker truncates longer ones).
pub const MAX_REPORT_MESSAGE_BYTES: usize = 64 << 10;
/// The most transferred files one report may list.
pub const MAX_TRANSFER_ITEMS: usize = 100_000;
/// The most bytes one log chunk may carry.
pub const MAX_LOG_CHUNK_BYTES: usize = 1 << 20;
/// The largest message either side of a worker session accepts (gRPC decoding limit): an
/// assignment carries one spec (at most ~1.1 MiB of command and options), a log chunk at most
/// [`MAX_LOG_CHUNK_BYTES`], a report's transfer list at most [`MAX_TRANSFER_ITEMS`] files.
pub const MAX_SESSION_MESSAGE_BYTES: usize = 16 << 20;

/// Which stream of a task's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for LogStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Part of what one attempt printed on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// Which stream.
    pub stream: LogStream,
    /// The bytes, as printed (not necessarily UTF-8, not necessarily whole lines).
    pub data: Vec<u8>,
}

impl LogChunk {
    /// Refuses a chunk larger than [`MAX_LOG_CHUNK_BYTES`].
    pub fn check(&self) -> Result<(), Error> {
        if self.data.len() > MAX_LOG_CHUNK_BYTES {
            return Err(Error::invalid(
                "log chunk",
                format!(
                    "{} bytes in one chunk; the limit is {MAX_LOG_CHUNK_BYTES}: send smaller chunks",
                    self.data.len()
                ),
            ));
        }
        Ok(())
    }
}

/// What a worker says when it (re)connects.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// Its identity from an earlier connection, so the server keeps its tasks.
    pub worker_id: Option<WorkerId>,
    /// The secret the server gave with that identity: without it, the identity is not resumed.
    pub resume_key: Option<String>,
    /// Its name (the host name unless given).
    pub name: String,
    /// The batch it serves.
    pub batch: BatchName,
    /// Tasks run at once; at least 1.
    pub concurrency: u32,
    /// Extra tasks staged ahead.
    pub prefetch: u32,
    /// Whether it runs Docker tasks.
    pub docker: bool,
    /// Whether it runs tasks without an image on its host (not with `--executor docker`).
    pub bare: bool,
    /// Whether it runs privileged Docker tasks.
    pub allow_privileged: bool,
    /// CPU cores of its host.
    pub cores: u32,
    /// Memory of its host, in bytes.
    pub memory_bytes: u64,
    /// Its herd version.
    pub version: String,
    /// Every attempt it holds, with its latest report.
    pub tasks: Vec<TaskReport>,
}

impl Hello {
    /// Refuses a hello whose strings hold a NUL byte or are too long, or whose numbers are
    /// out of range; checks every report it carries with [`check_report`].
    pub fn check(&self) -> Result<(), Error> {
        check_text("worker name", &self.name, MAX_WORKER_NAME_BYTES)?;
        check_text("worker version", &self.version, MAX_VERSION_BYTES)?;
        if let Some(key) = &self.resume_key {
            check_text("resume key", key, crate::access::MAX_TOKEN_CHARS)?;
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::invalid(
                "concurrency",
                format!(
                    "{} tasks at once; give 1 to {MAX_CONCURRENCY}",
                    self.concurrency
                ),
            ));
        }
        if self.prefetch > MAX_CONCURRENCY {
            return Err(Error::invalid(
                "prefetch",
                format!(
                    "{} tasks staged ahead; the limit is {MAX_CONCURRENCY}",
                    self.prefetch
                ),
            ));
        }
        self.tasks.iter().try_for_each(check_report)
    }
}

/// Makes a report's message safe to keep: a NUL byte becomes U+FFFD and a message longer than
/// [`MAX_REPORT_MESSAGE_BYTES`] is cut (at a character boundary) with a marker. A message is
/// bounded rather than refused: it is a failure's explanation, and refusing it would leave the
/// attempt without an end (and a worker whose hello carries it without a session).
pub fn bound_message(message: String) -> String {
    const MARKER: &str = " [... cut by herd: longer than 64 KiB]";
    let mut message = if message.contains('\0') {
        message.replace('\0', "\u{FFFD}")
    } else {
        message
    };
    if message.len() > MAX_REPORT_MESSAGE_BYTES {
        let mut end = MAX_REPORT_MESSAGE_BYTES - MARKER.len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(MARKER);
    }
    message
}

/// Refuses a report whose transfers list more than [`MAX_TRANSFER_ITEMS`] files or hold a
/// NUL byte or an oversized path. Its message is bounded by [`bound_message`], not checked.
pub fn check_report(report: &TaskReport) -> Result<(), Error> {
    let items: usize = report
        .transfers
        .iter()
        .map(|transfer| transfer.items.len())
        .sum();
    if items > MAX_TRANSFER_ITEMS {
        return Err(Error::invalid(
            "transfers",
            format!("{items} files listed in one report; the limit is {MAX_TRANSFER_ITEMS}"),
        ));
    }
    for transfer in &report.transfers {
        check_text(
            "transfer direction",
            &transfer.direction,
            MAX_WORKER_NAME_BYTES,
        )?;
        check_text("transfer uri", &transfer.uri, crate::spec::MAX_URI_BYTES)?;
        for item in &transfer.items {
            check_text("transferred file", &item.path, crate::spec::MAX_URI_BYTES)?;
        }
    }
    Ok(())
}

fn check_text(field: &'static str, text: &str, limit: usize) -> Result<(), Error> {
    if text.len() > limit {
        return Err(Error::invalid(
            field,
            format!("{} bytes long; the limit is {limit}", text.len()),
        ));
    }
    if text.contains('\0') {
        return Err(Error::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// A message from a worker to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    /// The first message of a session.
    Hello(Hello),
    /// Reports, in the order they happened (one or several).
    Reports(Vec<TaskReport>),
    /// Output of a running attempt.
    Log(LogChunk),
    /// Still alive.
    Heartbeat,
    /// The worker is stopping (a signal, `herd worker` told to stop): the attempts it holds
    /// are not a crash; the server queues them again and closes the stream.
    Goodbye,
}

/// A message from the server to one worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    /// The answer to a worker's hello.
    Welcome {
        /// The worker's identity, to give back when reconnecting.
        worker_id: WorkerId,
        /// The secret to give back with it.
        resume_key: String,
        /// How often the worker must show it is alive.
        heartbeat_interval: Duration,
        /// How long the server waits for a silent worker before giving its attempts to
        /// others; `None` from a server that does not say.
        worker_timeout: Option<Duration>,
        /// The server's database (0 from a server that does not say): part of the names of
        /// attempt folders and containers.
        instance_id: u64,
    },
    /// Run this attempt.
    Assign {
        /// The task.
        task_id: TaskId,
        /// The attempt number.
        attempt: u32,
        /// What to run.
        spec: Arc<TaskSpec>,
    },
    /// Stop this attempt and forget it (killed by a user, or no longer the task's current
    /// attempt).
    Cancel {
        /// The task.
        task_id: TaskId,
        /// The attempt.
        attempt: u32,
        /// Why, for the worker's log.
        reason: String,
    },
    /// The attempt's final report is durable: the worker may forget it.
    Ack {
        /// The task.
        task_id: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// The worker was deleted: finish nothing more and exit.
    Shutdown {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskState;

    fn hello() -> Hello {
        Hello {
            worker_id: None,
            resume_key: None,
            name: "w1".into(),
            batch: BatchName::default_batch(),
            concurrency: 4,
            prefetch: 0,
            bare: true,
            docker: false,
            allow_privileged: false,
            cores: 4,
            memory_bytes: 1 << 30,
            version: "0.1.0".into(),
            tasks: Vec::new(),
        }
    }

    fn refused(hello: Hello) -> String {
        hello.check().unwrap_err().to_string()
    }

    #[test]
    fn a_hello_is_checked_field_by_field() {
        assert!(hello().check().is_ok());
        let error = refused(Hello {
            concurrency: 0,
            ..hello()
        });
        assert!(error.starts_with("invalid concurrency: "), "{error}");
        let error = refused(Hello {
            concurrency: 5000,
            ..hello()
        });
        assert!(error.contains("give 1 to 4096"), "{error}");
        let error = refused(Hello {
            prefetch: 4097,
            ..hello()
        });
        assert!(error.starts_with("invalid prefetch: "), "{error}");
        let error = refused(Hello {
            name: "w\0".into(),
            ..hello()
        });
        assert!(error.starts_with("invalid worker name: "), "{error}");
        let error = refused(Hello {
            version: "v".repeat(65),
            ..hello()
        });
        assert!(error.contains("the limit is 64"), "{error}");
        let mut report = TaskReport::new(TaskId(1), 1, TaskState::Failed);
        report.transfers = vec![crate::view::Transfer {
            direction: "output".into(),
            uri: "s3://b/\0".into(),
            bytes: 0,
            files: 0,
            items: Vec::new(),
        }];
        let error = refused(Hello {
            tasks: vec![report],
            ..hello()
        });
        assert!(error.starts_with("invalid transfer uri: "), "{error}");
    }

    #[test]
    fn a_report_message_is_bounded_not_refused() {
        assert_eq!(bound_message("a\0b".into()), "a\u{FFFD}b");
        let short = "exit code 3".to_owned();
        assert_eq!(bound_message(short.clone()), short);
        // A multi-byte character across the limit is not split.
        let long = "é".repeat(MAX_REPORT_MESSAGE_BYTES);
        let bounded = bound_message(long);
        assert!(
            bounded.len() <= MAX_REPORT_MESSAGE_BYTES,
            "{}",
            bounded.len()
        );
        assert!(bounded.ends_with("longer than 64 KiB]"), "{bounded}");
        assert!(bounded.starts_with("éé"));
    }

    #[test]
    fn a_log_chunk_is_bounded() {
        let chunk = |size| LogChunk {
            task_id: TaskId(1),
            attempt: 1,
            stream: LogStream::Stdout,
            data: vec![b'x'; size],
        };
        assert!(chunk(MAX_LOG_CHUNK_BYTES).check().is_ok());
        assert!(chunk(MAX_LOG_CHUNK_BYTES + 1).check().is_err());
    }
}
