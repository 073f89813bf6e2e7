//! [`Progress`]: live counters of what a transfer has moved, for progress bars.
//!
//! A backend built with a `Progress` (see [`Resolver::with_progress`](crate::Resolver::with_progress))
//! announces each file as soon as it knows its size ([`Progress::expect_file`]), counts bytes as
//! they reach the destination ([`Progress::transferred`]), and each finished file
//! ([`Progress::file_done`]). Whoever shows the progress reads [`Progress::snapshot`] on its own
//! clock. The counters are atomics: backends update them from any task or thread, and a
//! disabled `Progress` (the default) costs one branch per update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared counters of one or more transfers; cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<Arc<Counters>>);

#[derive(Debug, Default)]
struct Counters {
    files_expected: AtomicU64,
    files_done: AtomicU64,
    bytes_expected: AtomicU64,
    bytes_done: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Files announced so far (the total grows while a directory is listed).
    pub files_expected: u64,
    /// Files finished.
    pub files_done: u64,
    /// Bytes of the announced files.
    pub bytes_expected: u64,
    /// Bytes that reached their destination.
    pub bytes_done: u64,
}

impl Progress {
    /// Counters that count.
    pub fn new() -> Progress {
        Progress(Some(Arc::default()))
    }

    /// Counters that count nothing (what backends have unless given others).
    pub fn disabled() -> Progress {
        Progress(None)
    }

    /// Whether updates are counted.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A file of `size` bytes is about to move.
    pub fn expect_file(&self, size: u64) {
        if let Some(counters) = &self.0 {
            counters.files_expected.fetch_add(1, Ordering::Relaxed);
            counters.bytes_expected.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// A file announced without its size turns out to have `bytes` bytes.
    pub fn expect_bytes(&self, bytes: u64) {
        if let Some(counters) = &self.0 {
            counters.bytes_expected.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `bytes` more bytes reached their destination.
    pub fn transferred(&self, bytes: u64) {
        if let Some(counters) = &self.0 {
            counters.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `bytes` already counted must move again (a download restarted from zero).
    pub fn restarted(&self, bytes: u64) {
        if let Some(counters) = &self.0 {
            // Never below zero, even if a caller takes back more than it counted.
            let _ =
                counters
                    .bytes_done
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |done| {
                        Some(done.saturating_sub(bytes))
                    });
        }
    }

    /// One more file finished.
    pub fn file_done(&self) {
        if let Some(counters) = &self.0 {
            counters.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now (all zero when disabled).
    pub fn snapshot(&self) -> Snapshot {
        let Some(counters) = &self.0 else {
            return Snapshot::default();
        };
        Snapshot {
            files_expected: counters.files_expected.load(Ordering::Relaxed),
            files_done: counters.files_done.load(Ordering::Relaxed),
            bytes_expected: counters.bytes_expected.load(Ordering::Relaxed),
            bytes_done: counters.bytes_done.load(Ordering::Relaxed),
        }
    }
}

/// Bytes counted during one try that may fail: taken back when dropped, unless
/// [`keep`](Self::keep) says the try succeeded.
pub(crate) struct TryCount<'a> {
    progress: &'a Progress,
    bytes: u64,
}

impl<'a> TryCount<'a> {
    pub(crate) fn new(progress: &'a Progress) -> TryCount<'a> {
        TryCount { progress, bytes: 0 }
    }

    /// Counts `bytes` more.
    pub(crate) fn add(&mut self, bytes: u64) {
        self.progress.transferred(bytes);
        self.bytes += bytes;
    }

    /// The try succeeded: what it counted stays.
    pub(crate) fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for TryCount<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.progress.restarted(self.bytes);
        }
    }
}

/// A writer that counts what it writes as transferred.
pub(crate) struct CountingWriter<'a, W> {
    pub(crate) inner: W,
    pub(crate) progress: &'a Progress,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let count = self.inner.write(bytes)?;
        self.progress.transferred(count as u64);
        Ok(count)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_counters_and_a_disabled_one_counts_nothing() {
        let progress = Progress::new();
        let clone = progress.clone();
        clone.expect_file(100);
        clone.expect_file(0);
        clone.expect_bytes(50);
        progress.transferred(80);
        clone.restarted(30);
        progress.transferred(100);
        clone.file_done();
        assert_eq!(
            progress.snapshot(),
            Snapshot {
                files_expected: 2,
                files_done: 1,
                bytes_expected: 150,
                bytes_done: 150,
            }
        );
        progress.restarted(1_000);
        assert_eq!(progress.snapshot().bytes_done, 0);

        // A failed try takes back what it counted; a kept one does not.
        let mut failed = TryCount::new(&progress);
        failed.add(40);
        assert_eq!(progress.snapshot().bytes_done, 40);
        drop(failed);
        assert_eq!(progress.snapshot().bytes_done, 0);
        let mut kept = TryCount::new(&progress);
        kept.add(40);
        kept.keep();
        assert_eq!(progress.snapshot().bytes_done, 40);

        let disabled = Progress::disabled();
        disabled.expect_file(10);
        disabled.transferred(10);
        disabled.file_done();
        assert!(!disabled.is_enabled());
        assert_eq!(disabled.snapshot(), Snapshot::default());
    }
}
