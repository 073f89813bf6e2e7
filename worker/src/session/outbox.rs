//! [`Outbox`]: the attempts the worker holds, each with its latest report, and the reports not
//! yet sent.
//!
//! A report is [`push`](Outbox::push)ed and the sender [`drain`](Outbox::drain_into)s it; the
//! hello of every (re)connection carries a [`snapshot`](Outbox::snapshot) of the latest report
//! of each attempt, which replaces whatever was not sent. A terminal report stays until the
//! server [`ack`](Outbox::ack)s it (once durable); an attempt the server
//! [`forget`](Outbox::forget)s is canceled and nothing more about it is sent, and so is every
//! attempt under way when the worker [`fence`](Outbox::fence)s itself (cut off from the server
//! for longer than the server waits).
//!
//! Each held attempt keeps its cancel token in the same entry as its report: one lock makes a
//! report and the forgetting of its attempt exclusive (no report leaves for an attempt just
//! dropped), and an attempt costs no more lock round trips than one map does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use herd_proto::view::Transfer;
use herd_proto::{TaskId, TaskReport, TaskState};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One attempt the worker holds.
struct Held {
    latest: TaskReport,
    cancel: CancellationToken,
    /// The server told us to drop it: send nothing more about it.
    forgotten: bool,
}

/// The attempts held and the reports to send; see the module's documentation.
#[derive(Default)]
pub(crate) struct Outbox {
    held: Mutex<HashMap<(TaskId, u32), Held>>,
    /// Reports not yet sent on the current connection, in order.
    unsent: Mutex<Vec<TaskReport>>,
    /// Rung when `unsent` gains a report.
    pushed: Notify,
}

impl Outbox {
    fn held(&self) -> MutexGuard<'_, HashMap<(TaskId, u32), Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsent(&self) -> MutexGuard<'_, Vec<TaskReport>> {
        self.unsent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts holding attempt `attempt` of `task_id` (state `assigned`), stopped by `cancel`;
    /// false when it is held already (the server repeated an assignment).
    pub fn hold(&self, task_id: TaskId, attempt: u32, cancel: CancellationToken) -> bool {
        let mut held = self.held();
        if held.contains_key(&(task_id, attempt)) {
            return false;
        }
        let latest = TaskReport::new(task_id, attempt, TaskState::Assigned);
        held.insert(
            (task_id, attempt),
            Held {
                latest,
                cancel,
                forgotten: false,
            },
        );
        true
    }

    /// Records `report` as its attempt's latest and queues it for sending. A report of an
    /// attempt the server forgot is dropped, and the attempt with it.
    pub fn push(&self, report: TaskReport) {
        {
            let mut held = self.held();
            let key = (report.task_id, report.attempt);
            match held.get_mut(&key) {
                Some(entry) if !entry.forgotten => entry.latest = report.clone(),
                _ => {
                    held.remove(&key);
                    return;
                }
            }
        }
        // Queued even while disconnected: the next hello, which carries the latest report of
        // every attempt, clears what it covers; what comes after it is sent once connected.
        self.unsent().push(report);
        self.pushed.notify_one();
    }

    /// Waits until a report was pushed since the last wait.
    pub async fn pushed(&self) {
        self.pushed.notified().await;
    }

    /// Moves the unsent reports, in order, into `batch`, which must be empty; the outbox keeps
    /// `batch`'s capacity for the next ones.
    pub fn drain_into(&self, batch: &mut Vec<TaskReport>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut *self.unsent(), batch);
    }

