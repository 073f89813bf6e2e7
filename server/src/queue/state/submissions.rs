//! Submits that are safe to repeat: a submit made with an idempotency key is remembered for
//! [`SUBMISSION_TTL`]; the same user's submit with the same key within that time returns the
//! ids of the first and queues nothing. A client whose answer was lost (the server was killed
//! after the commit, the network cut) retries with the same key, and no task runs twice.
//!
//! The key is the client's; what is compared is the key alone, not the tasks (like the
//! idempotency keys of payment APIs): a repeat with other tasks gets the first submit's ids.

use std::time::Duration;

use herd_proto::request::IdempotencyKey;
use herd_proto::{TaskId, TaskSpec, Timestamp};

use super::{Caller, Change, State, UserId};
use crate::Error;
use crate::store::{StoreError, SubmissionRow};

/// How long a submit's key is remembered.
pub const SUBMISSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// A remembered submit: its ids are consecutive.
pub(crate) struct Submission {
    pub user: UserId,
    pub first: TaskId,
    pub count: u32,
    pub at: Timestamp,
}

impl Submission {
    fn ids(&self) -> Vec<TaskId> {
        (0..u64::from(self.count))
            .map(|offset| TaskId(self.first.0 + offset))
            .collect()
    }
}

fn stored_key(user: UserId, key: &IdempotencyKey) -> String {
    format!("{}:{}", user.0, key.as_str())
}

impl State {
    /// [`State::submit`], once per `key` and user within [`SUBMISSION_TTL`]: a repeat returns
    /// the first submit's ids and changes nothing.
    pub fn submit_once(
        &mut self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        specs: Vec<(TaskSpec, String)>,
        change: &mut Change,
    ) -> Result<Vec<TaskId>, Error> {
        let Some(key) = key else {
            return self.submit(caller, specs, change);
        };
        let stored = stored_key(caller.user, key);
        let now = self.clock.now();
        if let Some(earlier) = self.submissions.get(&stored)
            && now.millis() - earlier.at.millis() < SUBMISSION_TTL.as_millis() as i64
        {
            return Ok(earlier.ids());
        }
        let ids = self.submit(caller, specs, change)?;
        if let Some(first) = ids.first() {
            self.submissions.insert(
                stored.clone(),
                Submission {
                    user: caller.user,
                    first: *first,
                    count: ids.len() as u32,
                    at: now,
                },
            );
            change.submission(stored);
        }
        Ok(ids)
    }

    /// Forgets the submits older than [`SUBMISSION_TTL`].
    pub fn prune_submissions(&mut self, change: &mut Change) {
        let now = self.clock.now().millis();
        let ttl = SUBMISSION_TTL.as_millis() as i64;
        let expired: Vec<String> = self
            .submissions
            .iter()
            .filter(|(_, submission)| now - submission.at.millis() >= ttl)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.submissions.remove(&key);
            change.submission(key);
        }
    }

    /// Forgets the submits that queued `tasks` (the database refused them: they are gone).
    pub fn forget_submissions_of(&mut self, tasks: &[TaskId]) {
        self.submissions
            .retain(|_, submission| !tasks.contains(&submission.first));
    }

    /// The row of submit `key`, for the journal (`None`: delete it).
    pub fn submission_row(&self, key: &str) -> Option<SubmissionRow> {
        let submission = self.submissions.get(key)?;
        Some(SubmissionRow {
            key: key.to_owned(),
            user_id: submission.user.0 as i64,
            first_task_id: submission.first.0 as i64,
            task_count: i64::from(submission.count),
            created_at: submission.at.millis(),
        })
    }

    /// Restores the remembered submits.
    pub(super) fn restore_submissions(
        &mut self,
        rows: Vec<SubmissionRow>,
    ) -> Result<(), StoreError> {
        for row in rows {
            let count = u32::try_from(row.task_count).map_err(|error| {
                StoreError::corrupt(
                    format!("submission row `{}`, column task_count", row.key),
                    error,
                )
            })?;
            self.submissions.insert(
                row.key,
                Submission {
                    user: UserId(row.user_id as u64),
                    first: TaskId(row.first_task_id as u64),
                    count,
                    at: Timestamp(row.created_at),
                },
            );
        }
        Ok(())
    }
}
