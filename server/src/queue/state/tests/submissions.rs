//! Submits with an idempotency key, event by event.

use std::time::Duration;

use herd_proto::TaskSpec;
use herd_proto::request::IdempotencyKey;

use super::super::{Caller, Clock};
use super::env::*;
use crate::stored_spec;

impl TestEnv {
    fn submit_keyed(
        &mut self,
        caller: &Caller,
        key: &str,
        count: usize,
    ) -> Vec<herd_proto::TaskId> {
        let key = IdempotencyKey::new(key).unwrap();
        let specs = tasks("b", count)
            .into_iter()
            .map(|request| {
                let spec = TaskSpec::new(request).unwrap();
                let json = stored_spec::encode(&spec);
                (spec, json)
            })
            .collect();
        self.step(|state, change| state.submit_once(caller, Some(&key), specs, change))
            .expect("queued")
    }
}

#[test]
fn a_repeated_key_returns_the_first_ids_and_queues_nothing() {
    let mut env = TestEnv::new();
    let admin = env.admin.clone();
    let first = env.submit_keyed(&admin, "launch-1", 3);
    assert_eq!(first.len(), 3);
    assert_eq!(
        env.last_rows.dirty.submissions.len(),
        1,
        "the key is stored"
    );
    let again = env.submit_keyed(&admin, "launch-1", 3);
    assert_eq!(again, first);
    assert!(env.last_rows.is_empty(), "a repeat changes nothing");
    assert_eq!(env.state.tasks.len(), 3);
    // Another key queues anew.
    let other = env.submit_keyed(&admin, "launch-2", 1);
    assert_eq!(env.state.tasks.len(), 4);
    assert!(!first.contains(&other[0]));
}

#[test]
fn keys_are_per_user_and_expire_after_a_day() {
    let mut env = TestEnv::new();
    let admin = env.admin.clone();
    let first = env.submit_keyed(&admin, "k", 1);
    let worker_token = env.worker_token.clone();
    // The same key of another identity is another submit (here: a caller of another user).
    let other = Caller {
        user: super::super::UserId(admin.user.0 + 100),
        ..worker_token
    };
    env.state.users.insert(
        other.user,
        super::super::access::User {
            name: herd_proto::access::UserName::new("other").unwrap(),
            admin: true,
            created_at: env.clock.now(),
        },
    );
    let theirs = env.submit_keyed(&other, "k", 1);
    assert_ne!(theirs, first);
    // A day later the key is forgotten: pruned from memory and the database.
    env.clock.advance(Duration::from_secs(24 * 3600));
    env.step(|state, change| state.prune_submissions(change));
    assert_eq!(env.last_rows.dirty.submissions.len(), 2);
    assert!(env.state.submissions.is_empty());
    let later = env.submit_keyed(&admin, "k", 1);
    assert_ne!(later, first);
}

#[test]
fn remembered_submits_survive_a_restart() {
    let mut env = TestEnv::new();
    let admin = env.admin.clone();
    let first = env.submit_keyed(&admin, "before-the-crash", 2);
    let mut snapshot = env.snapshot();
    snapshot.submissions = env
        .state
        .submissions
        .keys()
        .map(|key| env.state.submission_row(key).unwrap())
        .collect();
    let (mut restored, _) = TestEnv::restored(snapshot).unwrap();
    let again = restored.submit_keyed(&admin, "before-the-crash", 2);
    assert_eq!(again, first);
    assert_eq!(restored.state.tasks.len(), 2);
}