    /// The latest report of every attempt not forgotten, for a hello, which makes the unsent
    /// reports redundant: they are cleared. The files an unsent report moved are not lost
    /// with it: an unsent `running` report replaced by `uploading` while the worker was cut
    /// off gives its input transfers (and their checksums) to the latest report, which keeps
    /// them for every later hello.
    pub fn snapshot(&self) -> Vec<TaskReport> {
        let unsent = std::mem::take(&mut *self.unsent());
        let mut held = self.held();
        let mut carried: HashMap<(TaskId, u32), Vec<Transfer>> = HashMap::new();
        for report in unsent {
            let key = (report.task_id, report.attempt);
            let superseded = held
                .get(&key)
                .is_some_and(|entry| entry.latest.state != report.state);
            if superseded && !report.transfers.is_empty() {
                carried.entry(key).or_default().extend(report.transfers);
            }
        }
        for (key, mut transfers) in carried {
            if let Some(entry) = held.get_mut(&key) {
                // Earlier phases first, as the server would have recorded them.
                transfers.append(&mut entry.latest.transfers);
                entry.latest.transfers = transfers;
            }
        }
        held.values()
            .filter(|entry| !entry.forgotten)
            .map(|entry| entry.latest.clone())
            .collect()
    }

    /// The server made the attempt's final report durable: the attempt is forgotten. Nothing
    /// happens while the attempt has not ended.
    pub fn ack(&self, task_id: TaskId, attempt: u32) {
        let mut held = self.held();
        if held
            .get(&(task_id, attempt))
            .is_some_and(|entry| entry.latest.state.is_terminal())
        {
            held.remove(&(task_id, attempt));
        }
    }

    /// The server dropped the attempt: it is canceled and nothing more about it is sent (an
    /// attempt that had ended is forgotten at once). False when the attempt is not held.
    pub fn forget(&self, task_id: TaskId, attempt: u32) -> bool {
        let key = (task_id, attempt);
        let mut held = self.held();
        let Some(entry) = held.get_mut(&key) else {
            return false;
        };
        entry.forgotten = true;
        entry.cancel.cancel();
        if entry.latest.state.is_terminal() {
            held.remove(&key);
        }
        true
    }

    /// The worker was cut off from the server for longer than the server waits before giving
    /// its attempts to others: every attempt not ended is dropped as if the server had said so
    /// (canceled, its output not uploaded, nothing more sent about it). Ended attempts keep
    /// their final report for the next hello, which the server refuses if it moved on. Returns
    /// how many attempts were dropped.
    pub fn fence(&self) -> usize {
        let mut fenced = 0;
        for entry in self.held().values_mut() {
            if entry.forgotten || entry.latest.state.is_terminal() {
                continue;
            }
            entry.forgotten = true;
            entry.cancel.cancel();
            fenced += 1;
        }
        fenced
    }

    /// Whether the server dropped the attempt (or it is not held).
    pub fn is_forgotten(&self, task_id: TaskId, attempt: u32) -> bool {
        self.held()
            .get(&(task_id, attempt))
            .is_none_or(|entry| entry.forgotten)
    }

    /// How many attempts are held: under way, waiting, or awaiting an acknowledgement.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// Cancels every attempt held (the worker is stopping).
    pub fn cancel_all(&self) {
        for entry in self.held().values() {
            entry.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_proto::Reason;

    use super::*;

    fn drained(outbox: &Outbox) -> Vec<(TaskId, TaskState)> {
        let mut batch = Vec::new();
        outbox.drain_into(&mut batch);
        batch
            .iter()
            .map(|report| (report.task_id, report.state))
            .collect()
    }

    #[test]
    fn a_final_report_stays_until_acknowledged_and_a_forgotten_attempt_says_nothing() {
        let outbox = Outbox::default();
        let cancel = CancellationToken::new();
        assert!(outbox.hold(TaskId(1), 1, cancel.clone()));
        assert!(!outbox.hold(TaskId(1), 1, CancellationToken::new()));
        outbox.push(TaskReport::new(TaskId(1), 1, TaskState::Running));
        let mut failed = TaskReport::new(TaskId(1), 1, TaskState::Failed);
        failed.reason = Some(Reason::ExitCode);
        outbox.push(failed);
        assert_eq!(
            drained(&outbox),
            vec![
                (TaskId(1), TaskState::Running),
                (TaskId(1), TaskState::Failed)
            ]
        );
        // A reconnection's hello carries the final report again, and nothing else is unsent.
        outbox.push(TaskReport::new(TaskId(1), 1, TaskState::Failed));
        let snapshot = outbox.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].state, TaskState::Failed);
        assert!(drained(&outbox).is_empty());
        outbox.ack(TaskId(1), 1);
        assert_eq!(outbox.len(), 0);

        // Forgotten while running: canceled, and its later report goes nowhere.
        assert!(outbox.hold(TaskId(2), 1, cancel.clone()));
        outbox.ack(TaskId(2), 1);
        assert_eq!(outbox.len(), 1, "an attempt under way ignores an ack");
        assert!(outbox.forget(TaskId(2), 1));
        assert!(cancel.is_cancelled());
        assert!(outbox.is_forgotten(TaskId(2), 1));
        assert!(outbox.snapshot().is_empty());
        outbox.push(TaskReport::new(TaskId(2), 1, TaskState::Canceled));
        assert!(drained(&outbox).is_empty());
        assert_eq!(outbox.len(), 0);
    }

