//! Group commit: every change is durable before anything depends on it.
//!
//! A mutation of the queue state records which rows it touched (a [`Dirty`](super::change::Dirty) set) and what
//! must happen only once those rows are durable (its [`Effect`]s: messages to workers, events
//! for watchers). It pushes both to the journal while it still holds the state lock, so
//! journal order is mutation order. The writer task takes every entry waiting, builds one
//! [`WriteSet`] from the *current* state of the touched rows (so ten changes to one task cost
//! one row), commits it in one transaction, publishes the committed sequence number, then runs
//! the effects in order. Callers that must not answer before durability wait for their
//! sequence number.
//!
//! **Every commit is a state that existed.** The rows are read under the state lock, and
//! under that same lock the writer first takes every entry pushed so far ([`take_group`]):
//! since changes are pushed under the lock, the rows it reads are then exactly the state after
//! the last entry of its group, with every row those entries touched. A change made between
//! receiving entries and reading rows can no longer reach the database in part (say a task row
//! moved to its next attempt without that attempt's row), which a `kill -9` right after the
//! commit would have left behind.
//!
//! A *lazy* change is one nobody waits for and that sends nothing to a worker (a task started
//! downloading, running or uploading): it promises nothing, so it need not be durable at once.
//! Lazy entries alone wait up to [`LAZY_DELAY`] for company; the next urgent entry (a final
//! report, a submit) takes them along in its commit. A short task then costs one commit, not
//! two, and a server under a steady flow of tasks commits only for what it must.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::Shared;
use super::change::{Change, Effect};
use super::state::State;
use crate::chain;
use crate::store::{Store, StoreError, WriteSet};

/// Changes the database refused, by sequence number, with the database's reason; taken by
/// their waiters.
pub(crate) type Refusals = Arc<Mutex<HashMap<u64, String>>>;

/// The reason the database refused change `sequence`, if it did (once).
pub(crate) fn take_refusal(refused: &Refusals, sequence: u64) -> Option<String> {
    refused
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&sequence)
}

struct Entry {
    sequence: u64,
    change: Change,
    lazy: bool,
}

/// How long lazy entries may wait for an urgent one before they are committed on their own.
const LAZY_DELAY: Duration = Duration::from_millis(25);

/// The sending half, owned by the queue.
pub(crate) struct Journal {
    /// `None` once closed: the writer then finishes what it has and stops.
    sender: Option<mpsc::UnboundedSender<Entry>>,
    next_sequence: u64,
    committed: watch::Receiver<u64>,
    refused: Refusals,
}

/// The longest pause between two attempts at a failed commit.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Journal {
    /// Starts the writer task; it ends when the journal is closed (or dropped) and every
    /// entry pushed before is committed, so awaiting its handle waits for the last commit.
    ///
    /// The writer holds the queue weakly: dropping the queue drops the journal's sender, and
    /// the writer finishes what it has and stops.
    pub fn start(store: Arc<dyn Store>, shared: Weak<Shared>) -> (Journal, JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (committed_sender, committed) = watch::channel(0);
        let refused = Refusals::default();
        let writer = tokio::spawn(write_loop(
            store,
            shared,
            receiver,
            committed_sender,
            refused.clone(),
        ));
        let journal = Journal {
            sender: Some(sender),
            next_sequence: 1,
            committed,
            refused,
        };
        (journal, writer)
    }

    /// Queues a change; returns its sequence number, or `None` when it has nothing to write
    /// and no effect (nothing to wait for). A change pushed as `lazy` that sends nothing to a
    /// worker may wait [`LAZY_DELAY`] to be committed: nobody may wait for its sequence number.
    pub fn push(&mut self, change: Change, lazy: bool) -> Option<u64> {
        if change.is_empty() {
            return None;
        }
        let lazy = lazy && !change.effects.iter().any(Effect::reaches_a_worker);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let entry = Entry {
            sequence,
            change,
            lazy,
        };
        let sent = self
            .sender
            .as_ref()
            .is_some_and(|sender| sender.send(entry).is_ok());
        if !sent {
            warn!("the journal is closed; change not persisted");
        }
        Some(sequence)
    }

    /// The sequence number of the last change pushed.
    #[cfg(test)]
    pub fn pushed(&self) -> u64 {
        self.last_pushed()
    }

    /// The sequence number of the last change pushed (0: none yet).
    pub fn last_pushed(&self) -> u64 {
        self.next_sequence - 1
    }

    /// How many changes were pushed and are not committed.
    pub fn pushed_not_committed(&self, committed: &watch::Receiver<u64>) -> u64 {
        (self.next_sequence - 1).saturating_sub(*committed.borrow())
    }

    /// Accepts no more changes: the writer commits what it has, runs its effects, and stops.
    pub fn close(&mut self) {
        self.sender = None;
    }

    /// The changes the database refused, for their waiters.
    pub fn refused(&self) -> Refusals {
        self.refused.clone()
    }

    /// A receiver of the last committed sequence number.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// Waits until `sequence` is durable. Returns false if the writer stopped first.
pub(crate) async fn wait_durable(mut committed: watch::Receiver<u64>, sequence: u64) -> bool {
    committed.wait_for(|done| *done >= sequence).await.is_ok()
}