    fn input(uri: &str) -> Transfer {
        Transfer {
            direction: "input".to_owned(),
            uri: uri.to_owned(),
            bytes: 3,
            files: 1,
            items: Vec::new(),
        }
    }

    #[test]
    fn the_transfers_of_an_unsent_report_survive_a_later_report_until_sent() {
        let outbox = Outbox::default();
        assert!(outbox.hold(TaskId(1), 1, CancellationToken::new()));
        // Cut off: `running` with the inputs' checksums, then `uploading`, neither sent.
        let mut running = TaskReport::new(TaskId(1), 1, TaskState::Running);
        running.transfers = vec![input("s3://bucket/reads.fq")];
        outbox.push(running);
        outbox.push(TaskReport::new(TaskId(1), 1, TaskState::Uploading));
        let hello = outbox.snapshot();
        assert_eq!(hello.len(), 1);
        assert_eq!(hello[0].state, TaskState::Uploading);
        assert_eq!(hello[0].transfers, vec![input("s3://bucket/reads.fq")]);
        // A hello lost on the way: the next one carries them again, once.
        let again = outbox.snapshot();
        assert_eq!(again, hello);

        // Sent before the cut: the hello does not repeat them into a newer state.
        assert!(outbox.hold(TaskId(2), 1, CancellationToken::new()));
        let mut running = TaskReport::new(TaskId(2), 1, TaskState::Running);
        running.transfers = vec![input("s3://bucket/other.fq")];
        outbox.push(running);
        assert_eq!(drained(&outbox), vec![(TaskId(2), TaskState::Running)]);
        outbox.push(TaskReport::new(TaskId(2), 1, TaskState::Uploading));
        let hello = outbox.snapshot();
        let second = hello.iter().find(|report| report.task_id == TaskId(2));
        assert_eq!(second.map(|report| report.transfers.len()), Some(0));
    }

    #[test]
    fn a_fenced_worker_drops_its_attempts_under_way_and_keeps_ended_ones() {
        let outbox = Outbox::default();
        let running = CancellationToken::new();
        let ended = CancellationToken::new();
        assert!(outbox.hold(TaskId(1), 1, running.clone()));
        assert!(outbox.hold(TaskId(2), 1, ended.clone()));
        outbox.push(TaskReport::new(TaskId(1), 1, TaskState::Running));
        outbox.push(TaskReport::new(TaskId(2), 1, TaskState::Succeeded));
        assert_eq!(outbox.fence(), 1);
        assert!(running.is_cancelled());
        assert!(!ended.is_cancelled());
        assert!(outbox.is_forgotten(TaskId(1), 1));
        // The canceled attempt's final report goes nowhere; the ended one waits for its ack.
        outbox.push(TaskReport::new(TaskId(1), 1, TaskState::Canceled));
        let hello = outbox.snapshot();
        assert_eq!(hello.len(), 1);
        assert_eq!(
            (hello[0].task_id, hello[0].state),
            (TaskId(2), TaskState::Succeeded)
        );
        assert_eq!(outbox.fence(), 0, "fencing again drops nothing more");
    }
}