async fn write_loop(
    store: Arc<dyn Store>,
    shared: Weak<Shared>,
    mut receiver: mpsc::UnboundedReceiver<Entry>,
    committed: watch::Sender<u64>,
    refused: Refusals,
) {
    let mut entries = Vec::new();
    while receiver.recv_many(&mut entries, 65_536).await > 0 {
        if entries.iter().all(|entry| entry.lazy) {
            // Wait for an urgent entry to take these along, or for the delay to pass.
            let deadline = tokio::time::Instant::now() + LAZY_DELAY;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, receiver.recv_many(&mut entries, 65_536)).await
            {
                if received == 0 || entries.iter().any(|entry| !entry.lazy) {
                    break;
                }
            }
        }
        let Some(queue) = shared.upgrade() else {
            break;
        };
        let started = std::time::Instant::now();
        let writes = take_group(&queue, &mut receiver, &mut entries);
        drop(queue);
        let last_sequence = entries.last().map_or(0, |entry| entry.sequence);
        let built = started.elapsed();
        if !writes.is_empty()
            && let Err(refusal) = commit_retrying(store.as_ref(), &writes).await
        {
            error!(error = %chain(&refusal), entries = entries.len(), "the database refused a group commit; committing its changes one by one");
            commit_one_by_one(store.as_ref(), &shared, &mut entries, &refused).await;
        }
        debug!(
            entries = entries.len(),
            tasks = writes.tasks.len(),
            attempts = writes.attempts.len(),
            build_ms = built.as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - built).as_secs_f64() * 1e3,
            "journal group committed"
        );
        committed.send_replace(last_sequence);
        if let Some(queue) = shared.upgrade() {
            queue.run_effects(entries.drain(..).flat_map(|entry| entry.change.effects));
        }
        entries.clear();
    }
}

/// Commits `writes`, retrying a transient failure (connection lost, database busy) with
/// backoff for as long as it takes; returns a permanent one (the statement was refused).
async fn commit_retrying(store: &dyn Store, writes: &WriteSet) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.commit(writes).await {
            Ok(()) => return Ok(()),
            Err(commit_error) if commit_error.is_permanent() => return Err(commit_error),
            Err(commit_error) => {
                error!(error = %chain(&commit_error), retry_in_ms = backoff.as_millis() as u64, "commit failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// After the database refused a group: commits each entry alone, so one bad change does not
/// stop the others. A refused entry is recorded in `refused` for its waiter, its effects are
/// dropped (no assignment for a row that is not durable), and the tasks it created (a submit)
/// are removed from memory through a new change; any other refused change leaves memory and
/// the database disagreeing on its rows, which is logged.
async fn commit_one_by_one(
    store: &dyn Store,
    shared: &Weak<Shared>,
    entries: &mut [Entry],
    refused: &Refusals,
) {
    for entry in entries.iter_mut() {
        let Some(queue) = shared.upgrade() else {
            return;
        };
        let writes = build_writes(&queue.lock().state, std::slice::from_ref(entry));
        drop(queue);
        if writes.is_empty() {
            continue;
        }
        let Err(refusal) = commit_retrying(store, &writes).await else {
            continue;
        };
        let reason = chain(&refusal);
        entry.change.effects.clear();
        refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(entry.sequence, reason.clone());
        let Some(queue) = shared.upgrade() else {
            return;
        };
        let created = std::mem::take(&mut entry.change.created_tasks);
        if created.is_empty() {
            error!(error = %reason, tasks = ?entry.change.dirty.tasks, attempts = ?entry.change.dirty.attempts, "the database refused a change; memory and the database disagree on these rows until they change again");
            continue;
        }
        error!(error = %reason, tasks = created.len(), "the database refused a submit; its tasks are removed");
        let mut locked = queue.lock();
        locked.state.forget_submissions_of(&created);
        let mut removal = Change::default();
        for id in created {
            if let Err(removal_error) = locked.state.delete_task(id, &mut removal) {
                warn!(task_id = %id, error = %removal_error, "cannot remove a refused task");
            }
        }
        locked.journal.push(removal, false);
    }
}

/// Under the state lock: adds every entry pushed so far to `entries`, then builds the write set
/// of the whole group from the rows as they are, which is the state after its last entry.
fn take_group(
    shared: &Shared,
    receiver: &mut mpsc::UnboundedReceiver<Entry>,
    entries: &mut Vec<Entry>,
) -> WriteSet {
    let locked = shared.lock();
    while let Ok(entry) = receiver.try_recv() {
        entries.push(entry);
    }
    build_writes(&locked.state, entries)
}

/// The rows `entries` touched, as they are in `state` now.
fn build_writes(state: &State, entries: &[Entry]) -> WriteSet {
    let mut tasks = BTreeSet::new();
    let mut attempts = BTreeSet::new();
    let mut batches = BTreeSet::new();
    let mut workers = BTreeSet::new();
    let mut users = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    let mut submissions = BTreeSet::new();
    let mut counters = false;
    for entry in entries {
        let dirty = &entry.change.dirty;
        tasks.extend(dirty.tasks.iter().copied());
        attempts.extend(dirty.attempts.iter().copied());
        batches.extend(dirty.batches.iter().cloned());
        workers.extend(dirty.workers.iter().copied());
        users.extend(dirty.users.iter().copied());
        tokens.extend(dirty.tokens.iter().copied());
        submissions.extend(dirty.submissions.iter().cloned());
        counters |= dirty.counters;
    }
    let mut writes = WriteSet::default();
    for id in tasks {
        match state.task_row(id) {
            Some(row) => writes.tasks.push(row),
            None => writes.deleted_tasks.push(id.0 as i64),
        }
    }
    for (id, number) in attempts {
        if let Some(row) = state.attempt_row(id, number) {
            writes.attempts.push(row);
        }
    }
    for name in batches {
        match state.batch_row(&name) {
            Some(row) => writes.batches.push(row),
            None => writes.deleted_batches.push(name.to_string()),
        }
    }
    for id in workers {
        match state.worker_row(id) {
            Some(row) => writes.workers.push(row),
            None => writes.deleted_workers.push(id.0 as i64),
        }
    }
    writes
        .users
        .extend(users.into_iter().filter_map(|id| state.user_row(id)));
    writes
        .tokens
        .extend(tokens.into_iter().filter_map(|id| state.token_row(id)));
    for key in submissions {
        match state.submission_row(&key) {
            Some(row) => writes.submissions.push(row),
            None => writes.deleted_submissions.push(key),
        }
    }
    if counters {
        writes.counters = state.counter_rows();
    }
    writes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herd_proto::access::{TokenKind, TokenRequest};
    use herd_proto::session::Hello;
    use herd_proto::{BatchName, TaskRequest, TaskSpec, TaskState};

    use super::*;
    use crate::logs::LogStore;
    use crate::queue::state::digest;
    use crate::queue::{Queue, QueueConfig};
    use crate::store::SqlStore;
    use crate::stored_spec;

    /// A change made after the writer received its entries, but before it read the rows,
    /// joins the group: the task row it moved on never reaches the database without the
    /// attempt row it made.
    #[tokio::test]
    async fn a_change_made_before_the_rows_are_read_joins_the_group()
    -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let url = format!("sqlite://{}", directory.path().join("herd.db").display());
        let store: Arc<dyn Store> = Arc::new(SqlStore::open(&url).await?);
        let queue = Queue::open(
            store,
            LogStore::new(
                directory.path().join("logs"),
                crate::logs::DEFAULT_MAX_BYTES,
            ),
            QueueConfig::default(),
        )
        .await?;
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let push = |sequence: u64, change: Change| {
            sender
                .send(Entry {
                    sequence,
                    change,
                    lazy: false,
                })
                .expect("the test channel is open");
        };
        // Change 1: a task is queued (no worker yet). The writer has received it.
        let task_id = {
            let mut locked = queue.shared.lock();
            let state = &mut locked.state;
            let mut setup = Change::default();
            state.bootstrap(&digest("herd_admin"), &mut setup);
            let admin = state
                .authenticate(&digest("herd_admin"))
                .expect("the admin");
            let request = TokenRequest {
                user: None,
                kind: TokenKind::Worker,
                batch: None,
                label: String::new(),
            };
            state.create_token(&admin, request, &digest("herd_worker"), &mut setup)?;
            let spec = TaskSpec::new(TaskRequest {
                batch: "b".to_owned(),
                command: vec!["true".to_owned()],
                ..TaskRequest::default()
            })?;
            let json = stored_spec::encode(&spec);
            let mut change = Change::default();
            let ids = state.submit(&admin, vec![(spec, json)], &mut change)?;
            push(1, change);
            ids[0]
        };
        let mut entries = vec![receiver.try_recv().expect("the first entry")];
        // Change 2, before the writer reads the rows: a worker connects and takes the task.
        {
            let mut locked = queue.shared.lock();
            let state = &mut locked.state;
            let worker = state
                .authenticate(&digest("herd_worker"))
                .expect("a worker token");
            let hello = Hello {
                batch: BatchName::new("b")?,
                ..crate::queue::durability_tests::hello()
            };
            let mut change = Change::default();
            state.connect(
                &worker,
                hello,
                "herd_key",
                1,
                Duration::from_secs(5),
                Duration::from_secs(20),
                &mut change,
            )?;
            push(2, change);
        }
        let writes = take_group(&queue.shared, &mut receiver, &mut entries);
        assert_eq!(
            entries
                .iter()
                .map(|entry| entry.sequence)
                .collect::<Vec<_>>(),
            vec![1, 2],
            "the later change is in the group"
        );
        let task = writes
            .tasks
            .iter()
            .find(|row| row.id == task_id.0 as i64)
            .expect("the task row");
        assert_eq!(task.state, TaskState::Assigned.as_str());
        assert!(
            writes
                .attempts
                .iter()
                .any(|row| row.task_id == task.id && row.number == task.attempt),
            "the assigned task's attempt row is in the same commit: {writes:?}"
        );
        assert_eq!(writes.workers.len(), 1, "and its worker's row");
        Ok(())
    }
}
